//! Serving a TCP port with a sans-I/O service.
//!
//! A [`Listener`] owns the smoltcp sockets of one port. It keeps
//! `listen_backlog` sockets in LISTEN so new clients are accepted while
//! others are connected, creates sockets (and their buffers) on demand up to
//! `max_connections`, and frees them when the connection ends, so idle memory
//! stays small. Data is moved with `recv(|buf| ..)` / `send(|buf| ..)`
//! closures: the service reads from and writes into smoltcp's ring buffers
//! directly.
//!
//! Limits (every one bounds memory a client can make the appliance hold):
//! - `max_connections` connections are served at once, at most
//!   `max_per_address` of them from one client address. A client over
//!   either limit completes the TCP handshake and is handed to
//!   [`TcpService::refuse`], which tells it why in the service's own
//!   protocol (NBD: an option error; HTTP: `503`) and closes; at most
//!   `max_refusing` such refusals are in progress at once, beyond that the
//!   connection is reset at once. Existing connections are never touched.
//! - Half-open connections (a SYN that was never completed by the
//!   client's ACK) hold a socket each: they are dropped after
//!   `half_open_timeout_ms`, and at `max_half_open` the oldest ones
//!   older than [`HALF_OPEN_MIN_AGE_MS`] are dropped at once, so a SYN
//!   flood cannot keep the listening sockets busy. All sockets together
//!   are capped at `max_connections + max_refusing + listen_backlog +
//!   max_half_open`; no listening socket is made while `max_half_open`
//!   are half-open, so a flood meets resets instead of using up memory. A dropped half-open socket sends nothing (a real client's late
//!   ACK is answered with a reset by the stack).
//! - Every socket's buffers are charged to `budget` when it is made; a
//!   socket whose charge does not fit is not made, so new clients are
//!   reset until memory is given back (counted as a budget refusal).
//! - An aborted socket waits at most [`RESET_GRACE_MS`] for its reset to
//!   go out (a peer whose address never resolves cannot pin it).

use crate::Counters;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use daxbox_budget::{Budget, Charge};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::IpAddress;

/// A half-open connection younger than this is never dropped for being
/// over `max_half_open` (a burst of real clients completes well within it);
/// the socket cap bounds them meanwhile.
pub const HALF_OPEN_MIN_AGE_MS: u64 = 250;

/// How long an aborted socket may wait for its reset to be transmitted
/// before it is removed anyway.
pub const RESET_GRACE_MS: u64 = 3_000;

/// Why a connection was refused by the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` connections are served already.
    Total {
        /// The limit.
        limit: usize,
    },
    /// The client's address has `max_per_address` connections already.
    PerAddress {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Total { limit } => {
                write!(f, "too many connections (server limit {limit})")
            }
            Refusal::PerAddress { limit } => {
                write!(f, "too many connections from this address (limit {limit})")
            }
        }
    }
}

/// A protocol engine serving one TCP connection at a time per `Connection`
/// value, without doing any I/O itself.
pub trait TcpService {
    /// Per-connection state.
    type Connection;

    /// A client connected.
    fn accept(&mut self, now_ms: u64) -> Self::Connection;

    /// The address and port of the client of `conn`, told right after
    /// `accept` (or `refuse`) when the transport knows it.
    fn remote(&mut self, conn: &mut Self::Connection, remote: core::net::SocketAddr) {
        let _ = (conn, remote);
    }

    /// The common name of the client certificate `conn` presented and
    /// that verified against the configured client CA (mutual TLS), told
    /// by a TLS layer once its handshake is done, before any plaintext of
    /// the connection reaches the service. Never told for a certificate
    /// that did not verify.
    fn client_cn(&mut self, conn: &mut Self::Connection, cn: &str) {
        let _ = (conn, cn);
    }

    /// A client connected but is over a limit: a connection that only
    /// tells the client why (in the service's protocol) and then wants to
    /// close, with a short deadline. `None` (the default): the listener
    /// resets the connection at once.
    fn refuse(&mut self, reason: Refusal, now_ms: u64) -> Option<Self::Connection> {
        let _ = (reason, now_ms);
        None
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

    /// The connection's deadline passed. Return true when the service has
    /// queued a final answer (e.g. HTTP `408`) and moved its deadline on,
    /// so the listener sends it and closes instead of resetting at once;
    /// false (the default) resets the connection.
    fn expire(&mut self, conn: &mut Self::Connection, now_ms: u64) -> bool {
        let _ = (conn, now_ms);
        false
    }

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

/// The default [`ListenerConfig::ack_delay_ms`]: smoltcp's 10 ms. Measured
/// against `None` (nbdcopy 256 MiB write+flush and read of a raw export,
/// `-cpu max`, user networking, on a host at load 24-26): 19.5/3.0 MiB/s
/// with it, 15.4/3.1 without, within the run-to-run noise of that host
/// (the same kernel gave 12.4-30 MiB/s writes), and the frames the guest
/// sent barely moved (750 578 with, 751 242 without): NBD replies carry
/// the ACKs. Kept, by that figure.
pub const ACK_DELAY_MS: Option<u64> = Some(10);

/// Sizing of a [`Listener`].
#[derive(Clone, Copy, Debug)]
pub struct ListenerConfig {
    /// TCP port.
    pub port: u16,
    /// Connections served at once (sockets beyond the listening ones).
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_per_address: usize,
    /// Connections over a limit kept open at once only to be told so
    /// ([`TcpService::refuse`]); more are reset at once.
    pub max_refusing: usize,
    /// Sockets kept in LISTEN.
    pub listen_backlog: usize,
    /// Half-open connections (SYN received, handshake not completed)
    /// kept at once; beyond, the oldest is dropped.
    pub max_half_open: usize,
    /// A half-open connection is dropped after this long.
    pub half_open_timeout_ms: u64,
    /// Budget charged with every socket's buffers plus
    /// `connection_bytes` (`None`: unbounded).
    pub budget: Option<&'static Budget>,
    /// Most heap one connection's service state holds (its own buffers
    /// and queues, which the service bounds), charged with the socket.
    pub connection_bytes: usize,
    /// Receive buffer per connection, bytes. Above 64 KiB smoltcp uses
    /// window scaling (RFC 7323).
    pub rx_buffer: usize,
    /// Transmit buffer per connection, bytes.
    pub tx_buffer: usize,
    /// Dead-peer detection: a keep-alive probe is sent after this much
    /// silence (RFC 9293 §3.8.4)...
    pub keep_alive_ms: u64,
    /// TCP delayed-ACK time (smoltcp's default is 10 ms); `None` acknowledges
    /// every segment at once.
    pub ack_delay_ms: Option<u64>,
    /// ...and the connection is aborted when the peer has sent nothing
    /// (not even an ACK to a probe) for this long. Must exceed
    /// `keep_alive_ms`, or quiet but healthy connections would be cut.
    pub peer_timeout_ms: u64,
}

impl ListenerConfig {
    /// Defaults sized for bulk transfer: 64 connections (32 per address),
    /// 4 refusals at once, 4 listening, 32 half-open (dropped after 5 s),
    /// 128 KiB receive and 256 KiB transmit buffers, no budget.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            max_connections: 64,
            max_per_address: 32,
            max_refusing: 4,
            listen_backlog: 4,
            max_half_open: 32,
            half_open_timeout_ms: 5_000,
            budget: None,
            connection_bytes: 0,
            rx_buffer: 128 * 1024,
            tx_buffer: 256 * 1024,
            keep_alive_ms: 60_000,
            ack_delay_ms: ACK_DELAY_MS,
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
    /// Connections currently served.
    pub active: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections aborted because their service deadline passed (NBD:
    /// handshake timeout, linger; HTTP: request and idle timeouts).
    pub timed_out: u64,
    /// `max_connections`.
    pub max_connections: usize,
    /// `max_per_address`.
    pub max_per_address: usize,
    /// Half-open connections now.
    pub half_open: usize,
    /// Refusals in progress now.
    pub refusing: usize,
    /// Connections refused because `max_connections` were served.
    pub refused_total: u64,
    /// Connections refused because their address had `max_per_address`.
    pub refused_per_address: u64,
    /// Times a listening socket could not be made because its buffers did
    /// not fit the budget (new clients are reset meanwhile).
    pub refused_budget: u64,
    /// Half-open connections dropped (timeout or over `max_half_open`).
    pub half_open_reaped: u64,
}

impl fmt::Display for ListenerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "port {}: {} active (limit {}, {} per address) {} refusing {} listening {} half-open {} accepted",
            self.port,
            self.active,
            self.max_connections,
            self.max_per_address,
            self.refusing,
            self.listening,
            self.half_open,
            self.accepted
        )?;
        write!(
            f,
            "  refused: {} over total, {} over per-address, {} budget; {} timed out; {} half-open reaped",
            self.refused_total,
            self.refused_per_address,
            self.refused_budget,
            self.timed_out,
            self.half_open_reaped
        )
    }
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
    /// The connection only tells the client it was refused.
    refusing: bool,
    /// The service deadline passed once (counted once in `timed_out`).
    expired: bool,
    /// The client's address, once connected.
    peer: Option<IpAddress>,
    /// When the listener first saw the socket half-open.
    syn_since: Option<u64>,
    /// When the listener first saw the socket aborted, its reset unsent.
    reset_since: Option<u64>,
    /// The socket buffers' share of the budget.
    _charge: Option<Charge<'static>>,
}

/// Serves one TCP port with a [`TcpService`].
pub struct Listener<S: TcpService> {
    config: ListenerConfig,
    service: S,
    slots: Vec<Slot<S::Connection>>,
    stats: ListenerStats,
    /// The last attempt to make a listening socket was refused by the budget.
    budget_short: bool,
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
                max_connections: config.max_connections,
                max_per_address: config.max_per_address,
                ..ListenerStats::default()
            },
            budget_short: false,
            step_cursor: 0,
        }
    }

    /// Whether a new connection from `peer` may be served.
    fn admit(&self, peer: Option<IpAddress>) -> Result<(), Refusal> {
        let served = self
            .slots
            .iter()
            .filter(|s| s.connection.is_some() && !s.refusing);
        let (mut total, mut same) = (0, 0);
        for slot in served {
            total += 1;
            if peer.is_some() && slot.peer == peer {
                same += 1;
            }
        }
        if total >= self.config.max_connections {
            Err(Refusal::Total {
                limit: self.config.max_connections,
            })
        } else if same >= self.config.max_per_address {
            Err(Refusal::PerAddress {
                limit: self.config.max_per_address,
            })
        } else {
            Ok(())
        }
    }

    /// Drops the oldest half-open sockets (past the minimum age) until
    /// fewer than `max_half_open` remain, so listening sockets can be made
    /// again (`replenish` makes none at `max_half_open`).
    fn evict_half_open(&mut self, sockets: &mut SocketSet<'static>, now_ms: u64) -> bool {
        let mut work = false;
        loop {
            let half_open = self.slots.iter().enumerate().filter(|(_, s)| {
                s.connection.is_none()
                    && sockets.get::<tcp::Socket>(s.handle).state() == tcp::State::SynReceived
            });
            let mut count = 0;
            let mut oldest: Option<(usize, u64)> = None;
            for (index, slot) in half_open {
                count += 1;
                let since = slot.syn_since.unwrap_or(u64::MAX);
                if oldest.is_none_or(|(_, t)| since < t) {
                    oldest = Some((index, since));
                }
            }
            self.stats.half_open = count;
            match oldest {
                Some((index, since))
                    if count >= self.config.max_half_open.max(1)
                        && now_ms.saturating_sub(since) >= HALF_OPEN_MIN_AGE_MS
                        && since != u64::MAX =>
                {
                    self.drop_slot(sockets, index);
                    self.stats.half_open_reaped += 1;
                    work = true;
                }
                _ => return work,
            }
        }
    }

    /// Removes a slot without a connection (and its socket) at once.
    fn drop_slot(&mut self, sockets: &mut SocketSet<'static>, index: usize) {
        let slot = self.slots.swap_remove(index);
        sockets.remove(slot.handle);
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

    fn new_listening_socket(
        &mut self,
        sockets: &mut SocketSet<'static>,
    ) -> Option<(SocketHandle, Option<Charge<'static>>)> {
        let charge = match self.config.budget {
            Some(budget) => {
                let bytes = self
                    .config
                    .rx_buffer
                    .saturating_add(self.config.tx_buffer)
                    .saturating_add(self.config.connection_bytes);
                match budget.charge(bytes) {
                    Ok(charge) => Some(charge),
                    Err(_) => {
                        if !self.budget_short {
                            self.stats.refused_budget += 1;
                            log::warn!(
                                "net: port {}: memory budget full, new connections are refused",
                                self.config.port
                            );
                        }
                        self.budget_short = true;
                        return None;
                    }
                }
            }
            None => None,
        };
        self.budget_short = false;
        let rx = tcp::SocketBuffer::new(vec![0u8; self.config.rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.config.tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        // Responses are written whole by the service; Nagle would only add
        // a delay to the last partial segment of each response.
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(self.config.ack_delay_ms.map(Duration::from_millis));
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
        Some((sockets.add(socket), charge))
    }

    /// Most sockets at once: served, refusing, listening and half-open.
    fn socket_cap(&self) -> usize {
        self.config
            .max_connections
            .saturating_add(self.config.max_refusing)
            .saturating_add(self.config.listen_backlog)
            .saturating_add(self.config.max_half_open)
    }

    /// Half-open sockets now.
    fn count_half_open(&self, sockets: &SocketSet<'static>) -> usize {
        self.slots
            .iter()
            .filter(|s| s.connection.is_none() && !s.closing)
            .filter(|s| sockets.get::<tcp::Socket>(s.handle).state() == tcp::State::SynReceived)
            .count()
    }

    /// Tops up the LISTEN sockets to the backlog, within the socket cap,
    /// and not while `max_half_open` sockets are half-open: a SYN flood
    /// then meets resets (which cost nothing) instead of taking sockets
    /// until the budget is gone, and room comes back as the oldest
    /// half-open sockets are dropped.
    fn replenish(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let cap = self.socket_cap();
        let mut created = false;
        if self.count_half_open(sockets) >= self.config.max_half_open {
            return false;
        }
        while self.stats.listening < self.config.listen_backlog && self.slots.len() < cap {
            let Some((handle, charge)) = self.new_listening_socket(sockets) else {
                break;
            };
            self.slots.push(Slot {
                handle,
                connection: None,
                closing: false,
                refusing: false,
                expired: false,
                peer: None,
                syn_since: None,
                reset_since: None,
                _charge: charge,
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
            let state = sockets.get::<tcp::Socket>(self.slots[index].handle).state();
            let has_peer = sockets
                .get::<tcp::Socket>(self.slots[index].handle)
                .remote_endpoint()
                .is_some();
            match state {
                tcp::State::Listen => {
                    index += 1;
                    continue;
                }
                tcp::State::SynReceived if self.slots[index].connection.is_none() => {
                    let slot = &mut self.slots[index];
                    let since = *slot.syn_since.get_or_insert(now_ms);
                    if now_ms.saturating_sub(since) >= self.config.half_open_timeout_ms {
                        // Nothing to tell a peer that never completed the
                        // handshake: the socket just goes.
                        self.drop_slot(sockets, index);
                        self.stats.half_open_reaped += 1;
                        work = true;
                        continue;
                    }
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
                // RST and leaves the client waiting forever; but a peer
                // whose address never resolves must not pin the socket
                // either, so the wait is bounded.
                tcp::State::Closed
                    if has_peer
                        && now_ms.saturating_sub(
                            *self.slots[index].reset_since.get_or_insert(now_ms),
                        ) < RESET_GRACE_MS =>
                {
                    index += 1;
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    let slot = self.slots.swap_remove(index);
                    if let Some(connection) = slot.connection {
                        self.service.closed(connection);
                        if slot.refusing {
                            self.stats.refusing -= 1;
                        } else {
                            self.stats.active -= 1;
                            counters.connections_active =
                                counters.connections_active.saturating_sub(1);
                        }
                    }
                    sockets.remove(slot.handle);
                    work = true;
                    continue;
                }
                _ => {}
            }
            if self.slots[index].connection.is_none() {
                if self.slots[index].closing {
                    index += 1;
                    continue;
                }
                let endpoint = sockets
                    .get::<tcp::Socket>(self.slots[index].handle)
                    .remote_endpoint();
                let peer = endpoint.map(|e| e.addr);
                work = true;
                match self.admit(peer) {
                    Ok(()) => {
                        let mut connection = self.service.accept(now_ms);
                        if let Some(remote) = endpoint {
                            self.service.remote(&mut connection, remote.into());
                        }
                        let slot = &mut self.slots[index];
                        slot.connection = Some(connection);
                        slot.peer = peer;
                        self.stats.active += 1;
                        self.stats.accepted += 1;
                        counters.connections_accepted += 1;
                        counters.connections_active += 1;
                    }
                    Err(reason) => {
                        match reason {
                            Refusal::Total { .. } => self.stats.refused_total += 1,
                            Refusal::PerAddress { .. } => self.stats.refused_per_address += 1,
                        }
                        let mut refusal = if self.stats.refusing < self.config.max_refusing {
                            self.service.refuse(reason, now_ms)
                        } else {
                            None
                        };
                        if let (Some(connection), Some(remote)) = (refusal.as_mut(), endpoint) {
                            self.service.remote(connection, remote.into());
                        }
                        let slot = &mut self.slots[index];
                        slot.peer = peer;
                        match refusal {
                            Some(connection) => {
                                slot.connection = Some(connection);
                                slot.refusing = true;
                                self.stats.refusing += 1;
                            }
                            None => {
                                sockets.get_mut::<tcp::Socket>(slot.handle).abort();
                                slot.closing = true;
                                index += 1;
                                continue;
                            }
                        }
                    }
                }
            }
            let slot = &mut self.slots[index];
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            // Invariant: set just above or on an earlier poll.
            let Some(conn) = slot.connection.as_mut() else {
                index += 1;
                continue;
            };
            if let Some(deadline) = self.service.deadline(conn) {
                if now_ms >= deadline {
                    if !slot.expired && !slot.refusing {
                        self.stats.timed_out += 1;
                    }
                    slot.expired = true;
                    let answered = !slot.closing
                        && self.service.expire(conn, now_ms)
                        && self.service.deadline(conn).is_none_or(|d| d > now_ms);
                    if !answered {
                        // RST goes out on the next egress; the slot is
                        // reaped once smoltcp reports CLOSED.
                        socket.abort();
                        slot.closing = true;
                        work = true;
                        index += 1;
                        continue;
                    }
                    work = true;
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
        work |= self.evict_half_open(sockets, now_ms);
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
