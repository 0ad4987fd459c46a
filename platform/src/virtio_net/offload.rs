//! Checksum offload through the virtio-net header (virtio 1.2 §5.1.6).
//!
//! Transmit (`VIRTIO_NET_F_CSUM`): smoltcp leaves the TCP checksum at 0;
//! [`offload_tcp_checksum`] stores the IPv4 pseudo-header sum there (not
//! complemented, as Linux does for `CHECKSUM_PARTIAL`) and returns
//! `csum_start`/`csum_offset`, and [`write_header`] sets
//! `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the device (the host's stack, for tap)
//! sums from `csum_start` to the end and stores the complement.
//!
//! Receive (`VIRTIO_NET_F_GUEST_CSUM`): smoltcp no longer verifies TCP and
//! UDP checksums; [`receive_checksum_ok`] does it here for every frame the
//! device did not vouch for. A frame with `VIRTIO_NET_HDR_F_DATA_VALID` was
//! checked by the device; one with `NEEDS_CSUM` never crossed a wire (the
//! host's own stack made it and left the checksum partial), so its
//! checksum field is not a checksum and is not checked. Every other TCP or
//! UDP frame over IPv4 is verified and dropped when wrong, exactly as
//! smoltcp would have done. IPv4 fragments of TCP or UDP are dropped
//! whatever the flags (smoltcp is built without reassembly).
//!
//! Everything is parsed with smoltcp's checked wire types: a frame too
//! short or inconsistent for its headers is left alone on transmit and
//! passed on unverified on receive only when it is not TCP or UDP over
//! IPv4 (smoltcp parses and drops what it cannot use).

use smoltcp::wire::{
    checksum, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
    UdpPacket,
};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum is partial.
pub const NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the device checked the checksum.
pub const DATA_VALID: u8 = 2;
/// Offset of the checksum in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;
/// Ethernet header length.
const ETHERNET_HEADER: usize = 14;

/// The IPv4 packet in `frame` if it is an unfragmented IPv4 packet whose
/// header checks out (lengths within the frame).
fn ipv4(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let packet = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER..]).ok()?;
    Some(packet)
}

fn is_fragment(packet: &Ipv4Packet<&[u8]>) -> bool {
    packet.more_frags() || packet.frag_offset() != 0
}

/// Prepares an outgoing frame for checksum offload: for TCP over IPv4,
/// stores the pseudo-header sum in the TCP checksum field and returns
/// `(csum_start, csum_offset)` for the header; `None` (frame untouched)
/// for anything else, which then carries whatever checksum smoltcp wrote.
pub fn offload_tcp_checksum(frame: &mut [u8]) -> Option<(u16, u16)> {
    let (start, pseudo) = {
        let packet = ipv4(frame)?;
        if packet.next_header() != IpProtocol::Tcp || is_fragment(&packet) {
            return None;
        }
        let header = usize::from(packet.header_len());
        let tcp_len = usize::from(packet.total_len()).checked_sub(header)?;
        TcpPacket::new_checked(&packet.payload()[..tcp_len]).ok()?;
        let pseudo = checksum::pseudo_header_v4(
            &packet.src_addr(),
            &packet.dst_addr(),
            IpProtocol::Tcp,
            tcp_len as u32,
        );
        (ETHERNET_HEADER + header, pseudo)
    };
    let at = start + usize::from(TCP_CHECKSUM_OFFSET);
    frame
        .get_mut(at..at + 2)?
        .copy_from_slice(&pseudo.to_be_bytes());
    Some((u16::try_from(start).ok()?, TCP_CHECKSUM_OFFSET))
}

/// Writes a virtio-net header into `header` (its first 10 bytes: flags,
/// gso_type, hdr_len, gso_size, csum_start, csum_offset; little-endian
/// with `VIRTIO_F_VERSION_1`): `NEEDS_CSUM` with `partial`, else all zero.
/// `num_buffers` (bytes 10-11) is left as it is (0 from the driver).
pub fn write_header(header: &mut [u8], partial: Option<(u16, u16)>) {
    let Some(header) = header.get_mut(..10) else {
        return;
    };
    header.fill(0);
    if let Some((start, offset)) = partial {
        header[0] = NEEDS_CSUM;
        header[6..8].copy_from_slice(&start.to_le_bytes());
        header[8..10].copy_from_slice(&offset.to_le_bytes());
    }
}

/// What the receive path decided about a frame's checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// The device vouched for it (`DATA_VALID` or `NEEDS_CSUM`).
    Trusted,
    /// TCP or UDP over IPv4, checksum verified here.
    Verified,
    /// Not TCP or UDP over IPv4: smoltcp checks what it uses.
    NotChecked,
    /// TCP or UDP over IPv4 with a wrong checksum or inconsistent lengths,
    /// or a fragment of one: drop it.
    Bad,
}

/// Decides whether a received frame (without the virtio-net header) may
/// go to smoltcp, whose TCP and UDP checksum checks are off: `flags` is
/// the header's flags byte.
pub fn receive_checksum_ok(flags: u8, frame: &[u8]) -> Received {
    let trusted = flags & (DATA_VALID | NEEDS_CSUM) != 0;
    let Some(packet) = ipv4(frame) else {
        return if trusted {
            Received::Trusted
        } else {
            Received::NotChecked
        };
    };
    let protocol = packet.next_header();
    if !matches!(protocol, IpProtocol::Tcp | IpProtocol::Udp) {
        return Received::NotChecked;
    }
    // smoltcp is built without reassembly and would take a fragment's
    // payload for a whole segment; with its own checks on, that failed the
    // checksum (no fragment carries the whole segment's sum), so it goes,
    // whatever the flags say (a device cannot have checked a fragment).
    if is_fragment(&packet) {
        return Received::Bad;
    }
    if trusted {
        return Received::Trusted;
    }
    let Some(len) = usize::from(packet.total_len()).checked_sub(usize::from(packet.header_len()))
    else {
        return Received::Bad;
    };
    let Some(payload) = packet.payload().get(..len) else {
        return Received::Bad;
    };
    let (src, dst) = (
        IpAddress::Ipv4(packet.src_addr()),
        IpAddress::Ipv4(packet.dst_addr()),
    );
    let ok = match protocol {
        IpProtocol::Tcp => TcpPacket::new_checked(payload)
            .map(|tcp| tcp.verify_checksum(&src, &dst))
            .unwrap_or(false),
        _ => UdpPacket::new_checked(payload)
            .map(|udp| udp.verify_checksum(&src, &dst))
            .unwrap_or(false),
    };
    if ok {
        Received::Verified
    } else {
        Received::Bad
    }
}

#[cfg(test)]
mod tests;
