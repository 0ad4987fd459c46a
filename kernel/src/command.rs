//! What every shell command of this kernel gets, and where it writes.
//!
//! A leaf module: the modules that register commands import it, it imports
//! none of them, and the shell (`shell.rs`) only receives their tables from
//! `main.rs`, so no module imports a module that imports it back.

use core::fmt;
use daxbox_platform::serial;

use crate::print;

/// The context every command receives: the kernel's shared state lives in
/// module statics, so this only carries per-shell settings.
pub struct Context {
    /// Whether the test-only `debug` commands are enabled.
    pub debug_commands: bool,
}

/// A shell command of this kernel.
pub type Command = daxbox_shell::Command<Context>;

/// The serial console, as the shell's terminal and as a `fmt::Write` for
/// the libraries' command output.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        print!("{}", text);
        Ok(())
    }
}

impl daxbox_shell::Terminal for Console {
    fn write_bytes(&mut self, bytes: &[u8]) {
        serial::write_bytes(bytes);
    }

    fn write_text(&mut self, text: &str) {
        print!("{}", text);
    }
}
