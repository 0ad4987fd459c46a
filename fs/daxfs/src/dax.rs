//! The read side: `read`, the data/hole map `extents` (NBD block status),
//! `dax_ranges` (the region ranges behind a file range, for zero-copy
//! users) and `hold`/`release`, which pin blocks so they are neither
//! reused nor changed in place while a holder still uses them.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::format::BLOCK_SIZE;
use crate::{block_offset, DaxRange, Error, FileId, Filesystem, Hold, PersistentMemory, Segment};

static NEXT_HOLD: AtomicU64 = AtomicU64::new(1);

/// Bytes `read` hints ahead at the start of each scattered run: four cache
/// lines, enough for the hardware prefetcher to take over (measured with
/// `cargo bench -p daxfs -- read-profile`: 128 to 512 bytes read alike,
/// a whole 4 KiB block slower).
const READ_PREFETCH: u64 = 256;

impl<M: PersistentMemory> Filesystem<M> {
    /// Reads from `offset`; returns the bytes read (short at end of file).
    pub fn read(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let f = self.file(file)?;
        if offset >= f.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(f.size - offset);
        let end = offset + n;
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        let pieces = f.map.pieces(bs, be - bs);
        // A read over many scattered runs (a partly diverged clone: about
        // 80 per 2 MiB after random small writes) first hints the start of
        // each run that does not follow the one before, so that their
        // memory latencies overlap instead of adding up (issue 17).
        if pieces.len() > 2 {
            let mut next = None;
            for piece in &pieces {
                if let Some(p) = piece.physical {
                    if next != Some(p) {
                        let skip = offset.saturating_sub(piece.logical * BLOCK_SIZE);
                        self.mem.prefetch(block_offset(p) + skip, READ_PREFETCH);
                    }
                    next = Some(p + piece.len);
                }
            }
        }
        for piece in pieces {
            let a = offset.max(piece.logical * BLOCK_SIZE);
            let b = end.min((piece.logical + piece.len) * BLOCK_SIZE);
            let out = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match piece.physical {
                Some(p) => self
                    .mem
                    .read(block_offset(p) + (a - piece.logical * BLOCK_SIZE), out)?,
                None => out.fill(0),
            }
        }
        Ok(n as usize)
    }

    /// Data and hole segments of `offset..offset + len`, clipped to the end
    /// of file, adjacent segments of one kind merged (NBD block status).
    /// O(extents in the range): see [`Self::extents_limited`] for a bounded
    /// answer.
    pub fn extents(&self, file: FileId, offset: u64, len: u64) -> Result<Vec<Segment>, Error> {
        self.extents_limited(file, offset, len, usize::MAX)
    }

    /// [`Self::extents`] that looks at no more than `max` extents of the
    /// file and returns at most `max` segments: the answer then covers
    /// only a prefix of the range (the segments are exact as far as they
    /// go), and the caller asks again from its end. O(`max` + log extents)
    /// whatever the range, so a block-status query over a huge, fragmented
    /// file costs a bounded amount per call.
    pub fn extents_limited(
        &self,
        file: FileId,
        offset: u64,
        len: u64,
        max: usize,
    ) -> Result<Vec<Segment>, Error> {
        let f = self.file(file)?;
        let end = offset.saturating_add(len).min(f.size);
        let mut out: Vec<Segment> = Vec::new();
        if offset >= end || max == 0 {
            return Ok(out);
        }
        // Appends blocks a..b (clipped to the byte range) as one segment;
        // false when that would need a segment beyond `max`.
        let push = |out: &mut Vec<Segment>, a: u64, b: u64, data: bool| -> bool {
            let (a, b) = (offset.max(a * BLOCK_SIZE), end.min(b * BLOCK_SIZE));
            if b <= a {
                return true;
            }
            if let Some(last) = out.last_mut() {
                if last.data == data && last.offset + last.len == a {
                    last.len += b - a;
                    return true;
                }
            }
            if out.len() >= max {
                return false;
            }
            out.push(Segment {
                offset: a,
                len: b - a,
                data,
            });
            true
        };
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        // Blocks before `cursor` are described.
        let mut cursor = bs;
        for (visited, extent) in f.map.iter_from(bs).enumerate() {
            if extent.logical >= be {
                break;
            }
            if visited == max {
                return Ok(out);
            }
            let b = (extent.logical + extent.len).min(be);
            if !push(&mut out, cursor, extent.logical, false)
                || !push(&mut out, extent.logical, b, true)
            {
                return Ok(out);
            }
            cursor = b;
        }
        push(&mut out, cursor, be, false);
        Ok(out)
    }

    /// Region ranges backing the mapped parts of `offset..offset + len`
    /// (clipped to the end of file; holes are left out) for zero-copy use.
    /// Pair with `hold` so the blocks cannot be reused meanwhile.
    pub fn dax_ranges(&self, file: FileId, offset: u64, len: u64) -> Result<Vec<DaxRange>, Error> {
        let f = self.file(file)?;
        let end = offset.saturating_add(len).min(f.size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        for piece in f.map.pieces(bs, be - bs) {
            let Some(p) = piece.physical else { continue };
            for (ps, pl, count) in self.refs.segments(p, piece.len) {
                let logical = piece.logical + (ps - p);
                let a = offset.max(logical * BLOCK_SIZE);
                let b = end.min((logical + pl) * BLOCK_SIZE);
                if b <= a {
                    continue;
                }
                let region_offset = block_offset(ps) + (a - logical * BLOCK_SIZE);
                out.push(DaxRange {
                    file_offset: a,
                    len: b - a,
                    region_offset,
                    physical_address: self.mem.physical_address(region_offset),
                    shared: count > 1,
                });
            }
        }
        Ok(out)
    }

    /// Pins the blocks backing `offset..offset + len` (clipped to the end of
    /// file): until `release`, they are not reused, even if the file is
    /// truncated, punched or unlinked, and their bytes do not change: a
    /// `write` or `write_zeroes` into a held block copies it first (as for
    /// a block shared with a clone), so an in-flight send of the held range
    /// sends the bytes as they were when held. Writes made directly through
    /// a DAX mapping are the holder's own business. Holds do not survive a
    /// remount.
    pub fn hold(&mut self, file: FileId, offset: u64, len: u64) -> Result<Hold, Error> {
        let f = self.file(file)?;
        let end = offset.saturating_add(len).min(f.size);
        let mut ranges = Vec::new();
        if offset < end {
            let (bs, be) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
            for piece in f.map.pieces(bs, be - bs) {
                if let Some(p) = piece.physical {
                    ranges.push((p, piece.len));
                }
            }
        }
        // The pins may split two count runs per range: charged first.
        self.reserve(crate::TREE_ENTRY + ranges.len() * (16 + 2 * crate::RUN_COST))?;
        let mut bytes = 0;
        for &(p, l) in &ranges {
            self.pins.increment(p, l);
            bytes += l * BLOCK_SIZE;
        }
        // Pinned blocks are not private any more.
        self.shares_changed();
        let id = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
        self.holds.insert(id, ranges);
        self.settle();
        Ok(Hold { id, bytes })
    }

    /// Releases a hold; blocks no file references any more become free.
    pub fn release(&mut self, hold: Hold) {
        let Some(ranges) = self.holds.remove(&hold.id) else {
            return;
        };
        // Unpinned blocks may be private again.
        self.shares_changed();
        for (p, l) in ranges {
            for (s, n) in self.pins.decrement(p, l) {
                for (rs, rl, refs) in self.refs.segments(s, n) {
                    if refs == 0 {
                        self.alloc.free(rs, rl);
                    }
                }
            }
        }
        self.settle();
    }
}
