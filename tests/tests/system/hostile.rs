//! Hostile images: NVDIMMs planted with crafted daxfs images whose
//! checksums are all valid (built on the host with daxfs's own format
//! code), next to a good NVDIMM; one of them also holds a committed
//! journal transaction, which a mount that wrote before validating would
//! have replayed. The appliance boots, refuses each bad
//! device with a message, serves the good one to a real client, and the
//! planted backing files are byte for byte unchanged afterwards.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use daxbox_persist::VecMemory;
use daxbox_tests::nbd_client::{run_tool, run_tool_ok, uri};
use daxbox_tests::{run_dir, Firmware, HarnessError, Machine, Nvdimm, QemuOptions};
use daxfs::format::{
    self, checksum_skipping, Extent, OverflowBlock, Superblock, BLOCK_SIZE, INLINE_EXTENTS,
    OVERFLOW_EXTENTS, RECORD_SIZE, SUPER_SIZE,
};
use daxfs::{Filesystem, FormatOptions};

const MIB: u64 = 1 << 20;
const QUICK: Duration = Duration::from_secs(60);
const SIZE: u64 = 16 * MIB;

/// A good image with files `a` (one block) and `b` (a 40-extent,
/// overflow-chained file), cleanly unmounted.
fn base() -> Vec<u8> {
    let opts = FormatOptions {
        uuid: [8; 16],
        max_files: Some(64),
    };
    let mut fs = Filesystem::format(VecMemory::new(SIZE as usize), opts).unwrap();
    let a = fs.create("a").unwrap();
    fs.write(a, 0, &[0xAA; 4096]).unwrap();
    let b = fs.create("b").unwrap();
    let pad = fs.create("pad").unwrap();
    for i in 0..40u64 {
        fs.write(b, i * 8192, &[i as u8 + 1; 4096]).unwrap();
        fs.write(pad, i * 4096, &[0x22; 4096]).unwrap();
    }
    fs.unmount().into_bytes()
}

fn superblock(bytes: &[u8]) -> Superblock {
    let mut b = [0u8; SUPER_SIZE];
    b.copy_from_slice(&bytes[..SUPER_SIZE]);
    Superblock::decode(&b).unwrap()
}

/// The crafted images, each with a valid checksum everywhere.
fn hostile_images() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // A superblock declaring 4 billion files (and the table that goes
    // with them), both copies.
    let mut bytes = base();
    let mut sb = superblock(&bytes);
    sb.max_files = u32::MAX;
    sb.table_blocks = (u32::MAX as u64).div_ceil(8);
    sb.data_start = 3 + sb.table_blocks;
    sb.total_blocks = sb.data_start + 1024;
    for copy in 0..2 {
        let at = copy * BLOCK_SIZE as usize;
        bytes[at..at + SUPER_SIZE].copy_from_slice(&sb.encode());
    }
    out.push(("max_files", bytes));

    // A record claiming 4 billion extents (with the matching overflow
    // block count).
    let mut bytes = base();
    let mut r = format::image_record(&bytes, 0).unwrap();
    r.extent_count = u32::MAX;
    r.overflow_count = ((u32::MAX as usize - INLINE_EXTENTS).div_ceil(OVERFLOW_EXTENTS)) as u32;
    r.overflow_first = superblock(&bytes).data_start;
    r.inline = vec![r.inline[0]; INLINE_EXTENTS];
    format::put_image_record(&mut bytes, 0, &r);
    out.push(("counts", bytes));

    // File b's overflow chain closed into a cycle.
    let mut bytes = base();
    let r = format::image_record(&bytes, 1).unwrap();
    assert!(r.overflow_count >= 1);
    let first = r.overflow_first as usize * BLOCK_SIZE as usize;
    let mut ob = OverflowBlock::decode(&bytes[first..first + BLOCK_SIZE as usize]).unwrap();
    ob.next = r.overflow_first;
    bytes[first..first + BLOCK_SIZE as usize].copy_from_slice(&ob.encode());
    let mut r = r;
    r.overflow_count += 1;
    r.extent_count = (INLINE_EXTENTS + OVERFLOW_EXTENTS + 1) as u32;
    format::put_image_record(&mut bytes, 1, &r);
    out.push(("cycle", bytes));

    // File a's extent maps file b's overflow block: two files over one
    // block that must never be shared.
    let mut bytes = base();
    let chain_block = format::image_record(&bytes, 1).unwrap().overflow_first;
    let mut r = format::image_record(&bytes, 0).unwrap();
    r.inline = vec![Extent {
        logical: 0,
        len: 1,
        physical: chain_block,
    }];
    format::put_image_record(&mut bytes, 0, &r);
    out.push(("overlap", bytes));

    // A name that is not UTF-8 (checksum recomputed over the raw bytes).
    let mut bytes = base();
    let at = (format::image_superblock(&bytes).table_start * BLOCK_SIZE) as usize;
    bytes[at + 64] = 0xFF;
    let crc = checksum_skipping(&bytes[at..at + RECORD_SIZE], 60);
    bytes[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
    out.push(("utf8", bytes));

    // A committed journal transaction (which a mount replays) and, in
    // another record, extents that overlap: the refusal must come before
    // the replay writes anything.
    let mut bytes = base();
    let mut r = format::image_record(&bytes, 0).unwrap();
    r.size = 100;
    format::commit_image_transaction(&mut bytes, 77, 0, &r);
    let mut r = format::image_record(&bytes, 2).unwrap();
    let p = r.inline[0].physical;
    r.inline = vec![
        Extent {
            logical: 0,
            len: 2,
            physical: p,
        },
        Extent {
            logical: 1,
            len: 1,
            physical: p,
        },
    ];
    r.extent_count = 2;
    r.overflow_count = 0;
    r.overflow_first = 0;
    // A plain list (a layered one may overlap: FORMAT.md "Layered extent
    // lists"; this file's 40 extents made its list layered).
    r.layered = false;
    format::put_image_record(&mut bytes, 2, &r);
    out.push(("journal", bytes));
    out
}

fn hash_file(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("reading a backing file");
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[test]
fn hostile_images_are_refused_untouched_and_the_good_device_serves() -> Result<(), HarnessError> {
    let name = "hostile_images";
    // Backing files written before the first boot live in a folder the
    // harness never empties.
    let host = run_dir(&format!("{name}-host"));
    std::fs::create_dir_all(&host).expect("creating the host folder");
    let mut planted: Vec<(&str, PathBuf, u64)> = Vec::new();
    let mut options = QemuOptions::new(name, Firmware::Bios).with_boot_config("format=if-blank\n");
    for (kind, bytes) in hostile_images() {
        // Each mounts-refuses on the host too (the kernel runs this code).
        assert!(
            Filesystem::mount(VecMemory::from_bytes(bytes.clone())).is_err(),
            "{kind} mounts on the host"
        );
        let path = host.join(format!("{kind}.img"));
        std::fs::write(&path, &bytes).expect("planting an image");
        let hash = hash_file(&path);
        options = options.with_nvdimm(Nvdimm::existing(&path, SIZE));
        planted.push((kind, path, hash));
    }
    options = options.with_nvdimm(Nvdimm::fresh(run_dir(name).join("good.img"), 64 * MIB));
    options.max_runtime = Duration::from_secs(300);

    let mut machine = Machine::boot_to_prompt(options)?;
    let boot = machine.output();
    let refused = boot
        .lines()
        .filter(|l| {
            l.starts_with("storage: pmem")
                && (l.contains("damaged filesystem, not mounted")
                    || l.contains("mount failed")
                    // A superblock that claims more blocks than the device
                    // has (the absurd max_files image) is named as such.
                    || l.contains("; not mounted (data untouched"))
        })
        .count();
    assert_eq!(
        refused,
        planted.len(),
        "every planted device refused:\n{boot}"
    );
    assert_eq!(
        boot.matches("formatted and mounted daxfs").count(),
        1,
        "the good device is formatted and mounted:\n{boot}"
    );
    let out = machine.command("create served 1M")?;
    assert!(!out.contains("error"), "{out}");
    let port = machine.nbd_port();
    // The forwarded port accepts before the guest listens: readiness is
    // a completed exchange (bounded by count, not by time).
    for _ in 0..60 {
        if run_tool("nbdinfo", &["--list", &uri(port, "")], QUICK).success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed = run_tool_ok("nbdinfo", &["--list", &uri(port, "")], QUICK);
    assert!(listed.contains("export=\"served\""), "{listed}");
    let mem = machine.command("mem")?;
    assert!(mem.contains("mount"), "{mem}");
    machine.send_raw(b"poweroff\r")?;
    machine.wait_exit(Duration::from_secs(60))?;
    for (kind, path, hash) in planted {
        assert_eq!(hash_file(&path), hash, "the {kind} image was written");
    }
    Ok(())
}
