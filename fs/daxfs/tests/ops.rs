//! Unit tests of each filesystem operation over `VecMemory`.

use daxbox_persist::{PersistentMemory, VecMemory};
use daxfs::{Error, Filesystem, FormatOptions, Probe, Segment};

const MIB: usize = 1024 * 1024;

fn fresh(mib: usize) -> Filesystem<VecMemory> {
    let opts = FormatOptions {
        uuid: [0xAB; 16],
        max_files: Some(64),
    };
    Filesystem::format(VecMemory::new(mib * MIB), opts).expect("format")
}

fn read_all(fs: &Filesystem<VecMemory>, name: &str) -> Vec<u8> {
    let id = fs.lookup(name).unwrap();
    let size = fs.stat(id).unwrap().size as usize;
    let mut buf = vec![0xEE; size + 10];
    let n = fs.read(id, 0, &mut buf).unwrap();
    assert_eq!(n, size);
    buf.truncate(n);
    buf
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn assert_clean(fs: &Filesystem<VecMemory>) {
    let report = fs.fsck();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn probe_format_mount_unmount() {
    let mem = VecMemory::new(8 * MIB);
    assert_eq!(Filesystem::probe(&mem), Probe::Blank);
    assert_eq!(Filesystem::mount(mem.clone()).err(), Some(Error::Blank));
    let fs = Filesystem::format(mem, FormatOptions::default()).unwrap();
    assert_eq!(
        Filesystem::probe(fs.memory()),
        Probe::Daxfs {
            version: daxfs::format::FORMAT_VERSION,
            clean: false
        }
    );
    let mem = fs.unmount();
    assert_eq!(
        Filesystem::probe(&mem),
        Probe::Daxfs {
            version: daxfs::format::FORMAT_VERSION,
            clean: true
        }
    );
    let fs = Filesystem::mount(mem).unwrap();
    assert_clean(&fs);
    let mut foreign = VecMemory::new(MIB);
    foreign.bytes_mut()[0] = b'X';
    assert_eq!(Filesystem::probe(&foreign), Probe::Foreign);
    assert_eq!(Filesystem::mount(foreign).err(), Some(Error::Foreign));
}

#[test]
fn create_write_read_remount() {
    let mut fs = fresh(8);
    let id = fs.create("hello").unwrap();
    assert_eq!(fs.create("hello"), Err(Error::Exists));
    assert_eq!(fs.create(""), Err(Error::InvalidName));
    assert_eq!(fs.create("a\0b"), Err(Error::InvalidName));
    let data = pattern(10_000, 1);
    fs.write(id, 0, &data).unwrap();
    fs.write(id, 5000, b"middle").unwrap();
    let mut expect = data.clone();
    expect[5000..5006].copy_from_slice(b"middle");
    assert_eq!(read_all(&fs, "hello"), expect);
    // Short read at end of file, empty past it.
    let mut buf = [0u8; 100];
    assert_eq!(fs.read(id, 9950, &mut buf).unwrap(), 50);
    assert_eq!(fs.read(id, 20_000, &mut buf).unwrap(), 0);
    assert_clean(&fs);
    let fs = Filesystem::mount(fs.unmount()).unwrap();
    assert_eq!(fs.lookup("hello").unwrap(), id, "FileId survives remount");
    assert_eq!(read_all(&fs, "hello"), expect);
    assert_clean(&fs);
}

#[test]
fn sparse_files_and_extent_query() {
    let mut fs = fresh(16);
    let id = fs.create("sparse").unwrap();
    fs.write(id, 100_000, b"x").unwrap();
    let content = read_all(&fs, "sparse");
    assert_eq!(content.len(), 100_001);
    assert!(content[..100_000].iter().all(|&b| b == 0));
    assert_eq!(content[100_000], b'x');
    let segs = fs.extents(id, 0, u64::MAX).unwrap();
    assert_eq!(
        segs,
        vec![
            Segment {
                offset: 0,
                len: 98_304,
                data: false
            },
            Segment {
                offset: 98_304,
                len: 100_001 - 98_304,
                data: true
            },
        ]
    );
    assert_eq!(fs.stat(id).unwrap().allocated_bytes, 4096);
    assert_clean(&fs);
}

#[test]
fn truncate_grow_and_shrink_reads_zeros() {
    let mut fs = fresh(8);
    let id = fs.create("t").unwrap();
    fs.write(id, 0, &pattern(9000, 7)).unwrap();
    fs.truncate(id, 5000).unwrap();
    assert_eq!(read_all(&fs, "t"), pattern(5000, 7));
    fs.truncate(id, 12_000).unwrap();
    let mut expect = pattern(5000, 7);
    expect.resize(12_000, 0);
    assert_eq!(read_all(&fs, "t"), expect);
    // A write past the end after a shrink: the gap reads as zeros.
    fs.truncate(id, 100).unwrap();
    fs.write(id, 6000, b"zz").unwrap();
    let mut expect = pattern(100, 7);
    expect.resize(6000, 0);
    expect.extend_from_slice(b"zz");
    assert_eq!(read_all(&fs, "t"), expect);
    fs.truncate(id, 0).unwrap();
    assert_eq!(fs.stat(id).unwrap().allocated_bytes, 0);
    assert_clean(&fs);
}

#[test]
fn unlink_makes_ids_stale_and_frees_space() {
    let mut fs = fresh(8);
    let free0 = fs.statfs().free_blocks;
    let id = fs.create("gone").unwrap();
    fs.write(id, 0, &pattern(50_000, 3)).unwrap();
    assert!(fs.statfs().free_blocks < free0);
    fs.unlink("gone").unwrap();
    assert_eq!(fs.unlink("gone"), Err(Error::NotFound));
    assert_eq!(fs.read(id, 0, &mut [0; 4]), Err(Error::StaleFile));
    assert_eq!(fs.write(id, 0, b"x"), Err(Error::StaleFile));
    assert_eq!(fs.statfs().free_blocks, free0);
    let again = fs.create("gone").unwrap();
    assert_ne!(again, id, "a reused slot gets a new generation");
    assert_clean(&fs);
}

#[test]
fn rename_replaces_atomically_and_keeps_ids() {
    let mut fs = fresh(8);
    let a = fs.create("a").unwrap();
    let b = fs.create("b").unwrap();
    fs.write(a, 0, b"AAAA").unwrap();
    fs.write(b, 0, b"BBBB").unwrap();
    fs.rename("a", "dir/c").unwrap();
    assert_eq!(fs.lookup("dir/c").unwrap(), a);
    assert_eq!(fs.lookup("a"), Err(Error::NotFound));
    fs.rename("dir/c", "b").unwrap();
    assert_eq!(fs.lookup("b").unwrap(), a);
    assert_eq!(fs.read(b, 0, &mut [0; 4]), Err(Error::StaleFile));
    assert_eq!(read_all(&fs, "b"), b"AAAA");
    assert_eq!(fs.list(None, 10).len(), 1);
    assert_clean(&fs);
    let fs = Filesystem::mount(fs.into_memory()).unwrap();
    assert_eq!(read_all(&fs, "b"), b"AAAA");
}

#[test]
fn list_is_sorted_and_paginated() {
    let mut fs = fresh(8);
    for name in ["delta", "alpha", "charlie", "bravo", "echo"] {
        fs.create(name).unwrap();
    }
    let names = |v: Vec<daxfs::DirEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(fs.list(None, 2)), ["alpha", "bravo"]);
    assert_eq!(names(fs.list(Some("bravo"), 2)), ["charlie", "delta"]);
    assert_eq!(names(fs.list(Some("delta"), 10)), ["echo"]);
    assert_eq!(names(fs.list(Some("zzz"), 10)), Vec::<String>::new());
}

#[test]
fn clone_shares_blocks_and_copies_on_write() {
    let mut fs = fresh(32);
    let src = fs.create("src").unwrap();
    let data = pattern(5 * MIB, 9);
    fs.write(src, 0, &data).unwrap();
    let free_before = fs.statfs().free_blocks;
    let dst = fs.clone_file("src", "dst").unwrap();
    assert_eq!(fs.statfs().free_blocks, free_before, "clone copies no data");
    assert_eq!(
        fs.stat(dst).unwrap().shared_bytes,
        fs.stat(dst).unwrap().allocated_bytes
    );
    fs.write(dst, 4096 * 3 + 10, b"changed").unwrap();
    assert_eq!(
        read_all(&fs, "src"),
        data,
        "source untouched by a write to the clone"
    );
    let mut expect = data.clone();
    expect[4096 * 3 + 10..4096 * 3 + 17].copy_from_slice(b"changed");
    assert_eq!(read_all(&fs, "dst"), expect);
    // A large file copies on write by block too (FORMAT.md "Copy-on-write
    // of shared blocks"): the touched chunk is no longer huge-page
    // mappable until `compact` gathers it.
    assert_eq!(fs.statfs().free_blocks, free_before - 1, "one block copied");
    assert_eq!(fs.stat(dst).unwrap().huge_bytes, 4 * MIB as u64);
    assert_eq!(fs.stat(dst).unwrap().shared_bytes, 6 * MIB as u64 - 4096);
    assert_eq!(fs.compact(dst).unwrap(), 1);
    assert_eq!(
        fs.statfs().free_blocks,
        free_before - 512,
        "one chunk gathered"
    );
    assert_eq!(fs.stat(dst).unwrap().huge_bytes, 6 * MIB as u64);
    assert_eq!(fs.stat(dst).unwrap().shared_bytes, 4 * MIB as u64);
    assert_eq!(read_all(&fs, "dst"), expect);
    // A small file copies on write by block.
    fs.create("small").unwrap();
    let small = fs.lookup("small").unwrap();
    fs.write(small, 0, &pattern(20_000, 1)).unwrap();
    let small_clone = fs.clone_file("small", "small2").unwrap();
    let free = fs.statfs().free_blocks;
    fs.write(small_clone, 5000, b"x").unwrap();
    assert_eq!(fs.statfs().free_blocks, free - 1, "one block copied");
    fs.unlink("small").unwrap();
    fs.unlink("small2").unwrap();
    assert_clean(&fs);
    fs.unlink("src").unwrap();
    assert_eq!(read_all(&fs, "dst"), expect);
    assert_eq!(fs.stat(dst).unwrap().shared_bytes, 0);
    assert_clean(&fs);
    let fs = Filesystem::mount(fs.into_memory()).unwrap();
    assert_eq!(read_all(&fs, "dst"), expect);
    assert_clean(&fs);
}

#[test]
fn hold_keeps_blocks_after_unlink_and_truncate() {
    let mut fs = fresh(16);
    let id = fs.create("held").unwrap();
    let data = pattern(64 * 1024, 5);
    fs.write(id, 0, &data).unwrap();
    let ranges = fs.dax_ranges(id, 0, 64 * 1024).unwrap();
    assert_eq!(ranges.iter().map(|r| r.len).sum::<u64>(), 64 * 1024);
    let hold = fs.hold(id, 0, 64 * 1024).unwrap();
    assert_eq!(hold.pinned_bytes(), 64 * 1024);
    let free_before = fs.statfs().free_blocks;
    fs.truncate(id, 0).unwrap();
    fs.unlink("held").unwrap();
    assert_eq!(
        fs.statfs().free_blocks,
        free_before,
        "held blocks are not freed"
    );
    // Churn: allocate everything that is free; the held bytes must survive.
    let filler = fs.create("filler").unwrap();
    let mut off = 0u64;
    while fs.write(filler, off, &[0x55; 65536]).is_ok() {
        off += 65536;
    }
    for r in &ranges {
        let mut buf = vec![0; r.len as usize];
        fs.memory().read(r.region_offset, &mut buf).unwrap();
        let at = r.file_offset as usize;
        assert_eq!(buf, data[at..at + r.len as usize], "held block reused");
    }
    assert_clean(&fs);
    let before = fs.statfs().free_blocks;
    fs.release(hold);
    assert_eq!(fs.statfs().free_blocks, before + 16);
    assert_clean(&fs);
}

#[test]
fn write_zeroes_and_punch() {
    let mut fs = fresh(16);
    let id = fs.create("z").unwrap();
    let data = pattern(40_000, 2);
    fs.write(id, 0, &data).unwrap();
    let alloc = fs.stat(id).unwrap().allocated_bytes;
    fs.write_zeroes(id, 1000, 20_000, false).unwrap();
    let mut expect = data.clone();
    expect[1000..21_000].fill(0);
    assert_eq!(read_all(&fs, "z"), expect);
    assert_eq!(fs.stat(id).unwrap().allocated_bytes, alloc);
    fs.write_zeroes(id, 1000, 20_000, true).unwrap();
    assert_eq!(read_all(&fs, "z"), expect);
    // Blocks 1..5 (4096..20480) are whole inside the range: punched.
    assert_eq!(fs.stat(id).unwrap().allocated_bytes, alloc - 4 * 4096);
    assert_clean(&fs);
}

#[test]
fn large_files_get_2mib_aligned_extents_after_churn() {
    let opts = FormatOptions {
        uuid: [2; 16],
        max_files: Some(1024),
    };
    let mut fs = Filesystem::format(VecMemory::new(64 * MIB), opts).unwrap();
    // Churn of small files: create, write, unlink in a mixed pattern.
    for round in 0..20u32 {
        for i in 0..30u32 {
            let name = format!("small-{round}-{i}");
            let id = fs.create(&name).unwrap();
            fs.write(id, 0, &pattern(((i % 7) as usize + 1) * 3000, i as u8))
                .unwrap();
        }
        for i in (0..30u32).filter(|i| i % 3 != 0) {
            fs.unlink(&format!("small-{round}-{i}")).unwrap();
        }
        if round % 4 == 3 {
            for i in (0..30u32).filter(|i| i % 3 == 0) {
                fs.unlink(&format!("small-{}-{i}", round - 1)).unwrap();
            }
        }
    }
    assert_clean(&fs);
    let big = fs.create("big").unwrap();
    let data = pattern(8 * MIB, 4);
    fs.write(big, 0, &data).unwrap();
    let st = fs.stat(big).unwrap();
    // Chunk 0 of the file may start in small blocks; every later 2 MiB of
    // the file must be huge-page mappable.
    assert!(
        st.huge_bytes >= 6 * MIB as u64,
        "huge bytes {} after churn",
        st.huge_bytes
    );
    for r in fs.dax_ranges(big, 2 * MIB as u64, 6 * MIB as u64).unwrap() {
        assert_eq!(
            r.region_offset % (2 * MIB as u64),
            r.file_offset % (2 * MIB as u64)
        );
    }
    assert_eq!(read_all(&fs, "big"), data);
    assert_clean(&fs);
}

#[test]
fn many_extents_use_overflow_blocks() {
    let mut fs = fresh(16);
    let a = fs.create("frag").unwrap();
    let b = fs.create("other").unwrap();
    // Interleave writes so the two files' blocks alternate: many extents.
    // File "frag" stays under 2 MiB so it gets no whole-chunk extents.
    for i in 0..250u64 {
        fs.write(a, i * 8192, &[i as u8; 4096]).unwrap();
        fs.write(b, i * 4096, &[1; 4096]).unwrap();
    }
    assert!(fs.stat(a).unwrap().extent_count >= 250);
    assert_clean(&fs);
    let fs = Filesystem::mount(fs.into_memory()).unwrap();
    let content = read_all(&fs, "frag");
    for i in 0..250usize {
        assert!(content[i * 8192..i * 8192 + 4096]
            .iter()
            .all(|&x| x == i as u8));
        assert!(
            content[i * 8192 + 4096..(i * 8192 + 8192).min(content.len())]
                .iter()
                .all(|&x| x == 0)
        );
    }
    assert_clean(&fs);
}

#[test]
fn no_space_is_an_error_and_leaks_nothing() {
    let mut fs = fresh(4);
    let id = fs.create("fill").unwrap();
    let free = fs.statfs().free_blocks;
    let err = fs.write(id, 0, &vec![1; (free as usize + 1) * 4096]);
    assert_eq!(err, Err(Error::NoSpace));
    assert_eq!(fs.statfs().free_blocks, free);
    assert_clean(&fs);
}

#[test]
fn file_table_full() {
    let mut fs = Filesystem::format(
        VecMemory::new(MIB),
        FormatOptions {
            uuid: [1; 16],
            max_files: Some(3),
        },
    )
    .unwrap();
    for n in ["a", "b", "c"] {
        fs.create(n).unwrap();
    }
    assert_eq!(fs.create("d"), Err(Error::NoFileSlots));
}

#[test]
fn truncated_device_is_refused() {
    let fs = fresh(8);
    let mut bytes = fs.unmount().into_bytes();
    bytes.truncate(4 * MIB);
    let err = Filesystem::mount(VecMemory::from_bytes(bytes))
        .err()
        .unwrap();
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
}

#[test]
fn newer_version_is_refused() {
    let fs = fresh(4);
    let mut mem = fs.unmount();
    for block in 0..2 {
        let b = &mut mem.bytes_mut()[block * 4096..];
        b[8] = 5;
    }
    let err = Filesystem::mount(mem).err().unwrap();
    assert_eq!(
        err,
        Error::UnsupportedVersion {
            found: 5,
            supported: 4
        }
    );
    assert_eq!(
        err.to_string(),
        "daxfs format version 5 is newer than the supported version 4"
    );
}

#[test]
fn damaged_primary_superblock_is_repaired_from_backup() {
    let mut fs = fresh(4);
    let id = fs.create("keep").unwrap();
    fs.write(id, 0, b"data").unwrap();
    let mut mem = fs.unmount();
    mem.bytes_mut()[40] ^= 0x10;
    let report = Filesystem::fsck_image(&mem);
    assert!(!report.is_clean());
    let fs = Filesystem::mount(mem).unwrap();
    assert_eq!(read_all(&fs, "keep"), b"data");
    assert_clean(&fs);
}

#[test]
fn size_limits_are_errors() {
    let mut fs = fresh(4);
    let id = fs.create("big").unwrap();
    let max = daxfs::format::MAX_FILE_SIZE;
    assert_eq!(fs.write(id, max, b"x"), Err(Error::FileTooLarge));
    assert_eq!(fs.write(id, u64::MAX - 1, b"xy"), Err(Error::FileTooLarge));
    assert_eq!(fs.truncate(id, max + 1), Err(Error::FileTooLarge));
    // A write far into a sparse large file costs one 2 MiB chunk.
    fs.write(id, max - 1, b"z").unwrap();
    assert_eq!(fs.stat(id).unwrap().size, max);
    assert_eq!(fs.stat(id).unwrap().allocated_bytes, 2 * MIB as u64);
    let mut b = [0u8; 2];
    assert_eq!(fs.read(id, max - 2, &mut b).unwrap(), 2);
    assert_eq!(b, [0, b'z']);
    assert_clean(&fs);
    let fs = Filesystem::mount(fs.into_memory()).unwrap();
    assert_clean(&fs);
}

#[test]
fn held_bytes_do_not_change_under_writes() {
    let mut fs = fresh(8);
    let id = fs.create("f").unwrap();
    fs.write(id, 0, &[1; 8192]).unwrap();
    let ranges = fs.dax_ranges(id, 0, 8192).unwrap();
    let hold = fs.hold(id, 0, 8192).unwrap();
    fs.write(id, 100, &[2; 5000]).unwrap();
    fs.write_zeroes(id, 6000, 100, false).unwrap();
    for r in &ranges {
        let mut buf = vec![0; r.len as usize];
        fs.memory().read(r.region_offset, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 1), "held bytes changed");
    }
    let mut expect = vec![1u8; 8192];
    expect[100..5100].fill(2);
    expect[6000..6100].fill(0);
    assert_eq!(read_all(&fs, "f"), expect);
    assert_clean(&fs);
    let free = fs.statfs().free_blocks;
    fs.release(hold);
    assert_eq!(
        fs.statfs().free_blocks,
        free + 2,
        "the copied-away blocks are freed on release"
    );
    assert_clean(&fs);
}

#[test]
fn no_space_for_the_overflow_block_rolls_back() {
    let mut fs = fresh(4);
    let frag = fs.create("frag").unwrap();
    for i in 0..12u64 {
        fs.write(frag, i * 8192, &[i as u8 + 1; 4096]).unwrap();
    }
    assert_eq!(
        fs.stat(frag).unwrap().extent_count,
        12,
        "all extents inline"
    );
    let before = read_all(&fs, "frag");
    let filler = fs.create("filler").unwrap();
    let mut off = 0;
    while fs.write(filler, off, &[9; 4096]).is_ok() {
        off += 4096;
    }
    assert!(
        fs.stat(filler).unwrap().extent_count <= 3,
        "appends stay contiguous"
    );
    assert_eq!(fs.statfs().free_blocks, 0);
    fs.truncate(filler, off - 4096).unwrap();
    let pad = fs.create("pad").unwrap();
    let mut off = 0;
    while fs.statfs().free_blocks > 1 {
        fs.write(pad, off, &[7; 4096]).unwrap();
        off += 4096;
    }
    // The 13th extent needs one data block and one overflow block: only
    // one is free.
    assert_eq!(
        fs.write(frag, 30 * 4096, &[0xAA; 4096]),
        Err(Error::NoSpace)
    );
    assert_eq!(fs.statfs().free_blocks, 1, "nothing leaked");
    assert_eq!(read_all(&fs, "frag"), before);
    assert_eq!(fs.stat(frag).unwrap().extent_count, 12);
    assert_clean(&fs);
    let fs = Filesystem::mount(fs.into_memory()).unwrap();
    assert_eq!(read_all(&fs, "frag"), before);
    assert_clean(&fs);
}

/// A small file (single-block allocation) with every other block of its
/// first `blocks` written, so its map has `blocks / 2` extents.
fn fragmented(fs: &mut Filesystem<VecMemory>, name: &str, blocks: u64) -> daxfs::FileId {
    let id = fs.create(name).unwrap();
    for b in (0..blocks).step_by(2) {
        fs.write(id, b * 4096, &pattern(4096, b as u8)).unwrap();
    }
    // Written in this order the blocks are physically contiguous: punch
    // every other one of a second file in between to split them.
    id
}

#[test]
fn write_zeroes_step_does_what_one_write_zeroes_does_in_bounded_parts() {
    for punch in [true, false] {
        for (offset, len) in [(100u64, 2_000_000u64), (0, 4096 * 400), (4096 * 7 + 5, 1)] {
            let mut whole = fresh(16);
            let a = fragmented(&mut whole, "f", 400);
            let mut parts = fresh(16);
            let b = fragmented(&mut parts, "f", 400);
            whole.write_zeroes(a, offset, len, punch).unwrap();
            let budget = 16;
            let mut done = 0;
            let mut calls = 0;
            while done < len {
                let before = parts.extents(b, 0, u64::MAX).unwrap();
                let n = parts
                    .write_zeroes_step(b, offset + done, len - done, punch, budget)
                    .unwrap();
                assert!(n >= 1 && n <= len - done, "{n}");
                // Punching: at most `budget` mapped blocks in the part.
                let mapped: u64 = before
                    .iter()
                    .filter(|s| s.data)
                    .map(|s| {
                        let (a, b) = (
                            s.offset.max(offset + done),
                            (s.offset + s.len).min(offset + done + n),
                        );
                        b.saturating_sub(a).div_ceil(4096)
                    })
                    .sum();
                if punch {
                    assert!(mapped <= budget + 1, "{mapped} blocks in one part");
                } else {
                    assert!(n <= budget * 4096, "{n} bytes in one part");
                }
                done += n;
                calls += 1;
            }
            assert!(len <= 4096 || calls > 1, "one call did it all");
            assert_eq!(
                read_all(&whole, "f"),
                read_all(&parts, "f"),
                "{punch} {offset} {len}"
            );
            assert_eq!(
                whole.extents(a, 0, u64::MAX).unwrap(),
                parts.extents(b, 0, u64::MAX).unwrap()
            );
            assert_eq!(whole.statfs().free_blocks, parts.statfs().free_blocks);
            assert_clean(&parts);
        }
    }
}

#[test]
fn punching_steps_pass_over_holes_whole() {
    let mut fs = fresh(16);
    let id = fs.create("sparse").unwrap();
    fs.truncate(id, 1 << 30).unwrap();
    fs.write(id, 900 << 20, &[1; 4096]).unwrap();
    // 900 MiB of hole, then data: the first part reaches the data.
    let n = fs.write_zeroes_step(id, 0, 1 << 30, true, 1).unwrap();
    assert_eq!(n, (900 << 20) + 4096);
    // The write took a whole 2 MiB chunk (a large file): 511 blocks left.
    let data: Vec<(u64, u64)> = fs
        .extents(id, 0, 1 << 30)
        .unwrap()
        .iter()
        .filter(|s| s.data)
        .map(|s| (s.offset, s.len))
        .collect();
    assert_eq!(data, [(n, (2 << 20) - 4096)]);
    let rest = fs
        .write_zeroes_step(id, n, (1 << 30) - n, true, 511)
        .unwrap();
    assert_eq!(n + rest, 1 << 30, "the hole after the chunk is free");
    assert_eq!(fs.extents(id, 0, 1 << 30).unwrap().len(), 1);
    assert_clean(&fs);
}

#[test]
fn extents_limited_is_a_bounded_prefix_of_extents() {
    let mut fs = fresh(16);
    let id = fragmented(&mut fs, "f", 64);
    let size = fs.stat(id).unwrap().size;
    let full = fs.extents(id, 0, size).unwrap();
    assert_eq!(full.len(), 63, "{full:?}");
    for offset in [0, 100, 4096, 4096 * 3 + 1] {
        let full = fs.extents(id, offset, size).unwrap();
        for max in [1, 2, 3, 10, 62, 63, 64, 1000] {
            let limited = fs.extents_limited(id, offset, size, max).unwrap();
            assert!(
                !limited.is_empty() && limited.len() <= max,
                "{max}: {limited:?}"
            );
            // The same segments as far as it goes; the last may be shorter.
            let last = limited.len() - 1;
            assert_eq!(limited[..last], full[..last]);
            assert_eq!(limited[last].offset, full[last].offset);
            assert_eq!(limited[last].data, full[last].data);
            assert!(limited[last].len <= full[last].len);
            if max >= full.len() {
                assert_eq!(limited, full);
            }
        }
    }
}
