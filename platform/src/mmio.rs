//! Device registers as [`MmioRegion`] handles.
//!
//! Invariant: an `MmioRegion` covers a physical range that this crate
//! identity-mapped uncached ([`crate::memory::map_identity`] with
//! `MapKind::Mmio`) after checking that no byte of it is usable RAM,
//! bootloader memory (kernel image, page tables, boot info) or a
//! persistent-memory range. Only volatile, naturally aligned loads and
//! stores inside the range are possible through it, so safe code can reach
//! device registers and nothing else.

use core::fmt;

use crate::memory::{self, MapError, MapKind, PhysRange};

/// A mapped range of device registers (virt == phys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRegion {
    range: PhysRange,
}

/// A width that a device register can be read or written with.
pub trait Register: Copy + sealed::Sealed {}
impl Register for u8 {}
impl Register for u16 {}
impl Register for u32 {}
impl Register for u64 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// Identity-maps `range` uncached and returns its handle. Fails when any
/// byte of it is RAM, kernel, bootloader data or storage, or is already
/// mapped to something else.
pub fn map(range: PhysRange) -> Result<MmioRegion, MapError> {
    memory::check_device_range(range)?;
    memory::map_identity(range.start, range.len(), MapKind::Mmio)?;
    Ok(MmioRegion { range })
}

impl MmioRegion {
    /// The physical (= virtual) range.
    pub fn range(&self) -> PhysRange {
        self.range
    }

    /// The address of `offset` if a `T` there is inside the region and
    /// naturally aligned.
    fn address<T: Register>(&self, offset: u64) -> usize {
        let size = core::mem::size_of::<T>() as u64;
        let inside = offset
            .checked_add(size)
            .is_some_and(|end| end <= self.range.len());
        let address = self.range.start + offset.min(self.range.len());
        assert!(
            inside && address.is_multiple_of(size),
            "mmio: {}-byte access at offset {:#x} outside or misaligned in {}",
            size,
            offset,
            self
        );
        address as usize
    }

    /// Volatile load of the register at `offset`. Panics when the
    /// register is outside the region or misaligned (a driver bug).
    pub fn read<T: Register>(&self, offset: u64) -> T {
        let address = self.address::<T>(offset);
        // SAFETY: `address` is naturally aligned and inside the region,
        // which is identity-mapped uncached device memory, not RAM (type
        // invariant); a volatile load is how registers are read.
        unsafe { core::ptr::read_volatile(address as *const T) }
    }

    /// Volatile store to the register at `offset`. Panics like [`read`](Self::read).
    pub fn write<T: Register>(&self, offset: u64, value: T) {
        let address = self.address::<T>(offset);
        // SAFETY: as in `read`; the bytes are device registers, which no
        // Rust reference points at.
        unsafe { core::ptr::write_volatile(address as *mut T, value) }
    }
}

impl fmt::Display for MmioRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MMIO {}", self.range)
    }
}
