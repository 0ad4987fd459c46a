//! Fine-grained copy-on-write and compaction (FORMAT.md "Copy-on-write of
//! shared blocks", "Compaction"). A write into blocks a file shares with a
//! clone copies only the 4 KiB blocks it touches (`write.rs` `modify`
//! asks [`Filesystem::chunk_wants_whole`] whether to move a whole chunk
//! instead); `compact` gathers a file's diverged logical chunks, one
//! bounded step (one chunk, one commit) at a time, into fresh private
//! 2 MiB-aligned chunks.

use alloc::vec::Vec;

use crate::extmap::ExtentMap;
use crate::format::{BLOCK_SIZE, CHUNK_BLOCKS};
use crate::{block_offset, Error, FileId, Filesystem, PersistentMemory, RUN_GROWTH};

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
            for (ps, pl, count) in self.refs.segments(p, piece.len) {
                for (_, ql, pins) in self.pins.segments(ps, pl) {
                    if count <= 1 && pins == 0 {
                        st.private += ql;
                    }
                }
            }
        }
        st
    }

    /// Whether a write that needs the fresh blocks `needs` (logical, len,
    /// copy source) in a large file allocates logical chunk `chunk` as one
    /// whole fresh 2 MiB chunk: when the file maps nothing there (a hole:
    /// FORMAT.md "Allocation policy"), or when the chunk still shares
    /// blocks and this write brings its private blocks to
    /// [`COMPACT_THRESHOLD_BLOCKS`] (FORMAT.md "Compaction").
    pub(crate) fn chunk_wants_whole(
        &self,
        map: &ExtentMap,
        chunk: u64,
        needs: &[(u64, u64, Option<u64>)],
    ) -> bool {
        let st = self.chunk_state(map, chunk);
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
        match self.commit_file(slot, size, true) {
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
