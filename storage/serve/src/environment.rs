//! The host's [`Environment`]: image-backed devices, a monotonic clock and
//! UUIDs from the system time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use daxbox_pmem::block::PmemBlockDevice;
use daxbox_pmem::frames::Owner;
use daxbox_storage::{DeviceList, Environment};

use crate::ImageMemory;

/// Devices `pmem0`, `pmem1`, ... in the order given; a device handed to
/// the storage set is remembered with its owner, as `kernel/src/pmem/` does.
pub struct HostEnvironment {
    devices: DeviceList<ImageMemory>,
    started: Instant,
}

impl HostEnvironment {
    /// Devices over `images`; those named in `read_only` refuse writes
    /// through the block layer (as `readonly=pmemN` does in the kernel).
    pub fn new(images: Vec<ImageMemory>, read_only: &[String]) -> Self {
        let mut devices = DeviceList::new();
        for (index, memory) in images.into_iter().enumerate() {
            let name = format!("pmem{index}");
            let mut block = PmemBlockDevice::new(name.clone(), memory, 4096);
            block.set_read_only(read_only.contains(&name));
            devices.push(block);
        }
        Self {
            devices,
            started: Instant::now(),
        }
    }
}

impl Environment<ImageMemory> for HostEnvironment {
    fn available_devices(&self) -> Vec<String> {
        self.devices.available()
    }

    fn inspect<R>(
        &self,
        device: &str,
        f: impl FnOnce(&PmemBlockDevice<ImageMemory>) -> R,
    ) -> Option<R> {
        self.devices.inspect(device, f)
    }

    fn taken_by(&self, device: &str) -> Option<Owner> {
        self.devices.taken_by(device)
    }

    fn take(&mut self, device: &str, owner: Owner) -> Option<PmemBlockDevice<ImageMemory>> {
        self.devices.take(device, owner)
    }

    fn give_back(&mut self, device: &str, memory: ImageMemory, owner: Owner) -> Result<(), String> {
        self.devices.give_back(device, memory, owner)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn new_uuid(&mut self, index: u8) -> [u8; 16] {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        uuid[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        uuid[12] = index;
        uuid
    }
}
