//! TLS server sessions without I/O, over rustls' `UnbufferedServerConnection`
//! (the only rustls connection type without `std`) and the pure-Rust
//! `rustls-rustcrypto` provider.
//!
//! A [`TlsServer`] is built once from PEM text (certificate chain, private
//! key, optionally a CA for client certificates) and fails closed with a
//! [`ConfigError`] that never contains key material. Each connection is a
//! [`TlsSession`]: TLS bytes in ([`TlsSession::receive_tls`]), TLS bytes out
//! ([`TlsSession::outgoing_tls`] / [`TlsSession::consume_outgoing`]),
//! plaintext in and out ([`TlsSession::plaintext`] / [`TlsSession::write_plaintext`]).
//!
//! Bounds per session (the caller charges [`SESSION_MEMORY`] to its budget):
//! the incoming TLS buffer holds one maximal TLS record ([`INCOMING_CAP`],
//! 16 KiB + 2 KiB expansion + 5 header bytes), so a handshake message larger
//! than that (a huge client certificate chain) fails the handshake; the
//! decrypted plaintext waiting for the application is at most one record
//! ([`PLAINTEXT_CAP`]); application data is encrypted only while the
//! outgoing buffer has room for a whole record ([`OUTGOING_CAP`]). Handshake
//! flights are the server's own (its certificate chain) and are written
//! whole. The handshake deadline is the caller's: [`TlsSession::is_handshaking`]
//! says whether it still applies.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::time_provider::TimeProvider;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::{CipherSuite, RootCertStore, ServerConfig, SignatureScheme};

pub use rustls;

/// Largest TLS record on the wire: 2^14 plaintext bytes, 2048 bytes of
/// expansion allowed by TLS 1.2 (RFC 5246 6.2.3), 5 header bytes.
pub const MAX_RECORD: usize = 16384 + 2048 + 5;
/// Bytes of received TLS data held before they are processed.
pub const INCOMING_CAP: usize = MAX_RECORD;
/// Decrypted bytes held for the application.
pub const PLAINTEXT_CAP: usize = 16384;
/// Encrypted bytes held for sending (application data is encrypted only
/// while a whole record fits).
pub const OUTGOING_CAP: usize = 2 * MAX_RECORD;
/// Plaintext bytes per encrypted record.
const CHUNK: usize = 16384;
/// What one session holds in its own buffers at most, plus an allowance for
/// rustls' state (keys, transcript, one queued record each way).
pub const SESSION_MEMORY: usize = INCOMING_CAP + PLAINTEXT_CAP + OUTGOING_CAP + 2 * MAX_RECORD;

/// Where "now" comes from (Unix seconds), for certificate validity. `None`
/// means the clock is unknown: certificates with validity then fail.
pub type Clock = fn() -> Option<u64>;

/// Why a TLS configuration cannot be used. The texts name the file and the
/// problem, never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The certificate file holds no `CERTIFICATE` PEM block.
    NoCertificate,
    /// A PEM block of the certificate file does not parse.
    BadCertificatePem,
    /// The key file holds no private key PEM block (PKCS#8, SEC1 or PKCS#1).
    NoKey,
    /// The key is of a type or curve the provider does not support.
    UnsupportedKey,
    /// The key does not belong to the certificate.
    KeyMismatch,
    /// The client CA file holds no usable CA certificate.
    BadClientCa(String),
    /// rustls refused the configuration.
    Rustls(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCertificate => f.write_str("tls_cert holds no PEM CERTIFICATE block"),
            Self::BadCertificatePem => f.write_str("tls_cert: a PEM block does not parse"),
            Self::NoKey => f.write_str(
                "tls_key holds no private key (PEM PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)",
            ),
            Self::UnsupportedKey => {
                f.write_str("tls_key: unsupported key type (use ECDSA P-256/P-384, Ed25519 or RSA)")
            }
            Self::KeyMismatch => f.write_str("tls_key does not match the certificate in tls_cert"),
            Self::BadClientCa(why) => write!(f, "tls_client_ca: {why}"),
            Self::Rustls(why) => write!(f, "tls: {why}"),
        }
    }
}

struct ClockProvider(Clock);

impl fmt::Debug for ClockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClockProvider")
    }
}

impl TimeProvider for ClockProvider {
    fn current_time(&self) -> Option<UnixTime> {
        (self.0)().map(|secs| UnixTime::since_unix_epoch(core::time::Duration::from_secs(secs)))
    }
}

/// The crypto provider: rustls-rustcrypto with ChaCha20-Poly1305 first (the
/// soft AES of a machine without AES-NI is about 4x slower), server order.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls_rustcrypto::provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    });
    provider
}

/// The PEM inputs of a server.
#[derive(Clone, Copy)]
pub struct Pem<'a> {
    /// The server certificate chain, leaf first.
    pub cert: &'a [u8],
    /// The server's private key.
    pub key: &'a [u8],
    /// CA certificates that client certificates must chain to (mutual TLS);
    /// `None`: clients are not asked for certificates.
    pub client_ca: Option<&'a [u8]>,
}

/// Asks whether `n` random bytes can be had without failing (and, where
/// the source can, sets them aside). rustls-rustcrypto's key exchange and
/// ECDSA signing draw randomness through `rand_core::OsRng::fill_bytes`,
/// which panics when the source fails; a session therefore asks first and
/// fails itself (closing only that connection) when the answer is no.
pub type EntropyReady = fn(usize) -> bool;

/// Random bytes a session asks [`EntropyReady`] for before it processes
/// handshake input: the server random, the key share, the ECDSA
/// signature's nonce and session ids need well under this.
pub const HANDSHAKE_ENTROPY: usize = 1024;

fn always_ready(_: usize) -> bool {
    true
}

/// A TLS server configuration, shared by all its sessions.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    mutual: bool,
    entropy_ready: EntropyReady,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        certs.push(cert.map_err(|_| ConfigError::BadCertificatePem)?);
    }
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate);
    }
    Ok(certs)
}

impl TlsServer {
    /// Builds a server from PEM text; `clock` gives the time used to check
    /// client certificates' validity.
    pub fn new(pem: Pem<'_>, clock: Clock) -> Result<Self, ConfigError> {
        let certs = parse_certs(pem.cert)?;
        let key = PrivateKeyDer::from_pem_slice(pem.key).map_err(|_| ConfigError::NoKey)?;
        let provider = Arc::new(provider());
        let builder =
            ServerConfig::builder_with_details(provider.clone(), Arc::new(ClockProvider(clock)))
                .with_protocol_versions(rustls::ALL_VERSIONS)
                .map_err(|e| ConfigError::Rustls(alloc::format!("{e}")))?;
        let mutual = pem.client_ca.is_some();
        let builder = match pem.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let cas =
                    parse_certs(ca).map_err(|e| ConfigError::BadClientCa(alloc::format!("{e}")))?;
                for ca in cas {
                    roots
                        .add(ca)
                        .map_err(|e| ConfigError::BadClientCa(alloc::format!("{e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ConfigError::BadClientCa(alloc::format!("{e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        check_key_matches(&provider, &certs[0], &key)?;
        let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => ConfigError::KeyMismatch,
            rustls::Error::General(_) => ConfigError::UnsupportedKey,
            other => ConfigError::Rustls(alloc::format!("{other}")),
        })?;
        config.ignore_client_order = true;
        // No session resumption state kept per client: bounded memory.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
            mutual,
            entropy_ready: always_ready,
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// Makes every session ask `ready` for [`HANDSHAKE_ENTROPY`] bytes
    /// before it processes handshake input (default: always ready, as on
    /// the host, where the OS never fails).
    pub fn with_entropy_check(mut self, ready: EntropyReady) -> Self {
        self.entropy_ready = ready;
        self
    }

    /// A new session for one connection.
    pub fn session(&self) -> Result<TlsSession, TlsError> {
        let conn = UnbufferedServerConnection::new(self.config.clone())
            .map_err(|e| TlsError::Protocol(alloc::format!("{e}")))?;
        Ok(TlsSession {
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            handshaking: true,
            peer_closed: false,
            failed: None,
            client_subject: None,
            entropy_ready: self.entropy_ready,
        })
    }
}

/// Signs a test message with the key and verifies it with the leaf
/// certificate's public key: rustls-rustcrypto's keys do not expose their
/// public half, so rustls' own consistency check cannot run.
fn check_key_matches(
    provider: &CryptoProvider,
    leaf: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<(), ConfigError> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| ConfigError::UnsupportedKey)?;
    let schemes: Vec<SignatureScheme> = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .map(|(scheme, _)| *scheme)
        .collect();
    let signer = signing
        .choose_scheme(&schemes)
        .ok_or(ConfigError::UnsupportedKey)?;
    let message = b"daxbox tls key check";
    let signature = signer
        .sign(message)
        .map_err(|_| ConfigError::UnsupportedKey)?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|_| ConfigError::BadCertificatePem)?;
    let algs = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == signer.scheme())
        .map(|(_, algs)| *algs)
        .unwrap_or(&[]);
    if algs
        .iter()
        .any(|alg| ee.verify_signature(*alg, message, &signature).is_ok())
    {
        Ok(())
    } else {
        Err(ConfigError::KeyMismatch)
    }
}

/// Why a session ended with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The peer's bytes are not acceptable TLS (garbage, a bad record, a
    /// failed certificate check, a renegotiation attempt...).
    Protocol(String),
    /// A handshake message does not fit the incoming buffer.
    TooLarge,
    /// Plaintext was written before the handshake finished, or after close.
    NotReady,
    /// The entropy source could not give the handshake its random bytes.
    NoEntropy,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(why) => write!(f, "TLS error: {why}"),
            Self::TooLarge => write!(f, "TLS handshake message over {INCOMING_CAP} bytes"),
            Self::NotReady => f.write_str("TLS session not ready for data"),
            Self::NoEntropy => f.write_str("no entropy for the TLS handshake"),
        }
    }
}

/// One server-side TLS connection, without I/O.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    plaintext: Vec<u8>,
    outgoing: Vec<u8>,
    handshaking: bool,
    peer_closed: bool,
    failed: Option<TlsError>,
    client_subject: Option<Vec<u8>>,
    entropy_ready: EntropyReady,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.handshaking)
            .field("incoming", &self.incoming.len())
            .field("plaintext", &self.plaintext.len())
            .field("outgoing", &self.outgoing.len())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// How many more TLS bytes [`Self::receive_tls`] would take now.
    pub fn incoming_room(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        INCOMING_CAP - self.incoming.len()
    }

    /// Takes received TLS bytes (as many as fit: the return value) and
    /// processes what is complete. An error is final: send what
    /// [`Self::outgoing_tls`] holds (an alert) and close.
    pub fn receive_tls(&mut self, bytes: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let n = bytes.len().min(self.incoming_room());
        self.incoming.extend_from_slice(&bytes[..n]);
        self.process()?;
        Ok(n)
    }

    /// Runs the state machine until it needs more input or more room.
    pub fn process(&mut self) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = if self.handshaking
            && !self.incoming.is_empty()
            && !(self.entropy_ready)(HANDSHAKE_ENTROPY)
        {
            Err(TlsError::NoEntropy)
        } else {
            self.process_inner()
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn process_inner(&mut self) -> Result<(), TlsError> {
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let mut progress = discard > 0;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.encode_alert();
                    return Err(TlsError::Protocol(alloc::format!("{e}")));
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(len) = read.peek_len() {
                        if self.plaintext.len() + len.get() > PLAINTEXT_CAP {
                            stop = true;
                            break;
                        }
                        match read.next_record() {
                            Some(Ok(record)) => {
                                self.plaintext.extend_from_slice(record.payload);
                                progress = true;
                            }
                            Some(Err(e)) => return Err(TlsError::Protocol(alloc::format!("{e}"))),
                            None => break,
                        }
                    }
                }
                ConnectionState::ReadEarlyData(_) => {
                    // Never enabled (max_early_data_size is 0).
                    return Err(TlsError::Protocol("early data".into()));
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let start = self.outgoing.len();
                    let mut room = 2048;
                    loop {
                        self.outgoing.resize(start + room, 0);
                        match encode.encode(&mut self.outgoing[start..]) {
                            Ok(written) => {
                                self.outgoing.truncate(start + written);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(need)) => {
                                room = need.required_size;
                            }
                            Err(EncodeError::AlreadyEncoded) => {
                                self.outgoing.truncate(start);
                                break;
                            }
                        }
                    }
                    progress = true;
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes are in `outgoing`, which the caller drains.
                    transmit.done();
                    progress = true;
                }
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::WriteTraffic(_) => stop = true,
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    progress = true;
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    stop = true;
                }
                _ => stop = true,
            }
            self.incoming.drain(..discard);
            if self.handshaking && !self.conn.is_handshaking() {
                self.handshaking = false;
                self.client_subject = self
                    .conn
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| subject_of(leaf));
            }
            if stop || !progress {
                if self.incoming.len() >= INCOMING_CAP && self.handshaking {
                    return Err(TlsError::TooLarge);
                }
                return Ok(());
            }
        }
    }

    /// After a protocol error rustls queues an alert; put it on the wire.
    fn encode_alert(&mut self) {
        // rustls queued it in its send queue, which the next call hands out
        // (before it looks at the failed state).
        let status = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let start = self.outgoing.len();
            self.outgoing.resize(start + 64, 0);
            match encode.encode(&mut self.outgoing[start..]) {
                Ok(n) => self.outgoing.truncate(start + n),
                Err(_) => self.outgoing.truncate(start),
            }
        }
    }

    /// Whether the handshake is still running (the caller's handshake
    /// deadline applies until it is not).
    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The negotiated cipher suite, once known.
    pub fn cipher_suite(&self) -> Option<CipherSuite> {
        self.conn.negotiated_cipher_suite().map(|s| s.suite())
    }

    /// The DER subject (a `Name` SEQUENCE's contents) of the verified client
    /// certificate, with mutual TLS.
    pub fn client_subject(&self) -> Option<&[u8]> {
        self.client_subject.as_deref()
    }

    /// The common name of the verified client certificate, if it has a
    /// UTF-8/printable one.
    pub fn client_cn(&self) -> Option<&str> {
        self.client_subject.as_deref().and_then(common_name)
    }

    /// Decrypted bytes waiting for the application.
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }

    /// Drops `n` plaintext bytes the application has used, then processes
    /// records that were waiting for room.
    pub fn consume_plaintext(&mut self, n: usize) -> Result<(), TlsError> {
        self.plaintext.drain(..n.min(self.plaintext.len()));
        self.process()
    }

    /// How many plaintext bytes [`Self::write_plaintext`] would take now.
    pub fn plaintext_room(&self) -> usize {
        if self.handshaking || self.failed.is_some() {
            return 0;
        }
        let free = OUTGOING_CAP.saturating_sub(self.outgoing.len());
        if free < MAX_RECORD {
            0
        } else {
            // Whole records only: each takes up to CHUNK bytes.
            (free / MAX_RECORD) * CHUNK
        }
    }

    /// Encrypts as much of `data` as the outgoing buffer has room for; the
    /// return value says how much.
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.handshaking {
            return Err(TlsError::NotReady);
        }
        let mut done = 0;
        while done < data.len() && OUTGOING_CAP - self.outgoing.len() >= MAX_RECORD {
            let chunk = &data[done..data.len().min(done + CHUNK)];
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let written = match status.state {
                Ok(ConnectionState::WriteTraffic(mut write)) => {
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + MAX_RECORD + 256, 0);
                    let r = write.encrypt(chunk, &mut self.outgoing[start..]);
                    match r {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            Some(chunk.len())
                        }
                        Err(EncryptError::InsufficientSize(_)) => {
                            self.outgoing.truncate(start);
                            None
                        }
                        Err(e) => {
                            self.outgoing.truncate(start);
                            self.incoming.drain(..discard);
                            let e = TlsError::Protocol(alloc::format!("{e}"));
                            self.failed = Some(e.clone());
                            return Err(e);
                        }
                    }
                }
                Ok(_) => None,
                Err(e) => {
                    self.incoming.drain(..discard);
                    let e = TlsError::Protocol(alloc::format!("{e}"));
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            };
            self.incoming.drain(..discard);
            match written {
                Some(n) => done += n,
                None => {
                    // Something else to do first (a record to read, a
                    // key update to send): process, then try once more.
                    self.process()?;
                    if !self.can_write() {
                        break;
                    }
                }
            }
        }
        Ok(done)
    }

    fn can_write(&mut self) -> bool {
        let status = self.conn.process_tls_records(&mut self.incoming);
        let discard = status.discard;
        let ok = matches!(status.state, Ok(ConnectionState::WriteTraffic(_)));
        self.incoming.drain(..discard);
        ok
    }

    /// Queues a close_notify alert (once the handshake is done).
    pub fn close(&mut self) {
        if self.failed.is_some() || self.handshaking {
            return;
        }
        let status = self.conn.process_tls_records(&mut self.incoming);
        let discard = status.discard;
        if let Ok(ConnectionState::WriteTraffic(mut write)) = status.state {
            let start = self.outgoing.len();
            self.outgoing.resize(start + 256, 0);
            match write.queue_close_notify(&mut self.outgoing[start..]) {
                Ok(n) => self.outgoing.truncate(start + n),
                Err(_) => self.outgoing.truncate(start),
            }
        }
        self.incoming.drain(..discard);
    }

    /// Encrypted bytes to send.
    pub fn outgoing_tls(&self) -> &[u8] {
        &self.outgoing
    }

    /// Drops `n` bytes of [`Self::outgoing_tls`] that were sent.
    pub fn consume_outgoing(&mut self, n: usize) {
        self.outgoing.drain(..n.min(self.outgoing.len()));
    }

    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<&TlsError> {
        self.failed.as_ref()
    }
}

/// The subject of a DER certificate: the contents of its `subject` Name.
/// A minimal DER walk (the certificate was verified by webpki already).
fn subject_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (cert_body, _) = der_take(cert.as_ref(), 0x30)?; // Certificate
    let (tbs, _) = der_take(cert_body, 0x30)?; // TBSCertificate
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_skip(rest)?; // version
    }
    rest = der_skip(rest)?; // serialNumber
    rest = der_skip(rest)?; // signature
    rest = der_skip(rest)?; // issuer
    rest = der_skip(rest)?; // validity
    let (subject, _) = der_take(rest, 0x30)?;
    Some(subject.to_vec())
}

/// One DER TLV with the expected tag: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (len, header) = der_len(input.get(1..)?)?;
    let start = 1 + header;
    let end = start.checked_add(len)?;
    Some((input.get(start..end)?, input.get(end..)?))
}

fn der_skip(input: &[u8]) -> Option<&[u8]> {
    let tag = *input.first()?;
    der_take(input, tag).map(|(_, rest)| rest)
}

/// A DER length: (value, bytes it took).
fn der_len(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.first()?;
    if first < 0x80 {
        return Some((first as usize, 1));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for &b in input.get(1..1 + n)? {
        len = (len << 8) | b as usize;
    }
    Some((len, 1 + n))
}

/// The first commonName (2.5.4.3) of a Name's contents.
fn common_name(name: &[u8]) -> Option<&str> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut rdns = name;
    while !rdns.is_empty() {
        let (set, rest) = der_take(rdns, 0x31)?;
        rdns = rest;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (atv, rest) = der_take(atvs, 0x30)?;
            atvs = rest;
            let (oid, value) = der_take(atv, 0x06)?;
            if oid == CN {
                let tag = *value.first()?;
                let (text, _) = der_take(value, tag)?;
                return core::str::from_utf8(text).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
