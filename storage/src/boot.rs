//! What each pmem device becomes at boot.
//!
//! [`decide`] is the whole policy as a pure function of the device name,
//! what [`daxfs::Filesystem::probe`] found and the boot configuration:
//! - named by `export_raw=`: exported raw over NBD;
//! - holding daxfs: mounted (recovering after an unclean shutdown), unless
//!   its format version is newer than this build understands;
//! - blank and `format=if-blank`: formatted, then mounted;
//! - anything else (blank with `format=never`, foreign data, a damaged
//!   filesystem, a filesystem larger than its device): left alone with a
//!   message, still reachable with `blk` and `mkfs`.
//!
//! [`boot`] applies it to every device of an [`Environment`]: a device that
//! becomes a volume is taken from the environment (in the kernel its frames
//! pass from the device to the new owner in the page-frame table, so
//! `blk write` cannot scribble over a mounted filesystem).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use daxbox_bootconfig::FormatPolicy;
use daxbox_persist::PersistentMemory;
use daxbox_pmem::block::BlockDevice;
use daxbox_pmem::frames::Owner;
use daxfs::{Filesystem, FormatOptions, Probe};

use crate::{device_index, human, Environment, Role, Storage, Volume};

/// The boot configuration's say in what devices become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPolicy {
    /// Whether a blank device may be formatted (`format=`).
    pub format: FormatPolicy,
    /// Devices exported raw instead of mounted (`export_raw=`).
    pub export_raw: Vec<String>,
}

/// Why a device is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveReason {
    /// daxfs of a format version newer than this build supports. Mounting
    /// would fail, and a failed mount loses the device until the next
    /// boot: it is refused before the device is taken.
    NewerFormat {
        /// Version on media.
        version: u32,
    },
    /// Blank, and the policy is `format=never`.
    Blank,
    /// Something that is not daxfs.
    Foreign,
    /// daxfs that spans more than the device: the device is smaller than
    /// when it was formatted (or grown). Nothing is wrong with the data.
    DeviceTooSmall {
        /// Bytes the filesystem spans.
        needed: u64,
        /// Bytes the device has.
        available: u64,
    },
    /// A daxfs image that cannot be mounted.
    Damaged(daxfs::Error),
}

/// What a device becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Exported raw over NBD.
    ExportRaw,
    /// daxfs mounted; `recover` after an unclean shutdown.
    Mount {
        /// The last mount did not end with an unmount.
        recover: bool,
    },
    /// Blank: formatted, then mounted.
    Format,
    /// Not touched.
    LeaveAlone {
        /// Why.
        reason: LeaveReason,
    },
}

impl Decision {
    /// The line printed when the decision is made, if any (the outcome of
    /// a mount or export is printed once it happened).
    pub fn message(&self, device: &str) -> Option<String> {
        let text = match self {
            Decision::ExportRaw | Decision::Format | Decision::Mount { recover: false } => {
                return None
            }
            Decision::Mount { recover: true } => alloc::format!(
                "storage: {} was not unmounted cleanly; mounting with recovery",
                device
            ),
            Decision::LeaveAlone { reason } => match reason {
                LeaveReason::NewerFormat { version } => alloc::format!(
                    "storage: {} holds daxfs format version {} (this kernel supports up to {}); left alone",
                    device,
                    version,
                    daxfs::format::FORMAT_VERSION
                ),
                LeaveReason::Blank => alloc::format!(
                    "storage: {} is blank; not formatting (boot config format=if-blank, or `mkfs {}`)",
                    device, device
                ),
                LeaveReason::Foreign => alloc::format!(
                    "storage: {} holds something that is not daxfs; left alone (`mkfs {}` erases it)",
                    device, device
                ),
                LeaveReason::DeviceTooSmall { needed, available } => alloc::format!(
                    "storage: {}: filesystem needs {} but the device is {}; not mounted (data untouched; boot with the larger size)",
                    device, human(*needed), human(*available)
                ),
                LeaveReason::Damaged(error) => alloc::format!(
                    "storage: {}: damaged filesystem, not mounted: {} (data left as it is)",
                    device, error
                ),
            },
        };
        Some(text)
    }
}

/// The boot-time decision for device `device` whose probe found `probe`.
pub fn decide(device: &str, probe: &Probe, policy: &BootPolicy) -> Decision {
    if policy.export_raw.iter().any(|d| d == device) {
        return Decision::ExportRaw;
    }
    match probe {
        Probe::Daxfs { version, .. } if *version > daxfs::format::FORMAT_VERSION => {
            Decision::LeaveAlone {
                reason: LeaveReason::NewerFormat { version: *version },
            }
        }
        Probe::Daxfs { clean, .. } => Decision::Mount { recover: !clean },
        Probe::Blank if policy.format == FormatPolicy::IfBlank => Decision::Format,
        Probe::Blank => Decision::LeaveAlone {
            reason: LeaveReason::Blank,
        },
        Probe::Foreign => Decision::LeaveAlone {
            reason: LeaveReason::Foreign,
        },
        Probe::Corrupt(daxfs::Error::Truncated { needed, available }) => Decision::LeaveAlone {
            reason: LeaveReason::DeviceTooSmall {
                needed: *needed,
                available: *available,
            },
        },
        Probe::Corrupt(error) => Decision::LeaveAlone {
            reason: LeaveReason::Damaged(error.clone()),
        },
    }
}

/// Looks at every available device of `env` and mounts, formats or
/// exports it, printing what happened to `out`.
pub fn boot<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    policy: &BootPolicy,
    out: &mut dyn Write,
) {
    let devices = env.available_devices();
    // A typo in export_raw= would otherwise pass without a word, and the
    // export the operator expects would simply not exist.
    for raw in &policy.export_raw {
        if !devices.contains(raw) {
            let _ = writeln!(out, "storage: export_raw={}: no such device (ignored)", raw);
        }
    }
    for name in devices {
        boot_device(storage, env, &name, policy, out);
    }
}

/// Applies the boot policy to one available device of `env`: what
/// [`boot`] does for each device, and what a device that appears later
/// (an NVDIMM hot-added while running, a device brought back with `pmem
/// online`) goes through. Prints the decision and the outcome to `out`.
pub fn boot_device<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    name: &str,
    policy: &BootPolicy,
    out: &mut dyn Write,
) {
    let name = name.to_string();
    let Some(probe) = env.inspect(&name, |block| Filesystem::probe(block.memory())) else {
        let _ = writeln!(out, "storage: {}: no such device", name);
        return;
    };
    let decision = decide(&name, &probe, policy);
    if let Some(message) = decision.message(&name) {
        let _ = writeln!(out, "{}", message);
    }
    let index = device_index(&name);
    let format = match decision {
        Decision::ExportRaw => {
            match env.take(&name, Owner::Device(index)) {
                Some(block) => {
                    let _ = writeln!(
                        out,
                        "storage: {} exported raw ({})",
                        name,
                        human(block.size())
                    );
                    storage.volumes.push(Volume {
                        device: name,
                        role: Role::Raw(block),
                    });
                    sort_volumes(storage);
                }
                None => {
                    let _ = writeln!(out, "storage: {}: cannot take the device", name);
                }
            }
            return;
        }
        Decision::LeaveAlone { .. } => return,
        Decision::Mount { recover } => {
            if recover {
                storage.metrics.recovery.unclean_mounts += 1;
            }
            false
        }
        Decision::Format => true,
    };
    if let Err(message) = attach(storage, env, &name, format, out) {
        let _ = writeln!(out, "storage: {}: {}", name, message);
    }
    sort_volumes(storage);
}

/// Volumes stay in device order (bare names resolve to the first
/// filesystem, and a device added later must not change which that is).
pub(crate) fn sort_volumes<M: PersistentMemory>(storage: &mut Storage<M>) {
    storage
        .volumes
        .sort_by_key(|v| daxbox_syntax::device_index(&v.device).unwrap_or(u16::MAX));
}

/// Takes device `name` from `env` and mounts it (formatting it first when
/// `format`), adding a volume and printing the outcome.
pub fn attach<M: PersistentMemory, E: Environment<M>>(
    storage: &mut Storage<M>,
    env: &mut E,
    name: &str,
    format: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let index = device_index(name);
    let block = env
        .take(name, Owner::Filesystem(index))
        .ok_or("the device is already in use")?;
    let memory = block.into_memory();
    let started = env.now_us();
    let budget = storage.mount_budget();
    let result = if format {
        Filesystem::format_with_budget(
            memory,
            FormatOptions {
                uuid: env.new_uuid(index),
                max_files: None,
            },
            budget,
        )
    } else {
        Filesystem::mount_with_budget(memory, budget)
    };
    let elapsed = env.now_us().saturating_sub(started);
    match result {
        Ok(fs) => {
            let recovered = fs.recovered();
            let recovery = &mut storage.metrics.recovery;
            recovery.journal_replays += u64::from(recovered.journal_replayed);
            recovery.superblock_repairs += u64::from(recovered.superblock_repaired);
            let statfs = fs.statfs();
            let _ = writeln!(
                out,
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
        // The memory went into the failed mount and is gone with it; the
        // device stays out of use until the next boot. A refused mount
        // wrote nothing (daxfs validates before it writes).
        Err(error @ daxfs::Error::MountTooLarge { .. }) => Err(alloc::format!(
            "{} (not mounted, data left as it is)",
            error
        )),
        Err(error) => Err(alloc::format!("mount failed: {}", error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeEnvironment, Fixture, MIB};
    use alloc::vec;

    fn policy(format: FormatPolicy, raw: &[&str]) -> BootPolicy {
        BootPolicy {
            format,
            export_raw: raw.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn decision_table() {
        let if_blank = policy(FormatPolicy::IfBlank, &["pmem1"]);
        let never = policy(FormatPolicy::Never, &[]);
        let current = daxfs::format::FORMAT_VERSION;
        let daxfs = |version, clean| Probe::Daxfs { version, clean };
        let cases = [
            // export_raw wins over whatever the device holds.
            ("pmem1", daxfs(current, true), &if_blank, Decision::ExportRaw, None),
            ("pmem1", Probe::Foreign, &if_blank, Decision::ExportRaw, None),
            ("pmem0", daxfs(current, true), &if_blank, Decision::Mount { recover: false }, None),
            (
                "pmem0",
                daxfs(current, false),
                &never,
                Decision::Mount { recover: true },
                Some("storage: pmem0 was not unmounted cleanly; mounting with recovery".to_string()),
            ),
            (
                "pmem0",
                daxfs(current + 1, true),
                &if_blank,
                Decision::LeaveAlone { reason: LeaveReason::NewerFormat { version: current + 1 } },
                Some(alloc::format!(
                    "storage: pmem0 holds daxfs format version {} (this kernel supports up to {}); left alone",
                    current + 1,
                    current
                )),
            ),
            ("pmem0", Probe::Blank, &if_blank, Decision::Format, None),
            (
                "pmem2",
                Probe::Blank,
                &never,
                Decision::LeaveAlone { reason: LeaveReason::Blank },
                Some("storage: pmem2 is blank; not formatting (boot config format=if-blank, or `mkfs pmem2`)".to_string()),
            ),
            (
                "pmem0",
                Probe::Foreign,
                &if_blank,
                Decision::LeaveAlone { reason: LeaveReason::Foreign },
                Some("storage: pmem0 holds something that is not daxfs; left alone (`mkfs pmem0` erases it)".to_string()),
            ),
            (
                "pmem0",
                Probe::Corrupt(daxfs::Error::Foreign),
                &if_blank,
                Decision::LeaveAlone { reason: LeaveReason::Damaged(daxfs::Error::Foreign) },
                Some(alloc::format!(
                    "storage: pmem0: damaged filesystem, not mounted: {} (data left as it is)",
                    daxfs::Error::Foreign
                )),
            ),
        ];
        for (device, probe, policy, expected, message) in cases {
            let decision = decide(device, &probe, policy);
            assert_eq!(decision, expected, "{device} {probe:?}");
            assert_eq!(decision.message(device), message, "{device} {probe:?}");
        }
    }

    #[test]
    fn a_device_smaller_than_its_filesystem_says_so_not_damaged() {
        let probe = Probe::Corrupt(daxfs::Error::Truncated {
            needed: 2 << 30,
            available: 512 * MIB,
        });
        let decision = decide("pmem0", &probe, &policy(FormatPolicy::IfBlank, &[]));
        assert_eq!(
            decision.message("pmem0").as_deref(),
            Some(
                "storage: pmem0: filesystem needs 2 GiB but the device is 512 MiB; not mounted \
                 (data untouched; boot with the larger size)"
            )
        );
        // The same through boot: an 8 MiB filesystem on a 4 MiB device.
        let mut f = Fixture::with_devices(&[8 * MIB], &[]);
        f.storage.shutdown();
        let mut image = f.env.image("pmem0");
        image.truncate((4 * MIB) as usize);
        let mut env = FakeEnvironment::from_images(vec![image]);
        let mut storage = Storage::new();
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &policy(FormatPolicy::IfBlank, &[]),
            &mut out,
        );
        assert_eq!(
            out,
            "storage: pmem0: filesystem needs 8 MiB but the device is 4 MiB; not mounted \
             (data untouched; boot with the larger size)\n"
        );
        assert!(storage.volumes.is_empty());
        assert_eq!(env.available_devices(), vec!["pmem0".to_string()]);
    }

    #[test]
    fn a_device_added_after_boot_gets_the_boot_policy() {
        let mut env = FakeEnvironment::new(&[16 * MIB]);
        let mut storage = Storage::new();
        let mut out = String::new();
        let if_blank = policy(FormatPolicy::IfBlank, &[]);
        boot(&mut storage, &mut env, &if_blank, &mut out);
        // A blank NVDIMM is plugged: formatted and mounted, after pmem0.
        let name = env.add_device(vec![0; 16 * MIB as usize]);
        assert_eq!(name, "pmem1");
        let mut out = String::new();
        boot_device(&mut storage, &mut env, &name, &if_blank, &mut out);
        assert!(
            out.starts_with("storage: pmem1 formatted and mounted daxfs"),
            "{out}"
        );
        let devices: Vec<&str> = storage.volumes.iter().map(|v| v.device.as_str()).collect();
        assert_eq!(devices, ["pmem0", "pmem1"]);
        assert_eq!(
            storage.default_filesystem(),
            Some(0),
            "pmem0 stays the default"
        );
        assert_eq!(env.taken_by("pmem1"), Some(Owner::Filesystem(1)));
        // One holding daxfs is mounted, not formatted (a copy of a mounted
        // image: recovered); foreign bytes and a
        // blank device under format=never are left alone.
        let image = env.image("pmem1");
        let name = env.add_device(image);
        let mut out = String::new();
        boot_device(&mut storage, &mut env, &name, &if_blank, &mut out);
        assert!(out.contains("storage: pmem2 mounted daxfs"), "{out}");
        assert!(!out.contains("formatted"), "{out}");
        let mut junk = vec![0; 8 * MIB as usize];
        junk[..4].copy_from_slice(b"junk");
        let name = env.add_device(junk);
        let mut out = String::new();
        boot_device(&mut storage, &mut env, &name, &if_blank, &mut out);
        assert!(
            out.contains("pmem3 holds something that is not daxfs"),
            "{out}"
        );
        let name = env.add_device(vec![0; 8 * MIB as usize]);
        let mut out = String::new();
        let never = policy(FormatPolicy::Never, &[]);
        boot_device(&mut storage, &mut env, &name, &never, &mut out);
        assert_eq!(storage.volumes.len(), 3, "{out}");
        assert_eq!(env.taken_by("pmem4"), None);
        // A device named by export_raw= is exported raw.
        let name = env.add_device(vec![0; 8 * MIB as usize]);
        let mut out = String::new();
        boot_device(
            &mut storage,
            &mut env,
            &name,
            &policy(FormatPolicy::IfBlank, &["pmem5"]),
            &mut out,
        );
        assert_eq!(out, "storage: pmem5 exported raw (8 MiB)\n");
        // No such device: said so.
        let mut out = String::new();
        boot_device(&mut storage, &mut env, "pmem9", &if_blank, &mut out);
        assert_eq!(out, "storage: pmem9: no such device\n");
    }

    #[test]
    fn boot_formats_mounts_exports_and_leaves_alone() {
        let mut env = FakeEnvironment::new(&[16 * MIB, 16 * MIB, 8 * MIB, 8 * MIB]);
        // pmem3 holds foreign bytes.
        env.device_memory_mut("pmem3").bytes_mut()[..4].copy_from_slice(b"junk");
        let mut storage = Storage::new();
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &policy(FormatPolicy::IfBlank, &["pmem2", "pmem7"]),
            &mut out,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "storage: export_raw=pmem7: no such device (ignored)"
        );
        assert!(
            lines[1].starts_with("storage: pmem0 formatted and mounted daxfs in 1 ms: 0 files, "),
            "{out}"
        );
        assert!(
            lines[2].starts_with("storage: pmem1 formatted and mounted daxfs in 1 ms"),
            "{out}"
        );
        assert_eq!(lines[3], "storage: pmem2 exported raw (8 MiB)");
        assert_eq!(
            lines[4],
            "storage: pmem3 holds something that is not daxfs; left alone (`mkfs pmem3` erases it)"
        );
        assert_eq!(lines.len(), 5, "{out}");
        let devices: Vec<&str> = storage.volumes.iter().map(|v| v.device.as_str()).collect();
        assert_eq!(devices, ["pmem0", "pmem1", "pmem2"]);
        assert_eq!(env.taken_by("pmem0"), Some(Owner::Filesystem(0)));
        assert_eq!(env.taken_by("pmem2"), Some(Owner::Device(2)));
        assert_eq!(env.taken_by("pmem3"), None);
        assert_eq!(env.available_devices(), vec!["pmem3".to_string()]);
    }

    #[test]
    fn boot_never_formats_with_format_never_and_remounts_after_a_crash() {
        let mut env = FakeEnvironment::new(&[16 * MIB]);
        let mut storage = Storage::new();
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &policy(FormatPolicy::Never, &[]),
            &mut out,
        );
        assert_eq!(
            out,
            "storage: pmem0 is blank; not formatting (boot config format=if-blank, or `mkfs pmem0`)\n"
        );
        assert!(storage.volumes.is_empty());

        // Format, write a file, "crash" (no unmount), boot again.
        let mut f = Fixture::with_devices(&[16 * MIB], &[]);
        f.run("create kept 4K").unwrap();
        f.run("write kept 0 hello").unwrap();
        let image = f.env.image("pmem0");
        let mut env = FakeEnvironment::from_images(vec![image]);
        let mut storage = Storage::new();
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &policy(FormatPolicy::Never, &[]),
            &mut out,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "storage: pmem0 was not unmounted cleanly; mounting with recovery"
        );
        assert!(
            lines[1].starts_with("storage: pmem0 mounted daxfs in 1 ms: 1 files, "),
            "{out}"
        );
        assert!(storage.lookup("kept").is_ok());
    }

    #[test]
    fn boot_of_a_clean_image_prints_only_the_mount() {
        let mut f = Fixture::with_devices(&[16 * MIB], &[]);
        f.run("create a 4K").unwrap();
        f.storage.shutdown();
        let image = f.env.image("pmem0");
        let mut env = FakeEnvironment::from_images(vec![image]);
        let mut storage = Storage::new();
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &policy(FormatPolicy::IfBlank, &[]),
            &mut out,
        );
        assert!(
            out.starts_with("storage: pmem0 mounted daxfs in 1 ms: 1 files, "),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn a_device_over_the_mount_budget_is_refused_untouched_and_the_others_mount() {
        let mut f = Fixture::with_devices(&[32 * MIB, 16 * MIB], &[]);
        for i in 0..300 {
            f.run(&alloc::format!("create pmem0:f{i} 4K")).unwrap();
        }
        f.run("create pmem1:small 4K").unwrap();
        f.storage.shutdown();
        let images = vec![f.env.image("pmem0"), f.env.image("pmem1")];
        let before = images[0].clone();
        let mut env = FakeEnvironment::from_images(images);
        let mut storage = Storage::new();
        let budget: &'static daxbox_budget::Budget =
            Box::leak(Box::new(daxbox_budget::Budget::new("mount", 128 * 1024)));
        storage.set_mount_budget(budget);
        let mut out = String::new();
        boot(
            &mut storage,
            &mut env,
            &policy(FormatPolicy::IfBlank, &[]),
            &mut out,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with(
                "storage: pmem0: mount refused: the image needs at least "
            ) && lines[0].ends_with(
                "bytes of memory, the mount budget is 131072 bytes (0 held by others) (not mounted, data left as it is)"
            ),
            "{out}"
        );
        assert!(
            lines[1].starts_with("storage: pmem1 mounted daxfs in 1 ms: 1 files, "),
            "{out}"
        );
        assert!(storage.lookup("small").is_ok());
        assert!(
            env.image("pmem0") == before,
            "the refused device was written"
        );
        assert!(budget.stats().used > 0);
    }
}
