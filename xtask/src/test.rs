//! `cargo xtask test`: every test, one summary.
//!
//! Steps, cheapest first: set-up; the gates (`cargo fmt --check`, then
//! `cargo clippy -D warnings` over the workspace, kernel target included),
//! which stop the run at once when they fail; host tests of all library
//! crates and xtask; the crash-state explorer; a short run of every fuzz
//! target (`fuzz.rs`); the build of the boot tool
//! and the kernel; clippy of the boot tool (it needs the bootloader build);
//! the boot tool's tests; the QEMU system tests (`daxbox-tests`) with
//! `DAXBOX_KERNEL`/`DAXBOX_BOOT_TOOL` pointing at the fresh builds; then
//! (not with `--filter` or `--no-system`) a 1-minute soak, a 3-cycle
//! power cut and the cluster test (`soak.rs`, `powercut.rs`,
//! `cluster_test.rs`), one pass or fail each.
//! `--no-fail-fast` everywhere: one failing test binary must not hide the
//! results of the others. Output streams live. Every `test result:` line
//! is added up; the LAST line printed is exactly `N passed, N failed`. A
//! step that fails without a failed test (build error, lint, crash) counts
//! as one failure.

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use crate::{
    cargo, cluster_test, describe, fuzz, images, powercut, setup, soak, step, wants_help,
    XtaskError,
};

const USAGE: &str = "\
usage: cargo xtask test [--filter TEXT] [--test-threads N] [--no-system]

Runs set-up, then the fast gates, then everything that needs a build, in
order of cost (a formatting or lint failure stops the run within seconds):
  1. format:     cargo fmt --all -- --check
  2. lint:       cargo clippy --workspace --all-targets --exclude daxbox-kernel --exclude daxbox-boot -- -D warnings
                 cargo clippy -p daxbox-kernel -- -D warnings   (x86_64-unknown-none)
  3. host tests: cargo test --no-fail-fast --workspace --exclude daxbox-kernel --exclude daxbox-tests --exclude daxbox-boot
  4. crash-state explorer: at least 110,000 distinct daxfs crash images, 2 threads (release build; skipped with --filter)
  4b. fuzz:      cargo fuzz build -s none, then each fuzz target 12 s over its seed corpus (skipped with --filter);
                 a crash fails the run and prints the reproducer and `cargo xtask fuzz replay ...`
  5. build the kernel and daxbox-boot (the bootloader stages: minutes on a fresh machine)
  6. lint daxbox-boot: cargo clippy -p daxbox-boot --release --all-targets -- -D warnings (reuses step 5)
  7. boot tool:  cargo test -p daxbox-boot --release
  8. system:     cargo test -p daxbox-tests -- --test-threads=N   (QEMU; logs in target/test-runs/<test>/)
  9. soak:       cargo xtask soak --minutes 1 (64 clients; skipped with --filter)
 10. power cut:  cargo xtask powercut --cycles 3 (skipped with --filter)
 11. cluster:    cargo xtask cluster test (3 appliances + qemu-storage-daemon quorum; skipped with --filter)
Options:
  --filter TEXT       only tests whose name contains TEXT (passed to every cargo test; gates still run)
  --test-threads N    parallel QEMU system tests (default 2)
  --no-system         skip the QEMU system tests, the soak, the power cut and the cluster test
The last line is `N passed, N failed`; the exit status is non-zero if anything failed.";

/// The crates built for `x86_64-unknown-none` (`forced-target`).
const KERNEL_TARGET_CRATES: &[&str] = &["daxbox-kernel"];

/// Distinct crash images the CI run asks its threads for, together. The
/// threads see some images twice, so the union (what is checked against
/// [`CRASH_MIN_DISTINCT`]) is smaller: 112,830 with the fixed seed.
const CRASH_IMAGES: u64 = 128_000;
/// Worker threads of the CI run: the explorer is CPU-bound and the suite
/// runs nothing beside it. Fixed (not the machine's core count), so every
/// machine explores the same images.
const CRASH_JOBS: u64 = 2;
/// Below this many distinct images the explorer run fails.
const CRASH_MIN_DISTINCT: u64 = 110_000;
/// The soak stage's length (`cargo xtask soak --minutes 1`: 78 s with
/// boot and wind-down on the 2-core development machine under load).
const SOAK_MINUTES: u64 = 1;
/// The power-cut stage's cycles (the stage took 46 s for 3, boot included).
const POWERCUT_CYCLES: u64 = 3;

/// `cargo run --release` of the crash-state explorer with `args`.
pub fn crash_command(args: &[String]) -> Command {
    let mut command = cargo();
    command
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "daxfs-crashcheck",
            "--bin",
            "crashcheck",
            "--",
        ])
        .args(args);
    command
}

/// `cargo xtask crash [--budget SECONDS] [--seed N] [--skip N] [--jobs N]`:
/// the long mode of the crash-state explorer; prints images per second as
/// it goes and a summary.
pub fn crash_mode(args: &[String]) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!(
            "usage: cargo xtask crash [--budget SECONDS] [--seed N] [--skip N] [--jobs N] [--images N]\n\n\
             Explores daxfs crash images until the budget (default 600 s) runs out, printing\n\
             progress every 5 s and a summary. Exits non-zero on any violation.\n\
             --skip 756 starts at the triples (single ops and pairs come first)."
        );
        return Ok(());
    }
    let mut forwarded: Vec<String> = args.to_vec();
    if !args.iter().any(|a| a == "--budget" || a == "--images") {
        forwarded.extend(["--budget".to_string(), "600".to_string()]);
    }
    step("crash-state explorer (long mode)");
    let mut command = crash_command(&forwarded);
    let (ok, _) = run_streaming(&mut command)?;
    if ok {
        Ok(())
    } else {
        Err(XtaskError::TestsFailed)
    }
}

/// Totals of `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Tests passed.
    pub passed: u64,
    /// Tests failed.
    pub failed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Parses one libtest summary line, e.g.
/// `test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; ...`.
pub fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = &line[line.find("test result: ")?..];
    let mut counts = Counts::default();
    let mut found = (false, false);
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(number)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => (counts.passed, found.0) = (number, true),
            "failed" => (counts.failed, found.1) = (number, true),
            _ => {}
        }
    }
    (found.0 && found.1).then_some(counts)
}

/// Sums all summary lines in `output`.
pub fn sum_results(output: &str) -> Counts {
    let mut total = Counts::default();
    for counts in output.lines().filter_map(parse_result_line) {
        total += counts;
    }
    total
}

/// Runs `command`, copying its stdout live and keeping it for parsing
/// (stderr, where cargo reports compilation, goes straight through).
fn run_streaming(command: &mut Command) -> Result<(bool, String), XtaskError> {
    let description = describe(command);
    println!("    {description}");
    let mut child =
        command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| XtaskError::Command {
                command: description.clone(),
                problem: error.to_string(),
            })?;
    let mut captured = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let mut buffer = [0u8; 4096];
        let mut out = std::io::stdout();
        loop {
            match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => {
                    captured.extend_from_slice(&buffer[..count]);
                    // Live progress matters more than a broken terminal.
                    let _ = out.write_all(&buffer[..count]);
                    let _ = out.flush();
                }
            }
        }
    }
    let status = child.wait().map_err(|error| XtaskError::Command {
        command: description,
        problem: error.to_string(),
    })?;
    Ok((
        status.success(),
        String::from_utf8_lossy(&captured).into_owned(),
    ))
}

/// The gates, in order: formatting, then clippy over the host crates, then
/// clippy over the kernel-target crates. The two clippy runs are separate:
/// in one invocation cargo unifies dependency features across both
/// targets (`bitflags` would get `std` on x86_64-unknown-none and fail).
fn gate_commands() -> Vec<(&'static str, Command)> {
    let mut format = cargo();
    format.args(["fmt", "--all", "--", "--check"]);
    let mut host = cargo();
    host.args(["clippy", "--workspace", "--all-targets"]);
    for excluded in KERNEL_TARGET_CRATES.iter().chain(&["daxbox-boot"]) {
        host.args(["--exclude", excluded]);
    }
    host.args(["--", "-D", "warnings"]);
    let mut kernel = cargo();
    kernel.arg("clippy");
    for package in KERNEL_TARGET_CRATES {
        kernel.args(["-p", package]);
    }
    kernel.args(["--", "-D", "warnings"]);
    vec![
        ("format (cargo fmt --check)", format),
        ("lint (clippy, host crates)", host),
        ("lint (clippy, kernel target)", kernel),
    ]
}

/// Runs the gates until one fails, recording each; true when all passed.
fn run_gates(record: &mut impl FnMut(&'static str, bool, Counts, Instant)) -> bool {
    for (name, mut command) in gate_commands() {
        let since = Instant::now();
        step(&format!("gate: {name}"));
        let ok = run_gate(&mut command);
        record(name, ok, Counts::default(), since);
        if !ok {
            return false;
        }
    }
    true
}

/// Runs a gate (formatter or linter): its output goes straight to the
/// terminal; true when it passed.
fn run_gate(command: &mut Command) -> bool {
    println!("    {}", describe(command));
    match command.status() {
        Ok(status) => status.success(),
        Err(error) => {
            eprintln!("xtask: error: {}: {error}", describe(command));
            false
        }
    }
}

/// One step's outcome, for the summary table.
struct Outcome {
    name: &'static str,
    ok: bool,
    counts: Counts,
    seconds: f64,
}

struct Options {
    filter: Option<String>,
    threads: u32,
    system: bool,
}

fn parse(args: &[String]) -> Result<Options, XtaskError> {
    let mut options = Options {
        filter: None,
        threads: 2,
        system: true,
    };
    let mut index = 0;
    while index < args.len() {
        let value = || {
            args.get(index + 1)
                .ok_or_else(|| XtaskError::Usage(format!("{} needs a value", args[index])))
        };
        match args[index].as_str() {
            "--filter" => {
                options.filter = Some(value()?.clone());
                index += 2;
            }
            "--test-threads" => {
                options.threads = value()?
                    .parse()
                    .ok()
                    .filter(|threads| *threads > 0)
                    .ok_or_else(|| XtaskError::Usage("--test-threads wants a number > 0".into()))?;
                index += 2;
            }
            "--no-system" => {
                options.system = false;
                index += 1;
            }
            other => {
                return Err(XtaskError::Usage(format!(
                    "test: unknown option `{other}`\n\n{USAGE}"
                )))
            }
        }
    }
    Ok(options)
}

/// The soak, power-cut and cluster stages: each one pass or one failure. They boot
/// through the harness in this process, so the fresh builds go into its
/// environment.
fn run_attacks(
    built: Option<&(PathBuf, PathBuf)>,
    record: &mut impl FnMut(&'static str, bool, Counts, Instant),
) {
    let one = |ok: bool| Counts {
        passed: u64::from(ok),
        failed: u64::from(!ok),
    };
    let Some((kernel, boot_tool)) = built else {
        let since = Instant::now();
        step("soak, power cut and cluster skipped: set-up or build failed");
        record("soak (not run)", false, Counts::default(), since);
        record("power cut (not run)", false, Counts::default(), since);
        record("cluster (not run)", false, Counts::default(), since);
        return;
    };
    std::env::set_var("DAXBOX_KERNEL", kernel);
    std::env::set_var("DAXBOX_BOOT_TOOL", boot_tool);

    let since = Instant::now();
    step(&format!(
        "soak: {SOAK_MINUTES} minute, 64 clients (cargo xtask soak --minutes {SOAK_MINUTES})"
    ));
    let ok = match soak::run(&soak::SoakOptions::new(SOAK_MINUTES)) {
        Ok(summary) => {
            let failures = summary.failures();
            for failure in &failures {
                println!("    soak FAILED: {failure}");
            }
            failures.is_empty()
        }
        Err(error) => {
            eprintln!("xtask: error: soak: {error}");
            false
        }
    };
    record("soak", ok, one(ok), since);

    let since = Instant::now();
    step(&format!(
        "power cut: {POWERCUT_CYCLES} cycles (cargo xtask powercut --cycles {POWERCUT_CYCLES})"
    ));
    let ok = match powercut::run(&powercut::PowercutOptions::new(POWERCUT_CYCLES)) {
        Ok(cycles) => cycles.iter().all(|cycle| cycle.failures().is_empty()),
        Err(error) => {
            eprintln!("xtask: error: power cut: {error}");
            false
        }
    };
    record("power cut", ok, one(ok), since);

    let since = Instant::now();
    let seed = crate::clients::clock_seed();
    step(&format!(
        "cluster: 3 appliances in a quorum, kill, rebuild, freeze, two down (cargo xtask cluster \
         test --seed {seed})"
    ));
    let ok = match cluster_test::run(seed, true) {
        Ok(()) => true,
        Err(cluster_test::Failure::Test(message)) => {
            println!("    cluster test FAILED (seed {seed}): {message}");
            false
        }
        Err(cluster_test::Failure::Setup(error)) => {
            eprintln!("xtask: error: cluster: {error}");
            false
        }
    };
    record("cluster", ok, one(ok), since);
}

/// Entry point of `cargo xtask test`.
pub fn test_command(args: &[String]) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!("{USAGE}");
        return Ok(());
    }
    let options = parse(args)?;
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut record = |name: &'static str, ok: bool, counts: Counts, since: Instant| {
        outcomes.push(Outcome {
            name,
            ok,
            counts,
            seconds: since.elapsed().as_secs_f64(),
        });
    };

    let filter_args = |extra: &[String]| {
        let mut args: Vec<String> = vec!["--".into()];
        args.extend(extra.iter().cloned());
        args.extend(options.filter.iter().cloned());
        args
    };

    let since = Instant::now();
    let setup_ok = match setup::setup(setup::Needs::Everything) {
        Ok(()) => true,
        Err(error) => {
            eprintln!("xtask: error: {error}");
            false
        }
    };
    record("set-up", setup_ok, Counts::default(), since);

    let mut built = None;
    // The gates: seconds each once the dependencies are compiled. A
    // failure here ends the run, so a lint costs seconds, not the minutes
    // of the bootloader build and the QEMU tests.
    let gates_ok = setup_ok && run_gates(&mut record);
    if setup_ok && !gates_ok {
        step("stopping: a gate failed (fix it first; nothing else was run)");
    }
    if gates_ok {
        let since = Instant::now();
        step("host tests (all library crates and xtask)");
        let mut command = cargo();
        command
            .args([
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "daxbox-kernel",
                "--exclude",
                "daxbox-tests",
                "--exclude",
                "daxbox-boot",
            ])
            .args(filter_args(&[]));
        let (ok, output) = run_streaming(&mut command).unwrap_or_else(|error| {
            eprintln!("xtask: error: {error}");
            (false, String::new())
        });
        record("host tests", ok, sum_results(&output), since);

        if options.filter.is_none() {
            let since = Instant::now();
            step(&format!(
                "crash-state explorer: daxfs crash images on {CRASH_JOBS} threads \
                 (fails below {CRASH_MIN_DISTINCT} distinct or on any violation)"
            ));
            let mut command = crash_command(&[
                "--images".into(),
                CRASH_IMAGES.to_string(),
                "--min-distinct".into(),
                CRASH_MIN_DISTINCT.to_string(),
                "--jobs".into(),
                CRASH_JOBS.to_string(),
                "--quiet".into(),
            ]);
            let (ok, _) = run_streaming(&mut command).unwrap_or_else(|error| {
                eprintln!("xtask: error: {error}");
                (false, String::new())
            });
            // The explorer is one test: it passes or it fails.
            let counts = Counts {
                passed: u64::from(ok),
                failed: u64::from(!ok),
            };
            record("crash-state explorer", ok, counts, since);

            let since = Instant::now();
            step(&format!(
                "fuzz: every target {} s over its seed corpus (one build, one process each)",
                fuzz::CI_SECONDS
            ));
            // One test per target: it passes when it did not crash.
            let (ok, counts) = match fuzz::ci_stage() {
                Ok((clean, crashed)) => (
                    crashed == 0,
                    Counts {
                        passed: clean,
                        failed: crashed,
                    },
                ),
                Err(error) => {
                    eprintln!("xtask: error: {error}");
                    (false, Counts::default())
                }
            };
            record("fuzz", ok, counts, since);
        }

        let since = Instant::now();
        let boot_tool = images::build_boot_tool();
        let kernel = boot_tool.as_ref().ok().map(|_| images::build_kernel());
        let ok = match (boot_tool, kernel) {
            (Ok(boot_tool), Some(Ok(kernel))) => {
                built = Some((kernel, boot_tool));
                true
            }
            (Err(error), _) | (_, Some(Err(error))) => {
                eprintln!("xtask: error: {error}");
                false
            }
            (Ok(_), None) => false,
        };
        record("build kernel + daxbox-boot", ok, Counts::default(), since);

        if ok {
            let since = Instant::now();
            step("lint gate: cargo clippy -p daxbox-boot (reuses the bootloader build)");
            let mut command = cargo();
            command.args([
                "clippy",
                "-p",
                "daxbox-boot",
                "--release",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            let ok = run_gate(&mut command);
            record("lint (clippy daxbox-boot)", ok, Counts::default(), since);
        }

        let since = Instant::now();
        step("boot tool tests");
        let mut command = cargo();
        command
            .args(["test", "--no-fail-fast", "-p", "daxbox-boot", "--release"])
            .args(filter_args(&[]));
        let (ok, output) = run_streaming(&mut command).unwrap_or_else(|error| {
            eprintln!("xtask: error: {error}");
            (false, String::new())
        });
        record("boot tool tests", ok, sum_results(&output), since);
    }

    if options.system && gates_ok {
        let since = Instant::now();
        match &built {
            Some((kernel, boot_tool)) => {
                step(&format!(
                    "QEMU system tests ({} at a time; logs in target/test-runs/<test>/)",
                    options.threads
                ));
                let mut command = cargo();
                command
                    .args(["test", "--no-fail-fast", "-p", "daxbox-tests"])
                    .args(filter_args(&[format!(
                        "--test-threads={}",
                        options.threads
                    )]))
                    .env("DAXBOX_KERNEL", kernel)
                    .env("DAXBOX_BOOT_TOOL", boot_tool);
                println!(
                    "    with DAXBOX_KERNEL={} DAXBOX_BOOT_TOOL={}",
                    kernel.display(),
                    boot_tool.display()
                );
                let (ok, output) = run_streaming(&mut command).unwrap_or_else(|error| {
                    eprintln!("xtask: error: {error}");
                    (false, String::new())
                });
                record("QEMU system tests", ok, sum_results(&output), since);
            }
            None => {
                step("QEMU system tests skipped: set-up or build failed");
                record(
                    "QEMU system tests (not run)",
                    false,
                    Counts::default(),
                    since,
                );
            }
        }
    }

    if options.system && gates_ok && options.filter.is_none() {
        run_attacks(built.as_ref(), &mut record);
    }

    let mut total = Counts::default();
    println!();
    step("summary");
    for outcome in &outcomes {
        let mut counts = outcome.counts;
        // A failed step with no failed test (build error, crashed test
        // binary, missing tools) must still show up as a failure.
        if !outcome.ok && counts.failed == 0 {
            counts.failed = 1;
        }
        println!(
            "    {:<30} {:<6} {:>4} passed {:>4} failed {:>7.1} s",
            outcome.name,
            if outcome.ok { "ok" } else { "FAILED" },
            counts.passed,
            counts.failed,
            outcome.seconds
        );
        total += counts;
    }
    println!("    total time {:.1} s", started.elapsed().as_secs_f64());
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed == 0 {
        Ok(())
    } else {
        Err(XtaskError::TestsFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
            ),
            Some(Counts { passed: 9, failed: 0 })
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 5 passed; 12 failed; 0 ignored; 0 measured"),
            Some(Counts {
                passed: 5,
                failed: 12
            })
        );
        assert_eq!(parse_result_line("test foo ... ok"), None);
        assert_eq!(parse_result_line("test result: garbage"), None);
    }

    #[test]
    fn gates_check_format_then_host_then_kernel_target() {
        let gates: Vec<(String, String)> = gate_commands()
            .iter()
            .map(|(name, command)| (name.to_string(), describe(command)))
            .collect();
        assert_eq!(gates.len(), 3);
        assert!(gates[0].1.contains("fmt --all -- --check"), "{gates:?}");
        assert!(gates[1].1.contains("clippy --workspace --all-targets"));
        assert!(gates[1].1.contains("--exclude daxbox-kernel"));
        assert!(gates[1].1.ends_with("-- -D warnings"));
        for package in KERNEL_TARGET_CRATES {
            assert!(gates[2].1.contains(&format!("-p {package}")), "{gates:?}");
        }
        assert!(gates[2].1.ends_with("-- -D warnings"));
    }

    #[test]
    fn results_add_up() {
        let output = "\
running 2 tests
test a ... ok
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
running 4 tests
test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
";
        assert_eq!(
            sum_results(output),
            Counts {
                passed: 5,
                failed: 1
            }
        );
        assert_eq!(sum_results(""), Counts::default());
    }
}
