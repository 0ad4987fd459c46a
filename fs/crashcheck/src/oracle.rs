//! The oracle: a model of what the filesystem API promises, and the test
//! of a recovered filesystem against it.
//!
//! The model is a map from file name to content. What a crash may leave is
//! described by two model states around the operation in flight: the state
//! after the last completed operation ("before") and the state as if the
//! operation in flight had completed ("after"). The namespace and every
//! file size must match one of the two exactly (operations are atomic),
//! except that with [`Semantics::sizes_deferred`] a file extended by writes
//! may also show a size it had since its size was last committed
//! ([`FileModel::sizes`]; daxfs FORMAT.md "Deferred size commits").
//! File *data* written since the file was last persisted is uncertain: each
//! data unit of a recovered file may show the current content or any older
//! version still listed in [`FileModel::older`] (a write that did not reach
//! media yet), but nothing else: not stale bytes of freed blocks, not data
//! from another file, not bytes cut off by a truncate.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

/// One operation of a workload, on file names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create an empty file.
    Create(String),
    /// Write `len` bytes of a pattern chosen by `seed` at `offset`.
    Write {
        /// File name.
        name: String,
        /// First byte.
        offset: u64,
        /// Bytes to write.
        len: u64,
        /// Pattern selector, so that successive writes differ.
        seed: u8,
    },
    /// Make `len` bytes at `offset` read as zeros, extending the file if
    /// needed; with `punch` whole blocks become holes. Not atomic, like a
    /// write of zeros (FORMAT.md "Data writes": every state in between
    /// reads as the old bytes or zeros).
    Zero {
        /// File name.
        name: String,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Unmap whole blocks instead of zeroing them.
        punch: bool,
    },
    /// Set the file size (grow with zeros or cut).
    Truncate(String, u64),
    /// Rename `from` to `to`, replacing `to` if it exists.
    Rename(String, String),
    /// Remove a file.
    Unlink(String),
    /// Create `dst` as a copy-on-write clone of `src`.
    Clone(String, String),
    /// Append `src` (the second name) to the end of `dst` (the first) and
    /// remove `src` (daxfs `append_from`; atomic when `dst`'s size is a
    /// multiple of 2 MiB, the only case the workloads use).
    Append(String, String),
    /// Gather the file's diverged 2 MiB chunks (daxfs `compact`, FORMAT.md
    /// "Compaction"): one commit per chunk, no visible change.
    Compact(String),
    /// Make a file's data durable.
    Persist(String),
    /// Make every file's data durable.
    PersistAll,
    /// Hold the file open (daxfs `open`); holds stack up, the last one is
    /// what [`Op::WriteHeld`] and [`Op::Close`] use. No visible change.
    Open(String),
    /// Write to the last held file through its handle. Only used after the
    /// held file's name is gone (an orphan, FORMAT.md "Orphans"), so the
    /// visible state does not change.
    WriteHeld {
        /// First byte.
        offset: u64,
        /// Bytes to write.
        len: u64,
        /// Pattern selector.
        seed: u8,
    },
    /// Drop the last hold (daxfs `close`): the last close of an orphan
    /// frees it. No visible change.
    Close,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create(n) => write!(f, "create({n})"),
            Op::Write {
                name,
                offset,
                len,
                seed,
            } => write!(f, "write({name}, {offset}, {len}, #{seed})"),
            Op::Zero {
                name,
                offset,
                len,
                punch,
            } => write!(f, "write_zeroes({name}, {offset}, {len}, punch {punch})"),
            Op::Truncate(n, s) => write!(f, "truncate({n}, {s})"),
            Op::Rename(a, b) => write!(f, "rename({a}, {b})"),
            Op::Unlink(n) => write!(f, "unlink({n})"),
            Op::Clone(a, b) => write!(f, "clone({a}, {b})"),
            Op::Append(a, b) => write!(f, "append({a}, {b})"),
            Op::Compact(n) => write!(f, "compact({n})"),
            Op::Persist(n) => write!(f, "persist({n})"),
            Op::PersistAll => write!(f, "persist_all"),
            Op::Open(n) => write!(f, "open({n})"),
            Op::WriteHeld { offset, len, seed } => {
                write!(f, "write_held({offset}, {len}, #{seed})")
            }
            Op::Close => write!(f, "close"),
        }
    }
}

/// The bytes a write with `seed` puts at absolute file position `pos`:
/// different per seed and per position, so misplaced or stale data shows.
pub fn pattern(seed: u8, pos: u64) -> u8 {
    let x = pos
        .wrapping_add(u64::from(seed) << 40)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // Never zero: a zero would look like a hole.
    ((x >> 56) as u8) | 1
}

/// The outcome the model expects of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The operation succeeds.
    Ok,
    /// The named file does not exist.
    NotFound,
    /// The target name exists already.
    Exists,
}

/// One file of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileModel {
    /// Content now (its length is the size).
    pub content: Vec<u8>,
    /// Earlier contents whose data units a crash may still show (writes
    /// since the last persist). Shorter versions read as zeros past their
    /// end.
    pub older: Vec<Vec<u8>>,
    /// Smaller sizes a crash may also show: the sizes the file had before
    /// each extending write since its size was last certainly committed
    /// (a persist, or an operation that always commits the file's record
    /// with its current size). Empty unless [`Semantics::sizes_deferred`].
    pub sizes: Vec<usize>,
}

/// The model of the whole filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelState {
    /// Files by name.
    pub files: BTreeMap<String, FileModel>,
}

/// Which promises the filesystem makes about data durability.
#[derive(Clone, Copy, Debug)]
pub struct Semantics {
    /// Granularity at which unpersisted data may be old or new (bytes).
    pub unit: usize,
    /// True when a write is durable when it returns (no persist needed).
    pub writes_durable_on_return: bool,
    /// `clone` of a file with an existing destination replaces it.
    pub clone_replaces: bool,
    /// An extending write may leave its size change uncommitted until the
    /// file's next persist (daxfs FORMAT.md "Deferred size commits").
    pub sizes_deferred: bool,
}

impl ModelState {
    /// Applies `op`, returning the outcome the API promises.
    pub fn apply(&mut self, op: &Op, semantics: &Semantics) -> Expect {
        match op {
            Op::Create(name) => {
                if self.files.contains_key(name) {
                    return Expect::Exists;
                }
                self.files.insert(name.clone(), FileModel::default());
            }
            Op::Write {
                name,
                offset,
                len,
                seed,
            } => {
                let Some(file) = self.files.get_mut(name) else {
                    return Expect::NotFound;
                };
                if !semantics.writes_durable_on_return {
                    file.older.push(file.content.clone());
                }
                // Workload offsets are small: they fit in usize.
                let (start, end) = (*offset as usize, (*offset + *len) as usize);
                if file.content.len() < end {
                    if semantics.sizes_deferred && !file.sizes.contains(&file.content.len()) {
                        file.sizes.push(file.content.len());
                    }
                    file.content.resize(end, 0);
                }
                for (i, byte) in file.content[start..end].iter_mut().enumerate() {
                    *byte = pattern(*seed, (start + i) as u64);
                }
            }
            Op::Zero {
                name, offset, len, ..
            } => {
                let Some(file) = self.files.get_mut(name) else {
                    return Expect::NotFound;
                };
                if !semantics.writes_durable_on_return {
                    file.older.push(file.content.clone());
                }
                let (start, end) = (*offset as usize, (*offset + *len) as usize);
                if file.content.len() < end {
                    // Growing by zeros commits the size.
                    file.sizes.clear();
                    file.content.resize(end, 0);
                }
                file.content[start..end].fill(0);
            }
            Op::Truncate(name, size) => {
                let Some(file) = self.files.get_mut(name) else {
                    return Expect::NotFound;
                };
                let size = *size as usize;
                if size != file.content.len() {
                    // A size change commits (and cut bytes never return).
                    file.sizes.clear();
                }
                file.content.resize(size, 0);
                // Bytes cut off are gone for good: a later grow reads zeros.
                for old in &mut file.older {
                    old.truncate(size);
                }
            }
            Op::Rename(from, to) => {
                let Some(mut file) = self.files.remove(from) else {
                    return Expect::NotFound;
                };
                // The renamed record carries the current size.
                file.sizes.clear();
                self.files.insert(to.clone(), file);
            }
            Op::Unlink(name) => {
                if self.files.remove(name).is_none() {
                    return Expect::NotFound;
                }
            }
            Op::Clone(src, dst) => {
                let Some(mut file) = self.files.get(src).cloned() else {
                    return Expect::NotFound;
                };
                if src == dst || (self.files.contains_key(dst) && !semantics.clone_replaces) {
                    return Expect::Exists;
                }
                // The clone's new record carries the current size.
                file.sizes.clear();
                self.files.insert(dst.clone(), file);
            }
            Op::Compact(name) => {
                if !self.files.contains_key(name) {
                    return Expect::NotFound;
                }
            }
            Op::Append(dst, src) => {
                if dst == src {
                    return Expect::Exists;
                }
                let (Some(s), true) = (self.files.get(src).cloned(), self.files.contains_key(dst))
                else {
                    return Expect::NotFound;
                };
                self.files.remove(src);
                let Some(d) = self.files.get_mut(dst) else {
                    return Expect::NotFound;
                };
                // Unpersisted data of either file may still show, each in
                // its own place.
                let len = d.content.len();
                let mut older = Vec::new();
                for old in &d.older {
                    let mut v = old.clone();
                    v.resize(len, 0);
                    v.extend_from_slice(&s.content);
                    older.push(v);
                }
                for old in &s.older {
                    let mut v = d.content.clone();
                    v.extend_from_slice(old);
                    older.push(v);
                }
                d.content.extend_from_slice(&s.content);
                d.older = older;
                d.sizes.clear();
            }
            Op::Persist(name) => {
                let Some(file) = self.files.get_mut(name) else {
                    return Expect::NotFound;
                };
                file.older.clear();
                file.sizes.clear();
            }
            Op::PersistAll => {
                for file in self.files.values_mut() {
                    file.older.clear();
                    file.sizes.clear();
                }
            }
            Op::Open(name) => {
                if !self.files.contains_key(name) {
                    return Expect::NotFound;
                }
            }
            // An orphan's data and its freeing are invisible by name.
            Op::WriteHeld { .. } | Op::Close => {}
        }
        Expect::Ok
    }
}

/// What a mounted filesystem shows: file name to content.
pub type Visible = BTreeMap<String, Arc<Vec<u8>>>;

/// Checks `visible` against `state`; the error says the first difference.
pub fn matches(state: &ModelState, visible: &Visible, unit: usize) -> Result<(), String> {
    let model_names: Vec<&String> = state.files.keys().collect();
    let seen_names: Vec<&String> = visible.keys().collect();
    if model_names != seen_names {
        return Err(format!("files {seen_names:?}, expected {model_names:?}"));
    }
    for (name, file) in &state.files {
        matches_file(name, file, &visible[name], unit)?;
    }
    Ok(())
}

/// Checks one file's visible bytes against its model.
pub fn matches_file(name: &str, file: &FileModel, seen: &[u8], unit: usize) -> Result<(), String> {
    if seen.len() != file.content.len() && !file.sizes.contains(&seen.len()) {
        return Err(format!(
            "{name}: size {}, expected {}{}",
            seen.len(),
            file.content.len(),
            if file.sizes.is_empty() {
                String::new()
            } else {
                format!(" or one of {:?}", file.sizes)
            }
        ));
    }
    let unit = unit.max(1);
    // Compare page-sized runs first (memcmp); look at units only where a
    // run differs from the current content.
    let run = 4096usize.div_ceil(unit) * unit;
    let mut base = 0;
    while base < seen.len() {
        let limit = (base + run).min(seen.len());
        if seen[base..limit] != file.content[base..limit] {
            check_units(name, file, seen, base, limit, unit)?;
        }
        base = limit;
    }
    Ok(())
}

/// Checks the units of `seen[from..to]` one by one: each must be the
/// current content or an unpersisted older version.
fn check_units(
    name: &str,
    file: &FileModel,
    seen: &[u8],
    from: usize,
    to: usize,
    unit: usize,
) -> Result<(), String> {
    let old_byte = |old: &Vec<u8>, at: usize| old.get(at).copied().unwrap_or(0);
    let mut start = from;
    while start < to {
        let end = (start + unit).min(to);
        let got = &seen[start..end];
        let ok = got == &file.content[start..end]
            || file.older.iter().any(|old| {
                got.iter()
                    .enumerate()
                    .all(|(i, &b)| b == old_byte(old, start + i))
            });
        if !ok {
            return Err(format!(
                "{name}: bytes {start}..{end} hold {:02x?}.., neither the new data {:02x?}.. \
                 nor any unpersisted older version",
                &got[..got.len().min(8)],
                &file.content[start..start + got.len().min(8)]
            ));
        }
        start = end;
    }
    Ok(())
}

/// Checks `visible` against every acceptable state; the error lists why
/// each one was rejected.
pub fn matches_any(states: &[&ModelState], visible: &Visible, unit: usize) -> Result<(), String> {
    let mut why = Vec::new();
    for state in states {
        match matches(state, visible, unit) {
            Ok(()) => return Ok(()),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const SEM: Semantics = Semantics {
        unit: 4,
        writes_durable_on_return: false,
        clone_replaces: false,
        sizes_deferred: false,
    };

    fn visible(state: &ModelState) -> Visible {
        state
            .files
            .iter()
            .map(|(n, f)| (n.clone(), Arc::new(f.content.clone())))
            .collect()
    }

    #[test]
    fn model_follows_the_api() {
        let mut s = ModelState::default();
        assert_eq!(s.apply(&Op::Create("a".into()), &SEM), Expect::Ok);
        assert_eq!(s.apply(&Op::Create("a".into()), &SEM), Expect::Exists);
        let w = Op::Write {
            name: "a".into(),
            offset: 4,
            len: 4,
            seed: 1,
        };
        assert_eq!(s.apply(&w, &SEM), Expect::Ok);
        assert_eq!(s.files["a"].content[..4], [0; 4]);
        assert_eq!(s.files["a"].older.len(), 1);
        assert_eq!(s.apply(&Op::Persist("a".into()), &SEM), Expect::Ok);
        assert!(s.files["a"].older.is_empty());
        assert_eq!(
            s.apply(&Op::Rename("a".into(), "b".into()), &SEM),
            Expect::Ok
        );
        assert_eq!(s.apply(&Op::Unlink("a".into()), &SEM), Expect::NotFound);
        assert_eq!(
            s.apply(&Op::Clone("b".into(), "c".into()), &SEM),
            Expect::Ok
        );
        assert_eq!(s.files["c"], s.files["b"]);
    }

    #[test]
    fn deferred_sizes_allow_a_shorter_file_until_persist() {
        let sem = Semantics {
            sizes_deferred: true,
            ..SEM
        };
        let mut s = ModelState::default();
        s.apply(&Op::Create("a".into()), &sem);
        let w = |offset, seed| Op::Write {
            name: "a".into(),
            offset,
            len: 4,
            seed,
        };
        s.apply(&w(0, 1), &sem);
        s.apply(&Op::Persist("a".into()), &sem);
        s.apply(&w(4, 2), &sem);
        s.apply(&w(8, 3), &sem);
        let full = s.files["a"].content.clone();
        let cut = |len: usize| -> Visible {
            let mut v = Visible::new();
            v.insert("a".into(), Arc::new(full[..len].to_vec()));
            v
        };
        // Any size since the last commit: 4 (persisted), 8, 12.
        assert!(matches(&s, &cut(12), 1).is_ok());
        assert!(matches(&s, &cut(8), 1).is_ok());
        assert!(matches(&s, &cut(4), 1).is_ok());
        // Never below the persisted size, nor a size the file never had.
        assert!(matches(&s, &cut(0), 1).is_err());
        assert!(matches(&s, &cut(6), 1).is_err());
        // A cut file still shows only written bytes below its size.
        let mut v = cut(8);
        Arc::make_mut(v.get_mut("a").unwrap())[5] = 0xEE;
        assert!(matches(&s, &v, 1).is_err());
        // Persist, a size change and a rename commit the size.
        let mut p = s.clone();
        p.apply(&Op::Persist("a".into()), &sem);
        assert!(matches(&p, &cut(8), 1).is_err());
        let mut r = s.clone();
        r.apply(&Op::Rename("a".into(), "b".into()), &sem);
        assert!(r.files["b"].sizes.is_empty());
        let mut c = s.clone();
        c.apply(&Op::Clone("a".into(), "c".into()), &sem);
        assert!(c.files["c"].sizes.is_empty());
        assert_eq!(c.files["a"].sizes, [4, 8]);
        // Without the semantics the size is exact.
        let mut strict = ModelState::default();
        strict.apply(&Op::Create("a".into()), &SEM);
        strict.apply(&w(0, 1), &SEM);
        strict.apply(&w(4, 2), &SEM);
        assert!(strict.files["a"].sizes.is_empty());
    }

    #[test]
    fn unpersisted_units_may_be_old_or_new_but_nothing_else() {
        let mut s = ModelState::default();
        s.apply(&Op::Create("a".into()), &SEM);
        s.apply(&Op::Truncate("a".into(), 8), &SEM);
        s.apply(
            &Op::Write {
                name: "a".into(),
                offset: 0,
                len: 8,
                seed: 3,
            },
            &SEM,
        );
        let mut v = visible(&s);
        assert!(matches(&s, &v, 4).is_ok());
        // First unit old (zeros), second new: fine.
        let mut mixed = s.files["a"].content.clone();
        mixed[..4].fill(0);
        v.insert("a".to_string(), Arc::new(mixed.clone()));
        assert!(matches(&s, &v, 4).is_ok());
        // Torn inside a unit: not fine at unit 4, fine at unit 1.
        mixed[4] = 0;
        v.insert("a".to_string(), Arc::new(mixed));
        assert!(matches(&s, &v, 4).is_err());
        assert!(matches(&s, &v, 1).is_ok());
        // Garbage is never fine.
        v.insert("a".to_string(), Arc::new(vec![0xee; 8]));
        assert!(matches(&s, &v, 1).is_err());
        // Once persisted, only the new data is.
        s.apply(&Op::Persist("a".into()), &SEM);
        let mut half = s.files["a"].content.clone();
        half[..4].fill(0);
        v.insert("a".to_string(), Arc::new(half));
        assert!(matches(&s, &v, 4).is_err());
    }

    #[test]
    fn truncated_bytes_never_come_back() {
        let mut s = ModelState::default();
        s.apply(&Op::Create("a".into()), &SEM);
        s.apply(
            &Op::Write {
                name: "a".into(),
                offset: 0,
                len: 8,
                seed: 1,
            },
            &SEM,
        );
        let written = s.files["a"].content.clone();
        s.apply(&Op::Truncate("a".into(), 0), &SEM);
        s.apply(&Op::Truncate("a".into(), 8), &SEM);
        let mut v = visible(&s);
        v.insert("a".to_string(), Arc::new(written));
        assert!(matches(&s, &v, 1).is_err());
    }

    #[test]
    fn names_and_sizes_must_match_one_state() {
        let mut before = ModelState::default();
        before.apply(&Op::Create("a".into()), &SEM);
        let mut after = before.clone();
        after.apply(&Op::Rename("a".into(), "b".into()), &SEM);
        assert!(matches_any(&[&before, &after], &visible(&before), 1).is_ok());
        assert!(matches_any(&[&before, &after], &visible(&after), 1).is_ok());
        let mut both = visible(&before);
        both.extend(visible(&after));
        assert!(matches_any(&[&before, &after], &both, 1).is_err());
        assert_ne!(pattern(1, 0), pattern(2, 0));
        assert_ne!(pattern(1, 0), 0);
    }
}
