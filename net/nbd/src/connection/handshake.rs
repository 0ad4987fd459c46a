//! The handshake: option haggling after the greeting (proto.md "Option
//! types", "Option reply types"): EXPORT_NAME, ABORT, LIST, STARTTLS
//! (with a TLS policy: acknowledged, the caller then runs TLS), INFO and GO, STRUCTURED_REPLY, EXTENDED_HEADERS and the
//! meta-context options. GO and EXPORT_NAME end the handshake by entering
//! the transmission phase with the export's transmission flags.

use alloc::vec::Vec;

use super::{Connection, InState, Refusal, Transmission};
use crate::backend::{Backend, BackendError, ExportHandle, ExportInfo, ListCursor};

/// Export names fetched per page of an `NBD_OPT_LIST` answer.
const LIST_PAGE: usize = 64;
/// Pages asked of the backend per call of `continue_listing`: a backend
/// that filters names (an allow-list) may keep none of a page, so the
/// queue bound alone would not stop the loop; the rest of the listing is
/// then done by [`Connection::step`], one call per event-loop turn.
pub(super) const LIST_PAGES_PER_CALL: usize = 16;

/// The option reply for an export that `Backend::open` would not give.
fn open_refusal(error: BackendError) -> Refusal {
    match error {
        BackendError::Denied => (
            wire::REP_ERR_POLICY,
            "access denied by the server's allow-list",
        ),
        _ => (wire::REP_ERR_UNKNOWN, "no such export"),
    }
}
use crate::wire::{self, PutBe, Reader};

impl Connection {
    pub(super) fn option_reply(&mut self, option: u32, reply: u32, data: &[u8]) {
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

    pub(super) fn handle_option<B: Backend + ?Sized>(&mut self, option: u32, backend: &mut B) {
        let data = core::mem::take(&mut self.opt_buf);
        self.state = InState::OptionHeader;
        if let Some(message) = self.refusal.take() {
            match option {
                wire::OPT_ABORT => {
                    self.option_reply(option, wire::REP_ACK, &[]);
                    self.close_after_output();
                }
                // No error reply exists for EXPORT_NAME.
                wire::OPT_EXPORT_NAME => self.hard_close(),
                _ => self.option_reply(option, wire::REP_ERR_POLICY, message.as_bytes()),
            }
            self.refusal = Some(message);
            self.opt_buf = data;
            self.opt_buf.clear();
            return;
        }
        if self.config.tls == crate::TlsPolicy::Require
            && !self.tls_active
            && option != wire::OPT_STARTTLS
            && option != wire::OPT_ABORT
        {
            // proto.md "FORCEDTLS mode": TLS_REQD to every other option;
            // EXPORT_NAME cannot fail, so the session ends.
            if option == wire::OPT_EXPORT_NAME {
                self.hard_close();
            } else {
                self.option_reply(
                    option,
                    wire::REP_ERR_TLS_REQD,
                    b"TLS is required: use NBD_OPT_STARTTLS",
                );
            }
            self.opt_buf = data;
            self.opt_buf.clear();
            return;
        }
        match option {
            wire::OPT_EXPORT_NAME => self.opt_export_name(&data, backend),
            wire::OPT_ABORT => {
                // proto.md "NBD_OPT_ABORT": the server MUST reply with ACK.
                self.option_reply(option, wire::REP_ACK, &[]);
                self.close_after_output();
            }
            wire::OPT_LIST => self.opt_list(&data, backend),
            wire::OPT_STARTTLS => {
                if self.config.tls == crate::TlsPolicy::Off {
                    // NOTLS mode: POLICY or UNSUP are both allowed (proto.md "NOTLS
                    // mode"); nbdkit and qemu-nbd answer POLICY, so do we.
                    self.option_reply(option, wire::REP_ERR_POLICY, b"TLS is not supported")
                } else if !data.is_empty() {
                    self.option_reply(option, wire::REP_ERR_INVALID, b"option takes no data");
                } else if self.tls_active {
                    self.option_reply(option, wire::REP_ERR_INVALID, b"TLS already negotiated");
                } else {
                    self.option_reply(option, wire::REP_ACK, &[]);
                    self.starttls = true;
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
        self.listing = Some(ListCursor::default());
        self.continue_listing(backend);
    }

    /// Queues further `NBD_OPT_LIST` replies while the output queue is
    /// under its bound (`max_queued_bytes`), a page of names at a time, at
    /// most [`LIST_PAGES_PER_CALL`] pages per call;
    /// the final ACK once every name is out. Called again by `produce` as
    /// the client reads, so a client that never reads holds at most the
    /// bound plus one page, whatever the number of exports.
    pub(super) fn continue_listing<B: Backend + ?Sized>(&mut self, backend: &mut B) {
        let mut names = Vec::new();
        let mut pages = 0;
        while let Some(cursor) = self.listing.as_mut() {
            if self.closed
                || self.queued_bytes >= self.config.max_queued_bytes
                || pages >= LIST_PAGES_PER_CALL
            {
                return;
            }
            pages += 1;
            names.clear();
            let more = backend.list_exports(cursor, LIST_PAGE, &mut names);
            if !more {
                self.listing = None;
            }
            for name in &names {
                let mut body = Vec::with_capacity(4 + name.len());
                body.put_u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
                body.extend_from_slice(name.as_bytes());
                self.option_reply(wire::OPT_LIST, wire::REP_SERVER, &body);
            }
            if !more {
                self.option_reply(wire::OPT_LIST, wire::REP_ACK, &[]);
            }
        }
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
        let export = backend.open(name).map_err(open_refusal)?;
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
        let export = backend.open(name).map_err(open_refusal)?;
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
}
