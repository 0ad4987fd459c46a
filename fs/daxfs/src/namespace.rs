//! The namespace: `create`, `lookup`, `unlink`, `rename` (atomically
//! replacing the target), `clone_file` (copy-on-write clone sharing the
//! source's blocks), `list`, and the attribute queries `stat` and
//! `statfs`. Each change is one journal transaction (`journal.rs`).

use alloc::string::ToString;
use alloc::vec::Vec;
use core::ops::Bound;

use crate::extmap::ExtentMap;
#[cfg(feature = "fault-injection")]
use crate::fault;
use crate::format::{self, Record, BLOCK_SIZE, CHUNK_BLOCKS};
use crate::journal::{current_record, make_record};
use crate::{DirEntry, Error, File, FileId, Filesystem, PersistentMemory, Stat, StatFs};

/// The orphan record of live file `f`: its data, no name.
fn orphan_record(f: &File) -> Record {
    let mut record = current_record(f, f.size);
    record.name = alloc::string::String::new();
    record.orphan = true;
    record
}

impl<M: PersistentMemory> Filesystem<M> {
    /// Creates an empty file.
    pub fn create(&mut self, name: &str) -> Result<FileId, Error> {
        if !format::valid_name(name) {
            return Err(Error::InvalidName);
        }
        if self.names.contains_key(name) {
            return Err(Error::Exists);
        }
        let slot = self.free_slot()?;
        let generation = self.next_generation(slot)?;
        let file = File {
            generation,
            name: name.to_string(),
            size: 0,
            durable: 0,
            map: ExtentMap::default(),
            chain: Vec::new(),
            list: None,
            opens: 0,
            orphan: false,
            cow: Default::default(),
            pending: Default::default(),
        };
        // Charge before committing: a file the budget cannot hold is
        // refused with nothing changed.
        let held = self.charge.bytes();
        self.reserve(crate::file_cost(&file))?;
        let record = make_record(&file, 0, &file.map, &[]);
        if let Err(e) = self.commit(&[(slot, record.encode())]) {
            self.charge.shrink(self.charge.bytes() - held);
            return Err(e);
        }
        self.names.insert(file.name.clone(), slot);
        self.put_file(slot, file);
        self.settle();
        Ok(FileId { slot, generation })
    }

    /// Finds a file by name.
    pub fn lookup(&self, name: &str) -> Result<FileId, Error> {
        let slot = self.slot_of(name)?;
        Ok(self.id_of(slot))
    }

    /// Removes a file's name. A file nobody holds ([`Self::open`]) is
    /// freed: its blocks return unless shared with a clone or pinned. A
    /// held file becomes an orphan in the same transaction (FORMAT.md
    /// "Orphans"): the name is free for a new file at once, the holders
    /// keep reading and writing it through its `FileId`, and the last
    /// [`Self::close`] frees it.
    pub fn unlink(&mut self, name: &str) -> Result<(), Error> {
        let slot = self.slot_of(name)?;
        let f = self.files.get(&slot).ok_or(Error::NotFound)?;
        if f.opens > 0 {
            let record = orphan_record(f);
            self.commit(&[(slot, record.encode())])?;
            self.make_orphan(slot);
        } else {
            let record = Record::free(f.generation);
            self.commit(&[(slot, record.encode())])?;
            self.drop_slot(slot);
        }
        self.settle();
        Ok(())
    }

    /// Counts one more holder of `file` (an NBD connection, say). While a
    /// file has holders, removing its name leaves it an orphan instead of
    /// freeing it. Holds are in memory only: a mount starts with none
    /// (except those given to [`Self::mount_keeping`]).
    pub fn open(&mut self, file: FileId) -> Result<(), Error> {
        self.file(file)?;
        if let Some(f) = self.files.get_mut(&file.slot) {
            f.opens = f.opens.saturating_add(1);
        }
        Ok(())
    }

    /// Drops one holder of `file`. The last close of an orphan frees it in
    /// one transaction (FORMAT.md "Orphans"); its blocks return unless
    /// shared or pinned. The last close of a named file commits what it
    /// deferred, if anything (FORMAT.md "Deferred size commits",
    /// "Deferred copy-on-write commits"). A close without an open is
    /// ignored.
    pub fn close(&mut self, file: FileId) -> Result<(), Error> {
        self.file(file)?;
        let Some(f) = self.files.get_mut(&file.slot) else {
            return Err(Error::StaleFile);
        };
        f.opens = f.opens.saturating_sub(1);
        if f.opens == 0 {
            if f.orphan {
                self.free_orphan(file.slot)?;
            } else {
                self.commit_deferred(file.slot)?;
            }
        }
        Ok(())
    }

    /// Every file with holders and its count (what [`Self::mount_keeping`]
    /// takes to carry the holds across a remount, e.g. a grow).
    pub fn holders(&self) -> Vec<(FileId, u32)> {
        self.files
            .iter()
            .filter(|(_, f)| f.opens > 0)
            .map(|(&slot, f)| {
                (
                    FileId {
                        slot,
                        generation: f.generation,
                    },
                    f.opens,
                )
            })
            .collect()
    }

    /// Frees orphan `slot` (no holders left): one transaction that writes
    /// its free record, then its blocks return.
    pub(crate) fn free_orphan(&mut self, slot: u32) -> Result<(), Error> {
        let f = self.files.get(&slot).ok_or(Error::StaleFile)?;
        let record = Record::free(f.generation);
        self.commit(&[(slot, record.encode())])?;
        self.drop_slot(slot);
        self.settle();
        Ok(())
    }

    /// Turns live file `slot` into an orphan in memory, after its orphan
    /// record is committed: the name goes, the file stays.
    fn make_orphan(&mut self, slot: u32) {
        if let Some(mut f) = self.take_file(slot) {
            self.names.remove(&f.name);
            f.name = alloc::string::String::new();
            f.orphan = true;
            // The orphan record carried the in-memory size.
            f.durable = f.size;
            self.put_file(slot, f);
        }
    }

    /// Forgets a slot whose free record is committed, releasing its blocks.
    fn drop_slot(&mut self, slot: u32) {
        if let Some(f) = self.take_file(slot) {
            if !f.orphan {
                self.names.remove(&f.name);
            }
            for e in f.map.iter() {
                self.unref(e.physical, e.len);
            }
            // The blocks deferred copy-on-writes replaced were still the
            // record's (FORMAT.md "Deferred copy-on-write commits").
            for e in f.pending.replaced {
                self.unref(e.physical, e.len);
            }
            for b in f.chain {
                self.unref(b, 1);
            }
        }
    }

    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let slot = self.slot_of(from)?;
        if !format::valid_name(to) {
            return Err(Error::InvalidName);
        }
        if from == to {
            return Ok(());
        }
        let victim = self.names.get(to).copied();
        let f = self.files.get(&slot).ok_or(Error::NotFound)?;
        let mut renamed = f.clone();
        renamed.name = to.to_string();
        let record = current_record(&renamed, renamed.size);
        let mut entries = Vec::with_capacity(2);
        entries.push((slot, record.encode()));
        // A replaced file that is open becomes an orphan in the same
        // transaction (FORMAT.md "Orphans"); otherwise it is freed.
        let mut victim_orphaned = false;
        if let Some(v) = victim {
            let vf = self.files.get(&v).ok_or(Error::NotFound)?;
            if vf.opens > 0 {
                victim_orphaned = true;
                entries.push((v, orphan_record(vf).encode()));
            } else {
                entries.push((v, Record::free(vf.generation).encode()));
            }
        }
        #[cfg(feature = "fault-injection")]
        let journal_fence = !fault::rename_skips_journal_fence();
        #[cfg(not(feature = "fault-injection"))]
        let journal_fence = true;
        self.commit_with(&entries, journal_fence)?;
        if let Some(v) = victim {
            if victim_orphaned {
                self.make_orphan(v);
            } else {
                self.drop_slot(v);
            }
        }
        self.names.remove(from);
        self.names.insert(to.to_string(), slot);
        if let Some(mut f) = self.take_file(slot) {
            f.name = to.to_string();
            // The record carried the in-memory size.
            f.durable = f.size;
            self.put_file(slot, f);
        }
        self.settle();
        Ok(())
    }

    /// Makes `dst` a copy-on-write clone of `src` in time proportional to
    /// the extent count: the blocks are shared, not copied.
    pub fn clone_file(&mut self, src: &str, dst: &str) -> Result<FileId, Error> {
        let src_slot = self.slot_of(src)?;
        if !format::valid_name(dst) {
            return Err(Error::InvalidName);
        }
        if self.names.contains_key(dst) {
            return Err(Error::Exists);
        }
        let slot = self.free_slot()?;
        let generation = self.next_generation(slot)?;
        let s = self.files.get(&src_slot).ok_or(Error::NotFound)?;
        // The clone's map, chain and the reference-count runs its extents
        // may split, charged before anything is allocated.
        let need = crate::FILE_COST
            + 2 * dst.len()
            + s.map.len() * (crate::EXTENT_COST + 2 * crate::RUN_COST);
        let held = self.charge.bytes();
        self.reserve(need)?;
        let s = self.files.get(&src_slot).ok_or(Error::NotFound)?;
        let file = File {
            generation,
            name: dst.to_string(),
            size: s.size,
            durable: s.size,
            map: s.map.clone(),
            chain: Vec::new(),
            list: None,
            opens: 0,
            orphan: false,
            cow: Default::default(),
            pending: Default::default(),
        };
        self.install_clone(slot, held, file)
    }

    /// The end of [`Self::clone_file`] and [`Self::clone_blocks`]: `file`
    /// (its map pointing at another file's blocks, charged from `held`)
    /// gets its overflow chain and its record in `slot` in one commit, then
    /// its blocks one more reference and its name. On error nothing is
    /// committed and the charge and the chain are given back.
    pub(crate) fn install_clone(
        &mut self,
        slot: u32,
        held: usize,
        mut file: File,
    ) -> Result<FileId, Error> {
        let generation = file.generation;
        let chain = match self.write_chain(slot, generation, &file.map) {
            Ok(c) => c,
            Err(e) => {
                self.charge.shrink(self.charge.bytes() - held);
                return Err(e);
            }
        };
        file.chain = chain;
        let record = make_record(&file, file.size, &file.map, &file.chain);
        if let Err(e) = self.commit(&[(slot, record.encode())]) {
            let runs: Vec<(u64, u64)> = file.chain.iter().map(|&b| (b, 1)).collect();
            self.unallocate(&runs);
            self.charge.shrink(self.charge.bytes() - held);
            return Err(e);
        }
        for e in file.map.iter() {
            self.refs.increment(e.physical, e.len);
        }
        // The source's blocks are shared now.
        self.shares_changed();
        self.names.insert(file.name.clone(), slot);
        self.put_file(slot, file);
        self.settle();
        Ok(FileId { slot, generation })
    }

    /// Up to `max` entries sorted by name bytes, starting after `start_after`.
    pub fn list(&self, start_after: Option<&str>, max: usize) -> Vec<DirEntry> {
        let lower = match start_after {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        self.names
            .range::<str, _>((lower, Bound::Unbounded))
            .take(max)
            .map(|(name, &slot)| DirEntry {
                name: name.clone(),
                id: self.id_of(slot),
                size: self.files.get(&slot).map_or(0, |f| f.size),
            })
            .collect()
    }

    /// File attributes.
    pub fn stat(&self, file: FileId) -> Result<Stat, Error> {
        let f = self.file(file)?;
        let mut shared = 0;
        let mut huge = 0;
        for e in f.map.iter() {
            for (_, l, c) in self.refs.segments(e.physical, e.len) {
                if c > 1 {
                    shared += l;
                }
            }
            // Count whole aligned chunks where logical and physical agree
            // modulo 2 MiB.
            if e.logical % CHUNK_BLOCKS == e.physical % CHUNK_BLOCKS {
                let first = e.logical.div_ceil(CHUNK_BLOCKS) * CHUNK_BLOCKS;
                let last = (e.logical + e.len) / CHUNK_BLOCKS * CHUNK_BLOCKS;
                if last > first {
                    huge += last - first;
                }
            }
        }
        Ok(Stat {
            id: file,
            name: f.name.clone(),
            size: f.size,
            allocated_bytes: f.map.mapped_blocks() * BLOCK_SIZE,
            shared_bytes: shared * BLOCK_SIZE,
            extent_count: f.map.len() as u64,
            huge_bytes: huge * BLOCK_SIZE,
        })
    }

    /// Filesystem-wide figures.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            block_size: BLOCK_SIZE,
            total_blocks: self.sb.total_blocks,
            data_blocks: self.sb.total_blocks - self.sb.data_start,
            free_blocks: self.alloc.free_blocks(),
            files: self.names.len() as u64,
            // Every live file but an orphan has an entry in `names`.
            orphans: (self.files.len() - self.names.len()) as u64,
            max_files: self.sb.max_files as u64,
            huge_free: self.alloc.huge_free(),
            uuid: self.sb.uuid,
        }
    }
}
