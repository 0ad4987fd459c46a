//! The crash-check runner: explores daxfs crash images until a budget is
//! spent and prints a summary. `cargo xtask test` runs the bounded CI
//! check, `cargo xtask crash --budget SECONDS` the long mode; both call
//! this binary with `cargo run --release -p daxfs-crashcheck --bin
//! crashcheck -- ...`.
//!
//! Exit status: 0 when no violation was found and at least
//! `--min-distinct` distinct images were checked, 1 otherwise, 2 on a
//! usage error.

use std::process::ExitCode;

use daxfs_crashcheck::daxfs_target::{self, Daxfs};
use std::collections::BTreeSet;

use daxfs_crashcheck::harness::{build_base, run_suite, Budget, Totals};
use daxfs_crashcheck::workloads::{setup, templates};
use daxfs_crashcheck::ImageHash;

const USAGE: &str = "usage: crashcheck [--budget SECONDS] [--images N] [--min-distinct N] \
[--workloads N] [--skip N] [--seed N] [--jobs N] [--quiet]
  --budget SECONDS    stop after this long (default: no limit)
  --images N          stop after N distinct crash images (default 110000)
  --min-distinct N    fail if fewer than N distinct images were checked (default 0)
  --workloads N       stop after N workloads
  --skip N            start at workload N of the sequence (all singles and
                      pairs are the first 552; the CI run covers about 640)
  --seed N            seed of every random choice (default 1)
  --jobs N            worker threads, each taking every N-th workload (default 1);
                      threads check some images twice, so the distinct count
                      (the union, which --min-distinct checks) ends below --images
  --quiet             no progress lines";

struct Args {
    budget: Budget,
    jobs: usize,
    min_distinct: u64,
    seed: u64,
    quiet: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        budget: Budget {
            skip: 0,
            part: (0, 1),
            distinct: 110_000,
            seconds: f64::INFINITY,
            workloads: u64::MAX,
        },
        jobs: 1,
        min_distinct: 0,
        seed: 1,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            args.quiet = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: '{value}' is not a whole number"))
        };
        match flag.as_str() {
            "--budget" => {
                args.budget.seconds = value
                    .trim_end_matches('s')
                    .parse::<f64>()
                    .map_err(|_| format!("--budget: '{value}' is not a number of seconds"))?;
                // A time budget alone means "as many images as fit".
                args.budget.distinct = u64::MAX;
            }
            "--images" => args.budget.distinct = number()?,
            "--min-distinct" => args.min_distinct = number()?,
            "--workloads" => args.budget.workloads = number()?,
            "--skip" => {
                args.budget.skip = usize::try_from(number()?).map_err(|_| "--skip: too large")?
            }
            "--seed" => args.seed = number()?,
            "--jobs" => args.jobs = usize::try_from(number()?).map_err(|_| "--jobs: too large")?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

fn summary(t: &Totals, seconds: f64) {
    println!(
        "crashcheck: {} workloads, {} crash points, {} images checked, {} distinct, \
         {} recovery mounts + {} re-crash mounts, {} byte-wise checks, {} write-after-recovery probes in {:.1} s \
         ({:.0} distinct images/s)",
        t.workloads,
        t.points,
        t.images,
        t.distinct,
        t.mounts,
        t.recrash_mounts,
        t.content_checks,
        t.probe_mounts,
        seconds,
        t.distinct as f64 / seconds.max(1e-9)
    );
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("crashcheck: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = std::time::Instant::now();
    // Each thread runs every `jobs`-th workload with its own filesystem,
    // caches and counters (the explorer is single-threaded by design);
    // the distinct images are the union of the threads' image sets.
    let jobs = args.jobs.max(1);
    let threads: Vec<_> = (0..jobs)
        .map(|share| {
            let mut budget = args.budget;
            budget.part = (share, jobs);
            budget.distinct = budget.distinct.div_ceil(jobs as u64);
            let (seed, quiet) = (args.seed, args.quiet);
            std::thread::spawn(move || -> Result<(Totals, BTreeSet<ImageHash>), String> {
                let config = daxfs_target::config(seed);
                let base = build_base::<Daxfs>(daxfs_target::REGION, &setup(), &config.semantics)
                    .map_err(|e| format!("cannot build the starting image: {e}"))?;
                let templates = templates();
                let mut last = 0.0;
                Ok(run_suite::<Daxfs>(
                    &base,
                    &templates,
                    &config,
                    budget,
                    |t, _, elapsed| {
                        if !quiet && elapsed - last >= 5.0 {
                            last = elapsed;
                            print!("[{share}] ");
                            summary(t, elapsed);
                        }
                    },
                ))
            })
        })
        .collect();
    let mut totals = Totals::default();
    let mut seen = BTreeSet::new();
    for thread in threads {
        match thread.join() {
            Ok(Ok((t, s))) => {
                totals.workloads += t.workloads;
                totals.points += t.points;
                totals.images += t.images;
                totals.mounts += t.mounts;
                totals.recrash_mounts += t.recrash_mounts;
                totals.content_checks += t.content_checks;
                totals.probe_mounts += t.probe_mounts;
                totals.violations += t.violations;
                totals.findings.extend(t.findings);
                seen.extend(s);
            }
            Ok(Err(e)) => {
                eprintln!("crashcheck: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("crashcheck: a worker thread panicked");
                return ExitCode::FAILURE;
            }
        }
    }
    totals.distinct = seen.len() as u64;
    let seconds = start.elapsed().as_secs_f64();
    summary(&totals, seconds);
    for finding in &totals.findings {
        println!("VIOLATION: {finding}");
    }
    let mut ok = true;
    if totals.violations > 0 {
        println!("crashcheck: FAILED: {} violations", totals.violations);
        ok = false;
    }
    if totals.distinct < args.min_distinct {
        println!(
            "crashcheck: FAILED: only {} distinct crash images, at least {} required",
            totals.distinct, args.min_distinct
        );
        ok = false;
    }
    if ok {
        println!("crashcheck: ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
