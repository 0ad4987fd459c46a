//! Persistent memory: [`PmemRegion`], the hardware side of
//! [`PersistentMemory`] (loads and stores on the identity-mapped range,
//! `clwb`/`clflushopt`/`clflush`, `sfence`, `movnti`), and the CPUID
//! questions that go with it.
//!
//! Invariant: a `PmemRegion` is created only by [`map`], from a range that
//! [`crate::memory`] accepted as storage (RAM given up with
//! `memory::carve_out`, or memory the boot memory map does not describe or
//! describes as persistent) and had never handed out before, and that
//! [`map`] then identity-mapped itself; so each range has one region, and
//! the region is the only way to its bytes.

use core::arch::asm;
use daxbox_persist::{check_range, OutOfRange, PersistentMemory, CACHE_LINE};

use crate::memory::{self, MapError, MapKind, PageCounts, PhysRange};

/// Claims `range` as storage, identity-maps it (2 MiB pages where
/// aligned) and returns its only [`PmemRegion`] with the page counts.
/// `flush` is how cache lines reach the persistence domain
/// ([`FlushInstruction::None`] when `cache_persistent`).
pub fn map(
    range: PhysRange,
    flush: FlushInstruction,
    cache_persistent: bool,
) -> Result<(PmemRegion, PageCounts), MapError> {
    memory::claim_storage_range(range)?;
    let pages = memory::map_identity(range.start, range.len(), MapKind::Pmem)?;
    let region = PmemRegion {
        base: range.start,
        len: range.len(),
        flush,
        cache_persistent,
    };
    Ok((region, pages))
}

/// How cache lines are written back to the persistence domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushInstruction {
    /// `clwb`: write back, the line may stay cached (CPUID.7.0:EBX[24]).
    Clwb,
    /// `clflushopt`: write back and invalidate, weakly ordered
    /// (CPUID.7.0:EBX[23]).
    Clflushopt,
    /// `clflush`: write back and invalidate, ordered (CPUID.1:EDX[19]).
    Clflush,
    /// Nothing to do: the CPU caches are inside the persistence domain
    /// (eADR), so only fences matter.
    None,
}

impl FlushInstruction {
    /// The instruction's name, for the console.
    pub fn name(self) -> &'static str {
        match self {
            FlushInstruction::Clwb => "clwb",
            FlushInstruction::Clflushopt => "clflushopt",
            FlushInstruction::Clflush => "clflush",
            FlushInstruction::None => "none (eADR)",
        }
    }
}

/// CPUID leaf `leaf`, sub-leaf 0.
fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    // `cpuid` exists on every x86_64 CPU and only reads identification
    // registers; recent toolchains declare the intrinsic safe.
    core::arch::x86_64::__cpuid_count(leaf, 0)
}

/// The best flush instruction this CPU has.
pub fn detect_flush() -> FlushInstruction {
    let max_leaf = cpuid(0).eax;
    if max_leaf >= 7 {
        let ebx = cpuid(7).ebx;
        if ebx & (1 << 24) != 0 {
            return FlushInstruction::Clwb;
        }
        if ebx & (1 << 23) != 0 {
            return FlushInstruction::Clflushopt;
        }
    }
    // clflush is architectural on x86_64 (CPUID.1:EDX[19] is always set).
    FlushInstruction::Clflush
}

/// An identity-mapped persistent-memory range: the kernel's
/// [`PersistentMemory`].
///
/// Invariant (established by [`map`], the only constructor):
/// `base..base + len` is mapped virt == phys, writable and write-back,
/// is never part of the heap or the RAM frame allocator, and this region
/// is the only Rust value through which the bytes are accessed.
pub struct PmemRegion {
    base: u64,
    len: u64,
    flush: FlushInstruction,
    cache_persistent: bool,
}

impl PmemRegion {
    /// How this region's cache lines are written back.
    pub fn flush_instruction(&self) -> FlushInstruction {
        self.flush
    }

    fn ptr(&self, offset: u64) -> *mut u8 {
        // Callers check `offset <= len` first, and base + len does not wrap
        // (checked by discovery).
        (self.base + offset) as *mut u8
    }

    /// Writes back every cache line touching `offset..offset + len`.
    fn flush_lines(&self, offset: u64, len: u64) {
        if len == 0 || self.flush == FlushInstruction::None {
            return;
        }
        let first = (self.base + offset) & !(CACHE_LINE - 1);
        let end = self.base + offset + len;
        let mut line = first;
        while line < end {
            let p = line as *const u8;
            // SAFETY: `line` is inside (or is the line containing the start
            // of) the mapped region; the flush instructions only write the
            // line back and do not change memory contents.
            unsafe {
                match self.flush {
                    FlushInstruction::Clwb => {
                        asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                    FlushInstruction::Clflushopt => {
                        asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                    FlushInstruction::Clflush | FlushInstruction::None => {
                        asm!("clflush [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                }
            }
            line += CACHE_LINE;
        }
    }
}

impl PersistentMemory for PmemRegion {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(offset, buf.len() as u64, self.len)?;
        // SAFETY: the range was checked against the region, which is mapped
        // and not aliased by any Rust reference (type invariant); `buf` is
        // RAM, so the two cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(offset, data.len() as u64, self.len)?;
        // SAFETY: as in `read`, with `&mut self` making this the only
        // writer.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(offset), data.len()) };
        Ok(())
    }

    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let len = data.len() as u64;
        check_range(offset, len, self.len)?;
        // Unaligned head and tail go through the cache (and get flushed);
        // the 8-byte aligned body uses `movnti`, which bypasses the cache
        // and is durable after the next sfence (Intel SDM Vol. 1 §10.4.6.2).
        let address = self.base + offset;
        let head = (address.next_multiple_of(8) - address).min(len);
        let body = (len - head) & !7;
        let tail = len - head - body;
        if head > 0 {
            self.write(offset, &data[..head as usize])?;
            self.flush_lines(offset, head);
        }
        let mut at = head as usize;
        let body_end = (head + body) as usize;
        while at < body_end {
            let mut word = [0u8; 8];
            word.copy_from_slice(&data[at..at + 8]);
            let value = u64::from_ne_bytes(word);
            let p = self.ptr(offset + at as u64);
            // SAFETY: `p` is 8-byte aligned and `p..p+8` lies inside the
            // checked range of the mapped region; movnti only stores.
            unsafe {
                asm!("movnti [{0}], {1}", in(reg) p, in(reg) value, options(nostack, preserves_flags))
            };
            at += 8;
        }
        if tail > 0 {
            let tail_offset = offset + head + body;
            self.write(tail_offset, &data[body_end..])?;
            self.flush_lines(tail_offset, tail);
        }
        Ok(())
    }

    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        check_range(offset, 8, self.len)?;
        if !(self.base + offset).is_multiple_of(8) {
            return Err(OutOfRange {
                offset,
                len: 8,
                region_len: self.len,
            });
        }
        // SAFETY: aligned, in range; an aligned 8-byte `mov` is a single
        // store, which x86 makes atomic (Intel SDM Vol. 3 §9.1.1) and so
        // power-fail atomic within a cache line.
        unsafe { core::ptr::write_volatile(self.ptr(offset) as *mut u64, value.to_le()) };
        Ok(())
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        check_range(offset, len, self.len)?;
        self.flush_lines(offset, len);
        Ok(())
    }

    fn fence(&mut self) {
        // SAFETY: `sfence` only orders stores.
        unsafe { asm!("sfence", options(nostack, preserves_flags)) };
    }

    fn cache_is_persistent(&self) -> bool {
        self.cache_persistent
    }

    fn physical_address(&self, offset: u64) -> Option<u64> {
        (offset <= self.len).then(|| self.base + offset)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        if check_range(offset, len, self.len).is_err() {
            return;
        }
        let mut at = offset;
        while at < offset + len {
            let p = self.ptr(at) as *const u8;
            // SAFETY: `p` lies inside the mapped region (range checked
            // above); `prefetcht0` only moves the line into the cache and
            // never faults or changes memory.
            unsafe {
                asm!("prefetcht0 [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
            };
            at += CACHE_LINE;
        }
    }
}

/// One past the highest physical address (CPUID 0x8000_0008 EAX[7:0]).
pub fn max_physical_address() -> u64 {
    let max_extended = cpuid(0x8000_0000).eax;
    let bits = if max_extended >= 0x8000_0008 {
        let eax = cpuid(0x8000_0008).eax;
        (eax & 0xff).clamp(32, 52)
    } else {
        36
    };
    1u64 << bits
}
