//! NVDIMM hot-add and taking devices out of service: the `pmem` command.
//!
//! QEMU signals an NVDIMM plugged into a running guest by setting bit 4 of
//! the GPE0 status register (and raising the SCI). Rather than wire the
//! SCI, the event loop looks at that bit every [`POLL_INTERVAL_US`] (one
//! port read; its cost is measured and printed at boot): the loop is
//! tickless, so [`next_poll_us`] is one of the deadlines it arms its timer
//! for, and an idle appliance wakes 5 times a second for it; a hot-add is
//! seen within 0.2 s. The bit latches until cleared, so
//! none is missed. On an event (or `pmem rescan`) the FIT is read through
//! QEMU's DSM page (`daxbox_pmem::fit` over `daxbox_platform::nvdimm`),
//! its new persistent-memory ranges go through discovery and the mapping
//! like boot-time ones (`pmem::add_ranges`), and each new device gets the
//! boot policy (`storage::add_device`). Everything is said on the console.
//!
//! `pmem offline pmemN` disconnects the device's NBD clients and unmounts
//! it cleanly (`umount --force`), which frees its frames in the page-frame
//! table, and takes it off the lists the storage layer and `blk` see;
//! `pmem online pmemN` puts it back and applies the boot policy.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use daxbox_platform::nvdimm;
use daxbox_pmem::discovery::Candidate;
use daxbox_pmem::fit;

use crate::command::{Command, Console, Context};
use crate::{pmem, println, storage, time};

/// How often the event loop looks at the GPE0 status bit, at most.
pub const POLL_INTERVAL_US: u64 = 200_000;

static NEXT_POLL_US: AtomicU64 = AtomicU64::new(0);

/// Finds QEMU's NVDIMM hot-add interface and says what was found.
pub fn init() {
    match nvdimm::detect() {
        Ok(hotplug) => {
            let (port, len) = hotplug.gpe0();
            // The cost of one poll: a read of the status byte.
            const READS: u64 = 100;
            let start = time::cycles();
            for _ in 0..READS {
                let _ = hotplug.pending();
            }
            let ns = time::cycles_to_ns(time::cycles() - start) / READS;
            println!(
                "pmem: NVDIMM hot-add: QEMU NVDIMM SSDT found; GPE0 {:#x} ({} bytes) bit 4 \
                 polled every {} ms ({} ns per poll), FIT read through port {:#x}",
                port,
                len,
                POLL_INTERVAL_US / 1000,
                ns,
                fit::DSM_PORT
            );
        }
        Err(why) => println!("pmem: no NVDIMM hot-add: {}", why),
    }
}

/// When [`poll`] wants to run next ([`time::now_us`] clock); `None` on a
/// machine without NVDIMM hot-add.
pub fn next_poll_us() -> Option<u64> {
    nvdimm::detect().ok()?;
    Some(NEXT_POLL_US.load(Ordering::Relaxed))
}

/// Called by the event loop: on a hot-add event, rescans. True when it did
/// work.
pub fn poll() -> bool {
    let Ok(hotplug) = nvdimm::detect() else {
        return false;
    };
    let now = time::now_us();
    if now < NEXT_POLL_US.load(Ordering::Relaxed) {
        return false;
    }
    NEXT_POLL_US.store(now + POLL_INTERVAL_US, Ordering::Relaxed);
    if !hotplug.take_event() {
        return false;
    }
    println!("pmem: NVDIMM hot-add event");
    if let Err(error) = rescan(&mut Console) {
        println!("pmem: rescan failed: {}", error);
    }
    true
}

/// Reads the FIT and brings every new persistent-memory range into service.
fn rescan(out: &mut dyn Write) -> Result<(), String> {
    let hotplug =
        nvdimm::detect().map_err(|why| format!("no NVDIMM hot-add on this machine: {}", why))?;
    let bytes = fit::read_fit(|input, page| hotplug.dsm_call(input, page))
        .map_err(|error| error.to_string())?;
    let table = fit::parse_fit(&bytes);
    for warning in &table.warnings {
        let _ = writeln!(out, "pmem: {}", warning);
    }
    let candidates: alloc::vec::Vec<Candidate> = Candidate::from_nfit(&table)
        .into_iter()
        .map(|mut c| {
            c.origin = c.origin.replacen("NFIT", "FIT", 1);
            c
        })
        .collect();
    let _ = writeln!(
        out,
        "pmem: FIT: {} bytes, {} structures, {} persistent-memory range(s)",
        bytes.len(),
        table.structures,
        candidates.len()
    );
    let (added, messages) = pmem::add_ranges(&candidates);
    for message in &messages {
        let _ = writeln!(out, "{}", message);
    }
    if added.is_empty() {
        let _ = writeln!(out, "pmem: no new ranges");
    }
    for name in added {
        storage::add_device(&name, out);
    }
    Ok(())
}

fn offline(name: &str, out: &mut dyn Write) -> Result<(), String> {
    if pmem::is_offline(name) {
        return Err(format!("{} is already offline", name));
    }
    storage::release_device(name, out)?;
    pmem::set_offline(name)?;
    let _ = writeln!(
        out,
        "pmem: {} offline: not served, its frames free (`pmem online {}` brings it back)",
        name, name
    );
    Ok(())
}

fn online(name: &str, out: &mut dyn Write) -> Result<(), String> {
    pmem::set_online(name)?;
    let _ = writeln!(out, "pmem: {} online", name);
    storage::add_device(name, out);
    Ok(())
}

fn pmem_command(_: &mut Context, args: &[&str]) -> Result<(), String> {
    match args {
        [] => {
            pmem::commands::list();
            Ok(())
        }
        ["bench", device] => pmem::commands::bench(device),
        ["rescan"] => rescan(&mut Console),
        ["offline", device] => offline(device, &mut Console),
        ["online", device] => online(device, &mut Console),
        _ => Err(USAGE.to_string()),
    }
}

const USAGE: &str = "usage: pmem [bench DEVICE | rescan | offline DEVICE | online DEVICE]";

/// The `pmem` command.
pub const COMMANDS: &[Command] = &[Command {
    name: "pmem",
    usage: "[bench DEVICE | rescan | offline DEVICE | online DEVICE]",
    help: "list pmem devices; `bench` measures bandwidth; `rescan` reads the NVDIMM FIT for \
           hot-added ranges; `offline` disconnects, unmounts and retires a device, `online` \
           brings it back",
    run: pmem_command,
}];
