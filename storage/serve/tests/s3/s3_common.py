"""What the boto3 test scripts share: their command line (PORT ACCESS SECRET
WORKDIR), a path-style client of daxbox-serve's S3 API, and the S3 error
code of a call that must fail."""

import sys

import boto3
import botocore
from botocore.config import Config

port, access, secret, workdir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
endpoint = f"http://127.0.0.1:{port}"


def client(key=access, secret_key=secret, **extra):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **extra),
    )


def error_code(call):
    """(S3 error code, HTTP status) of a call that must fail."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("no error")
