//! Property test: random operation sequences, with clean remounts and
//! crash remounts (`into_memory` then `mount`) in between, always agree
//! with an in-memory model (name -> bytes), and fsck stays clean.
//!
//! A crash may cut a file back to a size it had since it was last made
//! durable (FORMAT.md "Deferred size commits"): the model keeps, per file,
//! the size a crash may not go below (the *floor*: set by create, persist,
//! clone, rename and clean remounts, lowered by a truncate), and after a
//! crash it takes the size the filesystem shows, which must lie between
//! the floor and the model's size, and cuts its content there: from then
//! on the bytes must agree exactly again (a later extending write must
//! read zeros over what the crash cut off).
//!
//! A crash may also undo writes into blocks a file shared with a clone
//! since the file was last made durable (FORMAT.md "Deferred copy-on-write
//! commits"): the model keeps, per file, every earlier version of each
//! 4 KiB block written since then (*older*, emptied by persist and clean
//! remounts), and after a crash each block must read as the model's
//! content or one of those versions, nothing else; the model then takes
//! what the filesystem shows.

use std::collections::BTreeMap;

use daxbox_persist::VecMemory;
use daxfs::{Error, Filesystem, FormatOptions};
use proptest::prelude::*;

const NAMES: [&str; 4] = ["a", "b", "dir/c", "long-name-\u{e9}"];
const REGION: usize = 24 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Write {
        file: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    /// A write at a small distance past the current end of file.
    Append {
        file: usize,
        gap: u64,
        len: usize,
        seed: u8,
    },
    Zeroes {
        file: usize,
        offset: u64,
        len: u64,
        punch: bool,
    },
    Unlink(usize),
    Rename(usize, usize),
    Clone(usize, usize),
    HoldUnlink(usize),
    Persist(usize),
    /// Many small writes at random block-aligned or unaligned places
    /// inside the file (copy-on-write of a clone's shared chunks, up to
    /// and past the compaction threshold).
    SmallWrites {
        file: usize,
        count: usize,
        seed: u64,
    },
    Compact(usize),
    Remount,
    Crash,
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..20_000,
        1 => (0u64..3).prop_map(|c| c * 2 * 1024 * 1024),
        1 => 0u64..5 * 1024 * 1024,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..NAMES.len();
    prop_oneof![
        2 => f.clone().prop_map(Op::Create),
        6 => (f.clone(), offset(), prop_oneof![1usize..9000, 2_000_000usize..2_200_000], any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        2 => (f.clone(), offset()).prop_map(|(file, size)| Op::Truncate { file, size }),
        3 => (f.clone(), 0u64..10_000, 1usize..9000, any::<u8>())
            .prop_map(|(file, gap, len, seed)| Op::Append { file, gap, len, seed }),
        2 => (f.clone(), offset(), 0u64..3_000_000, any::<bool>())
            .prop_map(|(file, offset, len, punch)| Op::Zeroes { file, offset, len, punch }),
        1 => f.clone().prop_map(Op::Unlink),
        1 => (f.clone(), f.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (f.clone(), f.clone()).prop_map(|(a, b)| Op::Clone(a, b)),
        1 => f.clone().prop_map(Op::HoldUnlink),
        1 => f.clone().prop_map(Op::Persist),
        2 => (f.clone(), prop_oneof![1usize..40, 200usize..400], any::<u64>())
            .prop_map(|(file, count, seed)| Op::SmallWrites { file, count, seed }),
        1 => f.clone().prop_map(Op::Compact),
        1 => Just(Op::Remount),
        1 => Just(Op::Crash),
    ]
}

fn check(fs: &Filesystem<VecMemory>, model: &BTreeMap<String, Vec<u8>>) {
    let listed: Vec<String> = fs.list(None, 100).into_iter().map(|e| e.name).collect();
    let expected: Vec<String> = model.keys().cloned().collect();
    assert_eq!(listed, expected);
    for (name, content) in model {
        let id = fs.lookup(name).unwrap();
        let st = fs.stat(id).unwrap();
        assert_eq!(st.size, content.len() as u64, "size of {name}");
        let mut buf = vec![0xCD; content.len() + 7];
        let n = fs.read(id, 0, &mut buf).unwrap();
        assert_eq!(n, content.len());
        assert!(buf[..n] == content[..], "content of {name} differs");
        // Holes reported by the extent query read as zeros.
        for seg in fs.extents(id, 0, u64::MAX).unwrap() {
            if !seg.data {
                let (a, b) = (seg.offset as usize, (seg.offset + seg.len) as usize);
                assert!(
                    content[a..b].iter().all(|&x| x == 0),
                    "hole with data in {name}"
                );
            }
        }
    }
    let report = fs.fsck();
    assert!(report.is_clean(), "{report}");
}

/// Earlier versions of each 4 KiB block of each file since it was last
/// made durable (zero-padded past the end of file as it was then).
type Older = BTreeMap<String, BTreeMap<usize, Vec<Vec<u8>>>>;

/// Before `content` (of file `name`) changes at `offset..offset + len`:
/// keeps the versions of the blocks it touches.
fn remember(older: &mut Older, name: &str, content: &[u8], offset: u64, len: usize) {
    if len == 0 {
        return;
    }
    let versions = older.entry(name.to_string()).or_default();
    let (first, last) = (offset as usize / 4096, (offset as usize + len - 1) / 4096);
    for b in first..=last {
        let mut block = vec![0u8; 4096];
        let at = (b * 4096).min(content.len());
        let end = (at + 4096).min(content.len());
        block[..end - at].copy_from_slice(&content[at..end]);
        let list = versions.entry(b).or_default();
        if !list.contains(&block) {
            list.push(block);
        }
    }
}

/// After a crash: every block of `name` reads as the model's `content` or
/// one of the `older` versions; the model takes what it reads.
fn settle_crash(fs: &Filesystem<VecMemory>, name: &str, content: &mut [u8], older: &Older) {
    let id = fs.lookup(name).unwrap();
    let mut got = vec![0u8; content.len()];
    assert_eq!(fs.read(id, 0, &mut got).unwrap(), content.len());
    for (b, (now, read)) in content.chunks_mut(4096).zip(got.chunks(4096)).enumerate() {
        if now == read {
            continue;
        }
        let allowed = older
            .get(name)
            .and_then(|v| v.get(&b))
            .is_some_and(|list| list.iter().any(|old| old[..read.len()] == *read));
        assert!(allowed, "{name}: block {b} after a crash is neither current nor an earlier version since the last persist");
        now.copy_from_slice(read);
    }
}

fn run(ops: Vec<Op>) {
    let opts = FormatOptions {
        uuid: [3; 16],
        max_files: Some(8),
    };
    let mut fs = Filesystem::format(VecMemory::new(REGION), opts).unwrap();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut floors: BTreeMap<String, usize> = BTreeMap::new();
    let mut older = Older::new();
    for op in ops {
        match op {
            Op::Create(i) => {
                let r = fs.create(NAMES[i]);
                if model.contains_key(NAMES[i]) {
                    assert_eq!(r, Err(Error::Exists));
                } else {
                    r.unwrap();
                    model.insert(NAMES[i].to_string(), Vec::new());
                    floors.insert(NAMES[i].to_string(), 0);
                }
            }
            Op::Write {
                file,
                offset,
                len,
                seed,
            } => {
                let Some(content) = model.get_mut(NAMES[file]) else {
                    assert_eq!(fs.lookup(NAMES[file]), Err(Error::NotFound));
                    continue;
                };
                let id = fs.lookup(NAMES[file]).unwrap();
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
                remember(&mut older, NAMES[file], content, offset, len);
                match fs.write(id, offset, &data) {
                    Ok(()) => {
                        let end = offset as usize + len;
                        if content.len() < end {
                            content.resize(end, 0);
                        }
                        content[offset as usize..end].copy_from_slice(&data);
                    }
                    Err(Error::NoSpace) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            Op::Append {
                file,
                gap,
                len,
                seed,
            } => {
                let Some(content) = model.get_mut(NAMES[file]) else {
                    continue;
                };
                let id = fs.lookup(NAMES[file]).unwrap();
                let offset = content.len() + gap as usize;
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
                remember(&mut older, NAMES[file], content, offset as u64, len);
                match fs.write(id, offset as u64, &data) {
                    Ok(()) => {
                        content.resize(offset, 0);
                        content.extend_from_slice(&data);
                    }
                    Err(Error::NoSpace) => {}
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::Truncate { file, size } => {
                let Some(content) = model.get_mut(NAMES[file]) else {
                    continue;
                };
                let id = fs.lookup(NAMES[file]).unwrap();
                match fs.truncate(id, size) {
                    Ok(()) => {
                        content.resize(size as usize, 0);
                        let floor = floors.get_mut(NAMES[file]).unwrap();
                        *floor = (*floor).min(size as usize);
                    }
                    Err(Error::NoSpace) => {}
                    Err(e) => panic!("truncate: {e}"),
                }
            }
            Op::Zeroes {
                file,
                offset,
                len,
                punch,
            } => {
                let Some(content) = model.get_mut(NAMES[file]) else {
                    continue;
                };
                let id = fs.lookup(NAMES[file]).unwrap();
                remember(&mut older, NAMES[file], content, offset, len as usize);
                match fs.write_zeroes(id, offset, len, punch) {
                    Ok(()) => {
                        let end = (offset + len) as usize;
                        if len > 0 && content.len() < end {
                            content.resize(end, 0);
                        }
                        if len > 0 {
                            content[offset as usize..end].fill(0);
                        }
                    }
                    Err(Error::NoSpace) => {}
                    Err(e) => panic!("write_zeroes: {e}"),
                }
            }
            Op::Unlink(i) => {
                let r = fs.unlink(NAMES[i]);
                floors.remove(NAMES[i]);
                older.remove(NAMES[i]);
                if model.remove(NAMES[i]).is_some() {
                    r.unwrap();
                } else {
                    assert_eq!(r, Err(Error::NotFound));
                }
            }
            Op::Rename(a, b) => {
                let r = fs.rename(NAMES[a], NAMES[b]);
                match model.remove(NAMES[a]) {
                    Some(content) => {
                        r.unwrap();
                        floors.remove(NAMES[a]);
                        floors.insert(NAMES[b].to_string(), content.len());
                        let versions = older.remove(NAMES[a]);
                        older.remove(NAMES[b]);
                        if let Some(v) = versions {
                            older.insert(NAMES[b].to_string(), v);
                        }
                        model.insert(NAMES[b].to_string(), content);
                    }
                    None => assert_eq!(r, Err(Error::NotFound)),
                }
            }
            Op::Clone(a, b) => {
                let r = fs.clone_file(NAMES[a], NAMES[b]);
                match (model.get(NAMES[a]).cloned(), model.contains_key(NAMES[b])) {
                    (None, _) => assert_eq!(r, Err(Error::NotFound)),
                    (Some(_), true) => assert_eq!(r, Err(Error::Exists)),
                    (Some(c), false) => match r {
                        Ok(_) => {
                            older.remove(NAMES[b]);
                            floors.insert(NAMES[b].to_string(), c.len());
                            model.insert(NAMES[b].to_string(), c);
                        }
                        Err(Error::NoSpace) => {}
                        Err(e) => panic!("clone: {e}"),
                    },
                }
            }
            Op::HoldUnlink(i) => {
                let Some(content) = model.remove(NAMES[i]) else {
                    continue;
                };
                floors.remove(NAMES[i]);
                older.remove(NAMES[i]);
                let id = fs.lookup(NAMES[i]).unwrap();
                let ranges = fs.dax_ranges(id, 0, u64::MAX).unwrap();
                let hold = fs.hold(id, 0, u64::MAX).unwrap();
                fs.unlink(NAMES[i]).unwrap();
                // Churn while held: other files may be written.
                if let Some(name) = model.keys().next().cloned() {
                    let other = fs.lookup(&name).unwrap();
                    remember(&mut older, &name, &model[&name], 0, 8192);
                    let _ = fs.write(other, 0, &[0x77; 8192]).map(|()| {
                        let c = model.get_mut(name.as_str()).unwrap();
                        if c.len() < 8192 {
                            c.resize(8192, 0);
                        }
                        c[..8192].fill(0x77);
                    });
                }
                for r in ranges {
                    let mut buf = vec![0; r.len as usize];
                    daxbox_persist::PersistentMemory::read(fs.memory(), r.region_offset, &mut buf)
                        .unwrap();
                    let at = r.file_offset as usize;
                    assert!(
                        buf == content[at..at + r.len as usize],
                        "held range changed"
                    );
                }
                fs.release(hold);
            }
            Op::SmallWrites { file, count, seed } => {
                let Some(content) = model.get_mut(NAMES[file]) else {
                    continue;
                };
                if content.is_empty() {
                    continue;
                }
                let id = fs.lookup(NAMES[file]).unwrap();
                let mut x = seed | 1;
                for _ in 0..count {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = content.len() as u64;
                    // Mostly whole aligned 4 KiB blocks, sometimes a few
                    // unaligned bytes; always inside the file.
                    let (offset, len) = if x % 4 != 0 {
                        let blocks = size.div_ceil(4096);
                        let o = (x >> 8) % blocks * 4096;
                        (o, 4096.min(size - o) as usize)
                    } else {
                        let o = (x >> 8) % size;
                        (o, (1 + (x >> 40) % 100).min(size - o) as usize)
                    };
                    let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (x as u8)).collect();
                    remember(&mut older, NAMES[file], content, offset, len);
                    match fs.write(id, offset, &data) {
                        Ok(()) => {
                            content[offset as usize..offset as usize + len].copy_from_slice(&data)
                        }
                        Err(Error::NoSpace) => break,
                        Err(e) => panic!("small write: {e}"),
                    }
                }
            }
            Op::Compact(i) => {
                if !model.contains_key(NAMES[i]) {
                    continue;
                }
                let id = fs.lookup(NAMES[i]).unwrap();
                match fs.compact(id) {
                    Ok(_) | Err(Error::NoSpace) => {}
                    Err(e) => panic!("compact: {e}"),
                }
            }
            Op::Persist(i) => {
                let Some(content) = model.get(NAMES[i]) else {
                    continue;
                };
                let id = fs.lookup(NAMES[i]).unwrap();
                fs.persist(id).unwrap();
                floors.insert(NAMES[i].to_string(), content.len());
                older.remove(NAMES[i]);
            }
            Op::Remount => {
                fs = Filesystem::mount(fs.unmount()).unwrap();
                for (name, content) in &model {
                    floors.insert(name.clone(), content.len());
                }
                older.clear();
            }
            Op::Crash => {
                fs = Filesystem::mount(fs.into_memory()).unwrap();
                for (name, content) in model.iter_mut() {
                    let size = fs.stat(fs.lookup(name).unwrap()).unwrap().size as usize;
                    let floor = floors[name];
                    assert!(
                        floor <= size && size <= content.len(),
                        "{name}: size {size} after a crash, expected {floor}..={}",
                        content.len()
                    );
                    content.truncate(size);
                    floors.insert(name.clone(), size);
                    settle_crash(&fs, name, content, &older);
                }
                older.clear();
            }
        }
        check(&fs, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn operations_agree_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// The sequence that shows stale bytes past end of file if the gap of an
/// extending write is not zeroed.
#[test]
fn shrink_then_extend_reads_zeros() {
    run(vec![
        Op::Create(0),
        Op::Write {
            file: 0,
            offset: 0,
            len: 9000,
            seed: 1,
        },
        Op::Truncate {
            file: 0,
            size: 5000,
        },
        Op::Append {
            file: 0,
            gap: 1000,
            len: 10,
            seed: 2,
        },
    ]);
}

/// A clone of a 5 MiB file takes random 4 KiB writes past the compaction
/// threshold of its first chunk (256 of 512 blocks private: the chunk is
/// gathered whole) and a few into the others, with a remount, a crash,
/// a compaction and the unlink of the original in between; both sides
/// always read as the byte model says.
#[test]
fn clone_small_writes_compact_and_remounts() {
    let write = |file: usize, count: usize, seed: u64| Op::SmallWrites { file, count, seed };
    run(vec![
        Op::Create(0),
        Op::Write {
            file: 0,
            offset: 0,
            len: 5 * 1024 * 1024,
            seed: 9,
        },
        Op::Clone(0, 1),
        write(1, 300, 1),
        write(0, 50, 2),
        // The original's copies made blocks of the clone private.
        write(1, 100, 7),
        Op::Remount,
        write(1, 300, 3),
        Op::Crash,
        write(0, 20, 4),
        Op::Compact(1),
        write(1, 30, 5),
        Op::Unlink(0),
        write(1, 30, 6),
        Op::Remount,
        Op::Compact(1),
    ]);
}
