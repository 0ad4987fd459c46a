//! The network: virtio-net found on PCI, driven through `virtio-drivers`,
//! wrapped as a smoltcp device and served by `daxbox-netstack` (DHCP or a
//! static address from the boot config, the HTTP health/bench service).
//!
//! Interrupts: the NIC's INTx line is routed through the I/O APIC,
//! level-triggered, on the input `daxbox_pci::intx_gsi` names (on q35 not
//! the line firmware programmed for the PIC); the ISR is read once after
//! routing, so a notification raised before it cannot hold the line up
//! for good (it did: no NIC interrupt at all over tap). The handler
//! only reads the virtio ISR status register, which de-asserts the line
//! (virtio 1.2 §4.1.4.5); the event loop, woken by the interrupt, does the
//! actual work in [`poll`]. NAPI-style, [`poll`] turns the device's
//! interrupts off while the loop keeps polling and back on (with a last
//! look at the rings) only when it is about to halt, so a burst costs one
//! interrupt, not one per frame; transmit completions never interrupt
//! (their slots are reclaimed on the next send or poll) unless every
//! transmit slot is in flight at a halt. Without a usable line the loop
//! polls the NIC every [`NO_IRQ_POLL_MS`] instead.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use daxbox_bootconfig::IpConfig;
use daxbox_netstack::http::{Bench, HttpRoutes, HttpService};
use daxbox_netstack::smoltcp::wire::{Ipv4Address, Ipv4Cidr};
use daxbox_netstack::{
    IpMode, Listener, ListenerConfig, ListenerStats, NetConfig, NetStack, PollOutcome, PortListener,
};
use daxbox_pci::{capabilities, intx_gsi, reg, Bar, Bdf, Chipset, ConfigAccess, Function};
use daxbox_platform::memory::PhysRange;
use daxbox_platform::mmio::{self, MmioRegion};
use daxbox_platform::virtio::KernelHal;
use daxbox_platform::virtio_drivers::device::net::{Offloads, VirtIONetRaw};
use daxbox_platform::virtio_drivers::transport::pci::PciTransport;
use daxbox_platform::virtio_net::{Nic, MAX_MTU};
use daxbox_storage::web::NetInfo;
use spin::{Mutex, Once};

use crate::command::{Command, Context};
use crate::interrupts::{self, Trigger};
use crate::{config, pci, println, time};

/// How long boot waits for a DHCP lease before going on without one.
const DHCP_WAIT_MS: u64 = 3000;

/// How often the event loop polls a NIC whose interrupt could not be
/// routed.
pub const NO_IRQ_POLL_MS: u64 = 10;

/// Device-vector index (see `interrupts::route_irq`) used by the NIC.
const NIC_VECTOR_INDEX: usize = 0;

struct Net {
    stack: NetStack<Nic>,
    bdf: Bdf,
    irq: Option<u8>,
    /// Address last announced on the console.
    announced: Option<Ipv4Cidr>,
    /// The device-config `status` field (link state).
    status_register: Option<MmioRegion>,
}

static NET: Mutex<Option<Net>> = Mutex::new(None);
/// The virtio ISR status byte, read by the interrupt handler.
static ISR: Once<MmioRegion> = Once::new();
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Calls of [`poll`] with a NIC: the event loop's passes.
static POLLS: AtomicU64 = AtomicU64::new(0);

/// How often [`poll`] refreshes the copy of the counters that the web
/// pages read ([`stats`]): they run inside the poll, under [`NET`].
pub const STATS_EVERY_MS: u64 = 250;

/// The copy of the network counters for the web pages, and when it was
/// taken.
struct StatsCopy {
    at_ms: u64,
    net: NetInfo,
    listeners: Vec<(&'static str, ListenerStats)>,
}

static STATS: Mutex<StatsCopy> = Mutex::new(StatsCopy {
    at_ms: 0,
    net: NetInfo {
        counters: daxbox_netstack::Counters {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            rx_errors: 0,
            tx_errors: 0,
            tx_busy: 0,
            connections_accepted: 0,
            connections_active: 0,
        },
        interrupts: 0,
        rx_submitted: 0,
        tx_submitted: 0,
        rx_notifies: 0,
        tx_notifies: 0,
        notify_us: 0,
        polls: 0,
    },
    listeners: Vec::new(),
});

/// The network counters as of the last refresh (at most
/// [`STATS_EVERY_MS`] old), with each listener's service name.
pub fn stats() -> (NetInfo, Vec<(&'static str, ListenerStats)>) {
    let copy = STATS.lock();
    (copy.net, copy.listeners.clone())
}

fn refresh_stats(stack: &NetStack<Nic>, now_ms: u64) {
    let mut copy = STATS.lock();
    if now_ms.saturating_sub(copy.at_ms) < STATS_EVERY_MS && !copy.listeners.is_empty() {
        return;
    }
    let status = stack.status();
    let driver = stack.device().counters();
    let mut counters = status.counters;
    counters.rx_errors = driver.rx_errors;
    counters.tx_errors = driver.tx_errors;
    let boot = config::get();
    copy.at_ms = now_ms;
    copy.net = NetInfo {
        counters,
        interrupts: INTERRUPTS.load(Ordering::Relaxed),
        rx_submitted: driver.rx_submitted,
        tx_submitted: driver.tx_submitted,
        rx_notifies: driver.rx_notifies,
        tx_notifies: driver.tx_notifies,
        notify_us: driver.notify_ns / 1000,
        polls: POLLS.load(Ordering::Relaxed),
    };
    copy.listeners = status
        .listeners
        .into_iter()
        .map(|l| {
            let service = match l.port {
                port if port == boot.nbd_port => "nbd",
                port if port == boot.http_port => "http",
                _ => "other",
            };
            (service, l)
        })
        .collect();
}

fn nic_interrupt() {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    if let Some(isr) = ISR.get() {
        // The read clears the status and de-asserts INTx; the driver itself
        // never reads this register, so nothing else races with it.
        let _ = isr.read::<u8>(0);
    }
}

/// virtio PCI capability (virtio 1.2 §4.1.4): cfg_type at +3, bar at +4,
/// offset at +8.
fn virtio_structure(access: &pci::Access, bdf: Bdf, cfg_type: u8) -> Option<(u8, u32)> {
    capabilities(access, bdf)
        .filter(|c| c.id == 0x09)
        .find(|c| access.read_u8(bdf, u16::from(c.offset) + 3) == cfg_type)
        .map(|c| {
            let bar = access.read_u8(bdf, u16::from(c.offset) + 4);
            let offset = access.read_u32(bdf, u16::from(c.offset) + 8);
            (bar, offset)
        })
}

fn find_nic() -> Option<Function> {
    pci::functions()
        .iter()
        .find(|f| f.vendor == 0x1af4 && (f.device == 0x1000 || f.device == 0x1041))
        .cloned()
}

fn ip_mode() -> IpMode {
    let config = config::get();
    match config.ip {
        IpConfig::Dhcp => IpMode::Dhcp,
        IpConfig::Static { address, prefix } => IpMode::Static {
            // The boot-config parser limits the prefix to 0-32; `min` keeps
            // `Ipv4Cidr::new` (which asserts it) safe regardless.
            address: Ipv4Cidr::new(Ipv4Address::from(address), prefix.min(32)),
            gateway: config.gateway.map(Ipv4Address::from),
        },
    }
}

/// Finds the NIC, starts the driver and the stack, routes the interrupt;
/// the HTTP service answers `/healthz` itself and everything else through
/// `routes`. `http_gate` decides which client addresses may use the HTTP
/// server beyond `/healthz` (the allow-list, from the storage module).
pub fn init<R: HttpRoutes + Send + 'static>(
    routes: R,
    http_gate: daxbox_netstack::http::Gate,
    https_routes: R,
    https_gate: daxbox_netstack::http::Gate,
) {
    let Some(function) = find_nic() else {
        println!("net: no virtio-net device");
        return;
    };
    let bdf = function.bdf;
    let mut access = pci::access();
    // Memory decoding and bus mastering (DMA) on, INTx not masked.
    let command = access.read_u32(bdf, reg::COMMAND_STATUS) & 0xFFFF;
    let command = (command
        | u32::from(reg::COMMAND_MEMORY | reg::COMMAND_IO | reg::COMMAND_BUS_MASTER))
        & !u32::from(reg::COMMAND_INTX_DISABLE);
    access.write_u32(bdf, reg::COMMAND_STATUS, command);
    // BAR addresses for the two registers the kernel reads itself.
    let bars = pci::bars(bdf).unwrap_or([None; 6]);
    let register = |cfg_type: u8, extra: u64| -> Option<u64> {
        let (bar, offset) = virtio_structure(&access, bdf, cfg_type)?;
        match bars.get(usize::from(bar))? {
            Some(Bar::Memory { address, .. }) => Some(address + u64::from(offset) + extra),
            _ => None,
        }
    };
    let isr = register(3, 0);
    // virtio_net_config.status follows the 6-byte MAC (virtio 1.2 §5.1.4).
    let status_register = register(4, 6);

    let transport = match PciTransport::new::<KernelHal, _>(&access, bdf, &bars) {
        Ok(transport) => transport,
        Err(error) => {
            println!("net: virtio-net at {}: {}", bdf, error);
            return;
        }
    };
    // Checksum offload and a device MTU up to 9000 when the device offers
    // them (QEMU does for tap with vnet_hdr, and host_mtu=; user-mode
    // networking offers neither).
    let offloads = Offloads {
        csum: true,
        guest_csum: true,
        max_mtu: MAX_MTU,
    };
    let raw = match VirtIONetRaw::with_offloads(transport, offloads) {
        Ok(raw) => raw,
        Err(error) => {
            println!("net: virtio-net at {}: {}", bdf, error);
            return;
        }
    };
    let Some(nic) = Nic::new(raw) else {
        println!("net: out of RAM frames for packet buffers");
        return;
    };
    let mac = nic.mac();
    let now = time::now_ms();
    let ip = ip_mode();
    let mut stack = NetStack::new(
        nic,
        NetConfig {
            mac,
            ip,
            random_seed: time::cycles(),
        },
        now,
    );
    let http_port = config::get().http_port;
    let bench = if config::get().http_bench {
        println!("net: http_bench=on: /bench/bytes and /bench/sink are served");
        Bench::On
    } else {
        Bench::Off
    };
    let mut http = HttpService::with_routes(env!("CARGO_PKG_VERSION"), 0, bench, routes);
    http.set_gate(http_gate);
    let mut listener = ListenerConfig::new(http_port);
    listener.max_connections = usize::from(config::get().http_max_connections);
    listener.max_per_address = usize::from(config::get().http_max_per_address);
    listener.budget = Some(&daxbox_budget::HTTP);
    listener.connection_bytes = daxbox_netstack::http::CONNECTION_BYTES;
    // `allow=` lines about HTTP that could not be used: fail closed, no
    // listener at all.
    if let Some(why) = config::get()
        .allow
        .failure(daxbox_bootconfig::Protocol::Http)
    {
        println!("net: http not served (failing closed): {}", why);
    } else if let Err(error) = stack.add_listener(Listener::new(listener, http).boxed()) {
        println!("net: {}", error);
    }
    // HTTPS: the same service over TLS on its own port, same certificate.
    // The same routes and allow-list gate as HTTP.
    let https_failure = config::get()
        .allow
        .failure(daxbox_bootconfig::Protocol::Http);
    if let (Some(server), None) = (crate::tls::server(), https_failure) {
        let https_port = config::get().tls.https_port;
        let mut https = HttpService::with_routes(env!("CARGO_PKG_VERSION"), 0, bench, https_routes);
        https.set_gate(https_gate);
        let mut listener = ListenerConfig::new(https_port);
        listener.max_connections = usize::from(config::get().http_max_connections);
        listener.max_per_address = usize::from(config::get().http_max_per_address);
        listener.budget = Some(&daxbox_budget::HTTP);
        listener.connection_bytes =
            daxbox_netstack::http::CONNECTION_BYTES + daxbox_netstack::tls::TLS_CONNECTION_BYTES;
        let service = daxbox_netstack::tls::TlsService::new(https, server.clone());
        match stack.add_listener(Listener::new(listener, service).boxed()) {
            Ok(()) => println!("net: https on port {}", https_port),
            Err(error) => println!("net: https: {}", error),
        }
    }
    // The I/O APIC input the NIC's INTx reaches: on q35 not the firmware's
    // line (see `daxbox_pci::intx_gsi`), which left the NIC without a
    // single interrupt and the loop waking only on timers.
    let chipset = pci::functions()
        .iter()
        .find(|f| {
            f.bdf
                == Bdf {
                    bus: 0,
                    device: 0,
                    function: 0,
                }
        })
        .map_or(Chipset::Legacy, |f| {
            Chipset::from_host_bridge(f.vendor, f.device)
        });
    let gsi = intx_gsi(
        chipset,
        bdf,
        function.interrupt_pin,
        function.interrupt_line,
    );
    let irq = match gsi {
        Some(line) => {
            if let Some(isr) = isr.and_then(|address| register_region(address, 1)) {
                ISR.call_once(|| isr);
            }
            match interrupts::route_irq(line, NIC_VECTOR_INDEX, Trigger::LevelLow, nic_interrupt) {
                Ok(()) => {
                    // A frame may have arrived between `finish_init` and
                    // the routing: its interrupt left the (level) line up
                    // with nobody to read the ISR, and while it stays up no
                    // later notification raises a new one. Reading the ISR
                    // lowers it; the loop polls the rings anyway.
                    if let Some(isr) = ISR.get() {
                        let _ = isr.read::<u8>(0);
                    }
                    Some(line)
                }
                Err(error) => {
                    println!("net: irq {}: {} (polling on the timer)", line, error);
                    None
                }
            }
        }
        _ => None,
    };
    println!(
        "net: virtio-net at {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} irq {} {}",
        bdf,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        irq.map_or(String::from("none"), |i| format!("{i}")),
        match ip {
            IpMode::Dhcp => String::from("dhcp"),
            IpMode::Static { address, .. } => format!("static {address}"),
        }
    );
    // Give DHCP a moment before the shell starts, so the address is known
    // (and printed) at boot instead of in the middle of someone's command
    // output. QEMU's user network answers in milliseconds.
    let deadline = time::now_ms() + DHCP_WAIT_MS;
    while stack.ipv4().is_none() && time::now_ms() < deadline {
        stack.poll(time::now_ms());
        stack.device_mut().end_poll();
        core::hint::spin_loop();
    }
    let announced = stack.ipv4();
    match announced {
        Some(address) => println!("net: address {}", address),
        None => println!("net: no address yet (DHCP continues in the background)"),
    }
    *NET.lock() = Some(Net {
        stack,
        bdf,
        irq,
        announced,
        status_register: status_register.and_then(|address| register_region(address, 2)),
    });
}

/// Adds a TCP service (e.g. the NBD server) to the running stack.
#[allow(dead_code)] // called by the NBD wiring (kernel/src/nbd.rs)
pub fn add_listener(listener: Box<dyn PortListener + Send>) -> Result<(), String> {
    match NET.lock().as_mut() {
        Some(net) => net.stack.add_listener(listener).map_err(|e| format!("{e}")),
        None => Err(String::from("no network")),
    }
}

/// The `len` bytes of device registers at `address` (inside a BAR that
/// `PciTransport::new` already mapped), as a checked handle.
fn register_region(address: u64, len: u64) -> Option<MmioRegion> {
    let end = address.checked_add(len)?;
    mmio::map(PhysRange {
        start: address,
        end,
    })
    .ok()
}

fn link_up(status_register: Option<&MmioRegion>) -> bool {
    match status_register {
        // `status` is a read-only 16-bit field (bit 0 = VIRTIO_NET_S_LINK_UP).
        Some(register) => register.read::<u16>(0) & 1 != 0,
        None => true,
    }
}

/// Runs the network once: `did_work` when it did work (call again before
/// halting), `next_poll_ms` when it must run again without an interrupt
/// (smoltcp's timers, the services' deadlines; the event loop arms its
/// one-shot timer for it).
pub fn poll() -> PollOutcome {
    let mut guard = NET.lock();
    let Some(net) = guard.as_mut() else {
        return PollOutcome {
            did_work: false,
            next_poll_ms: None,
        };
    };
    POLLS.fetch_add(1, Ordering::Relaxed);
    // NAPI-style: no NIC interrupts while the loop keeps polling.
    net.stack.device_mut().interrupts_off();
    let now_ms = time::now_ms();
    // Before the poll, whose routes read the copy: the loop is tickless,
    // so the last poll may be long ago.
    refresh_stats(&net.stack, now_ms);
    let outcome = net.stack.poll(now_ms);
    net.stack.device_mut().end_poll();
    let address = net.stack.ipv4();
    if address != net.announced {
        match address {
            Some(address) => println!("net: address {}", address),
            None => println!("net: address lost"),
        }
        net.announced = address;
    }
    let mut next_poll_ms = outcome.next_poll_ms;
    if net.irq.is_none() {
        let fallback = now_ms + NO_IRQ_POLL_MS;
        next_poll_ms = Some(next_poll_ms.map_or(fallback, |at| at.min(fallback)));
    }
    PollOutcome {
        // Before the loop may halt, interrupts go back on and the rings are
        // checked once more: a frame that arrived before the device saw that
        // raised no interrupt.
        did_work: outcome.did_work
            || net.stack.device().has_rx()
            || net.stack.device_mut().interrupts_on(),
        next_poll_ms,
    }
}

/// Shell commands of this module.
pub const COMMANDS: &[Command] = &[Command {
    name: "net",
    usage: "",
    help: "network status: MAC, address, link, counters, per port: connection limits, counts and refusals by reason",
    run: net_command,
}];

fn net_command(_: &mut Context, args: &[&str]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(String::from("usage: net"));
    }
    let mut guard = NET.lock();
    let Some(net) = guard.as_mut() else {
        return Err(String::from("no network device"));
    };
    let up = link_up(net.status_register.as_ref());
    net.stack.set_link_up(up);
    let driver = net.stack.device().counters();
    let counters = net.stack.counters_mut();
    counters.rx_errors = driver.rx_errors;
    counters.tx_errors = driver.tx_errors;
    let (rx_stopped, tx_stopped) = net.stack.device().stopped();
    let stopped = match (rx_stopped, tx_stopped) {
        (false, false) => "",
        (true, false) => " (receive queue stopped: the device reported a buffer it was not given)",
        (false, true) => " (transmit queue stopped: the device reported a buffer it was not given)",
        (true, true) => " (both queues stopped: the device reported buffers it was not given)",
    };
    println!(
        "virtio-net at {} irq {} ({} interrupts), {} rx buffers posted, {} bad used-ring tokens{}",
        net.bdf,
        net.irq.map_or(String::from("none"), |i| format!("{i}")),
        INTERRUPTS.load(Ordering::Relaxed),
        net.stack.device().rx_posted(),
        driver.bad_tokens,
        stopped
    );
    // One line of key=value pairs (the nicperf measurement parses it).
    // A busy poll moved at least one frame that way; frames per busy poll
    // is frames / polls of that direction.
    println!(
        "nic counters: interrupts={} rx_notifies={} tx_notifies={} notify_us={} polls={} rx_frames={} rx_polls={} tx_frames={} tx_polls={}",
        INTERRUPTS.load(Ordering::Relaxed),
        driver.rx_notifies,
        driver.tx_notifies,
        driver.notify_ns / 1000,
        POLLS.load(Ordering::Relaxed),
        driver.rx_frames,
        driver.rx_polls,
        driver.tx_submitted,
        driver.tx_polls,
    );
    let offloads = net.stack.device().offloads();
    let on = |on: bool| if on { "on" } else { "off" };
    println!(
        "nic offloads: mtu={} device_mtu={} csum={} guest_csum={} tx_csum_offloaded={} rx_csum_trusted={} rx_csum_bad={}",
        net.stack.device().mtu(),
        if offloads.max_mtu == 0 { String::from("none") } else { format!("{}", offloads.max_mtu) },
        on(offloads.csum),
        on(offloads.guest_csum),
        driver.tx_offloaded_checksums,
        driver.rx_trusted_checksums,
        driver.rx_bad_checksums,
    );
    crate::print!("{}", net.stack.status());
    Ok(())
}
