//! The boot configuration: the text file the image builder passes as the
//! bootloader ramdisk. Parsed once at boot; read-only afterwards.

use alloc::string::String;
use alloc::vec::Vec;
use spin::Once;

use crate::println;

/// The parsed settings the kernel uses.
pub struct BootConfig {
    /// Raw size of the file, 0 when there was none.
    pub size: usize,
    /// Whether a file was given at all.
    pub present: bool,
    /// `debug_commands=on`.
    pub debug_commands: bool,
    /// `log=` level.
    pub log_level: log::LevelFilter,
    /// Warnings produced while parsing.
    pub warnings: Vec<String>,
}

static CONFIG: Once<BootConfig> = Once::new();

/// Parses the ramdisk bytes (or their absence) once.
pub fn init(bytes: Option<&[u8]>) -> &'static BootConfig {
    CONFIG.call_once(|| parse(bytes))
}

/// The parsed configuration (after [`init`]).
pub fn get() -> &'static BootConfig {
    CONFIG.call_once(|| parse(None))
}

fn parse(bytes: Option<&[u8]>) -> BootConfig {
    let mut config = BootConfig {
        size: bytes.map_or(0, |b| b.len()),
        present: bytes.is_some(),
        debug_commands: false,
        log_level: log::LevelFilter::Info,
        warnings: Vec::new(),
    };
    let text = String::from_utf8_lossy(bytes.unwrap_or_default());
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some(("debug_commands", "on")) => config.debug_commands = true,
            Some(("debug_commands", "off")) => config.debug_commands = false,
            Some(("log", level)) => match level.parse() {
                Ok(level) => config.log_level = level,
                Err(_) => config.warnings.push(alloc::format!(
                    "bootconfig line {}: bad value for log: '{}' (using info)",
                    number + 1,
                    level
                )),
            },
            _ => {}
        }
    }
    config
}

/// Prints the configuration summary (shell `bootconfig`).
pub fn show() {
    let config = get();
    if config.present {
        println!("bootconfig: {} bytes", config.size);
    } else {
        println!("bootconfig: none");
    }
    println!(
        "debug_commands={}",
        if config.debug_commands { "on" } else { "off" }
    );
    println!("log={}", config.log_level);
    for warning in &config.warnings {
        println!("warning: {}", warning);
    }
}
