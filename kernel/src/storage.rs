//! Storage volumes: what each pmem block device is used for, and the
//! filesystem shell commands.
//!
//! At boot every pmem device (`pmem.rs`) is looked at once:
//! - named by `export_raw=` in the boot config: exported raw over NBD;
//! - holding daxfs: mounted (recovering after an unclean shutdown);
//! - blank and `format=if-blank`: formatted, then mounted;
//! - anything else (blank with `format=never`, foreign data, a corrupt or
//!   newer filesystem): left alone with a message, still reachable with
//!   `blk` and `mkfs`.
//!
//! A device that becomes a volume is taken out of `pmem.rs`'s hands (its
//! block device moves here) and its frames pass from the device to the
//! filesystem in the page-frame table, so `blk write` cannot scribble over
//! a mounted filesystem.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use daxbox_bootconfig::FormatPolicy;
use daxbox_persist::PersistentMemory;
use daxbox_pmem::block::PmemBlockDevice;
use daxfs::{FileId, Filesystem, FormatOptions, Probe};
use spin::Mutex;

use crate::pmem::{self, PmemRegion};
use crate::shell::{human, Command, Context};
use crate::{config, println, time};

/// A mounted filesystem or a raw export.
pub enum Role {
    /// daxfs mounted on the device (boxed: the mounted state is much larger
    /// than a raw block device).
    Filesystem(Box<Filesystem<PmemRegion>>),
    /// The whole device, exported raw.
    Raw(PmemBlockDevice<PmemRegion>),
}

/// One device in use by the storage layer.
pub struct Volume {
    /// Device name (`pmem0`, ...).
    pub device: String,
    /// What it is used for.
    pub role: Role,
}

/// All volumes, in device order.
pub struct Storage {
    /// The volumes.
    pub volumes: Vec<Volume>,
}

/// The storage state, shared by the shell and the NBD service.
pub static STORAGE: Mutex<Storage> = Mutex::new(Storage {
    volumes: Vec::new(),
});

/// A file named on the command line or by an NBD client: `NAME` (the first
/// filesystem that has it, in device order) or `pmemN:NAME`.
pub struct FileRef {
    /// Index into `Storage::volumes`.
    pub volume: usize,
    /// The file.
    pub file: FileId,
}

impl Storage {
    /// The filesystem on volume `index`, if it is one.
    pub fn filesystem(&mut self, index: usize) -> Option<&mut Filesystem<PmemRegion>> {
        match &mut self.volumes.get_mut(index)?.role {
            Role::Filesystem(fs) => Some(fs.as_mut()),
            Role::Raw(_) => None,
        }
    }

    /// The volume of device `device` (`pmemN`), or why there is none: a
    /// device that exists but holds no mounted filesystem or raw export is
    /// named as such, so that `pmemN:NAME` never silently means a file
    /// called `pmemN:NAME` on some other device.
    fn volume_of(&self, device: &str) -> Result<usize, String> {
        if let Some(index) = self.volumes.iter().position(|v| v.device == device) {
            return Ok(index);
        }
        if pmem::with_device(device, |_| ()).is_some() || pmem::taken_by(device).is_some() {
            Err(alloc::format!(
                "{} has no mounted filesystem (see the boot log, or `mkfs {}`)",
                device,
                device
            ))
        } else {
            Err(alloc::format!("no such device: {}", device))
        }
    }

    /// Splits `pmemN:NAME` into (volume index, NAME); a plain `NAME` gives
    /// `None` for the volume. A `pmemN:` prefix naming a device that is
    /// not in use as a volume is an error (see [`Storage::volume_of`]).
    fn split_qualified<'a>(&self, name: &'a str) -> Result<(Option<usize>, &'a str), String> {
        match name.split_once(':') {
            Some((device, rest)) if is_device_name(device) => {
                Ok((Some(self.volume_of(device)?), rest))
            }
            _ => Ok((None, name)),
        }
    }

    /// Finds an existing file.
    pub fn lookup(&self, name: &str) -> Result<FileRef, String> {
        let (volume, name) = self.split_qualified(name)?;
        for (index, candidate) in self.volumes.iter().enumerate() {
            if volume.is_some_and(|v| v != index) {
                continue;
            }
            if let Role::Filesystem(fs) = &candidate.role {
                if let Ok(file) = fs.lookup(name) {
                    return Ok(FileRef {
                        volume: index,
                        file,
                    });
                }
            }
        }
        Err(alloc::format!("no such file: {}", name))
    }

    /// The filesystem a new file called `name` goes to: the named device,
    /// else the first mounted filesystem. Returns (volume, bare name).
    fn target<'a>(&self, name: &'a str) -> Result<(usize, &'a str), String> {
        let (volume, bare) = self.split_qualified(name)?;
        let index = match volume {
            Some(index) => index,
            None => self
                .volumes
                .iter()
                .position(|v| matches!(v.role, Role::Filesystem(_)))
                .ok_or("no filesystem is mounted")?,
        };
        match self.volumes[index].role {
            Role::Filesystem(_) => Ok((index, bare)),
            Role::Raw(_) => Err(alloc::format!(
                "{} is exported raw, not a filesystem",
                self.volumes[index].device
            )),
        }
    }

    /// Makes everything durable and marks every filesystem clean (before
    /// power-off). Afterwards the volumes are gone.
    pub fn shutdown(&mut self) {
        for volume in self.volumes.drain(..) {
            match volume.role {
                Role::Filesystem(fs) => {
                    let _ = fs.unmount();
                }
                Role::Raw(mut block) => {
                    block.memory_mut().fence();
                }
            }
        }
    }
}

/// Whether `text` is a device name: `pmem` and a decimal number.
fn is_device_name(text: &str) -> bool {
    text.strip_prefix("pmem")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Looks at every pmem device and mounts, formats or exports it.
pub fn init() {
    let config = config::get();
    let mut storage = STORAGE.lock();
    let devices = pmem::device_names();
    // A typo in export_raw= would otherwise pass without a word, and the
    // export the operator expects would simply not exist.
    for raw in &config.export_raw {
        if !devices.contains(raw) {
            println!("storage: export_raw={}: no such device (ignored)", raw);
        }
    }
    for name in devices {
        let index: u8 = name.trim_start_matches("pmem").parse().unwrap_or(u8::MAX);
        if config.export_raw.contains(&name) {
            match pmem::take_block(&name, daxbox_pmem::frames::Owner::Device(index)) {
                Some(block) => {
                    println!(
                        "storage: {} exported raw ({})",
                        name,
                        human(block_size(&block))
                    );
                    storage.volumes.push(Volume {
                        device: name,
                        role: Role::Raw(block),
                    });
                }
                None => println!("storage: {}: cannot take the device", name),
            }
            continue;
        }
        let probe = match pmem::with_device(&name, |d| Filesystem::probe(d.block.memory())) {
            Some(probe) => probe,
            None => continue,
        };
        let format = match probe {
            Probe::Daxfs { version, .. } if version > daxfs::format::FORMAT_VERSION => {
                // Mounting would fail, and a failed mount loses the device
                // until the next boot: refuse before taking it.
                println!(
                    "storage: {} holds daxfs format version {} (this kernel supports up to {}); left alone",
                    name,
                    version,
                    daxfs::format::FORMAT_VERSION
                );
                continue;
            }
            Probe::Daxfs { clean: false, .. } => {
                println!(
                    "storage: {} was not unmounted cleanly; mounting with recovery",
                    name
                );
                false
            }
            Probe::Daxfs { .. } => false,
            Probe::Blank if config.format == FormatPolicy::IfBlank => true,
            Probe::Blank => {
                println!(
                    "storage: {} is blank; not formatting (boot config format=if-blank, or `mkfs {}`)",
                    name, name
                );
                continue;
            }
            Probe::Foreign => {
                println!(
                    "storage: {} holds something that is not daxfs; left alone (`mkfs {}` erases it)",
                    name, name
                );
                continue;
            }
            Probe::Corrupt(error) => {
                println!(
                    "storage: {}: damaged filesystem, not mounted: {} (data left as it is)",
                    name, error
                );
                continue;
            }
        };
        if let Err(message) = attach(&mut storage, &name, index, format) {
            println!("storage: {}: {}", name, message);
        }
    }
}

fn block_size(block: &PmemBlockDevice<PmemRegion>) -> u64 {
    use daxbox_pmem::block::BlockDevice;
    block.size()
}

/// Takes device `name` from the pmem layer and mounts it (formatting it
/// first when `format`), adding a volume.
fn attach(storage: &mut Storage, name: &str, index: u8, format: bool) -> Result<(), String> {
    let block = pmem::take_block(name, daxbox_pmem::frames::Owner::Filesystem(index))
        .ok_or("the device is already in use")?;
    let memory = block.into_memory();
    let started = time::now_us();
    let result = if format {
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&time::cycles().to_le_bytes());
        uuid[8..].copy_from_slice(&u64::from(index).to_le_bytes());
        Filesystem::format(
            memory,
            FormatOptions {
                uuid,
                max_files: None,
            },
        )
    } else {
        Filesystem::mount(memory)
    };
    let elapsed = time::now_us() - started;
    match result {
        Ok(fs) => {
            let statfs = fs.statfs();
            println!(
                "storage: {} {} daxfs in {} ms: {} files, {} free of {}",
                name,
                if format {
                    "formatted and mounted"
                } else {
                    "mounted"
                },
                elapsed / 1000,
                statfs.files,
                human(statfs.free_blocks * statfs.block_size),
                human(statfs.data_blocks * statfs.block_size),
            );
            storage.volumes.push(Volume {
                device: name.to_string(),
                role: Role::Filesystem(Box::new(fs)),
            });
            Ok(())
        }
        Err(error) => {
            // The memory went into the failed mount and is gone with it;
            // the device stays out of use until the next boot.
            Err(alloc::format!("mount failed: {}", error))
        }
    }
}

/// Makes every filesystem durable and clean before power-off.
pub fn shutdown() {
    STORAGE.lock().shutdown();
}

/// Parses a size with an optional K/M/G/T suffix (binary).
pub fn parse_size(text: &str) -> Result<u64, String> {
    daxbox_bootconfig::parse_size(text).ok_or_else(|| alloc::format!("bad size '{}'", text))
}

// ---------------------------------------------------------------------------
// Shell commands.

/// The filesystem commands.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "ls",
        usage: "[DEVICE] [AFTER]",
        help: "list files (sorted; from after AFTER)",
        run: ls,
    },
    Command {
        name: "stat",
        usage: "NAME",
        help: "size, allocation and extents of a file",
        run: stat,
    },
    Command {
        name: "create",
        usage: "NAME SIZE",
        help: "create a sparse file of SIZE bytes (K/M/G suffixes)",
        run: create,
    },
    Command {
        name: "rm",
        usage: "NAME",
        help: "remove a file",
        run: rm,
    },
    Command {
        name: "mv",
        usage: "FROM TO",
        help: "rename a file atomically (replaces TO)",
        run: mv,
    },
    Command {
        name: "clone",
        usage: "SRC DST",
        help: "copy-on-write clone of a file",
        run: clone,
    },
    Command {
        name: "truncate",
        usage: "NAME SIZE",
        help: "grow or shrink a file",
        run: truncate,
    },
    Command {
        name: "write",
        usage: "NAME OFFSET TEXT",
        help: "write TEXT into a file at OFFSET (durable on return)",
        run: write,
    },
    Command {
        name: "cat",
        usage: "NAME [OFFSET [LENGTH]]",
        help: "print file bytes as text",
        run: cat,
    },
    Command {
        name: "df",
        usage: "",
        help: "space and files per filesystem",
        run: df,
    },
    Command {
        name: "fsck",
        usage: "[DEVICE]",
        help: "check every filesystem invariant",
        run: fsck,
    },
    Command {
        name: "mkfs",
        usage: "DEVICE [--yes]",
        help: "format a device with daxfs (erases it)",
        run: mkfs,
    },
];

fn ls(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let mut storage = STORAGE.lock();
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
        let index = storage.volume_of(device)?;
        if storage.filesystem(index).is_none() {
            return Err(alloc::format!(
                "{} is exported raw, not a filesystem",
                device
            ));
        }
    } else if !storage
        .volumes
        .iter()
        .any(|v| matches!(v.role, Role::Filesystem(_)))
    {
        return Err("no filesystem is mounted".into());
    }
    let mut shown = 0;
    for index in 0..storage.volumes.len() {
        let name = storage.volumes[index].device.clone();
        if device.is_some_and(|d| d != name) {
            continue;
        }
        let Some(fs) = storage.filesystem(index) else {
            continue;
        };
        let entries = fs.list(after, 1000);
        for entry in &entries {
            println!("{:>14}  {}:{}", entry.size, name, entry.name);
        }
        shown += entries.len();
        if entries.len() == 1000 {
            println!("(more: ls {} {})", name, entries[999].name);
        }
    }
    println!("{} file(s)", shown);
    Ok(())
}

fn stat(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [name] = args else {
        return Err("usage: stat NAME".into());
    };
    let mut storage = STORAGE.lock();
    let found = storage.lookup(name)?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let stat = fs.stat(found.file).map_err(|e| e.to_string())?;
    println!("name:       {}", stat.name);
    println!("size:       {} ({})", stat.size, human(stat.size));
    println!("allocated:  {}", human(stat.allocated_bytes));
    println!("shared:     {}", human(stat.shared_bytes));
    println!("in 2 MiB:   {}", human(stat.huge_bytes));
    println!("extents:    {}", stat.extent_count);
    Ok(())
}

fn create(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [name, size] = args else {
        return Err("usage: create NAME SIZE".into());
    };
    let size = parse_size(size)?;
    let mut storage = STORAGE.lock();
    let (volume, bare) = storage.target(name)?;
    let fs = storage.filesystem(volume).ok_or("not a filesystem")?;
    let file = fs.create(bare).map_err(|e| e.to_string())?;
    if let Err(error) = fs.truncate(file, size) {
        let _ = fs.unlink(bare);
        return Err(error.to_string());
    }
    println!("created {} ({} bytes)", bare, size);
    Ok(())
}

fn rm(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [name] = args else {
        return Err("usage: rm NAME".into());
    };
    let mut storage = STORAGE.lock();
    let found = storage.lookup(name)?;
    let (_, bare) = storage.split_qualified(name)?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    fs.unlink(bare).map_err(|e| e.to_string())?;
    println!("removed {}", bare);
    Ok(())
}

fn mv(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [from, to] = args else {
        return Err("usage: mv FROM TO".into());
    };
    let mut storage = STORAGE.lock();
    let found = storage.lookup(from)?;
    let (_, from_bare) = storage.split_qualified(from)?;
    let (to_volume, to_bare) = storage.split_qualified(to)?;
    if to_volume.is_some_and(|v| v != found.volume) {
        return Err("cannot move a file to another device".into());
    }
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let replaces = fs.lookup(to_bare).is_ok() && from_bare != to_bare;
    fs.rename(from_bare, to_bare).map_err(|e| e.to_string())?;
    println!(
        "renamed {} to {}{}",
        from_bare,
        to_bare,
        if replaces { " (replaced it)" } else { "" }
    );
    Ok(())
}

fn clone(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [source, destination] = args else {
        return Err("usage: clone SRC DST".into());
    };
    let mut storage = STORAGE.lock();
    let found = storage.lookup(source)?;
    let (_, source_bare) = storage.split_qualified(source)?;
    let (to_volume, destination_bare) = storage.split_qualified(destination)?;
    if to_volume.is_some_and(|v| v != found.volume) {
        return Err("a clone must stay on the device of its source".into());
    }
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    let started = time::now_us();
    fs.clone_file(source_bare, destination_bare)
        .map_err(|e| e.to_string())?;
    println!(
        "cloned {} to {} in {} us",
        source_bare,
        destination_bare,
        time::now_us() - started
    );
    Ok(())
}

fn truncate(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [name, size] = args else {
        return Err("usage: truncate NAME SIZE".into());
    };
    let size = parse_size(size)?;
    let mut storage = STORAGE.lock();
    let found = storage.lookup(name)?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    fs.truncate(found.file, size).map_err(|e| e.to_string())?;
    println!("truncated to {} bytes", size);
    Ok(())
}

fn parse_offset(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|_| alloc::format!("bad offset '{}'", text))
}

fn write(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let [name, offset, words @ ..] = args else {
        return Err("usage: write NAME OFFSET TEXT".into());
    };
    if words.is_empty() {
        return Err("usage: write NAME OFFSET TEXT".into());
    }
    let offset = parse_offset(offset)?;
    let text = words.join(" ");
    let mut storage = STORAGE.lock();
    let found = storage.lookup(name)?;
    let fs = storage.filesystem(found.volume).ok_or("not a filesystem")?;
    fs.write(found.file, offset, text.as_bytes())
        .and_then(|()| fs.persist(found.file))
        .map_err(|e| e.to_string())?;
    println!("wrote {} bytes at {}", text.len(), offset);
    Ok(())
}

fn cat(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let (name, offset, length) = match args {
        [name] => (*name, 0, 4096),
        [name, offset] => (*name, parse_offset(offset)?, 4096),
        [name, offset, length] => (*name, parse_offset(offset)?, parse_size(length)?),
        _ => return Err("usage: cat NAME [OFFSET [LENGTH]]".into()),
    };
    let length = length.min(64 * 1024) as usize;
    let mut storage = STORAGE.lock();
    let found = storage.lookup(name)?;
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
    println!("{}", text);
    Ok(())
}

fn df(_: &mut Context, args: &[&str]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: df".into());
    }
    let mut storage = STORAGE.lock();
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>10} {:>12}",
        "device", "size", "used", "free", "files", "2MiB free"
    );
    for index in 0..storage.volumes.len() {
        let name = storage.volumes[index].device.clone();
        match &storage.volumes[index].role {
            Role::Raw(block) => println!(
                "{:<8} {:>12} (exported raw)",
                name,
                human(block_size(block))
            ),
            Role::Filesystem(_) => {
                let Some(fs) = storage.filesystem(index) else {
                    continue;
                };
                let s = fs.statfs();
                let total = s.data_blocks * s.block_size;
                let free = s.free_blocks * s.block_size;
                println!(
                    "{:<8} {:>12} {:>12} {:>12} {:>4}/{:<5} {:>12}",
                    name,
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
    Ok(())
}

fn fsck(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let mut storage = STORAGE.lock();
    match args {
        [] => {}
        [device] => {
            // Name what is wrong with the device instead of "nothing to
            // check" (typo, unmounted or raw).
            let index = storage.volume_of(device)?;
            if storage.filesystem(index).is_none() {
                return Err(alloc::format!(
                    "{} is exported raw, not a filesystem",
                    device
                ));
            }
        }
        _ => return Err("usage: fsck [DEVICE]".into()),
    }
    let mut checked = 0;
    let mut problems = 0;
    for index in 0..storage.volumes.len() {
        let name = storage.volumes[index].device.clone();
        if args.first().is_some_and(|d| *d != name) {
            continue;
        }
        let Some(fs) = storage.filesystem(index) else {
            continue;
        };
        let started = time::now_us();
        let report = fs.fsck();
        println!(
            "{}: {} ({} ms)",
            name,
            report,
            (time::now_us() - started) / 1000
        );
        checked += 1;
        problems += report.problems.len();
    }
    if checked == 0 {
        return Err("no filesystem to check".into());
    }
    if problems > 0 {
        return Err(alloc::format!("{} problem(s) found", problems));
    }
    Ok(())
}

fn mkfs(_: &mut Context, args: &[&str]) -> Result<(), String> {
    let (device, confirmed) = match args {
        [device] => (*device, false),
        [device, "--yes"] => (*device, true),
        _ => return Err("usage: mkfs DEVICE [--yes]".into()),
    };
    let mut storage = STORAGE.lock();
    if storage.volumes.iter().any(|v| v.device == device) {
        return Err(alloc::format!(
            "{} is in use (mounted or exported); it cannot be formatted now",
            device
        ));
    }
    if let Some(owner) = pmem::taken_by(device) {
        // Taken but not a volume: a mount at boot failed with the memory.
        return Err(alloc::format!(
            "{} is held by {} since a failed mount; reboot to format it",
            device,
            owner
        ));
    }
    let size = pmem::with_device(device, |d| block_size(&d.block))
        .ok_or_else(|| alloc::format!("no such device: {}", device))?;
    if !confirmed {
        println!(
            "mkfs: this erases everything on {} ({}). Run `mkfs {} --yes` to confirm.",
            device,
            human(size),
            device
        );
        return Ok(());
    }
    let index = device.trim_start_matches("pmem").parse().unwrap_or(u8::MAX);
    attach(&mut storage, device, index, true)
}
