//! The hardware half of PCI configuration access for `daxbox-pci`: the
//! legacy 0xCF8/0xCFC ports and the memory-mapped ECAM window.
//!
//! Invariant: [`ConfigPorts`] performs port I/O only on 0xCF8..0xD00 (PCI
//! configuration mechanism #1) and [`EcamMmio`] only inside the ECAM
//! window it mapped; any other address reads as all-ones (an absent
//! device) and writes are dropped.

use daxbox_pci::{MmioIo, PortIo, CONFIG_ADDRESS, CONFIG_DATA};
use x86_64::instructions::port::Port;

use crate::memory::{MapError, PhysRange};
use crate::mmio::{self, MmioRegion};

/// `in`/`out` on the two configuration ports.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigPorts;

/// Whether a 32-bit access at `port` stays inside CONFIG_ADDRESS and
/// CONFIG_DATA (0xCF8..0xD00).
fn is_config_port(port: u16) -> bool {
    (CONFIG_ADDRESS..=CONFIG_DATA).contains(&port) && port.is_multiple_of(4)
}

impl PortIo for ConfigPorts {
    fn read_u32(&self, port: u16) -> u32 {
        if !is_config_port(port) {
            return u32::MAX;
        }
        // SAFETY: `port` is CONFIG_ADDRESS or CONFIG_DATA, the PCI
        // configuration mechanism #1 ports; reading them has no effect
        // beyond the selected configuration register.
        unsafe { Port::<u32>::new(port).read() }
    }

    fn write_u32(&self, port: u16, value: u32) {
        if !is_config_port(port) {
            return;
        }
        // SAFETY: as in `read_u32`; a configuration write reaches PCI
        // configuration space only, never memory.
        unsafe { Port::<u32>::new(port).write(value) }
    }
}

/// Volatile 32-bit access to an identity-mapped ECAM window.
#[derive(Clone, Copy, Debug)]
pub struct EcamMmio {
    window: MmioRegion,
}

impl EcamMmio {
    /// Maps the ECAM window `range` (from the ACPI MCFG) uncached.
    pub fn map(range: PhysRange) -> Result<Self, MapError> {
        let window = mmio::map(range)?;
        Ok(Self { window })
    }

    /// The offset of a dword at absolute `address` inside the window.
    fn offset(&self, address: usize) -> Option<u64> {
        let range = self.window.range();
        let address = address as u64;
        (address >= range.start
            && address.checked_add(4).is_some_and(|end| end <= range.end)
            && address.is_multiple_of(4))
        .then(|| address - range.start)
    }
}

impl MmioIo for EcamMmio {
    fn read_u32(&self, address: usize) -> u32 {
        match self.offset(address) {
            Some(offset) => self.window.read::<u32>(offset),
            None => u32::MAX,
        }
    }

    fn write_u32(&self, address: usize, value: u32) {
        if let Some(offset) = self.offset(address) {
            self.window.write::<u32>(offset, value);
        }
    }
}
