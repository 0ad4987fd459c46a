//! Floods against the booted appliance: no client can take every
//! connection slot or the heap, and after each flood a fresh client is
//! served and the shell answers.
//!
//! Through QEMU's user network every host client has the guest-side
//! address 10.0.2.2, so the flooder and the fresh client share one address:
//! the per-address limit keeps the flood from taking every slot, and the
//! fresh client gets in once the flood's handshakes time out (NBD: 10 s
//! from the accept, not restarted by anything the client sends; HTTP: the
//! request head must be complete 10 s after its first byte). The bounded waits
//! below are that deadline plus 5 s; a client that is not refused (HTTP
//! while the slowloris clients stay under the per-address limit) must be
//! served within 5 s. Half-open SYN floods need tap networking (QEMU's user
//! network completes TCP on the host side); they are tested on the host in
//! `net/stack/tests/loopback.rs` (`half_open_connections_are_reaped`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{
    run_tool, uri, RawClient, CMD_READ, IHAVEOPT, OPT_LIST, REP_ACK, REP_SERVER,
};
use daxbox_tests::netns::Netns;
use daxbox_tests::{run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;
/// Per-call limit for client tools.
const QUICK: Duration = Duration::from_secs(60);
/// The kernel's NBD handshake timeout and HTTP head deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Files on the appliance during the `NBD_OPT_LIST` flood.
const FILES: usize = 2000;

/// `limit` stretched by the host's load (see [`load_factor`]).
/// `curl` with a timeout; returns (HTTP status, body).
fn curl(url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Retries `/healthz` until it answers 200; fails after `limit`. Returns
/// how long it took.
fn healthz_within(http_port: u16, limit: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    loop {
        let (status, body) = curl(&url);
        if status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: /healthz not served within {limit:?} (last: {status} {body:?})"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Retries `nbdinfo` on `disk` until it succeeds; fails after `limit`.
/// Returns how long it took.
fn nbdinfo_within(port: u16, limit: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let output = run_tool("nbdinfo", &[&uri(port, "disk")], QUICK);
        if output.success() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: nbdinfo not served within {limit:?}: {}",
            output.stderr
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// The shell answers a command.
fn shell_answers(machine: &mut Machine, what: &str) -> Result<(), HarnessError> {
    let version = machine.command("version")?;
    assert!(version.starts_with("daxbox "), "{what}: shell: {version}");
    Ok(())
}

/// The figure after `label` in a `refused:` line of `net` for `port`.
fn refused(net: &str, port: u16, label: &str) -> u64 {
    let mut lines = net.lines();
    let prefix = format!("port {port}: ");
    lines
        .by_ref()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no port {port} line in:\n{net}"));
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no refused line for port {port} in:\n{net}"));
    let (before, _) = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no `{label}` in {line:?}"));
    before
        .rsplit([' ', ','])
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count before `{label}` in {line:?}"))
}

/// A `mem` figure such as `heap used:      45.3 MiB`, in bytes.
fn mem_bytes(mem: &str, label: &str) -> f64 {
    let line = mem
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` in:\n{mem}"));
    let mut words = line[label.len()..].split_whitespace();
    let number: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
    let unit = match words.next() {
        Some("KiB") => 1024.0,
        Some("MiB") => 1024.0 * 1024.0,
        Some("GiB") => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    number * unit
}

/// Creates `count` small files through the serial shell, in batches (the
/// console has flow control: QEMU feeds the UART only as it drains).
fn create_files(machine: &mut Machine, count: usize) -> Result<(), HarnessError> {
    let batch = 100;
    for start in (0..count).step_by(batch) {
        let end = (start + batch).min(count);
        let mut lines = String::new();
        for i in start..end {
            lines.push_str(&format!("create f{i:04} 4K\r"));
        }
        machine.send_raw(lines.as_bytes())?;
        machine.wait_for(
            &format!("created f{:04} (4096 bytes)", end - 1),
            Duration::from_secs(120),
        )?;
    }
    // Settle at a prompt for the next command.
    shell_answers(machine, "after creating files")
}

/// Connects `count` times to `port` (connections the forwarder could not
/// make are skipped).
fn connect_many(port: u16, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect()
}

/// An NBD session in the transmission phase reads 4 KiB of `disk`.
fn session_reads(session: &mut RawClient, cookie: u64, what: &str) {
    session.request(CMD_READ, cookie, 0, 4096, &[]);
    assert_eq!(session.simple(), (0, cookie), "{what}: established session");
    session.read_bytes(4096);
}

#[test]
fn nbd_and_http_floods_leave_room_for_new_clients() -> Result<(), HarnessError> {
    const NAME: &str = "flood";
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 256 * MIB));
    options.max_runtime = Duration::from_secs(600);
    let mut machine = Machine::boot_to_prompt(options)?;
    let port = machine.nbd_port();
    let http_port = machine.http_port();
    let boot = machine.output();
    assert!(
        boot.contains("nbd: listening on port 10809 (at most 64 connections, 32 per address)"),
        "{boot}"
    );
    let out = machine.command("create disk 16M")?;
    assert!(out.contains("created disk"), "{out}");
    healthz_within(http_port, scaled(Duration::from_secs(30)), "boot");
    nbdinfo_within(port, scaled(Duration::from_secs(30)), "boot");
    let config = machine.command("bootconfig")?;
    for line in [
        "nbd_max_connections=64",
        "nbd_max_per_address=32",
        "http_max_connections=32",
        "http_max_per_address=16",
    ] {
        assert!(config.contains(line), "{line}:\n{config}");
    }
    let mem_idle = machine.command("mem")?;

    // A session in the transmission phase before the floods: it must keep
    // working through all of them.
    let mut session = RawClient::start(port);
    session.go("disk");
    session_reads(&mut session, 1, "before the floods");

    // --- 200 TCP connections to the NBD port, left idle ---
    let idle = connect_many(port, 200);
    eprintln!("flood: {} of 200 idle NBD connections made", idle.len());
    thread::sleep(Duration::from_secs(3));
    let net = machine.command("net")?;
    let mem_flood = machine.command("mem")?;
    eprintln!("flood: during 200 idle connections:\n{net}\n{mem_flood}");
    // Bounded by the per-address limit, or (when the forwarder made the
    // connections slower than the deadline ends them) by the handshake
    // deadline: never more than 32 from one address.
    let over_address = refused(&net, 10809, "over per-address");
    let timed_out = refused(&net, 10809, "timed out");
    assert!(
        over_address + timed_out > 0,
        "neither the per-address limit nor the handshake deadline ended anything:\n{net}"
    );
    assert!(
        port_figure(&net, 10809, " active") <= 32,
        "more than 32 connections from one address:\n{net}"
    );
    // Memory per idle connection: the heap's growth over the connections
    // open now (served and being refused), against the same machine
    // before the flood.
    let sockets = port_figure(&net, 10809, " active") + port_figure(&net, 10809, " refusing");
    let heap = mem_bytes(&mem_flood, "heap used:") - mem_bytes(&mem_idle, "heap used:");
    eprintln!(
        "flood: heap used grew {:.1} KiB with {sockets} NBD connections open: {:.1} KiB each",
        heap / 1024.0,
        heap / 1024.0 / sockets.max(1) as f64
    );
    session_reads(&mut session, 2, "during 200 idle connections");
    shell_answers(&mut machine, "during 200 idle connections")?;
    let http = healthz_within(http_port, scaled(Duration::from_secs(5)), "200 idle NBD");
    let nbd = nbdinfo_within(
        port,
        scaled(HANDSHAKE_TIMEOUT + Duration::from_secs(5)),
        "200 idle NBD connections",
    );
    eprintln!(
        "flood: 200 idle NBD connections: /healthz after {:.1} s, nbdinfo after {:.1} s (flood still open)",
        http.as_secs_f64(),
        nbd.as_secs_f64()
    );
    drop(idle);

    // --- 64 clients that ask for the list of 2,000 exports, never read ---
    create_files(&mut machine, FILES)?;
    let mut listers = Vec::new();
    for stream in connect_many(port, 64) {
        let mut stream = stream;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut greeting = [0u8; 18];
        if stream.read_exact(&mut greeting).is_err() {
            continue; // reset: over the limits
        }
        let mut hello = 3u32.to_be_bytes().to_vec();
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&OPT_LIST.to_be_bytes());
        hello.extend_from_slice(&0u32.to_be_bytes());
        if stream.write_all(&hello).is_ok() {
            listers.push(stream);
        }
    }
    eprintln!("flood: {} listing clients that never read", listers.len());
    thread::sleep(Duration::from_secs(3));
    let mem_list = machine.command("mem")?;
    let net = machine.command("net")?;
    eprintln!("flood: during the listing flood:\n{net}\n{mem_list}");
    let nbd_budget = mem_list
        .lines()
        .find(|l| l.starts_with("budget nbd"))
        .unwrap_or_else(|| panic!("no nbd budget in:\n{mem_list}"))
        .to_string();
    assert!(nbd_budget.ends_with(" 0 refused"), "{nbd_budget}");
    session_reads(&mut session, 3, "during the listing flood");
    shell_answers(&mut machine, "during the listing flood")?;
    healthz_within(http_port, scaled(Duration::from_secs(5)), "listing flood");
    let nbd = nbdinfo_within(
        port,
        scaled(HANDSHAKE_TIMEOUT + Duration::from_secs(5)),
        "listing flood",
    );
    eprintln!(
        "flood: listing flood: nbdinfo after {:.1} s",
        nbd.as_secs_f64()
    );
    // A listing client that finally reads gets every name and the ACK, or
    // was closed by the handshake timeout meanwhile: either way the
    // appliance held only a bounded part of the list for it.
    drop(listers);
    // A client that reads gets every name, then the ACK.
    let mut lister = RawClient::start(port);
    lister.option(OPT_LIST, &[]);
    let mut names = 0;
    loop {
        let (option, reply, _) = lister.option_reply();
        assert_eq!(option, OPT_LIST);
        if reply == REP_ACK {
            break;
        }
        assert_eq!(reply, REP_SERVER);
        names += 1;
    }
    assert_eq!(names, FILES + 1, "every export listed");
    drop(lister);

    // --- slowloris: 12 HTTP clients trickling a request head ---
    let trickles: Vec<_> = (0..12)
        .map(|index| {
            thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", http_port))
                    .unwrap_or_else(|e| panic!("slowloris {index}: connect: {e}"));
                stream
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .ok();
                let started = Instant::now();
                let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                let mut reply = Vec::new();
                for byte in head {
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    let mut buf = [0u8; 1024];
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            reply.extend_from_slice(&buf[..n]);
                            break;
                        }
                        Err(_) => {}
                    }
                    thread::sleep(Duration::from_millis(900));
                }
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
                reply.extend_from_slice(&rest);
                let _ = stream.shutdown(Shutdown::Both);
                (reply, started.elapsed())
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let http = healthz_within(http_port, scaled(Duration::from_secs(5)), "slowloris");
    shell_answers(&mut machine, "slowloris")?;
    session_reads(&mut session, 4, "slowloris");
    for (index, handle) in trickles.into_iter().enumerate() {
        let (reply, took) = handle.join().expect("slowloris thread");
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "slowloris {index} after {:.1} s: {text:?}",
            took.as_secs_f64()
        );
        assert!(
            took < scaled(HANDSHAKE_TIMEOUT + Duration::from_secs(10)),
            "slowloris {index} held the connection {took:?}"
        );
    }
    let net = machine.command("net")?;
    eprintln!(
        "flood: slowloris: /healthz after {:.1} s while 12 heads trickled; all got 408\n{net}",
        http.as_secs_f64()
    );
    healthz_within(http_port, scaled(Duration::from_secs(5)), "after slowloris");
    nbdinfo_within(port, scaled(Duration::from_secs(5)), "after everything");
    session_reads(&mut session, 5, "after everything");
    Ok(())
}

/// Sends `count` TCP SYNs to `dst`:`port` from spoofed addresses
/// 198.18.0.100-199 of the tap network (nobody answers ARP for them, so
/// the handshakes are never completed): raw IPv4/TCP from python3.
const SYN_FLOOD: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(count):
    src = '198.18.0.%d' % (100 + i % 100)
    tcp = struct.pack('!HHIIBBHHH', 20000 + i, port, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), i & 0xffff, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + tcp, (dst, 0))
print('sent', count)
"#;

/// The figure before `label` (e.g. `" half-open"`) in the `port P:` line
/// of `net`.
fn port_figure(net: &str, port: u16, label: &str) -> u64 {
    let prefix = format!("port {port}: ");
    let line = net
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no port {port} line in:\n{net}"));
    let (before, _) = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no `{label}` in {line:?}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count before `{label}` in {line:?}"))
}

/// 500 half-open SYNs over tap networking in a namespace the test makes:
/// the appliance drops them within a few seconds, and a real client from
/// another address is served meanwhile and after.
#[test]
fn half_open_syn_flood_over_tap_is_reaped() -> Result<(), HarnessError> {
    const NAME: &str = "flood_synflood";
    let netns = Netns::create(&format!("daxbox-synflood-{}", std::process::id()));
    netns.must(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
    netns.must(&["ip", "addr", "add", "198.18.0.1/24", "dev", "tap0"]);
    netns.must(&["ip", "link", "set", "tap0", "up"]);
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\nip=198.18.0.2/24\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(NAME).join("nvdimm0.img"), 64 * MIB));
    netns.run_qemu_inside(&mut options, &run_dir("flood_synflood_wrapper"), "tap0");
    options.max_runtime = Duration::from_secs(300);
    let mut machine = Machine::boot_to_prompt(options)?;
    let out = machine.command("create disk 16M")?;
    assert!(out.contains("created disk"), "{out}");
    let guest = "nbd://198.18.0.2:10809/disk";
    let nbdinfo_in_netns = |limit: Duration, what: &str| -> Duration {
        let started = Instant::now();
        loop {
            let (ok, text) = netns.run(&["nbdinfo", guest]);
            if ok {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{what}: nbdinfo over tap not served within {limit:?}: {text}"
            );
            thread::sleep(Duration::from_millis(300));
        }
    };
    nbdinfo_in_netns(scaled(Duration::from_secs(30)), "boot");

    let sent = netns.must(&["python3", "-c", SYN_FLOOD, "198.18.0.2", "10809", "500"]);
    assert!(sent.contains("sent 500"), "{sent}");
    let during = machine.command("net")?;
    let fresh = nbdinfo_in_netns(scaled(Duration::from_secs(5)), "during the SYN flood");
    shell_answers(&mut machine, "during the SYN flood")?;
    // Within the half-open timeout (5 s) plus a margin, none is left.
    let deadline = Instant::now() + scaled(Duration::from_secs(15));
    let after = loop {
        let net = machine.command("net")?;
        if port_figure(&net, 10809, " half-open") == 0 || Instant::now() >= deadline {
            break net;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        port_figure(&after, 10809, " half-open"),
        0,
        "half-open left:\n{after}"
    );
    let reaped = refused(&after, 10809, "half-open reaped");
    // SYNs that found no listening socket were reset and hold nothing;
    // the ones that took a socket were dropped.
    assert!(reaped > 0, "nothing reaped:\n{during}\n{after}");
    let most = port_figure(&during, 10809, " half-open");
    assert!(
        most <= 32 + 4,
        "{most} half-open sockets (max_half_open 32 + backlog 4):\n{during}"
    );
    assert_eq!(
        refused(&after, 10809, "budget"),
        0,
        "the flood used up the NBD memory budget:\n{after}"
    );
    nbdinfo_in_netns(scaled(Duration::from_secs(5)), "after the SYN flood");
    eprintln!(
        "flood: 500 spoofed SYNs over tap: nbdinfo served after {:.1} s during the flood; {reaped} half-open reaped\n{during}\n{after}",
        fresh.as_secs_f64()
    );
    drop(machine);
    drop(netns);
    Ok(())
}
