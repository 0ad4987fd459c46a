//! NBD over TLS: after the engine acknowledged `NBD_OPT_STARTTLS` and that
//! ACK went out in clear, the connection's bytes pass through a
//! `daxbox-tls` session: TCP bytes in → TLS → plaintext → engine, and
//! engine output → TLS → TCP. Per connection this holds one
//! [`daxbox_tls::TlsSession`] plus a [`SCRATCH`] buffer; the listener
//! charges [`TLS_CONNECTION_BYTES`] more to the NBD budget per connection
//! when TLS is configured.
//!
//! A TLS failure (bad record, failed certificate check, garbage) ends that
//! connection only: its alert is sent, then the connection closes.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use daxbox_nbd::{Backend, Connection};
use daxbox_tls::{TlsServer, TlsSession};

/// Plaintext the engine produces per step into TLS (one record).
pub const SCRATCH: usize = 16 * 1024;
/// Heap one TLS connection may hold beyond a plaintext one.
pub const TLS_CONNECTION_BYTES: usize = daxbox_tls::SESSION_MEMORY + SCRATCH;

/// The TLS side of one NBD connection.
#[derive(Default)]
pub struct TlsState {
    session: Option<TlsSession>,
    scratch: Vec<u8>,
    failed: bool,
    /// The verified client certificate's common name, kept once the
    /// handshake gave it, shared with each call's backend (allow-list
    /// `cn:` rules).
    cn: Option<Arc<str>>,
    /// close_notify was queued (the engine finished in order).
    close_sent: bool,
}

impl TlsState {
    /// Whether the connection is finished, once what TLS has to send is
    /// out: because TLS failed (its alert), or, under TLS, because the
    /// engine is done (`engine_done`: `NBD_OPT_ABORT`, `NBD_CMD_DISC`, an
    /// error) and close_notify was queued. In clear, the engine decides.
    pub fn wants_close(&self, engine_done: bool) -> bool {
        let flushed = self
            .session
            .as_ref()
            .is_none_or(|s| s.outgoing_tls().is_empty());
        match &self.session {
            None => self.failed || engine_done,
            Some(_) => flushed && (self.failed || (engine_done && self.close_sent)),
        }
    }

    /// Whether TLS carries this connection.
    pub fn active(&self) -> bool {
        self.session.is_some()
    }

    /// The verified client certificate's common name (mutual TLS): what
    /// `cn:` allow rules match.
    pub fn client_cn(&self) -> Option<&str> {
        self.cn.as_deref()
    }

    /// The same, shared (for a backend that lives beside this state).
    pub fn client_cn_shared(&self) -> Option<Arc<str>> {
        self.cn.clone()
    }

    /// Received bytes: to the engine in clear, or through TLS.
    pub fn receive<B: Backend + ?Sized>(
        &mut self,
        engine: &mut Connection,
        data: &[u8],
        backend: &mut B,
        now_ms: u64,
    ) -> usize {
        match self.receive_tls(data) {
            Some(n) => {
                self.feed(engine, backend, now_ms);
                n
            }
            None => engine.receive(data, backend, now_ms),
        }
    }

    /// The first half of [`Self::receive`]: with TLS active, takes
    /// received bytes into the session (the handshake may finish and
    /// name the client certificate) and returns how many, without handing
    /// plaintext to the engine; `None` when the connection is in clear.
    /// The caller then builds its backend knowing [`Self::client_cn`] and
    /// calls [`Self::feed`], so a request that arrives in the same
    /// segment as the handshake's end is decided with the certificate.
    pub fn receive_tls(&mut self, data: &[u8]) -> Option<usize> {
        if self.failed {
            return Some(data.len());
        }
        let session = self.session.as_mut()?;
        match session.receive_tls(data) {
            Ok(n) => {
                if self.cn.is_none() {
                    self.cn = session.client_cn().map(Arc::from);
                }
                Some(n)
            }
            Err(_) => {
                self.failed = true;
                Some(data.len())
            }
        }
    }

    /// Decrypted bytes waiting in the session go to the engine as far as it
    /// takes them.
    pub fn feed<B: Backend + ?Sized>(
        &mut self,
        engine: &mut Connection,
        backend: &mut B,
        now_ms: u64,
    ) {
        if self.failed {
            return;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        while !session.plaintext().is_empty() {
            let used = engine.receive(session.plaintext(), backend, now_ms);
            if session.consume_plaintext(used).is_err() {
                self.failed = true;
                return;
            }
            if used == 0 {
                break;
            }
        }
    }

    /// Bytes to send: the engine's in clear (starting TLS once a STARTTLS
    /// ACK is out), or TLS records of its output.
    pub fn produce<B: Backend + ?Sized>(
        &mut self,
        engine: &mut Connection,
        server: Option<&TlsServer>,
        out: &mut [u8],
        backend: &mut B,
        now_ms: u64,
    ) -> usize {
        if self.session.is_none() {
            let written = engine.produce(out, backend);
            if engine.starttls_pending() && !engine.has_output() {
                match server.map(TlsServer::session) {
                    Some(Ok(session)) => {
                        self.session = Some(session);
                        self.scratch = vec![0; SCRATCH];
                        engine.tls_started();
                    }
                    // No TLS server (cannot happen with a TLS policy) or
                    // no session: the connection ends.
                    _ => self.failed = true,
                }
            }
            return written;
        }
        self.feed(engine, backend, now_ms);
        let mut written = self.drain(out);
        if !self.failed {
            if let Some(session) = self.session.as_mut() {
                let room = session.plaintext_room().min(self.scratch.len());
                if room > 0 {
                    let n = engine.produce(&mut self.scratch[..room], backend);
                    if n > 0 && session.write_plaintext(&self.scratch[..n]) != Ok(n) {
                        // Room was checked: a short write is a TLS failure.
                        self.failed = true;
                    }
                }
                // The engine is done in order: close_notify after its
                // last bytes, so the client sees a clean end.
                if !self.failed && !self.close_sent && engine.wants_close() {
                    if session.error().is_none() && !session.is_handshaking() {
                        session.close();
                    }
                    self.close_sent = true;
                }
            }
            written += self.drain(&mut out[written..]);
        }
        written
    }

    fn drain(&mut self, out: &mut [u8]) -> usize {
        let Some(session) = self.session.as_mut() else {
            return 0;
        };
        let n = session.outgoing_tls().len().min(out.len());
        out[..n].copy_from_slice(&session.outgoing_tls()[..n]);
        session.consume_outgoing(n);
        n
    }
}
