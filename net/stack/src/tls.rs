//! Any [`TcpService`] over TLS from the first byte ([`TlsService`]; the
//! kernel serves HTTPS this way): TCP bytes → `daxbox-tls` session →
//! plaintext → the inner service, and its output → TLS records → TCP.
//!
//! Per connection: one [`daxbox_tls::TlsSession`] plus a [`SCRATCH`]
//! buffer ([`TLS_CONNECTION_BYTES`], to add to the listener's
//! `connection_bytes`). The inner service's deadlines apply unchanged (for
//! HTTP the head deadline also bounds a stalled TLS handshake). A TLS
//! failure, plaintext sent to the TLS port included, ends that connection
//! after the alert; the others go on.

use alloc::vec;
use alloc::vec::Vec;

use daxbox_tls::{TlsServer, TlsSession};

use crate::service::{Refusal, TcpService};

/// Plaintext the inner service produces per turn into TLS (one record).
pub const SCRATCH: usize = 16 * 1024;
/// Heap one TLS connection holds beyond the inner service's.
pub const TLS_CONNECTION_BYTES: usize = daxbox_tls::SESSION_MEMORY + SCRATCH;

/// `inner` served over TLS with `server`'s certificate.
pub struct TlsService<S> {
    inner: S,
    server: TlsServer,
}

impl<S> TlsService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, server: TlsServer) -> Self {
        Self { inner, server }
    }
}

/// One connection: the inner service's state and its TLS session.
pub struct TlsConnection<C> {
    inner: C,
    session: Option<TlsSession>,
    scratch: Vec<u8>,
    /// The verified client certificate's name was told to the inner
    /// service.
    cn_told: bool,
    /// close_notify was queued (the inner service finished).
    close_sent: bool,
}

impl<C> TlsConnection<C> {
    /// The verified client certificate's common name (mutual TLS).
    pub fn client_cn(&self) -> Option<&str> {
        self.session.as_ref().and_then(|s| s.client_cn())
    }

    fn failed(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.error().is_some())
    }
}

impl<S: TcpService> TlsService<S> {
    fn feed(&mut self, conn: &mut TlsConnection<S::Connection>, now_ms: u64) {
        let Some(session) = conn.session.as_mut() else {
            return;
        };
        while !session.plaintext().is_empty() {
            let used = self
                .inner
                .receive(&mut conn.inner, session.plaintext(), now_ms);
            if session.consume_plaintext(used).is_err() || used == 0 {
                return;
            }
        }
    }
}

/// Once the inner service is done with a connection in order, queues
/// TLS close_notify (once), so the client sees a clean end rather than a
/// truncation attack's unexpected EOF.
fn close_if_done<S: TcpService>(inner: &S, conn: &mut TlsConnection<S::Connection>) {
    if conn.close_sent || !inner.wants_close(&conn.inner) {
        return;
    }
    if let Some(session) = conn.session.as_mut() {
        if session.error().is_none() && !session.is_handshaking() {
            session.close();
        }
    }
    conn.close_sent = true;
}

fn drain(session: &mut TlsSession, out: &mut [u8]) -> usize {
    let n = session.outgoing_tls().len().min(out.len());
    out[..n].copy_from_slice(&session.outgoing_tls()[..n]);
    session.consume_outgoing(n);
    n
}

impl<S: TcpService> TcpService for TlsService<S> {
    type Connection = TlsConnection<S::Connection>;

    fn accept(&mut self, now_ms: u64) -> Self::Connection {
        TlsConnection {
            inner: self.inner.accept(now_ms),
            session: self.server.session().ok(),
            scratch: vec![0; SCRATCH],
            cn_told: false,
            close_sent: false,
        }
    }

    fn remote(&mut self, conn: &mut Self::Connection, remote: core::net::SocketAddr) {
        self.inner.remote(&mut conn.inner, remote);
    }

    fn refuse(&mut self, _reason: Refusal, _now_ms: u64) -> Option<Self::Connection> {
        // A refusal in clear would be garbage to a TLS client: reset.
        None
    }

    fn receive(&mut self, conn: &mut Self::Connection, data: &[u8], now_ms: u64) -> usize {
        let Some(session) = conn.session.as_mut() else {
            return data.len();
        };
        match session.receive_tls(data) {
            Ok(n) => {
                // The inner service learns the certificate before the
                // first plaintext byte (allow-list `cn:` rules).
                if !conn.cn_told {
                    if let Some(cn) = session.client_cn() {
                        conn.cn_told = true;
                        self.inner.client_cn(&mut conn.inner, cn);
                    }
                }
                self.feed(conn, now_ms);
                close_if_done(&self.inner, conn);
                n
            }
            Err(_) => data.len(),
        }
    }

    fn produce(&mut self, conn: &mut Self::Connection, out: &mut [u8], now_ms: u64) -> usize {
        self.feed(conn, now_ms);
        let Some(session) = conn.session.as_mut() else {
            return 0;
        };
        let mut written = drain(session, out);
        if session.error().is_none() {
            let room = session.plaintext_room().min(conn.scratch.len());
            if room > 0 {
                let n = self
                    .inner
                    .produce(&mut conn.inner, &mut conn.scratch[..room], now_ms);
                if n > 0 {
                    // Room was checked; a short write is a TLS failure,
                    // which `wants_close` then reports.
                    let _ = session.write_plaintext(&conn.scratch[..n]);
                }
            }
            close_if_done(&self.inner, conn);
            if let Some(session) = conn.session.as_mut() {
                written += drain(session, &mut out[written..]);
            }
        }
        written
    }

    fn wants_close(&self, conn: &Self::Connection) -> bool {
        let flushed = conn
            .session
            .as_ref()
            .is_none_or(|s| s.outgoing_tls().is_empty());
        // An orderly end waits for close_notify to be queued and sent.
        flushed && (conn.failed() || (conn.close_sent && self.inner.wants_close(&conn.inner)))
    }

    fn deadline(&self, conn: &Self::Connection) -> Option<u64> {
        self.inner.deadline(&conn.inner)
    }

    fn expire(&mut self, conn: &mut Self::Connection, now_ms: u64) -> bool {
        // The inner answer (HTTP 408) can only go out over a working session.
        if conn.session.as_ref().is_some_and(|s| !s.is_handshaking()) {
            self.inner.expire(&mut conn.inner, now_ms)
        } else {
            false
        }
    }

    fn closed(&mut self, conn: Self::Connection) {
        self.inner.closed(conn.inner);
    }

    fn has_work(&self, conn: &Self::Connection) -> bool {
        self.inner.has_work(&conn.inner)
    }

    fn step(&mut self, conn: &mut Self::Connection, now_ms: u64) -> bool {
        self.inner.step(&mut conn.inner, now_ms)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::http::{Bench, HttpService};
    use daxbox_tls::rustls::pki_types::pem::PemObject;
    use daxbox_tls::rustls::pki_types::{CertificateDer, ServerName};
    use daxbox_tls::rustls::{ClientConfig, ClientConnection, RootCertStore};
    use daxbox_tls::Pem;
    use std::io::{Read, Write};
    use std::sync::Arc;

    const CA: &[u8] = include_bytes!("../../tls/testdata/ca.pem");
    const CERT: &[u8] = include_bytes!("../../tls/testdata/server.pem");
    const KEY: &[u8] = include_bytes!("../../tls/testdata/server-key.pem");

    fn service() -> TlsService<HttpService> {
        fn now() -> Option<u64> {
            Some(1_800_000_000)
        }
        let server = TlsServer::new(
            Pem {
                cert: CERT,
                key: KEY,
                client_ca: None,
            },
            now,
        )
        .unwrap();
        TlsService::new(HttpService::new("test", 0, Bench::Off), server)
    }

    fn client() -> ClientConnection {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(CA) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = ClientConfig::builder_with_provider(Arc::new(rustls_rustcrypto::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    #[test]
    fn healthz_over_tls() {
        let mut service = service();
        let mut conn = service.accept(0);
        let mut c = client();
        c.writer()
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = std::vec::Vec::new();
        let mut out = vec![0u8; 64 * 1024];
        for _ in 0..50 {
            let mut to_server = std::vec::Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            let mut offset = 0;
            while offset < to_server.len() {
                let n = service.receive(&mut conn, &to_server[offset..], 1);
                assert!(n > 0);
                offset += n;
            }
            let n = service.produce(&mut conn, &mut out, 1);
            let mut slice = &out[..n];
            while !slice.is_empty() {
                c.read_tls(&mut slice).unwrap();
                c.process_new_packets().unwrap();
            }
            let _ = c.reader().read_to_end(&mut answer);
            if service.wants_close(&conn) {
                break;
            }
        }
        let text = std::string::String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(service.wants_close(&conn));
        // An orderly close (`Connection: close`) ends with close_notify,
        // so the client sees a clean end, not a truncation.
        assert!(
            c.process_new_packets().unwrap().peer_has_closed(),
            "no close_notify before the close"
        );
    }

    /// Drives `c` against `conn` until the service wants to close; the
    /// plaintext the client read.
    fn exchange(
        service: &mut TlsService<HttpService>,
        conn: &mut TlsConnection<crate::http::HttpConnection>,
        c: &mut ClientConnection,
        request: &[u8],
    ) -> std::string::String {
        c.writer().write_all(request).unwrap();
        let mut answer = std::vec::Vec::new();
        let mut out = vec![0u8; 64 * 1024];
        for _ in 0..50 {
            let mut to_server = std::vec::Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            let mut offset = 0;
            while offset < to_server.len() {
                let n = service.receive(conn, &to_server[offset..], 1);
                assert!(n > 0);
                offset += n;
            }
            let n = service.produce(conn, &mut out, 1);
            let mut slice = &out[..n];
            while !slice.is_empty() {
                c.read_tls(&mut slice).unwrap();
                c.process_new_packets().unwrap();
            }
            let _ = c.reader().read_to_end(&mut answer);
            if service.wants_close(conn) {
                break;
            }
        }
        std::string::String::from_utf8_lossy(&answer).into_owned()
    }

    /// With mutual TLS the inner service learns the verified client
    /// certificate's name before the request: the HTTP gate (allow-list
    /// `cn:` rules) admits by it.
    #[test]
    fn the_gate_sees_the_verified_client_certificate_name() {
        const CLIENT: &[u8] = include_bytes!("../../tls/testdata/client.pem");
        const CLIENT_KEY: &[u8] = include_bytes!("../../tls/testdata/client-key.pem");
        fn now() -> Option<u64> {
            Some(1_800_000_000)
        }
        let server = TlsServer::new(
            Pem {
                cert: CERT,
                key: KEY,
                client_ca: Some(CA),
            },
            now,
        )
        .unwrap();
        let mut http = HttpService::new("test", 0, Bench::On);
        http.set_gate(std::boxed::Box::new(|_, cn: Option<&str>| {
            cn == Some("backup-host-1")
        }));
        let mut service = TlsService::new(http, server);
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(CA) {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_slice_iter(CLIENT)
            .map(|c| c.unwrap())
            .collect();
        let key = daxbox_tls::rustls::pki_types::PrivateKeyDer::from_pem_slice(CLIENT_KEY).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(rustls_rustcrypto::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let mut c =
            ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut conn = service.accept(0);
        let request = b"GET /bench/bytes?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let text = exchange(&mut service, &mut conn, &mut c, request);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(conn.client_cn(), Some("backup-host-1"));
        // The same gate refuses a client without a certificate name
        // (server-only TLS).
        let mut plain = super::tests::service();
        plain
            .inner
            .set_gate(std::boxed::Box::new(|_, cn: Option<&str>| cn.is_some()));
        let mut conn = plain.accept(0);
        let text = exchange(&mut plain, &mut conn, &mut client(), request);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    }

    #[test]
    fn plaintext_to_the_tls_port_is_dropped() {
        let mut service = service();
        let mut conn = service.accept(0);
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(service.receive(&mut conn, request, 1), request.len());
        let mut out = vec![0u8; 4096];
        let n = service.produce(&mut conn, &mut out, 1);
        // At most a TLS alert, never an HTTP answer in clear.
        assert!(!out[..n].starts_with(b"HTTP"));
        assert_eq!(service.produce(&mut conn, &mut out, 1), 0);
        assert!(service.wants_close(&conn));
    }
}
