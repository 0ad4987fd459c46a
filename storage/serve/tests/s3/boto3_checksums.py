"""boto3 and the checksums the object API keeps: a PUT with a CRC32 (or
CRC32C) is read back with ChecksumMode='ENABLED' and botocore checks the
body against the returned checksum; a multipart upload gets S3's composite
form (`BASE64-N`), which botocore does not check (it skips checksums with a
`-`). Usage: boto3_checksums.py PORT ACCESS SECRET WORKDIR. Run by
storage/serve/tests/s3_clients.rs."""

import base64
import os
import zlib

from botocore.httpchecksum import StreamingChecksumBody

from s3_common import client, workdir

for setting in ["when_supported", "when_required"]:
    s3 = client(request_checksum_calculation=setting, response_checksum_validation="when_supported")
    data = os.urandom(3 * 1024 * 1024 + 17)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    s3.put_object(Bucket="pmem0", Key="ck/one", Body=data, ChecksumAlgorithm="CRC32")
    got = s3.get_object(Bucket="pmem0", Key="ck/one", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == crc, (got.get("ChecksumCRC32"), crc)
    # botocore wrapped the body in its checking reader: the check ran.
    assert isinstance(got["Body"], StreamingChecksumBody), type(got["Body"])
    assert got["Body"].read() == data
    head = s3.head_object(Bucket="pmem0", Key="ck/one", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == crc, head
    assert head.get("ChecksumType") == "FULL_OBJECT", head
    # Without the mode, no checksum.
    assert "ChecksumCRC32" not in s3.head_object(Bucket="pmem0", Key="ck/one")

    # A multipart upload (upload_file over the 8 MiB threshold): with CRC32
    # parts (when_supported) the object has the composite checksum.
    src = os.path.join(workdir, "ck-src.bin")
    big = os.urandom(20 * 1024 * 1024 + 5)
    with open(src, "wb") as f:
        f.write(big)
    s3.upload_file(src, "pmem0", "ck/multi")
    head = s3.head_object(Bucket="pmem0", Key="ck/multi", ChecksumMode="ENABLED")
    if setting == "when_supported":
        parts = [big[i:i + (8 << 20)] for i in range(0, len(big), 8 << 20)]
        joined = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
        composite = "%s-%d" % (base64.b64encode(zlib.crc32(joined).to_bytes(4, "big")).decode(), len(parts))
        assert head.get("ChecksumCRC32") == composite, (head.get("ChecksumCRC32"), composite)
        assert head.get("ChecksumType") == "COMPOSITE", head
    got = s3.get_object(Bucket="pmem0", Key="ck/multi", ChecksumMode="ENABLED")
    assert got["Body"].read() == big

print("boto3 checksums ok")
