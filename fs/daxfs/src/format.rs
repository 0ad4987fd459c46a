//! On-media structures of daxfs, exactly as FORMAT.md describes them.
//!
//! Every structure is encoded and decoded explicitly, field by field, in
//! little-endian order (FORMAT.md "Conventions"); the compile-time asserts
//! below pin each layout so that a field added in the wrong place fails the
//! build instead of silently moving another field.

use alloc::string::String;
use alloc::vec::Vec;

/// Size of a filesystem block (FORMAT.md "Geometry").
pub const BLOCK_SIZE: u64 = 4096;
/// Blocks in one 2 MiB huge-page chunk.
pub const CHUNK_BLOCKS: u64 = 512;
/// Bytes in one 2 MiB huge-page chunk.
pub const CHUNK_SIZE: u64 = CHUNK_BLOCKS * BLOCK_SIZE;

/// Superblock magic: the first eight bytes of block 0 (and block 1).
pub const SUPER_MAGIC: [u8; 8] = *b"DAXBOXFS";
/// The newest on-media format version this code reads and writes
/// (FORMAT.md "Compatibility rules": version 2 added orphan records,
/// version 3 layered extent lists, version 4 the initialised table
/// prefix; version 1 to 3 images are read as they are, and upgraded when a
/// feature of a later version is first used).
pub const FORMAT_VERSION: u32 = 4;
/// The first format version whose superblock records how much of the file
/// table is initialised (FORMAT.md "Initialised table prefix").
pub const TABLE_PREFIX_VERSION: u32 = 4;
/// File table blocks format initialises, and the most one extension of
/// the initialised prefix adds (FORMAT.md "Initialised table prefix"):
/// 256 KiB, 512 records.
pub const TABLE_BATCH_BLOCKS: u64 = 64;
/// The first format version with layered extent lists (FORMAT.md
/// "Layered extent lists").
pub const LAYERED_VERSION: u32 = 3;
/// The first format version with orphan records (FORMAT.md "Orphans").
pub const ORPHAN_VERSION: u32 = 2;
/// Bytes of the superblock structure covered by its checksum.
pub const SUPER_SIZE: usize = 128;
/// Offset, inside block 0, of the 8-byte clean/dirty state word.
pub const STATE_WORD_OFFSET: u64 = 256;
/// State word value of a cleanly unmounted filesystem.
pub const STATE_CLEAN: u64 = 0x4E41_454C_4358_4144; // "DAXCLEAN"
/// State word value of a mounted (or crashed) filesystem.
pub const STATE_DIRTY: u64 = 0x5954_5249_4458_4144; // "DAXDIRTY"

/// Size of one file record in the file table.
pub const RECORD_SIZE: usize = 512;
/// Records per block.
pub const RECORDS_PER_BLOCK: u64 = BLOCK_SIZE / RECORD_SIZE as u64;
/// Magic of a file record that has ever been used.
pub const RECORD_MAGIC: u32 = 0x5246_5844; // "DXFR"
/// Record flag: the record describes a live file.
pub const RECORD_IN_USE: u32 = 1;
/// Record flag (with [`RECORD_IN_USE`]): the file's name was removed while
/// it was open; the record keeps its data until the last close or the next
/// mount (FORMAT.md "Orphans").
pub const RECORD_ORPHAN: u32 = 2;
/// Record flag (with [`RECORD_IN_USE`]): the extent list is layered, later
/// entries hidden by earlier ones; the inline entry count is at offset 40
/// and the chain's indexes count from its last block (FORMAT.md "Layered
/// extent lists", version 3).
pub const RECORD_LAYERED: u32 = 4;
/// Longest file name in bytes.
pub const MAX_NAME: usize = 255;
/// Extents stored inside the record itself.
pub const INLINE_EXTENTS: usize = 12;
/// Size of one encoded extent.
pub const EXTENT_SIZE: usize = 16;
const RECORD_NAME_OFFSET: usize = 64;
const RECORD_EXTENTS_OFFSET: usize = RECORD_NAME_OFFSET + 256;
const _: () = assert!(RECORD_EXTENTS_OFFSET + INLINE_EXTENTS * EXTENT_SIZE == RECORD_SIZE);
const _: () = assert!((BLOCK_SIZE as usize).is_multiple_of(RECORD_SIZE));

/// Magic of an overflow extent block.
pub const OVERFLOW_MAGIC: u32 = 0x4F46_5844; // "DXFO"
const OVERFLOW_HEADER: usize = 32;
/// Extents in one overflow block.
pub const OVERFLOW_EXTENTS: usize = (BLOCK_SIZE as usize - OVERFLOW_HEADER) / EXTENT_SIZE;
const _: () = assert!(OVERFLOW_HEADER + OVERFLOW_EXTENTS * EXTENT_SIZE == BLOCK_SIZE as usize);

/// Magic of the journal header.
pub const JOURNAL_MAGIC: u32 = 0x4C4A_5844; // "DXJL"
/// Offset of the journal header inside the journal block (the commit word
/// sits alone at offset 0, in its own cache line).
pub const JOURNAL_HEADER_OFFSET: u64 = 64;
/// Size of the journal header.
pub const JOURNAL_HEADER_SIZE: usize = 24;
/// Offset of the first journal entry inside the journal block.
pub const JOURNAL_ENTRIES_OFFSET: u64 = 128;
/// Size of one journal entry: slot number, padding, a whole record.
pub const JOURNAL_ENTRY_SIZE: usize = 8 + RECORD_SIZE;
/// Blocks reserved for the journal.
pub const JOURNAL_BLOCKS: u64 = 1;
/// Most records one transaction can change.
pub const JOURNAL_MAX_ENTRIES: usize =
    (JOURNAL_BLOCKS * BLOCK_SIZE - JOURNAL_ENTRIES_OFFSET) as usize / JOURNAL_ENTRY_SIZE;
const _: () = assert!(JOURNAL_MAX_ENTRIES >= 2);

/// Largest file size: logical block numbers and extent lengths are 32-bit
/// on media, and preallocation may round the last extent up to a 2 MiB
/// boundary, which must still fit.
pub const MAX_FILE_SIZE: u64 = ((1u64 << 32) - CHUNK_BLOCKS) * BLOCK_SIZE;

static CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of `bytes` with the four bytes at `skip..skip + 4` read as zero
/// (the checksum field itself).
pub fn checksum_skipping(bytes: &[u8], skip: usize) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(&bytes[..skip]);
    digest.update(&[0; 4]);
    digest.update(&bytes[skip + 4..]);
    digest.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// The superblock (FORMAT.md "Superblock").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Format version that wrote the image.
    pub version: u32,
    /// Filesystem identity.
    pub uuid: [u8; 16],
    /// Blocks in the filesystem (the region may be longer).
    pub total_blocks: u64,
    /// First journal block.
    pub journal_start: u64,
    /// Journal length in blocks.
    pub journal_blocks: u64,
    /// First file table block.
    pub table_start: u64,
    /// File table length in blocks.
    pub table_blocks: u64,
    /// File records in the table.
    pub max_files: u32,
    /// First block of the data area.
    pub data_start: u64,
    /// File table blocks (from `table_start`) that are initialised: every
    /// record beyond them is never-used and is not read (FORMAT.md
    /// "Initialised table prefix"). `table_blocks` before version 4.
    pub table_init_blocks: u64,
}

/// Why a superblock copy was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperError {
    /// Every byte is zero: nothing was ever formatted here.
    Blank,
    /// The magic is not ours.
    Foreign,
    /// Written by a newer format version.
    Newer(u32),
    /// Checksum mismatch.
    Checksum,
    /// Fields contradict each other; the text says which.
    Geometry(&'static str),
}

impl Superblock {
    /// Slots in the initialised table prefix: every slot from here on is
    /// never-used without reading it (FORMAT.md "Initialised table
    /// prefix").
    pub fn init_slots(&self) -> u32 {
        // At most max_files, a u32.
        (self.table_init_blocks.saturating_mul(RECORDS_PER_BLOCK)).min(self.max_files as u64) as u32
    }

    /// Encodes into the 128-byte on-media form, checksum included.
    pub fn encode(&self) -> [u8; SUPER_SIZE] {
        let mut b = [0u8; SUPER_SIZE];
        b[0..8].copy_from_slice(&SUPER_MAGIC);
        put_u32(&mut b, 8, self.version);
        put_u32(&mut b, 12, BLOCK_SIZE as u32);
        b[16..32].copy_from_slice(&self.uuid);
        put_u64(&mut b, 32, self.total_blocks);
        put_u64(&mut b, 40, self.journal_start);
        put_u64(&mut b, 48, self.journal_blocks);
        put_u64(&mut b, 56, self.table_start);
        put_u64(&mut b, 64, self.table_blocks);
        put_u32(&mut b, 72, self.max_files);
        put_u32(&mut b, 76, RECORD_SIZE as u32);
        put_u64(&mut b, 80, self.data_start);
        // 88..92 incompatible feature bits (none defined); 96..104 the
        // initialised table prefix from version 4 (reserved, zero, before);
        // 104..128 reserved.
        if self.version >= TABLE_PREFIX_VERSION {
            put_u64(&mut b, 96, self.table_init_blocks);
        }
        let crc = checksum_skipping(&b, 92);
        put_u32(&mut b, 92, crc);
        b
    }

    /// Decodes and validates one superblock copy. Geometry checks only look
    /// at the superblock itself; the caller checks it against the region.
    pub fn decode(b: &[u8; SUPER_SIZE]) -> Result<Self, SuperError> {
        if b.iter().all(|&x| x == 0) {
            return Err(SuperError::Blank);
        }
        if b[0..8] != SUPER_MAGIC {
            return Err(SuperError::Foreign);
        }
        let version = u32_at(b, 8);
        if version > FORMAT_VERSION {
            return Err(SuperError::Newer(version));
        }
        if checksum_skipping(b, 92) != u32_at(b, 92) {
            return Err(SuperError::Checksum);
        }
        if version == 0 {
            return Err(SuperError::Geometry("format version 0 does not exist"));
        }
        if u32_at(b, 12) != BLOCK_SIZE as u32 {
            return Err(SuperError::Geometry("block size is not 4096"));
        }
        if u32_at(b, 76) != RECORD_SIZE as u32 {
            return Err(SuperError::Geometry("file record size is not 512"));
        }
        if u32_at(b, 88) != 0 {
            return Err(SuperError::Geometry("unknown incompatible feature bits"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            version,
            uuid,
            total_blocks: u64_at(b, 32),
            journal_start: u64_at(b, 40),
            journal_blocks: u64_at(b, 48),
            table_start: u64_at(b, 56),
            table_blocks: u64_at(b, 64),
            max_files: u32_at(b, 72),
            data_start: u64_at(b, 80),
            table_init_blocks: if version >= TABLE_PREFIX_VERSION {
                u64_at(b, 96)
            } else {
                // Versions 1 to 3 initialise the whole table at format.
                u64_at(b, 64)
            },
        };
        sb.check_geometry().map_err(SuperError::Geometry)?;
        Ok(sb)
    }

    /// The layout rules of FORMAT.md "Geometry".
    pub fn check_geometry(&self) -> Result<(), &'static str> {
        if self.journal_start != 2 || self.journal_blocks != JOURNAL_BLOCKS {
            return Err("journal is not at block 2 or has the wrong length");
        }
        if self.table_start != self.journal_start + self.journal_blocks {
            return Err("file table does not follow the journal");
        }
        if self.max_files == 0 {
            return Err("file table holds no records");
        }
        let needed = (self.max_files as u64).div_ceil(RECORDS_PER_BLOCK);
        if self.table_blocks != needed {
            return Err("file table length does not match the record count");
        }
        let table_end = self
            .table_start
            .checked_add(self.table_blocks)
            .ok_or("file table overflows")?;
        if self.data_start < table_end {
            return Err("data area overlaps the file table");
        }
        if self.table_init_blocks == 0 || self.table_init_blocks > self.table_blocks {
            return Err("initialised file table prefix is empty or longer than the table");
        }
        if self.version < TABLE_PREFIX_VERSION && self.table_init_blocks != self.table_blocks {
            return Err("file table prefix before version 4 is not the whole table");
        }
        if self.data_start >= self.total_blocks {
            return Err("no data area");
        }
        if self.total_blocks.checked_mul(BLOCK_SIZE).is_none() {
            return Err("filesystem size overflows");
        }
        Ok(())
    }
}

/// One extent: `len` file blocks from `logical` map to region blocks from
/// `physical` (FORMAT.md "Extents").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First file block.
    pub logical: u64,
    /// Length in blocks (non-zero).
    pub len: u64,
    /// First region block.
    pub physical: u64,
}

fn encode_extent(out: &mut [u8], e: &Extent) {
    // The caller guarantees logical + len <= u32::MAX (MAX_FILE_SIZE).
    put_u32(out, 0, e.logical as u32);
    put_u32(out, 4, e.len as u32);
    put_u64(out, 8, e.physical);
}

fn decode_extent(b: &[u8]) -> Extent {
    Extent {
        logical: u32_at(b, 0) as u64,
        len: u32_at(b, 4) as u64,
        physical: u64_at(b, 8),
    }
}

/// A decoded file record (FORMAT.md "File records").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// True for a live file, false for a free slot.
    pub in_use: bool,
    /// A live file whose name was removed while it was open (its name is
    /// empty); FORMAT.md "Orphans".
    pub orphan: bool,
    /// Incremented each time the slot is reused; part of the FileId.
    pub generation: u32,
    /// File name (empty for a free slot).
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Total extents (inline + overflow).
    pub extent_count: u32,
    /// Overflow blocks in the chain.
    pub overflow_count: u32,
    /// First overflow block, 0 when none.
    pub overflow_first: u64,
    /// Inline extents (at most INLINE_EXTENTS).
    pub inline: Vec<Extent>,
    /// The extent list is layered (FORMAT.md "Layered extent lists"):
    /// `inline` holds exactly the inline entries, which may be fewer than
    /// 12 while a chain follows.
    pub layered: bool,
}

/// A [`Record`] borrowed from wherever its parts live, so that a commit
/// encodes a file's record without copying its name and inline extents
/// first (issue 17: one record is encoded per copy-on-write).
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// See [`Record::in_use`].
    pub in_use: bool,
    /// See [`Record::orphan`].
    pub orphan: bool,
    /// See [`Record::generation`].
    pub generation: u32,
    /// See [`Record::name`].
    pub name: &'a str,
    /// See [`Record::size`].
    pub size: u64,
    /// See [`Record::extent_count`].
    pub extent_count: u32,
    /// See [`Record::overflow_count`].
    pub overflow_count: u32,
    /// See [`Record::overflow_first`].
    pub overflow_first: u64,
    /// See [`Record::inline`].
    pub inline: &'a [Extent],
    /// See [`Record::layered`].
    pub layered: bool,
}

impl RecordView<'_> {
    /// Encodes the record with its checksum (FORMAT.md "File records").
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        put_u32(&mut b, 0, RECORD_MAGIC);
        let flags = match (self.in_use, self.orphan) {
            (false, _) => 0,
            (true, false) => RECORD_IN_USE,
            (true, true) => RECORD_IN_USE | RECORD_ORPHAN,
        };
        let flags = if self.in_use && self.layered {
            flags | RECORD_LAYERED
        } else {
            flags
        };
        put_u32(&mut b, 4, flags);
        if self.in_use && self.layered {
            // At most INLINE_EXTENTS are ever kept inline.
            put_u32(&mut b, 40, self.inline.len().min(INLINE_EXTENTS) as u32);
        }
        put_u32(&mut b, 8, self.generation);
        // Names are validated to at most 255 bytes before they get here.
        put_u32(&mut b, 12, self.name.len() as u32);
        put_u64(&mut b, 16, self.size);
        put_u32(&mut b, 24, self.extent_count);
        put_u32(&mut b, 28, self.overflow_count);
        put_u64(&mut b, 32, self.overflow_first);
        b[RECORD_NAME_OFFSET..RECORD_NAME_OFFSET + self.name.len()]
            .copy_from_slice(self.name.as_bytes());
        for (i, e) in self.inline.iter().take(INLINE_EXTENTS).enumerate() {
            let at = RECORD_EXTENTS_OFFSET + i * EXTENT_SIZE;
            encode_extent(&mut b[at..at + EXTENT_SIZE], e);
        }
        // The checksum field is still zero; the rest of the name area and
        // the unused extent slots are zero too.
        let inline = self.inline.len().min(INLINE_EXTENTS);
        let crc = checksum_sparse(
            &b,
            &[
                (0, RECORD_NAME_OFFSET + self.name.len()),
                (
                    RECORD_EXTENTS_OFFSET,
                    RECORD_EXTENTS_OFFSET + inline * EXTENT_SIZE,
                ),
            ],
        );
        debug_assert_eq!(crc, checksum_skipping(&b, 60));
        put_u32(&mut b, 60, crc);
        b
    }
}

/// Why a record failed to decode.
pub type RecordError = &'static str;

impl Record {
    /// A free slot that remembers its generation.
    pub fn free(generation: u32) -> Self {
        Record {
            in_use: false,
            orphan: false,
            generation,
            name: String::new(),
            size: 0,
            extent_count: 0,
            overflow_count: 0,
            overflow_first: 0,
            inline: Vec::new(),
            layered: false,
        }
    }

    /// Encodes into 512 bytes with the checksum.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        RecordView {
            in_use: self.in_use,
            orphan: self.orphan,
            generation: self.generation,
            name: &self.name,
            size: self.size,
            extent_count: self.extent_count,
            overflow_count: self.overflow_count,
            overflow_first: self.overflow_first,
            inline: &self.inline,
            layered: self.layered,
        }
        .encode()
    }

    /// Decodes a record; `Ok(None)` for an all-zero (never used) slot.
    pub fn decode(b: &[u8]) -> Result<Option<Self>, RecordError> {
        if b.len() != RECORD_SIZE {
            return Err("record has the wrong length");
        }
        // A slice comparison (memcmp): the mount scan calls this for every
        // slot of the table, most of them never used.
        if b == [0u8; RECORD_SIZE] {
            return Ok(None);
        }
        if u32_at(b, 0) != RECORD_MAGIC {
            return Err("bad record magic");
        }
        if checksum_skipping(b, 60) != u32_at(b, 60) {
            return Err("record checksum mismatch");
        }
        let flags = u32_at(b, 4);
        if flags & !(RECORD_IN_USE | RECORD_ORPHAN | RECORD_LAYERED) != 0 {
            return Err("unknown record flags");
        }
        let in_use = flags & RECORD_IN_USE != 0;
        let orphan = flags & RECORD_ORPHAN != 0;
        if orphan && !in_use {
            return Err("orphan flag on a free record");
        }
        let name_len = u32_at(b, 12) as usize;
        if name_len > MAX_NAME {
            return Err("name longer than 255 bytes");
        }
        let name_bytes = &b[RECORD_NAME_OFFSET..RECORD_NAME_OFFSET + name_len];
        let name = core::str::from_utf8(name_bytes).map_err(|_| "name is not UTF-8")?;
        if in_use && !orphan && !valid_name(name) {
            return Err("invalid file name");
        }
        if orphan && name_len != 0 {
            return Err("orphan record carries a name");
        }
        let layered = flags & RECORD_LAYERED != 0;
        if layered && !in_use {
            return Err("layered flag on a free record");
        }
        let extent_count = u32_at(b, 24);
        let inline_count = if layered {
            let n = u32_at(b, 40);
            if n as usize > INLINE_EXTENTS || n > extent_count {
                return Err("inline entry count out of range");
            }
            n as usize
        } else {
            if u32_at(b, 40) != 0 {
                return Err("reserved record field is not zero");
            }
            (extent_count as usize).min(INLINE_EXTENTS)
        };
        let inline = (0..inline_count)
            .map(|i| {
                let at = RECORD_EXTENTS_OFFSET + i * EXTENT_SIZE;
                decode_extent(&b[at..at + EXTENT_SIZE])
            })
            .collect();
        let record = Record {
            in_use,
            orphan,
            generation: u32_at(b, 8),
            name: String::from(name),
            size: u64_at(b, 16),
            extent_count,
            overflow_count: u32_at(b, 28),
            overflow_first: u64_at(b, 32),
            inline,
            layered,
        };
        if !in_use
            && (name_len != 0
                || record.size != 0
                || extent_count != 0
                || record.overflow_first != 0)
        {
            return Err("free record carries file data");
        }
        if record.size > MAX_FILE_SIZE {
            return Err("file size beyond the format limit");
        }
        let in_chain = extent_count as usize - inline_count;
        let blocks = record.overflow_count as usize;
        if layered {
            // Each chain block holds 1..=OVERFLOW_EXTENTS entries.
            if (blocks == 0) != (in_chain == 0)
                || blocks > in_chain
                || in_chain > blocks.saturating_mul(OVERFLOW_EXTENTS)
            {
                return Err("overflow block count does not match the extent count");
            }
        } else if blocks != in_chain.div_ceil(OVERFLOW_EXTENTS) {
            return Err("overflow block count does not match the extent count");
        }
        if (blocks == 0) != (record.overflow_first == 0) {
            return Err("overflow pointer does not match the extent count");
        }
        Ok(Some(record))
    }
}

/// True when `name` is a legal file name: 1..=255 bytes, no NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && !name.as_bytes().contains(&0)
}

/// A decoded overflow extent block (FORMAT.md "Overflow extent blocks").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverflowBlock {
    /// Slot of the owning record.
    pub owner_slot: u32,
    /// Generation of the owning record.
    pub owner_generation: u32,
    /// Position in the chain, from 0.
    pub index: u32,
    /// Next block of the chain, 0 at the end.
    pub next: u64,
    /// The extents.
    pub extents: Vec<Extent>,
}

impl OverflowBlock {
    /// Encodes into a whole block with the checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = alloc::vec![0u8; BLOCK_SIZE as usize];
        put_u32(&mut b, 0, OVERFLOW_MAGIC);
        put_u32(&mut b, 8, self.owner_slot);
        put_u32(&mut b, 12, self.owner_generation);
        put_u32(&mut b, 16, self.index);
        // At most OVERFLOW_EXTENTS extents are ever put in one block.
        put_u32(&mut b, 20, self.extents.len() as u32);
        put_u64(&mut b, 24, self.next);
        let used = self.extents.len().min(OVERFLOW_EXTENTS);
        for (i, e) in self.extents.iter().take(OVERFLOW_EXTENTS).enumerate() {
            let at = OVERFLOW_HEADER + i * EXTENT_SIZE;
            encode_extent(&mut b[at..at + EXTENT_SIZE], e);
        }
        // The checksum field is still zero, and so are the unused slots.
        let crc = checksum_sparse(&b, &[(0, OVERFLOW_HEADER + used * EXTENT_SIZE)]);
        debug_assert_eq!(crc, checksum_skipping(&b, 4));
        put_u32(&mut b, 4, crc);
        b
    }

    /// Decodes and checks one overflow block.
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() != BLOCK_SIZE as usize {
            return Err("overflow block has the wrong length");
        }
        if u32_at(b, 0) != OVERFLOW_MAGIC {
            return Err("bad overflow block magic");
        }
        if checksum_skipping(b, 4) != u32_at(b, 4) {
            return Err("overflow block checksum mismatch");
        }
        let count = u32_at(b, 20) as usize;
        if count == 0 || count > OVERFLOW_EXTENTS {
            return Err("overflow block extent count out of range");
        }
        Ok(OverflowBlock {
            owner_slot: u32_at(b, 8),
            owner_generation: u32_at(b, 12),
            index: u32_at(b, 16),
            next: u64_at(b, 24),
            extents: (0..count)
                .map(|i| {
                    let at = OVERFLOW_HEADER + i * EXTENT_SIZE;
                    decode_extent(&b[at..at + EXTENT_SIZE])
                })
                .collect(),
        })
    }
}

/// The journal header (FORMAT.md "Journal").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    /// Transaction sequence number; equals the commit word when committed.
    pub sequence: u64,
    /// Entries that follow.
    pub entries: u32,
    /// CRC-32C of the header (this field zero) and all entries.
    pub crc: u32,
}

impl JournalHeader {
    /// Encodes the header; `crc` must already be computed.
    pub fn encode(&self) -> [u8; JOURNAL_HEADER_SIZE] {
        let mut b = [0u8; JOURNAL_HEADER_SIZE];
        put_u32(&mut b, 0, JOURNAL_MAGIC);
        put_u32(&mut b, 4, self.entries);
        put_u64(&mut b, 8, self.sequence);
        put_u32(&mut b, 16, self.crc);
        b
    }

    /// Decodes the header (the checksum is checked by the caller, which
    /// has the entries).
    pub fn decode(b: &[u8; JOURNAL_HEADER_SIZE]) -> Result<Self, &'static str> {
        if u32_at(b, 0) != JOURNAL_MAGIC {
            return Err("bad journal magic");
        }
        let entries = u32_at(b, 4);
        if entries as usize > JOURNAL_MAX_ENTRIES {
            return Err("journal entry count out of range");
        }
        Ok(JournalHeader {
            entries,
            sequence: u64_at(b, 8),
            crc: u32_at(b, 16),
        })
    }
}

/// Checksum of a journal transaction: header with crc zero, then entries.
pub fn journal_checksum(header: &JournalHeader, entries: &[u8]) -> u32 {
    let mut h = *header;
    h.crc = 0;
    let mut digest = CRC32C.digest();
    digest.update(&h.encode());
    digest.update(entries);
    digest.finalize()
}

/// CRC-32C's polynomial, bit-reflected (as `crc::CRC_32_ISCSI` uses it).
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the CRC-32C polynomial, both in the reflected bit order
/// of the CRC register (bit 31 is x^0), as zlib's `multmodp`.
const fn crc_mult(a: u32, mut b: u32) -> u32 {
    // Branch-free (the bits of `a` are as good as random): 32 steps of a
    // few instructions each.
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        let bit = (a >> (31 - i)) & 1;
        p ^= b & 0u32.wrapping_sub(bit);
        b = (b >> 1) ^ (CRC32C_POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    p
}

/// x^(8 * `bytes`) modulo the polynomial (reflected): what appending
/// `bytes` bytes multiplies a CRC register by.
const fn crc_shift_of(bytes: usize) -> u32 {
    // x^1 in reflected order, squared k times gives x^(2^k).
    let mut power = 1u32 << 30;
    let mut result = 1u32 << 31; // x^0
    let mut n = bytes * 8;
    while n > 0 {
        if n & 1 != 0 {
            result = crc_mult(power, result);
        }
        power = crc_mult(power, power);
        n >>= 1;
    }
    result
}

/// CRC-32C of `A || B` from `crc(A)`, `crc(B)` and `B`'s length, where
/// `shift` is [`crc_shift_of`] of that length (zlib's `crc32_combine`).
const fn crc_combine(crc_a: u32, crc_b: u32, shift: u32) -> u32 {
    crc_mult(shift, crc_a) ^ crc_b
}

/// `ZERO_SHIFT[k]` = [`crc_shift_of`]`(k)`, for appending `k` zero bytes
/// (k up to a block) in one multiplication instead of hashing them.
static ZERO_SHIFT: [u32; BLOCK_SIZE as usize + 1] = {
    let mut t = [0u32; BLOCK_SIZE as usize + 1];
    let one_byte = crc_shift_of(1);
    t[0] = 1 << 31;
    let mut k = 1;
    while k < t.len() {
        t[k] = crc_mult(one_byte, t[k - 1]);
        k += 1;
    }
    t
};

/// CRC-32C of `bytes` whose bytes outside `dense` (sorted, disjoint byte
/// ranges) are all zero: the dense ranges are hashed, each zero run is
/// one multiplication (issue 17: a record is mostly an empty name and
/// unused extent slots, an overflow block often half empty). `bytes` is
/// at most a block long.
fn checksum_sparse(bytes: &[u8], dense: &[(usize, usize)]) -> u32 {
    debug_assert!(bytes.len() <= BLOCK_SIZE as usize);
    // CRC of the empty message; `A || 0^k` and `A || B` from `crc(A)`.
    let mut crc = 0u32;
    let mut at = 0;
    let zeros = |crc: u32, k: usize| crc_mult(ZERO_SHIFT[k], crc ^ !0) ^ !0;
    for &(start, end) in dense {
        if start > at {
            crc = zeros(crc, start - at);
        }
        let part = CRC32C.checksum(&bytes[start..end]);
        crc = if at == 0 && start == 0 {
            part
        } else {
            crc_combine(crc, part, ZERO_SHIFT[end - start])
        };
        at = end;
    }
    if bytes.len() > at {
        crc = zeros(crc, bytes.len() - at);
    }
    crc
}

/// Multiplication by one fixed `shift` as four byte-indexed tables
/// (4 KiB): `crc_mult(shift, v)` in four lookups instead of 32 steps.
struct MulTable([[u32; 256]; 4]);

impl MulTable {
    const fn new(shift: u32) -> Self {
        let mut t = [[0u32; 256]; 4];
        let mut byte = 0;
        while byte < 4 {
            let mut v = 0;
            while v < 256 {
                t[byte][v] = crc_mult(shift, (v as u32) << (8 * byte));
                v += 1;
            }
            byte += 1;
        }
        MulTable(t)
    }

    fn mult(&self, v: u32) -> u32 {
        let t = &self.0;
        t[0][(v & 0xFF) as usize]
            ^ t[1][((v >> 8) & 0xFF) as usize]
            ^ t[2][((v >> 16) & 0xFF) as usize]
            ^ t[3][(v >> 24) as usize]
    }
}

/// Appending a journal entry's slot field (slot and 4 zero bytes).
static SHIFT_SLOT: MulTable = MulTable::new(crc_shift_of(8));
/// Appending one record.
static SHIFT_RECORD: MulTable = MulTable::new(crc_shift_of(RECORD_SIZE));
/// From a record's checksum field (offset 60) to the record's end: the
/// 4 bytes of the field and the 448 after it.
static SHIFT_RECORD_FIELD: MulTable = MulTable::new(crc_shift_of(RECORD_SIZE - 60));

/// CRC-32C of an encoded record *with* its checksum field filled in,
/// from that field alone. CRC-32C is affine: the record with the field
/// filled is the record with the field zero (whose CRC the field holds)
/// XOR a message that is zero except for the field, whose CRC without
/// initial value or final XOR is the field times x^(8 * 452).
fn record_crc_with_field(record: &[u8; RECORD_SIZE]) -> u32 {
    let field = u32_at(record, 60);
    field ^ SHIFT_RECORD_FIELD.mult(field)
}

/// [`journal_checksum`] of a transaction of encoded `records` (each with
/// its target slot), without hashing the records again: each record's
/// own checksum field already sums it up, so only the header and the slot
/// fields are hashed (issue 17: this halves the checksum work of a
/// one-record commit).
pub fn journal_checksum_of_records(
    header: &JournalHeader,
    records: &[(u32, [u8; RECORD_SIZE])],
) -> u32 {
    let mut h = *header;
    h.crc = 0;
    let mut crc = CRC32C.checksum(&h.encode());
    for (slot, record) in records {
        let mut field = [0u8; 8];
        put_u32(&mut field, 0, *slot);
        crc = SHIFT_SLOT.mult(crc) ^ CRC32C.checksum(&field);
        crc = SHIFT_RECORD.mult(crc) ^ record_crc_with_field(record);
    }
    crc
}

/// Encodes a journal entry: target slot + the new record bytes.
pub fn encode_journal_entry(slot: u32, record: &[u8; RECORD_SIZE]) -> [u8; JOURNAL_ENTRY_SIZE] {
    let mut b = [0u8; JOURNAL_ENTRY_SIZE];
    put_u32(&mut b, 0, slot);
    b[8..].copy_from_slice(record);
    b
}

/// Decodes a journal entry into its slot and record bytes.
pub fn decode_journal_entry(b: &[u8]) -> (u32, &[u8]) {
    (u32_at(b, 0), &b[8..JOURNAL_ENTRY_SIZE])
}

// ----- Crafting images held as bytes -----
//
// For tests, the fuzz harness and tools that build or damage images on
// purpose: the same encoders mount decodes with, at the offsets the
// superblock gives. Each panics on an image with no superblock copy that
// decodes, or that is too short for what it touches.

/// The superblock of `image`: the primary copy, or the backup when the
/// primary does not decode (as mount chooses).
pub fn image_superblock(image: &[u8]) -> Superblock {
    let copy = |at: usize| {
        let bytes: &[u8; SUPER_SIZE] = image[at..at + SUPER_SIZE]
            .try_into()
            .expect("an image holds both superblock copies");
        Superblock::decode(bytes)
    };
    copy(0)
        .or_else(|_| copy(BLOCK_SIZE as usize))
        .expect("a superblock copy decodes")
}

fn image_record_offset(image: &[u8], slot: u32) -> usize {
    let sb = image_superblock(image);
    (sb.table_start * BLOCK_SIZE) as usize + slot as usize * RECORD_SIZE
}

/// The live record in `slot` of `image`'s file table, if it holds one.
pub fn image_record(image: &[u8], slot: u32) -> Option<Record> {
    let at = image_record_offset(image, slot);
    Record::decode(&image[at..at + RECORD_SIZE]).expect("the record decodes")
}

/// Writes `record` into `slot` of `image`'s file table (checksum included).
pub fn put_image_record(image: &mut [u8], slot: u32, record: &Record) {
    let at = image_record_offset(image, slot);
    image[at..at + RECORD_SIZE].copy_from_slice(&record.encode());
}

/// Leaves in `image` a committed journal transaction `sequence` holding
/// `record` for `slot`, as a crash after the commit point leaves it: the
/// entry, the header with its checksum, then the commit word.
pub fn commit_image_transaction(image: &mut [u8], sequence: u64, slot: u32, record: &Record) {
    let entry = encode_journal_entry(slot, &record.encode());
    let mut header = JournalHeader {
        sequence,
        entries: 1,
        crc: 0,
    };
    header.crc = journal_checksum(&header, &entry);
    let jo = (image_superblock(image).journal_start * BLOCK_SIZE) as usize;
    let h = jo + JOURNAL_HEADER_OFFSET as usize;
    image[h..h + JOURNAL_HEADER_SIZE].copy_from_slice(&header.encode());
    let e = jo + JOURNAL_ENTRIES_OFFSET as usize;
    image[e..e + entry.len()].copy_from_slice(&entry);
    image[jo..jo + 8].copy_from_slice(&sequence.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal checksum built from the records' own checksums equals
    /// the one hashed over the entries (what mount checks), for one and
    /// for several records.
    #[test]
    fn journal_checksum_from_record_checksums_matches_hashing() {
        let mut seed = 99u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for n in 1..=JOURNAL_MAX_ENTRIES {
            let mut records = Vec::new();
            let mut body = Vec::new();
            for i in 0..n {
                let r = Record {
                    in_use: true,
                    orphan: false,
                    generation: next() as u32,
                    name: alloc::format!("file-{}", next()),
                    size: next(),
                    extent_count: 1 + i as u32,
                    overflow_count: 0,
                    overflow_first: 0,
                    inline: (0..=i as u64)
                        .map(|k| Extent {
                            logical: k * 10,
                            len: 1 + next() % 5,
                            physical: 1000 + next() % 100_000,
                        })
                        .collect(),
                    layered: false,
                };
                let slot = next() as u32;
                let bytes = r.encode();
                body.extend_from_slice(&encode_journal_entry(slot, &bytes));
                records.push((slot, bytes));
            }
            let header = JournalHeader {
                sequence: next(),
                entries: n as u32,
                crc: 0,
            };
            assert_eq!(
                journal_checksum_of_records(&header, &records),
                journal_checksum(&header, &body),
                "{n} records"
            );
        }
        assert_eq!(crc_shift_of(0), 1 << 31);
        for v in [0, 1, 0xDEAD_BEEF, u32::MAX, next() as u32] {
            let shift = crc_shift_of(RECORD_SIZE);
            assert_eq!(SHIFT_RECORD.mult(v), crc_mult(shift, v));
        }
        assert_eq!(
            ZERO_SHIFT[BLOCK_SIZE as usize],
            crc_shift_of(BLOCK_SIZE as usize)
        );
        // Sparse checksums equal hashing every byte, zero runs anywhere.
        let mut bytes = alloc::vec![0u8; BLOCK_SIZE as usize];
        for len in [0usize, 1, 60, 512, 4096] {
            for (a, b, c, d) in [
                (0, 0, 0, 0),
                (0, 5, 9, 20),
                (3, 7, 7, 40),
                (0, len, len, len),
            ] {
                let (a, b, c, d) = (a.min(len), b.min(len), c.min(len), d.min(len));
                bytes.fill(0);
                for i in (a..b).chain(c..d) {
                    bytes[i] = next() as u8 | 1;
                }
                assert_eq!(
                    checksum_sparse(&bytes[..len], &[(a, b), (c, d)]),
                    CRC32C.checksum(&bytes[..len]),
                    "len {len} dense {a}..{b}, {c}..{d}"
                );
            }
        }
        assert_eq!(
            crc_combine(
                CRC32C.checksum(b"ab"),
                CRC32C.checksum(b"cd"),
                crc_shift_of(2)
            ),
            CRC32C.checksum(b"abcd")
        );
    }

    #[test]
    fn superblock_round_trips_and_rejects_flips() {
        let sb = Superblock {
            version: FORMAT_VERSION,
            uuid: [7; 16],
            total_blocks: 1000,
            journal_start: 2,
            journal_blocks: JOURNAL_BLOCKS,
            table_start: 3,
            table_blocks: 2,
            max_files: 16,
            data_start: 5,
            table_init_blocks: 1,
        };
        let bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
        for bit in 0..(SUPER_SIZE * 8) {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Superblock::decode(&bad).is_err(),
                "flip of bit {bit} not detected"
            );
        }
        assert_eq!(Superblock::decode(&[0; SUPER_SIZE]), Err(SuperError::Blank));
    }

    #[test]
    fn record_round_trips_and_rejects_flips() {
        let r = Record {
            in_use: true,
            orphan: false,
            generation: 3,
            name: String::from("a/b c"),
            size: 12345,
            extent_count: 2,
            overflow_count: 0,
            overflow_first: 0,
            inline: alloc::vec![
                Extent {
                    logical: 0,
                    len: 2,
                    physical: 100
                },
                Extent {
                    logical: 3,
                    len: 1,
                    physical: 200
                },
            ],
            layered: false,
        };
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Ok(Some(r)));
        for bit in 0..(RECORD_SIZE * 8) {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Record::decode(&bad).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }

    #[test]
    fn orphan_records_round_trip_and_carry_no_name() {
        let mut r = Record::free(4);
        r.in_use = true;
        r.orphan = true;
        r.size = 4096;
        r.extent_count = 1;
        r.inline = alloc::vec![Extent {
            logical: 0,
            len: 1,
            physical: 100
        }];
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Ok(Some(r.clone())));
        let mut named = r.clone();
        named.name = String::from("x");
        assert!(Record::decode(&named.encode()).is_err());
        let mut free = Record::free(4);
        free.orphan = true;
        let mut b = free.encode();
        b[4] = RECORD_ORPHAN as u8;
        let crc = checksum_skipping(&b, 60);
        put_u32(&mut b, 60, crc);
        assert!(Record::decode(&b).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("a"));
        assert!(valid_name("dir/file"));
        assert!(!valid_name(""));
        assert!(!valid_name("a\0b"));
        assert!(valid_name(&"x".repeat(255)));
        assert!(!valid_name(&"x".repeat(256)));
    }
}
