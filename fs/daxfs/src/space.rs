//! Volatile space accounting: per-block reference counts, transient pins,
//! and the free-space allocator. None of this is on media; mount rebuilds
//! it from the extent maps (FORMAT.md "Allocation state").

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::ops::Bound;

use crate::format::CHUNK_BLOCKS;

/// One free huge chunk in the huge pool (a `u64` B-tree entry with node
/// overhead; measured in `tests/mount_memory.rs`).
const HUGE_ENTRY: usize = 24;

/// Counts per block, stored as non-overlapping runs of equal count so that
/// a whole extent is counted in one step (clone is O(extents), not
/// O(blocks)). Blocks without a run have count 0.
#[derive(Debug, Default, Clone)]
pub struct RunCounts {
    /// start -> (len, count); count is never 0.
    runs: BTreeMap<u64, (u64, u32)>,
}

impl RunCounts {
    /// Runs held (each costs one B-tree entry).
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Splits the run containing `at` (if any) so that a run starts at `at`.
    fn split(&mut self, at: u64) {
        let found = self.runs.range(..at).next_back().map(|(&s, &v)| (s, v));
        if let Some((start, (len, count))) = found {
            if start + len > at {
                self.runs.insert(start, (at - start, count));
                self.runs.insert(at, (start + len - at, count));
            }
        }
    }

    /// Merges the run at `at` with its left neighbour when they touch and
    /// have the same count, to keep the map small.
    fn merge_at(&mut self, at: u64) {
        let Some(&(len, count)) = self.runs.get(&at) else {
            return;
        };
        let left = self.runs.range(..at).next_back().map(|(&s, &v)| (s, v));
        if let Some((ls, (llen, lcount))) = left {
            if ls + llen == at && lcount == count {
                self.runs.remove(&at);
                self.runs.insert(ls, (llen + len, count));
            }
        }
    }

    /// Builds the counts of many (start, len) ranges at once by sweeping
    /// their sorted end points: O(n log n) with no per-range map updates,
    /// which is what mount needs for 100,000 files.
    /// `None` when the heap cannot hold the sweep's event list.
    pub fn from_ranges(ranges: &[(u64, u64)]) -> Option<Self> {
        let mut events: Vec<(u64, i64)> = Vec::new();
        events
            .try_reserve_exact(ranges.len().checked_mul(2)?)
            .ok()?;
        for &(s, l) in ranges {
            if l > 0 {
                events.push((s, 1));
                events.push((s + l, -1));
            }
        }
        events.sort_unstable();
        let mut runs: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
        let mut depth: i64 = 0;
        let mut open: Option<(u64, u32)> = None; // current run start, count
        let mut i = 0;
        while i < events.len() {
            let at = events[i].0;
            while i < events.len() && events[i].0 == at {
                depth += events[i].1;
                i += 1;
            }
            // depth >= 0 always: every -1 follows its +1 at a larger point.
            let count = depth.clamp(0, u32::MAX as i64) as u32;
            match open {
                Some((_, c)) if c == count => {}
                Some((s, c)) => {
                    runs.insert(s, (at - s, c));
                    open = (count > 0).then_some((at, count));
                }
                None => open = (count > 0).then_some((at, count)),
            }
        }
        // Merge touching runs of equal count (a range ending where another
        // starts produces two events at one point, already handled above).
        Some(RunCounts { runs })
    }

    /// Sets the count of `start..end`, strictly inside the run `(s, l, c)`
    /// (so no neighbour can merge with it), to `count` (not 0), in three
    /// B-tree updates: the fast path of a one-block copy-on-write.
    fn recount_inside(&mut self, (s, l, c): (u64, u64, u32), start: u64, end: u64, count: u32) {
        self.runs.insert(s, (start - s, c));
        self.runs.insert(start, (end - start, count));
        self.runs.insert(end, (s + l - end, c));
    }

    /// Adds one to every block of `start..start + len`.
    pub fn increment(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start + len;
        // Fastest path, one search: a gap right after a run of count 1
        // and not touching the next run (a fresh block after the previous
        // fresh block) lengthens that run in place.
        if let Some((&s, run)) = self.runs.range_mut(..=end).next_back() {
            if s < start && s + run.0 == start && run.1 == 1 {
                run.0 += len;
                return;
            }
        }
        // Fast paths (no temporary vectors): inside one run, or in a gap
        // (a fresh allocation). One B-tree search finds the run starting
        // at `end` (a right neighbour), any run starting inside the range
        // and the run before it (issue 17: this runs for every fresh
        // block of a copy-on-write).
        let mut near = self.runs.range(..=end).rev();
        let mut right = None;
        let mut before = near.next().map(|(&s, &v)| (s, v));
        if let Some((s, (l, c))) = before {
            if s == end {
                right = Some((l, c));
                before = near.next().map(|(&s, &v)| (s, v));
            }
        }
        match before {
            Some((s, (l, c))) if s < start && end < s + l => {
                self.recount_inside((s, l, c), start, end, c.saturating_add(1));
                return;
            }
            // No run inside the range, and the one before ends by `start`:
            // a gap.
            left if left.is_none_or(|(s, (l, _))| s < start && s + l <= start) => {
                // Joined with a touching run of count 1 on either side
                // (fresh blocks usually continue the previous ones).
                let mut len = len;
                if let Some((rl, 1)) = right {
                    self.runs.remove(&end);
                    len += rl;
                }
                match left {
                    Some((s, (l, 1))) if s + l == start => {
                        self.runs.insert(s, (l + len, 1));
                    }
                    _ => {
                        self.runs.insert(start, (len, 1));
                    }
                }
                return;
            }
            _ => {}
        }
        self.split(start);
        self.split(end);
        let mut cursor = start;
        let existing: Vec<(u64, (u64, u32))> =
            self.runs.range(start..end).map(|(&s, &v)| (s, v)).collect();
        for (s, (l, c)) in existing {
            if s > cursor {
                self.runs.insert(cursor, (s - cursor, 1));
            }
            self.runs.insert(s, (l, c.saturating_add(1)));
            cursor = s + l;
        }
        if cursor < end {
            self.runs.insert(cursor, (end - cursor, 1));
        }
        self.merge_at(end);
        let keys: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for k in keys.into_iter().rev() {
            self.merge_at(k);
        }
    }

    /// Subtracts one from every counted block of `start..start + len` and
    /// returns the runs whose count dropped to zero.
    pub fn decrement(&mut self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let mut freed = Vec::new();
        if len == 0 {
            return freed;
        }
        let end = start + len;
        // Fast path (one copy-on-write dropping a shared block, or freeing
        // part of a run): strictly inside one run, which the cursor of the
        // one search that finds it shortens in place and inserts the two
        // new runs beside (issue 17: no second and third search).
        {
            let mut cur = self.runs.upper_bound_mut(Bound::Included(&start));
            if let Some((&s, run)) = cur.peek_prev() {
                let (l, c) = *run;
                if s < start && end < s + l {
                    run.0 = start - s;
                    // Keys stay ordered: s < start < end < s + l, and the
                    // next run starts at s + l or later.
                    cur.insert_after(end, (s + l - end, c))
                        .expect("the tail of the split run keeps its place");
                    if c > 1 {
                        cur.insert_after(start, (len, c - 1))
                            .expect("the recounted piece goes before the tail");
                    } else {
                        freed.push((start, len));
                    }
                    return freed;
                }
            }
        }
        self.split(start);
        self.split(end);
        let existing: Vec<(u64, (u64, u32))> =
            self.runs.range(start..end).map(|(&s, &v)| (s, v)).collect();
        for (s, (l, c)) in existing {
            if c <= 1 {
                self.runs.remove(&s);
                match freed.last_mut() {
                    Some((fs, fl)) if *fs + *fl == s => *fl += l,
                    _ => freed.push((s, l)),
                }
            } else {
                self.runs.insert(s, (l, c - 1));
            }
        }
        self.merge_at(end);
        let keys: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for k in keys.into_iter().rev() {
            self.merge_at(k);
        }
        self.merge_at(start);
        freed
    }

    /// The count of one block.
    pub fn get(&self, block: u64) -> u32 {
        match self.runs.range(..=block).next_back() {
            Some((&s, &(l, c))) if s + l > block => c,
            _ => 0,
        }
    }

    /// The highest count in `start..start + len`, without allocating.
    pub fn max_in(&self, start: u64, len: u64) -> u32 {
        // One B-tree search, walking down from the end of the range.
        let mut max = 0;
        for (&s, &(l, c)) in self.runs.range(..start + len).rev() {
            if s + l <= start {
                break;
            }
            max = max.max(c);
            if s <= start {
                break;
            }
        }
        max
    }

    /// Blocks of `start..start + len` whose count is above `min`, without
    /// allocating.
    pub fn blocks_above(&self, start: u64, len: u64, min: u32) -> u64 {
        let end = start + len;
        let first = self.runs.range(..start).next_back();
        let rest = self.runs.range(start..end);
        first
            .into_iter()
            .chain(rest)
            .filter(|(_, &(_, c))| c > min)
            .map(|(&s, &(l, _))| (s + l).min(end).saturating_sub(s.max(start)))
            .sum()
    }

    /// Pieces of `start..start + len` with their counts (0 for gaps), in
    /// order, covering the whole range.
    pub fn segments(&self, start: u64, len: u64) -> Vec<(u64, u64, u32)> {
        let end = start + len;
        let mut out = Vec::new();
        // One B-tree search, walking down from `end`; everything from
        // `cursor` to `end` is in `out` (in reverse).
        let mut cursor = end;
        for (&s, &(l, c)) in self.runs.range(..end).rev() {
            if s + l <= start {
                break;
            }
            let (a, b) = (s.max(start), (s + l).min(end));
            if b < cursor {
                out.push((b, cursor - b, 0));
            }
            out.push((a, b - a, c));
            cursor = a;
            if s <= start {
                break;
            }
        }
        if cursor > start {
            out.push((start, cursor - start, 0));
        }
        out.reverse();
        out
    }

    /// Every run, in order: (start, len, count).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.runs.iter().map(|(&s, &(l, c))| (s, l, c))
    }

    /// True when no block is counted.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// The free-space allocator (FORMAT.md "Allocation policy").
///
/// The data area is cut into 2 MiB-aligned chunks. A chunk that is entirely
/// free sits in `huge` and is handed out whole to large files, so that their
/// extents are huge-page mappable. Small allocations come from `small`, the
/// free runs of chunks already in use; only when `small` cannot serve them
/// is a chunk taken from the *top* of `huge` (large files take from the
/// bottom), so small-file churn stays packed in few chunks. A chunk whose
/// blocks all come back free returns to `huge`: that is what keeps 2 MiB
/// alignment available as the filesystem ages.
#[derive(Debug, Clone)]
pub struct Allocator {
    data_start: u64,
    total_blocks: u64,
    /// Indices of fully free, fully-inside-the-data-area chunks.
    huge: BTreeSet<u64>,
    /// Free runs outside `huge`: start -> len, coalesced.
    small: BTreeMap<u64, u64>,
    /// Free blocks per chunk (including `huge` ones).
    chunk_free: Vec<u32>,
    free_blocks: u64,
}

impl Allocator {
    /// An allocator with nothing free; call `free` for every free run.
    #[cfg(test)]
    pub fn new(data_start: u64, total_blocks: u64) -> Self {
        let chunks = total_blocks.div_ceil(CHUNK_BLOCKS) as usize;
        Allocator {
            data_start,
            total_blocks,
            huge: BTreeSet::new(),
            small: BTreeMap::new(),
            chunk_free: alloc::vec![0; chunks],
            free_blocks: 0,
        }
    }

    /// An allocator with nothing free, or `None` when the heap cannot hold
    /// its per-chunk table (sized by the media's `total_blocks`).
    pub fn try_new(data_start: u64, total_blocks: u64) -> Option<Self> {
        let chunks = usize::try_from(total_blocks.div_ceil(CHUNK_BLOCKS)).ok()?;
        let mut chunk_free = Vec::new();
        chunk_free.try_reserve_exact(chunks).ok()?;
        chunk_free.resize(chunks, 0);
        Some(Allocator {
            data_start,
            total_blocks,
            huge: BTreeSet::new(),
            small: BTreeMap::new(),
            chunk_free,
            free_blocks: 0,
        })
    }

    /// Heap bytes of the allocator's tables (estimate, see
    /// `crate::TREE_ENTRY`): the per-chunk table and one B-tree entry per
    /// free run or free huge chunk.
    pub fn memory(&self) -> usize {
        self.chunk_free.capacity() * 4
            + self.small.len() * crate::RUN_COST
            + self.huge.len() * HUGE_ENTRY
    }

    /// Heap bytes an allocator for this geometry may take at most when
    /// every chunk is free: the per-chunk table plus one entry per chunk.
    pub fn memory_bound(data_start: u64, total_blocks: u64) -> usize {
        let chunks = total_blocks.div_ceil(CHUNK_BLOCKS);
        let data_chunks = (total_blocks - data_start.min(total_blocks)).div_ceil(CHUNK_BLOCKS) + 1;
        usize::try_from(chunks * 4 + data_chunks * HUGE_ENTRY as u64).unwrap_or(usize::MAX)
    }

    /// Free blocks in total.
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Fully free 2 MiB-aligned chunks.
    pub fn huge_free(&self) -> u64 {
        self.huge.len() as u64
    }

    fn whole_chunk(&self, chunk: u64) -> bool {
        let start = chunk * CHUNK_BLOCKS;
        start >= self.data_start && start + CHUNK_BLOCKS <= self.total_blocks
    }

    fn remove_small(&mut self, start: u64, len: u64) {
        // `start..start+len` lies inside one free run (callers check).
        // One B-tree search: the run is shortened, or removed, where the
        // cursor found it (issue 17: once per allocation).
        let end = start + len;
        let mut cur = self.small.upper_bound_mut(Bound::Included(&start));
        let (rs, rl) = match cur.peek_prev() {
            Some((&rs, rl)) if start > rs => {
                let whole = *rl;
                *rl = start - rs;
                (rs, whole)
            }
            Some((&rs, &mut rl)) => {
                cur.remove_prev();
                (rs, rl)
            }
            None => unreachable!("range is inside a free run"),
        };
        debug_assert!(rs <= start && end <= rs + rl, "range is inside a free run");
        if rs + rl > end {
            cur.insert_after(end, rs + rl - end)
                .expect("the rest of a free run keeps its place");
        }
    }

    fn count_chunks(&mut self, start: u64, len: u64, add: bool) {
        let mut b = start;
        let end = start + len;
        while b < end {
            let chunk = b / CHUNK_BLOCKS;
            let n = ((chunk + 1) * CHUNK_BLOCKS).min(end) - b;
            // n <= CHUNK_BLOCKS, so it fits a u32.
            if add {
                self.chunk_free[chunk as usize] += n as u32;
            } else {
                self.chunk_free[chunk as usize] -= n as u32;
            }
            b += n;
        }
    }

    /// Returns `start..start + len` to the free pool.
    pub fn free(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.free_blocks += len;
        self.count_chunks(start, len, true);
        // Insert with coalescing.
        let mut s = start;
        let mut l = len;
        if let Some((&ps, &pl)) = self.small.range(..s).next_back() {
            if ps + pl == s {
                self.small.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.small.get(&(s + l)) {
            self.small.remove(&(s + l));
            l += nl;
        }
        self.small.insert(s, l);
        // Chunks that became entirely free go back to the huge pool.
        let first = start / CHUNK_BLOCKS;
        let last = (start + len - 1) / CHUNK_BLOCKS;
        for chunk in first..=last {
            if self.whole_chunk(chunk) && self.chunk_free[chunk as usize] as u64 == CHUNK_BLOCKS {
                self.remove_small(chunk * CHUNK_BLOCKS, CHUNK_BLOCKS);
                self.huge.insert(chunk);
            }
        }
    }

    /// Takes one whole free 2 MiB chunk, preferring `prefer` (to continue a
    /// file contiguously), else the lowest. Returns its first block.
    pub fn alloc_huge(&mut self, prefer: Option<u64>) -> Option<u64> {
        let chunk = match prefer.map(|b| b / CHUNK_BLOCKS) {
            Some(c) if prefer.is_some_and(|b| b % CHUNK_BLOCKS == 0) && self.huge.contains(&c) => c,
            _ => *self.huge.iter().next()?,
        };
        self.huge.remove(&chunk);
        self.chunk_free[chunk as usize] = 0;
        self.free_blocks -= CHUNK_BLOCKS;
        Some(chunk * CHUNK_BLOCKS)
    }

    /// Takes up to `want` contiguous blocks for a small allocation: at
    /// `prefer` if free there, else first fit from the top of the small
    /// pool, else a fresh chunk from the top of the huge pool, else the
    /// largest small run. Returns (start, len) with 1 <= len <= want.
    pub fn alloc_small(&mut self, want: u64, prefer: Option<u64>) -> Option<(u64, u64)> {
        if want == 0 {
            return None;
        }
        if let Some(p) = prefer {
            if let Some((&rs, &rl)) = self.small.range(..=p).next_back() {
                if rs + rl > p {
                    let len = want.min(rs + rl - p);
                    self.take(p, len);
                    return Some((p, len));
                }
            }
        }
        if let Some((&rs, _)) = self.small.iter().rev().find(|(_, &l)| l >= want) {
            // Take the start of the run, so that the file's next
            // allocation (preferring the block after this one) continues
            // the same extent.
            self.take(rs, want);
            return Some((rs, want));
        }
        if let Some(&chunk) = self.huge.iter().next_back() {
            self.huge.remove(&chunk);
            self.small.insert(chunk * CHUNK_BLOCKS, CHUNK_BLOCKS);
            let len = want.min(CHUNK_BLOCKS);
            self.take(chunk * CHUNK_BLOCKS, len);
            return Some((chunk * CHUNK_BLOCKS, len));
        }
        let (&rs, &rl) = self.small.iter().max_by_key(|(_, &l)| l)?;
        let len = want.min(rl);
        self.take(rs, len);
        Some((rs, len))
    }

    fn take(&mut self, start: u64, len: u64) {
        self.remove_small(start, len);
        self.free_blocks -= len;
        self.count_chunks(start, len, false);
    }

    /// True when every block of the range is free.
    #[cfg(any(test, debug_assertions))]
    pub fn is_free(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        let mut b = start;
        while b < end {
            let chunk = b / CHUNK_BLOCKS;
            if self.huge.contains(&chunk) {
                b = (chunk + 1) * CHUNK_BLOCKS;
                continue;
            }
            match self.small.range(..=b).next_back() {
                Some((&rs, &rl)) if rs + rl > b => b = rs + rl,
                _ => return false,
            }
        }
        true
    }

    /// Every free run in address order (huge chunks included), for fsck.
    pub fn free_runs(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.small.iter().map(|(&s, &l)| (s, l)).collect();
        all.extend(self.huge.iter().map(|&c| (c * CHUNK_BLOCKS, CHUNK_BLOCKS)));
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_build_matches_increments() {
        let ranges = [
            (10, 10),
            (15, 10),
            (40, 5),
            (45, 5),
            (0, 3),
            (15, 10),
            (60, 1),
        ];
        let bulk = RunCounts::from_ranges(&ranges).unwrap();
        let mut one = RunCounts::default();
        for &(s, l) in &ranges {
            one.increment(s, l);
        }
        for b in 0..70 {
            assert_eq!(bulk.get(b), one.get(b), "block {b}");
        }
        assert_eq!(bulk.segments(0, 70), one.segments(0, 70));
    }

    /// The fast paths of `increment` and `decrement` leave the same counts
    /// and the same runs (merged the same way) as the general path, which
    /// a count built by `from_ranges` stands in for.
    #[test]
    fn fast_paths_match_a_rebuild() {
        let mut seed = 12345u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut c = RunCounts::default();
        let mut live: Vec<(u64, u64)> = Vec::new();
        for step in 0..4000 {
            if live.is_empty() || next(3) != 0 {
                // Often inside an existing range (a clone's copy-on-write).
                let (s, l) = match live.get(next(live.len().max(1) as u64) as usize) {
                    Some(&(s, l)) if next(2) == 0 => {
                        let o = next(l);
                        (s + o, 1 + next(l - o))
                    }
                    _ => (next(200), 1 + next(8)),
                };
                c.increment(s, l);
                live.push((s, l));
            } else {
                let i = next(live.len() as u64) as usize;
                let (s, l) = live.swap_remove(i);
                let freed = c.decrement(s, l);
                let rebuilt = RunCounts::from_ranges(&live).unwrap();
                for (fs, fl) in freed {
                    for b in fs..fs + fl {
                        assert_eq!(rebuilt.get(b), 0, "step {step}: freed {b}");
                    }
                }
            }
            let rebuilt = RunCounts::from_ranges(&live).unwrap();
            let got: Vec<_> = c.iter().collect();
            let want: Vec<_> = rebuilt.iter().collect();
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn run_counts_split_and_merge() {
        let mut c = RunCounts::default();
        c.increment(10, 10);
        c.increment(15, 10);
        assert_eq!(
            c.segments(8, 20),
            alloc::vec![(8, 2, 0), (10, 5, 1), (15, 5, 2), (20, 5, 1), (25, 3, 0)]
        );
        assert_eq!(c.decrement(10, 10), alloc::vec![(10, 5)]);
        assert_eq!(c.get(12), 0);
        assert_eq!(c.get(17), 1);
        assert_eq!(c.decrement(15, 10), alloc::vec![(15, 10)]);
        assert!(c.is_empty());
    }

    #[test]
    fn allocator_keeps_huge_chunks_whole() {
        let mut a = Allocator::new(10, 4 * CHUNK_BLOCKS);
        a.free(10, 4 * CHUNK_BLOCKS - 10);
        assert_eq!(a.huge_free(), 3);
        // Small allocations use the partial chunk 0 first.
        let (s, l) = a.alloc_small(4, None).unwrap();
        assert!(s < CHUNK_BLOCKS && l == 4);
        assert_eq!(a.huge_free(), 3);
        let h = a.alloc_huge(None).unwrap();
        assert_eq!(h % CHUNK_BLOCKS, 0);
        a.free(h, CHUNK_BLOCKS);
        a.free(s, l);
        assert_eq!(a.huge_free(), 3);
        assert_eq!(a.free_blocks(), 4 * CHUNK_BLOCKS - 10);
        assert!(a.is_free(10, 4 * CHUNK_BLOCKS - 10));
    }
}
