//! `cargo xtask bench nbd`: the appliance's NBD service (a raw export and
//! a daxfs file export) next to `qemu-nbd` on the host, with identical
//! clients, over user-mode and/or tap networking, for one or more kernels;
//! printed next to the Linux-guest figures of issue #14.
//!
//! The QEMU line is issue #14's: TCG (unless `DAXBOX_ACCEL`), `-machine
//! q35,nvdimm=on`, `-cpu max -smp 1`, 512 MiB RAM, `virtio-net-pci`, user
//! networking with hostfwd on 127.0.0.1 or (`--net tap`) a tap device in a
//! network namespace made for the run (`tap.rs`: 198.18.0.1/24, appliance
//! 198.18.0.2, QEMU and every client inside the namespace). NVDIMMs: pmem0
//! (1 GiB, daxfs, `format=if-blank`) holding the file `bench`, created over
//! the shell, and pmem1 (as large as the transfer) exported raw
//! (`export_raw=pmem1`): nbdcopy has no length option, so each export is
//! exactly the transfer size. `--qemu-arg` appends to that line (A/B runs:
//! `--qemu-arg=-global --qemu-arg=virtio-net-pci.event_idx=off`).
//!
//! Per (kernel, network), one boot measures:
//! - idle host CPU of QEMU over `idle` seconds (utime+stime from
//!   `/proc/PID/stat`), right after boot;
//! - against the raw export, then the file export, then (once per run)
//!   `qemu-nbd -f raw -t -e 8` on a host file of the same size:
//!   1. `nbdcopy -S 0 --flush --connections=N DATA URI` (write + flush),
//!      N = 1 and 4 (nbdcopy uses several connections only when the server
//!      offers multi-conn: the table says whether it did);
//!   2. `nbdcopy --no-extents --connections=N URI null:` (read), then a
//!      copy back to a host file that must equal DATA (not measured);
//!   3. fio `--ioengine=nbd`: 256 KiB sequential write and read at QD8 over
//!      the whole export (MiB/s), 4 KiB random read and write at QD1 and
//!      QD16 (`--runtime` seconds each, IOPS).
//! - then `boots` more boots on the same NVDIMMs (each powered off
//!   cleanly): QEMU start → first completed NBD handshake (`nbdinfo`) on
//!   the raw export, then on the file export; the median is shown.
//!
//! What is measured differs beyond the server code: the appliance is
//! reached through slirp or a tap device, virtio-net emulation and the
//! guest's smoltcp under TCG on a host that also runs the clients, while
//! qemu-nbd is a native process on loopback writing into the host page
//! cache. The host's CPU model and `/proc/loadavg` before and after are
//! printed with the figures. There are no speed assertions anywhere.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::terse;
use daxbox_tests::netns::TAP_GUEST_ADDRESS;
use daxbox_tests::{free_port, run_dir, Firmware, Machine, Nvdimm, QemuOptions, GUEST_NBD_PORT};

use crate::images::{harness, prepare_for_harness};
use crate::tap::TapNet;
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench nbd [--quick] [--net user|tap|both] [--kernel PATH]...
                             [--qemu-arg ARG]... [--tap-mtu BYTES] [--runtime SECONDS] [--keep]

Boots the appliance with issue #14's QEMU line (TCG, q35,nvdimm=on, -cpu max -smp 1,
512 MiB, 1 GiB NVDIMM pmem0 with the daxfs file `bench`, a second NVDIMM pmem1 exported
raw, virtio-net-pci) and measures its raw and file exports and qemu-nbd on the host
(127.0.0.1, a file of the same size) with the same clients: nbdcopy write+flush and
read of 256 MiB with 1 and 4 connections, fio --ioengine=nbd 256 KiB QD8 write/read and
4 KiB randread/randwrite QD1/QD16 (IOPS), QEMU start -> first NBD handshake (median of
3 boots), idle host CPU of QEMU over 10 s. Prints the host CPU model and load, a table
of figures and tables of ratios against the Linux guest of issue #14.

  --quick           32 MiB transfers, 2 s fio runs, 1 boot, 3 s idle (a smoke test)
  --net user|tap|both  user networking with hostfwd (default), a tap device in a
                    network namespace made for the run (root only; 198.18.0.1/24,
                    appliance 198.18.0.2, clients inside the namespace), or both
  --kernel PATH     the kernel ELF to boot (repeatable: kernels side by side, labelled
                    A, B, ... with a ratio table B / A; default: build this tree's)
  --qemu-arg ARG    appended to the QEMU line (repeatable; `--qemu-arg=-global
                    --qemu-arg=virtio-net-pci.event_idx=off` for an A/B run)
  --tap-mtu BYTES   the tap device's MTU (68-65535; default 1500), also offered to the
                    appliance (`-global virtio-net-pci.host_mtu=BYTES` on tap runs only)
  --runtime SECONDS each 4 KiB fio run (default 10, --quick 2)
  --keep            keep the host data files in target/test-runs/bench_nbd-host/
DAXBOX_BOOT_TOOL skips building the boot tool; DAXBOX_KERNEL is the default --kernel.";

const MIB: u64 = 1 << 20;
/// pmem0, the daxfs NVDIMM (issue #14: 1 GiB).
const NVDIMM_SIZE: u64 = 1024 * MIB;
/// The run folder of the host data files (never a machine's name, so
/// no boot empties it).
const HOST_DIR: &str = "bench_nbd-host";
/// The daxfs file export.
const FILE_EXPORT: &str = "bench";
/// The raw export (pmem1).
const RAW_EXPORT: &str = "pmem1";
/// nbdcopy connection counts.
const CONNECTIONS: [u32; 2] = [1, 4];

fn io_error(path: &Path, error: std::io::Error) -> XtaskError {
    XtaskError::Io(format!("{}: {error}", path.display()))
}

/// Which network the appliance and the clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    User,
    Tap,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::User => "user",
            Net::Tap => "tap",
        }
    }
}

/// Parsed options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    quick: bool,
    nets: Vec<Net>,
    kernels: Vec<PathBuf>,
    qemu_args: Vec<String>,
    runtime: Option<u64>,
    keep: bool,
    /// `--tap-mtu`: the tap device's MTU.
    tap_mtu: Option<u32>,
}

/// `Ok(None)`: `--help`.
fn parse(args: &[String]) -> Result<Option<Options>, XtaskError> {
    let mut options = Options {
        quick: false,
        nets: vec![Net::User],
        kernels: Vec::new(),
        qemu_args: Vec::new(),
        runtime: None,
        keep: false,
        tap_mtu: None,
    };
    let usage = |why: String| XtaskError::Usage(format!("{why}\n\n{USAGE}"));
    let mut index = 0;
    while index < args.len() {
        // `--name=value` and `--name value` both work (`--qemu-arg=-global`
        // keeps a value that starts with `-` readable).
        let (name, inline) = match args[index].split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (args[index].as_str(), None),
        };
        let takes_value = matches!(
            name,
            "--net" | "--kernel" | "--qemu-arg" | "--runtime" | "--tap-mtu"
        );
        let value = if !takes_value {
            if inline.is_some() {
                return Err(usage(format!("{name} takes no value")));
            }
            None
        } else if let Some(value) = inline {
            index += 1;
            Some(value)
        } else {
            let value = args
                .get(index + 1)
                .ok_or_else(|| usage(format!("{name} needs a value")))?;
            index += 2;
            Some(value.clone())
        };
        if !takes_value {
            index += 1;
        }
        let value = value.unwrap_or_default();
        match name {
            "--quick" => options.quick = true,
            "--keep" => options.keep = true,
            "-h" | "--help" => return Ok(None),
            "--net" => {
                options.nets = match value.as_str() {
                    "user" => vec![Net::User],
                    "tap" => vec![Net::Tap],
                    "both" => vec![Net::User, Net::Tap],
                    other => {
                        return Err(usage(format!("--net: `{other}` is not user, tap or both")))
                    }
                }
            }
            "--kernel" => {
                if value.is_empty() {
                    return Err(usage("--kernel: empty path".into()));
                }
                options.kernels.push(PathBuf::from(value));
            }
            "--qemu-arg" => options.qemu_args.push(value),
            "--runtime" => {
                options.runtime = Some(value.parse().ok().filter(|&v| v > 0).ok_or_else(|| {
                    usage(format!("--runtime: `{value}` is not a positive number"))
                })?)
            }
            "--tap-mtu" => {
                options.tap_mtu = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|mtu| (68..=65535).contains(mtu))
                        .ok_or_else(|| usage(format!("--tap-mtu: `{value}` is not 68..=65535")))?,
                )
            }
            other => return Err(usage(format!("unknown option `{other}`"))),
        }
    }
    if options.kernels.len() > 26 {
        return Err(usage("at most 26 --kernel".into()));
    }
    Ok(Some(options))
}

/// Sizes and counts of a run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// The transfer and export size.
    transfer: u64,
    /// Seconds per 4 KiB fio run.
    runtime: u64,
    /// Boots for boot-to-serve.
    boots: usize,
    /// Seconds of idle CPU measurement.
    idle: u64,
}

impl Sizes {
    fn of(options: &Options) -> Sizes {
        let mut sizes = if options.quick {
            Sizes {
                transfer: 32 * MIB,
                runtime: 2,
                boots: 1,
                idle: 3,
            }
        } else {
            Sizes {
                transfer: 256 * MIB,
                runtime: 10,
                boots: 3,
                idle: 10,
            }
        };
        if let Some(runtime) = options.runtime {
            sizes.runtime = runtime;
        }
        sizes
    }
}

/// A row of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Row {
    Boot,
    Idle,
    CopyWrite1,
    CopyWrite4,
    CopyRead1,
    CopyRead4,
    SeqWrite,
    SeqRead,
    RandRead1,
    RandRead16,
    RandWrite1,
    RandWrite16,
}

/// Every row: label, unit, decimals.
const ROWS: [(Row, &str, &str, usize); 12] = [
    (Row::Boot, "QEMU start -> first NBD handshake", "s", 2),
    (Row::Idle, "idle host CPU of QEMU", "% core", 2),
    (Row::CopyWrite1, "nbdcopy write + flush, 1 conn", "MiB/s", 1),
    (
        Row::CopyWrite4,
        "nbdcopy write + flush, 4 conns",
        "MiB/s",
        1,
    ),
    (Row::CopyRead1, "nbdcopy read, 1 conn", "MiB/s", 1),
    (Row::CopyRead4, "nbdcopy read, 4 conns", "MiB/s", 1),
    (Row::SeqWrite, "fio 256 KiB write QD8", "MiB/s", 1),
    (Row::SeqRead, "fio 256 KiB read QD8", "MiB/s", 1),
    (Row::RandRead1, "fio 4 KiB randread QD1", "IOPS", 0),
    (Row::RandRead16, "fio 4 KiB randread QD16", "IOPS", 0),
    (Row::RandWrite1, "fio 4 KiB randwrite QD1", "IOPS", 0),
    (Row::RandWrite16, "fio 4 KiB randwrite QD16", "IOPS", 0),
];

/// Rows where less is better (ratios are inverted so that > 1 is always
/// "daxbox better").
fn lower_is_better(row: Row) -> bool {
    matches!(row, Row::Boot | Row::Idle)
}

/// The Linux guest of issue #14 (Linux 6.1 serving `/dev/pmem0` raw or a
/// file on ext4-DAX through nbdkit, same QEMU line, a quiet 2-core host):
/// (row, Linux raw, Linux ext4-DAX). Boot is the middle of the issue's
/// range (10.9-11.4 s raw, 11.3-11.9 s ext4-DAX). The issue gives one
/// nbdcopy figure without a connection count: both of ours are compared
/// with it.
const LINUX: &[(Row, f64, f64)] = &[
    (Row::Boot, 11.15, 11.6),
    (Row::CopyWrite1, 19.5, 30.5),
    (Row::CopyWrite4, 19.5, 30.5),
    (Row::CopyRead1, 11.0, 17.1),
    (Row::CopyRead4, 11.0, 17.1),
    (Row::SeqWrite, 20.8, 32.0),
    (Row::SeqRead, 14.4, 14.8),
    (Row::RandRead1, 1335.0, 1610.0),
    (Row::RandRead16, 1663.0, 2123.0),
    (Row::RandWrite1, 1389.0, 1394.0),
    (Row::RandWrite16, 1807.0, 1936.0),
];

/// What a column measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Raw,
    File,
    Host,
}

/// One column of the tables: a server and its figures.
#[derive(Clone, Debug)]
struct Column {
    label: String,
    kind: Kind,
    /// The kernel's letter (`None` for qemu-nbd).
    kernel: Option<usize>,
    net: Option<Net>,
    figures: BTreeMap<Row, f64>,
    multi_conn: Option<bool>,
}

/// `x` with `decimals` decimals, or `-`.
fn cell(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.decimals$}"),
        _ => "-".into(),
    }
}

/// The figures table.
fn figures_table(columns: &[Column]) -> String {
    let width = columns
        .iter()
        .map(|column| column.label.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut text = format!("{:<34} {:>7}", "", "unit");
    for column in columns {
        text += &format!(" {:>width$}", column.label);
    }
    text.push('\n');
    for (row, label, unit, decimals) in ROWS {
        text += &format!("{label:<34} {unit:>7}");
        for column in columns {
            text += &format!(
                " {:>width$}",
                cell(column.figures.get(&row).copied(), decimals)
            );
        }
        text.push('\n');
    }
    text += &format!("{:<34} {:>7}", "server offers multi-conn", "");
    for column in columns {
        let answer = match column.multi_conn {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        text += &format!(" {answer:>width$}");
    }
    text.push('\n');
    text
}

/// `ours` relative to `theirs`, > 1 when ours is better.
fn ratio(row: Row, ours: f64, theirs: f64) -> Option<f64> {
    let value = if lower_is_better(row) {
        theirs / ours
    } else {
        ours / theirs
    };
    (value.is_finite() && ours > 0.0 && theirs > 0.0).then_some(value)
}

/// Each column's figures relative to a reference per (row, column), > 1
/// when the column is better; a last line with each column's smallest
/// ratio.
fn ratio_table(
    title: &str,
    columns: &[Column],
    reference: impl Fn(Row, &Column) -> Option<f64>,
) -> String {
    let width = columns
        .iter()
        .map(|column| column.label.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut text = format!("{title}\n{:<42}", "");
    for column in columns {
        text += &format!(" {:>width$}", column.label);
    }
    text.push('\n');
    let mut smallest: Vec<Option<f64>> = vec![None; columns.len()];
    for (row, label, _, _) in ROWS {
        let ratios: Vec<Option<f64>> = columns
            .iter()
            .map(|column| {
                let ours = *column.figures.get(&row)?;
                ratio(row, ours, reference(row, column)?)
            })
            .collect();
        if ratios.iter().all(Option::is_none) {
            continue;
        }
        text += &format!("{label:<42}");
        for (index, value) in ratios.iter().enumerate() {
            text += &format!(" {:>width$}", cell(*value, 2));
            if let Some(value) = value {
                let least = smallest[index].get_or_insert(*value);
                *least = least.min(*value);
            }
        }
        text.push('\n');
    }
    text += &format!("{:<42}", "smallest");
    for value in smallest {
        text += &format!(" {:>width$}", cell(value, 2));
    }
    text.push('\n');
    text
}

/// The Linux figure of `row` for raw (`false`) or ext4-DAX (`true`).
fn linux(row: Row, dax: bool) -> Option<f64> {
    LINUX
        .iter()
        .find(|(known, _, _)| *known == row)
        .map(|(_, raw, ext4)| if dax { *ext4 } else { *raw })
}

/// Every table of a run.
fn report(columns: &[Column], kernels: &[PathBuf]) -> String {
    let mut text = figures_table(columns);
    text += "reads / writes (goal >= 0.80):";
    for column in columns {
        let pairs = [
            (Row::CopyRead1, Row::CopyWrite1),
            (Row::SeqRead, Row::SeqWrite),
        ];
        let shares: Vec<String> = pairs
            .iter()
            .map(|(read, write)| {
                let value = match (column.figures.get(read), column.figures.get(write)) {
                    (Some(r), Some(w)) if *w > 0.0 => Some(r / w),
                    _ => None,
                };
                cell(value, 2)
            })
            .collect();
        text += &format!(" {} {}", column.label, shares.join("/"));
    }
    text += "  (nbdcopy 1 conn / fio 256 KiB)\n\n";
    let appliance: Vec<Column> = columns
        .iter()
        .filter(|column| column.kind != Kind::Host)
        .cloned()
        .collect();
    text += "Linux 6.1 guest, issue #14, quiet 2-core host: figures copied from the issue \
             (no Linux guest image here, so not measured in this run; boot = middle of the \
             issue's range)\n";
    text += &ratio_table(
        "daxbox / Linux raw (> 1: daxbox better; goal >= 3 on every row with user networking)",
        &appliance,
        |row, _| linux(row, false),
    );
    text.push('\n');
    text += &ratio_table(
        "daxbox / Linux ext4-DAX (> 1: daxbox better)",
        &appliance,
        |row, _| linux(row, true),
    );
    if let Some(host) = columns.iter().find(|column| column.kind == Kind::Host) {
        text.push('\n');
        text += &ratio_table(
            "daxbox / qemu-nbd on the host (the ceiling)",
            &appliance,
            |row, _| host.figures.get(&row).copied(),
        );
    }
    if kernels.len() > 1 {
        let later: Vec<Column> = appliance
            .iter()
            .filter(|column| column.kernel.is_some_and(|k| k > 0))
            .cloned()
            .collect();
        text.push('\n');
        text += &ratio_table(
            "each kernel / kernel A, same network and export (> 1: better than A)",
            &later,
            |row, column| {
                appliance
                    .iter()
                    .find(|base| {
                        base.kernel == Some(0) && base.net == column.net && base.kind == column.kind
                    })
                    .and_then(|base| base.figures.get(&row).copied())
            },
        );
    }
    text
}

/// The `N` of `daxbox: ready (N ms after kernel entry)`, if the kernel
/// prints it.
fn ready_ms(serial: &str) -> Option<u64> {
    let rest = serial.split("daxbox: ready (").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The median of `values` (sorted in place); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Where the clients run: on the host, or inside the tap namespace.
#[derive(Clone, Copy)]
struct Client<'a> {
    netns: Option<&'a TapNet>,
}

impl Client<'_> {
    fn command(&self, program: &str) -> Command {
        match self.netns {
            Some(netns) => netns.command(program),
            None => Command::new(program),
        }
    }

    /// Starts `nbdinfo --size URI` (one handshake attempt).
    fn spawn_nbdinfo(&self, uri: &str) -> Result<Child, XtaskError> {
        self.command("nbdinfo")
            .args(["--size", uri])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| XtaskError::Command {
                command: "nbdinfo".into(),
                problem: format!("{error} (install libnbd-bin: `cargo xtask setup`)"),
            })
    }

    /// Waits until a handshake on `uri` completes (the appliance's
    /// forwarded port accepts TCP before the guest listens, so a connect
    /// alone proves nothing).
    ///
    /// A connection made before the guest listens is not refused but hangs
    /// (slirp, or the host's TCP over tap, retransmits its SYN to the guest
    /// after 1, 3, 7, 15 s...), so each attempt is bounded at 1 s and
    /// killed by its PID after that. Attempts overlap: a new one starts
    /// every `every` (at most [`ATTEMPTS_IN_FLIGHT`] at once), so the first
    /// attempt made after the guest listens completes in milliseconds and
    /// boot-to-serve is resolved to about `every`, not to the 1 s bound of
    /// an attempt that started too early (which is what one attempt at a
    /// time gave: the row moved in steps of about 1 s).
    fn wait_for_export(
        &self,
        uri: &str,
        timeout: Duration,
        every: Duration,
    ) -> Result<(), XtaskError> {
        const ATTEMPTS_IN_FLIGHT: usize = 12;
        let attempt = Duration::from_secs(1);
        let deadline = Instant::now() + timeout;
        let mut running: Vec<(Child, Instant)> = Vec::new();
        let mut next_start = Instant::now();
        let outcome = loop {
            let now = Instant::now();
            if now >= next_start && running.len() < ATTEMPTS_IN_FLIGHT {
                match self.spawn_nbdinfo(uri) {
                    Ok(child) => running.push((child, now)),
                    Err(error) => break Err(error),
                }
                next_start = now + every;
            }
            let mut served = false;
            running.retain_mut(|(child, started)| match child.try_wait() {
                Ok(Some(status)) => {
                    served |= status.success();
                    false
                }
                Ok(None) if started.elapsed() < attempt => true,
                _ => {
                    // SIGKILL to this PID only (`ip netns exec` execs
                    // nbdinfo, so it is nbdinfo's).
                    let _ = child.kill();
                    let _ = child.wait();
                    false
                }
            });
            if served {
                break Ok(());
            }
            if now > deadline {
                break Err(XtaskError::Command {
                    command: format!("nbdinfo --size {uri}"),
                    problem: format!("no NBD server within {} s", timeout.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for (mut child, _) in running {
            let _ = child.kill();
            let _ = child.wait();
        }
        outcome
    }

    /// Whether the server offers multi-conn (`nbdinfo --can multi-conn`
    /// exits 0 when it does).
    fn multi_conn(&self, uri: &str) -> Option<bool> {
        self.command("nbdinfo")
            .args(["--can", "multi-conn", uri])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .map(|status| status.success())
    }
}

/// A `qemu-nbd` process, killed by PID when dropped (also on errors).
struct QemuNbd {
    child: Child,
    port: u16,
}

impl QemuNbd {
    /// `qemu-nbd -f raw -t -e 8 -p PORT --bind 127.0.0.1 FILE` (up to 8
    /// clients at once, for nbdcopy's connections), ready when a real NBD
    /// handshake completes.
    fn start(file: &Path) -> Result<QemuNbd, XtaskError> {
        let port = free_port().map_err(harness)?;
        let mut command = Command::new("qemu-nbd");
        command
            .args(["-f", "raw", "-t", "-e", "8", "-p", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg(file)
            .stdin(Stdio::null());
        println!("    {}", crate::describe(&command));
        let child = command.spawn().map_err(|error| XtaskError::Command {
            command: "qemu-nbd".into(),
            problem: format!("{error} (install qemu-utils: `cargo xtask setup`)"),
        })?;
        let server = QemuNbd { child, port };
        Client { netns: None }.wait_for_export(
            &server.uri(),
            Duration::from_secs(20),
            Duration::from_millis(100),
        )?;
        Ok(server)
    }

    /// The export URI (qemu-nbd's only export has the empty name).
    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/", self.port)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to completion; returns its stdout and the wall time.
pub(crate) fn timed(command: &mut Command) -> Result<(String, Duration), XtaskError> {
    let description = crate::describe(command);
    println!("    {description}");
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| XtaskError::Command {
            command: description.clone(),
            problem: error.to_string(),
        })?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(XtaskError::Command {
            command: description,
            problem: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        elapsed,
    ))
}

/// Writes `size` bytes of xorshift64 output to `path`: incompressible and
/// free of zero blocks, so nbdcopy has to send every byte.
pub(crate) fn write_random_file(path: &Path, size: u64, seed: u64) -> Result<(), XtaskError> {
    let mut file = File::create(path).map_err(|e| io_error(path, e))?;
    let mut state = seed | 1;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// The bandwidth of a terse v3 line in MiB/s.
fn terse_mib_s(output: &str, write: bool) -> Option<f64> {
    terse::kib_per_s(output, write).map(|kib| kib / 1024.0)
}

/// The common fio arguments: job `rw` with block size `bs` at `depth`.
fn fio_command(client: Client, uri: &str, rw: &str, bs: &str, depth: u32) -> Command {
    let mut command = client.command("fio");
    command
        .arg(format!("--name={rw}-{bs}-qd{depth}"))
        .args(["--ioengine=nbd", &format!("--uri={uri}")])
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={depth}"))
        .args(["--output-format=terse", "--terse-version=3"]);
    command
}

fn no_terse(what: String, output: &str) -> XtaskError {
    XtaskError::Command {
        command: what,
        problem: format!("no terse result line in:\n{output}"),
    }
}

/// One fio run on the host: 4 KiB random `rw` at `depth`; returns IOPS.
pub(crate) fn fio(uri: &str, rw: &str, depth: u32, runtime: u64) -> Result<f64, XtaskError> {
    fio_random(Client { netns: None }, uri, rw, depth, runtime)
}

/// 4 KiB random `rw` at `depth` for `runtime` seconds; returns IOPS.
fn fio_random(
    client: Client,
    uri: &str,
    rw: &str,
    depth: u32,
    runtime: u64,
) -> Result<f64, XtaskError> {
    let mut command = fio_command(client, uri, rw, "4k", depth);
    command.arg(format!("--runtime={runtime}")).args([
        "--time_based",
        "--norandommap",
        "--randrepeat=1",
    ]);
    let (output, _) = timed(&mut command)?;
    terse::iops(&output, rw == "randwrite")
        .ok_or_else(|| no_terse(format!("fio {rw} qd{depth}"), &output))
}

/// 256 KiB sequential `rw` at QD8 over `size` bytes; returns MiB/s.
fn fio_sequential(client: Client, uri: &str, rw: &str, size: u64) -> Result<f64, XtaskError> {
    let mut command = fio_command(client, uri, rw, "256k", 8);
    command.arg(format!("--size={size}"));
    let (output, _) = timed(&mut command)?;
    terse_mib_s(&output, rw == "write").ok_or_else(|| no_terse(format!("fio {rw} 256k"), &output))
}

/// Copies export `uri` to a host file next to `data` and checks it holds
/// exactly the bytes of `data` (not measured): figures for a server that
/// loses or mangles data would be worthless.
fn verify(client: Client, uri: &str, data: &Path) -> Result<(), XtaskError> {
    let copy = data.with_extension("readback");
    let _ = std::fs::remove_file(&copy);
    timed(client.command("nbdcopy").arg(uri).arg(&copy))?;
    let same = files_equal(data, &copy)?;
    let _ = std::fs::remove_file(&copy);
    if same {
        println!("    read-back matches the data written");
        Ok(())
    } else {
        Err(XtaskError::Command {
            command: format!("nbdcopy {uri} (read-back)"),
            problem: format!("the export does not hold the bytes of {}", data.display()),
        })
    }
}

/// Whether two files have the same bytes.
fn files_equal(a: &Path, b: &Path) -> Result<bool, XtaskError> {
    use std::io::Read;
    let open = |path: &Path| File::open(path).map_err(|e| io_error(path, e));
    let (mut left, mut right) = (open(a)?, open(b)?);
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = read_full(&mut left, &mut x).map_err(|e| io_error(a, e))?;
        let m = read_full(&mut right, &mut y).map_err(|e| io_error(b, e))?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }

    /// Reads until `buffer` is full or the file ends.
    fn read_full(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read(&mut buffer[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }
}

pub(crate) fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs every client against the export `uri` (exactly `sizes.transfer`
/// bytes) into `figures`.
fn measure(
    label: &str,
    client: Client,
    uri: &str,
    data: &Path,
    sizes: Sizes,
    figures: &mut BTreeMap<Row, f64>,
) -> Result<(), XtaskError> {
    let size = sizes.transfer;
    crate::step(&format!("{label}: nbdcopy {} MiB write, read", size / MIB));
    for connections in CONNECTIONS {
        let (_, write) = timed(
            client
                .command("nbdcopy")
                .args([
                    "-S",
                    "0",
                    "--flush",
                    &format!("--connections={connections}"),
                ])
                .arg(data)
                .arg(uri),
        )?;
        let (_, read) = timed(client.command("nbdcopy").args([
            "--no-extents",
            &format!("--connections={connections}"),
            uri,
            "null:",
        ]))?;
        let (write_row, read_row) = if connections == 1 {
            (Row::CopyWrite1, Row::CopyRead1)
        } else {
            (Row::CopyWrite4, Row::CopyRead4)
        };
        figures.insert(write_row, mib_per_s(size, write));
        figures.insert(read_row, mib_per_s(size, read));
    }
    verify(client, uri, data)?;
    crate::step(&format!(
        "{label}: fio 256 KiB QD8 write, read; 4 KiB random, {} s each",
        sizes.runtime
    ));
    figures.insert(Row::SeqWrite, fio_sequential(client, uri, "write", size)?);
    figures.insert(Row::SeqRead, fio_sequential(client, uri, "read", size)?);
    for (row, rw, depth) in [
        (Row::RandRead1, "randread", 1),
        (Row::RandRead16, "randread", 16),
        (Row::RandWrite1, "randwrite", 1),
        (Row::RandWrite16, "randwrite", 16),
    ] {
        figures.insert(row, fio_random(client, uri, rw, depth, sizes.runtime)?);
    }
    Ok(())
}

/// The QEMU options of one appliance boot: issue #14's line, pmem0 (1 GiB
/// daxfs) and pmem1 (the raw export), on `netns`'s tap device if given.
fn appliance_options(
    name: &str,
    netns: Option<&TapNet>,
    qemu_args: &[String],
    sizes: Sizes,
    fresh: bool,
) -> Result<QemuOptions, XtaskError> {
    let mut config = format!("format=if-blank\nexport_raw={RAW_EXPORT}\n");
    if netns.is_some() {
        config += &daxbox_tests::netns::tap_boot_config_line();
    }
    let dir = run_dir(name);
    let nvdimm = |file: &str, size: u64| {
        if fresh {
            Nvdimm::fresh(dir.join(file), size)
        } else {
            Nvdimm::existing(dir.join(file), size)
        }
    };
    let mut options = QemuOptions::new(name, Firmware::Bios)
        .with_boot_config(config)
        .with_memory(512 * MIB)
        .with_nvdimm(nvdimm("pmem0.img", NVDIMM_SIZE))
        .with_nvdimm(nvdimm("pmem1.img", sizes.transfer))
        // After the harness's `-cpu qemu64,+rdrand`: the last -cpu wins.
        .with_extra_args(["-cpu", "max", "-smp", "1"])
        .with_extra_args(qemu_args.iter().cloned());
    options.max_runtime = Duration::from_secs(3600);
    if let Some(netns) = netns {
        // Not the run folder, which the first boot empties.
        let wrapper = netns.qemu_wrapper(&run_dir(&format!("{name}-wrapper")), &options.qemu)?;
        options.qemu = wrapper.to_string_lossy().into_owned();
        options.netdev = Some(netns.netdev());
    }
    Ok(options)
}

/// The QEMU arguments of a run over `net`: `--qemu-arg`s, and for tap
/// with `--tap-mtu N` the device's offer of that MTU
/// (`VIRTIO_NET_F_MTU`, `host_mtu=N`), so the guest uses the tap's MTU.
fn tap_qemu_args(net: Net, options: &Options) -> Vec<String> {
    let mut args = options.qemu_args.clone();
    if let (Net::Tap, Some(mtu)) = (net, options.tap_mtu) {
        args.push(String::from("-global"));
        args.push(format!("virtio-net-pci.host_mtu={mtu}"));
    }
    args
}

/// The export URI of `export` on `machine` over `net`.
fn appliance_uri(machine: &Machine, net: Net, export: &str) -> String {
    match net {
        Net::User => format!("nbd://127.0.0.1:{}/{export}", machine.nbd_port()),
        Net::Tap => format!("nbd://{TAP_GUEST_ADDRESS}:{GUEST_NBD_PORT}/{export}"),
    }
}

/// Powers the appliance off (a clean unmount, so the next boot does no
/// recovery); kills it if that fails.
fn power_off(mut machine: Machine) {
    if machine.send_raw(b"poweroff\r").is_ok() {
        let _ = machine.wait_exit(Duration::from_secs(60));
    }
    drop(machine);
}

/// Measures kernel `kernel` (letter index) over `net`: returns the raw
/// and the file column.
fn appliance(
    kernel: usize,
    net: Net,
    options: &Options,
    sizes: Sizes,
    data: &Path,
    label_prefix: &str,
) -> Result<[Column; 2], XtaskError> {
    let netns = match net {
        Net::User => None,
        Net::Tap => Some(TapNet::create(&format!("bench{kernel}"), options.tap_mtu)?),
    };
    let qemu_args = tap_qemu_args(net, options);
    let client = Client {
        netns: netns.as_ref(),
    };
    let name = format!("bench_nbd-{}-{}", net.name(), kernel);
    crate::step(&format!(
        "{label_prefix}{}: booting the appliance (pmem0 1 GiB daxfs, pmem1 raw)",
        net.name()
    ));
    let qemu = appliance_options(&name, netns.as_ref(), &qemu_args, sizes, true)?;
    let mut machine = Machine::boot_to_prompt(qemu).map_err(harness)?;
    println!("    QEMU: {}", machine.command_line());
    if let Some(ms) = ready_ms(&machine.output()) {
        println!("    daxbox: ready {ms} ms after kernel entry");
    }
    let size = sizes.transfer;
    let output = machine
        .command(&format!("create {FILE_EXPORT} {size}"))
        .map_err(harness)?;
    if !output.contains("created") {
        return Err(XtaskError::Command {
            command: format!("create {FILE_EXPORT} {size} (appliance shell)"),
            problem: output,
        });
    }
    let raw_uri = appliance_uri(&machine, net, RAW_EXPORT);
    let file_uri = appliance_uri(&machine, net, FILE_EXPORT);
    for uri in [&raw_uri, &file_uri] {
        client.wait_for_export(uri, Duration::from_secs(60), Duration::from_millis(250))?;
    }

    crate::step(&format!("idle host CPU of QEMU over {} s", sizes.idle));
    let hz = crate::bench_net::clock_ticks_per_second();
    let before = crate::bench_net::cpu_ticks(machine.pid())?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(sizes.idle));
    let ticks = crate::bench_net::cpu_ticks(machine.pid())?.saturating_sub(before);
    let idle = ticks as f64 / hz as f64 / started.elapsed().as_secs_f64() * 100.0;
    println!("    {ticks} ticks: {idle:.2} % of a core");

    let mut columns = [Kind::Raw, Kind::File].map(|kind| Column {
        label: format!(
            "{label_prefix}{} {}",
            net.name(),
            if kind == Kind::Raw { "raw" } else { "file" }
        ),
        kind,
        kernel: Some(kernel),
        net: Some(net),
        figures: BTreeMap::from([(Row::Idle, idle)]),
        multi_conn: None,
    });
    for (column, uri) in columns.iter_mut().zip([&raw_uri, &file_uri]) {
        column.multi_conn = client.multi_conn(uri);
        measure(&column.label, client, uri, data, sizes, &mut column.figures)?;
        println!("    {:?}", column.figures);
    }
    power_off(machine);

    crate::step(&format!(
        "{label_prefix}{}: QEMU start -> first NBD handshake, {} boot(s)",
        net.name(),
        sizes.boots
    ));
    let (mut raw_times, mut file_times) = (Vec::new(), Vec::new());
    for _ in 0..sizes.boots {
        let qemu = appliance_options(&name, netns.as_ref(), &qemu_args, sizes, false)?;
        let machine = Machine::boot(qemu).map_err(harness)?;
        let started = Instant::now();
        // Overlapping 1 s attempts, one started every 100 ms: the row is
        // resolved to about 0.1 s (wait_for_export).
        let every = Duration::from_millis(100);
        client.wait_for_export(
            &appliance_uri(&machine, net, RAW_EXPORT),
            Duration::from_secs(120),
            every,
        )?;
        raw_times.push(started.elapsed().as_secs_f64());
        client.wait_for_export(
            &appliance_uri(&machine, net, FILE_EXPORT),
            Duration::from_secs(60),
            every,
        )?;
        file_times.push(started.elapsed().as_secs_f64());
        println!(
            "    raw {:.2} s, file {:.2} s",
            raw_times.last().unwrap_or(&0.0),
            file_times.last().unwrap_or(&0.0)
        );
        power_off(machine);
    }
    for (column, times) in columns.iter_mut().zip([&mut raw_times, &mut file_times]) {
        if let Some(value) = median(times) {
            column.figures.insert(Row::Boot, value);
        }
    }
    drop(netns);
    Ok(columns)
}

/// Entry point of `cargo xtask bench nbd`.
pub fn nbd(args: &[String]) -> Result<(), XtaskError> {
    let Some(options) = parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    if options.nets.contains(&Net::Tap) {
        crate::tap::require_root()?;
    }
    let sizes = Sizes::of(&options);
    let mut kernels = options.kernels.clone();
    if let Some(first) = kernels.first() {
        std::env::set_var("DAXBOX_KERNEL", first);
    }
    prepare_for_harness()?;
    if kernels.is_empty() {
        kernels.push(PathBuf::from(
            std::env::var_os("DAXBOX_KERNEL").unwrap_or_default(),
        ));
    }
    for kernel in &kernels {
        if !kernel.is_file() {
            return Err(XtaskError::Usage(format!(
                "--kernel {}: no such file",
                kernel.display()
            )));
        }
    }
    let facts_before = crate::bench_trim::host_facts();
    println!("{facts_before}");

    let host: PathBuf = run_dir(HOST_DIR);
    std::fs::create_dir_all(&host).map_err(|e| io_error(&host, e))?;
    crate::step("writing pseudo-random source data and the qemu-nbd file");
    let data = host.join("data.bin");
    write_random_file(&data, sizes.transfer, 0x9e37_79b9_7f4a_7c15)?;
    let raw_file = host.join("qemu-nbd.raw");
    File::create(&raw_file)
        .and_then(|f| f.set_len(sizes.transfer))
        .map_err(|e| io_error(&raw_file, e))?;

    let mut columns = Vec::new();
    for (index, kernel) in kernels.iter().enumerate() {
        std::env::set_var("DAXBOX_KERNEL", kernel);
        let prefix = if kernels.len() > 1 {
            format!("{} ", (b'A' + index as u8) as char)
        } else {
            String::new()
        };
        for &net in &options.nets {
            columns.extend(appliance(index, net, &options, sizes, &data, &prefix)?);
        }
    }

    crate::step("starting qemu-nbd on 127.0.0.1");
    let server = QemuNbd::start(&raw_file)?;
    let client = Client { netns: None };
    let mut host_column = Column {
        label: "qemu-nbd".into(),
        kind: Kind::Host,
        kernel: None,
        net: None,
        figures: BTreeMap::new(),
        multi_conn: client.multi_conn(&server.uri()),
    };
    measure(
        "qemu-nbd",
        client,
        &server.uri(),
        &data,
        sizes,
        &mut host_column.figures,
    )?;
    drop(server);
    columns.push(host_column);

    if !options.keep {
        let _ = std::fs::remove_dir_all(&host);
    }
    println!();
    println!(
        "bench nbd: accel {}, {} MiB transfers, fio 4 KiB runs of {} s, boot-to-serve median of {}, \
         idle over {} s{}",
        std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into()),
        sizes.transfer / MIB,
        sizes.runtime,
        sizes.boots,
        sizes.idle,
        if options.quick { " (--quick)" } else { "" }
    );
    println!("before: {facts_before}");
    println!("after:  {}", crate::bench_trim::host_facts());
    if !options.qemu_args.is_empty() {
        println!("extra QEMU arguments: {}", options.qemu_args.join(" "));
    }
    if kernels.len() > 1 {
        for (index, kernel) in kernels.iter().enumerate() {
            println!(
                "kernel {}: {}",
                (b'A' + index as u8) as char,
                kernel.display()
            );
        }
    }
    println!();
    print!("{}", report(&columns, &kernels));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        let options = parse(&[]).unwrap().unwrap();
        assert_eq!(options.nets, [Net::User]);
        assert!(!options.quick && options.kernels.is_empty());
        let options = parse(&strings(&[
            "--quick",
            "--net",
            "both",
            "--kernel",
            "/a",
            "--kernel=/b",
            "--qemu-arg=-global",
            "--qemu-arg",
            "virtio-net-pci.event_idx=off",
            "--runtime",
            "5",
            "--keep",
            "--tap-mtu=9000",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            options,
            Options {
                quick: true,
                nets: vec![Net::User, Net::Tap],
                kernels: vec!["/a".into(), "/b".into()],
                qemu_args: strings(&["-global", "virtio-net-pci.event_idx=off"]),
                runtime: Some(5),
                keep: true,
                tap_mtu: Some(9000),
            }
        );
        let sizes = Sizes::of(&options);
        assert_eq!(
            (sizes.transfer, sizes.runtime, sizes.boots),
            (32 * MIB, 5, 1)
        );
        assert_eq!(
            parse(&strings(&["--net", "tap"])).unwrap().unwrap().nets,
            [Net::Tap]
        );
        assert!(parse(&strings(&["-h"])).unwrap().is_none());
        for bad in [
            &["--net", "bridge"][..],
            &["--net"],
            &["--runtime", "0"],
            &["--runtime=x"],
            &["--quick=1"],
            &["--frobnicate"],
            &["--kernel="],
            &["--tap-mtu", "67"],
            &["--tap-mtu", "65536"],
        ] {
            assert!(
                matches!(parse(&strings(bad)), Err(XtaskError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tap_mtu_is_offered_to_the_appliance_on_tap_runs_only() {
        let options = parse(&strings(&["--net=both", "--tap-mtu=9000", "--qemu-arg=-S"]))
            .unwrap()
            .unwrap();
        assert_eq!(tap_qemu_args(Net::User, &options), strings(&["-S"]));
        assert_eq!(
            tap_qemu_args(Net::Tap, &options),
            strings(&["-S", "-global", "virtio-net-pci.host_mtu=9000"])
        );
        let plain = parse(&strings(&["--net=tap"])).unwrap().unwrap();
        assert!(tap_qemu_args(Net::Tap, &plain).is_empty());
    }

    #[test]
    fn terse_line_gives_iops_and_bandwidth() {
        let mut fields = vec!["0"; 60];
        fields[0] = "3";
        fields[terse::READ_BW] = "35123";
        fields[terse::READ_IOPS] = "7454";
        fields[terse::WRITE_BW] = "2048";
        fields[terse::WRITE_IOPS] = "1234.5";
        let line = format!("fio: connected to NBD server\n{}\n", fields.join(";"));
        assert_eq!(terse::iops(&line, false), Some(7454.0));
        assert_eq!(terse::iops(&line, true), Some(1234.5));
        assert_eq!(terse_mib_s(&line, true), Some(2.0));
        assert!((terse_mib_s(&line, false).unwrap() - 34.3).abs() < 0.01);
        assert_eq!(terse::iops("no result", false), None);
    }

    #[test]
    fn random_data_has_no_zero_blocks() {
        let path = std::env::temp_dir().join(format!("bench-nbd-{}.bin", std::process::id()));
        write_random_file(&path, 2 * MIB, 42).expect("temp file");
        let bytes = std::fs::read(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        assert_eq!(bytes.len() as u64, 2 * MIB);
        assert!(bytes
            .chunks(4096)
            .all(|block| block.iter().any(|&b| b != 0)));
        assert_ne!(bytes[..4096], bytes[4096..8192], "not a repeating block");
    }

    #[test]
    fn files_equal_compares_bytes() {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let a = dir.join(format!("bench-nbd-a-{id}.bin"));
        let b = dir.join(format!("bench-nbd-b-{id}.bin"));
        write_random_file(&a, 3 * MIB, 7).expect("a");
        write_random_file(&b, 3 * MIB, 7).expect("b");
        assert!(files_equal(&a, &b).expect("compare"));
        let mut bytes = std::fs::read(&b).expect("read b");
        bytes[2 * MIB as usize + 5] ^= 1;
        std::fs::write(&b, &bytes).expect("write b");
        assert!(!files_equal(&a, &b).expect("compare"), "one bit differs");
        std::fs::write(&b, &bytes[..MIB as usize]).expect("write b");
        assert!(!files_equal(&a, &b).expect("compare"), "shorter");
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
    }

    fn column(label: &str, kind: Kind, kernel: Option<usize>, rows: &[(Row, f64)]) -> Column {
        Column {
            label: label.into(),
            kind,
            kernel,
            net: kernel.map(|_| Net::User),
            figures: rows.iter().copied().collect(),
            multi_conn: Some(kind == Kind::Raw),
        }
    }

    #[test]
    fn ratios_are_above_one_when_daxbox_is_better() {
        assert_eq!(ratio(Row::CopyWrite1, 60.0, 20.0), Some(3.0));
        // Boot: less is better, so the ratio is Linux / daxbox.
        assert_eq!(ratio(Row::Boot, 2.0, 11.0), Some(5.5));
        assert_eq!(ratio(Row::RandRead1, 0.0, 10.0), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn tables_show_figures_dashes_and_ratios() {
        let raw = column(
            "user raw",
            Kind::Raw,
            Some(0),
            &[
                (Row::Boot, 3.0),
                (Row::CopyWrite1, 58.5),
                (Row::CopyRead1, 29.25),
            ],
        );
        let host = column("qemu-nbd", Kind::Host, None, &[(Row::CopyWrite1, 117.0)]);
        let text = report(&[raw.clone(), host], &["/k".into()]);
        let line = |prefix: &str, from: &str| {
            text[text.find(from).expect(from)..]
                .lines()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} after {from} in:\n{text}"))
                .to_string()
        };
        let figures = line("nbdcopy write + flush, 1 conn", "unit");
        assert!(figures.ends_with("58.5     117.0"), "{figures}");
        assert!(
            line("fio 4 KiB randread QD1", "unit").ends_with('-'),
            "{text}"
        );
        assert!(line("server offers multi-conn", "unit").ends_with("yes        no"));
        // 58.5 / 19.5 = 3; boot 11.15 / 3.
        assert!(
            line("nbdcopy write + flush, 1 conn", "Linux raw").ends_with("3.00"),
            "{text}"
        );
        assert!(line("QEMU start", "Linux raw").ends_with("3.72"), "{text}");
        assert!(
            line("smallest", "Linux raw").ends_with("2.66"),
            "29.25 / 11: {text}"
        );
        assert!(line("nbdcopy write + flush, 1 conn", "the ceiling").ends_with("0.50"));
        assert!(text.contains("no Linux guest image here"), "{text}");
        assert!(text.contains("user raw 0.50/-"), "{text}");
        assert!(
            !text.contains("kernel A"),
            "one kernel: no before/after table"
        );
        // Two kernels: B / A per network and export.
        let mut later = raw.clone();
        later.label = "B user raw".into();
        later.kernel = Some(1);
        later.figures.insert(Row::CopyWrite1, 117.0);
        let text = report(&[raw, later], &["/a".into(), "/b".into()]);
        let before_after = &text[text.find("kernel A").expect("B / A table")..];
        let row = before_after
            .lines()
            .find(|line| line.starts_with("nbdcopy write + flush, 1 conn"))
            .expect("row");
        assert!(row.ends_with("2.00"), "{before_after}");
    }

    #[test]
    fn ready_line_gives_milliseconds() {
        assert_eq!(
            ready_ms("x\ndaxbox: ready (87 ms after kernel entry)\n"),
            Some(87)
        );
        assert_eq!(ready_ms("daxbox: ready\n"), None);
    }
}
