//! The in-memory extent map of one file: logical block -> region block.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Bound;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::format::Extent;

/// Sorted, non-overlapping extents keyed by first logical block. Adjacent
/// extents that are contiguous both logically and physically are merged,
/// so a file written sequentially stays one extent per physical run.
#[derive(Debug, Clone, Default)]
pub struct ExtentMap {
    /// logical start -> (len, physical start)
    map: BTreeMap<u64, (u64, u64)>,
    /// Changes with every change of the map, to a number no map had
    /// before ([`Self::version`]); 0 for an empty map never changed.
    version: u64,
}

/// The last version handed out to any map (process-wide, so that two maps
/// never share a version unless one is a copy of the other).
static VERSIONS: AtomicU64 = AtomicU64::new(0);

impl PartialEq for ExtentMap {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for ExtentMap {}

/// A piece of a logical range: mapped to `physical`, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// First logical block.
    pub logical: u64,
    /// Blocks.
    pub len: u64,
    /// First region block, `None` for a hole.
    pub physical: Option<u64>,
}

impl ExtentMap {
    /// Builds from extents already checked to be sorted and disjoint.
    pub fn from_extents(extents: &[Extent]) -> Self {
        let mut m = ExtentMap::default();
        for e in extents {
            m.insert(e.logical, e.len, e.physical);
        }
        m
    }

    /// A number that changes with every change of the map and that no
    /// other map has had (except a copy of this one, with the same
    /// extents): what remembers a lookup stays true while it is the same.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn changed(&mut self) {
        self.version = VERSIONS.fetch_add(1, Ordering::Relaxed) + 1;
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// All extents in logical order.
    pub fn to_vec(&self) -> Vec<Extent> {
        self.map
            .iter()
            .map(|(&logical, &(len, physical))| Extent {
                logical,
                len,
                physical,
            })
            .collect()
    }

    /// Iterates extents in logical order.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.map.iter().map(|(&logical, &(len, physical))| Extent {
            logical,
            len,
            physical,
        })
    }

    /// Extents overlapping `start..` in logical order, the first clipped
    /// to begin at `start`. Lazy: a caller that stops early pays only for
    /// the extents it looked at.
    pub fn iter_from(&self, start: u64) -> impl Iterator<Item = Extent> + '_ {
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(&s, &(l, _))| s + l > start)
            .map(|(&s, &(l, p))| Extent {
                logical: start,
                len: s + l - start,
                physical: p + (start - s),
            });
        first
            .into_iter()
            .chain(
                self.map
                    .range(start..)
                    .map(|(&logical, &(len, physical))| Extent {
                        logical,
                        len,
                        physical,
                    }),
            )
    }

    /// Blocks mapped in total.
    pub fn mapped_blocks(&self) -> u64 {
        self.map.values().map(|&(l, _)| l).sum()
    }

    /// One past the last mapped logical block (0 when empty).
    pub fn end(&self) -> u64 {
        self.map.iter().next_back().map_or(0, |(&s, &(l, _))| s + l)
    }

    /// The region block backing logical block `logical`, if any.
    pub fn lookup(&self, logical: u64) -> Option<u64> {
        self.run_around(logical).map(|(p, _, _)| p)
    }

    /// The physical block of `logical` and the blocks of its extent from
    /// there on, and whether the same extent also maps the block before
    /// `logical`; None in a hole.
    pub fn run_around(&self, logical: u64) -> Option<(u64, u64, bool)> {
        match self.map.range(..=logical).next_back() {
            Some((&s, &(l, p))) if s + l > logical => {
                Some((p + (logical - s), s + l - logical, s < logical))
            }
            _ => None,
        }
    }

    /// Pieces covering `start..start + len`, in order, holes included.
    /// One B-tree search: the extents are walked down from `end` (issue
    /// 17: a copy-on-write asks this several times per write, and the map
    /// of a clone holds tens of thousands of extents).
    pub fn pieces(&self, start: u64, len: u64) -> Vec<Piece> {
        let end = start + len;
        let mut out = Vec::new();
        // Everything from `cursor` to `end` is in `out` (in reverse).
        let mut cursor = end;
        for (&s, &(l, p)) in self.map.range(..end).rev() {
            if s + l <= start {
                break;
            }
            let (a, b) = (s.max(start), (s + l).min(end));
            if b < cursor {
                out.push(Piece {
                    logical: b,
                    len: cursor - b,
                    physical: None,
                });
            }
            out.push(Piece {
                logical: a,
                len: b - a,
                physical: Some(p + (a - s)),
            });
            cursor = a;
            if s <= start {
                break;
            }
        }
        if cursor > start {
            out.push(Piece {
                logical: start,
                len: cursor - start,
                physical: None,
            });
        }
        out.reverse();
        out
    }

    /// The effective map of a layered extent list (FORMAT.md "Layered
    /// extent lists"): each entry hides every later entry where they
    /// overlap, so the list is applied from its last entry to its first.
    pub fn from_layers(entries: &[Extent]) -> Self {
        let mut m = ExtentMap::default();
        for e in entries.iter().rev() {
            m.remove(e.logical, e.len);
            m.insert(e.logical, e.len, e.physical);
        }
        m
    }

    /// Unmaps `start..start + len`; returns the pieces removed.
    pub fn remove(&mut self, start: u64, len: u64) -> Vec<Extent> {
        self.changed();
        let end = start + len;
        let mut removed = Vec::new();
        // The extents overlapping the range, found with one B-tree search.
        let mut hit: Vec<(u64, (u64, u64))> = Vec::new();
        for (&s, &v) in self.map.range(..end).rev() {
            if s + v.0 <= start {
                break;
            }
            hit.push((s, v));
            if s <= start {
                break;
            }
        }
        for (s, (l, p)) in hit.into_iter().rev() {
            let (a, b) = (s.max(start), (s + l).min(end));
            if b <= a {
                continue;
            }
            self.map.remove(&s);
            if s < a {
                self.map.insert(s, (a - s, p));
            }
            if s + l > b {
                self.map.insert(b, (s + l - b, p + (b - s)));
            }
            removed.push(Extent {
                logical: a,
                len: b - a,
                physical: p + (a - s),
            });
        }
        removed
    }

    /// Maps `logical..logical + len` to `physical..` in place of whatever
    /// mapped it; returns the pieces replaced ([`Self::remove`] then
    /// [`Self::insert`]). A range strictly inside one extent that it does
    /// not continue (a copy-on-write of a few blocks of a shared extent)
    /// takes one B-tree search (a cursor shortens the extent and inserts
    /// the two new ones beside it) instead of about eight.
    pub fn replace(&mut self, logical: u64, len: u64, physical: u64) -> Vec<Extent> {
        let end = logical + len;
        let mut cur = self.map.upper_bound_mut(Bound::Included(&logical));
        let inside = match cur.peek_prev() {
            Some((&s, left))
                if s < logical && end < s + left.0 && left.1 + (logical - s) != physical =>
            {
                // Shortened in place: no second search for it.
                let (l, p) = *left;
                left.0 = logical - s;
                Some((s, l, p))
            }
            _ => None,
        };
        let Some((s, l, p)) = inside else {
            let removed = self.remove(logical, len);
            self.insert(logical, len, physical);
            return removed;
        };
        // Both go right after the shortened extent, `end` first, so the
        // keys stay ordered: s < logical < end < s + l <= the next key.
        cur.insert_after(end, (s + l - end, p + (end - s)))
            .expect("the tail of the split extent keeps its place");
        cur.insert_after(logical, (len, physical))
            .expect("the new piece goes before the tail");
        self.changed();
        alloc::vec![Extent {
            logical,
            len,
            physical: p + (logical - s),
        }]
    }

    /// Maps `logical..logical + len` (which must be unmapped) to
    /// `physical..`, merging with contiguous neighbours.
    pub fn insert(&mut self, logical: u64, len: u64, physical: u64) {
        if len == 0 {
            return;
        }
        self.changed();
        let (mut s, mut l, mut p) = (logical, len, physical);
        if let Some((&ls, &(ll, lp))) = self.map.range(..s).next_back() {
            if ls + ll == s && lp + ll == p {
                self.map.remove(&ls);
                s = ls;
                l += ll;
                p = lp;
            }
        }
        if let Some(&(nl, np)) = self.map.get(&(s + l)) {
            if p + l == np {
                self.map.remove(&(s + l));
                l += nl;
            }
        }
        self.map.insert(s, (l, p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_remove_then_insert() {
        let mut base = ExtentMap::default();
        base.insert(0, 100, 1000);
        base.insert(100, 10, 5000);
        base.insert(200, 50, 7000);
        // Inside one extent, at its edges, across extents and holes, and
        // mapping a piece to the blocks it already has.
        for (l, n, p) in [
            (10, 1, 9),
            (10, 5, 1010),
            (0, 1, 9),
            (99, 1, 9),
            (95, 10, 9),
            (105, 100, 9),
            (300, 4, 9),
            (50, 1, 2000),
        ] {
            let mut a = base.clone();
            let mut b = base.clone();
            let got = a.replace(l, n, p);
            let want = b.remove(l, n);
            b.insert(l, n, p);
            assert_eq!((got, &a), (want, &b), "replace({l}, {n}, {p})");
        }
    }

    #[test]
    fn iter_from_clips_the_first_extent() {
        let mut m = ExtentMap::default();
        m.insert(0, 4, 100);
        m.insert(10, 2, 50);
        let from = |start| -> Vec<(u64, u64, u64)> {
            m.iter_from(start)
                .map(|e| (e.logical, e.len, e.physical))
                .collect()
        };
        assert_eq!(from(0), alloc::vec![(0, 4, 100), (10, 2, 50)]);
        assert_eq!(from(2), alloc::vec![(2, 2, 102), (10, 2, 50)]);
        assert_eq!(from(4), alloc::vec![(10, 2, 50)]);
        assert_eq!(from(11), alloc::vec![(11, 1, 51)]);
        assert!(from(12).is_empty());
    }

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut m = ExtentMap::default();
        m.insert(0, 2, 100);
        m.insert(2, 2, 102);
        m.insert(10, 1, 50);
        assert_eq!(m.len(), 2);
        assert_eq!(m.lookup(3), Some(103));
        assert_eq!(m.lookup(5), None);
        let removed: Vec<(u64, u64)> = m
            .remove(1, 10)
            .iter()
            .map(|e| (e.physical, e.len))
            .collect();
        assert_eq!(removed, alloc::vec![(101, 3), (50, 1)]);
        assert_eq!(
            m.to_vec(),
            alloc::vec![Extent {
                logical: 0,
                len: 1,
                physical: 100
            }]
        );
        assert_eq!(
            m.pieces(0, 3),
            alloc::vec![
                Piece {
                    logical: 0,
                    len: 1,
                    physical: Some(100)
                },
                Piece {
                    logical: 1,
                    len: 2,
                    physical: None
                }
            ]
        );
    }
}
