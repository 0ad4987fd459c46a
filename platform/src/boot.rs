//! What the bootloader hands over, taken once at the entry point.
//!
//! Invariant: [`Boot::new`] accepts one boot info per boot, the first it is
//! given, which is the one the bootloader passes to the kernel's entry
//! point (the kernel calls it first thing there). Everything derived from
//! raw addresses in it (the ramdisk slice, the physical-memory offset, the
//! RSDP) stays inside this crate.

use core::sync::atomic::{AtomicBool, Ordering};

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use bootloader_api::BootInfo;

use crate::memory::{self, PhysRange};

/// The boot info, owned by the platform for the kernel's life.
pub struct Boot {
    info: &'static BootInfo,
}

static TAKEN: AtomicBool = AtomicBool::new(false);

impl Boot {
    /// Takes the boot info the bootloader passed to the entry point.
    /// Panics on a second call.
    pub fn new(info: &'static mut BootInfo) -> Self {
        assert!(
            !TAKEN.swap(true, Ordering::AcqRel),
            "the boot info is taken once"
        );
        Self { info }
    }

    /// The boot memory map.
    pub fn memory_regions(&self) -> &'static MemoryRegions {
        &self.info.memory_regions
    }

    /// Whether the firmware was UEFI (its memory map has UEFI types).
    pub fn is_uefi(&self) -> bool {
        self.info
            .memory_regions
            .iter()
            .any(|r| matches!(r.kind, MemoryRegionKind::UnknownUefi(_)))
    }

    /// Where the kernel ELF is in physical memory.
    pub fn kernel_image(&self) -> PhysRange {
        PhysRange {
            start: self.info.kernel_addr,
            end: self.info.kernel_addr.saturating_add(self.info.kernel_len),
        }
    }

    /// Builds the frame allocator and the heap from the memory map and sets
    /// up page-table access. Returns the heap size. Panics without a
    /// physical-memory mapping, or when called twice.
    pub fn init_memory(&self) -> u64 {
        let physical_offset = self
            .info
            .physical_memory_offset
            .into_option()
            .unwrap_or_else(|| panic!("the bootloader did not map physical memory"));
        memory::init(&self.info.memory_regions, physical_offset)
    }

    /// Records the RSDP and the extent of the physical-memory mapping for
    /// [`crate::acpi`].
    pub fn init_acpi(&self) {
        let mapped_end = self.info.memory_regions.iter().map(|r| r.end).max();
        crate::acpi::init(self.info.rsdp_addr.into_option(), mapped_end.unwrap_or(0));
    }

    /// The ramdisk (the boot config), if the bootloader loaded one.
    pub fn ramdisk(&self) -> Option<&'static [u8]> {
        let address = self.info.ramdisk_addr.into_option()?;
        let len = usize::try_from(self.info.ramdisk_len).ok()?;
        // SAFETY: the bootloader maps the ramdisk at `address` for
        // `ramdisk_len` bytes and never touches it again; the boot info is
        // the bootloader's (type invariant) and nothing writes the ramdisk.
        Some(unsafe { core::slice::from_raw_parts(address as *const u8, len) })
    }
}
