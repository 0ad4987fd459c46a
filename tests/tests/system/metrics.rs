//! `/metrics`, `/api/stats` and the dashboard of the booted appliance:
//! counters move by exactly what a real client (nbdcopy) did, `promtool
//! check metrics` accepts the exposition, and headless Chromium renders
//! the dashboard with the device and export names and a non-zero
//! throughput while traffic runs (saving a screenshot in the run folder).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{run_tool_ok, uri};
use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: usize = 1 << 20;
/// The export's size, and what nbdcopy writes and reads back.
const EXPORT: usize = 16 * MIB;
const BULK: Duration = Duration::from_secs(240);

fn options(name: &str, nvdimm: Nvdimm) -> QemuOptions {
    let mut options = QemuOptions::new(name, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(nvdimm);
    options.max_runtime = Duration::from_secs(540);
    options
}

fn appliance(name: &str) -> Result<Machine, HarnessError> {
    let nvdimm = Nvdimm::fresh(run_dir(name).join("nvdimm0.img"), 256 << 20);
    let mut machine = Machine::boot_to_prompt(options(name, nvdimm))?;
    let out = machine.command("create disk1 16M")?;
    assert!(!out.contains("error"), "{out}");
    Ok(machine)
}

/// `curl` of `path` on the appliance: (status, body).
fn get(machine: &Machine, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", machine.http_port());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", &url])
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let status = status.trim().parse().unwrap_or(0);
        if status != 0 || Instant::now() > deadline {
            return (status, body.to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the sample `name{labels}` (exact text), or 0 when absent
/// (a series appears with its first event).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a number"))
}

/// `promtool check metrics` on `text`; promtool must be installed
/// (`cargo xtask setup` installs Debian's prometheus package).
fn promtool(text: &str, dir: &Path) {
    let path = dir.join("metrics.txt");
    std::fs::write(&path, text).unwrap();
    let output = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool runs (package prometheus; cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Bytes with no zero 4 KiB block, so nbdcopy writes every one of them.
fn payload() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..EXPORT)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state as u8) | 1
        })
        .collect()
}

#[test]
fn counters_move_by_what_nbdcopy_did_and_promtool_accepts_them() -> Result<(), HarnessError> {
    let name = "metrics_nbdcopy";
    let mut machine = appliance(name)?;
    let dir = run_dir(name);
    let (status, before) = get(&machine, "/metrics");
    assert_eq!(status, 200, "{before}");
    promtool(&before, &dir);
    assert!(before.contains("daxbox_pmem_devices 1\n"), "{before}");
    assert!(
        before.contains("daxbox_daxfs_files{device=\"pmem0\"} 1\n"),
        "{before}"
    );

    let source = dir.join("source.bin");
    let copy = dir.join("copy.bin");
    let data = payload();
    std::fs::write(&source, &data).unwrap();
    let export = uri(machine.nbd_port(), "disk1");
    run_tool_ok("nbdcopy", &[source.to_str().unwrap(), &export], BULK);
    run_tool_ok("nbdcopy", &[&export, copy.to_str().unwrap()], BULK);
    assert!(
        std::fs::read(&copy).unwrap() == data,
        "nbdcopy read back other bytes"
    );

    let (status, after) = get(&machine, "/metrics");
    assert_eq!(status, 200);
    promtool(&after, &dir);
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    let bytes = |op: &str| {
        delta(&format!(
            "daxbox_nbd_bytes_total{{export=\"disk1\",op=\"{op}\"}}"
        ))
    };
    assert_eq!(bytes("write"), EXPORT as f64, "{after}");
    assert_eq!(bytes("read"), EXPORT as f64, "{after}");
    let requests = |op: &str| {
        delta(&format!(
            "daxbox_nbd_requests_total{{export=\"disk1\",op=\"{op}\"}}"
        ))
    };
    assert!(
        requests("write") >= 1.0 && requests("read") >= 1.0,
        "{after}"
    );
    assert_eq!(
        delta("daxbox_nbd_errors_total{export=\"disk1\",op=\"write\"}"),
        0.0
    );
    // Every answered request is in the latency histogram.
    for op in ["read", "write"] {
        let counted = delta(&format!(
            "daxbox_nbd_request_duration_seconds_count{{op=\"{op}\"}}"
        ));
        let inf = delta(&format!(
            "daxbox_nbd_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}}"
        ));
        assert_eq!(counted, requests(op), "{op}");
        assert_eq!(inf, counted, "{op}");
    }
    assert!(delta("daxbox_net_packets_total{direction=\"rx\"}") > 1000.0);
    assert!(delta("daxbox_net_interrupts_total") > 0.0);
    assert!(delta("daxbox_net_virtio_notify_seconds_total") > 0.0);
    assert!(delta("daxbox_tcp_connections_accepted_total{service=\"nbd\"}") >= 2.0);
    assert!(delta("daxbox_http_requests_total{class=\"2xx\"}") >= 1.0);

    // The JSON summary names the device and the export.
    let (status, json) = get(&machine, "/api/stats");
    assert_eq!(status, 200);
    assert!(json.contains("\"name\":\"pmem0\""), "{json}");
    assert!(json.contains("\"exports\":[\"disk1\"]"), "{json}");
    // Unknown paths stay 404.
    assert_eq!(get(&machine, "/nothing").0, 404);

    // Recovery events: a power cut, then the next boot mounts with
    // recovery; fsck runs are counted.
    machine.kill();
    drop(machine);
    let nvdimm = Nvdimm::existing(dir.join("nvdimm0.img"), 256 << 20);
    let mut machine = Machine::boot_to_prompt(options(name, nvdimm))?;
    let fsck = machine.command("fsck")?;
    assert!(fsck.contains("pmem0: fsck: clean"), "{fsck}");
    let (status, after_cut) = get(&machine, "/metrics");
    assert_eq!(status, 200);
    promtool(&after_cut, &dir);
    assert_eq!(
        sample(&after_cut, "daxbox_recovery_unclean_mounts_total"),
        1.0
    );
    assert_eq!(sample(&after_cut, "daxbox_fsck_runs_total"), 1.0);
    assert_eq!(sample(&after_cut, "daxbox_fsck_problems_total"), 0.0);
    assert_eq!(sample(&before, "daxbox_recovery_unclean_mounts_total"), 0.0);
    Ok(())
}

#[test]
fn dashboard_shows_live_data_in_headless_chromium() -> Result<(), HarnessError> {
    let name = "metrics_dashboard";
    let machine = appliance(name)?;
    let dir = run_dir(name);
    let (status, page) = get(&machine, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>daxbox</title>"), "{page}");

    // Traffic while the page polls: nbdcopy in and out, over and over.
    let source = dir.join("source.bin");
    std::fs::write(&source, payload()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        let export = uri(machine.nbd_port(), "disk1");
        let source = source.clone();
        let sink = dir.join("sink.bin");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                run_tool_ok("nbdcopy", &[source.to_str().unwrap(), &export], BULK);
                run_tool_ok("nbdcopy", &[&export, sink.to_str().unwrap()], BULK);
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("http://127.0.0.1:{}/", machine.http_port());
    let profile = dir.join("chromium-profile");
    let chromium = |extra: &[&str]| {
        let output = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
                "--window-size=1280,900",
                "--virtual-time-budget=15000",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium runs (package chromium; cargo xtask setup installs it)");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    let screenshot = dir.join("dashboard.png");
    chromium(&[&format!("--screenshot={}", screenshot.display())]);
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic thread");
    std::fs::write(dir.join("dom.html"), &dom).unwrap();
    assert!(dom.contains("<td>pmem0</td>"), "{dom}");
    assert!(dom.contains("<td>disk1</td>"), "{dom}");
    assert!(dom.contains(">live<"), "the page never got data:\n{dom}");
    let throughput: u64 = dom
        .split_once("id=\"throughput\" hidden=\"\">")
        .and_then(|(_, rest)| rest.split_once('<'))
        .and_then(|(value, _)| value.parse().ok())
        .unwrap_or_else(|| panic!("no throughput figure in:\n{dom}"));
    assert!(throughput > 0, "no throughput shown:\n{dom}");
    assert!(std::fs::metadata(&screenshot)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false));
    Ok(())
}
