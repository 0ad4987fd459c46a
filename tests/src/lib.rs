//! QEMU harness for daxbox system tests.
//!
//! System tests boot the *real* images — the release kernel ELF wrapped by
//! `daxbox-boot` — in QEMU (TCG) and talk to the appliance the way a user
//! does: over the serial console and, through user-mode networking with host
//! port forwards, over TCP (NBD on guest port 10809, HTTP on guest port 80).
//! Neighbours: `boot/` (the `daxbox-boot` tool called once per boot to build
//! that test's media), `xtask` (`cargo xtask test` builds the kernel and the
//! boot tool, then runs these tests with `DAXBOX_KERNEL` and
//! `DAXBOX_BOOT_TOOL` set; `cargo xtask run` reuses [`qemu_arguments`]), and
//! the kernel's serial contract (`daxbox: ready`, prompt `daxbox> `,
//! `KERNEL PANIC: ...`, isa-debug-exit statuses 33/35).
//!
//! # Writing a test
//!
//! ```no_run
//! use daxbox_tests::{Firmware, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), daxbox_tests::HarnessError> {
//! // A unique name per test: logs go to target/test-runs/<name>/.
//! let options = QemuOptions::new("pmem_smoke", Firmware::Bios)
//!     .with_boot_config("format=if-blank\n")
//!     .with_nvdimm(Nvdimm::fresh(
//!         daxbox_tests::run_dir("pmem_smoke").join("pmem0.img"),
//!         64 << 20,
//!     ));
//! let mut machine = Machine::boot_to_prompt(options)?; // waits for `daxbox: ready`
//! let version = machine.command("version")?;           // text between echo and prompt
//! assert!(version.contains("daxbox"));
//! // Network clients use the forwarded ports, e.g.
//! // nbdinfo nbd://127.0.0.1:{machine.nbd_port()}/  or  curl http://127.0.0.1:{machine.http_port()}/
//! machine.send_raw(b"poweroff\r")?;
//! assert_eq!(machine.wait_exit(Duration::from_secs(10))?, EXIT_POWEROFF);
//! # Ok(()) }
//! ```
//!
//! * Every wait has a timeout; a timeout, an early QEMU exit or a kernel
//!   crash is a [`HarnessError`] whose text includes the last 40 serial
//!   lines, QEMU's stderr and the QEMU command line.
//! * A wait fails at once when the kernel prints `KERNEL PANIC` or
//!   `EXCEPTION:` (unless that is what the test waits for).
//! * QEMU is SIGKILLed when the [`Machine`] is dropped (also on panic) and by
//!   a watchdog after [`QemuOptions::max_runtime`].
//! * Host ports are picked free per boot, so tests run in parallel; readiness
//!   comes from the serial console, never from a bare TCP connect (the
//!   forwarded port accepts connections before the guest listens).
//! * Crash tests: [`Machine::kill`] is a power cut; boot again with
//!   [`Nvdimm::existing`] on the same file under the same test name (the run
//!   folder is emptied only on the first boot of a name in a test process;
//!   later boots log to `serial-2.log`, ...).
//! * Run folder contents: `serial.log`, `qemu-stderr.log`,
//!   `qemu-command.txt`, `bootconfig.txt`, `media/`, `ovmf-vars.fd`.
//!
//! Environment: `DAXBOX_KERNEL`, `DAXBOX_BOOT_TOOL` (inputs, default: the
//! release build outputs), `DAXBOX_QEMU` (QEMU binary), `DAXBOX_ACCEL`
//! (`tcg` default), `DAXBOX_BOOT_TIMEOUT` (seconds; default 60 times
//! [`load_factor`], the host's load per CPU, so busy hosts do not flake),
//! `DAXBOX_OVMF_CODE`/`DAXBOX_OVMF_VARS`,
//! `DAXBOX_TEST_RUNS` (run folder root).

pub mod certs;
mod error;
mod machine;
pub mod nbd_client;
pub mod netns;
mod options;
mod paths;
mod qmp;

pub use error::HarnessError;
pub use machine::{
    qemu_program, Machine, CRASH_MARKERS, EXIT_PANIC, EXIT_POWEROFF, PROMPT, QEMU, READY,
};
pub use options::{
    find_ovmf, free_port, human_size, load_factor, parse_size, qemu_arguments, scaled, shell_quote,
    size_option, Firmware, Hotplug, Nvdimm, Ovmf, QemuOptions, GUEST_HTTP_PORT, GUEST_NBD_PORT,
    PXE_BOOT_FILE,
};
pub use paths::{
    boot_tool_path, kernel_path, kernel_path_from, target_dir, test_runs_dir, workspace_root,
};
pub use qmp::{json_string, Qmp};

/// The run folder of test `name`: `target/test-runs/<name>/` (where to put
/// NVDIMM backing files that belong to the test).
pub fn run_dir(name: &str) -> std::path::PathBuf {
    test_runs_dir().join(name)
}
