//! Idle-time compaction (issue 17, daxfs FORMAT.md "Compaction"): when
//! the event loop (the kernel's, or `daxbox-serve`'s on the host) has
//! nothing else to do it calls
//! [`Storage::compact_idle`], which walks every file of every mounted
//! filesystem, a bounded slice per call, and gathers the 2 MiB chunks that
//! a clone has mostly rewritten (or that are fragmented) back into whole
//! private 2 MiB-aligned chunks, so that they are huge-page mappable
//! again without anyone typing `compact NAME`.
//!
//! Bounds (one call, i.e. one idle pass of the event loop): at most
//! [`IDLE_EXAMINE_CHUNKS`] chunks looked at (each a count of its blocks
//! against the reference counts, no media access) and at most **one**
//! chunk gathered: one 2 MiB copy (512 blocks) and one journal commit.
//! Both loops call it only once they have served nothing for
//! [`IDLE_BEFORE_COMPACTION_US`] (100 ms; so never in
//! a pass that served a client's write, and a client at queue depth 1
//! never waits behind a scan between its requests), one step per pass
//! while [`Storage::compaction_pending`]; a request that arrives during
//! a step waits for at most that step.
//!
//! A chunk is gathered when it is not huge-page mappable and at least
//! [`IDLE_MIN_PRIVATE_BLOCKS`] of its blocks are private: a clone's chunk
//! with a few rewritten blocks stays shared (gathering it would un-share
//! 2 MiB for a few KiB), one a quarter rewritten is worth a huge page.
//! (A write that makes half of a chunk private gathers it at once, daxfs
//! `COMPACT_THRESHOLD_BLOCKS`.)
//!
//! When a whole cycle over every file gathers nothing, the pass goes
//! quiet: it does nothing (and says so, so the event loop can halt) until
//! the free-block count or the file count of some filesystem changes,
//! which every write that allocates and every gather does.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use daxbox_persist::PersistentMemory;

use crate::{Role, Storage};

/// How long an event loop must have served nothing before it calls
/// [`Storage::compact_idle`], so that a client's stream of requests (even
/// at queue depth 1) never waits behind a compaction step.
pub const IDLE_BEFORE_COMPACTION_US: u64 = 100_000;

/// Chunks one idle pass looks at, at most.
pub const IDLE_EXAMINE_CHUNKS: u64 = 16;

/// Private blocks (of 512) a chunk needs before an idle pass gathers it.
pub const IDLE_MIN_PRIVATE_BLOCKS: u64 = 128;

/// Files one idle pass moves across, at most (each a name lookup).
const IDLE_FILES_PER_PASS: usize = 16;

/// Where the idle pass is, and what it did (the `compact:` line of `stat`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdleCompaction {
    /// Volume index of the cursor.
    volume: usize,
    /// The file the cursor is in and its next chunk; None: between files.
    current: Option<(String, u64)>,
    /// The last file finished on `volume` (the next comes after it).
    after: Option<String>,
    /// The cycle in progress gathered a chunk.
    gathered_in_cycle: bool,
    /// Set when a whole cycle gathered nothing: the (free blocks, files)
    /// of each filesystem then; quiet while they stay so.
    quiet: Option<Vec<(u64, u64)>>,
    /// Chunks gathered since boot.
    pub gathered: u64,
    /// Cycles over every file completed since boot.
    pub cycles: u64,
    /// The last chunk gathered: (device, file, chunk).
    pub last: Option<(String, String, u64)>,
    /// Gathers that failed (no free 2 MiB chunk, memory budget), and the
    /// last error; the pass moves on to the next file.
    pub failed: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

impl IdleCompaction {
    /// A pass at the start, nothing done (usable in a `static`).
    pub const fn new() -> Self {
        IdleCompaction {
            volume: 0,
            current: None,
            after: None,
            gathered_in_cycle: false,
            quiet: None,
            gathered: 0,
            cycles: 0,
            last: None,
            failed: 0,
            last_error: None,
        }
    }

    /// True when the last cycle found nothing to gather and nothing
    /// changed since.
    pub fn is_quiet(&self) -> bool {
        self.quiet.is_some()
    }

    /// The status line `stat` prints.
    pub fn status(&self) -> String {
        let mut s = alloc::format!(
            "idle pass gathered {} chunk(s) in {} cycle(s)",
            self.gathered,
            self.cycles
        );
        if let Some((device, file, chunk)) = &self.last {
            s += &alloc::format!(", last {device}:{file} chunk {chunk}");
        }
        if self.failed > 0 {
            s += &alloc::format!(
                ", {} failed ({})",
                self.failed,
                self.last_error.as_deref().unwrap_or("")
            );
        }
        s += if self.is_quiet() {
            "; quiet"
        } else {
            "; scanning"
        };
        s
    }
}

impl<M: PersistentMemory> Storage<M> {
    /// (free blocks, files) of every filesystem: what wakes a quiet pass.
    fn compaction_stamp(&self) -> Vec<(u64, u64)> {
        self.volumes
            .iter()
            .filter_map(|v| match &v.role {
                Role::Filesystem(fs) => {
                    let s = fs.statfs();
                    Some((s.free_blocks, s.files))
                }
                Role::Raw(_) => None,
            })
            .collect()
    }

    /// Whether [`Self::compact_idle`] has something to look at: it is not
    /// quiet, or a filesystem's free-block or file count changed since it
    /// went quiet.
    pub fn compaction_pending(&self) -> bool {
        match &self.idle.quiet {
            None => true,
            Some(stamp) => *stamp != self.compaction_stamp(),
        }
    }

    /// What the idle-time compaction did ([`crate::compaction`]).
    pub fn idle_compaction(&self) -> &IdleCompaction {
        &self.idle
    }

    /// One idle-time compaction pass ([`crate::compaction`]: at most
    /// [`IDLE_EXAMINE_CHUNKS`] chunks looked at and one chunk gathered).
    /// Call it only in an event-loop pass that served no client request.
    /// Returns true when it did something (the loop should pass again
    /// rather than halt), false when it is quiet.
    pub fn compact_idle(&mut self) -> bool {
        if let Some(stamp) = &self.idle.quiet {
            if *stamp == self.compaction_stamp() {
                return false;
            }
            self.idle.quiet = None;
        }
        let mut budget = IDLE_EXAMINE_CHUNKS;
        for _ in 0..IDLE_FILES_PER_PASS {
            if budget == 0 {
                return true;
            }
            let index = self.idle.volume;
            if index >= self.volumes.len() {
                // A cycle is over.
                self.idle.cycles += 1;
                self.idle.volume = 0;
                self.idle.after = None;
                self.idle.current = None;
                if !core::mem::take(&mut self.idle.gathered_in_cycle) {
                    self.idle.quiet = Some(self.compaction_stamp());
                    return false;
                }
                return true;
            }
            let device = self.volumes[index].device.clone();
            let Role::Filesystem(fs) = &mut self.volumes[index].role else {
                self.idle.volume += 1;
                continue;
            };
            let (name, from) = match self.idle.current.take() {
                Some(at) => at,
                None => match fs.list(self.idle.after.as_deref(), 1).pop() {
                    Some(entry) => (entry.name, 0),
                    None => {
                        self.idle.volume += 1;
                        self.idle.after = None;
                        continue;
                    }
                },
            };
            let Ok(id) = fs.lookup(&name) else {
                // Gone since: go on after its name.
                self.idle.after = Some(name);
                continue;
            };
            match fs.compact_idle_step(id, from, budget, IDLE_MIN_PRIVATE_BLOCKS) {
                Ok((next, gathered)) => {
                    // A step looks at one chunk at least.
                    budget = budget.saturating_sub(next.map_or(budget, |n| n - from).max(1));
                    if let Some(chunk) = gathered {
                        self.idle.gathered += 1;
                        self.idle.gathered_in_cycle = true;
                        self.idle.last = Some((device, name.clone(), chunk));
                    }
                    match next {
                        Some(n) => self.idle.current = Some((name, n)),
                        None => self.idle.after = Some(name),
                    }
                    if gathered.is_some() {
                        return true;
                    }
                }
                Err(e) => {
                    self.idle.failed += 1;
                    self.idle.last_error = Some(e.to_string());
                    self.idle.after = Some(name);
                    return true;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::Fixture;

    /// The pass over `f`'s filesystems until it goes quiet; the calls.
    fn until_quiet(f: &mut Fixture) -> usize {
        let mut calls = 0;
        while f.storage.compact_idle() {
            calls += 1;
            assert!(calls < 1000, "the idle pass never goes quiet");
        }
        calls
    }

    fn fill(f: &mut Fixture, name: &str, blocks: std::ops::Range<u64>, byte: u8) {
        let id = f.storage.lookup(name).unwrap();
        let fs = f.storage.filesystem(id.volume).unwrap();
        for b in blocks {
            fs.write(id.file, b * 4096, &[byte; 4096]).unwrap();
        }
    }

    #[test]
    fn gathers_a_mostly_rewritten_chunk_of_a_clone_and_goes_quiet() {
        let mut f = Fixture::standard();
        f.ok("create big 6M");
        // Map all three chunks (2 MiB writes allocate whole chunks).
        fill(&mut f, "big", 0..1536, b'A');
        f.ok("clone big twin");
        until_quiet(&mut f);
        assert!(f.storage.idle_compaction().is_quiet());
        assert_eq!(f.storage.idle_compaction().gathered, 0, "nothing to do yet");
        // Chunk 1: 200 of 512 blocks rewritten (below the write-time
        // threshold of 256, above the idle pass's 128); chunk 2: 10.
        fill(&mut f, "twin", 512..712, b'B');
        fill(&mut f, "twin", 1024..1034, b'C');
        let stat = f.ok("stat twin");
        assert!(stat.contains("(33% of the size mappable"), "{stat}");
        until_quiet(&mut f);
        let idle = f.storage.idle_compaction().clone();
        assert_eq!(idle.gathered, 1, "{idle:?}");
        assert_eq!(
            idle.last,
            Some(("pmem0".to_string(), "twin".to_string(), 1))
        );
        let stat = f.ok("stat twin");
        assert!(stat.contains("(66% of the size mappable"), "{stat}");
        assert!(
            stat.contains("compact:    idle pass gathered 1 chunk(s) in ")
                && stat.contains("last pmem0:twin chunk 1; quiet"),
            "{stat}"
        );
        // Contents unchanged by the gather; the original untouched.
        assert_eq!(f.ok("cat twin 2097152 1"), "B\n");
        assert_eq!(f.ok("cat twin 4194304 1"), "C\n");
        assert_eq!(f.ok("cat big 2097152 1"), "A\n");
        assert!(
            f.ok("fsck pmem0").contains("clean"),
            "{}",
            f.ok("fsck pmem0")
        );
        // Quiet: a pass does nothing until something changes.
        assert!(!f.storage.compact_idle());
    }
}
