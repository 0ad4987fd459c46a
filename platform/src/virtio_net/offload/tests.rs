//! Checksum offload header handling on frames built with smoltcp's wire
//! types.

use super::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, UdpRepr};
use std::vec;
use std::vec::Vec;

const SRC: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
const DST: Ipv4Address = Ipv4Address::new(198, 18, 0, 2);

fn ethernet(frame: &mut [u8]) {
    let repr = EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
        ethertype: EthernetProtocol::Ipv4,
    };
    repr.emit(&mut EthernetFrame::new_unchecked(frame));
}

/// A TCP frame (see [`crate::virtio_net::test_frames::tcp_frame`]).
fn tcp_frame(payload: &[u8], checksummed: bool) -> Vec<u8> {
    crate::virtio_net::test_frames::tcp_frame([2, 0, 0, 0, 0, 2], payload, checksummed)
}

fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };
    let ip = Ipv4Repr {
        src_addr: SRC,
        dst_addr: DST,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + ip.buffer_len() + udp.header_len() + payload.len()];
    ethernet(&mut frame);
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut frame[34..]),
        &IpAddress::Ipv4(SRC),
        &IpAddress::Ipv4(DST),
        payload.len(),
        |buffer| buffer.copy_from_slice(payload),
        &caps,
    );
    frame
}

/// What a device does with a `NEEDS_CSUM` frame: sums from `start` to the
/// end (the field holding the pseudo-header sum) and stores the complement
/// at `start + offset`.
fn complete_as_device(frame: &mut [u8], start: u16, offset: u16) {
    let (start, offset) = (usize::from(start), usize::from(offset));
    let sum = !checksum::data(&frame[start..]);
    frame[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn a_tcp_frame_gets_the_pseudo_header_sum_and_the_device_completes_it() {
    let payload: Vec<u8> = (0..1461u32).map(|i| (i * 7) as u8).collect();
    let expected = tcp_frame(&payload, true);
    let mut frame = tcp_frame(&payload, false);
    assert_ne!(frame, expected, "smoltcp left the checksum out");
    let (start, offset) = offload_tcp_checksum(&mut frame).expect("TCP over IPv4");
    assert_eq!((start, offset), (34, 16));
    complete_as_device(&mut frame, start, offset);
    assert_eq!(frame, expected, "the device's checksum is the full one");
    assert_eq!(receive_checksum_ok(0, &frame), Received::Verified);
}

#[test]
fn udp_arp_and_short_frames_are_not_offloaded() {
    let mut udp = udp_frame(b"dhcp");
    let before = udp.clone();
    assert_eq!(offload_tcp_checksum(&mut udp), None);
    assert_eq!(udp, before);
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(offload_tcp_checksum(&mut arp), None);
    let mut short = tcp_frame(b"", false);
    short.truncate(40);
    assert_eq!(offload_tcp_checksum(&mut short), None);
}

#[test]
fn the_header_carries_needs_csum_start_and_offset() {
    let mut header = [0xffu8; 12];
    write_header(&mut header, Some((34, 16)));
    assert_eq!(header[..10], [NEEDS_CSUM, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
    write_header(&mut header, None);
    assert_eq!(header[..10], [0; 10]);
    // Too short a header is left alone rather than cut.
    let mut short = [0xffu8; 4];
    write_header(&mut short, Some((34, 16)));
    assert_eq!(short, [0xff; 4]);
}

#[test]
fn received_frames_without_flags_are_verified_and_bad_ones_refused() {
    let good = tcp_frame(b"hello", true);
    assert_eq!(receive_checksum_ok(0, &good), Received::Verified);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(receive_checksum_ok(0, &bad), Received::Bad);
    let udp = udp_frame(b"lease");
    assert_eq!(receive_checksum_ok(0, &udp), Received::Verified);
    let mut bad_udp = udp.clone();
    *bad_udp.last_mut().unwrap() ^= 1;
    assert_eq!(receive_checksum_ok(0, &bad_udp), Received::Bad);
    // A TCP header cut off inside the IP payload is refused, not passed.
    let mut cut = tcp_frame(b"", true);
    let total = 20 + 10;
    cut[16..18].copy_from_slice(&(total as u16).to_be_bytes());
    cut.truncate(14 + total);
    let mut ip = Ipv4Packet::new_unchecked(&mut cut[14..]);
    ip.fill_checksum();
    assert_eq!(receive_checksum_ok(0, &cut), Received::Bad);
}

#[test]
fn frames_the_device_vouched_for_are_trusted_even_with_a_partial_checksum() {
    // NEEDS_CSUM: the host's stack left the pseudo-header sum in the field.
    let mut partial = tcp_frame(b"from the host", false);
    offload_tcp_checksum(&mut partial).expect("TCP over IPv4");
    assert_eq!(receive_checksum_ok(0, &partial), Received::Bad);
    assert_eq!(receive_checksum_ok(NEEDS_CSUM, &partial), Received::Trusted);
    let mut bad = tcp_frame(b"checked by the device", true);
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(receive_checksum_ok(DATA_VALID, &bad), Received::Trusted);
    // Any other flag bit (RSC_INFO) does not vouch for anything.
    assert_eq!(receive_checksum_ok(4, &bad), Received::Bad);
}

#[test]
fn non_ip_is_left_to_smoltcp_and_unvouched_fragments_are_dropped() {
    let mut arp = vec![0u8; 60];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(receive_checksum_ok(0, &arp), Received::NotChecked);
    assert_eq!(receive_checksum_ok(0, &[0u8; 5]), Received::NotChecked);
    let mut fragment = tcp_frame(b"part", true);
    let mut ip = Ipv4Packet::new_unchecked(&mut fragment[14..]);
    ip.set_more_frags(true);
    ip.fill_checksum();
    assert_eq!(receive_checksum_ok(0, &fragment), Received::Bad);
    assert_eq!(receive_checksum_ok(DATA_VALID, &fragment), Received::Bad);
    assert_eq!(receive_checksum_ok(NEEDS_CSUM, &fragment), Received::Bad);
    // Flags on a frame that is not IPv4 change nothing for smoltcp.
    assert_eq!(receive_checksum_ok(DATA_VALID, &arp), Received::Trusted);
}
