//! Host benchmark of the sans-I/O server with each cipher suite: handshake
//! time and bulk throughput server → client (the NBD read direction),
//! both in one process, so the figures are CPU cost only.
//!
//! `cargo run --release -p daxbox-tls --example tls_bench [MIB]`

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use daxbox_tls::rustls::pki_types::pem::PemObject;
use daxbox_tls::rustls::pki_types::{CertificateDer, ServerName};
use daxbox_tls::rustls::{self, ClientConfig, ClientConnection, RootCertStore};
use daxbox_tls::{Pem, TlsServer, TlsSession};

const CA: &[u8] = include_bytes!("../testdata/ca.pem");
const SERVER: &[u8] = include_bytes!("../testdata/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../testdata/server-key.pem");

fn now() -> Option<u64> {
    Some(1_800_000_000)
}

fn flush(c: &mut ClientConnection, s: &mut TlsSession, sink: &mut u64) {
    let mut buf = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut buf).unwrap();
    }
    let mut off = 0;
    while off < buf.len() {
        off += s.receive_tls(&buf[off..]).unwrap();
    }
    let out = s.outgoing_tls().to_vec();
    s.consume_outgoing(out.len());
    let mut slice = &out[..];
    let mut plain = [0u8; 65536];
    while !slice.is_empty() {
        c.read_tls(&mut slice).unwrap();
        c.process_new_packets().unwrap();
        while let Ok(n) = c.reader().read(&mut plain) {
            if n == 0 {
                break;
            }
            *sink += n as u64;
        }
    }
}

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let server = TlsServer::new(
        Pem {
            cert: SERVER,
            key: SERVER_KEY,
            client_ca: None,
        },
        now,
    )
    .unwrap();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA) {
        roots.add(cert.unwrap()).unwrap();
    }
    let suites = [
        (
            "TLS1.3 CHACHA20_POLY1305",
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS1.3 AES_128_GCM",
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            "TLS1.2 ECDHE_ECDSA_CHACHA20",
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS1.2 ECDHE_ECDSA_AES_128_GCM",
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ];
    for (name, suite) in suites {
        let mut provider = rustls_rustcrypto::provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let mut c =
            ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut s = server.session().unwrap();
        let mut sink = 0;
        let start = Instant::now();
        while s.is_handshaking() || c.is_handshaking() {
            flush(&mut c, &mut s, &mut sink);
        }
        let handshake = start.elapsed();
        assert_eq!(s.cipher_suite(), Some(suite));
        let block = vec![0x5au8; 256 * 1024];
        let total = mib << 20;
        let start = Instant::now();
        let mut sent = 0u64;
        while sink < total {
            if sent < total {
                let n = s.write_plaintext(&block).unwrap();
                sent += n as u64;
            }
            flush(&mut c, &mut s, &mut sink);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:32} handshake {:6.2} ms  server encrypt + client decrypt {:7.1} MB/s ({mib} MiB)",
            handshake.as_secs_f64() * 1000.0,
            total as f64 / secs / 1e6
        );
    }
}
