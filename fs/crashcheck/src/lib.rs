//! Crash-state explorer: checks daxfs against every image a power failure
//! could leave on persistent memory.
//!
//! QEMU does not model CPU caches, so a killed guest always leaves
//! "everything persisted". Real pmem loses whatever was still in the cache.
//! This crate runs daxfs (`fs/daxfs`) on the host over [`CrashMemory`], an
//! implementation of the persistence trait of `drivers/persist` that models
//! the cache ([`memory`]); at every fence and at the end of every operation
//! it builds the crash images the model allows ([`generate`]), mounts each
//! ([`harness`], [`daxfs_target`]), runs fsck, re-crashes recovery, and
//! compares what it sees with an oracle of what the API promised
//! ([`oracle`]) over the workloads of [`workloads`]. The same approach found
//! crash bugs in NOVA, PMFS and WineFS (Yat, Vinter, Chipmunk).
//!
//! The memory model, the generator, the oracle and the explorer are
//! `no_std` + `alloc`; the runner needs `std` (feature `std`, on by
//! default) to turn a panic during mount into a reported violation. The
//! release runner is `src/bin/crashcheck.rs`:
//! `cargo run --release -p daxfs-crashcheck --bin crashcheck -- --images
//! 110000 --min-distinct 100000` is the CI check, `-- --budget SECONDS`
//! the long mode.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[cfg(any(test, feature = "std"))]
pub mod daxfs_target;
pub mod explore;
pub mod generate;
#[cfg(any(test, feature = "std"))]
pub mod harness;
pub mod image;
pub mod memory;
pub mod oracle;
pub mod rng;
pub mod workloads;

pub use explore::{ExploreStats, Explorer, Violation};
pub use generate::{CrashImage, Policy};
pub use image::{ImageHash, PagedImage};
pub use memory::{CrashMemory, CrashPoint, PointKind};
