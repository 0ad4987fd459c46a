//! The `allow=` rules: which client addresses may use which exports, over
//! which protocol, read-write or read-only.
//!
//! ```text
//! allow=CLIENTS EXPORTS [rw|ro] [nbd|http|both]
//! ```
//!
//! - `CLIENTS`: one or more IPv4 addresses or CIDR blocks, or client
//!   certificate names `cn:NAME`, separated by commas, no spaces:
//!   `198.18.0.10`, `198.18.0.0/24,10.0.0.0/8`, `0.0.0.0/0` (everyone),
//!   `cn:backup-host-1`, `cn:a.example,198.18.0.0/24`. A rule's clients
//!   are any of them. At most [`MAX_CLIENTS`] per rule. The bits
//!   beyond the prefix must be zero (`198.18.0.1/24` is refused: it
//!   usually means a typo). IPv6 is refused: the network stack speaks
//!   IPv4 only.
//! - `cn:NAME` matches a connection whose client certificate (mutual TLS)
//!   verified against `tls_client_ca` and whose subject common name is
//!   exactly `NAME` (case-sensitive; 1-[`MAX_CN`] bytes of `A-Za-z0-9`,
//!   `.`, `-`, `_`, `@`). It never matches a plaintext connection or one
//!   without a verified certificate, whatever its address. A `cn:` rule in
//!   a config without `tls_client_ca` (or with `tls=off`) could never
//!   match and fails closed like an unparsable line.
//! - `EXPORTS`: what a rule covers, in the grammar of `readonly=`
//!   ([`crate::readonly`]): `NAME` (what the export name opens), `pmemN:NAME`,
//!   `pmemN:` (every file on the device), `pmemN` (the device: its raw
//!   export or every file on it) or `*`. A name with spaces, `#` or a
//!   leading `"` is double-quoted, with the escapes of `readonly=`.
//!   For HTTP a device stands for a bucket, a file for an object.
//! - `rw` (the default) or `ro`: read-only clients are told the export is
//!   read-only and their writes get `EPERM`. A `readonly=` rule covering
//!   the export wins over `rw`.
//! - `nbd`, `http` or `both` (the default): the protocol the rule is for.
//!
//! The rules are checked in file order and the **first** rule whose
//! clients contain the address, whose protocol matches and whose exports
//! cover the export decides; no such rule denies. So put narrow rules
//! first (`allow=198.18.0.11 * ro` before `allow=198.18.0.0/24 * rw`).
//! With no `allow=` line at all, every client may use every export (the
//! behaviour before allow-lists, with a boot warning).
//!
//! Bounds: at most [`MAX_RULES`] rules, each with at most [`MAX_CLIENTS`]
//! address blocks.
//!
//! A line that cannot be used fails closed: the protocol it names (both,
//! when it names none or it cannot be told) is not served at all, its
//! listener is not opened, and the reason is kept ([`AllowList::failed`])
//! for the boot console and `bootconfig`. So are a misspelt key
//! (`Allow=`, `ALLOW=`), a line too long, not UTF-8 or with a NUL byte
//! that starts with `allow`, and a rule beyond [`MAX_RULES`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::printable;
use crate::readonly::{self, ReadOnlyRule, ReadOnlyTarget};

/// Most `allow=` rules; a further one fails both protocols closed.
pub const MAX_RULES: usize = 64;
/// Most address blocks and certificate names in one rule.
pub const MAX_CLIENTS: usize = 16;
/// Longest certificate common name a `cn:` client may name (X.520's
/// upper bound for a common name).
pub const MAX_CN: usize = 64;

/// Who a rule is for: an address block or a client certificate name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// Clients whose address is in the block.
    Address(Cidr),
    /// Clients whose verified certificate's common name is this
    /// (`cn:NAME`).
    Cn(String),
}

impl ClientMatch {
    /// Parses `A.B.C.D[/N]` or `cn:NAME`.
    pub fn parse(text: &str) -> Result<ClientMatch, String> {
        let Some(name) = text.strip_prefix("cn:") else {
            return Cidr::parse(text).map(ClientMatch::Address);
        };
        if name.is_empty() {
            return Err("'cn:' names no certificate".into());
        }
        if name.len() > MAX_CN {
            return Err(alloc::format!(
                "certificate name '{}...' is longer than {MAX_CN} bytes",
                printable(&name.chars().take(32).collect::<String>())
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@')))
        {
            return Err(alloc::format!(
                "certificate name '{}' has '{}' (allowed: A-Z a-z 0-9 . - _ @)",
                printable(name),
                printable(bad.encode_utf8(&mut [0; 4]))
            ));
        }
        Ok(ClientMatch::Cn(name.to_string()))
    }

    /// Whether a client with `address` (if told) and verified certificate
    /// name `cn` (if any) is one of these.
    pub fn matches(&self, address: Option<[u8; 4]>, cn: Option<&str>) -> bool {
        match self {
            ClientMatch::Address(c) => address.is_some_and(|a| c.contains(a)),
            ClientMatch::Cn(name) => cn == Some(name.as_str()),
        }
    }
}

impl fmt::Display for ClientMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientMatch::Address(c) => write!(f, "{c}"),
            ClientMatch::Cn(name) => write!(f, "cn:{name}"),
        }
    }
}

/// What a rule covers: the `readonly=` grammar.
pub type ExportTarget = ReadOnlyTarget;

/// An IPv4 block, `A.B.C.D/PREFIX`, with no bits set beyond the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub address: [u8; 4],
    /// Prefix length, 0-32.
    pub prefix: u8,
}

impl Cidr {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        }
    }

    /// Whether `address` is in the block.
    pub fn contains(&self, address: [u8; 4]) -> bool {
        let mask = Self::mask(self.prefix);
        u32::from_be_bytes(address) & mask == u32::from_be_bytes(self.address) & mask
    }

    /// Parses `A.B.C.D` (a /32) or `A.B.C.D/N`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        if text.contains(':') {
            return Err(alloc::format!(
                "'{}' is IPv6, which is not supported (the network is IPv4 only)",
                printable(text)
            ));
        }
        let (address_text, prefix) = match text.split_once('/') {
            Some((a, p)) => {
                let prefix = match p.parse::<u8>() {
                    Ok(n) if n <= 32 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => {
                        return Err(alloc::format!(
                            "prefix '{}' of '{}' is not 0-32",
                            printable(p),
                            printable(text)
                        ))
                    }
                };
                (a, prefix)
            }
            None => (text, 32),
        };
        let address = crate::parse_ipv4(address_text).ok_or_else(|| {
            alloc::format!(
                "'{}' is not an IPv4 address or block (A.B.C.D or A.B.C.D/N)",
                printable(text)
            )
        })?;
        let network = (u32::from_be_bytes(address) & Self::mask(prefix)).to_be_bytes();
        if network != address {
            let suggestion = Cidr {
                address: network,
                prefix,
            };
            return Err(alloc::format!(
                "'{}' has address bits set beyond the /{prefix} prefix (did you mean {suggestion}?)",
                printable(text)
            ));
        }
        Ok(Cidr { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.address;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])?;
        if self.prefix != 32 {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `rw`: read and write.
    ReadWrite,
    /// `ro`: read only (writes get `EPERM`).
    ReadOnly,
}

/// A protocol the rules are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// NBD.
    Nbd,
    /// HTTP (the object API's buckets and objects).
    Http,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Nbd => "nbd",
            Protocol::Http => "http",
        })
    }
}

/// The protocols of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// The rule is for NBD.
    pub nbd: bool,
    /// The rule is for HTTP.
    pub http: bool,
}

impl Protocols {
    /// Both protocols.
    pub const BOTH: Protocols = Protocols {
        nbd: true,
        http: true,
    };

    /// Whether `protocol` is one of them.
    pub fn has(&self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Nbd => self.nbd,
            Protocol::Http => self.http,
        }
    }
}

/// One `allow=` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The client address blocks and certificate names (1 to
    /// [`MAX_CLIENTS`]).
    pub clients: Vec<ClientMatch>,
    /// The exports it covers.
    pub exports: ExportTarget,
    /// What it grants.
    pub mode: Mode,
    /// The protocols it is for.
    pub protocols: Protocols,
    /// Its line in the boot config (0 when not from a file).
    pub line: usize,
}

impl AllowRule {
    /// Whether the rule is about `protocol` and the client (its address
    /// if told, its verified certificate name if any) is one of its
    /// clients.
    pub fn applies(&self, address: Option<[u8; 4]>, cn: Option<&str>, protocol: Protocol) -> bool {
        self.protocols.has(protocol) && self.clients.iter().any(|c| c.matches(address, cn))
    }

    /// Whether a client is named by certificate (`cn:`).
    pub fn names_certificates(&self) -> bool {
        self.clients.iter().any(|c| matches!(c, ClientMatch::Cn(_)))
    }

    /// Parses the value of an `allow=` line (everything after the `=`).
    pub fn parse(rest: &str, line: usize) -> Result<AllowRule, RuleError> {
        let words = split_words(rest).map_err(|why| RuleError {
            reason: why,
            protocols: Protocols::BOTH,
        })?;
        // Which protocol the rule is for, found first, so that a rule
        // that fails elsewhere fails closed only for that protocol.
        let mut protocols = None;
        let mut protocol_repeat = false;
        for word in words.iter().skip(2) {
            if let Word::Plain(w) = word {
                let named = match w.as_str() {
                    "nbd" => Protocols {
                        nbd: true,
                        http: false,
                    },
                    "http" => Protocols {
                        nbd: false,
                        http: true,
                    },
                    "both" => Protocols::BOTH,
                    _ => continue,
                };
                protocol_repeat |= protocols.is_some();
                protocols = Some(named);
            }
        }
        let scope = if protocol_repeat {
            Protocols::BOTH
        } else {
            protocols.unwrap_or(Protocols::BOTH)
        };
        let fail = |reason: String| RuleError {
            reason,
            protocols: scope,
        };
        let usage = "expected CLIENTS EXPORTS [rw|ro] [nbd|http|both]";
        let mut words = words.into_iter();
        let clients_text = match words.next() {
            Some(Word::Plain(w)) => w,
            Some(Word::Quoted(_)) => {
                return Err(fail("the client addresses cannot be quoted".into()))
            }
            None => return Err(fail(alloc::format!("an empty rule ({usage})"))),
        };
        let mut clients = Vec::new();
        for part in clients_text.split(',') {
            if clients.len() >= MAX_CLIENTS {
                return Err(fail(alloc::format!(
                    "more than {MAX_CLIENTS} client addresses in one rule"
                )));
            }
            if part.is_empty() {
                return Err(fail(alloc::format!(
                    "an empty client address in '{}'",
                    printable(&clients_text)
                )));
            }
            clients.push(ClientMatch::parse(part).map_err(fail)?);
        }
        let exports_text = match words.next() {
            Some(Word::Plain(w) | Word::Quoted(w)) => w,
            None => return Err(fail(alloc::format!("no exports ({usage})"))),
        };
        let exports = match ReadOnlyRule::parse(&exports_text, "exports") {
            ReadOnlyRule {
                failed: None,
                target,
            } => target,
            ReadOnlyRule {
                failed: Some(why), ..
            } => return Err(fail(why)),
        };
        let mut mode = None;
        for word in words {
            let text = match word {
                Word::Plain(w) => w,
                Word::Quoted(w) => {
                    return Err(fail(alloc::format!(
                        "unexpected quoted word \"{}\" ({usage})",
                        printable(&w)
                    )))
                }
            };
            match text.as_str() {
                "rw" | "ro" => {
                    if mode.is_some() {
                        return Err(fail(alloc::format!("'{text}': rw or ro given twice")));
                    }
                    mode = Some(if text == "rw" {
                        Mode::ReadWrite
                    } else {
                        Mode::ReadOnly
                    });
                }
                "nbd" | "http" | "both" if protocol_repeat => {
                    return Err(fail(alloc::format!(
                        "'{text}': nbd, http or both given twice"
                    )));
                }
                "nbd" | "http" | "both" => {}
                other => {
                    return Err(fail(alloc::format!(
                        "unknown word '{}' ({usage})",
                        printable(other)
                    )))
                }
            }
        }
        Ok(AllowRule {
            clients,
            exports,
            mode: mode.unwrap_or(Mode::ReadWrite),
            protocols: scope,
            line,
        })
    }
}

/// Why an `allow=` value cannot be used, and the protocols that then
/// fail closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// What is wrong.
    pub reason: String,
    /// The protocols the line was for (both when it cannot be told).
    pub protocols: Protocols,
}

/// A word of an `allow=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Plain(String),
    Quoted(String),
}

/// Splits a value into whitespace-separated words; a word that starts
/// with `"` runs to its closing quote (escapes as in `readonly=`); a word
/// that starts with `#` starts a comment.
fn split_words(rest: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut text = rest.trim_start();
    while !text.is_empty() {
        if text.starts_with('#') {
            break;
        }
        if text.starts_with('"') {
            // Find the closing quote, skipping escaped characters.
            let mut end = None;
            let mut escaped = false;
            for (at, c) in text.char_indices().skip(1) {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(at);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                return Err("an open quote (no closing '\"')".into());
            };
            let quoted = &text[..=end];
            let after = &text[end + 1..];
            if !after.is_empty() && !after.starts_with(char::is_whitespace) {
                return Err("text after the closing quote".into());
            }
            words.push(Word::Quoted(readonly::unquote(quoted)?));
            text = after.trim_start();
            continue;
        }
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        words.push(Word::Plain(text[..end].to_string()));
        text = text[end..].trim_start();
    }
    Ok(words)
}

/// The `allow=` rules of a boot config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// The rules in file order.
    pub rules: Vec<AllowRule>,
    /// Lines that could not be used: (the protocols that fail closed,
    /// why, naming the line).
    pub failed: Vec<(Protocols, String)>,
}

impl AllowList {
    /// No rule and no failed line: every client may use every export.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.failed.is_empty()
    }

    /// Why `protocol` is not served at all (a line about it could not be
    /// used), or `None`.
    pub fn failure(&self, protocol: Protocol) -> Option<&str> {
        self.failed
            .iter()
            .find(|(p, _)| p.has(protocol))
            .map(|(_, why)| why.as_str())
    }

    /// Whether any rule lets the client (`address`, verified certificate
    /// name `cn`) use `protocol` at all (for some export): what the HTTP
    /// server checks before its routes.
    pub fn admits(&self, address: Option<[u8; 4]>, cn: Option<&str>, protocol: Protocol) -> bool {
        if self.failure(protocol).is_some() {
            return false;
        }
        self.is_open() || self.rules.iter().any(|r| r.applies(address, cn, protocol))
    }

    /// What the first rule that applies to the client (`address`,
    /// verified certificate name `cn`) and `protocol` and covers the
    /// export (`covers` says whether a rule's exports do) grants; `None`
    /// is a denial. Open (no rules) grants read-write.
    pub fn decide(
        &self,
        address: Option<[u8; 4]>,
        cn: Option<&str>,
        protocol: Protocol,
        mut covers: impl FnMut(&ExportTarget) -> bool,
    ) -> Option<Mode> {
        if self.failure(protocol).is_some() {
            return None;
        }
        if self.is_open() {
            return Some(Mode::ReadWrite);
        }
        self.rules
            .iter()
            .find(|r| r.applies(address, cn, protocol) && covers(&r.exports))
            .map(|r| r.mode)
    }
}

/// `allow=CLIENTS EXPORTS MODE PROTOCOLS`, as `bootconfig` shows it (reads
/// back as the same rule).
impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("allow=")?;
        for (i, c) in self.clients.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        // The export is one word: quoted (with escapes) when it has a space,
        // or starts with '#', which would start a comment.
        let exports = self.exports.to_string();
        if !exports.starts_with('"')
            && (exports.contains(char::is_whitespace) || exports.starts_with('#'))
        {
            f.write_str(" ")?;
            crate::readonly::write_quoted(f, &exports)?;
        } else {
            write!(f, " {exports}")?;
        }
        let mode = match self.mode {
            Mode::ReadWrite => "rw",
            Mode::ReadOnly => "ro",
        };
        let protocols = match (self.protocols.nbd, self.protocols.http) {
            (true, false) => "nbd",
            (false, true) => "http",
            _ => "both",
        };
        write!(f, " {mode} {protocols}")
    }
}

/// Whether the first word of a line (up to `=` or whitespace) is `allow`
/// in any case (`Allow`, `ALLOW`): a line about access that must not be
/// dropped silently. Works on raw bytes.
pub(crate) fn mentions_allow(raw: &[u8]) -> bool {
    crate::first_word(raw).eq_ignore_ascii_case(b"allow")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Warning};

    fn rule(text: &str) -> AllowRule {
        AllowRule::parse(text, 1).unwrap()
    }

    fn error(text: &str) -> String {
        AllowRule::parse(text, 1).unwrap_err().reason
    }

    fn messages(w: &[Warning]) -> Vec<String> {
        w.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("198.18.0.0/15").unwrap();
        assert!(c.contains([198, 18, 0, 10]));
        assert!(c.contains([198, 19, 255, 255]));
        assert!(!c.contains([198, 20, 0, 0]));
        assert_eq!(c.to_string(), "198.18.0.0/15");
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains([1, 2, 3, 4]) && all.contains([255, 255, 255, 255]));
        let one = Cidr::parse("10.0.0.1").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains([10, 0, 0, 1]) && !one.contains([10, 0, 0, 2]));
        assert_eq!(one.to_string(), "10.0.0.1");
        for (bad, why) in [
            (
                "::1",
                "'::1' is IPv6, which is not supported (the network is IPv4 only)",
            ),
            ("10.0.0.0/33", "prefix '33' of '10.0.0.0/33' is not 0-32"),
            ("10.0.0.0/", "prefix '' of '10.0.0.0/' is not 0-32"),
            (
                "10.0.0/8",
                "'10.0.0/8' is not an IPv4 address or block (A.B.C.D or A.B.C.D/N)",
            ),
            (
                "host",
                "'host' is not an IPv4 address or block (A.B.C.D or A.B.C.D/N)",
            ),
            (
                "198.18.0.1/24",
                "'198.18.0.1/24' has address bits set beyond the /24 prefix (did you mean \
                 198.18.0.0/24?)",
            ),
        ] {
            assert_eq!(Cidr::parse(bad), Err(why.into()), "{bad}");
        }
    }

    #[test]
    fn rules_and_defaults() {
        let r = rule("198.18.0.10 disk1");
        assert_eq!(
            r.clients,
            [ClientMatch::Address(Cidr::parse("198.18.0.10").unwrap())]
        );
        assert_eq!(
            r.exports,
            ExportTarget::File {
                device: None,
                name: "disk1".into()
            }
        );
        assert_eq!((r.mode, r.protocols), (Mode::ReadWrite, Protocols::BOTH));
        assert_eq!(r.to_string(), "allow=198.18.0.10 disk1 rw both");
        let r = rule("  10.0.0.0/8,192.168.1.0/24  pmem1:  ro  nbd  # comment");
        assert_eq!(r.clients.len(), 2);
        assert_eq!(r.mode, Mode::ReadOnly);
        assert_eq!(
            r.protocols,
            Protocols {
                nbd: true,
                http: false
            }
        );
        assert_eq!(
            r.to_string(),
            "allow=10.0.0.0/8,192.168.1.0/24 pmem1: ro nbd"
        );
        // Protocol before mode, quoted names with spaces and escapes.
        let r = rule(r#"0.0.0.0/0 "pmem0:my disk #2" http ro"#);
        assert_eq!(
            r.to_string(),
            r#"allow=0.0.0.0/0 "pmem0:my disk #2" ro http"#
        );
        assert_eq!(rule(&r.to_string()["allow=".len()..]), r);
        let r = rule(r#"1.2.3.4 "tab\there""#);
        assert_eq!(r.to_string(), r#"allow=1.2.3.4 "tab\there" rw both"#);
        assert_eq!(rule(&r.to_string()["allow=".len()..]), r);
        // A name that starts with '#' (a comment as a bare word) and one
        // with a space and a backslash are quoted with escapes (found by
        // the bootconfig fuzz target: `#b` was shown bare).
        for (text, shown) in [
            (r##"1.2.3.4 "#b""##, r##"allow=1.2.3.4 "#b" rw both"##),
            (r#"1.2.3.4 "a \\b""#, r#"allow=1.2.3.4 "a \\b" rw both"#),
        ] {
            let r = rule(text);
            assert_eq!(r.to_string(), shown);
            assert_eq!(rule(&r.to_string()["allow=".len()..]), r);
        }
        assert_eq!(rule("1.2.3.4 * rw both").exports, ExportTarget::All);
        assert_eq!(
            rule("1.2.3.4 pmem2").exports,
            ExportTarget::Device {
                device: "pmem2".into(),
                files: false
            }
        );
    }

    #[test]
    fn every_error_message() {
        let usage = "expected CLIENTS EXPORTS [rw|ro] [nbd|http|both]";
        let many = (0..17)
            .map(|i| alloc::format!("10.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(",");
        for (text, why) in [
            ("", alloc::format!("an empty rule ({usage})")),
            (
                "   # only a comment",
                alloc::format!("an empty rule ({usage})"),
            ),
            ("10.0.0.1", alloc::format!("no exports ({usage})")),
            (
                "\"10.0.0.1\" disk",
                "the client addresses cannot be quoted".into(),
            ),
            (
                "10.0.0.1,,10.0.0.2 disk",
                "an empty client address in '10.0.0.1,,10.0.0.2'".into(),
            ),
            (
                &alloc::format!("{many} disk"),
                "more than 16 client addresses in one rule".into(),
            ),
            (
                "fe80::1 disk",
                "'fe80::1' is IPv6, which is not supported (the network is IPv4 only)".into(),
            ),
            ("10.0.0.1 \"\"", "exports '': an empty name".into()),
            (
                &alloc::format!("10.0.0.1 {}", "n".repeat(256)),
                alloc::format!(
                    "exports '{}...': a name longer than 255 bytes",
                    "n".repeat(40)
                ),
            ),
            ("10.0.0.1 disk rw ro", "'ro': rw or ro given twice".into()),
            (
                "10.0.0.1 disk nbd http",
                "'nbd': nbd, http or both given twice".into(),
            ),
            (
                "10.0.0.1 disk write",
                alloc::format!("unknown word 'write' ({usage})"),
            ),
            (
                "10.0.0.1 disk \"ro\"",
                alloc::format!("unexpected quoted word \"ro\" ({usage})"),
            ),
            ("10.0.0.1 \"disk", "an open quote (no closing '\"')".into()),
            ("10.0.0.1 \"disk\"ro", "text after the closing quote".into()),
            ("10.0.0.1 \"\\q\"", "unknown escape '\\q'".into()),
        ] {
            assert_eq!(error(text), why, "{text}");
        }
    }

    #[test]
    fn a_failed_rule_fails_closed_for_the_protocol_it_names() {
        let e = AllowRule::parse("10.0.0.300 disk nbd", 1).unwrap_err();
        assert_eq!(
            e.protocols,
            Protocols {
                nbd: true,
                http: false
            }
        );
        let e = AllowRule::parse("10.0.0.300 disk http", 1).unwrap_err();
        assert!(!e.protocols.nbd && e.protocols.http);
        for unknown in ["10.0.0.300 disk", "10.0.0.1 disk nbd http", "10.0.0.1 \"x"] {
            let e = AllowRule::parse(unknown, 1).unwrap_err();
            assert_eq!(e.protocols, Protocols::BOTH, "{unknown}");
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let (config, warnings) = parse(
            "allow=198.18.0.11 * ro\n\
             allow=198.18.0.0/24 disk1\n\
             allow=198.18.0.12 pmem1: rw http\n",
        );
        assert!(warnings.is_empty(), "{:?}", messages(&warnings));
        let list = &config.allow;
        let disk1 = |t: &ExportTarget| {
            matches!(t, ExportTarget::All)
                || matches!(t, ExportTarget::File { name, .. } if name == "disk1")
        };
        let other = |t: &ExportTarget| matches!(t, ExportTarget::All);
        let nbd = Protocol::Nbd;
        assert_eq!(
            list.decide(Some([198, 18, 0, 11]), None, nbd, disk1),
            Some(Mode::ReadOnly)
        );
        assert_eq!(
            list.decide(Some([198, 18, 0, 11]), None, nbd, other),
            Some(Mode::ReadOnly)
        );
        assert_eq!(
            list.decide(Some([198, 18, 0, 10]), None, nbd, disk1),
            Some(Mode::ReadWrite)
        );
        assert_eq!(list.decide(Some([198, 18, 0, 10]), None, nbd, other), None);
        assert_eq!(list.decide(Some([198, 18, 1, 10]), None, nbd, disk1), None);
        // .12's pmem1 rule is for HTTP only.
        let pmem1 = |t: &ExportTarget| matches!(t, ExportTarget::Device { device, .. } if device == "pmem1");
        assert_eq!(list.decide(Some([198, 18, 0, 12]), None, nbd, pmem1), None);
        assert_eq!(
            list.decide(Some([198, 18, 0, 12]), None, Protocol::Http, pmem1),
            Some(Mode::ReadWrite)
        );
        assert!(list.admits(Some([198, 18, 0, 12]), None, Protocol::Http));
        assert!(!list.admits(Some([198, 18, 1, 12]), None, Protocol::Http));
        assert!(
            list.admits(Some([198, 18, 0, 10]), None, Protocol::Http),
            "both by default"
        );
        // No rules: open.
        let open = AllowList::default();
        assert!(open.is_open());
        assert_eq!(
            open.decide(Some([1, 1, 1, 1]), None, nbd, other),
            Some(Mode::ReadWrite)
        );
        assert!(open.admits(Some([1, 1, 1, 1]), None, Protocol::Http));
    }

    #[test]
    fn lines_that_cannot_be_used_fail_closed() {
        let (config, warnings) = parse(
            "allow=10.0.0.1 disk\n\
             allow=10.0.0.300 disk http\n",
        );
        assert_eq!(
            messages(&warnings),
            [
                "bootconfig line 2: bad value for allow: '10.0.0.300' is not an IPv4 address or \
              block (A.B.C.D or A.B.C.D/N) (failing closed: http not served)"
            ]
        );
        assert_eq!(config.allow.failure(Protocol::Nbd), None);
        assert_eq!(
            config.allow.failure(Protocol::Http),
            Some(
                "bootconfig line 2: allow: '10.0.0.300' is not an IPv4 address or block \
                 (A.B.C.D or A.B.C.D/N)"
            )
        );
        assert!(!config
            .allow
            .admits(Some([10, 0, 0, 1]), None, Protocol::Http));
        assert!(config
            .allow
            .admits(Some([10, 0, 0, 1]), None, Protocol::Nbd));
        // Misspelt key, unreadable lines, a rule without '='.
        let mut bytes = b"Allow=10.0.0.1 *\nallow=\xff\nALLOW 10.0.0.1 *\n".to_vec();
        bytes.extend_from_slice(alloc::format!("allow={}\n", "a".repeat(3000)).as_bytes());
        let (config, warnings) = parse(&bytes);
        assert_eq!(
            messages(&warnings),
            [
                "bootconfig line 1: bad value for allow: unknown key 'Allow' (the key is allow) \
                 (failing closed: nbd and http not served)",
                "bootconfig line 2: bad value for allow: line is not valid UTF-8 (failing \
                 closed: nbd and http not served)",
                "bootconfig line 3: bad value for allow: 'ALLOW 10.0.0.1 *' has no '=' \
                 (failing closed: nbd and http not served)",
                "bootconfig line 4: bad value for allow: line of 3006 bytes is longer than 2048 \
                 (failing closed: nbd and http not served)",
            ]
        );
        assert_eq!(config.allow.failed.len(), 4);
        assert!(config.allow.failure(Protocol::Nbd).is_some());
        assert!(config.allow.failure(Protocol::Http).is_some());
        assert!(!config.allow.is_open());
        // More than MAX_RULES rules: both protocols fail closed.
        let text: String = (0..MAX_RULES + 2)
            .map(|i| alloc::format!("allow=10.0.0.{i} *\n"))
            .collect();
        let (config, warnings) = parse(&text);
        assert_eq!(config.allow.rules.len(), MAX_RULES);
        assert_eq!(
            messages(&warnings),
            [
                "bootconfig line 65: bad value for allow: more than 64 allow rules (failing \
              closed: nbd and http not served)"
            ]
        );
        assert_eq!(
            config.allow.failure(Protocol::Nbd),
            Some("bootconfig line 65: more than 64 allow rules")
        );
    }

    #[test]
    fn certificate_names() {
        let r = rule("cn:backup-host-1 pmem0:disk1 rw");
        assert_eq!(r.clients, [ClientMatch::Cn("backup-host-1".into())]);
        assert!(r.names_certificates());
        assert_eq!(r.to_string(), "allow=cn:backup-host-1 pmem0:disk1 rw both");
        assert_eq!(rule(&r.to_string()["allow=".len()..]), r);
        let nbd = Protocol::Nbd;
        // Only the verified name matches, never an address, and exactly.
        assert!(r.applies(None, Some("backup-host-1"), nbd));
        assert!(r.applies(Some([10, 0, 0, 1]), Some("backup-host-1"), nbd));
        assert!(!r.applies(Some([10, 0, 0, 1]), None, nbd));
        assert!(!r.applies(None, Some("backup-host-2"), nbd));
        assert!(!r.applies(None, Some("Backup-host-1"), nbd));
        assert!(!r.applies(None, None, nbd));
        // Mixed with addresses: any of them.
        let r = rule("cn:a@b.example,198.18.0.0/24 * ro nbd");
        assert_eq!(r.to_string(), "allow=cn:a@b.example,198.18.0.0/24 * ro nbd");
        assert!(r.applies(Some([198, 18, 0, 9]), None, nbd));
        assert!(r.applies(Some([10, 0, 0, 1]), Some("a@b.example"), nbd));
        assert!(!r.applies(Some([10, 0, 0, 1]), Some("b.example"), nbd));
        assert!(!rule("198.18.0.0/24 *").names_certificates());
        for (bad, why) in [
            ("cn: disk", "'cn:' names no certificate".to_string()),
            (
                "cn:x/y disk",
                "certificate name 'x/y' has '/' (allowed: A-Z a-z 0-9 . - _ @)".into(),
            ),
            (
                "cn:caf\u{e9} disk",
                "certificate name 'caf\u{e9}' has '\u{e9}' (allowed: A-Z a-z 0-9 . - _ @)".into(),
            ),
            (
                &alloc::format!("cn:{} disk", "n".repeat(MAX_CN + 1)),
                alloc::format!(
                    "certificate name '{}...' is longer than 64 bytes",
                    "n".repeat(32)
                ),
            ),
        ] {
            assert_eq!(error(bad), why, "{bad}");
        }
    }

    #[test]
    fn certificate_rules_without_a_client_ca_fail_closed() {
        let ca = "tls_client_ca=-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let tls = "tls=on\n";
        let rules = "allow=198.18.0.10 *\nallow=cn:host-1 disk1 rw nbd\n";
        // With TLS on and a client CA the rule stands.
        let (config, warnings) = parse(alloc::format!("{tls}{ca}{rules}"));
        let messages_of = messages(&warnings);
        assert!(
            messages_of.iter().all(|m| !m.contains("allow")),
            "{messages_of:?}"
        );
        assert_eq!(config.allow.rules.len(), 2);
        assert_eq!(config.allow.failure(Protocol::Nbd), None);
        assert_eq!(
            config
                .allow
                .decide(None, Some("host-1"), Protocol::Nbd, |_| true),
            Some(Mode::ReadWrite)
        );
        assert_eq!(
            config
                .allow
                .decide(None, Some("host-1"), Protocol::Http, |_| true),
            None
        );
        for (text, missing) in [
            (alloc::format!("{tls}{rules}"), "no tls_client_ca is given"),
            (alloc::format!("{ca}{rules}"), "tls is off"),
        ] {
            let (config, warnings) = parse(&text);
            let line = text.lines().count();
            let why = alloc::format!(
                "a cn: client matches only a certificate verified against tls_client_ca, but \
                 {missing}"
            );
            let shown: Vec<String> = messages(&warnings)
                .into_iter()
                .filter(|m| m.contains("allow"))
                .collect();
            assert_eq!(
                shown,
                [alloc::format!(
                    "bootconfig line {line}: bad value for allow: {why} (failing closed: nbd \
                     not served)"
                )]
            );
            assert_eq!(
                config.allow.failure(Protocol::Nbd),
                Some(alloc::format!("bootconfig line {line}: allow: {why}").as_str())
            );
            // HTTP is untouched; the address rule still serves it.
            assert_eq!(config.allow.failure(Protocol::Http), None);
            assert!(config
                .allow
                .admits(Some([198, 18, 0, 10]), None, Protocol::Http));
            assert!(!config.allow.admits(None, Some("host-1"), Protocol::Nbd));
        }
    }

    proptest::proptest! {
        /// Any value: no panic, and a rule that parses reads back as
        /// itself from what `bootconfig` prints.
        #[test]
        fn any_value_parses_or_fails_and_rules_read_back(
            value in "[ -~\t]{0,80}|[0-9./, ]{0,30} [\"a-z:*\\\\ ]{0,20}( ro| rw| nbd| http)*"
        ) {
            if let Ok(rule) = AllowRule::parse(&value, 1) {
                let shown = rule.to_string();
                let again = AllowRule::parse(&shown["allow=".len()..], 1);
                proptest::prop_assert_eq!(again, Ok(rule), "{}", shown);
            }
        }
    }

    #[test]
    fn allow_key_detection() {
        for yes in [&b"allow=x"[..], b" Allow = x", b"ALLOW", b"allow 1.2.3.4 *"] {
            assert!(mentions_allow(yes), "{yes:?}");
        }
        for no in [&b"allowed=x"[..], b"allow_list=x", b"log=allow", b""] {
            assert!(!mentions_allow(no), "{no:?}");
        }
    }
}
