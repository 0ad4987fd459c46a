//! What to boot and how: [`QemuOptions`] and the QEMU command line built
//! from it.
//!
//! This module is pure (no processes, no files written) so that the command
//! line is unit-tested, and so that `xtask run/netboot` uses the very same
//! command line as the system tests.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::HarnessError;

/// Guest TCP port of the NBD server (IANA port for NBD, proto.md "Ports").
pub const GUEST_NBD_PORT: u16 = 10809;
/// Guest TCP port of the HTTP status server.
pub const GUEST_HTTP_PORT: u16 = 80;
/// Name of the UEFI application in the PXE TFTP folder (fixed by
/// `bootloader::UefiBoot::create_pxe_tftp_folder`).
pub const PXE_BOOT_FILE: &str = "bootloader";

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Which firmware path boots the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS boots `bios.img` (MBR).
    Bios,
    /// OVMF boots `uefi.img` (GPT).
    Uefi,
    /// OVMF's own PXE client fetches the `pxe/` folder from QEMU's built-in
    /// TFTP server; no disk is attached.
    Pxe,
}

impl Firmware {
    /// The `daxbox-boot` flag that builds the media for this firmware.
    pub fn boot_tool_flag(self) -> &'static str {
        match self {
            Firmware::Bios => "--bios",
            Firmware::Uefi => "--uefi",
            Firmware::Pxe => "--pxe",
        }
    }

    /// Whether this firmware path needs the OVMF flash images.
    pub fn needs_ovmf(self) -> bool {
        matches!(self, Firmware::Uefi | Firmware::Pxe)
    }

    /// Short lower-case name (`bios`, `uefi`, `pxe`).
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Pxe => "pxe",
        }
    }
}

/// One emulated NVDIMM and its backing file on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nvdimm {
    /// Backing file (`memory-backend-file,mem-path=`); created sparse when
    /// missing.
    pub path: PathBuf,
    /// Size in bytes (a multiple of 2 MiB keeps QEMU happy).
    pub size: u64,
    /// Empty the file before boot (a brand-new, all-zero NVDIMM). `false`
    /// keeps its contents, e.g. to boot again after a crash.
    pub fresh: bool,
}

impl Nvdimm {
    /// A new all-zero NVDIMM: the file is recreated before boot.
    pub fn fresh(path: impl Into<PathBuf>, size: u64) -> Self {
        Nvdimm {
            path: path.into(),
            size,
            fresh: true,
        }
    }

    /// An NVDIMM whose file keeps its contents (created if missing).
    pub fn existing(path: impl Into<PathBuf>, size: u64) -> Self {
        Nvdimm {
            path: path.into(),
            size,
            fresh: false,
        }
    }
}

/// The OVMF firmware pair: read-only code and a *writable copy* of the
/// variable store (one per machine, as OVMF writes to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovmf {
    /// `OVMF_CODE*.fd`, attached read-only.
    pub code: PathBuf,
    /// Writable copy of `OVMF_VARS*.fd`.
    pub vars: PathBuf,
}

/// Everything that describes one boot of the appliance.
///
/// Build with [`QemuOptions::new`] and the `with_*` methods; the fields are
/// public so tests can also set them directly.
#[derive(Clone, Debug)]
pub struct QemuOptions {
    /// Test name: the run folder is `target/test-runs/<name>/`. Use a unique
    /// name per test (tests run in parallel).
    pub name: String,
    /// BIOS, UEFI disk, or UEFI PXE.
    pub firmware: Firmware,
    /// Guest RAM in bytes (`-m`).
    pub memory: u64,
    /// Emulated NVDIMMs, in slot order (may be empty).
    pub nvdimms: Vec<Nvdimm>,
    /// Boot-config text handed to the kernel as the ramdisk; `None` boots
    /// without a ramdisk (`bootconfig: none`).
    pub boot_config: Option<String>,
    /// Extra QEMU arguments appended at the end.
    pub extra_args: Vec<String>,
    /// Host port forwarded to guest port 10809 (NBD); 0 = pick a free port
    /// at boot.
    pub nbd_port: u16,
    /// Host port forwarded to guest port 80 (HTTP); 0 = pick a free port
    /// at boot.
    pub http_port: u16,
    /// The QEMU program: `qemu-system-x86_64`, or the `DAXBOX_QEMU`
    /// environment variable. Harness self-tests put a fake here.
    pub qemu: String,
    /// QEMU accelerator (`tcg`; `kvm` on real hosts). Default: `tcg`, or
    /// the `DAXBOX_ACCEL` environment variable.
    pub accel: String,
    /// Timeout of [`crate::Machine::boot_to_prompt`]: 60 s (TCG) times
    /// [`load_factor`], or `DAXBOX_BOOT_TIMEOUT` seconds.
    pub boot_timeout: Duration,
    /// Default timeout of [`crate::Machine::command`]: 20 s times
    /// [`load_factor`].
    pub command_timeout: Duration,
    /// Hard limit on the machine's life: a watchdog SIGKILLs QEMU after it,
    /// whatever the test is doing. Default 10 minutes.
    pub max_runtime: Duration,
    /// The `-netdev` of the NIC (`id=n0`) instead of the user network with
    /// its port forwards, e.g. a tap device in a test's network namespace
    /// (`tap,id=n0,ifname=tap0,script=no,downscript=no`). `nbd_port` and
    /// `http_port` then forward nothing.
    pub netdev: Option<String>,
    /// Room for NVDIMMs hot-added while the guest runs (`cargo xtask
    /// pmem-add`, the hot-add system tests): extra memory slots and bytes
    /// of `maxmem` beyond the boot NVDIMMs. With any of it, `nvdimm=on` is
    /// set even when no NVDIMM is there at boot.
    pub hotplug: Hotplug,
    /// A QMP socket (`-qmp unix:PATH,server=on,wait=off`) to drive QEMU
    /// while it runs ([`crate::Qmp`]).
    pub qmp: Option<PathBuf>,
    /// Let a guest reset (QMP `system_reset`, a triple fault) reboot the
    /// machine instead of ending QEMU (`-no-reboot` is left out).
    pub reboot: bool,
}

/// Hot-add headroom: memory slots and bytes for NVDIMMs plugged after boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hotplug {
    /// Extra memory slots.
    pub slots: usize,
    /// Extra bytes of `maxmem` (the NVDIMMs' total).
    pub bytes: u64,
}

impl QemuOptions {
    /// Defaults: 512 MiB RAM, no NVDIMM, no boot config, free host ports,
    /// TCG, 60 s boot timeout and 20 s command timeout (both scaled by
    /// [`load_factor`]).
    pub fn new(name: impl Into<String>, firmware: Firmware) -> Self {
        QemuOptions {
            name: name.into(),
            firmware,
            memory: 512 * MIB,
            nvdimms: Vec::new(),
            boot_config: None,
            extra_args: Vec::new(),
            nbd_port: 0,
            http_port: 0,
            qemu: crate::qemu_program(),
            accel: std::env::var("DAXBOX_ACCEL").unwrap_or_else(|_| "tcg".into()),
            boot_timeout: std::env::var("DAXBOX_BOOT_TIMEOUT")
                .ok()
                .and_then(|seconds| seconds.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or_else(|| Duration::from_secs(60).mul_f64(load_factor())),
            command_timeout: Duration::from_secs(20).mul_f64(load_factor()),
            max_runtime: Duration::from_secs(600),
            netdev: None,
            hotplug: Hotplug::default(),
            qmp: None,
            reboot: false,
        }
    }

    /// Leaves room for `slots` NVDIMMs of `bytes` in total hot-added later.
    pub fn with_hotplug(mut self, slots: usize, bytes: u64) -> Self {
        self.hotplug = Hotplug { slots, bytes };
        self
    }

    /// Opens a QMP socket at `path`.
    pub fn with_qmp(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp = Some(path.into());
        self
    }

    /// Sets the boot-config text (e.g. `"debug_commands=on\n"`).
    pub fn with_boot_config(mut self, text: impl Into<String>) -> Self {
        self.boot_config = Some(text.into());
        self
    }

    /// Adds an NVDIMM.
    pub fn with_nvdimm(mut self, nvdimm: Nvdimm) -> Self {
        self.nvdimms.push(nvdimm);
        self
    }

    /// Sets the guest RAM size in bytes.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }

    /// Appends extra QEMU arguments.
    pub fn with_extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The run folder of this test: `target/test-runs/<name>/`.
    pub fn run_dir(&self) -> PathBuf {
        crate::paths::test_runs_dir().join(&self.name)
    }
}

/// How much slower than an idle machine this host is right now: the
/// 1-minute load average per CPU, at least 1 and at most 8.
///
/// Under TCG a boot is pure CPU work: about 4 s of QEMU CPU time for BIOS
/// and 7 s for UEFI, but on a 2-CPU host with a load of 10 the same boot
/// takes 50 s of wall time. Scaling the timeouts keeps them meaningful on a
/// busy developer machine without making an idle CI machine wait longer
/// for a hung boot.
pub fn load_factor() -> f64 {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get()) as f64;
    (load / cpus).clamp(1.0, 8.0)
}

/// `limit` stretched by [`load_factor`]: a deadline that means the same on
/// a busy host as on an idle one.
pub fn scaled(limit: std::time::Duration) -> std::time::Duration {
    limit.mul_f64(load_factor())
}

/// Parses a size such as `512M`, `1G`, `64K`, `2T`, `1GiB`, `0x1000` or
/// `4096` (binary units; a bare number is bytes): `daxbox-syntax`'s grammar,
/// the same as the boot config's and the shell's.
pub fn parse_size(text: &str) -> Result<u64, String> {
    daxbox_syntax::parse_size(text).map_err(|error| format!("`{}`: {error}", text.trim()))
}

/// Formats a byte count for people (`2 GiB`, `1016 MiB`, `1.5 KiB`):
/// `daxbox-syntax`'s format, the same as the shell's.
pub fn human_size(bytes: u64) -> String {
    daxbox_syntax::human(bytes)
}

/// Formats a byte count as a size option would be written: the largest
/// binary unit that divides it exactly (`512M`, `2G`, `4096`), which
/// [`parse_size`] reads back.
pub fn size_option(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    UNITS
        .iter()
        .find(|(shift, _)| bytes != 0 && bytes.is_multiple_of(1 << shift))
        .map_or_else(
            || bytes.to_string(),
            |(shift, unit)| format!("{}{unit}", bytes >> shift),
        )
}

/// Formats a byte count for QEMU: whole MiB with an `M` suffix when it is a
/// multiple of 1 MiB, else bytes.
fn qemu_size(bytes: u64) -> String {
    if bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else {
        bytes.to_string()
    }
}

/// Asks the kernel for a free TCP port on 127.0.0.1 (bind to port 0, read
/// the port, close). Another process could take it before QEMU binds it;
/// that window is small and only makes QEMU fail loudly.
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| HarnessError::io("binding 127.0.0.1:0 to find a free port", error))?;
    let port = listener
        .local_addr()
        .map_err(|error| HarnessError::io("reading the free port", error))?
        .port();
    Ok(port)
}

/// Two different free ports (see [`free_port`]): the first stays bound
/// while the second is chosen.
pub fn free_port_pair() -> Result<(u16, u16), HarnessError> {
    let first = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| HarnessError::io("binding 127.0.0.1:0 to find a free port", error))?;
    let first_port = first
        .local_addr()
        .map_err(|error| HarnessError::io("reading the free port", error))?
        .port();
    let second_port = free_port()?;
    drop(first);
    Ok((first_port, second_port))
}

/// Finds the OVMF code and variable-template files.
///
/// `DAXBOX_OVMF_CODE` / `DAXBOX_OVMF_VARS` override; otherwise the Debian
/// (`ovmf` package) and Fedora locations are tried, as matching pairs (the
/// 4 MiB code only works with the 4 MiB variable store).
pub fn find_ovmf() -> Result<(PathBuf, PathBuf), HarnessError> {
    if let (Ok(code), Ok(vars)) = (
        std::env::var("DAXBOX_OVMF_CODE"),
        std::env::var("DAXBOX_OVMF_VARS"),
    ) {
        return Ok((code.into(), vars.into()));
    }
    const PAIRS: &[(&str, &str)] = &[
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
    ];
    PAIRS
        .iter()
        .find(|(code, vars)| Path::new(code).is_file() && Path::new(vars).is_file())
        .map(|(code, vars)| (PathBuf::from(code), PathBuf::from(vars)))
        .ok_or_else(|| {
            HarnessError::Setup(
                "OVMF not found (looked for /usr/share/OVMF/OVMF_CODE_4M.fd): \
                 install the `ovmf` package (`cargo xtask setup`) or set \
                 DAXBOX_OVMF_CODE and DAXBOX_OVMF_VARS"
                    .into(),
            )
        })
}

/// The full QEMU argument list (without the program name).
///
/// `media` is the folder `daxbox-boot` wrote (`bios.img`, `uefi.img`,
/// `pxe/`); `ovmf` must be set for UEFI and PXE. Ports of 0 are left out
/// (no forward), so resolve them first.
pub fn qemu_arguments(options: &QemuOptions, media: &Path, ovmf: Option<&Ovmf>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|item| item.to_string()));

    push(&["-accel", &options.accel]);
    // RDRAND, the kernel's entropy source for TLS: QEMU's default model
    // (qemu64) lacks it, so it is added (TCG implements it; `enforce`
    // accepts it on QEMU 7.2). Not `-cpu max`, which would also bring
    // clwb and move every test off the clflush path the default CPU takes
    // (`pmem::clwb_capable_cpu_flushes_with_clwb` boots `max` itself).
    push(&["-cpu", "qemu64,+rdrand"]);
    if options.nvdimms.is_empty() && options.hotplug.slots == 0 {
        push(&["-machine", "q35", "-m", &qemu_size(options.memory)]);
    } else {
        // NVDIMMs are memory devices: they need hot-plug slots and room
        // between RAM and `maxmem`. At least 4 GiB, as verified on QEMU 7.2.
        // Hot-added ones need theirs too.
        let nvdimm_total: u64 = options
            .nvdimms
            .iter()
            .map(|nvdimm| nvdimm.size)
            .sum::<u64>()
            + options.hotplug.bytes;
        let maxmem = (options.memory + nvdimm_total)
            .div_ceil(GIB)
            .saturating_mul(GIB)
            .max(4 * GIB);
        let memory = format!(
            "{},slots={},maxmem={}",
            qemu_size(options.memory),
            options.nvdimms.len() + options.hotplug.slots + 1,
            qemu_size(maxmem)
        );
        push(&["-machine", "q35,nvdimm=on", "-m", &memory]);
        for (index, nvdimm) in options.nvdimms.iter().enumerate() {
            let backend = format!(
                "memory-backend-file,id=pm{index},share=on,mem-path={},size={},pmem=on",
                nvdimm.path.display(),
                qemu_size(nvdimm.size)
            );
            let device = format!("nvdimm,id=nv{index},memdev=pm{index}");
            push(&["-object", &backend, "-device", &device]);
        }
    }
    push(&[
        "-serial",
        "stdio",
        "-display",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]);
    if !options.reboot {
        push(&["-no-reboot"]);
    }
    if let Some(qmp) = &options.qmp {
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp.display()),
        ]);
    }

    let mut netdev = String::from("user,id=n0");
    if let Some(custom) = &options.netdev {
        netdev = custom.clone();
    } else if options.nbd_port != 0 {
        netdev += &format!(
            ",hostfwd=tcp:127.0.0.1:{}-:{GUEST_NBD_PORT}",
            options.nbd_port
        );
    }
    if options.http_port != 0 && options.netdev.is_none() {
        netdev += &format!(
            ",hostfwd=tcp:127.0.0.1:{}-:{GUEST_HTTP_PORT}",
            options.http_port
        );
    }
    if options.firmware == Firmware::Pxe {
        netdev += &format!(
            ",tftp={},bootfile={PXE_BOOT_FILE}",
            media.join("pxe").display()
        );
    }
    // `romfile=` (empty): no iPXE option ROM. OVMF then uses its own PXE
    // client, with which the bootloader can load the kernel over TFTP.
    push(&[
        "-netdev",
        &netdev,
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]);

    if let Some(ovmf) = ovmf {
        let code = format!(
            "if=pflash,format=raw,readonly=on,file={}",
            ovmf.code.display()
        );
        let vars = format!("if=pflash,format=raw,file={}", ovmf.vars.display());
        push(&["-drive", &code, "-drive", &vars]);
    }
    match options.firmware {
        Firmware::Bios => {
            let disk = format!("format=raw,file={}", media.join("bios.img").display());
            push(&["-drive", &disk]);
        }
        Firmware::Uefi => {
            let disk = format!("format=raw,file={}", media.join("uefi.img").display());
            push(&["-drive", &disk]);
        }
        Firmware::Pxe => {}
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// Renders a command line so that it can be pasted into a shell.
pub fn shell_quote(program: &str, args: &[String]) -> String {
    let quote = |word: &str| {
        let plain = !word.is_empty()
            && word.chars().all(|character| {
                character.is_ascii_alphanumeric() || "-_./=,:@%+".contains(character)
            });
        if plain {
            word.to_string()
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_pair(args: &[String], flag: &str, value_part: &str) -> bool {
        args.windows(2)
            .any(|pair| pair[0] == flag && pair[1].contains(value_part))
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_format() {
        assert_eq!(human_size(2 << 30), "2 GiB");
        assert_eq!(human_size(1016 << 20), "1016 MiB");
        for (bytes, text) in [
            (512 << 20, "512M"),
            (2 << 30, "2G"),
            (1 << 40, "1T"),
            (1536 << 10, "1536K"),
            (4097, "4097"),
            (0, "0"),
        ] {
            assert_eq!(size_option(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes));
        }
    }

    #[test]
    fn bios_without_nvdimm() {
        let mut options = QemuOptions::new("t", Firmware::Bios);
        options.nbd_port = 4000;
        options.http_port = 0;
        let args = qemu_arguments(&options, Path::new("/m"), None);
        assert!(find_pair(&args, "-machine", "q35"));
        assert!(find_pair(&args, "-cpu", "qemu64,+rdrand"));
        assert!(!args.iter().any(|arg| arg.contains("nvdimm")));
        assert!(find_pair(&args, "-m", "512M"));
        assert!(find_pair(
            &args,
            "-netdev",
            "hostfwd=tcp:127.0.0.1:4000-:10809"
        ));
        assert!(!args.iter().any(|arg| arg.contains("-:80")));
        assert!(find_pair(&args, "-drive", "file=/m/bios.img"));
        assert!(!args.iter().any(|arg| arg.contains("pflash")));
    }

    #[test]
    fn hotplug_room_and_qmp() {
        let options = QemuOptions::new("t", Firmware::Bios)
            .with_hotplug(2, 512 << 20)
            .with_qmp("/r/qmp.sock");
        let args = qemu_arguments(&options, Path::new("/m"), None);
        // No NVDIMM at boot, but nvdimm=on and two slots for later.
        assert!(find_pair(&args, "-machine", "q35,nvdimm=on"));
        assert!(find_pair(&args, "-m", "512M,slots=3,maxmem=4096M"));
        assert!(!args
            .iter()
            .any(|arg| arg.starts_with("memory-backend-file")));
        assert!(find_pair(
            &args,
            "-qmp",
            "unix:/r/qmp.sock,server=on,wait=off"
        ));
        assert!(args.iter().any(|arg| arg == "-no-reboot"));
        let mut rebooting = options.clone();
        rebooting.reboot = true;
        let args = qemu_arguments(&rebooting, Path::new("/m"), None);
        assert!(!args.iter().any(|arg| arg == "-no-reboot"));
    }

    #[test]
    fn two_nvdimms_get_slots_and_room() {
        let options = QemuOptions::new("t", Firmware::Uefi)
            .with_nvdimm(Nvdimm::fresh("/p/a.img", 1 << 30))
            .with_nvdimm(Nvdimm::existing("/p/b.img", 4 << 30));
        let ovmf = Ovmf {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let args = qemu_arguments(&options, Path::new("/m"), Some(&ovmf));
        assert!(find_pair(&args, "-machine", "nvdimm=on"));
        assert!(find_pair(&args, "-m", "512M,slots=3,maxmem=6144M"));
        assert!(find_pair(
            &args,
            "-object",
            "id=pm1,share=on,mem-path=/p/b.img,size=4096M"
        ));
        assert!(find_pair(&args, "-device", "nvdimm,id=nv0,memdev=pm0"));
        assert!(find_pair(&args, "-drive", "readonly=on,file=/c.fd"));
        assert!(find_pair(&args, "-drive", "format=raw,file=/v.fd"));
        assert!(find_pair(&args, "-drive", "file=/m/uefi.img"));
    }

    #[test]
    fn pxe_uses_tftp_and_no_disk() {
        let options = QemuOptions::new("t", Firmware::Pxe).with_extra_args(["-smp", "2"]);
        let ovmf = Ovmf {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let args = qemu_arguments(&options, Path::new("/m"), Some(&ovmf));
        assert!(find_pair(
            &args,
            "-netdev",
            "tftp=/m/pxe,bootfile=bootloader"
        ));
        assert!(find_pair(
            &args,
            "-device",
            "virtio-net-pci,netdev=n0,romfile="
        ));
        assert!(!args.iter().any(|arg| arg.contains(".img")));
        assert_eq!(&args[args.len() - 2..], ["-smp", "2"]);
    }

    #[test]
    fn load_factor_is_bounded() {
        let factor = load_factor();
        assert!((1.0..=8.0).contains(&factor), "{factor}");
        let options = QemuOptions::new("t", Firmware::Bios);
        assert!(options.command_timeout >= Duration::from_secs(20));
    }

    #[test]
    fn free_ports_differ() {
        let (first, second) = free_port_pair().unwrap();
        assert_ne!(first, second);
        assert_ne!(first, 0);
        assert!(TcpListener::bind(("127.0.0.1", first)).is_ok());
    }

    #[test]
    fn quoting() {
        let args = vec!["a b".to_string(), "it's".to_string(), "x=1,y".to_string()];
        assert_eq!(shell_quote("qemu", &args), r"qemu 'a b' 'it'\''s' x=1,y");
    }
}
