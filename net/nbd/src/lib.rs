//! Sans-I/O NBD (Network Block Device) server protocol engine.
//!
//! This crate speaks the server side of the NBD protocol
//! (NetworkBlockDevice/nbd `doc/proto.md`): the fixed newstyle handshake
//! with `NBD_OPT_GO`/`INFO`, structured replies, `base:allocation` block
//! status and extended headers, and every transmission command daxbox
//! serves. It does no I/O of its own: the caller feeds received bytes to
//! [`Connection::receive`], drains replies with [`Connection::produce`]
//! and, while [`Connection::has_work`], advances long requests (TRIM,
//! WRITE_ZEROES) one bounded piece per event-loop turn with
//! [`Connection::step`] ([`ServerConfig::step_bytes`]),
//! which lets the kernel (`kernel/`, over smoltcp sockets from
//! `net/stack`) pass its socket buffers straight through, and lets host
//! tests drive it with byte strings. Storage is reached through the
//! [`Backend`] trait, which the storage service (`storage/`,
//! `daxbox-storage`) implements over daxfs files (`fs/daxfs`) and raw pmem
//! devices (`drivers/pmem`), in the kernel and in the host server
//! `daxbox-serve` alike.
//!
//! Module layout:
//! - `connection`: one client's state machine and the input side
//!   (`receive`), split into `connection::handshake` (option haggling),
//!   `connection::transmission` (request validation, command dispatch,
//!   replies) and `connection::output` (the output queue, `produce`);
//! - [`wire`]: proto.md constants, and the request/reply headers as
//!   smoltcp-style wire types ([`wire::RequestHeader`] / [`wire::Request`]
//!   / [`wire::Command`], [`wire::ReplyHeader`] / [`wire::Reply`]);
//! - `backend`: the [`Backend`] trait the engine serves exports through;
//! - `config`: [`ServerConfig`] (policy and limits) and [`ConnectionStats`];
//! - [`metrics`]: per-operation request counters and latency histograms
//!   ([`metrics::OpStats`]);
//! - `server`: [`Server`] (accept, retire, totals).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod backend;
mod config;
mod connection;
pub mod metrics;
mod server;
pub mod wire;

pub use backend::{
    step_piece, Backend, BackendError, ExportHandle, ExportInfo, ExportKind, Extent, ListCursor,
    ZeroFlags,
};
pub use config::{ConnectionStats, ServerConfig, TlsPolicy, DEFAULT_STEP_BYTES};
pub use connection::Connection;
pub use server::Server;

#[cfg(test)]
mod tests;
