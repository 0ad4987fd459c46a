//! The S3 object API of `daxbox-serve` (`--http-port`) with real S3
//! clients: boto3 (a Python script next to this file) and the AWS CLI
//! (`aws s3 cp/ls/rm`), and the same object read over NBD with nbdcopy;
//! and a differential test of the same boto3 calls against moto (PyPI
//! `moto[server]`, a reference S3 implementation).
//! A missing client fails the test (`cargo xtask setup` installs boto3 and
//! the AWS CLI with pip). Every wait is bounded; the server is killed on
//! drop and its image lives in a temporary folder removed afterwards.

mod common;
use common::{text, TempDir};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ACCESS: &str = "AKDAXBOXTEST";
const SECRET: &str = "daxbox-test-secret-0123456789";
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a client to completion within `timeout` (killed after it);
/// panics unless it exits 0; returns its stdout.
fn run_tool_ok(command: &mut Command, timeout: Duration) -> String {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e} (is it installed? `cargo xtask setup`)"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a client") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{shown} failed ({status:?}, timeout {timeout:?})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// `daxbox-serve` with NBD and HTTP on free ports, killed on drop.
struct Server {
    child: Child,
    nbd_port: u16,
    http_port: u16,
    boot: String,
}

impl Server {
    fn start(image: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_daxbox-serve"))
            .args(["--image", &format!("{},size=256M", text(image))])
            .args(["--format", "if-blank", "--port", "0", "--http-port", "0"])
            .args(["--s3-key", &format!("{ACCESS}:{SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting daxbox-serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            nbd_port: 0,
            http_port: 0,
            boot: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("daxbox-serve: no `listening on` ({e}):\n{}", server.boot)
            });
            if let Some(port) = line.strip_prefix("http listening on 127.0.0.1:") {
                server.http_port = port.parse().expect("a port");
            } else if let Some(port) = line.strip_prefix("listening on 127.0.0.1:") {
                server.nbd_port = port.parse().expect("a port");
                return server;
            }
            server.boot.push_str(&line);
            server.boot.push('\n');
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command with the test's key, region and path-style config
/// (multipart only over 64 MiB).
fn aws(dir: &TempDir, args: &[&str]) -> Command {
    aws_with(
        dir,
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n    multipart_threshold = 64MB\n",
        args,
    )
}

/// A client command with the test's key and AWS CLI config `config`.
fn aws_with(dir: &TempDir, config_text: &str, args: &[&str]) -> Command {
    let config = dir.path("aws-config");
    std::fs::write(&config, config_text).expect("writing the AWS CLI config");
    let mut command = Command::new("aws");
    command
        .args(args)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path("no-credentials"))
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET);
    command
}

#[test]
fn boto3_round_trips_errors_and_the_object_over_nbd() {
    let dir = TempDir::new("boto3");
    let server = Server::start(&dir.path("pmem0.img"));
    assert!(
        server.boot.contains("s3: 1 access key(s): AKDAXBOXTEST"),
        "{}",
        server.boot
    );
    assert!(!server.boot.contains(SECRET), "the secret is never printed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/boto3_roundtrip.py");
    let port = server.http_port.to_string();
    let output = run_tool_ok(
        Command::new("python3").args([text(&script), &port, ACCESS, SECRET, text(&dir.0)]),
        TOOL_TIMEOUT,
    );
    assert!(output.contains("boto3 ok"), "{output}");
    // The object boto3 wrote is an NBD export with the same bytes.
    let back = dir.path("back.bin");
    let uri = format!("nbd://127.0.0.1:{}/big/blob.bin", server.nbd_port);
    run_tool_ok(
        Command::new("nbdcopy").args([uri.as_str(), text(&back)]),
        TOOL_TIMEOUT,
    );
    let sent = std::fs::read(dir.path("blob.bin")).expect("the bytes boto3 sent");
    assert_eq!(std::fs::read(&back).expect("nbdcopy's output"), sent);
    // And the other way round: an object of 3 MiB of zeros made over S3,
    // written over NBD, read back over S3.
    let endpoint = format!("http://127.0.0.1:{port}");
    let zeros = dir.path("zeros.bin");
    std::fs::write(&zeros, vec![0u8; 3 << 20]).expect("writing a local file");
    run_tool_ok(
        &mut aws(
            &dir,
            &[
                "--endpoint-url",
                &endpoint,
                "s3",
                "cp",
                text(&zeros),
                "s3://pmem0/disk.img",
            ],
        ),
        TOOL_TIMEOUT,
    );
    let local = dir.path("nbd-in.bin");
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &bytes).expect("writing a local file");
    let uri = format!("nbd://127.0.0.1:{}/disk.img", server.nbd_port);
    run_tool_ok(
        Command::new("nbdcopy").args([text(&local), uri.as_str()]),
        TOOL_TIMEOUT,
    );
    let fetched = dir.path("fetched.bin");
    run_tool_ok(
        &mut aws(
            &dir,
            &[
                "--endpoint-url",
                &endpoint,
                "s3",
                "cp",
                "s3://pmem0/disk.img",
                text(&fetched),
            ],
        ),
        TOOL_TIMEOUT,
    );
    assert_eq!(
        std::fs::read(&fetched).expect("the object"),
        bytes,
        "NBD's bytes over S3"
    );
}

#[test]
fn aws_cli_copies_lists_and_removes_a_tree() {
    let dir = TempDir::new("awscli");
    let server = Server::start(&dir.path("pmem0.img"));
    let endpoint = format!("http://127.0.0.1:{}", server.http_port);
    let tree = dir.path("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).expect("a tree");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("one.bin", (0..200_000u32).map(|i| (i * 7) as u8).collect()),
        ("sub/two.txt", b"two\n".to_vec()),
        ("sub/deeper/three", vec![3u8; 9_000_000]),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in &files {
        std::fs::write(tree.join(name), bytes).expect("a file");
    }
    let e = ["--endpoint-url", endpoint.as_str()];
    run_tool_ok(
        &mut aws(
            &dir,
            &[
                &e[..],
                &["s3", "cp", "--recursive", text(&tree), "s3://pmem0/tree/"],
            ]
            .concat(),
        ),
        TOOL_TIMEOUT,
    );
    let listing = run_tool_ok(
        &mut aws(
            &dir,
            &[&e[..], &["s3", "ls", "--recursive", "s3://pmem0/"]].concat(),
        ),
        TOOL_TIMEOUT,
    );
    for (name, bytes) in &files {
        assert!(
            listing.contains(&format!("{} tree/{name}\n", bytes.len())),
            "{name} in\n{listing}"
        );
    }
    let back = dir.path("back");
    run_tool_ok(
        &mut aws(
            &dir,
            &[
                &e[..],
                &["s3", "cp", "--recursive", "s3://pmem0/tree/", text(&back)],
            ]
            .concat(),
        ),
        TOOL_TIMEOUT,
    );
    for (name, bytes) in &files {
        assert_eq!(
            &std::fs::read(back.join(name)).expect("copied back"),
            bytes,
            "{name}"
        );
    }
    run_tool_ok(
        &mut aws(
            &dir,
            &[&e[..], &["s3", "rm", "--recursive", "s3://pmem0/tree/"]].concat(),
        ),
        TOOL_TIMEOUT,
    );
    let listing = run_tool_ok(
        &mut aws(
            &dir,
            &[&e[..], &["s3", "ls", "--recursive", "s3://pmem0/"]].concat(),
        ),
        TOOL_TIMEOUT,
    );
    assert!(listing.trim().is_empty(), "{listing}");
    drop(server);
}

/// `rclone` with a config the test writes (an `s3` remote, `provider =
/// Other`, path style, the test's key); returns the command.
fn rclone(dir: &TempDir, port: u16, args: &[&str]) -> Command {
    let config = dir.path("rclone.conf");
    std::fs::write(
        &config,
        format!(
            "[dax]\ntype = s3\nprovider = Other\naccess_key_id = {ACCESS}\nsecret_access_key = {SECRET}\nendpoint = http://127.0.0.1:{port}\nregion = us-east-1\nforce_path_style = true\n"
        ),
    )
    .expect("writing the rclone config");
    let mut command = Command::new("rclone");
    // rclone 1.60 cannot apply a CA bundle to its plain-HTTP transport
    // ("LoadCustomCABundleError") and the endpoint is http anyway.
    command
        .env_remove("AWS_CA_BUNDLE")
        .arg("--config")
        .arg(&config)
        .args(["--retries", "1", "--low-level-retries", "1"])
        .args(args);
    command
}

/// The files under `root`, as sorted relative paths.
fn tree_files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("reading a folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under the root");
                out.push(text(relative).to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn rclone_copies_checks_syncs_and_deletes_a_tree() {
    let dir = TempDir::new("rclone");
    let server = Server::start(&dir.path("pmem0.img"));
    let port = server.http_port;
    let tree = dir.path("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).expect("a tree");
    let mut files: Vec<(String, Vec<u8>)> = (0..40u32)
        .map(|i| {
            let bytes = (0..(i * 997 + 1)).map(|b| (b * 13 + i) as u8).collect();
            (format!("sub/small-{i:02}.bin"), bytes)
        })
        .collect();
    files.push(("top.txt".into(), b"top\n".to_vec()));
    files.push(("sub/deeper/big.bin".into(), vec![7u8; 6_000_000]));
    files.push(("sub/deeper/empty".into(), Vec::new()));
    for (name, bytes) in &files {
        std::fs::write(tree.join(name), bytes).expect("a file");
    }
    let run = |args: &[&str]| run_tool_ok(&mut rclone(&dir, port, args), TOOL_TIMEOUT);
    run(&["copy", text(&tree), "dax:pmem0/rc"]);
    let listing = run(&["lsf", "-R", "--files-only", "dax:pmem0/rc"]);
    let mut listed: Vec<&str> = listing.lines().collect();
    listed.sort();
    assert_eq!(listed, tree_files(&tree), "{listing}");
    // By hash (the ETag is the MD5 of what was PUT) and byte by byte.
    run(&["check", text(&tree), "dax:pmem0/rc"]);
    run(&["check", "--download", text(&tree), "dax:pmem0/rc"]);
    // Change some files, remove others, add one: sync makes it so.
    std::fs::write(tree.join("top.txt"), b"changed top\n").expect("a file");
    std::fs::write(tree.join("sub/small-03.bin"), vec![1u8; 5000]).expect("a file");
    for i in 10..20 {
        std::fs::remove_file(tree.join(format!("sub/small-{i:02}.bin"))).expect("removing");
    }
    std::fs::write(tree.join("sub/new.txt"), b"new\n").expect("a file");
    run(&["sync", text(&tree), "dax:pmem0/rc"]);
    let listing = run(&["lsf", "-R", "--files-only", "dax:pmem0/rc"]);
    let mut listed: Vec<&str> = listing.lines().collect();
    listed.sort();
    assert_eq!(listed, tree_files(&tree), "{listing}");
    run(&["check", "--download", text(&tree), "dax:pmem0/rc"]);
    let back = dir.path("back");
    run(&["copy", "dax:pmem0/rc", text(&back)]);
    for name in tree_files(&tree) {
        assert_eq!(
            std::fs::read(back.join(&name)).expect("copied back"),
            std::fs::read(tree.join(&name)).expect("the original"),
            "{name}"
        );
    }
    // A second sync has nothing to do: no upload, and no server-side
    // copy to set a modification time (the object API returns the
    // `x-amz-meta-mtime` rclone set; without it rclone re-copied every
    // object at every sync).
    let log = dir.path("sync.log");
    run(&[
        "sync",
        "-v",
        "--log-file",
        text(&log),
        text(&tree),
        "dax:pmem0/rc",
    ]);
    let log = std::fs::read_to_string(&log).expect("rclone's log");
    assert!(
        !log.contains("Updated modification time") && !log.contains("Copied"),
        "{log}"
    );
    run(&["check", text(&tree), "dax:pmem0/rc"]);
    run(&["delete", "dax:pmem0/rc"]);
    let listing = run(&["lsf", "-R", "dax:pmem0"]);
    assert!(listing.trim().is_empty(), "{listing}");
}

#[test]
fn boto3_multipart_uploads_with_default_transfer_config() {
    let dir = TempDir::new("boto3-multipart");
    let server = Server::start(&dir.path("pmem0.img"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/boto3_multipart.py");
    let port = server.http_port.to_string();
    let output = run_tool_ok(
        Command::new("python3").args([text(&script), &port, ACCESS, SECRET, text(&dir.0)]),
        TOOL_TIMEOUT,
    );
    assert!(output.contains("boto3 multipart ok"), "{output}");
    // Nothing of the uploads is left: only the two objects are files.
    let uri = format!("nbd://127.0.0.1:{}", server.nbd_port);
    let exports = run_tool_ok(
        Command::new("nbdinfo").args(["--list", "--json", uri.as_str()]),
        TOOL_TIMEOUT,
    );
    assert_eq!(exports.matches("\"export-name\"").count(), 2, "{exports}");
}

#[test]
fn aws_cli_multipart_copy_up_and_down() {
    let dir = TempDir::new("awscli-multipart");
    let server = Server::start(&dir.path("pmem0.img"));
    let endpoint = format!("http://127.0.0.1:{}", server.http_port);
    // The default thresholds: 8 MiB, so 40 MiB goes in five parts.
    let config = "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n";
    let e = ["--endpoint-url", endpoint.as_str()];
    let bytes: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let src = dir.path("forty.bin");
    std::fs::write(&src, &bytes).expect("a local file");
    run_tool_ok(
        &mut aws_with(
            &dir,
            config,
            &[&e[..], &["s3", "cp", text(&src), "s3://pmem0/forty.bin"]].concat(),
        ),
        TOOL_TIMEOUT,
    );
    let head = run_tool_ok(
        &mut aws_with(
            &dir,
            config,
            &[
                &e[..],
                &[
                    "s3api",
                    "head-object",
                    "--bucket",
                    "pmem0",
                    "--key",
                    "forty.bin",
                ],
            ]
            .concat(),
        ),
        TOOL_TIMEOUT,
    );
    assert!(head.contains("-5\\\""), "an ETag of five parts: {head}");
    let back = dir.path("back.bin");
    run_tool_ok(
        &mut aws_with(
            &dir,
            config,
            &[&e[..], &["s3", "cp", "s3://pmem0/forty.bin", text(&back)]].concat(),
        ),
        TOOL_TIMEOUT,
    );
    assert!(
        std::fs::read(&back).expect("copied back") == bytes,
        "byte-identical"
    );
    // Over NBD too.
    let nbd = dir.path("nbd.bin");
    let uri = format!("nbd://127.0.0.1:{}/forty.bin", server.nbd_port);
    run_tool_ok(
        Command::new("nbdcopy").args([uri.as_str(), text(&nbd)]),
        TOOL_TIMEOUT,
    );
    assert!(std::fs::read(&nbd).expect("nbdcopy's output") == bytes);
    drop(server);
}

/// Runs one of the boto3 scripts in `tests/s3/` against `server` and
/// checks it printed `marker`.
fn run_boto3_script(server: &Server, dir: &TempDir, script: &str, marker: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/s3")
        .join(script);
    let port = server.http_port.to_string();
    let output = run_tool_ok(
        Command::new("python3").args([text(&script), &port, ACCESS, SECRET, text(&dir.0)]),
        TOOL_TIMEOUT,
    );
    assert!(output.contains(marker), "{output}");
}

#[test]
fn boto3_reads_back_the_checksums_it_sent() {
    let dir = TempDir::new("boto3-checksums");
    let server = Server::start(&dir.path("pmem0.img"));
    run_boto3_script(&server, &dir, "boto3_checksums.py", "boto3 checksums ok");
}

/// The MD5 of each file (hex), by `md5sum`.
fn local_md5(path: &Path) -> String {
    let out = run_tool_ok(Command::new("md5sum").arg(path), TOOL_TIMEOUT);
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// After a restart (the process killed, as a power cut), rclone still
/// reads each object's MD5 from its ETag: the object API keeps them on
/// media, not only in RAM.
#[test]
fn rclone_reads_the_md5s_after_a_restart() {
    let dir = TempDir::new("rclone-restart");
    let image = dir.path("pmem0.img");
    let server = Server::start(&image);
    let port = server.http_port;
    let tree = dir.path("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("a tree");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.bin", (0..100_000u32).map(|i| (i * 7) as u8).collect()),
        ("sub/b.txt", b"bee\n".to_vec()),
        ("sub/c.bin", vec![9u8; 3_000_000]),
    ];
    for (name, bytes) in &files {
        std::fs::write(tree.join(name), bytes).expect("a file");
    }
    run_tool_ok(
        &mut rclone(&dir, port, &["copy", text(&tree), "dax:pmem0/rc"]),
        TOOL_TIMEOUT,
    );
    drop(server);
    let server = Server::start(&image);
    let sums = run_tool_ok(
        &mut rclone(&dir, server.http_port, &["md5sum", "dax:pmem0/rc"]),
        TOOL_TIMEOUT,
    );
    for (name, _) in &files {
        let md5 = local_md5(&tree.join(name));
        assert!(
            sums.lines().any(|l| l == format!("{md5}  {name}")),
            "{name}: {md5} in\n{sums}"
        );
    }
    // And rclone check compares by them (it fails on a difference).
    run_tool_ok(
        &mut rclone(
            &dir,
            server.http_port,
            &["check", text(&tree), "dax:pmem0/rc"],
        ),
        TOOL_TIMEOUT,
    );
}

/// rclone uploads a file over its upload cutoff in parts and sets its
/// modification time as `x-amz-meta-mtime` on CreateMultipartUpload:
/// the object keeps it, as for a single PUT.
#[test]
fn rclone_multipart_upload_keeps_the_modification_time() {
    let dir = TempDir::new("rclone-mtime");
    let server = Server::start(&dir.path("pmem0.img"));
    let src = dir.path("src");
    std::fs::create_dir_all(&src).expect("a folder");
    let file = src.join("big.bin");
    std::fs::write(&file, vec![5u8; 12 << 20]).expect("a file");
    // 1700000000.5 is 2023-11-14T22:13:20.5Z.
    run_tool_ok(
        Command::new("touch").args(["-d", "@1700000000.5", text(&file)]),
        TOOL_TIMEOUT,
    );
    let args = [
        "copy",
        "--s3-upload-cutoff",
        "5M",
        "--s3-chunk-size",
        "5M",
        text(&src),
        "dax:pmem0/mt",
    ];
    run_tool_ok(&mut rclone(&dir, server.http_port, &args), TOOL_TIMEOUT);
    let listing = run_tool_ok(
        &mut rclone(&dir, server.http_port, &["lsjson", "dax:pmem0/mt"]),
        TOOL_TIMEOUT,
    );
    assert!(
        listing.contains("\"ModTime\":\"2023-11-14T22:13:20.5"),
        "{listing}"
    );
}

/// A GET read slowly over a socket while boto3 replaces the object gets
/// the old object whole (its MD5 is the old ETag).
#[test]
fn a_slow_get_sends_the_old_object_whole_while_it_is_replaced() {
    let dir = TempDir::new("slow-get");
    let server = Server::start(&dir.path("pmem0.img"));
    run_boto3_script(&server, &dir, "slow_get_replace.py", "slow get ok");
    // The old object's space returned when the GET ended: only the new
    // object (and the ETag records) use the device.
    let uri = format!("nbd://127.0.0.1:{}", server.nbd_port);
    let exports = run_tool_ok(
        Command::new("nbdinfo").args(["--list", "--json", uri.as_str()]),
        TOOL_TIMEOUT,
    );
    assert_eq!(exports.matches("\"export-name\"").count(), 1, "{exports}");
}

/// UploadPartCopy with boto3 (`upload_part_copy`, the managed `copy`) and
/// the AWS CLI (`aws s3 cp s3://… s3://…` of an object over its 8 MiB
/// multipart threshold copies it part by part on the server).
#[test]
fn upload_part_copy_with_boto3_and_the_aws_cli() {
    let dir = TempDir::new("part-copy");
    let server = Server::start(&dir.path("pmem0.img"));
    run_boto3_script(&server, &dir, "boto3_part_copy.py", "boto3 part copy ok");
    let endpoint = format!("http://127.0.0.1:{}", server.http_port);
    let config = "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n";
    let e = ["--endpoint-url", endpoint.as_str()];
    let bytes: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let src = dir.path("twenty.bin");
    std::fs::write(&src, &bytes).expect("a local file");
    let aws_ok = |args: &[&str]| {
        run_tool_ok(
            &mut aws_with(&dir, config, &[&e[..], args].concat()),
            TOOL_TIMEOUT,
        )
    };
    aws_ok(&["s3", "cp", text(&src), "s3://pmem0/cli/src.bin"]);
    aws_ok(&[
        "s3",
        "cp",
        "s3://pmem0/cli/src.bin",
        "s3://pmem0/cli/copy.bin",
    ]);
    let head = aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "pmem0",
        "--key",
        "cli/copy.bin",
    ]);
    assert!(head.contains("-3\\\""), "a copy in three parts: {head}");
    let back = dir.path("back.bin");
    aws_ok(&["s3", "cp", "s3://pmem0/cli/copy.bin", text(&back)]);
    assert!(
        std::fs::read(&back).expect("copied back") == bytes,
        "byte-identical"
    );
}

/// The same boto3 sequence (every operation of the object API and its
/// error cases) against moto, a reference S3 implementation, and against
/// daxbox-serve: status codes, error codes, the headers that matter and
/// the listings must agree, except for the dialect differences the script
/// lists with their reason (README "Dialect differences from S3").
#[test]
fn boto3_answers_as_moto_does() {
    let dir = TempDir::new("moto-differential");
    let server = Server::start(&dir.path("pmem0.img"));
    run_boto3_script(
        &server,
        &dir,
        "moto_differential.py",
        "moto differential ok",
    );
}
