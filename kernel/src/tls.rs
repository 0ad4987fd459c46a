//! TLS at boot: checks the entropy source (and sets bytes aside for
//! building the server) and builds the `daxbox-tls` server from the boot
//! config's PEM blocks, once. Every session sets its handshake's
//! randomness aside first (`entropy::reserve`), so a virtio-rng that stops
//! answering ends that handshake instead of panicking in the crypto.
//!
//! Anything that cannot be applied fails closed: the status is `Failed`
//! with the reason (printed at boot and by `bootconfig`), and the NBD
//! listener is not started. When usable, the NBD service offers (`on`) or
//! requires (`require`) `NBD_OPT_STARTTLS` with this server, and HTTPS is
//! served on `https_port` with the same certificate.

use alloc::string::String;
use daxbox_bootconfig::{BootConfig, TlsMode};
use daxbox_tls::{Pem, TlsServer};
use spin::Once;

use crate::println;

/// What became of `tls=`.
pub enum Status {
    /// `tls=off`.
    Off,
    /// Certificate and key parsed and match; entropy is available.
    Ready(TlsServer),
    /// TLS was asked for and cannot be used (the reason).
    Failed(String),
}

static STATUS: Once<Status> = Once::new();

/// Unix time for certificate validity (client certificates, mutual
/// TLS): the CMOS RTC wall clock; unknown (`None`) refuses them.
fn now() -> Option<u64> {
    daxbox_platform::rtc::unix_now()
}

/// Whether a handshake's randomness is set aside (see
/// `daxbox_tls::EntropyReady`).
fn entropy_ready(n: usize) -> bool {
    daxbox_platform::entropy::reserve(n).is_ok()
}

fn build(config: &BootConfig) -> Status {
    let tls = &config.tls;
    if tls.mode == TlsMode::Off {
        return Status::Off;
    }
    if let Some(error) = &tls.error {
        return Status::Failed(error.clone());
    }
    let mut probe = [0u8; 32];
    if let Err(error) = daxbox_platform::entropy::fill(&mut probe) {
        return Status::Failed(alloc::format!("{error}"));
    }
    // Building the server signs a test message (randomized ECDSA through
    // an API that panics when the source fails): set its bytes aside.
    if let Err(error) = daxbox_platform::entropy::reserve(daxbox_tls::HANDSHAKE_ENTROPY) {
        return Status::Failed(alloc::format!("{error}"));
    }
    let pem = Pem {
        cert: tls.cert.as_bytes(),
        key: tls.key.expose().as_bytes(),
        client_ca: (!tls.client_ca.is_empty()).then_some(tls.client_ca.as_bytes()),
    };
    match TlsServer::new(pem, now) {
        // Each handshake first sets its randomness aside: rustls-rustcrypto
        // panics if the source fails mid-handshake (virtio-rng can).
        Ok(server) => Status::Ready(server.with_entropy_check(entropy_ready)),
        Err(error) => Status::Failed(alloc::format!("{error}")),
    }
}

/// Builds the TLS status once and prints it.
pub fn init(config: &BootConfig) -> &'static Status {
    STATUS.call_once(|| {
        let status = build(config);
        match &status {
            Status::Off => {}
            Status::Ready(server) => println!(
                "tls: {} certificate loaded{}",
                config.tls.mode,
                if server.mutual() {
                    "; client certificates required"
                } else {
                    ""
                }
            ),
            Status::Failed(why) => {
                println!("tls: {why}; NBD and HTTPS not served (fail closed)")
            }
        }
        status
    })
}

/// One line for `bootconfig`; `mode` is the boot config's `tls=`.
pub fn describe(mode: TlsMode) -> String {
    match STATUS.get() {
        None | Some(Status::Off) => "tls=off".into(),
        Some(Status::Ready(server)) => alloc::format!(
            "tls={} (certificate loaded{})",
            mode,
            if server.mutual() { ", mutual" } else { "" }
        ),
        Some(Status::Failed(why)) => {
            alloc::format!("tls={} FAILED: {why} (NBD and HTTPS not served)", mode)
        }
    }
}

/// Whether NBD may be served: not when TLS was asked for and failed.
pub fn nbd_allowed() -> Result<(), String> {
    match STATUS.get() {
        Some(Status::Failed(why)) => Err(alloc::format!("tls: {why}")),
        _ => Ok(()),
    }
}

/// The TLS server, when TLS is on and usable.
pub fn server() -> Option<&'static TlsServer> {
    match STATUS.get() {
        Some(Status::Ready(server)) => Some(server),
        _ => None,
    }
}
