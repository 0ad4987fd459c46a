//! The serial admin shell: feeds console bytes to the line editor and runs
//! commands from the tables that kernel modules export.
//!
//! To add a command, add a [`Command`] entry to a module's `COMMANDS` table
//! and list that table in [`TABLES`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use daxbox_shell::{find_command, split_words, Event, LineEditor};

use crate::{config, memory, power, print, println, serial, time};

/// What every command gets: the kernel's shared state lives in module
/// statics, so this only carries per-shell settings.
pub struct Context {
    /// Whether the test-only `debug` commands are enabled.
    pub debug_commands: bool,
}

/// A shell command of this kernel.
pub type Command = daxbox_shell::Command<Context>;

/// The prompt, printed without a newline.
pub const PROMPT: &str = "daxbox> ";

/// All command tables, searched in order.
const TABLES: &[&[Command]] = &[
    BASIC,
    crate::pmem::COMMANDS,
    crate::storage::COMMANDS,
    crate::nbd::COMMANDS,
    crate::pci::COMMANDS,
    crate::net::COMMANDS,
];

const BASIC: &[Command] = &[
    Command {
        name: "help",
        usage: "",
        help: "list commands",
        run: help,
    },
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

/// The shell's state: the line being edited.
pub struct Shell {
    editor: LineEditor,
    context: Context,
}

impl Shell {
    /// A shell with the given settings; prints the first prompt.
    pub fn new(context: Context) -> Self {
        print!("{}", PROMPT);
        Self {
            editor: LineEditor::new(),
            context,
        }
    }

    /// Handles every byte waiting on the console. Returns true when there
    /// was input.
    pub fn poll(&mut self) -> bool {
        let mut any = false;
        while let Some(byte) = serial::try_read_byte() {
            any = true;
            match self.editor.feed(byte) {
                Event::None => {}
                Event::Echo(bytes) => serial::write_bytes(bytes),
                Event::EchoByte(byte) => serial::write_bytes(&[byte]),
                Event::Line(line) => {
                    println!();
                    self.run_line(&line);
                    print!("{}", PROMPT);
                }
                Event::TooLong => {
                    println!();
                    println!(
                        "error: line too long (at most {} bytes)",
                        daxbox_shell::MAX_LINE
                    );
                    print!("{}", PROMPT);
                }
                Event::NotText => {
                    println!();
                    println!("error: input is not UTF-8 text");
                    print!("{}", PROMPT);
                }
            }
        }
        any
    }

    fn run_line(&mut self, line: &str) {
        let words = split_words(line);
        let Some((&name, args)) = words.split_first() else {
            return;
        };
        match find_command(TABLES, name) {
            Some(command) => {
                if let Err(message) = (command.run)(&mut self.context, args) {
                    println!("error: {}", message);
                }
            }
            None => println!("error: unknown command '{}' (try 'help')", name),
        }
    }
}

/// Formats a byte count with a binary unit: exact values as integers
/// (`64 MiB`), others with one decimal (`504.7 MiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        alloc::format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        alloc::format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

fn no_args(args: &[&str]) -> Result<(), String> {
    if args.is_empty() {
        Ok(())
    } else {
        Err("this command takes no arguments".to_string())
    }
}

fn help(_: &mut Context, _: &[&str]) -> Result<(), String> {
    for command in TABLES.iter().flat_map(|t| t.iter()) {
        let synopsis = if command.usage.is_empty() {
            command.name.to_string()
        } else {
            alloc::format!("{} {}", command.name, command.usage)
        };
        println!("  {:<28} {}", synopsis, command.help);
    }
    Ok(())
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
            Ok(())
        }
        ["stress"] => {
            let storage = crate::storage_ranges();
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
    crate::shutdown();
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
