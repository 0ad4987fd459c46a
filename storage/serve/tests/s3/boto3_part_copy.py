"""boto3 UploadPartCopy: parts copied from an object (ranges and whole),
completed, read back byte-identical; and boto3's managed copy(), which
uses UploadPartCopy for objects over its 8 MiB threshold. Usage:
boto3_part_copy.py PORT ACCESS SECRET WORKDIR. Run by
storage/serve/tests/s3_clients.rs."""

import hashlib
import os

from s3_common import client, error_code

s3 = client()
MIB = 1024 * 1024
data = os.urandom(20 * MIB + 4321)
s3.put_object(Bucket="pmem0", Key="pc/src", Body=data)

up = s3.create_multipart_upload(Bucket="pmem0", Key="pc/dst")["UploadId"]
ranges = [(0, 8 * MIB - 1), (8 * MIB, 16 * MIB - 1), (16 * MIB, len(data) - 1)]
parts = []
for n, (a, b) in enumerate(ranges, 1):
    r = s3.upload_part_copy(Bucket="pmem0", Key="pc/dst", UploadId=up, PartNumber=n,
                            CopySource={"Bucket": "pmem0", "Key": "pc/src"},
                            CopySourceRange="bytes=%d-%d" % (a, b))
    etag = r["CopyPartResult"]["ETag"]
    assert etag == '"%s"' % hashlib.md5(data[a:b + 1]).hexdigest(), (n, etag)
    parts.append({"PartNumber": n, "ETag": etag})
# An unaligned range (copied, not shared) as a last part of another upload.
up2 = s3.create_multipart_upload(Bucket="pmem0", Key="pc/odd")["UploadId"]
r = s3.upload_part_copy(Bucket="pmem0", Key="pc/odd", UploadId=up2, PartNumber=1,
                        CopySource={"Bucket": "pmem0", "Key": "pc/src"}, CopySourceRange="bytes=5-100004")
odd_etag = r["CopyPartResult"]["ETag"]
assert odd_etag == '"%s"' % hashlib.md5(data[5:100005]).hexdigest()
s3.complete_multipart_upload(Bucket="pmem0", Key="pc/odd", UploadId=up2,
                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": odd_etag}]})
assert s3.get_object(Bucket="pmem0", Key="pc/odd")["Body"].read() == data[5:100005]
# Errors.
assert error_code(lambda: s3.upload_part_copy(
    Bucket="pmem0", Key="pc/dst", UploadId=up, PartNumber=9,
    CopySource={"Bucket": "pmem0", "Key": "pc/missing"})) == ("NoSuchKey", 404)
assert error_code(lambda: s3.upload_part_copy(
    Bucket="pmem0", Key="pc/dst", UploadId=up, PartNumber=9,
    CopySource={"Bucket": "pmem0", "Key": "pc/src"}, CopySourceRange="bytes=0-999999999")) == ("InvalidArgument", 400)
done = s3.complete_multipart_upload(Bucket="pmem0", Key="pc/dst", UploadId=up, MultipartUpload={"Parts": parts})
md5s = b"".join(hashlib.md5(data[a:b + 1]).digest() for a, b in ranges)
assert done["ETag"] == '"%s-3"' % hashlib.md5(md5s).hexdigest(), done
assert s3.get_object(Bucket="pmem0", Key="pc/dst")["Body"].read() == data

# The managed copy (s3transfer): multipart with UploadPartCopy over 8 MiB.
s3.copy({"Bucket": "pmem0", "Key": "pc/src"}, "pmem0", "pc/managed")
head = s3.head_object(Bucket="pmem0", Key="pc/managed")
assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"'), head
assert s3.get_object(Bucket="pmem0", Key="pc/managed")["Body"].read() == data
print("boto3 part copy ok")
