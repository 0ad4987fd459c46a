//! The NIC's slot bookkeeping over a fake virtio-net device on the host.
//!
//! The folded-in virtio code has its own `FakeHal`/`FakeTransport`
//! (`crate::virtio_drivers`), but those only record notifies and never
//! play the device; these stand-ins do: [`TestHal`]
//! hands out host memory with physical == virtual addresses, and
//! [`FakeTransport`] plays the device side of the split virtqueues
//! (virtio 1.2 §2.7) on that memory.

use super::*;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use smoltcp::phy::{Device as _, RxToken as _, TxToken as _};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus};
use crate::virtio_drivers::{BufferDirection, Error, Hal, PhysAddr};

const PAGE: usize = 4096;
/// virtio-net header with VERSION_1 (virtio 1.2 §5.1.6): 12 bytes.
const HEADER: usize = 12;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn page_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE, PAGE).expect("page layout")
}

/// Host memory as DMA memory: physical address == virtual address.
struct TestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned host memory that nothing
// else references, `dma_dealloc` frees exactly what it allocated, and the
// "physical" address of every buffer is its host address, which is what
// the fake device dereferences.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc_zeroed(page_layout(pages)) };
        let pointer = NonNull::new(pointer).expect("host allocation");
        (pointer.as_ptr() as PhysAddr, pointer)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count.
        unsafe { dealloc(vaddr.as_ptr(), page_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("no MMIO in these tests")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

impl PoolHal for TestHal {
    fn pool(pages: usize) -> Option<(usize, usize)> {
        if let Some(left) = POOLS_LEFT.with(|left| left.get()) {
            let left = left.checked_sub(1)?;
            POOLS_LEFT.with(|cell| cell.set(Some(left)));
        }
        // Leaked like the kernel's pools, which are never freed.
        let (address, _) = Self::dma_alloc(pages, BufferDirection::Both);
        Some((address as usize, pages * PAGE))
    }
}

/// One split virtqueue as the device sees it.
#[derive(Clone, Copy, Debug, Default)]
struct Queue {
    size: u16,
    descriptors: u64,
    avail: u64,
    used: u64,
    /// Next available-ring entry the device has not taken yet.
    next_avail: u16,
}

fn read<T: Copy>(address: u64) -> T {
    // SAFETY: every address comes from the rings the driver set up in
    // `TestHal` memory, which lives for the test; single-threaded.
    unsafe { core::ptr::read_volatile(address as *const T) }
}

fn write<T: Copy>(address: u64, value: T) {
    // SAFETY: as in `read`, for the device-writable parts of the rings
    // and buffers the driver posted as device-writable.
    unsafe { core::ptr::write_volatile(address as *mut T, value) }
}

impl Queue {
    /// Takes the next descriptor chain head the driver made available.
    fn pop_avail(&mut self) -> Option<u16> {
        let avail_idx: u16 = read(self.avail + 2);
        if avail_idx == self.next_avail {
            return None;
        }
        let slot = u64::from(self.next_avail % self.size);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(read(self.avail + 4 + 2 * slot))
    }

    /// (address, length, flags) of descriptor `index`.
    fn descriptor(&self, index: u16) -> (u64, u32, u16) {
        let at = self.descriptors + 16 * u64::from(index);
        (read(at), read(at + 8), read(at + 12))
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    fn push_used(&self, head: u16, len: u32) {
        let used_idx: u16 = read(self.used + 2);
        let at = self.used + 4 + 8 * u64::from(used_idx % self.size);
        write(at, u32::from(head));
        write(at + 4, len);
        write(self.used + 2, used_idx.wrapping_add(1));
    }
}

/// The device's state, shared between the transport and the test.
#[derive(Default)]
struct Device {
    status: u32,
    queues: [Option<Queue>; 2],
    notifications: [u32; 2],
    /// Offer `VIRTIO_F_EVENT_IDX` (virtio 1.2 §2.7.10).
    event_idx: bool,
    /// Further feature bits offered (`VIRTIO_NET_F_CSUM`, ...).
    features: u64,
    /// `virtio_net_config.mtu`.
    mtu: u16,
    /// The header flags byte of frames delivered from now on.
    rx_flags: u8,
}

const RECEIVE: usize = 0;
const TRANSMIT: usize = 1;
const WRITE: u16 = 2;

impl Device {
    /// Puts `frame` into the next posted receive buffer; false when the
    /// driver posted none.
    fn deliver(&mut self, frame: &[u8]) -> bool {
        self.deliver_claiming(frame, (HEADER + frame.len()) as u32)
            .is_some()
    }

    /// Puts `frame` into the next posted receive buffer but reports
    /// `claimed` bytes written (a buggy device); returns the chain head.
    fn deliver_claiming(&mut self, frame: &[u8], claimed: u32) -> Option<u16> {
        let queue = self.queues[RECEIVE].as_mut().expect("receive queue set");
        let head = queue.pop_avail()?;
        let (address, len, flags) = queue.descriptor(head);
        assert_eq!(flags & WRITE, WRITE, "receive buffers are device-writable");
        assert!(HEADER + frame.len() <= len as usize);
        let mut header = [0u8; HEADER];
        header[0] = self.rx_flags;
        for (i, byte) in header.iter().chain(frame).enumerate() {
            write(address + i as u64, *byte);
        }
        queue.push_used(head, claimed);
        Some(head)
    }

    /// Puts a used-ring entry on `queue` for a chain the driver did not
    /// make available (a buggy device).
    fn complete_unposted(&self, queue: usize, head: u16, len: u32) {
        self.queues[queue]
            .as_ref()
            .expect("queue set")
            .push_used(head, len);
    }

    /// Takes the next frame the driver queued for sending (header
    /// stripped), without completing it.
    fn take_sent(&mut self) -> Option<(u16, Vec<u8>)> {
        let (head, mut bytes) = self.take_sent_with_header()?;
        bytes.drain(..HEADER);
        Some((head, bytes))
    }

    /// [`Device::take_sent`] with the virtio-net header.
    fn take_sent_with_header(&mut self) -> Option<(u16, Vec<u8>)> {
        let queue = self.queues[TRANSMIT].as_mut().expect("transmit queue set");
        let head = queue.pop_avail()?;
        let (address, len, flags) = queue.descriptor(head);
        assert_eq!(flags & WRITE, 0, "transmit buffers are device-readable");
        let bytes = (0..u64::from(len))
            .map(|i| read::<u8>(address + i))
            .collect();
        Some((head, bytes))
    }

    /// Completes a sent frame.
    fn complete_sent(&self, head: u16) {
        self.queues[TRANSMIT]
            .as_ref()
            .expect("transmit queue set")
            .push_used(head, 0);
    }

    /// Takes every buffer the driver made available on `queue` (completing
    /// transmit ones) and, like QEMU after emptying a queue, asks to be
    /// notified of the next one (`avail_event`, or no `NO_NOTIFY` flag).
    fn catch_up(&mut self, queue: usize) -> usize {
        let mut taken = 0;
        let ring = self.queues[queue].as_mut().expect("queue set");
        while let Some(head) = ring.pop_avail() {
            if queue == TRANSMIT {
                ring.push_used(head, 0);
            }
            taken += 1;
        }
        let at = ring.used + 4 + 8 * u64::from(ring.size);
        write(at, ring.next_avail);
        taken
    }

    /// Asks to be notified of the next buffer made available on `queue`
    /// (`avail_event` = the driver's index), without taking any.
    fn ask_for_notify(&self, queue: usize) {
        let ring = self.queues[queue].as_ref().expect("queue set");
        let avail_idx: u16 = read(ring.avail + 2);
        write(ring.used + 4 + 8 * u64::from(ring.size), avail_idx);
    }

    /// The driver's `used_event` on `queue` (virtio 1.2 §2.7.10).
    fn used_event(&self, queue: usize) -> u16 {
        let ring = self.queues[queue].as_ref().expect("queue set");
        read(ring.avail + 4 + 2 * u64::from(ring.size))
    }

    /// The driver's available-ring flags on `queue` (bit 0: no interrupt).
    fn avail_flags(&self, queue: usize) -> u16 {
        read(self.queues[queue].as_ref().expect("queue set").avail)
    }

    /// Buffers the driver has made available on `queue` so far.
    fn available(&self, queue: usize) -> u16 {
        let queue = self.queues[queue].as_ref().expect("queue set");
        read::<u16>(queue.avail + 2).wrapping_sub(queue.next_avail)
    }
}

/// A virtio-net device (MAC, VERSION_1; no event index, no indirect
/// descriptors) over [`Device`].
struct FakeTransport(Rc<RefCell<Device>>);

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Network
    }

    fn read_device_features(&mut self) -> u64 {
        let event_idx = if self.0.borrow().event_idx {
            1 << 29
        } else {
            0
        };
        (1 << 5) | (1 << 32) | event_idx | self.0.borrow().features
    }

    fn write_driver_features(&mut self, _driver_features: u64) {}

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        QUEUE_SIZE as u32
    }

    fn notify(&mut self, queue: u16) {
        self.0.borrow_mut().notifications[usize::from(queue)] += 1;
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.0.borrow().status)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.0.borrow_mut().status = status.bits();
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.0.borrow_mut().queues[usize::from(queue)] = Some(Queue {
            size: size as u16,
            descriptors,
            avail: driver_area,
            used: device_area,
            next_avail: 0,
        });
    }

    fn queue_unset(&mut self, queue: u16) {
        self.0.borrow_mut().queues[usize::from(queue)] = None;
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.borrow().queues[usize::from(queue)].is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> crate::virtio_drivers::Result<T> {
        // virtio_net_config: mac[6], status (bit 0: link up),
        // max_virtqueue_pairs, mtu.
        let mut config = [0u8; 16];
        config[..6].copy_from_slice(&MAC);
        config[6] = 1;
        config[10..12].copy_from_slice(&self.0.borrow().mtu.to_le_bytes());
        let bytes = config.get(offset..).ok_or(Error::ConfigSpaceTooSmall)?;
        T::read_from_prefix(bytes)
            .map(|(value, _)| value)
            .map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> crate::virtio_drivers::Result<()> {
        Ok(())
    }
}

fn nic() -> (Nic<TestHal, FakeTransport>, Rc<RefCell<Device>>) {
    nic_with(false)
}

/// A NIC over a fake device that offers `VIRTIO_F_EVENT_IDX` or not.
fn nic_with(event_idx: bool) -> (Nic<TestHal, FakeTransport>, Rc<RefCell<Device>>) {
    let device = Rc::new(RefCell::new(Device {
        event_idx,
        ..Device::default()
    }));
    let raw = Raw::<TestHal, FakeTransport>::new(FakeTransport(device.clone()))
        .expect("virtio-net initialises");
    let nic = Nic::new(raw).expect("packet pools");
    (nic, device)
}

fn now() -> Instant {
    Instant::from_millis(0)
}

#[test]
fn every_receive_slot_is_posted_at_start() {
    let (nic, device) = nic();
    assert_eq!(nic.mac(), MAC);
    assert_eq!(nic.rx_posted(), RX_SLOTS);
    assert_eq!(device.borrow().available(RECEIVE), RX_SLOTS as u16);
    assert!(!nic.has_rx());
}

#[test]
fn received_frames_reach_smoltcp_and_slots_are_posted_again() {
    let (mut nic, device) = nic();
    for round in 0..3 * RX_SLOTS {
        let frame: Vec<u8> = (0..60).map(|i| (i + round) as u8).collect();
        assert!(device.borrow_mut().deliver(&frame), "round {round}");
        assert!(nic.has_rx());
        let (rx, _tx) = nic.receive(now()).expect("a frame");
        assert_eq!(rx.consume(|bytes| bytes.to_vec()), frame);
        // The next receive (or refill) re-posts the slot: never starves.
        nic.refill();
        assert_eq!(nic.rx_posted(), RX_SLOTS);
    }
    assert!(nic.receive(now()).is_none());
    assert_eq!(nic.counters().rx_errors, 0);
    // Every slot at start, then one re-post per frame received.
    assert_eq!(
        nic.counters().rx_submitted,
        (RX_SLOTS + 3 * RX_SLOTS) as u64
    );
}

#[test]
fn sent_frames_reach_the_device_and_slots_come_back() {
    let (mut nic, device) = nic();
    for round in 0..3 * TX_SLOTS {
        let tx = nic.transmit(now()).expect("a free slot");
        tx.consume(42, |buffer| buffer.fill(round as u8));
        let (head, bytes) = device.borrow_mut().take_sent().expect("a frame");
        assert_eq!(bytes, vec![round as u8; 42]);
        device.borrow().complete_sent(head);
    }
    assert!(device.borrow().notifications[TRANSMIT] > 0);
    assert_eq!(nic.counters().tx_errors, 0);
    assert_eq!(nic.counters().tx_submitted, (3 * TX_SLOTS) as u64);
}

#[test]
fn transmit_waits_while_every_slot_is_in_flight() {
    let (mut nic, device) = nic();
    for _ in 0..TX_SLOTS {
        let tx = nic.transmit(now()).expect("a free slot");
        tx.consume(60, |buffer| buffer.fill(0xab));
    }
    assert!(nic.transmit(now()).is_none(), "all slots are in flight");
    let (head, _) = device.borrow_mut().take_sent().expect("a frame");
    device.borrow().complete_sent(head);
    assert!(nic.transmit(now()).is_some(), "a completed slot is reused");
}

#[test]
fn oversized_frames_are_cut_to_the_slot() {
    let (mut nic, device) = nic();
    let tx = nic.transmit(now()).expect("a free slot");
    tx.consume(4 * SLOT, |buffer| {
        assert_eq!(buffer.len(), SLOT - HEADER);
        buffer.fill(1);
    });
    let (_, bytes) = device.borrow_mut().take_sent().expect("a frame");
    assert_eq!(bytes.len(), SLOT - HEADER);
}

#[test]
fn a_receive_token_never_posted_is_counted_once_and_not_spun_on() {
    for bogus in [QUEUE_SIZE as u16, QUEUE_SIZE as u16 + 44, u16::MAX] {
        let (mut nic, device) = nic();
        device
            .borrow()
            .complete_unposted(RECEIVE, bogus, (HEADER + 60) as u32);
        for _ in 0..10 {
            assert!(nic.receive(now()).is_none(), "token {bogus}");
        }
        // The kernel's event loop polls again while `has_rx` says so.
        assert!(!nic.has_rx(), "token {bogus}: the event loop would spin");
        assert_eq!(nic.counters().rx_errors, 1, "token {bogus}");
        assert_eq!(nic.counters().bad_tokens, 1, "token {bogus}");
        // Frames behind it are not taken as ours either.
        assert!(device.borrow_mut().deliver(&[1; 60]));
        assert!(nic.receive(now()).is_none());
        assert!(!nic.has_rx());
        assert_eq!(nic.counters().rx_errors, 1);
    }
}

#[test]
fn a_duplicate_receive_completion_is_not_taken_for_a_frame() {
    let (mut nic, device) = nic();
    // A completion too short for the header: dropped, its slot re-posted.
    let head = device
        .borrow_mut()
        .deliver_claiming(&[0xaa; 60], 1)
        .expect("a posted buffer");
    // The same chain completed again, now that it is no longer posted.
    device
        .borrow()
        .complete_unposted(RECEIVE, head, (HEADER + 60) as u32);
    assert!(nic.receive(now()).is_none());
    // Re-posting the slot must not make the stale entry look like a frame.
    assert!(
        nic.receive(now()).is_none(),
        "a stale buffer taken as a frame"
    );
    assert!(!nic.has_rx());
    assert_eq!(nic.counters().rx_errors, 2);
    assert_eq!(nic.counters().bad_tokens, 1);
}

#[test]
fn receive_lengths_outside_the_buffer_are_counted_and_dropped() {
    let (mut nic, device) = nic();
    let bad = [
        0,
        1,
        HEADER as u32 - 1,
        HEADER as u32, // an empty frame
        SLOT as u32 + 1,
        u32::MAX,
    ];
    for (round, claimed) in bad.into_iter().enumerate() {
        assert!(device
            .borrow_mut()
            .deliver_claiming(&[0xee; 60], claimed)
            .is_some());
        assert!(nic.receive(now()).is_none(), "length {claimed}");
        assert_eq!(nic.counters().rx_errors, round as u64 + 1);
        // The buffer is the driver's again and goes back to the device.
        nic.refill();
        assert_eq!(nic.rx_posted(), RX_SLOTS, "length {claimed}");
        // And the next good frame still arrives.
        let frame = [round as u8; 60];
        assert!(device.borrow_mut().deliver(&frame));
        let (rx, _tx) = nic.receive(now()).expect("a frame after a bad one");
        assert_eq!(rx.consume(|bytes| bytes.to_vec()), frame);
    }
    // A length that fills the slot exactly is a frame.
    let frame = [7u8; SLOT - HEADER];
    assert!(device
        .borrow_mut()
        .deliver_claiming(&frame, SLOT as u32)
        .is_some());
    let (rx, _tx) = nic.receive(now()).expect("a full-slot frame");
    assert_eq!(rx.consume(|bytes| bytes.len()), SLOT - HEADER);
    assert_eq!(nic.counters().bad_tokens, 0);
}

#[test]
fn a_transmit_token_not_in_flight_is_counted_once() {
    for bogus in [200u16, QUEUE_SIZE as u16 + 3, u16::MAX] {
        let (mut nic, device) = nic();
        device.borrow().complete_unposted(TRANSMIT, bogus, 0);
        // Slots still free are used; nothing is reclaimed behind the bad
        // entry, and it is counted once, not on every send.
        for round in 0..TX_SLOTS {
            let tx = nic.transmit(now()).expect("a free slot");
            tx.consume(60, |buffer| buffer.fill(round as u8));
            let (head, bytes) = device.borrow_mut().take_sent().expect("a frame");
            assert_eq!(bytes, vec![round as u8; 60]);
            device.borrow().complete_sent(head);
        }
        assert!(nic.transmit(now()).is_none(), "token {bogus}");
        assert_eq!(nic.counters().tx_errors, 1, "token {bogus}");
        assert_eq!(nic.counters().bad_tokens, 1, "token {bogus}");
    }
}

/// A HAL whose allocations all fail, the way `KernelHal` fails when the
/// frame allocator is empty.
struct NoMemoryHal;

// SAFETY: `dma_alloc` never hands out memory (it returns virtio-drivers'
// failure value), so nothing is ever deallocated, mapped or shared.
unsafe impl Hal for NoMemoryHal {
    fn dma_alloc(_pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        crate::virtio::DMA_ALLOCATION_FAILED
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        unreachable!("nothing was allocated")
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        unreachable!("no MMIO in these tests")
    }

    unsafe fn share(_buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        unreachable!("no buffer is ever posted")
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

impl PoolHal for NoMemoryHal {
    fn pool(_pages: usize) -> Option<(usize, usize)> {
        None
    }
}

#[test]
fn dma_allocation_failure_fails_device_set_up() {
    let device = Rc::new(RefCell::new(Device::default()));
    let result = Raw::<NoMemoryHal, FakeTransport>::new(FakeTransport(device.clone()));
    assert_eq!(result.err(), Some(Error::DmaError));
    // No queue was ever given to the device, so it can DMA nowhere.
    assert!(device.borrow().queues.iter().all(Option::is_none));
}

#[test]
fn the_kernel_hal_reports_no_frames_as_failure_not_address_0() {
    // On the host the RAM frame allocator was never given any memory: this
    // is `KernelHal` out of frames.
    for pages in [0, 1, 2, usize::MAX] {
        let (paddr, _) = crate::virtio::KernelHal::dma_alloc(pages, BufferDirection::Both);
        assert_eq!(
            paddr,
            crate::virtio::DMA_ALLOCATION_FAILED.0,
            "{pages} pages"
        );
    }
    assert_eq!(crate::virtio::KernelHal::pool(1), None);
    let device = Rc::new(RefCell::new(Device::default()));
    let result = Raw::<crate::virtio::KernelHal, FakeTransport>::new(FakeTransport(device.clone()));
    assert_eq!(result.err(), Some(Error::DmaError));
    assert!(device.borrow().queues.iter().all(Option::is_none));
}

std::thread_local! {
    /// Packet pools `TestHal` still hands out in this test; `None`: no limit.
    static POOLS_LEFT: core::cell::Cell<Option<usize>> = const { core::cell::Cell::new(None) };
}

#[test]
fn nic_set_up_fails_when_a_packet_pool_cannot_be_allocated() {
    for pools in [0, 1] {
        let device = Rc::new(RefCell::new(Device::default()));
        let raw = Raw::<TestHal, FakeTransport>::new(FakeTransport(device.clone()))
            .expect("virtio-net initialises");
        POOLS_LEFT.with(|left| left.set(Some(pools)));
        assert!(Nic::new(raw).is_none(), "{pools} pools");
        POOLS_LEFT.with(|left| left.set(None));
        // Dropping the half-built NIC took the queues back; nothing was
        // posted to the device.
        assert!(device.borrow().queues.iter().all(Option::is_none));
    }
}

/// Queues `count` frames for transmission, as one smoltcp poll would.
fn send_burst(nic: &mut Nic<TestHal, FakeTransport>, count: usize) {
    for round in 0..count {
        let tx = nic.transmit(now()).expect("a free slot");
        tx.consume(60, |buffer| buffer.fill(round as u8));
    }
    nic.end_poll();
}

#[test]
fn a_transmit_burst_is_one_notify() {
    for event_idx in [false, true] {
        let (mut nic, device) = nic_with(event_idx);
        send_burst(&mut nic, 10);
        assert_eq!(
            device.borrow().notifications[TRANSMIT],
            1,
            "event_idx {event_idx}: one notify for a burst of 10"
        );
        assert_eq!(nic.counters().tx_notifies, 1);
        // The notify's time is counted (the TSC always moves on).
        assert!(nic.counters().notify_ns > 0, "event_idx {event_idx}");
        assert_eq!(device.borrow_mut().catch_up(TRANSMIT), 10);
        send_burst(&mut nic, 3);
        assert_eq!(device.borrow().notifications[TRANSMIT], 2);
    }
}

#[test]
fn a_device_already_notified_is_not_notified_again_until_it_catches_up() {
    let (mut nic, device) = nic_with(true);
    send_burst(&mut nic, 3);
    assert_eq!(device.borrow().notifications[TRANSMIT], 1);
    // The device has not looked at the ring since: `avail_event` is still
    // at the first frame, which it was told about (virtio 1.2 §2.7.10).
    send_burst(&mut nic, 3);
    assert_eq!(
        device.borrow().notifications[TRANSMIT],
        1,
        "a device that has not caught up was notified again"
    );
    assert_eq!(device.borrow_mut().catch_up(TRANSMIT), 6);
    send_burst(&mut nic, 1);
    assert_eq!(device.borrow().notifications[TRANSMIT], 2);
}

#[test]
fn bursts_across_the_index_wrap_notify_once_each() {
    let (mut nic, device) = nic_with(true);
    // Bursts of 3 never line up with 2^16, so one of them crosses the wrap
    // (avail_event 65534, the burst ends at index 1).
    let bursts = 65536 / 3 + 10;
    for burst in 0..bursts {
        send_burst(&mut nic, 3);
        assert_eq!(
            device.borrow().notifications[TRANSMIT],
            burst as u32 + 1,
            "burst {burst}: exactly one notify"
        );
        assert_eq!(device.borrow_mut().catch_up(TRANSMIT), 3);
    }
}

#[test]
fn received_slots_go_back_in_batches_with_one_notify_each() {
    for event_idx in [false, true] {
        let (mut nic, device) = nic_with(event_idx);
        assert_eq!(
            device.borrow().notifications[RECEIVE],
            1,
            "event_idx {event_idx}: all receive buffers posted with one notify"
        );
        device.borrow().ask_for_notify(RECEIVE);
        let frames = 100;
        for round in 0..frames {
            let frame = [round as u8; 60];
            assert!(device.borrow_mut().deliver(&frame), "round {round}");
        }
        for round in 0..frames {
            let (rx, _tx) = nic.receive(now()).expect("a frame");
            assert_eq!(rx.consume(|bytes| bytes[0]), round as u8);
        }
        nic.end_poll();
        assert_eq!(nic.rx_posted(), RX_SLOTS, "event_idx {event_idx}");
        // One notify per RX_BATCH re-posted, at most one more at the end of
        // the poll; never one per frame.
        let notifies = device.borrow().notifications[RECEIVE] - 1;
        assert!(
            (1..=frames / RX_BATCH + 1).contains(&(notifies as usize)),
            "event_idx {event_idx}: {notifies} receive notifies for {frames} frames"
        );
        assert_eq!(nic.counters().rx_frames, frames as u64);
        assert_eq!(nic.counters().rx_polls, 1);
    }
}

#[test]
fn the_event_index_test_is_the_specs() {
    use crate::virtio_drivers::queue::vring_need_event;
    // virtio 1.2 §2.7.10: notify when `event` is in [old, new) mod 2^16.
    assert!(vring_need_event(5, 8, 5));
    assert!(vring_need_event(7, 8, 5));
    assert!(!vring_need_event(4, 8, 5), "told already");
    assert!(!vring_need_event(8, 8, 5), "not reached yet");
    assert!(vring_need_event(65534, 1, 65533), "across the wrap");
    assert!(vring_need_event(0, 1, 65533), "across the wrap");
    assert!(!vring_need_event(65532, 1, 65533));
    assert!(!vring_need_event(3, 3, 3), "no new buffers");
}

#[test]
fn receive_interrupts_stay_off_while_polling_and_the_rearm_sees_a_late_frame() {
    for event_idx in [false, true] {
        let (mut nic, device) = nic_with(event_idx);
        // Whether the device may interrupt for the next used receive entry
        // (virtio 1.2 §2.7.7 and §2.7.10).
        let armed = |device: &Rc<RefCell<Device>>, used: u16| {
            let device = device.borrow();
            if event_idx {
                device.used_event(RECEIVE) == used
            } else {
                device.avail_flags(RECEIVE) & 1 == 0
            }
        };
        nic.interrupts_off();
        for round in 0..5u8 {
            assert!(device.borrow_mut().deliver(&[round; 60]));
        }
        for _ in 0..5 {
            assert!(nic.receive(now()).is_some());
        }
        assert!(
            !armed(&device, 5),
            "event_idx {event_idx}: receiving re-armed the interrupt while polling"
        );
        nic.end_poll();
        // A frame lands after the last poll looked and before the re-arm:
        // it raised no interrupt, so the re-arm must report it.
        assert!(device.borrow_mut().deliver(&[9; 60]));
        assert!(
            nic.interrupts_on(),
            "event_idx {event_idx}: a late frame left for an interrupt that never comes"
        );
        assert!(armed(&device, 5), "event_idx {event_idx}");
        nic.interrupts_off();
        assert!(nic.receive(now()).is_some());
        nic.end_poll();
        assert!(!nic.interrupts_on(), "event_idx {event_idx}: nothing left");
        assert!(armed(&device, 6), "event_idx {event_idx}");
    }
}

#[test]
fn transmit_completions_interrupt_only_while_every_slot_is_in_flight() {
    for event_idx in [false, true] {
        let (mut nic, device) = nic_with(event_idx);
        let tx_armed = |device: &Rc<RefCell<Device>>, used: u16| {
            let device = device.borrow();
            if event_idx {
                device.used_event(TRANSMIT) == used
            } else {
                device.avail_flags(TRANSMIT) & 1 == 0
            }
        };
        send_burst(&mut nic, 3);
        device.borrow_mut().catch_up(TRANSMIT);
        assert!(!nic.interrupts_on());
        assert!(
            !tx_armed(&device, 3),
            "event_idx {event_idx}: an interrupt asked for a transmit completion"
        );
        // Every slot in flight: only a completion frees one, so the loop
        // must be woken for it.
        nic.interrupts_off();
        send_burst(&mut nic, TX_SLOTS);
        assert!(nic.transmit(now()).is_none());
        assert!(!nic.interrupts_on());
        assert!(tx_armed(&device, 3), "event_idx {event_idx}");
        // Completions that came before the re-arm was seen, or that the
        // re-arm itself reclaimed: work, not something to wait for.
        device.borrow_mut().catch_up(TRANSMIT);
        assert!(
            nic.interrupts_on(),
            "event_idx {event_idx}: completions left waiting"
        );
        nic.interrupts_off();
        assert!(nic.transmit(now()).is_some());
        send_burst(&mut nic, TX_SLOTS);
        device.borrow_mut().catch_up(TRANSMIT);
        assert!(
            nic.interrupts_on(),
            "event_idx {event_idx}: freed slots left idle"
        );
    }
}

/// `VIRTIO_NET_F_CSUM`, `VIRTIO_NET_F_GUEST_CSUM`, `VIRTIO_NET_F_MTU`.
const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;

/// A NIC over a fake device offering `features` and `mtu`, asking for
/// every offload as the kernel does.
fn nic_offered(features: u64, mtu: u16) -> (Nic<TestHal, FakeTransport>, Rc<RefCell<Device>>) {
    let device = Rc::new(RefCell::new(Device {
        features,
        mtu,
        ..Device::default()
    }));
    let raw = Raw::<TestHal, FakeTransport>::with_offloads(
        FakeTransport(device.clone()),
        Offloads {
            csum: true,
            guest_csum: true,
            max_mtu: MAX_MTU,
        },
    )
    .expect("virtio-net initialises");
    let nic = Nic::new(raw).expect("packet pools");
    (nic, device)
}

#[test]
fn without_offloads_offered_nothing_changes() {
    let (mut nic, device) = nic_offered(0, 9000);
    assert_eq!(nic.offloads(), Offloads::default());
    assert_eq!(nic.mtu(), DEFAULT_MTU);
    let caps = nic.capabilities();
    assert_eq!(caps.max_transmission_unit, MAX_FRAME);
    assert!(caps.checksum.tcp.tx() && caps.checksum.tcp.rx());
    assert!(caps.checksum.udp.tx() && caps.checksum.udp.rx());
    // A bad checksum is smoltcp's to find: the driver passes the frame.
    let mut bad = test_frames::tcp_frame(MAC, b"x", true);
    *bad.last_mut().unwrap() ^= 1;
    device.borrow_mut().deliver(&bad);
    assert!(nic.receive(now()).is_some());
    // Frames go out with a zero header, as smoltcp built them.
    let tx = nic.transmit(now()).expect("a free slot");
    let frame = test_frames::tcp_frame(MAC, b"reply", true);
    tx.consume(frame.len(), |buffer| buffer.copy_from_slice(&frame));
    let (_, sent) = device.borrow_mut().take_sent_with_header().expect("sent");
    assert_eq!(sent[..HEADER], [0; HEADER]);
    assert_eq!(sent[HEADER..], frame[..]);
}

#[test]
fn a_9000_byte_mtu_is_negotiated_and_whole_jumbo_frames_pass_both_ways() {
    let (mut nic, device) = nic_offered(F_MTU, 9000);
    assert_eq!(nic.mtu(), 9000);
    assert_eq!(nic.offloads().max_mtu, 9000);
    assert_eq!(nic.capabilities().max_transmission_unit, 9014);
    let jumbo: Vec<u8> = (0..9014u32).map(|i| (i % 251) as u8).collect();
    assert!(device.borrow_mut().deliver(&jumbo));
    let (rx, _) = nic.receive(now()).expect("a jumbo frame");
    assert_eq!(rx.consume(|bytes| bytes.to_vec()), jumbo);
    let tx = nic.transmit(now()).expect("a free slot");
    tx.consume(jumbo.len(), |buffer| buffer.copy_from_slice(&jumbo));
    let (_, sent) = device.borrow_mut().take_sent().expect("sent");
    assert_eq!(sent, jumbo);
}

#[test]
fn an_mtu_beyond_the_bound_or_below_68_is_not_negotiated() {
    for mtu in [MAX_MTU + 1, 65535, 67, 0] {
        let (nic, _) = nic_offered(F_MTU, mtu);
        assert_eq!(nic.offloads().max_mtu, 0, "mtu {mtu}");
        assert_eq!(nic.mtu(), DEFAULT_MTU, "mtu {mtu}");
        assert_eq!(nic.capabilities().max_transmission_unit, MAX_FRAME);
    }
}

#[test]
fn with_csum_tcp_frames_leave_with_needs_csum_and_the_pseudo_header_sum() {
    let (mut nic, device) = nic_offered(CSUM, 0);
    assert!(nic.offloads().csum && !nic.offloads().guest_csum);
    let caps = nic.capabilities();
    assert!(!caps.checksum.tcp.tx(), "smoltcp leaves TCP checksums out");
    assert!(caps.checksum.tcp.rx(), "but still verifies them");
    let payload = [7u8; 100];
    let full = test_frames::tcp_frame(MAC, &payload, true);
    let zero = test_frames::tcp_frame(MAC, &payload, false);
    let tx = nic.transmit(now()).expect("a free slot");
    tx.consume(zero.len(), |buffer| buffer.copy_from_slice(&zero));
    let (_, sent) = device.borrow_mut().take_sent_with_header().expect("sent");
    assert_eq!(sent[0], offload::NEEDS_CSUM);
    let start = u16::from_le_bytes([sent[6], sent[7]]);
    let offset = u16::from_le_bytes([sent[8], sent[9]]);
    assert_eq!((start, offset), (34, 16));
    // Completed as a device does, the frame is the fully checksummed one.
    let mut frame = sent[HEADER..].to_vec();
    let (start, offset) = (usize::from(start), usize::from(offset));
    let sum = !smoltcp::wire::checksum::data(&frame[start..]);
    frame[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(frame, full);
    assert_eq!(nic.counters().tx_offloaded_checksums, 1);
}

#[test]
fn with_guest_csum_bad_frames_are_dropped_unless_the_device_vouched_for_them() {
    let (mut nic, device) = nic_offered(CSUM | GUEST_CSUM, 0);
    let caps = nic.capabilities();
    assert!(!caps.checksum.tcp.rx() && !caps.checksum.udp.rx());
    let good = test_frames::tcp_frame(MAC, b"request", true);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    let partial = {
        let mut frame = test_frames::tcp_frame(MAC, b"from the host", false);
        offload::offload_tcp_checksum(&mut frame).expect("TCP");
        frame
    };
    // No flags: verified here; the bad one is dropped and the next frame
    // (the good one) is what smoltcp gets.
    device.borrow_mut().deliver(&bad);
    device.borrow_mut().deliver(&good);
    let (rx, _) = nic.receive(now()).expect("the good frame");
    assert_eq!(rx.consume(|bytes| bytes.to_vec()), good);
    assert!(nic.receive(now()).is_none());
    assert_eq!(nic.counters().rx_bad_checksums, 1);
    // NEEDS_CSUM (partial checksum from the host) and DATA_VALID pass.
    device.borrow_mut().rx_flags = offload::NEEDS_CSUM;
    device.borrow_mut().deliver(&partial);
    let (rx, _) = nic.receive(now()).expect("the partial frame");
    assert_eq!(rx.consume(|bytes| bytes.to_vec()), partial);
    device.borrow_mut().rx_flags = offload::DATA_VALID;
    device.borrow_mut().deliver(&bad);
    assert!(nic.receive(now()).is_some());
    assert_eq!(nic.counters().rx_trusted_checksums, 2);
    assert_eq!(nic.counters().rx_bad_checksums, 1);
    // The dropped frame's slot went back to the device.
    nic.refill();
    assert_eq!(nic.rx_posted(), RX_SLOTS);
}
