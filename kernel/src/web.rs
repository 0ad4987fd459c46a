//! The web pages on the HTTP port (`/metrics`, `/api/stats`, `/`): the
//! routes of `daxbox_storage::web`, fed with a snapshot of the kernel's
//! storage, network and HTTP counters.
//!
//! The routes run inside the network stack's poll (the HTTP service is one
//! of its listeners), which holds the network lock, so the network figures
//! come from the copy `net` keeps (refreshed at most every
//! [`net::STATS_EVERY_MS`](crate::net::STATS_EVERY_MS) by the poll); the
//! HTTP service hands over its own counters before each route.

use daxbox_netstack::http::{HttpRoutes, HttpStats, Request, Response};
use daxbox_storage::web::{self, Snapshot};

use crate::storage::STORAGE;
use crate::{net, time};

/// The routes, with the HTTP counters last handed over.
#[derive(Default)]
pub struct Routes {
    http: HttpStats,
}

impl HttpRoutes for Routes {
    fn route(&mut self, request: &Request<'_>, _now_ms: u64) -> Option<Response> {
        // `Request` carries no headers yet: a header-signed S3 request is
        // told apart once the S3 router passes its `Authorization`.
        web::route(request, None, || snapshot(self.http))
    }

    fn observe_stats(&mut self, stats: &HttpStats) {
        self.http = *stats;
    }
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
