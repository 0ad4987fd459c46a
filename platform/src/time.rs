//! Monotonic time from the TSC, calibrated against the PIT at boot.
//!
//! The PIT (8254) runs at a fixed 1.193182 MHz on every PC. We let its
//! channel 2 count for 10 ms and read TSC cycles and local APIC timer
//! counts at both ends of that interval (see [`init`]); the TSC then gives
//! time, the APIC count sets the one-shot timer that wakes the event loop.
//!
//! Invariant: only calibration touches PIT channel 2 and the speaker gate
//! (ports 0x42, 0x43, 0x61), leaving the speaker off; `rdtsc` only reads.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

use crate::interrupts;

static TSC_PER_MS: AtomicU64 = AtomicU64::new(1);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// The TSC at kernel entry ([`mark_entry`]), for the boot-time figure.
static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);

/// Notes the TSC at kernel entry: call first thing in the entry point.
pub fn mark_entry() {
    ENTRY_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// The TSC at [`mark_entry`].
pub fn entry_cycles() -> u64 {
    ENTRY_TSC.load(Ordering::Relaxed)
}

/// Microseconds since [`mark_entry`] (valid once [`init`] calibrated the
/// TSC).
pub fn since_entry_us() -> u64 {
    cycles_to_ns(rdtsc().wrapping_sub(ENTRY_TSC.load(Ordering::Relaxed))) / 1000
}

fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration interval, ms.
const CALIBRATION_MS: u64 = 10;
/// Bracketed reads taken at each end of the interval; the tightest wins.
const BRACKET_TRIES: usize = 5;

/// Starts PIT channel 2 counting down from 0xffff (mode 0, 55 ms to
/// wrap), speaker off.
fn pit_start() {
    // SAFETY: ports 0x42/0x43 (PIT channel 2, mode register) and 0x61
    // (speaker gate) are standard PC I/O; the speaker output stays off.
    unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut mode = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let value = gate.read();
        gate.write(value & !0x03); // gate off, speaker off
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        channel2.write(0xff);
        channel2.write(0xff);
        // The count starts on the gate's rising edge.
        gate.write((value & !0x02) | 0x01);
    }
}

/// Latches and reads PIT channel 2's count.
fn pit_count() -> u16 {
    // SAFETY: as in `pit_start`: the latch command for channel 2 on the
    // mode register, then its count (low byte, high byte) on 0x42.
    unsafe {
        Port::<u8>::new(0x43).write(0b1000_0000);
        let mut channel2 = Port::<u8>::new(0x42);
        let low = channel2.read();
        let high = channel2.read();
        u16::from_le_bytes([low, high])
    }
}

/// Turns the PIT channel 2 gate off again.
fn pit_stop() {
    // SAFETY: port 0x61 as in `pit_start`; gate and speaker off.
    unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let value = gate.read();
        gate.write(value & !0x03);
    }
}

/// One reading of the three clocks at (nearly) one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// TSC before the PIT and APIC reads.
    pub tsc_before: u64,
    /// TSC after them.
    pub tsc_after: u64,
    /// PIT channel 2 count (counting down).
    pub pit: u16,
    /// APIC timer counts consumed.
    pub apic: u64,
}

fn read_clocks() -> Reading {
    let tsc_before = rdtsc();
    let pit = pit_count();
    let apic = interrupts::calibration_count();
    let tsc_after = rdtsc();
    Reading {
        tsc_before,
        tsc_after,
        pit,
        apic,
    }
}

/// The tightest of several bracketed readings: a host that deschedules
/// the virtual CPU between the TSC and the PIT read widens the bracket,
/// so the narrowest one is the truest.
fn tightest_reading() -> Reading {
    let mut best = read_clocks();
    for _ in 1..BRACKET_TRIES {
        let reading = read_clocks();
        if reading.tsc_after - reading.tsc_before < best.tsc_after - best.tsc_before {
            best = reading;
        }
    }
    best
}

/// TSC cycles and APIC timer counts per millisecond between two readings
/// (the TSC taken at the middle of each bracket); `None` when the PIT did
/// not move.
pub fn rates(start: &Reading, end: &Reading) -> Option<(u64, u64)> {
    let ticks = u64::from(start.pit.wrapping_sub(end.pit));
    if ticks == 0 {
        return None;
    }
    let middle = |r: &Reading| r.tsc_before / 2 + r.tsc_after / 2;
    let tsc = u128::from(middle(end).saturating_sub(middle(start)));
    let apic = u128::from(end.apic.saturating_sub(start.apic));
    // cycles per ms = cycles * PIT_HZ / (ticks * 1000)
    let per_ms = |count: u128| {
        (count * u128::from(PIT_HZ) / (u128::from(ticks) * 1000)).min(u128::from(u64::MAX)) as u64
    };
    Some((per_ms(tsc).max(1), per_ms(apic).max(1)))
}

/// Calibrates the TSC and the local APIC timer against the PIT, then
/// starts the timer. Returns the TSC frequency in kHz.
///
/// The PIT's count is latched and read between two TSC reads, with the
/// APIC count, at the start and the end of a [`CALIBRATION_MS`] interval
/// (the tightest of [`BRACKET_TRIES`] brackets at each end). A host that
/// deschedules the virtual CPU while it waits does not matter (the
/// readings, not the waiting, carry the time); only one inside a bracket
/// would, and the tightest bracket avoids that. Waiting for the PIT's
/// terminal count instead made every sample as long as the host's delay
/// in noticing it: 7 samples of 10 ms still read the TSC 35% fast on a
/// loaded host, and cost 70 ms of boot.
pub fn init() -> u64 {
    interrupts::start_calibration_count();
    pit_start();
    let start = tightest_reading();
    let wanted = PIT_HZ * CALIBRATION_MS / 1000;
    while u64::from(start.pit.wrapping_sub(pit_count())) < wanted {
        core::hint::spin_loop();
    }
    let end = tightest_reading();
    pit_stop();
    // Without a moving PIT (no such machine is known), 1 GHz and QEMU's
    // APIC rate are better than nothing.
    let (per_ms, apic_per_ms) = rates(&start, &end).unwrap_or((1_000_000, 62_500));
    TSC_PER_MS.store(per_ms, Ordering::Relaxed);
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    interrupts::start_timer(apic_per_ms);
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

#[cfg(test)]
mod tests {
    use super::{rates, Reading};

    fn reading(tsc: u64, bracket: u64, pit: u16, apic: u64) -> Reading {
        Reading {
            tsc_before: tsc,
            tsc_after: tsc + bracket,
            pit,
            apic,
        }
    }

    #[test]
    fn rates_come_from_the_readings_at_the_middle_of_each_bracket() {
        // 11932 PIT ticks = 10.0000 ms; 22.45 million TSC cycles between
        // the middles of the brackets: 2245 MHz; 625 000 APIC counts.
        let start = reading(1_000_000, 2_000, 0xfff0, 10);
        let end = reading(23_450_000, 2_000, 0xfff0 - 11_932, 625_010);
        let (tsc, apic) = rates(&start, &end).unwrap();
        assert!((2_244_900..=2_245_100).contains(&tsc), "{tsc}");
        assert!((62_490..=62_510).contains(&apic), "{apic}");
    }

    #[test]
    fn the_pit_count_may_wrap_and_must_move() {
        let start = reading(0, 10, 100, 0);
        let end = reading(1_000_000, 10, 100u16.wrapping_sub(1193), 0);
        assert!(rates(&start, &end).is_some());
        assert_eq!(rates(&start, &reading(5, 10, 100, 0)), None);
    }
}
