//! `cargo xtask bench trim`: another client's 4 KiB read latency while one
//! connection runs a 1 GiB TRIM and then a 1 GiB WRITE_ZEROES, on a raw
//! pmem export and on a daxfs file, next to a baseline of the same reads
//! with nothing else running, all in one invocation (issue 11, finding 3:
//! one long request must not stall the event loop).
//!
//! Setup: the release appliance boots (BIOS, q35, TCG unless `DAXBOX_ACCEL`
//! says otherwise) with two NVDIMMs: pmem0 (1280 MiB, daxfs, files `big`
//! = 1 GiB and `probe` = 64 MiB) and pmem1 (1 GiB, `export_raw=pmem1`).
//! One nbdsh (libnbd) process on the host holds two connections: the
//! *writer* on the export under test and the *reader* on `probe`, which it
//! first fills with data. Phases, in this order:
//! 1. baseline: the reader's reads with nothing else running;
//! 2. raw TRIM / raw WRITE_ZEROES of all of pmem1;
//! 3. daxfs TRIM / WRITE_ZEROES / WRITE_ZEROES with `NO_HOLE` of all of
//!    `big`, each after filling `big` with 1 GiB of data (not measured):
//!    the first two punch 1 GiB of allocated blocks, the last zeroes them
//!    in place (the O(bytes) path).
//!
//! During a long request the writer's command is sent asynchronously and
//! the reader issues 4 KiB reads at queue depth 1 (random offsets in
//! `probe`, each checked) until the long request is answered; each read's
//! latency is taken around the libnbd call. The table shows, per phase,
//! the reads done, p50/p99/max latency and the long request's duration;
//! above it the host's CPU model and load (`/proc/cpuinfo`,
//! `/proc/loadavg`), since the guest runs under TCG on a shared host.

use std::process::Command;
use std::time::Duration;

use daxbox_tests::{run_dir, Firmware, Machine, Nvdimm, QemuOptions};

use crate::images::{harness, prepare_for_harness};
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench trim [--baseline-reads N]

Boots the appliance with pmem0 (1280 MiB, daxfs: big = 1 GiB, probe = 64 MiB) and
pmem1 (1 GiB, exported raw), then measures another connection's 4 KiB read latency
(p50/p99/max, count) on probe while one connection runs a 1 GiB TRIM and then a 1 GiB
WRITE_ZEROES on pmem1 and on big, next to a baseline of N reads (default 2000) with
nothing else running. Prints the host CPU model and load.
DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

const MIB: u64 = 1 << 20;
/// The run folder name (`target/test-runs/bench_trim/`).
const NAME: &str = "bench_trim";

/// The client: prints one `RESULT phase reads p50_us p99_us max_us
/// op_seconds` line per phase. `{port}` and `{baseline}` are filled in.
const SCRIPT: &str = r#"
import nbd, random, time
GIB = 1 << 30
PORT = {port}
BASELINE = {baseline}
def connect(export):
    # A server that stalled for seconds may drop the first attempt
    # (seen on the old synchronous TRIM): retry, and say so.
    for attempt in range(5):
        try:
            h = nbd.NBD()
            h.connect_uri("nbd://127.0.0.1:%d/%s" % (PORT, export))
            return h
        except nbd.Error as e:
            print("NOTE connect %s failed (%s), retrying" % (export, e), flush=True)
            time.sleep(1)
    raise SystemExit("cannot connect to " + export)
reader = connect("probe")
probe_size = reader.get_size()
def block(i):
    return (i % 251).to_bytes(1, "big") * 4096
for at in range(0, probe_size, 1 << 20):
    reader.pwrite(b"".join(block((at >> 12) + j) for j in range(256)), at)
reader.flush()
rng = random.Random(42)
def one_read(samples):
    i = rng.randrange(probe_size >> 12)
    started = time.perf_counter_ns()
    data = reader.pread(4096, i << 12)
    samples.append(time.perf_counter_ns() - started)
    assert data == block(i), "probe block %d" % i
def report(phase, samples, seconds):
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1000
    print("RESULT %s %d %.0f %.0f %.0f %.3f" % (phase, len(samples), pick(0.5), pick(0.99), samples[-1] / 1000, seconds), flush=True)
samples = []
started = time.monotonic()
for _ in range(BASELINE):
    one_read(samples)
report("baseline", samples, 0.0)
def fill(writer):
    size = writer.get_size()
    chunk = b"\x5a" * (4 << 20)
    for at in range(0, size, len(chunk)):
        writer.pwrite(chunk[:min(len(chunk), size - at)], at)
    writer.flush()
for kind, export in (("raw", "pmem1"), ("daxfs", "big")):
    writer = connect(export)
    size = writer.get_size()
    assert size >= GIB, (export, size)
    for op in ("trim", "zero", "zero-nohole"):
        if op == "zero-nohole" and kind == "raw":
            continue
        if kind == "daxfs":
            fill(writer)
        samples = []
        started = time.monotonic()
        if op == "trim":
            cookie = writer.aio_trim(GIB, 0)
        elif op == "zero":
            cookie = writer.aio_zero(GIB, 0)
        else:
            cookie = writer.aio_zero(GIB, 0, flags=nbd.CMD_FLAG_NO_HOLE)
        while True:
            one_read(samples)
            writer.poll(0)
            if writer.aio_command_completed(cookie):
                break
        report("%s-%s" % (kind, op), samples, time.monotonic() - started)
        assert writer.pread(4096, GIB - 4096) == bytes(4096)
    writer.shutdown()
reader.shutdown()
print("bench script ok", flush=True)
"#;

/// One phase's figures.
#[derive(Debug, Clone, PartialEq)]
struct Phase {
    name: String,
    reads: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    op_seconds: f64,
}

/// The `RESULT` lines of the script's output.
fn parse_results(output: &str) -> Vec<Phase> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.strip_prefix("RESULT ")?.split(' ').collect();
            let [name, reads, p50, p99, max, seconds] = fields.as_slice() else {
                return None;
            };
            Some(Phase {
                name: name.to_string(),
                reads: reads.parse().ok()?,
                p50_us: p50.parse().ok()?,
                p99_us: p99.parse().ok()?,
                max_us: max.parse().ok()?,
                op_seconds: seconds.parse().ok()?,
            })
        })
        .collect()
}

/// What each phase name means in the table.
fn describe_phase(name: &str) -> &str {
    match name {
        "baseline" => "baseline (nothing else running)",
        "raw-trim" => "during raw TRIM 1 GiB",
        "raw-zero" => "during raw WRITE_ZEROES 1 GiB",
        "daxfs-trim" => "during daxfs TRIM 1 GiB",
        "daxfs-zero" => "during daxfs WRITE_ZEROES 1 GiB",
        "daxfs-zero-nohole" => "during daxfs WRITE_ZEROES NO_HOLE",
        other => other,
    }
}

/// The result table.
fn table(phases: &[Phase]) -> String {
    let mut text = format!(
        "{:<34} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
        "4 KiB reads on another connection", "reads", "p50 us", "p99 us", "max us", "op s"
    );
    for phase in phases {
        let op = if phase.name == "baseline" {
            "-".to_string()
        } else {
            format!("{:.3}", phase.op_seconds)
        };
        text += &format!(
            "{:<34} {:>7} {:>10.0} {:>10.0} {:>10.0} {:>10}\n",
            describe_phase(&phase.name),
            phase.reads,
            phase.p50_us,
            phase.p99_us,
            phase.max_us,
            op
        );
    }
    text
}

/// The host's CPU model and load, as the kernel reports them.
pub(crate) fn host_facts() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "host: {model} ({cpus} CPUs), /proc/loadavg: {}",
        load.trim()
    )
}

/// Entry point of `cargo xtask bench trim`.
pub fn trim(args: &[String]) -> Result<(), XtaskError> {
    let mut baseline = 2000u64;
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--baseline-reads" => {
                baseline = args
                    .get(index + 1)
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v > 0)
                    .ok_or_else(|| XtaskError::Usage(USAGE.into()))?;
                index += 2;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(XtaskError::Usage(USAGE.into())),
        }
    }
    prepare_for_harness()?;
    crate::step("booting the appliance (pmem0 1280 MiB daxfs, pmem1 1 GiB raw)");
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\nexport_raw=pmem1\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("pmem0.img"), 1280 * MIB))
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("pmem1.img"), 1024 * MIB));
    options.max_runtime = Duration::from_secs(3600);
    let mut machine = Machine::boot_to_prompt(options).map_err(harness)?;
    for (file, size) in [("big", 1024 * MIB), ("probe", 64 * MIB)] {
        let output = machine
            .command(&format!("create {file} {size}"))
            .map_err(harness)?;
        if !output.contains("created") {
            return Err(XtaskError::Command {
                command: format!("create {file} {size} (appliance shell)"),
                problem: output,
            });
        }
    }
    let facts_before = host_facts();
    crate::step("nbdsh: baseline reads, then reads during each long request");
    let script = SCRIPT
        .replace("{port}", &machine.nbd_port().to_string())
        .replace("{baseline}", &baseline.to_string());
    let mut command = Command::new("nbdsh");
    command.args(["-c", &script]);
    // nbdsh needs the system python (see daxbox_tests::nbd_client).
    if let Some(path) = std::env::var_os("PATH") {
        let mut paths = vec![std::path::PathBuf::from("/usr/bin")];
        paths.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(paths) {
            command.env("PATH", joined);
        }
    }
    println!("    nbdsh -c <script: see xtask/src/bench_trim.rs>");
    let output = command.output().map_err(|error| XtaskError::Command {
        command: "nbdsh".into(),
        problem: format!("{error} (install libnbd-bin, python3-libnbd: `cargo xtask setup`)"),
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !stdout.contains("bench script ok") {
        return Err(XtaskError::Command {
            command: "nbdsh (bench trim script)".into(),
            problem: format!(
                "{}\nstdout:\n{stdout}\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    let facts_after = host_facts();
    drop(machine);
    println!();
    println!(
        "bench trim (accel {}):",
        std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into())
    );
    println!("  before: {facts_before}");
    println!("  after:  {facts_after}");
    print!("{}", table(&parse_results(&stdout)));
    for note in stdout.lines().filter(|line| line.starts_with("NOTE ")) {
        println!("{note}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse_and_tabulate() {
        let output = "noise\nRESULT baseline 2000 310 900 4000 0.000\n\
                      RESULT raw-trim 12 300 250000 250000 2.500\nRESULT bad line\n";
        let phases = parse_results(output);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[1].name, "raw-trim");
        assert_eq!(phases[1].reads, 12);
        assert_eq!(phases[1].max_us, 250000.0);
        let text = table(&phases);
        assert!(text.contains("baseline (nothing else running)"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("during raw TRIM"))
            .unwrap();
        assert!(row.ends_with("2.500"), "{row}");
    }

    #[test]
    fn host_facts_name_the_cpu_and_the_load() {
        let facts = host_facts();
        assert!(facts.contains("CPUs"), "{facts}");
        assert!(facts.contains("/proc/loadavg"), "{facts}");
    }
}
