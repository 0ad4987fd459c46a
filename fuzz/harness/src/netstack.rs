//! `netstack_poll`: `NetStack::poll` (`net/stack`) with the HTTP service
//! and the NBD engine (over [`crate::nbd_session::CheckedBackend`])
//! listening, over a fake Ethernet device that loops every transmitted
//! frame back (like `net/stack/tests/loopback.rs`), with smoltcp client
//! sockets on the same interface and frames injected, altered, dropped,
//! duplicated and reordered by the input. Altered and injected frames get
//! their IPv4/TCP/UDP/ICMP checksums recomputed (unless the op says not
//! to), so the changes reach the protocol code behind the checksums.
//!
//! Input: a list of operations (see [`run`]); the stack is polled after
//! each.
//!
//! Checked: no panic; polls are bounded; the read-only export is never
//! written (the backend asserts it).

use std::collections::VecDeque;

use daxbox_netstack::http::{Bench, HttpService};
use daxbox_netstack::smoltcp::iface::SocketHandle;
use daxbox_netstack::smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use daxbox_netstack::smoltcp::socket::tcp;
use daxbox_netstack::smoltcp::time::Instant;
use daxbox_netstack::smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Address, Ipv4Cidr,
    Ipv4Packet, TcpPacket, UdpPacket,
};
use daxbox_netstack::{IpMode, Listener, ListenerConfig, NetConfig, NetStack};

use crate::input::Input;
use crate::nbd_session::{config_for, standard_exports, CheckedBackend, EngineService};

const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const PORTS: [u16; 2] = [80, 10809];
/// Frames kept in flight at most (the fake NIC's ring).
const MAX_QUEUE: usize = 256;

/// The fake NIC: a queue of frames; what is transmitted is received.
#[derive(Default)]
pub struct Wire {
    queue: VecDeque<Vec<u8>>,
}

/// Receive token.
pub struct WireRx(Vec<u8>);
/// Transmit token.
pub struct WireTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        if self.0.len() < MAX_QUEUE {
            self.0.push_back(frame);
        }
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
        Some(WireTx(&mut self.queue))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// Recomputes the checksums of an Ethernet/IPv4 frame, as far as it parses.
pub fn fix_checksums(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
        return;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let protocol = ip.next_header();
    ip.fill_checksum();
    let header = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let buffer = ip.into_inner();
    let Some(payload) = buffer.get_mut(header..total.min(buffer.len()).max(header)) else {
        return;
    };
    match protocol {
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(payload) {
                tcp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(payload) {
                udp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Icmp => {
            if let Ok(mut icmp) = Icmpv4Packet::new_checked(payload) {
                icmp.fill_checksum();
            }
        }
        _ => {}
    }
}

/// The fuzz target. Operations (first byte of each, low 3 bits):
/// 0 connect a client to HTTP or NBD, 1 a client sends bytes, 2 a client
/// reads, 3 a client closes or aborts, 4 the clock moves, 5 the next
/// queued frame is altered, 6 a frame is dropped/duplicated/reordered,
/// 7 a frame from the input is injected.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let net = NetConfig {
        mac: MAC,
        ip: IpMode::Static {
            address: Ipv4Cidr::new(SERVER, 24),
            gateway: Some(Ipv4Address::new(10, 0, 2, 2)),
        },
        random_seed: u64::from(input.u8()),
    };
    let mut now: u64 = 1;
    let mut stack = NetStack::new(Wire::default(), net, now);
    let small = |port| ListenerConfig {
        max_connections: 3,
        listen_backlog: 2,
        rx_buffer: 8 * 1024,
        tx_buffer: 8 * 1024,
        ..ListenerConfig::new(port)
    };
    stack
        .add_listener(
            Listener::new(small(PORTS[0]), HttpService::new("fuzz", 0, Bench::On)).boxed(),
        )
        .expect("http listener");
    let config = config_for(1);
    let backend = CheckedBackend::new(standard_exports(), config.max_block_size as usize, 0);
    stack
        .add_listener(Listener::new(small(PORTS[1]), EngineService::new(backend, config)).boxed())
        .expect("nbd listener");

    let mut clients: Vec<SocketHandle> = Vec::new();
    let mut next_port = 40000u16;
    let mut scratch = vec![0u8; 16 * 1024];
    for _ in 0..96 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let pick = |clients: &Vec<SocketHandle>, n: u8| {
            (!clients.is_empty()).then(|| clients[usize::from(n) % clients.len()])
        };
        match op & 7 {
            0 if clients.len() < 6 => {
                let (iface, sockets) = stack.interface_and_sockets();
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; 16 * 1024]),
                    tcp::SocketBuffer::new(vec![0; 16 * 1024]),
                );
                let port = PORTS[usize::from(op >> 3) % 2];
                next_port = next_port.wrapping_add(1).max(1024);
                if socket
                    .connect(iface.context(), (IpAddress::Ipv4(SERVER), port), next_port)
                    .is_ok()
                {
                    clients.push(sockets.add(socket));
                }
            }
            1 => {
                let len = usize::from(input.u16()) % 4096;
                let bytes = input.bytes(len);
                if let Some(handle) = pick(&clients, op >> 3) {
                    let socket = stack
                        .interface_and_sockets()
                        .1
                        .get_mut::<tcp::Socket>(handle);
                    if socket.can_send() {
                        let _ = socket.send_slice(bytes);
                    }
                }
            }
            2 => {
                if let Some(handle) = pick(&clients, op >> 3) {
                    let socket = stack
                        .interface_and_sockets()
                        .1
                        .get_mut::<tcp::Socket>(handle);
                    while socket.can_recv() {
                        match socket.recv_slice(&mut scratch) {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                }
            }
            3 => {
                if let Some(handle) = pick(&clients, op >> 4) {
                    let socket = stack
                        .interface_and_sockets()
                        .1
                        .get_mut::<tcp::Socket>(handle);
                    if op & 8 != 0 {
                        socket.abort();
                    } else {
                        socket.close();
                    }
                }
            }
            4 => {
                now += match op >> 3 {
                    0 => 200_000,
                    1 => 20_000,
                    n => u64::from(n) * 50,
                };
            }
            5 => {
                let at = usize::from(input.u16());
                let value = input.u8();
                if let Some(frame) = stack.device_mut().queue.front_mut() {
                    if !frame.is_empty() {
                        let at = at % frame.len();
                        frame[at] ^= value.max(1);
                        if op & 8 == 0 {
                            fix_checksums(frame);
                        }
                    }
                }
            }
            6 => {
                let queue = &mut stack.device_mut().queue;
                match op >> 3 & 3 {
                    0 => {
                        queue.pop_front();
                    }
                    1 => {
                        if let Some(frame) = queue.front().cloned() {
                            if queue.len() < MAX_QUEUE {
                                queue.push_back(frame);
                            }
                        }
                    }
                    _ => {
                        if let Some(frame) = queue.pop_front() {
                            queue.push_back(frame);
                        }
                    }
                }
            }
            7 => {
                let len = usize::from(input.u16()) % 1515;
                let mut frame = input.bytes(len).to_vec();
                if op & 8 == 0 {
                    fix_checksums(&mut frame);
                }
                let queue = &mut stack.device_mut().queue;
                if queue.len() < MAX_QUEUE {
                    queue.push_front(frame);
                }
            }
            _ => {}
        }
        // Let the traffic settle a little: a few polls, the clock moving.
        for _ in 0..4 {
            stack.poll(now);
            now += 1;
        }
    }
    let _ = stack.status();
}
