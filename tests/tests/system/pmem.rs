//! Persistent memory end to end: NVDIMM discovery through the ACPI NFIT,
//! `pmem=` carve-outs kept out of the volatile allocator, data surviving a
//! power cut, clear refusals for bad boot configs, and the `pmem bench`
//! command. Each test boots the real kernel in QEMU (TCG).

use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The `pmem` listing line of `device`, or a panic with the whole output.
fn device_line<'a>(listing: &'a str, device: &str) -> &'a str {
    listing
        .lines()
        .find(|line| line.starts_with(&format!("{device} ")))
        .unwrap_or_else(|| panic!("no line for {device} in:\n{listing}"))
}

/// Lines of `pmem` output that describe devices (`pmemN  ...`; other
/// subsystems may log lines of their own in between).
fn device_lines(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter(|line| {
            line.strip_prefix("pmem")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect()
}

fn nvdimm_options(name: &str, sizes: &[u64]) -> QemuOptions {
    let mut options = QemuOptions::new(name, Firmware::Bios);
    for (index, &size) in sizes.iter().enumerate() {
        options = options.with_nvdimm(Nvdimm::fresh(
            run_dir(name).join(format!("nvdimm{index}.img")),
            size,
        ));
    }
    options
}

#[test]
fn one_nvdimm_is_one_device_mapped_with_2m_pages() -> Result<(), HarnessError> {
    let mut machine = Machine::boot_to_prompt(nvdimm_options("pmem_one_nvdimm", &[GIB]))?;
    let boot = machine.output();
    assert!(
        boot.contains("pmem: pmem0 NFIT 0x100000000-0x13fffffff (1 GiB)"),
        "boot log should announce pmem0 at the NFIT's address:\n{boot}"
    );
    assert!(
        boot.contains("mapped 512 x 2 MiB + 0 x 4 KiB pages"),
        "1 GiB at 4 GiB must use 2 MiB pages only:\n{boot}"
    );
    let listing = machine.command("pmem")?;
    let lines = device_lines(&listing);
    assert_eq!(lines.len(), 1, "exactly one device:\n{listing}");
    let line = device_line(&listing, "pmem0");
    assert!(line.contains("NFIT"), "{line}");
    assert!(line.contains("0x100000000-0x13fffffff"), "{line}");
    assert!(line.contains("1 GiB"), "{line}");
    assert!(line.contains("pages: 512 x 2M + 0 x 4K"), "{line}");
    assert!(line.contains("persistence: ADR"), "{line}");
    assert!(
        line.contains("flush: clflush"),
        "QEMU's default CPU has no clwb: {line}"
    );
    assert!(!listing.contains("refusing"), "nothing refused:\n{listing}");
    // The raw NFIT is available for fixtures and parses as QEMU's layout.
    let dump = machine.command("acpi nfit")?;
    assert!(dump.contains("NFIT: 224 bytes"), "{dump}");
    assert!(dump.contains("|NFIT"), "{dump}");
    let tables = machine.command("acpi tables")?;
    assert!(
        tables.contains("ACPI tables:") && tables.contains("NFIT"),
        "{tables}"
    );
    Ok(())
}

#[test]
fn two_nvdimms_are_two_devices() -> Result<(), HarnessError> {
    let mut machine =
        Machine::boot_to_prompt(nvdimm_options("pmem_two_nvdimms", &[GIB, 512 * MIB]))?;
    let listing = machine.command("pmem")?;
    assert_eq!(device_lines(&listing).len(), 2, "two devices:\n{listing}");
    let first = device_line(&listing, "pmem0");
    assert!(first.contains("0x100000000-0x13fffffff"), "{first}");
    assert!(first.contains("1 GiB"), "{first}");
    assert!(first.contains("pages: 512 x 2M + 0 x 4K"), "{first}");
    let second = device_line(&listing, "pmem1");
    // QEMU places the second DIMM right after the first in device memory.
    assert!(second.contains("0x140000000-0x15fffffff"), "{second}");
    assert!(second.contains("512 MiB"), "{second}");
    assert!(second.contains("pages: 256 x 2M + 0 x 4K"), "{second}");
    let dump = machine.command("acpi nfit")?;
    assert!(dump.contains("NFIT: 408 bytes"), "{dump}");
    Ok(())
}

#[test]
fn eadr_platform_needs_no_flushes() -> Result<(), HarnessError> {
    // QEMU's nvdimm-persistence=cpu adds an NFIT platform capabilities
    // structure saying CPU caches are flushed on power loss.
    let options = nvdimm_options("pmem_eadr", &[256 * MIB])
        .with_extra_args(["-machine", "nvdimm-persistence=cpu"]);
    let mut machine = Machine::boot_to_prompt(options)?;
    let listing = machine.command("pmem")?;
    let line = device_line(&listing, "pmem0");
    assert!(line.contains("persistence: eADR"), "{line}");
    assert!(line.contains("flush: none (eADR)"), "{line}");
    let boot = machine.output();
    assert!(boot.contains("platform eADR"), "{boot}");
    let dump = machine.command("acpi nfit")?;
    assert!(dump.contains("NFIT: 240 bytes"), "{dump}");
    Ok(())
}

#[test]
fn uefi_finds_the_nvdimm_too() -> Result<(), HarnessError> {
    let options = QemuOptions::new("pmem_uefi_nvdimm", Firmware::Uefi).with_nvdimm(Nvdimm::fresh(
        run_dir("pmem_uefi_nvdimm").join("nvdimm0.img"),
        256 * MIB,
    ));
    let mut machine = Machine::boot_to_prompt(options)?;
    let listing = machine.command("pmem")?;
    assert_eq!(device_lines(&listing).len(), 1, "{listing}");
    let line = device_line(&listing, "pmem0");
    assert!(line.contains("NFIT"), "{line}");
    assert!(line.contains("256 MiB"), "{line}");
    assert!(line.contains("pages: 128 x 2M + 0 x 4K"), "{line}");
    Ok(())
}

#[test]
fn carved_ram_never_reaches_the_heap() -> Result<(), HarnessError> {
    let options =
        QemuOptions::new("pmem_carve_out", Firmware::Bios).with_boot_config("pmem=64M@0x8000000\n");
    let mut machine = Machine::boot_to_prompt(options)?;
    let listing = machine.command("pmem")?;
    assert_eq!(device_lines(&listing).len(), 1, "{listing}");
    let line = device_line(&listing, "pmem0");
    assert!(line.contains("bootconfig"), "{line}");
    assert!(line.contains("0x8000000-0xbffffff"), "{line}");
    assert!(line.contains("64 MiB"), "{line}");
    assert!(line.contains("none: RAM"), "{line}");
    assert!(line.contains("pages: 32 x 2M + 0 x 4K"), "{line}");
    // Take every free RAM frame (and a burst of heap blocks): none may
    // come from the carved range.
    let stress = machine.command_with_timeout("mem stress", Duration::from_secs(120))?;
    assert!(
        stress.contains(" 0 inside storage ranges"),
        "a frame from pmem0 reached the allocator:\n{stress}"
    );
    assert!(stress.contains("heap blocks inside heap: yes"), "{stress}");
    assert!(!stress.contains("error"), "{stress}");
    // The device works: write, flush, read back.
    machine.command("blk write pmem0 0x1234 carved-ram-ok")?;
    machine.command("blk flush pmem0")?;
    let dump = machine.command("blk read pmem0 0x1234 13")?;
    assert!(dump.contains("|carved-ram-ok|"), "{dump}");
    Ok(())
}

#[test]
fn data_survives_a_power_cut() -> Result<(), HarnessError> {
    let name = "pmem_power_cut";
    let image = run_dir(name).join("nvdimm0.img");
    let size = 64 * MIB;
    let token = format!("daxbox-{}", std::process::id());
    let mut machine = Machine::boot_to_prompt(
        QemuOptions::new(name, Firmware::Bios).with_nvdimm(Nvdimm::fresh(&image, size)),
    )?;
    let wrote = machine.command(&format!("blk write pmem0 0x3000 {token}"))?;
    assert!(
        wrote.contains(&format!("wrote {} bytes", token.len())),
        "{wrote}"
    );
    machine.command("blk write pmem0 0x200000 --pattern 0xa5 8192")?;
    // 64 KiB, aligned: the non-temporal (movnti) path of the block device.
    machine.command("blk write pmem0 0x400000 --pattern 0x77 65536")?;
    let flushed = machine.command("blk flush pmem0")?;
    assert!(flushed.contains("pmem0: flushed"), "{flushed}");
    machine.kill(); // SIGKILL: no shutdown path runs.

    // The backing file holds the bytes ...
    let bytes = std::fs::read(&image).expect("NVDIMM backing file");
    assert_eq!(&bytes[0x3000..0x3000 + token.len()], token.as_bytes());
    assert!(bytes[0x200000..0x202000].iter().all(|&b| b == 0xa5));
    assert_eq!(bytes[0x202000], 0, "pattern stops at its length");
    assert!(bytes[0x400000..0x410000].iter().all(|&b| b == 0x77));
    assert_eq!(bytes[0x410000], 0);

    // ... and the next boot on the same file reads them back.
    let mut machine = Machine::boot_to_prompt(
        QemuOptions::new(name, Firmware::Bios).with_nvdimm(Nvdimm::existing(&image, size)),
    )?;
    let dump = machine.command(&format!("blk read pmem0 0x3000 {}", token.len()))?;
    assert!(dump.contains(&format!("|{token}|")), "{dump}");
    let dump = machine.command("blk read pmem0 0x201ff0 32")?;
    assert!(
        dump.contains("00201ff0  a5 a5 a5 a5 a5 a5 a5 a5 a5 a5 a5 a5 a5 a5 a5 a5"),
        "{dump}"
    );
    assert!(
        dump.contains("00202000  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        "{dump}"
    );
    Ok(())
}

/// Boots with `config`, expects the shell and every `expected` line
/// fragment in the boot log; returns the machine for more checks.
fn boots_with_messages(
    name: &str,
    config: &str,
    expected: &[&str],
) -> Result<Machine, HarnessError> {
    let options = QemuOptions::new(name, Firmware::Bios).with_boot_config(config);
    let mut machine = Machine::boot_to_prompt(options)?;
    let version = machine.command("version")?;
    assert!(version.contains("daxbox"), "shell works: {version}");
    let boot = machine.output();
    for fragment in expected {
        assert!(
            boot.contains(fragment),
            "expected `{fragment}` in the boot log:\n{boot}"
        );
    }
    Ok(machine)
}

#[test]
fn overlapping_ranges_refuse_the_second() -> Result<(), HarnessError> {
    let mut machine = boots_with_messages(
        "pmem_bad_overlap",
        "pmem=64M@128M\npmem=64M@160M\n",
        &[
            "pmem: refusing pmem=64M@160M (0xa000000-0xdffffff): overlaps pmem0 0x8000000-0xbffffff",
            "pmem: 1 device(s), 1 range(s) refused",
        ],
    )?;
    let listing = machine.command("pmem")?;
    assert_eq!(
        device_lines(&listing).len(),
        1,
        "the first still comes up:\n{listing}"
    );
    assert!(listing.contains("refusing pmem=64M@160M"), "{listing}");
    Ok(())
}

#[test]
fn range_over_the_kernel_is_refused() -> Result<(), HarnessError> {
    // The BIOS bootloader loads the kernel ELF at 16 MiB (0x1000000).
    let mut machine = boots_with_messages(
        "pmem_bad_kernel",
        "pmem=4M@0x1000000\n",
        &[
            "pmem: refusing pmem=4M@0x1000000 (0x1000000-0x13fffff): overlaps kernel image 0x1000000-",
            "pmem: 0 device(s), 1 range(s) refused",
        ],
    )?;
    let listing = machine.command("pmem")?;
    assert!(listing.contains("no pmem devices"), "{listing}");
    Ok(())
}

#[test]
fn range_beyond_ram_is_refused() -> Result<(), HarnessError> {
    boots_with_messages(
        "pmem_bad_beyond_ram",
        "pmem=64M@4G\npmem=64M@0x1fff0000\n",
        &[
            "pmem: refusing pmem=64M@4G (0x100000000-0x103ffffff): beyond RAM (RAM ends at 0x",
            "pmem: refusing pmem=64M@0x1fff0000 (0x1fff0000-0x23feffff): beyond RAM (RAM ends at 0x",
            "pmem: 0 device(s), 2 range(s) refused",
        ],
    )?;
    Ok(())
}

#[test]
fn garbage_values_warn_and_boot() -> Result<(), HarnessError> {
    let mut machine = boots_with_messages(
        "pmem_bad_garbage",
        "pmem=lots@nowhere\npmem=64M\npmem=0@1G\npmem=64M@0x8000800\nfoo=bar\nnbd_port=99999\n\
         pmem=16M@0x10400000\n",
        &[
            "bootconfig line 1: bad value for pmem: size 'lots' is not a number (ignored)",
            "bootconfig line 2: bad value for pmem: '64M' is not SIZE@START",
            "bootconfig line 3: bad value for pmem: '0@1G': size is zero (ignored)",
            "bootconfig line 5: unknown key 'foo' (ignored)",
            "bootconfig line 6: bad value for nbd_port: '99999' is not a port number 1-65535 (using default)",
            "pmem: refusing pmem=64M@0x8000800 (0x8000800-0xc0007ff): start and length must be multiples of 4 KiB",
            "pmem: refusing pmem=16M@0x10400000 (0x10400000-0x113fffff): overlaps RAM in use",
        ],
    )?;
    let listing = machine.command("pmem")?;
    assert!(listing.contains("no pmem devices"), "{listing}");
    Ok(())
}

#[test]
fn bench_prints_bandwidth_next_to_memcpy() -> Result<(), HarnessError> {
    let name = "pmem_bench";
    let mut machine = Machine::boot_to_prompt(nvdimm_options(name, &[64 * MIB]))?;
    machine.command("blk write pmem0 0x10 keep-me")?;
    machine.command("blk flush pmem0")?;
    let output = machine.command_with_timeout("pmem bench pmem0", Duration::from_secs(300))?;
    println!("{output}");
    for size in ["4 KiB I/O", "2 MiB I/O"] {
        let line = output
            .lines()
            .find(|line| line.contains(size))
            .unwrap_or_else(|| panic!("no {size} line in:\n{output}"));
        // Every figure is a positive number of MiB/s.
        let figures: Vec<u64> = line
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|pair| pair[1].starts_with("MiB/s"))
            .map(|pair| pair[0].parse().expect("a number before MiB/s"))
            .collect();
        assert_eq!(figures.len(), 3, "read, write, memcpy: {line}");
        assert!(figures.iter().all(|&f| f > 0), "{line}");
    }
    // The benchmark restores what it overwrote.
    let dump = machine.command("blk read pmem0 0x10 7")?;
    assert!(dump.contains("|keep-me|"), "{dump}");
    Ok(())
}

#[test]
fn clwb_capable_cpu_flushes_with_clwb() -> Result<(), HarnessError> {
    // TCG's `max` CPU model reports clwb and clflushopt (CPUID.7.0:EBX).
    let options = nvdimm_options("pmem_cpu_max", &[64 * MIB]).with_extra_args(["-cpu", "max"]);
    let mut machine = Machine::boot_to_prompt(options)?;
    let listing = machine.command("pmem")?;
    let line = device_line(&listing, "pmem0");
    assert!(line.contains("flush: clwb"), "{line}");
    machine.command("blk write pmem0 0 --pattern 0x3c 65536")?;
    machine.command("blk flush pmem0")?;
    let dump = machine.command("blk read pmem0 0xfff0 16")?;
    assert!(
        dump.contains("0000fff0  3c 3c 3c 3c 3c 3c 3c 3c 3c 3c 3c 3c 3c 3c 3c 3c"),
        "{dump}"
    );
    Ok(())
}
