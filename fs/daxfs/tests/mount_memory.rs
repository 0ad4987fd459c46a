//! Mount memory, measured with a counting global allocator: heap bytes per
//! 1,000 files mounted, heap at mount of an empty 1 TiB-geometry image
//! (which must not depend on the file-table size), and the mount budget's
//! charge checked against the heap really used (the estimate must not be
//! below it, nor wildly above). One test in this binary, so nothing else
//! allocates while it measures. Run with `--nocapture` to see the figures.

use std::collections::BTreeMap;

use daxbox_budget::Budget;
use daxbox_persist::{check_range, OutOfRange, PersistentMemory, VecMemory};
use daxfs::{Filesystem, FormatOptions};
use peak_alloc::PeakAlloc;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// Heap bytes now.
fn live() -> usize {
    HEAP.current_usage()
}

/// Heap now, and resets the peak to it.
fn heap() -> usize {
    HEAP.reset_peak_usage();
    HEAP.current_usage()
}

/// A sparse region: only pages ever written with non-zero bytes exist.
struct Sparse {
    len: u64,
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
}

impl PersistentMemory for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(offset, buf.len() as u64, self.len)?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (page, within) = (at / 4096, (at % 4096) as usize);
            let n = (4096 - within).min(buf.len() - done);
            match self.pages.get(&page) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(offset, data.len() as u64, self.len)?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, within) = (at / 4096, (at % 4096) as usize);
            let n = (4096 - within).min(data.len() - done);
            let piece = &data[done..done + n];
            if let Some(p) = self.pages.get_mut(&page) {
                p[within..within + n].copy_from_slice(piece);
            } else if piece != &[0u8; 4096][..n] {
                let mut p = Box::new([0u8; 4096]);
                p[within..within + n].copy_from_slice(piece);
                self.pages.insert(page, p);
            }
            done += n;
        }
        Ok(())
    }
    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)
    }
    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        self.write(offset, &value.to_le_bytes())
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        check_range(offset, len, self.len)
    }
    fn fence(&mut self) {}
}

/// Heap held by a mounted filesystem (and the peak while mounting), and
/// the budget's charge for it.
fn mounted<M: PersistentMemory>(mem: M) -> (usize, usize, usize, M) {
    let budget: &'static Budget = Box::leak(Box::new(Budget::new("measure", usize::MAX)));
    let before = heap();
    let fs = Filesystem::mount_with_budget(mem, budget).unwrap();
    let peak = HEAP.peak_usage() - before;
    let held = live() - before;
    let charged = budget.stats().used;
    let charged_peak = budget.stats().peak;
    assert!(
        charged_peak >= peak * 9 / 10,
        "mount peak {peak} bytes, but at most {charged_peak} charged"
    );
    (held, peak, charged, fs.unmount())
}

#[test]
fn mount_memory_is_per_file_in_use_and_the_charge_covers_it() {
    // Heap per 1,000 files: 10,000 files of one extent each, against the
    // same geometry with no files.
    const FILES: usize = 10_000;
    let opts = FormatOptions {
        uuid: [2; 16],
        max_files: Some(16_384),
    };
    let empty = Filesystem::format(VecMemory::new(128 << 20), opts)
        .unwrap()
        .unmount();
    let mut fs = Filesystem::format(VecMemory::new(128 << 20), opts).unwrap();
    for i in 0..FILES {
        let id = fs.create(&format!("file-{i:05}")).unwrap();
        fs.write(id, 0, &[7; 100]).unwrap();
    }
    let full = fs.unmount();
    let (h0, p0, c0, _) = mounted(empty);
    let (h1, p1, c1, _) = mounted(full);
    let per_1000 = (h1 - h0) * 1000 / FILES;
    let charged_per_1000 = (c1 - c0) * 1000 / FILES;
    println!(
        "mount memory: empty 128 MiB image {h0} bytes (peak {p0}, charged {c0}); \
         with {FILES} files {h1} bytes (peak {p1}, charged {c1}); \
         {per_1000} heap bytes per 1,000 files, {charged_per_1000} charged"
    );
    assert!(c1 >= h1, "charge {c1} below the heap {h1}");
    assert!(c1 <= 3 * h1, "charge {c1} far above the heap {h1}");

    // An empty 1 TiB-geometry image: default max_files (1M slots, a 512
    // MiB table) against 64 slots. The heap is the allocator's (one entry
    // per free 2 MiB chunk) and does not depend on the table.
    let mut figures = Vec::new();
    for max_files in [None, Some(64)] {
        let mem = Sparse {
            len: 1 << 40,
            pages: BTreeMap::new(),
        };
        let opts = FormatOptions {
            uuid: [4; 16],
            max_files,
        };
        let mem = Filesystem::format(mem, opts).unwrap().unmount();
        let (held, peak, charged, _) = mounted(mem);
        println!(
            "mount memory: empty 1 TiB image, max_files {}: {held} bytes held, peak {peak}, charged {charged}",
            max_files.map_or("default (1048576)".to_string(), |n| n.to_string())
        );
        assert!(charged >= held, "charge {charged} below the heap {held}");
        figures.push(held);
    }
    let (a, b) = (figures[0], figures[1]);
    assert!(
        a.abs_diff(b) < 64 * 1024,
        "heap depends on max_files: {a} vs {b}"
    );
}
