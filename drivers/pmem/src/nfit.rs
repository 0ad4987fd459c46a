//! Parser for the ACPI NVDIMM Firmware Interface Table (NFIT).
//!
//! The NFIT is how firmware (and QEMU's `-device nvdimm`) describes
//! persistent memory that is *not* in the E820/UEFI memory map. It is
//! specified in ACPI 6.5 §5.2.26 (§5.2.25 in ACPI 6.0-6.4); QEMU builds it
//! in `hw/acpi/nvdimm.c`.
//!
//! # Layout (all fields little-endian)
//! ```text
//! offset size  table header (ACPI §5.2.6, 36 bytes)
//!      0    4  signature "NFIT"
//!      4    4  length of the whole table, header included
//!      8    1  revision (1)
//!      9    1  checksum: all `length` bytes sum to 0 (mod 256)
//!     10    6  OEM id            16  8  OEM table id
//!     24    4  OEM revision      28  4  creator id      32  4  creator rev
//!     36    4  reserved
//!     40       structures, each starting with u16 type, u16 length
//! ```
//! Structures used here (others are skipped by their length):
//! ```text
//! type 0, System Physical Address (SPA) Range, 56 bytes
//! (64 since ACPI 6.3, which appends an 8-byte location cookie):
//!      4  u16 range structure index    6  u16 flags
//!      8  u32 reserved                12  u32 proximity domain
//!     16  [u8;16] address range type GUID
//!     32  u64 base                    40  u64 length
//!     48  u64 memory mapping attributes (EFI_MEMORY_WB = 0x8, _NV = 0x8000)
//! type 7, Platform Capabilities (ACPI 6.2 Errata A), 16 bytes:
//!      4  u8 highest valid capability bit   5  [u8;3] reserved
//!      8  u32 capabilities: bit 0 CPU cache flush to persistence domain
//!         on power loss (eADR), bit 1 memory controller flush (ADR),
//!         bit 2 hardware mirroring           12  u32 reserved
//! ```
//! A bad table header refuses the whole table ([`NfitError`]); a bad
//! structure is skipped with an [`NfitWarning`] and parsing goes on where
//! that is still possible.

use alloc::vec::Vec;
use core::fmt;

use crate::domain::Domain;

/// The table signature.
pub const SIGNATURE: [u8; 4] = *b"NFIT";
/// Bytes before the first structure: ACPI header (36) + reserved (4).
pub const HEADER_LEN: usize = 40;
/// Structure type of a System Physical Address Range.
pub const TYPE_SPA_RANGE: u16 = 0;
/// Structure type of the Platform Capabilities structure.
pub const TYPE_PLATFORM_CAPABILITIES: u16 = 7;
/// Minimum length of an SPA Range structure (ACPI 6.0-6.2).
pub const SPA_RANGE_MIN_LEN: usize = 56;
/// Minimum length of a Platform Capabilities structure.
pub const PLATFORM_CAPABILITIES_MIN_LEN: usize = 16;

/// The "Persistent Memory Region" address range type GUID,
/// 66F0D379-B4F3-4074-AC43-0D3318B78CDB, as stored in the table: the
/// first three groups little-endian, the last two as written (the EFI GUID
/// byte layout, ACPI §5.2.26.2 Table 5.135).
pub const PERSISTENT_MEMORY_GUID: [u8; 16] = [
    0x79, 0xd3, 0xf0, 0x66, 0xf3, 0xb4, 0x74, 0x40, 0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c, 0xdb,
];

/// SPA Range flag bit 1: the proximity domain field is valid.
pub const SPA_FLAG_PROXIMITY_VALID: u16 = 1 << 1;
/// Platform capability bit 0: CPU caches are flushed to the persistence
/// domain on power loss (eADR).
pub const CAPABILITY_CPU_CACHE_FLUSH: u32 = 1 << 0;
/// Platform capability bit 1: the memory controller flushes its queues to
/// the persistence domain on power loss (ADR).
pub const CAPABILITY_MEMORY_CONTROLLER_FLUSH: u32 = 1 << 1;

/// Why the whole table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfitError {
    /// Fewer bytes than the 40-byte header.
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The signature is not "NFIT".
    BadSignature {
        /// The signature found.
        found: [u8; 4],
    },
    /// The header's length field is below the header size or beyond the
    /// bytes available.
    BadLength {
        /// The length field.
        length: u32,
        /// Bytes available.
        available: usize,
    },
    /// The bytes do not sum to zero.
    BadChecksum {
        /// The sum of all bytes, mod 256 (should be 0).
        sum: u8,
    },
}

impl fmt::Display for NfitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NfitError::TooShort { len } => write!(
                f,
                "NFIT: table of {len} bytes is shorter than its {HEADER_LEN}-byte header"
            ),
            NfitError::BadSignature { found } => {
                write!(f, "NFIT: bad signature {:02x?}", found)
            }
            NfitError::BadLength { length, available } => write!(
                f,
                "NFIT: header length {length} is invalid ({available} bytes available, \
                 at least {HEADER_LEN} needed)"
            ),
            NfitError::BadChecksum { sum } => {
                write!(f, "NFIT: bad checksum (bytes sum to {sum:#04x}, not 0)")
            }
        }
    }
}

/// A structure that was skipped, or a problem that ended the walk early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfitWarning {
    /// Fewer than 4 bytes left for a structure header at `offset`;
    /// the rest of the table is ignored.
    TruncatedHeader {
        /// Offset in the table.
        offset: usize,
    },
    /// The structure's length is below 4 or runs past the table end; the
    /// rest of the table is ignored because the next structure cannot be
    /// found.
    BadStructureLength {
        /// Offset in the table.
        offset: usize,
        /// Structure type.
        kind: u16,
        /// Its length field.
        length: u16,
    },
    /// A known structure is shorter than its minimum; it is skipped.
    ShortStructure {
        /// Offset in the table.
        offset: usize,
        /// Structure type.
        kind: u16,
        /// Its length field.
        length: u16,
        /// The minimum for this type.
        minimum: usize,
    },
    /// A persistent-memory SPA range with zero length or an end beyond the
    /// 64-bit address space; it is skipped.
    BadRange {
        /// Offset in the table.
        offset: usize,
        /// Base address.
        base: u64,
        /// Length.
        length: u64,
    },
    /// A second Platform Capabilities structure; the first one is used.
    DuplicateCapabilities {
        /// Offset in the table.
        offset: usize,
    },
    /// More structures than the caller's bound; the rest are ignored.
    TooManyStructures {
        /// Offset of the first structure ignored.
        offset: usize,
        /// The bound.
        limit: usize,
    },
}

impl fmt::Display for NfitWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NfitWarning::TruncatedHeader { offset } => write!(
                f,
                "NFIT: truncated structure header at offset {offset:#x} (rest ignored)"
            ),
            NfitWarning::BadStructureLength {
                offset,
                kind,
                length,
            } => write!(
                f,
                "NFIT: structure type {kind} at offset {offset:#x} has bad length {length} \
                 (rest ignored)"
            ),
            NfitWarning::ShortStructure {
                offset,
                kind,
                length,
                minimum,
            } => write!(
                f,
                "NFIT: structure type {kind} at offset {offset:#x} is {length} bytes, \
                 needs {minimum} (skipped)"
            ),
            NfitWarning::BadRange {
                offset,
                base,
                length,
            } => write!(
                f,
                "NFIT: SPA range at offset {offset:#x} (base {base:#x}, length {length:#x}) \
                 is empty or wraps (skipped)"
            ),
            NfitWarning::DuplicateCapabilities { offset } => write!(
                f,
                "NFIT: second platform capabilities structure at offset {offset:#x} (ignored)"
            ),
            NfitWarning::TooManyStructures { offset, limit } => write!(
                f,
                "NFIT: more than {limit} structures; the rest from offset {offset:#x} ignored"
            ),
        }
    }
}

/// A System Physical Address Range structure (type 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaRange {
    /// SPA range structure index (referenced by memory device structures).
    pub index: u16,
    /// Flags (bit 0: control region for hot add only; bit 1: proximity
    /// domain valid; bit 2: location cookie valid).
    pub flags: u16,
    /// NUMA proximity domain, valid when flag bit 1 is set.
    pub proximity_domain: u32,
    /// Address range type GUID in table byte order.
    pub type_guid: [u8; 16],
    /// First physical address.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// EFI memory mapping attributes (EFI_MEMORY_WB, EFI_MEMORY_NV, ...).
    pub memory_attributes: u64,
}

impl SpaRange {
    /// True when the range type is byte-addressable persistent memory.
    pub fn is_persistent_memory(&self) -> bool {
        self.type_guid == PERSISTENT_MEMORY_GUID
    }
}

/// The Platform Capabilities structure (type 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformCapabilities {
    /// Highest capability bit that is valid; bits above it are ignored.
    pub highest_valid: u8,
    /// The capabilities field as stored.
    pub raw: u32,
}

impl PlatformCapabilities {
    /// The capability bits that are valid (masked by `highest_valid`, as
    /// Linux's `add_platform_cap` does).
    pub fn valid(&self) -> u32 {
        let mask = match 1u32.checked_shl(u32::from(self.highest_valid) + 1) {
            Some(bit) => bit - 1,
            None => u32::MAX,
        };
        self.raw & mask
    }

    /// CPU caches are flushed on power loss (eADR): flushes can be skipped.
    pub fn cpu_cache_flush(&self) -> bool {
        self.valid() & CAPABILITY_CPU_CACHE_FLUSH != 0
    }

    /// The memory controller is flushed on power loss (ADR).
    pub fn memory_controller_flush(&self) -> bool {
        self.valid() & CAPABILITY_MEMORY_CONTROLLER_FLUSH != 0
    }
}

/// A parsed NFIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nfit {
    /// Table revision from the header.
    pub revision: u8,
    /// OEM id from the header.
    pub oem_id: [u8; 6],
    /// Every SPA range structure, of any type GUID, in table order
    /// (persistent-memory ranges with an empty or wrapping extent are left
    /// out with a warning).
    pub spa_ranges: Vec<SpaRange>,
    /// The platform capabilities, if the table has them.
    pub capabilities: Option<PlatformCapabilities>,
    /// Number of structures walked (all types).
    pub structures: usize,
    /// Structures skipped and other problems.
    pub warnings: Vec<NfitWarning>,
}

impl Nfit {
    /// The persistent-memory ranges, in table order.
    pub fn persistent_ranges(&self) -> impl Iterator<Item = &SpaRange> {
        self.spa_ranges.iter().filter(|r| r.is_persistent_memory())
    }

    /// The persistence domain of the NVDIMMs this table describes: eADR
    /// when the capabilities say CPU caches are flushed on power loss,
    /// otherwise ADR (also when the table has no capabilities structure:
    /// an NVDIMM platform without one is an ADR platform, which is what
    /// Linux assumes too).
    pub fn domain(&self) -> Domain {
        match self.capabilities {
            Some(caps) if caps.cpu_cache_flush() => Domain::Eadr,
            _ => Domain::Adr,
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    // Callers check `at + 2 <= bytes.len()` first (structure lengths are
    // validated before any field is read).
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses an NFIT from its raw bytes (starting at the signature). Bytes
/// after the header's length are ignored, so a caller may pass a mapping
/// that is larger than the table.
pub fn parse(bytes: &[u8]) -> Result<Nfit, NfitError> {
    if bytes.len() < HEADER_LEN {
        return Err(NfitError::TooShort { len: bytes.len() });
    }
    let mut found = [0; 4];
    found.copy_from_slice(&bytes[..4]);
    if found != SIGNATURE {
        return Err(NfitError::BadSignature { found });
    }
    let length = u32_at(bytes, 4);
    let table_len = usize::try_from(length).unwrap_or(usize::MAX);
    if table_len < HEADER_LEN || table_len > bytes.len() {
        return Err(NfitError::BadLength {
            length,
            available: bytes.len(),
        });
    }
    let table = &bytes[..table_len];
    // ACPI §5.2.6: the entire table, checksum field included, sums to 0.
    let sum = table.iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
    if sum != 0 {
        return Err(NfitError::BadChecksum { sum });
    }
    let mut oem_id = [0; 6];
    oem_id.copy_from_slice(&table[10..16]);
    let mut nfit = Nfit {
        revision: table[8],
        oem_id,
        spa_ranges: Vec::new(),
        capabilities: None,
        structures: 0,
        warnings: Vec::new(),
    };

    walk_structures(&mut nfit, table, HEADER_LEN, usize::MAX);
    Ok(nfit)
}

/// Walks the structures of `bytes` from `start` to the end (each one a
/// u16 type and a u16 length, ACPI §5.2.26.1), adding what it finds to
/// `nfit`. Used by [`parse`] (after the table header) and by
/// [`parse_structures`] (QEMU's FIT: bare structures). At most
/// `max_structures` are walked; the rest are ignored with a warning.
fn walk_structures(nfit: &mut Nfit, table: &[u8], start: usize, max_structures: usize) {
    let mut offset = start;
    while offset < table.len() {
        if nfit.structures >= max_structures {
            nfit.warnings.push(NfitWarning::TooManyStructures {
                offset,
                limit: max_structures,
            });
            break;
        }
        let rest = &table[offset..];
        if rest.len() < 4 {
            nfit.warnings.push(NfitWarning::TruncatedHeader { offset });
            break;
        }
        let kind = u16_at(rest, 0);
        let length = u16_at(rest, 2);
        let len = usize::from(length);
        if len < 4 || len > rest.len() {
            nfit.warnings.push(NfitWarning::BadStructureLength {
                offset,
                kind,
                length,
            });
            break;
        }
        let structure = &rest[..len];
        nfit.structures += 1;
        match kind {
            TYPE_SPA_RANGE => parse_spa(nfit, offset, structure),
            TYPE_PLATFORM_CAPABILITIES => parse_capabilities(nfit, offset, structure),
            // Memory device maps, interleave, SMBIOS, control regions,
            // block data windows and flush hint structures describe
            // management paths daxbox does not use (ACPI §5.2.26.3-.9).
            _ => {}
        }
        // `len <= rest.len()`, so this stays within the table.
        offset += len;
    }
}

/// Parses bare NFIT structures with no table header (QEMU's FIT, as its
/// NVDIMM root device's `_FIT` or the FIT protocol returns it): the same
/// walk as [`parse`], at most `max_structures` structures. `revision` and
/// `oem_id` are zero, having no header to come from.
pub fn parse_structures(bytes: &[u8], max_structures: usize) -> Nfit {
    let mut nfit = Nfit {
        revision: 0,
        oem_id: [0; 6],
        spa_ranges: Vec::new(),
        capabilities: None,
        structures: 0,
        warnings: Vec::new(),
    };
    walk_structures(&mut nfit, bytes, 0, max_structures);
    nfit
}

fn short(offset: usize, kind: u16, structure: &[u8], minimum: usize) -> NfitWarning {
    NfitWarning::ShortStructure {
        offset,
        kind,
        // The length came from a u16 field.
        length: u16::try_from(structure.len()).unwrap_or(u16::MAX),
        minimum,
    }
}

fn parse_spa(nfit: &mut Nfit, offset: usize, s: &[u8]) {
    if s.len() < SPA_RANGE_MIN_LEN {
        let warning = short(offset, TYPE_SPA_RANGE, s, SPA_RANGE_MIN_LEN);
        nfit.warnings.push(warning);
        return;
    }
    let mut type_guid = [0; 16];
    type_guid.copy_from_slice(&s[16..32]);
    let range = SpaRange {
        index: u16_at(s, 4),
        flags: u16_at(s, 6),
        proximity_domain: u32_at(s, 12),
        type_guid,
        base: u64_at(s, 32),
        length: u64_at(s, 40),
        memory_attributes: u64_at(s, 48),
    };
    if range.is_persistent_memory()
        && (range.length == 0 || range.base.checked_add(range.length).is_none())
    {
        nfit.warnings.push(NfitWarning::BadRange {
            offset,
            base: range.base,
            length: range.length,
        });
        return;
    }
    nfit.spa_ranges.push(range);
}

fn parse_capabilities(nfit: &mut Nfit, offset: usize, s: &[u8]) {
    if s.len() < PLATFORM_CAPABILITIES_MIN_LEN {
        let warning = short(
            offset,
            TYPE_PLATFORM_CAPABILITIES,
            s,
            PLATFORM_CAPABILITIES_MIN_LEN,
        );
        nfit.warnings.push(warning);
        return;
    }
    if nfit.capabilities.is_some() {
        nfit.warnings
            .push(NfitWarning::DuplicateCapabilities { offset });
        return;
    }
    nfit.capabilities = Some(PlatformCapabilities {
        highest_valid: s[4],
        raw: u32_at(s, 8),
    });
}

/// Builders of NFIT bytes laid out byte-for-byte like QEMU's
/// `hw/acpi/nvdimm.c` (QEMU 7.2): per NVDIMM an SPA range, a memory device
/// map and a control region structure, then a capabilities structure when
/// `-machine nvdimm-persistence=` is given. Public so the kernel's tests
/// and other crates can build fixtures too.
pub mod fixture {
    use alloc::vec::Vec;

    /// One emulated NVDIMM.
    #[derive(Debug, Clone, Copy)]
    pub struct Dimm {
        /// QEMU's slot number (0, 1, ...).
        pub slot: u16,
        /// Base physical address.
        pub base: u64,
        /// Size in bytes.
        pub size: u64,
        /// NUMA node.
        pub node: u32,
    }

    /// The SPA range structure QEMU builds (`nvdimm_build_structure_spa`).
    pub fn spa(dimm: &Dimm) -> Vec<u8> {
        let mut s = Vec::with_capacity(56);
        s.extend_from_slice(&0u16.to_le_bytes()); // type
        s.extend_from_slice(&56u16.to_le_bytes()); // length
        s.extend_from_slice(&((dimm.slot + 1) << 1).to_le_bytes()); // spa index
        s.extend_from_slice(&3u16.to_le_bytes()); // flags: ctrl region | proximity valid
        s.extend_from_slice(&0u32.to_le_bytes()); // reserved
        s.extend_from_slice(&dimm.node.to_le_bytes());
        s.extend_from_slice(&super::PERSISTENT_MEMORY_GUID);
        s.extend_from_slice(&dimm.base.to_le_bytes());
        s.extend_from_slice(&dimm.size.to_le_bytes());
        s.extend_from_slice(&0x8008u64.to_le_bytes()); // EFI_MEMORY_WB | EFI_MEMORY_NV
        s
    }

    /// The memory device map structure (`nvdimm_build_structure_memdev`).
    pub fn memdev(dimm: &Dimm) -> Vec<u8> {
        let spa_index = (dimm.slot + 1) << 1;
        let mut s = Vec::with_capacity(48);
        s.extend_from_slice(&1u16.to_le_bytes());
        s.extend_from_slice(&48u16.to_le_bytes());
        s.extend_from_slice(&(u32::from(dimm.slot) + 1).to_le_bytes()); // handle
        s.extend_from_slice(&0u16.to_le_bytes()); // physical id
        s.extend_from_slice(&0u16.to_le_bytes()); // region id
        s.extend_from_slice(&spa_index.to_le_bytes());
        s.extend_from_slice(&(spa_index + 1).to_le_bytes()); // dcr index
        s.extend_from_slice(&dimm.size.to_le_bytes()); // region length
        s.extend_from_slice(&0u64.to_le_bytes()); // region offset
        s.extend_from_slice(&0u64.to_le_bytes()); // region dpa
        s.extend_from_slice(&0u16.to_le_bytes()); // interleave index
        s.extend_from_slice(&1u16.to_le_bytes()); // interleave ways
        s.extend_from_slice(&0u16.to_le_bytes()); // flags
        s.extend_from_slice(&0u16.to_le_bytes()); // reserved
        s
    }

    /// The control region structure (`nvdimm_build_structure_dcr`).
    pub fn dcr(dimm: &Dimm) -> Vec<u8> {
        let mut s = Vec::with_capacity(80);
        s.extend_from_slice(&4u16.to_le_bytes());
        s.extend_from_slice(&80u16.to_le_bytes());
        s.extend_from_slice(&(((dimm.slot + 1) << 1) + 1).to_le_bytes()); // dcr index
        s.extend_from_slice(&0x8086u16.to_le_bytes()); // vendor
        s.extend_from_slice(&1u16.to_le_bytes()); // device
        s.extend_from_slice(&1u16.to_le_bytes()); // revision
        s.extend_from_slice(&[0; 6]); // sub vendor, sub device, sub revision
        s.extend_from_slice(&[0; 6]); // reserved
        s.extend_from_slice(&(0x12_3456u32 + u32::from(dimm.slot)).to_le_bytes());
        s.extend_from_slice(&0x301u16.to_le_bytes()); // format interface code
        s.extend_from_slice(&0u16.to_le_bytes()); // number of block control windows
        s.extend_from_slice(&[0; 40]); // bcw size, command/status offsets and sizes
        s.extend_from_slice(&0u16.to_le_bytes()); // flags
        s.extend_from_slice(&[0; 6]); // reserved
        s
    }

    /// The platform capabilities structure (`nvdimm_build_structure_caps`).
    pub fn capabilities(capabilities: u32) -> Vec<u8> {
        let mut s = Vec::with_capacity(16);
        s.extend_from_slice(&7u16.to_le_bytes());
        s.extend_from_slice(&16u16.to_le_bytes());
        // QEMU: highest_cap = 31 - clz32(capabilities).
        let highest = 31u32.wrapping_sub(capabilities.leading_zeros()) as u8;
        s.push(highest);
        s.extend_from_slice(&[0; 3]);
        s.extend_from_slice(&capabilities.to_le_bytes());
        s.extend_from_slice(&[0; 4]);
        s
    }

    /// Wraps `structures` in an NFIT header like QEMU's `acpi_table_begin`
    /// for q35 (OEM "BOCHS ", table id "BXPC    ", creator "BXPC"), with
    /// the checksum filled in.
    pub fn table(structures: &[u8]) -> Vec<u8> {
        let length = (super::HEADER_LEN + structures.len()) as u32;
        let mut t = Vec::with_capacity(length as usize);
        t.extend_from_slice(b"NFIT");
        t.extend_from_slice(&length.to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum, filled below
        t.extend_from_slice(b"BOCHS ");
        t.extend_from_slice(b"BXPC    ");
        t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        t.extend_from_slice(b"BXPC");
        t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        t.extend_from_slice(&0u32.to_le_bytes()); // reserved
        t.extend_from_slice(structures);
        fix_checksum(&mut t);
        t
    }

    /// Recomputes byte 9 so the table sums to zero (after a test edits it).
    pub fn fix_checksum(table: &mut [u8]) {
        if table.len() < 10 {
            return;
        }
        table[9] = 0;
        let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        table[9] = 0u8.wrapping_sub(sum);
    }

    /// A whole QEMU NFIT for `dimms`, with a capabilities structure when
    /// `capabilities` is given.
    pub fn qemu(dimms: &[Dimm], capabilities: Option<u32>) -> Vec<u8> {
        let mut structures = Vec::new();
        for dimm in dimms {
            structures.extend(spa(dimm));
            structures.extend(memdev(dimm));
            structures.extend(dcr(dimm));
        }
        if let Some(caps) = capabilities {
            structures.extend(self::capabilities(caps));
        }
        table(&structures)
    }

    /// One 1 GiB NVDIMM at 4 GiB, as `-device nvdimm` with the docs/platform.md
    /// command line gives (byte-identical to the capture in
    /// `fixtures/qemu-7.2-nfit-one-1g.hex`, checked by a test).
    pub fn one_gib_at_4g() -> Vec<u8> {
        qemu(
            &[Dimm {
                slot: 0,
                base: 0x1_0000_0000,
                size: 1 << 30,
                node: 0,
            }],
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn two() -> Vec<u8> {
        qemu(
            &[
                Dimm {
                    slot: 0,
                    base: 0x1_0000_0000,
                    size: GIB,
                    node: 0,
                },
                Dimm {
                    slot: 1,
                    base: 0x1_4000_0000,
                    size: 512 << 20,
                    node: 0,
                },
            ],
            None,
        )
    }

    #[test]
    fn guid_bytes_are_mixed_endian() {
        // 66F0D379-B4F3-4074-AC43-0D3318B78CDB: first three groups are
        // stored little-endian, the rest in written order.
        let text = "66F0D379B4F34074AC430D3318B78CDB";
        let mut written = [0u8; 16];
        for (i, b) in written.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
        }
        let mut expected = written;
        expected[0..4].reverse();
        expected[4..6].reverse();
        expected[6..8].reverse();
        assert_eq!(PERSISTENT_MEMORY_GUID, expected);
    }

    #[test]
    fn fixture_sizes_match_qemu_structs() {
        let dimm = Dimm {
            slot: 0,
            base: 0,
            size: 1,
            node: 0,
        };
        assert_eq!(spa(&dimm).len(), 56);
        assert_eq!(memdev(&dimm).len(), 48);
        assert_eq!(dcr(&dimm).len(), 80);
        assert_eq!(capabilities(1).len(), 16);
        assert_eq!(one_gib_at_4g().len(), 40 + 56 + 48 + 80);
    }

    #[test]
    fn one_nvdimm() {
        let nfit = parse(&one_gib_at_4g()).unwrap();
        assert!(nfit.warnings.is_empty(), "{:?}", nfit.warnings);
        assert_eq!(nfit.revision, 1);
        assert_eq!(&nfit.oem_id, b"BOCHS ");
        assert_eq!(nfit.structures, 3);
        let ranges: Vec<_> = nfit.persistent_ranges().collect();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].base, 0x1_0000_0000);
        assert_eq!(ranges[0].length, GIB);
        assert_eq!(ranges[0].index, 2);
        assert_eq!(ranges[0].flags, 3);
        assert_eq!(ranges[0].memory_attributes, 0x8008);
        assert_eq!(nfit.capabilities, None);
        assert_eq!(nfit.domain(), Domain::Adr);
    }

    #[test]
    fn two_nvdimms_in_order() {
        let nfit = parse(&two()).unwrap();
        let ranges: Vec<_> = nfit
            .persistent_ranges()
            .map(|r| (r.base, r.length))
            .collect();
        assert_eq!(ranges, [(0x1_0000_0000, GIB), (0x1_4000_0000, 512 << 20)]);
        assert_eq!(nfit.structures, 6);
    }

    #[test]
    fn capabilities_select_domain() {
        let dimm = Dimm {
            slot: 0,
            base: 0x1_0000_0000,
            size: GIB,
            node: 0,
        };
        // QEMU's nvdimm-persistence=cpu sets bits 0 and 1 (3), =mem-ctrl bit 1.
        let eadr = parse(&qemu(&[dimm], Some(3))).unwrap();
        assert_eq!(eadr.capabilities.unwrap().highest_valid, 1);
        assert!(eadr.capabilities.unwrap().cpu_cache_flush());
        assert_eq!(eadr.domain(), Domain::Eadr);
        let adr = parse(&qemu(&[dimm], Some(2))).unwrap();
        assert!(!adr.capabilities.unwrap().cpu_cache_flush());
        assert!(adr.capabilities.unwrap().memory_controller_flush());
        assert_eq!(adr.domain(), Domain::Adr);
    }

    #[test]
    fn capability_bits_above_highest_valid_are_ignored() {
        // Bits 0 and 1 set, but only bit 0 declared valid.
        let mut caps = capabilities(3);
        caps[4] = 0;
        let mut table_bytes = Vec::new();
        table_bytes.extend(spa(&Dimm {
            slot: 0,
            base: 1 << 32,
            size: GIB,
            node: 0,
        }));
        table_bytes.extend(caps);
        let nfit = parse(&table(&table_bytes)).unwrap();
        let caps = nfit.capabilities.unwrap();
        assert_eq!(caps.valid(), 1);
        assert!(caps.cpu_cache_flush());
        assert!(!caps.memory_controller_flush(), "bit 1 is above highest");
        let all = PlatformCapabilities {
            highest_valid: 255,
            raw: u32::MAX,
        };
        assert_eq!(all.valid(), u32::MAX);
    }

    #[test]
    fn header_errors() {
        let good = one_gib_at_4g();
        assert_eq!(parse(&good[..39]), Err(NfitError::TooShort { len: 39 }));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(parse(&bad), Err(NfitError::BadSignature { .. })));
        let mut bad = good.clone();
        bad[20] ^= 0x55;
        assert!(matches!(
            parse(&bad),
            Err(NfitError::BadChecksum { sum: 0x55 })
        ));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&(good.len() as u32 + 1).to_le_bytes());
        fix_checksum(&mut bad);
        assert!(matches!(parse(&bad), Err(NfitError::BadLength { .. })));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&39u32.to_le_bytes());
        fix_checksum(&mut bad);
        assert!(matches!(
            parse(&bad),
            Err(NfitError::BadLength { length: 39, .. })
        ));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&bad), Err(NfitError::BadLength { .. })));
        // Messages name the problem.
        assert!(parse(&good[..10])
            .unwrap_err()
            .to_string()
            .contains("10 bytes"));
    }

    #[test]
    fn trailing_bytes_beyond_length_are_ignored() {
        let mut bytes = one_gib_at_4g();
        bytes.extend_from_slice(&[0xff; 100]);
        let nfit = parse(&bytes).unwrap();
        assert_eq!(nfit.persistent_ranges().count(), 1);
        assert!(nfit.warnings.is_empty());
    }

    #[test]
    fn header_only_table_has_no_ranges() {
        let nfit = parse(&table(&[])).unwrap();
        assert_eq!(nfit.structures, 0);
        assert_eq!(nfit.persistent_ranges().count(), 0);
    }

    #[test]
    fn short_spa_is_skipped_and_walk_continues() {
        let dimm1 = Dimm {
            slot: 1,
            base: 0x1_4000_0000,
            size: GIB,
            node: 0,
        };
        let mut short_spa = spa(&Dimm {
            slot: 0,
            base: 1 << 32,
            size: GIB,
            node: 0,
        });
        short_spa.truncate(48);
        short_spa[2..4].copy_from_slice(&48u16.to_le_bytes());
        let mut structures = short_spa;
        structures.extend(spa(&dimm1));
        let nfit = parse(&table(&structures)).unwrap();
        assert_eq!(
            nfit.warnings,
            [NfitWarning::ShortStructure {
                offset: 40,
                kind: 0,
                length: 48,
                minimum: 56
            }]
        );
        let ranges: Vec<_> = nfit.persistent_ranges().map(|r| r.base).collect();
        assert_eq!(ranges, [0x1_4000_0000]);
    }

    #[test]
    fn acpi_6_3_spa_with_cookie_is_accepted() {
        let mut long_spa = spa(&Dimm {
            slot: 0,
            base: 1 << 32,
            size: GIB,
            node: 0,
        });
        long_spa[2..4].copy_from_slice(&64u16.to_le_bytes());
        long_spa.extend_from_slice(&0x1234u64.to_le_bytes());
        long_spa.extend(capabilities(3));
        let nfit = parse(&table(&long_spa)).unwrap();
        assert!(nfit.warnings.is_empty());
        assert_eq!(nfit.persistent_ranges().count(), 1);
        assert_eq!(nfit.domain(), Domain::Eadr);
    }

    #[test]
    fn bad_structure_lengths_stop_the_walk() {
        let good = one_gib_at_4g();
        // Zero length on the first structure would loop forever if trusted.
        let mut bad = good.clone();
        bad[42..44].copy_from_slice(&0u16.to_le_bytes());
        fix_checksum(&mut bad);
        let nfit = parse(&bad).unwrap();
        assert_eq!(nfit.persistent_ranges().count(), 0);
        assert!(matches!(
            nfit.warnings[..],
            [NfitWarning::BadStructureLength {
                offset: 40,
                length: 0,
                ..
            }]
        ));
        // Length past the table end.
        let mut bad = good.clone();
        bad[42..44].copy_from_slice(&1000u16.to_le_bytes());
        fix_checksum(&mut bad);
        let nfit = parse(&bad).unwrap();
        assert!(matches!(
            nfit.warnings[..],
            [NfitWarning::BadStructureLength { length: 1000, .. }]
        ));
        // Two stray bytes after the last structure.
        let mut structures = spa(&Dimm {
            slot: 0,
            base: 1 << 32,
            size: GIB,
            node: 0,
        });
        structures.extend_from_slice(&[7, 0]);
        let nfit = parse(&table(&structures)).unwrap();
        assert_eq!(nfit.persistent_ranges().count(), 1);
        assert_eq!(nfit.warnings, [NfitWarning::TruncatedHeader { offset: 96 }]);
        assert!(nfit.warnings[0].to_string().contains("0x60"));
    }

    #[test]
    fn empty_and_wrapping_ranges_are_skipped() {
        for (base, size) in [(1u64 << 32, 0u64), (u64::MAX - 10, 4096)] {
            let nfit = parse(&qemu(
                &[Dimm {
                    slot: 0,
                    base,
                    size,
                    node: 0,
                }],
                None,
            ))
            .unwrap();
            assert_eq!(nfit.persistent_ranges().count(), 0);
            assert!(matches!(nfit.warnings[..], [NfitWarning::BadRange { .. }]));
        }
    }

    #[test]
    fn other_guids_are_not_persistent_memory() {
        let mut structures = spa(&Dimm {
            slot: 0,
            base: 1 << 32,
            size: GIB,
            node: 0,
        });
        // Volatile memory GUID 7305944F-FDDA-44E3-B16C-3F22D252E5D0.
        structures[16..32].copy_from_slice(&[
            0x4f, 0x94, 0x05, 0x73, 0xda, 0xfd, 0xe3, 0x44, 0xb1, 0x6c, 0x3f, 0x22, 0xd2, 0x52,
            0xe5, 0xd0,
        ]);
        let nfit = parse(&table(&structures)).unwrap();
        assert_eq!(nfit.spa_ranges.len(), 1);
        assert_eq!(nfit.persistent_ranges().count(), 0);
    }

    #[test]
    fn duplicate_capabilities_keep_the_first() {
        let mut structures = capabilities(3);
        structures.extend(capabilities(2));
        let nfit = parse(&table(&structures)).unwrap();
        assert_eq!(nfit.domain(), Domain::Eadr);
        assert_eq!(
            nfit.warnings,
            [NfitWarning::DuplicateCapabilities { offset: 56 }]
        );
        let mut short_caps = capabilities(3);
        short_caps.truncate(8);
        short_caps[2..4].copy_from_slice(&8u16.to_le_bytes());
        let nfit = parse(&table(&short_caps)).unwrap();
        assert_eq!(nfit.capabilities, None);
        assert_eq!(nfit.warnings.len(), 1);
    }

    /// Bytes of a captured table: hex pairs, `#` comment lines.
    fn captured(text: &str) -> Vec<u8> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split_whitespace())
            .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte"))
            .collect()
    }

    const CAPTURED_ONE: &str = include_str!("../fixtures/qemu-7.2-nfit-one-1g.hex");
    const CAPTURED_TWO: &str = include_str!("../fixtures/qemu-7.2-nfit-two-1g-512m.hex");
    const CAPTURED_EADR: &str = include_str!("../fixtures/qemu-7.2-nfit-eadr-256m.hex");

    #[test]
    fn captured_tables_parse() {
        let one = parse(&captured(CAPTURED_ONE)).unwrap();
        assert!(one.warnings.is_empty());
        let ranges: Vec<_> = one
            .persistent_ranges()
            .map(|r| (r.base, r.length))
            .collect();
        assert_eq!(ranges, [(0x1_0000_0000, GIB)]);
        assert_eq!(one.domain(), Domain::Adr);

        let two = parse(&captured(CAPTURED_TWO)).unwrap();
        let ranges: Vec<_> = two
            .persistent_ranges()
            .map(|r| (r.base, r.length))
            .collect();
        assert_eq!(ranges, [(0x1_0000_0000, GIB), (0x1_4000_0000, 512 << 20)]);

        let eadr = parse(&captured(CAPTURED_EADR)).unwrap();
        assert_eq!(eadr.domain(), Domain::Eadr);
        assert_eq!(
            eadr.capabilities,
            Some(PlatformCapabilities {
                highest_valid: 1,
                raw: 3
            })
        );
    }

    #[test]
    fn fixture_builders_match_the_captures_byte_for_byte() {
        assert_eq!(one_gib_at_4g(), captured(CAPTURED_ONE));
        assert_eq!(two(), captured(CAPTURED_TWO));
        let eadr = qemu(
            &[Dimm {
                slot: 0,
                base: 0x1_0000_0000,
                size: 256 << 20,
                node: 0,
            }],
            Some(3),
        );
        assert_eq!(eadr, captured(CAPTURED_EADR));
    }

    #[test]
    fn captured_table_corruptions_are_caught() {
        let good = captured(CAPTURED_TWO);
        // Every single-byte change breaks the checksum: refused, no panic.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(parse(&bad).is_err(), "flip at {at} accepted");
        }
        // Every truncation is refused (short or length beyond the bytes).
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "truncated to {len} accepted");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_tables_never_panic(
            edits in proptest::collection::vec((0usize..224, any::<u8>()), 1..8),
            keep_checksum in any::<bool>(),
        ) {
            let mut bytes = two();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if keep_checksum {
                fix_checksum(&mut bytes);
            }
            if let Ok(nfit) = parse(&bytes) {
                for r in nfit.persistent_ranges() {
                    prop_assert!(r.length > 0);
                    prop_assert!(r.base.checked_add(r.length).is_some());
                }
                for w in &nfit.warnings {
                    let _ = w.to_string();
                }
            }
        }
    }
}
