//! A pmem image file as [`PersistentMemory`].
//!
//! Durability: stores go to the file with `pwrite` (no `mmap`: this crate
//! is safe Rust only); `flush` and `fence` are no-ops. A store is in the
//! host's page cache as soon as it returns, so killing the server process
//! is a crash in daxfs's terms with every store durable: what a client saw
//! acknowledged after FLUSH or FUA is there (what the restart tests
//! check), and so is every write daxfs committed on its own; a
//! copy-on-write into a clone still waiting for its commit is undone
//! (daxfs FORMAT.md "Data writes", "Deferred copy-on-write commits"). Not
//! a host power cut: nothing calls `fsync`. That matches how QEMU backs an
//! emulated NVDIMM with a file by default. Power-cut behaviour of daxfs
//! itself is checked by `fs/crashcheck`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use daxbox_persist::{check_range, OutOfRange, PersistentMemory};

/// `PATH[,size=SIZE]` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image file.
    pub path: PathBuf,
    /// Its size: created (sparse) at this size when missing, checked when
    /// present.
    pub size: Option<u64>,
}

impl ImageSpec {
    /// Parses `PATH[,size=SIZE]` (SIZE with K/M/G/T suffixes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, size) = match text.rsplit_once(",size=") {
            Some((path, size)) => (
                path,
                Some(
                    daxbox_bootconfig::parse_size(size)
                        .ok_or_else(|| format!("--image {text}: bad size '{size}'"))?,
                ),
            ),
            None => (text, None),
        };
        if path.is_empty() {
            return Err(format!("--image {text}: no path"));
        }
        Ok(Self {
            path: PathBuf::from(path),
            size,
        })
    }
}

/// An image file as persistent memory.
pub struct ImageMemory {
    file: File,
    len: u64,
    path: PathBuf,
}

impl ImageMemory {
    /// Opens (or creates, sparse, when a size is given) the image.
    pub fn open(spec: &ImageSpec) -> Result<Self, String> {
        let path = &spec.path;
        let exists = path.exists();
        if !exists && spec.size.is_none() {
            return Err(format!(
                "{}: no such image (give ,size=SIZE to create it)",
                path.display()
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        match spec.size {
            Some(size) if !exists => {
                file.set_len(size)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                len = size;
            }
            Some(size) if size != len => {
                return Err(format!(
                    "{}: the image is {len} bytes, not {size}",
                    path.display()
                ))
            }
            _ => {}
        }
        if len == 0 {
            return Err(format!("{}: the image is empty", path.display()));
        }
        Ok(Self {
            file,
            len,
            path: path.clone(),
        })
    }

    /// Reports a failed file access. The trait has only one error (its
    /// callers turn it into an I/O error); the cause goes to stderr.
    fn failed(&self, offset: u64, len: u64, error: std::io::Error) -> OutOfRange {
        eprintln!(
            "daxbox-serve: {}: {len} bytes at {offset:#x}: {error}",
            self.path.display()
        );
        OutOfRange {
            offset,
            len,
            region_len: self.len,
        }
    }
}

impl PersistentMemory for ImageMemory {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.failed(offset, buf.len() as u64, e))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(offset, data.len() as u64, self.len)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.failed(offset, data.len() as u64, e))
    }

    fn write_nt(&mut self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.write(offset, data)
    }

    fn store_u64(&mut self, offset: u64, value: u64) -> Result<(), OutOfRange> {
        check_range(offset, 8, self.len)?;
        if !offset.is_multiple_of(8) {
            return Err(OutOfRange {
                offset,
                len: 8,
                region_len: self.len,
            });
        }
        // One 8-byte pwrite inside one page: other processes see the old or
        // the new value, never a mix.
        self.write(offset, &value.to_le_bytes())
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        check_range(offset, len, self.len)
    }

    fn fence(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("daxbox-serve-image-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            ImageSpec::parse("a/b.img,size=64M").unwrap(),
            ImageSpec {
                path: "a/b.img".into(),
                size: Some(64 << 20)
            }
        );
        assert_eq!(ImageSpec::parse("x").unwrap().size, None);
        assert!(ImageSpec::parse("x,size=lots").is_err());
        assert!(ImageSpec::parse(",size=1M").is_err());
    }

    #[test]
    fn create_check_and_round_trip() {
        let path = temp("round-trip");
        let spec = ImageSpec {
            path: path.clone(),
            size: Some(1 << 20),
        };
        let mut memory = ImageMemory::open(&spec).unwrap();
        assert_eq!(memory.len(), 1 << 20);
        memory.write(100, b"hello").unwrap();
        memory.store_u64(8, 0x1122_3344_5566_7788).unwrap();
        assert!(memory.store_u64(9, 1).is_err());
        assert!(memory.write((1 << 20) - 2, b"abc").is_err());
        drop(memory);
        let memory = ImageMemory::open(&ImageSpec {
            path: path.clone(),
            size: None,
        })
        .unwrap();
        let mut buf = [0u8; 5];
        memory.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(memory.load_u64(8).unwrap(), 0x1122_3344_5566_7788);
        let wrong = ImageMemory::open(&ImageSpec {
            path: path.clone(),
            size: Some(2 << 20),
        });
        assert!(wrong
            .err()
            .unwrap()
            .contains("is 1048576 bytes, not 2097152"));
        std::fs::remove_file(&path).unwrap();
        let missing = ImageMemory::open(&ImageSpec { path, size: None });
        assert!(missing.err().unwrap().contains("no such image"));
    }
}
