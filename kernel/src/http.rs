//! The S3 object API of `daxbox-storage` (`storage/src/s3`) over the
//! kernel's storage set, with the boot config's keys (`s3_key=`,
//! `s3_anonymous=`) and the CMOS RTC's wall clock; `main.rs` hands it to
//! `net::init` with the web pages, on the HTTP port.

use daxbox_platform::rtc;
use daxbox_storage::s3::{self, S3Config, S3Routes};

use crate::nbd::KernelStorage;
use crate::pmem::PmemRegion;
use crate::storage::STORAGE;
use crate::{config, println, time};

/// The S3 routes for the HTTP and the HTTPS port (after `storage::init`):
/// sweeps the uploads a power cut
/// left unfinished and says in the boot log how the API is set up.
pub fn s3_routes() -> (
    S3Routes<PmemRegion, KernelStorage>,
    S3Routes<PmemRegion, KernelStorage>,
) {
    let s3 = S3Config::from_boot(config::get());
    println!("{}", s3.describe());
    let swept = s3::sweep_temporaries(&mut STORAGE.lock());
    if swept > 0 {
        println!(
            "s3: removed {} unfinished upload(s) a power cut left",
            swept
        );
    }
    // The HTTP service's clock is `time::now_ms()`; the wall clock at its
    // zero is the RTC's time less the uptime.
    let unix_at_zero = rtc::unix_now().map(|unix| unix.saturating_sub(time::now_ms() / 1000));
    if unix_at_zero.is_none() {
        println!("s3: no wall clock: signed requests are refused");
    }
    // One boot nonce for both ports, so an object's ETag is the same over
    // HTTP and HTTPS.
    let nonce = time::cycles();
    (
        S3Routes::new(KernelStorage, s3.clone(), unix_at_zero, nonce),
        S3Routes::new(KernelStorage, s3, unix_at_zero, nonce),
    )
}
