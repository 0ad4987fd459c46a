//! Test doubles: devices over `VecMemory` behind a shared handle (so a test
//! can look at, or "crash" with, the bytes a mounted filesystem owns), a
//! clock that advances 1 ms per reading, and a fixture that boots a set of
//! devices and runs shell lines.

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use daxbox_bootconfig::FormatPolicy;
use daxbox_persist::{OutOfRange, PersistentMemory, VecMemory};
use daxbox_pmem::block::PmemBlockDevice;
use daxbox_pmem::frames::Owner;

use crate::{boot, commands, BootPolicy, DeviceList, Environment, Storage};

pub const MIB: u64 = 1 << 20;

/// `readonly=` rules as the boot config would give them.
pub fn rules(values: &[&str]) -> Vec<daxbox_bootconfig::ReadOnlyRule> {
    values
        .iter()
        .map(|value| daxbox_bootconfig::ReadOnlyRule::parse(value, "test"))
        .collect()
}

/// `VecMemory` shared between the device that uses it and the test.
#[derive(Clone)]
pub struct TestMemory(Rc<RefCell<VecMemory>>);

impl PersistentMemory for TestMemory {
    fn len(&self) -> u64 {
        self.0.borrow().len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.0.borrow().read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.0.borrow_mut().write(offset, data)
    }
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.0.borrow_mut().write_nt(offset, data)
    }
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        self.0.borrow_mut().store_u64(offset, value)
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        self.0.borrow_mut().flush(offset, len)
    }
    fn fence(&mut self) {
        self.0.borrow_mut().fence()
    }
}

/// Devices `pmem0`, `pmem1`, ... over `VecMemory`.
pub struct FakeEnvironment {
    devices: DeviceList<TestMemory>,
    /// Each device's memory, shared with the device, by index.
    memories: Vec<TestMemory>,
    clock: Cell<u64>,
    uuids: u64,
}

impl FakeEnvironment {
    /// Blank devices of the given sizes.
    pub fn new(sizes: &[u64]) -> Self {
        Self::from_images(
            sizes
                .iter()
                .map(|&size| alloc::vec![0u8; size as usize])
                .collect(),
        )
    }

    /// Devices holding the given images.
    pub fn from_images(images: Vec<Vec<u8>>) -> Self {
        let mut devices = DeviceList::new();
        let mut memories = Vec::new();
        for (index, bytes) in images.into_iter().enumerate() {
            let memory = TestMemory(Rc::new(RefCell::new(VecMemory::from_bytes(bytes))));
            devices.push(PmemBlockDevice::new(
                daxbox_syntax::device_name(index as u16),
                memory.clone(),
                4096,
            ));
            memories.push(memory);
        }
        Self {
            devices,
            memories,
            clock: Cell::new(0),
            uuids: 0,
        }
    }

    /// A device that appears after boot (an NVDIMM hot-added), holding
    /// `bytes`; returns its name (the next `pmemN`).
    pub fn add_device(&mut self, bytes: Vec<u8>) -> String {
        let name = daxbox_syntax::device_name(self.memories.len() as u16);
        let memory = TestMemory(Rc::new(RefCell::new(VecMemory::from_bytes(bytes))));
        self.devices
            .push(PmemBlockDevice::new(name.clone(), memory.clone(), 4096));
        self.memories.push(memory);
        name
    }

    fn memory(&self, name: &str) -> &TestMemory {
        daxbox_syntax::device_index(name)
            .and_then(|index| self.memories.get(usize::from(index)))
            .expect("a device of the fixture")
    }

    /// The bytes of device `name` now (every store is durable at once in
    /// `VecMemory`, so this is also what a power cut would leave).
    pub fn image(&self, name: &str) -> Vec<u8> {
        self.memory(name).0.borrow().bytes().to_vec()
    }

    /// The bytes of every device now, in device order (what a power cut
    /// would leave: a reboot boots these).
    pub fn images(&self) -> Vec<Vec<u8>> {
        self.memories
            .iter()
            .map(|m| m.0.borrow().bytes().to_vec())
            .collect()
    }

    /// The memory of device `name`, to plant bytes in it.
    pub fn device_memory_mut(&mut self, name: &str) -> core::cell::RefMut<'_, VecMemory> {
        self.memory(name).0.borrow_mut()
    }
}

impl Environment<TestMemory> for FakeEnvironment {
    fn available_devices(&self) -> Vec<String> {
        self.devices.available()
    }

    fn inspect<R>(
        &self,
        device: &str,
        f: impl FnOnce(&PmemBlockDevice<TestMemory>) -> R,
    ) -> Option<R> {
        self.devices.inspect(device, f)
    }

    fn taken_by(&self, device: &str) -> Option<Owner> {
        self.devices.taken_by(device)
    }

    fn take(&mut self, device: &str, owner: Owner) -> Option<PmemBlockDevice<TestMemory>> {
        self.devices.take(device, owner)
    }

    fn give_back(&mut self, device: &str, memory: TestMemory, owner: Owner) -> Result<(), String> {
        self.devices.give_back(device, memory, owner)
    }

    fn now_us(&self) -> u64 {
        let now = self.clock.get() + 1000;
        self.clock.set(now);
        now
    }

    fn new_uuid(&mut self, index: u8) -> [u8; 16] {
        self.uuids += 1;
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&self.uuids.to_le_bytes());
        uuid[8] = index;
        uuid
    }
}

/// A booted storage set and a way to run shell lines on it.
pub struct Fixture {
    pub storage: Storage<TestMemory>,
    pub env: FakeEnvironment,
}

impl Fixture {
    /// pmem0 and pmem1 (16 MiB) formatted, pmem2 (8 MiB) exported raw,
    /// pmem3 (8 MiB) holding foreign bytes and left alone.
    pub fn standard() -> Self {
        let mut env = FakeEnvironment::new(&[16 * MIB, 16 * MIB, 8 * MIB, 8 * MIB]);
        env.device_memory_mut("pmem3").bytes_mut()[..4].copy_from_slice(b"junk");
        Self::boot(env, &["pmem2"])
    }

    /// Blank devices of `sizes`, formatted unless named in `raw`.
    pub fn with_devices(sizes: &[u64], raw: &[&str]) -> Self {
        Self::boot(FakeEnvironment::new(sizes), raw)
    }

    /// No devices at all.
    pub fn empty() -> Self {
        Self::with_devices(&[], &[])
    }

    /// Boots the devices of `env` (`format=if-blank`, nothing raw).
    pub fn boot_env(env: FakeEnvironment) -> Self {
        Self::boot(env, &[])
    }

    fn boot(mut env: FakeEnvironment, raw: &[&str]) -> Self {
        let mut storage = Storage::new();
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &BootPolicy {
                format: FormatPolicy::IfBlank,
                export_raw: raw.iter().map(|s| s.to_string()).collect(),
            },
            &mut out,
        );
        Self { storage, env }
    }

    /// Runs one shell line; Ok(output) or Err(the error message).
    pub fn run(&mut self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let mut out = String::new();
        let (name, args) = words.split_first().expect("a command");
        let result = commands::run(
            name,
            &mut self.storage,
            &mut self.env,
            args,
            10809,
            &mut out,
        )
        .expect("a storage command");
        result.map(|()| out)
    }

    /// Runs one shell line that must succeed; returns its output.
    pub fn ok(&mut self, line: &str) -> String {
        self.run(line)
            .unwrap_or_else(|error| panic!("`{line}` failed: {error}"))
    }
}
