//! `daxfs_decode`: see `fuzz/harness/src/daxfs_decode.rs` (the body, also replayed by
//! `cargo test -p daxbox-fuzz-harness`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| daxbox_fuzz_harness::daxfs_decode::run(data));
