//! The small text grammars that every daxbox layer shares, so that a size
//! or a device name typed in the boot config, at the shell, to a host tool
//! or to `cargo xtask` means the same thing everywhere.
//!
//! - Sizes ([`parse_size`], [`human`]): decimal or `0x` hexadecimal, with an
//!   optional binary unit `K`, `M`, `G`, `T` (also `KiB`, `MiB`, `GiB`,
//!   `TiB`, any case) or `B`. `512M`, `1GiB`, `0x10000000`, `4096`.
//! - Device names ([`device_index`], [`device_name`]): `pmem` and a decimal
//!   number without leading zeros, `pmem0` to `pmem999`.
//!
//! Dependency-free and `no_std` (with `alloc` for [`human`]), so the kernel,
//! its libraries, the test harness and xtask all use this one copy.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use core::fmt;

/// Why a size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// No digits at all.
    Empty,
    /// The number part is not decimal or `0x` hexadecimal digits.
    NotANumber,
    /// A suffix that is not `K`, `M`, `G`, `T` (optionally with `iB`) or `B`.
    UnknownUnit,
    /// The value does not fit in 64 bits.
    TooLarge,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeError::Empty => "empty size",
            SizeError::NotANumber => "not a number (examples: 4096, 0x1000, 512M, 1GiB)",
            SizeError::UnknownUnit => "unknown unit (use K, M, G or T, or KiB, MiB, GiB, TiB)",
            SizeError::TooLarge => "too large for 64 bits",
        })
    }
}

/// The binary shift of a unit suffix (`""` and `B` are bytes).
fn unit_shift(unit: &str) -> Option<u32> {
    let unit = unit.as_bytes();
    let (letter, rest) = match unit {
        [] => return Some(0),
        [b'b' | b'B'] => return Some(0),
        [letter, rest @ ..] => (letter.to_ascii_uppercase(), rest),
    };
    if !(rest.is_empty() || rest.eq_ignore_ascii_case(b"ib")) {
        return None;
    }
    match letter {
        b'K' => Some(10),
        b'M' => Some(20),
        b'G' => Some(30),
        b'T' => Some(40),
        _ => None,
    }
}

/// Parses a size (see the crate docs for the grammar). Surrounding
/// whitespace is ignored; nothing else is: no sign, no spaces inside, no
/// decimal point.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit() && !(radix == 16 && b.is_ascii_hexdigit()))
        .unwrap_or(digits.len());
    // In hex, `B` is a digit: `0x1B` is 27 bytes, never 1 byte.
    let (number, unit) = digits.split_at(end);
    if number.is_empty() {
        return Err(SizeError::NotANumber);
    }
    let shift = unit_shift(unit).ok_or(SizeError::UnknownUnit)?;
    // `from_str_radix` would accept a leading `+`; `number` is digits only.
    let value = u64::from_str_radix(number, radix).map_err(|_| SizeError::TooLarge)?;
    value.checked_mul(1u64 << shift).ok_or(SizeError::TooLarge)
}

/// Formats a byte count with a binary unit: exact values as integers
/// (`64 MiB`), others with one decimal (`504.7 MiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        alloc::format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        alloc::format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// The highest device number a name may carry (`pmem999`).
pub const MAX_DEVICE_INDEX: u16 = 999;

/// The number of device name `name` (`pmem0` → 0), or `None` when `name`
/// is not a device name: `pmem` then 1-3 decimal digits, no leading zero.
pub fn device_index(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("pmem")?;
    let well_formed = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'));
    if well_formed {
        digits.parse().ok()
    } else {
        None
    }
}

/// Whether `name` is a device name (see [`device_index`]).
pub fn is_device_name(name: &str) -> bool {
    device_index(name).is_some()
}

/// The name of device number `index` (`0` → `pmem0`).
pub fn device_name(index: u16) -> String {
    alloc::format!("pmem{}", index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling() {
        for (text, value) in [
            ("4096", 4096),
            ("0", 0),
            ("0x1000", 0x1000),
            ("0X1f", 31),
            ("0x1B", 27),
            ("64k", 64 << 10),
            ("64K", 64 << 10),
            ("64KiB", 64 << 10),
            ("64kib", 64 << 10),
            ("512M", 512 << 20),
            ("512MiB", 512 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("2T", 2 << 40),
            ("2TiB", 2 << 40),
            ("100B", 100),
            ("0x10M", 16 << 20),
            (" 8G ", 8 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(value), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_why() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("  "), Err(SizeError::Empty));
        assert_eq!(parse_size("M"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("0x"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("+5"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("-5"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("1.5G"), Err(SizeError::UnknownUnit));
        assert_eq!(parse_size("5 M"), Err(SizeError::UnknownUnit));
        assert_eq!(parse_size("5Q"), Err(SizeError::UnknownUnit));
        assert_eq!(parse_size("5KB"), Err(SizeError::UnknownUnit));
        assert_eq!(parse_size("5Mi"), Err(SizeError::UnknownUnit));
        assert_eq!(parse_size("0xG"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("16777216T"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1 KiB");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human((1 << 30) + (1 << 29)), "1.5 GiB");
        assert_eq!(human(3 << 40), "3 TiB");
        assert_eq!(human(5000 << 40), "5000 TiB");
    }

    #[test]
    fn device_names() {
        assert_eq!(device_index("pmem0"), Some(0));
        assert_eq!(device_index("pmem12"), Some(12));
        assert_eq!(device_index("pmem999"), Some(MAX_DEVICE_INDEX));
        for bad in [
            "pmem", "pmem01", "pmem1000", "pmemx", "PMEM0", "pmem-1", "disk1", "",
        ] {
            assert_eq!(device_index(bad), None, "{bad}");
        }
        assert_eq!(device_name(3), "pmem3");
        assert!(is_device_name("pmem3") && !is_device_name("pmem03"));
    }
}
