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
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod check;
mod extmap;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod format;
mod space;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Bound;
use core::sync::atomic::{AtomicU64, Ordering};

pub use daxbox_persist::{OutOfRange, PersistentMemory};

use extmap::ExtentMap;
use format::{
    Extent, JournalHeader, OverflowBlock, Record, SuperError, Superblock, BLOCK_SIZE, CHUNK_BLOCKS,
    CHUNK_SIZE, FORMAT_VERSION, INLINE_EXTENTS, JOURNAL_BLOCKS, JOURNAL_ENTRIES_OFFSET,
    JOURNAL_ENTRY_SIZE, JOURNAL_HEADER_OFFSET, JOURNAL_HEADER_SIZE, JOURNAL_MAX_ENTRIES,
    MAX_FILE_SIZE, OVERFLOW_EXTENTS, RECORDS_PER_BLOCK, RECORD_SIZE, STATE_CLEAN, STATE_DIRTY,
    STATE_WORD_OFFSET, SUPER_SIZE,
};
use space::{Allocator, RunCounts};

/// The errors of the filesystem layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The superblock area is all zeros: nothing was formatted here.
    Blank,
    /// The region holds something that is not daxfs.
    Foreign,
    /// The image was written by a newer format version.
    UnsupportedVersion {
        /// Version found on media.
        found: u32,
        /// Newest version this code understands.
        supported: u32,
    },
    /// Metadata failed a check; the text says which and where.
    Corrupt(String),
    /// The region is shorter than the filesystem recorded in it.
    Truncated {
        /// Bytes the superblock says the filesystem spans.
        needed: u64,
        /// Bytes the region actually has.
        available: u64,
    },
    /// The region is too small to format.
    TooSmall,
    /// No file with that name.
    NotFound,
    /// A file with that name already exists.
    Exists,
    /// Names are 1 to 255 bytes of UTF-8 without NUL.
    InvalidName,
    /// The FileId refers to a file that was unlinked (or never existed).
    StaleFile,
    /// No free blocks left.
    NoSpace,
    /// Every file record is in use.
    NoFileSlots,
    /// The operation would make a file larger than the format allows.
    FileTooLarge,
    /// An access fell outside the memory region (an internal bug or a
    /// region that shrank under us).
    Io(OutOfRange),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Blank => write!(f, "no filesystem: the superblock area is blank"),
            Error::Foreign => write!(f, "not a daxfs image (bad superblock magic)"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "daxfs format version {found} is newer than the supported version {supported}"
            ),
            Error::Corrupt(what) => write!(f, "corrupt filesystem: {what}"),
            Error::Truncated { needed, available } => write!(
                f,
                "device truncated: the filesystem needs {needed} bytes but the region has {available}"
            ),
            Error::TooSmall => write!(f, "region too small for a daxfs filesystem"),
            Error::NotFound => write!(f, "no such file"),
            Error::Exists => write!(f, "file exists"),
            Error::InvalidName => write!(f, "invalid file name (1 to 255 bytes, no NUL)"),
            Error::StaleFile => write!(f, "stale file handle (the file was removed)"),
            Error::NoSpace => write!(f, "no space left on the filesystem"),
            Error::NoFileSlots => write!(f, "file table full"),
            Error::FileTooLarge => write!(f, "file too large for the format"),
            Error::Io(e) => write!(f, "memory access error: {e}"),
        }
    }
}

impl From<OutOfRange> for Error {
    fn from(e: OutOfRange) -> Self {
        Error::Io(e)
    }
}

/// What `probe` found in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The superblock area (blocks 0 and 1) is all zeros.
    Blank,
    /// A daxfs superblock (possibly of a newer version, which mount refuses).
    Daxfs {
        /// Format version on media.
        version: u32,
        /// True when the last mount ended with `unmount`.
        clean: bool,
    },
    /// Something else.
    Foreign,
    /// A daxfs image that cannot be mounted; the error says why.
    Corrupt(Error),
}

/// Options for `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FormatOptions {
    /// Filesystem identity (the caller supplies randomness; no_std has none).
    pub uuid: [u8; 16],
    /// Size of the file table; default one record per 64 KiB of region,
    /// at least 64.
    pub max_files: Option<u32>,
}

/// A handle on a file: stays valid across rename and remount, and becomes
/// stale (Error::StaleFile) when the file is unlinked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    slot: u32,
    generation: u32,
}

impl FileId {
    /// The file-table slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
    /// The slot's reuse generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// One entry of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// Handle.
    pub id: FileId,
    /// Size in bytes.
    pub size: u64,
}

/// File attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Handle.
    pub id: FileId,
    /// Current name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of blocks mapped (including blocks shared with clones and
    /// preallocation up to the 2 MiB boundary).
    pub allocated_bytes: u64,
    /// Bytes of mapped blocks shared with another file.
    pub shared_bytes: u64,
    /// Extents in the map.
    pub extent_count: u64,
    /// Mapped bytes that sit in 2 MiB-aligned, 2 MiB-long physical runs
    /// at 2 MiB-aligned file offsets (huge-page mappable).
    pub huge_bytes: u64,
}

/// Filesystem-wide figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    /// Always 4096.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub total_blocks: u64,
    /// Blocks in the data area.
    pub data_blocks: u64,
    /// Free data blocks.
    pub free_blocks: u64,
    /// Files.
    pub files: u64,
    /// File table size.
    pub max_files: u64,
    /// Fully free 2 MiB-aligned chunks.
    pub huge_free: u64,
    /// Filesystem identity.
    pub uuid: [u8; 16],
}

/// A piece of a file range: data or hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// True for data, false for a hole (reads as zeros).
    pub data: bool,
}

/// A file range backed by one contiguous range of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaxRange {
    /// File offset.
    pub file_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset inside the memory region.
    pub region_offset: u64,
    /// Physical address when the region has one (`M::physical_address`).
    pub physical_address: Option<u64>,
    /// True when the blocks are shared with a clone: such a range may be
    /// read through the mapping but must not be written through it.
    pub shared: bool,
}

/// A pin on the blocks backing a file range (see `Filesystem::hold`).
#[derive(Debug, PartialEq, Eq)]
pub struct Hold {
    id: u64,
    bytes: u64,
}

impl Hold {
    /// Bytes of blocks pinned.
    pub fn pinned_bytes(&self) -> u64 {
        self.bytes
    }
}

/// The result of `fsck`: every problem found, each a sentence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Problems; empty means clean.
    pub problems: Vec<String>,
}

impl FsckReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return write!(f, "fsck: clean");
        }
        writeln!(f, "fsck: {} problem(s)", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

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

/// Where the bytes of an edit come from.
enum Src<'a> {
    Data(&'a [u8]),
    Zero(u64),
}

/// A byte-range change to a file.
struct Edit<'a> {
    offset: u64,
    src: Src<'a>,
}

impl Edit<'_> {
    fn len(&self) -> u64 {
        match self.src {
            Src::Data(d) => d.len() as u64,
            Src::Zero(n) => n,
        }
    }
    fn end(&self) -> u64 {
        self.offset + self.len()
    }
}

/// A fresh allocation made for a write.
#[derive(Debug, Clone, Copy)]
struct NewRun {
    logical: u64,
    len: u64,
    physical: u64,
    /// Old physical block to copy from (copy-on-write), or None (zero).
    source: Option<u64>,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
static NEXT_HOLD: AtomicU64 = AtomicU64::new(1);

/// Writes of at least this many bytes use non-temporal stores.
const NT_THRESHOLD: usize = 4096;

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

fn block_offset(block: u64) -> u64 {
    block * BLOCK_SIZE
}

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
fn read_superblock<M: PersistentMemory>(mem: &M) -> Result<(Superblock, bool, bool), Error> {
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

/// Picks a preferred physical block for logical block `logical`: right
/// after the block backing `logical - 1` (contiguity, and inside a huge
/// chunk it restores 2 MiB alignment), else right before `logical + 1`.
fn preferred(map: &ExtentMap, runs: &[NewRun], logical: u64) -> Option<u64> {
    for r in runs {
        if r.logical + r.len == logical {
            return Some(r.physical + r.len);
        }
    }
    if logical > 0 {
        if let Some(p) = map.lookup(logical - 1) {
            return Some(p + 1);
        }
    }
    map.lookup(logical + 1).and_then(|p| p.checked_sub(1))
}

/// Union of half-open ranges, sorted.
fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.1 > r.0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Builds the record for a file state. `extents` yields the map in order.
fn make_record(file: &File, size: u64, map: &ExtentMap, chain: &[u64]) -> Record {
    Record {
        in_use: true,
        generation: file.generation,
        name: file.name.clone(),
        size,
        // Extent counts are bounded by the 2^32 logical blocks of a file.
        extent_count: map.len() as u32,
        overflow_count: chain.len() as u32,
        overflow_first: chain.first().copied().unwrap_or(0),
        inline: map.iter().take(INLINE_EXTENTS).collect(),
    }
}

impl<M: PersistentMemory> Filesystem<M> {
    // ----- geometry helpers ------------------------------------------------

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

    // ----- probe, format, mount -------------------------------------------

    /// Looks at the superblock area without changing anything.
    pub fn probe(mem: &M) -> Probe {
        match read_superblock(mem) {
            Ok((sb, _, _)) => {
                let clean = mem
                    .load_u64(STATE_WORD_OFFSET)
                    .is_ok_and(|w| w == STATE_CLEAN);
                Probe::Daxfs {
                    version: sb.version,
                    clean,
                }
            }
            Err(Error::Blank) => Probe::Blank,
            Err(Error::Foreign) => Probe::Foreign,
            Err(Error::UnsupportedVersion { found, .. }) => Probe::Daxfs {
                version: found,
                clean: mem
                    .load_u64(STATE_WORD_OFFSET)
                    .is_ok_and(|w| w == STATE_CLEAN),
            },
            Err(e) => Probe::Corrupt(e),
        }
    }

    /// Writes a new, empty filesystem over the whole region (mkfs) and
    /// returns it mounted. FORMAT.md "Format".
    pub fn format(mut mem: M, opts: FormatOptions) -> Result<Self, Error> {
        let total_blocks = mem.len() / BLOCK_SIZE;
        let default_files = (mem.len() / (64 * 1024)).clamp(64, 1 << 20) as u32;
        let max_files = opts.max_files.unwrap_or(default_files).max(1);
        let table_start = 2 + JOURNAL_BLOCKS;
        let table_blocks = (max_files as u64).div_ceil(RECORDS_PER_BLOCK);
        let data_start = table_start + table_blocks;
        if data_start + 1 > total_blocks {
            return Err(Error::TooSmall);
        }
        let sb = Superblock {
            version: FORMAT_VERSION,
            uuid: opts.uuid,
            total_blocks,
            journal_start: 2,
            journal_blocks: JOURNAL_BLOCKS,
            table_start,
            table_blocks,
            max_files,
            data_start,
        };
        sb.check_geometry()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        // Metadata area first, then the backup, then the primary: until the
        // primary is durable the region is not a valid filesystem, except
        // through a backup that already describes zeroed metadata.
        let meta_start = block_offset(2);
        let meta_len = block_offset(data_start) - meta_start;
        let mut done = 0;
        while done < meta_len {
            let n = (meta_len - done).min(ZEROS.len() as u64);
            mem.write_nt(meta_start + done, &ZEROS[..n as usize])?;
            done += n;
        }
        mem.fence();
        let bytes = sb.encode();
        mem.write(block_offset(1), &ZEROS[..BLOCK_SIZE as usize])?;
        mem.write_flush(block_offset(1), &bytes)?;
        mem.flush(block_offset(1), BLOCK_SIZE)?;
        mem.fence();
        mem.write(0, &ZEROS[..BLOCK_SIZE as usize])?;
        mem.store_u64(STATE_WORD_OFFSET, STATE_DIRTY)?;
        mem.write(0, &bytes)?;
        mem.flush(0, BLOCK_SIZE)?;
        mem.fence();
        Self::mount(mem)
    }

    /// Validates and mounts an image, replaying a committed journal
    /// transaction left by a crash. FORMAT.md "Mount and recovery".
    pub fn mount(mut mem: M) -> Result<Self, Error> {
        let (sb, primary_ok, backup_ok) = read_superblock(&mem)?;
        let jo = block_offset(sb.journal_start);
        let sequence = Self::recover_journal(&mut mem, &sb, jo)?;
        // Repair a damaged superblock copy from the good one.
        if !primary_ok || !backup_ok {
            let target = if primary_ok { 1 } else { 0 };
            mem.write_flush(block_offset(target), &sb.encode())?;
            mem.fence();
        }
        let mut problems = Vec::new();
        let scan = check::scan(&mem, &sb, &mut problems)?;
        let refs = check::media_refs(&scan, &mut problems);
        if let Some(first) = problems.into_iter().next() {
            return Err(Error::Corrupt(first));
        }
        let mut files: Vec<Option<File>> = (0..sb.max_files).map(|_| None).collect();
        let mut names = BTreeMap::new();
        for f in scan.files {
            names.insert(f.record.name.clone(), f.slot);
            files[f.slot as usize] = Some(File {
                generation: f.record.generation,
                name: f.record.name,
                size: f.record.size,
                map: ExtentMap::from_extents(&f.extents),
                chain: f.chain,
            });
        }
        let free_slots = (0..sb.max_files)
            .filter(|&s| files[s as usize].is_none())
            .collect();
        let mut alloc = Allocator::new(sb.data_start, sb.total_blocks);
        let mut cursor = sb.data_start;
        for (s, l, _) in refs.iter() {
            if s > cursor {
                alloc.free(cursor, s - cursor);
            }
            cursor = s + l;
        }
        if cursor < sb.total_blocks {
            alloc.free(cursor, sb.total_blocks - cursor);
        }
        mem.store_u64(STATE_WORD_OFFSET, STATE_DIRTY)?;
        mem.flush(STATE_WORD_OFFSET, 8)?;
        mem.fence();
        Ok(Filesystem {
            mem,
            sb,
            files,
            generations: scan.generations,
            names,
            free_slots,
            refs,
            pins: RunCounts::default(),
            alloc,
            holds: BTreeMap::new(),
            sequence,
        })
    }

    /// FORMAT.md "Journal": replays the transaction whose sequence number
    /// is in the commit word, then clears the word. Returns the last
    /// sequence number seen.
    fn recover_journal(mem: &mut M, sb: &Superblock, jo: u64) -> Result<u64, Error> {
        let commit = mem.load_u64(jo)?;
        let mut hb = [0u8; JOURNAL_HEADER_SIZE];
        mem.read(jo + JOURNAL_HEADER_OFFSET, &mut hb)?;
        let header = JournalHeader::decode(&hb);
        if commit == 0 {
            return Ok(header.map_or(0, |h| h.sequence));
        }
        let header = header
            .map_err(|e| Error::Corrupt(format!("journal committed but header invalid: {e}")))?;
        if header.sequence != commit {
            return Err(Error::Corrupt(String::from(
                "journal commit word does not match the journal header",
            )));
        }
        let mut body = alloc::vec![0u8; header.entries as usize * JOURNAL_ENTRY_SIZE];
        mem.read(jo + JOURNAL_ENTRIES_OFFSET, &mut body)?;
        if format::journal_checksum(&header, &body) != header.crc {
            return Err(Error::Corrupt(String::from(
                "journal committed but its checksum does not match",
            )));
        }
        for entry in body.chunks_exact(JOURNAL_ENTRY_SIZE) {
            let (slot, record) = format::decode_journal_entry(entry);
            if slot >= sb.max_files {
                return Err(Error::Corrupt(format!(
                    "journal entry for slot {slot} is outside the table"
                )));
            }
            Record::decode(record)
                .map_err(|e| Error::Corrupt(format!("journal entry for slot {slot}: {e}")))?;
            let at = block_offset(sb.table_start) + slot as u64 * RECORD_SIZE as u64;
            mem.write_flush(at, record)?;
        }
        mem.fence();
        mem.store_u64(jo, 0)?;
        mem.flush(jo, 8)?;
        mem.fence();
        Ok(header.sequence)
    }

    /// Marks the filesystem clean and gives the region back.
    pub fn unmount(mut self) -> M {
        self.mem.fence();
        // Failure here is impossible: the state word is inside block 0,
        // which mount checked exists.
        let _ = self.mem.store_u64(STATE_WORD_OFFSET, STATE_CLEAN);
        let _ = self.mem.flush(STATE_WORD_OFFSET, 8);
        self.mem.fence();
        self.mem
    }

    /// Gives the region back without marking it clean (simulates a crash
    /// after the last completed operation).
    pub fn into_memory(self) -> M {
        self.mem
    }

    /// The region.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    // ----- the commit protocol --------------------------------------------

    /// Atomically replaces the given records. FORMAT.md "Journal":
    /// entries -> flush -> fence -> commit word -> flush -> fence -> apply
    /// -> flush -> fence -> clear commit word -> flush -> fence.
    fn commit(&mut self, entries: &[(u32, [u8; RECORD_SIZE])]) -> Result<(), Error> {
        self.commit_with(entries, true)
    }

    /// [`Self::commit`]; `journal_fence` false leaves out the fence between
    /// the journal entries and the commit word (only ever false with the
    /// `fault-injection` feature, to prove the crash explorer catches it).
    fn commit_with(
        &mut self,
        entries: &[(u32, [u8; RECORD_SIZE])],
        journal_fence: bool,
    ) -> Result<(), Error> {
        debug_assert!(entries.len() <= JOURNAL_MAX_ENTRIES);
        let jo = self.journal_offset();
        let mut body = Vec::with_capacity(entries.len() * JOURNAL_ENTRY_SIZE);
        for (slot, record) in entries {
            body.extend_from_slice(&format::encode_journal_entry(*slot, record));
        }
        self.sequence += 1;
        let mut header = JournalHeader {
            sequence: self.sequence,
            entries: entries.len() as u32,
            crc: 0,
        };
        header.crc = format::journal_checksum(&header, &body);
        self.mem
            .write_flush(jo + JOURNAL_HEADER_OFFSET, &header.encode())?;
        self.mem.write_flush(jo + JOURNAL_ENTRIES_OFFSET, &body)?;
        if journal_fence {
            self.mem.fence();
        }
        self.mem.store_u64(jo, self.sequence)?;
        self.mem.flush(jo, 8)?;
        self.mem.fence();
        for (slot, record) in entries {
            let at = self.record_offset(*slot);
            self.mem.write_flush(at, record)?;
        }
        self.mem.fence();
        self.mem.store_u64(jo, 0)?;
        self.mem.flush(jo, 8)?;
        self.mem.fence();
        Ok(())
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

    /// Writes a fresh overflow chain for `extents` (FORMAT.md "Overflow
    /// extent blocks": chains are never updated in place; a new chain is
    /// written to free blocks and the record switches to it on commit).
    fn write_chain(
        &mut self,
        slot: u32,
        generation: u32,
        map: &ExtentMap,
    ) -> Result<Vec<u64>, Error> {
        let overflow = map.len().saturating_sub(INLINE_EXTENTS);
        let blocks = overflow.div_ceil(OVERFLOW_EXTENTS);
        let mut chain: Vec<u64> = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            let prefer = chain.last().map(|b| b + 1);
            match self.alloc.alloc_small(1, prefer) {
                Some((b, _)) => {
                    self.refs.increment(b, 1);
                    chain.push(b);
                }
                None => {
                    let runs: Vec<(u64, u64)> = chain.iter().map(|&b| (b, 1)).collect();
                    self.unallocate(&runs);
                    return Err(Error::NoSpace);
                }
            }
        }
        let extents: Vec<Extent> = map.iter().skip(INLINE_EXTENTS).collect();
        for (i, block) in chain.iter().enumerate() {
            let start = i * OVERFLOW_EXTENTS;
            let end = (start + OVERFLOW_EXTENTS).min(extents.len());
            let ob = OverflowBlock {
                owner_slot: slot,
                owner_generation: generation,
                index: i as u32,
                next: chain.get(i + 1).copied().unwrap_or(0),
                extents: extents[start..end].to_vec(),
            };
            self.mem.write_flush(block_offset(*block), &ob.encode())?;
        }
        Ok(chain)
    }

    /// Commits the file's in-memory map (through a fresh overflow chain
    /// when `map_changed`) and `size`. On error nothing is committed and the
    /// caller undoes its in-memory map changes; on success the old chain is
    /// freed (the caller frees the blocks the map stopped using).
    fn commit_file(&mut self, slot: u32, size: u64, map_changed: bool) -> Result<(), Error> {
        let file = self.files[slot as usize].as_mut().ok_or(Error::StaleFile)?;
        if !map_changed {
            let record = make_record(file, size, &file.map, &file.chain);
            self.commit(&[(slot, record.encode())])?;
            if let Some(file) = self.files[slot as usize].as_mut() {
                file.size = size;
            }
            return Ok(());
        }
        let generation = file.generation;
        // Lend the map to write_chain, which needs `&mut self`.
        let map = core::mem::take(&mut file.map);
        let chain = self.write_chain(slot, generation, &map);
        let file = self.files[slot as usize].as_mut().ok_or(Error::StaleFile)?;
        file.map = map;
        let chain = chain?;
        let record = make_record(file, size, &file.map, &chain);
        if let Err(e) = self.commit(&[(slot, record.encode())]) {
            let runs: Vec<(u64, u64)> = chain.iter().map(|&b| (b, 1)).collect();
            self.unallocate(&runs);
            return Err(e);
        }
        let file = self.files[slot as usize].as_mut().ok_or(Error::StaleFile)?;
        file.size = size;
        let old_chain = core::mem::replace(&mut file.chain, chain);
        for b in old_chain {
            self.unref(b, 1);
        }
        Ok(())
    }

    // ----- the write path ---------------------------------------------------

    /// Stores `bytes` at region offset `at`, flushed (or non-temporal).
    fn put(&mut self, at: u64, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() >= NT_THRESHOLD {
            self.mem.write_nt(at, bytes)?;
        } else {
            self.mem.write_flush(at, bytes)?;
        }
        Ok(())
    }

    fn put_zeros(&mut self, at: u64, len: u64) -> Result<(), Error> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.put(at + done, &ZEROS[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn copy_region(&mut self, from: u64, to: u64, len: u64) -> Result<(), Error> {
        let mut buf = alloc::vec![0u8; (len.min(64 * 1024)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.mem.read(from + done, &mut buf[..n])?;
            self.put(to + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Applies byte edits to a file and sets its size: the one place where
    /// blocks are allocated for data, shared blocks are copied before being
    /// written, and new blocks are filled before the metadata that points
    /// at them is committed (FORMAT.md "Data writes").
    fn modify(&mut self, slot: u32, edits: &[Edit<'_>], new_size: u64) -> Result<(), Error> {
        let file = self.files[slot as usize].as_ref().ok_or(Error::StaleFile)?;
        let block_range = |e: &Edit<'_>| {
            if e.len() == 0 {
                return (0, 0);
            }
            (e.offset / BLOCK_SIZE, e.end().div_ceil(BLOCK_SIZE))
        };
        let all = union(edits.iter().map(block_range).collect());
        let data = union(
            edits
                .iter()
                .filter(|e| matches!(e.src, Src::Data(_)))
                .map(block_range)
                .collect(),
        );
        // Blocks needing a fresh block: shared blocks touched by any edit
        // (copy first), holes touched by data (zero-filled). Holes touched
        // only by zero edits already read as zeros.
        let mut needs: Vec<(u64, u64, Option<u64>)> = Vec::new();
        for &(s, e) in &all {
            for piece in file.map.pieces(s, e - s) {
                if let Some(p) = piece.physical {
                    for (ps, pl, count) in self.refs.segments(p, piece.len) {
                        // Held blocks are copied too: a hold is a stable
                        // snapshot for its holder (see `hold`).
                        for (qs, ql, pins) in self.pins.segments(ps, pl) {
                            if count as u64 + pins as u64 > 1 {
                                needs.push((piece.logical + (qs - p), ql, Some(qs)));
                            }
                        }
                    }
                }
            }
        }
        for &(s, e) in &data {
            for piece in file.map.pieces(s, e - s) {
                if piece.physical.is_none() {
                    needs.push((piece.logical, piece.len, None));
                }
            }
        }
        needs.sort_unstable();
        // Allocate. A large file gets a whole 2 MiB chunk for each logical
        // chunk that is entirely a hole (FORMAT.md "Allocation policy").
        let large = new_size > CHUNK_SIZE;
        let old_size = file.size;
        // In a large file the unit of allocation is the 2 MiB chunk
        // (FORMAT.md "Allocation policy"): a logical chunk in which the file
        // owns no block outright (all hole, or shared with a clone, or held)
        // moves as a whole to a fresh huge chunk, holes zero-filled and
        // shared blocks copied. That keeps large files huge-page mappable
        // and their extent count bounded by the chunk count, at the price
        // of 2 MiB of space and copying per first touch of a chunk.
        let refs = &self.refs;
        let pins = &self.pins;
        let chunk_movable = |chunk: u64| {
            for piece in file.map.pieces(chunk * CHUNK_BLOCKS, CHUNK_BLOCKS) {
                let Some(p) = piece.physical else { continue };
                for (ps, pl, count) in refs.segments(p, piece.len) {
                    for (_, _, held) in pins.segments(ps, pl) {
                        if count <= 1 && held == 0 {
                            return false;
                        }
                    }
                }
            }
            true
        };
        let movable: BTreeSet<u64> = if large {
            needs
                .iter()
                .flat_map(|&(l, n, _)| (l / CHUNK_BLOCKS)..=((l + n - 1) / CHUNK_BLOCKS))
                .filter(|&c| chunk_movable(c))
                .collect()
        } else {
            BTreeSet::new()
        };
        let mut runs: Vec<NewRun> = Vec::new();
        let mut huge_chunks: BTreeSet<u64> = BTreeSet::new();
        let mut failed = false;
        'outer: for &(logical, len, source) in &needs {
            let mut done = 0;
            while done < len {
                let l = logical + done;
                let chunk = l / CHUNK_BLOCKS;
                let chunk_end = (chunk + 1) * CHUNK_BLOCKS;
                let piece_len = (len - done).min(chunk_end - l);
                if huge_chunks.contains(&chunk) {
                    done += piece_len;
                    continue;
                }
                if movable.contains(&chunk) {
                    let base = chunk * CHUNK_BLOCKS;
                    let prefer = preferred(&file.map, &runs, base);
                    if let Some(p) = self.alloc.alloc_huge(prefer) {
                        huge_chunks.insert(chunk);
                        for piece in file.map.pieces(base, CHUNK_BLOCKS) {
                            runs.push(NewRun {
                                logical: piece.logical,
                                len: piece.len,
                                physical: p + (piece.logical - base),
                                source: piece.physical,
                            });
                        }
                        done += piece_len;
                        continue;
                    }
                }
                let prefer = preferred(&file.map, &runs, l);
                match self.alloc.alloc_small(piece_len, prefer) {
                    Some((p, got)) => {
                        runs.push(NewRun {
                            logical: l,
                            len: got,
                            physical: p,
                            source: source.map(|s| s + done),
                        });
                        done += got;
                    }
                    None => {
                        failed = true;
                        break 'outer;
                    }
                }
            }
        }
        for r in &runs {
            self.refs.increment(r.physical, r.len);
        }
        let fresh: Vec<(u64, u64)> = runs.iter().map(|r| (r.physical, r.len)).collect();
        if failed {
            self.unallocate(&fresh);
            return Err(Error::NoSpace);
        }
        // Switch the in-memory map to the new blocks now; undone below if
        // anything fails before the commit.
        let file = self.files[slot as usize].as_mut().ok_or(Error::StaleFile)?;
        let mut removed = Vec::new();
        for r in &runs {
            removed.extend(file.map.remove(r.logical, r.len));
            file.map.insert(r.logical, r.len, r.physical);
        }
        let result = self
            .fill_and_apply(slot, edits, &runs, new_size)
            .and_then(|()| {
                if runs.is_empty() && new_size == old_size {
                    return Ok(());
                }
                self.commit_file(slot, new_size, !runs.is_empty())
            });
        match result {
            Ok(()) => {
                for e in removed {
                    self.unref(e.physical, e.len);
                }
                Ok(())
            }
            Err(e) => {
                if let Some(file) = self.files[slot as usize].as_mut() {
                    for r in runs.iter().rev() {
                        file.map.remove(r.logical, r.len);
                    }
                    for x in removed {
                        file.map.insert(x.logical, x.len, x.physical);
                    }
                }
                self.unallocate(&fresh);
                Err(e)
            }
        }
    }

    /// Fills the parts of new blocks below the new size that no edit
    /// covers (zeros for holes, the old bytes for copy-on-write), then
    /// writes the edits through the file's (already switched) map.
    fn fill_and_apply(
        &mut self,
        slot: u32,
        edits: &[Edit<'_>],
        runs: &[NewRun],
        new_size: u64,
    ) -> Result<(), Error> {
        let covered = union(edits.iter().map(|e| (e.offset, e.end())).collect());
        for r in runs {
            let start = r.logical * BLOCK_SIZE;
            let end = ((r.logical + r.len) * BLOCK_SIZE).min(new_size);
            let mut cursor = start;
            let mut gaps = Vec::new();
            for &(cs, ce) in &covered {
                if ce <= cursor || cs >= end {
                    continue;
                }
                if cs > cursor {
                    gaps.push((cursor, cs));
                }
                cursor = cursor.max(ce);
            }
            if cursor < end {
                gaps.push((cursor, end));
            }
            for (gs, ge) in gaps {
                let to = block_offset(r.physical) + (gs - start);
                match r.source {
                    Some(src) => self.copy_region(block_offset(src) + (gs - start), to, ge - gs)?,
                    None => self.put_zeros(to, ge - gs)?,
                }
            }
        }
        // (edit index, file offset, region offset, length)
        let mut writes: Vec<(usize, u64, u64, u64)> = Vec::new();
        let file = self.files[slot as usize].as_ref().ok_or(Error::StaleFile)?;
        for (i, e) in edits.iter().enumerate() {
            if e.len() == 0 {
                continue;
            }
            let (bs, be) = (e.offset / BLOCK_SIZE, e.end().div_ceil(BLOCK_SIZE));
            for piece in file.map.pieces(bs, be - bs) {
                let Some(p) = piece.physical else { continue };
                let a = e.offset.max(piece.logical * BLOCK_SIZE);
                let b = e.end().min((piece.logical + piece.len) * BLOCK_SIZE);
                if b > a {
                    writes.push((
                        i,
                        a,
                        block_offset(p) + (a - piece.logical * BLOCK_SIZE),
                        b - a,
                    ));
                }
            }
        }
        for (i, a, at, len) in writes {
            let e = &edits[i];
            match e.src {
                Src::Data(d) => {
                    let from = (a - e.offset) as usize;
                    self.put(at, &d[from..from + len as usize])?;
                }
                Src::Zero(_) => self.put_zeros(at, len)?,
            }
        }
        Ok(())
    }

    // ----- namespace operations -------------------------------------------

    /// Creates an empty file.
    pub fn create(&mut self, name: &str) -> Result<FileId, Error> {
        if !format::valid_name(name) {
            return Err(Error::InvalidName);
        }
        if self.names.contains_key(name) {
            return Err(Error::Exists);
        }
        let slot = *self.free_slots.iter().next().ok_or(Error::NoFileSlots)?;
        let generation = self.generations[slot as usize].wrapping_add(1).max(1);
        let file = File {
            generation,
            name: name.to_string(),
            size: 0,
            map: ExtentMap::default(),
            chain: Vec::new(),
        };
        let record = make_record(&file, 0, &file.map, &[]);
        self.commit(&[(slot, record.encode())])?;
        self.free_slots.remove(&slot);
        self.generations[slot as usize] = generation;
        self.names.insert(file.name.clone(), slot);
        self.files[slot as usize] = Some(file);
        Ok(FileId { slot, generation })
    }

    /// Finds a file by name.
    pub fn lookup(&self, name: &str) -> Result<FileId, Error> {
        let slot = self.slot_of(name)?;
        Ok(self.id_of(slot))
    }

    /// Reads from `offset`; returns the bytes read (short at end of file).
    pub fn read(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let f = self.file(file)?;
        if offset >= f.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(f.size - offset);
        let end = offset + n;
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        for piece in f.map.pieces(bs, be - bs) {
            let a = offset.max(piece.logical * BLOCK_SIZE);
            let b = end.min((piece.logical + piece.len) * BLOCK_SIZE);
            let out = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match piece.physical {
                Some(p) => self
                    .mem
                    .read(block_offset(p) + (a - piece.logical * BLOCK_SIZE), out)?,
                None => out.fill(0),
            }
        }
        Ok(n as usize)
    }

    /// Writes `data` at `offset`, extending the file if needed.
    pub fn write(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), Error> {
        let size = self.file(file)?.size;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        // Fast path (FORMAT.md "Data writes"): the whole range lies in one
        // extent that no other file shares and starts within the file, so
        // the bytes go straight to pmem and at most the size is committed.
        if offset <= size {
            let f = self.file(file)?;
            let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
            if let Some((p, run)) = f.map.run_at(bs) {
                if run >= be - bs
                    && self.refs.max_in(p, be - bs) <= 1
                    && self.pins.max_in(p, be - bs) == 0
                {
                    let at = block_offset(p) + offset % BLOCK_SIZE;
                    self.put(at, data)?;
                    if end > size {
                        return self.commit_file(file.slot, end, false);
                    }
                    return Ok(());
                }
            }
        }
        let mut edits = Vec::with_capacity(2);
        if offset > size {
            // Bytes past the old end of file are unspecified on media: make
            // the gap read as zeros (FORMAT.md "Sizes and preallocation").
            edits.push(Edit {
                offset: size,
                src: Src::Zero(offset - size),
            });
        }
        edits.push(Edit {
            offset,
            src: Src::Data(data),
        });
        self.modify(file.slot, &edits, size.max(end))
    }

    /// Makes `offset..offset + len` read as zeros, extending the file if
    /// needed. With `punch`, whole blocks in the range are unmapped (holes)
    /// and freed; without it, mapped blocks are zeroed in place and holes
    /// stay holes.
    pub fn write_zeroes(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        punch: bool,
    ) -> Result<(), Error> {
        let size = self.file(file)?.size;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        if len == 0 {
            return Ok(());
        }
        let new_size = size.max(end);
        let from = size.min(offset);
        let (ws, we) = (offset.div_ceil(BLOCK_SIZE), end / BLOCK_SIZE);
        if !punch || ws >= we {
            return self.modify(
                file.slot,
                &[Edit {
                    offset: from,
                    src: Src::Zero(end - from),
                }],
                new_size,
            );
        }
        let edits = [
            Edit {
                offset: from,
                src: Src::Zero((ws * BLOCK_SIZE).saturating_sub(from)),
            },
            Edit {
                offset: we * BLOCK_SIZE,
                src: Src::Zero(end - we * BLOCK_SIZE),
            },
        ];
        // Unmap first, at the old size, then zero the edges and grow: were
        // it the other way round, a crash between the two commits could
        // leave the file grown over preallocated blocks that hold stale
        // bytes (FORMAT.md "Sizes and preallocation").
        self.unmap(file.slot, ws, we - ws, size)?;
        self.modify(file.slot, &edits, new_size)
    }

    /// Unmaps file blocks and commits (punch hole / truncate).
    fn unmap(&mut self, slot: u32, start: u64, len: u64, size: u64) -> Result<(), Error> {
        let f = self.files[slot as usize].as_mut().ok_or(Error::StaleFile)?;
        let removed = f.map.remove(start, len);
        if removed.is_empty() {
            if size != f.size {
                return self.commit_file(slot, size, false);
            }
            return Ok(());
        }
        match self.commit_file(slot, size, true) {
            Ok(()) => {
                for e in removed {
                    self.unref(e.physical, e.len);
                }
                Ok(())
            }
            Err(err) => {
                if let Some(f) = self.files[slot as usize].as_mut() {
                    for x in removed {
                        f.map.insert(x.logical, x.len, x.physical);
                    }
                }
                Err(err)
            }
        }
    }

    /// Sets the file size; growing reads as zeros, shrinking frees blocks.
    pub fn truncate(&mut self, file: FileId, size: u64) -> Result<(), Error> {
        let f = self.file(file)?;
        if size > MAX_FILE_SIZE {
            return Err(Error::FileTooLarge);
        }
        let old = f.size;
        if size >= old {
            if size == old {
                return Ok(());
            }
            return self.modify(
                file.slot,
                &[Edit {
                    offset: old,
                    src: Src::Zero(size - old),
                }],
                size,
            );
        }
        let keep = size.div_ceil(BLOCK_SIZE);
        let end = f.map.end().max(keep);
        self.unmap(file.slot, keep, end - keep, size)
    }

    /// Removes a file. Its blocks are freed unless shared or held.
    pub fn unlink(&mut self, name: &str) -> Result<(), Error> {
        let slot = self.slot_of(name)?;
        let f = self.files[slot as usize].as_ref().ok_or(Error::NotFound)?;
        let record = Record::free(f.generation);
        self.commit(&[(slot, record.encode())])?;
        self.drop_slot(slot);
        Ok(())
    }

    /// Forgets a slot whose free record is committed, releasing its blocks.
    fn drop_slot(&mut self, slot: u32) {
        if let Some(f) = self.files[slot as usize].take() {
            self.names.remove(&f.name);
            self.free_slots.insert(slot);
            for e in f.map.iter() {
                self.unref(e.physical, e.len);
            }
            for b in f.chain {
                self.unref(b, 1);
            }
        }
    }

    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let slot = self.slot_of(from)?;
        if !format::valid_name(to) {
            return Err(Error::InvalidName);
        }
        if from == to {
            return Ok(());
        }
        let victim = self.names.get(to).copied();
        let f = self.files[slot as usize].as_ref().ok_or(Error::NotFound)?;
        let mut renamed = f.clone();
        renamed.name = to.to_string();
        let record = make_record(&renamed, renamed.size, &renamed.map, &renamed.chain);
        let mut entries = Vec::with_capacity(2);
        entries.push((slot, record.encode()));
        if let Some(v) = victim {
            let vf = self.files[v as usize].as_ref().ok_or(Error::NotFound)?;
            entries.push((v, Record::free(vf.generation).encode()));
        }
        #[cfg(feature = "fault-injection")]
        let journal_fence = !fault::rename_skips_journal_fence();
        #[cfg(not(feature = "fault-injection"))]
        let journal_fence = true;
        self.commit_with(&entries, journal_fence)?;
        if let Some(v) = victim {
            self.drop_slot(v);
        }
        self.names.remove(from);
        self.names.insert(to.to_string(), slot);
        if let Some(f) = self.files[slot as usize].as_mut() {
            f.name = to.to_string();
        }
        Ok(())
    }

    /// Makes `dst` a copy-on-write clone of `src` in time proportional to
    /// the extent count: the blocks are shared, not copied.
    pub fn clone_file(&mut self, src: &str, dst: &str) -> Result<FileId, Error> {
        let src_slot = self.slot_of(src)?;
        if !format::valid_name(dst) {
            return Err(Error::InvalidName);
        }
        if self.names.contains_key(dst) {
            return Err(Error::Exists);
        }
        let slot = *self.free_slots.iter().next().ok_or(Error::NoFileSlots)?;
        let generation = self.generations[slot as usize].wrapping_add(1).max(1);
        let s = self.files[src_slot as usize]
            .as_ref()
            .ok_or(Error::NotFound)?;
        let mut file = File {
            generation,
            name: dst.to_string(),
            size: s.size,
            map: s.map.clone(),
            chain: Vec::new(),
        };
        let chain = self.write_chain(slot, generation, &file.map)?;
        file.chain = chain;
        let record = make_record(&file, file.size, &file.map, &file.chain);
        if let Err(e) = self.commit(&[(slot, record.encode())]) {
            let runs: Vec<(u64, u64)> = file.chain.iter().map(|&b| (b, 1)).collect();
            self.unallocate(&runs);
            return Err(e);
        }
        for e in file.map.iter() {
            self.refs.increment(e.physical, e.len);
        }
        self.free_slots.remove(&slot);
        self.generations[slot as usize] = generation;
        self.names.insert(file.name.clone(), slot);
        self.files[slot as usize] = Some(file);
        Ok(FileId { slot, generation })
    }

    /// Up to `max` entries sorted by name bytes, starting after `start_after`.
    pub fn list(&self, start_after: Option<&str>, max: usize) -> Vec<DirEntry> {
        let lower = match start_after {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        self.names
            .range::<str, _>((lower, Bound::Unbounded))
            .take(max)
            .map(|(name, &slot)| DirEntry {
                name: name.clone(),
                id: self.id_of(slot),
                size: self.files[slot as usize].as_ref().map_or(0, |f| f.size),
            })
            .collect()
    }

    /// File attributes.
    pub fn stat(&self, file: FileId) -> Result<Stat, Error> {
        let f = self.file(file)?;
        let mut shared = 0;
        let mut huge = 0;
        for e in f.map.iter() {
            for (_, l, c) in self.refs.segments(e.physical, e.len) {
                if c > 1 {
                    shared += l;
                }
            }
            // Count whole aligned chunks where logical and physical agree
            // modulo 2 MiB.
            if e.logical % CHUNK_BLOCKS == e.physical % CHUNK_BLOCKS {
                let first = e.logical.div_ceil(CHUNK_BLOCKS) * CHUNK_BLOCKS;
                let last = (e.logical + e.len) / CHUNK_BLOCKS * CHUNK_BLOCKS;
                if last > first {
                    huge += last - first;
                }
            }
        }
        Ok(Stat {
            id: file,
            name: f.name.clone(),
            size: f.size,
            allocated_bytes: f.map.mapped_blocks() * BLOCK_SIZE,
            shared_bytes: shared * BLOCK_SIZE,
            extent_count: f.map.len() as u64,
            huge_bytes: huge * BLOCK_SIZE,
        })
    }

    /// Filesystem-wide figures.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            block_size: BLOCK_SIZE,
            total_blocks: self.sb.total_blocks,
            data_blocks: self.sb.total_blocks - self.sb.data_start,
            free_blocks: self.alloc.free_blocks(),
            files: self.names.len() as u64,
            max_files: self.sb.max_files as u64,
            huge_free: self.alloc.huge_free(),
            uuid: self.sb.uuid,
        }
    }

    /// Makes every earlier write to the file durable. Data writes are
    /// already flushed and metadata already committed, so this is a fence
    /// (FORMAT.md "Data writes").
    pub fn persist(&mut self, file: FileId) -> Result<(), Error> {
        self.file(file)?;
        self.mem.fence();
        Ok(())
    }

    /// Makes every earlier write durable.
    pub fn persist_all(&mut self) {
        self.mem.fence();
    }

    /// Data and hole segments of `offset..offset + len`, clipped to the end
    /// of file, adjacent segments of one kind merged (NBD block status).
    pub fn extents(&self, file: FileId, offset: u64, len: u64) -> Result<Vec<Segment>, Error> {
        let f = self.file(file)?;
        let end = offset.saturating_add(len).min(f.size);
        let mut out: Vec<Segment> = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        for piece in f.map.pieces(bs, be - bs) {
            let a = offset.max(piece.logical * BLOCK_SIZE);
            let b = end.min((piece.logical + piece.len) * BLOCK_SIZE);
            let data = piece.physical.is_some();
            match out.last_mut() {
                Some(last) if last.data == data && last.offset + last.len == a => last.len += b - a,
                _ => out.push(Segment {
                    offset: a,
                    len: b - a,
                    data,
                }),
            }
        }
        Ok(out)
    }

    /// Region ranges backing the mapped parts of `offset..offset + len`
    /// (clipped to the end of file; holes are left out) for zero-copy use.
    /// Pair with `hold` so the blocks cannot be reused meanwhile.
    pub fn dax_ranges(&self, file: FileId, offset: u64, len: u64) -> Result<Vec<DaxRange>, Error> {
        let f = self.file(file)?;
        let end = offset.saturating_add(len).min(f.size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        for piece in f.map.pieces(bs, be - bs) {
            let Some(p) = piece.physical else { continue };
            for (ps, pl, count) in self.refs.segments(p, piece.len) {
                let logical = piece.logical + (ps - p);
                let a = offset.max(logical * BLOCK_SIZE);
                let b = end.min((logical + pl) * BLOCK_SIZE);
                if b <= a {
                    continue;
                }
                let region_offset = block_offset(ps) + (a - logical * BLOCK_SIZE);
                out.push(DaxRange {
                    file_offset: a,
                    len: b - a,
                    region_offset,
                    physical_address: self.mem.physical_address(region_offset),
                    shared: count > 1,
                });
            }
        }
        Ok(out)
    }

    /// Pins the blocks backing `offset..offset + len` (clipped to the end of
    /// file): until `release`, they are not reused, even if the file is
    /// truncated, punched or unlinked, and their bytes do not change: a
    /// `write` or `write_zeroes` into a held block copies it first (as for
    /// a block shared with a clone), so an in-flight send of the held range
    /// sends the bytes as they were when held. Writes made directly through
    /// a DAX mapping are the holder's own business. Holds do not survive a
    /// remount.
    pub fn hold(&mut self, file: FileId, offset: u64, len: u64) -> Result<Hold, Error> {
        let f = self.file(file)?;
        let end = offset.saturating_add(len).min(f.size);
        let mut ranges = Vec::new();
        if offset < end {
            let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
            for piece in f.map.pieces(bs, be - bs) {
                if let Some(p) = piece.physical {
                    ranges.push((p, piece.len));
                }
            }
        }
        let mut bytes = 0;
        for &(p, l) in &ranges {
            self.pins.increment(p, l);
            bytes += l * BLOCK_SIZE;
        }
        let id = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
        self.holds.insert(id, ranges);
        Ok(Hold { id, bytes })
    }

    /// Releases a hold; blocks no file references any more become free.
    pub fn release(&mut self, hold: Hold) {
        let Some(ranges) = self.holds.remove(&hold.id) else {
            return;
        };
        for (p, l) in ranges {
            for (s, n) in self.pins.decrement(p, l) {
                for (rs, rl, refs) in self.refs.segments(s, n) {
                    if refs == 0 {
                        self.alloc.free(rs, rl);
                    }
                }
            }
        }
    }

    // ----- checking ---------------------------------------------------------

    /// Checks an unmounted image without changing it: superblocks, journal,
    /// every record, chain and extent, and block ownership.
    pub fn fsck_image(mem: &M) -> FsckReport {
        let mut problems = Vec::new();
        if let Some(sb) = Self::check_media_header(mem, &mut problems) {
            match check::scan(mem, &sb, &mut problems) {
                Ok(scan) => {
                    check::media_refs(&scan, &mut problems);
                }
                Err(e) => problems.push(format!("reading the file table: {e}")),
            }
        }
        FsckReport { problems }
    }

    fn check_media_header(mem: &M, problems: &mut Vec<String>) -> Option<Superblock> {
        let sb = match read_superblock(mem) {
            Ok((sb, primary, backup)) => {
                if !primary {
                    problems.push(String::from("primary superblock (block 0) is invalid"));
                }
                if !backup {
                    problems.push(String::from("backup superblock (block 1) is invalid"));
                }
                sb
            }
            Err(e) => {
                problems.push(format!("superblock: {e}"));
                return None;
            }
        };
        match mem.load_u64(STATE_WORD_OFFSET) {
            Ok(STATE_CLEAN) | Ok(STATE_DIRTY) => {}
            Ok(w) => problems.push(format!("state word {w:#x} is neither clean nor dirty")),
            Err(e) => problems.push(format!("state word: {e}")),
        }
        match mem.load_u64(block_offset(sb.journal_start)) {
            Ok(0) => {}
            Ok(seq) => problems.push(format!(
                "journal transaction {seq} is committed but not applied (mount replays it)"
            )),
            Err(e) => problems.push(format!("journal: {e}")),
        }
        Some(sb)
    }

    /// Checks every invariant of the mounted filesystem against media:
    /// records and chains decode, every block is owned by exactly its
    /// references, the in-memory counts and free space agree with media,
    /// sizes cover extents. Each problem is reported.
    pub fn fsck(&self) -> FsckReport {
        let mut problems = Vec::new();
        let Some(sb) = Self::check_media_header(&self.mem, &mut problems) else {
            return FsckReport { problems };
        };
        if sb != self.sb {
            problems.push(String::from(
                "superblock on media differs from the mounted one",
            ));
        }
        let scan = match check::scan(&self.mem, &sb, &mut problems) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("reading the file table: {e}"));
                return FsckReport { problems };
            }
        };
        let media_refs = check::media_refs(&scan, &mut problems);
        // Files in memory versus on media.
        let mut seen = alloc::vec![false; self.files.len()];
        for sf in &scan.files {
            let slot = sf.slot as usize;
            seen[slot] = true;
            match &self.files[slot] {
                None => problems.push(format!(
                    "record {slot} ({:?}) is live on media only",
                    sf.record.name
                )),
                Some(f) => {
                    if f.name != sf.record.name || f.generation != sf.record.generation {
                        problems.push(format!(
                            "record {slot}: name or generation differs from memory"
                        ));
                    }
                    if f.size != sf.record.size {
                        problems.push(format!(
                            "file {:?}: size {} in memory, {} on media",
                            f.name, f.size, sf.record.size
                        ));
                    }
                    if f.map != ExtentMap::from_extents(&sf.extents) {
                        problems.push(format!("file {:?}: extent map differs from media", f.name));
                    }
                    if f.chain != sf.chain {
                        problems.push(format!(
                            "file {:?}: overflow chain differs from media",
                            f.name
                        ));
                    }
                }
            }
        }
        for (slot, f) in self.files.iter().enumerate() {
            if let Some(f) = f {
                if !seen[slot] {
                    problems.push(format!(
                        "file {:?} (record {slot}) is missing on media",
                        f.name
                    ));
                }
            }
        }
        check::compare_counts("reference counts", &self.refs, &media_refs, &mut problems);
        // Free space: free blocks are unreferenced and unpinned; every data
        // block is free, referenced or pinned.
        let mut free_total = 0;
        for (s, l) in self.alloc.free_runs() {
            free_total += l;
            if s < sb.data_start || s + l > sb.total_blocks {
                problems.push(format!(
                    "free run {s}..{} lies outside the data area",
                    s + l
                ));
            }
            for (bs, bl, c) in media_refs.segments(s, l) {
                if c > 0 {
                    problems.push(format!(
                        "blocks {bs}..{} are free but referenced by a file",
                        bs + bl
                    ));
                }
            }
            for (bs, bl, c) in self.pins.segments(s, l) {
                if c > 0 {
                    problems.push(format!("blocks {bs}..{} are free but held", bs + bl));
                }
            }
        }
        if free_total != self.alloc.free_blocks() {
            problems.push(String::from(
                "allocator free-block counter disagrees with its free runs",
            ));
        }
        let mut used = 0;
        for (_, l, _) in media_refs.iter() {
            used += l;
        }
        for (s, l, _) in self.pins.iter() {
            for (_, rl, c) in media_refs.segments(s, l) {
                if c == 0 {
                    used += rl;
                }
            }
        }
        let data_blocks = sb.total_blocks - sb.data_start;
        if used + free_total != data_blocks {
            problems.push(format!(
                "{} data blocks, but {used} are in use and {free_total} free: blocks leaked or double-counted",
                data_blocks
            ));
        }
        FsckReport { problems }
    }
}
