//! The virtio-net NIC as a smoltcp `Device`.
//!
//! Packet buffers are fixed-size slots in two DMA pools (receive and
//! transmit) taken from RAM frames: 2 KiB for the standard 1500-byte MTU,
//! larger when the device offers a larger one (`VIRTIO_NET_F_MTU`, up to
//! [`MAX_MTU`]), so every slot holds a whole frame and its header. Every receive slot is posted to the device except
//! those smoltcp has consumed since the last re-post: [`Device::receive`]
//! re-posts them once [`RX_BATCH`] have gathered and [`Nic::end_poll`] at
//! the end of each poll, each time with one notify, so the receive ring
//! never starves however fast frames arrive and refills cost one VM exit
//! per batch, not per frame. Transmit slots are reclaimed from the used
//! ring before each send; when all are in flight smoltcp is told to wait.
//! Frames queued for sending are notified once per [`TX_BATCH`] and at the
//! end of the poll ([`Nic::end_poll`]), not once each.
//!
//! Invariant: a packet slot is owned either by the device (posted, in
//! `rx_posted` or `in_flight`) or by the driver (in `rx_done` or `free`,
//! or borrowed by one token), never both; every `unsafe` call into
//! `VirtIONetRaw` passes a slot the driver owns and hands it over.
//!
//! What the device reports is checked before use. A completed length
//! outside the posted slot (or short of the virtio-net header) is counted
//! in `rx_errors` and the slot, which is ours again, is re-posted. A
//! used-ring token that is not a chain the driver has posted (receive) or
//! in flight (transmit) is counted once (`bad_tokens`, and `rx_errors` or
//! `tx_errors`) and stops that queue: virtio-drivers 0.13 can only consume
//! a used entry through `pop_used` with that token, which indexes its
//! descriptor table with it (a panic for a token >= [`QUEUE_SIZE`]) and puts
//! the chain back on its free list (a second entry for a descriptor that is
//! already free or posted, so two posts could share it). Like Linux's
//! `BAD_RING`, the queue is then left alone: never polled again, so
//! [`Nic::has_rx`] is false and the event loop does not spin on the entry;
//! transmit goes on with the slots still free. Getting the queue back
//! needs a device reset.
//!
//! Checksum offload (see [`offload`]): with `VIRTIO_NET_F_CSUM` the device
//! completes outgoing TCP checksums (smoltcp no longer computes them); with
//! `VIRTIO_NET_F_GUEST_CSUM` the device may deliver frames whose checksum
//! it checked (`DATA_VALID`) or that carry a partial one (`NEEDS_CSUM`),
//! smoltcp's TCP/UDP checks are off, and every other TCP/UDP frame is
//! verified here (a bad one is counted in `rx_bad_checksums` and dropped).
//! With user-mode networking QEMU offers neither and nothing changes.

use alloc::vec::Vec;
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::virtio::{KernelHal, PoolHal};
use crate::virtio_drivers::device::net::{Offloads, VirtIONetRaw};
use crate::virtio_drivers::transport::pci::PciTransport;
use crate::virtio_drivers::transport::Transport;

/// Virtqueue size (QEMU's default for virtio-net).
pub const QUEUE_SIZE: usize = 256;
/// Bytes per packet slot with the standard MTU: virtio-net header (12) +
/// 1514-byte frame fits. Slots for a larger MTU are multiples of it.
const SLOT: usize = 2048;
/// Largest Ethernet frame without FCS with the standard MTU (1500 + 14).
pub const MAX_FRAME: usize = 1514;
/// The MTU without `VIRTIO_NET_F_MTU`.
pub const DEFAULT_MTU: u16 = 1500;
/// The largest device MTU negotiated (`VIRTIO_NET_F_MTU`; a device offering
/// more gets the standard 1500): bounds the slots at 10 KiB, i.e. 2.5 MiB
/// of receive and 1.25 MiB of transmit buffers.
pub const MAX_MTU: u16 = 9000;
/// The virtio-net header with `VIRTIO_F_VERSION_1`.
const HEADER: usize = 12;
/// Ethernet header (no FCS).
const ETHERNET_HEADER: usize = 14;
/// Receive slots: one per descriptor.
const RX_SLOTS: usize = QUEUE_SIZE;
/// Transmit slots.
const TX_SLOTS: usize = QUEUE_SIZE / 2;
/// Receive slots smoltcp has consumed before [`Device::receive`] re-posts
/// them (with one notify); the rest are re-posted by [`Nic::end_poll`].
/// With [`RX_SLOTS`] posted, the device always has at least
/// `RX_SLOTS - RX_BATCH` buffers.
const RX_BATCH: usize = 32;
/// Frames queued for transmission before the device is notified in the
/// middle of a poll; [`Nic::end_poll`] notifies for the rest.
const TX_BATCH: usize = 32;
const NONE: u16 = u16::MAX;

/// The raw virtio-net driver a NIC drives: the kernel's is over
/// [`KernelHal`] and the PCI transport; host tests use fakes.
pub type Raw<H = KernelHal, T = PciTransport> = VirtIONetRaw<H, T, QUEUE_SIZE>;

/// Driver-level counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct NicCounters {
    /// Frames the device completed with an error or a bad length.
    pub rx_errors: u64,
    /// Frames that could not be queued for transmission, and transmit
    /// completions the device got wrong.
    pub tx_errors: u64,
    /// Used-ring tokens that were not a chain the driver had handed over
    /// (also counted in `rx_errors` / `tx_errors`); each stops its queue.
    pub bad_tokens: u64,
    /// Receive buffers handed to the device. virtio-drivers notifies the
    /// device of each unless the device asked not to be
    /// (`VIRTQ_USED_F_NO_NOTIFY`), so this bounds the receive notifies.
    pub rx_submitted: u64,
    /// Frames handed to the device for transmission (each one a notify,
    /// unless the device suppressed notifications, as above).
    pub tx_submitted: u64,
    /// Receive-queue notifications (kicks: each a VM exit) sent.
    pub rx_notifies: u64,
    /// Transmit-queue notifications sent.
    pub tx_notifies: u64,
    /// Time spent in the calls that notified the device, both queues, in
    /// nanoseconds. A notify is a VM exit; under QEMU's TCG it also waits
    /// for QEMU's global lock, which the main loop holds while it moves
    /// packets (user networking: while slirp works), so this shows how
    /// long the vCPU waited on the device side.
    pub notify_ns: u64,
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Polls ([`Nic::end_poll`]) in which at least one frame was received;
    /// `rx_frames / rx_polls` is the mean receive batch.
    pub rx_polls: u64,
    /// Polls in which at least one frame was queued for transmission;
    /// `tx_submitted / tx_polls` is the mean transmit burst.
    pub tx_polls: u64,
    /// Received TCP/UDP frames with a wrong checksum (or a fragment), the
    /// device having vouched for neither: dropped (`GUEST_CSUM` only;
    /// without it smoltcp checks and drops them uncounted here).
    pub rx_bad_checksums: u64,
    /// Received frames the device vouched for (`DATA_VALID`/`NEEDS_CSUM`).
    pub rx_trusted_checksums: u64,
    /// Frames sent with `NEEDS_CSUM` (the device computed the checksum).
    pub tx_offloaded_checksums: u64,
}

/// A pool of fixed-size packet slots in one DMA region.
struct Slots {
    /// Virtual address of the pool (owned by this pool for good).
    start: usize,
    /// Length of the pool in bytes.
    len: usize,
    /// Bytes per slot.
    size: usize,
}

impl Slots {
    fn new<H: PoolHal>(count: usize, size: usize) -> Option<Self> {
        let pages = (count * size).div_ceil(4096);
        let (start, len) = H::pool(pages)?;
        Some(Self { start, len, size })
    }

    /// The slot's bytes.
    ///
    /// # Safety
    ///
    /// The caller must not hold another reference to the same slot, and the
    /// device must not own it (not posted, or already completed).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot(&self, index: usize) -> &mut [u8] {
        debug_assert!((index + 1) * self.size <= self.len);
        let start = self.start + index * self.size;
        // SAFETY: the pool is mapped memory of `len` bytes owned by this
        // pool for good (`PoolHal::pool`); exclusivity is the caller's promise.
        unsafe { core::slice::from_raw_parts_mut(start as *mut u8, self.size) }
    }
}

struct Transmit {
    slots: Slots,
    free: Vec<u16>,
    /// Descriptor token -> (slot, length handed to the device).
    in_flight: [(u16, u16); QUEUE_SIZE],
    counters: NicCounters,
    /// The device put a token in the transmit used ring that was not in
    /// flight: nothing is reclaimed any more.
    stopped: bool,
    /// Frames queued since the device was last notified.
    unkicked: usize,
    /// TSC cycles spent in calls that notified the device (both queues).
    notify_cycles: u64,
    /// `VIRTIO_NET_F_CSUM`: TCP checksums are left to the device.
    csum: bool,
}

/// The virtio-net device with its buffers.
pub struct Nic<H: PoolHal = KernelHal, T: Transport = PciTransport> {
    raw: Raw<H, T>,
    rx: Slots,
    /// Descriptor token -> receive slot.
    rx_posted: [u16; QUEUE_SIZE],
    /// Slots completed by the device and not yet re-posted.
    rx_done: Vec<u16>,
    /// The device put a token in the receive used ring that was not
    /// posted: the queue is no longer polled or refilled.
    rx_stopped: bool,
    tx: Transmit,
    /// `(rx_frames, tx_submitted)` at the last [`Nic::end_poll`].
    batch_start: (u64, u64),
    /// Whether the device may interrupt for received frames
    /// ([`Nic::interrupts_off`] / [`Nic::interrupts_on`]).
    rx_interrupts: bool,
    /// Whether the device may interrupt for transmit completions: only
    /// while every transmit slot is in flight at a halt.
    tx_interrupts: bool,
    /// What the device and driver negotiated (`max_mtu`: the device's MTU,
    /// 0 without `VIRTIO_NET_F_MTU`).
    offloads: Offloads,
    /// The MTU in use.
    mtu: u16,
}

impl<H: PoolHal, T: Transport> Nic<H, T> {
    /// Takes over an initialised virtio-net transport and posts every
    /// receive buffer.
    pub fn new(raw: Raw<H, T>) -> Option<Self> {
        let offloads = raw.offloads();
        // `with_offloads` negotiates an MTU only within 68..=max_mtu; the
        // clamp keeps the slot bound whatever a raw driver says.
        let mtu = match offloads.max_mtu {
            0 => DEFAULT_MTU,
            mtu => mtu.clamp(68, MAX_MTU),
        };
        let slot = (HEADER + ETHERNET_HEADER + usize::from(mtu))
            .div_ceil(SLOT)
            .max(1)
            * SLOT;
        let mut nic = Self {
            raw,
            rx: Slots::new::<H>(RX_SLOTS, slot)?,
            rx_posted: [NONE; QUEUE_SIZE],
            rx_done: (0..RX_SLOTS as u16).collect(),
            rx_stopped: false,
            tx: Transmit {
                slots: Slots::new::<H>(TX_SLOTS, slot)?,
                free: (0..TX_SLOTS as u16).collect(),
                in_flight: [(NONE, 0); QUEUE_SIZE],
                counters: NicCounters::default(),
                stopped: false,
                unkicked: 0,
                notify_cycles: 0,
                csum: offloads.csum,
            },
            batch_start: (0, 0),
            rx_interrupts: true,
            tx_interrupts: false,
            offloads,
            mtu,
        };
        // Transmit slots are reclaimed on the next send or poll, never on
        // an interrupt of their own (see `interrupts_on`).
        nic.raw.set_transmit_interrupts(false);
        nic.refill();
        Some(nic)
    }

    /// MAC address from the device's configuration.
    pub fn mac(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    /// The offloads negotiated with the device (`max_mtu` 0: no
    /// `VIRTIO_NET_F_MTU`).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The MTU in use: the device's with `VIRTIO_NET_F_MTU`, else 1500.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Driver counters.
    pub fn counters(&self) -> NicCounters {
        let mut counters = self.tx.counters;
        (counters.rx_notifies, counters.tx_notifies) = self.raw.notifies();
        counters.notify_ns = crate::time::cycles_to_ns(self.tx.notify_cycles);
        counters
    }

    /// NAPI-style: while the event loop is polling, the device need not
    /// interrupt; call at the start of a poll. Costs no device access
    /// (a ring field or nothing), and nothing when already off.
    pub fn interrupts_off(&mut self) {
        if self.rx_interrupts {
            self.raw.set_receive_interrupts(false);
            self.rx_interrupts = false;
        }
    }

    /// Turns receive interrupts back on before the event loop halts, and
    /// transmit-completion interrupts too if every transmit slot is in
    /// flight (nothing else would wake the loop to reclaim them). Returns
    /// whether work arrived before the device saw that (a frame received,
    /// or transmit slots freed while all were in flight): then poll
    /// again instead of halting, or that work would wait for the next
    /// interrupt that it did not raise.
    pub fn interrupts_on(&mut self) -> bool {
        if !self.rx_interrupts {
            // The re-check follows below (`has_rx`), after the fence the
            // call made; a stopped queue never counts as work.
            let _ = self.raw.set_receive_interrupts(true);
            self.rx_interrupts = true;
        }
        // Slots freed while all were in flight: smoltcp may have frames
        // waiting for them, so poll again.
        let tx_blocked = self.tx.free.is_empty();
        self.tx.reclaim(&mut self.raw);
        let tx_freed = tx_blocked && !self.tx.free.is_empty();
        let tx_wait = self.tx.free.is_empty() && !self.tx.stopped;
        if tx_wait != self.tx_interrupts {
            self.raw.set_transmit_interrupts(tx_wait);
            self.tx_interrupts = tx_wait;
        }
        if tx_wait {
            // The `used_event`/flags store above must be visible before the
            // used ring is read again (a store-load order).
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        }
        let tx_ready = tx_wait && self.raw.poll_transmit().is_some();
        self.has_rx() || tx_ready || tx_freed
    }

    /// Ends one poll of the stack: re-posts the receive slots smoltcp
    /// consumed and accounts the frames moved in this poll.
    pub fn end_poll(&mut self) {
        self.refill();
        self.tx.kick(&mut self.raw);
        let counters = &mut self.tx.counters;
        let rx = counters.rx_frames - self.batch_start.0;
        let tx = counters.tx_submitted - self.batch_start.1;
        if rx > 0 {
            counters.rx_polls += 1;
        }
        if tx > 0 {
            counters.tx_polls += 1;
        }
        self.batch_start = (counters.rx_frames, counters.tx_submitted);
    }

    /// Receive slots currently owned by the device.
    pub fn rx_posted(&self) -> usize {
        self.rx_posted.iter().filter(|s| **s != NONE).count()
    }

    /// Whether the device broke a queue (see the module documentation):
    /// (receive, transmit).
    pub fn stopped(&self) -> (bool, bool) {
        (self.rx_stopped, self.tx.stopped)
    }

    /// Re-posts every completed receive slot, with one notify for all.
    pub fn refill(&mut self) {
        if self.rx_stopped || self.rx_done.is_empty() {
            return;
        }
        self.post_receive_slots();
        timed_kick(&mut self.raw, &mut self.tx.notify_cycles, |raw| {
            raw.kick_receive()
        });
    }

    fn post_receive_slots(&mut self) {
        while let Some(slot) = self.rx_done.pop() {
            // SAFETY: the slot is not posted (it is in `rx_done`) and no
            // token borrows it any more (tokens live only inside a
            // `receive` call chain that ended before this `&mut self`).
            let buffer = unsafe { self.rx.slot(usize::from(slot)) };
            // SAFETY: the slot stays untouched by the kernel until the
            // device returns it through `poll_receive`.
            match unsafe { self.raw.receive_begin_deferred(buffer) } {
                Ok(token) if usize::from(token) < QUEUE_SIZE => {
                    self.rx_posted[usize::from(token)] = slot;
                    self.tx.counters.rx_submitted += 1;
                }
                // Posted under a token virtio-drivers never makes: the slot
                // stays the device's for good (never reused).
                Ok(_) => break,
                Err(_) => {
                    self.rx_done.push(slot);
                    break;
                }
            }
        }
    }

    /// Does the device have a completed receive buffer? Also true for a
    /// bad entry not yet seen by [`Device::receive`], which then stops the
    /// queue, so this is false from then on.
    pub fn has_rx(&self) -> bool {
        !self.rx_stopped && self.raw.poll_receive().is_some()
    }

    /// The receive slot posted under `token`, if the driver posted one.
    fn posted_slot(&self, token: u16) -> Option<u16> {
        self.rx_posted
            .get(usize::from(token))
            .copied()
            .filter(|&slot| slot != NONE)
    }

    /// Counts a bad receive completion and stops the queue.
    fn stop_receiving(&mut self, bad_token: bool) {
        self.rx_stopped = true;
        self.tx.counters.rx_errors += 1;
        if bad_token {
            self.tx.counters.bad_tokens += 1;
        }
        log::error!("virtio-net: bad receive completion; receive stopped");
    }
}

/// Runs `kick` (one queue's notify, unless the device suppressed it; it
/// says whether it notified) and adds the time it took to `cycles` when it
/// did: the figure behind [`NicCounters::notify_ns`].
fn timed_kick<H: PoolHal, T: Transport>(
    raw: &mut Raw<H, T>,
    cycles: &mut u64,
    kick: impl FnOnce(&mut Raw<H, T>) -> bool,
) {
    let start = crate::time::cycles();
    if kick(raw) {
        *cycles += crate::time::cycles().wrapping_sub(start);
    }
}

impl Transmit {
    /// Notifies the device of the frames queued since the last notify
    /// (unless it suppressed notifications).
    fn kick<H: PoolHal, T: Transport>(&mut self, raw: &mut Raw<H, T>) {
        if self.unkicked > 0 {
            timed_kick(raw, &mut self.notify_cycles, |raw| raw.kick_transmit());
            self.unkicked = 0;
        }
    }

    /// Returns completed transmit slots to the free list.
    fn reclaim<H: PoolHal, T: Transport>(&mut self, raw: &mut Raw<H, T>) {
        while !self.stopped {
            let Some(token) = raw.poll_transmit() else {
                break;
            };
            let in_flight = self
                .in_flight
                .get(usize::from(token))
                .copied()
                .filter(|&(slot, _)| slot != NONE);
            let Some((slot, len)) = in_flight else {
                // Not a chain we handed over: `transmit_complete` could not
                // consume it safely (see the module documentation).
                self.stop(true);
                break;
            };
            // SAFETY: the device completed this slot (it is in the used ring).
            let buffer = unsafe { self.slots.slot(usize::from(slot)) };
            // SAFETY: same slot and length as passed to `transmit_begin`.
            if unsafe { raw.transmit_complete(token, &buffer[..usize::from(len)]) }.is_err() {
                // Not popped (only `NotReady`/`WrongToken` fail, which the
                // token just peeked rules out): the device may still own the
                // slot, so it is not freed.
                self.stop(false);
                break;
            }
            self.in_flight[usize::from(token)] = (NONE, 0);
            self.free.push(slot);
        }
    }

    /// Counts a bad transmit completion and stops reclaiming.
    fn stop(&mut self, bad_token: bool) {
        self.stopped = true;
        self.counters.tx_errors += 1;
        if bad_token {
            self.counters.bad_tokens += 1;
        }
        log::error!("virtio-net: bad transmit completion; transmit slots are no longer reclaimed");
    }
}

/// A received frame, borrowed from its DMA slot.
pub struct RxToken<'a> {
    frame: &'a [u8],
}

/// Permission to send one frame.
pub struct TxToken<'a, H: PoolHal = KernelHal, T: Transport = PciTransport> {
    raw: &'a mut Raw<H, T>,
    tx: &'a mut Transmit,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl<H: PoolHal, T: Transport> phy::TxToken for TxToken<'_, H, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.reclaim(self.raw);
        let Some(slot) = self.tx.free.pop() else {
            // Only reachable through the reply token paired with a received
            // frame: build the frame into scratch space and drop it (TCP
            // retransmits; ARP/ICMP replies are best-effort anyway).
            self.tx.counters.tx_errors += 1;
            let mut scratch = alloc::vec![0u8; len];
            return f(&mut scratch);
        };
        // SAFETY: a free slot is owned by nobody.
        let buffer = unsafe { self.tx.slots.slot(usize::from(slot)) };
        // A slot is at least SLOT bytes, larger than any virtio-net header.
        let header = self.raw.fill_buffer_header(buffer).unwrap_or(HEADER);
        let len = len.min(buffer.len() - header);
        let result = f(&mut buffer[header..header + len]);
        if self.tx.csum {
            let (head, frame) = buffer.split_at_mut(header);
            let partial = offload::offload_tcp_checksum(&mut frame[..len]);
            if partial.is_some() {
                self.tx.counters.tx_offloaded_checksums += 1;
            }
            offload::write_header(head, partial);
        }
        let total = header + len;
        // SAFETY: the slot is not touched again until `reclaim` sees the
        // device complete it.
        match unsafe { self.raw.transmit_begin_deferred(&buffer[..total]) } {
            Ok(token) if usize::from(token) < QUEUE_SIZE => {
                // `total` <= the slot size (at most 10 KiB) fits in u16.
                self.tx.in_flight[usize::from(token)] = (slot, total as u16);
                self.tx.counters.tx_submitted += 1;
                self.tx.unkicked += 1;
                if self.tx.unkicked >= TX_BATCH {
                    self.tx.kick(self.raw);
                }
            }
            // Queued under a token virtio-drivers never makes: the slot
            // stays the device's for good (never reused).
            Ok(_) => self.tx.counters.tx_errors += 1,
            Err(_) => {
                self.tx.counters.tx_errors += 1;
                self.tx.free.push(slot);
            }
        }
        result
    }
}

/// What smoltcp computes and verifies given the negotiated offloads:
/// with `CSUM` the device completes TCP checksums (the driver hands it the
/// pseudo-header sum, see [`offload`]); with `GUEST_CSUM` the driver
/// verifies TCP and UDP itself, trusting only the device's flags. IPv4
/// header and ICMP checksums stay smoltcp's; UDP is still computed by it
/// (DHCP only, not worth a header).
pub fn checksums(offloads: Offloads) -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    caps.tcp = match (offloads.csum, offloads.guest_csum) {
        (false, false) => Checksum::Both,
        (true, false) => Checksum::Rx,
        (false, true) => Checksum::Tx,
        (true, true) => Checksum::None,
    };
    if offloads.guest_csum {
        caps.udp = Checksum::Tx;
    }
    caps
}

pub mod offload;
#[cfg(test)]
mod test_frames;
#[cfg(test)]
mod tests;

impl<H: PoolHal, T: Transport> Device for Nic<H, T> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, H, T>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_, H, T>)> {
        if self.rx_done.len() >= RX_BATCH {
            self.refill();
        }
        loop {
            if self.rx_stopped {
                return None;
            }
            let token = self.raw.poll_receive()?;
            let Some(slot) = self.posted_slot(token) else {
                // Not a chain we posted: `receive_complete` could not consume
                // it safely (see the module documentation).
                self.stop_receiving(true);
                return None;
            };
            // SAFETY: the device completed the slot; it is ours again.
            let buffer = unsafe { self.rx.slot(usize::from(slot)) };
            // SAFETY: same slot as passed to `receive_begin` for this token.
            let result = unsafe { self.raw.receive_complete(token, buffer) };
            match result {
                // Popped: the slot is ours again (a too-short length is
                // `IoError` after the pop).
                Ok(_) | Err(crate::virtio_drivers::Error::IoError) => {
                    self.rx_posted[usize::from(token)] = NONE;
                    self.rx_done.push(slot);
                }
                // Not popped: the device may still own the slot.
                Err(_) => {
                    self.stop_receiving(false);
                    return None;
                }
            }
            match result {
                Ok((header, len)) if len > 0 && header + len <= self.rx.size => {
                    if self.offloads.guest_csum {
                        // SAFETY: the slot is ours (popped above) and this
                        // borrow ends within the block.
                        let buffer = unsafe { &self.rx.slot(usize::from(slot))[..header + len] };
                        // `header` >= 10 (`receive_complete` checked the
                        // length); byte 0 is the flags.
                        match offload::receive_checksum_ok(buffer[0], &buffer[header..]) {
                            offload::Received::Bad => {
                                self.tx.counters.rx_bad_checksums += 1;
                                continue;
                            }
                            offload::Received::Trusted => {
                                self.tx.counters.rx_trusted_checksums += 1;
                            }
                            _ => {}
                        }
                    }
                    // SAFETY: the slot stays in `rx_done` (not posted) until
                    // the next `refill`, which needs `&mut self` and so
                    // cannot run while this token borrows `self.rx`.
                    let frame = unsafe { &self.rx.slot(usize::from(slot))[header..header + len] };
                    self.tx.counters.rx_frames += 1;
                    return Some((
                        RxToken { frame },
                        TxToken {
                            raw: &mut self.raw,
                            tx: &mut self.tx,
                        },
                    ));
                }
                _ => self.tx.counters.rx_errors += 1,
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_, H, T>> {
        self.tx.reclaim(&mut self.raw);
        if self.tx.free.is_empty() || !self.raw.can_send() {
            // The device must see what is queued to free any of it.
            self.tx.kick(&mut self.raw);
            return None;
        }
        Some(TxToken {
            raw: &mut self.raw,
            tx: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_HEADER + usize::from(self.mtu);
        caps.checksum = checksums(self.offloads);
        caps
    }
}
