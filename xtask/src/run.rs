//! `cargo xtask run` and `cargo xtask netboot`: the appliance in QEMU with
//! its serial console on this terminal.
//!
//! The QEMU command line comes from `daxbox_tests::qemu_arguments`, the same
//! function the system tests use.

use std::{
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    process::Command,
};

use daxbox_tests::{
    find_ovmf, human_size, parse_size, qemu_arguments, qemu_program, shell_quote, size_option,
    target_dir, Firmware, Nvdimm, Ovmf, QemuOptions, EXIT_PANIC, EXIT_POWEROFF,
};

use crate::{
    images::{self, BootConfigOptions},
    setup, step, wants_help, XtaskError,
};

/// Default host port for NBD (the guest's 10809, the IANA NBD port).
pub const DEFAULT_NBD_PORT: u16 = 10809;
/// Host port forwarded to the guest's HTTPS port with `--tls`.
const TLS_HTTPS_PORT: u16 = 8443;
/// Default host port for the guest's HTTP port 80.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default NVDIMM size.
pub const DEFAULT_PMEM_SIZE: u64 = 1 << 30;
/// Memory slots `run` leaves free for `cargo xtask pmem-add`.
pub const DEFAULT_HOTPLUG_SLOTS: usize = 4;
/// `maxmem` room `run` leaves per free slot (the largest NVDIMM
/// `pmem-add` can plug into it).
pub const HOTPLUG_BYTES_PER_SLOT: u64 = 4 << 30;
/// Default NVDIMM size of `pmem-add`.
pub const DEFAULT_HOTADD_SIZE: u64 = 256 << 20;

/// The default QMP socket of `run` and `pmem-add`.
pub fn default_qmp() -> PathBuf {
    target_dir().join("daxbox-qmp.sock")
}

fn usage(firmware: Firmware) -> String {
    // netboot's firmware is fixed (OVMF's PXE client): no firmware options.
    let (name, firmware_options, what, firmware_help) = if firmware == Firmware::Pxe {
        (
            "netboot",
            "",
            "over UEFI PXE from QEMU's built-in TFTP server (OVMF, no disk)",
            "",
        )
    } else {
        (
            "run",
            " [--uefi|--bios] [--net user|tap]",
            "from a BIOS (default) or UEFI disk image",
            "  --uefi / --bios      firmware (default BIOS)\n\
             \x20 --net user|tap       user networking with port forwards on 127.0.0.1 (default), or a tap\n\
             \x20                      device in a network namespace made for the run (root only): host\n\
             \x20                      198.18.0.1/24, appliance 198.18.0.2 (ip= boot key); reach it with\n\
             \x20                      `ip netns exec daxbox-xtask-PID-run nbdinfo nbd://198.18.0.2/`\n",
        )
    };
    format!(
        "usage: cargo xtask {name}{firmware_options} [--memory 512M] [--pmem-file PATH] [--pmem-size 1G]\n\
         \x20      [--no-pmem] [--tls] [--rng rdrand|virtio|none] [--nvdimm PATH[,size=SIZE]]... [--boot KEY=VALUE]... [--boot-config FILE] [--nbd-port {DEFAULT_NBD_PORT}]\n\
         \x20      [--http-port {DEFAULT_HTTP_PORT}] [--accel tcg|kvm] [-- EXTRA QEMU ARGS...]\n\n\
         Builds the kernel and boots daxbox {what} in QEMU:\n\
         {firmware_help}\
         \x20 --memory SIZE        guest RAM (default 512M)\n\
         \x20 --pmem-file PATH     NVDIMM backing file (default target/daxbox-pmem0.img, created sparse on first use)\n\
         \x20 --pmem-size SIZE     NVDIMM size (default 1G); a smaller file is grown (sparse), a larger one is\n\
         \x20                      used at its size: the file is never truncated\n\
         \x20 --no-pmem            boot without the --pmem-file NVDIMM\n\
         \x20 --tls                throwaway CA, server and client certificates (ECDSA P-256) under\n\
         \x20                      target/tls/, tls=on with them, HTTPS forwarded to host port 8443;\n\
         \x20                      prints the client command lines (nbdinfo, qemu-img, curl)\n\
         \x20 --rng SOURCE         entropy for TLS: rdrand (default, -cpu qemu64,+rdrand), virtio (a CPU\n\
         \x20                      without RDRAND, -cpu qemu64, plus -device virtio-rng-pci) or none\n\
         \x20                      (-cpu qemu64 alone: TLS is refused)\n\
         \x20 --nvdimm PATH[,size=SIZE]  one more NVDIMM on backing file PATH (repeatable; pmem1, pmem2,\n\
         \x20                      ... after the --pmem-file one); SIZE as --pmem-size, default 1G\n\
         \x20 --boot KEY=VALUE     boot-config setting (default config: `{}`); replaces the config's KEY\n\
         \x20                      line, except pmem, export_raw and readonly, which repeat: each --boot adds one\n\
         \x20 --boot-config FILE   start from this boot-config file instead of the default\n\
         \x20 --nbd-port PORT      host port on 127.0.0.1 forwarded to guest NBD port 10809\n\
         \x20 --http-port PORT     host port on 127.0.0.1 forwarded to guest HTTP port 80 (0 = none)\n\
         \x20 --accel NAME         QEMU accelerator (default tcg; kvm on hosts where it works)\n\
         \x20 -- ARGS              appended to the QEMU command line\n\n\
         The serial console is this terminal: type `help`; `poweroff` ends QEMU (or press Ctrl-C).",
        images::DEFAULT_BOOT_CONFIG.trim()
    )
}

/// Parsed `run`/`netboot` options.
#[derive(Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Firmware path.
    pub firmware: Firmware,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// NVDIMM backing file (`None` = no NVDIMM).
    pub pmem_file: Option<PathBuf>,
    /// `--pmem-size` in bytes (`None`: [`DEFAULT_PMEM_SIZE`] for a new or
    /// smaller backing file; a larger one is used at its size).
    pub pmem_size: Option<u64>,
    /// `--nvdimm PATH[,size=SIZE]`: more NVDIMMs, in order, each with its
    /// size as `--pmem-size` is (`None`: the default).
    pub nvdimms: Vec<(PathBuf, Option<u64>)>,
    /// Boot-config options.
    pub boot_config: BootConfigOptions,
    /// Host NBD port.
    pub nbd_port: u16,
    /// Host HTTP port (0 = no forward).
    pub http_port: u16,
    /// QEMU accelerator.
    pub accel: String,
    /// Arguments after `--`.
    pub extra: Vec<String>,
    /// `--tls`: throwaway certificates under `target/tls/`, TLS on.
    pub tls: bool,
    /// `--rng`: where the guest gets entropy.
    pub rng: Rng,
    /// QMP socket.
    pub qmp: PathBuf,
    /// `--net tap`: the NIC on a tap device in a namespace made for the
    /// run (`run` only: netboot needs the user network's TFTP server).
    pub tap: bool,
    /// Free memory slots for hot-added NVDIMMs.
    pub hotplug_slots: usize,
}

/// `--rng`: the guest's entropy source for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rng {
    /// The harness's `-cpu qemu64,+rdrand`.
    Rdrand,
    /// `-cpu qemu64` (no RDRAND) and `-device virtio-rng-pci`.
    Virtio,
    /// `-cpu qemu64` alone: no entropy, TLS refused.
    None,
}

impl Rng {
    /// QEMU arguments placed after the harness's own `-cpu` (the last
    /// `-cpu` wins).
    pub fn qemu_args(self) -> Vec<String> {
        let args: &[&str] = match self {
            Rng::Rdrand => &[],
            Rng::Virtio => &["-cpu", "qemu64", "-device", "virtio-rng-pci"],
            Rng::None => &["-cpu", "qemu64"],
        };
        args.iter().map(|arg| arg.to_string()).collect()
    }
}

/// Parses `run`/`netboot` arguments (`netboot` when `firmware` is PXE).
pub fn parse(args: &[String], firmware: Firmware) -> Result<RunOptions, XtaskError> {
    let mut options = RunOptions {
        firmware,
        memory: 512 << 20,
        pmem_file: Some(target_dir().join("daxbox-pmem0.img")),
        pmem_size: None,
        nvdimms: Vec::new(),
        boot_config: BootConfigOptions::default(),
        nbd_port: DEFAULT_NBD_PORT,
        http_port: DEFAULT_HTTP_PORT,
        accel: std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into()),
        extra: Vec::new(),
        tls: false,
        rng: Rng::Rdrand,
        qmp: default_qmp(),
        hotplug_slots: DEFAULT_HOTPLUG_SLOTS,
        tap: false,
    };
    let netboot = firmware == Firmware::Pxe;
    let mut no_pmem = false;
    let mut index = 0;
    while index < args.len() {
        let used = options.boot_config.take(args, index)?;
        if used > 0 {
            index += used;
            continue;
        }
        let argument = args[index].as_str();
        let value = || {
            args.get(index + 1)
                .map(String::as_str)
                .ok_or_else(|| XtaskError::Usage(format!("{argument} needs a value")))
        };
        let size = |text: &str| {
            parse_size(text).map_err(|error| XtaskError::Usage(format!("{argument}: {error}")))
        };
        let port = |text: &str| {
            text.parse::<u16>()
                .map_err(|_| XtaskError::Usage(format!("{argument}: `{text}` is not a port")))
        };
        index += match argument {
            "--" => {
                options.extra = args[index + 1..].to_vec();
                break;
            }
            "--uefi" if !netboot => {
                options.firmware = Firmware::Uefi;
                1
            }
            "--bios" if !netboot => {
                options.firmware = Firmware::Bios;
                1
            }
            "--net" if !netboot => {
                options.tap = match value()? {
                    "user" => false,
                    "tap" => true,
                    other => {
                        return Err(XtaskError::Usage(format!(
                            "--net: `{other}` is not user or tap"
                        )))
                    }
                };
                2
            }
            "--memory" => {
                options.memory = size(value()?)?;
                2
            }
            "--pmem-file" => {
                options.pmem_file = Some(value()?.into());
                2
            }
            "--pmem-size" => {
                options.pmem_size = Some(size(value()?)?);
                2
            }
            "--no-pmem" => {
                no_pmem = true;
                1
            }
            "--rng" => {
                options.rng = match value()? {
                    "rdrand" => Rng::Rdrand,
                    "virtio" => Rng::Virtio,
                    "none" => Rng::None,
                    other => {
                        return Err(XtaskError::Usage(format!(
                            "--rng: `{other}` is not rdrand, virtio or none"
                        )))
                    }
                };
                2
            }
            "--tls" => {
                options.tls = true;
                1
            }
            "--nvdimm" => {
                options.nvdimms.push(nvdimm_option(value()?)?);
                2
            }
            "--nbd-port" => {
                options.nbd_port = port(value()?)?;
                2
            }
            "--http-port" => {
                options.http_port = port(value()?)?;
                2
            }
            "--accel" => {
                options.accel = value()?.to_string();
                2
            }
            "--qmp" => {
                options.qmp = PathBuf::from(value()?);
                2
            }
            "--hotplug-slots" => {
                let text = value()?;
                options.hotplug_slots = text
                    .parse::<usize>()
                    .ok()
                    .filter(|slots| *slots <= 64)
                    .ok_or_else(|| {
                        XtaskError::Usage(format!("--hotplug-slots: `{text}` is not 0..=64"))
                    })?;
                2
            }
            other => {
                return Err(XtaskError::Usage(format!(
                    "unknown option `{other}`\n\n{}",
                    usage(firmware)
                )))
            }
        };
    }
    if no_pmem {
        options.pmem_file = None;
    }
    if options.nbd_port == 0 {
        return Err(XtaskError::Usage("--nbd-port must not be 0".into()));
    }
    Ok(options)
}

/// Parses `PATH[,size=SIZE]` of `--nvdimm`. A comma anywhere else is an
/// error (QEMU's option syntax would split the path there).
fn nvdimm_option(text: &str) -> Result<(PathBuf, Option<u64>), XtaskError> {
    let bad = |why: String| XtaskError::Usage(format!("--nvdimm {text}: {why}"));
    let (path, size) = match text.split_once(',') {
        None => (text, None),
        Some((path, rest)) => {
            let size = rest
                .strip_prefix("size=")
                .ok_or_else(|| bad("expected PATH or PATH,size=SIZE".into()))?;
            let size = parse_size(size).map_err(|error| bad(error.to_string()))?;
            (path, Some(size))
        }
    };
    if path.is_empty() {
        return Err(bad("the path is empty".into()));
    }
    if size == Some(0) {
        return Err(bad("the size must not be 0".into()));
    }
    Ok((PathBuf::from(path), size))
}

/// NVDIMM sizes that QEMU takes: multiples of 2 MiB.
const PMEM_ALIGN: u64 = 2 << 20;

/// Creates the NVDIMM backing file (sparse) on first use, grows a smaller
/// one sparsely, and never shrinks one: a file larger than the size asked
/// for is used at its real size, as a smaller NVDIMM would cut off the end
/// of the filesystem on it. `requested` is `--pmem-size` (`None`: the
/// default, [`DEFAULT_PMEM_SIZE`]).
///
/// Returns the NVDIMM size and the lines to print (`==> ...` steps and
/// `note: ...`).
fn prepare_pmem(path: &Path, requested: Option<u64>) -> Result<(u64, Vec<String>), XtaskError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|error| {
            XtaskError::Io(format!("cannot create {}: {error}", parent.display()))
        })?;
    }
    let wanted = requested.unwrap_or(DEFAULT_PMEM_SIZE);
    let option = match requested {
        Some(size) => format!("--pmem-size {}", size_option(size)),
        None => format!("the default --pmem-size {}", size_option(DEFAULT_PMEM_SIZE)),
    };
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|error| XtaskError::Io(format!("cannot open {}: {error}", path.display())))?;
    let length = file
        .metadata()
        .map_err(|error| XtaskError::Io(format!("{}: {error}", path.display())))?
        .len();
    let set_len = |size: u64| {
        file.set_len(size)
            .map_err(|error| XtaskError::Io(format!("cannot size {}: {error}", path.display())))
    };
    let shown = path.display();
    let mut lines = Vec::new();
    let size = if !existed {
        set_len(wanted)?;
        lines.push(format!(
            "==> created NVDIMM backing file {shown} ({}, sparse)",
            human_size(wanted)
        ));
        wanted
    } else if length < wanted {
        set_len(wanted)?;
        lines.push(format!(
            "==> grew NVDIMM backing file {shown} sparsely from {} to {} for {option}",
            human_size(length),
            human_size(wanted)
        ));
        wanted
    } else if length == wanted {
        lines.push(format!(
            "==> NVDIMM backing file {shown} (kept; {})",
            human_size(length)
        ));
        length
    } else {
        // Larger than asked for: use all of it. QEMU wants a multiple of
        // 2 MiB, so an odd size is rounded up (never down).
        let size = length.next_multiple_of(PMEM_ALIGN);
        lines.push(format!(
            "==> NVDIMM backing file {shown} (kept; {})",
            human_size(length)
        ));
        if requested.is_some() {
            lines.push(format!(
                "note: {shown} is {}; using {} ({option} ignored, the file is never truncated)",
                human_size(length),
                human_size(size)
            ));
        }
        if size != length {
            set_len(size)?;
            lines.push(format!(
                "note: grew {shown} sparsely from {length} to {size} bytes, a multiple of 2 MiB \
                 as QEMU needs"
            ));
        }
        size
    };
    Ok((size, lines))
}

/// The NVDIMMs of `options`, backing files prepared: the `--pmem-file`
/// one (unless `--no-pmem`), then each `--nvdimm` in order. The harness
/// sizes QEMU's memory `slots=` and `maxmem=` to fit them all. Returns
/// them with the lines to print.
fn prepare_nvdimms(options: &RunOptions) -> Result<(Vec<Nvdimm>, Vec<String>), XtaskError> {
    let mut nvdimms: Vec<Nvdimm> = Vec::new();
    let mut all_lines = Vec::new();
    let files = options
        .pmem_file
        .iter()
        .map(|path| (path, options.pmem_size))
        .chain(options.nvdimms.iter().map(|(path, size)| (path, *size)));
    for (path, requested) in files {
        if nvdimms.iter().any(|nvdimm| nvdimm.path == *path) {
            return Err(XtaskError::Usage(format!(
                "--nvdimm {}: that file backs another NVDIMM already",
                path.display()
            )));
        }
        let (size, lines) = prepare_pmem(path, requested)?;
        all_lines.extend(lines);
        nvdimms.push(Nvdimm::existing(path, size));
    }
    Ok((nvdimms, all_lines))
}

/// Entry point of `run` (firmware BIOS by default) and `netboot` (PXE).
pub fn run_command(args: &[String], firmware: Firmware) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!("{}", usage(firmware));
        return Ok(());
    }
    let options = parse(args, firmware)?;
    if options.tap {
        crate::tap::require_root()?;
    }
    setup::setup(setup::Needs::Qemu)?;
    let kernel = images::build_kernel()?;
    let dir = images::media_dir();
    let config = options.boot_config.write(&dir)?;
    let tls_dir = target_dir().join("tls");
    if options.tls {
        crate::tls_certs::generate(&tls_dir)?;
        let mut text = fs::read_to_string(&config)
            .map_err(|e| XtaskError::Io(format!("{}: {e}", config.display())))?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text += &crate::tls_certs::boot_lines(&tls_dir)?;
        fs::write(&config, text)
            .map_err(|e| XtaskError::Io(format!("{}: {e}", config.display())))?;
        step(&format!(
            "TLS certificates (throwaway CA, server, client) in {}",
            tls_dir.display()
        ));
    }
    if options.tap {
        // The tap network has no DHCP server: the appliance's static
        // address (this line comes last, so it wins over an `ip=`
        // line of the config).
        let mut text = fs::read_to_string(&config)
            .map_err(|e| XtaskError::Io(format!("{}: {e}", config.display())))?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let line = daxbox_tests::netns::tap_boot_config_line();
        text += &line;
        fs::write(&config, text)
            .map_err(|e| XtaskError::Io(format!("{}: {e}", config.display())))?;
        step(&format!(
            "boot config: added `{}` (tap network)",
            line.trim()
        ));
    }
    images::make_media(
        &kernel,
        Some(&config),
        &dir,
        &[options.firmware.boot_tool_flag()],
    )?;

    let mut qemu = QemuOptions::new("xtask-run", options.firmware);
    qemu.memory = options.memory;
    qemu.nbd_port = options.nbd_port;
    qemu.http_port = options.http_port;
    qemu.accel = options.accel.clone();
    qemu.extra_args = options.rng.qemu_args();
    qemu.extra_args.extend(options.extra.iter().cloned());
    qemu.hotplug = daxbox_tests::Hotplug {
        slots: options.hotplug_slots,
        bytes: options.hotplug_slots as u64 * HOTPLUG_BYTES_PER_SLOT,
    };
    qemu.qmp = Some(options.qmp.clone());
    if options.tls {
        // HTTPS (guest port 443) needs its own forward beside NBD and HTTP.
        let mut netdev = format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:{}",
            options.nbd_port,
            daxbox_tests::GUEST_NBD_PORT
        );
        if options.http_port != 0 {
            netdev += &format!(
                ",hostfwd=tcp:127.0.0.1:{}-:{}",
                options.http_port,
                daxbox_tests::GUEST_HTTP_PORT
            );
        }
        netdev += &format!(
            ",hostfwd=tcp:127.0.0.1:{TLS_HTTPS_PORT}-:{}",
            crate::tls_certs::GUEST_HTTPS_PORT
        );
        qemu.netdev = Some(netdev);
    }
    // A socket left by an earlier run would make QEMU refuse to start.
    let _ = fs::remove_file(&options.qmp);
    let (nvdimms, lines) = prepare_nvdimms(&options)?;
    for line in lines {
        println!("{line}");
    }
    qemu.nvdimms = nvdimms;
    let ovmf = if options.firmware.needs_ovmf() {
        let (code, template) = find_ovmf().map_err(|error| XtaskError::Setup(error.to_string()))?;
        // OVMF writes its variable store: give it a private copy, kept
        // between runs like a real machine's NVRAM.
        let vars = dir.join("ovmf-vars.fd");
        if !vars.exists() {
            fs::copy(&template, &vars).map_err(|error| {
                XtaskError::Io(format!("cannot copy {}: {error}", template.display()))
            })?;
        }
        Some(Ovmf { code, vars })
    } else {
        None
    };

    // Dropped (namespace deleted) when this function returns.
    let tap = if options.tap {
        Some(crate::tap::TapNet::create("run", None)?)
    } else {
        None
    };
    if let Some(tap) = &tap {
        qemu.netdev = Some(tap.netdev());
    }
    let mut program = qemu_program();
    let mut args = qemu_arguments(&qemu, &dir, ovmf.as_ref());
    if let Some(tap) = &tap {
        args.splice(0..0, [tap.name().to_string(), program]);
        args.splice(0..0, ["netns".to_string(), "exec".to_string()]);
        program = "ip".into();
    }
    step(&format!("running: {}", shell_quote(&program, &args)));
    let mut forwards = format!("NBD: nbd://127.0.0.1:{}/", options.nbd_port);
    if options.http_port != 0 {
        forwards += &format!("   HTTP: http://127.0.0.1:{}/", options.http_port);
    }
    if let Some(tap) = &tap {
        let guest = daxbox_tests::netns::TAP_GUEST_ADDRESS;
        forwards = format!(
            "NBD: ip netns exec {0} nbdinfo --list nbd://{guest}/   HTTP: ip netns exec {0} \
             curl http://{guest}/",
            tap.name()
        );
    }
    println!("    {forwards}   (exit: `poweroff` in the shell, or Ctrl-C)");
    if options.tls {
        for line in crate::tls_certs::client_lines(&tls_dir, options.nbd_port, TLS_HTTPS_PORT) {
            println!("    {line}");
        }
    }
    if options.hotplug_slots > 0 {
        println!(
            "    hot-add an NVDIMM: cargo xtask pmem-add --size 256M --qmp {}",
            options.qmp.display()
        );
    }
    let status = Command::new(&program)
        .args(&args)
        .status()
        .map_err(|error| XtaskError::Command {
            command: program.clone(),
            problem: error.to_string(),
        })?;
    match status.code() {
        Some(EXIT_POWEROFF) => {
            step("the appliance powered off");
            Ok(())
        }
        Some(EXIT_PANIC) => Err(XtaskError::Command {
            command: program,
            problem: "the kernel panicked (exit status 35); see the console output above".into(),
        }),
        _ => Err(XtaskError::Command {
            command: program,
            problem: format!("QEMU ended with {status}"),
        }),
    }
}

fn pmem_add_usage() -> String {
    format!(
        "usage: cargo xtask pmem-add [--size 256M] [--qmp PATH] [--file PATH]\n\n\
         Hot-adds an NVDIMM to the appliance `cargo xtask run` is running, over its QMP socket:\n\
         \x20 --size SIZE   the NVDIMM's size (default 256M; at most 4G with run's default slots)\n\
         \x20 --qmp PATH    run's QMP socket (default {})\n\
         \x20 --file PATH   backing file (default target/daxbox-hotadd-N.img, the first N not in use;\n\
         \x20               created sparse, or grown, never truncated)\n\n\
         QEMU: object-add memory-backend-file,share=true + device_add nvdimm. The appliance sees it\n\
         within 0.2 s (console: `pmem: NVDIMM hot-add event`) and applies its boot policy.",
        default_qmp().display()
    )
}

/// `cargo xtask pmem-add`.
pub fn pmem_add_command(args: &[String]) -> Result<(), XtaskError> {
    if wants_help(args) {
        println!("{}", pmem_add_usage());
        return Ok(());
    }
    let mut size = DEFAULT_HOTADD_SIZE;
    let mut qmp = default_qmp();
    let mut file = None;
    let mut index = 0;
    while index < args.len() {
        let argument = args[index].as_str();
        let value = args
            .get(index + 1)
            .ok_or_else(|| XtaskError::Usage(format!("{argument} needs a value")))?;
        match argument {
            "--size" => {
                size = parse_size(value)
                    .map_err(|error| XtaskError::Usage(format!("--size: {error}")))?;
                if size == 0 || !size.is_multiple_of(2 << 20) {
                    return Err(XtaskError::Usage(
                        "--size: a non-zero multiple of 2 MiB".into(),
                    ));
                }
            }
            "--qmp" => qmp = PathBuf::from(value),
            "--file" => file = Some(PathBuf::from(value)),
            other => {
                return Err(XtaskError::Usage(format!(
                    "unknown option `{other}`\n\n{}",
                    pmem_add_usage()
                )))
            }
        }
        index += 2;
    }
    let mut session =
        daxbox_tests::Qmp::connect(&qmp, std::time::Duration::from_secs(5)).map_err(|error| {
            XtaskError::Command {
                command: format!("QMP {}", qmp.display()),
                problem: format!("{error} (is `cargo xtask run` running?)"),
            }
        })?;
    let devices = session
        .execute("query-memory-devices", "{}")
        .map_err(|error| XtaskError::Command {
            command: format!("QMP {}", qmp.display()),
            problem: error.to_string(),
        })?;
    // The first id QEMU does not have yet (and its backing file).
    let n = (0..64)
        .find(|n| !devices.contains(&format!("\"hotadd{n}\"")))
        .ok_or_else(|| XtaskError::Usage("64 NVDIMMs hot-added already".into()))?;
    let id = format!("hotadd{n}");
    let path = file.unwrap_or_else(|| target_dir().join(format!("daxbox-hotadd-{n}.img")));
    let (size, lines) = prepare_pmem(&path, Some(size))?;
    for line in lines {
        println!("{line}");
    }
    session
        .add_nvdimm(&id, &path, size)
        .map_err(|error| XtaskError::Command {
            command: format!("QMP {}", qmp.display()),
            problem: error.to_string(),
        })?;
    step(&format!(
        "hot-added NVDIMM {id}: {} on {}",
        size_option(size),
        path.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn defaults() {
        let options = parse(&[], Firmware::Bios).unwrap();
        assert_eq!(options.firmware, Firmware::Bios);
        assert_eq!(options.memory, 512 << 20);
        assert_eq!(options.pmem_size, None);
        assert!(options
            .pmem_file
            .unwrap()
            .ends_with("target/daxbox-pmem0.img"));
        assert_eq!(options.nbd_port, 10809);
        assert!(options.extra.is_empty());
    }

    #[test]
    fn rng_option_picks_the_cpu_and_the_device() {
        let parsed = |args: &[&str]| parse(&strings(args), Firmware::Bios).map(|o| o.rng);
        assert_eq!(parsed(&[]).unwrap(), Rng::Rdrand);
        assert!(Rng::Rdrand.qemu_args().is_empty());
        assert_eq!(parsed(&["--rng", "virtio"]).unwrap(), Rng::Virtio);
        assert_eq!(
            Rng::Virtio.qemu_args(),
            strings(&["-cpu", "qemu64", "-device", "virtio-rng-pci"])
        );
        assert_eq!(parsed(&["--rng", "none"]).unwrap(), Rng::None);
        assert_eq!(Rng::None.qemu_args(), strings(&["-cpu", "qemu64"]));
        assert!(parsed(&["--rng", "urandom"]).is_err());
        assert!(parsed(&["--rng"]).is_err());
    }

    #[test]
    fn all_options() {
        let args = strings(&[
            "--uefi",
            "--memory",
            "1G",
            "--pmem-file",
            "/tmp/p.img",
            "--pmem-size",
            "256M",
            "--boot",
            "debug_commands=on",
            "--nbd-port",
            "20000",
            "--http-port",
            "0",
            "--accel",
            "kvm",
            "--",
            "-smp",
            "2",
        ]);
        let options = parse(&args, Firmware::Bios).unwrap();
        assert_eq!(options.firmware, Firmware::Uefi);
        assert_eq!(options.memory, 1 << 30);
        assert_eq!(options.pmem_file, Some(PathBuf::from("/tmp/p.img")));
        assert_eq!(options.pmem_size, Some(256 << 20));
        assert_eq!(options.boot_config.settings, ["debug_commands=on"]);
        assert_eq!(options.nbd_port, 20000);
        assert_eq!(options.http_port, 0);
        assert_eq!(options.accel, "kvm");
        assert_eq!(options.extra, ["-smp", "2"]);
    }

    #[test]
    fn nvdimm_options_repeat_with_optional_sizes() {
        let args = strings(&["--nvdimm", "/tmp/b.img", "--nvdimm", "/tmp/c.img,size=2G"]);
        let options = parse(&args, Firmware::Bios).unwrap();
        assert_eq!(
            options.nvdimms,
            [
                (PathBuf::from("/tmp/b.img"), None),
                (PathBuf::from("/tmp/c.img"), Some(2 << 30))
            ]
        );
        for (bad, why) in [
            ("/tmp/c.img,2G", "expected PATH or PATH,size=SIZE"),
            ("/tmp/c.img,size=lots", "size"),
            ("/tmp/c.img,size=0", "must not be 0"),
            (",size=1G", "the path is empty"),
        ] {
            let error = parse(&strings(&["--nvdimm", bad]), Firmware::Bios)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("--nvdimm {bad}")) && error.contains(why),
                "{bad}: {error}"
            );
        }
        assert!(parse(&strings(&["--nvdimm"]), Firmware::Bios).is_err());
    }

    #[test]
    fn two_nvdimms_are_prepared_and_get_a_slot_each() {
        let first = scratch("nvdimm-first");
        let second = scratch("nvdimm-second");
        let args = vec![
            "--pmem-file".to_string(),
            first.display().to_string(),
            "--pmem-size".to_string(),
            "64M".to_string(),
            "--nvdimm".to_string(),
            format!("{},size=32M", second.display()),
        ];
        let options = parse(&args, Firmware::Bios).unwrap();
        let (nvdimms, lines) = prepare_nvdimms(&options).unwrap();
        assert_eq!(nvdimms.len(), 2);
        assert_eq!((nvdimms[0].size, nvdimms[1].size), (64 << 20, 32 << 20));
        assert_eq!(
            (file_size(&first), file_size(&second)),
            (64 << 20, 32 << 20)
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        let mut qemu = QemuOptions::new("t", Firmware::Bios);
        qemu.nvdimms = nvdimms;
        let qemu_args = qemu_arguments(&qemu, Path::new("/m"), None);
        let joined = qemu_args.join(" ");
        assert!(joined.contains("512M,slots=3,maxmem="), "{joined}");
        assert!(joined.contains("nvdimm,id=nv1,memdev=pm1"), "{joined}");
        // The same file twice is refused.
        let twice = vec![
            "--pmem-file".to_string(),
            first.display().to_string(),
            "--nvdimm".to_string(),
            first.display().to_string(),
        ];
        let error = prepare_nvdimms(&parse(&twice, Firmware::Bios).unwrap()).unwrap_err();
        assert!(
            error.to_string().contains("backs another NVDIMM"),
            "{error}"
        );
        fs::remove_file(&first).unwrap();
        fs::remove_file(&second).unwrap();
    }

    /// A fresh, unique scratch path (the file does not exist).
    fn scratch(name: &str) -> PathBuf {
        let dir = target_dir().join("xtask-unit-tests");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{}.img", std::process::id()));
        let _ = fs::remove_file(&path);
        path
    }

    fn file_size(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_larger_backing_file_is_used_at_its_size() {
        let path = scratch("larger");
        fs::File::create(&path).unwrap().set_len(2 << 30).unwrap();
        let (size, lines) = prepare_pmem(&path, Some(512 << 20)).unwrap();
        assert_eq!(size, 2 << 30);
        assert_eq!(file_size(&path), 2 << 30, "never truncated");
        let shown = path.display();
        assert_eq!(
            lines,
            [
                format!("==> NVDIMM backing file {shown} (kept; 2 GiB)"),
                format!(
                    "note: {shown} is 2 GiB; using 2 GiB (--pmem-size 512M ignored, \
                     the file is never truncated)"
                ),
            ]
        );
        // Without --pmem-size the file's size is simply used.
        let (size, lines) = prepare_pmem(&path, None).unwrap();
        assert_eq!(size, 2 << 30);
        assert_eq!(
            lines,
            [format!("==> NVDIMM backing file {shown} (kept; 2 GiB)")]
        );
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_larger_backing_file_of_an_odd_size_is_rounded_up() {
        let path = scratch("odd");
        let odd = (1 << 30) + 4096;
        fs::File::create(&path).unwrap().set_len(odd).unwrap();
        let (size, lines) = prepare_pmem(&path, None).unwrap();
        assert_eq!(size, (1 << 30) + (2 << 20));
        assert_eq!(file_size(&path), size);
        assert!(lines[1].contains("grew"), "{lines:?}");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn backing_files_are_created_and_grown_sparsely() {
        let path = scratch("grow");
        let shown = path.display().to_string();
        let (size, lines) = prepare_pmem(&path, Some(256 << 20)).unwrap();
        assert_eq!(size, 256 << 20);
        assert_eq!(file_size(&path), 256 << 20);
        assert_eq!(
            lines,
            [format!(
                "==> created NVDIMM backing file {shown} (256 MiB, sparse)"
            )]
        );
        let (size, lines) = prepare_pmem(&path, Some(256 << 20)).unwrap();
        assert_eq!(size, 256 << 20);
        assert_eq!(
            lines,
            [format!("==> NVDIMM backing file {shown} (kept; 256 MiB)")]
        );
        let (size, lines) = prepare_pmem(&path, None).unwrap();
        assert_eq!(size, 1 << 30);
        assert_eq!(file_size(&path), 1 << 30);
        assert_eq!(
            lines,
            [format!(
                "==> grew NVDIMM backing file {shown} sparsely from 256 MiB to 1 GiB \
                 for the default --pmem-size 1G"
            )]
        );
        fs::remove_file(&path).unwrap();
    }

    /// The `--options` a help text names.
    fn options_in(text: &str) -> Vec<&str> {
        let mut options: Vec<&str> = text
            .split(|character: char| !(character.is_ascii_alphanumeric() || character == '-'))
            .filter(|word| word.starts_with("--") && word.len() > 2)
            .collect();
        options.sort_unstable();
        options.dedup();
        options
    }

    /// Each help text lists exactly the options its command takes:
    /// `netboot` has no firmware choice, so no `--uefi`/`--bios`.
    #[test]
    fn help_lists_only_options_the_command_takes() {
        for firmware in [Firmware::Bios, Firmware::Pxe] {
            let help = usage(firmware);
            let options = options_in(&help);
            assert!(options.contains(&"--pmem-size"), "{options:?}");
            for option in &options {
                if let Err(XtaskError::Usage(message)) = parse(&strings(&[option, "1"]), firmware) {
                    assert!(
                        !message.starts_with(&format!("unknown option `{option}`")),
                        "{firmware:?}: help lists {option}, which is refused:\n{help}"
                    );
                }
            }
        }
        let netboot = usage(Firmware::Pxe);
        assert!(!netboot.contains("--uefi"), "{netboot}");
        assert!(!netboot.contains("--bios"), "{netboot}");
        assert!(!netboot.contains("run only"), "{netboot}");
        let run = usage(Firmware::Bios);
        assert!(
            run.contains("  --uefi / --bios      firmware (default BIOS)\n"),
            "{run}"
        );
    }

    #[test]
    fn net_option() {
        let options = parse(&strings(&["--net", "tap"]), Firmware::Bios).unwrap();
        assert!(options.tap);
        let options = parse(&strings(&["--net", "user"]), Firmware::Bios).unwrap();
        assert!(!options.tap);
        assert!(!parse(&[], Firmware::Bios).unwrap().tap);
        for args in [&["--net"][..], &["--net", "bridge"]] {
            assert!(parse(&strings(args), Firmware::Bios).is_err(), "{args:?}");
        }
        // netboot needs the user network's TFTP server.
        assert!(parse(&strings(&["--net", "tap"]), Firmware::Pxe).is_err());
    }

    #[test]
    fn bad_options() {
        for args in [
            &["--memory"][..],
            &["--memory", "lots"],
            &["--nbd-port", "70000"],
            &["--nbd-port", "0"],
            &["--frobnicate"],
        ] {
            assert!(parse(&strings(args), Firmware::Bios).is_err(), "{args:?}");
        }
        // netboot has no firmware choice.
        assert!(parse(&strings(&["--uefi"]), Firmware::Pxe).is_err());
        let options = parse(&strings(&["--no-pmem"]), Firmware::Pxe).unwrap();
        assert_eq!(options.pmem_file, None);
        assert_eq!(options.firmware, Firmware::Pxe);
    }
}
