//! The serial console (COM1, a 16550 UART at port 0x3f8): kernel output,
//! the `log` backend, and input bytes for the admin shell.
//!
//! Output goes through one spin lock. The panic and exception paths use
//! [`print_and_fail`] (and, inside the platform, `force_print`), which
//! steal the lock so a panic while printing still reaches the console.
//!
//! Invariant: only this module drives COM1 (ports 0x3f8..0x400); the lock
//! is forced open only with interrupts off on the way to stopping the
//! machine, when whoever held it can never run again.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

/// The COM1 port, `None` until [`init`] ran.
static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

struct Console {
    uart: Uart16550<PioBackend>,
}

impl Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            // Terminals want CR LF; the kernel writes plain LF.
            if byte == b'\n' {
                self.uart.send_bytes_exact(b"\r");
            }
            self.uart.send_bytes_exact(&[byte]);
        }
        Ok(())
    }
}

/// Sets COM1 up (115200 8N1, FIFOs on). Call once, first thing at boot.
pub fn init() {
    // SAFETY: 0x3f8 is COM1 on every PC-compatible machine (and QEMU's
    // `-serial` device); nothing else in the kernel touches these ports.
    let uart = unsafe { Uart16550::new_port(0x3f8) };
    if let Ok(mut uart) = uart {
        // A missing UART cannot report anything anyway: carry on silently.
        let _ = uart.init(Config::default());
        *CONSOLE.lock() = Some(Console { uart });
    }
}

/// Writes formatted text to the console.
pub fn print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(console) = CONSOLE.lock().as_mut() {
            let _ = console.write_fmt(args);
        }
    });
}

/// Writes raw bytes (shell echo) to the console.
pub fn write_bytes(bytes: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(console) = CONSOLE.lock().as_mut() {
            console.uart.send_bytes_exact(bytes);
        }
    });
}

/// Set by the receive interrupt (and at boot, so that bytes that arrived
/// before the interrupt was routed are read too): the console has input.
static INPUT_PENDING: AtomicBool = AtomicBool::new(true);
/// Receive interrupts taken.
static RECEIVE_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// The receive interrupt's handler (for `interrupts::route_irq`, IRQ 4):
/// notes that input is waiting; the event loop reads it.
pub fn receive_interrupt() {
    RECEIVE_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    INPUT_PENDING.store(true, Ordering::Release);
}

/// Takes the "input is waiting" flag: true once after each receive
/// interrupt. Reading until [`try_read_byte`] gives `None` lets the UART
/// drop its interrupt line, so the next byte raises a new edge.
pub fn take_input_pending() -> bool {
    INPUT_PENDING.swap(false, Ordering::AcqRel)
}

/// Receive interrupts taken since boot.
pub fn receive_interrupts() -> u64 {
    RECEIVE_INTERRUPTS.load(Ordering::Relaxed)
}

/// Asks the UART to interrupt when a byte arrives (IRQ 4), so typing wakes
/// the halted event loop, and the loop reads the port only then.
pub fn enable_receive_interrupt() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(console) = CONSOLE.lock().as_mut() {
            console
                .uart
                .enable_interrupts(uart_16550::spec::registers::IER::DATA_READY);
        }
    });
}

/// Returns the next received byte, if any.
pub fn try_read_byte() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        CONSOLE
            .lock()
            .as_mut()
            .and_then(|console| console.uart.try_receive_byte().ok())
    })
}

/// Prints even when the console lock is held (fault paths that end in a
/// panic, and so in [`print_and_fail`]).
pub(crate) fn force_print(args: fmt::Arguments) {
    if CONSOLE.is_locked() {
        // SAFETY: only reached on the way to halting the machine; whoever
        // held the lock is interrupted for good, so no one else uses the
        // console concurrently from here on.
        unsafe { CONSOLE.force_unlock() };
    }
    print(args);
}

/// The panic path: with interrupts off, prints even when the console lock
/// is held, then stops the machine with [`crate::power::EXIT_FAILURE`].
pub fn print_and_fail(args: fmt::Arguments) -> ! {
    x86_64::instructions::interrupts::disable();
    force_print(args);
    crate::power::exit(crate::power::EXIT_FAILURE)
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::print(format_args!($($arg)*)));
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::print(format_args!("{}\n", format_args!($($arg)*))));
}

/// The `log` backend: `[LEVEL target] message` lines on the console.
struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "ERROR",
                log::Level::Warn => "WARN ",
                log::Level::Info => "INFO ",
                log::Level::Debug => "DEBUG",
                log::Level::Trace => "TRACE",
            };
            println!("[{} {}] {}", level, record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// Installs the console as the `log` backend at `level`.
pub fn init_logging(level: log::LevelFilter) {
    // A second call only fails with "already set": the level still changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
