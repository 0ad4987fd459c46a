//! The read-only policy: which exports NBD clients may not write.
//!
//! The rules are `daxbox-bootconfig`'s [`ReadOnlyRule`]s (`readonly=` in
//! the boot config, `--readonly` of `daxbox-serve`): `NAME`,
//! `pmemN:NAME`, `pmemN:`, `pmemN`, `*`. A rule names a file the way a
//! client opens it, but read-only is a property of the file itself (its
//! daxfs [`FileId`], slot and generation), decided on every write-type
//! request (the engine asks [`crate::StorageBackend`] through
//! `Backend::check_write`), not once from the name at the handshake:
//!
//! - a file is read-only while a rule's name opens it (a file renamed,
//!   created or cloned onto a covered name is read-only at once, for the
//!   sessions that opened it writable too: their writes get EPERM);
//! - a file a rule has covered stays read-only for the rest of the boot,
//!   whatever it is renamed to ([`Storage::refresh_read_only`] records it
//!   after every shell command, before any later rename can happen);
//! - `*`, `pmemN` and `pmemN:` cover every export, or every export of the
//!   device, whatever the names; a `pmemN:NAME` rule on a device that is
//!   exported raw covers the raw export (it names that device, and cannot
//!   be applied as written);
//! - read-only is never lifted during a boot; at the next boot the rules
//!   apply to names again (nothing is stored on the media).
//!
//! A rule that could not be used (a bad value: [`ReadOnlyRule::failed`])
//! stands for every export, or every export of the device it named, and
//! its reason is shown at boot ([`Storage::read_only_report`]) and by
//! `nbd`.
//!
//! Bounds: the rules are at most `daxbox_bootconfig::MAX_NAMES` + 1 (the
//! parser's limit); the files recorded as covered are live files (a
//! removed file's record is dropped at the next refresh), so at most the
//! files of the mounted filesystems.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use daxbox_bootconfig::{ReadOnlyRule, ReadOnlyTarget};
use daxbox_persist::PersistentMemory;
use daxfs::{FileId, Filesystem};

use crate::{FileRef, Role, Storage};

/// The rules and the files they have covered this boot.
pub struct ReadOnlyPolicy {
    rules: Vec<ReadOnlyRule>,
    /// Files a rule has covered, by device name, with the identity (UUID)
    /// of the filesystem they are on: they stay read-only whatever they
    /// are renamed to. A device formatted anew drops its records.
    covered: BTreeMap<String, Covered>,
}

/// The covered files of one device's filesystem.
#[derive(Default)]
struct Covered {
    uuid: [u8; 16],
    files: BTreeSet<FileId>,
}

impl Default for ReadOnlyPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadOnlyPolicy {
    /// No rules (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            rules: Vec::new(),
            covered: BTreeMap::new(),
        }
    }
}

impl<M: PersistentMemory> Storage<M> {
    /// Sets the read-only rules and applies them to the files there are.
    pub fn set_read_only(&mut self, rules: Vec<ReadOnlyRule>) {
        self.read_only.rules = rules;
        self.read_only.covered.clear();
        self.refresh_read_only();
    }

    /// The read-only rules.
    pub fn read_only_rules(&self) -> &[ReadOnlyRule] {
        &self.read_only.rules
    }

    /// Records every file a rule's name opens now, so that it stays
    /// read-only whatever it is renamed to, and forgets removed files.
    /// Called after every shell command (`commands::run`) and when the
    /// rules are set: between two calls no name changes.
    pub fn refresh_read_only(&mut self) {
        if self.read_only.rules.is_empty() {
            return;
        }
        let volumes = &self.volumes;
        self.read_only.covered.retain(|device, covered| {
            // A device not in use now keeps its records, for when it is
            // mounted again (file identities survive remounts).
            if let Some(volume) = volumes.iter().find(|v| &v.device == device) {
                match &volume.role {
                    Role::Filesystem(fs) if fs.statfs().uuid == covered.uuid => {
                        // A zero-length read fails only for a removed file.
                        covered
                            .files
                            .retain(|file| fs.read(*file, 0, &mut []).is_ok())
                    }
                    // Formatted anew, or exported raw now.
                    _ => covered.files.clear(),
                }
            }
            !covered.files.is_empty()
        });
        let mut found = Vec::new();
        for rule in &self.read_only.rules {
            if let Some(file) = self.resolve(&rule.target) {
                found.push(file);
            }
        }
        for file in found {
            let volume = &self.volumes[file.volume];
            let Some(fs) = filesystem(&volume.role) else {
                continue;
            };
            let covered = self
                .read_only
                .covered
                .entry(volume.device.clone())
                .or_insert_with(|| Covered {
                    uuid: fs.statfs().uuid,
                    files: BTreeSet::new(),
                });
            covered.files.insert(file.file);
        }
    }

    /// The file that rule target `target` names now, if it names one.
    fn resolve(&self, target: &ReadOnlyTarget) -> Option<FileRef> {
        match target {
            ReadOnlyTarget::File { device: None, name } => self.lookup_bare(name),
            ReadOnlyTarget::File {
                device: Some(device),
                name,
            } => {
                let volume = self.volumes.iter().position(|v| &v.device == device)?;
                let file = filesystem(&self.volumes[volume].role)?.lookup(name).ok()?;
                Some(FileRef { volume, file })
            }
            ReadOnlyTarget::All | ReadOnlyTarget::Device { .. } => None,
        }
    }

    /// What the bare export name `name` opens: the file of that name on
    /// the first filesystem that has one (as [`Storage::lookup`] does for
    /// a name without a device).
    fn lookup_bare(&self, name: &str) -> Option<FileRef> {
        self.volumes.iter().enumerate().find_map(|(volume, v)| {
            let file = filesystem(&v.role)?.lookup(name).ok()?;
            Some(FileRef { volume, file })
        })
    }

    /// Whether a rule covers every export of the device of `volume`
    /// (`*`, `pmemN`, `pmemN:`), or it is exported raw and a rule names
    /// a file on it.
    fn device_read_only(&self, volume: usize) -> bool {
        let Some(v) = self.volumes.get(volume) else {
            return true;
        };
        let raw = matches!(v.role, Role::Raw(_));
        self.read_only.rules.iter().any(|rule| match &rule.target {
            ReadOnlyTarget::All => true,
            ReadOnlyTarget::Device { device, .. } => *device == v.device,
            ReadOnlyTarget::File {
                device: Some(device),
                ..
            } => raw && *device == v.device,
            ReadOnlyTarget::File { device: None, .. } => false,
        })
    }

    /// Whether the raw export of `volume` is read-only.
    pub fn raw_read_only(&self, volume: usize) -> bool {
        !self.read_only.rules.is_empty() && self.device_read_only(volume)
    }

    /// Whether file `file` on `volume` is read-only now: a device-wide
    /// rule, a rule that covered it earlier this boot, or a rule whose
    /// name opens it now.
    pub fn file_read_only(&self, volume: usize, file: FileId) -> bool {
        if self.read_only.rules.is_empty() {
            return false;
        }
        if self.device_read_only(volume) {
            return true;
        }
        let device = self.volumes[volume].device.as_str();
        if self
            .read_only
            .covered
            .get(device)
            .is_some_and(|covered| covered.files.contains(&file))
        {
            return true;
        }
        let this = FileRef { volume, file };
        self.read_only
            .rules
            .iter()
            .any(|rule| self.resolve(&rule.target) == Some(this))
    }

    /// One line per rule that stands in for one that could not be used
    /// (`read-only (failing closed): every export: bootconfig line 3:
    /// readonly '': an empty name`), and per rule naming a device that is
    /// not in use; printed at boot and by `nbd`.
    pub fn read_only_report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for rule in &self.read_only.rules {
            if let Some(reason) = &rule.failed {
                lines.push(alloc::format!(
                    "read-only (failing closed): {}: {}",
                    rule.scope(),
                    reason
                ));
                continue;
            }
            let device = match &rule.target {
                ReadOnlyTarget::Device { device, .. }
                | ReadOnlyTarget::File {
                    device: Some(device),
                    ..
                } => device,
                _ => continue,
            };
            if !self.volumes.iter().any(|v| &v.device == device) {
                lines.push(alloc::format!(
                    "read-only: {}: {} is not mounted or exported (applies if it is)",
                    rule,
                    device
                ));
            }
        }
        lines
    }
}

fn filesystem<M: PersistentMemory>(role: &Role<M>) -> Option<&Filesystem<M>> {
    match role {
        Role::Filesystem(fs) => Some(fs),
        Role::Raw(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rules, Fixture};

    /// Read-only state of each export as `nbd` lists it.
    fn listing(f: &mut Fixture) -> String {
        f.ok("nbd")
    }

    #[test]
    fn the_name_limit_is_daxfs_s() {
        assert_eq!(daxbox_bootconfig::MAX_FILE_NAME, daxfs::format::MAX_NAME);
    }

    #[test]
    fn device_rules_and_rules_naming_a_raw_device() {
        // pmem0 and pmem1 filesystems, pmem2 raw, pmem3 left alone.
        let mut f = Fixture::standard();
        f.ok("create a 4K");
        f.ok("create pmem1:a 4K");
        f.ok("create pmem1:b 4K");
        f.storage.set_read_only(rules(&["pmem1:"]));
        assert_eq!(
            listing(&mut f),
            "NBD on port 10809: 4 export(s)\n  export a\n  export pmem1:a (read-only)\n  \
             export pmem1:b (read-only)\n  export pmem2\nallow: no rules; every export is open to every client\n0 connection(s)\n"
        );
        f.storage.set_read_only(rules(&["pmem2:x", "pmem1"]));
        assert_eq!(
            listing(&mut f),
            "NBD on port 10809: 4 export(s)\n  export a\n  export pmem1:a (read-only)\n  \
             export pmem1:b (read-only)\n  export pmem2 (read-only)\nallow: no rules; every export is open to every client\n0 connection(s)\n"
        );
        f.storage.set_read_only(rules(&["*"]));
        assert!(!listing(&mut f).contains("a\n"), "{}", listing(&mut f));
        // Rules on devices that are not in use say so.
        f.storage.set_read_only(rules(&["pmem3:x", "pmem9"]));
        assert_eq!(
            f.storage.read_only_report(),
            [
                "read-only: readonly=pmem3:x: pmem3 is not mounted or exported (applies if it is)",
                "read-only: readonly=pmem9: pmem9 is not mounted or exported (applies if it is)"
            ]
        );
    }

    #[test]
    fn a_rule_that_failed_makes_everything_read_only_and_says_why() {
        let mut f = Fixture::standard();
        f.ok("create a 4K");
        f.ok("create pmem1:b 4K");
        let (config, _) = daxbox_bootconfig::parse("readonly=\n");
        f.storage.set_read_only(config.readonly);
        assert_eq!(
            listing(&mut f),
            "NBD on port 10809: 3 export(s)\n  export a (read-only)\n  \
             export pmem1:b (read-only)\n  export pmem2 (read-only)\n\
             read-only (failing closed): every export: bootconfig line 1: readonly '': an \
             empty name\nallow: no rules; every export is open to every client\n0 connection(s)\n"
        );
        // Scoped to a device when the value named it.
        let long = "n".repeat(256);
        f.storage
            .set_read_only(rules(&[alloc::format!("pmem1:{long}").as_str()]));
        let text = listing(&mut f);
        assert!(
            text.contains("  export a\n  export pmem1:b (read-only)\n  export pmem2\n"),
            "{text}"
        );
        assert!(
            text.contains("read-only (failing closed): every export of pmem1: test 'pmem1:nnn"),
            "{text}"
        );
    }

    #[test]
    fn a_bare_rule_covers_what_the_bare_name_opens() {
        let mut f = Fixture::standard();
        // Only pmem1 has `x`: the bare name opens it, so the rule covers it.
        f.ok("create pmem1:x 4K");
        f.storage.set_read_only(rules(&["x"]));
        assert!(listing(&mut f).contains("  export pmem1:x (read-only)\n"));
        // Now pmem0 has one too: that is what `x` opens; pmem1's stays
        // read-only (covered earlier this boot).
        f.ok("create x 4K");
        let text = listing(&mut f);
        assert!(
            text.contains("  export x (read-only)\n  export pmem1:x (read-only)\n"),
            "{text}"
        );
        // A removed file's record is dropped; a new file by the name on
        // pmem1 is covered only if a rule's name opens it.
        f.ok("rm pmem1:x");
        f.ok("create pmem1:x 4K");
        let text = listing(&mut f);
        assert!(
            text.contains("  export x (read-only)\n  export pmem1:x\n"),
            "{text}"
        );
        let covered: usize = f
            .storage
            .read_only
            .covered
            .values()
            .map(|c| c.files.len())
            .sum();
        assert_eq!(covered, 1, "only live files are recorded");
    }

    #[test]
    fn canonical_names_of_names_that_look_like_something_else() {
        let mut f = Fixture::standard();
        for name in ["pmem1", "pmem2:y", "*", "plain:colon"] {
            f.ok(&alloc::format!("create pmem0:{name} 4K"));
        }
        assert_eq!(
            crate::export_names(&f.storage),
            [
                "pmem0:*",
                "plain:colon",
                "pmem0:pmem1",
                "pmem0:pmem2:y",
                "pmem2"
            ]
        );
        f.storage
            .set_read_only(rules(&["pmem0:pmem1", "plain:colon"]));
        let text = listing(&mut f);
        assert!(
            text.contains(
                "  export pmem0:*\n  export plain:colon (read-only)\n  \
                 export pmem0:pmem1 (read-only)\n  export pmem0:pmem2:y\n"
            ),
            "{text}"
        );
    }
}

#[cfg(test)]
mod reformat_tests {
    use crate::testing::{rules, Fixture};
    use crate::{Role, Volume};
    use alloc::boxed::Box;

    /// A device formatted anew (as `umount`, `mkfs`, `mount` would) does
    /// not inherit the covered files of its old filesystem, even where
    /// the new files get the same slot and generation.
    #[test]
    fn a_reformatted_device_forgets_its_covered_files() {
        let mut f = Fixture::standard();
        f.ok("create pmem1:ro 4K");
        f.storage.set_read_only(rules(&["pmem1:ro"]));
        f.ok("mv pmem1:ro pmem1:renamed");
        let old = f.storage.lookup("pmem1:renamed").unwrap();
        assert!(f.storage.file_read_only(old.volume, old.file));
        let volume = f.storage.volumes.remove(1);
        let Role::Filesystem(fs) = volume.role else {
            panic!("pmem1 holds a filesystem");
        };
        let options = daxfs::FormatOptions {
            uuid: [9; 16],
            max_files: None,
        };
        let fresh = daxfs::Filesystem::format(fs.into_memory(), options).unwrap();
        f.storage.volumes.insert(
            1,
            Volume {
                device: "pmem1".into(),
                role: Role::Filesystem(Box::new(fresh)),
            },
        );
        f.ok("create pmem1:new 4K");
        let new = f.storage.lookup("pmem1:new").unwrap();
        assert_eq!(
            new.file, old.file,
            "the same identity on the new filesystem"
        );
        assert!(!f.storage.file_read_only(new.volume, new.file));
    }
}
