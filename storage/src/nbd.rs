//! The NBD service over the storage volumes: the engine's [`Backend`] and
//! the network stack's [`TcpService`].
//!
//! Exports: every daxfs file (named by its file name; `pmemN:NAME` names a
//! file on a particular device when two devices hold the same name) and
//! every device exported raw (`export_raw=pmemN`, by device name).
//! `readonly=NAME` makes an export read-only; the default export (`""`) is
//! the first one, as nbdkit and qemu-nbd serve their single export for it.
//! `NBD_OPT_LIST` names every export unless the boot config says
//! `nbd_list=off` ([`engine_config`]); then it is answered with
//! `NBD_REP_ERR_POLICY` and clients must know the name they want.
//!
//! Data path: READ copies straight from pmem into the transmit buffer the
//! caller passes (smoltcp's, in the kernel); WRITE copies straight from the
//! receive buffer into pmem (raw exports: cached stores written back line
//! by line as they land); FLUSH and FUA make the data durable (a fence, or
//! daxfs `persist`) before the reply is sent.

use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::OnceCell;
use core::marker::PhantomData;

use daxbox_bootconfig::BootConfig;
use daxbox_nbd::{
    Backend, BackendError, Connection, ExportHandle, ExportInfo, ExportKind, Extent, Server,
    ServerConfig, ZeroFlags,
};
use daxbox_netstack::TcpService;
use daxbox_persist::PersistentMemory;
use daxfs::{Error as FsError, FileId, Filesystem};

use crate::{ConnectionStatus, Role, Storage};

/// How the service reaches the storage set for one call: the kernel locks
/// its static, the host server borrows its own.
pub trait SharedStorage<M: PersistentMemory> {
    /// Runs `f` with exclusive access to the storage set.
    fn with<R>(&self, f: impl FnOnce(&mut Storage<M>) -> R) -> R;
}

/// What an export handle points at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    File { volume: usize, file: FileId },
    Raw { volume: usize },
}

/// How long a connection the server has finished with (after
/// `NBD_CMD_DISC`, a protocol error or a refused handshake) may wait for the
/// client to close its end. The server's FIN leaves smoltcp in FIN-WAIT-2,
/// which has no timer of its own: a client that never closes would pin the
/// socket and its buffers forever, and enough of them would lock everyone
/// out (the listener serves a bounded number of connections).
pub const LINGER_MS: u64 = 20_000;

/// The TCP service: one engine connection per client.
pub struct NbdService<M: PersistentMemory, S: SharedStorage<M>> {
    shared: S,
    server: Server,
    /// Export handles handed out so far (index = handle).
    targets: Vec<Target>,
    next_id: u64,
    memory: PhantomData<fn() -> M>,
}

/// Per-connection state.
pub struct NbdConnection {
    id: u64,
    engine: Connection,
    /// When the engine first wanted the connection closed.
    closing_since: Option<u64>,
}

impl NbdConnection {
    /// Notes the time the engine finished with the connection.
    fn note_closing(&mut self, now_ms: u64) {
        if self.closing_since.is_none() && self.engine.wants_close() {
            self.closing_since = Some(now_ms);
        }
    }

    /// Updates this connection's line in the `nbd` listing.
    fn publish<M: PersistentMemory>(&self, storage: &mut Storage<M>) {
        let name = self.engine.export_name().unwrap_or("(handshake)");
        let stats = *self.engine.stats();
        match storage.connections.iter_mut().find(|c| c.id == self.id) {
            Some(entry) => {
                if entry.export != name {
                    entry.export = name.to_string();
                }
                entry.stats = stats;
            }
            None => storage.connections.push(ConnectionStatus {
                id: self.id,
                export: name.to_string(),
                stats,
            }),
        }
    }
}

/// The engine policy the boot config asks for: the default limits, with
/// `NBD_OPT_LIST` answered only when `nbd_list=on` (the default).
pub fn engine_config(boot: &BootConfig) -> ServerConfig {
    ServerConfig {
        allow_list: boot.nbd_list,
        ..ServerConfig::default()
    }
}

impl<M: PersistentMemory, S: SharedStorage<M>> NbdService<M, S> {
    /// A service with the default limits (32 MiB requests, 256 in flight).
    pub fn new(shared: S) -> Self {
        Self::with_config(shared, ServerConfig::default())
    }

    /// A service with the policy of the boot config ([`engine_config`]).
    pub fn for_boot_config(shared: S, boot: &BootConfig) -> Self {
        Self::with_config(shared, engine_config(boot))
    }

    /// A service with the engine limits of `config`.
    pub fn with_config(shared: S, config: ServerConfig) -> Self {
        Self {
            shared,
            server: Server::new(config),
            targets: Vec::new(),
            next_id: 1,
            memory: PhantomData,
        }
    }
}

impl<M: PersistentMemory, S: SharedStorage<M>> TcpService for NbdService<M, S> {
    type Connection = NbdConnection;

    fn accept(&mut self, now_ms: u64) -> NbdConnection {
        let id = self.next_id;
        self.next_id += 1;
        NbdConnection {
            id,
            engine: self.server.accept(now_ms),
            closing_since: None,
        }
    }

    fn receive(&mut self, conn: &mut NbdConnection, data: &[u8], now_ms: u64) -> usize {
        let targets = &mut self.targets;
        self.shared.with(|storage| {
            let mut backend = StorageBackend::new(storage, targets);
            let used = conn.engine.receive(data, &mut backend, now_ms);
            conn.note_closing(now_ms);
            conn.publish(storage);
            used
        })
    }

    fn produce(&mut self, conn: &mut NbdConnection, out: &mut [u8], now_ms: u64) -> usize {
        let targets = &mut self.targets;
        self.shared.with(|storage| {
            let mut backend = StorageBackend::new(storage, targets);
            let written = conn.engine.produce(out, &mut backend);
            conn.note_closing(now_ms);
            if written > 0 {
                conn.publish(storage);
            }
            written
        })
    }

    fn wants_close(&self, conn: &NbdConnection) -> bool {
        conn.engine.wants_close()
    }

    fn deadline(&self, conn: &NbdConnection) -> Option<u64> {
        // The handshake deadline while negotiating; the linger limit once
        // the server is done (the listener aborts the socket at either).
        let linger = conn
            .closing_since
            .map(|since| since.saturating_add(LINGER_MS));
        match (conn.engine.poll_deadline(), linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn closed(&mut self, conn: NbdConnection) {
        self.server.retire(&conn.engine);
        self.shared
            .with(|storage| storage.connections.retain(|c| c.id != conn.id));
    }
}

/// Every export name, in device order: raw devices by device name, files
/// by file name, or `pmemN:NAME` when an earlier device has the same name.
pub fn export_names<M: PersistentMemory>(storage: &Storage<M>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for volume in &storage.volumes {
        match &volume.role {
            Role::Raw(_) => {
                seen.insert(volume.device.clone());
                names.push(volume.device.clone());
            }
            Role::Filesystem(fs) => {
                let mut after: Option<String> = None;
                loop {
                    let page = fs.list(after.as_deref(), 512);
                    for entry in &page {
                        if seen.insert(entry.name.clone()) {
                            names.push(entry.name.clone());
                        } else {
                            names.push(alloc::format!("{}:{}", volume.device, entry.name));
                        }
                    }
                    match page.last() {
                        Some(last) if page.len() == 512 => after = Some(last.name.clone()),
                        _ => break,
                    }
                }
            }
        }
    }
    names
}

fn fs_error(error: FsError) -> BackendError {
    match error {
        // A write the mount budget cannot hold the metadata for is, to
        // the client, a device that cannot take more: ENOSPC.
        FsError::NoSpace
        | FsError::NoFileSlots
        | FsError::FileTooLarge
        | FsError::OutOfMemory(_) => BackendError::NoSpace,
        FsError::NotFound | FsError::StaleFile => BackendError::Invalid,
        _ => BackendError::Io,
    }
}

/// The engine's view of the storage volumes for one call.
pub struct StorageBackend<'a, M: PersistentMemory> {
    storage: &'a mut Storage<M>,
    targets: &'a mut Vec<Target>,
    /// Export names, listed once per call on first use: `NBD_OPT_LIST`
    /// asks for the count and then every name by index.
    names: OnceCell<Vec<String>>,
}

impl<'a, M: PersistentMemory> StorageBackend<'a, M> {
    fn new(storage: &'a mut Storage<M>, targets: &'a mut Vec<Target>) -> Self {
        Self {
            storage,
            targets,
            names: OnceCell::new(),
        }
    }

    /// Every export name, in device order.
    fn names(&self) -> &[String] {
        self.names.get_or_init(|| export_names(self.storage))
    }

    fn target(&self, export: ExportHandle) -> Result<Target, BackendError> {
        usize::try_from(export.0)
            .ok()
            .and_then(|index| self.targets.get(index).copied())
            .ok_or(BackendError::NoSuchExport)
    }

    /// The pmem behind raw-export volume `volume`.
    fn raw_memory(&mut self, volume: usize) -> Result<&mut M, BackendError> {
        match self.storage.volumes.get_mut(volume).map(|v| &mut v.role) {
            Some(Role::Raw(block)) => Ok(block.memory_mut()),
            _ => Err(BackendError::NoSuchExport),
        }
    }

    /// The filesystem of volume `volume`.
    fn filesystem(&mut self, volume: usize) -> Result<&mut Filesystem<M>, BackendError> {
        self.storage
            .filesystem(volume)
            .ok_or(BackendError::NoSuchExport)
    }
}

impl<M: PersistentMemory> Backend for StorageBackend<'_, M> {
    fn export_count(&self) -> usize {
        self.names().len()
    }

    fn export_name(&self, index: usize) -> Option<String> {
        self.names().get(index).cloned()
    }

    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        // The default export ("") is the first export, as nbdkit and
        // qemu-nbd serve their single export for it.
        let name = if name.is_empty() {
            self.names()
                .first()
                .cloned()
                .ok_or(BackendError::NoSuchExport)?
        } else {
            name.to_string()
        };
        let volumes = &self.storage.volumes;
        let target = if let Some(volume) = volumes
            .iter()
            .position(|v| v.device == name && matches!(v.role, Role::Raw(_)))
        {
            Target::Raw { volume }
        } else if volumes.iter().any(|v| v.device == name) {
            // A device name that is not raw-exported is no export.
            return Err(BackendError::NoSuchExport);
        } else {
            let found = self
                .storage
                .lookup(&name)
                .map_err(|_| BackendError::NoSuchExport)?;
            Target::File {
                volume: found.volume,
                file: found.file,
            }
        };
        let index = match self.targets.iter().position(|t| *t == target) {
            Some(index) => index,
            None => {
                self.targets.push(target);
                self.targets.len() - 1
            }
        };
        Ok(ExportHandle(index as u64))
    }

    fn info(&self, export: ExportHandle) -> Option<ExportInfo> {
        let target = self.target(export).ok()?;
        match target {
            Target::Raw { volume } => {
                let volume = self.storage.volumes.get(volume)?;
                let Role::Raw(block) = &volume.role else {
                    return None;
                };
                Some(ExportInfo {
                    name: volume.device.clone(),
                    description: alloc::format!("raw pmem device {}", volume.device),
                    size: block.memory().len(),
                    read_only: self.storage.is_read_only(&volume.device),
                    kind: ExportKind::Raw,
                    can_trim: true,
                    can_fast_zero: true,
                    multi_conn: true,
                })
            }
            Target::File { volume, file } => {
                let volume = self.storage.volumes.get(volume)?;
                let Role::Filesystem(fs) = &volume.role else {
                    return None;
                };
                let stat = fs.stat(file).ok()?;
                Some(ExportInfo {
                    description: alloc::format!("daxfs file on {}", volume.device),
                    read_only: self.storage.is_read_only(&stat.name),
                    name: stat.name,
                    size: stat.size,
                    kind: ExportKind::File,
                    can_trim: true,
                    can_fast_zero: true,
                    multi_conn: true,
                })
            }
        }
    }

    fn read(
        &mut self,
        export: ExportHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), BackendError> {
        match self.target(export)? {
            Target::Raw { volume } => self
                .raw_memory(volume)?
                .read(offset, buf)
                .map_err(|_| BackendError::Invalid),
            Target::File { volume, file } => {
                let fs = self.filesystem(volume)?;
                let read = fs.read(file, offset, buf).map_err(fs_error)?;
                // The file may have shrunk since the client connected: the
                // part past its end reads as zeros.
                buf[read..].fill(0);
                Ok(())
            }
        }
    }

    fn write(
        &mut self,
        export: ExportHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BackendError> {
        match self.target(export)? {
            // pmem is byte-addressable: store, then write the lines back
            // now so a later FLUSH is only a fence.
            Target::Raw { volume } => self
                .raw_memory(volume)?
                .write_flush(offset, data)
                .map_err(|_| BackendError::Invalid),
            Target::File { volume, file } => self
                .filesystem(volume)?
                .write(file, offset, data)
                .map_err(fs_error),
        }
    }

    fn flush(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        match self.target(export)? {
            Target::Raw { volume } => {
                self.raw_memory(volume)?.fence();
                Ok(())
            }
            Target::File { volume, file } => {
                self.filesystem(volume)?.persist(file).map_err(fs_error)
            }
        }
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
        match self.target(export)? {
            Target::Raw { volume } => {
                let memory = self.raw_memory(volume)?;
                memory
                    .zero(offset, len)
                    .map_err(|_| BackendError::Invalid)?;
                memory.flush(offset, len).map_err(|_| BackendError::Invalid)
            }
            Target::File { volume, file } => self
                .filesystem(volume)?
                .write_zeroes(file, offset, len, !flags.no_hole)
                .map_err(fs_error),
        }
    }

    fn block_status(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        max_extents: usize,
        out: &mut Vec<Extent>,
    ) -> Result<(), BackendError> {
        match self.target(export)? {
            Target::Raw { .. } => {
                out.push(Extent::data(len));
                Ok(())
            }
            Target::File { volume, file } => {
                let fs = self.filesystem(volume)?;
                let segments = fs.extents(file, offset, len).map_err(fs_error)?;
                for segment in segments.iter().take(max_extents.max(1)) {
                    if segment.len == 0 {
                        continue;
                    }
                    out.push(if segment.data {
                        Extent::data(segment.len)
                    } else {
                        Extent::hole(segment.len)
                    });
                }
                if out.is_empty() {
                    out.push(Extent::hole(len));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands;
    use crate::testing::{Fixture, TestMemory, MIB};
    use alloc::vec;
    use core::cell::RefCell;

    fn backend<'a>(
        storage: &'a mut Storage<TestMemory>,
        targets: &'a mut Vec<Target>,
    ) -> StorageBackend<'a, TestMemory> {
        StorageBackend::new(storage, targets)
    }

    /// pmem0 and pmem1 with a file `same` each, `disk` (4 MiB) and
    /// `small` (64 KiB) on pmem0, `ro` read-only, pmem2 raw (8 MiB).
    fn exports() -> Fixture {
        let mut f = Fixture::standard();
        f.ok("create disk 4M");
        f.ok("create same 4K");
        f.ok("create pmem1:same 8K");
        f.ok("create pmem1:only1 4K");
        f.ok("create ro 4K");
        f.ok("write ro 0 readonly-content");
        f.storage.set_read_only(vec!["ro".into()]);
        f
    }

    #[test]
    fn names_duplicates_and_open() {
        let mut f = exports();
        assert_eq!(
            export_names(&f.storage),
            ["disk", "ro", "same", "only1", "pmem1:same", "pmem2"]
        );
        let mut targets = Vec::new();
        let mut b = backend(&mut f.storage, &mut targets);
        assert_eq!(b.export_count(), 6);
        assert_eq!(b.export_name(4).as_deref(), Some("pmem1:same"));
        assert_eq!(b.export_name(6), None);
        // The default export is the first one; handles are reused.
        let default = b.open("").unwrap();
        assert_eq!(b.open("disk").unwrap(), default);
        let same0 = b.open("same").unwrap();
        let same1 = b.open("pmem1:same").unwrap();
        assert_ne!(same0, same1);
        assert_eq!(b.info(same0).unwrap().size, 4096);
        assert_eq!(b.info(same1).unwrap().size, 8192);
        assert_eq!(b.info(same1).unwrap().description, "daxfs file on pmem1");
        assert_eq!(b.open("pmem0:same").unwrap(), same0);
        for missing in [
            "nothing",
            "pmem0",
            "pmem1",
            "pmem3",
            "pmem3:x",
            "pmem9:x",
            "pmem0:only1",
        ] {
            assert_eq!(
                b.open(missing),
                Err(BackendError::NoSuchExport),
                "{missing}"
            );
        }
        assert_eq!(b.info(ExportHandle(99)), None);
        let raw = b.open("pmem2").unwrap();
        assert_eq!(
            b.info(raw).unwrap(),
            ExportInfo {
                name: "pmem2".into(),
                description: "raw pmem device pmem2".into(),
                size: 8 * MIB,
                read_only: false,
                kind: ExportKind::Raw,
                can_trim: true,
                can_fast_zero: true,
                multi_conn: true,
            }
        );
        let ro = b.open("ro").unwrap();
        let info = b.info(ro).unwrap();
        assert!(info.read_only && info.kind == ExportKind::File, "{info:?}");
        assert!(!b.info(default).unwrap().read_only);
    }

    #[test]
    fn no_exports_means_no_default_export() {
        let mut f = Fixture::empty();
        let mut targets = Vec::new();
        let mut b = backend(&mut f.storage, &mut targets);
        assert_eq!(b.export_count(), 0);
        assert_eq!(b.open(""), Err(BackendError::NoSuchExport));
    }

    #[test]
    fn file_export_io_holes_and_errors() {
        let mut f = exports();
        let mut targets = Vec::new();
        let mut b = backend(&mut f.storage, &mut targets);
        let disk = b.open("disk").unwrap();
        let mut status = Vec::new();
        b.block_status(disk, 0, 4 * MIB, 16, &mut status).unwrap();
        assert_eq!(status, [Extent::hole(4 * MIB)]);
        b.write(disk, MIB, &[0xab; 8192]).unwrap();
        b.persist(disk, MIB, 8192).unwrap();
        b.flush(disk).unwrap();
        let mut buf = vec![0u8; 8192];
        b.read(disk, MIB, &mut buf).unwrap();
        assert_eq!(buf, [0xab; 8192]);
        status.clear();
        b.block_status(disk, 0, 4 * MIB, 16, &mut status).unwrap();
        assert!(status.iter().any(|e| !e.hole), "{status:?}");
        assert_eq!(status.iter().map(|e| e.len).sum::<u64>(), 4 * MIB);
        // Write-zeroes keeps the data allocated with NO_HOLE, trim punches.
        b.write_zeroes(
            disk,
            MIB,
            4096,
            ZeroFlags {
                no_hole: true,
                fast: false,
            },
        )
        .unwrap();
        b.read(disk, MIB, &mut buf).unwrap();
        assert_eq!(&buf[..4096], &[0u8; 4096][..]);
        assert_eq!(&buf[4096..], &[0xab; 4096][..]);
        b.trim(disk, 0, 4 * MIB).unwrap();
        status.clear();
        b.block_status(disk, 0, 4 * MIB, 16, &mut status).unwrap();
        assert_eq!(status, [Extent::hole(4 * MIB)]);
        b.read(disk, MIB, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 8192]);
        // Past the end of the filesystem's space: ENOSPC.
        let huge = b.open("same").unwrap();
        let big = vec![1u8; (17 * MIB) as usize];
        assert_eq!(b.write(huge, 0, &big), Err(BackendError::NoSpace));
        assert_eq!(
            b.read(ExportHandle(42), 0, &mut buf),
            Err(BackendError::NoSuchExport)
        );
    }

    #[test]
    fn a_file_that_shrank_reads_zeros_past_its_end() {
        let mut f = exports();
        let mut targets = Vec::new();
        let ro = backend(&mut f.storage, &mut targets).open("ro").unwrap();
        f.ok("truncate ro 8");
        let mut b = backend(&mut f.storage, &mut targets);
        let mut buf = [0xffu8; 16];
        b.read(ro, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"readonly\0\0\0\0\0\0\0\0");
        // A removed file's handle is stale: EINVAL.
        f.ok("rm ro");
        let mut b = backend(&mut f.storage, &mut targets);
        assert_eq!(b.read(ro, 0, &mut buf), Err(BackendError::Invalid));
    }

    #[test]
    fn raw_export_io() {
        let mut f = exports();
        let mut targets = Vec::new();
        let mut b = backend(&mut f.storage, &mut targets);
        let raw = b.open("pmem2").unwrap();
        b.write(raw, 4096, b"raw bytes").unwrap();
        b.flush(raw).unwrap();
        let mut buf = [0u8; 9];
        b.read(raw, 4096, &mut buf).unwrap();
        assert_eq!(&buf, b"raw bytes");
        b.write_zeroes(raw, 4096, 4, ZeroFlags::default()).unwrap();
        b.read(raw, 4096, &mut buf).unwrap();
        assert_eq!(&buf, b"\0\0\0\0bytes");
        let mut status = Vec::new();
        b.block_status(raw, 0, 8 * MIB, 16, &mut status).unwrap();
        assert_eq!(status, [Extent::data(8 * MIB)]);
        assert_eq!(b.read(raw, 8 * MIB, &mut buf), Err(BackendError::Invalid));
        assert_eq!(b.write(raw, 8 * MIB - 1, b"xx"), Err(BackendError::Invalid));
        drop(b);
        assert_eq!(&f.env.image("pmem2")[4100..4105], b"bytes");
    }

    /// The storage set behind a `RefCell`, as a host loop holds it.
    struct Cell(RefCell<Fixture>);

    impl SharedStorage<TestMemory> for &Cell {
        fn with<R>(&self, f: impl FnOnce(&mut Storage<TestMemory>) -> R) -> R {
            f(&mut self.0.borrow_mut().storage)
        }
    }

    /// Feeds `input` and drains every reply byte.
    fn exchange<S: TcpService>(
        service: &mut S,
        conn: &mut S::Connection,
        input: &[u8],
        now: u64,
    ) -> Vec<u8> {
        let mut used = 0;
        let mut output = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = service.produce(conn, &mut buf, now);
            output.extend_from_slice(&buf[..n]);
            let m = service.receive(conn, &input[used..], now);
            used += m;
            if n == 0 && m == 0 {
                break;
            }
        }
        assert_eq!(used, input.len(), "every byte consumed");
        output
    }

    fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut bytes = 0x2560_9513u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&0u16.to_be_bytes());
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes
    }

    #[test]
    fn service_session_counters_and_linger() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let mut conn = service.accept(0);
        let greeting = exchange(&mut service, &mut conn, &[], 0);
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        // Client flags (fixed newstyle, no zeroes), then NBD_OPT_GO "disk".
        let mut hello = 3u32.to_be_bytes().to_vec();
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&7u32.to_be_bytes());
        hello.extend_from_slice(&10u32.to_be_bytes());
        hello.extend_from_slice(&4u32.to_be_bytes());
        hello.extend_from_slice(b"disk");
        hello.extend_from_slice(&0u16.to_be_bytes());
        let replies = exchange(&mut service, &mut conn, &hello, 1);
        // The last reply is NBD_REP_ACK (type 1) to option 7.
        let ack = &replies[replies.len() - 20..];
        assert_eq!(&ack[8..16], &[0, 0, 0, 7, 0, 0, 0, 1]);
        // WRITE 4 KiB at 0, then READ it back.
        let mut input = request(1, 11, 0, 4096);
        input.extend_from_slice(&[0x5a; 4096]);
        input.extend_from_slice(&request(0, 12, 0, 4096));
        let replies = exchange(&mut service, &mut conn, &input, 2);
        assert_eq!(replies.len(), 16 + 16 + 4096);
        assert_eq!(&replies[4..16], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);
        assert_eq!(&replies[32..], &[0x5a; 4096][..]);
        // Bytes in: flags 4 + GO 26 + WRITE 28 + 4096 + READ 28; out: the
        // greeting, the GO replies, two reply headers and 4096 bytes.
        let mut out = String::new();
        commands::nbd(&mut cell.0.borrow_mut().storage, &[], 10809, &mut out).unwrap();
        assert!(
            out.ends_with(
                "1 connection(s)\n  #1 disk: 2 requests (0 errors), 4182 bytes in, 4232 bytes out, \
                 read 4096 written 4096\n"
            ),
            "{out}"
        );
        assert_eq!(service.deadline(&conn), None);
        // NBD_CMD_DISC: the engine is done; the linger limit starts.
        let replies = exchange(&mut service, &mut conn, &request(2, 13, 0, 0), 5_000);
        assert!(replies.is_empty());
        assert!(service.wants_close(&conn));
        assert_eq!(service.deadline(&conn), Some(5_000 + LINGER_MS));
        service.closed(conn);
        assert!(cell.0.borrow().storage.connections().is_empty());
    }

    /// Client flags (fixed newstyle) and an `NBD_OPT_LIST`; returns the
    /// reply types the service sends back.
    fn list_reply_types<S: TcpService>(service: &mut S) -> Vec<u32> {
        let mut conn = service.accept(0);
        let greeting = exchange(service, &mut conn, &[], 0);
        assert_eq!(greeting.len(), 18);
        let mut hello = 1u32.to_be_bytes().to_vec();
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&3u32.to_be_bytes());
        hello.extend_from_slice(&0u32.to_be_bytes());
        let mut replies = &exchange(service, &mut conn, &hello, 1)[..];
        let mut types = Vec::new();
        // Option reply: magic 8, option 4, type 4, length 4, data.
        while replies.len() >= 20 {
            assert_eq!(&replies[8..12], &3u32.to_be_bytes());
            types.push(u32::from_be_bytes(replies[12..16].try_into().unwrap()));
            let len = u32::from_be_bytes(replies[16..20].try_into().unwrap()) as usize;
            replies = &replies[20 + len..];
        }
        assert!(replies.is_empty());
        service.closed(conn);
        types
    }

    #[test]
    fn boot_config_nbd_list_turns_the_export_listing_off() {
        const REP_ACK: u32 = 1;
        const REP_SERVER: u32 = 2;
        const REP_ERR_POLICY: u32 = 0x8000_0002;
        let cell = Cell(RefCell::new(exports()));
        let (on, _) = daxbox_bootconfig::parse("");
        assert_eq!(engine_config(&on), ServerConfig::default());
        let mut service = NbdService::for_boot_config(&cell, &on);
        let types = list_reply_types(&mut service);
        assert_eq!(types.last(), Some(&REP_ACK), "{types:x?}");
        assert!(types.len() > 1, "{types:x?}");
        assert!(types[..types.len() - 1].iter().all(|t| *t == REP_SERVER));

        let (off, warnings) = daxbox_bootconfig::parse("nbd_list=off\n");
        assert!(warnings.is_empty());
        assert!(!engine_config(&off).allow_list);
        let mut service = NbdService::for_boot_config(&cell, &off);
        assert_eq!(list_reply_types(&mut service), [REP_ERR_POLICY]);

        // A value that cannot be applied fails closed.
        let (bad, _) = daxbox_bootconfig::parse("nbd_list=maybe\n");
        let mut service = NbdService::for_boot_config(&cell, &bad);
        assert_eq!(list_reply_types(&mut service), [REP_ERR_POLICY]);
    }

    #[test]
    fn handshake_deadline_and_connection_numbers() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let first = service.accept(1_000);
        let mut second = service.accept(1_000);
        // The engine's handshake timeout (10 s by default) bounds both.
        assert_eq!(service.deadline(&first), Some(11_000));
        exchange(&mut service, &mut second, &[], 1_000);
        let status = cell.0.borrow().storage.connections().to_vec();
        assert_eq!(status.len(), 1);
        assert_eq!(
            (status[0].id, status[0].export.as_str()),
            (2, "(handshake)")
        );
        service.closed(second);
        service.closed(first);
        assert!(cell.0.borrow().storage.connections().is_empty());
    }
}
