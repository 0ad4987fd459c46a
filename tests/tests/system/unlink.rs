//! Open-unlink in the booted appliance (issue 18 item 1, FORMAT.md
//! "Orphans"): a real client (nbdsh, libnbd) writes and reads a file that
//! the shell `rm`s half-way; the client succeeds and reads back all it
//! wrote, the name is free at once, and `df` shows the space back after
//! the client disconnects. Then a power cut (SIGKILL of QEMU) while the
//! removed file is still open: the next boot on the same NVDIMM reclaims
//! its space at mount and `fsck` is clean.
//!
//! The client and the test meet through flag files in the run directory:
//! the client creates `ready` after its first half and waits for
//! `removed`; after it has verified everything it creates `verified` and
//! waits for `close`.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::shell;
use daxbox_tests::nbd_client::{run_tool, uri, ToolOutput};
use daxbox_tests::{run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;

/// `df`'s pmem0 line.
fn df_line(machine: &mut Machine) -> Result<String, HarnessError> {
    let df = shell(machine, "df")?;
    Ok(df
        .lines()
        .find(|line| line.starts_with("pmem0 "))
        .unwrap_or_else(|| panic!("df lists pmem0:\n{df}"))
        .trim()
        .to_string())
}

/// Waits for flag file `name` in `dir` (created by the client).
fn wait_flag(dir: &Path, name: &str, client: &thread::JoinHandle<ToolOutput>) {
    let deadline = Instant::now() + scaled(Duration::from_secs(120));
    while !dir.join(name).exists() {
        assert!(
            !client.is_finished(),
            "the client ended before it created {name}"
        );
        assert!(Instant::now() < deadline, "the client never created {name}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The nbdsh client: writes `half` MiB of a per-MiB pattern to `export`,
/// creates `ready`, waits for `removed`, writes `half` MiB more, flushes,
/// reads all of it back and checks it, creates `verified`, waits for
/// `close`, disconnects.
fn client_script(port: u16, export: &str, dir: &Path, half: u64) -> String {
    format!(
        r#"
import nbd, os, time
flags = "{dir}"
def flag(name):
    open(os.path.join(flags, name), "w").close()
def wait(name):
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(flags, name)):
        if time.time() > deadline:
            raise Exception("no " + name)
        time.sleep(0.05)
MIB = 1 << 20
def block(i):
    return bytes([(i * 7 + 1) % 256]) * 4096 * 255 + bytes(range(256)) * 16
h = nbd.NBD()
h.connect_uri("{uri}")
for i in range({half}):
    h.pwrite(block(i), i * MIB)
h.flush()
flag("ready")
wait("removed")
for i in range({half}, 2 * {half}):
    h.pwrite(block(i), i * MIB)
h.flush()
for i in range(2 * {half}):
    assert h.pread(MIB, i * MIB) == block(i), "MiB %d differs" % i
flag("verified")
wait("close")
h.shutdown()
print("nbdsh script ok")
"#,
        dir = dir.display(),
        uri = uri(port, export),
        half = half,
    )
}

/// Releases the client when the test ends, passed or failed: a client
/// left waiting for a flag would outlive the test.
struct Release(PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        for flag in ["removed", "close"] {
            let _ = std::fs::File::create(self.0.join(flag));
        }
    }
}

/// Starts the client in a thread; the flag directory is made empty first.
fn start_client(port: u16, dir: &Path, half: u64) -> thread::JoinHandle<ToolOutput> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("flag directory");
    let script = client_script(port, "big", dir, half);
    thread::spawn(move || run_tool("nbdsh", &["-c", &script], Duration::from_secs(600)))
}

/// Waits until the NBD server completes a handshake.
fn wait_nbd(port: u16) {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    while !run_tool(
        "nbdinfo",
        &["--list", &uri(port, "")],
        Duration::from_secs(60),
    )
    .success()
    {
        assert!(Instant::now() < deadline, "the NBD server never answered");
        thread::sleep(Duration::from_millis(300));
    }
}

fn options(name: &str, nvdimm: Nvdimm) -> QemuOptions {
    QemuOptions::new(name, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(nvdimm)
}

#[test]
fn a_client_keeps_writing_and_reading_a_removed_file_and_its_space_returns_on_close(
) -> Result<(), HarnessError> {
    const NAME: &str = "unlink_open_client";
    let image: PathBuf = run_dir(NAME).join("pmem0.img");
    let mut machine = Machine::boot_to_prompt(options(NAME, Nvdimm::fresh(&image, 128 * MIB)))?;
    let port = machine.nbd_port();
    shell(&mut machine, "create big 64M")?;
    let empty = df_line(&mut machine)?;
    wait_nbd(port);
    let flags = run_dir(NAME).join("flags");
    let client = start_client(port, &flags, 16);
    let _release = Release(flags.clone());
    wait_flag(&flags, "ready", &client);

    let removed = shell(&mut machine, "rm big")?;
    assert!(
        removed.contains("removed big (still open by 1 NBD connection: #")
            && removed.contains("(big); its space returns when it closes)"),
        "rm of an open file says whose it still is:\n{removed}"
    );
    let gone = machine.command("stat big")?;
    assert!(gone.contains("error:"), "the name is gone at once:\n{gone}");
    // The name can be used again at once, for a file of the same size
    // (sparse): `df` then differs from before only by the orphan's blocks.
    shell(&mut machine, "create big 64M")?;
    std::fs::File::create(flags.join("removed")).expect("flag");
    wait_flag(&flags, "verified", &client);

    let open = df_line(&mut machine)?;
    assert_ne!(open, empty, "the removed file's 32 MiB are still in use");
    let fsck = shell(&mut machine, "fsck pmem0")?;
    assert!(fsck.contains("pmem0: fsck: clean"), "{fsck}");

    std::fs::File::create(flags.join("close")).expect("flag");
    let output = client.join().expect("client thread");
    assert!(
        output.success() && output.stdout.contains("nbdsh script ok"),
        "the client wrote and read back its removed file:\nstdout:\n{}\nstderr:\n{}",
        output.stdout,
        output.stderr
    );
    // The disconnect is seen by the guest shortly after nbdsh exits.
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        let now = df_line(&mut machine)?;
        if now == empty {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the space never came back after the client closed:\nbefore: {empty}\nnow:    {now}"
        );
        thread::sleep(Duration::from_millis(300));
    }
    let fsck = shell(&mut machine, "fsck pmem0")?;
    assert!(fsck.contains("pmem0: fsck: clean"), "{fsck}");
    machine.kill();
    Ok(())
}

#[test]
fn a_power_cut_while_a_removed_file_is_open_is_reclaimed_at_the_next_mount(
) -> Result<(), HarnessError> {
    const NAME: &str = "unlink_power_cut";
    let image: PathBuf = run_dir(NAME).join("pmem0.img");
    let mut machine = Machine::boot_to_prompt(options(NAME, Nvdimm::fresh(&image, 128 * MIB)))?;
    let port = machine.nbd_port();
    let empty = df_line(&mut machine)?;
    shell(&mut machine, "create big 64M")?;
    wait_nbd(port);
    let flags = run_dir(NAME).join("flags");
    let client = start_client(port, &flags, 16);
    let _release = Release(flags.clone());
    wait_flag(&flags, "ready", &client);
    let removed = shell(&mut machine, "rm big")?;
    assert!(
        removed.contains("still open by 1 NBD connection"),
        "{removed}"
    );
    let open = df_line(&mut machine)?;
    assert_ne!(open, empty, "the removed file's 16 MiB are still in use");
    // Power cut with the orphan open.
    machine.kill();
    std::fs::File::create(flags.join("removed")).expect("flag");
    std::fs::File::create(flags.join("close")).expect("flag");
    let output = client.join().expect("client thread");
    assert!(!output.success(), "the client lost its server");

    let mut machine = Machine::boot_to_prompt(options(NAME, Nvdimm::existing(&image, 128 * MIB)))?;
    let boot = machine.output();
    assert!(
        boot.contains("storage: pmem0 mounted daxfs"),
        "mounted after the power cut:\n{boot}"
    );
    assert!(
        boot.contains("storage: pmem0: reclaimed the space of 1 file(s) removed while open"),
        "the boot log says what the mount reclaimed:\n{boot}"
    );
    assert_eq!(
        df_line(&mut machine)?,
        empty,
        "the orphan's space is reclaimed at mount"
    );
    let fsck = shell(&mut machine, "fsck pmem0")?;
    assert!(fsck.contains("pmem0: fsck: clean"), "{fsck}");
    let ls = shell(&mut machine, "ls")?;
    assert!(!ls.contains("big"), "the name stays removed:\n{ls}");
    machine.kill();
    Ok(())
}
