//! NBD test clients: real client tools run with a deadline, and a raw-socket
//! client that speaks the fixed-newstyle handshake and simple replies byte
//! by byte (NBD proto.md), for negative tests real clients cannot send.
//!
//! Shared by `tests/tests/system/nbd.rs` (against the booted appliance) and
//! `storage/serve/tests/real_clients.rs` (against `daxbox-serve`, the same
//! storage service on the host, through a dev-dependency). The constants
//! are written out from proto.md here on purpose, not taken from
//! `daxbox-nbd`'s `wire` module: the tests must not trust the
//! implementation's own values.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// `IHAVEOPT`: option request magic (proto.md "Option haggling").
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Option reply magic.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Request magic (proto.md "Request message").
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER` (one LIST entry).
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// `NBD_REP_ERR_POLICY`.
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;

/// `NBD_EPERM`.
pub const EPERM: u32 = 1;
/// `NBD_EINVAL`.
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`.
pub const ENOSPC: u32 = 28;

/// `nbd://127.0.0.1:PORT/EXPORT`.
pub fn uri(port: u16, export: &str) -> String {
    format!("nbd://127.0.0.1:{port}/{export}")
}

/// What a client tool did.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossy UTF-8.
    pub stdout: String,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
}

impl ToolOutput {
    /// True when the tool exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs a client tool with a deadline. A tool that cannot be started (not
/// installed) or that outlives `timeout` (it is then killed) is a panic
/// naming the command: a missing client is a failure, never a skip.
///
/// `/usr/bin` goes first on `PATH`: `nbdsh` needs the system python, which
/// has the libnbd module (docs/platform.md).
pub fn run_tool(tool: &str, args: &[&str], timeout: Duration) -> ToolOutput {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new(tool)
        .args(args)
        .env("PATH", path)
        // fio leaves `*-verify.state` files in its working directory: keep
        // them out of the source tree.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "required client tool `{tool}` could not be run ({error}); install it \
                 (libnbd-bin, python3-libnbd, qemu-utils, fio: see docs/platform.md)"
            )
        });
    let drain = |source: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut source) = source {
                let _ = source.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "`{tool} {}` did not finish within {timeout:?} (killed)\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        );
    };
    ToolOutput {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// [`run_tool`] that must succeed; returns standard output.
pub fn run_tool_ok(tool: &str, args: &[&str], timeout: Duration) -> String {
    let output = run_tool(tool, args, timeout);
    assert!(
        output.success(),
        "`{tool} {}` failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.code,
        output.stdout,
        output.stderr
    );
    output.stdout
}

/// Runs `qemu-io -f raw URI -c PATTERN` for each `(uri, pattern, what)`
/// (a `read -P BYTE OFFSET LENGTH` pattern check) and asserts that it
/// succeeded and verified, naming `what` when it did not.
pub fn assert_qemu_io_patterns(checks: &[(&str, &str, &str)], timeout: Duration) {
    for (uri, pattern, what) in checks {
        let out = run_tool_ok("qemu-io", &["-f", "raw", uri, "-c", pattern], timeout);
        assert!(
            !out.contains("Pattern verification failed"),
            "{what}: {pattern}:\n{out}"
        );
    }
}

/// The percentage on the `in 2 MiB: ... (N%)` line of the storage shell's
/// `stat NAME` (how much of a file is mappable with 2 MiB pages). Panics,
/// naming the output, when there is no such line.
fn mappable_percent(stat: &str) -> u32 {
    let line = stat
        .lines()
        .find(|l| l.starts_with("in 2 MiB:"))
        .unwrap_or_else(|| panic!("stat prints no `in 2 MiB:` line:\n{stat}"));
    let open = line.find('(').expect("the line has a percentage") + 1;
    let close = line.find('%').expect("the line has a percentage");
    line[open..close]
        .trim()
        .parse()
        .expect("a whole percentage")
}

/// Idle-time compaction (issue 17), the same scenario for the kernel's
/// event loop (`tests/tests/system/clone.rs`) and `daxbox-serve`'s
/// (`storage/serve/tests/real_clients.rs`): a clone of the 16 MiB file
/// `golden` (created and served on `port` by the caller) is rewritten over
/// 800 KiB of one chunk (below the write-time threshold of half a chunk, so
/// the write copies only the blocks it covers) and must become 2 MiB-mappable
/// again with no `compact` command once the service is idle. `command` runs
/// a storage shell command and returns its output (failing the test on an
/// error). `stat` is polled until `timeout`; the bytes are checked with
/// qemu-io read patterns and the filesystem with `fsck`.
pub fn idle_pass_gathers_a_rewritten_chunk(
    port: u16,
    command: &mut dyn FnMut(&str) -> String,
    timeout: Duration,
) {
    let golden = uri(port, "golden");
    // Fill all 8 chunks of the original (each 2 MiB write maps a whole
    // aligned chunk).
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &golden, "-c", "write -P 0x11 0 16M"],
        timeout,
    );
    command("clone golden vm1");
    let before = command("stat vm1");
    assert_eq!(mappable_percent(&before), 100, "a fresh clone:\n{before}");
    // 800 KiB (200 blocks of 512) into chunk 1 of the clone.
    let vm1 = uri(port, "vm1");
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &vm1, "-c", "write -P 0x5a 2M 800K"],
        timeout,
    );
    println!("stat vm1 right after the write:\n{}", command("stat vm1"));
    // No `compact`: wait for the idle pass.
    let deadline = Instant::now() + timeout;
    let stat = loop {
        let stat = command("stat vm1");
        if mappable_percent(&stat) == 100 && stat.contains("gathered 1 chunk(s)") {
            break stat;
        }
        assert!(
            Instant::now() < deadline,
            "the idle pass never gathered chunk 1 of vm1:\n{stat}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    println!("stat vm1 after the idle pass:\n{stat}");
    assert!(
        stat.contains("last pmem0:vm1 chunk 1"),
        "the idle pass names what it gathered:\n{stat}"
    );
    // The clone reads its own bytes, the original its own.
    assert_qemu_io_patterns(
        &[
            (&vm1, "read -P 0x11 0 2M", "vm1 before the rewrite"),
            (&vm1, "read -P 0x5a 2M 800K", "vm1's rewritten range"),
            (&vm1, "read -P 0x11 2848K 13536K", "vm1 after the rewrite"),
            (&golden, "read -P 0x11 0 16M", "the original"),
        ],
        timeout,
    );
    let fsck = command("fsck");
    assert!(fsck.contains("clean"), "fsck after the idle pass:\n{fsck}");
}

/// Deterministic pseudo-random data with a 1 MiB run of zeros in every
/// five, so sparse-aware copies take both paths.
pub fn test_image(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut data = vec![0u8; len];
    for (index, block) in data.chunks_mut(1 << 20).enumerate() {
        if index % 5 == 3 {
            continue;
        }
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
    }
    data
}

/// The payload of `NBD_OPT_GO` / `NBD_OPT_INFO` for `name`, no info requests.
pub fn go_data(name: &str) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    data
}

/// One request header (28 bytes) in big-endian wire order.
pub fn request_bytes(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut bytes = REQUEST_MAGIC.to_be_bytes().to_vec();
    bytes.extend_from_slice(&flags.to_be_bytes());
    bytes.extend_from_slice(&kind.to_be_bytes());
    bytes.extend_from_slice(&cookie.to_be_bytes());
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

/// A raw NBD client on a TCP stream. Every read has a timeout; a short read
/// is a panic saying how many bytes were expected.
pub struct RawClient {
    /// The connection (public so tests can clone or shut it down).
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects to 127.0.0.1:`port` with a 30 s read timeout.
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|error| panic!("connecting to 127.0.0.1:{port}: {error}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("setting a read timeout on a fresh socket");
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("setting a write timeout on a fresh socket");
        stream
            .set_nodelay(true)
            .expect("setting TCP_NODELAY on a fresh socket");
        RawClient { stream }
    }

    /// A second handle on the same connection (for a reply-reading thread).
    pub fn try_clone(&self) -> RawClient {
        RawClient {
            stream: self.stream.try_clone().expect("cloning a TCP stream"),
        }
    }

    /// Reads exactly `count` bytes.
    pub fn read_bytes(&mut self, count: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; count];
        self.stream
            .read_exact(&mut bytes)
            .unwrap_or_else(|error| panic!("reading {count} bytes from the server: {error}"));
        bytes
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> u16 {
        let bytes = self.read_bytes(2);
        u16::from_be_bytes([bytes[0], bytes[1]])
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.read_bytes(4));
        u32::from_be_bytes(bytes)
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.read_bytes(8));
        u64::from_be_bytes(bytes)
    }

    /// Sends bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|error| panic!("sending {} bytes: {error}", bytes.len()));
    }

    /// Sends bytes, ignoring errors (the server may already have closed).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads the 18-byte greeting and checks it is fixed newstyle.
    pub fn greeting(&mut self) {
        let greeting = self.read_bytes(18);
        assert_eq!(&greeting[..8], b"NBDMAGIC", "greeting magic");
        assert_eq!(&greeting[8..16], b"IHAVEOPT", "newstyle magic");
        assert_eq!(
            greeting[17] & 1,
            1,
            "server must set NBD_FLAG_FIXED_NEWSTYLE"
        );
    }

    /// Connects, reads the greeting and sends the client flags (fixed
    /// newstyle + no zeroes).
    pub fn start(port: u16) -> RawClient {
        let mut client = RawClient::connect(port);
        client.greeting();
        client.send(&3u32.to_be_bytes());
        client
    }

    /// Sends one option with its data.
    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = IHAVEOPT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        self.send(&bytes);
    }

    /// Reads one option reply: (option, reply type, data).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), OPTION_REPLY_MAGIC, "option reply magic");
        let option = self.u32();
        let kind = self.u32();
        let len = self.u32() as usize;
        (option, kind, self.read_bytes(len))
    }

    /// `NBD_OPT_GO` that must succeed; returns (size, transmission flags).
    pub fn go(&mut self, name: &str) -> (u64, u16) {
        self.option(OPT_GO, &go_data(name));
        let mut export = None;
        loop {
            let (_, kind, data) = self.option_reply();
            match kind {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && data[..2] == [0, 0] => {
                    let mut size = [0u8; 8];
                    size.copy_from_slice(&data[2..10]);
                    export = Some((
                        u64::from_be_bytes(size),
                        u16::from_be_bytes([data[10], data[11]]),
                    ));
                }
                REP_INFO => {}
                other => panic!("NBD_OPT_GO {name:?} failed with reply type {other:#x}"),
            }
        }
        export.unwrap_or_else(|| panic!("NBD_OPT_GO {name:?} acknowledged without NBD_INFO_EXPORT"))
    }

    /// Sends one request header plus `payload`.
    pub fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut bytes = request_bytes(kind, 0, cookie, offset, len);
        bytes.extend_from_slice(payload);
        self.send(&bytes);
    }

    /// Reads one simple reply header: (error, cookie).
    pub fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC, "simple reply magic");
        (self.u32(), self.u64())
    }

    /// Waits for the server to close the connection; fails if it sends
    /// anything or keeps it open beyond `limit`.
    pub fn expect_closed(&mut self, limit: Duration, what: &str) {
        self.stream
            .set_read_timeout(Some(limit))
            .expect("setting a read timeout");
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            Ok(_) => panic!("{what}: the server sent data instead of closing"),
            Err(error) => {
                panic!("{what}: the server did not close the connection within {limit:?}: {error}")
            }
        }
    }
}

/// `nbdinfo --map` rows as (offset, length, type).
pub fn map_rows(map: &str) -> Vec<(u64, u64, u32)> {
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

/// Runs an nbdsh script that must print `nbdsh script ok` at its end;
/// `what` names the check in the failure.
pub fn nbdsh(script: &str, what: &str) {
    let output = run_tool("nbdsh", &["-c", script], Duration::from_secs(60));
    assert!(
        output.success() && output.stdout.contains("nbdsh script ok"),
        "{what}: nbdsh failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
}

/// Fields of fio's `--output-format=terse --terse-version=3` line, 0-based
/// (fio HOWTO "Terse output" counts from 1: read bandwidth KiB/s is field
/// 7, read IOPS 8, write bandwidth 48, write IOPS 49).
pub mod terse {
    /// Read bandwidth, KiB/s.
    pub const READ_BW: usize = 6;
    /// Read IOPS.
    pub const READ_IOPS: usize = 7;
    /// Write bandwidth, KiB/s.
    pub const WRITE_BW: usize = 47;
    /// Write IOPS.
    pub const WRITE_IOPS: usize = 48;

    /// Field `index` of the first terse v3 line of `output` (one starting
    /// with `3;`), as a number.
    pub fn field(output: &str, index: usize) -> Option<f64> {
        let line = output.lines().find(|line| line.starts_with("3;"))?;
        line.split(';').nth(index)?.parse().ok()
    }

    /// The write (`write`) or read IOPS of the first terse v3 line.
    pub fn iops(output: &str, write: bool) -> Option<f64> {
        field(output, if write { WRITE_IOPS } else { READ_IOPS })
    }

    /// The write (`write`) or read bandwidth of the first terse v3 line,
    /// KiB/s.
    pub fn kib_per_s(output: &str, write: bool) -> Option<f64> {
        field(output, if write { WRITE_BW } else { READ_BW })
    }
}

/// The arguments of a fio run with the `nbd` engine: random writes
/// verified with crc32c, terse output, then `extra`.
pub fn fio_args(uri: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        format!("--name={name}"),
        "--ioengine=nbd".to_string(),
        format!("--uri={uri}"),
        "--rw=randwrite".to_string(),
        "--verify=crc32c".to_string(),
        "--verify_fatal=1".to_string(),
        "--output-format=terse".to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// Runs fio (see [`fio_args`]) and checks it succeeded with `jobs` terse
/// lines whose error field (the fifth) is 0; returns the terse output.
pub fn fio(
    uri: &str,
    name: &str,
    extra: &[&str],
    jobs: usize,
    timeout: Duration,
    what: &str,
) -> String {
    let args = fio_args(uri, name, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_tool("fio", &refs, timeout);
    assert!(
        output.success(),
        "{what}: fio failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
    let lines: Vec<&str> = output
        .stdout
        .lines()
        .filter(|line| line.contains(';'))
        .collect();
    assert_eq!(
        lines.len(),
        jobs,
        "{what}: one terse line per job\n{}",
        output.stdout
    );
    for line in lines {
        assert_eq!(
            line.split(';').nth(4),
            Some("0"),
            "{what}: job error\n{line}"
        );
    }
    output.stdout
}

/// A full session on export `disk` must still work: handshake, write,
/// flush, read back, disconnect. `what` names the check that came before.
pub fn fresh_client_works(port: u16, what: &str) {
    let mut client = RawClient::start(port);
    client.go("disk");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    client.request(CMD_WRITE, 1, 8192, 4096, &data);
    assert_eq!(client.simple(), (0, 1), "fresh client after {what}: write");
    client.request(CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(client.simple(), (0, 2), "fresh client after {what}: flush");
    client.request(CMD_READ, 3, 8192, 4096, &[]);
    assert_eq!(client.simple(), (0, 3), "fresh client after {what}: read");
    assert_eq!(
        client.read_bytes(4096),
        data,
        "fresh client after {what}: data"
    );
    client.request(CMD_DISC, 4, 0, 0, &[]);
    client.expect_closed(
        Duration::from_secs(10),
        &format!("fresh client after {what}: NBD_CMD_DISC"),
    );
}

/// One client of a concurrency check: `writes` distinct 4 KiB blocks
/// written at `base`, then `reads` reads (read `i` reads block
/// `i % writes`), all sent in one batch before any reply is read; a second
/// thread reads the replies and checks each one and its data. Ends with
/// `NBD_CMD_DISC` and hands the client back (to wait for the close).
pub fn pipelined_writes_then_reads(
    mut client: RawClient,
    index: usize,
    base: u64,
    writes: u64,
    reads: u64,
) -> RawClient {
    let block = move |i: u64| vec![(index as u8) ^ (i as u8).wrapping_mul(31); 4096];
    let mut reader = client.try_clone();
    let collector = thread::spawn(move || {
        let mut cookies = Vec::new();
        for _ in 0..writes {
            let (error, cookie) = reader.simple();
            assert_eq!(error, 0, "client {index}: pipelined write");
            cookies.push(cookie);
        }
        for i in 0..reads {
            assert_eq!(
                reader.simple(),
                (0, 1000 + i),
                "client {index}: pipelined read order"
            );
            assert_eq!(
                reader.read_bytes(4096),
                block(i % writes),
                "client {index}: read {i}"
            );
        }
        cookies.sort();
        assert_eq!(
            cookies,
            (0..writes).collect::<Vec<u64>>(),
            "client {index}: write cookies"
        );
    });
    let mut batch = Vec::new();
    for i in 0..writes {
        batch.extend_from_slice(&request_bytes(CMD_WRITE, 0, i, base + i * 4096, 4096));
        batch.extend_from_slice(&block(i));
    }
    for i in 0..reads {
        batch.extend_from_slice(&request_bytes(
            CMD_READ,
            0,
            1000 + i,
            base + (i % writes) * 4096,
            4096,
        ));
    }
    client.send(&batch);
    collector.join().expect("reply collector");
    client.request(CMD_DISC, 0, 0, 0, &[]);
    client
}

/// A client of `export` that reads its 8 MiB reply slowly (64 KiB every
/// 20 ms) on a thread, then sends `NBD_CMD_DISC` and hands the client back.
pub fn slow_reader(port: u16, export: &str) -> thread::JoinHandle<RawClient> {
    let mut slow = RawClient::start(port);
    slow.go(export);
    slow.request(CMD_READ, 2, 32 << 20, 8 << 20, &[]);
    thread::spawn(move || {
        assert_eq!(slow.simple(), (0, 2), "slow client: 8 MiB read");
        for _ in 0..128 {
            slow.read_bytes(64 << 10);
            thread::sleep(Duration::from_millis(20));
        }
        slow.request(CMD_DISC, 3, 0, 0, &[]);
        slow
    })
}

/// One connection to `export` with 1024 reads of 512 bytes in flight, sent
/// in one go; every reply must come back, in order.
pub fn deep_pipeline(port: u16, export: &str) {
    let mut deep = RawClient::start(port);
    deep.go(export);
    let mut reader = deep.try_clone();
    let collector = thread::spawn(move || {
        for i in 0..1024u64 {
            assert_eq!(reader.simple(), (0, i), "deep pipeline: reply {i} in order");
            reader.read_bytes(512);
        }
    });
    let mut batch = Vec::new();
    for i in 0..1024u64 {
        batch.extend_from_slice(&request_bytes(CMD_READ, 0, i, i * 512, 512));
    }
    deep.send(&batch);
    collector
        .join()
        .expect("1024 requests in flight on one connection");
}
