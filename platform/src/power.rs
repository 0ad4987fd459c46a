//! Leaving the machine: QEMU's isa-debug-exit device for tests and
//! `poweroff`, halting forever on real hardware.
//!
//! Invariant: the only port written is 0xf4 (isa-debug-exit), which stops
//! QEMU and is ignored elsewhere.

use x86_64::instructions::port::Port;

/// Exit code for a clean power-off: QEMU exits with status (0x10 << 1) | 1 = 33.
pub const EXIT_SUCCESS: u32 = 0x10;
/// Exit code after a panic or fatal exception: QEMU exits with status 35.
pub const EXIT_FAILURE: u32 = 0x11;

/// Asks QEMU to exit with `code`, then halts (real hardware has no
/// isa-debug-exit device and simply stops here).
pub fn exit(code: u32) -> ! {
    // SAFETY: port 0xf4 is the isa-debug-exit device the test and run
    // configurations attach; on machines without it the write is ignored.
    unsafe { Port::new(0xf4).write(code) };
    halt_forever()
}

/// Halts with interrupts off, forever.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
