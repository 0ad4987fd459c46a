//! The page-frame table of persistent memory.
//!
//! Storage pages are not memory: they belong to a block device (the design
//! of Linux's pmem driver, see the 2014 linux-nvdimm "struct page" thread).
//! So a pmem frame has its own type, [`StorageFrame`], which has no
//! conversion into the kernel's RAM frame type: the compiler refuses to
//! hand one to the volatile frame allocator. Each storage frame has an
//! entry in a [`FrameTable`] (kept in volatile memory, never on media)
//! with a reference count and an [`Owner`]. A frame is claimed by one
//! owner, extra references are taken with `get` and dropped with `put`,
//! and it becomes free for reuse only when the count drops to zero. It is
//! never returned to the heap. Counts are checked: overflow, underflow and
//! a wrong owner are errors, never wrap-arounds or panics.

use alloc::vec::Vec;
use core::fmt;

use crate::mapping::SIZE_4K;

/// One 4 KiB frame of persistent memory, by frame number (address / 4096).
///
/// Deliberately not `From`/`Into` anything, and only made by
/// [`FrameTable::frame`], so it always names a frame of some table. Code
/// outside this crate cannot make one from a number:
///
/// ```compile_fail
/// let frame = daxbox_pmem::frames::StorageFrame(0x100000);
/// ```
///
/// nor pass one where a number (or any RAM frame type) is expected:
///
/// ```compile_fail
/// let table = daxbox_pmem::frames::FrameTable::new(0x1_0000_0000, 4096).unwrap();
/// let frame = table.frame(0x1_0000_0000).unwrap();
/// let number: u64 = frame;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorageFrame(u64);

impl StorageFrame {
    /// Frame number (physical address / 4096).
    pub fn number(self) -> u64 {
        self.0
    }

    /// Physical address of the first byte.
    pub fn address(self) -> u64 {
        // Frame numbers come from 4 KiB-aligned addresses that fit in u64.
        self.0 << 12
    }
}

/// Who holds a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Nobody: free for reuse.
    Free,
    /// A block device, by device index (raw export, block I/O in flight).
    Device(u8),
    /// The filesystem mounted on device N (daxfs data or metadata).
    Filesystem(u8),
    /// A DAX mapping handed out to a client of device N.
    Mapping(u8),
    /// Never to be used (bad blocks, firmware-reserved parts).
    Reserved,
}

impl Owner {
    fn encode(self) -> u16 {
        match self {
            Owner::Free => 0,
            Owner::Device(n) => 0x100 | u16::from(n),
            Owner::Filesystem(n) => 0x200 | u16::from(n),
            Owner::Mapping(n) => 0x300 | u16::from(n),
            Owner::Reserved => 0x400,
        }
    }

    fn decode(raw: u16) -> Self {
        // Only `encode` writes the table, so every other value is
        // unreachable; mapping it to Reserved keeps the frame out of use.
        let n = (raw & 0xff) as u8;
        match raw >> 8 {
            0 => Owner::Free,
            1 => Owner::Device(n),
            2 => Owner::Filesystem(n),
            3 => Owner::Mapping(n),
            _ => Owner::Reserved,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Free => write!(f, "free"),
            Owner::Device(n) => write!(f, "device pmem{n}"),
            Owner::Filesystem(n) => write!(f, "filesystem on pmem{n}"),
            Owner::Mapping(n) => write!(f, "DAX mapping of pmem{n}"),
            Owner::Reserved => write!(f, "reserved"),
        }
    }
}

/// The state of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    /// References held; zero exactly when the owner is [`Owner::Free`].
    pub refcount: u32,
    /// Current owner.
    pub owner: Owner,
}

/// A refused frame-table operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The range given to [`FrameTable::new`] is not 4 KiB aligned,
    /// empty or wraps.
    BadRange {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// Not enough heap for the table.
    NoMemory {
        /// Frames that were asked for.
        frames: u64,
    },
    /// The address is not inside this table's range.
    OutOfTable {
        /// The address.
        address: u64,
    },
    /// `claim` of a frame that is not free.
    NotFree {
        /// The frame.
        frame: StorageFrame,
        /// Its owner.
        owner: Owner,
    },
    /// `get`/`put` by someone who does not own the frame.
    WrongOwner {
        /// The frame.
        frame: StorageFrame,
        /// Its owner.
        owner: Owner,
        /// Who asked.
        caller: Owner,
    },
    /// `claim` on behalf of [`Owner::Free`].
    FreeIsNotAnOwner,
    /// The reference count would exceed `u32::MAX`.
    Overflow {
        /// The frame.
        frame: StorageFrame,
    },
    /// `put` of a frame whose count is already zero.
    Underflow {
        /// The frame.
        frame: StorageFrame,
    },
    /// No free frame left.
    Exhausted,
    /// `release_range` of a frame that has references besides its owner's
    /// claim (a DAX mapping, say).
    InUse {
        /// The frame.
        frame: StorageFrame,
        /// Its reference count.
        references: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::BadRange { start, len } => write!(
                f,
                "frame table: range {len:#x} bytes at {start:#x} is empty, wraps or is not \
                 4 KiB aligned"
            ),
            FrameError::NoMemory { frames } => {
                write!(f, "frame table: no heap for {frames} frame entries")
            }
            FrameError::OutOfTable { address } => {
                write!(f, "frame table: {address:#x} is not a frame of this table")
            }
            FrameError::NotFree { frame, owner } => write!(
                f,
                "frame table: frame {:#x} is held by {owner}",
                frame.address()
            ),
            FrameError::WrongOwner {
                frame,
                owner,
                caller,
            } => write!(
                f,
                "frame table: frame {:#x} is held by {owner}, not {caller}",
                frame.address()
            ),
            FrameError::FreeIsNotAnOwner => write!(f, "frame table: cannot claim for 'free'"),
            FrameError::Overflow { frame } => write!(
                f,
                "frame table: reference count of frame {:#x} would overflow",
                frame.address()
            ),
            FrameError::Underflow { frame } => write!(
                f,
                "frame table: frame {:#x} put more often than taken",
                frame.address()
            ),
            FrameError::Exhausted => write!(f, "frame table: no free frame"),
            FrameError::InUse { frame, references } => write!(
                f,
                "frame table: frame {:#x} still has {references} references",
                frame.address()
            ),
        }
    }
}

/// Counts over a [`FrameTable`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames in the table.
    pub total: u64,
    /// Free frames.
    pub free: u64,
    /// Frames held by devices.
    pub device: u64,
    /// Frames held by filesystems.
    pub filesystem: u64,
    /// Frames held by DAX mappings.
    pub mapping: u64,
    /// Reserved frames.
    pub reserved: u64,
    /// Sum of all reference counts.
    pub references: u64,
}

/// The frame table of one pmem range.
///
/// Entries are two parallel vectors (6 bytes a frame instead of 8 for a
/// padded struct): 1 GiB of pmem costs 1.5 MiB of heap.
#[derive(Debug, Clone)]
pub struct FrameTable {
    first: u64,
    refcounts: Vec<u32>,
    owners: Vec<u16>,
    free: u64,
    /// Where `allocate` starts looking (next-fit).
    cursor: usize,
}

impl FrameTable {
    /// A table of free frames for `start..start + len`. Allocates with
    /// `try_reserve`, so a table too large for the heap is an error, not
    /// an allocation-failure panic.
    pub fn new(start: u64, len: u64) -> Result<Self, FrameError> {
        if !start.is_multiple_of(SIZE_4K)
            || !len.is_multiple_of(SIZE_4K)
            || len == 0
            || start.checked_add(len).is_none()
        {
            return Err(FrameError::BadRange { start, len });
        }
        let frames = len / SIZE_4K;
        let count = usize::try_from(frames).map_err(|_| FrameError::NoMemory { frames })?;
        let mut refcounts = Vec::new();
        let mut owners = Vec::new();
        refcounts
            .try_reserve_exact(count)
            .map_err(|_| FrameError::NoMemory { frames })?;
        owners
            .try_reserve_exact(count)
            .map_err(|_| FrameError::NoMemory { frames })?;
        refcounts.resize(count, 0);
        owners.resize(count, Owner::Free.encode());
        Ok(Self {
            first: start / SIZE_4K,
            refcounts,
            owners,
            free: frames,
            cursor: 0,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> u64 {
        self.refcounts.len() as u64
    }

    /// True when the table has no frames (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.refcounts.is_empty()
    }

    /// The frame holding physical address `address`.
    pub fn frame(&self, address: u64) -> Result<StorageFrame, FrameError> {
        let number = address / SIZE_4K;
        match number.checked_sub(self.first) {
            Some(index) if index < self.len() => Ok(StorageFrame(number)),
            _ => Err(FrameError::OutOfTable { address }),
        }
    }

    /// The frames covering `offset..offset + len` bytes from the start of
    /// the range (for a device that works in offsets).
    pub fn frames_at_offset(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<impl Iterator<Item = StorageFrame>, FrameError> {
        let first = self.first;
        let range = self.indexes_at_offset(offset, len)?;
        Ok(range.map(move |i| StorageFrame(first + i as u64)))
    }

    /// The table indexes of the frames covering `offset..offset + len`.
    fn indexes_at_offset(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<core::ops::Range<usize>, FrameError> {
        let start_index = offset / SIZE_4K;
        let end = offset
            .checked_add(len)
            .ok_or(FrameError::OutOfTable { address: u64::MAX })?;
        let end_index = end.div_ceil(SIZE_4K);
        if end_index > self.len() {
            return Err(FrameError::OutOfTable {
                address: (self.first * SIZE_4K).saturating_add(end),
            });
        }
        // Both at most `len()`, which is a usize.
        Ok(start_index.min(end_index) as usize..end_index as usize)
    }

    fn index(&self, frame: StorageFrame) -> Result<usize, FrameError> {
        match frame.0.checked_sub(self.first) {
            // `index < len`, which is a usize.
            Some(index) if index < self.len() => Ok(index as usize),
            _ => Err(FrameError::OutOfTable {
                address: frame.address(),
            }),
        }
    }

    /// The state of `frame`.
    pub fn entry(&self, frame: StorageFrame) -> Result<FrameEntry, FrameError> {
        let i = self.index(frame)?;
        Ok(FrameEntry {
            refcount: self.refcounts[i],
            owner: Owner::decode(self.owners[i]),
        })
    }

    /// Gives a free frame to `owner` with one reference.
    pub fn claim(&mut self, frame: StorageFrame, owner: Owner) -> Result<(), FrameError> {
        if owner == Owner::Free {
            return Err(FrameError::FreeIsNotAnOwner);
        }
        let i = self.index(frame)?;
        let current = Owner::decode(self.owners[i]);
        if current != Owner::Free {
            return Err(FrameError::NotFree {
                frame,
                owner: current,
            });
        }
        self.owners[i] = owner.encode();
        self.refcounts[i] = 1;
        self.free -= 1;
        Ok(())
    }

    /// Claims every frame covering `offset..offset + len` of the range for
    /// `owner`, all or nothing.
    pub fn claim_range(&mut self, offset: u64, len: u64, owner: Owner) -> Result<(), FrameError> {
        if owner == Owner::Free {
            return Err(FrameError::FreeIsNotAnOwner);
        }
        // Whole slices, not frame by frame: a device take claims every
        // frame of the device (262,144 for 1 GiB) at boot.
        let range = self.indexes_at_offset(offset, len)?;
        let free = Owner::Free.encode();
        if let Some(i) = self.owners[range.clone()].iter().position(|&o| o != free) {
            let i = range.start + i;
            return Err(FrameError::NotFree {
                frame: StorageFrame(self.first + i as u64),
                owner: Owner::decode(self.owners[i]),
            });
        }
        self.owners[range.clone()].fill(owner.encode());
        self.refcounts[range.clone()].fill(1);
        self.free -= range.len() as u64;
        Ok(())
    }

    /// Undoes [`FrameTable::claim_range`]: every frame covering
    /// `offset..offset + len`, held by `owner` with only the claim's
    /// reference, becomes free, all or nothing (an unmount gives the
    /// device back).
    pub fn release_range(&mut self, offset: u64, len: u64, owner: Owner) -> Result<(), FrameError> {
        let range = self.indexes_at_offset(offset, len)?;
        let held = owner.encode();
        let bad = self.owners[range.clone()]
            .iter()
            .zip(&self.refcounts[range.clone()])
            .position(|(&o, &r)| o != held || r != 1);
        if let Some(i) = bad {
            let i = range.start + i;
            let frame = StorageFrame(self.first + i as u64);
            self.checked_owner(frame, owner)?;
            return Err(FrameError::InUse {
                frame,
                references: self.refcounts[i],
            });
        }
        self.owners[range.clone()].fill(Owner::Free.encode());
        self.refcounts[range.clone()].fill(0);
        self.free += range.len() as u64;
        Ok(())
    }

    /// Claims the next free frame for `owner` (next-fit from the last
    /// allocation, so reuse is spread over the range).
    pub fn allocate(&mut self, owner: Owner) -> Result<StorageFrame, FrameError> {
        if owner == Owner::Free {
            return Err(FrameError::FreeIsNotAnOwner);
        }
        let len = self.refcounts.len();
        let free = Owner::Free.encode();
        let found = (self.cursor..len)
            .chain(0..self.cursor)
            .find(|&i| self.owners[i] == free)
            .ok_or(FrameError::Exhausted)?;
        self.cursor = (found + 1) % len;
        let frame = StorageFrame(self.first + found as u64);
        self.claim(frame, owner)?;
        Ok(frame)
    }

    /// Takes another reference to a frame held by `owner`; returns the
    /// new count.
    pub fn get(&mut self, frame: StorageFrame, owner: Owner) -> Result<u32, FrameError> {
        let i = self.checked_owner(frame, owner)?;
        let count = self.refcounts[i]
            .checked_add(1)
            .ok_or(FrameError::Overflow { frame })?;
        self.refcounts[i] = count;
        Ok(count)
    }

    /// Drops a reference held by `owner`; returns the new count. At zero
    /// the frame becomes free (and only then).
    pub fn put(&mut self, frame: StorageFrame, owner: Owner) -> Result<u32, FrameError> {
        let i = self.checked_owner(frame, owner)?;
        let count = self.refcounts[i]
            .checked_sub(1)
            .ok_or(FrameError::Underflow { frame })?;
        self.refcounts[i] = count;
        if count == 0 {
            self.owners[i] = Owner::Free.encode();
            self.free += 1;
        }
        Ok(count)
    }

    fn checked_owner(&self, frame: StorageFrame, caller: Owner) -> Result<usize, FrameError> {
        let i = self.index(frame)?;
        let owner = Owner::decode(self.owners[i]);
        if owner == Owner::Free {
            // A free frame has count zero: a put is an underflow, a get
            // must go through claim.
            return Err(FrameError::Underflow { frame });
        }
        if owner != caller {
            return Err(FrameError::WrongOwner {
                frame,
                owner,
                caller,
            });
        }
        Ok(i)
    }

    /// Counts by owner kind.
    pub fn stats(&self) -> FrameStats {
        let mut s = FrameStats {
            total: self.len(),
            ..FrameStats::default()
        };
        for (&owner, &count) in self.owners.iter().zip(&self.refcounts) {
            match Owner::decode(owner) {
                Owner::Free => s.free += 1,
                Owner::Device(_) => s.device += 1,
                Owner::Filesystem(_) => s.filesystem += 1,
                Owner::Mapping(_) => s.mapping += 1,
                Owner::Reserved => s.reserved += 1,
            }
            s.references += u64::from(count);
        }
        s
    }

    /// Number of free frames (kept as a running count; O(1)).
    pub fn free_frames(&self) -> u64 {
        self.free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: u64 = 0x1_0000_0000;

    #[test]
    fn construction_checks_the_range() {
        assert!(FrameTable::new(BASE, 0).is_err());
        assert!(FrameTable::new(BASE + 1, 4096).is_err());
        assert!(FrameTable::new(BASE, 4097).is_err());
        assert!(FrameTable::new(u64::MAX - 4095, 8192).is_err());
        let t = FrameTable::new(BASE, 64 * 4096).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(t.free_frames(), 64);
        assert_eq!(t.stats().free, 64);
    }

    #[test]
    fn frames_are_looked_up_by_address() {
        let t = FrameTable::new(BASE, 4 * 4096).unwrap();
        let f = t.frame(BASE + 4096 + 17).unwrap();
        assert_eq!(f.address(), BASE + 4096);
        assert_eq!(f.number(), (BASE >> 12) + 1);
        assert!(matches!(
            t.frame(BASE - 1),
            Err(FrameError::OutOfTable { .. })
        ));
        assert!(matches!(
            t.frame(BASE + 4 * 4096),
            Err(FrameError::OutOfTable { .. })
        ));
        let frames: Vec<_> = t.frames_at_offset(4095, 2).unwrap().collect();
        assert_eq!(frames.len(), 2);
        assert!(t.frames_at_offset(3 * 4096, 4097).is_err());
        assert!(t.frames_at_offset(u64::MAX, 2).is_err());
    }

    #[test]
    fn lifecycle_frees_only_at_zero() {
        let mut t = FrameTable::new(BASE, 4 * 4096).unwrap();
        let f = t.frame(BASE).unwrap();
        let fs = Owner::Filesystem(0);
        t.claim(f, fs).unwrap();
        assert_eq!(t.free_frames(), 3);
        assert_eq!(t.get(f, fs), Ok(2));
        assert_eq!(t.put(f, fs), Ok(1));
        assert_eq!(t.entry(f).unwrap().owner, fs, "still held at one");
        assert!(matches!(
            t.claim(f, Owner::Device(0)),
            Err(FrameError::NotFree { .. })
        ));
        assert_eq!(t.put(f, fs), Ok(0));
        assert_eq!(
            t.entry(f).unwrap(),
            FrameEntry {
                refcount: 0,
                owner: Owner::Free
            }
        );
        assert_eq!(t.free_frames(), 4);
        assert_eq!(t.put(f, fs), Err(FrameError::Underflow { frame: f }));
        assert_eq!(t.get(f, fs), Err(FrameError::Underflow { frame: f }));
        t.claim(f, Owner::Device(1)).unwrap();
        assert!(matches!(t.put(f, fs), Err(FrameError::WrongOwner { .. })));
        assert_eq!(t.claim(f, Owner::Free), Err(FrameError::FreeIsNotAnOwner));
    }

    #[test]
    fn overflow_is_an_error() {
        let mut t = FrameTable::new(BASE, 4096).unwrap();
        let f = t.frame(BASE).unwrap();
        t.claim(f, Owner::Mapping(3)).unwrap();
        t.refcounts[0] = u32::MAX - 1;
        assert_eq!(t.get(f, Owner::Mapping(3)), Ok(u32::MAX));
        assert_eq!(
            t.get(f, Owner::Mapping(3)),
            Err(FrameError::Overflow { frame: f })
        );
        assert_eq!(t.entry(f).unwrap().refcount, u32::MAX);
    }

    #[test]
    fn claim_range_is_all_or_nothing() {
        let mut t = FrameTable::new(BASE, 8 * 4096).unwrap();
        t.claim(t.frame(BASE + 5 * 4096).unwrap(), Owner::Reserved)
            .unwrap();
        assert!(t.claim_range(0, 8 * 4096, Owner::Device(0)).is_err());
        assert_eq!(t.free_frames(), 7, "nothing claimed on failure");
        t.claim_range(0, 5 * 4096, Owner::Device(0)).unwrap();
        let s = t.stats();
        assert_eq!((s.device, s.reserved, s.free, s.references), (5, 1, 2, 6));
    }

    #[test]
    fn release_range_undoes_a_claim_all_or_nothing() {
        let mut t = FrameTable::new(BASE, 8 * 4096).unwrap();
        let fs = Owner::Filesystem(0);
        t.claim_range(0, 8 * 4096, fs).unwrap();
        // Someone else's claim, and a frame with an extra reference.
        assert_eq!(
            t.release_range(0, 8 * 4096, Owner::Device(0)),
            Err(FrameError::WrongOwner {
                frame: t.frame(BASE).unwrap(),
                owner: fs,
                caller: Owner::Device(0)
            })
        );
        let f = t.frame(BASE + 3 * 4096).unwrap();
        t.get(f, fs).unwrap();
        assert_eq!(
            t.release_range(0, 8 * 4096, fs),
            Err(FrameError::InUse {
                frame: f,
                references: 2
            })
        );
        assert_eq!(t.free_frames(), 0, "nothing released on failure");
        t.put(f, fs).unwrap();
        t.release_range(0, 8 * 4096, fs).unwrap();
        assert_eq!(t.free_frames(), 8);
        t.claim_range(0, 8 * 4096, Owner::Device(0)).unwrap();
    }

    #[test]
    fn allocate_until_exhausted_then_reuse() {
        let mut t = FrameTable::new(BASE, 3 * 4096).unwrap();
        let owner = Owner::Filesystem(2);
        let a = t.allocate(owner).unwrap();
        let b = t.allocate(owner).unwrap();
        let c = t.allocate(owner).unwrap();
        assert!(a != b && b != c && a != c);
        assert_eq!(t.allocate(owner), Err(FrameError::Exhausted));
        t.put(b, owner).unwrap();
        assert_eq!(t.allocate(owner), Ok(b));
    }

    #[test]
    fn owner_encoding_round_trips() {
        for owner in [
            Owner::Free,
            Owner::Device(0),
            Owner::Device(255),
            Owner::Filesystem(7),
            Owner::Mapping(9),
            Owner::Reserved,
        ] {
            assert_eq!(Owner::decode(owner.encode()), owner);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim(usize, u8),
        Get(usize, u8),
        Put(usize, u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..8, 0u8..2).prop_map(|(f, o)| Op::Claim(f, o)),
            (0usize..8, 0u8..2).prop_map(|(f, o)| Op::Get(f, o)),
            (0usize..8, 0u8..2).prop_map(|(f, o)| Op::Put(f, o)),
        ]
    }

    proptest! {
        /// The table agrees with a simple model after any operation
        /// sequence, and refcount zero always means free.
        #[test]
        fn matches_model(ops in proptest::collection::vec(arb_op(), 0..200)) {
            let mut t = FrameTable::new(BASE, 8 * 4096).unwrap();
            let mut model: [(u32, Option<u8>); 8] = [(0, None); 8];
            for op in ops {
                match op {
                    Op::Claim(i, o) => {
                        let r = t.claim(t.frame(BASE + i as u64 * 4096).unwrap(), Owner::Device(o));
                        prop_assert_eq!(r.is_ok(), model[i].1.is_none());
                        if r.is_ok() { model[i] = (1, Some(o)); }
                    }
                    Op::Get(i, o) => {
                        let r = t.get(t.frame(BASE + i as u64 * 4096).unwrap(), Owner::Device(o));
                        prop_assert_eq!(r.is_ok(), model[i].1 == Some(o));
                        if r.is_ok() { model[i].0 += 1; }
                    }
                    Op::Put(i, o) => {
                        let r = t.put(t.frame(BASE + i as u64 * 4096).unwrap(), Owner::Device(o));
                        prop_assert_eq!(r.is_ok(), model[i].1 == Some(o));
                        if r.is_ok() {
                            model[i].0 -= 1;
                            if model[i].0 == 0 { model[i].1 = None; }
                        }
                    }
                }
            }
            let mut free = 0;
            for (i, (count, owner)) in model.iter().enumerate() {
                let e = t.entry(t.frame(BASE + i as u64 * 4096).unwrap()).unwrap();
                prop_assert_eq!(e.refcount, *count);
                prop_assert_eq!(e.owner, owner.map_or(Owner::Free, Owner::Device));
                prop_assert_eq!(e.refcount == 0, e.owner == Owner::Free);
                if owner.is_none() { free += 1; }
            }
            prop_assert_eq!(t.free_frames(), free);
            prop_assert_eq!(t.stats().free, free);
        }
    }
}
