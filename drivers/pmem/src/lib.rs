//! Persistent-memory discovery, page-frame table and pmem block devices.
//!
//! This crate holds everything about pmem that is not hardware access, so
//! it is tested on the host. The kernel (`kernel/src/pmem/`) feeds it the
//! raw inputs — the ACPI NFIT bytes ([`nfit`]), the boot memory map's E820
//! type 12 / UEFI type 14 regions and the `pmem=` requests parsed by
//! `kernel/bootconfig` — and gets back checked ranges ([`discovery`]), an
//! identity-mapping plan per range ([`mapping`]), a page-frame table that
//! keeps storage frames apart from RAM frames ([`frames`]) and block
//! devices ([`block`]) over the kernel's `PersistentMemory` implementation
//! (`drivers/persist`). Its users are the kernel (discovery, mapping, the
//! frame table, the `pmem` and `blk` commands) and the storage service
//! (`storage/`), which owns the block devices once they are in use: raw
//! NBD exports are served from a [`block::PmemBlockDevice`]'s memory, and
//! daxfs (`fs/daxfs`) is mounted on that memory directly (it needs byte
//! stores, flushes and fences, not the sector-granular [`BlockDevice`]).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod block;
pub mod discovery;
pub mod domain;
pub mod fit;
pub mod frames;
pub mod mapping;
pub mod nfit;

pub use block::{BlockDevice, BlockError, DaxRange, PmemBlockDevice};
pub use discovery::{
    discover, Candidate, Discovery, Domain, Forbidden, Machine, PmemRange, Refusal, Region, Source,
};
pub use frames::{FrameError, FrameTable, Owner, StorageFrame};
pub use mapping::{plan, MappingPlan, PageSize};
