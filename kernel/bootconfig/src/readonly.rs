//! The `readonly=` rules: which exports NBD clients may not write.
//!
//! A rule names exports the way a client opens them:
//!
//! | rule | covers |
//! |---|---|
//! | `NAME` | the file that the export name `NAME` opens: the file of that name on the first device holding a filesystem that has one (pmem0 normally) |
//! | `pmemN:NAME` | file `NAME` on device `pmemN` |
//! | `pmemN:` | every file on device `pmemN` (and its raw export, if it is exported raw) |
//! | `pmemN` | device `pmemN`: its raw export, or every file on it (same as `pmemN:`) |
//! | `*` | every export |
//!
//! `NAME` is any daxfs file name: 1 to [`MAX_FILE_NAME`] bytes of UTF-8
//! without NUL; `/`, `:`, `=`, `,` and spaces are ordinary characters. A
//! `NAME` that starts with a device name and a colon is read as
//! `pmemN:NAME`, and a bare `*` or `pmemN` as the rules above: a file
//! literally called that is named with its device, `pmem0:*`.
//!
//! In the boot config a value is taken as written (up to a ` #` comment,
//! whitespace around it trimmed), or double-quoted: `readonly="  a #b "`
//! keeps every character, with the escapes `\"`, `\\`, `\n`, `\t`, `\r`,
//! `\xHH` (01-7f) and `\u{H..}`, so that every file name can be written.
//!
//! A rule that cannot be used fails closed ([`ReadOnlyRule::failed`]): it
//! stands for every export (`*`), or for every export of one device when
//! the value named the device (`pmem1:` followed by a name too long to be
//! one), with the reason.

use alloc::string::{String, ToString};
use core::fmt;

use crate::printable;

/// Longest daxfs file name, in bytes (`daxfs::format::MAX_NAME`; the
/// storage tests check that they agree).
pub const MAX_FILE_NAME: usize = 255;

/// What a `readonly=` rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOnlyTarget {
    /// `*`: every export.
    All,
    /// `pmemN` (`files: false`) or `pmemN:` (`files: true`): the device's
    /// raw export or every file on it.
    Device {
        /// `pmemN`.
        device: String,
        /// Spelled `pmemN:`.
        files: bool,
    },
    /// `NAME` (no device: what the export name `NAME` opens) or
    /// `pmemN:NAME`.
    File {
        /// `pmemN`, when the rule names it.
        device: Option<String>,
        /// The file name.
        name: String,
    },
}

/// One `readonly=` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyRule {
    /// What it covers.
    pub target: ReadOnlyTarget,
    /// `None` for a rule as written. For a rule that stands in for
    /// something that could not be used (failing closed): why, naming
    /// where it came from (`bootconfig line 3: readonly '': an empty
    /// name`, `--readonly '': an empty name`).
    pub failed: Option<String>,
}

impl ReadOnlyRule {
    /// The rule for `value` (already unquoted), or the fail-closed rule
    /// that stands in for it; `source` prefixes the reason
    /// (`bootconfig line 3: readonly`, `--readonly`).
    pub fn parse(value: &str, source: &str) -> Self {
        match parse_target(value) {
            Ok(target) => ReadOnlyRule {
                target,
                failed: None,
            },
            Err((target, why)) => ReadOnlyRule {
                target,
                failed: Some(alloc::format!("{source} '{}': {why}", printable(value))),
            },
        }
    }

    /// A rule standing for every export, failing closed for `reason`.
    pub fn fail_all(reason: String) -> Self {
        ReadOnlyRule {
            target: ReadOnlyTarget::All,
            failed: Some(reason),
        }
    }

    /// The exports it covers, for people: `every export`, `every export
    /// of pmem1`, `pmem1:disk`, `disk`.
    pub fn scope(&self) -> String {
        match &self.target {
            ReadOnlyTarget::All => "every export".into(),
            ReadOnlyTarget::Device { device, .. } => alloc::format!("every export of {device}"),
            ReadOnlyTarget::File { .. } => self.target.to_string(),
        }
    }
}

/// The rule for `value`, or the scope to fail closed on and why not.
fn parse_target(value: &str) -> Result<ReadOnlyTarget, (ReadOnlyTarget, &'static str)> {
    let check = |name: &str, scope: ReadOnlyTarget| {
        if name.is_empty() {
            Err((scope, "an empty name"))
        } else if name.len() > MAX_FILE_NAME {
            Err((scope, "a name longer than 255 bytes"))
        } else if name.contains('\0') {
            Err((scope, "a name with a NUL byte"))
        } else {
            Ok(())
        }
    };
    if value == "*" {
        return Ok(ReadOnlyTarget::All);
    }
    if daxbox_syntax::is_device_name(value) {
        return Ok(ReadOnlyTarget::Device {
            device: value.to_string(),
            files: false,
        });
    }
    if let Some((device, name)) = value.split_once(':') {
        if daxbox_syntax::is_device_name(device) {
            if name.is_empty() {
                return Ok(ReadOnlyTarget::Device {
                    device: device.to_string(),
                    files: true,
                });
            }
            let scope = ReadOnlyTarget::Device {
                device: device.to_string(),
                files: true,
            };
            check(name, scope)?;
            return Ok(ReadOnlyTarget::File {
                device: Some(device.to_string()),
                name: name.to_string(),
            });
        }
    }
    check(value, ReadOnlyTarget::All)?;
    Ok(ReadOnlyTarget::File {
        device: None,
        name: value.to_string(),
    })
}

/// The value of a `readonly=` line: `rest` is everything after the `=`.
/// Unquoted: up to a ` #` comment, trimmed, as every other key. Quoted:
/// the characters between the quotes with the escapes decoded; only
/// whitespace or a `#` comment may follow.
pub(crate) fn unquote(rest: &str) -> Result<String, String> {
    let Some(body) = rest.trim_start().strip_prefix('"') else {
        let value = match rest.find(" #").or_else(|| rest.find("\t#")) {
            Some(at) => &rest[..at],
            None => rest,
        };
        return Ok(value.trim().to_string());
    };
    let mut out = String::new();
    let mut chars = body.char_indices();
    let open = || String::from("an open quote (no closing '\"')");
    loop {
        let Some((at, c)) = chars.next() else {
            return Err(open());
        };
        match c {
            '"' => {
                let after = body[at + 1..].trim_start();
                if after.is_empty() || after.starts_with('#') {
                    return Ok(out);
                }
                return Err("text after the closing quote".into());
            }
            '\\' => {
                let Some((_, escape)) = chars.next() else {
                    return Err(open());
                };
                let decoded = match escape {
                    '"' => '"',
                    '\\' => '\\',
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'x' => {
                        let hex: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
                        match u8::from_str_radix(&hex, 16) {
                            Ok(byte @ 1..=0x7f) if hex.len() == 2 => char::from(byte),
                            _ => return Err("\\x needs two hex digits, 01 to 7f".into()),
                        }
                    }
                    'u' => {
                        let mut hex = String::new();
                        let mut closed = false;
                        if chars.next().map(|(_, c)| c) == Some('{') {
                            for (_, c) in chars.by_ref().take(7) {
                                if c == '}' {
                                    closed = true;
                                    break;
                                }
                                hex.push(c);
                            }
                        }
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(c) if closed && c != '\0' && hex.len() <= 6 => c,
                            _ => return Err("\\u needs {HEX}, a character other than NUL".into()),
                        }
                    }
                    other => {
                        return Err(alloc::format!(
                            "unknown escape '\\{}'",
                            printable_char(other)
                        ))
                    }
                };
                out.push(decoded);
            }
            c => out.push(c),
        }
    }
}

fn printable_char(c: char) -> char {
    if c.is_control() {
        '?'
    } else {
        c
    }
}

/// Writes `text` as a boot-config value that reads back as `text`:
/// unchanged when it can be, else double-quoted with escapes (every
/// control character escaped, so it is also safe on a console).
fn write_value(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let needs_quotes = text.is_empty()
        || text.starts_with('"')
        || text.starts_with(char::is_whitespace)
        || text.ends_with(char::is_whitespace)
        || text.contains(" #")
        || text.contains("\t#")
        || text.chars().any(char::is_control);
    if !needs_quotes {
        return f.write_str(text);
    }
    write_quoted(f, text)
}

/// Writes `text` double-quoted with escapes: reads back as `text` where a
/// value may be quoted (`readonly=`, an `allow=` word).
pub(crate) fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in text.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() && c.is_ascii() => write!(f, "\\x{:02x}", c as u32)?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for ReadOnlyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadOnlyTarget::All => f.write_str("*"),
            ReadOnlyTarget::Device { device, files } => {
                write!(f, "{device}{}", if *files { ":" } else { "" })
            }
            ReadOnlyTarget::File {
                device: Some(device),
                name,
            } => write_value(f, &alloc::format!("{device}:{name}")),
            ReadOnlyTarget::File { device: None, name } => write_value(f, name),
        }
    }
}

/// `readonly=RULE`, and `(failing closed: REASON)` for a rule that stands
/// in for one that could not be used: as `bootconfig` shows it.
impl fmt::Display for ReadOnlyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "readonly={}", self.target)?;
        if let Some(reason) = &self.failed {
            write!(f, " (failing closed: {reason})")?;
        }
        Ok(())
    }
}

/// Whether the first word of a line (up to `=` or whitespace) is the
/// `readonly` key, in any case and with `_` or `-` in it
/// (`ReadOnly`, `read_only`): a line about access that must not be
/// dropped silently. Works on raw bytes, for lines that are not UTF-8.
pub(crate) fn mentions_readonly(raw: &[u8]) -> bool {
    let word = crate::first_word(raw);
    let mut letters = word.iter().filter(|b| !matches!(b, b'_' | b'-'));
    let mut expected = b"readonly".iter();
    loop {
        match (letters.next(), expected.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => continue,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn file(device: Option<&str>, name: &str) -> ReadOnlyTarget {
        ReadOnlyTarget::File {
            device: device.map(String::from),
            name: name.into(),
        }
    }

    #[test]
    fn targets() {
        let ok = |v: &str| parse_target(v).unwrap();
        assert_eq!(ok("*"), ReadOnlyTarget::All);
        assert_eq!(
            ok("pmem2"),
            ReadOnlyTarget::Device {
                device: "pmem2".into(),
                files: false
            }
        );
        assert_eq!(
            ok("pmem1:"),
            ReadOnlyTarget::Device {
                device: "pmem1".into(),
                files: true
            }
        );
        assert_eq!(ok("pmem1:disk"), file(Some("pmem1"), "disk"));
        assert_eq!(ok("pmem0:pmem1:x"), file(Some("pmem0"), "pmem1:x"));
        assert_eq!(ok("pmem0:*"), file(Some("pmem0"), "*"));
        // Not a device prefix: a plain name, colon and all.
        assert_eq!(ok("pmem01:x"), file(None, "pmem01:x"));
        assert_eq!(ok("a:b"), file(None, "a:b"));
        assert_eq!(ok("**"), file(None, "**"));
        assert_eq!(ok(&"n".repeat(255)), file(None, &"n".repeat(255)));
        let all = ReadOnlyTarget::All;
        assert_eq!(parse_target(""), Err((all.clone(), "an empty name")));
        assert_eq!(
            parse_target(&"n".repeat(256)),
            Err((all, "a name longer than 255 bytes"))
        );
        let pmem1 = ReadOnlyTarget::Device {
            device: "pmem1".into(),
            files: true,
        };
        assert_eq!(
            parse_target(&alloc::format!("pmem1:{}", "n".repeat(256))),
            Err((pmem1, "a name longer than 255 bytes"))
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(unquote("plain value  # comment"), Ok("plain value".into()));
        assert_eq!(unquote(" #only a comment"), Ok("".into()));
        assert_eq!(unquote("a#b"), Ok("a#b".into()));
        assert_eq!(unquote(r#"" a #b "  # c"#), Ok(" a #b ".into()));
        assert_eq!(
            unquote(r#""q\"b\\s\n\t\r\x01\u{e9}\u{1F600}""#),
            Ok("q\"b\\s\n\t\r\u{1}é😀".into())
        );
        assert_eq!(unquote(r#""""#), Ok("".into()));
        for (bad, why) in [
            (r#""open"#, "an open quote (no closing '\"')"),
            (r#""open\"#, "an open quote (no closing '\"')"),
            (r#""a" b"#, "text after the closing quote"),
            (r#""\x00""#, "\\x needs two hex digits, 01 to 7f"),
            (r#""\x8f""#, "\\x needs two hex digits, 01 to 7f"),
            (r#""\x4""#, "\\x needs two hex digits, 01 to 7f"),
            (r#""\u{0}""#, "\\u needs {HEX}, a character other than NUL"),
            (
                r#""\u{d800}""#,
                "\\u needs {HEX}, a character other than NUL",
            ),
            (r#""\u41""#, "\\u needs {HEX}, a character other than NUL"),
            (r#""\q""#, "unknown escape '\\q'"),
        ] {
            assert_eq!(unquote(bad), Err(why.into()), "{bad}");
        }
    }

    #[test]
    fn spelling_reads_back() {
        let cases: Vec<(ReadOnlyTarget, &str)> = alloc::vec![
            (ReadOnlyTarget::All, "*"),
            (file(None, "disk1"), "disk1"),
            (file(Some("pmem1"), "with space"), "pmem1:with space"),
            (file(None, " lead"), r#"" lead""#),
            (file(None, "a #b"), r#""a #b""#),
            (file(None, "\"q"), r#""\"q""#),
            (
                file(None, "line\nbreak\u{1b}[2J\u{85}"),
                r#""line\nbreak\x1b[2J\u{85}""#
            ),
        ];
        for (target, text) in cases {
            assert_eq!(target.to_string(), text);
            let value = unquote(text).unwrap();
            assert_eq!(parse_target(&value).unwrap(), target, "{text}");
        }
    }

    #[test]
    fn readonly_key_detection() {
        for yes in [
            &b"readonly=x"[..],
            b"  ReadOnly = x",
            b"read_only=x",
            b"READ-ONLY",
            b"readonly disk1",
            b"readonly=\xff\xfe",
        ] {
            assert!(mentions_readonly(yes), "{yes:?}");
        }
        for no in [&b"read=x"[..], b"readonlyx=1", b"log=readonly", b""] {
            assert!(!mentions_readonly(no), "{no:?}");
        }
    }

    proptest! {
        /// Every daxfs file name can be written as a rule, and the rule
        /// as `bootconfig` shows it reads back as the same rule.
        #[test]
        fn every_file_name_round_trips(name in "[^\u{0}]{1,60}", device in 0u16..3) {
            prop_assume!(name.len() <= MAX_FILE_NAME);
            let target = file(Some(&daxbox_syntax::device_name(device)), &name);
            let text = alloc::format!("readonly={}\n", target);
            let (config, warnings) = crate::parse(&text);
            prop_assert!(warnings.is_empty(), "{:?}", warnings);
            prop_assert_eq!(&config.readonly[0].target, &target);
            prop_assert!(!target.to_string().chars().any(char::is_control));
        }
    }
}
