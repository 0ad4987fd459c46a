//! The generic explorer: turns crash points into distinct crash images and
//! hands each to a checker, counting what it did.
//!
//! The explorer knows nothing about filesystems. A checker gets the image
//! (materialised, sharing pages with the persisted image) and says whether
//! it is acceptable; `crate::harness` is the checker for filesystems, and
//! the tests below use a toy record format to show that the explorer finds
//! a missing fence.

use alloc::collections::BTreeSet;
use alloc::string::String;

use crate::generate::{crash_images, CrashImage, Policy};
use crate::image::{ImageHash, PagedImage};
use crate::memory::{CrashPoint, PointKind};
use crate::rng::Rng;

/// Counters of one exploration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExploreStats {
    /// Crash points visited.
    pub points: u64,
    /// Images checked (distinct within their point).
    pub images: u64,
    /// Images never seen before anywhere in this exploration.
    pub distinct: u64,
}

/// One broken invariant found in one crash image.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Where the crash happened.
    pub point: PointKind,
    /// The image.
    pub image: ImageHash,
    /// What was wrong.
    pub message: String,
}

/// Visits crash points and checks their images.
pub struct Explorer {
    /// The image-selection bounds.
    pub policy: Policy,
    rng: Rng,
    seen: BTreeSet<ImageHash>,
    /// Counters so far.
    pub stats: ExploreStats,
}

impl Explorer {
    /// An explorer whose random choices follow `seed`.
    pub fn new(policy: Policy, seed: u64) -> Self {
        Self {
            policy,
            rng: Rng::new(seed),
            seen: BTreeSet::new(),
            stats: ExploreStats::default(),
        }
    }

    /// Every image hash checked so far.
    pub fn seen_hashes(&self) -> &BTreeSet<ImageHash> {
        &self.seen
    }

    /// True when `hash` has been checked before.
    pub fn seen(&self, hash: &ImageHash) -> bool {
        self.seen.contains(hash)
    }

    /// Generates the images of `point` and calls `check(image, persisted,
    /// first)` for each, where `first` says the image is new to the whole
    /// exploration (a checker may cache its verdicts by hash) and
    /// `image.materialise(persisted)` gives the bytes (only a checker that
    /// has no cached verdict needs to pay for that).
    pub fn visit(
        &mut self,
        point: &CrashPoint<'_>,
        mut check: impl FnMut(&CrashImage, &PagedImage, bool),
    ) {
        self.stats.points += 1;
        let Self {
            policy,
            rng,
            seen,
            stats,
        } = self;
        crash_images(point, policy, rng, |image| {
            stats.images += 1;
            let first = seen.insert(image.hash);
            if first {
                stats.distinct += 1;
            }
            check(&image, point.persisted, first);
        });
    }
}

#[cfg(test)]
mod tests {
    //! A toy persistent structure: a two-word record at offset 0 and a
    //! commit flag on the next line. Recovery trusts the record when the
    //! flag is set, so the record must be durable before the flag is.
    use super::*;
    use crate::image::PAGE;
    use crate::memory::CrashMemory;
    use alloc::boxed::Box;
    use alloc::format;
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use daxbox_persist::PersistentMemory;

    const RECORD: u64 = 0;
    const FLAG: u64 = 64;

    /// Commits the record (a, b). `fence_before_flag` false is the bug.
    fn commit(m: &mut CrashMemory, a: u64, b: u64, fence_before_flag: bool) {
        m.store_u64(RECORD, a).unwrap();
        m.store_u64(RECORD + 8, b).unwrap();
        m.flush(RECORD, 16).unwrap();
        if fence_before_flag {
            m.fence();
        }
        m.store_u64(FLAG, 1).unwrap();
        m.flush(FLAG, 8).unwrap();
        m.fence();
    }

    /// Checks every crash image of one commit; returns the violations and
    /// the number of distinct images.
    fn explore(fence_before_flag: bool) -> (Vec<Violation>, u64) {
        let mut memory = CrashMemory::new(PagedImage::zeroed(PAGE).unwrap());
        let explorer = Rc::new(RefCell::new(Explorer::new(Policy::default(), 1)));
        let violations = Rc::new(RefCell::new(Vec::new()));
        let (e, v) = (explorer.clone(), violations.clone());
        memory.set_observer(Box::new(move |point| {
            e.borrow_mut().visit(point, |image, persisted, _| {
                let bytes = image.materialise(persisted);
                let mut word = [0u8; 8];
                let mut read = |at: u64| {
                    bytes.read(at, &mut word).unwrap();
                    u64::from_le_bytes(word)
                };
                let (a, b, flag) = (read(RECORD), read(RECORD + 8), read(FLAG));
                if flag == 1 && (a, b) != (0x11, 0x22) {
                    v.borrow_mut().push(Violation {
                        point: point.kind,
                        image: image.hash,
                        message: format!("flag set over record ({a:#x}, {b:#x})"),
                    });
                }
            });
        }));
        commit(&mut memory, 0x11, 0x22, fence_before_flag);
        memory.mark_operation_end();
        let found = violations.borrow().clone();
        let distinct = explorer.borrow().stats.distinct;
        (found, distinct)
    }

    #[test]
    fn correct_commit_passes() {
        let (violations, distinct) = explore(true);
        assert!(violations.is_empty(), "{violations:?}");
        // Record states: nothing, a, a+b; then flag over a complete record.
        assert_eq!(distinct, 4);
    }

    #[test]
    fn missing_fence_is_caught() {
        let (violations, _) = explore(false);
        assert!(!violations.is_empty(), "the missing fence went unnoticed");
        assert!(violations
            .iter()
            .all(|v| v.point == PointKind::Fence(1) || v.point == PointKind::OperationEnd(1)));
    }

    #[test]
    fn same_line_order_needs_no_fence() {
        // Record and flag on one line: stores to one line persist in order,
        // so a flag written after the record can never be seen without it.
        let mut memory = CrashMemory::new(PagedImage::zeroed(PAGE).unwrap());
        memory.store_u64(0, 0x11).unwrap();
        memory.store_u64(8, 1).unwrap();
        memory.flush(0, 16).unwrap();
        let mut explorer = Explorer::new(Policy::default(), 1);
        let mut bad = 0;
        memory.with_point(|point| {
            explorer.visit(point, |image, persisted, _| {
                let bytes = image.materialise(persisted);
                let mut w = [0u8; 16];
                bytes.read(0, &mut w).unwrap();
                if w[8] == 1 && w[0] != 0x11 {
                    bad += 1;
                }
            })
        });
        assert_eq!(bad, 0);
        assert_eq!(explorer.stats.distinct, 3);
    }
}
