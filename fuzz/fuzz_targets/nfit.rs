//! `nfit`: see `fuzz/harness/src/nfit.rs` (the body, also replayed by
//! `cargo test -p daxbox-fuzz-harness`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| daxbox_fuzz_harness::nfit::run(data));
