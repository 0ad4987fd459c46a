//! The output queue: small encoded replies, plus read items whose export
//! data is copied from the backend straight into the caller's transmit
//! buffer by [`Connection::produce`], so a large READ never needs a buffer
//! of its own. Also the encoding of reply chunk headers and of what
//! follows a READ's data.

use alloc::vec::Vec;

use super::{Connection, InState, ReplyMode};
use crate::backend::{Backend, ExportHandle};
use crate::metrics::Done;
use crate::wire::{self, PutBe, Reply};

/// A READ reply whose data is still to be sent: fetched from the backend
/// as `produce` reaches it, then followed by its trailer.
#[derive(Debug)]
pub(super) struct ReadItem {
    pub(super) export: ExportHandle,
    pub(super) cookie: u64,
    pub(super) request_offset: u64,
    pub(super) offset: u64,
    pub(super) remaining: u64,
    pub(super) mode: ReplyMode,
    pub(super) error: Option<u32>,
    pub(super) trailer: Option<Vec<u8>>,
    pub(super) trailer_pos: usize,
    /// Recorded in the metrics once the trailer is out.
    pub(super) done: Done,
}

/// One entry of the output queue.
#[derive(Debug)]
pub(super) enum OutItem {
    Bytes {
        data: Vec<u8>,
        pos: usize,
        ends_request: bool,
        /// The reply of a request: recorded in the metrics once out.
        done: Option<Done>,
    },
    Read(ReadItem),
    Close,
}

impl Connection {
    /// Stop reading; close once the queued output has been produced.
    pub(super) fn close_after_output(&mut self) {
        self.state = InState::Done;
        self.out.push_back(OutItem::Close);
    }

    pub(super) fn push_bytes(&mut self, data: Vec<u8>, ends_request: bool) {
        self.push_item(data, ends_request, None);
    }

    /// Queues the whole reply of a request, counted in the metrics once out.
    pub(super) fn push_reply(&mut self, data: Vec<u8>, done: Done) {
        self.push_item(data, true, Some(done));
    }

    fn push_item(&mut self, data: Vec<u8>, ends_request: bool, done: Option<Done>) {
        self.queued_bytes = self.queued_bytes.saturating_add(data.len());
        if ends_request {
            self.in_flight = self.in_flight.saturating_add(1);
        }
        self.out.push_back(OutItem::Bytes {
            data,
            pos: 0,
            ends_request,
            done,
        });
    }

    fn record(&mut self, done: Done, error: bool, now_us: u64) {
        self.ops.record(
            done.op,
            done.bytes,
            done.error || error,
            now_us.saturating_sub(done.started_us),
        );
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
            let mut answered: Option<(Done, bool)> = None;
            let mut fatal = false;
            'item: {
                match front {
                    OutItem::Bytes {
                        data,
                        pos,
                        ends_request: ends,
                        done,
                    } => {
                        let take = (data.len() - *pos).min(out.len() - n);
                        out[n..n + take].copy_from_slice(&data[*pos..*pos + take]);
                        *pos += take;
                        n += take;
                        if *pos == data.len() {
                            finished = true;
                            ends_request = *ends;
                            answered = done.map(|d| (d, false));
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
                                answered = Some((item.done, item.error.is_some()));
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
                if let Some((done, error)) = answered {
                    self.record(done, error, backend.now_us());
                }
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
        // An export listing goes on as its replies drain.
        if self.listing.is_some() {
            self.continue_listing(backend);
        }
        // A write-type request may have waited for READ data that has now
        // been sent. Run it here: its header is already consumed, and a
        // client may be waiting for its reply before sending anything more.
        self.resume_stalled(backend);
        n
    }
}

/// Encodes a structured (compact) or extended reply chunk header
/// (`wire::Reply`).
pub(super) fn chunk_header(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    flags: u16,
    reply_type: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) {
    let header = if mode == ReplyMode::Extended {
        Reply::Extended {
            flags,
            reply_type,
            cookie,
            offset,
            len,
        }
    } else {
        Reply::Structured {
            flags,
            reply_type,
            cookie,
            // Compact lengths are at most 8 + max_block_size (a u32) here.
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }
    };
    header.emit_to(out);
}

/// Encodes a final error chunk (proto.md "NBD_REPLY_TYPE_ERROR"): the
/// header, the errno and a message for the user (at most 1 KiB of it).
pub(super) fn error_chunk(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    offset: u64,
    errno: u32,
    message: &str,
) {
    let message = &message.as_bytes()[..message.len().min(1024)];
    chunk_header(
        out,
        mode,
        wire::REPLY_FLAG_DONE,
        wire::REPLY_TYPE_ERROR,
        cookie,
        offset,
        6 + message.len() as u64,
    );
    out.put_u32(errno);
    out.put_u16(message.len() as u16);
    out.extend_from_slice(message);
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
        Some(errno) => error_chunk(
            &mut bytes,
            item.mode,
            item.cookie,
            item.request_offset,
            errno,
            "read failed",
        ),
    }
    bytes
}
