//! The `virtio-drivers` HAL on the kernel's RAM frames.
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

use core::ptr::NonNull;
use spin::Mutex;
use x86_64::structures::paging::PhysFrame;

use crate::memory::{self, PhysRange};
use crate::mmio;
use crate::virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

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
