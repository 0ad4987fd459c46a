//! Host test server for the `daxbox-nbd` engine (std, host only).
//!
//! `nbd-serve --port P [--memory NAME=SIZE]... [--file NAME=PATH]...
//!            [--read-only NAME]... [--handshake-timeout-ms N]`
//!
//! Serves the sans-I/O engine over a std `TcpListener` bound to 127.0.0.1
//! with one thread per connection (the kernel uses its event loop instead).
//! `--memory` exports are sparse (64 KiB chunks allocated on first write,
//! freed by trim and zeroing), so block status reports real holes like a
//! daxfs file; `--file` exports are raw (all data) and flush with
//! `fdatasync`. Prints `listening on 127.0.0.1:PORT` once ready (`--port 0`
//! picks a free port). SIZE accepts K/M/G suffixes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daxbox_nbd::{
    Backend, BackendError, ExportHandle, ExportInfo, ExportKind, Extent, Server, ServerConfig,
    ZeroFlags,
};

const CHUNK: u64 = 64 * 1024;

enum Store {
    Memory(HashMap<u64, Box<[u8]>>),
    File(File),
}

struct Export {
    info: ExportInfo,
    store: Store,
}

impl Export {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        match &self.store {
            Store::File(file) => file
                .read_exact_at(buf, offset)
                .map_err(|_| BackendError::Io),
            Store::Memory(chunks) => {
                let mut done = 0usize;
                while done < buf.len() {
                    let pos = offset + done as u64;
                    let (index, within) = (pos / CHUNK, (pos % CHUNK) as usize);
                    let take = (CHUNK as usize - within).min(buf.len() - done);
                    match chunks.get(&index) {
                        Some(chunk) => {
                            buf[done..done + take].copy_from_slice(&chunk[within..within + take])
                        }
                        None => buf[done..done + take].fill(0),
                    }
                    done += take;
                }
                Ok(())
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        match &mut self.store {
            Store::File(file) => file
                .write_all_at(data, offset)
                .map_err(|_| BackendError::Io),
            Store::Memory(chunks) => {
                let mut done = 0usize;
                while done < data.len() {
                    let pos = offset + done as u64;
                    let (index, within) = (pos / CHUNK, (pos % CHUNK) as usize);
                    let take = (CHUNK as usize - within).min(data.len() - done);
                    let chunk = chunks
                        .entry(index)
                        .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
                    chunk[within..within + take].copy_from_slice(&data[done..done + take]);
                    done += take;
                }
                Ok(())
            }
        }
    }

    /// Zeroes a range; whole chunks become holes unless `keep` is set.
    fn zero(&mut self, offset: u64, len: u64, keep: bool) -> Result<(), BackendError> {
        match &mut self.store {
            Store::File(file) => {
                let zeros = vec![0u8; CHUNK as usize];
                let mut done = 0u64;
                while done < len {
                    let take = (len - done).min(CHUNK) as usize;
                    file.write_all_at(&zeros[..take], offset + done)
                        .map_err(|_| BackendError::Io)?;
                    done += take as u64;
                }
                Ok(())
            }
            Store::Memory(chunks) => {
                let end = offset + len;
                let mut pos = offset;
                while pos < end {
                    let (index, within) = (pos / CHUNK, pos % CHUNK);
                    let take = (CHUNK - within).min(end - pos);
                    if take == CHUNK && !keep {
                        chunks.remove(&index);
                    } else if let Some(chunk) = chunks.get_mut(&index) {
                        chunk[within as usize..(within + take) as usize].fill(0);
                    } else if keep {
                        chunks.insert(index, vec![0u8; CHUNK as usize].into_boxed_slice());
                    }
                    pos += take;
                }
                Ok(())
            }
        }
    }
}

/// The exports, shared by every connection thread.
struct Exports {
    list: Vec<Export>,
}

/// One connection's view of the shared exports.
struct SharedBackend(Arc<Mutex<Exports>>);

impl SharedBackend {
    fn with<T>(
        &self,
        export: ExportHandle,
        f: impl FnOnce(&mut Export) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut exports = self.0.lock().map_err(|_| BackendError::Io)?;
        let export = exports
            .list
            .get_mut(export.0 as usize)
            .ok_or(BackendError::Invalid)?;
        f(export)
    }
}

impl Backend for SharedBackend {
    fn export_count(&self) -> usize {
        self.0.lock().map(|e| e.list.len()).unwrap_or(0)
    }
    fn export_name(&self, index: usize) -> Option<String> {
        self.0
            .lock()
            .ok()?
            .list
            .get(index)
            .map(|e| e.info.name.clone())
    }
    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        let exports = self.0.lock().map_err(|_| BackendError::Io)?;
        if name.is_empty() && !exports.list.is_empty() {
            return Ok(ExportHandle(0)); // the first export is the default
        }
        let index = exports
            .list
            .iter()
            .position(|e| e.info.name == name)
            .ok_or(BackendError::NoSuchExport)?;
        Ok(ExportHandle(index as u64))
    }
    fn info(&self, export: ExportHandle) -> Option<ExportInfo> {
        self.0
            .lock()
            .ok()?
            .list
            .get(export.0 as usize)
            .map(|e| e.info.clone())
    }
    fn read(
        &mut self,
        export: ExportHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), BackendError> {
        self.with(export, |e| e.read(offset, buf))
    }
    fn write(
        &mut self,
        export: ExportHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BackendError> {
        self.with(export, |e| e.write(offset, data))
    }
    fn persist(
        &mut self,
        export: ExportHandle,
        _offset: u64,
        _len: u64,
    ) -> Result<(), BackendError> {
        self.flush(export)
    }
    fn flush(&mut self, export: ExportHandle) -> Result<(), BackendError> {
        self.with(export, |e| match &e.store {
            Store::File(file) => file.sync_data().map_err(|_| BackendError::Io),
            Store::Memory(_) => Ok(()),
        })
    }
    fn trim(&mut self, export: ExportHandle, offset: u64, len: u64) -> Result<(), BackendError> {
        self.with(export, |e| match e.store {
            Store::Memory(_) => e.zero(offset, len, false),
            Store::File(_) => Ok(()), // a hint; raw files keep their data
        })
    }
    fn write_zeroes(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), BackendError> {
        self.with(export, |e| {
            if flags.fast && matches!(e.store, Store::File(_)) {
                return Err(BackendError::NotSupported);
            }
            e.zero(offset, len, flags.no_hole)
        })
    }
    fn block_status(
        &mut self,
        export: ExportHandle,
        offset: u64,
        len: u64,
        max_extents: usize,
        out: &mut Vec<Extent>,
    ) -> Result<(), BackendError> {
        self.with(export, |e| {
            let Store::Memory(chunks) = &e.store else {
                out.push(Extent::data(len));
                return Ok(());
            };
            let end = offset + len;
            let mut pos = offset;
            while pos < end {
                let index = pos / CHUNK;
                let take = (CHUNK - pos % CHUNK).min(end - pos);
                let extent = if chunks.contains_key(&index) {
                    Extent::data(take)
                } else {
                    Extent::hole(take)
                };
                let full = out.len() >= max_extents;
                match out.last_mut() {
                    Some(last) if last.hole == extent.hole => last.len += take,
                    _ if full => break,
                    _ => out.push(extent),
                }
                pos += take;
            }
            Ok(())
        })
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let (digits, scale) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 1u64 << 10),
        'M' | 'm' => (&text[..text.len() - 1], 1 << 20),
        'G' | 'g' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

fn usage(message: &str) -> ! {
    eprintln!("nbd-serve: {message}");
    eprintln!("usage: nbd-serve --port P [--memory NAME=SIZE]... [--file NAME=PATH]... [--read-only NAME]... [--handshake-timeout-ms N]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut exports = Vec::new();
    let mut read_only = Vec::new();
    let mut config = ServerConfig::default();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--port" => port = Some(value().parse().unwrap_or_else(|_| usage("bad port"))),
            "--handshake-timeout-ms" => {
                config.handshake_timeout_ms =
                    value().parse().unwrap_or_else(|_| usage("bad timeout"))
            }
            "--read-only" => read_only.push(value()),
            "--memory" | "--file" => {
                let spec = value();
                let (name, rest) = spec
                    .split_once('=')
                    .unwrap_or_else(|| usage("expected NAME=VALUE"));
                let (store, size, kind) = if arg == "--memory" {
                    let size = parse_size(rest).unwrap_or_else(|| usage("bad size"));
                    (Store::Memory(HashMap::new()), size, ExportKind::File)
                } else {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(rest)
                        .unwrap_or_else(|e| usage(&format!("{rest}: {e}")));
                    let size = file
                        .metadata()
                        .map(|m| m.len())
                        .unwrap_or_else(|e| usage(&format!("{rest}: {e}")));
                    (Store::File(file), size, ExportKind::Raw)
                };
                let description = if kind == ExportKind::File {
                    format!("sparse memory export, {size} bytes")
                } else {
                    format!("file {rest}")
                };
                exports.push(Export {
                    info: ExportInfo {
                        name: name.to_string(),
                        description,
                        size,
                        read_only: false,
                        kind,
                        can_trim: true,
                        can_fast_zero: kind == ExportKind::File,
                        multi_conn: true,
                    },
                    store,
                });
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    for name in &read_only {
        match exports.iter_mut().find(|e| &e.info.name == name) {
            Some(e) => e.info.read_only = true,
            None => usage(&format!("--read-only {name}: no such export")),
        }
    }
    let port = port.unwrap_or_else(|| usage("--port is required"));
    let listener =
        TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| usage(&format!("bind: {e}")));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| usage(&format!("local_addr: {e}")));
    println!("listening on {address}");
    let _ = std::io::stdout().flush();

    let shared = Arc::new(Mutex::new(Exports { list: exports }));
    let server = Arc::new(Mutex::new(Server::new(config)));
    let start = Instant::now();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let backend = SharedBackend(shared.clone());
        let server = server.clone();
        std::thread::spawn(move || serve(stream, backend, server, start));
    }
}

fn serve(
    mut stream: TcpStream,
    mut backend: SharedBackend,
    server: Arc<Mutex<Server>>,
    start: Instant,
) {
    let now = || start.elapsed().as_millis() as u64;
    let Ok(mut connection) = server.lock().map(|mut s| s.accept(now())) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut input = vec![0u8; 256 * 1024];
    let (mut begin, mut end) = (0usize, 0usize);
    let mut output = vec![0u8; 256 * 1024];
    'outer: loop {
        loop {
            let n = connection.produce(&mut output, &mut backend);
            if n == 0 {
                break;
            }
            if stream.write_all(&output[..n]).is_err() {
                break 'outer;
            }
        }
        if connection.wants_close() || connection.check_timeout(now()) {
            break;
        }
        if begin < end {
            let used = connection.receive(&input[begin..end], &mut backend, now());
            begin += used;
            if used > 0 || connection.has_output() {
                continue;
            }
        }
        if begin == end {
            begin = 0;
            end = 0;
        } else if end == input.len() {
            input.copy_within(begin..end, 0);
            end -= begin;
            begin = 0;
        }
        if end == input.len() {
            // Buffer full and nothing consumed: cannot happen unless the
            // engine is stuck; avoid spinning.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        match stream.read(&mut input[end..]) {
            Ok(0) => break,
            Ok(n) => end += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Ok(mut s) = server.lock() {
        s.retire(&connection);
    }
}
