//! `nbd_daxfs`: see `fuzz/harness/src/nbd_daxfs.rs` (the body, also replayed by
//! `cargo test -p daxbox-fuzz-harness`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| daxbox_fuzz_harness::nbd_daxfs::run(data));
