//! Deferred size commits (FORMAT.md "Deferred size commits"): appending
//! writes into blocks a file already maps keep the new size in memory and
//! commit it once per 2 MiB chunk, at `persist`, `persist_all`, the last
//! `close` and unmount; a crash leaves at least the persisted size and
//! never exposes bytes that were not written.

use std::cell::Cell;
use std::rc::Rc;

use daxbox_persist::{OutOfRange, PersistentMemory, VecMemory};
use daxfs::{Filesystem, FormatOptions};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const CHUNK: u64 = 2 * MIB;

/// A region that counts 8-byte atomic stores: a journal commit makes two
/// (the commit word set, then cleared), a data write none.
struct Counting {
    inner: VecMemory,
    stores: Rc<Cell<u64>>,
}

impl PersistentMemory for Counting {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.inner.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.inner.write(offset, data)
    }
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.inner.write_nt(offset, data)
    }
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        self.stores.set(self.stores.get() + 1);
        self.inner.store_u64(offset, value)
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        self.inner.flush(offset, len)
    }
    fn fence(&mut self) {
        self.inner.fence()
    }
}

fn opts() -> FormatOptions {
    FormatOptions {
        uuid: [7; 16],
        max_files: Some(64),
    }
}

fn counting() -> (Filesystem<Counting>, Rc<Cell<u64>>) {
    let stores = Rc::new(Cell::new(0));
    let mem = Counting {
        inner: VecMemory::new(32 * MIB as usize),
        stores: stores.clone(),
    };
    (Filesystem::format(mem, opts()).unwrap(), stores)
}

fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

/// Bytes `0..len` of the file.
fn content<M: PersistentMemory>(fs: &Filesystem<M>, name: &str) -> Vec<u8> {
    let id = fs.lookup(name).unwrap();
    let size = fs.stat(id).unwrap().size;
    let mut buf = vec![0; size as usize];
    assert_eq!(fs.read(id, 0, &mut buf).unwrap(), size as usize);
    buf
}

#[test]
fn appending_writes_into_an_allocated_chunk_commit_at_most_once_per_chunk() {
    let (mut fs, stores) = counting();
    let id = fs.create("log").unwrap();
    let block = pattern(1, 4 * KIB);
    // Past 2 MiB the file is large: the write at 2 MiB allocates the whole
    // second chunk (one commit, carrying the size).
    let mut at = 0;
    while at < CHUNK + 4 * KIB {
        fs.write(id, at, &block).unwrap();
        at += 4 * KIB;
    }
    let before = stores.get();
    // 511 more appending 4 KiB writes fill that chunk: each finds its
    // block mapped, so none may commit (it was 511 commits before).
    while at < 2 * CHUNK {
        fs.write(id, at, &block).unwrap();
        at += 4 * KIB;
    }
    assert_eq!(
        stores.get() - before,
        0,
        "appends into a mapped chunk committed"
    );
    assert_eq!(fs.stat(id).unwrap().size, 2 * CHUNK);
    assert!(fs.fsck().is_clean(), "{:?}", fs.fsck());
    // persist commits the size: one transaction.
    fs.persist(id).unwrap();
    assert_eq!(stores.get() - before, 2);
    fs.persist(id).unwrap();
    assert_eq!(
        stores.get() - before,
        2,
        "a second persist has nothing to commit"
    );
}

#[test]
fn a_crash_keeps_the_persisted_size_and_never_shows_unwritten_bytes() {
    let mut fs = Filesystem::format(VecMemory::new(32 * MIB as usize), opts()).unwrap();
    let id = fs.create("f").unwrap();
    let a = pattern(2, CHUNK + 8 * KIB);
    fs.write(id, 0, &a).unwrap();
    fs.persist(id).unwrap();
    // Appends inside the preallocated second chunk: size deferred.
    let b = pattern(3, 64 * KIB);
    fs.write(id, a.len() as u64, &b).unwrap();
    assert_eq!(fs.stat(id).unwrap().size, (a.len() + b.len()) as u64);
    let fs2 = Filesystem::mount(fs.into_memory()).unwrap();
    assert!(fs2.fsck().is_clean(), "{:?}", fs2.fsck());
    let seen = content(&fs2, "f");
    assert!(seen.len() >= a.len() && seen.len() <= a.len() + b.len());
    assert_eq!(&seen[..a.len()], &a[..]);
    assert_eq!(&seen[a.len()..], &b[..seen.len() - a.len()]);
    // A write past the end after the crash: the gap over the preallocated
    // blocks (which hold the lost append's bytes) reads as zeros.
    let mut fs2 = fs2;
    let id = fs2.lookup("f").unwrap();
    let size = fs2.stat(id).unwrap().size;
    fs2.write(id, size + 100 * KIB, b"end").unwrap();
    let seen = content(&fs2, "f");
    assert!(seen[size as usize..(size + 100 * KIB) as usize]
        .iter()
        .all(|&x| x == 0));
    assert_eq!(&seen[(size + 100 * KIB) as usize..], b"end");
    assert!(fs2.fsck().is_clean(), "{:?}", fs2.fsck());
}

/// Every way to make a deferred size durable: persist, persist_all, the
/// last close, unmount; each then survives a crash.
#[test]
fn persist_close_and_unmount_commit_the_deferred_size() {
    type Step = fn(&mut Filesystem<VecMemory>, daxfs::FileId);
    let steps: [(&str, Step); 3] = [
        ("persist", |fs, id| fs.persist(id).unwrap()),
        ("persist_all", |fs, _| fs.persist_all().unwrap()),
        ("close", |fs, id| fs.close(id).unwrap()),
    ];
    let a = pattern(4, CHUNK + 4 * KIB);
    let b = pattern(5, 12 * KIB);
    for (what, step) in steps {
        let mut fs = Filesystem::format(VecMemory::new(32 * MIB as usize), opts()).unwrap();
        let id = fs.create("f").unwrap();
        fs.open(id).unwrap();
        fs.write(id, 0, &a).unwrap();
        fs.write(id, a.len() as u64, &b).unwrap();
        step(&mut fs, id);
        assert!(fs.fsck().is_clean(), "{what}: {:?}", fs.fsck());
        let fs = Filesystem::mount(fs.into_memory()).unwrap();
        let seen = content(&fs, "f");
        assert_eq!(seen.len(), a.len() + b.len(), "{what}");
        assert_eq!(&seen[a.len()..], &b[..], "{what}");
    }
    let mut fs = Filesystem::format(VecMemory::new(32 * MIB as usize), opts()).unwrap();
    let id = fs.create("f").unwrap();
    fs.write(id, 0, &a).unwrap();
    fs.write(id, a.len() as u64, &b).unwrap();
    let fs = Filesystem::mount(fs.unmount()).unwrap();
    assert_eq!(content(&fs, "f").len(), a.len() + b.len(), "unmount");
}

/// The deferral never lets the durable size lag by a whole chunk: a write
/// ending past the chunk of the durable last byte commits, and clones,
/// renames and truncates carry the in-memory size.
#[test]
fn other_commits_carry_the_in_memory_size() {
    let mut fs = Filesystem::format(VecMemory::new(32 * MIB as usize), opts()).unwrap();
    let id = fs.create("f").unwrap();
    let a = pattern(6, CHUNK + 4 * KIB);
    fs.write(id, 0, &a).unwrap();
    fs.write(id, a.len() as u64, &pattern(7, 4 * KIB)).unwrap();
    let size = fs.stat(id).unwrap().size;
    fs.clone_file("f", "c").unwrap();
    fs.rename("f", "g").unwrap();
    let fs = Filesystem::mount(fs.into_memory()).unwrap();
    assert_eq!(content(&fs, "c").len() as u64, size, "clone");
    assert_eq!(content(&fs, "g").len() as u64, size, "rename");
}

/// Allocate-ahead in small files (FORMAT.md "Allocation policy"): 4 KiB
/// appends into a file under 2 MiB commit about once per doubling of what
/// it maps, not once per write; a file written by one write is allocated
/// only what it needs; the blocks ahead are counted as used, bounded, and
/// given back by a truncate; a remount reads the same bytes, fsck clean.
#[test]
fn appends_into_a_small_file_are_allocated_ahead() {
    let (mut fs, stores) = counting();
    let free = fs.statfs().free_blocks;
    let one = fs.create("one").unwrap();
    fs.write(one, 0, &pattern(1, 4 * KIB)).unwrap();
    assert_eq!(free - fs.statfs().free_blocks, 1, "one write, one block");

    let free_log = fs.statfs().free_blocks;
    let id = fs.create("log").unwrap();
    let before = stores.get();
    let n = 256u64; // 1 MiB in 4 KiB appends
    let mut want = Vec::new();
    for i in 0..n {
        let data = pattern(i as u8, 4 * KIB);
        fs.write(id, i * 4 * KIB, &data).unwrap();
        want.extend_from_slice(&data);
    }
    let commits = (stores.get() - before) / 2;
    assert!(commits <= 12, "{commits} commits for {n} appends");
    fs.persist(id).unwrap();
    assert_eq!(content(&fs, "log"), want);
    let used = free_log - fs.statfs().free_blocks;
    assert!(
        (n..=n + 64).contains(&used),
        "{used} blocks used for {n} blocks of data"
    );
    assert!(fs.fsck().is_clean(), "{:?}", fs.fsck());

    let mut fs = Filesystem::mount(fs.unmount()).unwrap();
    assert_eq!(content(&fs, "log"), want);
    assert!(fs.fsck().is_clean(), "{:?}", fs.fsck());
    // Appends after the remount find the blocks ahead still mapped.
    let id = fs.lookup("log").unwrap();
    let free = fs.statfs().free_blocks;
    fs.write(id, n * 4 * KIB, &pattern(9, 4 * KIB)).unwrap();
    assert!(fs.statfs().free_blocks + 65 >= free);
    // A truncate gives back every block past the new size.
    fs.truncate(id, 4 * KIB).unwrap();
    assert_eq!(fs.statfs().free_blocks, free_log - 1);
    assert!(fs.fsck().is_clean(), "{:?}", fs.fsck());
}
