//! Monotonic time from the TSC, calibrated against the PIT at boot.
//!
//! The PIT (8254) runs at a fixed 1.193182 MHz on every PC. We gate its
//! channel 2 for 10 ms and count TSC cycles and local APIC timer counts
//! over the same interval; the TSC then gives time, the APIC count sets the
//! periodic timer that wakes the event loop.
//!
//! Invariant: only calibration touches PIT channel 2 and the speaker gate
//! (ports 0x42, 0x43, 0x61), leaving the speaker off; `rdtsc` only reads.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

use crate::interrupts;

static TSC_PER_MS: AtomicU64 = AtomicU64::new(1);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Busy-waits `ms` milliseconds (1..=50) on PIT channel 2.
fn pit_wait(ms: u16) {
    let count = (1_193_182u32 * u32::from(ms.clamp(1, 50)) / 1000) as u16;
    // SAFETY: ports 0x42/0x43 (PIT channel 2, mode register) and 0x61
    // (speaker gate) are standard PC I/O; the speaker output stays off.
    unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut mode = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let value = gate.read();
        gate.write((value & !0x02) | 0x01); // gate on, speaker off
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Restart the count with a rising edge on the gate.
        let value = gate.read();
        gate.write(value & !0x01);
        gate.write(value | 0x01);
        // Bit 5 of port 0x61 is channel 2's output, set at terminal count.
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
    }
}

/// Calibrates the TSC and the local APIC timer, then starts the timer.
/// Returns the TSC frequency in kHz.
pub fn init() -> u64 {
    const MS: u64 = 10;
    // Any delay inside a sample (the host descheduling a virtual CPU, TCG
    // translating the loop on its first run, a slow emulated port access)
    // only makes it longer than the PIT interval, never shorter: keep the
    // shortest of several. A single sample was seen up to 2.3x too long
    // under a loaded TCG host, and every timeout ran that much slower.
    const SAMPLES: usize = 7;
    let mut best: Option<(u64, u64)> = None;
    for _ in 0..SAMPLES {
        let mut tsc_cycles = 0;
        let apic_counts = interrupts::measure_timer(|| {
            let start = rdtsc();
            pit_wait(MS as u16);
            tsc_cycles = rdtsc() - start;
        });
        if best.is_none_or(|(cycles, _)| tsc_cycles < cycles) {
            best = Some((tsc_cycles, apic_counts));
        }
    }
    // Invariant: SAMPLES > 0, so the loop set `best`.
    let (tsc_cycles, apic_counts) = best.unwrap_or((MS, MS));
    let per_ms = (tsc_cycles / MS).max(1);
    TSC_PER_MS.store(per_ms, Ordering::Relaxed);
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    interrupts::start_timer((apic_counts / MS).max(1));
    per_ms
}

/// Milliseconds since [`init`].
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since [`init`].
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
