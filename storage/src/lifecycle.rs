//! The operator's lifecycle commands: `umount DEVICE [--force]`, `mount
//! DEVICE` and `grow DEVICE`, and what they and `truncate` share: which NBD
//! connections use a device or a file, and cutting them (`--force`).
//!
//! Nothing changes under a client without a word: `umount` and a shrinking
//! `truncate` refuse while an NBD connection has the device or file open,
//! naming the connections (`#ID ADDRESS:PORT (EXPORT)`); with `--force` the
//! connections are cut first. A cut connection is served no more from that
//! moment (the NBD service checks [`Storage::is_disconnecting`] before every
//! call into the engine) and is aborted at the service's next poll (its
//! deadline becomes 0), so the client sees its connection reset.
//!
//! `rm` and `mv` over a file do not refuse: a file NBD connections have
//! open stays theirs after its name is gone (each connection holds its
//! file, daxfs `open`/`close`; FORMAT.md "Orphans"), and the message says
//! whose it still is; `--force` on `rm` cuts them first, for the space now.
//!
//! `umount` marks the filesystem clean (daxfs `unmount`) and gives the
//! device back to the environment ([`Environment::give_back`]: in the
//! kernel its frames return to the device), so `pmem`, `blk` and `mkfs`
//! see it as an unused device and `df` lists it as not mounted. `mount`
//! goes through the boot path's decision ([`crate::decide`], never
//! formatting) and its messages. `grow` unmounts the filesystem in place,
//! extends it to the end of the device (daxfs `Filesystem::grow`,
//! FORMAT.md "Grow", crash-safe) and mounts it again under the same lock:
//! open files keep their handles, so connections carry on.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use daxbox_bootconfig::FormatPolicy;
use daxbox_persist::PersistentMemory;
use daxbox_pmem::frames::Owner;
use daxfs::{FileId, Filesystem};

use crate::boot::{attach, decide, BootPolicy, Decision};
use crate::{device_index, human, ConnectionStatus, Environment, Role, Storage};

/// `writeln!` to a console that cannot fail in a way worth reporting.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

impl<M: PersistentMemory> Storage<M> {
    /// The open connections with an export on `device`, not yet cut.
    pub fn connections_on_device(&self, device: &str) -> Vec<&ConnectionStatus> {
        self.connections
            .iter()
            .filter(|c| c.device.as_deref() == Some(device))
            .filter(|c| !self.disconnecting.contains(&c.id))
            .collect()
    }

    /// The open connections with file `file` of `device` as their export,
    /// not yet cut.
    pub fn connections_on_file(&self, device: &str, file: FileId) -> Vec<&ConnectionStatus> {
        self.connections_on_device(device)
            .into_iter()
            .filter(|c| c.file == Some(file))
            .collect()
    }

    /// Cuts connection `id`: the NBD service serves it no more and aborts
    /// it at its next poll. Its hold on its file goes at once (a removed
    /// file's space returns now, not at the abort).
    pub fn disconnect(&mut self, id: u64) {
        release_hold(self, id);
        if !self.disconnecting.contains(&id) {
            self.disconnecting.push(id);
        }
    }

    /// Whether connection `id` was cut and waits for the service to abort
    /// it.
    pub fn is_disconnecting(&self, id: u64) -> bool {
        self.disconnecting.contains(&id)
    }
}

/// Gives back connection `id`'s hold on its file, if it has one
/// ([`crate::ConnectionStatus::held`]): the last holder of a removed file
/// frees its space (daxfs `close`).
pub(crate) fn release_hold<M: PersistentMemory>(storage: &mut Storage<M>, id: u64) {
    let Some(entry) = storage.connections.iter_mut().find(|c| c.id == id) else {
        return;
    };
    let (true, Some(device), Some(file)) = (entry.held, entry.device.clone(), entry.file) else {
        return;
    };
    entry.held = false;
    let Ok(volume) = storage.volume_of(&device) else {
        return;
    };
    if let Some(fs) = storage.filesystem(volume) {
        // A failure leaves the orphan on media for the next mount.
        let _ = fs.close(file);
    }
}

/// `#3 127.0.0.1:40312 (disk1)`: how a connection is named in messages.
pub fn describe(connection: &ConnectionStatus) -> String {
    let peer = match connection.peer {
        Some(peer) => peer.to_string(),
        None => String::from("(address unknown)"),
    };
    alloc::format!("#{} {} ({})", connection.id, peer, connection.export)
}

/// What `--force` decides for the connections `users` of `what`: without
/// it, the refusal naming them; with it, each is cut and a line says so.
/// `retry` is the command line that would force it.
fn refuse_or_cut<M: PersistentMemory>(
    storage: &mut Storage<M>,
    users: Vec<u64>,
    what: &str,
    refused: &str,
    retry: &str,
    force: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    if users.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = users
        .iter()
        .filter_map(|id| storage.connections.iter().find(|c| c.id == *id))
        .map(describe)
        .collect();
    if !force {
        return Err(alloc::format!(
            "{} is open on {} NBD connection(s): {}; {} (`{}` disconnects them first)",
            what,
            names.len(),
            names.join(", "),
            refused,
            retry
        ));
    }
    for (id, name) in users.into_iter().zip(names) {
        storage.disconnect(id);
        say!(out, "disconnected {}", name);
    }
    Ok(())
}

/// The connections on `device` (ids), for [`refuse_or_cut`].
fn users_of_device<M: PersistentMemory>(storage: &Storage<M>, device: &str) -> Vec<u64> {
    storage
        .connections_on_device(device)
        .iter()
        .map(|c| c.id)
        .collect()
}

/// Before `truncate` shrinks file `file` of `device` (named `name` on the
/// command line) to `size`: refused while connections have it open, unless
/// `force`, which cuts them first.
pub fn before_shrink<M: PersistentMemory>(
    storage: &mut Storage<M>,
    device: &str,
    file: FileId,
    name: &str,
    size: &str,
    force: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let users: Vec<u64> = storage
        .connections_on_file(device, file)
        .iter()
        .map(|c| c.id)
        .collect();
    refuse_or_cut(
        storage,
        users,
        name,
        "shrinking it under them is refused",
        &alloc::format!("truncate {} {} --force", name, size),
        force,
        out,
    )
}

/// Before `rm` removes, or `mv` replaces, file `file` of `device`: with
/// `force`, the connections that have it open are cut first (and their
/// holds given back, so its space returns at once). Without, nothing is
/// refused: the file stays for its connections (daxfs keeps it as an
/// orphan, FORMAT.md "Orphans") and the returned note, for the command's
/// message, names them: `still open by 1 NBD connection: #3
/// 10.0.2.2:40122 (big); its space returns when it closes` (empty when
/// no connection has it).
pub fn before_remove<M: PersistentMemory>(
    storage: &mut Storage<M>,
    (device, file): (&str, FileId),
    force: bool,
    out: &mut dyn Write,
) -> String {
    let users: Vec<(u64, String)> = storage
        .connections_on_file(device, file)
        .iter()
        .map(|c| (c.id, describe(c)))
        .collect();
    if users.is_empty() {
        return String::new();
    }
    if force {
        for (id, name) in users {
            storage.disconnect(id);
            say!(out, "disconnected {}", name);
        }
        return String::new();
    }
    let names: Vec<String> = users.into_iter().map(|(_, name)| name).collect();
    let (plural, pronoun) = if names.len() == 1 {
        ("", "it closes")
    } else {
        ("s", "they close")
    };
    alloc::format!(
        "still open by {} NBD connection{}: {}; its space returns when {}",
        names.len(),
        plural,
        names.join(", "),
        pronoun
    )
}

/// `umount DEVICE [--force]`.
pub fn umount<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (device, force) = match args {
        [device] => (*device, false),
        [device, "--force"] => (*device, true),
        _ => return Err("usage: umount DEVICE [--force]".into()),
    };
    let index = storage
        .volume_of(device)
        .map_err(|error| error.explain(env))?;
    let users = users_of_device(storage, device);
    refuse_or_cut(
        storage,
        users,
        device,
        "it stays mounted",
        &alloc::format!("umount {} --force", device),
        force,
        out,
    )?;
    // The filesystem's holds go with it (its orphans are reclaimed at
    // the next mount): cut connections release nothing later.
    for connection in storage.connections.iter_mut() {
        if connection.device.as_deref() == Some(device) {
            connection.held = false;
        }
    }
    storage.object_reads.retain(|_, (d, _)| d != device);
    let volume = storage.volumes.remove(index);
    let number = device_index(device);
    let (memory, owner, what) = match volume.role {
        Role::Filesystem(fs) => (
            fs.unmount(),
            Owner::Filesystem(number),
            "unmounted (filesystem clean)",
        ),
        Role::Raw(block) => {
            let mut memory = block.into_memory();
            memory.fence();
            (memory, Owner::Device(number), "no longer exported raw")
        }
    };
    env.give_back(device, memory, owner).map_err(|error| {
        alloc::format!("{}: {}; it stays out of use until reboot", device, error)
    })?;
    say!(out, "{}: {}", device, what);
    Ok(())
}

/// `mount DEVICE`: the boot path's decision and messages, never formatting.
pub fn mount<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [device] = args else {
        return Err("usage: mount DEVICE".into());
    };
    if storage.volume_of(device).is_ok() {
        return Err(alloc::format!(
            "{} is already in use (mounted or exported)",
            device
        ));
    }
    if let Some(owner) = env.taken_by(device) {
        return Err(alloc::format!(
            "{} is held by {} since a failed mount; reboot to mount it",
            device,
            owner
        ));
    }
    let probe = env
        .inspect(device, |block| Filesystem::probe(block.memory()))
        .ok_or_else(|| alloc::format!("no such device: {}", device))?;
    let policy = BootPolicy {
        format: FormatPolicy::Never,
        export_raw: Vec::new(),
    };
    let decision = decide(device, &probe, &policy);
    let message = decision.message(device);
    if let Decision::LeaveAlone { .. } = decision {
        let text = message.unwrap_or_else(|| alloc::format!("{} not mounted", device));
        let text = text.strip_prefix("storage: ").unwrap_or(&text);
        return Err(text.to_string());
    }
    if let Some(message) = message {
        say!(out, "{}", message);
    }
    attach(storage, env, device, false, out)?;
    // Volumes stay in device order (bare names resolve to the first).
    crate::boot::sort_volumes(storage);
    Ok(())
}

/// `grow DEVICE`: extends the filesystem to the end of the device.
pub fn grow<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [device] = args else {
        return Err("usage: grow DEVICE".into());
    };
    let index = storage
        .filesystem_volume(device)
        .map_err(|error| error.explain(env))?;
    let volume = storage.volumes.remove(index);
    let Role::Filesystem(fs) = volume.role else {
        // filesystem_volume checked the role.
        storage.volumes.insert(index, volume);
        return Err(alloc::format!("{} is not a filesystem", device));
    };
    let started = env.now_us();
    // The connections' holds survive the remount, and with them the
    // removed files they still use (daxfs orphans).
    let holders = fs.holders();
    let mut memory = fs.unmount();
    let grown = Filesystem::grow(&mut memory);
    // Mount again whatever grow did: a refused grow changed nothing.
    let fs = match Filesystem::mount_keeping(memory, &daxfs::UNBOUNDED, &holders) {
        Ok(fs) => fs,
        Err(error) => {
            return Err(alloc::format!(
                "{}: mount after grow failed: {} (the device stays out of use until reboot)",
                device,
                error
            ))
        }
    };
    let statfs = fs.statfs();
    storage.volumes.insert(
        index,
        crate::Volume {
            device: volume.device,
            role: Role::Filesystem(Box::new(fs)),
        },
    );
    let grown = grown.map_err(|error| alloc::format!("{}: not grown: {}", device, error))?;
    let size = human(statfs.data_blocks * statfs.block_size);
    let free = human(statfs.free_blocks * statfs.block_size);
    if grown.new_blocks == grown.old_blocks {
        say!(
            out,
            "{}: the filesystem already spans the device ({} data, {} free); nothing to grow",
            device,
            size,
            free
        );
    } else {
        say!(
            out,
            "{}: grown by {} to {} in {} ms; {} free",
            device,
            human(grown.added_bytes()),
            size,
            env.now_us().saturating_sub(started) / 1000,
            free
        );
    }
    Ok(())
}
