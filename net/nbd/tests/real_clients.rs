//! System tests for the NBD engine: real clients (libnbd's nbdinfo and
//! nbdcopy, qemu-img, qemu-io, fio) and raw-socket negative tests against
//! the `nbd-serve` example, which cargo builds along with the tests.
//!
//! A missing client tool is a test failure with a clear message, never a
//! skip.

use daxbox_tests::nbd_client::{
    go_data, request_bytes, run_tool, run_tool_ok, test_image, uri, RawClient, CMD_DISC, CMD_FLUSH,
    CMD_READ, CMD_WRITE, EINVAL, ENOSPC, EPERM, IHAVEOPT, OPT_EXPORT_NAME, OPT_GO,
    OPT_STRUCTURED_REPLY, REP_ERR_INVALID, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP,
};
use std::io::{BufRead, BufReader};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Deadline for one client tool run against the host server: far beyond
/// what any run here needs (the whole file takes seconds), but bounded so
/// a hung client fails the test instead of hanging it.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// The example server, killed on drop.
struct ServerProcess {
    child: Child,
    port: u16,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn start(args: &[&str]) -> ServerProcess {
        let binary = example_binary();
        let mut child = Command::new(&binary)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let mut server = ServerProcess { child, port: 0 };
        let line = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("nbd-serve did not report its port within 10 s");
        server.port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected nbd-serve banner {line:?}"));
        server
    }

    fn uri(&self, export: &str) -> String {
        uri(self.port, export)
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "nbd-serve exited"
        );
    }
}

fn example_binary() -> PathBuf {
    // target/<profile>/deps/real_clients-HASH -> target/<profile>/examples/
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("examples").join("nbd-serve");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test -p daxbox-nbd` (which builds examples) or `cargo build -p daxbox-nbd --example nbd-serve`",
        binary.display()
    );
    binary
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("daxbox-nbd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

// ---------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------

#[test]
fn nbdinfo_list_json_map_and_can() {
    let server = ServerProcess::start(&[
        "--memory",
        "mem=64M",
        "--memory",
        "ro=1M",
        "--read-only",
        "ro",
    ]);
    let list = run_tool_ok(
        "nbdinfo",
        &["--list", &format!("nbd://127.0.0.1:{}", server.port)],
        TOOL_TIMEOUT,
    );
    assert!(
        list.contains("export=\"mem\"") && list.contains("export=\"ro\""),
        "{list}"
    );
    assert!(list.contains("base:allocation"), "{list}");

    let json = run_tool_ok("nbdinfo", &["--json", &server.uri("mem")], TOOL_TIMEOUT);
    for needle in [
        "\"export-size\": 67108864",
        "\"can_fua\": true",
        "\"can_flush\": true",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_multi_conn\": true",
        "\"is_read_only\": false",
        "\"block_size_maximum\": 33554432",
        "\"structured\": true",
    ] {
        assert!(json.contains(needle), "missing {needle} in\n{json}");
    }

    // Write 1 MiB at 2 MiB; the map must show exactly that as data.
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &server.uri("mem"), "-c", "write -P 0x5a 2M 1M"],
        TOOL_TIMEOUT,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &server.uri("mem")], TOOL_TIMEOUT);
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let expected = [
        ("0", "2097152", "3"),
        ("2097152", "1048576", "0"),
        ("3145728", "63963136", "3"),
    ];
    assert_eq!(rows.len(), expected.len(), "{map}");
    for (row, (offset, len, kind)) in rows.iter().zip(expected) {
        assert_eq!((row[0], row[1], row[2]), (offset, len, kind), "{map}");
    }

    for can in [
        "flush",
        "fua",
        "trim",
        "zero",
        "fast-zero",
        "cache",
        "multi-conn",
        "df",
        "write",
        "read",
    ] {
        let code = run_tool("nbdinfo", &["--can", can, &server.uri("mem")], TOOL_TIMEOUT).code;
        assert_eq!(code, Some(0), "nbdinfo --can {can}");
    }
    for can in ["write", "trim", "zero", "fua"] {
        let code = run_tool("nbdinfo", &["--can", can, &server.uri("ro")], TOOL_TIMEOUT).code;
        assert_eq!(code, Some(2), "read-only export must not claim --can {can}");
    }
    assert_eq!(
        run_tool(
            "nbdinfo",
            &["--is", "read-only", &server.uri("ro")],
            TOOL_TIMEOUT
        )
        .code,
        Some(0)
    );
}

#[test]
fn nbdcopy_256mib_round_trip_and_qemu_img_compare() {
    const LEN: usize = 256 << 20;
    let server = ServerProcess::start(&["--memory", "disk=256M"]);
    let dir = temp_dir("nbdcopy");
    let source = dir.join("source.img");
    let copy = dir.join("copy.img");
    let image = test_image(LEN, 0);
    std::fs::write(&source, &image).expect("write source image");
    let started = Instant::now();
    run_tool_ok(
        "nbdcopy",
        &[source.to_str().unwrap(), &server.uri("disk")],
        TOOL_TIMEOUT,
    );
    run_tool_ok(
        "nbdcopy",
        &[&server.uri("disk"), copy.to_str().unwrap()],
        TOOL_TIMEOUT,
    );
    eprintln!("nbdcopy 256 MiB in and out: {:?}", started.elapsed());
    let back = std::fs::read(&copy).expect("read copy");
    assert_eq!(back.len(), LEN);
    assert!(back == image, "data read back differs from data written");
    let disk = server.uri("disk");
    let compare = [
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        source.to_str().unwrap(),
        &disk,
    ];
    let out = run_tool_ok("qemu-img", &compare, TOOL_TIMEOUT);
    assert!(out.contains("Images are identical"), "{out}");
    // And a difference is detected (the comparison can fail).
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &disk, "-c", "write -P 0x11 100M 4k"],
        TOOL_TIMEOUT,
    );
    let code = run_tool("qemu-img", &compare, TOOL_TIMEOUT).code;
    assert_eq!(code, Some(1), "qemu-img compare must see the changed block");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qemu_io_pattern_write_read_discard_write_zeroes() {
    let server = ServerProcess::start(&["--memory", "disk=16M"]);
    let commands = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -f -P 0xcd 1M 64k",
        "discard 0 64k",
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
    let mut args = vec!["-f", "raw"];
    let uri = server.uri("disk");
    args.push(&uri);
    for c in &commands {
        args.push("-c");
        args.push(c);
    }
    let out = run_tool_ok("qemu-io", &args, TOOL_TIMEOUT);
    let lower = out.to_lowercase();
    assert!(!lower.contains("fail") && !lower.contains("error"), "{out}");
    assert_eq!(out.matches("read ").count(), 7, "{out}");
    // A wrong pattern is detected (the check can fail).
    let out = run_tool(
        "qemu-io",
        &["-f", "raw", &uri, "-c", "read -P 0x99 0 4k"],
        TOOL_TIMEOUT,
    )
    .stdout;
    assert!(out.contains("Pattern verification failed"), "{out}");
}

fn fio(uri: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--name=verify".to_string(),
        "--ioengine=nbd".to_string(),
        format!("--uri={uri}"),
        "--rw=randwrite".to_string(),
        "--verify=crc32c".to_string(),
        "--verify_fatal=1".to_string(),
        "--output-format=terse".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_tool_ok("fio", &refs, TOOL_TIMEOUT)
}

#[test]
fn fio_verify_one_and_four_connections() {
    let server = ServerProcess::start(&["--memory", "disk=64M"]);
    let out = fio(
        &server.uri("disk"),
        &["--bs=4k", "--size=16M", "--iodepth=32"],
    );
    // Terse format: field 5 is the job error code.
    let fields: Vec<&str> = out.lines().last().unwrap_or("").split(';').collect();
    assert_eq!(fields.get(4), Some(&"0"), "{out}");
    let out = fio(
        &server.uri("disk"),
        &[
            "--bs=64k",
            "--size=16M",
            "--offset_increment=16M",
            "--numjobs=4",
            "--iodepth=16",
        ],
    );
    let jobs: Vec<&str> = out.lines().filter(|l| l.contains(';')).collect();
    assert_eq!(jobs.len(), 4, "{out}");
    for job in jobs {
        assert_eq!(job.split(';').nth(4), Some("0"), "{job}");
    }
}

/// A full session must still work: handshake, write, flush, read back.
fn fresh_client_works(port: u16) {
    let mut raw = RawClient::start(port);
    raw.go("disk");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    raw.request(CMD_WRITE, 1, 8192, 4096, &data);
    assert_eq!(raw.simple(), (0, 1));
    raw.request(CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(raw.simple(), (0, 2));
    raw.request(CMD_READ, 3, 8192, 4096, &[]);
    assert_eq!(raw.simple(), (0, 3));
    assert_eq!(raw.read_bytes(4096), data);
    raw.request(CMD_DISC, 4, 0, 0, &[]);
    raw.expect_closed(Duration::from_secs(5), "a session after NBD_CMD_DISC");
}

// ---------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------

#[test]
fn sixty_four_connections_deep_pipelines_and_a_stalled_client() {
    let server = ServerProcess::start(&["--memory", "disk=64M"]);
    let port = server.port;

    // A client that asks for 32 MiB and never reads the reply.
    let mut stalled = RawClient::start(port);
    stalled.go("disk");
    stalled.request(CMD_READ, 1, 0, 32 << 20, &[]);

    // 64 connections at once, each with 160 pipelined requests in flight:
    // 80 writes then 80 reads of distinct blocks, all sent before any
    // reply is read (replies are read by a second thread).
    let mut handles = Vec::new();
    let mut clients: Vec<RawClient> = (0..64).map(|_| RawClient::start(port)).collect();
    for client in &mut clients {
        client.go("disk");
    }
    for (index, mut client) in clients.into_iter().enumerate() {
        handles.push(std::thread::spawn(move || {
            let base = index as u64 * (1 << 20);
            let block = move |i: u64| vec![(index as u8) ^ (i as u8); 4096];
            let mut reader = client.try_clone();
            let collector = std::thread::spawn(move || {
                let mut seen = Vec::new();
                for _ in 0..80 {
                    let (error, cookie) = reader.simple();
                    assert_eq!(error, 0);
                    seen.push(cookie);
                }
                for i in 0..80u64 {
                    let (error, cookie) = reader.simple();
                    assert_eq!((error, cookie), (0, 1000 + i));
                    assert_eq!(reader.read_bytes(4096), block(i));
                }
                seen.sort();
                assert_eq!(seen, (0..80).collect::<Vec<u64>>());
            });
            let mut batch = Vec::new();
            for i in 0..80u64 {
                batch.extend_from_slice(&request_bytes(CMD_WRITE, 0, i, base + i * 4096, 4096));
                batch.extend_from_slice(&block(i));
            }
            for i in 0..80u64 {
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
        }));
    }
    for handle in handles {
        handle.join().expect("client thread");
    }

    // One connection with 1024 reads in flight, sent in one go.
    let mut deep = RawClient::start(port);
    deep.go("disk");
    let mut reader = deep.try_clone();
    let collector = std::thread::spawn(move || {
        for i in 0..1024u64 {
            assert_eq!(reader.simple(), (0, i));
            reader.read_bytes(512);
        }
    });
    let mut batch = Vec::new();
    for i in 0..1024u64 {
        batch.extend_from_slice(&request_bytes(CMD_READ, 0, i, i * 512, 512));
    }
    deep.send(&batch);
    collector.join().expect("deep pipeline");

    // The stalled client is still there and still stalled; others worked.
    fresh_client_works(port);
    stalled.stream.shutdown(Shutdown::Both).ok();
}

// ---------------------------------------------------------------------
// Negative tests over a raw socket
// ---------------------------------------------------------------------

#[test]
fn negative_handshake_cases() {
    let mut server =
        ServerProcess::start(&["--memory", "disk=16M", "--handshake-timeout-ms", "1500"]);
    let port = server.port;

    // Unknown client flags: dropped.
    let mut raw = RawClient::connect(port);
    raw.read_bytes(18);
    raw.send(&0x8000_0001u32.to_be_bytes());
    raw.expect_closed(Duration::from_secs(5), "unknown client flags");

    // Bad option magic: dropped.
    let mut raw = RawClient::start(port);
    raw.send(&[0x42; 16]);
    raw.expect_closed(Duration::from_secs(5), "bad option magic");

    // Unknown options are refused and negotiation goes on.
    let mut raw = RawClient::start(port);
    raw.option(0x1234, b"abc");
    assert_eq!(raw.option_reply().1, REP_ERR_UNSUP);
    // Option data longer than the server buffers (but really sent).
    raw.option(OPT_GO, &vec![0u8; 100_000]);
    assert_eq!(raw.option_reply().1, REP_ERR_TOO_BIG);
    // Name length far over the option length.
    let mut data = go_data("disk");
    data[..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    raw.option(OPT_GO, &data);
    assert_eq!(raw.option_reply().1, REP_ERR_INVALID);
    // Overlong export name.
    raw.option(OPT_GO, &go_data(&"x".repeat(5000)));
    assert_eq!(raw.option_reply().1, REP_ERR_INVALID);
    // Unknown export.
    raw.option(OPT_GO, &go_data("nonexistent"));
    assert_eq!(raw.option_reply().1, REP_ERR_UNKNOWN);
    assert_eq!(raw.go("disk").0, 16 << 20);

    // NBD_OPT_EXPORT_NAME cannot return errors: overlong or unknown names
    // end the session.
    let mut raw = RawClient::start(port);
    raw.option(OPT_EXPORT_NAME, "y".repeat(5000).as_bytes());
    raw.expect_closed(
        Duration::from_secs(5),
        "NBD_OPT_EXPORT_NAME with an overlong name",
    );
    let mut raw = RawClient::start(port);
    raw.option(OPT_EXPORT_NAME, b"nonexistent");
    raw.expect_closed(
        Duration::from_secs(5),
        "NBD_OPT_EXPORT_NAME with an unknown name",
    );

    // Option length far over what was sent: the server waits for the
    // data, then the handshake timeout closes the connection.
    let mut raw = RawClient::start(port);
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&OPT_GO.to_be_bytes());
    header.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    header.extend_from_slice(b"short");
    raw.send(&header);
    let started = Instant::now();
    raw.expect_closed(Duration::from_secs(6), "option length over what was sent");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the timeout"
    );

    // An idle handshake times out too.
    let mut raw = RawClient::connect(port);
    raw.read_bytes(18);
    raw.expect_closed(Duration::from_secs(6), "an idle handshake");

    // Disconnects at every stage of the handshake and mid-request.
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
    let handshake_len = script.len();
    script.extend_from_slice(&request_bytes(CMD_WRITE, 0, 9, 0, 65536));
    script.extend_from_slice(&[0xee; 1000]);
    let mut cuts: Vec<usize> = (0..=handshake_len + 28).collect();
    cuts.extend([handshake_len + 100, script.len()]);
    for cut in cuts {
        let mut raw = RawClient::connect(port);
        if cut % 2 == 0 {
            raw.read_bytes(18);
        }
        raw.send(&script[..cut]);
        drop(raw);
    }
    // Mid-read: ask for 16 MiB and hang up after a few bytes.
    let mut raw = RawClient::start(port);
    raw.go("disk");
    raw.request(CMD_READ, 1, 0, 16 << 20, &[]);
    assert_eq!(raw.simple(), (0, 1));
    raw.read_bytes(100);
    drop(raw);

    server.assert_alive();
    fresh_client_works(port);
}

#[test]
fn negative_transmission_cases() {
    let mut server = ServerProcess::start(&[
        "--memory",
        "disk=16M",
        "--memory",
        "ro=1M",
        "--read-only",
        "ro",
    ]);
    let port = server.port;
    let mut raw = RawClient::start(port);
    let (size, _) = raw.go("disk");

    // Past the end, overflowing offsets, too large, unknown command.
    raw.request(CMD_READ, 1, size - 512, 4096, &[]);
    assert_eq!(raw.simple(), (EINVAL, 1));
    raw.request(CMD_READ, 2, u64::MAX - 1023, 4096, &[]);
    assert_eq!(raw.simple(), (EINVAL, 2));
    raw.request(CMD_READ, 3, 0, 64 << 20, &[]);
    assert_eq!(raw.simple(), (EINVAL, 3));
    raw.request(CMD_WRITE, 4, size - 100, 4096, &[0x33; 4096]);
    assert_eq!(raw.simple(), (ENOSPC, 4));
    raw.request(CMD_WRITE, 5, u64::MAX - 10, 4096, &[0x33; 4096]);
    assert_eq!(raw.simple(), (ENOSPC, 5));
    raw.request(77, 6, 0, 512, &[]);
    assert_eq!(raw.simple(), (EINVAL, 6));
    // The payloads of the refused writes were skipped: the stream is in
    // sync and the export untouched.
    raw.request(CMD_READ, 7, size - 100, 100, &[]);
    assert_eq!(raw.simple(), (0, 7));
    assert_eq!(raw.read_bytes(100), vec![0u8; 100]);

    // Bad request magic: hard disconnect.
    let mut bad = 0xdead_beefu32.to_be_bytes().to_vec();
    bad.extend_from_slice(&[0; 24]);
    raw.send(&bad);
    raw.expect_closed(Duration::from_secs(5), "bad request magic");

    // Read-only export: EPERM.
    let mut raw = RawClient::start(port);
    raw.go("ro");
    raw.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(raw.simple(), (EPERM, 1));
    raw.request(CMD_READ, 2, 0, 512, &[]);
    assert_eq!(raw.simple(), (0, 2));
    raw.read_bytes(512);

    server.assert_alive();
    fresh_client_works(port);
}

#[test]
fn handshake_reply_is_only_size_and_flags_with_no_zeroes() {
    let server = ServerProcess::start(&["--memory", "disk=1M"]);
    let mut raw = RawClient::start(server.port);
    raw.option(OPT_EXPORT_NAME, b"disk");
    assert_eq!(raw.u64(), 1 << 20);
    let flags = raw.u16();
    assert_eq!(flags & 1, 1);
    // Next bytes are a reply to our request, not 124 zeroes.
    raw.request(CMD_READ, 5, 0, 8, &[]);
    assert_eq!(raw.simple(), (0, 5));
    assert_eq!(raw.read_bytes(8), vec![0u8; 8]);
}

/// libnbd (through nbdsh) in strict mode, with and without structured
/// replies: FUA, DF, fast zero, NO_HOLE, trim, cache, flush, block status
/// with REQ_ONE, and the error values libnbd reports.
#[test]
fn nbdsh_strict_libnbd_checks() {
    let dir = temp_dir("nbdsh");
    let raw_file = dir.join("raw.img");
    std::fs::write(&raw_file, vec![0u8; 4 << 20]).expect("create raw file");
    let raw_spec = format!("raw={}", raw_file.display());
    let server = ServerProcess::start(&["--memory", "disk=16M", "--file", &raw_spec]);
    let script = format!(
        r#"
import nbd, errno
port = {port}
for structured in (True, False):
    h = nbd.NBD()
    h.set_strict_mode(nbd.STRICT_COMMANDS | nbd.STRICT_FLAGS | nbd.STRICT_BOUNDS | nbd.STRICT_ZERO_SIZE)
    h.set_request_structured_replies(structured)
    if structured:
        h.add_meta_context("base:allocation")
    h.connect_uri(f"nbd://127.0.0.1:{{port}}/disk")
    assert h.get_structured_replies_negotiated() == structured
    assert h.can_meta_context("base:allocation") == structured
    assert h.can_df() == structured
    size = h.get_size()
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
    h.trim(65536, 0)
    h.cache(65536, 0)
    h.flush()
    if structured:
        seen = []
        h.block_status(size, 0, lambda ctx, off, ents, err: seen.append((ctx, off, list(ents))))
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
h.connect_uri(f"nbd://127.0.0.1:{{port}}/raw")
assert not h.can_fast_zero() and h.can_multi_conn() and h.can_flush()
h.set_strict_mode(0)
try:
    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
    raise SystemExit("fast zero must be refused")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
h.pwrite(b"raw!", 100, nbd.CMD_FLAG_FUA)
h.shutdown()
print("nbdsh checks passed")
"#,
        port = server.port
    );
    let script_path = dir.join("checks.py");
    std::fs::write(&script_path, script).expect("write script");
    // `run_tool` puts /usr/bin first on PATH: nbdsh needs the system python
    // (docs/platform.md).
    let output = run_tool(
        "nbdsh",
        &[
            "-c",
            &format!("exec(open('{}').read())", script_path.display()),
        ],
        TOOL_TIMEOUT,
    );
    assert!(
        output.success() && output.stdout.contains("nbdsh checks passed"),
        "nbdsh failed: {:?}\n{}\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
    let on_disk = std::fs::read(&raw_file).expect("read raw file");
    assert_eq!(&on_disk[100..104], b"raw!", "FUA write reached the file");
    let _ = std::fs::remove_dir_all(&dir);
}
