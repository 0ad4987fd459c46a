//! Capability list walk (PCI Local Bus 3.0 §6.7). Loop-proof: a pointer may
//! only go into 0x40..0x100, each dword is visited at most once, and the walk
//! stops after 48 entries (the most that fit), so a corrupt or malicious list
//! cannot hang the kernel.

use crate::{reg, Bdf, ConfigAccess};

/// One entry in a function's capability list.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Offset of the capability header in configuration space.
    pub offset: u8,
    /// Capability ID (0x09 vendor-specific, 0x11 MSI-X, ...).
    pub id: u8,
}

/// Iterator over a function's capabilities; see [`capabilities`].
pub struct Capabilities<'a, C: ConfigAccess + ?Sized> {
    access: &'a C,
    bdf: Bdf,
    next: u8,
    visited: [u64; 1],
    remaining: u8,
}

/// Walks the capability list of `bdf` (empty if the status register says
/// there is none).
pub fn capabilities<C: ConfigAccess + ?Sized>(access: &C, bdf: Bdf) -> Capabilities<'_, C> {
    let status = access.read_u16(bdf, reg::COMMAND_STATUS + 2);
    let header_type = access.read_u8(bdf, reg::HEADER + 2) & 0x7F;
    let next = if status != u16::MAX && status & reg::STATUS_CAPABILITIES != 0 && header_type <= 1 {
        access.read_u8(bdf, reg::CAPABILITIES)
    } else {
        0
    };
    Capabilities {
        access,
        bdf,
        next,
        visited: [0],
        remaining: 48,
    }
}

impl<C: ConfigAccess + ?Sized> Iterator for Capabilities<'_, C> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        // The bottom two bits of the pointer are reserved (§6.7).
        let offset = self.next & 0xFC;
        if offset < 0x40 || self.remaining == 0 {
            return None;
        }
        let dword = u32::from(offset - 0x40) / 4; // 0..48
        let bit = 1u64 << dword;
        if self.visited[0] & bit != 0 {
            return None;
        }
        self.visited[0] |= bit;
        self.remaining -= 1;
        let header = self.access.read_u32(self.bdf, u16::from(offset));
        self.next = (header >> 8) as u8;
        Some(Capability {
            offset,
            id: header as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFunction, FakeSpace};
    use proptest::prelude::*;
    use std::vec::Vec;

    fn with_caps(chain: &[(u8, u8, u8)]) -> (FakeSpace, Bdf) {
        let mut space = FakeSpace::default();
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0, 0);
        f.regs[1] = u32::from(reg::STATUS_CAPABILITIES) << 16;
        f.set_u8(0x34, chain.first().map_or(0, |c| c.0));
        for &(offset, id, next) in chain {
            f.set_u8(offset.into(), id);
            f.set_u8(usize::from(offset) + 1, next);
        }
        space.add(0, 4, 0, f);
        (space, Bdf::new(0, 4, 0).unwrap())
    }

    #[test]
    fn walks_chain() {
        let (space, bdf) = with_caps(&[(0x98, 0x11, 0x84), (0x84, 0x09, 0x70), (0x70, 0x09, 0)]);
        let caps: Vec<_> = capabilities(&space, bdf)
            .map(|c| (c.offset, c.id))
            .collect();
        assert_eq!(caps, [(0x98, 0x11), (0x84, 0x09), (0x70, 0x09)]);
    }

    #[test]
    fn stops_on_loop() {
        let (space, bdf) = with_caps(&[(0x40, 0x09, 0x50), (0x50, 0x05, 0x40)]);
        assert_eq!(capabilities(&space, bdf).count(), 2);
    }

    #[test]
    fn no_list_without_status_bit() {
        let (mut space, bdf) = with_caps(&[(0x40, 0x09, 0)]);
        space.functions.get_mut(&bdf).unwrap().regs[1] = 0;
        assert_eq!(capabilities(&space, bdf).count(), 0);
        let absent = Bdf::new(9, 0, 0).unwrap();
        assert_eq!(capabilities(&space, absent).count(), 0);
    }

    proptest! {
        /// Random configuration space: the walk terminates within 48 entries.
        #[test]
        fn random_space_terminates(bytes in proptest::collection::vec(any::<u8>(), 256)) {
            let mut space = FakeSpace::default();
            let mut f = FakeFunction::new(1, 2, 3, 4, 0);
            for (i, b) in bytes.iter().enumerate().skip(0x10) {
                f.set_u8(i, *b);
            }
            f.regs[1] |= u32::from(reg::STATUS_CAPABILITIES) << 16;
            space.add(0, 0, 0, f);
            let n = capabilities(&space, Bdf::new(0, 0, 0).unwrap()).count();
            prop_assert!(n <= 48);
        }
    }
}
