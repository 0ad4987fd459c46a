//! The virtio transport, split virtqueue and network device driver daxbox
//! uses: the parts of the `virtio-drivers` crate 0.13.0 (MIT,
//! rcore-os/virtio-drivers, licence text in `LICENSE-MIT` here) that daxbox
//! needs, with daxbox's fixes, inside the platform crate because they are
//! `unsafe` ring and MMIO code.
//!
//! What is upstream's and what is daxbox's: see `README.md` in this
//! directory. Left out of upstream: the MMIO and x86 hypercall transports,
//! every device but network (the entropy driver in [`crate::virtio_rng`]
//! uses [`queue::VirtQueue`] directly), indirect descriptor lists and the
//! owning queue (upstream's `alloc` feature), `embedded-io`.

#![deny(unused_must_use, missing_docs)]
#![allow(clippy::identity_op)]

pub mod config;
pub mod device;
mod hal;
pub mod queue;
pub mod transport;

use thiserror::Error;

pub use self::hal::{BufferDirection, Hal, PhysAddr};

/// The page size in bytes supported by the library (4 KiB).
pub const PAGE_SIZE: usize = 0x1000;

/// The type returned by driver methods.
pub type Result<T = ()> = core::result::Result<T, Error>;

/// The error type of VirtIO drivers.
#[derive(Copy, Clone, Debug, Eq, Error, PartialEq)]
pub enum Error {
    /// There are not enough descriptors available in the virtqueue, try again later.
    #[error("Virtqueue is full")]
    QueueFull,
    /// The device is not ready.
    #[error("Device not ready")]
    NotReady,
    /// The device used a different descriptor chain to the one we were expecting.
    #[error("Device used a different descriptor chain to the one we were expecting")]
    WrongToken,
    /// The queue is already in use.
    #[error("Virtqueue is already in use")]
    AlreadyUsed,
    /// Invalid parameter.
    #[error("Invalid parameter")]
    InvalidParam,
    /// Failed to allocate DMA memory.
    #[error("Failed to allocate DMA memory")]
    DmaError,
    /// I/O error
    #[error("I/O error")]
    IoError,
    /// The request was not supported by the device.
    #[error("Request not supported by device")]
    Unsupported,
    /// The config space advertised by the device is smaller than the driver expected.
    #[error("Config space advertised by the device is smaller than expected")]
    ConfigSpaceTooSmall,
    /// The device doesn't have any config space, but the driver expects some.
    #[error("The device doesn't have any config space, but the driver expects some")]
    ConfigSpaceMissing,
}

/// Align `size` up to a page.
fn align_up(size: usize) -> usize {
    (size + PAGE_SIZE) & !(PAGE_SIZE - 1)
}

/// The number of pages required to store `size` bytes, rounded up to a whole number of pages.
fn pages(size: usize) -> usize {
    size.div_ceil(PAGE_SIZE)
}
