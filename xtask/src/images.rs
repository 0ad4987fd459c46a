//! Building the kernel and the boot media, and the boot config they carry.

use std::{
    fs,
    path::{Path, PathBuf},
};

use daxbox_tests::target_dir;

use crate::{cargo, describe, run_checked, setup, step, wants_help, XtaskError};

/// The boot config used when none is given: format the NVDIMM namespace
/// only if it is blank, so a fresh backing file just works and an existing
/// filesystem is never overwritten.
pub const DEFAULT_BOOT_CONFIG: &str = "format=if-blank\n";

/// The kernel ELF from `cargo build -p daxbox-kernel --release`.
pub fn kernel_elf() -> PathBuf {
    target_dir().join("x86_64-unknown-none/release/daxbox-kernel")
}

/// The `daxbox-boot` binary from `cargo build -p daxbox-boot --release`.
pub fn boot_tool() -> PathBuf {
    target_dir().join("release/daxbox-boot")
}

/// Where `build`/`run`/`netboot` put media and the boot config.
pub fn media_dir() -> PathBuf {
    target_dir().join("daxbox")
}

/// Builds the kernel; returns the path of the ELF to put on boot media
/// (a copy without debug info, see [`strip_debug_info`]).
pub fn build_kernel() -> Result<PathBuf, XtaskError> {
    step("building kernel (x86_64-unknown-none, release)");
    let mut command = cargo();
    command.args(["build", "-p", "daxbox-kernel", "--release"]);
    println!("    {}", describe(&command));
    run_checked(&mut command)?;
    Ok(strip_debug_info(&kernel_elf()))
}

/// `llvm-objcopy` from the `llvm-tools-preview` component of the active
/// toolchain (`<sysroot>/lib/rustlib/<host>/bin/`).
fn llvm_objcopy() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = |args: &[&str]| {
        std::process::Command::new(&rustc)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let sysroot = output(&["--print", "sysroot"])?;
    let version = output(&["-vV"])?;
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))?;
    let path = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host.trim())
        .join("bin/llvm-objcopy");
    path.is_file().then_some(path)
}

/// Writes `<elf>.stripped` without debug info and returns its path; on any
/// problem returns `elf` itself (slower boots, same behaviour).
///
/// The release profile keeps line tables (`debug = 1`) for host tools; in
/// the kernel they are 90% of the ELF, which the bootloader then reads from
/// disk or TFTP at every boot: about 3 s of emulated CPU time per boot
/// under TCG. Panic locations (`file:line`) do not need debug info. The
/// unstripped ELF stays in `target/` for `addr2line`.
pub fn strip_debug_info(elf: &Path) -> PathBuf {
    let Some(objcopy) = llvm_objcopy() else {
        println!("    (llvm-objcopy not found: booting the kernel with its debug info)");
        return elf.to_path_buf();
    };
    let stripped = elf.with_extension("stripped");
    let mut command = std::process::Command::new(objcopy);
    command.arg("--strip-debug").arg(elf).arg(&stripped);
    println!("    {}", describe(&command));
    match run_checked(&mut command) {
        Ok(()) => stripped,
        Err(error) => {
            println!("    ({error}: booting the kernel with its debug info)");
            elf.to_path_buf()
        }
    }
}

/// Says what is going on before the first (slow) build of the boot tool.
fn announce_boot_tool_build() {
    if !boot_tool().is_file() {
        println!(
            "    first build of daxbox-boot: the bootloader crate's build script compiles its \
             BIOS stages and UEFI application with -Zbuild-std; this takes about 2 minutes \
             and prints little. Later builds are instant."
        );
    }
}

/// Builds `daxbox-boot`; returns the binary path.
pub fn build_boot_tool() -> Result<PathBuf, XtaskError> {
    step("building the boot tool (daxbox-boot, release)");
    announce_boot_tool_build();
    let mut command = cargo();
    command.args(["build", "-p", "daxbox-boot", "--release"]);
    println!("    {}", describe(&command));
    run_checked(&mut command)?;
    Ok(boot_tool())
}

/// Writes boot media with `cargo run -p daxbox-boot --release -- ...`.
/// `media` are `daxbox-boot` flags (`--bios`, `--uefi`, `--pxe`).
pub fn make_media(
    kernel: &Path,
    config: Option<&Path>,
    out: &Path,
    media: &[&str],
) -> Result<(), XtaskError> {
    step("building boot images");
    announce_boot_tool_build();
    let mut command = cargo();
    command
        .args(["run", "--quiet", "-p", "daxbox-boot", "--release", "--"])
        .arg("--kernel")
        .arg(kernel)
        .arg("--out")
        .arg(out);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(media);
    println!("    {}", describe(&command));
    run_checked(&mut command)
}

/// Boot-config options shared by `build`, `run` and `netboot`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootConfigOptions {
    /// `--boot-config FILE`: start from this file instead of the default.
    pub file: Option<PathBuf>,
    /// `--boot KEY=VALUE` settings, in order.
    pub settings: Vec<String>,
}

impl BootConfigOptions {
    /// Consumes `--boot`/`--boot-config` at `args[index]`; returns how many
    /// arguments were used (0 = not a boot-config option).
    pub fn take(&mut self, args: &[String], index: usize) -> Result<usize, XtaskError> {
        let value = || {
            args.get(index + 1)
                .cloned()
                .ok_or_else(|| XtaskError::Usage(format!("{} needs a value", args[index])))
        };
        match args[index].as_str() {
            "--boot" => {
                let setting = value()?;
                if !setting.contains('=') || setting.starts_with('=') {
                    return Err(XtaskError::Usage(format!(
                        "--boot wants KEY=VALUE, got `{setting}`"
                    )));
                }
                self.settings.push(setting);
                Ok(2)
            }
            "--boot-config" => {
                self.file = Some(value()?.into());
                Ok(2)
            }
            _ => Ok(0),
        }
    }

    /// The boot-config text: the file (or [`DEFAULT_BOOT_CONFIG`]) with each
    /// `--boot KEY=VALUE` replacing earlier lines of the same key.
    pub fn text(&self) -> Result<String, XtaskError> {
        let base = match &self.file {
            Some(path) => fs::read_to_string(path).map_err(|error| {
                XtaskError::Io(format!(
                    "cannot read boot config {}: {error}",
                    path.display()
                ))
            })?,
            None => DEFAULT_BOOT_CONFIG.to_string(),
        };
        Ok(compose_boot_config(&base, &self.settings))
    }

    /// Writes the boot config to `dir/bootconfig.txt` and shows it.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, XtaskError> {
        let text = self.text()?;
        fs::create_dir_all(dir)
            .map_err(|error| XtaskError::Io(format!("cannot create {}: {error}", dir.display())))?;
        let path = dir.join("bootconfig.txt");
        fs::write(&path, &text)
            .map_err(|error| XtaskError::Io(format!("cannot write {}: {error}", path.display())))?;
        step(&format!(
            "boot config {}: {}",
            path.display(),
            text.lines().collect::<Vec<_>>().join("; ")
        ));
        Ok(path)
    }
}

/// Applies `KEY=VALUE` settings to boot-config text: a setting replaces
/// every earlier line with the same key and is appended at the end.
pub fn compose_boot_config(base: &str, settings: &[String]) -> String {
    let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for setting in settings {
        let key = key_of(setting);
        lines.retain(|line| line.trim_start().starts_with('#') || key_of(line) != key);
        lines.push(setting.clone());
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `cargo xtask build [--boot KEY=VALUE]... [--boot-config FILE]`.
pub fn build_command(args: &[String]) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!(
            "usage: cargo xtask build [--boot KEY=VALUE]... [--boot-config FILE]\n\n\
             Builds the kernel and writes target/daxbox/bios.img, uefi.img and pxe/ with the\n\
             boot config (default `{}`) as the bootloader ramdisk.",
            DEFAULT_BOOT_CONFIG.trim()
        );
        return Ok(());
    }
    let mut boot_config = BootConfigOptions::default();
    let mut index = 0;
    while index < args.len() {
        match boot_config.take(args, index)? {
            0 => {
                return Err(XtaskError::Usage(format!(
                    "build: unknown option `{}` (see --help)",
                    args[index]
                )))
            }
            used => index += used,
        }
    }
    setup::setup(setup::Needs::Toolchain)?;
    let kernel = build_kernel()?;
    let dir = media_dir();
    let config = boot_config.write(&dir)?;
    make_media(&kernel, Some(&config), &dir, &["--bios", "--uefi", "--pxe"])?;
    step(&format!(
        "done: {0}/bios.img, {0}/uefi.img, {0}/pxe/",
        dir.display()
    ));
    Ok(())
}

/// Makes sure the kernel and boot tool exist and the harness finds them
/// (`DAXBOX_KERNEL`, `DAXBOX_BOOT_TOOL`), building them when not set.
pub fn prepare_for_harness() -> Result<(), XtaskError> {
    if std::env::var_os("DAXBOX_KERNEL").is_none() {
        let kernel = build_kernel()?;
        std::env::set_var("DAXBOX_KERNEL", kernel);
    }
    if std::env::var_os("DAXBOX_BOOT_TOOL").is_none() {
        let tool = build_boot_tool()?;
        std::env::set_var("DAXBOX_BOOT_TOOL", tool);
    }
    Ok(())
}

/// A QEMU-harness failure as an xtask error.
pub fn harness(error: daxbox_tests::HarnessError) -> XtaskError {
    XtaskError::Command {
        command: "qemu (daxbox-tests harness)".into(),
        problem: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn settings_replace_and_append() {
        let text = compose_boot_config(
            DEFAULT_BOOT_CONFIG,
            &strings(&["format=never", "debug_commands=on"]),
        );
        assert_eq!(text, "format=never\ndebug_commands=on\n");
        let text = compose_boot_config("# comment\na=1\nb=2\n", &strings(&["a=3"]));
        assert_eq!(text, "# comment\nb=2\na=3\n");
        assert_eq!(compose_boot_config("x=1\n", &[]), "x=1\n");
    }

    #[test]
    fn boot_options_parse() {
        let args = strings(&["--boot", "a=1", "--boot-config", "f.txt", "--boot", "oops"]);
        let mut options = BootConfigOptions::default();
        assert_eq!(options.take(&args, 0).unwrap(), 2);
        assert_eq!(options.take(&args, 2).unwrap(), 2);
        assert!(options.take(&args, 4).is_err());
        assert_eq!(options.settings, ["a=1"]);
        assert_eq!(options.file, Some(PathBuf::from("f.txt")));
        assert_eq!(options.take(&strings(&["--other"]), 0).unwrap(), 0);
        assert!(options.take(&strings(&["--boot"]), 0).is_err());
    }
}
