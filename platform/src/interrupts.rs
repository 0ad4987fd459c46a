//! Interrupt descriptor table, CPU exception reports, the local APIC timer
//! and I/O APIC routing for device interrupts.
//!
//! Vectors: 0–31 CPU exceptions; 32 the local APIC timer (one-shot, armed
//! by the event loop for its next deadline: no periodic tick); 48–63 device
//! interrupts routed through the I/O APIC (see [`route_irq`]); 0xff the
//! APIC spurious vector. The legacy 8259 PICs are remapped to 0x20–0x2f
//! and fully masked so they can never deliver on an exception vector.
//!
//! Invariant: the double-fault handler alone uses IST 0 (the stack
//! [`crate::gdt`] sets aside); the PICs are reached only through their
//! fixed ports, the APICs only through [`MmioRegion`]s.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{LazyLock, Mutex, Once};
use x86_64::instructions::port::Port;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use crate::memory::{MapError, PhysRange};
use crate::mmio::{self, MmioRegion};
use crate::{gdt, println, serial, PhysAddr};

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 32;
/// First vector handed out for device interrupts.
pub const FIRST_DEVICE_VECTOR: u8 = 48;
/// Number of device interrupt vectors.
pub const DEVICE_VECTORS: usize = 16;
const SPURIOUS_VECTOR: u8 = 0xff;

/// Timer interrupts taken (each is a deadline the event loop armed).
static TIMER_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Device interrupts taken, all vectors.
static DEVICE_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Times [`wait_for_interrupt`] halted the CPU (each ended by a wake-up).
static HALTS: AtomicU64 = AtomicU64::new(0);
/// TSC cycles spent halted (from before `hlt` to after it).
static HALTED_CYCLES: AtomicU64 = AtomicU64::new(0);
/// APIC timer counts (divide-by-16) per millisecond, from calibration.
static TIMER_COUNTS_PER_MS: AtomicU64 = AtomicU64::new(0);
/// Set by every interrupt: the event loop has something to look at.
static WORK_PENDING: AtomicBool = AtomicBool::new(false);

/// Device interrupt handlers by vector index (vector - FIRST_DEVICE_VECTOR).
type HandlerTable = [Option<fn()>; DEVICE_VECTORS];
static DEVICE_HANDLERS: Mutex<HandlerTable> = Mutex::new([None; DEVICE_VECTORS]);

macro_rules! device_stubs {
    ($($index:literal),*) => {
        [$({
            extern "x86-interrupt" fn stub(_frame: InterruptStackFrame) {
                device_interrupt($index);
            }
            stub as extern "x86-interrupt" fn(InterruptStackFrame)
        }),*]
    };
}

static IDT: LazyLock<InterruptDescriptorTable> = LazyLock::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.general_protection_fault
        .set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.stack_segment_fault.set_handler_fn(stack_segment);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.machine_check.set_handler_fn(machine_check);
    // SAFETY: the IST index names the stack set up in gdt.rs for exactly
    // this purpose, and it is not used by any other handler.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX);
    }
    idt[TIMER_VECTOR].set_handler_fn(timer);
    idt[SPURIOUS_VECTOR].set_handler_fn(spurious);
    let stubs: [extern "x86-interrupt" fn(InterruptStackFrame); DEVICE_VECTORS] =
        device_stubs!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (index, stub) in stubs.into_iter().enumerate() {
        idt[FIRST_DEVICE_VECTOR + index as u8].set_handler_fn(stub);
    }
    idt
});

/// Loads the IDT. Exceptions are reported from here on.
pub fn init_idt() {
    IDT.load();
}

fn fatal(what: &str, frame: &InterruptStackFrame, detail: core::fmt::Arguments) -> ! {
    serial::force_print(format_args!(
        "EXCEPTION: {} at rip {:#x} {}\n  rsp {:#x} cs {:#x} ss {:#x} rflags {:#x}\n",
        what,
        frame.instruction_pointer.as_u64(),
        detail,
        frame.stack_pointer.as_u64(),
        frame.code_segment.0,
        frame.stack_segment.0,
        frame.cpu_flags.bits(),
    ));
    panic!("unrecoverable CPU exception: {}", what);
}

extern "x86-interrupt" fn divide_error(frame: InterruptStackFrame) {
    fatal("DIVIDE ERROR", &frame, format_args!(""));
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    println!("breakpoint at {:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn invalid_opcode(frame: InterruptStackFrame) {
    fatal("INVALID OPCODE", &frame, format_args!(""));
}

extern "x86-interrupt" fn general_protection(frame: InterruptStackFrame, code: u64) {
    fatal(
        "GENERAL PROTECTION FAULT",
        &frame,
        format_args!("error code {:#x}", code),
    );
}

extern "x86-interrupt" fn stack_segment(frame: InterruptStackFrame, code: u64) {
    fatal(
        "STACK SEGMENT FAULT",
        &frame,
        format_args!("error code {:#x}", code),
    );
}

extern "x86-interrupt" fn segment_not_present(frame: InterruptStackFrame, code: u64) {
    fatal(
        "SEGMENT NOT PRESENT",
        &frame,
        format_args!("error code {:#x}", code),
    );
}

extern "x86-interrupt" fn alignment_check(frame: InterruptStackFrame, code: u64) {
    fatal(
        "ALIGNMENT CHECK",
        &frame,
        format_args!("error code {:#x}", code),
    );
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal("MACHINE CHECK", &frame, format_args!(""));
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let address = Cr2::read_raw();
    fatal(
        "PAGE FAULT",
        &frame,
        format_args!("accessing {:#x} ({:?})", address, code),
    );
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, _code: u64) -> ! {
    fatal("DOUBLE FAULT", &frame, format_args!(""));
}

extern "x86-interrupt" fn timer(_frame: InterruptStackFrame) {
    TIMER_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    ARMED_AT_US.store(u64::MAX, Ordering::Relaxed);
    WORK_PENDING.store(true, Ordering::Release);
    lapic_eoi();
}

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {
    // Spurious interrupts need no EOI (Intel SDM vol. 3, 10.9).
}

fn device_interrupt(index: usize) {
    DEVICE_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    WORK_PENDING.store(true, Ordering::Release);
    let handler = DEVICE_HANDLERS.lock()[index];
    if let Some(handler) = handler {
        handler();
    }
    lapic_eoi();
}

/// Takes the "an interrupt happened" flag.
pub fn take_work_pending() -> bool {
    WORK_PENDING.swap(false, Ordering::AcqRel)
}

/// Waits for the next interrupt unless one arrived since the flag was last
/// taken. Interrupts are disabled around the check so that a wake-up
/// between the check and `hlt` is not lost (`sti; hlt` is atomic). The
/// time halted is counted (TSC before and after, see [`stats`]).
pub fn wait_for_interrupt() {
    x86_64::instructions::interrupts::disable();
    if WORK_PENDING.load(Ordering::Acquire) {
        x86_64::instructions::interrupts::enable();
    } else {
        let start = crate::tsc::cycles();
        x86_64::instructions::interrupts::enable_and_hlt();
        let halted = crate::tsc::cycles().wrapping_sub(start);
        HALTS.fetch_add(1, Ordering::Relaxed);
        HALTED_CYCLES.fetch_add(halted, Ordering::Relaxed);
    }
}

/// What the CPU did since boot: interrupts taken, halts, time halted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Local APIC timer interrupts (armed deadlines that expired).
    pub timer_interrupts: u64,
    /// Device interrupts (NIC, serial), all vectors.
    pub device_interrupts: u64,
    /// Halts, each ended by a wake-up.
    pub halts: u64,
    /// Nanoseconds halted.
    pub halted_ns: u64,
}

/// The counters of [`CpuStats`].
pub fn stats() -> CpuStats {
    CpuStats {
        timer_interrupts: TIMER_INTERRUPTS.load(Ordering::Relaxed),
        device_interrupts: DEVICE_INTERRUPTS.load(Ordering::Relaxed),
        halts: HALTS.load(Ordering::Relaxed),
        halted_ns: crate::tsc::cycles_to_ns(HALTED_CYCLES.load(Ordering::Relaxed)),
    }
}

// ---------------------------------------------------------------------------
// Legacy PIC, local APIC, I/O APIC.

/// The local APIC registers (IA32_APIC_BASE), once mapped.
static LAPIC: Once<MmioRegion> = Once::new();
/// The I/O APIC registers, once mapped.
static IOAPIC: Once<MmioRegion> = Once::new();
/// Physical address of the I/O APIC (the PC default; see [`set_ioapic_base`]).
static IOAPIC_BASE: AtomicU64 = AtomicU64::new(0xfec0_0000);

const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_CURRENT: u64 = 0x390;
const LAPIC_TIMER_DIVIDE: u64 = 0x3e0;

/// Reads a local APIC register (0 before [`init_apic`]).
fn lapic_read(register: u64) -> u32 {
    LAPIC.get().map_or(0, |lapic| lapic.read::<u32>(register))
}

/// Writes a local APIC register (dropped before [`init_apic`]).
fn lapic_write(register: u64, value: u32) {
    if let Some(lapic) = LAPIC.get() {
        lapic.write::<u32>(register, value);
    }
}

fn lapic_eoi() {
    lapic_write(LAPIC_EOI, 0);
}

fn disable_legacy_pic() {
    // SAFETY: the standard 8259 initialisation sequence (ICW1–ICW4) on the
    // PIC ports, remapping to vectors 0x20/0x28, then masking every line.
    unsafe {
        let mut master_cmd = Port::<u8>::new(0x20);
        let mut master_data = Port::<u8>::new(0x21);
        let mut slave_cmd = Port::<u8>::new(0xa0);
        let mut slave_data = Port::<u8>::new(0xa1);
        master_cmd.write(0x11);
        slave_cmd.write(0x11);
        master_data.write(0x20);
        slave_data.write(0x28);
        master_data.write(4);
        slave_data.write(2);
        master_data.write(1);
        slave_data.write(1);
        master_data.write(0xff);
        slave_data.write(0xff);
    }
}

/// Uses the I/O APIC at `base` (from the ACPI MADT) instead of the default.
pub fn set_ioapic_base(base: PhysAddr) {
    IOAPIC_BASE.store(base.as_u64(), Ordering::Relaxed);
}

/// Masks the PIC, enables the local APIC and maps both APICs.
pub fn init_apic() -> Result<(), MapError> {
    disable_legacy_pic();
    // IA32_APIC_BASE (MSR 0x1b): bits 12.. hold the page address.
    let apic_base_msr = x86_64::registers::model_specific::Msr::new(0x1b);
    // SAFETY: reading IA32_APIC_BASE has no side effects; every x86_64 CPU
    // has it.
    let base = unsafe { apic_base_msr.read() } & 0x000f_ffff_ffff_f000;
    let page = |start: u64| PhysRange {
        start,
        end: start + 4096,
    };
    let lapic = mmio::map(page(base))?;
    let ioapic = IOAPIC_BASE.load(Ordering::Relaxed);
    // The I/O APIC window is 0x20 bytes (IOREGSEL, IOWIN) in its page.
    let ioapic = mmio::map(page(ioapic & !0xfff))?;
    let offset = IOAPIC_BASE.load(Ordering::Relaxed) & 0xfff;
    IOAPIC_OFFSET.store(offset, Ordering::Relaxed);
    IOAPIC.call_once(|| ioapic);
    LAPIC.call_once(|| lapic);
    lapic_write(LAPIC_TPR, 0);
    // Software-enable the APIC (SVR bit 8) with the spurious vector.
    lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR as u32);
    Ok(())
}

/// Sets the local APIC timer up in one-shot mode, given how many APIC
/// timer counts (divide-by-16) elapse per millisecond. Nothing is armed
/// until [`arm_timer`].
pub fn start_timer(counts_per_ms: u64) {
    TIMER_COUNTS_PER_MS.store(counts_per_ms.max(1), Ordering::Relaxed);
    lapic_write(LAPIC_TIMER_DIVIDE, 0b0011); // divide by 16
    lapic_write(LAPIC_TIMER_INITIAL, 0); // stopped
    lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR as u32); // one-shot, unmasked
}

/// The one-shot initial count that expires `delay_us` from now, at
/// `counts_per_ms` timer counts per millisecond: at least 1 (0 would stop
/// the timer instead of firing it), rounded up so it never fires early,
/// at most `u32::MAX` (a longer delay fires early and is simply re-armed).
pub fn one_shot_count(delay_us: u64, counts_per_ms: u64) -> u32 {
    let counts = (u128::from(delay_us) * u128::from(counts_per_ms)).div_ceil(1000);
    counts.clamp(1, u128::from(u32::MAX)) as u32
}

/// The deadline the one-shot timer is armed for ([`crate::tsc::now_us`]
/// clock), `u64::MAX` when stopped or fired.
static ARMED_AT_US: AtomicU64 = AtomicU64::new(u64::MAX);

/// Arms the one-shot timer to interrupt at `at_us` on the
/// [`crate::tsc::now_us`] clock (replacing any earlier arming), or stops
/// it (`None`): the event loop's next deadline. Re-arming for the deadline
/// already armed writes nothing.
pub fn arm_timer(at_us: Option<u64>) {
    let at = at_us.unwrap_or(u64::MAX);
    if at == ARMED_AT_US.load(Ordering::Relaxed) {
        return;
    }
    let count = match at_us {
        Some(at) => {
            let delay = at.saturating_sub(crate::tsc::now_us());
            one_shot_count(delay, TIMER_COUNTS_PER_MS.load(Ordering::Relaxed))
        }
        None => 0,
    };
    ARMED_AT_US.store(at, Ordering::Relaxed);
    lapic_write(LAPIC_TIMER_INITIAL, count);
}

/// Starts the APIC timer counting down from `u32::MAX`, masked and
/// one-shot, for calibration ([`calibration_count`] reads it).
pub fn start_calibration_count() {
    lapic_write(LAPIC_TIMER_DIVIDE, 0b0011);
    lapic_write(LAPIC_LVT_TIMER, 1 << 16); // masked, one-shot
    lapic_write(LAPIC_TIMER_INITIAL, u32::MAX);
}

/// APIC timer counts consumed since [`start_calibration_count`].
pub fn calibration_count() -> u64 {
    u64::from(u32::MAX - lapic_read(LAPIC_TIMER_CURRENT))
}

/// Offset of the I/O APIC registers inside their mapped page.
static IOAPIC_OFFSET: AtomicU64 = AtomicU64::new(0);

fn ioapic_write(register: u32, value: u32) {
    // IOREGSEL is at +0 and IOWIN at +0x10 (82093AA datasheet, 3.0).
    if let Some(ioapic) = IOAPIC.get() {
        let base = IOAPIC_OFFSET.load(Ordering::Relaxed);
        ioapic.write::<u32>(base, register);
        ioapic.write::<u32>(base + 0x10, value);
    }
}

/// How a device interrupt line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// ISA devices: edge-triggered, active high.
    EdgeHigh,
    /// PCI INTx: level-triggered, active low.
    LevelLow,
}

/// Routes I/O APIC input `gsi` to device vector `index` (0..16) on this CPU
/// and installs `handler`, which runs in interrupt context (keep it short:
/// the event loop is woken up anyway).
pub fn route_irq(
    gsi: u8,
    index: usize,
    trigger: Trigger,
    handler: fn(),
) -> Result<(), &'static str> {
    if index >= DEVICE_VECTORS {
        return Err("no such device vector");
    }
    if gsi >= 24 {
        return Err("I/O APIC input out of range");
    }
    DEVICE_HANDLERS.lock()[index] = Some(handler);
    let vector = FIRST_DEVICE_VECTOR as u32 + index as u32;
    let mut low = vector; // fixed delivery, physical destination
    if trigger == Trigger::LevelLow {
        low |= (1 << 13) | (1 << 15);
    }
    let apic_id = lapic_read(LAPIC_ID) >> 24;
    let register = 0x10 + 2 * gsi as u32;
    ioapic_write(register + 1, apic_id << 24);
    ioapic_write(register, low);
    Ok(())
}

/// Lets interrupts in (`sti`).
pub fn enable() {
    x86_64::instructions::interrupts::enable();
}

/// Keeps interrupts out (`cli`), e.g. on the panic path.
pub fn disable() {
    x86_64::instructions::interrupts::disable();
}

#[cfg(test)]
mod tests {
    use super::one_shot_count;

    #[test]
    fn one_shot_count_rounds_up_and_never_stops_the_timer() {
        // 62 500 counts per ms: QEMU's 1 GHz APIC clock divided by 16.
        assert_eq!(one_shot_count(1000, 62_500), 62_500);
        assert_eq!(one_shot_count(1, 62_500), 63);
        // A deadline already due still fires (0 would stop the timer).
        assert_eq!(one_shot_count(0, 62_500), 1);
        // Beyond the 32-bit counter it fires early and is re-armed.
        assert_eq!(one_shot_count(u64::MAX, 62_500), u32::MAX);
        assert_eq!(one_shot_count(3_600_000_000, 62_500), u32::MAX);
    }
}
