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
