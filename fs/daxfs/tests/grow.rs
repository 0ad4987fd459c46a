//! Growing a filesystem to the end of a longer region (FORMAT.md "Grow"):
//! the new space is usable and survives a remount, and a power cut at
//! every store, flush and fence of a grow (with every subset of the cache
//! lines not yet durable at the cut reaching media) mounts as the old or
//! the new size with the files intact, fsck clean, and the two superblock
//! copies agreeing again after that mount.

use std::collections::{BTreeMap, BTreeSet};

use daxbox_persist::{OutOfRange, PersistentMemory, VecMemory};
use daxfs::{Error, Filesystem, FormatOptions, Grown};

const MIB: u64 = 1 << 20;
const LINE: u64 = 64;

/// A region with a cache: stores land in `visible` and become durable
/// per 64-byte line after a flush of the line and a later fence. After
/// `budget` mutating calls (store, flush or fence) the power is cut:
/// later calls do nothing, and [`Cached::crash_images`] gives every image
/// the media may hold.
struct Cached {
    durable: Vec<u8>,
    visible: Vec<u8>,
    dirty: BTreeSet<u64>,
    flushed: BTreeSet<u64>,
    budget: Option<usize>,
    calls: usize,
}

impl Cached {
    fn new(bytes: Vec<u8>, budget: Option<usize>) -> Self {
        Cached {
            durable: bytes.clone(),
            visible: bytes,
            dirty: BTreeSet::new(),
            flushed: BTreeSet::new(),
            budget,
            calls: 0,
        }
    }

    fn alive(&mut self) -> bool {
        self.calls += 1;
        self.budget.is_none_or(|b| self.calls <= b)
    }

    fn store(&mut self, offset: u64, data: &[u8]) {
        let at = offset as usize;
        self.visible[at..at + data.len()].copy_from_slice(data);
        let first = offset / LINE;
        let last = (offset + data.len() as u64).div_ceil(LINE);
        for line in first..last {
            self.flushed.remove(&line);
            self.dirty.insert(line);
        }
    }

    /// Every image a power cut now may leave: the durable bytes plus any
    /// subset of the lines stored but not yet durable.
    fn crash_images(&self) -> Vec<Vec<u8>> {
        let pending: Vec<u64> = self.dirty.union(&self.flushed).copied().collect();
        assert!(pending.len() <= 8, "{} pending lines", pending.len());
        (0..1u32 << pending.len())
            .map(|mask| {
                let mut image = self.durable.clone();
                for (i, line) in pending.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        let r = (line * LINE) as usize..((line + 1) * LINE) as usize;
                        image[r.clone()].copy_from_slice(&self.visible[r]);
                    }
                }
                image
            })
            .collect()
    }
}

impl PersistentMemory for Cached {
    fn len(&self) -> u64 {
        self.visible.len() as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        daxbox_persist::check_range(offset, buf.len() as u64, self.len())?;
        let at = offset as usize;
        buf.copy_from_slice(&self.visible[at..at + buf.len()]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        daxbox_persist::check_range(offset, data.len() as u64, self.len())?;
        if self.alive() {
            self.store(offset, data);
        }
        Ok(())
    }
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)?;
        self.flush(offset, data.len() as u64)
    }
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        self.write(offset, &value.to_le_bytes())
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        daxbox_persist::check_range(offset, len, self.len())?;
        if self.alive() {
            for line in offset / LINE..(offset + len).div_ceil(LINE) {
                if self.dirty.remove(&line) {
                    self.flushed.insert(line);
                }
            }
        }
        Ok(())
    }
    fn fence(&mut self) {
        if self.alive() {
            for line in std::mem::take(&mut self.flushed) {
                let r = (line * LINE) as usize..((line + 1) * LINE) as usize;
                let bytes = self.visible[r.clone()].to_vec();
                self.durable[r].copy_from_slice(&bytes);
            }
        }
    }
}

type Files = BTreeMap<String, Vec<u8>>;

fn contents<M: PersistentMemory>(fs: &Filesystem<M>) -> Files {
    fs.list(None, 1000)
        .into_iter()
        .map(|e| {
            let mut buf = vec![0; e.size as usize];
            fs.read(e.id, 0, &mut buf).unwrap();
            (e.name, buf)
        })
        .collect()
}

/// An 8 MiB filesystem with two files, cleanly unmounted, at the start of
/// a region of `region` bytes.
fn small_filesystem(region: u64) -> Vec<u8> {
    let opts = FormatOptions {
        uuid: [9; 16],
        max_files: Some(16),
    };
    let mut fs = Filesystem::format(VecMemory::new((8 * MIB) as usize), opts).unwrap();
    let a = fs.create("a").unwrap();
    fs.write(a, 0, &[0xa1; 3 * MIB as usize]).unwrap();
    let b = fs.create("b").unwrap();
    fs.write(b, 4096, b"bee").unwrap();
    fs.persist(b).unwrap();
    let mut bytes = fs.unmount().into_bytes();
    bytes.resize(region as usize, 0);
    bytes
}

fn superblock_copies(image: &[u8]) -> (&[u8], &[u8]) {
    (&image[..128], &image[4096..4096 + 128])
}

#[test]
fn grow_adds_the_rest_of_the_region_and_survives_a_remount() {
    let mut mem = VecMemory::from_bytes(small_filesystem(20 * MIB));
    let before = {
        let fs = Filesystem::mount(mem.clone()).unwrap();
        (fs.statfs(), contents(&fs))
    };
    let grown = Filesystem::grow(&mut mem).unwrap();
    assert_eq!(
        grown,
        Grown {
            old_blocks: 2048,
            new_blocks: 5120
        }
    );
    assert_eq!(grown.added_bytes(), 12 * MIB);
    let mut fs = Filesystem::mount(mem).unwrap();
    let after = fs.statfs();
    assert_eq!(after.total_blocks, 5120);
    assert_eq!(after.free_blocks, before.0.free_blocks + 3072);
    assert_eq!(contents(&fs), before.1);
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    // The new space takes data: 14 MiB did not fit before.
    let big = fs.create("big").unwrap();
    fs.write(big, 0, &vec![0xb1; 14 * MIB as usize]).unwrap();
    fs.persist(big).unwrap();
    let mem = fs.unmount();
    let fs = Filesystem::mount(mem).unwrap();
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    assert_eq!(fs.statfs().total_blocks, 5120);
    let image = fs.unmount().into_bytes();
    let (primary, backup) = superblock_copies(&image);
    assert_eq!(primary, backup);
}

#[test]
fn grow_without_room_changes_nothing_and_refuses_what_mount_must_repair() {
    let mut mem = VecMemory::from_bytes(small_filesystem(8 * MIB + 4095));
    let image = mem.bytes().to_vec();
    assert_eq!(
        Filesystem::grow(&mut mem),
        Ok(Grown {
            old_blocks: 2048,
            new_blocks: 2048
        })
    );
    assert_eq!(mem.bytes(), &image[..]);
    // A committed journal transaction: mount first.
    let mut committed = VecMemory::from_bytes(small_filesystem(16 * MIB));
    committed.store_u64(2 * 4096, 7).unwrap();
    assert!(matches!(
        Filesystem::grow(&mut committed),
        Err(Error::Corrupt(m)) if m.contains("journal")
    ));
    // A damaged backup copy: mount first.
    let mut damaged = VecMemory::from_bytes(small_filesystem(16 * MIB));
    damaged.bytes_mut()[4096 + 40] ^= 1;
    assert!(matches!(
        Filesystem::grow(&mut damaged),
        Err(Error::Corrupt(m)) if m.contains("superblock")
    ));
    // A blank region is no filesystem to grow.
    assert_eq!(
        Filesystem::grow(&mut VecMemory::new((MIB) as usize)),
        Err(Error::Blank)
    );
}

#[test]
fn a_power_cut_anywhere_in_grow_leaves_the_old_or_the_new_size() {
    let base = small_filesystem(20 * MIB);
    let expected = contents(&Filesystem::mount(VecMemory::from_bytes(base.clone())).unwrap());
    let mut full = Cached::new(base.clone(), None);
    Filesystem::grow(&mut full).unwrap();
    let total = full.calls;
    assert!(total >= 5, "grow made only {total} calls");
    let mut seen = BTreeSet::new();
    for cut in 0..=total {
        let mut mem = Cached::new(base.clone(), Some(cut));
        let _ = Filesystem::grow(&mut mem);
        for image in mem.crash_images() {
            let fs = Filesystem::mount(VecMemory::from_bytes(image))
                .unwrap_or_else(|e| panic!("cut {cut}/{total}: {e}"));
            let blocks = fs.statfs().total_blocks;
            assert!(blocks == 2048 || blocks == 5120, "cut {cut}: {blocks}");
            seen.insert(blocks);
            assert!(fs.fsck().is_clean(), "cut {cut}: {}", fs.fsck());
            assert_eq!(contents(&fs), expected, "cut {cut}");
            let after = fs.into_memory().into_bytes();
            let (primary, backup) = superblock_copies(&after);
            assert_eq!(primary, backup, "cut {cut}: copies differ after mount");
            // A grow after the crash completes it.
            let mut again = VecMemory::from_bytes(after);
            Filesystem::grow(&mut again).unwrap();
            assert_eq!(
                Filesystem::mount(again).unwrap().statfs().total_blocks,
                5120
            );
        }
    }
    assert_eq!(seen.len(), 2, "both outcomes are reached: {seen:?}");
}
