//! `daxfs_decode`: the daxfs on-media decoders (`daxfs::format`):
//! superblock, file record, overflow block, journal header and entries.
//!
//! Input: byte 0 chooses the decoder and whether the checksum is fixed
//! first (so the fields behind it are reached); the rest is the structure
//! (zero-padded to its size).
//!
//! Checked: no panic; whatever decodes re-encodes to bytes that decode to
//! the same value (the encoder and decoder agree).

use daxfs::format::{
    checksum_skipping, decode_journal_entry, journal_checksum, JournalHeader, OverflowBlock,
    Record, Superblock, BLOCK_SIZE, JOURNAL_ENTRY_SIZE, JOURNAL_HEADER_SIZE, RECORD_SIZE,
    SUPER_SIZE,
};

use crate::input::Input;

fn padded<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = bytes.len().min(N);
    b[..n].copy_from_slice(&bytes[..n]);
    b
}

fn fix(bytes: &mut [u8], at: usize) {
    let crc = checksum_skipping(bytes, at);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let fix_checksum = mode & 0x80 != 0;
    let body = input.rest();
    match mode % 4 {
        0 => {
            let mut b: [u8; SUPER_SIZE] = padded(body);
            if fix_checksum {
                fix(&mut b, 92);
            }
            if let Ok(sb) = Superblock::decode(&b) {
                assert!(
                    sb.check_geometry().is_ok(),
                    "decoded {sb:?} fails its geometry"
                );
                assert_eq!(
                    Superblock::decode(&sb.encode()),
                    Ok(sb),
                    "superblock round trip"
                );
            }
        }
        1 => {
            let mut b: [u8; RECORD_SIZE] = padded(body);
            if fix_checksum {
                fix(&mut b, 60);
            }
            if let Ok(Some(record)) = Record::decode(&b) {
                let again = Record::decode(&record.encode());
                assert_eq!(again, Ok(Some(record)), "record round trip");
            }
            // Any length: the decoder must refuse, not index out of range.
            let _ = Record::decode(body);
        }
        2 => {
            let mut b = vec![0u8; BLOCK_SIZE as usize];
            let n = body.len().min(b.len());
            b[..n].copy_from_slice(&body[..n]);
            if fix_checksum {
                fix(&mut b, 4);
            }
            if let Ok(block) = OverflowBlock::decode(&b) {
                let again = OverflowBlock::decode(&block.encode());
                assert_eq!(again, Ok(block), "overflow block round trip");
            }
            let _ = OverflowBlock::decode(body);
        }
        _ => {
            let header: [u8; JOURNAL_HEADER_SIZE] = padded(body);
            let entries = body.get(JOURNAL_HEADER_SIZE..).unwrap_or(&[]);
            if let Ok(mut h) = JournalHeader::decode(&header) {
                let take = (h.entries as usize * JOURNAL_ENTRY_SIZE).min(entries.len());
                let entries = &entries[..take];
                if fix_checksum {
                    h.crc = journal_checksum(&h, entries);
                }
                assert_eq!(
                    JournalHeader::decode(&h.encode()),
                    Ok(h),
                    "journal header round trip"
                );
                for entry in entries.chunks_exact(JOURNAL_ENTRY_SIZE) {
                    let (_slot, record) = decode_journal_entry(entry);
                    assert_eq!(record.len(), RECORD_SIZE);
                    let _ = Record::decode(record);
                }
            }
        }
    }
}
