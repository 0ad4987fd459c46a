//! `append_from` (FORMAT.md "Appending by moving extents"): a 2 MiB-sized
//! destination takes the source's extents in one transaction, no bytes
//! copied; otherwise the bytes are copied. Either way the result reads as
//! the two files joined, the source is gone, and fsck (also after a
//! remount) is clean.

use daxfs::{Appended, Error};

mod common;
use common::*;

#[test]
fn aligned_parts_move_without_copying_and_the_space_is_not_doubled() {
    let mut fs = fresh(64);
    let a = pattern(4 * MIB, 1);
    let b = pattern(6 * MIB + 12_345, 2);
    let c = pattern(777, 3);
    let mut ids = Vec::new();
    for (name, data) in [("a", &a), ("b", &b), ("c", &c)] {
        let id = fs.create(name).unwrap();
        fs.write(id, 0, data).unwrap();
        ids.push(id);
    }
    let free = fs.statfs().free_blocks;
    let extents_b = fs.stat(ids[1]).unwrap().extent_count;
    assert_eq!(fs.append_from(ids[0], ids[1]), Ok(Appended::Moved));
    assert_eq!(fs.statfs().free_blocks, free, "no block copied or freed");
    assert_eq!(fs.lookup("b"), Err(Error::NotFound));
    assert!(fs.stat(ids[0]).unwrap().extent_count <= 1 + extents_b);
    // 10 MiB + 12,345 is not a multiple of 2 MiB: the last is copied.
    assert_eq!(fs.append_from(ids[0], ids[2]), Ok(Appended::Copied));
    assert_eq!(fs.lookup("c"), Err(Error::NotFound));
    let mut whole = a.clone();
    whole.extend_from_slice(&b);
    whole.extend_from_slice(&c);
    assert!(contents(&fs, "a") == whole);
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    let fs = remount(fs);
    assert!(contents(&fs, "a") == whole, "durable");
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    assert_eq!(fs.statfs().files, 1);
}

#[test]
fn shared_and_held_sources_and_bad_arguments() {
    let mut fs = fresh(32);
    let dst = fs.create("dst").unwrap();
    fs.write(dst, 0, &pattern(2 * MIB, 4)).unwrap();
    let src = fs.create("src").unwrap();
    fs.write(src, 0, &pattern(3 * MIB, 5)).unwrap();
    // A source shared with a clone moves; the clone keeps its bytes.
    fs.clone_file("src", "twin").unwrap();
    assert_eq!(fs.append_from(dst, src), Ok(Appended::Moved));
    assert!(contents(&fs, "twin") == pattern(3 * MIB, 5));
    assert_eq!(contents(&fs, "dst").len(), 5 * MIB);
    fs.unlink("twin").unwrap();
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    // A source someone holds is copied (and left to its holder).
    let held = fs.create("held").unwrap();
    fs.write(held, 0, &pattern(1000, 6)).unwrap();
    fs.open(held).unwrap();
    assert_eq!(fs.append_from(dst, held), Ok(Appended::Copied));
    assert_eq!(fs.lookup("held"), Err(Error::NotFound));
    fs.close(held).unwrap();
    // Itself, and a stale source.
    assert_eq!(fs.append_from(dst, dst), Err(Error::InvalidName));
    assert_eq!(fs.append_from(dst, held), Err(Error::StaleFile));
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    let fs = remount(fs);
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    assert_eq!(contents(&fs, "dst").len(), 5 * MIB + 1000);
}

#[test]
fn many_extents_go_through_a_fresh_overflow_chain() {
    let mut fs = fresh(64);
    let dst = fs.create("dst").unwrap();
    fs.write(dst, 0, &pattern(2 * MIB, 7)).unwrap();
    // A fragmented source: 4 KiB blocks from interleaved files, so it has
    // many extents; written from the end backwards, so that neither file
    // appends (appends into a small file are allocated ahead, FORMAT.md
    // "Allocation policy", and would stay contiguous).
    let src = fs.create("src").unwrap();
    let filler = fs.create("filler").unwrap();
    for i in (0..200u64).rev() {
        fs.write(src, i * 4096, &[i as u8; 4096]).unwrap();
        fs.write(filler, i * 4096, &[0xEE; 4096]).unwrap();
    }
    assert!(fs.stat(src).unwrap().extent_count > 20);
    let expected = contents(&fs, "src");
    assert_eq!(fs.append_from(dst, src), Ok(Appended::Moved));
    assert!(contents(&fs, "dst")[2 * MIB..] == expected[..]);
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    let fs = remount(fs);
    assert!(contents(&fs, "dst")[2 * MIB..] == expected[..]);
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
}

/// Benchmark (prints figures, asserts no timing): joining 32 parts of
/// 8 MiB (256 MiB) by moving extents and by copying bytes.
/// `cargo test --release -p daxfs --test append -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_join_256_mib_moved_and_copied() {
    for moved in [true, false] {
        let mut fs = fresh(600);
        let part = pattern(8 * MIB, 1);
        let mut ids = Vec::new();
        for i in 0..32 {
            let id = fs.create(&format!("part-{i}")).unwrap();
            fs.write(id, 0, &part).unwrap();
            ids.push(id);
        }
        let start = std::time::Instant::now();
        for id in &ids[1..] {
            let how = if moved {
                fs.append_from(ids[0], *id).unwrap()
            } else {
                fs.append_by_copy(ids[0], *id).unwrap()
            };
            assert_eq!(how == Appended::Moved, moved);
        }
        fs.persist(ids[0]).unwrap();
        let took = start.elapsed();
        println!(
            "join 256 MiB (32 x 8 MiB) by {}: {:.3} ms",
            if moved {
                "moving extents"
            } else {
                "copying bytes"
            },
            took.as_secs_f64() * 1000.0
        );
        assert_eq!(fs.file_size(ids[0]).unwrap(), 256 * MIB as u64);
        assert!(fs.fsck().is_clean());
    }
}
