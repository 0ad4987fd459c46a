//! QEMU's NVDIMM hot-add hardware: the GPE0 status bit QEMU sets when an
//! NVDIMM is plugged, and the DSM page through which the guest reads the
//! NVDIMM FIT (port 0x0A18). The protocol itself (request layout, reply
//! checks, restarts, bounds) is `daxbox_pmem::fit`, tested on the host;
//! facts in `docs/platform.md` ("NVDIMM hot-add").
//!
//! Detection, and doing nothing elsewhere: the protocol is QEMU's, so it is
//! used only when an SSDT with OEM table id `NVDIMM` (QEMU's NVDIMM root
//! device `ACPI0012` and its `_FIT`) is present. The GPE0 block comes from
//! the FADT (`GPE0_BLK`, `GPE0_BLK_LEN`, ACPI 6.5 §5.2.9), read from the
//! checksummed table bytes: the `acpi` crate's `Fadt` reads its whole
//! 276-byte struct whatever the table's length. Its AML interpreter is not
//! used (it panics on QEMU's `_FIT` and `Notify`).
//!
//! Invariant: port 0x0A18 is written (4 bytes) only with the physical
//! address of the DSM page, a zeroed RAM frame below 4 GiB that this module
//! owns for the kernel's life and never hands out; QEMU reads the input
//! from it and writes at most its 4 KiB back. Of the GPE0 block only the
//! first status byte is read, and only bit 4 (write-1-to-clear) written.

use spin::{Mutex, Once};
use x86_64::instructions::port::Port;

use crate::{acpi, memory};

/// The DSM port (QEMU's `NVDIMM_ACPI_IO_BASE`).
const DSM_PORT: u16 = 0x0a18;
/// The DSM page size.
pub const PAGE: usize = 4096;
/// QEMU's NVDIMM hot-add GPE status bit (`ACPI_NVDIMM_HOTPLUG_STATUS`).
const GPE_BIT: u8 = 1 << 4;
/// Ports the platform drives for other purposes, which a firmware GPE0
/// block may not overlap: PIC, PIT, speaker gate, debug exit, COM1, PCI
/// configuration, the DSM port.
const RESERVED_PORTS: [(u16, u16); 8] = [
    (0x20, 0x22),
    (0x40, 0x44),
    (0x61, 0x62),
    (0xa0, 0xa2),
    (0xf4, 0xf8),
    (0x3f8, 0x400),
    (0xcf8, 0xd00),
    (DSM_PORT, DSM_PORT + 4),
];

/// QEMU's NVDIMM hot-add interface, found by [`detect`].
pub struct Hotplug {
    /// First port of the GPE0 block (the status half comes first).
    gpe0: u16,
    /// Length of the GPE0 block (status and enable halves).
    gpe0_len: u8,
    /// Physical address of the DSM page (below 4 GiB).
    page: u32,
    lock: Mutex<()>,
}

static HOTPLUG: Once<Result<Hotplug, &'static str>> = Once::new();

/// Whether `table` (an SSDT's bytes) is QEMU's NVDIMM SSDT: OEM table id
/// `NVDIMM`, padded with spaces or NULs.
pub fn is_nvdimm_ssdt(table: &[u8]) -> bool {
    table.get(0..4) == Some(&b"SSDT"[..])
        && table.get(16..24).is_some_and(|id| {
            let end = id
                .iter()
                .rposition(|&b| b != 0 && b != b' ')
                .map_or(0, |i| i + 1);
            &id[..end] == b"NVDIMM"
        })
}

/// The GPE0 block (port, length) from the FADT's bytes: `GPE0_BLK` (u32 at
/// 80) and `GPE0_BLK_LEN` (u8 at 92). `None` when the table is too short,
/// has no GPE0 block, or the block is not an even length of at least 2
/// bytes within the 16-bit port space.
pub fn gpe0_from_fadt(fadt: &[u8]) -> Option<(u16, u8)> {
    let block = u32::from_le_bytes(fadt.get(80..84)?.try_into().ok()?);
    let len = *fadt.get(92)?;
    let port = u16::try_from(block).ok()?;
    if port == 0 || len < 2 || !len.is_multiple_of(2) || u32::from(port) + u32::from(len) > 0x1_0000
    {
        return None;
    }
    Some((port, len))
}

fn overlaps_reserved(port: u16, len: u8) -> bool {
    let (start, end) = (u32::from(port), u32::from(port) + u32::from(len));
    RESERVED_PORTS
        .iter()
        .any(|&(s, e)| start < u32::from(e) && u32::from(s) < end)
}

/// Finds QEMU's NVDIMM hot-add interface once (later calls return the
/// first answer): `Err` says why there is none (not QEMU's NVDIMM SSDT, no
/// usable GPE0 block, no DSM page).
pub fn detect() -> Result<&'static Hotplug, &'static str> {
    HOTPLUG
        .call_once(|| {
            let ssdts = acpi::find_tables(b"SSDT").map_err(|_| "no ACPI tables")?;
            if !ssdts.iter().any(|t| is_nvdimm_ssdt(t)) {
                return Err("no QEMU NVDIMM SSDT (OEM table id NVDIMM)");
            }
            let fadt = acpi::find_table(b"FACP").map_err(|_| "no usable FADT")?;
            let (gpe0, gpe0_len) =
                gpe0_from_fadt(&fadt).ok_or("the FADT has no usable GPE0 block")?;
            if overlaps_reserved(gpe0, gpe0_len) {
                return Err("the FADT's GPE0 block overlaps ports the kernel uses");
            }
            let page = memory::allocate_contiguous(1).ok_or("no RAM frame for the DSM page")?;
            // A frame above 4 GiB is kept (leaked): the port takes 32 bits.
            let page = u32::try_from(page).map_err(|_| "the DSM page is above 4 GiB")?;
            Ok(Hotplug {
                gpe0,
                gpe0_len,
                page,
                lock: Mutex::new(()),
            })
        })
        .as_ref()
        .map_err(|e| *e)
}

impl Hotplug {
    /// The GPE0 block's first port and length.
    pub fn gpe0(&self) -> (u16, u8) {
        (self.gpe0, self.gpe0_len)
    }

    /// Whether the NVDIMM hot-add status bit is set (one port read; does
    /// not clear it).
    pub fn pending(&self) -> bool {
        let mut status = Port::<u8>::new(self.gpe0);
        // SAFETY: as in `take_event`: the GPE0 status register, read only.
        unsafe { status.read() & GPE_BIT != 0 }
    }

    /// Whether QEMU signalled an NVDIMM hot-add since the last call: reads
    /// the GPE0 status byte and, when bit 4 is set, clears it (writing 1 to
    /// it). One port read when nothing happened.
    pub fn take_event(&self) -> bool {
        let mut status = Port::<u8>::new(self.gpe0);
        // SAFETY: `gpe0` is the FADT's GPE0 status register, which
        // overlaps no port the kernel drives otherwise (checked in
        // `detect`); reading it has no side effect.
        let value = unsafe { status.read() };
        if value & GPE_BIT == 0 {
            return false;
        }
        // SAFETY: as above; GPE status bits are write-1-to-clear (ACPI 6.5
        // §4.8.4.1), so writing only bit 4 clears only QEMU's NVDIMM bit.
        unsafe { status.write(GPE_BIT) };
        true
    }

    /// One DSM call: puts `input` at the start of the DSM page (the rest
    /// zeroed), hands the page to QEMU and copies its reply into `reply`.
    pub fn dsm_call(&self, input: &[u8], reply: &mut [u8; PAGE]) -> Result<(), &'static str> {
        if input.len() > PAGE {
            return Err("DSM input larger than the page");
        }
        let _guard = self.lock.lock();
        let virt = memory::phys_to_virt(u64::from(self.page)) as *mut u8;
        // SAFETY: `virt` maps the DSM page, a 4 KiB RAM frame this module
        // owns (the lock keeps callers apart); `input` fits in it.
        unsafe {
            core::ptr::write_bytes(virt, 0, PAGE);
            core::ptr::copy_nonoverlapping(input.as_ptr(), virt, input.len());
        }
        let mut port = Port::<u32>::new(DSM_PORT);
        // SAFETY: QEMU's NVDIMM DSM port, present because its NVDIMM SSDT
        // is (`detect`); the value is the DSM page's physical address, and
        // QEMU writes its reply (at most the page) there before the `out`
        // completes. `out` is a compiler barrier for memory.
        unsafe { port.write(self.page) };
        for (i, byte) in reply.iter_mut().enumerate() {
            // SAFETY: inside the DSM page (i < PAGE); volatile because the
            // device wrote it.
            *byte = unsafe { virt.add(i).read_volatile() };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fadt(block: u32, len: u8) -> alloc::vec::Vec<u8> {
        let mut t = alloc::vec![0u8; 244];
        t[0..4].copy_from_slice(b"FACP");
        t[80..84].copy_from_slice(&block.to_le_bytes());
        t[92] = len;
        t
    }

    #[test]
    fn gpe0_block_from_qemu_fadt() {
        assert_eq!(gpe0_from_fadt(&fadt(0x620, 16)), Some((0x620, 16)));
        assert_eq!(gpe0_from_fadt(&fadt(0, 16)), None);
        assert_eq!(gpe0_from_fadt(&fadt(0x620, 0)), None);
        assert_eq!(gpe0_from_fadt(&fadt(0x620, 3)), None);
        assert_eq!(gpe0_from_fadt(&fadt(0x1_0620, 16)), None);
        assert_eq!(gpe0_from_fadt(&fadt(0xfffc, 16)), None);
        assert_eq!(gpe0_from_fadt(&fadt(0x620, 16)[..92]), None);
        assert!(!overlaps_reserved(0x620, 16));
        assert!(overlaps_reserved(0xcf0, 16));
        assert!(overlaps_reserved(0x0a10, 16));
    }

    #[test]
    fn nvdimm_ssdt_by_oem_table_id() {
        let mut t = alloc::vec![0u8; 36];
        t[0..4].copy_from_slice(b"SSDT");
        t[16..24].copy_from_slice(b"NVDIMM  ");
        assert!(is_nvdimm_ssdt(&t));
        t[16..24].copy_from_slice(b"NVDIMM\0\0");
        assert!(is_nvdimm_ssdt(&t));
        t[16..24].copy_from_slice(b"NVDIMMX ");
        assert!(!is_nvdimm_ssdt(&t));
        t[16..24].copy_from_slice(b"NVDIMM  ");
        t[0..4].copy_from_slice(b"DSDT");
        assert!(!is_nvdimm_ssdt(&t));
        assert!(!is_nvdimm_ssdt(b"SSDT"));
    }
}
