//! A fake configuration space for host tests: functions are register arrays;
//! BARs only keep their writable (size-determined) bits, like hardware.
//! Public with the `fake` feature, for the tests of other crates (the
//! platform's virtio PCI transport).

use crate::{reg, Bdf, ConfigAccess};
use alloc::collections::BTreeMap;

/// One function's 4 KiB of configuration space.
pub struct FakeFunction {
    /// The registers, as 32-bit words.
    pub regs: [u32; 1024],
    /// Writable-bit mask per BAR; zero means read-only (unimplemented BAR).
    pub bar_masks: [u32; 6],
}

impl FakeFunction {
    /// A function with these IDs, class and header type; everything else 0.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8, header_type: u8) -> Self {
        let mut regs = [0u32; 1024];
        regs[0] = u32::from(device) << 16 | u32::from(vendor);
        regs[2] = u32::from(class) << 24 | u32::from(subclass) << 16;
        regs[3] = u32::from(header_type) << 16;
        Self {
            regs,
            bar_masks: [0; 6],
        }
    }

    /// Sets one byte of configuration space.
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let word = &mut self.regs[offset / 4];
        *word = (*word & !(0xff << shift)) | u32::from(value) << shift;
    }
}

/// A configuration space holding the functions added to it; absent
/// functions read as all ones, like a real bus.
#[derive(Default)]
pub struct FakeSpace {
    /// The functions present.
    pub functions: BTreeMap<Bdf, FakeFunction>,
    /// Reads so far (to check how much a scan reads).
    pub reads: core::cell::Cell<usize>,
}

impl FakeSpace {
    /// Adds function `bus:device.function`; returns it for further set-up.
    pub fn add(&mut self, bus: u8, device: u8, function: u8, f: FakeFunction) -> &mut FakeFunction {
        let bdf = Bdf::new(bus, device, function).unwrap();
        self.functions.insert(bdf, f);
        self.functions.get_mut(&bdf).unwrap()
    }
}

impl ConfigAccess for FakeSpace {
    fn read_u32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.reads.set(self.reads.get() + 1);
        match self.functions.get(&bdf) {
            Some(f) if offset < 4096 => f.regs[usize::from(offset / 4)],
            _ => u32::MAX,
        }
    }

    fn write_u32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        let Some(f) = self.functions.get_mut(&bdf) else {
            return;
        };
        if offset >= 4096 {
            return;
        }
        let index = usize::from(offset / 4);
        let bar = (offset.wrapping_sub(reg::BAR0) / 4) as usize;
        if (reg::BAR0..reg::BAR0 + 24).contains(&offset) {
            let mask = f.bar_masks[bar];
            f.regs[index] = (f.regs[index] & !mask) | (value & mask);
        } else {
            f.regs[index] = value;
        }
    }
}
