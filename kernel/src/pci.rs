//! PCI for the kernel: the hardware half of `daxbox-pci`.
//!
//! Configuration space is reached through ECAM when the ACPI MCFG describes
//! a window for segment 0 (q35), otherwise through the legacy 0xCF8/0xCFC
//! ports (which also work on q35). Enumeration runs once at boot; `lspci`
//! shows the result. The port and MMIO access itself is
//! `daxbox_platform::pci`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use daxbox_pci::{
    capabilities, enumerate, probe_bars, Bar, ConfigAccess, Ecam, Function, LegacyPorts,
};
use daxbox_platform::memory::PhysRange;
use daxbox_platform::pci::{ConfigPorts, EcamMmio};
use spin::Once;

use crate::command::{Command, Context};
use crate::{acpi, println};

/// The kernel's configuration access: ECAM or legacy ports.
#[derive(Clone, Debug)]
pub enum Access {
    /// Port I/O 0xCF8/0xCFC.
    Legacy(LegacyPorts<ConfigPorts>),
    /// Memory-mapped ECAM.
    Ecam(Ecam<EcamMmio>),
}

impl ConfigAccess for Access {
    fn read_u32(&self, bdf: daxbox_pci::Bdf, offset: u16) -> u32 {
        match self {
            Access::Legacy(a) => a.read_u32(bdf, offset),
            Access::Ecam(a) => a.read_u32(bdf, offset),
        }
    }

    fn write_u32(&mut self, bdf: daxbox_pci::Bdf, offset: u16, value: u32) {
        match self {
            Access::Legacy(a) => a.write_u32(bdf, offset, value),
            Access::Ecam(a) => a.write_u32(bdf, offset, value),
        }
    }
}

struct Bus {
    access: Access,
    mechanism: String,
    functions: Vec<Function>,
    /// BARs of each function, probed once at boot before any driver runs
    /// (sizing briefly disables decoding, which a live device must not see).
    bars: Vec<[Option<Bar>; 6]>,
}

static BUS: Once<Bus> = Once::new();

/// Picks ECAM from the MCFG when it maps, else port I/O.
fn choose_access() -> (Access, String) {
    let legacy = || Access::Legacy(LegacyPorts::new(ConfigPorts));
    let table = match acpi::find_table(b"MCFG") {
        Ok(table) => table,
        Err(error) => return (legacy(), format!("port I/O 0xcf8 (no MCFG: {error})")),
    };
    let entries = match daxbox_pci::parse_mcfg(&table) {
        Ok(entries) => entries,
        Err(error) => return (legacy(), format!("port I/O 0xcf8 ({error})")),
    };
    let Some(entry) = entries.iter().find(|e| e.segment == 0) else {
        return (
            legacy(),
            String::from("port I/O 0xcf8 (MCFG has no segment 0)"),
        );
    };
    let Some((start, len)) = entry.mapped_range() else {
        return (
            legacy(),
            String::from("port I/O 0xcf8 (MCFG window overflows)"),
        );
    };
    let window = PhysRange {
        start,
        end: start.saturating_add(len),
    };
    match EcamMmio::map(window) {
        Ok(mmio) => match usize::try_from(entry.base) {
            Ok(base) => (
                Access::Ecam(Ecam::new(mmio, base, entry.start_bus, entry.end_bus)),
                format!(
                    "ECAM at {:#x} buses {:02x}-{:02x}",
                    entry.base, entry.start_bus, entry.end_bus
                ),
            ),
            Err(_) => (
                legacy(),
                String::from("port I/O 0xcf8 (ECAM base too high)"),
            ),
        },
        Err(error) => (
            legacy(),
            format!("port I/O 0xcf8 (cannot map ECAM: {error})"),
        ),
    }
}

/// Chooses the access mechanism and enumerates every bus once.
pub fn init() {
    BUS.call_once(|| {
        let (mut access, mechanism) = choose_access();
        let functions = enumerate(&access);
        let bars = functions
            .iter()
            .map(|f| probe_bars(&mut access, f.bdf))
            .collect();
        println!("pci: {} functions via {}", functions.len(), mechanism);
        Bus {
            access,
            mechanism,
            functions,
            bars,
        }
    });
}

/// A configuration accessor (after [`init`]).
pub fn access() -> Access {
    match BUS.get() {
        Some(bus) => bus.access.clone(),
        None => Access::Legacy(LegacyPorts::new(ConfigPorts)),
    }
}

/// Every function found at boot.
pub fn functions() -> &'static [Function] {
    BUS.get().map(|b| b.functions.as_slice()).unwrap_or(&[])
}

/// The BARs of `bdf` as probed at boot.
pub fn bars(bdf: daxbox_pci::Bdf) -> Option<[Option<Bar>; 6]> {
    let bus = BUS.get()?;
    let index = bus.functions.iter().position(|f| f.bdf == bdf)?;
    bus.bars.get(index).copied()
}

/// Shell commands of this module.
pub const COMMANDS: &[Command] = &[Command {
    name: "lspci",
    usage: "[-v]",
    help: "list PCI functions (-v: with BARs and capabilities)",
    run: lspci,
}];

fn lspci(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let verbose = match args {
        [] => false,
        ["-v"] => true,
        _ => return Err(String::from("usage: lspci [-v]")),
    };
    let Some(bus) = BUS.get() else {
        return Err(String::from("PCI not initialised"));
    };
    if verbose {
        println!("config access: {}", bus.mechanism);
    }
    for (function, bars) in bus.functions.iter().zip(&bus.bars) {
        println!("{}", function);
        if verbose {
            for (index, bar) in bars.iter().enumerate() {
                match bar {
                    Some(Bar::Memory {
                        address,
                        size,
                        prefetchable,
                        wide,
                    }) => println!(
                        "    bar{} mem{} {:#x} size {}{}",
                        index,
                        if *wide { "64" } else { "32" },
                        address,
                        daxbox_syntax::human(*size),
                        if *prefetchable { " prefetchable" } else { "" }
                    ),
                    Some(Bar::Io { port, size }) => {
                        println!("    bar{} io {:#x} size {}", index, port, size)
                    }
                    None => {}
                }
            }
            let caps: Vec<String> = capabilities(&bus.access, function.bdf)
                .map(|c| format!("{:#04x}@{:#04x}", c.id, c.offset))
                .collect();
            if !caps.is_empty() {
                println!("    capabilities: {}", caps.join(" "));
            }
        }
    }
    Ok(())
}
