//! `cargo xtask bench clone`: fio 4 KiB random-write IOPS over NBD on a
//! freshly cloned daxfs file, on the original it was cloned from, and on
//! an unshared file of the same size (the baseline), at queue depth 1 and
//! 16, all in one invocation (issue 17: clones that stay fast under small
//! writes). No speed is asserted; the figures are printed.
//!
//! Setup: the release appliance boots (BIOS, q35, TCG unless
//! `DAXBOX_ACCEL` says otherwise) with pmem0 (2 GiB, daxfs). Over NBD,
//! nbdcopy fills `golden` and `plain` (256 MiB each) with the same
//! pseudo-random data, so every block of both is allocated. Then, for each
//! queue depth:
//! 1. `plain` (unshared): fio on it;
//! 2. clone: `clone golden vmQ` on the shell, fio on `vmQ` (every write
//!    lands in blocks shared with `golden`), `rm vmQ`;
//! 3. original: `clone golden keepQ` (so `golden`'s blocks are shared
//!    again), fio on `golden`, `rm keepQ`.
//!
//! Each fio run is `--rw=randwrite --bs=4k --iodepth=Q --time_based
//! --runtime=S` (default 15 s) with the `nbd` engine, a fixed seed and
//! `--norandommap`. Above the table: the host's CPU model and load
//! (`/proc/cpuinfo`, `/proc/loadavg`) before and after, since the guest
//! runs under TCG on a shared host. With today's 2 MiB copy-on-write the
//! first write into each shared chunk copies 2 MiB; block-granular
//! copy-on-write (issue 17) should bring the clone rows near the baseline.

use std::process::Command;
use std::time::Duration;

use daxbox_tests::nbd_client::terse;
use daxbox_tests::{run_dir, Firmware, Machine, Nvdimm, QemuOptions};

use crate::bench_trim::host_facts;
use crate::images::{harness, prepare_for_harness};
use crate::XtaskError;

const USAGE: &str = "\
usage: cargo xtask bench clone [--seconds S]

Boots the appliance with pmem0 (2 GiB, daxfs), fills golden and plain (256 MiB each)
over NBD, then measures fio 4 KiB random-write IOPS at queue depth 1 and 16 on a fresh
clone of golden, on golden while a clone shares its blocks, and on the unshared plain
(S seconds per run, default 15). Prints the host CPU model and load.
DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

const MIB: u64 = 1 << 20;
/// Each file's size.
const SIZE: u64 = 256 * MIB;
/// The run folder name (`target/test-runs/bench_clone/`).
const NAME: &str = "bench_clone";
/// The queue depths measured.
const DEPTHS: [u32; 2] = [1, 16];

/// The write IOPS of fio's terse v3 output.
fn terse_write_iops(output: &str) -> Option<f64> {
    terse::iops(output, true)
}

/// Runs `command`; its stdout, or an error naming it.
fn run(command: &mut Command, what: &str) -> Result<String, XtaskError> {
    println!("    {what}");
    let output = command.output().map_err(|error| XtaskError::Command {
        command: what.into(),
        problem: format!("{error} (install the NBD clients: `cargo xtask setup`)"),
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(XtaskError::Command {
            command: what.into(),
            problem: format!(
                "{}\nstdout:\n{stdout}\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(stdout)
}

/// One fio run of 4 KiB random writes at `depth`; returns write IOPS.
fn fio(port: u16, export: &str, depth: u32, seconds: u64) -> Result<f64, XtaskError> {
    let mut command = Command::new("fio");
    command
        .arg(format!("--name={export}-qd{depth}"))
        .args([
            "--ioengine=nbd",
            &format!("--uri=nbd://127.0.0.1:{port}/{export}"),
        ])
        .args(["--rw=randwrite", "--bs=4k", &format!("--iodepth={depth}")])
        .arg(format!("--size={SIZE}"))
        .arg(format!("--runtime={seconds}"))
        .args(["--time_based", "--norandommap", "--randseed=1717"])
        .args(["--output-format=terse", "--terse-version=3"]);
    let what = format!("fio randwrite 4k qd{depth} on {export} ({seconds} s)");
    let output = run(&mut command, &what)?;
    terse_write_iops(&output).ok_or_else(|| XtaskError::Command {
        command: what,
        problem: format!("no terse result line in:\n{output}"),
    })
}

/// Runs a shell command on the appliance; fails when it reports an error.
fn shell(machine: &mut Machine, command: &str, expect: &str) -> Result<(), XtaskError> {
    let output = machine.command(command).map_err(harness)?;
    if output.contains("error:") || !output.contains(expect) {
        return Err(XtaskError::Command {
            command: format!("{command} (appliance shell)"),
            problem: output,
        });
    }
    Ok(())
}

/// One row of the table: what, IOPS at each depth.
type Row = (&'static str, Vec<f64>);

/// The result table, with each row's ratio to the baseline (first row).
fn table(rows: &[Row]) -> String {
    let mut text = format!("{:<40}", "4 KiB random writes over NBD");
    for depth in DEPTHS {
        text += &format!(" {:>12} {:>7}", format!("QD{depth} IOPS"), "vs base");
    }
    text += "\n";
    let base = rows.first().map(|(_, v)| v.clone()).unwrap_or_default();
    for (what, iops) in rows {
        text += &format!("{what:<40}");
        for (i, value) in iops.iter().enumerate() {
            let ratio = base
                .get(i)
                .filter(|b| **b > 0.0)
                .map_or("-".to_string(), |b| format!("{:.0}%", value / b * 100.0));
            text += &format!(" {value:>12.0} {ratio:>7}");
        }
        text += "\n";
    }
    text
}

/// Entry point of `cargo xtask bench clone`.
pub fn clone(args: &[String]) -> Result<(), XtaskError> {
    let mut seconds = 15u64;
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--seconds" => {
                seconds = args
                    .get(index + 1)
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v > 0 && v <= 3600)
                    .ok_or_else(|| XtaskError::Usage(USAGE.into()))?;
                index += 2;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(XtaskError::Usage(USAGE.into())),
        }
    }
    prepare_for_harness()?;
    crate::step("booting the appliance (pmem0 2 GiB daxfs)");
    let dir = run_dir(NAME);
    let mut options = QemuOptions::new(NAME, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(Nvdimm::fresh(dir.join("pmem0.img"), 2048 * MIB));
    options.max_runtime = Duration::from_secs(3600);
    let mut machine = Machine::boot_to_prompt(options).map_err(harness)?;
    let port = machine.nbd_port();
    for file in ["golden", "plain"] {
        shell(&mut machine, &format!("create {file} 256M"), "created")?;
    }
    crate::step("nbdcopy: filling golden and plain (not measured)");
    let data = dir.join("data.img");
    std::fs::write(
        &data,
        daxbox_tests::nbd_client::test_image(SIZE as usize, 7),
    )
    .map_err(|e| XtaskError::Io(format!("{}: {e}", data.display())))?;
    for file in ["golden", "plain"] {
        let target = format!("nbd://127.0.0.1:{port}/{file}");
        run(
            Command::new("nbdcopy").arg(&data).arg(&target),
            &format!("nbdcopy {} {target}", data.display()),
        )?;
    }
    let _ = std::fs::remove_file(&data);
    let facts_before = host_facts();
    let mut rows: Vec<Row> = vec![
        ("unshared file (baseline)", Vec::new()),
        ("fresh clone of golden", Vec::new()),
        ("golden while a clone shares it", Vec::new()),
    ];
    for depth in DEPTHS {
        crate::step(&format!("queue depth {depth}"));
        rows[0].1.push(fio(port, "plain", depth, seconds)?);
        let clone = format!("vm{depth}");
        shell(&mut machine, &format!("clone golden {clone}"), "cloned")?;
        rows[1].1.push(fio(port, &clone, depth, seconds)?);
        shell(&mut machine, &format!("rm {clone}"), "")?;
        let keep = format!("keep{depth}");
        shell(&mut machine, &format!("clone golden {keep}"), "cloned")?;
        rows[2].1.push(fio(port, "golden", depth, seconds)?);
        shell(&mut machine, &format!("rm {keep}"), "")?;
    }
    let facts_after = host_facts();
    drop(machine);
    println!();
    println!(
        "bench clone (accel {}, {SIZE} byte files, {seconds} s per fio run):",
        std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into())
    );
    println!("  before: {facts_before}");
    println!("  after:  {facts_after}");
    print!("{}", table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_line_gives_write_iops() {
        let mut fields = vec!["0"; 130];
        fields[0] = "3";
        fields[terse::WRITE_IOPS] = "812.5";
        let line = fields.join(";");
        assert_eq!(terse_write_iops(&format!("noise\n{line}\n")), Some(812.5));
        assert_eq!(terse_write_iops("no result"), None);
    }

    #[test]
    fn table_shows_each_row_against_the_baseline() {
        let rows: Vec<Row> = vec![
            ("unshared file (baseline)", vec![1000.0, 4000.0]),
            ("fresh clone of golden", vec![10.0, 2000.0]),
        ];
        let text = table(&rows);
        let clone = text.lines().find(|l| l.starts_with("fresh clone")).unwrap();
        assert!(clone.contains(" 1%") && clone.ends_with("50%"), "{text}");
        assert!(text.lines().next().unwrap().contains("QD16 IOPS"), "{text}");
    }
}
