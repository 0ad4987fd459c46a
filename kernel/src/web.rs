//! The web pages on the HTTP port (`/metrics`, `/api/stats`, `/`): the
//! routes of `daxbox_storage::web`, fed with a snapshot of the kernel's
//! storage, network and HTTP counters.
//!
//! The routes run inside the network stack's poll (the HTTP service is one
//! of its listeners), which holds the network lock, so the network figures
//! come from the copy `net` keeps (refreshed at most every
//! [`net::STATS_EVERY_MS`](crate::net::STATS_EVERY_MS) by the poll); the
//! HTTP service hands over its own counters before each route.

use daxbox_netstack::http::HttpStats;
use daxbox_storage::web::{Pages, Snapshot};

use crate::storage::STORAGE;
use crate::{net, time};

/// The routes: `daxbox_storage::web::Pages` (page bodies charged to the
/// `http` budget while they are sent) over the kernel's figures.
pub type Routes = Pages<fn(&HttpStats) -> Snapshot>;

/// The routes, with the HTTP counters the service hands over.
pub fn routes() -> Routes {
    Pages::new(|http: &HttpStats| snapshot(*http))
}

fn snapshot(http: HttpStats) -> Snapshot {
    let now_ms = time::now_ms();
    let mut snapshot = Snapshot::storage(&STORAGE.lock(), now_ms);
    snapshot.version = env!("CARGO_PKG_VERSION");
    snapshot.uptime_ms = now_ms;
    snapshot.http = http;
    let (net, listeners) = net::stats();
    snapshot.net = net;
    snapshot.listeners = listeners;
    snapshot.cpu = crate::cpu::info();
    snapshot
}
