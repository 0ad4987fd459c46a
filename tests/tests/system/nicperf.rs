//! The NIC data path's costs per MiB (issue 14): not a pass/fail test but
//! a measurement, `#[ignore]`d so the suite never runs it. Run it by hand:
//!
//! ```text
//! DAXBOX_NICPERF_QEMU='-global virtio-net-pci.event_idx=off' \
//!   DAXBOX_KERNEL=... DAXBOX_BOOT_TOOL=... \
//!   cargo test -p daxbox-tests --test system nicperf -- --ignored --nocapture
//! ```
//!
//! It boots the appliance with `-cpu max` (the issue's QEMU line) plus the
//! words of `DAXBOX_NICPERF_QEMU`, exports a 64 MiB NVDIMM raw, copies
//! all of it there and back with nbdcopy, then writes and reads it with fio
//! (256 KiB, QD8, the bench's sequential rows), and prints MB/s and, per
//! MiB moved, the virtio notifies, NIC interrupts and network polls the
//! kernel's `net` command counted, the frames per busy poll, and the
//! share of the time between the counter readings the guest was not
//! halted (the `cpu` command; it includes time the host did not run the
//! vCPU, and for fio the client's start). The only
//! assertions are that the copies succeed and the data read back is what
//! was written.

use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{run_tool_ok, terse, test_image, uri};
use daxbox_tests::{run_dir, Firmware, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;
const COPY: u64 = 64 * MIB;
const BULK: Duration = Duration::from_secs(600);

/// The counters of one `net` output.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    interrupts: u64,
    rx_notifies: u64,
    tx_notifies: u64,
    notify_us: u64,
    polls: u64,
    rx_frames: u64,
    rx_polls: u64,
    tx_frames: u64,
    tx_polls: u64,
    /// Guest time not halted (the `cpu` command), in ms.
    busy_ms: u64,
}

/// The number after `key=` in the `nic counters:` line of `net`.
fn value(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|line| line.contains("nic counters:"))
        .unwrap_or_else(|| panic!("no `nic counters:` line in `net` output:\n{text}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no `{key}=` in: {line}"))
}

/// The busy milliseconds of a `cpu` output line (`... busy N ms (...`).
fn busy_ms(text: &str) -> u64 {
    text.split_once("busy ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `busy N ms` in `cpu` output:\n{text}"))
}

fn counts(machine: &mut Machine) -> Counts {
    let cpu = machine.command("cpu").expect("cpu command");
    let text = machine.command("net").expect("net command");
    Counts {
        busy_ms: busy_ms(&cpu),
        interrupts: value(&text, "interrupts"),
        rx_notifies: value(&text, "rx_notifies"),
        tx_notifies: value(&text, "tx_notifies"),
        notify_us: value(&text, "notify_us"),
        polls: value(&text, "polls"),
        rx_frames: value(&text, "rx_frames"),
        rx_polls: value(&text, "rx_polls"),
        tx_frames: value(&text, "tx_frames"),
        tx_polls: value(&text, "tx_polls"),
    }
}

/// Prints one row: `mb_s` is the transfer rate (the client's own figure
/// when it has one); per-MiB counts over `bytes`; the busy share over
/// `elapsed`, the time between the two counter readings.
fn report(what: &str, mb_s: f64, bytes: u64, elapsed: Duration, before: Counts, after: Counts) {
    let mib = bytes as f64 / MIB as f64;
    let per = |a: u64, b: u64| (b - a) as f64 / mib;
    let mean = |frames: u64, polls: u64| frames as f64 / polls.max(1) as f64;
    println!(
        "nicperf {what}: {:.1} MB/s; per MiB: rx notifies {:.1}, tx notifies {:.1}, \
         time in notifies {:.0} us, interrupts {:.1}, polls {:.1}; frames per busy poll: \
         rx {:.2} tx {:.2}; guest not halted {:.0}% of the time",
        mb_s,
        per(before.rx_notifies, after.rx_notifies),
        per(before.tx_notifies, after.tx_notifies),
        per(before.notify_us, after.notify_us),
        per(before.interrupts, after.interrupts),
        per(before.polls, after.polls),
        mean(
            after.rx_frames - before.rx_frames,
            after.rx_polls - before.rx_polls
        ),
        mean(
            after.tx_frames - before.tx_frames,
            after.tx_polls - before.tx_polls
        ),
        100.0 * (after.busy_ms - before.busy_ms) as f64 / elapsed.as_millis().max(1) as f64,
    );
}

#[test]
#[ignore = "a measurement: run by hand (see the module documentation)"]
fn nbdcopy_costs_per_mib() {
    let name = "nicperf";
    let extra: Vec<String> = std::env::var("DAXBOX_NICPERF_QEMU")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    // A fresh image of exactly COPY bytes (a larger one left by an earlier
    // run would be used at its size).
    let _ = std::fs::remove_file(run_dir(name).join("nvdimm0.img"));
    let mut options = QemuOptions::new(name, Firmware::Bios)
        .with_boot_config("export_raw=pmem0\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(name).join("nvdimm0.img"), COPY))
        .with_extra_args(["-cpu", "max"])
        .with_extra_args(extra);
    options.max_runtime = Duration::from_secs(900);
    let mut machine = Machine::boot_to_prompt(options).expect("boot");
    println!("nicperf: {}", machine.command_line());
    let port = machine.nbd_port();
    let target = uri(port, "pmem0");
    let source = run_dir(name).join("source.img");
    std::fs::write(&source, test_image(COPY as usize, 14)).expect("source image");
    let copy = run_dir(name).join("copy.img");

    let start = counts(&mut machine);
    let started = Instant::now();
    run_tool_ok(
        "nbdcopy",
        &["--flush", source.to_str().unwrap(), &target],
        BULK,
    );
    let wrote = started.elapsed();
    let written = counts(&mut machine);
    let rate = |elapsed: Duration| COPY as f64 / 1e6 / elapsed.as_secs_f64();
    report("write 64 MiB", rate(wrote), COPY, wrote, start, written);
    let started = Instant::now();
    run_tool_ok(
        "nbdcopy",
        &["--no-extents", &target, copy.to_str().unwrap()],
        BULK,
    );
    let read = started.elapsed();
    let done = counts(&mut machine);
    report("read 64 MiB", rate(read), COPY, read, written, done);
    for rw in ["write", "read"] {
        let before = counts(&mut machine);
        let started = Instant::now();
        let output = run_tool_ok(
            "fio",
            &[
                &format!("--name=nicperf-{rw}"),
                "--ioengine=nbd",
                &format!("--uri={target}"),
                &format!("--rw={rw}"),
                "--bs=256k",
                "--iodepth=8",
                &format!("--size={COPY}"),
                "--output-format=terse",
                "--terse-version=3",
            ],
            BULK,
        );
        let took = started.elapsed();
        let after = counts(&mut machine);
        // fio's own bandwidth: the process's start and connect are not in it.
        let kib_s = terse::kib_per_s(&output, rw == "write")
            .unwrap_or_else(|| panic!("no terse v3 line in fio's output:\n{output}"));
        let what = format!("fio 256 KiB QD8 {rw}");
        report(&what, kib_s * 1024.0 / 1e6, COPY, took, before, after);
    }
    let same = std::fs::read(&source).unwrap() == std::fs::read(&copy).unwrap();
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(&copy);
    assert!(same, "the data read back differs from what was written");
}
