//! The public types of daxfs: the error enum, what `probe` reports, the
//! format options, file handles ([`FileId`]), directory entries, file and
//! filesystem attributes, extent and DAX-range descriptions, holds and the
//! fsck report. Everything here is re-exported at the crate root.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use daxbox_budget::OverBudget;
use daxbox_persist::OutOfRange;

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
    /// The operation would take more memory than the filesystem's budget
    /// has left; nothing was changed.
    OutOfMemory(OverBudget),
    /// Mounting the image needs more memory than the budget allows; the
    /// image was not changed.
    MountTooLarge {
        /// Bytes the mount had taken when it was refused, plus the
        /// refused request: a lower bound of what it needs.
        needed: usize,
        /// The budget's name.
        budget: &'static str,
        /// The budget's limit.
        limit: usize,
        /// Bytes of the budget other users held.
        used_elsewhere: usize,
    },
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
            Error::OutOfMemory(e) => write!(f, "out of memory: {e}"),
            Error::MountTooLarge {
                needed,
                budget,
                limit,
                used_elsewhere,
            } => write!(
                f,
                "mount refused: the image needs at least {needed} bytes of memory, the {budget} budget is {limit} bytes ({used_elsewhere} held by others)"
            ),
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
    pub(crate) slot: u32,
    pub(crate) generation: u32,
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
    /// Files (with a name).
    pub files: u64,
    /// Files whose name was removed while they were open: their blocks
    /// return when the last holder closes them (FORMAT.md "Orphans").
    pub orphans: u64,
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
    pub(crate) id: u64,
    pub(crate) bytes: u64,
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
    /// Orphan records found (files removed while open: a valid state; a
    /// mount reclaims them, FORMAT.md "Orphans").
    pub orphans: u64,
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
            write!(f, "fsck: clean")?;
            if self.orphans > 0 {
                write!(
                    f,
                    " ({} removed file(s) still open or awaiting reclaim)",
                    self.orphans
                )?;
            }
            return Ok(());
        }
        writeln!(f, "fsck: {} problem(s)", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}
