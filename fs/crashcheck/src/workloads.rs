//! The workloads of the crash check: a setup that every workload starts
//! from, the operation templates the issue asks for, and the order in which
//! sequences of them are tried.
//!
//! Sequences are tried shortest first (every single operation, then every
//! pair, then triples in a seeded order, then seeded random longer
//! sequences), so the first violation found comes from a smallest failing
//! workload.

use alloc::string::String;
use alloc::vec::Vec;

use crate::oracle::Op;
use crate::rng::Rng;

/// daxfs's huge-page extent size (2 MiB, FORMAT.md "Geometry").
pub const CHUNK: u64 = 2 * 1024 * 1024;

/// Size of the small setup file: three blocks, the last one partial.
pub const SMALL_SIZE: u64 = 10_000;
/// Size of the big setup file: one whole 2 MiB extent and a bit.
pub const BIG_SIZE: u64 = CHUNK + 12 * 1024;

fn name(s: &str) -> String {
    String::from(s)
}

fn write(file: &str, offset: u64, len: u64) -> Op {
    Op::Write {
        name: name(file),
        offset,
        len,
        seed: 0,
    }
}

fn zero(file: &str, offset: u64, len: u64, punch: bool) -> Op {
    Op::Zero {
        name: name(file),
        offset,
        len,
        punch,
    }
}

/// Operations that build the starting image: a small file and a file that
/// spans two 2 MiB extents, both persisted.
pub fn setup() -> Vec<Op> {
    let mut ops = alloc::vec![
        Op::Create(name("small")),
        Op::Create(name("big")),
        write("small", 0, SMALL_SIZE),
        write("big", 0, BIG_SIZE),
        Op::PersistAll,
    ];
    // Distinct data per setup write.
    for (i, op) in ops.iter_mut().enumerate() {
        if let Op::Write { seed, .. } = op {
            *seed = 200 + i as u8;
        }
    }
    ops
}

/// The operation templates: every kind the issue lists, plus
/// `write_zeroes`, on the small file and on the file spanning two extents.
pub fn templates() -> Vec<Op> {
    alloc::vec![
        Op::Create(name("new")),
        // Writes: aligned, unaligned, appending, past the end (leaving a
        // hole), into the hole a truncate up leaves, across the 2 MiB
        // extent boundary, appending to the big file, into the big file.
        write("small", 4096, 4096),
        write("small", 1000, 5000),
        write("small", SMALL_SIZE, 3000),
        write("small", 40_000, 2000),
        write("small", 20_000, 1000),
        write("big", CHUNK - 3000, 6000),
        write("big", BIG_SIZE, 4096),
        write("big", BIG_SIZE + 4096, 4096),
        write("big", 100, 50),
        // write_zeroes: in place; punching whole blocks inside the file;
        // punching past the end (two commits, FORMAT.md "Data writes");
        // punching inside the big file's 2 MiB chunk.
        zero("small", 2000, 3000, false),
        zero("small", 1000, 8000, true),
        zero("small", 6000, 12_000, true),
        zero("big", 40_960, 3 * 4096 + 10, true),
        Op::Truncate(name("small"), 3000),
        Op::Truncate(name("small"), 30_000),
        Op::Truncate(name("big"), CHUNK / 2),
        Op::Truncate(name("big"), CHUNK + CHUNK / 2),
        Op::Rename(name("small"), name("new")),
        Op::Rename(name("small"), name("big")),
        Op::Unlink(name("small")),
        Op::Unlink(name("big")),
        Op::Clone(name("small"), name("copy")),
        Op::Clone(name("big"), name("copy")),
        write("copy", 0, 5000),
        write("new", 0, 3000),
        Op::Persist(name("small")),
        Op::PersistAll,
    ]
}

/// The open-unlink scenarios (FORMAT.md "Orphans"), run once before the
/// generated sequences: a held file is unlinked (or replaced by a rename),
/// written through its handle as an orphan (in place, with allocation past
/// its end, copy-on-write of blocks shared with a clone), and closed; a
/// crash at every point must leave the name present (before the unlink
/// commit) or absent, and the next mount reclaims the orphan with no leak
/// (fsck clean).
pub fn scenarios() -> Vec<Vec<Op>> {
    let held = |offset, len, seed| Op::WriteHeld { offset, len, seed };
    alloc::vec![
        alloc::vec![
            Op::Open(name("big")),
            Op::Unlink(name("big")),
            held(100, 5000, 1),
            held(BIG_SIZE, 4096, 2),
            Op::Close,
        ],
        alloc::vec![
            Op::Open(name("small")),
            Op::Unlink(name("small")),
            Op::Create(name("small")),
            write("small", 0, 3000),
            held(SMALL_SIZE, 3000, 3),
            Op::Close,
        ],
        alloc::vec![
            Op::Open(name("big")),
            Op::Rename(name("small"), name("big")),
            held(CHUNK - 3000, 6000, 4),
            Op::Close,
        ],
        alloc::vec![
            Op::Open(name("small")),
            Op::Clone(name("small"), name("copy")),
            Op::Unlink(name("small")),
            held(0, 4096, 5),
            Op::Close,
            Op::Unlink(name("copy")),
        ],
        // append_from (FORMAT.md "Appending by moving extents"): extents
        // move to a 2 MiB-sized file and the source's record is freed in
        // one transaction: a crash leaves both files or the joined one.
        alloc::vec![
            Op::Truncate(name("big"), CHUNK),
            Op::Persist(name("big")),
            Op::Append(name("big"), name("small")),
        ],
        alloc::vec![
            Op::Create(name("new")),
            Op::Append(name("new"), name("big")),
            Op::Clone(name("small"), name("copy")),
            Op::Truncate(name("new"), 2 * CHUNK),
            Op::Append(name("new"), name("copy")),
            write("new", 0, 3000),
            Op::Unlink(name("small")),
        ],
        // Deferred size commits (daxfs FORMAT.md "Deferred size commits"):
        // appends into the big file's preallocated chunk and into the
        // small file's last block keep their size in memory; a crash may
        // show any size since the last commit of the record, never less
        // than the persisted one, never bytes nobody wrote. The batch is
        // then committed by each way there is: an appending write past a
        // gap (zeroes the gap, allocates nothing, commits), persist, a
        // clone (the clone's record), a rename, a truncate, the last close.
        alloc::vec![
            seeded(write("big", BIG_SIZE, 4096), 11),
            seeded(write("big", BIG_SIZE + 4096, 5000), 12),
            seeded(write("small", SMALL_SIZE, 2000), 13),
            seeded(write("big", BIG_SIZE + 20_000, 3000), 14),
            seeded(write("big", BIG_SIZE + 23_000, 100), 15),
            Op::Persist(name("big")),
            seeded(write("big", BIG_SIZE + 23_100, 8192), 16),
            Op::Clone(name("big"), name("copy")),
            seeded(write("big", BIG_SIZE + 31_292, 4096), 17),
            Op::Rename(name("big"), name("new")),
            seeded(write("new", BIG_SIZE + 35_388, 1000), 18),
            Op::Truncate(name("new"), BIG_SIZE + 30_000),
            seeded(write("small", SMALL_SIZE + 2000, 200), 19),
            Op::PersistAll,
        ],
        // Allocate-ahead in small files (daxfs FORMAT.md "Allocation
        // policy"): 4 KiB appends into a new small file map blocks ahead
        // of its end (1, 2, 4, ... at a time), and the appends in between
        // are in-place stores with deferred sizes; a crash never shows the
        // unfilled blocks ahead, whose space fsck counts as the file's.
        // Then a clone (both sides share the blocks ahead), appends into
        // either side (copy-on-write of a shared block past the end), a
        // truncate down (gives the blocks ahead back) and an unlink.
        alloc::vec![
            Op::Create(name("new")),
            seeded(write("new", 0, 4096), 41),
            seeded(write("new", 4096, 4096), 42),
            seeded(write("new", 8192, 4096), 43),
            seeded(write("new", 12_288, 4096), 44),
            Op::Persist(name("new")),
            seeded(write("new", 16_384, 3000), 45),
            seeded(write("new", 19_384, 6000), 46),
            Op::Clone(name("new"), name("copy")),
            seeded(write("copy", 25_384, 4096), 47),
            seeded(write("new", 25_384, 2000), 48),
            Op::Truncate(name("new"), 5000),
            seeded(write("new", 5000, 4096), 49),
            Op::Unlink(name("copy")),
            Op::PersistAll,
        ],
        alloc::vec![
            Op::Open(name("big")),
            seeded(write("big", BIG_SIZE, 4096), 21),
            seeded(write("big", BIG_SIZE + 4096, 4096), 22),
            Op::Close,
            seeded(write("big", BIG_SIZE + 8192, 4096), 23),
            Op::Unlink(name("big")),
        ],
        // Copy-on-write by block into a clone (FORMAT.md "Copy-on-write
        // of shared blocks"), past 12 extents so that the clone's list
        // becomes layered and is prepended to ("Layered extent lists"),
        // then compaction ("Compaction") and the unlink of either side:
        // every crash image reads both files as written (or as before
        // the write), fsck clean, no block leaked.
        {
            let mut ops = clone_then_scatter(8, 100, 200, 10);
            ops.push(write("big", 4096, 4096));
            ops.push(Op::Compact(name("copy")));
            ops.push(Op::Unlink(name("big")));
            ops.push(write("copy", 8192, 100));
            ops.push(Op::Unlink(name("copy")));
            ops
        },
        // Deferred copy-on-write commits (FORMAT.md "Deferred
        // copy-on-write commits"): the clone's list turns layered at its
        // sixth splitting write, the next eleven wait in memory, the
        // twelfth commits them first (one prepend) and waits itself; the
        // original then overwrites the block that write copied (it must
        // copy too: after a crash the clone reads that block from it
        // again); a persist commits the clone's wait, and the clone goes
        // with one more waiting.
        {
            let mut ops = clone_then_scatter(18, 300, 100, 60);
            ops.push(seeded(write("big", 17 * 65_536, 4096), 80));
            ops.push(Op::Persist(name("copy")));
            ops.push(seeded(write("copy", 8192, 100), 81));
            ops.push(Op::Unlink(name("copy")));
            ops
        },
        alloc::vec![
            Op::Clone(name("big"), name("copy")),
            write("big", 70_000, 5000),
            Op::Compact(name("big")),
            Op::Unlink(name("copy")),
            write("big", CHUNK - 100, 200),
        ],
        // The initialised file table prefix (FORMAT.md "Initialised table
        // prefix"): format initialised one block (slots 0-7) and the
        // setup holds two files, so the seventh create takes slot 8 and
        // extends the prefix (zero the block, backup, primary) before its
        // own commit; a crash at every step leaves the old or the new
        // prefix, and the file present or absent. Then a clone and an
        // unlink-and-create reuse slots on both sides of the old mark.
        alloc::vec![
            Op::Create(name("t2")),
            Op::Create(name("t3")),
            Op::Create(name("t4")),
            Op::Create(name("t5")),
            Op::Create(name("t6")),
            Op::Create(name("t7")),
            Op::Create(name("t8")),
            seeded(write("t8", 0, 5000), 31),
            Op::Clone(name("small"), name("t9")),
            Op::Unlink(name("t3")),
            Op::Unlink(name("t8")),
            Op::Create(name("t8")),
            Op::Create(name("t10")),
        ],
    ]
}

/// `big` cloned to `copy`, then `count` writes of `len` bytes into `copy`,
/// 64 KiB apart (each into its own still-shared block: each splits an
/// extent), at `at` bytes into each block, with seeds from `seed` on.
fn clone_then_scatter(count: u64, at: u64, len: u64, seed: u8) -> Vec<Op> {
    let mut ops = alloc::vec![Op::Clone(name("big"), name("copy"))];
    for i in 0..count {
        ops.push(Op::Write {
            name: name("copy"),
            offset: i * 65_536 + at,
            len,
            seed: seed + i as u8,
        });
    }
    ops
}

/// `op` with its data pattern `seed` (scenario writes differ from each
/// other and from the setup's).
fn seeded(mut op: Op, with: u8) -> Op {
    if let Op::Write { seed, .. } = &mut op {
        *seed = with;
    }
    op
}

/// The sequence of templates `indices`, with a distinct data pattern per
/// write.
pub fn instantiate(templates: &[Op], indices: &[usize]) -> Vec<Op> {
    indices
        .iter()
        .enumerate()
        .map(|(position, &i)| {
            let mut op = templates[i].clone();
            if let Op::Write { seed, .. } = &mut op {
                *seed = 1 + position as u8;
            }
            op
        })
        .collect()
}

/// Sequences of template indices in the order the check tries them: all
/// of length 1 and 2, then all of length 3 in a seeded order with a seeded
/// random sequence of length 4 to 8 after every three, then random ones
/// without end.
pub struct Sequences {
    n: usize,
    fixed: Vec<Vec<usize>>,
    next_fixed: usize,
    next: usize,
    rng: Rng,
}

impl Sequences {
    /// Sequences over `n` templates, shuffled by `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut fixed: Vec<Vec<usize>> = (0..n).map(|a| alloc::vec![a]).collect();
        for a in 0..n {
            for b in 0..n {
                fixed.push(alloc::vec![a, b]);
            }
        }
        let mut triples = Vec::with_capacity(n * n * n);
        for a in 0..n {
            for b in 0..n {
                for c in 0..n {
                    triples.push(alloc::vec![a, b, c]);
                }
            }
        }
        // Fisher-Yates, so that a time-bounded run samples all kinds.
        for i in (1..triples.len()).rev() {
            let j = rng.index(i + 1);
            triples.swap(i, j);
        }
        fixed.extend(triples);
        Self {
            n,
            fixed,
            next_fixed: 0,
            next: 0,
            rng,
        }
    }

    /// Number of sequences of length 1 to 3.
    pub fn exhaustive_len(&self) -> usize {
        self.fixed.len()
    }
}

impl Iterator for Sequences {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let pairs_end = self.n + self.n * self.n;
        // After every single operation and every pair, one in four
        // workloads is a random longer sequence, so that a time-bounded
        // run also reaches states only long sequences build; the triples
        // still all come, in between.
        let random_turn = self.next >= pairs_end && (self.next - pairs_end) % 4 == 3;
        let item = match self.fixed.get(self.next_fixed) {
            Some(seq) if !random_turn => {
                self.next_fixed += 1;
                seq.clone()
            }
            _ => {
                let len = 4 + self.rng.index(5);
                (0..len).map(|_| self.rng.index(self.n)).collect()
            }
        };
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_go_shortest_first_and_cover_everything() {
        let seqs: Vec<Vec<usize>> = Sequences::new(3, 1).take(3 + 9 + 36 + 5).collect();
        assert!(seqs[..3].iter().all(|s| s.len() == 1));
        assert!(seqs[3..12].iter().all(|s| s.len() == 2));
        let rest = &seqs[12..];
        let long = rest.iter().filter(|s| s.len() >= 4).count();
        let mut triples: Vec<Vec<usize>> = rest.iter().filter(|s| s.len() == 3).cloned().collect();
        assert_eq!(triples.len(), 27, "every triple");
        triples.sort();
        triples.dedup();
        assert_eq!(triples.len(), 27, "no triple twice");
        assert!(long >= 9, "{long} long sequences");
        assert!(rest.iter().all(|s| (3..=8).contains(&s.len())));
    }

    #[test]
    fn writes_get_distinct_patterns() {
        let t = templates();
        let ops = instantiate(&t, &[1, 1]);
        assert_ne!(ops[0], ops[1]);
        assert!(setup()
            .iter()
            .any(|op| matches!(op, Op::Write { len, .. } if *len == BIG_SIZE)));
    }
}
