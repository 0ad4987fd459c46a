//! A sparse [`PersistentMemory`]: a large address space of which only the
//! 4 KiB pages ever written with non-zero bytes are stored. It lets the
//! daxfs target present superblocks that describe huge filesystems (huge
//! `max_files`, huge file tables) without the harness allocating them, so
//! what mount and fsck allocate for such images is what gets measured.

use std::collections::BTreeMap;

use daxbox_persist::{check_range, OutOfRange, PersistentMemory};

const PAGE: u64 = 4096;

/// Sparse memory of a fixed length; absent pages read as zero.
#[derive(Debug, Clone, Default)]
pub struct SparseMemory {
    len: u64,
    pages: BTreeMap<u64, Box<[u8; PAGE as usize]>>,
}

impl SparseMemory {
    /// `len` bytes of zeroes, then `bytes` copied to the start.
    pub fn new(len: u64, bytes: &[u8]) -> Self {
        let mut memory = Self {
            len,
            pages: BTreeMap::new(),
        };
        // The first bytes always fit: callers pass a small image.
        let _ = memory.write(0, bytes);
        memory
    }

    /// Pages stored.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }
}

impl PersistentMemory for SparseMemory {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(offset, buf.len() as u64, self.len)?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(buf.len() - done);
            match self.pages.get(&page) {
                Some(bytes) => buf[done..done + n].copy_from_slice(&bytes[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(offset, data.len() as u64, self.len)?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - done);
            let chunk = &data[done..done + n];
            match self.pages.get_mut(&page) {
                Some(bytes) => bytes[within..within + n].copy_from_slice(chunk),
                None if chunk.iter().all(|&b| b == 0) => {}
                None => {
                    let mut bytes = Box::new([0u8; PAGE as usize]);
                    bytes[within..within + n].copy_from_slice(chunk);
                    self.pages.insert(page, bytes);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)
    }

    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        if !offset.is_multiple_of(8) {
            return Err(OutOfRange {
                offset,
                len: 8,
                region_len: self.len,
            });
        }
        self.write(offset, &value.to_le_bytes())
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        check_range(offset, len, self.len)
    }

    fn fence(&mut self) {}
}
