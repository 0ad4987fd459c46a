//! The TLS keys of the boot config and how PEM files travel in it.
//!
//! Certificates and keys are PEM blocks written into the config file
//! itself, so they reach the kernel wherever the config does (the
//! bootloader ramdisk of a BIOS/UEFI image, the ramdisk file of a PXE/TFTP
//! folder) with no archive format: a `tls_cert=`, `tls_key=` or
//! `tls_client_ca=` line whose value is `-----BEGIN ...-----` starts a
//! block, and every following line up to and including its `-----END
//! ...-----` line belongs to it. A certificate chain (or several CAs) is
//! several blocks, each on its own `tls_cert=` (`tls_client_ca=`) line, in
//! order (leaf first). Each key holds at most [`MAX_PEM`] bytes.
//!
//! Anything wrong with the TLS settings (a bad `tls=` value, a block that
//! does not end, is over [`MAX_PEM`], or `tls=on|require` without
//! certificate and key) sets [`TlsSettings::error`]: the kernel then serves
//! neither NBD nor HTTPS (fails closed) and prints the reason at boot and
//! in `bootconfig`. Whether the PEM parses and the key matches is checked
//! by the kernel (`daxbox-tls`), with the same result. Key material is
//! never printed: [`Secret`]'s `Debug` shows only its length.

use alloc::string::String;
use core::fmt;

/// Bytes of PEM text one key may hold (a chain of a few certificates).
pub const MAX_PEM: usize = 32 * 1024;
/// Default TCP port of the HTTPS server.
pub const DEFAULT_HTTPS_PORT: u16 = 443;

/// `tls=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// No TLS (the default).
    #[default]
    Off,
    /// NBD clients may use `NBD_OPT_STARTTLS` or not; HTTPS is served.
    On,
    /// NBD clients must use `NBD_OPT_STARTTLS` (other options get
    /// `NBD_REP_ERR_TLS_REQD`); HTTPS is served.
    Require,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Require => "require",
        })
    }
}

/// Text that must not be printed (a private key).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// The text, for the TLS layer only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `tls=`.
    pub mode: TlsMode,
    /// `tls_cert=` PEM blocks, leaf first.
    pub cert: String,
    /// `tls_key=` PEM block.
    pub key: Secret,
    /// `tls_client_ca=` PEM blocks; empty: no client certificates asked.
    pub client_ca: String,
    /// `https_port=`.
    pub https_port: u16,
    /// Why the settings cannot be applied (TLS fails closed), if so.
    pub error: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            mode: TlsMode::Off,
            cert: String::new(),
            key: Secret::default(),
            client_ca: String::new(),
            https_port: DEFAULT_HTTPS_PORT,
            error: None,
        }
    }
}

/// Which PEM key a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PemKey {
    Cert,
    Key,
    ClientCa,
}

impl PemKey {
    pub(crate) fn from_key(key: &str) -> Option<Self> {
        match key {
            "tls_cert" => Some(Self::Cert),
            "tls_key" => Some(Self::Key),
            "tls_client_ca" => Some(Self::ClientCa),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Cert => "tls_cert",
            Self::Key => "tls_key",
            Self::ClientCa => "tls_client_ca",
        }
    }
}

/// The PEM block being read.
#[derive(Debug)]
pub(crate) struct OpenBlock {
    key: PemKey,
    start_line: usize,
}

impl TlsSettings {
    fn fail(&mut self, why: String) {
        if self.error.is_none() {
            self.error = Some(why);
        }
    }

    fn target(&mut self, key: PemKey) -> &mut String {
        match key {
            PemKey::Cert => &mut self.cert,
            PemKey::Key => &mut self.key.0,
            PemKey::ClientCa => &mut self.client_ca,
        }
    }

    /// Appends one line of PEM text to `key`, failing closed over [`MAX_PEM`].
    fn append(&mut self, key: PemKey, line: &str) {
        let target = self.target(key);
        if target.len() + line.len() + 1 > MAX_PEM {
            self.fail(alloc::format!(
                "{} is longer than {MAX_PEM} bytes",
                key.name()
            ));
            return;
        }
        target.push_str(line);
        target.push('\n');
    }

    /// A `tls_cert=`/`tls_key=`/`tls_client_ca=` line: starts a block.
    pub(crate) fn start(&mut self, key: PemKey, line: usize, value: &str) -> Option<OpenBlock> {
        if !value.starts_with("-----BEGIN ") {
            self.fail(alloc::format!(
                "bootconfig line {line}: {} must be a PEM block starting -----BEGIN",
                key.name()
            ));
            return None;
        }
        if key == PemKey::Key && !self.key.is_empty() {
            self.fail(alloc::format!(
                "bootconfig line {line}: tls_key given twice"
            ));
        }
        self.append(key, value);
        Some(OpenBlock {
            key,
            start_line: line,
        })
    }

    /// A line inside a block; returns whether the block continues.
    pub(crate) fn continue_block(&mut self, block: &OpenBlock, raw: &[u8]) -> bool {
        let Ok(text) = core::str::from_utf8(raw) else {
            self.fail(alloc::format!(
                "{} block of line {}: a line is not UTF-8",
                block.key.name(),
                block.start_line
            ));
            return false;
        };
        let text = text.trim();
        self.append(block.key, text);
        !text.starts_with("-----END ")
    }

    /// The file ended inside a block.
    pub(crate) fn unterminated(&mut self, block: &OpenBlock) {
        self.fail(alloc::format!(
            "{} block of line {} has no -----END line",
            block.key.name(),
            block.start_line
        ));
    }

    /// `tls=`.
    pub(crate) fn set_mode(&mut self, line: usize, value: &str) {
        self.mode = match value {
            "off" => TlsMode::Off,
            "on" => TlsMode::On,
            "require" => TlsMode::Require,
            _ => {
                self.fail(alloc::format!(
                    "bootconfig line {line}: tls={value}: expected off, on or require"
                ));
                TlsMode::Require
            }
        };
    }

    /// Checks done once the whole file is read.
    pub(crate) fn finish(&mut self) {
        if self.mode != TlsMode::Off && self.error.is_none() {
            if self.cert.is_empty() {
                self.fail("tls is on but tls_cert is not given".into());
            } else if self.key.is_empty() {
                self.fail("tls is on but tls_key is not given".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse, TlsMode};

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----";

    #[test]
    fn pem_blocks_travel_in_the_config() {
        let text = std::format!(
            "tls=require\nnbd_port=10810\ntls_cert={CERT}\ntls_cert={CERT}\ntls_key={KEY}\r\nhttps_port=8443\nlog=debug\n"
        );
        let (config, warnings) = parse(&text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.tls.mode, TlsMode::Require);
        assert_eq!(config.tls.error, None);
        assert_eq!(config.tls.cert, std::format!("{CERT}\n{CERT}\n"));
        assert_eq!(config.tls.key.expose(), std::format!("{KEY}\n"));
        assert_eq!(config.tls.https_port, 8443);
        // Settings after a block are still read.
        assert_eq!(config.nbd_port, 10810);
        assert_eq!(config.log, crate::LogLevel::Debug);
        // The key never shows in Debug output.
        assert!(!std::format!("{config:?}").contains("SECRET"));
    }

    #[test]
    fn default_is_off_and_needs_nothing() {
        let (config, _) = parse("");
        assert_eq!(config.tls.mode, TlsMode::Off);
        assert_eq!(config.tls.error, None);
        assert_eq!(config.tls.https_port, 443);
    }

    #[test]
    fn what_cannot_be_applied_fails_closed() {
        let cases = [
            ("tls=maybe\n".into(), "expected off, on or require"),
            ("tls=on\n".into(), "tls_cert is not given"),
            (
                std::format!("tls=on\ntls_cert={CERT}\n"),
                "tls_key is not given",
            ),
            (
                std::format!("tls=on\ntls_cert={CERT}\ntls_key=-----BEGIN PRIVATE KEY-----\nabc\n"),
                "has no -----END line",
            ),
            (
                "tls=on\ntls_cert=/etc/cert.pem\n".into(),
                "must be a PEM block",
            ),
            (
                std::format!(
                    "tls=on\ntls_cert=-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    "A".repeat(super::MAX_PEM)
                ),
                "longer than",
            ),
            (
                std::format!("tls=on\ntls_cert={CERT}\ntls_key={KEY}\ntls_key={KEY}\n"),
                "twice",
            ),
        ];
        for (text, why) in cases {
            let (config, _) = parse(&text);
            let error = config.tls.error.unwrap_or_default();
            assert!(error.contains(why), "{text:?}: {error}");
            assert_ne!(config.tls.mode, TlsMode::Off, "{text}");
            assert!(!error.contains("SECRET"));
        }
    }

    #[test]
    fn a_bad_https_port_is_a_warning() {
        let (config, warnings) = parse("https_port=0\n");
        assert_eq!(config.tls.https_port, 443);
        assert_eq!(warnings.len(), 1);
    }
}
