//! Persistent memory in the kernel: discovery at boot and the devices
//! (their shell commands, `pmem`, `blk` and `acpi`, are [`commands`]). The
//! mapping and the
//! hardware side of `PersistentMemory` (`PmemRegion`: stores, cache-line
//! flushes, fences, non-temporal stores) are `daxbox_platform::pmem`.
//!
//! Everything that can be decided without hardware lives in
//! `daxbox-pmem` (NFIT parsing, merging and checking the ranges, the
//! mapping plan, the page-frame table, the block device); this module
//! collects the inputs (ACPI NFIT, memory map, `pmem=` requests and the
//! regions that must not be touched), applies the results (RAM carve-outs,
//! page tables) and owns the devices, named `pmem0`, `pmem1`, ... in
//! discovery order.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use daxbox_bootconfig::ReadOnlyTarget;
use daxbox_platform::pmem as platform_pmem;
use daxbox_pmem::block::{BlockDevice, PmemBlockDevice};
use daxbox_pmem::discovery::{self, Candidate, Forbidden, Machine, Region, Source};
use daxbox_pmem::frames::{FrameTable, Owner};
use daxbox_pmem::mapping::{self, MappingPlan};
use daxbox_pmem::nfit;
use spin::{Mutex, Once};

use crate::memory::{self, PageCounts, PhysRange};

use crate::{acpi, config, println};
pub use daxbox_platform::pmem::{FlushInstruction, PmemRegion};
use daxbox_syntax::human;

/// One pmem device.
pub struct Device {
    /// The accepted range.
    pub range: discovery::PmemRange,
    /// The mapping plan from `daxbox-pmem`.
    pub plan: MappingPlan,
    /// Pages the page-table code actually created.
    pub pages: PageCounts,
    /// The block device over the range.
    pub block: PmemBlockDevice<PmemRegion>,
    /// The page-frame table of the range.
    pub frames: FrameTable,
}

static DEVICES: Mutex<Vec<Device>> = Mutex::new(Vec::new());
static REFUSALS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NFIT_RAW: Once<Option<Vec<u8>>> = Once::new();
static FLUSH: Once<FlushInstruction> = Once::new();

/// A device whose block device was handed to the storage layer (a daxfs
/// mount or a raw export): what `pmem` still shows about it.
struct TakenDevice {
    name: String,
    range: discovery::PmemRange,
    plan: MappingPlan,
    pages: PageCounts,
    frames: FrameTable,
    owner: Owner,
    flush: &'static str,
    /// The block device's read-only flag (`readonly=pmemN`), for
    /// `give_back_block`.
    read_only: bool,
}

static TAKEN: Mutex<Vec<TakenDevice>> = Mutex::new(Vec::new());

/// Devices taken out of service with `pmem offline`: mapped, their frames
/// free, but neither available to the storage layer nor to `blk`.
static OFFLINE: Mutex<Vec<Device>> = Mutex::new(Vec::new());

/// What discovery checked boot-time ranges against, kept for ranges that
/// appear later (NVDIMM hot-add).
struct BootMachine {
    usable: Vec<Region>,
    forbidden: Vec<Forbidden>,
}

static MACHINE: Mutex<Option<BootMachine>> = Mutex::new(None);

/// The physical ranges of every pmem device, in use or not (for `mem
/// stress` and any check that storage stays out of volatile memory).
pub fn storage_ranges() -> Vec<PhysRange> {
    let mut ranges: Vec<PhysRange> = DEVICES
        .lock()
        .iter()
        .map(|d| PhysRange {
            start: d.range.start,
            end: d.range.end(),
        })
        .collect();
    ranges.extend(TAKEN.lock().iter().map(|d| PhysRange {
        start: d.range.start,
        end: d.range.end(),
    }));
    ranges.extend(OFFLINE.lock().iter().map(|d| PhysRange {
        start: d.range.start,
        end: d.range.end(),
    }));
    ranges
}

/// Every device's name and range, whatever its state (available, in use,
/// offline).
fn all_devices() -> Vec<(String, u64, u64)> {
    let mut all: Vec<(String, u64, u64)> = DEVICES
        .lock()
        .iter()
        .map(|d| (d.block.name().to_string(), d.range.start, d.range.len))
        .collect();
    all.extend(
        TAKEN
            .lock()
            .iter()
            .map(|d| (d.name.clone(), d.range.start, d.range.len)),
    );
    all.extend(
        OFFLINE
            .lock()
            .iter()
            .map(|d| (d.block.name().to_string(), d.range.start, d.range.len)),
    );
    all
}

/// Whether device `name` is offline (`pmem offline`).
pub fn is_offline(name: &str) -> bool {
    OFFLINE.lock().iter().any(|d| d.block.name() == name)
}

/// Takes available device `name` out of service: it leaves the list the
/// storage layer and `blk` see. Its frames must all be free (the storage
/// layer gave it back first).
pub fn set_offline(name: &str) -> Result<(), String> {
    if is_offline(name) {
        return Err(format!("{} is already offline", name));
    }
    if let Some(owner) = taken_by(name) {
        return Err(format!("{} is in use by the {}", name, owner));
    }
    let mut devices = DEVICES.lock();
    let index = devices
        .iter()
        .position(|d| d.block.name() == name)
        .ok_or_else(|| format!("no device '{}' (see `pmem`)", name))?;
    let stats = devices[index].frames.stats();
    if stats.free != stats.total {
        return Err(format!(
            "{}: {} of {} frames still held",
            name,
            stats.total - stats.free,
            stats.total
        ));
    }
    let device = devices.remove(index);
    drop(devices);
    OFFLINE.lock().push(device);
    Ok(())
}

/// Brings offline device `name` back (available again; the caller then
/// applies the boot policy to it).
pub fn set_online(name: &str) -> Result<(), String> {
    let mut offline = OFFLINE.lock();
    let index = offline
        .iter()
        .position(|d| d.block.name() == name)
        .ok_or_else(|| match all_devices().iter().any(|(n, _, _)| n == name) {
            true => format!("{} is not offline", name),
            false => format!("no device '{}' (see `pmem`)", name),
        })?;
    let device = offline.remove(index);
    drop(offline);
    let mut devices = DEVICES.lock();
    devices.push(device);
    devices.sort_by_key(|d| daxbox_syntax::device_index(d.block.name()).unwrap_or(u16::MAX));
    Ok(())
}

/// The name the next device gets: one above the highest `pmemN` there is.
fn next_name() -> String {
    let next = all_devices()
        .iter()
        .filter_map(|(name, _, _)| daxbox_syntax::device_index(name))
        .map(|index| index + 1)
        .max()
        .unwrap_or(0);
    daxbox_syntax::device_name(next)
}

/// Ranges reported after boot (the FIT of a hot-added NVDIMM): those not
/// already devices are checked like boot-time ones (discovery against the
/// boot machine's RAM and forbidden regions, plus every existing device),
/// mapped and registered as the next `pmemN`. Returns the new devices'
/// names and the messages (accepted and refused ranges) for the console.
pub fn add_ranges(candidates: &[Candidate]) -> (Vec<String>, Vec<String>) {
    let mut messages = Vec::new();
    let known = all_devices();
    let new: Vec<Candidate> = candidates
        .iter()
        .filter(|c| {
            !known
                .iter()
                .any(|(_, start, len)| *start == c.start && *len == c.len)
        })
        .cloned()
        .collect();
    if new.is_empty() {
        return (Vec::new(), messages);
    }
    let machine = MACHINE.lock();
    let Some(boot) = machine.as_ref() else {
        messages.push("pmem: not initialised; ranges ignored".to_string());
        return (Vec::new(), messages);
    };
    let mut forbidden = boot.forbidden.clone();
    forbidden.extend(known.iter().map(|&(_, start, len)| Forbidden {
        start,
        len,
        what: "an existing pmem device",
    }));
    let found = discovery::discover(
        &new,
        &Machine {
            usable_ram: &boot.usable,
            forbidden: &forbidden,
            max_physical_address: platform_pmem::max_physical_address(),
        },
    );
    drop(machine);
    for note in &found.notes {
        messages.push(note.to_string());
    }
    let mut refusals: Vec<String> = found.refused.iter().map(|r| r.to_string()).collect();
    let flush = *FLUSH.call_once(platform_pmem::detect_flush);
    let mut added = Vec::new();
    for range in found.accepted {
        let name = next_name();
        match map_device(&name, range, flush) {
            Ok((device, line)) => {
                messages.push(line);
                DEVICES.lock().push(device);
                added.push(name);
            }
            Err(refusal) => refusals.push(refusal),
        }
    }
    messages.extend(refusals.iter().cloned());
    // A refused range is in the FIT at every later rescan: `pmem` lists it
    // once.
    let mut known_refusals = REFUSALS.lock();
    for refusal in refusals {
        if !known_refusals.contains(&refusal) {
            known_refusals.push(refusal);
        }
    }
    (added, messages)
}

/// Names of the devices still available here (not handed to the storage
/// layer), in discovery order.
pub fn device_names() -> Vec<String> {
    DEVICES
        .lock()
        .iter()
        .map(|d| d.block.name().to_string())
        .collect()
}

/// Runs `f` on available device `name` (`pmem0`, ...), holding the device
/// lock. Devices handed to the storage layer are not available.
pub fn with_device<R>(name: &str, f: impl FnOnce(&mut Device) -> R) -> Option<R> {
    let mut devices = DEVICES.lock();
    devices.iter_mut().find(|d| d.block.name() == name).map(f)
}

/// Who holds device `name`, when the storage layer took it.
pub fn taken_by(name: &str) -> Option<Owner> {
    TAKEN
        .lock()
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.owner)
}

/// Hands device `name` to the storage layer: every frame of the range
/// passes to `owner` in the page-frame table (device → filesystem or raw
/// export), and the block device moves to the caller. `None` when there is
/// no such available device or its frames are not all free.
pub fn take_block(name: &str, owner: Owner) -> Option<PmemBlockDevice<PmemRegion>> {
    let mut devices = DEVICES.lock();
    let index = devices.iter().position(|d| d.block.name() == name)?;
    let device = &mut devices[index];
    if let Err(error) = device.frames.claim_range(0, device.range.len, owner) {
        println!(
            "pmem: {}: cannot hand the frames to {}: {}",
            name, owner, error
        );
        return None;
    }
    let device = devices.remove(index);
    TAKEN.lock().push(TakenDevice {
        name: name.to_string(),
        range: device.range,
        plan: device.plan,
        pages: device.pages,
        frames: device.frames,
        owner,
        flush: device.block.memory().flush_instruction().name(),
        read_only: device.block.is_read_only(),
    });
    Some(device.block)
}

/// Takes device `name` back from the storage layer (`umount`): every frame
/// returns from `owner` to free in the page-frame table, and the device is
/// available again (to `blk`, `mkfs`, `mount`) with the block size and
/// read-only flag it had. On an error the device stays taken (until the
/// next boot) and the memory is dropped.
pub fn give_back_block(name: &str, memory: PmemRegion, owner: Owner) -> Result<(), String> {
    let mut taken = TAKEN.lock();
    let index = taken
        .iter()
        .position(|d| d.name == name)
        .ok_or_else(|| format!("{} was not handed to the storage layer", name))?;
    let device = &mut taken[index];
    if device.owner != owner {
        return Err(format!(
            "{} is held by {}, not {}",
            name, device.owner, owner
        ));
    }
    device
        .frames
        .release_range(0, device.range.len, owner)
        .map_err(|error| format!("cannot take the frames back: {}", error))?;
    let device = taken.remove(index);
    drop(taken);
    let mut block = PmemBlockDevice::new(device.name.clone(), memory, 4096);
    block.set_read_only(device.read_only);
    DEVICES.lock().push(Device {
        range: device.range,
        plan: device.plan,
        pages: device.pages,
        block,
        frames: device.frames,
    });
    // Discovery order (pmem0, pmem1, ...), as the listings show them.
    DEVICES
        .lock()
        .sort_by_key(|d| daxbox_syntax::device_index(d.block.name()).unwrap_or(u16::MAX));
    Ok(())
}

/// Makes every completed write durable (before power-off).
pub fn shutdown() {
    for device in DEVICES.lock().iter_mut() {
        let _ = device.block.flush();
    }
}

/// Inputs from the boot info that discovery needs.
pub struct BootFacts<'a> {
    /// The boot memory map.
    pub regions: &'a MemoryRegions,
    /// Where the kernel ELF is.
    pub kernel: PhysRange,
}

/// Discovers, checks, carves out, maps and registers every pmem range.
pub fn init(facts: &BootFacts<'_>) {
    let flush = *FLUSH.call_once(platform_pmem::detect_flush);
    let mut candidates = Vec::new();

    // 1. The ACPI NFIT: how QEMU's -device nvdimm (and real NVDIMMs)
    //    appear; not in the memory map at all.
    let nfit_bytes = match acpi::find_table(b"NFIT") {
        Ok(bytes) => Some(bytes),
        Err(acpi::AcpiError::NotFound) => None,
        Err(error) => {
            println!("pmem: cannot read the NFIT: {}", error);
            None
        }
    };
    if let Some(bytes) = &nfit_bytes {
        match nfit::parse(bytes) {
            Ok(table) => {
                for warning in &table.warnings {
                    println!("pmem: {}", warning);
                }
                println!(
                    "pmem: NFIT: {} structures, {} persistent-memory range(s), platform {}",
                    table.structures,
                    table.persistent_ranges().count(),
                    table.domain()
                );
                candidates.extend(Candidate::from_nfit(&table));
            }
            Err(error) => println!("pmem: {} (table ignored)", error),
        }
    }
    NFIT_RAW.call_once(|| nfit_bytes);

    // 2. Memory-map entries typed as persistent memory.
    for region in facts.regions.iter() {
        let len = region.end.saturating_sub(region.start);
        match region.kind {
            MemoryRegionKind::UnknownBios(discovery::E820_PERSISTENT_TYPE) => {
                candidates.push(Candidate::e820(region.start, len))
            }
            MemoryRegionKind::UnknownUefi(discovery::UEFI_PERSISTENT_TYPE) => {
                candidates.push(Candidate::uefi(region.start, len))
            }
            _ => {}
        }
    }

    // 3. pmem=SIZE@START requests from the boot config.
    for request in &config::get().pmem {
        candidates.push(Candidate::boot_config(
            request.start,
            request.size,
            &request.text,
        ));
    }

    // What pmem must never overlap. Named specifically first, so that a
    // refusal names the most telling region.
    let (kernel_start, kernel_len) = (facts.kernel.start, facts.kernel.len());
    let mut forbidden = alloc::vec![
        Forbidden {
            start: kernel_start,
            len: kernel_len,
            what: "kernel image",
        },
        Forbidden {
            start: 0,
            len: 0x10_0000,
            what: "low memory (BIOS data, real-mode area)",
        },
    ];
    forbidden.push(Forbidden {
        start: memory::page_table_root().as_u64(),
        len: 4096,
        what: "page tables",
    });
    for region in facts.regions.iter() {
        if region.kind == MemoryRegionKind::Bootloader {
            forbidden.push(Forbidden {
                start: region.start,
                len: region.end.saturating_sub(region.start),
                what: "bootloader data (kernel, page tables, boot info)",
            });
        }
    }
    for used in memory::ram_in_use() {
        forbidden.push(Forbidden {
            start: used.start,
            len: used.len(),
            what: "RAM in use (heap, page tables, frames)",
        });
    }
    let usable: Vec<Region> = facts
        .regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| Region {
            start: r.start,
            len: r.end.saturating_sub(r.start),
        })
        .collect();
    let machine = Machine {
        usable_ram: &usable,
        forbidden: &forbidden,
        max_physical_address: platform_pmem::max_physical_address(),
    };
    println!(
        "pmem: {} candidate range(s); kernel image {:#x}-{:#x}; flush with {}",
        candidates.len(),
        kernel_start,
        (kernel_start + kernel_len).saturating_sub(1),
        flush.name()
    );

    let found = discovery::discover(&candidates, &machine);
    *MACHINE.lock() = Some(BootMachine {
        usable: usable.clone(),
        forbidden: forbidden.clone(),
    });
    let mut refusals: Vec<String> = found.refused.iter().map(|r| r.to_string()).collect();
    for note in &found.notes {
        println!("{}", note);
    }

    // Take every pmem= range away from the volatile allocator first, before
    // the page tables below can allocate a frame inside one of them
    // (discovery already checked they are free usable RAM; `carve_out` is
    // the authoritative check).
    let mut ranges = Vec::new();
    for range in found.accepted {
        if range.source == Source::BootConfig {
            if let Err(error) = memory::carve_out(PhysRange {
                start: range.start,
                end: range.end(),
            }) {
                refusals.push(format!(
                    "pmem: refusing {} ({:#x}-{:#x}): {}",
                    range.origin,
                    range.start,
                    range.end() - 1,
                    error
                ));
                continue;
            }
        }
        ranges.push(range);
    }

    let mut devices = DEVICES.lock();
    for range in ranges {
        let name = format!("pmem{}", devices.len());
        match map_device(&name, range, flush) {
            Ok((device, line)) => {
                println!("{}", line);
                devices.push(device);
            }
            Err(refusal) => refusals.push(refusal),
        }
    }
    for refusal in &refusals {
        println!("{}", refusal);
    }
    println!(
        "pmem: {} device(s), {} range(s) refused",
        devices.len(),
        refusals.len()
    );
    *REFUSALS.lock() = refusals;
}

/// Maps an accepted range and makes it device `name`: the 2 MiB mapping
/// plan, the identity map (through `platform_pmem::map`, which claims the
/// range as storage first), the page-frame table and the block device
/// (read-only when `readonly=NAME` says so). Returns the device and the
/// console line, or the refusal.
fn map_device(
    name: &str,
    range: discovery::PmemRange,
    flush: FlushInstruction,
) -> Result<(Device, String), String> {
    let plan = mapping::plan(range.start, range.len)
        .map_err(|error| format!("pmem: refusing {}: {}", range.origin, error))?;
    let cache_persistent = range.persistence.cache_is_persistent();
    let region_flush = if cache_persistent {
        FlushInstruction::None
    } else {
        flush
    };
    let physical = PhysRange {
        start: range.start,
        end: range.end(),
    };
    // The frame table first: it only allocates, so a failure leaves the
    // range unclaimed.
    let frames = FrameTable::new(range.start, range.len)
        .map_err(|error| format!("pmem: refusing {}: {}", range.origin, error))?;
    let (region, pages) =
        platform_pmem::map(physical, region_flush, cache_persistent).map_err(|error| {
            format!(
                "pmem: refusing {} ({:#x}-{:#x}): cannot map: {}",
                range.origin,
                range.start,
                range.end() - 1,
                error
            )
        })?;
    // `readonly=pmemN` also keeps `blk write` off the device.
    let readonly = config::get().readonly.iter().any(|rule| {
        matches!(&rule.target, ReadOnlyTarget::Device { device, files: false } if *device == name)
    });
    let mut block = PmemBlockDevice::new(name.to_string(), region, 4096);
    block.set_read_only(readonly);
    let mut line = format!(
        "pmem: {} {} {:#x}-{:#x} ({}), persistence {}, mapped {} x 2 MiB + {} x 4 KiB pages{}",
        name,
        range.source,
        range.start,
        range.end() - 1,
        human(range.len),
        range.persistence,
        pages.huge,
        pages.small,
        if readonly { ", read-only" } else { "" }
    );
    if (pages.huge, pages.small) != (plan.pages_2m, plan.pages_4k) {
        line.push_str(&format!(
            "\npmem: {} note: planned {} x 2 MiB + {} x 4 KiB (existing page tables changed the split)",
            name, plan.pages_2m, plan.pages_4k
        ));
    }
    Ok((
        Device {
            range,
            plan,
            pages,
            block,
            frames,
        },
        line,
    ))
}

pub mod commands;
