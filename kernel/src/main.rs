//! daxbox: a bare-metal unikernel that turns persistent memory into
//! network storage.
//!
//! Boot order (each step needs the ones before it):
//! serial console → GDT/IDT → RAM frames, heap and page tables → boot
//! config → APIC + calibrated clock and timer → storage discovery → network
//! → admin shell and the event loop.
//!
//! The event loop polls every source of work (console, network) until none
//! has anything to do, then halts until the next interrupt (the 100 Hz
//! timer or a device), so an idle appliance leaves the host CPU alone.
//!
//! Everything that touches the hardware is `daxbox-platform`, reached
//! through safe handles; this crate is safe Rust only.
#![forbid(unsafe_code)]
#![no_std]
#![no_main]

extern crate alloc;

mod command;
mod config;
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
];

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
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

    let heap_size = boot.init_memory();
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
    if let Err(error) = interrupts::route_irq(4, 1, interrupts::Trigger::EdgeHigh, || {}) {
        println!("serial: no receive interrupt ({}); input is polled", error);
    }
    let khz = time::init();
    println!(
        "clock: TSC {}.{:03} MHz (calibrated against the PIT), timer {} Hz",
        khz / 1000,
        khz % 1000,
        interrupts::TIMER_HZ
    );
    match rtc::init() {
        Some(now) => println!("clock: wall time {} (CMOS RTC, taken as UTC)", now),
        None => println!("clock: the CMOS RTC gave no plausible date; wall time unknown"),
    }

    // Storage discovery: ACPI NFIT, memory map, pmem= carve-outs.
    pmem::init(&pmem::BootFacts {
        regions: boot.memory_regions(),
        kernel: boot.kernel_image(),
    });
    storage::init();
    hotplug::init();
    pci::init();
    tls::init(config::get());
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
    nbd::start();
    interrupts::enable();

    println!("daxbox: ready");
    let mut shell = shell::Shell::new(
        command::Context {
            debug_commands: config.debug_commands,
        },
        COMMAND_TABLES,
    );
    loop {
        interrupts::take_work_pending();
        let mut busy = shell.poll();
        // A hot-add prints on its own: the prompt comes back after it.
        if hotplug::poll() {
            shell.redraw();
            busy = true;
        }
        busy |= poll_services();
        if !busy {
            interrupts::wait_for_interrupt();
        }
    }
}

/// Polls the network services; true when any did work.
fn poll_services() -> bool {
    net::poll()
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
