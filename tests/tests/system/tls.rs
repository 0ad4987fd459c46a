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

use daxbox_tests::certs;
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

/// A client certificate folder for libnbd's `tls-certificates` and QEMU's
/// `tls-creds-x509` (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`)
/// with common name `cn`, made now with `openssl` in the test's folder and
/// signed by the `net/tls` test CA (whose key is a test fixture).
fn client_dir(name: &str, cn: &str) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../net/tls/testdata");
    // Beside the run folder, not in it: the first boot empties that, and
    // these are made before it.
    let dir = run_dir(&format!("{name}-clients")).join(format!("client-{cn}"));
    let ca = certs::Ca {
        cert: &data.join("ca.pem"),
        key: &data.join("ca-key.pem"),
    };
    certs::client_folder(&dir, ca, cn).unwrap()
}

/// `curl` over HTTPS to the guest's port 80 with the test CA and, when
/// given, a client certificate folder, plus `extra` arguments: the HTTP
/// status (`000` when no HTTP answer came) and the body.
fn curl(port: u16, path: &str, client: Option<&Path>, extra: &[&str]) -> (String, String) {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../net/tls/testdata/ca.pem")
        .display()
        .to_string();
    let url = format!("https://localhost:{port}{path}");
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "60".into(),
        "--cacert".into(),
        ca,
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(dir) = client {
        args.push("--cert".into());
        args.push(dir.join("client-cert.pem").display().to_string());
        args.push("--key".into());
        args.push(dir.join("client-key.pem").display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool("curl", &refs, SLOW);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    (code.trim().to_string(), format!("{body}{}", out.stderr))
}

/// Mutual TLS as identity on the booted appliance: `allow=cn:NAME` rules
/// admit the client whose certificate (verified against `tls_client_ca`)
/// has that name, over NBD (after STARTTLS) and HTTPS; another certificate
/// of the same CA gets `NBD_REP_ERR_POLICY`, does not see the export
/// listed, and gets HTTPS `403`; no certificate fails the handshake. TLS
/// 1.2 and 1.3 are each forced from the client side (GnuTLS priority for
/// QEMU's client, curl's version options); plaintext HTTP to the HTTPS
/// port gets no HTTP answer and the port goes on serving.
#[test]
fn client_certificate_names_in_allow_rules() -> Result<(), HarnessError> {
    const NAME: &str = "tls_allow_cn";
    let config = format!(
        "format=if-blank\ntls=require\nhttp_port=8080\nhttps_port=80\n\
         allow=cn:backup-host-1 * rw\nallow=cn:reader disk ro nbd\n{}{}{}",
        pem_lines("tls_cert", &testdata("server.pem")),
        pem_lines("tls_key", &testdata("server-key.pem")),
        pem_lines("tls_client_ca", &testdata("ca.pem")),
    );
    let nvdimm = Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 64 * MIB);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(&config)
        .with_nvdimm(nvdimm);
    // The client certificates exist before the appliance reads its clock:
    // its wall time is the CMOS RTC's whole second at boot plus the TSC
    // since, up to 1 s behind the host's, so a certificate made after boot
    // can be "not yet valid" to it within that second.
    let backup = client_dir(NAME, "backup-host-1");
    let stranger = client_dir(NAME, "stranger");
    let reader = client_dir(NAME, "reader");
    let mut machine = Machine::boot_to_prompt(options)?;
    let shown = machine.command("bootconfig")?;
    assert!(
        shown.contains("allow=cn:backup-host-1 * rw both"),
        "bootconfig:\n{shown}"
    );
    machine.command("create disk 4M")?;
    let port = machine.nbd_port();
    let https = machine.http_port();
    let nbds = |export: &str, dir: &Path| {
        format!(
            "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
            dir.display()
        )
    };

    // The named certificate reads and writes through TLS.
    let source = run_dir(NAME).join("source.bin");
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i * 17 % 251) as u8).collect();
    std::fs::write(&source, &data).unwrap();
    let source_text = source.display().to_string();
    run_tool_ok("nbdcopy", &[&source_text, &nbds("disk", &backup)], SLOW);
    let back = run_dir(NAME).join("back.bin");
    run_tool_ok(
        "nbdcopy",
        &[&nbds("disk", &backup), &back.display().to_string()],
        SLOW,
    );
    assert!(std::fs::read(&back).unwrap()[..MIB as usize] == data[..]);
    let listed = run_tool_ok("nbdinfo", &["--list", "--json", &nbds("", &backup)], SLOW);
    assert!(listed.contains("\"disk\""), "{listed}");

    // Another certificate of the same CA: the policy error, nothing listed.
    let refused = run_tool("nbdinfo", &["--size", &nbds("disk", &stranger)], SLOW);
    assert!(!refused.success(), "stranger must be refused");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("policy"), "stranger's refusal:\n{said}");
    let listed = run_tool("nbdinfo", &["--list", "--json", &nbds("", &stranger)], SLOW);
    let said = format!("{}{}", listed.stdout, listed.stderr);
    assert!(!said.contains("\"disk\""), "stranger's list:\n{said}");

    // A read-only grant by name: reads, but no writes.
    let size = run_tool_ok("nbdinfo", &["--size", &nbds("disk", &reader)], SLOW);
    assert_eq!(size.trim(), (4 * MIB).to_string());
    let write = run_tool("nbdcopy", &[&source_text, &nbds("disk", &reader)], SLOW);
    assert!(!write.success(), "reader must not write");

    // No client certificate: the handshake fails; the named one still works.
    let anonymous = cert_dir(NAME, "ca.pem");
    assert!(!run_tool("nbdinfo", &["--size", &nbds("disk", &anonymous)], SLOW).success());

    // QEMU's client, TLS 1.2 and TLS 1.3 forced by GnuTLS priority.
    for version in ["TLS1.2", "TLS1.3"] {
        let object = format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={},priority=NORMAL:-VERS-ALL:+VERS-{version}",
            backup.display()
        );
        let image = format!("driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0");
        let io = run_tool_ok(
            "qemu-io",
            &[
                "--object",
                &object,
                "--image-opts",
                &image,
                "-c",
                "write -P 0x5a 8192 4096",
                "-c",
                "read -P 0x5a 8192 4096",
            ],
            SLOW,
        );
        assert!(
            io.contains("read 4096/4096 bytes"),
            "{version} qemu-io:\n{io}"
        );
    }

    // HTTPS: /healthz for anyone who completes the handshake; the other
    // routes by certificate name, TLS 1.2 and 1.3.
    let (code, body) = curl(https, "/healthz", Some(&stranger), &[]);
    assert_eq!(code, "200", "{body}");
    let (code, body) = curl(https, "/metrics", Some(&stranger), &[]);
    assert_eq!(code, "403", "{body}");
    for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
        let (code, body) = curl(https, "/metrics", Some(&backup), version);
        assert_eq!(code, "200", "{version:?}: {body}");
        assert!(body.contains("daxbox_access_refusals_total"), "{body}");
    }
    let (code, body) = curl(https, "/healthz", None, &[]);
    assert_eq!(code, "000", "no client certificate must fail: {body}");
    // Plaintext HTTP to the HTTPS port: no HTTP answer, and the port goes
    // on serving.
    let plain = run_tool(
        "curl",
        &[
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{https}/healthz"),
        ],
        SLOW,
    );
    assert_eq!(plain.stdout.trim(), "000", "{}", plain.stderr);
    let (code, body) = curl(https, "/healthz", Some(&backup), &[]);
    assert_eq!(code, "200", "{body}");

    let nbd = machine.command("nbd")?;
    assert!(nbd.contains("refused:"), "nbd:\n{nbd}");
    Ok(())
}

/// 64 clients that send `NBD_OPT_STARTTLS` and then nothing (stalled
/// before their ClientHello) and 64 that send half a ClientHello to the
/// HTTPS port: the handshake deadline (the NBD option deadline, 10 s; the
/// HTTP head deadline) closes every one of them, and a good TLS client is
/// served afterwards on both ports.
#[test]
fn clients_stalled_mid_handshake_are_closed_by_the_deadline() -> Result<(), HarnessError> {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    const NAME: &str = "tls_stalled";
    let config = format!(
        "format=if-blank\ntls=require\nhttp_port=8080\nhttps_port=80\n{}{}",
        pem_lines("tls_cert", &testdata("server.pem")),
        pem_lines("tls_key", &testdata("server-key.pem")),
    );
    let nvdimm = Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 64 * MIB);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(&config)
        .with_nvdimm(nvdimm);
    let mut machine = Machine::boot_to_prompt(options)?;
    machine.command("create disk 4M")?;
    let port = machine.nbd_port();
    let https = machine.http_port();
    let good = cert_dir(NAME, "ca.pem");
    let nbds = format!(
        "nbds://127.0.0.1:{port}/disk?tls-certificates={}",
        good.display()
    );
    run_tool_ok("nbdinfo", &["--size", &nbds], SLOW);

    // NBD: greeting (18 bytes), fixed-newstyle client flags, STARTTLS
    // (option 5, no data), its ACK (20 bytes), then silence.
    let mut starttls = Vec::new();
    starttls.extend_from_slice(&1u32.to_be_bytes());
    starttls.extend_from_slice(b"IHAVEOPT");
    starttls.extend_from_slice(&5u32.to_be_bytes());
    starttls.extend_from_slice(&0u32.to_be_bytes());
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut greeting = [0u8; 18];
        if s.read_exact(&mut greeting).is_ok() && s.write_all(&starttls).is_ok() {
            stalled.push(s);
        }
    }
    // HTTPS: the first 40 bytes of a TLS record header + ClientHello
    // that promises more, then silence.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.resize(40, 0x42);
    for _ in 0..64 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", https)) {
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            if s.write_all(&hello).is_ok() {
                stalled.push(s);
            }
        }
    }
    assert!(
        stalled.len() >= 64,
        "only {} stalled clients",
        stalled.len()
    );
    // Every stalled connection is ended by the server (EOF or reset),
    // whatever it was sent before (the STARTTLS ACK, a refusal).
    for s in &mut stalled {
        let mut sink = Vec::new();
        let ended = match s.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(ended, "a stalled client was not closed by the deadline");
    }
    drop(stalled);
    // Good clients on both ports afterwards.
    let size = run_tool_ok("nbdinfo", &["--size", &nbds], SLOW);
    assert_eq!(size.trim(), (4 * MIB).to_string());
    let (code, body) = curl(https, "/healthz", None, &[]);
    assert_eq!(code, "200", "{body}");
    Ok(())
}

/// Bad input to both TLS ports of the booted appliance, each followed by a
/// good client: plaintext NBD right after the STARTTLS ACK, garbage and an
/// oversized record header to HTTPS, a TLS 1.2 renegotiation request
/// (`openssl s_client`'s `R`; rustls offers none). Each bad connection
/// ends, nothing panics, and the service keeps serving; an object written
/// over plaintext NBD (`tls=on` allows it) reads back byte for byte over
/// HTTPS with `curl --cacert` (an anonymous-read bucket).
#[test]
fn bad_input_to_tls_ends_that_connection_and_an_object_reads_over_https() -> Result<(), HarnessError>
{
    use std::io::{Read, Write};
    use std::net::TcpStream;
    const NAME: &str = "tls_bad_input";
    let config = format!(
        "format=if-blank\ntls=on\nhttp_port=8080\nhttps_port=80\n\
         s3_key=AKSYSTEST:system-test-secret-0123\ns3_anonymous=pmem0:read\n{}{}",
        pem_lines("tls_cert", &testdata("server.pem")),
        pem_lines("tls_key", &testdata("server-key.pem")),
    );
    let nvdimm = Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 64 * MIB);
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(&config)
        .with_nvdimm(nvdimm);
    let mut machine = Machine::boot_to_prompt(options)?;
    machine.command("create obj 1M")?;
    let port = machine.nbd_port();
    let https = machine.http_port();
    let good = cert_dir(NAME, "ca.pem");
    let nbds = format!(
        "nbds://127.0.0.1:{port}/obj?tls-certificates={}",
        good.display()
    );

    // An object written over plaintext NBD, read over HTTPS.
    let source = run_dir(NAME).join("source.bin");
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i * 29 % 253) as u8).collect();
    std::fs::write(&source, &data).unwrap();
    run_tool_ok(
        "nbdcopy",
        &[&source.display().to_string(), &uri(port, "obj")],
        SLOW,
    );
    let fetched = run_dir(NAME).join("fetched.bin");
    let fetched_text = fetched.display().to_string();
    let (code, body) = curl(https, "/pmem0/obj", None, &["-o", &fetched_text]);
    assert_eq!(code, "200", "{body}");
    assert!(
        std::fs::read(&fetched).unwrap() == data,
        "the object read over HTTPS is the bytes written over NBD"
    );

    // The end of one connection: EOF or a reset, within the read timeout.
    let ended = |s: &mut TcpStream| {
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };

    // NBD: STARTTLS acknowledged, then plaintext options instead of a
    // ClientHello.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    let mut starttls = Vec::new();
    starttls.extend_from_slice(&1u32.to_be_bytes());
    starttls.extend_from_slice(b"IHAVEOPT");
    starttls.extend_from_slice(&5u32.to_be_bytes());
    starttls.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&starttls).unwrap();
    let mut ack = [0u8; 20];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(
        u32::from_be_bytes(ack[12..16].try_into().unwrap()),
        1,
        "NBD_REP_ACK to STARTTLS"
    );
    let mut list = Vec::new();
    list.extend_from_slice(b"IHAVEOPT");
    list.extend_from_slice(&3u32.to_be_bytes());
    list.extend_from_slice(&0u32.to_be_bytes());
    let _ = s.write_all(&list);
    assert!(
        ended(&mut s),
        "plaintext after STARTTLS ends the connection"
    );

    // HTTPS: garbage, then a handshake record header promising 64 KiB.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let oversized = [0x16u8, 0x03, 0x03, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb];
    for bytes in [&garbage[..], &oversized[..]] {
        let mut s = TcpStream::connect(("127.0.0.1", https)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let _ = s.write_all(bytes);
        assert!(ended(&mut s), "bad TLS input ends the connection");
    }

    // A TLS 1.2 renegotiation request: whatever openssl reports, the
    // appliance goes on serving.
    let ca = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../net/tls/testdata/ca.pem")
        .display()
        .to_string();
    let script = format!(
        "(echo R; sleep 3) | timeout 60 openssl s_client -tls1_2 -connect localhost:{https} \
         -servername localhost -CAfile {ca}"
    );
    let renegotiation = run_tool("sh", &["-c", &script], SLOW);
    assert!(
        renegotiation.stdout.contains("Verify return code: 0"),
        "the TLS 1.2 handshake before the renegotiation request: {}{}",
        renegotiation.stdout,
        renegotiation.stderr
    );

    // Good clients on both ports afterwards, through TLS.
    let size = run_tool_ok("nbdinfo", &["--size", &nbds], SLOW);
    assert_eq!(size.trim(), MIB.to_string());
    let (code, body) = curl(https, "/healthz", None, &[]);
    assert_eq!(code, "200", "{body}");
    let output = machine.output();
    assert!(!output.contains("panicked"), "console:\n{output}");
    Ok(())
}

/// A boot config with `tls=require` and the test certificate.
fn require_config() -> String {
    format!(
        "format=if-blank\ntls=require\n{}{}",
        pem_lines("tls_cert", &testdata("server.pem")),
        pem_lines("tls_key", &testdata("server-key.pem")),
    )
}

#[test]
fn virtio_rng_is_the_entropy_when_the_cpu_has_no_rdrand() -> Result<(), HarnessError> {
    const NAME: &str = "tls_virtio_rng";
    let nvdimm = Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 64 * MIB);
    // After the harness's `-cpu qemu64,+rdrand`: the last -cpu wins, and
    // qemu64 has no RDRAND.
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(require_config())
        .with_nvdimm(nvdimm)
        .with_extra_args(["-cpu", "qemu64", "-device", "virtio-rng-pci"]);
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains("entropy: virtio-rng at "),
        "boot log:\n{boot}"
    );
    assert!(
        boot.contains("tls: require certificate loaded"),
        "boot log:\n{boot}"
    );
    machine.command("create disk 4M")?;
    let port = machine.nbd_port();
    let good = cert_dir(NAME, "ca.pem");
    let nbds = format!(
        "nbds://127.0.0.1:{port}/disk?tls-certificates={}",
        good.display()
    );
    // Two handshakes: each takes fresh randomness from the device.
    for _ in 0..2 {
        let size = run_tool_ok("nbdinfo", &["--size", &nbds], SLOW);
        assert_eq!(size.trim(), (4 * MIB).to_string());
    }
    Ok(())
}

#[test]
fn without_rdrand_or_virtio_rng_tls_is_refused() -> Result<(), HarnessError> {
    const NAME: &str = "tls_no_entropy";
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(require_config())
        .with_extra_args(["-cpu", "qemu64"]);
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains("entropy: none: TLS refused"),
        "boot log:\n{boot}"
    );
    assert!(
        boot.contains(
            "tls: no entropy source (no RDRAND, no virtio-rng; start QEMU with -cpu max or \
             -device virtio-rng-pci); NBD and HTTPS not served (fail closed)"
        ),
        "boot log:\n{boot}"
    );
    let shown = machine.command("bootconfig")?;
    assert!(
        shown.contains("tls=require FAILED: no entropy source"),
        "bootconfig:\n{shown}"
    );
    Ok(())
}

/// virtio-rng rate-limited by QEMU to `max_bytes` per 10 minutes: once
/// they are used up the device holds every request past the kernel's
/// 1 s bound.
fn starved_rng(max_bytes: u32) -> [String; 6] {
    [
        "-cpu".into(),
        "qemu64".into(),
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        format!("virtio-rng-pci,rng=rng0,max-bytes={max_bytes},period=600000"),
    ]
}

#[test]
fn a_virtio_rng_that_stops_answering_fails_closed() -> Result<(), HarnessError> {
    const NAME: &str = "tls_rng_timeout";
    // 16 bytes: the boot probe asks for 32, gets 16, and the next request
    // is held for 10 minutes.
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(require_config())
        .with_extra_args(starved_rng(16));
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(
        boot.contains("failed: virtio-rng did not answer within 1000 ms; none: TLS refused"),
        "boot log:\n{boot}"
    );
    assert!(
        boot.contains("tls: virtio-rng failed earlier and is not used; NBD and HTTPS not served"),
        "boot log:\n{boot}"
    );
    // The appliance keeps running.
    let shown = machine.command("bootconfig")?;
    assert!(shown.contains("tls=require FAILED: virtio-rng"), "{shown}");
    Ok(())
}

#[test]
fn a_virtio_rng_that_stops_answering_mid_service_ends_only_that_handshake(
) -> Result<(), HarnessError> {
    const NAME: &str = "tls_rng_starved_handshake";
    // What boot takes: the two probes (32 bytes each) and the 1024 bytes
    // set aside before the server is built. The first handshake's top-up
    // then waits past the bound.
    let options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config(require_config())
        .with_extra_args(starved_rng(32 + 32 + 1024));
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    assert!(boot.contains("tls: require certificate loaded"), "{boot}");
    machine.command("create disk 4M")?;
    let port = machine.nbd_port();
    let good = cert_dir(NAME, "ca.pem");
    let nbds = format!(
        "nbds://127.0.0.1:{port}/disk?tls-certificates={}",
        good.display()
    );
    // The first handshake times out on the device, the second finds it
    // given up: each ends only its connection, the kernel keeps running.
    for _ in 0..2 {
        assert!(!run_tool("nbdinfo", &["--size", &nbds], SLOW).success());
    }
    let shown = machine.command("bootconfig")?;
    assert!(
        shown.contains("tls=require (certificate loaded)"),
        "{shown}"
    );
    Ok(())
}
