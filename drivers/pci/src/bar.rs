//! Base address registers: decoding and size probing (PCI Local Bus 3.0
//! §6.2.5.1: write all-ones, read back, the zero low bits give the size).

use crate::{reg, Bdf, ConfigAccess};

/// One decoded BAR.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bar {
    /// A memory BAR.
    Memory {
        /// Physical base address.
        address: u64,
        /// Size in bytes (a power of two).
        size: u64,
        /// Prefetchable memory.
        prefetchable: bool,
        /// Uses two BAR slots (64-bit address).
        wide: bool,
    },
    /// An I/O-space BAR.
    Io {
        /// Base port.
        port: u32,
        /// Size in ports.
        size: u32,
    },
}

/// Decodes a BAR from its original value(s) and the value(s) read back after
/// writing all-ones. `high`/`high_mask` are the next slot for a 64-bit memory
/// BAR. Returns `None` for an unimplemented BAR (no writable bits).
pub fn decode_bar(low: u32, low_mask: u32, high: Option<(u32, u32)>) -> Option<Bar> {
    if low & 1 == 1 {
        // I/O BAR: bit 1 reserved; devices may implement only 16 address bits,
        // so the unimplemented upper bits read as zero: treat them as set.
        let mut mask = low_mask & !0x3;
        if mask == 0 {
            return None;
        }
        if mask & 0xFFFF_0000 == 0 {
            mask |= 0xFFFF_0000;
        }
        return Some(Bar::Io {
            port: low & !0x3,
            size: (!mask).wrapping_add(1),
        });
    }
    let prefetchable = low & 0x8 != 0;
    let (address, mask, wide) = match (low >> 1 & 0x3, high) {
        (0b10, Some((high, high_mask))) => (
            u64::from(high) << 32 | u64::from(low & !0xF),
            u64::from(high_mask) << 32 | u64::from(low_mask & !0xF),
            true,
        ),
        // A 64-bit BAR in the last slot has no upper half: invalid.
        (0b10, None) => return None,
        _ => (
            u64::from(low & !0xF),
            0xFFFF_FFFF_0000_0000 | u64::from(low_mask & !0xF),
            false,
        ),
    };
    if mask & 0xFFFF_FFFF == 0 && (!wide || mask >> 32 == 0) {
        return None;
    }
    Some(Bar::Memory {
        address,
        size: (!mask).wrapping_add(1),
        prefetchable,
        wide,
    })
}

/// Probes every BAR of `bdf` (6 for a type-0 header, 2 for a bridge).
///
/// Memory and I/O decoding are disabled while the BARs hold all-ones so the
/// device never claims a bogus range; the original values and command
/// register are restored afterwards.
pub fn probe_bars<C: ConfigAccess + ?Sized>(access: &mut C, bdf: Bdf) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let count = match access.read_u8(bdf, reg::HEADER + 2) & 0x7F {
        0 => 6,
        1 => 2,
        _ => return bars,
    };
    let command = access.read_u32(bdf, reg::COMMAND_STATUS);
    // Only the command half is written back; status bits are write-1-to-clear.
    let command_only = command & 0xFFFF;
    access.write_u32(
        bdf,
        reg::COMMAND_STATUS,
        command_only & !u32::from(reg::COMMAND_IO | reg::COMMAND_MEMORY),
    );
    let mut index = 0;
    while index < count {
        let offset = reg::BAR0 + 4 * index as u16;
        let (low, low_mask) = size_register(access, bdf, offset);
        let is_wide = low & 0x7 == 0x4;
        let high = if is_wide && index + 1 < count {
            Some(size_register(access, bdf, offset + 4))
        } else {
            None
        };
        bars[index] = decode_bar(low, low_mask, high);
        index += if is_wide { 2 } else { 1 };
    }
    access.write_u32(bdf, reg::COMMAND_STATUS, command_only);
    bars
}

fn size_register<C: ConfigAccess + ?Sized>(access: &mut C, bdf: Bdf, offset: u16) -> (u32, u32) {
    let original = access.read_u32(bdf, offset);
    access.write_u32(bdf, offset, u32::MAX);
    let mask = access.read_u32(bdf, offset);
    access.write_u32(bdf, offset, original);
    (original, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFunction, FakeSpace};
    use proptest::prelude::*;

    #[test]
    fn decode_examples() {
        assert_eq!(
            decode_bar(0xfebf_1000, 0xffff_f000, None),
            Some(Bar::Memory {
                address: 0xfebf_1000,
                size: 0x1000,
                prefetchable: false,
                wide: false
            })
        );
        assert_eq!(
            decode_bar(0xc041, 0xffff_ffe1, None),
            Some(Bar::Io {
                port: 0xc040,
                size: 0x20
            })
        );
        // 16-bit I/O decoder: upper bits read back as zero.
        assert_eq!(
            decode_bar(0xc001, 0x0000_ffe1, None),
            Some(Bar::Io {
                port: 0xc000,
                size: 0x20
            })
        );
        assert_eq!(
            decode_bar(0x0000_000c, 0xffff_c00c, Some((0x1, 0xffff_ffff))),
            Some(Bar::Memory {
                address: 0x1_0000_0000,
                size: 0x4000,
                prefetchable: true,
                wide: true
            })
        );
        assert_eq!(decode_bar(0, 0, None), None);
        assert_eq!(
            decode_bar(0x4, 0xffff_fff4, None),
            None,
            "64-bit BAR without upper half"
        );
    }

    proptest! {
        /// Any naturally aligned power-of-two memory BAR round-trips.
        #[test]
        fn memory_bar_roundtrip(shift in 4u32..40, wide: bool, prefetchable: bool, base_units in 0u64..1024) {
            let size = 1u64 << shift;
            let limit = if wide { u64::MAX >> 1 } else { u64::from(u32::MAX) };
            prop_assume!(shift < 32 || wide);
            let address = (base_units << shift) & limit & !(size - 1);
            let flags = u32::from(prefetchable) << 3 | if wide { 0x4 } else { 0 };
            let low = address as u32 | flags;
            let mask = !(size - 1);
            let low_mask = mask as u32 | flags;
            let high = wide.then_some(((address >> 32) as u32, (mask >> 32) as u32));
            prop_assert_eq!(
                decode_bar(low, low_mask, high),
                Some(Bar::Memory { address, size, prefetchable, wide })
            );
        }

        /// Arbitrary register contents never panic.
        #[test]
        fn decode_never_panics(low: u32, mask: u32, high: Option<(u32, u32)>) {
            let _ = decode_bar(low, mask, high);
        }
    }

    #[test]
    fn probe_restores_registers() {
        let mut space = FakeSpace::default();
        let mut f = FakeFunction::new(0x1af4, 0x1000, 2, 0, 0);
        f.regs[1] = 0x0010_0007; // status: caps; command: io|mem|master
        f.regs[4] = 0xc041; // BAR0: I/O 32 ports
        f.bar_masks[0] = 0xffff_ffe0;
        f.regs[5] = 0xfebf_1000; // BAR1: 4 KiB memory
        f.bar_masks[1] = 0xffff_f000;
        f.regs[8] = 0xfe00_000c; // BAR4+5: 64-bit prefetchable 16 KiB
        f.bar_masks[4] = 0xffff_c000;
        f.regs[9] = 0;
        f.bar_masks[5] = 0xffff_ffff;
        let bdf = Bdf::new(0, 3, 0).unwrap();
        space.add(0, 3, 0, f);
        let bars = probe_bars(&mut space, bdf);
        assert_eq!(
            bars[0],
            Some(Bar::Io {
                port: 0xc040,
                size: 32
            })
        );
        assert_eq!(
            bars[1],
            Some(Bar::Memory {
                address: 0xfebf_1000,
                size: 0x1000,
                prefetchable: false,
                wide: false
            })
        );
        assert_eq!(bars[2], None);
        assert_eq!(
            bars[4],
            Some(Bar::Memory {
                address: 0xfe00_0000,
                size: 0x4000,
                prefetchable: true,
                wide: true
            })
        );
        assert_eq!(bars[5], None);
        let f = &space.functions[&bdf];
        assert_eq!(f.regs[4], 0xc041);
        assert_eq!(f.regs[5], 0xfebf_1000);
        assert_eq!(f.regs[8], 0xfe00_000c);
        assert_eq!(f.regs[1] & 0xffff, 0x0007, "command restored");
    }
}
