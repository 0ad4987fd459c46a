//! The NBD service over the storage volumes: the engine's [`Backend`] and
//! the network stack's [`TcpService`].
//!
//! Exports: every daxfs file (named by its file name; `pmemN:NAME` names a
//! file on a particular device when two devices hold the same name) and
//! every device exported raw (`export_raw=pmemN`, by device name).
//! `readonly=NAME` makes an export read-only; the default export (`""`) is
//! the first one, as nbdkit and qemu-nbd serve their single export for it.
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

impl<M: PersistentMemory, S: SharedStorage<M>> NbdService<M, S> {
    /// A service with the default limits (32 MiB requests, 256 in flight).
    pub fn new(shared: S) -> Self {
        Self::with_config(shared, ServerConfig::default())
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
        FsError::NoSpace | FsError::NoFileSlots | FsError::FileTooLarge => BackendError::NoSpace,
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
    fn file_system(&mut self, volume: usize) -> Result<&mut Filesystem<M>, BackendError> {
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
                let fs = self.file_system(volume)?;
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
                .file_system(volume)?
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
                self.file_system(volume)?.persist(file).map_err(fs_error)
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
                .file_system(volume)?
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
                let fs = self.file_system(volume)?;
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
