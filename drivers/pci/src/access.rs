//! The two configuration access mechanisms: legacy port I/O and ECAM.

use crate::{Bdf, ConfigAccess};

/// CONFIG_ADDRESS port of the legacy mechanism (PCI Local Bus 3.0 §3.2.2.3.2).
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// CONFIG_DATA port of the legacy mechanism.
pub const CONFIG_DATA: u16 = 0xCFC;

/// 32-bit x86 port I/O, implemented by the kernel with `in`/`out` instructions.
pub trait PortIo {
    /// `in eax, port`.
    fn read_u32(&self, port: u16) -> u32;
    /// `out port, eax`.
    fn write_u32(&self, port: u16, value: u32);
}

/// 32-bit volatile MMIO at a virtual address, implemented by the kernel.
pub trait MmioIo {
    /// Volatile 32-bit load from `address`.
    fn read_u32(&self, address: usize) -> u32;
    /// Volatile 32-bit store to `address`.
    fn write_u32(&self, address: usize, value: u32);
}

/// The CONFIG_ADDRESS value selecting `offset` of `bdf`, or `None` when the
/// offset is beyond the 256 bytes the legacy mechanism reaches.
///
/// Bit 31 enables the cycle; bits 23:16 bus, 15:11 device, 10:8 function,
/// 7:2 register (PCI Local Bus 3.0 figure 3-2).
pub fn legacy_address(bdf: Bdf, offset: u16) -> Option<u32> {
    if offset >= 256 || bdf.device >= 32 || bdf.function >= 8 {
        return None;
    }
    Some(
        0x8000_0000
            | u32::from(bdf.bus) << 16
            | u32::from(bdf.device) << 11
            | u32::from(bdf.function) << 8
            | u32::from(offset & 0xFC),
    )
}

/// Byte offset of `offset` of `bdf` inside an ECAM window whose base maps
/// bus 0 (PCIe Base 4.0 §7.2.2: bus << 20 | device << 15 | function << 12 |
/// register), or `None` for an unreachable offset.
pub fn ecam_offset(bdf: Bdf, offset: u16) -> Option<u64> {
    if offset >= 4096 || bdf.device >= 32 || bdf.function >= 8 {
        return None;
    }
    Some(
        u64::from(bdf.bus) << 20
            | u64::from(bdf.device) << 15
            | u64::from(bdf.function) << 12
            | u64::from(offset & 0xFFC),
    )
}

/// The legacy 0xCF8/0xCFC mechanism. Works on both QEMU `pc` and `q35`.
///
/// The address/data pair is not atomic: the kernel must not use it from two
/// contexts at once (it only touches PCI during boot and from the shell).
#[derive(Clone, Debug, Default)]
pub struct LegacyPorts<P: PortIo> {
    ports: P,
}

impl<P: PortIo> LegacyPorts<P> {
    /// Wraps the port accessor.
    pub fn new(ports: P) -> Self {
        Self { ports }
    }
}

impl<P: PortIo> ConfigAccess for LegacyPorts<P> {
    fn read_u32(&self, bdf: Bdf, offset: u16) -> u32 {
        match legacy_address(bdf, offset) {
            Some(address) => {
                self.ports.write_u32(CONFIG_ADDRESS, address);
                self.ports.read_u32(CONFIG_DATA)
            }
            None => u32::MAX,
        }
    }

    fn write_u32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(address) = legacy_address(bdf, offset) {
            self.ports.write_u32(CONFIG_ADDRESS, address);
            self.ports.write_u32(CONFIG_DATA, value);
        }
    }
}

/// Memory-mapped ECAM over one MCFG window, already mapped by the kernel at
/// virtual address `base` (the address of bus 0, even when the window starts
/// at a later bus, as Linux interprets MCFG).
#[derive(Clone, Debug)]
pub struct Ecam<M: MmioIo> {
    mmio: M,
    base: usize,
    start_bus: u8,
    end_bus: u8,
}

impl<M: MmioIo> Ecam<M> {
    /// Accesses buses `start_bus..=end_bus` through the window at `base`.
    pub fn new(mmio: M, base: usize, start_bus: u8, end_bus: u8) -> Self {
        Self {
            mmio,
            base,
            start_bus,
            end_bus,
        }
    }

    fn address(&self, bdf: Bdf, offset: u16) -> Option<usize> {
        if bdf.bus < self.start_bus || bdf.bus > self.end_bus {
            return None;
        }
        let relative = usize::try_from(ecam_offset(bdf, offset)?).ok()?;
        self.base.checked_add(relative)
    }
}

impl<M: MmioIo> ConfigAccess for Ecam<M> {
    fn read_u32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.address(bdf, offset) {
            Some(address) => self.mmio.read_u32(address),
            None => u32::MAX,
        }
    }

    fn write_u32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(address) = self.address(bdf, offset) {
            self.mmio.write_u32(address, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    #[test]
    fn legacy_address_layout() {
        let bdf = Bdf::new(0x12, 0x1f, 7).unwrap();
        assert_eq!(legacy_address(bdf, 0x3f), Some(0x8012_ff3c));
        assert_eq!(
            legacy_address(Bdf::new(0, 2, 0).unwrap(), 0x10),
            Some(0x8000_1010)
        );
        assert_eq!(legacy_address(bdf, 256), None);
    }

    #[test]
    fn ecam_offset_layout() {
        let bdf = Bdf::new(1, 2, 3).unwrap();
        assert_eq!(ecam_offset(bdf, 0x104), Some(0x0011_3104));
        assert_eq!(ecam_offset(bdf, 4096), None);
    }

    /// Records every port access so the address/data sequence is checked.
    #[derive(Default)]
    struct RecordingPorts {
        log: RefCell<Vec<(char, u16, u32)>>,
    }

    impl PortIo for RecordingPorts {
        fn read_u32(&self, port: u16) -> u32 {
            self.log.borrow_mut().push(('r', port, 0));
            0x1000_1af4
        }
        fn write_u32(&self, port: u16, value: u32) {
            self.log.borrow_mut().push(('w', port, value));
        }
    }

    #[test]
    fn legacy_ports_sequence() {
        let mut access = LegacyPorts::new(RecordingPorts::default());
        let bdf = Bdf::new(0, 3, 0).unwrap();
        assert_eq!(access.read_u32(bdf, 0), 0x1000_1af4);
        access.write_u32(bdf, 4, 7);
        assert_eq!(access.read_u32(bdf, 0x100), u32::MAX);
        let log = access.ports.log.borrow();
        assert_eq!(
            *log,
            [
                ('w', CONFIG_ADDRESS, 0x8000_1800),
                ('r', CONFIG_DATA, 0),
                ('w', CONFIG_ADDRESS, 0x8000_1804),
                ('w', CONFIG_DATA, 7),
            ]
        );
    }

    struct RecordingMmio {
        log: RefCell<Vec<usize>>,
    }

    impl MmioIo for RecordingMmio {
        fn read_u32(&self, address: usize) -> u32 {
            self.log.borrow_mut().push(address);
            0
        }
        fn write_u32(&self, address: usize, _value: u32) {
            self.log.borrow_mut().push(address);
        }
    }

    #[test]
    fn ecam_respects_bus_range() {
        let ecam = Ecam::new(
            RecordingMmio {
                log: RefCell::new(Vec::new()),
            },
            0x1000_0000,
            1,
            2,
        );
        assert_eq!(ecam.read_u32(Bdf::new(0, 0, 0).unwrap(), 0), u32::MAX);
        assert_eq!(ecam.read_u32(Bdf::new(3, 0, 0).unwrap(), 0), u32::MAX);
        ecam.read_u32(Bdf::new(2, 1, 0).unwrap(), 8);
        assert_eq!(
            *ecam.mmio.log.borrow(),
            [0x1000_0000 + (2 << 20) + (1 << 15) + 8]
        );
    }
}
