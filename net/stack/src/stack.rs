//! The interface, its address configuration and the poll loop.

use crate::service::{ListenerStats, PortListener};
use crate::{Counters, CountingDevice};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::phy::Device;
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// How the interface gets its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpMode {
    /// DHCPv4 (RFC 2131), the default.
    Dhcp,
    /// A fixed address from the boot config (`ip=`, `gateway=`).
    Static {
        /// Address and prefix length.
        address: Ipv4Cidr,
        /// Default router.
        gateway: Option<Ipv4Address>,
    },
}

/// Interface configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The NIC's MAC address.
    pub mac: [u8; 6],
    /// Address configuration.
    pub ip: IpMode,
    /// Seed for TCP initial sequence numbers and DHCP transaction IDs;
    /// the kernel passes something unpredictable (e.g. TSC).
    pub random_seed: u64,
}

/// Errors from [`NetStack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// A listener already serves this port.
    PortInUse(u16),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PortInUse(port) => write!(f, "TCP port {port} already has a listener"),
        }
    }
}

/// Result of one [`NetStack::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollOutcome {
    /// Packets moved or a socket/service made progress: poll again before
    /// halting, there may be more.
    pub did_work: bool,
    /// Absolute time (ms) by which `poll` must run again even without an
    /// interrupt (smoltcp timers, service deadlines); `None` = only on I/O.
    pub next_poll_ms: Option<u64>,
}

/// What the shell's `net` command shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetStatus {
    /// MAC address.
    pub mac: [u8; 6],
    /// Current IPv4 address, if configured.
    pub address: Option<Ipv4Cidr>,
    /// Default gateway.
    pub gateway: Option<Ipv4Address>,
    /// True when the address comes from DHCP.
    pub dhcp: bool,
    /// Link state as last reported by the driver.
    pub link_up: bool,
    /// Counters.
    pub counters: Counters,
    /// Per-port listener statistics.
    pub listeners: Vec<ListenerStats>,
}

impl fmt::Display for NetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.mac;
        writeln!(
            f,
            "mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link {}",
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            if self.link_up { "up" } else { "down" }
        )?;
        let source = if self.dhcp { "dhcp" } else { "static" };
        match self.address {
            Some(address) => write!(f, "ipv4 {address} ({source})")?,
            None => write!(f, "ipv4 none ({source})")?,
        }
        match self.gateway {
            Some(gateway) => writeln!(f, " gateway {gateway}")?,
            None => writeln!(f, " gateway none")?,
        }
        writeln!(f, "{}", self.counters)?;
        for l in &self.listeners {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Frames taken from the device per round before services get a turn, so a
/// flood cannot starve the connections that drain the receive windows.
const INGRESS_BUDGET: usize = 64;
/// Rounds per `poll` call, so the kernel's shell and timers get a turn too.
const MAX_ROUNDS: usize = 8;

/// One interface with its sockets, address configuration and listeners.
pub struct NetStack<D: Device> {
    device: CountingDevice<D>,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    listeners: Vec<Box<dyn PortListener + Send>>,
    mac: [u8; 6],
    address: Option<Ipv4Cidr>,
    gateway: Option<Ipv4Address>,
    link_up: bool,
    counters: Counters,
}

fn instant(ms: u64) -> Instant {
    Instant::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl<D: Device> NetStack<D> {
    /// Brings up the interface on `device` at time `now_ms`.
    pub fn new(device: D, config: NetConfig, now_ms: u64) -> Self {
        let mut device = CountingDevice::new(device);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = config.random_seed;
        let iface = Interface::new(iface_config, &mut device, instant(now_ms));
        let mut stack = Self {
            device,
            iface,
            sockets: SocketSet::new(vec![]),
            dhcp: None,
            listeners: Vec::new(),
            mac: config.mac,
            address: None,
            gateway: None,
            link_up: true,
            counters: Counters::default(),
        };
        match config.ip {
            IpMode::Dhcp => {
                stack.dhcp = Some(stack.sockets.add(dhcpv4::Socket::new()));
            }
            IpMode::Static { address, gateway } => stack.set_ipv4(Some(address), gateway),
        }
        stack
    }

    fn set_ipv4(&mut self, address: Option<Ipv4Cidr>, gateway: Option<Ipv4Address>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(address) = address {
                // Capacity is IFACE_MAX_ADDR_COUNT (>= 1) and we just cleared it.
                let _ = addrs.push(IpCidr::Ipv4(address));
            }
        });
        let routes = self.iface.routes_mut();
        match gateway {
            Some(gateway) => {
                // Fails only when the route table is full; it holds one route.
                let _ = routes.add_default_ipv4_route(gateway);
            }
            None => {
                routes.remove_default_ipv4_route();
            }
        }
        self.address = address;
        self.gateway = gateway;
    }

    /// Adds a TCP listener and opens its listening sockets.
    pub fn add_listener(
        &mut self,
        mut listener: Box<dyn PortListener + Send>,
    ) -> Result<(), NetError> {
        if self.listeners.iter().any(|l| l.port() == listener.port()) {
            return Err(NetError::PortInUse(listener.port()));
        }
        listener.start(&mut self.sockets);
        self.listeners.push(listener);
        Ok(())
    }

    fn poll_dhcp(&mut self) -> bool {
        let Some(handle) = self.dhcp else {
            return false;
        };
        let change = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            None => return false,
            Some(dhcpv4::Event::Configured(config)) => Some((config.address, config.router)),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        match change {
            Some((address, router)) => {
                log::debug!("net: dhcp address {address} gateway {router:?}");
                self.set_ipv4(Some(address), router);
            }
            None => {
                if self.address.is_some() {
                    log::debug!("net: dhcp lease lost");
                }
                self.set_ipv4(None, None);
            }
        }
        true
    }

    /// Does all pending network work at time `now_ms`: receives frames,
    /// runs DHCP, moves service data, transmits. Bounded per call.
    pub fn poll(&mut self, now_ms: u64) -> PollOutcome {
        let now = instant(now_ms);
        let mut did_work = false;
        self.iface.poll_maintenance(now);
        // Bounded service work (a piece of a long NBD TRIM, say): one piece
        // per listener per poll, so the caller's other duties (the serial
        // shell) and every other connection get a turn between pieces.
        for listener in &mut self.listeners {
            did_work |= listener.step(now_ms);
        }
        for _ in 0..MAX_ROUNDS {
            let frames_before = self.device.frames();
            let mut work = false;
            for _ in 0..INGRESS_BUDGET {
                match self
                    .iface
                    .poll_ingress_single(now, &mut self.device, &mut self.sockets)
                {
                    PollIngressSingleResult::None => break,
                    PollIngressSingleResult::PacketProcessed => work = true,
                    PollIngressSingleResult::SocketStateChanged => {
                        work = true;
                        for listener in &mut self.listeners {
                            listener.refill(&mut self.sockets);
                        }
                    }
                }
            }
            work |= self.poll_dhcp();
            for listener in &mut self.listeners {
                work |= listener.poll(&mut self.sockets, now_ms, &mut self.counters);
            }
            // Egress is bounded by the sockets' data and the device's free
            // buffers; the cap is a backstop.
            for _ in 0..INGRESS_BUDGET {
                if self
                    .iface
                    .poll_egress(now, &mut self.device, &mut self.sockets)
                    == PollResult::None
                {
                    break;
                }
                work = true;
            }
            work |= self.device.frames() != frames_before;
            if !work {
                break;
            }
            did_work = true;
        }
        let smoltcp_at = self
            .iface
            .poll_at(now, &self.sockets)
            .map(|at| u64::try_from(at.total_millis()).unwrap_or(0).max(now_ms));
        let service_at = self
            .listeners
            .iter()
            .filter_map(|l| l.next_deadline())
            .min();
        let next_poll_ms = match (smoltcp_at, service_at) {
            _ if self.listeners.iter().any(|l| l.has_work()) => Some(now_ms),
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        PollOutcome {
            did_work,
            next_poll_ms,
        }
    }

    /// Current status for the shell.
    pub fn status(&self) -> NetStatus {
        let mut counters = self.counters;
        self.device.fill(&mut counters);
        NetStatus {
            mac: self.mac,
            address: self.address,
            gateway: self.gateway,
            dhcp: self.dhcp.is_some(),
            link_up: self.link_up,
            counters,
            listeners: self.listeners.iter().map(|l| l.stats()).collect(),
        }
    }

    /// The configured IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.address
    }

    /// Records the driver's link state.
    pub fn set_link_up(&mut self, up: bool) {
        self.link_up = up;
    }

    /// Driver-maintained counters (`rx_errors`, `tx_errors`); the packet
    /// counts are filled in from the device wrapper by [`Self::status`].
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The device.
    pub fn device(&self) -> &D {
        self.device.inner()
    }

    /// The device, mutably (e.g. to acknowledge interrupts).
    pub fn device_mut(&mut self) -> &mut D {
        self.device.inner_mut()
    }

    /// Interface and sockets, for extra sockets (clients, UDP) beside the listeners.
    pub fn interface_and_sockets(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets)
    }
}
