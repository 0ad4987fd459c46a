//! `cargo xtask bench tls`: the cost of TLS on the booted appliance, each
//! figure next to its plaintext baseline from the same boot and run
//! (`tls=on`: the NBD port serves both; HTTPS on its own port). Prints
//! the host's load average and CPU model first: the crypto is soft
//! (no SSE on the kernel target, ChaCha20-Poly1305 preferred) and runs
//! under TCG, so the figures say more about the ratio than the absolute.
//!
//! - nbdcopy 64 MiB write and read, `nbd://` and `nbds://`;
//! - 4 KiB reads at queue depth 1 with `qemu-io` (QEMU's NBD client,
//!   `tls-creds-x509`; this `qemu-img bench` takes no `--object`): fio's
//!   `nbd` engine cannot be given a
//!   certificate folder (libnbd refuses `tls-certificates` in a URI
//!   unless the program allows local file access, which fio does not);
//! - curl GET of 64 MiB (`/bench/bytes`, `http_bench=on`) over HTTP and
//!   HTTPS;
//! - connection set-up: the mean of 20 `nbdinfo --size` runs each way
//!   (the difference is the TLS handshake, with the client's start-up
//!   in both).
//!
//! No assertions on speed: it prints figures.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daxbox_tests::{free_port, run_dir, target_dir, Firmware, Machine, Nvdimm, QemuOptions};

use crate::bench_nbd::{mb_per_s, timed, write_random_file};
use crate::images::{harness, prepare_for_harness};
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench tls [--runtime SECONDS]

Boots the appliance with tls=on and throwaway certificates (target/tls-bench/)
and prints nbdcopy 64 MiB write/read, 4K reads QD1 (qemu-io), curl
64 MiB GET and the connection set-up time, each with and without TLS.
  --requests N        4K reads per qemu-io run (default 2000)";

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;
const NAME: &str = "bench_tls";
const HANDSHAKES: u32 = 20;

fn host_facts() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("host load average: {}\nhost CPU: {cpu}\n", load.trim())
}

/// 4 KiB reads at queue depth 1 over the 64 MiB export with QEMU's NBD
/// client: one `qemu-io` process running `requests` `read` commands one
/// after the other (offsets stride 1 MiB + 4 KiB, wrapping), so one
/// connection set-up is included; IOPS. (`qemu-img bench` would be the
/// tool, but this QEMU's takes no `--object`, so no TLS credentials.)
fn qemu_io_reads(port: u16, certs: Option<&Path>, requests: u32) -> Result<f64, XtaskError> {
    let mut command = Command::new("qemu-io");
    let mut image = format!("driver=nbd,host=127.0.0.1,port={port},export=disk");
    if let Some(dir) = certs {
        command.args([
            "--object",
            &format!(
                "tls-creds-x509,id=tls0,endpoint=client,dir={}",
                dir.display()
            ),
        ]);
        image += ",tls-creds=tls0";
    }
    command.args(["--image-opts", &image]);
    let mut offset = 0u64;
    for _ in 0..requests {
        command.args(["-c", &format!("read -q {offset} 4096")]);
        offset = (offset + MIB + 4096) % (SIZE - 4096);
        offset -= offset % 4096;
    }
    // Not `timed`: it would print the whole command line.
    println!("    qemu-io --image-opts {image} -c 'read -q OFFSET 4096' x {requests}");
    let started = std::time::Instant::now();
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| XtaskError::Command {
            command: "qemu-io".into(),
            problem: e.to_string(),
        })?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(XtaskError::Command {
            command: "qemu-io reads".into(),
            problem: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(f64::from(requests) / elapsed.as_secs_f64().max(1e-9))
}

/// Mean wall time of `HANDSHAKES` runs of `nbdinfo --size uri`.
fn setup_time(uri: &str) -> Result<Duration, XtaskError> {
    let mut total = Duration::ZERO;
    for _ in 0..HANDSHAKES {
        let (_, elapsed) = timed(Command::new("nbdinfo").args(["--size", uri]))?;
        total += elapsed;
    }
    Ok(total / HANDSHAKES)
}

fn curl_get(url: &str, ca: &Path) -> Result<f64, XtaskError> {
    let ca = ca.display().to_string();
    let (_, elapsed) = timed(Command::new("curl").args([
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "--cacert",
        &ca,
        url,
    ]))?;
    Ok(mb_per_s(SIZE, elapsed))
}

/// Entry point of `cargo xtask bench tls`.
pub fn tls(args: &[String]) -> Result<(), XtaskError> {
    let mut requests: u32 = 2000;
    match args {
        [] => {}
        [flag, value] if flag == "--requests" => {
            requests = value
                .parse()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| XtaskError::Usage(USAGE.into()))?
        }
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => return Err(XtaskError::Usage(USAGE.into())),
    }
    print!("{}", host_facts());
    prepare_for_harness()?;
    let certs = target_dir().join("tls-bench");
    crate::tls_certs::generate(&certs)?;
    let config = format!(
        "format=if-blank\nhttp_bench=on\n{}",
        crate::tls_certs::boot_lines(&certs)?
    );
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(config)
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("pmem0.img"), 256 * MIB));
    options.max_runtime = Duration::from_secs(1800);
    let ports = [free_port(), free_port(), free_port()];
    let [nbd_port, http_port, https_port] = ports.map(|p| p.map_err(harness));
    let (nbd_port, http_port, https_port) = (nbd_port?, http_port?, https_port?);
    options.nbd_port = nbd_port;
    options.http_port = http_port;
    options.netdev = Some(format!(
        "user,id=n0,hostfwd=tcp:127.0.0.1:{nbd_port}-:{},hostfwd=tcp:127.0.0.1:{http_port}-:{},\
         hostfwd=tcp:127.0.0.1:{https_port}-:{}",
        daxbox_tests::GUEST_NBD_PORT,
        daxbox_tests::GUEST_HTTP_PORT,
        crate::tls_certs::GUEST_HTTPS_PORT
    ));
    crate::step("booting the appliance (tls=on, 256 MiB NVDIMM)");
    let mut machine = Machine::boot_to_prompt(options).map_err(harness)?;
    let made = machine.command("create disk 64M").map_err(harness)?;
    if !made.contains("created") {
        return Err(XtaskError::Command {
            command: "create disk 64M (appliance shell)".into(),
            problem: made,
        });
    }
    let plain = format!("nbd://127.0.0.1:{nbd_port}/disk");
    let tls = format!(
        "nbds://127.0.0.1:{nbd_port}/disk?tls-certificates={}",
        certs.display()
    );
    let data = run_dir(NAME).join("data-64M.bin");
    let back = run_dir(NAME).join("back-64M.bin");
    write_random_file(&data, SIZE, 0x2545_f491_4f6c_dd1d)?;
    let data_text = data.display().to_string();
    let back_text = back.display().to_string();
    let mut rows = Vec::new();
    for (label, uri, dir) in [("plain", &plain, None), ("tls", &tls, Some(&certs))] {
        let (_, write) = timed(Command::new("nbdcopy").args([&data_text, uri.as_str()]))?;
        let (_, read) = timed(Command::new("nbdcopy").args(["--", uri.as_str(), &back_text]))?;
        if std::fs::read(&back).ok() != std::fs::read(&data).ok() {
            return Err(XtaskError::Command {
                command: format!("nbdcopy {label} read back"),
                problem: "the bytes read differ from the bytes written".into(),
            });
        }
        let iops = qemu_io_reads(nbd_port, dir.map(|d| d.as_path()), requests)?;
        let setup = setup_time(uri)?;
        rows.push((
            label,
            mb_per_s(SIZE, write),
            mb_per_s(SIZE, read),
            iops,
            setup,
        ));
    }
    let ca = certs.join("ca-cert.pem");
    let http = curl_get(
        &format!("http://127.0.0.1:{http_port}/bench/bytes?n={SIZE}"),
        &ca,
    )?;
    let https = curl_get(
        &format!("https://localhost:{https_port}/bench/bytes?n={SIZE}"),
        &ca,
    )?;
    drop(machine);
    println!();
    print!("{}", host_facts());
    println!(
        "{:<8} {:>14} {:>14} {:>16} {:>18}",
        "nbd", "write MB/s", "read MB/s", "4K read QD1 IOPS", "nbdinfo mean ms"
    );
    for (label, write, read, iops, setup) in &rows {
        println!(
            "{label:<8} {write:>14.1} {read:>14.1} {iops:>16.0} {:>18.1}",
            setup.as_secs_f64() * 1000.0
        );
    }
    if let [(.., a), (.., b)] = &rows[..] {
        println!(
            "TLS handshake (nbdinfo nbds:// minus nbd://, mean of {HANDSHAKES}): {:.1} ms",
            (b.as_secs_f64() - a.as_secs_f64()) * 1000.0
        );
    }
    println!("curl GET 64 MiB: HTTP {http:.1} MB/s, HTTPS {https:.1} MB/s");
    Ok(())
}
