//! Finding raw ACPI tables by signature, and the I/O APIC from the MADT.
//!
//! The bootloader hands over the physical address of the RSDP; the `acpi`
//! crate (rust-osdev) validates it and walks the XSDT (or, on ACPI 1.0, the
//! RSDT) that lists every table (ACPI 6.5 §5.2.5-§5.2.8), and it parses the
//! MADT into an interrupt model (§5.2.12). This module supplies the crate's
//! [`Handler`] over the bootloader's physical-memory mapping and copies
//! tables out as checked byte vectors; parsing the tables daxbox cares about
//! is the business of the host-tested libraries (`daxbox-pmem` for the
//! NFIT, `daxbox-pci` for the MCFG).
//!
//! The crate trusts firmware more than daxbox does (it does not checksum
//! the root table, subtracts header sizes from firmware lengths, unwraps a
//! boot processor and loops on zero-length MADT entries), so every length
//! is bounded and every table checksummed here before the crate walks it,
//! and the handler never hands out memory outside the physical-memory
//! mapping: a bad firmware table is an error, never a panic or a fault.
//!
//! Invariant: memory is read only inside the bootloader's physical-memory
//! map (below the end of the boot memory map), through the RSDP the
//! bootloader found ([`crate::boot::Boot::init_acpi`]); tables are copied
//! out, never handed out as references.

use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;
use core::mem::{align_of, size_of, size_of_val};
use core::ptr::NonNull;

use acpi::platform::InterruptModel;
use acpi::rsdp::Rsdp;
use acpi::sdt::madt::Madt;
use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiTables, Handle, Handler, PciAddress, PhysicalMapping};
use spin::Once;

use crate::memory;
use crate::PhysAddr;

/// Largest table copied (the NFIT of a large machine is a few KiB).
const MAX_TABLE: usize = 1 << 20;
/// Size of the common table header (§5.2.6).
const HEADER: usize = size_of::<SdtHeader>();

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
pub(crate) fn init(rsdp: Option<u64>, mapped_end: u64) {
    ROOTS.call_once(|| Roots { rsdp, mapped_end });
}

/// What a refused mapping points at: zeroes, so the crate reads a header
/// with a zero length and a signature that matches nothing. 8-aligned and
/// larger than any firmware structure the crate maps (the FADT, 276 bytes,
/// is the largest).
static ZEROES: [u64; 512] = [0; 512];

/// The crate's view of physical memory: the bootloader's physical-memory
/// mapping (`Mapping::Dynamic`), which covers everything below the end of
/// the boot memory map, where firmware puts its ACPI tables.
///
/// The crate's `map_physical_region` cannot fail, so a request outside the
/// mapping (or longer than [`MAX_TABLE`]) gets the [`ZEROES`] page and is
/// recorded in `fault`; [`KernelHandler::check`] turns it into an error.
#[derive(Clone, Copy)]
struct KernelHandler<'a> {
    mapped_end: u64,
    fault: &'a Cell<Option<u64>>,
}

impl KernelHandler<'_> {
    /// `Err` if a mapping was refused since the last check.
    fn check(&self) -> Result<(), AcpiError> {
        match self.fault.take() {
            Some(address) => Err(AcpiError::Unmapped { address }),
            None => Ok(()),
        }
    }

    /// Whether `address..address + len` lies inside the mapping.
    fn is_mapped(&self, address: usize, len: usize) -> bool {
        (address as u64)
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.mapped_end)
    }
}

impl Handler for KernelHandler<'_> {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // Never less than a whole `T`: the crate subtracts `size_of::<T>()`
        // from the region length (the root table's entry count), so a
        // firmware length below the header size must not reach it.
        let size = size.max(size_of::<T>());
        let virtual_start = if size <= MAX_TABLE && self.is_mapped(physical_address, size) {
            NonNull::new(memory::phys_to_virt(physical_address as u64) as *mut T)
        } else {
            None
        };
        let (virtual_start, region_length) = match virtual_start {
            Some(start) => (start, size),
            None => {
                self.fault.set(Some(physical_address as u64));
                // Every `T` the crate maps is a small packed firmware
                // structure (align 1); the guard keeps a future one from
                // reading past ZEROES.
                assert!(
                    size_of::<T>() <= size_of_val(&ZEROES) && align_of::<T>() <= align_of::<u64>(),
                    "acpi: firmware structure larger than the zero page"
                );
                (NonNull::from(&ZEROES).cast::<T>(), size_of::<T>())
            }
        };
        PhysicalMapping {
            physical_start: physical_address,
            virtual_start,
            region_length,
            mapped_length: region_length,
            handler: *self,
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {
        // The physical-memory mapping is permanent: nothing to undo.
    }

    // daxbox runs no AML, the only user of everything below: reads see
    // all-ones (an absent device), writes are dropped, time stands still.
    fn read_u8(&self, _address: usize) -> u8 {
        u8::MAX
    }
    fn read_u16(&self, _address: usize) -> u16 {
        u16::MAX
    }
    fn read_u32(&self, _address: usize) -> u32 {
        u32::MAX
    }
    fn read_u64(&self, _address: usize) -> u64 {
        u64::MAX
    }
    fn write_u8(&self, _address: usize, _value: u8) {}
    fn write_u16(&self, _address: usize, _value: u16) {}
    fn write_u32(&self, _address: usize, _value: u32) {}
    fn write_u64(&self, _address: usize, _value: u64) {}
    fn read_io_u8(&self, _port: u16) -> u8 {
        u8::MAX
    }
    fn read_io_u16(&self, _port: u16) -> u16 {
        u16::MAX
    }
    fn read_io_u32(&self, _port: u16) -> u32 {
        u32::MAX
    }
    fn write_io_u8(&self, _port: u16, _value: u8) {}
    fn write_io_u16(&self, _port: u16, _value: u16) {}
    fn write_io_u32(&self, _port: u16, _value: u32) {}
    fn read_pci_u8(&self, _address: PciAddress, _offset: u16) -> u8 {
        u8::MAX
    }
    fn read_pci_u16(&self, _address: PciAddress, _offset: u16) -> u16 {
        u16::MAX
    }
    fn read_pci_u32(&self, _address: PciAddress, _offset: u16) -> u32 {
        u32::MAX
    }
    fn write_pci_u8(&self, _address: PciAddress, _offset: u16, _value: u8) {}
    fn write_pci_u16(&self, _address: PciAddress, _offset: u16, _value: u16) {}
    fn write_pci_u32(&self, _address: PciAddress, _offset: u16, _value: u32) {}
    fn nanos_since_boot(&self) -> u64 {
        0
    }
    fn stall(&self, _microseconds: u64) {}
    fn sleep(&self, _milliseconds: u64) {}
    fn create_mutex(&self) -> Handle {
        Handle(0)
    }
    fn acquire(&self, _mutex: Handle, _timeout: u16) -> Result<(), acpi::aml::AmlError> {
        Ok(())
    }
    fn release(&self, _mutex: Handle) {}
}

/// Maps the whole table at `address` after checking that its length is
/// sane and that it is mapped, then checks its checksum (and that its
/// signature and OEM ids are text) with the crate's `SdtHeader::validate`.
fn checked_table<'a>(
    handler: &KernelHandler<'a>,
    address: usize,
) -> Result<PhysicalMapping<KernelHandler<'a>, SdtHeader>, AcpiError> {
    let bad = AcpiError::BadTable {
        address: address as u64,
    };
    // SAFETY: the handler only hands out memory inside the physical-memory
    // mapping (or its zero page); a header is plain bytes, any value valid.
    let header = unsafe { handler.map_physical_region::<SdtHeader>(address, HEADER) };
    handler.check()?;
    let length = header.length() as usize;
    drop(header);
    if !(HEADER..=MAX_TABLE).contains(&length) {
        return Err(bad);
    }
    // SAFETY: as above, now for the whole `length` bytes of the table.
    let table = unsafe { handler.map_physical_region::<SdtHeader>(address, length) };
    handler.check()?;
    let signature = table.signature;
    // SAFETY: the mapping covers the `length` bytes the header claims,
    // which is what `validate` sums.
    unsafe { table.validate(signature) }.map_err(|_| bad)?;
    Ok(table)
}

/// The bytes of a mapped table (header included).
fn table_bytes(table: &PhysicalMapping<KernelHandler<'_>, SdtHeader>) -> Vec<u8> {
    // SAFETY: `checked_table` mapped `region_length` (= the table's
    // length) readable bytes at `virtual_start`; firmware tables are never
    // written while the kernel runs, and the slice is copied at once.
    unsafe {
        core::slice::from_raw_parts(
            table.virtual_start.as_ptr().cast::<u8>(),
            table.region_length,
        )
    }
    .to_vec()
}

/// The crate's table list, from the RSDP the bootloader found, with the
/// RSDP and the XSDT/RSDT checked first.
fn tables<'a>(
    fault: &'a Cell<Option<u64>>,
) -> Result<(AcpiTables<KernelHandler<'a>>, KernelHandler<'a>), AcpiError> {
    let roots = ROOTS.get().ok_or(AcpiError::NoRsdp)?;
    let rsdp_address = roots.rsdp.ok_or(AcpiError::NoRsdp)? as usize;
    let handler = KernelHandler {
        mapped_end: roots.mapped_end,
        fault,
    };
    // SAFETY: the handler only hands out memory inside the physical-memory
    // mapping; every bit pattern is a valid `Rsdp` (integers and arrays).
    let rsdp = unsafe { handler.map_physical_region::<Rsdp>(rsdp_address, size_of::<Rsdp>()) };
    handler.check()?;
    // From revision 2 `validate` sums the firmware's `length` bytes (ACPI
    // 6.5 §5.2.5.3: 36); keep that sum inside the mapping.
    let revision = rsdp.revision();
    if revision > 0 && !handler.is_mapped(rsdp_address, rsdp.length() as usize) {
        return Err(AcpiError::BadRsdp);
    }
    // Unlike `AcpiTables::from_rsdp`, a bad checksum is an error.
    rsdp.validate().map_err(|_| AcpiError::BadRsdp)?;
    // Some firmware fills in only the 32-bit RSDT even at revision 2; the
    // crate reads 8-byte entries for any revision above 0, 4-byte at 0.
    let (root, revision, signature) = match revision {
        0 => (rsdp.rsdt_address() as usize, 0, Signature::RSDT),
        _ => match rsdp.xsdt_address() {
            0 => (rsdp.rsdt_address() as usize, 0, Signature::RSDT),
            xsdt => (xsdt as usize, revision, Signature::XSDT),
        },
    };
    drop(rsdp);
    let root_table = checked_table(&handler, root)?;
    if root_table.signature != signature {
        return Err(AcpiError::BadTable {
            address: root as u64,
        });
    }
    drop(root_table);
    // SAFETY: `root` holds a mapped, checksummed XSDT/RSDT of sane length,
    // which is all the crate reads here and in `table_entries`.
    let tables = unsafe { AcpiTables::from_rsdt(handler, revision, root) }.map_err(|_| {
        AcpiError::BadTable {
            address: root as u64,
        }
    })?;
    Ok((tables, handler))
}

/// The signature of the table at `address`, if its header is mapped.
fn signature_at(handler: &KernelHandler<'_>, address: usize) -> Option<[u8; 4]> {
    // SAFETY: the handler only hands out memory inside the physical-memory
    // mapping (or its zero page); a header is plain bytes.
    let header = unsafe { handler.map_physical_region::<SdtHeader>(address, HEADER) };
    handler.check().ok()?;
    // SAFETY: the mapping covers a whole header, whose first 4 bytes are
    // the signature (§5.2.6); read as bytes because the crate's
    // `Signature::as_str` panics on non-text firmware signatures.
    Some(unsafe {
        header
            .virtual_start
            .as_ptr()
            .cast::<[u8; 4]>()
            .read_unaligned()
    })
}

/// The raw bytes (header included) of the first table with `signature`,
/// with its checksum verified.
pub fn find_table(signature: &[u8; 4]) -> Result<Vec<u8>, AcpiError> {
    let fault = Cell::new(None);
    let (tables, handler) = tables(&fault)?;
    for address in tables.table_entries() {
        if signature_at(&handler, address).as_ref() == Some(signature) {
            return checked_table(&handler, address).map(|table| table_bytes(&table));
        }
    }
    Err(AcpiError::NotFound)
}

/// The raw bytes (header included) of every table with `signature`
/// (there may be several SSDTs), each with its checksum verified; a table
/// that fails the checks is left out.
pub fn find_tables(signature: &[u8; 4]) -> Result<Vec<Vec<u8>>, AcpiError> {
    let fault = Cell::new(None);
    let (tables, handler) = tables(&fault)?;
    Ok(tables
        .table_entries()
        .filter(|&address| signature_at(&handler, address).as_ref() == Some(signature))
        .filter_map(|address| checked_table(&handler, address).ok())
        .map(|table| table_bytes(&table))
        .collect())
}

/// The signatures of every table, for diagnostics.
pub fn signatures() -> Result<Vec<[u8; 4]>, AcpiError> {
    let fault = Cell::new(None);
    let (tables, handler) = tables(&fault)?;
    Ok(tables
        .table_entries()
        .filter_map(|address| signature_at(&handler, address))
        .collect())
}

/// The first I/O APIC in the MADT ("APIC" table, ACPI 6.5 §5.2.12): its
/// physical address and first GSI, from the crate's interrupt model. `None`
/// without a usable MADT; the caller then keeps the PC default 0xfec00000.
pub fn ioapic_from_madt() -> Option<(PhysAddr, u32)> {
    let madt = match find_table(b"APIC") {
        Ok(madt) => madt,
        Err(AcpiError::NotFound) => return None,
        Err(error) => {
            log::warn!("acpi: MADT unusable: {error}");
            return None;
        }
    };
    if let Err(reason) = madt_walkable(&madt) {
        log::warn!("acpi: MADT unusable: {reason}");
        return None;
    }
    let fault = Cell::new(None);
    let (tables, _) = tables(&fault).ok()?;
    match InterruptModel::new(&tables) {
        Ok((InterruptModel::Apic(apic), _)) => {
            let first = apic.io_apics.first()?;
            Some((
                PhysAddr::new_truncate(u64::from(first.address)),
                first.global_system_interrupt_base,
            ))
        }
        Ok(_) => None,
        Err(error) => {
            log::warn!("acpi: MADT unusable: {error:?}");
            None
        }
    }
}

/// Checks what the crate's MADT walk takes on trust (checksum and table
/// length are already checked): the fixed part is there, every entry
/// (type, length, ...) has a length of at least 2 and ends inside the
/// table (a zero length makes the crate loop forever), and there is a
/// processor-local APIC entry (type 0 or 9: the crate unwraps the boot
/// processor as soon as it sees any APIC entry).
fn madt_walkable(madt: &[u8]) -> Result<(), &'static str> {
    let mut rest = madt
        .get(size_of::<Madt>()..)
        .ok_or("shorter than its fixed part")?;
    let mut has_local_apic = false;
    while let [kind, len, ..] = *rest {
        let len = usize::from(len);
        if len < 2 || len > rest.len() {
            return Err("an entry has a bad length");
        }
        has_local_apic |= kind == 0 || kind == 9;
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err("a truncated entry at the end");
    }
    if !has_local_apic {
        return Err("no processor-local APIC entry");
    }
    Ok(())
}
