//! `daxbox-serve`: the daxbox storage service over pmem image files, served
//! over NBD on 127.0.0.1 (see the library docs).
//!
//! ```text
//! daxbox-serve --image PATH[,size=SIZE]... [--format if-blank|never]
//!              [--export-raw pmemN]... [--readonly NAME]...
//!              [--create NAME=SIZE]... [--port PORT] [--handshake-timeout-ms N]
//!              [--nbd-list on|off] [--memory-budget SIZE]
//!              [--http-port PORT] [--s3-key ACCESS:SECRET[:read-only]]...
//!              [--s3-anonymous pmemN:read]...
//!              [--tls off|on|require --tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
//!              [--allow RULE]...
//! ```
//!
//! `--http-port PORT` also serves HTTP on 127.0.0.1 (`0` picks a free
//! port; printed as `http listening on 127.0.0.1:PORT` before `listening
//! on`): `/healthz` and the S3 object API, with the keys of `--s3-key` and
//! `--s3-anonymous` (the boot config's `s3_key=` and `s3_anonymous=`, same
//! syntax and checks; without a key every S3 request is refused). The wall
//! clock is the host's.
//!
//! `--memory-budget SIZE` bounds what mounted filesystems may hold in
//! memory (the kernel's `mount` budget; default 1G): a device whose image
//! needs more is refused at boot with a message and left untouched, and a
//! create or write past it fails (NBD `ENOSPC`).
//!
//! `--nbd-list off` answers `NBD_OPT_LIST` with `NBD_REP_ERR_POLICY`, as
//! the boot config's `nbd_list=off` does in the kernel (default `on`).
//! `--readonly RULE` is a `readonly=` rule of the boot config (`NAME`,
//! `pmemN:NAME`, `pmemN:`, `pmemN`, `*`; the value as one argument, no
//! quoting): one that cannot be used fails closed, as in the kernel (every
//! export, or every export of the device it names, read-only, and the
//! reason printed).
//!
//! Prints the boot messages the kernel prints (`storage: ...`), the output
//! of each `--create`, then `listening on 127.0.0.1:PORT` (`--port 0` picks
//! a free port). Afterwards every line on stdin is a storage shell command
//! (`ls`, `create`, `cat`, `nbd`, ..., `help`, `poweroff`), answered on
//! stdout and ended by `ok` or `error: MESSAGE`.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use daxbox_bootconfig::{FormatPolicy, ReadOnlyRule, ReadOnlyTarget};
use daxbox_nbd::ServerConfig;
use daxbox_netstack::http::{Bench, HttpService};
use daxbox_serve::{Admin, HostEnvironment, ImageMemory, ImageSpec, State, TcpLoop};
use daxbox_storage::s3::{self, S3Config, S3Routes};
use daxbox_storage::{compaction, BootPolicy, NbdService, SharedStorage, Storage};

const USAGE: &str = "usage: daxbox-serve --image PATH[,size=SIZE]... [--format if-blank|never] \
     [--export-raw pmemN]... [--readonly NAME]... [--create NAME=SIZE]... [--port PORT] \
     [--handshake-timeout-ms N] [--nbd-list on|off] [--memory-budget SIZE] \
     [--http-port PORT] [--s3-key ACCESS:SECRET[:read-only]]... [--s3-anonymous pmemN:read]... \
     [--tls off|on|require --tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--allow RULE]...";

/// The mount budget without `--memory-budget`: the kernel's share (half
/// the heap) of a 2 GiB heap.
const DEFAULT_MOUNT_BUDGET: u64 = 1 << 30;

struct Options {
    images: Vec<ImageSpec>,
    policy: BootPolicy,
    read_only: Vec<ReadOnlyRule>,
    create: Vec<(String, String)>,
    port: u16,
    engine: ServerConfig,
    mount_budget: u64,
    http_port: Option<u16>,
    /// `s3_key=` / `s3_anonymous=` lines, parsed as the boot config.
    s3_lines: Vec<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_client_ca: Option<String>,
    /// `--allow` values: the boot config's `allow=` rules.
    allow: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        images: Vec::new(),
        policy: BootPolicy {
            format: FormatPolicy::Never,
            export_raw: Vec::new(),
        },
        read_only: Vec::new(),
        create: Vec::new(),
        port: 10809,
        engine: ServerConfig::default(),
        mount_budget: DEFAULT_MOUNT_BUDGET,
        http_port: None,
        s3_lines: Vec::new(),
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        allow: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--image" => options.images.push(ImageSpec::parse(&value)?),
            "--format" => {
                options.policy.format = match value.as_str() {
                    "if-blank" => FormatPolicy::IfBlank,
                    "never" => FormatPolicy::Never,
                    other => return Err(format!("--format {other}: if-blank or never")),
                }
            }
            "--export-raw" => options.policy.export_raw.push(value),
            "--readonly" => options
                .read_only
                .push(ReadOnlyRule::parse(&value, "--readonly")),
            "--create" => {
                let (name, size) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--create {value}: NAME=SIZE"))?;
                options.create.push((name.to_string(), size.to_string()));
            }
            "--port" => {
                options.port = value
                    .parse()
                    .map_err(|_| format!("--port {value}: not a port"))?
            }
            "--handshake-timeout-ms" => {
                options.engine.handshake_timeout_ms = value
                    .parse()
                    .map_err(|_| format!("--handshake-timeout-ms {value}: not a number"))?
            }
            "--nbd-list" => {
                options.engine.allow_list = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--nbd-list {other}: on or off")),
                }
            }
            "--memory-budget" => {
                options.mount_budget = daxbox_bootconfig::parse_size(&value)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--memory-budget {value}: bad size"))?
            }
            "--http-port" => {
                options.http_port = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--http-port {value}: not a port"))?,
                )
            }
            "--s3-key" => options.s3_lines.push(format!("s3_key={value}")),
            "--s3-anonymous" => options.s3_lines.push(format!("s3_anonymous={value}")),
            "--tls" => {
                options.engine.tls = match value.as_str() {
                    "off" => daxbox_nbd::TlsPolicy::Off,
                    "on" => daxbox_nbd::TlsPolicy::On,
                    "require" => daxbox_nbd::TlsPolicy::Require,
                    other => return Err(format!("--tls {other}: off, on or require")),
                }
            }
            "--tls-cert" => options.tls_cert = Some(value),
            "--tls-key" => options.tls_key = Some(value),
            "--tls-client-ca" => options.tls_client_ca = Some(value),
            "--allow" => options.allow.push(value),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.images.is_empty() {
        return Err("at least one --image is needed".into());
    }
    Ok(options)
}

fn fail(message: &str) -> ! {
    eprintln!("daxbox-serve: {message}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn main() {
    let options = parse(std::env::args().skip(1)).unwrap_or_else(|e| fail(&e));
    let images: Vec<ImageMemory> = options
        .images
        .iter()
        .map(ImageMemory::open)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| fail(&e));
    // `--readonly pmemN` also refuses writes through the block layer, as
    // `readonly=pmemN` does in the kernel.
    let read_only_devices: Vec<String> = options
        .read_only
        .iter()
        .filter_map(|rule| match &rule.target {
            ReadOnlyTarget::Device {
                device,
                files: false,
            } => Some(device.clone()),
            _ => None,
        })
        .collect();
    daxbox_budget::MOUNT.set_limit(usize::try_from(options.mount_budget).unwrap_or(usize::MAX));
    let mut state = State {
        storage: Storage::new(),
        env: HostEnvironment::new(images, &read_only_devices),
    };
    let mut boot_log = String::new();
    daxbox_storage::boot(
        &mut state.storage,
        &mut state.env,
        &options.policy,
        &mut boot_log,
    );
    // After the mounts, as the kernel does.
    state.storage.set_read_only(options.read_only.clone());
    for line in state.storage.read_only_report() {
        boot_log.push_str(&format!("storage: {line}\n"));
    }
    print!("{boot_log}");

    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .unwrap_or_else(|e| fail(&format!("bind 127.0.0.1:{}: {e}", options.port)));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&format!("local address: {e}")));
    let shared = daxbox_serve::admin_shared(state);
    let mut admin = Admin::new(shared.clone(), address.port());
    for (name, size) in &options.create {
        let (output, _) = admin.run_line(&format!("create {name} {size}"));
        print!("{output}");
        if output.contains("error: ") {
            std::process::exit(1);
        }
    }
    // The S3 keys go through the boot config's parser: same checks, and
    // a bad one is refused here (without quoting its secret).
    let (boot, warnings) = daxbox_bootconfig::parse(options.s3_lines.join("\n").as_bytes());
    if let Some(warning) = warnings.first() {
        fail(&format!("{warning}"));
    }
    let mut http = match options.http_port {
        None => None,
        Some(port) => {
            let listener = TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| fail(&format!("bind 127.0.0.1:{port}: {e}")));
            let http_address = listener
                .local_addr()
                .unwrap_or_else(|e| fail(&format!("local address: {e}")));
            let config = S3Config::from_boot(&boot);
            println!("{}", config.describe());
            let swept = shared.with(s3::sweep_temporaries);
            if swept > 0 {
                println!("s3: removed {swept} unfinished upload(s) a power cut left");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .ok();
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let routes = S3Routes::new(shared.clone(), config, now, nonce);
            let service =
                HttpService::with_routes(env!("CARGO_PKG_VERSION"), 0, Bench::Off, routes);
            let server = TcpLoop::new(listener, service).unwrap_or_else(|e| fail(&e.to_string()));
            println!("http listening on {http_address}");
            Some(server)
        }
    };
    // `--allow` rules go through the boot config's parser with the TLS
    // settings they depend on (`cn:` needs a client CA); a rule that
    // cannot be used stops the server (failing closed).
    if !options.allow.is_empty() {
        let mut config = String::new();
        if options.engine.tls != daxbox_nbd::TlsPolicy::Off {
            config.push_str("tls=on\n");
        }
        if let Some(path) = &options.tls_client_ca {
            let pem = std::fs::read_to_string(path)
                .unwrap_or_else(|e| fail(&format!("--tls-client-ca {path}: {e}")));
            for line in pem.lines() {
                if line.starts_with("-----BEGIN") {
                    config.push_str("tls_client_ca=");
                }
                config.push_str(line);
                config.push('\n');
            }
        }
        for rule in &options.allow {
            config.push_str(&format!("allow={rule}\n"));
        }
        let (boot, _) = daxbox_bootconfig::parse(config.as_bytes());
        if let Some(why) = boot.allow.failure(daxbox_bootconfig::Protocol::Nbd) {
            fail(&format!("--allow: failing closed: {why}"));
        }
        shared.with(|storage| storage.access_mut().set_rules(boot.allow));
    }
    let tls = options.engine.tls;
    // The idle-time compaction below reaches the storage through its own
    // handle (the loop owns the services).
    let idle_storage = shared.clone();
    let mut service = NbdService::with_config(shared, options.engine);
    if tls != daxbox_nbd::TlsPolicy::Off {
        let read = |what: &str, path: &Option<String>| -> Vec<u8> {
            let path = path
                .as_ref()
                .unwrap_or_else(|| fail(&format!("--tls needs --{what}")));
            std::fs::read(path).unwrap_or_else(|e| fail(&format!("--{what} {path}: {e}")))
        };
        let cert = read("tls-cert", &options.tls_cert);
        let key = read("tls-key", &options.tls_key);
        let ca = options
            .tls_client_ca
            .as_ref()
            .map(|_| read("tls-client-ca", &options.tls_client_ca));
        fn now() -> Option<u64> {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        }
        let server = daxbox_tls::TlsServer::new(
            daxbox_tls::Pem {
                cert: &cert,
                key: &key,
                client_ca: ca.as_deref(),
            },
            now,
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        service = service.with_tls(server);
    }
    let mut server = TcpLoop::new(listener, service).unwrap_or_else(|e| fail(&e.to_string()));
    println!("listening on {address}");
    let _ = std::io::stdout().flush();

    // Admin lines come from a reader thread; the loop owns everything else.
    let (lines, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut idle = 0u32;
    let mut last_work = Instant::now();
    let compact_after = Duration::from_micros(compaction::IDLE_BEFORE_COMPACTION_US);
    loop {
        let mut work = server.poll();
        if let Some(http) = &mut http {
            work |= http.poll();
        }
        while let Ok(line) = commands.try_recv() {
            work = true;
            let (output, outcome) = admin.run_line(&line);
            print!("{output}");
            let _ = std::io::stdout().flush();
            if outcome == daxbox_serve::Outcome::PowerOff {
                return;
            }
        }
        // Nothing to wait on without platform calls: back off from 20 us
        // to 2 ms while idle, and go again at once after work.
        if work {
            idle = 0;
            last_work = Instant::now();
        } else if last_work.elapsed() >= compact_after
            && idle_storage.with(|storage| storage.compact_idle())
        {
            // Idle as long as the kernel waits: one bounded idle-time
            // compaction step (daxbox_storage::compaction), then go again
            // at once, as the kernel's loop does.
            idle = 0;
        } else {
            idle = (idle + 1).min(100);
            std::thread::sleep(Duration::from_micros(20 * u64::from(idle)));
        }
    }
}
