//! `daxfs_mount`: daxfs `probe`, `fsck_image` and `mount` on damaged
//! images, then operations on whatever mounts.
//!
//! The image is a formatted 1 MiB template (fragmented files with an
//! overflow chain, a clone, a sparse file, a freed slot; see
//! [`template`]) patched by the input. Unless the input says otherwise the
//! harness then recomputes every checksum the format has (both superblock
//! copies, the journal transaction and the records inside it, every file
//! record, every block that starts with the overflow magic), so the
//! mutations reach the checks behind the checksums; it can also mark the
//! journal committed (replay at mount) and the state word dirty.
//!
//! Input: byte 0 = mode (bit 0: keep checksums as patched, bit 1: commit
//! the journal, bit 2: mark dirty, bit 3: put the image at the start of a
//! 1 TiB sparse region, so the superblock may declare a huge filesystem), byte 1 = number of patches, the patches
//! (region selector, offset, length, bytes), then operations run on a
//! successful mount.
//!
//! Checked: no panic, no abort on allocation; after a successful mount
//! `fsck` is clean, is still clean after the operations, and the image
//! mounts clean again after a crash (no unmount).

use std::sync::OnceLock;

use daxbox_persist::{PersistentMemory, VecMemory};
use daxfs::format::{
    checksum_skipping, journal_checksum, JournalHeader, Superblock, BLOCK_SIZE,
    JOURNAL_ENTRIES_OFFSET, JOURNAL_ENTRY_SIZE, JOURNAL_HEADER_OFFSET, JOURNAL_HEADER_SIZE,
    JOURNAL_MAGIC, OVERFLOW_MAGIC, RECORD_MAGIC, RECORD_SIZE, STATE_DIRTY, STATE_WORD_OFFSET,
    SUPER_MAGIC, SUPER_SIZE,
};
use daxfs::{Filesystem, FormatOptions};

use crate::input::Input;
use crate::sparse::SparseMemory;

/// Size of the image.
pub const IMAGE_SIZE: usize = 1 << 20;
/// Size of the sparse region the image is placed in with mode bit 3.
pub const SPARSE_SIZE: u64 = 1 << 40;
const BLOCK: usize = BLOCK_SIZE as usize;
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "new"];

/// The formatted image every input starts from.
pub fn template() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut fs = Filesystem::format(
            VecMemory::new(IMAGE_SIZE),
            FormatOptions {
                uuid: [0xa5; 16],
                max_files: Some(16),
            },
        )
        .expect("format the template");
        let a = fs.create("a").unwrap();
        let b = fs.create("b").unwrap();
        // Interleaved single-block writes: both files get 20 extents, more
        // than fit in a record, so each has an overflow block.
        for i in 0..20u64 {
            fs.write(a, i * 2 * BLOCK_SIZE, &[i as u8 + 1; BLOCK])
                .unwrap();
            fs.write(b, i * 2 * BLOCK_SIZE, &[i as u8 + 101; BLOCK])
                .unwrap();
        }
        fs.clone_file("a", "c").unwrap();
        let d = fs.create("d").unwrap();
        fs.truncate(d, 1 << 20).unwrap();
        fs.write(d, 300_000, b"sparse").unwrap();
        fs.create("gone").unwrap();
        fs.unlink("gone").unwrap();
        fs.unmount().into_bytes()
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn fix_at(bytes: &mut [u8], at: usize) {
    let crc = checksum_skipping(bytes, at);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Geometry of the template (where the metadata is).
fn geometry() -> Superblock {
    let sb: [u8; SUPER_SIZE] = template()[..SUPER_SIZE].try_into().unwrap();
    Superblock::decode(&sb).expect("template superblock")
}

/// Recomputes every checksum of `image` (see the module comment).
pub fn fix_checksums(image: &mut [u8]) {
    let sb = geometry();
    for copy in 0..2 {
        let at = copy * BLOCK;
        if image[at..at + 8] == SUPER_MAGIC {
            fix_at(&mut image[at..at + SUPER_SIZE], 92);
        }
    }
    let fix_record = |record: &mut [u8]| {
        if u32_at(record, 0) == RECORD_MAGIC {
            fix_at(record, 60);
        }
    };
    let table = sb.table_start as usize * BLOCK..sb.data_start as usize * BLOCK;
    for record in image[table].chunks_exact_mut(RECORD_SIZE) {
        fix_record(record);
    }
    let data = sb.data_start as usize * BLOCK..image.len();
    for block in image[data].chunks_exact_mut(BLOCK) {
        if u32_at(block, 0) == OVERFLOW_MAGIC {
            fix_at(block, 4);
        }
    }
    let jo = sb.journal_start as usize * BLOCK;
    let header_at = jo + JOURNAL_HEADER_OFFSET as usize;
    let header: [u8; JOURNAL_HEADER_SIZE] = image[header_at..header_at + JOURNAL_HEADER_SIZE]
        .try_into()
        .unwrap();
    if u32_at(&header, 0) == JOURNAL_MAGIC {
        if let Ok(mut h) = JournalHeader::decode(&header) {
            let start = jo + JOURNAL_ENTRIES_OFFSET as usize;
            let end = start + h.entries as usize * JOURNAL_ENTRY_SIZE;
            for entry in image[start..end].chunks_exact_mut(JOURNAL_ENTRY_SIZE) {
                fix_record(&mut entry[8..]);
            }
            h.crc = journal_checksum(&h, &image[start..end]);
            image[header_at..header_at + JOURNAL_HEADER_SIZE].copy_from_slice(&h.encode());
        }
    }
}

/// Applies the input's patches to `image`.
fn patch(image: &mut [u8], input: &mut Input) {
    let sb = geometry();
    let count = input.u8() % 32;
    for _ in 0..count {
        if input.is_empty() {
            break;
        }
        let selector = input.u8();
        // Low 3 bits: where; the next 3: length - 1.
        let region = match selector & 7 {
            0 => 0..SUPER_SIZE,
            1 => BLOCK..BLOCK + SUPER_SIZE,
            2 => sb.journal_start as usize * BLOCK..(sb.journal_start + 1) as usize * BLOCK,
            3 => sb.table_start as usize * BLOCK..sb.data_start as usize * BLOCK,
            // Overflow blocks and data: the template's allocations start here.
            4 => sb.data_start as usize * BLOCK..(sb.data_start as usize + 64) * BLOCK,
            _ => 0..image.len(),
        };
        let at = region.start + input.u32() as usize % region.len();
        let len = 1 + usize::from(selector >> 3) % 8;
        let bytes = input.bytes(len);
        let end = (at + bytes.len()).min(image.len());
        image[at..end].copy_from_slice(&bytes[..end - at]);
    }
}

fn assert_clean<M: PersistentMemory>(fs: &Filesystem<M>, when: &str) {
    let report = fs.fsck();
    assert!(report.is_clean(), "fsck {when}: {:?}", report.problems);
}

/// Runs up to 16 operations from `input` on a mounted filesystem, then
/// checks it.
fn operate<M: PersistentMemory>(fs: &mut Filesystem<M>, input: &mut Input) {
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..16 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let name = NAMES[usize::from(op >> 4) % NAMES.len()];
        let other = NAMES[input.below(NAMES.len())];
        let offset = u64::from(input.u32()) % (2 << 20);
        let len = input.u16() as usize;
        let what = match op % 8 {
            0 => fs.create(name).map(|_| ()),
            1 => fs
                .lookup(name)
                .and_then(|id| fs.write(id, offset, &buf[..len % buf.len()])),
            2 => fs
                .lookup(name)
                .and_then(|id| fs.read(id, offset, &mut buf[..len % 65536]).map(|_| ())),
            3 => fs.lookup(name).and_then(|id| fs.truncate(id, offset)),
            4 => fs.clone_file(name, other).map(|_| ()),
            5 => fs.unlink(name),
            6 => fs.rename(name, other),
            _ => fs
                .lookup(name)
                .and_then(|id| fs.write_zeroes(id, offset, len as u64 * 16, op & 8 != 0)),
        };
        let _ = what;
        buf.iter_mut().for_each(|b| *b = b.wrapping_add(op | 1));
    }
    assert_clean(fs, "after the operations");
    let _ = fs.list(None, 100);
    let _ = fs.statfs();
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut image = template().to_vec();
    patch(&mut image, &mut input);
    if mode & 2 != 0 {
        // Commit word = the journal's sequence: mount replays it.
        let jo = geometry().journal_start as usize * BLOCK;
        let h = jo + JOURNAL_HEADER_OFFSET as usize;
        let sequence: [u8; 8] = image[h + 8..h + 16].try_into().unwrap();
        image[jo..jo + 8].copy_from_slice(&sequence);
    }
    if mode & 4 != 0 {
        let at = STATE_WORD_OFFSET as usize;
        image[at..at + 8].copy_from_slice(&STATE_DIRTY.to_le_bytes());
    }
    if mode & 1 == 0 {
        fix_checksums(&mut image);
    }
    if mode & 8 != 0 {
        // The image at the start of a 1 TiB sparse region: the superblock
        // may now describe a filesystem of any size up to that.
        check(SparseMemory::new(SPARSE_SIZE, &image), &mut input);
    } else {
        check(VecMemory::from_bytes(image), &mut input);
    }
}

/// Probe, fsck_image, mount; on success operations, fsck, crash, remount.
fn check<M: PersistentMemory>(mem: M, input: &mut Input) {
    let _ = Filesystem::probe(&mem);
    let _ = Filesystem::fsck_image(&mem);
    let Ok(mut fs) = Filesystem::mount(mem) else {
        return;
    };
    assert_clean(&fs, "right after mount");
    operate(&mut fs, input);
    // A crash now (no unmount) must leave an image that mounts clean.
    let fs = Filesystem::mount(fs.into_memory()).expect("mount after a crash");
    assert_clean(&fs, "after a crash and remount");
}
