"""boto3 multipart uploads against daxbox-serve's S3 object API.
Usage: boto3_multipart.py PORT ACCESS SECRET WORKDIR. Exits non-zero (with
the failing check) on any mismatch. Run by storage/serve/tests/s3_clients.rs."""

import hashlib
import os

from s3_common import client, error_code, workdir


def s3_etag(data, part):
    md5s = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    return '"%s-%d"' % (hashlib.md5(md5s).hexdigest(), (len(data) + part - 1) // part)


# upload_file with the default TransferConfig: 40 MiB is over the 8 MiB
# threshold, so it is a multipart upload of 8 MiB parts, sent in parallel.
for setting in ["when_supported", "when_required"]:
    s3 = client(request_checksum_calculation=setting)
    data = os.urandom(40 * 1024 * 1024 + 4321)
    src = os.path.join(workdir, "mp-src.bin")
    with open(src, "wb") as f:
        f.write(data)
    s3.upload_file(src, "pmem0", "mp/forty.bin")
    head = s3.head_object(Bucket="pmem0", Key="mp/forty.bin")
    assert head["ContentLength"] == len(data), head
    assert head["ETag"] == s3_etag(data, 8 * 1024 * 1024), (head["ETag"], s3_etag(data, 8 << 20))
    back = os.path.join(workdir, "mp-back.bin")
    s3.download_file("pmem0", "mp/forty.bin", back)
    with open(back, "rb") as f:
        assert f.read() == data, "byte-identical (" + setting + ")"

s3 = client()
# The calls one by one, and their errors.
up = s3.create_multipart_upload(Bucket="pmem0", Key="mp/manual")["UploadId"]
p1 = os.urandom(5 * 1024 * 1024)
p2 = b"the last part may be small"
e1 = s3.upload_part(Bucket="pmem0", Key="mp/manual", UploadId=up, PartNumber=1, Body=p1)["ETag"]
e2 = s3.upload_part(Bucket="pmem0", Key="mp/manual", UploadId=up, PartNumber=2, Body=p2)["ETag"]
assert e1 == '"%s"' % hashlib.md5(p1).hexdigest()
parts = s3.list_parts(Bucket="pmem0", Key="mp/manual", UploadId=up)["Parts"]
assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts] == [(1, len(p1), e1), (2, len(p2), e2)], parts
uploads = s3.list_multipart_uploads(Bucket="pmem0")["Uploads"]
assert [(u["Key"], u["UploadId"]) for u in uploads] == [("mp/manual", up)], uploads
listed = [o["Key"] for o in s3.list_objects_v2(Bucket="pmem0", Prefix="mp/").get("Contents", [])]
assert listed == ["mp/forty.bin"], listed
complete = lambda parts: s3.complete_multipart_upload(
    Bucket="pmem0", Key="mp/manual", UploadId=up, MultipartUpload={"Parts": parts})
assert error_code(lambda: complete([{"PartNumber": 1, "ETag": e2}])) == ("InvalidPart", 400)
assert error_code(lambda: complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}])) == ("InvalidPartOrder", 400)
assert error_code(lambda: complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e2}])) == ("InvalidPart", 400)
done = complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}])
assert done["ETag"].endswith('-2"'), done
assert s3.get_object(Bucket="pmem0", Key="mp/manual")["Body"].read() == p1 + p2
assert error_code(lambda: s3.list_parts(Bucket="pmem0", Key="mp/manual", UploadId=up)) == ("NoSuchUpload", 404)

# Too small a part before the last; abort.
up = s3.create_multipart_upload(Bucket="pmem0", Key="mp/small")["UploadId"]
e1 = s3.upload_part(Bucket="pmem0", Key="mp/small", UploadId=up, PartNumber=1, Body=b"a")["ETag"]
e2 = s3.upload_part(Bucket="pmem0", Key="mp/small", UploadId=up, PartNumber=2, Body=b"b")["ETag"]
assert error_code(lambda: s3.complete_multipart_upload(
    Bucket="pmem0", Key="mp/small", UploadId=up,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})) == ("EntityTooSmall", 400)
s3.abort_multipart_upload(Bucket="pmem0", Key="mp/small", UploadId=up)
assert "Uploads" not in s3.list_multipart_uploads(Bucket="pmem0")
assert error_code(lambda: s3.abort_multipart_upload(Bucket="pmem0", Key="mp/small", UploadId=up)) == ("NoSuchUpload", 404)
assert error_code(lambda: s3.head_object(Bucket="pmem0", Key="mp/small"))[1] == 404
print("boto3 multipart ok")
