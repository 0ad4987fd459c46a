//! The `virtio-drivers` HAL on the kernel's RAM frames.
//!
//! DMA memory (virtqueues and the NIC's packet buffers) comes from the RAM
//! frame allocator only, never the heap or pmem, and physical addresses
//! are computed from the frame allocator's own numbers: a buffer handed to
//! the device must lie inside a registered DMA pool, and its physical
//! address is the pool's physical base plus the offset, so nothing is
//! guessed from a virtual address.

use core::ptr::NonNull;
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use x86_64::structures::paging::PhysFrame;

use crate::memory;

/// A physically contiguous run of RAM frames used for DMA.
#[derive(Clone, Copy, Debug)]
pub struct DmaRegion {
    /// Physical address of the first byte.
    pub phys: u64,
    /// Virtual address of the first byte (physical-memory mapping).
    pub virt: u64,
    /// Length in bytes.
    pub len: u64,
}

impl DmaRegion {
    /// Allocates `pages` zeroed, contiguous RAM frames.
    pub fn allocate(pages: u64) -> Option<Self> {
        let phys = memory::allocate_contiguous(pages)?;
        Some(Self {
            phys,
            virt: memory::phys_to_virt(phys),
            len: pages * PAGE_SIZE as u64,
        })
    }

    fn translate(&self, virt: u64, len: u64) -> Option<u64> {
        let offset = virt.checked_sub(self.virt)?;
        (offset.checked_add(len)? <= self.len).then_some(self.phys + offset)
    }
}

const MAX_POOLS: usize = 8;

/// Regions whose buffers may be shared with devices.
static POOLS: Mutex<[Option<DmaRegion>; MAX_POOLS]> = Mutex::new([None; MAX_POOLS]);

/// Allows buffers inside `region` to be passed to [`Hal::share`].
pub fn register_pool(region: DmaRegion) -> bool {
    let mut pools = POOLS.lock();
    match pools.iter_mut().find(|p| p.is_none()) {
        Some(slot) => {
            *slot = Some(region);
            true
        }
        None => false,
    }
}

/// The HAL type passed to `virtio-drivers`.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned RAM frames that the
// frame allocator hands out once (so they alias nothing), mapped at the
// returned virtual address; `mmio_phys_to_virt` identity-maps the BAR
// uncached; `share` returns the true physical address of memory that
// stays mapped (pool regions are never freed).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match DmaRegion::allocate(pages as u64) {
            Some(region) => match NonNull::new(region.virt as *mut u8) {
                Some(pointer) => (region.phys, pointer),
                None => (0, NonNull::dangling()),
            },
            // virtio-drivers treats physical address 0 as failure.
            None => (0, NonNull::dangling()),
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
        if let Err(error) = memory::map_identity(paddr, size as u64, memory::MapKind::Mmio) {
            panic!("virtio: cannot map BAR {:#x}+{:#x}: {}", paddr, size, error);
        }
        // A BAR at physical 0 would be a firmware bug; identity map means virt == phys.
        NonNull::new(paddr as *mut u8).unwrap_or_else(|| panic!("virtio: BAR at address 0"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let virt = buffer.as_ptr() as *mut u8 as u64;
        let len = buffer.len() as u64;
        let pools = POOLS.lock();
        for region in pools.iter().flatten() {
            if let Some(phys) = region.translate(virt, len) {
                return phys;
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
