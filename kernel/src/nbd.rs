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
    if let Err(why) = crate::tls::nbd_allowed() {
        println!("nbd: not started: {}", why);
        return;
    }
    let port = config::get().nbd_port;
    let boot = config::get();
    // `allow=` lines about NBD that could not be used: fail closed, no
    // listener at all.
    if let Some(why) = boot.allow.failure(daxbox_bootconfig::Protocol::Nbd) {
        println!("nbd: not served (failing closed): {}", why);
        return;
    }
    let mut listener = daxbox_netstack::ListenerConfig::new(port);
    // Room for a 256 KiB request or reply in flight each way per client.
    listener.rx_buffer = 256 * 1024;
    listener.tx_buffer = 256 * 1024;
    listener.max_connections = usize::from(boot.nbd_max_connections);
    listener.max_per_address = usize::from(boot.nbd_max_per_address);
    // Every socket and the engine state it may grow to are charged to the
    // NBD budget before they exist.
    listener.budget = Some(&daxbox_budget::NBD);
    listener.connection_bytes =
        daxbox_storage::nbd_connection_bytes(&daxbox_storage::engine_config(boot));
    let mut service =
        NbdService::for_boot_config(KernelStorage, boot).with_clock(crate::time::now_us);
    if let Some(server) = crate::tls::server() {
        // A TLS session and its scratch buffer per connection, charged
        // before the connection exists.
        listener.connection_bytes += daxbox_storage::nbd_tls::TLS_CONNECTION_BYTES;
        service = service.with_tls(server.clone());
    }
    let service = daxbox_netstack::Listener::new(listener, service);
    match crate::net::add_listener(service.boxed()) {
        Ok(()) => println!(
            "nbd: listening on port {} (at most {} connections, {} per address{}{})",
            port,
            boot.nbd_max_connections,
            boot.nbd_max_per_address,
            if boot.nbd_list {
                ""
            } else {
                "; export listing off: nbd_list=off"
            },
            match boot.tls.mode {
                daxbox_bootconfig::TlsMode::Off => "",
                daxbox_bootconfig::TlsMode::On => "; STARTTLS offered",
                daxbox_bootconfig::TlsMode::Require => "; TLS required",
            }
        ),
        Err(error) => println!("nbd: not started: {}", error),
    }
}
