//! Adapter from [`ConfigAccess`] to `virtio-drivers`' own configuration
//! access trait, so `PciTransport` can find the virtio capabilities (virtio
//! 1.2 §4.1.4) through the kernel's port-I/O or ECAM access.

use crate::{Bdf, ConfigAccess};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// Wraps a cloneable [`ConfigAccess`] for `virtio_drivers::transport::pci::bus::PciRoot`.
#[derive(Clone, Debug)]
pub struct VirtioConfigAccess<C: ConfigAccess + Clone>(pub C);

fn bdf(df: DeviceFunction) -> Bdf {
    // virtio-drivers only builds valid DeviceFunctions; masking keeps an
    // invalid one from aliasing another device in the address encoding.
    Bdf {
        bus: df.bus,
        device: df.device & 0x1F,
        function: df.function & 0x7,
    }
}

impl<C: ConfigAccess + Clone> ConfigurationAccess for VirtioConfigAccess<C> {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        self.0
            .read_u32(bdf(device_function), register_offset.into())
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        self.0
            .write_u32(bdf(device_function), register_offset.into(), data)
    }

    // The trait declares this `unsafe fn` because a clone of an MMIO CAM
    // aliases the window; our accessors are stateless handles (ports or a
    // base address) whose `Clone` is memory-safe, so the body is safe code.
    #[allow(unsafe_code)]
    unsafe fn unsafe_clone(&self) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFunction, FakeSpace};
    use std::cell::RefCell;
    use std::rc::Rc;
    use virtio_drivers::transport::pci::bus::PciRoot;

    /// A shared handle to the fake space so it can be cloned.
    #[derive(Clone)]
    struct Shared(Rc<RefCell<FakeSpace>>);
    impl ConfigAccess for Shared {
        fn read_u32(&self, bdf: Bdf, offset: u16) -> u32 {
            self.0.borrow().read_u32(bdf, offset)
        }
        fn write_u32(&mut self, bdf: Bdf, offset: u16, value: u32) {
            self.0.borrow_mut().write_u32(bdf, offset, value)
        }
    }

    #[test]
    fn virtio_root_sees_fake_devices() {
        let mut space = FakeSpace::default();
        let nic = space.add(0, 2, 0, FakeFunction::new(0x1af4, 0x1000, 2, 0, 0));
        nic.regs[1] = 0x0010_0000;
        nic.set_u8(0x34, 0x40);
        nic.regs[0x40 / 4] = 0x0000_0009; // vendor cap, end of list
        let shared = Shared(Rc::new(RefCell::new(space)));
        let root = PciRoot::new(VirtioConfigAccess(shared));
        let devices: Vec<_> = root.enumerate_bus(0).collect();
        assert_eq!(devices.len(), 1);
        let (df, info) = &devices[0];
        assert_eq!(
            (df.device, info.vendor_id, info.device_id),
            (2, 0x1af4, 0x1000)
        );
        let caps: Vec<_> = root.capabilities(*df).map(|c| (c.offset, c.id)).collect();
        assert_eq!(caps, [(0x40, 9)]);
    }
}
