//! Real handshakes with a rustls client (std) against the sans-I/O server.

extern crate std;

use super::*;
use alloc::vec;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{Read, Write};

const CA: &[u8] = include_bytes!("../testdata/ca.pem");
const OTHER_CA: &[u8] = include_bytes!("../testdata/other-ca.pem");
const SERVER: &[u8] = include_bytes!("../testdata/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../testdata/server-key.pem");
const CLIENT: &[u8] = include_bytes!("../testdata/client.pem");
const CLIENT_KEY: &[u8] = include_bytes!("../testdata/client-key.pem");

/// 2027-01-15: inside every test certificate's validity.
fn now() -> Option<u64> {
    Some(1_800_000_000)
}
/// 2128: after every test certificate expired.
fn far_future() -> Option<u64> {
    Some(5_000_000_000)
}

fn server(client_ca: Option<&'static [u8]>, clock: Clock) -> TlsServer {
    TlsServer::new(
        Pem {
            cert: SERVER,
            key: SERVER_KEY,
            client_ca,
        },
        clock,
    )
    .unwrap()
}

fn client_config(
    ca: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: bool,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls_rustcrypto::provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = if client_cert {
        let certs = parse_certs(CLIENT).unwrap();
        let key = PrivateKeyDer::from_pem_slice(CLIENT_KEY).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

fn client(config: Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap()
}

std::thread_local! {
    static TO_SERVER: core::cell::RefCell<Vec<u8>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Moves bytes both ways until neither side has anything to say.
/// Returns the server's error and the client's, if any.
fn pump(c: &mut ClientConnection, s: &mut TlsSession) -> (Option<TlsError>, Option<rustls::Error>) {
    pump_into(c, s, &mut Vec::new())
}

/// [`pump`], keeping the plaintext the client receives in `sink`.
fn pump_into(
    c: &mut ClientConnection,
    s: &mut TlsSession,
    sink: &mut Vec<u8>,
) -> (Option<TlsError>, Option<rustls::Error>) {
    for _ in 0..100 {
        let mut moved = false;
        // Bytes the server did not take yet stay queued (per test thread).
        let mut to_server = TO_SERVER.with(|q| core::mem::take(&mut *q.borrow_mut()));
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let mut offset = 0;
        while offset < to_server.len() {
            match s.receive_tls(&to_server[offset..]) {
                Ok(0) => {
                    TO_SERVER.with(|q| *q.borrow_mut() = to_server[offset..].to_vec());
                    break;
                }
                Ok(n) => offset += n,
                Err(e) => {
                    let alert = s.outgoing_tls().to_vec();
                    s.consume_outgoing(alert.len());
                    let _ = c.read_tls(&mut &alert[..]);
                    return (Some(e), c.process_new_packets().err());
                }
            }
            moved = true;
        }
        let out = s.outgoing_tls().to_vec();
        if !out.is_empty() {
            s.consume_outgoing(out.len());
            let mut slice = &out[..];
            while !slice.is_empty() {
                c.read_tls(&mut slice).unwrap();
                if let Err(e) = c.process_new_packets() {
                    let mut alert = Vec::new();
                    while c.wants_write() {
                        c.write_tls(&mut alert).unwrap();
                    }
                    return (s.receive_tls(&alert).err(), Some(e));
                }
                let _ = c.reader().read_to_end(sink);
            }
            moved = true;
        }
        if !moved {
            break;
        }
    }
    (None, None)
}

fn roundtrip(c: &mut ClientConnection, s: &mut TlsSession, size: usize) {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    // client → server
    let mut written = 0;
    let mut got = Vec::new();
    while got.len() < size {
        if written < size {
            written += c.writer().write(&data[written..]).unwrap();
        }
        assert_eq!(pump(c, s), (None, None));
        got.extend_from_slice(s.plaintext());
        let n = s.plaintext().len();
        s.consume_plaintext(n).unwrap();
    }
    assert_eq!(got, data);
    // server → client
    let mut sent = 0;
    let mut back = Vec::new();
    while back.len() < size {
        if sent < size {
            sent += s.write_plaintext(&data[sent..]).unwrap();
        }
        assert_eq!(pump_into(c, s, &mut back), (None, None));
    }
    assert_eq!(back, data);
}

#[test]
fn tls13_handshake_and_data_both_ways() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    assert!(!s.is_handshaking());
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(
        s.cipher_suite(),
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
    for size in [10, 16384, 16385, 40000, 100_000] {
        roundtrip(&mut c, &mut s, size);
    }
    // The buffers never exceed their bounds.
    assert!(s.plaintext().len() <= PLAINTEXT_CAP);
    assert!(s.outgoing_tls().len() <= OUTGOING_CAP);
}

#[test]
fn tls12_handshake_and_data_both_ways() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS12], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    assert!(!s.is_handshaking());
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    roundtrip(&mut c, &mut s, 70_000);
}

#[test]
fn write_is_bounded_by_the_outgoing_buffer() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    let big = vec![1u8; 1 << 20];
    let n = s.write_plaintext(&big).unwrap();
    assert!(n > 0 && n < big.len());
    assert!(s.outgoing_tls().len() <= OUTGOING_CAP);
    assert_eq!(s.write_plaintext(&big).unwrap(), 0);
    assert_eq!(s.plaintext_room(), 0);
}

#[test]
fn plaintext_before_the_handshake_is_refused() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    assert_eq!(s.write_plaintext(b"x"), Err(TlsError::NotReady));
    assert_eq!(s.plaintext_room(), 0);
}

#[test]
fn wrong_ca_fails_on_the_client_and_the_server_session_ends() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(OTHER_CA, &[&rustls::version::TLS13], false));
    let (server_err, client_err) = pump(&mut c, &mut s);
    assert!(client_err.is_some());
    assert!(
        matches!(server_err, Some(TlsError::Protocol(_))),
        "{server_err:?}"
    );
    // A new session of the same server still works.
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
}

#[test]
fn mutual_tls_gives_the_client_subject() {
    let server = server(Some(CA), now);
    assert!(server.mutual());
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], true));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    assert_eq!(s.client_cn(), Some("backup-host-1"));
    assert!(s.client_subject().is_some());
    roundtrip(&mut c, &mut s, 1000);
}

#[test]
fn mutual_tls_refuses_a_client_without_certificate() {
    let server = server(Some(CA), now);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut s = server.session().unwrap();
        let mut c = client(client_config(CA, &[version], false));
        let (server_err, _) = pump(&mut c, &mut s);
        assert!(
            matches!(server_err, Some(TlsError::Protocol(_))),
            "{server_err:?}"
        );
        assert!(s.is_handshaking());
        assert_eq!(s.client_subject(), None);
    }
}

#[test]
fn mutual_tls_refuses_an_expired_client_certificate() {
    let server = server(Some(CA), far_future);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], true));
    let (server_err, _) = pump(&mut c, &mut s);
    let Some(TlsError::Protocol(why)) = server_err else {
        panic!("{server_err:?}")
    };
    assert!(why.contains("xpired"), "{why}");
}

#[test]
fn mutual_tls_without_a_clock_refuses() {
    fn unknown() -> Option<u64> {
        None
    }
    let server = server(Some(CA), unknown);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], true));
    let (server_err, _) = pump(&mut c, &mut s);
    assert!(server_err.is_some());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let server = server(None, now);
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8; 64][..],
        &[0x16, 0x03, 0x01, 0xff, 0xff][..],
        &[0x17, 0x03, 0x03, 0x00, 0x10, 1, 2, 3][..],
        &[0x15, 0x03, 0x03, 0x00, 0x02, 2, 40][..],
    ] {
        let mut s = server.session().unwrap();
        let r = s.receive_tls(garbage);
        if let Ok(n) = r {
            // Incomplete: waits for more, holds no more than it took.
            assert_eq!(n, garbage.len());
            assert!(s.is_handshaking());
        }
        // Once failed, it stays failed.
        if r.is_err() {
            assert!(s.receive_tls(b"more").is_err());
            assert_eq!(s.incoming_room(), 0);
        }
    }
}

#[test]
fn every_prefix_and_every_corruption_of_a_client_hello_is_handled() {
    let server = server(None, now);
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    for len in 0..hello.len() {
        let mut s = server.session().unwrap();
        assert_eq!(s.receive_tls(&hello[..len]), Ok(len));
        assert!(s.outgoing_tls().is_empty());
    }
    for i in 0..hello.len() {
        let mut bad = hello.clone();
        bad[i] ^= 0x5a;
        let mut s = server.session().unwrap();
        let _ = s.receive_tls(&bad);
    }
}

#[test]
fn a_corrupted_application_record_ends_the_session() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    c.writer().write_all(b"hello").unwrap();
    let mut record = Vec::new();
    c.write_tls(&mut record).unwrap();
    let last = record.len() - 1;
    record[last] ^= 1;
    assert!(matches!(s.receive_tls(&record), Err(TlsError::Protocol(_))));
    // The alert is queued for the peer.
    assert!(!s.outgoing_tls().is_empty());
}

#[test]
fn an_oversized_handshake_message_is_refused() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    // A handshake record header claiming a 64 KiB ClientHello, then filler.
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xfc];
    record.resize(70_000, 0);
    let mut offset = 0;
    let mut failed = false;
    for _ in 0..10 {
        match s.receive_tls(&record[offset..]) {
            Ok(n) => offset += n,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed);
}

#[test]
fn a_client_hello_inside_an_established_session_ends_it() {
    // What a renegotiation attempt in clear looks like to the record layer:
    // TLS 1.3 has no renegotiation, and rustls offers none in TLS 1.2
    // (a rustls client cannot send an encrypted one to test that path).
    let server = server(None, now);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut s = server.session().unwrap();
        let mut c = client(client_config(CA, &[version], false));
        assert_eq!(pump(&mut c, &mut s), (None, None));
        let mut hello = Vec::new();
        client(client_config(CA, &[version], false))
            .write_tls(&mut hello)
            .unwrap();
        assert!(matches!(s.receive_tls(&hello), Err(TlsError::Protocol(_))));
        assert!(!s.is_handshaking());
    }
}

#[test]
fn close_notify_is_seen_and_sent() {
    let server = server(None, now);
    let mut s = server.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    c.send_close_notify();
    assert_eq!(pump(&mut c, &mut s), (None, None));
    assert!(s.peer_closed());
    s.close();
    assert!(!s.outgoing_tls().is_empty());
}

#[test]
fn bad_configurations_fail_closed_without_key_material() {
    let bad = |cert: &'static [u8], key: &'static [u8], ca: Option<&'static [u8]>| {
        TlsServer::new(
            Pem {
                cert,
                key,
                client_ca: ca,
            },
            now,
        )
        .unwrap_err()
    };
    assert_eq!(bad(b"", SERVER_KEY, None), ConfigError::NoCertificate);
    assert_eq!(bad(SERVER, b"nothing", None), ConfigError::NoKey);
    assert_eq!(bad(SERVER, SERVER, None), ConfigError::NoKey);
    assert_eq!(bad(SERVER, CLIENT_KEY, None), ConfigError::KeyMismatch);
    assert!(matches!(
        bad(SERVER, SERVER_KEY, Some(b"junk")),
        ConfigError::BadClientCa(_)
    ));
    let text = std::format!("{}", bad(SERVER, CLIENT_KEY, None));
    assert!(!text.contains("PRIVATE"));
}

#[test]
fn subject_and_common_name_parse_from_a_certificate() {
    let certs = parse_certs(CLIENT).unwrap();
    let subject = subject_of(&certs[0]).unwrap();
    assert_eq!(common_name(&subject), Some("backup-host-1"));
    assert_eq!(subject_of(&CertificateDer::from(&b"\x30\x05"[..])), None);
    assert_eq!(common_name(b"\x31\xff"), None);
}

#[test]
fn a_handshake_without_entropy_ends_that_session_and_asks_for_enough() {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    fn never(n: usize) -> bool {
        ASKED.store(n, Ordering::Relaxed);
        false
    }
    let refusing = server(None, now).with_entropy_check(never);
    let mut s = refusing.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    let (server_error, _client_error) = pump(&mut c, &mut s);
    assert_eq!(server_error, Some(TlsError::NoEntropy));
    assert_eq!(ASKED.load(Ordering::Relaxed), HANDSHAKE_ENTROPY);
    assert!(s.receive_tls(b"more").is_err());

    // A source that says yes changes nothing.
    fn always(_: usize) -> bool {
        true
    }
    let fine = server(None, now).with_entropy_check(always);
    let mut s = fine.session().unwrap();
    let mut c = client(client_config(CA, &[&rustls::version::TLS13], false));
    assert_eq!(pump(&mut c, &mut s), (None, None));
    assert!(!s.is_handshaking());
}
