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
//! return, except two that wait for `persist` (or the file's next commit)
//! by design: a size growth inside already-mapped blocks and a clone's
//! copy-on-write runs (FORMAT.md "Deferred size commits", "Deferred
//! copy-on-write commits").
//!
//! Shape of the API: [`Filesystem::probe`] / [`Filesystem::format`] /
//! [`Filesystem::mount`] / [`Filesystem::unmount`] (or
//! [`Filesystem::into_memory`] to simulate a crash); names map to a
//! [`FileId`] that survives rename and remount and goes stale on unlink;
//! byte I/O with `read`, `write`, `write_zeroes`, `truncate`; namespace
//! with `create`, `lookup`, `unlink`, `rename`, `clone_file`, `list`;
//! `extents` (data/hole map) and `dax_ranges` + `hold`/`release` for
//! zero-copy users; `open`/`close` count the holders of a file, so that
//! `unlink` (or `rename` over it) of an open file removes only the name and
//! leaves an orphan that the last `close` frees (FORMAT.md "Orphans"); `fsck` (mounted) and [`Filesystem::fsck_image`]
//! (unmounted, read-only) report every broken invariant.
//!
//! Module layout:
//! - `types`: the public types and the error enum (re-exported here);
//! - `mount`: probe, format, mount with journal recovery, unmount;
//! - `journal`: the commit protocol, overflow chains, `commit_file`;
//! - `write`: write, write_zeroes, truncate, persist, copy-on-write and
//!   allocation (`modify`);
//! - `namespace`: create, lookup, unlink, rename, clone_file, list, stat,
//!   statfs, and the holders of a file (open, close, holders);
//! - `dax`: read, extents, dax_ranges, hold/release;
//! - `fsck`: fsck and fsck_image;
//! - `grow`: growing to the end of the region (unmounted);
//! - `check`: the media scan shared by mount and fsck;
//! - `extmap`, `space`: the in-memory extent map, block reference counts
//!   and the free-space allocator;
//! - `format`: the on-media encoding (FORMAT.md).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![feature(btree_cursors)]

extern crate alloc;

mod append;
mod check;
mod clone_range;
mod cow;
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
mod superblocks;
mod table;
mod types;
mod write;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::size_of;

use daxbox_budget::{Budget, Charge};

pub use append::Appended;
pub use cow::{COMPACT_THRESHOLD_BLOCKS, DEFERRED_RUNS_MAX};
pub use daxbox_persist::{OutOfRange, PersistentMemory};
pub use grow::Grown;
pub use types::{
    DaxRange, DirEntry, Error, FileId, FormatOptions, FsckReport, Hold, Probe, Segment, Stat,
    StatFs,
};

use extmap::ExtentMap;
use format::{Record, Superblock, BLOCK_SIZE, RECORD_SIZE};
use space::{Allocator, RunCounts};

/// One live file, in memory.
#[derive(Debug, Clone)]
struct File {
    generation: u32,
    name: String,
    size: u64,
    /// The size in the record on media: below `size` while a size change
    /// is deferred (FORMAT.md "Deferred size commits"), else equal.
    durable: u64,
    map: ExtentMap,
    /// Overflow blocks currently on media for this file.
    chain: Vec<u64>,
    /// The on-media list is layered (FORMAT.md "Layered extent lists"):
    /// its inline entries and length; None for a plain list (the map
    /// itself, sorted).
    list: Option<cow::Layered>,
    /// Holders (`open` minus `close`), in memory only.
    opens: u32,
    /// The name was removed while the file was open: it is an orphan
    /// record on media, has no name (`name` is empty) and is freed by the
    /// last `close` or the next mount (FORMAT.md "Orphans").
    orphan: bool,
    /// Remembered mapped/private counts of chunks its copy-on-writes
    /// touched (in memory only; see `cow::ChunkCache`).
    cow: cow::ChunkCache,
    /// Copy-on-write runs mapped in memory whose commit is deferred
    /// (FORMAT.md "Deferred copy-on-write commits").
    pending: cow::Pending,
}

impl File {
    /// True while the record on media lags behind memory by design: a
    /// deferred size or deferred copy-on-write runs (FORMAT.md "Deferred
    /// size commits", "Deferred copy-on-write commits").
    fn deferred(&self) -> bool {
        self.durable != self.size || !self.pending.is_empty()
    }
}

/// Zeros to copy from: the source of every zero-fill.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The budget of [`Filesystem::mount`] and [`Filesystem::format`]: no
/// limit (host tools and tests). The kernel mounts with
/// [`Filesystem::mount_with_budget`] and `daxbox_budget::MOUNT`.
pub static UNBOUNDED: Budget = Budget::new("daxfs", usize::MAX);

// What the in-memory state costs, charged to the mount budget. These are
// estimates that stay at or above the heap the structures really take
// (`tests/mount_memory.rs` measures both with a counting allocator): a
// B-tree entry costs its key and value plus about two thirds again for the
// unused room of its node, and a file's first extent allocates a whole
// leaf node for its map.
/// A B-tree entry of up to 32 bytes of key and value, with node overhead.
pub(crate) const TREE_ENTRY: usize = 56;
/// One live file beyond its name and extents: its entry in `files`, its
/// entry in `names`, and the first leaf of its extent map.
pub(crate) const FILE_COST: usize = size_of::<File>() * 2 + 2 * TREE_ENTRY + 320;
/// One extent of a file map, with its share of the overflow chain.
pub(crate) const EXTENT_COST: usize = TREE_ENTRY + 8;
/// One run of the reference-count, pin or free-space maps.
pub(crate) const RUN_COST: usize = TREE_ENTRY;
/// Memory an operation may add per fresh block run it allocates: the run
/// in the file map (plus a split), the reference-count runs it splits,
/// the free-space run it splits.
pub(crate) const RUN_GROWTH: usize = 2 * EXTENT_COST + 4 * RUN_COST;

/// What one live file costs in memory (see [`FILE_COST`]).
fn file_cost(f: &File) -> usize {
    FILE_COST
        + 2 * f.name.len()
        + f.map.len() * EXTENT_COST
        + f.chain.len() * 8
        + f.list.as_ref().map_or(0, cow::Layered::cost)
        + f.cow.cost()
        + f.pending.cost()
}

/// A mounted daxfs over a persistent memory region it owns.
///
/// Memory is O(files in use), not O(file table): live files sit in a map
/// keyed by slot, free slots are found by walking that map from a
/// lower bound (`low_free`), and a free slot's generation is read from its
/// record on media when the slot is reused (FORMAT.md "File records").
/// Everything held is charged to the mount budget (`charge`).
pub struct Filesystem<M: PersistentMemory> {
    mem: M,
    sb: Superblock,
    files: BTreeMap<u32, File>,
    names: BTreeMap<String, u32>,
    /// Every slot below this one is in use.
    low_free: u32,
    /// Moves whenever which blocks of a file are private may change other
    /// than by that file's own `modify` (see `cow::ChunkCache`).
    share_epoch: u64,
    refs: RunCounts,
    pins: RunCounts,
    alloc: Allocator,
    holds: BTreeMap<u64, Vec<(u64, u64)>>,
    sequence: u64,
    /// Sum of `file_cost` over `files`.
    files_cost: usize,
    /// The budget charged for this filesystem.
    budget: &'static Budget,
    /// The budget's bytes held for this filesystem.
    charge: Charge<'static>,
    /// What mount had to repair.
    recovered: Recovered,
}

/// What mount repaired before the filesystem was usable (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// A committed journal transaction was replayed.
    pub journal_replayed: bool,
    /// A damaged superblock copy was rewritten from the good one.
    pub superblock_repaired: bool,
    /// Files removed while open whose space the mount gave back (their
    /// holders were gone: a crash or power cut before the last close).
    pub orphans_reclaimed: u64,
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
        match self.files.get(&id.slot) {
            Some(f) if f.generation == id.generation => Ok(f),
            _ => Err(Error::StaleFile),
        }
    }

    /// The lowest free slot, found by walking the live slots from
    /// `low_free` (amortised O(1); O(files in use) after a low slot was
    /// freed), inside the initialised table prefix (extended first when
    /// the slot is past it).
    fn free_slot(&mut self) -> Result<u32, Error> {
        let mut slot = self.low_free;
        for &used in self.files.range(slot..).map(|(k, _)| k) {
            if used != slot {
                break;
            }
            slot += 1;
        }
        self.low_free = slot;
        if slot >= self.sb.max_files {
            return Err(Error::NoFileSlots);
        }
        self.initialise_slot(slot)?;
        Ok(slot)
    }

    /// The generation for the next file in free slot `slot`: one above the
    /// generation its record on media remembers (0 for a never-used slot).
    fn next_generation(&self, slot: u32) -> Result<u32, Error> {
        let mut raw = [0u8; RECORD_SIZE];
        self.mem.read(self.record_offset(slot), &mut raw)?;
        let last = match Record::decode(&raw) {
            Ok(None) => 0,
            Ok(Some(r)) if !r.in_use => r.generation,
            Ok(Some(_)) => {
                return Err(Error::Corrupt(alloc::format!(
                    "file record {slot} is live on media but free in memory"
                )))
            }
            Err(e) => return Err(Error::Corrupt(alloc::format!("file record {slot}: {e}"))),
        };
        Ok(last.wrapping_add(1).max(1))
    }

    /// Bytes the in-memory state takes (the estimate charged).
    fn usage(&self) -> usize {
        size_of::<Self>()
            + self.files_cost
            + (self.refs.len() + self.pins.len()) * RUN_COST
            + self
                .holds
                .values()
                .map(|r| TREE_ENTRY + r.len() * 16)
                .sum::<usize>()
            + self.alloc.memory()
    }

    /// Takes `bytes` more from the budget before an operation allocates.
    fn reserve(&mut self, bytes: usize) -> Result<(), Error> {
        self.charge.grow(bytes).map_err(Error::OutOfMemory)
    }

    /// Sets the charge to what the state takes now, after an operation.
    /// A growth past what the operation reserved is still recorded when
    /// the budget has room; otherwise the charge stays at the reservation
    /// (the estimate's slack covers it).
    fn settle(&mut self) {
        let _ = self.charge.resize(self.usage());
    }

    /// Inserts a live file, keeping the cost sum.
    fn put_file(&mut self, slot: u32, file: File) {
        self.files_cost += file_cost(&file);
        if let Some(old) = self.files.insert(slot, file) {
            self.files_cost -= file_cost(&old);
        }
    }

    /// Removes a live file, keeping the cost sum.
    fn take_file(&mut self, slot: u32) -> Option<File> {
        let f = self.files.remove(&slot)?;
        self.files_cost -= file_cost(&f);
        self.low_free = self.low_free.min(slot);
        Some(f)
    }

    /// Runs `op` on a file whose map or chain it may change, keeping the
    /// cost sum, then settles the charge.
    fn costed<R>(&mut self, slot: u32, op: impl FnOnce(&mut Self) -> R) -> R {
        let before = self.files.get(&slot).map_or(0, file_cost);
        let result = op(self);
        let after = self.files.get(&slot).map_or(0, file_cost);
        self.files_cost = self.files_cost + after - before;
        self.settle();
        result
    }

    fn slot_of(&self, name: &str) -> Result<u32, Error> {
        if !format::valid_name(name) {
            return Err(Error::InvalidName);
        }
        self.names.get(name).copied().ok_or(Error::NotFound)
    }

    fn id_of(&self, slot: u32) -> FileId {
        let generation = self.files.get(&slot).map_or(0, |f| f.generation);
        FileId { slot, generation }
    }

    /// Drops one file reference from a block run; blocks no longer
    /// referenced and not pinned go back to the allocator.
    fn unref(&mut self, start: u64, len: u64) {
        let freed = self.refs.decrement(start, len);
        if freed.iter().map(|&(_, l)| l).sum::<u64>() < len {
            // Blocks still referenced: another file may own them alone now.
            self.shares_changed();
        }
        for (s, l) in freed {
            for (ps, pl, pins) in self.pins.segments(s, l) {
                if pins == 0 {
                    self.alloc.free(ps, pl);
                }
            }
        }
    }

    /// Invalidates every file's `cow::ChunkCache`: which blocks are private
    /// may have changed other than through a file's own `modify`.
    fn shares_changed(&mut self) {
        self.share_epoch += 1;
    }

    /// Undoes fresh allocations after a failed operation.
    fn unallocate(&mut self, runs: &[(u64, u64)]) {
        for &(p, l) in runs {
            self.unref(p, l);
        }
    }
}
