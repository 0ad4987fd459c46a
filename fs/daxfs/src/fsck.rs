//! The fsck entry points: `Filesystem::fsck_image` checks an unmounted
//! image read-only, `Filesystem::fsck` checks a mounted filesystem's
//! in-memory state against media. Both report every broken invariant as
//! a sentence; the media scan itself is in `check.rs`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use daxbox_budget::Budget;

use crate::check::{self, Scan, ScanError};
use crate::extmap::ExtentMap;
use crate::format::{Superblock, STATE_CLEAN, STATE_DIRTY, STATE_WORD_OFFSET};
use crate::superblocks::read_superblock;
use crate::{block_offset, Filesystem, FsckReport, PersistentMemory, UNBOUNDED};

/// Scans the table for fsck, charging `budget` for as long as the check
/// runs; a refusal or a read error is reported as a problem.
fn scan_for_fsck<M: PersistentMemory>(
    mem: &M,
    sb: &Superblock,
    budget: &Budget,
    problems: &mut Vec<String>,
) -> Option<(Scan, crate::space::RunCounts)> {
    let mut charge = budget.empty();
    let scan = match check::scan(mem, sb, &[], &mut charge, problems) {
        Ok(s) => s,
        Err(ScanError::Io(e)) => {
            problems.push(format!("reading the file table: {e}"));
            return None;
        }
        Err(ScanError::Memory(e)) => {
            problems.push(format!("check stopped, not enough memory: {e}"));
            return None;
        }
    };
    if let Err(e) = charge.grow(check::media_refs_cost(&scan)) {
        problems.push(format!("check stopped, not enough memory: {e}"));
        return None;
    }
    match check::media_refs(&scan, problems) {
        Some(refs) => Some((scan, refs)),
        None => {
            problems.push(String::from(
                "check stopped, not enough memory for the reference counts",
            ));
            None
        }
    }
}

impl<M: PersistentMemory> Filesystem<M> {
    /// Checks an unmounted image without changing it: superblocks, journal,
    /// every record, chain and extent, and block ownership.
    pub fn fsck_image(mem: &M) -> FsckReport {
        Self::fsck_image_with_budget(mem, &UNBOUNDED)
    }

    /// [`Self::fsck_image`], charging what the check holds to `budget`
    /// while it runs; a check the budget cannot hold stops with a problem
    /// saying so.
    pub fn fsck_image_with_budget(mem: &M, budget: &Budget) -> FsckReport {
        let mut problems = Vec::new();
        let mut orphans = 0;
        if let Some(sb) = Self::check_media_header(mem, &mut problems) {
            if let Some((scan, _)) = scan_for_fsck(mem, &sb, budget, &mut problems) {
                orphans = scan.orphans;
            }
        }
        FsckReport { problems, orphans }
    }

    fn check_media_header(mem: &M, problems: &mut Vec<String>) -> Option<Superblock> {
        let sb = match read_superblock(mem) {
            Ok((sb, primary, backup)) => {
                if !primary {
                    problems.push(String::from("primary superblock (block 0) is invalid"));
                }
                if !backup {
                    problems.push(String::from("backup superblock (block 1) is invalid"));
                }
                sb
            }
            Err(e) => {
                problems.push(format!("superblock: {e}"));
                return None;
            }
        };
        match mem.load_u64(STATE_WORD_OFFSET) {
            Ok(STATE_CLEAN) | Ok(STATE_DIRTY) => {}
            Ok(w) => problems.push(format!("state word {w:#x} is neither clean nor dirty")),
            Err(e) => problems.push(format!("state word: {e}")),
        }
        match mem.load_u64(block_offset(sb.journal_start)) {
            Ok(0) => {}
            Ok(seq) => problems.push(format!(
                "journal transaction {seq} is committed but not applied (mount replays it)"
            )),
            Err(e) => problems.push(format!("journal: {e}")),
        }
        Some(sb)
    }

    /// Checks every invariant of the mounted filesystem against media:
    /// records and chains decode, every block is owned by exactly its
    /// references, the in-memory counts and free space agree with media,
    /// sizes cover extents. Each problem is reported.
    pub fn fsck(&self) -> FsckReport {
        let mut problems = Vec::new();
        let Some(sb) = Self::check_media_header(&self.mem, &mut problems) else {
            return FsckReport {
                problems,
                orphans: 0,
            };
        };
        if sb != self.sb {
            problems.push(String::from(
                "superblock on media differs from the mounted one",
            ));
        }
        let Some((scan, mut media_refs)) =
            scan_for_fsck(&self.mem, &sb, self.budget, &mut problems)
        else {
            return FsckReport {
                problems,
                orphans: 0,
            };
        };
        // Files in memory versus on media.
        for sf in &scan.files {
            let slot = sf.slot;
            match self.files.get(&slot) {
                None => problems.push(format!(
                    "record {slot} ({:?}) is live on media only",
                    sf.record.name
                )),
                Some(f) => {
                    if f.orphan != sf.record.orphan {
                        problems.push(format!(
                            "record {slot}: orphan {} on media, {} in memory",
                            sf.record.orphan, f.orphan
                        ));
                    }
                    if f.orphan && f.opens == 0 {
                        problems.push(format!(
                            "orphan record {slot} has no holder left but was not freed"
                        ));
                    }
                    if f.name != sf.record.name || f.generation != sf.record.generation {
                        problems.push(format!(
                            "record {slot}: name or generation differs from memory"
                        ));
                    }
                    // A deferred size (FORMAT.md "Deferred size commits")
                    // leaves the record below the in-memory size, never
                    // above it.
                    if f.durable != sf.record.size || f.durable > f.size {
                        problems.push(format!(
                            "file {:?}: size {} in memory (durable {}), {} on media",
                            f.name, f.size, f.durable, sf.record.size
                        ));
                    }
                    // Deferred copy-on-write runs (FORMAT.md "Deferred
                    // copy-on-write commits") are mapped in memory only.
                    let mut expected = ExtentMap::from_extents(&sf.extents);
                    for r in &f.pending.runs {
                        expected.replace(r.logical, r.len, r.physical);
                    }
                    if f.map != expected {
                        problems.push(format!("file {:?}: extent map differs from media", f.name));
                    }
                    if f.chain != sf.chain {
                        problems.push(format!(
                            "file {:?}: overflow chain differs from media",
                            f.name
                        ));
                    }
                }
            }
        }
        let media_orphans: alloc::collections::BTreeSet<u32> = scan
            .files
            .iter()
            .filter(|sf| sf.record.orphan)
            .map(|sf| sf.slot)
            .collect();
        for (slot, f) in &self.files {
            if f.orphan {
                if !media_orphans.contains(slot) {
                    problems.push(format!("orphan record {slot} is missing on media"));
                }
            } else if scan.names.get(&f.name) != Some(slot) {
                problems.push(format!(
                    "file {:?} (record {slot}) is missing on media",
                    f.name
                ));
            }
        }
        // A deferred copy-on-write run references its fresh blocks in
        // memory only; the blocks it replaced keep the reference the record
        // on media gives them.
        for f in self.files.values() {
            for r in &f.pending.runs {
                media_refs.increment(r.physical, r.len);
            }
        }
        check::compare_counts("reference counts", &self.refs, &media_refs, &mut problems);
        // Free space: free blocks are unreferenced and unpinned; every data
        // block is free, referenced or pinned.
        let mut free_total = 0;
        for (s, l) in self.alloc.free_runs() {
            free_total += l;
            if s < sb.data_start || s + l > sb.total_blocks {
                problems.push(format!(
                    "free run {s}..{} lies outside the data area",
                    s + l
                ));
            }
            for (bs, bl, c) in media_refs.segments(s, l) {
                if c > 0 {
                    problems.push(format!(
                        "blocks {bs}..{} are free but referenced by a file",
                        bs + bl
                    ));
                }
            }
            for (bs, bl, c) in self.pins.segments(s, l) {
                if c > 0 {
                    problems.push(format!("blocks {bs}..{} are free but held", bs + bl));
                }
            }
        }
        if free_total != self.alloc.free_blocks() {
            problems.push(String::from(
                "allocator free-block counter disagrees with its free runs",
            ));
        }
        let mut used = 0;
        for (_, l, _) in media_refs.iter() {
            used += l;
        }
        for (s, l, _) in self.pins.iter() {
            for (_, rl, c) in media_refs.segments(s, l) {
                if c == 0 {
                    used += rl;
                }
            }
        }
        let data_blocks = sb.total_blocks - sb.data_start;
        if used + free_total != data_blocks {
            problems.push(format!(
                "{} data blocks, but {used} are in use and {free_total} free: blocks leaked or double-counted",
                data_blocks
            ));
        }
        FsckReport {
            problems,
            orphans: scan.orphans,
        }
    }
}
