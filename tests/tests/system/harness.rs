//! Self-tests of the harness. They hold for any kernel: most start QEMU
//! with `-S` (CPU stopped, so the guest does nothing), one only waits for
//! the bootloader's own serial lines. They prove that waits time out with a
//! readable error, that an early QEMU exit is reported with QEMU's stderr,
//! and that QEMU is killed by `kill()`, on drop and by the watchdog.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use daxbox_tests::{Firmware, HarnessError, Machine, QemuOptions};

/// The bootloader's last serial line before it enters the kernel.
const BOOTLOADER_LAST_LINE: &str = "Jumping to kernel entry point";

/// A machine whose CPU never starts (`-S`): QEMU runs, the guest is silent.
fn frozen(name: &str) -> QemuOptions {
    QemuOptions::new(name, Firmware::Bios).with_extra_args(["-S"])
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn bootloader_prints_to_the_serial_log() {
    let mut machine =
        Machine::boot(QemuOptions::new("harness_serial_log", Firmware::Bios)).expect("QEMU starts");
    machine
        .wait_for(BOOTLOADER_LAST_LINE, Duration::from_secs(60))
        .expect("the bootloader reaches the kernel");
    let log = std::fs::read_to_string(machine.serial_log()).expect("serial.log exists");
    assert!(log.contains(BOOTLOADER_LAST_LINE), "serial.log: {log}");
    assert!(machine.output().contains("BIOS boot"));
    assert!(machine
        .command_line()
        .starts_with("qemu-system-x86_64 -accel "));
}

#[test]
fn timeout_error_is_readable() {
    let mut machine = Machine::boot(frozen("harness_timeout")).expect("QEMU starts");
    let started = Instant::now();
    let error = machine
        .wait_for("this text is never printed", Duration::from_secs(2))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, HarnessError::Timeout { .. }), "{error}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    let message = error.to_string();
    assert!(message.contains("timed out after 2.0 s"), "{message}");
    assert!(message.contains("this text is never printed"), "{message}");
    assert!(message.contains("harness_timeout/serial.log"), "{message}");
    assert!(message.contains("--- QEMU command ---"), "{message}");
}

#[test]
fn early_qemu_exit_is_reported_with_stderr() {
    let options = QemuOptions::new("harness_bad_qemu_argument", Firmware::Bios)
        .with_extra_args(["-device", "no-such-device-daxbox"]);
    let mut machine = Machine::boot(options).expect("QEMU starts");
    let error = machine
        .wait_for("daxbox: ready", Duration::from_secs(30))
        .unwrap_err();
    assert!(matches!(error, HarnessError::Exited { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("exit status 1"), "{message}");
    assert!(message.contains("no-such-device-daxbox"), "{message}");
}

#[test]
fn kill_stops_qemu_and_later_waits_fail_fast() {
    let mut machine = Machine::boot(frozen("harness_kill")).expect("QEMU starts");
    let pid = machine.pid();
    assert!(process_exists(pid));
    machine.kill();
    assert!(!process_exists(pid));
    let error = machine.wait_exit(Duration::from_secs(1)).unwrap_err();
    assert!(error.to_string().contains("signal 9"), "{error}");
    let started = Instant::now();
    let error = machine
        .wait_for("never", Duration::from_secs(30))
        .unwrap_err();
    assert!(matches!(error, HarnessError::Exited { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn drop_kills_qemu() {
    let machine = Machine::boot(frozen("harness_drop")).expect("QEMU starts");
    let pid = machine.pid();
    assert!(process_exists(pid));
    drop(machine);
    assert!(!process_exists(pid));
}

#[test]
fn watchdog_kills_qemu_after_max_runtime() {
    let mut options = frozen("harness_watchdog");
    options.max_runtime = Duration::from_secs(2);
    let mut machine = Machine::boot(options).expect("QEMU starts");
    let started = Instant::now();
    let error = machine
        .wait_for("this text is never printed", Duration::from_secs(60))
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HarnessError::Exited { .. }), "{message}");
    assert!(message.contains("watchdog"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A stand-in for QEMU: an executable shell script that ignores the QEMU
/// arguments, prints what `script` prints and exits as it exits.
fn fake_qemu(name: &str, script: &str) -> QemuOptions {
    use std::os::unix::fs::PermissionsExt;
    // Outside the run folder, which the first boot of `name` empties.
    let dir = daxbox_tests::test_runs_dir().join("fake-qemu");
    std::fs::create_dir_all(&dir).expect("fake QEMU folder");
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("fake QEMU script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut options = QemuOptions::new(name, Firmware::Bios);
    options.qemu = path.display().to_string();
    options
}

#[test]
fn pattern_split_across_reads_still_matches_a_crash_marker() {
    // `KERNEL PANIC` arrives first, `: message` half a second later: a wait
    // for `KERNEL PANIC: ` must succeed, not report a crash.
    let options = fake_qemu(
        "harness_split_marker",
        "printf 'booting\\nKERNEL PANIC'; sleep 0.5; printf ': split at x.rs:1\\n'; exit 35",
    );
    let mut machine = Machine::boot(options).expect("fake QEMU starts");
    let seen = machine
        .wait_for("KERNEL PANIC: ", Duration::from_secs(10))
        .expect("pattern found");
    assert!(seen.starts_with("booting\n"), "{seen:?}");
    assert_eq!(machine.wait_exit(Duration::from_secs(10)).unwrap(), 35);
    assert!(machine.output().contains("split at x.rs:1"));
}

#[test]
fn crash_marker_fails_a_wait_for_something_else() {
    let options = fake_qemu(
        "harness_crash_marker",
        "printf 'booting\\nEXCEPTION: PAGE FAULT at 0xdead\\nKERNEL PANIC: boom at y.rs:2\\n'; exit 35",
    );
    let mut machine = Machine::boot(options).expect("fake QEMU starts");
    let error = machine
        .wait_for("daxbox: ready", Duration::from_secs(10))
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, HarnessError::KernelPanic { .. }),
        "{message}"
    );
    assert!(
        message.starts_with("the kernel crashed: EXCEPTION: PAGE FAULT at 0xdead"),
        "{message}"
    );
    assert!(
        message.contains("KERNEL PANIC: boom at y.rs:2"),
        "{message}"
    );
}
