//! The serial admin shell: console bytes go to `daxbox-shell`'s [`Shell`]
//! (line editing, dispatch, `help`), and the system commands live here.
//!
//! To add a command, add a [`Command`] entry to a module's `COMMANDS` table
//! and list that table in `main.rs`'s `COMMAND_TABLES`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use daxbox_shell::Tables;
use daxbox_syntax::human;

use crate::command::{Command, Console, Context};
use crate::{config, memory, pmem, power, println, serial, storage, time};

/// The system commands.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "version",
        usage: "",
        help: "show the daxbox version",
        run: version,
    },
    Command {
        name: "uptime",
        usage: "",
        help: "time since boot",
        run: uptime,
    },
    Command {
        name: "mem",
        usage: "[stress]",
        help: "RAM and heap usage; `stress` takes every free frame and checks none is storage",
        run: mem,
    },
    Command {
        name: "bootconfig",
        usage: "",
        help: "show the boot configuration and its warnings",
        run: bootconfig,
    },
    Command {
        name: "poweroff",
        usage: "",
        help: "stop the appliance",
        run: poweroff,
    },
    Command {
        name: "debug",
        usage: "panic|fault",
        help: "test-only fault triggers (boot config debug_commands=on)",
        run: debug,
    },
];

/// The shell on the serial console.
pub struct Shell {
    inner: daxbox_shell::Shell<Context>,
}

impl Shell {
    /// A shell running the commands of `tables`; prints the first prompt.
    pub fn new(context: Context, tables: Tables<Context>) -> Self {
        let inner = daxbox_shell::Shell::new(context, tables);
        inner.prompt(&mut Console);
        Self { inner }
    }

    /// The prompt and the line typed so far again, after the kernel printed
    /// an event of its own (NVDIMM hot-add).
    pub fn redraw(&self) {
        self.inner.redraw(&mut Console);
    }

    /// Handles every byte waiting on the console. Returns true when there
    /// was input.
    pub fn poll(&mut self) -> bool {
        let mut any = false;
        while let Some(byte) = serial::try_read_byte() {
            any = true;
            self.inner.feed(byte, &mut Console);
        }
        any
    }
}

fn no_args(args: &[&str]) -> Result<(), String> {
    if args.is_empty() {
        Ok(())
    } else {
        Err("this command takes no arguments".to_string())
    }
}

fn version(_: &mut Context, args: &[&str]) -> Result<(), String> {
    no_args(args)?;
    println!("daxbox {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}

fn uptime(_: &mut Context, args: &[&str]) -> Result<(), String> {
    no_args(args)?;
    let ms = time::now_ms();
    println!("up {}.{:03} s", ms / 1000, ms % 1000);
    Ok(())
}

fn mem(_: &mut Context, args: &[&str]) -> Result<(), String> {
    match args {
        [] => {
            let info = memory::info();
            println!("usable RAM:     {}", human(info.usable));
            println!(
                "heap:           {} at {}",
                human(info.heap.len()),
                info.heap
            );
            println!("heap used:      {}", human(info.heap_used as u64));
            println!("heap free:      {}", human(info.heap_free as u64));
            println!("frames in use:  {}", human(info.frames_allocated));
            println!("frames free:    {}", human(info.frames_free));
            for b in daxbox_budget::all().map(|b| b.stats()) {
                println!(
                    "budget {:<7} {} of {} in use, peak {}, {} refused",
                    b.name,
                    human(b.used as u64),
                    human(b.limit as u64),
                    human(b.peak as u64),
                    b.refused
                );
            }
            Ok(())
        }
        ["stress"] => {
            let storage = pmem::storage_ranges();
            let (count, lowest, highest, bad) = memory::stress_frames(&storage);
            // Also exercise the heap with a burst of allocations.
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for size in (0..2000).map(|i| 64 + (i * 977) % 65536) {
                blocks.push(alloc::vec![0xa5; size]);
            }
            let heap_ok = blocks.iter().all(|b| memory::in_heap(b.as_ptr() as u64));
            drop(blocks);
            println!(
                "mem stress: {} frames ({}) taken, {:#x}..{:#x}, {} inside storage ranges; heap blocks inside heap: {}",
                count,
                human(count * 4096),
                lowest,
                highest,
                bad,
                if heap_ok { "yes" } else { "NO" }
            );
            if bad == 0 && heap_ok {
                Ok(())
            } else {
                Err("storage frames reached the volatile allocator".to_string())
            }
        }
        _ => Err("usage: mem [stress]".to_string()),
    }
}

fn bootconfig(_: &mut Context, args: &[&str]) -> Result<(), String> {
    no_args(args)?;
    config::show();
    Ok(())
}

fn poweroff(_: &mut Context, args: &[&str]) -> Result<(), String> {
    no_args(args)?;
    // Everything durable and every filesystem marked clean first.
    storage::shutdown();
    pmem::shutdown();
    println!("daxbox: powering off");
    power::exit(power::EXIT_SUCCESS)
}

fn debug(context: &mut Context, args: &[&str]) -> Result<(), String> {
    if !context.debug_commands {
        return Err("debug commands are disabled (boot config: debug_commands=on)".to_string());
    }
    match args {
        ["panic"] => panic!("debug panic requested from the shell"),
        ["fault"] => {
            // A canonical, unmapped address, so the CPU raises a page fault.
            let value = daxbox_platform::debug::fault_unmapped_read();
            println!("unexpectedly read {:#x}", value);
            Ok(())
        }
        _ => Err("usage: debug panic|fault".to_string()),
    }
}
