//! The initialised prefix of the file table (FORMAT.md "Initialised table
//! prefix"): format zeroes only the first [`TABLE_BATCH_BLOCKS`] blocks of
//! the table, mount reads only the prefix, and the first file placed past
//! it extends it, so neither format nor mount costs O(`max_files`).

use crate::format::{Superblock, TABLE_BATCH_BLOCKS};
use crate::{block_offset, Error, Filesystem, PersistentMemory, ZEROS};

impl<M: PersistentMemory> Filesystem<M> {
    /// Makes sure `slot` is inside the initialised prefix, extending it by
    /// up to its own length (at most [`TABLE_BATCH_BLOCKS`], at least one
    /// block) when it is not. The new blocks are zeroed and fenced before
    /// the backup and then the primary superblock say they are
    /// initialised, each persisted as a grow does: a crash leaves the old
    /// prefix (mount settles the backup back to the primary) or the new
    /// one, whose blocks are durable zeros.
    pub(crate) fn initialise_slot(&mut self, slot: u32) -> Result<(), Error> {
        let sb = self.sb;
        if slot < sb.init_slots() {
            return Ok(());
        }
        if slot >= sb.max_files {
            return Err(Error::NoFileSlots);
        }
        let mark = sb.table_init_blocks;
        let needed = u64::from(slot) / crate::format::RECORDS_PER_BLOCK + 1;
        let step = mark.clamp(1, TABLE_BATCH_BLOCKS);
        let new_mark = mark.saturating_add(step).max(needed).min(sb.table_blocks);
        let grown = Superblock {
            table_init_blocks: new_mark,
            ..sb
        };
        grown
            .check_geometry()
            .map_err(|e| Error::Corrupt(alloc::string::String::from(e)))?;
        // Everything before is ordered before the new blocks and the
        // superblocks.
        self.mem.fence();
        let start = block_offset(sb.table_start + mark);
        let len = block_offset(new_mark - mark);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64);
            self.mem.write_nt(start + done, &ZEROS[..n as usize])?;
            done += n;
        }
        self.mem.fence();
        let bytes = grown.encode();
        self.mem.write_flush(block_offset(1), &bytes)?;
        self.mem.fence();
        // The commit point: the primary (a torn one fails its checksum and
        // mount takes the backup, which already says the same).
        self.mem.write_flush(0, &bytes)?;
        self.mem.fence();
        self.sb = grown;
        Ok(())
    }
}
