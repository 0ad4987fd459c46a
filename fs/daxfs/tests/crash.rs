//! Crash atomicity with in-order persistence: each operation is run again
//! and again with the region "losing power" after its first N stores (every
//! later store is dropped), for every N. Mount must then succeed, fsck must
//! be clean, and the files must equal either the state before the
//! operation or the state after it, never a mix.
//!
//! (Reordering of unflushed cache lines is explored by `fs/crashcheck`.)

use std::collections::BTreeMap;

use daxbox_persist::{OutOfRange, PersistentMemory, VecMemory};
use daxfs::{Filesystem, FormatOptions};

/// A region that stops persisting after `budget` mutating calls.
struct PowerCut {
    inner: VecMemory,
    budget: Option<usize>,
    calls: usize,
}

impl PowerCut {
    fn alive(&mut self) -> bool {
        self.calls += 1;
        self.budget.is_none_or(|b| self.calls <= b)
    }
}

impl PersistentMemory for PowerCut {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.inner.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        daxbox_persist::check_range(offset, data.len() as u64, self.len())?;
        if self.alive() {
            self.inner.write(offset, data)?;
        }
        Ok(())
    }
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)
    }
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        if !offset.is_multiple_of(8) {
            return self.inner.store_u64(offset, value);
        }
        if self.alive() {
            self.inner.store_u64(offset, value)?;
        }
        Ok(())
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        self.inner.flush(offset, len)
    }
    fn fence(&mut self) {
        self.inner.fence()
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

type Op = fn(&mut Filesystem<PowerCut>);

/// Builds the starting image with `setup`, then cuts power at every
/// possible point of `op`.
fn explore(name: &str, setup: Op, op: Op) {
    let opts = FormatOptions {
        uuid: [4; 16],
        max_files: Some(16),
    };
    let mem = PowerCut {
        inner: VecMemory::new(12 * 1024 * 1024),
        budget: None,
        calls: 0,
    };
    let mut fs = Filesystem::format(mem, opts).unwrap();
    setup(&mut fs);
    // The starting state is the durable one (appends may have deferred
    // their sizes, FORMAT.md "Deferred size commits").
    fs.persist_all().unwrap();
    let before = contents(&fs);
    let base = fs.into_memory().inner;
    // Count the stores of a full run.
    let mut fs = Filesystem::mount(PowerCut {
        inner: base.clone(),
        budget: None,
        calls: 0,
    })
    .unwrap();
    let mount_calls = fs.memory().calls;
    op(&mut fs);
    let after = contents(&fs);
    let total = fs.memory().calls - mount_calls;
    assert_ne!(before, after, "{name}: the operation changes nothing");
    for cut in 0..=total {
        let mut fs = Filesystem::mount(PowerCut {
            inner: base.clone(),
            budget: Some(mount_calls + cut),
            calls: 0,
        })
        .unwrap();
        op(&mut fs);
        let fs = Filesystem::mount(fs.into_memory().inner)
            .unwrap_or_else(|e| panic!("{name} cut {cut}: {e}"));
        let report = fs.fsck();
        assert!(report.is_clean(), "{name} cut {cut}: {report}");
        let got = contents(&fs);
        assert!(
            got == before || got == after,
            "{name} cut {cut}/{total}: state is neither before nor after"
        );
    }
}

fn fragmented(fs: &mut Filesystem<PowerCut>) {
    let a = fs.create("a").unwrap();
    let b = fs.create("b").unwrap();
    for i in 0..20u64 {
        fs.write(a, i * 8192, &[i as u8 + 1; 4096]).unwrap();
        fs.write(b, i * 4096, &[0xB0; 4096]).unwrap();
    }
}

#[test]
fn create_is_atomic() {
    explore("create", fragmented, |fs| {
        fs.create("new").unwrap();
    });
}

#[test]
fn allocating_write_is_atomic() {
    explore("write", fragmented, |fs| {
        let a = fs.lookup("a").unwrap();
        // Fills a hole (new extent, overflow chain rewritten) and extends.
        fs.write(a, 4096, &[0xCC; 4096]).unwrap();
    });
    explore("extend", fragmented, |fs| {
        let b = fs.lookup("b").unwrap();
        fs.write(b, 3 * 1024 * 1024, &[0xDD; 10_000]).unwrap();
    });
}

#[test]
fn truncate_is_atomic() {
    explore("truncate", fragmented, |fs| {
        let a = fs.lookup("a").unwrap();
        fs.truncate(a, 5000).unwrap();
    });
}

#[test]
fn unlink_and_rename_are_atomic() {
    explore("unlink", fragmented, |fs| fs.unlink("a").unwrap());
    explore("rename-replace", fragmented, |fs| {
        fs.rename("a", "b").unwrap()
    });
}

#[test]
fn clone_and_cow_are_atomic() {
    explore("clone", fragmented, |fs| {
        fs.clone_file("a", "c").unwrap();
    });
    explore(
        "cow",
        |fs| {
            fragmented(fs);
            fs.clone_file("a", "c").unwrap();
        },
        |fs| {
            let c = fs.lookup("c").unwrap();
            fs.write(c, 100, &[0xEE; 9000]).unwrap();
        },
    );
}

#[test]
fn punch_is_atomic() {
    explore("punch", fragmented, |fs| {
        let b = fs.lookup("b").unwrap();
        fs.write_zeroes(b, 4096, 3 * 4096, true).unwrap();
    });
}

/// Old bytes in free blocks, then a large file whose last 2 MiB chunk is
/// preallocated past its end over those bytes.
fn preallocated_over_stale(fs: &mut Filesystem<PowerCut>) {
    let junk = fs.create("junk").unwrap();
    fs.write(junk, 0, &vec![0xFF; 6 * 1024 * 1024]).unwrap();
    fs.unlink("junk").unwrap();
    let big = fs.create("big").unwrap();
    fs.write(big, 0, &vec![0x11; 2 * 1024 * 1024 + 4096])
        .unwrap();
}

#[test]
fn extending_punch_never_exposes_stale_bytes() {
    explore("punch-extend", preallocated_over_stale, |fs| {
        let big = fs.lookup("big").unwrap();
        let size = 2 * 1024 * 1024 + 4096;
        fs.write_zeroes(big, size + 8192, 64 * 1024, true).unwrap();
    });
    explore("write-extend", preallocated_over_stale, |fs| {
        let big = fs.lookup("big").unwrap();
        fs.write(big, 2 * 1024 * 1024 + 100_000, b"end").unwrap();
    });
    explore("truncate-extend", preallocated_over_stale, |fs| {
        let big = fs.lookup("big").unwrap();
        fs.truncate(big, 3 * 1024 * 1024).unwrap();
    });
}
