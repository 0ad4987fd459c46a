//! Bus enumeration: depth-first from bus 0 through PCI-to-PCI bridges.
//!
//! Firmware (SeaBIOS/OVMF) has already assigned bus numbers, so bridges are
//! followed through their secondary bus number rather than reprogrammed. Each
//! bus is scanned at most once and the result is capped at
//! [`MAX_FUNCTIONS`], so bad bridge programming cannot loop forever.

use crate::{class_name, device_name, reg, Bdf, ConfigAccess};
use alloc::vec::Vec;
use core::fmt;

/// Upper bound on the functions [`enumerate`] returns.
pub const MAX_FUNCTIONS: usize = 1024;

/// What enumeration learned about one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision ID.
    pub revision: u8,
    /// Header type without the multi-function bit (0 device, 1 bridge, 2 CardBus).
    pub header_type: u8,
    /// The multi-function bit of device function 0.
    pub multifunction: bool,
    /// Interrupt line as routed by firmware (the legacy PIC/IOAPIC input); 0xFF = none.
    pub interrupt_line: u8,
    /// Interrupt pin: 0 none, 1..=4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// For bridges: the secondary bus number.
    pub secondary_bus: Option<u8>,
}

impl Function {
    /// Whether this is a PCI-to-PCI bridge.
    pub fn is_bridge(&self) -> bool {
        self.header_type == 1
    }
}

impl fmt::Display for Function {
    /// One `lspci` line: `00:02.0 1af4:1000 network controller (virtio-net) irq 11`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} {}",
            self.bdf,
            self.vendor,
            self.device,
            class_name(self.class, self.subclass)
        )?;
        if let Some(name) = device_name(self.vendor, self.device) {
            write!(f, " ({name})")?;
        }
        if let Some(bus) = self.secondary_bus {
            write!(f, " -> bus {bus:02x}")?;
        }
        if self.interrupt_pin != 0 && self.interrupt_line != 0xFF {
            write!(f, " irq {}", self.interrupt_line)?;
        }
        Ok(())
    }
}

/// Reads the identity of one function, or `None` when nothing answers there
/// (vendor 0xFFFF, PCI Local Bus 3.0 §6.2.1).
pub fn read_function<C: ConfigAccess + ?Sized>(access: &C, bdf: Bdf) -> Option<Function> {
    let id = access.read_u32(bdf, reg::ID);
    let vendor = id as u16;
    if vendor == 0xFFFF || vendor == 0 {
        return None;
    }
    let class = access.read_u32(bdf, reg::CLASS_REVISION);
    let header = access.read_u8(bdf, reg::HEADER + 2);
    let header_type = header & 0x7F;
    let interrupt = access.read_u32(bdf, reg::INTERRUPT);
    let secondary_bus = (header_type == 1).then(|| access.read_u8(bdf, reg::BUS_NUMBERS + 1));
    Some(Function {
        bdf,
        vendor,
        device: (id >> 16) as u16,
        class: (class >> 24) as u8,
        subclass: (class >> 16) as u8,
        prog_if: (class >> 8) as u8,
        revision: class as u8,
        header_type,
        multifunction: header & 0x80 != 0,
        interrupt_line: interrupt as u8,
        interrupt_pin: (interrupt >> 8) as u8,
        secondary_bus,
    })
}

/// Enumerates every function reachable from bus 0.
///
/// A multi-function host bridge at 00:00 means several host controllers:
/// function N then owns bus N (the same rule Linux and OSDev use).
pub fn enumerate<C: ConfigAccess + ?Sized>(access: &C) -> Vec<Function> {
    let mut found = Vec::new();
    let mut scanned = [false; 256];
    let mut pending: Vec<u8> = Vec::new();
    pending.push(0);
    if let Some(host) = read_function(
        access,
        Bdf {
            bus: 0,
            device: 0,
            function: 0,
        },
    ) {
        if host.multifunction {
            for function in 1..8u8 {
                let bdf = Bdf {
                    bus: 0,
                    device: 0,
                    function,
                };
                if read_function(access, bdf).is_some() {
                    pending.push(function);
                }
            }
        }
    }
    while let Some(bus) = pending.pop() {
        if core::mem::replace(&mut scanned[usize::from(bus)], true) {
            continue;
        }
        let mut bridges = Vec::new();
        for device in 0..32u8 {
            let Some(first) = read_function(
                access,
                Bdf {
                    bus,
                    device,
                    function: 0,
                },
            ) else {
                continue;
            };
            let functions = if first.multifunction { 8 } else { 1 };
            let mut current = Some(first);
            for function in 0..functions {
                if function > 0 {
                    current = read_function(
                        access,
                        Bdf {
                            bus,
                            device,
                            function,
                        },
                    );
                }
                let Some(found_function) = current.take() else {
                    continue;
                };
                if let Some(secondary) = found_function.secondary_bus {
                    // A secondary bus at or below its parent is misprogrammed.
                    if secondary > bus {
                        bridges.push(secondary);
                    }
                }
                if found.len() >= MAX_FUNCTIONS {
                    return found;
                }
                found.push(found_function);
            }
        }
        // Reverse so the lowest-numbered bridge is scanned first (depth-first order).
        pending.extend(bridges.into_iter().rev());
    }
    found.sort_by_key(|f| f.bdf);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFunction, FakeSpace};
    use alloc::string::ToString;

    fn q35_like() -> FakeSpace {
        let mut space = FakeSpace::default();
        space.add(0, 0, 0, FakeFunction::new(0x8086, 0x29c0, 6, 0, 0));
        let nic = space.add(0, 2, 0, FakeFunction::new(0x1af4, 0x1000, 2, 0, 0));
        nic.regs[15] = 0x0000_010b; // pin INTA, line 11
                                    // Multi-function device at 1f: LPC, AHCI, SMBus.
        space.add(0, 0x1f, 0, FakeFunction::new(0x8086, 0x2918, 6, 1, 0x80));
        space.add(0, 0x1f, 2, FakeFunction::new(0x8086, 0x2922, 1, 6, 0));
        space.add(0, 0x1f, 3, FakeFunction::new(0x8086, 0x2930, 0x0c, 5, 0));
        // Bridge 00:03.0 -> bus 1, with a device behind it.
        let bridge = space.add(0, 3, 0, FakeFunction::new(0x1b36, 0x0001, 6, 4, 1));
        bridge.regs[6] = 0x0001_0100; // primary 0, secondary 1, subordinate 1
        space.add(1, 0, 0, FakeFunction::new(0x1af4, 0x1001, 1, 0, 0));
        space
    }

    #[test]
    fn finds_everything_once() {
        let space = q35_like();
        let found = enumerate(&space);
        let names: Vec<_> = found.iter().map(|f| f.bdf.to_string()).collect();
        assert_eq!(
            names,
            ["00:00.0", "00:02.0", "00:03.0", "00:1f.0", "00:1f.2", "00:1f.3", "01:00.0"]
        );
        assert_eq!(
            found[1].to_string(),
            "00:02.0 1af4:1000 network controller (virtio-net) irq 11"
        );
        assert_eq!(
            found[2].to_string(),
            "00:03.0 1b36:0001 PCI bridge -> bus 01"
        );
    }

    #[test]
    fn single_function_device_is_not_probed_for_more() {
        let mut space = FakeSpace::default();
        // A single-function device that (like some hardware) aliases all functions.
        space.add(0, 5, 0, FakeFunction::new(0x10ec, 0x8139, 2, 0, 0));
        space.add(0, 5, 1, FakeFunction::new(0x10ec, 0x8139, 2, 0, 0));
        let found = enumerate(&space);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn bridge_loop_is_bounded() {
        let mut space = FakeSpace::default();
        // Bus 1 bridges back to bus 1 and forward to 2, bus 2 points back to 1.
        let b = space.add(0, 1, 0, FakeFunction::new(0x1b36, 1, 6, 4, 1));
        b.regs[6] = 0x0001_0100;
        let b = space.add(1, 0, 0, FakeFunction::new(0x1b36, 1, 6, 4, 1));
        b.regs[6] = 0x0002_0201;
        let b = space.add(2, 0, 0, FakeFunction::new(0x1b36, 1, 6, 4, 1));
        b.regs[6] = 0x0001_0102;
        let found = enumerate(&space);
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn empty_space() {
        let space = FakeSpace::default();
        assert!(enumerate(&space).is_empty());
        // 32 devices probed on bus 0, nothing more.
        assert!(space.reads.get() <= 33);
    }
}
