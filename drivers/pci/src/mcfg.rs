//! ACPI MCFG table parsing (PCI Firmware 3.2 §4.1.2).
//!
//! Layout: the 36-byte ACPI SDT header (signature "MCFG", length, revision,
//! checksum, ...), 8 reserved bytes, then 16-byte allocation entries:
//! base address u64, PCI segment u16, start bus u8, end bus u8, 4 reserved.
//! All little-endian. The whole table must sum to zero (ACPI 6.5 §5.2.6).

use alloc::vec::Vec;
use core::fmt;

const HEADER_LEN: usize = 36;
const ENTRIES_OFFSET: usize = HEADER_LEN + 8;
const ENTRY_LEN: usize = 16;

/// One ECAM window.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct McfgEntry {
    /// Physical address of bus 0's configuration space in this window.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

impl McfgEntry {
    /// Physical address of `start_bus` and the length to map for the window;
    /// `None` when the window's end (exclusive) is beyond 2^64 - 1.
    pub fn mapped_range(&self) -> Option<(u64, u64)> {
        let start = self.base.checked_add(u64::from(self.start_bus) << 20)?;
        let buses = u64::from(self.end_bus.checked_sub(self.start_bus)?) + 1;
        let len = buses << 20;
        start.checked_add(len)?;
        Some((start, len))
    }
}

/// Why an MCFG table was rejected.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum McfgError {
    /// Fewer bytes than the header says (or than a header).
    Truncated,
    /// Signature is not "MCFG".
    BadSignature,
    /// The length field is not header + a whole number of entries.
    BadLength,
    /// The bytes do not sum to zero.
    BadChecksum,
    /// An entry's end bus is below its start bus.
    BadBusRange,
}

impl fmt::Display for McfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "MCFG table truncated",
            Self::BadSignature => "not an MCFG table (signature)",
            Self::BadLength => "MCFG length is not a whole number of entries",
            Self::BadChecksum => "MCFG checksum mismatch",
            Self::BadBusRange => "MCFG entry with end bus below start bus",
        })
    }
}

/// Parses a complete MCFG table (header included). `bytes` may be longer than
/// the table; the header's length field decides.
pub fn parse_mcfg(bytes: &[u8]) -> Result<Vec<McfgEntry>, McfgError> {
    let header = bytes.get(..HEADER_LEN).ok_or(McfgError::Truncated)?;
    if &header[..4] != b"MCFG" {
        return Err(McfgError::BadSignature);
    }
    let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let length = usize::try_from(length).map_err(|_| McfgError::BadLength)?;
    if length < ENTRIES_OFFSET || !(length - ENTRIES_OFFSET).is_multiple_of(ENTRY_LEN) {
        return Err(McfgError::BadLength);
    }
    let table = bytes.get(..length).ok_or(McfgError::Truncated)?;
    if table.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) != 0 {
        return Err(McfgError::BadChecksum);
    }
    table[ENTRIES_OFFSET..]
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let mut base = [0u8; 8];
            base.copy_from_slice(&e[..8]);
            let entry = McfgEntry {
                base: u64::from_le_bytes(base),
                segment: u16::from_le_bytes([e[8], e[9]]),
                start_bus: e[10],
                end_bus: e[11],
            };
            if entry.end_bus < entry.start_bus {
                Err(McfgError::BadBusRange)
            } else {
                Ok(entry)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    fn build(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut t = vec![0u8; ENTRIES_OFFSET];
        t[..4].copy_from_slice(b"MCFG");
        t[8] = 1;
        t[10..16].copy_from_slice(b"BOCHS ");
        for &(base, segment, start, end) in entries {
            t.extend_from_slice(&base.to_le_bytes());
            t.extend_from_slice(&segment.to_le_bytes());
            t.extend_from_slice(&[start, end, 0, 0, 0, 0]);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn parses_qemu_q35_table() {
        let t = build(&[(0xb000_0000, 0, 0, 0xff)]);
        let entries = parse_mcfg(&t).unwrap();
        assert_eq!(
            entries,
            [McfgEntry {
                base: 0xb000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 0xff
            }]
        );
        assert_eq!(entries[0].mapped_range(), Some((0xb000_0000, 256 << 20)));
    }

    /// Found by the `mcfg` fuzz target: a window whose end passes 2^64
    /// was returned as mappable (the kernel then saturated its end and
    /// mapped less than the buses it decodes).
    #[test]
    fn window_ending_past_the_address_space_is_refused() {
        let entry = |base, start_bus, end_bus| McfgEntry {
            base,
            segment: 0,
            start_bus,
            end_bus,
        };
        assert_eq!(entry(u64::MAX - (1 << 17) + 1, 0, 0).mapped_range(), None);
        assert_eq!(entry(u64::MAX - (2 << 20) + 1, 0, 2).mapped_range(), None);
        // A window just below the top: its end (exclusive) still fits.
        let top = !0xF_FFFFu64;
        assert_eq!(
            entry(top - (2 << 20), 1, 1).mapped_range(),
            Some((top - (1 << 20), 1 << 20))
        );
    }

    #[test]
    fn rejects_bad_tables() {
        let good = build(&[(0xe000_0000, 0, 0, 0x3f)]);
        assert_eq!(parse_mcfg(&good[..30]), Err(McfgError::Truncated));
        assert_eq!(parse_mcfg(&good[..50]), Err(McfgError::Truncated));
        let mut t = good.clone();
        t[0] = b'X';
        assert_eq!(parse_mcfg(&t), Err(McfgError::BadSignature));
        let mut t = good.clone();
        t[20] ^= 1;
        assert_eq!(parse_mcfg(&t), Err(McfgError::BadChecksum));
        let mut t = good.clone();
        t[4] = 45;
        assert_eq!(parse_mcfg(&t), Err(McfgError::BadLength));
        let t = build(&[(0xe000_0000, 0, 5, 4)]);
        assert_eq!(parse_mcfg(&t), Err(McfgError::BadBusRange));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_mcfg(&bytes);
        }

        #[test]
        fn roundtrip(entries in proptest::collection::vec((any::<u64>(), any::<u16>(), 0u8..128, 128u8..=255), 0..8)) {
            let t = build(&entries);
            let parsed = parse_mcfg(&t).unwrap();
            prop_assert_eq!(parsed.len(), entries.len());
            for (p, e) in parsed.iter().zip(&entries) {
                prop_assert_eq!((p.base, p.segment, p.start_bus, p.end_bus), *e);
            }
        }
    }
}
