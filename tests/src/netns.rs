//! Network namespaces for tests over tap networking (needs root).
//!
//! A [`Netns`] is made by the test and deleted when dropped, also when the
//! test fails; deleting a namespace removes every device in it (tap,
//! bridge, veth ends). QEMU is started inside one through a wrapper script
//! ([`Netns::run_qemu_inside`]), so its tap device lives there and never
//! touches the host's network. Addresses come from 198.18.0.0/15 (set
//! aside for benchmarks, RFC 2544).

use std::path::Path;
use std::process::Command;

use crate::QemuOptions;

/// The host side of a tap network: `TAP_HOST_ADDRESS/TAP_PREFIX` on the
/// tap device inside the namespace (198.18.0.0/15, RFC 2544).
pub const TAP_HOST_ADDRESS: &str = "198.18.0.1";
/// The appliance's static address on a tap network (boot config
/// `ip=198.18.0.2/24`, see [`tap_boot_config_line`]).
pub const TAP_GUEST_ADDRESS: &str = "198.18.0.2";
/// The prefix length of the tap network.
pub const TAP_PREFIX: u8 = 24;

/// Whether this process runs as root (effective uid 0 in
/// `/proc/self/status`), which namespaces and tap devices need.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse::<u32>().ok()
        })
        == Some(0)
}

/// The boot-config line giving the appliance [`TAP_GUEST_ADDRESS`].
pub fn tap_boot_config_line() -> String {
    format!("ip={TAP_GUEST_ADDRESS}/{TAP_PREFIX}\n")
}

/// The `-netdev` of the NIC on tap device `tap` (`id=n0`): no helper
/// scripts (the device exists already), no vhost (the tests measure
/// QEMU's own virtio-net), and the virtio-net header on so the guest can
/// negotiate checksum offload and segmentation.
pub fn tap_netdev(tap: &str) -> String {
    format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off,vnet_hdr=on")
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name (`ip netns exec NAME ...`).
    pub name: String,
}

impl Netns {
    /// Makes namespace `name` (deleting a leftover of a killed run first)
    /// with its loopback up. Panics when `ip netns add` fails (not root).
    pub fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let netns = Netns {
            name: name.to_string(),
        };
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip runs");
        assert!(status.success(), "ip netns add {name} (needs root)");
        netns.must(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    /// Runs `args` inside the namespace; returns (success, stdout + stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec runs");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// [`Netns::run`] that must succeed; returns its output.
    pub fn must(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "in {}: {args:?}: {text}", self.name);
        text
    }

    /// Makes namespace `name` (see [`Netns::create`]) with tap device
    /// `tap` up and holding [`TAP_HOST_ADDRESS`]/[`TAP_PREFIX`]: the
    /// network of `cargo xtask run --net tap` and `bench nbd --net tap`.
    pub fn with_tap(name: &str, tap: &str) -> Netns {
        let netns = Netns::create(name);
        netns.must(&["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]);
        let address = format!("{TAP_HOST_ADDRESS}/{TAP_PREFIX}");
        netns.must(&["ip", "addr", "add", &address, "dev", tap]);
        netns.must(&["ip", "link", "set", tap, "up"]);
        netns
    }

    /// Makes `options` start QEMU inside this namespace, through a wrapper
    /// script written to `wrapper_dir` (not the run folder, which a boot
    /// empties), with the NIC on tap device `tap`.
    pub fn run_qemu_inside(&self, options: &mut QemuOptions, wrapper_dir: &Path, tap: &str) {
        std::fs::create_dir_all(wrapper_dir).expect("wrapper folder");
        let wrapper = wrapper_dir.join("qemu-in-netns.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
                self.name, options.qemu
            ),
        )
        .expect("writing the QEMU wrapper");
        let status = Command::new("chmod")
            .args(["+x", wrapper.to_str().expect("UTF-8 folder")])
            .status()
            .expect("chmod runs");
        assert!(status.success());
        options.qemu = wrapper.to_string_lossy().into_owned();
        options.netdev = Some(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    }

    /// [`Netns::run_qemu_inside`] with the NIC on [`tap_netdev`] (vhost
    /// off, `vnet_hdr` on), as `cargo xtask run --net tap` starts it.
    pub fn run_qemu_inside_tap(&self, options: &mut QemuOptions, wrapper_dir: &Path, tap: &str) {
        self.run_qemu_inside(options, wrapper_dir, tap);
        options.netdev = Some(tap_netdev(tap));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
