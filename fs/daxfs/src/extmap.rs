//! The in-memory extent map of one file: logical block -> region block.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::format::Extent;

/// Sorted, non-overlapping extents keyed by first logical block. Adjacent
/// extents that are contiguous both logically and physically are merged,
/// so a file written sequentially stays one extent per physical run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentMap {
    /// logical start -> (len, physical start)
    map: BTreeMap<u64, (u64, u64)>,
}

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
        match self.map.range(..=logical).next_back() {
            Some((&s, &(l, p))) if s + l > logical => Some(p + (logical - s)),
            _ => None,
        }
    }

    /// The physical run backing `logical`: (first physical block, blocks
    /// left in the extent from `logical` on).
    pub fn run_at(&self, logical: u64) -> Option<(u64, u64)> {
        match self.map.range(..=logical).next_back() {
            Some((&s, &(l, p))) if s + l > logical => Some((p + (logical - s), s + l - logical)),
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

    /// Maps `logical..logical + len` (which must be unmapped) to
    /// `physical..`, merging with contiguous neighbours.
    pub fn insert(&mut self, logical: u64, len: u64, physical: u64) {
        if len == 0 {
            return;
        }
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
