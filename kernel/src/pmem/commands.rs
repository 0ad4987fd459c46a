//! The `pmem`, `blk` and `acpi` shell commands over the devices of
//! [`super`]: listing them, small byte-granular reads and writes of a device
//! that is not in use (the byte handling is `daxbox_pmem::block`'s), the
//! raw NFIT, and `pmem bench`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use daxbox_pmem::block::{read_bytes, write_bytes, BlockDevice};
use daxbox_syntax::human;

use super::{taken_by, with_device, DEVICES, FLUSH, NFIT_RAW, OFFLINE, REFUSALS, TAKEN};
use crate::command::{Command, Context};
use crate::{acpi, println, time};

/// Shell commands of this module (`pmem` itself is `crate::hotplug`'s,
/// which lists with [`list`] and measures with [`bench`]).
pub const COMMANDS: &[Command] = &[
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

/// `pmem`: every device, available, in use or offline.
pub fn list() {
    let devices = DEVICES.lock();
    let taken = TAKEN.lock();
    // Devices the storage layer took are still devices: listed below.
    if devices.is_empty() && taken.is_empty() && OFFLINE.lock().is_empty() {
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
    for d in taken.iter() {
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
    for d in OFFLINE.lock().iter() {
        println!(
            "{}  {:<10} {:#x}-{:#x} {:>9}  offline (`pmem online {}` brings it back)",
            d.block.name(),
            d.range.source,
            d.range.start,
            d.range.end() - 1,
            human(d.range.len),
            d.block.name()
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

/// `pmem bench DEVICE`.
pub fn bench(name: &str) -> Result<(), String> {
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
