//! The persistence interface between storage code and persistent memory.
//!
//! Everything that writes persistent memory (the pmem block device in
//! `drivers/pmem`, the daxfs filesystem in `fs/daxfs`) does so through the
//! [`PersistentMemory`] trait. The kernel implements it with plain stores,
//! `clwb`/`clflushopt` and `sfence` on the identity-mapped pmem range; host
//! tests implement it over a `Vec<u8>` ([`VecMemory`]); the crash-state
//! explorer (`fs/crashcheck`) implements it with a model of the CPU cache
//! that records every store, flush and fence so it can build the images a
//! power failure could leave behind.
//!
//! # The persistence model this trait promises
//! - [`PersistentMemory::write`] is a cached store: it is visible to later
//!   reads at once, but it is *durable* only after the cache lines it touched
//!   have been flushed with [`PersistentMemory::flush`] **and** a later
//!   [`PersistentMemory::fence`] has completed. Until then a power failure
//!   may keep any prefix of the stores to each 64-byte line (stores to one
//!   line reach media in program order; lines are independent).
//! - [`PersistentMemory::write_nt`] is a non-temporal store: durable after
//!   the next fence, no flush needed.
//! - [`PersistentMemory::store_u64`] at an 8-byte aligned offset is the only
//!   store that is atomic with respect to power failure: after a crash the
//!   eight bytes hold either the old or the new value, never a mix. It is
//!   a cached store like `write` (flush + fence to make it durable).
//! - When [`PersistentMemory::cache_is_persistent`] is true (eADR: the CPU
//!   caches are inside the persistence domain) flushes may be skipped, but
//!   fences still order stores.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Size of one CPU cache line: the unit of [`PersistentMemory::flush`].
pub const CACHE_LINE: u64 = 64;

/// Stores of at least this many bytes should use
/// [`PersistentMemory::write_nt`] rather than `write` + `flush`: past a
/// page, a non-temporal store costs less than flushing every line, and it
/// does not evict the working set from the cache. Callers compare the
/// length of one store against it (daxfs's data path does).
pub const NT_THRESHOLD: u64 = 4096;

/// An access that does not fit inside the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    /// First byte of the access.
    pub offset: u64,
    /// Length of the access in bytes.
    pub len: u64,
    /// Length of the region.
    pub region_len: u64,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "access of {} bytes at offset {:#x} is outside the {}-byte region",
            self.len, self.offset, self.region_len
        )
    }
}

/// Checks that `offset..offset + len` lies inside a region of `region_len`
/// bytes, without overflow.
pub fn check_range(offset: u64, len: u64, region_len: u64) -> Result<(), OutOfRange> {
    match offset.checked_add(len) {
        Some(end) if end <= region_len => Ok(()),
        _ => Err(OutOfRange {
            offset,
            len,
            region_len,
        }),
    }
}

/// A byte-addressed region of persistent memory. See the crate docs for the
/// durability rules every implementation follows and every user relies on.
///
/// All offsets are relative to the start of the region. Every method checks
/// its range and returns [`OutOfRange`] instead of touching memory outside.
pub trait PersistentMemory {
    /// Length of the region in bytes.
    fn len(&self) -> u64;

    /// True when the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange>;

    /// Cached store of `data` at `offset` (durable after flush + fence).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange>;

    /// Non-temporal store of `data` at `offset` (durable after the next
    /// fence). Implementations may fall back to `write` + `flush`.
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange>;

    /// Fills `len` bytes at `offset` with zeros, as cached stores.
    fn zero(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        check_range(offset, len, self.len())?;
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(ZEROS.len() as u64);
            // `chunk` <= 4096, so the cast and the slice are in range.
            self.write(offset + done, &ZEROS[..chunk as usize])?;
            done += chunk;
        }
        Ok(())
    }

    /// Reads the little-endian u64 at an 8-byte aligned `offset`.
    fn load_u64(&self, offset: u64) -> Result<u64, OutOfRange> {
        let mut bytes = [0u8; 8];
        self.read(offset, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Stores the little-endian `value` at an 8-byte aligned `offset` as one
    /// power-fail-atomic store. An unaligned offset is an error.
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange>;

    /// Writes back the cache lines covering `offset..offset + len` towards
    /// media (`clwb`/`clflushopt`). Durable only after the next fence.
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange>;

    /// Store fence (`sfence`): completes every earlier flush and
    /// non-temporal store before any later store.
    fn fence(&mut self);

    /// Cached store, then flush of the same range: durable after the next
    /// fence. The common case for metadata updates.
    fn write_flush(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)?;
        self.flush(offset, data.len() as u64)
    }

    /// True when the CPU caches are inside the persistence domain (eADR),
    /// so that flushes are not needed for durability.
    fn cache_is_persistent(&self) -> bool {
        false
    }

    /// The physical address of `offset`, for direct access (DAX) by code
    /// that maps or DMAs the bytes itself; `None` when the region has no
    /// physical address (host tests).
    fn physical_address(&self, offset: u64) -> Option<u64> {
        let _ = offset;
        None
    }

    /// A hint that `offset..offset + len` will be read soon: starts
    /// bringing those cache lines in, so that a read jumping between
    /// scattered runs (a partly diverged clone) overlaps their memory
    /// latencies instead of paying them one after another. Changes
    /// nothing; a range outside the region is ignored. The default does
    /// nothing.
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// A region backed by a `Vec<u8>` in which every store is durable at once.
/// For unit tests and host benchmarks; it also counts flushes and fences so
/// tests can check that code asks for durability at all.
#[derive(Clone)]
pub struct VecMemory {
    bytes: Vec<u8>,
    /// Number of `flush` calls so far.
    pub flushes: u64,
    /// Number of `fence` calls so far.
    pub fences: u64,
}

impl VecMemory {
    /// A zero-filled region of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            bytes: alloc::vec![0; len],
            flushes: 0,
            fences: 0,
        }
    }

    /// A region holding a copy of `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            flushes: 0,
            fences: 0,
        }
    }

    /// The current contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The current contents, mutable (to corrupt images in tests).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Gives the backing vector back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn range(&self, offset: u64, len: usize) -> Result<core::ops::Range<usize>, OutOfRange> {
        check_range(offset, len as u64, self.bytes.len() as u64)?;
        // Both fit in usize: they are bounded by `self.bytes.len()`.
        Ok(offset as usize..offset as usize + len)
    }
}

impl PersistentMemory for VecMemory {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let range = self.range(offset, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)
    }

    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        if !offset.is_multiple_of(8) {
            return Err(OutOfRange {
                offset,
                len: 8,
                region_len: self.len(),
            });
        }
        self.write(offset, &value.to_le_bytes())
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        check_range(offset, len, self.len())?;
        self.flushes += 1;
        Ok(())
    }

    fn fence(&mut self) {
        self.fences += 1;
    }

    /// Loads one byte of each cache line (safe code has no prefetch
    /// instruction): the loads are independent, so the CPU overlaps their
    /// misses just as it would prefetches.
    fn prefetch(&self, offset: u64, len: u64) {
        if check_range(offset, len, self.len()).is_err() {
            return;
        }
        let mut at = offset;
        while at < offset + len {
            // In range: checked above.
            core::hint::black_box(self.bytes[at as usize]);
            at += CACHE_LINE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(1, 10, 10).is_err());
        assert!(check_range(u64::MAX, 2, 10).is_err());
        let mut memory = VecMemory::new(16);
        assert!(memory.write(12, &[1; 8]).is_err());
        assert!(memory.store_u64(4, 1).is_err(), "unaligned u64 store");
        memory.store_u64(8, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(memory.load_u64(8).unwrap(), 0x0102_0304_0506_0708);
        memory.zero(8, 8).unwrap();
        assert_eq!(memory.load_u64(8).unwrap(), 0);
    }
}
