//! Global descriptor table and task-state segment. The TSS gives the
//! double-fault handler its own stack (IST 0), so a kernel stack overflow
//! still produces a readable report instead of a triple fault.
//!
//! Invariant: the GDT and TSS live in statics for the kernel's life, are
//! loaded once, and segment registers get only selectors of that GDT.

use spin::LazyLock;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

const FAULT_STACK_SIZE: usize = 32 * 1024;

#[repr(align(16))]
#[allow(dead_code)] // only its address is used
struct FaultStack([u8; FAULT_STACK_SIZE]);

static mut FAULT_STACK: FaultStack = FaultStack([0; FAULT_STACK_SIZE]);

static TSS: LazyLock<TaskStateSegment> = LazyLock::new(|| {
    let mut tss = TaskStateSegment::new();
    let start = VirtAddr::from_ptr(&raw const FAULT_STACK);
    // Stacks grow down: the IST entry is the end of the array.
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = start + FAULT_STACK_SIZE as u64;
    tss
});

struct Gdt {
    table: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static GDT: LazyLock<Gdt> = LazyLock::new(|| {
    let mut table = GlobalDescriptorTable::new();
    let code = table.append(Descriptor::kernel_code_segment());
    let data = table.append(Descriptor::kernel_data_segment());
    let tss = table.append(Descriptor::tss_segment(&TSS));
    Gdt {
        table,
        code,
        data,
        tss,
    }
});

/// Loads the GDT and TSS and reloads the segment registers.
pub fn init() {
    // A second `ltr` of the (then busy) TSS would fault: load once.
    static LOADED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if LOADED.swap(true, core::sync::atomic::Ordering::AcqRel) {
        return;
    }
    GDT.table.load();
    // SAFETY: the selectors come from the GDT just loaded, which lives in a
    // static for the rest of the kernel's life.
    unsafe {
        CS::set_reg(GDT.code);
        SS::set_reg(GDT.data);
        DS::set_reg(GDT.data);
        ES::set_reg(GDT.data);
        load_tss(GDT.tss);
    }
}
