//! `cargo xtask bench nbd`: the appliance's NBD service next to `qemu-nbd`
//! serving files of the same sizes on the host, with identical clients.
//!
//! Setup: the release appliance boots (BIOS, q35, TCG unless `DAXBOX_ACCEL`
//! says otherwise) with a 1 GiB NVDIMM and `format=if-blank`; the shell
//! creates two daxfs files, `seq` (256 MiB, for nbdcopy) and `rand`
//! (512 MiB, for fio), each an NBD export. On the host two `qemu-nbd -f raw
//! -t` processes serve two raw files of the same sizes on 127.0.0.1.
//!
//! Against each server, in this order:
//! 1. sequential write: `nbdcopy -S 0 --flush DATA nbd://.../seq` (256 MiB
//!    of pseudo-random bytes, so neither zero detection nor sparseness
//!    shortcuts anything; the final flush makes the data durable);
//! 2. sequential read: `nbdcopy --no-extents nbd://.../seq null:`, then
//!    (not measured) a copy back to a host file that must equal the data;
//! 3. prefill `rand` with 512 MiB of pseudo-random bytes (not measured), so
//!    random reads hit allocated data on both sides;
//! 4. fio `--ioengine=nbd`, 4 KiB random read and random write at queue
//!    depth 1 and 16 (`--runtime=N --time_based`, default 10 s).
//!
//! The table shows both figures and appliance / qemu-nbd. What is measured
//! differs beyond the server code: the appliance is reached through QEMU's
//! user network (hostfwd, slirp, virtio-net emulation, guest smoltcp) under
//! TCG on a 2-core host that also runs the client, while qemu-nbd is a
//! native process on loopback writing into the host page cache.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daxbox_tests::{free_port, run_dir, Firmware, Machine, Nvdimm, QemuOptions};

use crate::images::{harness, prepare_for_harness};
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench nbd [--runtime SECONDS] [--keep]

Boots the appliance (1 GiB NVDIMM, format=if-blank, daxfs files seq = 256 MiB and
rand = 512 MiB) and starts qemu-nbd on 127.0.0.1 with raw files of the same sizes,
then runs the same clients against both: nbdcopy sequential write and read of
256 MiB (MB/s), fio --ioengine=nbd 4 KiB random read and write at queue depth 1
and 16 (IOPS, each --runtime seconds, default 10). Prints a table with the ratio
appliance / qemu-nbd. --keep leaves the host files in target/test-runs/bench_nbd/.
DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

const MIB: u64 = 1 << 20;
/// The nbdcopy export and transfer size.
const SEQ_SIZE: u64 = 256 * MIB;
/// The fio export size.
const RAND_SIZE: u64 = 512 * MIB;
/// The appliance's NVDIMM.
const NVDIMM_SIZE: u64 = 1024 * MIB;
/// The run folder name (`target/test-runs/bench_nbd/`).
const NAME: &str = "bench_nbd";

fn io_error(path: &Path, error: std::io::Error) -> XtaskError {
    XtaskError::Io(format!("{}: {error}", path.display()))
}

/// A `qemu-nbd` process, killed by PID when dropped (also on errors).
struct QemuNbd {
    child: Child,
    port: u16,
}

impl QemuNbd {
    /// `qemu-nbd -f raw -t -p PORT --bind 127.0.0.1 FILE`, ready when a
    /// real NBD handshake (nbdinfo) completes.
    fn start(file: &Path) -> Result<QemuNbd, XtaskError> {
        let port = free_port().map_err(harness)?;
        let mut command = Command::new("qemu-nbd");
        command
            .args(["-f", "raw", "-t", "-p", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg(file)
            .stdin(Stdio::null());
        println!("    {}", crate::describe(&command));
        let child = command.spawn().map_err(|error| XtaskError::Command {
            command: "qemu-nbd".into(),
            problem: format!("{error} (install qemu-utils: `cargo xtask setup`)"),
        })?;
        let server = QemuNbd { child, port };
        wait_for_export(&server.uri(), Duration::from_secs(20))?;
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

/// Waits until `nbdinfo --size URI` completes a handshake (the appliance's
/// forwarded port accepts TCP before the guest listens, so a connect alone
/// proves nothing).
fn wait_for_export(uri: &str, timeout: Duration) -> Result<(), XtaskError> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = Command::new("nbdinfo")
            .args(["--size", uri])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|error| XtaskError::Command {
                command: "nbdinfo".into(),
                problem: format!("{error} (install libnbd-bin: `cargo xtask setup`)"),
            })?;
        if status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(XtaskError::Command {
                command: format!("nbdinfo --size {uri}"),
                problem: format!("no NBD server within {} s", timeout.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
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

/// Fields of fio's `--output-format=terse --terse-version=3` line: read
/// IOPS is field 8 and write IOPS field 49 (1-based; fio HOWTO "Terse
/// output").
const TERSE_READ_IOPS: usize = 7;
const TERSE_WRITE_IOPS: usize = 48;

/// The IOPS of a terse v3 line (the read or the write figure).
fn terse_iops(output: &str, write: bool) -> Option<f64> {
    let line = output.lines().find(|line| line.starts_with("3;"))?;
    let fields: Vec<&str> = line.split(';').collect();
    let index = if write {
        TERSE_WRITE_IOPS
    } else {
        TERSE_READ_IOPS
    };
    fields.get(index)?.parse().ok()
}

/// One fio run: 4 KiB random `rw` at `depth`; returns IOPS.
pub(crate) fn fio(uri: &str, rw: &str, depth: u32, runtime: u64) -> Result<f64, XtaskError> {
    let mut command = Command::new("fio");
    command
        .arg(format!("--name={rw}-qd{depth}"))
        .args(["--ioengine=nbd", &format!("--uri={uri}")])
        .arg(format!("--rw={rw}"))
        .args(["--bs=4k", &format!("--iodepth={depth}")])
        .arg(format!("--runtime={runtime}"))
        .args(["--time_based", "--norandommap", "--randrepeat=1"])
        .args(["--output-format=terse", "--terse-version=3"]);
    let (output, _) = timed(&mut command)?;
    terse_iops(&output, rw == "randwrite").ok_or_else(|| XtaskError::Command {
        command: format!("fio {rw} qd{depth}"),
        problem: format!("no terse result line in:\n{output}"),
    })
}

/// Copies export `uri` to a host file next to `data` and checks it holds
/// exactly the bytes of `data` (not measured): figures for a server that
/// loses or mangles data would be worthless.
fn verify(uri: &str, data: &Path) -> Result<(), XtaskError> {
    let copy = data.with_extension("readback");
    let _ = std::fs::remove_file(&copy);
    timed(Command::new("nbdcopy").arg(uri).arg(&copy))?;
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

/// The figures of one server.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    seq_write_mb_s: f64,
    seq_read_mb_s: f64,
    read_qd1: f64,
    read_qd16: f64,
    write_qd1: f64,
    write_qd16: f64,
}

pub(crate) fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs every client against one server: `seq`/`rand` are the URIs of
/// the 256 MiB and 512 MiB exports.
fn measure(
    label: &str,
    seq: &str,
    rand: &str,
    data: &Path,
    fill: &Path,
    runtime: u64,
) -> Result<Figures, XtaskError> {
    crate::step(&format!("{label}: nbdcopy 256 MiB write, read"));
    let (_, write) = timed(
        Command::new("nbdcopy")
            .args(["-S", "0", "--flush"])
            .arg(data)
            .arg(seq),
    )?;
    let (_, read) = timed(Command::new("nbdcopy").args(["--no-extents", seq, "null:"]))?;
    verify(seq, data)?;
    crate::step(&format!(
        "{label}: prefill the 512 MiB export (not measured)"
    ));
    let (_, prefill) = timed(
        Command::new("nbdcopy")
            .args(["-S", "0"])
            .arg(fill)
            .arg(rand),
    )?;
    println!("    prefill: {:.1} MB/s", mb_per_s(RAND_SIZE, prefill));
    crate::step(&format!("{label}: fio 4 KiB random, {runtime} s each"));
    let figures = Figures {
        seq_write_mb_s: mb_per_s(SEQ_SIZE, write),
        seq_read_mb_s: mb_per_s(SEQ_SIZE, read),
        read_qd1: fio(rand, "randread", 1, runtime)?,
        read_qd16: fio(rand, "randread", 16, runtime)?,
        write_qd1: fio(rand, "randwrite", 1, runtime)?,
        write_qd16: fio(rand, "randwrite", 16, runtime)?,
    };
    println!("    {figures:?}");
    Ok(figures)
}

/// The result table.
fn table(appliance: &Figures, qemu: &Figures, runtime: u64) -> String {
    let rows = [
        (
            "seq write 256 MiB (nbdcopy)",
            appliance.seq_write_mb_s,
            qemu.seq_write_mb_s,
            "MB/s",
        ),
        (
            "seq read 256 MiB (nbdcopy)",
            appliance.seq_read_mb_s,
            qemu.seq_read_mb_s,
            "MB/s",
        ),
        (
            "4K rand read QD1 (fio)",
            appliance.read_qd1,
            qemu.read_qd1,
            "IOPS",
        ),
        (
            "4K rand read QD16 (fio)",
            appliance.read_qd16,
            qemu.read_qd16,
            "IOPS",
        ),
        (
            "4K rand write QD1 (fio)",
            appliance.write_qd1,
            qemu.write_qd1,
            "IOPS",
        ),
        (
            "4K rand write QD16 (fio)",
            appliance.write_qd16,
            qemu.write_qd16,
            "IOPS",
        ),
    ];
    let mut text = format!(
        "bench nbd (accel {}, fio {} s per run):\n{:<30} {:>12} {:>12} {:>6}  {:>9}\n",
        std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into()),
        runtime,
        "",
        "appliance",
        "qemu-nbd",
        "unit",
        "ratio"
    );
    for (name, ours, theirs, unit) in rows {
        let ratio = if theirs > 0.0 {
            ours / theirs
        } else {
            f64::NAN
        };
        text += &format!("{name:<30} {ours:>12.1} {theirs:>12.1} {unit:>6}  {ratio:>9.3}\n");
    }
    text
}

/// Entry point of `cargo xtask bench nbd`.
pub fn nbd(args: &[String]) -> Result<(), XtaskError> {
    let mut runtime = 10;
    let mut keep = false;
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--runtime" => {
                runtime = args
                    .get(index + 1)
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v > 0)
                    .ok_or_else(|| XtaskError::Usage(USAGE.into()))?;
                index += 2;
            }
            "--keep" => {
                keep = true;
                index += 1;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(XtaskError::Usage(USAGE.into())),
        }
    }
    prepare_for_harness()?;

    crate::step("booting the appliance (1 GiB NVDIMM, format=if-blank)");
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("pmem0.img"), NVDIMM_SIZE));
    options.max_runtime = Duration::from_secs(1800);
    // The harness empties the run folder at this first boot: host files
    // go there only afterwards.
    let mut machine = Machine::boot_to_prompt(options).map_err(harness)?;
    for (file, size) in [("seq", SEQ_SIZE), ("rand", RAND_SIZE)] {
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
    let appliance_uri = |export: &str| format!("nbd://127.0.0.1:{}/{export}", machine.nbd_port());
    wait_for_export(&appliance_uri("seq"), Duration::from_secs(60))?;

    let host: PathBuf = run_dir(NAME).join("host");
    std::fs::create_dir_all(&host).map_err(|e| io_error(&host, e))?;
    crate::step("writing pseudo-random source data and the qemu-nbd files");
    let data = host.join("data-256M.bin");
    let fill = host.join("data-512M.bin");
    write_random_file(&data, SEQ_SIZE, 0x9e37_79b9_7f4a_7c15)?;
    write_random_file(&fill, RAND_SIZE, 0xd1b5_4a32_d192_ed03)?;
    let mut raw_files = Vec::new();
    for (file, size) in [("qemu-seq.raw", SEQ_SIZE), ("qemu-rand.raw", RAND_SIZE)] {
        let path = host.join(file);
        File::create(&path)
            .and_then(|f| f.set_len(size))
            .map_err(|e| io_error(&path, e))?;
        raw_files.push(path);
    }

    let appliance = measure(
        "appliance",
        &appliance_uri("seq"),
        &appliance_uri("rand"),
        &data,
        &fill,
        runtime,
    )?;
    drop(machine);

    crate::step("starting qemu-nbd on 127.0.0.1");
    let seq_server = QemuNbd::start(&raw_files[0])?;
    let rand_server = QemuNbd::start(&raw_files[1])?;
    let qemu = measure(
        "qemu-nbd",
        &seq_server.uri(),
        &rand_server.uri(),
        &data,
        &fill,
        runtime,
    )?;
    drop(seq_server);
    drop(rand_server);

    if !keep {
        // Best effort: 1.5 GiB of scratch data.
        let _ = std::fs::remove_dir_all(&host);
    }
    println!();
    print!("{}", table(&appliance, &qemu, runtime));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_line_gives_read_and_write_iops() {
        // Field 8 = read IOPS, field 49 = write IOPS (terse v3).
        let mut fields = vec!["0"; 60];
        fields[0] = "3";
        fields[TERSE_READ_IOPS] = "7454";
        fields[TERSE_WRITE_IOPS] = "1234.5";
        let line = format!("fio: connected to NBD server\n{}\n", fields.join(";"));
        assert_eq!(terse_iops(&line, false), Some(7454.0));
        assert_eq!(terse_iops(&line, true), Some(1234.5));
        assert_eq!(terse_iops("no result", false), None);
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

    #[test]
    fn table_shows_the_ratio() {
        let ours = Figures {
            seq_write_mb_s: 50.0,
            ..Figures::default()
        };
        let theirs = Figures {
            seq_write_mb_s: 200.0,
            ..Figures::default()
        };
        let text = table(&ours, &theirs, 10);
        let line = text
            .lines()
            .find(|l| l.starts_with("seq write"))
            .expect("row");
        assert!(line.ends_with("0.250"), "{line}");
        assert!(text.contains("NaN"), "0 / 0 has no ratio: {text}");
    }
}
