//! Where the CPU's time goes: event-loop passes, halts (each ended by a
//! wake-up), time halted against time busy, interrupts by source. Shown by
//! the `cpu` command and on `/metrics` (through [`info`]).
//!
//! The loop is tickless: before halting it arms the one-shot local APIC
//! timer for its earliest deadline (see `main.rs`), so an idle appliance
//! wakes only for the deadlines it has (the NVDIMM hot-add poll, smoltcp's
//! and the services' timers) and for device interrupts.

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use daxbox_storage::web::CpuInfo;

use crate::command::{Command, Context};
use crate::{interrupts, net, println, serial, time};

/// Event-loop passes since the loop started.
static PASSES: AtomicU64 = AtomicU64::new(0);

/// Counts one pass of the event loop.
pub fn pass() {
    PASSES.fetch_add(1, Ordering::Relaxed);
}

/// The counters, for the shell and the web pages.
pub fn info() -> CpuInfo {
    let stats = interrupts::stats();
    let uptime_ns = time::now_us().saturating_mul(1000);
    CpuInfo {
        loop_passes: PASSES.load(Ordering::Relaxed),
        wakeups: stats.halts,
        halted_ns: stats.halted_ns,
        busy_ns: uptime_ns.saturating_sub(stats.halted_ns),
        timer_interrupts: stats.timer_interrupts,
        device_interrupts: stats.device_interrupts,
        serial_interrupts: serial::receive_interrupts(),
    }
}

/// Shell commands of this module.
pub const COMMANDS: &[Command] = &[Command {
    name: "cpu",
    usage: "",
    help: "where the CPU's time goes: loop passes, wake-ups, time busy and halted, interrupts by source",
    run: cpu_command,
}];

fn cpu_command(_: &mut Context, args: &[&str]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(String::from("usage: cpu"));
    }
    let info = info();
    let total = (info.busy_ns + info.halted_ns).max(1);
    let busy_permille = info.busy_ns.saturating_mul(1000) / total;
    println!(
        "cpu: {} loop passes, {} wake-ups (halts), busy {} ms ({}.{}%), halted {} ms",
        info.loop_passes,
        info.wakeups,
        info.busy_ns / 1_000_000,
        busy_permille / 10,
        busy_permille % 10,
        info.halted_ns / 1_000_000
    );
    println!(
        "interrupts: {} timer (one-shot deadlines), {} device ({} nic, {} serial)",
        info.timer_interrupts,
        info.device_interrupts,
        net::stats().0.interrupts,
        info.serial_interrupts
    );
    Ok(())
}
