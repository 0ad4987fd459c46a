"""Benchmark (prints figures): CompleteMultipartUpload of a 256 MiB
upload on daxbox-serve, with 8 MiB parts (2 MiB-aligned: joined by moving
extents) and with 7 MiB parts (not aligned: joined by copying bytes).
Usage: bench_complete.py PORT ACCESS SECRET."""

import os
import sys
import time

import boto3
from botocore.config import Config

port, access, secret = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client(
    "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=access,
    aws_secret_access_key=secret, region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, read_timeout=600))
total = 256 * 1024 * 1024
data = os.urandom(total)
for part_mib, how in [(8, "moving extents"), (7, "copying bytes")]:
    key = f"bench-{part_mib}"
    up = s3.create_multipart_upload(Bucket="pmem0", Key=key)["UploadId"]
    size = part_mib << 20
    parts = []
    for n, at in enumerate(range(0, total, size), start=1):
        e = s3.upload_part(Bucket="pmem0", Key=key, UploadId=up, PartNumber=n, Body=data[at:at + size])["ETag"]
        parts.append({"PartNumber": n, "ETag": e})
    start = time.monotonic()
    s3.complete_multipart_upload(Bucket="pmem0", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    took = time.monotonic() - start
    print(f"complete 256 MiB in {len(parts)} parts of {part_mib} MiB ({how}): {took * 1000:.1f} ms")
    s3.delete_object(Bucket="pmem0", Key=key)
