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
    fio, idle_pass_gathers_a_rewritten_chunk, run_tool, run_tool_ok, test_image, uri,
};
use daxbox_tests::{run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

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

/// Idle-time compaction (issue 17) in the kernel's event loop, the scenario
/// shared with daxbox-serve
/// (`daxbox_tests::nbd_client::idle_pass_gathers_a_rewritten_chunk`): a
/// partly rewritten chunk of a clone is gathered with no `compact`.
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
    idle_pass_gathers_a_rewritten_chunk(
        port,
        &mut |line| shell(&mut machine, line).expect("storage shell command"),
        quick,
    );
    Ok(())
}
