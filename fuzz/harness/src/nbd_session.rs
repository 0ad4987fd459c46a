//! `nbd_session`: the NBD engine (`net/nbd`) as a stateful session over an
//! in-memory backend that checks every call it gets.
//!
//! Input: byte 0 picks the engine limits, whether the backend fails
//! some calls and whether export `odd` becomes read-only mid-session
//! (the engine must then ask [`Backend::check_write`] and never write it), bytes 1..9 seed the chunking of input and output and the
//! clock, the rest is what the client sends (handshake, then requests).
//!
//! Checked: no panic; a read-only export is never written, trimmed or
//! zeroed; every backend call's range lies inside the export and no
//! buffer is longer than the advertised maximum block size; the session
//! never wedges ([`crate::session::drive`]).

use daxbox_nbd::{
    Backend, BackendError, Connection, ExportHandle, ExportInfo, ExportKind, Extent, ServerConfig,
    ZeroFlags,
};
use daxbox_netstack::TcpService;

use crate::input::{Input, Rng};
use crate::session;

/// One export of the fake backend.
#[derive(Debug, Clone)]
pub struct MemExport {
    /// Its name.
    pub name: &'static str,
    /// Its bytes (the export's size is their length).
    pub data: Vec<u8>,
    /// Writes must never reach it.
    pub read_only: bool,
    /// `NBD_CMD_TRIM` is advertised.
    pub can_trim: bool,
}

/// The exports every session sees: a writable disk, a read-only disk, a
/// writable disk whose size is not a multiple of 512, and an empty one.
pub fn standard_exports() -> Vec<MemExport> {
    let pattern = |len: usize| (0..len).map(|i| (i * 7 + 1) as u8).collect::<Vec<u8>>();
    vec![
        MemExport {
            name: "disk",
            data: pattern(256 * 1024),
            read_only: false,
            can_trim: true,
        },
        MemExport {
            name: "ro",
            data: pattern(64 * 1024),
            read_only: true,
            can_trim: true,
        },
        MemExport {
            name: "odd",
            data: pattern(12_345),
            read_only: false,
            can_trim: false,
        },
        MemExport {
            name: "empty",
            data: Vec::new(),
            read_only: false,
            can_trim: true,
        },
    ]
}

/// An in-memory [`Backend`] that asserts the engine's promises.
#[derive(Debug)]
pub struct CheckedBackend {
    /// The exports.
    pub exports: Vec<MemExport>,
    /// Largest buffer the engine may pass (its `max_block_size`).
    pub max_block: usize,
    /// Every `fail_every`th storage call fails (0: none).
    pub fail_every: u32,
    /// At this `check_write` call export `odd` becomes read-only (as a
    /// file does when a read-only rule starts to cover it); 0: never.
    pub freeze_after: u32,
    calls: u32,
    checks: u32,
}

impl CheckedBackend {
    /// A backend over `exports`.
    pub fn new(exports: Vec<MemExport>, max_block: usize, fail_every: u32) -> Self {
        Self {
            exports,
            max_block,
            fail_every,
            freeze_after: 0,
            calls: 0,
            checks: 0,
        }
    }

    fn export(&self, handle: ExportHandle) -> &MemExport {
        usize::try_from(handle.0)
            .ok()
            .and_then(|i| self.exports.get(i))
            .unwrap_or_else(|| panic!("engine used handle {handle:?} the backend never gave out"))
    }

    /// Checks a call's range; returns it as indices.
    fn range(&self, what: &str, handle: ExportHandle, offset: u64, len: u64) -> (usize, usize) {
        let export = self.export(handle);
        let end = offset
            .checked_add(len)
            .unwrap_or_else(|| panic!("{what}: offset {offset} + length {len} overflows"));
        assert!(
            end <= export.data.len() as u64,
            "{what}: {offset}+{len} outside export {} of {} bytes",
            export.name,
            export.data.len()
        );
        (offset as usize, end as usize)
    }

    fn writable(&self, what: &str, handle: ExportHandle) {
        let export = self.export(handle);
        assert!(
            !export.read_only,
            "{what} reached read-only export {}",
            export.name
        );
    }

    /// Counts a storage call; true when this one is to fail.
    fn fails(&mut self) -> bool {
        self.calls = self.calls.wrapping_add(1);

        self.fail_every != 0 && self.calls.is_multiple_of(self.fail_every)
    }
}

impl Backend for CheckedBackend {
    fn export_count(&self) -> usize {
        self.exports.len()
    }

    fn export_name(&self, index: usize) -> Option<String> {
        self.exports.get(index).map(|e| e.name.to_string())
    }

    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        let index = if name.is_empty() {
            0
        } else {
            self.exports
                .iter()
                .position(|e| e.name == name)
                .ok_or(BackendError::NoSuchExport)?
        };
        Ok(ExportHandle(index as u64))
    }

    fn info(&self, export: ExportHandle) -> Option<ExportInfo> {
        let e = self.exports.get(usize::try_from(export.0).ok()?)?;
        Some(ExportInfo {
            name: e.name.to_string(),
            description: String::from("fuzz"),
            size: e.data.len() as u64,
            read_only: e.read_only,
            kind: ExportKind::File,
            can_trim: e.can_trim,
            can_fast_zero: true,
            multi_conn: true,
        })
    }

    fn check_write(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        // A request boundary: the previous write's payload is complete.
        self.checks = self.checks.wrapping_add(1);
        if self.freeze_after != 0 && self.checks == self.freeze_after {
            for export in self.exports.iter_mut().filter(|e| e.name == "odd") {
                export.read_only = true;
            }
        }
        if self.export(export).read_only {
            Err(BackendError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn read(
        &mut self,
        export: ExportHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), BackendError> {
        assert!(buf.len() <= self.max_block, "read of {} bytes", buf.len());
        let (start, end) = self.range("read", export, offset, buf.len() as u64);
        if self.fails() {
            return Err(BackendError::Io);
        }
        buf.copy_from_slice(&self.export(export).data[start..end]);
        Ok(())
    }

    fn write(
        &mut self,
        export: ExportHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BackendError> {
        assert!(
            data.len() <= self.max_block,
            "write of {} bytes",
            data.len()
        );
        self.writable("write", export);
        let (start, end) = self.range("write", export, offset, data.len() as u64);
        if self.fails() {
            return Err(BackendError::NoSpace);
        }
        self.exports[export.0 as usize].data[start..end].copy_from_slice(data);
        Ok(())
    }

    fn persist(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.range("persist", export, offset, len);
        if self.fails() {
            return Err(BackendError::Io);
        }
        Ok(())
    }

    fn flush(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        self.export(export);
        if self.fails() {
            return Err(BackendError::Io);
        }
        Ok(())
    }

    fn trim(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.writable("trim", export);
        assert!(self.export(export).can_trim, "trim on an export without it");
        let (start, end) = self.range("trim", export, offset, len);
        if self.fails() {
            return Err(BackendError::Io);
        }
        self.exports[export.0 as usize].data[start..end].fill(0);
        Ok(())
    }

    fn write_zeroes(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), BackendError> {
        self.writable("write_zeroes", export);
        let (start, end) = self.range("write_zeroes", export, offset, len);
        if flags.fast && self.fails() {
            return Err(BackendError::NotSupported);
        }
        self.exports[export.0 as usize].data[start..end].fill(0);
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
        let (start, end) = self.range("block_status", export, offset, len);
        assert!(max_extents > 0, "block status asked for no extents");
        if self.fails() {
            return Err(BackendError::Io);
        }
        // 4 KiB pieces, holes where all zero; the first and last may be
        // partial.
        let data = &self.export(export).data;
        let mut at = start;
        while at < end && out.len() < max_extents {
            let piece_end = ((at / 4096 + 1) * 4096).min(end);
            let hole = data[at..piece_end].iter().all(|&b| b == 0);
            let len = (piece_end - at) as u64;
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += len,
                _ => out.push(if hole {
                    Extent::hole(len)
                } else {
                    Extent::data(len)
                }),
            }
            at = piece_end;
        }
        Ok(())
    }

    fn cache(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.range("cache", export, offset, len);
        Ok(())
    }
}

/// The engine and a [`CheckedBackend`] as one [`TcpService`], so the
/// session driver runs it like the listener runs the storage service.
pub struct EngineService {
    /// The backend.
    pub backend: CheckedBackend,
    config: ServerConfig,
}

impl EngineService {
    /// The engine with `config` over `backend`.
    pub fn new(backend: CheckedBackend, config: ServerConfig) -> Self {
        Self { backend, config }
    }
}

impl TcpService for EngineService {
    type Connection = Connection;

    fn accept(&mut self, now_ms: u64) -> Connection {
        Connection::new(self.config.clone(), now_ms)
    }

    fn receive(&mut self, conn: &mut Connection, data: &[u8], now_ms: u64) -> usize {
        conn.receive(data, &mut self.backend, now_ms)
    }

    fn produce(&mut self, conn: &mut Connection, out: &mut [u8], _now_ms: u64) -> usize {
        conn.produce(out, &mut self.backend)
    }

    fn wants_close(&self, conn: &Connection) -> bool {
        conn.wants_close()
    }

    fn deadline(&self, conn: &Connection) -> Option<u64> {
        conn.poll_deadline()
    }

    fn has_work(&self, conn: &Connection) -> bool {
        conn.has_work()
    }

    fn step(&mut self, conn: &mut Connection, _now_ms: u64) -> bool {
        conn.step(&mut self.backend)
    }
}

/// Engine limits picked by the mode byte: the defaults, or small ones
/// that make backpressure, stalls and `TOO_BIG` reachable.
pub fn config_for(mode: u8) -> ServerConfig {
    let mut config = ServerConfig::default();
    if mode & 1 != 0 {
        config.max_block_size = 64 * 1024;
        config.max_in_flight = 2;
        config.max_queued_bytes = 512;
        config.max_option_len = 64;
        config.max_extents = 3;
    }
    if mode & 2 != 0 {
        config.allow_list = false;
    }
    config
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut rng = Rng::new(input.u64());
    let stream = input.rest();
    let config = config_for(mode);
    let fail_every = if mode & 4 != 0 {
        3 + u32::from(mode >> 4)
    } else {
        0
    };
    let mut backend = CheckedBackend::new(
        standard_exports(),
        config.max_block_size as usize,
        fail_every,
    );
    if mode & 8 != 0 {
        backend.freeze_after = 2;
    }

    let original_ro: Vec<(usize, Vec<u8>)> = backend
        .exports
        .iter()
        .enumerate()
        .filter(|(_, e)| e.read_only)
        .map(|(i, e)| (i, e.data.clone()))
        .collect();
    let mut service = EngineService::new(backend, config);
    let outcome = session::drive(&mut service, stream, &mut rng);
    if outcome.produced > 0 {
        assert!(
            session::starts_like(&outcome.head, &daxbox_nbd::wire::NBDMAGIC.to_be_bytes()),
            "the first bytes are not the NBD greeting: {:?}",
            outcome.head
        );
    }
    for (index, bytes) in original_ro {
        assert!(
            service.backend.exports[index].data == bytes,
            "read-only export {} changed",
            service.backend.exports[index].name
        );
    }
}
