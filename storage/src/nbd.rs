//! The NBD service over the storage volumes: the engine's [`Backend`] and
//! the network stack's [`TcpService`].
//!
//! Exports: every daxfs file and every device exported raw
//! (`export_raw=pmemN`), each under one canonical name
//! ([`crate::canonical_name`]): `NAME` for a file on the default
//! filesystem (pmem0 normally), `pmemN:NAME` for a file on any other
//! device, `pmemN` for a raw device. That name is what `NBD_OPT_LIST`
//! lists and what `NBD_OPT_INFO`/`GO` send back (`NBD_INFO_NAME`),
//! whichever name opened the export; `GO` also accepts `pmem0:NAME` for a
//! default-filesystem file and a bare `NAME` that only another device has
//! (as the shell does). A device name never opens a file. Read-only is
//! the policy of [`crate::readonly`], checked on every write-type request
//! ([`Backend::check_write`]). The default export (`""`) is the first one,
//! as nbdkit and qemu-nbd serve their single export for it.
//! `NBD_OPT_LIST` names every export unless the boot config says
//! `nbd_list=off` ([`engine_config`]); then it is answered with
//! `NBD_REP_ERR_POLICY` and clients must know the name they want.
//!
//! Connections: the kernel's listener serves at most `nbd_max_connections`
//! (64) at once and `nbd_max_per_address` (32) from one address; a client
//! over either is greeted and gets `NBD_REP_ERR_POLICY` with the reason for
//! every option ([`TcpService::refuse`], [`Connection::refused`]). The
//! handshake must finish within 10 s of the accept (not restarted by the
//! client's bytes). A session in the transmission phase has no idle
//! timeout: clients such as the Linux kernel client and qemu sit idle for
//! hours, qemu-nbd has none and nbdkit limits only the handshake
//! (`--timeout`); an idle session counts against both limits, and TCP
//! keep-alive (60 s, peer gone after 180 s) ends sessions whose peer
//! vanished. `NBD_OPT_LIST` is answered a page at a time as the client
//! reads ([`export_names_page`]), and export lookup is O(devices × log
//! files).
//!
//! Data path: READ copies straight from pmem into the transmit buffer the
//! caller passes (smoltcp's, in the kernel); WRITE copies straight from the
//! receive buffer into pmem (raw exports: cached stores written back line
//! by line as they land); FLUSH and FUA make the data durable (a fence, or
//! daxfs `persist`) before the reply is sent.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::OnceCell;
use core::marker::PhantomData;

use daxbox_bootconfig::BootConfig;
use daxbox_nbd::{
    Backend, BackendError, Connection, ExportHandle, ExportInfo, ExportKind, Extent, ListCursor,
    Server, ServerConfig, ZeroFlags,
};
use daxbox_netstack::{Refusal, TcpService};
use daxbox_persist::PersistentMemory;
use daxfs::{Error as FsError, FileId, Filesystem};

use crate::allow::{Client, Decision, Protocol, Reason};
use crate::{is_device_name, ConnectionStatus, Role, Storage};

/// How the service reaches the storage set for one call: the kernel locks
/// its static, the host server borrows its own.
pub trait SharedStorage<M: PersistentMemory> {
    /// Runs `f` with exclusive access to the storage set.
    fn with<R>(&self, f: impl FnOnce(&mut Storage<M>) -> R) -> R;
}

/// What an export handle points at, for one call (`volume` indexes
/// `Storage::volumes` as it is now).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    File { volume: usize, file: FileId },
    Raw { volume: usize },
}

/// What an export handle points at, kept across calls: by device number,
/// not by volume index, because `umount` and `mount` add and remove
/// volumes under open handles of other devices.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Bound {
    File { device: u16, file: FileId },
    Raw { device: u16 },
}

/// The device number of volume `index` (`pmem3` → 3).
fn device_number<M: PersistentMemory>(storage: &Storage<M>, index: usize) -> Option<u16> {
    storage
        .volumes
        .get(index)
        .and_then(|v| daxbox_syntax::device_index(&v.device))
}

/// The volume index of device number `device`, if it is a volume now.
fn volume_of_number<M: PersistentMemory>(storage: &Storage<M>, device: u16) -> Option<usize> {
    storage
        .volumes
        .iter()
        .position(|v| daxbox_syntax::device_index(&v.device) == Some(device))
}

impl Bound {
    fn of<M: PersistentMemory>(storage: &Storage<M>, target: Target) -> Option<Bound> {
        Some(match target {
            Target::File { volume, file } => Bound::File {
                device: device_number(storage, volume)?,
                file,
            },
            Target::Raw { volume } => Bound::Raw {
                device: device_number(storage, volume)?,
            },
        })
    }

    fn resolve<M: PersistentMemory>(self, storage: &Storage<M>) -> Option<Target> {
        Some(match self {
            Bound::File { device, file } => Target::File {
                volume: volume_of_number(storage, device)?,
                file,
            },
            Bound::Raw { device } => Target::Raw {
                volume: volume_of_number(storage, device)?,
            },
        })
    }
}

/// Export handles handed out so far: handle = index into `list`, found
/// again by what it points at in O(log n). One entry per distinct export
/// ever opened (files are made by the administrator, not by clients).
#[derive(Default, Debug)]
pub struct Targets {
    list: Vec<Bound>,
    index: BTreeMap<Bound, usize>,
}

impl Targets {
    fn handle(&mut self, bound: Bound) -> ExportHandle {
        let index = *self.index.entry(bound).or_insert_with(|| {
            self.list.push(bound);
            self.list.len() - 1
        });
        ExportHandle(index as u64)
    }

    fn get(&self, export: ExportHandle) -> Option<Bound> {
        usize::try_from(export.0)
            .ok()
            .and_then(|index| self.list.get(index).copied())
    }
}

/// Heap one connection's engine may hold beyond its socket buffers, for
/// the listener's budget charge: the output queue bound plus one more
/// reply (an option reply or a block-status reply of `max_extents`), the
/// option buffer, and the bookkeeping of every request in flight.
pub fn connection_bytes(config: &ServerConfig) -> usize {
    config
        .max_queued_bytes
        .saturating_add(config.max_option_len as usize)
        .saturating_add(config.max_extents.saturating_mul(16))
        .saturating_add(config.max_in_flight.saturating_mul(128))
        .saturating_add(16 * 1024)
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
    /// Export handles handed out so far.
    targets: Targets,
    next_id: u64,
    /// Microsecond clock for request latencies ([`NbdService::with_clock`]).
    clock: fn() -> u64,
    memory: PhantomData<fn() -> M>,
    /// The TLS server for `NBD_OPT_STARTTLS` (with a TLS policy).
    tls: Option<daxbox_tls::TlsServer>,
}

/// Per-connection state.
pub struct NbdConnection {
    id: u64,
    engine: Connection,
    /// The client's address and port, when the transport told it.
    peer: Option<core::net::SocketAddr>,
    /// When it was accepted.
    opened_ms: u64,
    /// When the engine first wanted the connection closed.
    closing_since: Option<u64>,
    /// Over a connection limit: only told so.
    refused: bool,
    /// TLS after STARTTLS (`nbd_tls.rs`).
    tls: crate::nbd_tls::TlsState,
    /// Read-only write refusals of the engine already counted by address.
    counted_read_only: u64,
}

impl NbdConnection {
    /// Notes the time the engine finished with the connection.
    fn note_closing(&mut self, now_ms: u64) {
        if self.closing_since.is_none() && self.engine.wants_close() {
            self.closing_since = Some(now_ms);
        }
    }

    /// Updates this connection's line in the `nbd` listing, with the
    /// device and file its export is on (what `umount` and `truncate`
    /// look for).
    fn publish<M: PersistentMemory>(&mut self, storage: &mut Storage<M>, targets: &[Bound]) {
        if let Some(ops) = self.engine.take_op_stats() {
            let export = self.engine.export_name().unwrap_or("(handshake)");
            storage.metrics.nbd.record(export, &ops);
        }
        let refused = self.engine.stats().read_only_writes;
        if refused > self.counted_read_only {
            let peer = self.peer.map(|p| p.ip());
            let new = refused - self.counted_read_only;
            storage.access_mut().count(peer, Reason::ReadOnlyWrite, new);
            self.counted_read_only = refused;
        }
        let name = match self.engine.export_name() {
            Some(name) => name,
            None if self.refused => "(refused)",
            None => "(handshake)",
        };
        let stats = *self.engine.stats();
        let bound = self
            .engine
            .export()
            .and_then(|handle| usize::try_from(handle.0).ok())
            .and_then(|index| targets.get(index).copied());
        let (device, file) = match bound {
            Some(Bound::File { device, file }) => (Some(device), Some(file)),
            Some(Bound::Raw { device }) => (Some(device), None),
            None => (None, None),
        };
        match storage.connections.iter_mut().find(|c| c.id == self.id) {
            Some(entry) => {
                if entry.export != name {
                    entry.export = name.to_string();
                }
                let shown = entry
                    .device
                    .as_deref()
                    .and_then(daxbox_syntax::device_index);
                if shown != device {
                    entry.device = device.map(daxbox_syntax::device_name);
                }
                entry.file = file;
                entry.peer = self.peer;
                entry.stats = stats;
            }
            None => storage.connections.push(ConnectionStatus {
                id: self.id,
                peer: self.peer,
                opened_ms: self.opened_ms,
                device: device.map(daxbox_syntax::device_name),
                file,
                held: false,
                export: name.to_string(),
                stats,
            }),
        }
        // A connection bound to a file holds it open from then until it
        // closes (`NbdService::closed`): an `rm` or `mv` over it leaves
        // the file to the connection (daxfs orphans).
        if let (Some(device), Some(file)) = (device, file) {
            hold_once(storage, self.id, device, file);
        }
    }
}

/// Takes connection `id`'s hold on `file` of device number `device`, once.
fn hold_once<M: PersistentMemory>(storage: &mut Storage<M>, id: u64, device: u16, file: FileId) {
    let Some(entry) = storage.connections.iter().position(|c| c.id == id) else {
        return;
    };
    if storage.connections[entry].held {
        return;
    }
    let Some(volume) = volume_of_number(storage, device) else {
        return;
    };
    let opened = storage
        .filesystem(volume)
        .is_some_and(|fs| fs.open(file).is_ok());
    storage.connections[entry].held = opened;
}

/// The engine policy the boot config asks for: the default limits, with
/// `NBD_OPT_LIST` answered only when `nbd_list=on` (the default).
pub fn engine_config(boot: &BootConfig) -> ServerConfig {
    ServerConfig {
        allow_list: boot.nbd_list,
        tls: match boot.tls.mode {
            daxbox_bootconfig::TlsMode::Off => daxbox_nbd::TlsPolicy::Off,
            daxbox_bootconfig::TlsMode::On => daxbox_nbd::TlsPolicy::On,
            daxbox_bootconfig::TlsMode::Require => daxbox_nbd::TlsPolicy::Require,
        },
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
            targets: Targets::default(),
            next_id: 1,
            clock: no_clock,
            memory: PhantomData,
            tls: None,
        }
    }

    /// Serves `NBD_OPT_STARTTLS` with this TLS server (the engine's
    /// [`ServerConfig::tls`] policy says whether it is offered).
    pub fn with_tls(mut self, server: daxbox_tls::TlsServer) -> Self {
        self.tls = Some(server);
        self
    }

    /// Times requests on `clock` (microseconds, monotonic) for the latency
    /// histograms; without it every latency is 0.
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
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
            peer: None,
            opened_ms: now_ms,
            closing_since: None,
            refused: false,
            tls: Default::default(),
            counted_read_only: 0,
        }
    }

    fn refuse(&mut self, reason: Refusal, now_ms: u64) -> Option<NbdConnection> {
        let id = self.next_id;
        self.next_id += 1;
        let message = alloc::format!("{reason}; try again later");
        Some(NbdConnection {
            id,
            engine: Connection::refused(self.server.config().clone(), now_ms, &message),
            peer: None,
            opened_ms: now_ms,
            closing_since: None,
            refused: true,
            tls: Default::default(),
            counted_read_only: 0,
        })
    }

    fn remote(&mut self, conn: &mut NbdConnection, remote: core::net::SocketAddr) {
        conn.peer = Some(remote);
    }

    fn receive(&mut self, conn: &mut NbdConnection, data: &[u8], now_ms: u64) -> usize {
        let targets = &mut self.targets;
        let clock = self.clock;
        self.shared.with(|storage| {
            // Cut by `umount --force` or `truncate --force`: nothing more
            // is served; `deadline` aborts it.
            if storage.disconnecting.contains(&conn.id) {
                return 0;
            }
            // TLS first, so that the backend knows a client certificate
            // the handshake just verified.
            let taken = conn.tls.receive_tls(data);
            let mut backend = StorageBackend::new(storage, targets, conn.peer)
                .with_clock(clock)
                .with_cn(conn.tls.client_cn_shared());
            let used = match taken {
                Some(n) => {
                    conn.tls.feed(&mut conn.engine, &mut backend, now_ms);
                    n
                }
                None => conn.engine.receive(data, &mut backend, now_ms),
            };
            conn.note_closing(now_ms);
            conn.publish(storage, &targets.list);
            used
        })
    }

    fn produce(&mut self, conn: &mut NbdConnection, out: &mut [u8], now_ms: u64) -> usize {
        let targets = &mut self.targets;
        let clock = self.clock;
        self.shared.with(|storage| {
            if storage.disconnecting.contains(&conn.id) {
                return 0;
            }
            let mut backend = StorageBackend::new(storage, targets, conn.peer)
                .with_clock(clock)
                .with_cn(conn.tls.client_cn_shared());
            let written = conn.tls.produce(
                &mut conn.engine,
                self.tls.as_ref(),
                out,
                &mut backend,
                now_ms,
            );
            conn.note_closing(now_ms);
            if written > 0 {
                conn.publish(storage, &targets.list);
            }
            written
        })
    }

    fn wants_close(&self, conn: &NbdConnection) -> bool {
        conn.tls.wants_close(conn.engine.wants_close())
    }

    fn deadline(&self, conn: &NbdConnection) -> Option<u64> {
        // Cut by `umount --force` or `truncate --force`: abort now.
        if self
            .shared
            .with(|storage| storage.disconnecting.contains(&conn.id))
        {
            return Some(0);
        }
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

    fn has_work(&self, conn: &NbdConnection) -> bool {
        conn.engine.has_work()
    }

    fn step(&mut self, conn: &mut NbdConnection, now_ms: u64) -> bool {
        let targets = &mut self.targets;
        let clock = self.clock;
        self.shared.with(|storage| {
            // Cut by `umount --force` / `truncate --force`: no more pieces.
            if storage.disconnecting.contains(&conn.id) {
                return false;
            }
            let mut backend = StorageBackend::new(storage, targets, conn.peer)
                .with_clock(clock)
                .with_cn(conn.tls.client_cn_shared());
            let stepped = conn.engine.step(&mut backend);
            conn.note_closing(now_ms);
            conn.publish(storage, &targets.list);
            stepped
        })
    }

    fn closed(&mut self, conn: NbdConnection) {
        // A refusal was never accepted by the server: nothing to retire.
        if !conn.refused {
            self.server.retire(&conn.engine);
        }
        self.shared.with(|storage| {
            crate::lifecycle::release_hold(storage, conn.id);
            storage.connections.retain(|c| c.id != conn.id);
            storage.disconnecting.retain(|&id| id != conn.id);
        });
    }
}

/// Every export's canonical name, in device order (files sorted by name
/// within a device): raw devices by device name, files by
/// [`crate::canonical_name`]. No name appears twice. Made by
/// [`export_names_page`], page after page.
pub fn export_names<M: PersistentMemory>(storage: &Storage<M>) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor = ListCursor::default();
    while export_names_page(storage, &mut cursor, 512, &mut names) {}
    names
}

/// Pushes up to `max` export names after `cursor` onto `names` (the order
/// and naming of [`export_names`]); returns false once every name is out.
/// The cursor is (volume index, last file name listed on it), so a page
/// costs O(max + log files), whatever the number of files.
pub fn export_names_page<M: PersistentMemory>(
    storage: &Storage<M>,
    cursor: &mut ListCursor,
    max: usize,
    names: &mut Vec<String>,
) -> bool {
    let default = storage.default_filesystem();
    let mut taken = 0;
    while let Some(volume) = storage.volumes.get(cursor.part) {
        if taken >= max {
            return true;
        }
        match &volume.role {
            Role::Raw(_) => {
                names.push(volume.device.clone());
                taken += 1;
                cursor.part += 1;
                cursor.after = None;
            }
            Role::Filesystem(fs) => {
                let want = max - taken;
                let page = fs.list(cursor.after.as_deref(), want);
                // The object API's temporary files are no exports.
                for entry in page.iter().filter(|e| !crate::s3::hidden(&e.name)) {
                    names.push(crate::canonical_name(
                        &volume.device,
                        default == Some(cursor.part),
                        &entry.name,
                    ));
                }
                taken += page.iter().filter(|e| !crate::s3::hidden(&e.name)).count();
                match page.last() {
                    Some(last) if page.len() == want => cursor.after = Some(last.name.clone()),
                    _ => {
                        cursor.part += 1;
                        cursor.after = None;
                    }
                }
            }
        }
    }
    false
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

/// An NBD write never changes a file's size: the engine checks requests
/// against the size sent at the handshake, and this checks them against the
/// size now (smaller only if the file was shrunk under the connection,
/// which `truncate` refuses unless it cut the connection first). Beyond
/// the end is `ENOSPC`, as the engine answers past the export size.
fn within_file<M: PersistentMemory>(
    fs: &Filesystem<M>,
    file: FileId,
    offset: u64,
    len: u64,
) -> Result<(), BackendError> {
    let size = fs.file_size(file).map_err(fs_error)?;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::NoSpace),
    }
}

/// The engine's view of the storage volumes for one call.
pub struct StorageBackend<'a, M: PersistentMemory> {
    storage: &'a mut Storage<M>,
    targets: &'a mut Targets,
    /// The client's address: what the allow-list decides on.
    peer: Option<core::net::IpAddr>,
    /// The verified client certificate's common name (mutual TLS), which
    /// `cn:` rules match.
    cn: Option<alloc::sync::Arc<str>>,
    /// Export names, listed once per call on first use: `NBD_OPT_LIST`
    /// asks for the count and then every name by index.
    names: OnceCell<Vec<String>>,
    /// Microsecond clock for request latencies.
    clock: fn() -> u64,
}

/// The clock of a service made without one: latencies are recorded as 0.
fn no_clock() -> u64 {
    0
}

impl<'a, M: PersistentMemory> StorageBackend<'a, M> {
    /// The backend over `storage` (tests of other modules use it as the
    /// engine does).
    #[cfg(test)]
    pub(crate) fn for_tests(storage: &'a mut Storage<M>, targets: &'a mut Targets) -> Self {
        Self::new(storage, targets, None)
    }

    fn new(
        storage: &'a mut Storage<M>,
        targets: &'a mut Targets,
        peer: Option<core::net::SocketAddr>,
    ) -> Self {
        Self {
            storage,
            targets,
            peer: peer.map(|p| p.ip()),
            cn: None,
            names: OnceCell::new(),
            clock: no_clock,
        }
    }

    fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    fn with_cn(mut self, cn: Option<alloc::sync::Arc<str>>) -> Self {
        self.cn = cn;
        self
    }

    /// Who the allow-list decides about.
    fn client(&self) -> Client<'_> {
        Client {
            address: self.peer,
            cn: self.cn.as_deref(),
        }
    }

    /// Every export name, in device order.
    fn names(&self) -> &[String] {
        self.names.get_or_init(|| export_names(self.storage))
    }

    fn target(&self, export: ExportHandle) -> Result<Target, BackendError> {
        self.targets
            .get(export)
            .and_then(|bound| bound.resolve(self.storage))
            .ok_or(BackendError::NoSuchExport)
    }

    /// The default export: the first name of the listing, found without
    /// listing everything.
    fn first_export(&self) -> Option<String> {
        let mut names = Vec::with_capacity(1);
        let mut cursor = ListCursor::default();
        loop {
            let more = export_names_page(self.storage, &mut cursor, 1, &mut names);
            if let Some(name) = names.pop() {
                return Some(name);
            }
            if !more {
                return None;
            }
        }
    }

    /// The export the name `name` opens (not the default export `""`).
    fn resolve(&self, name: &str) -> Option<Target> {
        let volumes = &self.storage.volumes;
        if let Some(volume) = volumes
            .iter()
            .position(|v| v.device == name && matches!(v.role, Role::Raw(_)))
        {
            return Some(Target::Raw { volume });
        }
        if is_device_name(name) {
            // A device name that is not raw-exported is no export (and
            // never a file: a file called `pmemN` is `pmem0:pmemN`).
            return None;
        }
        let found = self.storage.lookup(name).ok()?;
        Some(Target::File {
            volume: found.volume,
            file: found.file,
        })
    }

    /// What the allow-list lets this client do with `target`
    /// ([`crate::allow`]): by its device and file name, a bare rule
    /// covering the file that the bare name opens.
    fn decision(&self, target: Target) -> Decision {
        let access = self.storage.access();
        if access.is_open() {
            return Decision::ReadWrite;
        }
        let volumes = &self.storage.volumes;
        match target {
            Target::Raw { volume } => match volumes.get(volume) {
                Some(v) => access.check(self.client(), Protocol::Nbd, &v.device, None, false),
                None => Decision::Deny,
            },
            Target::File { volume, file } => {
                let Some(v) = volumes.get(volume) else {
                    return Decision::Deny;
                };
                let Role::Filesystem(fs) = &v.role else {
                    return Decision::Deny;
                };
                // Every write asks: the name only, not `stat`'s walk of
                // the extent map.
                let Ok(name) = fs.file_name(file) else {
                    return Decision::Deny;
                };
                if name.is_empty() {
                    // Removed while this connection holds it (an orphan):
                    // no rule can name it and nobody new can open it, so
                    // the grant given at GO stands (a read-only grant is
                    // enforced by the engine from the flags it sent).
                    return Decision::ReadWrite;
                }
                let bare_opens = volumes.iter().enumerate().find_map(|(i, v)| match &v.role {
                    Role::Filesystem(fs) => fs.lookup(name).ok().map(|f| (i, f)),
                    Role::Raw(_) => None,
                }) == Some((volume, file));
                access.check(
                    self.client(),
                    Protocol::Nbd,
                    &v.device,
                    Some(name),
                    bare_opens,
                )
            }
        }
    }

    /// A refusal by the allow-list: counted, `Denied`.
    fn deny(&mut self) -> BackendError {
        let peer = self.peer;
        self.storage.access_mut().count(peer, Reason::Policy, 1);
        BackendError::Denied
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
    fn now_us(&self) -> u64 {
        (self.clock)()
    }

    fn export_count(&self) -> usize {
        self.names().len()
    }

    fn export_name(&self, index: usize) -> Option<String> {
        self.names().get(index).cloned()
    }

    /// With allow rules, a page examines `max` names and keeps the ones
    /// this client may open (possibly none: the engine asks for the next
    /// page in a later step), so a page costs O(max) whatever the rules.
    fn list_exports(&mut self, cursor: &mut ListCursor, max: usize, out: &mut Vec<String>) -> bool {
        if self.storage.access().is_open() {
            return export_names_page(self.storage, cursor, max, out);
        }
        let mut page = Vec::new();
        let more = export_names_page(self.storage, cursor, max, &mut page);
        for name in page {
            let allowed = self
                .resolve(&name)
                .is_some_and(|target| self.decision(target) != Decision::Deny);
            if allowed {
                out.push(name);
            }
        }
        more
    }

    /// A client the allow-list refuses gets `Denied` (counted), also for
    /// a name that opens nothing when no NBD rule admits it at all, so it
    /// cannot probe which names exist.
    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        let admitted = self.storage.access().admits(self.client(), Protocol::Nbd);
        // The default export ("") is the first export, as nbdkit and
        // qemu-nbd serve their single export for it; the allow-list
        // applies to it as to any other.
        let target = if name.is_empty() {
            self.first_export().and_then(|first| self.resolve(&first))
        } else {
            self.resolve(name)
        };
        let Some(target) = target else {
            return Err(if admitted {
                BackendError::NoSuchExport
            } else {
                self.deny()
            });
        };
        if !admitted || self.decision(target) == Decision::Deny {
            return Err(self.deny());
        }
        let bound = Bound::of(self.storage, target).ok_or(BackendError::NoSuchExport)?;
        Ok(self.targets.handle(bound))
    }

    fn info(&self, export: ExportHandle) -> Option<ExportInfo> {
        let target = self.target(export).ok()?;
        match target {
            Target::Raw { volume } => {
                let index = volume;
                let volume = self.storage.volumes.get(volume)?;
                let Role::Raw(block) = &volume.role else {
                    return None;
                };
                Some(ExportInfo {
                    name: volume.device.clone(),
                    description: alloc::format!("raw pmem device {}", volume.device),
                    size: block.memory().len(),
                    read_only: self.storage.raw_read_only(index)
                        || self.decision(target) != Decision::ReadWrite,
                    kind: ExportKind::Raw,
                    can_trim: true,
                    can_fast_zero: true,
                    multi_conn: true,
                })
            }
            Target::File { volume, file } => {
                let index = volume;
                let volume = self.storage.volumes.get(volume)?;
                let Role::Filesystem(fs) = &volume.role else {
                    return None;
                };
                let stat = fs.stat(file).ok()?;
                Some(ExportInfo {
                    description: alloc::format!("daxfs file on {}", volume.device),
                    read_only: self.storage.file_read_only(index, file)
                        || self.decision(target) != Decision::ReadWrite,
                    name: self.storage.canonical_name(index, &stat.name),
                    size: stat.size,
                    kind: ExportKind::File,
                    can_trim: true,
                    can_fast_zero: true,
                    multi_conn: true,
                })
            }
        }
    }

    fn check_write(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        let target = self.target(export)?;
        let read_only = match target {
            Target::Raw { volume } => self.storage.raw_read_only(volume),
            Target::File { volume, file } => self.storage.file_read_only(volume, file),
        } || self.decision(target) != Decision::ReadWrite;
        if read_only {
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
            Target::File { volume, file } => {
                // The object API's ETag of this file no longer holds.
                self.storage.file_changed(volume, file);
                let fs = self.filesystem(volume)?;
                within_file(fs, file, offset, data.len() as u64)?;
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
            Target::File { volume, file } => {
                self.storage.file_changed(volume, file);
                let fs = self.filesystem(volume)?;
                within_file(fs, file, offset, len)?;
                fs.write_zeroes(file, offset, len, !flags.no_hole)
                    .map_err(fs_error)
            }
        }
    }

    fn trim_step(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        budget: u64,
    ) -> Result<u64, BackendError> {
        self.write_zeroes_step(export, offset, len, ZeroFlags::default(), budget)
    }

    /// One bounded part of a TRIM or WRITE_ZEROES (the engine calls it once
    /// per event-loop step): on a raw export `budget` bytes, zeroed and
    /// written back, ending on a multiple of `budget`; on a file daxfs's
    /// `write_zeroes_step` with `budget / 4096` blocks, which passes over
    /// holes for free when punching.
    fn write_zeroes_step(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
        budget: u64,
    ) -> Result<u64, BackendError> {
        match self.target(export)? {
            Target::Raw { .. } => {
                let piece = daxbox_nbd::step_piece(offset, len, budget);
                self.write_zeroes(export, offset, piece, flags)?;
                Ok(piece)
            }
            Target::File { volume, file } => {
                self.storage.file_changed(volume, file);
                let fs = self.filesystem(volume)?;
                // Never beyond the file's size now (it may have shrunk
                // since the handshake): as `write_zeroes`, ENOSPC.
                within_file(fs, file, offset, len)?;
                fs.write_zeroes_step(file, offset, len, !flags.no_hole, budget / 4096)
                    .map_err(fs_error)
            }
        }
    }

    /// Raw exports are all data. Files: daxfs's `extents_limited`, which
    /// looks at no more than `max_extents` extents (2048 by default, the
    /// engine's [`ServerConfig::max_extents`]) whatever the range, so one
    /// reply over a huge fragmented file costs a bounded amount; the client
    /// asks again from where the reply ends.
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
                let segments = fs
                    .extents_limited(file, offset, len, max_extents.max(1))
                    .map_err(fs_error)?;
                for segment in &segments {
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
    use crate::Environment;
    use alloc::vec;
    use core::cell::RefCell;

    fn backend<'a>(
        storage: &'a mut Storage<TestMemory>,
        targets: &'a mut Targets,
    ) -> StorageBackend<'a, TestMemory> {
        StorageBackend::new(storage, targets, None)
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
        f.storage.set_read_only(crate::testing::rules(&["ro"]));
        f
    }

    #[test]
    fn names_duplicates_and_open() {
        let mut f = exports();
        assert_eq!(
            export_names(&f.storage),
            ["disk", "ro", "same", "pmem1:only1", "pmem1:same", "pmem2"]
        );
        let mut targets = Targets::default();
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
        // Every export has one canonical name: the listed one, sent back
        // in NBD_INFO_NAME whatever name opened it.
        assert_eq!(b.info(same1).unwrap().name, "pmem1:same");
        assert_eq!(b.info(same0).unwrap().name, "same");
        let only1 = b.open("only1").unwrap();
        assert_eq!(b.open("pmem1:only1").unwrap(), only1);
        assert_eq!(b.info(only1).unwrap().name, "pmem1:only1");
        for index in 0..b.export_count() {
            let name = b.export_name(index).unwrap();
            let handle = b.open(&name).unwrap();
            assert_eq!(
                b.info(handle).unwrap().name,
                name,
                "listed name opens itself"
            );
        }
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
    fn listing_pages_give_the_full_listing_at_every_page_size() {
        let mut f = exports();
        for i in 0..40 {
            f.ok(&alloc::format!("create pmem1:f{i:02} 4K"));
        }
        let all = export_names(&f.storage);
        assert_eq!(all.len(), 46);
        assert_eq!(all[..3], ["disk", "ro", "same"]);
        for max in [1, 2, 3, 7, 64] {
            let mut cursor = ListCursor::default();
            let mut names = Vec::new();
            let mut pages = 0;
            loop {
                let before = names.len();
                let more = export_names_page(&f.storage, &mut cursor, max, &mut names);
                assert!(names.len() - before <= max);
                pages += 1;
                if !more {
                    break;
                }
            }
            assert_eq!(names, all, "page size {max}");
            assert!(pages <= all.len() / max + 4, "{pages} pages of {max}");
        }
        let mut targets = Targets::default();
        let mut b = backend(&mut f.storage, &mut targets);
        let mut cursor = ListCursor::default();
        let mut names = Vec::new();
        while b.list_exports(&mut cursor, 5, &mut names) {}
        assert_eq!(names, all);
    }

    #[test]
    fn a_refused_connection_tells_the_client_why() {
        const REP_ERR_POLICY: u32 = 0x8000_0002;
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let mut conn = service
            .refuse(Refusal::PerAddress { limit: 16 }, 0)
            .expect("NBD words its refusals");
        let greeting = exchange(&mut service, &mut conn, &[], 0);
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        let mut hello = 1u32.to_be_bytes().to_vec();
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&7u32.to_be_bytes());
        hello.extend_from_slice(&10u32.to_be_bytes());
        hello.extend_from_slice(&4u32.to_be_bytes());
        hello.extend_from_slice(b"disk");
        hello.extend_from_slice(&0u16.to_be_bytes());
        let reply = exchange(&mut service, &mut conn, &hello, 1);
        assert_eq!(&reply[12..16], &REP_ERR_POLICY.to_be_bytes());
        let message = String::from_utf8_lossy(&reply[20..]);
        assert_eq!(
            message,
            "too many connections from this address (limit 16); try again later"
        );
        service.closed(conn);
        assert!(cell.0.borrow().storage.connections().is_empty());
    }

    #[test]
    fn no_exports_means_no_default_export() {
        let mut f = Fixture::empty();
        let mut targets = Targets::default();
        let mut b = backend(&mut f.storage, &mut targets);
        assert_eq!(b.export_count(), 0);
        assert_eq!(b.open(""), Err(BackendError::NoSuchExport));
    }

    #[test]
    fn file_export_io_holes_and_errors() {
        let mut f = exports();
        let mut targets = Targets::default();
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
        let mut targets = Targets::default();
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
    fn an_nbd_write_never_changes_a_file_size() {
        let mut f = exports();
        let mut targets = Targets::default();
        let disk = backend(&mut f.storage, &mut targets).open("disk").unwrap();
        // Shrunk under the handle (as if a client kept the old size).
        let index = f.storage.lookup("disk").unwrap();
        let fs = f.storage.filesystem(index.volume).unwrap();
        fs.truncate(index.file, MIB).unwrap();
        let mut b = backend(&mut f.storage, &mut targets);
        assert_eq!(
            b.write(disk, 2 * MIB, &[1; 4096]),
            Err(BackendError::NoSpace)
        );
        assert_eq!(
            b.write(disk, MIB - 10, &[1; 20]),
            Err(BackendError::NoSpace)
        );
        let zero = ZeroFlags::default();
        assert_eq!(
            b.write_zeroes(disk, MIB, 4096, zero),
            Err(BackendError::NoSpace)
        );
        b.write(disk, MIB - 10, &[1; 10]).unwrap();
        b.write_zeroes(disk, 0, MIB, zero).unwrap();
        assert_eq!(
            f.ok("stat disk").lines().nth(1),
            Some("size:       1048576 (1 MiB)")
        );
    }

    #[test]
    fn raw_export_io() {
        let mut f = exports();
        let mut targets = Targets::default();
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
        commands::nbd(
            &mut cell.0.borrow_mut().storage,
            3_000,
            &[],
            10809,
            &mut out,
        )
        .unwrap();
        assert!(
            out.ends_with(
                "1 connection(s)\n  #1 ? up 3 s, disk: 2 requests (0 errors), 4182 bytes in, \
                 4232 bytes out, read 4096 written 4096\n"
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

    /// A connection from `peer` that negotiated export `name` with
    /// `NBD_OPT_GO`.
    fn connect_to<S: TcpService>(service: &mut S, name: &str, peer: &str) -> S::Connection {
        let mut conn = service.accept(0);
        service.remote(&mut conn, peer.parse().unwrap());
        exchange(service, &mut conn, &[], 0);
        let mut hello = 3u32.to_be_bytes().to_vec();
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&7u32.to_be_bytes());
        hello.extend_from_slice(&(6 + name.len() as u32).to_be_bytes());
        hello.extend_from_slice(&(name.len() as u32).to_be_bytes());
        hello.extend_from_slice(name.as_bytes());
        hello.extend_from_slice(&0u16.to_be_bytes());
        let replies = exchange(service, &mut conn, &hello, 1);
        let ack = &replies[replies.len() - 20..];
        assert_eq!(
            &ack[8..16],
            &[0, 0, 0, 7, 0, 0, 0, 1],
            "GO {name} acknowledged"
        );
        conn
    }

    /// One simple-reply request; returns (error, the payload of a read).
    fn simple_request<S: TcpService>(
        service: &mut S,
        conn: &mut S::Connection,
        kind: u16,
        offset: u64,
        len: u32,
    ) -> (u32, Vec<u8>) {
        let mut input = request(kind, 77, offset, len);
        if kind == 1 {
            input.extend_from_slice(&vec![0x6b; len as usize]);
        }
        let replies = exchange(service, conn, &input, 2);
        let error = u32::from_be_bytes(replies[4..8].try_into().unwrap());
        (error, replies[16..].to_vec())
    }

    fn run(cell: &Cell, line: &str) -> Result<String, String> {
        cell.0.borrow_mut().run(line)
    }

    #[test]
    fn requests_are_counted_per_export_and_timed_on_the_service_clock() {
        use core::sync::atomic::{AtomicU64, Ordering};
        use daxbox_nbd::metrics::Op;
        static NOW: AtomicU64 = AtomicU64::new(0);
        fn clock() -> u64 {
            NOW.fetch_add(250, Ordering::Relaxed) + 250
        }
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell).with_clock(clock);
        let mut on0 = connect_to(&mut service, "disk", "127.0.0.1:40000");
        let mut on1 = connect_to(&mut service, "pmem1:only1", "127.0.0.1:40001");
        assert_eq!(simple_request(&mut service, &mut on0, 1, 0, 4096).0, 0);
        assert_eq!(simple_request(&mut service, &mut on0, 0, 0, 512).0, 0);
        assert_eq!(simple_request(&mut service, &mut on1, 1, 0, 4096).0, 0);
        let fixture = cell.0.borrow();
        let nbd = &fixture.storage.metrics().nbd;
        let disk = nbd.exports["disk"];
        assert_eq!(disk[Op::Write.index()].bytes, 4096);
        assert_eq!(disk[Op::Read.index()].bytes, 512);
        assert_eq!(nbd.exports["pmem1:only1"][Op::Write.index()].requests, 1);
        assert_eq!(nbd.latency[Op::Write.index()].count, 2);
        assert!(nbd.latency[Op::Write.index()].sum_us >= 2 * 250, "{nbd:?}");
    }

    #[test]
    fn umount_refuses_while_a_client_uses_the_device_and_force_cuts_it() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let mut on0 = connect_to(&mut service, "disk", "127.0.0.1:40000");
        let mut on1 = connect_to(&mut service, "pmem1:only1", "127.0.0.1:40001");
        assert_eq!(simple_request(&mut service, &mut on0, 1, 0, 4096).0, 0);
        assert_eq!(simple_request(&mut service, &mut on1, 1, 0, 4096).0, 0);
        let status = run(&cell, "nbd").unwrap();
        assert!(
            status.contains(
                "\n  #1 127.0.0.1:40000 up 0 s, disk: 1 requests (0 errors), 4154 bytes in, \
                 120 bytes out, read 0 written 4096\n  #2 127.0.0.1:40001 up 0 s, pmem1:only1: "
            ),
            "{status}"
        );
        assert_eq!(
            run(&cell, "umount pmem0").unwrap_err(),
            "pmem0 is open on 1 NBD connection(s): #1 127.0.0.1:40000 (disk); it stays mounted \
             (`umount pmem0 --force` disconnects them first)"
        );
        assert_eq!(
            run(&cell, "umount").unwrap_err(),
            "usage: umount DEVICE [--force]"
        );
        assert_eq!(
            run(&cell, "umount pmem3").unwrap_err(),
            "pmem3 has no mounted filesystem (see the boot log, or `mkfs pmem3`)"
        );
        assert_eq!(
            run(&cell, "umount pmem0 --force").unwrap(),
            "disconnected #1 127.0.0.1:40000 (disk)\npmem0: unmounted (filesystem clean)\n"
        );
        // The cut client is served no more and aborted at the next poll.
        assert_eq!(service.deadline(&on0), Some(0));
        assert_eq!(service.receive(&mut on0, &request(0, 5, 0, 4096), 3), 0);
        service.closed(on0);
        // The client of pmem1 carries on (pmem1 is now volume 0).
        let (error, data) = simple_request(&mut service, &mut on1, 0, 0, 4096);
        assert_eq!((error, data), (0, vec![0x6b; 4096]));
        assert_eq!(service.deadline(&on1), None);
        // Clean on media, back with the environment: df, mkfs, mount.
        {
            let fixture = cell.0.borrow();
            let probe = fixture
                .env
                .inspect("pmem0", |block| Filesystem::probe(block.memory()))
                .expect("pmem0 is available again");
            assert_eq!(
                probe,
                daxfs::Probe::Daxfs {
                    version: daxfs::format::FORMAT_VERSION,
                    clean: true
                }
            );
        }
        let df = run(&cell, "df").unwrap();
        assert!(
            df.contains("\npmem0          16 MiB (not mounted)\n"),
            "{df}"
        );
        assert_eq!(df.matches("pmem0").count(), 1, "{df}");
        assert_eq!(
            run(&cell, "stat pmem0:disk").unwrap_err(),
            "pmem0 has no mounted filesystem (see the boot log, or `mkfs pmem0`)"
        );
        assert!(run(&cell, "mkfs pmem0")
            .unwrap()
            .starts_with("mkfs: this erases everything on pmem0"));
        let mounted = run(&cell, "mount pmem0").unwrap();
        assert!(
            mounted.starts_with("storage: pmem0 mounted daxfs in 1 ms: 3 files, "),
            "{mounted}"
        );
        assert_eq!(
            run(&cell, "mount pmem0").unwrap_err(),
            "pmem0 is already in use (mounted or exported)"
        );
        let devices: Vec<String> = cell
            .0
            .borrow()
            .storage
            .volumes
            .iter()
            .map(|v| v.device.clone())
            .collect();
        assert_eq!(devices, ["pmem0", "pmem1", "pmem2"]);
        assert_eq!(run(&cell, "cat disk 0 2").unwrap(), "kk\n");
        // A new client opens it again; the old one on pmem1 still works.
        let mut again = connect_to(&mut service, "disk", "127.0.0.1:40002");
        assert_eq!(
            simple_request(&mut service, &mut again, 0, 0, 16).1,
            vec![0x6b; 16]
        );
        assert_eq!(
            simple_request(&mut service, &mut on1, 0, 0, 16).1,
            vec![0x6b; 16]
        );
        // A raw export is stopped the same way; mount then says what it is.
        assert_eq!(
            run(&cell, "umount pmem2").unwrap(),
            "pmem2: no longer exported raw\n"
        );
        assert_eq!(
            run(&cell, "mount pmem2").unwrap_err(),
            "pmem2 is blank; not formatting (boot config format=if-blank, or `mkfs pmem2`)"
        );
        assert_eq!(
            run(&cell, "mount pmem3").unwrap_err(),
            "pmem3 holds something that is not daxfs; left alone (`mkfs pmem3` erases it)"
        );
        assert_eq!(
            run(&cell, "mount pmem9").unwrap_err(),
            "no such device: pmem9"
        );
        let df = run(&cell, "df").unwrap();
        assert!(
            df.ends_with(
                "pmem2           8 MiB (not mounted)\npmem3           8 MiB (not mounted)\n"
            ),
            "{df}"
        );
    }

    /// The free bytes `df` shows for pmem0.
    fn free_on_pmem0(cell: &Cell) -> u64 {
        let mut fixture = cell.0.borrow_mut();
        let fs = fixture.storage.filesystem(0).unwrap();
        let s = fs.statfs();
        s.free_blocks * s.block_size
    }

    #[test]
    fn an_open_file_removed_or_replaced_stays_for_its_clients_until_they_close() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let free_before = free_on_pmem0(&cell);
        let mut client = connect_to(&mut service, "disk", "127.0.0.1:42000");
        // 1 MiB of 0x6b at 2 MiB.
        assert_eq!(
            simple_request(&mut service, &mut client, 1, 2 * MIB, MIB as u32).0,
            0
        );
        let free_written = free_on_pmem0(&cell);
        assert!(free_written < free_before);
        assert_eq!(
            run(&cell, "rm disk").unwrap(),
            "removed disk (still open by 1 NBD connection: #1 127.0.0.1:42000 (disk); its space \
             returns when it closes)\n"
        );
        // The name is free at once; the client carries on with its file.
        assert!(run(&cell, "stat disk").is_err());
        run(&cell, "create disk 4K").unwrap();
        assert_eq!(simple_request(&mut service, &mut client, 1, 0, 4096).0, 0);
        let (error, data) = simple_request(&mut service, &mut client, 0, 2 * MIB, 4096);
        assert_eq!(error, 0);
        assert_eq!(data, vec![0x6b; 4096]);
        assert!(run(&cell, "fsck").unwrap().contains("clean"));
        assert!(run(&cell, "stat disk")
            .unwrap()
            .contains("size:       4096 "));
        // The space comes back when the client goes.
        assert!(free_on_pmem0(&cell) < free_before);
        service.closed(client);
        assert_eq!(free_on_pmem0(&cell), free_before);
        assert!(run(&cell, "fsck").unwrap().contains("clean"));

        // mv over an open file: replaced at once, the client keeps it.
        let mut other = connect_to(&mut service, "same", "127.0.0.1:42001");
        assert_eq!(simple_request(&mut service, &mut other, 1, 0, 4096).0, 0);
        assert_eq!(
            run(&cell, "mv disk same").unwrap(),
            "renamed disk to same (replaced it; still open by 1 NBD connection: #2 \
             127.0.0.1:42001 (same); its space returns when it closes)\n"
        );
        let (error, data) = simple_request(&mut service, &mut other, 0, 0, 4096);
        assert_eq!(error, 0);
        assert_eq!(data, vec![0x6b; 4096]);
        service.closed(other);
        assert!(run(&cell, "fsck").unwrap().contains("clean"));

        // --force still disconnects first, for the space now.
        let client = connect_to(&mut service, "same", "127.0.0.1:42002");
        assert_eq!(
            run(&cell, "rm same --force").unwrap(),
            "disconnected #3 127.0.0.1:42002 (same)\nremoved same\n"
        );
        assert_eq!(service.deadline(&client), Some(0));
        service.closed(client);
        assert!(run(&cell, "stat pmem0:same").is_err());
        assert!(run(&cell, "fsck").unwrap().contains("clean"));
    }

    #[test]
    fn renaming_an_open_file_keeps_its_clients_on_it() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let mut client = connect_to(&mut service, "disk", "127.0.0.1:42000");
        assert_eq!(
            run(&cell, "mv disk moved").unwrap(),
            "renamed disk to moved\n"
        );
        assert_eq!(simple_request(&mut service, &mut client, 0, 0, 16).0, 0);
        service.closed(client);
        assert!(run(&cell, "stat moved").is_ok());
    }

    #[test]
    fn shrinking_an_open_file_is_refused_and_force_disconnects_first() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        let mut client = connect_to(&mut service, "disk", "127.0.0.1:41000");
        let mut other = connect_to(&mut service, "same", "127.0.0.1:41001");
        assert_eq!(
            simple_request(&mut service, &mut client, 1, 3 * MIB, 4096).0,
            0
        );
        assert_eq!(
            run(&cell, "truncate disk 1M").unwrap_err(),
            "disk is open on 1 NBD connection(s): #1 127.0.0.1:41000 (disk); shrinking it under \
             them is refused (`truncate disk 1M --force` disconnects them first)"
        );
        assert_eq!(
            run(&cell, "stat disk").unwrap().lines().nth(1),
            Some("size:       4194304 (4 MiB)")
        );
        // Growing is allowed while open; the client keeps its size.
        assert_eq!(
            run(&cell, "truncate disk 8M").unwrap(),
            "truncated to 8388608 bytes\n"
        );
        assert_eq!(
            run(&cell, "truncate disk 1M --force").unwrap(),
            "disconnected #1 127.0.0.1:41000 (disk)\ntruncated to 1048576 bytes\n"
        );
        // A write inside the old size, past the new one, never reaches the
        // file: the connection is served no more.
        assert_eq!(
            service.receive(&mut client, &request(1, 9, 3 * MIB, 4096), 3),
            0
        );
        assert_eq!(service.deadline(&client), Some(0));
        service.closed(client);
        assert_eq!(
            run(&cell, "stat disk").unwrap().lines().nth(1),
            Some("size:       1048576 (1 MiB)")
        );
        // The client of another file was not touched; a new one sees 1 MiB.
        assert_eq!(service.deadline(&other), None);
        assert_eq!(simple_request(&mut service, &mut other, 0, 0, 16).0, 0);
        {
            let mut fixture = cell.0.borrow_mut();
            let mut targets = Targets::default();
            let mut b = backend(&mut fixture.storage, &mut targets);
            let disk = b.open("disk").unwrap();
            assert_eq!(b.info(disk).unwrap().size, MIB);
        }
        // Another file's client is named for that file; once it is gone,
        // shrinking needs no --force.
        assert!(run(&cell, "truncate same 0")
            .unwrap_err()
            .contains("#2 127.0.0.1:41001"));
        service.closed(other);
        assert_eq!(
            run(&cell, "truncate same 0").unwrap(),
            "truncated to 0 bytes\n"
        );
    }

    #[test]
    fn grow_extends_the_filesystem_to_the_device_under_open_clients() {
        // An 8 MiB filesystem on a device that is now 16 MiB.
        let mut small = Fixture::with_devices(&[8 * MIB], &[]);
        small.ok("create disk 1M");
        small.ok("write disk 0 kept");
        small.ok("create gone 1M");
        small.ok("write gone 0 orphan");
        small.storage.shutdown();
        let mut image = small.env.image("pmem0");
        image.resize((16 * MIB) as usize, 0);
        let env = crate::testing::FakeEnvironment::from_images(vec![image]);
        let cell = Cell(RefCell::new(Fixture::boot_env(env)));
        let before = run(&cell, "df").unwrap();
        let mut service = NbdService::new(&cell);
        let mut client = connect_to(&mut service, "disk", "127.0.0.1:42000");
        // A removed file a client still has open survives the remount.
        let mut orphan = connect_to(&mut service, "gone", "127.0.0.1:42001");
        assert!(run(&cell, "rm gone").unwrap().contains("still open by 1"));
        let out = run(&cell, "grow pmem0").unwrap();
        assert_eq!(
            simple_request(&mut service, &mut orphan, 0, 0, 6).1,
            b"orphan"
        );
        service.closed(orphan);
        assert!(out.starts_with("pmem0: grown by 8 MiB to "), "{out}");
        let after = run(&cell, "df").unwrap();
        assert_ne!(before, after);
        let free = |df: &str| -> String {
            df.lines()
                .nth(1)
                .unwrap()
                .split("  ")
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .nth(3)
                .unwrap()
                .to_string()
        };
        assert!(out.ends_with(" MiB free\n"), "{out}");
        assert!(
            after
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("pmem0        15.9 MiB "),
            "{after}"
        );
        assert_ne!(free(&before), free(&after));
        // The open client carries on.
        assert_eq!(
            simple_request(&mut service, &mut client, 0, 0, 4).1,
            b"kept"
        );
        assert_eq!(
            run(&cell, "grow pmem0").unwrap(),
            alloc::format!(
                "pmem0: the filesystem already spans the device (15.9 MiB data, {} free); nothing to grow\n",
                free(&after)
            )
        );
        assert_eq!(run(&cell, "grow").unwrap_err(), "usage: grow DEVICE");
        assert_eq!(
            run(&cell, "grow pmem7").unwrap_err(),
            "no such device: pmem7"
        );
        assert!(run(&cell, "fsck pmem0")
            .unwrap()
            .starts_with("pmem0: fsck: clean"));
        // And after a reboot.
        service.closed(client);
        let mut fixture = cell.0.into_inner();
        fixture.storage.shutdown();
        let env = crate::testing::FakeEnvironment::from_images(vec![fixture.env.image("pmem0")]);
        let mut rebooted = Fixture::boot_env(env);
        assert_eq!(rebooted.ok("df"), after);
    }

    /// A connection in transmission on export `name` (fixed newstyle, no
    /// zeroes, `NBD_OPT_GO`); returns it with the transmission flags.
    fn go<S: TcpService>(service: &mut S, name: &str) -> (S::Connection, u16) {
        let mut conn = service.accept(0);
        exchange(service, &mut conn, &[], 0);
        let mut hello = 3u32.to_be_bytes().to_vec();
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&7u32.to_be_bytes());
        hello.extend_from_slice(&(6 + name.len() as u32).to_be_bytes());
        hello.extend_from_slice(&(name.len() as u32).to_be_bytes());
        hello.extend_from_slice(name.as_bytes());
        hello.extend_from_slice(&0u16.to_be_bytes());
        let replies = exchange(service, &mut conn, &hello, 1);
        let ack = &replies[replies.len() - 20..];
        assert_eq!(
            &ack[8..16],
            &[0, 0, 0, 7, 0, 0, 0, 1],
            "GO {name} acknowledged"
        );
        // Option replies: magic 8, option 4, type 4, length 4, data; the
        // NBD_REP_INFO (3) of NBD_INFO_EXPORT (0) has the size (8 bytes),
        // then the transmission flags.
        let mut rest = &replies[..];
        let mut flags = None;
        while rest.len() >= 20 {
            let kind = u32::from_be_bytes(rest[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            let data = &rest[20..20 + len];
            if kind == 3 && data[..2] == [0, 0] {
                flags = Some(u16::from_be_bytes([data[10], data[11]]));
            }
            rest = &rest[20 + len..];
        }
        (conn, flags.expect("an NBD_INFO_EXPORT reply"))
    }

    /// The error value of a WRITE of 512 bytes at 0 (simple reply).
    fn write_errno<S: TcpService>(service: &mut S, conn: &mut S::Connection, cookie: u64) -> u32 {
        let mut input = request(1, cookie, 0, 512);
        input.extend_from_slice(&[0x77; 512]);
        let reply = exchange(service, conn, &input, 2);
        assert_eq!(reply.len(), 16, "one simple reply");
        assert_eq!(&reply[8..16], &cookie.to_be_bytes());
        u32::from_be_bytes(reply[4..8].try_into().unwrap())
    }

    /// TRIM's error value (4 KiB at 0).
    fn trim_errno<S: TcpService>(service: &mut S, conn: &mut S::Connection, cookie: u64) -> u32 {
        let reply = exchange(service, conn, &request(4, cookie, 0, 4096), 2);
        u32::from_be_bytes(reply[4..8].try_into().unwrap())
    }

    const EPERM: u32 = 1;

    #[test]
    fn read_only_follows_the_file_across_renames() {
        let cell = Cell(RefCell::new(exports()));
        let mut service = NbdService::new(&cell);
        // A session on `ro` before and after the file is renamed; a new
        // session under the new name: read-only, every one.
        let (mut on_ro, flags) = go(&mut service, "ro");
        assert_eq!(flags & 2, 2, "ro advertises NBD_FLAG_READ_ONLY");
        assert_eq!(write_errno(&mut service, &mut on_ro, 1), EPERM);
        cell.0.borrow_mut().ok("mv ro moved");
        assert_eq!(write_errno(&mut service, &mut on_ro, 2), EPERM);
        let (mut on_moved, flags) = go(&mut service, "moved");
        assert_eq!(flags & 2, 2, "the renamed file stays read-only");
        assert_eq!(write_errno(&mut service, &mut on_moved, 3), EPERM);
        assert_eq!(trim_errno(&mut service, &mut on_moved, 4), EPERM);
        // A writable file renamed onto the rule's name becomes read-only,
        // for the session that opened it writable too.
        let (mut on_disk, flags) = go(&mut service, "disk");
        assert_eq!(flags & 2, 0, "disk is writable");
        assert_eq!(write_errno(&mut service, &mut on_disk, 5), 0);
        cell.0.borrow_mut().ok("mv disk ro");
        assert_eq!(write_errno(&mut service, &mut on_disk, 6), EPERM);
        assert_eq!(trim_errno(&mut service, &mut on_disk, 7), EPERM);
        let (_, flags) = go(&mut service, "ro");
        assert_eq!(flags & 2, 2, "the file now called ro is read-only");
        // A file created under the rule's name is read-only; its clone
        // under another name is a new file, and writable.
        cell.0.borrow_mut().ok("rm ro --force");
        cell.0.borrow_mut().ok("create ro 4K");
        let (mut fresh, flags) = go(&mut service, "ro");
        assert_eq!(flags & 2, 2, "a new file named ro is read-only");
        assert_eq!(write_errno(&mut service, &mut fresh, 8), EPERM);
        cell.0.borrow_mut().ok("clone ro copy");
        let (mut copy, flags) = go(&mut service, "copy");
        assert_eq!(flags & 2, 0, "a clone under another name is writable");
        assert_eq!(write_errno(&mut service, &mut copy, 9), 0);
        // The refused writes left the data alone.
        assert_eq!(
            cell.0.borrow_mut().ok("cat moved 0 16"),
            "readonly-content\n"
        );
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

    /// One option reply: (option, type, data).
    type OptionReply = (u32, u32, Vec<u8>);

    /// Option replies (option, type, data) to `options` sent by a client
    /// at `peer` after fixed-newstyle client flags.
    fn options_from<S: TcpService>(
        service: &mut S,
        peer: &str,
        options: &[(u32, Vec<u8>)],
    ) -> (S::Connection, Vec<OptionReply>) {
        let mut conn = service.accept(0);
        service.remote(&mut conn, peer.parse().unwrap());
        exchange(service, &mut conn, &[], 0);
        let mut input = 3u32.to_be_bytes().to_vec();
        for (option, data) in options {
            input.extend_from_slice(b"IHAVEOPT");
            input.extend_from_slice(&option.to_be_bytes());
            input.extend_from_slice(&(data.len() as u32).to_be_bytes());
            input.extend_from_slice(data);
        }
        let replies = exchange(service, &mut conn, &input, 1);
        let mut rest = &replies[..];
        let mut out = Vec::new();
        while rest.len() >= 20 {
            let option = u32::from_be_bytes(rest[8..12].try_into().unwrap());
            let kind = u32::from_be_bytes(rest[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            out.push((option, kind, rest[20..20 + len].to_vec()));
            rest = &rest[20 + len..];
        }
        (conn, out)
    }

    /// `NBD_OPT_GO` data for `name`, no information requests.
    fn go_data(name: &str) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        data
    }

    /// The names an `NBD_OPT_LIST` from `peer` shows.
    fn listed_to<S: TcpService>(service: &mut S, peer: &str) -> Vec<String> {
        let (conn, replies) = options_from(service, peer, &[(3, Vec::new())]);
        service.closed(conn);
        assert_eq!(replies.last().map(|r| r.1), Some(1), "ends with ACK");
        replies[..replies.len() - 1]
            .iter()
            .map(|(_, kind, data)| {
                assert_eq!(*kind, 2, "NBD_REP_SERVER");
                String::from_utf8(data[4..].to_vec()).unwrap()
            })
            .collect()
    }

    /// The reply type to `NBD_OPT_GO` of `name` from `peer`, and the
    /// connection (in transmission when it was acknowledged).
    fn go_from<S: TcpService>(service: &mut S, peer: &str, name: &str) -> (S::Connection, u32) {
        let (conn, replies) = options_from(service, peer, &[(7, go_data(name))]);
        (conn, replies.last().unwrap().1)
    }

    #[test]
    fn allow_rules_decide_what_each_client_sees_opens_and_writes() {
        const ACK: u32 = 1;
        const POLICY: u32 = 0x8000_0002;
        const UNKNOWN: u32 = 0x8000_0006;
        let cell = Cell(RefCell::new(exports()));
        let (config, warnings) = daxbox_bootconfig::parse(
            "allow=198.18.0.11 * ro nbd\n\
             allow=198.18.0.10 disk\n\
             allow=198.18.0.10 pmem1:\n\
             allow=198.18.0.10 ro\n\
             allow=198.18.0.12 * rw http\n",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        cell.0
            .borrow_mut()
            .storage
            .access_mut()
            .set_rules(config.allow);
        let mut service = NbdService::new(&cell);
        let (a, b, c) = ("198.18.0.10:4000", "198.18.0.11:4000", "198.18.0.12:4000");
        // Each client lists only what it may open.
        assert_eq!(
            listed_to(&mut service, a),
            ["disk", "ro", "pmem1:only1", "pmem1:same"]
        );
        assert_eq!(
            listed_to(&mut service, b),
            export_names(&cell.0.borrow().storage)
        );
        assert!(listed_to(&mut service, c).is_empty(), "an HTTP-only client");
        // Refused: POLICY, also for a name that opens nothing when no NBD
        // rule admits the client (it learns nothing of which names exist),
        // and for the default export.
        for (peer, name, expected) in [
            (a, "same", POLICY),
            (a, "pmem2", POLICY),
            (a, "nope", UNKNOWN),
            (c, "disk", POLICY),
            (c, "nope", POLICY),
            (c, "", POLICY),
            ("[fe80::1]:4000", "disk", POLICY),
        ] {
            let (conn, reply) = go_from(&mut service, peer, name);
            assert_eq!(reply, expected, "{peer} GO {name:?}");
            service.closed(conn);
        }
        // Granted read-write; read-only by the allow rule; read-only by
        // the readonly= rule though the allow rule says rw (read-only wins).
        let (mut rw, reply) = go_from(&mut service, a, "disk");
        assert_eq!(reply, ACK);
        assert_eq!(write_errno(&mut service, &mut rw, 1), 0);
        let (mut ro, reply) = go_from(&mut service, b, "disk");
        assert_eq!(reply, ACK);
        assert_eq!(write_errno(&mut service, &mut ro, 2), EPERM);
        assert_eq!(trim_errno(&mut service, &mut ro, 3), EPERM);
        let (_, data) = simple_request(&mut service, &mut ro, 0, 0, 512);
        assert_eq!(data, [0x77; 512], "reads are served");
        let (mut both, reply) = go_from(&mut service, a, "ro");
        assert_eq!(reply, ACK);
        assert_eq!(write_errno(&mut service, &mut both, 4), EPERM);
        // A file removed under its client keeps the grant the client got
        // at GO (an orphan has no name a rule could match, and nobody new
        // can open it): writes go on, read-only stays read-only.
        run(&cell, "rm disk").unwrap();
        assert_eq!(write_errno(&mut service, &mut rw, 5), 0);
        assert_eq!(write_errno(&mut service, &mut ro, 6), EPERM);
        // Refusals by reason and address, shown by `nbd`.
        let stats = cell.0.borrow().storage.access().stats().clone();
        assert_eq!((stats.total.policy, stats.total.read_only_write), (6, 4));
        let mut out = String::new();
        commands::nbd(&mut cell.0.borrow_mut().storage, 0, &[], 10809, &mut out).unwrap();
        assert!(
            out.contains(
                "refused: 6 by policy, 4 read-only writes\n  198.18.0.10: 2 policy, 1 read-only \
                 write\n  198.18.0.12: 3 policy, 0 read-only write\n  fe80::1: 1 policy, 0 \
                 read-only write\n  198.18.0.11: 0 policy, 3 read-only write\n"
            ),
            "{out}"
        );
        // The exports a client may see are listed with what it may do in
        // `nbd`'s rules line.
        assert!(
            out.contains("allow: 5 rule(s), first match decides\n"),
            "{out}"
        );
    }

    /// One client connection as the kernel's listener holds it: bytes
    /// waiting to be offered, bytes produced so far.
    struct Peer<C> {
        conn: C,
        input: Vec<u8>,
        out: Vec<u8>,
    }

    /// One turn of the kernel's event loop (`net/stack` `Listener`): one
    /// bounded step for the next connection with work, round-robin from
    /// `turn`, then every connection's bytes moved both ways.
    fn event_loop_turn<S: TcpService>(
        service: &mut S,
        peers: &mut [Peer<S::Connection>],
        turn: usize,
    ) {
        let n = peers.len();
        for i in 0..n {
            let peer = &mut peers[(turn + i) % n];
            if service.has_work(&peer.conn) {
                assert!(service.step(&mut peer.conn, 0));
                break;
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        for peer in peers.iter_mut() {
            loop {
                let produced = service.produce(&mut peer.conn, &mut buf, 0);
                peer.out.extend_from_slice(&buf[..produced]);
                let used = service.receive(&mut peer.conn, &peer.input, 0);
                peer.input.drain(..used);
                if produced == 0 && used == 0 {
                    break;
                }
            }
        }
    }

    /// 2,000 files of which a client may see one: the listing examines a
    /// bounded number of names per event-loop turn (16 pages of 64), the
    /// rest in later turns, and shows exactly that one file.
    #[test]
    fn a_filtered_listing_of_many_files_goes_in_bounded_turns() {
        let mut f = Fixture::with_devices(&[256 * MIB, 16 * MIB], &[]);
        for i in 0..2000 {
            f.ok(&alloc::format!("create f{i:04} 4K"));
        }
        f.ok("create pmem1:mine 4K");
        let (config, _) = daxbox_bootconfig::parse("allow=198.18.0.10 pmem1:mine\n");
        f.storage.access_mut().set_rules(config.allow);
        let cell = Cell(RefCell::new(f));
        let mut service = NbdService::new(&cell);
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend_from_slice(b"IHAVEOPT");
        input.extend_from_slice(&3u32.to_be_bytes());
        input.extend_from_slice(&0u32.to_be_bytes());
        let mut conn = service.accept(0);
        service.remote(&mut conn, "198.18.0.10:4000".parse().unwrap());
        let mut peers = [Peer {
            conn,
            input,
            out: Vec::new(),
        }];
        let mut turns = 0;
        // Greeting (18) + one name reply (20 + 4 + 10) + ACK (20).
        while peers[0].out.len() < 18 + 34 + 20 {
            event_loop_turn(&mut service, &mut peers, turns);
            turns += 1;
            assert!(turns < 100, "listing not done after {turns} turns");
        }
        assert!(
            turns >= 2,
            "2,001 names examined in one turn: the per-call bound is gone"
        );
        let out = &peers[0].out[18..];
        assert_eq!(&out[12..16], &2u32.to_be_bytes(), "NBD_REP_SERVER");
        assert_eq!(&out[24..34], b"pmem1:mine");
        assert_eq!(&out[34 + 12..34 + 16], &1u32.to_be_bytes(), "then ACK");
        assert_eq!(peers[0].out.len(), 18 + 34 + 20);
    }

    /// A connection in transmission on `export` (simple replies).
    fn connect<S: TcpService>(service: &mut S, export: &str) -> Peer<S::Connection> {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend_from_slice(b"IHAVEOPT");
        input.extend_from_slice(&7u32.to_be_bytes());
        input.extend_from_slice(&(export.len() as u32 + 6).to_be_bytes());
        input.extend_from_slice(&(export.len() as u32).to_be_bytes());
        input.extend_from_slice(export.as_bytes());
        input.extend_from_slice(&0u16.to_be_bytes());
        let mut peers = [Peer {
            conn: service.accept(0),
            input,
            out: Vec::new(),
        }];
        event_loop_turn(service, &mut peers, 0);
        let [mut peer] = peers;
        assert!(peer.input.is_empty());
        // The last option reply is NBD_REP_ACK (1) to NBD_OPT_GO (7).
        assert_eq!(
            &peer.out[peer.out.len() - 12..peer.out.len() - 4],
            &[0, 0, 0, 7, 0, 0, 0, 1]
        );
        peer.out.clear();
        peer
    }

    /// Takes a whole simple reply (error, cookie, `data` bytes) if there.
    fn simple_reply<C>(peer: &mut Peer<C>, data: usize) -> Option<(u32, u64, Vec<u8>)> {
        if peer.out.len() < 16 + data {
            return None;
        }
        let reply: Vec<u8> = peer.out.drain(..16 + data).collect();
        assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap());
        Some((error, cookie, reply[16..].to_vec()))
    }

    /// A 1 GiB TRIM (kind 4) or WRITE_ZEROES (kind 6) on connection A runs
    /// in bounded parts, and connection B's 4 KiB read (of the last 4 KiB
    /// of the range, not reached yet) is answered between them; A's reply
    /// comes only once the whole range reads as zeros.
    fn long_request_with_a_reader_between_parts(
        f: Fixture,
        export: &str,
        kind: u16,
        check_done: impl Fn(&mut Storage<TestMemory>, &mut Targets),
    ) -> usize {
        const GIB: u64 = 1 << 30;
        let cell = Cell(RefCell::new(f));
        let mut service = NbdService::new(&cell);
        let a = connect(&mut service, export);
        let b = connect(&mut service, export);
        let mut peers = [a, b];
        peers[0].input = request(kind, 1, 0, GIB as u32);
        event_loop_turn(&mut service, &mut peers, 0);
        let last = GIB - 4096;
        peers[1].input = request(0, 2, last, 4096);
        let mut turns = 1;
        let read = loop {
            event_loop_turn(&mut service, &mut peers, turns);
            turns += 1;
            if let Some(reply) = simple_reply(&mut peers[1], 4096) {
                break reply;
            }
            assert!(turns < 100_000, "B's read never answered");
        };
        assert_eq!((read.0, read.1), (0, 2));
        assert_eq!(
            &read.2[..7],
            b"theend!",
            "B saw the data before the request reached it"
        );
        assert!(
            service.has_work(&peers[0].conn),
            "the whole request ran before B's read"
        );
        assert!(simple_reply(&mut peers[0], 0).is_none());
        let reply = loop {
            event_loop_turn(&mut service, &mut peers, turns);
            turns += 1;
            if let Some(reply) = simple_reply(&mut peers[0], 0) {
                break reply;
            }
            assert!(turns < 100_000, "A never answered");
        };
        assert_eq!((reply.0, reply.1), (0, 1));
        let mut targets = Targets::default();
        check_done(&mut cell.0.borrow_mut().storage, &mut targets);
        turns
    }

    #[test]
    fn a_long_trim_of_a_daxfs_file_goes_in_bounded_parts() {
        // A thin 1 GiB file with 64 chunks of data (2 MiB each: the file
        // is large) spread over it, the last one at its very end.
        let mut f = Fixture::with_devices(&[160 * MIB], &[]);
        f.ok("create big 1G");
        for i in 0..63u64 {
            f.ok(&alloc::format!("write big {} data{i}", i * 16 * MIB));
        }
        f.ok(&alloc::format!("write big {} theend!", 1024 * MIB - 4096));
        let free_before = f.storage.filesystem(0).unwrap().statfs().free_blocks;
        let turns = long_request_with_a_reader_between_parts(f, "big", 4, |storage, targets| {
            let mut b = backend(storage, targets);
            let big = b.open("big").unwrap();
            let mut status = Vec::new();
            b.block_status(big, 0, 1 << 30, 16, &mut status).unwrap();
            assert_eq!(status, [Extent::hole(1 << 30)]);
            let fs = storage.filesystem(0).unwrap();
            // Every chunk is free again, and the overflow block that held
            // the extents beyond the 12 inline ones.
            assert_eq!(fs.statfs().free_blocks, free_before + 64 * 512 + 1);
        });
        // 64 chunks = 32768 blocks, at most 512 (2 MiB) per step.
        assert!(turns >= 64, "{turns} turns");
    }

    #[test]
    fn a_long_write_zeroes_of_a_raw_export_goes_in_bounded_parts() {
        let mut f = Fixture::with_devices(&[MIB << 10], &["pmem0"]);
        {
            let mut targets = Targets::default();
            let mut b = backend(&mut f.storage, &mut targets);
            let raw = b.open("pmem0").unwrap();
            b.write(raw, 0, &[0x55; 4096]).unwrap();
            b.write(raw, (1 << 30) - 4096, b"theend!").unwrap();
        }
        let turns = long_request_with_a_reader_between_parts(f, "pmem0", 6, |storage, targets| {
            let mut b = backend(storage, targets);
            let raw = b.open("pmem0").unwrap();
            for at in [0, (1 << 30) - 4096] {
                let mut buf = [1u8; 4096];
                b.read(raw, at, &mut buf).unwrap();
                assert!(buf.iter().all(|&x| x == 0));
            }
        });
        // 1 GiB at 2 MiB per step.
        assert!(turns >= 512, "{turns} turns");
    }

    #[test]
    fn a_step_never_goes_beyond_a_file_that_shrank() {
        let mut f = exports();
        let mut targets = Targets::default();
        let disk = backend(&mut f.storage, &mut targets).open("disk").unwrap();
        f.ok("truncate disk 1M");
        let mut b = backend(&mut f.storage, &mut targets);
        for flags in [
            ZeroFlags::default(),
            ZeroFlags {
                no_hole: true,
                fast: false,
            },
        ] {
            assert_eq!(
                b.write_zeroes_step(disk, 0, 4 * MIB, flags, 2 * MIB),
                Err(BackendError::NoSpace)
            );
        }
        assert_eq!(
            b.trim_step(disk, 0, 4 * MIB, 2 * MIB),
            Err(BackendError::NoSpace)
        );
        assert_eq!(
            b.info(disk).unwrap().size,
            MIB,
            "the file did not grow back"
        );
        assert_eq!(b.trim_step(disk, 0, MIB, 2 * MIB), Ok(MIB));
    }

    #[test]
    fn block_status_of_a_fragmented_file_looks_at_a_bounded_number_of_extents() {
        let mut f = Fixture::with_devices(&[16 * MIB], &[]);
        f.ok("create frag 2M");
        // Every other block: 256 data extents and 256 holes.
        for block in (0..512u64).step_by(2) {
            f.ok(&alloc::format!("write frag {} x", block * 4096));
        }
        let mut targets = Targets::default();
        let mut b = backend(&mut f.storage, &mut targets);
        let frag = b.open("frag").unwrap();
        let mut status = Vec::new();
        b.block_status(frag, 0, 2 * MIB, 10, &mut status).unwrap();
        assert_eq!(status.len(), 10, "{status:?}");
        assert_eq!(status.iter().map(|e| e.len).sum::<u64>(), 10 * 4096);
        status.clear();
        b.block_status(frag, 4096, 2 * MIB - 4096, 1, &mut status)
            .unwrap();
        assert_eq!(status, [Extent::hole(4096)]);
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
