//! The storage side of the engine: the set of exports and the block
//! operations on them.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::wire;

/// Opaque handle to an opened export, chosen by the [`Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExportHandle(pub u64);

/// What an export is backed by, for people and logs. The engine itself
/// treats both alike: block status always comes from
/// [`Backend::block_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// A raw pmem block device: every byte is allocated data.
    Raw,
    /// A (possibly sparse) daxfs file: block status comes from its extent map.
    File,
}

/// Everything the handshake needs to describe one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name as clients ask for it (`NBD_OPT_GO`, `NBD_OPT_LIST`).
    pub name: String,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`); may be empty.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes, trims and zeroing are refused with `EPERM`.
    pub read_only: bool,
    /// Raw device or file.
    pub kind: ExportKind,
    /// `NBD_CMD_TRIM` is implemented (advertised as `NBD_FLAG_SEND_TRIM`).
    pub can_trim: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO` can be honoured (`NBD_FLAG_SEND_FAST_ZERO`).
    pub can_fast_zero: bool,
    /// Flush and FUA on one connection are visible on every other
    /// connection to the same export (`NBD_FLAG_CAN_MULTI_CONN`): true when
    /// all connections share one cache, as they do over pmem.
    pub multi_conn: bool,
}

/// One extent of a block-status answer (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes; never zero.
    pub len: u64,
    /// The extent is not allocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// The extent reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// Allocated data of unknown contents.
    pub const fn data(len: u64) -> Self {
        Extent {
            len,
            hole: false,
            zero: false,
        }
    }
    /// An unallocated range that reads as zeroes.
    pub const fn hole(len: u64) -> Self {
        Extent {
            len,
            hole: true,
            zero: true,
        }
    }
    pub(crate) fn flags(&self) -> u32 {
        (if self.hole { wire::STATE_HOLE } else { 0 })
            | (if self.zero { wire::STATE_ZERO } else { 0 })
    }
}

/// Flags of a write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// `NBD_CMD_FLAG_NO_HOLE`: the range must stay allocated.
    pub no_hole: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with [`BackendError::NotSupported`]
    /// instead of zeroing slowly.
    pub fast: bool,
}

/// A failed backend operation. Mapped onto NBD error values by
/// [`BackendError::errno`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// No export with that name.
    NoSuchExport,
    /// The media failed (`EIO`).
    Io,
    /// No space left, e.g. a daxfs file cannot grow (`ENOSPC`).
    NoSpace,
    /// The export is read-only (`EPERM`).
    ReadOnly,
    /// The request is invalid for this export (`EINVAL`).
    Invalid,
    /// The operation cannot be done as asked, e.g. a fast zero (`ENOTSUP`).
    NotSupported,
    /// The server's policy does not let this client use the export (an
    /// allow-list): `NBD_REP_ERR_POLICY` to `NBD_OPT_INFO`/`GO` and the
    /// meta-context options, a close for `NBD_OPT_EXPORT_NAME`, `EPERM`
    /// to a request.
    Denied,
}

impl BackendError {
    /// The NBD error value for this error (proto.md "Error values").
    pub fn errno(self) -> u32 {
        match self {
            BackendError::NoSuchExport | BackendError::Invalid => wire::EINVAL,
            BackendError::Io => wire::EIO,
            BackendError::NoSpace => wire::ENOSPC,
            BackendError::ReadOnly | BackendError::Denied => wire::EPERM,
            BackendError::NotSupported => wire::ENOTSUP,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendError::NoSuchExport => "no such export",
            BackendError::Io => "input/output error",
            BackendError::NoSpace => "no space left on device",
            BackendError::ReadOnly => "export is read-only",
            BackendError::Invalid => "invalid request",
            BackendError::NotSupported => "operation not supported",
            BackendError::Denied => "access denied by the server's allow-list",
        })
    }
}

/// Where an `NBD_OPT_LIST` answer has got to, kept by the connection
/// between pages ([`Backend::list_exports`]). Its meaning is the
/// backend's: e.g. a part (device) and the last name listed in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListCursor {
    /// Which part of the listing (the default implementation: the index
    /// of the next export).
    pub part: usize,
    /// The last name listed in that part, if any.
    pub after: Option<String>,
}

/// The length of the piece of `offset..offset + len` that one step does
/// with a `budget` of bytes: up to the next multiple of `budget` (so the
/// pieces of a long range are aligned, and a daxfs punch over them frees
/// the same whole blocks as one call would), at least 1 byte, at most
/// `len`. A `budget` of 0 counts as 1.
pub fn step_piece(offset: u64, len: u64, budget: u64) -> u64 {
    let budget = budget.max(1);
    let to_boundary = budget - offset % budget;
    len.min(to_boundary).max(1.min(len))
}

/// The set of exports, as seen by the protocol engine.
///
/// `daxbox-storage` implements this once over its storage state (daxfs
/// files and raw pmem devices), for the kernel and the host server alike;
/// the unit tests here implement it over memory. The engine has already checked every range against
/// [`ExportInfo::size`], the read-only flag and the maximum block size
/// before calling, but implementations still return errors rather than
/// panic on bad input. The trait is object-safe.
pub trait Backend {
    /// A monotonic clock in microseconds, for request latencies
    /// ([`crate::metrics`]); the default (no clock) records every latency
    /// as 0.
    fn now_us(&self) -> u64 {
        0
    }
    /// Number of exports `NBD_OPT_LIST` may show.
    fn export_count(&self) -> usize;
    /// Name of the `index`th export for `NBD_OPT_LIST`, `None` past the end.
    fn export_name(&self, index: usize) -> Option<String>;
    /// Pushes up to `max` export names that follow `cursor` onto `out`,
    /// in listing order, and moves `cursor` past them; returns false once
    /// the listing is complete. `NBD_OPT_LIST` asks for one page at a time
    /// as the client reads the replies, so a page must cost about its own
    /// length, not the number of exports. The default pages through
    /// [`Backend::export_name`] by index.
    fn list_exports(&mut self, cursor: &mut ListCursor, max: usize, out: &mut Vec<String>) -> bool {
        let count = self.export_count();
        let mut taken = 0;
        while taken < max && cursor.part < count {
            if let Some(name) = self.export_name(cursor.part) {
                out.push(name);
            }
            cursor.part += 1;
            taken += 1;
        }
        cursor.part < count
    }
    /// Looks up an export by name (`""` is the default export, whose choice
    /// is the backend's). Called for `NBD_OPT_INFO`, `NBD_OPT_GO`,
    /// `NBD_OPT_EXPORT_NAME` and meta-context options, possibly several
    /// times per connection, so it must be cheap and idempotent: the engine
    /// never releases a handle.
    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError>;
    /// Describes an opened export.
    fn info(&self, export: ExportHandle) -> Option<ExportInfo>;
    /// Whether the export may be written now: called before every
    /// write-type request (WRITE, TRIM, WRITE_ZEROES) that passed the
    /// engine's own checks, and an error is that request's reply (a
    /// WRITE's payload is discarded) without the backend being written.
    /// [`ExportInfo::read_only`] is what the handshake advertised; an
    /// export may become read-only later (daxbox's read-only rules follow
    /// files across renames), and this is where the backend says so with
    /// [`BackendError::ReadOnly`] (`EPERM`). The default allows.
    fn check_write(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        let _ = export;
        Ok(())
    }
    /// Reads `buf.len()` bytes at `offset` into `buf` (which is the socket
    /// transmit buffer: data is copied once).
    fn read(
        &mut self,
        export: ExportHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), BackendError>;
    /// Stores `data` at `offset`. Need not be durable yet: the engine calls
    /// [`Backend::persist`] or [`Backend::flush`] before replying when the
    /// client asked for durability. Large writes arrive in several calls.
    fn write(&mut self, export: ExportHandle, offset: u64, data: &[u8])
        -> Result<(), BackendError>;
    /// Makes everything written to `offset..offset + len` durable; returns
    /// only once it is (FUA). The default flushes the whole export.
    fn persist(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        let _ = (offset, len);
        self.flush(export)
    }
    /// Makes every completed write to the export durable; returns only once
    /// it is (`NBD_CMD_FLUSH`).
    fn flush(&mut self, export: ExportHandle) -> Result<(), BackendError>;
    /// Discards a range (`NBD_CMD_TRIM`); contents afterwards are
    /// unspecified. Only called when [`ExportInfo::can_trim`].
    fn trim(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError>;
    /// Zeroes a range (`NBD_CMD_WRITE_ZEROES`).
    fn write_zeroes(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), BackendError>;
    /// Does the first part of a TRIM of `offset..offset + len` (`len` > 0):
    /// at most about `budget` bytes' worth of work (a multiple of 4096);
    /// returns how many bytes from `offset` on are done, at least 1 and at
    /// most `len`. The engine calls it once per event-loop step until the
    /// whole range is done ([`ServerConfig::step_bytes`]), so one long TRIM
    /// never stalls the other connections. The default trims up to the next
    /// multiple of `budget` ([`step_piece`]); a backend that can pass over
    /// cheap parts (holes) quickly may report more.
    ///
    /// [`ServerConfig::step_bytes`]: crate::ServerConfig::step_bytes
    fn trim_step(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        budget: u64,
    ) -> Result<u64, BackendError> {
        let piece = step_piece(offset, len, budget);
        self.trim(export, offset, piece)?;
        Ok(piece)
    }
    /// [`Backend::trim_step`] for `NBD_CMD_WRITE_ZEROES`: zeroes the first
    /// part of the range, at most about `budget` bytes' worth of work, and
    /// returns how many bytes from `offset` on are done (1..=`len`).
    fn write_zeroes_step(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
        budget: u64,
    ) -> Result<u64, BackendError> {
        let piece = step_piece(offset, len, budget);
        self.write_zeroes(export, offset, piece, flags)?;
        Ok(piece)
    }
    /// Describes `offset..offset + len` as consecutive extents starting at
    /// `offset`, pushed onto `out`. It may stop early (after `max_extents`
    /// or any time after the first). The default says "all data", right
    /// for raw exports.
    fn block_status(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        max_extents: usize,
        out: &mut Vec<Extent>,
    ) -> Result<(), BackendError> {
        let _ = (export, offset, max_extents);
        out.push(Extent::data(len));
        Ok(())
    }
    /// Prefetch hint (`NBD_CMD_CACHE`); pmem needs nothing.
    fn cache(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        let _ = (export, offset, len);
        Ok(())
    }
}
