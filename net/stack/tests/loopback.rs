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
            411,
        ),
        (
            "PUT /bench/sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
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
    // Every test client has the same address, and all 64 SYNs arrive at
    // once (beyond max_half_open they would be reset).
    config.max_per_address = 64;
    config.max_half_open = 64;
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
    h.send(
        handle,
        b"PUT /bench/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    );
    let deadline = h.stack.poll(h.now).next_poll_ms;
    assert!(deadline.is_some());
    // A stalled body cannot be answered (its framing is unknown): reset.
    h.now += daxbox_netstack::http::HEAD_TIMEOUT_MS + 1;
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
    h.send(
        handle,
        b"PUT /bench/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    );
    // Let the server acknowledge the bytes: the client then has nothing
    // to retransmit, so only the server's RST can tell it the news.
    for _ in 0..50 {
        h.step();
    }
    assert_eq!(h.socket(handle).state(), tcp::State::Established);
    assert_eq!(h.socket(handle).send_queue(), 0, "request acknowledged");
    // The deadline passes while the device has no transmit buffer: the
    // abort's RST cannot go out in that poll, nor in the next ones.
    h.now += daxbox_netstack::http::HEAD_TIMEOUT_MS + 1;
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

/// A TCP SYN to port `port` of the stack from 10.0.2.2:`src_port`, as a
/// flooder sends it: the handshake is never completed.
fn syn_frame(src_port: u16, port: u16) -> Vec<u8> {
    use daxbox_netstack::smoltcp::phy::ChecksumCapabilities;
    use daxbox_netstack::smoltcp::wire::{
        IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let src = Ipv4Address::new(10, 0, 2, 2);
    let tcp = TcpRepr {
        src_port,
        dst_port: port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: SERVER,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut bytes = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut bytes[..]),
        &ChecksumCapabilities::default(),
    );
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut bytes[ip.buffer_len()..]),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(SERVER),
        &ChecksumCapabilities::default(),
    );
    frame_to_us(0x0800, &bytes)
}

/// Slowloris: a request head trickled one byte a second. The head
/// deadline counts from the accept and is not restarted by each byte: the
/// client gets `408` and the connection closes within it.
#[test]
fn a_trickled_request_head_gets_408_at_the_head_deadline() {
    let mut h = Harness::http();
    let handle = h.connect(80);
    for _ in 0..5 {
        h.step();
    }
    let started = h.now;
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut received = Vec::new();
    for byte in head {
        if h.socket(handle).can_send() {
            h.socket(handle).send_slice(&[*byte]).unwrap();
        }
        h.now += 1000;
        for _ in 0..5 {
            h.step();
        }
        let socket = h.socket(handle);
        while socket.can_recv() {
            socket
                .recv(|buf| {
                    received.extend_from_slice(buf);
                    (buf.len(), ())
                })
                .unwrap();
        }
        if !received.is_empty() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "no 408 for a trickled head: {text:?}"
    );
    assert!(text.contains("Connection: close\r\n"), "{text}");
    let waited = h.now - started;
    assert!(
        waited <= daxbox_netstack::http::HEAD_TIMEOUT_MS + 2000,
        "408 after {waited} ms"
    );
    for _ in 0..20 {
        h.step();
    }
    assert!(!h.socket(handle).may_recv(), "the server closed its side");
    h.socket(handle).close();
    for _ in 0..20 {
        h.step();
    }
    let stats = h.stack.status().listeners[0];
    assert_eq!((stats.timed_out, stats.active), (1, 0), "{stats}");
    // The service goes on.
    assert_eq!(
        h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

/// Over `max_connections` (or `max_per_address`), a new client gets `503`
/// with `Retry-After` and a close; the connections already served go on.
#[test]
fn over_the_connection_limits_a_client_gets_503_and_the_others_go_on() {
    for (total, per_address, expect_total) in [(3, 8, true), (8, 3, false)] {
        let mut config = ListenerConfig::new(80);
        config.max_connections = total;
        config.max_per_address = per_address;
        let mut h = Harness::new(config);
        let served: Vec<_> = (0..3).map(|_| h.connect(80)).collect();
        for &handle in &served {
            h.send(handle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(h.read_response(handle).status, 200);
        }
        let refused = h.connect(80);
        h.send(refused, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let bytes = h.read_until(refused, |_| false);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Retry-After: 5\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        let why = if expect_total {
            "too many connections (server limit 3)"
        } else {
            "too many connections from this address (limit 3)"
        };
        assert!(text.contains(why), "{text}");
        // The served connections still answer.
        for &handle in &served {
            h.send(handle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(h.read_response(handle).status, 200);
        }
        let stats = h.stack.status().listeners[0];
        assert_eq!(stats.active, 3, "{stats}");
        assert_eq!(
            (stats.refused_total, stats.refused_per_address),
            if expect_total { (1, 0) } else { (0, 1) },
            "{stats}"
        );
        // A served connection closes: a new client is served again.
        h.socket(served[0]).close();
        for _ in 0..50 {
            h.step();
        }
        assert_eq!(
            h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
            200
        );
    }
}

/// More refusals at once than `max_refusing`: the rest are reset at once,
/// so refusing cannot itself pin sockets.
#[test]
fn refusals_beyond_max_refusing_are_reset() {
    let mut config = ListenerConfig::new(80);
    config.max_connections = 1;
    config.max_refusing = 2;
    let mut h = Harness::new(config);
    let served = h.connect(80);
    for _ in 0..20 {
        h.step();
    }
    let others: Vec<_> = (0..6).map(|_| h.connect(80)).collect();
    for _ in 0..50 {
        h.step();
    }
    let stats = h.stack.status().listeners[0];
    assert_eq!(stats.refused_total, 6, "{stats}");
    assert!(stats.refusing <= 2, "{stats}");
    let closed = others.iter().filter(|&&o| !h.socket(o).may_send()).count();
    assert!(closed >= 4, "{closed} of 6 refused connections closed");
    assert_eq!(h.socket(served).state(), tcp::State::Established);
}

/// A SYN flood (handshakes never completed) does not lock clients out:
/// half-open sockets beyond `max_half_open` and older than the minimum age
/// are dropped, all of them after `half_open_timeout_ms`, and a real
/// client is served meanwhile and after.
#[test]
fn half_open_connections_are_reaped() {
    let mut h = Harness::http();
    // A client known to the stack before the flood (its address resolved,
    // as a real client's ARP request resolves it): smoltcp rate-limits
    // neighbour discovery as a whole, and the SYN-ACKs to the spoofed
    // sources keep asking.
    assert_eq!(
        h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    for i in 0..200 {
        h.stack
            .device_mut()
            .queue
            .push_back(syn_frame(20000 + i, 80));
    }
    for _ in 0..5 {
        h.step();
    }
    let stats = h.stack.status().listeners[0];
    assert!(stats.half_open > 0, "{stats}");
    // No more sockets than max_half_open plus the backlog take SYNs.
    assert!(stats.half_open <= 32 + 4, "{stats}");
    // Past the minimum age, the flood is trimmed to max_half_open and a
    // real client gets in.
    h.now += 300;
    for _ in 0..5 {
        h.step();
    }
    let stats = h.stack.status().listeners[0];
    assert!(stats.half_open < 32, "{stats}");
    assert!(stats.listening > 0, "{stats}");
    // Well before the 5 s timeout (1 ms per step).
    let real = h.connect(80);
    for _ in 0..200 {
        h.step();
        if h.socket(real).state() == tcp::State::Established {
            break;
        }
    }
    assert_eq!(
        h.socket(real).state(),
        tcp::State::Established,
        "{}",
        h.stack.status()
    );
    h.send(real, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.read_response(real).status, 200);
    // After the timeout, none is left.
    h.now += 5_000;
    for _ in 0..5 {
        h.step();
    }
    let stats = h.stack.status().listeners[0];
    assert_eq!(stats.half_open, 0, "{stats}");
    assert!(stats.half_open_reaped > 0, "{stats}");
    assert_eq!(
        h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

/// Socket buffers are charged to the listener's budget: when a socket does
/// not fit, it is not made (new clients are reset, counted), and closing a
/// connection gives its share back.
#[test]
fn socket_buffers_are_charged_to_the_budget() {
    static BUDGET: daxbox_budget::Budget = daxbox_budget::Budget::new("test", usize::MAX);
    let mut config = ListenerConfig::new(80);
    config.rx_buffer = 16 * 1024;
    config.tx_buffer = 16 * 1024;
    config.connection_bytes = 1024;
    config.listen_backlog = 1;
    // Room for exactly two sockets.
    BUDGET.set_limit(2 * (33 * 1024));
    config.budget = Some(&BUDGET);
    let mut h = Harness::new(config);
    assert_eq!(BUDGET.stats().used, 33 * 1024, "the listening socket");
    let first = h.connect(80);
    h.send(first, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.read_response(first).status, 200);
    assert_eq!(BUDGET.stats().used, 2 * 33 * 1024);
    let second = h.connect(80);
    h.send(second, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.read_response(second).status, 200);
    // No room for a third listening socket: the next client is reset.
    let third = h.connect(80);
    for _ in 0..20 {
        h.step();
    }
    assert_eq!(h.socket(third).state(), tcp::State::Closed);
    let stats = h.stack.status().listeners[0];
    assert_eq!((stats.refused_budget, stats.listening), (1, 0), "{stats}");
    h.socket(first).close();
    for _ in 0..50 {
        h.step();
    }
    assert_eq!(
        h.get("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    drop(h);
    assert_eq!(BUDGET.stats().used, 0, "every charge given back");
}

/// A connection opened ahead of use (as browsers do) may wait for its first
/// byte longer than a head may take once it started: 30 s, then `408`.
#[test]
fn a_connection_without_a_first_byte_is_kept_30_s() {
    let mut h = Harness::http();
    let handle = h.connect(80);
    for _ in 0..5 {
        h.step();
    }
    h.now += daxbox_netstack::http::HEAD_TIMEOUT_MS + 1000;
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(h.socket(handle).state(), tcp::State::Established);
    assert!(!h.socket(handle).can_recv(), "nothing sent yet");
    h.now += daxbox_netstack::http::FIRST_BYTE_TIMEOUT_MS;
    let bytes = h.read_until(handle, |b| parse_response(b).is_some());
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
}
