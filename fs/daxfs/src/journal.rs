//! The commit protocol (FORMAT.md "Journal"): every metadata change is a
//! set of whole file records written to the journal, committed by one
//! 8-byte sequence word, then applied to the file table. Also the writing
//! of fresh overflow extent chains (FORMAT.md "Overflow extent blocks")
//! and `commit_file`, which commits one file's size and extent map.

use alloc::vec::Vec;

use crate::extmap::ExtentMap;
use crate::format::{
    self, Extent, JournalHeader, OverflowBlock, Record, INLINE_EXTENTS, JOURNAL_ENTRIES_OFFSET,
    JOURNAL_ENTRY_SIZE, JOURNAL_HEADER_OFFSET, JOURNAL_MAX_ENTRIES, OVERFLOW_EXTENTS, RECORD_SIZE,
};
use crate::{block_offset, Error, File, Filesystem, PersistentMemory};

/// The record of a file as it is: its size and on-media extent list
/// (plain or layered, FORMAT.md "Layered extent lists") unchanged.
pub(crate) fn current_record(file: &File, size: u64) -> Record {
    match &file.list {
        Some(list) => list.record(file, size),
        None => make_record(file, size, &file.map, &file.chain),
    }
}

/// Builds the record of a plain (sorted, non-layered) extent list for a
/// file state. `extents` yields the map in order.
pub(crate) fn make_record(file: &File, size: u64, map: &ExtentMap, chain: &[u64]) -> Record {
    Record {
        in_use: true,
        orphan: file.orphan,
        generation: file.generation,
        name: file.name.clone(),
        size,
        // Extent counts are bounded by the 2^32 logical blocks of a file.
        extent_count: map.len() as u32,
        overflow_count: chain.len() as u32,
        overflow_first: chain.first().copied().unwrap_or(0),
        inline: map.iter().take(INLINE_EXTENTS).collect(),
        layered: false,
    }
}

impl<M: PersistentMemory> Filesystem<M> {
    /// Atomically replaces the given records. FORMAT.md "Journal":
    /// entries -> flush -> fence -> commit word -> flush -> fence -> apply
    /// -> flush -> fence -> clear commit word -> flush -> fence.
    pub(crate) fn commit(&mut self, entries: &[(u32, [u8; RECORD_SIZE])]) -> Result<(), Error> {
        self.commit_with(entries, true)
    }

    /// [`Self::commit`]; `journal_fence` false leaves out the fence between
    /// the journal entries and the commit word (only ever false with the
    /// `fault-injection` feature, to prove the crash explorer catches it).
    pub(crate) fn commit_with(
        &mut self,
        entries: &[(u32, [u8; RECORD_SIZE])],
        journal_fence: bool,
    ) -> Result<(), Error> {
        debug_assert!(entries.len() <= JOURNAL_MAX_ENTRIES);
        let jo = self.journal_offset();
        self.sequence += 1;
        let mut header = JournalHeader {
            sequence: self.sequence,
            entries: entries.len() as u32,
            crc: 0,
        };
        header.crc = format::journal_checksum_of_records(&header, entries);
        self.mem
            .write_flush(jo + JOURNAL_HEADER_OFFSET, &header.encode())?;
        for (i, (slot, record)) in entries.iter().enumerate() {
            let at = jo + JOURNAL_ENTRIES_OFFSET + (i * JOURNAL_ENTRY_SIZE) as u64;
            self.mem
                .write_flush(at, &format::encode_journal_entry(*slot, record))?;
        }
        if journal_fence {
            self.mem.fence();
        }
        self.mem.store_u64(jo, self.sequence)?;
        self.mem.flush(jo, 8)?;
        self.mem.fence();
        for (slot, record) in entries {
            let at = self.record_offset(*slot);
            self.mem.write_flush(at, record)?;
        }
        self.mem.fence();
        self.mem.store_u64(jo, 0)?;
        self.mem.flush(jo, 8)?;
        self.mem.fence();
        Ok(())
    }

    /// `blocks` fresh overflow blocks for a chain, each with one
    /// reference, placed one after another where the allocator can; on
    /// [`Error::NoSpace`] the ones already taken are given back.
    pub(crate) fn alloc_chain_blocks(&mut self, blocks: usize) -> Result<Vec<u64>, Error> {
        let mut chain: Vec<u64> = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            let prefer = chain.last().map(|b| b + 1);
            match self.alloc.alloc_small(1, prefer) {
                Some((b, _)) => {
                    self.refs.increment(b, 1);
                    chain.push(b);
                }
                None => {
                    let runs: Vec<(u64, u64)> = chain.iter().map(|&b| (b, 1)).collect();
                    self.unallocate(&runs);
                    return Err(Error::NoSpace);
                }
            }
        }
        Ok(chain)
    }

    /// Writes a fresh overflow chain for `extents` (FORMAT.md "Overflow
    /// extent blocks": chains are never updated in place; a new chain is
    /// written to free blocks and the record switches to it on commit).
    pub(crate) fn write_chain(
        &mut self,
        slot: u32,
        generation: u32,
        map: &ExtentMap,
    ) -> Result<Vec<u64>, Error> {
        let overflow = map.len().saturating_sub(INLINE_EXTENTS);
        let blocks = overflow.div_ceil(OVERFLOW_EXTENTS);
        let chain = self.alloc_chain_blocks(blocks)?;
        let extents: Vec<Extent> = map.iter().skip(INLINE_EXTENTS).collect();
        for (i, block) in chain.iter().enumerate() {
            let start = i * OVERFLOW_EXTENTS;
            let end = (start + OVERFLOW_EXTENTS).min(extents.len());
            let ob = OverflowBlock {
                owner_slot: slot,
                owner_generation: generation,
                index: i as u32,
                next: chain.get(i + 1).copied().unwrap_or(0),
                extents: extents[start..end].to_vec(),
            };
            self.mem.write_flush(block_offset(*block), &ob.encode())?;
        }
        Ok(chain)
    }

    /// Commits the file's in-memory map (through a fresh overflow chain
    /// when `map_changed`) and `size`. On error nothing is committed and the
    /// caller undoes its in-memory map changes; on success the old chain is
    /// freed (the caller frees the blocks the map stopped using).
    pub(crate) fn commit_file(
        &mut self,
        slot: u32,
        size: u64,
        map_changed: bool,
    ) -> Result<(), Error> {
        let file = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        if !map_changed {
            let record = current_record(file, size);
            self.commit(&[(slot, record.encode())])?;
            if let Some(file) = self.files.get_mut(&slot) {
                file.size = size;
                file.durable = size;
            }
            return Ok(());
        }
        let generation = file.generation;
        // Lend the map to write_chain, which needs `&mut self`.
        let map = core::mem::take(&mut file.map);
        let chain = self.write_chain(slot, generation, &map);
        let file = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        file.map = map;
        let chain = chain?;
        let record = make_record(file, size, &file.map, &chain);
        if let Err(e) = self.commit(&[(slot, record.encode())]) {
            let runs: Vec<(u64, u64)> = chain.iter().map(|&b| (b, 1)).collect();
            self.unallocate(&runs);
            return Err(e);
        }
        let file = self.files.get_mut(&slot).ok_or(Error::StaleFile)?;
        file.size = size;
        file.durable = size;
        file.list = None;
        let old_chain = core::mem::replace(&mut file.chain, chain);
        for b in old_chain {
            self.unref(b, 1);
        }
        // The whole map went to media, deferred copy-on-write runs with it.
        self.release_pending(slot);
        Ok(())
    }
}
