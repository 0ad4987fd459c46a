//! `cargo xtask powercut`: power cuts of the appliance under flushed
//! writes; every acknowledged write must survive.
//!
//! The appliance boots in QEMU (harness as in the system tests) with an
//! NVDIMM backing file kept across boots, and the shell creates the daxfs
//! file `pc` (an NBD export). Each cycle:
//!
//! 1. fio writes to `pc` (256 MiB, on a 512 MiB NVDIMM) over NBD (`--ioengine=nbd`, 4 KiB random writes at
//!    queue depth 8, `--fsync=1`: a FLUSH after every write, crc32c verify
//!    headers, `--do_verify=0`, `--verify_state_save=1`, a new
//!    `--randseed` each cycle so old blocks cannot pass for new ones);
//! 2. after a random delay (seeded; the seed is printed) QEMU is SIGKILLed
//!    by its PID: the power cut. fio then fails on the broken connection
//!    and saves its verify state: how many writes it saw acknowledged,
//!    and which were still in flight (those are not checked);
//! 3. the appliance boots again on the same backing file (daxfs recovers
//!    from the unclean stop);
//! 4. `fio --verify_only --verify_state_load=1 --continue_on_error=verify`
//!    reads back every write fio issued and names each block that fails.
//!    fio counts a write that failed at the cut (connection gone) as issued,
//!    so the write phase also logs the offset of every write that completed
//!    without error (`--write_lat_log --log_offset=1`: fio logs only those):
//!    a failed block in that log is an acknowledged write lost; one outside
//!    it was in flight (torn or never arrived), which is allowed, but never
//!    more than the queue depth. The log must hold as many writes as fio
//!    counted, and the KiB verified must cover the KiB acknowledged;
//! 5. the shell's `fsck` must say the device is clean.
//!
//! The rebooted appliance carries the next cycle's writes. Per cycle a
//! line of figures; at the end a summary. Any lost write, short
//! verification, fsck problem or crash marker fails the run.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use daxbox_tests::{run_dir, Firmware, Machine, Nvdimm, QemuOptions, EXIT_POWEROFF};

use crate::clients::{
    clock_seed, crashed, fio_jobs, fio_verify_failure_offsets, fio_verify_failures,
    lat_log_write_offsets, parse_fsck, positive, run_client, seed_value, Outcome, Rng, FIO_EILSEQ,
};
use crate::images::{harness, prepare_for_harness};
use crate::{step, XtaskError};

const USAGE: &str = "\
usage: cargo xtask powercut --cycles N [--seed S]

Boots the appliance in QEMU with a 512 MiB NVDIMM backing file kept across
boots and a 256 MiB daxfs file `pc`, then N times: fio (nbd engine) writes 4 KiB
random blocks with a FLUSH after each (--fsync=1, crc32c headers, verify state
saved); QEMU is SIGKILLed after a random delay (seeded; the seed is printed);
the appliance boots again; fio --verify_only --verify_state_load=1 checks that
every acknowledged write (fio's completion log) is there, and the shell's
fsck must say clean. Prints
per cycle: seconds until the cut, MiB acknowledged, MiB verified, lost writes,
fsck; then a summary. Exits non-zero on any lost write or fsck problem.
Logs: target/test-runs/powercut/. DAXBOX_KERNEL/DAXBOX_BOOT_TOOL skip the builds.";

const MIB: u64 = 1 << 20;
const NVDIMM_SIZE: u64 = 512 * MIB;
/// The export fio writes.
const EXPORT: &str = "pc";
/// Its size: more than a cycle writes before its cut (about 13 MiB/s
/// under TCG on a busy 2-core host).
const EXPORT_SIZE: &str = "256M";
/// fio's queue depth: at most this many writes are in flight at the cut.
const IODEPTH: u64 = 8;
/// The latency log prefix (`ack_clat.1.log`: the acknowledged writes).
const ACK_LOG: &str = "ack";
/// fio's job name (its state file is `local-pc-0-verify.state`).
const JOB: &str = "pc";
/// When the cut comes, after fio starts.
const CUT_MIN: Duration = Duration::from_millis(500);
const CUT_MAX: Duration = Duration::from_millis(6000);
/// Deadline of one fio run.
const FIO_TIMEOUT: Duration = Duration::from_secs(600);

/// Parsed `powercut` options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowercutOptions {
    /// Power cuts.
    pub cycles: u64,
    /// Seed of the cut moments and fio's seeds.
    pub seed: u64,
    /// Run folder name under target/test-runs/.
    pub name: String,
}

impl PowercutOptions {
    /// `cycles` cuts with a clock seed.
    pub fn new(cycles: u64) -> Self {
        PowercutOptions {
            cycles,
            seed: clock_seed(),
            name: "powercut".into(),
        }
    }
}

/// Parses `powercut` arguments; `None` means `--help`.
pub fn parse(args: &[String]) -> Result<Option<PowercutOptions>, String> {
    let mut cycles = None;
    let mut options = PowercutOptions::new(1);
    let mut index = 0;
    while index < args.len() {
        let value = args.get(index + 1);
        match args[index].as_str() {
            "-h" | "--help" => return Ok(None),
            "--cycles" => cycles = Some(positive("--cycles", value)?),
            "--seed" => options.seed = seed_value(value)?,
            other => return Err(format!("powercut: unknown option `{other}`")),
        }
        index += 2;
    }
    options.cycles = cycles.ok_or("powercut: --cycles N is required")?;
    Ok(Some(options))
}

/// What one cycle measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cycle {
    /// 1-based.
    pub number: u64,
    /// From fio's start to the SIGKILL.
    pub cut_after: Duration,
    /// KiB fio saw acknowledged before the cut (its terse write KiB).
    pub acked_kib: u64,
    /// Writes in fio's completion log (`--write_lat_log`): each one
    /// acknowledged, by offset.
    pub acked_writes: u64,
    /// fio finished all its writes before the cut (then everything is
    /// verified, without a saved state).
    pub finished_before_cut: bool,
    /// KiB the verify run read and checked.
    pub verified_kib: u64,
    /// Blocks that failed verification and were acknowledged: lost.
    pub lost: u64,
    /// Blocks that failed verification but were never acknowledged (in
    /// flight at the cut: torn or never arrived; allowed).
    pub unacked_failures: u64,
    /// fsck said clean.
    pub fsck_clean: bool,
    /// Anything else that went wrong (tool errors, missing state, crash).
    pub problems: Vec<String>,
}

impl Cycle {
    /// Why this cycle failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = self.problems.clone();
        if self.lost > 0 {
            failures.push(format!("{} acknowledged write(s) lost", self.lost));
        }
        if self.acked_writes * 4 != self.acked_kib {
            failures.push(format!(
                "fio's completion log has {} writes but fio counted {} KiB written: \
                 cannot tell acknowledged writes apart",
                self.acked_writes, self.acked_kib
            ));
        }
        if self.unacked_failures > IODEPTH {
            failures.push(format!(
                "{} unacknowledged blocks failed verification, more than the {IODEPTH} \
                 that can be in flight",
                self.unacked_failures
            ));
        }
        if self.verified_kib < self.acked_kib {
            failures.push(format!(
                "verified {} KiB, less than the {} KiB acknowledged",
                self.verified_kib, self.acked_kib
            ));
        }
        if !self.fsck_clean {
            failures.push("fsck not clean".into());
        }
        failures
    }

    /// The cycle's line of figures.
    pub fn line(&self, of: u64) -> String {
        format!(
            "cycle {}/{of}: cut after {:.2} s{}, {:.1} MiB acknowledged ({} writes), \
             {:.1} MiB verified, {} lost ({} unacknowledged in flight failed), fsck {}",
            self.number,
            self.cut_after.as_secs_f64(),
            if self.finished_before_cut {
                " (fio had finished)"
            } else {
                ""
            },
            self.acked_kib as f64 / 1024.0,
            self.acked_writes,
            self.verified_kib as f64 / 1024.0,
            self.lost,
            self.unacked_failures,
            if self.fsck_clean {
                "clean"
            } else {
                "NOT CLEAN"
            }
        )
    }
}

/// The summary of all cycles.
pub fn summary(cycles: &[Cycle], seed: u64) -> String {
    let acked: u64 = cycles.iter().map(|c| c.acked_writes).sum();
    let lost: u64 = cycles.iter().map(|c| c.lost).sum();
    let unclean = cycles.iter().filter(|c| !c.fsck_clean).count();
    let failed = cycles.iter().filter(|c| !c.failures().is_empty()).count();
    let mut text = format!(
        "powercut: {} cycle(s), seed {seed:#x}: {acked} acknowledged writes, {lost} lost, \
         {unclean} fsck problem(s), {failed} failed cycle(s)",
        cycles.len()
    );
    if let (Some(min), Some(max)) = (
        cycles.iter().map(|c| c.cut_after).min(),
        cycles.iter().map(|c| c.cut_after).max(),
    ) {
        let _ = write!(
            text,
            "; cuts {:.2} to {:.2} s after fio started",
            min.as_secs_f64(),
            max.as_secs_f64()
        );
    }
    text
}

fn fio_base(uri: &str, seed: u64) -> Vec<String> {
    vec![
        format!("--name={JOB}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        format!("--size={EXPORT_SIZE}"),
        format!("--iodepth={IODEPTH}"),
        "--verify=crc32c".into(),
        format!("--randseed={seed}"),
        "--output-format=terse".into(),
        "--terse-version=3".into(),
    ]
}

/// The write phase's arguments: a FLUSH after every write, state saved,
/// every completed write's offset logged (`ack_clat.1.log`).
pub fn write_args(uri: &str, seed: u64) -> Vec<String> {
    let mut args = fio_base(uri, seed);
    args.extend(
        [
            "--do_verify=0",
            "--verify_state_save=1",
            "--fsync=1",
            "--log_offset=1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.push(format!("--write_lat_log={ACK_LOG}"));
    args
}

/// The verify run's arguments: with the saved state when there is one;
/// every block checked even after a bad one; the state file left as it is.
pub fn verify_args(uri: &str, seed: u64, with_state: bool) -> Vec<String> {
    let mut args = fio_base(uri, seed);
    args.extend(
        [
            "--verify_only",
            "--continue_on_error=verify",
            "--verify_state_save=0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if with_state {
        args.push("--verify_state_load=1".into());
    }
    args
}

/// What a verify run found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// KiB read and checked.
    pub kib: u64,
    /// Offsets of the blocks that failed.
    pub failed: Vec<u64>,
    /// Tool problems.
    pub problems: Vec<String>,
}

/// Judges a verify run's output.
pub fn judge_verify(outcome: &Outcome) -> Verified {
    let stdout = outcome.stdout_text();
    let everything = format!("{stdout}\n{}", outcome.stderr);
    let jobs = fio_jobs(&stdout);
    let mut problems = Vec::new();
    let kib = jobs.iter().map(|job| job.read_kib).sum();
    let failed = fio_verify_failure_offsets(&everything);
    if failed.len() as u64 != fio_verify_failures(&everything)
        || (failed.is_empty() && jobs.iter().any(|job| job.error == FIO_EILSEQ))
    {
        problems.push(outcome.describe("fio --verify_only: a failure without its offset"));
    }
    if jobs.len() != 1 {
        problems.push(outcome.describe(&format!(
            "fio --verify_only: {} terse lines, expected 1",
            jobs.len()
        )));
    } else if !outcome.success() || jobs.iter().any(|j| j.error != 0 && j.error != FIO_EILSEQ) {
        problems.push(outcome.describe("fio --verify_only"));
    }
    Verified {
        kib,
        failed,
        problems,
    }
}

/// What the verify run checks after a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// fio completed no write before the cut: nothing was acknowledged.
    Nothing,
    /// The writes up to the saved state (`--verify_state_load=1`).
    WithState,
    /// fio finished before the cut: the whole job.
    Everything,
}

/// Decides the verify run from what the write phase left: whether fio
/// finished, saved its state, and how many writes it logged as completed.
pub fn plan(finished: bool, state_saved: bool, acked_writes: u64) -> Result<Plan, String> {
    match (finished, state_saved, acked_writes) {
        (true, _, _) => Ok(Plan::Everything),
        (false, true, _) => Ok(Plan::WithState),
        (false, false, 0) => Ok(Plan::Nothing),
        (false, false, acked) => Err(format!(
            "fio saved no verify state although {acked} writes completed"
        )),
    }
}

/// Splits failed blocks into acknowledged ones (lost) and the rest (in
/// flight at the cut): `(lost, unacknowledged)`.
pub fn classify(failed: &[u64], acked: &HashSet<u64>) -> (u64, u64) {
    let lost = failed.iter().filter(|o| acked.contains(o)).count() as u64;
    (lost, failed.len() as u64 - lost)
}

fn boot(options: &PowercutOptions, fresh: bool) -> Result<Machine, XtaskError> {
    let path = run_dir(&options.name).join("pmem0.img");
    let nvdimm = if fresh {
        Nvdimm::fresh(path, NVDIMM_SIZE)
    } else {
        Nvdimm::existing(path, NVDIMM_SIZE)
    };
    let mut qemu = QemuOptions::new(&options.name, Firmware::Bios)
        .with_boot_config("format=if-blank\n")
        .with_nvdimm(nvdimm);
    qemu.max_runtime = Duration::from_secs(1800);
    let machine = Machine::boot_to_prompt(qemu).map_err(harness)?;
    wait_nbd(machine.nbd_port(), &run_dir(&options.name))?;
    Ok(machine)
}

/// Waits until the export answers an NBD handshake.
fn wait_nbd(port: u16, cwd: &Path) -> Result<(), XtaskError> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let uri = format!("nbd://127.0.0.1:{port}/{EXPORT}");
    let args = vec!["--size".to_string(), uri.clone()];
    // On the first boot the export does not exist yet: any listing will do.
    let list = vec!["--list".to_string(), format!("nbd://127.0.0.1:{port}/")];
    loop {
        let mut ready = false;
        for args in [&args, &list] {
            let out = run_client("nbdinfo", args, cwd, None, Duration::from_secs(30)).map_err(
                |problem| XtaskError::Command {
                    command: "nbdinfo".into(),
                    problem,
                },
            )?;
            ready |= out.success();
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(XtaskError::Command {
                command: format!("nbdinfo {uri}"),
                problem: "no NBD handshake within 90 s".into(),
            });
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// One cycle on a running appliance: writes, cut, reboot, verify, fsck.
/// Returns the cycle's figures and the rebooted appliance.
fn cycle(
    options: &PowercutOptions,
    number: u64,
    rng: &mut Rng,
    mut machine: Machine,
) -> Result<(Cycle, Machine), XtaskError> {
    let dir = run_dir(&options.name).join(format!("cycle-{number:03}"));
    std::fs::create_dir_all(&dir)
        .map_err(|error| XtaskError::Io(format!("{}: {error}", dir.display())))?;
    let seed = rng.next_u64() >> 1;
    let cut_after = rng.duration(CUT_MIN, CUT_MAX);
    let mut result = Cycle {
        number,
        cut_after,
        ..Cycle::default()
    };
    let uri = format!("nbd://127.0.0.1:{}/{EXPORT}", machine.nbd_port());
    let args = write_args(&uri, seed);
    let writer = {
        let dir = dir.clone();
        thread::spawn(move || run_client("fio", &args, &dir, None, FIO_TIMEOUT))
    };
    thread::sleep(cut_after);
    // The power cut: SIGKILL to QEMU's PID.
    machine.kill();
    if let Some(crash) = crashed(&machine.output()) {
        result
            .problems
            .push(format!("crash before the cut: {crash}"));
    }
    drop(machine);
    let written = writer.join().map_err(|_| XtaskError::Command {
        command: "fio (write phase)".into(),
        problem: "its thread panicked".into(),
    })?;
    let written = written.map_err(|problem| XtaskError::Command {
        command: "fio".into(),
        problem,
    })?;
    result.finished_before_cut = written.success();
    let jobs = fio_jobs(&written.stdout_text());
    result.acked_kib = jobs.iter().map(|job| job.write_kib).sum();
    let log = dir.join(format!("{ACK_LOG}_clat.1.log"));
    // No log at all is fine only if fio never completed a write.
    let acked: HashSet<u64> = std::fs::read_to_string(&log)
        .map(|text| lat_log_write_offsets(&text).into_iter().collect())
        .unwrap_or_default();
    result.acked_writes = acked.len() as u64;
    let state = dir.join(format!("local-{JOB}-0-verify.state"));
    let plan = match plan(
        result.finished_before_cut,
        state.exists(),
        result.acked_writes,
    ) {
        Ok(plan) => plan,
        Err(problem) => {
            result
                .problems
                .push(format!("{problem}: {}", written.describe("write phase")));
            Plan::WithState
        }
    };
    if plan != Plan::Nothing && jobs.len() != 1 {
        result.problems.push(written.describe(&format!(
            "fio write phase: {} terse lines, expected 1",
            jobs.len()
        )));
    }

    let mut machine = boot(options, false)?;
    if plan == Plan::Nothing {
        println!(
            "    cycle {number}: the cut came before fio's first write completed: nothing to verify"
        );
    } else {
        let uri = format!("nbd://127.0.0.1:{}/{EXPORT}", machine.nbd_port());
        let verified = run_client(
            "fio",
            &verify_args(&uri, seed, plan == Plan::WithState),
            &dir,
            None,
            FIO_TIMEOUT,
        )
        .map_err(|problem| XtaskError::Command {
            command: "fio --verify_only".into(),
            problem,
        })?;
        check_verify(&mut result, &verified, &acked);
    }
    match machine.command("fsck") {
        Ok(output) => {
            let fsck = parse_fsck(&output);
            result.fsck_clean = fsck.ok();
            if !fsck.ok() {
                result.problems.push(format!("fsck: {output}"));
            }
        }
        Err(error) => result.problems.push(format!("fsck: {error}")),
    }
    Ok((result, machine))
}

/// Records what a verify run found in `result`.
fn check_verify(result: &mut Cycle, verified: &Outcome, acked: &HashSet<u64>) {
    let verdict = judge_verify(verified);
    result.verified_kib = verdict.kib;
    (result.lost, result.unacked_failures) = classify(&verdict.failed, acked);
    result.problems.extend(verdict.problems);
    if result.lost > 0 {
        for line in format!("{}\n{}", verified.stdout_text(), verified.stderr)
            .lines()
            .filter(|line| fio_verify_failures(line) > 0)
            .take(5)
        {
            println!("    {line}");
        }
    }
}

/// Runs all cycles; returns their figures (whose failures decide).
pub fn run(options: &PowercutOptions) -> Result<Vec<Cycle>, XtaskError> {
    prepare_for_harness()?;
    step(&format!(
        "powercut: {} cycle(s), seed {:#x} (cut {:.1} to {:.1} s after fio starts)",
        options.cycles,
        options.seed,
        CUT_MIN.as_secs_f64(),
        CUT_MAX.as_secs_f64()
    ));
    let mut rng = Rng::new(options.seed);
    let mut machine = boot(options, true)?;
    println!("    QEMU: {}", machine.command_line());
    let created = machine
        .command(&format!("create {EXPORT} {EXPORT_SIZE}"))
        .map_err(harness)?;
    if !created.contains("created") {
        return Err(XtaskError::Command {
            command: format!("create {EXPORT} {EXPORT_SIZE} (appliance shell)"),
            problem: created,
        });
    }
    let mut cycles = Vec::new();
    for number in 1..=options.cycles {
        let (figures, next) = cycle(options, number, &mut rng, machine)?;
        println!("    {}", figures.line(options.cycles));
        for failure in figures.failures() {
            println!("    cycle {number} FAILED: {failure}");
        }
        cycles.push(figures);
        machine = next;
    }
    let mut clean_exit = false;
    if machine.send_raw(b"poweroff\r").is_ok() {
        clean_exit = matches!(
            machine.wait_exit(Duration::from_secs(60)),
            Ok(EXIT_POWEROFF)
        );
    }
    if let Some(crash) = crashed(&machine.output()) {
        if let Some(last) = cycles.last_mut() {
            last.problems.push(format!("crash: {crash}"));
        }
    }
    if !clean_exit {
        if let Some(last) = cycles.last_mut() {
            last.problems
                .push("the appliance did not power off cleanly at the end".into());
        }
    }
    machine.kill();
    println!("{}", summary(&cycles, options.seed));
    Ok(cycles)
}

/// Entry point of `cargo xtask powercut`.
pub fn powercut_command(args: &[String]) -> Result<(), XtaskError> {
    let Some(options) = parse(args).map_err(|e| XtaskError::Usage(format!("{e}\n\n{USAGE}")))?
    else {
        println!("{USAGE}");
        return Ok(());
    };
    let cycles = run(&options)?;
    if cycles.iter().all(|cycle| cycle.failures().is_empty()) {
        println!("powercut: passed (0 acknowledged writes lost, fsck clean every time)");
        Ok(())
    } else {
        Err(XtaskError::TestsFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    /// Every `--option` the help text names is one `parse` takes.
    #[test]
    fn help_names_only_options_that_parse() {
        let named = crate::clients::options_named_in(USAGE);
        assert!(!named.is_empty());
        for option in named {
            let line = format!("--cycles 1 {option} 8");
            assert!(
                parse(&args(&line)).is_ok(),
                "help names {option}, which powercut refuses"
            );
        }
    }

    #[test]
    fn options_parse() {
        let options = parse(&args("--cycles 50 --seed 7")).unwrap().unwrap();
        assert_eq!((options.cycles, options.seed), (50, 7));
        assert_eq!(parse(&args("-h")).unwrap(), None);
        for bad in ["", "--cycles 0", "--cycles", "--seed 1", "--cycles 3 --x 1"] {
            assert!(parse(&args(bad)).is_err(), "`{bad}` must be refused");
        }
    }

    #[test]
    fn the_write_phase_flushes_every_write_and_saves_its_state() {
        let args = write_args("nbd://127.0.0.1:1/pc", 9).join(" ");
        for wanted in [
            "--fsync=1",
            "--verify_state_save=1",
            "--do_verify=0",
            "--randseed=9",
            "--verify=crc32c",
        ] {
            assert!(args.contains(wanted), "{wanted}: {args}");
        }
        let verify = verify_args("nbd://127.0.0.1:1/pc", 9, true).join(" ");
        // The verify run must not overwrite the saved state (fio's default
        // verify_state_save=1 would), and must count every bad block.
        for wanted in [
            "--verify_only",
            "--verify_state_load=1",
            "--verify_state_save=0",
            "--continue_on_error=verify",
            "--randseed=9",
        ] {
            assert!(verify.contains(wanted), "{wanted}: {verify}");
        }
        assert!(!verify_args("u", 9, false)
            .join(" ")
            .contains("verify_state_load"));
    }

    fn terse(error: i32, read_kib: u64) -> String {
        let mut fields = vec!["0".to_string(); 130];
        fields[0] = "3".into();
        fields[2] = "pc".into();
        fields[4] = error.to_string();
        fields[5] = read_kib.to_string();
        fields[46] = "65536".into();
        fields.join(";") + "\n"
    }

    #[test]
    fn verify_outcomes_are_judged() {
        let good = Outcome {
            code: Some(0),
            stdout: terse(0, 924).into_bytes(),
            ..Outcome::default()
        };
        assert_eq!(
            judge_verify(&good),
            Verified {
                kib: 924,
                ..Verified::default()
            }
        );
        // With continue_on_error=verify fio exits 0 but says EILSEQ and
        // names every bad block.
        let bad = Outcome {
            code: Some(0),
            stdout: terse(84, 924).into_bytes(),
            stderr: "verify: bad magic header 0, wanted acca at file pc.0.0 offset 4046848, length 4096 (requested block: offset=4046848, length=4096)\n\
                     crc32c: verify failed at file pc.0.0 offset 8192, length 4096 (requested block: offset=8192, length=4096, flags=88)\n".into(),
            ..Outcome::default()
        };
        let verdict = judge_verify(&bad);
        assert_eq!(verdict.failed, [4046848, 8192]);
        assert!(verdict.problems.is_empty(), "{verdict:?}");
        // EILSEQ with no block named: cannot be judged.
        let eilseq_only = Outcome {
            code: Some(1),
            stdout: terse(84, 8).into_bytes(),
            ..Outcome::default()
        };
        assert!(!judge_verify(&eilseq_only).problems.is_empty());
        let broken = Outcome {
            code: Some(1),
            stderr: "fio: open state file: No such file or directory".into(),
            ..Outcome::default()
        };
        assert_eq!(judge_verify(&broken).problems.len(), 1);
    }

    #[test]
    fn the_verify_plan_follows_what_the_write_phase_left() {
        assert_eq!(plan(true, false, 65536), Ok(Plan::Everything));
        assert_eq!(plan(false, true, 100), Ok(Plan::WithState));
        assert_eq!(plan(false, true, 0), Ok(Plan::WithState));
        // Cut before fio completed a write: nothing was acknowledged.
        assert_eq!(plan(false, false, 0), Ok(Plan::Nothing));
        assert!(plan(false, false, 5).is_err());
    }

    #[test]
    fn only_acknowledged_failures_are_losses() {
        let acked: HashSet<u64> = [0, 4096, 8192].into_iter().collect();
        assert_eq!(classify(&[], &acked), (0, 0));
        assert_eq!(classify(&[4096, 12288, 16384], &acked), (1, 2));
    }

    fn cycle(acked: u64, verified: u64, lost: u64, fsck: bool) -> Cycle {
        Cycle {
            number: 1,
            cut_after: Duration::from_millis(2500),
            acked_kib: acked,
            acked_writes: acked / 4,
            verified_kib: verified,
            lost,
            fsck_clean: fsck,
            ..Cycle::default()
        }
    }

    #[test]
    fn a_cycle_fails_on_loss_short_verify_or_fsck() {
        assert!(cycle(400, 400, 0, true).failures().is_empty());
        assert!(cycle(400, 432, 0, true).failures().is_empty());
        assert_eq!(
            cycle(400, 400, 2, true).failures(),
            ["2 acknowledged write(s) lost"]
        );
        assert_eq!(cycle(400, 396, 0, true).failures().len(), 1);
        assert_eq!(cycle(400, 400, 0, false).failures(), ["fsck not clean"]);
        let mut broken = cycle(0, 0, 0, true);
        broken.problems.push("fio saved no verify state".into());
        assert_eq!(broken.failures().len(), 1);
        // In-flight writes may fail, but no more than can be in flight.
        let mut torn = cycle(400, 400, 0, true);
        torn.unacked_failures = IODEPTH;
        assert!(torn.failures().is_empty());
        torn.unacked_failures = IODEPTH + 1;
        assert_eq!(torn.failures().len(), 1);
        // A completion log that disagrees with fio's count is not trusted.
        let mut short_log = cycle(400, 400, 0, true);
        short_log.acked_writes = 99;
        assert_eq!(short_log.failures().len(), 1);
    }

    #[test]
    fn lines_and_summary_show_the_figures() {
        let line = cycle(4096, 4096, 0, true).line(3);
        assert_eq!(
            line,
            "cycle 1/3: cut after 2.50 s, 4.0 MiB acknowledged (1024 writes), \
             4.0 MiB verified, 0 lost (0 unacknowledged in flight failed), fsck clean"
        );
        let mut second = cycle(400, 400, 1, false);
        second.cut_after = Duration::from_millis(7000);
        let text = summary(&[cycle(4096, 4096, 0, true), second], 0x2a);
        assert_eq!(
            text,
            "powercut: 2 cycle(s), seed 0x2a: 1124 acknowledged writes, 1 lost, \
             1 fsck problem(s), 1 failed cycle(s); cuts 2.50 to 7.00 s after fio started"
        );
    }
}
