//! Wall-clock time from the CMOS real-time clock (MC146818 and its
//! successors, ports 0x70/0x71), read once at boot and carried forward by
//! the TSC.
//!
//! What needs it: S3 `Last-Modified` and Signature V4 clock-skew checks,
//! TLS certificate validity. The RTC counts whole seconds in local time of
//! whatever the firmware was told; QEMU sets it to UTC by default
//! (`-rtc base=utc`), which is what daxbox assumes and says at boot.
//!
//! Invariants: the registers are read only (nothing is ever written to
//! the RTC except the index port); a read is repeated until two full reads
//! agree with no update in progress between them, so a value is never torn
//! across a seconds tick; anything that does not decode to a plausible
//! date (year 2000..=2199, every field in range) leaves the clock unset and
//! [`unix_now`] answers `None`, never a guessed time.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::time;

/// Unix seconds at the TSC origin of [`time::now_ms`], plus one so that 0
/// means "unset".
static BOOT_UNIX_PLUS_ONE: AtomicU64 = AtomicU64::new(0);

/// The raw register values of one RTC read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcRaw {
    /// Register 0x00.
    pub seconds: u8,
    /// Register 0x02.
    pub minutes: u8,
    /// Register 0x04 (bit 7 = PM in 12-hour mode).
    pub hours: u8,
    /// Register 0x07 (day of month).
    pub day: u8,
    /// Register 0x08.
    pub month: u8,
    /// Register 0x09 (two digits).
    pub year: u8,
    /// Register 0x32 (the ACPI FADT default century register), or 0.
    pub century: u8,
    /// Status register B: bit 2 set = binary (else BCD), bit 1 set = 24-hour.
    pub status_b: u8,
}

/// A decoded calendar time (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, 2000..=2199.
    pub year: u32,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
}

fn from_bcd(value: u8) -> Option<u8> {
    let (high, low) = (value >> 4, value & 0x0f);
    (high <= 9 && low <= 9).then_some(high * 10 + low)
}

/// Decodes one RTC read; `None` if any field is out of range.
pub fn decode(raw: RtcRaw) -> Option<DateTime> {
    let binary = raw.status_b & 0x04 != 0;
    let hour24 = raw.status_b & 0x02 != 0;
    let field = |value: u8| if binary { Some(value) } else { from_bcd(value) };
    // In 12-hour mode bit 7 of the hour is PM, in either encoding.
    let pm = !hour24 && raw.hours & 0x80 != 0;
    let mut hour = field(raw.hours & 0x7f)?;
    if !hour24 {
        if !(1..=12).contains(&hour) {
            return None;
        }
        hour = match (hour, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, true) => h + 12,
            (h, false) => h,
        };
    }
    let year_in_century = field(raw.year)?;
    let century = match field(raw.century) {
        Some(c @ 20..=21) => u32::from(c),
        // No century register (or a junk one): the RTC's two digits are
        // taken as 20xx, the only century daxbox runs in.
        _ => 20,
    };
    let date = DateTime {
        year: century * 100 + u32::from(year_in_century),
        month: field(raw.month)?,
        day: field(raw.day)?,
        hour,
        minute: field(raw.minutes)?,
        second: field(raw.seconds)?,
    };
    let valid = (2000..=2199).contains(&date.year)
        && (1..=12).contains(&date.month)
        && date.day >= 1
        && date.day <= days_in_month(date.year, date.month)
        && date.hour < 24
        && date.minute < 60
        && date.second < 60;
    valid.then_some(date)
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Seconds since 1970-01-01T00:00:00Z of a date from [`decode`] (so year
/// >= 2000: no negative results).
pub fn unix_seconds(date: DateTime) -> u64 {
    // Days from the civil date, Howard Hinnant's algorithm, with March as
    // the first month so that the leap day is the last day of the year.
    let month = u64::from(date.month);
    let year = u64::from(date.year) - u64::from(month <= 2);
    let era = year / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + u64::from(date.day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    days * 86_400
        + u64::from(date.hour) * 3600
        + u64::from(date.minute) * 60
        + u64::from(date.second)
}

/// The calendar date of a Unix time (UTC), for messages and HTTP dates.
pub fn civil(unix: u64) -> DateTime {
    let days = unix / 86_400;
    let rest = unix % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (year_of_era + era * 400 + u64::from(month <= 2)) as u32;
    DateTime {
        year,
        month,
        day,
        hour: (rest / 3600) as u8,
        minute: (rest / 60 % 60) as u8,
        second: (rest % 60) as u8,
    }
}

impl core::fmt::Display for DateTime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn read_register(index: u8) -> u8 {
    use x86_64::instructions::port::Port;
    // SAFETY: ports 0x70 (CMOS index, bit 7 left clear: NMIs stay enabled)
    // and 0x71 (CMOS data) are the standard PC RTC/CMOS interface; selecting
    // a register and reading it changes no state other than the index.
    unsafe {
        Port::<u8>::new(0x70).write(index & 0x7f);
        Port::<u8>::new(0x71).read()
    }
}

fn update_in_progress() -> bool {
    read_register(0x0a) & 0x80 != 0
}

fn read_raw() -> RtcRaw {
    // Bounded: the update-in-progress window is under 2 ms once a second.
    for _ in 0..100_000 {
        if !update_in_progress() {
            break;
        }
        core::hint::spin_loop();
    }
    RtcRaw {
        seconds: read_register(0x00),
        minutes: read_register(0x02),
        hours: read_register(0x04),
        day: read_register(0x07),
        month: read_register(0x08),
        year: read_register(0x09),
        century: read_register(0x32),
        status_b: read_register(0x0b),
    }
}

/// Reads the RTC (after [`time::init`]) and sets the wall clock. Returns
/// the time read, or `None` if the RTC gave no plausible date (the clock
/// then stays unset).
pub fn init() -> Option<DateTime> {
    let mut previous = read_raw();
    let mut agreed = None;
    for _ in 0..5 {
        let current = read_raw();
        if current == previous {
            agreed = Some(current);
            break;
        }
        previous = current;
    }
    let date = decode(agreed?)?;
    let boot_unix = unix_seconds(date).saturating_sub(time::now_ms() / 1000);
    BOOT_UNIX_PLUS_ONE.store(boot_unix + 1, Ordering::Relaxed);
    Some(date)
}

/// Seconds since the Unix epoch (UTC), or `None` if [`init`] found no
/// plausible RTC date.
pub fn unix_now() -> Option<u64> {
    match BOOT_UNIX_PLUS_ONE.load(Ordering::Relaxed) {
        0 => None,
        boot => Some(boot - 1 + time::now_ms() / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bcd(value: u8) -> u8 {
        ((value / 10) << 4) | (value % 10)
    }

    fn raw_bcd(y: u8, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> RtcRaw {
        RtcRaw {
            seconds: bcd(s),
            minutes: bcd(mi),
            hours: bcd(h),
            day: bcd(d),
            month: bcd(mo),
            year: bcd(y),
            century: bcd(20),
            status_b: 0x02,
        }
    }

    #[test]
    fn bcd_24_hour_as_qemu_sets_it() {
        let date = decode(raw_bcd(26, 12, 5, 3, 58, 7)).unwrap();
        assert_eq!(date.to_string(), "2026-12-05 03:58:07 UTC");
        // date -u -d '2026-12-05 03:58:07' +%s
        assert_eq!(unix_seconds(date), 1_796_443_087);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut raw = RtcRaw {
            seconds: 59,
            minutes: 30,
            hours: 0x80 | 12, // 12 PM = noon
            day: 29,
            month: 2,
            year: 24,
            century: 20,
            status_b: 0x04,
        };
        let noon = decode(raw).unwrap();
        assert_eq!(
            (noon.year, noon.month, noon.day, noon.hour),
            (2024, 2, 29, 12)
        );
        raw.hours = 12; // 12 AM = midnight
        assert_eq!(decode(raw).unwrap().hour, 0);
        raw.hours = 0x80 | 11; // 11 PM
        assert_eq!(decode(raw).unwrap().hour, 23);
        raw.hours = 0; // no hour 0 on a 12-hour clock
        assert_eq!(decode(raw), None);
    }

    #[test]
    fn implausible_reads_leave_the_clock_unset() {
        let good = raw_bcd(26, 12, 5, 3, 58, 7);
        for broken in [
            RtcRaw {
                seconds: 0x7a,
                ..good
            }, // not BCD
            RtcRaw {
                month: bcd(13),
                ..good
            }, // month 13
            RtcRaw { day: 0, ..good }, // day 0
            RtcRaw {
                hours: bcd(24),
                ..good
            }, // hour 24
            RtcRaw {
                minutes: bcd(60),
                ..good
            }, // minute 60
            RtcRaw { year: 0xff, ..good }, // garbage year
            raw_bcd(25, 2, 29, 0, 0, 0), // not a leap year
            RtcRaw {
                day: bcd(31),
                month: bcd(4),
                ..good
            }, // April 31
        ] {
            assert_eq!(decode(broken), None, "{broken:?}");
        }
        // A junk century register falls back to 20xx, not to a wrong era.
        let junk_century = RtcRaw {
            century: 0xff,
            ..good
        };
        assert_eq!(decode(junk_century).unwrap().year, 2026);
    }

    #[test]
    fn civil_inverts_unix_seconds_over_two_centuries() {
        let mut unix = 946_684_800; // 2000-01-01
        while unix < 7_258_118_400 {
            // 2200-01-01
            let date = civil(unix);
            assert_eq!(unix_seconds(date), unix, "{date}");
            unix += 86_400 * 7 + 3_661;
        }
        assert_eq!(civil(951_782_400).to_string(), "2000-02-29 00:00:00 UTC");
    }
}
