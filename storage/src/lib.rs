//! The daxbox storage service, without the machine: which pmem device
//! becomes what at boot, the volumes (daxfs mounts and raw exports), how
//! names like `pmemN` and `pmemN:NAME` resolve, the NBD exports and their
//! read-only policy, the NBD `Backend` and `TcpService`, and the storage
//! shell commands (`ls stat create rm mv clone truncate write cat df fsck
//! mkfs nbd`, and the lifecycle commands `umount mount grow` in
//! [`lifecycle`]).
//!
//! Everything is generic over `M:` [`PersistentMemory`], so the same code
//! runs in three places: the kernel (`kernel/src/storage.rs` and
//! `kernel/src/nbd.rs`, over identity-mapped pmem, serving through
//! smoltcp), the host server `daxbox-serve` (`storage/serve/`, over an
//! image file, serving through std TCP) and the unit tests here (over
//! `VecMemory`). What only the machine has comes in through
//! [`Environment`]: the devices not yet handed over (the kernel keeps them
//! in `kernel/src/pmem/` with their page-frame tables), a clock for the timings the
//! commands print and a source of filesystem UUIDs.
//!
//! Neighbours: `fs/daxfs` (the filesystem), `drivers/pmem` (block devices,
//! frame owners), `net/nbd` (the sans-I/O protocol engine this crate gives a
//! [`daxbox_nbd::Backend`]), `net/stack` (its [`daxbox_netstack::TcpService`]
//! trait, implemented by [`NbdService`]; depending on the crate for the
//! trait rather than copying it keeps the kernel's listener and the host
//! loop driving exactly one contract), `kernel/bootconfig` (the format
//! policy and size syntax) and `kernel/shell` (the command table type).
//!
//! Every message is the text the appliance has always printed: QEMU system
//! tests match on it, and the unit tests here compare whole outputs.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod allow;
pub mod boot;
pub mod commands;
pub mod compaction;
pub mod devices;
pub mod lifecycle;
pub mod metrics;
pub mod nbd;
pub mod nbd_tls;
pub mod readonly;
pub mod s3;
pub mod web;

#[cfg(test)]
mod testing;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use daxbox_persist::PersistentMemory;
use daxbox_pmem::block::PmemBlockDevice;
use daxbox_pmem::frames::Owner;
use daxfs::{FileId, Filesystem};

pub use boot::{boot, boot_device, decide, BootPolicy, Decision, LeaveReason};
pub use devices::DeviceList;
pub use nbd::{
    connection_bytes as nbd_connection_bytes, engine_config, export_names, export_names_page,
    NbdConnection, NbdService, SharedStorage, StorageBackend, Targets,
};
pub use readonly::ReadOnlyPolicy;

/// What the storage layer needs from whoever runs it.
///
/// The kernel implements it over `kernel/src/pmem/` (devices with their page-frame
/// tables, the TSC clock); `daxbox-serve` over image files; tests over
/// `VecMemory`.
pub trait Environment<M: PersistentMemory> {
    /// Names of the devices not handed over yet, in discovery order.
    fn available_devices(&self) -> Vec<String>;
    /// Runs `f` on available device `device`; `None` when there is no such
    /// available device.
    fn inspect<R>(&self, device: &str, f: impl FnOnce(&PmemBlockDevice<M>) -> R) -> Option<R>;
    /// Who holds device `device`, when it was handed over.
    fn taken_by(&self, device: &str) -> Option<Owner>;
    /// Hands device `device` over to `owner` (in the kernel: every frame of
    /// the range passes to `owner` in the page-frame table). `None` when
    /// there is no such available device or it cannot be handed over.
    fn take(&mut self, device: &str, owner: Owner) -> Option<PmemBlockDevice<M>>;
    /// Gives back the memory of device `device`, taken earlier for `owner`
    /// (`umount`): the device becomes available again as it was before
    /// `take` (in the kernel: its frames return from `owner` to the
    /// device). An error says why it cannot (the memory is then dropped
    /// and the device stays out of use until the next boot).
    fn give_back(&mut self, device: &str, memory: M, owner: Owner) -> Result<(), String>;
    /// Microseconds since some fixed point (for the timings printed).
    fn now_us(&self) -> u64;
    /// A fresh filesystem identity for a format of device number `index`.
    fn new_uuid(&mut self, index: u8) -> [u8; 16];
}

/// A mounted filesystem or a raw export.
pub enum Role<M: PersistentMemory> {
    /// daxfs mounted on the device (boxed: the mounted state is much larger
    /// than a raw block device).
    Filesystem(Box<Filesystem<M>>),
    /// The whole device, exported raw.
    Raw(PmemBlockDevice<M>),
}

/// One device in use by the storage layer.
pub struct Volume<M: PersistentMemory> {
    /// Device name (`pmem0`, ...).
    pub device: String,
    /// What it is used for.
    pub role: Role<M>,
}

/// One NBD connection as the `nbd` command shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// Connection number, from 1 in accept order.
    pub id: u64,
    /// The client's address and port, when the transport told it.
    pub peer: Option<core::net::SocketAddr>,
    /// When it was accepted (ms, the service's clock, which is the
    /// environment's `now_us` / 1000).
    pub opened_ms: u64,
    /// Device of the export in use, once the handshake is over.
    pub device: Option<String>,
    /// The file in use, when the export is a file.
    pub file: Option<FileId>,
    /// The connection holds `file` open in its filesystem (daxfs `open`),
    /// so that removing the file's name leaves it to the connection until
    /// it closes (FORMAT.md "Orphans"). Cleared by `umount`, whose
    /// filesystem takes its holds with it.
    pub held: bool,
    /// Export name, or `(handshake)`.
    pub export: String,
    /// The engine's counters.
    pub stats: daxbox_nbd::ConnectionStats,
}

/// All volumes in device order, the read-only rules, and the NBD
/// connections (kept here so that one lock covers what the `nbd` command
/// shows).
pub struct Storage<M: PersistentMemory> {
    /// The volumes.
    pub volumes: Vec<Volume<M>>,
    /// The `readonly=` rules and the files they cover ([`readonly`]).
    read_only: ReadOnlyPolicy,
    /// The `allow=` rules and the refusals counted ([`allow`]).
    access: allow::Access,
    /// Open NBD connections.
    connections: Vec<ConnectionStatus>,
    /// Connections `umount --force` or `truncate --force` cut: the NBD
    /// service serves them no more and aborts them at its next poll.
    disconnecting: Vec<u64>,
    /// The budget mounts and formats charge (`daxbox_budget::MOUNT`).
    mount_budget: &'static daxbox_budget::Budget,
    /// What the object API knows of files' contents, for ETags, by
    /// (device number, file) ([`s3`]).
    object_tags: alloc::collections::BTreeMap<(u8, FileId), s3::ObjectTag>,
    /// Counts changes made other than by an S3 PUT ([`Storage::file_changed`]).
    tag_epoch: u64,
    /// Files object GETs hold open while they send them, by hold number
    /// (device, file): a PUT or DELETE of the key leaves the file to the
    /// reader as a daxfs orphan ([`s3`]). `umount` drops a device's
    /// entries (its holds go with the filesystem).
    object_reads: alloc::collections::BTreeMap<u64, (String, FileId)>,
    /// The next hold number of `object_reads`.
    next_object_read: u64,
    /// Counters for metrics ([`metrics`]).
    metrics: metrics::StorageMetrics,
    /// The idle-time compaction pass ([`compaction`]).
    idle: compaction::IdleCompaction,
}

impl<M: PersistentMemory> Default for Storage<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// A file named on the command line or by an NBD client: `NAME` (the first
/// filesystem that has it, in device order) or `pmemN:NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// Index into `Storage::volumes`.
    pub volume: usize,
    /// The file.
    pub file: FileId,
}

/// Why a name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// `pmemN` names no volume; whether the device exists at all decides
    /// the message ([`NameError::explain`]).
    NotAVolume(String),
    /// The device is exported raw.
    Raw(String),
    /// No file of that (bare) name.
    NoSuchFile(String),
    /// No filesystem is mounted anywhere.
    NoFilesystem,
}

impl NameError {
    /// The message, with [`NameError::NotAVolume`] told apart: a device
    /// that exists but holds no mounted filesystem or raw export is named
    /// as such, so that `pmemN:NAME` never silently means a file called
    /// `pmemN:NAME` on some other device.
    pub fn explain<M: PersistentMemory, E: Environment<M>>(self, env: &E) -> String {
        match self {
            NameError::NotAVolume(device) => {
                if env.inspect(&device, |_| ()).is_some() || env.taken_by(&device).is_some() {
                    alloc::format!(
                        "{} has no mounted filesystem (see the boot log, or `mkfs {}`)",
                        device,
                        device
                    )
                } else {
                    alloc::format!("no such device: {}", device)
                }
            }
            other => alloc::format!("{}", other),
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::NotAVolume(device) => write!(f, "{} is not in use as a volume", device),
            NameError::Raw(device) => write!(f, "{} is exported raw, not a filesystem", device),
            NameError::NoSuchFile(name) => write!(f, "no such file: {}", name),
            NameError::NoFilesystem => f.write_str("no filesystem is mounted"),
        }
    }
}

impl<M: PersistentMemory> Storage<M> {
    /// No volumes (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            volumes: Vec::new(),
            read_only: ReadOnlyPolicy::new(),
            access: allow::Access::new(),
            connections: Vec::new(),
            disconnecting: Vec::new(),
            mount_budget: &daxbox_budget::MOUNT,
            object_tags: alloc::collections::BTreeMap::new(),
            tag_epoch: 0,
            object_reads: alloc::collections::BTreeMap::new(),
            next_object_read: 0,
            metrics: metrics::StorageMetrics::new(),
            idle: compaction::IdleCompaction::new(),
        }
    }

    /// Counters for metrics: NBD requests by export and operation,
    /// recovery events.
    pub fn metrics(&self) -> &metrics::StorageMetrics {
        &self.metrics
    }

    /// The allow-list and its refusal counts ([`allow`]).
    pub fn access(&self) -> &allow::Access {
        &self.access
    }

    /// The allow-list, to set its rules or count a refusal.
    pub fn access_mut(&mut self) -> &mut allow::Access {
        &mut self.access
    }

    /// Records an NBD connection using `file` of `device`, holding it open
    /// as a real connection does (tests).
    #[cfg(test)]
    pub(crate) fn add_test_connection(&mut self, device: &str, file: FileId) {
        let held = self
            .volumes
            .iter_mut()
            .find(|v| v.device == device)
            .and_then(|v| match &mut v.role {
                Role::Filesystem(fs) => fs.open(file).ok(),
                Role::Raw(_) => None,
            })
            .is_some();
        let id = self.connections.len() as u64 + 1000;
        self.connections.push(ConnectionStatus {
            id,
            peer: None,
            opened_ms: 0,
            device: Some(device.into()),
            file: Some(file),
            export: device.into(),
            stats: Default::default(),
            held,
        });
    }

    /// Sets the budget that mounts charge (tests use their own).
    pub fn set_mount_budget(&mut self, budget: &'static daxbox_budget::Budget) {
        self.mount_budget = budget;
    }

    /// The budget that mounts charge.
    pub fn mount_budget(&self) -> &'static daxbox_budget::Budget {
        self.mount_budget
    }

    /// The default filesystem: the first volume, in device order, that
    /// holds one. Bare names (`NAME`, no `pmemN:`) create files there and
    /// are its files' canonical names.
    pub fn default_filesystem(&self) -> Option<usize> {
        self.volumes
            .iter()
            .position(|v| matches!(v.role, Role::Filesystem(_)))
    }

    /// The one canonical name of file `bare` on volume `volume`: the one
    /// NBD lists and sends back, `ls` and `nbd` show and `readonly=`
    /// takes. See [`canonical_name`].
    pub fn canonical_name(&self, volume: usize, bare: &str) -> String {
        let device = self.volumes.get(volume).map_or("", |v| v.device.as_str());
        canonical_name(device, self.default_filesystem() == Some(volume), bare)
    }

    /// The open NBD connections.
    pub fn connections(&self) -> &[ConnectionStatus] {
        &self.connections
    }

    /// The filesystem on volume `index`, if it is one.
    pub fn filesystem(&mut self, index: usize) -> Option<&mut Filesystem<M>> {
        match &mut self.volumes.get_mut(index)?.role {
            Role::Filesystem(fs) => Some(fs.as_mut()),
            Role::Raw(_) => None,
        }
    }

    /// Whether any filesystem is mounted.
    pub fn has_filesystem(&self) -> bool {
        self.volumes
            .iter()
            .any(|v| matches!(v.role, Role::Filesystem(_)))
    }

    /// The volume of device `device` (`pmemN`).
    pub fn volume_of(&self, device: &str) -> Result<usize, NameError> {
        self.volumes
            .iter()
            .position(|v| v.device == device)
            .ok_or_else(|| NameError::NotAVolume(device.into()))
    }

    /// The volume of device `device`, which must hold a filesystem.
    pub fn filesystem_volume(&self, device: &str) -> Result<usize, NameError> {
        let index = self.volume_of(device)?;
        match self.volumes[index].role {
            Role::Filesystem(_) => Ok(index),
            Role::Raw(_) => Err(NameError::Raw(device.into())),
        }
    }

    /// Splits `pmemN:NAME` into (volume index, NAME); a plain `NAME` gives
    /// `None` for the volume. A `pmemN:` prefix naming a device that is
    /// not in use as a volume is an error.
    pub fn split_qualified<'a>(
        &self,
        name: &'a str,
    ) -> Result<(Option<usize>, &'a str), NameError> {
        match name.split_once(':') {
            Some((device, rest)) if is_device_name(device) => {
                Ok((Some(self.volume_of(device)?), rest))
            }
            _ => Ok((None, name)),
        }
    }

    /// Finds an existing file.
    pub fn lookup(&self, name: &str) -> Result<FileRef, NameError> {
        let (volume, name) = self.split_qualified(name)?;
        for (index, candidate) in self.volumes.iter().enumerate() {
            if volume.is_some_and(|v| v != index) {
                continue;
            }
            if let Role::Filesystem(fs) = &candidate.role {
                // The object API's temporary files are not for anyone else.
                if s3::hidden(name) {
                    continue;
                }
                if let Ok(file) = fs.lookup(name) {
                    return Ok(FileRef {
                        volume: index,
                        file,
                    });
                }
            }
        }
        Err(NameError::NoSuchFile(name.into()))
    }

    /// The filesystem a new file called `name` goes to: the named device,
    /// else the first mounted filesystem. Returns (volume, bare name).
    pub fn target<'a>(&self, name: &'a str) -> Result<(usize, &'a str), NameError> {
        let (volume, bare) = self.split_qualified(name)?;
        let index = match volume {
            Some(index) => index,
            None => self
                .volumes
                .iter()
                .position(|v| matches!(v.role, Role::Filesystem(_)))
                .ok_or(NameError::NoFilesystem)?,
        };
        match self.volumes[index].role {
            Role::Filesystem(_) => Ok((index, bare)),
            Role::Raw(_) => Err(NameError::Raw(self.volumes[index].device.clone())),
        }
    }

    /// Makes everything durable and marks every filesystem clean (before
    /// power-off). Afterwards the volumes are gone.
    pub fn shutdown(&mut self) {
        for volume in self.volumes.drain(..) {
            match volume.role {
                Role::Filesystem(fs) => {
                    let _ = fs.unmount();
                }
                Role::Raw(mut block) => {
                    block.memory_mut().fence();
                }
            }
        }
    }
}

/// Whether `text` is a device name (`pmem0`..`pmem999`): the one
/// device-name grammar of `daxbox-syntax`.
pub use daxbox_syntax::is_device_name;

/// The canonical name of file `bare` on `device`: `bare` itself on the
/// default filesystem (`default`), `device:bare` everywhere else, and also
/// on the default filesystem when `bare` alone would be read as something
/// else (a device name `pmemN`, a `pmemN:` prefix, or `*`, which
/// `readonly=` reads as every export). Every name this gives opens its
/// file ([`Storage::lookup`]), and no two files or devices get the same
/// name: raw devices are named `pmemN`, which no file's canonical name is.
pub fn canonical_name(device: &str, default: bool, bare: &str) -> String {
    let ambiguous = bare == "*"
        || is_device_name(bare)
        || bare
            .split_once(':')
            .is_some_and(|(prefix, _)| is_device_name(prefix));
    if default && !ambiguous {
        bare.into()
    } else {
        alloc::format!("{}:{}", device, bare)
    }
}

/// Formats a byte count with a binary unit (`64 MiB`, `504.7 MiB`), as
/// everything in daxbox prints sizes.
pub use daxbox_syntax::human;

/// The number of device `name` (`pmem3` → 3) for page-frame owners;
/// `u8::MAX` when it has none that fits.
pub fn device_index(name: &str) -> u8 {
    daxbox_syntax::device_index(name)
        .and_then(|index| u8::try_from(index).ok())
        .unwrap_or(u8::MAX)
}

/// Parses a size typed at the shell (`daxbox-syntax`'s grammar: decimal or
/// `0x` hex, optional `K`/`M`/`G`/`T` or `KiB`..`TiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    daxbox_syntax::parse_size(text).map_err(|_| alloc::format!("bad size '{}'", text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;

    #[test]
    fn device_names() {
        assert!(is_device_name("pmem0"));
        assert!(is_device_name("pmem12"));
        assert!(!is_device_name("pmem"));
        assert!(!is_device_name("pmemx"));
        assert!(!is_device_name("disk"));
        assert_eq!(device_index("pmem3"), 3);
        assert_eq!(device_index("pmem999"), u8::MAX);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(1 << 40), "1 TiB");
    }

    #[test]
    fn qualified_names_resolve_per_device() {
        // pmem0 and pmem1 are filesystems, pmem2 raw, pmem3 blank and left
        // alone.
        let mut f = Fixture::standard();
        f.run("create same 4K").unwrap();
        f.run("create pmem1:same 8K").unwrap();
        f.run("create only1 4K").unwrap();
        let s = &f.storage;
        assert_eq!(s.lookup("same").unwrap().volume, 0);
        assert_eq!(s.lookup("pmem1:same").unwrap().volume, 1);
        assert_eq!(s.lookup("pmem0:same").unwrap().volume, 0);
        assert_eq!(
            s.lookup("pmem0:nothing"),
            Err(NameError::NoSuchFile("nothing".into()))
        );
        // A name with a colon that is not a device prefix is a plain name.
        assert_eq!(s.lookup("a:b"), Err(NameError::NoSuchFile("a:b".into())));
        assert_eq!(
            s.lookup("pmem3:x").unwrap_err().explain(&f.env),
            "pmem3 has no mounted filesystem (see the boot log, or `mkfs pmem3`)"
        );
        assert_eq!(
            s.lookup("pmem9:x").unwrap_err().explain(&f.env),
            "no such device: pmem9"
        );
        assert_eq!(
            s.target("pmem2:x").unwrap_err().explain(&f.env),
            "pmem2 is exported raw, not a filesystem"
        );
        assert_eq!(s.target("new"), Ok((0, "new")));
        assert_eq!(s.target("pmem1:new"), Ok((1, "new")));
    }

    #[test]
    fn no_filesystem_is_an_error_for_new_files() {
        let mut f = Fixture::empty();
        assert_eq!(f.storage.target("x"), Err(NameError::NoFilesystem));
        assert_eq!(
            f.run("create x 4K").unwrap_err(),
            "no filesystem is mounted"
        );
    }

    #[test]
    fn shutdown_marks_filesystems_clean() {
        let mut f = Fixture::standard();
        f.storage.shutdown();
        assert!(f.storage.volumes.is_empty());
    }
}
