//! The write path (FORMAT.md "Data writes", "Allocation policy", "Sizes and
//! preallocation"): `write` with its in-place fast path, `write_zeroes`
//! (zeroing or hole punching), `truncate`, and `persist`. Everything that
//! changes a file's blocks goes through `modify`, the one place where data
//! blocks are allocated (whole 2 MiB chunks for large files), shared or
//! held blocks are copied before being written (copy-on-write), and new
//! blocks are filled before the record that points at them is committed.

use alloc::vec::Vec;

use daxbox_persist::NT_THRESHOLD;

use crate::cow::{PrivateRun, DEFERRED_RUNS_MAX};
use crate::extmap::{ExtentMap, Piece};
use crate::format::{Extent, BLOCK_SIZE, CHUNK_BLOCKS, CHUNK_SIZE, INLINE_EXTENTS, MAX_FILE_SIZE};
use crate::{block_offset, Error, FileId, Filesystem, PersistentMemory, RUN_GROWTH, ZEROS};

/// Most blocks a small file's allocating write maps ahead of its end of
/// file (FORMAT.md "Allocation policy": allocate-ahead; 256 KiB).
pub(crate) const AHEAD_MAX: u64 = 64;

/// Where the bytes of an edit come from.
enum Src<'a> {
    Data(&'a [u8]),
    Zero(u64),
}

/// A byte-range change to a file.
struct Edit<'a> {
    offset: u64,
    src: Src<'a>,
}

impl Edit<'_> {
    fn len(&self) -> u64 {
        match self.src {
            Src::Data(d) => d.len() as u64,
            Src::Zero(n) => n,
        }
    }
    fn end(&self) -> u64 {
        self.offset + self.len()
    }
}

/// What `write_in_place` found of a write's first block when it looked:
/// the block, its physical block, the blocks of its extent from there on,
/// for a one-block write the block's reference count, and whether the
/// same extent maps the block before it.
type Known = (u64, u64, u64, Option<u32>, bool);

/// What `write_in_place` did: the write, or nothing (with what it found).
enum InPlace {
    Done,
    Not(Option<Known>),
}

/// A fresh allocation made for a write.
#[derive(Debug, Clone, Copy)]
struct NewRun {
    logical: u64,
    len: u64,
    physical: u64,
    /// Old physical block to copy from (copy-on-write), or None (zero).
    source: Option<u64>,
}

/// Picks a preferred physical block for logical block `logical`: right
/// after the block backing `logical - 1` (contiguity, and inside a huge
/// chunk it restores 2 MiB alignment), else right before `logical + 1`.
fn preferred(map: &ExtentMap, runs: &[NewRun], logical: u64) -> Option<u64> {
    for r in runs {
        if r.logical + r.len == logical {
            return Some(r.physical + r.len);
        }
    }
    if logical > 0 {
        if let Some(p) = map.lookup(logical - 1) {
            return Some(p + 1);
        }
    }
    map.lookup(logical + 1).and_then(|p| p.checked_sub(1))
}

/// The fresh runs of a write as extents, neighbours that are contiguous
/// both logically and physically joined (what `commit_file_runs`
/// prepends to a layered list).
fn new_extents(runs: &[NewRun]) -> Vec<Extent> {
    if let [r] = runs {
        return alloc::vec![Extent {
            logical: r.logical,
            len: r.len,
            physical: r.physical,
        }];
    }
    let mut out: Vec<Extent> = Vec::with_capacity(runs.len());
    let mut sorted: Vec<&NewRun> = runs.iter().collect();
    sorted.sort_unstable_by_key(|r| r.logical);
    for r in sorted {
        match out.last_mut() {
            Some(e) if e.logical + e.len == r.logical && e.physical + e.len == r.physical => {
                e.len += r.len;
            }
            _ => out.push(Extent {
                logical: r.logical,
                len: r.len,
                physical: r.physical,
            }),
        }
    }
    out
}

/// Union of half-open ranges, sorted.
fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.1 > r.0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The sorted union of some block (or byte) ranges: one range without a
/// heap allocation (a write is one edit; issue 17 counted some twenty
/// allocations per copy-on-write), several in a vector.
enum Ranges {
    One([(u64, u64); 1]),
    Many(Vec<(u64, u64)>),
}

impl Ranges {
    /// The blocks touched by `edits` (only the data edits when `data`).
    fn of(edits: &[Edit<'_>], data: bool) -> Self {
        let block_range = |e: &Edit<'_>| {
            if e.len() == 0 {
                return (0, 0);
            }
            (e.offset / BLOCK_SIZE, e.end().div_ceil(BLOCK_SIZE))
        };
        let wanted = |e: &&Edit<'_>| !data || matches!(e.src, Src::Data(_));
        match edits {
            [e] if wanted(&e) && e.len() > 0 => Ranges::One([block_range(e)]),
            _ => Ranges::Many(union(
                edits.iter().filter(wanted).map(block_range).collect(),
            )),
        }
    }

    /// The bytes written by `edits`.
    fn bytes(edits: &[Edit<'_>]) -> Self {
        match edits {
            [e] if e.len() > 0 => Ranges::One([(e.offset, e.end())]),
            _ => Ranges::Many(union(edits.iter().map(|e| (e.offset, e.end())).collect())),
        }
    }

    fn as_slice(&self) -> &[(u64, u64)] {
        match self {
            Ranges::One(r) => r,
            Ranges::Many(v) => v,
        }
    }
}

impl<M: PersistentMemory> Filesystem<M> {
    /// Stores `bytes` at region offset `at`, flushed (or non-temporal).
    fn put(&mut self, at: u64, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() as u64 >= NT_THRESHOLD {
            self.mem.write_nt(at, bytes)?;
        } else {
            self.mem.write_flush(at, bytes)?;
        }
        Ok(())
    }

    pub(crate) fn zero_blocks(&mut self, at: u64, len: u64) -> Result<(), Error> {
        self.put_zeros(at, len)
    }

    pub(crate) fn copy_blocks(&mut self, from: u64, to: u64, len: u64) -> Result<(), Error> {
        self.copy_region(from, to, len)
    }

    fn put_zeros(&mut self, at: u64, len: u64) -> Result<(), Error> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.put(at + done, &ZEROS[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn copy_region(&mut self, from: u64, to: u64, len: u64) -> Result<(), Error> {
        let mut buf = alloc::vec![0u8; (len.min(64 * 1024)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.mem.read(from + done, &mut buf[..n])?;
            self.put(to + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Applies byte edits to a file and sets its size: the one place where
    /// blocks are allocated for data, shared blocks are copied before being
    /// written, and new blocks are filled before the metadata that points
    /// at them is committed (FORMAT.md "Data writes").
    fn modify(&mut self, slot: u32, edits: &[Edit<'_>], new_size: u64) -> Result<(), Error> {
        self.modify_known(slot, edits, new_size, None)
    }

    /// [`Self::modify`], with what `write_in_place` already looked up:
    /// `known` = (first block, its physical block, blocks of its extent
    /// from there), so that a copy-on-write does not search the map twice.
    fn modify_known(
        &mut self,
        slot: u32,
        edits: &[Edit<'_>],
        new_size: u64,
        known: Option<Known>,
    ) -> Result<(), Error> {
        let file = self.files.get(&slot).ok_or(Error::StaleFile)?;
        let all = Ranges::of(edits, false);
        let data = Ranges::of(edits, true);
        // Blocks needing a fresh block: shared blocks touched by any edit
        // (copy first), holes touched by data (zero-filled). Holes touched
        // only by zero edits already read as zeros. One walk of the map
        // over the edits' blocks finds both (`data` lies inside `all`).
        let mut needs: Vec<(u64, u64, Option<u64>)> = Vec::new();
        let no_pins = self.pins.is_empty();
        for &(s, e) in all.as_slice() {
            let pieces = match known {
                Some((kb, kp, run, _, _)) if kb == s && e - s <= run => alloc::vec![Piece {
                    logical: s,
                    len: e - s,
                    physical: Some(kp),
                }],
                _ => file.map.pieces(s, e - s),
            };
            // Every test run checks what write_in_place found.
            #[cfg(debug_assertions)]
            debug_assert_eq!(pieces, file.map.pieces(s, e - s));
            for piece in pieces {
                let Some(p) = piece.physical else {
                    let (hs, he) = (piece.logical, piece.logical + piece.len);
                    for &(ds, de) in data.as_slice() {
                        let (a, b) = (hs.max(ds), he.min(de));
                        if a < b {
                            needs.push((a, b - a, None));
                        }
                    }
                    continue;
                };
                // Without holds (the usual case) no pin lookup (and its
                // allocation) per segment, and none of the counts for the
                // one block whose count write_in_place already has.
                if no_pins {
                    if let Some((kb, kp, _, Some(count), _)) = known {
                        if piece.len == 1 && piece.logical == kb && p == kp {
                            debug_assert_eq!(count, self.refs.get(p));
                            if count > 1 {
                                needs.push((kb, 1, Some(p)));
                            }
                            continue;
                        }
                    }
                    for (ps, pl, count) in self.refs.segments(p, piece.len) {
                        if count > 1 {
                            needs.push((piece.logical + (ps - p), pl, Some(ps)));
                        }
                    }
                    continue;
                }
                for (ps, pl, count) in self.refs.segments(p, piece.len) {
                    // Held blocks are copied too: a hold is a stable
                    // snapshot for its holder (see `hold`).
                    for (qs, ql, pins) in self.pins.segments(ps, pl) {
                        if count as u64 + pins as u64 > 1 {
                            needs.push((piece.logical + (qs - p), ql, Some(qs)));
                        }
                    }
                }
            }
        }
        needs.sort_unstable();
        // Allocate. A large file gets a whole 2 MiB chunk for each logical
        // chunk that is entirely a hole (FORMAT.md "Allocation policy").
        let large = new_size > CHUNK_SIZE;
        let old_size = file.size;
        // In a large file a logical chunk that is all hole is allocated as
        // a whole fresh 2 MiB chunk (holes zero-filled); a chunk that shares
        // blocks with a clone (or holds pinned blocks) is copied block by
        // block, only where written, until the write that makes
        // COMPACT_THRESHOLD_BLOCKS of its blocks private, which gathers it
        // into one fresh private chunk (FORMAT.md "Allocation policy",
        // "Copy-on-write of shared blocks", "Compaction").
        // Sorted vectors, not sets: a write touches few chunks.
        let mut movable: Vec<u64> = Vec::new();
        if large {
            for &(l, n, _) in &needs {
                movable.extend((l / CHUNK_BLOCKS)..=((l + n - 1) / CHUNK_BLOCKS));
            }
            movable.dedup();
            movable.retain(|&c| {
                let st = self.cached_chunk_state(slot, c);
                Self::chunk_wants_whole(st, c, &needs)
            });
        }
        let file = self.files.get(&slot).ok_or(Error::StaleFile)?;
        let mut runs: Vec<NewRun> = Vec::with_capacity(needs.len());
        let mut huge_chunks: Vec<u64> = Vec::new();
        let mut failed = false;
        'outer: for &(logical, len, source) in &needs {
            let mut done = 0;
            while done < len {
                let l = logical + done;
                let chunk = l / CHUNK_BLOCKS;
                let chunk_end = (chunk + 1) * CHUNK_BLOCKS;
                let piece_len = (len - done).min(chunk_end - l);
                if huge_chunks.contains(&chunk) {
                    done += piece_len;
                    continue;
                }
                if movable.binary_search(&chunk).is_ok() {
                    let base = chunk * CHUNK_BLOCKS;
                    let prefer = preferred(&file.map, &runs, base);
                    if let Some(p) = self.alloc.alloc_huge(prefer) {
                        huge_chunks.push(chunk);
                        for piece in file.map.pieces(base, CHUNK_BLOCKS) {
                            runs.push(NewRun {
                                logical: piece.logical,
                                len: piece.len,
                                physical: p + (piece.logical - base),
                                source: piece.physical,
                            });
                        }
                        done += piece_len;
                        continue;
                    }
                }
                // The block before `l` in the same extent: `preferred`
                // would name the block that backs `l` now, which is in use
                // (issue 17: a copy-on-write inside a shared extent skips
                // that map lookup and the free-space probe).
                let prefer = match known {
                    Some((kb, _, _, _, true)) if kb == l && runs.is_empty() => None,
                    _ => preferred(&file.map, &runs, l),
                };
                #[cfg(debug_assertions)]
                if prefer.is_none() {
                    if let Some(p) = preferred(&file.map, &runs, l) {
                        debug_assert!(!self.alloc.is_free(p, 1));
                    }
                }
                match self.alloc.alloc_small(piece_len, prefer) {
                    Some((p, got)) => {
                        runs.push(NewRun {
                            logical: l,
                            len: got,
                            physical: p,
                            source: source.map(|s| s + done),
                        });
                        done += got;
                    }
                    None => {
                        failed = true;
                        break 'outer;
                    }
                }
            }
        }
        if !large && !failed {
            if let Some(run) = self.ahead(slot, edits, &needs, &runs, old_size, new_size) {
                runs.push(run);
            }
        }
        for r in &runs {
            self.refs.increment(r.physical, r.len);
        }
        let fresh = |runs: &[NewRun]| -> Vec<(u64, u64)> {
            runs.iter().map(|r| (r.physical, r.len)).collect()
        };
        if failed {
            self.unallocate(&fresh(&runs));
            return Err(Error::NoSpace);
        }
        // Copy-on-write runs that change nothing but the map may wait in
        // memory for a later commit (FORMAT.md "Deferred copy-on-write
        // commits"); so that the commit carrying them stays one prepend,
        // ones already waiting are committed first when the two would
        // not fit it together.
        let new = new_extents(&runs);
        let file = self.files.get(&slot).ok_or(Error::StaleFile)?;
        if !file.pending.is_empty() && file.pending.runs.len() + new.len() > DEFERRED_RUNS_MAX {
            if let Err(e) = self.commit_deferred(slot) {
                self.unallocate(&fresh(&runs));
                return Err(e);
            }
        }
        // The map, count and free-space runs the new blocks may add are
        // charged before the map changes; a refusal undoes the allocation.
        if let Err(e) = self.reserve(runs.len() * RUN_GROWTH) {
            self.unallocate(&fresh(&runs));
            return Err(e);
        }
        // Switch the in-memory map to the new blocks now; undone below if
        // anything fails before the commit.
        let file = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        let mut removed = Vec::new();
        for r in &runs {
            let mut got = file.map.replace(r.logical, r.len, r.physical);
            if removed.is_empty() {
                removed = got;
            } else {
                removed.append(&mut got);
            }
        }
        // Only copy-on-write runs that change nothing but the map wait, and
        // only in a layered list beyond its inline entries (a list that is
        // all inline is rewritten whole by every commit: nothing to save).
        let defer = !runs.is_empty()
            && new_size == old_size
            && huge_chunks.is_empty()
            && runs.iter().all(|r| r.source.is_some())
            && new.len() <= DEFERRED_RUNS_MAX
            && file.list.is_some()
            && file.map.len() > INLINE_EXTENTS;
        let result = self
            .fill_and_apply(slot, edits, &runs, new_size)
            .and_then(|()| {
                if defer || (runs.is_empty() && new_size == old_size) {
                    return Ok(());
                }
                self.commit_file_runs(slot, new_size, &new)
            });
        match result {
            Ok(()) if defer => {
                // The record keeps the replaced blocks until the commit.
                let epoch = self.share_epoch;
                let file = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
                file.pending.runs.extend_from_slice(&new);
                file.pending.replaced.append(&mut removed);
                self.count_fresh(slot, epoch, &runs, &huge_chunks);
                Ok(())
            }
            Ok(()) => {
                let epoch = self.share_epoch;
                for e in removed {
                    self.unref(e.physical, e.len);
                }
                self.count_fresh(slot, epoch, &runs, &huge_chunks);
                Ok(())
            }
            Err(e) => {
                if let Some(file) = self.files.get_mut(&slot) {
                    for r in runs.iter().rev() {
                        file.map.remove(r.logical, r.len);
                    }
                    for x in removed {
                        file.map.insert(x.logical, x.len, x.physical);
                    }
                }
                self.unallocate(&fresh(&runs));
                Err(e)
            }
        }
    }

    /// Allocate-ahead in a small file (FORMAT.md "Allocation policy"):
    /// when an appending write (starting within the file) that grows it to
    /// at most 2 MiB needs fresh
    /// blocks for a hole ending at its new last block, in a file that
    /// already maps blocks and none past that one, up to [`AHEAD_MAX`]
    /// more blocks (no more than the file maps, none past the first 2 MiB
    /// chunk) are taken right after the last fresh run, best effort: none
    /// free, none taken. They are preallocation past the end of file
    /// (unfilled, never read), so the appends after this one are in-place
    /// stores with deferred sizes instead of one commit each.
    fn ahead(
        &mut self,
        slot: u32,
        edits: &[Edit<'_>],
        needs: &[(u64, u64, Option<u64>)],
        runs: &[NewRun],
        old_size: u64,
        new_size: u64,
    ) -> Option<NewRun> {
        // Appends only: one data edit starting within the file (a write
        // past the end leaves a gap, and sparse writers keep their holes).
        match edits {
            [e] if matches!(e.src, Src::Data(_)) && e.offset <= old_size && new_size > old_size => {
            }
            _ => return None,
        }
        let last_block = new_size.div_ceil(BLOCK_SIZE);
        match needs.last() {
            Some(&(l, n, None)) if l + n == last_block => {}
            _ => return None,
        }
        let file = self.files.get(&slot)?;
        // The blocks mapped before this write (the fresh runs are not in
        // the map yet); a file's first write takes only what it needs.
        if file.map.end() > last_block {
            return None;
        }
        let mapped = file.map.mapped_blocks();
        let want = mapped
            .min(AHEAD_MAX)
            .min(CHUNK_BLOCKS.saturating_sub(last_block));
        if want == 0 {
            return None;
        }
        let prefer = runs
            .iter()
            .find(|r| r.logical + r.len == last_block)
            .map(|r| r.physical + r.len);
        let (physical, len) = self.alloc.alloc_small(want, prefer)?;
        Some(NewRun {
            logical: last_block,
            len,
            physical,
            source: None,
        })
    }

    /// Brings the `cow::ChunkCache` of the file in `slot` up to date after
    /// `modify` committed `runs` (`huge`: the chunks it moved whole), when
    /// the cache was valid at `epoch`, just before `modify` dropped the
    /// replaced blocks: every fresh block is private; a run with a source
    /// replaced a block that was shared or held (not private), one without
    /// filled a hole; a chunk moved whole is all mapped and private. The
    /// references dropped change only other files' counts (a file never
    /// shares blocks with itself), so the cache then takes the new epoch.
    fn count_fresh(&mut self, slot: u32, epoch: u64, runs: &[NewRun], huge: &[u64]) {
        let now = self.share_epoch;
        let Some(f) = self.files.get_mut(&slot) else {
            return;
        };
        if f.cow.epoch != epoch {
            return;
        }
        if f.cow.chunks.is_empty() {
            f.cow.epoch = now;
            return;
        }
        for r in runs {
            let mut l = r.logical;
            while l < r.logical + r.len {
                let chunk = l / CHUNK_BLOCKS;
                let n = ((chunk + 1) * CHUNK_BLOCKS).min(r.logical + r.len) - l;
                l += n;
                if huge.contains(&chunk) {
                    continue;
                }
                if let Some((mapped, private)) = f.cow.chunks.get_mut(&chunk) {
                    // n <= CHUNK_BLOCKS; both counts stay <= CHUNK_BLOCKS.
                    *private += n as u32;
                    if r.source.is_none() {
                        *mapped += n as u32;
                    }
                }
            }
        }
        for &chunk in huge {
            if let Some(e) = f.cow.chunks.get_mut(&chunk) {
                *e = (CHUNK_BLOCKS as u32, CHUNK_BLOCKS as u32);
            }
        }
        f.cow.epoch = now;
    }

    /// Fills the parts of new blocks below the new size that no edit
    /// covers (zeros for holes, the old bytes for copy-on-write), then
    /// writes the edits through the file's (already switched) map.
    fn fill_and_apply(
        &mut self,
        slot: u32,
        edits: &[Edit<'_>],
        runs: &[NewRun],
        new_size: u64,
    ) -> Result<(), Error> {
        let covered = Ranges::bytes(edits);
        for r in runs {
            let start = r.logical * BLOCK_SIZE;
            let end = ((r.logical + r.len) * BLOCK_SIZE).min(new_size);
            // Fill each gap between the covered ranges as it is found.
            let mut cursor = start;
            let fill = |fs: &mut Self, gs: u64, ge: u64| -> Result<(), Error> {
                let to = block_offset(r.physical) + (gs - start);
                match r.source {
                    Some(src) => fs.copy_region(block_offset(src) + (gs - start), to, ge - gs),
                    None => fs.put_zeros(to, ge - gs),
                }
            };
            for &(cs, ce) in covered.as_slice() {
                if ce <= cursor || cs >= end {
                    continue;
                }
                if cs > cursor {
                    fill(self, cursor, cs)?;
                }
                cursor = cursor.max(ce);
            }
            if cursor < end {
                fill(self, cursor, end)?;
            }
        }
        for e in edits {
            if e.len() == 0 {
                continue;
            }
            let (bs, be) = (e.offset / BLOCK_SIZE, e.end().div_ceil(BLOCK_SIZE));
            // An edit inside one fresh run (a copy-on-write, an
            // allocation) is written there without a map lookup.
            if let Some(r) = runs
                .iter()
                .find(|r| r.logical <= bs && be <= r.logical + r.len)
            {
                let at = block_offset(r.physical + (bs - r.logical)) + e.offset % BLOCK_SIZE;
                self.put_edit(e, e.offset, at, e.len())?;
                continue;
            }
            let file = self.files.get(&slot).ok_or(Error::StaleFile)?;
            for piece in file.map.pieces(bs, be - bs) {
                let Some(p) = piece.physical else { continue };
                let a = e.offset.max(piece.logical * BLOCK_SIZE);
                let b = e.end().min((piece.logical + piece.len) * BLOCK_SIZE);
                if b > a {
                    let at = block_offset(p) + (a - piece.logical * BLOCK_SIZE);
                    self.put_edit(e, a, at, b - a)?;
                }
            }
        }
        Ok(())
    }

    /// Stores the bytes of edit `e` from file offset `a` on, `len` of them,
    /// at region offset `at`.
    fn put_edit(&mut self, e: &Edit<'_>, a: u64, at: u64, len: u64) -> Result<(), Error> {
        match e.src {
            Src::Data(d) => {
                let from = (a - e.offset) as usize;
                self.put(at, &d[from..from + len as usize])
            }
            Src::Zero(_) => self.put_zeros(at, len),
        }
    }

    /// Writes `data` at `offset`, extending the file if needed. Fails with
    /// [`Error::OutOfMemory`] (nothing written) when the blocks it must
    /// allocate would grow the in-memory maps past the mount budget.
    pub fn write(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), Error> {
        let known = match self.write_in_place(file, offset, data)? {
            InPlace::Done => return Ok(()),
            InPlace::Not(known) => known,
        };
        self.costed(file.slot, |fs| fs.write_inner(file, offset, data, known))
    }

    /// The fast path of [`Self::write`] (FORMAT.md "Data writes"): when the
    /// whole range lies in one extent that no other file shares (nor a
    /// hold pins) and starts within the file, the bytes go straight to
    /// pmem and at most the size changes ("Deferred size commits"); the
    /// map does not, so no memory is charged. [`InPlace::Not`]: not
    /// applicable, nothing done; it carries what the lookup found of the
    /// first block, so that `modify` does not search for it again.
    fn write_in_place(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<InPlace, Error> {
        let f = self.file(file)?;
        let size = f.size;
        if data.is_empty() || offset > size {
            return Ok(InPlace::Not(None));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        let known = f.cow.run.filter(|r| {
            r.version == f.map.version()
                && r.epoch == self.share_epoch
                && r.logical <= bs
                && be <= r.logical + r.len
        });
        let p = match known {
            Some(r) => r.physical + (bs - r.logical),
            None => {
                let Some((p, run, inside)) = f.map.run_around(bs) else {
                    return Ok(InPlace::Not(None));
                };
                if run < be - bs {
                    return Ok(InPlace::Not(Some((bs, p, run, None, inside))));
                }
                let count = self.refs.max_in(p, be - bs);
                if count > 1 || self.pins.max_in(p, be - bs) != 0 {
                    let single = (be - bs == 1).then_some(count);
                    return Ok(InPlace::Not(Some((bs, p, run, single, inside))));
                }
                if end > size {
                    // An appending write: remember the private run up to
                    // the end of this 2 MiB chunk for the writes after it.
                    let len = run.min(CHUNK_BLOCKS - bs % CHUNK_BLOCKS);
                    let private = self.refs.max_in(p, len) <= 1 && self.pins.max_in(p, len) == 0;
                    let remembered = private.then_some(PrivateRun {
                        logical: bs,
                        len,
                        physical: p,
                        version: f.map.version(),
                        epoch: self.share_epoch,
                    });
                    if let Some(f) = self.files.get_mut(&file.slot) {
                        f.cow.run = remembered;
                    }
                }
                p
            }
        };
        // Every test run checks a remembered run against the lookups.
        #[cfg(debug_assertions)]
        if known.is_some() {
            let f = self.file(file)?;
            debug_assert_eq!(f.map.run_around(bs).map(|(q, _, _)| q), Some(p));
            debug_assert!(self.refs.max_in(p, be - bs) <= 1 && self.pins.max_in(p, be - bs) == 0);
        }
        self.put(block_offset(p) + offset % BLOCK_SIZE, data)?;
        if end > size {
            self.grow_size(file.slot, end)?;
        }
        Ok(InPlace::Done)
    }

    /// [`Self::write`] through `modify`: allocation, copy-on-write, holes.
    fn write_inner(
        &mut self,
        file: FileId,
        offset: u64,
        data: &[u8],
        known: Option<Known>,
    ) -> Result<(), Error> {
        let size = self.file(file)?.size;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        let mut edits = Vec::with_capacity(2);
        if offset > size {
            // Bytes past the old end of file are unspecified on media: make
            // the gap read as zeros (FORMAT.md "Sizes and preallocation").
            edits.push(Edit {
                offset: size,
                src: Src::Zero(offset - size),
            });
        }
        edits.push(Edit {
            offset,
            src: Src::Data(data),
        });
        self.modify_known(file.slot, &edits, size.max(end), known)
    }

    /// Makes `offset..offset + len` read as zeros, extending the file if
    /// needed. With `punch`, whole blocks in the range are unmapped (holes)
    /// and freed; without it, mapped blocks are zeroed in place and holes
    /// stay holes.
    pub fn write_zeroes(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        punch: bool,
    ) -> Result<(), Error> {
        self.costed(file.slot, |fs| {
            fs.write_zeroes_inner(file, offset, len, punch)
        })
    }

    fn write_zeroes_inner(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        punch: bool,
    ) -> Result<(), Error> {
        let size = self.file(file)?.size;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        if len == 0 {
            return Ok(());
        }
        let new_size = size.max(end);
        let from = size.min(offset);
        let (ws, we) = (offset.div_ceil(BLOCK_SIZE), end / BLOCK_SIZE);
        if !punch || ws >= we {
            return self.modify(
                file.slot,
                &[Edit {
                    offset: from,
                    src: Src::Zero(end - from),
                }],
                new_size,
            );
        }
        let edits = [
            Edit {
                offset: from,
                src: Src::Zero((ws * BLOCK_SIZE).saturating_sub(from)),
            },
            Edit {
                offset: we * BLOCK_SIZE,
                src: Src::Zero(end - we * BLOCK_SIZE),
            },
        ];
        // Unmap first, at the old size, then zero the edges and grow: were
        // it the other way round, a crash between the two commits could
        // leave the file grown over preallocated blocks that hold stale
        // bytes (FORMAT.md "Sizes and preallocation").
        self.unmap(file.slot, ws, we - ws, size)?;
        self.modify(file.slot, &edits, new_size)
    }

    /// [`Self::write_zeroes`] of a first part of `offset..offset + len`,
    /// chosen so that one call does a bounded amount of work, for callers
    /// that must not stall (the NBD service does a long TRIM or
    /// WRITE_ZEROES this way, one part per event-loop step); returns the
    /// bytes done from `offset` on (at least 1 and at most `len`; 0 only
    /// when `len` is 0). Call again from `offset + done` until all is done.
    ///
    /// - With `punch`, the part holds at most `budget` mapped blocks (and
    ///   so at most `budget` extents): holes cost nothing and are passed
    ///   over whole, so a sparse range goes in one call.
    /// - Without `punch`, mapped blocks are zeroed in place (and shared or
    ///   held ones copied first): the part spans at most `budget` blocks,
    ///   ending on a multiple of `budget` blocks.
    ///
    /// Inner part boundaries fall on block boundaries, so the parts punch
    /// exactly the blocks one `write_zeroes` over the whole range would.
    /// Each part is one complete `write_zeroes` (its own commits, FORMAT.md
    /// "Data writes"): a crash leaves a prefix of the parts done and the
    /// next part done or not, never anything a single call could not.
    pub fn write_zeroes_step(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        punch: bool,
        budget: u64,
    ) -> Result<u64, Error> {
        let f = self.file(file)?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        if len == 0 {
            return Ok(0);
        }
        let budget = budget.max(1);
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        // The block where this part ends (exclusive).
        let cut = if punch {
            let mut mapped = 0;
            let mut cut = be;
            for extent in f.map.iter_from(bs) {
                if extent.logical >= be {
                    break;
                }
                let blocks = extent.len.min(be - extent.logical);
                if mapped + blocks > budget {
                    cut = extent.logical + (budget - mapped);
                    break;
                }
                mapped += blocks;
            }
            cut
        } else {
            (bs / budget + 1).saturating_mul(budget)
        };
        let part = end.min(cut.saturating_mul(BLOCK_SIZE)) - offset;
        self.write_zeroes(file, offset, part, punch)?;
        Ok(part)
    }

    /// Unmaps file blocks and commits (punch hole / truncate).
    fn unmap(&mut self, slot: u32, start: u64, len: u64, size: u64) -> Result<(), Error> {
        // Unmapping splits at most one extent and one count run at each
        // end, and adds free runs: charged first.
        self.reserve(2 * RUN_GROWTH)?;
        let f = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        // The unmapped chunks' counts change outside `modify`.
        f.cow = Default::default();
        let removed = f.map.remove(start, len);
        if removed.is_empty() {
            if size != f.size {
                return self.commit_file(slot, size, false);
            }
            return Ok(());
        }
        match self.commit_file(slot, size, true) {
            Ok(()) => {
                for e in removed {
                    self.unref(e.physical, e.len);
                }
                Ok(())
            }
            Err(err) => {
                if let Some(f) = self.files.get_mut(&slot) {
                    for x in removed {
                        f.map.insert(x.logical, x.len, x.physical);
                    }
                }
                Err(err)
            }
        }
    }

    /// Sets the file size; growing reads as zeros, shrinking frees blocks.
    pub fn truncate(&mut self, file: FileId, size: u64) -> Result<(), Error> {
        self.costed(file.slot, |fs| fs.truncate_inner(file, size))
    }

    fn truncate_inner(&mut self, file: FileId, size: u64) -> Result<(), Error> {
        let f = self.file(file)?;
        if size > MAX_FILE_SIZE {
            return Err(Error::FileTooLarge);
        }
        let old = f.size;
        if size >= old {
            if size == old {
                return Ok(());
            }
            return self.modify(
                file.slot,
                &[Edit {
                    offset: old,
                    src: Src::Zero(size - old),
                }],
                size,
            );
        }
        let keep = size.div_ceil(BLOCK_SIZE);
        let end = f.map.end().max(keep);
        self.unmap(file.slot, keep, end - keep, size)
    }

    /// Sets the size of a file whose new end of file lies in blocks it
    /// already maps and owns, after the bytes below `end` were stored
    /// (FORMAT.md "Deferred size commits"): kept in memory only while
    /// `end` stays inside the 2 MiB chunk of the durable size's last byte,
    /// else committed (which also commits the earlier deferred growth).
    fn grow_size(&mut self, slot: u32, end: u64) -> Result<(), Error> {
        let f = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        if end <= f.durable.div_ceil(CHUNK_SIZE) * CHUNK_SIZE {
            f.size = end;
            return Ok(());
        }
        self.commit_file(slot, end, false)
    }

    /// Commits what the file has deferred, if anything: its copy-on-write
    /// runs (one prepend of at most [`DEFERRED_RUNS_MAX`]) and its size,
    /// or its size alone (one transaction; its fence also makes every
    /// earlier data write durable).
    pub(crate) fn commit_deferred(&mut self, slot: u32) -> Result<(), Error> {
        let f = self.files.get(&slot).ok_or(Error::StaleFile)?;
        if !f.deferred() {
            return Ok(());
        }
        let size = f.size;
        // With no runs waiting, this is a record-only commit of the size.
        self.commit_file_runs(slot, size, &[])
    }

    /// Makes every earlier write to the file durable, its size included.
    /// Data writes are already flushed, so this is a fence, plus the
    /// commit of what the file deferred: its size, its copy-on-write runs
    /// (FORMAT.md "Data writes", "Deferred size commits", "Deferred
    /// copy-on-write commits").
    pub fn persist(&mut self, file: FileId) -> Result<(), Error> {
        self.file(file)?;
        self.commit_deferred(file.slot)?;
        self.mem.fence();
        Ok(())
    }

    /// Copy-on-write runs of `file` mapped in memory whose commit is still
    /// deferred (FORMAT.md "Deferred copy-on-write commits"): a crash now
    /// would undo the writes that made them; `persist` commits them.
    pub fn deferred_runs(&self, file: FileId) -> Result<usize, Error> {
        Ok(self.file(file)?.pending.runs.len())
    }

    /// Makes every earlier write durable, everything deferred included.
    pub fn persist_all(&mut self) -> Result<(), Error> {
        let deferred: Vec<u32> = self
            .files
            .iter()
            .filter(|(_, f)| f.deferred())
            .map(|(&slot, _)| slot)
            .collect();
        for slot in deferred {
            self.commit_deferred(slot)?;
        }
        self.mem.fence();
        Ok(())
    }
}
