//! Who may use which export: the `allow=` rules
//! ([`daxbox_bootconfig::allow`]) applied to the exports there are, and the
//! refusals counted by reason and client address.
//!
//! [`Access::check`] decides (client address, protocol, device, file name)
//! → [`Decision`]: the first rule whose clients contain the address, whose
//! protocol matches and whose exports cover the export decides; no rule
//! denies. With no rules at all everyone may use everything (the
//! behaviour before allow-lists; the kernel warns at boot). A protocol
//! whose rules could not be parsed is not served at all (the kernel does
//! not open its listener); [`Access::check`] denies it too.
//!
//! An export is named by its device and, for a file, its file name: a
//! rule `pmemN` or `pmemN:` covers every export of the device (its raw
//! export or every file on it), `pmemN:NAME` the file `NAME` on it, a bare
//! `NAME` the file that the export name `NAME` opens (the first device
//! with a file of that name), `*` everything. For the object API a device
//! is a bucket and a file an object: `check(addr, Protocol::Http,
//! "pmem1", Some("photo.jpg"), ...)`.
//!
//! NBD: the storage backend asks on every `open` (INFO, GO, EXPORT_NAME,
//! meta-context): a denial is `NBD_REP_ERR_POLICY` and is counted; a
//! read-only grant makes the export read-only for that connection (the
//! `readonly=` rules still apply: read-only wins), re-checked before every
//! write; `NBD_OPT_LIST` shows a client only what it may open. A name that
//! opens nothing is "no such export" only to a client some NBD rule
//! admits; anyone else is refused without learning which names exist.
//!
//! Bounds: the rules are at most `daxbox_bootconfig::allow::MAX_RULES` (64)
//! of at most 16 address blocks; refusals are counted for at most
//! [`MAX_COUNTED_ADDRESSES`] client addresses, the rest together as
//! "other".

use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use daxbox_bootconfig::ReadOnlyTarget;
pub use daxbox_bootconfig::{AllowList, AllowMode, Protocol};

/// Who is asking: the client's address (when the transport told it) and,
/// over mutual TLS, the common name of its verified certificate, which
/// `cn:` rules match. `Option<IpAddr>` converts to a client without a
/// certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Client<'a> {
    /// The client's address.
    pub address: Option<IpAddr>,
    /// The common name of the client certificate that verified against
    /// `tls_client_ca` (never an unverified one).
    pub cn: Option<&'a str>,
}

impl core::fmt::Display for Client<'_> {
    /// How a refusal names the client: its address, and the certificate
    /// name when a verified one was given (`198.18.0.5, certificate CN
    /// alice`), so the text says which of the two the rules did not match.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.address {
            Some(address) => write!(f, "address {address}")?,
            None => f.write_str("address unknown")?,
        }
        if let Some(cn) = self.cn {
            write!(f, ", certificate CN {cn}")?;
        }
        Ok(())
    }
}

impl From<Option<IpAddr>> for Client<'_> {
    fn from(address: Option<IpAddr>) -> Self {
        Client { address, cn: None }
    }
}

/// Client addresses whose refusals are counted one by one; further
/// addresses are counted together as "other".
pub const MAX_COUNTED_ADDRESSES: usize = 64;

/// What a client may do with an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: not listed, not opened.
    Deny,
    /// Read; writes get `EPERM`.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The allow-list does not let it use the export (or the protocol).
    Policy,
    /// A write to an export that is read-only for it.
    ReadOnlyWrite,
}

/// Refusals of one client address (or of every address beyond the table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Refused by the allow-list (NBD options, HTTP `403`).
    pub policy: u64,
    /// Writes refused as read-only (`EPERM`).
    pub read_only_write: u64,
}

impl Counts {
    fn add(&mut self, reason: Reason, n: u64) {
        let slot = match reason {
            Reason::Policy => &mut self.policy,
            Reason::ReadOnlyWrite => &mut self.read_only_write,
        };
        *slot = slot.saturating_add(n);
    }
}

/// Refusal counts, for the shell's `nbd` command and for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessStats {
    /// Every refusal.
    pub total: Counts,
    /// By client address, first refused first; at most
    /// [`MAX_COUNTED_ADDRESSES`]. `None` is a client whose address the
    /// transport did not tell.
    pub by_address: Vec<(Option<IpAddr>, Counts)>,
    /// Addresses beyond the table.
    pub other: Counts,
}

/// The allow-list and its refusal counts.
#[derive(Debug, Default)]
pub struct Access {
    list: AllowList,
    stats: AccessStats,
}

/// The IPv4 address the rules match, if it is one (the network is IPv4
/// only; an IPv4-mapped IPv6 address counts as IPv4).
fn ipv4(address: Option<IpAddr>) -> Option<[u8; 4]> {
    match address? {
        IpAddr::V4(v4) => Some(v4.octets()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.octets()),
    }
}

impl Access {
    /// No rules, nothing counted (usable in a `static`).
    pub const fn new() -> Self {
        Access {
            list: AllowList {
                rules: Vec::new(),
                failed: Vec::new(),
            },
            stats: AccessStats {
                total: Counts {
                    policy: 0,
                    read_only_write: 0,
                },
                by_address: Vec::new(),
                other: Counts {
                    policy: 0,
                    read_only_write: 0,
                },
            },
        }
    }

    /// Sets the rules.
    pub fn set_rules(&mut self, list: AllowList) {
        self.list = list;
    }

    /// The rules.
    pub fn rules(&self) -> &AllowList {
        &self.list
    }

    /// No rules: every client may use every export.
    pub fn is_open(&self) -> bool {
        self.list.is_open()
    }

    /// Whether some rule lets `client` use `protocol` at all: what the
    /// HTTP server checks before every route but `/healthz`.
    pub fn admits<'c>(&self, client: impl Into<Client<'c>>, protocol: Protocol) -> bool {
        let client = client.into();
        if self.list.failure(protocol).is_some() {
            return false;
        }
        if self.list.is_open() {
            return true;
        }
        self.list.admits(ipv4(client.address), client.cn, protocol)
    }

    /// What `client` may do over `protocol` with the export on `device`
    /// that is file `name` (`None`: the device's raw export, or the bucket
    /// itself for HTTP). `bare_opens`: the bare name `name` opens this
    /// very file (it is the first device with a file of that name), so a
    /// rule naming `name` without a device covers it.
    pub fn check<'c>(
        &self,
        client: impl Into<Client<'c>>,
        protocol: Protocol,
        device: &str,
        name: Option<&str>,
        bare_opens: bool,
    ) -> Decision {
        let client = client.into();
        if self.list.failure(protocol).is_some() {
            return Decision::Deny;
        }
        if self.list.is_open() {
            return Decision::ReadWrite;
        }
        let address = ipv4(client.address);
        let covers = |target: &ReadOnlyTarget| match target {
            ReadOnlyTarget::All => true,
            ReadOnlyTarget::Device { device: d, .. } => d == device,
            ReadOnlyTarget::File {
                device: Some(d),
                name: n,
            } => d == device && name == Some(n.as_str()),
            ReadOnlyTarget::File {
                device: None,
                name: n,
            } => bare_opens && name == Some(n.as_str()),
        };
        match self.list.decide(address, client.cn, protocol, covers) {
            None => Decision::Deny,
            Some(AllowMode::ReadOnly) => Decision::ReadOnly,
            Some(AllowMode::ReadWrite) => Decision::ReadWrite,
        }
    }

    /// Whether some rule lets `client` use something on `device` over
    /// `protocol` (the device itself, every file, or one file on it:
    /// `bare_on(name)` says whether the bare name `name` opens a file on
    /// `device`). The object API shows a client a bucket, and lets it list
    /// it, when this holds; each key is then decided by [`Self::check`].
    pub fn uses_any<'c>(
        &self,
        client: impl Into<Client<'c>>,
        protocol: Protocol,
        device: &str,
        mut bare_on: impl FnMut(&str) -> bool,
    ) -> bool {
        let client = client.into();
        if self.list.failure(protocol).is_some() {
            return false;
        }
        if self.list.is_open() {
            return true;
        }
        let address = ipv4(client.address);
        self.list.rules.iter().any(|rule| {
            rule.applies(address, client.cn, protocol)
                && match &rule.exports {
                    ReadOnlyTarget::All => true,
                    ReadOnlyTarget::Device { device: d, .. } => d == device,
                    ReadOnlyTarget::File {
                        device: Some(d), ..
                    } => d == device,
                    ReadOnlyTarget::File { device: None, name } => bare_on(name),
                }
        })
    }

    /// Counts `n` refusals of `address` for `reason`.
    pub fn count(&mut self, address: Option<IpAddr>, reason: Reason, n: u64) {
        if n == 0 {
            return;
        }
        let stats = &mut self.stats;
        stats.total.add(reason, n);
        if let Some((_, counts)) = stats.by_address.iter_mut().find(|(a, _)| *a == address) {
            counts.add(reason, n);
        } else if stats.by_address.len() < MAX_COUNTED_ADDRESSES {
            let mut counts = Counts::default();
            counts.add(reason, n);
            stats.by_address.push((address, counts));
        } else {
            stats.other.add(reason, n);
        }
    }

    /// The refusal counts.
    pub fn stats(&self) -> &AccessStats {
        &self.stats
    }

    /// Lines for the boot console and `nbd`: the rules' state (open with a
    /// warning, or failing closed with the reason) and the refusal counts.
    pub fn report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.list.is_open() {
            lines.push("allow: no rules; every export is open to every client".into());
        }
        for (protocols, why) in &self.list.failed {
            let which = match (protocols.nbd, protocols.http) {
                (true, false) => "nbd",
                (false, true) => "http",
                _ => "nbd and http",
            };
            lines.push(alloc::format!(
                "allow: {which} not served (failing closed): {why}"
            ));
        }
        if !self.list.rules.is_empty() {
            lines.push(alloc::format!(
                "allow: {} rule(s), first match decides",
                self.list.rules.len()
            ));
        }
        let s = &self.stats;
        if self.list.is_open() && s.total == Counts::default() {
            return lines;
        }
        lines.push(alloc::format!(
            "refused: {} by policy, {} read-only writes",
            s.total.policy,
            s.total.read_only_write
        ));
        for (address, counts) in &s.by_address {
            let who = match address {
                Some(a) => alloc::format!("{a}"),
                None => String::from("?"),
            };
            lines.push(alloc::format!(
                "  {who}: {} policy, {} read-only write",
                counts.policy,
                counts.read_only_write
            ));
        }
        if s.other != Counts::default() {
            lines.push(alloc::format!(
                "  other addresses: {} policy, {} read-only write",
                s.other.policy,
                s.other.read_only_write
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_address_and_the_certificate_name() {
        let address = Some("198.18.0.5".parse().unwrap());
        let by_address = Client { address, cn: None };
        assert_eq!(by_address.to_string(), "address 198.18.0.5");
        let by_name = Client {
            address,
            cn: Some("alice"),
        };
        assert_eq!(
            by_name.to_string(),
            "address 198.18.0.5, certificate CN alice"
        );
    }

    fn access(text: &str) -> Access {
        let (config, _) = daxbox_bootconfig::parse(text);
        let mut access = Access::new();
        access.set_rules(config.allow);
        access
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn decisions() {
        let a = access(
            "allow=198.18.0.11 * ro nbd\n\
             allow=198.18.0.10 disk1\n\
             allow=198.18.0.10 pmem1:\n\
             allow=198.18.0.12 pmem0:x http\n",
        );
        let nbd = Protocol::Nbd;
        let http = Protocol::Http;
        let ten = ip("198.18.0.10");
        assert_eq!(
            a.check(ten, nbd, "pmem0", Some("disk1"), true),
            Decision::ReadWrite
        );
        // A bare rule covers only what the bare name opens.
        assert_eq!(
            a.check(ten, nbd, "pmem2", Some("disk1"), false),
            Decision::Deny
        );
        assert_eq!(
            a.check(ten, nbd, "pmem1", Some("any"), false),
            Decision::ReadWrite
        );
        assert_eq!(a.check(ten, nbd, "pmem1", None, false), Decision::ReadWrite);
        assert_eq!(
            a.check(ten, nbd, "pmem0", Some("disk2"), true),
            Decision::Deny
        );
        assert_eq!(
            a.check(ten, http, "pmem1", Some("o"), false),
            Decision::ReadWrite
        );
        let eleven = ip("198.18.0.11");
        assert_eq!(
            a.check(eleven, nbd, "pmem0", Some("disk1"), true),
            Decision::ReadOnly
        );
        assert_eq!(
            a.check(eleven, nbd, "pmem2", None, false),
            Decision::ReadOnly
        );
        assert_eq!(
            a.check(eleven, http, "pmem0", Some("disk1"), true),
            Decision::Deny
        );
        assert!(!a.admits(eleven, http));
        let twelve = ip("198.18.0.12");
        assert_eq!(
            a.check(twelve, http, "pmem0", Some("x"), true),
            Decision::ReadWrite
        );
        assert_eq!(
            a.check(twelve, http, "pmem0", Some("y"), true),
            Decision::Deny
        );
        assert!(a.admits(twelve, http) && !a.admits(twelve, nbd));
        // Unknown, unlisted and IPv6 addresses are denied; IPv4-mapped
        // IPv6 is IPv4.
        assert_eq!(
            a.check(None, nbd, "pmem0", Some("disk1"), true),
            Decision::Deny
        );
        assert_eq!(
            a.check(ip("10.0.0.1"), nbd, "pmem0", None, false),
            Decision::Deny
        );
        assert_eq!(
            a.check(ip("fe80::1"), nbd, "pmem0", None, false),
            Decision::Deny
        );
        assert_eq!(
            a.check(ip("::ffff:198.18.0.11"), nbd, "pmem0", None, false),
            Decision::ReadOnly
        );
    }

    #[test]
    fn certificate_names_decide_like_addresses() {
        let text =
            "tls=on\ntls_client_ca=-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                    allow=cn:backup-1 pmem0:disk1 rw\n\
                    allow=cn:reader pmem0: ro\n\
                    allow=198.18.0.10 * ro nbd\n";
        let a = access(text);
        assert_eq!(a.rules().rules.len(), 3, "{:?}", a.rules());
        let nbd = Protocol::Nbd;
        let backup = Client {
            address: ip("10.0.0.1"),
            cn: Some("backup-1"),
        };
        assert_eq!(
            a.check(backup, nbd, "pmem0", Some("disk1"), true),
            Decision::ReadWrite
        );
        assert_eq!(
            a.check(backup, Protocol::Http, "pmem0", Some("disk1"), true),
            Decision::ReadWrite
        );
        assert_eq!(
            a.check(backup, nbd, "pmem0", Some("disk2"), true),
            Decision::Deny
        );
        let reader = Client {
            address: None,
            cn: Some("reader"),
        };
        assert_eq!(
            a.check(reader, nbd, "pmem0", Some("disk2"), true),
            Decision::ReadOnly
        );
        assert!(a.uses_any(reader, Protocol::Http, "pmem0", |_| false));
        assert!(!a.uses_any(reader, Protocol::Http, "pmem1", |_| false));
        // Another name, no certificate, the same name without a verified
        // certificate (the address alone): denied.
        for other in [
            Client {
                address: ip("10.0.0.1"),
                cn: Some("backup-2"),
            },
            Client {
                address: ip("10.0.0.1"),
                cn: None,
            },
        ] {
            assert_eq!(
                a.check(other, nbd, "pmem0", Some("disk1"), true),
                Decision::Deny
            );
            assert!(!a.admits(other, nbd));
        }
        // An address rule still matches a client with a certificate.
        let both = Client {
            address: ip("198.18.0.10"),
            cn: Some("nobody"),
        };
        assert_eq!(a.check(both, nbd, "pmem1", None, false), Decision::ReadOnly);
        assert!(a.admits(backup, Protocol::Http));
        // Without tls_client_ca the cn: rules fail their protocols closed.
        let closed = access("tls=on\nallow=cn:backup-1 * rw nbd\n");
        assert_eq!(
            closed.check(backup, nbd, "pmem0", Some("disk1"), true),
            Decision::Deny
        );
        assert!(closed.report()[0].starts_with("allow: nbd not served (failing closed)"));
    }

    #[test]
    fn open_and_failed() {
        let open = access("");
        assert!(open.is_open());
        assert_eq!(
            open.check(None, Protocol::Nbd, "pmem0", Some("a"), true),
            Decision::ReadWrite
        );
        assert!(open.admits(None, Protocol::Http));
        assert_eq!(
            open.report()[0],
            "allow: no rules; every export is open to every client"
        );
        let failed = access("allow=0.0.0.0/0 *\nallow=nonsense * nbd\n");
        let any = ip("1.2.3.4");
        assert_eq!(
            failed.check(any, Protocol::Nbd, "pmem0", None, false),
            Decision::Deny
        );
        assert!(!failed.admits(any, Protocol::Nbd));
        assert_eq!(
            failed.check(any, Protocol::Http, "pmem0", None, false),
            Decision::ReadWrite
        );
        assert_eq!(
            failed.report()[0],
            "allow: nbd not served (failing closed): bootconfig line 2: allow: 'nonsense' is \
             not an IPv4 address or block (A.B.C.D or A.B.C.D/N)"
        );
    }

    #[test]
    fn refusals_are_counted_in_a_bounded_table() {
        let mut a = access("allow=10.0.0.1 *\n");
        for i in 0..MAX_COUNTED_ADDRESSES + 10 {
            let address = ip(&alloc::format!("10.1.{}.{}", i / 256, i % 256));
            a.count(address, Reason::Policy, 1);
            a.count(address, Reason::ReadOnlyWrite, 2);
        }
        a.count(ip("10.1.0.0"), Reason::Policy, 5);
        a.count(None, Reason::Policy, 0);
        let s = a.stats();
        assert_eq!(s.by_address.len(), MAX_COUNTED_ADDRESSES);
        assert_eq!(
            s.by_address[0].1,
            Counts {
                policy: 6,
                read_only_write: 2
            }
        );
        assert_eq!(
            s.other,
            Counts {
                policy: 10,
                read_only_write: 20
            }
        );
        assert_eq!(
            s.total,
            Counts {
                policy: MAX_COUNTED_ADDRESSES as u64 + 15,
                read_only_write: 2 * (MAX_COUNTED_ADDRESSES as u64 + 10)
            }
        );
        let report = a.report();
        assert_eq!(report[0], "allow: 1 rule(s), first match decides");
        assert_eq!(report[1], "refused: 79 by policy, 148 read-only writes");
        assert_eq!(report[2], "  10.1.0.0: 6 policy, 2 read-only write");
        assert_eq!(
            report.last().unwrap(),
            "  other addresses: 10 policy, 20 read-only write"
        );
    }
}
