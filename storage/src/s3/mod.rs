//! The S3 object API (path style) over the storage service, sans-I/O: an
//! [`HttpRoutes`] for the HTTP service of `net/stack`.
//!
//! Buckets are the mounted daxfs filesystems (`pmem0`, `pmem1`, …; raw
//! devices are not buckets), objects are their files: a key is a file name
//! (1-255 bytes of UTF-8, `/` an ordinary character; longer keys get
//! `KeyTooLongError`). A file is at once an NBD export and an object.
//!
//! Operations: ListBuckets (`GET /`), HeadBucket, GetBucketLocation,
//! ListObjectsV2 (`list-type=2`: prefix, delimiter with CommonPrefixes,
//! max-keys, start-after, continuation-token, `encoding-type=url`) and
//! ListObjects v1 (marker), HeadObject and GetObject with one `Range`,
//! PutObject, CopyObject (`x-amz-copy-source`, a daxfs copy-on-write
//! clone), DeleteObject, DeleteObjects (`POST ?delete`), CreateBucket
//! (`BucketAlreadyOwnedByYou` for a mounted device, refused otherwise:
//! buckets are devices), and multipart uploads ([`multipart`]). Everything
//! else is `501 NotImplemented`.
//!
//! PutObject streams: the body goes to pmem as it arrives, into a hidden
//! temporary file (a name starting with [`HIDDEN_PREFIX`], which no
//! listing, NBD client or shell lookup sees); at the end of the body it is
//! checked (length, `Content-MD5`, a hex `x-amz-content-sha256`,
//! `x-amz-checksum-crc32`/`crc32c`), made durable, and renamed over the
//! key in one daxfs commit. A body cut off or failing a check removes the
//! temporary file; a power cut leaves the old object or the new one (and
//! the sweep at start-up, [`sweep_temporaries`], removes a leftover
//! temporary file).
//!
//! ETags ([`ObjectTag`], kept in [`Storage`]): a PUT records the MD5 of the
//! content it wrote, which is the ETag while nothing else changes the file.
//! Every other path that changes a file's bytes (NBD writes, trims and
//! zeroing, shell `write`/`truncate`) forgets it ([`Storage::file_changed`]);
//! a file without a recorded MD5 gets a different strong tag, the MD5 of
//! (boot nonce, device, file slot and generation, change epoch) written
//! `"…-1"` (the dash marks it, as S3's multipart tags, as not the MD5 of the
//! content, so tools do not compare it with one): it changes whenever the
//! file is changed and at every boot. A tag with an MD5 is also recorded on
//! media, in a hidden file per filesystem ([`tags`]), with its checksum,
//! Last-Modified and mtime: after a reboot an object the API wrote keeps
//! its MD5 ETag; a change by another path clears the record durably
//! before it changes a byte.
//!
//! GET holds the object's file open (daxfs `open`, through
//! [`Storage`]'s table of object reads) while it sends it: a PUT or DELETE
//! of the key meanwhile leaves the old file to the reader as an orphan, so
//! the GET sends the old object whole; the last close frees it. Bounded by
//! the exchanges ([`MAX_EXCHANGES`]) and the HTTP service's progress
//! timeout (a stalled reader is cut off and its hold given back).
//!
//! Checksums: a `x-amz-checksum-crc32`/`crc32c` a PUT or UploadPart
//! carried (as a header or in the aws-chunked trailer) is verified and
//! kept with the MD5 ([`ObjectChecksum`]); GET and HEAD of the whole object
//! return it when the request has `x-amz-checksum-mode: ENABLED`, with
//! `x-amz-checksum-type: FULL_OBJECT`. A multipart object whose parts all
//! carried a CRC of one kind gets S3's composite form, the CRC of the
//! parts' CRCs written `BASE64-N` (`COMPOSITE`; botocore does not check a
//! checksum with a `-`, it cannot). A range read gets none (it is not the
//! whole object); the checksum is forgotten with the MD5 whenever another
//! path changes the file.
//!
//! Authentication ([`auth`]): AWS Signature V4, header and presigned
//! forms, with the keys of the boot config (`s3_key=`); anonymous reads
//! only on buckets named by `s3_anonymous=`. With no key configured every
//! request is refused (`403 AccessDenied`, saying so).

mod allow;
pub mod auth;
pub mod chunked;
pub mod multipart;
pub mod tags;
pub mod text;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use daxbox_budget::{Budget, Charge};
use daxbox_netstack::http::{HttpRoutes, Opened, Reply, ReplyBody, Request, Response};
use daxbox_persist::PersistentMemory;
use daxfs::{Error as FsError, FileId, Filesystem};
use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::{Role, SharedStorage, Storage};
use auth::{query_value, ChunkSigner, Payload};
pub use auth::{AccessKey, Principal, MAX_KEYS};
use text::{hex, iso8601, percent_decode, unbase64, xml_escape};

/// Names starting with this are the object API's temporary files: hidden
/// from every listing, from NBD and from shell lookups; S3 keys may not
/// start with it.
pub const HIDDEN_PREFIX: &str = "\u{1}";
/// True for the object API's temporary files.
pub fn hidden(name: &str) -> bool {
    name.starts_with(HIDDEN_PREFIX)
}

/// Largest key, bytes (daxfs's name limit).
pub const MAX_KEY: usize = 255;
/// Most keys one listing returns (S3's limit; `max-keys` above is cut).
pub const MAX_LIST_KEYS: usize = 1000;
/// With `allow=` rules, most names one listing request examines (keys the
/// client may not read are skipped, not shown); a page cut short by it is
/// truncated and the client asks for the next.
pub const MAX_LIST_EXAMINED: usize = 4 * MAX_LIST_KEYS;
/// Largest DeleteObjects request body, bytes (1,000 keys of 255 bytes
/// with their XML fit well within it); beyond, `MalformedXML`.
pub const MAX_DELETE_BODY: usize = 512 * 1024;
/// Most keys one DeleteObjects request may name (S3's limit).
pub const MAX_DELETE_KEYS: usize = 1000;
/// Largest single PUT (S3's limit for one PutObject), bytes.
pub const MAX_PUT: u64 = 5 << 30;
/// Most exchanges (requests in progress) at once; one per HTTP connection
/// is the most the HTTP service makes, this bounds it independently.
pub const MAX_EXCHANGES: usize = 256;

/// An S3 error: status, code and message (an XML error document).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Error {
    /// HTTP status.
    pub status: u16,
    /// S3 error code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Extra header lines (`Content-Range: bytes */SIZE` for 416).
    pub headers: String,
}

impl S3Error {
    /// An error with no extra headers.
    pub fn new(status: u16, code: &'static str, message: &str) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: String::new(),
        }
    }

    fn reply(&self, resource: &str) -> Reply {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>daxbox</RequestId></Error>",
            self.code,
            xml_escape(&self.message),
            xml_escape(resource)
        );
        Reply {
            status: self.status,
            content_type: "application/xml",
            headers: format!("x-amz-request-id: daxbox\r\n{}", self.headers),
            body: ReplyBody::Bytes(body.into_bytes()),
        }
    }
}

fn no_such_bucket() -> S3Error {
    S3Error::new(404, "NoSuchBucket", "The specified bucket does not exist")
}

fn no_such_key() -> S3Error {
    S3Error::new(404, "NoSuchKey", "The specified key does not exist.")
}

fn denied(message: &str) -> S3Error {
    S3Error::new(403, "AccessDenied", message)
}

/// What the object API knows of a file's content, for its ETag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectTag {
    /// MD5 of the content a PUT wrote, while nothing else changed it
    /// (for a multipart upload, the MD5 of its parts' MD5s).
    pub md5: Option<[u8; 16]>,
    /// Parts of the multipart upload that wrote it (0: a single PUT).
    pub parts: u32,
    /// Change epoch when it was last changed by another path.
    pub epoch: u64,
    /// Unix time of the PUT or of the change, when known.
    pub modified: Option<u64>,
    /// The client's modification time (`x-amz-meta-mtime`, which rclone
    /// sets and compares: without it, rclone re-copies every object at
    /// every sync), seconds and nanoseconds; forgotten with the MD5.
    pub mtime: Option<(u64, u32)>,
    /// The CRC a PUT verified (or the composite of a multipart upload's
    /// part CRCs), returned with `x-amz-checksum-mode: ENABLED`;
    /// forgotten with the MD5.
    pub checksum: Option<ObjectChecksum>,
}

/// A CRC the object API verified when the content was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectChecksum {
    /// Its header: `x-amz-checksum-crc32` or `x-amz-checksum-crc32c`.
    pub header: &'static str,
    /// The CRC (of the content, or of the part CRCs for a composite).
    pub value: u32,
    /// 0: the whole object's CRC; N: S3's composite of N parts (the CRC of
    /// the parts' big-endian CRCs, written `BASE64-N`).
    pub parts: u32,
}

impl ObjectChecksum {
    /// The CRC algorithm of `header`.
    fn algorithm(header: &str) -> Option<&'static crc::Crc<u32>> {
        match header {
            "x-amz-checksum-crc32" => Some(&CRC32),
            "x-amz-checksum-crc32c" => Some(&CRC32C),
            _ => None,
        }
    }

    /// The header lines S3 sends with it (`x-amz-checksum-type` says
    /// whether it covers the bytes or the parts).
    fn header_lines(&self) -> String {
        let value = text::base64(&self.value.to_be_bytes());
        if self.parts == 0 {
            format!(
                "{}: {value}\r\nx-amz-checksum-type: FULL_OBJECT\r\n",
                self.header
            )
        } else {
            format!(
                "{}: {value}-{}\r\nx-amz-checksum-type: COMPOSITE\r\n",
                self.header, self.parts
            )
        }
    }
}

/// `x-amz-meta-mtime` (`SECONDS[.FRACTION]`, at most 9 fraction digits)
/// as (seconds, nanoseconds); anything else is not kept.
fn client_mtime(request: &Request<'_>) -> Option<(u64, u32)> {
    let value = request.header("x-amz-meta-mtime")?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || secs.len() > 19 || frac.len() > 9 || !digits(secs) || !digits(frac) {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32)
    };
    Some((secs.parse().ok()?, nanos))
}

/// The header line returning a kept `x-amz-meta-mtime`.
fn mtime_header(mtime: Option<(u64, u32)>) -> String {
    match mtime {
        None => String::new(),
        Some((secs, 0)) => format!("x-amz-meta-mtime: {secs}\r\n"),
        Some((secs, nanos)) => {
            let frac = format!("{nanos:09}");
            format!(
                "x-amz-meta-mtime: {secs}.{}\r\n",
                frac.trim_end_matches('0')
            )
        }
    }
}

/// The object API's settings (from the boot config).
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    /// Access keys (at most [`MAX_KEYS`]).
    pub keys: Vec<AccessKey>,
    /// Buckets anyone may read without signing.
    pub anonymous_read: Vec<String>,
}

impl S3Config {
    /// The settings of the boot config.
    pub fn from_boot(boot: &daxbox_bootconfig::BootConfig) -> Self {
        Self {
            keys: boot
                .s3_keys
                .iter()
                .map(|k| AccessKey {
                    id: k.id.clone(),
                    secret: k.secret.clone(),
                    read_only: k.read_only,
                })
                .collect(),
            anonymous_read: boot.s3_anonymous.clone(),
        }
    }

    /// The boot-log line saying how the object API is set up (never a
    /// secret).
    pub fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "s3: no s3_key= in the boot config: the object API refuses every request (403)"
                .into();
        }
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        let mut line = format!("s3: {} access key(s): {}", ids.len(), ids.join(", "));
        if !self.anonymous_read.is_empty() {
            let _ = write!(
                line,
                "; anonymous reads on {}",
                self.anonymous_read.join(", ")
            );
        }
        line
    }
}

/// A running CRC, the value it must reach and the header that named it.
type Checksum = (crc::Digest<'static, u32>, u32, &'static str);

/// A PUT in progress.
struct Put {
    device: String,
    temp: String,
    file: FileId,
    key: String,
    resource: String,
    written: u64,
    md5: Md5,
    sha256: Option<(Sha256, [u8; 32])>,
    content_md5: Option<[u8; 16]>,
    crc32: Option<Checksum>,
    /// The crc32 value comes from the aws-chunked trailer.
    crc_in_trailer: bool,
    /// An aws-chunked body: its decoder and decoded length.
    aws_chunked: Option<(chunked::AwsChunked, u64)>,
    /// Signed chunks: the checker, the signature of the chunk being
    /// read and its data's running SHA-256.
    signer: Option<(ChunkSigner, Option<String>, Sha256)>,
    /// A failure seen while reading the body.
    error: Option<S3Error>,
    /// `x-amz-meta-mtime`, kept with the ETag.
    mtime: Option<(u64, u32)>,
    /// UploadPart: the upload and part number (the body is a part, not
    /// the object).
    part: Option<(String, u32)>,
}

/// A request in progress between `open` and `end`.
enum Exchange {
    Put(alloc::boxed::Box<Put>),
    /// A GET streaming `file` of `device` from `start`, holding it open
    /// (`hold`, [`Storage::hold_object_read`]) until the exchange ends.
    Get {
        device: String,
        file: FileId,
        start: u64,
        hold: Option<u64>,
    },
    /// DeleteObjects gathering its (bounded) XML body.
    DeleteMany {
        device: String,
        resource: String,
        body: XmlBody,
        /// The client (each key is decided by the allow-list).
        peer: allow::Who,
    },
    /// A reply body held here (charged to the budget) and pulled by the
    /// HTTP service as the socket drains.
    Buffer {
        bytes: Vec<u8>,
        _charge: Charge<'static>,
    },
    /// CompleteMultipartUpload gathering its (bounded) XML body.
    Complete(alloc::boxed::Box<multipart::Gather>),
    /// Answered at open: nothing to keep.
    Done,
}

static CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
static CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The object API.
pub struct S3Routes<M: PersistentMemory, S: SharedStorage<M>> {
    shared: S,
    config: S3Config,
    /// Unix seconds at `now_ms` = 0 of the HTTP service's clock (`None`:
    /// no wall clock, signed requests cannot be checked and are refused).
    unix_at_zero: Option<u64>,
    exchanges: BTreeMap<u64, Exchange>,
    /// Differs at every boot (part of the fallback ETags).
    boot_nonce: u64,
    /// Charged with listing and DeleteObjects bodies while they are held
    /// (`daxbox_budget::HTTP`).
    budget: &'static Budget,
    /// Multipart uploads in progress.
    uploads: multipart::Uploads,
    memory: core::marker::PhantomData<fn() -> M>,
}

/// Removes the temporary files a power cut left behind on every mounted
/// filesystem; returns how many. Run once at start-up.
pub fn sweep_temporaries<M: PersistentMemory>(storage: &mut Storage<M>) -> usize {
    let mut removed = 0;
    for volume in &mut storage.volumes {
        if let Role::Filesystem(fs) = &mut volume.role {
            // Hidden names sort first (U+0001 is the lowest character a
            // name can start with).
            loop {
                let hidden: Vec<String> = fs
                    .list(None, 64)
                    .into_iter()
                    .take_while(|e| e.name.starts_with(HIDDEN_PREFIX))
                    .map(|e| e.name)
                    .filter(|name| !tags::is_tag_file(name))
                    .collect();
                let before = removed;
                for name in &hidden {
                    if fs.unlink(name).is_ok() {
                        removed += 1;
                    }
                }
                if removed == before {
                    break;
                }
            }
        }
    }
    removed
}

/// Bucket and key of a path (`/`, `/bucket`, `/bucket/key…`).
fn split_path(path: &str) -> Result<(Option<String>, Option<String>), S3Error> {
    let bad = || S3Error::new(400, "InvalidURI", "Couldn't parse the specified URI.");
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if rest.is_empty() {
        return Ok((None, None));
    }
    let (bucket, key) = match rest.split_once('/') {
        Some((bucket, key)) => (bucket, Some(key)),
        None => (rest, None),
    };
    let bucket = percent_decode(bucket).ok_or_else(bad)?;
    let key = match key {
        None | Some("") => None,
        Some(key) => Some(percent_decode(key).ok_or_else(bad)?),
    };
    Ok((Some(bucket), key))
}

fn check_key(key: &str) -> Result<(), S3Error> {
    if key.len() > MAX_KEY {
        return Err(S3Error::new(
            400,
            "KeyTooLongError",
            "Your key is too long (daxbox keys are file names: at most 255 bytes)",
        ));
    }
    if key.starts_with(HIDDEN_PREFIX) || key.contains('\0') {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "keys may not contain NUL or start with U+0001 (reserved for temporary files)",
        ));
    }
    Ok(())
}

/// A query parameter, decoded (`Some("")` for a bare `name`).
fn param(query: &str, name: &str) -> Result<Option<String>, S3Error> {
    match query_value(query, name) {
        None => Ok(None),
        Some(v) => percent_decode(v)
            .map(Some)
            .ok_or_else(|| S3Error::new(400, "InvalidArgument", "malformed query parameter")),
    }
}

/// One `Range` (`bytes=a-b`, `a-`, `-n`) on an object of `size`:
/// `Ok(None)` for no range (or one S3 ignores), `Err` for unsatisfiable.
fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, S3Error> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: S3 sends the whole object
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let unsatisfiable = || {
        let mut e = S3Error::new(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
        );
        e.headers = format!("Content-Range: bytes */{size}\r\n");
        e
    };
    let range = match (number(first), number(last), first.is_empty()) {
        (None, Some(suffix), true) => {
            if suffix == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(suffix), size - 1)
        }
        (Some(a), None, false) if last.is_empty() => {
            if a >= size {
                return Err(unsatisfiable());
            }
            (a, size - 1)
        }
        (Some(a), Some(b), false) if a <= b => {
            if a >= size {
                return Err(unsatisfiable());
            }
            (a, b.min(size - 1))
        }
        _ => return Ok(None),
    };
    Ok(Some(range))
}

fn fs_failure(error: FsError) -> S3Error {
    match error {
        FsError::NoSpace | FsError::NoFileSlots => {
            S3Error::new(507, "InsufficientStorage", "the filesystem is full")
        }
        FsError::FileTooLarge => S3Error::new(
            400,
            "EntityTooLarge",
            "the object is larger than daxfs allows",
        ),
        FsError::OutOfMemory(_) => S3Error::new(
            503,
            "SlowDown",
            "the filesystem's memory budget is used up; try again later",
        ),
        FsError::NotFound | FsError::StaleFile => no_such_key(),
        _ => S3Error::new(500, "InternalError", "filesystem error"),
    }
}

/// The volume index of bucket `bucket` (a mounted filesystem).
fn bucket_volume<M: PersistentMemory>(
    storage: &Storage<M>,
    bucket: &str,
) -> Result<usize, S3Error> {
    storage
        .volumes
        .iter()
        .position(|v| v.device == bucket && matches!(v.role, Role::Filesystem(_)))
        .ok_or_else(no_such_bucket)
}

fn filesystem<M: PersistentMemory>(storage: &mut Storage<M>, volume: usize) -> &mut Filesystem<M> {
    match &mut storage.volumes[volume].role {
        Role::Filesystem(fs) => fs,
        Role::Raw(_) => unreachable!("bucket_volume returns filesystems only"),
    }
}

impl<M: PersistentMemory> Storage<M> {
    /// A file's bytes changed other than by an S3 PUT (NBD, shell): its
    /// recorded MD5 no longer says what it holds.
    pub fn file_changed(&mut self, volume: usize, file: FileId) {
        let Some(v) = self.volumes.get(volume) else {
            return;
        };
        let key = (crate::device_index(&v.device), file);
        // A record on media may still say it holds the MD5: cleared,
        // durably, before the change (unless this boot already did).
        if self.object_tags.get(&key).is_none_or(|t| t.md5.is_some()) {
            if let Some(fs) = self.filesystem(volume) {
                tags::clear(fs, file);
            }
        }
        self.tag_epoch += 1;
        let tag = ObjectTag {
            md5: None,
            parts: 0,
            epoch: self.tag_epoch,
            modified: None,
            mtime: None,
            checksum: None,
        };
        match self.object_tags.get_mut(&key) {
            Some(existing) => *existing = tag,
            None => {
                self.prune_tags_if_large();
                self.object_tags.insert(key, tag);
            }
        }
    }

    /// Holds `file` of `device` open for an object GET (daxfs `open`), so
    /// that replacing or deleting its key leaves it to the reader; the
    /// hold's number, for [`Self::release_object_read`].
    fn hold_object_read(&mut self, device: &str, file: FileId) -> Option<u64> {
        let volume = self.volumes.iter().position(|v| v.device == device)?;
        self.filesystem(volume)?.open(file).ok()?;
        self.next_object_read += 1;
        let id = self.next_object_read;
        self.object_reads.insert(id, (device.to_string(), file));
        Some(id)
    }

    /// Gives back an object GET's hold: the last holder of a replaced or
    /// deleted object frees its space. Nothing if `umount` took it.
    fn release_object_read(&mut self, id: u64) {
        let Some((device, file)) = self.object_reads.remove(&id) else {
            return;
        };
        if let Some(volume) = self.volumes.iter().position(|v| v.device == device) {
            if let Some(fs) = self.filesystem(volume) {
                // A failure leaves the orphan for the next mount.
                let _ = fs.close(file);
            }
        }
    }

    /// Forgets the tag of a file the object API removed or replaced.
    fn forget_object_tag(&mut self, device: &str, file: FileId) {
        self.object_tags
            .remove(&(crate::device_index(device), file));
    }

    /// Forgets the tags of files that no longer exist (removed by the
    /// shell): run when the table has grown past twice the files plus
    /// 1,024 entries, so the table stays O(files) and the walk is
    /// amortised over the insertions that grew it.
    fn prune_tags_if_large(&mut self) {
        let files: u64 = self
            .volumes
            .iter()
            .map(|v| match &v.role {
                Role::Filesystem(fs) => fs.statfs().files,
                Role::Raw(_) => 0,
            })
            .sum();
        if (self.object_tags.len() as u64) <= 2 * files + 1024 {
            return;
        }
        self.prune_tags();
    }

    /// Forgets the tags of files that no longer exist.
    fn prune_tags(&mut self) {
        let volumes = &self.volumes;
        self.object_tags.retain(|(device, file), _| {
            volumes.iter().any(|v| {
                crate::device_index(&v.device) == *device
                    && matches!(&v.role, Role::Filesystem(fs) if fs.file_size(*file).is_ok())
            })
        });
    }

    /// The tag of `file`: this boot's, else the one recorded on media
    /// ([`tags`]).
    fn object_tag(&self, device: &str, file: FileId) -> Option<ObjectTag> {
        if let Some(tag) = self.object_tags.get(&(crate::device_index(device), file)) {
            return Some(*tag);
        }
        self.volumes
            .iter()
            .find(|v| v.device == device)
            .and_then(|v| match &v.role {
                Role::Filesystem(fs) => tags::load(fs, file),
                Role::Raw(_) => None,
            })
    }

    /// Sets the tag of `file` (an object the API just made): in RAM, and
    /// on media when it has an MD5 ([`tags`]).
    fn set_object_tag(&mut self, device: &str, file: FileId, tag: ObjectTag) {
        self.prune_tags_if_large();
        self.object_tags
            .insert((crate::device_index(device), file), tag);
        if let Some(volume) = self.volumes.iter().position(|v| v.device == device) {
            if let Some(fs) = self.filesystem(volume) {
                tags::store(fs, file, &tag);
            }
        }
    }
}

impl<M: PersistentMemory, S: SharedStorage<M>> S3Routes<M, S> {
    /// The object API over `shared`; `unix_at_zero` is the wall-clock
    /// time (Unix seconds) at the HTTP service's `now_ms` = 0 (`None` when
    /// the machine has no readable clock: every signed request is then
    /// refused, as its time cannot be checked), and `boot_nonce` differs
    /// at every boot.
    pub fn new(shared: S, config: S3Config, unix_at_zero: Option<u64>, boot_nonce: u64) -> Self {
        Self {
            shared,
            config,
            unix_at_zero,
            exchanges: BTreeMap::new(),
            boot_nonce,
            budget: &daxbox_budget::HTTP,
            uploads: multipart::Uploads::default(),
            memory: core::marker::PhantomData,
        }
    }

    /// Uses `budget` instead of `daxbox_budget::HTTP` (tests).
    pub fn set_budget(&mut self, budget: &'static Budget) {
        self.budget = budget;
    }

    /// A reply whose body (an XML document) is held in the exchange,
    /// charged to the budget, and pulled from there: its memory is
    /// accounted until the last byte is sent.
    fn buffered(&mut self, exchange: u64, status: u16, xml: String) -> Result<Reply, S3Error> {
        let charge = self.budget.charge(xml.len()).map_err(|_| slow_down())?;
        let length = xml.len() as u64;
        self.exchanges.insert(
            exchange,
            Exchange::Buffer {
                bytes: xml.into_bytes(),
                _charge: charge,
            },
        );
        Ok(Reply {
            status,
            content_type: "application/xml",
            headers: "x-amz-request-id: daxbox\r\n".into(),
            body: ReplyBody::Pull(length),
        })
    }

    /// Requests in progress (for tests and `mem`).
    pub fn exchanges(&self) -> usize {
        self.exchanges.len()
    }

    /// Multipart uploads in progress (for tests and `mem`).
    pub fn uploads(&self) -> usize {
        self.uploads.len()
    }

    fn now(&self, now_ms: u64) -> u64 {
        self.unix_at_zero.unwrap_or(0) + now_ms / 1000
    }

    fn etag(&self, storage: &Storage<M>, device: &str, file: FileId) -> String {
        let tag = storage.object_tag(device, file);
        match tag.and_then(|t| t.md5.map(|m| (m, t.parts))) {
            Some((md5, 0)) => format!("\"{}\"", hex(&md5)),
            Some((md5, parts)) => format!("\"{}-{parts}\"", hex(&md5)),
            None => {
                let epoch = tag.map_or(0, |t| t.epoch);
                let mut h = Md5::new();
                h.update(self.boot_nonce.to_le_bytes());
                h.update(device.as_bytes());
                h.update(file.slot().to_le_bytes());
                h.update(file.generation().to_le_bytes());
                h.update(epoch.to_le_bytes());
                format!("\"{}-1\"", hex(&h.finalize()))
            }
        }
    }

    fn modified(&self, storage: &Storage<M>, device: &str, file: FileId) -> u64 {
        storage
            .object_tag(device, file)
            .and_then(|t| t.modified)
            .or(self.unix_at_zero)
            .unwrap_or(0)
    }

    /// Who may do what: `write` for anything that changes storage.
    fn authorize(
        &self,
        request: &Request<'_>,
        bucket: Option<&str>,
        write: bool,
        now: u64,
    ) -> Result<Payload, S3Error> {
        let (principal, payload) = auth::authenticate(request, &self.config.keys, now)?;
        if self.unix_at_zero.is_none() && principal != Principal::Anonymous {
            return Err(denied(
                "the appliance has no wall clock (the CMOS RTC could not be read): signed requests cannot be checked and are refused",
            ));
        }
        match principal {
            Principal::Key { read_only, .. } => {
                if write && read_only {
                    return Err(denied("this access key is read-only"));
                }
            }
            Principal::Anonymous => {
                let allowed = !write
                    && bucket.is_some_and(|b| self.config.anonymous_read.iter().any(|a| a == b));
                if !allowed {
                    if self.config.keys.is_empty() {
                        return Err(denied(
                            "the object API has no access keys (s3_key= in the boot config): every request is refused",
                        ));
                    }
                    return Err(denied("Access Denied: sign the request (AWS Signature V4)"));
                }
            }
        }
        Ok(payload)
    }

    fn dispatch(
        &mut self,
        request: &Request<'_>,
        exchange: u64,
        now_ms: u64,
    ) -> Result<Opened, S3Error> {
        let now = self.now(now_ms);
        let (bucket, key) = split_path(request.path)?;
        let method = request.method;
        let write = !matches!(method, "GET" | "HEAD");
        let payload = self.authorize(request, bucket.as_deref(), write, now)?;
        let peer = allow::Who::of(request);
        if let Some(bucket) = &bucket {
            self.shared.with(|s| match &key {
                None => allow::require_bucket(s, peer.client(), bucket),
                Some(key) => allow::require_object(s, peer.client(), bucket, key, write),
            })?;
        }
        match (method, bucket, key) {
            ("GET", None, None) => self.list_buckets(peer.client()),
            (_, None, _) => Err(S3Error::new(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")),
            ("HEAD", Some(bucket), None) => self.shared.with(|s| {
                bucket_volume(s, &bucket)?;
                Ok(Opened::Reply(Reply::bytes(200, "application/xml", Vec::new())))
            }),
            ("GET", Some(bucket), None) if query_value(request.query, "uploads").is_some() => self.list_uploads(request, &bucket, exchange),
            ("GET", Some(bucket), None) => self.get_bucket(request, &bucket, exchange),
            ("PUT", Some(bucket), None) => self.shared.with(|s| match bucket_volume(s, &bucket) {
                Ok(_) if request.query.is_empty() => Err(S3Error::new(409, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.")),
                Ok(_) => Err(S3Error::new(501, "NotImplemented", "bucket configuration is not supported")),
                Err(_) => Err(denied("buckets are the mounted pmem devices (pmem0, pmem1, ...): they cannot be created over S3")),
            }),
            ("DELETE", Some(_), None) => Err(denied("buckets are the mounted pmem devices: they cannot be deleted over S3")),
            ("POST", Some(bucket), None) if query_value(request.query, "delete").is_some() => {
                let device = self.shared.with(|s| bucket_volume(s, &bucket).map(|_| ()))
                    .map(|()| bucket.clone())?;
                let content_md5 = content_md5(request)?;
                self.exchanges.insert(exchange, Exchange::DeleteMany {
                    device,
                    resource: request.path.to_string(),
                    body: XmlBody::new(
                        MAX_DELETE_BODY,
                        "the DeleteObjects request body is over 512 KiB",
                        content_md5,
                        self.budget.empty(),
                    ),
                    peer,
                });
                Ok(Opened::Body)
            }
            (_, Some(bucket), Some(key)) => {
                check_key(&key)?;
                if multipart::wanted(request.query) {
                    return self.multipart(request, &bucket, &key, payload, exchange, now);
                }
                if !request.query.is_empty() && object_subresource(request.query) {
                    return Err(S3Error::new(501, "NotImplemented", "this object operation is not supported (multipart uploads, ACLs, tagging, versions)"));
                }
                match method {
                    "GET" | "HEAD" => self.get_object(request, &bucket, &key, exchange, now),
                    "PUT" if request.header("x-amz-copy-source").is_some() => self.copy_object(request, &bucket, &key, now),
                    "PUT" => self.start_put(request, &bucket, &key, payload, exchange),
                    "DELETE" => self.delete_object(&bucket, &key),
                    _ => Err(S3Error::new(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")),
                }
            }
            _ => Err(S3Error::new(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")),
        }
    }

    fn list_buckets(&mut self, peer: crate::allow::Client<'_>) -> Result<Opened, S3Error> {
        let created = iso8601(self.unix_at_zero.unwrap_or(0));
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>daxbox</ID><DisplayName>daxbox</DisplayName></Owner><Buckets>");
        self.shared.with(|s| {
            for v in &s.volumes {
                if matches!(v.role, Role::Filesystem(_))
                    && allow::bucket_visible(s, peer, &v.device)
                {
                    let _ = write!(
                        xml,
                        "<Bucket><Name>{}</Name><CreationDate>{created}</CreationDate></Bucket>",
                        xml_escape(&v.device)
                    );
                }
            }
        });
        xml.push_str("</Buckets></ListAllMyBucketsResult>");
        Ok(Opened::Reply(Reply::bytes(
            200,
            "application/xml",
            xml.into_bytes(),
        )))
    }

    fn get_bucket(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        exchange: u64,
    ) -> Result<Opened, S3Error> {
        if query_value(request.query, "location").is_some() {
            self.shared.with(|s| bucket_volume(s, bucket))?;
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"/>";
            return Ok(Opened::Reply(Reply::bytes(
                200,
                "application/xml",
                xml.into(),
            )));
        }
        for unsupported in [
            "versioning",
            "acl",
            "uploads",
            "policy",
            "cors",
            "lifecycle",
            "tagging",
            "versions",
            "object-lock",
            "encryption",
        ] {
            if query_value(request.query, unsupported).is_some() {
                return Err(S3Error::new(
                    501,
                    "NotImplemented",
                    "this bucket operation is not supported",
                ));
            }
        }
        let v2 = param(request.query, "list-type")?.as_deref() == Some("2");
        let prefix = param(request.query, "prefix")?.unwrap_or_default();
        let delimiter = param(request.query, "delimiter")?.filter(|d| !d.is_empty());
        let url = match param(request.query, "encoding-type")?.as_deref() {
            None => false,
            Some("url") => true,
            Some(_) => {
                return Err(S3Error::new(
                    400,
                    "InvalidArgument",
                    "Invalid Encoding Method specified in Request",
                ))
            }
        };
        let max_keys = match param(request.query, "max-keys")? {
            None => MAX_LIST_KEYS,
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| {
                    S3Error::new(
                        400,
                        "InvalidArgument",
                        "Provided max-keys not an integer or within integer range",
                    )
                })?
                .min(MAX_LIST_KEYS),
        };
        let token = param(request.query, "continuation-token")?;
        let start_after = param(request.query, "start-after")?;
        let marker = param(request.query, "marker")?;
        // Where the listing resumes: after this name.
        let after = if v2 {
            match &token {
                Some(token) => Some(text::unhex_string(token).ok_or_else(|| {
                    S3Error::new(
                        400,
                        "InvalidArgument",
                        "The continuation token provided is incorrect",
                    )
                })?),
                None => start_after.clone(),
            }
        } else {
            marker.clone()
        };
        let mut filtered = false;
        let listing = self.shared.with(|s| -> Result<Listing, S3Error> {
            let volume = bucket_volume(s, bucket)?;
            let s = &*s;
            let Role::Filesystem(fs) = &s.volumes[volume].role else {
                return Err(no_such_bucket());
            };
            // With allow rules, only the keys this client may read.
            let filter = !s.access().is_open();
            filtered = filter;
            let mut keep = |name: &str| {
                !filter
                    || allow::object(s, allow::Who::of(request).client(), bucket, name)
                        != crate::allow::Decision::Deny
            };
            Ok(list(
                fs,
                &prefix,
                delimiter.as_deref(),
                after.as_deref(),
                max_keys,
                filter.then_some(&mut keep as &mut dyn FnMut(&str) -> bool),
            ))
        })?;
        let enc = |t: &str| {
            if url {
                text::uri_encode(t, true)
            } else {
                xml_escape(t)
            }
        };
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        let _ = write!(
            xml,
            "<Name>{}</Name><Prefix>{}</Prefix>",
            xml_escape(bucket),
            enc(&prefix)
        );
        if let Some(d) = &delimiter {
            let _ = write!(xml, "<Delimiter>{}</Delimiter>", enc(d));
        }
        let _ = write!(xml, "<MaxKeys>{max_keys}</MaxKeys>");
        if url {
            xml.push_str("<EncodingType>url</EncodingType>");
        }
        let truncated = listing.next.is_some();
        let _ = write!(xml, "<IsTruncated>{truncated}</IsTruncated>");
        if v2 {
            let _ = write!(
                xml,
                "<KeyCount>{}</KeyCount>",
                listing.entries.len() + listing.prefixes.len()
            );
            if let Some(token) = &token {
                let _ = write!(
                    xml,
                    "<ContinuationToken>{}</ContinuationToken>",
                    xml_escape(token)
                );
            }
            if let Some(sa) = &start_after {
                let _ = write!(xml, "<StartAfter>{}</StartAfter>", enc(sa));
            }
            if let Some(next) = &listing.next {
                let _ = write!(
                    xml,
                    "<NextContinuationToken>{}</NextContinuationToken>",
                    hex(next.as_bytes())
                );
            }
        } else {
            let _ = write!(
                xml,
                "<Marker>{}</Marker>",
                enc(marker.as_deref().unwrap_or(""))
            );
            // A filtered page may end on a key not shown: say where.
            if let (Some(next), true) = (&listing.next, delimiter.is_some() || filtered) {
                let _ = write!(xml, "<NextMarker>{}</NextMarker>", enc(next));
            }
        }
        self.shared.with(|s| {
            for entry in &listing.entries {
                let etag = self.etag(s, bucket, entry.id);
                let modified = iso8601(self.modified(s, bucket, entry.id));
                let _ = write!(xml, "<Contents><Key>{}</Key><LastModified>{modified}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>", enc(&entry.name), xml_escape(&etag), entry.size);
            }
        });
        for p in &listing.prefixes {
            let _ = write!(
                xml,
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                enc(p)
            );
        }
        xml.push_str("</ListBucketResult>");
        Ok(Opened::Reply(self.buffered(exchange, 200, xml)?))
    }

    fn get_object(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        key: &str,
        exchange: u64,
        now: u64,
    ) -> Result<Opened, S3Error> {
        let (file, size, etag, modified, tag) = self.shared.with(|s| -> Result<_, S3Error> {
            let volume = bucket_volume(s, bucket)?;
            let fs = filesystem(s, volume);
            let file = fs.lookup(key).map_err(|_| no_such_key())?;
            let size = fs.file_size(file).map_err(fs_failure)?;
            Ok((
                file,
                size,
                self.etag(s, bucket, file),
                self.modified(s, bucket, file),
                s.object_tag(bucket, file),
            ))
        })?;
        let _ = now;
        if let Some(reply) = preconditions(request, &etag, modified)? {
            return Ok(Opened::Reply(reply));
        }
        let range = parse_range(request.header("range"), size)?;
        let mut headers = format!(
            "ETag: {etag}\r\nLast-Modified: {}\r\nAccept-Ranges: bytes\r\nx-amz-request-id: daxbox\r\n{}",
            text::http_date(modified),
            mtime_header(tag.and_then(|t| t.mtime))
        );
        // The checksum covers the whole object: a range does not get it
        // (a client would check it against the part it read).
        let checksum_mode = request
            .header("x-amz-checksum-mode")
            .is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"));
        if let (true, None, Some(checksum)) = (checksum_mode, range, tag.and_then(|t| t.checksum)) {
            headers.push_str(&checksum.header_lines());
        }
        let (status, start, length) = match range {
            Some((a, b)) => {
                let _ = write!(headers, "Content-Range: bytes {a}-{b}/{size}\r\n");
                (206, a, b - a + 1)
            }
            None => (200, 0, size),
        };
        // A GET holds the file while it sends it: a PUT or DELETE of the
        // key meanwhile leaves it to this reader (old object whole).
        let hold = if request.method == "GET" && length > 0 {
            self.shared.with(|s| s.hold_object_read(bucket, file))
        } else {
            None
        };
        self.exchanges.insert(
            exchange,
            Exchange::Get {
                device: bucket.to_string(),
                file,
                start,
                hold,
            },
        );
        Ok(Opened::Reply(Reply {
            status,
            content_type: "application/octet-stream",
            headers,
            body: ReplyBody::Pull(length),
        }))
    }

    fn delete_object(&mut self, bucket: &str, key: &str) -> Result<Opened, S3Error> {
        self.shared.with(|s| delete_one(s, bucket, key))?;
        Ok(Opened::Reply(Reply {
            status: 204,
            content_type: "application/xml",
            headers: "x-amz-request-id: daxbox\r\n".into(),
            body: ReplyBody::Bytes(Vec::new()),
        }))
    }

    fn copy_object(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        key: &str,
        now: u64,
    ) -> Result<Opened, S3Error> {
        let src_key = copy_source(request, bucket)?;
        let src_key = src_key.as_str();
        let (etag, modified) = self.shared.with(|s| -> Result<_, S3Error> {
            allow::require_object(s, allow::Who::of(request).client(), bucket, src_key, false)?;
            let volume = bucket_volume(s, bucket)?;
            let src = filesystem(s, volume)
                .lookup(src_key)
                .map_err(|_| no_such_key())?;
            let src_tag = s.object_tag(bucket, src);
            check_replace(s, volume, key)?;
            let temp = format!("{HIDDEN_PREFIX}copy-{}-{}", src.slot(), s.tag_epoch);
            let fs = filesystem(s, volume);
            let _ = fs.unlink(&temp);
            let copy = fs.clone_file(src_key, &temp).map_err(fs_failure)?;
            if let Err(e) = fs.rename(&temp, key) {
                let _ = fs.unlink(&temp);
                return Err(fs_failure(e));
            }
            let replace = request
                .header("x-amz-metadata-directive")
                .is_some_and(|d| d.eq_ignore_ascii_case("REPLACE"));
            let tag = ObjectTag {
                md5: src_tag.and_then(|t| t.md5),
                parts: src_tag.map_or(0, |t| t.parts),
                epoch: 0,
                modified: Some(now),
                mtime: if replace {
                    client_mtime(request)
                } else {
                    src_tag.and_then(|t| t.mtime)
                },
                checksum: src_tag.and_then(|t| t.checksum),
            };
            if tag.md5.is_some() {
                s.set_object_tag(bucket, copy, tag);
            } else {
                s.tag_epoch += 1;
                let epoch = s.tag_epoch;
                s.set_object_tag(bucket, copy, ObjectTag { epoch, ..tag });
            }
            Ok((self.etag(s, bucket, copy), now))
        })?;
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyObjectResult><LastModified>{}</LastModified><ETag>{}</ETag></CopyObjectResult>", iso8601(modified), xml_escape(&etag));
        Ok(Opened::Reply(Reply::bytes(
            200,
            "application/xml",
            xml.into_bytes(),
        )))
    }

    fn start_put(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        key: &str,
        payload: Payload,
        exchange: u64,
    ) -> Result<Opened, S3Error> {
        let aws_chunked = matches!(
            payload,
            Payload::StreamingUnsigned | Payload::StreamingSigned(_)
        ) || request
            .header("content-encoding")
            .is_some_and(|e| e.split(',').any(|c| c.trim() == "aws-chunked"));
        let decoded_length = match request.header("x-amz-decoded-content-length") {
            Some(v) if aws_chunked => Some(v.parse::<u64>().map_err(|_| {
                S3Error::new(400, "InvalidArgument", "bad x-amz-decoded-content-length")
            })?),
            _ if aws_chunked => {
                return Err(S3Error::new(
                    411,
                    "MissingContentLength",
                    "an aws-chunked body needs x-amz-decoded-content-length",
                ))
            }
            _ => None,
        };
        if decoded_length.is_some_and(|n| n > MAX_PUT) {
            return Err(S3Error::new(
                400,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size (5 GiB)",
            ));
        }
        if request.chunked && !aws_chunked {
            return Err(S3Error::new(
                411,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
            ));
        }
        if request.content_length > MAX_PUT {
            return Err(S3Error::new(
                400,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size (5 GiB)",
            ));
        }
        if request.header("if-match").is_some()
            || request.header("if-none-match").is_some_and(|v| v != "*")
        {
            return Err(S3Error::new(
                501,
                "NotImplemented",
                "conditional writes other than If-None-Match: * are not supported",
            ));
        }
        let create_only = request.header("if-none-match") == Some("*");
        let content_md5 = content_md5(request)?;
        let (sha256, signer) = match payload {
            Payload::Sha256(h) => (Some((Sha256::new(), h)), None),
            Payload::StreamingSigned(signer) => (None, Some((signer, None, Sha256::new()))),
            Payload::Unsigned | Payload::StreamingUnsigned => (None, None),
        };
        let mut crc32 = checksum_header(request)?;
        let mut crc_in_trailer = false;
        if aws_chunked && crc32.is_none() {
            match request
                .header("x-amz-trailer")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None => {}
                Some("x-amz-checksum-crc32") => {
                    crc32 = Some((CRC32.digest(), 0, "x-amz-checksum-crc32"));
                    crc_in_trailer = true;
                }
                Some("x-amz-checksum-crc32c") => {
                    crc32 = Some((CRC32C.digest(), 0, "x-amz-checksum-crc32c"));
                    crc_in_trailer = true;
                }
                Some(_) => {
                    return Err(S3Error::new(
                        501,
                        "NotImplemented",
                        "only the crc32 and crc32c trailing checksums are supported",
                    ))
                }
            }
        }
        let (temp, file) = self.shared.with(|s| -> Result<_, S3Error> {
            let volume = bucket_volume(s, bucket)?;
            if create_only && filesystem(s, volume).lookup(key).is_ok() {
                return Err(S3Error::new(
                    412,
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                ));
            }
            check_replace(s, volume, key)?;
            let temp = format!("{HIDDEN_PREFIX}put-{exchange}");
            let fs = filesystem(s, volume);
            let _ = fs.unlink(&temp);
            let file = fs.create(&temp).map_err(fs_failure)?;
            Ok((temp, file))
        })?;
        self.exchanges.insert(
            exchange,
            Exchange::Put(alloc::boxed::Box::new(Put {
                device: bucket.to_string(),
                temp,
                file,
                key: key.to_string(),
                resource: request.path.to_string(),
                written: 0,
                md5: Md5::new(),
                sha256,
                content_md5,
                crc32,
                crc_in_trailer,
                aws_chunked: decoded_length.map(|n| (chunked::AwsChunked::new(), n)),
                signer,
                error: None,
                mtime: client_mtime(request),
                part: None,
            })),
        );
        Ok(Opened::Body)
    }

    fn put_body(&mut self, put: &mut Put, data: &[u8]) -> Result<(), S3Error> {
        if let Some(error) = &put.error {
            return Err(error.clone());
        }
        let Some((mut decoder, declared)) = put.aws_chunked.take() else {
            return self.put_data(put, data);
        };
        let bad = |message: &str| S3Error::new(400, "IncompleteBody", message);
        let mut failure: Option<S3Error> = None;
        let result = decoder.feed(data, &mut |piece| {
            let outcome = match piece {
                chunked::Piece::Data(bytes) => {
                    if let Some((_, _, hash)) = &mut put.signer {
                        hash.update(bytes);
                    }
                    self.put_data(put, bytes)
                }
                chunked::Piece::Chunk { signature, .. } => match &mut put.signer {
                    None => Ok(()),
                    Some((signer, pending, hash)) => {
                        let previous = pending.take();
                        let digest: [u8; 32] = core::mem::take(hash).finalize().into();
                        match (previous, signature) {
                            (Some(p), _) if !signer.check(&p, &digest) => Err(chunk_mismatch()),
                            (_, None) => {
                                Err(bad("a signed aws-chunked chunk has no chunk-signature"))
                            }
                            (_, Some(sig)) => {
                                *pending = Some(sig);
                                Ok(())
                            }
                        }
                    }
                },
            };
            if let Err(e) = outcome {
                failure = Some(e);
                return Err(String::new());
            }
            Ok(())
        });
        if let Err(message) = result {
            let error = failure.unwrap_or_else(|| bad(&message));
            put.error = Some(error.clone());
            return Err(error);
        }
        if decoder.decoded() > declared {
            let error = bad("the aws-chunked body is longer than x-amz-decoded-content-length");
            put.error = Some(error.clone());
            return Err(error);
        }
        put.aws_chunked = Some((decoder, declared));
        Ok(())
    }

    /// Payload bytes: into the running digests and the temporary file.
    fn put_data(&self, put: &mut Put, data: &[u8]) -> Result<(), S3Error> {
        put.md5.update(data);
        if let Some((h, _)) = &mut put.sha256 {
            h.update(data);
        }
        if let Some((d, _, _)) = &mut put.crc32 {
            d.update(data);
        }
        let offset = put.written;
        self.shared.with(|s| -> Result<(), S3Error> {
            let volume = bucket_volume(s, &put.device)?;
            filesystem(s, volume)
                .write(put.file, offset, data)
                .map_err(fs_failure)
        })?;
        put.written += data.len() as u64;
        Ok(())
    }

    fn finish_put(&mut self, put: &mut Put, now: u64) -> Result<Reply, S3Error> {
        if let Some(error) = &put.error {
            return Err(error.clone());
        }
        if let Some((decoder, declared)) = &put.aws_chunked {
            if !decoder.done() || decoder.decoded() != *declared {
                return Err(S3Error::new(
                    400,
                    "IncompleteBody",
                    "You did not provide the number of bytes specified by x-amz-decoded-content-length",
                ));
            }
            if put.crc_in_trailer {
                let name = put.crc32.as_ref().map_or("", |c| c.2);
                let value = decoder
                    .trailer(name)
                    .and_then(unbase64::<4>)
                    .ok_or_else(|| {
                        S3Error::new(
                            400,
                            "InvalidRequest",
                            "the trailing checksum is missing or malformed",
                        )
                    })?;
                if let Some(c) = &mut put.crc32 {
                    c.1 = u32::from_be_bytes(value);
                }
            }
        }
        if let Some((signer, pending, _)) = &mut put.signer {
            // The last (empty) chunk's signature.
            let empty: [u8; 32] = Sha256::digest(b"").into();
            match pending.take() {
                Some(sig) if signer.check(&sig, &empty) => {}
                _ => return Err(chunk_mismatch()),
            }
        }
        let md5: [u8; 16] = core::mem::take(&mut put.md5).finalize().into();
        if let Some(expected) = put.content_md5 {
            if expected != md5 {
                return Err(S3Error::new(
                    400,
                    "BadDigest",
                    "The Content-MD5 you specified did not match what we received.",
                ));
            }
        }
        if let Some((h, expected)) = put.sha256.take() {
            let got: [u8; 32] = h.finalize().into();
            if got != expected {
                return Err(S3Error::new(
                    400,
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
        }
        let mut headers = String::new();
        let mut checksum = None;
        if let Some((d, expected, name)) = put.crc32.take() {
            let got = d.finalize();
            if got != expected {
                return Err(S3Error::new(
                    400,
                    "BadDigest",
                    "The checksum you specified did not match what we received.",
                ));
            }
            let _ = write!(headers, "{name}: {}\r\n", text::base64(&got.to_be_bytes()));
            checksum = Some(ObjectChecksum {
                header: name,
                value: got,
                parts: 0,
            });
        }
        if let Some((id, number)) = put.part.clone() {
            return self.finish_part(put, &id, number, (md5, checksum), headers, now);
        }
        let etag = format!("\"{}\"", hex(&md5));
        self.shared.with(|s| -> Result<(), S3Error> {
            let volume = bucket_volume(s, &put.device)?;
            check_replace(s, volume, &put.key)?;
            let fs = filesystem(s, volume);
            let replaced = fs.lookup(&put.key).ok();
            // Durable first, then one commit makes it the object.
            fs.persist(put.file).map_err(fs_failure)?;
            fs.rename(&put.temp, &put.key).map_err(fs_failure)?;
            if let Some(old) = replaced {
                s.forget_object_tag(&put.device, old);
            }
            s.set_object_tag(
                &put.device,
                put.file,
                ObjectTag {
                    md5: Some(md5),
                    parts: 0,
                    epoch: 0,
                    modified: Some(now),
                    mtime: put.mtime,
                    checksum,
                },
            );
            Ok(())
        })?;
        put.temp.clear();
        let _ = write!(headers, "ETag: {etag}\r\nx-amz-request-id: daxbox\r\n");
        Ok(Reply {
            status: 200,
            content_type: "application/xml",
            headers,
            body: ReplyBody::Bytes(Vec::new()),
        })
    }

    fn finish_delete_many(
        &mut self,
        exchange: u64,
        device: &str,
        body: &XmlBody,
        peer: allow::Who,
    ) -> Result<Reply, S3Error> {
        let (quiet, keys) = parse_delete(body.verified()?)?;
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        self.shared.with(|s| {
            for key in &keys {
                let result = check_key(key)
                    .and_then(|()| allow::require_object(s, peer.client(), device, key, true))
                    .and_then(|()| delete_one(s, device, key));
                match result {
                    Ok(()) => {
                        if !quiet {
                            let _ =
                                write!(xml, "<Deleted><Key>{}</Key></Deleted>", xml_escape(key));
                        }
                    }
                    Err(e) => {
                        let _ = write!(
                            xml,
                            "<Error><Key>{}</Key><Code>{}</Code><Message>{}</Message></Error>",
                            xml_escape(key),
                            e.code,
                            xml_escape(&e.message)
                        );
                    }
                }
            }
        });
        xml.push_str("</DeleteResult>");
        self.buffered(exchange, 200, xml)
    }
}

/// The key `x-amz-copy-source` names (`[/]bucket/key[?versionId=…]`,
/// percent-encoded), which must be in `bucket`: a copy is a daxfs clone,
/// within one filesystem.
fn copy_source(request: &Request<'_>, bucket: &str) -> Result<String, S3Error> {
    let source = request.header("x-amz-copy-source").unwrap_or("");
    let source = percent_decode(source.split('?').next().unwrap_or(""))
        .ok_or_else(|| S3Error::new(400, "InvalidArgument", "malformed x-amz-copy-source"))?;
    let source = source.strip_prefix('/').unwrap_or(&source);
    let (src_bucket, src_key) = source.split_once('/').ok_or_else(|| {
        S3Error::new(
            400,
            "InvalidArgument",
            "x-amz-copy-source must be bucket/key",
        )
    })?;
    if src_bucket != bucket {
        return Err(S3Error::new(501, "NotImplemented", "copies between buckets (devices) are not supported: a copy is a daxfs clone, within one filesystem"));
    }
    check_key(src_key)?;
    Ok(src_key.to_string())
}

fn chunk_mismatch() -> S3Error {
    S3Error::new(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided (chunk signature).",
    )
}

/// Content-MD5 header, decoded.
fn content_md5(request: &Request<'_>) -> Result<Option<[u8; 16]>, S3Error> {
    match request.header("content-md5") {
        None => Ok(None),
        Some(v) => unbase64::<16>(v).map(Some).ok_or_else(|| {
            S3Error::new(
                400,
                "InvalidDigest",
                "The Content-MD5 you specified is not valid.",
            )
        }),
    }
}

/// `x-amz-checksum-crc32` / `crc32c` header: a digest to run and the
/// value it must reach.
fn checksum_header(request: &Request<'_>) -> Result<Option<Checksum>, S3Error> {
    for (name, crc) in [
        ("x-amz-checksum-crc32", &CRC32),
        ("x-amz-checksum-crc32c", &CRC32C),
    ] {
        if let Some(v) = request.header(name) {
            let bytes = unbase64::<4>(v).ok_or_else(|| {
                S3Error::new(
                    400,
                    "InvalidRequest",
                    "Value for x-amz-checksum-crc32 header is invalid.",
                )
            })?;
            return Ok(Some((crc.digest(), u32::from_be_bytes(bytes), name)));
        }
    }
    Ok(None)
}

/// A key may be replaced: the file it names (if any) is not read-only. A
/// file NBD clients have open may be replaced or deleted: they hold it
/// (daxfs open-unlink), keep reading and writing the old object, and its
/// space returns when the last of them closes.
fn check_replace<M: PersistentMemory>(
    s: &Storage<M>,
    volume: usize,
    key: &str,
) -> Result<(), S3Error> {
    if s.device_read_only(volume) && !s.read_only_rules().is_empty() {
        return Err(denied(
            "the device is read-only (readonly= in the boot config)",
        ));
    }
    let Role::Filesystem(fs) = &s.volumes[volume].role else {
        return Err(no_such_bucket());
    };
    if let Ok(file) = fs.lookup(key) {
        if s.file_read_only(volume, file) {
            return Err(denied(
                "the object is read-only (readonly= in the boot config)",
            ));
        }
    }
    Ok(())
}

/// Deletes one key (missing keys are not an error, as in S3).
fn delete_one<M: PersistentMemory>(
    s: &mut Storage<M>,
    bucket: &str,
    key: &str,
) -> Result<(), S3Error> {
    let volume = bucket_volume(s, bucket)?;
    check_replace(s, volume, key)?;
    let fs = filesystem(s, volume);
    let file = fs.lookup(key).ok();
    match fs.unlink(key) {
        Ok(()) | Err(FsError::NotFound) | Err(FsError::InvalidName) => {}
        Err(e) => return Err(fs_failure(e)),
    }
    if let Some(file) = file {
        s.forget_object_tag(bucket, file);
    }
    Ok(())
}

/// True when the object query names an operation that is not a plain
/// object GET/PUT/DELETE.
fn object_subresource(query: &str) -> bool {
    [
        "uploads",
        "uploadId",
        "acl",
        "tagging",
        "versionId",
        "retention",
        "legal-hold",
        "torrent",
        "restore",
        "select",
        "attributes",
    ]
    .iter()
    .any(|name| query_value(query, name).is_some())
}

/// `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`
/// for a read (RFC 9110 §13.2.2 order): a 304/412 reply, or `None`.
fn preconditions(
    request: &Request<'_>,
    etag: &str,
    modified: u64,
) -> Result<Option<Reply>, S3Error> {
    let matches = |list: &str| {
        list.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.trim_start_matches("W/") == etag
        })
    };
    let failed = || {
        S3Error::new(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
    };
    let not_modified = || Reply {
        status: 304,
        content_type: "application/xml",
        headers: format!("ETag: {etag}\r\n"),
        body: ReplyBody::Bytes(Vec::new()),
    };
    if let Some(list) = request.header("if-match") {
        if !matches(list) {
            return Err(failed());
        }
    } else if let Some(since) = request
        .header("if-unmodified-since")
        .and_then(text::parse_http_date)
    {
        if modified > since {
            return Err(failed());
        }
    }
    if let Some(list) = request.header("if-none-match") {
        if matches(list) {
            return Ok(Some(not_modified()));
        }
    } else if let Some(since) = request
        .header("if-modified-since")
        .and_then(text::parse_http_date)
    {
        if modified <= since {
            return Ok(Some(not_modified()));
        }
    }
    Ok(None)
}

/// A page of a listing.
struct Listing {
    entries: Vec<daxfs::DirEntry>,
    prefixes: Vec<String>,
    /// Where the next page starts (after this name), when truncated.
    next: Option<String>,
}

/// Lists up to `max` keys and common prefixes of `prefix`, grouped by
/// `delimiter`, after `after`. Work is O(max + log files) pages of the
/// name index: a common prefix is skipped over, not walked.
///
/// `keep` (with allow rules): only the names it keeps are listed, and a
/// common prefix only when it keeps a name under it; then at most
/// [`MAX_LIST_EXAMINED`] names are examined per request, and a page cut
/// short by that is truncated at the last name examined (possibly with no
/// key at all: the client asks for the next page, as S3 allows).
fn list<M: PersistentMemory>(
    fs: &Filesystem<M>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
    mut keep: Option<&mut dyn FnMut(&str) -> bool>,
) -> Listing {
    let mut listing = Listing {
        entries: Vec::new(),
        prefixes: Vec::new(),
        next: None,
    };
    // Start at the prefix when `after` sorts before it.
    let mut cursor: Option<String> = match after {
        Some(a) if a >= prefix => Some(a.to_string()),
        _ if prefix.is_empty() => after.map(str::to_string),
        // Everything starting with `prefix` sorts after its one-shorter
        // predecessor form: list from just before it.
        _ => predecessor(prefix),
    };
    // The empty string is no name: `list(Some(""))` starts at the first.
    let mut count = 0;
    let mut examined = 0;
    loop {
        let page = fs.list(cursor.as_deref().or(Some("")), 128);
        if page.is_empty() {
            return listing;
        }
        for entry in page {
            let name = entry.name.clone();
            if keep.is_some() {
                if examined == MAX_LIST_EXAMINED {
                    listing.next = cursor;
                    return listing;
                }
                examined += 1;
            }
            cursor = Some(name.clone());
            if name.starts_with(HIDDEN_PREFIX) {
                continue;
            }
            if !name.starts_with(prefix) {
                if name.as_str() > prefix {
                    return listing;
                }
                continue;
            }
            if count == max {
                listing.next = listing
                    .entries
                    .last()
                    .map(|e| e.name.clone())
                    .max(listing.prefixes.last().cloned());
                return listing;
            }
            if let Some(keep) = keep.as_mut() {
                if !keep(&name) {
                    continue;
                }
            }
            if let Some(d) = delimiter {
                if let Some(pos) = name[prefix.len()..].find(d) {
                    let common = name[..prefix.len() + pos + d.len()].to_string();
                    // A common prefix at or before where the listing
                    // resumes was listed already (a page ended on it) or
                    // lies before start-after: S3 skips it, and listing
                    // it again would page forever.
                    let listed = after.is_some_and(|a| common.as_str() <= a);
                    if !listed && listing.prefixes.last() != Some(&common) {
                        listing.prefixes.push(common.clone());
                        count += 1;
                    }
                    // Skip every other name under it.
                    cursor = Some(format!("{common}\u{10FFFF}"));
                    break;
                }
            }
            listing.entries.push(entry);
            count += 1;
        }
    }
}

/// The greatest string below `s` that is still below every string with
/// prefix `s` (so `list(after)` starts at the first name with that
/// prefix): `s` without its last character, followed by the largest
/// characters — or simply `None` (from the start) when `s` is one
/// character below the first.
fn predecessor(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    let last = chars.pop()?;
    let mut out: String = chars.into_iter().collect();
    match char::from_u32(last as u32 - 1) {
        Some(c) if (last as u32) > 0 => {
            out.push(c);
            out.push('\u{10FFFF}');
            Some(out)
        }
        _ => (!out.is_empty()).then_some(out),
    }
}

/// An XML request body (DeleteObjects, CompleteMultipartUpload) gathered
/// in memory: at most `limit` bytes, each charged to the `http` budget
/// until it is dropped, checked against its `Content-MD5` before use.
pub(super) struct XmlBody {
    bytes: Vec<u8>,
    limit: usize,
    /// The `MalformedXML` message when the body is over `limit`.
    too_large: &'static str,
    content_md5: Option<[u8; 16]>,
    charge: Charge<'static>,
}

impl XmlBody {
    pub(super) fn new(
        limit: usize,
        too_large: &'static str,
        content_md5: Option<[u8; 16]>,
        charge: Charge<'static>,
    ) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            too_large,
            content_md5,
            charge,
        }
    }

    /// Takes the next piece of the body.
    pub(super) fn push(&mut self, data: &[u8]) -> Result<(), S3Error> {
        if self.bytes.len() + data.len() > self.limit {
            return Err(S3Error::new(400, "MalformedXML", self.too_large));
        }
        self.charge.grow(data.len()).map_err(|_| slow_down())?;
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    /// The whole body, once it matches its `Content-MD5` (if one was sent).
    pub(super) fn verified(&self) -> Result<&[u8], S3Error> {
        if let Some(expected) = self.content_md5 {
            let got: [u8; 16] = Md5::digest(&self.bytes).into();
            if got != expected {
                return Err(S3Error::new(
                    400,
                    "BadDigest",
                    "The Content-MD5 you specified did not match what we received.",
                ));
            }
        }
        Ok(&self.bytes)
    }
}

/// `503 SlowDown`: the `http` memory budget is used up.
pub(super) fn slow_down() -> S3Error {
    S3Error::new(
        503,
        "SlowDown",
        "the HTTP memory budget is used up; try again later",
    )
}

/// The S3 `MalformedXML` error, for every XML request body.
pub(super) fn malformed() -> S3Error {
    S3Error::new(
        400,
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published schema",
    )
}

/// Walks an XML request body (UTF-8, elements nested at most 8 deep, each
/// element's text at most `max_text` bytes), calling `on_close(parents,
/// element, text)` as each element closes, with its unescaped text (the
/// callback may take it). Anything malformed is `MalformedXML`.
pub(super) fn walk_xml(
    body: &[u8],
    max_text: usize,
    mut on_close: impl FnMut(&[&str], &str, &mut String) -> Result<(), S3Error>,
) -> Result<(), S3Error> {
    let text = core::str::from_utf8(body).map_err(|_| malformed())?;
    let mut stack: Vec<&str> = Vec::new();
    let mut current = String::new();
    for token in xmlparser::Tokenizer::from(text) {
        match token.map_err(|_| malformed())? {
            xmlparser::Token::ElementStart { local, .. } => {
                if stack.len() >= 8 {
                    return Err(malformed());
                }
                stack.push(local.as_str());
                current.clear();
            }
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Close(_, local) => {
                    if stack.pop() != Some(local.as_str()) {
                        return Err(malformed());
                    }
                    on_close(&stack, local.as_str(), &mut current)?;
                    current.clear();
                }
                xmlparser::ElementEnd::Empty => {
                    stack.pop();
                }
            },
            xmlparser::Token::Text { text } => {
                if current.len() + text.as_str().len() > max_text {
                    return Err(malformed());
                }
                current.push_str(&unescape(text.as_str()).ok_or_else(malformed)?);
            }
            xmlparser::Token::Cdata { text, .. } => {
                if current.len() + text.as_str().len() > max_text {
                    return Err(malformed());
                }
                current.push_str(text.as_str());
            }
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(malformed());
    }
    Ok(())
}

/// Parses a DeleteObjects body: (quiet, keys).
fn parse_delete(body: &[u8]) -> Result<(bool, Vec<String>), S3Error> {
    let mut keys = Vec::new();
    let mut quiet = false;
    // The body itself is bounded (`MAX_DELETE_BODY`), so a key's text is.
    walk_xml(body, usize::MAX, |parents, element, text| {
        match (parents, element) {
            (["Delete", "Object"], "Key") => {
                if keys.len() == MAX_DELETE_KEYS {
                    return Err(malformed());
                }
                keys.push(core::mem::take(text));
            }
            (["Delete"], "Quiet") => quiet = text.trim() == "true",
            _ => {}
        }
        Ok(())
    })?;
    if keys.is_empty() {
        return Err(malformed());
    }
    Ok((quiet, keys))
}

/// Resolves XML's five entities and character references.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..].find(';')? + amp;
        let entity = &rest[amp + 1..semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") => char::from_u32(u32::from_str_radix(&e[2..], 16).ok()?)?,
            e if e.starts_with('#') => char::from_u32(e[1..].parse().ok()?)?,
            _ => return None,
        };
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

impl<M: PersistentMemory, S: SharedStorage<M>> HttpRoutes for S3Routes<M, S> {
    fn route(&mut self, _request: &Request<'_>, _now_ms: u64) -> Option<Response> {
        None
    }

    fn open(&mut self, request: &Request<'_>, exchange: u64, now_ms: u64) -> Option<Opened> {
        // The dashboard has `GET /` without S3 credentials (agreed path rule).
        let signed = request
            .header("authorization")
            .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"))
            || query_value(request.query, "X-Amz-Signature").is_some();
        if request.path == "/" && !signed {
            return None;
        }
        // Unsigned requests are the object API's only on a bucket path
        // (anonymous reads); others (`/metrics`, ...) belong to other routes.
        let first = request
            .path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if !signed && daxbox_syntax::device_index(first).is_none() {
            return None;
        }
        if self.exchanges.len() >= MAX_EXCHANGES {
            let e = S3Error::new(503, "SlowDown", "too many requests in progress");
            return Some(Opened::Reply(e.reply(request.path)));
        }
        let resource = request.path;
        match self.dispatch(request, exchange, now_ms) {
            Ok(opened) => {
                self.exchanges.entry(exchange).or_insert(Exchange::Done);
                Some(opened)
            }
            Err(e) => {
                self.exchanges.remove(&exchange);
                self.exchanges.insert(exchange, Exchange::Done);
                Some(Opened::Reply(e.reply(resource)))
            }
        }
    }

    fn body(&mut self, exchange: u64, data: &[u8], _now_ms: u64) -> Result<(), Reply> {
        match self.exchanges.remove(&exchange) {
            Some(Exchange::Put(mut put)) => {
                let result = self.put_body(&mut put, data);
                let resource = put.resource.clone();
                self.exchanges.insert(exchange, Exchange::Put(put));
                result.map_err(|e| e.reply(&resource))
            }
            Some(Exchange::DeleteMany {
                device,
                resource,
                mut body,
                peer,
            }) => {
                if let Err(error) = body.push(data) {
                    self.exchanges.insert(exchange, Exchange::Done);
                    return Err(error.reply(&resource));
                }
                self.exchanges.insert(
                    exchange,
                    Exchange::DeleteMany {
                        device,
                        resource,
                        body,
                        peer,
                    },
                );
                Ok(())
            }
            Some(Exchange::Complete(mut gather)) => {
                if let Err(error) = self.complete_body(&mut gather, data) {
                    let reply = error.reply(&gather.resource);
                    self.exchanges.insert(exchange, Exchange::Done);
                    return Err(reply);
                }
                self.exchanges.insert(exchange, Exchange::Complete(gather));
                Ok(())
            }
            Some(other) => {
                self.exchanges.insert(exchange, other);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn finish(&mut self, exchange: u64, _trailers: &str, now_ms: u64) -> Reply {
        let now = self.now(now_ms);
        match self.exchanges.remove(&exchange) {
            Some(Exchange::Put(mut put)) => {
                let result = self.finish_put(&mut put, now);
                let resource = put.resource.clone();
                self.exchanges.insert(exchange, Exchange::Put(put));
                result.unwrap_or_else(|e| e.reply(&resource))
            }
            Some(Exchange::DeleteMany {
                device,
                resource,
                body,
                peer,
            }) => {
                self.exchanges.insert(exchange, Exchange::Done);
                // The body's charge is held until the reply is made.
                let result = self.finish_delete_many(exchange, &device, &body, peer);
                result.unwrap_or_else(|e| e.reply(&resource))
            }
            Some(Exchange::Complete(gather)) => {
                self.exchanges.insert(exchange, Exchange::Done);
                let resource = gather.resource.clone();
                self.finish_complete(exchange, *gather, now)
                    .unwrap_or_else(|e| e.reply(&resource))
            }
            other => {
                if let Some(other) = other {
                    self.exchanges.insert(exchange, other);
                }
                S3Error::new(500, "InternalError", "no request in progress").reply("/")
            }
        }
    }

    fn read(&mut self, exchange: u64, offset: u64, out: &mut [u8]) -> usize {
        if let Some(Exchange::Buffer { bytes, .. }) = self.exchanges.get(&exchange) {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let n = out.len().min(bytes.len() - start);
            out[..n].copy_from_slice(&bytes[start..start + n]);
            return n;
        }
        let Some(Exchange::Get {
            device,
            file,
            start,
            ..
        }) = self.exchanges.get(&exchange)
        else {
            return 0;
        };
        let (device, file, start) = (device.clone(), *file, *start);
        self.shared.with(|s| {
            let Ok(volume) = bucket_volume(s, &device) else {
                return 0;
            };
            filesystem(s, volume)
                .read(file, start + offset, out)
                .unwrap_or(0)
        })
    }

    fn end(&mut self, exchange: u64) {
        let ended = self.exchanges.remove(&exchange);
        if let Some(Exchange::Get { hold: Some(id), .. }) = ended {
            self.shared.with(|s| s.release_object_read(id));
            return;
        }
        if let Some(Exchange::Put(put)) = ended {
            if !put.temp.is_empty() {
                // Cut off or refused: the old object stays, the partial
                // body goes.
                self.shared.with(|s| {
                    if let Ok(volume) = bucket_volume(s, &put.device) {
                        let _ = filesystem(s, volume).unlink(&put.temp);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
