//! S3 multipart upload: CreateMultipartUpload (`POST ?uploads`),
//! UploadPart (`PUT ?partNumber=N&uploadId=ID`; with `x-amz-copy-source`
//! UploadPartCopy, which shares the source's blocks for block-aligned
//! ranges, see `copy_part`), CompleteMultipartUpload
//! (`POST ?uploadId=ID` with the XML part list), AbortMultipartUpload
//! (`DELETE ?uploadId=ID`), ListParts (`GET ?uploadId=ID`) and
//! ListMultipartUploads (`GET /bucket?uploads`).
//!
//! An upload lives in RAM (its record charged to the `http` budget); each
//! part is a hidden file (`U+0001 mpu-ID-N`, see [`super::HIDDEN_PREFIX`])
//! written as PutObject writes its temporary file: streamed to pmem, with
//! the same `Content-MD5`, `x-amz-content-sha256`, aws-chunked and
//! checksum checks. Nothing of an upload is listed, served over NBD or
//! seen by the shell; a reboot forgets uploads and the start-up sweep
//! ([`super::sweep_temporaries`]) removes their part files.
//!
//! Complete checks the list (ascending part numbers, each part uploaded
//! with the ETag named, every part but the last at least [`MIN_PART`]),
//! clones the first part (a daxfs copy-on-write clone, constant time)
//! into a hidden result file, appends the other parts to it with
//! [`daxfs::Filesystem::append_from`] (while the result's size is a
//! multiple of 2 MiB, as it is after parts of whole MiB pairs, a part's
//! extents move in one daxfs transaction and no byte is copied; otherwise
//! its bytes are copied), makes it durable and renames it over the key in
//! one daxfs commit: readers and NBD clients see the old object or the
//! new one. `x-amz-meta-mtime` of CreateMultipartUpload is kept with the
//! object, as a PutObject's is. The ETag is S3's: the hex MD5 of the concatenated part MD5s,
//! `-N`. A Complete refused by its checks leaves the upload as it was (it
//! may be retried); one that fails while joining (no space, no memory)
//! removes the result and the upload, whose parts it had begun to
//! consume.
//!
//! Bounds: [`MAX_UPLOADS`] uploads in progress, part numbers
//! 1..=[`MAX_PARTS`], a part at most [`super::MAX_PUT`] bytes, a Complete
//! body at most [`MAX_COMPLETE_BODY`] bytes; every record is charged to
//! the `http` budget (`SlowDown` when it is used up).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use daxbox_budget::Charge;
use daxbox_netstack::http::{Opened, Reply, ReplyBody, Request};
use daxbox_persist::PersistentMemory;
use daxfs::FileId;
use md5::{Digest as _, Md5};

use super::auth::{query_value, Payload};
use super::text::{hex, iso8601, xml_escape};
use super::{
    bucket_volume, check_replace, client_mtime, content_md5, copy_source, filesystem, fs_failure,
    malformed, param, slow_down, walk_xml, Exchange, ObjectChecksum, ObjectTag, Put, S3Error,
    S3Routes, XmlBody, HIDDEN_PREFIX,
};
use crate::SharedStorage;

/// Most uploads in progress at once (all buckets); one more is refused
/// with `503 SlowDown`.
pub const MAX_UPLOADS: usize = 64;
/// Highest part number (S3's limit): parts per upload are at most this.
pub const MAX_PARTS: u32 = 10_000;
/// Smallest part other than the last (S3's limit), bytes.
pub const MIN_PART: u64 = 5 << 20;
/// Largest CompleteMultipartUpload body, bytes (10,000 parts with their
/// ETags fit well within it); beyond, `MalformedXML`.
pub const MAX_COMPLETE_BODY: usize = 2 << 20;
/// Largest UploadPartCopy range that is copied byte by byte (one that
/// cannot share the source's blocks: not starting on a 4 KiB block),
/// bytes; it is done within one request, so it is kept small.
pub const MAX_UNALIGNED_COPY: u64 = 16 << 20;
/// Largest UploadPartCopy range whose MD5 (the part's ETag) is computed
/// from its bytes, within one request; a larger one gets a tag derived
/// from the source and the range.
pub const MAX_COPY_HASH: u64 = 16 << 20;
/// Bytes charged to the `http` budget for each part's record.
const PART_RECORD: usize = 128;
/// Bytes charged for an upload's record (plus its key).
const UPLOAD_RECORD: usize = 256;
/// Most parts one ListParts reply names.
const MAX_LIST_PARTS: usize = 1000;

/// One uploaded part.
pub(super) struct Part {
    size: u64,
    md5: [u8; 16],
    modified: u64,
    /// The CRC its upload carried and that was verified.
    checksum: Option<ObjectChecksum>,
}

/// An upload in progress.
pub(super) struct Upload {
    device: String,
    key: String,
    initiated: u64,
    /// `x-amz-meta-mtime` of CreateMultipartUpload, kept as a PUT keeps
    /// it (the only user metadata the object API keeps).
    mtime: Option<(u64, u32)>,
    parts: BTreeMap<u32, Part>,
    /// The record and its parts' records, charged to the budget.
    charge: Charge<'static>,
}

/// The uploads in progress.
#[derive(Default)]
pub(super) struct Uploads {
    map: BTreeMap<String, Upload>,
    next: u64,
}

impl Uploads {
    /// Uploads in progress.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A CompleteMultipartUpload gathering its (bounded) XML body.
pub(super) struct Gather {
    upload: String,
    device: String,
    key: String,
    pub(super) resource: String,
    body: XmlBody,
}

/// True when the object request is a multipart operation.
pub(super) fn wanted(query: &str) -> bool {
    query_value(query, "uploads").is_some() || query_value(query, "uploadId").is_some()
}

/// The hidden name of part `number` of `upload`.
fn part_name(upload: &str, number: u32) -> String {
    format!("{HIDDEN_PREFIX}mpu-{upload}-{number}")
}

fn no_such_upload() -> S3Error {
    S3Error::new(
        404,
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
    )
}

const XMLNS: &str = "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"";

impl<M: PersistentMemory, S: SharedStorage<M>> S3Routes<M, S> {
    /// A multipart operation on `bucket`/`key` (the dispatch's hook).
    pub(super) fn multipart(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        key: &str,
        payload: Payload,
        exchange: u64,
        now: u64,
    ) -> Result<Opened, S3Error> {
        let upload = param(request.query, "uploadId")?;
        match (request.method, upload) {
            ("POST", None) => self.create_upload(request, bucket, key, now),
            ("PUT", Some(id)) => {
                self.upload_part(request, (bucket, key), &id, payload, exchange, now)
            }
            ("POST", Some(id)) => {
                self.lookup_upload(&id, bucket, key)?;
                self.exchanges.insert(
                    exchange,
                    Exchange::Complete(alloc::boxed::Box::new(Gather {
                        upload: id,
                        device: bucket.to_string(),
                        key: key.to_string(),
                        resource: request.path.to_string(),
                        body: XmlBody::new(
                            MAX_COMPLETE_BODY,
                            "the CompleteMultipartUpload request body is over 2 MiB",
                            content_md5(request)?,
                            self.budget.empty(),
                        ),
                    })),
                );
                Ok(Opened::Body)
            }
            ("DELETE", Some(id)) => {
                self.lookup_upload(&id, bucket, key)?;
                self.abort_upload(&id);
                Ok(Opened::Reply(Reply {
                    status: 204,
                    content_type: "application/xml",
                    headers: "x-amz-request-id: daxbox\r\n".into(),
                    body: ReplyBody::Bytes(Vec::new()),
                }))
            }
            ("GET", Some(id)) => self.list_parts(request, bucket, key, &id, exchange),
            _ => Err(S3Error::new(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            )),
        }
    }

    fn lookup_upload(&self, id: &str, bucket: &str, key: &str) -> Result<&Upload, S3Error> {
        self.uploads
            .map
            .get(id)
            .filter(|u| u.device == bucket && u.key == key)
            .ok_or_else(no_such_upload)
    }

    fn create_upload(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        key: &str,
        now: u64,
    ) -> Result<Opened, S3Error> {
        self.shared.with(|s| -> Result<(), S3Error> {
            let volume = bucket_volume(s, bucket)?;
            check_replace(s, volume, key)
        })?;
        if self.uploads.map.len() >= MAX_UPLOADS {
            return Err(S3Error::new(
                503,
                "SlowDown",
                "too many multipart uploads in progress (at most 64): complete or abort one",
            ));
        }
        let charge = self
            .budget
            .charge(UPLOAD_RECORD + key.len())
            .map_err(|_| slow_down())?;
        self.uploads.next += 1;
        let id = format!(
            "{:08x}{:016x}",
            self.boot_nonce as u32 ^ (self.boot_nonce >> 32) as u32,
            self.uploads.next
        );
        self.uploads.map.insert(
            id.clone(),
            Upload {
                device: bucket.to_string(),
                key: key.to_string(),
                initiated: now,
                mtime: client_mtime(request),
                parts: BTreeMap::new(),
                charge,
            },
        );
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult {XMLNS}><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
            xml_escape(bucket),
            xml_escape(key)
        );
        Ok(Opened::Reply(Reply::bytes(
            200,
            "application/xml",
            xml.into_bytes(),
        )))
    }

    fn upload_part(
        &mut self,
        request: &Request<'_>,
        (bucket, key): (&str, &str),
        id: &str,
        payload: Payload,
        exchange: u64,
        now: u64,
    ) -> Result<Opened, S3Error> {
        let number = param(request.query, "partNumber")?
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=MAX_PARTS).contains(n))
            .ok_or_else(|| {
                S3Error::new(
                    400,
                    "InvalidArgument",
                    "Part number must be an integer between 1 and 10000, inclusive",
                )
            })?;
        self.lookup_upload(id, bucket, key)?;
        if request.header("x-amz-copy-source").is_some() {
            return self.copy_part(request, bucket, (id, number), exchange, now);
        }
        let opened = self.start_put(request, bucket, key, payload, exchange)?;
        if let Some(Exchange::Put(put)) = self.exchanges.get_mut(&exchange) {
            put.part = Some((id.to_string(), number));
        }
        Ok(opened)
    }

    /// The end of a part's body, checked (its MD5 and verified CRC): the
    /// part file becomes part `number` (replacing an earlier upload of
    /// that number).
    pub(super) fn finish_part(
        &mut self,
        put: &mut Put,
        id: &str,
        number: u32,
        (md5, checksum): ([u8; 16], Option<ObjectChecksum>),
        mut headers: String,
        now: u64,
    ) -> Result<Reply, S3Error> {
        let upload = self
            .uploads
            .map
            .get_mut(id)
            .filter(|u| u.device == put.device && u.key == put.key)
            .ok_or_else(no_such_upload)?;
        let replacing = upload.parts.contains_key(&number);
        if !replacing {
            upload.charge.grow(PART_RECORD).map_err(|_| slow_down())?;
        }
        let name = part_name(id, number);
        let renamed = self.shared.with(|s| -> Result<(), S3Error> {
            let volume = bucket_volume(s, &put.device)?;
            filesystem(s, volume)
                .rename(&put.temp, &name)
                .map_err(fs_failure)
        });
        if let Err(e) = renamed {
            if !replacing {
                upload.charge.shrink(PART_RECORD);
            }
            return Err(e);
        }
        put.temp.clear();
        upload.parts.insert(
            number,
            Part {
                size: put.written,
                md5,
                modified: now,
                checksum,
            },
        );
        let _ = write!(
            headers,
            "ETag: \"{}\"\r\nx-amz-request-id: daxbox\r\n",
            hex(&md5)
        );
        Ok(Reply {
            status: 200,
            content_type: "application/xml",
            headers,
            body: ReplyBody::Bytes(Vec::new()),
        })
    }

    /// UploadPartCopy: part `number` of upload `id` is the object
    /// `x-amz-copy-source` names, or its `x-amz-copy-source-range`. A range
    /// that starts on a block (4 KiB) and ends on one or at the source's
    /// end shares the source's blocks ([`daxfs::Filesystem::clone_blocks`]:
    /// no byte copied, constant space); any other range is copied, at most
    /// [`MAX_UNALIGNED_COPY`] bytes. The part's ETag is the MD5 of its
    /// bytes: the source's own when the whole single-part object is
    /// copied, else hashed, up to [`MAX_COPY_HASH`] bytes; beyond that it
    /// is the MD5 of the source's ETag and the range (not of the bytes:
    /// nothing could compute that within one event-loop turn).
    fn copy_part(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        (id, number): (&str, u32),
        exchange: u64,
        now: u64,
    ) -> Result<Opened, S3Error> {
        let src_key = copy_source(request, bucket)?;
        let range = request.header("x-amz-copy-source-range");
        let temp = format!("{HIDDEN_PREFIX}copy-part-{exchange}");
        let name = part_name(id, number);
        let peer = super::allow::Who::of(request);
        let (size, md5) = self.shared.with(|s| -> Result<(u64, [u8; 16]), S3Error> {
            super::allow::require_object(s, peer.client(), bucket, &src_key, false)?;
            let volume = bucket_volume(s, bucket)?;
            let fs = filesystem(s, volume);
            let src = fs.lookup(&src_key).map_err(|_| super::no_such_key())?;
            let src_size = fs.file_size(src).map_err(fs_failure)?;
            let (first, len) = copy_range(range, src_size)?;
            if len > super::MAX_PUT {
                return Err(S3Error::new(
                    400,
                    "EntityTooLarge",
                    "a part is at most 5 GiB",
                ));
            }
            let src_tag = s.object_tag(bucket, src);
            let fs = filesystem(s, volume);
            let _ = fs.unlink(&temp);
            let block = 4096;
            let aligned = first % block == 0 && (len % block == 0 || first + len == src_size);
            let whole_md5 = src_tag
                .filter(|t| t.parts == 0 && first == 0 && len == src_size)
                .and_then(|t| t.md5);
            let made = (|| -> Result<[u8; 16], S3Error> {
                let hash = whole_md5.is_none() && len <= MAX_COPY_HASH;
                let mut digest = Md5::new();
                let part = if aligned {
                    fs.clone_blocks(src, first / block, len.div_ceil(block), &temp)
                        .map_err(fs_failure)?
                } else if len <= MAX_UNALIGNED_COPY {
                    fs.create(&temp).map_err(fs_failure)?
                } else {
                    return Err(S3Error::new(
                        400,
                        "InvalidRequest",
                        "a x-amz-copy-source-range that does not start on a multiple of 4 KiB (and end on one or at the end of the object) is copied byte by byte: at most 16 MiB",
                    ));
                };
                let mut buf = alloc::vec![0u8; 64 * 1024];
                if !aligned || hash {
                    let mut done = 0;
                    while done < len {
                        let n = (len - done).min(buf.len() as u64) as usize;
                        let got = fs.read(src, first + done, &mut buf[..n]).map_err(fs_failure)?;
                        if got != n {
                            return Err(S3Error::new(500, "InternalError", "the source ended early"));
                        }
                        if !aligned {
                            fs.write(part, done, &buf[..n]).map_err(fs_failure)?;
                        }
                        digest.update(&buf[..n]);
                        done += n as u64;
                    }
                    fs.persist(part).map_err(fs_failure)?;
                }
                if let Some(md5) = whole_md5 {
                    return Ok(md5);
                }
                if hash {
                    return Ok(digest.finalize().into());
                }
                // Too large to hash now: a tag of the source and range.
                let mut tag = Md5::new();
                tag.update(b"daxbox-part-copy");
                tag.update(src.slot().to_le_bytes());
                tag.update(src.generation().to_le_bytes());
                tag.update(src_tag.and_then(|t| t.md5).unwrap_or_default());
                tag.update(first.to_le_bytes());
                tag.update(len.to_le_bytes());
                Ok(tag.finalize().into())
            })();
            let md5 = match made.and_then(|md5| {
                fs.rename(&temp, &name).map_err(fs_failure)?;
                Ok(md5)
            }) {
                Ok(md5) => md5,
                Err(e) => {
                    let _ = fs.unlink(&temp);
                    return Err(e);
                }
            };
            Ok((len, md5))
        })?;
        let upload = self.uploads.map.get_mut(id).ok_or_else(no_such_upload)?;
        if !upload.parts.contains_key(&number) && upload.charge.grow(PART_RECORD).is_err() {
            self.shared.with(|s| {
                if let Ok(volume) = bucket_volume(s, bucket) {
                    let _ = filesystem(s, volume).unlink(&name);
                }
            });
            return Err(slow_down());
        }
        upload.parts.insert(
            number,
            Part {
                size,
                md5,
                modified: now,
                checksum: None,
            },
        );
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyPartResult {XMLNS}><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag></CopyPartResult>",
            iso8601(now),
            hex(&md5)
        );
        Ok(Opened::Reply(Reply::bytes(
            200,
            "application/xml",
            xml.into_bytes(),
        )))
    }

    /// Removes upload `id` and its part files.
    fn abort_upload(&mut self, id: &str) {
        let Some(upload) = self.uploads.map.remove(id) else {
            return;
        };
        self.shared.with(|s| {
            if let Ok(volume) = bucket_volume(s, &upload.device) {
                let fs = filesystem(s, volume);
                for number in upload.parts.keys() {
                    let _ = fs.unlink(&part_name(id, *number));
                }
            }
        });
    }

    fn list_parts(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        key: &str,
        id: &str,
        exchange: u64,
    ) -> Result<Opened, S3Error> {
        let bad = |what: &str| S3Error::new(400, "InvalidArgument", what);
        let marker = match param(request.query, "part-number-marker")? {
            None => 0,
            Some(m) => m
                .parse::<u32>()
                .map_err(|_| bad("part-number-marker must be an integer"))?,
        };
        let max = match param(request.query, "max-parts")? {
            None => MAX_LIST_PARTS,
            Some(m) => m
                .parse::<usize>()
                .map_err(|_| bad("max-parts must be an integer"))?
                .min(MAX_LIST_PARTS),
        };
        let upload = self.lookup_upload(id, bucket, key)?;
        let mut body = String::new();
        let mut last = marker;
        let mut truncated = false;
        for (listed, (number, part)) in upload.parts.range(marker.saturating_add(1)..).enumerate() {
            if listed == max {
                truncated = true;
                break;
            }
            let _ = write!(
                body,
                "<Part><PartNumber>{number}</PartNumber><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size></Part>",
                iso8601(part.modified),
                hex(&part.md5),
                part.size
            );
            last = *number;
        }
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListPartsResult {XMLNS}><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId><Initiator><ID>daxbox</ID><DisplayName>daxbox</DisplayName></Initiator><Owner><ID>daxbox</ID><DisplayName>daxbox</DisplayName></Owner><StorageClass>STANDARD</StorageClass><PartNumberMarker>{marker}</PartNumberMarker>",
            xml_escape(bucket),
            xml_escape(key)
        );
        let _ = write!(
            xml,
            "<NextPartNumberMarker>{last}</NextPartNumberMarker><MaxParts>{max}</MaxParts><IsTruncated>{truncated}</IsTruncated>{body}</ListPartsResult>"
        );
        Ok(Opened::Reply(self.buffered(exchange, 200, xml)?))
    }

    /// ListMultipartUploads (`GET /bucket?uploads`, `prefix`): at most
    /// [`MAX_UPLOADS`] exist, so one page holds them all.
    pub(super) fn list_uploads(
        &mut self,
        request: &Request<'_>,
        bucket: &str,
        exchange: u64,
    ) -> Result<Opened, S3Error> {
        self.shared.with(|s| bucket_volume(s, bucket).map(|_| ()))?;
        let prefix = param(request.query, "prefix")?.unwrap_or_default();
        let mut uploads: Vec<(&String, &Upload)> = self
            .uploads
            .map
            .iter()
            .filter(|(_, u)| u.device == bucket && u.key.starts_with(prefix.as_str()))
            .collect();
        uploads.sort_by(|a, b| (&a.1.key, a.0).cmp(&(&b.1.key, b.0)));
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult {XMLNS}><Bucket>{}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><Prefix>{}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>",
            xml_escape(bucket),
            xml_escape(&prefix)
        );
        for (id, u) in uploads {
            let _ = write!(
                xml,
                "<Upload><Key>{}</Key><UploadId>{id}</UploadId><Initiator><ID>daxbox</ID><DisplayName>daxbox</DisplayName></Initiator><Owner><ID>daxbox</ID><DisplayName>daxbox</DisplayName></Owner><StorageClass>STANDARD</StorageClass><Initiated>{}</Initiated></Upload>",
                xml_escape(&u.key),
                iso8601(u.initiated)
            );
        }
        xml.push_str("</ListMultipartUploadsResult>");
        Ok(Opened::Reply(self.buffered(exchange, 200, xml)?))
    }

    /// More of a Complete body (bounded, charged).
    pub(super) fn complete_body(
        &mut self,
        gather: &mut Gather,
        data: &[u8],
    ) -> Result<(), S3Error> {
        gather.body.push(data)
    }

    /// The end of a Complete body: checks the part list and makes the
    /// object.
    pub(super) fn finish_complete(
        &mut self,
        exchange: u64,
        gather: Gather,
        now: u64,
    ) -> Result<Reply, S3Error> {
        // The parsed list is no larger than the body, whose charge is
        // held until the end.
        let list = parse_complete(gather.body.verified()?)?;
        let (id, device, key) = (gather.upload, gather.device, gather.key);
        let upload = self.lookup_upload(&id, &device, &key)?;
        if list.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(S3Error::new(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            ));
        }
        // Every part named must exist with its ETag, before sizes count.
        let mut sizes = Vec::with_capacity(list.len());
        let mut digest = Md5::new();
        // S3's composite checksum, when every part has a CRC of one kind.
        let mut checksums = Vec::with_capacity(list.len());
        for (number, etag) in &list {
            let part = upload.parts.get(number).filter(|p| etag.trim().trim_matches('"') == hex(&p.md5)).ok_or_else(|| {
                S3Error::new(
                    400,
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.",
                )
            })?;
            sizes.push(part.size);
            digest.update(part.md5);
            checksums.push(part.checksum);
        }
        let checksum = composite(&checksums);
        if sizes[..sizes.len() - 1].iter().any(|&size| size < MIN_PART) {
            return Err(S3Error::new(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size (every part but the last must be at least 5 MiB).",
            ));
        }
        let md5: [u8; 16] = digest.finalize().into();
        let mtime = upload.mtime;
        let count = list.len() as u32;
        let numbers: Vec<u32> = list.iter().map(|(n, _)| *n).collect();
        let file = self.shared.with(|s| -> Result<FileId, (S3Error, bool)> {
            let volume = bucket_volume(s, &device).map_err(|e| (e, false))?;
            check_replace(s, volume, &key).map_err(|e| (e, false))?;
            let result = format!("{HIDDEN_PREFIX}mpu-{id}-result");
            let fs = filesystem(s, volume);
            let _ = fs.unlink(&result);
            let mut moved = false;
            let built = (|| -> Result<FileId, S3Error> {
                let file = fs
                    .clone_file(&part_name(&id, numbers[0]), &result)
                    .map_err(fs_failure)?;
                for number in &numbers[1..] {
                    let part = fs.lookup(&part_name(&id, *number)).map_err(fs_failure)?;
                    // From here on a failure loses the parts moved so far:
                    // the upload is then removed.
                    moved = true;
                    fs.append_from(file, part).map_err(fs_failure)?;
                }
                // Durable first, then one commit makes it the object.
                fs.persist(file).map_err(fs_failure)?;
                fs.rename(&result, &key).map_err(fs_failure)?;
                Ok(file)
            })();
            if built.is_err() {
                let _ = fs.unlink(&result);
            }
            built.map_err(|e| (e, moved))
        });
        let file = match file {
            Ok(file) => file,
            Err((e, moved)) => {
                if moved {
                    self.abort_upload(&id);
                }
                return Err(e);
            }
        };
        // The object is made: the parts go.
        self.abort_upload(&id);
        self.shared.with(|s| {
            s.set_object_tag(
                &device,
                file,
                ObjectTag {
                    md5: Some(md5),
                    parts: count,
                    epoch: 0,
                    modified: Some(now),
                    mtime,
                    checksum,
                },
            );
        });
        let etag = format!("\"{}-{count}\"", hex(&md5));
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult {XMLNS}><Location>/{}/{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
            xml_escape(&device),
            xml_escape(&key),
            xml_escape(&device),
            xml_escape(&key),
            xml_escape(&etag)
        );
        let mut reply = self.buffered(exchange, 200, xml)?;
        let _ = write!(reply.headers, "ETag: {etag}\r\n");
        Ok(reply)
    }
}

/// `x-amz-copy-source-range` (`bytes=first-last`, within the source) as
/// (first byte, length); none: the whole source.
fn copy_range(range: Option<&str>, size: u64) -> Result<(u64, u64), S3Error> {
    let Some(range) = range else {
        return Ok((0, size));
    };
    let bad = || {
        S3Error::new(
            400,
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy, within the source object",
        )
    };
    let (first, last) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let number = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (first, last) = (
        number(first).ok_or_else(bad)?,
        number(last).ok_or_else(bad)?,
    );
    if first > last || last >= size {
        return Err(bad());
    }
    Ok((first, last - first + 1))
}

/// S3's composite checksum of parts: the CRC of their big-endian CRCs,
/// when every part has one and all are of the same kind.
fn composite(parts: &[Option<ObjectChecksum>]) -> Option<ObjectChecksum> {
    let header = parts.first().copied().flatten()?.header;
    let mut digest = ObjectChecksum::algorithm(header)?.digest();
    for part in parts {
        let part = part.filter(|p| p.header == header && p.parts == 0)?;
        digest.update(&part.value.to_be_bytes());
    }
    Some(ObjectChecksum {
        header,
        value: digest.finalize(),
        parts: u32::try_from(parts.len()).ok()?,
    })
}

/// Parses a CompleteMultipartUpload body: (part number, ETag) in the
/// order given; at most [`MAX_PARTS`] parts.
fn parse_complete(body: &[u8]) -> Result<Vec<(u32, String)>, S3Error> {
    let mut parts = Vec::new();
    let mut number: Option<u32> = None;
    let mut etag: Option<String> = None;
    walk_xml(body, 1024, |parents, element, text| {
        match (parents, element) {
            (["CompleteMultipartUpload", "Part"], "PartNumber") => {
                number = Some(text.trim().parse().map_err(|_| malformed())?);
            }
            (["CompleteMultipartUpload", "Part"], "ETag") => {
                etag = Some(core::mem::take(text));
            }
            (["CompleteMultipartUpload"], "Part") => {
                if parts.len() == MAX_PARTS as usize {
                    return Err(malformed());
                }
                match (number.take(), etag.take()) {
                    (Some(n), Some(e)) => parts.push((n, e)),
                    _ => return Err(malformed()),
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    if parts.is_empty() {
        return Err(malformed());
    }
    Ok(parts)
}
