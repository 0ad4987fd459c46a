//! The two superblock copies (FORMAT.md "Superblock"): which one to use
//! at mount, fsck and grow, and mount's rewrite of a backup that a cut
//! grow left behind. Below `mount`, `grow` and `fsck`, which all read them.

use alloc::format;
use alloc::string::String;

use crate::format::{SuperError, Superblock, FORMAT_VERSION, SUPER_SIZE};
use crate::{block_offset, Error, PersistentMemory};

fn superblock_error(primary: SuperError, backup: SuperError) -> Error {
    match (primary, backup) {
        (SuperError::Blank, SuperError::Blank) => Error::Blank,
        (SuperError::Newer(v), _) | (_, SuperError::Newer(v)) => Error::UnsupportedVersion {
            found: v,
            supported: FORMAT_VERSION,
        },
        (SuperError::Foreign, SuperError::Foreign | SuperError::Blank) => Error::Foreign,
        (SuperError::Checksum, _) | (_, SuperError::Checksum) => {
            Error::Corrupt(String::from("both superblock copies fail their checksum"))
        }
        (SuperError::Geometry(g), _) | (_, SuperError::Geometry(g)) => {
            Error::Corrupt(format!("superblock geometry: {g}"))
        }
        _ => Error::Corrupt(String::from("no valid superblock copy")),
    }
}

/// Reads both superblock copies; returns the one to use and whether each
/// copy decoded.
pub(crate) fn read_superblock<M: PersistentMemory>(
    mem: &M,
) -> Result<(Superblock, bool, bool), Error> {
    let mut copies = [[0u8; SUPER_SIZE]; 2];
    for (i, copy) in copies.iter_mut().enumerate() {
        if mem.len() < block_offset(i as u64) + SUPER_SIZE as u64 {
            return Err(Error::Truncated {
                needed: block_offset(2),
                available: mem.len(),
            });
        }
        mem.read(block_offset(i as u64), copy)?;
    }
    let primary = Superblock::decode(&copies[0]);
    let backup = Superblock::decode(&copies[1]);
    let sb = match (&primary, &backup) {
        (Ok(sb), _) => *sb,
        (Err(_), Ok(sb)) => *sb,
        (Err(p), Err(b)) => return Err(superblock_error(*p, *b)),
    };
    let needed = block_offset(sb.total_blocks);
    if mem.len() < needed {
        return Err(Error::Truncated {
            needed,
            available: mem.len(),
        });
    }
    Ok((sb, primary.is_ok(), backup.is_ok()))
}

/// Mount's part of FORMAT.md "Grow": when both superblock copies are valid
/// but differ (a grow cut before its commit point), the backup is rewritten
/// from the primary `sb`.
pub(crate) fn settle_backup<M: PersistentMemory>(
    mem: &mut M,
    sb: &Superblock,
) -> Result<(), Error> {
    let mut copy = [0u8; SUPER_SIZE];
    mem.read(block_offset(1), &mut copy)?;
    if matches!(Superblock::decode(&copy), Ok(backup) if backup != *sb) {
        mem.write_flush(block_offset(1), &sb.encode())?;
        mem.fence();
    }
    Ok(())
}
