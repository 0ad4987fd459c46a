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
//!   the runner forgets older versions after any operation that fenced.

use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use daxfs::{Error, Filesystem, FormatOptions};

use crate::generate::Policy;
use crate::harness::{Config, Target, TargetError};
use crate::memory::CrashMemory;
use crate::oracle::{pattern, Op, Semantics, Visible};

/// Region size of the check: big enough for a file spanning two 2 MiB
/// extents plus clones, small enough that a mount is quick.
pub const REGION: usize = 8 << 20;

/// File records in the table (few: mount scans them all).
pub const MAX_FILES: u32 = 16;

/// The settings of the daxfs check.
pub fn config(seed: u64) -> Config {
    Config {
        policy: Policy::default(),
        seed,
        semantics: Semantics {
            unit: 1,
            writes_durable_on_return: false,
            clone_replaces: false,
        },
        recrash: 2,
        max_findings: 20,
    }
}

/// daxfs over a [`CrashMemory`].
pub struct Daxfs(pub Filesystem<CrashMemory>);

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
        Filesystem::format(memory, options)
            .map(Daxfs)
            .map_err(|e| e.to_string())
    }

    fn unmount(self) -> Result<(), String> {
        self.0.unmount();
        Ok(())
    }

    fn mount(memory: CrashMemory) -> Result<Self, String> {
        Filesystem::mount(memory)
            .map(Daxfs)
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
            Op::Truncate(name, size) => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.truncate(id, *size)
            }
            Op::Rename(from, to) => fs.rename(from, to),
            Op::Unlink(name) => fs.unlink(name),
            Op::Clone(src, dst) => fs.clone_file(src, dst).map(drop),
            Op::Persist(name) => {
                let id = fs.lookup(name).map_err(classify)?;
                fs.persist(id)
            }
            Op::PersistAll => {
                fs.persist_all();
                Ok(())
            }
        }
        .map_err(classify)
    }

    fn fsck(&mut self) -> Vec<String> {
        self.0.fsck().problems
    }

    fn visible(&mut self) -> Result<Visible, String> {
        let fs = &self.0;
        let mut out = Visible::new();
        let mut after: Option<String> = None;
        loop {
            let entries = fs.list(after.as_deref(), 64);
            let Some(last) = entries.last() else { break };
            after = Some(last.name.clone());
            for entry in entries {
                let stat = fs
                    .stat(entry.id)
                    .map_err(|e| format!("stat {}: {e}", entry.name))?;
                if stat.size != entry.size {
                    return Err(format!(
                        "{}: list says {} bytes, stat says {}",
                        entry.name, entry.size, stat.size
                    ));
                }
                let len = usize::try_from(stat.size).map_err(|_| "file too large".to_string())?;
                let mut content = vec![0u8; len];
                let n = fs
                    .read(entry.id, 0, &mut content)
                    .map_err(|e| format!("read {}: {e}", entry.name))?;
                if n != len {
                    return Err(format!("{}: read {n} of {len} bytes", entry.name));
                }
                out.insert(entry.name, Arc::new(content));
            }
        }
        Ok(out)
    }
}
