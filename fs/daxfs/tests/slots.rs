//! Free slots and generations without per-slot tables: a new file takes
//! the lowest free slot, and a reused slot's generation (read from its free
//! record on media) is higher than every earlier file's in that slot, in
//! one mount and across remounts, so stale FileIds stay stale.

use daxbox_persist::VecMemory;
use daxfs::{Error, Filesystem, FormatOptions};

#[test]
fn reused_slots_get_higher_generations_across_remounts() {
    let opts = FormatOptions {
        uuid: [6; 16],
        max_files: Some(16),
    };
    let mut fs = Filesystem::format(VecMemory::new(8 << 20), opts).unwrap();
    let ids: Vec<_> = (0..5)
        .map(|i| fs.create(&format!("f{i}")).unwrap())
        .collect();
    assert_eq!(
        ids.iter().map(|id| id.slot()).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(ids.iter().all(|id| id.generation() == 1));
    fs.unlink("f1").unwrap();
    fs.unlink("f3").unwrap();
    let a = fs.create("a").unwrap();
    assert_eq!((a.slot(), a.generation()), (1, 2));
    assert_eq!(fs.stat(ids[1]), Err(Error::StaleFile));
    // Remount: slot 3's free record remembers generation 1.
    let mut fs = Filesystem::mount(fs.unmount()).unwrap();
    let b = fs.create("b").unwrap();
    assert_eq!((b.slot(), b.generation()), (3, 2));
    assert_eq!(fs.stat(ids[3]), Err(Error::StaleFile));
    let c = fs.create("c").unwrap();
    assert_eq!((c.slot(), c.generation()), (5, 1));
    // Churn one slot: every reuse goes one higher, and after a crash
    // (no unmount) too.
    for round in 0..3u32 {
        fs.unlink("a").unwrap();
        let again = fs.create("a").unwrap();
        assert_eq!((again.slot(), again.generation()), (1, 3 + round));
    }
    fs.unlink("a").unwrap();
    let mut fs = Filesystem::mount(fs.into_memory()).unwrap();
    let again = fs.create("a").unwrap();
    assert_eq!((again.slot(), again.generation()), (1, 6));
    // A full table says so, and a freed slot is found again.
    for i in 0..10 {
        fs.create(&format!("fill{i}")).unwrap();
    }
    assert_eq!(fs.create("one-too-many"), Err(Error::NoFileSlots));
    fs.unlink("f0").unwrap();
    let last = fs.create("last").unwrap();
    assert_eq!((last.slot(), last.generation()), (0, 2));
    assert!(fs.fsck().is_clean(), "{}", fs.fsck());
}
