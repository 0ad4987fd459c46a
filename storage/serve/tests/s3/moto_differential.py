"""Differential test of daxbox-serve's S3 object API against moto (a
reference S3 implementation, PyPI `moto[server]`): the same sequence of boto3
calls runs against a moto server on 127.0.0.1 (started here, in-process, on a
free port, with the bucket `pmem0` created) and against daxbox-serve, and the
two transcripts are compared: HTTP status, S3 error code, the headers that
matter (Content-Range, Content-Length, Accept-Ranges, ETag) and what the body
says (listings, part lists, the SHA-256 of object bytes).

Normalised (they legitimately differ): owners, dates, request ids, bucket
creation dates, continuation tokens and upload ids (opaque: only whether one
is present is compared, and each server's own token is fed back to it).
Every remaining difference is either fixed in daxbox or listed in KNOWN
below with the reason (README: "Dialect differences from S3").

Usage: moto_differential.py PORT ACCESS SECRET WORKDIR. Prints both
transcripts' differences; exits non-zero on any difference not in KNOWN, or
when an entry of KNOWN no longer differs (stale). Run by
storage/serve/tests/s3_clients.rs."""

import base64
import datetime
import hashlib
import json
import logging
import os
import sys

import boto3
import botocore
from botocore.config import Config
from moto.server import ThreadedMotoServer

from s3_common import access, port, secret

BUCKET = "pmem0"

# Operation name -> (why daxbox answers differently from moto, what daxbox
# must answer: a subset of its record). Only these operations may differ;
# each must still differ (else the entry is stale), and daxbox's answer is
# checked against the expected one.
KNOWN = {
    "put key of 256 bytes": (
        "daxbox keys are file names, 1-255 bytes (S3 allows 1024)",
        {"status": 400, "error": "KeyTooLongError"},
    ),
    "put key of 1025 bytes": (
        "moto does not limit key length; S3 refuses over 1024 bytes, as daxbox does over 255",
        {"status": 400, "error": "KeyTooLongError"},
    ),
    "put bad content-md5": (
        "moto does not check Content-MD5; S3 answers BadDigest, as daxbox does",
        {"status": 400, "error": "BadDigest"},
    ),
    "get unsatisfiable bytes=100000-": (
        "moto's 416 has no Content-Range; S3 and daxbox send bytes */SIZE",
        {"status": 416, "error": "InvalidRange", "content-range": "bytes */100000"},
    ),
    "get unsatisfiable bytes=200000-300000": (
        "moto's 416 has no Content-Range; S3 and daxbox send bytes */SIZE",
        {"status": 416, "error": "InvalidRange", "content-range": "bytes */100000"},
    ),
    "get range of empty": (
        "moto's 416 has no Content-Range; S3 and daxbox send bytes */SIZE",
        {"status": 416, "error": "InvalidRange", "content-range": "bytes */0"},
    ),
    "head if-match wrong": (
        "daxbox's 412 carries no ETag header (moto's does); no client reads one from a 412",
        {"status": 412},
    ),
    "list v1 delimiter max-keys 2": (
        "max-keys counts keys and common prefixes together (S3, daxbox); moto counts only keys",
        {"status": 200},
    ),
    "list v1 marker": (
        "S3 and daxbox echo the request's Marker; moto leaves it out",
        {"status": 200},
    ),
    "list v1 pages max-keys 4": (
        "moto's NextMarker without a delimiter is an ETag, not a key (S3 sends none); the pages hold the same keys",
        {},
    ),
    "get after bad digest": (
        "moto stored the body whose Content-MD5 did not match; daxbox kept the old object",
        {"status": 200, "content-length": "15"},
    ),
    "bad signature": (
        "moto does not check signatures (without its IAM mode); S3 and daxbox answer 403",
        {"status": 403, "error": "SignatureDoesNotMatch"},
    ),
    "create existing bucket": (
        "issue 13 asks for BucketAlreadyOwnedByYou (S3 outside us-east-1); moto answers as us-east-1 (200)",
        {"status": 409, "error": "BucketAlreadyOwnedByYou"},
    ),
    "get if-match and if-unmodified-since past": (
        "S3 documents 200 when If-Match holds and If-Unmodified-Since fails (RFC 7232 §6 too); moto says 412",
        {"status": 200},
    ),
    "get if-none-match and if-modified-since later": (
        "RFC 7232 §6: If-Modified-Since is ignored when If-None-Match is present; moto evaluates both (304)",
        {"status": 200},
    ),
    "delete objects quiet": (
        "S3's quiet mode lists only errors, as daxbox does; moto lists the deleted keys too",
        {"status": 200, "body": {"deleted": [], "errors": []}},
    ),
    "upload part 0": (
        "S3 answers InvalidArgument for a part number outside 1-10000, as daxbox does; moto NoSuchUpload",
        {"status": 400, "error": "InvalidArgument"},
    ),
    "complete out of order": (
        "S3 checks the order first (InvalidPartOrder), as daxbox does; moto checks sizes first",
        {"status": 400, "error": "InvalidPartOrder"},
    ),
    "complete again": (
        "daxbox forgets an upload when it completes (NoSuchUpload, as S3 documents); moto completes it again",
        {"status": 404, "error": "NoSuchUpload"},
    ),
    "upload part to completed": (
        "moto fails with an internal error (KeyError) for an unknown upload id; S3 and daxbox: NoSuchUpload",
        {"status": 404, "error": "NoSuchUpload"},
    ),
    "upload part to unknown": (
        "moto fails with an internal error (KeyError) for an unknown upload id; S3 and daxbox: NoSuchUpload",
        {"status": 404, "error": "NoSuchUpload"},
    ),
}


def client(endpoint, key=access, secret_key=secret, expect=True):
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            # Plain payloads on both: the aws-chunked framing is tested on
            # its own (boto3_roundtrip.py) and moto's is not the point here.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    if not expect:
        # moto's server (werkzeug) never answers `Expect: 100-continue`, so
        # botocore would wait 1 s before every body it sends there.
        # (A before-send handler that returns something replaces the reply.)
        def no_expect(request, **_):
            request.headers.pop("Expect", None)

        s3.meta.events.register("before-send.s3", no_expect)
    return s3


HEADERS = ["content-range", "content-length", "accept-ranges", "etag"]


def etag_form(etag):
    """The ETag's shape (quoted MD5, or MD5-N) for where values differ."""
    value = etag.strip('"')
    head, _, parts = value.partition("-")
    ok = len(head) == 32 and all(c in "0123456789abcdef" for c in head)
    return ("md5" if ok else "other:" + value) + ("-" + parts if parts else "")


def call(fn, body=None, headers=HEADERS, skip_length=False):
    """Runs one boto3 call; returns its normalised record."""
    try:
        response = fn()
    except botocore.exceptions.ClientError as e:
        meta = e.response["ResponseMetadata"]
        # An error's length is its XML document's; what matters is the
        # code, and a 416's Content-Range or a 304's ETag.
        record = {"status": meta["HTTPStatusCode"], "error": e.response["Error"].get("Code")}
        for name in ["content-range", "etag"]:
            value = meta["HTTPHeaders"].get(name)
            if value is not None:
                record[name] = value
        return record
    meta = response["ResponseMetadata"]
    record = {"status": meta["HTTPStatusCode"]}
    for name in headers:
        if name == "content-length" and skip_length:
            continue
        value = meta["HTTPHeaders"].get(name)
        if value is not None:
            record[name] = value
    if body is not None:
        record["body"] = body(response)
    return record


def sha(response):
    return hashlib.sha256(response["Body"].read()).hexdigest()


def objects(listing):
    return [(o["Key"], o["Size"], o["ETag"]) for o in listing.get("Contents", [])]


def prefixes(listing):
    return [p["Prefix"] for p in listing.get("CommonPrefixes", [])]


def v2_page(r):
    return {
        "keys": objects(r),
        "prefixes": prefixes(r),
        "truncated": r["IsTruncated"],
        "count": r.get("KeyCount"),
        "max": r.get("MaxKeys"),
        "prefix": r.get("Prefix"),
        "delimiter": r.get("Delimiter"),
        "start_after": r.get("StartAfter"),
        "next_token": "NextContinuationToken" in r,
    }


def v1_page(r):
    # S3 always sends <Marker> and <Prefix> (empty when not given); moto
    # leaves them out: both read as "". NextMarker is S3's only with a
    # delimiter (moto sends an ETag there without one): compared only then.
    return {
        "keys": objects(r),
        "prefixes": prefixes(r),
        "truncated": r["IsTruncated"],
        "max": r.get("MaxKeys"),
        "marker": r.get("Marker") or "",
        "next_marker": r.get("NextMarker") if r.get("Delimiter") else None,
        "prefix": r.get("Prefix") or "",
        "delimiter": r.get("Delimiter"),
    }


def parts_page(r):
    return {
        "parts": [(p["PartNumber"], p["Size"], p["ETag"]) for p in r.get("Parts", [])],
        "truncated": r["IsTruncated"],
        "max": r.get("MaxParts"),
        "next_marker": r.get("NextPartNumberMarker"),
    }


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def sequence(endpoint, log, expect):
    """The operations, in order; `log(name, record)` collects them."""
    s3 = client(endpoint, expect=expect)
    data = bytes((i * 31 + i // 251) & 0xFF for i in range(100_000))
    small = b"hello, objects\n"

    log("list buckets", call(lambda: s3.list_buckets(), lambda r: [b["Name"] for b in r["Buckets"]], headers=[]))
    log("head bucket", call(lambda: s3.head_bucket(Bucket=BUCKET), headers=[]))
    log("head missing bucket", call(lambda: s3.head_bucket(Bucket="pmem7"), headers=[]))
    log("list missing bucket", call(lambda: s3.list_objects_v2(Bucket="pmem7")))
    log("get missing key", call(lambda: s3.get_object(Bucket=BUCKET, Key="nothing")))
    log("head missing key", call(lambda: s3.head_object(Bucket=BUCKET, Key="nothing")))
    log("list empty bucket", call(lambda: s3.list_objects_v2(Bucket=BUCKET), v2_page, headers=[]))

    # Put / get / head and the Range forms.
    log("put", call(lambda: s3.put_object(Bucket=BUCKET, Key="data.bin", Body=data), headers=["etag"]))
    log("get", call(lambda: s3.get_object(Bucket=BUCKET, Key="data.bin"), sha))
    log("head", call(lambda: s3.head_object(Bucket=BUCKET, Key="data.bin")))
    for spec in ["bytes=0-9", "bytes=10-", "bytes=-5", "bytes=99990-200000", "bytes=-200000", "bytes=0-0", "bytes=99999-"]:
        log("get range " + spec, call(lambda: s3.get_object(Bucket=BUCKET, Key="data.bin", Range=spec), sha))
    for spec in ["bytes=100000-", "bytes=200000-300000"]:
        log("get unsatisfiable " + spec, call(lambda: s3.get_object(Bucket=BUCKET, Key="data.bin", Range=spec)))
    log("head range", call(lambda: s3.head_object(Bucket=BUCKET, Key="data.bin", Range="bytes=5-14")))
    log("put empty", call(lambda: s3.put_object(Bucket=BUCKET, Key="empty", Body=b""), headers=["etag"]))
    log("get empty", call(lambda: s3.get_object(Bucket=BUCKET, Key="empty"), sha))
    log("get range of empty", call(lambda: s3.get_object(Bucket=BUCKET, Key="empty", Range="bytes=0-")))

    # Conditional requests.
    etag = s3.head_object(Bucket=BUCKET, Key="data.bin")["ETag"]
    modified = s3.head_object(Bucket=BUCKET, Key="data.bin")["LastModified"]
    past = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    later = modified + datetime.timedelta(seconds=1)
    g = lambda **kw: (lambda: s3.get_object(Bucket=BUCKET, Key="data.bin", **kw))
    h = lambda **kw: (lambda: s3.head_object(Bucket=BUCKET, Key="data.bin", **kw))
    log("get if-match", call(g(IfMatch=etag), sha))
    log("get if-match wrong", call(g(IfMatch='"0123456789abcdef0123456789abcdef"')))
    log("get if-none-match", call(g(IfNoneMatch=etag), skip_length=True))
    log("get if-none-match other", call(g(IfNoneMatch='"0123456789abcdef0123456789abcdef"'), sha))
    log("head if-none-match", call(h(IfNoneMatch=etag), skip_length=True))
    log("get if-modified-since past", call(g(IfModifiedSince=past), sha))
    log("get if-modified-since later", call(g(IfModifiedSince=later), skip_length=True))
    log("get if-unmodified-since past", call(g(IfUnmodifiedSince=past)))
    log("get if-unmodified-since later", call(g(IfUnmodifiedSince=later), sha))
    log("get if-match and if-unmodified-since past", call(g(IfMatch=etag, IfUnmodifiedSince=past), sha))
    log("get if-none-match and if-modified-since later", call(g(IfNoneMatch='"0123456789abcdef0123456789abcdef"', IfModifiedSince=later), sha))
    log("head if-match wrong", call(h(IfMatch='"0123456789abcdef0123456789abcdef"')))
    log("put if-none-match * existing", call(lambda: s3.put_object(Bucket=BUCKET, Key="data.bin", Body=b"x", IfNoneMatch="*")))
    log("put if-none-match * new", call(lambda: s3.put_object(Bucket=BUCKET, Key="fresh", Body=small, IfNoneMatch="*"), headers=["etag"]))
    log("get after create-only", call(lambda: s3.get_object(Bucket=BUCKET, Key="data.bin"), sha))

    # Digests and names.
    log("put content-md5", call(lambda: s3.put_object(Bucket=BUCKET, Key="md5", Body=small, ContentMD5=md5_b64(small)), headers=["etag"]))
    log("put bad content-md5", call(lambda: s3.put_object(Bucket=BUCKET, Key="md5", Body=b"other", ContentMD5=md5_b64(small))))
    log("get after bad digest", call(lambda: s3.get_object(Bucket=BUCKET, Key="md5"), sha))
    s3.put_object(Bucket=BUCKET, Key="md5", Body=small)  # the same state on both again
    log("put key of 1025 bytes", call(lambda: s3.put_object(Bucket=BUCKET, Key="k" * 1025, Body=b"x")))
    log("put key of 256 bytes", call(lambda: s3.put_object(Bucket=BUCKET, Key="k" * 256, Body=b"x")))
    for length in (1025, 256):  # moto kept them: the same state on both again
        call(lambda: s3.delete_object(Bucket=BUCKET, Key="k" * length))
    log("put key of 255 bytes", call(lambda: s3.put_object(Bucket=BUCKET, Key="k" * 255, Body=b"x"), headers=["etag"]))
    log("delete key of 255 bytes", call(lambda: s3.delete_object(Bucket=BUCKET, Key="k" * 255), headers=[]))
    log("bad signature", call(lambda: client(endpoint, secret_key="wrong-secret-123").list_objects_v2(Bucket=BUCKET), headers=[]))
    log("create existing bucket", call(lambda: s3.create_bucket(Bucket=BUCKET), headers=[]))

    # Listings: a tree, then v2 and v1 with every parameter.
    for key in ["a/1", "a/2", "a/b/3", "a/b/4", "a/c/5", "b", "c/6", "d e&f", "z"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    for label, kwargs in [
        ("all", {}),
        ("delimiter", {"Delimiter": "/"}),
        ("prefix", {"Prefix": "a/"}),
        ("prefix+delimiter", {"Prefix": "a/", "Delimiter": "/"}),
        ("prefix no match", {"Prefix": "nope"}),
        ("max-keys 3", {"MaxKeys": 3}),
        ("max-keys 0", {"MaxKeys": 0}),
        ("start-after", {"StartAfter": "a/b/3"}),
        ("start-after past end", {"StartAfter": "zz"}),
        ("start-after+delimiter", {"StartAfter": "a/1", "Delimiter": "/"}),
        ("delimiter+max-keys 2", {"Delimiter": "/", "MaxKeys": 2}),
        ("fetch-owner", {"FetchOwner": True, "Prefix": "a/b/"}),
    ]:
        log("list v2 " + label, call(lambda: s3.list_objects_v2(Bucket=BUCKET, **kwargs), v2_page, headers=[]))
    for label, kwargs in [
        ("max-keys 2", {"MaxKeys": 2}),
        ("delimiter max-keys 2", {"Delimiter": "/", "MaxKeys": 2}),
        ("prefix+delimiter max-keys 1", {"Prefix": "a/", "Delimiter": "/", "MaxKeys": 1}),
    ]:
        pages, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            r = s3.list_objects_v2(Bucket=BUCKET, **kwargs, **extra)
            pages.append(v2_page(r))
            token = r.get("NextContinuationToken")
            if not r["IsTruncated"] or len(pages) > 20:
                break
        log("list v2 pages " + label, {"pages": pages})
    for label, kwargs in [
        ("all", {}),
        ("delimiter", {"Delimiter": "/"}),
        ("prefix+delimiter", {"Prefix": "a/", "Delimiter": "/"}),
        ("max-keys 3", {"MaxKeys": 3}),
        ("marker", {"Marker": "a/b/4"}),
        ("delimiter max-keys 2", {"Delimiter": "/", "MaxKeys": 2}),
    ]:
        log("list v1 " + label, call(lambda: s3.list_objects(Bucket=BUCKET, **kwargs), v1_page, headers=[]))
    pages, marker = [], ""
    while True:
        r = s3.list_objects(Bucket=BUCKET, MaxKeys=4, Marker=marker)
        pages.append(v1_page(r))
        if not r["IsTruncated"] or len(pages) > 20:
            break
        marker = r.get("NextMarker") or r["Contents"][-1]["Key"]
    log("list v1 pages max-keys 4", {"pages": pages})

    # Delete and DeleteObjects (missing keys are deleted too, as in S3).
    log("delete", call(lambda: s3.delete_object(Bucket=BUCKET, Key="b"), headers=[]))
    log("delete missing", call(lambda: s3.delete_object(Bucket=BUCKET, Key="b"), headers=[]))
    log("get deleted", call(lambda: s3.get_object(Bucket=BUCKET, Key="b")))
    log(
        "delete objects",
        call(
            lambda: s3.delete_objects(
                Bucket=BUCKET,
                Delete={"Objects": [{"Key": "a/1"}, {"Key": "missing-1"}, {"Key": "d e&f"}, {"Key": "a/b/missing"}]},
            ),
            lambda r: {
                "deleted": sorted(d["Key"] for d in r.get("Deleted", [])),
                "errors": sorted((e["Key"], e["Code"]) for e in r.get("Errors", [])),
            },
            headers=[],
        ),
    )
    log(
        "delete objects quiet",
        call(
            lambda: s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "a/2"}, {"Key": "gone"}], "Quiet": True}),
            lambda r: {"deleted": r.get("Deleted", []), "errors": r.get("Errors", [])},
            headers=[],
        ),
    )
    log("list after deletes", call(lambda: s3.list_objects_v2(Bucket=BUCKET), v2_page, headers=[]))

    # CopyObject.
    log(
        "copy",
        call(
            lambda: s3.copy_object(Bucket=BUCKET, Key="copy.bin", CopySource={"Bucket": BUCKET, "Key": "data.bin"}),
            lambda r: etag_form(r["CopyObjectResult"]["ETag"]) + " " + r["CopyObjectResult"]["ETag"],
            headers=[],
        ),
    )
    log("get copy", call(lambda: s3.get_object(Bucket=BUCKET, Key="copy.bin"), sha))
    log("copy missing source", call(lambda: s3.copy_object(Bucket=BUCKET, Key="x", CopySource={"Bucket": BUCKET, "Key": "nothing"}), headers=[]))

    # Multipart: create, upload, list, complete, abort, and the errors.
    part1 = bytes((i * 7) & 0xFF for i in range(5 * 1024 * 1024))
    part2 = b"tail of the upload\n" * 1000
    create = s3.create_multipart_upload(Bucket=BUCKET, Key="multi.bin")
    log("create multipart", {"key": create["Key"], "bucket": create["Bucket"], "id": bool(create["UploadId"])})
    uid = create["UploadId"]
    up = lambda n, body, upload=None: (
        lambda: s3.upload_part(Bucket=BUCKET, Key="multi.bin", UploadId=upload or uid, PartNumber=n, Body=body)
    )
    log("upload part 1", call(up(1, part1), headers=["etag"]))
    log("upload part 2", call(up(2, part2), headers=["etag"]))
    log("upload part 2 again", call(up(2, part2), headers=["etag"]))
    log("upload part 0", call(up(0, b"x")))
    log("upload part 10001", call(up(10001, b"x")))
    log("list parts", call(lambda: s3.list_parts(Bucket=BUCKET, Key="multi.bin", UploadId=uid), parts_page, headers=[]))
    log("list parts max 1", call(lambda: s3.list_parts(Bucket=BUCKET, Key="multi.bin", UploadId=uid, MaxParts=1), parts_page, headers=[]))
    log("list parts after 1", call(lambda: s3.list_parts(Bucket=BUCKET, Key="multi.bin", UploadId=uid, PartNumberMarker=1), parts_page, headers=[]))
    other = s3.create_multipart_upload(Bucket=BUCKET, Key="other/upload")["UploadId"]
    log(
        "list uploads",
        call(lambda: s3.list_multipart_uploads(Bucket=BUCKET), lambda r: sorted(u["Key"] for u in r.get("Uploads", [])), headers=[]),
    )
    log(
        "list uploads prefix",
        call(lambda: s3.list_multipart_uploads(Bucket=BUCKET, Prefix="other/"), lambda r: sorted(u["Key"] for u in r.get("Uploads", [])), headers=[]),
    )
    e1 = hashlib.md5(part1).hexdigest()
    e2 = hashlib.md5(part2).hexdigest()
    complete = lambda parts, upload=None: (
        lambda: s3.complete_multipart_upload(
            Bucket=BUCKET, Key="multi.bin", UploadId=upload or uid, MultipartUpload={"Parts": parts}
        )
    )
    log("complete wrong etag", call(complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": '"%s"' % ("0" * 32)}]), headers=[]))
    log("complete missing part", call(complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 3, "ETag": e2}]), headers=[]))
    log("complete out of order", call(complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]), headers=[]))
    log(
        "complete",
        call(
            complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]),
            lambda r: {"key": r["Key"], "etag": r["ETag"]},
            headers=[],
        ),
    )
    log("get multipart", call(lambda: s3.get_object(Bucket=BUCKET, Key="multi.bin"), sha))
    log("head multipart", call(lambda: s3.head_object(Bucket=BUCKET, Key="multi.bin")))
    log("complete again", call(complete([{"PartNumber": 1, "ETag": e1}]), headers=[]))
    log("upload part to completed", call(up(3, b"x")))
    log("abort", call(lambda: s3.abort_multipart_upload(Bucket=BUCKET, Key="other/upload", UploadId=other), headers=[]))
    log("abort again", call(lambda: s3.abort_multipart_upload(Bucket=BUCKET, Key="other/upload", UploadId=other), headers=[]))
    log("list parts of aborted", call(lambda: s3.list_parts(Bucket=BUCKET, Key="other/upload", UploadId=other), headers=[]))
    log("upload part to unknown", call(up(1, b"x", upload="no-such-upload-id")))
    log(
        "list uploads after",
        call(lambda: s3.list_multipart_uploads(Bucket=BUCKET), lambda r: sorted(u["Key"] for u in r.get("Uploads", [])), headers=[]),
    )
    small_upload = s3.create_multipart_upload(Bucket=BUCKET, Key="small.bin")["UploadId"]
    for n in (1, 2):
        s3.upload_part(Bucket=BUCKET, Key="small.bin", UploadId=small_upload, PartNumber=n, Body=b"tiny")
    tiny = hashlib.md5(b"tiny").hexdigest()
    log(
        "complete small parts",
        call(
            lambda: s3.complete_multipart_upload(
                Bucket=BUCKET,
                Key="small.bin",
                UploadId=small_upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": tiny}, {"PartNumber": 2, "ETag": tiny}]},
            ),
            headers=[],
        ),
    )
    s3.abort_multipart_upload(Bucket=BUCKET, Key="small.bin", UploadId=small_upload)
    log("final listing", call(lambda: s3.list_objects_v2(Bucket=BUCKET), v2_page, headers=[]))


def transcript(endpoint, expect=True):
    records = []
    sequence(endpoint, lambda name, record: records.append((name, record)), expect)
    return records


def main():
    # moto's internal errors (the KeyErrors of KNOWN) are answers here, not news.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, moto_port = moto.get_host_and_port()
        moto_endpoint = f"http://{host}:{moto_port}"
        client(moto_endpoint).create_bucket(Bucket=BUCKET)
        reference = transcript(moto_endpoint, expect=False)
    finally:
        moto.stop()
    daxbox = transcript(f"http://127.0.0.1:{port}")
    assert [n for n, _ in reference] == [n for n, _ in daxbox]
    unexpected, stale, known = [], [], []
    for (name, want), (_, got) in zip(reference, daxbox):
        if want == got:
            if name in KNOWN:
                stale.append(name)
            continue
        line = f"{name}:\n  moto:   {json.dumps(want, sort_keys=True)}\n  daxbox: {json.dumps(got, sort_keys=True)}"
        if name not in KNOWN:
            unexpected.append(line)
            continue
        reason, expected = KNOWN[name]
        if any(got.get(k) != v for k, v in expected.items()):
            unexpected.append(line + f"\n  daxbox should answer {json.dumps(expected, sort_keys=True)} ({reason})")
        else:
            known.append(line + f"\n  known: {reason}")
    if os.environ.get("DIFF_VERBOSE"):
        for (name, want), (_, got) in zip(reference, daxbox):
            print(f"{name}\n  moto:   {json.dumps(want, sort_keys=True)}\n  daxbox: {json.dumps(got, sort_keys=True)}")
    print(f"{len(reference)} operations compared")
    for line in known:
        print("KNOWN " + line)
    for line in unexpected:
        print("DIFF " + line)
    for name in stale:
        print(f"STALE {name}: no longer differs, remove it from KNOWN")
    if unexpected or stale:
        sys.exit(1)
    print("moto differential ok")


if __name__ == "__main__":
    main()
