//! Storage volumes in the kernel: the storage set of `daxbox-storage` over
//! the kernel's pmem, and the filesystem shell commands.
//!
//! What each pmem device becomes at boot, name resolution, the commands'
//! logic and every message they print live in `daxbox-storage` (host
//! tested). This module supplies what only the kernel has: the devices of
//! `kernel/src/pmem/` (probed in place, and handed over with `take_block`, which
//! passes every frame of the range to the new owner in the page-frame
//! table, so `blk write` cannot scribble over a mounted filesystem), the
//! TSC clock, a UUID source, the boot config and the serial console.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use daxbox_pmem::block::PmemBlockDevice;
use daxbox_pmem::frames::Owner;
use daxbox_storage::commands::ShellHost;
use daxbox_storage::{BootPolicy, Environment, Storage};
use spin::Mutex;

use crate::command::{Command, Console, Context};
use crate::pmem::{self, PmemRegion};
use crate::{config, time};

/// The storage state, shared by the shell and the NBD service.
pub static STORAGE: Mutex<Storage<PmemRegion>> = Mutex::new(Storage::new());

/// The kernel's devices, clock and UUID source.
pub struct KernelEnvironment;

impl Environment<PmemRegion> for KernelEnvironment {
    fn available_devices(&self) -> Vec<String> {
        pmem::device_names()
    }

    fn inspect<R>(
        &self,
        device: &str,
        f: impl FnOnce(&PmemBlockDevice<PmemRegion>) -> R,
    ) -> Option<R> {
        pmem::with_device(device, |d| f(&d.block))
    }

    fn taken_by(&self, device: &str) -> Option<Owner> {
        pmem::taken_by(device)
    }

    fn take(&mut self, device: &str, owner: Owner) -> Option<PmemBlockDevice<PmemRegion>> {
        pmem::take_block(device, owner)
    }

    fn give_back(&mut self, device: &str, memory: PmemRegion, owner: Owner) -> Result<(), String> {
        pmem::give_back_block(device, memory, owner)
    }

    fn now_us(&self) -> u64 {
        time::now_us()
    }

    fn new_uuid(&mut self, index: u8) -> [u8; 16] {
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&time::cycles().to_le_bytes());
        uuid[8..].copy_from_slice(&u64::from(index).to_le_bytes());
        uuid
    }
}

/// Looks at every pmem device and mounts, formats or exports it.
pub fn init() {
    let config = config::get();
    let mut storage = STORAGE.lock();
    let policy = BootPolicy {
        format: config.format,
        export_raw: config.export_raw.clone(),
    };
    daxbox_storage::boot(&mut storage, &mut KernelEnvironment, &policy, &mut Console);
    // After the mounts, so the rules see the files there are; before the
    // NBD listener starts.
    storage.set_read_only(config.readonly.clone());
    for line in storage.read_only_report() {
        crate::println!("storage: {}", line);
    }
    storage.access_mut().set_rules(config.allow.clone());
    for line in storage.access().report() {
        if line.starts_with("allow:") {
            crate::println!("{}", line);
        }
    }
}

/// The HTTP server's gate: the allow-list's answer for the client address
/// and verified certificate name (any HTTP rule for it), a refusal counted like NBD's.
pub fn http_gate() -> daxbox_netstack::http::Gate {
    alloc::boxed::Box::new(|peer, cn| {
        let mut storage = STORAGE.lock();
        let client = daxbox_storage::allow::Client { address: peer, cn };
        let admitted = storage
            .access()
            .admits(client, daxbox_storage::allow::Protocol::Http);
        if !admitted {
            storage
                .access_mut()
                .count(peer, daxbox_storage::allow::Reason::Policy, 1);
        }
        admitted
    })
}

/// Applies the boot policy to device `name`, which appeared after boot
/// (NVDIMM hot-add) or came back online; its exports are then listed to
/// NBD clients.
pub fn add_device(name: &str, out: &mut dyn fmt::Write) {
    let config = config::get();
    let policy = BootPolicy {
        format: config.format,
        export_raw: config.export_raw.clone(),
    };
    let mut storage = STORAGE.lock();
    daxbox_storage::boot_device(&mut storage, &mut KernelEnvironment, name, &policy, out);
    storage.refresh_read_only();
}

/// Takes device `name` out of the storage layer if it is in use there:
/// `umount NAME --force` (its NBD clients are disconnected first, the
/// filesystem unmounted clean, its frames given back).
pub fn release_device(name: &str, out: &mut dyn fmt::Write) -> Result<(), String> {
    let mut storage = STORAGE.lock();
    if storage.volume_of(name).is_err() {
        return Ok(());
    }
    daxbox_storage::lifecycle::umount(
        &mut storage,
        &mut KernelEnvironment,
        &[name, "--force"],
        out,
    )
}

/// One idle-time compaction pass (`daxbox_storage::compaction`: at most
/// 16 chunks looked at and one 2 MiB chunk gathered); true when it did
/// something. The event loop calls it only after it has served nothing
/// for a while.
pub fn compact_idle() -> bool {
    STORAGE.lock().compact_idle()
}

/// Whether idle-time compaction has something to look at (it is not
/// quiet, or a filesystem changed since it went quiet).
pub fn compaction_pending() -> bool {
    STORAGE.lock().compaction_pending()
}

/// Makes every filesystem durable and clean before power-off.
pub fn shutdown() {
    STORAGE.lock().shutdown();
}

impl ShellHost for Context {
    type Memory = PmemRegion;
    type Env = KernelEnvironment;

    fn with_storage<R>(
        &mut self,
        f: impl FnOnce(&mut Storage<PmemRegion>, &mut KernelEnvironment, &mut dyn fmt::Write) -> R,
    ) -> R {
        f(&mut STORAGE.lock(), &mut KernelEnvironment, &mut Console)
    }

    fn nbd_port(&self) -> u16 {
        config::get().nbd_port
    }
}

/// The filesystem commands.
pub const COMMANDS: &[Command] = &daxbox_storage::commands::table::<Context>();
