//! The size and the name of a file without the work of `stat` (which
//! walks the extent map for the allocation figures): for callers that
//! check every request against them, like the NBD backend.

use crate::{Error, FileId, Filesystem, PersistentMemory};

impl<M: PersistentMemory> Filesystem<M> {
    /// The size of `file` in bytes.
    pub fn file_size(&self, file: FileId) -> Result<u64, Error> {
        Ok(self.file(file)?.size)
    }

    /// The name of `file`: empty for a file removed while open (an
    /// orphan, FORMAT.md "Orphans").
    pub fn file_name(&self, file: FileId) -> Result<&str, Error> {
        Ok(&self.file(file)?.name)
    }
}
