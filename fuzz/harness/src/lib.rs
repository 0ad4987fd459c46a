//! The fuzz targets of daxbox, as plain functions.
//!
//! `fuzz/fuzz_targets/NAME.rs` (cargo-fuzz, libFuzzer) is one line that
//! calls [`NAME::run`](TARGETS); keeping the bodies here puts them in the
//! main workspace, so clippy checks them and `cargo test -p
//! daxbox-fuzz-harness` replays every seed in `fuzz/corpus/NAME/` and every
//! crash input ever found, kept in `fuzz/regressions/NAME/`, without
//! libFuzzer. A target panics when it finds a bug; a crash input that no
//! longer panics is a fixed bug.
//!
//! Inputs that still crash, for bugs another change is fixing, wait in
//! `fuzz/pending/NAME/` (not replayed); once fixed they move to
//! `fuzz/regressions/NAME/`.
//!
//! `cargo xtask fuzz` builds and runs them; `cargo xtask test` runs each
//! for a short budget. The seed corpora are made by [`seeds`]
//! (`DAXBOX_WRITE_SEEDS=1 cargo test -p daxbox-fuzz-harness` rewrites
//! them).
#![forbid(unsafe_code)]

pub mod bootconfig;
pub mod daxfs_decode;
pub mod daxfs_mount;
pub mod http;
pub mod input;
pub mod mcfg;
pub mod nbd_daxfs;
pub mod nbd_session;
pub mod netstack;
pub mod nfit;
pub mod seeds;
pub mod session;
pub mod sparse;

/// A target's body: panics when it finds a bug.
pub type Target = fn(&[u8]);

/// Every target: its name (the file name in `fuzz/fuzz_targets/`, the
/// corpus directory) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("nbd_session", nbd_session::run),
    ("nbd_daxfs", nbd_daxfs::run),
    ("daxfs_mount", daxfs_mount::run),
    ("daxfs_decode", daxfs_decode::run),
    ("http", http::run),
    ("netstack_poll", netstack::run),
    ("bootconfig", bootconfig::run),
    ("nfit", nfit::run),
    ("mcfg", mcfg::run),
];
