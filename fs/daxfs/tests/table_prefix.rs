//! The initialised file table prefix (FORMAT.md "Initialised table
//! prefix"): format zeroes only the first blocks of the table, mount reads
//! only the prefix, the first file past it extends it crash-consistently,
//! and images of versions 1 to 3 (whose prefix is the whole table) mount
//! as they are.

mod common;

use daxbox_persist::{PersistentMemory, VecMemory};
use daxfs::format::{
    self, image_superblock, Record, Superblock, BLOCK_SIZE, RECORD_SIZE, SUPER_SIZE,
    TABLE_BATCH_BLOCKS,
};
use daxfs::{Error, Filesystem, FormatOptions, UNBOUNDED};

const MIB: usize = 1 << 20;
const FILL: u8 = 0xA5;

fn opts(max_files: u32) -> FormatOptions {
    FormatOptions {
        uuid: [0x41; 16],
        max_files: Some(max_files),
    }
}

/// A `mib` MiB region whose every byte is `FILL` (a device that held
/// something else before).
fn dirty_region(mib: usize) -> VecMemory {
    VecMemory::from_bytes(vec![FILL; mib * MIB])
}

fn table_range(sb: &Superblock) -> std::ops::Range<usize> {
    (sb.table_start * BLOCK_SIZE) as usize
        ..((sb.table_start + sb.table_blocks) * BLOCK_SIZE) as usize
}

fn assert_fsck_clean(fs: &Filesystem<VecMemory>) {
    let report = fs.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

fn set_superblocks(mem: &mut VecMemory, sb: &Superblock) {
    let bytes = sb.encode();
    mem.bytes_mut()[..SUPER_SIZE].copy_from_slice(&bytes);
    mem.bytes_mut()[BLOCK_SIZE as usize..BLOCK_SIZE as usize + SUPER_SIZE].copy_from_slice(&bytes);
}

#[test]
fn format_writes_a_bounded_part_of_a_large_table() {
    // 65,536 slots: a 32 MiB table, of which format may touch only the
    // first batch. Before version 4 format zeroed all of it.
    let fs = Filesystem::format(dirty_region(64), opts(1 << 16)).unwrap();
    let bytes = fs.unmount().into_bytes();
    let sb = image_superblock(&bytes);
    let written = bytes[table_range(&sb)]
        .iter()
        .filter(|&&b| b != FILL)
        .count();
    assert!(
        written <= (TABLE_BATCH_BLOCKS * BLOCK_SIZE) as usize,
        "format wrote {written} bytes of the file table"
    );
    // The untouched rest is never read: mount and fsck are happy, and
    // files can be made.
    let mut fs = Filesystem::mount(VecMemory::from_bytes(bytes)).unwrap();
    assert_fsck_clean(&fs);
    let id = fs.create("a").unwrap();
    fs.write(id, 0, b"hello").unwrap();
    let fs = common::remount(fs);
    assert_eq!(common::contents(&fs, "a"), b"hello");
    assert_fsck_clean(&fs);
}

#[test]
fn superblock_records_the_prefix_from_version_4_only() {
    let fs = Filesystem::format(VecMemory::new(64 * MIB), opts(1 << 16)).unwrap();
    let bytes = fs.unmount().into_bytes();
    let sb = image_superblock(&bytes);
    assert_eq!(sb.version, format::FORMAT_VERSION);
    assert_eq!(sb.table_init_blocks, TABLE_BATCH_BLOCKS);
    assert_eq!(sb.table_blocks, 8192);
    let encoded = sb.encode();
    assert_eq!(encoded[96..104], TABLE_BATCH_BLOCKS.to_le_bytes());
    // Empty, or longer than the table: corrupt.
    for bad in [0, sb.table_blocks + 1] {
        let mut raw = encoded;
        raw[96..104].copy_from_slice(&u64::to_le_bytes(bad));
        let crc = format::checksum_skipping(&raw, 92);
        raw[92..96].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(
                Superblock::decode(&raw),
                Err(format::SuperError::Geometry(_))
            ),
            "prefix {bad} accepted"
        );
    }
    // A version 3 superblock has zero there and means the whole table.
    let old = Superblock {
        version: 3,
        table_init_blocks: sb.table_blocks,
        ..sb
    };
    let raw = old.encode();
    assert_eq!(raw[96..104], [0; 8]);
    assert_eq!(Superblock::decode(&raw).unwrap().table_init_blocks, 8192);
    // ... and a version 3 superblock that claims a shorter prefix is not
    // one this code writes.
    let short = Superblock {
        version: 3,
        table_init_blocks: 1,
        ..sb
    };
    assert!(short.check_geometry().is_err());
}

#[test]
fn files_past_the_prefix_extend_it_and_survive_remounts() {
    // One initialised block (8 slots) of a 64-block table, over a dirty
    // region: every extension must zero its blocks before they count.
    let mem = dirty_region(16);
    let mut fs = Filesystem::format_with_table_prefix(mem, opts(512), 1, &UNBOUNDED).unwrap();
    let prefix =
        |fs: &Filesystem<VecMemory>| image_superblock(fs.memory().bytes()).table_init_blocks;
    assert_eq!(prefix(&fs), 1);
    let mut marks = Vec::new();
    for i in 0..200u32 {
        let id = fs.create(&format!("f{i}")).unwrap();
        assert_eq!((id.slot(), id.generation()), (i, 1), "file {i}");
        fs.write(id, 0, &i.to_le_bytes()).unwrap();
        let mark = prefix(&fs);
        if marks.last() != Some(&mark) {
            marks.push(mark);
        }
        // Both superblock copies agree after every extension.
        let bytes = fs.memory().bytes();
        assert_eq!(bytes[..SUPER_SIZE], bytes[4096..4096 + SUPER_SIZE]);
    }
    // The prefix doubles (1, 2, 4, ... blocks) up to what 200 files need.
    assert_eq!(marks, [1, 2, 4, 8, 16, 32]);
    assert_fsck_clean(&fs);
    // The records beyond the prefix are still the region's old bytes.
    let bytes = fs.memory().bytes();
    let sb = image_superblock(bytes);
    let beyond = ((sb.table_start + 32) * BLOCK_SIZE) as usize;
    assert!(bytes[beyond..beyond + RECORD_SIZE]
        .iter()
        .all(|&b| b == FILL));
    // Remount, and after a crash (no unmount) too.
    let mut fs = common::remount(fs);
    assert_eq!(fs.statfs().files, 200);
    fs.unlink("f3").unwrap();
    let mut fs = Filesystem::mount(fs.into_memory()).unwrap();
    for i in (0..200u32).filter(|&i| i != 3) {
        assert_eq!(common::contents(&fs, &format!("f{i}")), i.to_le_bytes());
    }
    // The freed slot is reused with a higher generation.
    let again = fs.create("again").unwrap();
    assert_eq!((again.slot(), again.generation()), (3, 2));
    assert_fsck_clean(&fs);
}

#[test]
fn the_prefix_stops_at_the_table_and_a_full_table_says_so() {
    let mem = VecMemory::new(8 * MIB);
    let mut fs = Filesystem::format_with_table_prefix(mem, opts(20), 1, &UNBOUNDED).unwrap();
    for i in 0..20 {
        fs.create(&format!("f{i}")).unwrap();
    }
    let sb = image_superblock(fs.memory().bytes());
    assert_eq!((sb.table_init_blocks, sb.table_blocks), (3, 3));
    assert_eq!(fs.create("one-more"), Err(Error::NoFileSlots));
    let fs = common::remount(fs);
    assert_eq!(fs.statfs().files, 20);
    assert_fsck_clean(&fs);
}

#[test]
fn a_crash_inside_an_extension_leaves_the_old_or_the_new_prefix() {
    let mem = dirty_region(8);
    let mut fs = Filesystem::format_with_table_prefix(mem, opts(64), 1, &UNBOUNDED).unwrap();
    for i in 0..8 {
        fs.create(&format!("f{i}")).unwrap();
    }
    let before = fs.into_memory();
    let sb = image_superblock(before.bytes());
    let next = Superblock {
        table_init_blocks: 2,
        ..sb
    };
    // Cut after the backup: mount settles it back to the primary.
    let mut cut = VecMemory::from_bytes(before.bytes().to_vec());
    cut.write(4096, &next.encode()).unwrap();
    let mut fs = Filesystem::mount(cut).unwrap();
    let bytes = fs.memory().bytes();
    assert_eq!(image_superblock(bytes).table_init_blocks, 1);
    assert_eq!(bytes[..SUPER_SIZE], bytes[4096..4096 + SUPER_SIZE]);
    // The next create extends again and zeroes the block itself.
    let id = fs.create("ninth").unwrap();
    assert_eq!((id.slot(), id.generation()), (8, 1));
    assert_fsck_clean(&fs);
    // Cut with a torn primary after the backup: the backup is taken.
    let mut cut = VecMemory::from_bytes(before.bytes().to_vec());
    let at = ((sb.table_start + 1) * BLOCK_SIZE) as usize;
    cut.bytes_mut()[at..at + BLOCK_SIZE as usize].fill(0);
    cut.write(4096, &next.encode()).unwrap();
    cut.bytes_mut()[40] ^= 1;
    let mut fs = Filesystem::mount(cut).unwrap();
    assert_eq!(image_superblock(fs.memory().bytes()).table_init_blocks, 2);
    assert!(fs.recovered().superblock_repaired);
    fs.create("ninth").unwrap();
    assert_fsck_clean(&fs);
}

#[test]
fn a_journal_entry_past_the_prefix_is_corrupt() {
    let mem = VecMemory::new(8 * MIB);
    let fs = Filesystem::format_with_table_prefix(mem, opts(64), 1, &UNBOUNDED).unwrap();
    let mut bytes = fs.unmount().into_bytes();
    let record = Record::free(1);
    format::commit_image_transaction(&mut bytes, 7, 8, &record);
    let err = Filesystem::mount(VecMemory::from_bytes(bytes.clone()))
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains("beyond the initialised file table")),
        "{err}"
    );
    // Inside the prefix the same transaction replays.
    format::commit_image_transaction(&mut bytes, 7, 7, &record);
    Filesystem::mount(VecMemory::from_bytes(bytes)).unwrap();
}

#[test]
fn version_3_images_mount_as_they_are_and_stay_version_3() {
    // A version 3 image: the whole table zeroed, no prefix field.
    let mem = VecMemory::new(16 * MIB);
    let fs = Filesystem::format_with_table_prefix(mem, opts(512), 64, &UNBOUNDED).unwrap();
    let mut mem = fs.unmount();
    let sb = image_superblock(mem.bytes());
    assert_eq!(sb.table_init_blocks, sb.table_blocks);
    set_superblocks(&mut mem, &Superblock { version: 3, ..sb });
    let mut fs = Filesystem::mount(mem).unwrap();
    for i in 0..300 {
        fs.create(&format!("f{i}")).unwrap();
    }
    let fs = common::remount(fs);
    let bytes = fs.memory().bytes();
    let sb = image_superblock(bytes);
    assert_eq!((sb.version, sb.table_init_blocks), (3, 64));
    assert_eq!(bytes[96..104], [0; 8]);
    assert_eq!(fs.statfs().files, 300);
    assert_fsck_clean(&fs);
}
