//! daxfs: a flat, DAX-aware filesystem that lives directly in a region of
//! persistent memory.
//!
//! The kernel mounts one daxfs per pmem block device (`drivers/pmem`) and
//! serves its files over NBD (`net/nbd`); the crash-state explorer
//! (`fs/crashcheck`) drives it through a recording [`PersistentMemory`] to
//! check every image a power failure can leave. Every byte goes to media
//! through the `daxbox-persist` trait, so the same code runs on real pmem
//! (clwb/sfence) and on the host (`VecMemory`). The on-media format and the
//! exact commit protocol are specified in `fs/daxfs/FORMAT.md`; comments
//! cite its sections.
//!
//! Reads and writes copy straight between the caller's buffer and pmem (no
//! page cache). Data writes are flushed before `write` returns and made
//! durable by the fence inside the next metadata commit or `persist`;
//! metadata operations are committed (durable and atomic) before they
//! return.
//!
//! Shape of the API: [`Filesystem::probe`] / [`Filesystem::format`] /
//! [`Filesystem::mount`] / [`Filesystem::unmount`] (or
//! [`Filesystem::into_memory`] to simulate a crash); names map to a
//! [`FileId`] that survives rename and remount and goes stale on unlink;
//! byte I/O with `read`, `write`, `write_zeroes`, `truncate`; namespace
//! with `create`, `lookup`, `unlink`, `rename`, `clone_file`, `list`;
//! `extents` (data/hole map) and `dax_ranges` + `hold`/`release` for
//! zero-copy users; `fsck` (mounted) and [`Filesystem::fsck_image`]
//! (unmounted, read-only) report every broken invariant.
//!
//! Module layout:
//! - `types`: the public types and the error enum (re-exported here);
//! - `mount`: probe, format, mount with journal recovery, unmount;
//! - `journal`: the commit protocol, overflow chains, `commit_file`;
//! - `write`: write, write_zeroes, truncate, persist, copy-on-write and
//!   allocation (`modify`);
//! - `namespace`: create, lookup, unlink, rename, clone_file, list, stat,
//!   statfs;
//! - `dax`: read, extents, dax_ranges, hold/release;
//! - `fsck`: fsck and fsck_image;
//! - `grow`: growing to the end of the region (unmounted);
//! - `check`: the media scan shared by mount and fsck;
//! - `extmap`, `space`: the in-memory extent map, block reference counts
//!   and the free-space allocator;
//! - `format`: the on-media encoding (FORMAT.md).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod check;
mod dax;
mod extmap;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod format;
mod fsck;
mod grow;
mod journal;
mod mount;
mod namespace;
mod size;
mod space;
mod types;
mod write;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

pub use daxbox_persist::{OutOfRange, PersistentMemory};
pub use grow::Grown;
pub use types::{
    DaxRange, DirEntry, Error, FileId, FormatOptions, FsckReport, Hold, Probe, Segment, Stat,
    StatFs,
};

use extmap::ExtentMap;
use format::{Superblock, BLOCK_SIZE, RECORD_SIZE};
use space::{Allocator, RunCounts};

/// One live file, in memory.
#[derive(Debug, Clone)]
struct File {
    generation: u32,
    name: String,
    size: u64,
    map: ExtentMap,
    /// Overflow blocks currently on media for this file.
    chain: Vec<u64>,
}

/// Zeros to copy from: the source of every zero-fill.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A mounted daxfs over a persistent memory region it owns.
pub struct Filesystem<M: PersistentMemory> {
    mem: M,
    sb: Superblock,
    files: Vec<Option<File>>,
    generations: Vec<u32>,
    names: BTreeMap<String, u32>,
    free_slots: BTreeSet<u32>,
    refs: RunCounts,
    pins: RunCounts,
    alloc: Allocator,
    holds: BTreeMap<u64, Vec<(u64, u64)>>,
    sequence: u64,
}

/// Region offset of a block.
fn block_offset(block: u64) -> u64 {
    block * BLOCK_SIZE
}

// Geometry and bookkeeping helpers shared by the modules; the public
// operations are in `mount`, `write`, `namespace`, `dax` and `fsck`.
impl<M: PersistentMemory> Filesystem<M> {
    fn journal_offset(&self) -> u64 {
        block_offset(self.sb.journal_start)
    }

    fn record_offset(&self, slot: u32) -> u64 {
        block_offset(self.sb.table_start) + slot as u64 * RECORD_SIZE as u64
    }

    fn file(&self, id: FileId) -> Result<&File, Error> {
        match self.files.get(id.slot as usize) {
            Some(Some(f)) if f.generation == id.generation => Ok(f),
            _ => Err(Error::StaleFile),
        }
    }

    fn slot_of(&self, name: &str) -> Result<u32, Error> {
        if !format::valid_name(name) {
            return Err(Error::InvalidName);
        }
        self.names.get(name).copied().ok_or(Error::NotFound)
    }

    fn id_of(&self, slot: u32) -> FileId {
        let generation = self.files[slot as usize]
            .as_ref()
            .map_or(0, |f| f.generation);
        FileId { slot, generation }
    }

    /// Drops one file reference from a block run; blocks no longer
    /// referenced and not pinned go back to the allocator.
    fn unref(&mut self, start: u64, len: u64) {
        for (s, l) in self.refs.decrement(start, len) {
            for (ps, pl, pins) in self.pins.segments(s, l) {
                if pins == 0 {
                    self.alloc.free(ps, pl);
                }
            }
        }
    }

    /// Undoes fresh allocations after a failed operation.
    fn unallocate(&mut self, runs: &[(u64, u64)]) {
        for &(p, l) in runs {
            self.unref(p, l);
        }
    }
}
