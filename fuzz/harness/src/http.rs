//! `http`: the HTTP service of `net/stack` (`HttpService`), fed a client
//! byte stream in random chunks, its answers drained in random amounts.
//!
//! Input: byte 0 turns the `/bench/*` routes on (bit 0), bytes 1..9 seed
//! chunking and the clock, the rest is what the client sends.
//!
//! Checked: no panic, no wedge ([`crate::session::drive`]); every answer
//! starts with an HTTP/1.1 status line.

use daxbox_netstack::http::{Bench, HttpService};

use crate::input::{Input, Rng};
use crate::session;

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut rng = Rng::new(input.u64());
    let stream = input.rest();
    let bench = if mode & 1 != 0 { Bench::On } else { Bench::Off };
    let mut service = HttpService::new("fuzz", 0, bench);
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
}
