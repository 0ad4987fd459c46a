//! `clone_blocks`: a new file sharing a block range of another (no bytes
//! copied, no space taken), independent of it afterwards, fsck clean also
//! after a remount.

mod common;
use common::*;

#[test]
fn a_block_range_is_shared_not_copied_and_independent() {
    let mut fs = fresh(64);
    let data = pattern(10 * MIB + 1234, 3);
    let src = fs.create("src").unwrap();
    fs.write(src, 0, &data).unwrap();
    let free = fs.statfs().free_blocks;
    // 2 MiB..6 MiB, the tail from 8 MiB (ends in the partial last block),
    // a range from an odd block, one past the end.
    let mid = fs.clone_blocks(src, 512, 1024, "mid").unwrap();
    let tail = fs.clone_blocks(src, 2048, 1 << 20, "tail").unwrap();
    let odd = fs.clone_blocks(src, 3, 5, "odd").unwrap();
    let past = fs.clone_blocks(src, 1 << 20, 4, "past").unwrap();
    assert_eq!(fs.statfs().free_blocks, free, "nothing copied");
    assert_eq!(contents(&fs, "mid"), &data[2 * MIB..6 * MIB]);
    assert_eq!(contents(&fs, "tail"), &data[8 * MIB..]);
    assert_eq!(contents(&fs, "odd"), &data[3 * 4096..8 * 4096]);
    assert_eq!(fs.file_size(past).unwrap(), 0);
    assert!(fs.stat(mid).unwrap().shared_bytes == 4 * MIB as u64);
    // Writes to one do not show in the other.
    fs.write(mid, 0, b"changed").unwrap();
    fs.write(src, 8 * MIB as u64, b"CHANGED").unwrap();
    assert_eq!(&contents(&fs, "mid")[..7], b"changed");
    assert_eq!(
        &contents(&fs, "src")[2 * MIB..2 * MIB + 7],
        &data[2 * MIB..2 * MIB + 7]
    );
    assert_eq!(contents(&fs, "tail"), &data[8 * MIB..]);
    let _ = (tail, odd);
    assert!(fs.fsck().is_clean(), "{:?}", fs.fsck());
    // Removing the source leaves the clones whole; a remount agrees.
    fs.unlink("src").unwrap();
    let fs = remount(fs);
    assert_eq!(contents(&fs, "tail"), &data[8 * MIB..]);
    assert_eq!(contents(&fs, "odd"), &data[3 * 4096..8 * 4096]);
    assert!(fs.fsck().is_clean(), "{:?}", fs.fsck());
    assert!(fs.lookup("mid").is_ok() && fs.lookup("past").is_ok());
}
