//! The seed corpora (`fuzz/corpus/TARGET/seed-*`): a handful of valid,
//! varied inputs per target, so the fuzzer starts past the handshakes and
//! checksums instead of finding them byte by byte. Written by
//! `DAXBOX_WRITE_SEEDS=1 cargo test -p daxbox-fuzz-harness --test replay`;
//! the same test checks the committed files match.

use daxbox_nbd::wire::*;
use daxbox_pmem::nfit::fixture;
use daxfs::format::{BLOCK_SIZE, JOURNAL_ENTRY_SIZE, JOURNAL_HEADER_SIZE, RECORD_SIZE, SUPER_SIZE};

use crate::daxfs_mount;

/// One seed: file name and bytes.
pub type Seed = (String, Vec<u8>);

fn be16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn be32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn be64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_be_bytes());
}

fn option(v: &mut Vec<u8>, code: u32, data: &[u8]) {
    be64(v, IHAVEOPT);
    be32(v, code);
    be32(v, data.len() as u32);
    v.extend_from_slice(data);
}

fn name_and_infos(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    be32(&mut v, name.len() as u32);
    v.extend_from_slice(name.as_bytes());
    be16(&mut v, infos.len() as u16);
    for i in infos {
        be16(&mut v, *i);
    }
    v
}

fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    be32(&mut v, name.len() as u32);
    v.extend_from_slice(name.as_bytes());
    be32(&mut v, queries.len() as u32);
    for q in queries {
        be32(&mut v, q.len() as u32);
        v.extend_from_slice(q.as_bytes());
    }
    v
}

fn request(v: &mut Vec<u8>, extended: bool, flags: u16, kind: u16, offset: u64, len: u64) {
    if extended {
        be32(v, EXTENDED_REQUEST_MAGIC);
    } else {
        be32(v, REQUEST_MAGIC);
    }
    be16(v, flags);
    be16(v, kind);
    be64(v, 0x1000 + offset);
    be64(v, offset);
    if extended {
        be64(v, len);
    } else {
        be32(v, len as u32);
    }
    if kind == CMD_WRITE {
        v.extend((0..len).map(|i| i as u8 ^ 0x5a));
    }
}

/// Every request type once, on `export`, plus a few that must fail.
fn requests(v: &mut Vec<u8>, extended: bool, size: u64) {
    request(v, extended, 0, CMD_WRITE, 0, 4096);
    request(v, extended, CMD_FLAG_FUA, CMD_WRITE, 4096, 1000);
    request(v, extended, 0, CMD_READ, 0, 8192);
    request(v, extended, CMD_FLAG_DF, CMD_READ, 100, 5000);
    request(v, extended, 0, CMD_BLOCK_STATUS, 0, size);
    request(v, extended, CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 4096, 65536);
    request(v, extended, 0, CMD_TRIM, 8192, 8192);
    request(v, extended, CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, 12288);
    request(
        v,
        extended,
        CMD_FLAG_FAST_ZERO | CMD_FLAG_FUA,
        CMD_WRITE_ZEROES,
        65536,
        4096,
    );
    request(v, extended, 0, CMD_CACHE, 0, 65536);
    request(v, extended, 0, CMD_FLUSH, 0, 0);
    request(v, extended, 0, CMD_READ, size.saturating_sub(10), 4096);
    request(v, extended, 0, CMD_READ, 0, 0);
    request(v, extended, 0, 99, 0, 0);
    request(v, extended, 0, CMD_DISC, 0, 0);
}

/// NBD client streams for exports `names` (writable, read-only, other)
/// of sizes `sizes`.
fn nbd_streams(names: [&str; 3], sizes: [u64; 3]) -> Vec<(&'static str, Vec<u8>)> {
    let [rw, ro, other] = names;
    let mut out = Vec::new();

    // Structured replies, meta context, GO.
    let mut v = Vec::new();
    be32(&mut v, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut v, OPT_STRUCTURED_REPLY, &[]);
    option(&mut v, OPT_LIST_META_CONTEXT, &meta(rw, &["base:"]));
    option(&mut v, OPT_SET_META_CONTEXT, &meta(rw, &[BASE_ALLOCATION]));
    option(
        &mut v,
        OPT_GO,
        &name_and_infos(rw, &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION]),
    );
    requests(&mut v, false, sizes[0]);
    out.push(("structured", v));

    // Extended headers.
    let mut v = Vec::new();
    be32(&mut v, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut v, OPT_EXTENDED_HEADERS, &[]);
    option(&mut v, OPT_SET_META_CONTEXT, &meta(rw, &[BASE_ALLOCATION]));
    option(&mut v, OPT_GO, &name_and_infos(rw, &[]));
    request(&mut v, true, 0, CMD_BLOCK_STATUS, 0, 1 << 33);
    requests(&mut v, true, sizes[0]);
    out.push(("extended", v));

    // Simple replies, listing, INFO, old-style EXPORT_NAME.
    let mut v = Vec::new();
    be32(&mut v, FLAG_C_FIXED_NEWSTYLE);
    option(&mut v, OPT_LIST, &[]);
    option(&mut v, OPT_INFO, &name_and_infos(ro, &[INFO_EXPORT]));
    option(&mut v, OPT_INFO, &name_and_infos("nosuch", &[]));
    option(&mut v, 42, b"unknown");
    option(&mut v, OPT_STARTTLS, &[]);
    option(&mut v, OPT_EXPORT_NAME, other.as_bytes());
    requests(&mut v, false, sizes[2]);
    out.push(("simple", v));

    // The read-only export: every write-like request must fail.
    let mut v = Vec::new();
    be32(&mut v, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut v, OPT_STRUCTURED_REPLY, &[]);
    option(&mut v, OPT_GO, &name_and_infos(ro, &[]));
    requests(&mut v, false, sizes[1]);
    out.push(("readonly", v));

    // The default export, then an abort.
    let mut v = Vec::new();
    be32(&mut v, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut v, OPT_INFO, &name_and_infos("", &[]));
    option(&mut v, OPT_ABORT, &[]);
    out.push(("abort", v));
    out
}

fn nbd_seeds(names: [&str; 3], sizes: [u64; 3]) -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (name, stream) in nbd_streams(names, sizes) {
        for (mode, seed) in [(0u8, 1u64), (1, 2), (8, 3)] {
            let mut v = vec![mode];
            v.extend_from_slice(&seed.to_le_bytes());
            v.extend_from_slice(&stream);
            seeds.push((format!("seed-{name}-{mode}"), v));
        }
    }
    seeds
}

fn http_seeds() -> Vec<Seed> {
    let requests: [(&str, &[u8]); 7] = [
        ("healthz", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.0\r\n\r\n"),
        ("bytes", b"GET /bench/bytes?n=5000 HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "sink",
            b"PUT /bench/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\nhello world",
        ),
        ("notfound", b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("chunked", b"PUT /bench/sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("bad", b"GET  /x HTTP/2\r\n\r\n"),
        ("close", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ];
    requests
        .iter()
        .map(|(name, text)| {
            let mut v = vec![1u8];
            v.extend_from_slice(&7u64.to_le_bytes());
            v.extend_from_slice(text);
            (format!("seed-{name}"), v)
        })
        .collect()
}

fn daxfs_mount_seeds() -> Vec<Seed> {
    // Operations: create, write, read, truncate, clone, unlink, rename, zero.
    let ops = |v: &mut Vec<u8>| {
        for (op, other, offset, len) in [
            (0x50u8, 0u16, 0u32, 0u16), // create "new"
            (0x51, 0, 4096, 9000),      // write "new"
            (0x12, 0, 0, 4096),         // read "b"
            (0x03, 0, 100_000, 0),      // truncate "a"
            (0x54, 3, 0, 0),            // clone "new" -> "d"
            (0x25, 0, 0, 0),            // unlink "c"
            (0x16, 4, 0, 0),            // rename "b" -> "e"
            (0x0f, 0, 4096, 300),       // zero (punch) "a"
        ] {
            v.push(op);
            v.extend_from_slice(&other.to_le_bytes());
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
    };
    let mut seeds = Vec::new();
    for mode in [0u8, 2, 4, 6] {
        let mut v = vec![mode, 0];
        ops(&mut v);
        seeds.push((format!("seed-ops-{mode}"), v));
    }
    // One patch each in the superblock (max_files), the journal header, a
    // record's size and an overflow block's extent count.
    for (name, selector, offset, bytes) in [
        (
            "sb-max-files",
            3u8 << 3,
            72u32,
            vec![0xff, 0xff, 0xff, 0x00],
        ),
        ("journal", 2 | 1 << 3, 68, vec![3, 0]),
        ("record-size", 3 | 7 << 3, 16, vec![0, 0, 0, 0, 0, 1, 0, 0]),
        ("overflow", 4 | 3 << 3, 20, vec![200, 0, 0, 0]),
    ] {
        let mut v = vec![2, 1, selector];
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&bytes);
        ops(&mut v);
        seeds.push((format!("seed-{name}"), v));
    }
    seeds
}

fn daxfs_decode_seeds() -> Vec<Seed> {
    let image = daxfs_mount::template();
    let block = BLOCK_SIZE as usize;
    let mut seeds = Vec::new();
    let mut push = |name: &str, mode: u8, bytes: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(bytes);
        seeds.push((format!("seed-{name}"), v));
    };
    push("superblock", 0, &image[..SUPER_SIZE]);
    push("superblock-fix", 0x80, &image[..SUPER_SIZE]);
    // File table at block 3: slot 0 ("a", with an overflow chain), slot 1.
    push("record", 1, &image[3 * block..3 * block + RECORD_SIZE]);
    push(
        "record-fix",
        0x81,
        &image[3 * block + RECORD_SIZE..3 * block + 2 * RECORD_SIZE],
    );
    // The first overflow block of the template.
    let overflow = image
        .chunks_exact(block)
        .find(|b| b[..4] == daxfs::format::OVERFLOW_MAGIC.to_le_bytes())
        .expect("the template has an overflow block");
    push("overflow", 2, overflow);
    push("overflow-fix", 0x82, overflow);
    let journal = &image[2 * block + 64..2 * block + 128 + 2 * JOURNAL_ENTRY_SIZE];
    let mut j = journal[..JOURNAL_HEADER_SIZE].to_vec();
    j.extend_from_slice(&journal[64..]);
    push("journal", 3, &j);
    push("journal-fix", 0x83, &j);
    seeds
}

fn netstack_seeds() -> Vec<Seed> {
    let http = b"GET /healthz HTTP/1.1\r\nHost: daxbox\r\n\r\n";
    let nbd = {
        let mut v = Vec::new();
        be32(&mut v, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        option(&mut v, OPT_STRUCTURED_REPLY, &[]);
        option(&mut v, OPT_GO, &name_and_infos("disk", &[]));
        request(&mut v, false, 0, CMD_WRITE, 0, 512);
        request(&mut v, false, 0, CMD_READ, 0, 4096);
        v
    };
    let send = |v: &mut Vec<u8>, client: u8, bytes: &[u8]| {
        v.push(1 | client << 3);
        v.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        v.extend_from_slice(bytes);
    };
    let settle = |v: &mut Vec<u8>| v.extend_from_slice(&[4 | 2 << 3, 2, 2]);
    let mut seeds = Vec::new();

    let mut v = vec![1u8, 0];
    settle(&mut v);
    send(&mut v, 0, http);
    settle(&mut v);
    v.push(3);
    seeds.push(("seed-http".to_string(), v));

    let mut v = vec![2u8, 8];
    settle(&mut v);
    send(&mut v, 0, &nbd);
    settle(&mut v);
    v.push(2);
    v.push(3 | 8);
    seeds.push(("seed-nbd".to_string(), v));

    // Altered frames: a connect whose SYN is changed, duplicated, reordered.
    let mut v = vec![3u8, 0, 0, 8];
    v.extend_from_slice(&[5, 40, 0, 0x10]); // flip a TCP byte of the next frame
    settle(&mut v);
    send(&mut v, 0, http);
    v.extend_from_slice(&[6 | 1 << 3, 6 | 2 << 3]);
    settle(&mut v);
    v.push(2);
    v.extend_from_slice(&[4, 4]);
    seeds.push(("seed-altered".to_string(), v));

    // An injected frame: an ARP request and a UDP datagram to the server.
    let mut v = vec![4u8, 7];
    let arp: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0,
        0, 0, 0, 1, 10, 0, 2, 99, 0, 0, 0, 0, 0, 0, 10, 0, 2, 15,
    ];
    v.extend_from_slice(&(arp.len() as u16).to_le_bytes());
    v.extend_from_slice(&arp);
    let mut udp = vec![0x52, 0x54, 0, 0x12, 0x34, 0x56, 2, 0, 0, 0, 0, 1, 8, 0];
    udp.extend_from_slice(&[
        0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 2, 99, 10, 0, 2, 15, 0x30, 0x39, 0, 53, 0,
        12, 0, 0, b'p', b'i', b'n', b'g',
    ]);
    v.push(7);
    v.extend_from_slice(&(udp.len() as u16).to_le_bytes());
    v.extend_from_slice(&udp);
    settle(&mut v);
    seeds.push(("seed-inject".to_string(), v));
    seeds
}

/// QEMU's FIT (no table header) for NVDIMMs in `slots`, 1 GiB each from
/// 4 GiB.
fn fit_of(slots: &[u16]) -> Vec<u8> {
    let mut fit = Vec::new();
    for &slot in slots {
        let dimm = fixture::Dimm {
            slot,
            base: (4 + u64::from(slot)) << 30,
            size: 1 << 30,
            node: 0,
        };
        fit.extend(fixture::spa(&dimm));
        fit.extend(fixture::memdev(&dimm));
        fit.extend(fixture::dcr(&dimm));
    }
    fit
}

/// DSM replies as the `nfit` target's FIT mode reads them (u16 length,
/// then the page bytes: u32 length, u32 status, data), ending with the
/// empty reply.
fn fit_replies(replies: &[(u32, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(status, data) in replies.iter().chain([(0, &[][..])].iter()) {
        let length = 8 + data.len();
        v.extend_from_slice(&(length as u16).to_le_bytes());
        v.extend_from_slice(&(length as u32).to_le_bytes());
        v.extend_from_slice(&status.to_le_bytes());
        v.extend_from_slice(data);
    }
    v
}

fn nfit_seeds() -> Vec<Seed> {
    let machine = |v: &mut Vec<u8>| {
        // e820, uefi, pmem= candidates; three RAM regions; a forbidden one.
        for (start, len) in [
            (0x8000u16, 0x4000u16),
            (0x9000, 0x400),
            (0x100, 0x100),
            (0, 0x2000),
            (0x800, 0x800),
            (0x2000, 0x1000),
            (0x10, 0x10),
        ] {
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
        v.resize(1 + 64, 0);
    };
    let dimm = |slot, base, size| fixture::Dimm {
        slot,
        base,
        size,
        node: 0,
    };
    let mut seeds = Vec::new();
    for (name, mode, table) in [
        ("qemu-1g", 0u8, fixture::one_gib_at_4g()),
        (
            "two-dimms-caps",
            1,
            fixture::qemu(
                &[
                    dimm(0, 0x1_0000_0000, 1 << 30),
                    dimm(1, 0x1_4000_0000, 1 << 29),
                ],
                Some(3),
            ),
        ),
        (
            "low",
            0,
            fixture::qemu(&[dimm(0, 0x2000_0000, 0x1000_0000)], Some(1)),
        ),
        // QEMU's FIT through the DSM page protocol (mode bit 1): two
        // NVDIMMs, then the empty reply that ends it.
        ("qemu-fit", 2, fit_replies(&[(0, &fit_of(&[0, 1]))])),
        // The FIT changes after its first page (status 0x100): read again.
        (
            "fit-restart",
            2,
            fit_replies(&[(0, &fit_of(&[0])), (0x100, &[]), (0, &fit_of(&[0, 1]))]),
        ),
    ] {
        let mut v = vec![mode];
        machine(&mut v);
        v.extend_from_slice(&table);
        seeds.push((format!("seed-{name}"), v));
    }
    seeds
}

fn mcfg_seeds() -> Vec<Seed> {
    let mut table = Vec::new();
    table.extend_from_slice(b"MCFG");
    table.extend_from_slice(&60u32.to_le_bytes());
    table.push(1);
    table.push(0);
    table.extend_from_slice(b"BOCHS BXPC    \x01\x00\x00\x00BXPC\x01\x00\x00\x00");
    table.resize(44, 0);
    table.extend_from_slice(&0xb000_0000u64.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0xff, 0, 0, 0, 0]);
    let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    table[9] = 0u8.wrapping_sub(sum);

    let function = |v: &mut Vec<u8>, location: u8, regs: &[u8]| {
        v.push(location);
        for mask in [0xffff_f000u32, 0xffff_ffe0, 0, 0, 0xffff_c000, 0xffff_ffff] {
            v.extend_from_slice(&mask.to_le_bytes());
        }
        let mut space = regs.to_vec();
        space.resize(256, 0);
        v.extend_from_slice(&space);
    };
    // virtio-net: vendor 1af4, device 1000, class 02, status with a
    // capability list at 0x40 -> 0x50 -> end; a 64-bit BAR at 4.
    let mut net = vec![0u8; 256];
    net[..4].copy_from_slice(&[0xf4, 0x1a, 0x00, 0x10]);
    net[6] = 0x10;
    net[0x0b] = 0x02;
    net[0x10] = 0x01;
    net[0x20] = 0x0c;
    net[0x34] = 0x40;
    net[0x40..0x42].copy_from_slice(&[0x09, 0x50]);
    net[0x50..0x52].copy_from_slice(&[0x11, 0x00]);
    // A PCI bridge (header type 1) at 0:1.0 to bus 1, multifunction host
    // bridge at 0:0.0.
    let mut host = vec![0u8; 256];
    host[..4].copy_from_slice(&[0x86, 0x80, 0xc0, 0x29]);
    host[0x0b] = 0x06;
    host[0x0e] = 0x80;
    let mut bridge = vec![0u8; 256];
    bridge[..4].copy_from_slice(&[0x36, 0x1b, 0x01, 0x00]);
    bridge[0x0a..0x0c].copy_from_slice(&[0x04, 0x06]);
    bridge[0x0e] = 0x01;
    bridge[0x19] = 1;
    bridge[0x1a] = 1;

    let mut seeds = Vec::new();
    // The third seed's bridge claims bus 0 as its secondary bus: a loop.
    for (name, mode, secondary) in [
        ("machine", 0u8, 1u8),
        ("machine-fix", 1, 1),
        ("bridge-loop", 1, 0),
    ] {
        bridge[0x19] = secondary;
        let mut v = vec![mode];
        v.extend_from_slice(&(table.len() as u16).to_le_bytes());
        v.extend_from_slice(&table);
        function(&mut v, 0, &host);
        function(&mut v, 1 << 3, &bridge);
        function(&mut v, 3 << 3, &net);
        seeds.push((format!("seed-{name}"), v));
    }
    seeds
}

fn bootconfig_seeds() -> Vec<Seed> {
    [
        (
            "full",
            "# daxbox\npmem=64M@0x10000000\nformat=if-blank\nip=10.0.2.15/24\ngateway=10.0.2.2\n\
             nbd_port=10809\nhttp_port=8080\nhttp_bench=on\nnbd_list=off\nexport_raw=pmem1\n\
             readonly=disk # comment\nlog=debug\ndebug_commands=off\n",
        ),
        ("dhcp", "ip=dhcp\r\npmem=0x4000000@256M\npmem=1G@4G\n\n   \n"),
        (
            "allow",
            "allow=198.18.0.11 * ro nbd\nallow=10.0.0.0/8,192.168.1.0/24 \"pmem1:a b\" rw http\n\
             allow=0.0.0.0/0 pmem2: # all\nallow=10.0.0.1/8 x\nAllow=::1 *\nallow=1.2.3.4 \"open\n",
        ),
        ("bad", "pmem=0@1G\nip=300.1.1.1/40\nnbd_port=0\nunknown=1\nformat\n=x\nlog=loud\nhttp_bench=maybe\n\0\0"),
    ]
    .iter()
    .map(|(name, text)| (format!("seed-{name}"), text.as_bytes().to_vec()))
    .collect()
}

/// The seeds of target `name`.
pub fn seeds(name: &str) -> Vec<Seed> {
    match name {
        "nbd_session" => nbd_seeds(["disk", "ro", "odd"], [256 << 10, 64 << 10, 12_345]),
        "nbd_daxfs" => nbd_seeds(["disk", "ro", "pmem1"], [512 << 10, 128 << 10, 128 << 10]),
        "daxfs_mount" => daxfs_mount_seeds(),
        "daxfs_decode" => daxfs_decode_seeds(),
        "http" => http_seeds(),
        "netstack_poll" => netstack_seeds(),
        "bootconfig" => bootconfig_seeds(),
        "nfit" => nfit_seeds(),
        "mcfg" => mcfg_seeds(),
        _ => Vec::new(),
    }
}
