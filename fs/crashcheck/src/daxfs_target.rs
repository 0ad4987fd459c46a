//! daxfs as a [`Target`] of the crash check, and the settings that match
//! what daxfs promises (fs/daxfs/src/lib.rs crate docs, FORMAT.md "Data
//! writes"):
//! - metadata operations (create, truncate, rename, unlink, clone, and
//!   writes that allocate or change the size) are atomic and durable when
//!   they return;
//! - data writes are flushed before `write` returns and durable at the
//!   next fence: the one inside the next metadata commit or `persist`.
//!   Until then each byte may be old or new (in-place stores can tear), so
//!   the oracle compares data byte by byte ([`Semantics::unit`] = 1) and
//!   the runner forgets older versions once nothing is pending;
//! - copy-on-write runs may wait in memory for the file's next commit
//!   (FORMAT.md "Deferred copy-on-write commits"): while a file has any,
//!   its older versions stay possible even with every store durable.

use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use daxfs::{Error, FileId, Filesystem, FormatOptions};

use crate::generate::Policy;
use crate::harness::{Config, Digester, Digests, Target, TargetError};
use crate::memory::CrashMemory;
use crate::oracle::{pattern, Op, Semantics, Visible};

/// Region size of the check: big enough for a file spanning two 2 MiB
/// extents plus clones, small enough that a mount is quick.
pub const REGION: usize = 8 << 20;

/// File records in the table (few: mount scans them all).
pub const MAX_FILES: u32 = 16;

/// File table blocks format initialises: one (8 records), so that the
/// ninth file extends the prefix (FORMAT.md "Initialised table prefix")
/// and the crash check cuts that extension at every step.
pub const TABLE_PREFIX_BLOCKS: u64 = 1;

/// The settings of the daxfs check.
pub fn config(seed: u64) -> Config {
    Config {
        policy: Policy::default(),
        seed,
        semantics: Semantics {
            unit: 1,
            writes_durable_on_return: false,
            clone_replaces: false,
            // FORMAT.md "Deferred size commits".
            sizes_deferred: true,
        },
        recrash: 2,
        max_findings: 20,
        probe_every: 8,
    }
}

/// daxfs over a [`CrashMemory`], with the files the workload holds open
/// ([`Op::Open`], last one on top).
pub struct Daxfs(pub Filesystem<CrashMemory>, pub Vec<FileId>);

fn classify(e: Error) -> TargetError {
    match e {
        Error::NotFound | Error::StaleFile => TargetError::NotFound,
        Error::Exists => TargetError::Exists,
        other => TargetError::Other(other.to_string()),
    }
}

impl Target for Daxfs {
    fn format(memory: CrashMemory) -> Result<Self, String> {
        let options = FormatOptions {
            uuid: [0x5a; 16],
            max_files: Some(MAX_FILES),
        };
        Filesystem::format_with_table_prefix(
            memory,
            options,
            TABLE_PREFIX_BLOCKS,
            &daxfs::UNBOUNDED,
        )
        .map(|fs| Daxfs(fs, Vec::new()))
        .map_err(|e| e.to_string())
    }

    fn unmount(self) -> Result<(), String> {
        self.0.unmount();
        Ok(())
    }

    fn mount(memory: CrashMemory) -> Result<Self, String> {
        Filesystem::mount(memory)
            .map(|fs| Daxfs(fs, Vec::new()))
            .map_err(|e| e.to_string())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TargetError> {
        let fs = &mut self.0;
        match op {
            Op::Create(name) => fs.create(name).map(drop),
            Op::Write {
                name,
                offset,
                len,
                seed,
            } => {
                let id = fs.lookup(name).map_err(classify)?;
                let data: Vec<u8> = (*offset..offset + len).map(|p| pattern(*seed, p)).collect();
                fs.write(id, *offset, &data)
            }
            Op::Zero {
                name,
                offset,
                len,
                punch,
            } => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.write_zeroes(id, *offset, *len, *punch)
            }
            Op::Truncate(name, size) => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.truncate(id, *size)
            }
            Op::Rename(from, to) => fs.rename(from, to),
            Op::Unlink(name) => fs.unlink(name),
            Op::Clone(src, dst) => fs.clone_file(src, dst).map(drop),
            Op::Append(_, _) if matches!(op, Op::Append(a, b) if a == b) => {
                return Err(TargetError::Exists)
            }
            Op::Append(dst, src) => {
                let d = fs.lookup(dst).map_err(classify)?;
                let s = fs.lookup(src).map_err(classify)?;
                fs.append_from(d, s).map(drop)
            }
            Op::Compact(name) => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.compact(id).map(drop)
            }
            Op::Persist(name) => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.persist(id)
            }
            Op::PersistAll => fs.persist_all(),
            Op::Open(name) => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.open(id).map(|()| self.1.push(id))
            }
            Op::WriteHeld { offset, len, seed } => {
                let id = *self.1.last().ok_or(TargetError::NotFound)?;
                let data: Vec<u8> = (*offset..offset + len).map(|p| pattern(*seed, p)).collect();
                fs.write(id, *offset, &data)
            }
            Op::Close => {
                let id = self.1.pop().ok_or(TargetError::NotFound)?;
                fs.close(id)
            }
        }
        .map_err(classify)
    }

    fn fsck(&mut self) -> Vec<String> {
        self.0.fsck().problems
    }

    fn digests(&mut self) -> Result<Digests, String> {
        let fs = &self.0;
        let mut out = Digests::new();
        let mut buf = vec![0u8; 64 * 1024];
        for (name, id, size) in entries(fs)? {
            let mut digester = Digester::default();
            let mut offset = 0u64;
            while offset < size {
                let n = fs
                    .read(id, offset, &mut buf)
                    .map_err(|e| format!("read {name}: {e}"))?;
                if n == 0 {
                    return Err(format!("{name}: read stops at {offset} of {size} bytes"));
                }
                digester.update(&buf[..n]);
                offset += n as u64;
            }
            let len = usize::try_from(size).map_err(|_| "file too large".to_string())?;
            out.insert(name, (len, digester.finish()));
        }
        Ok(out)
    }

    fn deferred(&self, name: &str) -> bool {
        self.0
            .lookup(name)
            .and_then(|id| self.0.deferred_runs(id))
            .is_ok_and(|n| n > 0)
    }

    fn visible(&mut self, names: &[String]) -> Result<Visible, String> {
        let fs = &self.0;
        let mut out = Visible::new();
        for (name, id, size) in entries(fs)? {
            if !names.contains(&name) {
                continue;
            }
            let len = usize::try_from(size).map_err(|_| "file too large".to_string())?;
            let mut content = vec![0u8; len];
            let n = fs
                .read(id, 0, &mut content)
                .map_err(|e| format!("read {name}: {e}"))?;
            if n != len {
                return Err(format!("{name}: read {n} of {len} bytes"));
            }
            out.insert(name, Arc::new(content));
        }
        Ok(out)
    }
}

/// Every file: name, handle and size, with `list` and `stat` agreeing.
fn entries(fs: &Filesystem<CrashMemory>) -> Result<Vec<(String, FileId, u64)>, String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let entries = fs.list(after.as_deref(), 64);
        let Some(last) = entries.last() else { break };
        after = Some(last.name.clone());
        for entry in entries {
            let stat = fs
                .stat(entry.id)
                .map_err(|e| format!("stat {}: {e}", entry.name))?;
            if stat.size != entry.size || stat.name != entry.name {
                return Err(format!(
                    "{}: list says {} bytes, stat says {} ({} bytes)",
                    entry.name, entry.size, stat.name, stat.size
                ));
            }
            let looked_up = fs
                .lookup(&entry.name)
                .map_err(|e| format!("lookup {}: {e}", entry.name))?;
            if looked_up != entry.id {
                return Err(format!(
                    "{}: lookup and list disagree on the handle",
                    entry.name
                ));
            }
            out.push((entry.name, entry.id, entry.size));
        }
    }
    Ok(out)
}
