//! The NBD service: the `daxbox-nbd` protocol engine, served on a TCP port
//! by the network stack's listener framework, over the storage volumes.
//!
//! Exports: every daxfs file (named by its file name; `pmemN:NAME` names a
//! file on a particular device when two devices hold the same name) and
//! every device exported raw (`export_raw=pmemN`). `readonly=NAME` in the
//! boot config makes an export read-only.
//!
//! Data path: READ copies straight from pmem into smoltcp's transmit
//! buffer; WRITE copies straight from the receive buffer into pmem (cached
//! stores, flushed line by line as they land); FLUSH and FUA are a fence,
//! after which the reply is sent.

use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::OnceCell;
use daxbox_nbd::{
    Backend, BackendError, Connection, ExportHandle, ExportInfo, ExportKind, Extent, Server,
    ServerConfig, ZeroFlags,
};
use daxbox_netstack::TcpService;
use daxbox_persist::PersistentMemory;
use daxfs::{Error as FsError, FileId};
use spin::Mutex;

use crate::pmem::PmemRegion;
use crate::shell::{Command, Context};
use crate::storage::{Role, Storage, STORAGE};
use crate::{config, println};

/// What an export handle points at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    File { volume: usize, file: FileId },
    Raw { volume: usize },
}

/// Counters and connection list for the `nbd` command.
struct Status {
    connections: Vec<(u64, String, daxbox_nbd::ConnectionStats)>,
}

static STATUS: Mutex<Status> = Mutex::new(Status {
    connections: Vec::new(),
});

/// The TCP service: one engine connection per client.
pub struct NbdService {
    server: Server,
    /// Export handles handed out so far (index = handle).
    targets: Vec<Target>,
    next_id: u64,
}

/// How long a connection the server has finished with (after
/// `NBD_CMD_DISC`, a protocol error or a refused handshake) may wait for the
/// client to close its end. The server's FIN leaves smoltcp in FIN-WAIT-2,
/// which has no timer of its own: a client that never closes would pin the
/// socket and its buffers forever, and enough of them would lock everyone
/// out (the listener serves a bounded number of connections).
const LINGER_MS: u64 = 20_000;

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
}

impl NbdService {
    /// A service with the default limits (32 MiB requests, 256 in flight).
    pub fn new() -> Self {
        Self {
            server: Server::new(ServerConfig::default()),
            targets: Vec::new(),
            next_id: 1,
        }
    }

    fn publish(&self, connection: &NbdConnection) {
        let mut status = STATUS.lock();
        let name = connection.engine.export_name().unwrap_or("(handshake)");
        let stats = *connection.engine.stats();
        match status.connections.iter_mut().find(|c| c.0 == connection.id) {
            Some(entry) => {
                if entry.1 != name {
                    entry.1 = name.to_string();
                }
                entry.2 = stats;
            }
            None => status
                .connections
                .push((connection.id, name.to_string(), stats)),
        }
    }
}

impl Default for NbdService {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpService for NbdService {
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
        let mut storage = STORAGE.lock();
        let mut backend = StorageBackend::new(&mut storage, &mut self.targets);
        let used = conn.engine.receive(data, &mut backend, now_ms);
        drop(storage);
        conn.note_closing(now_ms);
        self.publish(conn);
        used
    }

    fn produce(&mut self, conn: &mut NbdConnection, out: &mut [u8], now_ms: u64) -> usize {
        let mut storage = STORAGE.lock();
        let mut backend = StorageBackend::new(&mut storage, &mut self.targets);
        let written = conn.engine.produce(out, &mut backend);
        drop(storage);
        conn.note_closing(now_ms);
        if written > 0 {
            self.publish(conn);
        }
        written
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
        STATUS.lock().connections.retain(|c| c.0 != conn.id);
    }
}

/// The engine's view of the storage volumes for one call.
struct StorageBackend<'a> {
    storage: &'a mut Storage,
    targets: &'a mut Vec<Target>,
    /// Export names, listed once per call on first use: `NBD_OPT_LIST`
    /// asks for the count and then every name by index.
    names: OnceCell<Vec<String>>,
}

/// Every export name, in device order: raw devices by device name, files
/// by file name, or `pmemN:NAME` when an earlier device has the same name.
fn export_names(storage: &Storage) -> Vec<String> {
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

impl<'a> StorageBackend<'a> {
    fn new(storage: &'a mut Storage, targets: &'a mut Vec<Target>) -> Self {
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
    fn raw_memory(&mut self, volume: usize) -> Result<&mut PmemRegion, BackendError> {
        match self.storage.volumes.get_mut(volume).map(|v| &mut v.role) {
            Some(Role::Raw(block)) => Ok(block.memory_mut()),
            _ => Err(BackendError::NoSuchExport),
        }
    }

    /// The filesystem of volume `volume`.
    fn file_system(
        &mut self,
        volume: usize,
    ) -> Result<&mut daxfs::Filesystem<PmemRegion>, BackendError> {
        self.storage
            .filesystem(volume)
            .ok_or(BackendError::NoSuchExport)
    }

    fn read_only(name: &str) -> bool {
        config::get().readonly.iter().any(|r| r == name)
    }
}

impl Backend for StorageBackend<'_> {
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
                    read_only: Self::read_only(&volume.device),
                    kind: ExportKind::Raw,
                    can_trim: true,
                    can_fast_zero: true,
                    multi_conn: true,
                })
            }
            Target::File { volume, file } => {
                let device = &self.storage.volumes.get(volume)?.device;
                let Role::Filesystem(fs) = &self.storage.volumes.get(volume)?.role else {
                    return None;
                };
                let stat = fs.stat(file).ok()?;
                Some(ExportInfo {
                    description: alloc::format!("daxfs file on {}", device),
                    read_only: Self::read_only(&stat.name),
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
            Target::Raw { volume } => {
                let Some(Role::Raw(block)) = self.storage.volumes.get(volume).map(|v| &v.role)
                else {
                    return Err(BackendError::NoSuchExport);
                };
                block
                    .memory()
                    .read(offset, buf)
                    .map_err(|_| BackendError::Invalid)
            }
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
            Target::Raw { volume } => {
                // pmem is byte-addressable: store, then write the lines back
                // now so a later FLUSH is only a fence.
                let memory = self.raw_memory(volume)?;
                memory
                    .write_flush(offset, data)
                    .map_err(|_| BackendError::Invalid)
            }
            Target::File { volume, file } => {
                let fs = self.file_system(volume)?;
                fs.write(file, offset, data).map_err(fs_error)
            }
        }
    }

    fn flush(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        match self.target(export)? {
            Target::Raw { volume } => {
                self.raw_memory(volume)?.fence();
                Ok(())
            }
            Target::File { volume, file } => {
                let fs = self.file_system(volume)?;
                fs.persist(file).map_err(fs_error)
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
            Target::File { volume, file } => {
                let fs = self.file_system(volume)?;
                fs.write_zeroes(file, offset, len, !flags.no_hole)
                    .map_err(fs_error)
            }
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

/// The `nbd` shell command.
pub const COMMANDS: &[Command] = &[Command {
    name: "nbd",
    usage: "",
    help: "NBD exports and connections with byte and request counters",
    run: nbd,
}];

fn nbd(_: &mut Context, args: &[&str]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: nbd".into());
    }
    let mut storage = STORAGE.lock();
    let mut targets = Vec::new();
    let backend = StorageBackend::new(&mut storage, &mut targets);
    let names = backend.names();
    println!(
        "NBD on port {}: {} export(s)",
        config::get().nbd_port,
        names.len()
    );
    for name in names {
        let read_only = StorageBackend::read_only(name);
        println!(
            "  export {}{}",
            name,
            if read_only { " (read-only)" } else { "" }
        );
    }
    drop(storage);
    let status = STATUS.lock();
    println!("{} connection(s)", status.connections.len());
    for (id, export, stats) in &status.connections {
        println!(
            "  #{} {}: {} requests ({} errors), {} bytes in, {} bytes out, read {} written {}",
            id,
            export,
            stats.requests,
            stats.errors,
            stats.bytes_in,
            stats.bytes_out,
            stats.read_bytes,
            stats.write_bytes
        );
    }
    Ok(())
}

/// Starts the NBD listener on the configured port (after `net::init`).
pub fn start() {
    let port = config::get().nbd_port;
    let mut listener = daxbox_netstack::ListenerConfig::new(port);
    // Room for a 256 KiB request or reply in flight each way per client.
    listener.rx_buffer = 256 * 1024;
    listener.tx_buffer = 256 * 1024;
    let service = daxbox_netstack::Listener::new(listener, NbdService::new());
    match crate::net::add_listener(service.boxed()) {
        Ok(()) => println!("nbd: listening on port {}", port),
        Err(error) => println!("nbd: not started: {}", error),
    }
}
