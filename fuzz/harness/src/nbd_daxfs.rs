//! `nbd_daxfs`: the NBD engine over the real storage service
//! (`daxbox-storage`'s `NbdService`, daxfs on `VecMemory`), driven like the
//! kernel's listener drives it.
//!
//! The storage set: `pmem0` (2 MiB daxfs) with `disk` (512 KiB of data),
//! `ro` (128 KiB of data, `readonly=ro`), `sparse` (4 MiB, more than the
//! device: mostly a hole, writes into it run out of space) and `snap` (a
//! clone of `disk`); `pmem1` (128 KiB) exported raw.
//!
//! Input as for `nbd_session`: a mode byte (engine limits), 8 bytes of
//! seed, then the client's bytes.
//!
//! Checked: no panic, no wedge; the read-only file's bytes are unchanged;
//! afterwards daxfs `fsck` is clean and the filesystem mounts again from
//! its bytes and is still clean.

use std::cell::RefCell;
use std::sync::OnceLock;

use daxbox_bootconfig::ReadOnlyRule;
use daxbox_persist::VecMemory;
use daxbox_pmem::block::PmemBlockDevice;
use daxbox_storage::{NbdService, Role, SharedStorage, Storage, Volume};
use daxfs::{FileId, Filesystem, FormatOptions};

use crate::input::{Input, Rng};
use crate::nbd_session::config_for;
use crate::session;

/// The storage set shared by the service and the checks.
pub struct Shared(pub RefCell<Storage<VecMemory>>);

impl SharedStorage<VecMemory> for &Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Storage<VecMemory>) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

const FS_SIZE: usize = 2 << 20;
const RAW_SIZE: usize = 128 << 10;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The formatted `pmem0` image, built once per process.
fn template() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut fs = Filesystem::format(
            VecMemory::new(FS_SIZE),
            FormatOptions {
                uuid: [0x5a; 16],
                max_files: Some(64),
            },
        )
        .expect("format the template");
        let disk = fs.create("disk").unwrap();
        fs.write(disk, 0, &pattern(512 << 10, 1)).unwrap();
        let ro = fs.create("ro").unwrap();
        fs.write(ro, 0, &pattern(128 << 10, 2)).unwrap();
        let sparse = fs.create("sparse").unwrap();
        fs.truncate(sparse, 4 << 20).unwrap();
        fs.write(sparse, 1 << 20, &pattern(8192, 3)).unwrap();
        fs.clone_file("disk", "snap").unwrap();
        fs.unmount().into_bytes()
    })
}

/// The raw device's bytes.
fn raw_template() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| pattern(RAW_SIZE, 9))
}

fn read_file(fs: &Filesystem<VecMemory>, id: FileId) -> Vec<u8> {
    let size = fs.stat(id).expect("stat").size as usize;
    let mut buf = vec![0u8; size];
    let n = fs.read(id, 0, &mut buf).expect("read");
    buf.truncate(n);
    buf
}

/// Mounts the template and the raw device into a storage set.
pub fn storage() -> Storage<VecMemory> {
    let fs = Filesystem::mount(VecMemory::from_bytes(template().to_vec())).expect("mount template");
    let mut storage = Storage::new();
    storage.volumes.push(Volume {
        device: "pmem0".into(),
        role: Role::Filesystem(Box::new(fs)),
    });
    storage.volumes.push(Volume {
        device: "pmem1".into(),
        role: Role::Raw(PmemBlockDevice::new(
            "pmem1",
            VecMemory::from_bytes(raw_template().to_vec()),
            4096,
        )),
    });
    storage.set_read_only(vec![ReadOnlyRule::parse("ro", "fuzz")]);
    storage
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut rng = Rng::new(input.u64());
    let stream = input.rest();
    let shared = Shared(RefCell::new(storage()));
    let before = {
        let mut storage = shared.0.borrow_mut();
        let fs = storage.filesystem(0).expect("pmem0 is a filesystem");
        let ro = fs.lookup("ro").expect("ro exists");
        read_file(fs, ro)
    };
    let mut service = NbdService::with_config(&shared, config_for(mode));
    let outcome = session::drive(&mut service, stream, &mut rng);
    if outcome.produced > 0 {
        assert!(
            session::starts_like(&outcome.head, &daxbox_nbd::wire::NBDMAGIC.to_be_bytes()),
            "the first bytes are not the NBD greeting: {:?}",
            outcome.head
        );
    }
    drop(service);

    let mut storage = shared.0.into_inner();
    let fs = storage.filesystem(0).expect("pmem0 is a filesystem");
    let ro = fs.lookup("ro").expect("ro still exists");
    assert!(read_file(fs, ro) == before, "read-only file ro changed");
    let report = fs.fsck();
    assert!(report.is_clean(), "fsck after the session: {report:?}");
    let Some(Volume {
        role: Role::Filesystem(fs),
        ..
    }) = storage.volumes.drain(..).next()
    else {
        unreachable!("pmem0 is the first volume")
    };
    // A crash right now (no unmount) must leave a mountable, clean image.
    let again = Filesystem::mount(fs.into_memory()).expect("remount after the session");
    let report = again.fsck();
    assert!(report.is_clean(), "fsck after remount: {report:?}");
}
