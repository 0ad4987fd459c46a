//! Fine-grained copy-on-write and compaction (FORMAT.md "Copy-on-write of
//! shared blocks", "Compaction"). A write into blocks a file shares with a
//! clone copies only the 4 KiB blocks it touches (`write.rs` `modify`
//! asks [`Filesystem::chunk_wants_whole`] whether to move a whole chunk
//! instead); `compact` gathers a file's diverged logical chunks, one
//! bounded step (one chunk, one commit) at a time, into fresh private
//! 2 MiB-aligned chunks.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::extmap::ExtentMap;
use crate::format::{
    Extent, OverflowBlock, Record, RecordView, BLOCK_SIZE, CHUNK_BLOCKS, EXTENT_SIZE,
    INLINE_EXTENTS, LAYERED_VERSION, OVERFLOW_EXTENTS, RECORD_SIZE,
};
use crate::{block_offset, Error, File, FileId, Filesystem, PersistentMemory, RUN_GROWTH};

/// Hidden entries a layered list may carry beyond its effective extents
/// before a prepend normalises it (FORMAT.md "Layered extent lists": the
/// list stays at most twice the effective map plus this many entries).
const LAYER_SLACK: u64 = 2 * OVERFLOW_EXTENTS as u64;

/// A file's layered on-media extent list (FORMAT.md "Layered extent
/// lists"), beyond its chain (kept in `File::chain`): the inline entries
/// as on media, and the length of the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layered {
    /// The record's inline entries, first (highest precedence) first.
    pub inline: Vec<Extent>,
    /// Entries in the whole list (the record's extent count).
    pub entries: u64,
    /// The chain's first block as this filesystem wrote it (its block
    /// number and contents), so that spilling the inline entries into a
    /// copy of it (once per 12 prepends) neither reads nor re-checks it
    /// (issue 17). Used only while that block is still the chain's first
    /// (chain blocks are never written in place, and a block the chain
    /// references is never reused); None after mount until the first
    /// spill. At most one block of 254 entries, charged in `cost`.
    pub head: Option<(u64, OverflowBlock)>,
}

impl Layered {
    /// The layered list a record holds, None for a plain one.
    pub(crate) fn of_record(r: &Record) -> Option<Self> {
        r.layered.then(|| Layered {
            inline: r.inline.clone(),
            entries: r.extent_count as u64,
            head: None,
        })
    }

    /// Memory beyond `File` itself (charged in `file_cost`).
    pub(crate) fn cost(&self) -> usize {
        let head = self
            .head
            .as_ref()
            .map_or(0, |(_, b)| b.extents.capacity() * EXTENT_SIZE);
        self.inline.capacity() * EXTENT_SIZE + head
    }

    /// The encoded record of `file` (whose list this is) at `size`,
    /// without copying its name or inline entries.
    pub(crate) fn encode_record(&self, file: &File, size: u64) -> [u8; RECORD_SIZE] {
        RecordView {
            in_use: true,
            orphan: file.orphan,
            generation: file.generation,
            name: &file.name,
            size,
            // Bounded by 2 * extents + LAYER_SLACK, far below 2^32.
            extent_count: self.entries as u32,
            overflow_count: file.chain.len() as u32,
            overflow_first: file.chain.first().copied().unwrap_or(0),
            inline: &self.inline,
            layered: true,
        }
        .encode()
    }

    /// The record of `file` (whose list this is) at `size`.
    pub(crate) fn record(&self, file: &File, size: u64) -> Record {
        Record {
            in_use: true,
            orphan: file.orphan,
            generation: file.generation,
            name: file.name.clone(),
            size,
            // Bounded by 2 * extents + LAYER_SLACK, far below 2^32.
            extent_count: self.entries as u32,
            overflow_count: file.chain.len() as u32,
            overflow_first: file.chain.first().copied().unwrap_or(0),
            inline: self.inline.clone(),
            layered: true,
        }
    }
}

/// Private blocks in a logical 2 MiB chunk that still shares blocks with a
/// clone at which a copy-on-write gathers the whole chunk into one fresh
/// private 2 MiB-aligned chunk (FORMAT.md "Compaction"): half the chunk.
/// Below it a write copies only the blocks it touches; at it, the 2 MiB
/// copy is paid once for at least 256 small copies already made, so it
/// at most doubles the copying a chunk sees while bringing back a huge
/// page for it.
pub const COMPACT_THRESHOLD_BLOCKS: u64 = CHUNK_BLOCKS / 2;

/// How a file maps one logical chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChunkState {
    /// Mapped blocks.
    pub mapped: u64,
    /// Mapped blocks no other file shares and no hold pins.
    pub private: u64,
    /// True when the chunk is one extent of 512 blocks at a 2 MiB-aligned
    /// physical block: huge-page mappable.
    pub huge: bool,
}

/// Chunk states a file keeps in its [`ChunkCache`] at most; a fuller
/// cache is emptied before the next entry goes in (each entry is one
/// B-tree entry, charged in `file_cost`).
pub(crate) const CHUNK_CACHE_MAX: usize = 1024;

/// A file's remembered [`ChunkState`]s (mapped and private blocks) of the
/// logical chunks its copy-on-writes touched, so that a small write into a
/// shared chunk does not recount the chunk's blocks against the reference
/// counts every time (issue 17: that recount was most of the cost of a
/// 4 KiB write into a clone). In memory only, never on media.
///
/// Valid while `epoch` equals the filesystem's `share_epoch`, which moves
/// on every change that can alter which of a file's blocks are private
/// other than the file's own writes: a reference dropped that leaves a
/// block still referenced (another file may now own it alone), a clone
/// (blocks become shared), a hold or its release (pins), and a change of
/// a file's map outside `modify` (unmap, compaction, append). `modify`
/// itself updates the entries of the chunks it changes (fresh blocks are
/// private; a copy-on-write replaces only blocks that were not) and then
/// takes the new epoch: a file never shares blocks with itself (clones
/// and ranges are always copied into a new file), so the references its
/// own write drops can only change other files' private counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkCache {
    /// The `share_epoch` the entries were computed at.
    pub epoch: u64,
    /// Logical chunk -> (mapped blocks, private blocks).
    pub chunks: BTreeMap<u64, (u32, u32)>,
    /// The run an appending stream of writes is filling, once checked to
    /// be mapped by the file alone (issue 17; `write.rs`
    /// `write_in_place`).
    pub run: Option<PrivateRun>,
}

/// Logical blocks `logical..logical + len` of a file mapped to physical
/// blocks `physical..` that no other file shares and no hold pins, as
/// found when the file's map had `version` and the filesystem's
/// `share_epoch` was `epoch`: true while both are unchanged (every change
/// of the map moves its version; every change that can share or pin a
/// file's blocks moves the epoch, see [`ChunkCache`]). So the writes of
/// a stream into a preallocated chunk skip the map, reference-count and
/// pin lookups (three B-tree searches, each likely a cache miss after
/// the data copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrivateRun {
    pub logical: u64,
    pub len: u64,
    pub physical: u64,
    pub version: u64,
    pub epoch: u64,
}

impl ChunkCache {
    /// Memory beyond `File` itself (charged in `file_cost`).
    pub(crate) fn cost(&self) -> usize {
        self.chunks.len() * crate::TREE_ENTRY
    }
}

/// Copy-on-write runs a file has committed at most this many of in
/// memory only (FORMAT.md "Deferred copy-on-write commits"): one less
/// than the record's inline entries, so that the commit that carries
/// them, with one more run of its own (a compaction's gathered chunk),
/// is still a one-record prepend.
pub const DEFERRED_RUNS_MAX: usize = INLINE_EXTENTS - 1;

/// A file's copy-on-write runs whose commit is deferred (FORMAT.md
/// "Deferred copy-on-write commits"): the fresh runs are in the
/// in-memory map (reads, writes, clones and `stat` see them at once), the
/// record on media still maps the blocks they replaced. So the replaced
/// blocks keep the file's reference until the commit that carries the
/// runs: a clone still sharing them must copy before it writes, because
/// after a crash this file reads them again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The fresh runs, oldest first (at most [`DEFERRED_RUNS_MAX`]).
    pub runs: Vec<Extent>,
    /// What they replaced in the map, referenced until the commit.
    pub replaced: Vec<Extent>,
}

impl Pending {
    /// Memory beyond `File` itself (charged in `file_cost`).
    pub(crate) fn cost(&self) -> usize {
        (self.runs.capacity() + self.replaced.capacity()) * core::mem::size_of::<Extent>()
    }

    /// True when no run waits for its commit.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

impl<M: PersistentMemory> Filesystem<M> {
    /// How `map` maps logical chunk `chunk`.
    pub(crate) fn chunk_state(&self, map: &ExtentMap, chunk: u64) -> ChunkState {
        let base = chunk * CHUNK_BLOCKS;
        let mut st = ChunkState::default();
        for piece in map.pieces(base, CHUNK_BLOCKS) {
            let Some(p) = piece.physical else { continue };
            st.mapped += piece.len;
            if piece.len == CHUNK_BLOCKS && p.is_multiple_of(CHUNK_BLOCKS) {
                st.huge = true;
            }
            // Holds are rare: without any, count the shared blocks without
            // allocating (this runs for every copy-on-write).
            if self.pins.is_empty() {
                st.private += piece.len - self.refs.blocks_above(p, piece.len, 1);
                continue;
            }
            for (ps, pl, count) in self.refs.segments(p, piece.len) {
                if count > 1 {
                    continue;
                }
                for (_, ql, pins) in self.pins.segments(ps, pl) {
                    if pins == 0 {
                        st.private += ql;
                    }
                }
            }
        }
        st
    }

    /// [`Self::chunk_state`] of logical chunk `chunk` of the file in
    /// `slot` (its mapped and private block counts; `huge` is left false),
    /// from the file's [`ChunkCache`] when it holds a valid entry, else
    /// counted and remembered.
    pub(crate) fn cached_chunk_state(&mut self, slot: u32, chunk: u64) -> ChunkState {
        let epoch = self.share_epoch;
        let Some(f) = self.files.get(&slot) else {
            return ChunkState::default();
        };
        if f.cow.epoch == epoch {
            if let Some(&(mapped, private)) = f.cow.chunks.get(&chunk) {
                let st = ChunkState {
                    mapped: mapped.into(),
                    private: private.into(),
                    huge: false,
                };
                // Every test run checks the cache against a recount.
                #[cfg(debug_assertions)]
                {
                    let real = self.chunk_state(&f.map, chunk);
                    debug_assert_eq!(
                        (st.mapped, st.private),
                        (real.mapped, real.private),
                        "stale chunk cache: slot {slot} chunk {chunk}"
                    );
                }
                return st;
            }
        }
        let st = self.chunk_state(&f.map, chunk);
        let Some(f) = self.files.get_mut(&slot) else {
            return st;
        };
        if f.cow.epoch != epoch || f.cow.chunks.len() >= CHUNK_CACHE_MAX {
            f.cow.chunks.clear();
            f.cow.epoch = epoch;
        }
        // Both counts are at most CHUNK_BLOCKS (512).
        f.cow
            .chunks
            .insert(chunk, (st.mapped as u32, st.private as u32));
        st
    }

    /// Whether a write that needs the fresh blocks `needs` (logical, len,
    /// copy source) in a large file allocates logical chunk `chunk`, whose
    /// state is `st`, as one whole fresh 2 MiB chunk: when the file maps
    /// nothing there (a hole: FORMAT.md "Allocation policy"), or when the
    /// chunk still shares blocks and this write brings its private blocks
    /// to [`COMPACT_THRESHOLD_BLOCKS`] (FORMAT.md "Compaction").
    pub(crate) fn chunk_wants_whole(
        st: ChunkState,
        chunk: u64,
        needs: &[(u64, u64, Option<u64>)],
    ) -> bool {
        if st.mapped == 0 {
            return true;
        }
        if st.private == st.mapped {
            return false;
        }
        let (lo, hi) = (chunk * CHUNK_BLOCKS, (chunk + 1) * CHUNK_BLOCKS);
        let fresh: u64 = needs
            .iter()
            .map(|&(l, n, _)| (l + n).min(hi).saturating_sub(l.max(lo)))
            .sum();
        st.private + fresh >= COMPACT_THRESHOLD_BLOCKS
    }

    /// Logical chunks of `file` that [`Filesystem::compact`] would gather:
    /// mapped, not huge-page mappable, and not (only) holes.
    fn diverged_chunks(&self, slot: u32, from: u64, max: usize) -> Vec<u64> {
        let Some(f) = self.files.get(&slot) else {
            return Vec::new();
        };
        // Small files are allocated by block anyway (FORMAT.md "Allocation
        // policy"): gathering them would only spend 2 MiB each.
        if f.size <= CHUNK_BLOCKS * BLOCK_SIZE {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut chunk = from;
        let end = f.map.end().div_ceil(CHUNK_BLOCKS);
        while chunk < end && out.len() < max {
            // Skip to the next mapped extent.
            let Some(e) = f.map.iter_from(chunk * CHUNK_BLOCKS).next() else {
                break;
            };
            chunk = chunk.max(e.logical / CHUNK_BLOCKS);
            let st = self.chunk_state(&f.map, chunk);
            if st.mapped > 0 && !st.huge {
                out.push(chunk);
            }
            chunk += 1;
        }
        out
    }

    /// Makes the superblock say at least `version` before a structure of
    /// that version is first written (FORMAT.md "Compatibility rules":
    /// backup, then primary, each persisted, as a grow does).
    fn need_version(&mut self, version: u32) -> Result<(), Error> {
        if self.sb.version >= version {
            return Ok(());
        }
        let mut sb = self.sb;
        sb.version = version;
        let bytes = sb.encode();
        self.mem.fence();
        self.mem.write_flush(block_offset(1), &bytes)?;
        self.mem.fence();
        self.mem.write_flush(0, &bytes)?;
        self.mem.fence();
        self.sb = sb;
        Ok(())
    }

    /// Writes a fresh chain holding `entries` of a layered list whose
    /// inline part is empty: indexes from the last block (FORMAT.md
    /// "Layered extent lists"). Returns the chain, first block first.
    fn write_layered_chain(
        &mut self,
        slot: u32,
        generation: u32,
        entries: &[Extent],
    ) -> Result<Vec<u64>, Error> {
        let blocks = entries.len().div_ceil(OVERFLOW_EXTENTS);
        let chain = self.alloc_chain_blocks(blocks)?;
        for (i, block) in chain.iter().enumerate() {
            let start = i * OVERFLOW_EXTENTS;
            let end = (start + OVERFLOW_EXTENTS).min(entries.len());
            let ob = OverflowBlock {
                owner_slot: slot,
                owner_generation: generation,
                index: (blocks - 1 - i) as u32,
                next: chain.get(i + 1).copied().unwrap_or(0),
                extents: entries[start..end].to_vec(),
            };
            if let Err(e) = self.mem.write_flush(block_offset(*block), &ob.encode()) {
                let runs: Vec<(u64, u64)> = chain.iter().map(|&b| (b, 1)).collect();
                self.unallocate(&runs);
                return Err(e.into());
            }
        }
        Ok(chain)
    }

    /// Commits `size` and a map change of the file in `slot` that mapped
    /// the fresh runs `new` (already in the in-memory map; the caller
    /// drops the replaced blocks after success and undoes the map on
    /// error), by prepending them to the file's layered list (FORMAT.md
    /// "Layered extent lists": a one-record commit, plus at most one chain
    /// block written); falls back to `commit_file`'s plain rewrite when
    /// the list must be normalised.
    ///
    /// The file's deferred copy-on-write runs (FORMAT.md "Deferred
    /// copy-on-write commits") go in the same commit, after `new` (so
    /// `new` takes precedence where they overlap, and among them the
    /// newest), and their replaced blocks are dropped after it.
    pub(crate) fn commit_file_runs(
        &mut self,
        slot: u32,
        size: u64,
        new: &[Extent],
    ) -> Result<(), Error> {
        let f = self.files.get(&slot).ok_or(Error::StaleFile)?;
        if f.pending.is_empty() {
            return self.commit_runs(slot, size, new);
        }
        let mut all = Vec::with_capacity(new.len() + f.pending.runs.len());
        all.extend_from_slice(new);
        all.extend(f.pending.runs.iter().rev());
        self.commit_runs(slot, size, &all)?;
        self.release_pending(slot);
        Ok(())
    }

    /// After a commit that carried the file's deferred runs (a prepend
    /// of them, or a rewrite of the whole map): drops the references of
    /// the blocks they replaced.
    pub(crate) fn release_pending(&mut self, slot: u32) {
        let Some(f) = self.files.get_mut(&slot) else {
            return;
        };
        if f.pending.is_empty() {
            return;
        }
        let pending = core::mem::take(&mut f.pending);
        // The file's map holds none of these blocks any more, so dropping
        // them changes only other files' private counts: a chunk cache
        // current before stays current (as in `modify`, see ChunkCache).
        let epoch = self.share_epoch;
        for e in pending.replaced {
            self.unref(e.physical, e.len);
        }
        let now = self.share_epoch;
        if let Some(f) = self.files.get_mut(&slot) {
            if f.cow.epoch == epoch {
                f.cow.epoch = now;
            }
        }
    }

    /// [`Self::commit_file_runs`] without the deferred runs.
    fn commit_runs(&mut self, slot: u32, size: u64, new: &[Extent]) -> Result<(), Error> {
        let f = self.files.get(&slot).ok_or(Error::StaleFile)?;
        let effective = f.map.len() as u64;
        if new.is_empty() {
            return self.commit_file(slot, size, false);
        }
        if new.len() > INLINE_EXTENTS || effective <= INLINE_EXTENTS as u64 {
            return self.commit_file(slot, size, true);
        }
        let generation = f.generation;
        let Some(list) = &f.list else {
            // A plain list with a chain becomes layered: the whole
            // effective map into a fresh chain, inline part empty, so the
            // next 12 prepends touch only the record.
            let entries = f.map.to_vec();
            self.need_version(LAYERED_VERSION)?;
            let chain = self.write_layered_chain(slot, generation, &entries)?;
            let list = Layered {
                inline: Vec::new(),
                entries: entries.len() as u64,
                head: None,
            };
            return self.commit_list(slot, size, list, Some(chain), &[]);
        };
        let entries = list.entries + new.len() as u64;
        if entries > 2 * effective + LAYER_SLACK {
            return self.commit_file(slot, size, true);
        }
        if list.inline.len() + new.len() <= INLINE_EXTENTS {
            // The common case: the record alone changes, the chain stays.
            let mut inline = Vec::with_capacity(new.len() + list.inline.len());
            inline.extend_from_slice(new);
            inline.extend_from_slice(&list.inline);
            self.need_version(LAYERED_VERSION)?;
            // The chain stays, and so does the copy of its first block.
            let head = self
                .files
                .get_mut(&slot)
                .and_then(|f| f.list.as_mut())
                .and_then(|l| l.head.take());
            let list = Layered {
                inline,
                entries,
                head,
            };
            return self.commit_list(slot, size, list, None, &[]);
        }
        let (spill, mut chain) = (list.inline.clone(), f.chain.clone());
        // Taken, not copied: the list gets a new first block below.
        let known = self
            .files
            .get_mut(&slot)
            .and_then(|f| f.list.as_mut())
            .and_then(|l| l.head.take());
        self.need_version(LAYERED_VERSION)?;
        // Spill the inline entries into the chain's first block: a copy of
        // it with them in front when they fit, else a new first block.
        let mut block = OverflowBlock {
            owner_slot: slot,
            owner_generation: generation,
            index: chain.len() as u32,
            next: chain.first().copied().unwrap_or(0),
            extents: spill.clone(),
        };
        let mut replaced = Vec::new();
        if let Some(&head) = chain.first() {
            let old = match known {
                Some((at, old)) if at == head => old,
                _ => {
                    let mut raw = alloc::vec![0u8; BLOCK_SIZE as usize];
                    self.mem.read(block_offset(head), &mut raw)?;
                    OverflowBlock::decode(&raw).map_err(|e| {
                        Error::Corrupt(alloc::format!(
                            "overflow block {head} of file record {slot}: {e}"
                        ))
                    })?
                }
            };
            if old.extents.len() + spill.len() <= OVERFLOW_EXTENTS {
                block.index = old.index;
                block.next = old.next;
                block.extents.extend_from_slice(&old.extents);
                replaced.push(head);
            }
        }
        let prefer = chain.first().map(|b| b + 1);
        let (b, _) = self.alloc.alloc_small(1, prefer).ok_or(Error::NoSpace)?;
        self.refs.increment(b, 1);
        if let Err(e) = self.mem.write_flush(block_offset(b), &block.encode()) {
            self.unallocate(&[(b, 1)]);
            return Err(e.into());
        }
        if replaced.is_empty() {
            chain.insert(0, b);
        } else {
            chain[0] = b;
        }
        let list = Layered {
            inline: new.to_vec(),
            entries,
            head: Some((b, block)),
        };
        self.commit_list(slot, size, list, Some(chain), &replaced)
            .inspect_err(|_| self.unallocate(&[(b, 1)]))
    }

    /// Commits the record of a layered `list` over `chain` (every fresh
    /// block of it already persisted; None: the file's chain as it is) and
    /// then releases the chain blocks it no longer uses: `replaced`, or the
    /// whole old chain when `chain` is a fresh one. On error the fresh
    /// blocks are the caller's to free (a whole fresh chain is freed here).
    fn commit_list(
        &mut self,
        slot: u32,
        size: u64,
        list: Layered,
        chain: Option<Vec<u64>>,
        replaced: &[u64],
    ) -> Result<(), Error> {
        let f = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        let fresh_chain = f.list.is_none();
        let Some(chain) = chain else {
            let record = list.encode_record(f, size);
            self.commit(&[(slot, record)])?;
            let f = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
            f.size = size;
            f.durable = size;
            f.list = Some(list);
            return Ok(());
        };
        let old_chain = core::mem::replace(&mut f.chain, chain);
        let record = list.encode_record(f, size);
        let result = self.commit(&[(slot, record)]);
        let f = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        if let Err(e) = result {
            let fresh = core::mem::replace(&mut f.chain, old_chain);
            if fresh_chain {
                let runs: Vec<(u64, u64)> = fresh.iter().map(|&b| (b, 1)).collect();
                self.unallocate(&runs);
            }
            return Err(e);
        }
        f.size = size;
        f.durable = size;
        f.list = Some(list);
        if fresh_chain {
            for b in old_chain {
                self.unref(b, 1);
            }
        } else {
            for &b in replaced {
                self.unref(b, 1);
            }
        }
        Ok(())
    }

    /// Gathers every diverged logical chunk of `file` (mapped but not one
    /// 2 MiB-aligned extent: partly copied-on-write, or fragmented) into a
    /// fresh private 2 MiB-aligned chunk, one commit per chunk (FORMAT.md
    /// "Compaction"); returns how many chunks it gathered. Holes inside a
    /// gathered chunk become zero-filled blocks. Stops with
    /// [`Error::NoSpace`] when no free 2 MiB chunk is left (the chunks
    /// gathered so far stay gathered).
    pub fn compact(&mut self, file: FileId) -> Result<u64, Error> {
        let mut done = 0;
        let mut from = 0;
        loop {
            let (next, n) = self.compact_step(file, from, 1)?;
            done += n;
            match next {
                Some(c) => from = c,
                None => return Ok(done),
            }
        }
    }

    /// One bounded step of [`Filesystem::compact`] (for an idle-time pass
    /// or a caller that must not stall): gathers at most `max_chunks`
    /// diverged chunks at or after logical chunk `from`; returns the chunk
    /// to continue from (None when the file has no diverged chunk left
    /// past `from`) and how many chunks it gathered.
    pub fn compact_step(
        &mut self,
        file: FileId,
        from: u64,
        max_chunks: usize,
    ) -> Result<(Option<u64>, u64), Error> {
        self.file(file)?;
        let chunks = self.diverged_chunks(file.slot, from, max_chunks.max(1));
        let mut done = 0;
        for &c in &chunks {
            self.costed(file.slot, |fs| fs.gather_chunk(file.slot, c))?;
            done += 1;
        }
        Ok((chunks.last().map(|c| c + 1), done))
    }

    /// One bounded step of idle-time compaction (FORMAT.md "Compaction";
    /// the kernel calls it when its event loop has nothing else to do):
    /// looks at no more than `examine` mapped logical chunks of `file` from
    /// chunk `from` on and gathers at most one, the first that is not
    /// huge-page mappable and has at least `min_private` private blocks
    /// (blocks no clone shares and no hold pins: chunks a clone has mostly
    /// rewritten, or fragmented ones). So one call costs at most
    /// `examine` chunk counts plus one 2 MiB copy and one commit. Returns
    /// the chunk to continue from (None: past the file's last mapped
    /// chunk) and the chunk it gathered, if any. Files of 2 MiB or less are
    /// passed over, as by [`Filesystem::compact`].
    pub fn compact_idle_step(
        &mut self,
        file: FileId,
        from: u64,
        examine: u64,
        min_private: u64,
    ) -> Result<(Option<u64>, Option<u64>), Error> {
        let f = self.file(file)?;
        if f.size <= CHUNK_BLOCKS * BLOCK_SIZE {
            return Ok((None, None));
        }
        let end = f.map.end().div_ceil(CHUNK_BLOCKS);
        let mut chunk = from;
        let mut looked = 0;
        let mut found = None;
        while chunk < end && looked < examine.max(1) {
            let Some(e) = f.map.iter_from(chunk * CHUNK_BLOCKS).next() else {
                chunk = end;
                break;
            };
            chunk = chunk.max(e.logical / CHUNK_BLOCKS);
            let st = self.chunk_state(&f.map, chunk);
            looked += 1;
            chunk += 1;
            if st.mapped > 0 && !st.huge && st.private >= min_private {
                found = Some(chunk - 1);
                break;
            }
        }
        let next = (chunk < end).then_some(chunk);
        let Some(c) = found else {
            return Ok((next, None));
        };
        let slot = file.slot;
        self.costed(slot, |fs| fs.gather_chunk(slot, c))?;
        Ok((next, Some(c)))
    }

    /// Moves logical chunk `chunk` of the file in `slot` to a fresh huge
    /// chunk: copies every mapped block (zeros for holes), persists them,
    /// then one commit switches the map; the old blocks lose this file's
    /// reference after the commit (FORMAT.md "Compaction").
    fn gather_chunk(&mut self, slot: u32, chunk: u64) -> Result<(), Error> {
        let base = chunk * CHUNK_BLOCKS;
        let f = self.files.get(&slot).ok_or(Error::StaleFile)?;
        let size = f.size;
        let pieces = f.map.pieces(base, CHUNK_BLOCKS);
        let prefer = if base > 0 {
            f.map.lookup(base - 1).map(|p| p + 1)
        } else {
            None
        };
        self.reserve(pieces.len() * RUN_GROWTH)?;
        let fresh = self.alloc.alloc_huge(prefer).ok_or(Error::NoSpace)?;
        self.refs.increment(fresh, CHUNK_BLOCKS);
        let filled = (|| {
            for piece in &pieces {
                let to = block_offset(fresh + (piece.logical - base));
                let len = piece.len * BLOCK_SIZE;
                match piece.physical {
                    Some(p) => self.copy_blocks(block_offset(p), to, len)?,
                    None => self.zero_blocks(to, len)?,
                }
            }
            Ok::<(), Error>(())
        })();
        if let Err(e) = filled {
            self.unallocate(&[(fresh, CHUNK_BLOCKS)]);
            return Err(e);
        }
        let f = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        let removed = f.map.remove(base, CHUNK_BLOCKS);
        f.map.insert(base, CHUNK_BLOCKS, fresh);
        // The chunk's counts change outside `modify`.
        f.cow = Default::default();
        let run = Extent {
            logical: base,
            len: CHUNK_BLOCKS,
            physical: fresh,
        };
        match self.commit_file_runs(slot, size, &[run]) {
            Ok(()) => {
                for e in removed {
                    self.unref(e.physical, e.len);
                }
                Ok(())
            }
            Err(err) => {
                if let Some(f) = self.files.get_mut(&slot) {
                    f.map.remove(base, CHUNK_BLOCKS);
                    for x in removed {
                        f.map.insert(x.logical, x.len, x.physical);
                    }
                }
                self.unallocate(&[(fresh, CHUNK_BLOCKS)]);
                Err(err)
            }
        }
    }
}
