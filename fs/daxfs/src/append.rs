//! `append_from`: joins one file onto the end of another. When the
//! destination's size is a multiple of 2 MiB the source's extents move to
//! the destination's end and the source's record is freed, in ONE journal
//! transaction (FORMAT.md "Appending by moving extents"): no data is
//! copied and a power cut leaves either both files as they were or the
//! joined file and no source. Otherwise the bytes are copied.

use alloc::vec::Vec;

use crate::format::{Record, BLOCK_SIZE, CHUNK_BLOCKS, MAX_FILE_SIZE};
use crate::journal::make_record;
use crate::{Error, FileId, Filesystem, PersistentMemory};

/// How [`Filesystem::append_from`] joined the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The source's extents moved (one transaction, no bytes copied).
    Moved,
    /// The bytes were copied, then the source was unlinked.
    Copied,
}

/// Bytes copied at a time by the copying fallback.
const COPY_CHUNK: usize = 64 * 1024;

impl<M: PersistentMemory> Filesystem<M> {
    /// Appends the content of `src` to the end of `dst` and removes `src`
    /// (which must have a name). When `dst`'s size is a multiple of 2 MiB,
    /// nothing maps past it, and nobody holds `src` ([`Self::open`]),
    /// `src`'s extents move to `dst` and `src`'s record is freed in one
    /// transaction ([`Appended::Moved`]; blocks `src` had allocated past
    /// its size stay past the new size). Otherwise the bytes are copied
    /// into `dst` and `src` is then unlinked ([`Appended::Copied`]: two
    /// steps; a power cut between them leaves `dst` extended and `src`
    /// still there). On error nothing is committed by the move; a copy
    /// that fails part way leaves `dst` partly extended.
    pub fn append_from(&mut self, dst: FileId, src: FileId) -> Result<Appended, Error> {
        if dst.slot == src.slot {
            return Err(Error::InvalidName);
        }
        let d = self.file(dst)?;
        let s = self.file(src)?;
        if s.orphan {
            return Err(Error::StaleFile);
        }
        let size = d
            .size
            .checked_add(s.size)
            .filter(|&n| n <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooLarge)?;
        let chunk = CHUNK_BLOCKS * BLOCK_SIZE;
        let shift = d.size / BLOCK_SIZE;
        let movable = d.size % chunk == 0 && d.map.end() <= shift && s.opens == 0;
        if !movable {
            return self.append_by_copy(dst, src);
        }
        // Memory for the moved extents (and a fresh chain), charged first.
        let held = self.charge.bytes();
        self.reserve(s.map.len() * (crate::EXTENT_COST + 8))?;
        let d = self.file(dst)?;
        let s = self.file(src)?;
        let mut map = d.map.clone();
        for e in s.map.iter() {
            map.insert(e.logical + shift, e.len, e.physical);
        }
        let src_generation = s.generation;
        let chain = match self.write_chain(dst.slot, dst.generation, &map) {
            Ok(chain) => chain,
            Err(e) => {
                self.charge.shrink(self.charge.bytes() - held);
                return Err(e);
            }
        };
        let d = self.file(dst)?;
        let record = make_record(d, size, &map, &chain);
        let entries = [
            (dst.slot, record.encode()),
            (src.slot, Record::free(src_generation).encode()),
        ];
        if let Err(e) = self.commit(&entries) {
            let runs: Vec<(u64, u64)> = chain.iter().map(|&b| (b, 1)).collect();
            self.unallocate(&runs);
            self.charge.shrink(self.charge.bytes() - held);
            return Err(e);
        }
        // The source's blocks now belong to `dst`: their reference counts
        // stay; only its overflow chain is released.
        // Both in-memory maps went to media, with the deferred copy-on-write
        // runs of either file, whose replaced blocks are dropped now
        // (FORMAT.md "Deferred copy-on-write commits").
        if let Some(f) = self.take_file(src.slot) {
            self.names.remove(&f.name);
            for b in f.chain {
                self.unref(b, 1);
            }
            for e in f.pending.replaced {
                self.unref(e.physical, e.len);
            }
        }
        if let Some(mut f) = self.take_file(dst.slot) {
            f.map = map;
            f.cow = Default::default();
            f.size = size;
            f.durable = size;
            f.list = None;
            let old = core::mem::replace(&mut f.chain, chain);
            self.put_file(dst.slot, f);
            for b in old {
                self.unref(b, 1);
            }
            self.release_pending(dst.slot);
        }
        self.settle();
        Ok(Appended::Moved)
    }

    /// [`Self::append_from`] by copying the bytes, whatever the sizes
    /// (the fallback; public for comparisons and tests).
    pub fn append_by_copy(&mut self, dst: FileId, src: FileId) -> Result<Appended, Error> {
        let name = self.file(src)?.name.clone();
        let mut end = self.file(dst)?.size;
        let mut buffer = alloc::vec![0u8; COPY_CHUNK];
        let mut offset = 0;
        loop {
            let n = self.read(src, offset, &mut buffer)?;
            if n == 0 {
                break;
            }
            self.write(dst, end, &buffer[..n])?;
            offset += n as u64;
            end += n as u64;
        }
        self.unlink(&name)?;
        Ok(Appended::Copied)
    }
}
