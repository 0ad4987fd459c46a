//! Heap held by one idle connection's engine state (beyond the socket
//! buffers the listener owns), measured with a counting allocator: after
//! the greeting, and in the transmission phase after `NBD_OPT_GO`. One
//! test in this binary, so nothing else allocates meanwhile.

use std::alloc::System;

use daxbox_nbd::ServerConfig;
use daxbox_nbd::{Backend, BackendError, Connection, ExportHandle, ExportInfo, ExportKind};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes held now beyond what was held when `region` began.
fn held(region: &Region<'_, System>) -> isize {
    let change = region.change();
    // A realloc counts its growth as allocated, its shrinking as freed.
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

/// One empty 1 MiB export named `disk`.
struct One;

impl Backend for One {
    fn export_count(&self) -> usize {
        1
    }
    fn export_name(&self, index: usize) -> Option<String> {
        (index == 0).then(|| "disk".to_string())
    }
    fn open(&mut self, name: &str) -> Result<ExportHandle, BackendError> {
        match name {
            "" | "disk" => Ok(ExportHandle(0)),
            _ => Err(BackendError::NoSuchExport),
        }
    }
    fn info(&self, _: ExportHandle) -> Option<ExportInfo> {
        Some(ExportInfo {
            name: "disk".into(),
            description: String::new(),
            size: 1 << 20,
            read_only: false,
            kind: ExportKind::Raw,
            can_trim: false,
            can_fast_zero: false,
            multi_conn: true,
        })
    }
    fn read(&mut self, _: ExportHandle, _: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _: ExportHandle, _: u64, _: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }
    fn flush(&mut self, _: ExportHandle) -> Result<(), BackendError> {
        Ok(())
    }
    fn trim(&mut self, _: ExportHandle, _: u64, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn write_zeroes(
        &mut self,
        _: ExportHandle,
        _: u64,
        _: u64,
        _: daxbox_nbd::ZeroFlags,
    ) -> Result<(), BackendError> {
        Ok(())
    }
}

fn drain(conn: &mut Connection, backend: &mut One, buf: &mut [u8]) {
    while conn.produce(buf, backend) > 0 {}
}

#[test]
fn an_idle_connection_holds_little_beyond_its_sockets() {
    let mut backend = One;
    let mut buf = vec![0u8; 64 * 1024];
    let config = ServerConfig::default();
    let region = Region::new(GLOBAL);
    let mut conn = Box::new(Connection::new(config, 0));
    drain(&mut conn, &mut backend, &mut buf);
    let greeted = held(&region);
    // Client flags, then NBD_OPT_GO "disk" with no information requests.
    let mut hello = 3u32.to_be_bytes().to_vec();
    hello.extend_from_slice(b"IHAVEOPT");
    hello.extend_from_slice(&7u32.to_be_bytes());
    hello.extend_from_slice(&10u32.to_be_bytes());
    hello.extend_from_slice(&4u32.to_be_bytes());
    hello.extend_from_slice(b"disk");
    hello.extend_from_slice(&0u16.to_be_bytes());
    assert_eq!(conn.receive(&hello, &mut backend, 1), hello.len());
    drop(hello);
    drain(&mut conn, &mut backend, &mut buf);
    assert!(conn.in_transmission());
    let idle = held(&region);
    drop(conn);
    let after = held(&region);
    eprintln!(
        "nbd engine heap per connection: {greeted} bytes after the greeting, {idle} bytes idle in transmission \
         (plus the listener's socket buffers)"
    );
    assert!(
        idle < 4096,
        "an idle connection's engine holds {idle} bytes"
    );
    assert!(
        greeted < 4096,
        "a greeted connection's engine holds {greeted} bytes"
    );
    assert_eq!(after, 0, "everything given back");
}
