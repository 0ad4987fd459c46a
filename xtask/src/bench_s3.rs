//! `cargo xtask bench s3`: PUT and GET throughput of a 256 MiB object over
//! the appliance's S3 object API, with curl and boto3, next to nbdcopy
//! writing and reading the same number of bytes over NBD on the same
//! appliance in the same run (the baseline).
//!
//! Setup: the release appliance boots (BIOS, q35, TCG unless `DAXBOX_ACCEL`
//! says otherwise) with a 1 GiB NVDIMM, `format=if-blank` and one S3 key;
//! the host writes 256 MiB of pseudo-random bytes (no zero blocks, so
//! nothing is shortcut). Then, in this order:
//! 1. nbdcopy (baseline): the shell creates the daxfs file `nbd.bin`
//!    (256 MiB); `nbdcopy -S 0 --flush DATA nbd://.../nbd.bin`, then
//!    `nbdcopy --no-extents nbd://.../nbd.bin null:`;
//! 2. curl: `curl --aws-sigv4 aws:amz:us-east-1:s3 -T DATA` (one PutObject,
//!    `x-amz-content-sha256: UNSIGNED-PAYLOAD`; the appliance still
//!    computes the MD5 for the ETag), then a signed GET to a host file,
//!    checked against DATA afterwards (not measured). The key is in a curl
//!    config file, never on a printed command line;
//! 3. boto3: `upload_file` and `download_file` with the default
//!    TransferConfig (multipart in 8 MiB parts, 10 threads), timed inside
//!    Python so the interpreter's start-up is not counted; the download is
//!    checked against DATA (not measured).
//!
//! Figures are MB/s (10^6 bytes per second) with the ratio to nbdcopy in
//! the same direction. No assertions on speed: the appliance runs under
//! TCG on a shared host, reached through QEMU's user network, so the host
//! facts (CPU model, /proc/loadavg before and after) are printed with them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use daxbox_tests::{run_dir, Firmware, Machine, Nvdimm, QemuOptions};

use crate::bench_nbd::{mb_per_s, timed, write_random_file};
use crate::images::{harness, prepare_for_harness};
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench s3 [--keep]

Boots the appliance (1 GiB NVDIMM, format=if-blank, one S3 key) and moves
256 MiB each way with nbdcopy over NBD (the baseline), curl over S3 (one
signed PUT, one signed GET) and boto3 (upload_file/download_file, default
multipart settings). Prints MB/s and the ratio to nbdcopy, with the host's CPU
model and load. --keep leaves the host files in target/test-runs/bench_s3/.
DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

const MIB: u64 = 1 << 20;
/// Bytes moved each way by every client.
const SIZE: u64 = 256 * MIB;
/// The appliance's NVDIMM (three 256 MiB objects at most at once).
const NVDIMM_SIZE: u64 = 1024 * MIB;
/// The run folder name (`target/test-runs/bench_s3/`).
const NAME: &str = "bench_s3";
const ACCESS: &str = "AKBENCHS3";
const SECRET: &str = "bench-s3-secret-0123456789";

fn io_error(path: &Path, error: std::io::Error) -> XtaskError {
    XtaskError::Io(format!("{}: {error}", path.display()))
}

/// Waits until `url` answers (the forwarded port accepts TCP before the
/// guest listens), at most 60 s.
fn wait_healthz(url: &str) -> Result<(), XtaskError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answered = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|status| status.success());
        if answered {
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

/// Fails unless the file at `copy` holds exactly the bytes of `data`.
fn check_same(data: &Path, copy: &Path, what: &str) -> Result<(), XtaskError> {
    let want = std::fs::read(data).map_err(|e| io_error(data, e))?;
    let got = std::fs::read(copy).map_err(|e| io_error(copy, e))?;
    let _ = std::fs::remove_file(copy);
    if want == got {
        println!("    {what}: read-back matches the data written");
        Ok(())
    } else {
        Err(XtaskError::Command {
            command: what.into(),
            problem: format!(
                "got {} bytes that are not the {} bytes written",
                got.len(),
                want.len()
            ),
        })
    }
}

/// The boto3 part (`ENDPOINT DATA KEY BACK`, the access key in the
/// environment): uploads `data` as `key` and downloads it to `back`,
/// printing `put SECONDS` and `get SECONDS` (timed in Python).
const BOTO3_SCRIPT: &str = r#"
import sys, time
import boto3
from botocore.config import Config
endpoint, data, key, back = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                connect_timeout=30, read_timeout=600))
s3.head_bucket(Bucket="pmem0")
start = time.monotonic()
s3.upload_file(data, "pmem0", key)
print("put %.6f" % (time.monotonic() - start))
start = time.monotonic()
s3.download_file("pmem0", key, back)
print("get %.6f" % (time.monotonic() - start))
"#;

/// The seconds on the line `LABEL SECONDS` of the boto3 script's output.
fn seconds(output: &str, label: &str) -> Result<Duration, XtaskError> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(label)?.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| XtaskError::Command {
            command: "boto3 benchmark script".into(),
            problem: format!("no `{label}` figure in:\n{output}"),
        })
}

/// The result table: (client, PUT MB/s, GET MB/s); the first row is the
/// baseline of the ratios.
fn table(rows: &[(&str, f64, f64)]) -> String {
    let accel = std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut text = format!(
        "bench s3 (accel {accel}, 256 MiB each way, MB/s = 10^6 bytes/s):\n{:<28} {:>10} {:>10} {:>10} {:>10}\n",
        "", "PUT MB/s", "ratio", "GET MB/s", "ratio"
    );
    let (put_base, get_base) = rows.first().map_or((0.0, 0.0), |r| (r.1, r.2));
    let ratio = |ours: f64, base: f64| if base > 0.0 { ours / base } else { f64::NAN };
    for (name, put, get) in rows {
        text += &format!(
            "{name:<28} {put:>10.1} {:>10.3} {get:>10.1} {:>10.3}\n",
            ratio(*put, put_base),
            ratio(*get, get_base)
        );
    }
    text
}

/// Entry point of `cargo xtask bench s3`.
pub fn s3(args: &[String]) -> Result<(), XtaskError> {
    let mut keep = false;
    for arg in args {
        match arg.as_str() {
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(XtaskError::Usage(USAGE.into())),
        }
    }
    prepare_for_harness()?;
    crate::setup::ensure_s3_clients()?;
    println!("{}", crate::bench_trim::host_facts());

    crate::step("booting the appliance (1 GiB NVDIMM, format=if-blank, one S3 key)");
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(format!("format=if-blank\ns3_key={ACCESS}:{SECRET}\n"))
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("pmem0.img"), NVDIMM_SIZE));
    options.max_runtime = Duration::from_secs(1800);
    // The harness empties the run folder at this first boot: host files
    // go there only afterwards.
    let mut machine = Machine::boot_to_prompt(options).map_err(harness)?;
    let output = machine
        .command(&format!("create nbd.bin {SIZE}"))
        .map_err(harness)?;
    if !output.contains("created") {
        return Err(XtaskError::Command {
            command: format!("create nbd.bin {SIZE} (appliance shell)"),
            problem: output,
        });
    }
    let nbd_uri = format!("nbd://127.0.0.1:{}/nbd.bin", machine.nbd_port());
    let endpoint = format!("http://127.0.0.1:{}", machine.http_port());
    wait_healthz(&format!("{endpoint}/healthz"))?;

    let host = run_dir(NAME).join("host");
    std::fs::create_dir_all(&host).map_err(|e| io_error(&host, e))?;
    let data = host.join("data-256M.bin");
    let back = host.join("back.bin");
    write_random_file(&data, SIZE, 0x5eed_b3c4_0123_4567)?;

    crate::step("nbdcopy: 256 MiB write and read over NBD (baseline)");
    let (_, nbd_put) = timed(
        Command::new("nbdcopy")
            .args(["-S", "0", "--flush"])
            .arg(&data)
            .arg(&nbd_uri),
    )?;
    let (_, nbd_get) = timed(Command::new("nbdcopy").args(["--no-extents", &nbd_uri, "null:"]))?;
    timed(Command::new("nbdcopy").arg(&nbd_uri).arg(&back))?;
    check_same(&data, &back, "nbdcopy")?;
    machine.command("rm nbd.bin").map_err(harness)?;

    crate::step("curl: one signed PUT and one signed GET of 256 MiB");
    let url = format!("{endpoint}/pmem0/curl.bin");
    // The key goes in a curl config file, not on the command line that
    // `timed` prints.
    let curl_config = host.join("curl.conf");
    std::fs::write(&curl_config, format!("user = \"{ACCESS}:{SECRET}\"\n"))
        .map_err(|e| io_error(&curl_config, e))?;
    let curl = |extra: &[&str]| {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--fail", "--max-time", "1200"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
            .arg("--config")
            .arg(&curl_config)
            .args(extra);
        command
    };
    let data_text = data.to_str().expect("UTF-8 path");
    let back_text = back.to_str().expect("UTF-8 path");
    let (_, curl_put) = timed(&mut curl(&[
        "-H",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        "-T",
        data_text,
        &url,
    ]))?;
    // S3 (and the appliance) want x-amz-content-sha256 on every signed
    // request; curl 7.88 sends it only when told: the empty body's hash.
    let empty =
        "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let (_, curl_get) = timed(&mut curl(&["-H", empty, "-o", back_text, &url]))?;
    check_same(&data, &back, "curl")?;
    timed(&mut curl(&["-H", empty, "-X", "DELETE", &url]))?;

    crate::step("boto3: upload_file and download_file of 256 MiB (default multipart)");
    let (output, _) = timed(
        Command::new("python3")
            .args(["-c", BOTO3_SCRIPT])
            .args([&endpoint, data_text, "boto3.bin", back_text])
            // The key from the environment, not the printed command line.
            .env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    )?;
    let (boto3_put, boto3_get) = (seconds(&output, "put")?, seconds(&output, "get")?);
    check_same(&data, &back, "boto3")?;
    drop(machine);

    if !keep {
        let _ = std::fs::remove_dir_all(&host);
    }
    println!();
    print!(
        "{}",
        table(&[
            (
                "nbdcopy over NBD (baseline)",
                mb_per_s(SIZE, nbd_put),
                mb_per_s(SIZE, nbd_get)
            ),
            (
                "curl over S3",
                mb_per_s(SIZE, curl_put),
                mb_per_s(SIZE, curl_get)
            ),
            (
                "boto3 over S3 (multipart)",
                mb_per_s(SIZE, boto3_put),
                mb_per_s(SIZE, boto3_get)
            ),
        ])
    );
    println!("{}", crate::bench_trim::host_facts());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boto3_figures_are_read_by_label() {
        let output = "put 2.500000\nget 1.25\n";
        assert_eq!(seconds(output, "put").unwrap(), Duration::from_millis(2500));
        assert_eq!(seconds(output, "get").unwrap(), Duration::from_millis(1250));
        assert!(seconds("nothing", "put").is_err());
        assert!(seconds("put -1", "put").is_err());
    }

    #[test]
    fn table_gives_ratios_to_the_first_row() {
        let text = table(&[("base", 100.0, 200.0), ("other", 50.0, 400.0)]);
        assert!(text.contains("0.500"), "{text}");
        assert!(text.contains("2.000"), "{text}");
        assert!(text.contains("1.000"), "{text}");
    }
}
