//! daxbox: a bare-metal unikernel that turns persistent memory into
//! network storage.
//!
//! Boot order (each step needs the ones before it):
//! serial console → GDT/IDT → RAM frames, heap and page tables → boot
//! config → APIC + calibrated clock and timer → storage discovery → network
//! → admin shell and the event loop.
//!
//! The event loop polls every source of work (console, network) until none
//! has anything to do, then arms the one-shot timer for its earliest
//! deadline and halts until the next interrupt (that timer or a device).
//! There is no periodic tick, so an idle appliance leaves the host CPU
//! alone (see `cpu.rs` for the counters).
//!
//! Everything that touches the hardware is `daxbox-platform`, reached
//! through safe handles; this crate is safe Rust only.
#![forbid(unsafe_code)]
#![no_std]
#![no_main]

extern crate alloc;

mod command;
mod config;
mod cpu;
mod entropy;
mod hotplug;
mod http;
mod nbd;
mod net;
mod pci;
mod pmem;
mod shell;
mod storage;
mod tls;
mod web;

use daxbox_platform::boot::Boot;
use daxbox_platform::{acpi, gdt, interrupts, memory, power, rtc, serial};
pub use daxbox_platform::{print, println, time};

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::MemoryRegionKind;
use bootloader_api::{entry_point, BootInfo};
use daxbox_netstack::http::Chain;
use daxbox_storage::compaction::IDLE_BEFORE_COMPACTION_US;
use daxbox_syntax::human;

/// How the bootloader should set the kernel up.
pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    // Keep every mapping the bootloader chooses in the upper half, so the
    // lower half is free for identity maps of pmem and device registers.
    config.mappings.dynamic_range_start = Some(0xffff_8000_0000_0000);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

/// Every module's shell commands, in the order `help` lists them (the
/// shell gets them from here, so it imports none of these modules).
const COMMAND_TABLES: daxbox_shell::Tables<command::Context> = &[
    shell::COMMANDS,
    hotplug::COMMANDS,
    pmem::commands::COMMANDS,
    storage::COMMANDS,
    nbd::COMMANDS,
    pci::COMMANDS,
    net::COMMANDS,
    cpu::COMMANDS,
];

/// How often the event loop reads the serial port when its receive
/// interrupt could not be routed.
const SERIAL_POLL_US: u64 = 10_000;
/// The shortest halt when a deadline is due but polling did no work (a
/// frame waiting for a free transmit buffer, say): without it the loop
/// would spin until the deadline moves.
const MIN_HALT_US: u64 = 200;

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    time::mark_entry();
    let boot = Boot::new(boot_info);
    serial::init();
    gdt::init();
    interrupts::init_idt();

    let uefi = boot.is_uefi();
    println!(
        "daxbox {} booting ({})",
        env!("CARGO_PKG_VERSION"),
        if uefi { "UEFI" } else { "BIOS" }
    );

    let mut steps = BootSteps::default();
    let heap_size = boot.init_memory();
    steps.mark("memory");
    print_memory_map(boot.memory_regions());

    let ramdisk = boot.ramdisk();
    let loaded = config::init(ramdisk);
    let config = &loaded.config;
    serial::init_logging(config::log_filter(config.log));
    match ramdisk {
        Some(bytes) => {
            let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            println!(
                "bootconfig: {} bytes, first line: {}",
                bytes.len(),
                alloc::string::String::from_utf8_lossy(first)
            );
        }
        None => println!("bootconfig: none"),
    }
    for warning in &loaded.warnings {
        log::warn!("{}", warning);
    }
    let info = memory::info();
    println!(
        "memory: {} usable RAM, heap {} at {}",
        human(info.usable),
        human(heap_size),
        info.heap
    );
    set_budgets(heap_size);

    steps.mark("boot config");
    boot.init_acpi();
    if let Some((address, gsi_base)) = acpi::ioapic_from_madt() {
        if gsi_base == 0 {
            interrupts::set_ioapic_base(address);
        }
    }
    if let Err(error) = interrupts::init_apic() {
        panic!("cannot map the APICs: {}", error);
    }
    serial::enable_receive_interrupt();
    let serial_irq = match interrupts::route_irq(
        4,
        1,
        interrupts::Trigger::EdgeHigh,
        serial::receive_interrupt,
    ) {
        Ok(()) => true,
        Err(error) => {
            println!(
                "serial: no receive interrupt ({}); input is polled every {} ms",
                error,
                SERIAL_POLL_US / 1000
            );
            false
        }
    };
    let khz = time::init();
    println!(
        "clock: TSC {}.{:03} MHz (calibrated against the PIT), one-shot timer",
        khz / 1000,
        khz % 1000,
    );
    steps.mark("clock");
    match rtc::init() {
        Some(now) => println!("clock: wall time {} (CMOS RTC, taken as UTC)", now),
        None => println!("clock: the CMOS RTC gave no plausible date; wall time unknown"),
    }

    // Storage discovery: ACPI NFIT, memory map, pmem= carve-outs.
    pmem::init(&pmem::BootFacts {
        regions: boot.memory_regions(),
        kernel: boot.kernel_image(),
    });
    steps.mark("pmem discovery");
    storage::init();
    steps.mark("storage");
    hotplug::init();
    steps.mark("hot-add");
    pci::init();
    steps.mark("pci");
    entropy::init();
    steps.mark("entropy");
    tls::init(config::get());
    steps.mark("tls");
    // The web pages answer first; the S3 routes take signed requests and
    // bucket paths (`GET /` without S3 credentials stays the dashboard).
    // HTTPS serves the same routes.
    let (s3_http, s3_https) = http::s3_routes();
    net::init(
        Chain::new(web::routes(), s3_http),
        storage::http_gate(),
        Chain::new(web::routes(), s3_https),
        storage::http_gate(),
    );
    steps.mark("network");
    nbd::start();
    interrupts::enable();

    let ready_us = time::since_entry_us();
    steps.mark("services");
    steps.print();
    println!(
        "daxbox: ready ({}.{} ms after kernel entry)",
        ready_us / 1000,
        ready_us % 1000 / 100
    );
    let mut shell = shell::Shell::new(
        command::Context {
            debug_commands: config.debug_commands,
        },
        COMMAND_TABLES,
    );
    // A deadline was due but the last pass did no work.
    let mut due_idle = false;
    // When a pass last served something (shell, hot-add, network).
    let mut last_busy_us = time::now_us();
    loop {
        cpu::pass();
        interrupts::take_work_pending();
        let mut busy = false;
        // The port is read only after its interrupt (a port read is a VM
        // exit), or on every pass when there is none.
        if serial::take_input_pending() || !serial_irq {
            busy |= shell.poll();
        }
        // A hot-add prints on its own: the prompt comes back after it.
        if hotplug::poll() {
            shell.redraw();
            busy = true;
        }
        let net = net::poll();
        busy |= net.did_work;
        if busy {
            due_idle = false;
            last_busy_us = time::now_us();
            continue;
        }
        let now = time::now_us();
        // Idle for IDLE_BEFORE_COMPACTION_US: one bounded idle-time compaction
        // step per pass (at most one 2 MiB chunk gathered;
        // daxbox_storage::compaction), then pass again; once it is quiet
        // the loop halts as before.
        let compact_at = storage::compaction_pending()
            .then_some(last_busy_us.saturating_add(IDLE_BEFORE_COMPACTION_US));
        if compact_at.is_some_and(|at| at <= now) && storage::compact_idle() {
            due_idle = false;
            continue;
        }
        let next = [
            net.next_poll_ms.map(|ms| ms.saturating_mul(1000)),
            hotplug::next_poll_us(),
            (!serial_irq).then_some(now + SERIAL_POLL_US),
            compact_at.filter(|&at| at > now),
        ]
        .into_iter()
        .flatten()
        .min();
        if next.is_some_and(|at| at <= now) {
            if !due_idle {
                // Due now: one more pass before halting.
                due_idle = true;
                continue;
            }
            interrupts::arm_timer(Some(now + MIN_HALT_US));
        } else {
            interrupts::arm_timer(next);
        }
        due_idle = false;
        interrupts::wait_for_interrupt();
    }
}

/// Where boot time goes: the TSC at the end of each step, printed once the
/// clock is calibrated (`boot: memory 12 ms, ...`).
#[derive(Default)]
struct BootSteps {
    steps: [(&'static str, u64); 16],
    count: usize,
}

impl BootSteps {
    fn mark(&mut self, name: &'static str) {
        if let Some(step) = self.steps.get_mut(self.count) {
            *step = (name, time::cycles());
            self.count += 1;
        }
    }

    fn print(&self) {
        let mut line = alloc::string::String::from("boot:");
        let mut last = time::entry_cycles();
        for (i, (name, at)) in self.steps[..self.count].iter().enumerate() {
            let us = time::cycles_to_ns(at.saturating_sub(last)) / 1000;
            let sep = if i == 0 { " " } else { ", " };
            line.push_str(&alloc::format!(
                "{sep}{name} {}.{} ms",
                us / 1000,
                us % 1000 / 100
            ));
            last = *at;
        }
        println!("{line}");
    }
}

fn print_memory_map(regions: &[bootloader_api::info::MemoryRegion]) {
    let mut usable = 0;
    for region in regions {
        let kind = match region.kind {
            MemoryRegionKind::Usable => {
                usable += region.end - region.start;
                "usable"
            }
            MemoryRegionKind::Bootloader => "bootloader",
            MemoryRegionKind::UnknownBios(12) => "E820 persistent memory (type 12)",
            MemoryRegionKind::UnknownUefi(14) => "UEFI persistent memory (type 14)",
            MemoryRegionKind::UnknownBios(_) => "reserved (BIOS)",
            MemoryRegionKind::UnknownUefi(_) => "reserved (UEFI)",
            _ => "other",
        };
        log::debug!(
            "  {:#014x}-{:#014x} {}",
            region.start,
            region.end.saturating_sub(1),
            kind
        );
    }
    println!(
        "memory map: {} regions, {} usable",
        regions.len(),
        human(usable)
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    interrupts::disable();
    match info.location() {
        Some(location) => serial::print_and_fail(format_args!(
            "KERNEL PANIC: {} at {}:{}\n",
            info.message(),
            location.file(),
            location.line()
        )),
        None => serial::print_and_fail(format_args!("KERNEL PANIC: {}\n", info.message())),
    }
}

/// Shares of the heap the client- and media-sized subsystems may hold
/// (numerator, denominator). They add up to 80%: the rest is for the
/// shell, the network stack, the frame table and the allocator's own
/// fragmentation, so a refused charge never starves them.
const BUDGET_SHARES: [(&daxbox_budget::Budget, u64, u64); 3] = [
    (&daxbox_budget::MOUNT, 1, 2),
    (&daxbox_budget::NBD, 1, 5),
    (&daxbox_budget::HTTP, 1, 10),
];

fn set_budgets(heap_size: u64) {
    let mut line = alloc::string::String::from("memory budgets:");
    for (budget, num, den) in BUDGET_SHARES {
        let bytes = heap_size / den * num;
        budget.set_limit(usize::try_from(bytes).unwrap_or(usize::MAX));
        line.push_str(&alloc::format!(" {} {}", budget.name(), human(bytes)));
    }
    println!("{line}");
}
