//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets in `fuzz/`.
//!
//! One `cargo fuzz build` of every target, then each target's binary runs
//! alone (one process, `-jobs` 1) for a time budget over a working corpus
//! in `target/fuzz-corpus/TARGET/` (grown by libFuzzer, not in git)
//! seeded from the committed `fuzz/corpus/TARGET/`. Per target it prints
//! executions, executions per second, new corpus entries and crashes; a
//! crash prints the panic, the reproducer path under
//! `fuzz/artifacts/TARGET/` and the command that replays it. `cargo xtask
//! test` calls [`ci_stage`]: every target for [`CI_SECONDS`].
//!
//! Built without a sanitizer (`-s none`): every fuzzed crate forbids or
//! denies `unsafe`, so AddressSanitizer would find nothing there and
//! would halve the executions; panics, overflow checks and debug
//! assertions are what the targets trip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{cargo, describe, run_checked, setup, step, wants_help, XtaskError};

/// Every target, in the order they run (`fuzz/fuzz_targets/NAME.rs`).
pub const TARGETS: &[&str] = &[
    "nbd_session",
    "nbd_daxfs",
    "daxfs_mount",
    "daxfs_decode",
    "http",
    "netstack_poll",
    "bootconfig",
    "nfit",
    "mcfg",
];

/// Budget per target in `cargo xtask test`: 9 targets take under two
/// minutes, the build about one on two cores.
pub const CI_SECONDS: u64 = 12;

/// libFuzzer's seed in the `cargo xtask test` stage: the same mutations on
/// every CI run, so a red fuzz stage is a reproducible finding, not the
/// luck of the run (`cargo xtask fuzz` keeps libFuzzer's random seed).
pub const CI_SEED: u64 = 1;
/// Default budget per target of `cargo xtask fuzz`.
const DEFAULT_SECONDS: u64 = 60;
/// One input running longer than this is a finding (a hang).
const INPUT_TIMEOUT_SECONDS: u64 = 10;
/// Memory limit of a fuzzing process; beyond it is a finding.
const RSS_LIMIT_MB: u64 = 2048;

const USAGE: &str = "\
usage: cargo xtask fuzz [--seconds N] [TARGET...]
       cargo xtask fuzz list
       cargo xtask fuzz replay TARGET FILE...

Builds every fuzz target once (cargo fuzz build -s none, cargo-fuzz is
installed when missing), then runs each TARGET (default: all) for N seconds
(default 60), one process each, over target/fuzz-corpus/TARGET seeded from
fuzz/corpus/TARGET. Prints executions, executions/s, new corpus entries and
crashes per target; a crash prints its reproducer (fuzz/artifacts/TARGET/...)
and the command that replays it, and the run fails.
  list     the targets
  replay   runs TARGET once on each FILE (a crash input) and shows the panic;
           keep a fixed crash in fuzz/regressions/TARGET/ so the host tests
           (cargo test -p daxbox-fuzz-harness) replay it for good";

/// The repository root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

fn binary(target: &str) -> PathBuf {
    root()
        .join("fuzz/target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// What one target's run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Run {
    /// Inputs executed.
    pub execs: u64,
    /// Executions per second, as libFuzzer reports them.
    pub execs_per_second: u64,
    /// Inputs added to the working corpus.
    pub new_units: u64,
    /// The reproducer, when it crashed.
    pub crash: Option<String>,
}

/// Reads libFuzzer's final statistics (`-print_final_stats=1`) and the
/// artifact line out of its output.
pub fn parse_output(output: &str) -> Run {
    let mut run = Run::default();
    for line in output.lines() {
        let stat = |name: &str| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim_start_matches(':').trim().parse::<u64>().ok())
        };
        if let Some(n) = stat("stat::number_of_executed_units") {
            run.execs = n;
        } else if let Some(n) = stat("stat::average_exec_per_sec") {
            run.execs_per_second = n;
        } else if let Some(n) = stat("stat::new_units_added") {
            run.new_units = n;
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            run.crash = Some(path.trim().to_string());
        }
    }
    run
}

/// `cargo fuzz build` of every target.
fn build() -> Result<(), XtaskError> {
    setup::ensure_cargo_fuzz()?;
    step("building every fuzz target (cargo fuzz build, no sanitizer)");
    let mut command = cargo();
    command
        .current_dir(root())
        .args(["fuzz", "build", "-s", "none"]);
    println!("    {}", describe(&command));
    run_checked(&mut command)
}

/// Runs one built target for `seconds`; its output goes to
/// `target/fuzz-logs/TARGET.log`.
fn run_target(target: &str, seconds: u64, seed: Option<u64>) -> Result<Run, XtaskError> {
    let root = root();
    let work = root.join("target/fuzz-corpus").join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    let logs = root.join("target/fuzz-logs");
    for dir in [&work, &artifacts, &logs] {
        std::fs::create_dir_all(dir)
            .map_err(|e| XtaskError::Io(format!("{}: {e}", dir.display())))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| XtaskError::Io(format!("{}: {e}", log_path.display())))?;
    let mut command = Command::new(binary(target));
    command
        .current_dir(&root)
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .args(seed.map(|seed| format!("-seed={seed}")))
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(log.try_clone().map_err(|e| XtaskError::Io(e.to_string()))?);
    println!("    {}  2> {}", describe(&command), log_path.display());
    let status = command.status().map_err(|error| XtaskError::Command {
        command: describe(&command),
        problem: error.to_string(),
    })?;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut run = parse_output(&output);
    if !status.success() && run.crash.is_none() {
        // Killed some other way (rss limit without an artifact, a signal).
        run.crash = Some(format!("(no artifact; see {})", log_path.display()));
    }
    if let Some(crash) = &run.crash {
        println!("    --- {target}: last lines of {}", log_path.display());
        let lines: Vec<&str> = output.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            println!("    | {line}");
        }
        println!("    CRASH in {target}: reproducer {crash}");
        println!("    replay it:  cargo xtask fuzz replay {target} {crash}");
        println!("    then fix the bug and keep the input: cp {crash} fuzz/regressions/{target}/");
    }
    Ok(run)
}

/// Builds, then runs `targets` for `seconds` each; prints the table.
/// Returns (targets without a crash, targets with one).
fn fuzz(targets: &[String], seconds: u64, seed: Option<u64>) -> Result<(u64, u64), XtaskError> {
    build()?;
    let mut rows = Vec::new();
    for target in targets {
        step(&format!("fuzzing {target} for {seconds} s"));
        let since = Instant::now();
        let run = run_target(target, seconds, seed)?;
        let elapsed = since.elapsed().as_secs_f64();
        println!(
            "    {target}: {} execs, {} execs/s, {} new corpus entries, {} crash(es)",
            run.execs,
            run.execs_per_second,
            run.new_units,
            u8::from(run.crash.is_some())
        );
        rows.push((target.clone(), run, elapsed));
    }
    step("fuzz summary");
    println!(
        "    {:<14} {:>7} {:>12} {:>9} {:>6} {:>7}",
        "target", "seconds", "execs", "execs/s", "new", "crashes"
    );
    let (mut ok, mut crashed, mut total) = (0, 0, 0);
    for (target, run, elapsed) in &rows {
        println!(
            "    {:<14} {:>7.0} {:>12} {:>9} {:>6} {:>7}",
            target,
            elapsed,
            run.execs,
            run.execs_per_second,
            run.new_units,
            u8::from(run.crash.is_some())
        );
        total += run.execs;
        if run.crash.is_some() {
            crashed += 1;
        } else {
            ok += 1;
        }
    }
    println!("    total {total} execs; {crashed} target(s) crashed");
    Ok((ok, crashed))
}

/// The stage of `cargo xtask test`: every target for [`CI_SECONDS`].
/// Returns (targets without a crash, targets with one); a failed build is
/// an error.
pub fn ci_stage() -> Result<(u64, u64), XtaskError> {
    let all: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    fuzz(&all, CI_SECONDS, Some(CI_SEED))
}

fn check_target(target: &str) -> Result<(), XtaskError> {
    if TARGETS.contains(&target) {
        Ok(())
    } else {
        Err(XtaskError::Usage(format!(
            "fuzz: unknown target `{target}` (targets: {})",
            TARGETS.join(" ")
        )))
    }
}

/// Entry point of `cargo xtask fuzz`.
pub fn fuzz_command(args: &[String]) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("list") => {
            for target in TARGETS {
                println!("{target}");
            }
            return Ok(());
        }
        Some("replay") => {
            let (Some(target), files) = (args.get(1), args.get(2..).unwrap_or(&[])) else {
                return Err(XtaskError::Usage(format!(
                    "fuzz replay: which target?\n\n{USAGE}"
                )));
            };
            check_target(target)?;
            if files.is_empty() {
                return Err(XtaskError::Usage(format!(
                    "fuzz replay: which files?\n\n{USAGE}"
                )));
            }
            build()?;
            step(&format!("replaying {} input(s) on {target}", files.len()));
            let mut command = Command::new(binary(target));
            command.args(files).env("RUST_BACKTRACE", "1");
            println!("    {}", describe(&command));
            return run_checked(&mut command);
        }
        _ => {}
    }
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--seconds" => {
                seconds = args
                    .get(index + 1)
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s > 0)
                    .ok_or_else(|| XtaskError::Usage("--seconds wants a number > 0".into()))?;
                index += 2;
            }
            other if other.starts_with('-') => {
                return Err(XtaskError::Usage(format!(
                    "fuzz: unknown option `{other}`\n\n{USAGE}"
                )))
            }
            target => {
                check_target(target)?;
                targets.push(target.to_string());
                index += 1;
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    let (_, crashed) = fuzz(&targets, seconds, None)?;
    if crashed == 0 {
        Ok(())
    } else {
        Err(XtaskError::TestsFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_and_the_artifact_are_read() {
        let output = "\
INFO: Running with entropic power schedule (0xFF, 100).
#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb
thread '<unnamed>' panicked at fuzz/harness/src/http.rs:20:5:
==1234== ERROR: libFuzzer: deadly signal
artifact_prefix='/r/fuzz/artifacts/http/'; Test unit written to /r/fuzz/artifacts/http/crash-abc
stat::number_of_executed_units: 35833
stat::average_exec_per_sec:     3257
stat::new_units_added:          849
";
        assert_eq!(
            parse_output(output),
            Run {
                execs: 35833,
                execs_per_second: 3257,
                new_units: 849,
                crash: Some("/r/fuzz/artifacts/http/crash-abc".into()),
            }
        );
        assert_eq!(parse_output(""), Run::default());
    }

    #[test]
    fn every_target_has_an_entry_point_and_a_corpus() {
        let root = root();
        for target in TARGETS {
            assert!(
                root.join("fuzz/fuzz_targets")
                    .join(format!("{target}.rs"))
                    .is_file(),
                "{target}"
            );
            assert!(root.join("fuzz/corpus").join(target).is_dir(), "{target}");
        }
        let entry_points = std::fs::read_dir(root.join("fuzz/fuzz_targets"))
            .unwrap()
            .count();
        assert_eq!(entry_points, TARGETS.len(), "a target missing from TARGETS");
    }
}
