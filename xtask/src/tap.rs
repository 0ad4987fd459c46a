//! Tap networking for `cargo xtask run --net tap` and `cargo xtask bench
//! nbd --net tap`: a network namespace made for the run, holding one tap
//! device with the host address 198.18.0.1/24 (198.18.0.0/15 is set aside
//! for benchmarks, RFC 2544; no other range is ever used). QEMU runs inside
//! the namespace (`ip netns exec`) with its NIC on the tap device
//! (`daxbox_tests::netns::tap_netdev`: vhost off, `vnet_hdr` on), the
//! appliance gets the static address 198.18.0.2/24 from its boot config,
//! and the clients run inside the namespace too. The host's own network is
//! never touched.
//!
//! Clean-up: [`TapNet`] deletes the namespace when dropped (also when a
//! step fails), which removes the tap device with it. Ctrl-C ends xtask
//! without running destructors, so each [`TapNet`] also starts a small
//! watcher (`sh`, ignoring SIGINT/SIGHUP/SIGTERM) that deletes the
//! namespace once xtask's PID is gone; the normal path kills the watcher by
//! its PID after deleting the namespace itself. A namespace of an xtask
//! that was SIGKILLed together with its watcher is deleted by the next
//! run ([`stale_namespaces`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use daxbox_tests::netns::{tap_netdev, TAP_GUEST_ADDRESS, TAP_HOST_ADDRESS, TAP_PREFIX};

use crate::XtaskError;

/// The tap device's name inside the namespace.
pub const TAP: &str = "tap0";
/// The prefix of every namespace xtask makes (`daxbox-xtask-PID-PURPOSE`).
const PREFIX: &str = "daxbox-xtask-";

/// What a user without root sees.
pub const NEEDS_ROOT: &str =
    "tap networking needs root (ip netns, tap devices); run as root or use --net user";

/// Fails with [`NEEDS_ROOT`] unless this process runs as root.
pub fn require_root() -> Result<(), XtaskError> {
    if daxbox_tests::netns::is_root() {
        Ok(())
    } else {
        Err(XtaskError::Setup(NEEDS_ROOT.into()))
    }
}

/// The namespaces in `ip netns list` output that an xtask made and whose
/// process is gone (`/proc/PID` missing, as `alive` says).
fn stale_namespaces(listing: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let pid: u32 = name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()?;
            (!alive(pid)).then(|| name.to_string())
        })
        .collect()
}

/// Runs `ip ARGS`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<String, XtaskError> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| XtaskError::Command {
            command: format!("ip {}", args.join(" ")),
            problem: format!("{error} (install iproute2)"),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(XtaskError::Command {
            command: format!("ip {}", args.join(" ")),
            problem: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// A network namespace with tap device [`TAP`] at 198.18.0.1/24, deleted
/// when dropped.
pub struct TapNet {
    name: String,
    watcher: Option<Child>,
}

impl TapNet {
    /// Makes the namespace `daxbox-xtask-PID-PURPOSE` and its tap device,
    /// with MTU `mtu` when given (to match a guest offered a larger one,
    /// e.g. `-global virtio-net-pci.host_mtu=9000`). Needs root
    /// ([`require_root`]).
    pub fn create(purpose: &str, mtu: Option<u32>) -> Result<TapNet, XtaskError> {
        require_root()?;
        if let Ok(listing) = ip(&["netns", "list"]) {
            let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
            for stale in stale_namespaces(&listing, alive) {
                println!("    removing namespace {stale} left by an ended xtask");
                let _ = ip(&["netns", "del", &stale]);
            }
        }
        let name = format!("{PREFIX}{}-{purpose}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let mut net = TapNet {
            name,
            watcher: None,
        };
        net.watcher = Some(net.start_watcher()?);
        let address = format!("{TAP_HOST_ADDRESS}/{TAP_PREFIX}");
        let n = net.name.clone();
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &n, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr",
        ])?;
        ip(&["-n", &n, "addr", "add", &address, "dev", TAP])?;
        if let Some(mtu) = mtu {
            ip(&["-n", &n, "link", "set", TAP, "mtu", &mtu.to_string()])?;
        }
        ip(&["-n", &n, "link", "set", TAP, "up"])?;
        crate::step(&format!(
            "network namespace {n}: {TAP} {address}, appliance {TAP_GUEST_ADDRESS}"
        ));
        Ok(net)
    }

    /// A shell that deletes the namespace once this process is gone (also
    /// after Ctrl-C, which it ignores).
    fn start_watcher(&self) -> Result<Child, XtaskError> {
        Command::new("sh")
            .arg("-c")
            .arg(
                "trap '' INT HUP TERM; while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; \
                 ip netns del \"$1\" 2>/dev/null",
            )
            .arg(std::process::id().to_string())
            .arg(&self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| XtaskError::Command {
                command: "sh (namespace watcher)".into(),
                problem: error.to_string(),
            })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME PROGRAM`: a command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// The `-netdev` of the NIC (see the module comment).
    pub fn netdev(&self) -> String {
        tap_netdev(TAP)
    }

    /// Writes `DIR/qemu-in-netns.sh`, which runs `qemu` (a program) inside
    /// the namespace with `exec` all the way, so its PID is QEMU's.
    pub fn qemu_wrapper(&self, dir: &Path, qemu: &str) -> Result<PathBuf, XtaskError> {
        std::fs::create_dir_all(dir)
            .map_err(|error| XtaskError::Io(format!("{}: {error}", dir.display())))?;
        let wrapper = dir.join("qemu-in-netns.sh");
        let text = format!(
            "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
            self.name,
            daxbox_tests::shell_quote(qemu, &[])
        );
        std::fs::write(&wrapper, text)
            .map_err(|error| XtaskError::Io(format!("{}: {error}", wrapper.display())))?;
        crate::run_checked(Command::new("chmod").arg("+x").arg(&wrapper))?;
        Ok(wrapper)
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        // Deleting the namespace removes the tap device in it.
        let _ = ip(&["netns", "del", &self.name]);
        if let Some(mut watcher) = self.watcher.take() {
            // SIGKILL to the watcher's PID only.
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaces_of_ended_xtasks_are_stale() {
        let listing = "daxbox-xtask-100-bench (id: 3)\n\
                       daxbox-xtask-200-run\n\
                       daxbox-allow-lan-100\n\
                       daxbox-xtask-x-run\n\
                       other\n";
        let alive = |pid: u32| pid == 200;
        assert_eq!(stale_namespaces(listing, alive), ["daxbox-xtask-100-bench"]);
        assert!(stale_namespaces("", alive).is_empty());
    }
}
