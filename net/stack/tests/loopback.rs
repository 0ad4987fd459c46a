//! End-to-end tests: smoltcp client sockets on the same interface talk to
//! the HTTP service through `Loopback`, with a fake millisecond clock.

use daxbox_netstack::http::{Bench, HttpService};
use daxbox_netstack::smoltcp::iface::SocketHandle;
use daxbox_netstack::smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use daxbox_netstack::smoltcp::socket::tcp;
use daxbox_netstack::smoltcp::time::Instant;
use daxbox_netstack::smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Cidr};
use daxbox_netstack::{IpMode, Listener, ListenerConfig, NetConfig, NetStack, TcpService};
use std::collections::VecDeque;

const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);

/// Like smoltcp's `Loopback` (every transmitted frame comes back), plus
/// frames injected by the test, with an Ethernet MTU.
#[derive(Default)]
struct Wire {
    queue: VecDeque<Vec<u8>>,
    /// No transmit buffer free (a full NIC queue): `transmit` says no.
    tx_full: bool,
}

struct WireRx(Vec<u8>);
struct WireTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

impl Device for Wire {
    type RxToken<'a> = WireRx;
    type TxToken<'a> = WireTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(WireRx, WireTx<'_>)> {
        let frame = self.queue.pop_front()?;
        Some((WireRx(frame), WireTx(&mut self.queue)))
    }

    fn transmit(&mut self, _: Instant) -> Option<WireTx<'_>> {
        if self.tx_full {
            return None;
        }
        Some(WireTx(&mut self.queue))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Harness {
    stack: NetStack<Wire>,
    now: u64,
    next_port: u16,
}

impl Harness {
    fn new(config: ListenerConfig) -> Self {
        let net = NetConfig {
            mac: MAC,
            ip: IpMode::Static {
                address: Ipv4Cidr::new(SERVER, 24),
                gateway: Some(Ipv4Address::new(10, 0, 2, 2)),
            },
            random_seed: 7,
        };
        let mut stack = NetStack::new(Wire::default(), net, 0);
        let service = HttpService::new("test", 0, Bench::On);
        stack
            .add_listener(Listener::new(config, service).boxed())
            .unwrap();
        Self {
            stack,
            now: 1,
            next_port: 40000,
        }
    }

    fn http() -> Self {
        Self::new(ListenerConfig::new(80))
    }

    fn step(&mut self) {
        self.stack.poll(self.now);
        self.now += 1;
    }

    fn connect(&mut self, port: u16) -> SocketHandle {
        let local = self.next_port;
        self.next_port += 1;
        let (iface, sockets) = self.stack.interface_and_sockets();
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        socket
            .connect(iface.context(), (IpAddress::Ipv4(SERVER), port), local)
            .unwrap();
        sockets.add(socket)
    }

    fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.stack
            .interface_and_sockets()
            .1
            .get_mut::<tcp::Socket>(handle)
    }

    /// Sends all of `data` (polling while the buffer is full).
    fn send(&mut self, handle: SocketHandle, mut data: &[u8]) {
        for _ in 0..100_000 {
            if data.is_empty() {
                return;
            }
            let socket = self.socket(handle);
            if socket.can_send() {
                let n = socket.send_slice(data).unwrap();
                data = &data[n..];
            }
            self.step();
        }
        panic!("send did not finish");
    }

    /// Reads until `done(received)` or the peer closes.
    fn read_until(&mut self, handle: SocketHandle, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut received = Vec::new();
        for _ in 0..100_000 {
            self.step();
            let socket = self.socket(handle);
            while socket.can_recv() {
                socket
                    .recv(|buf| {
                        received.extend_from_slice(buf);
                        (buf.len(), ())
                    })
                    .unwrap();
            }
            if done(&received) || !socket.may_recv() {
                return received;
            }
        }
        panic!(
            "no complete response: {:?}",
            String::from_utf8_lossy(&received)
        );
    }

    fn read_response(&mut self, handle: SocketHandle) -> HttpResponse {
        let bytes = self.read_until(handle, |b| parse_response(b).is_some());
        parse_response(&bytes)
            .unwrap_or_else(|| panic!("incomplete: {:?}", String::from_utf8_lossy(&bytes)))
    }

    fn get(&mut self, request: &str) -> HttpResponse {
        let handle = self.connect(80);
        self.send(handle, request.as_bytes());
        let response = self.read_response(handle);
        self.socket(handle).close();
        for _ in 0..50 {
            self.step();
        }
        response
    }
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Parses one complete response (head + Content-Length body) from `bytes`.
fn parse_response(bytes: &[u8]) -> Option<HttpResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let body = bytes.get(end + 4..end + 4 + length)?.to_vec();
    Some(HttpResponse { status, head, body })
}

#[test]
fn healthz() {
    let mut h = Harness::http();
    for _ in 0..1000 {
        h.step();
    }
    let r = h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        "ok daxbox test uptime=1\n"
    );
    let status = h.stack.status();
    assert_eq!(status.counters.connections_accepted, 1);
    assert!(status.counters.rx_packets >= 4, "{status}");
    assert!(status.counters.tx_packets >= 4, "{status}");
}

#[test]
fn bench_bytes_streams_the_pattern() {
    let mut h = Harness::http();
    let n = 3 * 1024 * 1024 + 17;
    let r = h.get(&format!(
        "GET /bench/bytes?n={n} HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().enumerate().all(|(i, b)| *b == i as u8));
    let r = h.get("GET /bench/bytes HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 400);
    let handle = h.connect(80);
    h.send(
        handle,
        b"HEAD /bench/bytes?n=100 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let bytes = h.read_until(handle, |b| b.ends_with(b"\r\n\r\n"));
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("Content-Length: 100\r\n"), "{text}");
    for _ in 0..50 {
        h.step();
    }
    assert_eq!(h.socket(handle).recv_queue(), 0, "HEAD has no body");
}

#[test]
fn sink_counts_body_and_keeps_alive() {
    let mut h = Harness::http();
    let handle = h.connect(80);
    let body_len = 2 * 1024 * 1024 + 3;
    let mut request =
        format!("PUT /bench/sink HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\nExpect: 100-continue\r\n\r\n")
            .into_bytes();
    request.extend(std::iter::repeat_n(0xAB, body_len));
    h.send(handle, &request);
    let bytes = h.read_until(handle, |b| {
        String::from_utf8_lossy(b).contains(&format!("received {body_len}\n"))
    });
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    // Same connection, next request.
    h.send(handle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.read_response(handle);
    assert_eq!(r.status, 200);
    assert_eq!(h.stack.status().counters.connections_accepted, 1);
}

#[test]
fn pipelined_requests_answered_in_order() {
    let mut h = Harness::http();
    let handle = h.connect(80);
    h.send(
        handle,
        b"GET /bench/bytes?n=5 HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let bytes = h.read_until(handle, |_| false);
    let text = String::from_utf8_lossy(&bytes);
    let statuses: Vec<_> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{text}");
    assert!(text.ends_with("uptime=0\n"), "{text}");
}

#[test]
fn garbage_gets_400_and_close() {
    let mut h = Harness::http();
    for (request, status) in [
        ("hello\r\n\r\n", 400),
        ("GET /healthz HTTP/1.1\r\n\r\n", 400),
        ("GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("GET healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
            400,
        ),
        (
            "PUT /bench/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            "PUT /bench/sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
        ("DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ] {
        let r = h.get(request);
        assert_eq!(r.status, status, "{request:?} -> {}", r.head);
    }
    // An endless header line hits the size limit.
    let handle = h.connect(80);
    let mut request = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 20_000));
    h.send(handle, &request);
    let bytes = h.read_until(handle, |_| false);
    assert!(
        bytes.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Still serving.
    assert_eq!(
        h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

#[test]
fn many_connections_at_once() {
    let mut config = ListenerConfig::new(80);
    config.rx_buffer = 16 * 1024;
    config.tx_buffer = 16 * 1024;
    let mut h = Harness::new(config);
    let handles: Vec<_> = (0..64).map(|_| h.connect(80)).collect();
    for _ in 0..200 {
        h.step();
    }
    assert!(
        h.stack.status().listeners[0].active >= 64,
        "{}",
        h.stack.status()
    );
    for (i, &handle) in handles.iter().enumerate() {
        let request = format!(
            "GET /bench/bytes?n={} HTTP/1.1\r\nHost: x\r\n\r\n",
            1000 + i
        );
        h.send(handle, request.as_bytes());
    }
    for (i, &handle) in handles.iter().enumerate() {
        let r = h.read_response(handle);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1000 + i);
    }
    for &handle in &handles {
        h.socket(handle).close();
    }
    for _ in 0..500 {
        h.step();
    }
    let stats = h.stack.status().listeners[0];
    assert_eq!(stats.active, 0);
    assert_eq!(stats.accepted, 64);
    assert_eq!(stats.listening, 4);
}

#[test]
fn idle_connection_times_out() {
    let mut h = Harness::http();
    let handle = h.connect(80);
    h.send(handle, b"GET /heal");
    let deadline = h.stack.poll(h.now).next_poll_ms;
    assert!(deadline.is_some());
    h.now += daxbox_netstack::http::REQUEST_TIMEOUT_MS + 1;
    for _ in 0..10 {
        h.step();
    }
    assert_eq!(h.socket(handle).state(), tcp::State::Closed);
    assert_eq!(h.stack.status().listeners[0].timed_out, 1);
    assert_eq!(h.stack.status().listeners[0].active, 0);
}

#[test]
fn timed_out_connection_gets_its_reset_even_when_the_nic_was_full() {
    let mut h = Harness::http();
    let handle = h.connect(80);
    h.send(handle, b"GET /heal");
    // Let the server acknowledge the bytes: the client then has nothing
    // to retransmit, so only the server's RST can tell it the news.
    for _ in 0..50 {
        h.step();
    }
    assert_eq!(h.socket(handle).state(), tcp::State::Established);
    assert_eq!(h.socket(handle).send_queue(), 0, "request acknowledged");
    // The deadline passes while the device has no transmit buffer: the
    // abort's RST cannot go out in that poll, nor in the next ones.
    h.now += daxbox_netstack::http::REQUEST_TIMEOUT_MS + 1;
    h.stack.device_mut().tx_full = true;
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(h.stack.status().listeners[0].timed_out, 1);
    h.stack.device_mut().tx_full = false;
    for _ in 0..10 {
        h.step();
    }
    assert_eq!(
        h.socket(handle).state(),
        tcp::State::Closed,
        "the client must get the RST once the device has room"
    );
    assert_eq!(h.stack.status().listeners[0].active, 0);
}

/// A trivial echo service proves the framework is service-agnostic.
struct Echo;
impl TcpService for Echo {
    type Connection = Vec<u8>;
    fn accept(&mut self, _now_ms: u64) -> Vec<u8> {
        Vec::new()
    }
    fn receive(&mut self, conn: &mut Vec<u8>, data: &[u8], _now_ms: u64) -> usize {
        let n = data.len().min(1024 - conn.len());
        conn.extend_from_slice(&data[..n]);
        n
    }
    fn produce(&mut self, conn: &mut Vec<u8>, out: &mut [u8], _now_ms: u64) -> usize {
        let n = conn.len().min(out.len());
        out[..n].copy_from_slice(&conn[..n]);
        conn.drain(..n);
        n
    }
    fn wants_close(&self, _conn: &Vec<u8>) -> bool {
        false
    }
    fn deadline(&self, _conn: &Vec<u8>) -> Option<u64> {
        None
    }
}

#[test]
fn second_service_on_another_port() {
    let mut h = Harness::http();
    let echo = Listener::new(ListenerConfig::new(7), Echo);
    h.stack.add_listener(echo.boxed()).unwrap();
    assert!(h
        .stack
        .add_listener(Listener::new(ListenerConfig::new(7), Echo).boxed())
        .is_err());
    let handle = h.connect(7);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    h.send(handle, &data);
    let got = h.read_until(handle, |b| b.len() >= data.len());
    assert_eq!(got, data);
    // Client closes: the server side closes too and frees the socket.
    h.socket(handle).close();
    for _ in 0..100 {
        h.step();
    }
    assert_eq!(h.socket(handle).state(), tcp::State::TimeWait);
    assert_eq!(h.stack.status().listeners[1].active, 0);
}

#[test]
fn answers_ping() {
    use daxbox_netstack::smoltcp::socket::icmp;
    use daxbox_netstack::smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};
    let mut h = Harness::http();
    let (_, sockets) = h.stack.interface_and_sockets();
    let mut socket = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    );
    socket.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let handle = sockets.add(socket);
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"daxbox",
    };
    let socket = sockets.get_mut::<icmp::Socket>(handle);
    let buffer = socket
        .send(request.buffer_len(), IpAddress::Ipv4(SERVER))
        .unwrap();
    request.emit(
        &mut Icmpv4Packet::new_unchecked(buffer),
        &Default::default(),
    );
    for _ in 0..20 {
        h.step();
    }
    let (_, sockets) = h.stack.interface_and_sockets();
    let socket = sockets.get_mut::<icmp::Socket>(handle);
    // The socket also sees its own request (same ident) on this wire.
    let mut replies = 0;
    while let Ok((packet, from)) = socket.recv() {
        assert_eq!(from, IpAddress::Ipv4(SERVER));
        let packet = Icmpv4Packet::new_checked(packet).unwrap();
        let repr = Icmpv4Repr::parse(&packet, &Default::default()).unwrap();
        if let Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        } = repr
        {
            assert_eq!((ident, seq_no, data), (0x1234, 1, &b"daxbox"[..]));
            replies += 1;
        }
    }
    assert_eq!(replies, 1);
}

/// A frame addressed to the stack: Ethernet header to our MAC, then `payload`.
fn frame_to_us(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = MAC.to_vec();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Garbage frames (random, truncated IPv4/TCP to port 80, oversize)
    /// neither panic the stack nor stop it serving.
    #[test]
    fn malformed_frames_do_not_stop_service(
        frames in proptest::collection::vec(
            (0u8..4, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)),
            1..40,
        )
    ) {
        let mut h = Harness::http();
        for (kind, bytes) in &frames {
            let frame = match kind {
                0 => bytes.clone(),
                1 => frame_to_us(0x0800, bytes),
                2 => {
                    // IPv4 header to us with a TCP protocol byte, then junk.
                    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 2, 10, 0, 2, 15];
                    ip.extend_from_slice(&[0x9c, 0x40, 0, 80]);
                    ip.extend_from_slice(bytes);
                    frame_to_us(0x0800, &ip)
                }
                _ => {
                    // Oversize: beyond the 1514-byte Ethernet maximum.
                    let mut big = frame_to_us(0x0800, bytes);
                    big.resize(9000, 0xAA);
                    big
                }
            };
            h.stack.device_mut().queue.push_back(frame);
        }
        for _ in 0..5 {
            h.step();
        }
        let r = h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        proptest::prop_assert_eq!(r.status, 200);
    }
}

/// A quiet connection (no data in flight) outlives the ACK timeout: NBD
/// clients sit idle for long stretches and must not be cut off.
#[test]
fn idle_connection_without_deadline_survives() {
    let mut h = Harness::http();
    h.stack
        .add_listener(Listener::new(ListenerConfig::new(7), Echo).boxed())
        .unwrap();
    let handle = h.connect(7);
    h.send(handle, b"ping");
    assert_eq!(h.read_until(handle, |b| b.len() >= 4), b"ping");
    // Ten minutes of silence, polled once a second.
    for _ in 0..600 {
        h.now += 1000;
        h.step();
    }
    assert_eq!(h.socket(handle).state(), tcp::State::Established);
    h.send(handle, b"pong");
    assert_eq!(h.read_until(handle, |b| b.len() >= 4), b"pong");
    assert_eq!(h.stack.status().listeners[1].active, 1);
}
