//! The whole storage service on the host: `daxbox-serve` over daxfs
//! formatted pmem images, tested with real NBD clients (nbdinfo, nbdcopy,
//! nbdsh, qemu-img, qemu-io, fio) and a raw-socket client
//! (`daxbox_tests::nbd_client`, shared with the QEMU tests). This is where
//! NBD behaviour is tested end to end: every option and command, the
//! negative cases, daxfs block status, pipelining, restarts. The QEMU test
//! (`tests/tests/system/nbd.rs`) keeps what only a real boot shows. A missing
//! client tool fails the test, never skips it. Every wait is bounded;
//! servers are killed on drop and images live in a temporary folder that
//! is removed afterwards.

mod common;
use common::{text, TempDir};

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use daxbox_tests::certs;
use daxbox_tests::nbd_client::{
    deep_pipeline, fio, fresh_client_works, go_data, idle_pass_gathers_a_rewritten_chunk, map_rows,
    nbdsh, pipelined_writes_then_reads, request_bytes, run_tool, run_tool_ok, slow_reader,
    test_image, uri, RawClient, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, EINVAL, ENOSPC,
    EPERM, IHAVEOPT, OPT_EXPORT_NAME, OPT_GO, OPT_LIST, OPT_STRUCTURED_REPLY, REP_ACK,
    REP_ERR_INVALID, REP_ERR_POLICY, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO,
    REP_SERVER,
};

const QUICK: Duration = Duration::from_secs(60);
const BULK: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;
/// `NBD_OPT_INFO` (proto.md "Option types").
const OPT_INFO: u32 = 6;

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

    /// The server process is still running.
    fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("waiting for daxbox-serve");
        assert!(status.is_none(), "daxbox-serve exited: {status:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    // fio: random writes verified with crc32c, one connection at queue
    // depth 32, then 4 jobs at queue depth 16.
    let disk = server.uri("disk");
    fio(
        &disk,
        "one",
        &["--bs=4k", "--size=16M", "--iodepth=32"],
        1,
        BULK,
        "fio 1 connection",
    );
    fio(
        &disk,
        "four",
        &[
            "--bs=64k",
            "--size=16M",
            "--offset_increment=16M",
            "--numjobs=4",
            "--iodepth=16",
        ],
        4,
        BULK,
        "fio 4 connections",
    );
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

    // Read-only follows the file: renamed away, `ro` stays read-only for
    // new sessions under its new name; a writable file renamed onto the
    // rule's name is read-only at once, also for the session that opened
    // it writable (and nbdinfo then says so).
    server.ok("mv ro kept");
    let output = run_tool(
        "nbdinfo",
        &["--is", "read-only", &server.uri("kept")],
        QUICK,
    );
    assert_eq!(output.code, Some(0), "the renamed file stays read-only");
    let mut kept = RawClient::start(port);
    kept.go("kept");
    kept.request(CMD_WRITE, 1, 0, 512, &[2; 512]);
    assert_eq!(
        kept.simple(),
        (EPERM, 1),
        "write to the renamed read-only file"
    );
    let mut writer = RawClient::start(port);
    writer.go("rw");
    writer.request(CMD_WRITE, 1, 0, 512, &[3; 512]);
    assert_eq!(writer.simple(), (0, 1), "rw is writable");
    server.ok("mv rw ro");
    writer.request(CMD_WRITE, 2, 0, 512, &[4; 512]);
    assert_eq!(
        writer.simple(),
        (EPERM, 2),
        "renamed onto ro: read-only at once"
    );
    writer.request(CMD_READ, 3, 0, 4, &[]);
    assert_eq!(writer.simple(), (0, 3));
    assert_eq!(
        writer.read_bytes(4),
        [3; 4],
        "the refused write changed nothing"
    );
    let output = run_tool("nbdinfo", &["--is", "read-only", &server.uri("ro")], QUICK);
    assert_eq!(output.code, Some(0), "the file now called ro is read-only");
    let status = server.ok("nbd");
    assert!(
        status.contains("  export kept (read-only)\n  export ro (read-only)\n"),
        "{status}"
    );
}

/// `--readonly` values that cannot be applied fail closed: an unusable
/// value makes every export read-only (a bad `pmemN:` rule only that
/// device's), says why at start-up and in `nbd`, and writes get EPERM from
/// real clients.
#[test]
fn unusable_read_only_rules_fail_closed() {
    let dir = TempDir::new("readonly-closed");
    let pmem0 = image_arg(&dir, "pmem0.img", "32M");
    let pmem1 = image_arg(&dir, "pmem1.img", "16M");
    let long = "x".repeat(256);
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
        "",
        "--readonly",
        &long,
        "--create",
        "disk=1M",
    ]);
    let boot = server.boot.clone();
    assert!(
        boot.contains("read-only (failing closed): every export: --readonly '': an empty name"),
        "start-up says why:\n{boot}"
    );
    for export in ["disk", "pmem1"] {
        let output = run_tool(
            "nbdinfo",
            &["--is", "read-only", &server.uri(export)],
            QUICK,
        );
        assert_eq!(output.code, Some(0), "{export} must be read-only");
        let port = server.port;
        nbdsh(
            &format!(
                r#"
import nbd
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:{port}/{export}")
assert h.is_read_only()
h.set_strict_mode(0)
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("write on a fail-closed export succeeded")
except nbd.Error as e:
    assert e.errno == "EPERM", (e.errno, e.string)
h.shutdown()
print("nbdsh script ok")
"#
            ),
            export,
        );
    }
    let mut client = RawClient::start(server.port);
    client.go("disk");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (EPERM, 1), "write to a fail-closed export");
    let nbd = server.ok("nbd");
    assert!(nbd.contains("  export disk (read-only)\n"), "{nbd}");
    assert!(nbd.contains("  export pmem1 (read-only)\n"), "{nbd}");
    assert!(
        nbd.contains("read-only (failing closed): every export: --readonly '': an empty name"),
        "{nbd}"
    );
}

/// Transmission-phase negative cases (proto.md "Request types" and
/// "Error values"), then the counters of the admin `nbd` command.
#[test]
fn transmission_errors_and_counters() {
    let dir = TempDir::new("errors");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--readonly",
        "ro",
        "--create",
        "disk=16M",
        "--create",
        "ro=1M",
    ]);
    let port = server.port;
    // Transmission-phase negative cases (proto.md "Request types" and
    // "Error values").
    let mut client = RawClient::start(port);
    let (size, _) = client.go("disk");
    client.request(CMD_READ, 1, size - 512, 4096, &[]);
    assert_eq!(client.simple(), (EINVAL, 1), "read past the end");
    client.request(CMD_READ, 2, u64::MAX - 1023, 4096, &[]);
    assert_eq!(
        client.simple(),
        (EINVAL, 2),
        "read with an overflowing offset"
    );
    client.request(CMD_READ, 3, 0, 64 << 20, &[]);
    assert_eq!(
        client.simple(),
        (EINVAL, 3),
        "read over the maximum block size"
    );
    client.request(CMD_WRITE, 4, size - 100, 4096, &[0x33; 4096]);
    assert_eq!(client.simple(), (ENOSPC, 4), "write past the end");
    client.request(CMD_WRITE, 5, u64::MAX - 10, 4096, &[0x33; 4096]);
    assert_eq!(
        client.simple(),
        (ENOSPC, 5),
        "write with an overflowing offset"
    );
    client.request(CMD_TRIM, 6, size - 4096, 8192, &[]);
    assert_eq!(client.simple(), (EINVAL, 6), "trim past the end");
    client.request(77, 7, 0, 512, &[]);
    assert_eq!(client.simple(), (EINVAL, 7), "unknown command");
    client.request(CMD_FLUSH, 8, 4096, 4096, &[]);
    assert_eq!(client.simple(), (EINVAL, 8), "flush with offset/length");
    // The refused writes' payloads were skipped: in sync, export untouched.
    client.request(CMD_READ, 9, size - 100, 100, &[]);
    assert_eq!(client.simple(), (0, 9), "read after refused writes");
    assert_eq!(
        client.read_bytes(100),
        vec![0u8; 100],
        "refused writes left no data"
    );
    // Bad request magic: hard disconnect.
    let mut bad = 0xdead_beefu32.to_be_bytes().to_vec();
    bad.extend_from_slice(&[0; 24]);
    client.send(&bad);
    client.expect_closed(Duration::from_secs(10), "bad request magic");
    // Hang up too: a client that keeps its end open would stay listed by
    // `nbd` for the whole linger (20 s; the QEMU test checks it).
    drop(client);

    let mut client = RawClient::start(port);
    let (_, flags) = client.go("ro");
    assert_eq!(flags & 2, 2, "ro advertises NBD_FLAG_READ_ONLY");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (EPERM, 1), "write to a read-only export");
    client.request(CMD_TRIM, 2, 0, 4096, &[]);
    assert_eq!(client.simple(), (EPERM, 2), "trim on a read-only export");
    client.request(CMD_READ, 3, 0, 512, &[]);
    assert_eq!(client.simple(), (0, 3), "read from a read-only export");
    assert_eq!(
        client.read_bytes(512),
        vec![0u8; 512],
        "refused write left no data"
    );
    drop(client);
    server.assert_alive();
    fresh_client_works(port, "transmission errors");

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
    // One canonical name per export: pmem0's files bare, pmem1's with
    // their device, in NBD_OPT_LIST, in NBD_INFO_NAME (what nbdinfo shows
    // as export=), in `ls` and in `nbd`.
    assert_eq!(
        list_exports(server.port),
        ["same", "pmem1:other", "pmem1:same"]
    );
    let list = run_tool_ok("nbdinfo", &["--list", &server.uri("")], QUICK);
    let listed: Vec<&str> = list
        .lines()
        .filter_map(|line| line.strip_prefix("export=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(listed, ["same", "pmem1:other", "pmem1:same"], "{list}");
    for name in &listed {
        let json = run_tool_ok("nbdinfo", &["--json", &server.uri(name)], QUICK);
        assert!(
            json.contains(&format!("\"export-name\": \"{name}\"")),
            "{name} opens as itself: {json}"
        );
    }
    let ls = server.ok("ls");
    assert!(
        ls.starts_with("       1048576  same\n       1048576  pmem1:other\n       2097152  pmem1:same\n3 file(s)\n"),
        "{ls}"
    );
    let nbd = server.ok("nbd");
    assert!(
        nbd.contains("  export same\n  export pmem1:other\n  export pmem1:same\n"),
        "{nbd}"
    );
    // A bare name found only on pmem1 still opens it (as before), under
    // its canonical name.
    let json = run_tool_ok("nbdinfo", &["--json", &server.uri("other")], QUICK);
    assert!(json.contains("\"export-name\": \"pmem1:other\""), "{json}");
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
    // The admin console's help is the kernel shell's plus `poweroff`.
    let help = server.ok("help");
    for synopsis in [
        "help",
        "create NAME SIZE",
        "nbd",
        "mkfs DEVICE [--yes]",
        "poweroff",
    ] {
        assert!(
            help.contains(&format!("  {synopsis:<28} ")),
            "help lacks {synopsis}:\n{help}"
        );
    }
    // The admin console splits words as the kernel shell does: quotes and
    // backslash escapes make a name with a space an export like any other.
    server.ok("create \"with space\" 64K");
    server.ok("write with\\ space 0 hello");
    assert_eq!(list_exports(server.port), ["with space", "x"]);
    assert_eq!(
        server.command("cat \"with space"),
        "error: unterminated quote\n"
    );
}

/// 64 connections at once with 160 requests in flight each, one with 1024
/// in flight, one reading its reply slowly, while a client that never
/// reads its 32 MiB reply stays connected: the one-thread loop must keep
/// serving everyone.
#[test]
fn sixty_four_clients_deep_pipelines_slow_and_stalled_clients() {
    let dir = TempDir::new("pipelines");
    let pmem0 = image_arg(&dir, "pmem0.img", "128M");
    let server = Server::start(&[
        "--image", &pmem0, "--format", "if-blank", "--create", "disk=64M",
    ]);
    let port = server.port;
    let mut stalled = RawClient::start(port);
    stalled.go("disk");
    stalled.request(CMD_READ, 1, 0, 32 << 20, &[]);
    // And one that reads its 8 MiB reply slowly (64 KiB every 20 ms).
    let slow = slow_reader(port, "disk");

    // Each client: 80 writes then 80 reads of distinct 4 KiB blocks in its
    // own MiB, all sent before any reply is read (a second thread reads).
    let mut clients: Vec<RawClient> = (0..64).map(|_| RawClient::start(port)).collect();
    for client in &mut clients {
        client.go("disk");
    }
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            std::thread::spawn(move || {
                let mut client =
                    pipelined_writes_then_reads(client, index, index as u64 * MIB, 80, 80);
                client.expect_closed(Duration::from_secs(10), "NBD_CMD_DISC");
            })
        })
        .collect();
    for (index, handle) in handles.into_iter().enumerate() {
        if handle.join().is_err() {
            panic!("64 concurrent clients: client {index} failed (see its panic above)");
        }
    }

    // One connection, 1024 reads in flight, sent in one go.
    deep_pipeline(port, "disk");

    fresh_client_works(port, "64 clients, deep pipeline, stalled client");
    match slow.join() {
        Ok(mut slow) => slow.expect_closed(Duration::from_secs(10), "slow client: NBD_CMD_DISC"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    // The stalled client still gets its whole reply when it reads.
    assert_eq!(stalled.simple(), (0, 1), "stalled client: 32 MiB read");
    assert_eq!(stalled.read_bytes(32 << 20).len(), 32 << 20);
}

/// Handshake-phase negative cases (proto.md "Option haggling"): each gets
/// the spec's answer and a fresh client is served afterwards; handshakes
/// that stall are closed at the (short) handshake timeout; a disconnect at
/// any byte of a session harms no one else.
/// `--nbd-list off` (the boot config's `nbd_list=off`): `NBD_OPT_LIST` is
/// refused by policy, negotiation goes on and a client that knows the name
/// is served; a value that is neither `on` nor `off` refuses to start.
#[test]
fn nbd_list_off_refuses_the_listing() {
    let dir = TempDir::new("nbd-list-off");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--create",
        "disk=8M",
        "--nbd-list",
        "off",
    ]);
    let mut client = RawClient::start(server.port);
    client.option(OPT_LIST, &[]);
    let (option, kind, _) = client.option_reply();
    assert_eq!(
        (option, kind),
        (OPT_LIST, REP_ERR_POLICY),
        "listing refused"
    );
    client.go("disk");
    fresh_client_works(server.port, "a refused NBD_OPT_LIST");

    let output = Command::new(env!("CARGO_BIN_EXE_daxbox-serve"))
        .args(["--image", &pmem0, "--nbd-list", "maybe", "--port", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("starting daxbox-serve");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--nbd-list maybe: on or off"), "{stderr}");
}

#[test]
fn negative_handshake_cases() {
    let dir = TempDir::new("negative-handshake");
    let pmem0 = image_arg(&dir, "pmem0.img", "128M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--readonly",
        "ro",
        "--create",
        "disk=64M",
        "--create",
        "ro=1M",
        "--handshake-timeout-ms",
        "1500",
    ]);
    let port = server.port;

    // The timeouts run while the other cases go on: one client idle after
    // the greeting, one that announced far more option data than it sent.
    let idle = std::thread::spawn(move || {
        let mut client = RawClient::connect(port);
        client.greeting();
        let started = Instant::now();
        client.expect_closed(Duration::from_secs(10), "idle handshake");
        started.elapsed()
    });
    let short = std::thread::spawn(move || {
        let mut client = RawClient::start(port);
        let mut header = IHAVEOPT.to_be_bytes().to_vec();
        header.extend_from_slice(&OPT_GO.to_be_bytes());
        header.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
        header.extend_from_slice(b"short");
        client.send(&header);
        let started = Instant::now();
        client.expect_closed(Duration::from_secs(10), "option length over what was sent");
        started.elapsed()
    });

    // Unknown client flags: the server must drop the client.
    let mut client = RawClient::connect(port);
    client.greeting();
    client.send(&0x8000_0001u32.to_be_bytes());
    client.expect_closed(Duration::from_secs(10), "unknown client flags");
    fresh_client_works(port, "unknown client flags");

    // A client without NBD_FLAG_C_FIXED_NEWSTYLE is dropped too.
    let mut client = RawClient::connect(port);
    client.greeting();
    client.send(&0u32.to_be_bytes());
    client.expect_closed(
        Duration::from_secs(10),
        "client flags without fixed newstyle",
    );

    // Bad option magic: hard disconnect.
    let mut client = RawClient::start(port);
    client.send(&[0x42; 16]);
    client.expect_closed(Duration::from_secs(10), "bad option magic");
    fresh_client_works(port, "bad option magic");

    // One connection, many refused options: negotiation goes on after each.
    let mut client = RawClient::start(port);
    client.option(0x1234, b"abc");
    assert_eq!(client.option_reply().1, REP_ERR_UNSUP, "unknown option");
    client.option(OPT_GO, &vec![0u8; 100_000]);
    assert_eq!(
        client.option_reply().1,
        REP_ERR_TOO_BIG,
        "option data over the server's buffer"
    );
    let mut data = go_data("disk");
    data[..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    client.option(OPT_GO, &data);
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "name length far over the option length"
    );
    client.option(OPT_GO, &go_data(&"x".repeat(5000)));
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "overlong export name (> 4096 bytes)"
    );
    client.option(OPT_GO, &go_data("nonexistent"));
    assert_eq!(client.option_reply().1, REP_ERR_UNKNOWN, "unknown export");
    client.option(OPT_GO, &go_data("pmem0"));
    assert_eq!(
        client.option_reply().1,
        REP_ERR_UNKNOWN,
        "a mounted device is no export"
    );
    client.option(OPT_LIST, b"junk");
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "NBD_OPT_LIST with data"
    );
    client.option(OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (option, kind, data) = client.option_reply();
        assert_eq!(option, OPT_LIST, "list reply names its option");
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER, "list entries are NBD_REP_SERVER");
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        names.push(String::from_utf8_lossy(&data[4..4 + len]).into_owned());
    }
    assert_eq!(names, ["disk", "ro"], "NBD_OPT_LIST after refused options");
    client.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(client.option_reply().1, REP_ACK, "structured replies");
    client.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "second structured reply option"
    );
    let (size, flags) = client.go("disk");
    assert_eq!(size, 64 * MIB, "disk size after refused options");
    assert_eq!(flags & 1, 1, "NBD_FLAG_HAS_FLAGS");
    assert_eq!(flags & 2, 0, "disk is writable");
    drop(client);

    // NBD_OPT_EXPORT_NAME cannot report errors: overlong or unknown names
    // end the session.
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, "y".repeat(5000).as_bytes());
    client.expect_closed(Duration::from_secs(10), "NBD_OPT_EXPORT_NAME overlong");
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, b"nonexistent");
    client.expect_closed(Duration::from_secs(10), "NBD_OPT_EXPORT_NAME unknown");
    fresh_client_works(port, "refused options");

    // Disconnects at every byte of a session: client flags, options (with
    // and without data), GO, a request header and part of its payload.
    let mut script = 3u32.to_be_bytes().to_vec();
    for (option, data) in [
        (OPT_STRUCTURED_REPLY, Vec::new()),
        (OPT_GO, go_data("disk")),
    ] {
        script.extend_from_slice(&IHAVEOPT.to_be_bytes());
        script.extend_from_slice(&option.to_be_bytes());
        script.extend_from_slice(&(data.len() as u32).to_be_bytes());
        script.extend_from_slice(&data);
    }
    let handshake = script.len();
    script.extend_from_slice(&request_bytes(CMD_WRITE, 0, 9, 0, 65536));
    script.extend_from_slice(&[0xee; 1000]);
    let mut cuts: Vec<usize> = (0..=handshake + 28).collect();
    cuts.extend([handshake + 100, handshake + 500, script.len()]);
    for cut in cuts {
        let mut client = RawClient::connect(port);
        if cut % 2 == 0 {
            client.greeting();
        }
        client.send(&script[..cut]);
        drop(client);
    }
    // Mid-reply: a 16 MiB read, hung up after a few bytes of data.
    let mut client = RawClient::start(port);
    client.go("disk");
    client.request(CMD_READ, 1, 0, 16 << 20, &[]);
    assert_eq!(client.simple(), (0, 1), "16 MiB read");
    client.read_bytes(100);
    drop(client);
    server.assert_alive();
    fresh_client_works(port, "disconnects at every stage");

    // The stalled handshakes were closed, not before the timeout.
    for (thread, what) in [(idle, "idle handshake"), (short, "short option data")] {
        let waited = thread.join().expect(what);
        assert!(
            waited >= Duration::from_millis(1000),
            "{what}: closed after {waited:?}, before the 1.5 s timeout"
        );
    }
    server.assert_alive();
}

/// `nbdinfo --can`/`--is`, `nbdinfo --map` of a large daxfs file, qemu-io
/// patterns and libnbd in strict mode on a small file and the raw device.
///
/// These ran against the engine's old host server `nbd-serve`, whose
/// memory exports were sparse in 64 KiB chunks; here the holes are the
/// real ones of daxfs files (FORMAT.md "Allocation policy": files over
/// 2 MiB are allocated in 2 MiB chunks, smaller ones in 4 KiB blocks), so
/// the expected maps follow that.
#[test]
fn nbdinfo_can_map_qemu_io_patterns_and_strict_libnbd() {
    let dir = TempDir::new("clients");
    let pmem0 = image_arg(&dir, "pmem0.img", "256M");
    let pmem1 = image_arg(&dir, "pmem1.img", "8M");
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
        "small=64M",
        "--create",
        "patterns=16M",
        "--create",
        "strict=2M",
        "--create",
        "ro=1M",
    ]);
    let port = server.port;

    // Everything a writable daxfs file export can do, and a read-only one
    // says so.
    for can in [
        "connect",
        "read",
        "write",
        "flush",
        "fua",
        "trim",
        "zero",
        "fast-zero",
        "cache",
        "multi-conn",
        "df",
    ] {
        let output = run_tool("nbdinfo", &["--can", can, &server.uri("small")], QUICK);
        assert_eq!(
            output.code,
            Some(0),
            "nbdinfo --can {can} small: {}",
            output.stderr
        );
    }
    let output = run_tool("nbdinfo", &["--is", "read-only", &server.uri("ro")], QUICK);
    assert_eq!(
        output.code,
        Some(0),
        "ro must advertise read-only: {}",
        output.stderr
    );
    let output = run_tool(
        "nbdinfo",
        &["--is", "read-only", &server.uri("small")],
        QUICK,
    );
    assert_eq!(output.code, Some(2), "small is writable: {}", output.stderr);

    // base:allocation mirrors allocation (proto.md "base:allocation"): a
    // fresh file is one hole; whole 2 MiB chunks written map as data, a
    // trim punches them back.
    let m = MIB;
    let small = server.uri("small");
    let map = run_tool_ok("nbdinfo", &["--map", &small], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, 64 * m, 3)],
        "nbdinfo --map of a fresh file:\n{map}"
    );
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &small,
            "-c",
            "write -P 0x5b 8M 2M",
            "-c",
            "write -P 0x5c 40M 2M",
        ],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &small], QUICK);
    assert_eq!(
        map_rows(&map),
        [
            (0, 8 * m, 3),
            (8 * m, 2 * m, 0),
            (10 * m, 30 * m, 3),
            (40 * m, 2 * m, 0),
            (42 * m, 22 * m, 3)
        ],
        "nbdinfo --map after writing 2 MiB at 8 MiB and at 40 MiB:\n{map}"
    );
    // Less than a chunk written allocates the whole chunk.
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &small, "-c", "write -P 0x5a 2M 1M"],
        QUICK,
    );
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &small, "-c", "discard 8M 2M"],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &small], QUICK);
    assert_eq!(
        map_rows(&map),
        [
            (0, 2 * m, 3),
            (2 * m, 2 * m, 0),
            (4 * m, 36 * m, 3),
            (40 * m, 2 * m, 0),
            (42 * m, 22 * m, 3)
        ],
        "nbdinfo --map after writing 1 MiB at 2 MiB and trimming the chunk at 8 MiB:\n{map}"
    );

    // qemu-io patterns: write, read, discard, write-zeroes, aio.
    let patterns = server.uri("patterns");
    let commands = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -f -P 0xcd 1M 64k",
        "discard 0 64k",
        "read -P 0 0 64k",
        "read -P 0xab 64k 960k",
        "write -z 2M 1M",
        "read -P 0 2M 1M",
        "write -z -u 3M 128k",
        "read -P 0 3M 128k",
        "read -P 0xcd 1M 64k",
        "aio_write -P 0x77 8M 256k",
        "aio_write -P 0x78 9M 256k",
        "aio_flush",
        "read -P 0x77 8M 256k",
        "read -P 0x78 9M 256k",
        "flush",
    ];
    let mut args = vec!["-f", "raw", patterns.as_str()];
    for command in &commands {
        args.extend(["-c", command]);
    }
    let out = run_tool_ok("qemu-io", &args, QUICK);
    let lower = out.to_lowercase();
    assert!(
        !lower.contains("fail") && !lower.contains("error"),
        "qemu-io patterns:\n{out}"
    );
    assert_eq!(
        out.matches("read ").count(),
        8,
        "qemu-io: every read reported\n{out}"
    );
    let output = run_tool(
        "qemu-io",
        &["-f", "raw", &patterns, "-c", "read -P 0x99 0 4k"],
        QUICK,
    );
    assert!(
        output.stdout.contains("Pattern verification failed"),
        "qemu-io must detect a wrong pattern: {}",
        output.stdout
    );

    // libnbd in strict mode, with and without structured replies: FUA,
    // DF, fast zero, NO_HOLE, trim, cache, flush, block status (also
    // REQ_ONE) and the errors libnbd reports, on a 2 MiB file (allocated
    // block by block). Then the raw device's capabilities: every daxbox
    // export can fast-zero (nbd-serve's raw files could not; the engine's
    // refusal of an unadvertised FAST_ZERO is a unit test in
    // net/nbd/src/tests.rs).
    nbdsh(
        &format!(
            r#"
import nbd, errno
for structured in (True, False):
    h = nbd.NBD()
    h.set_strict_mode(nbd.STRICT_COMMANDS | nbd.STRICT_FLAGS | nbd.STRICT_BOUNDS | nbd.STRICT_ZERO_SIZE)
    h.set_request_structured_replies(structured)
    if structured:
        h.add_meta_context("base:allocation")
    h.connect_uri("nbd://127.0.0.1:{port}/strict")
    assert h.get_structured_replies_negotiated() == structured
    assert h.can_meta_context("base:allocation") == structured
    assert h.can_df() == structured
    size = h.get_size()
    assert size == 2 << 20, size
    h.pwrite(b"\xaa" * 65536, 0, nbd.CMD_FLAG_FUA)
    h.pwrite(b"\xbb" * 65536, 1 << 20)
    assert h.pread(65536, 0) == b"\xaa" * 65536
    if structured:
        chunks = []
        buf = h.pread_structured(65536, 0, lambda sub, off, status, err: chunks.append((off, len(sub), status)) or 0, nbd.CMD_FLAG_DF)
        assert buf == b"\xaa" * 65536 and chunks == [(0, 65536, nbd.READ_DATA)], chunks
    h.zero(65536, 65536, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
    h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
    assert h.pread(4096, 4096) == bytes(4096)
    assert h.pread(4096, 8192) == b"\xaa" * 4096
    h.trim(65536, 0)
    assert h.pread(65536, 0) == bytes(65536)
    h.cache(65536, 0)
    h.flush()
    if structured:
        seen = []
        h.block_status(size, 0, lambda ctx, off, ents, err: seen.append((ctx, off, list(ents))))
        # Only the 64 KiB at 1 MiB is still allocated.
        assert seen == [("base:allocation", 0, [1 << 20, 3, 65536, 0, size - (1 << 20) - 65536, 3])], seen
        one = []
        h.block_status(size, 0, lambda ctx, off, ents, err: one.append(list(ents)), nbd.CMD_FLAG_REQ_ONE)
        assert one == [[1 << 20, 3]], one
    h.set_strict_mode(0)
    for call, code in ((lambda: h.pread(4096, size - 100), errno.EINVAL),
                       (lambda: h.pwrite(b"x" * 4096, size - 100), errno.ENOSPC),
                       (lambda: h.pread(64 << 20, 0), errno.EINVAL)):
        try:
            call()
            raise SystemExit("expected an error")
        except nbd.Error as e:
            assert e.errno == errno.errorcode[code], (e.errno, code)
    assert h.pread(4, 1 << 20) == b"\xbb" * 4
    h.shutdown()
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:{port}/pmem1")
assert h.can_fast_zero() and h.can_multi_conn() and h.can_flush() and h.can_fua()
h.pwrite(b"raw!", 100, nbd.CMD_FLAG_FUA)
h.shutdown()
print("nbdsh script ok")
"#
        ),
        "libnbd strict-mode checks",
    );
    let on_disk = std::fs::read(dir.path("pmem1.img")).expect("reading the raw image");
    assert_eq!(&on_disk[100..104], b"raw!", "FUA write reached the image");
}

/// 256 MiB through nbdcopy into a daxfs file and back, compared byte by
/// byte and by qemu-img, which must also see a changed block.
#[test]
fn nbdcopy_256_mib_round_trip_and_qemu_img_compare() {
    const LEN: usize = 256 << 20;
    let dir = TempDir::new("nbdcopy");
    let pmem0 = image_arg(&dir, "pmem0.img", "384M");
    let server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--create",
        "disk=256M",
    ]);
    let source = dir.path("source.img");
    let copy = dir.path("copy.img");
    let image = test_image(LEN, 0);
    std::fs::write(&source, &image).expect("writing the source image");
    let started = Instant::now();
    run_tool_ok("nbdcopy", &[text(&source), &server.uri("disk")], BULK);
    run_tool_ok("nbdcopy", &[&server.uri("disk"), text(&copy)], BULK);
    eprintln!("nbdcopy 256 MiB in and out: {:?}", started.elapsed());
    let back = std::fs::read(&copy).expect("reading the copy");
    assert_eq!(back.len(), LEN, "nbdcopy out: length");
    assert!(back == image, "data read back differs from data written");
    drop(back);
    drop(image);
    let disk = server.uri("disk");
    let compare = ["compare", "-f", "raw", "-F", "raw", text(&source), &disk];
    let out = run_tool_ok("qemu-img", &compare, BULK);
    assert!(out.contains("Images are identical"), "{out}");
    // The comparison can fail: change one block and it must see it.
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &disk, "-c", "write -P 0x11 100M 4k"],
        QUICK,
    );
    let output = run_tool("qemu-img", &compare, BULK);
    assert_eq!(
        output.code,
        Some(1),
        "qemu-img compare must see the changed block: {}",
        output.stdout
    );
}

/// `umount`, `mount`, `grow` and a shrinking `truncate` against connected
/// clients (issue 18): refused while a client has the device or file
/// open, naming it by address and port; `--force` cuts it (its socket
/// closes) and everyone else carries on; after `umount` the device is
/// listed as not mounted and `mkfs`/`mount` take it; `grow` after the
/// image got larger shows the new space in `df`, also after a restart; an
/// image smaller than its filesystem is left alone with a message that
/// says so.
#[test]
fn lifecycle_commands_with_connected_clients() {
    let dir = TempDir::new("lifecycle");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let mut server = Server::start(&[
        "--image", &pmem0, "--format", "if-blank", "--create", "disk=16M", "--create", "other=4M",
    ]);
    let port = server.port;
    let mut client = RawClient::start(port);
    let (size, _) = client.go("disk");
    assert_eq!(size, 16 * MIB);
    client.request(CMD_WRITE, 1, 8 * MIB, 4096, &[0x42; 4096]);
    assert_eq!(client.simple(), (0, 1));
    let status = server.ok("nbd");
    let line = status
        .lines()
        .find(|line| line.contains(" disk: "))
        .unwrap_or_else(|| panic!("`nbd` lists the client:\n{status}"));
    let id = line.trim_start().split(' ').next().unwrap().to_string();
    let peer = line.trim_start().split(' ').nth(1).unwrap().to_string();
    assert!(peer.starts_with("127.0.0.1:"), "{line}");
    assert!(
        line.contains(" up ") && line.contains(" s, disk: 1 requests"),
        "{line}"
    );
    let named = format!("{id} {peer} (disk)");

    // Shrinking the open file: refused, then forced.
    let refused = server.command("truncate disk 1M");
    assert_eq!(
        refused,
        format!(
            "error: disk is open on 1 NBD connection(s): {named}; shrinking it under them is \
             refused (`truncate disk 1M --force` disconnects them first)\n"
        )
    );
    assert!(server
        .ok("stat disk")
        .contains("size:       16777216 (16 MiB)"));
    assert!(server
        .ok("truncate disk 32M")
        .starts_with("truncated to 33554432 bytes"));
    let forced = server.ok("truncate disk 1M --force");
    assert_eq!(
        forced,
        format!("disconnected {named}\ntruncated to 1048576 bytes\nok\n")
    );
    client.expect_closed(QUICK, "a client cut by truncate --force");
    drop(client);
    assert!(server
        .ok("stat disk")
        .contains("size:       1048576 (1 MiB)"));
    server.assert_alive();
    let info = run_tool_ok("nbdinfo", &["--size", &server.uri("disk")], QUICK);
    assert_eq!(info.trim(), "1048576", "a new client sees the new size");

    // umount: refused, then forced; the device is free for mkfs and mount.
    let mut client = RawClient::start(port);
    client.go("other");
    let status = server.ok("nbd");
    let line = status.lines().find(|l| l.contains(" other: ")).unwrap();
    let id = line.trim_start().split(' ').next().unwrap().to_string();
    let peer = line.trim_start().split(' ').nth(1).unwrap().to_string();
    let named = format!("{id} {peer} (other)");
    assert_eq!(
        server.command("umount pmem0"),
        format!(
            "error: pmem0 is open on 1 NBD connection(s): {named}; it stays mounted \
             (`umount pmem0 --force` disconnects them first)\n"
        )
    );
    assert_eq!(
        server.ok("umount pmem0 --force"),
        format!("disconnected {named}\npmem0: unmounted (filesystem clean)\nok\n")
    );
    client.expect_closed(QUICK, "a client cut by umount --force");
    drop(client);
    server.assert_alive();
    assert!(
        server
            .ok("df")
            .contains("\npmem0          64 MiB (not mounted)\n"),
        "df lists the unmounted device"
    );
    assert!(server
        .ok("mkfs pmem0")
        .starts_with("mkfs: this erases everything on pmem0 (64 MiB)."));
    assert!(server
        .ok("mount pmem0")
        .starts_with("storage: pmem0 mounted daxfs in "));
    let info = run_tool_ok("nbdinfo", &["--size", &server.uri("other")], QUICK);
    assert_eq!(info.trim(), "4194304");
    assert_eq!(
        server.ok("umount pmem0"),
        "pmem0: unmounted (filesystem clean)\nok\n"
    );
    assert!(server
        .ok("mkfs pmem0 --yes")
        .starts_with("storage: pmem0 formatted and mounted daxfs in "));
    server.ok("create kept 2M");
    server.ok("write kept 0 kept-across-grow");
    let before = server.ok("df");
    server.poweroff();

    // The image got larger: grow uses it, df shows it, a restart keeps it.
    let image = dir.path("pmem0.img");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|file| file.set_len(128 * MIB))
        .expect("growing the image");
    let start = |dir: &TempDir| Server::start(&["--image", text(&dir.path("pmem0.img"))]);
    let mut server = start(&dir);
    assert_eq!(server.ok("df"), before, "nothing grows by itself");
    let grown = server.ok("grow pmem0");
    assert!(grown.starts_with("pmem0: grown by 64 MiB to "), "{grown}");
    let after = server.ok("df");
    assert_ne!(after, before);
    assert!(after.contains("\npmem0       127.5 MiB "), "{after}");
    assert!(server.ok("cat kept 0 16").starts_with("kept-across-grow"));
    assert!(server.ok("fsck pmem0").starts_with("pmem0: fsck: clean"));
    server.poweroff();
    let mut server = start(&dir);
    assert_eq!(server.ok("df"), after, "the grown size survives a restart");
    server.poweroff();

    // Smaller than its filesystem: not "damaged", and left untouched.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|file| file.set_len(32 * MIB))
        .expect("shrinking the image");
    let server = start(&dir);
    assert!(
        server.boot.contains(
            "storage: pmem0: filesystem needs 128 MiB but the device is 32 MiB; not mounted \
             (data untouched; boot with the larger size)\n"
        ),
        "{}",
        server.boot
    );
    server.poweroff();
}

#[test]
fn an_image_over_the_memory_budget_is_refused_untouched_and_the_other_serves() {
    let dir = TempDir::new("budget");
    let pmem0 = image_arg(&dir, "pmem0.img", "32M");
    let pmem1 = image_arg(&dir, "pmem1.img", "16M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--image",
        &pmem1,
        "--format",
        "if-blank",
        "--create",
        "pmem1:small=1M",
    ]);
    for i in 0..300 {
        server.ok(&format!("create pmem0:f{i:03} 4K"));
    }
    server.poweroff();
    let before = std::fs::read(dir.path("pmem0.img")).expect("reading pmem0.img");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--image",
        &pmem1,
        "--memory-budget",
        "128K",
    ]);
    let boot = server.boot.clone();
    assert!(
        boot.contains("storage: pmem0: mount refused: the image needs at least ")
            && boot.contains(
                " bytes of memory, the mount budget is 131072 bytes (0 held by others) (not mounted, data left as it is)\n"
            ),
        "boot messages:\n{boot}"
    );
    assert!(
        boot.contains("storage: pmem1 mounted daxfs in "),
        "boot messages:\n{boot}"
    );
    let list = run_tool_ok("nbdinfo", &["--list", &server.uri("")], QUICK);
    assert!(list.contains("export=\"small\""), "{list}");
    server.assert_alive();
    server.poweroff();
    let after = std::fs::read(dir.path("pmem0.img")).expect("reading pmem0.img");
    assert!(after == before, "the refused image was written");
}

/// A 1 GiB TRIM and a 1 GiB WRITE_ZEROES on one connection (a daxfs file
/// and a raw device) while a second connection keeps reading 4 KiB blocks
/// elsewhere in the same export: the server does the long requests in
/// bounded pieces, one per event-loop step, and serves the reader in
/// between. Both clients succeed and every byte is right; how many reads
/// the reader got in while each long request ran is printed, not asserted
/// (no timed assertions).
#[test]
fn long_trim_and_zero_while_another_connection_reads() {
    let dir = TempDir::new("longtrim");
    let pmem0 = image_arg(&dir, "pmem0.img", "1280M");
    let pmem1 = image_arg(&dir, "pmem1.img", "1088M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--image",
        &pmem1,
        "--format",
        "if-blank",
        "--export-raw",
        "pmem1",
        "--create",
        "big=1088M",
    ]);
    let port = server.port;
    let script = format!(
        r#"
import nbd
GIB = 1 << 30
def block(i):
    return bytes([i % 251]) * 4096
for export in ("big", "pmem1"):
    writer = nbd.NBD()
    writer.connect_uri("nbd://127.0.0.1:{port}/" + export)
    reader = nbd.NBD()
    reader.connect_uri("nbd://127.0.0.1:{port}/" + export)
    # The reader's 64 MiB after the first GiB, and data spread over the
    # first GiB (every 32 MiB, and its last 4 KiB).
    for i in range(0, 64 << 20, 1 << 20):
        writer.pwrite(block(i >> 20) * 256, GIB + i)
    for i in range(0, GIB, 32 << 20):
        writer.pwrite(b"\x5a" * (1 << 20), i)
    writer.pwrite(b"theend!" + bytes(4089), GIB - 4096)
    writer.flush()
    for name, start in (("trim", writer.aio_trim), ("zero", writer.aio_zero)):
        if name == "zero":
            writer.pwrite(b"\x5a" * (1 << 20), 512 << 20)
        cookie = start(GIB, 0)
        reads = 0
        while True:
            at = (reads * 7 % 16384) * 4096
            assert reader.pread(4096, GIB + at) == block(at >> 20), (export, name, at)
            reads += 1
            writer.poll(0)
            if writer.aio_command_completed(cookie):
                break
        for at in (0, 512 << 20, GIB - 4096):
            assert reader.pread(4096, at) == bytes(4096), (export, name, at)
        print(export, name, "reads while it ran:", reads)
    writer.shutdown()
    reader.shutdown()
print("nbdsh script ok")
"#
    );
    let output = run_tool("nbdsh", &["-c", &script], BULK);
    assert!(
        output.success() && output.stdout.contains("nbdsh script ok"),
        "a long trim and zero while another connection reads: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
    print!("{}", output.stdout);
    let fsck = server.ok("fsck");
    assert!(fsck.starts_with("pmem0: fsck: clean ("), "{fsck}");
}

/// The test certificates of `net/tls` (CA, server for 127.0.0.1 and
/// localhost, a client, an unrelated CA), laid out as libnbd's and QEMU's
/// `tls-certificates`/`tls-creds-x509` folders want them.
fn tls_folders(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../net/tls/testdata");
    let copy = |from: &str, to: &Path| std::fs::copy(data.join(from), to).expect("copy test cert");
    let good = dir.path("certs");
    let wrong = dir.path("wrong-ca");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&wrong).unwrap();
    copy("ca.pem", &good.join("ca-cert.pem"));
    copy("other-ca.pem", &wrong.join("ca-cert.pem"));
    let server = dir.path("server");
    std::fs::create_dir_all(&server).unwrap();
    copy("server.pem", &server.join("cert.pem"));
    copy("server-key.pem", &server.join("key.pem"));
    (good, wrong, server)
}

#[test]
fn nbd_over_tls_with_real_clients() {
    let dir = TempDir::new("tls");
    let (good, wrong, server_files) = tls_folders(&dir);
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let cert = text(&server_files.join("cert.pem")).to_string();
    let key = text(&server_files.join("key.pem")).to_string();
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--create",
        "disk=8M",
        "--tls",
        "require",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let port = server.port;
    let nbds = |export: &str, certs: &Path| {
        format!(
            "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
            text(certs)
        )
    };

    // nbdinfo over TLS sees the export.
    let info = run_tool_ok("nbdinfo", &["--size", &nbds("disk", &good)], QUICK);
    assert_eq!(info.trim(), (8 * MIB).to_string());

    // nbdcopy writes through TLS and reads the same bytes back.
    let source = dir.path("source.bin");
    let data: Vec<u8> = (0..8 * MIB as usize)
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    std::fs::write(&source, &data).unwrap();
    run_tool_ok("nbdcopy", &[text(&source), &nbds("disk", &good)], BULK);
    let back = dir.path("back.bin");
    run_tool_ok("nbdcopy", &[&nbds("disk", &good), text(&back)], BULK);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "bytes differ after a TLS round trip"
    );

    // tls=require: a plaintext client is refused with the TLS-required error.
    let plain = run_tool("nbdinfo", &[&server.uri("disk")], QUICK);
    assert!(!plain.success(), "plaintext nbdinfo must fail");
    let said = format!("{}{}", plain.stdout, plain.stderr);
    assert!(said.contains("TLS"), "plaintext refusal:\n{said}");

    // A client that does not trust the server's CA fails the handshake ...
    let wrong_ca = run_tool("nbdinfo", &["--size", &nbds("disk", &wrong)], QUICK);
    assert!(!wrong_ca.success(), "a client with the wrong CA must fail");
    // ... and the server serves the next client.
    let info = run_tool_ok("nbdinfo", &["--size", &nbds("disk", &good)], QUICK);
    assert_eq!(info.trim(), (8 * MIB).to_string());

    // QEMU's client with tls-creds-x509 reads through TLS.
    let object = format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", text(&good));
    let image = format!("driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0");
    let qemu = run_tool_ok(
        "qemu-io",
        &[
            "--object",
            &object,
            "--image-opts",
            &image,
            "-c",
            "read 0 4096",
        ],
        QUICK,
    );
    assert!(qemu.contains("read 4096/4096 bytes"), "qemu-io:\n{qemu}");
    let qemu = run_tool_ok(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &image],
        QUICK,
    );
    assert!(
        qemu.contains("virtual size: 8 MiB"),
        "qemu-img info:\n{qemu}"
    );
    server.assert_alive();
}

/// A client certificate folder (`ca-cert.pem`, `client-cert.pem`,
/// `client-key.pem`, as libnbd's `tls-certificates` and QEMU's
/// `tls-creds-x509` read it) for a certificate with common name `cn`,
/// made with `openssl` now and signed by the `net/tls` test CA.
fn client_folder(dir: &TempDir, cn: &str) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../net/tls/testdata");
    let ca = certs::Ca {
        cert: &data.join("ca.pem"),
        key: &data.join("ca-key.pem"),
    };
    certs::client_folder(&dir.path(&format!("client-{cn}")), ca, cn).unwrap()
}

/// Mutual TLS as identity: `--allow cn:NAME` admits only the client whose
/// verified certificate has that common name; another certificate from
/// the same CA gets the policy error and does not see the export listed,
/// a client without a certificate fails the handshake, and the allowed
/// client goes on being served after each.
#[test]
fn allow_rules_match_the_client_certificate_name() {
    let dir = TempDir::new("tls-cn");
    let (_, _, server_files) = tls_folders(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../net/tls/testdata");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let mut server = Server::start(&[
        "--image",
        &pmem0,
        "--format",
        "if-blank",
        "--create",
        "disk=8M",
        "--create",
        "other=4M",
        "--tls",
        "require",
        "--tls-cert",
        text(&server_files.join("cert.pem")),
        "--tls-key",
        text(&server_files.join("key.pem")),
        "--tls-client-ca",
        text(&data.join("ca.pem")),
        "--allow",
        "cn:backup-host-1 disk rw nbd",
        "--allow",
        "cn:reader other ro nbd",
    ]);
    let port = server.port;
    let nbds = |export: &str, certs: &Path| {
        format!(
            "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
            text(certs)
        )
    };
    let backup = client_folder(&dir, "backup-host-1");
    let stranger = client_folder(&dir, "stranger");
    let reader = client_folder(&dir, "reader");

    // The named certificate reads and writes its export.
    let info = run_tool_ok("nbdinfo", &["--size", &nbds("disk", &backup)], QUICK);
    assert_eq!(info.trim(), (8 * MIB).to_string());
    let source = dir.path("source.bin");
    let bytes: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&source, &bytes).unwrap();
    run_tool_ok("nbdcopy", &[text(&source), &nbds("disk", &backup)], BULK);
    let back = dir.path("back.bin");
    run_tool_ok(
        "nbdcopy",
        &["--", &nbds("disk", &backup), text(&back)],
        BULK,
    );
    assert!(std::fs::read(&back).unwrap()[..bytes.len()] == bytes[..]);
    let listed = run_tool_ok("nbdinfo", &["--list", "--json", &nbds("", &backup)], QUICK);
    assert!(listed.contains("\"disk\""), "{listed}");
    assert!(!listed.contains("\"other\""), "{listed}");
    // Its name does not reach the other export.
    let other = run_tool("nbdinfo", &["--size", &nbds("other", &backup)], QUICK);
    assert!(!other.success(), "backup-host-1 must not open other");

    // Another certificate of the same CA: refused by policy, sees nothing.
    let refused = run_tool("nbdinfo", &["--size", &nbds("disk", &stranger)], QUICK);
    assert!(!refused.success(), "stranger must be refused");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("policy"), "stranger's refusal:\n{said}");
    let listed = run_tool(
        "nbdinfo",
        &["--list", "--json", &nbds("", &stranger)],
        QUICK,
    );
    let said = format!("{}{}", listed.stdout, listed.stderr);
    assert!(!said.contains("\"disk\""), "stranger's list:\n{said}");

    // A read-only grant by name: reads work, writes are refused.
    let info = run_tool_ok("nbdinfo", &["--size", &nbds("other", &reader)], QUICK);
    assert_eq!(info.trim(), (4 * MIB).to_string());
    let write = run_tool("nbdcopy", &[text(&source), &nbds("other", &reader)], QUICK);
    assert!(!write.success(), "reader must not write");

    // No client certificate: the handshake fails (mutual TLS), and the
    // allowed client is served afterwards.
    let anonymous = dir.path("anonymous");
    std::fs::create_dir_all(&anonymous).unwrap();
    std::fs::copy(data.join("ca.pem"), anonymous.join("ca-cert.pem")).unwrap();
    let none = run_tool("nbdinfo", &["--size", &nbds("disk", &anonymous)], QUICK);
    assert!(!none.success(), "a client without a certificate must fail");
    let info = run_tool_ok("nbdinfo", &["--size", &nbds("disk", &backup)], QUICK);
    assert_eq!(info.trim(), (8 * MIB).to_string());
    let counts = server.ok("nbd");
    assert!(counts.contains("refused:"), "nbd:\n{counts}");
    server.assert_alive();
}

/// A server certificate signed by the `net/tls` test CA for `san`, valid
/// from `start` to `end` (`openssl ca` dates, `YYYYMMDDHHMMSSZ`), made
/// now in `dir`: (certificate, key) paths.
fn server_cert(dir: &TempDir, name: &str, san: &str, start: &str, end: &str) -> (PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../net/tls/testdata");
    let folder = dir.path(name);
    std::fs::create_dir_all(&folder).unwrap();
    let run = |args: &[&str]| certs::openssl(&folder, args).unwrap();
    std::fs::write(
        folder.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n\
         default_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n",
    )
    .unwrap();
    std::fs::write(folder.join("index.txt"), "").unwrap();
    std::fs::write(folder.join("serial"), "01\n").unwrap();
    std::fs::write(
        folder.join("ext"),
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    certs::new_key(&folder, "key.pem").unwrap();
    run(&[
        "req",
        "-new",
        "-key",
        "key.pem",
        "-subj",
        "/CN=daxbox",
        "-out",
        "server.csr",
    ]);
    run(&[
        "ca",
        "-batch",
        "-notext",
        "-config",
        "ca.cnf",
        "-cert",
        text(&data.join("ca.pem")),
        "-keyfile",
        text(&data.join("ca-key.pem")),
        "-in",
        "server.csr",
        "-startdate",
        start,
        "-enddate",
        end,
        "-extfile",
        "ext",
        "-out",
        "cert.pem",
    ]);
    (folder.join("cert.pem"), folder.join("key.pem"))
}

/// A server whose certificate has expired, or names another host, fails
/// the client's handshake (GnuTLS verifies both); the server keeps
/// serving: a plaintext client (`tls=on`) right after each.
#[test]
fn expired_and_wrong_host_server_certificates_fail_the_handshake() {
    let dir = TempDir::new("tls-bad-server");
    let (good, _, _) = tls_folders(&dir);
    for (name, san, start, end) in [
        (
            "expired",
            "IP:127.0.0.1,DNS:localhost",
            "20200101000000Z",
            "20210101000000Z",
        ),
        (
            "other-host",
            "DNS:other.example",
            "20200101000000Z",
            "21000101000000Z",
        ),
    ] {
        let (cert, key) = server_cert(&dir, name, san, start, end);
        let pmem0 = image_arg(&dir, &format!("{name}.img"), "64M");
        let mut server = Server::start(&[
            "--image",
            &pmem0,
            "--format",
            "if-blank",
            "--create",
            "disk=4M",
            "--tls",
            "on",
            "--tls-cert",
            text(&cert),
            "--tls-key",
            text(&key),
        ]);
        let port = server.port;
        let uri = format!(
            "nbds://127.0.0.1:{port}/disk?tls-certificates={}",
            text(&good)
        );
        let failed = run_tool("nbdinfo", &["--size", &uri], QUICK);
        assert!(!failed.success(), "{name}: the handshake must fail");
        let said = format!("{}{}", failed.stdout, failed.stderr);
        assert!(
            said.contains("certificate") || said.contains("verify"),
            "{name}: {said}"
        );
        let plain = run_tool_ok("nbdinfo", &["--size", &server.uri("disk")], QUICK);
        assert_eq!(plain.trim(), (4 * MIB).to_string(), "{name}");
        server.assert_alive();
    }
}

/// Idle-time compaction in `daxbox-serve`'s loop, the same scenario as the
/// kernel's (`daxbox_tests::nbd_client::idle_pass_gathers_a_rewritten_chunk`):
/// a partly rewritten chunk of a clone is gathered with no `compact`.
#[test]
fn the_idle_pass_gathers_a_rewritten_chunk_of_a_clone() {
    let dir = TempDir::new("idle-compact");
    let pmem0 = image_arg(&dir, "pmem0.img", "64M");
    let mut server = Server::start(&["--image", &pmem0, "--format", "if-blank"]);
    server.ok("create golden 16M");
    let port = server.port;
    idle_pass_gathers_a_rewritten_chunk(port, &mut |line| server.ok(line), QUICK);
    server.poweroff();
}
