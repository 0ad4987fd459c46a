//! The NBD service of the booted appliance: what only a real boot shows.
//!
//! The storage service, the NBD engine and the storage commands are the
//! same code on the host, where `storage/serve/tests/real_clients.rs`
//! tests them with the same clients against `daxbox-serve` in seconds:
//! every option and command, the negative cases, daxfs block status,
//! qemu-io patterns, libnbd strict mode, 256 MiB copies, pipelining. What
//! stays here needs the kernel: clients reaching the appliance through
//! virtio-net and smoltcp (nbdinfo, nbdcopy with a compare, fio over 4
//! connections), a raw export of a real NVDIMM, the read-only policy read
//! from the boot config, handshake timeouts and the linger of a half-closed
//! client driven by the kernel's timer, 64 clients at once against the
//! kernel listener's limits, the shell's `nbd` counters, and a power cut
//! (SIGKILL of QEMU) that must keep every write acknowledged after FLUSH or
//! FUA, on a daxfs file and on the raw device.
//!
//! One test, two boots (the power cut needs the second): the first boot
//! starts the slow waits (linger, timeouts) and runs everything else while
//! they run. Every assertion names its check; a missing client tool fails
//! the test (`run_tool` panics), it never skips. Waits scale with
//! [`load_factor`].
//!
//! Protocol references are to NBD proto.md
//! (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{
    deep_pipeline, fio, fio_args, fresh_client_works, pipelined_writes_then_reads, run_tool,
    run_tool_ok, slow_reader, test_image, uri, RawClient, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE,
    EPERM, IHAVEOPT, OPT_GO,
};
use daxbox_tests::{run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;

/// Per-call limits for client tools: generous for TCG, but bounded.
const QUICK: Duration = Duration::from_secs(60);
const BULK: Duration = Duration::from_secs(240);

/// The kernel's handshake timeout (`ServerConfig::default`, 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the kernel keeps a client that sent `NBD_CMD_DISC` but never
/// closed its end (`daxbox_storage::nbd::LINGER_MS`).
const LINGER: Duration = Duration::from_secs(20);

/// `limit` stretched by the host's load (see [`load_factor`]).
/// Boot options: BIOS, `nvdimm0` (256 MiB, daxfs formatted when blank) and
/// `nvdimm1` (64 MiB, exported raw as `pmem1`), plus `readonly=ro`.
fn appliance(name: &str, fresh: bool) -> QemuOptions {
    let nvdimm = |index: usize, size: u64| {
        let path = run_dir(name).join(format!("nvdimm{index}.img"));
        if fresh {
            Nvdimm::fresh(path, size)
        } else {
            Nvdimm::existing(path, size)
        }
    };
    let mut options = QemuOptions::new(name, Firmware::Bios)
        // 64 clients plus a stalled, a slow and a fresh one, all from
        // 10.0.2.2 (QEMU's user network): over the per-address default.
        .with_boot_config(
            "format=if-blank\nexport_raw=pmem1\nreadonly=ro\n\
             nbd_max_connections=80\nnbd_max_per_address=80\n",
        )
        .with_nvdimm(nvdimm(0, 256 * MIB))
        .with_nvdimm(nvdimm(1, 64 * MIB));
    options.max_runtime = Duration::from_secs(540);
    options
}

/// Runs a shell command that must not report an error.
fn shell(machine: &mut Machine, command: &str) -> Result<String, HarnessError> {
    let output = machine.command(command)?;
    assert!(
        !output.to_lowercase().contains("error") && !output.contains("usage:"),
        "shell `{command}` failed:\n{output}"
    );
    Ok(output)
}

/// Waits until the NBD server completes a handshake (the forwarded port
/// accepts before the guest listens, so readiness is an exchange).
fn wait_nbd(port: u16) {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        let output = run_tool("nbdinfo", &["--list", &uri(port, "")], QUICK);
        if output.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the NBD server never answered nbdinfo --list: {}",
            output.stderr
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// Records the time since `lap` under `label` and restarts `lap`.
fn mark(timings: &mut Vec<String>, label: &str, lap: &mut Instant) {
    timings.push(format!("{label}: {:.1} s", lap.elapsed().as_secs_f64()));
    *lap = Instant::now();
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("run folders have UTF-8 paths")
}

/// The fio job of the power cut: 16 MiB of 4 KiB random writes with a
/// fixed seed, so the same job after the reboot knows what to verify.
const POWER_CUT_JOB: [&str; 4] = ["--bs=4k", "--size=16M", "--iodepth=16", "--randseed=4242"];

/// Connections that must be closed by the handshake timeout: one idle
/// after the greeting, one that announced far more option data than it
/// sent. Returns once both were closed (and checks not too early).
fn handshake_timeouts(port: u16) {
    let idle = thread::spawn(move || {
        let mut client = RawClient::connect(port);
        client.greeting();
        let started = Instant::now();
        client.expect_closed(scaled(HANDSHAKE_TIMEOUT * 2), "idle handshake");
        started.elapsed()
    });
    let mut client = RawClient::start(port);
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&OPT_GO.to_be_bytes());
    header.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    header.extend_from_slice(b"short");
    client.send(&header);
    let started = Instant::now();
    client.expect_closed(
        scaled(HANDSHAKE_TIMEOUT * 2),
        "option length far over what was sent",
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8),
        "option length over what was sent: closed after {waited:?}, before the timeout"
    );
    let idle = idle.join().expect("idle handshake thread");
    assert!(
        idle >= Duration::from_secs(8),
        "idle handshake closed after {idle:?}, before the timeout"
    );
    eprintln!(
        "nbd: handshake timeouts closed the idle client after {:.1} s, the short option after {:.1} s",
        idle.as_secs_f64(),
        waited.as_secs_f64()
    );
}

/// 64 connections at once with 160 requests in flight each, one with 1024
/// in flight, while a client that never reads its 32 MiB reply stays
/// connected.
fn many_clients_and_pipelines(port: u16) -> Duration {
    let started = Instant::now();
    let mut stalled = RawClient::start(port);
    stalled.go("disk");
    stalled.request(CMD_READ, 1, 0, 32 << 20, &[]);
    // And one that reads its 8 MiB reply slowly (64 KiB every 20 ms).
    let slow = slow_reader(port, "disk");

    let mut clients: Vec<RawClient> = (0..64).map(|_| RawClient::start(port)).collect();
    for client in &mut clients {
        client.go("disk");
    }
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            thread::spawn(move || {
                // 16 MiB / 64 clients = 256 KiB each: 64 distinct 4 KiB
                // blocks, read back 96 times.
                pipelined_writes_then_reads(client, index, index as u64 * (256 << 10), 64, 96);
            })
        })
        .collect();
    for (index, handle) in handles.into_iter().enumerate() {
        if handle.join().is_err() {
            panic!("64 concurrent clients: client {index} failed (see its panic above)");
        }
    }

    // One connection, 1024 reads in flight, sent in one go.
    deep_pipeline(port, "disk");
    let elapsed = started.elapsed();

    // Everyone else was served while the stalled client never read; it
    // still gets its reply when it finally reads.
    fresh_client_works(port, "64 clients, deep pipeline, stalled client");
    if let Err(panic) = slow.join() {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(stalled.simple(), (0, 1), "stalled client: 32 MiB read");
    stalled.read_bytes(1 << 20);
    stalled.stream.shutdown(std::net::Shutdown::Both).ok();
    elapsed
}

/// Runs `nbd` until it lists `count` connections or `deadline` passes;
/// returns the last listing.
fn wait_connections(
    machine: &mut Machine,
    count: usize,
    deadline: Instant,
) -> Result<String, HarnessError> {
    let wanted = format!("\n{count} connection(s)");
    loop {
        let status = machine.command("nbd")?;
        if status.contains(&wanted) || Instant::now() >= deadline {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Real clients through virtio-net, the raw and read-only exports, the
/// kernel's timeouts, listener limits and counters, then a power cut after
/// flushed writes and a reboot that must find them.
#[test]
fn appliance_clients_limits_timeouts_counters_and_power_cut() -> Result<(), HarnessError> {
    const NAME: &str = "nbd_appliance";
    let started = Instant::now();
    let mut options = appliance(NAME, true);
    if std::env::var_os("DAXBOX_NBD_PCAP").is_some() {
        // Debugging aid: the guest's traffic as QEMU sees it.
        let dump = format!(
            "filter-dump,id=dump0,netdev=n0,file={}",
            run_dir(NAME).join("net.pcap").display()
        );
        options = options.with_extra_args(["-object".to_string(), dump]);
    }
    let mut machine = Machine::boot_to_prompt(options)?;
    let port = machine.nbd_port();
    for (file, size) in [("disk", "64M"), ("ro", "1M"), ("crash", "16M")] {
        shell(&mut machine, &format!("create {file} {size}"))?;
    }
    shell(&mut machine, "write ro 0 readonly-content")?;
    wait_nbd(port);
    let mut timings = vec![format!(
        "boot + create: {:.1} s",
        started.elapsed().as_secs_f64()
    )];
    let mut lap = Instant::now();

    // The slow waits start first and run under everything else. A client
    // that sends NBD_CMD_DISC and never closes its end: the server closes
    // its side at once and must drop the connection after the linger
    // (checked with the counters below).
    let mut lingering = RawClient::start(port);
    lingering.go("disk");
    lingering.request(CMD_DISC, 1, 0, 0, &[]);
    lingering.expect_closed(scaled(Duration::from_secs(10)), "NBD_CMD_DISC");
    let lingering_since = Instant::now();
    let timeouts = thread::spawn(move || handshake_timeouts(port));

    // --- exports as the boot config and the shell made them ---
    let list = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    for export in ["disk", "ro", "crash", "pmem1"] {
        assert!(
            list.contains(&format!("export=\"{export}\"")),
            "nbdinfo --list must name export {export}:\n{list}"
        );
    }
    assert!(
        !list.contains("export=\"pmem0\""),
        "a mounted device is no export:\n{list}"
    );

    // --- readonly=ro from the boot config ---
    let output = run_tool("nbdinfo", &["--is", "read-only", &uri(port, "ro")], QUICK);
    assert_eq!(
        output.code,
        Some(0),
        "ro must advertise read-only: {}",
        output.stderr
    );
    let mut client = RawClient::start(port);
    let (_, flags) = client.go("ro");
    assert_eq!(flags & 2, 2, "ro advertises NBD_FLAG_READ_ONLY");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (EPERM, 1), "write to a read-only export");
    client.request(CMD_READ, 2, 0, 16, &[]);
    assert_eq!(client.simple(), (0, 2), "read from a read-only export");
    assert_eq!(
        client.read_bytes(16),
        b"readonly-content",
        "ro unchanged after the refused write"
    );
    client.request(CMD_DISC, 3, 0, 0, &[]);
    client.expect_closed(scaled(Duration::from_secs(10)), "ro: NBD_CMD_DISC");
    drop(client);
    mark(&mut timings, "list + read-only", &mut lap);

    // --- the raw NVDIMM: nbdcopy in and out, compared ---
    let work = run_dir(NAME);
    let raw_source = work.join("raw-source.img");
    let raw_copy = work.join("raw-copy.img");
    let raw_image = test_image(64 << 20, 1);
    std::fs::write(&raw_source, &raw_image).expect("writing the raw source image");
    let raw = uri(port, "pmem1");
    run_tool_ok("nbdcopy", &[path_text(&raw_source), &raw], BULK);
    run_tool_ok("nbdcopy", &[&raw, path_text(&raw_copy)], BULK);
    let back = std::fs::read(&raw_copy).expect("reading the raw copy");
    assert_eq!(back.len(), raw_image.len(), "raw export: length read back");
    assert!(
        back == raw_image,
        "raw export: data read back differs from data written"
    );
    let out = run_tool_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            path_text(&raw_source),
            &raw,
        ],
        BULK,
    );
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare of the raw export: {out}"
    );
    let _ = std::fs::remove_file(&raw_source);
    let _ = std::fs::remove_file(&raw_copy);
    mark(
        &mut timings,
        "raw export: 64 MiB nbdcopy in and out + qemu-img compare",
        &mut lap,
    );

    // --- fio crc32c verify over 4 connections to a daxfs file ---
    fio(
        &uri(port, "disk"),
        "four",
        &[
            "--bs=64k",
            "--size=16M",
            "--offset_increment=16M",
            "--numjobs=4",
            "--iodepth=16",
        ],
        4,
        BULK,
        "fio 4 connections",
    );
    mark(&mut timings, "fio verify, 4 connections", &mut lap);

    // --- handshake timeouts (started above) ---
    if timeouts.join().is_err() {
        // Show the server's view of the connections next to the failure.
        let nbd = machine.command("nbd")?;
        let net = machine.command("net")?;
        panic!("handshake timeouts failed (see above); the appliance says:\n{nbd}\n{net}");
    }
    mark(&mut timings, "handshake timeouts (rest of)", &mut lap);

    // --- 64 clients at once against the listener's limits ---
    let concurrency = many_clients_and_pipelines(port);
    timings.push(format!(
        "64 clients + pipelines: {:.1} s",
        concurrency.as_secs_f64()
    ));
    lap = Instant::now();

    // --- the writes the power cut must not lose ---
    let crash = uri(port, "crash");
    let mut write_job = POWER_CUT_JOB.to_vec();
    write_job.extend(["--do_verify=0", "--end_fsync=1"]);
    fio(
        &crash,
        "powercut",
        &write_job,
        1,
        BULK,
        "fio writes before the power cut",
    );
    // The raw device too: a pattern written with FUA, then an explicit flush.
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &raw,
            "-c",
            "write -f -P 0x3c 1M 1M",
            "-c",
            "flush",
        ],
        QUICK,
    );
    mark(&mut timings, "power cut writes", &mut lap);

    // --- the shell's `nbd` counters, and the linger ---
    let mut client = RawClient::start(port);
    client.go("disk");
    let data = vec![0x5au8; 4096];
    client.request(CMD_WRITE, 1, 0, 4096, &data);
    assert_eq!(client.simple(), (0, 1), "counters: write");
    client.request(CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(client.simple(), (0, 2), "counters: flush");
    client.request(CMD_READ, 3, 0, 4096, &[]);
    assert_eq!(client.simple(), (0, 3), "counters: read");
    assert_eq!(client.read_bytes(4096), data, "counters: data");
    // Clients that hung up earlier leave the list once their close
    // handshake through QEMU's user network is done; the one that never
    // closed its end leaves after the server's linger.
    let status = wait_connections(&mut machine, 1, lingering_since + scaled(LINGER * 2))?;
    let lingered = lingering_since.elapsed();
    drop(lingering);
    assert!(
        lingered >= LINGER - Duration::from_secs(2),
        "the half-closed client was dropped {lingered:?} after its DISC, before the linger"
    );
    timings.push(format!(
        "the half-closed client was dropped {:.1} s after its DISC",
        lingered.as_secs_f64()
    ));
    // Bytes in: flags 4 + GO 26 + WRITE 28+4096 + FLUSH 28 + READ 28.
    let line = status
        .lines()
        .find(|line| line.contains(" disk: "))
        .unwrap_or_else(|| panic!("`nbd` must list the connected client:\n{status}"));
    assert!(
        line.contains("3 requests (0 errors), 4210 bytes in")
            && line.contains("read 4096 written 4096"),
        "`nbd` counters of the connected client: {line}\n{status}"
    );
    assert!(
        status.contains("1 connection(s)"),
        "exactly the one client is connected:\n{status}"
    );
    assert!(
        status.contains("export ro (read-only)"),
        "`nbd` lists ro as read-only:\n{status}"
    );
    assert!(
        status.contains("export pmem1"),
        "`nbd` lists the raw export:\n{status}"
    );
    client.request(CMD_DISC, 4, 0, 0, &[]);
    client.expect_closed(scaled(Duration::from_secs(10)), "counters: disconnect");
    drop(client);
    let after = wait_connections(
        &mut machine,
        0,
        Instant::now() + scaled(Duration::from_secs(10)),
    )?;
    assert!(
        after.contains("0 connection(s)"),
        "the client is gone from `nbd`:\n{after}"
    );
    mark(&mut timings, "counters (waiting for the linger)", &mut lap);

    // --- power cut: SIGKILL, reboot, everything flushed is there ---
    machine.kill();
    drop(machine);
    let reboot = Instant::now();
    let mut machine = Machine::boot_to_prompt(appliance(NAME, false))?;
    let port = machine.nbd_port();
    wait_nbd(port);
    timings.push(format!("reboot: {:.1} s", reboot.elapsed().as_secs_f64()));
    lap = Instant::now();
    let crash = uri(port, "crash");
    let mut verify_job = POWER_CUT_JOB.to_vec();
    verify_job.push("--verify_only");
    fio(
        &crash,
        "powercut",
        &verify_job,
        1,
        BULK,
        "fio --verify_only after the power cut and reboot",
    );
    let out = run_tool_ok(
        "qemu-io",
        &["-f", "raw", &uri(port, "pmem1"), "-c", "read -P 0x3c 1M 1M"],
        QUICK,
    );
    assert!(
        out.contains("read 1048576/1048576") && !out.contains("Pattern verification failed"),
        "raw export: the flushed pattern survives the power cut:\n{out}"
    );
    // The verification can fail: different data at the same place must be
    // caught by the same fio check.
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &crash, "-c", "write -P 0x00 0 16M"],
        QUICK,
    );
    let args = fio_args(&crash, "powercut", &verify_job);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_tool("fio", &refs, BULK);
    assert!(
        !output.success(),
        "fio --verify_only must fail on overwritten data:\n{}",
        output.stdout
    );
    let fsck = machine.command("fsck")?;
    assert!(
        fsck.contains("fsck: clean") && !fsck.to_lowercase().contains("error"),
        "fsck after the power cut:\n{fsck}"
    );
    mark(&mut timings, "verify after the power cut", &mut lap);

    eprintln!(
        "nbd appliance, total {:.1} s:\n  {}",
        started.elapsed().as_secs_f64(),
        timings.join("\n  ")
    );
    Ok(())
}
