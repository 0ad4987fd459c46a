//! Probe, format (mkfs), mount with journal recovery, and unmount
//! (FORMAT.md "Format" and "Mount and recovery"). Mount validates first
//! and writes after: it reads both superblock copies and the committed
//! journal transaction (kept in memory as an overlay of at most
//! `JOURNAL_MAX_ENTRIES` records), scans the file table as it will be after
//! replay (`check::scan`), and rebuilds the in-memory state (file maps,
//! name index, block reference counts, free-space allocator), charging
//! every byte to the mount budget. Only when all of that succeeded does it
//! replay the journal, repair a damaged superblock copy and set the state
//! word: a refused image is never written.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use daxbox_budget::{Budget, OverBudget};

use crate::check::{self, ScanError};
use crate::extmap::ExtentMap;
use crate::format::{
    self, JournalHeader, Record, Superblock, BLOCK_SIZE, FORMAT_VERSION, JOURNAL_BLOCKS,
    JOURNAL_ENTRIES_OFFSET, JOURNAL_ENTRY_SIZE, JOURNAL_HEADER_OFFSET, JOURNAL_HEADER_SIZE,
    ORPHAN_VERSION, RECORDS_PER_BLOCK, RECORD_SIZE, STATE_CLEAN, STATE_DIRTY, STATE_WORD_OFFSET,
    TABLE_BATCH_BLOCKS,
};
use crate::space::{Allocator, RunCounts};
use crate::superblocks::read_superblock;
use crate::{
    block_offset, file_cost, Error, File, Filesystem, FormatOptions, PersistentMemory, Probe,
    UNBOUNDED, ZEROS,
};

/// The committed journal transaction, validated, not yet replayed.
pub(crate) struct Journal {
    /// Last sequence number seen.
    pub sequence: u64,
    /// The records to replay (slot, bytes), empty when nothing is committed.
    pub replay: Vec<(u32, [u8; RECORD_SIZE])>,
    /// The commit word is set: mount clears it once the records (possibly
    /// none: a transaction may have no entries) are replayed.
    pub committed: bool,
}

/// A budget refusal during mount, as the mount's error. `others` is what
/// the budget's other users held when the mount started: everything
/// beyond it at the refusal, plus the refused request, is this mount's.
fn too_large(e: OverBudget, others: usize, budget: &Budget) -> Error {
    Error::MountTooLarge {
        needed: e.used.saturating_sub(others).saturating_add(e.requested),
        budget: budget.name(),
        limit: budget.stats().limit,
        used_elsewhere: others,
    }
}

/// Reads and validates the journal (FORMAT.md "Journal") without writing.
pub(crate) fn read_journal<M: PersistentMemory>(
    mem: &M,
    sb: &Superblock,
) -> Result<Journal, Error> {
    let jo = block_offset(sb.journal_start);
    let commit = mem.load_u64(jo)?;
    let mut hb = [0u8; JOURNAL_HEADER_SIZE];
    mem.read(jo + JOURNAL_HEADER_OFFSET, &mut hb)?;
    let header = JournalHeader::decode(&hb);
    if commit == 0 {
        return Ok(Journal {
            sequence: header.map_or(0, |h| h.sequence),
            replay: Vec::new(),
            committed: false,
        });
    }
    let header =
        header.map_err(|e| Error::Corrupt(format!("journal committed but header invalid: {e}")))?;
    if header.sequence != commit {
        return Err(Error::Corrupt(String::from(
            "journal commit word does not match the journal header",
        )));
    }
    // entries <= JOURNAL_MAX_ENTRIES (checked by decode): under 4 KiB.
    let mut body = alloc::vec![0u8; header.entries as usize * JOURNAL_ENTRY_SIZE];
    mem.read(jo + JOURNAL_ENTRIES_OFFSET, &mut body)?;
    if format::journal_checksum(&header, &body) != header.crc {
        return Err(Error::Corrupt(String::from(
            "journal committed but its checksum does not match",
        )));
    }
    let mut replay = Vec::with_capacity(header.entries as usize);
    for entry in body.chunks_exact(JOURNAL_ENTRY_SIZE) {
        let (slot, record) = format::decode_journal_entry(entry);
        if slot >= sb.max_files {
            return Err(Error::Corrupt(format!(
                "journal entry for slot {slot} is outside the table"
            )));
        }
        // A slot is used only after the prefix covering it is durable
        // (FORMAT.md "Initialised table prefix").
        if slot >= sb.init_slots() {
            return Err(Error::Corrupt(format!(
                "journal entry for slot {slot} is beyond the initialised file table"
            )));
        }
        Record::decode(record)
            .map_err(|e| Error::Corrupt(format!("journal entry for slot {slot}: {e}")))?;
        let mut bytes = [0u8; RECORD_SIZE];
        bytes.copy_from_slice(record);
        replay.push((slot, bytes));
    }
    Ok(Journal {
        sequence: header.sequence,
        replay,
        committed: true,
    })
}

impl<M: PersistentMemory> Filesystem<M> {
    /// Looks at the superblock area without changing anything.
    pub fn probe(mem: &M) -> Probe {
        match read_superblock(mem) {
            Ok((sb, _, _)) => {
                let clean = mem
                    .load_u64(STATE_WORD_OFFSET)
                    .is_ok_and(|w| w == STATE_CLEAN);
                Probe::Daxfs {
                    version: sb.version,
                    clean,
                }
            }
            Err(Error::Blank) => Probe::Blank,
            Err(Error::Foreign) => Probe::Foreign,
            Err(Error::UnsupportedVersion { found, .. }) => Probe::Daxfs {
                version: found,
                clean: mem
                    .load_u64(STATE_WORD_OFFSET)
                    .is_ok_and(|w| w == STATE_CLEAN),
            },
            Err(e) => Probe::Corrupt(e),
        }
    }

    /// Writes a new, empty filesystem over the whole region (mkfs) and
    /// returns it mounted. FORMAT.md "Format".
    pub fn format(mem: M, opts: FormatOptions) -> Result<Self, Error> {
        Self::format_with_budget(mem, opts, &UNBOUNDED)
    }

    /// [`Self::format`], mounting the new filesystem with
    /// [`Self::mount_with_budget`].
    pub fn format_with_budget(
        mem: M,
        opts: FormatOptions,
        budget: &'static Budget,
    ) -> Result<Self, Error> {
        Self::format_with_table_prefix(mem, opts, TABLE_BATCH_BLOCKS, budget)
    }

    /// [`Self::format_with_budget`] initialising only the first
    /// `init_blocks` blocks of the file table (at least 1, at most the
    /// table): FORMAT.md "Initialised table prefix". Format uses
    /// [`TABLE_BATCH_BLOCKS`]; tests and the crash explorer use a small
    /// prefix to cross it with few files.
    pub fn format_with_table_prefix(
        mut mem: M,
        opts: FormatOptions,
        init_blocks: u64,
        budget: &'static Budget,
    ) -> Result<Self, Error> {
        let total_blocks = mem.len() / BLOCK_SIZE;
        let default_files = (mem.len() / (64 * 1024)).clamp(64, 1 << 20) as u32;
        let max_files = opts.max_files.unwrap_or(default_files).max(1);
        let table_start = 2 + JOURNAL_BLOCKS;
        let table_blocks = (max_files as u64).div_ceil(RECORDS_PER_BLOCK);
        let data_start = table_start + table_blocks;
        if data_start + 1 > total_blocks {
            return Err(Error::TooSmall);
        }
        let sb = Superblock {
            version: FORMAT_VERSION,
            uuid: opts.uuid,
            total_blocks,
            journal_start: 2,
            journal_blocks: JOURNAL_BLOCKS,
            table_start,
            table_blocks,
            max_files,
            data_start,
            table_init_blocks: init_blocks.clamp(1, table_blocks),
        };
        sb.check_geometry()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        // The journal and the initialised table prefix first (the rest of
        // the table is never read), then the backup, then the primary:
        // until the primary is durable the region is not a valid
        // filesystem, except through a backup that already describes
        // zeroed metadata.
        let meta_start = block_offset(2);
        let meta_len = block_offset(table_start + sb.table_init_blocks) - meta_start;
        let mut done = 0;
        while done < meta_len {
            let n = (meta_len - done).min(ZEROS.len() as u64);
            mem.write_nt(meta_start + done, &ZEROS[..n as usize])?;
            done += n;
        }
        mem.fence();
        let bytes = sb.encode();
        mem.write(block_offset(1), &ZEROS[..BLOCK_SIZE as usize])?;
        mem.write_flush(block_offset(1), &bytes)?;
        mem.flush(block_offset(1), BLOCK_SIZE)?;
        mem.fence();
        mem.write(0, &ZEROS[..BLOCK_SIZE as usize])?;
        mem.store_u64(STATE_WORD_OFFSET, STATE_DIRTY)?;
        mem.write(0, &bytes)?;
        mem.flush(0, BLOCK_SIZE)?;
        mem.fence();
        Self::mount_with_budget(mem, budget)
    }

    /// Validates and mounts an image, replaying a committed journal
    /// transaction left by a crash, with no memory limit. FORMAT.md "Mount
    /// and recovery".
    pub fn mount(mem: M) -> Result<Self, Error> {
        Self::mount_with_budget(mem, &UNBOUNDED)
    }

    /// Validates and mounts an image, charging the in-memory state to
    /// `budget`: an image whose files and extents would take more than the
    /// budget has left is refused ([`Error::MountTooLarge`]) before
    /// anything is written, and later operations that would grow the state
    /// past it fail with [`Error::OutOfMemory`]. Everything is validated
    /// before the first write (FORMAT.md "Mount and recovery").
    pub fn mount_with_budget(mem: M, budget: &'static Budget) -> Result<Self, Error> {
        Self::mount_keeping(mem, budget, &[])
    }

    /// [`Self::mount_with_budget`] that gives the files of `holds` (from
    /// [`Self::holders`] before an unmount, e.g. around a grow) their
    /// holder counts back, so that their orphans survive the mount. Every
    /// other orphan is reclaimed (FORMAT.md "Orphans"). A hold whose file
    /// is gone is ignored.
    pub fn mount_keeping(
        mut mem: M,
        budget: &'static Budget,
        holds: &[(crate::FileId, u32)],
    ) -> Result<Self, Error> {
        let (mut sb, primary_ok, backup_ok) = read_superblock(&mem)?;
        let journal = read_journal(&mem, &sb)?;
        let others = budget.stats().used;
        let mut charge = budget.empty();
        let mut problems = Vec::new();
        let scan = match check::scan(&mem, &sb, &journal.replay, &mut charge, &mut problems) {
            Ok(scan) => scan,
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Memory(e)) => return Err(too_large(e, others, budget)),
        };
        if let Some(first) = problems.first() {
            return Err(Error::Corrupt(first.clone()));
        }
        let mut transient = budget.empty();
        transient
            .grow(check::media_refs_cost(&scan))
            .map_err(|e| too_large(e, others, budget))?;
        let refs = check::media_refs(&scan, &mut problems)
            .ok_or_else(|| too_large(check::heap_refused(transient.bytes()), others, budget))?;
        drop(transient);
        if let Some(first) = problems.into_iter().next() {
            return Err(Error::Corrupt(first));
        }
        // The allocator, at most one entry per free chunk.
        charge
            .grow(Allocator::memory_bound(sb.data_start, sb.total_blocks))
            .map_err(|e| too_large(e, others, budget))?;
        let mut alloc = Allocator::try_new(sb.data_start, sb.total_blocks).ok_or_else(|| {
            too_large(
                check::heap_refused(Allocator::memory_bound(sb.data_start, sb.total_blocks)),
                others,
                budget,
            )
        })?;
        // Files: each is charged as it is built, and its scan copy given
        // back when dropped.
        let mut files = BTreeMap::new();
        let mut files_cost = 0;
        let names = scan.names;
        for f in scan.files {
            let scanned = check::scanned_charge(&f);
            let list = crate::cow::Layered::of_record(&f.record);
            let file = File {
                generation: f.record.generation,
                name: f.record.name,
                size: f.record.size,
                durable: f.record.size,
                map: ExtentMap::from_extents(&f.extents),
                chain: f.chain,
                list,
                opens: 0,
                orphan: f.record.orphan,
                cow: Default::default(),
                pending: Default::default(),
            };
            let cost = file_cost(&file);
            charge
                .grow(cost)
                .map_err(|e| too_large(e, others, budget))?;
            files_cost += cost;
            files.insert(f.slot, file);
            charge.shrink(scanned);
        }
        let mut cursor = sb.data_start;
        for (s, l, _) in refs.iter() {
            if s > cursor {
                alloc.free(cursor, s - cursor);
            }
            cursor = s + l;
        }
        if cursor < sb.total_blocks {
            alloc.free(cursor, sb.total_blocks - cursor);
        }
        // The image is daxfs and consistent, and the state fits: only now
        // write. Replay the journal (FORMAT.md "Journal")...
        let jo = block_offset(sb.journal_start);
        if journal.committed {
            for (slot, record) in &journal.replay {
                let at = block_offset(sb.table_start) + *slot as u64 * RECORD_SIZE as u64;
                mem.write_flush(at, record)?;
            }
            mem.fence();
            mem.store_u64(jo, 0)?;
            mem.flush(jo, 8)?;
            mem.fence();
        }
        // ...settle a grow cut before its commit point (FORMAT.md "Grow")...
        if primary_ok && backup_ok {
            crate::superblocks::settle_backup(&mut mem, &sb)?;
        }
        // ...repair a damaged superblock copy from the good one...
        if !primary_ok || !backup_ok {
            let target = if primary_ok { 1 } else { 0 };
            mem.write_flush(block_offset(target), &sb.encode())?;
            mem.fence();
        }
        // ...upgrade a version 1 image (FORMAT.md "Compatibility rules":
        // backup, then primary, as a grow does; a crash between them
        // leaves the old primary, to which the next mount settles the
        // backup before upgrading again)...
        // (only to 2: version 3 is written when first needed, see
        // `Filesystem::need_version`)
        if sb.version < ORPHAN_VERSION {
            sb.version = ORPHAN_VERSION;
            let bytes = sb.encode();
            mem.write_flush(block_offset(1), &bytes)?;
            mem.fence();
            mem.write_flush(0, &bytes)?;
            mem.fence();
        }
        // ...and mark the filesystem mounted.
        mem.store_u64(STATE_WORD_OFFSET, STATE_DIRTY)?;
        mem.flush(STATE_WORD_OFFSET, 8)?;
        mem.fence();
        let mut fs = Filesystem {
            mem,
            sb,
            files,
            names,
            low_free: 0,
            share_epoch: 0,
            refs,
            pins: RunCounts::default(),
            alloc,
            holds: BTreeMap::new(),
            sequence: journal.sequence,
            files_cost,
            budget,
            charge,
            recovered: crate::Recovered {
                journal_replayed: journal.committed,
                superblock_repaired: !primary_ok || !backup_ok,
                orphans_reclaimed: 0,
            },
        };
        for &(id, count) in holds {
            if let Some(f) = fs.files.get_mut(&id.slot) {
                if f.generation == id.generation {
                    f.opens = count;
                }
            }
        }
        // Reclaim the orphans nobody holds, one transaction each
        // (FORMAT.md "Orphans": a crash leaves the rest for the next
        // mount).
        let orphans: Vec<u32> = fs
            .files
            .iter()
            .filter(|(_, f)| f.orphan && f.opens == 0)
            .map(|(&slot, _)| slot)
            .collect();
        for slot in orphans {
            fs.free_orphan(slot)?;
            fs.recovered.orphans_reclaimed += 1;
        }
        fs.settle();
        Ok(fs)
    }

    /// Marks the filesystem clean and gives the region back.
    pub fn unmount(mut self) -> M {
        // Deferred sizes first (FORMAT.md "Deferred size commits"). A
        // commit fails only on a store outside the region, which mount
        // ruled out for the journal and the table.
        let _ = self.persist_all();
        self.mem.fence();
        // Failure here is impossible: the state word is inside block 0,
        // which mount checked exists.
        let _ = self.mem.store_u64(STATE_WORD_OFFSET, STATE_CLEAN);
        let _ = self.mem.flush(STATE_WORD_OFFSET, 8);
        self.mem.fence();
        self.mem
    }

    /// Gives the region back without marking it clean (simulates a crash
    /// after the last completed operation).
    pub fn into_memory(self) -> M {
        self.mem
    }

    /// What this mount repaired (a journal replay, a superblock copy).
    pub fn recovered(&self) -> crate::Recovered {
        self.recovered
    }

    /// The region.
    pub fn memory(&self) -> &M {
        &self.mem
    }
}
