//! `cargo xtask`: daxbox developer tasks (std only, hand-parsed arguments).
//!
//! Subcommands: `setup`, `build`, `run`, `netboot`, `pmem-add`, `test`, `bench`,
//! `crash`, `soak`, `powercut`, `fuzz`. Each
//! prints its steps as `==> ...` lines and the exact commands it runs.
//! Neighbours: `boot/` (`daxbox-boot`, run through `cargo run -p daxbox-boot
//! --release` so that the slow bootloader build stays out of xtask's own
//! dependency graph), `tests/` (`daxbox-tests`: the QEMU command line and
//! the system tests), `.ci/run` (calls `cargo xtask test`).

mod bench;
mod bench_clone;
mod bench_cluster;
mod bench_nbd;
mod bench_net;
mod bench_s3;
mod bench_tls;
mod bench_trim;
mod clients;
mod cluster;
mod cluster_test;
mod fuzz;
mod images;
mod powercut;
mod qmp;
mod run;
mod setup;
mod soak;
mod tap;
mod test;
mod tls_certs;

use std::{fmt, process::Command, process::ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [options]    (`cargo xtask <command> --help` for its options)

commands:
  setup     install rustup components/target; check (and on Debian as root install)
            qemu-system-x86 (with qemu-storage-daemon), ovmf, qemu-utils, libnbd-bin, python3-libnbd, fio, nbdkit, curl
  build     build the kernel and the boot media (target/daxbox/{bios.img,uefi.img,pxe/})
  run       boot the appliance in QEMU with an emulated NVDIMM; serial console on this terminal
  netboot   like run, but boot over UEFI PXE from QEMU's built-in TFTP server
  pmem-add  hot-add an NVDIMM to the appliance `run` is running (--size 256M, over QMP)
  test      run every test (host crates, boot tool, QEMU system tests); last line `N passed, N failed`
  bench     benchmarks: net (HTTP throughput), nbd (appliance vs qemu-nbd),
            trim (read latency during a 1 GiB TRIM), cluster (3-member quorum vs one appliance)
  crash     long run of the daxfs crash-state explorer (--budget SECONDS)
  soak      64 real clients (nbdcopy, fio, qemu-io, shell, curl) against the appliance for --minutes N
  powercut  SIGKILL QEMU under fio write+flush, reboot, fio --verify_only and fsck, --cycles N times
  cluster   N appliances replicated with qemu-storage-daemon's quorum; status, kill K, rebuild K,
            stop; test (kill, rebuild, freeze, two down)

  fuzz      build and run the cargo-fuzz targets (--seconds N, TARGET..., list, replay)";

/// Why a task failed. Printed as `xtask: error: ...`.
#[derive(Debug)]
pub enum XtaskError {
    /// Bad command line; the text includes the relevant usage.
    Usage(String),
    /// The machine lacks something and it could not be installed.
    Setup(String),
    /// A command failed or could not start.
    Command {
        /// The command line, as run.
        command: String,
        /// Exit status or spawn error.
        problem: String,
    },
    /// A file operation failed.
    Io(String),
    /// Tests ran and some failed (the summary line says how many).
    TestsFailed,
}

impl fmt::Display for XtaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XtaskError::Usage(message) => write!(f, "{message}"),
            XtaskError::Setup(message) => write!(f, "set-up: {message}"),
            XtaskError::Command { command, problem } => {
                write!(f, "`{command}` failed: {problem}")
            }
            XtaskError::Io(message) => write!(f, "{message}"),
            XtaskError::TestsFailed => write!(f, "some tests failed"),
        }
    }
}

/// Prints a step header.
pub fn step(text: &str) {
    println!("==> {text}");
}

/// The cargo that runs us (so the same toolchain builds everything).
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Renders a `Command` for display.
pub fn describe(command: &Command) -> String {
    let args: Vec<String> = command
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let program = command.get_program().to_string_lossy();
    // `$CARGO` is an absolute path; show the familiar name.
    let program = if program.ends_with("/cargo") {
        "cargo".into()
    } else {
        program.into_owned()
    };
    daxbox_tests::shell_quote(&program, &args)
}

/// Runs a command with inherited stdio; non-zero exit is an error.
pub fn run_checked(command: &mut Command) -> Result<(), XtaskError> {
    let description = describe(command);
    let status = command.status().map_err(|error| XtaskError::Command {
        command: description.clone(),
        problem: error.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(XtaskError::Command {
            command: description,
            problem: status.to_string(),
        })
    }
}

/// `--help`/`-h` anywhere before a `--`.
pub fn wants_help(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--help" || arg == "-h")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = rest.to_vec();
    let result = match command.as_str() {
        "setup" if wants_help(&rest) => {
            println!(
                "usage: cargo xtask setup\n\n{}",
                USAGE.lines().nth(3).unwrap_or("")
            );
            Ok(())
        }
        "setup" if !rest.is_empty() => Err(XtaskError::Usage(format!(
            "setup takes no arguments (got `{}`)",
            rest.join(" ")
        ))),
        "setup" => setup::setup(setup::Needs::Everything),
        "build" => images::build_command(&rest),
        "run" => run::run_command(&rest, daxbox_tests::Firmware::Bios),
        "netboot" => run::run_command(&rest, daxbox_tests::Firmware::Pxe),
        "pmem-add" => run::pmem_add_command(&rest),
        "test" => test::test_command(&rest),
        "bench" => bench::bench_command(&rest),
        "crash" => test::crash_mode(&rest),
        "soak" => soak::soak_command(&rest),
        "powercut" => powercut::powercut_command(&rest),
        "fuzz" => fuzz::fuzz_command(&rest),
        // `cluster test` drives a cluster from outside; the rest runs one.
        "cluster" if rest.first().map(String::as_str) == Some("test") && !wants_help(&rest) => {
            cluster_test::test_command(&rest[1..])
        }
        "cluster" => cluster::cluster_command(&rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(XtaskError::Usage(format!(
            "unknown command `{other}`\n\n{USAGE}"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(XtaskError::TestsFailed) => ExitCode::FAILURE,
        Err(error @ XtaskError::Usage(_)) => {
            eprintln!("xtask: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("xtask: error: {error}");
            ExitCode::FAILURE
        }
    }
}
