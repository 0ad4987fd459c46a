//! `http`: the HTTP service of `net/stack` (`HttpService`), fed a client
//! byte stream in random chunks, its answers drained in random amounts.
//!
//! Input: byte 0 turns the `/bench/*` routes on (bit 0) and a streaming
//! route at `/s` on (bit 1: bodies of `PUT /s`, `Content-Length` or
//! chunked, go to it piece by piece; `GET /s?n=N` pulls N bytes from it),
//! bytes 1..9 seed chunking and the clock, the rest is what the client
//! sends.
//!
//! Checked: no panic, no wedge ([`crate::session::drive`]); every answer
//! starts with an HTTP/1.1 status line; every exchange the streaming
//! route opened is ended exactly once, after the connection closed.

use daxbox_netstack::http::{
    Bench, HttpRoutes, HttpService, Opened, Reply, ReplyBody, Request, Response,
};

use crate::input::{Input, Rng};
use crate::session;

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut rng = Rng::new(input.u64());
    let stream = input.rest();
    let bench = if mode & 1 != 0 { Bench::On } else { Bench::Off };
    let mut service = HttpService::with_routes("fuzz", 0, bench, Streaming::default());
    service.routes_mut().on = mode & 2 != 0;
    let outcome = session::drive(&mut service, stream, &mut rng);
    let stats = service.stats();
    assert!(stats.errors <= stats.requests, "{stats:?}");
    if outcome.produced > 0 {
        assert!(
            session::starts_like(&outcome.head, b"HTTP/1.1 "),
            "output does not start with a status line: {:?}",
            String::from_utf8_lossy(&outcome.head)
        );
    }
    let routes = service.routes();
    assert!(
        routes.open.is_empty(),
        "exchanges never ended: {:?}",
        routes.open
    );
}

/// A streaming route that checks the exchange protocol.
#[derive(Default)]
struct Streaming {
    on: bool,
    /// Exchanges opened and not ended.
    open: Vec<u64>,
    received: u64,
}

impl Streaming {
    fn check_open(&self, exchange: u64) {
        assert!(
            self.open.contains(&exchange),
            "exchange {exchange} not open"
        );
    }
}

impl HttpRoutes for Streaming {
    fn route(&mut self, _request: &Request<'_>, _now_ms: u64) -> Option<Response> {
        None
    }
    fn open(&mut self, request: &Request<'_>, exchange: u64, _now_ms: u64) -> Option<Opened> {
        if !self.on || request.path != "/s" {
            return None;
        }
        assert!(!self.open.contains(&exchange), "exchange {exchange} reused");
        self.open.push(exchange);
        if request.method == "PUT" {
            return Some(Opened::Body);
        }
        let n = request
            .query
            .strip_prefix("n=")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            .min(1 << 20);
        let mut reply = Reply::bytes(200, "application/octet-stream", Vec::new());
        reply.body = ReplyBody::Pull(n);
        Some(Opened::Reply(reply))
    }
    fn body(&mut self, exchange: u64, data: &[u8], _now_ms: u64) -> Result<(), Reply> {
        self.check_open(exchange);
        self.received += data.len() as u64;
        if self.received > 1 << 20 {
            return Err(Reply::bytes(413, "text/plain", b"too big\n".to_vec()));
        }
        Ok(())
    }
    fn finish(&mut self, exchange: u64, _trailers: &str, _now_ms: u64) -> Reply {
        self.check_open(exchange);
        Reply::bytes(200, "text/plain", b"ok\n".to_vec())
    }
    fn read(&mut self, exchange: u64, offset: u64, out: &mut [u8]) -> usize {
        self.check_open(exchange);
        out.fill(offset as u8);
        out.len()
    }
    fn end(&mut self, exchange: u64) {
        self.check_open(exchange);
        self.open.retain(|&e| e != exchange);
    }
}
