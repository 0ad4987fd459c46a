//! Export names with two NVDIMMs, and a `readonly=` line that cannot be
//! used, on the booted appliance.
//!
//! The name rules and the read-only policy are host tested in
//! `daxbox-storage` and end to end against `daxbox-serve`
//! (`storage/serve/tests/real_clients.rs`: two images with the same file
//! name, rules that fail closed). What stays here needs the kernel: two
//! real NVDIMMs found through the NFIT, the boot config read from the
//! ramdisk, its warnings and the storage report on the serial console,
//! the `bootconfig` and `nbd` shell commands, and NBD clients through
//! virtio-net.
//!
//! One boot: pmem0 and pmem1 both hold a file `disk1`; the boot config has
//! a good rule (`readonly=pmem1:disk1`) and a line with an open quote,
//! which fails closed: every export is read-only, and the appliance says
//! why at boot, in `bootconfig` and in `nbd`.

use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{
    nbdsh, run_tool, run_tool_ok, uri, RawClient, CMD_READ, CMD_WRITE, EPERM,
};
use daxbox_tests::{
    load_factor, run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF,
};

const NAME: &str = "names_two_nvdimms_bad_readonly";
const MIB: u64 = 1 << 20;
const QUICK: Duration = Duration::from_secs(60);

/// The boot config: a good rule, then (line 3) one with an open quote.
const BOOT_CONFIG: &str = "format=if-blank\nreadonly=pmem1:disk1\nreadonly=\"open quote\n";

/// What the appliance says about line 3, wherever it says it.
const REASON: &str = "bootconfig line 3: readonly '\"open quote': an open quote (no closing '\"')";

/// Runs a shell command that must not report an error.
fn shell(machine: &mut Machine, command: &str) -> Result<String, HarnessError> {
    let output = machine.command(command)?;
    assert!(
        !output.contains("error") && !output.contains("usage:"),
        "shell `{command}` failed:\n{output}"
    );
    Ok(output)
}

/// Waits until the NBD server completes a handshake.
fn wait_nbd(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30).mul_f64(load_factor());
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

#[test]
fn two_nvdimms_one_name_per_export_and_a_bad_readonly_line_fails_closed() -> Result<(), HarnessError>
{
    let nvdimm =
        |index: usize| Nvdimm::fresh(run_dir(NAME).join(format!("nvdimm{index}.img")), 64 * MIB);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(BOOT_CONFIG)
        .with_nvdimm(nvdimm(0))
        .with_nvdimm(nvdimm(1));
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains(
            "bootconfig line 3: bad value for readonly: '\"open quote': an open quote \
             (no closing '\"') (failing closed: every export read-only)"
        ),
        "the boot log names the line and what was applied:\n{boot}"
    );
    assert!(
        boot.contains(&format!(
            "storage: read-only (failing closed): every export: {REASON}"
        )),
        "the storage report says every export is read-only and why:\n{boot}"
    );

    shell(&mut machine, "create disk1 1M")?;
    shell(&mut machine, "create pmem1:disk1 2M")?;
    shell(&mut machine, "create pmem1:only1 1M")?;
    shell(&mut machine, "write disk1 0 first-device")?;
    shell(&mut machine, "write pmem1:disk1 0 second-device")?;
    let ls = shell(&mut machine, "ls")?;
    assert!(
        ls.contains("  disk1\n")
            && ls.contains("  pmem1:disk1\n")
            && ls.contains("  pmem1:only1\n"),
        "ls shows the canonical names:\n{ls}"
    );

    let port = machine.nbd_port();
    wait_nbd(port);
    // nbdinfo --list: every export once, under the name that opens it
    // (export= is the server's NBD_INFO_NAME).
    let list = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    let listed: Vec<&str> = list
        .lines()
        .filter_map(|line| line.strip_prefix("export=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(
        listed,
        ["disk1", "pmem1:disk1", "pmem1:only1"],
        "one name per export:\n{list}"
    );
    for name in &listed {
        let json = run_tool_ok("nbdinfo", &["--json", &uri(port, name)], QUICK);
        assert!(
            json.contains(&format!("\"export-name\": \"{name}\"")),
            "{name} opens as itself: {json}"
        );
        assert!(
            json.contains("\"is_read_only\": true"),
            "{name} is read-only (failing closed): {json}"
        );
    }
    // pmem0:disk1 opens pmem0's file, under its canonical name.
    let json = run_tool_ok("nbdinfo", &["--json", &uri(port, "pmem0:disk1")], QUICK);
    assert!(json.contains("\"export-name\": \"disk1\""), "{json}");

    // Writes get EPERM from a real client, on both devices.
    for export in ["disk1", "pmem1:disk1"] {
        nbdsh(
            &format!(
                r#"
import nbd
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:{port}/{export}")
assert h.is_read_only()
h.set_strict_mode(0)
for name, call in (("write", lambda: h.pwrite(b"x" * 512, 0)),
                   ("trim", lambda: h.trim(4096, 0)),
                   ("zero", lambda: h.zero(4096, 0))):
    try:
        call()
        raise SystemExit(name + " on a fail-closed export succeeded")
    except nbd.Error as e:
        assert e.errno == "EPERM", (name, e.errno, e.string)
h.shutdown()
print("nbdsh script ok")
"#
            ),
            export,
        );
    }
    let mut client = RawClient::start(port);
    client.go("pmem1:disk1");
    client.request(CMD_WRITE, 1, 0, 512, &[1; 512]);
    assert_eq!(client.simple(), (EPERM, 1), "raw WRITE on pmem1:disk1");
    client.request(CMD_READ, 2, 0, 13, &[]);
    assert_eq!(client.simple(), (0, 2));
    assert_eq!(client.read_bytes(13), b"second-device", "unchanged");
    drop(client);

    // The shell says the same.
    let config = shell(&mut machine, "bootconfig")?;
    assert!(
        config.contains("readonly=pmem1:disk1\n"),
        "bootconfig shows the good rule:\n{config}"
    );
    assert!(
        config.contains(&format!("readonly=* (failing closed: {REASON})")),
        "bootconfig shows the rule standing in for line 3:\n{config}"
    );
    // (Its counters say "errors": not a failed command.)
    let nbd = machine.command("nbd")?;
    for export in ["disk1", "pmem1:disk1", "pmem1:only1"] {
        assert!(
            nbd.contains(&format!("  export {export} (read-only)\n")),
            "nbd: {export} read-only:\n{nbd}"
        );
    }
    assert!(
        nbd.contains(&format!(
            "read-only (failing closed): every export: {REASON}"
        )),
        "nbd says why:\n{nbd}"
    );
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);
    Ok(())
}
