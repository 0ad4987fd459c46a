//! Finding raw ACPI tables by signature.
//!
//! The bootloader hands over the physical address of the RSDP; from there
//! the XSDT (or, on ACPI 1.0, the RSDT) lists every table (ACPI 6.5
//! §5.2.5-§5.2.8). This module only locates a table and copies its bytes
//! out of firmware memory; parsing is the business of the host-tested
//! libraries (`daxbox-pmem` for the NFIT, `daxbox-pci` for the MCFG).
//! Every length read from firmware memory is bounded and every header is
//! checksummed before it is trusted, and all reads go through the
//! bootloader's physical-memory mapping after a check that the address is
//! inside it.

use alloc::vec::Vec;
use core::fmt;
use spin::Once;

use crate::memory;

/// Largest table copied (the NFIT of a large machine is a few KiB).
const MAX_TABLE: u32 = 1 << 20;
/// Size of the common table header (§5.2.6).
const HEADER: u32 = 36;

/// Why a table could not be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// The bootloader found no RSDP.
    NoRsdp,
    /// The RSDP's signature or checksum is wrong.
    BadRsdp,
    /// A table header has a bad length or checksum.
    BadTable {
        /// Physical address of the table.
        address: u64,
    },
    /// An address is outside the physical-memory mapping.
    Unmapped {
        /// The address.
        address: u64,
    },
    /// No table has this signature.
    NotFound,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::NoRsdp => write!(f, "no ACPI RSDP from the bootloader"),
            AcpiError::BadRsdp => write!(f, "ACPI RSDP has a bad signature or checksum"),
            AcpiError::BadTable { address } => {
                write!(f, "ACPI table at {address:#x} has a bad length or checksum")
            }
            AcpiError::Unmapped { address } => {
                write!(f, "ACPI address {address:#x} is outside mapped memory")
            }
            AcpiError::NotFound => write!(f, "no such ACPI table"),
        }
    }
}

struct Roots {
    rsdp: Option<u64>,
    /// One past the highest physical address of the physical-memory map.
    mapped_end: u64,
}

static ROOTS: Once<Roots> = Once::new();

/// Records the RSDP address and the extent of the physical-memory mapping
/// (the highest end of any boot memory-map region).
pub fn init(rsdp: Option<u64>, mapped_end: u64) {
    ROOTS.call_once(|| Roots { rsdp, mapped_end });
}

/// Copies `buf.len()` bytes of physical memory at `address`.
fn read(address: u64, buf: &mut [u8]) -> Result<(), AcpiError> {
    let roots = ROOTS.get().ok_or(AcpiError::NoRsdp)?;
    let end = address
        .checked_add(buf.len() as u64)
        .ok_or(AcpiError::Unmapped { address })?;
    if end > roots.mapped_end {
        return Err(AcpiError::Unmapped { address });
    }
    let virt = memory::phys_to_virt(address);
    // SAFETY: `address..end` is below the end of the memory map, all of
    // which the bootloader maps at the physical-memory offset
    // (Mapping::Dynamic); firmware tables are never written by anyone
    // while the kernel runs, and the copy goes into a distinct buffer.
    unsafe { core::ptr::copy_nonoverlapping(virt as *const u8, buf.as_mut_ptr(), buf.len()) };
    Ok(())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | (u64::from(u32_at(bytes, at + 4)) << 32)
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

/// Copies the whole table at `address`, after checking its length and
/// checksum.
fn table_at(address: u64) -> Result<Vec<u8>, AcpiError> {
    let mut header = [0u8; HEADER as usize];
    read(address, &mut header)?;
    let length = u32_at(&header, 4);
    if !(HEADER..=MAX_TABLE).contains(&length) {
        return Err(AcpiError::BadTable { address });
    }
    let mut table = alloc::vec![0u8; length as usize];
    read(address, &mut table)?;
    if !sums_to_zero(&table) {
        return Err(AcpiError::BadTable { address });
    }
    Ok(table)
}

/// The physical addresses of every table the XSDT/RSDT lists.
fn table_addresses() -> Result<Vec<u64>, AcpiError> {
    let rsdp_address = ROOTS.get().and_then(|r| r.rsdp).ok_or(AcpiError::NoRsdp)?;
    // RSDP (§5.2.5.3): 20 bytes in ACPI 1.0, 36 from revision 2.
    let mut rsdp = [0u8; 36];
    read(rsdp_address, &mut rsdp[..20])?;
    if &rsdp[..8] != b"RSD PTR " || !sums_to_zero(&rsdp[..20]) {
        return Err(AcpiError::BadRsdp);
    }
    let revision = rsdp[15];
    let rsdt = (u64::from(u32_at(&rsdp, 16)), 4);
    let (root, entry_size) = if revision >= 2 {
        read(rsdp_address, &mut rsdp)?;
        if !sums_to_zero(&rsdp) {
            return Err(AcpiError::BadRsdp);
        }
        // Some firmware fills in only the 32-bit RSDT even at revision 2.
        match u64_at(&rsdp, 24) {
            0 => rsdt,
            xsdt => (xsdt, 8),
        }
    } else {
        rsdt
    };
    let root_table = table_at(root)?;
    let entries = &root_table[HEADER as usize..];
    Ok(entries
        .chunks_exact(entry_size)
        .map(|entry| {
            if entry_size == 8 {
                u64_at(entry, 0)
            } else {
                u64::from(u32_at(entry, 0))
            }
        })
        .collect())
}

/// The raw bytes (header included) of the first table with `signature`,
/// with its checksum verified.
pub fn find_table(signature: &[u8; 4]) -> Result<Vec<u8>, AcpiError> {
    for address in table_addresses()? {
        let mut head = [0u8; 4];
        if read(address, &mut head).is_err() || &head != signature {
            continue;
        }
        return table_at(address);
    }
    Err(AcpiError::NotFound)
}

/// The signatures of every table, for diagnostics.
pub fn signatures() -> Result<Vec<[u8; 4]>, AcpiError> {
    let mut out = Vec::new();
    for address in table_addresses()? {
        let mut head = [0u8; 4];
        if read(address, &mut head).is_ok() {
            out.push(head);
        }
    }
    Ok(out)
}

/// The first I/O APIC in the MADT ("APIC" table, ACPI 6.4 section 5.2.12):
/// its physical address and first GSI. `None` without a usable MADT; the
/// caller then keeps the PC default 0xfec00000.
pub fn ioapic_from_madt() -> Option<(u64, u32)> {
    let table = find_table(b"APIC").ok()?;
    parse_madt_ioapic(&table)
}

/// Finds the first I/O APIC structure (type 1: id, reserved, u32 address,
/// u32 GSI base) in raw MADT bytes; every length is checked.
fn parse_madt_ioapic(table: &[u8]) -> Option<(u64, u32)> {
    // 36-byte SDT header, then local APIC address (u32) and flags (u32).
    let mut offset = 44usize;
    while offset + 2 <= table.len() {
        let kind = table[offset];
        let len = usize::from(table[offset + 1]);
        if len < 2 || offset + len > table.len() {
            return None;
        }
        if kind == 1 && len >= 12 {
            let field = |at: usize| {
                u32::from_le_bytes([
                    table[offset + at],
                    table[offset + at + 1],
                    table[offset + at + 2],
                    table[offset + at + 3],
                ])
            };
            return Some((u64::from(field(4)), field(8)));
        }
        offset += len;
    }
    None
}
