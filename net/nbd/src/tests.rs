//! Unit tests: the engine driven with byte strings over a memory backend.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::metrics::Op;
use crate::wire::*;
use crate::*;

const SIZE: u64 = 1 << 20;

/// Memory backend that keeps a separate "durable" image: `write` changes
/// only `data`; `persist`/`flush` copy to `durable`. Lets tests check that
/// a reply is sent only after the data is durable.
struct Mem {
    exports: Vec<(ExportInfo, Vec<u8>, Vec<u8>)>,
    fail_reads: bool,
    flushes: usize,
    holes: bool,
    /// Names listed after the real exports (`file0`, `file1`, ...).
    extra_names: usize,
    /// Exports that became read-only after the handshake
    /// ([`Backend::check_write`]).
    read_only_now: Vec<u64>,
    /// The clock of `now_us`: each reading is 100 µs after the last.
    clock: core::cell::Cell<u64>,
    /// Names this client may not open ([`BackendError::Denied`]).
    denied: Vec<String>,
    /// `list_exports` calls so far, and whether a page lists no name
    /// (every name examined is refused to this client).
    list_calls: usize,
    hide_listing: bool,
}

impl Mem {
    fn new() -> Self {
        let info = |name: &str, read_only| ExportInfo {
            name: name.to_string(),
            description: String::from("test export"),
            size: SIZE,
            read_only,
            kind: ExportKind::Raw,
            can_trim: true,
            can_fast_zero: false,
            multi_conn: true,
        };
        Mem {
            exports: vec![
                (
                    info("disk", false),
                    vec![0; SIZE as usize],
                    vec![0; SIZE as usize],
                ),
                (
                    info("ro", true),
                    vec![7; SIZE as usize],
                    vec![7; SIZE as usize],
                ),
            ],
            fail_reads: false,
            flushes: 0,
            holes: false,
            extra_names: 0,
            read_only_now: Vec::new(),
            clock: core::cell::Cell::new(0),
            denied: Vec::new(),
            list_calls: 0,
            hide_listing: false,
        }
    }
    fn data(&self) -> &[u8] {
        &self.exports[0].1
    }
    fn durable(&self) -> &[u8] {
        &self.exports[0].2
    }
}

impl Backend for Mem {
    fn now_us(&self) -> u64 {
        self.clock.set(self.clock.get() + 100);
        self.clock.get()
    }
    fn export_count(&self) -> usize {
        self.exports.len() + self.extra_names
    }
    fn export_name(&self, index: usize) -> Option<String> {
        match self.exports.get(index) {
            Some(e) => Some(e.0.name.clone()),
            None if index < self.export_count() => {
                Some(alloc::format!("file{}", index - self.exports.len()))
            }
            None => None,
        }
    }
    fn list_exports(&mut self, cursor: &mut ListCursor, max: usize, out: &mut Vec<String>) -> bool {
        self.list_calls += 1;
        // The default paging, with every name hidden when asked: a page
        // that examined `max` names and kept none.
        let count = self.export_count();
        let mut taken = 0;
        while taken < max && cursor.part < count {
            if !self.hide_listing {
                if let Some(name) = self.export_name(cursor.part) {
                    out.push(name);
                }
            }
            cursor.part += 1;
            taken += 1;
        }
        cursor.part < count
    }
    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        let name = if name.is_empty() { "disk" } else { name };
        if self.denied.iter().any(|d| d == name) {
            return Err(BackendError::Denied);
        }
        self.exports
            .iter()
            .position(|e| e.0.name == name)
            .map(|i| ExportHandle(i as u64))
            .ok_or(BackendError::NoSuchExport)
    }
    fn info(&self, export: ExportHandle) -> Option<ExportInfo> {
        self.exports.get(export.0 as usize).map(|e| e.0.clone())
    }
    fn check_write(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        if self.read_only_now.contains(&export.0) {
            return Err(BackendError::ReadOnly);
        }
        Ok(())
    }
    fn read(
        &mut self,
        export: ExportHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), BackendError> {
        if self.fail_reads {
            return Err(BackendError::Io);
        }
        let data = &self.exports[export.0 as usize].1;
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(
        &mut self,
        export: ExportHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BackendError> {
        let d = &mut self.exports[export.0 as usize].1;
        d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn persist(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        let e = &mut self.exports[export.0 as usize];
        let r = offset as usize..(offset + len) as usize;
        e.2[r.clone()].copy_from_slice(&e.1[r]);
        Ok(())
    }
    fn flush(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        self.flushes += 1;
        let e = &mut self.exports[export.0 as usize];
        e.2.copy_from_slice(&e.1);
        Ok(())
    }
    fn trim(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.write_zeroes(export, offset, len, ZeroFlags::default())
    }
    fn write_zeroes(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), BackendError> {
        if flags.fast {
            return Err(BackendError::NotSupported);
        }
        let d = &mut self.exports[export.0 as usize].1;
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn block_status(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        max_extents: usize,
        out: &mut Vec<Extent>,
    ) -> Result<(), BackendError> {
        if !self.holes {
            out.push(Extent::data(len));
            return Ok(());
        }
        // Alternate 4 KiB data / hole, by absolute position; deliberately
        // reports past the request end to check that the engine clips.
        let _ = export;
        let mut pos = offset;
        while pos < offset + len + 8192 && out.len() < max_extents + 2 {
            let next = (pos / 4096 + 1) * 4096;
            let extent_len = next - pos;
            out.push(if (pos / 4096).is_multiple_of(2) {
                Extent::data(extent_len)
            } else {
                Extent::hole(extent_len)
            });
            pos = next;
        }
        Ok(())
    }
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.put_u64(IHAVEOPT);
    v.put_u32(code);
    v.put_u32(data.len() as u32);
    v.extend_from_slice(data);
    v
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.put_u32(name.len() as u32);
    v.extend_from_slice(name.as_bytes());
    v.put_u16(infos.len() as u16);
    for i in infos {
        v.put_u16(*i);
    }
    v
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.put_u32(name.len() as u32);
    v.extend_from_slice(name.as_bytes());
    v.put_u32(queries.len() as u32);
    for q in queries {
        v.put_u32(q.len() as u32);
        v.extend_from_slice(q.as_bytes());
    }
    v
}

fn request(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.put_u32(REQUEST_MAGIC);
    v.put_u16(flags);
    v.put_u16(kind);
    v.put_u64(cookie);
    v.put_u64(offset);
    v.put_u32(len);
    v
}

fn ext_request(flags: u16, kind: u16, cookie: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.put_u32(EXTENDED_REQUEST_MAGIC);
    v.put_u16(flags);
    v.put_u16(kind);
    v.put_u64(cookie);
    v.put_u64(offset);
    v.put_u64(len);
    v
}

/// A test client: feeds bytes, collects output in small pieces.
struct Client {
    conn: Connection,
    mem: Mem,
    out: Vec<u8>,
    pos: usize,
    now: u64,
    piece: usize,
}

impl Client {
    fn new() -> Self {
        Self::with_config(ServerConfig::default())
    }
    fn with_config(config: ServerConfig) -> Self {
        let mut c = Client {
            conn: Connection::new(config, 0),
            mem: Mem::new(),
            out: Vec::new(),
            pos: 0,
            now: 0,
            piece: 1000,
        };
        let greeting = c.take(18);
        assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
        assert_eq!(&greeting[8..16], &IHAVEOPT.to_be_bytes());
        assert_eq!(
            u16::from_be_bytes([greeting[16], greeting[17]]),
            FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
        );
        c
    }
    /// Sends everything, producing output as needed (backpressure).
    fn send(&mut self, bytes: &[u8]) {
        let mut used = 0;
        let mut idle = 0;
        while used < bytes.len() && !self.conn.wants_close() {
            let n = self.conn.receive(&bytes[used..], &mut self.mem, self.now);
            used += n;
            let produced = self.pump();
            if n == 0 && !produced {
                idle += 1;
                assert!(idle < 3, "engine stuck: consumed nothing, produced nothing");
            } else {
                idle = 0;
            }
        }
        // Stalled requests resume on an empty receive.
        self.conn.receive(&[], &mut self.mem, self.now);
        self.pump();
    }
    /// Produces all output, stepping long requests as the event loop does.
    fn pump(&mut self) -> bool {
        let mut any = false;
        loop {
            let stepped = self.conn.step(&mut self.mem);
            if stepped {
                self.conn.receive(&[], &mut self.mem, self.now);
            }
            let mut buf = vec![0u8; self.piece];
            let n = self.conn.produce(&mut buf, &mut self.mem);
            if n == 0 && !stepped {
                return any;
            }
            any = true;
            self.out.extend_from_slice(&buf[..n]);
            self.conn.receive(&[], &mut self.mem, self.now);
        }
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        self.pump();
        assert!(
            self.out.len() - self.pos >= n,
            "wanted {n} bytes, have {}",
            self.out.len() - self.pos
        );
        let v = self.out[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }
    fn pending(&mut self) -> usize {
        self.pump();
        self.out.len() - self.pos
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }
    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64(&mut self) -> u64 {
        let b = self.take(8);
        u64::from_be_bytes(b.try_into().unwrap())
    }
    /// Reads one option reply: (option, type, data).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), OPTION_REPLY_MAGIC);
        let option = self.u32();
        let kind = self.u32();
        let len = self.u32() as usize;
        (option, kind, self.take(len))
    }
    fn flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes());
    }
    /// Handshake with GO; returns transmission flags.
    fn go(&mut self, structured: bool, extended: bool, meta: bool) -> u16 {
        self.flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        if extended {
            self.send(&option(OPT_EXTENDED_HEADERS, &[]));
            assert_eq!(self.option_reply().1, REP_ACK);
        } else if structured {
            self.send(&option(OPT_STRUCTURED_REPLY, &[]));
            assert_eq!(self.option_reply().1, REP_ACK);
        }
        if meta {
            self.send(&option(
                OPT_SET_META_CONTEXT,
                &meta_data("disk", &[BASE_ALLOCATION]),
            ));
            let (_, kind, data) = self.option_reply();
            assert_eq!(kind, REP_META_CONTEXT);
            assert_eq!(&data[4..], BASE_ALLOCATION.as_bytes());
            assert_eq!(self.option_reply().1, REP_ACK);
        }
        self.send(&option(OPT_GO, &go_data("disk", &[])));
        let mut flags = None;
        loop {
            let (opt, kind, data) = self.option_reply();
            assert_eq!(opt, OPT_GO);
            if kind == REP_INFO && data[..2] == [0, 0] {
                assert_eq!(u64::from_be_bytes(data[2..10].try_into().unwrap()), SIZE);
                flags = Some(u16::from_be_bytes([data[10], data[11]]));
            }
            if kind == REP_ACK {
                break;
            }
            assert_eq!(kind, REP_INFO);
        }
        assert!(self.conn.in_transmission());
        flags.unwrap()
    }
    /// Reads a simple reply: (error, cookie).
    fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        (self.u32(), self.u64())
    }
    /// Reads one structured chunk: (flags, type, cookie, payload).
    fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        assert_eq!(self.u32(), STRUCTURED_REPLY_MAGIC);
        let flags = self.u16();
        let kind = self.u16();
        let cookie = self.u64();
        let len = self.u32() as usize;
        (flags, kind, cookie, self.take(len))
    }
    /// Reads one extended chunk: (flags, type, cookie, offset, payload).
    fn ext_chunk(&mut self) -> (u16, u16, u64, u64, Vec<u8>) {
        assert_eq!(self.u32(), EXTENDED_REPLY_MAGIC);
        let flags = self.u16();
        let kind = self.u16();
        let cookie = self.u64();
        let offset = self.u64();
        let len = self.u64() as usize;
        (flags, kind, cookie, offset, self.take(len))
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ----- Handshake -----

#[test]
fn unknown_client_flags_disconnect() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE | 1 << 7);
    assert!(c.conn.wants_close());
}

#[test]
fn client_without_fixed_newstyle_is_dropped() {
    let mut c = Client::new();
    c.flags(0);
    assert!(c.conn.wants_close());
}

#[test]
fn bad_option_magic_disconnects() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    let mut bad = option(OPT_LIST, &[]);
    bad[0] ^= 1;
    c.send(&bad);
    assert!(c.conn.wants_close());
    assert_eq!(c.pending(), 0);
}

#[test]
fn unknown_option_is_unsupported_and_negotiation_continues() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(4242, b"whatever"));
    let (opt, kind, _) = c.option_reply();
    assert_eq!((opt, kind), (4242, REP_ERR_UNSUP));
    c.send(&option(OPT_STARTTLS, &[]));
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
    c.send(&option(OPT_GO, &go_data("disk", &[])));
    while c.option_reply().1 != REP_ACK {}
    assert!(c.conn.in_transmission());
}

#[test]
fn list_exports_and_its_errors() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_LIST, &[]));
    let mut names = Vec::new();
    loop {
        let (opt, kind, data) = c.option_reply();
        assert_eq!(opt, OPT_LIST);
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER);
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
    }
    assert_eq!(names, ["disk", "ro"]);
    c.send(&option(OPT_LIST, b"x"));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    let mut c = Client::with_config(ServerConfig {
        allow_list: false,
        ..ServerConfig::default()
    });
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_LIST, &[]));
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
}

/// 20,000 exports and a client that sends `NBD_OPT_LIST` without reading:
/// the replies are made as the client reads them, never more than the
/// output bound at once, and all of them arrive in order.
#[test]
fn a_long_export_list_is_made_as_the_client_reads_it() {
    let mut c = Client::new();
    c.mem.extra_names = 20_000;
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    let input = option(OPT_LIST, &[]);
    assert_eq!(c.conn.receive(&input, &mut c.mem, 0), input.len());
    // Everything queued now comes out in one produce into a huge buffer.
    let mut big = vec![0u8; 16 << 20];
    let n = c.conn.produce(&mut big, &mut c.mem);
    let bound = ServerConfig::default().max_queued_bytes + 8192;
    assert!(
        n <= bound,
        "{n} bytes of replies queued at once (bound {bound})"
    );
    c.out.extend_from_slice(&big[..n]);
    let mut names = Vec::new();
    loop {
        let (opt, kind, data) = c.option_reply();
        assert_eq!(opt, OPT_LIST);
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER);
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
    }
    assert_eq!(names.len(), 20_002);
    assert_eq!(&names[..3], ["disk", "ro", "file0"]);
    assert_eq!(names[20_001], "file19999");
    // The handshake goes on.
    c.send(&option(OPT_GO, &go_data("disk", &[])));
    loop {
        let (_, kind, _) = c.option_reply();
        if kind == REP_ACK {
            break;
        }
    }
    assert!(c.conn.in_transmission());
}

/// A connection refused for a limit: the greeting, then every option is
/// answered with `NBD_REP_ERR_POLICY` and the reason, `NBD_OPT_ABORT` is
/// acknowledged and closes, `NBD_OPT_EXPORT_NAME` (which has no error
/// reply) closes at once.
#[test]
fn a_refused_connection_answers_every_option_with_policy() {
    let refused = || {
        let mut c = Client::new();
        c.conn = Connection::refused(ServerConfig::default(), 0, "too many connections");
        let greeting = c.take(18);
        assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
        c.flags(FLAG_C_FIXED_NEWSTYLE);
        c
    };
    let mut c = refused();
    for opt in [OPT_GO, OPT_INFO, OPT_LIST, OPT_STRUCTURED_REPLY] {
        c.send(&option(opt, &go_data("disk", &[])));
        let (o, kind, data) = c.option_reply();
        assert_eq!((o, kind), (opt, REP_ERR_POLICY));
        assert_eq!(data, b"too many connections");
    }
    assert!(!c.conn.in_transmission());
    c.send(&option(OPT_ABORT, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.conn.wants_close());

    let mut c = refused();
    c.send(&option(OPT_EXPORT_NAME, b"disk"));
    assert!(c.conn.wants_close());
    assert_eq!(c.pending(), 0);
    // The handshake deadline still bounds a refused client that says nothing.
    let c = Connection::refused(ServerConfig::default(), 5, "x");
    assert_eq!(
        c.poll_deadline(),
        Some(5 + ServerConfig::default().handshake_timeout_ms)
    );
}

#[test]
fn info_reports_everything_requested() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(
        OPT_INFO,
        &go_data("ro", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77]),
    ));
    let mut seen = Vec::new();
    loop {
        let (opt, kind, data) = c.option_reply();
        assert_eq!(opt, OPT_INFO);
        if kind == REP_ACK {
            break;
        }
        let info = u16::from_be_bytes([data[0], data[1]]);
        match info {
            INFO_NAME => assert_eq!(&data[2..], b"ro"),
            INFO_DESCRIPTION => assert_eq!(&data[2..], b"test export"),
            INFO_BLOCK_SIZE => {
                assert_eq!(u32::from_be_bytes(data[2..6].try_into().unwrap()), 1);
                assert_eq!(u32::from_be_bytes(data[6..10].try_into().unwrap()), 4096);
                assert_eq!(
                    u32::from_be_bytes(data[10..14].try_into().unwrap()),
                    32 << 20
                );
            }
            INFO_EXPORT => {
                let flags = u16::from_be_bytes([data[10], data[11]]);
                assert_ne!(flags & TFLAG_READ_ONLY, 0);
                assert_eq!(
                    flags & (TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES),
                    0
                );
            }
            other => panic!("unexpected info {other}"),
        }
        seen.push(info);
    }
    seen.sort();
    assert_eq!(
        seen,
        [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]
    );
    // INFO does not end the handshake.
    assert!(!c.conn.in_transmission());
}

#[test]
fn info_and_go_errors_keep_negotiating() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_GO, &go_data("nope", &[])));
    assert_eq!(c.option_reply().1, REP_ERR_UNKNOWN);
    // Name length far beyond the option length.
    let mut data = go_data("disk", &[]);
    data[..4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    c.send(&option(OPT_GO, &data));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // Request count does not match.
    let mut data = go_data("disk", &[INFO_NAME]);
    data.push(0);
    c.send(&option(OPT_GO, &data));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // Overlong name.
    let long = "n".repeat(5000);
    c.send(&option(OPT_GO, &go_data(&long, &[])));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // Too short.
    c.send(&option(OPT_INFO, &[0, 0]));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // Default export.
    c.send(&option(OPT_GO, &go_data("", &[])));
    while c.option_reply().1 != REP_ACK {}
    assert_eq!(c.conn.export_name(), Some("disk"));
}

#[test]
fn export_name_with_and_without_zeroes() {
    for no_zeroes in [false, true] {
        let mut c = Client::new();
        c.flags(FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 });
        c.send(&option(OPT_EXPORT_NAME, b"disk"));
        assert_eq!(c.u64(), SIZE);
        let flags = c.u16();
        assert_eq!(flags & TFLAG_HAS_FLAGS, 1);
        assert_eq!(c.pending(), if no_zeroes { 0 } else { 124 });
        assert!(c.conn.in_transmission());
    }
}

#[test]
fn export_name_failures_disconnect() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"missing"));
    assert!(c.conn.wants_close());

    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    let mut header = option(OPT_EXPORT_NAME, &[]);
    header[12..16].copy_from_slice(&5000u32.to_be_bytes());
    c.send(&header);
    assert!(c.conn.wants_close());
}

#[test]
fn abort_acks_then_closes() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_ABORT, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.conn.wants_close());
}

#[test]
fn structured_and_extended_negotiation_rules() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_STRUCTURED_REPLY, b"x"));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.send(&option(OPT_STRUCTURED_REPLY, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
    c.send(&option(OPT_STRUCTURED_REPLY, &[]));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.send(&option(OPT_EXTENDED_HEADERS, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
    c.send(&option(OPT_EXTENDED_HEADERS, &[]));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXTENDED_HEADERS, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
    c.send(&option(OPT_STRUCTURED_REPLY, &[]));
    assert_eq!(c.option_reply().1, REP_ERR_EXT_HEADER_REQD);
}

#[test]
fn meta_context_options() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_LIST_META_CONTEXT, &meta_data("disk", &[])));
    assert_eq!(
        c.option_reply().1,
        REP_ERR_INVALID,
        "needs structured replies"
    );
    c.send(&option(OPT_STRUCTURED_REPLY, &[]));
    c.option_reply();
    for queries in [&[][..], &["base:"][..], &["base:allocation"][..]] {
        c.send(&option(OPT_LIST_META_CONTEXT, &meta_data("disk", queries)));
        let (_, kind, data) = c.option_reply();
        assert_eq!(kind, REP_META_CONTEXT);
        assert_eq!(&data[..4], &[0, 0, 0, 0]);
        assert_eq!(&data[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(c.option_reply().1, REP_ACK);
    }
    c.send(&option(
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &["base:", "qemu:dirty-bitmap:x"]),
    ));
    assert_eq!(c.option_reply().1, REP_ACK, "nothing selected");
    c.send(&option(
        OPT_SET_META_CONTEXT,
        &meta_data("nope", &[BASE_ALLOCATION]),
    ));
    assert_eq!(c.option_reply().1, REP_ERR_UNKNOWN);
    let mut bad = meta_data("disk", &[BASE_ALLOCATION]);
    bad[8..12].copy_from_slice(&7u32.to_be_bytes()); // query count too large
    c.send(&option(OPT_SET_META_CONTEXT, &bad));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    let mut bad = meta_data("disk", &[BASE_ALLOCATION]);
    bad.push(1); // trailing garbage
    c.send(&option(OPT_SET_META_CONTEXT, &bad));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
}

#[test]
fn meta_context_for_another_export_does_not_carry_over() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_STRUCTURED_REPLY, &[]));
    c.option_reply();
    c.send(&option(
        OPT_SET_META_CONTEXT,
        &meta_data("ro", &[BASE_ALLOCATION]),
    ));
    assert_eq!(c.option_reply().1, REP_META_CONTEXT);
    c.option_reply();
    c.send(&option(OPT_GO, &go_data("disk", &[])));
    while c.option_reply().1 != REP_ACK {}
    c.send(&request(0, CMD_BLOCK_STATUS, 1, 0, 4096));
    let (_, kind, _, payload) = c.chunk();
    assert_eq!(kind, REPLY_TYPE_ERROR);
    assert_eq!(&payload[..4], &EINVAL.to_be_bytes());
}

#[test]
fn oversized_option_is_skipped_with_too_big() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_INFO, &vec![0u8; 100_000]));
    assert_eq!(c.option_reply().1, REP_ERR_TOO_BIG);
    c.send(&option(OPT_GO, &go_data("disk", &[])));
    while c.option_reply().1 != REP_ACK {}
}

#[test]
fn handshake_times_out_but_transmission_does_not() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(c.conn.poll_deadline(), Some(10_000));
    assert!(!c.conn.check_timeout(9_999));
    assert!(c.conn.check_timeout(10_000));

    let mut c = Client::new();
    c.go(false, false, false);
    assert_eq!(c.conn.poll_deadline(), None);
    assert!(!c.conn.check_timeout(u64::MAX));
}

#[test]
fn the_handshake_deadline_bounds_each_option_not_the_whole_negotiation() {
    // A client that asks about one export after another (nbdinfo --list
    // of thousands of exports) is not cut while every option arrives in
    // time.
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    for round in 1..=5u64 {
        c.now = round * 6_000;
        assert!(!c.conn.check_timeout(c.now), "cut at {} ms", c.now);
        c.send(&option(OPT_INFO, &go_data("disk", &[])));
        while c.option_reply().1 != REP_ACK {}
        assert_eq!(c.conn.poll_deadline(), Some(c.now + 10_000));
    }
    // One that stalls in the middle of an option is cut 10 s after the
    // option's header.
    c.now = 39_000;
    let partial = option(OPT_INFO, &go_data("disk", &[]));
    c.send(&partial[..20]);
    assert!(!c.conn.check_timeout(48_999));
    assert!(c.conn.check_timeout(49_000));
}

// ----- Transmission, simple replies -----

#[test]
fn advertised_flags_are_truthful() {
    let mut c = Client::new();
    let flags = c.go(false, false, false);
    assert_eq!(
        flags,
        TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_CAN_MULTI_CONN
            | TFLAG_SEND_CACHE
    );
    let mut c = Client::new();
    let flags = c.go(true, false, false);
    assert_ne!(flags & TFLAG_SEND_DF, 0);
    assert_eq!(flags & TFLAG_SEND_FAST_ZERO, 0);
}

#[test]
fn write_read_round_trip_simple() {
    let mut c = Client::new();
    c.go(false, false, false);
    let data = pattern(10_000, 3);
    let mut bytes = request(0, CMD_WRITE, 7, 4000, data.len() as u32);
    bytes.extend_from_slice(&data);
    c.send(&bytes);
    assert_eq!(c.simple(), (0, 7));
    assert_eq!(&c.mem.data()[4000..14_000], &data[..]);
    c.send(&request(0, CMD_READ, 8, 4000, 10_000));
    assert_eq!(c.simple(), (0, 8));
    assert_eq!(c.take(10_000), data);
    assert_eq!(c.conn.stats().requests, 2);
    assert_eq!(c.conn.stats().write_bytes, 10_000);
    assert_eq!(c.conn.stats().read_bytes, 10_000);
}

#[test]
fn answered_requests_are_counted_per_operation_with_latency() {
    let mut c = Client::new();
    c.go(false, false, false);
    assert_eq!(c.conn.take_op_stats(), None);
    let data = pattern(10_000, 3);
    let mut bytes = request(0, CMD_WRITE, 7, 4000, data.len() as u32);
    bytes.extend_from_slice(&data);
    c.send(&bytes);
    assert_eq!(c.simple(), (0, 7));
    c.send(&request(0, CMD_READ, 8, 4000, 10_000));
    assert_eq!(c.simple(), (0, 8));
    assert_eq!(c.take(10_000), data);
    c.send(&request(0, CMD_READ, 9, SIZE - 512, 1024));
    assert_eq!(c.simple(), (EINVAL, 9));
    c.send(&request(0, CMD_FLUSH, 10, 0, 0));
    assert_eq!(c.simple(), (0, 10));
    let stats = c.conn.take_op_stats().expect("requests were answered");
    let read = stats.ops[Op::Read.index()];
    assert_eq!((read.requests, read.errors, read.bytes), (2, 1, 10_000));
    let write = stats.ops[Op::Write.index()];
    assert_eq!((write.requests, write.errors, write.bytes), (1, 0, 10_000));
    assert_eq!(stats.ops[Op::Flush.index()].requests, 1);
    assert_eq!(stats.ops[Op::Trim.index()].requests, 0);
    // One clock reading at the header, one when the reply is out.
    assert_eq!(stats.latency[Op::Read.index()].count, 2);
    assert!(stats.latency[Op::Write.index()].sum_us >= 100);
    // Taken: counting starts again.
    assert_eq!(c.conn.take_op_stats(), None);
}

#[test]
fn write_payload_streams_in_small_pieces() {
    let mut c = Client::new();
    c.go(false, false, false);
    let data = pattern(5000, 9);
    let mut bytes = request(0, CMD_WRITE, 1, 0, 5000);
    bytes.extend_from_slice(&data);
    for piece in bytes.chunks(7) {
        c.send(piece);
    }
    assert_eq!(c.simple(), (0, 1));
    assert_eq!(&c.mem.data()[..5000], &data[..]);
}

#[test]
fn fua_write_is_durable_before_its_reply() {
    let mut c = Client::new();
    c.go(false, false, false);
    let data = pattern(4096, 1);
    let mut plain = request(0, CMD_WRITE, 1, 0, 4096);
    plain.extend_from_slice(&data);
    c.send(&plain);
    c.simple();
    assert_ne!(
        &c.mem.durable()[..4096],
        &data[..],
        "plain write is not yet durable"
    );
    let mut fua = request(CMD_FLAG_FUA, CMD_WRITE, 2, 8192, 4096);
    fua.extend_from_slice(&data);
    c.send(&fua);
    // The reply exists only after persist ran.
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(&c.mem.durable()[8192..12_288], &data[..]);
    c.send(&request(0, CMD_FLUSH, 3, 0, 0));
    assert_eq!(c.simple(), (0, 3));
    assert_eq!(c.mem.flushes, 1);
    assert_eq!(&c.mem.durable()[..4096], &data[..]);
}

#[test]
fn trim_zeroes_and_cache() {
    let mut c = Client::new();
    c.go(false, false, false);
    let mut w = request(0, CMD_WRITE, 1, 0, 8192);
    w.extend_from_slice(&[0xaa; 8192]);
    c.send(&w);
    c.simple();
    c.send(&request(0, CMD_TRIM, 2, 0, 100));
    assert_eq!(c.simple(), (0, 2));
    c.send(&request(
        CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
        CMD_WRITE_ZEROES,
        3,
        4096,
        4096,
    ));
    assert_eq!(c.simple(), (0, 3));
    assert!(c.mem.durable()[4096..8192].iter().all(|b| *b == 0));
    assert!(c.mem.data()[..100].iter().all(|b| *b == 0));
    assert!(c.mem.data()[100..4096].iter().all(|b| *b == 0xaa));
    c.send(&request(0, CMD_CACHE, 4, 0, 4096));
    assert_eq!(c.simple(), (0, 4));
    // FAST_ZERO is not advertised for this export.
    c.send(&request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 5, 0, 4096));
    assert_eq!(c.simple(), (EINVAL, 5));
}

#[test]
fn errors_follow_the_spec_and_the_connection_goes_on() {
    let mut c = Client::new();
    c.go(false, false, false);
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (request(0, CMD_READ, 1, SIZE - 512, 1024), EINVAL),
        (request(0, CMD_READ, 2, u64::MAX - 511, 1024), EINVAL),
        (request(0, CMD_READ, 3, 0, 0), EINVAL),
        (request(0, CMD_READ, 4, 0, (32 << 20) + 1), EINVAL),
        (request(0, CMD_WRITE_ZEROES, 5, SIZE, 1), ENOSPC),
        (request(0, CMD_TRIM, 6, u64::MAX, 2), EINVAL),
        (request(0, 99, 7, 0, 1), EINVAL),
        (request(1 << 12, CMD_READ, 8, 0, 1), EINVAL),
        (request(CMD_FLAG_DF, CMD_READ, 9, 0, 1), EINVAL), // DF needs structured
        (request(0, CMD_BLOCK_STATUS, 10, 0, 1), EINVAL),
        (request(0, CMD_FLUSH, 11, 1, 0), EINVAL),
        (request(CMD_FLAG_REQ_ONE, CMD_READ, 12, 0, 1), EINVAL),
    ];
    for (bytes, errno) in &cases {
        c.send(bytes);
        let (error, _) = c.simple();
        assert_eq!(error, *errno);
    }
    // Writes past the end: ENOSPC, and the payload is skipped.
    let mut w = request(0, CMD_WRITE, 20, SIZE - 10, 100);
    w.extend_from_slice(&[1; 100]);
    c.send(&w);
    assert_eq!(c.simple(), (ENOSPC, 20));
    // A write larger than the maximum block size: payload streamed away.
    let big = (32u32 << 20) + 4096;
    c.send(&request(0, CMD_WRITE, 21, 0, big));
    let junk = vec![0x55u8; 1 << 20];
    let mut left = big as usize;
    while left > 0 {
        let n = left.min(junk.len());
        c.send(&junk[..n]);
        left -= n;
    }
    assert_eq!(c.simple(), (EINVAL, 21));
    assert!(
        c.mem.data().iter().all(|b| *b == 0),
        "refused write must not land"
    );
    c.send(&request(0, CMD_READ, 22, 0, 16));
    assert_eq!(c.simple(), (0, 22));
    c.take(16);
    assert_eq!(c.conn.stats().errors, cases.len() as u64 + 2);
}

/// An export the backend's policy refuses to this client: INFO, GO and
/// the meta-context options get `NBD_REP_ERR_POLICY` with the reason and
/// negotiation goes on; EXPORT_NAME (no error reply) closes.
#[test]
fn a_denied_export_is_refused_with_policy() {
    let mut c = Client::new();
    c.mem.denied.push("disk".into());
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    for opt in [OPT_INFO, OPT_GO] {
        c.send(&option(opt, &go_data("disk", &[])));
        let (o, kind, data) = c.option_reply();
        assert_eq!((o, kind), (opt, REP_ERR_POLICY));
        assert_eq!(data, b"access denied by the server's allow-list");
    }
    c.send(&option(OPT_STRUCTURED_REPLY, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
    c.send(&option(OPT_LIST_META_CONTEXT, &meta_data("disk", &[])));
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
    // Another export is served.
    c.send(&option(OPT_GO, &go_data("ro", &[])));
    while c.option_reply().1 != REP_ACK {}
    assert_eq!(c.conn.export_name(), Some("ro"));

    let mut c = Client::new();
    c.mem.denied.push("disk".into());
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"disk"));
    assert!(c.conn.wants_close());
}

/// A listing where the backend keeps none of the names it examines (a
/// client allowed nothing among 20,000 exports): each call of the engine
/// asks for a bounded number of pages, the rest is done by `step` (the
/// event loop's bounded work), and the listing ends with the ACK.
#[test]
fn a_filtered_listing_is_bounded_per_call() {
    let mut c = Client::new();
    c.mem.extra_names = 20_000;
    c.mem.hide_listing = true;
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    let input = option(OPT_LIST, &[]);
    assert_eq!(c.conn.receive(&input, &mut c.mem, 0), input.len());
    assert!(
        c.mem.list_calls <= 16,
        "{} pages examined in one call",
        c.mem.list_calls
    );
    assert!(c.conn.has_work(), "the listing goes on in steps");
    let (opt, kind, _) = c.option_reply();
    assert_eq!((opt, kind), (OPT_LIST, REP_ACK));
    assert!(!c.conn.has_work());
    assert!(c.mem.list_calls >= 20_002 / 64);
}

/// Writes refused because the export is read-only are counted
/// (`ConnectionStats::read_only_writes`), whether the handshake said so or
/// the backend says so later.
#[test]
fn read_only_refusals_are_counted() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"ro"));
    c.take(8 + 2 + 124);
    let mut w = request(0, CMD_WRITE, 1, 0, 4);
    w.extend_from_slice(b"abcd");
    c.send(&w);
    assert_eq!(c.simple(), (EPERM, 1));
    c.send(&request(0, CMD_TRIM, 2, 0, 4));
    assert_eq!(c.simple(), (EPERM, 2));
    assert_eq!(c.conn.stats().read_only_writes, 2);
    let mut c = Client::new();
    c.mem.read_only_now.push(0);
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"disk"));
    c.take(8 + 2 + 124);
    c.send(&request(0, CMD_WRITE_ZEROES, 3, 0, 4));
    assert_eq!(c.simple(), (EPERM, 3));
    assert_eq!(c.conn.stats().read_only_writes, 1);
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"ro"));
    c.take(8 + 2 + 124);
    let mut w = request(0, CMD_WRITE, 1, 0, 4);
    w.extend_from_slice(b"abcd");
    c.send(&w);
    assert_eq!(c.simple(), (EPERM, 1));
    c.send(&request(0, CMD_TRIM, 2, 0, 4));
    assert_eq!(c.simple(), (EPERM, 2));
    c.send(&request(0, CMD_WRITE_ZEROES, 3, 0, 4));
    assert_eq!(c.simple(), (EPERM, 3));
    c.send(&request(0, CMD_READ, 4, 0, 4));
    assert_eq!(c.simple(), (0, 4));
    assert_eq!(c.take(4), [7; 4]);
}

/// An export that becomes read-only after the handshake (the backend's
/// `check_write`): every write-type request gets EPERM and writes nothing,
/// whatever its flags; a refused WRITE's payload is skipped; reads go on.
#[test]
fn export_made_read_only_after_the_handshake_refuses_writes() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"disk"));
    let header = c.take(8 + 2 + 124);
    let tflags = u16::from_be_bytes([header[8], header[9]]);
    assert_eq!(tflags & TFLAG_READ_ONLY, 0, "writable at the handshake");
    let mut w = request(0, CMD_WRITE, 1, 0, 4);
    w.extend_from_slice(b"abcd");
    c.send(&w);
    assert_eq!(c.simple(), (0, 1));
    c.mem.read_only_now.push(0);
    let mut w = request(CMD_FLAG_FUA, CMD_WRITE, 2, 0, 4);
    w.extend_from_slice(b"WXYZ");
    c.send(&w);
    assert_eq!(c.simple(), (EPERM, 2), "WRITE with FUA");
    c.send(&request(0, CMD_TRIM, 3, 0, 4));
    assert_eq!(c.simple(), (EPERM, 3), "TRIM");
    c.send(&request(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 4, 0, 4));
    assert_eq!(c.simple(), (EPERM, 4), "WRITE_ZEROES");
    c.send(&request(0, CMD_FLUSH, 5, 0, 0));
    assert_eq!(c.simple(), (0, 5), "FLUSH is no write");
    c.send(&request(0, CMD_READ, 6, 0, 4));
    assert_eq!(c.simple(), (0, 6));
    assert_eq!(c.take(4), *b"abcd", "nothing written after the change");
    assert!(!c.conn.wants_close());
}

/// proto.md "Error values": a write-type request to a read-only export is
/// EPERM whatever its flags, even flags that the export does not advertise
/// (a read-only export advertises neither FUA nor FAST_ZERO); the payload
/// of a refused WRITE is skipped, so the stream stays in sync.
#[test]
fn read_only_export_refuses_writes_with_eperm_whatever_the_flags() {
    let mut c = Client::new();
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c.send(&option(OPT_EXPORT_NAME, b"ro"));
    let header = c.take(8 + 2 + 124);
    let tflags = u16::from_be_bytes([header[8], header[9]]);
    assert_ne!(tflags & TFLAG_READ_ONLY, 0);
    assert_eq!(tflags & (TFLAG_SEND_FUA | TFLAG_SEND_FAST_ZERO), 0);
    let mut w = request(CMD_FLAG_FUA, CMD_WRITE, 1, 0, 4);
    w.extend_from_slice(b"abcd");
    c.send(&w);
    assert_eq!(c.simple(), (EPERM, 1), "WRITE with FUA");
    let cases = [
        (CMD_FLAG_FUA, CMD_TRIM, "TRIM with FUA"),
        (CMD_FLAG_FUA, CMD_WRITE_ZEROES, "WRITE_ZEROES with FUA"),
        (
            CMD_FLAG_NO_HOLE,
            CMD_WRITE_ZEROES,
            "WRITE_ZEROES with NO_HOLE",
        ),
        (
            CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
            CMD_WRITE_ZEROES,
            "WRITE_ZEROES with NO_HOLE and FUA",
        ),
        (
            CMD_FLAG_FAST_ZERO,
            CMD_WRITE_ZEROES,
            "WRITE_ZEROES with FAST_ZERO",
        ),
    ];
    for (cookie, (flags, kind, what)) in (2u64..).zip(cases) {
        c.send(&request(flags, kind, cookie, 0, 4));
        assert_eq!(c.simple(), (EPERM, cookie), "{what}");
    }
    // In sync: the next request is answered, and nothing was written.
    c.send(&request(0, CMD_READ, 9, 0, 4));
    assert_eq!(c.simple(), (0, 9));
    assert_eq!(c.take(4), [7; 4]);
    assert!(c.mem.exports[1].1.iter().all(|b| *b == 7));
    assert!(!c.conn.wants_close());
}

#[test]
fn bad_request_magic_disconnects() {
    let mut c = Client::new();
    c.go(false, false, false);
    let mut r = request(0, CMD_READ, 1, 0, 1);
    r[3] ^= 0xff;
    c.send(&r);
    assert!(c.conn.wants_close());
}

#[test]
fn disc_answers_outstanding_requests_then_closes() {
    let mut c = Client::new();
    c.go(false, false, false);
    let mut bytes = request(0, CMD_READ, 1, 0, 100);
    bytes.extend(request(0, CMD_FLUSH, 2, 0, 0));
    bytes.extend(request(0, CMD_DISC, 3, 0, 0));
    bytes.extend(request(0, CMD_READ, 4, 0, 100)); // ignored after DISC
    c.piece = 50;
    c.send(&bytes);
    assert!(c.conn.wants_close());
    assert_eq!(c.simple(), (0, 1));
    c.take(100);
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(c.pending(), 0);
}

#[test]
fn simple_read_failure_mid_stream_is_a_hard_disconnect() {
    let mut c = Client::new();
    c.go(false, false, false);
    c.mem.fail_reads = true;
    c.send(&request(0, CMD_READ, 1, 0, 100));
    assert!(c.conn.wants_close());
}

// ----- Structured replies and block status -----

#[test]
fn structured_read_is_one_data_chunk_then_done() {
    let mut c = Client::new();
    c.go(true, false, false);
    c.mem.exports[0].1[..300].copy_from_slice(&pattern(300, 5));
    c.send(&request(CMD_FLAG_DF, CMD_READ, 9, 0, 300));
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!((flags, kind, cookie), (0, REPLY_TYPE_OFFSET_DATA, 9));
    assert_eq!(&payload[..8], &0u64.to_be_bytes());
    assert_eq!(&payload[8..], &pattern(300, 5)[..]);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!(
        (flags, kind, cookie, payload.len()),
        (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 9, 0)
    );
    // Errors are structured chunks with a message.
    c.send(&request(0, CMD_READ, 10, SIZE, 1));
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!(
        (flags, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 10)
    );
    assert_eq!(&payload[..4], &EINVAL.to_be_bytes());
    let len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
    assert_eq!(payload.len(), 6 + len);
    assert!(len > 0);
}

#[test]
fn structured_read_failure_pads_and_reports_error() {
    let mut c = Client::new();
    c.go(true, false, false);
    c.mem.fail_reads = true;
    c.send(&request(0, CMD_READ, 1, 0, 100));
    let (_, kind, _, payload) = c.chunk();
    assert_eq!(kind, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(payload.len(), 108);
    let (flags, kind, _, payload) = c.chunk();
    assert_eq!((flags, kind), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR));
    assert_eq!(&payload[..4], &EIO.to_be_bytes());
    assert!(!c.conn.wants_close());
}

fn extents(payload: &[u8]) -> Vec<(u32, u32)> {
    assert_eq!(&payload[..4], &1u32.to_be_bytes(), "context id");
    payload[4..]
        .chunks(8)
        .map(|e| {
            (
                u32::from_be_bytes(e[..4].try_into().unwrap()),
                u32::from_be_bytes(e[4..].try_into().unwrap()),
            )
        })
        .collect()
}

#[test]
fn block_status_clips_merges_and_honours_req_one() {
    let mut c = Client::new();
    c.go(true, false, true);
    c.send(&request(0, CMD_BLOCK_STATUS, 1, 0, 65536));
    let (flags, kind, _, payload) = c.chunk();
    assert_eq!((flags, kind), (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS));
    assert_eq!(extents(&payload), [(65536, 0)]);

    c.mem.holes = true;
    c.send(&request(0, CMD_BLOCK_STATUS, 2, 1000, 10_000));
    let (_, _, _, payload) = c.chunk();
    let e = extents(&payload);
    assert_eq!(e, [(3096, 0), (4096, STATE_HOLE | STATE_ZERO), (2808, 0)]);
    assert_eq!(e.iter().map(|x| x.0 as u64).sum::<u64>(), 10_000);

    c.send(&request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 3, 4096, 65536));
    let (_, _, _, payload) = c.chunk();
    assert_eq!(extents(&payload), [(4096, STATE_HOLE | STATE_ZERO)]);

    c.send(&request(0, CMD_BLOCK_STATUS, 4, SIZE - 10, 11));
    let (_, kind, _, _) = c.chunk();
    assert_eq!(kind, REPLY_TYPE_ERROR);
}

// ----- Extended headers -----

#[test]
fn extended_headers_round_trip() {
    let mut c = Client::new();
    let flags = c.go(true, true, true);
    assert_ne!(flags & TFLAG_SEND_DF, 0);
    let data = pattern(3000, 2);
    let mut w = ext_request(CMD_FLAG_FUA | CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 5, 100, 3000);
    w.extend_from_slice(&data);
    c.send(&w);
    let (flags, kind, cookie, offset, payload) = c.ext_chunk();
    assert_eq!(
        (flags, kind, cookie, offset, payload.len()),
        (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 5, 100, 0)
    );
    assert_eq!(&c.mem.durable()[100..3100], &data[..]);

    c.send(&ext_request(0, CMD_READ, 6, 100, 3000));
    let (flags, kind, _, offset, payload) = c.ext_chunk();
    assert_eq!((flags, kind, offset), (0, REPLY_TYPE_OFFSET_DATA, 100));
    assert_eq!(&payload[8..], &data[..]);
    assert_eq!(c.ext_chunk().1, REPLY_TYPE_NONE);

    // 64-bit lengths: a whole-device zero and block status.
    c.send(&ext_request(0, CMD_WRITE_ZEROES, 7, 0, SIZE));
    assert_eq!(c.ext_chunk().1, REPLY_TYPE_NONE);
    c.send(&ext_request(0, CMD_BLOCK_STATUS, 8, 0, SIZE));
    let (flags, kind, _, _, payload) = c.ext_chunk();
    assert_eq!(
        (flags, kind),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS_EXT)
    );
    assert_eq!(&payload[..8], &[0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(&payload[8..16], &SIZE.to_be_bytes());
    assert_eq!(&payload[16..24], &0u64.to_be_bytes());

    // A payload on a command that takes none: skipped, EINVAL.
    let mut r = ext_request(CMD_FLAG_PAYLOAD_LEN, CMD_BLOCK_STATUS, 9, 0, 12);
    r.extend_from_slice(&[0; 12]);
    c.send(&r);
    let (_, kind, _, _, payload) = c.ext_chunk();
    assert_eq!(kind, REPLY_TYPE_ERROR);
    assert_eq!(&payload[..4], &EINVAL.to_be_bytes());
    c.send(&ext_request(0, CMD_FLUSH, 10, 0, 0));
    assert_eq!(c.ext_chunk().2, 10);
    // Compact magic is wrong once extended headers are on.
    c.send(&request(0, CMD_FLUSH, 11, 0, 0));
    c.send(&[0; 4]);
    assert!(c.conn.wants_close());
}

// ----- Pipelining, backpressure, ordering -----

#[test]
fn many_pipelined_requests_with_backpressure() {
    let mut c = Client::with_config(ServerConfig {
        max_in_flight: 16,
        ..ServerConfig::default()
    });
    c.go(false, false, false);
    c.mem.exports[0]
        .1
        .copy_from_slice(&pattern(SIZE as usize, 11));
    let mut bytes = Vec::new();
    for i in 0..200u64 {
        bytes.extend(request(0, CMD_READ, i, i * 4096, 4096));
    }
    // Without producing, only max_in_flight requests are consumed.
    let used = c.conn.receive(&bytes, &mut c.mem, 0);
    assert_eq!(used, 16 * COMPACT_REQUEST_LEN);
    assert_eq!(c.conn.in_flight(), 16);
    assert!(!c.conn.wants_input());
    c.send(&bytes[used..]);
    let expected = pattern(SIZE as usize, 11);
    for i in 0..200u64 {
        assert_eq!(c.simple(), (0, i));
        let at = (i * 4096) as usize;
        assert_eq!(c.take(4096), &expected[at..at + 4096]);
    }
    assert_eq!(c.conn.in_flight(), 0);
}

#[test]
fn write_waits_for_an_overlapping_unsent_read() {
    let mut c = Client::new();
    c.go(false, false, false);
    c.mem.exports[0].1[..4096].fill(1);
    let mut bytes = request(0, CMD_READ, 1, 0, 4096);
    bytes.extend(request(0, CMD_WRITE, 2, 0, 4096));
    bytes.extend_from_slice(&[2; 4096]);
    bytes.extend(request(0, CMD_READ, 3, 0, 4096));
    // Feed without producing: the write header is consumed but stalls.
    let used = c.conn.receive(&bytes, &mut c.mem, 0);
    assert_eq!(used, 2 * COMPACT_REQUEST_LEN);
    assert!(c.mem.data()[..4096].iter().all(|b| *b == 1));
    c.send(&bytes[used..]);
    assert_eq!(c.simple(), (0, 1));
    assert_eq!(c.take(4096), [1; 4096]);
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(c.simple(), (0, 3));
    assert_eq!(c.take(4096), [2; 4096]);
}

#[test]
fn stalled_trim_runs_once_the_read_is_sent_without_more_input() {
    let mut c = Client::new();
    c.go(false, false, false);
    c.mem.exports[0].1[..4096].fill(9);
    let mut bytes = request(0, CMD_READ, 1, 0, 4096);
    bytes.extend(request(0, CMD_TRIM, 2, 0, 4096));
    assert_eq!(c.conn.receive(&bytes, &mut c.mem, 0), bytes.len());
    assert!(!c.conn.wants_input(), "trim waits for the read");
    // Only produce (and step, as the event loop does) from now on: no
    // further receive calls.
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let stepped = c.conn.step(&mut c.mem);
        let n = c.conn.produce(&mut buf, &mut c.mem);
        if n == 0 && !stepped {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len(), 16 + 4096 + 16);
    assert!(
        out[16..16 + 4096].iter().all(|b| *b == 9),
        "read saw the data before the trim"
    );
    assert_eq!(&out[4112 + 4..4112 + 8], &[0; 4]);
    assert_eq!(&out[4112 + 8..], &2u64.to_be_bytes());
    assert!(c.mem.data()[..4096].iter().all(|b| *b == 0));
    assert!(c.conn.wants_input());
}

#[test]
fn large_read_streams_through_a_small_buffer() {
    let mut c = Client::new();
    c.go(true, false, false);
    c.mem.exports[0]
        .1
        .copy_from_slice(&pattern(SIZE as usize, 4));
    c.piece = 1500;
    c.send(&request(0, CMD_READ, 1, 0, SIZE as u32));
    let (_, _, _, payload) = c.chunk();
    assert_eq!(&payload[8..], &pattern(SIZE as usize, 4)[..]);
    assert_eq!(c.chunk().1, REPLY_TYPE_NONE);
}

#[test]
fn one_event_loop_serves_64_connections_despite_a_stalled_one() {
    // The kernel's model: one loop, one backend, many connections, small
    // transmit buffers. Connection 0 never has its output drained.
    let mut mem = Mem::new();
    let config = ServerConfig {
        max_in_flight: 64,
        ..ServerConfig::default()
    };
    let mut connections: Vec<Connection> = (0..64)
        .map(|_| Connection::new(config.clone(), 0))
        .collect();
    let mut inputs: Vec<(Vec<u8>, usize)> = Vec::new();
    for index in 0..64u64 {
        let mut input = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec();
        input.extend(option(OPT_EXPORT_NAME, b"disk"));
        let base = index * 8192;
        for i in 0..2u64 {
            input.extend(request(0, CMD_WRITE, i, base + i * 4096, 4096));
            input.extend(vec![(index as u8) ^ (i as u8 + 1); 4096]);
        }
        // 128 pipelined reads of the two blocks.
        for i in 0..128u64 {
            input.extend(request(0, CMD_READ, 100 + i, base + (i % 2) * 4096, 4096));
        }
        if index == 0 {
            // The stalled client also asks for the largest read.
            input.extend(request(0, CMD_READ, 999, 0, SIZE as u32));
        }
        inputs.push((input, 0));
    }
    let mut outputs: Vec<Vec<u8>> = vec![Vec::new(); 64];
    let mut buf = [0u8; 1460];
    for _round in 0..10_000 {
        let mut progress = false;
        for (index, connection) in connections.iter_mut().enumerate() {
            let (input, pos) = &mut inputs[index];
            let used = connection.receive(&input[*pos..], &mut mem, 1);
            *pos += used;
            progress |= used > 0;
            if index == 0 && connection.in_transmission() {
                continue; // stalled: its socket never drains
            }
            let n = connection.produce(&mut buf, &mut mem);
            outputs[index].extend_from_slice(&buf[..n]);
            progress |= n > 0;
        }
        if !progress {
            break;
        }
    }
    for index in 1..64usize {
        let out = &outputs[index];
        let handshake = 18 + 8 + 2;
        assert_eq!(
            out.len(),
            handshake + 2 * 16 + 128 * (16 + 4096),
            "connection {index}"
        );
        let mut at = handshake + 32;
        for i in 0..128u64 {
            assert_eq!(&out[at + 8..at + 16], &(100 + i).to_be_bytes());
            let expected = (index as u8) ^ ((i % 2) as u8 + 1);
            assert!(out[at + 16..at + 16 + 4096].iter().all(|b| *b == expected));
            at += 16 + 4096;
        }
        assert_eq!(inputs[index].1, inputs[index].0.len());
    }
    // The stalled connection is held at its in-flight cap, not buffering.
    assert_eq!(connections[0].in_flight(), 64);
    assert!(inputs[0].1 < inputs[0].0.len());
}

// ----- Robustness -----

fn handshaken(structured: bool, extended: bool) -> Client {
    let mut c = Client::new();
    c.go(structured || extended, extended, structured || extended);
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_after_handshake_never_panic(
        mode in 0u8..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        piece in 1usize..64,
    ) {
        let mut c = handshaken(mode >= 1, mode == 2);
        c.piece = piece;
        for chunk in bytes.chunks(piece) {
            if c.conn.wants_close() { break; }
            c.send(chunk);
        }
    }

    #[test]
    fn random_requests_after_handshake_never_panic(
        mode in 0u8..3,
        requests in proptest::collection::vec((any::<u16>(), 0u16..10, any::<u64>(), any::<u32>()), 1..20),
    ) {
        let mut c = handshaken(mode >= 1, mode == 2);
        for (flags, kind, offset, len) in requests {
            // Keep payloads small so the test stays fast.
            let flags = flags & 0x3f;
            let offset = if offset % 2 == 0 { offset % SIZE } else { offset };
            let len = if kind == CMD_WRITE { len % 4096 } else { len };
            let mut bytes = if mode == 2 {
                ext_request(flags, kind, 1, offset, u64::from(len))
            } else {
                request(flags, kind, 1, offset, len)
            };
            if kind == CMD_WRITE || (mode == 2 && flags & CMD_FLAG_PAYLOAD_LEN != 0 && len < 8192) {
                bytes.extend(vec![0u8; len as usize]);
            }
            c.send(&bytes);
            if c.conn.wants_close() { break; }
        }
    }

    #[test]
    fn random_handshake_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut c = Client::new();
        c.flags(FLAG_C_FIXED_NEWSTYLE);
        let mut input = option(OPT_STRUCTURED_REPLY, &[]);
        input.extend(bytes);
        c.send(&input);
    }
}

// ----- Bounded work per step -----

const GIB: u64 = 1 << 30;

/// A 2 GiB export that stores nothing: reads give a pattern derived from
/// the offset, or zeros where a TRIM/WRITE_ZEROES has been; every trim and
/// zero call is recorded so tests see how much one call did.
struct Big {
    zeroed: Vec<(u64, u64)>,
    calls: Vec<(u64, u64)>,
    persisted: Vec<(u64, u64)>,
    /// The export turns read-only after this many trim/zero calls.
    read_only_after: Option<usize>,
}

impl Big {
    const SIZE: u64 = 2 * GIB;
    fn new() -> Self {
        Big {
            zeroed: Vec::new(),
            calls: Vec::new(),
            persisted: Vec::new(),
            read_only_after: None,
        }
    }
    fn byte(&self, at: u64) -> u8 {
        if self.zeroed.iter().any(|&(o, l)| at >= o && at < o + l) {
            0
        } else {
            (at / 4096) as u8 ^ (at as u8)
        }
    }
    fn largest_call(&self) -> u64 {
        self.calls.iter().map(|c| c.1).max().unwrap_or(0)
    }
}

impl Backend for Big {
    fn export_count(&self) -> usize {
        1
    }
    fn export_name(&self, index: usize) -> Option<String> {
        (index == 0).then(|| "big".to_string())
    }
    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        match name {
            "" | "big" => Ok(ExportHandle(0)),
            _ => Err(BackendError::NoSuchExport),
        }
    }
    fn check_write(&mut self, _: ExportHandle) -> Result<(), BackendError> {
        match self.read_only_after {
            Some(n) if self.calls.len() >= n => Err(BackendError::ReadOnly),
            _ => Ok(()),
        }
    }
    fn info(&self, _: ExportHandle) -> Option<ExportInfo> {
        Some(ExportInfo {
            name: "big".into(),
            description: String::new(),
            size: Big::SIZE,
            read_only: false,
            kind: ExportKind::Raw,
            can_trim: true,
            can_fast_zero: false,
            multi_conn: true,
        })
    }
    fn read(&mut self, _: ExportHandle, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(offset + i as u64);
        }
        Ok(())
    }
    fn write(&mut self, _: ExportHandle, _: u64, _: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::Io)
    }
    fn persist(&mut self, _: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.persisted.push((offset, len));
        Ok(())
    }
    fn flush(&mut self, _: ExportHandle) -> Result<(), BackendError> {
        Ok(())
    }
    fn trim(&mut self, e: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.write_zeroes(e, offset, len, ZeroFlags::default())
    }
    fn write_zeroes(
        &mut self,
        _: ExportHandle,
        offset: u64,
        len: u64,
        _: ZeroFlags,
    ) -> Result<(), BackendError> {
        self.calls.push((offset, len));
        self.zeroed.push((offset, len));
        Ok(())
    }
}

/// One client connection driven the way the network stack drives it:
/// bytes offered with `receive`, output drained with `produce`, and long
/// requests advanced by `step`, one piece per event-loop turn.
struct Peer {
    conn: Connection,
    input: Vec<u8>,
    out: Vec<u8>,
}

impl Peer {
    /// A connection in transmission on export "big" (simple replies).
    fn new(big: &mut Big) -> Peer {
        let mut peer = Peer {
            conn: Connection::new(ServerConfig::default(), 0),
            input: Vec::new(),
            out: Vec::new(),
        };
        peer.input
            .extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        peer.input
            .extend_from_slice(&option(OPT_GO, &go_data("big", &[])));
        peer.pump(big);
        assert!(peer.conn.in_transmission());
        peer.out.clear();
        peer
    }
    /// Moves bytes both ways until nothing moves (no `step`).
    fn pump(&mut self, big: &mut Big) {
        loop {
            let used = self.conn.receive(&self.input, big, 0);
            self.input.drain(..used);
            let mut buf = vec![0u8; 64 * 1024];
            let n = self.conn.produce(&mut buf, big);
            self.out.extend_from_slice(&buf[..n]);
            if used == 0 && n == 0 {
                break;
            }
        }
    }
    /// Takes a simple reply (error, cookie) with `data` bytes after it, if
    /// a whole one has been produced.
    fn reply(&mut self, data: usize) -> Option<(u32, u64, Vec<u8>)> {
        if self.out.len() < 16 + data {
            return None;
        }
        let reply: Vec<u8> = self.out.drain(..16 + data).collect();
        assert_eq!(&reply[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap());
        Some((error, cookie, reply[16..].to_vec()))
    }
}

/// One turn of the event loop over `peers`: one step of bounded work (the
/// first peer that has some, round-robin from `turn`), then every peer's
/// bytes moved.
fn event_loop_turn(peers: &mut [&mut Peer], big: &mut Big, turn: usize) {
    for i in 0..peers.len() {
        let peer = &mut peers[(turn + i) % peers.len()];
        if peer.conn.has_work() {
            assert!(peer.conn.step(big));
            break;
        }
    }
    for peer in peers.iter_mut() {
        peer.pump(big);
    }
}

#[test]
fn a_long_trim_is_done_in_bounded_pieces_while_another_connection_reads() {
    for command in [CMD_TRIM, CMD_WRITE_ZEROES] {
        let mut big = Big::new();
        let mut a = Peer::new(&mut big);
        let mut b = Peer::new(&mut big);
        // A: 1 GiB (as long as a compact request can say) from 64 MiB on.
        a.input
            .extend_from_slice(&request(0, command, 1, 64 << 20, GIB as u32));
        event_loop_turn(&mut [&mut a, &mut b], &mut big, 0);
        // B: a 4 KiB read elsewhere, sent while A's request runs.
        let at = GIB + (100 << 20);
        b.input
            .extend_from_slice(&request(0, CMD_READ, 2, at, 4096));
        let mut turns = 1;
        let read = loop {
            event_loop_turn(&mut [&mut a, &mut b], &mut big, turns);
            turns += 1;
            if let Some(reply) = b.reply(4096) {
                break reply;
            }
            assert!(turns < 10_000, "B's read never answered");
        };
        assert_eq!((read.0, read.1), (0, 2));
        assert!(read
            .2
            .iter()
            .enumerate()
            .all(|(i, &x)| x == big.byte(at + i as u64)));
        // B was answered between pieces: A's request is not done yet and
        // no single call has done more than one step's worth.
        assert!(a.conn.has_work(), "the whole request ran before B's read");
        assert!(
            a.reply(0).is_none(),
            "A answered before its request was done"
        );
        let limit = ServerConfig::default().step_bytes;
        assert!(
            big.largest_call() <= limit,
            "one call zeroed {} bytes (limit {limit})",
            big.largest_call()
        );
        // Then A completes, and only then is it answered.
        let done = loop {
            event_loop_turn(&mut [&mut a, &mut b], &mut big, turns);
            turns += 1;
            if let Some(reply) = a.reply(0) {
                break reply;
            }
            assert!(turns < 10_000, "A never answered");
        };
        assert_eq!((done.0, done.1), (0, 1));
        assert!(!a.conn.has_work());
        assert_eq!(big.calls.len() as u64, GIB / limit, "{command}");
        assert_eq!(big.largest_call(), limit);
        // The pieces cover exactly the range, in order.
        let mut next = 64 << 20;
        for &(offset, len) in &big.calls {
            assert_eq!(offset, next);
            next += len;
        }
        assert_eq!(next, (64 << 20) + GIB);
    }
}

#[test]
fn later_requests_of_the_same_connection_wait_for_a_long_request() {
    let mut big = Big::new();
    let mut a = Peer::new(&mut big);
    // WRITE_ZEROES with FUA over 64 MiB + 1 byte, then a READ of its last
    // 4 KiB on the same connection: the read must see zeros, so it is not
    // even parsed before the zeroing is done; FUA persists the whole range
    // before the reply.
    let (offset, len) = (4096 * 3 + 17, (64 << 20) + 1);
    a.input.extend_from_slice(&request(
        CMD_FLAG_FUA,
        CMD_WRITE_ZEROES,
        1,
        offset,
        len as u32,
    ));
    a.input
        .extend_from_slice(&request(0, CMD_READ, 2, offset + len - 4096, 4096));
    let mut turns = 0;
    while a.out.is_empty() {
        assert!(turns < 100);
        assert!(big.persisted.is_empty(), "persisted before the last piece");
        event_loop_turn(&mut [&mut a], &mut big, turns);
        turns += 1;
    }
    assert_eq!(a.reply(0).map(|r| (r.0, r.1)), Some((0, 1)));
    assert_eq!(big.persisted, [(offset, len)]);
    let read = a.reply(4096).expect("read answered with the zeroing");
    assert_eq!((read.0, read.1), (0, 2));
    assert!(read.2.iter().all(|&x| x == 0));
    // Pieces end on multiples of the step size: the first is short.
    let step = ServerConfig::default().step_bytes;
    assert_eq!(big.calls[0], (offset, step - offset));
    assert!(big.calls[1..].iter().all(|&(o, _)| o % step == 0));
    let pieces = (offset + len).div_ceil(step) - offset / step;
    assert_eq!(big.calls.len() as u64, pieces);
    assert!(pieces > 2);
}

#[test]
fn an_export_that_turns_read_only_stops_a_long_request_at_the_next_piece() {
    let mut big = Big::new();
    let mut a = Peer::new(&mut big);
    big.read_only_after = Some(3);
    a.input
        .extend_from_slice(&request(0, CMD_TRIM, 1, 0, GIB as u32));
    let mut turns = 0;
    while a.out.is_empty() {
        assert!(turns < 100);
        event_loop_turn(&mut [&mut a], &mut big, turns);
        turns += 1;
    }
    assert_eq!(a.reply(0).map(|r| (r.0, r.1)), Some((EPERM, 1)));
    assert_eq!(
        big.calls.len(),
        3,
        "no piece after the export became read-only"
    );
    assert!(!a.conn.has_work());
}

#[test]
fn step_piece_is_aligned_and_never_empty() {
    assert_eq!(step_piece(0, 100, 4096), 100);
    assert_eq!(step_piece(0, 10_000, 4096), 4096);
    assert_eq!(step_piece(4000, 10_000, 4096), 96);
    assert_eq!(step_piece(4096, 10_000, 4096), 4096);
    assert_eq!(step_piece(5, 3, 0), 1);
    assert_eq!(step_piece(5, 0, 4096), 0);
}

fn tls_client(policy: TlsPolicy) -> Client {
    let config = ServerConfig {
        tls: policy,
        ..ServerConfig::default()
    };
    let mut c = Client::with_config(config);
    c.flags(FLAG_C_FIXED_NEWSTYLE);
    c
}

#[test]
fn starttls_is_acknowledged_and_the_engine_reads_nothing_more_until_tls_is_up() {
    for policy in [TlsPolicy::On, TlsPolicy::Require] {
        let mut c = tls_client(policy);
        // STARTTLS followed at once by plaintext (an injection attempt):
        // the plaintext must not be read as options.
        let mut bytes = option(OPT_STARTTLS, &[]);
        bytes.extend_from_slice(&option(OPT_GO, &go_data("disk", &[])));
        let used = c.conn.receive(&bytes, &mut c.mem, 0);
        assert_eq!(used, 16, "only the STARTTLS option is consumed");
        c.pump();
        assert_eq!(c.option_reply(), (OPT_STARTTLS, REP_ACK, Vec::new()));
        assert!(c.conn.starttls_pending());
        assert!(!c.conn.wants_input());
        assert_eq!(c.conn.receive(&bytes[16..], &mut c.mem, 0), 0);
        // The TLS layer is up: options are read again, TLS_REQD never sent.
        c.conn.tls_started();
        assert!(!c.conn.starttls_pending());
        assert!(c.conn.tls_active());
        c.send(&option(OPT_LIST, &[]));
        loop {
            let (_, kind, _) = c.option_reply();
            assert_ne!(kind, REP_ERR_TLS_REQD);
            if kind == REP_ACK {
                break;
            }
        }
        // A second STARTTLS is invalid (proto.md "SELECTIVETLS mode").
        c.send(&option(OPT_STARTTLS, &[]));
        assert_eq!(c.option_reply().1, REP_ERR_INVALID);
        c.send(&option(OPT_GO, &go_data("disk", &[])));
        while c.option_reply().1 != REP_ACK {}
        assert!(c.conn.in_transmission());
    }
}

#[test]
fn starttls_with_data_is_invalid() {
    let mut c = tls_client(TlsPolicy::On);
    c.send(&option(OPT_STARTTLS, b"x"));
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    assert!(!c.conn.starttls_pending());
}

#[test]
fn tls_on_also_serves_plaintext() {
    let mut c = tls_client(TlsPolicy::On);
    c.send(&option(OPT_GO, &go_data("disk", &[])));
    while c.option_reply().1 != REP_ACK {}
    assert!(c.conn.in_transmission());
}

#[test]
fn tls_require_refuses_every_other_option_and_closes_on_export_name() {
    let mut c = tls_client(TlsPolicy::Require);
    for opt in [OPT_LIST, OPT_GO, OPT_INFO, OPT_STRUCTURED_REPLY, 4242] {
        let data = if opt == OPT_GO || opt == OPT_INFO {
            go_data("disk", &[])
        } else {
            Vec::new()
        };
        c.send(&option(opt, &data));
        let (o, kind, _) = c.option_reply();
        assert_eq!((o, kind), (opt, REP_ERR_TLS_REQD));
    }
    assert!(!c.conn.in_transmission());
    c.send(&option(OPT_EXPORT_NAME, b"disk"));
    assert!(c.conn.wants_close());
    assert!(!c.conn.in_transmission());
    // ABORT is still acknowledged.
    let mut c = tls_client(TlsPolicy::Require);
    c.send(&option(OPT_ABORT, &[]));
    assert_eq!(c.option_reply().1, REP_ACK);
}

#[test]
fn tls_off_refuses_starttls_by_policy() {
    let mut c = tls_client(TlsPolicy::Off);
    c.send(&option(OPT_STARTTLS, &[]));
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
}
