//! `cargo xtask bench cluster`: the 3-member quorum (`cargo xtask cluster`)
//! next to one appliance alone, same clients, same run.
//!
//! First one appliance boots alone (BIOS, TCG unless `DAXBOX_ACCEL`, a
//! 256 MiB NVDIMM, daxfs file `bench` of 128 MiB) and is measured; it is
//! stopped; then three appliances boot the same way with
//! `qemu-storage-daemon`'s quorum over them, and the quorum's export is
//! measured. Each: `nbdcopy -S 0 --flush` of 128 MiB of pseudo-random bytes
//! (write), `nbdcopy --no-extents ... null:` (read), fio `--ioengine=nbd`
//! 4 KiB random read and write at queue depth 1 and 16. The quorum's
//! figures include its fan-out: every write goes to three guests (all
//! under TCG on the same host), every read to three with
//! `read-pattern=quorum`.

use std::process::Command;
use std::time::Duration;

use crate::bench_nbd::{fio, mb_per_s, timed, write_random_file};
use crate::cluster::{boot_members, Cluster, ClusterOptions, ExportKind};
use crate::images::prepare_for_harness;
use crate::{step, XtaskError};

const USAGE: &str = "\
usage: cargo xtask bench cluster [--runtime SECONDS]

Boots one appliance alone (128 MiB daxfs export), measures it, stops it, then
boots a 3-member quorum cluster (cargo xtask cluster) with the same export
and measures the quorum's export: nbdcopy write and read of 128 MiB (MB/s),
fio --ioengine=nbd 4 KiB random read and write at queue depth 1 and 16 (IOPS,
--runtime seconds each, default 10). Prints the host CPU model and load and a
table with the ratio quorum / alone.";

const SIZE: u64 = 128 << 20;

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    write: f64,
    read: f64,
    read_qd1: f64,
    read_qd16: f64,
    write_qd1: f64,
    write_qd16: f64,
}

fn measure(
    label: &str,
    uri: &str,
    data: &std::path::Path,
    runtime: u64,
) -> Result<Figures, XtaskError> {
    step(&format!(
        "{label}: nbdcopy 128 MiB write, read; fio 4 KiB random, {runtime} s each"
    ));
    let (_, write) = timed(
        Command::new("nbdcopy")
            .args(["-S", "0", "--flush"])
            .arg(data)
            .arg(uri),
    )?;
    let (_, read) = timed(Command::new("nbdcopy").args(["--no-extents", uri, "null:"]))?;
    let figures = Figures {
        write: mb_per_s(SIZE, write),
        read: mb_per_s(SIZE, read),
        read_qd1: fio(uri, "randread", 1, runtime)?,
        read_qd16: fio(uri, "randread", 16, runtime)?,
        write_qd1: fio(uri, "randwrite", 1, runtime)?,
        write_qd16: fio(uri, "randwrite", 16, runtime)?,
    };
    println!("    {figures:?}");
    Ok(figures)
}

fn table(alone: &Figures, quorum: &Figures, runtime: u64) -> String {
    let rows = [
        (
            "seq write 128 MiB (nbdcopy)",
            alone.write,
            quorum.write,
            "MB/s",
        ),
        (
            "seq read 128 MiB (nbdcopy)",
            alone.read,
            quorum.read,
            "MB/s",
        ),
        (
            "4K rand read QD1 (fio)",
            alone.read_qd1,
            quorum.read_qd1,
            "IOPS",
        ),
        (
            "4K rand read QD16 (fio)",
            alone.read_qd16,
            quorum.read_qd16,
            "IOPS",
        ),
        (
            "4K rand write QD1 (fio)",
            alone.write_qd1,
            quorum.write_qd1,
            "IOPS",
        ),
        (
            "4K rand write QD16 (fio)",
            alone.write_qd16,
            quorum.write_qd16,
            "IOPS",
        ),
    ];
    let mut text = format!(
        "bench cluster (accel {}, fio {runtime} s per run):\n{:<30} {:>12} {:>12} {:>6}  {:>7}\n",
        std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into()),
        "",
        "alone",
        "3-quorum",
        "unit",
        "ratio"
    );
    for (name, ours, theirs, unit) in rows {
        let ratio = if ours > 0.0 { theirs / ours } else { f64::NAN };
        text += &format!("{name:<30} {ours:>12.1} {theirs:>12.1} {unit:>6}  {ratio:>7.3}\n");
    }
    text
}

/// Entry point of `cargo xtask bench cluster`.
pub fn cluster(args: &[String]) -> Result<(), XtaskError> {
    let runtime = match args {
        [] => 10,
        [flag, value] if flag == "--runtime" => value
            .parse()
            .ok()
            .filter(|&value| value > 0)
            .ok_or_else(|| XtaskError::Usage(USAGE.into()))?,
        _ => return Err(XtaskError::Usage(USAGE.into())),
    };
    prepare_for_harness()?;
    let mut options = ClusterOptions::new();
    options.size = SIZE;
    options.export = ExportKind::File("bench".into());
    options.nbd_port = 0;
    options.fresh = true;
    options.dir = daxbox_tests::target_dir().join("bench-cluster");
    options.prefix = "bench-cluster".into();
    let before = crate::bench_trim::host_facts();
    println!("    {before}");
    let data = options.dir.join("data-128M.bin");
    std::fs::create_dir_all(&options.dir)
        .map_err(|error| XtaskError::Io(format!("{}: {error}", options.dir.display())))?;
    write_random_file(&data, SIZE, 0x2545_f491_4f6c_dd1d)?;

    step("one appliance alone");
    let mut alone_options = options.clone();
    alone_options.prefix = "bench-cluster-alone".into();
    let mut machines = boot_members(&alone_options, &[0], true)?;
    let machine = machines
        .pop()
        .ok_or_else(|| XtaskError::Setup("no machine".into()))?;
    let uri = format!("nbd://127.0.0.1:{}/bench", machine.nbd_port());
    crate::cluster::nbd_probe(machine.nbd_port(), "bench", Duration::from_secs(60))
        .map_err(XtaskError::Setup)?;
    let alone = measure("alone", &uri, &data, runtime)?;
    drop(machine);

    step("three appliances in a quorum (qemu-storage-daemon)");
    let cluster = Cluster::start(options, &|line| println!("    {line}"))?;
    let quorum = measure("3-quorum", &cluster.uri(), &data, runtime);
    cluster.shutdown();
    let quorum = quorum?;
    let _ = std::fs::remove_file(&data);
    println!();
    println!("{before}");
    println!("{} (after)", crate::bench_trim::host_facts());
    print!("{}", table(&alone, &quorum, runtime));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_the_ratio() {
        let alone = Figures {
            write: 10.0,
            read_qd1: 100.0,
            ..Figures::default()
        };
        let quorum = Figures {
            write: 5.0,
            read_qd1: 50.0,
            ..Figures::default()
        };
        let text = table(&alone, &quorum, 10);
        assert!(text.contains("seq write 128 MiB (nbdcopy)"), "{text}");
        assert!(text.contains("0.500"), "{text}");
    }
}
