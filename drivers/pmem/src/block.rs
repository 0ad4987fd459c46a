//! The block layer: the [`BlockDevice`] trait and the pmem implementation.
//!
//! [`BlockDevice`] is what the shell's `blk` and `pmem bench` commands
//! talk to (the NBD raw exports and daxfs use the `PersistentMemory`
//! underneath, through [`PmemBlockDevice::memory_mut`]). Offsets and lengths are in bytes and must be
//! multiples of the device's logical block size (512 or 4096), like the
//! sector-granular Linux block layer; [`BlockDevice::direct_access`] is the
//! exception: it maps any in-bounds byte range to the pmem bytes behind it
//! (Linux's `pmem_direct_access`), for DAX users such as daxfs.
//!
//! [`PmemBlockDevice`] implements it over any
//! [`daxbox_persist::PersistentMemory`]: a write is cached stores followed
//! by a flush of the written lines (or, for large aligned writes,
//! non-temporal stores, which need no flush), and [`BlockDevice::flush`]
//! is the store fence that makes every completed write durable — the
//! contract of a block device's FLUSH/FUA (NBD proto.md "Ordering of
//! messages and writes"). Under eADR (caches persistent) the line flushes
//! are skipped; the fence stays, to order stores.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use daxbox_persist::{OutOfRange, PersistentMemory, CACHE_LINE};

/// Writes of at least this many bytes, 64-byte aligned, use non-temporal
/// stores (the one threshold of `daxbox-persist`, which daxfs uses too).
pub use daxbox_persist::NT_THRESHOLD;

/// A refused or failed block operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The range is not inside the device.
    OutOfRange {
        /// Offset of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// Offset or length is not a multiple of the logical block size.
    Misaligned {
        /// Offset of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// The logical block size.
        block_size: u32,
    },
    /// The device is read-only.
    ReadOnly,
    /// The underlying memory refused the access.
    Io(OutOfRange),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::OutOfRange { offset, len, size } => write!(
                f,
                "{len} bytes at offset {offset:#x} do not fit in the {size}-byte device"
            ),
            BlockError::Misaligned {
                offset,
                len,
                block_size,
            } => write!(
                f,
                "{len} bytes at offset {offset:#x} are not aligned to the {block_size}-byte \
                 block size"
            ),
            BlockError::ReadOnly => write!(f, "device is read-only"),
            BlockError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl From<OutOfRange> for BlockError {
    fn from(e: OutOfRange) -> Self {
        BlockError::Io(e)
    }
}

/// The pmem bytes behind a byte range of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaxRange {
    /// Physical address of the first byte; `None` when the memory has no
    /// physical address (host tests).
    pub phys_addr: Option<u64>,
    /// Offset of the first byte within the pmem region (= device offset).
    pub region_offset: u64,
    /// Length available: the request, clamped to the end of the device.
    pub len: u64,
}

/// A block device.
pub trait BlockDevice {
    /// Name (`pmem0`, ...).
    fn name(&self) -> &str;

    /// Size in bytes (a multiple of the logical block size).
    fn size(&self) -> u64;

    /// Logical block size: 512 or 4096.
    fn logical_block_size(&self) -> u32;

    /// True when writes are refused.
    fn is_read_only(&self) -> bool {
        false
    }

    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;

    /// Writes `data` at `offset`; durable after the next [`flush`](Self::flush).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError>;

    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), BlockError>;

    /// Discards `len` bytes at `offset`; they read back as zeros.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError>;

    /// Writes `len` zero bytes at `offset`; durable after the next flush.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockError>;

    /// The pmem bytes behind `offset..offset + len`, clamped to the device
    /// end; `offset` must be inside the device (or equal to its size with
    /// `len` 0).
    fn direct_access(&self, offset: u64, len: u64) -> Result<DaxRange, BlockError>;
}

/// A block device over a whole persistent-memory region.
pub struct PmemBlockDevice<M: PersistentMemory> {
    name: String,
    memory: M,
    block_size: u32,
    read_only: bool,
    /// Bytes written since the last flush (for statistics and tests).
    unflushed_writes: u64,
}

impl<M: PersistentMemory> PmemBlockDevice<M> {
    /// A read-write device named `name` over all of `memory`. The size is
    /// `memory.len()` rounded down to `block_size`, which must be 512 or
    /// 4096 (anything else is taken as 4096).
    pub fn new(name: impl Into<String>, memory: M, block_size: u32) -> Self {
        let block_size = if block_size == 512 { 512 } else { 4096 };
        Self {
            name: name.into(),
            memory,
            block_size,
            read_only: false,
            unflushed_writes: 0,
        }
    }

    /// Refuses (or again allows) writes, discards and zeroing.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// The memory behind the device (for DAX users).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The memory behind the device, mutable (for DAX users such as daxfs,
    /// which do their own flushing).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }

    /// Gives the memory back.
    pub fn into_memory(self) -> M {
        self.memory
    }

    /// Bytes written since the last [`BlockDevice::flush`].
    pub fn unflushed_bytes(&self) -> u64 {
        self.unflushed_writes
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => {}
            _ => return Err(BlockError::OutOfRange { offset, len, size }),
        }
        let bs = u64::from(self.block_size);
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(BlockError::Misaligned {
                offset,
                len,
                block_size: self.block_size,
            });
        }
        Ok(())
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.check(offset, len)
    }

    /// Flushes the lines of `offset..offset + len` unless the caches are
    /// persistent.
    fn flush_lines(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if len > 0 && !self.memory.cache_is_persistent() {
            self.memory.flush(offset, len)?;
        }
        Ok(())
    }

    fn note_written(&mut self, len: u64) {
        self.unflushed_writes = self.unflushed_writes.saturating_add(len);
    }
}

impl<M: PersistentMemory> BlockDevice for PmemBlockDevice<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        let bs = u64::from(self.block_size);
        self.memory.len() / bs * bs
    }

    fn logical_block_size(&self) -> u32 {
        self.block_size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check(offset, buf.len() as u64)?;
        self.memory.read(offset, buf)?;
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        let len = data.len() as u64;
        self.check_write(offset, len)?;
        if len >= NT_THRESHOLD && offset.is_multiple_of(CACHE_LINE) {
            // Non-temporal stores are durable after the next fence, no
            // flush needed (persist crate docs).
            self.memory.write_nt(offset, data)?;
        } else {
            self.memory.write(offset, data)?;
            self.flush_lines(offset, len)?;
        }
        self.note_written(len);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.memory.fence();
        self.unflushed_writes = 0;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        // pmem has no thin provisioning to give back; discarded blocks read
        // as zeros, which NBD's TRIM permits and makes the result defined.
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_write(offset, len)?;
        self.memory.zero(offset, len)?;
        self.flush_lines(offset, len)?;
        self.note_written(len);
        Ok(())
    }

    fn direct_access(&self, offset: u64, len: u64) -> Result<DaxRange, BlockError> {
        let size = self.size();
        if offset > size {
            return Err(BlockError::OutOfRange { offset, len, size });
        }
        Ok(DaxRange {
            phys_addr: self.memory.physical_address(offset),
            region_offset: offset,
            len: len.min(size - offset),
        })
    }
}

/// Reads `len` bytes at any byte offset: reads the covering whole blocks
/// and returns the slice (the shell's `blk read`).
pub fn read_bytes<B: BlockDevice + ?Sized>(
    device: &B,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, BlockError> {
    let (first, end) = covering_blocks(device, offset, len)?;
    let mut buf = alloc::vec![0u8; (end - first) as usize];
    device.read(first, &mut buf)?;
    let skip = (offset - first) as usize;
    Ok(buf[skip..skip + len as usize].to_vec())
}

/// Writes `data` at any byte offset: read-modify-write of the covering
/// whole blocks (the shell's `blk write`). Durable after a flush.
pub fn write_bytes<B: BlockDevice + ?Sized>(
    device: &mut B,
    offset: u64,
    data: &[u8],
) -> Result<(), BlockError> {
    let (first, end) = covering_blocks(device, offset, data.len() as u64)?;
    let mut buf = read_bytes(device, first, end - first)?;
    let skip = (offset - first) as usize;
    buf[skip..skip + data.len()].copy_from_slice(data);
    device.write(first, &buf)
}

/// The whole-block range `first..end` that covers `offset..offset + len`,
/// checked against the device (so the buffers above stay bounded by it).
fn covering_blocks<B: BlockDevice + ?Sized>(
    device: &B,
    offset: u64,
    len: u64,
) -> Result<(u64, u64), BlockError> {
    let block = u64::from(device.logical_block_size());
    let out_of_range = BlockError::OutOfRange {
        offset,
        len,
        size: device.size(),
    };
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= device.size())
        .ok_or(out_of_range)?;
    // The device size is a whole number of blocks, so the rounded end is
    // inside it too.
    Ok((offset / block * block, end.next_multiple_of(block)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use daxbox_persist::VecMemory;
    use daxfs_crashcheck::memory::PieceKind;
    use daxfs_crashcheck::{CrashMemory, PagedImage};
    use proptest::prelude::*;

    /// The recording model shared with the crash-state explorer
    /// (`fs/crashcheck`): it logs every store, flush and fence per cache
    /// line, answers `is_durable`, and can claim eADR and a physical base
    /// address.
    fn recording(len: usize) -> CrashMemory {
        // Every length used here is a whole number of 4 KiB pages.
        CrashMemory::new(PagedImage::zeroed(len).expect("page-multiple length"))
    }

    /// True when every byte of `offset..offset + len` was stored with a
    /// non-temporal store that is still pending (not yet fenced).
    fn pending_non_temporal(m: &CrashMemory, offset: u64, len: u64) -> bool {
        m.with_point(|point| {
            let mut bytes = 0;
            for (&line, log) in point.pending {
                for piece in &log.pieces {
                    let start = line * CACHE_LINE + u64::from(piece.offset);
                    if start >= offset && start < offset + len {
                        if piece.kind != PieceKind::NonTemporal {
                            return false;
                        }
                        bytes += u64::from(piece.len);
                    }
                }
            }
            bytes == len
        })
    }

    fn device(len: usize) -> PmemBlockDevice<VecMemory> {
        PmemBlockDevice::new("pmem0", VecMemory::new(len), 512)
    }

    #[test]
    fn byte_granular_access_keeps_the_rest_of_the_blocks() {
        let mut d = device(4096);
        d.write(0, &[0x11; 1024]).unwrap();
        write_bytes(&mut d, 510, b"abcd").unwrap();
        assert_eq!(read_bytes(&d, 508, 8).unwrap(), b"\x11\x11abcd\x11\x11");
        assert_eq!(read_bytes(&d, 0, 0).unwrap(), b"");
        write_bytes(&mut d, 4092, b"tail").unwrap();
        assert_eq!(read_bytes(&d, 4092, 4).unwrap(), b"tail");
        for (offset, len) in [(4093, 4), (u64::MAX, 2), (0, 4097)] {
            assert_eq!(
                read_bytes(&d, offset, len),
                Err(BlockError::OutOfRange {
                    offset,
                    len,
                    size: 4096
                }),
                "{offset} {len}"
            );
        }
        assert!(write_bytes(&mut d, 4094, b"xyz").is_err());
        d.set_read_only(true);
        assert_eq!(write_bytes(&mut d, 0, b"no"), Err(BlockError::ReadOnly));
    }

    #[test]
    fn geometry() {
        let d = PmemBlockDevice::new("pmem3", VecMemory::new(10_000), 4096);
        assert_eq!(d.name(), "pmem3");
        assert_eq!(d.size(), 8192, "rounded down to whole blocks");
        assert_eq!(d.logical_block_size(), 4096);
        let d = PmemBlockDevice::new("x", VecMemory::new(1024), 1000);
        assert_eq!(d.logical_block_size(), 4096, "odd sizes fall back");
    }

    #[test]
    fn write_then_read_back() {
        let mut d = device(64 * 1024);
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        d.write(1024, &data).unwrap();
        d.flush().unwrap();
        let mut back = vec![0; 4096];
        d.read(1024, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(&d.memory().bytes()[1024..5120], &data[..]);
        let mut before = vec![1; 512];
        d.read(512, &mut before).unwrap();
        assert!(before.iter().all(|&b| b == 0));
    }

    #[test]
    fn bounds_and_alignment() {
        let mut d = device(8192);
        let mut buf = vec![0; 512];
        assert!(matches!(
            d.read(8192, &mut buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read(1, &mut buf),
            Err(BlockError::Misaligned { .. })
        ));
        assert!(matches!(
            d.write(0, &[0; 100]),
            Err(BlockError::Misaligned { .. })
        ));
        assert!(matches!(
            d.write_zeroes(u64::MAX - 511, 1024),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.discard(7680, 1024),
            Err(BlockError::OutOfRange { .. })
        ));
        assert_eq!(
            d.read(0, &mut buf[..100]).unwrap_err().to_string(),
            "100 bytes at offset 0x0 are not aligned to the 512-byte block size"
        );
    }

    #[test]
    fn read_only_refuses_writes() {
        let mut d = device(8192);
        d.set_read_only(true);
        assert!(d.is_read_only());
        assert_eq!(d.write(0, &[1; 512]), Err(BlockError::ReadOnly));
        assert_eq!(d.write_zeroes(0, 512), Err(BlockError::ReadOnly));
        assert_eq!(d.discard(0, 512), Err(BlockError::ReadOnly));
        let mut buf = [0; 512];
        d.read(0, &mut buf).unwrap();
        d.set_read_only(false);
        d.write(0, &[1; 512]).unwrap();
    }

    #[test]
    fn discard_and_zeroes_read_as_zero() {
        let mut d = device(16384);
        d.write(0, &[0xaa; 16384]).unwrap();
        d.discard(512, 1024).unwrap();
        d.write_zeroes(4096, 4096).unwrap();
        d.flush().unwrap();
        let b = d.memory().bytes();
        assert!(b[..512].iter().all(|&x| x == 0xaa));
        assert!(b[512..1536].iter().all(|&x| x == 0));
        assert!(b[1536..4096].iter().all(|&x| x == 0xaa));
        assert!(b[4096..8192].iter().all(|&x| x == 0));
        assert!(b[8192..].iter().all(|&x| x == 0xaa));
    }

    #[test]
    fn write_is_flushed_and_fenced_by_flush() {
        let mut d = PmemBlockDevice::new("pmem0", recording(1 << 20), 512);
        d.write(512, &[1; 1024]).unwrap();
        assert!(d.unflushed_bytes() == 1024);
        assert!(
            !d.memory().is_durable(512, 1024),
            "not durable before flush()"
        );
        d.flush().unwrap();
        assert!(d.memory().is_durable(512, 1024));
        assert_eq!(d.unflushed_bytes(), 0);
        // Large aligned writes go non-temporal and need no line flush.
        let flushes = d.memory().stats().flushes;
        d.write(64 * 1024, &[2; 64 * 1024]).unwrap();
        assert!(pending_non_temporal(d.memory(), 64 * 1024, 64 * 1024));
        assert_eq!(d.memory().stats().flushes, flushes);
        assert!(!d.memory().is_durable(64 * 1024, 64 * 1024));
        d.flush().unwrap();
        assert!(d.memory().is_durable(64 * 1024, 64 * 1024));
        d.write_zeroes(0, 4096).unwrap();
        d.flush().unwrap();
        assert!(d.memory().is_durable(0, 4096));
    }

    #[test]
    fn recording_checker_catches_missing_flush() {
        // The checker itself must be able to fail: a cached store with a
        // fence but no flush is not durable under ADR.
        let mut m = recording(4096);
        m.write(0, &[1; 128]).unwrap();
        m.fence();
        assert!(!m.is_durable(0, 128));
        m.flush(0, 64).unwrap();
        m.fence();
        assert!(m.is_durable(0, 64));
        assert!(!m.is_durable(64, 64), "second line never flushed");
    }

    #[test]
    fn eadr_skips_line_flushes_but_fences() {
        let m = recording(1 << 16);
        m.set_persistent_cache(true);
        let mut d = PmemBlockDevice::new("pmem0", m, 512);
        d.write(0, &[3; 512]).unwrap();
        assert_eq!(d.memory().stats().fences, 0);
        d.flush().unwrap();
        let stats = d.memory().stats();
        assert_eq!(stats.flushes, 0, "no line flushes under eADR");
        assert_eq!(stats.fences, 1, "but flush() still fences");
        assert!(d.memory().is_durable(0, 512));
    }

    #[test]
    fn direct_access_is_bounded() {
        let m = recording(8192);
        m.set_physical_base(Some(0x1_0000_0000));
        let d = PmemBlockDevice::new("pmem0", m, 4096);
        assert_eq!(
            d.direct_access(4096, 100).unwrap(),
            DaxRange {
                phys_addr: Some(0x1_0000_1000),
                region_offset: 4096,
                len: 100
            }
        );
        assert_eq!(d.direct_access(4096, 1 << 20).unwrap().len, 4096);
        assert_eq!(d.direct_access(8192, 10).unwrap().len, 0);
        assert!(d.direct_access(8193, 1).is_err());
        assert_eq!(device(4096).direct_access(0, 1).unwrap().phys_addr, None);
    }

    proptest! {
        /// Any sequence of writes is durable after flush() and reads back
        /// as a simple model says.
        #[test]
        fn writes_match_model_and_are_durable(
            writes in proptest::collection::vec((0u64..64, 1u64..48, any::<u8>()), 1..12)
        ) {
            let size = 64 * 512;
            let mut d = PmemBlockDevice::new("pmem0", recording(size), 512);
            let mut model = vec![0u8; size];
            for (block, blocks, byte) in writes {
                let offset = block * 512;
                let len = blocks * 512;
                let data = vec![byte; len as usize];
                let r = d.write(offset, &data);
                if offset + len <= size as u64 {
                    prop_assert!(r.is_ok());
                    model[offset as usize..(offset + len) as usize].fill(byte);
                } else {
                    let is_out_of_range = matches!(r, Err(BlockError::OutOfRange { .. }));
                    prop_assert!(is_out_of_range);
                }
            }
            d.flush().unwrap();
            prop_assert!(d.memory().is_durable(0, size as u64));
            let mut back = vec![0u8; size];
            d.read(0, &mut back).unwrap();
            prop_assert_eq!(back, model);
        }
    }
}
