//! The operator's lifecycle commands in the booted appliance (issue 18):
//! `truncate` and `umount` refused while a real client (nbdcopy) has the
//! export open, naming its address and port as the kernel's TCP stack saw
//! them; `--force` disconnects it (nbdcopy fails, the appliance keeps
//! serving); the unmounted device is free for `mkfs`; `grow` after a boot
//! with a larger NVDIMM shows the new free space in `df` and survives a
//! reboot.
//!
//! The command logic and its messages are tested on the host
//! (`daxbox-storage` unit tests, `daxbox-serve`'s real-client test); what
//! stays here needs the kernel: virtio-net peers, the listener aborting a
//! cut connection, the frames of an unmounted device going back to
//! `pmem`, an NVDIMM that got larger between boots.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{shell, wait_nbd};
use daxbox_tests::nbd_client::{run_tool_ok, uri};
use daxbox_tests::{
    run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF,
};

const MIB: u64 = 1 << 20;
const QUICK: Duration = Duration::from_secs(60);

/// Kills the child on drop (a failed assertion must not leave it).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nbdcopy` of `export` to its stdout, which nobody reads: once the pipe
/// is full it waits, with its connection open in the transmission phase.
fn stalled_nbdcopy(port: u16, export: &str) -> Reaped {
    let child = Command::new("nbdcopy")
        .args(["--connections", "1", &uri(port, export), "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nbdcopy (libnbd-bin) must be installed");
    Reaped(child)
}

/// Drains the stalled nbdcopy's output and waits for it to end; returns
/// (success, stderr).
fn finish(mut copy: Reaped, limit: Duration) -> (bool, String) {
    let mut stdout = copy.0.stdout.take().expect("piped stdout");
    let drain = thread::spawn(move || {
        let mut sink = [0u8; 64 * 1024];
        while matches!(stdout.read(&mut sink), Ok(n) if n > 0) {}
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = copy.0.try_wait().expect("waiting for nbdcopy") {
            break status;
        }
        assert!(Instant::now() < deadline, "nbdcopy did not end");
        thread::sleep(Duration::from_millis(100));
    };
    let _ = drain.join();
    let mut stderr = String::new();
    if let Some(mut pipe) = copy.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.success(), stderr)
}

/// The `nbd` line of the connection on `export`, once one is listed.
fn connection_line(machine: &mut Machine, export: &str) -> Result<String, HarnessError> {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    let wanted = format!(" {export}: ");
    loop {
        let status = machine.command("nbd")?;
        if let Some(line) = status.lines().find(|line| line.contains(&wanted)) {
            return Ok(line.trim().to_string());
        }
        assert!(
            Instant::now() < deadline,
            "`nbd` never listed a client of {export}:\n{status}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn umount_and_truncate_refuse_a_connected_nbdcopy_then_force_and_mkfs() -> Result<(), HarnessError>
{
    const NAME: &str = "lifecycle_umount";
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("pmem0.img"), 128 * MIB));
    let mut machine = Machine::boot_to_prompt(options)?;
    let port = machine.nbd_port();
    shell(&mut machine, "create disk 64M")?;
    shell(&mut machine, "write disk 0 some-data")?;
    wait_nbd(port);

    let copy = stalled_nbdcopy(port, "disk");
    let line = connection_line(&mut machine, "disk")?;
    // `#ID ADDRESS:PORT up AGE s, disk: ...`: QEMU's user network is the
    // client's address as the guest sees it.
    let mut words = line.split(' ');
    let id = words.next().unwrap_or_default().to_string();
    let peer = words.next().unwrap_or_default().to_string();
    assert!(
        id.starts_with('#') && peer.starts_with("10.0.2.2:") && line.contains(" up "),
        "`nbd` names the client by address and port: {line}"
    );
    let named = format!("{id} {peer} (disk)");

    let refused = machine.command("truncate disk 1M")?;
    assert!(
        refused.contains(&format!(
            "error: disk is open on 1 NBD connection(s): {named}; shrinking it under them is refused"
        )),
        "truncate of an open export is refused:\n{refused}"
    );
    shell(&mut machine, "truncate disk 80M")?;
    let refused = machine.command("umount pmem0")?;
    assert!(
        refused.contains(&format!(
            "error: pmem0 is open on 1 NBD connection(s): {named}; it stays mounted \
             (`umount pmem0 --force` disconnects them first)"
        )),
        "umount under a client is refused:\n{refused}"
    );
    let forced = shell(&mut machine, "umount pmem0 --force")?;
    assert!(
        forced.contains(&format!("disconnected {named}"))
            && forced.contains("pmem0: unmounted (filesystem clean)"),
        "umount --force:\n{forced}"
    );
    let (success, stderr) = finish(copy, scaled(Duration::from_secs(60)));
    assert!(!success, "nbdcopy must fail when cut; stderr: {stderr}");

    // The appliance keeps serving; the device is back with pmem/blk/mkfs.
    wait_nbd(port);
    let df = shell(&mut machine, "df")?;
    assert!(df.contains("(not mounted)"), "df after umount:\n{df}");
    let status = shell(&mut machine, "nbd")?;
    assert!(status.contains("0 export(s)"), "{status}");
    let block = shell(&mut machine, "blk read pmem0 0 1")?;
    assert!(!block.is_empty(), "blk reads the unmounted device");
    let mounted = shell(&mut machine, "mount pmem0")?;
    assert!(
        mounted.contains("storage: pmem0 mounted daxfs"),
        "mount:\n{mounted}"
    );
    shell(&mut machine, "umount pmem0")?;
    let formatted = shell(&mut machine, "mkfs pmem0 --yes")?;
    assert!(
        formatted.contains("storage: pmem0 formatted and mounted daxfs"),
        "mkfs after umount:\n{formatted}"
    );
    shell(&mut machine, "create fresh 1M")?;
    let size = run_tool_ok("nbdinfo", &["--size", &uri(port, "fresh")], QUICK);
    assert_eq!(size.trim(), "1048576");
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);
    Ok(())
}

/// The data-area figure of `df`'s pmem0 line (`size` column).
fn df_line(machine: &mut Machine) -> Result<String, HarnessError> {
    let df = shell(machine, "df")?;
    Ok(df
        .lines()
        .find(|line| line.starts_with("pmem0 "))
        .unwrap_or_else(|| panic!("df lists pmem0:\n{df}"))
        .trim()
        .to_string())
}

#[test]
fn grow_after_a_larger_nvdimm_shows_in_df_and_survives_a_reboot() -> Result<(), HarnessError> {
    const NAME: &str = "lifecycle_grow";
    let path = run_dir(NAME).join("pmem0.img");
    let options = |nvdimm: Nvdimm| {
        QemuOptions::new(NAME, Firmware::Bios)
            .with_boot_config("format=if-blank\n")
            .with_nvdimm(nvdimm)
    };
    let mut machine = Machine::boot_to_prompt(options(Nvdimm::fresh(&path, 64 * MIB)))?;
    shell(&mut machine, "create kept 1M")?;
    shell(&mut machine, "write kept 0 kept-across-grow")?;
    let small = df_line(&mut machine)?;
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);

    // The NVDIMM is now 128 MiB: the filesystem stays 64 MiB until grow.
    let mut machine = Machine::boot_to_prompt(options(Nvdimm::existing(&path, 128 * MIB)))?;
    assert_eq!(df_line(&mut machine)?, small, "nothing grows by itself");
    let grown = shell(&mut machine, "grow pmem0")?;
    assert!(
        grown.contains("pmem0: grown by 64 MiB to "),
        "grow:\n{grown}"
    );
    let large = df_line(&mut machine)?;
    assert_ne!(large, small, "df shows the new space");
    assert!(large.contains(" 127.5 MiB "), "df after grow: {large}");
    let again = shell(&mut machine, "grow pmem0")?;
    assert!(again.contains("nothing to grow"), "{again}");
    let fsck = shell(&mut machine, "fsck pmem0")?;
    assert!(fsck.contains("pmem0: fsck: clean"), "{fsck}");
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);

    let mut machine = Machine::boot_to_prompt(options(Nvdimm::existing(&path, 128 * MIB)))?;
    assert_eq!(df_line(&mut machine)?, large, "the grown size survives");
    let text = shell(&mut machine, "cat kept 0 16")?;
    assert!(text.contains("kept-across-grow"), "{text}");
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);
    Ok(())
}
