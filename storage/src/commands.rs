//! The storage shell commands: `ls stat create rm mv clone truncate write
//! cat df fsck mkfs`, the lifecycle commands `umount mount grow`
//! ([`crate::lifecycle`]) and `nbd`.
//!
//! Each command is a function of the storage set, the [`Environment`], its
//! arguments and a writer for its output; an `Err` is the text the shell
//! prints after `error: `. [`table`] and [`nbd_table`] build the kernel's
//! command-table entries (name, usage, help) for any shell context that
//! implements [`ShellHost`], so the help text lives here once.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use daxbox_persist::PersistentMemory;
use daxbox_pmem::block::BlockDevice;
use daxbox_shell::Command;

use crate::boot::attach;
use crate::lifecycle;
use crate::nbd::export_names;
use crate::{human, is_device_name, parse_size, Environment, NameError, Role, Storage};

/// A shell context that can reach the storage set: the kernel's shell
/// context locks its static, a host shell owns one.
pub trait ShellHost {
    /// The persistent memory of the devices.
    type Memory: PersistentMemory;
    /// The environment of the devices.
    type Env: Environment<Self::Memory>;
    /// Runs `f` with the storage set, the environment and the console.
    fn with_storage<R>(
        &mut self,
        f: impl FnOnce(&mut Storage<Self::Memory>, &mut Self::Env, &mut dyn Write) -> R,
    ) -> R;
    /// The NBD port (shown by `nbd`).
    fn nbd_port(&self) -> u16;
}

/// Runs command `name` with `args`; `None` when `name` is not a storage
/// command.
pub fn run<M: PersistentMemory, E: Environment<M>>(
    name: &str,
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    nbd_port: u16,
    out: &mut dyn Write,
) -> Option<Result<(), String>> {
    let result = match name {
        "ls" => ls(storage, env, args, out),
        "stat" => stat(storage, env, args, out),
        "create" => create(storage, env, args, out),
        "rm" => rm(storage, env, args, out),
        "mv" => mv(storage, env, args, out),
        "clone" => clone(storage, env, args, out),
        "compact" => compact(storage, env, args, out),
        "truncate" => truncate(storage, env, args, out),
        "write" => write(storage, env, args, out),
        "cat" => cat(storage, env, args, out),
        "df" => df(storage, env, args, out),
        "fsck" => fsck(storage, env, args, out),
        "mkfs" => mkfs(storage, env, args, out),
        "umount" => lifecycle::umount(storage, env, args, out),
        "mount" => lifecycle::mount(storage, env, args, out),
        "grow" => lifecycle::grow(storage, env, args, out),
        "nbd" => nbd(storage, env.now_us() / 1000, args, nbd_port, out),
        _ => return None,
    };
    // Names may have changed: the read-only rules see every change
    // before the next command can rename again (crate::readonly).
    storage.refresh_read_only();
    Some(result)
}

fn dispatch<C: ShellHost>(context: &mut C, name: &str, args: &[&str]) -> Result<(), String> {
    let port = context.nbd_port();
    context.with_storage(|storage, env, out| {
        run(name, storage, env, args, port, out)
            .unwrap_or_else(|| Err(alloc::format!("unknown command '{}'", name)))
    })
}

macro_rules! entries {
    ($($name:literal, $function:ident, $usage:literal, $help:literal;)*) => {
        $(
            fn $function<C: ShellHost>(context: &mut C, args: &[&str]) -> Result<(), String> {
                dispatch(context, $name, args)
            }
        )*
        /// The filesystem commands, as shell-table entries.
        pub const fn table<C: ShellHost>() -> [Command<C>; 16] {
            [$(Command { name: $name, usage: $usage, help: $help, run: $function::<C> },)*]
        }
    };
}

mod entry {
    use super::*;
    entries! {
        "ls", ls, "[DEVICE] [AFTER]", "list files (sorted; from after AFTER)";
        "stat", stat, "NAME", "size, allocation and extents of a file";
        "create", create, "NAME SIZE", "create a sparse file of SIZE bytes (K/M/G suffixes)";
        "rm", rm, "NAME [--force]", "remove a file (NBD clients that have it open keep it until they close; --force disconnects them first)";
        "mv", mv, "FROM TO [--force]", "rename a file atomically (replaces TO; clients of TO keep it until they close; --force disconnects them)";
        "clone", clone, "SRC DST", "copy-on-write clone of a file";
        "compact", compact, "NAME", "gather the partly copied-on-write 2 MiB chunks of a file into whole private 2 MiB chunks (huge-page mappable again)";
        "truncate", truncate, "NAME SIZE [--force]", "grow or shrink a file (shrinking an open export needs --force, which disconnects its clients)";
        "write", write, "NAME OFFSET TEXT", "write TEXT into a file at OFFSET (durable on return)";
        "cat", cat, "NAME [OFFSET [LENGTH]]", "print file bytes as text";
        "df", df, "", "space and files per filesystem";
        "fsck", fsck, "[DEVICE]", "check every filesystem invariant";
        "mkfs", mkfs, "DEVICE [--yes]", "format a device with daxfs (erases it)";
        "umount", umount, "DEVICE [--force]", "unmount (or stop exporting) a device; --force disconnects its NBD clients";
        "mount", mount, "DEVICE", "mount the daxfs filesystem of an unused device";
        "grow", grow, "DEVICE", "grow the filesystem to the size of its device";
    }

    pub(super) fn nbd<C: ShellHost>(context: &mut C, args: &[&str]) -> Result<(), String> {
        dispatch(context, "nbd", args)
    }
}

pub use entry::table;

/// The `nbd` command, as a shell-table entry.
pub const fn nbd_table<C: ShellHost>() -> [Command<C>; 1] {
    [Command {
        name: "nbd",
        usage: "",
        help: "NBD exports and connections (client address:port, age, export, counters)",
        run: entry::nbd::<C>,
    }]
}

/// `writeln!` to a console that cannot fail in a way worth reporting.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// A name error in the environment's words.
fn explain<M: PersistentMemory, E: Environment<M>>(env: &E) -> impl Fn(NameError) -> String + '_ {
    move |error| error.explain(env)
}

/// `ls [DEVICE] [AFTER]`: files with sizes, 1000 per device at most.
pub fn ls<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (device, after) = match args {
        [] => (None, None),
        [one] if is_device_name(one) => (Some(*one), None),
        [after] => (None, Some(*after)),
        [device, after] => (Some(*device), Some(*after)),
        _ => return Err("usage: ls [DEVICE] [AFTER]".into()),
    };
    // A named device must hold a filesystem; a listing of nothing would
    // hide a typo or an unmounted device.
    if let Some(device) = device {
        storage.filesystem_volume(device).map_err(explain(env))?;
    } else if !storage.has_filesystem() {
        return Err("no filesystem is mounted".into());
    }
    let mut shown = 0;
    let default = storage.default_filesystem();
    for index in 0..storage.volumes.len() {
        let name = storage.volumes[index].device.clone();
        if device.is_some_and(|d| d != name) {
            continue;
        }
        let Some(fs) = storage.filesystem(index) else {
            continue;
        };
        let entries = fs.list(after, 1000);
        // The object API's uploads in progress are not files yet.
        for entry in entries.iter().filter(|e| !crate::s3::hidden(&e.name)) {
            // The canonical name: the one NBD lists and read-only rules use.
            let shown_name = crate::canonical_name(&name, default == Some(index), &entry.name);
            say!(out, "{:>14}  {}", entry.size, shown_name);
        }
        shown += entries
            .iter()
            .filter(|e| !crate::s3::hidden(&e.name))
            .count();
        if entries.len() == 1000 {
            say!(out, "(more: ls {} {})", name, entries[999].name);
        }
    }
    say!(out, "{} file(s)", shown);
    Ok(())
}

/// `stat NAME`.
pub fn stat<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [name] = args else {
        return Err("usage: stat NAME".into());
    };
    let found = storage.lookup(name).map_err(explain(env))?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let stat = fs.stat(found.file).map_err(|e| e.to_string())?;
    say!(out, "name:       {}", stat.name);
    say!(out, "size:       {} ({})", stat.size, human(stat.size));
    say!(out, "allocated:  {}", human(stat.allocated_bytes));
    say!(out, "shared:     {}", human(stat.shared_bytes));
    // The fraction mappable with 2 MiB pages (FORMAT.md "Compaction").
    let percent = (stat.huge_bytes as u128 * 100)
        .checked_div(stat.size as u128)
        .unwrap_or(0)
        .min(100);
    say!(
        out,
        "in 2 MiB:   {} ({}% of the size mappable with 2 MiB pages)",
        human(stat.huge_bytes),
        percent
    );
    say!(out, "extents:    {}", stat.extent_count);
    say!(out, "compact:    {}", storage.idle_compaction().status());
    Ok(())
}

/// `create NAME SIZE`: a sparse file.
pub fn create<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [name, size] = args else {
        return Err("usage: create NAME SIZE".into());
    };
    let size = parse_size(size)?;
    let (volume, bare) = storage.target(name).map_err(explain(env))?;
    let device = storage.volumes[volume].device.clone();
    let fs = storage.filesystem(volume).ok_or("not a filesystem")?;
    let file = fs.create(bare).map_err(|e| e.to_string())?;
    if let Err(error) = fs.truncate(file, size) {
        let _ = fs.unlink(bare);
        return Err(error.to_string());
    }
    let free = free_bytes(fs);
    say!(out, "created {} ({} bytes)", bare, size);
    overcommit_note(out, &device, size, 0, free);
    Ok(())
}

/// Free data bytes of a filesystem.
fn free_bytes<M: PersistentMemory>(fs: &daxfs::Filesystem<M>) -> u64 {
    let s = fs.statfs();
    s.free_blocks.saturating_mul(s.block_size)
}

/// Files are thin: `create` and `truncate` may promise more than the
/// device has free (allowed), and then writes fail with ENOSPC once it is
/// full. Says so, with the figures, when the part of a `size`-byte file
/// not yet `allocated` is more than the `free` bytes of `device`.
fn overcommit_note(out: &mut dyn Write, device: &str, size: u64, allocated: u64, free: u64) {
    let unallocated = size.saturating_sub(allocated);
    if unallocated <= free {
        return;
    }
    let allocated = if allocated == 0 {
        String::new()
    } else {
        alloc::format!("its {} allocated plus ", human(allocated))
    };
    say!(
        out,
        "note: {} is more than {}the {} free on {}; writes fail with ENOSPC once it is full",
        human(size),
        allocated,
        human(free),
        device
    );
}

/// `rm NAME`.
pub fn rm<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (name, force) = match args {
        [name] => (*name, false),
        [name, "--force"] => (*name, true),
        _ => return Err("usage: rm NAME [--force]".into()),
    };
    let found = storage.lookup(name).map_err(explain(env))?;
    let (_, bare) = storage.split_qualified(name).map_err(explain(env))?;
    let device = storage.volumes[found.volume].device.clone();
    let note = lifecycle::before_remove(storage, (&device, found.file), force, out);
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    fs.unlink(bare).map_err(|e| e.to_string())?;
    if note.is_empty() {
        say!(out, "removed {}", bare);
    } else {
        say!(out, "removed {} ({})", bare, note);
    }
    Ok(())
}

/// `mv FROM TO`: atomic rename on one device.
pub fn mv<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (from, to, force) = match args {
        [from, to] => (*from, *to, false),
        [from, to, "--force"] => (*from, *to, true),
        _ => return Err("usage: mv FROM TO [--force]".into()),
    };
    let found = storage.lookup(from).map_err(explain(env))?;
    let (_, from_bare) = storage.split_qualified(from).map_err(explain(env))?;
    let (to_volume, to_bare) = storage.split_qualified(to).map_err(explain(env))?;
    if to_volume.is_some_and(|v| v != found.volume) {
        return Err("cannot move a file to another device".into());
    }
    // A file replaced by the rename stays for the clients that have it
    // open (daxfs orphan); `--force` cuts them first.
    let device = storage.volumes[found.volume].device.clone();
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let mut note = String::new();
    if let Ok(replaced) = fs.lookup(to_bare) {
        if from_bare != to_bare {
            note = lifecycle::before_remove(storage, (&device, replaced), force, out);
        }
    }
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let replaces = fs.lookup(to_bare).is_ok() && from_bare != to_bare;
    fs.rename(from_bare, to_bare).map_err(|e| e.to_string())?;
    let replaced = match (replaces, note.is_empty()) {
        (false, _) => String::new(),
        (true, true) => String::from(" (replaced it)"),
        (true, false) => alloc::format!(" (replaced it; {})", note),
    };
    say!(out, "renamed {} to {}{}", from_bare, to_bare, replaced);
    Ok(())
}

/// `clone SRC DST`: copy-on-write clone on one device.
pub fn clone<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [source, destination] = args else {
        return Err("usage: clone SRC DST".into());
    };
    let found = storage.lookup(source).map_err(explain(env))?;
    let (_, source_bare) = storage.split_qualified(source).map_err(explain(env))?;
    let (to_volume, destination_bare) =
        storage.split_qualified(destination).map_err(explain(env))?;
    if to_volume.is_some_and(|v| v != found.volume) {
        return Err("a clone must stay on the device of its source".into());
    }
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let started = env.now_us();
    fs.clone_file(source_bare, destination_bare)
        .map_err(|e| e.to_string())?;
    say!(
        out,
        "cloned {} to {} in {} us",
        source_bare,
        destination_bare,
        env.now_us().saturating_sub(started)
    );
    Ok(())
}

/// `compact NAME`: gathers the file's diverged 2 MiB chunks (daxfs
/// `compact`, one commit per chunk; each takes a free 2 MiB chunk).
pub fn compact<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [name] = args else {
        return Err("usage: compact NAME".into());
    };
    let found = storage.lookup(name).map_err(explain(env))?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let started = env.now_us();
    let chunks = fs.compact(found.file).map_err(|e| e.to_string())?;
    let stat = fs.stat(found.file).map_err(|e| e.to_string())?;
    say!(
        out,
        "compacted {} chunk(s) of {} in {} us; {} in 2 MiB",
        chunks,
        stat.name,
        env.now_us().saturating_sub(started),
        human(stat.huge_bytes)
    );
    Ok(())
}

/// `truncate NAME SIZE`.
pub fn truncate<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (name, size_text, force) = match args {
        [name, size] => (*name, *size, false),
        [name, size, "--force"] => (*name, *size, true),
        _ => return Err("usage: truncate NAME SIZE [--force]".into()),
    };
    let size = parse_size(size_text)?;
    let found = storage.lookup(name).map_err(explain(env))?;
    let device = storage.volumes[found.volume].device.clone();
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let before = fs.stat(found.file).map_err(|e| e.to_string())?.size;
    if size < before {
        // No silent size change under a client.
        lifecycle::before_shrink(storage, &device, found.file, name, size_text, force, out)?;
    }
    storage.file_changed(found.volume, found.file);
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    fs.truncate(found.file, size).map_err(|e| e.to_string())?;
    say!(out, "truncated to {} bytes", size);
    if size > before {
        let allocated = fs
            .stat(found.file)
            .map_err(|e| e.to_string())?
            .allocated_bytes;
        overcommit_note(out, &device, size, allocated, free_bytes(fs));
    }
    Ok(())
}

fn parse_offset(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|_| alloc::format!("bad offset '{}'", text))
}

/// `write NAME OFFSET TEXT`: durable on return.
pub fn write<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let [name, offset, words @ ..] = args else {
        return Err("usage: write NAME OFFSET TEXT".into());
    };
    if words.is_empty() {
        return Err("usage: write NAME OFFSET TEXT".into());
    }
    let offset = parse_offset(offset)?;
    let text = words.join(" ");
    let found = storage.lookup(name).map_err(explain(env))?;
    storage.file_changed(found.volume, found.file);
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    fs.write(found.file, offset, text.as_bytes())
        .and_then(|()| fs.persist(found.file))
        .map_err(|e| e.to_string())?;
    say!(out, "wrote {} bytes at {}", text.len(), offset);
    Ok(())
}

/// `cat NAME [OFFSET [LENGTH]]`: bytes as text, at most 64 KiB.
pub fn cat<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (name, offset, length) = match args {
        [name] => (*name, 0, 4096),
        [name, offset] => (*name, parse_offset(offset)?, 4096),
        [name, offset, length] => (*name, parse_offset(offset)?, parse_size(length)?),
        _ => return Err("usage: cat NAME [OFFSET [LENGTH]]".into()),
    };
    // At most 64 KiB, so the cast cannot truncate.
    let length = length.min(64 * 1024) as usize;
    let found = storage.lookup(name).map_err(explain(env))?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let mut buffer = alloc::vec![0u8; length];
    let read = fs
        .read(found.file, offset, &mut buffer)
        .map_err(|e| e.to_string())?;
    let text: String = buffer[..read]
        .iter()
        .map(|&b| {
            if b == b'\n' || (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    say!(out, "{}", text);
    Ok(())
}

/// `df`: space and files per volume, then the devices not in use.
pub fn df<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: df".into());
    }
    say!(
        out,
        "{:<8} {:>12} {:>12} {:>12} {:>10} {:>12}",
        "device",
        "size",
        "used",
        "free",
        "files",
        "2MiB free"
    );
    for volume in &storage.volumes {
        match &volume.role {
            Role::Raw(block) => say!(
                out,
                "{:<8} {:>12} (exported raw)",
                volume.device,
                human(block.size())
            ),
            Role::Filesystem(fs) => {
                let s = fs.statfs();
                let total = s.data_blocks * s.block_size;
                let free = s.free_blocks * s.block_size;
                say!(
                    out,
                    "{:<8} {:>12} {:>12} {:>12} {:>4}/{:<5} {:>12}",
                    volume.device,
                    human(total),
                    human(total.saturating_sub(free)),
                    human(free),
                    s.files,
                    s.max_files,
                    human(s.huge_free * 2 * 1024 * 1024)
                );
            }
        }
    }
    for device in env.available_devices() {
        if let Some(size) = env.inspect(&device, |block| block.size()) {
            say!(out, "{:<8} {:>12} (not mounted)", device, human(size));
        }
    }
    Ok(())
}

/// `fsck [DEVICE]`: every filesystem invariant.
pub fn fsck<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    match args {
        [] => {}
        // Name what is wrong with the device instead of "nothing to check"
        // (typo, unmounted or raw).
        [device] => {
            storage.filesystem_volume(device).map_err(explain(env))?;
        }
        _ => return Err("usage: fsck [DEVICE]".into()),
    }
    let mut checked = 0;
    let mut problems = 0;
    for volume in &storage.volumes {
        if args.first().is_some_and(|d| *d != volume.device) {
            continue;
        }
        let Role::Filesystem(fs) = &volume.role else {
            continue;
        };
        let started = env.now_us();
        let report = fs.fsck();
        say!(
            out,
            "{}: {} ({} ms)",
            volume.device,
            report,
            env.now_us().saturating_sub(started) / 1000
        );
        checked += 1;
        problems += report.problems.len();
    }
    storage.metrics.recovery.fsck_runs += checked;
    storage.metrics.recovery.fsck_problems += problems as u64;
    if checked == 0 {
        return Err("no filesystem to check".into());
    }
    if problems > 0 {
        return Err(alloc::format!("{} problem(s) found", problems));
    }
    Ok(())
}

/// `mkfs DEVICE [--yes]`: format a device that is not in use.
pub fn mkfs<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let (device, confirmed) = match args {
        [device] => (*device, false),
        [device, "--yes"] => (*device, true),
        _ => return Err("usage: mkfs DEVICE [--yes]".into()),
    };
    if storage.volumes.iter().any(|v| v.device == device) {
        return Err(alloc::format!(
            "{} is in use (mounted or exported); it cannot be formatted now",
            device
        ));
    }
    if let Some(owner) = env.taken_by(device) {
        // Taken but not a volume: a mount at boot failed with the memory.
        return Err(alloc::format!(
            "{} is held by {} since a failed mount; reboot to format it",
            device,
            owner
        ));
    }
    let size = env
        .inspect(device, |block| block.size())
        .ok_or_else(|| alloc::format!("no such device: {}", device))?;
    if !confirmed {
        say!(
            out,
            "mkfs: this erases everything on {} ({}). Run `mkfs {} --yes` to confirm.",
            device,
            human(size),
            device
        );
        return Ok(());
    }
    attach(storage, env, device, true, out)
}

/// `nbd`: exports (read-only ones marked), the allow-list's state and its
/// refusals by reason and client address ([`crate::allow::Access::report`]),
/// and connections with counters.
///
/// Each connection: `#ID ADDRESS:PORT up AGE s, EXPORT: ...counters`, the
/// age from `now_ms` (the service's clock).
pub fn nbd<M: PersistentMemory>(
    storage: &mut Storage<M>,
    now_ms: u64,
    args: &[&str],
    port: u16,
    out: &mut dyn Write,
) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: nbd".into());
    }
    let names: Vec<String> = export_names(storage);
    say!(out, "NBD on port {}: {} export(s)", port, names.len());
    for name in &names {
        say!(
            out,
            "  export {}{}",
            name,
            if export_read_only(storage, name) {
                " (read-only)"
            } else {
                ""
            }
        );
    }
    for line in storage.read_only_report() {
        say!(out, "{}", line);
    }
    for line in storage.access().report() {
        say!(out, "{}", line);
    }
    let connections = storage.connections();
    say!(out, "{} connection(s)", connections.len());
    for connection in connections {
        let stats = &connection.stats;
        let peer = match connection.peer {
            Some(peer) => peer.to_string(),
            None => String::from("?"),
        };
        say!(
            out,
            "  #{} {} up {} s, {}: {} requests ({} errors), {} bytes in, {} bytes out, read {} written {}",
            connection.id,
            peer,
            now_ms.saturating_sub(connection.opened_ms) / 1000,
            connection.export,
            stats.requests,
            stats.errors,
            stats.bytes_in,
            stats.bytes_out,
            stats.read_bytes,
            stats.write_bytes
        );
    }
    Ok(())
}

/// Whether the export listed as `name` is read-only now.
fn export_read_only<M: PersistentMemory>(storage: &Storage<M>, name: &str) -> bool {
    if let Some(volume) = storage.volumes.iter().position(|v| v.device == name) {
        return storage.raw_read_only(volume);
    }
    match storage.lookup(name) {
        Ok(found) => storage.file_read_only(found.volume, found.file),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, MIB};
    use daxbox_pmem::frames::Owner;

    #[test]
    fn create_ls_stat_rm() {
        let mut f = Fixture::standard();
        assert_eq!(f.ok("ls"), "0 file(s)\n");
        assert_eq!(f.ok("create disk 8K"), "created disk (8192 bytes)\n");
        assert_eq!(
            f.ok("create pmem1:other 1M"),
            "created other (1048576 bytes)\n"
        );
        assert_eq!(
            f.ok("ls"),
            "          8192  disk\n       1048576  pmem1:other\n2 file(s)\n"
        );
        assert_eq!(f.ok("ls pmem1"), "       1048576  pmem1:other\n1 file(s)\n");
        assert_eq!(f.ok("ls disk"), "       1048576  pmem1:other\n1 file(s)\n");
        assert_eq!(f.ok("ls pmem0 disk"), "0 file(s)\n");
        assert_eq!(
            f.ok("stat disk"),
            "name:       disk\nsize:       8192 (8 KiB)\nallocated:  0 B\nshared:     0 B\n\
             in 2 MiB:   0 B (0% of the size mappable with 2 MiB pages)\nextents:    0\n\
             compact:    idle pass gathered 0 chunk(s) in 0 cycle(s); scanning\n"
        );
        assert_eq!(f.ok("rm disk"), "removed disk\n");
        assert_eq!(f.ok("rm pmem1:other"), "removed other\n");
        assert_eq!(f.ok("ls"), "0 file(s)\n");
    }

    #[test]
    fn listing_errors_name_the_device_problem() {
        let mut f = Fixture::standard();
        let err = |f: &mut Fixture, line: &str| f.run(line).unwrap_err();
        assert_eq!(
            err(&mut f, "ls pmem2"),
            "pmem2 is exported raw, not a filesystem"
        );
        assert_eq!(
            err(&mut f, "ls pmem3"),
            "pmem3 has no mounted filesystem (see the boot log, or `mkfs pmem3`)"
        );
        assert_eq!(err(&mut f, "ls pmem9"), "no such device: pmem9");
        assert_eq!(err(&mut f, "ls a b c"), "usage: ls [DEVICE] [AFTER]");
        assert_eq!(err(&mut f, "stat"), "usage: stat NAME");
        assert_eq!(err(&mut f, "stat nothing"), "no such file: nothing");
        assert_eq!(err(&mut f, "stat pmem0:nothing"), "no such file: nothing");
        assert_eq!(err(&mut f, "rm nothing"), "no such file: nothing");
        assert_eq!(err(&mut f, "rm"), "usage: rm NAME [--force]");
        let mut none = Fixture::empty();
        assert_eq!(err(&mut none, "ls"), "no filesystem is mounted");
        assert_eq!(err(&mut none, "fsck"), "no filesystem to check");
    }

    #[test]
    fn create_errors() {
        let mut f = Fixture::standard();
        let err = |f: &mut Fixture, line: &str| f.run(line).unwrap_err();
        assert_eq!(err(&mut f, "create x"), "usage: create NAME SIZE");
        assert_eq!(err(&mut f, "create x lots"), "bad size 'lots'");
        f.ok("create x 4K");
        assert_eq!(err(&mut f, "create x 4K"), daxfs::Error::Exists.to_string());
        assert_eq!(
            err(&mut f, "create pmem2:x 4K"),
            "pmem2 is exported raw, not a filesystem"
        );
        assert_eq!(
            err(&mut f, "create pmem3:x 4K"),
            "pmem3 has no mounted filesystem (see the boot log, or `mkfs pmem3`)"
        );
        // Too large: the file is not left behind.
        assert_eq!(
            err(&mut f, "create huge 0xffffffffffffffff"),
            daxfs::Error::FileTooLarge.to_string()
        );
        assert_eq!(err(&mut f, "stat huge"), "no such file: huge");
    }

    /// Free bytes of `device` in the fixture, as `df` shows them.
    fn free_on(f: &mut Fixture, device: &str) -> String {
        let index = f
            .storage
            .volumes
            .iter()
            .position(|volume| volume.device == device)
            .expect("a volume of the fixture");
        let s = f.storage.filesystem(index).expect("a filesystem").statfs();
        human(s.free_blocks * s.block_size)
    }

    #[test]
    fn create_beyond_free_space_is_allowed_with_a_note() {
        let mut f = Fixture::standard();
        let free = free_on(&mut f, "pmem0");
        assert_eq!(
            f.ok("create huge 1T"),
            alloc::format!(
                "created huge (1099511627776 bytes)\n\
                 note: 1 TiB is more than the {free} free on pmem0; \
                 writes fail with ENOSPC once it is full\n"
            )
        );
        let free1 = free_on(&mut f, "pmem1");
        assert_eq!(
            f.ok("create pmem1:big 17M"),
            alloc::format!(
                "created big (17825792 bytes)\n\
                 note: 17 MiB is more than the {free1} free on pmem1; \
                 writes fail with ENOSPC once it is full\n"
            )
        );
        // Within the free space: no note.
        assert_eq!(f.ok("create small 1M"), "created small (1048576 bytes)\n");
        assert_eq!(
            f.ok("stat huge").lines().nth(1),
            Some("size:       1099511627776 (1 TiB)")
        );
    }

    #[test]
    fn truncate_growing_beyond_free_space_is_allowed_with_a_note() {
        let mut f = Fixture::standard();
        f.ok("create notes 16");
        f.ok("write notes 0 some-bytes");
        let free = free_on(&mut f, "pmem0");
        assert_eq!(
            f.ok("truncate notes 1T"),
            alloc::format!(
                "truncated to 1099511627776 bytes\n\
                 note: 1 TiB is more than its 4 KiB allocated plus the {free} free on pmem0; \
                 writes fail with ENOSPC once it is full\n"
            )
        );
        // Shrinking, or growing within the free space: no note.
        assert_eq!(f.ok("truncate notes 4K"), "truncated to 4096 bytes\n");
        assert_eq!(f.ok("truncate notes 1M"), "truncated to 1048576 bytes\n");
        f.ok("create empty 0");
        let free = free_on(&mut f, "pmem0");
        assert_eq!(
            f.ok("truncate pmem0:empty 64M"),
            alloc::format!(
                "truncated to 67108864 bytes\n\
                 note: 64 MiB is more than the {free} free on pmem0; \
                 writes fail with ENOSPC once it is full\n"
            )
        );
    }

    #[test]
    fn compact_gathers_a_clone_and_stat_reports_the_mappable_fraction() {
        let mut f = Fixture::standard();
        f.ok("create big 4M");
        f.ok("write big 0 x");
        f.ok("write big 2097152 y");
        f.ok("clone big twin");
        assert!(
            f.ok("stat twin").contains("(100% of the size mappable"),
            "{}",
            f.ok("stat twin")
        );
        f.ok("write twin 4096 changed");
        assert!(f.ok("stat twin").contains("(50% of the size mappable"));
        let said = f.ok("compact twin");
        assert!(
            said.starts_with("compacted 1 chunk(s) of twin in "),
            "{said}"
        );
        assert!(f.ok("stat twin").contains("(100% of the size mappable"));
        assert_eq!(f.ok("cat twin 4096 7"), "changed\n");
        assert_eq!(f.run("compact").unwrap_err(), "usage: compact NAME");
        assert_eq!(
            f.run("compact nothing").unwrap_err(),
            "no such file: nothing"
        );
    }

    #[test]
    fn mv_and_clone() {
        let mut f = Fixture::standard();
        f.ok("create a 4K");
        f.ok("create b 4K");
        f.ok("create pmem1:c 4K");
        assert_eq!(f.ok("mv a d"), "renamed a to d\n");
        assert_eq!(f.ok("mv d b"), "renamed d to b (replaced it)\n");
        assert_eq!(f.ok("mv pmem0:b pmem0:e"), "renamed b to e\n");
        assert_eq!(
            f.run("mv e pmem1:e").unwrap_err(),
            "cannot move a file to another device"
        );
        assert_eq!(f.run("mv e").unwrap_err(), "usage: mv FROM TO [--force]");
        assert_eq!(f.run("mv nothing x").unwrap_err(), "no such file: nothing");
        f.ok("write e 0 cloned-bytes");
        assert_eq!(f.ok("clone e e2"), "cloned e to e2 in 1000 us\n");
        assert_eq!(f.ok("cat e2 0 12"), "cloned-bytes\n");
        assert_eq!(
            f.run("clone e pmem1:e3").unwrap_err(),
            "a clone must stay on the device of its source"
        );
        assert_eq!(f.run("clone e").unwrap_err(), "usage: clone SRC DST");
        assert_eq!(
            f.ok("clone pmem1:c pmem1:c2"),
            "cloned c to c2 in 1000 us\n"
        );
        assert!(f.storage.lookup("pmem1:c2").is_ok());
    }

    #[test]
    fn write_cat_truncate() {
        let mut f = Fixture::standard();
        f.ok("create notes 16");
        assert_eq!(f.ok("write notes 2 hello  world"), "wrote 11 bytes at 2\n");
        assert_eq!(f.ok("cat notes"), "..hello world...\n");
        assert_eq!(f.ok("cat notes 2"), "hello world...\n");
        assert_eq!(f.ok("cat notes 2 5"), "hello\n");
        // Durable on return: the bytes are on the device's image.
        let image = f.env.image("pmem0");
        assert!(image.windows(11).any(|w| w == b"hello world"));
        assert_eq!(f.ok("truncate notes 4"), "truncated to 4 bytes\n");
        assert_eq!(f.ok("cat notes"), "..he\n");
        assert_eq!(f.ok("truncate notes 1M"), "truncated to 1048576 bytes\n");
        assert_eq!(f.ok("cat notes 0 6"), "..he..\n");
        let err = |f: &mut Fixture, line: &str| f.run(line).unwrap_err();
        assert_eq!(
            err(&mut f, "write notes 0"),
            "usage: write NAME OFFSET TEXT"
        );
        assert_eq!(err(&mut f, "write notes"), "usage: write NAME OFFSET TEXT");
        assert_eq!(err(&mut f, "write notes x text"), "bad offset 'x'");
        assert_eq!(err(&mut f, "cat notes x"), "bad offset 'x'");
        assert_eq!(err(&mut f, "cat notes 0 x"), "bad size 'x'");
        assert_eq!(err(&mut f, "cat"), "usage: cat NAME [OFFSET [LENGTH]]");
        assert_eq!(
            err(&mut f, "truncate notes"),
            "usage: truncate NAME SIZE [--force]"
        );
        assert_eq!(
            err(&mut f, "truncate notes 1 --now"),
            "usage: truncate NAME SIZE [--force]"
        );
        assert_eq!(err(&mut f, "truncate notes x"), "bad size 'x'");
        assert_eq!(err(&mut f, "write nothing 0 x"), "no such file: nothing");
    }

    #[test]
    fn df_lists_filesystems_and_raw_devices() {
        let mut f = Fixture::standard();
        let out = f.ok("df");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "device           size         used         free      files    2MiB free"
        );
        assert!(lines[1].starts_with("pmem0   "), "{out}");
        assert!(lines[1].contains("   0/"), "{out}");
        assert!(lines[2].starts_with("pmem1   "), "{out}");
        assert_eq!(lines[3], "pmem2           8 MiB (exported raw)");
        assert_eq!(lines[4], "pmem3           8 MiB (not mounted)");
        assert_eq!(lines.len(), 5);
        assert_eq!(f.run("df x").unwrap_err(), "usage: df");
    }

    #[test]
    fn fsck_checks_each_filesystem() {
        let mut f = Fixture::standard();
        f.ok("create a 4K");
        assert_eq!(
            f.ok("fsck"),
            "pmem0: fsck: clean (1 ms)\npmem1: fsck: clean (1 ms)\n"
        );
        assert_eq!(f.ok("fsck pmem1"), "pmem1: fsck: clean (1 ms)\n");
        let err = |f: &mut Fixture, line: &str| f.run(line).unwrap_err();
        assert_eq!(
            err(&mut f, "fsck pmem2"),
            "pmem2 is exported raw, not a filesystem"
        );
        assert_eq!(
            err(&mut f, "fsck pmem3"),
            "pmem3 has no mounted filesystem (see the boot log, or `mkfs pmem3`)"
        );
        assert_eq!(err(&mut f, "fsck pmem0 pmem1"), "usage: fsck [DEVICE]");
    }

    #[test]
    fn mkfs_asks_then_formats_an_unused_device() {
        let mut f = Fixture::standard();
        let err = |f: &mut Fixture, line: &str| f.run(line).unwrap_err();
        assert_eq!(
            err(&mut f, "mkfs pmem0"),
            "pmem0 is in use (mounted or exported); it cannot be formatted now"
        );
        assert_eq!(
            err(&mut f, "mkfs pmem2 --yes"),
            "pmem2 is in use (mounted or exported); it cannot be formatted now"
        );
        assert_eq!(err(&mut f, "mkfs pmem9"), "no such device: pmem9");
        assert_eq!(err(&mut f, "mkfs"), "usage: mkfs DEVICE [--yes]");
        assert_eq!(err(&mut f, "mkfs pmem3 --no"), "usage: mkfs DEVICE [--yes]");
        assert_eq!(
            f.ok("mkfs pmem3"),
            "mkfs: this erases everything on pmem3 (8 MiB). Run `mkfs pmem3 --yes` to confirm.\n"
        );
        assert_eq!(
            &f.env.image("pmem3")[..4],
            b"junk",
            "not erased before --yes"
        );
        let out = f.ok("mkfs pmem3 --yes");
        assert!(
            out.starts_with("storage: pmem3 formatted and mounted daxfs in 1 ms: 0 files, "),
            "{out}"
        );
        f.ok("create pmem3:new 4K");
        assert_eq!(f.ok("ls pmem3"), "          4096  pmem3:new\n1 file(s)\n");
    }

    #[test]
    fn mkfs_refuses_a_device_held_since_a_failed_mount() {
        let mut f = Fixture::with_devices(&[16 * MIB, 8 * MIB], &["pmem1"]);
        f.storage.volumes.retain(|v| v.device != "pmem1");
        assert_eq!(
            f.run("mkfs pmem1 --yes").unwrap_err(),
            "pmem1 is held by device pmem1 since a failed mount; reboot to format it"
        );
        assert_eq!(f.env.taken_by("pmem1"), Some(Owner::Device(1)));
    }

    #[test]
    fn nbd_lists_exports_read_only_ones_and_no_connections() {
        let mut f = Fixture::standard();
        f.ok("create disk 4K");
        f.ok("create pmem1:disk 4K");
        f.ok("create ro 4K");
        f.storage
            .set_read_only(crate::testing::rules(&["ro", "pmem2"]));
        assert_eq!(
            f.ok("nbd"),
            "NBD on port 10809: 4 export(s)\n  export disk\n  export ro (read-only)\n  \
             export pmem1:disk\n  export pmem2 (read-only)\nallow: no rules; every export is open to every client\n0 connection(s)\n"
        );
        assert_eq!(f.run("nbd x").unwrap_err(), "usage: nbd");
    }

    /// A shell context over a fixture, as the kernel's shell context is
    /// over its statics.
    struct TestShell {
        fixture: Fixture,
        out: String,
    }

    impl ShellHost for TestShell {
        type Memory = crate::testing::TestMemory;
        type Env = crate::testing::FakeEnvironment;
        fn with_storage<R>(
            &mut self,
            f: impl FnOnce(&mut Storage<Self::Memory>, &mut Self::Env, &mut dyn Write) -> R,
        ) -> R {
            f(
                &mut self.fixture.storage,
                &mut self.fixture.env,
                &mut self.out,
            )
        }
        fn nbd_port(&self) -> u16 {
            10809
        }
    }

    #[test]
    fn tables_carry_the_kernel_help_and_dispatch() {
        let commands = table::<TestShell>();
        let names: Vec<&str> = commands.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "ls", "stat", "create", "rm", "mv", "clone", "compact", "truncate", "write", "cat",
                "df", "fsck", "mkfs", "umount", "mount", "grow"
            ]
        );
        assert_eq!(commands[2].usage, "NAME SIZE");
        assert_eq!(
            commands[2].help,
            "create a sparse file of SIZE bytes (K/M/G suffixes)"
        );
        let mut shell = TestShell {
            fixture: Fixture::standard(),
            out: String::new(),
        };
        (commands[2].run)(&mut shell, &["x", "4K"]).unwrap();
        (commands[0].run)(&mut shell, &[]).unwrap();
        let nbd = nbd_table::<TestShell>();
        assert_eq!(nbd[0].name, "nbd");
        (nbd[0].run)(&mut shell, &[]).unwrap();
        assert_eq!(
            shell.out,
            "created x (4096 bytes)\n          4096  x\n1 file(s)\n\
             NBD on port 10809: 2 export(s)\n  export x\n  export pmem2\nallow: no rules; every export is open to every client\n0 connection(s)\n"
        );
    }
}
