//! The boot configuration: the text file the image builder passes as the
//! bootloader ramdisk, parsed once at boot by `daxbox-bootconfig` (which
//! documents every key) and read-only afterwards.

use alloc::string::String;
use alloc::vec::Vec;
use daxbox_bootconfig::{BootConfig, FormatPolicy, IpConfig, LogLevel};
use spin::Once;

use crate::println;

/// The parsed configuration plus what the kernel reports about it.
pub struct Loaded {
    /// The settings (defaults where the file said nothing or nonsense).
    pub config: BootConfig,
    /// Size of the file in bytes; `None` when there was no file.
    pub size: Option<usize>,
    /// One line per problem found while parsing.
    pub warnings: Vec<String>,
}

static LOADED: Once<Loaded> = Once::new();

/// Parses the ramdisk bytes (or their absence) once.
pub fn init(bytes: Option<&[u8]>) -> &'static Loaded {
    LOADED.call_once(|| {
        let (config, warnings) = daxbox_bootconfig::parse(bytes.unwrap_or_default());
        Loaded {
            config,
            size: bytes.map(|b| b.len()),
            warnings: warnings.iter().map(|w| alloc::format!("{}", w)).collect(),
        }
    })
}

/// The parsed configuration (defaults if [`init`] has not run).
pub fn get() -> &'static BootConfig {
    &init(None).config
}

/// The `log` crate filter for the configured level.
pub fn log_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Prints the effective configuration (shell `bootconfig`).
pub fn show() {
    let loaded = init(None);
    let config = &loaded.config;
    match loaded.size {
        Some(size) => println!("bootconfig: {} bytes", size),
        None => println!("bootconfig: none (defaults)"),
    }
    for request in &config.pmem {
        println!("pmem={}", request.text);
    }
    println!(
        "format={}",
        match config.format {
            FormatPolicy::IfBlank => "if-blank",
            FormatPolicy::Never => "never",
        }
    );
    match config.ip {
        IpConfig::Dhcp => println!("ip=dhcp"),
        IpConfig::Static {
            address: [a, b, c, d],
            prefix,
        } => {
            println!("ip={}.{}.{}.{}/{}", a, b, c, d, prefix)
        }
    }
    if let Some([a, b, c, d]) = config.gateway {
        println!("gateway={}.{}.{}.{}", a, b, c, d);
    }
    println!("nbd_port={}", config.nbd_port);
    println!("http_port={}", config.http_port);
    println!(
        "http_bench={}",
        if config.http_bench { "on" } else { "off" }
    );
    println!("nbd_list={}", if config.nbd_list { "on" } else { "off" });
    println!("nbd_max_connections={}", config.nbd_max_connections);
    println!("nbd_max_per_address={}", config.nbd_max_per_address);
    println!("http_max_connections={}", config.http_max_connections);
    println!("http_max_per_address={}", config.http_max_per_address);
    for name in &config.export_raw {
        println!("export_raw={}", name);
    }
    // As the boot config would spell them (quoted where needed, control
    // characters escaped); a rule standing in for a line that could not
    // be used says so and why.
    for rule in &config.readonly {
        println!("{}", rule);
    }
    // The allow-list in file order (first match decides), and each line
    // that could not be used with the protocol it shuts.
    if config.allow.is_open() {
        println!("allow: no rules; every export is open to every client");
    }
    for rule in &config.allow.rules {
        println!("{}", rule);
    }
    for (protocols, why) in &config.allow.failed {
        let which = match (protocols.nbd, protocols.http) {
            (true, false) => "nbd",
            (false, true) => "http",
            _ => "nbd and http",
        };
        println!("allow: {} not served (failing closed): {}", which, why);
    }
    // The access key id only: `S3Key`'s Display never shows the secret.
    for key in &config.s3_keys {
        println!("{}", key);
    }
    for bucket in &config.s3_anonymous {
        println!("s3_anonymous={}:read", bucket);
    }
    // As the boot config spells it (`info`), not as `log` does (`INFO`).
    println!("log={}", config.log);
    println!(
        "debug_commands={}",
        if config.debug_commands { "on" } else { "off" }
    );
    // Never the key itself: only whether TLS is usable, and why not.
    println!("{}", crate::tls::describe(config.tls.mode));
    if config.tls.mode != daxbox_bootconfig::TlsMode::Off {
        println!("https_port={}", config.tls.https_port);
    }
    for warning in &loaded.warnings {
        println!("warning: {}", warning);
    }
}
