//! Crash-image generation: which images a power failure at one crash point
//! could leave, and which of them the explorer tries.
//!
//! At a [`CrashPoint`] every dirty line may keep any prefix of its pending
//! pieces (see [`crate::memory`]), and the piece at the end of a prefix may
//! be torn unless it came from `store_u64`. The full product is far too
//! large, so the explorer tries, in this order, until
//! [`Policy::max_images`]:
//! 1. the persisted image alone, and persisted plus every pending store;
//! 2. when at most [`Policy::all_subsets_up_to`] lines are dirty, every
//!    subset of dirty lines (each kept line keeps all its pieces);
//!    otherwise every single line, every "all but one line", and every
//!    pair of lines while at most [`Policy::pairs_up_to`] lines are dirty.
//!    Lines holding a `store_u64` piece (the usual commit words) come first
//!    when there are more lines than [`Policy::singles_cap`];
//! 3. [`Policy::random`] seeded random images: each line keeps nothing,
//!    everything or a random prefix, sometimes torn;
//! 4. every proper prefix of each line (at most [`Policy::prefix_cap`] per
//!    line), with the other lines keeping nothing, then everything;
//! 5. each proper prefix of each line ending in a torn piece (half of the
//!    piece kept).
//!
//! Images are identified by [`ImageHash`] and each distinct image is given
//! to the caller once per point.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::image::{ImageHash, LineBytes, PagedImage, LINE};
use crate::memory::{CrashPoint, LineLog, PieceKind};
use crate::rng::Rng;

/// Bounds on the crash images tried at one crash point.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Every subset of dirty lines is tried up to this many dirty lines.
    pub all_subsets_up_to: usize,
    /// Pairs of dirty lines are tried up to this many dirty lines.
    pub pairs_up_to: usize,
    /// At most this many lines get single-line and prefix images.
    pub singles_cap: usize,
    /// At most this many "all others kept" images when many lines are
    /// dirty (each costs time in proportion to the dirty lines).
    pub all_based_cap: usize,
    /// At most this many proper prefixes per line.
    pub prefix_cap: usize,
    /// Seeded random images per point.
    pub random: usize,
    /// Hard cap on images given out per point (before deduplication).
    pub max_images: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            all_subsets_up_to: 6,
            pairs_up_to: 24,
            singles_cap: 128,
            all_based_cap: 16,
            prefix_cap: 12,
            random: 8,
            max_images: 1024,
        }
    }
}

/// What one line keeps in a crash image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    /// Whole pieces kept (a prefix of the log).
    pub pieces: u32,
    /// Bytes kept of the next piece (0 = none; it tears).
    pub torn: u8,
}

/// Which pieces a crash image keeps: a default for all dirty lines plus
/// exceptions (by position in the dirty-line list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Lines not listed keep everything (true) or nothing (false).
    pub keep_rest: bool,
    /// Exceptions: (position among dirty lines, what it keeps).
    pub lines: Vec<(usize, Keep)>,
}

/// One crash image: the persisted image at its point with some lines
/// replaced.
#[derive(Clone, Debug)]
pub struct CrashImage {
    /// Hash of the whole image.
    pub hash: ImageHash,
    /// Lines that differ from the persisted image: (line index, bytes).
    pub lines: Vec<(u64, LineBytes)>,
    /// How it was chosen (for reports).
    pub selection: Selection,
}

impl CrashImage {
    /// The image as a whole, sharing unchanged pages with `persisted`.
    pub fn materialise(&self, persisted: &PagedImage) -> PagedImage {
        let mut image = persisted.clone();
        for (index, bytes) in &self.lines {
            image.set_line(*index, bytes);
        }
        image
    }
}

/// Builds the image `selection` describes at `point`.
pub fn build(
    point: &CrashPoint<'_>,
    dirty: &[(u64, &LineLog)],
    selection: Selection,
) -> CrashImage {
    let mut hash = point.persisted_hash;
    let mut lines = Vec::new();
    let mut apply = |index: u64, log: &LineLog, keep: Keep| {
        let old = point.persisted.line(index);
        let mut new: LineBytes = *old;
        let whole = (keep.pieces as usize).min(log.pieces.len());
        for piece in &log.pieces[..whole] {
            piece.apply(&mut new, LINE);
        }
        if keep.torn > 0 {
            if let Some(piece) = log.pieces.get(whole) {
                piece.apply(&mut new, usize::from(keep.torn));
            }
        }
        if &new != old {
            hash = hash.replaced(index, old, &new);
            lines.push((index, new));
        }
    };
    if selection.keep_rest {
        let mut exceptions = selection.lines.clone();
        exceptions.sort_unstable_by_key(|(position, _)| *position);
        let mut next = exceptions.iter().peekable();
        for (position, (index, log)) in dirty.iter().enumerate() {
            let keep = match next.peek() {
                Some((p, keep)) if *p == position => {
                    next.next();
                    *keep
                }
                _ => Keep {
                    pieces: log.pieces.len() as u32,
                    torn: 0,
                },
            };
            apply(*index, log, keep);
        }
    } else {
        for (position, keep) in &selection.lines {
            if let Some((index, log)) = dirty.get(*position) {
                apply(*index, log, *keep);
            }
        }
    }
    CrashImage {
        hash,
        lines,
        selection,
    }
}

fn all(log: &LineLog) -> Keep {
    Keep {
        pieces: log.pieces.len() as u32,
        torn: 0,
    }
}

const NOTHING: Keep = Keep { pieces: 0, torn: 0 };

/// The proper prefix lengths (1..n) to try for a line of `n` pieces.
fn prefixes(n: usize, cap: usize) -> Vec<u32> {
    if n <= 1 {
        return Vec::new();
    }
    let proper = n - 1;
    if proper <= cap {
        (1..n as u32).collect()
    } else {
        // Evenly spaced, always including 1 and n - 1.
        let mut out: Vec<u32> = (0..cap)
            .map(|i| (1 + i * (proper - 1) / (cap - 1).max(1)) as u32)
            .collect();
        out.dedup();
        out
    }
}

/// Calls `each` with every distinct crash image [`Policy`] selects at
/// `point`. Returns the number of images given out.
pub fn crash_images(
    point: &CrashPoint<'_>,
    policy: &Policy,
    rng: &mut Rng,
    mut each: impl FnMut(CrashImage),
) -> usize {
    let dirty: Vec<(u64, &LineLog)> = point.pending.iter().map(|(i, l)| (*i, l)).collect();
    let d = dirty.len();
    let mut seen = BTreeSet::new();
    let mut tried = 0usize;
    let mut given = 0usize;
    let mut offer = |selection: Selection, tried: &mut usize| -> bool {
        if *tried >= policy.max_images {
            return false;
        }
        *tried += 1;
        let image = build(point, &dirty, selection);
        if seen.insert(image.hash) {
            given += 1;
            each(image);
        }
        true
    };

    // 1. Nothing pending kept; everything kept.
    offer(
        Selection {
            keep_rest: false,
            lines: Vec::new(),
        },
        &mut tried,
    );
    if d == 0 {
        return given;
    }
    offer(
        Selection {
            keep_rest: true,
            lines: Vec::new(),
        },
        &mut tried,
    );

    // Lines for single-line work: commit-looking lines first, then the rest
    // (sampled when too many).
    let mut order: Vec<usize> = (0..d).collect();
    let is_commit = |p: usize| {
        dirty[p]
            .1
            .pieces
            .iter()
            .any(|x| x.kind == PieceKind::Atomic)
    };
    order.sort_by_key(|&p| !is_commit(p));
    if d > policy.singles_cap {
        let commits = order.iter().filter(|&&p| is_commit(p)).count();
        let keep_commits = commits.min(policy.singles_cap);
        let mut rest: Vec<usize> = order[commits..].to_vec();
        let mut chosen: Vec<usize> = order[..keep_commits].to_vec();
        while chosen.len() < policy.singles_cap && !rest.is_empty() {
            let i = rng.index(rest.len());
            chosen.push(rest.swap_remove(i));
        }
        order = chosen;
    }

    // 2. Subsets.
    if d <= policy.all_subsets_up_to {
        for mask in 1u32..(1u32 << d) - 1 {
            let lines = (0..d)
                .filter(|p| mask & (1 << p) != 0)
                .map(|p| (p, all(dirty[p].1)))
                .collect();
            if !offer(
                Selection {
                    keep_rest: false,
                    lines,
                },
                &mut tried,
            ) {
                return given;
            }
        }
    } else {
        for &p in &order {
            offer(
                Selection {
                    keep_rest: false,
                    lines: alloc::vec![(p, all(dirty[p].1))],
                },
                &mut tried,
            );
        }
        let all_based = if d > 64 { policy.all_based_cap } else { d };
        for &p in order.iter().take(all_based) {
            offer(
                Selection {
                    keep_rest: true,
                    lines: alloc::vec![(p, NOTHING)],
                },
                &mut tried,
            );
        }
        if d <= policy.pairs_up_to {
            for a in 0..d {
                for b in a + 1..d {
                    offer(
                        Selection {
                            keep_rest: false,
                            lines: alloc::vec![(a, all(dirty[a].1)), (b, all(dirty[b].1))],
                        },
                        &mut tried,
                    );
                }
            }
        }
    }

    // 3. Seeded random images.
    for _ in 0..policy.random {
        let lines = (0..d)
            .map(|p| {
                let n = dirty[p].1.pieces.len() as u64;
                let pieces = match rng.below(3) {
                    0 => 0,
                    1 => n,
                    _ => rng.below(n + 1),
                };
                let torn = match dirty[p].1.pieces.get(pieces as usize) {
                    Some(piece) if piece.can_tear() && rng.one_in(4) => {
                        1 + rng.below(u64::from(piece.len) - 1) as u8
                    }
                    _ => 0,
                };
                (
                    p,
                    Keep {
                        pieces: pieces as u32,
                        torn,
                    },
                )
            })
            .collect();
        offer(
            Selection {
                keep_rest: false,
                lines,
            },
            &mut tried,
        );
    }

    // 4. Proper prefixes of each line, alone and with everything else kept.
    let mut all_based = 0usize;
    for &p in &order {
        for k in prefixes(dirty[p].1.pieces.len(), policy.prefix_cap) {
            let keep = Keep { pieces: k, torn: 0 };
            offer(
                Selection {
                    keep_rest: false,
                    lines: alloc::vec![(p, keep)],
                },
                &mut tried,
            );
            if d <= 64 || all_based < policy.all_based_cap {
                all_based += 1;
                offer(
                    Selection {
                        keep_rest: true,
                        lines: alloc::vec![(p, keep)],
                    },
                    &mut tried,
                );
            }
        }
    }

    // 5. Torn frontier pieces.
    for &p in &order {
        let log = dirty[p].1;
        let n = log.pieces.len();
        let mut ks = prefixes(n, policy.prefix_cap);
        ks.insert(0, 0);
        for k in ks {
            let piece = &log.pieces[k as usize];
            if piece.can_tear() {
                offer(
                    Selection {
                        keep_rest: false,
                        lines: alloc::vec![(
                            p,
                            Keep {
                                pieces: k,
                                torn: piece.len / 2,
                            }
                        )],
                    },
                    &mut tried,
                );
            }
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PAGE;
    use crate::memory::CrashMemory;
    use daxbox_persist::PersistentMemory;

    fn images(m: &CrashMemory, policy: &Policy) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        m.with_point(|p| {
            crash_images(p, policy, &mut Rng::new(1), |image| {
                out.push(image.materialise(p.persisted).to_vec())
            });
        });
        out
    }

    #[test]
    fn two_dirty_lines_give_all_four_combinations() {
        let mut m = CrashMemory::new(PagedImage::zeroed(PAGE).unwrap());
        m.store_u64(0, 1).unwrap();
        m.store_u64(64, 2).unwrap();
        let got = images(&m, &Policy::default());
        let pairs: BTreeSet<(u8, u8)> = got.iter().map(|i| (i[0], i[64])).collect();
        assert_eq!(got.len(), 4, "distinct images only");
        assert_eq!(
            pairs,
            [(0, 0), (1, 0), (0, 2), (1, 2)].into_iter().collect()
        );
    }

    #[test]
    fn lines_keep_prefixes_only_and_atomic_stores_never_tear() {
        let mut m = CrashMemory::new(PagedImage::zeroed(PAGE).unwrap());
        m.store_u64(0, u64::MAX).unwrap();
        m.store_u64(8, u64::MAX).unwrap();
        let got = images(&m, &Policy::default());
        for image in &got {
            let a = u64::from_le_bytes(image[0..8].try_into().unwrap());
            let b = u64::from_le_bytes(image[8..16].try_into().unwrap());
            assert!(a == 0 || a == u64::MAX, "torn atomic store");
            assert!(
                b == 0 || a == u64::MAX,
                "second store kept without the first"
            );
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn plain_writes_can_tear() {
        let mut m = CrashMemory::new(PagedImage::zeroed(PAGE).unwrap());
        m.write(0, &[0xff; 8]).unwrap();
        let got = images(&m, &Policy::default());
        assert!(
            got.iter().any(|i| i[0] == 0xff && i[7] == 0),
            "no torn image"
        );
    }

    #[test]
    fn image_hashes_match_materialised_images() {
        let mut m = CrashMemory::new(PagedImage::zeroed(2 * PAGE).unwrap());
        for i in 0..20u64 {
            m.write(i * 40, &[i as u8 + 1; 13]).unwrap();
        }
        m.with_point(|p| {
            let n = crash_images(p, &Policy::default(), &mut Rng::new(3), |image| {
                assert_eq!(image.hash, image.materialise(p.persisted).hash());
            });
            assert!(n > 40, "only {n} images");
        });
    }

    #[test]
    fn prefix_lengths_are_capped_and_cover_both_ends() {
        assert_eq!(prefixes(1, 4), Vec::<u32>::new());
        assert_eq!(prefixes(4, 4), vec![1, 2, 3]);
        let long = prefixes(100, 5);
        assert_eq!(long.first(), Some(&1));
        assert_eq!(long.last(), Some(&99));
        assert!(long.len() <= 5);
    }
}
