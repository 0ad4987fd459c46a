//! Parser for the daxbox boot configuration.
//!
//! `boot/` packs a small text file into the boot image as the bootloader's
//! ramdisk; the kernel hands its bytes to [`parse`] before it touches any
//! storage. The result ([`BootConfig`]) feeds pmem discovery
//! (`drivers/pmem`, the `pmem=` carve-outs), the network stack
//! (`net/stack`: `ip=`, `gateway=`), the NBD and HTTP servers (ports,
//! exports) and the kernel's logger.
//!
//! # Format
//! One `key=value` setting per line. Blank lines and lines whose first
//! non-blank character is `#` are ignored, as is anything after a ` #` on a
//! setting line. Whitespace around keys and values is trimmed; CRLF line
//! ends are accepted; trailing NUL padding (some image builders pad the
//! ramdisk) is ignored. Keys are lower case.
//!
//! The parser never fails and never panics: a line it cannot use produces a
//! [`Warning`] that names the line, the setting keeps its default (or the
//! repeatable entry is dropped; a key that grants access is turned off)
//! and boot continues. Lines that are not UTF-8, contain NUL bytes or are
//! longer than [`MAX_LINE`] bytes are ignored with a warning (a `readonly`
//! line fails closed instead, below).
//!
//! # Keys
//! | key | value | default | meaning |
//! |---|---|---|---|
//! | `pmem` | `SIZE@START` | none | Carve `SIZE` bytes of RAM at physical address `START` out of the volatile allocator and serve them as emulated pmem (like Linux `memmap=nn!ss`). Repeatable (at most [`MAX_PMEM`]). Numbers are decimal or `0x` hex, with an optional `K`, `M`, `G` or `T` suffix (binary units): `64M@0x10000000`, `0x4000000@256M`. |
//! | `format` | `if-blank` \| `never` | `never` | Whether daxfs may create a filesystem on a device that holds no daxfs superblock. `cargo xtask run` passes `if-blank`. |
//! | `ip` | `dhcp` \| `A.B.C.D/PREFIX` | `dhcp` | IPv4 configuration of the network interface. |
//! | `gateway` | `A.B.C.D` | none (DHCP's, if any) | Default IPv4 gateway for a static `ip=`. |
//! | `nbd_port` | 1-65535 | `10809` | TCP port of the NBD server. |
//! | `http_port` | 1-65535 | `80` | TCP port of the HTTP status server. |
//! | `http_bench` | `on` \| `off` | `off` | Whether the HTTP server serves the throughput routes `GET /bench/bytes?n=N` and `PUT /bench/sink` (each at most 1 GiB per request); `off` answers `404`. A bad value fails closed: off, with a warning. |
//! | `nbd_list` | `on` \| `off` | `on` | Whether the NBD server answers `NBD_OPT_LIST` with the export names; `off` answers `NBD_REP_ERR_POLICY` (clients must know the name they want). A bad value fails closed: listing off, with a warning. |
//! | `nbd_max_connections` | 1-1024 | `64` | NBD connections served at once (all clients). A client over the limit is answered `NBD_REP_ERR_POLICY` ("too many connections") to every option; connections already served go on. |
//! | `nbd_max_per_address` | 1-1024 | `32` | NBD connections served at once from one client address (half the total: one host cannot take every slot; behind NAT, e.g. QEMU user networking, every client has one address). Same refusal. |
//! | `http_max_connections` | 1-1024 | `32` | HTTP connections served at once. Over the limit: `503 Service Unavailable` with `Retry-After: 5`, then close. |
//! | `http_max_per_address` | 1-1024 | `16` | HTTP connections served at once from one client address. Same refusal. |
//! | `export_raw` | `pmemN` | none | Export that device raw over NBD instead of mounting daxfs on it. Repeatable. |
//! | `readonly` | `NAME` \| `pmemN:NAME` \| `pmemN:` \| `pmemN` \| `*` | none | Exports NBD clients may not write (EPERM): a file, every file of a device, a raw device, everything ([`readonly`] has the grammar, quoting included). Repeatable (at most [`MAX_NAMES`]). A value that cannot be used fails closed: every export (or every export of the device it names) read-only, with a warning that says why. |
//! | `tls` | `off` \| `on` \| `require` | `off` | TLS for NBD (`NBD_OPT_STARTTLS`) and HTTPS. `on`: NBD clients may start TLS or not; `require`: every NBD option but STARTTLS is answered `NBD_REP_ERR_TLS_REQD`. Needs `tls_cert` and `tls_key`. A bad value, or settings that cannot be applied, fail closed: neither NBD nor HTTPS is served, and boot and `bootconfig` say why ([`tls`]). |
//! | `tls_cert` | PEM block(s) | none | The server certificate chain, leaf first: each `-----BEGIN CERTIFICATE-----` block starts on a `tls_cert=` line and runs to its `-----END` line ([`tls`]). Prefer ECDSA P-256 or Ed25519. |
//! | `tls_key` | PEM block | none | The server's private key (PKCS#8, SEC1 or PKCS#1 PEM), same block format. Never printed. |
//! | `tls_client_ca` | PEM block(s) | none | CA certificates for mutual TLS: clients must present a certificate that chains to one of them. |
//! | `https_port` | 1-65535 | `443` | TCP port of the HTTPS server (when `tls` is not `off`). |
//! | `allow` | `CLIENTS EXPORTS [rw\|ro] [nbd\|http\|both]` | none (every client may use every export) | Which client addresses (IPv4, comma-separated `A.B.C.D[/N]`) or client certificates (`cn:NAME`, mutual TLS; needs `tls_client_ca`) may use which exports (`NAME`, `pmemN:NAME`, `pmemN:`, `pmemN`, `*`, as `readonly`) over which protocol, read-write or read-only ([`allow`] has the grammar). Repeatable (at most [`allow::MAX_RULES`]); the first rule that matches decides, no match denies. A line that cannot be used fails closed: the protocol it names (both when it names none) is not served at all. |
//! | `s3_key` | `ACCESS:SECRET` or `ACCESS:SECRET:read-only` | none | An access key of the S3 object API (AWS Signature V4): the id 1-128 of `A-Za-z0-9_-`, the secret 8-128 printable ASCII characters without spaces; `:read-only` allows reads only. Repeatable (at most [`MAX_S3_KEYS`]; a repeated id keeps the first). Without any, the object API refuses every request (403), and the boot log says so. Never printed: `bootconfig` shows the id only, and a bad line's warning does not quote it. |
//! | `s3_anonymous` | `pmemN:read` | none | Unsigned S3 reads (list, get, head) allowed on that bucket; writes always need a key. Repeatable (at most [`MAX_NAMES`]). A bad value is dropped: no anonymous access. |
//! | `log` | `error` \| `warn` \| `info` \| `debug` \| `trace` | `info` | Console log level. |
//! | `debug_commands` | `on` \| `off` | `off` | Enable shell commands meant for tests only (`debug panic`, `debug fault`: deliberate crashes). |
//!
//! A scalar key given twice keeps the last value, with a warning. A bad
//! value of a key that grants access (`nbd_list`, `http_bench`) counts as
//! a value: the setting fails closed (access off) rather than falling back
//! to a default that may allow more, and the warning says so
//! ([`WarningKind::FailedClosed`]). A `readonly` line that cannot be used
//! (a bad value, more than [`MAX_NAMES`] rules, and also a line dropped as
//! too long, not UTF-8 or with a NUL byte, or a key spelled `ReadOnly` or
//! `read_only`) becomes a rule that makes every export read-only (or every
//! export of the device it names), carrying the reason
//! ([`ReadOnlyRule::failed`]). An `allow` line that cannot be used (also
//! one dropped as unreadable, a misspelt `Allow=`, or a rule beyond
//! [`allow::MAX_RULES`]) shuts the protocol it names, or both
//! ([`AllowList::failed`]): the kernel opens no listener for it.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod allow;
pub mod readonly;
pub mod tls;

pub use allow::{AllowList, AllowRule, Cidr, ClientMatch, Mode as AllowMode, Protocol};
pub use readonly::{ReadOnlyRule, ReadOnlyTarget, MAX_FILE_NAME};
pub use tls::{Secret, TlsMode, TlsSettings};

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Longest line accepted, in bytes (without the line end): room for a
/// `readonly=` rule naming any file (255 bytes, each escaped as `\xHH`).
pub const MAX_LINE: usize = 2048;
/// Most `pmem=` entries accepted; later ones are ignored with a warning.
pub const MAX_PMEM: usize = 16;
/// Most `export_raw=` / `readonly=` entries accepted, each (a `readonly=`
/// beyond it fails closed: one more rule, for every export).
pub const MAX_NAMES: usize = 32;
/// Most `s3_key=` entries accepted; later ones are dropped with a warning.
pub const MAX_S3_KEYS: usize = 16;
/// Most warnings kept; further ones are only counted
/// ([`WarningKind::Suppressed`]), so garbage input cannot use up the heap.
pub const MAX_WARNINGS: usize = 64;

/// Default NBD port (IANA-assigned to NBD).
pub const DEFAULT_NBD_PORT: u16 = 10809;
/// Default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// Default `nbd_max_connections`: room for a 64-client job (the kernel's
/// NBD heap budget covers them at the default 512 MiB of RAM).
pub const DEFAULT_NBD_MAX_CONNECTIONS: u16 = 64;
/// Default `nbd_max_per_address`: half the total.
pub const DEFAULT_NBD_MAX_PER_ADDRESS: u16 = 32;
/// Default `http_max_connections`: a status and benchmark service.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: u16 = 32;
/// Default `http_max_per_address`: half the total.
pub const DEFAULT_HTTP_MAX_PER_ADDRESS: u16 = 16;
/// Largest value of the connection-limit keys.
pub const MAX_CONNECTION_LIMIT: u16 = 1024;

/// One `pmem=SIZE@START` request: RAM to be turned into emulated pmem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemRequest {
    /// Length in bytes (never zero).
    pub size: u64,
    /// First physical address.
    pub start: u64,
    /// The value as written in the file, for messages (`64M@0x1000000`).
    pub text: String,
    /// 1-based line number in the boot config.
    pub line: usize,
}

/// What daxfs may do with a device that holds no filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatPolicy {
    /// Create a filesystem on a device whose superblock area is blank.
    IfBlank,
    /// Never format: blank devices are reported and left alone.
    Never,
}

/// IPv4 configuration of the network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpConfig {
    /// Ask a DHCP server.
    Dhcp,
    /// Static address with prefix length.
    Static {
        /// The interface address.
        address: [u8; 4],
        /// Prefix length, 0-32.
        prefix: u8,
    },
}

/// Console log level, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal progress messages.
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

/// The parsed boot configuration; [`Default`] gives every key's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `pmem=` requests in file order.
    pub pmem: Vec<PmemRequest>,
    /// `format=`.
    pub format: FormatPolicy,
    /// `ip=`.
    pub ip: IpConfig,
    /// `gateway=`.
    pub gateway: Option<[u8; 4]>,
    /// `nbd_port=`.
    pub nbd_port: u16,
    /// `http_port=`.
    pub http_port: u16,
    /// `http_bench=`: serve `/bench/bytes` and `/bench/sink`.
    pub http_bench: bool,
    /// `nbd_list=`: answer `NBD_OPT_LIST` with the export names.
    pub nbd_list: bool,
    /// `nbd_max_connections=`.
    pub nbd_max_connections: u16,
    /// `nbd_max_per_address=`.
    pub nbd_max_per_address: u16,
    /// `http_max_connections=`.
    pub http_max_connections: u16,
    /// `http_max_per_address=`.
    pub http_max_per_address: u16,
    /// `export_raw=` device names (`pmem0`, ...), in file order.
    pub export_raw: Vec<String>,
    /// `readonly=` rules in file order, including the ones standing in
    /// for lines that could not be used (failing closed).
    pub readonly: Vec<ReadOnlyRule>,
    /// `allow=` rules, and the lines that could not be used ([`allow`]).
    pub allow: AllowList,
    /// `log=`.
    pub log: LogLevel,
    /// `debug_commands=`.
    pub debug_commands: bool,
    /// `tls=`, `tls_cert=`, `tls_key=`, `tls_client_ca=`, `https_port=`
    /// ([`tls`] has the PEM-in-config format).
    pub tls: TlsSettings,
    /// `s3_key=` entries.
    pub s3_keys: Vec<S3Key>,
    /// `s3_anonymous=`: buckets readable without a signature.
    pub s3_anonymous: Vec<String>,
}

/// An `s3_key=` entry. Its `Debug` form hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Key {
    /// Access key id.
    pub id: String,
    /// Secret access key.
    pub secret: String,
    /// Reads only.
    pub read_only: bool,
}

impl fmt::Debug for S3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Key")
            .field("id", &self.id)
            .field("secret", &"<hidden>")
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl fmt::Display for S3Key {
    /// As `bootconfig` shows it: the id, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "s3_key={}:<secret hidden>{}",
            self.id,
            if self.read_only { ":read-only" } else { "" }
        )
    }
}

/// Parses an `s3_key=` value.
fn parse_s3_key(value: &str) -> Result<S3Key, &'static str> {
    let (value, read_only) = match value.strip_suffix(":read-only") {
        Some(rest) => (rest, true),
        None => (value, false),
    };
    let (id, secret) = value
        .split_once(':')
        .ok_or("it must be ACCESS:SECRET or ACCESS:SECRET:read-only")?;
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("the access key id must be 1-128 of A-Za-z0-9_-");
    }
    if secret.len() < 8 || secret.len() > 128 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the secret must be 8-128 printable ASCII characters without spaces");
    }
    Ok(S3Key {
        id: id.into(),
        secret: secret.into(),
        read_only,
    })
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            pmem: Vec::new(),
            format: FormatPolicy::Never,
            ip: IpConfig::Dhcp,
            gateway: None,
            nbd_port: DEFAULT_NBD_PORT,
            http_port: DEFAULT_HTTP_PORT,
            http_bench: false,
            nbd_list: true,
            nbd_max_connections: DEFAULT_NBD_MAX_CONNECTIONS,
            nbd_max_per_address: DEFAULT_NBD_MAX_PER_ADDRESS,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            http_max_per_address: DEFAULT_HTTP_MAX_PER_ADDRESS,
            export_raw: Vec::new(),
            readonly: Vec::new(),
            allow: AllowList::default(),
            log: LogLevel::Info,
            debug_commands: false,
            s3_keys: Vec::new(),
            s3_anonymous: Vec::new(),
            tls: TlsSettings::default(),
        }
    }
}

/// Why a line was not (fully) used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// The line is not valid UTF-8.
    NotUtf8,
    /// The line contains a NUL byte.
    Nul,
    /// The line is longer than [`MAX_LINE`].
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The line has no `=`.
    NoEquals {
        /// The line (shortened, printable).
        text: String,
    },
    /// The key is not one of the documented keys.
    UnknownKey {
        /// The key (shortened, printable).
        key: String,
    },
    /// The value does not parse; the default is kept or the entry dropped.
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong, including the offending value.
        reason: String,
        /// True for repeatable keys: the entry is dropped (no default).
        repeatable: bool,
    },
    /// The value does not parse and the key grants access: the setting
    /// fails closed (access off) instead of keeping a default that allows
    /// more.
    FailedClosed {
        /// The key.
        key: &'static str,
        /// What is wrong, including the offending value.
        reason: String,
        /// What was applied instead (e.g. `nbd_list=off`).
        applied: &'static str,
    },
    /// A scalar key appeared again; this later value replaces the earlier.
    Repeated {
        /// The key.
        key: &'static str,
        /// Line of the replaced value.
        previous_line: usize,
    },
    /// More than [`MAX_WARNINGS`] warnings: this many were not kept (the
    /// line is the last of them), so garbage input cannot fill the heap.
    Suppressed {
        /// Number of warnings dropped.
        count: usize,
    },
    /// A repeatable key was given more often than its limit.
    TooMany {
        /// The key.
        key: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// A problem with one line of the boot config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: WarningKind,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bootconfig line {}: ", self.line)?;
        match &self.kind {
            WarningKind::NotUtf8 => write!(f, "not valid UTF-8 (ignored)"),
            WarningKind::Nul => write!(f, "contains a NUL byte (ignored)"),
            WarningKind::TooLong { len } => {
                write!(f, "line of {len} bytes is longer than {MAX_LINE} (ignored)")
            }
            WarningKind::NoEquals { text } => {
                write!(f, "expected key=value, got '{text}' (ignored)")
            }
            WarningKind::UnknownKey { key } => write!(f, "unknown key '{key}' (ignored)"),
            WarningKind::BadValue {
                key,
                reason,
                repeatable,
            } => {
                let outcome = if *repeatable {
                    "ignored"
                } else {
                    "using default"
                };
                write!(f, "bad value for {key}: {reason} ({outcome})")
            }
            WarningKind::FailedClosed {
                key,
                reason,
                applied,
            } => write!(
                f,
                "bad value for {key}: {reason} (failing closed: {applied})"
            ),
            WarningKind::Repeated { key, previous_line } => write!(
                f,
                "{key} set again (replaces the value from line {previous_line})"
            ),
            WarningKind::Suppressed { count } => {
                write!(f, "{count} more warnings not shown")
            }
            WarningKind::TooMany { key, limit } => {
                write!(f, "more than {limit} {key} entries (ignored)")
            }
        }
    }
}

/// Collects warnings: at most [`MAX_WARNINGS`] kept, the rest counted.
#[derive(Default)]
struct Warnings {
    list: Vec<Warning>,
    suppressed: usize,
    last_line: usize,
}

impl Warnings {
    fn push(&mut self, line: usize, kind: WarningKind) {
        if self.list.len() < MAX_WARNINGS {
            self.list.push(Warning { line, kind });
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            self.last_line = line;
        }
    }

    fn finish(mut self) -> Vec<Warning> {
        if self.suppressed > 0 {
            self.list.push(Warning {
                line: self.last_line,
                kind: WarningKind::Suppressed {
                    count: self.suppressed,
                },
            });
        }
        self.list
    }
}

/// Parses the boot config. Accepts `&str` or raw ramdisk bytes; never
/// fails: unusable lines become warnings and their keys keep the defaults.
pub fn parse(input: impl AsRef<[u8]>) -> (BootConfig, Vec<Warning>) {
    let mut bytes = input.as_ref();
    // Image builders may pad the ramdisk to a page with NULs; that is not
    // the user's text, so it is dropped silently.
    while let [rest @ .., 0] = bytes {
        bytes = rest;
    }
    let mut parser = Parser::default();
    let mut pem_block: Option<tls::OpenBlock> = None;
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index.saturating_add(1);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // Lines of a PEM block (tls.rs) are not settings.
        if let Some(block) = &pem_block {
            if !parser.config.tls.continue_block(block, raw) {
                pem_block = None;
            }
            continue;
        }
        if let Some((key, value)) = core::str::from_utf8(raw)
            .ok()
            .and_then(|text| text.trim().split_once('='))
        {
            if let Some(pem) = tls::PemKey::from_key(key.trim()) {
                pem_block = parser.config.tls.start(pem, number, value.trim());
                if pem_block.is_some() && value.trim().starts_with("-----END ") {
                    pem_block = None;
                }
                continue;
            }
        }
        parser.line(number, raw);
    }
    if let Some(block) = &pem_block {
        parser.config.tls.unterminated(block);
    }
    parser.config.tls.finish();
    parser.certificate_rules();
    (parser.config, parser.warnings.finish())
}

/// Line numbers of the scalar keys already set, to report repeats.
#[derive(Default)]
struct Seen {
    format: Option<usize>,
    ip: Option<usize>,
    gateway: Option<usize>,
    nbd_port: Option<usize>,
    http_port: Option<usize>,
    http_bench: Option<usize>,
    nbd_list: Option<usize>,
    nbd_max_connections: Option<usize>,
    nbd_max_per_address: Option<usize>,
    http_max_connections: Option<usize>,
    http_max_per_address: Option<usize>,
    log: Option<usize>,
    debug_commands: Option<usize>,
}

#[derive(Default)]
struct Parser {
    config: BootConfig,
    warnings: Warnings,
    seen: Seen,
}

impl Parser {
    fn line(&mut self, number: usize, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // A line about access is never dropped silently: what cannot be
        // read of a `readonly` line fails closed.
        let unreadable = if raw.len() > MAX_LINE {
            Some((
                WarningKind::TooLong { len: raw.len() },
                alloc::format!("line of {} bytes is longer than {MAX_LINE}", raw.len()),
            ))
        } else if raw.contains(&0) {
            Some((WarningKind::Nul, "line contains a NUL byte".into()))
        } else if core::str::from_utf8(raw).is_err() {
            Some((WarningKind::NotUtf8, "line is not valid UTF-8".into()))
        } else {
            None
        };
        if let Some((kind, what)) = unreadable {
            if readonly::mentions_readonly(raw) {
                return self.readonly_failed(number, what);
            }
            if allow::mentions_allow(raw) {
                return self.allow_failed(number, allow::Protocols::BOTH, what);
            }
            return self.warnings.push(number, kind);
        }
        let Ok(text) = core::str::from_utf8(raw) else {
            return;
        };
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            return;
        }
        // `readonly` values may be quoted, comment characters and all.
        if let Some((key, rest)) = text.split_once('=') {
            if key.trim() == "readonly" {
                return self.readonly_line(number, rest);
            }
            if key.trim() == "allow" {
                return self.allow_line(number, rest);
            }
        }
        // A trailing comment needs whitespace before the '#', so values
        // can never contain " #" but keys and values never need to.
        let text = match text.find(" #").or_else(|| text.find("\t#")) {
            Some(at) => text[..at].trim_end(),
            None => text,
        };
        let Some((key, value)) = text.split_once('=') else {
            if readonly::mentions_readonly(text.as_bytes()) {
                let what = alloc::format!("'{}' has no '='", printable(text));
                return self.readonly_failed(number, what);
            }
            if allow::mentions_allow(text.as_bytes()) {
                let what = alloc::format!("'{}' has no '='", printable(text));
                return self.allow_failed(number, allow::Protocols::BOTH, what);
            }
            // A line that may hold a secret is not quoted.
            let text = if text.contains("s3_key") {
                "s3_key ... (not shown: it may hold a secret)".to_string()
            } else {
                printable(text)
            };
            self.warnings.push(number, WarningKind::NoEquals { text });
            return;
        };
        self.setting(number, key.trim(), value.trim());
    }

    fn bad(&mut self, line: usize, key: &'static str, reason: String, repeatable: bool) {
        self.warnings.push(
            line,
            WarningKind::BadValue {
                key,
                reason,
                repeatable,
            },
        );
    }

    /// Records that scalar `key` is set on `line`, warning on a repeat.
    fn mark(&mut self, line: usize, key: &'static str) {
        let slot = match key {
            "format" => &mut self.seen.format,
            "ip" => &mut self.seen.ip,
            "gateway" => &mut self.seen.gateway,
            "nbd_port" => &mut self.seen.nbd_port,
            "http_port" => &mut self.seen.http_port,
            "http_bench" => &mut self.seen.http_bench,
            "nbd_list" => &mut self.seen.nbd_list,
            "nbd_max_connections" => &mut self.seen.nbd_max_connections,
            "nbd_max_per_address" => &mut self.seen.nbd_max_per_address,
            "http_max_connections" => &mut self.seen.http_max_connections,
            "http_max_per_address" => &mut self.seen.http_max_per_address,
            "log" => &mut self.seen.log,
            _ => &mut self.seen.debug_commands,
        };
        if let Some(previous_line) = slot.replace(line) {
            self.warnings
                .push(line, WarningKind::Repeated { key, previous_line });
        }
    }

    /// An `on`/`off` key that grants access: a value that is neither
    /// fails closed (off, with a warning saying `applied`) and counts as
    /// the key's value for repeats.
    fn switch_failing_closed(
        &mut self,
        line: usize,
        key: &'static str,
        value: &str,
        applied: &'static str,
    ) -> bool {
        self.mark(line, key);
        match value {
            "on" => true,
            "off" => false,
            _ => {
                let kind = WarningKind::FailedClosed {
                    key,
                    reason: expected(value, "on or off"),
                    applied,
                };
                self.warnings.push(line, kind);
                false
            }
        }
    }

    fn setting(&mut self, line: usize, key: &str, value: &str) {
        match key {
            "pmem" => {
                if self.config.pmem.len() >= MAX_PMEM {
                    self.warnings.push(
                        line,
                        WarningKind::TooMany {
                            key: "pmem",
                            limit: MAX_PMEM,
                        },
                    );
                    return;
                }
                match parse_pmem(value) {
                    Ok((size, start)) => self.config.pmem.push(PmemRequest {
                        size,
                        start,
                        text: value.to_string(),
                        line,
                    }),
                    Err(reason) => self.bad(line, "pmem", reason, true),
                }
            }
            "format" => {
                let policy = match value {
                    "if-blank" => FormatPolicy::IfBlank,
                    "never" => FormatPolicy::Never,
                    _ => {
                        let reason = expected(value, "if-blank or never");
                        return self.bad(line, "format", reason, false);
                    }
                };
                self.mark(line, "format");
                self.config.format = policy;
            }
            "ip" => match parse_ip_config(value) {
                Ok(ip) => {
                    self.mark(line, "ip");
                    self.config.ip = ip;
                }
                Err(reason) => self.bad(line, "ip", reason, false),
            },
            "gateway" => match parse_ipv4(value) {
                Some(address) => {
                    self.mark(line, "gateway");
                    self.config.gateway = Some(address);
                }
                None => {
                    let reason = expected(value, "an IPv4 address A.B.C.D");
                    self.bad(line, "gateway", reason, false);
                }
            },
            "tls" => self.config.tls.set_mode(line, value),
            "https_port" => match value.parse::<u16>() {
                Ok(port) if port != 0 && value.bytes().all(|b| b.is_ascii_digit()) => {
                    self.config.tls.https_port = port;
                }
                _ => self.bad(line, "https_port", expected(value, "a port 1-65535"), false),
            },
            "nbd_port" | "http_port" => {
                let key: &'static str = if key == "nbd_port" {
                    "nbd_port"
                } else {
                    "http_port"
                };
                match value.parse::<u16>() {
                    Ok(port) if port != 0 && value.bytes().all(|b| b.is_ascii_digit()) => {
                        self.mark(line, key);
                        if key == "nbd_port" {
                            self.config.nbd_port = port;
                        } else {
                            self.config.http_port = port;
                        }
                    }
                    _ => {
                        let reason = expected(value, "a port number 1-65535");
                        self.bad(line, key, reason, false);
                    }
                }
            }
            "nbd_max_connections"
            | "nbd_max_per_address"
            | "http_max_connections"
            | "http_max_per_address" => {
                let key: &'static str = match key {
                    "nbd_max_connections" => "nbd_max_connections",
                    "nbd_max_per_address" => "nbd_max_per_address",
                    "http_max_connections" => "http_max_connections",
                    _ => "http_max_per_address",
                };
                match value.parse::<u16>() {
                    Ok(limit)
                        if (1..=MAX_CONNECTION_LIMIT).contains(&limit)
                            && value.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        self.mark(line, key);
                        let field = match key {
                            "nbd_max_connections" => &mut self.config.nbd_max_connections,
                            "nbd_max_per_address" => &mut self.config.nbd_max_per_address,
                            "http_max_connections" => &mut self.config.http_max_connections,
                            _ => &mut self.config.http_max_per_address,
                        };
                        *field = limit;
                    }
                    _ => {
                        let reason = expected(value, "a connection count 1-1024");
                        self.bad(line, key, reason, false);
                    }
                }
            }
            "nbd_list" => {
                let applied = "nbd_list=off, export listing refused";
                self.config.nbd_list = self.switch_failing_closed(line, "nbd_list", value, applied);
            }
            "http_bench" => {
                let applied = "http_bench=off, /bench/* answer 404";
                self.config.http_bench =
                    self.switch_failing_closed(line, "http_bench", value, applied);
            }
            "export_raw" => {
                if self.config.export_raw.len() >= MAX_NAMES {
                    let kind = WarningKind::TooMany {
                        key: "export_raw",
                        limit: MAX_NAMES,
                    };
                    return self.warnings.push(line, kind);
                }
                if is_pmem_device_name(value) {
                    self.config.export_raw.push(value.to_string());
                } else {
                    let reason = expected(value, "a device name pmemN");
                    self.bad(line, "export_raw", reason, true);
                }
            }
            "log" => {
                let level = match value {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => {
                        let reason = expected(value, "error, warn, info, debug or trace");
                        return self.bad(line, "log", reason, false);
                    }
                };
                self.mark(line, "log");
                self.config.log = level;
            }
            "s3_key" => {
                if self.config.s3_keys.len() >= MAX_S3_KEYS {
                    let kind = WarningKind::TooMany {
                        key: "s3_key",
                        limit: MAX_S3_KEYS,
                    };
                    return self.warnings.push(line, kind);
                }
                match parse_s3_key(value) {
                    // The reason never quotes the value: it holds a secret.
                    Err(reason) => self.bad(line, "s3_key", reason.into(), true),
                    Ok(key) if self.config.s3_keys.iter().any(|k| k.id == key.id) => {
                        let reason = alloc::format!(
                            "access key id '{}' given twice: the first is kept",
                            key.id
                        );
                        self.bad(line, "s3_key", reason, true);
                    }
                    Ok(key) => self.config.s3_keys.push(key),
                }
            }
            "s3_anonymous" => {
                if self.config.s3_anonymous.len() >= MAX_NAMES {
                    let kind = WarningKind::TooMany {
                        key: "s3_anonymous",
                        limit: MAX_NAMES,
                    };
                    return self.warnings.push(line, kind);
                }
                match value.strip_suffix(":read") {
                    Some(device) if is_pmem_device_name(device) => {
                        if !self.config.s3_anonymous.iter().any(|d| d == device) {
                            self.config.s3_anonymous.push(device.to_string());
                        }
                    }
                    _ => {
                        let reason = expected(value, "pmemN:read (no anonymous access)");
                        self.bad(line, "s3_anonymous", reason, true);
                    }
                }
            }
            "debug_commands" => {
                let on = match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        let reason = expected(value, "on or off");
                        return self.bad(line, "debug_commands", reason, false);
                    }
                };
                self.mark(line, "debug_commands");
                self.config.debug_commands = on;
            }
            _ if readonly::mentions_readonly(key.as_bytes()) => {
                let what = alloc::format!("unknown key '{}' (the key is readonly)", printable(key));
                self.readonly_failed(line, what)
            }
            _ if allow::mentions_allow(key.as_bytes()) => {
                let what = alloc::format!("unknown key '{}' (the key is allow)", printable(key));
                self.allow_failed(line, allow::Protocols::BOTH, what)
            }
            _ => self.warnings.push(
                line,
                WarningKind::UnknownKey {
                    key: printable(key),
                },
            ),
        }
    }

    /// A `readonly=` line; `rest` is everything after the `=`.
    fn readonly_line(&mut self, line: usize, rest: &str) {
        let source = alloc::format!("bootconfig line {line}: readonly");
        let rule = match readonly::unquote(rest) {
            Ok(value) => ReadOnlyRule::parse(&value, &source),
            Err(why) => ReadOnlyRule::fail_all(alloc::format!(
                "{source} '{}': {why}",
                printable(rest.trim())
            )),
        };
        if let Some(reason) = &rule.failed {
            let reason = reason
                .strip_prefix(&source)
                .unwrap_or(reason)
                .trim_start()
                .to_string();
            let applied = if rule.target == ReadOnlyTarget::All {
                "every export read-only"
            } else {
                "every export of that device read-only"
            };
            self.warnings.push(
                line,
                WarningKind::FailedClosed {
                    key: "readonly",
                    reason,
                    applied,
                },
            );
        }
        self.push_readonly(line, rule);
    }

    /// A `readonly` line that could not be read at all (`what`): every
    /// export read-only.
    fn readonly_failed(&mut self, line: usize, what: String) {
        self.warnings.push(
            line,
            WarningKind::FailedClosed {
                key: "readonly",
                reason: what.clone(),
                applied: "every export read-only",
            },
        );
        let reason = alloc::format!("bootconfig line {line}: {what}");
        self.push_readonly(line, ReadOnlyRule::fail_all(reason));
    }

    /// An `allow=` line; `rest` is everything after the `=`.
    fn allow_line(&mut self, line: usize, rest: &str) {
        if self.config.allow.rules.len() >= allow::MAX_RULES {
            let what = alloc::format!("more than {} allow rules", allow::MAX_RULES);
            if !self
                .config
                .allow
                .failed
                .iter()
                .any(|(_, w)| w.ends_with(&what))
            {
                self.allow_failed(line, allow::Protocols::BOTH, what);
            }
            return;
        }
        match AllowRule::parse(rest, line) {
            Ok(rule) => self.config.allow.rules.push(rule),
            Err(error) => {
                let what = alloc::format!("allow: {}", error.reason);
                self.allow_failed(line, error.protocols, what);
            }
        }
    }

    /// `cn:` rules match only certificates verified against
    /// `tls_client_ca`: without it (or with TLS off) such a rule could
    /// never match, which is a mistake in access config, so its line fails
    /// closed (its protocols not served) instead of being kept.
    fn certificate_rules(&mut self) {
        let tls = &self.config.tls;
        let missing = if tls.mode == TlsMode::Off {
            "tls is off"
        } else if tls.client_ca.is_empty() {
            "no tls_client_ca is given"
        } else {
            return;
        };
        for rule in core::mem::take(&mut self.config.allow.rules) {
            if rule.names_certificates() {
                let what = alloc::format!(
                    "allow: a cn: client matches only a certificate verified against \
                     tls_client_ca, but {missing}"
                );
                self.allow_failed(rule.line, rule.protocols, what);
            } else {
                self.config.allow.rules.push(rule);
            }
        }
    }

    /// An `allow` line that cannot be used (`what`): the protocols it was
    /// for are not served.
    fn allow_failed(&mut self, line: usize, protocols: allow::Protocols, what: String) {
        let applied = match (protocols.nbd, protocols.http) {
            (true, false) => "nbd not served",
            (false, true) => "http not served",
            _ => "nbd and http not served",
        };
        let reason = what.strip_prefix("allow: ").unwrap_or(&what).to_string();
        self.warnings.push(
            line,
            WarningKind::FailedClosed {
                key: "allow",
                reason,
                applied,
            },
        );
        let why = alloc::format!("bootconfig line {line}: {what}");
        self.config.allow.failed.push((protocols, why));
    }

    /// Adds a rule; beyond [`MAX_NAMES`] rules, one more that makes every
    /// export read-only stands for all the rest.
    fn push_readonly(&mut self, line: usize, rule: ReadOnlyRule) {
        let rules = &mut self.config.readonly;
        if rules.len() < MAX_NAMES {
            return rules.push(rule);
        }
        if rules.len() == MAX_NAMES {
            let reason =
                alloc::format!("bootconfig line {line}: more than {MAX_NAMES} readonly rules");
            rules.push(ReadOnlyRule::fail_all(reason));
            self.warnings.push(
                line,
                WarningKind::FailedClosed {
                    key: "readonly",
                    reason: alloc::format!("more than {MAX_NAMES} rules"),
                    applied: "every export read-only",
                },
            );
        }
    }
}

/// `'VALUE' is not WHAT` with the value made printable.
fn expected(value: &str, what: &str) -> String {
    alloc::format!("'{}' is not {what}", printable(value))
}

/// At most 40 characters of `text`, control characters replaced by '?',
/// so a warning stays one readable console line.
/// The first word of a raw line: after leading whitespace, up to `=` or
/// whitespace (the key, for telling which key a broken line was about).
pub(crate) fn first_word(raw: &[u8]) -> &[u8] {
    let start = raw
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(raw.len());
    raw[start..]
        .split(|b| *b == b'=' || b.is_ascii_whitespace())
        .next()
        .unwrap_or_default()
}

pub(crate) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(40).is_some() {
        out.push_str("...");
    }
    out
}

/// Parses a number: decimal or `0x` hex, with an optional binary `K`, `M`,
/// `G` or `T` suffix (also `KiB`..`TiB`, either case): the one size grammar
/// of `daxbox-syntax`. `None` on any syntax error or overflow.
pub fn parse_size(text: &str) -> Option<u64> {
    daxbox_syntax::parse_size(text).ok()
}

/// Parses `SIZE@START` (see [`parse_size`]) into `(size, start)`.
fn parse_pmem(value: &str) -> Result<(u64, u64), String> {
    let Some((size_text, start_text)) = value.split_once('@') else {
        return Err(expected(value, "SIZE@START (e.g. 64M@0x10000000)"));
    };
    let size = parse_size(size_text.trim())
        .ok_or_else(|| alloc::format!("size {}", expected(size_text, "a number")))?;
    let start = parse_size(start_text.trim())
        .ok_or_else(|| alloc::format!("start {}", expected(start_text, "a number")))?;
    if size == 0 {
        return Err(alloc::format!("'{}': size is zero", printable(value)));
    }
    if start.checked_add(size).is_none() {
        return Err(alloc::format!(
            "'{}': range runs past the end of the address space",
            printable(value)
        ));
    }
    Ok((size, start))
}

/// Parses a dotted-quad IPv4 address with decimal octets (no leading
/// zeros beyond a single `0`, so `010` is not silently octal or decimal).
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for slot in out.iter_mut() {
        let part = parts.next()?;
        if part.is_empty()
            || part.len() > 3
            || !part.bytes().all(|b| b.is_ascii_digit())
            || (part.len() > 1 && part.starts_with('0'))
        {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

fn parse_ip_config(value: &str) -> Result<IpConfig, String> {
    if value == "dhcp" {
        return Ok(IpConfig::Dhcp);
    }
    let what = "dhcp or A.B.C.D/PREFIX";
    let (address, prefix) = value.split_once('/').ok_or_else(|| expected(value, what))?;
    let address = parse_ipv4(address).ok_or_else(|| expected(value, what))?;
    let prefix = match prefix.parse::<u8>() {
        Ok(p) if p <= 32 && prefix.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err(alloc::format!("prefix {}", expected(prefix, "0-32"))),
    };
    Ok(IpConfig::Static { address, prefix })
}

/// True for `pmem0`, `pmem1`, ... (decimal, no leading zeros): the one
/// device-name grammar of `daxbox-syntax`.
pub fn is_pmem_device_name(name: &str) -> bool {
    daxbox_syntax::is_device_name(name)
}

impl fmt::Display for IpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpConfig::Dhcp => write!(f, "dhcp"),
            IpConfig::Static { address: a, prefix } => {
                write!(f, "{}.{}.{}.{}/{prefix}", a[0], a[1], a[2], a[3])
            }
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn messages(w: &[Warning]) -> Vec<String> {
        w.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn empty_input_gives_defaults() {
        let (config, warnings) = parse("");
        assert_eq!(config, BootConfig::default());
        assert!(warnings.is_empty());
        assert_eq!(config.nbd_port, 10809);
        assert_eq!(config.http_port, 80);
        assert_eq!(config.format, FormatPolicy::Never);
        assert_eq!(config.ip, IpConfig::Dhcp);
        assert_eq!(config.log, LogLevel::Info);
        assert!(!config.debug_commands);
        assert!(config.nbd_list, "export listing is on by default");
        assert!(!config.http_bench, "the bench routes are off by default");
    }

    #[test]
    fn connection_limits_parse_and_a_bad_value_keeps_the_default() {
        let (config, warnings) = parse(
            b"nbd_max_connections=100\nnbd_max_per_address=8\nhttp_max_connections=1\nhttp_max_per_address=1024\n",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            (
                config.nbd_max_connections,
                config.nbd_max_per_address,
                config.http_max_connections,
                config.http_max_per_address
            ),
            (100, 8, 1, 1024)
        );
        let (config, warnings) = parse(
            b"nbd_max_connections=0\nnbd_max_per_address=1025\nhttp_max_connections=many\nhttp_max_per_address=+5\n",
        );
        assert_eq!(config, BootConfig::default());
        let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            text,
            [
                "bootconfig line 1: bad value for nbd_max_connections: '0' is not a connection count 1-1024 (using default)",
                "bootconfig line 2: bad value for nbd_max_per_address: '1025' is not a connection count 1-1024 (using default)",
                "bootconfig line 3: bad value for http_max_connections: 'many' is not a connection count 1-1024 (using default)",
                "bootconfig line 4: bad value for http_max_per_address: '+5' is not a connection count 1-1024 (using default)",
            ]
        );
    }

    #[test]
    fn every_key_parses() {
        let text = "# daxbox test config\n\
            pmem=64M@0x10000000\n\
            pmem = 0x4000000 @ 256M   # second range\n\
            format=if-blank\n\
            ip=10.0.2.15/24\n\
            gateway=10.0.2.2\n\
            nbd_port=10810\n\
            http_port=8080\n\
            nbd_list=off\n\
            http_bench=on\n\
            export_raw=pmem1\n\
            readonly=pmem0\n\
            readonly=data.img\n\
            log=debug\n\
            debug_commands=on\n";
        let (config, warnings) = parse(text);
        assert!(warnings.is_empty(), "{:?}", messages(&warnings));
        assert_eq!(config.pmem.len(), 2);
        assert_eq!(config.pmem[0].size, 64 << 20);
        assert_eq!(config.pmem[0].start, 0x1000_0000);
        assert_eq!(config.pmem[0].line, 2);
        assert_eq!(config.pmem[0].text, "64M@0x10000000");
        assert_eq!(config.pmem[1].size, 0x400_0000);
        assert_eq!(config.pmem[1].start, 256 << 20);
        assert_eq!(config.format, FormatPolicy::IfBlank);
        assert_eq!(
            config.ip,
            IpConfig::Static {
                address: [10, 0, 2, 15],
                prefix: 24
            }
        );
        assert_eq!(config.ip.to_string(), "10.0.2.15/24");
        assert_eq!(config.gateway, Some([10, 0, 2, 2]));
        assert_eq!(config.nbd_port, 10810);
        assert_eq!(config.http_port, 8080);
        assert!(!config.nbd_list);
        assert!(config.http_bench);
        assert_eq!(config.export_raw, ["pmem1"]);
        let rules: Vec<String> = config.readonly.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["readonly=pmem0", "readonly=data.img"]);
        assert_eq!(config.log, LogLevel::Debug);
        assert!(config.debug_commands);
    }

    #[test]
    fn warnings_name_the_line_and_keep_defaults() {
        let text = "log=info\n\nfoo=bar\nnbd_port=0\npmem=64X@1G\nlog=loud\njust text\n";
        let (config, warnings) = parse(text);
        assert_eq!(config.nbd_port, DEFAULT_NBD_PORT);
        assert_eq!(config.log, LogLevel::Info);
        assert!(config.pmem.is_empty());
        let m = messages(&warnings);
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0], "bootconfig line 3: unknown key 'foo' (ignored)");
        assert_eq!(
            m[1],
            "bootconfig line 4: bad value for nbd_port: '0' is not a port number 1-65535 (using default)"
        );
        assert!(m[2].starts_with("bootconfig line 5: bad value for pmem: size '64X'"));
        assert!(m[2].ends_with("(ignored)"));
        assert!(m[3].starts_with("bootconfig line 6: bad value for log: 'loud'"));
        assert!(m[3].ends_with("(using default)"));
        assert_eq!(
            m[4],
            "bootconfig line 7: expected key=value, got 'just text' (ignored)"
        );
    }

    #[test]
    fn nbd_list_values_and_failing_closed() {
        assert!(parse("nbd_list=on\n").0.nbd_list);
        let (config, warnings) = parse("nbd_list=off\n");
        assert!(!config.nbd_list);
        assert!(warnings.is_empty());
        // A value that cannot be applied turns the listing off, not on.
        for bad in ["yes", "ON", "1", "", "on off"] {
            let (config, warnings) = parse(alloc::format!("log=info\nnbd_list={bad}\n"));
            assert!(!config.nbd_list, "nbd_list={bad} must fail closed");
            assert_eq!(
                messages(&warnings),
                [alloc::format!(
                    "bootconfig line 2: bad value for nbd_list: '{bad}' is not on or off \
                     (failing closed: nbd_list=off, export listing refused)"
                )]
            );
        }
        // The bad value is the key's value: the last line still wins.
        let (config, warnings) = parse("nbd_list=maybe\nnbd_list=on\n");
        assert!(config.nbd_list);
        assert_eq!(warnings.len(), 2);
        assert_eq!(
            warnings[1].to_string(),
            "bootconfig line 2: nbd_list set again (replaces the value from line 1)"
        );
        let (config, _) = parse("nbd_list=on\nnbd_list=maybe\n");
        assert!(!config.nbd_list);
    }

    #[test]
    fn http_bench_values_and_failing_closed() {
        assert!(parse("http_bench=on\n").0.http_bench);
        let (config, warnings) = parse("http_bench=off\n");
        assert!(!config.http_bench);
        assert!(warnings.is_empty());
        for bad in ["yes", "On", "1", ""] {
            let (config, warnings) = parse(alloc::format!("http_bench={bad}\n"));
            assert!(!config.http_bench, "http_bench={bad} must stay off");
            assert_eq!(
                messages(&warnings),
                [alloc::format!(
                    "bootconfig line 1: bad value for http_bench: '{bad}' is not on or off \
                     (failing closed: http_bench=off, /bench/* answer 404)"
                )]
            );
        }
        let (config, _) = parse("http_bench=on\nhttp_bench=maybe\n");
        assert!(!config.http_bench, "a bad later value turns it off");
    }

    #[test]
    fn repeated_scalar_keeps_last_with_warning() {
        let (config, warnings) = parse("log=warn\nlog=trace\n");
        assert_eq!(config.log, LogLevel::Trace);
        assert_eq!(
            messages(&warnings),
            ["bootconfig line 2: log set again (replaces the value from line 1)"]
        );
    }

    #[test]
    fn crlf_nul_padding_and_bad_bytes() {
        let mut bytes = b"log=warn\r\nnbd_port=99\r\n".to_vec();
        bytes.extend_from_slice(b"\xff\xfe=1\nhttp_port=81\0\nip=dhcp\n");
        bytes.extend(core::iter::repeat_n(0, 4000));
        let (config, warnings) = parse(&bytes);
        assert_eq!(config.log, LogLevel::Warn);
        assert_eq!(config.nbd_port, 99);
        assert_eq!(config.http_port, DEFAULT_HTTP_PORT);
        let m = messages(&warnings);
        assert_eq!(
            m,
            [
                "bootconfig line 3: not valid UTF-8 (ignored)",
                "bootconfig line 4: contains a NUL byte (ignored)"
            ]
        );
    }

    #[test]
    fn long_lines_are_refused() {
        let long = alloc::format!("ip={}\nlog=error\n", "a".repeat(MAX_LINE));
        let (config, warnings) = parse(&long);
        assert_eq!(config.ip, IpConfig::Dhcp);
        assert_eq!(config.log, LogLevel::Error);
        assert_eq!(warnings[0].kind, WarningKind::TooLong { len: MAX_LINE + 3 });
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("0x4000000"), Some(0x400_0000));
        assert_eq!(parse_size("0X10M"), Some(16 << 20));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("0x"), None);
        assert_eq!(parse_size("+5"), None);
        assert_eq!(parse_size("-5"), None);
        assert_eq!(parse_size("12ab"), None, "hex digits without 0x");
        assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), None);
        assert_eq!(parse_size("0x100000000000T"), None, "suffix overflow");
    }

    #[test]
    fn pmem_values() {
        assert_eq!(parse_pmem("64M@0x1000000"), Ok((64 << 20, 0x100_0000)));
        assert!(parse_pmem("64M").is_err());
        assert!(parse_pmem("0@1G").unwrap_err().contains("size is zero"));
        assert!(parse_pmem("2@0xffffffffffffffff")
            .unwrap_err()
            .contains("past the end"));
        assert!(parse_pmem("1G@").is_err());
        assert!(parse_pmem("@1G").is_err());
    }

    #[test]
    fn pmem_entries_are_limited() {
        let text: String = (0..MAX_PMEM + 2)
            .map(|i| alloc::format!("pmem=1M@{}M\n", 256 + i))
            .collect();
        let (config, warnings) = parse(&text);
        assert_eq!(config.pmem.len(), MAX_PMEM);
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn addresses_and_names() {
        assert_eq!(parse_ipv4("192.168.1.254"), Some([192, 168, 1, 254]));
        assert_eq!(parse_ipv4("0.0.0.0"), Some([0; 4]));
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "1..2.3",
            "+1.2.3.4",
            "",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
        assert!(parse_ip_config("10.0.0.1/33").is_err());
        assert!(parse_ip_config("10.0.0.1").is_err());
        assert!(parse_ip_config("10.0.0.1/+8").is_err());
        assert!(is_pmem_device_name("pmem0"));
        assert!(is_pmem_device_name("pmem12"));
        assert!(!is_pmem_device_name("pmem"));
        assert!(!is_pmem_device_name("pmem01"));
        assert!(!is_pmem_device_name("pmemx"));
        assert!(!is_pmem_device_name("nvme0"));
    }

    #[test]
    fn readonly_accepts_every_export_name() {
        let long = "n".repeat(255);
        let text = alloc::format!(
            "readonly=disk1\n\
             readonly=pmem0:disk1\n\
             readonly=pmem1:\n\
             readonly=pmem2\n\
             readonly=*\n\
             readonly=with space, comma=and equals\n\
             readonly=dir/file.img\n\
             readonly=pmem1:{long}\n\
             readonly=café 😀\n"
        );
        let (config, warnings) = parse(&text);
        assert!(warnings.is_empty(), "{:?}", messages(&warnings));
        assert_eq!(config.readonly.len(), 9);
    }

    #[test]
    fn readonly_that_cannot_be_used_fails_closed() {
        let long = "n".repeat(256);
        for (value, why) in [
            ("", "empty"),
            (long.as_str(), "a name of 256 bytes"),
            ("\"unterminated", "an open quote"),
        ] {
            let (config, warnings) = parse(alloc::format!("readonly={value}\n"));
            let m = messages(&warnings);
            assert_eq!(m.len(), 1, "{why}: {m:?}");
            assert!(m[0].contains("failing closed"), "{why}: {m:?}");
            assert_eq!(
                config.readonly.len(),
                1,
                "{why}: a rule stands in for the line"
            );
            assert_eq!(config.readonly[0].target, ReadOnlyTarget::All, "{why}");
        }
        let (config, warnings) = parse("log=info\nreadonly=\n");
        assert_eq!(
            messages(&warnings),
            [
                "bootconfig line 2: bad value for readonly: '': an empty name \
              (failing closed: every export read-only)"
            ]
        );
        assert_eq!(
            config.readonly[0].to_string(),
            "readonly=* (failing closed: bootconfig line 2: readonly '': an empty name)"
        );
        // A value that names its device fails closed on that device.
        let (config, warnings) = parse(alloc::format!("readonly=pmem1:{long}\n"));
        assert!(
            messages(&warnings)[0].ends_with(
                ": a name longer than 255 bytes (failing closed: every export of that device read-only)"
            ),
            "{:?}",
            messages(&warnings)
        );
        assert_eq!(config.readonly[0].scope(), "every export of pmem1");
        // Lines that cannot even be read, and misspelt keys, are about
        // access too.
        let mut bytes = alloc::format!("readonly={}\n", "a".repeat(MAX_LINE)).into_bytes();
        bytes.extend_from_slice(b"readonly=\xff\nReadOnly=disk\nreadonly disk\nread_only=x\0\n");
        let (config, warnings) = parse(&bytes);
        assert_eq!(
            messages(&warnings),
            [
                alloc::format!(
                    "bootconfig line 1: bad value for readonly: line of {} bytes is longer than \
                     {MAX_LINE} (failing closed: every export read-only)",
                    MAX_LINE + 9
                ),
                "bootconfig line 2: bad value for readonly: line is not valid UTF-8 \
                 (failing closed: every export read-only)"
                    .into(),
                "bootconfig line 3: bad value for readonly: unknown key 'ReadOnly' (the key is \
                 readonly) (failing closed: every export read-only)"
                    .into(),
                "bootconfig line 4: bad value for readonly: 'readonly disk' has no '=' \
                 (failing closed: every export read-only)"
                    .into(),
                "bootconfig line 5: bad value for readonly: line contains a NUL byte \
                 (failing closed: every export read-only)"
                    .into(),
            ]
        );
        assert_eq!(config.readonly.len(), 5);
        assert!(config
            .readonly
            .iter()
            .all(|r| r.target == ReadOnlyTarget::All && r.failed.is_some()));
        // More rules than the limit: one more rule for every export.
        let text: String = (0..MAX_NAMES + 3)
            .map(|i| alloc::format!("readonly=file{i}\n"))
            .collect();
        let (config, warnings) = parse(&text);
        assert_eq!(config.readonly.len(), MAX_NAMES + 1);
        assert_eq!(
            config.readonly[MAX_NAMES].to_string(),
            "readonly=* (failing closed: bootconfig line 33: more than 32 readonly rules)"
        );
        assert_eq!(warnings.len(), 1, "{:?}", messages(&warnings));
    }

    #[test]
    fn warnings_are_capped() {
        let text = "junk\n".repeat(MAX_WARNINGS + 10);
        let (_, warnings) = parse(&text);
        assert_eq!(warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(
            warnings[MAX_WARNINGS].to_string(),
            alloc::format!(
                "bootconfig line {}: 10 more warnings not shown",
                MAX_WARNINGS + 10
            )
        );
    }

    #[test]
    fn unknown_key_is_printable() {
        let (_, warnings) = parse("f\u{1b}[2Joo=1\n");
        assert_eq!(
            warnings[0].to_string(),
            "bootconfig line 1: unknown key 'f?[2Joo' (ignored)"
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (config, warnings) = parse(&bytes);
            prop_assert!(config.pmem.len() <= MAX_PMEM);
            prop_assert!(warnings.len() <= MAX_WARNINGS + 1);
            for w in warnings.iter() {
                let _ = w.to_string();
            }
        }

        #[test]
        fn random_lines_never_panic(lines in proptest::collection::vec(
            "(pmem|ip|log|nbd_port|nbd_list|http_bench|readonly|format|gateway)=[0-9a-zA-Z@./x #\\-]{0,24}", 0..20)) {
            let text = lines.join("\n");
            let (config, _) = parse(&text);
            for request in &config.pmem {
                prop_assert!(request.size > 0);
                prop_assert!(request.start.checked_add(request.size).is_some());
            }
        }

        #[test]
        fn pmem_round_trips(size in 1u64..(1 << 40), start in 0u64..(1 << 46)) {
            let text = alloc::format!("pmem={size:#x}@{start}\n");
            let (config, warnings) = parse(&text);
            prop_assert!(warnings.is_empty());
            prop_assert_eq!(config.pmem.len(), 1);
            prop_assert_eq!(config.pmem[0].size, size);
            prop_assert_eq!(config.pmem[0].start, start);
        }
    }

    #[test]
    fn s3_keys_are_parsed_bounded_and_never_printed() {
        let text = "s3_key=AKONE:secret-one-123\n\
                    s3_key=AKTWO:se:cret/two+x:read-only\n\
                    s3_key=AKONE:another-secret\n\
                    s3_key=bad id:whatever-long\n\
                    s3_key=AKSHORT:tiny\n\
                    s3_key AKNOEQ:hidden-secret-9\n\
                    s3_anonymous=pmem1:read\n\
                    s3_anonymous=pmem2:write\n";
        let (config, warnings) = parse(text.as_bytes());
        assert_eq!(config.s3_keys.len(), 2);
        assert_eq!(config.s3_keys[0].id, "AKONE");
        assert_eq!(config.s3_keys[0].secret, "secret-one-123");
        assert!(!config.s3_keys[0].read_only);
        assert_eq!(config.s3_keys[1].secret, "se:cret/two+x");
        assert!(config.s3_keys[1].read_only);
        assert_eq!(config.s3_anonymous, ["pmem1"]);
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        let shown = alloc::format!("{:?} {:?} {}", config, warnings, config.s3_keys[1]);
        for secret in [
            "secret-one-123",
            "se:cret",
            "another-secret",
            "whatever-long",
            "tiny",
            "hidden-secret-9",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        for warning in &warnings {
            let line = alloc::format!("{warning}");
            assert!(
                !line.contains("secret")
                    || line.contains("not shown")
                    || line.contains("the secret must"),
                "{line}"
            );
        }
        assert_eq!(
            config.s3_keys[1].to_string(),
            "s3_key=AKTWO:<secret hidden>:read-only"
        );
        // At most MAX_S3_KEYS.
        let many: String = (0..MAX_S3_KEYS + 3)
            .map(|i| alloc::format!("s3_key=K{i}:secret-{i}-xyz\n"))
            .collect();
        let (config, warnings) = parse(many.as_bytes());
        assert_eq!(config.s3_keys.len(), MAX_S3_KEYS);
        assert_eq!(warnings.len(), 3);
    }
}
