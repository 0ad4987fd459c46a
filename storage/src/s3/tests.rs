//! The object API over `VecMemory`, driven through the real HTTP service
//! with requests signed as a client signs them.

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use std::collections::BTreeMap as Map;

use daxbox_netstack::http::{Bench, HttpConnection, HttpService};
use daxbox_netstack::TcpService;
use md5::{Digest, Md5};
use sha2::Sha256;

use super::auth::sign_for_test;
use super::text::{base64, hex};
use super::*;
use crate::testing::{Fixture, TestMemory};

/// 2026-12-05T03:48:56Z.
const T0: u64 = 1_796_442_536;
const AMZ_DATE: &str = "20261205T034856Z";

#[derive(Clone)]
struct Shared(Rc<RefCell<Fixture>>);

impl SharedStorage<TestMemory> for Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Storage<TestMemory>) -> R) -> R {
        f(&mut self.0.borrow_mut().storage)
    }
}

struct Answer {
    status: u16,
    headers: Map<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// The S3 error code of an XML error document.
    fn code(&self) -> String {
        let text = self.text();
        text.split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code.to_string())
            .unwrap_or_default()
    }
}

struct Client {
    fixture: Rc<RefCell<Fixture>>,
    service: HttpService<S3Routes<TestMemory, Shared>>,
    key: AccessKey,
    /// The client address the transport reports.
    peer: Option<core::net::SocketAddr>,
}

fn key(id: &str, read_only: bool) -> AccessKey {
    AccessKey {
        id: id.into(),
        secret: alloc::format!("secret-of-{id}"),
        read_only,
    }
}

impl Client {
    fn new() -> Self {
        Self::with_config(S3Config {
            keys: vec![key("AKTEST", false), key("AKREAD", true)],
            anonymous_read: vec!["pmem1".into()],
        })
    }

    fn with_config(config: S3Config) -> Self {
        Self::with_fixture(Fixture::standard(), config)
    }

    /// One 64 MiB filesystem, pmem0 (room for 5 MiB parts).
    fn big() -> Self {
        Self::with_fixture(
            Fixture::with_devices(&[64 * crate::testing::MIB], &[]),
            S3Config {
                keys: vec![key("AKTEST", false), key("AKREAD", true)],
                anonymous_read: vec![],
            },
        )
    }

    fn with_fixture(fixture: Fixture, config: S3Config) -> Self {
        let fixture = Rc::new(RefCell::new(fixture));
        let routes = S3Routes::new(Shared(fixture.clone()), config, Some(T0), 42);
        Self {
            fixture,
            service: HttpService::with_routes("test", 0, Bench::Off, routes),
            key: key("AKTEST", false),
            peer: None,
        }
    }

    /// The request bytes, signed (unless `sign` is false).
    fn build(
        &self,
        method: &str,
        target: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        sign: bool,
    ) -> Vec<u8> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let payload = hex(&Sha256::digest(body));
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", "127.0.0.1"),
            ("x-amz-content-sha256", &payload),
            ("x-amz-date", AMZ_DATE),
        ];
        headers.extend_from_slice(extra);
        let mut text = alloc::format!("{method} {target} HTTP/1.1\r\n");
        for (name, value) in &headers {
            text.push_str(&alloc::format!("{name}: {value}\r\n"));
        }
        if sign {
            let auth = sign_for_test(method, path, query, &headers, &self.key, AMZ_DATE, &payload);
            text.push_str(&alloc::format!("Authorization: {auth}\r\n"));
        }
        text.push_str(&alloc::format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    fn send(&mut self, bytes: &[u8]) -> (Answer, HttpConnection) {
        let (out, conn) = self.send_raw(bytes);
        (parse(&out), conn)
    }

    fn send_raw(&mut self, bytes: &[u8]) -> (Vec<u8>, HttpConnection) {
        let mut conn = self.service.accept(0);
        if let Some(peer) = self.peer {
            self.service.remote(&mut conn, peer);
        }
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut buf = vec![0u8; 1500];
        for _ in 0..1_000_000 {
            let offer = &rest[..rest.len().min(4096)];
            let used = self.service.receive(&mut conn, offer, 0);
            rest = &rest[used..];
            let n = self.service.produce(&mut conn, &mut buf, 0);
            out.extend_from_slice(&buf[..n]);
            if used == 0 && n == 0 {
                break;
            }
        }
        (out, conn)
    }

    fn call(&mut self, method: &str, target: &str, extra: &[(&str, &str)], body: &[u8]) -> Answer {
        let bytes = self.build(method, target, extra, body, true);
        let (answer, conn) = self.send(&bytes);
        self.service.closed(conn);
        answer
    }

    fn put(&mut self, target: &str, body: &[u8]) -> Answer {
        let answer = self.call("PUT", target, &[], body);
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer
    }

    fn get(&mut self, target: &str) -> Answer {
        self.call("GET", target, &[], b"")
    }

    fn shell(&self, line: &str) -> String {
        self.fixture.borrow_mut().ok(line)
    }
}

/// Parses one response (after any `100 Continue`).
fn parse(mut out: &[u8]) -> Answer {
    loop {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response in {:?}", String::from_utf8_lossy(out)))
            + 4;
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        let status: u16 = head[9..12].parse().unwrap();
        if status == 100 {
            out = &out[end..];
            continue;
        }
        let mut headers = Map::new();
        for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
            let (n, v) = line.split_once(':').unwrap();
            headers.insert(n.to_ascii_lowercase(), v.trim().to_string());
        }
        return Answer {
            status,
            headers,
            body: out[end..].to_vec(),
        };
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    alloc::format!("\"{}\"", hex(&Md5::digest(bytes)))
}

fn keys_of(xml: &str) -> Vec<String> {
    xml.split("<Key>")
        .skip(1)
        .map(|rest| rest.split_once("</Key>").unwrap().0.to_string())
        .collect()
}

fn prefixes_of(xml: &str) -> Vec<String> {
    xml.split("<CommonPrefixes><Prefix>")
        .skip(1)
        .map(|rest| rest.split_once("</Prefix>").unwrap().0.to_string())
        .collect()
}

#[test]
fn put_get_head_round_trip_with_md5_etag() {
    let mut c = Client::new();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + 7) as u8).collect();
    let put = c.put("/pmem0/dir/obj.bin", &body);
    assert_eq!(put.header("etag"), Some(md5_hex(&body).as_str()));
    let get = c.get("/pmem0/dir/obj.bin");
    assert_eq!(get.status, 200);
    assert_eq!(get.body, body);
    assert_eq!(get.header("etag"), Some(md5_hex(&body).as_str()));
    assert_eq!(
        get.header("last-modified"),
        Some("Sat, 05 Dec 2026 03:48:56 GMT")
    );
    let head = c.call("HEAD", "/pmem0/dir/obj.bin", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300000"));
    assert!(head.body.is_empty());
    // The object is the file NBD and the shell see.
    assert!(c.shell("ls pmem0").contains("300000  dir/obj.bin"));
    assert_eq!(c.service.routes().exchanges(), 0, "every exchange ended");
    // Replaced: new content, new tag.
    let put = c.put("/pmem0/dir/obj.bin", b"short");
    assert_eq!(put.header("etag"), Some(md5_hex(b"short").as_str()));
    assert_eq!(c.get("/pmem0/dir/obj.bin").body, b"short");
    // Empty object.
    c.put("/pmem0/empty", b"");
    let get = c.get("/pmem0/empty");
    assert_eq!((get.status, get.body.len()), (200, 0));
}

#[test]
fn etag_changes_when_another_path_changes_the_file() {
    let mut c = Client::new();
    c.put("/pmem0/f", b"hello world");
    let before = c.get("/pmem0/f").header("etag").unwrap().to_string();
    assert_eq!(before, md5_hex(b"hello world"));
    // The shell (as NBD does through the same hook) writes the file.
    c.shell("write pmem0:f 0 J");
    let after = c.get("/pmem0/f");
    assert_eq!(after.body, b"Jello world");
    let tag = after.header("etag").unwrap().to_string();
    assert_ne!(tag, before);
    assert!(tag.ends_with("-1\""), "{tag}: marked as not an MD5");
    // Each change gives another tag.
    c.shell("write pmem0:f 0 H");
    assert_ne!(c.get("/pmem0/f").header("etag").unwrap(), tag);
    // A file made by the shell has a tag too, and it is stable.
    c.shell("create pmem0:g 4K");
    let one = c.get("/pmem0/g").header("etag").unwrap().to_string();
    assert_eq!(c.get("/pmem0/g").header("etag").unwrap(), one);
}

#[test]
fn an_etag_changes_when_nbd_writes_the_file() {
    use daxbox_nbd::Backend;
    let mut c = Client::new();
    c.put("/pmem0/disk", &[0u8; 8192]);
    let before = c.get("/pmem0/disk").header("etag").unwrap().to_string();
    {
        let mut fixture = c.fixture.borrow_mut();
        let mut targets = crate::nbd::Targets::default();
        let mut backend = crate::nbd::StorageBackend::for_tests(&mut fixture.storage, &mut targets);
        let export = backend.open("pmem0:disk").unwrap();
        backend.write(export, 0, b"nbd").unwrap();
    }
    let after = c.get("/pmem0/disk");
    assert_eq!(&after.body[..3], b"nbd");
    assert_ne!(after.header("etag").unwrap(), before);
}

#[test]
fn ranges_and_unsatisfiable_ranges() {
    let mut c = Client::new();
    c.put("/pmem0/r", b"0123456789");
    for (range, status, body, content_range) in [
        ("bytes=2-5", 206, &b"2345"[..], Some("bytes 2-5/10")),
        ("bytes=7-", 206, b"789", Some("bytes 7-9/10")),
        ("bytes=-3", 206, b"789", Some("bytes 7-9/10")),
        ("bytes=-30", 206, b"0123456789", Some("bytes 0-9/10")),
        ("bytes=8-100", 206, b"89", Some("bytes 8-9/10")),
        ("bytes=0-1,4-5", 200, b"0123456789", None),
        ("items=1-2", 200, b"0123456789", None),
    ] {
        let a = c.call("GET", "/pmem0/r", &[("range", range)], b"");
        assert_eq!((a.status, a.body.as_slice()), (status, body), "{range}");
        assert_eq!(a.header("content-range"), content_range, "{range}");
    }
    for range in ["bytes=10-", "bytes=10-20", "bytes=-0"] {
        let a = c.call("GET", "/pmem0/r", &[("range", range)], b"");
        assert_eq!(a.status, 416, "{range}");
        assert_eq!(a.code(), "InvalidRange");
        assert_eq!(a.header("content-range"), Some("bytes */10"));
    }
}

/// A page that ends on a common prefix resumes after it: the prefix is not
/// listed again (S3 lists a common prefix only when it sorts after the
/// marker, start-after or token), so paging with a delimiter ends. Found
/// by the moto differential test (storage/serve/tests/s3/moto_differential.py):
/// pages of one under `a/` returned `a/b/` forever.
#[test]
fn delimited_pages_resume_after_a_common_prefix() {
    let mut c = Client::new();
    for key in ["a/1", "a/2", "a/b/3", "a/b/4", "a/c/5", "b"] {
        c.put(&alloc::format!("/pmem0/{key}"), key.as_bytes());
    }
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let target = match &token {
            Some(t) => alloc::format!(
                "/pmem0?list-type=2&prefix=a%2F&delimiter=%2F&max-keys=1&continuation-token={t}"
            ),
            None => "/pmem0?list-type=2&prefix=a%2F&delimiter=%2F&max-keys=1".into(),
        };
        let page = c.get(&target).text();
        pages.push((keys_of(&page), prefixes_of(&page)));
        token = page
            .split_once("<NextContinuationToken>")
            .map(|(_, rest)| rest.split_once('<').unwrap().0.to_string());
        if token.is_none() {
            break;
        }
    }
    let v = |names: &[&str]| names.iter().map(|n| String::from(*n)).collect::<Vec<_>>();
    assert_eq!(
        pages,
        [
            (v(&["a/1"]), v(&[])),
            (v(&["a/2"]), v(&[])),
            (v(&[]), v(&["a/b/"])),
            (v(&[]), v(&["a/c/"])),
        ]
    );
    // start-after inside a common prefix: that prefix sorts before it.
    let after = c
        .get("/pmem0?list-type=2&delimiter=%2F&start-after=a%2F1")
        .text();
    assert_eq!(keys_of(&after), ["b"]);
    assert!(prefixes_of(&after).is_empty(), "{after}");
    // v1: the marker a page of one ends on is the prefix itself.
    let v1 = c.get("/pmem0?delimiter=%2F&marker=a%2F").text();
    assert_eq!(keys_of(&v1), ["b"]);
    assert!(prefixes_of(&v1).is_empty(), "{v1}");
}

#[test]
fn listings_with_prefix_delimiter_pages_and_url_encoding() {
    let mut c = Client::new();
    for key in [
        "a.txt",
        "photos/2024/x.jpg",
        "photos/2024/y.jpg",
        "photos/2025/z.jpg",
        "photos/top.jpg",
        "zeta",
        "sp ace&<",
    ] {
        c.put(
            &alloc::format!("/pmem0/{}", text::uri_encode(key, true)),
            key.as_bytes(),
        );
    }
    let all = c.get("/pmem0?list-type=2").text();
    assert_eq!(
        keys_of(&all),
        [
            "a.txt",
            "photos/2024/x.jpg",
            "photos/2024/y.jpg",
            "photos/2025/z.jpg",
            "photos/top.jpg",
            "sp ace&amp;&lt;",
            "zeta"
        ]
    );
    assert!(all.contains("<KeyCount>7</KeyCount>"));
    assert!(all.contains(&alloc::format!(
        "<ETag>{}</ETag>",
        xml_escape(&md5_hex(b"a.txt"))
    )));
    // Delimiter at the top.
    let top = c.get("/pmem0?list-type=2&delimiter=%2F").text();
    assert_eq!(keys_of(&top), ["a.txt", "sp ace&amp;&lt;", "zeta"]);
    assert_eq!(prefixes_of(&top), ["photos/"]);
    // Prefix + delimiter.
    let photos = c
        .get("/pmem0?list-type=2&prefix=photos%2F&delimiter=%2F")
        .text();
    assert_eq!(keys_of(&photos), ["photos/top.jpg"]);
    assert_eq!(prefixes_of(&photos), ["photos/2024/", "photos/2025/"]);
    // Pages of 2 with continuation tokens.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let target = match &token {
            Some(t) => alloc::format!("/pmem0?list-type=2&max-keys=2&continuation-token={t}"),
            None => "/pmem0?list-type=2&max-keys=2".into(),
        };
        let page = c.get(&target).text();
        seen.extend(keys_of(&page));
        token = page
            .split_once("<NextContinuationToken>")
            .map(|(_, rest)| rest.split_once('<').unwrap().0.to_string());
        if token.is_none() {
            assert!(page.contains("<IsTruncated>false</IsTruncated>"));
            break;
        }
        assert!(page.contains("<IsTruncated>true</IsTruncated>"));
    }
    assert_eq!(seen, keys_of(&all));
    // start-after, and v1 with marker.
    assert_eq!(
        keys_of(
            &c.get("/pmem0?list-type=2&start-after=photos%2Ftop.jpg")
                .text()
        ),
        ["sp ace&amp;&lt;", "zeta"]
    );
    assert_eq!(
        keys_of(&c.get("/pmem0?marker=photos%2Ftop.jpg").text()),
        ["sp ace&amp;&lt;", "zeta"]
    );
    assert_eq!(
        keys_of(&c.get("/pmem0?prefix=photos%2F2024").text()),
        ["photos/2024/x.jpg", "photos/2024/y.jpg"]
    );
    // encoding-type=url (boto3 asks for it).
    let url = c
        .get("/pmem0?list-type=2&prefix=sp&encoding-type=url")
        .text();
    assert_eq!(keys_of(&url), ["sp%20ace%26%3C"]);
    // ListBuckets: the mounted filesystems, not the raw device.
    let buckets = c.get("/").text();
    assert!(buckets.contains("<Name>pmem0</Name>") && buckets.contains("<Name>pmem1</Name>"));
    assert!(
        !buckets.contains("pmem2"),
        "raw devices are no buckets: {buckets}"
    );
}

#[test]
fn a_put_cut_off_mid_body_leaves_the_old_object_and_nothing_visible() {
    let mut c = Client::new();
    c.put("/pmem0/keep", b"old content");
    let body = vec![7u8; 100_000];
    let bytes = c.build("PUT", "/pmem0/keep", &[], &body, true);
    // Everything but the last 10 KB, then the connection is gone.
    let (out, conn) = c.send_raw(&bytes[..bytes.len() - 10_000]);
    assert!(out.is_empty(), "no answer yet");
    assert_eq!(c.service.routes().exchanges(), 1, "upload in progress");
    let listing = c.get("/pmem0?list-type=2").text();
    assert_eq!(
        keys_of(&listing),
        ["keep"],
        "no temporary file in a listing"
    );
    assert!(!c.shell("ls pmem0").contains('\u{1}'), "nor in ls");
    let names = crate::nbd::export_names(&c.fixture.borrow().storage);
    assert!(
        names.iter().all(|n| !n.contains('\u{1}')),
        "nor among NBD exports: {names:?}"
    );
    c.service.closed(conn);
    assert_eq!(c.service.routes().exchanges(), 0);
    assert_eq!(c.get("/pmem0/keep").body, b"old content");
    assert!(
        c.shell("ls pmem0").contains("1 file(s)"),
        "the temporary file is gone"
    );
}

#[test]
fn a_leftover_temporary_file_is_swept() {
    let c = Client::new();
    c.shell("create pmem0:x 1K");
    {
        let mut f = c.fixture.borrow_mut();
        let fs = f.storage.filesystem(0).unwrap();
        fs.create("\u{1}put-7").unwrap();
        fs.create("\u{1}put-8").unwrap();
        assert_eq!(sweep_temporaries(&mut f.storage), 2);
        assert_eq!(sweep_temporaries(&mut f.storage), 0);
    }
    assert!(c.shell("ls pmem0").contains("1 file(s)"));
}

#[test]
fn digests_are_verified_and_a_bad_one_leaves_the_old_object() {
    let mut c = Client::new();
    c.put("/pmem0/d", b"old");
    let good = base64(&Md5::digest(b"new!"));
    let wrong = base64(&Md5::digest(b"other"));
    let a = c.call("PUT", "/pmem0/d", &[("content-md5", &wrong)], b"new!");
    assert_eq!((a.status, a.code().as_str()), (400, "BadDigest"));
    assert_eq!(c.get("/pmem0/d").body, b"old");
    let a = c.call("PUT", "/pmem0/d", &[("content-md5", "nonsense")], b"new!");
    assert_eq!((a.status, a.code().as_str()), (400, "InvalidDigest"));
    c.call("PUT", "/pmem0/d", &[("content-md5", &good)], b"new!");
    assert_eq!(c.get("/pmem0/d").body, b"new!");
    // A signed payload hash that does not match the body.
    let mut bytes = c.build("PUT", "/pmem0/d", &[], b"abcd", true);
    let n = bytes.len();
    bytes[n - 1] = b'X';
    let (a, conn) = c.send(&bytes);
    c.service.closed(conn);
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "XAmzContentSHA256Mismatch")
    );
    assert_eq!(c.get("/pmem0/d").body, b"new!");
    // CRC32 checksums (boto3's default).
    let crc = base64(&CRC32.checksum(b"crc body").to_be_bytes());
    let a = c.call(
        "PUT",
        "/pmem0/c",
        &[("x-amz-checksum-crc32", &crc)],
        b"crc body",
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-amz-checksum-crc32"), Some(crc.as_str()));
    let a = c.call(
        "PUT",
        "/pmem0/c",
        &[("x-amz-checksum-crc32", &crc)],
        b"crc bodY",
    );
    assert_eq!((a.status, a.code().as_str()), (400, "BadDigest"));
    assert_eq!(c.get("/pmem0/c").body, b"crc body");
    assert_eq!(c.service.routes().exchanges(), 0);
    assert!(
        c.shell("ls pmem0").contains("2 file(s)"),
        "no temporary file left"
    );
}

#[test]
fn errors_are_s3_error_documents() {
    let mut c = Client::new();
    let a = c.get("/pmem0/missing");
    assert_eq!((a.status, a.code().as_str()), (404, "NoSuchKey"));
    assert_eq!(a.header("content-type"), Some("application/xml"));
    let a = c.get("/pmem9/x");
    assert_eq!((a.status, a.code().as_str()), (404, "NoSuchBucket"));
    let a = c.get("/pmem2?list-type=2");
    assert_eq!(
        (a.status, a.code().as_str()),
        (404, "NoSuchBucket"),
        "a raw device is no bucket"
    );
    let long = "k".repeat(256);
    let a = c.call("PUT", &alloc::format!("/pmem0/{long}"), &[], b"x");
    assert_eq!((a.status, a.code().as_str()), (400, "KeyTooLongError"));
    c.put(&alloc::format!("/pmem0/{}", &long[..255]), b"x");
    let a = c.call("PUT", "/pmem0", &[], b"");
    assert_eq!(
        (a.status, a.code().as_str()),
        (409, "BucketAlreadyOwnedByYou")
    );
    let a = c.call("PUT", "/newbucket", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (403, "AccessDenied"));
    assert!(a.text().contains("buckets are the mounted pmem devices"));
    let a = c.call("PUT", "/pmem0/x?tagging", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (501, "NotImplemented"));
    // A wrong secret.
    c.key.secret = "wrong".into();
    let a = c.get("/pmem0/missing");
    assert_eq!(
        (a.status, a.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // Unsigned: only anonymous-read buckets.
    let bytes = c.build("GET", "/pmem0?list-type=2", &[], b"", false);
    let (a, _) = c.send(&bytes);
    assert_eq!((a.status, a.code().as_str()), (403, "AccessDenied"));
    let bytes = c.build("GET", "/pmem1?list-type=2", &[], b"", false);
    let (a, _) = c.send(&bytes);
    assert_eq!(a.status, 200, "{}", a.text());
    let bytes = c.build("PUT", "/pmem1/x", &[], b"data", false);
    let (a, _) = c.send(&bytes);
    assert_eq!(
        (a.status, a.code().as_str()),
        (403, "AccessDenied"),
        "anonymous is read-only"
    );
    // A read-only key reads but does not write.
    c.key = key("AKREAD", true);
    assert_eq!(c.get("/pmem0?list-type=2").status, 200);
    let a = c.call("PUT", "/pmem0/x", &[], b"data");
    assert_eq!((a.status, a.code().as_str()), (403, "AccessDenied"));
    let a = c.call("DELETE", "/pmem0/x", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (403, "AccessDenied"));
    // Unsigned GET / is not the object API's (the dashboard's path), nor
    // any unsigned path that names no bucket (`/metrics`, ...).
    for path in ["/", "/metrics", "/api/stats"] {
        let bytes = c.build("GET", path, &[], b"", false);
        let (a, _) = c.send(&bytes);
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.text(), "not found\n", "{path}: not an S3 answer");
    }
}

#[test]
fn no_keys_configured_refuses_everything() {
    let mut c = Client::with_config(S3Config::default());
    assert!(S3Config::default()
        .describe()
        .contains("refuses every request"));
    let a = c.get("/pmem0?list-type=2");
    assert_eq!((a.status, a.code().as_str()), (403, "InvalidAccessKeyId"));
    let bytes = c.build("GET", "/pmem0?list-type=2", &[], b"", false);
    let (a, _) = c.send(&bytes);
    assert_eq!((a.status, a.code().as_str()), (403, "AccessDenied"));
    assert!(a.text().contains("no access keys"), "{}", a.text());
}

#[test]
fn delete_and_delete_objects() {
    let mut c = Client::new();
    for k in ["a", "b", "c&d"] {
        c.put(
            &alloc::format!("/pmem0/{}", text::uri_encode(k, true)),
            b"x",
        );
    }
    let a = c.call("DELETE", "/pmem0/a", &[], b"");
    assert_eq!(a.status, 204);
    let a = c.call("DELETE", "/pmem0/a", &[], b"");
    assert_eq!(a.status, 204, "deleting a missing key is no error");
    let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Object><Key>b</Key></Object><Object><Key>c&amp;d</Key></Object><Object><Key>nope</Key></Object></Delete>";
    let md5 = base64(&Md5::digest(xml));
    let a = c.call("POST", "/pmem0?delete", &[("content-md5", &md5)], xml);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(keys_of(&a.text()), ["b", "c&amp;d", "nope"]);
    assert_eq!(
        keys_of(&c.get("/pmem0?list-type=2").text()),
        Vec::<String>::new()
    );
    for bad in [
        &b"<Delete><Object><Key>x</Key></Object>"[..],
        b"not xml",
        b"<Delete></Delete>",
        b"<Delete><Object><Key>x</Key></Oops></Delete>",
    ] {
        let a = c.call("POST", "/pmem0?delete", &[], bad);
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "MalformedXML"),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // Quiet mode lists only failures.
    c.put("/pmem0/q", b"x");
    let xml = b"<Delete><Quiet>true</Quiet><Object><Key>q</Key></Object></Delete>";
    let a = c.call("POST", "/pmem0?delete", &[], xml);
    assert_eq!(keys_of(&a.text()), Vec::<String>::new());
}

#[test]
fn conditional_reads_and_create_only_writes() {
    let mut c = Client::new();
    c.put("/pmem0/k", b"v1");
    let tag = md5_hex(b"v1");
    assert_eq!(
        c.call("GET", "/pmem0/k", &[("if-match", &tag)], b"").status,
        200
    );
    let a = c.call("GET", "/pmem0/k", &[("if-match", "\"other\"")], b"");
    assert_eq!((a.status, a.code().as_str()), (412, "PreconditionFailed"));
    assert_eq!(
        c.call("GET", "/pmem0/k", &[("if-none-match", &tag)], b"")
            .status,
        304
    );
    assert_eq!(
        c.call(
            "GET",
            "/pmem0/k",
            &[("if-modified-since", "Sat, 05 Dec 2026 03:48:56 GMT")],
            b""
        )
        .status,
        304
    );
    assert_eq!(
        c.call(
            "GET",
            "/pmem0/k",
            &[("if-modified-since", "Sat, 05 Dec 2026 03:48:55 GMT")],
            b""
        )
        .status,
        200
    );
    let a = c.call("PUT", "/pmem0/k", &[("if-none-match", "*")], b"v2");
    assert_eq!((a.status, a.code().as_str()), (412, "PreconditionFailed"));
    assert_eq!(c.get("/pmem0/k").body, b"v1");
    assert_eq!(
        c.call("PUT", "/pmem0/new", &[("if-none-match", "*")], b"v")
            .status,
        200
    );
}

#[test]
fn copy_object_is_a_clone() {
    let mut c = Client::new();
    c.put("/pmem0/src", &[5u8; 50_000]);
    let a = c.call(
        "PUT",
        "/pmem0/dst",
        &[("x-amz-copy-source", "/pmem0/src")],
        b"",
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().contains(&xml_escape(&md5_hex(&[5u8; 50_000]))));
    assert_eq!(c.get("/pmem0/dst").body, [5u8; 50_000]);
    let stat = c.shell("stat pmem0:dst");
    assert!(stat.contains("shared"), "{stat}");
    let a = c.call(
        "PUT",
        "/pmem0/dst",
        &[("x-amz-copy-source", "/pmem1/src")],
        b"",
    );
    assert_eq!(a.status, 501);
    let a = c.call(
        "PUT",
        "/pmem0/dst",
        &[("x-amz-copy-source", "/pmem0/none")],
        b"",
    );
    assert_eq!(a.code(), "NoSuchKey");
}

#[test]
fn a_file_nbd_has_open_is_replaced_and_deleted_under_its_client() {
    let mut c = Client::new();
    c.put("/pmem0/disk", b"old");
    let old = {
        let mut f = c.fixture.borrow_mut();
        let file = f.storage.filesystem(0).unwrap().lookup("disk").unwrap();
        f.storage.add_test_connection("pmem0", file);
        file
    };
    let read_old = |c: &Client| {
        let mut f = c.fixture.borrow_mut();
        let mut buf = [0u8; 3];
        f.storage
            .filesystem(0)
            .unwrap()
            .read(old, 0, &mut buf)
            .unwrap();
        buf
    };
    // S3 readers see the new object at once; the NBD client keeps the
    // old one (an orphan it holds) until it closes.
    let a = c.call("PUT", "/pmem0/disk", &[], b"new");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(c.get("/pmem0/disk").body, b"new");
    assert_eq!(&read_old(&c), b"old");
    let a = c.call("DELETE", "/pmem0/disk", &[], b"");
    assert_eq!(a.status, 204);
    assert_eq!(c.call("GET", "/pmem0/disk", &[], b"").code(), "NoSuchKey");
    assert_eq!(&read_old(&c), b"old");
}

#[test]
fn listing_replies_are_charged_to_the_budget_until_sent() {
    static BUDGET: daxbox_budget::Budget = daxbox_budget::Budget::new("test-http", 4096);
    let mut c = Client::new();
    c.service.routes_mut().set_budget(&BUDGET);
    for i in 0..40 {
        c.put(
            &alloc::format!("/pmem0/a-fairly-long-key-name-{i:03}"),
            b"x",
        );
    }
    // 40 keys of XML are well over 4 KiB: refused, nothing held.
    let a = c.get("/pmem0?list-type=2");
    assert_eq!((a.status, a.code().as_str()), (503, "SlowDown"));
    assert_eq!(BUDGET.stats().used, 0);
    // Two keys fit; held while the reply is being sent, then given back.
    let bytes = c.build("GET", "/pmem0?list-type=2&max-keys=2", &[], b"", true);
    let mut conn = c.service.accept(0);
    assert_eq!(c.service.receive(&mut conn, &bytes, 0), bytes.len());
    let mut buf = [0u8; 200];
    let n = c.service.produce(&mut conn, &mut buf, 0);
    assert!(n > 0);
    assert!(BUDGET.stats().used > 0, "held while being sent");
    let mut out = buf[..n].to_vec();
    loop {
        let n = c.service.produce(&mut conn, &mut buf, 0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(parse(&out).status, 200);
    assert_eq!(keys_of(&parse(&out).text()).len(), 2);
    assert_eq!(BUDGET.stats().used, 0, "given back once sent");
    c.service.closed(conn);
    // A DeleteObjects body over 512 KiB is refused without reading it all.
    c.service.routes_mut().set_budget(&daxbox_budget::HTTP);
    let mut xml = b"<Delete>".to_vec();
    while xml.len() <= MAX_DELETE_BODY {
        xml.extend_from_slice(b"<Object><Key>k</Key></Object>");
    }
    let a = c.call("POST", "/pmem0?delete", &[], &xml);
    assert_eq!((a.status, a.code().as_str()), (400, "MalformedXML"));
    assert_eq!(c.service.routes().exchanges(), 0);
}

impl Client {
    /// A PUT as botocore sends it over https: `STREAMING-UNSIGNED-PAYLOAD-TRAILER`,
    /// aws-chunked inside HTTP chunked encoding, the CRC32 in the trailer.
    fn streaming_put(&self, target: &str, data: &[u8], crc: &str, decoded: usize) -> Vec<u8> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let decoded = decoded.to_string();
        let headers: Vec<(&str, &str)> = vec![
            ("content-encoding", "aws-chunked"),
            ("host", "127.0.0.1"),
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("x-amz-date", AMZ_DATE),
            ("x-amz-decoded-content-length", &decoded),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ];
        let auth = sign_for_test(
            "PUT",
            path,
            query,
            &headers,
            &self.key,
            AMZ_DATE,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        );
        let mut text = alloc::format!("PUT {target} HTTP/1.1\r\n");
        for (name, value) in &headers {
            text.push_str(&alloc::format!("{name}: {value}\r\n"));
        }
        text.push_str(&alloc::format!(
            "Authorization: {auth}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        ));
        // The aws-chunked body, in 64 KiB chunks.
        let mut inner = Vec::new();
        for chunk in data.chunks(65536) {
            inner.extend_from_slice(alloc::format!("{:x}\r\n", chunk.len()).as_bytes());
            inner.extend_from_slice(chunk);
            inner.extend_from_slice(b"\r\n");
        }
        inner.extend_from_slice(
            alloc::format!("0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n").as_bytes(),
        );
        // ...inside HTTP chunks of 5000 bytes.
        let mut bytes = text.into_bytes();
        for chunk in inner.chunks(5000) {
            bytes.extend_from_slice(alloc::format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    }
}

#[test]
fn aws_chunked_with_a_trailing_checksum() {
    let mut c = Client::new();
    c.put("/pmem0/s", b"old");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let crc = base64(&CRC32.checksum(&data).to_be_bytes());
    let bytes = c.streaming_put("/pmem0/s", &data, &crc, data.len());
    let (a, conn) = c.send(&bytes);
    c.service.closed(conn);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("etag"), Some(md5_hex(&data).as_str()));
    assert_eq!(c.get("/pmem0/s").body, data);
    // A wrong trailing checksum, a wrong decoded length, framing cut
    // short: each refused, the object unchanged, nothing left behind.
    let wrong = base64(&CRC32.checksum(b"other").to_be_bytes());
    for (bytes, code) in [
        (
            c.streaming_put("/pmem0/s", b"new data", &wrong, 8),
            "BadDigest",
        ),
        (
            c.streaming_put(
                "/pmem0/s",
                b"new data",
                &base64(&CRC32.checksum(b"new data").to_be_bytes()),
                9,
            ),
            "IncompleteBody",
        ),
    ] {
        let (a, conn) = c.send(&bytes);
        c.service.closed(conn);
        assert_eq!((a.status, a.code().as_str()), (400, code), "{}", a.text());
        assert_eq!(c.get("/pmem0/s").body, data);
    }
    // aws-chunked framing with a chunk longer than it says.
    let mut bad = c.streaming_put("/pmem0/s", b"12345", "AAAAAA==", 5);
    let at = bad.windows(5).position(|w| w == b"12345").unwrap();
    bad.insert(at + 5, b'6');
    // Fix the HTTP chunk size around it (one chunk of the whole body).
    let text = String::from_utf8_lossy(&bad).into_owned();
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    let (_, rest) = text.split_at(head_end);
    let size_end = rest.find("\r\n").unwrap();
    let size = usize::from_str_radix(&rest[..size_end], 16).unwrap() + 1;
    let mut fixed = text.as_bytes()[..head_end].to_vec();
    fixed.extend_from_slice(alloc::format!("{size:x}").as_bytes());
    fixed.extend_from_slice(&rest.as_bytes()[size_end..]);
    let (a, conn) = c.send(&fixed);
    c.service.closed(conn);
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "IncompleteBody"),
        "{}",
        a.text()
    );
    assert_eq!(c.get("/pmem0/s").body, data);
    assert_eq!(c.service.routes().exchanges(), 0);
    assert!(c.shell("ls pmem0").contains("1 file(s)"));
}

/// Allow rules for HTTP by client address: `.10` read-write on `pmem0`,
/// `.11` read-only on `pmem0` and one object of `pmem1`, `.12` only a
/// `pmem1` it cannot use over HTTP (an NBD rule).
fn allow_client() -> Client {
    let mut c = Client::new();
    c.put("/pmem0/a.txt", b"alpha");
    c.put("/pmem0/b.txt", b"beta");
    c.put("/pmem1/open.txt", b"open");
    c.put("/pmem1/secret.txt", b"secret");
    let (config, problems) = daxbox_bootconfig::parse(
        "allow=198.18.0.10 pmem0 rw http\n\
         allow=198.18.0.11 pmem0 ro http\n\
         allow=198.18.0.11 pmem1:open.txt ro http\n\
         allow=198.18.0.12 pmem1 rw nbd\n",
    );
    assert!(problems.is_empty(), "{problems:?}");
    c.fixture
        .borrow_mut()
        .storage
        .access_mut()
        .set_rules(config.allow);
    c
}

fn at(c: &mut Client, address: &str) {
    c.peer = Some(alloc::format!("{address}:40000").parse().unwrap());
}

fn refusals(c: &Client, address: &str) -> crate::allow::Counts {
    let address: core::net::IpAddr = address.parse().unwrap();
    let fixture = c.fixture.borrow();
    let stats = fixture.storage.access().stats();
    stats
        .by_address
        .iter()
        .find(|(a, _)| *a == Some(address))
        .map(|(_, counts)| *counts)
        .unwrap_or_default()
}

fn bucket_names(xml: &str) -> Vec<String> {
    xml.split("<Name>")
        .skip(1)
        .map(|rest| rest.split_once("</Name>").unwrap().0.to_string())
        .collect()
}

#[test]
fn allow_rules_grant_read_write_to_one_address() {
    let mut c = allow_client();
    at(&mut c, "198.18.0.10");
    assert_eq!(bucket_names(&c.get("/").text()), ["pmem0"]);
    c.put("/pmem0/new.txt", b"new");
    assert_eq!(c.get("/pmem0/new.txt").body, b"new");
    let list = c.get("/pmem0?list-type=2");
    assert_eq!(keys_of(&list.text()), ["a.txt", "b.txt", "new.txt"]);
    let copy = c.call(
        "PUT",
        "/pmem0/copy.txt",
        &[("x-amz-copy-source", "/pmem0/a.txt")],
        b"",
    );
    assert_eq!(copy.status, 200, "{}", copy.text());
    assert_eq!(c.call("DELETE", "/pmem0/copy.txt", &[], b"").status, 204);
    // pmem1 is not this client's.
    let other = c.get("/pmem1/open.txt");
    assert_eq!((other.status, other.code().as_str()), (403, "AccessDenied"));
    let other = c.get("/pmem1?list-type=2");
    assert_eq!((other.status, other.code().as_str()), (403, "AccessDenied"));
    assert_eq!(refusals(&c, "198.18.0.10").policy, 2);
    assert_eq!(refusals(&c, "198.18.0.10").read_only_write, 0);
}

#[test]
fn allow_rules_make_writes_read_only_for_an_address() {
    let mut c = allow_client();
    at(&mut c, "198.18.0.11");
    assert_eq!(bucket_names(&c.get("/").text()), ["pmem0", "pmem1"]);
    assert_eq!(c.get("/pmem0/a.txt").body, b"alpha");
    assert_eq!(c.call("HEAD", "/pmem0/a.txt", &[], b"").status, 200);
    let writes = [
        c.call("PUT", "/pmem0/a.txt", &[], b"changed"),
        c.call("DELETE", "/pmem0/b.txt", &[], b""),
        c.call(
            "PUT",
            "/pmem0/c.txt",
            &[("x-amz-copy-source", "/pmem0/a.txt")],
            b"",
        ),
    ];
    for answer in &writes {
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (403, "AccessDenied"),
            "{}",
            answer.text()
        );
        assert!(answer.text().contains("read-only"), "{}", answer.text());
    }
    // DeleteObjects decides per key.
    let body = b"<Delete><Object><Key>a.txt</Key></Object></Delete>";
    let md5 = base64(&Md5::digest(body));
    let many = c.call("POST", "/pmem0?delete", &[("content-md5", &md5)], body);
    assert_eq!(many.status, 200);
    assert!(
        many.text()
            .contains("<Error><Key>a.txt</Key><Code>AccessDenied</Code>"),
        "{}",
        many.text()
    );
    assert_eq!(c.get("/pmem0/a.txt").body, b"alpha", "nothing changed");
    assert_eq!(c.get("/pmem0/b.txt").body, b"beta");
    assert_eq!(refusals(&c, "198.18.0.11").read_only_write, 4);
    // On pmem1 it sees and reads one object only.
    assert_eq!(keys_of(&c.get("/pmem1?list-type=2").text()), ["open.txt"]);
    assert_eq!(keys_of(&c.get("/pmem1").text()), ["open.txt"], "v1 too");
    assert_eq!(c.get("/pmem1/open.txt").body, b"open");
    assert_eq!(c.get("/pmem1/secret.txt").status, 403);
    assert_eq!(refusals(&c, "198.18.0.11").policy, 1);
}

#[test]
fn allow_rules_refuse_an_address_without_an_http_rule() {
    let mut c = allow_client();
    at(&mut c, "198.18.0.12");
    assert!(bucket_names(&c.get("/").text()).is_empty());
    for answer in [
        c.get("/pmem1/open.txt"),
        c.call("PUT", "/pmem1/x", &[], b"x"),
        c.call("HEAD", "/pmem1", &[], b""),
        c.get("/pmem0?list-type=2"),
    ] {
        assert_eq!(answer.status, 403);
    }
    assert_eq!(refusals(&c, "198.18.0.12").policy, 4);
    assert!(!c.shell("ls pmem1").contains(" x\n"));
    // A client whose address the transport did not tell is refused too.
    c.peer = None;
    assert_eq!(c.get("/pmem0/a.txt").status, 403);
    // Without any rule, everything is as before.
    c.fixture
        .borrow_mut()
        .storage
        .access_mut()
        .set_rules(Default::default());
    at(&mut c, "198.18.0.12");
    assert_eq!(c.get("/pmem1/secret.txt").body, b"secret");
    assert_eq!(bucket_names(&c.get("/").text()), ["pmem0", "pmem1"]);
}

/// A listing of many keys the client may not read examines a bounded
/// number of names per request and still reaches the one it may.
#[test]
fn a_filtered_listing_is_bounded_per_request_and_complete() {
    const MIB: u64 = 1 << 20;
    let config = S3Config {
        keys: vec![key("AKTEST", false)],
        anonymous_read: Vec::new(),
    };
    let mut c = Client::with_fixture(Fixture::with_devices(&[320 * MIB], &[]), config);
    for i in 0..(MAX_LIST_EXAMINED + 100) {
        c.shell(&alloc::format!("create pmem0:k{i:05} 0"));
    }
    c.shell("create pmem0:zz-mine 0");
    let (config, _) = daxbox_bootconfig::parse("allow=198.18.0.10 pmem0:zz-mine ro http\n");
    c.fixture
        .borrow_mut()
        .storage
        .access_mut()
        .set_rules(config.allow);
    at(&mut c, "198.18.0.10");
    let first = c.get("/pmem0?list-type=2").text();
    assert!(keys_of(&first).is_empty(), "{first}");
    assert!(first.contains("<IsTruncated>true</IsTruncated>"));
    let token = first
        .split_once("<NextContinuationToken>")
        .unwrap()
        .1
        .split_once('<')
        .unwrap()
        .0
        .to_string();
    let second = c
        .get(&alloc::format!(
            "/pmem0?list-type=2&continuation-token={token}"
        ))
        .text();
    assert_eq!(keys_of(&second), ["zz-mine"]);
    assert!(second.contains("<IsTruncated>false</IsTruncated>"));
    // v1 says where to go on.
    let first = c.get("/pmem0").text();
    let marker = first
        .split_once("<NextMarker>")
        .unwrap()
        .1
        .split_once('<')
        .unwrap()
        .0
        .to_string();
    assert_eq!(
        keys_of(&c.get(&alloc::format!("/pmem0?marker={marker}")).text()),
        ["zz-mine"]
    );
}

/// rclone keeps a file's modification time in `x-amz-meta-mtime` and
/// re-copies (CopyObject onto itself, `REPLACE`) every object whose HEAD
/// does not return it, at every sync: the object API keeps it (in RAM,
/// with the ETag) and returns it.
#[test]
fn the_mtime_metadata_rclone_sets_is_returned() {
    let mut c = Client::new();
    let put = c.call(
        "PUT",
        "/pmem0/f",
        &[("x-amz-meta-mtime", "1796447222.229220393")],
        b"data",
    );
    assert_eq!(put.status, 200);
    let head = c.call("HEAD", "/pmem0/f", &[], b"");
    assert_eq!(
        head.header("x-amz-meta-mtime"),
        Some("1796447222.229220393")
    );
    assert_eq!(
        c.get("/pmem0/f").header("x-amz-meta-mtime"),
        Some("1796447222.229220393")
    );
    // A copy keeps it; a copy with REPLACE takes the new one.
    let copy = c.call("PUT", "/pmem0/g", &[("x-amz-copy-source", "/pmem0/f")], b"");
    assert_eq!(copy.status, 200);
    assert_eq!(
        c.get("/pmem0/g").header("x-amz-meta-mtime"),
        Some("1796447222.229220393")
    );
    let replace = [
        ("x-amz-copy-source", "pmem0/f"),
        ("x-amz-metadata-directive", "REPLACE"),
        ("x-amz-meta-mtime", "1796447300"),
    ];
    assert_eq!(c.call("PUT", "/pmem0/f", &replace, b"").status, 200);
    let head = c.call("HEAD", "/pmem0/f", &[], b"");
    assert_eq!(head.header("x-amz-meta-mtime"), Some("1796447300"));
    assert_eq!(c.get("/pmem0/f").body, b"data");
    // A change by another path forgets it; a PUT without it has none.
    c.shell("write pmem0:f 0 D");
    assert_eq!(
        c.call("HEAD", "/pmem0/f", &[], b"")
            .header("x-amz-meta-mtime"),
        None
    );
    c.put("/pmem0/g", b"new");
    assert_eq!(
        c.call("HEAD", "/pmem0/g", &[], b"")
            .header("x-amz-meta-mtime"),
        None
    );
    // Not a Unix time: not kept (the PUT itself succeeds).
    c.call("PUT", "/pmem0/h", &[("x-amz-meta-mtime", "soon")], b"x");
    assert_eq!(
        c.call("HEAD", "/pmem0/h", &[], b"")
            .header("x-amz-meta-mtime"),
        None
    );
}

/// The text between `<tag>` and `</tag>`, first occurrence.
fn element(xml: &str, tag: &str) -> String {
    let open = alloc::format!("<{tag}>");
    let close = alloc::format!("</{tag}>");
    xml.split_once(open.as_str())
        .and_then(|(_, rest)| rest.split_once(close.as_str()))
        .map(|(v, _)| v.to_string())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}

fn start_upload(c: &mut Client, key: &str) -> String {
    let a = c.call("POST", &alloc::format!("/pmem0/{key}?uploads"), &[], b"");
    assert_eq!(a.status, 200, "{}", a.text());
    element(&a.text(), "UploadId")
}

fn put_part(c: &mut Client, key: &str, id: &str, n: u32, body: &[u8]) -> String {
    let a = c.call(
        "PUT",
        &alloc::format!("/pmem0/{key}?partNumber={n}&uploadId={id}"),
        &[],
        body,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    a.header("etag").unwrap().to_string()
}

fn complete_xml(parts: &[(u32, &str)]) -> String {
    let mut xml =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (n, etag) in parts {
        xml.push_str(&alloc::format!(
            "<Part><ETag>{}</ETag><PartNumber>{n}</PartNumber></Part>",
            etag.replace('"', "&quot;")
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13).wrapping_add(seed.wrapping_mul(97))) as u8)
        .collect()
}

fn df_free(c: &Client) -> String {
    c.shell("df")
}

#[test]
fn multipart_upload_round_trip_with_s3_etag() {
    let mut c = Client::big();
    let id = start_upload(&mut c, "dir/big.bin");
    let p1 = pattern(5 << 20, 1);
    let p2 = pattern(5 << 20, 2);
    let p3 = pattern(123_457, 3);
    // Parts may arrive in any order, and be uploaded again.
    let e3 = put_part(&mut c, "dir/big.bin", &id, 3, &p3);
    let _ = put_part(&mut c, "dir/big.bin", &id, 1, &p2);
    let e1 = put_part(&mut c, "dir/big.bin", &id, 1, &p1);
    let e2 = put_part(&mut c, "dir/big.bin", &id, 2, &p2);
    assert_eq!(e1, md5_hex(&p1));
    // Nothing of the upload is visible.
    assert!(c.shell("ls pmem0").contains("0 file(s)"));
    assert!(keys_of(&c.get("/pmem0?list-type=2").text()).is_empty());
    assert_eq!(c.get("/pmem0/dir/big.bin").status, 404);
    // ListParts, ListMultipartUploads.
    let parts = c
        .get(&alloc::format!("/pmem0/dir/big.bin?uploadId={id}"))
        .text();
    assert_eq!(parts.matches("<Part>").count(), 3, "{parts}");
    assert!(parts.contains(&alloc::format!("<Size>{}</Size>", p3.len())));
    let page = c
        .get(&alloc::format!(
            "/pmem0/dir/big.bin?uploadId={id}&max-parts=2"
        ))
        .text();
    assert_eq!(page.matches("<Part>").count(), 2);
    assert!(page.contains("<IsTruncated>true</IsTruncated>"));
    assert!(page.contains("<NextPartNumberMarker>2</NextPartNumberMarker>"));
    let rest = c
        .get(&alloc::format!(
            "/pmem0/dir/big.bin?uploadId={id}&part-number-marker=2"
        ))
        .text();
    assert_eq!(rest.matches("<Part>").count(), 1);
    let uploads = c.get("/pmem0?uploads").text();
    assert_eq!(element(&uploads, "UploadId"), id);
    assert_eq!(element(&uploads, "Key"), "dir/big.bin");
    // Complete.
    let xml = complete_xml(&[(1, &e1), (2, &e2), (3, &e3)]);
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/dir/big.bin?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let mut md5s = Vec::new();
    for p in [&p1, &p2, &p3] {
        md5s.extend_from_slice(&Md5::digest(p));
    }
    let expected = alloc::format!("\"{}-3\"", hex(&Md5::digest(&md5s)));
    assert_eq!(element(&a.text(), "ETag"), expected.replace('"', "&quot;"));
    let get = c.get("/pmem0/dir/big.bin");
    assert_eq!(get.status, 200);
    assert_eq!(get.header("etag"), Some(expected.as_str()));
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    whole.extend_from_slice(&p3);
    assert!(get.body == whole, "byte-identical");
    // Only the object is left: no part files, no upload.
    assert!(
        c.shell("ls pmem0").contains("1 file(s)"),
        "{}",
        c.shell("ls pmem0")
    );
    assert_eq!(c.service.routes().uploads(), 0);
    assert_eq!(c.service.routes().exchanges(), 0);
    assert!(!c.get("/pmem0?uploads").text().contains("<Upload>"));
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/dir/big.bin?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!((a.status, a.code().as_str()), (404, "NoSuchUpload"));
}

#[test]
fn a_single_part_upload_and_a_replaced_object() {
    let mut c = Client::big();
    c.put("/pmem0/k", b"old");
    let id = start_upload(&mut c, "k");
    let e = put_part(&mut c, "k", &id, 7, b"tiny last part");
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/k?uploadId={id}"),
        &[],
        complete_xml(&[(7, &e)]).as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(c.get("/pmem0/k").body, b"tiny last part");
    assert!(c.get("/pmem0/k").header("etag").unwrap().ends_with("-1\""));
    assert!(c.shell("ls pmem0").contains("1 file(s)"));
}

#[test]
fn multipart_errors() {
    let mut c = Client::big();
    let id = start_upload(&mut c, "obj");
    let small = pattern(1000, 5);
    let big = pattern(5 << 20, 6);
    let e1 = put_part(&mut c, "obj", &id, 1, &small);
    let small2 = pattern(1000, 7);
    let e2 = put_part(&mut c, "obj", &id, 2, &small2);
    let post = |c: &mut Client, body: &str| {
        c.call(
            "POST",
            &alloc::format!("/pmem0/obj?uploadId={id}"),
            &[],
            body.as_bytes(),
        )
    };
    // A part below 5 MiB that is not the last.
    let a = post(&mut c, &complete_xml(&[(1, &e1), (2, &e2)]));
    assert_eq!((a.status, a.code().as_str()), (400, "EntityTooSmall"));
    // Wrong ETag, missing part, order.
    let a = post(&mut c, &complete_xml(&[(1, &e2)]));
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "InvalidPart"),
        "{}",
        a.text()
    );
    let a = post(&mut c, &complete_xml(&[(4, &e1)]));
    assert_eq!((a.status, a.code().as_str()), (400, "InvalidPart"));
    let a = post(&mut c, &complete_xml(&[(2, &e2), (1, &e1)]));
    assert_eq!((a.status, a.code().as_str()), (400, "InvalidPartOrder"));
    let a = post(&mut c, &complete_xml(&[(1, &e1), (1, &e1)]));
    assert_eq!((a.status, a.code().as_str()), (400, "InvalidPartOrder"));
    // Malformed XML, an empty list, an oversize body.
    for body in ["<CompleteMultipartUpload><Part>", "<CompleteMultipartUpload/>", "not xml", "<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>"] {
        let a = post(&mut c, body);
        assert_eq!((a.status, a.code().as_str()), (400, "MalformedXML"), "{body}");
    }
    let huge = " ".repeat(multipart::MAX_COMPLETE_BODY + 1);
    let a = post(&mut c, &huge);
    assert_eq!((a.status, a.code().as_str()), (400, "MalformedXML"));
    // Bad part numbers, unknown uploads, an upload of another key.
    for n in ["0", "10001", "x"] {
        let a = c.call(
            "PUT",
            &alloc::format!("/pmem0/obj?partNumber={n}&uploadId={id}"),
            &[],
            b"x",
        );
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "InvalidArgument"),
            "{n}"
        );
    }
    for target in [
        "/pmem0/obj?partNumber=1&uploadId=nope",
        "/pmem0/other?partNumber=1&uploadId=ID",
    ] {
        let a = c.call("PUT", &target.replace("ID", &id), &[], b"x");
        assert_eq!(
            (a.status, a.code().as_str()),
            (404, "NoSuchUpload"),
            "{target}"
        );
    }
    assert_eq!(
        c.call("GET", "/pmem0/obj?uploadId=nope", &[], b"").code(),
        "NoSuchUpload"
    );
    assert_eq!(
        c.call("DELETE", "/pmem0/obj?uploadId=nope", &[], b"")
            .code(),
        "NoSuchUpload"
    );
    assert_eq!(post(&mut c, "x").status, 400);
    // A part whose Content-MD5 is wrong is refused and the earlier part stays.
    let wrong = base64(&Md5::digest(b"other"));
    let a = c.call(
        "PUT",
        &alloc::format!("/pmem0/obj?partNumber=1&uploadId={id}"),
        &[("content-md5", &wrong)],
        &big,
    );
    assert_eq!((a.status, a.code().as_str()), (400, "BadDigest"));
    let parts = c.get(&alloc::format!("/pmem0/obj?uploadId={id}")).text();
    assert!(parts.contains("<Size>1000</Size><"), "{parts}");
    // The failed Completes left the upload whole: it still completes.
    let e1 = put_part(&mut c, "obj", &id, 1, &big);
    let a = post(&mut c, &complete_xml(&[(1, &e1), (2, &e2)]));
    assert_eq!(a.status, 200, "{}", a.text());
    let mut whole = big.clone();
    whole.extend_from_slice(&small2);
    assert!(c.get("/pmem0/obj").body == whole);
    // A read-only key cannot be written.
    let a = c.call("POST", "/pmem0/obj?uploads", &[], b"");
    assert_eq!(a.status, 200);
    c.key = key("AKREAD", true);
    let a = c.call("POST", "/pmem0/obj?uploads", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (403, "AccessDenied"));
}

#[test]
fn uploads_in_progress_are_bounded() {
    let mut c = Client::big();
    let mut ids = Vec::new();
    for i in 0..multipart::MAX_UPLOADS {
        ids.push(start_upload(&mut c, &alloc::format!("k{i}")));
    }
    let a = c.call("POST", "/pmem0/one-more?uploads", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (503, "SlowDown"));
    assert!(a.text().contains("at most 64"));
    let a = c.call(
        "DELETE",
        &alloc::format!("/pmem0/k0?uploadId={}", ids[0]),
        &[],
        b"",
    );
    assert_eq!(a.status, 204);
    start_upload(&mut c, "one-more");
}

#[test]
fn abort_leaves_nothing_behind_and_returns_the_space() {
    let mut c = Client::big();
    let before = df_free(&c);
    let id = start_upload(&mut c, "gone");
    put_part(&mut c, "gone", &id, 1, &pattern(5 << 20, 9));
    put_part(&mut c, "gone", &id, 2, &pattern(3 << 20, 9));
    assert_ne!(df_free(&c), before, "the parts take space");
    let a = c.call(
        "DELETE",
        &alloc::format!("/pmem0/gone?uploadId={id}"),
        &[],
        b"",
    );
    assert_eq!(a.status, 204, "{}", a.text());
    assert_eq!(df_free(&c), before, "the space is back");
    assert_eq!(c.service.routes().uploads(), 0);
    let a = c.call(
        "PUT",
        &alloc::format!("/pmem0/gone?partNumber=1&uploadId={id}"),
        &[],
        b"x",
    );
    assert_eq!(a.code(), "NoSuchUpload");
    assert_eq!(df_free(&c), before, "the refused part left nothing");
    assert_eq!(c.get("/pmem0/gone").status, 404);
}

#[test]
fn a_part_cut_off_leaves_nothing_and_part_files_are_swept() {
    let mut c = Client::big();
    let id = start_upload(&mut c, "cut");
    put_part(&mut c, "cut", &id, 1, b"kept part");
    let body = vec![1u8; 100_000];
    let bytes = c.build(
        "PUT",
        &alloc::format!("/pmem0/cut?partNumber=2&uploadId={id}"),
        &[],
        &body,
        true,
    );
    let (_, conn) = c.send_raw(&bytes[..bytes.len() - 1000]);
    c.service.closed(conn);
    let parts = c.get(&alloc::format!("/pmem0/cut?uploadId={id}")).text();
    assert_eq!(parts.matches("<Part>").count(), 1, "{parts}");
    // A reboot forgets the upload; the sweep removes its part file.
    let mut f = c.fixture.borrow_mut();
    assert_eq!(sweep_temporaries(&mut f.storage), 1);
}

#[test]
fn complete_moves_aligned_parts_instead_of_copying() {
    let mut c = Client::big();
    let id = start_upload(&mut c, "moved");
    let mut parts: Vec<Vec<u8>> = (0..7).map(|i| pattern(6 << 20, 20 + i)).collect();
    parts.push(pattern(1 << 20, 13));
    let mut etags = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        etags.push(put_part(&mut c, "moved", &id, i as u32 + 1, p));
    }
    let list: Vec<(u32, &str)> = etags
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u32 + 1, e.as_str()))
        .collect();
    let physical = |c: &Client, name: &str| -> Vec<u64> {
        let mut f = c.fixture.borrow_mut();
        let fs = f.storage.filesystem(0).unwrap();
        let file = fs.lookup(name).unwrap();
        fs.dax_ranges(file, 0, u64::MAX)
            .unwrap()
            .iter()
            .flat_map(|r| (0..r.len / 4096).map(move |k| r.region_offset + k * 4096))
            .collect()
    };
    let part2 = physical(&c, &alloc::format!("\u{1}mpu-{id}-2"));
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/moved?uploadId={id}"),
        &[],
        complete_xml(&list).as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    // Part 2's blocks are the object's: moved, not copied.
    let object = physical(&c, "moved");
    let kept = part2.iter().filter(|p| object.contains(p)).count();
    assert_eq!(kept, part2.len(), "part 2's blocks in the object");
    let whole: Vec<u8> = parts.concat();
    assert!(c.get("/pmem0/moved").body == whole);
    assert!(c.shell("ls pmem0").contains("1 file(s)"));
}

/// A checksum a PUT verified is kept and returned on GET and HEAD when
/// the request asks with `x-amz-checksum-mode: ENABLED` (whole-object
/// reads only), and forgotten when another path changes the file.
#[test]
fn verified_checksums_are_returned_with_checksum_mode() {
    let mut c = Client::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let crc = base64(&CRC32.checksum(&data).to_be_bytes());
    let put = c.call("PUT", "/pmem0/c", &[("x-amz-checksum-crc32", &crc)], &data);
    assert_eq!(put.status, 200, "{}", put.text());
    let mode = [("x-amz-checksum-mode", "ENABLED")];
    for method in ["GET", "HEAD"] {
        let a = c.call(method, "/pmem0/c", &mode, b"");
        assert_eq!(
            a.header("x-amz-checksum-crc32"),
            Some(crc.as_str()),
            "{method}"
        );
        assert_eq!(a.header("x-amz-checksum-type"), Some("FULL_OBJECT"));
        // Not asked for: not sent.
        let a = c.call(method, "/pmem0/c", &[], b"");
        assert_eq!(a.header("x-amz-checksum-crc32"), None, "{method}");
    }
    // A range is not the whole object: no whole-object checksum.
    let a = c.call(
        "GET",
        "/pmem0/c",
        &[("x-amz-checksum-mode", "ENABLED"), ("range", "bytes=0-9")],
        b"",
    );
    assert_eq!((a.status, a.header("x-amz-checksum-crc32")), (206, None));
    // crc32c from the aws-chunked trailer path is kept the same way.
    let crc32c = base64(&CRC32C.checksum(b"other").to_be_bytes());
    let put = c.call(
        "PUT",
        "/pmem0/d",
        &[("x-amz-checksum-crc32c", &crc32c)],
        b"other",
    );
    assert_eq!(put.status, 200);
    let a = c.call("HEAD", "/pmem0/d", &mode, b"");
    assert_eq!(a.header("x-amz-checksum-crc32c"), Some(crc32c.as_str()));
    assert_eq!(a.header("x-amz-checksum-crc32"), None);
    // A copy keeps it.
    let copy = c.call("PUT", "/pmem0/e", &[("x-amz-copy-source", "/pmem0/c")], b"");
    assert_eq!(copy.status, 200);
    assert_eq!(
        c.call("HEAD", "/pmem0/e", &mode, b"")
            .header("x-amz-checksum-crc32"),
        Some(crc.as_str())
    );
    // Another path changes the file: the checksum goes with the MD5.
    c.shell("write pmem0:c 0 J");
    assert_eq!(
        c.call("GET", "/pmem0/c", &mode, b"")
            .header("x-amz-checksum-crc32"),
        None
    );
    // A PUT without one has none.
    c.put("/pmem0/e", b"plain");
    assert_eq!(
        c.call("GET", "/pmem0/e", &mode, b"")
            .header("x-amz-checksum-crc32"),
        None
    );
}

/// Parts uploaded with a checksum of one algorithm give the object S3's
/// composite checksum: the CRC of the parts' checksums, `-N`.
#[test]
fn a_multipart_object_has_the_composite_checksum_of_its_parts() {
    let mut c = Client::big();
    let a = c.call(
        "POST",
        "/pmem0/m?uploads",
        &[("x-amz-checksum-algorithm", "CRC32")],
        b"",
    );
    let id = element(&a.text(), "UploadId");
    let p1 = pattern(5 << 20, 1);
    let p2 = pattern(1000, 2);
    let mut etags = Vec::new();
    let mut crcs = Vec::new();
    for (n, p) in [(1u32, &p1), (2, &p2)] {
        let crc = CRC32.checksum(p).to_be_bytes();
        let b64 = base64(&crc);
        let a = c.call(
            "PUT",
            &alloc::format!("/pmem0/m?partNumber={n}&uploadId={id}"),
            &[("x-amz-checksum-crc32", &b64)],
            p,
        );
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-amz-checksum-crc32"), Some(b64.as_str()));
        etags.push(a.header("etag").unwrap().to_string());
        crcs.extend_from_slice(&crc);
    }
    let xml = complete_xml(&[(1, &etags[0]), (2, &etags[1])]);
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/m?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let composite = alloc::format!("{}-2", base64(&CRC32.checksum(&crcs).to_be_bytes()));
    let head = c.call(
        "HEAD",
        "/pmem0/m",
        &[("x-amz-checksum-mode", "ENABLED")],
        b"",
    );
    assert_eq!(
        head.header("x-amz-checksum-crc32"),
        Some(composite.as_str())
    );
    assert_eq!(head.header("x-amz-checksum-type"), Some("COMPOSITE"));
    // A part without a checksum: the object has none.
    let id = start_upload(&mut c, "n");
    let e1 = put_part(&mut c, "n", &id, 1, &p2);
    let xml = complete_xml(&[(1, &e1)]);
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/n?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!(a.status, 200);
    let head = c.call(
        "HEAD",
        "/pmem0/n",
        &[("x-amz-checksum-mode", "ENABLED")],
        b"",
    );
    assert_eq!(head.header("x-amz-checksum-crc32"), None);
}

impl Client {
    /// The appliance after a power cut and a boot: the devices' bytes as
    /// they are now, mounted afresh, a new object API (another boot
    /// nonce), nothing kept in RAM.
    fn reboot(&self) -> Client {
        let images = self.fixture.borrow().env.images();
        let fixture = Fixture::boot_env(crate::testing::FakeEnvironment::from_images(images));
        let routes_config = self.service.routes().config.clone();
        let mut next = Client::with_fixture(fixture, routes_config);
        next.service.routes_mut().boot_nonce ^= 0x5a5a;
        next
    }
}

/// S3 tools compare a single-part object's ETag with the MD5 of their
/// copy (rclone check, aws s3 sync): it stays the MD5 of the content
/// after a reboot, with the checksum, Last-Modified and mtime; a change
/// by another path before the reboot is not forgotten by it.
#[test]
fn etags_survive_a_reboot() {
    let mut c = Client::new();
    let data = pattern(300_000, 9);
    let crc = base64(&CRC32.checksum(&data).to_be_bytes());
    let put = c.call(
        "PUT",
        "/pmem0/kept",
        &[
            ("x-amz-checksum-crc32", &crc),
            ("x-amz-meta-mtime", "1796447222.5"),
        ],
        &data,
    );
    assert_eq!(put.status, 200);
    c.put("/pmem0/changed", b"hello");
    c.put("/pmem0/renamed", b"moved");
    c.shell("write pmem0:changed 0 J");
    c.shell("mv pmem0:renamed pmem0:moved");
    let changed_before = c.get("/pmem0/changed").header("etag").unwrap().to_string();
    let mut c = c.reboot();
    let mode = [("x-amz-checksum-mode", "ENABLED")];
    let head = c.call("HEAD", "/pmem0/kept", &mode, b"");
    assert_eq!(head.header("etag"), Some(md5_hex(&data).as_str()));
    assert_eq!(head.header("x-amz-checksum-crc32"), Some(crc.as_str()));
    assert_eq!(head.header("x-amz-meta-mtime"), Some("1796447222.5"));
    assert_eq!(
        head.header("last-modified"),
        Some("Sat, 05 Dec 2026 03:48:56 GMT")
    );
    assert_eq!(
        c.get("/pmem0/moved").header("etag"),
        Some(md5_hex(b"moved").as_str())
    );
    // In a listing too.
    let list = c.get("/pmem0?list-type=2&prefix=kept").text();
    assert_eq!(
        element(&list, "ETag"),
        md5_hex(&data).replace('"', "&quot;")
    );
    // The file changed by the shell has no MD5 tag, before or after.
    let changed = c.get("/pmem0/changed").header("etag").unwrap().to_string();
    assert!(changed.ends_with("-1\""), "{changed}");
    assert_ne!(changed, md5_hex(b"Jello"));
    let _ = changed_before;
    // A change after the reboot (NBD or shell) forgets it, also across
    // the next reboot.
    c.shell("write pmem0:kept 0 Z");
    assert!(c
        .get("/pmem0/kept")
        .header("etag")
        .unwrap()
        .ends_with("-1\""));
    let mut c = c.reboot();
    assert!(c
        .get("/pmem0/kept")
        .header("etag")
        .unwrap()
        .ends_with("-1\""));
    assert_eq!(
        c.call("HEAD", "/pmem0/kept", &mode, b"")
            .header("x-amz-checksum-crc32"),
        None
    );
    // The record file is nobody's object, export or file.
    assert!(keys_of(&c.get("/pmem0?list-type=2").text())
        .iter()
        .all(|k| !hidden(k)));
    assert!(
        c.shell("ls pmem0").contains("3 file(s)"),
        "{}",
        c.shell("ls pmem0")
    );
}

/// The user metadata a single PUT keeps (`x-amz-meta-mtime`, which rclone
/// sets) is kept the same way when it comes with CreateMultipartUpload.
#[test]
fn a_multipart_upload_keeps_the_mtime_metadata() {
    let mut c = Client::big();
    let a = c.call(
        "POST",
        "/pmem0/mt?uploads",
        &[("x-amz-meta-mtime", "1796447222.25")],
        b"",
    );
    assert_eq!(a.status, 200);
    let id = element(&a.text(), "UploadId");
    let e = put_part(&mut c, "mt", &id, 1, b"only part");
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/mt?uploadId={id}"),
        &[],
        complete_xml(&[(1, &e)]).as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let head = c.call("HEAD", "/pmem0/mt", &[], b"");
    assert_eq!(head.header("x-amz-meta-mtime"), Some("1796447222.25"));
    // Not a Unix time: not kept, as for a PUT.
    let a = c.call(
        "POST",
        "/pmem0/mu?uploads",
        &[("x-amz-meta-mtime", "soon")],
        b"",
    );
    let id = element(&a.text(), "UploadId");
    let e = put_part(&mut c, "mu", &id, 1, b"x");
    let xml = complete_xml(&[(1, &e)]);
    c.call(
        "POST",
        &alloc::format!("/pmem0/mu?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!(
        c.call("HEAD", "/pmem0/mu", &[], b"")
            .header("x-amz-meta-mtime"),
        None
    );
}

/// A GET that has begun sending an object finishes with that object's
/// bytes when a PUT replaces it (or a DELETE removes it) meanwhile: the
/// reader holds the file (daxfs open-unlink), whose space returns when
/// the GET ends.
#[test]
fn a_get_in_progress_sends_the_old_object_whole_when_it_is_replaced() {
    for replace in [true, false] {
        let mut c = Client::new();
        let old = pattern(1 << 20, 4);
        let new = pattern(1 << 20, 5);
        // The record file exists (it holds a block) before `df` is noted.
        c.put("/pmem0/warm", b"x");
        assert_eq!(c.call("DELETE", "/pmem0/warm", &[], b"").status, 204);
        let free_before = df_free(&c);
        c.put("/pmem0/obj", &old);
        let bytes = c.build("GET", "/pmem0/obj", &[], b"", true);
        let mut conn = c.service.accept(0);
        assert_eq!(c.service.receive(&mut conn, &bytes, 0), bytes.len());
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        for _ in 0..8 {
            let n = c.service.produce(&mut conn, &mut buf, 0);
            out.extend_from_slice(&buf[..n]);
        }
        assert!(out.len() < old.len(), "the GET is under way");
        if replace {
            c.put("/pmem0/obj", &new);
            assert_eq!(c.get("/pmem0/obj").body, new);
        } else {
            assert_eq!(c.call("DELETE", "/pmem0/obj", &[], b"").status, 204);
            assert_eq!(c.get("/pmem0/obj").status, 404);
        }
        loop {
            let n = c.service.produce(&mut conn, &mut buf, 0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let answer = parse(&out);
        assert_eq!(answer.status, 200);
        assert!(
            answer.body == old,
            "the old object, whole (replace: {replace})"
        );
        assert_eq!(answer.header("etag"), Some(md5_hex(&old).as_str()));
        c.service.closed(conn);
        assert_eq!(c.service.routes().exchanges(), 0);
        // The old object's space returned once the GET ended.
        if !replace {
            assert_eq!(df_free(&c), free_before);
        }
    }
}

fn copy_part(
    c: &mut Client,
    key: &str,
    id: &str,
    n: u32,
    source: &str,
    range: Option<&str>,
) -> Answer {
    let mut headers = vec![("x-amz-copy-source", source)];
    if let Some(range) = range {
        headers.push(("x-amz-copy-source-range", range));
    }
    c.call(
        "PUT",
        &alloc::format!("/pmem0/{key}?partNumber={n}&uploadId={id}"),
        &headers,
        b"",
    )
}

/// UploadPartCopy (`x-amz-copy-source` on UploadPart, with or without
/// `x-amz-copy-source-range`): block-aligned ranges share the source's
/// blocks (no space taken), others are copied; the part's ETag is the MD5
/// of its bytes; the completed object is the source's bytes.
#[test]
fn upload_part_copy_shares_aligned_ranges_and_copies_others() {
    let mut c = Client::big();
    let data = pattern(12 * 1024 * 1024 + 777, 8);
    c.put("/pmem0/src", &data);
    let used = |c: &Client| -> String {
        let df = c.shell("df");
        df.lines()
            .find(|l| l.starts_with("pmem0"))
            .unwrap()
            .split_whitespace()
            .nth(3)
            .unwrap()
            .to_string()
    };
    let before = used(&c);
    let id = start_upload(&mut c, "dst");
    let five = 5 * 1024 * 1024;
    let a = copy_part(
        &mut c,
        "dst",
        &id,
        1,
        "/pmem0/src",
        Some(&alloc::format!("bytes=0-{}", five - 1)),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let e1 = element(&a.text(), "ETag").replace("&quot;", "\"");
    assert_eq!(e1, md5_hex(&data[..five]));
    let a = copy_part(
        &mut c,
        "dst",
        &id,
        2,
        "pmem0/src",
        Some(&alloc::format!("bytes={five}-{}", data.len() - 1)),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let e2 = element(&a.text(), "ETag").replace("&quot;", "\"");
    // Aligned: shared, not copied.
    assert_eq!(used(&c), before, "{}", c.shell("df"));
    let xml = complete_xml(&[(1, &e1), (2, &e2)]);
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/dst?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let got = c.get("/pmem0/dst");
    assert!(got.body == data, "the source's bytes");
    assert!(got.header("etag").unwrap().ends_with("-2\""));
    // The whole object (no range), and an unaligned range (copied).
    let id = start_upload(&mut c, "dst2");
    let a = copy_part(&mut c, "dst2", &id, 1, "/pmem0/src", None);
    assert_eq!(a.status, 200, "{}", a.text());
    let e1 = element(&a.text(), "ETag").replace("&quot;", "\"");
    assert_eq!(e1, md5_hex(&data));
    let a = copy_part(&mut c, "dst2", &id, 2, "/pmem0/src", Some("bytes=3-1002"));
    assert_eq!(a.status, 200, "{}", a.text());
    let e2 = element(&a.text(), "ETag").replace("&quot;", "\"");
    assert_eq!(e2, md5_hex(&data[3..1003]));
    let xml = complete_xml(&[(1, &e1), (2, &e2)]);
    let a = c.call(
        "POST",
        &alloc::format!("/pmem0/dst2?uploadId={id}"),
        &[],
        xml.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let mut expected = data.clone();
    expected.extend_from_slice(&data[3..1003]);
    assert!(c.get("/pmem0/dst2").body == expected);
    // Errors: a missing source, a range past the end or malformed, another
    // bucket, an unknown upload.
    let id = start_upload(&mut c, "dst3");
    assert_eq!(
        copy_part(&mut c, "dst3", &id, 1, "/pmem0/nope", None).code(),
        "NoSuchKey"
    );
    for range in ["bytes=0-99999999", "bytes=5-", "bytes=9-3", "items=0-1"] {
        let a = copy_part(&mut c, "dst3", &id, 1, "/pmem0/src", Some(range));
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "InvalidArgument"),
            "{range}"
        );
    }
    assert_eq!(
        copy_part(&mut c, "dst3", "0000", 1, "/pmem0/src", None).code(),
        "NoSuchUpload"
    );
    assert_eq!(
        copy_part(&mut c, "dst3", &id, 1, "/pmem1/src", None).status,
        501
    );
    // Nothing left behind by the refused copies.
    assert_eq!(c.service.routes().exchanges(), 0);
    let a = c.call(
        "DELETE",
        &alloc::format!("/pmem0/dst3?uploadId={id}"),
        &[],
        b"",
    );
    assert_eq!(a.status, 204);
    assert!(
        c.shell("ls pmem0").contains("3 file(s)"),
        "{}",
        c.shell("ls pmem0")
    );
}
