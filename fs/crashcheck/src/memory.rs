//! [`CrashMemory`]: a [`PersistentMemory`] that models the CPU cache.
//!
//! # The model
//! The model is the one the persistence trait documents
//! (`drivers/persist`), made concrete so that every image a power failure
//! could leave can be built:
//! - Every store is visible to reads at once (the *current* image) and is
//!   appended to the pending log of each 64-byte cache line it touches.
//!   Stores to one line reach media in program order, so what a crash keeps
//!   of a line is a **prefix** of its log; lines are independent.
//! - Log entries ("pieces") are cut at 8-byte aligned boundaries, so a piece
//!   never spans two aligned words. A piece from [`PersistentMemory::store_u64`]
//!   is atomic: a crash keeps it whole or not at all. A piece from `write`,
//!   `write_nt` or `zero` is not atomic: the piece at the end of a kept
//!   prefix may also be *torn* (only its first bytes kept), see
//!   [`crate::generate`].
//! - `flush` marks every piece logged so far on the lines it covers;
//!   `write_nt` pieces are marked by themselves. `fence` makes the marked
//!   prefix of each line durable: it moves into the *persisted* image.
//!   Because a line persists in order, a marked piece carries every earlier
//!   piece of its line with it (a conservative reading of x86, where a
//!   non-temporal store to a cached line first evicts the line).
//! - A dirty line may be written back on its own at any time, so a crash
//!   may keep any prefix of any pending line, flushed or not.
//!
//! Crash points are every `fence` (observed *before* the fence takes
//! effect: the fence itself may not complete) and every
//! [`CrashMemory::mark_operation_end`]. At each point the installed
//! observer gets a [`CrashPoint`] from which [`crate::generate`] builds the
//! crash images.
//!
//! [`CrashMemory`] is a cheap handle (`Rc<RefCell<..>>`): the filesystem
//! under test owns one clone, the test harness keeps another to mark
//! operation ends and to look at the model.
//!
//! It is also the one recording model for other tests of code that writes
//! through the trait (the pmem block device's tests in `drivers/pmem`):
//! [`CrashMemory::is_durable`] answers whether a range has reached media,
//! and two knobs, off by default and unused by the explorer, stand in for
//! hardware: [`CrashMemory::set_persistent_cache`] (eADR: every store is
//! marked as if flushed, so the next fence makes it durable) and
//! [`CrashMemory::set_physical_base`] (for `physical_address`).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use daxbox_persist::{check_range, OutOfRange, PersistentMemory, CACHE_LINE};

use crate::image::{ImageHash, LineBytes, PagedImage, LINE};

/// How a piece was stored: decides whether it can tear and when it is
/// marked for the next fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// Cached store (`write`, `zero`): may tear, durable after flush + fence.
    Cached,
    /// Non-temporal store (`write_nt`): may tear, durable after a fence.
    NonTemporal,
    /// `store_u64`: power-fail atomic, durable after flush + fence.
    Atomic,
}

/// One logged store to one line, at most 8 bytes inside one aligned word.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    /// Byte offset inside the line.
    pub offset: u8,
    /// Number of bytes (1..=8).
    pub len: u8,
    /// How it was stored.
    pub kind: PieceKind,
    /// The bytes (the first `len` are used).
    pub bytes: [u8; 8],
}

impl Piece {
    /// Applies the first `take` bytes of this piece to `line`.
    pub fn apply(&self, line: &mut LineBytes, take: usize) {
        let take = take.min(usize::from(self.len));
        let at = usize::from(self.offset);
        line[at..at + take].copy_from_slice(&self.bytes[..take]);
    }

    /// True when a crash may keep only part of this piece.
    pub fn can_tear(&self) -> bool {
        self.kind != PieceKind::Atomic && self.len > 1
    }
}

/// The pending (not yet durable) stores of one line.
#[derive(Clone, Debug, Default)]
pub struct LineLog {
    /// Stores in program order.
    pub pieces: Vec<Piece>,
    /// The prefix the next fence makes durable (flushed or non-temporal).
    pub marked: usize,
}

/// Why a crash point was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointKind {
    /// Just before the `n`-th fence (counted from the memory's creation)
    /// takes effect.
    Fence(u64),
    /// At the end of the `n`-th operation marked by the harness.
    OperationEnd(u64),
}

/// Counters of what the code under test did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Calls of `write`, `write_nt`, `store_u64` (and `zero`'s writes).
    pub stores: u64,
    /// Calls of `flush`.
    pub flushes: u64,
    /// Calls of `fence`.
    pub fences: u64,
    /// Operation ends marked.
    pub operations: u64,
}

/// The observer called at every crash point.
pub type Observer = Box<dyn FnMut(&CrashPoint<'_>)>;

/// The model state behind a [`CrashMemory`] handle.
pub struct Model {
    current: PagedImage,
    persisted: PagedImage,
    persisted_hash: ImageHash,
    pending: BTreeMap<u64, LineLog>,
    stats: MemoryStats,
    observer: Option<Observer>,
    persistent_cache: bool,
    physical_base: Option<u64>,
}

/// A view of the model at one crash point.
pub struct CrashPoint<'a> {
    /// Why this point was taken.
    pub kind: PointKind,
    /// The durable image.
    pub persisted: &'a PagedImage,
    /// Hash of `persisted`.
    pub persisted_hash: ImageHash,
    /// Dirty lines (line index to pending log), in address order.
    pub pending: &'a BTreeMap<u64, LineLog>,
}

/// A [`PersistentMemory`] that records stores, flushes and fences in a
/// model of the CPU cache (see the module docs).
#[derive(Clone)]
pub struct CrashMemory {
    model: Rc<RefCell<Model>>,
}

impl CrashMemory {
    /// A memory whose current and persisted contents are both `image`.
    pub fn new(image: PagedImage) -> Self {
        let hash = image.hash();
        Self::with_hash(image, hash)
    }

    /// As [`CrashMemory::new`] with the image's hash already known.
    pub fn with_hash(image: PagedImage, hash: ImageHash) -> Self {
        Self {
            model: Rc::new(RefCell::new(Model {
                current: image.clone(),
                persisted: image,
                persisted_hash: hash,
                pending: BTreeMap::new(),
                stats: MemoryStats::default(),
                observer: None,
                persistent_cache: false,
                physical_base: None,
            })),
        }
    }

    /// Installs the observer called at every crash point (replacing any
    /// earlier one). The observer must not use this memory.
    pub fn set_observer(&self, observer: Observer) {
        self.model.borrow_mut().observer = Some(observer);
    }

    /// Removes the observer.
    pub fn clear_observer(&self) {
        self.model.borrow_mut().observer = None;
    }

    /// Marks the end of one operation of the code under test: a crash
    /// point, where the observer sees everything still pending.
    pub fn mark_operation_end(&self) {
        let mut model = self.model.borrow_mut();
        model.stats.operations += 1;
        let n = model.stats.operations;
        model.observe(PointKind::OperationEnd(n));
    }

    /// What reads see now.
    pub fn current_image(&self) -> PagedImage {
        self.model.borrow().current.clone()
    }

    /// What is durable now.
    pub fn persisted_image(&self) -> PagedImage {
        self.model.borrow().persisted.clone()
    }

    /// Hash of what is durable now.
    pub fn persisted_hash(&self) -> ImageHash {
        self.model.borrow().persisted_hash
    }

    /// Number of lines with stores that are not yet durable.
    pub fn dirty_lines(&self) -> usize {
        self.model.borrow().pending.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> MemoryStats {
        self.model.borrow().stats
    }

    /// Claims (or stops claiming) that the CPU caches are persistent
    /// (eADR): `cache_is_persistent` returns `on`, and every later store is
    /// marked for the next fence as if it had been flushed.
    pub fn set_persistent_cache(&self, on: bool) {
        self.model.borrow_mut().persistent_cache = on;
    }

    /// Gives the region a physical base address: `physical_address(o)`
    /// returns `base + o` (`None`, the default, means no address).
    pub fn set_physical_base(&self, base: Option<u64>) {
        self.model.borrow_mut().physical_base = base;
    }

    /// True when every byte of `offset..offset + len` is durable: no store
    /// to it is still pending (never stored, or stored and then made
    /// durable by flush and fence, or by a non-temporal store and fence).
    pub fn is_durable(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let end = offset.saturating_add(len);
        let model = self.model.borrow();
        let first = offset / CACHE_LINE;
        let last = (end - 1) / CACHE_LINE;
        model.pending.range(first..=last).all(|(&line, log)| {
            log.pieces.iter().all(|piece| {
                let start = line * CACHE_LINE + u64::from(piece.offset);
                let stop = start + u64::from(piece.len);
                stop <= offset || start >= end
            })
        })
    }

    /// Runs `f` on the crash point "now" without a fence (for tests).
    pub fn with_point<R>(&self, f: impl FnOnce(&CrashPoint<'_>) -> R) -> R {
        let model = self.model.borrow();
        let n = model.stats.operations;
        f(&model.point(PointKind::OperationEnd(n)))
    }
}

impl Model {
    fn point(&self, kind: PointKind) -> CrashPoint<'_> {
        CrashPoint {
            kind,
            persisted: &self.persisted,
            persisted_hash: self.persisted_hash,
            pending: &self.pending,
        }
    }

    fn observe(&mut self, kind: PointKind) {
        // Take the observer out so it can borrow the rest of the model.
        if let Some(mut observer) = self.observer.take() {
            observer(&self.point(kind));
            self.observer = Some(observer);
        }
    }

    /// Logs a store that has already been range-checked.
    fn log(&mut self, offset: u64, data: &[u8], kind: PieceKind) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            // Cut at the next 8-byte boundary: a piece stays in one word.
            let word_left = 8 - (at % 8) as usize;
            let n = word_left.min(rest.len());
            let mut bytes = [0u8; 8];
            bytes[..n].copy_from_slice(&rest[..n]);
            let line = at / CACHE_LINE;
            let piece = Piece {
                offset: (at % CACHE_LINE) as u8,
                len: n as u8,
                kind,
                bytes,
            };
            let log = self.pending.entry(line).or_default();
            log.pieces.push(piece);
            if kind == PieceKind::NonTemporal || self.persistent_cache {
                log.marked = log.pieces.len();
            }
            at += n as u64;
            rest = &rest[n..];
        }
    }

    fn store(&mut self, offset: u64, data: &[u8], kind: PieceKind) -> Result<(), OutOfRange> {
        self.current.write(offset, data)?;
        self.stats.stores += 1;
        self.log(offset, data, kind);
        Ok(())
    }

    fn fence(&mut self) {
        self.stats.fences += 1;
        let n = self.stats.fences;
        self.observe(PointKind::Fence(n));
        let mut emptied = Vec::new();
        for (&line, log) in self.pending.iter_mut() {
            if log.marked == 0 {
                continue;
            }
            let old: LineBytes = *self.persisted.line(line);
            let mut new = old;
            for piece in &log.pieces[..log.marked] {
                piece.apply(&mut new, LINE);
            }
            self.persisted.set_line(line, &new);
            self.persisted_hash = self.persisted_hash.replaced(line, &old, &new);
            log.pieces.drain(..log.marked);
            log.marked = 0;
            if log.pieces.is_empty() {
                emptied.push(line);
            }
        }
        for line in emptied {
            self.pending.remove(&line);
        }
    }
}

impl PersistentMemory for CrashMemory {
    fn len(&self) -> u64 {
        self.model.borrow().current.len()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.model.borrow().current.read(offset, buf)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.model
            .borrow_mut()
            .store(offset, data, PieceKind::Cached)
    }

    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.model
            .borrow_mut()
            .store(offset, data, PieceKind::NonTemporal)
    }

    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        if !offset.is_multiple_of(8) {
            return Err(OutOfRange {
                offset,
                len: 8,
                region_len: self.len(),
            });
        }
        self.model
            .borrow_mut()
            .store(offset, &value.to_le_bytes(), PieceKind::Atomic)
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        let mut model = self.model.borrow_mut();
        check_range(offset, len, model.current.len())?;
        model.stats.flushes += 1;
        if len == 0 {
            return Ok(());
        }
        let first = offset / CACHE_LINE;
        let last = (offset + len - 1) / CACHE_LINE;
        for (_, log) in model.pending.range_mut(first..=last) {
            log.marked = log.pieces.len();
        }
        Ok(())
    }

    fn fence(&mut self) {
        self.model.borrow_mut().fence();
    }

    fn cache_is_persistent(&self) -> bool {
        self.model.borrow().persistent_cache
    }

    fn physical_address(&self, offset: u64) -> Option<u64> {
        self.model
            .borrow()
            .physical_base
            .and_then(|base| base.checked_add(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PAGE;

    fn memory() -> CrashMemory {
        CrashMemory::new(PagedImage::zeroed(PAGE).unwrap())
    }

    #[test]
    fn stores_are_visible_at_once_and_durable_after_flush_and_fence() {
        let mut m = memory();
        m.write(3, &[1, 2, 3]).unwrap();
        let mut buf = [0u8; 3];
        m.read(3, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        let mut persisted = [0u8; 3];
        m.persisted_image().read(3, &mut persisted).unwrap();
        assert_eq!(persisted, [0; 3], "not durable before flush + fence");
        m.fence();
        m.persisted_image().read(3, &mut persisted).unwrap();
        assert_eq!(persisted, [0; 3], "a fence alone does not write back");
        m.flush(0, 1).unwrap();
        m.fence();
        m.persisted_image().read(3, &mut persisted).unwrap();
        assert_eq!(persisted, [1, 2, 3]);
        assert_eq!(m.dirty_lines(), 0);
        assert_eq!(m.persisted_hash(), m.persisted_image().hash());
    }

    #[test]
    fn flush_marks_only_stores_before_it() {
        let mut m = memory();
        m.store_u64(0, 1).unwrap();
        m.flush(0, 8).unwrap();
        m.store_u64(8, 2).unwrap();
        m.fence();
        let persisted = m.persisted_image();
        assert_eq!(persisted.line(0)[0], 1);
        assert_eq!(persisted.line(0)[8], 0, "stored after the flush");
        assert_eq!(m.dirty_lines(), 1);
    }

    #[test]
    fn non_temporal_stores_are_durable_at_the_next_fence() {
        let mut m = memory();
        m.write_nt(64, &[9; 16]).unwrap();
        m.fence();
        assert_eq!(m.persisted_image().line(1)[..16], [9; 16]);
    }

    #[test]
    fn stores_are_cut_into_aligned_word_pieces() {
        let mut m = memory();
        m.write(6, &[1; 12]).unwrap(); // 6..8, 8..16, 16..18
        m.write(60, &[2; 8]).unwrap(); // 60..64 | 64..68 on the next line
        m.with_point(|p| {
            let line0: Vec<(u8, u8)> = p.pending[&0]
                .pieces
                .iter()
                .map(|x| (x.offset, x.len))
                .collect();
            assert_eq!(line0, vec![(6, 2), (8, 8), (16, 2), (60, 4)]);
            assert_eq!(p.pending[&1].pieces.len(), 1);
        });
        assert!(m.store_u64(4, 0).is_err());
        assert!(m.write(PAGE as u64 - 1, &[0, 0]).is_err());
    }

    #[test]
    fn is_durable_tracks_pending_bytes() {
        let mut m = memory();
        assert!(m.is_durable(0, PAGE as u64), "never stored");
        m.write(60, &[1; 8]).unwrap(); // 60..64 and 64..68
        assert!(!m.is_durable(60, 1));
        assert!(!m.is_durable(67, 1));
        assert!(m.is_durable(0, 60));
        assert!(m.is_durable(68, 60));
        m.flush(0, 64).unwrap();
        m.fence();
        assert!(m.is_durable(60, 4));
        assert!(!m.is_durable(64, 4), "second line never flushed");
        m.write_nt(64, &[2; 4]).unwrap();
        m.fence();
        assert!(m.is_durable(0, PAGE as u64));
    }

    #[test]
    fn persistent_cache_and_physical_base() {
        let mut m = memory();
        assert!(!m.cache_is_persistent());
        assert_eq!(m.physical_address(8), None);
        m.set_persistent_cache(true);
        m.set_physical_base(Some(0x1000));
        assert!(m.cache_is_persistent());
        assert_eq!(m.physical_address(8), Some(0x1008));
        m.write(0, &[5; 16]).unwrap();
        assert!(!m.is_durable(0, 16), "durable only after a fence");
        m.fence();
        assert!(m.is_durable(0, 16), "no flush needed with eADR");
        assert_eq!(m.stats().flushes, 0);
    }

    #[test]
    fn observer_sees_fences_and_operation_ends() {
        let mut m = memory();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        m.set_observer(Box::new(move |p| {
            sink.borrow_mut().push((p.kind, p.pending.len()))
        }));
        m.write_flush(0, &[1]).unwrap();
        m.fence();
        m.write(128, &[1]).unwrap();
        m.mark_operation_end();
        assert_eq!(
            *seen.borrow(),
            vec![(PointKind::Fence(1), 1), (PointKind::OperationEnd(1), 1)]
        );
    }
}
