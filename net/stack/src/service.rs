//! Serving a TCP port with a sans-I/O service.
//!
//! A [`Listener`] owns the smoltcp sockets of one port. It keeps
//! `listen_backlog` sockets in LISTEN so new clients are accepted while
//! others are connected, creates sockets (and their buffers) on demand up to
//! `max_connections`, and frees them when the connection ends, so idle memory
//! stays small. Data is moved with `recv(|buf| ..)` / `send(|buf| ..)`
//! closures: the service reads from and writes into smoltcp's ring buffers
//! directly.

use crate::Counters;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

/// A protocol engine serving one TCP connection at a time per `Connection`
/// value, without doing any I/O itself.
pub trait TcpService {
    /// Per-connection state.
    type Connection;

    /// A client connected.
    fn accept(&mut self, now_ms: u64) -> Self::Connection;

    /// The address and port of the client of `conn`, told right after
    /// `accept` when the transport knows it.
    fn remote(&mut self, conn: &mut Self::Connection, remote: core::net::SocketAddr) {
        let _ = (conn, remote);
    }

    /// Offers received bytes; returns how many were consumed. Unconsumed
    /// bytes are offered again later (after `produce` made progress), which
    /// is how a service applies back-pressure.
    fn receive(&mut self, conn: &mut Self::Connection, data: &[u8], now_ms: u64) -> usize;

    /// Asks for bytes to send; returns how many were written into `out`.
    fn produce(&mut self, conn: &mut Self::Connection, out: &mut [u8], now_ms: u64) -> usize;

    /// True when the service has produced everything it will and wants the
    /// connection closed (a FIN is queued after the produced data).
    fn wants_close(&self, conn: &Self::Connection) -> bool;

    /// Absolute time (ms) after which the connection is aborted, e.g. a
    /// handshake or idle timeout. `None` = no deadline.
    fn deadline(&self, conn: &Self::Connection) -> Option<u64>;

    /// The connection is gone (closed by either side, reset or timed out).
    fn closed(&mut self, conn: Self::Connection) {
        let _ = conn;
    }

    /// The connection has work that is done in bounded pieces by
    /// [`step`](Self::step) (e.g. a long NBD TRIM), independent of socket
    /// I/O. While true the event loop keeps stepping and does not sleep,
    /// and the connection is not closed for a quiet peer.
    fn has_work(&self, conn: &Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Does one bounded piece of that work; returns true when it did any.
    /// The listener calls it for one connection per [`PortListener::step`]
    /// (round-robin), so each turn of the event loop does at most one
    /// piece per listener and every other connection is served in between.
    fn step(&mut self, conn: &mut Self::Connection, now_ms: u64) -> bool {
        let _ = (conn, now_ms);
        false
    }
}

/// Sizing of a [`Listener`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// TCP port.
    pub port: u16,
    /// Connections served at once (sockets beyond the listening ones).
    pub max_connections: usize,
    /// Sockets kept in LISTEN.
    pub listen_backlog: usize,
    /// Receive buffer per connection, bytes. Above 64 KiB smoltcp uses
    /// window scaling (RFC 7323).
    pub rx_buffer: usize,
    /// Transmit buffer per connection, bytes.
    pub tx_buffer: usize,
    /// Dead-peer detection: a keep-alive probe is sent after this much
    /// silence (RFC 9293 §3.8.4)...
    pub keep_alive_ms: u64,
    /// ...and the connection is aborted when the peer has sent nothing
    /// (not even an ACK to a probe) for this long. Must exceed
    /// `keep_alive_ms`, or quiet but healthy connections would be cut.
    pub peer_timeout_ms: u64,
}

impl ListenerConfig {
    /// Defaults sized for bulk transfer: 64 connections, 4 listening,
    /// 128 KiB receive and 256 KiB transmit buffers.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            max_connections: 64,
            listen_backlog: 4,
            rx_buffer: 128 * 1024,
            tx_buffer: 256 * 1024,
            keep_alive_ms: 60_000,
            peer_timeout_ms: 180_000,
        }
    }
}

/// What a listener reports to the shell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Port.
    pub port: u16,
    /// Sockets in LISTEN.
    pub listening: usize,
    /// Connections currently open.
    pub active: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections aborted because their deadline passed.
    pub timed_out: u64,
}

/// Object-safe face of a [`Listener`], so one stack serves listeners of
/// different service types.
pub trait PortListener {
    /// The port served.
    fn port(&self) -> u16;
    /// Creates the initial listening sockets.
    fn start(&mut self, sockets: &mut SocketSet<'static>);
    /// Re-counts the LISTEN sockets and opens more up to the backlog. Cheap;
    /// the stack calls it after every received frame that changed socket
    /// state, so a burst of SYNs finds a listening socket for each.
    fn refill(&mut self, sockets: &mut SocketSet<'static>) -> bool;
    /// Accepts, moves data, closes and reaps; returns true if anything happened.
    fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now_ms: u64,
        counters: &mut Counters,
    ) -> bool;
    /// Earliest service deadline among open connections.
    fn next_deadline(&self) -> Option<u64>;
    /// Does one piece of bounded work ([`TcpService::step`]) for the next
    /// connection that has some, round-robin; true when it did any. The
    /// stack calls it once per [`crate::NetStack::poll`].
    fn step(&mut self, now_ms: u64) -> bool;
    /// Some connection has such work pending.
    fn has_work(&self) -> bool;
    /// Statistics.
    fn stats(&self) -> ListenerStats;
}

struct Slot<C> {
    handle: SocketHandle,
    connection: Option<C>,
    /// `close()` was called (FIN queued) or the socket was aborted.
    closing: bool,
}

/// Serves one TCP port with a [`TcpService`].
pub struct Listener<S: TcpService> {
    config: ListenerConfig,
    service: S,
    slots: Vec<Slot<S::Connection>>,
    stats: ListenerStats,
    /// Where the next [`PortListener::step`] starts looking (round-robin).
    step_cursor: usize,
}

impl<S: TcpService> Listener<S> {
    /// A listener for `config.port`; nothing happens until [`PortListener::start`].
    pub fn new(config: ListenerConfig, service: S) -> Self {
        Self {
            config,
            service,
            slots: Vec::new(),
            stats: ListenerStats {
                port: config.port,
                ..ListenerStats::default()
            },
            step_cursor: 0,
        }
    }

    /// The service (e.g. to read its statistics).
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Boxes the listener for [`crate::NetStack::add_listener`].
    pub fn boxed(self) -> Box<dyn PortListener + Send>
    where
        S: Send + 'static,
        S::Connection: Send,
    {
        Box::new(self)
    }

    fn new_listening_socket(&self, sockets: &mut SocketSet<'static>) -> Option<SocketHandle> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.config.rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.config.tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        // Responses are written whole by the service; Nagle would only add
        // a delay to the last partial segment of each response.
        socket.set_nagle_enabled(false);
        // smoltcp's timeout alone also fires on a quiet connection (no
        // data in flight), so it is paired with keep-alive probes, which a
        // live peer answers.
        socket.set_keep_alive(Some(Duration::from_millis(self.config.keep_alive_ms)));
        socket.set_timeout(Some(Duration::from_millis(
            self.config
                .peer_timeout_ms
                .max(self.config.keep_alive_ms.saturating_mul(2)),
        )));
        socket.listen(self.config.port).ok()?;
        Some(sockets.add(socket))
    }

    /// Tops up the LISTEN sockets to the backlog, within the connection cap.
    fn replenish(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let cap = self.config.max_connections + self.config.listen_backlog;
        let mut created = false;
        while self.stats.listening < self.config.listen_backlog && self.slots.len() < cap {
            let Some(handle) = self.new_listening_socket(sockets) else {
                break;
            };
            self.slots.push(Slot {
                handle,
                connection: None,
                closing: false,
            });
            self.stats.listening += 1;
            created = true;
        }
        created
    }
}

/// Moves data both ways until neither side makes progress. Returns
/// (anything moved, the service had nothing to produce while there was room).
fn pump<S: TcpService>(
    service: &mut S,
    conn: &mut S::Connection,
    socket: &mut tcp::Socket<'static>,
    now_ms: u64,
) -> (bool, bool) {
    let mut moved = false;
    let mut idle_output = false;
    // Bounded: each iteration moves at least one byte, and the buffers are
    // finite, so this ends; the cap keeps one connection from hogging a poll.
    for _ in 0..64 {
        let mut progressed = false;
        idle_output = false;
        if socket.can_send() {
            let written = socket
                .send(|buf| {
                    let n = service.produce(conn, buf, now_ms).min(buf.len());
                    (n, n)
                })
                .unwrap_or(0);
            progressed |= written > 0;
            idle_output = written == 0;
        }
        if socket.can_recv() {
            let consumed = socket
                .recv(|buf| {
                    let n = service.receive(conn, buf, now_ms).min(buf.len());
                    (n, n)
                })
                .unwrap_or(0);
            progressed |= consumed > 0;
        }
        if !progressed {
            break;
        }
        moved = true;
    }
    (moved, idle_output)
}

impl<S: TcpService> PortListener for Listener<S> {
    fn port(&self) -> u16 {
        self.config.port
    }

    fn start(&mut self, sockets: &mut SocketSet<'static>) {
        self.replenish(sockets);
    }

    fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now_ms: u64,
        counters: &mut Counters,
    ) -> bool {
        let mut work = false;
        let mut index = 0;
        while index < self.slots.len() {
            let slot = &mut self.slots[index];
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            match socket.state() {
                tcp::State::Listen | tcp::State::SynReceived => {
                    index += 1;
                    continue;
                }
                // TIME-WAIT only guards against stray old segments; the
                // server drops it at once so a flood of short connections
                // cannot pin sockets (and their buffers) for 10 s each.
                // An aborted socket (our deadline abort, or smoltcp's own
                // retransmission timeout) is CLOSED at once but still owes
                // its peer an RST, which goes out on a later egress and
                // only then forgets the peer. Removing it before that (e.g.
                // while the device had no free transmit buffer) loses the
                // RST and leaves the client waiting forever.
                tcp::State::Closed if socket.remote_endpoint().is_some() => {
                    index += 1;
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    if let Some(connection) = slot.connection.take() {
                        self.service.closed(connection);
                        self.stats.active -= 1;
                        counters.connections_active = counters.connections_active.saturating_sub(1);
                    }
                    sockets.remove(slot.handle);
                    self.slots.swap_remove(index);
                    work = true;
                    continue;
                }
                _ => {}
            }
            if slot.connection.is_none() {
                if slot.closing {
                    index += 1;
                    continue;
                }
                let mut connection = self.service.accept(now_ms);
                if let Some(remote) = socket.remote_endpoint() {
                    self.service.remote(&mut connection, remote.into());
                }
                slot.connection = Some(connection);
                self.stats.active += 1;
                self.stats.accepted += 1;
                counters.connections_accepted += 1;
                counters.connections_active += 1;
                work = true;
            }
            // Invariant: set just above or on an earlier poll.
            let Some(conn) = slot.connection.as_mut() else {
                index += 1;
                continue;
            };
            if let Some(deadline) = self.service.deadline(conn) {
                if now_ms >= deadline {
                    // RST goes out on the next egress; the slot is reaped
                    // once smoltcp reports CLOSED.
                    socket.abort();
                    slot.closing = true;
                    self.stats.timed_out += 1;
                    work = true;
                    index += 1;
                    continue;
                }
            }
            let (moved, idle_output) = pump(&mut self.service, conn, socket, now_ms);
            work |= moved;
            if !slot.closing {
                let peer_done = !socket.may_recv() && socket.recv_queue() == 0;
                let quiet = idle_output && !self.service.has_work(conn);
                if self.service.wants_close(conn) || (peer_done && quiet) {
                    socket.close();
                    slot.closing = true;
                    work = true;
                }
            }
            index += 1;
        }
        work |= self.refill(sockets);
        work
    }

    fn refill(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        // A socket that took a SYN no longer listens: count afresh.
        self.stats.listening = self
            .slots
            .iter()
            .filter(|s| s.connection.is_none() && !s.closing)
            .filter(|s| sockets.get::<tcp::Socket>(s.handle).is_listening())
            .count();
        if self.stats.listening < self.config.listen_backlog {
            self.replenish(sockets)
        } else {
            false
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| !s.closing)
            .filter_map(|s| s.connection.as_ref())
            .filter_map(|c| self.service.deadline(c))
            .min()
    }

    fn stats(&self) -> ListenerStats {
        self.stats
    }

    fn step(&mut self, now_ms: u64) -> bool {
        let count = self.slots.len();
        for i in 0..count {
            let index = (self.step_cursor + i) % count;
            let slot = &mut self.slots[index];
            if slot.closing {
                continue;
            }
            let Some(conn) = slot.connection.as_mut() else {
                continue;
            };
            if self.service.has_work(conn) && self.service.step(conn, now_ms) {
                self.step_cursor = index + 1;
                return true;
            }
        }
        false
    }

    fn has_work(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| !s.closing)
            .filter_map(|s| s.connection.as_ref())
            .any(|c| self.service.has_work(c))
    }
}
