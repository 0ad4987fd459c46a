//! The NBD service: `daxbox-storage`'s `NbdService` (the `daxbox-nbd`
//! engine over the storage volumes) served on a TCP port by the network
//! stack's listener framework.
//!
//! Exports, the read-only policy, the data path and the per-connection
//! counters behind the `nbd` command are described (and host tested) in
//! `daxbox-storage`; this module only reaches the kernel's storage set and
//! starts the listener with the boot config's policy (`nbd_list=`).

use daxbox_storage::{NbdService, SharedStorage, Storage};

use crate::command::{Command, Context};
use crate::pmem::PmemRegion;
use crate::storage::STORAGE;
use crate::{config, println};

/// The kernel's storage set, locked for each engine call.
pub struct KernelStorage;

impl SharedStorage<PmemRegion> for KernelStorage {
    fn with<R>(&self, f: impl FnOnce(&mut Storage<PmemRegion>) -> R) -> R {
        f(&mut STORAGE.lock())
    }
}

/// The `nbd` shell command.
pub const COMMANDS: &[Command] = &daxbox_storage::commands::nbd_table::<Context>();

/// Starts the NBD listener on the configured port (after `net::init`).
pub fn start() {
    let port = config::get().nbd_port;
    let mut listener = daxbox_netstack::ListenerConfig::new(port);
    // Room for a 256 KiB request or reply in flight each way per client.
    listener.rx_buffer = 256 * 1024;
    listener.tx_buffer = 256 * 1024;
    let boot = config::get();
    let service = NbdService::for_boot_config(KernelStorage, boot);
    let service = daxbox_netstack::Listener::new(listener, service);
    match crate::net::add_listener(service.boxed()) {
        Ok(()) if boot.nbd_list => println!("nbd: listening on port {}", port),
        Ok(()) => println!(
            "nbd: listening on port {} (export listing off: nbd_list=off)",
            port
        ),
        Err(error) => println!("nbd: not started: {}", error),
    }
}
