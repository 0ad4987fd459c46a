//! Fixtures the daxfs integration tests share: a fresh filesystem in
//! memory, a seeded byte pattern, a file's whole contents, a remount.
#![allow(dead_code)] // each test file uses the part it needs

use daxbox_persist::VecMemory;
use daxfs::{Filesystem, FormatOptions};

pub const MIB: usize = 1024 * 1024;

/// A freshly formatted `mib` MiB filesystem with room for 64 files.
pub fn fresh(mib: usize) -> Filesystem<VecMemory> {
    let opts = FormatOptions {
        uuid: [0xCD; 16],
        max_files: Some(64),
    };
    Filesystem::format(VecMemory::new(mib * MIB), opts).expect("format")
}

/// `len` bytes of a pattern that differs with `seed`.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) as u8).wrapping_add(seed as u8))
        .collect()
}

/// The whole contents of file `name`.
pub fn contents(fs: &Filesystem<VecMemory>, name: &str) -> Vec<u8> {
    let id = fs.lookup(name).unwrap();
    let mut buf = vec![0u8; fs.file_size(id).unwrap() as usize];
    assert_eq!(fs.read(id, 0, &mut buf).unwrap(), buf.len());
    buf
}

/// Unmounts and mounts again.
pub fn remount(fs: Filesystem<VecMemory>) -> Filesystem<VecMemory> {
    Filesystem::mount(fs.unmount()).expect("remount")
}
