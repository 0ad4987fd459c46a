//! The storage set shared by the NBD service and the admin commands, and
//! the admin commands themselves (the kernel shell's storage commands, read
//! from stdin).

use std::cell::RefCell;
use std::fmt::Write;
use std::rc::Rc;

use daxbox_shell::{find_command, Command};
use daxbox_storage::{commands, SharedStorage, Storage};

use crate::{HostEnvironment, ImageMemory};

/// Everything the server holds: the storage set and its environment.
pub struct State {
    /// Volumes, read-only names, NBD connections.
    pub storage: Storage<ImageMemory>,
    /// The devices not handed over, clock, UUIDs.
    pub env: HostEnvironment,
}

/// One thread serves both the network and the admin commands, so a
/// `RefCell` is the lock.
#[derive(Clone)]
pub struct Shared(pub Rc<RefCell<State>>);

impl SharedStorage<ImageMemory> for Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Storage<ImageMemory>) -> R) -> R {
        f(&mut self.0.borrow_mut().storage)
    }
}

/// Runs admin command lines: the kernel's storage command tables, run
/// with this as their shell context.
pub struct Admin {
    /// The server state.
    pub shared: Shared,
    /// The NBD port (shown by `nbd`).
    pub port: u16,
    /// Output of the command running.
    output: String,
}

/// What the server does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep serving.
    Continue,
    /// `poweroff`: unmount everything and exit.
    PowerOff,
}

impl commands::ShellHost for Admin {
    type Memory = ImageMemory;
    type Env = HostEnvironment;

    fn with_storage<R>(
        &mut self,
        f: impl FnOnce(&mut Storage<ImageMemory>, &mut HostEnvironment, &mut dyn Write) -> R,
    ) -> R {
        let state = &mut *self.shared.0.borrow_mut();
        f(&mut state.storage, &mut state.env, &mut self.output)
    }

    fn nbd_port(&self) -> u16 {
        self.port
    }
}

impl Admin {
    /// Admin commands over `shared`.
    pub fn new(shared: Shared, port: u16) -> Self {
        Self {
            shared,
            port,
            output: String::new(),
        }
    }

    /// Runs one line; returns its output and then a status line, `ok` or
    /// `error: MESSAGE` (the kernel shell prints only the error line; the
    /// `ok` lets a script reading stdout know the command finished).
    pub fn run_line(&mut self, line: &str) -> (String, Outcome) {
        // The kernel shell's word grammar: quotes and backslash escapes.
        let owned = match daxbox_shell::split_words(line) {
            Ok(words) => words,
            Err(error) => return (format!("error: {error}\n"), Outcome::Continue),
        };
        let words: Vec<&str> = owned.iter().map(String::as_str).collect();
        let Some((&name, args)) = words.split_first() else {
            return (String::new(), Outcome::Continue);
        };
        let storage = commands::table::<Admin>();
        let nbd = commands::nbd_table::<Admin>();
        let tables: [&[Command<Admin>]; 2] = [&storage, &nbd];
        let mut outcome = Outcome::Continue;
        let result = match name {
            "help" => {
                // The kernel shell's help, plus the host server's own
                // `poweroff`.
                self.output.push_str(&daxbox_shell::help_text(&tables));
                let _ = writeln!(
                    self.output,
                    "  {:<28} unmount everything and exit",
                    "poweroff"
                );
                Ok(())
            }
            "poweroff" => {
                self.shared.0.borrow_mut().storage.shutdown();
                self.output.push_str("daxbox-serve: powering off\n");
                outcome = Outcome::PowerOff;
                Ok(())
            }
            _ => match find_command(&tables, name) {
                Some(command) => (command.run)(self, args),
                None => Err(format!("unknown command '{name}' (try 'help')")),
            },
        };
        let mut output = std::mem::take(&mut self.output);
        match result {
            Ok(()) => output.push_str("ok\n"),
            Err(message) => {
                let _ = writeln!(output, "error: {message}");
            }
        }
        (output, outcome)
    }
}
