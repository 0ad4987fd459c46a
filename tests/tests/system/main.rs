//! The system tests: each module boots the real daxbox images in QEMU (or,
//! for `harness`, checks the harness itself) and drives them through the
//! serial console and real network clients.
//!
//! One test binary, so `--test-threads` QEMU machines stay busy from the
//! first test to the last instead of waiting at the end of each file; run
//! one module or test with `cargo xtask test --filter NAME` (e.g.
//! `--filter nbd::`).

mod allow;
mod boot;
mod clone;
mod common;
mod daxfs;
mod flood;
mod harness;
mod hostile;
mod hotadd;
mod lifecycle;
mod memory;
mod metrics;
mod names;
mod nbd;
mod net;
mod nicperf;
mod pmem;
mod s3;
mod shell;
mod tls;
mod unlink;
