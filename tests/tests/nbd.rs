//! The NBD service of the booted appliance, as clients see it.
//!
//! Real clients (nbdinfo, nbdcopy, nbdsh, qemu-img, qemu-io, fio with its
//! `nbd` engine) talk to the kernel's NBD server through QEMU's forwarded
//! port; a raw-socket client sends what real clients never would. Each
//! `#[test]` boots one appliance and runs several checks on it (boots are
//! the expensive part under TCG); every assertion names its check. A
//! missing client tool fails the test (`run_tool` panics), it never skips.
//!
//! Protocol references are to NBD proto.md
//! (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{
    go_data, request_bytes, run_tool, run_tool_ok, test_image, uri, RawClient, CMD_DISC, CMD_FLUSH,
    CMD_READ, CMD_TRIM, CMD_WRITE, EINVAL, ENOSPC, EPERM, IHAVEOPT, OPT_EXPORT_NAME, OPT_GO,
    OPT_LIST, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN,
    REP_ERR_UNSUP, REP_SERVER,
};
use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Per-call limits for client tools: generous for TCG, but bounded.
const QUICK: Duration = Duration::from_secs(60);
const BULK: Duration = Duration::from_secs(240);

/// The kernel's handshake timeout (`ServerConfig::default`, 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Boot options: BIOS, `nvdimm0` (1 GiB, daxfs formatted when blank) and
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
        .with_boot_config("format=if-blank\nexport_raw=pmem1\nreadonly=ro\n")
        .with_nvdimm(nvdimm(0, GIB))
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
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// `nbdinfo --map` rows as (offset, length, type).
fn map_rows(map: &str) -> Vec<(u64, u64, u32)> {
    map.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |index: usize| -> u64 {
                fields
                    .get(index)
                    .and_then(|field| field.parse().ok())
                    .unwrap_or_else(|| panic!("unparsable nbdinfo --map line {line:?}"))
            };
            (number(0), number(1), number(2) as u32)
        })
        .collect()
}

/// Runs an nbdsh script that prints `ok` at its end.
fn nbdsh(script: &str, what: &str) {
    let output = run_tool("nbdsh", &["-c", script], QUICK);
    assert!(
        output.success() && output.stdout.contains("nbdsh script ok"),
        "{what}: nbdsh failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
}

/// fio with the nbd engine, random writes verified with crc32c; returns
/// the terse output after checking every job's error field is 0.
fn fio(uri: &str, name: &str, extra: &[&str], jobs: usize, what: &str) -> String {
    let mut args = vec![
        format!("--name={name}"),
        "--ioengine=nbd".to_string(),
        format!("--uri={uri}"),
        "--rw=randwrite".to_string(),
        "--verify=crc32c".to_string(),
        "--verify_fatal=1".to_string(),
        "--output-format=terse".to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_tool("fio", &refs, BULK);
    assert!(
        output.success(),
        "{what}: fio failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.code,
        output.stdout,
        output.stderr
    );
    // Terse format: field 5 is the job's error code.
    let lines: Vec<&str> = output
        .stdout
        .lines()
        .filter(|line| line.contains(';'))
        .collect();
    assert_eq!(
        lines.len(),
        jobs,
        "{what}: one terse line per job\n{}",
        output.stdout
    );
    for line in lines {
        assert_eq!(
            line.split(';').nth(4),
            Some("0"),
            "{what}: job error\n{line}"
        );
    }
    output.stdout
}

/// Records the time since `lap` under `label` and restarts `lap`.
fn mark(timings: &mut Vec<String>, label: &str, lap: &mut Instant) {
    timings.push(format!("{label}: {:.1} s", lap.elapsed().as_secs_f64()));
    *lap = Instant::now();
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("run folders have UTF-8 paths")
}

/// Real clients on daxfs-file exports, a raw export and a read-only export,
/// then a power cut (SIGKILL) after written + flushed data and a reboot.
#[test]
fn real_clients_raw_and_readonly_exports_and_power_cut() -> Result<(), HarnessError> {
    const NAME: &str = "nbd_clients";
    let started = Instant::now();
    let mut machine = Machine::boot_to_prompt(appliance(NAME, true))?;
    let port = machine.nbd_port();
    for (file, size) in [
        ("disk", "256M"),
        ("small", "64M"),
        ("ro", "1M"),
        ("fio", "64M"),
        ("crash", "16M"),
        ("strict", "2M"),
        ("tiny", "2M"),
    ] {
        shell(&mut machine, &format!("create {file} {size}"))?;
    }
    shell(&mut machine, "write ro 0 readonly-content")?;
    wait_nbd(port);
    let mut timings = Vec::new();
    let mut lap = Instant::now();

    // --- nbdinfo --list / --json / --map / --can ---
    let list = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    for export in ["disk", "small", "ro", "fio", "crash", "pmem1"] {
        assert!(
            list.contains(&format!("export=\"{export}\"")),
            "nbdinfo --list must name export {export}:\n{list}"
        );
    }
    assert!(
        !list.contains("export=\"pmem0\""),
        "a mounted device is no export:\n{list}"
    );
    assert!(
        list.contains("base:allocation"),
        "nbdinfo --list: meta context\n{list}"
    );

    let json = run_tool_ok("nbdinfo", &["--json", &uri(port, "small")], QUICK);
    for needle in [
        "\"export-size\": 67108864",
        "\"can_fua\": true",
        "\"can_flush\": true",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_fast_zero\": true",
        "\"can_multi_conn\": true",
        "\"is_read_only\": false",
        "\"block_size_maximum\": 33554432",
        "\"structured\": true",
    ] {
        assert!(
            json.contains(needle),
            "nbdinfo --json small: missing {needle} in\n{json}"
        );
    }

    // base:allocation mirrors allocation (proto.md "base:allocation"). A
    // fresh file is one hole; whole 2 MiB chunks written into a large file
    // map as data, a trim punches them back. daxfs allocates large files in
    // 2 MiB chunks and small files (<= 2 MiB) in 4 KiB blocks (FORMAT.md
    // "Allocation policy"), so block-sized holes are checked on a small file.
    let (k, m) = (1024, MIB);
    let small = uri(port, "small");
    let map = run_tool_ok("nbdinfo", &["--map", &small], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, 64 * m, 3)],
        "nbdinfo --map of a fresh file:\n{map}"
    );
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &small,
            "-c",
            "write -P 0x5b 8M 2M",
            "-c",
            "write -P 0x5c 40M 2M",
        ],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &small], QUICK);
    assert_eq!(
        map_rows(&map),
        [
            (0, 8 * m, 3),
            (8 * m, 2 * m, 0),
            (10 * m, 30 * m, 3),
            (40 * m, 2 * m, 0),
            (42 * m, 22 * m, 3)
        ],
        "nbdinfo --map after writing 2 MiB at 8 MiB and at 40 MiB:\n{map}"
    );
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &small, "-c", "discard 8M 2M"],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &small], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, 40 * m, 3), (40 * m, 2 * m, 0), (42 * m, 22 * m, 3)],
        "nbdinfo --map after trimming the chunk at 8 MiB:\n{map}"
    );
    let tiny = uri(port, "tiny");
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &tiny,
            "-c",
            "write -P 0x5a 64k 64k",
            "-c",
            "write -P 0x5d 1M 4k",
        ],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &tiny], QUICK);
    assert_eq!(
        map_rows(&map),
        [
            (0, 64 * k, 3),
            (64 * k, 64 * k, 0),
            (128 * k, m - 128 * k, 3),
            (m, 4 * k, 0),
            (m + 4 * k, m - 4 * k, 3)
        ],
        "nbdinfo --map of a 2 MiB file after writing 64 KiB at 64 KiB and 4 KiB at 1 MiB:\n{map}"
    );
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &tiny, "-c", "discard 64k 64k"],
        QUICK,
    );
    let map = run_tool_ok("nbdinfo", &["--map", &tiny], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, m, 3), (m, 4 * k, 0), (m + 4 * k, m - 4 * k, 3)],
        "nbdinfo --map of the 2 MiB file after trimming the 64 KiB:\n{map}"
    );

    for can in [
        "connect",
        "read",
        "write",
        "flush",
        "fua",
        "trim",
        "zero",
        "fast-zero",
        "cache",
        "multi-conn",
        "df",
    ] {
        let output = run_tool("nbdinfo", &["--can", can, &uri(port, "small")], QUICK);
        assert_eq!(
            output.code,
            Some(0),
            "nbdinfo --can {can} small: {}",
            output.stderr
        );
    }
    for can in ["write", "trim", "zero", "fua"] {
        let output = run_tool("nbdinfo", &["--can", can, &uri(port, "ro")], QUICK);
        assert_eq!(
            output.code,
            Some(2),
            "read-only export must not claim --can {can}: {}",
            output.stderr
        );
    }
    let output = run_tool("nbdinfo", &["--is", "read-only", &uri(port, "ro")], QUICK);
    assert_eq!(
        output.code,
        Some(0),
        "ro must advertise read-only: {}",
        output.stderr
    );
    mark(&mut timings, "nbdinfo checks", &mut lap);

    // --- read-only export: EPERM for every write-type request ---
    nbdsh(
        &format!(
            r#"
import nbd
h = nbd.NBD()
h.connect_uri("{uri}")
assert h.is_read_only(), "ro is read-only"
assert h.pread(16, 0) == b"readonly-content", h.pread(16, 0)
h.set_strict_mode(0)
for name, call in (("write", lambda: h.pwrite(b"x" * 512, 0)),
                   ("trim", lambda: h.trim(4096, 0)),
                   ("zero", lambda: h.zero(4096, 0))):
    try:
        call()
        raise SystemExit(name + " on a read-only export succeeded")
    except nbd.Error as e:
        assert e.errno == "EPERM", (name, e.errno, e.string)
assert h.pread(16, 0) == b"readonly-content"
h.shutdown()
print("nbdsh script ok")
"#,
            uri = uri(port, "ro")
        ),
        "read-only export",
    );
    let cat = machine.command("cat ro 0 16")?;
    assert!(
        cat.contains("readonly-content"),
        "ro unchanged on the appliance:\n{cat}"
    );

    // --- raw export: all data in the map, data round-trips ---
    let map = run_tool_ok("nbdinfo", &["--map", &uri(port, "pmem1")], QUICK);
    assert_eq!(
        map_rows(&map),
        [(0, 64 * MIB, 0)],
        "raw export maps as all data:\n{map}"
    );
    let json = run_tool_ok("nbdinfo", &["--json", &uri(port, "pmem1")], QUICK);
    assert!(
        json.contains("\"export-size\": 67108864"),
        "raw export size:\n{json}"
    );
    let work = run_dir(NAME);
    let raw_source = work.join("raw-source.img");
    let raw_copy = work.join("raw-copy.img");
    let raw_image = test_image(64 << 20, 1);
    std::fs::write(&raw_source, &raw_image).expect("writing the raw source image");
    run_tool_ok(
        "nbdcopy",
        &[path_text(&raw_source), &uri(port, "pmem1")],
        BULK,
    );
    run_tool_ok(
        "nbdcopy",
        &[&uri(port, "pmem1"), path_text(&raw_copy)],
        BULK,
    );
    let back = std::fs::read(&raw_copy).expect("reading the raw copy");
    assert!(
        back == raw_image,
        "raw export: data read back differs from data written"
    );
    mark(
        &mut timings,
        "read-only + raw export (64 MiB nbdcopy in and out)",
        &mut lap,
    );

    // --- 256 MiB nbdcopy round trip + qemu-img compare ---
    let source = work.join("source.img");
    let copy = work.join("copy.img");
    let image = test_image(256 << 20, 2);
    std::fs::write(&source, &image).expect("writing the source image");
    let copy_started = Instant::now();
    run_tool_ok("nbdcopy", &[path_text(&source), &uri(port, "disk")], BULK);
    let copy_in = copy_started.elapsed();
    run_tool_ok("nbdcopy", &[&uri(port, "disk"), path_text(&copy)], BULK);
    let copy_out = copy_started.elapsed() - copy_in;
    timings.push(format!(
        "nbdcopy 256 MiB in {:.1} s ({:.1} MiB/s), out {:.1} s ({:.1} MiB/s)",
        copy_in.as_secs_f64(),
        256.0 / copy_in.as_secs_f64(),
        copy_out.as_secs_f64(),
        256.0 / copy_out.as_secs_f64()
    ));
    let back = std::fs::read(&copy).expect("reading the copy");
    assert_eq!(back.len(), image.len(), "nbdcopy out: length");
    assert!(
        back == image,
        "nbdcopy 256 MiB: data read back differs from data written"
    );
    drop(back);
    let compare = ["compare", "-f", "raw", "-F", "raw", path_text(&source)];
    let disk_uri = uri(port, "disk");
    let mut args = compare.to_vec();
    args.push(&disk_uri);
    let out = run_tool_ok("qemu-img", &args, BULK);
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare: {out}"
    );
    // The comparison can fail: change one block and it must see it.
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &disk_uri, "-c", "write -P 0x11 100M 4k"],
        QUICK,
    );
    let output = run_tool("qemu-img", &args, BULK);
    assert_eq!(
        output.code,
        Some(1),
        "qemu-img compare must see the changed block: {}",
        output.stdout
    );
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(&copy);
    mark(
        &mut timings,
        "256 MiB nbdcopy + 2 x qemu-img compare",
        &mut lap,
    );

    // --- qemu-io patterns: write, read, discard, write-zeroes, aio ---
    let small = uri(port, "small");
    let commands = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -f -P 0xcd 1M 64k",
        "discard 0 64k",
        "read -P 0 0 64k",
        "read -P 0xab 64k 960k",
        "write -z 2M 1M",
        "read -P 0 2M 1M",
        "write -z -u 3M 128k",
        "read -P 0 3M 128k",
        "read -P 0xcd 1M 64k",
        "aio_write -P 0x77 8M 256k",
        "aio_write -P 0x78 9M 256k",
        "aio_flush",
        "read -P 0x77 8M 256k",
        "read -P 0x78 9M 256k",
        "flush",
    ];
    let mut args = vec!["-f", "raw", small.as_str()];
    for command in &commands {
        args.extend(["-c", command]);
    }
    let out = run_tool_ok("qemu-io", &args, QUICK);
    let lower = out.to_lowercase();
    assert!(
        !lower.contains("fail") && !lower.contains("error"),
        "qemu-io patterns:\n{out}"
    );
    assert_eq!(
        out.matches("read ").count(),
        8,
        "qemu-io: every read reported\n{out}"
    );
    let output = run_tool(
        "qemu-io",
        &["-f", "raw", &small, "-c", "read -P 0x99 0 4k"],
        QUICK,
    );
    assert!(
        output.stdout.contains("Pattern verification failed"),
        "qemu-io must detect a wrong pattern: {}",
        output.stdout
    );
    mark(&mut timings, "qemu-io patterns", &mut lap);

    // --- libnbd in strict mode (nbdsh), with and without structured
    // replies: FUA, DF, fast zero, NO_HOLE, trim, cache, flush, block
    // status (also REQ_ONE) and the errors libnbd reports ---
    nbdsh(
        &format!(
            r#"
import nbd, errno
for structured in (True, False):
    h = nbd.NBD()
    h.set_strict_mode(nbd.STRICT_COMMANDS | nbd.STRICT_FLAGS | nbd.STRICT_BOUNDS | nbd.STRICT_ZERO_SIZE)
    h.set_request_structured_replies(structured)
    if structured:
        h.add_meta_context("base:allocation")
    h.connect_uri("{uri}")
    assert h.get_structured_replies_negotiated() == structured
    assert h.can_meta_context("base:allocation") == structured
    assert h.can_df() == structured
    size = h.get_size()
    assert size == 2 << 20, size
    h.pwrite(b"\xaa" * 65536, 0, nbd.CMD_FLAG_FUA)
    h.pwrite(b"\xbb" * 65536, 1 << 20)
    assert h.pread(65536, 0) == b"\xaa" * 65536
    if structured:
        chunks = []
        buf = h.pread_structured(65536, 0, lambda sub, off, status, err: chunks.append((off, len(sub), status)) or 0, nbd.CMD_FLAG_DF)
        assert buf == b"\xaa" * 65536 and chunks == [(0, 65536, nbd.READ_DATA)], chunks
    h.zero(65536, 65536, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
    h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
    assert h.pread(4096, 4096) == bytes(4096)
    assert h.pread(4096, 8192) == b"\xaa" * 4096
    h.trim(65536, 0)
    assert h.pread(65536, 0) == bytes(65536)
    h.cache(65536, 0)
    h.flush()
    if structured:
        seen = []
        h.block_status(size, 0, lambda ctx, off, ents, err: seen.append((ctx, off, list(ents))))
        # A 2 MiB file is allocated block by block (FORMAT.md "Allocation
        # policy"): only the 64 KiB at 1 MiB is still allocated.
        assert seen == [("base:allocation", 0, [1 << 20, 3, 65536, 0, size - (1 << 20) - 65536, 3])], seen
        one = []
        h.block_status(size, 0, lambda ctx, off, ents, err: one.append(list(ents)), nbd.CMD_FLAG_REQ_ONE)
        assert one == [[1 << 20, 3]], one
    h.set_strict_mode(0)
    for call, code in ((lambda: h.pread(4096, size - 100), errno.EINVAL),
                       (lambda: h.pwrite(b"x" * 4096, size - 100), errno.ENOSPC),
                       (lambda: h.pread(64 << 20, 0), errno.EINVAL)):
        try:
            call()
            raise SystemExit("expected an error")
        except nbd.Error as e:
            assert e.errno == errno.errorcode[code], (e.errno, code)
    assert h.pread(4, 1 << 20) == b"\xbb" * 4
    h.shutdown()
print("nbdsh script ok")
"#,
            uri = uri(port, "strict")
        ),
        "libnbd strict-mode checks",
    );
    mark(&mut timings, "nbdsh strict checks", &mut lap);

    // --- fio crc32c verify, 1 and 4 connections ---
    let fio_uri = uri(port, "fio");
    fio(
        &fio_uri,
        "one",
        &["--bs=4k", "--size=16M", "--iodepth=32"],
        1,
        "fio 1 connection",
    );
    fio(
        &fio_uri,
        "four",
        &[
            "--bs=64k",
            "--size=16M",
            "--offset_increment=16M",
            "--numjobs=4",
            "--iodepth=16",
        ],
        4,
        "fio 4 connections",
    );
    mark(&mut timings, "fio verify 1 + 4 connections", &mut lap);

    // --- power cut: written + flushed data survives SIGKILL + reboot ---
    let crash_uri = uri(port, "crash");
    let crash_job = ["--bs=4k", "--size=16M", "--iodepth=16", "--randseed=4242"];
    let mut write_job = crash_job.to_vec();
    write_job.extend(["--do_verify=0", "--end_fsync=1"]);
    fio(
        &crash_uri,
        "powercut",
        &write_job,
        1,
        "fio writes before the power cut",
    );
    // The raw device too: a pattern written with FUA, then an explicit flush.
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri(port, "pmem1"),
            "-c",
            "write -f -P 0x3c 1M 1M",
            "-c",
            "flush",
        ],
        QUICK,
    );
    machine.kill();
    drop(machine);
    let mut machine = Machine::boot_to_prompt(appliance(NAME, false))?;
    let port = machine.nbd_port();
    wait_nbd(port);
    let mut verify_job = crash_job.to_vec();
    verify_job.push("--verify_only");
    fio(
        &uri(port, "crash"),
        "powercut",
        &verify_job,
        1,
        "fio --verify_only after the power cut and reboot",
    );
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &uri(port, "pmem1"), "-c", "read -P 0x3c 1M 1M"],
        QUICK,
    )
    .contains("read 1048576/1048576")
    .then_some(())
    .expect("raw export: the flushed pattern survives the power cut");
    // The verification can fail: different data at the same place must be
    // caught by the same fio check.
    run_tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri(port, "crash"),
            "-c",
            "write -P 0x00 0 16M",
        ],
        QUICK,
    );
    let mut args: Vec<String> = vec![
        "--name=powercut".into(),
        "--ioengine=nbd".into(),
        format!("--uri={}", uri(port, "crash")),
        "--rw=randwrite".into(),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
    ];
    args.extend(verify_job.iter().map(|arg| arg.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_tool("fio", &refs, BULK);
    assert!(
        !output.success(),
        "fio --verify_only must fail on overwritten data:\n{}",
        output.stdout
    );
    let fsck = machine.command("fsck")?;
    assert!(
        !fsck.to_lowercase().contains("error"),
        "fsck after the power cut:\n{fsck}"
    );
    mark(&mut timings, "power cut + reboot + verify", &mut lap);

    let _ = std::fs::remove_file(&raw_source);
    let _ = std::fs::remove_file(&raw_copy);
    eprintln!(
        "nbd real clients, total {:.1} s:\n  {}",
        started.elapsed().as_secs_f64(),
        timings.join("\n  ")
    );
    Ok(())
}

/// A full session must still work: handshake, write, flush, read back,
/// disconnect. `what` names the check that came before.
fn fresh_client_works(port: u16, what: &str) {
    let mut client = RawClient::start(port);
    client.go("disk");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    client.request(CMD_WRITE, 1, 8192, 4096, &data);
    assert_eq!(client.simple(), (0, 1), "fresh client after {what}: write");
    client.request(CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(client.simple(), (0, 2), "fresh client after {what}: flush");
    client.request(CMD_READ, 3, 8192, 4096, &[]);
    assert_eq!(client.simple(), (0, 3), "fresh client after {what}: read");
    assert_eq!(
        client.read_bytes(4096),
        data,
        "fresh client after {what}: data"
    );
    client.request(CMD_DISC, 4, 0, 0, &[]);
    client.expect_closed(
        Duration::from_secs(10),
        &format!("fresh client after {what}: NBD_CMD_DISC"),
    );
}

/// Handshake-phase negative cases (proto.md "Option haggling"): each gets
/// the spec's answer and a fresh client is served afterwards.
fn negative_handshake(port: u16) {
    // Unknown client flags: the server must drop the client.
    let mut client = RawClient::connect(port);
    client.greeting();
    client.send(&0x8000_0001u32.to_be_bytes());
    client.expect_closed(Duration::from_secs(10), "unknown client flags");
    fresh_client_works(port, "unknown client flags");

    // A client without NBD_FLAG_C_FIXED_NEWSTYLE is dropped too.
    let mut client = RawClient::connect(port);
    client.greeting();
    client.send(&0u32.to_be_bytes());
    client.expect_closed(
        Duration::from_secs(10),
        "client flags without fixed newstyle",
    );

    // Bad option magic: hard disconnect.
    let mut client = RawClient::start(port);
    client.send(&[0x42; 16]);
    client.expect_closed(Duration::from_secs(10), "bad option magic");
    fresh_client_works(port, "bad option magic");

    // One connection, many refused options: negotiation goes on after each.
    let mut client = RawClient::start(port);
    client.option(0x1234, b"abc");
    assert_eq!(client.option_reply().1, REP_ERR_UNSUP, "unknown option");
    client.option(OPT_GO, &vec![0u8; 100_000]);
    assert_eq!(
        client.option_reply().1,
        REP_ERR_TOO_BIG,
        "option data over the server's buffer"
    );
    let mut data = go_data("disk");
    data[..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    client.option(OPT_GO, &data);
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "name length far over the option length"
    );
    client.option(OPT_GO, &go_data(&"x".repeat(5000)));
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "overlong export name (> 4096 bytes)"
    );
    client.option(OPT_GO, &go_data("nonexistent"));
    assert_eq!(client.option_reply().1, REP_ERR_UNKNOWN, "unknown export");
    client.option(OPT_GO, &go_data("pmem0"));
    assert_eq!(
        client.option_reply().1,
        REP_ERR_UNKNOWN,
        "a mounted device is no export"
    );
    client.option(OPT_LIST, b"junk");
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "NBD_OPT_LIST with data"
    );
    client.option(OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (option, kind, data) = client.option_reply();
        assert_eq!(option, OPT_LIST, "list reply names its option");
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER, "list entries are NBD_REP_SERVER");
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        names.push(String::from_utf8_lossy(&data[4..4 + len]).into_owned());
    }
    assert!(
        names.contains(&"disk".to_string()) && names.contains(&"ro".to_string()),
        "{names:?}"
    );
    client.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(client.option_reply().1, REP_ACK, "structured replies");
    client.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(
        client.option_reply().1,
        REP_ERR_INVALID,
        "second structured reply option"
    );
    let (size, flags) = client.go("disk");
    assert_eq!(size, 64 * MIB, "disk size after refused options");
    assert_eq!(flags & 1, 1, "NBD_FLAG_HAS_FLAGS");
    assert_eq!(flags & 2, 0, "disk is writable");
    drop(client);

    // NBD_OPT_EXPORT_NAME cannot report errors: overlong or unknown names
    // end the session.
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, "y".repeat(5000).as_bytes());
    client.expect_closed(Duration::from_secs(10), "NBD_OPT_EXPORT_NAME overlong");
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, b"nonexistent");
    client.expect_closed(Duration::from_secs(10), "NBD_OPT_EXPORT_NAME unknown");
    // And a good one answers with size + flags only (NO_ZEROES was sent).
    let mut client = RawClient::start(port);
    client.option(OPT_EXPORT_NAME, b"disk");
    assert_eq!(client.u64(), 64 * MIB, "NBD_OPT_EXPORT_NAME size");
    assert_eq!(client.u16() & 1, 1, "NBD_OPT_EXPORT_NAME flags");
    client.request(CMD_READ, 5, 0, 8, &[]);
    assert_eq!(client.simple(), (0, 5), "no 124 zero bytes after NO_ZEROES");
    client.read_bytes(8);
    drop(client);
    fresh_client_works(port, "refused options");

    // Disconnects at every stage of the handshake and mid-request: client
    // flags, option header, option data, GO, request header, payload.
    let mut script = 3u32.to_be_bytes().to_vec();
    let mut stages = vec![0usize, 2, 4];
    for (option, data) in [
        (OPT_STRUCTURED_REPLY, Vec::new()),
        (OPT_GO, go_data("disk")),
    ] {
        let start = script.len();
        script.extend_from_slice(&IHAVEOPT.to_be_bytes());
        script.extend_from_slice(&option.to_be_bytes());
        script.extend_from_slice(&(data.len() as u32).to_be_bytes());
        script.extend_from_slice(&data);
        stages.extend([start + 5, start + 8, start + 12, start + 14, start + 16]);
        if !data.is_empty() {
            stages.extend([start + 18, start + 16 + data.len() - 1]);
        }
    }
    let handshake = script.len();
    script.extend_from_slice(&request_bytes(CMD_WRITE, 0, 9, 0, 65536));
    script.extend_from_slice(&[0xee; 1000]);
    stages.extend([
        handshake,
        handshake + 10,
        handshake + 27,
        handshake + 28,
        handshake + 500,
        script.len(),
    ]);
    for (index, cut) in stages.into_iter().enumerate() {
        let mut client = RawClient::connect(port);
        if index % 2 == 0 {
            client.greeting();
        }
        client.send_lossy(&script[..cut]);
        drop(client);
    }
    // Mid-reply: a 16 MiB read, hung up after a few bytes of data.
    let mut client = RawClient::start(port);
    client.go("disk");
    client.request(CMD_READ, 1, 0, 16 << 20, &[]);
    assert_eq!(client.simple(), (0, 1), "16 MiB read");
    client.read_bytes(100);
    drop(client);
    fresh_client_works(port, "disconnects at every stage");
}

/// Transmission-phase negative cases (proto.md "Request types" and
/// "Error values").
fn negative_transmission(port: u16) {
    let mut client = RawClient::start(port);
    let (size, _) = client.go("disk");
    client.request(CMD_READ, 1, size - 512, 4096, &[]);
    assert_eq!(client.simple(), (EINVAL, 1), "read past the end");
    client.request(CMD_READ, 2, u64::MAX - 1023, 4096, &[]);
    assert_eq!(
        client.simple(),
        (EINVAL, 2),
        "read with an overflowing offset"
    );
    client.request(CMD_READ, 3, 0, 64 << 20, &[]);
    assert_eq!(
        client.simple(),
        (EINVAL, 3),
        "read over the maximum block size"
    );
    client.request(CMD_WRITE, 4, size - 100, 4096, &[0x33; 4096]);
    assert_eq!(client.simple(), (ENOSPC, 4), "write past the end");
    client.request(CMD_WRITE, 5, u64::MAX - 10, 4096, &[0x33; 4096]);
    assert_eq!(
        client.simple(),
        (ENOSPC, 5),
        "write with an overflowing offset"
    );
    client.request(CMD_TRIM, 6, size - 4096, 8192, &[]);
    assert_eq!(client.simple(), (EINVAL, 6), "trim past the end");
    client.request(77, 7, 0, 512, &[]);
    assert_eq!(client.simple(), (EINVAL, 7), "unknown command");
    client.request(CMD_FLUSH, 8, 4096, 4096, &[]);
    assert_eq!(client.simple(), (EINVAL, 8), "flush with offset/length");
    // The refused writes' payloads were skipped: in sync, export untouched.
    client.request(CMD_READ, 9, size - 100, 100, &[]);
    assert_eq!(client.simple(), (0, 9), "read after refused writes");
    assert_eq!(
        client.read_bytes(100),
        vec![0u8; 100],
        "refused writes left no data"
    );
    // Bad request magic: hard disconnect.
    let mut bad = 0xdead_beefu32.to_be_bytes().to_vec();
    bad.extend_from_slice(&[0; 24]);
    client.send(&bad);
    client.expect_closed(Duration::from_secs(10), "bad request magic");

    let mut client = RawClient::start(port);
    let (_, flags) = client.go("ro");
    assert_eq!(flags & 2, 2, "ro advertises NBD_FLAG_READ_ONLY");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (EPERM, 1), "write to a read-only export");
    client.request(CMD_TRIM, 2, 0, 4096, &[]);
    assert_eq!(client.simple(), (EPERM, 2), "trim on a read-only export");
    client.request(CMD_READ, 3, 0, 512, &[]);
    assert_eq!(client.simple(), (0, 3), "read from a read-only export");
    assert_eq!(
        client.read_bytes(512),
        vec![0u8; 512],
        "refused write left no data"
    );
    drop(client);
    fresh_client_works(port, "transmission errors");
}

/// Connections that must be closed by the handshake timeout: one idle
/// after the greeting, one that announced far more option data than it
/// sent. Returns once both were closed (and checks not too early).
fn handshake_timeouts(port: u16) {
    let idle = thread::spawn(move || {
        let mut client = RawClient::connect(port);
        client.greeting();
        let started = Instant::now();
        client.expect_closed(HANDSHAKE_TIMEOUT * 2, "idle handshake");
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
        HANDSHAKE_TIMEOUT * 2,
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
        "nbd raw: handshake timeouts closed the idle client after {:.1} s, the short option after {:.1} s",
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
    let mut slow = RawClient::start(port);
    slow.go("disk");
    slow.request(CMD_READ, 2, 32 << 20, 8 << 20, &[]);
    let slow = thread::spawn(move || {
        assert_eq!(slow.simple(), (0, 2), "slow client: 8 MiB read");
        for _ in 0..128 {
            slow.read_bytes(64 << 10);
            thread::sleep(Duration::from_millis(20));
        }
        slow.request(CMD_DISC, 3, 0, 0, &[]);
    });

    let mut clients: Vec<RawClient> = (0..64).map(|_| RawClient::start(port)).collect();
    for client in &mut clients {
        client.go("disk");
    }
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, mut client)| {
            thread::spawn(move || {
                // 16 MiB / 64 clients = 256 KiB each: 64 distinct 4 KiB blocks.
                let base = index as u64 * (256 << 10);
                let block = move |i: u64| vec![(index as u8) ^ (i as u8).wrapping_mul(31); 4096];
                let mut reader = client.try_clone();
                let collector = thread::spawn(move || {
                    let mut seen = Vec::new();
                    for _ in 0..64 {
                        let (error, cookie) = reader.simple();
                        assert_eq!(error, 0, "client {index}: pipelined write");
                        seen.push(cookie);
                    }
                    for i in 0..96u64 {
                        let (error, cookie) = reader.simple();
                        assert_eq!(
                            (error, cookie),
                            (0, 1000 + i),
                            "client {index}: pipelined read order"
                        );
                        assert_eq!(
                            reader.read_bytes(4096),
                            block(i % 64),
                            "client {index}: read {i}"
                        );
                    }
                    seen.sort();
                    assert_eq!(
                        seen,
                        (0..64).collect::<Vec<u64>>(),
                        "client {index}: write cookies"
                    );
                });
                let mut batch = Vec::new();
                for i in 0..64u64 {
                    batch.extend_from_slice(&request_bytes(CMD_WRITE, 0, i, base + i * 4096, 4096));
                    batch.extend_from_slice(&block(i));
                }
                for i in 0..96u64 {
                    batch.extend_from_slice(&request_bytes(
                        CMD_READ,
                        0,
                        1000 + i,
                        base + (i % 64) * 4096,
                        4096,
                    ));
                }
                client.send(&batch);
                collector.join().expect("reply collector");
                client.request(CMD_DISC, 0, 0, 0, &[]);
            })
        })
        .collect();
    for (index, handle) in handles.into_iter().enumerate() {
        if handle.join().is_err() {
            panic!("64 concurrent clients: client {index} failed (see its panic above)");
        }
    }

    // One connection, 1024 reads in flight, sent in one go.
    let mut deep = RawClient::start(port);
    deep.go("disk");
    let mut reader = deep.try_clone();
    let collector = thread::spawn(move || {
        for i in 0..1024u64 {
            assert_eq!(reader.simple(), (0, i), "deep pipeline: reply {i} in order");
            reader.read_bytes(512);
        }
    });
    let mut batch = Vec::new();
    for i in 0..1024u64 {
        batch.extend_from_slice(&request_bytes(CMD_READ, 0, i, i * 512, 512));
    }
    deep.send(&batch);
    collector
        .join()
        .expect("1024 requests in flight on one connection");
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

/// Raw-socket negative tests, many clients, pipelining, a stalled client,
/// handshake timeouts, and the shell's `nbd` counters.
#[test]
fn raw_socket_negatives_concurrency_and_counters() -> Result<(), HarnessError> {
    const NAME: &str = "nbd_raw";
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
    shell(&mut machine, "create disk 64M")?;
    shell(&mut machine, "create ro 1M")?;
    wait_nbd(port);

    // A client that sends NBD_CMD_DISC and never closes its end: the
    // server closes its side at once and must drop the connection after a
    // bounded linger (checked with the counters at the end).
    let mut lingering = RawClient::start(port);
    lingering.go("disk");
    lingering.request(CMD_DISC, 1, 0, 0, &[]);
    lingering.expect_closed(Duration::from_secs(10), "NBD_CMD_DISC");
    let lingering_since = Instant::now();

    // The timeouts run while the other cases go on.
    let timeouts = thread::spawn(move || handshake_timeouts(port));
    negative_handshake(port);
    eprintln!(
        "nbd raw: handshake negatives done after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    negative_transmission(port);
    eprintln!(
        "nbd raw: transmission negatives done after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if timeouts.join().is_err() {
        // Show the server's view of the connections next to the failure.
        let nbd = machine.command("nbd")?;
        let net = machine.command("net")?;
        panic!("handshake timeouts failed (see above); the appliance says:\n{nbd}\n{net}");
    }
    let negatives = started.elapsed();
    let concurrency = many_clients_and_pipelines(port);

    // The shell shows a connected client's counters.
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
    // closed its end leaves after the server's linger limit (20 s).
    let status = wait_connections(&mut machine, 1, lingering_since + Duration::from_secs(40))?;
    eprintln!(
        "nbd raw: the half-closed client was dropped {:.1} s after its DISC",
        lingering_since.elapsed().as_secs_f64()
    );
    drop(lingering);
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
    client.expect_closed(Duration::from_secs(10), "counters: disconnect");
    drop(client);
    let after = wait_connections(&mut machine, 0, Instant::now() + Duration::from_secs(10))?;
    assert!(
        after.contains("0 connection(s)"),
        "the client is gone from `nbd`:\n{after}"
    );

    let alive = machine.command("version")?;
    assert!(alive.contains("daxbox"), "the shell still answers: {alive}");
    eprintln!(
        "nbd raw: negatives {:.1} s, 64 clients + pipelines {:.1} s, total {:.1} s",
        negatives.as_secs_f64(),
        concurrency.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
