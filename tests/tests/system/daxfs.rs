//! The DAX filesystem through the serial shell: every filesystem command's
//! happy and error paths, two NVDIMMs each with their own daxfs, a device
//! holding foreign bytes that is never formatted, files surviving a power
//! cut (SIGKILL of QEMU) with a clean fsck after the reboot, a blank
//! device under `format=never` that only `mkfs DEVICE --yes` formats, and
//! host-side damage: a bad primary superblock repaired from its backup, a
//! newer format version refused but still available to `mkfs`.
//!
//! Boots are few and shared by many checks (each TCG boot costs seconds on
//! a busy 2-core host); every assertion names the command and shows its
//! output, so a failure says which check broke.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF};

const MIB: u64 = 1 << 20;

/// What the host writes at offset 0 of the "foreign" NVDIMM: not zeros,
/// not a daxfs superblock (as if another system had used the namespace).
const FOREIGN: &[u8] = b"\x7fELF-not-a-daxfs-superblock: someone else's data lives here";

/// Runs `command`, expects success (no `error:` line) and every fragment in
/// its output; returns the output.
fn ok(machine: &mut Machine, command: &str, fragments: &[&str]) -> Result<String, HarnessError> {
    let output = machine.command(command)?;
    assert!(
        !output.contains("error:"),
        "`{command}` should succeed, got:\n{output}"
    );
    for fragment in fragments {
        assert!(
            output.contains(fragment),
            "`{command}` should print `{fragment}`, got:\n{output}"
        );
    }
    Ok(output)
}

/// Runs `command`, expects it to fail with an `error: ...` line containing
/// `fragment`.
fn fails(machine: &mut Machine, command: &str, fragment: &str) -> Result<(), HarnessError> {
    let output = machine.command(command)?;
    let error = output
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("`{command}` should fail, got:\n{output}"));
    assert!(
        error.contains(fragment),
        "`{command}` should fail with `{fragment}`, got:\n{output}"
    );
    Ok(())
}

/// `cat NAME OFFSET LENGTH` as text (the shell shows zero and other
/// non-printable bytes as `.`).
fn cat(
    machine: &mut Machine,
    name: &str,
    offset: u64,
    length: u64,
) -> Result<String, HarnessError> {
    let command = format!("cat {name} {offset} {length}");
    let output = machine.command(&command)?;
    assert!(
        !output.contains("error:"),
        "`{command}` should succeed, got:\n{output}"
    );
    Ok(output)
}

/// The files `ls ARGS` shows, as (canonical name, size): `NAME` on pmem0
/// (the default filesystem), `pmemN:NAME` elsewhere, after checking its
/// `N file(s)` summary line agrees.
fn ls(machine: &mut Machine, args: &str) -> Result<Vec<(String, u64)>, HarnessError> {
    let command = format!("ls {args}");
    let output = machine.command(command.trim())?;
    let mut files = Vec::new();
    let mut summary = None;
    for line in output.lines() {
        if let Some(count) = line.strip_suffix(" file(s)") {
            summary = Some(count.trim().parse::<usize>().unwrap_or_else(|_| {
                panic!("`{command}`: bad summary line `{line}` in:\n{output}")
            }));
            continue;
        }
        // `SIZE  NAME`: the size right-aligned, two spaces, the name.
        let mut words = line.trim_start().splitn(2, "  ");
        match (words.next().map(str::parse::<u64>), words.next()) {
            (Some(Ok(size)), Some(name)) if !name.trim_end().is_empty() => {
                files.push((name.trim_end().to_string(), size))
            }
            _ => panic!("`{command}`: unexpected line `{line}` in:\n{output}"),
        }
    }
    assert_eq!(
        summary,
        Some(files.len()),
        "`{command}`: summary must count the listed files:\n{output}"
    );
    Ok(files)
}

fn names(files: &[(String, u64)]) -> Vec<&str> {
    files.iter().map(|(name, _)| name.as_str()).collect()
}

/// Asserts that `fsck` checks every listed device and finds them clean.
fn fsck_clean(machine: &mut Machine, devices: &[&str]) -> Result<(), HarnessError> {
    let output = ok(machine, "fsck", &[])?;
    for device in devices {
        assert!(
            output
                .lines()
                .any(|line| line.starts_with(&format!("{device}: fsck: clean"))),
            "fsck should report {device} clean:\n{output}"
        );
    }
    Ok(())
}

/// A backing file of `size` bytes (sparse) with [`FOREIGN`] at offset 0,
/// in a folder the harness never empties (`run_dir` of a name no test
/// boots under), so it can be written before the first boot.
fn foreign_image(test: &str, size: u64) -> PathBuf {
    let dir = run_dir(&format!("{test}-host"));
    std::fs::create_dir_all(&dir).expect("creating the host-side folder");
    let path = dir.join("foreign.img");
    let mut file = std::fs::File::create(&path).expect("creating the foreign image");
    file.set_len(size).expect("sizing the foreign image");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(FOREIGN).expect("writing foreign bytes");
    path
}

fn assert_still_foreign(path: &Path) {
    let bytes = std::fs::read(path).expect("reading the foreign image");
    assert_eq!(
        &bytes[..FOREIGN.len()],
        FOREIGN,
        "the foreign device must not be touched"
    );
    // Nothing else was written either: the rest of the first 64 KiB (where
    // a format would put superblocks and the journal) is still zero.
    assert!(
        bytes[FOREIGN.len()..64 * 1024].iter().all(|&b| b == 0),
        "the foreign device must not be formatted"
    );
}

/// The first boot log line containing `fragment`, or a panic showing the
/// whole log.
fn boot_line<'a>(boot: &'a str, fragment: &str) -> &'a str {
    boot.lines()
        .find(|line| line.contains(fragment))
        .unwrap_or_else(|| panic!("no boot log line with `{fragment}`:\n{boot}"))
}

/// Asserts the boot log names device `device` for the NVDIMM of `size`
/// (device names follow the NFIT's order of ranges, which QEMU does not
/// promise to be the order of `-device nvdimm` arguments: with three
/// NVDIMMs of 64, 32 and 16 MiB, QEMU 7.2 lists the 16 MiB one second).
fn assert_device(boot: &str, device: &str, size: &str) {
    let line = boot_line(boot, &format!("pmem: {device} NFIT"));
    assert!(
        line.contains(&format!("({size})")),
        "this test expects {device} to be the {size} NVDIMM: {line}"
    );
}

#[test]
fn shell_commands_two_devices_and_power_cut() -> Result<(), HarnessError> {
    let name = "daxfs_commands_power_cut";
    let pmem0 = run_dir(name).join("nvdimm0.img");
    let pmem1 = run_dir(name).join("nvdimm1.img");
    let options = |fresh: bool| {
        let nvdimm = |path: &Path, size| {
            if fresh {
                Nvdimm::fresh(path, size)
            } else {
                Nvdimm::existing(path, size)
            }
        };
        QemuOptions::new(name, Firmware::Bios)
            .with_boot_config("format=if-blank\n")
            .with_nvdimm(nvdimm(&pmem0, 64 * MIB))
            .with_nvdimm(nvdimm(&pmem1, 32 * MIB))
    };

    // ---- First boot: both blank devices are formatted.
    let mut machine = Machine::boot_to_prompt(options(true))?;
    let boot = machine.output();
    assert_device(&boot, "pmem0", "64 MiB");
    assert_device(&boot, "pmem1", "32 MiB");
    boot_line(&boot, "storage: pmem0 formatted and mounted daxfs");
    boot_line(&boot, "storage: pmem1 formatted and mounted daxfs");
    let df = ok(&mut machine, "df", &[])?;
    assert!(df.lines().any(|l| l.starts_with("pmem0 ")), "{df}");
    assert!(df.lines().any(|l| l.starts_with("pmem1 ")), "{df}");
    assert!(
        ls(&mut machine, "")?.is_empty(),
        "fresh filesystems are empty"
    );

    // ---- create / stat: sizes, duplicates, bad sizes, bad names.
    ok(
        &mut machine,
        "create alpha 64K",
        &["created alpha (65536 bytes)"],
    )?;
    let stat = ok(&mut machine, "stat alpha", &["name:       alpha"])?;
    assert!(stat.contains("size:       65536 (64 KiB)"), "{stat}");
    assert!(stat.contains("allocated:  0 B"), "created sparse: {stat}");
    fails(&mut machine, "create alpha 4K", "file exists")?;
    fails(&mut machine, "create beta lots", "bad size 'lots'")?;
    fails(&mut machine, "create beta -1", "bad size '-1'")?;
    fails(&mut machine, "create beta", "usage: create NAME SIZE")?;
    fails(&mut machine, "create beta 20T", "file too large")?;
    fails(&mut machine, "stat beta", "no such file")?;
    let longest = "n".repeat(255);
    ok(
        &mut machine,
        &format!("create {longest} 1K"),
        &[&format!("created {longest} (1024 bytes)")],
    )?;
    ok(
        &mut machine,
        &format!("write {longest} 0 longest-name"),
        &["wrote 12 bytes at 0"],
    )?;
    assert_eq!(cat(&mut machine, &longest, 0, 12)?, "longest-name");
    let too_long = "n".repeat(256);
    fails(
        &mut machine,
        &format!("create {too_long} 1K"),
        "invalid file name",
    )?;
    fails(&mut machine, "create pmem0: 1K", "invalid file name")?;
    fails(&mut machine, "create pmem9:x 1K", "no such device: pmem9")?;
    fails(&mut machine, "ls pmem9", "no such device: pmem9")?;
    fails(&mut machine, "ls pmem9 alpha", "no such device: pmem9")?;
    let listed = ls(&mut machine, "")?;
    assert_eq!(
        listed,
        vec![("alpha".to_string(), 65536), (longest.to_string(), 1024)],
        "failed creates must leave nothing behind"
    );
    ok(&mut machine, &format!("rm {longest}"), &["removed"])?;

    // ---- write / cat: durable writes, offsets, missing files.
    ok(
        &mut machine,
        "write alpha 0 hello daxfs",
        &["wrote 11 bytes at 0"],
    )?;
    assert_eq!(cat(&mut machine, "alpha", 0, 11)?, "hello daxfs");
    assert_eq!(cat(&mut machine, "alpha", 6, 5)?, "daxfs");
    ok(
        &mut machine,
        "write alpha 0x1000 at-4k",
        &["wrote 5 bytes at 4096"],
    )?;
    assert_eq!(cat(&mut machine, "alpha", 4096, 5)?, "at-4k");
    fails(&mut machine, "write missing 0 x", "no such file: missing")?;
    fails(&mut machine, "write alpha zz x", "bad offset 'zz'")?;
    fails(
        &mut machine,
        "write alpha 0",
        "usage: write NAME OFFSET TEXT",
    )?;
    fails(&mut machine, "cat missing", "no such file: missing")?;
    fails(&mut machine, "cat alpha x", "bad offset 'x'")?;

    // ---- clone: copy-on-write; writing the clone leaves the source alone.
    ok(
        &mut machine,
        "clone alpha alpha2",
        &["cloned alpha to alpha2"],
    )?;
    let shared = ok(&mut machine, "stat alpha2", &["size:       65536"])?;
    assert!(
        shared.contains("shared:     8 KiB"),
        "a clone shares both written blocks: {shared}"
    );
    ok(
        &mut machine,
        "write alpha2 0 CLONE",
        &["wrote 5 bytes at 0"],
    )?;
    assert_eq!(cat(&mut machine, "alpha2", 0, 11)?, "CLONE daxfs");
    assert_eq!(
        cat(&mut machine, "alpha", 0, 11)?,
        "hello daxfs",
        "writing the clone must not change the source"
    );
    let after = ok(&mut machine, "stat alpha", &[])?;
    assert!(
        after.contains("shared:     4 KiB"),
        "after the copy-on-write only the 4 KiB block stays shared: {after}"
    );
    fails(&mut machine, "clone missing x", "no such file: missing")?;
    fails(&mut machine, "clone alpha alpha2", "file exists")?;
    fails(
        &mut machine,
        "clone alpha pmem1:alpha",
        "a clone must stay on the device of its source",
    )?;
    fails(&mut machine, "clone alpha", "usage: clone SRC DST")?;

    // ---- mv: rename, replacing the target atomically.
    ok(
        &mut machine,
        "create gamma 4K",
        &["created gamma (4096 bytes)"],
    )?;
    ok(&mut machine, "write gamma 0 GAMMA", &[])?;
    ok(
        &mut machine,
        "mv gamma alpha2",
        &["renamed gamma to alpha2 (replaced it)"],
    )?;
    assert_eq!(cat(&mut machine, "alpha2", 0, 5)?, "GAMMA");
    fails(&mut machine, "cat gamma", "no such file: gamma")?;
    let listed = ls(&mut machine, "pmem0")?;
    assert_eq!(
        listed,
        vec![("alpha".to_string(), 65536), ("alpha2".to_string(), 4096)],
        "mv replaced alpha2 (4 KiB now) and gamma is gone"
    );
    ok(
        &mut machine,
        "mv alpha2 delta",
        &["renamed alpha2 to delta"],
    )?;
    fails(&mut machine, "mv missing x", "no such file: missing")?;
    fails(
        &mut machine,
        "mv alpha pmem1:alpha",
        "cannot move a file to another device",
    )?;
    fails(&mut machine, "mv alpha", "usage: mv FROM TO")?;
    fails(
        &mut machine,
        &format!("mv alpha {too_long}"),
        "invalid file name",
    )?;

    // ---- truncate: down cuts, up reads zeros.
    ok(&mut machine, "write alpha 8000 tail-data", &[])?;
    ok(
        &mut machine,
        "truncate alpha 8004",
        &["truncated to 8004 bytes"],
    )?;
    assert_eq!(
        cat(&mut machine, "alpha", 8000, 100)?,
        "tail",
        "a read stops at the new end"
    );
    ok(
        &mut machine,
        "truncate alpha 12K",
        &["truncated to 12288 bytes"],
    )?;
    assert_eq!(
        cat(&mut machine, "alpha", 8000, 9)?,
        "tail.....",
        "bytes past the old end read as zeros (shown as '.')"
    );
    ok(&mut machine, "stat alpha", &["size:       12288 (12 KiB)"])?;
    ok(&mut machine, "truncate alpha 4096", &[])?;
    ok(&mut machine, "truncate alpha 8192", &[])?;
    assert!(
        cat(&mut machine, "alpha", 4096, 4096)?
            .chars()
            .all(|c| c == '.'),
        "a whole block cut off and grown back reads as zeros"
    );
    assert_eq!(cat(&mut machine, "alpha", 0, 11)?, "hello daxfs");
    fails(&mut machine, "truncate alpha big", "bad size 'big'")?;
    fails(&mut machine, "truncate alpha 20T", "file too large")?;
    fails(&mut machine, "write alpha 20T x", "file too large")?;
    ok(&mut machine, "stat alpha", &["size:       8192 (8 KiB)"])?;
    fails(&mut machine, "truncate missing 1K", "no such file: missing")?;

    // ---- rm.
    ok(&mut machine, "rm delta", &["removed delta"])?;
    assert_eq!(names(&ls(&mut machine, "")?), ["alpha"]);
    fails(&mut machine, "rm delta", "no such file: delta")?;
    fails(&mut machine, "rm", "usage: rm NAME")?;

    // ---- The second NVDIMM: its own files, qualified names.
    ok(
        &mut machine,
        "create pmem1:beta 16K",
        &["created beta (16384 bytes)"],
    )?;
    ok(&mut machine, "write pmem1:beta 0 on-pmem1", &[])?;
    ok(&mut machine, "create pmem1:alpha 1K", &["created alpha"])?;
    ok(&mut machine, "write pmem1:alpha 0 second-alpha", &[])?;
    assert_eq!(cat(&mut machine, "pmem1:alpha", 0, 12)?, "second-alpha");
    assert_eq!(cat(&mut machine, "pmem0:alpha", 0, 11)?, "hello daxfs");
    assert_eq!(
        cat(&mut machine, "alpha", 0, 11)?,
        "hello daxfs",
        "an unqualified name finds pmem0 first"
    );
    assert_eq!(
        cat(&mut machine, "beta", 0, 8)?,
        "on-pmem1",
        "an unqualified name not on pmem0 is found on pmem1"
    );
    assert_eq!(
        ls(&mut machine, "pmem1")?,
        vec![
            ("pmem1:alpha".to_string(), 1024),
            ("pmem1:beta".to_string(), 16384)
        ]
    );
    assert_eq!(names(&ls(&mut machine, "pmem0")?), ["alpha"]);
    assert_eq!(
        names(&ls(&mut machine, "pmem1 alpha")?),
        ["pmem1:beta"],
        "ls DEVICE AFTER starts after AFTER"
    );
    fails(&mut machine, "cat pmem0:beta", "no such file: beta")?;
    ok(&mut machine, "rm pmem1:alpha", &["removed alpha"])?;
    assert_eq!(
        cat(&mut machine, "alpha", 0, 11)?,
        "hello daxfs",
        "rm pmem1:alpha leaves pmem0:alpha"
    );

    // ---- mkfs refuses devices in use and asks before erasing.
    fails(&mut machine, "mkfs pmem0 --yes", "pmem0 is in use")?;
    fails(&mut machine, "mkfs pmem1", "pmem1 is in use")?;
    fails(&mut machine, "mkfs pmem9", "no such device: pmem9")?;
    fsck_clean(&mut machine, &["pmem0", "pmem1"])?;
    let one = ok(&mut machine, "fsck pmem1", &["pmem1: fsck: clean"])?;
    assert!(
        !one.contains("pmem0"),
        "fsck DEVICE checks only DEVICE:\n{one}"
    );
    fails(&mut machine, "fsck pmem9", "no such device: pmem9")?;
    fails(&mut machine, "fsck pmem0 pmem1", "usage: fsck [DEVICE]")?;

    // ---- Files that must survive the power cut.
    ok(
        &mut machine,
        "create keep 1M",
        &["created keep (1048576 bytes)"],
    )?;
    ok(
        &mut machine,
        "write keep 4096 persisted across a power cut",
        &["wrote 28 bytes at 4096"],
    )?;
    ok(&mut machine, "clone keep keep-clone", &[])?;
    ok(&mut machine, "write keep-clone 4096 CLONED", &[])?;
    ok(&mut machine, "mv keep-clone keep2", &[])?;
    ok(&mut machine, "write pmem1:beta 100 second device", &[])?;
    let before = ls(&mut machine, "")?;
    machine.kill();

    // ---- Second boot on the same files: everything is back, fsck clean.
    let mut machine = Machine::boot_to_prompt(options(false))?;
    let boot = machine.output();
    boot_line(&boot, "storage: pmem0 was not unmounted cleanly");
    boot_line(&boot, "storage: pmem0 mounted daxfs");
    boot_line(&boot, "storage: pmem1 was not unmounted cleanly");
    boot_line(&boot, "storage: pmem1 mounted daxfs");
    assert!(
        !boot.contains("formatted and mounted"),
        "nothing is formatted:\n{boot}"
    );
    assert_eq!(
        ls(&mut machine, "")?,
        before,
        "the same files, with the same sizes"
    );
    assert_eq!(names(&before), ["alpha", "keep", "keep2", "pmem1:beta"]);
    assert_eq!(
        cat(&mut machine, "keep", 4096, 28)?,
        "persisted across a power cut"
    );
    assert_eq!(
        cat(&mut machine, "keep2", 4096, 28)?,
        "CLONEDted across a power cut"
    );
    assert_eq!(cat(&mut machine, "alpha", 0, 11)?, "hello daxfs");
    assert_eq!(cat(&mut machine, "pmem1:beta", 0, 8)?, "on-pmem1");
    assert_eq!(cat(&mut machine, "pmem1:beta", 100, 13)?, "second device");
    fsck_clean(&mut machine, &["pmem0", "pmem1"])?;
    // The filesystem keeps working after recovery.
    ok(&mut machine, "create after-reboot 4K", &[])?;
    ok(&mut machine, "write after-reboot 0 still-works", &[])?;
    assert_eq!(cat(&mut machine, "after-reboot", 0, 11)?, "still-works");
    fsck_clean(&mut machine, &["pmem0", "pmem1"])?;
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);

    // ---- Third boot after damage from the host (FORMAT.md "Superblock"):
    // pmem0's primary superblock fails its checksum (the backup in block 1
    // is good), pmem1 claims a newer format version in both copies.
    // journal_start flipped: the primary's checksum fails.
    patch(&pmem0, 40, &[0xff]);
    // Version 4 XOR 8 = 12: newer than this kernel's version 4.
    patch(&pmem1, 8, &8u32.to_le_bytes());
    patch(&pmem1, 4096 + 8, &8u32.to_le_bytes());
    let mut machine = Machine::boot_to_prompt(options(false))?;
    let boot = machine.output();
    boot_line(&boot, "storage: pmem0 mounted daxfs");
    assert!(
        !boot.contains("not unmounted cleanly"),
        "poweroff unmounted both cleanly:\n{boot}"
    );
    let newer = boot_line(&boot, "storage: pmem1");
    assert!(
        newer.contains("format version 12") && newer.contains("left alone"),
        "a newer format must be refused with a clear message: {newer}"
    );
    assert_eq!(
        names(&ls(&mut machine, "")?),
        ["after-reboot", "alpha", "keep", "keep2"],
        "pmem0 mounts from its backup superblock"
    );
    assert_eq!(cat(&mut machine, "keep", 4096, 9)?, "persisted");
    fsck_clean(&mut machine, &["pmem0"])?;
    fails(
        &mut machine,
        "cat pmem1:beta",
        "pmem1 has no mounted filesystem",
    )?;
    // The refused device stays available: mkfs can still take it.
    ok(
        &mut machine,
        "mkfs pmem1",
        &["this erases everything on pmem1 (32 MiB)"],
    )?;
    ok(
        &mut machine,
        "mkfs pmem1 --yes",
        &["storage: pmem1 formatted and mounted daxfs"],
    )?;
    assert!(ls(&mut machine, "pmem1")?.is_empty(), "a new filesystem");
    fsck_clean(&mut machine, &["pmem0", "pmem1"])?;
    machine.kill();
    let image = std::fs::read(&pmem0).expect("pmem0 image");
    assert_eq!(
        image[..128],
        image[4096..4096 + 128],
        "mount rewrote the damaged primary superblock from the backup"
    );
    Ok(())
}

/// XORs `bytes` into the file at `offset` (host-side damage between boots).
fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::Read;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|error| panic!("opening {}: {error}", path.display()));
    let mut old = vec![0u8; bytes.len()];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut old))
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let new: Vec<u8> = old.iter().zip(bytes).map(|(a, b)| a ^ b).collect();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(&new))
        .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
}

#[test]
fn format_never_mkfs_yes_and_foreign_data_left_alone() -> Result<(), HarnessError> {
    let name = "daxfs_format_never_foreign";
    let image = run_dir(name).join("nvdimm0.img");
    let foreign = foreign_image(name, 16 * MIB);
    let options = |config: &str, fresh: bool| {
        let blank = if fresh {
            Nvdimm::fresh(&image, 32 * MIB)
        } else {
            Nvdimm::existing(&image, 32 * MIB)
        };
        QemuOptions::new(name, Firmware::Bios)
            .with_boot_config(config)
            .with_nvdimm(blank)
            // Existing on every boot: the host wrote it.
            .with_nvdimm(Nvdimm::existing(&foreign, 16 * MIB))
    };

    // ---- format=never: the blank device waits for mkfs, the foreign one
    // is left alone.
    let mut machine = Machine::boot_to_prompt(options("format=never\n", true))?;
    let boot = machine.output();
    assert_device(&boot, "pmem0", "32 MiB");
    assert_device(&boot, "pmem1", "16 MiB");
    let line = boot_line(&boot, "storage: pmem0");
    assert!(
        line.contains("blank") && line.contains("not formatting") && line.contains("mkfs pmem0"),
        "a blank device under format=never needs a clear message: {line}"
    );
    let line = boot_line(&boot, "storage: pmem1");
    assert!(
        line.contains("not daxfs") && line.contains("left alone"),
        "a device with foreign data needs a clear message: {line}"
    );
    assert!(!boot.contains("formatted and mounted"), "{boot}");
    let df = ok(&mut machine, "df", &[])?;
    // No filesystem anywhere: both devices are listed as not mounted.
    let devices: Vec<&str> = df.lines().filter(|l| l.starts_with("pmem")).collect();
    assert!(
        devices.len() == 2 && devices.iter().all(|l| l.ends_with("(not mounted)")),
        "no filesystem anywhere:\n{df}"
    );
    fails(&mut machine, "ls", "no filesystem is mounted")?;
    fails(&mut machine, "ls pmem0", "pmem0 has no mounted filesystem")?;
    fails(&mut machine, "create x 1K", "no filesystem is mounted")?;
    fails(
        &mut machine,
        "create pmem0:x 1K",
        "pmem0 has no mounted filesystem",
    )?;
    fails(
        &mut machine,
        "create pmem1:x 1K",
        "pmem1 has no mounted filesystem",
    )?;
    fails(
        &mut machine,
        "cat pmem1:x",
        "pmem1 has no mounted filesystem",
    )?;
    fails(&mut machine, "fsck", "no filesystem to check")?;
    fails(
        &mut machine,
        "fsck pmem1",
        "pmem1 has no mounted filesystem",
    )?;

    // Without --yes mkfs only explains, and changes nothing.
    ok(
        &mut machine,
        "mkfs pmem0",
        &[
            "this erases everything on pmem0 (32 MiB)",
            "Run `mkfs pmem0 --yes` to confirm",
        ],
    )?;
    ok(
        &mut machine,
        "mkfs pmem1",
        &[
            "this erases everything on pmem1 (16 MiB)",
            "mkfs pmem1 --yes",
        ],
    )?;
    fails(&mut machine, "ls", "no filesystem is mounted")?;
    let bytes = std::fs::read(&image).expect("backing file");
    assert!(
        bytes.iter().all(|&b| b == 0),
        "mkfs without --yes must not write"
    );
    assert_still_foreign(&foreign);
    fails(
        &mut machine,
        "mkfs pmem0 --force",
        "usage: mkfs DEVICE [--yes]",
    )?;
    fails(&mut machine, "mkfs", "usage: mkfs DEVICE [--yes]")?;
    fails(&mut machine, "mkfs pmem9 --yes", "no such device: pmem9")?;

    // ---- mkfs --yes formats and mounts; the files work.
    ok(
        &mut machine,
        "mkfs pmem0 --yes",
        &["storage: pmem0 formatted and mounted daxfs"],
    )?;
    fails(&mut machine, "mkfs pmem0 --yes", "pmem0 is in use")?;
    assert!(ls(&mut machine, "")?.is_empty());
    ok(
        &mut machine,
        "create file 8K",
        &["created file (8192 bytes)"],
    )?;
    ok(&mut machine, "write file 10 made by mkfs", &[])?;
    assert_eq!(cat(&mut machine, "pmem0:file", 10, 12)?, "made by mkfs");
    fails(&mut machine, "ls pmem1", "pmem1 has no mounted filesystem")?;
    fsck_clean(&mut machine, &["pmem0"])?;
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(Duration::from_secs(20))?, EXIT_POWEROFF);
    assert_still_foreign(&foreign);

    // ---- format=if-blank on the next boot: the daxfs is mounted (clean
    // after poweroff) and the foreign data is still not formatted; an
    // export_raw= naming no device is reported.
    let mut machine =
        Machine::boot_to_prompt(options("format=if-blank\nexport_raw=pmem7\n", false))?;
    let boot = machine.output();
    boot_line(&boot, "storage: pmem0 mounted daxfs");
    boot_line(&boot, "storage: export_raw=pmem7: no such device (ignored)");
    assert!(
        !boot.contains("not unmounted cleanly"),
        "poweroff unmounts cleanly:\n{boot}"
    );
    let line = boot_line(&boot, "storage: pmem1");
    assert!(
        line.contains("not daxfs") && line.contains("left alone"),
        "format=if-blank must leave foreign data alone: {line}"
    );
    assert!(!boot.contains("formatted and mounted"), "{boot}");
    assert_eq!(ls(&mut machine, "")?, vec![("file".to_string(), 8192)]);
    assert_eq!(cat(&mut machine, "file", 10, 12)?, "made by mkfs");
    fsck_clean(&mut machine, &["pmem0"])?;
    machine.kill();
    assert_still_foreign(&foreign);
    Ok(())
}
