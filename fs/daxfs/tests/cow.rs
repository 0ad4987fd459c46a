//! Fine-grained copy-on-write of clones (FORMAT.md "Copy-on-write of
//! shared blocks", "Compaction"): a small write into a shared chunk copies
//! only the blocks it touches; `compact` gathers a diverged chunk into one
//! private 2 MiB-aligned chunk; space accounting stays exact.

use daxbox_persist::VecMemory;
use daxfs::{Filesystem, FormatOptions};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

fn fresh(mib: u64) -> Filesystem<VecMemory> {
    let opts = FormatOptions {
        uuid: [0xC0; 16],
        max_files: Some(64),
    };
    Filesystem::format(VecMemory::new((mib * MIB) as usize), opts).expect("format")
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn read_all(fs: &Filesystem<VecMemory>, name: &str) -> Vec<u8> {
    let id = fs.lookup(name).unwrap();
    let size = fs.stat(id).unwrap().size;
    let mut buf = vec![0xEE; size as usize];
    assert_eq!(fs.read(id, 0, &mut buf).unwrap(), size as usize);
    buf
}

fn assert_clean(fs: &Filesystem<VecMemory>) {
    let report = fs.fsck();
    assert!(report.is_clean(), "{report}");
}

/// `vm` and `gold` read as given, and fsck is clean.
fn assert_both(fs: &Filesystem<VecMemory>, vm: &[u8], gold: &[u8]) {
    assert!(read_all(fs, "vm") == vm, "vm differs");
    assert!(read_all(fs, "gold") == gold, "gold differs");
    assert_clean(fs);
}

/// A 16 MiB file written in 2 MiB pieces (8 huge chunks) and its clone.
fn cloned(fs: &mut Filesystem<VecMemory>) -> Vec<u8> {
    let data = pattern(16 * MIB, 1);
    let id = fs.create("gold").unwrap();
    for c in 0..8 {
        let at = c * 2 * MIB;
        fs.write(id, at, &data[at as usize..(at + 2 * MIB) as usize])
            .unwrap();
    }
    fs.clone_file("gold", "vm").unwrap();
    data
}

#[test]
fn small_write_into_a_shared_chunk_copies_one_block() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    let free = fs.statfs().free_blocks;
    fs.write(vm, 3 * MIB + 5 * BLOCK + 100, &[7u8; 10]).unwrap();
    let used = free - fs.statfs().free_blocks;
    // One data block, plus at most the overflow blocks of the new map.
    assert!(
        used <= 2,
        "a 10-byte write into a cloned chunk took {used} blocks"
    );
    let st = fs.stat(vm).unwrap();
    assert_eq!(st.shared_bytes, 16 * MIB - BLOCK);
    let mut want = gold.clone();
    want[(3 * MIB + 5 * BLOCK + 100) as usize..][..10].fill(7);
    assert_both(&fs, &want, &gold);
}

#[test]
fn writes_into_either_side_stay_private_and_unlink_frees_exactly() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let empty = fs.statfs().free_blocks + 8 * 512;
    let (g, v) = (fs.lookup("gold").unwrap(), fs.lookup("vm").unwrap());
    let mut want_g = gold.clone();
    let mut want_v = gold.clone();
    let mut x = 99u64;
    for i in 0..200u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let block = (x >> 33) % (16 * MIB / BLOCK);
        let len = 1 + (x >> 20) % 6000;
        let at = block * BLOCK + (x >> 40) % BLOCK;
        let at = at.min(16 * MIB - len);
        let byte = i as u8;
        let (id, want) = if i % 3 == 0 {
            (g, &mut want_g)
        } else {
            (v, &mut want_v)
        };
        fs.write(id, at, &vec![byte; len as usize]).unwrap();
        want[at as usize..(at + len) as usize].fill(byte);
    }
    assert_eq!(read_all(&fs, "gold"), want_g);
    assert_eq!(read_all(&fs, "vm"), want_v);
    assert_clean(&fs);
    let mem = fs.unmount();
    let mut fs = Filesystem::mount(mem).unwrap();
    assert_eq!(read_all(&fs, "gold"), want_g);
    assert_eq!(read_all(&fs, "vm"), want_v);
    assert_clean(&fs);
    fs.unlink("gold").unwrap();
    assert_eq!(read_all(&fs, "vm"), want_v);
    assert_clean(&fs);
    fs.unlink("vm").unwrap();
    assert_eq!(fs.statfs().free_blocks, empty, "space leaked");
    assert_clean(&fs);
}

#[test]
fn compact_gathers_a_diverged_chunk_into_one_aligned_chunk() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    assert_eq!(fs.stat(vm).unwrap().huge_bytes, 16 * MIB);
    let mut want = gold.clone();
    for b in [3u64, 9, 200, 511] {
        let at = 4 * MIB + b * BLOCK;
        fs.write(vm, at, &[0x5A; 4096]).unwrap();
        want[at as usize..(at + BLOCK) as usize].fill(0x5A);
    }
    assert_eq!(fs.stat(vm).unwrap().huge_bytes, 14 * MIB);
    let free = fs.statfs().free_blocks;
    let done = fs.compact(vm).unwrap();
    assert_eq!(done, 1, "one chunk was diverged");
    let st = fs.stat(vm).unwrap();
    assert_eq!(st.huge_bytes, 16 * MIB);
    assert_eq!(st.shared_bytes, 14 * MIB);
    // A fresh 2 MiB chunk in, the 4 private blocks out.
    assert_eq!(free + 4 - fs.statfs().free_blocks, 512);
    assert_both(&fs, &want, &gold);
    assert_eq!(fs.compact(vm).unwrap(), 0, "nothing left to compact");
    let mem = fs.unmount();
    let fs = Filesystem::mount(mem).unwrap();
    assert_eq!(read_all(&fs, "vm"), want);
    assert_clean(&fs);
}

#[test]
fn the_idle_step_gathers_only_chunks_with_enough_private_blocks_one_per_call() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    let mut want = gold.clone();
    // Chunk 2: 4 private blocks; chunks 5 and 6: 100 each.
    for (chunk, blocks) in [(2u64, 4u64), (5, 100), (6, 100)] {
        for b in 0..blocks {
            let at = chunk * 2 * MIB + 2 * b * BLOCK;
            fs.write(vm, at, &[0x3C; 4096]).unwrap();
            want[at as usize..(at + BLOCK) as usize].fill(0x3C);
        }
    }
    assert_eq!(fs.stat(vm).unwrap().huge_bytes, 10 * MIB);
    // A budget of 2 chunks looked at per call, 64 private blocks needed.
    let mut from = Some(0);
    let mut calls = Vec::new();
    while let Some(f) = from {
        let (next, gathered) = fs.compact_idle_step(vm, f, 2, 64).unwrap();
        calls.push((f, gathered.is_some()));
        from = next;
        assert!(calls.len() < 20, "the pass does not end: {calls:?}");
    }
    // 0..2 (chunk 2 has too few private blocks), 2..4, 4..6 gathers 5
    // and stops there, 6 gathers 6, 7 ends the file.
    assert_eq!(
        calls,
        vec![(0, false), (2, false), (4, true), (6, true), (7, false)]
    );
    let st = fs.stat(vm).unwrap();
    assert_eq!(st.huge_bytes, 14 * MIB, "chunk 2 stays partly shared");
    assert_both(&fs, &want, &gold);
    // Nothing left above the bar: a whole pass gathers nothing.
    let (mut from, mut any) = (Some(0), false);
    while let Some(f) = from {
        let (next, gathered) = fs.compact_idle_step(vm, f, 3, 64).unwrap();
        any |= gathered.is_some();
        from = next;
    }
    assert!(!any);
    let fs = Filesystem::mount(fs.unmount()).unwrap();
    assert_eq!(read_all(&fs, "vm"), want);
    assert_clean(&fs);
}

#[test]
fn a_mostly_diverged_chunk_is_compacted_by_the_write_that_crosses_the_threshold() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    let mut want = gold.clone();
    let threshold = daxfs::COMPACT_THRESHOLD_BLOCKS;
    for b in 0..threshold {
        let at = 6 * MIB + 2 * b * BLOCK;
        fs.write(vm, at, &[0xA5; 4096]).unwrap();
        want[at as usize..(at + BLOCK) as usize].fill(0xA5);
    }
    let st = fs.stat(vm).unwrap();
    assert_eq!(st.huge_bytes, 16 * MIB, "the diverged chunk was gathered");
    assert_eq!(st.shared_bytes, 14 * MIB);
    assert_both(&fs, &want, &gold);
}

/// Rewrites both superblock copies with `version` (an image as an older
/// daxfs left it: this code writes plain lists until it needs a layered
/// one).
fn set_version(mem: &mut VecMemory, version: u32) {
    use daxfs::format::{Superblock, SUPER_SIZE};
    let bytes = mem.bytes_mut();
    let sb = Superblock::decode(bytes[..SUPER_SIZE].try_into().unwrap()).unwrap();
    let new = Superblock { version, ..sb }.encode();
    bytes[..SUPER_SIZE].copy_from_slice(&new);
    bytes[4096..4096 + SUPER_SIZE].copy_from_slice(&new);
}

fn version(fs: &Filesystem<VecMemory>) -> u32 {
    match Filesystem::probe(fs.memory()) {
        daxfs::Probe::Daxfs { version, .. } => version,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_version_2_image_is_read_as_is_and_upgraded_only_when_a_layered_list_is_written() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let mut mem = fs.unmount();
    set_version(&mut mem, 2);
    assert!(Filesystem::fsck_image(&mem).is_clean());
    let mut fs = Filesystem::mount(mem).unwrap();
    assert_eq!(version(&fs), 2, "mount alone does not upgrade");
    assert_eq!(read_all(&fs, "vm"), gold);
    // A small file's map stays plain: still version 2.
    let s = fs.create("small").unwrap();
    fs.write(s, 0, b"x").unwrap();
    assert_eq!(version(&fs), 2);
    // 30 scattered copy-on-writes need a layered list.
    let vm = fs.lookup("vm").unwrap();
    let mut want = gold.clone();
    for i in 0..30u64 {
        let at = i * 131 * BLOCK;
        fs.write(vm, at, &[0x33; 4096]).unwrap();
        want[at as usize..(at + BLOCK) as usize].fill(0x33);
    }
    assert_eq!(version(&fs), 3);
    assert_clean(&fs);
    let mem = fs.unmount();
    // A version 2 reader would refuse it by its version, not misread it.
    let fs = Filesystem::mount(mem).unwrap();
    assert_both(&fs, &want, &gold);
}

#[test]
fn a_layered_record_in_a_version_2_image_is_refused_as_corrupt() {
    let mut fs = fresh(64);
    cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    for i in 0..30u64 {
        fs.write(vm, i * 131 * BLOCK, &[0x33; 4096]).unwrap();
    }
    let mut mem = fs.unmount();
    set_version(&mut mem, 2);
    let report = Filesystem::fsck_image(&mem);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("layered extent list in a version 2 image")),
        "{report}"
    );
    assert!(matches!(
        Filesystem::mount(mem),
        Err(daxfs::Error::Corrupt(_))
    ));
}

#[test]
fn many_scattered_copy_on_writes_keep_the_on_media_list_short() {
    // 1,500 writes into distinct blocks of a clone: the effective map
    // grows by about 2 extents each, the layered list by 1 entry each,
    // and each write rewrites at most one chain block (the list is
    // prepended to, never rewritten as a whole: a whole rewrite of 3,000
    // extents per write would take 12 blocks each time).
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    let mut want = gold.clone();
    let mut x = 5u64;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 1500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let block = (x >> 33) % (16 * MIB / BLOCK);
        // Stay below the compaction threshold in every chunk.
        if seen.iter().filter(|&&b| b / 512 == block / 512).count() >= 200 {
            continue;
        }
        let byte = (seen.len() % 250) as u8 + 1;
        let free = fs.statfs().free_blocks;
        fs.write(vm, block * BLOCK, &[byte; 4096]).unwrap();
        let took = free as i64 - fs.statfs().free_blocks as i64;
        if seen.insert(block) {
            assert!(took <= 2, "write {} took {took} blocks", seen.len());
        }
        want[(block * BLOCK) as usize..((block + 1) * BLOCK) as usize].fill(byte);
    }
    assert_eq!(read_all(&fs, "gold"), gold);
    let st = fs.stat(vm).unwrap();
    assert!(st.extent_count > 2000, "{}", st.extent_count);
    assert_clean(&fs);
    let mem = fs.unmount();
    let fs = Filesystem::mount(mem).unwrap();
    assert_eq!(read_all(&fs, "vm"), want);
    assert_eq!(fs.stat(vm).unwrap().extent_count, st.extent_count);
    assert_clean(&fs);
}

/// An appending stream remembers the private run it writes into (issue
/// 17); a clone made meanwhile shares those blocks, and the next write
/// into them must copy them, not write in place.
#[test]
fn a_remembered_run_of_an_appending_stream_is_forgotten_when_a_clone_shares_it() {
    let mut fs = fresh(64);
    let a = fs.create("a").unwrap();
    let head = pattern(2 * MIB + BLOCK, 4);
    fs.write(a, 0, &head).unwrap();
    for (i, byte) in [(1u64, 1u8), (2, 2), (3, 3)] {
        fs.write(a, 2 * MIB + i * BLOCK, &[byte; 4096]).unwrap();
    }
    fs.clone_file("a", "b").unwrap();
    // Inside the run the stream remembered, below the end of file.
    fs.write(a, 2 * MIB + 2 * BLOCK, &[9; 4096]).unwrap();
    fs.write(a, 2 * MIB + 4 * BLOCK, &[8; 4096]).unwrap();
    let b = read_all(&fs, "b");
    assert_eq!(b.len() as u64, 2 * MIB + 4 * BLOCK);
    assert_eq!(&b[..head.len()], &head[..]);
    for (i, byte) in [(1u64, 1u8), (2, 2), (3, 3)] {
        let at = (2 * MIB + i * BLOCK) as usize;
        assert!(
            b[at..at + 4096].iter().all(|&x| x == byte),
            "the clone's block {i} changed"
        );
    }
    let a = read_all(&fs, "a");
    assert!(a[(2 * MIB + 2 * BLOCK) as usize..][..4096]
        .iter()
        .all(|&x| x == 9));
    assert_clean(&fs);
}

/// What a power cut now would leave, mounted (the region as it is, no
/// unmount).
fn after_crash(fs: &Filesystem<VecMemory>) -> Filesystem<VecMemory> {
    Filesystem::mount(fs.memory().clone()).unwrap()
}

/// Writes one distinct 100-byte piece into each of `blocks` blocks of `vm`
/// (16 blocks apart, all in chunk 0): each splits a shared extent.
fn scatter(fs: &mut Filesystem<VecMemory>, want: &mut [u8], blocks: std::ops::Range<u64>) {
    let vm = fs.lookup("vm").unwrap();
    for i in blocks {
        let at = i * 16 * BLOCK + 300;
        let data = [i as u8 + 1; 100];
        fs.write(vm, at, &data).unwrap();
        want[at as usize..at as usize + 100].copy_from_slice(&data);
    }
}

/// FORMAT.md "Deferred copy-on-write commits": once a clone's list is
/// layered, small copy-on-writes wait in memory (no fence, no journal
/// commit), at most `DEFERRED_RUNS_MAX` of them; reads see them at once;
/// a crash before `persist` reads the blocks as they were, a crash after
/// it as written; fsck is clean throughout.
#[test]
fn copy_on_writes_wait_in_memory_until_persist() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let vm = fs.lookup("vm").unwrap();
    let mut want = gold.clone();
    // Six splits make the list layered (more than 12 extents).
    scatter(&mut fs, &mut want, 0..6);
    assert_eq!(fs.deferred_runs(vm).unwrap(), 0);
    let committed = want.clone();
    let fences = fs.memory().fences;
    scatter(&mut fs, &mut want, 6..6 + daxfs::DEFERRED_RUNS_MAX as u64);
    assert_eq!(fs.memory().fences, fences, "deferred writes fence nothing");
    assert_eq!(fs.deferred_runs(vm).unwrap(), daxfs::DEFERRED_RUNS_MAX);
    assert_both(&fs, &want, &gold);

    // A crash now: the clone reads as at its last commit.
    let crashed = after_crash(&fs);
    assert_both(&crashed, &committed, &gold);

    // One more: the waiting runs are committed first, this one waits.
    scatter(&mut fs, &mut want, 20..21);
    assert_eq!(fs.deferred_runs(vm).unwrap(), 1);
    let crashed = after_crash(&fs);
    let mut all_but_last = want.clone();
    let at = (20 * 16 * BLOCK) as usize;
    all_but_last[at..at + BLOCK as usize].copy_from_slice(&gold[at..at + BLOCK as usize]);
    assert_eq!(read_all(&crashed, "vm"), all_but_last);

    fs.persist(vm).unwrap();
    assert_eq!(fs.deferred_runs(vm).unwrap(), 0);
    assert_clean(&fs);
    let crashed = after_crash(&fs);
    assert_both(&crashed, &want, &gold);
}

/// The block a waiting copy-on-write replaced is still the clone's on
/// media: the original must copy before it writes there, so that a crash
/// shows the clone the old bytes, never the original's new ones.
#[test]
fn the_original_copies_a_block_whose_clone_copy_is_waiting() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let (g, vm) = (fs.lookup("gold").unwrap(), fs.lookup("vm").unwrap());
    let mut want = gold.clone();
    scatter(&mut fs, &mut want, 0..7);
    assert_eq!(fs.deferred_runs(vm).unwrap(), 1, "the seventh write waits");
    let block = 6 * 16 * BLOCK;
    let free = fs.statfs().free_blocks;
    fs.write(g, block, &[0xAB; BLOCK as usize]).unwrap();
    assert_eq!(
        free - fs.statfs().free_blocks,
        1,
        "the original copied the block instead of writing it in place"
    );
    let mut want_gold = gold.clone();
    want_gold[block as usize..(block + BLOCK) as usize].fill(0xAB);
    assert_clean(&fs);
    let crashed = after_crash(&fs);
    let vm_after = read_all(&crashed, "vm");
    assert_eq!(
        vm_after[block as usize..(block + BLOCK) as usize],
        gold[block as usize..(block + BLOCK) as usize],
        "after a crash the clone reads the block as it was when cloned"
    );
    assert_eq!(read_all(&crashed, "gold"), want_gold);
    assert_clean(&crashed);
}

/// Close, unmount and unlink settle waiting runs: the last close and an
/// unmount commit them, an unlink frees their blocks and the blocks they
/// replaced exactly.
#[test]
fn close_unmount_and_unlink_settle_waiting_copy_on_writes() {
    let mut fs = fresh(64);
    let gold = cloned(&mut fs);
    let free_at_clone = fs.statfs().free_blocks;
    let vm = fs.lookup("vm").unwrap();
    let mut want = gold.clone();
    scatter(&mut fs, &mut want, 0..6);
    fs.open(vm).unwrap();
    scatter(&mut fs, &mut want, 6..9);
    assert_eq!(fs.deferred_runs(vm).unwrap(), 3);
    fs.close(vm).unwrap();
    assert_eq!(fs.deferred_runs(vm).unwrap(), 0);
    scatter(&mut fs, &mut want, 9..11);
    assert_eq!(fs.deferred_runs(vm).unwrap(), 2);
    let mut fs = Filesystem::mount(fs.unmount()).unwrap();
    assert_eq!(read_all(&fs, "vm"), want);
    assert_clean(&fs);

    let vm = fs.lookup("vm").unwrap();
    scatter(&mut fs, &mut want, 11..14);
    assert_eq!(fs.deferred_runs(vm).unwrap(), 3);
    fs.unlink("vm").unwrap();
    assert_eq!(fs.statfs().free_blocks, free_at_clone);
    assert_eq!(read_all(&fs, "gold"), gold);
    assert_clean(&fs);
}
