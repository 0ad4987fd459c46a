//! `cargo xtask cluster`: several appliances replicated with QEMU's
//! `quorum` driver in `qemu-storage-daemon`, re-exported over NBD.
//!
//! ```text
//!   NBD client ──► qemu-storage-daemon  (quorum q0, vote-threshold = majority,
//!                   │   │   │            read-pattern quorum, rewrite-corrupted)
//!                   c0  c1  c2           NBD children
//!                   │   │   │
//!                 node0 node1 node2      daxbox appliances in QEMU, each with its
//!                                        own NVDIMM file target/cluster/nodeK.img
//! ```
//!
//! The appliances are booted with the test harness (`daxbox_tests::Machine`,
//! the same QEMU line as `cargo xtask run` and the system tests); the export
//! is created over each serial shell and its size and transmission flags
//! are checked to be identical on every member before the quorum starts.
//!
//! A **watchdog** thread per member probes it every [`PROBE_INTERVAL`]: an
//! NBD handshake (greeting, `NBD_OPT_GO` of the export, `NBD_CMD_DISC`) and
//! `GET /healthz`, each with a [`PROBE_TIMEOUT`] (scaled by the host load).
//! After [`PROBE_FAILURES`] failed probes in a row the member is cut off:
//! its QEMU is SIGKILLed, which closes its NBD connection to the storage
//! daemon, whose requests to it then fail at once, so quorum writes waiting
//! for a frozen member complete on the others. QEMU 7.2's NBD client has no
//! per-request timeout: without the watchdog a member that stops answering
//! without closing its connection (SIGSTOP, a hung host) stalls every
//! write. See [`cut_off_bound`].
//!
//! `cargo xtask cluster` stays in the foreground as the supervisor (it owns
//! the QEMU processes and runs the watchdog); `status`, `kill K` and
//! `rebuild K` from another terminal talk to it over a Unix socket
//! (`target/cluster/control.sock`), and it does the QMP work. `stop` ends
//! every process listed in `target/cluster/state` by its PID, also when the
//! supervisor is gone.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use daxbox_tests::{load_factor, parse_size, target_dir, Firmware, Machine, Nvdimm, QemuOptions};
use serde_json::{json, Value};

use crate::{
    images::{harness, prepare_for_harness},
    qmp::Qmp,
    step, wants_help, XtaskError,
};

/// Default number of members.
pub const DEFAULT_NODES: usize = 3;
/// Most members `--nodes` takes: each is a QEMU with 512 MiB of RAM.
pub const MAX_NODES: usize = 7;
/// Default export size.
pub const DEFAULT_SIZE: u64 = 256 << 20;
/// Default name of the export on every member and of the quorum's export.
pub const DEFAULT_EXPORT: &str = "disk";
/// Default host port of the quorum's NBD export.
pub const DEFAULT_NBD_PORT: u16 = 10909;
/// How often the watchdog probes each member.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe (NBD handshake or `/healthz`) may take on an idle
/// host; scaled by [`load_factor`] (1 to 8).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed probes in a row that cut a member off.
pub const PROBE_FAILURES: u32 = 2;
/// Watchdog and drill events `status` shows (the latest).
const STATUS_EVENTS: usize = 8;
/// The export on a member booted with `--raw` (`export_raw=pmem0`).
const RAW_EXPORT: &str = "pmem0";
/// The quorum node's name in the storage daemon.
const QUORUM_NODE: &str = "q0";

/// Time between the watchdog's decision and the storage daemon seeing the
/// member's connection closed: SIGKILL of QEMU, the kernel closing its
/// sockets (measured: well under 100 ms; 1 s allowed).
const KILL_MARGIN: Duration = Duration::from_secs(1);

/// The longest a frozen member can stall writes before the watchdog cuts
/// it off, with probes of at most `timeout` each (a probe is the NBD
/// handshake and then `/healthz`, under one deadline): in the worst case
/// it freezes just after a probe passed; then [`PROBE_FAILURES`] probes
/// fail, each after an interval and at most `timeout`; then the kill.
pub fn cut_off_bound(timeout: Duration) -> Duration {
    (PROBE_INTERVAL + timeout) * PROBE_FAILURES + KILL_MARGIN
}

/// [`PROBE_TIMEOUT`] scaled by the host load.
pub fn probe_timeout() -> Duration {
    PROBE_TIMEOUT.mul_f64(load_factor())
}

fn cluster_dir() -> PathBuf {
    target_dir().join("cluster")
}

const USAGE: &str = "\
usage: cargo xtask cluster [start] [--nodes 3] [--size 256M] [--export disk|--raw]
                           [--nbd-port 10909] [--fresh] [--no-watchdog] [--probe-timeout S]
       cargo xtask cluster status | stop | kill K | rebuild K
       cargo xtask cluster test [--seed S]

start (the default) boots N daxbox appliances in QEMU (each with its own
NVDIMM file target/cluster/nodeK.img, its own forwarded NBD and HTTP ports
and serial log), creates the export on each (a daxfs file of --size, or with
--raw the whole NVDIMM, export `pmem0`), checks that every member offers it
with the same size and flags, and starts qemu-storage-daemon with a quorum
over them (vote-threshold = majority, read-pattern quorum, rewrite-corrupted),
exported on 127.0.0.1:--nbd-port under the same name. It then stays in the
foreground as the supervisor: it runs the watchdog that cuts off a member
that stops answering, and serves the commands below. Ctrl-C or
`cargo xtask cluster stop` ends it.
  --nodes N      members, 1 to 7 (default 3); a majority must be up for writes
  --size SIZE    export size (default 256M); the NVDIMM is twice that (daxfs)
  --export NAME  name of the export (default disk)
  --raw          export each member's whole NVDIMM (export_raw=pmem0)
  --nbd-port P   host port of the quorum's export (default 10909)
  --fresh        start from blank NVDIMM files (default: keep them)
  --no-watchdog  no watchdog: a member that stops answering stalls writes
  --probe-timeout S  seconds one watchdog probe may take (default 3 times the
                 host load factor, 1 to 8: the load average per CPU at start)

status           each member's state (watchdog) and the quorum's children (QMP)
kill K           SIGKILL member K's QEMU (a failure drill; writes go on)
rebuild K        boot member K again on a blank NVDIMM and mirror the quorum onto
                 it online (blockdev-add, blockdev-mirror replaces, block-job-complete)
stop             end the storage daemon, every member and the supervisor (by PID)
test             the cluster system test (kill, rebuild, freeze, 2 of 3 down)";

/// What each member exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportKind {
    /// A daxfs file of this name.
    File(String),
    /// The whole NVDIMM (`export_raw=pmem0`).
    Raw,
}

/// Options of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Members.
    pub nodes: usize,
    /// Export size (a file's size; with `Raw` the NVDIMM's).
    pub size: u64,
    /// What each member exports.
    pub export: ExportKind,
    /// Host port of the quorum's export (0 = any free port).
    pub nbd_port: u16,
    /// Start from blank NVDIMM files.
    pub fresh: bool,
    /// Run the watchdog (`--no-watchdog`: a frozen member stalls writes
    /// until someone kills it).
    pub watchdog: bool,
    /// `--probe-timeout`: one probe's timeout (`None`: [`PROBE_TIMEOUT`]
    /// scaled by the host load when the cluster starts).
    pub probe_timeout: Option<Duration>,
    /// Folder for NVDIMM files, the QMP socket and logs.
    pub dir: PathBuf,
    /// Prefix of the members' harness names (`<prefix>-nodeK`: their serial
    /// logs are in `target/test-runs/<prefix>-nodeK/`).
    pub prefix: String,
}

impl ClusterOptions {
    /// Defaults for `cargo xtask cluster`.
    pub fn new() -> Self {
        ClusterOptions {
            nodes: DEFAULT_NODES,
            size: DEFAULT_SIZE,
            export: ExportKind::File(DEFAULT_EXPORT.into()),
            nbd_port: DEFAULT_NBD_PORT,
            fresh: false,
            watchdog: true,
            probe_timeout: None,
            dir: cluster_dir(),
            prefix: "cluster".into(),
        }
    }

    /// The export's name on each member.
    pub fn member_export(&self) -> &str {
        match &self.export {
            ExportKind::File(name) => name,
            ExportKind::Raw => RAW_EXPORT,
        }
    }

    /// Votes a write needs: a majority of the members.
    pub fn vote_threshold(&self) -> usize {
        self.nodes / 2 + 1
    }

    fn nvdimm_size(&self) -> u64 {
        const ALIGN: u64 = 2 << 20;
        match self.export {
            // daxfs needs room for its tables and journal besides the file.
            ExportKind::File(_) => (self.size * 2).max(64 << 20).next_multiple_of(ALIGN),
            ExportKind::Raw => self.size.next_multiple_of(ALIGN),
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses the `start` options.
fn parse_start(args: &[String]) -> Result<ClusterOptions, XtaskError> {
    let mut options = ClusterOptions::new();
    let mut index = 0;
    while index < args.len() {
        let argument = args[index].as_str();
        let value = || {
            args.get(index + 1)
                .map(String::as_str)
                .ok_or_else(|| XtaskError::Usage(format!("{argument} needs a value")))
        };
        index += match argument {
            "--nodes" => {
                let text = value()?;
                options.nodes = match text.parse::<usize>() {
                    Ok(nodes) if (1..=MAX_NODES).contains(&nodes) => nodes,
                    _ => {
                        return Err(XtaskError::Usage(format!(
                            "--nodes: `{text}` is not a number from 1 to {MAX_NODES}"
                        )))
                    }
                };
                2
            }
            "--size" => {
                let text = value()?;
                options.size = parse_size(text)
                    .map_err(|error| XtaskError::Usage(format!("--size: {error}")))?;
                if options.size == 0 || !options.size.is_multiple_of(4096) {
                    return Err(XtaskError::Usage(format!(
                        "--size: `{text}` must be a non-zero multiple of 4 KiB"
                    )));
                }
                2
            }
            "--export" => {
                let name = value()?;
                let plain = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
                if !plain {
                    return Err(XtaskError::Usage(format!(
                        "--export: `{name}`: use 1 to 64 of A-Z a-z 0-9 - _ . (it goes into \
                         the storage daemon's JSON and the shell)"
                    )));
                }
                options.export = ExportKind::File(name.into());
                2
            }
            "--raw" => {
                options.export = ExportKind::Raw;
                1
            }
            "--nbd-port" => {
                let text = value()?;
                options.nbd_port = match text.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => {
                        return Err(XtaskError::Usage(format!(
                            "--nbd-port: `{text}` is not a port"
                        )))
                    }
                };
                2
            }
            "--fresh" => {
                options.fresh = true;
                1
            }
            "--no-watchdog" => {
                options.watchdog = false;
                1
            }
            "--probe-timeout" => {
                let text = value()?;
                options.probe_timeout = match text.parse::<f64>() {
                    Ok(seconds) if (0.1..=600.0).contains(&seconds) => {
                        Some(Duration::from_secs_f64(seconds))
                    }
                    _ => {
                        return Err(XtaskError::Usage(format!(
                            "--probe-timeout: `{text}` is not a number of seconds from 0.1 to 600"
                        )))
                    }
                };
                2
            }
            other => {
                return Err(XtaskError::Usage(format!(
                    "unknown option `{other}`\n\n{USAGE}"
                )))
            }
        };
    }
    Ok(options)
}

/// A member's state as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// Answering probes; a child of the quorum.
    Up,
    /// Its QEMU is gone (killed, cut off by the watchdog, crashed): why.
    Down(String),
    /// Being booted again and mirrored onto.
    Rebuilding,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberState::Up => write!(f, "up"),
            MemberState::Down(why) => write!(f, "DOWN: {why}"),
            MemberState::Rebuilding => write!(f, "rebuilding"),
        }
    }
}

struct Member {
    index: usize,
    /// Its child node's name in the storage daemon (`c1`, after a rebuild
    /// `c1r1`, ...).
    node: String,
    /// Rebuilds so far (a watchdog thread serves one generation).
    generation: u32,
    nbd_port: u16,
    http_port: u16,
    pid: u32,
    state: MemberState,
    serial_log: PathBuf,
    machine: Option<Machine>,
}

/// A running cluster. Dropping it stops the storage daemon and every
/// member.
pub struct Cluster {
    options: ClusterOptions,
    members: Mutex<Vec<Member>>,
    qmp: Mutex<Qmp>,
    qsd: Mutex<Child>,
    qsd_pid: u32,
    nbd_port: u16,
    /// Size and transmission flags every member offered.
    export_info: (u64, u16),
    stopping: AtomicBool,
    /// One probe's timeout ([`PROBE_TIMEOUT`] scaled by the host load at
    /// the start).
    probe_timeout: Duration,
    /// Watchdog messages (also printed).
    log: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn setup_error(message: impl Into<String>) -> XtaskError {
    XtaskError::Setup(message.into())
}

/// The quorum's `--blockdev` JSON.
pub fn quorum_blockdev(threshold: usize, children: &[(String, u16)], export: &str) -> Value {
    let children: Vec<Value> = children
        .iter()
        .map(|(node, port)| child_blockdev(node, *port, export))
        .collect();
    json!({
        "driver": "quorum",
        "node-name": QUORUM_NODE,
        "vote-threshold": threshold,
        "read-pattern": "quorum",
        "rewrite-corrupted": true,
        "children": children,
    })
}

/// One member as an NBD child node.
pub fn child_blockdev(node: &str, port: u16, export: &str) -> Value {
    json!({
        "driver": "nbd",
        "node-name": node,
        "server": { "type": "inet", "host": "127.0.0.1", "port": port.to_string() },
        "export": export,
    })
}

/// Boots one member: NVDIMM `nodeK.img` (blank when `fresh`), the export
/// created (or found) with `size`. Returns the machine.
fn boot_member(options: &ClusterOptions, index: usize, fresh: bool) -> Result<Machine, XtaskError> {
    let image = options.dir.join(format!("node{index}.img"));
    let size = options.nvdimm_size();
    let nvdimm = if fresh || !image.exists() {
        Nvdimm::fresh(&image, size)
    } else {
        Nvdimm::existing(&image, size)
    };
    let config = match options.export {
        ExportKind::File(_) => "format=if-blank\n".to_string(),
        ExportKind::Raw => format!("export_raw={RAW_EXPORT}\n"),
    };
    let mut qemu = QemuOptions::new(format!("{}-node{index}", options.prefix), Firmware::Bios)
        .with_boot_config(config)
        .with_nvdimm(nvdimm);
    // The harness's own watchdog ends QEMU after max_runtime: a cluster
    // runs until stopped.
    qemu.max_runtime = Duration::from_secs(30 * 24 * 3600);
    let mut machine = Machine::boot_to_prompt(qemu).map_err(harness)?;
    if let ExportKind::File(name) = &options.export {
        let listing = machine.command("ls").map_err(harness)?;
        let exists = listing
            .lines()
            .any(|line| line.split_whitespace().next() == Some(name.as_str()));
        if !exists {
            let created = machine
                .command(&format!("create {name} {}", options.size))
                .map_err(harness)?;
            if !created.contains("created") {
                return Err(XtaskError::Command {
                    command: format!("create {name} {} (node{index} shell)", options.size),
                    problem: created,
                });
            }
        }
    }
    Ok(machine)
}

/// Boots members `indices` in parallel (each boot is mostly QEMU CPU).
pub(crate) fn boot_members(
    options: &ClusterOptions,
    indices: &[usize],
    fresh: bool,
) -> Result<Vec<Machine>, XtaskError> {
    let handles: Vec<_> = indices
        .iter()
        .map(|&index| {
            let options = options.clone();
            thread::spawn(move || boot_member(&options, index, fresh))
        })
        .collect();
    let mut machines = Vec::new();
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(machine)) => machines.push(machine),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert(setup_error("a boot thread panicked"));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(machines),
    }
}

/// Waits until member `port`/`http` answers both probes (the NBD export and
/// `/healthz`), at most `timeout`. Returns the export's size and flags.
fn wait_member(
    port: u16,
    http: u16,
    export: &str,
    timeout: Duration,
) -> Result<(u64, u16), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let result = nbd_probe(port, export, probe_timeout())
            .and_then(|info| healthz(http, probe_timeout()).map(|()| info));
        match result {
            Ok(info) => return Ok(info),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl Cluster {
    /// Boots the members, checks their exports agree, starts the storage
    /// daemon with the quorum and the watchdog. `say` gets progress lines.
    pub fn start(options: ClusterOptions, say: &dyn Fn(&str)) -> Result<Arc<Cluster>, XtaskError> {
        fs::create_dir_all(&options.dir)
            .map_err(|error| XtaskError::Io(format!("{}: {error}", options.dir.display())))?;
        // Taken before the boots, which load the host for a while.
        let probe_timeout = options.probe_timeout.unwrap_or_else(probe_timeout);
        let export = options.member_export().to_string();
        say(&format!(
            "booting {} appliances ({} export `{export}`, NVDIMMs {}/nodeK.img{})",
            options.nodes,
            daxbox_tests::human_size(options.size),
            options.dir.display(),
            if options.fresh { ", blank" } else { "" }
        ));
        let indices: Vec<usize> = (0..options.nodes).collect();
        let machines = boot_members(&options, &indices, options.fresh)?;
        let mut members = Vec::new();
        let mut info: Option<(u64, u16)> = None;
        for (index, machine) in machines.into_iter().enumerate() {
            let offered = wait_member(
                machine.nbd_port(),
                machine.http_port(),
                &export,
                Duration::from_secs(60),
            )
            .map_err(|error| setup_error(format!("node{index}: {error}")))?;
            say(&format!(
                "node{index}: pid {}, nbd://127.0.0.1:{}/{export}, http://127.0.0.1:{}/healthz ok, \
                 {} bytes, flags {:#06x}",
                machine.pid(),
                machine.nbd_port(),
                machine.http_port(),
                offered.0,
                offered.1
            ));
            check_same(info, offered, index)?;
            info = Some(offered);
            members.push(Member {
                index,
                node: format!("c{index}"),
                generation: 0,
                nbd_port: machine.nbd_port(),
                http_port: machine.http_port(),
                pid: machine.pid(),
                state: MemberState::Up,
                serial_log: machine.serial_log().to_path_buf(),
                machine: Some(machine),
            });
        }
        let export_info = info.ok_or_else(|| setup_error("no members"))?;
        if export_info.0 != options.size && matches!(options.export, ExportKind::File(_)) {
            return Err(setup_error(format!(
                "the members offer `{export}` with {} bytes, not the --size {}: an export kept \
                 from an earlier cluster? use --fresh",
                export_info.0, options.size
            )));
        }

        let nbd_port = if options.nbd_port == 0 {
            daxbox_tests::free_port().map_err(harness)?
        } else {
            options.nbd_port
        };
        let socket = options.dir.join("qsd.qmp");
        let _ = fs::remove_file(&socket);
        let children: Vec<(String, u16)> = members
            .iter()
            .map(|member| (member.node.clone(), member.nbd_port))
            .collect();
        let blockdev = quorum_blockdev(options.vote_threshold(), &children, &export);
        let args = vec![
            "--chardev".to_string(),
            format!("socket,id=qmp,path={},server=on,wait=off", socket.display()),
            "--monitor".into(),
            "chardev=qmp".into(),
            "--blockdev".into(),
            blockdev.to_string(),
            "--nbd-server".into(),
            format!("addr.type=inet,addr.host=127.0.0.1,addr.port={nbd_port}"),
            "--export".into(),
            format!("type=nbd,id=e0,node-name={QUORUM_NODE},name={export},writable=on"),
        ];
        let log_path = options.dir.join("qsd.log");
        let log = fs::File::create(&log_path)
            .map_err(|error| XtaskError::Io(format!("{}: {error}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|error| XtaskError::Io(error.to_string()))?;
        say(&format!(
            "running: qemu-storage-daemon {} (log {})",
            args.iter()
                .map(|arg| format!("'{arg}'"))
                .collect::<Vec<_>>()
                .join(" "),
            log_path.display()
        ));
        let mut qsd = Command::new("qemu-storage-daemon")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| XtaskError::Command {
                command: "qemu-storage-daemon".into(),
                problem: error.to_string(),
            })?;
        let qsd_pid = qsd.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        let qmp = loop {
            if let Ok(Some(status)) = qsd.try_wait() {
                return Err(XtaskError::Command {
                    command: "qemu-storage-daemon".into(),
                    problem: format!(
                        "exited ({status}): {}",
                        fs::read_to_string(&log_path).unwrap_or_default().trim()
                    ),
                });
            }
            if socket.exists() {
                if let Ok(qmp) = Qmp::connect(&socket, Duration::from_secs(30)) {
                    break qmp;
                }
            }
            if Instant::now() >= deadline {
                let _ = qsd.kill();
                let _ = qsd.wait();
                return Err(setup_error(
                    "qemu-storage-daemon's QMP socket did not come up in 30 s",
                ));
            }
            thread::sleep(Duration::from_millis(100));
        };
        let cluster = Arc::new(Cluster {
            options,
            members: Mutex::new(members),
            qmp: Mutex::new(qmp),
            qsd: Mutex::new(qsd),
            qsd_pid,
            nbd_port,
            export_info,
            stopping: AtomicBool::new(false),
            probe_timeout,
            log: Mutex::new(Vec::new()),
        });
        // From here an error drops `cluster`, which ends the storage
        // daemon and the members (no watchdog holds it yet).
        let quorum_info = nbd_probe(nbd_port, &export, Duration::from_secs(10))
            .map_err(|error| setup_error(format!("the quorum's export: {error}")))?;
        if quorum_info.0 != export_info.0 {
            return Err(setup_error(format!(
                "the quorum offers {} bytes, the members {}",
                quorum_info.0, export_info.0
            )));
        }
        for index in 0..cluster.options.nodes {
            cluster.spawn_watchdog(index, 0);
        }
        Ok(cluster)
    }

    /// The quorum's NBD port.
    pub fn nbd_port(&self) -> u16 {
        self.nbd_port
    }

    /// The export name (the same on the quorum and every member).
    pub fn export(&self) -> &str {
        self.options.member_export()
    }

    /// The quorum's NBD URI.
    pub fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.nbd_port, self.export())
    }

    /// Member `index`'s NBD URI.
    pub fn member_uri(&self, index: usize) -> String {
        format!(
            "nbd://127.0.0.1:{}/{}",
            self.member_port(index),
            self.export()
        )
    }

    /// Member `index`'s NBD port.
    pub fn member_port(&self, index: usize) -> u16 {
        lock(&self.members)[index].nbd_port
    }

    /// Member `index`'s QEMU PID.
    pub fn member_pid(&self, index: usize) -> u32 {
        lock(&self.members)[index].pid
    }

    /// Member `index`'s state.
    pub fn member_state(&self, index: usize) -> MemberState {
        lock(&self.members)[index].state.clone()
    }

    fn note(&self, line: String) {
        println!("    {line}");
        let mut log = lock(&self.log);
        // Bounded: a member flapping for days must not grow it forever.
        if log.len() >= 4 * STATUS_EVENTS {
            log.drain(..2 * STATUS_EVENTS);
        }
        log.push(line);
    }

    /// The longest a frozen member stalls writes ([`cut_off_bound`]);
    /// `None` without the watchdog.
    pub fn cut_off_bound(&self) -> Option<Duration> {
        self.options
            .watchdog
            .then(|| cut_off_bound(self.probe_timeout))
    }

    /// One probe's timeout.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    fn spawn_watchdog(self: &Arc<Self>, index: usize, generation: u32) {
        if !self.options.watchdog {
            return;
        }
        let cluster = Arc::clone(self);
        thread::spawn(move || cluster.watch(index, generation));
    }

    /// One member's watchdog (see the module docs).
    fn watch(&self, index: usize, generation: u32) {
        let export = self.export().to_string();
        let mut failures = 0;
        loop {
            thread::sleep(PROBE_INTERVAL);
            let (nbd_port, http_port) = {
                let members = lock(&self.members);
                let member = &members[index];
                if self.stopping.load(Ordering::SeqCst)
                    || member.generation != generation
                    || member.state != MemberState::Up
                {
                    return;
                }
                (member.nbd_port, member.http_port)
            };
            match probe(nbd_port, http_port, &export, self.probe_timeout) {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    self.note(format!(
                        "watchdog: node{index}: probe {failures}/{PROBE_FAILURES} failed: {error}"
                    ));
                    if failures >= PROBE_FAILURES {
                        self.cut_off(index, generation, &error);
                        return;
                    }
                }
            }
        }
    }

    /// Kills member `index`'s QEMU (if it is still generation
    /// `generation`) and marks it down.
    fn cut_off(&self, index: usize, generation: u32, why: &str) {
        let machine = {
            let mut members = lock(&self.members);
            let member = &mut members[index];
            if member.generation != generation || member.state != MemberState::Up {
                return;
            }
            member.state = MemberState::Down(format!("cut off by the watchdog ({why})"));
            member.machine.take()
        };
        if let Some(mut machine) = machine {
            // SIGKILL also ends a stopped process; its sockets close, so
            // the storage daemon's requests to it fail at once.
            machine.kill();
        }
        self.note(format!(
            "watchdog: node{index} cut off (QEMU killed): writes go on with the other members"
        ));
    }

    /// SIGKILLs member `index` (a failure drill).
    pub fn kill(&self, index: usize) -> Result<(), String> {
        let machine = {
            let mut members = lock(&self.members);
            let member = members
                .get_mut(index)
                .ok_or_else(|| format!("there is no node{index}"))?;
            if member.state != MemberState::Up {
                return Err(format!("node{index} is not up ({})", member.state));
            }
            member.state = MemberState::Down("killed (cargo xtask cluster kill)".into());
            member.machine.take()
        };
        if let Some(mut machine) = machine {
            machine.kill();
        }
        self.note(format!("node{index}: QEMU SIGKILLed"));
        Ok(())
    }

    /// Sends SIGSTOP to member `index` (tests: a member that hangs).
    pub fn freeze(&self, index: usize) -> Result<(), String> {
        signal(self.member_pid(index), "STOP")
    }

    /// Boots member `index` again on a blank NVDIMM and mirrors the quorum
    /// onto it while it keeps serving: `blockdev-add` of the new member,
    /// `blockdev-mirror` with `replaces` of the old child, `BLOCK_JOB_READY`,
    /// `block-job-complete`. `say` gets progress lines.
    pub fn rebuild(self: &Arc<Self>, index: usize, say: &dyn Fn(&str)) -> Result<(), String> {
        let old_node = {
            let mut members = lock(&self.members);
            let member = members
                .get_mut(index)
                .ok_or_else(|| format!("there is no node{index}"))?;
            match &member.state {
                MemberState::Down(_) => {}
                MemberState::Up => {
                    return Err(format!(
                        "node{index} is up: `cargo xtask cluster kill {index}` first"
                    ))
                }
                MemberState::Rebuilding => return Err(format!("node{index} is being rebuilt")),
            }
            member.state = MemberState::Rebuilding;
            member.node.clone()
        };
        let result = self.rebuild_inner(index, &old_node, say);
        if let Err(error) = &result {
            let machine = {
                let mut members = lock(&self.members);
                members[index].state = MemberState::Down(format!("rebuild failed: {error}"));
                members[index].machine.take()
            };
            if let Some(mut machine) = machine {
                machine.kill();
            }
        }
        result
    }

    fn rebuild_inner(
        self: &Arc<Self>,
        index: usize,
        old_node: &str,
        say: &dyn Fn(&str),
    ) -> Result<(), String> {
        let export = self.export().to_string();
        say(&format!("node{index}: booting on a blank NVDIMM"));
        let mut machines =
            boot_members(&self.options, &[index], true).map_err(|error| error.to_string())?;
        let machine = machines.pop().ok_or("no machine booted")?;
        let offered = wait_member(
            machine.nbd_port(),
            machine.http_port(),
            &export,
            Duration::from_secs(60),
        )?;
        if offered != self.export_info {
            return Err(format!(
                "node{index} offers `{export}` with {} bytes, flags {:#06x}; the cluster has {} \
                 bytes, flags {:#06x}",
                offered.0, offered.1, self.export_info.0, self.export_info.1
            ));
        }
        // A new generation (and child node name) per attempt: a failed
        // attempt may have left its node in the storage daemon.
        let generation = {
            let mut members = lock(&self.members);
            members[index].generation += 1;
            members[index].generation
        };
        let new_node = format!("c{index}r{generation}");
        let port = machine.nbd_port();
        say(&format!(
            "node{index}: up (pid {}, nbd port {port}); blockdev-add {new_node}",
            machine.pid()
        ));
        {
            let mut members = lock(&self.members);
            let member = &mut members[index];
            member.pid = machine.pid();
            member.nbd_port = port;
            member.http_port = machine.http_port();
            member.serial_log = machine.serial_log().to_path_buf();
            member.machine = Some(machine);
        }
        let job = format!("rebuild-node{index}-{generation}");
        {
            let mut qmp = lock(&self.qmp);
            qmp.execute("blockdev-add", child_blockdev(&new_node, port, &export))?;
            say(&format!(
                "blockdev-mirror device={QUORUM_NODE} target={new_node} sync=full replaces={old_node} \
                 copy-mode=write-blocking"
            ));
            qmp.execute(
                "blockdev-mirror",
                json!({
                    "job-id": job,
                    "device": QUORUM_NODE,
                    "target": new_node,
                    "sync": "full",
                    "replaces": old_node,
                    // Writes during the rebuild go to the new member before
                    // they complete, so the job converges under any write
                    // load (background mode chases a dirty bitmap).
                    "copy-mode": "write-blocking",
                }),
            )?;
        }
        // Progress until the job is ready (source and target in sync, new
        // writes go to both).
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let mut qmp = lock(&self.qmp);
            let jobs = qmp.execute("query-block-jobs", json!({}))?;
            let this = jobs
                .as_array()
                .and_then(|jobs| jobs.iter().find(|one| one["device"] == job.as_str()))
                .cloned();
            let events = qmp.take_events();
            drop(qmp);
            if let Some(event) = events.iter().find(|event| {
                event["event"] == "BLOCK_JOB_COMPLETED" && event["data"]["device"] == job.as_str()
            }) {
                return Err(format!("the mirror ended early: {}", event["data"]));
            }
            let Some(this) = this else {
                return Err("the mirror job disappeared".into());
            };
            let (done, total) = (
                this["offset"].as_u64().unwrap_or(0),
                this["len"].as_u64().unwrap_or(0),
            );
            if this["ready"] == true {
                say(&format!(
                    "mirror ready after {:.1} s ({} of {} bytes copied)",
                    started.elapsed().as_secs_f64(),
                    done,
                    total
                ));
                break;
            }
            if let Some(error) = this.get("error").and_then(Value::as_str) {
                return Err(format!("mirror error: {error}"));
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                say(&format!("mirror: {} / {} MiB", done >> 20, total >> 20));
                last_report = Instant::now();
            }
            thread::sleep(Duration::from_millis(250));
        }
        {
            let mut qmp = lock(&self.qmp);
            qmp.execute("block-job-complete", json!({ "device": job }))?;
            let event =
                qmp.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(120), |data| {
                    data["device"] == job.as_str()
                })?;
            if let Some(error) = event["data"].get("error") {
                return Err(format!("mirror completion failed: {error}"));
            }
        }
        {
            let mut members = lock(&self.members);
            let member = &mut members[index];
            member.node = new_node.clone();
            member.state = MemberState::Up;
        }
        self.spawn_watchdog(index, generation);
        say(&format!(
            "node{index} rebuilt: {new_node} replaced {old_node} in the quorum ({:.1} s)",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The quorum's children as QMP sees them (node names of the quorum
    /// node's children).
    pub fn quorum_children(&self) -> Result<Vec<String>, String> {
        let graph = lock(&self.qmp).execute("x-debug-query-block-graph", json!({}))?;
        let nodes = graph["nodes"].as_array().cloned().unwrap_or_default();
        let name_of = |id: &Value| {
            nodes
                .iter()
                .find(|node| node["id"] == *id)
                .and_then(|node| node["name"].as_str())
                .unwrap_or("?")
                .to_string()
        };
        let quorum_id = nodes
            .iter()
            .find(|node| node["name"] == QUORUM_NODE)
            .map(|node| node["id"].clone())
            .ok_or("no quorum node in the block graph")?;
        let children = graph["edges"]
            .as_array()
            .map(|edges| {
                edges
                    .iter()
                    .filter(|edge| edge["parent"] == quorum_id)
                    .map(|edge| name_of(&edge["child"]))
                    .collect()
            })
            .unwrap_or_default();
        Ok(children)
    }

    /// A status report: the quorum, each member, the quorum's children.
    pub fn status(&self) -> String {
        let mut text = String::new();
        let up = lock(&self.members)
            .iter()
            .filter(|member| member.state == MemberState::Up)
            .count();
        let threshold = self.options.vote_threshold();
        let _ = writeln!(
            text,
            "quorum: {} ({} bytes), {up} of {} members up, writes need {threshold}: {}",
            self.uri(),
            self.export_info.0,
            self.options.nodes,
            if up >= threshold {
                "writable"
            } else {
                "WRITES FAIL"
            }
        );
        for member in lock(&self.members).iter() {
            let state = &member.state;
            let _ = writeln!(
                text,
                "node{}: {state}; child {}, pid {}, nbd://127.0.0.1:{}/{}, serial log {}",
                member.index,
                member.node,
                member.pid,
                member.nbd_port,
                self.export(),
                member.serial_log.display()
            );
        }
        let log = lock(&self.log);
        for line in &log[log.len().saturating_sub(STATUS_EVENTS)..] {
            let _ = writeln!(text, "event: {line}");
        }
        drop(log);
        match self.quorum_children() {
            Ok(children) => {
                let _ = writeln!(text, "quorum children (QMP): {}", children.join(", "));
            }
            Err(error) => {
                let _ = writeln!(text, "quorum children (QMP): {error}");
            }
        }
        text
    }

    /// The state file: every PID, the ports, the sockets (for `stop` and
    /// for people).
    fn state_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "supervisor {}", std::process::id());
        let _ = writeln!(text, "qsd {}", self.qsd_pid);
        for member in lock(&self.members).iter() {
            let _ = writeln!(text, "node{} {}", member.index, member.pid);
        }
        let _ = writeln!(text, "# quorum {}", self.uri());
        let _ = writeln!(text, "# qmp {}", self.options.dir.join("qsd.qmp").display());
        text
    }

    /// Stops the watchdogs, the storage daemon and every member.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let mut qsd = lock(&self.qsd);
            let _ = qsd.kill();
            let _ = qsd.wait();
        }
        let machines: Vec<Machine> = lock(&self.members)
            .iter_mut()
            .filter_map(|member| member.machine.take())
            .collect();
        for mut machine in machines {
            machine.kill();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_same(
    info: Option<(u64, u16)>,
    offered: (u64, u16),
    index: usize,
) -> Result<(), XtaskError> {
    match info {
        Some(first) if first != offered => Err(setup_error(format!(
            "node{index} offers the export with {} bytes, flags {:#06x}; node0 with {} bytes, \
             flags {:#06x}: members must be identical",
            offered.0, offered.1, first.0, first.1
        ))),
        _ => Ok(()),
    }
}

/// `kill -SIGNAL PID`.
pub fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(|error| format!("kill: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pid}: {status}"))
    }
}

fn connect(port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|error| error.to_string())?;
    Ok(stream)
}

/// NBD handshake helpers (fixed newstyle, `NBD_OPT_GO`; proto.md).
pub mod nbd {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// `NBD_CMD_READ`.
    pub const CMD_READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const CMD_WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const CMD_DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const CMD_FLUSH: u16 = 3;
    /// `NBD_CMD_FLAG_FUA`.
    pub const FLAG_FUA: u16 = 1;
    const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    const OPT_GO: u32 = 7;
    const REP_ACK: u32 = 1;
    const REP_INFO: u32 = 3;
    /// Longest option reply accepted (a server could announce 4 GiB).
    const MAX_OPTION_REPLY: usize = 64 << 10;

    fn read<const N: usize>(stream: &mut TcpStream) -> Result<[u8; N], String> {
        let mut bytes = [0u8; N];
        stream
            .read_exact(&mut bytes)
            .map_err(|error| error.to_string())?;
        Ok(bytes)
    }

    /// Greeting, `NBD_OPT_GO` of `export`: returns (size, flags); the
    /// connection is then in transmission.
    pub fn handshake(stream: &mut TcpStream, export: &str) -> Result<(u64, u16), String> {
        let greeting: [u8; 18] = read(stream)?;
        if &greeting[..16] != b"NBDMAGICIHAVEOPT" {
            return Err("not an NBD newstyle server".into());
        }
        stream
            .write_all(&3u32.to_be_bytes())
            .map_err(|e| e.to_string())?;
        let mut data = (export.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut option = IHAVEOPT.to_be_bytes().to_vec();
        option.extend_from_slice(&OPT_GO.to_be_bytes());
        option.extend_from_slice(&(data.len() as u32).to_be_bytes());
        option.extend_from_slice(&data);
        stream.write_all(&option).map_err(|e| e.to_string())?;
        let mut info = None;
        loop {
            let header: [u8; 20] = read(stream)?;
            let magic = u64::from_be_bytes(header[..8].try_into().unwrap_or_default());
            if magic != OPTION_REPLY_MAGIC {
                return Err("bad option reply magic".into());
            }
            let kind = u32::from_be_bytes(header[12..16].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(header[16..20].try_into().unwrap_or_default()) as usize;
            if len > MAX_OPTION_REPLY {
                return Err(format!("option reply of {len} bytes"));
            }
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).map_err(|e| e.to_string())?;
            match kind {
                REP_ACK => break,
                REP_INFO if body.len() >= 12 && body[..2] == [0, 0] => {
                    let size = u64::from_be_bytes(body[2..10].try_into().unwrap_or_default());
                    info = Some((size, u16::from_be_bytes([body[10], body[11]])));
                }
                REP_INFO => {}
                error => {
                    return Err(format!(
                        "NBD_OPT_GO {export:?} refused ({error:#x}: {})",
                        String::from_utf8_lossy(&body)
                    ))
                }
            }
        }
        info.ok_or_else(|| "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into())
    }

    /// One request header plus `payload`.
    pub fn request(
        stream: &mut TcpStream,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(28 + payload.len());
        bytes.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(payload);
        stream.write_all(&bytes).map_err(|error| error.to_string())
    }

    /// One simple reply header: (error, cookie).
    pub fn simple_reply(stream: &mut TcpStream) -> Result<(u32, u64), String> {
        let header: [u8; 16] = read(stream)?;
        if u32::from_be_bytes(header[..4].try_into().unwrap_or_default()) != SIMPLE_REPLY_MAGIC {
            return Err("bad simple reply magic".into());
        }
        Ok((
            u32::from_be_bytes(header[4..8].try_into().unwrap_or_default()),
            u64::from_be_bytes(header[8..16].try_into().unwrap_or_default()),
        ))
    }

    /// Reads `len` bytes at `offset` (simple replies).
    pub fn read_at(stream: &mut TcpStream, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        request(stream, CMD_READ, 0, offset, offset, len, &[])?;
        let (error, _) = simple_reply(stream)?;
        if error != 0 {
            return Err(format!("read at {offset}: NBD error {error}"));
        }
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).map_err(|e| e.to_string())?;
        Ok(data)
    }
}

/// One watchdog probe: [`nbd_probe`], then [`healthz`], both within
/// `timeout` in all (the probe runs on its own thread; one that has not
/// answered at the deadline has failed, whatever it is stuck in).
pub fn probe(nbd_port: u16, http_port: u16, export: &str, timeout: Duration) -> Result<(), String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let export = export.to_string();
    thread::spawn(move || {
        let result = nbd_probe(nbd_port, &export, timeout)
            .map_err(|error| format!("NBD: {error}"))
            .and_then(|_| {
                healthz(http_port, timeout).map_err(|error| format!("/healthz: {error}"))
            });
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:.1} s", timeout.as_secs_f64())),
    }
}

/// The watchdog's NBD liveness check: a full handshake of `export` within
/// `timeout`, then `NBD_CMD_DISC`. Returns the export's size and flags.
pub fn nbd_probe(port: u16, export: &str, timeout: Duration) -> Result<(u64, u16), String> {
    let started = Instant::now();
    let mut stream = connect(port, timeout)?;
    let info = nbd::handshake(&mut stream, export).map_err(|error| {
        if started.elapsed() >= timeout {
            format!("no answer within {timeout:?}")
        } else {
            error
        }
    })?;
    let _ = nbd::request(&mut stream, nbd::CMD_DISC, 0, 0, 0, 0, &[]);
    Ok(info)
}

/// `GET /healthz` must answer `200` within `timeout`.
pub fn healthz(port: u16, timeout: Duration) -> Result<(), String> {
    let mut stream = connect(port, timeout)?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: daxbox\r\nConnection: close\r\n\r\n")
        .map_err(|error| error.to_string())?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|error| format!("no answer within {timeout:?} ({error})"))?;
    if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!("answered `{}`", String::from_utf8_lossy(&head)))
    }
}

/// Entry point of `cargo xtask cluster`.
pub fn cluster_command(args: &[String]) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("stop") => stop(),
        Some("status") => control("status"),
        Some("kill") => control(&format!("kill {}", member_argument(args)?)),
        Some("rebuild") => control(&format!("rebuild {}", member_argument(args)?)),
        Some("start") => supervise(parse_start(&args[1..])?),
        _ => supervise(parse_start(args)?),
    }
}

fn member_argument(args: &[String]) -> Result<usize, XtaskError> {
    match args {
        [_, number] => number
            .parse::<usize>()
            .ok()
            .filter(|&number| number < MAX_NODES)
            .ok_or_else(|| XtaskError::Usage(format!("`{number}` is not a member number"))),
        _ => Err(XtaskError::Usage(format!(
            "{} takes one member number K\n\n{USAGE}",
            args[0]
        ))),
    }
}

fn control_socket() -> PathBuf {
    cluster_dir().join("control.sock")
}

fn state_file() -> PathBuf {
    cluster_dir().join("state")
}

/// Sends one command to the supervisor and prints its answer lines.
fn control(command: &str) -> Result<(), XtaskError> {
    let socket = control_socket();
    let mut stream = UnixStream::connect(&socket).map_err(|error| {
        setup_error(format!(
            "no cluster supervisor at {} ({error}): start one with `cargo xtask cluster`",
            socket.display()
        ))
    })?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|error| XtaskError::Io(error.to_string()))?;
    let mut failed = false;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|error| XtaskError::Io(error.to_string()))?;
        if let Some(error) = line.strip_prefix("error: ") {
            eprintln!("xtask: error: {error}");
            failed = true;
        } else {
            println!("{line}");
        }
    }
    if failed {
        Err(XtaskError::TestsFailed)
    } else {
        Ok(())
    }
}

/// `cargo xtask cluster stop`: every PID in the state file, the storage
/// daemon first, the supervisor last.
fn stop() -> Result<(), XtaskError> {
    let path = state_file();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            println!("no cluster is running ({}: {error})", path.display());
            return Ok(());
        }
    };
    let pids = parse_state(&text);
    let mut ordered: Vec<&(String, u32)> = pids
        .iter()
        .filter(|(name, _)| name != "supervisor")
        .collect();
    ordered.extend(pids.iter().filter(|(name, _)| name == "supervisor"));
    for (name, pid) in ordered {
        match signal(*pid, "KILL") {
            Ok(()) => println!("{name}: pid {pid} killed"),
            Err(_) => println!("{name}: pid {pid} was not running"),
        }
    }
    let _ = fs::remove_file(&path);
    let _ = fs::remove_file(control_socket());
    Ok(())
}

/// `(name, pid)` lines of the state file (`#` lines are for people).
fn parse_state(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, pid) = line.split_once(' ')?;
            Some((name.to_string(), pid.trim().parse().ok()?))
        })
        .collect()
}

/// `cargo xtask cluster [start]`: boots, serves commands on the control
/// socket, and keeps the state file current until killed.
fn supervise(options: ClusterOptions) -> Result<(), XtaskError> {
    if let Ok(text) = fs::read_to_string(state_file()) {
        let running: Vec<_> = parse_state(&text)
            .into_iter()
            .filter(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if !running.is_empty() {
            return Err(setup_error(format!(
                "a cluster is running already ({}): `cargo xtask cluster stop` first",
                state_file().display()
            )));
        }
    }
    prepare_for_harness()?;
    let cluster = Cluster::start(options, &|line| step(line))?;
    let write_state = |cluster: &Cluster| {
        let _ = fs::write(state_file(), cluster.state_text());
    };
    write_state(&cluster);
    let socket = control_socket();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|error| XtaskError::Io(format!("{}: {error}", socket.display())))?;
    step(&format!("quorum export: {}", cluster.uri()));
    print!("{}", cluster.status());
    match cluster.cut_off_bound() {
        Some(bound) => println!(
            "    watchdog: a member failing {PROBE_FAILURES} probes in a row (every {} s, {:.1} s \
             timeout) is cut off: a frozen member stalls writes at most {:.1} s",
            PROBE_INTERVAL.as_secs(),
            cluster.probe_timeout().as_secs_f64(),
            bound.as_secs_f64()
        ),
        None => println!("    watchdog: off (--no-watchdog): a frozen member stalls writes"),
    }
    println!(
        "    from another terminal: cargo xtask cluster status | kill K | rebuild K | stop \
         (PIDs in {})",
        state_file().display()
    );
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let cluster = Arc::clone(&cluster);
        // One command at a time: a rebuild blocks status until it ends.
        serve_control(&cluster, stream);
        write_state(&cluster);
    }
    Ok(())
}

/// How long the supervisor waits for a control command's line.
const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest control command line accepted.
const MAX_CONTROL_LINE: u64 = 256;

fn serve_control(cluster: &Arc<Cluster>, stream: UnixStream) {
    // A client that connects and sends nothing must not hold the
    // supervisor (it serves one command at a time).
    let _ = stream.set_read_timeout(Some(CONTROL_READ_TIMEOUT));
    let writer = &stream;
    let mut line = String::new();
    if BufReader::new((&stream).take(MAX_CONTROL_LINE))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let line = line.trim();
    println!("==> control: {line}");
    let say = |text: &str| {
        println!("    {text}");
        let _ = writeln!(&mut &*writer, "{text}");
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let index = words.get(1).and_then(|word| word.parse::<usize>().ok());
    let result = match (words.first().copied(), index) {
        (Some("status"), _) => {
            for text in cluster.status().lines() {
                say(text);
            }
            Ok(())
        }
        (Some("kill"), Some(index)) => cluster.kill(index).map(|()| {
            say(&format!(
                "node{index} killed; writes go on with the other members (rebuild with \
                 `cargo xtask cluster rebuild {index}`)"
            ))
        }),
        (Some("rebuild"), Some(index)) => cluster.rebuild(index, &say),
        _ => Err(format!("unknown command `{line}`")),
    };
    if let Err(error) = result {
        let _ = writeln!(&mut &*writer, "error: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn start_options() {
        let options = parse_start(&[]).unwrap();
        assert_eq!(options.nodes, 3);
        assert_eq!(options.vote_threshold(), 2);
        assert_eq!(options.member_export(), "disk");
        let options = parse_start(&strings(&["--nodes", "5", "--raw", "--size", "64M"])).unwrap();
        assert_eq!(options.vote_threshold(), 3);
        assert_eq!(options.member_export(), "pmem0");
        assert_eq!(options.nvdimm_size(), 64 << 20);
        for bad in [
            &["--nodes", "0"][..],
            &["--nodes", "8"],
            &["--size", "1000"],
            &["--export", "a b"],
            &["--export", "{\"x"],
            &["--nbd-port", "0"],
            &["--probe-timeout", "0"],
            &["--probe-timeout", "x"],
            &["--frob"],
        ] {
            assert!(parse_start(&strings(bad)).is_err(), "{bad:?}");
        }
    }

    /// Every option the help names for `start` parses (the `test`
    /// subcommand's `--seed` is parsed by cluster_test).
    #[test]
    fn every_option_in_the_help_parses() {
        let named = crate::clients::options_named_in(USAGE);
        assert!(named.contains(&"--probe-timeout"), "{named:?}");
        for option in named.into_iter().filter(|option| *option != "--seed") {
            let value = match option {
                "--size" => "64M",
                "--export" => "disk",
                "--nbd-port" => "10909",
                _ => "3",
            };
            let takes_value = !matches!(option, "--raw" | "--fresh" | "--no-watchdog");
            let args = if takes_value {
                strings(&[option, value])
            } else {
                strings(&[option])
            };
            assert!(
                parse_start(&args).is_ok(),
                "{option}: {:?}",
                parse_start(&args).err()
            );
        }
    }

    #[test]
    fn quorum_line_is_the_verified_one() {
        let blockdev = quorum_blockdev(2, &[("c0".into(), 10910), ("c1".into(), 10911)], "disk");
        assert_eq!(blockdev["driver"], "quorum");
        assert_eq!(blockdev["vote-threshold"], 2);
        assert_eq!(blockdev["read-pattern"], "quorum");
        assert_eq!(blockdev["rewrite-corrupted"], true);
        assert_eq!(blockdev["children"][1]["server"]["port"], "10911");
        assert_eq!(blockdev["children"][1]["export"], "disk");
    }

    #[test]
    fn state_file_lines() {
        let parsed = parse_state("supervisor 10\nqsd 11\nnode0 12\n# quorum nbd://x\nbad\n");
        assert_eq!(
            parsed,
            [
                ("supervisor".to_string(), 10),
                ("qsd".to_string(), 11),
                ("node0".to_string(), 12)
            ]
        );
    }

    #[test]
    fn the_bound_adds_up() {
        let bound = cut_off_bound(PROBE_TIMEOUT);
        assert_eq!(bound, Duration::from_secs(9));
    }
}
