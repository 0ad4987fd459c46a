//! Human-readable names for `lspci` (PCI Code and ID Assignment 1.11 §1).

/// Name of a class/subclass pair, falling back to the class alone.
pub fn class_name(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "non-volatile memory controller",
        (0x01, _) => "mass storage controller",
        // Ethernet (subclass 0) included: `lspci` lines read "network controller".
        (0x02, _) => "network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, _) => "display controller",
        (0x04, _) => "multimedia controller",
        (0x05, 0x00) => "RAM memory",
        (0x05, _) => "memory controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x07, _) => "communication controller",
        (0x08, _) => "system peripheral",
        (0x09, _) => "input device controller",
        (0x0C, 0x03) => "USB controller",
        (0x0C, 0x05) => "SMBus",
        (0x0C, _) => "serial bus controller",
        (0x00, _) => "unclassified device",
        (0xFF, _) => "unassigned class",
        _ => "device",
    }
}

/// Name of well-known devices: the virtio family (virtio 1.2 §4.1.2: legacy
/// IDs 0x1000.., modern IDs 0x1040 + device type) and QEMU's chipset.
pub fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    match (vendor, device) {
        (0x1AF4, 0x1000 | 0x1041) => Some("virtio-net"),
        (0x1AF4, 0x1001 | 0x1042) => Some("virtio-blk"),
        (0x1AF4, 0x1002 | 0x1045) => Some("virtio-balloon"),
        (0x1AF4, 0x1003 | 0x1043) => Some("virtio-console"),
        (0x1AF4, 0x1004 | 0x1048) => Some("virtio-scsi"),
        (0x1AF4, 0x1005 | 0x1044) => Some("virtio-rng"),
        (0x1AF4, 0x1050) => Some("virtio-gpu"),
        (0x1AF4, 0x1040..=0x107F) => Some("virtio"),
        (0x1234, 0x1111) => Some("bochs-display"),
        (0x8086, 0x1237) => Some("i440FX"),
        (0x8086, 0x7000) => Some("PIIX3 ISA"),
        (0x8086, 0x7010) => Some("PIIX3 IDE"),
        (0x8086, 0x7113) => Some("PIIX4 ACPI"),
        (0x8086, 0x29C0) => Some("Q35 DRAM controller"),
        (0x8086, 0x2918) => Some("ICH9 LPC"),
        (0x8086, 0x2922) => Some("ICH9 AHCI"),
        (0x8086, 0x2930) => Some("ICH9 SMBus"),
        (0x8086, 0x100E) => Some("e1000"),
        (0x8086, 0x10D3) => Some("e1000e"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(class_name(2, 0), "network controller");
        assert_eq!(class_name(6, 4), "PCI bridge");
        assert_eq!(class_name(2, 0x80), "network controller");
        assert_eq!(class_name(0x42, 0), "device");
        assert_eq!(device_name(0x1af4, 0x1000), Some("virtio-net"));
        assert_eq!(device_name(0x1af4, 0x1041), Some("virtio-net"));
        assert_eq!(device_name(0xdead, 0xbeef), None);
    }
}
