//! `daxbox-serve`: the daxbox storage service on the host.
//!
//! It opens pmem image files (the same files QEMU uses as NVDIMM backing
//! stores), names them `pmem0`, `pmem1`, ... and builds the same
//! [`daxbox_storage::Storage`] with the same boot decision
//! ([`daxbox_storage::boot`]) the kernel uses, then serves the same
//! [`daxbox_storage::NbdService`] over std TCP on 127.0.0.1. Real NBD
//! clients test the whole storage service this way in seconds; the QEMU
//! system test (`tests/tests/system/nbd.rs`) boots the appliance twice and keeps
//! only what needs the kernel.
//!
//! Pieces: [`ImageMemory`] (the host `PersistentMemory` over a file),
//! [`HostEnvironment`] (devices, clock, UUIDs), [`TcpLoop`] (drives any
//! [`daxbox_netstack::TcpService`] over std sockets the way the kernel's
//! smoltcp listener does) and [`Admin`] (the storage shell commands on
//! stdin).
//!
//! Why not smoltcp on the host: smoltcp needs a raw layer-2 device, i.e. a
//! TAP interface in a network namespace, which needs root. The TCP-level
//! behaviour of the kernel (the listener framework in `net/stack`, its
//! buffers, FIN and RST handling) is covered by `net/stack`'s loopback
//! tests and by the QEMU system tests; what this server tests is
//! everything above the socket.
//!
//! Neighbours: `storage/` (`daxbox-storage`, all the logic), `net/nbd`
//! (the protocol engine inside it), `tests/` (`daxbox_tests::nbd_client`,
//! the client helpers the end-to-end tests in `tests/real_clients.rs`
//! share with the QEMU tests).

mod admin;
mod environment;
mod image;
mod tcp;

pub use admin::{Admin, Outcome, Shared, State};
pub use environment::HostEnvironment;
pub use image::{ImageMemory, ImageSpec};
pub use tcp::TcpLoop;

/// The state behind the one `RefCell` the service and the admin share.
pub fn admin_shared(state: State) -> Shared {
    Shared(std::rc::Rc::new(std::cell::RefCell::new(state)))
}
