//! The appliance's own web pages on the HTTP port: Prometheus metrics,
//! a JSON summary and a live dashboard. One entry point, [`route`], answers
//! the paths below and returns `None` for every other, so it composes with
//! other routers (the S3 API) in front of or behind it.
//!
//! - `GET|HEAD /metrics`: Prometheus text exposition format 0.0.4
//!   ([`prometheus`]). Every metric name is listed in README "Metrics and
//!   dashboard".
//! - `GET|HEAD /api/stats`: the same figures as one JSON object ([`json`]),
//!   which the dashboard polls every second.
//! - `GET|HEAD /`: the dashboard, one self-contained HTML page (inline CSS
//!   and JS, no external assets, [`DASHBOARD`]) — only when the request
//!   carries no S3 authentication (no `Authorization: AWS4-HMAC-SHA256 ...`
//!   header, no `X-Amz-Signature` query parameter); a signed `GET /` is S3's
//!   ListBuckets and this router leaves it alone ([`is_s3_signed`]).
//!
//! [`Pages`] serves them as an `HttpRoutes` whose `/metrics` and
//! `/api/stats` bodies are charged to the `http` budget while held.
//!
//! Other methods on these paths get `405`. The figures come from a
//! [`Snapshot`] the caller assembles (only when one of these paths is
//! asked for): the storage part from [`Snapshot::storage`], the rest
//! (network, HTTP, uptime) from what the kernel or server holds.
//!
//! Bounded output: per-export series exist for at most
//! [`crate::metrics::MAX_EXPORT_SERIES`] (64) exports plus `other`; the
//! JSON lists at most [`MAX_LISTED`] exports and connections each. The
//! largest `/metrics` body (64 exports with 255-byte names, every operation
//! used, 16 devices) is 0.66 MB (tested); one export and one device give
//! 16 KiB. Nothing
//! secret is in any of them (no boot-config values but the ports and
//! limits, no client data).

pub mod json;
pub mod prometheus;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use daxbox_budget::{Budget, BudgetStats, Charge};
use daxbox_netstack::http::{HttpRoutes, HttpStats, Opened, Reply, ReplyBody, Request, Response};
use daxbox_netstack::{Counters, ListenerStats};
use daxbox_persist::PersistentMemory;
use daxbox_pmem::block::BlockDevice;
use daxfs::StatFs;

use crate::metrics::{NbdMetrics, RecoveryCounts};
use crate::{Role, Storage};

/// Most exports and most connections listed in the JSON summary.
pub const MAX_LISTED: usize = 64;

/// The dashboard page (about 6 KiB, inline CSS and JS; the test holds it
/// under 8 KiB).
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// A pmem device in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `pmemN`.
    pub name: String,
    /// Device size in bytes.
    pub size: u64,
    /// Its filesystem, or `None` when exported raw.
    pub fs: Option<StatFs>,
}

/// One open NBD connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Connection number.
    pub id: u64,
    /// Client address and port, when known.
    pub peer: Option<core::net::SocketAddr>,
    /// Export name, or `(handshake)`.
    pub export: String,
    /// Age, ms.
    pub age_ms: u64,
    /// Payload bytes read and written.
    pub read_bytes: u64,
    /// Payload bytes written.
    pub write_bytes: u64,
}

/// Network counters from the interface and the NIC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetInfo {
    /// Interface counters (packets, bytes, errors).
    pub counters: Counters,
    /// NIC interrupts taken.
    pub interrupts: u64,
    /// Receive buffers handed to the device.
    pub rx_submitted: u64,
    /// Frames handed to the device.
    pub tx_submitted: u64,
    /// Device notifications (queue kicks, each a VM exit): receive queue.
    pub rx_notifies: u64,
    /// Device notifications: transmit queue.
    pub tx_notifies: u64,
    /// Time the CPU spent in those notifications, in microseconds (a VM
    /// exit each; under TCG also a wait for QEMU's global lock).
    pub notify_us: u64,
    /// Network polls run by the event loop (loop passes with the NIC).
    pub polls: u64,
}

/// Where the appliance's CPU time goes (the kernel's event loop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// Event-loop passes.
    pub loop_passes: u64,
    /// Halts, each ended by a wake-up.
    pub wakeups: u64,
    /// Time halted, ns.
    pub halted_ns: u64,
    /// Time not halted since the clock started (boot included), ns.
    pub busy_ns: u64,
    /// One-shot timer interrupts (deadlines the loop armed).
    pub timer_interrupts: u64,
    /// Device interrupts, all vectors (the NIC's and the serial port's).
    pub device_interrupts: u64,
    /// Serial receive interrupts (a subset of the device interrupts).
    pub serial_interrupts: u64,
}

/// Everything the pages show, assembled when one is asked for.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Software version.
    pub version: &'static str,
    /// Time since boot, ms.
    pub uptime_ms: u64,
    /// Devices in use, in device order.
    pub devices: Vec<DeviceInfo>,
    /// Export names, at most [`MAX_LISTED`].
    pub exports: Vec<String>,
    /// NBD request counters.
    pub nbd: NbdMetrics,
    /// Open NBD connections, at most [`MAX_LISTED`].
    pub connections: Vec<ConnectionInfo>,
    /// Open NBD connections in all.
    pub connection_count: usize,
    /// Recovery events.
    pub recovery: RecoveryCounts,
    /// HTTP answers.
    pub http: HttpStats,
    /// TCP listeners, each with its service's name (`nbd`, `http`).
    pub listeners: Vec<(&'static str, ListenerStats)>,
    /// Network counters.
    pub net: NetInfo,
    /// CPU time and wake-ups.
    pub cpu: CpuInfo,
    /// Memory budgets.
    pub budgets: Vec<BudgetStats>,
    /// Allow-list refusals by reason and client address.
    pub access: crate::allow::AccessStats,
}

impl Snapshot {
    /// The storage part: devices, exports, NBD counters and connections,
    /// recovery events, and the memory budgets; `now_ms` on the clock of
    /// the connections' `opened_ms`.
    pub fn storage<M: PersistentMemory>(storage: &Storage<M>, now_ms: u64) -> Self {
        let devices = storage
            .volumes
            .iter()
            .map(|volume| match &volume.role {
                Role::Filesystem(fs) => {
                    let statfs = fs.statfs();
                    DeviceInfo {
                        name: volume.device.clone(),
                        size: fs.memory().len(),
                        fs: Some(statfs),
                    }
                }
                Role::Raw(block) => DeviceInfo {
                    name: volume.device.clone(),
                    size: block.size(),
                    fs: None,
                },
            })
            .collect();
        let mut exports = Vec::new();
        let mut cursor = daxbox_nbd::ListCursor::default();
        crate::nbd::export_names_page(storage, &mut cursor, MAX_LISTED, &mut exports);
        let all = storage.connections();
        let connections = all
            .iter()
            .take(MAX_LISTED)
            .map(|c| ConnectionInfo {
                id: c.id,
                peer: c.peer,
                export: c.export.clone(),
                age_ms: now_ms.saturating_sub(c.opened_ms),
                read_bytes: c.stats.read_bytes,
                write_bytes: c.stats.write_bytes,
            })
            .collect();
        Snapshot {
            devices,
            exports,
            nbd: storage.metrics().nbd.clone(),
            connections,
            connection_count: all.len(),
            recovery: storage.metrics().recovery,
            access: storage.access().stats().clone(),
            budgets: [
                &daxbox_budget::MOUNT,
                &daxbox_budget::NBD,
                &daxbox_budget::HTTP,
            ]
            .iter()
            .map(|b| b.stats())
            .collect(),
            ..Snapshot::default()
        }
    }
}

/// True when the request carries S3 authentication: an
/// `Authorization: AWS4-HMAC-SHA256 ...` header (`authorization` is its
/// value, if any) or an `X-Amz-Signature` query parameter (a presigned
/// URL). Such a `GET /` is S3's ListBuckets, not the dashboard.
pub fn is_s3_signed(request: &Request<'_>, authorization: Option<&str>) -> bool {
    authorization.is_some_and(|value| {
        value
            .trim_start()
            .get(..16)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("AWS4-HMAC-SHA256"))
    }) || request
        .query
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .any(|key| key.eq_ignore_ascii_case("X-Amz-Signature"))
}

/// Answers `/metrics`, `/api/stats` and the dashboard at `/`; `None` for
/// any other path (and for an S3-signed `GET /`). `authorization` is the
/// request's `Authorization` header, if the caller has it. `snapshot` is
/// called only for the two data paths.
pub fn route(
    request: &Request<'_>,
    authorization: Option<&str>,
    snapshot: impl FnOnce() -> Snapshot,
) -> Option<Response> {
    let page = match request.path {
        "/metrics" | "/api/stats" => request.path,
        "/" if !is_s3_signed(request, authorization) => "/",
        _ => return None,
    };
    if request.method != "GET" && request.method != "HEAD" {
        return Some(Response {
            status: 405,
            content_type: "text/plain",
            body: b"method not allowed\n".to_vec(),
        });
    }
    Some(match page {
        "/metrics" => Response {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            body: prometheus::render(&snapshot()).into_bytes(),
        },
        "/api/stats" => Response {
            status: 200,
            content_type: "application/json",
            body: json::render(&snapshot()).into_bytes(),
        },
        _ => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: DASHBOARD.as_bytes().to_vec(),
        },
    })
}

/// A page body held between `open` and `end`.
enum Held {
    /// A rendered body, charged to the budget until dropped.
    Rendered {
        bytes: Vec<u8>,
        _charge: Charge<'static>,
    },
    /// The static dashboard (nothing to charge).
    Static(&'static [u8]),
}

/// The pages as an [`HttpRoutes`] with pulled bodies: `/metrics` and
/// `/api/stats` are rendered at `open`, held in the exchange charged to
/// the `http` budget ([`daxbox_budget::HTTP`]) until their last byte is
/// sent or the connection goes, and pulled as the socket drains, like
/// every other reply body the appliance holds; one that does not fit is
/// `503` (nothing held). The dashboard is sent from the static page.
/// `snapshot` assembles the figures (given the HTTP counters the service
/// last reported); it is called only for the two data paths.
pub struct Pages<F: FnMut(&HttpStats) -> Snapshot> {
    snapshot: F,
    http: HttpStats,
    budget: &'static Budget,
    held: BTreeMap<u64, Held>,
}

impl<F: FnMut(&HttpStats) -> Snapshot> Pages<F> {
    /// The pages, with figures from `snapshot`.
    pub fn new(snapshot: F) -> Self {
        Self {
            snapshot,
            http: HttpStats::default(),
            budget: &daxbox_budget::HTTP,
            held: BTreeMap::new(),
        }
    }

    /// Uses `budget` instead of `daxbox_budget::HTTP` (tests).
    pub fn set_budget(&mut self, budget: &'static Budget) {
        self.budget = budget;
    }
}

impl<F: FnMut(&HttpStats) -> Snapshot> HttpRoutes for Pages<F> {
    fn route(&mut self, _request: &Request<'_>, _now_ms: u64) -> Option<Response> {
        None
    }

    fn open(&mut self, request: &Request<'_>, exchange: u64, _now_ms: u64) -> Option<Opened> {
        let http = self.http;
        let snapshot = &mut self.snapshot;
        let response = route(request, request.header("authorization"), || snapshot(&http))?;
        if response.status != 200 {
            return Some(Opened::Reply(response.into()));
        }
        let length = response.body.len() as u64;
        let held = if request.path == "/" {
            Held::Static(DASHBOARD.as_bytes())
        } else {
            match self.budget.charge(response.body.len()) {
                Ok(charge) => Held::Rendered {
                    bytes: response.body,
                    _charge: charge,
                },
                Err(_) => {
                    return Some(Opened::Reply(Reply::bytes(
                        503,
                        "text/plain",
                        b"the HTTP memory budget is used up; try again later\n".to_vec(),
                    )))
                }
            }
        };
        self.held.insert(exchange, held);
        Some(Opened::Reply(Reply {
            status: 200,
            content_type: response.content_type,
            headers: String::new(),
            body: ReplyBody::Pull(length),
        }))
    }

    fn read(&mut self, exchange: u64, offset: u64, out: &mut [u8]) -> usize {
        let bytes: &[u8] = match self.held.get(&exchange) {
            Some(Held::Rendered { bytes, .. }) => bytes,
            Some(Held::Static(bytes)) => bytes,
            None => return 0,
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let n = out.len().min(bytes.len() - start);
        out[..n].copy_from_slice(&bytes[start..start + n]);
        n
    }

    fn end(&mut self, exchange: u64) {
        self.held.remove(&exchange);
    }

    fn observe_stats(&mut self, stats: &HttpStats) {
        self.http = *stats;
    }
}

/// A socket address as text, or `-`.
fn peer_text(peer: Option<core::net::SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.to_string())
}

#[cfg(test)]
mod tests;
