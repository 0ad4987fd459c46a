//! Growing a filesystem to the end of its region (FORMAT.md "Grow").
//!
//! Free space is not on media (FORMAT.md "Allocation state"), so growing
//! is a change of `total_blocks` in the two superblock copies: the backup
//! first, then the primary, each persisted before the next. The primary's
//! write is the commit point; mount's
//! [`settle_backup`](crate::superblocks::settle_backup) rolls back a backup
//! that a crash left ahead of the primary, so every crash leaves the old or
//! the new size, never a mix.
//!
//! Grow works on an unmounted region: the caller unmounts, grows and
//! mounts again, and mount rebuilds the free space over the new size.

use alloc::string::String;

use crate::format::{Superblock, BLOCK_SIZE};
use crate::superblocks::read_superblock;
use crate::{block_offset, Error, Filesystem, PersistentMemory};

/// What [`Filesystem::grow`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    /// Blocks in the filesystem before.
    pub old_blocks: u64,
    /// Blocks in the filesystem now (equal to `old_blocks` when the region
    /// had no room beyond the filesystem).
    pub new_blocks: u64,
}

impl Grown {
    /// Bytes added to the filesystem.
    pub fn added_bytes(&self) -> u64 {
        (self.new_blocks - self.old_blocks) * BLOCK_SIZE
    }
}

impl<M: PersistentMemory> Filesystem<M> {
    /// Extends the filesystem on the unmounted region `mem` to the last
    /// whole block of the region. FORMAT.md "Grow". Refuses an image that
    /// mount would have to repair first (a committed journal transaction,
    /// an invalid superblock copy): mount, unmount, then grow.
    pub fn grow(mem: &mut M) -> Result<Grown, Error> {
        let (sb, primary_ok, backup_ok) = read_superblock(mem)?;
        if !primary_ok || !backup_ok {
            return Err(Error::Corrupt(String::from(
                "a superblock copy is invalid; mount the filesystem to repair it before growing",
            )));
        }
        if mem.load_u64(block_offset(sb.journal_start))? != 0 {
            return Err(Error::Corrupt(String::from(
                "the journal holds a committed transaction; mount the filesystem before growing",
            )));
        }
        let old_blocks = sb.total_blocks;
        let new_blocks = mem.len() / BLOCK_SIZE;
        if new_blocks <= old_blocks {
            return Ok(Grown {
                old_blocks,
                new_blocks: old_blocks,
            });
        }
        let grown = Superblock {
            total_blocks: new_blocks,
            ..sb
        };
        grown
            .check_geometry()
            .map_err(|e| Error::Corrupt(String::from(e)))?;
        let bytes = grown.encode();
        // Everything before grow is ordered before the new superblocks.
        mem.fence();
        // 1. The backup: until the primary changes, mount uses the primary
        //    (old size) and settles the backup back to it.
        mem.write_flush(block_offset(1), &bytes)?;
        mem.fence();
        // 2. The primary: the commit point. A torn primary fails its
        //    checksum, mount takes the (new) backup and repairs the primary.
        mem.write_flush(0, &bytes)?;
        mem.fence();
        Ok(Grown {
            old_blocks,
            new_blocks,
        })
    }
}
