//! What `soak` and `powercut` share: running a client tool with a
//! deadline (an error, not a panic, when it hangs or is missing), a seeded
//! pseudo-random generator, and the parsers of what the real clients print
//! (fio's terse lines and verify complaints, qemu-io's result lines, curl's
//! `--write-out`, the shell's `fsck`). The parsers are pure and
//! host-tested: a parser that stops understanding a tool fails a test, not
//! a soak run hours later.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a client process did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Exit code; `None` when killed by a signal or by the deadline.
    pub code: Option<i32>,
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
    /// Killed because it outlived its deadline.
    pub timed_out: bool,
}

impl Outcome {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// A one-paragraph description for an error report: the status and
    /// the last lines of stderr and stdout.
    pub fn describe(&self, what: &str) -> String {
        let status = if self.timed_out {
            "killed at its deadline".to_string()
        } else {
            match self.code {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_string(),
            }
        };
        let tail = |text: &str| {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(4)..].join(" | ")
        };
        format!(
            "{what}: {status}; stderr: {}; stdout: {}",
            tail(&self.stderr),
            tail(&self.stdout_text())
        )
    }
}

/// Runs `program args` in `cwd` with `input` on stdin, killing it if it
/// outlives `timeout`. The client runs in a process group of its own, and
/// the kill is SIGKILL to that group (`kill -KILL -- -PID`, the PID being
/// the client's): fio forks a process per job, and a job left behind would
/// hold the output pipes open for ever. `/usr/bin` goes first on `PATH`, as
/// in the system tests (nbdsh needs the system python). A program that
/// cannot be started is an `Err` naming it.
pub fn run_client(
    program: &str,
    args: &[String],
    cwd: &Path,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Outcome, String> {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", path)
        .current_dir(cwd)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| {
            format!(
                "`{program}` could not be started ({error}): install it with `cargo xtask setup`"
            )
        })?;
    let feeder = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => {
            let bytes = bytes.to_vec();
            Some(thread::spawn(move || {
                // A client that exits early closes its stdin: not our error.
                let _ = stdin.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.read_to_end(&mut bytes);
        }
        bytes
    });
    let err_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                timed_out = true;
                kill_group(child.id());
                let _ = child.kill();
                break child.wait().ok();
            }
            Err(_) => break None,
        }
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Ok(Outcome {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        timed_out,
    })
}

/// SIGKILL to the process group that `leader` (a client we started with
/// `process_group(0)`) leads.
fn kill_group(leader: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{leader}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SplitMix64: a small, well-known seeded generator (Steele, Lea, Flood,
/// "Fast splittable pseudorandom number generators", 2014). The runs only
/// need reproducible choices from a printed seed, not cryptography, and
/// xtask stays dependency-free.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0; the tiny modulo bias does not
    /// matter here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// A duration between `low` and `high`, uniformly in milliseconds.
    pub fn duration(&mut self, low: Duration, high: Duration) -> Duration {
        let low_ms = low.as_millis() as u64;
        let span = (high.as_millis() as u64).saturating_sub(low_ms);
        Duration::from_millis(low_ms + self.below(span + 1))
    }

    /// Fills `buffer` with random bytes.
    pub fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// A seed from the clock and the process id, for runs given no `--seed`.
pub fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
}

/// One job's line of fio's `--output-format=terse --terse-version=3`
/// (fio HOWTO, "Terse output": field 3 job name, 5 error, 6 read KiB,
/// 47 write KiB; 1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FioJob {
    /// Job name.
    pub name: String,
    /// The job's errno (0 = none).
    pub error: i32,
    /// KiB read (a verify phase reads).
    pub read_kib: u64,
    /// KiB written.
    pub write_kib: u64,
}

/// The terse v3 job lines in fio's stdout (other lines are ignored).
pub fn fio_jobs(stdout: &str) -> Vec<FioJob> {
    stdout
        .lines()
        .filter(|line| line.starts_with("3;"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(';').collect();
            Some(FioJob {
                name: fields.get(2)?.to_string(),
                error: fields.get(4)?.parse().ok()?,
                read_kib: fields.get(5)?.parse().ok()?,
                write_kib: fields.get(46)?.parse().ok()?,
            })
        })
        .collect()
}

/// fio's own words for a block whose contents are wrong (verify.c:
/// `...: verify failed at file ...`, `verify: bad magic header ...`,
/// `verify: bad header ...`, `verify type mismatch ...`).
const FIO_VERIFY_COMPLAINTS: [&str; 4] = [
    "verify failed",
    "bad magic header",
    "verify: bad header",
    "verify type mismatch",
];

/// How many blocks fio reported as failing verification (one complaint
/// per line), in its stdout and stderr together.
pub fn fio_verify_failures(output: &str) -> u64 {
    output
        .lines()
        .filter(|line| {
            FIO_VERIFY_COMPLAINTS
                .iter()
                .any(|complaint| line.contains(complaint))
        })
        .count() as u64
}

/// The offsets of the blocks fio reported as failing verification (`...
/// at file NAME offset N, length ...`), in order, one per complaint.
pub fn fio_verify_failure_offsets(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter(|line| fio_verify_failures(line) > 0)
        .filter_map(|line| {
            let rest = &line[line.find(" offset ")? + " offset ".len()..];
            let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
            number.parse().ok()
        })
        .collect()
}

/// The offsets of the writes in a fio latency log written with
/// `--write_lat_log=PREFIX --log_offset=1`: one line per completed I/O,
/// `time, value, direction, block size, offset, priority` (fio HOWTO, "Log
/// File Formats"; direction 1 = write). fio logs only I/O that completed
/// without error, so for a write these are the acknowledged ones.
pub fn lat_log_write_offsets(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() < 5 || fields[2] != "1" {
                return None;
            }
            fields[4].parse().ok()
        })
        .collect()
}

/// EILSEQ: the errno fio gives a job whose data failed verification.
pub const FIO_EILSEQ: i32 = 84;

/// What a qemu-io run with `-c` commands showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuIoResult {
    /// Bytes reported by complete `wrote N/N bytes` lines.
    pub written: u64,
    /// Bytes reported by complete `read N/N bytes` lines.
    pub read: u64,
    /// `Pattern verification failed` lines.
    pub pattern_failures: u64,
    /// Lines reporting a failed command (`... failed: ...`) or a short
    /// transfer (`wrote 4096/65536`).
    pub errors: Vec<String>,
}

/// Parses qemu-io's output: `wrote 65536/65536 bytes at offset 0`, `read
/// 65536/65536 bytes at offset 0`, `Pattern verification failed at offset
/// 0, 65536 bytes`, `write failed: Input/output error`.
pub fn parse_qemu_io(output: &str) -> QemuIoResult {
    let mut result = QemuIoResult::default();
    for line in output.lines() {
        let line = line.trim();
        if line.starts_with("Pattern verification failed") {
            result.pattern_failures += 1;
            continue;
        }
        let transfer = line
            .strip_prefix("wrote ")
            .map(|rest| (true, rest))
            .or_else(|| line.strip_prefix("read ").map(|rest| (false, rest)));
        if let Some((write, rest)) = transfer {
            let counts = rest.split_whitespace().next().and_then(|fraction| {
                let (done, asked) = fraction.split_once('/')?;
                Some((done.parse::<u64>().ok()?, asked.parse::<u64>().ok()?))
            });
            match counts {
                Some((done, asked)) if done == asked => {
                    if write {
                        result.written += done;
                    } else {
                        result.read += done;
                    }
                }
                _ => result.errors.push(line.to_string()),
            }
            continue;
        }
        if line.contains(" failed: ") || line.starts_with("qemu-io: ") {
            result.errors.push(line.to_string());
        }
    }
    result
}

/// curl's answer with `--write-out '\n%{http_code} %{size_download}'`:
/// the body, the status code and the bytes downloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurlResult {
    /// Response body (when written to stdout).
    pub body: String,
    /// HTTP status (0 when no response).
    pub status: u16,
    /// Body bytes received.
    pub size: u64,
}

/// The `--write-out` format [`parse_curl`] reads.
pub const CURL_WRITE_OUT: &str = "\n%{http_code} %{size_download}";

/// Parses curl's stdout ending in [`CURL_WRITE_OUT`].
pub fn parse_curl(stdout: &str) -> Option<CurlResult> {
    let (body, last) = stdout.rsplit_once('\n')?;
    let mut words = last.split_whitespace();
    let status = words.next()?.parse().ok()?;
    let size = words.next()?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(CurlResult {
        body: body.to_string(),
        status,
        size,
    })
}

/// What the shell's `fsck` said, per device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsckResult {
    /// Devices reported `fsck: clean`.
    pub clean: Vec<String>,
    /// Every other non-empty line (problems, errors).
    pub problems: Vec<String>,
}

impl FsckResult {
    /// At least one device checked, all clean, nothing else said.
    pub fn ok(&self) -> bool {
        !self.clean.is_empty() && self.problems.is_empty()
    }
}

/// Parses `fsck` output: one `pmemN: fsck: clean (T ms)` line per clean
/// device; anything else is a problem.
pub fn parse_fsck(output: &str) -> FsckResult {
    let mut result = FsckResult {
        clean: Vec::new(),
        problems: Vec::new(),
    };
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once(": fsck: clean") {
            Some((device, _)) if !device.contains(' ') => result.clean.push(device.to_string()),
            _ => result.problems.push(line.to_string()),
        }
    }
    result
}

/// Whether serial output shows a kernel crash (the harness's markers).
pub fn crashed(serial: &str) -> Option<String> {
    daxbox_tests::CRASH_MARKERS.iter().find_map(|marker| {
        serial
            .find(marker)
            .map(|at| serial[at..].lines().take(4).collect::<Vec<_>>().join("\n"))
    })
}

/// Parses a positive whole number option value.
pub fn positive(option: &str, value: Option<&String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{option} needs a value"))?;
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{option} wants a whole number > 0, not `{value}`"))
}

/// Parses a seed: decimal or `0x` hex.
pub fn seed_value(value: Option<&String>) -> Result<u64, String> {
    let value = value.ok_or("--seed needs a value")?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|_| format!("--seed wants a number (decimal or 0x hex), not `{value}`"))
}

/// The `--options` a command's help text names (each once, sorted), for
/// the tests that check every one of them parses. fio's own options,
/// quoted in the texts (`--verify*`, `--fsync`, anything with `_`), are
/// left out.
#[cfg(test)]
pub fn options_named_in(usage: &str) -> Vec<&str> {
    let mut named: Vec<&str> = usage
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .filter(|word| !word.contains('_') && !word.starts_with("--verify") && *word != "--fsync")
        .collect();
    named.sort_unstable();
    named.dedup();
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terse_line(name: &str, error: i32, read_kib: u64, write_kib: u64) -> String {
        let mut fields = vec!["0".to_string(); 130];
        fields[0] = "3".into();
        fields[1] = "fio-3.33".into();
        fields[2] = name.into();
        fields[4] = error.to_string();
        fields[5] = read_kib.to_string();
        fields[46] = write_kib.to_string();
        fields.join(";")
    }

    #[test]
    fn fio_terse_lines_give_name_error_and_sizes() {
        let output = format!(
            "fio: connected\n{}\n{}\n",
            terse_line("soak-1", 0, 2048, 2048),
            terse_line("soak-1", 84, 1024, 0)
        );
        assert_eq!(
            fio_jobs(&output),
            [
                FioJob {
                    name: "soak-1".into(),
                    error: 0,
                    read_kib: 2048,
                    write_kib: 2048
                },
                FioJob {
                    name: "soak-1".into(),
                    error: 84,
                    read_kib: 1024,
                    write_kib: 0
                }
            ]
        );
        assert!(fio_jobs("no terse output\n3;short").is_empty());
    }

    #[test]
    fn fio_verify_complaints_are_counted() {
        // Lines as fio 3.33's verify.c prints them.
        let output = "\
crc32c: verify failed at file nbd offset 1048576, length 4096 (requested block: offset=1048576, length=4096, flags=88)
       Expected CRC: 5e2a1d6b
       Received CRC: 00000000
verify: bad magic header 0, wanted acca at file nbd offset 8192, length 4096 (requested block: offset=8192, length=4096)
fio: pid=12, err=84/file:io_u.c:2236, func=io_u_queued_complete, error=Invalid or incomplete multibyte or wide character
";
        assert_eq!(fio_verify_failures(output), 2);
        assert_eq!(fio_verify_failures("fio: connected to NBD server\n"), 0);
    }

    #[test]
    fn fio_failure_offsets_and_latency_logs_parse() {
        let output = "\
crc32c: verify failed at file pc.0.0 offset 19247104, length 4096 (requested block: offset=19247104, length=4096, flags=88)
       Expected CRC: 5e2a1d6b
verify: bad magic header 0, wanted acca at file pc.0.0 offset 37249024, length 4096 (requested block: offset=37249024, length=4096)
fio: pid=3, err=84/file:io_u.c:2190, func=io_u_queued_complete, error=Invalid or incomplete multibyte or wide character
";
        assert_eq!(fio_verify_failure_offsets(output), [19247104, 37249024]);
        // As fio 3.33 writes `--write_lat_log=ack --log_offset=1`.
        let log = "0, 160170, 1, 4096, 4046848, 0\n0, 172362, 1, 4096, 49676288, 0\n\
                   3, 1000, 0, 4096, 8192, 0\ngarbage\n";
        assert_eq!(lat_log_write_offsets(log), [4046848, 49676288]);
    }

    #[test]
    fn qemu_io_lines_parse() {
        let good = "\
wrote 65536/65536 bytes at offset 131072
64 KiB, 1 ops; 00.01 sec (4.5 MiB/sec and 71.9 ops/sec)
read 65536/65536 bytes at offset 131072
64 KiB, 1 ops; 00.00 sec (12 MiB/sec and 195 ops/sec)
";
        let result = parse_qemu_io(good);
        assert_eq!(result.written, 65536);
        assert_eq!(result.read, 65536);
        assert_eq!(result.pattern_failures, 0);
        assert!(result.errors.is_empty(), "{result:?}");

        let bad = "\
Pattern verification failed at offset 0, 65536 bytes
read 65536/65536 bytes at offset 0
write failed: Input/output error
wrote 4096/65536 bytes at offset 0
qemu-io: can't open device nbd://127.0.0.1:1/x: Failed to connect
";
        let result = parse_qemu_io(bad);
        assert_eq!(result.pattern_failures, 1);
        assert_eq!(result.read, 65536);
        assert_eq!(result.written, 0);
        assert_eq!(result.errors.len(), 3, "{result:?}");
    }

    #[test]
    fn curl_write_out_parses() {
        assert_eq!(
            parse_curl("ok daxbox 0.1.0 uptime=12\n\n200 26"),
            Some(CurlResult {
                body: "ok daxbox 0.1.0 uptime=12\n".into(),
                status: 200,
                size: 26
            })
        );
        assert_eq!(
            parse_curl("\n000 0"),
            Some(CurlResult {
                body: String::new(),
                status: 0,
                size: 0
            })
        );
        assert_eq!(parse_curl("no write-out"), None);
        assert_eq!(parse_curl("x\n200"), None);
        assert_eq!(parse_curl("x\n200 1 2"), None);
    }

    #[test]
    fn fsck_output_parses() {
        let clean = parse_fsck("pmem0: fsck: clean (3 ms)\n");
        assert!(clean.ok(), "{clean:?}");
        assert_eq!(clean.clean, ["pmem0"]);
        let damaged = parse_fsck("pmem0: fsck: clean (3 ms)\npmem1: block 7 counted twice\n");
        assert!(!damaged.ok());
        assert_eq!(damaged.problems, ["pmem1: block 7 counted twice"]);
        assert!(!parse_fsck("").ok(), "nothing checked is not clean");
        assert!(!parse_fsck("error: no filesystem mounted").ok());
    }

    #[test]
    fn rng_is_seeded_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
        assert_ne!(Rng::new(8).next_u64(), first[0]);
        for _ in 0..1000 {
            assert!(a.below(10) < 10);
            let d = a.duration(Duration::from_millis(100), Duration::from_millis(200));
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
        let mut buffer = [0u8; 13];
        a.fill(&mut buffer);
        assert!(buffer.iter().any(|&byte| byte != 0));
    }

    #[test]
    fn crash_markers_are_found() {
        assert_eq!(crashed("daxbox: ready\ndaxbox> ls\n"), None);
        let found = crashed("ok\nKERNEL PANIC: out of memory\nat x.rs:1\n").unwrap();
        assert!(found.starts_with("KERNEL PANIC: out of memory"), "{found}");
    }

    #[test]
    fn option_values_parse() {
        let value = |text: &str| Some(text.to_string());
        assert_eq!(positive("--minutes", value("10").as_ref()), Ok(10));
        assert!(positive("--minutes", value("0").as_ref()).is_err());
        assert!(positive("--minutes", value("x").as_ref()).is_err());
        assert!(positive("--minutes", None).is_err());
        assert_eq!(seed_value(value("0x10").as_ref()), Ok(16));
        assert_eq!(seed_value(value("42").as_ref()), Ok(42));
        assert!(seed_value(value("0xzz").as_ref()).is_err());
    }

    #[test]
    fn a_hanging_client_is_killed_at_its_deadline() {
        let outcome = run_client(
            "sleep",
            &["30".to_string()],
            &std::env::temp_dir(),
            None,
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(outcome.timed_out && !outcome.success(), "{outcome:?}");
        // A client that forks (as fio does, a process per job) is killed
        // with everything it started.
        let outcome = run_client(
            "sh",
            &[
                "-c".to_string(),
                "sleep 300 >/dev/null 2>&1 & echo $!; wait".to_string(),
            ],
            &std::env::temp_dir(),
            None,
            // Time for sh to start its child on a busy host; it then waits.
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(outcome.timed_out, "{outcome:?}");
        let grandchild: u32 = outcome.stdout_text().trim().parse().expect("its pid");
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .ok()
                .as_deref()
                .and_then(|stat| stat.rsplit(')').next())
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        };
        // SIGKILL is delivered asynchronously: give it a moment to land.
        for _ in 0..100 {
            if !alive() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let alive = alive();
        if alive {
            let _ = Command::new("kill")
                .args(["-KILL", &grandchild.to_string()])
                .status();
        }
        assert!(!alive, "the client's child {grandchild} survived the kill");
        let outcome = run_client(
            "cat",
            &[],
            &std::env::temp_dir(),
            Some(b"through stdin"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(outcome.success());
        assert_eq!(outcome.stdout, b"through stdin");
        assert!(run_client(
            "daxbox-no-such-tool",
            &[],
            &std::env::temp_dir(),
            None,
            Duration::from_secs(1)
        )
        .is_err());
    }
}
