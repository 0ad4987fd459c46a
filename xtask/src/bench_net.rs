//! `cargo xtask bench net`: HTTP throughput through QEMU's user network and
//! the idle cost of the appliance.
//!
//! Boots the release appliance (BIOS, q35, TCG unless `DAXBOX_ACCEL` says
//! otherwise) with `http_bench=on` (the `/bench/*` routes are off by
//! default), waits for `/healthz`, then measures:
//! - QEMU's host CPU use while the guest is idle (utime+stime from
//!   `/proc/PID/stat` over `--idle-seconds`, default 10);
//! - download: `curl` of `GET /bench/bytes?n=SIZE` (default 256 MiB);
//! - upload: `curl -T` of a SIZE-byte file to `PUT /bench/sink`.
//!
//! SIZE is at most 1024 MiB, the appliance's per-request limit on both
//! routes (`MAX_BENCH_BYTES` in `net/stack/src/http.rs`).
//!
//! Figures include everything between curl and the guest: hostfwd, slirp,
//! virtio-net emulation and the guest's smoltcp, on a 2-core machine where
//! curl, QEMU's I/O thread and the vCPU share the CPUs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use daxbox_tests::{Firmware, Machine, QemuOptions};

use crate::images::{harness, prepare_for_harness};
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench net [--size MIB] [--idle-seconds N]

Boots the appliance with http_bench=on and measures HTTP download/upload
throughput of SIZE MiB (default 256, 1-1024: the appliance's per-request
limit) with curl through the forwarded port, and QEMU's host CPU use while
idle (default over 10 s). DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

/// Largest `--size` in MiB: the appliance's per-request limit on
/// `/bench/bytes` and `/bench/sink` (`MAX_BENCH_BYTES`, 1 GiB).
const MAX_SIZE_MIB: u64 = 1024;

/// The boot config of the benchmark: the `/bench/*` routes it measures.
const BOOT_CONFIG: &str = "http_bench=on\n";

fn number(args: &[String], index: usize) -> Result<u64, XtaskError> {
    args.get(index + 1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| XtaskError::Usage(USAGE.into()))
}

/// utime + stime of `pid` in clock ticks (proc(5): fields 14 and 15).
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, XtaskError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| XtaskError::Io(format!("/proc/{pid}/stat: {e}")))?;
    // The command name (field 2) may contain spaces: split after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| XtaskError::Io("malformed /proc stat".into()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so fields 14/15 are at 11/12.
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(utime), Some(stime)) => Ok(utime + stime),
        _ => Err(XtaskError::Io("malformed /proc stat".into())),
    }
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Runs curl and returns its `-w` output.
fn curl(args: &[&str]) -> Result<String, XtaskError> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--fail", "--max-time", "900"])
        .args(args);
    let output = command.output().map_err(|e| XtaskError::Command {
        command: format!("{command:?}"),
        problem: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(XtaskError::Command {
            command: format!("{command:?}"),
            problem: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn wait_healthz(url: &str) -> Result<(), XtaskError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if curl(&["--max-time", "5", "-o", "/dev/null", url]).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(XtaskError::Command {
                command: format!("curl {url}"),
                problem: "no answer within 60 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Parses curl's `-w '%{size_download} %{size_upload} %{time_total}'`.
fn transfer_figures(text: &str) -> (f64, f64, f64) {
    let mut parts = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    let mut next = || parts.next().unwrap_or(0.0);
    (next(), next(), next())
}

fn mib_per_s(bytes: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes / seconds / (1024.0 * 1024.0)
    } else {
        0.0
    }
}

/// Entry point of `cargo xtask bench net`.
pub fn net(args: &[String]) -> Result<(), XtaskError> {
    let mut size_mib = 256;
    let mut idle_seconds = 10;
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--size" => size_mib = number(args, index)?,
            "--idle-seconds" => idle_seconds = number(args, index)?,
            _ => return Err(XtaskError::Usage(USAGE.into())),
        }
        index += 2;
    }
    if size_mib == 0 || size_mib > MAX_SIZE_MIB {
        return Err(XtaskError::Usage(USAGE.into()));
    }
    let size = size_mib * 1024 * 1024;
    prepare_for_harness()?;
    let mut options = QemuOptions::new("bench_net", Firmware::Bios).with_boot_config(BOOT_CONFIG);
    options.max_runtime = Duration::from_secs(1800);
    let machine = Machine::boot_to_prompt(options).map_err(harness)?;
    let base = format!("http://127.0.0.1:{}", machine.http_port());
    wait_healthz(&format!("{base}/healthz"))?;

    // Idle: let the boot and the first exchange settle, then measure.
    std::thread::sleep(Duration::from_secs(2));
    let hz = clock_ticks_per_second();
    let before = cpu_ticks(machine.pid())?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let ticks = cpu_ticks(machine.pid())? - before;
    let idle_elapsed = started.elapsed().as_secs_f64();
    let idle_percent = ticks as f64 / hz as f64 / idle_elapsed * 100.0;

    let download = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{size_upload} %{time_total}",
        &format!("{base}/bench/bytes?n={size}"),
    ])?;
    let (down_bytes, _, down_seconds) = transfer_figures(&download);
    if down_bytes as u64 != size {
        return Err(XtaskError::Command {
            command: "curl download".into(),
            problem: format!("got {down_bytes} bytes, wanted {size}"),
        });
    }

    // A sparse file: reading it costs the host nothing.
    let file: PathBuf = daxbox_tests::run_dir("bench_net").join("upload.bin");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(size))
        .map_err(|e| XtaskError::Io(format!("{}: {e}", file.display())))?;
    let upload = curl(&[
        "-T",
        &file.display().to_string(),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{size_upload} %{time_total}",
        &format!("{base}/bench/sink"),
    ])?;
    let _ = std::fs::remove_file(&file);
    let (_, up_bytes, up_seconds) = transfer_figures(&upload);
    if up_bytes as u64 != size {
        return Err(XtaskError::Command {
            command: "curl upload".into(),
            problem: format!("sent {up_bytes} bytes, wanted {size}"),
        });
    }

    println!(
        "bench net ({} MiB, accel {}):",
        size_mib,
        std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into())
    );
    println!(
        "  download  {:8.1} MiB/s  ({:.2} s)",
        mib_per_s(down_bytes, down_seconds),
        down_seconds
    );
    println!(
        "  upload    {:8.1} MiB/s  ({:.2} s)",
        mib_per_s(up_bytes, up_seconds),
        up_seconds
    );
    println!(
        "  idle CPU  {:8.1} %       (QEMU utime+stime over {:.1} s)",
        idle_percent, idle_elapsed
    );
    drop(machine);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_figures() {
        assert_eq!(transfer_figures("268435456 0 2.5"), (268435456.0, 0.0, 2.5));
        assert_eq!(transfer_figures("garbage"), (0.0, 0.0, 0.0));
        assert_eq!(mib_per_s(2.0 * 1024.0 * 1024.0, 2.0), 1.0);
    }

    #[test]
    fn size_within_the_appliance_limit_and_bench_routes_on() {
        for size in ["0", "1025"] {
            let args = [String::from("--size"), String::from(size)];
            assert!(matches!(net(&args), Err(XtaskError::Usage(_))), "{size}");
        }
        assert_eq!(BOOT_CONFIG, "http_bench=on\n");
    }

    #[test]
    fn reads_own_cpu_ticks() {
        assert!(cpu_ticks(std::process::id()).is_ok());
    }
}
