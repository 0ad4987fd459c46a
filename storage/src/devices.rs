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

    /// Hands available device `device` to `owner`.
    pub fn take(&mut self, device: &str, owner: Owner) -> Option<PmemBlockDevice<M>> {
        let device = self.devices.iter_mut().find(|d| d.name == device)?;
        let block = device.block.take()?;
        device.owner = Some(owner);
        Some(block)
    }
}
