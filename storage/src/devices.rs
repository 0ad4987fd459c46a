//! [`DeviceList`]: the device half of an [`Environment`](crate::Environment)
//! for a machine without a page-frame table (the host server, the tests):
//! devices `pmem0`, `pmem1`, ... in order, each either still available or
//! handed over, with its owner remembered as the kernel's `kernel/src/pmem/` does.

use alloc::string::String;
use alloc::vec::Vec;

use daxbox_persist::PersistentMemory;
use daxbox_pmem::block::{BlockDevice, PmemBlockDevice};
use daxbox_pmem::frames::Owner;

struct Listed<M: PersistentMemory> {
    name: String,
    block: Option<PmemBlockDevice<M>>,
    owner: Option<Owner>,
    /// The block device's read-only flag, kept while it is taken.
    read_only: bool,
}

/// Block devices, available until they are taken.
pub struct DeviceList<M: PersistentMemory> {
    devices: Vec<Listed<M>>,
}

impl<M: PersistentMemory> Default for DeviceList<M> {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
        }
    }
}

impl<M: PersistentMemory> DeviceList<M> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device (named by its block device).
    pub fn push(&mut self, block: PmemBlockDevice<M>) {
        self.devices.push(Listed {
            name: String::from(block.name()),
            read_only: block.is_read_only(),
            block: Some(block),
            owner: None,
        });
    }

    /// Names of the devices not taken yet, in order.
    pub fn available(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.block.is_some())
            .map(|d| d.name.clone())
            .collect()
    }

    /// Runs `f` on available device `device`.
    pub fn inspect<R>(&self, device: &str, f: impl FnOnce(&PmemBlockDevice<M>) -> R) -> Option<R> {
        self.devices
            .iter()
            .find(|d| d.name == device)
            .and_then(|d| d.block.as_ref())
            .map(f)
    }

    /// Who took device `device`.
    pub fn taken_by(&self, device: &str) -> Option<Owner> {
        self.devices
            .iter()
            .find(|d| d.name == device)
            .and_then(|d| d.owner)
    }

    /// Takes back the memory of device `device`, taken for `owner`: it is
    /// available again, with its block size and read-only flag as before.
    pub fn give_back(&mut self, device: &str, memory: M, owner: Owner) -> Result<(), String> {
        let listed = self
            .devices
            .iter_mut()
            .find(|d| d.name == device && d.block.is_none())
            .ok_or_else(|| alloc::format!("{} was not taken", device))?;
        if listed.owner != Some(owner) {
            return Err(alloc::format!("{} is not held by {}", device, owner));
        }
        let mut block = PmemBlockDevice::new(listed.name.clone(), memory, 4096);
        block.set_read_only(listed.read_only);
        listed.block = Some(block);
        listed.owner = None;
        Ok(())
    }

    /// Hands available device `device` to `owner`.
    pub fn take(&mut self, device: &str, owner: Owner) -> Option<PmemBlockDevice<M>> {
        let device = self.devices.iter_mut().find(|d| d.name == device)?;
        let block = device.block.take()?;
        device.owner = Some(owner);
        Some(block)
    }
}
