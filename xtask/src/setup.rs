//! `cargo xtask setup`: make the machine able to build and test daxbox.
//!
//! Idempotent and run by every subcommand that needs it: rustup components
//! and the bare-metal target (cheap when present), then the system tools.
//! Missing Debian packages are installed with apt-get when running as root
//! on Debian; otherwise the exact command is printed and set-up fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{cargo, describe, run_checked, step, XtaskError};

/// How much of the machine a subcommand needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Rust toolchain pieces only (`build`).
    Toolchain,
    /// Plus QEMU and OVMF (`run`, `netboot`).
    Qemu,
    /// Plus the real clients the system tests drive (`test`, `setup`).
    Everything,
}

/// A program (or file) we look for, and why.
struct Requirement {
    /// Program name on PATH, or an absolute file path.
    what: &'static str,
    /// Why daxbox needs it (printed when it is missing).
    why: &'static str,
    needed_from: Needs,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "qemu-system-x86_64",
        why: "runs the appliance (package qemu-system-x86)",
        needed_from: Needs::Qemu,
    },
    Requirement {
        what: "/usr/share/OVMF/OVMF_CODE_4M.fd",
        why: "UEFI firmware for UEFI boot and PXE netboot (package ovmf)",
        needed_from: Needs::Qemu,
    },
    Requirement {
        what: "qemu-storage-daemon",
        why: "the quorum of `cargo xtask cluster` and the cluster test (package \
              qemu-system-common, installed with qemu-system-x86)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "qemu-img",
        why: "disk-image and NBD client tool (package qemu-utils)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "nbdinfo",
        why: "NBD client for system tests (package libnbd-bin)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "nbdcopy",
        why: "NBD client for system tests (package libnbd-bin)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "/usr/lib/python3/dist-packages/nbd.py",
        why: "nbdsh scripting of NBD tests (package python3-libnbd)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "fio",
        why: "NBD benchmarks and load tests (package fio)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "nbdkit",
        why: "reference NBD server to compare against (package nbdkit)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "curl",
        why: "HTTP status-page tests (package curl)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "promtool",
        why: "checks the /metrics exposition in the system tests (package prometheus)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "chromium",
        why: "loads the dashboard headless in the system tests (package chromium)",
        needed_from: Needs::Everything,
    },
    Requirement {
        what: "rclone",
        why: "S3 client in the object API tests (package rclone)",
        needed_from: Needs::Everything,
    },
];

/// The apt-get command line that installs every system package, for this
/// Debian release (`codename`). `qemu-utils/<codename>` matters: machines
/// with qemu-utils from backports would otherwise refuse Debian's
/// qemu-system-x86 (the backports package *Breaks* it); pinning both to the
/// release keeps the pair consistent (`--allow-downgrades`).
pub fn apt_command(codename: Option<&str>) -> String {
    let qemu_utils = match codename {
        Some(codename) => format!("qemu-utils/{codename}"),
        None => "qemu-utils".into(),
    };
    format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
         --no-install-recommends --allow-downgrades qemu-system-x86 {qemu_utils} ovmf \
         libnbd-bin python3-libnbd fio nbdkit curl prometheus chromium rclone"
    )
}

fn rank(needs: Needs) -> u8 {
    match needs {
        Needs::Toolchain => 0,
        Needs::Qemu => 1,
        Needs::Everything => 2,
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn present(what: &str) -> bool {
    if what.starts_with('/') {
        Path::new(what).is_file()
    } else {
        on_path(what).is_some()
    }
}

fn missing(needs: Needs) -> Vec<&'static Requirement> {
    REQUIREMENTS
        .iter()
        .filter(|requirement| rank(requirement.needed_from) <= rank(needs))
        .filter(|requirement| !present(requirement.what))
        .collect()
}

fn is_root() -> bool {
    // Real UID from /proc (std has no getuid); the first number is the real UID.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn debian_codename() -> Option<String> {
    let release = std::fs::read_to_string("/etc/os-release").ok()?;
    let is_debian = release
        .lines()
        .any(|line| line == "ID=debian" || line == "ID=\"debian\"");
    if !is_debian || !Path::new("/etc/debian_version").exists() {
        return None;
    }
    release.lines().find_map(|line| {
        line.strip_prefix("VERSION_CODENAME=")
            .map(|codename| codename.trim_matches('"').to_string())
            .filter(|codename| !codename.is_empty())
    })
}

/// Makes `cargo fuzz` available (the fuzz stage of `cargo xtask test` and
/// `cargo xtask fuzz`): when `cargo fuzz --version` fails, installs it
/// from crates.io with `cargo install cargo-fuzz --locked` (a minute or
/// two of building).
pub fn ensure_cargo_fuzz() -> Result<(), XtaskError> {
    let mut probe = cargo();
    probe
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if probe.status().is_ok_and(|status| status.success()) {
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "cargo-fuzz", "--locked"]);
    step(&format!(
        "set-up: cargo-fuzz is missing; installing it from crates.io: {}",
        describe(&install)
    ));
    run_checked(&mut install)
}

/// The S3 clients the object-API tests drive (boto3 and the AWS CLI, from
/// PyPI) and moto (`moto[server]`, the reference S3 implementation of the
/// differential test): installed with pip when `python3 -c 'import boto3,
/// moto.server'` or `aws --version` fails. Debian's own python refuses a plain `pip install`
/// (PEP 668), so a failed install is retried with
/// `--break-system-packages`.
pub fn ensure_s3_clients() -> Result<(), XtaskError> {
    let quiet = |command: &mut Command| {
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let present = || {
        quiet(Command::new("python3").args(["-c", "import boto3, moto.server"]))
            && quiet(Command::new("aws").arg("--version"))
    };
    if present() {
        return Ok(());
    }
    let args = [
        "-m",
        "pip",
        "install",
        "--quiet",
        "boto3",
        "awscli",
        "moto[server]",
    ];
    step(&format!(
        "set-up: boto3, moto or the AWS CLI is missing; installing them from PyPI: python3 {}",
        args.join(" ")
    ));
    if !quiet(Command::new("python3").args(args)) {
        run_checked(
            Command::new("python3")
                .args(args)
                .arg("--break-system-packages"),
        )?;
    }
    if present() {
        Ok(())
    } else {
        Err(XtaskError::Setup(
            "boto3, moto or the AWS CLI (`aws`) are still missing after pip install".into(),
        ))
    }
}

/// Runs the set-up for `needs`. Safe to call many times.
pub fn setup(needs: Needs) -> Result<(), XtaskError> {
    step("set-up: nightly rust-src, llvm-tools, rustfmt, clippy and the x86_64-unknown-none target (rustup)");
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "llvm-tools-preview",
        "rustfmt",
        "clippy",
        "--toolchain",
        "nightly",
    ]))?;
    run_checked(Command::new("rustup").args([
        "target",
        "add",
        "x86_64-unknown-none",
        "--toolchain",
        "nightly",
    ]))?;

    if needs == Needs::Everything {
        ensure_cargo_fuzz()?;
        ensure_s3_clients()?;
    }
    let absent = missing(needs);
    if absent.is_empty() {
        return Ok(());
    }
    let codename = debian_codename();
    let command = apt_command(codename.as_deref());
    println!("==> set-up: missing system tools:");
    for requirement in &absent {
        println!("      {:<40} {}", requirement.what, requirement.why);
    }
    if codename.is_none() || !is_root() {
        return Err(XtaskError::Setup(format!(
            "install the missing tools and run again; on Debian, as root:\n    {command}"
        )));
    }
    step(&format!("installing Debian packages: {command}"));
    run_checked(Command::new("sh").args(["-c", &command]))?;
    let still = missing(needs);
    if still.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = still.iter().map(|requirement| requirement.what).collect();
        Err(XtaskError::Setup(format!(
            "still missing after apt-get: {}",
            names.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_command_pins_qemu_utils_to_the_release() {
        let command = apt_command(Some("bookworm"));
        assert!(command.contains(" qemu-utils/bookworm "), "{command}");
        assert!(command.contains("--allow-downgrades"));
        for package in [
            "qemu-system-x86",
            "ovmf",
            "libnbd-bin",
            "python3-libnbd",
            "fio",
            "nbdkit",
            "curl",
            "prometheus",
            "chromium",
            "rclone",
        ] {
            assert!(command.contains(package), "{package} in {command}");
        }
        assert!(apt_command(None).contains(" qemu-utils ovmf"));
    }

    #[test]
    fn needs_are_nested() {
        assert!(rank(Needs::Toolchain) < rank(Needs::Qemu));
        assert!(rank(Needs::Qemu) < rank(Needs::Everything));
        // `sh` exists on any machine that can run this test; a made-up
        // program does not.
        assert!(present("sh"));
        assert!(!present("daxbox-no-such-program"));
        assert!(!present("/nonexistent/daxbox/file"));
    }
}
