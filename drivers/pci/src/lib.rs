//! PCI configuration-space access and enumeration for daxbox.
//!
//! This crate is the safe, host-testable half of the kernel's PCI support.
//! It encodes configuration addresses for the legacy port-I/O mechanism
//! (0xCF8/0xCFC, PCI Local Bus 3.0 §3.2.2.3.2) and for PCIe ECAM (PCIe Base
//! 4.0 §7.2.2), parses the ACPI MCFG table that locates ECAM windows (PCI
//! Firmware 3.2 §4.1.2), walks buses (multi-function devices, PCI-to-PCI
//! bridges), decodes and sizes BARs, walks capability lists and names device
//! classes for the shell's `lspci`. The actual port and MMIO instructions live
//! in `daxbox-platform` (`platform/src/pci.rs`) behind the tiny [`PortIo`] and
//! [`MmioIo`] traits; tests use a fake configuration space. The adapter that
//! lets `virtio-drivers` reach configuration space through any
//! [`ConfigAccess`] is in `daxbox-platform` (its trait requires an unchecked
//! clone method, which only the platform crate may implement).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod access;
mod bar;
mod capability;
mod class;
mod enumerate;
mod intx;
mod mcfg;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use access::{
    ecam_offset, legacy_address, Ecam, LegacyPorts, MmioIo, PortIo, CONFIG_ADDRESS, CONFIG_DATA,
};
pub use bar::{decode_bar, probe_bars, Bar};
pub use capability::{capabilities, Capabilities, Capability};
pub use class::{class_name, device_name};
pub use enumerate::{enumerate, read_function, Function, MAX_FUNCTIONS};
pub use intx::{intx_gsi, Chipset, Q35_HOST_BRIDGE};
pub use mcfg::{parse_mcfg, McfgEntry, McfgError};

use core::fmt;

/// A bus/device/function triple: the address of one PCI function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number, 0..=255.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl Bdf {
    /// Builds an address, or `None` when the device or function is out of range.
    pub fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self {
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for Bdf {
    /// The conventional `bb:dd.f` form used by `lspci`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Reads and writes 32-bit registers of PCI configuration space.
///
/// `offset` is a byte offset into the function's configuration space and is
/// rounded down to a multiple of 4. Offsets the mechanism cannot reach (at or
/// above 256 for the legacy mechanism, 4096 for ECAM) read as all-ones and
/// ignore writes, which is what hardware does for an absent function.
pub trait ConfigAccess {
    /// Reads the dword at `offset`.
    fn read_u32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the dword at `offset`.
    fn write_u32(&mut self, bdf: Bdf, offset: u16, value: u32);

    /// Reads the 16-bit value at `offset` (must be 2-byte aligned to be meaningful).
    fn read_u16(&self, bdf: Bdf, offset: u16) -> u16 {
        let shift = u32::from(offset & 2) * 8;
        (self.read_u32(bdf, offset & !3) >> shift) as u16
    }

    /// Reads the byte at `offset`.
    fn read_u8(&self, bdf: Bdf, offset: u16) -> u8 {
        let shift = u32::from(offset & 3) * 8;
        (self.read_u32(bdf, offset & !3) >> shift) as u8
    }
}

impl<T: ConfigAccess + ?Sized> ConfigAccess for &mut T {
    fn read_u32(&self, bdf: Bdf, offset: u16) -> u32 {
        (**self).read_u32(bdf, offset)
    }
    fn write_u32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        (**self).write_u32(bdf, offset, value)
    }
}

/// Standard configuration-space register offsets (PCI Local Bus 3.0 §6.1).
pub mod reg {
    /// Vendor ID (low 16) and device ID (high 16).
    pub const ID: u16 = 0x00;
    /// Command (low 16) and status (high 16).
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision (byte 0), prog-if (1), subclass (2), class (3).
    pub const CLASS_REVISION: u16 = 0x08;
    /// Cache line, latency timer, header type (byte 2), BIST.
    pub const HEADER: u16 = 0x0C;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Type-1 header: primary (byte 0), secondary (1), subordinate (2) bus.
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Capabilities pointer (type 0 and type 1 headers).
    pub const CAPABILITIES: u16 = 0x34;
    /// Interrupt line (byte 0) and pin (byte 1).
    pub const INTERRUPT: u16 = 0x3C;

    /// Command register: respond to I/O space accesses.
    pub const COMMAND_IO: u16 = 1 << 0;
    /// Command register: respond to memory space accesses.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command register: may act as bus master (DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command register: INTx# assertion disabled.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status register: a capability list is present.
    pub const STATUS_CAPABILITIES: u16 = 1 << 4;
}
