//! `daxfs_mount`: see `fuzz/harness/src/daxfs_mount.rs` (the body, also replayed by
//! `cargo test -p daxbox-fuzz-harness`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| daxbox_fuzz_harness::daxfs_mount::run(data));
