//! Mount and operations are bounded by the budget they are given: an image
//! that needs more is refused with a message and left unchanged, an
//! operation that would grow past it fails with `OutOfMemory` and the
//! filesystem keeps working; hostile images (huge counts, cyclic or
//! enormous overflow chains) are refused, never a panic.

use daxbox_budget::Budget;
use daxbox_persist::{PersistentMemory, VecMemory};
use daxfs::format::{
    Extent, OverflowBlock, Record, Superblock, BLOCK_SIZE, INLINE_EXTENTS, OVERFLOW_EXTENTS,
    RECORD_SIZE, SUPER_SIZE,
};
use daxfs::{Error, Filesystem, FormatOptions};

const MIB: usize = 1024 * 1024;
const TABLE: usize = 3 * BLOCK_SIZE as usize;

fn budget(limit: usize) -> &'static Budget {
    Box::leak(Box::new(Budget::new("test", limit)))
}

fn files_image(n: usize) -> Vec<u8> {
    let opts = FormatOptions {
        uuid: [5; 16],
        max_files: Some(4096),
    };
    let mut fs = Filesystem::format(VecMemory::new(64 * MIB), opts).unwrap();
    for i in 0..n {
        let id = fs.create(&format!("file-{i:05}")).unwrap();
        fs.write(id, 0, b"x").unwrap();
    }
    fs.unmount().into_bytes()
}

#[test]
fn a_mount_over_budget_is_refused_with_the_figures_and_nothing_written() {
    let bytes = files_image(500);
    let b = budget(64 * 1024);
    let err = Filesystem::mount_with_budget(VecMemory::from_bytes(bytes.clone()), b)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, Error::MountTooLarge { .. }), "{err:?}");
    assert!(
        text.starts_with("mount refused: the image needs at least"),
        "{text}"
    );
    assert!(text.contains("65536 bytes"), "{text}");
    assert_eq!(b.stats().used, 0, "a refused mount gives its charge back");
    assert!(b.stats().refused >= 1);
    // And it wrote nothing (the state word is still CLEAN).
    let mem = VecMemory::from_bytes(bytes.clone());
    let again = Filesystem::mount_with_budget(mem, b);
    assert!(again.is_err());
    // A budget that fits mounts the same image, and holds a charge.
    let big = budget(64 * MIB);
    let fs = Filesystem::mount_with_budget(VecMemory::from_bytes(bytes), big).unwrap();
    assert_eq!(fs.list(None, 1000).len(), 500);
    let held = big.stats().used;
    assert!(held > 500 * 100, "{held}");
    drop(fs);
    assert_eq!(big.stats().used, 0);
}

#[test]
fn operations_past_the_budget_fail_cleanly_and_the_filesystem_keeps_working() {
    let bytes = files_image(10);
    let b = budget(256 * 1024);
    let mut fs = Filesystem::mount_with_budget(VecMemory::from_bytes(bytes), b).unwrap();
    let mut created = 0;
    let err = loop {
        match fs.create(&format!("more-{created:05}")) {
            Ok(id) => match fs.write(id, 0, b"y") {
                Ok(()) => created += 1,
                Err(e) => break e,
            },
            Err(e) => break e,
        }
        assert!(created < 4000, "the budget never ran out");
    };
    assert!(matches!(err, Error::OutOfMemory(_)), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("out of memory: test memory budget exhausted"));
    assert!(b.stats().used <= 256 * 1024);
    // A full budget leaves no room for fsck's scan either: it says so.
    let report = fs.fsck();
    assert!(
        report.is_clean() || report.problems[0].contains("not enough memory"),
        "{report}"
    );
    // Giving memory back (unlink) makes room again.
    for i in 0..=created {
        fs.unlink(&format!("more-{i:05}")).ok();
    }
    let id = fs.create("after").unwrap();
    fs.write(id, 0, b"z").unwrap();
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    // The state survives a remount.
    let mem = fs.unmount();
    let fs = Filesystem::mount(mem).unwrap();
    assert!(fs.lookup("after").is_ok());
}

fn record(bytes: &[u8], slot: usize) -> Record {
    let at = TABLE + slot * RECORD_SIZE;
    Record::decode(&bytes[at..at + RECORD_SIZE])
        .unwrap()
        .unwrap()
}

fn put_record(bytes: &mut [u8], slot: usize, r: &Record) {
    let at = TABLE + slot * RECORD_SIZE;
    bytes[at..at + RECORD_SIZE].copy_from_slice(&r.encode());
}

fn superblock(bytes: &[u8]) -> Superblock {
    let mut b = [0u8; SUPER_SIZE];
    b.copy_from_slice(&bytes[..SUPER_SIZE]);
    Superblock::decode(&b).unwrap()
}

/// Gives file 0 `blocks` overflow blocks of full extents (all mapping one
/// data block), written at the end of the data area, the chain closed into
/// a cycle when `cycle`.
fn many_extents(bytes: &mut [u8], blocks: u64, cycle: bool) {
    let sb = superblock(bytes);
    let mut r = record(bytes, 0);
    let target = r.inline[0].physical;
    let count = INLINE_EXTENTS as u64 + blocks * OVERFLOW_EXTENTS as u64;
    let extent = |i: u64| Extent {
        logical: 2 * i,
        len: 1,
        physical: target,
    };
    r.inline = (0..INLINE_EXTENTS as u64).map(extent).collect();
    r.extent_count = count as u32;
    r.overflow_count = blocks as u32;
    let first = sb.total_blocks - blocks;
    r.overflow_first = first;
    r.size = 2 * count * BLOCK_SIZE;
    put_record(bytes, 0, &r);
    for k in 0..blocks {
        let base = INLINE_EXTENTS as u64 + k * OVERFLOW_EXTENTS as u64;
        let next = if k + 1 < blocks {
            first + k + 1
        } else if cycle {
            first
        } else {
            0
        };
        let ob = OverflowBlock {
            owner_slot: 0,
            owner_generation: r.generation,
            index: k as u32,
            next,
            extents: (base..base + OVERFLOW_EXTENTS as u64).map(extent).collect(),
        };
        let at = ((first + k) * BLOCK_SIZE) as usize;
        bytes[at..at + BLOCK_SIZE as usize].copy_from_slice(&ob.encode());
    }
}

#[test]
fn a_file_with_a_million_extents_is_refused_by_a_small_budget() {
    let mut bytes = files_image(1);
    // 4,000 overflow blocks: 1,016,012 extents.
    many_extents(&mut bytes, 4000, false);
    let before = bytes.clone();
    let small = budget(4 * MIB);
    let mem = VecMemory::from_bytes(bytes.clone());
    let err = Filesystem::mount_with_budget(mem, small)
        .err()
        .expect("refused");
    assert!(matches!(err, Error::MountTooLarge { .. }), "{err}");
    assert_eq!(small.stats().used, 0);
    let report = Filesystem::fsck_image_with_budget(&VecMemory::from_bytes(bytes.clone()), small);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("not enough memory")),
        "{report}"
    );
    assert_eq!(bytes, before);
}

#[test]
fn a_file_with_many_extents_mounts_within_a_budget_that_holds_it() {
    let mut bytes = files_image(1);
    // 200 overflow blocks: 50,812 extents.
    many_extents(&mut bytes, 200, false);
    let large = budget(64 * MIB);
    let fs = Filesystem::mount_with_budget(VecMemory::from_bytes(bytes), large).unwrap();
    let id = fs.lookup("file-00000").unwrap();
    assert_eq!(fs.stat(id).unwrap().extent_count, 50_812);
    assert!(large.stats().used > 50_812 * 16);
    assert!(large.stats().used < 64 * MIB);
}

#[test]
fn a_cyclic_overflow_chain_is_refused() {
    let mut bytes = files_image(1);
    many_extents(&mut bytes, 3, true);
    let err = Filesystem::mount(VecMemory::from_bytes(bytes.clone()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("overflow"), "{err}");
    assert!(!Filesystem::fsck_image(&VecMemory::from_bytes(bytes)).is_clean());
}

#[test]
fn a_huge_max_files_costs_no_memory() {
    // The largest table a 64 MiB region can hold (about 126,000 slots):
    // mount memory is the same as for a 64-slot table.
    let b = budget(usize::MAX);
    let mut heap = Vec::new();
    for max_files in [64, 120_000] {
        let opts = FormatOptions {
            uuid: [1; 16],
            max_files: Some(max_files),
        };
        let mut fs = Filesystem::format(VecMemory::new(64 * MIB), opts).unwrap();
        fs.create("one").unwrap();
        let mem = fs.unmount();
        let fs = Filesystem::mount_with_budget(mem, b).unwrap();
        heap.push(b.stats().used);
        drop(fs);
    }
    // Only the allocator (a smaller data area) differs.
    assert!(heap[1] <= heap[0], "{heap:?}");
    // A superblock claiming more slots than the region has room for.
    let mut bytes = files_image(1);
    let mut sb = superblock(&bytes);
    sb.max_files = u32::MAX;
    sb.table_blocks = (u32::MAX as u64).div_ceil(8);
    sb.data_start = 3 + sb.table_blocks;
    sb.total_blocks = sb.data_start + 1;
    bytes[..SUPER_SIZE].copy_from_slice(&sb.encode());
    let bs = BLOCK_SIZE as usize;
    bytes[bs..bs + SUPER_SIZE].copy_from_slice(&sb.encode());
    let err = Filesystem::mount(VecMemory::from_bytes(bytes.clone()))
        .err()
        .expect("refused");
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    let mem = VecMemory::from_bytes(bytes);
    assert!(mem.len() as usize == 64 * MIB);
}
