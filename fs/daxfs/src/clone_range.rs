//! `clone_blocks`: a new file that shares a block range of another file
//! (copy-on-write), as `clone_file` shares a whole file. One journal
//! transaction (the new file's record); the source is not changed.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::extmap::ExtentMap;
use crate::format::{self, BLOCK_SIZE};
use crate::{Error, File, FileId, Filesystem, PersistentMemory};

impl<M: PersistentMemory> Filesystem<M> {
    /// Makes `dst` (a new name) a copy-on-write clone of blocks
    /// `first..first + blocks` of `src`: the blocks are shared, not
    /// copied, in time proportional to the extents in the range. The new
    /// file's size is `blocks` blocks, cut at `src`'s end (so a range
    /// ending in `src`'s last, partial block ends where `src` ends). Its
    /// holes stay holes; writes to either file copy the shared blocks
    /// first, as for [`Self::clone_file`]. A range past `src`'s end gives
    /// an empty file.
    pub fn clone_blocks(
        &mut self,
        src: FileId,
        first: u64,
        blocks: u64,
        dst: &str,
    ) -> Result<FileId, Error> {
        if !format::valid_name(dst) {
            return Err(Error::InvalidName);
        }
        if self.names.contains_key(dst) {
            return Err(Error::Exists);
        }
        let s = self.file(src)?;
        let start = first.checked_mul(BLOCK_SIZE).ok_or(Error::FileTooLarge)?;
        let want = blocks.checked_mul(BLOCK_SIZE).ok_or(Error::FileTooLarge)?;
        let size = want.min(s.size.saturating_sub(start));
        let mut map = ExtentMap::default();
        if size > 0 {
            for piece in s.map.pieces(first, size.div_ceil(BLOCK_SIZE)) {
                if let Some(p) = piece.physical {
                    map.insert(piece.logical - first, piece.len, p);
                }
            }
        }
        let slot = self.free_slot()?;
        let generation = self.next_generation(slot)?;
        // The map, chain and the reference-count runs its extents may
        // split, charged before anything is allocated (as `clone_file`).
        let need = crate::FILE_COST
            + 2 * dst.len()
            + map.len() * (crate::EXTENT_COST + 2 * crate::RUN_COST);
        let held = self.charge.bytes();
        self.reserve(need)?;
        let file = File {
            generation,
            name: dst.to_string(),
            size,
            durable: size,
            list: None,
            map,
            chain: Vec::new(),
            opens: 0,
            orphan: false,
            cow: Default::default(),
            pending: Default::default(),
        };
        self.install_clone(slot, held, file)
    }
}
