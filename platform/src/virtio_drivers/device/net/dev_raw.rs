use super::{Config, EthernetAddress, Features, VirtioNetHdr, VirtioNetHdrLegacy};
use super::{MIN_BUFFER_LEN, QUEUE_RECEIVE, QUEUE_TRANSMIT, SUPPORTED_FEATURES};
use crate::virtio_drivers::config::read_config;
use crate::virtio_drivers::hal::Hal;
use crate::virtio_drivers::queue::VirtQueue;
use crate::virtio_drivers::transport::{InterruptStatus, Transport};
use crate::virtio_drivers::{Error, Result};
use core::mem::size_of;
use log::{debug, info, warn};
use zerocopy::IntoBytes;

/// Raw driver for a VirtIO network device.
///
/// This is a raw version of the VirtIONet driver. It provides non-blocking
/// methods for transmitting and receiving raw slices, without the buffer
/// management. For more higher-level functions such as receive buffer backing,
/// see [`VirtIONet`].
///
/// [`VirtIONet`]: super::VirtIONet
pub struct VirtIONetRaw<H: Hal, T: Transport, const QUEUE_SIZE: usize> {
    transport: T,
    mac: EthernetAddress,
    recv_queue: VirtQueue<H, QUEUE_SIZE>,
    send_queue: VirtQueue<H, QUEUE_SIZE>,
    /// Whether `num_buffers` is missing in the `virtio_net_hdr` struct.
    pub(crate) legacy_header: bool,
    /// Device notifications sent (`[receive, transmit]`), for statistics.
    notifies: [u64; 2],
    /// What [`Self::with_offloads`] negotiated.
    offloads: Offloads,
}

/// Optional virtio-net features ([`VirtIONetRaw::with_offloads`]).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Offloads {
    /// `VIRTIO_NET_F_CSUM`: the driver may hand the device frames with a partial checksum
    /// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, `csum_start`, `csum_offset` in the header).
    pub csum: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM`: the device may hand the driver frames with a partial checksum
    /// (`NEEDS_CSUM`) or with the checksum already checked (`VIRTIO_NET_HDR_F_DATA_VALID`).
    pub guest_csum: bool,
    /// `VIRTIO_NET_F_MTU`: asked for, the largest device MTU accepted (0: not negotiated);
    /// negotiated, the device's MTU (0: not negotiated).
    pub max_mtu: u16,
}

impl<H: Hal, T: Transport, const QUEUE_SIZE: usize> VirtIONetRaw<H, T, QUEUE_SIZE> {
    /// Create a new VirtIO-Net driver.
    pub fn new(transport: T) -> Result<Self> {
        Self::with_offloads(transport, Offloads::default())
    }

    /// Create a new VirtIO-Net driver that also negotiates the offloads in `offloads` the device
    /// offers: `VIRTIO_NET_F_CSUM`, `VIRTIO_NET_F_GUEST_CSUM`, and `VIRTIO_NET_F_MTU` when the
    /// device's `mtu` is in `68..=offloads.max_mtu` (a larger one is not negotiated: the driver
    /// would have to post receive buffers for it). [`Self::offloads`] says what was negotiated.
    pub fn with_offloads(mut transport: T, offloads: Offloads) -> Result<Self> {
        let offered = Features::from_bits_truncate(transport.read_device_features());
        let mut supported = SUPPORTED_FEATURES;
        if offloads.csum {
            supported |= Features::CSUM;
        }
        if offloads.guest_csum {
            supported |= Features::GUEST_CSUM;
        }
        let mut mtu = None;
        if offloads.max_mtu > 0 && offered.contains(Features::MTU) {
            // The device-specific configuration is readable before negotiation (virtio 1.2
            // §5.1.4: `mtu` exists if VIRTIO_NET_F_MTU is offered).
            let offered_mtu = read_config!(transport, Config, mtu)?;
            if (68..=offloads.max_mtu).contains(&offered_mtu) {
                supported |= Features::MTU;
                mtu = Some(offered_mtu);
            }
        }
        let negotiated_features = transport.begin_init(supported);
        info!("negotiated_features {:?}", negotiated_features);
        let negotiated = Offloads {
            csum: negotiated_features.contains(Features::CSUM),
            guest_csum: negotiated_features.contains(Features::GUEST_CSUM),
            max_mtu: if negotiated_features.contains(Features::MTU) {
                mtu.unwrap_or(0)
            } else {
                0
            },
        };

        // Read configuration space.
        let mac = transport.read_consistent(|| read_config!(transport, Config, mac))?;
        let status = read_config!(transport, Config, status)?;
        debug!("Got MAC={:02x?}, status={:?}", mac, status);

        let send_queue = VirtQueue::new(
            &mut transport,
            QUEUE_TRANSMIT,
            negotiated_features.contains(Features::RING_INDIRECT_DESC),
            negotiated_features.contains(Features::RING_EVENT_IDX),
        )?;
        let recv_queue = VirtQueue::new(
            &mut transport,
            QUEUE_RECEIVE,
            negotiated_features.contains(Features::RING_INDIRECT_DESC),
            negotiated_features.contains(Features::RING_EVENT_IDX),
        )?;

        transport.finish_init();

        Ok(VirtIONetRaw {
            transport,
            mac,
            recv_queue,
            send_queue,
            legacy_header: !negotiated_features.contains(Features::VERSION_1)
                && !negotiated_features.contains(Features::MRG_RXBUF),
            notifies: [0; 2],
            offloads: negotiated,
        })
    }

    /// The offloads negotiated: `max_mtu` is the device's MTU if `VIRTIO_NET_F_MTU` was
    /// negotiated, else 0.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Acknowledge interrupt.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }

    /// Disable interrupts.
    pub fn disable_interrupts(&mut self) {
        self.send_queue.set_dev_notify(false);
        self.recv_queue.set_dev_notify(false);
    }

    /// Enable interrupts.
    pub fn enable_interrupts(&mut self) {
        self.send_queue.set_dev_notify(true);
        self.recv_queue.set_dev_notify(true);
    }

    /// Device notifications (queue kicks) sent so far: `(receive, transmit)`.
    pub fn notifies(&self) -> (u64, u64) {
        (self.notifies[0], self.notifies[1])
    }

    /// Turns used-buffer notifications (interrupts) for the receive queue off or on. Turning
    /// them on returns whether a received buffer is already waiting, which raised no
    /// notification: poll again before waiting for one.
    pub fn set_receive_interrupts(&mut self, enable: bool) -> bool {
        if enable {
            self.recv_queue.enable_dev_notify_and_check()
        } else {
            self.recv_queue.set_dev_notify(false);
            false
        }
    }

    /// Turns used-buffer notifications (interrupts) for the transmit queue off or on. A driver
    /// that reclaims transmit buffers when it next sends or polls never needs them on.
    pub fn set_transmit_interrupts(&mut self, enable: bool) {
        self.send_queue.set_dev_notify(enable);
    }

    /// Like [`Self::transmit_begin`] but without notifying the device: call
    /// [`Self::kick_transmit`] after the last buffer of a burst.
    ///
    /// # Safety
    ///
    /// As for [`Self::transmit_begin`].
    pub unsafe fn transmit_begin_deferred(&mut self, tx_buf: &[u8]) -> Result<u16> {
        self.check_tx_buf_len(tx_buf)?;
        // SAFETY: The caller promises that `tx_buf` is not accessed before the request completes.
        unsafe { self.send_queue.add(&[tx_buf], &mut []) }
    }

    /// Like [`Self::receive_begin`] but without notifying the device: call
    /// [`Self::kick_receive`] after the last buffer of a batch.
    ///
    /// # Safety
    ///
    /// As for [`Self::receive_begin`].
    pub unsafe fn receive_begin_deferred(&mut self, rx_buf: &mut [u8]) -> Result<u16> {
        Self::check_rx_buf_len(rx_buf)?;
        // SAFETY: The caller promises that `rx_buf` is not accessed before the request completes.
        unsafe { self.recv_queue.add(&[], &mut [rx_buf]) }
    }

    /// Notifies the device of the transmit buffers added since the last notification decision,
    /// unless it suppressed notifications. Returns whether it notified.
    pub fn kick_transmit(&mut self) -> bool {
        let notify = self.send_queue.should_notify();
        if notify {
            self.notifies[1] += 1;
            self.transport.notify(QUEUE_TRANSMIT);
        }
        notify
    }

    /// Notifies the device of the receive buffers added since the last notification decision,
    /// unless it suppressed notifications. Returns whether it notified.
    pub fn kick_receive(&mut self) -> bool {
        let notify = self.recv_queue.should_notify();
        if notify {
            self.notifies[0] += 1;
            self.transport.notify(QUEUE_RECEIVE);
        }
        notify
    }

    /// Get MAC address.
    pub fn mac_address(&self) -> EthernetAddress {
        self.mac
    }

    /// Whether can send packet.
    pub fn can_send(&self) -> bool {
        self.send_queue.available_desc() >= 2
    }

    /// Whether the length of the receive buffer is valid.
    fn check_rx_buf_len(rx_buf: &[u8]) -> Result<()> {
        if rx_buf.len() < MIN_BUFFER_LEN {
            warn!("Receive buffer len {} is too small", rx_buf.len());
            Err(Error::InvalidParam)
        } else {
            Ok(())
        }
    }

    /// Whether the length of the transmit buffer is valid.
    fn check_tx_buf_len(&self, tx_buf: &[u8]) -> Result<()> {
        let hdr_size = if self.legacy_header {
            size_of::<VirtioNetHdrLegacy>()
        } else {
            size_of::<VirtioNetHdr>()
        };
        if tx_buf.len() < hdr_size {
            warn!("Transmit buffer len {} is too small", tx_buf.len());
            Err(Error::InvalidParam)
        } else {
            Ok(())
        }
    }

    /// Fill the header of the `buffer` with [`VirtioNetHdr`].
    ///
    /// If the `buffer` is not large enough, it returns [`Error::InvalidParam`].
    pub fn fill_buffer_header(&self, buffer: &mut [u8]) -> Result<usize> {
        macro_rules! fill {
            ($hdr:ty) => {{
                if buffer.len() < size_of::<$hdr>() {
                    return Err(Error::InvalidParam);
                }
                let header = <$hdr>::default();
                buffer[..size_of::<$hdr>()].copy_from_slice(header.as_bytes());
                Ok(size_of::<$hdr>())
            }};
        }
        if self.legacy_header {
            fill!(VirtioNetHdrLegacy)
        } else {
            fill!(VirtioNetHdr)
        }
    }

    /// Submits a request to transmit a buffer immediately without waiting for
    /// the transmission to complete.
    ///
    /// It will submit request to the VirtIO net device and return a token
    /// identifying the position of the first descriptor in the chain. If there
    /// are not enough descriptors to allocate, then it returns
    /// [`Error::QueueFull`].
    ///
    /// The caller needs to fill the `tx_buf` with a header by calling
    /// [`fill_buffer_header`] before transmission. Then it calls [`poll_transmit`]
    /// with the returned token to check whether the device has finished handling
    /// the request. Once it has, the caller must call [`transmit_complete`] with
    /// the same buffer before reading the result (transmitted length).
    ///
    /// # Safety
    ///
    /// `tx_buf` is still borrowed by the underlying VirtIO net device even after
    /// this method returns. Thus, it is the caller's responsibility to guarantee
    /// that they are not accessed before the request is completed in order to
    /// avoid data races.
    ///
    /// [`fill_buffer_header`]: Self::fill_buffer_header
    /// [`poll_transmit`]: Self::poll_transmit
    /// [`transmit_complete`]: Self::transmit_complete
    pub unsafe fn transmit_begin(&mut self, tx_buf: &[u8]) -> Result<u16> {
        self.check_tx_buf_len(tx_buf)?;
        // SAFETY: The caller promises that `tx_buf` is not accessed before the request completes.
        let token = unsafe { self.send_queue.add(&[tx_buf], &mut [])? };
        if self.send_queue.should_notify() {
            self.notifies[1] += 1;
            self.transport.notify(QUEUE_TRANSMIT);
        }
        Ok(token)
    }

    /// Fetches the token of the next completed transmission request from the
    /// used ring and returns it, without removing it from the used ring. If
    /// there are no pending completed requests it returns [`None`].
    pub fn poll_transmit(&mut self) -> Option<u16> {
        self.send_queue.peek_used()
    }

    /// Completes a transmission operation which was started by [`transmit_begin`].
    /// Returns number of bytes transmitted.
    ///
    /// # Safety
    ///
    /// The same buffer must be passed in again as was passed to
    /// [`transmit_begin`] when it returned the token.
    ///
    /// [`transmit_begin`]: Self::transmit_begin
    pub unsafe fn transmit_complete(&mut self, token: u16, tx_buf: &[u8]) -> Result<usize> {
        // SAFETY: The caller promises that `tx_buf` is the same one passed to the corresponding
        // call to `transmit_begin`.
        let len = unsafe { self.send_queue.pop_used(token, &[tx_buf], &mut [])? };
        Ok(len as usize)
    }

    /// Submits a request to receive a buffer immediately without waiting for
    /// the reception to complete.
    ///
    /// It will submit request to the VirtIO net device and return a token
    /// identifying the position of the first descriptor in the chain. If there
    /// are not enough descriptors to allocate, then it returns
    /// [`Error::QueueFull`].
    ///
    /// The caller can then call [`poll_receive`] with the returned token to
    /// check whether the device has finished handling the request. Once it has,
    /// the caller must call [`receive_complete`] with the same buffer before
    /// reading the response.
    ///
    /// # Safety
    ///
    /// `rx_buf` is still borrowed by the underlying VirtIO net device even after
    /// this method returns. Thus, it is the caller's responsibility to guarantee
    /// that they are not accessed before the request is completed in order to
    /// avoid data races.
    ///
    /// [`poll_receive`]: Self::poll_receive
    /// [`receive_complete`]: Self::receive_complete
    pub unsafe fn receive_begin(&mut self, rx_buf: &mut [u8]) -> Result<u16> {
        Self::check_rx_buf_len(rx_buf)?;
        // SAFETY: The caller promises that `rx_buf` is not accessed before the request completes.
        let token = unsafe { self.recv_queue.add(&[], &mut [rx_buf])? };
        if self.recv_queue.should_notify() {
            self.notifies[0] += 1;
            self.transport.notify(QUEUE_RECEIVE);
        }
        Ok(token)
    }

    /// Fetches the token of the next completed reception request from the
    /// used ring and returns it, without removing it from the used ring. If
    /// there are no pending completed requests it returns [`None`].
    pub fn poll_receive(&self) -> Option<u16> {
        self.recv_queue.peek_used()
    }

    /// Completes a transmission operation which was started by [`receive_begin`].
    ///
    /// After completion, the `rx_buf` will contain a header followed by the
    /// received packet. It returns the length of the header and the length of
    /// the packet.
    ///
    /// # Safety
    ///
    /// The same buffer must be passed in again as was passed to
    /// [`receive_begin`] when it returned the token.
    ///
    /// [`receive_begin`]: Self::receive_begin
    pub unsafe fn receive_complete(
        &mut self,
        token: u16,
        rx_buf: &mut [u8],
    ) -> Result<(usize, usize)> {
        // SAFETY: The caller promises that `rx_buf` is the same one passed to the corresponding
        // call to `receive_begin`.
        let len = unsafe { self.recv_queue.pop_used(token, &[], &mut [rx_buf])? } as usize;
        let hdr_size = if self.legacy_header {
            size_of::<VirtioNetHdrLegacy>()
        } else {
            size_of::<VirtioNetHdr>()
        };
        let packet_len = len.checked_sub(hdr_size).ok_or(Error::IoError)?;
        Ok((hdr_size, packet_len))
    }

    /// Sends a packet to the network, and blocks until the request completed.
    pub fn send(&mut self, tx_buf: &[u8]) -> Result {
        macro_rules! send {
            ($header:expr) => {{
                let header = $header;
                if tx_buf.is_empty() {
                    // Special case sending an empty packet, to avoid adding an empty buffer to the
                    // virtqueue.
                    self.send_queue.add_notify_wait_pop(
                        &[header.as_bytes()],
                        &mut [],
                        &mut self.transport,
                    )?;
                } else {
                    self.send_queue.add_notify_wait_pop(
                        &[header.as_bytes(), tx_buf],
                        &mut [],
                        &mut self.transport,
                    )?;
                }
            }};
        }
        if self.legacy_header {
            send!(VirtioNetHdrLegacy::default())
        } else {
            send!(VirtioNetHdr::default())
        };
        Ok(())
    }

    /// Blocks and waits for a packet to be received.
    ///
    /// After completion, the `rx_buf` will contain a header followed by the
    /// received packet. It returns the length of the header and the length of
    /// the packet.
    pub fn receive_wait(&mut self, rx_buf: &mut [u8]) -> Result<(usize, usize)> {
        // SAFETY: After calling `receive_begin`, `rx_buf` is not accessed
        // until calling `receive_complete` when the request is complete.
        let token = unsafe { self.receive_begin(rx_buf)? };
        while self.poll_receive().is_none() {
            core::hint::spin_loop();
        }
        // SAFETY: This `rx_buf` is the same one passed to `receive_begin`.
        unsafe { self.receive_complete(token, rx_buf) }
    }
}

impl<H: Hal, T: Transport, const QUEUE_SIZE: usize> Drop for VirtIONetRaw<H, T, QUEUE_SIZE> {
    fn drop(&mut self) {
        // Clear any pointers pointing to DMA regions, so the device doesn't try to access them
        // after they have been freed.
        self.transport.queue_unset(QUEUE_RECEIVE);
        self.transport.queue_unset(QUEUE_TRANSMIT);
    }
}
