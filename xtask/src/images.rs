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
    target_dir().join("x86_64-unknown-none/kernel/daxbox-kernel")
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
/// (a copy without debug info or symbol table, see [`strip_debug_info`]).
pub fn build_kernel() -> Result<PathBuf, XtaskError> {
    step("building kernel (x86_64-unknown-none, profile kernel: release + LTO)");
    let mut command = cargo();
    command.args(["build", "-p", "daxbox-kernel", "--profile", "kernel"]);
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

/// Writes `<elf>.stripped` without debug info and symbol table and returns
/// its path; on any problem returns `elf` itself (slower boots, same
/// behaviour).
///
/// The release profile keeps line tables (`debug = 1`) for host tools; in
/// the kernel they are 90% of the ELF, which the bootloader then reads from
/// disk or TFTP at every boot: about 3 s of emulated CPU time per boot
/// under TCG. The symbol table (`.symtab`/`.strtab`, 0.7 MiB of a 3.5 MiB
/// kernel) goes too: the bootloader loads segments and applies
/// `.rela.dyn`, neither needs it, and the BIOS path reads the whole file
/// through the firmware's disk calls (QEMU start to the bootloader's 4th
/// stage 6.7 s -> 5.1 s, quiet host, TCG). Panic locations (`file:line`)
/// need neither. The unstripped ELF stays in `target/` for `addr2line`.
pub fn strip_debug_info(elf: &Path) -> PathBuf {
    let Some(objcopy) = llvm_objcopy() else {
        println!("    (llvm-objcopy not found: booting the kernel with its debug info)");
        return elf.to_path_buf();
    };
    let stripped = elf.with_extension("stripped");
    let mut command = std::process::Command::new(objcopy);
    command.arg("--strip-all").arg(elf).arg(&stripped);
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

    /// The boot-config text: the file (or [`DEFAULT_BOOT_CONFIG`]) with the
    /// `--boot KEY=VALUE` settings applied by [`compose_boot_config`].
    pub fn text(&self) -> Result<Composed, XtaskError> {
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
        let Composed { text, notes } = self.text()?;
        for note in notes {
            println!("note: {note}");
        }
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

/// The boot-config keys that may appear more than once
/// (`kernel/bootconfig`: "Repeatable"); a test checks this list against
/// that crate's key table.
pub const REPEATABLE_KEYS: &[&str] = &[
    "pmem",
    "export_raw",
    "readonly",
    "allow",
    "s3_key",
    "s3_anonymous",
];

/// Boot-config text with the `--boot` settings applied, and what the
/// operator should know about how they were applied.
#[derive(Debug, PartialEq, Eq)]
pub struct Composed {
    /// The boot-config text.
    pub text: String,
    /// Lines to print as `note: ...` (a single-valued key given more than
    /// once).
    pub notes: Vec<String>,
}

/// Applies `KEY=VALUE` settings to boot-config text.
///
/// A setting of a repeatable key ([`REPEATABLE_KEYS`]) is appended: the
/// base's lines of that key stay and repeated settings accumulate. A
/// setting of any other key replaces every earlier line with the same key
/// and is appended at the end; when `--boot` gives such a key more than
/// once the last wins, and a note says so.
pub fn compose_boot_config(base: &str, settings: &[String]) -> Composed {
    let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    let mut notes = Vec::new();
    for (index, setting) in settings.iter().enumerate() {
        let key = key_of(setting);
        if REPEATABLE_KEYS.contains(&key.as_str()) {
            lines.push(setting.clone());
            continue;
        }
        lines.retain(|line| line.trim_start().starts_with('#') || key_of(line) != key);
        lines.push(setting.clone());
        let same_key = |other: &String| key_of(other) == key;
        let first = settings.iter().position(same_key) == Some(index);
        let count = settings.iter().filter(|other| same_key(other)).count();
        if first && count > 1 {
            let last = settings.iter().rfind(|other| same_key(other));
            notes.push(format!(
                "--boot {key}=... given {count} times; `{key}` takes one value, the last wins: {}",
                last.map_or("", String::as_str).trim()
            ));
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Composed { text, notes }
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

    fn compose(base: &str, settings: &[&str]) -> Composed {
        compose_boot_config(base, &strings(settings))
    }

    #[test]
    fn settings_replace_and_append() {
        let composed = compose(DEFAULT_BOOT_CONFIG, &["format=never", "debug_commands=on"]);
        assert_eq!(composed.text, "format=never\ndebug_commands=on\n");
        assert!(composed.notes.is_empty());
        let composed = compose("# comment\na=1\nb=2\n", &["a=3"]);
        assert_eq!(composed.text, "# comment\nb=2\na=3\n");
        assert!(composed.notes.is_empty());
        assert_eq!(compose("x=1\n", &[]).text, "x=1\n");
    }

    #[test]
    fn repeatable_keys_accumulate() {
        let composed = compose(
            "format=if-blank\nreadonly=pmem0:base\n",
            &[
                "readonly=disk1",
                "readonly=pmem0:disk1",
                "pmem=64M@0x10000000",
                "pmem=64M@0x20000000",
                "export_raw=pmem1",
                "export_raw=pmem2",
            ],
        );
        assert_eq!(
            composed.text,
            "format=if-blank\nreadonly=pmem0:base\nreadonly=disk1\nreadonly=pmem0:disk1\n\
             pmem=64M@0x10000000\npmem=64M@0x20000000\nexport_raw=pmem1\nexport_raw=pmem2\n"
        );
        assert!(composed.notes.is_empty(), "{:?}", composed.notes);
    }

    #[test]
    fn a_single_valued_key_given_twice_keeps_the_last_with_a_note() {
        let composed = compose(
            DEFAULT_BOOT_CONFIG,
            &["log=debug", "readonly=a", "log = trace", "format=never"],
        );
        assert_eq!(composed.text, "readonly=a\nlog = trace\nformat=never\n");
        assert_eq!(
            composed.notes,
            ["--boot log=... given 2 times; `log` takes one value, the last wins: log = trace"]
        );
    }

    /// [`REPEATABLE_KEYS`] are exactly the keys the boot-config parser's
    /// key table calls repeatable.
    #[test]
    fn repeatable_keys_match_the_boot_config_parser() {
        let source = include_str!("../../kernel/bootconfig/src/lib.rs");
        let repeatable: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("//! | `"))
            .filter(|row| row.contains("Repeatable"))
            .filter_map(|row| row.split('`').next())
            .collect();
        assert_eq!(repeatable, REPEATABLE_KEYS);
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
