//! `cargo xtask bench`: the place for benchmark subcommands.
//!
//! `net` (bench_net.rs), `nbd` (bench_nbd.rs), `s3` (bench_s3.rs), `trim`
//! (bench_trim.rs), `clone` (bench_clone.rs) and `tls` (bench_tls.rs) exist.
//! To add one: append an entry to [`BENCHMARKS`] and a
//! function `fn(&[String]) -> Result<(), XtaskError>` that boots the
//! appliance with `daxbox_tests::Machine` (or reuses `run::Launch`), drives
//! it with a real client (fio's `nbd` engine, nbdcopy, curl) and prints its
//! figures.

use crate::XtaskError;

/// A benchmark: name, one-line description, entry point.
type Benchmark = (
    &'static str,
    &'static str,
    fn(&[String]) -> Result<(), XtaskError>,
);

/// Registered benchmarks (`cargo xtask bench <name> [options]`).
const BENCHMARKS: &[Benchmark] = &[
    (
        "net",
        "HTTP download/upload throughput through hostfwd, idle QEMU CPU",
        crate::bench_net::net,
    ),
    (
        "nbd",
        "nbdcopy MB/s and fio 4K IOPS, appliance vs qemu-nbd on the host",
        crate::bench_nbd::nbd,
    ),
    (
        "cluster",
        "nbdcopy MB/s and fio 4K IOPS, 3-member quorum vs one appliance alone",
        crate::bench_cluster::cluster,
    ),
    (
        "tls",
        "nbdcopy, 4K QD1 reads, curl GET and handshake time with and without TLS",
        crate::bench_tls::tls,
    ),
    (
        "s3",
        "S3 PUT/GET MB/s of 256 MiB (curl, boto3) next to nbdcopy on the same appliance",
        crate::bench_s3::s3,
    ),
    (
        "trim",
        "4K read latency of another client during a 1 GiB TRIM / WRITE_ZEROES",
        crate::bench_trim::trim,
    ),
    (
        "clone",
        "fio 4K randwrite IOPS on a fresh clone, its original, an unshared file",
        crate::bench_clone::clone,
    ),
];

fn usage() -> String {
    let mut text = String::from("usage: cargo xtask bench <name> [options]\n\nbenchmarks:\n");
    if BENCHMARKS.is_empty() {
        text += "  (none yet: add them in xtask/src/bench.rs)\n";
    }
    for (name, description, _) in BENCHMARKS {
        text += &format!("  {name:<12} {description}\n");
    }
    text
}

/// Entry point of `cargo xtask bench`.
pub fn bench_command(args: &[String]) -> Result<(), XtaskError> {
    let Some((name, rest)) = args.split_first() else {
        print!("{}", usage());
        return Ok(());
    };
    if name == "--help" || name == "-h" {
        print!("{}", usage());
        return Ok(());
    }
    match BENCHMARKS.iter().find(|(known, _, _)| known == name) {
        Some((_, _, run)) => run(rest),
        None => Err(XtaskError::Usage(format!(
            "unknown benchmark `{name}`\n\n{}",
            usage()
        ))),
    }
}
