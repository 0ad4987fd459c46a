//! The S3 object API on the booted appliance: keys from the boot config
//! (the secret never printed), boto3 PUT of a multi-MiB object read back
//! over NBD byte-identical, and a file written over NBD read back with
//! boto3. The rest of the API is tested on the host (`storage/src/s3`,
//! `storage/serve/tests/s3_clients.rs`); this keeps what only a real boot
//! shows: the kernel's HTTP listener, the CMOS RTC clock behind SigV4, the
//! soft SHA-256/MD5 on the bare-metal target, pmem underneath.

use std::process::Command;
use std::time::{Duration, Instant};

use daxbox_tests::nbd_client::{run_tool, run_tool_ok, uri};
use daxbox_tests::{run_dir, scaled, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};

const MIB: u64 = 1 << 20;
const ACCESS: &str = "AKSYSTEST";
const SECRET: &str = "system-test-secret-42";

/// Runs a boto3 snippet with a client `s3` for the appliance; returns
/// stdout, panics on failure.
fn boto3(http_port: u16, body: &str) -> String {
    let script = format!(
        "import boto3, hashlib, sys\n\
         from botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{http_port}', \
         aws_access_key_id='{ACCESS}', aws_secret_access_key='{SECRET}', region_name='us-east-1', \
         config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 1}}, \
         connect_timeout=30, read_timeout=300))\n{body}"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "boto3 failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn boto3_and_nbd_see_the_same_bytes() -> Result<(), HarnessError> {
    let name = "s3_roundtrip";
    let dir = run_dir(name);
    let mut options = QemuOptions::new(name, Firmware::Bios)
        .with_boot_config(format!("format=if-blank\ns3_key={ACCESS}:{SECRET}\n"))
        .with_nvdimm(Nvdimm::fresh(dir.join("nvdimm0.img"), 256 * MIB));
    options.max_runtime = Duration::from_secs(540);
    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output().to_string();
    assert!(boot.contains("s3: 1 access key(s): AKSYSTEST"), "{boot}");
    let config = machine.command("bootconfig")?;
    assert!(
        config.contains("s3_key=AKSYSTEST:<secret hidden>"),
        "{config}"
    );
    assert!(!machine.output().contains(SECRET), "the secret was printed");

    // Readiness: the forwarded port accepts before the guest listens.
    let http = machine.http_port();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while !run_tool(
        "curl",
        &[
            "-sf",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{http}/healthz"),
        ],
        Duration::from_secs(20),
    )
    .success()
    {
        assert!(Instant::now() < deadline, "healthz never answered");
        std::thread::sleep(Duration::from_millis(300));
    }

    // S3 → NBD: a 6 MiB object from boto3, read with nbdcopy.
    let sent = dir.join("sent.bin");
    let sent_text = sent.to_str().expect("UTF-8 path");
    let out = boto3(
        http,
        &format!(
            "import os\ndata = os.urandom(6 * 1024 * 1024 + 17)\n\
             open('{sent_text}', 'wb').write(data)\n\
             r = s3.put_object(Bucket='pmem0', Key='dir/object.bin', Body=data)\n\
             assert r['ETag'] == '\"%s\"' % hashlib.md5(data).hexdigest(), r['ETag']\n\
             assert s3.get_object(Bucket='pmem0', Key='dir/object.bin', Range='bytes=5-9')['Body'].read() == data[5:10]\n\
             print('put ok')\n"
        ),
    );
    assert!(out.contains("put ok"), "{out}");
    let back = dir.join("back.bin");
    let nbd = machine.nbd_port();
    run_tool_ok(
        "nbdcopy",
        &[
            &uri(nbd, "dir/object.bin"),
            back.to_str().expect("UTF-8 path"),
        ],
        scaled(Duration::from_secs(240)),
    );
    assert!(
        std::fs::read(&back).expect("nbdcopy's copy") == std::fs::read(&sent).expect("sent"),
        "the object read over NBD differs from what boto3 sent"
    );

    // NBD → S3: a file made in the shell, written with nbdcopy, read with
    // boto3; its ETag changed from the PUT-less one.
    machine.command("create disk.img 4M")?;
    let local = dir.join("nbd-in.bin");
    let bytes: Vec<u8> = (0..4 * MIB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&local, &bytes).expect("writing a local file");
    let before = boto3(
        http,
        "print(s3.head_object(Bucket='pmem0', Key='disk.img')['ETag'])\n",
    );
    run_tool_ok(
        "nbdcopy",
        &[local.to_str().expect("UTF-8 path"), &uri(nbd, "disk.img")],
        scaled(Duration::from_secs(240)),
    );
    let local_text = local.to_str().expect("UTF-8 path");
    let out = boto3(
        http,
        &format!(
            "g = s3.get_object(Bucket='pmem0', Key='disk.img')\n\
             assert g['Body'].read() == open('{local_text}', 'rb').read()\n\
             print(g['ETag'])\n"
        ),
    );
    assert_ne!(
        out.trim(),
        before.trim(),
        "the ETag did not change after NBD wrote the file"
    );

    // Multipart: boto3 upload_file of 24 MiB with the default
    // TransferConfig (8 MiB parts, joined by moving extents), read back
    // over NBD byte-identical; the ETag has S3's -3 form and nothing of
    // the upload is left (no upload listed, the exports are the objects).
    let multi = dir.join("multi.bin");
    let multi_text = multi.to_str().expect("UTF-8 path");
    let out = boto3(
        http,
        &format!(
            "import os\ndata = os.urandom(24 * 1024 * 1024)\n\
             open('{multi_text}', 'wb').write(data)\n\
             s3.upload_file('{multi_text}', 'pmem0', 'multi.bin')\n\
             etag = s3.head_object(Bucket='pmem0', Key='multi.bin')['ETag']\n\
             md5s = b''.join(hashlib.md5(data[i:i + (8 << 20)]).digest() for i in range(0, len(data), 8 << 20))\n\
             assert etag == '\"%s-3\"' % hashlib.md5(md5s).hexdigest(), etag\n\
             assert 'Uploads' not in s3.list_multipart_uploads(Bucket='pmem0')\n\
             print('multipart ok')\n"
        ),
    );
    assert!(out.contains("multipart ok"), "{out}");
    let multi_back = dir.join("multi-back.bin");
    run_tool_ok(
        "nbdcopy",
        &[
            &uri(nbd, "multi.bin"),
            multi_back.to_str().expect("UTF-8 path"),
        ],
        scaled(Duration::from_secs(240)),
    );
    assert!(
        std::fs::read(&multi_back).expect("nbdcopy's copy") == std::fs::read(&multi).expect("sent"),
        "the multipart object read over NBD differs from what boto3 sent"
    );
    let ls = machine.command("ls")?;
    assert!(!ls.contains('\u{1}'), "a part file is visible: {ls}");
    Ok(())
}

/// Runs a client command (its own `PATH`: the S3 clients may live outside
/// `/usr/bin`, unlike `run_tool`'s) within `timeout`, killed after it;
/// panics unless it exits 0; returns stdout.
fn run_client(command: &mut Command, timeout: Duration) -> String {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e} (is it installed? `cargo xtask setup`)"));
    let drain = |mut source: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = source.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
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

/// The SHA-256 of a file, by `sha256sum`.
fn sha256(path: &std::path::Path) -> String {
    let out = run_tool_ok(
        "sha256sum",
        &[path.to_str().expect("UTF-8 path")],
        scaled(Duration::from_secs(60)),
    );
    out.split_whitespace().next().expect("a digest").to_string()
}

/// 300 MiB through every client, both ways, with their default transfer
/// settings (multipart: boto3 and the AWS CLI in 8 MiB parts, rclone in
/// 5 MiB parts above its 200 MiB cutoff), byte-identical by SHA-256, and
/// the objects readable over NBD as the same bytes. One local file of
/// 300 MiB; two objects of it live at once on a 1 GiB NVDIMM.
#[test]
fn three_clients_round_trip_300_mib() -> Result<(), HarnessError> {
    let name = "s3_large";
    let dir = run_dir(name);
    let mut options = QemuOptions::new(name, Firmware::Bios)
        .with_boot_config(format!("format=if-blank\ns3_key={ACCESS}:{SECRET}\n"))
        .with_nvdimm(Nvdimm::fresh(dir.join("nvdimm0.img"), 1024 * MIB));
    options.max_runtime = Duration::from_secs(1200);
    let machine = Machine::boot_to_prompt(options)?;
    let http = machine.http_port();
    let nbd = machine.nbd_port();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while !run_tool(
        "curl",
        &[
            "-sf",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{http}/healthz"),
        ],
        Duration::from_secs(20),
    )
    .success()
    {
        assert!(Instant::now() < deadline, "healthz never answered");
        std::thread::sleep(Duration::from_millis(300));
    }
    let endpoint = format!("http://127.0.0.1:{http}");
    let limit = scaled(Duration::from_secs(300));
    let path = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_string();

    // The local file: 300 MiB, not compressible, made in 1 MiB steps.
    let local = path("local.bin");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&local).expect("a file"));
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
        let mut block = vec![0u8; MIB as usize];
        for _ in 0..300 {
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            file.write_all(&block).expect("writing the local file");
        }
        file.flush().expect("writing the local file");
    }
    let want = sha256(std::path::Path::new(&local));

    // boto3 up (upload_file: multipart, 38 parts of 8 MiB) and down.
    let out = boto3(
        http,
        &format!(
            "s3.upload_file('{local}', 'pmem0', 'big/boto3.bin')\n\
             etag = s3.head_object(Bucket='pmem0', Key='big/boto3.bin')['ETag']\n\
             assert etag.endswith('-38\"'), etag\n\
             s3.download_file('pmem0', 'big/boto3.bin', '{}')\n\
             print('boto3 ok')\n",
            path("boto3-back.bin")
        ),
    );
    assert!(out.contains("boto3 ok"), "{out}");
    assert_eq!(sha256(&dir.join("boto3-back.bin")), want, "boto3 down");

    // The AWS CLI down (what boto3 wrote) and up, default settings.
    let aws_config = dir.join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    )
    .expect("writing the AWS CLI config");
    let aws = |args: &[&str]| {
        let mut command = Command::new("aws");
        command
            .args(["--endpoint-url", &endpoint])
            .args(args)
            .env("AWS_CONFIG_FILE", &aws_config)
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"))
            .env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET);
        run_client(&mut command, limit)
    };
    aws(&[
        "s3",
        "cp",
        "s3://pmem0/big/boto3.bin",
        &path("aws-back.bin"),
    ]);
    assert_eq!(sha256(&dir.join("aws-back.bin")), want, "aws down");
    aws(&["s3", "rm", "s3://pmem0/big/boto3.bin"]);
    aws(&["s3", "cp", &local, "s3://pmem0/big/aws.bin"]);
    let nbd_back = dir.join("nbd-back.bin");
    let nbd_read = |export: &str| {
        run_tool_ok(
            "nbdcopy",
            &[&uri(nbd, export), nbd_back.to_str().expect("UTF-8 path")],
            limit,
        );
        assert_eq!(sha256(&nbd_back), want, "{export} over NBD");
    };
    nbd_read("big/aws.bin");

    // rclone down (what the CLI wrote) and up. One object at a time: an
    // upload in 5 MiB parts (not 2 MiB-aligned) is joined by copying, so
    // it needs twice its size while it completes.
    let rclone_config = dir.join("rclone.conf");
    std::fs::write(
        &rclone_config,
        format!(
            "[dax]\ntype = s3\nprovider = Other\naccess_key_id = {ACCESS}\n\
             secret_access_key = {SECRET}\nendpoint = {endpoint}\nregion = us-east-1\n\
             force_path_style = true\n"
        ),
    )
    .expect("writing the rclone config");
    let rclone = |args: &[&str]| {
        let mut command = Command::new("rclone");
        // rclone cannot apply a CA bundle to a plain-HTTP transport.
        command
            .env_remove("AWS_CA_BUNDLE")
            .arg("--config")
            .arg(&rclone_config)
            .args(["--retries", "1", "--low-level-retries", "1"])
            .args(args);
        run_client(&mut command, limit)
    };
    rclone(&["copyto", "dax:pmem0/big/aws.bin", &path("rclone-back.bin")]);
    assert_eq!(sha256(&dir.join("rclone-back.bin")), want, "rclone down");
    rclone(&["deletefile", "dax:pmem0/big/aws.bin"]);
    rclone(&["copyto", &local, "dax:pmem0/big/rclone.bin"]);
    nbd_read("big/rclone.bin");
    for file in [
        "local.bin",
        "boto3-back.bin",
        "aws-back.bin",
        "rclone-back.bin",
        "nbd-back.bin",
    ] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    Ok(())
}
