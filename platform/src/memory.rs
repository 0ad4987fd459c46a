//! Volatile memory: the RAM frame allocator, the kernel heap and the page
//! tables.
//!
//! Only frames from the boot info's `Usable` regions ever enter the frame
//! allocator or the heap. Persistent memory never does: it is not `Usable`
//! in the memory map (E820 type 12, UEFI type 14, or absent altogether as
//! with QEMU's NVDIMM), and RAM that the boot config turns into emulated
//! pmem (`pmem=SIZE@START`) is cut out of the allocator with [`carve_out`]
//! before anything can allocate it. Storage frames have their own type in
//! `daxbox-pmem`; this module only deals in RAM frames ([`PhysFrame`]).
//!
//! [`map_identity`] maps physical ranges at virt == phys with 2 MiB pages
//! wherever aligned (pmem, and uncached for MMIO). It is private to the
//! platform crate: the kernel gets mappings only as [`crate::mmio::MmioRegion`]
//! and [`crate::pmem::PmemRegion`] handles, whose constructors first check
//! the range against the boot memory map ([`check_device_range`],
//! [`check_storage_range`]).
//!
//! Invariants: a RAM frame is handed out at most once until it is given
//! back; the heap range never enters the allocator; RAM reaches the kernel
//! only as the heap or as DMA memory owned by [`crate::virtio`].

use alloc::vec::Vec;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use talc::{ErrOnOom, Span, Talc, Talck};
use x86_64::registers::control::Cr3;
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::mapper::{MapToError, MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size2MiB,
    Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

const PAGE: u64 = 4096;
const HUGE: u64 = 2 * 1024 * 1024;

// Host tests use the host's allocator. Talc bins free chunks by size, so
// an allocation costs about the same however fragmented the heap is; a
// first-fit free list (linked_list_allocator, used before) walks every free
// hole first, which with 10,000 files mounted stalled the event loop for
// seconds under TCG while it built an export list (measured with a packet
// capture: the guest took 16 s to acknowledge the NBD_OPT_LIST).
#[cfg_attr(not(test), global_allocator)]
static HEAP: Talck<spin::Mutex<()>, ErrOnOom> = Talc::new(ErrOnOom).lock();

/// A half-open physical range `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end.saturating_sub(1))
    }
}

const MAX_RANGES: usize = 128;

/// RAM frames not yet handed out, as a list of free ranges: those above
/// the bootloader's memory first, then those below it, each in address
/// order. Allocation takes frames from the low end of the first range with
/// room; freed frames go to a recycle list.
struct RamFrames {
    free: [PhysRange; MAX_RANGES],
    count: usize,
    /// The `Usable` regions as the boot info gave them (for diagnostics).
    usable: [PhysRange; MAX_RANGES],
    usable_count: usize,
    recycled: Vec<PhysFrame>,
    allocated: u64,
}

impl RamFrames {
    const fn empty() -> Self {
        const EMPTY: PhysRange = PhysRange { start: 0, end: 0 };
        Self {
            free: [EMPTY; MAX_RANGES],
            count: 0,
            usable: [EMPTY; MAX_RANGES],
            usable_count: 0,
            recycled: Vec::new(),
            allocated: 0,
        }
    }

    fn free_ranges(&self) -> &[PhysRange] {
        &self.free[..self.count]
    }

    fn remove_range(&mut self, index: usize) {
        self.free.copy_within(index + 1..self.count, index);
        self.count -= 1;
    }

    fn insert_range(&mut self, index: usize, range: PhysRange) -> bool {
        if self.count == MAX_RANGES {
            return false;
        }
        self.free.copy_within(index..self.count, index + 1);
        self.free[index] = range;
        self.count += 1;
        true
    }

    fn allocate(&mut self) -> Option<PhysFrame> {
        if let Some(frame) = self.recycled.pop() {
            self.allocated += PAGE;
            return Some(frame);
        }
        let range = self.free[..self.count]
            .iter_mut()
            .find(|r| r.len() >= PAGE)?;
        let frame = PhysFrame::containing_address(PhysAddr::new(range.start));
        range.start += PAGE;
        self.allocated += PAGE;
        Some(frame)
    }

    /// Takes `len` bytes aligned to `align` from the top of the largest
    /// free range (the heap), or the first fitting range in list order (see
    /// [`RamFrames`]) when `top` is false.
    fn allocate_contiguous(&mut self, len: u64, align: u64, top: bool) -> Option<u64> {
        let mut candidates = self.free_ranges().iter().enumerate();
        let (index, start) = if top {
            let (index, range) = candidates.max_by_key(|(_, r)| r.len())?;
            let start = range.end.checked_sub(len)? & !(align - 1);
            (start >= range.start).then_some((index, start))?
        } else {
            candidates.find_map(|(index, range)| {
                let start = range.start.checked_add(align - 1)? & !(align - 1);
                (start.checked_add(len)? <= range.end).then_some((index, start))
            })?
        };
        self.cut(index, start, start + len);
        self.allocated += len;
        Some(start)
    }

    /// Removes `start..end` (inside free range `index`) from the free list.
    fn cut(&mut self, index: usize, start: u64, end: u64) {
        let range = self.free[index];
        let before = PhysRange {
            start: range.start,
            end: start,
        };
        let after = PhysRange {
            start: end,
            end: range.end,
        };
        self.remove_range(index);
        let mut at = index;
        for piece in [before, after] {
            if piece.len() >= PAGE && self.insert_range(at, piece) {
                at += 1;
            }
        }
    }
}

/// Why a RAM range could not be carved out for emulated pmem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarveError {
    /// Start or length is not a multiple of 4 KiB.
    Unaligned,
    /// Some of the range is not usable RAM at all (reserved, or beyond RAM).
    NotRam,
    /// The range is usable RAM but part of it is already in use.
    InUse,
}

impl fmt::Display for CarveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CarveError::Unaligned => "not 4 KiB aligned",
            CarveError::NotRam => "not usable RAM (reserved or beyond the end of RAM)",
            CarveError::InUse => "RAM already in use (kernel heap or allocated frames)",
        })
    }
}

/// A failed identity mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No RAM frame for a page table.
    OutOfFrames,
    /// The page is already mapped to something else.
    Conflict {
        /// The virtual (= physical) address that is taken.
        address: u64,
    },
    /// [`init`] has not run.
    NotReady,
    /// The range holds memory that must not be mapped for this use.
    Forbidden {
        /// The first such address.
        address: u64,
        /// What is there.
        what: &'static str,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::OutOfFrames => f.write_str("out of RAM frames for page tables"),
            MapError::Conflict { address } => {
                write!(
                    f,
                    "address {:#x} is already mapped to something else",
                    address
                )
            }
            MapError::NotReady => f.write_str("paging is not initialised"),
            MapError::Forbidden { address, what } => {
                write!(f, "address {:#x} is {}", address, what)
            }
        }
    }
}

/// What an identity mapping is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// Persistent memory: write-back cacheable, writable, never executable.
    Pmem,
    /// Device registers: uncached, writable, never executable.
    Mmio,
}

/// How many pages of each size an identity mapping used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// 2 MiB pages.
    pub huge: u64,
    /// 4 KiB pages.
    pub small: u64,
}

/// What a boot memory-map region holds, for the mapping checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegionClass {
    /// Usable RAM or bootloader memory (kernel, page tables, boot info).
    Ram,
    /// Persistent memory reported by the firmware (E820 12, UEFI 14).
    Storage,
    /// Anything else the firmware reserved (ACPI tables, BIOS areas).
    Firmware,
}

struct State {
    frames: RamFrames,
    /// The boot memory map, classified.
    map: Vec<(PhysRange, RegionClass)>,
    /// RAM ranges removed from the allocator for good by [`carve_out`].
    carved: Vec<PhysRange>,
    /// Ranges handed out as persistent memory (never twice).
    storage: Vec<PhysRange>,
    /// Ranges mapped for device registers.
    devices: Vec<PhysRange>,
    mapper: Option<OffsetPageTable<'static>>,
    physical_offset: u64,
    heap: PhysRange,
    usable_total: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    frames: RamFrames::empty(),
    map: Vec::new(),
    carved: Vec::new(),
    storage: Vec::new(),
    devices: Vec::new(),
    mapper: None,
    physical_offset: 0,
    heap: PhysRange { start: 0, end: 0 },
    usable_total: 0,
});

// SAFETY: every frame handed out is usable RAM that was removed from the
// free list, so it is never handed out twice while in use.
unsafe impl FrameAllocator<Size4KiB> for RamFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.allocate()
    }
}

/// Puts the free ranges in allocation order: those ending above
/// `loader_end` first, then the rest, each in address order.
fn sort_for_allocation(ranges: &mut [PhysRange], loader_end: u64) {
    ranges.sort_unstable_by_key(|r| (r.end <= loader_end, r.start));
}

/// Summary of RAM for the banner and the `mem` command.
pub struct MemoryInfo {
    /// Total bytes in `Usable` regions.
    pub usable: u64,
    /// The heap's physical range.
    pub heap: PhysRange,
    /// Heap bytes in use.
    pub heap_used: usize,
    /// Heap bytes free.
    pub heap_free: usize,
    /// RAM frames handed out (page tables, DMA, heap excluded).
    pub frames_allocated: u64,
    /// Bytes still in the frame allocator.
    pub frames_free: u64,
}

/// Builds the frame allocator from the boot memory map, takes the heap
/// from the top of the largest usable region, and sets up page-table
/// access. Returns the heap size.
pub(crate) fn init(regions: &MemoryRegions, physical_offset: u64) -> u64 {
    // A second heap initialisation would hand out memory already in use.
    static DONE: AtomicBool = AtomicBool::new(false);
    assert!(!DONE.swap(true, Ordering::AcqRel), "memory::init runs once");
    // SAFETY: EFER.NXE must be on for NO_EXECUTE mappings; setting it only
    // enables the bit's meaning in page tables.
    unsafe { Efer::update(|flags| flags.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    let mut state = STATE.lock();
    let state = &mut *state;
    for region in regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
    {
        // Stay clear of the first MiB (real-mode data, BIOS areas).
        let start = region.start.max(0x10_0000).next_multiple_of(PAGE);
        let end = region.end & !(PAGE - 1);
        if end > start && state.frames.count < MAX_RANGES {
            let range = PhysRange { start, end };
            let at = state.frames.count;
            state.frames.insert_range(at, range);
            state.frames.usable[state.frames.usable_count] = range;
            state.frames.usable_count += 1;
            state.usable_total += range.len();
        }
    }
    // Frames come from the first range with room. Ranges below the end of
    // what the bootloader used (its BIOS stages ran in low memory) go
    // last: under QEMU's TCG the first store to a page that still holds
    // translated guest code pays for invalidating it, and zeroing the
    // 512 KiB receive pool of virtio-net there took 13-40 ms of boot
    // (0.1 ms elsewhere). Any RAM frame is as good as another to a device.
    let loader_end = regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Bootloader)
        .map(|r| r.end)
        .max()
        .unwrap_or(0);
    sort_for_allocation(&mut state.frames.free[..state.frames.count], loader_end);
    // Half of usable RAM, 16 MiB to 256 MiB, for the heap.
    let heap_size = (state.usable_total / 2).clamp(16 << 20, 256 << 20) & !(HUGE - 1);
    let heap_start = state
        .frames
        .allocate_contiguous(heap_size, HUGE, true)
        .expect("the boot memory map must hold at least 32 MiB of usable RAM");
    state.frames.allocated -= heap_size;
    state.heap = PhysRange {
        start: heap_start,
        end: heap_start + heap_size,
    };
    state.physical_offset = physical_offset;
    // SAFETY: the bootloader maps all physical memory at `physical_offset`
    // (Mapping::Dynamic in BOOTLOADER_CONFIG), and the heap range was just
    // removed from the frame allocator, so nothing else uses it.
    let claimed = unsafe {
        HEAP.lock().claim(Span::from_base_size(
            (heap_start + physical_offset) as *mut u8,
            heap_size as usize,
        ))
    };
    if claimed.is_err() {
        panic!("heap: the allocator refused {heap_size} bytes at {heap_start:#x}");
    }
    // The heap works from here on: keep the classified memory map.
    for region in regions.iter() {
        let class = match region.kind {
            MemoryRegionKind::Usable | MemoryRegionKind::Bootloader => RegionClass::Ram,
            MemoryRegionKind::UnknownBios(12) | MemoryRegionKind::UnknownUefi(14) => {
                RegionClass::Storage
            }
            _ => RegionClass::Firmware,
        };
        let range = PhysRange {
            start: region.start,
            end: region.end,
        };
        state.map.push((range, class));
    }
    let (level_4, _) = Cr3::read();
    let table = (level_4.start_address().as_u64() + physical_offset) as *mut PageTable;
    // SAFETY: CR3 points at the active level-4 table, reachable through the
    // physical-memory mapping; this is the only `OffsetPageTable` and it
    // lives behind the STATE lock.
    state.mapper =
        Some(unsafe { OffsetPageTable::new(&mut *table, VirtAddr::new(physical_offset)) });
    heap_size
}

/// The virtual address of RAM at physical `address` (physical-memory map).
pub(crate) fn phys_to_virt(address: u64) -> u64 {
    address + STATE.lock().physical_offset
}

/// Allocates `pages` physically contiguous, zeroed RAM frames; returns the
/// physical address of the first.
pub(crate) fn allocate_contiguous(pages: u64) -> Option<u64> {
    let len = pages.checked_mul(PAGE)?;
    let start = STATE.lock().frames.allocate_contiguous(len, PAGE, false)?;
    zero(start, len);
    Some(start)
}

/// Gives one RAM frame back. The caller must own it (it came from this
/// allocator and nothing refers to it any more).
pub(crate) fn free_frame(frame: PhysFrame) {
    let mut state = STATE.lock();
    state.frames.allocated -= PAGE;
    state.frames.recycled.push(frame);
}

fn zero(start: u64, len: u64) {
    let virt = phys_to_virt(start);
    // SAFETY: the range was just taken from the frame allocator, so it is
    // RAM that nothing else references, mapped at `virt`.
    unsafe { core::ptr::write_bytes(virt as *mut u8, 0, len as usize) };
}

/// Removes `range` from the RAM allocator for good (emulated pmem from
/// the boot config). Fails without changing anything when any part of it
/// is not free usable RAM.
pub fn carve_out(range: PhysRange) -> Result<(), CarveError> {
    let PhysRange { start, end } = range;
    if end < start {
        return Err(CarveError::NotRam);
    }
    let len = end - start;
    if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
        return Err(CarveError::Unaligned);
    }
    let mut state = STATE.lock();
    let frames = &mut state.frames;
    let inside_usable = frames.usable[..frames.usable_count]
        .iter()
        .any(|r| r.start <= start && end <= r.end);
    if !inside_usable {
        return Err(CarveError::NotRam);
    }
    let Some(index) = frames
        .free_ranges()
        .iter()
        .position(|r| r.start <= start && end <= r.end)
    else {
        return Err(CarveError::InUse);
    };
    if frames
        .recycled
        .iter()
        .any(|f| (start..end).contains(&f.start_address().as_u64()))
    {
        return Err(CarveError::InUse);
    }
    frames.cut(index, start, end);
    state.carved.push(PhysRange { start, end });
    Ok(())
}

/// Whether `address` (a virtual address, e.g. of a heap block) lies in
/// the kernel heap.
pub fn in_heap(address: u64) -> bool {
    let state = STATE.lock();
    let offset = state.physical_offset;
    address >= state.heap.start + offset && address < state.heap.end + offset
}

/// Physical address of the active level-4 page table (CR3).
pub fn page_table_root() -> PhysAddr {
    Cr3::read().0.start_address()
}

/// Checks that `range` may become device registers: no byte of it is RAM
/// or bootloader memory, firmware-reported or mapped persistent memory.
pub(crate) fn check_device_range(range: PhysRange) -> Result<(), MapError> {
    let mut state = STATE.lock();
    if range.start >= range.end {
        return Err(MapError::Conflict {
            address: range.start,
        });
    }
    for (region, class) in &state.map {
        if region.overlaps(range.start, range.end) && *class != RegionClass::Firmware {
            return Err(MapError::Forbidden {
                address: range.start.max(region.start),
                what: "RAM or persistent memory, not device registers",
            });
        }
    }
    if let Some(storage) = state
        .storage
        .iter()
        .find(|s| s.overlaps(range.start, range.end))
    {
        return Err(MapError::Forbidden {
            address: range.start.max(storage.start),
            what: "mapped persistent memory, not device registers",
        });
    }
    state.devices.push(range);
    Ok(())
}

/// Checks that `range` may become persistent memory and reserves it for
/// good: it lies inside RAM given up with [`carve_out`], or touches only
/// memory the boot memory map does not describe or describes as persistent
/// memory; and no part of it was handed out as storage or device registers
/// before.
pub(crate) fn claim_storage_range(range: PhysRange) -> Result<(), MapError> {
    let mut state = STATE.lock();
    if range.start >= range.end {
        return Err(MapError::Conflict {
            address: range.start,
        });
    }
    if let Some(used) = state
        .storage
        .iter()
        .chain(&state.devices)
        .find(|s| s.overlaps(range.start, range.end))
    {
        return Err(MapError::Forbidden {
            address: range.start.max(used.start),
            what: "already mapped for another use",
        });
    }
    let carved = state
        .carved
        .iter()
        .any(|c| c.start <= range.start && range.end <= c.end);
    if !carved {
        for (region, class) in &state.map {
            if region.overlaps(range.start, range.end) && *class != RegionClass::Storage {
                return Err(MapError::Forbidden {
                    address: range.start.max(region.start),
                    what: "RAM or firmware memory, not persistent memory",
                });
            }
        }
    }
    state.storage.push(range);
    Ok(())
}

/// RAM ranges that are in use and must never become storage: the heap and
/// every frame handed out so far (the allocated low part of each usable
/// region).
pub fn ram_in_use() -> Vec<PhysRange> {
    let state = STATE.lock();
    let frames = &state.frames;
    let mut used = alloc::vec![state.heap];
    for usable in &frames.usable[..frames.usable_count] {
        // Whatever part of a usable region is not in a free range is used.
        let mut cursor = usable.start;
        for free in frames
            .free_ranges()
            .iter()
            .filter(|f| f.overlaps(usable.start, usable.end))
        {
            if free.start > cursor {
                used.push(PhysRange {
                    start: cursor,
                    end: free.start,
                });
            }
            cursor = cursor.max(free.end);
        }
        if cursor < usable.end && !state.heap.overlaps(cursor, usable.end) {
            used.push(PhysRange {
                start: cursor,
                end: usable.end,
            });
        }
    }
    used
}

/// Current memory figures.
pub fn info() -> MemoryInfo {
    let state = STATE.lock();
    let heap = HEAP.lock();
    MemoryInfo {
        usable: state.usable_total,
        heap: state.heap,
        heap_used: heap.get_counters().allocated_bytes,
        heap_free: heap.get_counters().available_bytes,
        frames_allocated: state.frames.allocated,
        frames_free: state
            .frames
            .free_ranges()
            .iter()
            .map(|r| r.len())
            .sum::<u64>()
            + state.frames.recycled.len() as u64 * PAGE,
    }
}

/// Takes every RAM frame the allocator still has, reports the lowest and
/// highest address seen and whether any fell in `forbidden`, then gives
/// them all back. A test of the rule that storage never enters the
/// allocator (`mem stress`).
pub fn stress_frames(forbidden: &[PhysRange]) -> (u64, u64, u64, usize) {
    let mut taken = Vec::new();
    let (mut lowest, mut highest, mut bad) = (u64::MAX, 0, 0usize);
    loop {
        let frame = STATE.lock().frames.allocate();
        let Some(frame) = frame else { break };
        let address = frame.start_address().as_u64();
        lowest = lowest.min(address);
        highest = highest.max(address);
        if forbidden
            .iter()
            .any(|r| r.overlaps(address, address + PAGE))
        {
            bad += 1;
        }
        taken.push(frame);
    }
    let count = taken.len() as u64;
    for frame in taken {
        free_frame(frame);
    }
    (count, lowest, highest, bad)
}

/// Identity-maps `start..start+len` (rounded out to 4 KiB) as `kind`, with
/// 2 MiB pages wherever a whole aligned 2 MiB chunk fits and nothing is
/// mapped there yet, 4 KiB pages elsewhere. Pages already identity-mapped
/// are left alone and not counted. Private to the platform: callers check
/// the range first (see the module documentation).
pub(crate) fn map_identity(start: u64, len: u64, kind: MapKind) -> Result<PageCounts, MapError> {
    let mut flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    if kind == MapKind::Mmio {
        flags |= PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH;
    }
    let first = start & !(PAGE - 1);
    let end = start
        .checked_add(len)
        .and_then(|e| e.checked_add(PAGE - 1))
        .ok_or(MapError::Conflict { address: start })?
        & !(PAGE - 1);
    let mut guard = STATE.lock();
    let state = &mut *guard;
    let mapper = state.mapper.as_mut().ok_or(MapError::NotReady)?;
    let frames = &mut state.frames;
    let mut counts = PageCounts::default();
    let mut address = first;
    while address < end {
        let huge_fits = address.is_multiple_of(HUGE) && end - address >= HUGE;
        match mapper.translate(VirtAddr::new(address)) {
            TranslateResult::Mapped { frame, offset, .. } => {
                let target = frame.start_address().as_u64() + offset;
                if target != address {
                    return Err(MapError::Conflict { address });
                }
                address += match frame {
                    MappedFrame::Size4KiB(_) => PAGE,
                    MappedFrame::Size2MiB(_) => HUGE - (address % HUGE),
                    MappedFrame::Size1GiB(_) => (1 << 30) - (address % (1 << 30)),
                };
                continue;
            }
            TranslateResult::NotMapped | TranslateResult::InvalidFrameAddress(_) => {}
        }
        if huge_fits {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(address));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(address));
            // SAFETY: identity mapping, at an unused virtual address, of a
            // physical range that `claim_storage_range` (pmem) or
            // `check_device_range` (device registers) accepted first, so it
            // is not RAM the kernel uses; new page tables come from frames.
            match unsafe { mapper.map_to(page, frame, flags, frames) } {
                Ok(flush) => {
                    flush.flush();
                    counts.huge += 1;
                    address += HUGE;
                    continue;
                }
                // Part of this 2 MiB chunk has a page table already:
                // fall back to 4 KiB pages for it.
                Err(MapToError::PageAlreadyMapped(_)) => {}
                Err(MapToError::ParentEntryHugePage) => return Err(MapError::Conflict { address }),
                Err(MapToError::FrameAllocationFailed) => return Err(MapError::OutOfFrames),
            }
        }
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(address));
        let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(address));
        // SAFETY: as above, for one 4 KiB page.
        match unsafe { mapper.map_to(page, frame, flags, frames) } {
            Ok(flush) => flush.flush(),
            Err(MapToError::FrameAllocationFailed) => return Err(MapError::OutOfFrames),
            Err(_) => return Err(MapError::Conflict { address }),
        }
        counts.small += 1;
        address += PAGE;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::{sort_for_allocation, PhysRange};

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange { start, end }
    }

    #[test]
    fn memory_below_the_bootloader_is_handed_out_last() {
        // The QEMU BIOS map: 1-16 MiB where the bootloader's stages ran,
        // the kernel and the bootloader's tables at 16-24 MiB, then RAM.
        let mut ranges = [
            range(0x10_0000, 0x100_0000),
            range(0x17d_f000, 0x1ffd_e000),
            range(0x1_0000_0000, 0x1_4000_0000),
        ];
        sort_for_allocation(&mut ranges, 0x17d_f000);
        assert_eq!(
            ranges,
            [
                range(0x17d_f000, 0x1ffd_e000),
                range(0x1_0000_0000, 0x1_4000_0000),
                range(0x10_0000, 0x100_0000),
            ]
        );
        // Without bootloader regions: plain address order.
        sort_for_allocation(&mut ranges, 0);
        assert_eq!(ranges[0], range(0x10_0000, 0x100_0000));
    }
}
