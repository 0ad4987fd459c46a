//! The `allow=` rules on the booted appliance, with real clients from
//! several source addresses (needs root).
//!
//! The grammar, the policy, the NBD filtering and HTTP `403` are host
//! tested (`daxbox-bootconfig` `allow.rs`, `daxbox-storage` `allow.rs` and
//! `nbd.rs`, `daxbox-netstack` `http.rs`); what stays here needs the
//! kernel: the rules read from the ramdisk, client addresses as the
//! guest's TCP stack sees them, the listeners, the console and the shell.
//!
//! Network: a namespace `lan` holds a bridge and the tap QEMU uses (guest
//! 198.18.0.2); three client namespaces, each a veth into the bridge with
//! one address (198.18.0.10, .11, .12), run the clients, so each client's
//! source address is its namespace's. Every namespace is deleted by name
//! when the test ends (drop guards, also on failure), and QEMU is killed
//! by PID (the `Machine`'s drop).
//!
//! Rules: .10 may read and write `disk` over NBD and use HTTP; .11 may
//! read everything over NBD and the object `disk` over HTTP; .12 has no
//! rule. The object API is spoken with `curl --aws-sigv4` (signed with
//! the boot config's key): .10 writes and reads, .11 reads `disk` but its
//! PUT is `403 AccessDenied` (read-only) and `secret` is refused, .12 is
//! refused everything; `/metrics` shows the refusals. A second boot has a rule
//! that cannot be parsed for NBD: the NBD port is not served at all, the
//! console and `bootconfig` say why, HTTP still is.

use std::time::Duration;

use daxbox_tests::nbd_client::test_image;
use daxbox_tests::netns::Netns;
use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const NAME: &str = "allow_client_addresses";
const MIB: u64 = 1 << 20;
const GUEST: &str = "198.18.0.2";

const BOOT_CONFIG: &str = "format=if-blank\n\
    ip=198.18.0.2/24\n\
    allow=198.18.0.11 * ro nbd\n\
    allow=198.18.0.10 disk rw nbd\n\
    allow=198.18.0.10 * rw http\n\
    allow=198.18.0.11 disk ro http\n\
    s3_key=AKSYSTEST:system-test-secret-0123\n";

const S3_USER: &str = "AKSYSTEST:system-test-secret-0123";

/// The bad line (5) fails NBD closed; HTTP keeps its rule.
const BROKEN_CONFIG: &str = "format=never\n\
    ip=198.18.0.2/24\n\
    allow=198.18.0.10 * rw http\n\
    allow=198.18.0.10 disk rw nbd\n\
    allow=198.18.0.300 disk rw nbd\n";

/// NBD_OPT_GO of export argv[2] at argv[1]:10809 with a raw socket;
/// prints the reply type in hex and the message of the last reply.
const RAW_GO: &str = r#"
import socket, struct, sys
s = socket.create_connection((sys.argv[1], 10809), timeout=20)
def read(n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit('closed')
        b += c
    return b
read(18)
s.sendall(struct.pack('!I', 1))
name = sys.argv[2].encode()
data = struct.pack('!I', len(name)) + name + struct.pack('!H', 0)
s.sendall(b'IHAVEOPT' + struct.pack('!II', 7, len(data)) + data)
while True:
    magic, opt, kind, length = struct.unpack('!QIII', read(20))
    body = read(length)
    if kind == 1 or kind & 0x80000000:
        print('%x %s' % (kind, body.decode(errors='replace')))
        break
"#;

const BROKEN_REASON: &str = "bootconfig line 5: allow: '198.18.0.300' is not an IPv4 address \
     or block (A.B.C.D or A.B.C.D/N)";

/// The namespaces; dropped (deleted) in reverse order of making.
struct Lan {
    clients: Vec<Netns>,
    lan: Netns,
}

impl Lan {
    fn create() -> Lan {
        let id = std::process::id();
        let lan = Netns::create(&format!("daxbox-allow-lan-{id}"));
        lan.must(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.must(&["ip", "link", "set", "br0", "up"]);
        lan.must(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        lan.must(&["ip", "link", "set", "tap0", "master", "br0"]);
        lan.must(&["ip", "link", "set", "tap0", "up"]);
        let mut clients = Vec::new();
        for host in [10, 11, 12] {
            let client = Netns::create(&format!("daxbox-allow-c{host}-{id}"));
            let port = format!("v{host}");
            lan.must(&[
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &client.name,
            ]);
            lan.must(&["ip", "link", "set", &port, "master", "br0"]);
            lan.must(&["ip", "link", "set", &port, "up"]);
            let address = format!("198.18.0.{host}/24");
            client.must(&["ip", "addr", "add", &address, "dev", "eth0"]);
            client.must(&["ip", "link", "set", "eth0", "up"]);
            clients.push(client);
        }
        Lan { clients, lan }
    }

    /// The client namespace of 198.18.0.`host`.
    fn client(&self, host: u8) -> &Netns {
        &self.clients[usize::from(host - 10)]
    }

    /// Runs a client tool from 198.18.0.`host` with a 60 s limit; returns
    /// (success, stdout + stderr).
    fn run(&self, host: u8, args: &[&str]) -> (bool, String) {
        // `/usr/bin` first: nbdsh needs the system python (docs/platform.md).
        let mut full = vec!["env", "PATH=/usr/bin:/bin:/usr/sbin:/sbin", "timeout", "60"];
        full.extend_from_slice(args);
        self.client(host).run(&full)
    }

    fn must(&self, host: u8, args: &[&str]) -> String {
        let (ok, text) = self.run(host, args);
        assert!(ok, "from 198.18.0.{host}: {args:?}: {text}");
        text
    }

    /// `curl` from 198.18.0.`host`: the HTTP status.
    fn http_status(&self, host: u8, path: &str) -> String {
        let url = format!("http://{GUEST}{path}");
        let text = self.must(
            host,
            &[
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        );
        text.trim().to_string()
    }

    /// A signed object-API request from 198.18.0.`host` (`curl
    /// --aws-sigv4`, payload unsigned): (status, body).
    fn s3(&self, host: u8, method: &str, path: &str, body: Option<&str>) -> (String, String) {
        let url = format!("http://{GUEST}{path}");
        // curl signs this header and takes it as the payload hash.
        let header = "x-amz-content-sha256: UNSIGNED-PAYLOAD";
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            S3_USER,
            "-H",
            header,
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        if let Some(body) = body {
            args.extend_from_slice(&["--data-binary", body]);
        }
        args.push(&url);
        let text = self.must(host, &args);
        let (body, status) = text
            .trim_end()
            .rsplit_once('\n')
            .unwrap_or(("", text.trim()));
        (status.to_string(), body.to_string())
    }

    fn boot(&self, config: &str, fresh: bool) -> Result<Machine, HarnessError> {
        let image = run_dir(NAME).join("nvdimm0.img");
        let nvdimm = if fresh {
            Nvdimm::fresh(image, 64 * MIB)
        } else {
            Nvdimm::existing(image, 64 * MIB)
        };
        let mut options = QemuOptions::new(NAME, Firmware::Bios)
            .with_boot_config(config)
            .with_nvdimm(nvdimm);
        self.lan
            .run_qemu_inside(&mut options, &run_dir("allow_wrapper"), "tap0");
        options.max_runtime = Duration::from_secs(400);
        Machine::boot_to_prompt(options)
    }
}

fn nbd_uri(export: &str) -> String {
    format!("nbd://{GUEST}:10809/{export}")
}

#[test]
fn allowed_read_only_and_refused_clients_and_a_broken_rule() -> Result<(), HarnessError> {
    let lan = Lan::create();
    let mut machine = lan.boot(BOOT_CONFIG, true)?;
    let boot_log = machine.output();
    assert!(
        boot_log.contains("allow: 4 rule(s), first match decides"),
        "{boot_log}"
    );
    for command in ["create disk 4M", "create secret 1M"] {
        let out = machine.command(command)?;
        assert!(out.contains("created"), "{out}");
    }

    // .10: sees and writes `disk` only (nbdcopy round trip).
    let dir = run_dir(NAME);
    let upload = dir.join("upload.raw");
    let download = dir.join("download.raw");
    let data = test_image(4 * MIB as usize, 7);
    std::fs::write(&upload, &data).expect("writing the upload");
    let (upload, download) = (upload.to_str().unwrap(), download.to_str().unwrap());
    lan.must(10, &["nbdcopy", upload, &nbd_uri("disk")]);
    lan.must(10, &["nbdcopy", &nbd_uri("disk"), download]);
    assert!(
        std::fs::read(download).expect("the download") == data,
        "the round trip through disk changed the data"
    );
    let list = lan.must(10, &["nbdinfo", "--list", &nbd_uri("")]);
    assert!(list.contains("export=\"disk\""), "{list}");
    assert!(!list.contains("secret"), ".10 is not shown secret:\n{list}");
    let (ok, text) = lan.run(10, &["nbdinfo", &nbd_uri("secret")]);
    assert!(!ok, "{text}");
    let reply = lan.must(10, &["python3", "-c", RAW_GO, GUEST, "secret"]);
    assert_eq!(
        reply.trim(),
        "80000002 access denied by the server's allow-list",
        "NBD_REP_ERR_POLICY with the reason"
    );

    // .11: sees everything, read-only; a write is refused by the server
    // (strict mode off, so libnbd sends it).
    let list = lan.must(11, &["nbdinfo", "--list", &nbd_uri("")]);
    assert!(
        list.contains("\"disk\"") && list.contains("\"secret\""),
        "{list}"
    );
    let info = lan.must(11, &["nbdinfo", &nbd_uri("disk")]);
    assert!(info.contains("is_read_only: true"), "{info}");
    let script = format!(
        "h.connect_uri('{}')\n\
         h.set_strict_mode(0)\n\
         assert h.pread(4, 0) == bytes({:?})\n\
         try:\n    h.pwrite(b'x' * 512, 0)\n    print('written')\n\
         except nbd.Error as e:\n    print('refused', e.errno, e)\n",
        nbd_uri("disk"),
        &data[..4]
    );
    let out = lan.must(11, &["/usr/bin/nbdsh", "-c", &script]);
    // "command failed": the server answered EPERM (not libnbd refusing).
    assert!(
        out.contains("refused EPERM") && out.contains("command failed"),
        "EPERM from the server expected: {out}"
    );

    // .12: no rule: POLICY, nothing listed.
    let (ok, text) = lan.run(12, &["nbdinfo", &nbd_uri("disk")]);
    assert!(!ok, "{text}");
    let reply = lan.must(12, &["python3", "-c", RAW_GO, GUEST, "disk"]);
    assert!(reply.starts_with("80000002 "), "{reply}");
    // A name that opens nothing: the same refusal, nothing learnt.
    let reply = lan.must(12, &["python3", "-c", RAW_GO, GUEST, "no-such"]);
    assert!(reply.starts_with("80000002 "), "{reply}");
    let (_, list) = lan.run(12, &["nbdinfo", "--list", &nbd_uri("")]);
    assert!(!list.contains("disk") && !list.contains("secret"), "{list}");

    // HTTP: .10 and .11 are served, .12 gets 403 except on /healthz.
    assert_eq!(lan.http_status(10, "/healthz"), "200");
    assert_eq!(lan.http_status(10, "/nothing"), "404");
    assert_eq!(lan.http_status(12, "/nothing"), "403");
    assert_eq!(lan.http_status(11, "/nothing"), "404");
    assert_eq!(lan.http_status(12, "/healthz"), "200");

    // The object API: .10 writes and reads anything.
    let (status, body) = lan.s3(10, "PUT", "/pmem0/note.txt", Some("from .10"));
    assert_eq!(status, "200", "{body}");
    let (status, body) = lan.s3(10, "GET", "/pmem0/note.txt", None);
    assert_eq!((status.as_str(), body.as_str()), ("200", "from .10"));
    let (status, body) = lan.s3(10, "GET", "/pmem0?list-type=2", None);
    assert_eq!(status, "200", "{body}");
    for key in [
        "<Key>disk</Key>",
        "<Key>secret</Key>",
        "<Key>note.txt</Key>",
    ] {
        assert!(body.contains(key), "{key} in {body}");
    }
    // .11 reads `disk` (and lists only it); its PUT is refused as
    // read-only, `secret` and `note.txt` by the allow-list.
    let (status, body) = lan.s3(11, "GET", "/pmem0/disk", None);
    assert_eq!(status, "200", "{body}");
    let (status, body) = lan.s3(11, "GET", "/pmem0?list-type=2", None);
    assert_eq!(status, "200", "{body}");
    assert!(
        body.contains("<Key>disk</Key>") && !body.contains("secret") && !body.contains("note.txt"),
        "{body}"
    );
    let (status, body) = lan.s3(11, "PUT", "/pmem0/disk", Some("overwrite"));
    assert_eq!(status, "403", "{body}");
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("read-only"),
        "{body}"
    );
    let (status, body) = lan.s3(11, "GET", "/pmem0/secret", None);
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    // .12 is refused before any route.
    let (status, _) = lan.s3(12, "GET", "/pmem0/note.txt", None);
    assert_eq!(status, "403");
    let (status, _) = lan.s3(12, "PUT", "/pmem0/note.txt", Some("from .12"));
    assert_eq!(status, "403");
    let (_, body) = lan.s3(10, "GET", "/pmem0/note.txt", None);
    assert_eq!(body, "from .10", ".12 changed nothing");
    let metrics = lan.must(
        10,
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            &format!("http://{GUEST}/metrics"),
        ],
    );
    for line in [
        "daxbox_access_refusals_total{client=\"198.18.0.11\",reason=\"policy\"} 1\n",
        "daxbox_access_refusals_total{client=\"198.18.0.11\",reason=\"read_only_write\"} 2\n",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // The shell counts refusals by reason and address (.11's policy
    // refusal is its GET of `secret`, its read-only writes the NBD write
    // and the PUT).
    let nbd = machine.command("nbd")?;
    assert!(
        nbd.contains("  198.18.0.11: 1 policy, 2 read-only write"),
        "{nbd}"
    );
    for refused in ["  198.18.0.10: ", "  198.18.0.12: "] {
        let line = nbd
            .lines()
            .find(|l| l.starts_with(refused))
            .unwrap_or_else(|| panic!("no line for{refused}:\n{nbd}"));
        assert!(
            !line.contains(": 0 policy") && line.ends_with(" policy, 0 read-only write"),
            "{nbd}"
        );
    }
    let config = machine.command("bootconfig")?;
    assert!(config.contains("allow=198.18.0.11 * ro nbd"), "{config}");
    machine.kill();
    drop(machine);

    // A rule that cannot be parsed: NBD is not served at all.
    let mut machine = lan.boot(BROKEN_CONFIG, false)?;
    let boot_log = machine.output();
    let expected = format!("nbd: not served (failing closed): {BROKEN_REASON}");
    assert!(boot_log.contains(&expected), "{boot_log}");
    assert!(!boot_log.contains("nbd: listening"), "{boot_log}");
    let (ok, text) = lan.run(10, &["nbdinfo", &nbd_uri("disk")]);
    assert!(!ok, "NBD served despite the broken rule: {text}");
    assert_eq!(lan.http_status(10, "/healthz"), "200", "HTTP is served");
    let config = machine.command("bootconfig")?;
    assert!(
        config.contains(&format!(
            "allow: nbd not served (failing closed): {BROKEN_REASON}"
        )),
        "{config}"
    );
    drop(machine);
    drop(lan);
    Ok(())
}
