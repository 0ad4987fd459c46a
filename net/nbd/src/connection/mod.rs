//! The per-TCP-connection state machine.
//!
//! Input is consumed by [`Connection::receive`] and parsed in place: fixed
//! headers are gathered in a 32-byte buffer, option payloads (bounded by
//! [`ServerConfig::max_option_len`]) in a small vector, and WRITE payloads
//! go straight from the caller's buffer into the [`Backend`] piece by
//! piece. Output is a queue of small encoded replies plus "read items" that
//! copy export data straight into the caller's transmit buffer when
//! [`Connection::produce`] is called, so a 32 MiB READ never needs a
//! 32 MiB buffer.
//!
//! Ordering: every request except READ, TRIM and WRITE_ZEROES is executed
//! when it is received; READ data is fetched when it is sent. TRIM and
//! WRITE_ZEROES become a job done piece by piece by [`Connection::step`]
//! (at most [`ServerConfig::step_bytes`] per step, so one long request
//! cannot stall the other connections of the event loop); while the job
//! runs no further request of that connection is read, and its reply is
//! queued when the last piece is done (after `persist` with FUA). A later
//! request of the same connection therefore never sees a half-done job;
//! other connections may, as proto.md allows for requests in flight.
//! A write-type request (WRITE, TRIM, WRITE_ZEROES) that overlaps a READ
//! whose data has not been sent yet waits until that data is out, so every
//! READ returns exactly the data written by requests received before it.
//! FLUSH therefore covers every write that has been replied to (proto.md
//! "Ordering of messages and writes"), and a FUA write (or FUA TRIM /
//! WRITE_ZEROES) is persisted before its reply is queued.
//!
//! Layout: this module holds the connection state and the input side
//! (`receive`, which gathers headers and streams WRITE payloads);
//! `handshake` answers options (proto.md "Option haggling");
//! `transmission` validates and executes requests and encodes their
//! replies; `output` is the reply queue that `produce` drains.

mod handshake;
mod output;
mod transmission;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::backend::{Backend, BackendError, ExportHandle, ExportInfo, ListCursor};
use crate::config::{ConnectionStats, ServerConfig};
use crate::metrics::OpStats;
use crate::wire::{self, PutBe, Reader, Request};

use output::OutItem;

/// Where the input parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InState {
    /// Waiting for the 32-bit client flags.
    ClientFlags,
    /// Waiting for a 16-byte option header.
    OptionHeader,
    /// Gathering `len` bytes of option data into `opt_buf`.
    OptionData { option: u32, len: u32 },
    /// Skipping an option too long to buffer; answered with TOO_BIG.
    OptionSkip { option: u32, remaining: u64 },
    /// Waiting for a request header.
    RequestHeader,
    /// Streaming a WRITE payload into the backend.
    WritePayload(WriteState),
    /// Skipping the payload of a refused request (its reply is queued).
    Discard { remaining: u64 },
    /// No more input is accepted (after ABORT, DISC or a protocol error).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WriteState {
    cookie: u64,
    start: u64,
    len: u64,
    written: u64,
    fua: bool,
    error: Option<BackendError>,
}

/// Reply format negotiated for the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    Simple,
    Structured,
    Extended,
}

/// The export in use after the handshake.
#[derive(Debug, Clone)]
struct Transmission {
    export: ExportHandle,
    info: ExportInfo,
    flags: u16,
    meta: bool,
}

/// Result of an option or request check: an NBD error value and a message
/// for the client.
type Refusal = (u32, &'static str);

/// One client connection, driven by the caller's event loop.
///
/// Call [`receive`](Self::receive) with bytes from the socket (it returns
/// how many it consumed; the rest must be offered again later), call
/// [`produce`](Self::produce) with free transmit-buffer space, check
/// [`wants_close`](Self::wants_close), and close idle handshakes at
/// [`poll_deadline`](Self::poll_deadline) via
/// [`check_timeout`](Self::check_timeout). After `produce` frees queue space
/// call `receive` again, even with no new bytes, if input is still pending.
#[derive(Debug)]
pub struct Connection {
    config: ServerConfig,
    state: InState,
    header: [u8; wire::EXTENDED_REQUEST_LEN],
    header_len: usize,
    opt_buf: Vec<u8>,
    out: VecDeque<OutItem>,
    queued_bytes: usize,
    in_flight: usize,
    closed: bool,
    deadline: Option<u64>,
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    meta_export: Option<ExportHandle>,
    tx: Option<Transmission>,
    stalled: Option<Request>,
    job: Option<Job>,
    stats: ConnectionStats,
    /// Requests answered since the last [`take_op_stats`](Self::take_op_stats).
    ops: OpStats,
    /// When the request being served had its header parsed
    /// ([`Backend::now_us`]). One at a time is enough: no further header is
    /// read while a request waits (stalled, a job, a write payload).
    started_us: u64,
    /// An `NBD_OPT_LIST` answer in progress: more names are fetched as
    /// the output queue drains.
    listing: Option<ListCursor>,
    /// The connection is over a limit: every option is refused with this
    /// message (`NBD_REP_ERR_POLICY`).
    refusal: Option<alloc::string::String>,
    /// `NBD_OPT_STARTTLS` was acknowledged: nothing more is read until the
    /// caller's TLS layer is up ([`Connection::tls_started`]), so plaintext
    /// sent after the option is never taken as protected.
    starttls: bool,
    /// TLS is up on this connection.
    tls_active: bool,
}

/// A TRIM or WRITE_ZEROES being done piece by piece by
/// [`Connection::step`].
#[derive(Debug, Clone, Copy)]
struct Job {
    request: Request,
    /// Where the next piece starts; the range before it is done.
    next: u64,
    /// `None` for TRIM, the flags for WRITE_ZEROES.
    zeroes: Option<crate::backend::ZeroFlags>,
    fua: bool,
}

impl Connection {
    /// A new connection: queues the server greeting (proto.md "Fixed
    /// newstyle negotiation") and starts the handshake timer.
    pub fn new(config: ServerConfig, now_ms: u64) -> Self {
        let deadline = Some(now_ms.saturating_add(config.handshake_timeout_ms));
        let mut conn = Connection {
            config,
            state: InState::ClientFlags,
            header: [0; wire::EXTENDED_REQUEST_LEN],
            header_len: 0,
            opt_buf: Vec::new(),
            out: VecDeque::new(),
            queued_bytes: 0,
            in_flight: 0,
            closed: false,
            deadline,
            no_zeroes: false,
            structured: false,
            extended: false,
            meta_export: None,
            tx: None,
            stalled: None,
            job: None,
            stats: ConnectionStats::default(),
            ops: OpStats::default(),
            started_us: 0,
            listing: None,
            refusal: None,
            starttls: false,
            tls_active: false,
        };
        let mut greeting = Vec::with_capacity(18);
        greeting.put_u64(wire::NBDMAGIC);
        greeting.put_u64(wire::IHAVEOPT);
        greeting.put_u16(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
        conn.push_bytes(greeting, false);
        conn
    }

    /// A connection the server will not serve (e.g. over a connection
    /// limit): it greets the client, answers every option with
    /// `NBD_REP_ERR_POLICY` and `message`, acknowledges `NBD_OPT_ABORT` and
    /// closes on `NBD_OPT_EXPORT_NAME` (which has no error reply), so the
    /// client learns why instead of seeing a bare reset (proto.md
    /// "Termination of the session during option haggling": a server errors
    /// options until the client gets the hint). The handshake deadline
    /// still applies.
    pub fn refused(config: ServerConfig, now_ms: u64, message: &str) -> Self {
        let mut conn = Self::new(config, now_ms);
        conn.refusal = Some(alloc::string::String::from(message));
        conn
    }

    /// Bytes of encoded replies waiting to be produced (READ data, which
    /// is fetched as it is sent, is not counted).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Counters for this connection.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// The per-operation counters of the requests answered since the last
    /// call (a reply counts once its last byte is produced), or `None` when
    /// there were none; the counters start again from zero.
    pub fn take_op_stats(&mut self) -> Option<OpStats> {
        if self.ops.is_empty() {
            return None;
        }
        Some(core::mem::take(&mut self.ops))
    }

    /// Name of the export in use, once the handshake has finished.
    pub fn export_name(&self) -> Option<&str> {
        self.tx.as_ref().map(|t| t.info.name.as_str())
    }

    /// Handle of the export in use, once the handshake has finished (the
    /// one the backend's `open` returned).
    pub fn export(&self) -> Option<ExportHandle> {
        self.tx.as_ref().map(|t| t.export)
    }

    /// True once the handshake is over and requests are being served.
    pub fn in_transmission(&self) -> bool {
        self.tx.is_some()
    }

    /// The caller should close the TCP connection now (everything that
    /// was to be sent has been produced, or a hard disconnect is due).
    pub fn wants_close(&self) -> bool {
        self.closed
    }

    /// There is output waiting for [`produce`](Self::produce).
    pub fn has_output(&self) -> bool {
        !self.closed && !self.out.is_empty()
    }

    /// [`receive`](Self::receive) would consume bytes now (no backpressure).
    pub fn wants_input(&self) -> bool {
        !self.closed
            && !self.starttls
            && self.state != InState::Done
            && self.stalled.is_none()
            && self.listing.is_none()
            && self.job.is_none()
            && !self.backpressured()
    }

    /// `NBD_OPT_STARTTLS` was acknowledged and the caller must now send the
    /// queued output (ending with that ACK), then run the TLS handshake
    /// over the connection and call [`tls_started`](Self::tls_started);
    /// until then the engine reads nothing.
    pub fn starttls_pending(&self) -> bool {
        self.starttls && !self.closed
    }

    /// The caller's TLS layer is up: option haggling goes on inside it.
    pub fn tls_started(&mut self) {
        if self.starttls {
            self.starttls = false;
            self.tls_active = true;
        }
    }

    /// Whether TLS is up on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// A long request is being done piece by piece: the caller should call
    /// [`step`](Self::step) in each turn of its event loop (and not sleep)
    /// until this is false.
    pub fn has_work(&self) -> bool {
        !self.closed && (self.job.is_some() || self.listing_can_go_on())
    }

    /// An export listing is in progress and its replies are not waiting
    /// for the client to read: the next pages are made by `step`.
    fn listing_can_go_on(&self) -> bool {
        self.listing.is_some() && self.queued_bytes < self.config.max_queued_bytes
    }

    /// Does one bounded piece of the long request in progress (TRIM or
    /// WRITE_ZEROES: at most [`ServerConfig::step_bytes`] of it; or the
    /// next pages of an export listing, at most 16 pages of 64 names
    /// examined); returns
    /// true when it did any work. When the last piece is done the reply is
    /// queued for [`produce`](Self::produce) and input is read again: call
    /// `receive` afterwards if input is pending.
    pub fn step<B: Backend + ?Sized>(&mut self, backend: &mut B) -> bool {
        if self.closed {
            self.job = None;
            return false;
        }
        if self.job.is_none() && self.listing_can_go_on() {
            // A listing whose pages the backend filtered: the next pages.
            self.continue_listing(backend);
            return true;
        }
        let (Some(mut job), Some(tx)) = (self.job.take(), self.tx.as_ref()) else {
            return false;
        };
        let export = tx.export;
        let end = job.request.end();
        let remaining = end - job.next;
        let budget = (self.config.step_bytes / 4096).max(1) * 4096;
        // The export may have become read-only since the previous piece
        // (`Backend::check_write`): stop there, with that error.
        let result = backend.check_write(export).and_then(|()| match job.zeroes {
            None => backend.trim_step(export, job.next, remaining, budget),
            Some(flags) => backend.write_zeroes_step(export, job.next, remaining, flags, budget),
        });
        let result = match result {
            // A backend that reports no progress would never finish.
            Ok(0) => Err(BackendError::Io),
            Ok(done) => {
                job.next += done.min(remaining);
                if job.next < end {
                    self.job = Some(job);
                    return true;
                }
                if job.fua {
                    backend.persist(export, job.request.offset, job.request.len)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        self.reply_result(&job.request, result);
        true
    }

    /// Requests received and not yet fully answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// When the handshake times out (milliseconds, same clock as `now_ms`),
    /// or `None` once in transmission.
    pub fn poll_deadline(&self) -> Option<u64> {
        if self.closed {
            None
        } else {
            self.deadline
        }
    }

    /// Closes the connection if the handshake deadline has passed; returns
    /// [`wants_close`](Self::wants_close).
    pub fn check_timeout(&mut self, now_ms: u64) -> bool {
        if let Some(deadline) = self.deadline {
            if now_ms >= deadline {
                self.hard_close();
            }
        }
        self.closed
    }

    fn backpressured(&self) -> bool {
        self.in_flight >= self.config.max_in_flight
            || self.queued_bytes >= self.config.max_queued_bytes
    }

    fn hard_close(&mut self) {
        self.closed = true;
        self.state = InState::Done;
        self.job = None;
        self.out.clear();
        self.queued_bytes = 0;
    }

    /// Gathers a fixed-size header from `input`; returns the bytes taken
    /// and whether the header is complete.
    fn gather(&mut self, input: &[u8], need: usize) -> (usize, bool) {
        let want = need.saturating_sub(self.header_len);
        let take = want.min(input.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
        self.header_len += take;
        let complete = self.header_len == need;
        if complete {
            self.header_len = 0;
        }
        (take, complete)
    }

    /// Consumes bytes received from the client; returns how many were
    /// consumed. Fewer than `input.len()` means backpressure: offer the rest
    /// again after [`produce`](Self::produce) has made room.
    pub fn receive<B: Backend + ?Sized>(
        &mut self,
        input: &[u8],
        backend: &mut B,
        now_ms: u64,
    ) -> usize {
        if self.check_timeout(now_ms) {
            return input.len();
        }
        let mut used = 0;
        loop {
            if self.closed || self.state == InState::Done {
                // Nothing more is read from this client (proto.md: a client
                // MUST NOT send anything after NBD_CMD_DISC); drop it.
                used = input.len();
                break;
            }
            if self.starttls {
                // STARTTLS acknowledged: what follows is TLS, for the
                // caller's TLS layer, never options in clear.
                break;
            }
            if self.job.is_some() {
                // A long request is in progress: nothing more is read
                // until `step` has finished it.
                break;
            }
            if self.stalled.is_some() {
                self.resume_stalled(backend);
                if self.stalled.is_some() {
                    break;
                }
                continue;
            }
            let rest = &input[used..];
            match self.state {
                InState::ClientFlags => {
                    let (take, complete) = self.gather(rest, 4);
                    used += take;
                    if !complete {
                        break;
                    }
                    let flags = u32::from_be_bytes([
                        self.header[0],
                        self.header[1],
                        self.header[2],
                        self.header[3],
                    ]);
                    let known = wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES;
                    // proto.md "Client flags": the server MUST drop the
                    // connection on unknown flags. daxbox speaks fixed
                    // newstyle only, so a client without it is dropped too.
                    if flags & !known != 0 || flags & wire::FLAG_C_FIXED_NEWSTYLE == 0 {
                        self.hard_close();
                        break;
                    }
                    self.no_zeroes = flags & wire::FLAG_C_NO_ZEROES != 0;
                    self.state = InState::OptionHeader;
                }
                InState::OptionHeader => {
                    // An option is answered whole before the next is read
                    // (a client must wait for the final reply anyway).
                    if self.header_len == 0 && (self.backpressured() || self.listing.is_some()) {
                        break;
                    }
                    let (take, complete) = self.gather(rest, 16);
                    used += take;
                    if !complete {
                        break;
                    }
                    let mut r = Reader::new(&self.header[..16]);
                    // Infallible: the reader holds exactly 16 bytes.
                    let (magic, option, len) = (
                        r.u64().unwrap_or(0),
                        r.u32().unwrap_or(0),
                        r.u32().unwrap_or(0),
                    );
                    self.stats.options = self.stats.options.saturating_add(1);
                    if magic != wire::IHAVEOPT {
                        self.hard_close();
                        break;
                    }
                    // The deadline bounds each option, not the whole
                    // negotiation: a client listing 10,000 exports with one
                    // NBD_OPT_INFO each keeps going as long as every option
                    // arrives within the timeout, while one that stalls
                    // mid-option is still cut. A refused connection keeps
                    // its first deadline (it is served nothing anyway).
                    if self.refusal.is_none() {
                        self.deadline =
                            Some(now_ms.saturating_add(self.config.handshake_timeout_ms));
                    }
                    if option == wire::OPT_EXPORT_NAME
                        && (len as usize > wire::MAX_STRING || len > self.config.max_option_len)
                    {
                        // EXPORT_NAME cannot be answered with an error
                        // (proto.md "NBD_OPT_EXPORT_NAME"): terminate.
                        self.hard_close();
                        break;
                    }
                    if len > self.config.max_option_len {
                        self.state = InState::OptionSkip {
                            option,
                            remaining: u64::from(len),
                        };
                    } else if len == 0 {
                        self.handle_option(option, backend);
                    } else {
                        self.opt_buf.clear();
                        self.state = InState::OptionData { option, len };
                    }
                }
                InState::OptionData { option, len } => {
                    let want = (len as usize).saturating_sub(self.opt_buf.len());
                    let take = want.min(rest.len());
                    self.opt_buf.extend_from_slice(&rest[..take]);
                    used += take;
                    if self.opt_buf.len() < len as usize {
                        break;
                    }
                    self.handle_option(option, backend);
                }
                InState::OptionSkip { option, remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    used += take as usize;
                    let remaining = remaining - take;
                    if remaining > 0 {
                        self.state = InState::OptionSkip { option, remaining };
                        break;
                    }
                    self.option_reply(option, wire::REP_ERR_TOO_BIG, b"option data too long");
                    self.state = InState::OptionHeader;
                }
                InState::RequestHeader => {
                    if self.header_len == 0 && self.backpressured() {
                        break;
                    }
                    let need = if self.extended {
                        wire::EXTENDED_REQUEST_LEN
                    } else {
                        wire::COMPACT_REQUEST_LEN
                    };
                    let (take, complete) = self.gather(rest, need);
                    used += take;
                    if !complete {
                        break;
                    }
                    match self.parse_request() {
                        Some(request) => {
                            self.stats.requests = self.stats.requests.saturating_add(1);
                            self.started_us = backend.now_us();
                            self.dispatch(request, backend);
                        }
                        None => {
                            // Bad request magic: the stream cannot be
                            // resynchronised, so hard disconnect.
                            self.hard_close();
                            break;
                        }
                    }
                }
                InState::WritePayload(mut write) => {
                    let remaining = write.len - write.written;
                    let take = remaining.min(rest.len() as u64) as usize;
                    if take == 0 {
                        break;
                    }
                    if write.error.is_none() {
                        if let Some(tx) = &self.tx {
                            let offset = write.start + write.written;
                            if let Err(e) = backend.write(tx.export, offset, &rest[..take]) {
                                write.error = Some(e);
                            }
                        }
                    }
                    used += take;
                    write.written += take as u64;
                    self.stats.write_bytes = self.stats.write_bytes.saturating_add(take as u64);
                    if write.written < write.len {
                        self.state = InState::WritePayload(write);
                        break;
                    }
                    self.state = InState::RequestHeader;
                    self.finish_write(write, backend);
                }
                InState::Discard { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    used += take as usize;
                    let remaining = remaining - take;
                    if remaining > 0 {
                        self.state = InState::Discard { remaining };
                        break;
                    }
                    self.state = InState::RequestHeader;
                }
                InState::Done => unreachable!("handled at the top of the loop"),
            }
        }
        self.stats.bytes_in = self.stats.bytes_in.saturating_add(used as u64);
        used
    }

    fn resume_stalled<B: Backend + ?Sized>(&mut self, backend: &mut B) {
        if let Some(request) = self.stalled.take() {
            if self.closed || self.overlaps_pending_read(&request) {
                self.stalled = Some(request);
            } else {
                self.dispatch(request, backend);
            }
        }
    }
}
