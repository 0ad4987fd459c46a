//! Entropy for TLS: the RDRAND instruction, detected with CPUID, else a
//! virtio-rng device ([`crate::virtio_rng`]) the kernel found on PCI and
//! handed over with [`use_virtio`].
//!
//! Without either there is no entropy source and [`fill`] fails: TLS is
//! then refused, never run with a predictable seed. A virtio-rng request
//! that the device does not answer within
//! [`crate::virtio_rng::TIMEOUT_MS`] fails too, and the device is not
//! asked again. RDRAND may fail transiently (carry clear, RNG
//! exhausted); Intel's guidance is to retry up to 10 times per word, after
//! which the call fails. On the bare-metal target this module registers
//! [`fill`] as `getrandom`'s custom source, which `rustls-rustcrypto` uses.
//!
//! Invariant: `rdrand` is executed only after CPUID said the CPU has it.

use core::sync::atomic::{AtomicU8, Ordering};
use spin::Mutex;

use crate::virtio::KernelHal;
use crate::virtio_drivers::transport::pci::PciTransport;
use crate::virtio_rng::{self, Rng, RngError};

/// Retries per 64-bit word before RDRAND counts as failed.
pub const RETRIES: usize = 10;

const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const ABSENT: u8 = 2;
static RDRAND: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The virtio-rng device, when the kernel found one and RDRAND is absent,
/// with the bytes [`reserve`] set aside.
static VIRTIO: Mutex<Option<VirtioSource>> = Mutex::new(None);

/// Most bytes [`reserve`] sets aside (one device request page).
pub const RESERVE_MAX: usize = virtio_rng::REQUEST_BYTES;

struct VirtioSource {
    rng: Rng<KernelHal, PciTransport>,
    /// Device bytes not handed out yet: `reserved[..len]`.
    reserved: [u8; RESERVE_MAX],
    len: usize,
}

impl VirtioSource {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RngError> {
        // Set-aside bytes first (each handed out once), then the device.
        let take = out.len().min(self.len);
        let start = self.len - take;
        out[..take].copy_from_slice(&self.reserved[start..self.len]);
        self.reserved[start..self.len].fill(0);
        self.len = start;
        let rng = &mut self.rng;
        virtio_rng::fill_from(&mut out[take..], |buf| {
            rng.request(buf, crate::time::now_ms)
        })
    }

    fn reserve(&mut self, n: usize) -> Result<(), RngError> {
        let want = n.min(RESERVE_MAX);
        if self.len >= want {
            return Ok(());
        }
        let (len, rng) = (self.len, &mut self.rng);
        virtio_rng::fill_from(&mut self.reserved[len..want], |buf| {
            rng.request(buf, crate::time::now_ms)
        })?;
        self.len = want;
        Ok(())
    }
}

/// Why no random bytes could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyError {
    /// The CPU has no RDRAND and no virtio-rng device was found.
    NoSource,
    /// RDRAND failed [`RETRIES`] times in a row.
    Exhausted,
    /// The virtio-rng device failed (or did not answer in time).
    Virtio(RngError),
}

impl core::fmt::Display for EntropyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSource => {
                f.write_str("no entropy source (no RDRAND, no virtio-rng; start QEMU with -cpu max or -device virtio-rng-pci)")
            }
            Self::Exhausted => write!(f, "RDRAND failed {RETRIES} times in a row"),
            Self::Virtio(error) => write!(f, "{error}"),
        }
    }
}

/// Whether the CPU has RDRAND (CPUID leaf 1, ECX bit 30).
pub fn rdrand_present() -> bool {
    match RDRAND.load(Ordering::Relaxed) {
        PRESENT => true,
        ABSENT => false,
        _ => {
            let ecx = core::arch::x86_64::__cpuid(1).ecx;
            let present = ecx & (1 << 30) != 0;
            RDRAND.store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
            present
        }
    }
}

fn rdrand_step() -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: called only after `rdrand_present` (CPUID) said the CPU has
    // RDRAND; the instruction only writes `value` and the flags.
    let ok = unsafe { core::arch::x86_64::_rdrand64_step(&mut value) };
    (ok == 1).then_some(value)
}

/// Fills `out` from `step` (one 64-bit word or a transient failure),
/// retrying each word up to [`RETRIES`] times.
pub fn fill_with(
    out: &mut [u8],
    mut step: impl FnMut() -> Option<u64>,
) -> Result<(), EntropyError> {
    for chunk in out.chunks_mut(8) {
        let word = (0..RETRIES)
            .find_map(|_| step())
            .ok_or(EntropyError::Exhausted)?;
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    Ok(())
}

/// Starts the virtio-rng device behind `transport` and makes it the
/// source [`fill`] uses when the CPU has no RDRAND.
pub fn use_virtio(transport: PciTransport) -> Result<(), RngError> {
    let rng = Rng::new(transport)?;
    *VIRTIO.lock() = Some(VirtioSource {
        rng,
        reserved: [0; RESERVE_MAX],
        len: 0,
    });
    Ok(())
}

/// Makes sure the next `n` bytes (at most [`RESERVE_MAX`]) that [`fill`]
/// hands out cannot fail: with RDRAND nothing is set aside (it does not
/// stop answering); with virtio-rng they are fetched now. For callers
/// whose randomness is drawn through an API that cannot fail (rustls'
/// key exchange): ask first, refuse the work on an error.
pub fn reserve(n: usize) -> Result<(), EntropyError> {
    if rdrand_present() {
        return Ok(());
    }
    let mut virtio = VIRTIO.lock();
    let Some(source) = virtio.as_mut() else {
        return Err(EntropyError::NoSource);
    };
    source.reserve(n).map_err(EntropyError::Virtio)
}

/// Fills `out` with random bytes from RDRAND, else from virtio-rng.
pub fn fill(out: &mut [u8]) -> Result<(), EntropyError> {
    if rdrand_present() {
        return fill_with(out, rdrand_step);
    }
    let mut virtio = VIRTIO.lock();
    let Some(source) = virtio.as_mut() else {
        return Err(EntropyError::NoSource);
    };
    source.fill(out).map_err(EntropyError::Virtio)
}

#[cfg(target_os = "none")]
fn getrandom_source(out: &mut [u8]) -> Result<(), getrandom::Error> {
    fill(out).map_err(|_| {
        getrandom::Error::from(
            core::num::NonZeroU32::new(getrandom::Error::CUSTOM_START + 1)
                .unwrap_or(core::num::NonZeroU32::MIN),
        )
    })
}

#[cfg(target_os = "none")]
getrandom::register_custom_getrandom!(getrandom_source);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_a_failing_word_then_succeeds() {
        let mut calls = 0;
        let mut out = [0u8; 12];
        let r = fill_with(&mut out, || {
            calls += 1;
            // Every word fails 9 times, then gives its call count.
            (calls % 10 == 0).then_some(0x0102_0304_0506_0708)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(calls, 20);
        assert_eq!(out, [8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5]);
    }

    #[test]
    fn gives_up_after_the_retries() {
        let mut calls = 0;
        let mut out = [0u8; 8];
        let r = fill_with(&mut out, || {
            calls += 1;
            None
        });
        assert_eq!(r, Err(EntropyError::Exhausted));
        assert_eq!(calls, RETRIES);
    }

    #[test]
    fn the_hosts_rdrand_gives_differing_words() {
        if !rdrand_present() {
            return;
        }
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn the_message_names_the_fix() {
        let text = std::format!("{}", EntropyError::NoSource);
        assert!(text.contains("-cpu max"));
        assert!(text.contains("-device virtio-rng-pci"));
    }
}
