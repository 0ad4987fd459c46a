//! Object tags on media: what the object API knows of a file's content
//! (its MD5 ETag, part count, verified checksum, Last-Modified and
//! `x-amz-meta-mtime`) kept in one hidden file per filesystem,
//! [`TAG_FILE`], so that a single-part object's ETag is still the MD5 of
//! its content after a reboot (rclone and `aws s3 sync` compare it with
//! the MD5 of their copy).
//!
//! Why a file and not the daxfs format: the record is the object API's,
//! not the filesystem's, and the daxfs on-media format is not changed for
//! it. Why not hashing lazily after a boot: a HEAD or a listing must
//! answer at once, and the MD5 of a large object cannot be computed within
//! one event-loop turn; a record costs one 64-byte write per PUT.
//!
//! Layout: record `slot` of the file is at byte `slot * 64` (a sparse
//! file: untouched records are holes and read as zeros). A record names
//! the file's generation, so a record left by a removed file never
//! describes the next file in its slot; it ends with a CRC-32C of its
//! first 60 bytes, so a record a power cut tore (or zeros) is no record.
//!
//! Crash safety (the record never claims an MD5 for other content):
//! - an object is made durable and renamed over its key first, its record
//!   written after: a power cut between leaves no record (the fallback
//!   tag, marked not an MD5 with `-1`);
//! - every other change to a file's bytes ([`crate::Storage::file_changed`],
//!   called by NBD writes, trims and zeroing and by the shell before they
//!   change anything) clears its record durably first; if that fails the
//!   whole record file is removed (all records forgotten, never a stale
//!   one kept). The RAM table says which files were cleared, so only the
//!   first change after a PUT or a boot costs a read (and a write).
//!
//! Bounds: one record per file slot, so the file is at most
//! `max_files * 64` bytes (1 MiB per 16,384 slots), allocated only where
//! records are written (4 KiB blocks; 2 MiB chunks once the file is past
//! 2 MiB, daxfs's allocation unit for large files). Writing a record is best effort: a full
//! filesystem or a used-up mount budget leaves the tag in RAM only.

use daxbox_persist::PersistentMemory;
use daxfs::{FileId, Filesystem};

use super::{ObjectChecksum, ObjectTag, HIDDEN_PREFIX};

/// The record file's name (hidden: see [`super::HIDDEN_PREFIX`]); the
/// start-up sweep of temporary files leaves it.
pub const TAG_FILE: &str = "\u{1}object-tags";

/// Bytes per record.
pub const RECORD: u64 = 64;

const MAGIC: u8 = 0x54;
const VERSION: u8 = 1;

static CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The record of `file` with `tag` (which has an MD5).
fn encode(file: FileId, tag: &ObjectTag) -> Option<[u8; RECORD as usize]> {
    let md5 = tag.md5?;
    let mut r = [0u8; RECORD as usize];
    r[0] = MAGIC;
    r[1] = VERSION;
    r[2] = match tag.checksum.map(|c| c.header) {
        None => 0,
        Some("x-amz-checksum-crc32") => 1,
        Some("x-amz-checksum-crc32c") => 2,
        Some(_) => 0,
    };
    r[3] = u8::from(tag.mtime.is_some()) | (u8::from(tag.modified.is_some()) << 1);
    r[4..8].copy_from_slice(&file.generation().to_le_bytes());
    r[8..24].copy_from_slice(&md5);
    r[24..28].copy_from_slice(&tag.parts.to_le_bytes());
    if let Some(c) = tag.checksum {
        r[28..32].copy_from_slice(&c.value.to_le_bytes());
        r[32..36].copy_from_slice(&c.parts.to_le_bytes());
    }
    r[36..44].copy_from_slice(&tag.modified.unwrap_or(0).to_le_bytes());
    let (secs, nanos) = tag.mtime.unwrap_or((0, 0));
    r[44..52].copy_from_slice(&secs.to_le_bytes());
    r[52..56].copy_from_slice(&nanos.to_le_bytes());
    let crc = CRC32C.checksum(&r[..60]);
    r[60..64].copy_from_slice(&crc.to_le_bytes());
    Some(r)
}

/// The tag a record holds for `file`, if it is an intact record of this
/// very file (its generation).
fn decode(r: &[u8; RECORD as usize], file: FileId) -> Option<ObjectTag> {
    let u32_at = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap_or_default());
    if r[0] != MAGIC || r[1] != VERSION || u32_at(60) != CRC32C.checksum(&r[..60]) {
        return None;
    }
    if u32_at(4) != file.generation() {
        return None;
    }
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&r[8..24]);
    let checksum = match r[2] {
        1 => Some("x-amz-checksum-crc32"),
        2 => Some("x-amz-checksum-crc32c"),
        _ => None,
    }
    .map(|header| ObjectChecksum {
        header,
        value: u32_at(28),
        parts: u32_at(32),
    });
    Some(ObjectTag {
        md5: Some(md5),
        parts: u32_at(24),
        epoch: 0,
        modified: (r[3] & 2 != 0).then(|| u64_at(36)),
        mtime: (r[3] & 1 != 0).then(|| (u64_at(44), u32_at(52))),
        checksum,
    })
}

fn offset(file: FileId) -> u64 {
    u64::from(file.slot()) * RECORD
}

/// The tag recorded on media for `file`, if any.
pub(super) fn load<M: PersistentMemory>(fs: &Filesystem<M>, file: FileId) -> Option<ObjectTag> {
    let tags = fs.lookup(TAG_FILE).ok()?;
    let mut r = [0u8; RECORD as usize];
    if fs.read(tags, offset(file), &mut r).ok()? != r.len() {
        return None;
    }
    decode(&r, file)
}

/// Records `tag` (which has an MD5) for `file`, durably; best effort.
pub(super) fn store<M: PersistentMemory>(fs: &mut Filesystem<M>, file: FileId, tag: &ObjectTag) {
    let Some(record) = encode(file, tag) else {
        clear(fs, file);
        return;
    };
    let tags = match fs.lookup(TAG_FILE) {
        Ok(tags) => tags,
        Err(_) => match fs.create(TAG_FILE) {
            Ok(tags) => tags,
            Err(_) => return,
        },
    };
    if fs.write(tags, offset(file), &record).is_err() || fs.persist(tags).is_err() {
        // Whatever is there now may be torn: the CRC says so. Nothing
        // stale can be there: the file is new or was cleared before.
    }
}

/// Forgets the record of `file`, durably, before its bytes change. If the
/// record cannot be cleared, the whole record file goes.
pub(super) fn clear<M: PersistentMemory>(fs: &mut Filesystem<M>, file: FileId) {
    if load(fs, file).is_none() {
        return;
    }
    let Ok(tags) = fs.lookup(TAG_FILE) else {
        return;
    };
    let zeros = [0u8; RECORD as usize];
    if fs.write(tags, offset(file), &zeros).is_err() || fs.persist(tags).is_err() {
        let _ = fs.unlink(TAG_FILE);
    }
}

/// True for the record file (kept by the start-up sweep).
pub(super) fn is_tag_file(name: &str) -> bool {
    debug_assert!(TAG_FILE.starts_with(HIDDEN_PREFIX));
    name == TAG_FILE
}
