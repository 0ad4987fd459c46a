"""boto3 against daxbox-serve's S3 object API: round trips and error
cases. Usage: boto3_roundtrip.py PORT ACCESS SECRET WORKDIR. Exits non-zero
(with the failing check) on any mismatch. Run by storage/serve/tests/s3_clients.rs."""

import base64
import hashlib
import os

from s3_common import client, error_code, workdir


s3 = client()
buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert buckets == ["pmem0"], buckets

# Put / get / head of a multi-MiB object; ETag is the MD5.
data = os.urandom(5 * 1024 * 1024 + 123)
put = s3.put_object(Bucket="pmem0", Key="big/blob.bin", Body=data)
assert put["ETag"] == '"%s"' % hashlib.md5(data).hexdigest(), put["ETag"]
got = s3.get_object(Bucket="pmem0", Key="big/blob.bin")
assert got["Body"].read() == data
assert got["ETag"] == put["ETag"]
head = s3.head_object(Bucket="pmem0", Key="big/blob.bin")
assert head["ContentLength"] == len(data)

# Ranges.
assert s3.get_object(Bucket="pmem0", Key="big/blob.bin", Range="bytes=100-199")["Body"].read() == data[100:200]
assert s3.get_object(Bucket="pmem0", Key="big/blob.bin", Range="bytes=-10")["Body"].read() == data[-10:]
assert error_code(lambda: s3.get_object(Bucket="pmem0", Key="big/blob.bin", Range="bytes=%d-" % len(data))) == ("InvalidRange", 416)

# Listing with prefix and delimiter, in pages.
for key in ["a/1", "a/2", "a/b/3", "c", "d e&f"]:
    s3.put_object(Bucket="pmem0", Key=key, Body=key.encode())
top = s3.list_objects_v2(Bucket="pmem0", Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "big/"], top
assert [o["Key"] for o in top["Contents"]] == ["c", "d e&f"], top
under_a = s3.list_objects_v2(Bucket="pmem0", Prefix="a/", Delimiter="/")
assert [o["Key"] for o in under_a["Contents"]] == ["a/1", "a/2"]
assert [p["Prefix"] for p in under_a["CommonPrefixes"]] == ["a/b/"]
paged = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="pmem0", PaginationConfig={"PageSize": 2}) for o in page.get("Contents", [])]
assert paged == ["a/1", "a/2", "a/b/3", "big/blob.bin", "c", "d e&f"], paged
v1 = [o["Key"] for page in s3.get_paginator("list_objects").paginate(Bucket="pmem0", PaginationConfig={"PageSize": 2}) for o in page.get("Contents", [])]
assert v1 == paged, v1

# Delete and DeleteObjects.
s3.delete_object(Bucket="pmem0", Key="c")
deleted = s3.delete_objects(Bucket="pmem0", Delete={"Objects": [{"Key": "a/1"}, {"Key": "a/2"}, {"Key": "d e&f"}]})
assert sorted(d["Key"] for d in deleted["Deleted"]) == ["a/1", "a/2", "d e&f"], deleted
left = [o["Key"] for o in s3.list_objects_v2(Bucket="pmem0")["Contents"]]
assert left == ["a/b/3", "big/blob.bin"], left

# Errors.
assert error_code(lambda: s3.get_object(Bucket="pmem0", Key="missing")) == ("NoSuchKey", 404)
assert error_code(lambda: s3.list_objects_v2(Bucket="pmem7")) == ("NoSuchBucket", 404)
assert error_code(lambda: client(secret_key="wrong-secret").list_objects_v2(Bucket="pmem0")) == ("SignatureDoesNotMatch", 403)
bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
assert error_code(lambda: s3.put_object(Bucket="pmem0", Key="a/b/3", Body=b"new", ContentMD5=bad_md5)) == ("BadDigest", 400)
assert s3.get_object(Bucket="pmem0", Key="a/b/3")["Body"].read() == b"a/b/3", "a bad digest left the old object"
assert error_code(lambda: s3.put_object(Bucket="pmem0", Key="k" * 256, Body=b"x")) == ("KeyTooLongError", 400)
assert error_code(lambda: s3.create_bucket(Bucket="pmem0")) == ("BucketAlreadyOwnedByYou", 409)

# Both checksum settings of current botocore (over http both send a
# signed payload; when_supported adds x-amz-checksum-crc32).
for setting in ["when_supported", "when_required"]:
    c = client(request_checksum_calculation=setting)
    body = os.urandom(300_000)
    c.put_object(Bucket="pmem0", Key="ck-" + setting, Body=body)
    assert c.get_object(Bucket="pmem0", Key="ck-" + setting)["Body"].read() == body

# A file for the NBD side of the test to read.
with open(os.path.join(workdir, "blob.bin"), "wb") as f:
    f.write(data)
print("boto3 ok")
