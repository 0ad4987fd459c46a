//! A running appliance: QEMU plus its serial console.
//!
//! Output from the guest's COM1 (`-serial stdio`) is collected by a reader
//! thread into a buffer and copied live into `serial.log`. The test reads it
//! through a *cursor*: each successful [`Machine::wait_for`] consumes the
//! output up to the end of its match, so consecutive waits see consecutive
//! output. QEMU is killed (SIGKILL) when the `Machine` is dropped — also when
//! the test panics — and by a watchdog after `max_runtime`.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    options::{find_ovmf, free_port_pair, qemu_arguments, shell_quote, Ovmf, QemuOptions},
    paths, HarnessError,
};

/// The line the kernel prints when it is ready to serve.
pub const READY: &str = "daxbox: ready";
/// The shell prompt (no newline follows it).
pub const PROMPT: &str = "daxbox> ";
/// QEMU exit status after the `poweroff` command (isa-debug-exit 0x10:
/// status = (0x10 << 1) | 1).
pub const EXIT_POWEROFF: i32 = 33;
/// QEMU exit status after a kernel panic (isa-debug-exit 0x11).
pub const EXIT_PANIC: i32 = 35;
/// Output that means the kernel crashed; a wait for anything else fails as
/// soon as one of these shows up.
pub const CRASH_MARKERS: [&str; 2] = ["KERNEL PANIC", "EXCEPTION:"];
/// The QEMU binary (override with `DAXBOX_QEMU`).
pub const QEMU: &str = "qemu-system-x86_64";

/// How many serial lines an error shows.
const TAIL_LINES: usize = 40;

/// The QEMU program to run.
pub fn qemu_program() -> String {
    std::env::var("DAXBOX_QEMU").unwrap_or_else(|_| QEMU.into())
}

#[derive(Default)]
struct ConsoleState {
    serial: Vec<u8>,
    stderr: Vec<u8>,
    serial_closed: bool,
    watchdog_fired: bool,
}

/// Output shared between the reader threads and the test thread.
#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A reader thread that panicked cannot leave the buffer half-written
        // in a way that matters here: keep going with what is there.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One booted (or booting) appliance. See the crate docs for an example.
pub struct Machine {
    name: String,
    run_dir: PathBuf,
    log_path: PathBuf,
    command_line: String,
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    cursor: usize,
    nbd_port: u16,
    http_port: u16,
    boot_timeout: Duration,
    command_timeout: Duration,
    started: Instant,
    ready_after: Option<Duration>,
    ready_cpu: Option<Duration>,
    exit: Option<ExitStatus>,
    watchdog: Option<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    qmp: Option<PathBuf>,
}

/// Names already used in this process: their run folder was cleaned once.
fn used_names() -> &'static Mutex<HashSet<String>> {
    static NAMES: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// Cleans the run folder on the first boot of `name` in this process (so
/// each test run starts empty but a test can boot several times, e.g.
/// crash-and-reboot on the same NVDIMM file), and returns the boot number.
fn prepare_run_dir(name: &str, run_dir: &Path) -> Result<usize, HarnessError> {
    let first = used_names()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(name.to_string());
    if first {
        match fs::remove_dir_all(run_dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(HarnessError::io(
                    format!("cleaning {}", run_dir.display()),
                    error,
                ))
            }
        }
    }
    fs::create_dir_all(run_dir)
        .map_err(|error| HarnessError::io(format!("creating {}", run_dir.display()), error))?;
    let mut boot = 1;
    while run_dir.join(suffixed("serial", boot, "log")).exists() {
        boot += 1;
    }
    Ok(boot)
}

/// `serial.log` for the first boot, `serial-2.log` for the second, ...
fn suffixed(stem: &str, boot: usize, extension: &str) -> String {
    let suffix = if boot == 1 {
        String::new()
    } else {
        format!("-{boot}")
    };
    if extension.is_empty() {
        format!("{stem}{suffix}")
    } else {
        format!("{stem}{suffix}.{extension}")
    }
}

/// Runs `daxbox-boot` to build the media for this boot into `media`.
fn build_media(
    options: &QemuOptions,
    media: &Path,
    config: Option<&Path>,
) -> Result<(), HarnessError> {
    let kernel = paths::kernel_path()?;
    let tool = paths::boot_tool_path()?;
    let mut command = Command::new(&tool);
    command
        .arg("--kernel")
        .arg(&kernel)
        .arg("--out")
        .arg(media)
        .arg(options.firmware.boot_tool_flag());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let output = command
        .output()
        .map_err(|error| HarnessError::io(format!("running {}", tool.display()), error))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Setup(format!(
            "daxbox-boot failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Creates or empties the NVDIMM backing files (sparse). A kept file
/// larger than its NVDIMM is refused: QEMU would map only its first
/// `size` bytes, and the kernel would see a cut-off (damaged) filesystem.
fn prepare_nvdimms(options: &QemuOptions) -> Result<(), HarnessError> {
    for nvdimm in &options.nvdimms {
        if let Some(parent) = nvdimm.path.parent() {
            fs::create_dir_all(parent).map_err(|error| {
                HarnessError::io(format!("creating {}", parent.display()), error)
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(nvdimm.fresh)
            .write(true)
            .open(&nvdimm.path)
            .map_err(|error| {
                HarnessError::io(format!("opening {}", nvdimm.path.display()), error)
            })?;
        let length = file
            .metadata()
            .map_err(|error| HarnessError::io(format!("{}", nvdimm.path.display()), error))?
            .len();
        if length > nvdimm.size {
            return Err(HarnessError::Setup(format!(
                "NVDIMM backing file {} is {length} bytes, more than the NVDIMM's {} bytes: \
                 QEMU would map only its start (give the file's size, or Nvdimm::fresh)",
                nvdimm.path.display(),
                nvdimm.size
            )));
        }
        if length < nvdimm.size {
            // set_len on a fresh file makes a sparse file: no disk space used
            // until the guest writes.
            file.set_len(nvdimm.size).map_err(|error| {
                HarnessError::io(format!("sizing {}", nvdimm.path.display()), error)
            })?;
        }
    }
    Ok(())
}

fn spawn_reader(
    mut source: impl Read + Send + 'static,
    console: Arc<Console>,
    mut log: Option<File>,
    is_serial: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            let count = match source.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            if let Some(log) = log.as_mut() {
                // The log is a convenience; a full disk must not stop the test.
                let _ = log.write_all(&buffer[..count]);
                let _ = log.flush();
            }
            let mut state = console.lock();
            if is_serial {
                state.serial.extend_from_slice(&buffer[..count]);
            } else {
                state.stderr.extend_from_slice(&buffer[..count]);
            }
            drop(state);
            console.changed.notify_all();
        }
        if is_serial {
            console.lock().serial_closed = true;
            console.changed.notify_all();
        }
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Bytes to text for humans: lossy UTF-8, `\r` removed.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

fn last_lines(bytes: &[u8], count: usize) -> String {
    let all = text(bytes);
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

impl Machine {
    /// Builds this test's boot media, starts QEMU and returns at once (the
    /// guest is still booting). Most tests want [`Machine::boot_to_prompt`].
    pub fn boot(options: QemuOptions) -> Result<Machine, HarnessError> {
        let run_dir = options.run_dir();
        let boot = prepare_run_dir(&options.name, &run_dir)?;

        let config_path = match &options.boot_config {
            Some(text) => {
                let path = run_dir.join(suffixed("bootconfig", boot, "txt"));
                fs::write(&path, text).map_err(|error| {
                    HarnessError::io(format!("writing {}", path.display()), error)
                })?;
                Some(path)
            }
            None => None,
        };
        let media = run_dir.join(suffixed("media", boot, ""));
        build_media(&options, &media, config_path.as_deref())?;
        prepare_nvdimms(&options)?;

        let ovmf = if options.firmware.needs_ovmf() {
            let (code, vars_template) = find_ovmf()?;
            let vars = run_dir.join(suffixed("ovmf-vars", boot, "fd"));
            fs::copy(&vars_template, &vars).map_err(|error| {
                HarnessError::io(format!("copying {}", vars_template.display()), error)
            })?;
            Some(Ovmf { code, vars })
        } else {
            None
        };

        let mut options = options;
        // Both ports are picked while the first is still bound, so the two
        // differ.
        let (nbd_port, http_port) = free_port_pair()?;
        if options.nbd_port == 0 {
            options.nbd_port = nbd_port;
        }
        if options.http_port == 0 {
            options.http_port = http_port;
        }
        let program = options.qemu.clone();
        let args = qemu_arguments(&options, &media, ovmf.as_ref());
        let command_line = shell_quote(&program, &args);
        let command_path = run_dir.join(suffixed("qemu-command", boot, "txt"));
        fs::write(&command_path, format!("{command_line}\n")).map_err(|error| {
            HarnessError::io(format!("writing {}", command_path.display()), error)
        })?;

        let log_path = run_dir.join(suffixed("serial", boot, "log"));
        let log = File::create(&log_path)
            .map_err(|error| HarnessError::io(format!("creating {}", log_path.display()), error))?;
        let stderr_path = run_dir.join(suffixed("qemu-stderr", boot, "log"));
        let stderr_log = File::create(&stderr_path).map_err(|error| {
            HarnessError::io(format!("creating {}", stderr_path.display()), error)
        })?;

        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                if error.kind() == std::io::ErrorKind::NotFound {
                    HarnessError::Setup(format!(
                        "{program} not found: run `cargo xtask setup` (installs qemu-system-x86)"
                    ))
                } else {
                    HarnessError::io(format!("starting {program}"), error)
                }
            })?;
        let started = Instant::now();

        let console = Arc::new(Console::default());
        let mut threads = Vec::new();
        // Both pipes exist: they were requested as `Stdio::piped()` above.
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdin = child.stdin.take();
        threads.push(spawn_reader(stdout, console.clone(), Some(log), true));
        threads.push(spawn_reader(
            stderr,
            console.clone(),
            Some(stderr_log),
            false,
        ));

        let child = Arc::new(Mutex::new(child));
        let (watchdog, expired) = mpsc::channel::<()>();
        {
            let child = child.clone();
            let console = console.clone();
            let limit = options.max_runtime;
            threads.push(thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = expired.recv_timeout(limit) {
                    console.lock().watchdog_fired = true;
                    let mut child = child
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let _ = child.kill();
                }
            }));
        }

        Ok(Machine {
            name: options.name.clone(),
            run_dir,
            log_path,
            command_line,
            child,
            stdin,
            console,
            cursor: 0,
            nbd_port: options.nbd_port,
            http_port: options.http_port,
            boot_timeout: options.boot_timeout,
            command_timeout: options.command_timeout,
            started,
            ready_after: None,
            ready_cpu: None,
            exit: None,
            watchdog: Some(watchdog),
            threads,
            qmp: options.qmp.clone(),
        })
    }

    /// A QMP session with this machine's QEMU (booted with
    /// [`QemuOptions::with_qmp`]).
    pub fn qmp(&self) -> Result<crate::Qmp, HarnessError> {
        let path = self.qmp.as_ref().ok_or_else(|| {
            HarnessError::Setup(format!("{}: booted without a QMP socket", self.name))
        })?;
        crate::Qmp::connect(path, self.command_timeout)
    }

    /// Boots and waits (up to `boot_timeout`) for `daxbox: ready` and the
    /// first prompt.
    pub fn boot_to_prompt(options: QemuOptions) -> Result<Machine, HarnessError> {
        let mut machine = Machine::boot(options)?;
        machine.wait_ready()?;
        Ok(machine)
    }

    /// Waits for `daxbox: ready` and then the prompt, within the boot timeout.
    /// Records the time to ready ([`Machine::ready_after`]).
    pub fn wait_ready(&mut self) -> Result<String, HarnessError> {
        let deadline = Instant::now() + self.boot_timeout;
        let mut seen = self.wait_for(READY, self.boot_timeout)?;
        self.ready_after = Some(self.started.elapsed());
        self.ready_cpu = self.cpu_time();
        let left = deadline.saturating_duration_since(Instant::now());
        seen += &self.wait_for(PROMPT, left.max(Duration::from_secs(5)))?;
        Ok(seen)
    }

    /// Time from QEMU start to the `daxbox: ready` line, once seen.
    pub fn ready_after(&self) -> Option<Duration> {
        self.ready_after
    }

    /// CPU time QEMU had used when `daxbox: ready` was seen: unlike
    /// [`Machine::ready_after`] it hardly depends on how busy the host is.
    pub fn ready_cpu_time(&self) -> Option<Duration> {
        self.ready_cpu
    }

    /// CPU time (user + system) QEMU has used so far, from
    /// `/proc/<pid>/stat` (fields 14 and 15, in USER_HZ = 100 ticks/s on
    /// Linux x86_64).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces:
        // count fields after the last ')'. Field 3 is the first one there.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let user: u64 = fields.get(11)?.parse().ok()?;
        let system: u64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_millis((user + system) * 10))
    }

    /// Waits until `pattern` appears in the output not yet consumed, and
    /// returns that output up to the end of the match (`\r` removed).
    ///
    /// Fails with [`HarnessError::Timeout`] after `timeout`, with
    /// [`HarnessError::Exited`] if QEMU quits first, and with
    /// [`HarnessError::KernelPanic`] as soon as the kernel prints a crash
    /// marker (unless `pattern` itself comes first).
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        let console = self.console.clone();
        let mut state = console.lock();
        loop {
            let unread = &state.serial[self.cursor.min(state.serial.len())..];
            let found = find(unread, pattern.as_bytes());
            let crash = CRASH_MARKERS
                .iter()
                .filter_map(|marker| find(unread, marker.as_bytes()))
                .min();
            match (found, crash) {
                (Some(at), crash) if crash.is_none_or(|crash| at <= crash) => {
                    let end = at + pattern.len();
                    let seen = text(&unread[..end]);
                    self.cursor += end;
                    return Ok(seen);
                }
                (_, Some(crash)) => {
                    // Give the kernel a moment to finish its panic message
                    // and QEMU to exit, so the error shows all of it.
                    drop(state);
                    self.settle(Duration::from_secs(3));
                    let state = console.lock();
                    let unread = &state.serial[self.cursor.min(state.serial.len())..];
                    // The output may have arrived cut in the middle of the
                    // pattern (`KERNEL PANIC` now, `: ...` later): a pattern
                    // that starts at or before the crash still counts.
                    if let Some(at) = find(unread, pattern.as_bytes()).filter(|at| *at <= crash) {
                        let end = at + pattern.len();
                        let seen = text(&unread[..end]);
                        self.cursor += end;
                        return Ok(seen);
                    }
                    let message = text(&unread[crash.min(unread.len())..])
                        .lines()
                        .take(6)
                        .collect::<Vec<_>>()
                        .join("\n");
                    return Err(HarnessError::KernelPanic {
                        message,
                        tail: self.tail_of(&state),
                    });
                }
                _ => {}
            }
            if state.serial_closed {
                drop(state);
                let status = self.reap(Duration::from_secs(5));
                let state = console.lock();
                return Err(HarnessError::Exited {
                    waiting_for: format!("`{}`", pattern.escape_debug()),
                    status,
                    tail: self.tail_of(&state),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    waiting_for: format!("`{}`", pattern.escape_debug()),
                    after: timeout,
                    tail: self.tail_of(&state),
                });
            }
            state = console
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Sends a shell command and returns its output: the text between the
    /// echoed command line and the next prompt (`\r` removed, no trailing
    /// newline). Waits for the previous prompt first if it was not consumed.
    pub fn command(&mut self, command: &str) -> Result<String, HarnessError> {
        self.command_with_timeout(command, self.command_timeout)
    }

    /// [`Machine::command`] with an explicit timeout for each wait.
    pub fn command_with_timeout(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        if !self.at_prompt() {
            self.wait_for(PROMPT, timeout)?;
        }
        self.send_raw(format!("{command}\r").as_bytes())?;
        // The echo of the line ends with the newline the shell prints for
        // Enter; everything after it up to the prompt is the output.
        self.wait_for("\n", timeout)?;
        let output = self.wait_for(PROMPT, timeout)?;
        Ok(output
            .strip_suffix(PROMPT)
            .unwrap_or(&output)
            .trim_end_matches('\n')
            .to_string())
    }

    /// Whether the consumed output ends with the prompt.
    fn at_prompt(&self) -> bool {
        let state = self.console.lock();
        state.serial[..self.cursor.min(state.serial.len())].ends_with(PROMPT.as_bytes())
    }

    /// Writes raw bytes to the serial console (no newline added).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), HarnessError> {
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(bytes).and_then(|()| stdin.flush()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "console input already closed",
            )),
        };
        result.map_err(|error| {
            let status = self.reap(Duration::from_millis(500));
            let state = self.console.lock();
            HarnessError::Unexpected {
                message: format!("cannot write to the serial console ({error}); QEMU: {status}"),
                tail: self.tail_of(&state),
            }
        })
    }

    /// Kills QEMU with SIGKILL (a power cut for crash tests) and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let mut child = self.lock_child();
            let _ = child.kill();
            let status = child.wait().ok();
            drop(child);
            self.exit = status;
        }
        self.drain_console(Duration::from_secs(2));
    }

    /// Waits for QEMU to exit and returns its exit code (33 = poweroff,
    /// 35 = kernel panic). A timeout or a death by signal is an error.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                self.drain_console(Duration::from_secs(2));
                return match status.code() {
                    Some(code) => Ok(code),
                    None => {
                        let state = self.console.lock();
                        Err(HarnessError::Unexpected {
                            message: format!("QEMU was {}", describe_status(&status)),
                            tail: self.tail_of(&state),
                        })
                    }
                };
            }
            if Instant::now() >= deadline {
                let state = self.console.lock();
                return Err(HarnessError::Timeout {
                    waiting_for: "QEMU to exit".into(),
                    after: timeout,
                    tail: self.tail_of(&state),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// All serial output so far (`\r` removed).
    pub fn output(&self) -> String {
        text(&self.console.lock().serial)
    }

    /// Host port forwarded to the guest's NBD port 10809.
    pub fn nbd_port(&self) -> u16 {
        self.nbd_port
    }

    /// Host port forwarded to the guest's HTTP port 80.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.lock_child().id()
    }

    /// The test name this machine was booted under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The run folder (`target/test-runs/<name>/`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The live copy of the serial console.
    pub fn serial_log(&self) -> &Path {
        &self.log_path
    }

    /// The QEMU command line, quoted for a shell.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let status = self.lock_child().try_wait().ok().flatten();
            self.exit = status;
        }
        self.exit
    }

    /// Waits up to `timeout` for QEMU to exit; describes its state.
    fn reap(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return describe_status(&status);
            }
            if Instant::now() >= deadline {
                return "still running".into();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// After a crash marker: wait a little for QEMU to exit by itself.
    fn settle(&mut self, timeout: Duration) {
        self.reap(timeout);
        self.drain_console(Duration::from_secs(1));
    }

    /// Waits until the serial pipe reached end-of-file (all output read).
    fn drain_console(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.console.lock();
        while !state.serial_closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .console
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// The readable tail shown in errors: last serial lines, QEMU's stderr,
    /// where the full log is.
    fn tail_of(&self, state: &ConsoleState) -> String {
        let mut tail = format!(
            "--- last {TAIL_LINES} lines of the serial console (full log: {}) ---\n{}\n--- end of serial console ---",
            self.log_path.display(),
            last_lines(&state.serial, TAIL_LINES)
        );
        let stderr = last_lines(&state.stderr, 10);
        if !stderr.trim().is_empty() {
            tail += &format!("\n--- QEMU stderr ---\n{stderr}");
        }
        if state.watchdog_fired {
            tail += "\n(the harness watchdog killed QEMU: max_runtime exceeded)";
        }
        tail += &format!("\n--- QEMU command ---\n{}", self.command_line);
        tail
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Always stop QEMU, also when the test failed or panicked.
        if self.exit.is_none() {
            let mut child = self.lock_child();
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdin = None;
        // Wakes the watchdog, which then ends.
        self.watchdog = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Firmware, Nvdimm};

    #[test]
    fn find_and_text() {
        assert_eq!(find(b"abc daxbox> ", b"daxbox> "), Some(4));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(text(b"a\r\nb\r\n"), "a\nb\n");
        assert_eq!(last_lines(b"1\n2\n3\n4\n", 2), "3\n4");
    }

    #[test]
    fn suffixes() {
        assert_eq!(suffixed("serial", 1, "log"), "serial.log");
        assert_eq!(suffixed("serial", 3, "log"), "serial-3.log");
        assert_eq!(suffixed("media", 2, ""), "media-2");
    }

    #[test]
    fn missing_kernel_is_a_setup_error() {
        // Points the harness at a kernel that does not exist: booting must
        // fail before QEMU starts, naming the path.
        let error = paths::kernel_path_from(Some("/nonexistent/daxbox-kernel".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/daxbox-kernel"), "{error}");
    }

    #[test]
    fn a_kept_nvdimm_file_larger_than_the_nvdimm_is_refused() {
        let dir = std::env::temp_dir().join(format!("daxbox-nvdimm-{}", std::process::id()));
        let path = dir.join("big.img");
        let options = |nvdimm| QemuOptions::new("t", Firmware::Bios).with_nvdimm(nvdimm);
        prepare_nvdimms(&options(Nvdimm::fresh(&path, 4 << 20))).unwrap();
        let error = prepare_nvdimms(&options(Nvdimm::existing(&path, 2 << 20)))
            .unwrap_err()
            .to_string();
        assert!(error.contains("big.img is 4194304 bytes"), "{error}");
        assert_eq!(fs::metadata(&path).unwrap().len(), 4 << 20, "not truncated");
        // Kept at the same size, or grown: fine.
        prepare_nvdimms(&options(Nvdimm::existing(&path, 4 << 20))).unwrap();
        prepare_nvdimms(&options(Nvdimm::existing(&path, 8 << 20))).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 8 << 20);
        // A fresh NVDIMM starts over at its size.
        prepare_nvdimms(&options(Nvdimm::fresh(&path, 2 << 20))).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 << 20);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn firmware_names() {
        assert_eq!(Firmware::Pxe.boot_tool_flag(), "--pxe");
        assert!(Firmware::Uefi.needs_ovmf());
        assert!(!Firmware::Bios.needs_ovmf());
    }
}
