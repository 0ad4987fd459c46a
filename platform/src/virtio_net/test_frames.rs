//! Frames for the NIC and offload unit tests, built with smoltcp's wire
//! types.

use std::vec;
use std::vec::Vec;

/// An Ethernet (to `dst_mac`) + IPv4 + TCP frame from 198.18.0.1 to .2
/// with `payload` and a correct TCP checksum, or (`checksummed` false) a
/// zero one, as smoltcp leaves it without transmit checksums.
pub(crate) fn tcp_frame(dst_mac: [u8; 6], payload: &[u8], checksummed: bool) -> Vec<u8> {
    use smoltcp::phy::{Checksum, ChecksumCapabilities};
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let (src, dst) = (
        Ipv4Address::new(198, 18, 0, 1),
        Ipv4Address::new(198, 18, 0, 2),
    );
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 10809,
        control: TcpControl::Psh,
        seq_number: TcpSeqNumber(1),
        ack_number: Some(TcpSeqNumber(2)),
        window_len: 512,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let mut caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    if !checksummed {
        caps.tcp = Checksum::None;
    }
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut frame[34..]),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    frame
}
