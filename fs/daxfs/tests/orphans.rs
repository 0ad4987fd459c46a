//! Open-unlink (FORMAT.md "Orphans"): a file that is open when its name
//! is removed stays readable and writable through its `FileId` until the
//! last `close`, which frees its blocks; a crash in between leaves an
//! orphan record that the next mount reclaims.

use daxbox_persist::{PersistentMemory, VecMemory};
use daxfs::format::{self, Superblock, BLOCK_SIZE, FORMAT_VERSION, SUPER_SIZE};
use daxfs::{Error, Filesystem, FormatOptions, Probe};

const MIB: usize = 1024 * 1024;

fn fresh(mib: usize) -> Filesystem<VecMemory> {
    let opts = FormatOptions {
        uuid: [0xAB; 16],
        max_files: Some(64),
    };
    Filesystem::format(VecMemory::new(mib * MIB), opts).expect("format")
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
fn an_open_file_outlives_its_name_and_its_space_returns_on_the_last_close() {
    let mut fs = fresh(16);
    let free0 = fs.statfs().free_blocks;
    let id = fs.create("big").unwrap();
    let data = pattern(3 * MIB, 7);
    fs.write(id, 0, &data).unwrap();
    let free1 = fs.statfs().free_blocks;
    assert!(free1 < free0);
    fs.open(id).unwrap();
    fs.open(id).unwrap();
    fs.unlink("big").unwrap();
    // The name is gone at once and can be used again.
    assert_eq!(fs.lookup("big"), Err(Error::NotFound));
    assert!(fs.list(None, 10).is_empty());
    let again = fs.create("big").unwrap();
    assert_ne!(again, id);
    fs.write(again, 0, b"new").unwrap();
    // The orphan keeps its data and takes writes.
    let mut buf = vec![0u8; data.len()];
    assert_eq!(fs.read(id, 0, &mut buf).unwrap(), data.len());
    assert_eq!(buf, data);
    fs.write(id, 4 * MIB as u64, b"past the end").unwrap();
    let mut tail = [0u8; 12];
    fs.read(id, 4 * MIB as u64, &mut tail).unwrap();
    assert_eq!(&tail, b"past the end");
    assert_eq!(fs.stat(id).unwrap().name, "");
    assert_eq!(fs.statfs().files, 1);
    assert_eq!(fs.statfs().orphans, 1);
    let report = fs.fsck();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.orphans, 1);
    // One close: still open by the other holder.
    fs.close(id).unwrap();
    assert!(fs.read(id, 0, &mut buf[..10]).is_ok());
    // The last close frees the blocks.
    let before = fs.statfs().free_blocks;
    fs.close(id).unwrap();
    assert_eq!(fs.read(id, 0, &mut buf[..10]), Err(Error::StaleFile));
    assert_eq!(fs.statfs().orphans, 0);
    assert!(fs.statfs().free_blocks > before);
    assert_clean(&fs);
    fs.unlink("big").unwrap();
    assert_eq!(fs.statfs().free_blocks, free0);
    assert_clean(&fs);
}

#[test]
fn unlink_of_a_closed_file_frees_at_once_and_close_of_a_live_file_keeps_it() {
    let mut fs = fresh(8);
    let free0 = fs.statfs().free_blocks;
    let id = fs.create("f").unwrap();
    fs.write(id, 0, &pattern(100_000, 1)).unwrap();
    fs.open(id).unwrap();
    fs.close(id).unwrap();
    assert_eq!(fs.lookup("f"), Ok(id));
    assert!(fs.read(id, 0, &mut [0u8; 10]).is_ok());
    fs.unlink("f").unwrap();
    assert_eq!(fs.statfs().free_blocks, free0);
    assert_eq!(fs.open(id), Err(Error::StaleFile));
    assert_clean(&fs);
}

#[test]
fn rename_over_an_open_file_orphans_the_replaced_file() {
    let mut fs = fresh(8);
    let free0 = fs.statfs().free_blocks;
    let a = fs.create("a").unwrap();
    fs.write(a, 0, b"from a").unwrap();
    let b = fs.create("b").unwrap();
    fs.write(b, 0, &pattern(200_000, 2)).unwrap();
    fs.open(b).unwrap();
    fs.rename("a", "b").unwrap();
    assert_eq!(fs.lookup("b"), Ok(a));
    let mut buf = vec![0u8; 200_000];
    fs.read(b, 0, &mut buf).unwrap();
    assert_eq!(buf, pattern(200_000, 2));
    assert_clean(&fs);
    fs.close(b).unwrap();
    fs.unlink("b").unwrap();
    assert_eq!(fs.statfs().free_blocks, free0);
    assert_clean(&fs);
}

#[test]
fn mount_reclaims_orphans_left_by_a_crash_or_an_unmount() {
    for crash in [true, false] {
        let mut fs = fresh(16);
        let free0 = fs.statfs().free_blocks;
        let keep = fs.create("keep").unwrap();
        fs.write(keep, 0, b"kept").unwrap();
        let free_keep = fs.statfs().free_blocks;
        let mut ids = Vec::new();
        for i in 0..9u8 {
            let name = format!("gone{i}");
            let id = fs.create(&name).unwrap();
            fs.write(id, 0, &pattern(50_000 + i as usize * 4096, i))
                .unwrap();
            fs.open(id).unwrap();
            fs.unlink(&name).unwrap();
            ids.push(id);
        }
        assert_eq!(fs.statfs().orphans, 9);
        let mem = if crash {
            fs.into_memory()
        } else {
            fs.unmount()
        };
        // Unmounted: fsck counts the orphans and calls the image clean.
        let report = Filesystem::fsck_image(&mem);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.orphans, 9);
        let fs = Filesystem::mount(mem).unwrap();
        assert_eq!(fs.statfs().orphans, 0);
        assert_eq!(fs.recovered().orphans_reclaimed, 9);
        assert_eq!(fs.statfs().free_blocks, free_keep);
        assert!(free_keep < free0);
        for id in ids {
            assert_eq!(fs.read(id, 0, &mut [0u8; 4]), Err(Error::StaleFile));
        }
        assert_clean(&fs);
        let mem = fs.into_memory();
        let report = Filesystem::fsck_image(&mem);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.orphans, 0);
        // Nothing left to reclaim on the mount after.
        let fs = Filesystem::mount(mem).unwrap();
        assert_eq!(fs.recovered().orphans_reclaimed, 0);
    }
}

#[test]
fn remount_keeping_holds_keeps_open_orphans() {
    let mut fs = fresh(8);
    let id = fs.create("x").unwrap();
    fs.write(id, 0, b"still here").unwrap();
    fs.open(id).unwrap();
    fs.unlink("x").unwrap();
    let holds = fs.holders();
    assert_eq!(holds, vec![(id, 1)]);
    let mem = fs.unmount();
    let mut fs = Filesystem::mount_keeping(mem, &daxfs::UNBOUNDED, &holds).unwrap();
    let mut buf = [0u8; 10];
    fs.read(id, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(fs.statfs().orphans, 1);
    assert_clean(&fs);
    fs.close(id).unwrap();
    assert_eq!(fs.statfs().orphans, 0);
    assert_clean(&fs);
}

/// Rewrites both superblock copies with `version`.
fn set_version(mem: &mut VecMemory, version: u32) {
    let mut raw = [0u8; SUPER_SIZE];
    mem.read(0, &mut raw).unwrap();
    let sb = Superblock::decode(&raw).unwrap();
    let old = Superblock { version, ..sb };
    for copy in 0..2 {
        mem.write_flush(copy * BLOCK_SIZE, &old.encode()).unwrap();
    }
    mem.fence();
}

#[test]
fn a_version_1_image_mounts_and_is_upgraded_and_a_newer_one_is_refused_by_version() {
    let mut fs = fresh(8);
    let id = fs.create("old").unwrap();
    fs.write(id, 0, b"v1 data").unwrap();
    let mut mem = fs.unmount();
    set_version(&mut mem, 1);
    assert!(matches!(
        Filesystem::probe(&mem),
        Probe::Daxfs { version: 1, .. }
    ));
    assert!(Filesystem::fsck_image(&mem).is_clean());
    let fs = Filesystem::mount(mem).unwrap();
    assert_clean(&fs);
    assert!(matches!(
        Filesystem::probe(fs.memory()),
        Probe::Daxfs { version: 2, .. }
    ));
    let mut mem = fs.unmount();
    set_version(&mut mem, FORMAT_VERSION + 1);
    assert_eq!(
        Filesystem::mount(mem).err(),
        Some(Error::UnsupportedVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        })
    );
}

#[test]
fn an_orphan_record_in_a_version_1_image_is_refused() {
    let mut fs = fresh(8);
    let id = fs.create("o").unwrap();
    fs.open(id).unwrap();
    fs.unlink("o").unwrap();
    let mut mem = fs.into_memory();
    set_version(&mut mem, 1);
    let report = Filesystem::fsck_image(&mem);
    assert!(!report.is_clean());
    assert!(matches!(Filesystem::mount(mem), Err(Error::Corrupt(_))));
    let _ = format::FORMAT_VERSION;
}
