//! The daxbox network stack glue: one smoltcp [`Interface`](smoltcp::iface::Interface)
//! over any `smoltcp::phy::Device`, its address configuration (DHCPv4 or a
//! static address from the boot config), packet counters, and a small
//! framework that serves TCP ports with sans-I/O services.
//!
//! Neighbours: the kernel (`kernel/src/net/`) supplies the virtio-net device
//! and the clock and calls [`NetStack::poll`] from its event loop, halting
//! when there is no work; `net/nbd` provides an NBD engine that plugs in as a
//! [`TcpService`] the same way as the [`http`] service here. Data moves
//! straight between smoltcp's socket buffers and the service (no extra copy).
//! Everything is `no_std` + `alloc` and is tested on the host over smoltcp's
//! `Loopback` device with a fake clock.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod device;
pub mod http;
mod service;
mod stack;
pub mod tls;

pub use device::{Counters, CountingDevice};
pub use service::{
    Listener, ListenerConfig, ListenerStats, PortListener, Refusal, TcpService,
    HALF_OPEN_MIN_AGE_MS, RESET_GRACE_MS,
};
pub use stack::{IpMode, NetConfig, NetError, NetStack, NetStatus, PollOutcome};

/// Re-exported so the kernel and tests name the same smoltcp version.
pub use smoltcp;
