//! The `virtio-drivers` HAL on the kernel's RAM frames, and the adapter
//! that gives `virtio-drivers` the kernel's PCI configuration access.
//!
//! DMA memory (virtqueues and the NIC's packet buffers) comes from the RAM
//! frame allocator only, never the heap or pmem, and physical addresses
//! are computed from the frame allocator's own numbers: a buffer handed to
//! the device must lie inside a registered DMA pool, and its physical
//! address is the pool's physical base plus the offset, so nothing is
//! guessed from a virtual address.
//!
//! Invariant: a [`DmaRegion`] is zeroed RAM taken from the frame allocator
//! by this module, owned by whoever holds the region (or by its pool, for
//! the kernel's life); only this crate turns one into byte slices.
//! [`Hal::dma_alloc`] never hands out physical address 0 or a dangling
//! pointer as memory: without frames it returns [`DMA_ALLOCATION_FAILED`],
//! which virtio-drivers turns into `Error::DmaError`.

use crate::virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use crate::virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use core::ptr::NonNull;
use daxbox_pci::{Bdf, ConfigAccess};
use spin::Mutex;
use x86_64::structures::paging::PhysFrame;

use crate::memory::{self, PhysRange};
use crate::mmio;

/// A physically contiguous run of RAM frames used for DMA. Not `Clone`:
/// the holder owns the frames.
#[derive(Debug)]
pub(crate) struct DmaRegion {
    /// Physical address of the first byte.
    pub(crate) phys: u64,
    /// Virtual address of the first byte (physical-memory mapping).
    pub(crate) virt: u64,
    /// Length in bytes.
    pub(crate) len: u64,
}

impl DmaRegion {
    /// Allocates `pages` zeroed, contiguous RAM frames.
    pub(crate) fn allocate(pages: u64) -> Option<Self> {
        if pages == 0 {
            return None;
        }
        let phys = memory::allocate_contiguous(pages)?;
        Some(Self {
            phys,
            virt: memory::phys_to_virt(phys),
            // `allocate_contiguous` checked `pages * PAGE_SIZE` for overflow.
            len: pages * PAGE_SIZE as u64,
        })
    }

    /// Gives the frames back; only for a region never shown to a device.
    fn free(self) {
        for page in 0..self.len / PAGE_SIZE as u64 {
            let address = x86_64::PhysAddr::new(self.phys + page * PAGE_SIZE as u64);
            memory::free_frame(PhysFrame::containing_address(address));
        }
    }
}

/// What [`KernelHal`]'s `dma_alloc` returns when no frames are left (or
/// zero pages are asked for). virtio-drivers 0.13 defines physical address
/// 0 as failure: `Dma::new`, through which the crate makes every DMA
/// allocation (virtqueues included), returns `Error::DmaError` on it
/// without touching the pointer, so device set-up fails with that error and
/// nothing is ever placed at address 0. RAM frames below 1 MiB are never
/// allocated, so no real region starts at 0.
pub const DMA_ALLOCATION_FAILED: (PhysAddr, NonNull<u8>) = (0, NonNull::dangling());

const MAX_POOLS: usize = 8;

/// Regions whose buffers may be shared with devices: (physical, virtual,
/// length) of regions that are never freed.
type Pool = (u64, u64, u64);
static POOLS: Mutex<[Option<Pool>; MAX_POOLS]> = Mutex::new([None; MAX_POOLS]);

/// Allows buffers inside `region` to be passed to [`Hal::share`]. The
/// region is never freed afterwards (it is leaked into the pool; the caller
/// keeps using it through the returned `'static` view).
pub(crate) fn register_pool(region: DmaRegion) -> Option<&'static DmaRegion> {
    let mut pools = POOLS.lock();
    let Some(slot) = pools.iter_mut().find(|p| p.is_none()) else {
        // No device has seen the region: its frames go back.
        drop(pools);
        region.free();
        return None;
    };
    *slot = Some((region.phys, region.virt, region.len));
    Some(alloc::boxed::Box::leak(alloc::boxed::Box::new(region)))
}

/// A [`Hal`] that can also hand out DMA pools: memory shared with devices
/// for good, which [`Hal::share`] translates from then on.
pub trait PoolHal: Hal {
    /// Allocates `pages` zeroed pages as a pool that is never freed;
    /// returns its virtual address and length in bytes.
    fn pool(pages: usize) -> Option<(usize, usize)>;
}

/// The HAL type passed to `virtio-drivers`.
pub struct KernelHal;

impl PoolHal for KernelHal {
    fn pool(pages: usize) -> Option<(usize, usize)> {
        let region = DmaRegion::allocate(pages as u64)?;
        let region = register_pool(region)?;
        Some((region.virt as usize, region.len as usize))
    }
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned RAM frames that the
// frame allocator hands out once (so they alias nothing), mapped at the
// returned virtual address; `dma_dealloc` gives back only what
// `dma_alloc` handed out (the trait's contract); `mmio_phys_to_virt`
// identity-maps the BAR uncached after checking it is not RAM or storage;
// `share` returns the true physical address of memory that stays mapped
// (pool regions are never freed).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(region) = DmaRegion::allocate(pages as u64) else {
            return DMA_ALLOCATION_FAILED;
        };
        match NonNull::new(region.virt as *mut u8) {
            Some(pointer) if region.phys != 0 => (region.phys, pointer),
            // Cannot happen (see `DMA_ALLOCATION_FAILED`). A region that
            // virtio-drivers would read as failure is never handed out; its
            // frames stay out of the allocator, so it is not offered again.
            _ => DMA_ALLOCATION_FAILED,
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        for page in 0..pages as u64 {
            let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(paddr + page * 4096));
            memory::free_frame(frame);
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let range = paddr
            .checked_add(size as u64)
            .map(|end| PhysRange { start: paddr, end });
        let mapped = match range {
            Some(range) => mmio::map(range).map(|_| ()),
            None => Err(memory::MapError::Conflict { address: paddr }),
        };
        if let Err(error) = mapped {
            panic!("virtio: cannot map BAR {:#x}+{:#x}: {}", paddr, size, error);
        }
        // A BAR at physical 0 would be a firmware bug; identity map means virt == phys.
        NonNull::new(paddr as *mut u8).unwrap_or_else(|| panic!("virtio: BAR at address 0"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let virt = buffer.as_ptr() as *mut u8 as u64;
        let len = buffer.len() as u64;
        let pools = POOLS.lock();
        for &(phys, start, region_len) in pools.iter().flatten() {
            let Some(offset) = virt.checked_sub(start) else {
                continue;
            };
            if offset.checked_add(len).is_some_and(|end| end <= region_len) {
                return phys + offset;
            }
        }
        // Every buffer the NIC driver passes comes from a registered pool;
        // anything else would make the device write to a guessed address.
        panic!("virtio: buffer {:#x}+{:#x} is not in a DMA pool", virt, len);
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Coherent RAM, no bounce buffers: nothing to copy back.
    }
}

/// Wraps a cloneable [`ConfigAccess`] for
/// `crate::virtio_drivers::transport::pci::bus::PciRoot`, so `PciTransport` can
/// find the virtio capabilities (virtio 1.2 §4.1.4) through the kernel's
/// port-I/O or ECAM access.
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
    // aliases the window; `ConfigAccess` implementations are safe handles
    // (ports, or a checked `MmioRegion`) whose `Clone` is memory-safe, so
    // the body is safe code.
    unsafe fn unsafe_clone(&self) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_drivers::transport::pci::bus::PciRoot;
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use daxbox_pci::fake::{FakeFunction, FakeSpace};

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
