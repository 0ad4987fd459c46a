//! `nfit`: the ACPI NFIT parser (`drivers/pmem/src/nfit.rs`) and what the
//! kernel does with its result: candidates, discovery against a machine
//! described by the input (E820/UEFI persistent ranges, `pmem=` requests,
//! RAM, forbidden regions), and the 2 MiB mapping plan of every accepted
//! range.
//!
//! Input: byte 0 (bit 0: set the header length to the table's length and
//! fix the ACPI checksum, so the structure walk is reached; bit 1: the
//! rest is QEMU's FIT instead, read through `daxbox_pmem::fit` as hot-add
//! does), a machine description of 64 bytes, then the table.
//!
//! FIT mode: the bytes are QEMU's replies to the DSM page protocol, one
//! per call, each a u16 length then that many bytes copied into the page
//! (so length, status and data are the input's); the FIT `read_fit`
//! returns (or the bare bytes when it refuses them) is parsed as
//! structures.
//!
//! Checked: no panic; `read_fit` stays within its bounds (total size,
//! restarts); accepted ranges are 4 KiB aligned, non-empty, do not overlap
//! each other, RAM or a forbidden region, and can be mapped.

use daxbox_pmem::fit;
use daxbox_pmem::nfit::{self, fixture::fix_checksum};
use daxbox_pmem::{discover, plan, Candidate, Forbidden, Machine, Region};

use crate::input::Input;

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut machine = Input::new(input.bytes(64));
    let mut table = input.rest().to_vec();
    if mode & 1 != 0 && table.len() >= 10 {
        let len = (table.len() as u32).to_le_bytes();
        if table.len() >= 8 {
            table[4..8].copy_from_slice(&len);
        }
        fix_checksum(&mut table);
    }
    let mut candidates = Vec::new();
    if mode & 2 != 0 {
        let mut replies = Input::new(&table);
        let mut calls = 0usize;
        let read = fit::read_fit(|_, page| {
            calls += 1;
            if replies.is_empty() {
                return Err("out of replies");
            }
            let len = usize::from(replies.u16()).min(fit::PAGE);
            let bytes = replies.bytes(len);
            page[..bytes.len()].copy_from_slice(bytes);
            Ok(())
        });
        if let Ok(bytes) = &read {
            assert!(bytes.len() <= fit::MAX_FIT_BYTES);
        }
        let per_restart = fit::MAX_FIT_BYTES / (fit::PAGE - fit::REPLY_HEADER) + 2;
        assert!(
            calls <= (fit::MAX_RESTARTS as usize + 1) * per_restart,
            "{calls} calls"
        );
        let parsed = fit::parse_fit(read.as_deref().unwrap_or(&table));
        assert!(parsed.structures <= fit::MAX_FIT_STRUCTURES);
        candidates.extend(Candidate::from_nfit(&parsed));
    } else if let Ok(parsed) = nfit::parse(&table) {
        let _ = parsed.domain();
        assert!(parsed.persistent_ranges().count() <= parsed.structures);
        candidates.extend(Candidate::from_nfit(&parsed));
    }
    // Small numbers scaled to pages so ranges meet and overlap often.
    let range = |input: &mut Input| {
        let start = u64::from(input.u16()) << 12;
        let len = u64::from(input.u16()) << 10;
        (start, len)
    };
    let (s, l) = range(&mut machine);
    candidates.push(Candidate::e820(s, l));
    let (s, l) = range(&mut machine);
    candidates.push(Candidate::uefi(s, l));
    let (s, l) = range(&mut machine);
    candidates.push(Candidate::boot_config(s, l, "fuzz"));
    let ram: Vec<Region> = (0..3)
        .map(|_| {
            let (start, len) = range(&mut machine);
            Region { start, len }
        })
        .collect();
    let (s, l) = range(&mut machine);
    let forbidden = [Forbidden {
        start: s,
        len: l,
        what: "kernel image",
    }];
    let max_physical_address = match machine.u8() % 3 {
        0 => 1 << 36,
        1 => 1 << 52,
        _ => u64::from(machine.u32()) << 8,
    };
    let found = discover(
        &candidates,
        &Machine {
            usable_ram: &ram,
            forbidden: &forbidden,
            max_physical_address,
        },
    );
    // Zero-length regions overlap nothing.
    let overlaps = |a: u64, al: u64, b: u64, bl: u64| {
        al > 0 && bl > 0 && a < b.saturating_add(bl) && b < a.saturating_add(al)
    };
    for (i, r) in found.accepted.iter().enumerate() {
        assert!(
            r.len > 0 && r.start % 4096 == 0 && r.len % 4096 == 0,
            "{r:?}"
        );
        assert!(r.start.checked_add(r.len).is_some(), "{r:?}");
        assert!(
            r.end() <= max_physical_address,
            "{r:?} beyond {max_physical_address:#x}"
        );
        for other in &found.accepted[..i] {
            assert!(
                !overlaps(r.start, r.len, other.start, other.len),
                "{r:?} overlaps {other:?}"
            );
        }
        for f in &forbidden {
            assert!(
                !overlaps(r.start, r.len, f.start, f.len),
                "{r:?} overlaps {f:?}"
            );
        }
        assert!(plan(r.start, r.len).is_ok(), "{r:?} cannot be mapped");
    }
    for refusal in &found.refused {
        let _ = format!("{refusal:?}");
    }
}
