//! Persistent memory in the kernel: discovery at boot, the devices, and
//! the `pmem`, `blk` and `acpi` shell commands. The mapping and the
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
use daxbox_platform::pmem as platform_pmem;
use daxbox_pmem::block::{read_bytes, write_bytes, BlockDevice, PmemBlockDevice};
use daxbox_pmem::discovery::{self, Candidate, Forbidden, Machine, Region, Source};
use daxbox_pmem::frames::{FrameTable, Owner};
use daxbox_pmem::mapping::{self, MappingPlan};
use daxbox_pmem::nfit;
use spin::{Mutex, Once};

use crate::memory::{self, PageCounts, PhysRange};

use crate::command::{Command, Context};
use crate::{acpi, config, println, time};
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
}

static TAKEN: Mutex<Vec<TakenDevice>> = Mutex::new(Vec::new());

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
    ranges
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
    });
    Some(device.block)
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
        let plan = match mapping::plan(range.start, range.len) {
            Ok(plan) => plan,
            Err(error) => {
                refusals.push(format!("pmem: refusing {}: {}", range.origin, error));
                continue;
            }
        };
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
        let mapped = platform_pmem::map(physical, region_flush, cache_persistent);
        let (region, pages) = match mapped {
            Ok(mapped) => mapped,
            Err(error) => {
                refusals.push(format!(
                    "pmem: refusing {} ({:#x}-{:#x}): cannot map: {}",
                    range.origin,
                    range.start,
                    range.end() - 1,
                    error
                ));
                continue;
            }
        };
        let frames = match FrameTable::new(range.start, range.len) {
            Ok(frames) => frames,
            Err(error) => {
                refusals.push(format!("pmem: refusing {}: {}", range.origin, error));
                continue;
            }
        };
        let readonly = config::get().readonly.contains(&name);
        let mut block = PmemBlockDevice::new(name.clone(), region, 4096);
        block.set_read_only(readonly);
        println!(
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
            println!(
                "pmem: {} note: planned {} x 2 MiB + {} x 4 KiB (existing page tables changed the split)",
                name, plan.pages_2m, plan.pages_4k
            );
        }
        devices.push(Device {
            range,
            plan,
            pages,
            block,
            frames,
        });
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

/// Shell commands of this module.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "pmem",
        usage: "[bench DEVICE]",
        help: "list pmem ranges and devices; `bench` measures bandwidth",
        run: pmem_command,
    },
    Command {
        name: "blk",
        usage: "read DEV OFF LEN | write DEV OFF TEXT|--pattern BYTE LEN | flush DEV",
        help: "small block reads (hex dump) and writes for tests and diagnostics",
        run: blk_command,
    },
    Command {
        name: "acpi",
        usage: "nfit | tables",
        help: "hex-dump the raw NFIT, or list the ACPI table signatures",
        run: acpi_command,
    },
];

fn pmem_command(_: &mut Context, args: &[&str]) -> Result<(), String> {
    match args {
        [] => {
            list();
            Ok(())
        }
        ["bench", device] => bench(device),
        _ => Err("usage: pmem [bench DEVICE]".to_string()),
    }
}

/// Why `name` cannot be used by `blk`/`pmem bench`.
fn unavailable(name: &str) -> String {
    match taken_by(name) {
        Some(owner) => format!(
            "{} is in use by the {} (not available for raw access)",
            name, owner
        ),
        None => format!("no device '{}' (see `pmem`)", name),
    }
}

fn list() {
    let devices = DEVICES.lock();
    if devices.is_empty() {
        println!("no pmem devices");
    }
    for d in devices.iter() {
        let mut sources = d.range.source.to_string();
        for also in &d.range.also_reported_by {
            sources.push('+');
            sources.push_str(&also.to_string());
        }
        let stats = d.frames.stats();
        println!(
            "{}  {:<10} {:#x}-{:#x} {:>9}  persistence: {}  flush: {}  pages: {} x 2M + {} x 4K (plan {}/{})  frames free: {}/{}{}",
            d.block.name(),
            sources,
            d.range.start,
            d.range.end() - 1,
            human(d.range.len),
            d.range.persistence,
            d.block.memory().flush_instruction().name(),
            d.pages.huge,
            d.pages.small,
            d.plan.pages_2m,
            d.plan.pages_4k,
            stats.free,
            stats.total,
            if d.block.is_read_only() { "  read-only" } else { "" }
        );
    }
    for d in TAKEN.lock().iter() {
        let stats = d.frames.stats();
        println!(
            "{}  {:<10} {:#x}-{:#x} {:>9}  persistence: {}  flush: {}  pages: {} x 2M + {} x 4K (plan {}/{})  frames in use: {}/{}  used by {}",
            d.name,
            d.range.source,
            d.range.start,
            d.range.end() - 1,
            human(d.range.len),
            d.range.persistence,
            d.flush,
            d.pages.huge,
            d.pages.small,
            d.plan.pages_2m,
            d.plan.pages_4k,
            stats.total - stats.free,
            stats.total,
            d.owner
        );
    }
    for refusal in REFUSALS.lock().iter() {
        println!("{}", refusal);
    }
    if let Some(flush) = FLUSH.get() {
        println!(
            "CPU cache-line flush: {} (then sfence); skipped on eADR devices",
            flush.name()
        );
    }
}

fn parse_number(text: &str) -> Result<u64, String> {
    daxbox_syntax::parse_size(text).map_err(|_| format!("'{}' is not a number", text))
}

const MAX_SHELL_IO: u64 = 64 * 1024;

fn blk_command(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let usage = "usage: blk read DEV OFF LEN | blk write DEV OFF TEXT | \
                 blk write DEV OFF --pattern BYTE LEN | blk flush DEV";
    let (verb, name, rest) = match args {
        [verb, name, rest @ ..] => (*verb, *name, rest),
        _ => return Err(usage.to_string()),
    };
    let result = with_device(name, |device| -> Result<(), String> {
        match (verb, rest) {
            ("read", [offset, len]) => {
                let offset = parse_number(offset)?;
                let len = parse_number(len)?;
                if len > 4096 {
                    return Err("blk read shows at most 4096 bytes".to_string());
                }
                let bytes = read_bytes(&device.block, offset, len).map_err(|e| e.to_string())?;
                hex_dump(offset, &bytes);
                Ok(())
            }
            ("write", [offset, "--pattern", byte, len]) => {
                let offset = parse_number(offset)?;
                let byte = u8::try_from(parse_number(byte)?)
                    .map_err(|_| "pattern byte must be 0-255".to_string())?;
                let len = parse_number(len)?;
                if len > MAX_SHELL_IO {
                    return Err(format!("blk write writes at most {} bytes", MAX_SHELL_IO));
                }
                write_bytes(&mut device.block, offset, &alloc::vec![byte; len as usize])
                    .map_err(|e| e.to_string())?;
                println!(
                    "wrote {} bytes of {:#04x} at {:#x} to {} (durable after blk flush)",
                    len,
                    byte,
                    offset,
                    device.block.name()
                );
                Ok(())
            }
            ("write", [offset, words @ ..]) if !words.is_empty() => {
                let offset = parse_number(offset)?;
                let text = words.join(" ");
                write_bytes(&mut device.block, offset, text.as_bytes())
                    .map_err(|e| e.to_string())?;
                println!(
                    "wrote {} bytes at {:#x} to {} (durable after blk flush)",
                    text.len(),
                    offset,
                    device.block.name()
                );
                Ok(())
            }
            ("flush", []) => {
                device.block.flush().map_err(|e| e.to_string())?;
                println!("{}: flushed", device.block.name());
                Ok(())
            }
            _ => Err(usage.to_string()),
        }
    });
    result.unwrap_or_else(|| Err(unavailable(name)))
}

fn hex_dump(base: u64, bytes: &[u8]) {
    crate::print!("{}", daxbox_shell::hex_dump(base, bytes));
}

fn acpi_command(_: &mut Context, args: &[&str]) -> Result<(), String> {
    match args {
        ["nfit"] => match NFIT_RAW.get() {
            Some(Some(bytes)) => {
                println!("NFIT: {} bytes", bytes.len());
                hex_dump(0, bytes);
                Ok(())
            }
            _ => Err("no NFIT table".to_string()),
        },
        ["tables"] => {
            let signatures = acpi::signatures().map_err(|e| e.to_string())?;
            let names: Vec<String> = signatures
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            println!("ACPI tables: {}", names.join(" "));
            Ok(())
        }
        _ => Err("usage: acpi nfit | acpi tables".to_string()),
    }
}

/// Bandwidth in MiB/s for `bytes` moved in `cycles` TSC cycles.
fn mib_per_s(bytes: u64, cycles: u64) -> u64 {
    let ns = time::cycles_to_ns(cycles).max(1);
    (u128::from(bytes) * 1_000_000_000 / (u128::from(ns) << 20)) as u64
}

/// Measures `op` repeated over `total` bytes in chunks of `chunk`.
fn measure(
    total: u64,
    chunk: u64,
    mut op: impl FnMut(u64) -> Result<(), String>,
) -> Result<u64, String> {
    let start = time::cycles();
    let mut done = 0;
    while done < total {
        op(done)?;
        done += chunk;
    }
    Ok(mib_per_s(total, time::cycles() - start))
}

/// The first `len` bytes of `buf` that start on a 4 KiB boundary (`buf`
/// must have 4 KiB of slack).
fn page_aligned(buf: &mut [u8], len: u64) -> &mut [u8] {
    let skip = buf.as_ptr().align_offset(4096).min(4096);
    &mut buf[skip..skip + len as usize]
}

fn bench(name: &str) -> Result<(), String> {
    const WINDOW: u64 = 16 << 20;
    const TOTAL: u64 = 64 << 20;
    const SMALL: u64 = 4096;
    const LARGE: u64 = 2 << 20;

    // Plain RAM memcpy between two heap buffers, the yardstick. Both are
    // page-aligned like the pmem side, so alignment is not what differs.
    let mut source_buf = alloc::vec![0x5au8; (LARGE + 4096) as usize];
    let mut target_buf = alloc::vec![0u8; (LARGE + 4096) as usize];
    let source = page_aligned(&mut source_buf, LARGE);
    let target = page_aligned(&mut target_buf, LARGE);
    let mut ram = [0u64; 2];
    for (slot, chunk) in [SMALL, LARGE].into_iter().enumerate() {
        ram[slot] = measure(TOTAL, chunk, |done| {
            let at = (done % LARGE) as usize;
            let n = chunk as usize;
            target[at..at + n].copy_from_slice(&source[at..at + n]);
            core::hint::black_box(&mut *target);
            Ok(())
        })?;
    }

    let result = with_device(name, |device| -> Result<(), String> {
        let size = device.block.size();
        let window = WINDOW.min(size / LARGE * LARGE);
        if window < LARGE {
            return Err("device is smaller than 2 MiB".to_string());
        }
        let writable = !device.block.is_read_only();
        // Keep the user's data: save the window, restore it afterwards.
        let mut saved = alloc::vec![0u8; window as usize];
        device
            .block
            .read(0, &mut saved)
            .map_err(|e| e.to_string())?;
        let mut buf_storage = alloc::vec![0xc3u8; (LARGE + 4096) as usize];
        let buf = page_aligned(&mut buf_storage, LARGE);
        let mut results = Vec::new();
        for chunk in [SMALL, LARGE] {
            let n = chunk as usize;
            let read = measure(TOTAL, chunk, |done| {
                device
                    .block
                    .read(done % window, &mut buf[..n])
                    .map_err(|e| e.to_string())
            })?;
            let write = if writable {
                Some(measure(TOTAL, chunk, |done| {
                    device
                        .block
                        .write(done % window, &buf[..n])
                        .and_then(|()| device.block.flush())
                        .map_err(|e| e.to_string())
                })?)
            } else {
                None
            };
            results.push((chunk, read, write));
        }
        if writable {
            device
                .block
                .write(0, &saved)
                .and_then(|()| device.block.flush())
                .map_err(|e| e.to_string())?;
        }
        println!(
            "pmem bench {}: {} window (contents restored), {} per test, flush: {}",
            device.block.name(),
            human(window),
            human(TOTAL),
            FLUSH.get().map_or("?", |f| f.name())
        );
        for (slot, (chunk, read, write)) in results.into_iter().enumerate() {
            let write = match write {
                Some(w) => format!("{} MiB/s", w),
                None => "read-only".to_string(),
            };
            println!(
                "  {:>7} I/O: pmem read {} MiB/s, pmem write+flush {}, RAM memcpy {} MiB/s",
                human(chunk),
                read,
                write,
                ram[slot]
            );
        }
        Ok(())
    });
    result.unwrap_or_else(|| Err(unavailable(name)))
}
