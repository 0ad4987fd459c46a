//! The transmission phase (proto.md "Transmission", "Request types"):
//! parsing a request header, checking it against the negotiated flags and
//! the export, executing it on the [`Backend`], and queueing its reply
//! (simple, structured or extended). READ only queues a read item: its
//! data is fetched when `produce` sends it (`output.rs`).

use alloc::vec::Vec;

use super::output::{chunk_header, error_chunk, OutItem, ReadItem};
use super::{Connection, InState, Job, Refusal, ReplyMode, Transmission, WriteState};
use crate::backend::{Backend, BackendError, ExportHandle, Extent, ZeroFlags};
use crate::metrics::{Done, Op};
use crate::wire::{self, Command, PutBe, Reply, Request, RequestHeader};

impl Connection {
    fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    /// Parses the gathered request header (`wire::RequestHeader`, which
    /// checks the length before any field is read). `None` when the magic
    /// is not the one the negotiated header format requires.
    pub(super) fn parse_request(&self) -> Option<Request> {
        let len = if self.extended {
            wire::EXTENDED_REQUEST_LEN
        } else {
            wire::COMPACT_REQUEST_LEN
        };
        let header = RequestHeader::new_checked(&self.header[..len]).ok()?;
        let request = Request::parse(&header).ok()?;
        if request.extended != self.extended {
            return None;
        }
        Some(request)
    }

    pub(super) fn overlaps_pending_read(&self, request: &Request) -> bool {
        if !request.command.is_write_type() {
            return false;
        }
        self.out.iter().any(|item| match item {
            OutItem::Read(read) => {
                read.remaining > 0
                    && read.offset < request.end()
                    && request.offset < read.offset.saturating_add(read.remaining)
            }
            _ => false,
        })
    }

    /// Checks a request against the negotiated flags, the export and the
    /// limits (proto.md "Error values", "Command flags").
    fn validate(&self, request: &Request, tx: &Transmission) -> Result<(), Refusal> {
        let einval = |m| (wire::EINVAL, m);
        // proto.md "Error values": EPERM for a write-type request (WRITE,
        // TRIM, WRITE_ZEROES) on a read-only export, before any other
        // complaint about the command, its flags included: a read-only
        // export advertises neither FUA nor FAST_ZERO, so checking the
        // flags first would answer EINVAL. A refused WRITE's payload is
        // still skipped by the caller.
        if request.command.is_write_type() && tx.info.read_only {
            return Err((wire::EPERM, "export is read-only"));
        }
        let known = wire::CMD_FLAG_FUA
            | wire::CMD_FLAG_NO_HOLE
            | wire::CMD_FLAG_DF
            | wire::CMD_FLAG_REQ_ONE
            | wire::CMD_FLAG_FAST_ZERO
            | wire::CMD_FLAG_PAYLOAD_LEN;
        if request.flags & !known != 0 {
            return Err(einval("unknown command flag"));
        }
        if request.flags & wire::CMD_FLAG_PAYLOAD_LEN != 0 && !self.extended {
            return Err(einval("payload flag without extended headers"));
        }
        if request.flags & wire::CMD_FLAG_FUA != 0 && tx.flags & wire::TFLAG_SEND_FUA == 0 {
            return Err(einval("FUA was not negotiated"));
        }
        let allowed = match request.command {
            Command::Read if self.structured => wire::CMD_FLAG_DF,
            Command::Read | Command::Flush | Command::Trim | Command::Cache => 0,
            Command::Write => wire::CMD_FLAG_PAYLOAD_LEN,
            Command::WriteZeroes if tx.flags & wire::TFLAG_SEND_FAST_ZERO != 0 => {
                wire::CMD_FLAG_NO_HOLE | wire::CMD_FLAG_FAST_ZERO
            }
            Command::WriteZeroes => wire::CMD_FLAG_NO_HOLE,
            Command::BlockStatus => wire::CMD_FLAG_REQ_ONE,
            Command::Disc | Command::Unknown(_) => return Err(einval("unknown command")),
        };
        if request.flags & !(allowed | wire::CMD_FLAG_FUA) != 0 {
            if request.flags & wire::CMD_FLAG_PAYLOAD_LEN != 0 {
                return Err(einval("command payloads are not supported"));
            }
            return Err(einval("flag not valid for this command"));
        }
        if request.command == Command::Trim && tx.flags & wire::TFLAG_SEND_TRIM == 0 {
            return Err(einval("trim is not supported on this export"));
        }
        if request.command == Command::BlockStatus && !tx.meta {
            return Err(einval("no metadata context was negotiated"));
        }
        if request.command == Command::Flush {
            if request.offset != 0 || request.len != 0 {
                return Err(einval("flush offset and length must be zero"));
            }
            return Ok(());
        }
        if request.len == 0 {
            return Err(einval("zero-length request"));
        }
        if matches!(request.command, Command::Read | Command::Write)
            && request.len > u64::from(self.config.max_block_size)
        {
            return Err(einval("request larger than the maximum block size"));
        }
        match request.offset.checked_add(request.len) {
            Some(end) if end <= tx.info.size => Ok(()),
            _ if matches!(request.command, Command::Write | Command::WriteZeroes) => {
                Err((wire::ENOSPC, "request extends past the end of the export"))
            }
            _ => Err(einval("request extends past the end of the export")),
        }
    }

    pub(super) fn dispatch<B: Backend + ?Sized>(&mut self, request: Request, backend: &mut B) {
        if request.command == Command::Disc {
            // proto.md "NBD_CMD_DISC": handle outstanding requests (all are
            // executed; their replies are queued), then close.
            self.close_after_output();
            return;
        }
        let Some(tx) = self.tx.as_ref() else {
            self.hard_close();
            return;
        };
        // Bytes that follow the header: a WRITE's data, or with extended
        // headers any command carrying NBD_CMD_FLAG_PAYLOAD_LEN.
        let payload = if request.command == Command::Write
            || (self.extended && request.flags & wire::CMD_FLAG_PAYLOAD_LEN != 0)
        {
            request.len
        } else {
            0
        };
        if let Err((errno, message)) = self.validate(&request, tx) {
            if errno == wire::EPERM {
                self.stats.read_only_writes = self.stats.read_only_writes.saturating_add(1);
            }
            self.reply_error(&request, errno, message);
            if payload > 0 {
                self.state = InState::Discard { remaining: payload };
            }
            return;
        }
        if self.overlaps_pending_read(&request) {
            self.stalled = Some(request);
            return;
        }
        let export = tx.export;
        // Read-only may have changed since the handshake: the backend has
        // the last word before anything is written.
        if request.command.is_write_type() {
            if let Err(error) = backend.check_write(export) {
                self.reply_result(&request, Err(error));
                if payload > 0 {
                    self.state = InState::Discard { remaining: payload };
                }
                return;
            }
        }
        let fua = request.flags & wire::CMD_FLAG_FUA != 0;
        match request.command {
            Command::Read => self.queue_read(&request, export),
            Command::Write => {
                self.state = InState::WritePayload(WriteState {
                    cookie: request.cookie,
                    start: request.offset,
                    len: request.len,
                    written: 0,
                    fua,
                    error: None,
                });
            }
            Command::Flush => {
                let result = backend.flush(export);
                self.reply_result(&request, result);
            }
            // Done piece by piece by `step`, which queues the reply.
            Command::Trim => {
                self.job = Some(Job {
                    request,
                    next: request.offset,
                    zeroes: None,
                    fua,
                });
            }
            Command::WriteZeroes => {
                let flags = ZeroFlags {
                    no_hole: request.flags & wire::CMD_FLAG_NO_HOLE != 0,
                    fast: request.flags & wire::CMD_FLAG_FAST_ZERO != 0,
                };
                self.job = Some(Job {
                    request,
                    next: request.offset,
                    zeroes: Some(flags),
                    fua,
                });
            }
            Command::Cache => {
                let result = backend.cache(export, request.offset, request.len);
                self.reply_result(&request, result);
            }
            Command::BlockStatus => self.block_status(&request, export, backend),
            Command::Disc | Command::Unknown(_) => {
                self.reply_error(&request, wire::EINVAL, "unknown command")
            }
        }
    }

    pub(super) fn finish_write<B: Backend + ?Sized>(&mut self, write: WriteState, backend: &mut B) {
        let request = Request {
            extended: self.extended,
            flags: 0,
            command: Command::Write,
            cookie: write.cookie,
            offset: write.start,
            len: write.len,
        };
        let result = match (write.error, &self.tx) {
            (Some(e), _) => Err(e),
            // FUA: durable before the reply is even queued.
            (None, Some(tx)) if write.fua => backend.persist(tx.export, write.start, write.len),
            _ => Ok(()),
        };
        self.reply_result(&request, result);
    }

    pub(super) fn reply_result(&mut self, request: &Request, result: Result<(), BackendError>) {
        match result {
            Ok(()) => self.reply_ok(request),
            Err(e) => {
                let message = match e {
                    BackendError::Io => "input/output error",
                    BackendError::NoSpace => "no space left on device",
                    BackendError::ReadOnly => {
                        self.stats.read_only_writes = self.stats.read_only_writes.saturating_add(1);
                        "export is read-only"
                    }
                    BackendError::Denied => "access denied by the server's allow-list",
                    BackendError::NotSupported => "operation not supported",
                    BackendError::Invalid | BackendError::NoSuchExport => "invalid request",
                };
                self.reply_error(request, e.errno(), message);
            }
        }
    }

    fn reply_ok(&mut self, request: &Request) {
        let mut bytes = Vec::with_capacity(32);
        match self.mode() {
            // Structured replies MAY still use simple replies when there is
            // no payload (proto.md "Simple reply message").
            ReplyMode::Simple | ReplyMode::Structured => {
                Reply::Simple {
                    error: 0,
                    cookie: request.cookie,
                }
                .emit_to(&mut bytes);
            }
            ReplyMode::Extended => {
                chunk_header(
                    &mut bytes,
                    ReplyMode::Extended,
                    wire::REPLY_FLAG_DONE,
                    wire::REPLY_TYPE_NONE,
                    request.cookie,
                    request.offset,
                    0,
                );
            }
        }
        let done = self.done(request, false);
        self.push_reply(bytes, done);
    }

    /// What the metrics record of `request` once its reply is out.
    fn done(&self, request: &Request, error: bool) -> Done {
        let op = Op::of(request.command);
        Done {
            op,
            bytes: if matches!(op, Op::Read | Op::Write) {
                request.len
            } else {
                0
            },
            error,
            started_us: self.started_us,
        }
    }

    fn reply_error(&mut self, request: &Request, errno: u32, message: &str) {
        self.stats.errors = self.stats.errors.saturating_add(1);
        let mut bytes = Vec::with_capacity(40 + message.len());
        match self.mode() {
            ReplyMode::Simple => {
                Reply::Simple {
                    error: errno,
                    cookie: request.cookie,
                }
                .emit_to(&mut bytes);
            }
            mode => error_chunk(
                &mut bytes,
                mode,
                request.cookie,
                request.offset,
                errno,
                message,
            ),
        }
        let done = self.done(request, true);
        self.push_reply(bytes, done);
    }

    fn queue_read(&mut self, request: &Request, export: ExportHandle) {
        let mode = self.mode();
        let mut header = Vec::with_capacity(40);
        match mode {
            ReplyMode::Simple => {
                Reply::Simple {
                    error: 0,
                    cookie: request.cookie,
                }
                .emit_to(&mut header);
            }
            mode => {
                // One data chunk, never marked DONE: an error can still be
                // found while it streams (proto.md "Structured reply chunk
                // message"), so a NONE chunk ends the reply.
                chunk_header(
                    &mut header,
                    mode,
                    0,
                    wire::REPLY_TYPE_OFFSET_DATA,
                    request.cookie,
                    request.offset,
                    8 + request.len,
                );
                header.put_u64(request.offset);
            }
        }
        self.push_bytes(header, false);
        self.in_flight = self.in_flight.saturating_add(1);
        self.out.push_back(OutItem::Read(ReadItem {
            export,
            cookie: request.cookie,
            request_offset: request.offset,
            offset: request.offset,
            remaining: request.len,
            mode,
            error: None,
            trailer: None,
            trailer_pos: 0,
            done: self.done(request, false),
        }));
    }

    fn block_status<B: Backend + ?Sized>(
        &mut self,
        request: &Request,
        export: ExportHandle,
        backend: &mut B,
    ) {
        let max = if request.flags & wire::CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            self.config.max_extents.max(1)
        };
        let mut raw: Vec<Extent> = Vec::new();
        if let Err(e) = backend.block_status(export, request.offset, request.len, max, &mut raw) {
            self.reply_result(request, Err(e));
            return;
        }
        // Clip to the request, drop empty extents, merge equal neighbours
        // and cap the count: the sum MUST NOT exceed the request length and
        // at least one descriptor MUST be sent (proto.md
        // "NBD_CMD_BLOCK_STATUS").
        let mut extents: Vec<(u64, u32)> = Vec::new();
        let mut total: u64 = 0;
        for extent in raw.iter().filter(|e| e.len > 0) {
            let len = extent.len.min(request.len - total);
            if len == 0 {
                break;
            }
            let flags = extent.flags();
            let count = extents.len();
            match extents.last_mut() {
                Some(last) if last.1 == flags => last.0 += len,
                _ if count >= max => break,
                _ => extents.push((len, flags)),
            }
            total += len;
            if total == request.len {
                break;
            }
        }
        if extents.is_empty() {
            // Status 0 ("allocated, contents unknown") is always safe.
            extents.push((request.len, 0));
        }
        let mode = self.mode();
        let mut bytes = Vec::new();
        if mode == ReplyMode::Extended {
            chunk_header(
                &mut bytes,
                mode,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_BLOCK_STATUS_EXT,
                request.cookie,
                request.offset,
                8 + 16 * extents.len() as u64,
            );
            bytes.put_u32(1);
            bytes.put_u32(extents.len() as u32);
            for (len, flags) in &extents {
                bytes.put_u64(*len);
                bytes.put_u64(u64::from(*flags));
            }
        } else {
            chunk_header(
                &mut bytes,
                mode,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_BLOCK_STATUS,
                request.cookie,
                request.offset,
                4 + 8 * extents.len() as u64,
            );
            bytes.put_u32(1);
            for (len, flags) in &extents {
                // Compact requests carry 32-bit lengths, so every extent
                // (clipped to the request) fits.
                bytes.put_u32(u32::try_from(*len).unwrap_or(u32::MAX));
                bytes.put_u32(*flags);
            }
        }
        let done = self.done(request, false);
        self.push_reply(bytes, done);
    }
}
