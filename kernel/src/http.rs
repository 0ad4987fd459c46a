//! The HTTP service on the configured port: the health and throughput
//! routes of `daxbox-netstack` and the S3 object API of `daxbox-storage`
//! (`storage/src/s3`) over the kernel's storage set, with the boot
//! config's keys (`s3_key=`, `s3_anonymous=`) and the CMOS RTC's wall
//! clock.

use daxbox_netstack::http::{Bench, HttpService};
use daxbox_netstack::{Listener, ListenerConfig};
use daxbox_platform::rtc;
use daxbox_storage::s3::{self, S3Config, S3Routes};

use crate::nbd::KernelStorage;
use crate::storage::STORAGE;
use crate::{config, println, time};

/// Starts the HTTP listener (after `net::init` and `storage::init`).
pub fn start() {
    let boot = config::get();
    let bench = if boot.http_bench {
        println!("net: http_bench=on: /bench/bytes and /bench/sink are served");
        Bench::On
    } else {
        Bench::Off
    };
    let s3 = S3Config::from_boot(boot);
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
    let routes = S3Routes::new(KernelStorage, s3, unix_at_zero, time::cycles());
    let http = HttpService::with_routes(env!("CARGO_PKG_VERSION"), 0, bench, routes);
    let mut listener = ListenerConfig::new(boot.http_port);
    listener.max_connections = usize::from(boot.http_max_connections);
    listener.max_per_address = usize::from(boot.http_max_per_address);
    listener.budget = Some(&daxbox_budget::HTTP);
    listener.connection_bytes = daxbox_netstack::http::CONNECTION_BYTES;
    if let Err(error) = crate::net::add_listener(Listener::new(listener, http).boxed()) {
        println!("net: http: {}", error);
    }
}
