//! virtio-rng (virtio 1.2 §5.4): the entropy source when the CPU has no
//! RDRAND.
//!
//! virtio-drivers' `VirtIORng::request_entropy` waits for the device in an
//! unbounded spin (`VirtQueue::add_notify_wait_pop`): a device that never
//! answers would hang boot or a TLS handshake for good. So this driver does
//! what `VirtIORng::new` does (one queue, `VIRTIO_F_VERSION_1`) on
//! virtio-drivers' own `VirtQueue`, and for each request posts one
//! device-writable buffer, notifies, and polls the used ring until a
//! deadline ([`TIMEOUT_MS`]). The ring handling stays virtio-drivers'.
//!
//! Invariant: the request buffer is one DMA pool page owned by this driver
//! for the kernel's life; it is owned either by the device (posted) or by
//! the driver, never both. After a timeout the device still owns it, so the
//! driver marks itself dead and never touches the buffer or the queue
//! again: every later request fails ([`RngError::Dead`]), no bytes are
//! made up.

use crate::virtio::PoolHal;
use crate::virtio_drivers::device::common::Feature;
use crate::virtio_drivers::queue::VirtQueue;
use crate::virtio_drivers::transport::Transport;

/// How long one request may wait for the device, in milliseconds. QEMU's
/// backend (`/dev/urandom` on the host) answers at once; a device that is
/// rate-limited or broken past this bound counts as failed for good.
pub const TIMEOUT_MS: u64 = 1000;

/// Bytes asked for per request (one page, the buffer's size).
pub const REQUEST_BYTES: usize = 4096;

const QUEUE: u16 = 0;
const QUEUE_SIZE: usize = 8;

/// Why a request gave no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngError {
    /// The device did not answer within [`TIMEOUT_MS`]; it is not used again.
    Timeout,
    /// An earlier request timed out or failed; the device is not used again.
    Dead,
    /// The device reported more bytes than the buffer holds.
    BadLength(u32),
    /// virtio-drivers refused the request.
    Device(crate::virtio_drivers::Error),
}

impl core::fmt::Display for RngError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Timeout => write!(f, "virtio-rng did not answer within {TIMEOUT_MS} ms"),
            Self::Dead => f.write_str("virtio-rng failed earlier and is not used"),
            Self::BadLength(len) => {
                write!(f, "virtio-rng reported {len} bytes for a 4096-byte buffer")
            }
            Self::Device(error) => write!(f, "virtio-rng: {error}"),
        }
    }
}

/// A started virtio-rng device.
pub struct Rng<H: PoolHal, T: Transport> {
    transport: T,
    queue: VirtQueue<H, QUEUE_SIZE>,
    /// Virtual address of the request page (a DMA pool, never freed).
    buffer: usize,
    dead: bool,
}

impl<H: PoolHal, T: Transport> Rng<H, T> {
    /// Negotiates features, sets up the queue and the request page, and
    /// starts the device. `None`-like failures come back as the error.
    pub fn new(mut transport: T) -> Result<Self, RngError> {
        let (buffer, len) = H::pool(REQUEST_BYTES / 4096)
            .ok_or(RngError::Device(crate::virtio_drivers::Error::DmaError))?;
        if len < REQUEST_BYTES {
            return Err(RngError::Device(crate::virtio_drivers::Error::DmaError));
        }
        let _features = transport.begin_init(Feature::VERSION_1);
        let queue =
            VirtQueue::new(&mut transport, QUEUE, false, false).map_err(RngError::Device)?;
        transport.finish_init();
        Ok(Self {
            transport,
            queue,
            buffer,
            dead: false,
        })
    }

    /// Asks the device for up to `out.len()` bytes (at most
    /// [`REQUEST_BYTES`]) and copies what it gave into `out`; returns how
    /// many. Waits at most [`TIMEOUT_MS`] as `now_ms` counts.
    pub fn request(
        &mut self,
        out: &mut [u8],
        mut now_ms: impl FnMut() -> u64,
    ) -> Result<usize, RngError> {
        if self.dead {
            return Err(RngError::Dead);
        }
        let want = out.len().min(REQUEST_BYTES);
        if want == 0 {
            return Ok(0);
        }
        // SAFETY: the page is `REQUEST_BYTES` of mapped DMA pool memory
        // owned by this driver for good (`PoolHal::pool`), and `&mut self`
        // is the only way to it: no other reference exists while this one
        // lives, and the device does not own it (not dead, so every earlier
        // request was popped).
        let buffer = unsafe { core::slice::from_raw_parts_mut(self.buffer as *mut u8, want) };
        // SAFETY: the buffer stays valid for good (pool memory) and is not
        // touched again until `pop_used` with this token succeeds; if that
        // never happens the driver goes dead and never touches it again.
        let token = match unsafe { self.queue.add(&[], &mut [&mut *buffer]) } {
            Ok(token) => token,
            Err(error) => return Err(RngError::Device(error)),
        };
        if self.queue.should_notify() {
            self.transport.notify(QUEUE);
        }
        let start = now_ms();
        while !self.queue.can_pop() {
            if now_ms().saturating_sub(start) >= TIMEOUT_MS {
                self.dead = true;
                return Err(RngError::Timeout);
            }
            core::hint::spin_loop();
        }
        // SAFETY: the same buffers as passed to `add` with this token.
        let len = match unsafe { self.queue.pop_used(token, &[], &mut [&mut *buffer]) } {
            Ok(len) => len,
            Err(error) => {
                // The device used another chain: ours may still be its.
                self.dead = true;
                return Err(RngError::Device(error));
            }
        };
        let got = usize::try_from(len).unwrap_or(usize::MAX);
        if got > want {
            return Err(RngError::BadLength(len));
        }
        out[..got].copy_from_slice(&buffer[..got]);
        Ok(got)
    }
}

/// Fills `out` by repeated `request`s (each gives some bytes or fails);
/// gives up when the requests together gave nothing [`EMPTY_LIMIT`] times
/// in a row, so a device that answers with 0 bytes cannot loop forever.
pub fn fill_from(
    out: &mut [u8],
    mut request: impl FnMut(&mut [u8]) -> Result<usize, RngError>,
) -> Result<(), RngError> {
    let mut done = 0;
    let mut empty = 0;
    while done < out.len() {
        let got = request(&mut out[done..])?;
        if got == 0 {
            empty += 1;
            if empty >= EMPTY_LIMIT {
                return Err(RngError::Timeout);
            }
            continue;
        }
        empty = 0;
        done += got.min(out.len() - done);
    }
    Ok(())
}

/// Empty answers in a row after which [`fill_from`] gives up.
pub const EMPTY_LIMIT: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_answers_are_added_up() {
        let mut out = [0u8; 10];
        let mut next = 1u8;
        let r = fill_from(&mut out, |buf| {
            let n = buf.len().min(3);
            for b in &mut buf[..n] {
                *b = next;
                next += 1;
            }
            Ok(n)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn a_device_that_gives_nothing_is_given_up() {
        let mut calls = 0;
        let mut out = [0u8; 4];
        let r = fill_from(&mut out, |_| {
            calls += 1;
            Ok(0)
        });
        assert_eq!(r, Err(RngError::Timeout));
        assert_eq!(calls, EMPTY_LIMIT);
    }

    #[test]
    fn a_failed_request_fails_the_fill() {
        let mut out = [0u8; 4];
        let r = fill_from(&mut out, |_| Err(RngError::Dead));
        assert_eq!(r, Err(RngError::Dead));
    }
}
