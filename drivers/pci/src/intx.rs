//! Which I/O APIC input (GSI) a PCI device's INTx pin reaches.
//!
//! The `interrupt_line` register holds what firmware routed the pin to on
//! the legacy 8259 PIC. On QEMU's `pc` (i440fx/PIIX3) the PCI interrupt
//! links drive the same-numbered I/O APIC inputs too, so the line is the
//! GSI. On `q35` (ICH9) they do not: PIRQ A-H drive I/O APIC inputs 16-23
//! and reach ISA IRQs only through the PIC, so the line names an input
//! the device never raises. QEMU's ICH9 routes INTA-D of slots 0-24 on
//! bus 0 to PIRQ E-H rotated by the slot (`irr[slot][pin] = (slot + pin)
//! % 4 + 4`, which its ACPI `_PRT` repeats, and SeaBIOS follows); slots
//! 25-31 use the chipset's DxxIR registers and devices behind bridges are
//! swizzled, neither of which this derives.

use crate::Bdf;

/// Q35's host bridge (the MCH at 00:00.0): vendor and device ID.
pub const Q35_HOST_BRIDGE: (u16, u16) = (0x8086, 0x29c0);

/// The chipset whose interrupt routing applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chipset {
    /// QEMU `q35` (ICH9): PCI INTx on I/O APIC inputs 16-23.
    Q35,
    /// Anything else (QEMU `pc`): the firmware's line is the GSI.
    Legacy,
}

impl Chipset {
    /// The chipset of a machine whose 00:00.0 has this vendor and device ID.
    pub fn from_host_bridge(vendor: u16, device: u16) -> Self {
        if (vendor, device) == Q35_HOST_BRIDGE {
            Chipset::Q35
        } else {
            Chipset::Legacy
        }
    }
}

/// The GSI of `bdf`'s INTx `pin` (1..=4, INTA#..INTD#) whose firmware
/// `line` is given; `None` when the device has no pin, no line, or the
/// routing is not one this knows (the caller then polls).
pub fn intx_gsi(chipset: Chipset, bdf: Bdf, pin: u8, line: u8) -> Option<u8> {
    if !(1..=4).contains(&pin) {
        return None;
    }
    match chipset {
        Chipset::Legacy => (line < 24).then_some(line),
        Chipset::Q35 if bdf.bus == 0 && bdf.device <= 24 => {
            Some(16 + 4 + (bdf.device + pin - 1) % 4)
        }
        Chipset::Q35 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(bus: u8, device: u8) -> Bdf {
        Bdf::new(bus, device, 0).unwrap()
    }

    #[test]
    fn q35_slots_rotate_over_pirq_e_to_h() {
        let q35 = Chipset::from_host_bridge(0x8086, 0x29c0);
        assert_eq!(q35, Chipset::Q35);
        // 00:02.0 INTA#: PIRQG, I/O APIC input 22 (whatever firmware put
        // in the line register for the PIC: SeaBIOS writes 10 or 11).
        assert_eq!(intx_gsi(q35, bdf(0, 2), 1, 11), Some(22));
        assert_eq!(intx_gsi(q35, bdf(0, 3), 1, 11), Some(23));
        assert_eq!(intx_gsi(q35, bdf(0, 4), 1, 10), Some(20));
        assert_eq!(intx_gsi(q35, bdf(0, 2), 2, 10), Some(23));
        assert_eq!(intx_gsi(q35, bdf(0, 24), 4, 10), Some(23));
        // Not derived: slots 25-31, other buses, no pin.
        assert_eq!(intx_gsi(q35, bdf(0, 25), 1, 10), None);
        assert_eq!(intx_gsi(q35, bdf(1, 0), 1, 10), None);
        assert_eq!(intx_gsi(q35, bdf(0, 2), 0, 10), None);
        assert_eq!(intx_gsi(q35, bdf(0, 2), 5, 10), None);
    }

    #[test]
    fn elsewhere_the_line_is_the_gsi() {
        let pc = Chipset::from_host_bridge(0x8086, 0x1237);
        assert_eq!(pc, Chipset::Legacy);
        assert_eq!(intx_gsi(pc, bdf(0, 3), 1, 11), Some(11));
        assert_eq!(intx_gsi(pc, bdf(0, 3), 1, 0xff), None);
        assert_eq!(intx_gsi(pc, bdf(0, 3), 0, 11), None);
    }
}
