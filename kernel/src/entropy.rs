//! The entropy source TLS uses, chosen once at boot: RDRAND when CPUID
//! reports it, else the first virtio-rng device on PCI (modern id 0x1044,
//! transitional 0x1005), driven by `daxbox_platform::virtio_rng` over the
//! same PCI transport and HAL as the NIC. Without either (or when the
//! device fails its first request) there is none, and `tls` refuses TLS.
//! Boot prints the choice: `entropy: RDRAND`, `entropy: virtio-rng at
//! 00:04.0`, or `entropy: none: TLS refused`.

use daxbox_pci::{reg, ConfigAccess, Function};
use daxbox_platform::entropy;
use daxbox_platform::virtio::KernelHal;
use daxbox_platform::virtio_drivers::transport::pci::PciTransport;

use crate::{pci, println};

/// virtio-rng's PCI device ids: modern (0x1040 + 4) and transitional.
const RNG_IDS: [u16; 2] = [0x1044, 0x1005];

fn find_rng() -> Option<Function> {
    pci::functions()
        .iter()
        .find(|f| f.vendor == 0x1af4 && RNG_IDS.contains(&f.device))
        .cloned()
}

/// Starts the device at `function` and asks it for a first 32 bytes.
fn start(function: &Function) -> Result<(), alloc::string::String> {
    let bdf = function.bdf;
    let mut access = pci::access();
    // Memory decoding and bus mastering (DMA) on; the driver polls, so
    // INTx stays as firmware left it.
    let command = access.read_u32(bdf, reg::COMMAND_STATUS) & 0xFFFF;
    let command = command | u32::from(reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER);
    access.write_u32(bdf, reg::COMMAND_STATUS, command);
    // The BARs as `pci::init` decoded and sized them (not sized again).
    let bars = pci::bars(bdf).unwrap_or([None; 6]);
    let transport = PciTransport::new::<KernelHal, _>(&access, bdf, &bars)
        .map_err(|error| alloc::format!("{error}"))?;
    entropy::use_virtio(transport).map_err(|error| alloc::format!("{error}"))?;
    let mut probe = [0u8; 32];
    entropy::fill(&mut probe).map_err(|error| alloc::format!("{error}"))
}

/// Picks the source and prints it. Runs after `pci::init`, before `tls`.
pub fn init() {
    if entropy::rdrand_present() {
        println!("entropy: RDRAND");
        return;
    }
    match find_rng() {
        Some(function) => match start(&function) {
            Ok(()) => println!("entropy: virtio-rng at {}", function.bdf),
            Err(why) => println!(
                "entropy: virtio-rng at {} failed: {}; none: TLS refused",
                function.bdf, why
            ),
        },
        None => println!("entropy: none: TLS refused"),
    }
}
