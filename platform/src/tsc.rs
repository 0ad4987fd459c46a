//! The TSC clock: cycles, and microseconds since boot once
//! [`crate::time::init`] has calibrated the rate against the PIT.
//!
//! Below both `time` (calibration, which also measures the local APIC
//! timer through `interrupts`) and `interrupts` (halt accounting and the
//! one-shot timer's deadlines read this clock), so neither imports the
//! other's clock.

use core::sync::atomic::{AtomicU64, Ordering};

/// TSC cycles per millisecond (1 until calibrated).
static TSC_PER_MS: AtomicU64 = AtomicU64::new(1);
/// The TSC when calibration ended: time zero of [`now_us`].
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

pub(crate) fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Sets the calibrated rate (calibration only).
pub(crate) fn set_rate(per_ms: u64) {
    TSC_PER_MS.store(per_ms.max(1), Ordering::Relaxed);
}

/// Sets time zero of [`now_us`] (calibration only).
pub(crate) fn set_boot(tsc: u64) {
    BOOT_TSC.store(tsc, Ordering::Relaxed);
}

/// Milliseconds since calibration.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since calibration.
pub fn now_us() -> u64 {
    let elapsed = rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    let per_ms = TSC_PER_MS.load(Ordering::Relaxed);
    // u128 so that long uptimes at GHz rates cannot overflow.
    (u128::from(elapsed) * 1000 / u128::from(per_ms)) as u64
}

/// TSC cycles since an arbitrary point, for benchmarks.
pub fn cycles() -> u64 {
    rdtsc()
}

/// Converts TSC cycles to nanoseconds.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    let per_ms = TSC_PER_MS.load(Ordering::Relaxed);
    (u128::from(cycles) * 1_000_000 / u128::from(per_ms)) as u64
}
