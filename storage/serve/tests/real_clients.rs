//! The whole storage service on the host: `daxbox-serve` over daxfs
//! formatted pmem images, tested with real NBD clients (nbdinfo, nbdcopy,
//! nbdsh, qemu-img, qemu-io, fio) and a raw-socket client
//! (`daxbox_tests::nbd_client`, shared with the QEMU tests). A missing
//! client tool fails the test, never skips it. Every wait is bounded;
//! servers are killed on drop and images live in a temporary folder that
//! is removed afterwards.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{
    go_data, request_bytes, run_tool, run_tool_ok, test_image, uri, RawClient, CMD_DISC, CMD_FLUSH,
    CMD_READ, CMD_TRIM, CMD_WRITE, EINVAL, ENOSPC, EPERM, IHAVEOPT, OPT_EXPORT_NAME, OPT_GO,
    OPT_LIST, REP_ACK, REP_ERR_UNKNOWN, REP_INFO, REP_SERVER,
};

const QUICK: Duration = Duration::from_secs(60);
const BULK: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;
/// `NBD_OPT_INFO` (proto.md "Option types").
const OPT_INFO: u32 = 6;

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("daxbox-serve-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary folder");
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A running `daxbox-serve`, killed on drop.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    port: u16,
    /// Everything printed before `listening on`.
    boot: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_daxbox-serve"))
            .args(args)
            .args(["--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting daxbox-serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut server = Server {
            child,
            stdin,
            lines,
            port: 0,
            boot: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = server.next_line(deadline, "listening on");
            if let Some(address) = line.strip_prefix("listening on 127.0.0.1:") {
                server.port = address.parse().expect("a port after `listening on`");
                return server;
            }
            server.boot.push_str(&line);
            server.boot.push('\n');
        }
    }

    fn next_line(&mut self, deadline: Instant, waiting_for: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(error) => {
                let status = self.child.try_wait();
                panic!(
                    "daxbox-serve: no `{waiting_for}` ({error}); exit status {status:?}\nso far:\n{}",
                    self.boot
                )
            }
        }
    }

    /// Runs an admin command; returns its output and the status line.
    fn command(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("sending an admin command");
        stdin.flush().expect("sending an admin command");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut output = String::new();
        loop {
            let next = self.next_line(deadline, "ok");
            let done = next == "ok" || next.starts_with("error: ");
            output.push_str(&next);
            output.push('\n');
            if done {
                return output;
            }
        }
    }

    /// An admin command that must succeed.
    fn ok(&mut self, line: &str) -> String {
        let output = self.command(line);
        assert!(output.ends_with("ok\n"), "`{line}` failed:\n{output}");
        output
    }

    /// `poweroff`, then waits for the exit.
    fn poweroff(mut self) {
        let output = self.ok("poweroff");
        assert!(output.contains("daxbox-serve: powering off"), "{output}");
        self.wait_exit();
    }

    /// SIGKILL: nothing is unmounted.
    fn kill(mut self) {
        self.child.kill().expect("killing daxbox-serve");
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .child
            .try_wait()
            .expect("waiting for daxbox-serve")
            .is_none()
        {
            assert!(Instant::now() < deadline, "daxbox-serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn uri(&self, export: &str) -> String {
        uri(self.port, export)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nbdinfo --map` rows as (offset, length, type).
fn map_rows(map: &str) -> Vec<(u64, u64, u32)> {
    map.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |index: usize| -> u64 {
                fields
                    .get(index)
                    .and_then(|field| field.parse().ok())
                    .unwrap_or_else(|| panic!("unparsable nbdinfo --map line {line:?}"))
            };
            (number(0), number(1), number(2) as u32)
        })
        .collect()
}

/// Runs an nbdsh script that must print `nbdsh script ok` at its end.
fn nbdsh(script: &str, what: &str) {
    let output = run_tool("nbdsh", &["-c", script], QUICK);
    assert!(
        output.success() && output.stdout.contains("nbdsh script ok"),
        "{what}: nbdsh failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
}

/// Export names from `NBD_OPT_LIST` over a raw socket.
fn list_exports(port: u16) -> Vec<String> {
    let mut client = RawClient::start(port);
    client.option(OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (option, kind, data) = client.option_reply();
        assert_eq!(option, OPT_LIST);
        match kind {
            REP_SERVER => {
                let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                names.push(String::from_utf8(data[4..4 + len].to_vec()).expect("UTF-8 name"));
            }
            REP_ACK => return names,
            other => panic!("NBD_OPT_LIST: reply type {other:#x}"),
        }
    }
}

/// A pmem image in `dir`, formatted at boot with `--format if-blank`.
fn image_arg(dir: &TempDir, name: &str, size: &str) -> String {
    format!("{},size={size}", text(&dir.path(name)))
}

/// One server with two images: pmem0 (256 MiB, daxfs: disk, small, tiny,
/// ro) and pmem1 (16 MiB, raw), `ro` and nothing else read-only.
fn standard_server(dir: &TempDir) -> Server {
    let pmem0 = image_arg(dir, "pmem0.img", "256M");
    let pmem1 = image_arg(dir, "pmem1.img", "16M");
    let server = Server::start(&[
        "--image",
        &pmem0,
        "--image",
        &pmem1,
        "--format",
        "if-blank",
        "--export-raw",
        "pmem1",
        "--readonly",
        "ro",
        "--create",
        "disk=64M",
        "--create",
        "small=8M",
        "--create",
        "tiny=2M",
        "--create",
        "ro=1M",
    ]);
    let boot = &server.boot;
    assert!(
        boot.starts_with("storage: pmem0 formatted and mounted daxfs in "),
        "boot messages:\n{boot}"
    );
    assert!(
        boot.contains("storage: pmem1 exported raw (16 MiB)\n"),
        "boot messages:\n{boot}"
    );
    server
}

#[test]
fn handshake_variants_list_default_export_info_and_errors() {
    let dir = TempDir::new("handshake");
    let mut server = standard_server(&dir);
    let port = server.port;

    // NBD_OPT_LIST: files of pmem0 by name (sorted), then the raw device;
    // a mounted device is no export.
    assert_eq!(list_exports(port), ["disk", "ro", "small", "tiny", "pmem1"]);
    let list = run_tool_ok("nbdinfo", &["--list", &server.uri("")], QUICK);
    for export in ["disk", "ro", "small", "tiny", "pmem1"] {
        assert!(list.contains(&format!("export=\"{export}\"")), "{list}");
    }
    assert!(!list.contains("export=\"pmem0\""), "{list}");
    assert!(list.contains("base:allocation"), "{list}");

    // The default export ("") is the first one: disk.
    let json = run_tool_ok("nbdinfo", &["--json", &server.uri("")], QUICK);
    assert!(json.contains("\"export-size\": 67108864"), "{json}");
    let json = run_tool_ok("nbdinfo", &["--json", &server.uri("small")], QUICK);
    for needle in [
        "\"export-size\": 8388608",
        "\"can_fua\": true",
        "\"can_flush\": true",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_fast_zero\": true",
        "\"can_multi_conn\": true",
        "\"is_read_only\": false",
        "\"block_size_maximum\": 33554432",
        "\"structured\": true",
        "daxfs file on pmem0",
    ] {
        assert!(
            json.contains(needle),
            "nbdinfo --json small: no {needle} in\n{json}"
        );
    }
    let json = run_tool_ok("nbdinfo", &["--json", &server.uri("pmem1")], QUICK);
    assert!(json.contains("\"export-size\": 16777216"), "{json}");
    assert!(json.contains("raw pmem device pmem1"), "{json}");

    // NBD_OPT_INFO then NBD_OPT_GO on one connection.
    let mut client = RawClient::start(port);
    client.option(OPT_INFO, &go_data("tiny"));
    let mut size = None;
    loop {
        let (option, kind, data) = client.option_reply();
        assert_eq!(option, OPT_INFO);
        match kind {
            REP_INFO if data[..2] == [0, 0] => {
                size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")))
            }
            REP_INFO => {}
            REP_ACK => break,
            other => panic!("NBD_OPT_INFO tiny: reply type {other:#x}"),
        }
    }
    assert_eq!(size, Some(2 * MIB), "NBD_OPT_INFO size");
    let (size, flags) = client.go("ro");
    assert_eq!(size, MIB);
    assert_eq!(flags & 2, 2, "ro advertises NBD_FLAG_READ_ONLY");

    // NBD_OPT_EXPORT_NAME: size and flags, then transmission.
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, b"tiny");
    assert_eq!(client.u64(), 2 * MIB);
    assert_eq!(client.u16() & 1, 1, "NBD_FLAG_HAS_FLAGS");
    client.request(CMD_READ, 5, 0, 8, &[]);
    assert_eq!(client.simple(), (0, 5));
    assert_eq!(client.read_bytes(8), vec![0u8; 8]);

    // Unknown exports: NBD_REP_ERR_UNKNOWN for GO, a closed connection for
    // EXPORT_NAME, a failing nbdinfo; so is a device name that is mounted,
    // and a pmemN: prefix of a device that holds no filesystem.
    let mut client = RawClient::start(port);
    for name in ["nonexistent", "pmem0", "pmem1:disk", "pmem7:disk"] {
        client.option(OPT_GO, &go_data(name));
        assert_eq!(client.option_reply().1, REP_ERR_UNKNOWN, "GO {name}");
    }
    assert_eq!(client.go("pmem0:disk").0, 64 * MIB, "pmem0:disk names disk");
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, b"nonexistent");
    client.expect_closed(Duration::from_secs(10), "EXPORT_NAME of an unknown export");
    let output = run_tool("nbdinfo", &[&server.uri("nonexistent")], QUICK);
    assert!(!output.success(), "nbdinfo of an unknown export must fail");

    // The admin `nbd` command: exports with the read-only mark.
    let status = server.ok("nbd");
    assert!(
        status.starts_with(&format!(
            "NBD on port {port}: 5 export(s)\n  export disk\n  export ro (read-only)\n  \
             export small\n  export tiny\n  export pmem1\n"
        )),
        "{status}"
    );
}

#[test]
fn file_and_raw_exports_read_write_flush_trim_zero_block_status() {
    let dir = TempDir::new("io");
    let mut server = standard_server(&dir);
    let port = server.port;

    // libnbd in strict mode, with and without structured replies, on a
    // daxfs file and on the raw device.
    let script = format!(
        r#"
import nbd, errno
for export, raw in (("small", False), ("pmem1", True)):
    for structured in (True, False):
        h = nbd.NBD()
        h.set_strict_mode(nbd.STRICT_COMMANDS | nbd.STRICT_FLAGS | nbd.STRICT_BOUNDS | nbd.STRICT_ZERO_SIZE)
        h.set_request_structured_replies(structured)
        if structured:
            h.add_meta_context("base:allocation")
        h.connect_uri("nbd://127.0.0.1:{port}/" + export)
        assert h.get_structured_replies_negotiated() == structured
        size = h.get_size()
        h.pwrite(b"\xaa" * 65536, 0, nbd.CMD_FLAG_FUA)
        h.pwrite(b"\xbb" * 65536, 4 << 20)
        h.flush()
        assert h.pread(65536, 0) == b"\xaa" * 65536
        assert h.pread(65536, 4 << 20) == b"\xbb" * 65536
        h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
        assert h.pread(8192, 0) == b"\xaa" * 4096 + bytes(4096)
        h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
        assert h.pread(65536, 0) == bytes(65536)
        h.cache(65536, 0)
        if structured:
            seen = []
            h.block_status(size, 0, lambda ctx, off, ents, err: seen.append(list(ents)))
            if raw:
                assert seen == [[size, 0]], seen
            else:
                # 8 MiB files are allocated in 2 MiB chunks: the chunks
                # written at 0 and 4 MiB are data, except the 64 KiB just
                # zeroed at 0, which is a hole again.
                assert seen == [[65536, 3, (2 << 20) - 65536, 0, 2 << 20, 3, 2 << 20, 0, size - (6 << 20), 3]], seen
        h.trim(2 << 20, 4 << 20)
        if structured and not raw:
            seen = []
            h.block_status(size, 0, lambda ctx, off, ents, err: seen.append(list(ents)))
            assert seen == [[65536, 3, (2 << 20) - 65536, 0, size - (2 << 20), 3]], seen
        if not raw:
            assert h.pread(65536, 4 << 20) == bytes(65536), "trim punched a hole"
        h.set_strict_mode(0)
        for call, code in ((lambda: h.pread(4096, size - 100), errno.EINVAL),
                           (lambda: h.pwrite(b"x" * 4096, size - 100), errno.ENOSPC),
                           (lambda: h.trim(8192, size - 4096), errno.EINVAL),
                           (lambda: h.pread(64 << 20, 0), errno.EINVAL)):
            try:
                call()
                raise SystemExit("expected an error")
            except nbd.Error as e:
                assert e.errno == errno.errorcode[code], (export, e.errno, code)
        h.pwrite(b"end-" + export.encode(), 100, nbd.CMD_FLAG_FUA)
        h.shutdown()
print("nbdsh script ok")
"#
    );
    nbdsh(&script, "strict libnbd on a file and a raw export");
    // What the clients wrote is in the storage the server shows.
    let cat = server.ok("cat small 100 9");
    assert!(cat.starts_with("end-small\n"), "{cat}");
    let raw_image = std::fs::read(dir.path("pmem1.img")).expect("reading the raw image");
    assert_eq!(
        &raw_image[100..109],
        b"end-pmem1",
        "raw export writes land in the image"
    );

    // Block status through nbdinfo --map on a 2 MiB file (4 KiB blocks).
    let tiny = server.uri("tiny");
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &tiny,
            "-c",
            "write -P 0x5a 64k 64k",
            "-c",
            "write -P 0x5d 1M 4k",
        ],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &tiny], QUICK);
    let (k, m) = (1024, MIB);
    assert_eq!(
        map_rows(&map),
        [
            (0, 64 * k, 3),
            (64 * k, 64 * k, 0),
            (128 * k, m - 128 * k, 3),
            (m, 4 * k, 0),
            (m + 4 * k, m - 4 * k, 3)
        ],
        "nbdinfo --map tiny:\n{map}"
    );
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &tiny,
            "-c",
            "read -P 0x5a 64k 64k",
            "-c",
            "discard 64k 64k",
        ],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &tiny], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, m, 3), (m, 4 * k, 0), (m + 4 * k, m - 4 * k, 3)],
        "{map}"
    );
    let map = run_tool_ok("nbdinfo", &["--map", &server.uri("pmem1")], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, 16 * MIB, 0)],
        "raw export maps as all data:\n{map}"
    );

    // nbdcopy in and out of a file and the raw device; qemu-img compares.
    for (export, len, seed) in [("disk", 64usize << 20, 7u64), ("pmem1", 16 << 20, 8)] {
        let source = dir.path(&format!("{export}-source.img"));
        let copy = dir.path(&format!("{export}-copy.img"));
        let image = test_image(len, seed);
        std::fs::write(&source, &image).expect("writing a source image");
        run_tool_ok("nbdcopy", &[text(&source), &server.uri(export)], BULK);
        run_tool_ok("nbdcopy", &[&server.uri(export), text(&copy)], BULK);
        let back = std::fs::read(&copy).expect("reading the copy");
        assert!(back == image, "{export}: nbdcopy round trip differs");
        let out = run_tool_ok(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                text(&source),
                &server.uri(export),
            ],
            BULK,
        );
        assert!(out.contains("Images are identical"), "{export}: {out}");
    }

    // fio: random writes verified with crc32c, 4 jobs at queue depth 16.
    let output = run_tool(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", server.uri("disk")),
            "--rw=randwrite",
            "--bs=64k",
            "--size=16M",
            "--offset_increment=16M",
            "--numjobs=4",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--output-format=terse",
        ],
        BULK,
    );
    assert!(
        output.success(),
        "fio failed:\n{}\n{}",
        output.stdout,
        output.stderr
    );
    let jobs: Vec<&str> = output.stdout.lines().filter(|l| l.contains(';')).collect();
    assert_eq!(jobs.len(), 4, "{}", output.stdout);
    for job in jobs {
        assert_eq!(job.split(';').nth(4), Some("0"), "fio job error: {job}");
    }
    let fsck = server.ok("fsck");
    assert!(fsck.starts_with("pmem0: fsck: clean ("), "{fsck}");
}

#[test]
fn read_only_exports_refuse_every_write() {
    let dir = TempDir::new("readonly");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let pmem1 = image_arg(&dir, "pmem1.img", "8M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--image",
        &pmem1,
        "--format",
        "if-blank",
        "--export-raw",
        "pmem1",
        "--readonly",
        "ro",
        "--readonly",
        "pmem1",
        "--create",
        "ro=1M",
        "--create",
        "rw=1M",
    ]);
    server.ok("write ro 0 readonly-content");
    let port = server.port;
    for export in ["ro", "pmem1"] {
        nbdsh(
            &format!(
                r#"
import nbd
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:{port}/{export}")
assert h.is_read_only()
before = h.pread(16, 0)
h.set_strict_mode(0)
for name, call in (("write", lambda: h.pwrite(b"x" * 512, 0)),
                   ("trim", lambda: h.trim(4096, 0)),
                   ("zero", lambda: h.zero(4096, 0))):
    try:
        call()
        raise SystemExit(name + " on a read-only export succeeded")
    except nbd.Error as e:
        assert e.errno == "EPERM", (name, e.errno, e.string)
assert h.pread(16, 0) == before
h.shutdown()
print("nbdsh script ok")
"#
            ),
            export,
        );
        for can in ["write", "trim", "zero", "fua"] {
            let output = run_tool("nbdinfo", &["--can", can, &server.uri(export)], QUICK);
            assert_eq!(output.code, Some(2), "{export} must not claim --can {can}");
        }
    }
    let mut client = RawClient::start(port);
    client.go("ro");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (EPERM, 1), "write to a read-only export");
    client.request(CMD_TRIM, 2, 0, 4096, &[]);
    assert_eq!(client.simple(), (EPERM, 2), "trim on a read-only export");
    client.request(CMD_READ, 3, 0, 16, &[]);
    assert_eq!(client.simple(), (0, 3));
    assert_eq!(client.read_bytes(16), b"readonly-content");
    let cat = server.ok("cat ro 0 16");
    assert!(cat.starts_with("readonly-content\n"), "{cat}");
    // The writable neighbour takes writes.
    let mut client = RawClient::start(port);
    client.go("rw");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (0, 1));
    let status = server.ok("nbd");
    assert!(status.contains("  export ro (read-only)\n"), "{status}");
    assert!(status.contains("  export rw\n"), "{status}");
    assert!(status.contains("  export pmem1 (read-only)\n"), "{status}");
}

#[test]
fn transmission_errors_and_counters() {
    let dir = TempDir::new("errors");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--create",
        "disk=16M",
        "--handshake-timeout-ms",
        "1500",
    ]);
    let port = server.port;
    let mut client = RawClient::start(port);
    let (size, _) = client.go("disk");
    client.request(CMD_READ, 1, size - 512, 4096, &[]);
    assert_eq!(client.simple(), (EINVAL, 1), "read past the end");
    client.request(CMD_READ, 2, u64::MAX - 1023, 4096, &[]);
    assert_eq!(client.simple(), (EINVAL, 2), "overflowing offset");
    client.request(CMD_WRITE, 3, size - 100, 4096, &[0x33; 4096]);
    assert_eq!(client.simple(), (ENOSPC, 3), "write past the end");
    client.request(CMD_TRIM, 4, size - 4096, 8192, &[]);
    assert_eq!(client.simple(), (EINVAL, 4), "trim past the end");
    client.request(77, 5, 0, 512, &[]);
    assert_eq!(client.simple(), (EINVAL, 5), "unknown command");
    client.request(CMD_READ, 6, size - 100, 100, &[]);
    assert_eq!(client.simple(), (0, 6), "in sync after refused writes");
    assert_eq!(client.read_bytes(100), vec![0u8; 100]);
    let mut bad = 0xdead_beefu32.to_be_bytes().to_vec();
    bad.extend_from_slice(&[0; 24]);
    client.send(&bad);
    client.expect_closed(Duration::from_secs(10), "bad request magic");

    // A handshake that never finishes is closed at the deadline.
    let mut idle = RawClient::connect(port);
    idle.greeting();
    let started = Instant::now();
    idle.expect_closed(Duration::from_secs(10), "idle handshake");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed too early"
    );
    let mut short = RawClient::start(port);
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&OPT_GO.to_be_bytes());
    header.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    header.extend_from_slice(b"short");
    short.send(&header);
    short.expect_closed(Duration::from_secs(10), "option length over what was sent");

    // Counters of a connected client in the admin `nbd` command.
    let mut client = RawClient::start(port);
    client.go("disk");
    client.request(CMD_WRITE, 1, 0, 4096, &[0x5a; 4096]);
    assert_eq!(client.simple(), (0, 1));
    client.request(CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(client.simple(), (0, 2));
    client.request(CMD_READ, 3, 0, 4096, &[]);
    assert_eq!(client.simple(), (0, 3));
    assert_eq!(client.read_bytes(4096), vec![0x5a; 4096]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = server.ok("nbd");
        if status.contains("\n1 connection(s)\n") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Bytes in: flags 4 + GO 26 + WRITE 28+4096 + FLUSH 28 + READ 28.
    assert!(
        status.contains(" disk: 3 requests (0 errors), 4210 bytes in, ")
            && status.contains("read 4096 written 4096\n"),
        "{status}"
    );
    client.request(CMD_DISC, 4, 0, 0, &[]);
    client.expect_closed(Duration::from_secs(10), "NBD_CMD_DISC");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.ok("nbd");
        if status.contains("\n0 connection(s)\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never left `nbd`:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_images_with_the_same_file_name() {
    let dir = TempDir::new("same-name");
    let pmem0 = image_arg(&dir, "pmem0.img", "32M");
    let pmem1 = image_arg(&dir, "pmem1.img", "32M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--image",
        &pmem1,
        "--format",
        "if-blank",
        "--create",
        "same=1M",
        "--create",
        "pmem1:same=2M",
        "--create",
        "pmem1:other=1M",
    ]);
    assert_eq!(list_exports(server.port), ["same", "other", "pmem1:same"]);
    let ls = server.ok("ls");
    assert!(
        ls.starts_with("       1048576  pmem0:same\n       1048576  pmem1:other\n       2097152  pmem1:same\n3 file(s)\n"),
        "{ls}"
    );
    for (export, size, pattern) in [
        ("same", MIB, "0x11"),
        ("pmem1:same", 2 * MIB, "0x22"),
        ("pmem0:same", MIB, "0x11"),
    ] {
        let json = run_tool_ok("nbdinfo", &["--json", &server.uri(export)], QUICK);
        assert!(
            json.contains(&format!("\"export-size\": {size}")),
            "{export}: {json}"
        );
        if export != "pmem0:same" {
            run_tool_ok(
                "qemu-io",
                &[
                    "-f",
                    "raw",
                    &server.uri(export),
                    "-c",
                    &format!("write -P {pattern} 0 64k"),
                ],
                QUICK,
            );
        }
        run_tool_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                &server.uri(export),
                "-c",
                &format!("read -P {pattern} 0 64k"),
            ],
            QUICK,
        );
    }
    let cat0 = server.ok("cat pmem0:same 0 2");
    let cat1 = server.ok("cat pmem1:same 0 2");
    assert_eq!((cat0.as_str(), cat1.as_str()), ("..\nok\n", "\"\"\nok\n"));
    let error = server.command("cat pmem5:same");
    assert_eq!(error, "error: no such device: pmem5\n");
}

#[test]
fn data_survives_kill_and_clean_restart() {
    let dir = TempDir::new("restart");
    let pmem0 = image_arg(&dir, "pmem0.img", "128M");
    let pmem1 = image_arg(&dir, "pmem1.img", "8M");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut args = vec![
            "--image".to_string(),
            pmem0.clone(),
            "--image".into(),
            pmem1.clone(),
            "--format".into(),
            "if-blank".into(),
            "--export-raw".into(),
            "pmem1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let start = |args: &[String]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&refs)
    };
    let mut server = start(&args(&["--create", "kept=32M"]));
    let image = test_image(32 << 20, 3);
    let raw = test_image(8 << 20, 4);
    let source = dir.path("source.img");
    let raw_source = dir.path("raw-source.img");
    std::fs::write(&source, &image).expect("writing the source");
    std::fs::write(&raw_source, &raw).expect("writing the raw source");
    run_tool_ok("nbdcopy", &[text(&source), &server.uri("kept")], BULK);
    run_tool_ok("nbdcopy", &[text(&raw_source), &server.uri("pmem1")], BULK);
    server.ok("write kept 0 written-before-the-kill");
    server.kill();

    // Killed: no unmount; the next start recovers and finds everything.
    let mut server = start(&args(&[]));
    assert!(
        server.boot.starts_with(
            "storage: pmem0 was not unmounted cleanly; mounting with recovery\n\
             storage: pmem0 mounted daxfs in "
        ),
        "{}",
        server.boot
    );
    assert!(server.boot.contains(" 1 files, "), "{}", server.boot);
    let copy = dir.path("copy.img");
    run_tool_ok("nbdcopy", &[&server.uri("kept"), text(&copy)], BULK);
    let back = std::fs::read(&copy).expect("reading the copy");
    assert_eq!(&back[..23], b"written-before-the-kill");
    assert!(back[23..] == image[23..], "file data after a kill");
    run_tool_ok("nbdcopy", &[&server.uri("pmem1"), text(&copy)], BULK);
    assert!(
        std::fs::read(&copy).expect("reading the copy") == raw,
        "raw data after a kill"
    );
    let fsck = server.ok("fsck");
    assert!(fsck.starts_with("pmem0: fsck: clean ("), "{fsck}");
    server.poweroff();

    // Clean stop: mounted without recovery.
    let mut server = start(&args(&[]));
    assert!(
        server.boot.starts_with("storage: pmem0 mounted daxfs in "),
        "{}",
        server.boot
    );
    let cat = server.ok("cat kept 0 23");
    assert_eq!(cat, "written-before-the-kill\nok\n");
}

#[test]
fn blank_image_with_format_never_is_left_alone_until_mkfs() {
    let dir = TempDir::new("format-never");
    let pmem0 = image_arg(&dir, "pmem0.img", "32M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "never",
        "--export-raw",
        "pmem4",
    ]);
    assert_eq!(
        server.boot,
        "storage: export_raw=pmem4: no such device (ignored)\n\
         storage: pmem0 is blank; not formatting (boot config format=if-blank, or `mkfs pmem0`)\n"
    );
    assert!(list_exports(server.port).is_empty());
    assert_eq!(
        server.command("create x 1M"),
        "error: no filesystem is mounted\n"
    );
    assert_eq!(
        server.command("mkfs pmem0"),
        "mkfs: this erases everything on pmem0 (32 MiB). Run `mkfs pmem0 --yes` to confirm.\nok\n"
    );
    let output = server.ok("mkfs pmem0 --yes");
    assert!(
        output.starts_with("storage: pmem0 formatted and mounted daxfs in "),
        "{output}"
    );
    server.ok("create x 1M");
    assert_eq!(list_exports(server.port), ["x"]);
    let json = run_tool_ok("nbdinfo", &["--json", &server.uri("x")], QUICK);
    assert!(json.contains("\"export-size\": 1048576"), "{json}");
}

#[test]
fn pipelined_clients_while_one_never_reads() {
    let dir = TempDir::new("pipelines");
    let pmem0 = image_arg(&dir, "pmem0.img", "128M");
    let server = Server::start(&[
        "--image", &pmem0, "--format", "if-blank", "--create", "disk=64M",
    ]);
    let port = server.port;
    // A client that asks for 32 MiB and never reads the reply: the loop
    // must keep serving everyone else.
    let mut stalled = RawClient::start(port);
    stalled.go("disk");
    stalled.request(CMD_READ, 1, 0, 32 << 20, &[]);

    let handles: Vec<_> = (0..16u64)
        .map(|index| {
            std::thread::spawn(move || {
                let mut client = RawClient::start(port);
                client.go("disk");
                let base = index * (1 << 20);
                let block = move |i: u64| vec![(index as u8) ^ (i as u8).wrapping_mul(31); 4096];
                let mut reader = client.try_clone();
                let collector = std::thread::spawn(move || {
                    let mut cookies = Vec::new();
                    for _ in 0..64 {
                        let (error, cookie) = reader.simple();
                        assert_eq!(error, 0, "client {index}: write");
                        cookies.push(cookie);
                    }
                    cookies.sort();
                    assert_eq!(cookies, (0..64).collect::<Vec<u64>>());
                    for i in 0..64u64 {
                        assert_eq!(reader.simple(), (0, 1000 + i), "client {index}: read order");
                        assert_eq!(
                            reader.read_bytes(4096),
                            block(i),
                            "client {index}: read {i}"
                        );
                    }
                });
                let mut batch = Vec::new();
                for i in 0..64u64 {
                    batch.extend_from_slice(&request_bytes(CMD_WRITE, 0, i, base + i * 4096, 4096));
                    batch.extend_from_slice(&block(i));
                }
                for i in 0..64u64 {
                    batch.extend_from_slice(&request_bytes(
                        CMD_READ,
                        0,
                        1000 + i,
                        base + i * 4096,
                        4096,
                    ));
                }
                client.send(&batch);
                collector.join().expect("reply collector");
                client.request(CMD_DISC, 0, 0, 0, &[]);
                client.expect_closed(Duration::from_secs(10), "NBD_CMD_DISC");
            })
        })
        .collect();
    for (index, handle) in handles.into_iter().enumerate() {
        if handle.join().is_err() {
            panic!("pipelined client {index} failed (see its panic above)");
        }
    }
    // The stalled client still gets its whole reply when it reads.
    assert_eq!(stalled.simple(), (0, 1), "stalled client: 32 MiB read");
    assert_eq!(stalled.read_bytes(32 << 20).len(), 32 << 20);
}
