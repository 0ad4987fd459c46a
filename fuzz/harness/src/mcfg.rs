//! `mcfg`: PCI parsing in `drivers/pci`: the ACPI MCFG table, and bus
//! enumeration, BAR sizing and the capability walk over a configuration
//! space whose registers come from the input.
//!
//! Input: byte 0 (bit 0: fix the MCFG length and checksum), the length of
//! the MCFG part (u16), the MCFG bytes, then configuration space: up to
//! four functions, each a device/function byte, BAR masks and 256 bytes of
//! registers.
//!
//! Checked: no panic, no endless walk; every MCFG entry's bus range is
//! ordered; enumeration finds only functions that exist.

use daxbox_pci::fake::{FakeFunction, FakeSpace};
use daxbox_pci::{capabilities, class_name, enumerate, parse_mcfg, probe_bars};

use crate::input::Input;

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mcfg_len = usize::from(input.u16()) % 512;
    let mut table = input.bytes(mcfg_len).to_vec();
    if mode & 1 != 0 && table.len() >= 10 {
        let len = (table.len() as u32).to_le_bytes();
        table[4..8].copy_from_slice(&len);
        table[9] = 0;
        let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        table[9] = 0u8.wrapping_sub(sum);
    }
    if let Ok(entries) = parse_mcfg(&table) {
        for entry in entries {
            if let Some((start, len)) = entry.mapped_range() {
                assert!(len > 0 && start.checked_add(len).is_some(), "{entry:?}");
            }
        }
    }

    let mut space = FakeSpace::default();
    let mut added = Vec::new();
    while !input.is_empty() && added.len() < 4 {
        let location = input.u8();
        let (device, function) = (location >> 3 & 0x1f, location & 7);
        let mut f = FakeFunction::new(0, 0, 0, 0, 0);
        for mask in f.bar_masks.iter_mut() {
            *mask = input.u32();
        }
        for (i, b) in input.bytes(256).iter().enumerate() {
            f.set_u8(i, *b);
        }
        space.add(0, device, function, f);
        added.push((device, function));
    }
    let found = enumerate(&space);
    for function in &found {
        assert!(
            space.functions.contains_key(&function.bdf),
            "enumerated {:?}, which is not there",
            function.bdf
        );
        let _ = class_name(function.class, function.subclass);
        assert!(capabilities(&space, function.bdf).count() <= 48);
    }
    let bdfs: Vec<_> = found.iter().map(|f| f.bdf).collect();
    for bdf in bdfs {
        let _ = probe_bars(&mut space, bdf);
    }
}
