"""A GET read slowly while boto3 replaces the object: the GET must still
deliver the old object whole (its MD5 is the old ETag), and the new object
is what later reads see. The GET is a presigned URL read over a plain
socket, a little at a time. Usage: slow_get_replace.py PORT ACCESS SECRET
WORKDIR. Run by storage/serve/tests/s3_clients.rs."""

import hashlib
import os
import socket
import time

from s3_common import client, port

s3 = client()
old = os.urandom(24 * 1024 * 1024)
new = os.urandom(24 * 1024 * 1024)
old_etag = s3.put_object(Bucket="pmem0", Key="slow/obj", Body=old)["ETag"]
assert old_etag == '"%s"' % hashlib.md5(old).hexdigest(), old_etag

url = client(signature_version="s3v4").generate_presigned_url("get_object", Params={"Bucket": "pmem0", "Key": "slow/obj"}, ExpiresIn=600)
target = url.split(f"127.0.0.1:{port}", 1)[1]
sock = socket.create_connection(("127.0.0.1", int(port)))
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())

# Read the head and a little of the body, slowly.
got = b""
while b"\r\n\r\n" not in got:
    got += sock.recv(4096)
head, body = got.split(b"\r\n\r\n", 1)
head = head.decode()
assert head.startswith("HTTP/1.1 200"), head
fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
fields = {k.lower(): v for k, v in fields.items()}
length = int(fields["content-length"])
assert fields["etag"] == old_etag, fields
for _ in range(10):
    body += sock.recv(16384)
    time.sleep(0.05)
assert len(body) < length // 4, len(body)

# Meanwhile the object is replaced (another connection).
new_etag = s3.put_object(Bucket="pmem0", Key="slow/obj", Body=new)["ETag"]
assert new_etag == '"%s"' % hashlib.md5(new).hexdigest()
assert s3.head_object(Bucket="pmem0", Key="slow/obj")["ETag"] == new_etag

# The rest of the slow GET: the old object, whole.
while len(body) < length:
    chunk = sock.recv(1 << 20)
    assert chunk, "the GET was cut short after %d of %d bytes" % (len(body), length)
    body += chunk
sock.close()
assert len(body) == length == len(old)
assert '"%s"' % hashlib.md5(body).hexdigest() == old_etag, "the old object's bytes"
assert s3.get_object(Bucket="pmem0", Key="slow/obj")["Body"].read() == new
print("slow get ok")
