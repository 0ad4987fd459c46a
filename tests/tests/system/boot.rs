//! Boot paths: BIOS disk, UEFI disk and UEFI PXE netboot each reach
//! `daxbox: ready` and answer a shell command; the boot config travels as
//! the bootloader ramdisk.

use std::time::Duration;

use daxbox_tests::{Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

/// Boots, checks the banner names the firmware and that `version` answers.
fn boots_and_answers(name: &str, firmware: Firmware, banner: &str) -> Result<(), HarnessError> {
    let mut machine = Machine::boot_to_prompt(QemuOptions::new(name, firmware))?;
    let output = machine.output();
    assert!(
        output.contains(&format!("booting ({banner})")),
        "banner should name {banner}:\n{output}"
    );
    let version = machine.command("version")?;
    assert!(version.contains("daxbox"), "version answered: {version:?}");
    assert_wall_clock(&output);
    let kernel_ms = ready_after_entry_ms(&output);
    let seconds = |time: Option<Duration>| time.map_or(f64::NAN, |time| time.as_secs_f64());
    println!(
        "{name}: QEMU start to `daxbox: ready` in {:.2} s ({:.2} s of QEMU CPU time), \
         {kernel_ms} ms of it from kernel entry",
        seconds(machine.ready_after()),
        seconds(machine.ready_cpu_time())
    );
    Ok(())
}

/// The kernel's own boot figure: `daxbox: ready (N ms after kernel entry)`,
/// taken on the TSC from the entry point (a figure, printed, not timed).
fn ready_after_entry_ms(output: &str) -> f64 {
    let line = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("daxbox: ready ("))
        .unwrap_or_else(|| panic!("no `daxbox: ready (N ms after kernel entry)` line:\n{output}"));
    let (ms, rest) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("malformed ready line: {line:?}"));
    assert_eq!(rest, "ms after kernel entry)", "ready line: {line:?}");
    let ms: f64 = ms
        .parse()
        .unwrap_or_else(|_| panic!("ready line without a figure: {line:?}"));
    assert!(ms > 0.0, "ready line: {line:?}");
    ms
}

/// The kernel read the CMOS RTC (QEMU sets it to the host's UTC time) and
/// printed a wall time within two minutes of the host's clock.
fn assert_wall_clock(output: &str) {
    let line = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("clock: wall time "))
        .unwrap_or_else(|| panic!("no `clock: wall time` line:\n{output}"));
    let stamp = line.split(" UTC").next().unwrap_or_default();
    let parsed = std::process::Command::new("date")
        .args(["-u", "-d", stamp, "+%s"])
        .output()
        .expect("run date");
    assert!(parsed.status.success(), "date could not parse {stamp:?}");
    let guest: u64 = String::from_utf8_lossy(&parsed.stdout)
        .trim()
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        guest.abs_diff(host) < 120,
        "guest wall time {stamp} is {} s from the host's",
        guest.abs_diff(host)
    );
}

#[test]
fn bios_boot_reaches_ready() -> Result<(), HarnessError> {
    boots_and_answers("boot_bios", Firmware::Bios, "BIOS")
}

#[test]
fn uefi_boot_reaches_ready() -> Result<(), HarnessError> {
    boots_and_answers("boot_uefi", Firmware::Uefi, "UEFI")
}

#[test]
fn pxe_netboot_reaches_ready() -> Result<(), HarnessError> {
    boots_and_answers("boot_pxe", Firmware::Pxe, "UEFI")
}

#[test]
fn boot_config_reaches_the_kernel() -> Result<(), HarnessError> {
    let config = "debug_commands=off\n";
    let options = QemuOptions::new("boot_config_ramdisk", Firmware::Bios).with_boot_config(config);
    let machine = Machine::boot_to_prompt(options)?;
    let output = machine.output();
    let expected = format!("bootconfig: {} bytes", config.len());
    assert!(
        output.contains(&expected),
        "expected `{expected}` in:\n{output}"
    );
    Ok(())
}

#[test]
fn no_boot_config_is_reported() -> Result<(), HarnessError> {
    let machine = Machine::boot_to_prompt(QemuOptions::new("boot_config_none", Firmware::Bios))?;
    let output = machine.output();
    assert!(output.contains("bootconfig: none"), "{output}");
    Ok(())
}

#[test]
fn boots_with_two_nvdimms() -> Result<(), HarnessError> {
    let name = "boot_two_nvdimms";
    let dir = daxbox_tests::run_dir(name);
    let options = QemuOptions::new(name, Firmware::Bios)
        .with_nvdimm(Nvdimm::fresh(dir.join("pmem0.img"), 64 << 20))
        .with_nvdimm(Nvdimm::fresh(dir.join("pmem1.img"), 128 << 20));
    let machine = Machine::boot_to_prompt(options)?;
    let output = machine.output();
    // The kernel's discovery summary: both NFIT ranges became devices.
    assert!(output.contains("pmem: 2 device(s)"), "{output}");
    Ok(())
}
