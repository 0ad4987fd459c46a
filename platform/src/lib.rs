//! daxbox-platform: the one crate of daxbox that contains `unsafe` code.
//!
//! Everything that touches the machine directly (port I/O, MMIO, page
//! tables, the heap, descriptor tables, DMA, cache-line flushes, firmware
//! memory) lives here and is handed to the kernel as safe, typed handles,
//! in the manner of Asterinas' OSTD. The kernel crate says
//! `#![forbid(unsafe_code)]`; the libraries say `#![deny(unsafe_code)]`.
//! A safe function of this crate cannot break the invariants below, whatever
//! its arguments: addresses are checked against what the platform itself
//! knows (the boot memory map, the frame allocator, the ranges it mapped),
//! and handles that stand for a promise ([`mmio::MmioRegion`],
//! [`pmem::PmemRegion`], the DMA regions behind [`virtio_net::Nic`]) can
//! only be made here.
//!
//! Modules and the invariant each upholds:
//!
//! | module | invariant |
//! |---|---|
//! | [`boot`] | the boot info is taken once, from the entry point; the ramdisk slice is the bootloader's, read-only for the kernel's life |
//! | [`serial`] | only this module drives COM1 (0x3f8..0x400); its lock is forced open only on the way to halting |
//! | [`gdt`] | the GDT and TSS live in statics; segment registers are loaded only with selectors of that GDT |
//! | [`interrupts`] | the double-fault handler alone uses IST 0; the PIC, local APIC and I/O APIC are reached only through their fixed ports and [`mmio::MmioRegion`]s |
//! | [`time`] | PIT channel 2 and the speaker gate (0x42, 0x43, 0x61) are used only by calibration; `rdtsc` only reads |
//! | [`power`] | only the isa-debug-exit port 0xf4 is written |
//! | [`memory`] | a RAM frame is handed out once; the heap range never enters the allocator; identity mappings are made only by this crate, never over RAM in use or a conflicting mapping |
//! | [`mmio`] | an [`mmio::MmioRegion`] covers identity-mapped, uncached device memory that is neither RAM, kernel, firmware tables nor storage; every access is bounds- and alignment-checked |
//! | [`acpi`] | firmware tables are read only inside the bootloader's physical-memory map, with lengths and checksums checked first |
//! | [`nvdimm`] | port 0x0A18 is written only with the address of its own DSM page (a RAM frame below 4 GiB owned for the kernel's life), and only when QEMU's NVDIMM SSDT is present; of the FADT's GPE0 block only the first status byte is read and only bit 4 cleared |
//! | [`pmem`] | a [`pmem::PmemRegion`] is created only by [`pmem::map`], once per range, over storage memory (not RAM in use) that it identity-mapped itself; it is the only way to reach those bytes |
//! | [`pci`] | configuration port I/O only on 0xCF8..0xD00; ECAM only inside its mapped window |
//! | [`virtio`] | DMA memory is zeroed RAM frames owned by a pool for the kernel's life; `share` only translates addresses inside a registered pool; `dma_alloc` never hands out address 0 or a dangling pointer as memory (out of frames it returns virtio-drivers' failure value) |
//! | [`virtio_drivers`] | (virtio-drivers 0.13, folded in) a descriptor is free or in exactly one posted chain; a buffer is shared with the device from `add` until its token is popped and unshared once; rings live in DMA memory the queue owns; MMIO only through `safe-mmio` pointers into the device's own capability BARs, offset + length checked against the BAR |
//! | [`virtio_net`] | a packet slot is either owned by the device or borrowed by the driver, never both; only tokens the driver handed over reach virtio-drivers, and device lengths are checked against the slot |
//! | [`virtio_rng`] | the request page is a DMA pool page owned by the driver for good, owned by the device (posted) or the driver, never both; after a timeout the device keeps it and the driver never touches it or the queue again |
//! | [`entropy`] | `rdrand` runs only after CPUID reported it; without it and without a working virtio-rng no random bytes are made up |
//! | [`debug`] | the deliberate page fault reads a canonical address that is never mapped |
#![cfg_attr(not(test), no_std)]
#![feature(abi_x86_interrupt)]

extern crate alloc;

pub mod acpi;
pub mod boot;
pub mod debug;
pub mod entropy;
pub mod gdt;
pub mod interrupts;
pub mod memory;
pub mod mmio;
pub mod nvdimm;
pub mod pci;
pub mod pmem;
pub mod power;
pub mod rtc;
pub mod serial;
pub mod time;
mod tsc;
pub mod virtio;
pub mod virtio_drivers;
pub mod virtio_net;
pub mod virtio_rng;

pub use x86_64::PhysAddr;
