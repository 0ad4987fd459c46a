//! NVDIMM hot-add and `pmem offline`/`online` in the booted appliance
//! (issue 16), with real QEMU driven over QMP and real NBD clients.
//!
//! The FIT protocol's parsing (statuses, restarts, bounds) and the boot
//! policy for a device added later are tested on the host
//! (`daxbox-pmem` `fit::tests`, `daxbox-storage` `boot::tests`); what stays
//! here needs QEMU: the GPE0 bit, the DSM page, the FIT QEMU rebuilds, the
//! new range mapped above 4 GiB, and the NFIT after a reset.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{shell, wait_nbd};
use daxbox_tests::nbd_client::{fio, run_tool, run_tool_ok, test_image, uri};
use daxbox_tests::{
    run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF,
};

const MIB: u64 = 1 << 20;
const QUICK: Duration = Duration::from_secs(60);

/// A zero-filled NVDIMM backing file of `size` bytes.
fn backing_file(path: &Path, size: u64) {
    let _ = fs::remove_file(path);
    let file = fs::File::create(path).expect("creating an NVDIMM backing file");
    file.set_len(size).expect("sizing an NVDIMM backing file");
}

/// Copies `bytes` into `export` with nbdcopy and back, and compares.
fn nbdcopy_round_trip(port: u16, export: &str, dir: &Path, bytes: &[u8]) {
    let source = dir.join(format!("{}.in", export.replace(':', "_")));
    let back = dir.join(format!("{}.out", export.replace(':', "_")));
    fs::write(&source, bytes).expect("writing the source file");
    run_tool_ok(
        "nbdcopy",
        &[source.to_str().unwrap(), &uri(port, export)],
        QUICK,
    );
    run_tool_ok(
        "nbdcopy",
        &[&uri(port, export), back.to_str().unwrap()],
        QUICK,
    );
    let read = fs::read(&back).expect("reading the copy back");
    assert!(read == bytes, "{export}: nbdcopy round trip differs");
}

#[test]
fn hot_add_under_fio_then_two_back_to_back_then_reset() -> Result<(), HarnessError> {
    const NAME: &str = "hotadd_fio_reset";
    let dir = run_dir(NAME);
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(Nvdimm::fresh(dir.join("pmem0.img"), 64 * MIB))
        .with_hotplug(3, 3 * 64 * MIB)
        .with_qmp(dir.join("qmp.sock"));
    options.reboot = true;
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains("pmem: NVDIMM hot-add: QEMU NVDIMM SSDT found; GPE0 0x620 (16 bytes)"),
        "hot-add detected at boot"
    );
    let port = machine.nbd_port();
    shell(&mut machine, "create disk 16M")?;
    wait_nbd(port);

    // fio writes and verifies `disk` on pmem0 while pmem1 is plugged.
    let disk = uri(port, "disk");
    let fio_job = thread::spawn(move || {
        fio(
            &disk,
            "under-hotadd",
            &["--size=16M", "--bs=64k", "--iodepth=4"],
            1,
            Duration::from_secs(300),
            "fio during the hot-add",
        )
    });
    let mut qmp = machine.qmp()?;
    backing_file(&dir.join("pmem1.img"), 64 * MIB);
    qmp.add_nvdimm("nv1", &dir.join("pmem1.img"), 64 * MIB)?;
    let seen = machine.wait_for(
        "storage: pmem1 formatted and mounted daxfs",
        scaled(Duration::from_secs(30)),
    )?;
    assert!(seen.contains("pmem: NVDIMM hot-add event"), "{seen}");
    let terse = fio_job.join().expect("the fio thread");
    assert!(!terse.is_empty());

    // A file made over the shell on the new device is served over NBD.
    shell(&mut machine, "create pmem1:fresh 2M")?;
    let listed = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    assert!(listed.contains("pmem1:fresh"), "OPT_LIST:\n{listed}");
    let data = test_image(2 * MIB as usize, 16);
    nbdcopy_round_trip(port, "pmem1:fresh", &dir, &data);

    // Two back to back: the FIT changes while it may be being read.
    for id in ["nv2", "nv3"] {
        let path = dir.join(format!("{id}.img"));
        backing_file(&path, 64 * MIB);
        qmp.add_nvdimm(id, &path, 64 * MIB)?;
    }
    machine.wait_for("storage: pmem2 formatted and mounted daxfs", scaled(QUICK))?;
    machine.wait_for("storage: pmem3 formatted and mounted daxfs", scaled(QUICK))?;
    shell(&mut machine, "create pmem3:last 1M")?;
    shell(&mut machine, "write pmem3:last 0 after-two")?;
    let pmem = shell(&mut machine, "pmem")?;
    for device in ["pmem0", "pmem1", "pmem2", "pmem3"] {
        assert!(
            pmem.contains(&format!("{device}  ")),
            "{device} listed:\n{pmem}"
        );
    }

    // After a reset all four are in the NFIT at boot, data intact.
    qmp.system_reset()?;
    machine.wait_ready()?;
    let after = machine.output();
    let boot_log = after.rsplit("booting").next().unwrap_or_default();
    assert!(
        boot_log.contains("4 persistent-memory range(s)"),
        "the NFIT lists the hot-added NVDIMMs:\n{boot_log}"
    );
    assert_eq!(
        boot_log.matches(" mounted daxfs").count(),
        4,
        "four filesystems mounted:\n{boot_log}"
    );
    wait_nbd(port);
    let listed = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    // FIT order is not slot order, so names may change: find the files.
    let exports: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export=\"")?.strip_suffix("\":"))
        .collect();
    let find = |file: &str| {
        exports
            .iter()
            .find(|name| name.rsplit(':').next() == Some(file))
            .unwrap_or_else(|| panic!("`{file}` listed after reset:\n{listed}"))
            .to_string()
    };
    let fresh = find("fresh");
    let back = dir.join("fresh.after");
    run_tool_ok(
        "nbdcopy",
        &[&uri(port, &fresh), back.to_str().unwrap()],
        QUICK,
    );
    assert!(fs::read(&back).expect("the copy") == data, "fresh intact");
    let last = find("last");
    let text = shell(&mut machine, &format!("cat {last} 0 9"))?;
    assert!(text.contains("after-two"), "{text}");
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);
    Ok(())
}

#[test]
fn zero_nvdimms_then_hot_add_then_offline_under_io_and_online() -> Result<(), HarnessError> {
    const NAME: &str = "hotadd_zero_offline";
    let dir = run_dir(NAME);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_hotplug(1, 64 * MIB)
        .with_qmp(dir.join("qmp.sock"));
    let mut machine = Machine::boot_to_prompt(options)?;
    let port = machine.nbd_port();
    let pmem = shell(&mut machine, "pmem")?;
    assert!(pmem.contains("no pmem devices"), "{pmem}");
    fs::create_dir_all(&dir).expect("the run folder");
    backing_file(&dir.join("pmem0.img"), 64 * MIB);
    machine
        .qmp()?
        .add_nvdimm("nv0", &dir.join("pmem0.img"), 64 * MIB)?;
    machine.wait_for(
        "storage: pmem0 formatted and mounted daxfs",
        scaled(Duration::from_secs(30)),
    )?;
    shell(&mut machine, "create kept 4M")?;
    shell(&mut machine, "create disk 16M")?;
    wait_nbd(port);
    // Acknowledged before the offline: must read back the same after.
    let kept = test_image(4 * MIB as usize, 7);
    nbdcopy_round_trip(port, "kept", &dir, &kept);

    // fio keeps writing `disk` while the device is taken offline: it sees
    // errors or a disconnect, never a hang, and the appliance lives.
    let disk = uri(port, "disk");
    let fio_job = thread::spawn(move || {
        let args = daxbox_tests::nbd_client::fio_args(
            &disk,
            "offline",
            &["--size=16M", "--bs=64k", "--time_based", "--runtime=60"],
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool("fio", &refs, Duration::from_secs(300))
    });
    // Until fio is connected (the `nbd` listing names `disk`).
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    while !machine.command("nbd")?.contains(" disk: ") {
        assert!(Instant::now() < deadline, "fio never connected");
        thread::sleep(Duration::from_millis(300));
    }
    let offline = shell(&mut machine, "pmem offline pmem0")?;
    assert!(
        offline.contains("pmem0: unmounted (filesystem clean)")
            && offline.contains("pmem: pmem0 offline"),
        "{offline}"
    );
    let fio_result = fio_job.join().expect("the fio thread");
    assert!(
        !fio_result.success() || fio_result.stdout.split(';').nth(4) != Some("0"),
        "fio must see the device go: {fio_result:?}"
    );
    let pmem = shell(&mut machine, "pmem")?;
    assert!(pmem.contains("offline (`pmem online pmem0`"), "{pmem}");
    let refused = machine.command("mount pmem0")?;
    assert!(
        refused.contains("error:"),
        "an offline device is not mounted: {refused}"
    );
    let listed = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    assert!(
        !listed.contains("disk"),
        "no exports while offline:\n{listed}"
    );

    let online = shell(&mut machine, "pmem online pmem0")?;
    assert!(online.contains("storage: pmem0 mounted daxfs"), "{online}");
    let fsck = shell(&mut machine, "fsck pmem0")?;
    assert!(fsck.contains("pmem0: fsck: clean"), "{fsck}");
    let back = dir.join("kept.after");
    run_tool_ok(
        "nbdcopy",
        &[&uri(port, "kept"), back.to_str().unwrap()],
        QUICK,
    );
    assert!(fs::read(&back).expect("the copy") == kept, "kept intact");
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);
    Ok(())
}
