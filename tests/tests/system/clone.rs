//! Clones over NBD (issue 17): a 256 MiB daxfs file is filled over NBD
//! (nbdcopy of pseudo-random data), cloned over the serial shell, and then
//! `fio` (nbd engine) writes 4 KiB blocks at random offsets of the clone
//! with `verify=crc32c` while nbdcopy reads the original back; the
//! original must still hash (sha256sum) like the source, during and after
//! the writes to its clone, and fio must report no verify error. Clients
//! are real (nbdcopy, fio, sha256sum); a missing tool fails the test.
//!
//! Works with the 2 MiB copy-on-write of today (each chunk the clone first
//! writes is copied whole; the NVDIMM has room for the clone to diverge
//! completely) and with finer-grained copy-on-write later. Waits scale
//! with the host's load.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{
    assert_qemu_io_patterns, fio, run_tool, run_tool_ok, test_image, uri,
};
use daxbox_tests::{
    mappable_percent, run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions,
};

const MIB: u64 = 1 << 20;
const NAME: &str = "clone_nbd";
/// The exported file, and so the clone.
const SIZE: u64 = 256 * MIB;

fn path_text(path: &Path) -> &str {
    path.to_str().expect("run folders have UTF-8 paths")
}

/// Runs a shell command that must succeed; returns its output.
fn shell(machine: &mut Machine, command: &str) -> Result<String, HarnessError> {
    let output = machine.command(command)?;
    assert!(
        !output.contains("error:") && !output.contains("usage:"),
        "shell `{command}` failed:\n{output}"
    );
    Ok(output)
}

/// Waits until the NBD server answers a handshake.
fn wait_nbd(port: u16) {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        let output = run_tool(
            "nbdinfo",
            &["--list", &uri(port, "")],
            Duration::from_secs(60),
        );
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

/// The sha256 of a host file, by `sha256sum`.
fn sha256(path: &Path) -> String {
    let out = run_tool_ok("sha256sum", &[path_text(path)], Duration::from_secs(120));
    out.split_whitespace()
        .next()
        .expect("sha256sum prints the digest first")
        .to_string()
}

/// Copies export `export` to host file `to` (nbdcopy) and returns its sha256.
fn read_back(port: u16, export: &str, to: &Path, limit: Duration) -> String {
    let _ = std::fs::remove_file(to);
    run_tool_ok("nbdcopy", &[&uri(port, export), path_text(to)], limit);
    let len = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, SIZE, "nbdcopy of {export}: length read back");
    sha256(to)
}

#[test]
fn fio_writes_to_a_clone_over_nbd_leave_the_original_unchanged() -> Result<(), HarnessError> {
    let dir = run_dir(NAME);
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        // The file, a clone that may diverge entirely (2 MiB copy-on-write),
        // and room for metadata.
        .with_nvdimm(Nvdimm::fresh(dir.join("nvdimm0.img"), 640 * MIB));
    options.max_runtime = Duration::from_secs(1800);
    let mut machine = Machine::boot_to_prompt(options)?;
    let port = machine.nbd_port();
    shell(&mut machine, "create golden 256M")?;
    wait_nbd(port);
    let bulk = scaled(Duration::from_secs(600));

    // Fill the original over NBD.
    let source = dir.join("source.img");
    std::fs::write(&source, test_image(SIZE as usize, 17)).expect("write the source image");
    let source_sha = sha256(&source);
    run_tool_ok("nbdcopy", &[path_text(&source), &uri(port, "golden")], bulk);

    // Clone it over the shell: the clone is an export at once.
    let output = shell(&mut machine, "clone golden vm1")?;
    assert!(
        output.contains("cloned golden to vm1"),
        "`clone golden vm1` should say so:\n{output}"
    );

    // fio on the clone while the original is read back.
    let clone_uri = uri(port, "vm1");
    let fio_limit = bulk;
    let writer = thread::spawn(move || {
        fio(
            &clone_uri,
            "clone",
            &[
                "--bs=4k",
                "--size=256M",
                "--io_size=16M",
                "--iodepth=16",
                "--randseed=1717",
            ],
            1,
            fio_limit,
            "fio randwrite + crc32c verify on the clone",
        )
    });
    let during = read_back(port, "golden", &dir.join("golden.during.img"), bulk);
    let fio_output = writer.join().expect("the fio thread panicked");
    assert_eq!(
        during, source_sha,
        "the original read while its clone was written differs from the source"
    );
    let after = read_back(port, "golden", &dir.join("golden.after.img"), bulk);
    assert_eq!(
        after, source_sha,
        "the original read after its clone was written differs from the source"
    );
    // The clone did change (fio's writes are there), and is still whole.
    let clone_sha = read_back(port, "vm1", &dir.join("vm1.after.img"), bulk);
    assert_ne!(
        clone_sha, source_sha,
        "fio's writes to the clone are missing"
    );
    let stat = shell(&mut machine, "stat vm1")?;
    println!("fio on the clone (terse): {fio_output}\nstat vm1:\n{stat}");
    for file in [
        "source.img",
        "golden.during.img",
        "golden.after.img",
        "vm1.after.img",
    ] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    Ok(())
}

/// Idle-time compaction (issue 17): a clone rewritten over a quarter of
/// one chunk (below the write-time threshold of half a chunk, so the write
/// itself copies only the blocks it covers) becomes 2 MiB-mappable again
/// without any `compact` command: the kernel's event loop gathers the
/// chunk when it has nothing else to do. `stat` is polled with a
/// deadline; the bytes are checked with qemu-io read patterns.
#[test]
fn the_idle_pass_gathers_a_rewritten_chunk_of_a_clone() -> Result<(), HarnessError> {
    const NAME: &str = "clone_idle_compact";
    let dir = run_dir(NAME);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(Nvdimm::fresh(dir.join("nvdimm0.img"), 128 * MIB));
    let mut machine = Machine::boot_to_prompt(options)?;
    let port = machine.nbd_port();
    shell(&mut machine, "create golden 16M")?;
    wait_nbd(port);
    let quick = scaled(Duration::from_secs(120));
    let golden = uri(port, "golden");
    // Fill all 8 chunks of the original (each 2 MiB write maps a whole
    // aligned chunk).
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &golden, "-c", "write -P 0x11 0 16M"],
        quick,
    );
    shell(&mut machine, "clone golden vm1")?;
    let before = shell(&mut machine, "stat vm1")?;
    assert_eq!(mappable_percent(&before), 100, "a fresh clone:\n{before}");
    // 800 KiB (200 blocks of 512) into chunk 1 of the clone.
    let vm1 = uri(port, "vm1");
    run_tool_ok(
        "qemu-io",
        &["-f", "raw", &vm1, "-c", "write -P 0x5a 2M 800K"],
        quick,
    );
    let first = shell(&mut machine, "stat vm1")?;
    println!("stat vm1 right after the write:\n{first}");
    // No `compact`: wait for the idle pass.
    let deadline = Instant::now() + quick;
    let stat = loop {
        let stat = shell(&mut machine, "stat vm1")?;
        if mappable_percent(&stat) == 100 && stat.contains("gathered 1 chunk(s)") {
            break stat;
        }
        assert!(
            Instant::now() < deadline,
            "the idle pass never gathered chunk 1 of vm1:\n{stat}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    println!("stat vm1 after the idle pass:\n{stat}");
    assert!(
        stat.contains("last pmem0:vm1 chunk 1"),
        "the idle pass names what it gathered:\n{stat}"
    );
    // The clone reads its own bytes, the original its own.
    assert_qemu_io_patterns(
        &[
            (&vm1, "read -P 0x11 0 2M", "vm1 before the rewrite"),
            (&vm1, "read -P 0x5a 2M 800K", "vm1's rewritten range"),
            (&vm1, "read -P 0x11 2848K 13536K", "vm1 after the rewrite"),
            (&golden, "read -P 0x11 0 16M", "the original"),
        ],
        quick,
    );
    let fsck = shell(&mut machine, "fsck")?;
    assert!(fsck.contains("clean"), "fsck after the idle pass:\n{fsck}");
    Ok(())
}
