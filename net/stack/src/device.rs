//! A pass-through `Device` that counts packets and bytes in both directions.

use core::cell::Cell;
use core::fmt;
use smoltcp::phy::{Device, DeviceCapabilities, RxToken, TxToken};
use smoltcp::time::Instant;

/// Interface counters shown by the shell's `net` command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed to the stack.
    pub rx_packets: u64,
    /// Bytes in those frames.
    pub rx_bytes: u64,
    /// Frames the stack transmitted.
    pub tx_packets: u64,
    /// Bytes in those frames.
    pub tx_bytes: u64,
    /// Receive errors reported by the driver (see [`crate::NetStack::counters_mut`]).
    pub rx_errors: u64,
    /// Transmit errors reported by the driver.
    pub tx_errors: u64,
    /// Times the stack wanted to send but the driver had no free buffer.
    pub tx_busy: u64,
    /// TCP connections accepted over all listeners.
    pub connections_accepted: u64,
    /// TCP connections currently open.
    pub connections_active: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rx: {} packets {} bytes {} errors",
            self.rx_packets, self.rx_bytes, self.rx_errors
        )?;
        writeln!(
            f,
            "tx: {} packets {} bytes {} errors {} busy",
            self.tx_packets, self.tx_bytes, self.tx_errors, self.tx_busy
        )?;
        write!(
            f,
            "tcp: {} accepted {} active",
            self.connections_accepted, self.connections_active
        )
    }
}

/// The fields the device wrapper maintains. Cells, because the receive
/// path hands out an rx token and a reply tx token at the same time and both
/// must count.
#[derive(Debug, Default)]
struct Tally {
    rx_packets: Cell<u64>,
    rx_bytes: Cell<u64>,
    tx_packets: Cell<u64>,
    tx_bytes: Cell<u64>,
    tx_busy: Cell<u64>,
}

fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

/// Wraps a device and counts what crosses it.
#[derive(Debug)]
pub struct CountingDevice<D> {
    inner: D,
    tally: Tally,
}

impl<D> CountingDevice<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            tally: Tally::default(),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Writes the packet/byte/busy counts into `counters`.
    pub fn fill(&self, counters: &mut Counters) {
        counters.rx_packets = self.tally.rx_packets.get();
        counters.rx_bytes = self.tally.rx_bytes.get();
        counters.tx_packets = self.tally.tx_packets.get();
        counters.tx_bytes = self.tally.tx_bytes.get();
        counters.tx_busy = self.tally.tx_busy.get();
    }

    /// Total frames moved in either direction (cheap change detector).
    pub fn frames(&self) -> u64 {
        self.tally
            .rx_packets
            .get()
            .wrapping_add(self.tally.tx_packets.get())
    }
}

/// Receive token that counts the frame when it is consumed.
pub struct CountingRx<'a, T> {
    token: T,
    tally: &'a Tally,
}

/// Transmit token that counts the frame when it is sent.
pub struct CountingTx<'a, T> {
    token: T,
    tally: &'a Tally,
}

impl<T: RxToken> RxToken for CountingRx<'_, T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let tally = self.tally;
        self.token.consume(|frame| {
            bump(&tally.rx_packets, 1);
            bump(&tally.rx_bytes, frame.len() as u64);
            f(frame)
        })
    }

    fn meta(&self) -> smoltcp::phy::PacketMeta {
        self.token.meta()
    }
}

impl<T: TxToken> TxToken for CountingTx<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        bump(&self.tally.tx_packets, 1);
        bump(&self.tally.tx_bytes, len as u64);
        self.token.consume(len, f)
    }

    fn set_meta(&mut self, meta: smoltcp::phy::PacketMeta) {
        self.token.set_meta(meta)
    }
}

impl<D: Device> Device for CountingDevice<D> {
    type RxToken<'a>
        = CountingRx<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = CountingTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let tally = &self.tally;
        let (rx, tx) = self.inner.receive(timestamp)?;
        Some((
            CountingRx { token: rx, tally },
            CountingTx { token: tx, tally },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let tally = &self.tally;
        match self.inner.transmit(timestamp) {
            Some(token) => Some(CountingTx { token, tally }),
            None => {
                bump(&tally.tx_busy, 1);
                None
            }
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}
