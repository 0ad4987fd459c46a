//! Mount validates everything before it writes anything: an image that is
//! refused leaves the region byte for byte as it was, even when it holds a
//! committed journal transaction (which a successful mount replays) or a
//! damaged superblock copy (which a successful mount repairs).

use std::cell::RefCell;
use std::rc::Rc;

use daxbox_persist::{OutOfRange, PersistentMemory, VecMemory};
use daxfs::format::{self, Extent, Record, BLOCK_SIZE};
use daxfs::{Error, Filesystem, FormatOptions};

const MIB: usize = 1024 * 1024;

/// A region the test keeps a handle on after mount consumed (and, on
/// refusal, dropped) its copy: every store lands in the shared bytes.
#[derive(Clone)]
struct Shared(Rc<RefCell<VecMemory>>);

impl PersistentMemory for Shared {
    fn len(&self) -> u64 {
        self.0.borrow().len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.0.borrow().read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.0.borrow_mut().write(offset, data)
    }
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.0.borrow_mut().write_nt(offset, data)
    }
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        self.0.borrow_mut().store_u64(offset, value)
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        self.0.borrow_mut().flush(offset, len)
    }
    fn fence(&mut self) {
        self.0.borrow_mut().fence()
    }
}

/// Two files, cleanly unmounted, as bytes.
fn image() -> Vec<u8> {
    let opts = FormatOptions {
        uuid: [3; 16],
        max_files: Some(32),
    };
    let mut fs = Filesystem::format(VecMemory::new(8 * MIB), opts).unwrap();
    let a = fs.create("a").unwrap();
    fs.write(a, 0, &[0xAA; 10_000]).unwrap();
    let b = fs.create("b").unwrap();
    fs.write(b, 0, &[0xBB; 10_000]).unwrap();
    fs.unmount().into_bytes()
}

/// Leaves a committed transaction in the journal that grows file `a`.
fn commit_growth_of_a(bytes: &mut [u8]) {
    let mut r = format::image_record(bytes, 0).unwrap();
    assert_eq!(r.name, "a");
    r.size = 4096;
    format::commit_image_transaction(bytes, 41, 0, &r);
}

/// Makes file `b`'s extents overlap each other (valid checksum): an
/// inconsistency the table scan finds, after the journal and superblock
/// checks pass.
fn overlap_extents_of_b(bytes: &mut [u8]) {
    let mut r = format::image_record(bytes, 1).unwrap();
    assert_eq!(r.name, "b");
    let p = r.inline[0].physical;
    r.inline = vec![
        Extent {
            logical: 0,
            len: 2,
            physical: p,
        },
        Extent {
            logical: 1,
            len: 1,
            physical: p + 5,
        },
    ];
    r.extent_count = 2;
    format::put_image_record(bytes, 1, &r);
}

/// Mounts through a shared handle; returns the error and the bytes after.
fn refused(bytes: Vec<u8>) -> (Error, Vec<u8>) {
    let shared = Shared(Rc::new(RefCell::new(VecMemory::from_bytes(bytes))));
    let err = Filesystem::mount(shared.clone())
        .err()
        .expect("mount refused");
    let after = shared.0.borrow().bytes().to_vec();
    (err, after)
}

#[test]
fn the_images_are_good_without_the_inconsistency() {
    // Control: the journal and the damaged copy alone mount (and are then
    // replayed and repaired), so the refusals below come from the scan.
    let mut bytes = image();
    commit_growth_of_a(&mut bytes);
    bytes[BLOCK_SIZE as usize + 40] ^= 1;
    let mut fs = Filesystem::mount(VecMemory::from_bytes(bytes)).unwrap();
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    let a = fs.lookup("a").unwrap();
    assert_eq!(fs.stat(a).unwrap().size, 4096);
    let _ = fs.create("c").unwrap();
}

#[test]
fn a_refused_image_with_a_committed_journal_is_not_written() {
    let mut bytes = image();
    commit_growth_of_a(&mut bytes);
    overlap_extents_of_b(&mut bytes);
    let before = bytes.clone();
    let (err, after) = refused(bytes);
    assert!(err.to_string().contains("overlaps"), "{err}");
    assert!(after == before, "the refused mount changed the region");
}

#[test]
fn a_refused_image_with_a_damaged_superblock_copy_is_not_written() {
    for copy in [0usize, 1] {
        let mut bytes = image();
        bytes[copy * BLOCK_SIZE as usize + 40] ^= 1;
        overlap_extents_of_b(&mut bytes);
        let before = bytes.clone();
        let (err, after) = refused(bytes);
        assert!(err.to_string().contains("overlaps"), "{err}");
        assert!(
            after == before,
            "copy {copy}: the refused mount changed the region"
        );
    }
}

#[test]
fn the_scan_sees_the_records_as_they_will_be_after_replay() {
    // The committed transaction frees file b; b's on-media record is
    // inconsistent, but after replay it is a free record: mount succeeds.
    let mut bytes = image();
    overlap_extents_of_b(&mut bytes);
    let generation = format::image_record(&bytes, 1).unwrap().generation;
    format::commit_image_transaction(&mut bytes, 9, 1, &Record::free(generation));
    let fs = Filesystem::mount(VecMemory::from_bytes(bytes)).unwrap();
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
    assert_eq!(fs.lookup("b"), Err(Error::NotFound));
}

#[test]
fn mount_reports_what_it_recovered() {
    let clean = Filesystem::mount(VecMemory::from_bytes(image())).unwrap();
    assert_eq!(clean.recovered(), daxfs::Recovered::default());
    let mut bytes = image();
    commit_growth_of_a(&mut bytes);
    let fs = Filesystem::mount(VecMemory::from_bytes(bytes)).unwrap();
    assert!(fs.recovered().journal_replayed);
    assert!(!fs.recovered().superblock_repaired);
    // Remounted after the replay: nothing left to recover.
    let again = Filesystem::mount(fs.unmount()).unwrap();
    assert_eq!(again.recovered(), daxfs::Recovered::default());
}
