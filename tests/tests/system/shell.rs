//! The serial admin shell as a user sees it: commands, errors, quoting,
//! line editing and history, power-off, and that kernel crashes end the machine with status
//! 35 and a message the harness shows.

use std::time::Duration;

use daxbox_tests::{
    run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions, EXIT_PANIC, EXIT_POWEROFF,
};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn machine(name: &str) -> Result<Machine, HarnessError> {
    Machine::boot_to_prompt(QemuOptions::new(name, Firmware::Bios))
}

fn debug_machine(name: &str) -> Result<Machine, HarnessError> {
    Machine::boot_to_prompt(
        QemuOptions::new(name, Firmware::Bios).with_boot_config("debug_commands=on\n"),
    )
}

#[test]
fn informational_commands_answer() -> Result<(), HarnessError> {
    let mut machine = machine("shell_commands")?;
    let help = machine.command("help")?;
    for command in ["help", "version", "uptime", "mem", "poweroff"] {
        assert!(help.contains(command), "help lacks `{command}`:\n{help}");
    }
    let version = machine.command("version")?;
    assert!(version.contains("daxbox"), "{version:?}");
    for command in ["uptime", "mem"] {
        let output = machine.command(command)?;
        assert!(!output.trim().is_empty(), "`{command}` printed nothing");
        assert!(!output.contains("error"), "`{command}`: {output}");
    }
    // An empty line is just a new prompt.
    assert_eq!(machine.command("")?.trim(), "");
    Ok(())
}

#[test]
fn unknown_command_is_an_error_and_the_shell_goes_on() -> Result<(), HarnessError> {
    let mut machine = machine("shell_unknown")?;
    let output = machine.command("frobnicate now")?;
    assert!(
        output.starts_with("error: unknown command"),
        "got: {output:?}"
    );
    assert!(machine.command("version")?.contains("daxbox"));
    Ok(())
}

#[test]
fn over_long_line_is_rejected() -> Result<(), HarnessError> {
    let mut machine = machine("shell_long_line")?;
    let line = "x".repeat(600);
    let output = machine.command(&line)?;
    assert!(output.contains("error: line too long"), "got: {output:?}");
    assert!(machine.command("version")?.contains("daxbox"));
    Ok(())
}

#[test]
fn backspace_edits_the_line() -> Result<(), HarnessError> {
    let mut machine = machine("shell_backspace")?;
    let expected = machine.command("version")?;
    // "versoin" with the last three characters rubbed out (DEL and BS) and
    // retyped: the shell must run `version`.
    let edited = machine.command("versoin\x7f\x08\x7fion")?;
    assert_eq!(edited, expected);
    Ok(())
}

#[test]
fn quoted_names_history_and_editing_keys() -> Result<(), HarnessError> {
    // A device the storage layer formats and takes, and a lower-case log
    // level: what an operator sees in the first minutes.
    let name = "shell_editing";
    let options = QemuOptions::new(name, Firmware::Bios)
        .with_boot_config("format=if-blank\nlog=info\n")
        .with_nvdimm(Nvdimm::fresh(run_dir(name).join("nvdimm0.img"), 64 << 20));
    let mut machine = Machine::boot_to_prompt(options)?;

    // A name with a space, quoted or escaped.
    let created = machine.command(r#"create "with space" 1M"#)?;
    assert_eq!(created, "created with space (1048576 bytes)");
    let stat = machine.command(r"stat with\ space")?;
    assert!(stat.contains("name:       with space"), "{stat}");
    let ls = machine.command("ls")?;
    assert!(ls.contains("with space"), "{ls}");
    assert_eq!(
        machine.command(r#"rm "with space"#)?,
        "error: unterminated quote"
    );

    // Up runs the previous line again; unknown keys (F5) are swallowed.
    let version = machine.command("version")?;
    assert!(version.starts_with("daxbox "), "{version:?}");
    assert_eq!(machine.command("\x1b[15~\x1b[A")?, version);
    // Left, then insert; Home/End (both spellings), Ctrl-A/E/W/U.
    assert_eq!(
        machine.command("vrsion\x1b[D\x1b[D\x1b[D\x1b[D\x1b[De")?,
        version
    );
    assert_eq!(machine.command("ersio\x1b[Hv\x1b[Fn")?, version);
    assert_eq!(machine.command("ersio\x01v\x05n")?, version);
    assert_eq!(machine.command("uptime now\x17\x17version")?, version);
    assert_eq!(machine.command("nonsense\x15version")?, version);
    // Up twice from a fresh line, Down once: the newest entry again.
    assert_eq!(machine.command("\x1b[A\x1b[A\x1b[B")?, version);

    // `pmem` lists the device the filesystem took without claiming there
    // is none; `bootconfig` spells the log level as the file does.
    let pmem = machine.command("pmem")?;
    assert!(!pmem.contains("no pmem devices"), "{pmem}");
    assert!(
        pmem.contains("pmem0 ") && pmem.contains("used by"),
        "{pmem}"
    );
    let config = machine.command("bootconfig")?;
    assert!(config.lines().any(|line| line == "log=info"), "{config}");
    Ok(())
}

#[test]
fn poweroff_exits_qemu_with_status_33() -> Result<(), HarnessError> {
    let mut machine = machine("shell_poweroff")?;
    machine.send_raw(b"poweroff\r")?;
    assert_eq!(machine.wait_exit(EXIT_TIMEOUT)?, EXIT_POWEROFF);
    Ok(())
}

#[test]
fn debug_commands_are_off_by_default() -> Result<(), HarnessError> {
    let mut machine = machine("shell_debug_disabled")?;
    let output = machine.command("debug panic")?;
    assert!(output.starts_with("error"), "got: {output:?}");
    assert!(machine.command("version")?.contains("daxbox"));
    Ok(())
}

#[test]
fn kernel_panic_exits_with_status_35_and_message() -> Result<(), HarnessError> {
    let mut machine = debug_machine("shell_debug_panic")?;
    machine.send_raw(b"debug panic\r")?;
    let seen = machine.wait_for("KERNEL PANIC: ", Duration::from_secs(20))?;
    assert!(seen.contains("debug panic"), "{seen}");
    assert_eq!(machine.wait_exit(EXIT_TIMEOUT)?, EXIT_PANIC);
    let output = machine.output();
    let panic_line = output
        .lines()
        .find(|line| line.starts_with("KERNEL PANIC: "))
        .unwrap_or_default();
    // `KERNEL PANIC: <message> at <file>:<line>`
    assert!(
        panic_line.contains("debug panic requested") && panic_line.contains(" at "),
        "{panic_line:?}"
    );
    Ok(())
}

#[test]
fn kernel_panic_fails_a_waiting_test_with_the_message() -> Result<(), HarnessError> {
    let mut machine = debug_machine("shell_debug_panic_error")?;
    let error = machine
        .command("debug panic")
        .expect_err("a panic must not look like a command answer");
    assert!(matches!(error, HarnessError::KernelPanic { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("KERNEL PANIC: "), "{message}");
    assert!(message.contains("debug panic requested"), "{message}");
    assert_eq!(machine.wait_exit(EXIT_TIMEOUT)?, EXIT_PANIC);
    Ok(())
}

#[test]
fn cpu_exception_is_reported_and_exits_with_status_35() -> Result<(), HarnessError> {
    let mut machine = debug_machine("shell_debug_fault")?;
    let error = machine
        .command("debug fault")
        .expect_err("a page fault must not look like a command answer");
    let message = error.to_string();
    assert!(
        matches!(error, HarnessError::KernelPanic { .. }),
        "{message}"
    );
    assert!(message.contains("EXCEPTION: "), "{message}");
    assert_eq!(machine.wait_exit(EXIT_TIMEOUT)?, EXIT_PANIC);
    let output = machine.output();
    assert!(output.contains("KERNEL PANIC: "), "{output}");
    Ok(())
}

/// `cpu`'s first line as (wake-ups, ms busy + halted).
fn cpu_figures(output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .find(|line| line.starts_with("cpu: "))
        .unwrap_or_else(|| panic!("no `cpu:` line:\n{output}"));
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.starts_with(word))
            .unwrap_or_else(|| panic!("no `{word}` in {line:?}"));
        words[at - 1]
            .parse()
            .unwrap_or_else(|_| panic!("no figure before `{word}` in {line:?}"))
    };
    let after = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no `{word}` in {line:?}"));
        words[at + 1]
            .parse()
            .unwrap_or_else(|_| panic!("no figure after `{word}` in {line:?}"))
    };
    (number_before("wake-ups"), after("busy") + after("halted"))
}

/// The event loop is tickless: idle, it wakes only for its deadlines (the
/// 200 ms NVDIMM hot-add poll), far fewer than the 100 a second of a
/// periodic tick. Counted on the guest's own clock, so a slow host does not
/// change the figure (it is a count per guest second, not a timing).
#[test]
fn idle_loop_has_no_periodic_tick() -> Result<(), HarnessError> {
    let mut machine = machine("shell_cpu")?;
    let first = machine.command("cpu")?;
    assert!(first.contains("interrupts: "), "{first}");
    std::thread::sleep(Duration::from_secs(3));
    let second = machine.command("cpu")?;
    let (wakeups_1, ms_1) = cpu_figures(&first);
    let (wakeups_2, ms_2) = cpu_figures(&second);
    let seconds = (ms_2 - ms_1) as f64 / 1000.0;
    let per_second = (wakeups_2 - wakeups_1) as f64 / seconds;
    println!("idle: {per_second:.1} wake-ups per guest second over {seconds:.1} s");
    assert!(seconds > 1.0, "guest time did not move: {first}\n{second}");
    assert!(
        per_second < 20.0,
        "{per_second:.1} wake-ups per second while idle:\n{first}\n{second}"
    );
    Ok(())
}
