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
//! Ordering: every request except READ is executed when it is received;
//! READ data is fetched when it is sent. A write-type request (WRITE, TRIM,
//! WRITE_ZEROES) that overlaps a READ whose data has not been sent yet
//! waits until that data is out, so every READ returns exactly the data
//! written by requests received before it. FLUSH therefore covers every
//! write that has been replied to (proto.md "Ordering of messages and
//! writes"), and a FUA write is persisted before its reply is queued.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::backend::{Backend, BackendError, ExportHandle, ExportInfo, Extent, ZeroFlags};
use crate::server::{ConnectionStats, ServerConfig};
use crate::wire::{self, PutBe, Reader};

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

/// A parsed transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
}

impl Request {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
    fn is_write_type(&self) -> bool {
        matches!(
            self.kind,
            wire::CMD_WRITE | wire::CMD_TRIM | wire::CMD_WRITE_ZEROES
        )
    }
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

#[derive(Debug)]
struct ReadItem {
    export: ExportHandle,
    cookie: u64,
    request_offset: u64,
    offset: u64,
    remaining: u64,
    mode: ReplyMode,
    error: Option<u32>,
    trailer: Option<Vec<u8>>,
    trailer_pos: usize,
}

#[derive(Debug)]
enum OutItem {
    Bytes {
        data: Vec<u8>,
        pos: usize,
        ends_request: bool,
    },
    Read(ReadItem),
    Close,
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
    stats: ConnectionStats,
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
            stats: ConnectionStats::default(),
        };
        let mut greeting = Vec::with_capacity(18);
        greeting.put_u64(wire::NBDMAGIC);
        greeting.put_u64(wire::IHAVEOPT);
        greeting.put_u16(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
        conn.push_bytes(greeting, false);
        conn
    }

    /// Counters for this connection.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// Name of the export in use, once the handshake has finished.
    pub fn export_name(&self) -> Option<&str> {
        self.tx.as_ref().map(|t| t.info.name.as_str())
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
            && self.state != InState::Done
            && self.stalled.is_none()
            && !self.backpressured()
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
        self.out.clear();
        self.queued_bytes = 0;
    }

    /// Stop reading; close once the queued output has been produced.
    fn close_after_output(&mut self) {
        self.state = InState::Done;
        self.out.push_back(OutItem::Close);
    }

    fn push_bytes(&mut self, data: Vec<u8>, ends_request: bool) {
        self.queued_bytes = self.queued_bytes.saturating_add(data.len());
        if ends_request {
            self.in_flight = self.in_flight.saturating_add(1);
        }
        self.out.push_back(OutItem::Bytes {
            data,
            pos: 0,
            ends_request,
        });
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
                    if self.header_len == 0 && self.backpressured() {
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

    /// Fills `out` with reply bytes; returns how many were written. READ
    /// data is read from the backend straight into `out`.
    pub fn produce<B: Backend + ?Sized>(&mut self, out: &mut [u8], backend: &mut B) -> usize {
        let mut n = 0;
        while n < out.len() && !self.closed {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            let mut finished = false;
            let mut ends_request = false;
            let mut fatal = false;
            'item: {
                match front {
                    OutItem::Bytes {
                        data,
                        pos,
                        ends_request: ends,
                    } => {
                        let take = (data.len() - *pos).min(out.len() - n);
                        out[n..n + take].copy_from_slice(&data[*pos..*pos + take]);
                        *pos += take;
                        n += take;
                        if *pos == data.len() {
                            finished = true;
                            ends_request = *ends;
                            self.queued_bytes = self.queued_bytes.saturating_sub(data.len());
                        }
                    }
                    OutItem::Read(item) => {
                        if item.trailer.is_none() {
                            let take = item.remaining.min((out.len() - n) as u64) as usize;
                            let buf = &mut out[n..n + take];
                            if item.error.is_some() {
                                buf.fill(0);
                            } else if let Err(e) = backend.read(item.export, item.offset, buf) {
                                self.stats.errors = self.stats.errors.saturating_add(1);
                                if item.mode == ReplyMode::Simple {
                                    // proto.md "NBD_CMD_READ": an error after a
                                    // simple reply header with error 0 MUST end
                                    // in a hard disconnect.
                                    fatal = true;
                                    break 'item;
                                }
                                // Structured: pad the chunk, then an error chunk.
                                buf.fill(0);
                                item.error = Some(e.errno());
                            }
                            n += take;
                            item.offset += take as u64;
                            item.remaining -= take as u64;
                            self.stats.read_bytes =
                                self.stats.read_bytes.saturating_add(take as u64);
                            if item.remaining == 0 {
                                item.trailer = Some(read_trailer(item));
                            }
                        }
                        if let Some(trailer) = &item.trailer {
                            let take = (trailer.len() - item.trailer_pos).min(out.len() - n);
                            out[n..n + take].copy_from_slice(
                                &trailer[item.trailer_pos..item.trailer_pos + take],
                            );
                            item.trailer_pos += take;
                            n += take;
                            if item.trailer_pos == trailer.len() {
                                finished = true;
                                ends_request = true;
                            }
                        }
                    }
                    OutItem::Close => {
                        fatal = true;
                    }
                }
            }
            if fatal {
                // Either the orderly end (ABORT, DISC) or a failed simple
                // READ: in both cases nothing more is sent.
                self.hard_close();
                break;
            }
            if finished {
                self.out.pop_front();
                if ends_request {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
            } else if n < out.len() && !self.closed {
                // Only a partially produced item may remain at the front
                // when the buffer is full; anything else is a logic error.
                debug_assert!(false, "output item neither finished nor buffer full");
                break;
            }
        }
        self.stats.bytes_out = self.stats.bytes_out.saturating_add(n as u64);
        // A write-type request may have waited for READ data that has now
        // been sent. Run it here: its header is already consumed, and a
        // client may be waiting for its reply before sending anything more.
        self.resume_stalled(backend);
        n
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

    // ----- Handshake (proto.md "Option types") -----

    fn option_reply(&mut self, option: u32, reply: u32, data: &[u8]) {
        let mut bytes = Vec::with_capacity(20 + data.len());
        bytes.put_u64(wire::OPTION_REPLY_MAGIC);
        bytes.put_u32(option);
        bytes.put_u32(reply);
        // Option data is bounded by max_option_len and export names by the
        // backend; lengths beyond u32 cannot occur, saturate regardless.
        bytes.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        bytes.extend_from_slice(data);
        self.push_bytes(bytes, false);
    }

    fn handle_option<B: Backend + ?Sized>(&mut self, option: u32, backend: &mut B) {
        let data = core::mem::take(&mut self.opt_buf);
        self.state = InState::OptionHeader;
        match option {
            wire::OPT_EXPORT_NAME => self.opt_export_name(&data, backend),
            wire::OPT_ABORT => {
                // proto.md "NBD_OPT_ABORT": the server MUST reply with ACK.
                self.option_reply(option, wire::REP_ACK, &[]);
                self.close_after_output();
            }
            wire::OPT_LIST => self.opt_list(&data, backend),
            wire::OPT_STARTTLS => {
                {
                    // NOTLS mode: POLICY or UNSUP are both allowed (proto.md "NOTLS
                    // mode"); nbdkit and qemu-nbd answer POLICY, so do we.
                    self.option_reply(option, wire::REP_ERR_POLICY, b"TLS is not supported")
                }
            }
            wire::OPT_INFO | wire::OPT_GO => {
                if let Err((reply, message)) = self.opt_info(option, &data, backend) {
                    self.option_reply(option, reply, message.as_bytes());
                }
            }
            wire::OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.option_reply(option, wire::REP_ERR_INVALID, b"option takes no data");
                } else if self.extended {
                    self.option_reply(
                        option,
                        wire::REP_ERR_EXT_HEADER_REQD,
                        b"extended headers already negotiated",
                    );
                } else if self.structured {
                    self.option_reply(
                        option,
                        wire::REP_ERR_INVALID,
                        b"structured replies already negotiated",
                    );
                } else {
                    self.structured = true;
                    self.option_reply(option, wire::REP_ACK, &[]);
                }
            }
            wire::OPT_EXTENDED_HEADERS => {
                if !data.is_empty() {
                    self.option_reply(option, wire::REP_ERR_INVALID, b"option takes no data");
                } else if self.extended {
                    self.option_reply(
                        option,
                        wire::REP_ERR_INVALID,
                        b"extended headers already negotiated",
                    );
                } else {
                    // Extended headers imply structured replies.
                    self.extended = true;
                    self.structured = true;
                    self.option_reply(option, wire::REP_ACK, &[]);
                }
            }
            wire::OPT_LIST_META_CONTEXT | wire::OPT_SET_META_CONTEXT => {
                if let Err((reply, message)) = self.opt_meta(option, &data, backend) {
                    self.option_reply(option, reply, message.as_bytes());
                }
            }
            _ => self.option_reply(option, wire::REP_ERR_UNSUP, b"unknown option"),
        }
        if self.tx.is_none() {
            // Keep the (bounded) buffer for the next option.
            self.opt_buf = data;
            self.opt_buf.clear();
        }
    }

    fn opt_export_name<B: Backend + ?Sized>(&mut self, data: &[u8], backend: &mut B) {
        // No error reply exists for EXPORT_NAME: any failure terminates.
        let Ok(name) = core::str::from_utf8(data) else {
            self.hard_close();
            return;
        };
        let Ok(export) = backend.open(name) else {
            self.hard_close();
            return;
        };
        let Some(info) = backend.info(export) else {
            self.hard_close();
            return;
        };
        let size = info.size;
        let flags = self.enter_transmission(export, info);
        let mut bytes = Vec::with_capacity(134);
        bytes.put_u64(size);
        bytes.put_u16(flags);
        if !self.no_zeroes {
            bytes.extend_from_slice(&[0u8; 124]);
        }
        self.push_bytes(bytes, false);
    }

    fn opt_list<B: Backend + ?Sized>(&mut self, data: &[u8], backend: &mut B) {
        if !data.is_empty() {
            self.option_reply(
                wire::OPT_LIST,
                wire::REP_ERR_INVALID,
                b"NBD_OPT_LIST takes no data",
            );
            return;
        }
        if !self.config.allow_list {
            self.option_reply(
                wire::OPT_LIST,
                wire::REP_ERR_POLICY,
                b"export listing is disabled",
            );
            return;
        }
        for index in 0..backend.export_count() {
            let Some(name) = backend.export_name(index) else {
                break;
            };
            let mut body = Vec::with_capacity(4 + name.len());
            body.put_u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
            body.extend_from_slice(name.as_bytes());
            self.option_reply(wire::OPT_LIST, wire::REP_SERVER, &body);
        }
        self.option_reply(wire::OPT_LIST, wire::REP_ACK, &[]);
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO` (proto.md "NBD_OPT_INFO and
    /// NBD_OPT_GO"): name, list of information requests.
    fn opt_info<B: Backend + ?Sized>(
        &mut self,
        option: u32,
        data: &[u8],
        backend: &mut B,
    ) -> Result<(), Refusal> {
        let invalid = |m| (wire::REP_ERR_INVALID, m);
        let mut r = Reader::new(data);
        let name_len = r.u32().ok_or(invalid("option too short"))? as usize;
        if name_len > wire::MAX_STRING {
            return Err(invalid("export name longer than 4096 bytes"));
        }
        let name = r
            .take(name_len)
            .ok_or(invalid("export name length exceeds option length"))?;
        let count = r.u16().ok_or(invalid("option too short"))? as usize;
        if r.remaining() != count * 2 {
            return Err(invalid(
                "information request count does not match option length",
            ));
        }
        let (mut want_name, mut want_description) = (false, false);
        for _ in 0..count {
            match r.u16() {
                Some(wire::INFO_NAME) => want_name = true,
                Some(wire::INFO_DESCRIPTION) => want_description = true,
                _ => {}
            }
        }
        let name = core::str::from_utf8(name).map_err(|_| invalid("export name is not UTF-8"))?;
        let export = backend
            .open(name)
            .map_err(|_| (wire::REP_ERR_UNKNOWN, "no such export"))?;
        let info = backend
            .info(export)
            .ok_or((wire::REP_ERR_UNKNOWN, "no such export"))?;

        if want_name {
            let mut body = Vec::new();
            body.put_u16(wire::INFO_NAME);
            body.extend_from_slice(info.name.as_bytes());
            self.option_reply(option, wire::REP_INFO, &body);
        }
        if want_description && !info.description.is_empty() {
            let mut body = Vec::new();
            body.put_u16(wire::INFO_DESCRIPTION);
            body.extend_from_slice(info.description.as_bytes());
            self.option_reply(option, wire::REP_INFO, &body);
        }
        // Sent even when not requested: a minimum of 1 constrains no client,
        // and it tells clients the real maximum payload.
        let mut body = Vec::new();
        body.put_u16(wire::INFO_BLOCK_SIZE);
        body.put_u32(1);
        body.put_u32(self.config.preferred_block_size);
        body.put_u32(self.config.max_block_size);
        self.option_reply(option, wire::REP_INFO, &body);

        let size = info.size;
        let flags = if option == wire::OPT_GO {
            self.enter_transmission(export, info)
        } else {
            self.transmission_flags(&info)
        };
        let mut body = Vec::new();
        body.put_u16(wire::INFO_EXPORT);
        body.put_u64(size);
        body.put_u16(flags);
        self.option_reply(option, wire::REP_INFO, &body);
        self.option_reply(option, wire::REP_ACK, &[]);
        Ok(())
    }

    /// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`: export
    /// name, then a counted list of query strings.
    fn opt_meta<B: Backend + ?Sized>(
        &mut self,
        option: u32,
        data: &[u8],
        backend: &mut B,
    ) -> Result<(), Refusal> {
        let invalid = |m| (wire::REP_ERR_INVALID, m);
        if !self.structured {
            return Err(invalid("structured replies must be negotiated first"));
        }
        let list = option == wire::OPT_LIST_META_CONTEXT;
        let mut r = Reader::new(data);
        let name_len = r.u32().ok_or(invalid("option too short"))? as usize;
        if name_len > wire::MAX_STRING {
            return Err(invalid("export name longer than 4096 bytes"));
        }
        let name = r
            .take(name_len)
            .ok_or(invalid("export name length exceeds option length"))?;
        let count = r.u32().ok_or(invalid("option too short"))?;
        let mut selected = list && count == 0;
        for _ in 0..count {
            let len =
                r.u32()
                    .ok_or(invalid("query count exceeds option length"))? as usize;
            if len > wire::MAX_STRING {
                return Err(invalid("query longer than 4096 bytes"));
            }
            let query = r
                .take(len)
                .ok_or(invalid("query length exceeds option length"))?;
            // "base:" lists every context of the namespace; selecting needs
            // the full name (proto.md "NBD_OPT_LIST_META_CONTEXT").
            if query == wire::BASE_ALLOCATION.as_bytes() || (list && query == b"base:") {
                selected = true;
            }
        }
        if r.remaining() != 0 {
            return Err(invalid("trailing bytes after the last query"));
        }
        let name = core::str::from_utf8(name).map_err(|_| invalid("export name is not UTF-8"))?;
        let export = backend
            .open(name)
            .map_err(|_| (wire::REP_ERR_UNKNOWN, "no such export"))?;
        if selected {
            let mut body = Vec::new();
            // Context id: reserved (zero) when listing, 1 when selected.
            body.put_u32(if list { 0 } else { 1 });
            body.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
            self.option_reply(option, wire::REP_META_CONTEXT, &body);
        }
        if !list {
            self.meta_export = if selected { Some(export) } else { None };
        }
        self.option_reply(option, wire::REP_ACK, &[]);
        Ok(())
    }

    fn transmission_flags(&self, info: &ExportInfo) -> u16 {
        let mut flags = wire::TFLAG_HAS_FLAGS | wire::TFLAG_SEND_FLUSH | wire::TFLAG_SEND_CACHE;
        if info.read_only {
            flags |= wire::TFLAG_READ_ONLY;
        } else {
            flags |= wire::TFLAG_SEND_FUA | wire::TFLAG_SEND_WRITE_ZEROES;
            if info.can_trim {
                flags |= wire::TFLAG_SEND_TRIM;
            }
            if info.can_fast_zero {
                flags |= wire::TFLAG_SEND_FAST_ZERO;
            }
        }
        if self.structured {
            // READ replies are always one data chunk, so DF is honoured.
            flags |= wire::TFLAG_SEND_DF;
        }
        if info.multi_conn {
            flags |= wire::TFLAG_CAN_MULTI_CONN;
        }
        flags
    }

    fn enter_transmission(&mut self, export: ExportHandle, info: ExportInfo) -> u16 {
        let flags = self.transmission_flags(&info);
        // A context selected for another export does not carry over.
        let meta = self.structured && self.meta_export == Some(export);
        self.tx = Some(Transmission {
            export,
            info,
            flags,
            meta,
        });
        self.state = InState::RequestHeader;
        self.deadline = None;
        self.opt_buf = Vec::new();
        flags
    }

    // ----- Transmission (proto.md "Request types") -----

    fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    fn parse_request(&self) -> Option<Request> {
        let (expected, len) = if self.extended {
            (wire::EXTENDED_REQUEST_MAGIC, wire::EXTENDED_REQUEST_LEN)
        } else {
            (wire::REQUEST_MAGIC, wire::COMPACT_REQUEST_LEN)
        };
        let mut r = Reader::new(&self.header[..len]);
        if r.u32()? != expected {
            return None;
        }
        let flags = r.u16()?;
        let kind = r.u16()?;
        let cookie = r.u64()?;
        let offset = r.u64()?;
        let len = if self.extended {
            r.u64()?
        } else {
            u64::from(r.u32()?)
        };
        Some(Request {
            flags,
            kind,
            cookie,
            offset,
            len,
        })
    }

    fn overlaps_pending_read(&self, request: &Request) -> bool {
        if !request.is_write_type() {
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
        let allowed = match request.kind {
            wire::CMD_READ if self.structured => wire::CMD_FLAG_DF,
            wire::CMD_READ | wire::CMD_FLUSH | wire::CMD_TRIM | wire::CMD_CACHE => 0,
            wire::CMD_WRITE => wire::CMD_FLAG_PAYLOAD_LEN,
            wire::CMD_WRITE_ZEROES if tx.flags & wire::TFLAG_SEND_FAST_ZERO != 0 => {
                wire::CMD_FLAG_NO_HOLE | wire::CMD_FLAG_FAST_ZERO
            }
            wire::CMD_WRITE_ZEROES => wire::CMD_FLAG_NO_HOLE,
            wire::CMD_BLOCK_STATUS => wire::CMD_FLAG_REQ_ONE,
            _ => return Err(einval("unknown command")),
        };
        if request.flags & !(allowed | wire::CMD_FLAG_FUA) != 0 {
            if request.flags & wire::CMD_FLAG_PAYLOAD_LEN != 0 {
                return Err(einval("command payloads are not supported"));
            }
            return Err(einval("flag not valid for this command"));
        }
        // proto.md "Error values": EPERM for a write or trim on a
        // read-only export, before any other complaint about the command.
        if request.is_write_type() && tx.info.read_only {
            return Err((wire::EPERM, "export is read-only"));
        }
        if request.kind == wire::CMD_TRIM && tx.flags & wire::TFLAG_SEND_TRIM == 0 {
            return Err(einval("trim is not supported on this export"));
        }
        if request.kind == wire::CMD_BLOCK_STATUS && !tx.meta {
            return Err(einval("no metadata context was negotiated"));
        }
        if request.kind == wire::CMD_FLUSH {
            if request.offset != 0 || request.len != 0 {
                return Err(einval("flush offset and length must be zero"));
            }
            return Ok(());
        }
        if request.len == 0 {
            return Err(einval("zero-length request"));
        }
        if matches!(request.kind, wire::CMD_READ | wire::CMD_WRITE)
            && request.len > u64::from(self.config.max_block_size)
        {
            return Err(einval("request larger than the maximum block size"));
        }
        match request.offset.checked_add(request.len) {
            Some(end) if end <= tx.info.size => Ok(()),
            _ if matches!(request.kind, wire::CMD_WRITE | wire::CMD_WRITE_ZEROES) => {
                Err((wire::ENOSPC, "request extends past the end of the export"))
            }
            _ => Err(einval("request extends past the end of the export")),
        }
    }

    fn dispatch<B: Backend + ?Sized>(&mut self, request: Request, backend: &mut B) {
        if request.kind == wire::CMD_DISC {
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
        let payload = if request.kind == wire::CMD_WRITE
            || (self.extended && request.flags & wire::CMD_FLAG_PAYLOAD_LEN != 0)
        {
            request.len
        } else {
            0
        };
        if let Err((errno, message)) = self.validate(&request, tx) {
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
        let fua = request.flags & wire::CMD_FLAG_FUA != 0;
        match request.kind {
            wire::CMD_READ => self.queue_read(&request, export),
            wire::CMD_WRITE => {
                self.state = InState::WritePayload(WriteState {
                    cookie: request.cookie,
                    start: request.offset,
                    len: request.len,
                    written: 0,
                    fua,
                    error: None,
                });
            }
            wire::CMD_FLUSH => {
                let result = backend.flush(export);
                self.reply_result(&request, result);
            }
            wire::CMD_TRIM => {
                let mut result = backend.trim(export, request.offset, request.len);
                if result.is_ok() && fua {
                    result = backend.persist(export, request.offset, request.len);
                }
                self.reply_result(&request, result);
            }
            wire::CMD_WRITE_ZEROES => {
                let flags = ZeroFlags {
                    no_hole: request.flags & wire::CMD_FLAG_NO_HOLE != 0,
                    fast: request.flags & wire::CMD_FLAG_FAST_ZERO != 0,
                };
                let mut result = backend.write_zeroes(export, request.offset, request.len, flags);
                if result.is_ok() && fua {
                    result = backend.persist(export, request.offset, request.len);
                }
                self.reply_result(&request, result);
            }
            wire::CMD_CACHE => {
                let result = backend.cache(export, request.offset, request.len);
                self.reply_result(&request, result);
            }
            wire::CMD_BLOCK_STATUS => self.block_status(&request, export, backend),
            _ => self.reply_error(&request, wire::EINVAL, "unknown command"),
        }
    }

    fn finish_write<B: Backend + ?Sized>(&mut self, write: WriteState, backend: &mut B) {
        let request = Request {
            flags: 0,
            kind: wire::CMD_WRITE,
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

    fn reply_result(&mut self, request: &Request, result: Result<(), BackendError>) {
        match result {
            Ok(()) => self.reply_ok(request),
            Err(e) => {
                let message = match e {
                    BackendError::Io => "input/output error",
                    BackendError::NoSpace => "no space left on device",
                    BackendError::ReadOnly => "export is read-only",
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
                bytes.put_u32(wire::SIMPLE_REPLY_MAGIC);
                bytes.put_u32(0);
                bytes.put_u64(request.cookie);
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
        self.push_bytes(bytes, true);
    }

    fn reply_error(&mut self, request: &Request, errno: u32, message: &str) {
        self.stats.errors = self.stats.errors.saturating_add(1);
        let mut bytes = Vec::with_capacity(40 + message.len());
        match self.mode() {
            ReplyMode::Simple => {
                bytes.put_u32(wire::SIMPLE_REPLY_MAGIC);
                bytes.put_u32(errno);
                bytes.put_u64(request.cookie);
            }
            mode => {
                // Error chunk with a message for the user (proto.md
                // "NBD_REPLY_TYPE_ERROR").
                let message = &message.as_bytes()[..message.len().min(1024)];
                chunk_header(
                    &mut bytes,
                    mode,
                    wire::REPLY_FLAG_DONE,
                    wire::REPLY_TYPE_ERROR,
                    request.cookie,
                    request.offset,
                    6 + message.len() as u64,
                );
                bytes.put_u32(errno);
                bytes.put_u16(message.len() as u16);
                bytes.extend_from_slice(message);
            }
        }
        self.push_bytes(bytes, true);
    }

    fn queue_read(&mut self, request: &Request, export: ExportHandle) {
        let mode = self.mode();
        let mut header = Vec::with_capacity(40);
        match mode {
            ReplyMode::Simple => {
                header.put_u32(wire::SIMPLE_REPLY_MAGIC);
                header.put_u32(0);
                header.put_u64(request.cookie);
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
        self.push_bytes(bytes, true);
    }
}

/// Encodes a structured (compact) or extended reply chunk header.
fn chunk_header(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) {
    if mode == ReplyMode::Extended {
        out.put_u32(wire::EXTENDED_REPLY_MAGIC);
        out.put_u16(flags);
        out.put_u16(kind);
        out.put_u64(cookie);
        out.put_u64(offset);
        out.put_u64(len);
    } else {
        out.put_u32(wire::STRUCTURED_REPLY_MAGIC);
        out.put_u16(flags);
        out.put_u16(kind);
        out.put_u64(cookie);
        // Compact lengths are at most 8 + max_block_size (a u32) here.
        out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

/// What follows a READ's data: nothing for simple replies, else a final
/// NONE chunk, or an error chunk if the backend failed mid-way.
fn read_trailer(item: &ReadItem) -> Vec<u8> {
    let mut bytes = Vec::new();
    if item.mode == ReplyMode::Simple {
        return bytes;
    }
    match item.error {
        None => chunk_header(
            &mut bytes,
            item.mode,
            wire::REPLY_FLAG_DONE,
            wire::REPLY_TYPE_NONE,
            item.cookie,
            item.request_offset,
            0,
        ),
        Some(errno) => {
            let message = b"read failed";
            chunk_header(
                &mut bytes,
                item.mode,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_ERROR,
                item.cookie,
                item.request_offset,
                6 + message.len() as u64,
            );
            bytes.put_u32(errno);
            bytes.put_u16(message.len() as u16);
            bytes.extend_from_slice(message);
        }
    }
    bytes
}
