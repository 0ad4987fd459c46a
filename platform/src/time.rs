//! Monotonic time from the TSC, calibrated against the PIT at boot.
//!
//! The PIT (8254) runs at a fixed 1.193182 MHz on every PC. Its channel 2
//! starts counting at kernel entry ([`mark_entry`]), and TSC cycles are
//! read with its count at entry and again in [`init`], at least 10 ms
//! later: the boot work in between is the calibration interval instead
//! of a busy wait. The local APIC timer's rate is then measured against
//! the calibrated TSC over 2 ms. The TSC gives time, the APIC count sets
//! the one-shot timer that wakes the event loop.
//!
//! Invariant: only calibration touches PIT channel 2 and the speaker gate
//! (ports 0x42, 0x43, 0x61), leaving the speaker off; `rdtsc` only reads.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

use crate::interrupts;
use crate::tsc::{self, rdtsc};
pub use crate::tsc::{cycles, cycles_to_ns, now_ms, now_us};

/// The TSC at kernel entry ([`mark_entry`]), for the boot-time figure.
static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);

/// The calibration's first reading, taken by [`mark_entry`]: the TSC
/// bracket and the PIT count.
static ENTRY_READING: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Notes the TSC at kernel entry and starts the calibration interval
/// (PIT channel 2 counting, its first reading): call first thing in the
/// entry point.
pub fn mark_entry() {
    ENTRY_TSC.store(rdtsc(), Ordering::Relaxed);
    pit_start();
    let start = tightest(read_pit);
    ENTRY_READING[0].store(start.tsc_before, Ordering::Relaxed);
    ENTRY_READING[1].store(start.tsc_after, Ordering::Relaxed);
    ENTRY_READING[2].store(u64::from(start.pit), Ordering::Relaxed);
}

fn entry_reading() -> Reading {
    Reading {
        tsc_before: ENTRY_READING[0].load(Ordering::Relaxed),
        tsc_after: ENTRY_READING[1].load(Ordering::Relaxed),
        pit: ENTRY_READING[2].load(Ordering::Relaxed) as u16,
        apic: 0,
    }
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

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Shortest calibration interval, ms.
const CALIBRATION_MS: u64 = 10;
/// The APIC timer's measuring interval against the calibrated TSC, ms.
const APIC_WINDOW_MS: u64 = 2;
/// Fresh intervals tried when the PIT passed its terminal count (more
/// than 55 ms between the readings), before using the last one anyway.
const CALIBRATION_TRIES: usize = 3;
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

/// PIT channel 2's output, which in mode 0 goes high at the terminal
/// count (0xffff ticks, 54.9 ms, after [`pit_start`]) and stays high: set
/// when the count may have wrapped.
fn pit_expired() -> bool {
    // SAFETY: port 0x61 as in `pit_start`; reading it changes nothing.
    unsafe { Port::<u8>::new(0x61).read() & 0x20 != 0 }
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

/// The PIT count between two TSC reads.
fn read_pit() -> Reading {
    let tsc_before = rdtsc();
    let pit = pit_count();
    let tsc_after = rdtsc();
    Reading {
        tsc_before,
        tsc_after,
        pit,
        apic: 0,
    }
}

/// The APIC timer count between two TSC reads.
fn read_apic() -> Reading {
    let tsc_before = rdtsc();
    let apic = interrupts::calibration_count();
    let tsc_after = rdtsc();
    Reading {
        tsc_before,
        tsc_after,
        pit: 0,
        apic,
    }
}

/// The tightest of several bracketed readings: a host that deschedules
/// the virtual CPU between the TSC and the other read widens the bracket,
/// so the narrowest one is the truest.
fn tightest(read: fn() -> Reading) -> Reading {
    let mut best = read();
    for _ in 1..BRACKET_TRIES {
        let reading = read();
        if reading.tsc_after - reading.tsc_before < best.tsc_after - best.tsc_before {
            best = reading;
        }
    }
    best
}

/// The TSC at the middle of a reading's bracket.
fn middle(r: &Reading) -> u64 {
    r.tsc_before / 2 + r.tsc_after / 2
}

/// TSC cycles per millisecond between two PIT readings (the TSC taken at
/// the middle of each bracket); `None` when the PIT did not move.
pub fn tsc_rate(start: &Reading, end: &Reading) -> Option<u64> {
    let ticks = u64::from(start.pit.wrapping_sub(end.pit));
    if ticks == 0 {
        return None;
    }
    let tsc = u128::from(middle(end).saturating_sub(middle(start)));
    // cycles per ms = cycles * PIT_HZ / (ticks * 1000)
    let per_ms = (tsc * u128::from(PIT_HZ) / (u128::from(ticks) * 1000)).min(u128::from(u64::MAX));
    Some((per_ms as u64).max(1))
}

/// APIC timer counts per millisecond between two APIC readings, with the
/// TSC at `tsc_per_ms`; `None` when the TSC did not move.
pub fn apic_rate(start: &Reading, end: &Reading, tsc_per_ms: u64) -> Option<u64> {
    let tsc = u128::from(middle(end).saturating_sub(middle(start)));
    if tsc == 0 {
        return None;
    }
    let counts = u128::from(end.apic.saturating_sub(start.apic));
    let per_ms = (counts * u128::from(tsc_per_ms) / tsc).min(u128::from(u64::MAX));
    Some((per_ms as u64).max(1))
}

/// Calibrates the TSC against the PIT, then the local APIC timer against
/// the TSC, and starts the timer. Returns the TSC frequency in kHz.
///
/// The PIT's count is latched and read between two TSC reads (the
/// tightest of [`BRACKET_TRIES`] brackets) at kernel entry
/// ([`mark_entry`]) and here, at least [`CALIBRATION_MS`] later (waiting
/// only if boot got here sooner): the boot steps in between are the
/// interval, and a longer one is only more accurate. A host that
/// deschedules the virtual CPU meanwhile does not matter (the readings,
/// not the waiting, carry the time); only one inside a bracket would, and
/// the tightest bracket avoids that. When the PIT passed its terminal
/// count (the interval was longer than 55 ms, so its 16-bit count may have
/// wrapped, which its output pin tells), a fresh 10 ms interval is
/// measured instead. Waiting for the PIT's terminal count instead made
/// every sample as long as the host's delay in noticing it: 7 samples of
/// 10 ms still read the TSC 35% fast on a loaded host, and cost 70 ms of
/// boot.
pub fn init() -> u64 {
    let wanted = PIT_HZ * CALIBRATION_MS / 1000;
    let mut start = entry_reading();
    let mut end = start;
    for _ in 0..CALIBRATION_TRIES {
        if pit_expired() {
            pit_start();
            start = tightest(read_pit);
        }
        while u64::from(start.pit.wrapping_sub(pit_count())) < wanted {
            core::hint::spin_loop();
        }
        end = tightest(read_pit);
        if !pit_expired() {
            break;
        }
    }
    pit_stop();
    // Without a moving PIT (no such machine is known), 1 GHz is better
    // than nothing.
    let per_ms = tsc_rate(&start, &end).unwrap_or(1_000_000);
    tsc::set_rate(per_ms);
    interrupts::start_calibration_count();
    let apic_start = tightest(read_apic);
    let until = middle(&apic_start).saturating_add(per_ms.saturating_mul(APIC_WINDOW_MS));
    while rdtsc() < until {
        core::hint::spin_loop();
    }
    let apic_end = tightest(read_apic);
    // QEMU's APIC rate is better than nothing.
    let apic_per_ms = apic_rate(&apic_start, &apic_end, per_ms).unwrap_or(62_500);
    tsc::set_boot(rdtsc());
    interrupts::start_timer(apic_per_ms);
    per_ms
}

#[cfg(test)]
mod tests {
    use super::{apic_rate, tsc_rate, Reading};

    fn reading(tsc: u64, bracket: u64, pit: u16, apic: u64) -> Reading {
        Reading {
            tsc_before: tsc,
            tsc_after: tsc + bracket,
            pit,
            apic,
        }
    }

    #[test]
    fn tsc_rate_comes_from_the_readings_at_the_middle_of_each_bracket() {
        // 11932 PIT ticks = 10.0000 ms; 22.45 million TSC cycles between
        // the middles of the brackets: 2245 MHz.
        let start = reading(1_000_000, 2_000, 0xfff0, 0);
        let end = reading(23_450_000, 2_000, 0xfff0 - 11_932, 0);
        let tsc = tsc_rate(&start, &end).unwrap();
        assert!((2_244_900..=2_245_100).contains(&tsc), "{tsc}");
        // A longer interval (boot work between entry and `init`): 40 ms.
        let end = reading(90_800_000, 2_000, 0xfff0 - 47_727, 0);
        let tsc = tsc_rate(&start, &end).unwrap();
        assert!((2_244_900..=2_245_100).contains(&tsc), "{tsc}");
    }

    #[test]
    fn apic_rate_comes_from_the_calibrated_tsc() {
        // 2 ms at 2245 MHz between the middles; 125 000 APIC counts.
        let start = reading(5_000_000, 1_000, 0, 40);
        let end = reading(9_490_000, 1_000, 0, 125_040);
        let apic = apic_rate(&start, &end, 2_245_000).unwrap();
        assert!((62_490..=62_510).contains(&apic), "{apic}");
        assert_eq!(apic_rate(&start, &start, 2_245_000), None);
    }

    #[test]
    fn the_pit_count_may_wrap_and_must_move() {
        let start = reading(0, 10, 100, 0);
        let end = reading(1_000_000, 10, 100u16.wrapping_sub(1193), 0);
        assert!(tsc_rate(&start, &end).is_some());
        assert_eq!(tsc_rate(&start, &reading(5, 10, 100, 0)), None);
    }
}
