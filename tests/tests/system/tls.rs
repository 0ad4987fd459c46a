//! NBD over TLS on the booted appliance: the certificate and key travel as
//! PEM blocks inside the boot config (the ramdisk), entropy comes from
//! RDRAND (`-cpu max`), and real GnuTLS clients (libnbd's nbdinfo and
//! nbdcopy, QEMU's qemu-img) connect with `nbds://` / `tls-creds-x509`.
//! The TLS layer itself is host tested in `daxbox-tls`, STARTTLS in the
//! engine, and the whole service with the same clients against
//! `daxbox-serve`; what stays here needs the kernel: the crypto running on
//! the soft-float bare-metal target, the boot config carrying PEM, the
//! fail-closed boot path and `bootconfig`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use daxbox_tests::nbd_client::{run_tool, run_tool_ok, uri};
use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;
const SLOW: Duration = Duration::from_secs(240);

fn testdata(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../net/tls/testdata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `key=` followed by a PEM file's blocks, one `key=` per block.
fn pem_lines(key: &str, pem: &str) -> String {
    pem.lines()
        .map(|line| {
            if line.starts_with("-----BEGIN") {
                format!("{key}={line}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

fn cert_dir(name: &str, ca: &str) -> PathBuf {
    let dir = run_dir(name).join("client-certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), testdata(ca)).unwrap();
    dir
}

#[test]
fn nbd_over_tls_with_the_certificate_in_the_boot_config() -> Result<(), HarnessError> {
    const NAME: &str = "tls_nbd_require";
    let config = format!(
        // HTTPS takes the guest port the harness forwards for HTTP.
        "format=if-blank\ntls=require\nhttp_port=8080\nhttps_port=80\n{}{}",
        pem_lines("tls_cert", &testdata("server.pem")),
        pem_lines("tls_key", &testdata("server-key.pem")),
    );
    let nvdimm = Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 64 * MIB);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(&config)
        .with_nvdimm(nvdimm);
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains("tls: require certificate loaded"),
        "boot log:\n{boot}"
    );
    assert!(
        !boot.contains("PRIVATE KEY"),
        "no key material on the console"
    );
    let shown = machine.command("bootconfig")?;
    assert!(
        shown.contains("tls=require (certificate loaded)"),
        "bootconfig:\n{shown}"
    );
    assert!(
        !shown.contains("PRIVATE"),
        "bootconfig shows no key:\n{shown}"
    );
    machine.command("create disk 4M")?;

    let port = machine.nbd_port();
    let good = cert_dir(NAME, "ca.pem");
    let nbds = |dir: &Path| {
        format!(
            "nbds://127.0.0.1:{port}/disk?tls-certificates={}",
            dir.display()
        )
    };
    let size = run_tool_ok("nbdinfo", &["--size", &nbds(&good)], SLOW);
    assert_eq!(size.trim(), (4 * MIB).to_string());

    // Written and read back through TLS.
    let source = run_dir(NAME).join("source.bin");
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&source, &data).unwrap();
    run_tool_ok(
        "nbdcopy",
        &[&source.display().to_string(), &nbds(&good)],
        SLOW,
    );
    let back = run_dir(NAME).join("back.bin");
    run_tool_ok(
        "nbdcopy",
        &[&nbds(&good), &back.display().to_string()],
        SLOW,
    );
    assert!(std::fs::read(&back).unwrap()[..MIB as usize] == data[..]);

    // Plaintext is refused with the TLS-required error.
    let plain = run_tool("nbdinfo", &[&uri(port, "disk")], SLOW);
    assert!(!plain.success());
    let said = format!("{}{}", plain.stdout, plain.stderr);
    assert!(said.contains("TLS"), "plaintext refusal:\n{said}");

    // A client with the wrong CA fails; the next good one is served.
    let wrong = run_dir(NAME).join("wrong-ca");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(wrong.join("ca-cert.pem"), testdata("other-ca.pem")).unwrap();
    assert!(!run_tool("nbdinfo", &["--size", &nbds(&wrong)], SLOW).success());

    let object = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        good.display()
    );
    let image = format!("driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0");
    let info = run_tool_ok(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &image],
        SLOW,
    );
    assert!(
        info.contains("virtual size: 4 MiB"),
        "qemu-img info:\n{info}"
    );
    Ok(())
}

#[test]
fn a_key_that_does_not_match_fails_closed() -> Result<(), HarnessError> {
    const NAME: &str = "tls_bad_key";
    let config = format!(
        "tls=on\n{}{}",
        pem_lines("tls_cert", &testdata("server.pem")),
        pem_lines("tls_key", &testdata("client-key.pem")),
    );
    let options = QemuOptions::new(NAME, Firmware::Bios).with_boot_config(&config);
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains(
            "tls: tls_key does not match the certificate in tls_cert; NBD and HTTPS not served"
        ),
        "boot log:\n{boot}"
    );
    assert!(
        boot.contains("nbd: not started: tls: tls_key does not match"),
        "{boot}"
    );
    let shown = machine.command("bootconfig")?;
    assert!(
        shown.contains("tls=on FAILED: tls_key does not match"),
        "{shown}"
    );
    Ok(())
}
