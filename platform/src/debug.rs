//! Test-only fault triggers behind the shell's `debug` commands.
//!
//! Invariant: the deliberate fault reads a canonical lower-half address
//! that nothing maps (identity maps cover only pmem and device ranges the
//! platform checked, far below it; everything else lives in the upper
//! half), so the CPU raises a page fault and the read never returns data.

/// The canonical, never-mapped address that [`fault_unmapped_read`] reads.
const UNMAPPED: u64 = 0x0000_7fff_dead_0000;

/// Reads an unmapped address, which raises a page fault (reported on the
/// console, then the machine stops). Returns only if something mapped it
/// after all, with the value read.
pub fn fault_unmapped_read() -> u64 {
    // SAFETY: deliberately faulting read, test-only: `UNMAPPED` is
    // canonical, aligned and never mapped (module invariant), so the CPU
    // faults before any value is produced.
    unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) }
}
