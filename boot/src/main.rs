//! `daxbox-boot`: the host tool that wraps the kernel ELF into bootable media.
//!
//! It is a thin shell around the rust-osdev `bootloader` crate (0.11.15): the
//! crate's build script compiles the BIOS stages and the UEFI application, and
//! this tool packs them with the kernel into a BIOS (MBR) disk image, a UEFI
//! (GPT) disk image and a UEFI PXE/TFTP folder. An optional boot-config text
//! file is passed as the bootloader *ramdisk*, which the kernel finds through
//! `BootInfo::ramdisk_addr` and parses with `daxbox-bootconfig`.
//!
//! Neighbours: `xtask` (which builds this tool and calls it for `cargo xtask
//! build/run/netboot`) and the `daxbox-tests` harness (which calls it once per
//! system test with that test's boot config).
//!
//! Usage: `daxbox-boot --kernel ELF --out DIR [--config FILE] [--bios] [--uefi] [--pxe]`.
//! With none of `--bios/--uefi/--pxe` all three are written: `DIR/bios.img`,
//! `DIR/uefi.img` and `DIR/pxe/`.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use bootloader::{BiosBoot, BootConfig, UefiBoot};

mod bios_fat;

const USAGE: &str = "\
usage: daxbox-boot --kernel ELF --out DIR [--config FILE] [--bios] [--uefi] [--pxe]

Turns the daxbox kernel ELF into boot media:
  --kernel ELF    the kernel (target/x86_64-unknown-none/kernel/daxbox-kernel)
  --out DIR       output folder (created if missing)
  --config FILE   boot-config text file, handed to the kernel as the bootloader ramdisk
  --bios          write DIR/bios.img (MBR disk image)
  --uefi          write DIR/uefi.img (GPT disk image)
  --pxe           write DIR/pxe/ (UEFI PXE TFTP folder; boot file name `bootloader`)
With none of --bios/--uefi/--pxe, all three are written.";

/// What went wrong; every variant names the file or argument involved.
#[derive(Debug)]
enum BootError {
    /// Command-line problem, with the message to show above the usage text.
    Usage(String),
    /// An input file that must exist does not.
    Missing { what: &'static str, path: PathBuf },
    /// Creating the output folder failed.
    OutDir {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The bootloader crate failed to build an image.
    Image {
        what: &'static str,
        path: PathBuf,
        error: String,
    },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Usage(message) => write!(f, "{message}\n\n{USAGE}"),
            BootError::Missing { what, path } => {
                write!(f, "{what} not found: {}", path.display())
            }
            BootError::OutDir { path, error } => {
                write!(f, "cannot create output folder {}: {error}", path.display())
            }
            BootError::Image { what, path, error } => {
                write!(f, "failed to write {what} {}: {error}", path.display())
            }
        }
    }
}

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
struct Arguments {
    kernel: PathBuf,
    out: PathBuf,
    config: Option<PathBuf>,
    bios: bool,
    uefi: bool,
    pxe: bool,
}

/// Parses the arguments (without the program name). `Ok(None)` means `--help`.
fn parse_arguments<I: IntoIterator<Item = String>>(
    arguments: I,
) -> Result<Option<Arguments>, BootError> {
    let mut kernel = None;
    let mut out = None;
    let mut config = None;
    let (mut bios, mut uefi, mut pxe) = (false, false, false);
    let mut arguments = arguments.into_iter();
    while let Some(argument) = arguments.next() {
        let mut value = |name: &str| {
            arguments
                .next()
                .map(PathBuf::from)
                .ok_or_else(|| BootError::Usage(format!("{name} needs a value")))
        };
        match argument.as_str() {
            "-h" | "--help" => return Ok(None),
            "--kernel" => kernel = Some(value("--kernel")?),
            "--out" => out = Some(value("--out")?),
            "--config" => config = Some(value("--config")?),
            "--bios" => bios = true,
            "--uefi" => uefi = true,
            "--pxe" => pxe = true,
            other => return Err(BootError::Usage(format!("unknown argument `{other}`"))),
        }
    }
    if !(bios || uefi || pxe) {
        (bios, uefi, pxe) = (true, true, true);
    }
    Ok(Some(Arguments {
        kernel: kernel.ok_or_else(|| BootError::Usage("--kernel is required".into()))?,
        out: out.ok_or_else(|| BootError::Usage("--out is required".into()))?,
        config,
        bios,
        uefi,
        pxe,
    }))
}

/// The bootloader's runtime configuration (`boot.json` on the boot media).
fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    // The appliance is headless (`-display none`); drawing the log into a
    // framebuffer costs boot time under TCG and nobody sees it.
    config.frame_buffer_logging = false;
    // The serial log is what the test harness shows when a boot fails.
    config.serial_logging = true;
    config
}

fn file_size(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => "folder".into(),
        Ok(metadata) => format!("{} KiB", metadata.len().div_ceil(1024)),
        Err(_) => "size unknown".into(),
    }
}

fn build(arguments: &Arguments) -> Result<Vec<PathBuf>, BootError> {
    if !arguments.kernel.is_file() {
        return Err(BootError::Missing {
            what: "kernel ELF",
            path: arguments.kernel.clone(),
        });
    }
    if let Some(config) = &arguments.config {
        if !config.is_file() {
            return Err(BootError::Missing {
                what: "boot-config file",
                path: config.clone(),
            });
        }
    }
    std::fs::create_dir_all(&arguments.out).map_err(|error| BootError::OutDir {
        path: arguments.out.clone(),
        error,
    })?;

    let config = boot_config();
    let mut written = Vec::new();
    if arguments.bios {
        let path = arguments.out.join("bios.img");
        let mut bios = BiosBoot::new(&arguments.kernel);
        bios.set_boot_config(&config);
        if let Some(ramdisk) = &arguments.config {
            bios.set_ramdisk(ramdisk);
        }
        bios.create_disk_image(&path)
            .map_err(|error| BootError::Image {
                what: "BIOS disk image",
                path: path.clone(),
                error: format!("{error:#}"),
            })?;
        // 32 KiB FAT clusters: the BIOS stage 2 makes two firmware disk
        // calls per cluster (see bios_fat.rs).
        bios_fat::recluster(&path).map_err(|error| BootError::Image {
            what: "BIOS disk image (FAT re-pack)",
            path: path.clone(),
            error: error.to_string(),
        })?;
        written.push(path);
    }
    if arguments.uefi || arguments.pxe {
        let mut uefi = UefiBoot::new(&arguments.kernel);
        uefi.set_boot_config(&config);
        if let Some(ramdisk) = &arguments.config {
            uefi.set_ramdisk(ramdisk);
        }
        if arguments.uefi {
            let path = arguments.out.join("uefi.img");
            uefi.create_disk_image(&path)
                .map_err(|error| BootError::Image {
                    what: "UEFI disk image",
                    path: path.clone(),
                    error: format!("{error:#}"),
                })?;
            written.push(path);
        }
        if arguments.pxe {
            let path = arguments.out.join("pxe");
            uefi.create_pxe_tftp_folder(&path)
                .map_err(|error| BootError::Image {
                    what: "UEFI PXE TFTP folder",
                    path: path.clone(),
                    error: format!("{error:#}"),
                })?;
            written.push(path);
        }
    }
    Ok(written)
}

fn main() -> ExitCode {
    let arguments = match parse_arguments(std::env::args().skip(1)) {
        Ok(Some(arguments)) => arguments,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("daxbox-boot: {error}");
            return ExitCode::from(2);
        }
    };
    match build(&arguments) {
        Ok(written) => {
            let config = match &arguments.config {
                Some(path) => format!("boot config {}", path.display()),
                None => "no boot config".into(),
            };
            for path in written {
                println!(
                    "daxbox-boot: wrote {} ({}, {config})",
                    path.display(),
                    file_size(&path)
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("daxbox-boot: error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Option<Arguments>, BootError> {
        parse_arguments(arguments.iter().map(|argument| argument.to_string()))
    }

    #[test]
    fn no_media_flag_means_all_three() {
        let arguments = parse(&["--kernel", "k", "--out", "o"]).unwrap().unwrap();
        assert!(arguments.bios && arguments.uefi && arguments.pxe);
        assert_eq!(arguments.config, None);
    }

    #[test]
    fn media_flags_select() {
        let arguments = parse(&["--pxe", "--kernel", "k", "--out", "o", "--config", "c"])
            .unwrap()
            .unwrap();
        assert_eq!(
            arguments,
            Arguments {
                kernel: "k".into(),
                out: "o".into(),
                config: Some("c".into()),
                bios: false,
                uefi: false,
                pxe: true,
            }
        );
    }

    #[test]
    fn bad_command_lines_are_errors() {
        assert!(matches!(parse(&["--out", "o"]), Err(BootError::Usage(_))));
        assert!(matches!(
            parse(&["--kernel", "k"]),
            Err(BootError::Usage(_))
        ));
        assert!(matches!(parse(&["--kernel"]), Err(BootError::Usage(_))));
        assert!(matches!(parse(&["--frobnicate"]), Err(BootError::Usage(_))));
        assert!(matches!(parse(&["--help"]), Ok(None)));
    }

    #[test]
    fn missing_kernel_is_reported_by_name() {
        let arguments = parse(&["--kernel", "/nonexistent/kernel", "--out", "/tmp/x"])
            .unwrap()
            .unwrap();
        let error = build(&arguments).unwrap_err().to_string();
        assert!(
            error.contains("kernel ELF not found: /nonexistent/kernel"),
            "{error}"
        );
    }

    #[test]
    fn boot_config_is_headless_with_serial_log() {
        let config = boot_config();
        assert!(!config.frame_buffer_logging);
        assert!(config.serial_logging);
    }
}
