//! `cargo xtask soak`: many real clients against one booted appliance for
//! a fixed time, every operation checked.
//!
//! The appliance boots in QEMU through the system-test harness
//! (`daxbox_tests::Machine`: BIOS, TCG, user networking with host port
//! forwards) with a fresh 256 MiB NVDIMM formatted with daxfs and
//! `http_bench=on`. The shell creates one daxfs file (= NBD export) per NBD
//! client, so each client can check what it wrote. Then every client loops
//! until the deadline, with a random pause between operations (the clients
//! are mostly idle processes, so 64 of them fit a 2-core host beside QEMU):
//!
//! | kind | one operation | checked |
//! |---|---|---|
//! | nbdcopy | write 4 MiB (random data with a zero MiB) with `--flush`, copy it back to stdout | exit status; the bytes read equal the bytes written |
//! | fio | `--ioengine=nbd`, 2 jobs of 2 MiB 4 KiB random writes, then fio's own read-back with `--verify=crc32c` | exit status, each job's terse error field, verify complaints |
//! | qemu-io | on one of 16 64 KiB slots: `read -P OLD`, then `write -P NEW` (sometimes with FUA, sometimes `write -z`), `flush`, `read -P NEW` | the pattern written by the previous operation on that slot is still there; qemu-io's result lines |
//! | shell | one of `ls`, `stat`, `nbd`, `mem`, `net`, `df`, `uptime`, `pmem`, or `create`/`write`/`cat`/`rm` of a scratch file, over the serial console | no `error:` line; the scratch text reads back |
//! | http | `GET`/`HEAD /healthz`, a 404 route, `POST /healthz` (405), `GET /bench/bytes?n=65536`, `PUT /bench/sink` (64 KiB) | status code, body, size |
//!
//! Progress is printed every 10 s. At the end: a table of operations,
//! errors and verify failures per kind, the appliance's `mem` and `nbd`,
//! `fsck` (must be clean), `poweroff` (QEMU must exit with the poweroff
//! status). Any error, verify failure, crash marker on the serial console,
//! unclean fsck or a kind that completed no operation fails the run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::test_image;
use daxbox_tests::{run_dir, Firmware, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF};

use crate::clients::{
    clock_seed, crashed, fio_jobs, fio_verify_failures, parse_curl, parse_fsck, parse_qemu_io,
    positive, run_client, seed_value, Rng, CURL_WRITE_OUT, FIO_EILSEQ,
};
use crate::images::{harness, prepare_for_harness};
use crate::{step, XtaskError};

const USAGE: &str = "\
usage: cargo xtask soak --minutes N | --seconds N [--clients 64] [--seed S]

Boots the appliance in QEMU (256 MiB NVDIMM, daxfs, http_bench=on) and runs
--clients real clients (default 64; 5 to 128) for N minutes, each looping with
a random pause between operations: nbdcopy (write, read back, compare), fio
(nbd engine, 2 jobs of random writes + crc32c verify), qemu-io (write and read
patterns; each slot's previous pattern must still be there), shell commands
over the serial console (ls, stat, nbd, mem, net, df, uptime, pmem, scratch
create/write/cat/rm) and HTTP (curl: /healthz, 404, 405, /bench/bytes,
/bench/sink). Progress every 10 s; at the end a table per client kind, the
appliance's mem and nbd, fsck, poweroff. Exits non-zero on any error, verify
failure, kernel panic or unclean fsck. --seed makes the clients' choices
repeatable (printed when not given). Logs: target/test-runs/soak/.
DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

const MIB: u64 = 1 << 20;
/// The NVDIMM: room for every client's file (at 128 clients: 16 x 4 MiB
/// + 16 x 4 MiB + 16 x 1 MiB = 144 MiB) and scratch files.
const NVDIMM_SIZE: u64 = 256 * MIB;
/// nbdcopy clients' export size (and bytes per copy).
const COPY_SIZE: u64 = 4 * MIB;
/// fio clients' export size: 2 jobs x 2 MiB.
const FIO_SIZE: u64 = 4 * MIB;
/// qemu-io clients: 16 slots of 64 KiB.
const IO_SLOTS: u64 = 16;
const IO_SLOT: u64 = 64 << 10;
/// Body size of the HTTP download and upload.
const HTTP_BYTES: u64 = 64 << 10;
/// Deadline of one client operation; an operation still running then is
/// killed and counted as an error (a wedged appliance shows up here).
const OP_TIMEOUT: Duration = Duration::from_secs(180);
/// Progress line interval.
const PROGRESS: Duration = Duration::from_secs(10);
/// Problems kept word for word for the report (all are counted).
const KEPT_PROBLEMS: usize = 40;
/// Fewest and most clients: one of each kind, and NBD connections
/// (at most 8 + 2 x 8 + 16 = 40) well under the appliance's 64.
const MIN_CLIENTS: usize = 5;
const MAX_CLIENTS: usize = 128;

/// A client kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// nbdcopy write + read-back.
    Nbdcopy,
    /// fio randwrite + verify.
    Fio,
    /// qemu-io patterns.
    QemuIo,
    /// Serial-console commands.
    Shell,
    /// curl against the HTTP server.
    Http,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Nbdcopy,
        Kind::Fio,
        Kind::QemuIo,
        Kind::Shell,
        Kind::Http,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Nbdcopy => "nbdcopy",
            Kind::Fio => "fio",
            Kind::QemuIo => "qemu-io",
            Kind::Shell => "shell",
            Kind::Http => "http",
        }
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// How many clients of each kind `clients` makes: an eighth each of
/// nbdcopy, fio and shell (at most 8), three sixteenths qemu-io (at most
/// 16), HTTP the rest; at least one of each. 64 gives 8/8/12/8/28.
pub fn mix(clients: usize) -> [(Kind, usize); 5] {
    let nbdcopy = (clients / 8).clamp(1, 8);
    let fio = (clients / 8).clamp(1, 8);
    let qemu_io = (clients * 3 / 16).clamp(1, 16);
    let shell = (clients / 8).clamp(1, 8);
    let http = clients
        .saturating_sub(nbdcopy + fio + qemu_io + shell)
        .max(1);
    [
        (Kind::Nbdcopy, nbdcopy),
        (Kind::Fio, fio),
        (Kind::QemuIo, qemu_io),
        (Kind::Shell, shell),
        (Kind::Http, http),
    ]
}

/// Parsed `soak` options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoakOptions {
    /// Run time (the minimum; operations in flight finish).
    pub duration: Duration,
    /// Clients in all.
    pub clients: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Run folder name under target/test-runs/.
    pub name: String,
}

impl SoakOptions {
    /// `minutes` with 64 clients and a clock seed.
    pub fn new(minutes: u64) -> Self {
        SoakOptions {
            duration: Duration::from_secs(minutes * 60),
            clients: 64,
            seed: clock_seed(),
            name: "soak".into(),
        }
    }
}

/// Parses `soak` arguments; `None` means `--help` was asked for.
pub fn parse(args: &[String]) -> Result<Option<SoakOptions>, String> {
    let mut seconds = None;
    let mut options = SoakOptions::new(1);
    let mut index = 0;
    while index < args.len() {
        let value = args.get(index + 1);
        match args[index].as_str() {
            "-h" | "--help" => return Ok(None),
            "--minutes" => seconds = Some(positive("--minutes", value)?.saturating_mul(60)),
            "--seconds" => seconds = Some(positive("--seconds", value)?),
            "--clients" => {
                let clients = positive("--clients", value)? as usize;
                if !(MIN_CLIENTS..=MAX_CLIENTS).contains(&clients) {
                    return Err(format!(
                        "--clients wants {MIN_CLIENTS} to {MAX_CLIENTS} (one of each kind; the NBD \
                         clients stay under the appliance's 64 connections), not {clients}"
                    ));
                }
                options.clients = clients;
            }
            "--seed" => options.seed = seed_value(value)?,
            other => return Err(format!("soak: unknown option `{other}`")),
        }
        index += 2;
    }
    let seconds = seconds.ok_or("soak: --minutes N (or --seconds N) is required")?;
    options.duration = Duration::from_secs(seconds);
    Ok(Some(options))
}

/// Counters of one client kind (shared by its clients).
#[derive(Default)]
struct Tally {
    clients: AtomicU64,
    ops: AtomicU64,
    errors: AtomicU64,
    verify_failures: AtomicU64,
    bytes: AtomicU64,
}

/// One kind's totals at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSummary {
    /// The kind.
    pub kind: Kind,
    /// Clients of this kind.
    pub clients: u64,
    /// Operations completed (successful or not).
    pub ops: u64,
    /// Operations that failed (tool error, timeout, wrong status).
    pub errors: u64,
    /// Data that did not read back as written.
    pub verify_failures: u64,
    /// Payload bytes moved.
    pub bytes: u64,
}

/// The end of a soak run: everything that decides pass or fail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SoakSummary {
    /// Per kind.
    pub kinds: Vec<KindSummary>,
    /// The crash message, if the serial console shows one.
    pub crash: Option<String>,
    /// `fsck` said every device is clean.
    pub fsck_clean: bool,
    /// QEMU exited with the poweroff status after `poweroff`.
    pub powered_off: bool,
}

impl SoakSummary {
    /// Why the run failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for kind in &self.kinds {
            let name = kind.kind.name();
            if kind.errors > 0 {
                failures.push(format!("{name}: {} error(s)", kind.errors));
            }
            if kind.verify_failures > 0 {
                failures.push(format!(
                    "{name}: {} verify failure(s)",
                    kind.verify_failures
                ));
            }
            if kind.clients > 0 && kind.ops == 0 {
                failures.push(format!("{name}: no operation completed"));
            }
        }
        if self.kinds.is_empty() {
            failures.push("no clients ran".into());
        }
        if let Some(crash) = &self.crash {
            failures.push(format!("the appliance crashed: {crash}"));
        }
        if !self.fsck_clean {
            failures.push("fsck did not report every device clean".into());
        }
        if !self.powered_off {
            failures.push("the appliance did not power off cleanly".into());
        }
        failures
    }

    /// The per-kind table.
    pub fn table(&self) -> String {
        let mut text = format!(
            "{:<10} {:>7} {:>9} {:>7} {:>15} {:>11}\n",
            "kind", "clients", "ops", "errors", "verify failures", "MiB moved"
        );
        let mut total = KindSummary {
            kind: Kind::Http,
            clients: 0,
            ops: 0,
            errors: 0,
            verify_failures: 0,
            bytes: 0,
        };
        for kind in &self.kinds {
            let _ = writeln!(
                text,
                "{:<10} {:>7} {:>9} {:>7} {:>15} {:>11.1}",
                kind.kind.name(),
                kind.clients,
                kind.ops,
                kind.errors,
                kind.verify_failures,
                kind.bytes as f64 / MIB as f64
            );
            total.clients += kind.clients;
            total.ops += kind.ops;
            total.errors += kind.errors;
            total.verify_failures += kind.verify_failures;
            total.bytes += kind.bytes;
        }
        let _ = writeln!(
            text,
            "{:<10} {:>7} {:>9} {:>7} {:>15} {:>11.1}",
            "total",
            total.clients,
            total.ops,
            total.errors,
            total.verify_failures,
            total.bytes as f64 / MIB as f64
        );
        text
    }
}

/// What every client thread shares.
struct Shared {
    tallies: [Tally; 5],
    problems: Mutex<(u64, Vec<String>)>,
    machine: Mutex<Machine>,
    nbd_port: u16,
    http_port: u16,
    work: PathBuf,
    started: Instant,
    deadline: Instant,
}

/// What one operation found.
#[derive(Default)]
struct Op {
    bytes: u64,
    errors: Vec<String>,
    verify_failures: Vec<String>,
}

impl Op {
    fn error(&mut self, text: impl Into<String>) {
        self.errors.push(text.into());
    }
}

impl Shared {
    fn record(&self, kind: Kind, client: usize, mut op: Op) {
        if op
            .errors
            .iter()
            .any(|e| e.contains("killed at its deadline"))
        {
            // A client that hung: what the appliance says about its
            // connections right now is the best clue.
            let status = self
                .machine()
                .command("nbd")
                .unwrap_or_else(|error| format!("(`nbd` failed: {error})"));
            println!(
                "    {}#{client} hung; the appliance's `nbd` now:\n{status}",
                kind.name()
            );
            op.errors.push(format!("`nbd` when it hung: {status}"));
        }
        let tally = &self.tallies[kind.index()];
        tally.ops.fetch_add(1, Ordering::Relaxed);
        tally.bytes.fetch_add(op.bytes, Ordering::Relaxed);
        let failed = !op.errors.is_empty();
        // (One failed operation is one error, however many lines it has.)
        tally.errors.fetch_add(u64::from(failed), Ordering::Relaxed);
        tally
            .verify_failures
            .fetch_add(op.verify_failures.len() as u64, Ordering::Relaxed);
        let at = self.started.elapsed().as_secs_f64();
        let mut problems = self
            .problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (label, text) in op
            .errors
            .iter()
            .map(|t| ("error", t))
            .chain(op.verify_failures.iter().map(|t| ("VERIFY", t)))
        {
            problems.0 += 1;
            if problems.1.len() < KEPT_PROBLEMS {
                problems.1.push(format!(
                    "[{at:7.1} s] {}#{client} {label}: {text}",
                    kind.name()
                ));
            }
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.nbd_port)
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn copy_export(client: usize) -> String {
    format!("soak-copy-{client}")
}
fn fio_export(client: usize) -> String {
    format!("soak-fio-{client}")
}
fn io_export(client: usize) -> String {
    format!("soak-io-{client}")
}

/// nbdcopy: write a fresh image, read it back to stdout, compare.
fn nbdcopy_op(shared: &Shared, client: usize, rng: &mut Rng) -> Op {
    let mut op = Op::default();
    let data = test_image(COPY_SIZE as usize, rng.next_u64());
    let file = shared.work.join(format!("copy-{client}.bin"));
    if let Err(error) = std::fs::write(&file, &data) {
        op.error(format!("writing {}: {error}", file.display()));
        return op;
    }
    let uri = shared.uri(&copy_export(client));
    let mut args = strings(&["--connections=1", "--flush"]);
    args.push(file.display().to_string());
    args.push(uri.clone());
    match run_client("nbdcopy", &args, &shared.work, None, OP_TIMEOUT) {
        Ok(out) if out.success() => op.bytes += COPY_SIZE,
        Ok(out) => {
            op.error(out.describe("nbdcopy write"));
            return op;
        }
        Err(error) => {
            op.error(error);
            return op;
        }
    }
    let args = vec!["--connections=1".to_string(), uri, "-".to_string()];
    match run_client("nbdcopy", &args, &shared.work, None, OP_TIMEOUT) {
        Ok(out) if out.success() => {
            op.bytes += out.stdout.len() as u64;
            if out.stdout != data {
                let first = out
                    .stdout
                    .iter()
                    .zip(&data)
                    .position(|(a, b)| a != b)
                    .unwrap_or(out.stdout.len().min(data.len()));
                op.verify_failures.push(format!(
                    "read-back of {} differs from what was written ({} bytes read, first difference at byte {first})",
                    copy_export(client),
                    out.stdout.len()
                ));
            }
        }
        Ok(out) => op.error(out.describe("nbdcopy read-back")),
        Err(error) => op.error(error),
    }
    op
}

/// fio: two jobs of 4 KiB random writes over their own 2 MiB, then fio's
/// read-back with crc32c verify.
fn fio_op(shared: &Shared, client: usize, rng: &mut Rng) -> Op {
    let mut op = Op::default();
    let name = format!("soak-fio-{client}");
    let mut args = vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={}", shared.uri(&fio_export(client))),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--size=2M".into(),
        "--numjobs=2".into(),
        "--offset_increment=2M".into(),
        "--iodepth=4".into(),
        "--verify=crc32c".into(),
        // Check every block even after a bad one, so the count is real.
        "--continue_on_error=verify".into(),
        "--verify_state_save=0".into(),
        format!("--randseed={}", rng.next_u64() >> 1),
        "--output-format=terse".into(),
        "--terse-version=3".into(),
    ];
    if rng.below(2) == 0 {
        args.push("--fsync=16".into());
    }
    let out = match run_client("fio", &args, &shared.work, None, OP_TIMEOUT) {
        Ok(out) => out,
        Err(error) => {
            op.error(error);
            return op;
        }
    };
    let stdout = out.stdout_text();
    let everything = format!("{stdout}\n{}", out.stderr);
    let complaints = fio_verify_failures(&everything);
    let jobs = fio_jobs(&stdout);
    for job in &jobs {
        op.bytes += (job.read_kib + job.write_kib) * 1024;
    }
    if complaints > 0 {
        let first = everything
            .lines()
            .find(|line| fio_verify_failures(line) > 0)
            .unwrap_or("");
        op.verify_failures
            .extend((0..complaints).map(|_| format!("{name}: {first}")));
    } else if jobs.iter().any(|job| job.error == FIO_EILSEQ) {
        op.verify_failures
            .push(format!("{name}: a job ended with EILSEQ (verify)"));
    }
    if !out.success() || jobs.len() != 2 {
        op.error(out.describe(&format!("fio ({} terse lines of 2)", jobs.len())));
    } else if let Some(job) = jobs
        .iter()
        .find(|job| job.error != 0 && job.error != FIO_EILSEQ)
    {
        op.error(format!(
            "fio job {} ended with error {}",
            job.name, job.error
        ));
    }
    op
}

/// qemu-io: check the slot's previous pattern, write a new one, flush,
/// read it back. `slots[i]` is the byte pattern slot `i` holds (`None`
/// after a failed write: unknown).
fn qemu_io_op(shared: &Shared, client: usize, rng: &mut Rng, slots: &mut [Option<u8>]) -> Op {
    let mut op = Op::default();
    let slot = rng.below(IO_SLOTS) as usize;
    let offset = slot as u64 * IO_SLOT;
    let old = slots[slot];
    // A zero pattern is written with WRITE_ZEROES (`write -z`).
    let new = if rng.below(4) == 0 {
        0
    } else {
        1 + rng.below(255) as u8
    };
    let fua = if rng.below(2) == 0 { "-f " } else { "" };
    let mut args = strings(&["-f", "raw", &shared.uri(&io_export(client))]);
    let mut expect_read = IO_SLOT;
    if let Some(old) = old {
        args.extend(["-c".into(), format!("read -P {old} {offset} {IO_SLOT}")]);
        expect_read += IO_SLOT;
    }
    let write = if new == 0 {
        format!("write {fua}-z {offset} {IO_SLOT}")
    } else {
        format!("write {fua}-P {new} {offset} {IO_SLOT}")
    };
    args.extend([
        "-c".into(),
        write,
        "-c".into(),
        "flush".into(),
        "-c".into(),
        format!("read -P {new} {offset} {IO_SLOT}"),
    ]);
    slots[slot] = None;
    let out = match run_client("qemu-io", &args, &shared.work, None, OP_TIMEOUT) {
        Ok(out) => out,
        Err(error) => {
            op.error(error);
            return op;
        }
    };
    let text = format!("{}\n{}", out.stdout_text(), out.stderr);
    let result = parse_qemu_io(&text);
    op.bytes = result.read + result.written;
    for _ in 0..result.pattern_failures {
        op.verify_failures.push(format!(
            "{} slot {slot} (offset {offset}): pattern check failed (had {old:?}, wrote {new})",
            io_export(client)
        ));
    }
    if !out.success()
        || !result.errors.is_empty()
        || result.written != IO_SLOT
        || result.read != expect_read
    {
        op.error(format!(
            "{} ({:?}, wrote {} read {} of {expect_read})",
            out.describe("qemu-io"),
            result.errors,
            result.written,
            result.read
        ));
    } else if result.pattern_failures == 0 {
        slots[slot] = Some(new);
    }
    op
}

/// The shell's read-only commands a client picks from.
const SHELL_COMMANDS: [&str; 8] = ["ls", "nbd", "mem", "net", "df", "uptime", "pmem", "stat"];

/// One shell command over the serial console (the console is shared:
/// shell clients take turns).
fn shell_command(shared: &Shared, command: &str, op: &mut Op) -> Option<String> {
    let result = shared.machine().command(command);
    match result {
        Ok(output) => {
            op.bytes += output.len() as u64;
            if let Some(line) = output.lines().find(|l| l.starts_with("error:")) {
                op.error(format!("`{command}`: {line}"));
                None
            } else {
                Some(output)
            }
        }
        Err(error) => {
            op.error(format!("`{command}`: {error}"));
            None
        }
    }
}

/// A shell client's operation: a read-only command, or (one time in four)
/// a scratch file's life: create, write, cat (must read back), rm.
fn shell_op(shared: &Shared, client: usize, rng: &mut Rng, serial: &mut u64) -> Op {
    let mut op = Op::default();
    if rng.below(4) == 0 {
        *serial += 1;
        let name = format!("scratch-{client}-{serial}");
        let token = format!("soak{:016x}", rng.next_u64());
        let steps = [
            (format!("create {name} 64K"), "created"),
            (format!("write {name} 4096 {token}"), ""),
            (format!("cat {name} 4096 {}", token.len()), token.as_str()),
            (format!("rm {name}"), "removed"),
        ];
        for (command, expect) in &steps {
            match shell_command(shared, command, &mut op) {
                Some(output) if output.contains(expect) => {}
                Some(output) => {
                    let failure = format!("`{command}` said {output:?}, expected {expect:?}");
                    if command.starts_with("cat") {
                        op.verify_failures.push(failure);
                    } else {
                        op.error(failure);
                    }
                    break;
                }
                None => break,
            }
        }
        return op;
    }
    let mut command = SHELL_COMMANDS[rng.below(SHELL_COMMANDS.len() as u64) as usize].to_string();
    if command == "stat" {
        command = format!("stat {}", copy_export(0));
    }
    if let Some(output) = shell_command(shared, &command, &mut op) {
        if output.trim().is_empty() {
            op.error(format!("`{command}` printed nothing"));
        }
    }
    op
}

/// An HTTP operation: one curl request, status (and body/size) checked.
fn http_op(shared: &Shared, rng: &mut Rng) -> Op {
    let mut op = Op::default();
    let base = format!("http://127.0.0.1:{}", shared.http_port);
    let mut args = strings(&["-sS", "--max-time", "60", "-w", CURL_WRITE_OUT]);
    let (what, status, body, size) = match rng.below(6) {
        0 => {
            args.push(format!("{base}/healthz"));
            ("GET /healthz", 200, Some("ok daxbox"), None)
        }
        1 => {
            args.extend(["-I".into(), format!("{base}/healthz")]);
            ("HEAD /healthz", 200, None, None)
        }
        2 => {
            args.push(format!("{base}/soak/no-such-route"));
            ("GET /soak/no-such-route", 404, None, None)
        }
        3 => {
            args.extend(strings(&["-X", "POST", "--data-binary", "soak"]));
            args.push(format!("{base}/healthz"));
            ("POST /healthz", 405, None, None)
        }
        4 => {
            args.extend(strings(&["-o", "/dev/null"]));
            args.push(format!("{base}/bench/bytes?n={HTTP_BYTES}"));
            ("GET /bench/bytes", 200, None, Some(HTTP_BYTES))
        }
        _ => {
            let body = shared.work.join("http-body.bin");
            args.extend([
                "-T".into(),
                body.display().to_string(),
                format!("{base}/bench/sink"),
            ]);
            op.bytes += HTTP_BYTES;
            ("PUT /bench/sink", 200, None, None)
        }
    };
    let out = match run_client("curl", &args, &shared.work, None, OP_TIMEOUT) {
        Ok(out) => out,
        Err(error) => {
            op.error(error);
            return op;
        }
    };
    if !out.success() {
        op.error(out.describe(&format!("curl {what}")));
        return op;
    }
    let Some(answer) = parse_curl(&out.stdout_text()) else {
        op.error(format!(
            "curl {what}: no write-out in {:?}",
            out.stdout_text()
        ));
        return op;
    };
    op.bytes += answer.size;
    if answer.status != status {
        op.error(format!(
            "{what}: status {} (expected {status}): {:?}",
            answer.status,
            answer.body.trim()
        ));
    } else if let Some(body) = body.filter(|body| !answer.body.starts_with(body)) {
        op.verify_failures
            .push(format!("{what}: body {:?}, expected {body:?}", answer.body));
    } else if let Some(size) = size.filter(|size| *size != answer.size) {
        op.verify_failures
            .push(format!("{what}: {} bytes, expected {size}", answer.size));
    }
    op
}

/// One client: loops until the deadline with a random pause between
/// operations.
fn client_loop(shared: Arc<Shared>, kind: Kind, client: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut slots = vec![Some(0u8); IO_SLOTS as usize];
    let mut serial = 0;
    // Start spread over the first seconds, not all at once.
    thread::sleep(rng.duration(Duration::ZERO, Duration::from_secs(3)));
    while Instant::now() < shared.deadline {
        let op = match kind {
            Kind::Nbdcopy => nbdcopy_op(&shared, client, &mut rng),
            Kind::Fio => fio_op(&shared, client, &mut rng),
            Kind::QemuIo => qemu_io_op(&shared, client, &mut rng, &mut slots),
            Kind::Shell => shell_op(&shared, client, &mut rng, &mut serial),
            Kind::Http => http_op(&shared, &mut rng),
        };
        shared.record(kind, client, op);
        let pause = match kind {
            Kind::Shell => rng.duration(Duration::from_millis(200), Duration::from_millis(1500)),
            Kind::Http => rng.duration(Duration::from_millis(300), Duration::from_millis(2000)),
            _ => rng.duration(Duration::from_millis(200), Duration::from_millis(1500)),
        };
        let left = shared.deadline.saturating_duration_since(Instant::now());
        thread::sleep(pause.min(left));
    }
}

/// Waits until an NBD handshake completes (the forwarded port accepts
/// before the guest listens).
fn wait_nbd(port: u16, work: &Path) -> Result<(), XtaskError> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let uri = format!("nbd://127.0.0.1:{port}/");
    loop {
        let out = run_client(
            "nbdinfo",
            &strings(&["--list", &uri]),
            work,
            None,
            Duration::from_secs(30),
        )
        .map_err(|problem| XtaskError::Command {
            command: "nbdinfo".into(),
            problem,
        })?;
        if out.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(XtaskError::Command {
                command: format!("nbdinfo --list {uri}"),
                problem: out.describe("no NBD handshake within 90 s"),
            });
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Runs a shell command that must print `expect`, for the set-up.
fn setup_command(machine: &mut Machine, command: &str, expect: &str) -> Result<String, XtaskError> {
    let output = machine.command(command).map_err(harness)?;
    if output.contains(expect) {
        Ok(output)
    } else {
        Err(XtaskError::Command {
            command: format!("{command} (appliance shell)"),
            problem: output,
        })
    }
}

/// Boots, runs the clients, checks the appliance; returns the summary
/// (whose [`SoakSummary::failures`] decide pass or fail). Needs
/// `DAXBOX_KERNEL`/`DAXBOX_BOOT_TOOL` or builds them.
pub fn run(options: &SoakOptions) -> Result<SoakSummary, XtaskError> {
    prepare_for_harness()?;
    let mix = mix(options.clients);
    step(&format!(
        "soak: {} clients ({}) for {} s, seed {:#x}",
        options.clients,
        mix.iter()
            .map(|(kind, count)| format!("{count} {}", kind.name()))
            .collect::<Vec<_>>()
            .join(", "),
        options.duration.as_secs(),
        options.seed
    ));
    let name = options.name.as_str();
    let mut qemu = QemuOptions::new(name, Firmware::Bios)
        // Every client comes from 10.0.2.2 (QEMU's user network): the
        // per-address limits (NBD 32, HTTP 16) would refuse the mix.
        .with_boot_config(
            "format=if-blank\nhttp_bench=on\nnbd_max_per_address=64\n\
             http_max_connections=64\nhttp_max_per_address=64\n",
        )
        .with_nvdimm(Nvdimm::fresh(run_dir(name).join("pmem0.img"), NVDIMM_SIZE));
    // The run, its set-up and the wind-down (operations in flight finish).
    qemu.max_runtime = options.duration + OP_TIMEOUT + Duration::from_secs(900);
    // Shell clients queue for the one console behind each other.
    qemu.command_timeout = qemu.command_timeout.max(Duration::from_secs(120));
    step("booting the appliance (256 MiB NVDIMM, format=if-blank, http_bench=on)");
    let mut machine = Machine::boot_to_prompt(qemu).map_err(harness)?;
    println!("    QEMU pid {}: {}", machine.pid(), machine.command_line());
    let work = run_dir(name).join("work");
    std::fs::create_dir_all(&work)
        .map_err(|error| XtaskError::Io(format!("{}: {error}", work.display())))?;
    let mut body = vec![0u8; HTTP_BYTES as usize];
    Rng::new(options.seed).fill(&mut body);
    std::fs::write(work.join("http-body.bin"), &body)
        .map_err(|error| XtaskError::Io(format!("{}: {error}", work.display())))?;

    step("creating one daxfs file (NBD export) per NBD client");
    for (kind, count) in mix {
        let (size, export): (u64, fn(usize) -> String) = match kind {
            Kind::Nbdcopy => (COPY_SIZE, copy_export),
            Kind::Fio => (FIO_SIZE, fio_export),
            Kind::QemuIo => (IO_SLOTS * IO_SLOT, io_export),
            Kind::Shell | Kind::Http => continue,
        };
        for client in 0..count {
            setup_command(
                &mut machine,
                &format!("create {} {size}", export(client)),
                "created",
            )?;
        }
    }
    wait_nbd(machine.nbd_port(), &work)?;

    let started = Instant::now();
    let shared = Arc::new(Shared {
        tallies: Default::default(),
        problems: Mutex::new((0, Vec::new())),
        nbd_port: machine.nbd_port(),
        http_port: machine.http_port(),
        machine: Mutex::new(machine),
        work,
        started,
        deadline: started + options.duration,
    });
    step(&format!(
        "running {} clients until {} s from now",
        options.clients,
        options.duration.as_secs()
    ));
    let mut seeds = Rng::new(options.seed);
    let mut handles = Vec::new();
    for (kind, count) in mix {
        shared.tallies[kind.index()]
            .clients
            .store(count as u64, Ordering::Relaxed);
        for client in 0..count {
            let shared = shared.clone();
            let seed = seeds.next_u64();
            handles.push(thread::spawn(move || {
                client_loop(shared, kind, client, seed)
            }));
        }
    }
    let mut next = started + PROGRESS;
    while handles.iter().any(|handle| !handle.is_finished()) {
        thread::sleep(Duration::from_millis(200));
        if Instant::now() >= next {
            next += PROGRESS;
            println!("    {}", progress(&shared));
        }
    }
    for handle in handles {
        if handle.join().is_err() {
            // A client thread that panicked is a bug here, not in the
            // appliance; count it where it shows.
            shared.tallies[Kind::Shell.index()]
                .errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    println!("    {}", progress(&shared));

    let mut summary = SoakSummary {
        kinds: Kind::ALL
            .iter()
            .map(|kind| {
                let tally = &shared.tallies[kind.index()];
                KindSummary {
                    kind: *kind,
                    clients: tally.clients.load(Ordering::Relaxed),
                    ops: tally.ops.load(Ordering::Relaxed),
                    errors: tally.errors.load(Ordering::Relaxed),
                    verify_failures: tally.verify_failures.load(Ordering::Relaxed),
                    bytes: tally.bytes.load(Ordering::Relaxed),
                }
            })
            .collect(),
        ..SoakSummary::default()
    };
    let (count, kept) = {
        let problems = shared
            .problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (problems.0, problems.1.clone())
    };
    if count > 0 {
        step(&format!(
            "{count} problem(s) (the first {} word for word)",
            kept.len()
        ));
        for problem in &kept {
            println!("    {problem}");
        }
    }

    let mut machine = shared.machine();
    step("the appliance after the run");
    for command in ["mem", "nbd", "fsck"] {
        match machine.command(command) {
            Ok(output) => {
                println!("daxbox> {command}\n{output}");
                if command == "fsck" {
                    summary.fsck_clean = parse_fsck(&output).ok();
                }
            }
            Err(error) => println!("daxbox> {command}\n(failed: {error})"),
        }
    }
    summary.crash = crashed(&machine.output());
    if summary.crash.is_none() && machine.send_raw(b"poweroff\r").is_ok() {
        summary.powered_off = matches!(
            machine.wait_exit(Duration::from_secs(60)),
            Ok(EXIT_POWEROFF)
        );
    }
    summary.crash = summary.crash.or_else(|| crashed(&machine.output()));
    println!("    serial log: {}", machine.serial_log().display());
    // Ends QEMU (SIGKILL to its PID) if it is still running.
    machine.kill();
    drop(machine);

    println!();
    print!("{}", summary.table());
    println!(
        "soak: {} s, {} clients, seed {:#x}",
        started.elapsed().as_secs(),
        options.clients,
        options.seed
    );
    Ok(summary)
}

/// One progress line: elapsed time and operations so far per kind.
fn progress(shared: &Shared) -> String {
    let mut line = format!("[{:6.1} s]", shared.started.elapsed().as_secs_f64());
    let mut total = 0;
    for kind in Kind::ALL {
        let tally = &shared.tallies[kind.index()];
        let ops = tally.ops.load(Ordering::Relaxed);
        total += ops;
        let bad =
            tally.errors.load(Ordering::Relaxed) + tally.verify_failures.load(Ordering::Relaxed);
        let _ = write!(line, " {} {ops}", kind.name());
        if bad > 0 {
            let _ = write!(line, " ({bad} bad)");
        }
    }
    let _ = write!(line, "; {total} ops");
    line
}

/// Entry point of `cargo xtask soak`.
pub fn soak_command(args: &[String]) -> Result<(), XtaskError> {
    let Some(options) = parse(args).map_err(|e| XtaskError::Usage(format!("{e}\n\n{USAGE}")))?
    else {
        println!("{USAGE}");
        return Ok(());
    };
    let summary = run(&options)?;
    let failures = summary.failures();
    if failures.is_empty() {
        println!("soak: passed (0 errors, 0 verify failures)");
        Ok(())
    } else {
        for failure in &failures {
            println!("soak: FAILED: {failure}");
        }
        Err(XtaskError::TestsFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    /// Every `--option` the help text names is one `parse` takes.
    #[test]
    fn help_names_only_options_that_parse() {
        let named = crate::clients::options_named_in(USAGE);
        assert!(!named.is_empty());
        for option in named {
            let line = format!("--minutes 1 {option} 8");
            assert!(
                parse(&args(&line)).is_ok(),
                "help names {option}, which soak refuses"
            );
        }
    }

    #[test]
    fn options_parse() {
        let options = parse(&args("--minutes 10 --clients 32 --seed 0x2a"))
            .unwrap()
            .unwrap();
        assert_eq!(options.duration, Duration::from_secs(600));
        assert_eq!(options.clients, 32);
        assert_eq!(options.seed, 42);
        assert_eq!(parse(&args("--minutes 1")).unwrap().unwrap().clients, 64);
        assert_eq!(parse(&args("--help")).unwrap(), None);
        for bad in [
            "",
            "--clients 64",
            "--minutes",
            "--minutes 0",
            "--minutes x",
            "--minutes 1 --clients 4",
            "--minutes 1 --clients 129",
            "--minutes 1 --seed",
            "--minutes 1 --frobnicate 3",
        ] {
            assert!(parse(&args(bad)).is_err(), "`{bad}` must be refused");
        }
    }

    #[test]
    fn the_mix_has_every_kind_and_bounded_nbd_connections() {
        assert_eq!(
            mix(64).map(|(_, count)| count),
            [8, 8, 12, 8, 28],
            "64 clients"
        );
        for clients in MIN_CLIENTS..=MAX_CLIENTS {
            let mix = mix(clients);
            assert_eq!(
                mix.iter().map(|(_, c)| c).sum::<usize>(),
                clients,
                "{clients}: {mix:?}"
            );
            assert!(mix.iter().all(|(_, count)| *count >= 1), "{mix:?}");
            // nbdcopy 1 connection, fio 2, qemu-io 1.
            let nbd = mix[0].1 + 2 * mix[1].1 + mix[2].1;
            assert!(nbd <= 40, "{clients} clients: {nbd} NBD connections");
        }
    }

    fn kind(kind: Kind, ops: u64, errors: u64, verify_failures: u64) -> KindSummary {
        KindSummary {
            kind,
            clients: 2,
            ops,
            errors,
            verify_failures,
            bytes: 3 * MIB,
        }
    }

    fn passing() -> SoakSummary {
        SoakSummary {
            kinds: Kind::ALL.iter().map(|k| kind(*k, 10, 0, 0)).collect(),
            crash: None,
            fsck_clean: true,
            powered_off: true,
        }
    }

    #[test]
    fn the_summary_fails_on_any_problem() {
        assert!(
            passing().failures().is_empty(),
            "{:?}",
            passing().failures()
        );
        let mut summary = passing();
        summary.kinds[2] = kind(Kind::QemuIo, 10, 1, 0);
        assert_eq!(summary.failures(), ["qemu-io: 1 error(s)"]);
        let mut summary = passing();
        summary.kinds[0] = kind(Kind::Nbdcopy, 10, 0, 2);
        assert_eq!(summary.failures(), ["nbdcopy: 2 verify failure(s)"]);
        let mut summary = passing();
        summary.kinds[4] = kind(Kind::Http, 0, 0, 0);
        assert_eq!(summary.failures(), ["http: no operation completed"]);
        let mut summary = passing();
        summary.crash = Some("KERNEL PANIC: oom".into());
        summary.fsck_clean = false;
        summary.powered_off = false;
        assert_eq!(summary.failures().len(), 3, "{:?}", summary.failures());
        assert!(!SoakSummary::default().failures().is_empty());
    }

    #[test]
    fn the_table_has_a_row_per_kind_and_a_total() {
        let table = passing().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 7, "{table}");
        assert!(lines[1].starts_with("nbdcopy"), "{table}");
        let total: Vec<&str> = lines[6].split_whitespace().collect();
        assert_eq!(total, ["total", "10", "50", "0", "0", "15.0"], "{table}");
    }
}
