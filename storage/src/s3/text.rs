//! Small text codecs the object API needs: percent-decoding and SigV4
//! URI-encoding, hex, base64 (decode only), XML escaping, and the two
//! date forms (HTTP-date, ISO 8601) from Unix seconds and back.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// Decodes `%XX` escapes; `None` for a bad escape or a result that is not
/// UTF-8. `+` stays `+` (S3 clients encode spaces as `%20`).
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// SigV4 URI encoding: every byte but `A-Za-z0-9-._~` as `%XX`
/// (uppercase), and `/` too unless `keep_slash`.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses lowercase or uppercase hex into exactly `N` bytes.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
    }
    Some(out)
}

/// Decodes hex into a UTF-8 string (continuation tokens).
pub fn unhex_string(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks(2) {
        out.push(hex_value(pair[0])? << 4 | hex_value(pair[1])?);
    }
    String::from_utf8(out).ok()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(BASE64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding required) into exactly `N` bytes.
pub fn unbase64<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N.div_ceil(3) * 4 {
        return None;
    }
    let mut out = Vec::with_capacity(N + 2);
    for quad in bytes.chunks(4) {
        let mut v = 0u32;
        let mut pad = 0;
        for (i, &c) in quad.iter().enumerate() {
            let d = match c {
                b'=' if i >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return None,
                _ => BASE64.iter().position(|&x| x == c)? as u32,
            };
            v = v << 6 | d;
        }
        let take = 3 - pad;
        out.extend_from_slice(&v.to_be_bytes()[1..1 + take]);
    }
    out.try_into().ok()
}

/// Escapes text for XML character data and attribute values.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters even escaped
            // as text: write them as character references (S3 does too).
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "&#x{:X};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn split_time(unix: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (unix / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let secs = unix % 86_400;
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `Sat, 05 Dec 2026 03:48:56 GMT` (RFC 9110 IMF-fixdate).
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = split_time(unix);
    let weekday = DAYS[(unix / 86_400 % 7) as usize];
    alloc::format!(
        "{weekday}, {d:02} {} {y:04} {hh:02}:{mm:02}:{ss:02} GMT",
        MONTHS[m as usize - 1]
    )
}

/// `2026-12-05T03:48:56.000Z`, as S3 listings write times.
pub fn iso8601(unix: u64) -> String {
    let (y, m, d, hh, mm, ss) = split_time(unix);
    alloc::format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.000Z")
}

/// Parses the SigV4 basic form `20261205T034856Z` into Unix seconds.
pub fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: core::ops::Range<usize>| -> Option<u32> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    u64::try_from(days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss)).ok()
}

/// Parses an IMF-fixdate (`Sat, 05 Dec 2026 03:48:56 GMT`) into Unix
/// seconds; other HTTP-date forms are not accepted (`None`).
pub fn parse_http_date(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split(' ');
    let (_, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if zone != "GMT" || parts.next().is_some() {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut hms = time.split(':');
    let basic = alloc::format!(
        "{:0>4}{month:02}{:0>2}T{:0>2}{:0>2}{:0>2}Z",
        year,
        day,
        hms.next()?,
        hms.next()?,
        hms.next()?
    );
    parse_amz_date(&basic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        // 2026-12-05T03:48:56Z, a Saturday.
        let t = 1_796_442_536;
        assert_eq!(http_date(t), "Sat, 05 Dec 2026 03:48:56 GMT");
        assert_eq!(iso8601(t), "2026-12-05T03:48:56.000Z");
        assert_eq!(parse_amz_date("20261205T034856Z"), Some(t));
        assert_eq!(parse_http_date("Sat, 05 Dec 2026 03:48:56 GMT"), Some(t));
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(parse_amz_date("20240229T000000Z"), Some(1_709_164_800));
        assert_eq!(parse_amz_date("2024022T000000Z"), None);
        assert_eq!(parse_amz_date("20241329T000000Z"), None);
    }

    #[test]
    fn codecs() {
        assert_eq!(percent_decode("a%20b%2Fc+d").as_deref(), Some("a b/c+d"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(uri_encode("a b/c~é", true), "a%20b/c~%C3%A9");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(unbase64::<5>("aGVsbG8="), Some(*b"hello"));
        assert_eq!(unbase64::<5>("aGVsbG8"), None);
        let md5 = [0xabu8; 16];
        assert_eq!(unbase64::<16>(&base64(&md5)), Some(md5));
        assert_eq!(unhex::<2>("aB01"), Some([0xab, 0x01]));
        assert_eq!(
            xml_escape("a<&>\"'\u{1}"),
            "a&lt;&amp;&gt;&quot;&apos;&#x1;"
        );
    }
}
