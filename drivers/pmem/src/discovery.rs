//! Merging and checking persistent-memory ranges from every source.
//!
//! The kernel collects [`Candidate`]s in discovery order (NFIT SPA ranges,
//! E820 type 12 regions, UEFI type 14 regions, then `pmem=` boot-config
//! requests) and calls [`discover`] with the facts it knows about the
//! machine ([`Machine`]: usable RAM, regions that must not be touched, the
//! physical address limit). Each candidate is either accepted (and becomes
//! device `pmemN`, N counting accepted ranges in order), merged into an
//! earlier identical range reported by another source, or refused with a
//! message naming the range. A refusal never stops the other ranges.
//!
//! Rules, in the order they are checked:
//! 1. not empty, no wrap past 2^64, 4 KiB aligned start and length;
//! 2. below the maximum physical address;
//! 3. no overlap with a [`Forbidden`] region (kernel image, bootloader
//!    data, page tables, RAM in use, ...; checked before RAM so that a
//!    range over the kernel is reported as exactly that);
//! 4. a `pmem=` carve-out must lie wholly inside usable RAM (it is RAM
//!    taken away from the volatile allocator, like Linux `memmap=nn!ss`);
//!    a firmware-reported range must not overlap usable RAM (firmware that
//!    reports the same bytes as both is not trusted with either);
//! 5. an exact duplicate of an accepted range from another source is
//!    merged (the NFIT's persistence domain wins, since only it knows);
//!    any other overlap with an accepted range is refused;
//! 6. at most [`MAX_DEVICES`] devices.
//!
//! A range that is not 2 MiB aligned is accepted with a [`Note`]: its edges
//! are mapped with 4 KiB pages.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use crate::domain::Domain;
use crate::mapping::{SIZE_2M, SIZE_4K};
use crate::nfit::Nfit;

/// E820 address range type for persistent memory (ACPI §15, type 7 is
/// the standard one; 12 is the pre-standard "PRAM" type Linux and QEMU
/// use for legacy NVDIMMs, `memmap=nn!ss`).
pub const E820_PERSISTENT_TYPE: u32 = 12;
/// UEFI memory type `EfiPersistentMemory` (UEFI 2.10 §7.2, Table 7.6).
pub const UEFI_PERSISTENT_TYPE: u32 = 14;
/// Most devices daxbox brings up; owners are numbered with a `u8`.
pub const MAX_DEVICES: usize = 64;

/// Where a range was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Memory map entry of E820 type 12.
    E820,
    /// Memory map entry of UEFI type 14.
    Uefi,
    /// ACPI NFIT SPA range with the persistent-memory GUID.
    Nfit,
    /// `pmem=SIZE@START` in the boot config (emulated from RAM).
    BootConfig,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::E820 => "E820",
            Source::Uefi => "UEFI",
            Source::Nfit => "NFIT",
            Source::BootConfig => "bootconfig",
        })
    }
}

/// A range as reported by one source, before the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// First physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Who reported it.
    pub source: Source,
    /// Persistence domain claimed by the source.
    pub persistence: Domain,
    /// How to name it in messages: `pmem=64M@0x1000000`, `NFIT SPA range 2`.
    pub origin: String,
}

impl Candidate {
    /// A `pmem=TEXT` boot-config request.
    pub fn boot_config(start: u64, len: u64, text: &str) -> Self {
        Self {
            start,
            len,
            source: Source::BootConfig,
            persistence: Domain::Unknown,
            origin: format!("pmem={text}"),
        }
    }

    /// A memory-map entry of E820 type 12.
    pub fn e820(start: u64, len: u64) -> Self {
        Self {
            start,
            len,
            source: Source::E820,
            persistence: Domain::Adr,
            origin: String::from("E820 type 12 range"),
        }
    }

    /// A memory-map entry of UEFI type 14.
    pub fn uefi(start: u64, len: u64) -> Self {
        Self {
            start,
            len,
            source: Source::Uefi,
            persistence: Domain::Adr,
            origin: String::from("UEFI type 14 range"),
        }
    }

    /// Every persistent-memory SPA range of a parsed NFIT, in table order.
    pub fn from_nfit(nfit: &Nfit) -> Vec<Self> {
        let domain = nfit.domain();
        nfit.persistent_ranges()
            .map(|r| Self {
                start: r.base,
                len: r.length,
                source: Source::Nfit,
                persistence: domain,
                origin: format!("NFIT SPA range {}", r.index),
            })
            .collect()
    }

    /// Last byte, saturating (for messages of ranges that wrap).
    fn last(&self) -> u64 {
        last_byte(self.start, self.len)
    }
}

/// A region pmem must not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden {
    /// First physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is, for messages: "kernel image", "page tables", ...
    pub what: &'static str,
}

/// A physical address range (RAM regions in [`Machine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What the kernel knows about the machine.
#[derive(Debug, Clone, Copy)]
pub struct Machine<'a> {
    /// The usable RAM regions of the boot memory map (any order; adjacent
    /// regions are treated as one).
    pub usable_ram: &'a [Region],
    /// Regions no pmem range may overlap.
    pub forbidden: &'a [Forbidden],
    /// One past the highest physical address the CPU can reach
    /// (`1 << MAXPHYADDR`).
    pub max_physical_address: u64,
}

/// An accepted persistent-memory range: device `pmemN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemRange {
    /// First physical address (4 KiB aligned).
    pub start: u64,
    /// Length in bytes (a multiple of 4 KiB, not zero).
    pub len: u64,
    /// The first source that reported it.
    pub source: Source,
    /// Other sources that reported exactly the same range.
    pub also_reported_by: Vec<Source>,
    /// Its persistence domain.
    pub persistence: Domain,
    /// The first source's description (for messages).
    pub origin: String,
}

impl PmemRange {
    /// One past the last byte (cannot overflow: checked on acceptance).
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Why a candidate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Zero length.
    Empty,
    /// `start + len` is beyond 2^64.
    Wraps,
    /// Start or length not a multiple of 4 KiB.
    Unaligned,
    /// Ends beyond the maximum physical address.
    BeyondPhysicalLimit {
        /// The limit.
        limit: u64,
    },
    /// A `pmem=` range that is not wholly usable RAM.
    NotRam {
        /// First byte that is not usable RAM.
        first_gap: u64,
        /// One past the highest usable RAM address.
        ram_end: u64,
    },
    /// A firmware range that overlaps usable RAM.
    OverlapsRam {
        /// The RAM region.
        ram: Region,
    },
    /// Overlaps a forbidden region.
    Forbidden(Forbidden),
    /// Overlaps an accepted range without being identical to it.
    OverlapsDevice {
        /// Name of the accepted device.
        device: String,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// More than [`MAX_DEVICES`] ranges.
    TooMany,
}

/// A refused candidate and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The refused range.
    pub candidate: Candidate,
    /// Why.
    pub reason: Reason,
}

fn last_byte(start: u64, len: u64) -> u64 {
    start.saturating_add(len.saturating_sub(1))
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.candidate;
        write!(
            f,
            "pmem: refusing {} ({:#x}-{:#x}): ",
            c.origin,
            c.start,
            c.last()
        )?;
        match &self.reason {
            Reason::Empty => write!(f, "empty range"),
            Reason::Wraps => write!(f, "range runs past the end of the address space"),
            Reason::Unaligned => write!(f, "start and length must be multiples of 4 KiB"),
            Reason::BeyondPhysicalLimit { limit } => write!(
                f,
                "beyond the maximum physical address {:#x}",
                limit.saturating_sub(1)
            ),
            Reason::NotRam { first_gap, ram_end } => {
                if *first_gap >= *ram_end {
                    write!(
                        f,
                        "beyond RAM (RAM ends at {:#x})",
                        ram_end.saturating_sub(1)
                    )
                } else {
                    write!(f, "{first_gap:#x} is not usable RAM")
                }
            }
            Reason::OverlapsRam { ram } => write!(
                f,
                "overlaps usable RAM {:#x}-{:#x}",
                ram.start,
                last_byte(ram.start, ram.len)
            ),
            Reason::Forbidden(region) => write!(
                f,
                "overlaps {} {:#x}-{:#x}",
                region.what,
                region.start,
                last_byte(region.start, region.len)
            ),
            Reason::OverlapsDevice { device, start, len } => write!(
                f,
                "overlaps {device} {:#x}-{:#x}",
                start,
                last_byte(*start, *len)
            ),
            Reason::TooMany => write!(f, "more than {MAX_DEVICES} pmem devices"),
        }
    }
}

/// Something worth telling about an accepted range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The range is not 2 MiB aligned at one or both ends.
    NotHugeAligned {
        /// Device name.
        device: String,
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// A second source reported the same range; it was merged.
    Merged {
        /// Device name.
        device: String,
        /// The source that was merged in.
        source: Source,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::NotHugeAligned { device, start, len } => write!(
                f,
                "pmem: {device} ({:#x}-{:#x}) is not 2 MiB aligned: its edges use 4 KiB pages",
                start,
                last_byte(*start, *len)
            ),
            Note::Merged { device, source } => {
                write!(f, "pmem: {device} also reported by {source} (merged)")
            }
        }
    }
}

/// The outcome of [`discover`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Accepted ranges; index N is device `pmemN`.
    pub accepted: Vec<PmemRange>,
    /// Refused candidates, in discovery order.
    pub refused: Vec<Refusal>,
    /// Notes about accepted ranges.
    pub notes: Vec<Note>,
}

/// The device name of accepted range `index`.
pub fn device_name(index: usize) -> String {
    format!("pmem{index}")
}

/// Does `a..a+alen` overlap `b..b+blen`? Saturating, so wrapping input
/// cannot make a false negative.
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen > 0 && blen > 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// Usable RAM as sorted, merged (adjacent or overlapping joined) regions.
fn merged_ram(ram: &[Region]) -> Vec<Region> {
    let mut sorted: Vec<Region> = ram.iter().copied().filter(|r| r.len > 0).collect();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<Region> = Vec::with_capacity(sorted.len());
    for r in sorted {
        let end = r.start.saturating_add(r.len);
        if let Some(last) = out.last_mut() {
            let last_end = last.start.saturating_add(last.len);
            if r.start <= last_end {
                last.len = end.max(last_end) - last.start;
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Checks a `pmem=` carve-out against usable RAM: the first address in
/// `start..end` that is not RAM, if any.
fn first_non_ram(ram: &[Region], start: u64, end: u64) -> Option<u64> {
    let mut at = start;
    for r in ram {
        let r_end = r.start.saturating_add(r.len);
        if r_end <= at {
            continue;
        }
        if r.start > at {
            return Some(at);
        }
        at = r_end;
        if at >= end {
            return None;
        }
    }
    Some(at)
}

/// Checks and merges `candidates` (in discovery order) against `machine`.
pub fn discover(candidates: &[Candidate], machine: &Machine<'_>) -> Discovery {
    let ram = merged_ram(machine.usable_ram);
    let ram_end = ram.last().map_or(0, |r| r.start.saturating_add(r.len));
    let mut out = Discovery::default();

    'candidates: for c in candidates {
        let refuse = |out: &mut Discovery, reason| {
            out.refused.push(Refusal {
                candidate: c.clone(),
                reason,
            })
        };
        if c.len == 0 {
            refuse(&mut out, Reason::Empty);
            continue;
        }
        let Some(end) = c.start.checked_add(c.len) else {
            refuse(&mut out, Reason::Wraps);
            continue;
        };
        if c.start % SIZE_4K != 0 || c.len % SIZE_4K != 0 {
            refuse(&mut out, Reason::Unaligned);
            continue;
        }
        if end > machine.max_physical_address {
            let limit = machine.max_physical_address;
            refuse(&mut out, Reason::BeyondPhysicalLimit { limit });
            continue;
        }
        if let Some(f) = machine
            .forbidden
            .iter()
            .find(|f| overlaps(c.start, c.len, f.start, f.len))
        {
            refuse(&mut out, Reason::Forbidden(*f));
            continue;
        }
        if c.source == Source::BootConfig {
            if let Some(first_gap) = first_non_ram(&ram, c.start, end) {
                refuse(&mut out, Reason::NotRam { first_gap, ram_end });
                continue;
            }
        } else if let Some(r) = ram
            .iter()
            .find(|r| overlaps(c.start, c.len, r.start, r.len))
        {
            refuse(&mut out, Reason::OverlapsRam { ram: *r });
            continue;
        }
        for (index, accepted) in out.accepted.iter_mut().enumerate() {
            if accepted.start == c.start && accepted.len == c.len && accepted.source != c.source {
                accepted.also_reported_by.push(c.source);
                if c.source == Source::Nfit {
                    accepted.persistence = c.persistence;
                }
                out.notes.push(Note::Merged {
                    device: device_name(index),
                    source: c.source,
                });
                continue 'candidates;
            }
            if overlaps(c.start, c.len, accepted.start, accepted.len) {
                let reason = Reason::OverlapsDevice {
                    device: device_name(index),
                    start: accepted.start,
                    len: accepted.len,
                };
                refuse(&mut out, reason);
                continue 'candidates;
            }
        }
        if out.accepted.len() >= MAX_DEVICES {
            refuse(&mut out, Reason::TooMany);
            continue;
        }
        let device = device_name(out.accepted.len());
        if c.start % SIZE_2M != 0 || end % SIZE_2M != 0 {
            out.notes.push(Note::NotHugeAligned {
                device,
                start: c.start,
                len: c.len,
            });
        }
        out.accepted.push(PmemRange {
            start: c.start,
            len: c.len,
            source: c.source,
            also_reported_by: Vec::new(),
            persistence: c.persistence,
            origin: c.origin.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// 512 MiB of QEMU RAM: the usual low hole below 1 MiB and the kernel.
    fn ram() -> Vec<Region> {
        alloc::vec![
            Region {
                start: 0x1000,
                len: 0x9f000 - 0x1000
            },
            Region {
                start: MIB,
                len: 511 * MIB - 0x20000
            },
        ]
    }

    fn forbidden() -> Vec<Forbidden> {
        alloc::vec![
            Forbidden {
                start: 0x40_0000,
                len: 0x20_0000,
                what: "kernel image"
            },
            Forbidden {
                start: 0x100_0000,
                len: 0x100_0000,
                what: "kernel heap"
            },
        ]
    }

    fn run(candidates: &[Candidate]) -> Discovery {
        let ram = ram();
        let forbidden = forbidden();
        discover(
            candidates,
            &Machine {
                usable_ram: &ram,
                forbidden: &forbidden,
                max_physical_address: 1 << 40,
            },
        )
    }

    fn nfit(start: u64, len: u64, index: u16) -> Candidate {
        Candidate {
            start,
            len,
            source: Source::Nfit,
            persistence: Domain::Adr,
            origin: format!("NFIT SPA range {index}"),
        }
    }

    #[test]
    fn nvdimm_and_carve_out_are_accepted_in_order() {
        let d = run(&[
            nfit(0x1_0000_0000, GIB, 2),
            Candidate::boot_config(0x800_0000, 64 * MIB, "64M@0x8000000"),
        ]);
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert!(d.notes.is_empty());
        assert_eq!(d.accepted.len(), 2);
        assert_eq!(d.accepted[0].start, 0x1_0000_0000);
        assert_eq!(d.accepted[0].len, GIB);
        assert_eq!(d.accepted[0].source, Source::Nfit);
        assert_eq!(d.accepted[1].source, Source::BootConfig);
        assert_eq!(d.accepted[1].persistence, Domain::Unknown);
        assert_eq!(d.accepted[1].persistence.to_string(), "none: RAM");
        assert_eq!(d.accepted[1].end(), 0x800_0000 + 64 * MIB);
    }

    #[test]
    fn carve_out_over_kernel_is_refused_with_names() {
        let d = run(&[Candidate::boot_config(0x40_0000, 64 * MIB, "64M@0x400000")]);
        assert!(d.accepted.is_empty());
        assert_eq!(
            d.refused[0].to_string(),
            "pmem: refusing pmem=64M@0x400000 (0x400000-0x43fffff): \
             overlaps kernel image 0x400000-0x5fffff"
        );
    }

    #[test]
    fn carve_out_beyond_ram_is_refused() {
        let d = run(&[Candidate::boot_config(GIB, 64 * MIB, "64M@1G")]);
        assert_eq!(
            d.refused[0].reason,
            Reason::NotRam {
                first_gap: GIB,
                ram_end: 512 * MIB - 0x20000
            }
        );
        assert!(d.refused[0]
            .to_string()
            .ends_with("beyond RAM (RAM ends at 0x1ffdffff)"));
        // Partly beyond the end of RAM.
        let d = run(&[Candidate::boot_config(480 * MIB, 64 * MIB, "64M@480M")]);
        assert!(matches!(d.refused[0].reason, Reason::NotRam { .. }));
        // Across the hole below 1 MiB.
        let d = run(&[Candidate::boot_config(0x8_0000, MIB, "1M@0x80000")]);
        assert_eq!(
            d.refused[0].reason,
            Reason::NotRam {
                first_gap: 0x9f000,
                ram_end: 512 * MIB - 0x20000
            }
        );
        assert!(d.refused[0]
            .to_string()
            .ends_with("0x9f000 is not usable RAM"));
    }

    #[test]
    fn adjacent_ram_regions_count_as_one() {
        let ram = [
            Region {
                start: 0x200_0000,
                len: 0x100_0000,
            },
            Region {
                start: 0x300_0000,
                len: 0x100_0000,
            },
        ];
        let d = discover(
            &[Candidate::boot_config(0x280_0000, 0x100_0000, "16M@40M")],
            &Machine {
                usable_ram: &ram,
                forbidden: &[],
                max_physical_address: 1 << 40,
            },
        );
        assert_eq!(d.accepted.len(), 1);
    }

    #[test]
    fn overlapping_ranges_refuse_the_later() {
        let d = run(&[
            Candidate::boot_config(0x800_0000, 64 * MIB, "64M@128M"),
            Candidate::boot_config(0xa00_0000, 64 * MIB, "64M@160M"),
        ]);
        assert_eq!(d.accepted.len(), 1);
        assert_eq!(
            d.refused[0].to_string(),
            "pmem: refusing pmem=64M@160M (0xa000000-0xdffffff): \
             overlaps pmem0 0x8000000-0xbffffff"
        );
    }

    #[test]
    fn identical_ranges_from_two_sources_merge() {
        let mut eadr = nfit(0x1_0000_0000, GIB, 2);
        eadr.persistence = Domain::Eadr;
        let d = run(&[Candidate::e820(0x1_0000_0000, GIB), eadr]);
        assert_eq!(d.accepted.len(), 1);
        assert!(d.refused.is_empty());
        assert_eq!(d.accepted[0].source, Source::E820);
        assert_eq!(d.accepted[0].also_reported_by, [Source::Nfit]);
        assert_eq!(d.accepted[0].persistence, Domain::Eadr, "NFIT knows best");
        assert_eq!(
            d.notes[0].to_string(),
            "pmem: pmem0 also reported by NFIT (merged)"
        );
        // The same request twice from one source is an overlap, not a merge.
        let d = run(&[
            Candidate::boot_config(0x800_0000, 64 * MIB, "64M@128M"),
            Candidate::boot_config(0x800_0000, 64 * MIB, "64M@128M"),
        ]);
        assert_eq!(d.accepted.len(), 1);
        assert_eq!(d.refused.len(), 1);
    }

    #[test]
    fn firmware_range_over_ram_is_refused() {
        let d = run(&[Candidate::uefi(0x800_0000, 64 * MIB)]);
        assert!(matches!(d.refused[0].reason, Reason::OverlapsRam { .. }));
        assert!(d.refused[0].to_string().starts_with(
            "pmem: refusing UEFI type 14 range (0x8000000-0xbffffff): overlaps usable RAM"
        ));
    }

    #[test]
    fn bad_shapes_are_refused() {
        let d = run(&[
            nfit(0x1_0000_0000, 0, 2),
            nfit(u64::MAX - 0xfff, 0x2000, 4),
            nfit(0x1_0000_0800, GIB, 6),
            nfit(0x1_0000_0000, GIB + 1, 8),
            nfit(1 << 40, GIB, 10),
        ]);
        assert!(d.accepted.is_empty());
        let reasons: Vec<_> = d.refused.iter().map(|r| r.reason.clone()).collect();
        assert_eq!(
            reasons,
            [
                Reason::Empty,
                Reason::Wraps,
                Reason::Unaligned,
                Reason::Unaligned,
                Reason::BeyondPhysicalLimit { limit: 1 << 40 }
            ]
        );
        for r in &d.refused {
            assert!(r.to_string().starts_with("pmem: refusing NFIT SPA range"));
        }
    }

    #[test]
    fn unaligned_edges_are_noted() {
        let d = run(&[nfit(0x1_0000_1000, GIB, 2)]);
        assert_eq!(d.accepted.len(), 1);
        assert_eq!(
            d.notes[0].to_string(),
            "pmem: pmem0 (0x100001000-0x140000fff) is not 2 MiB aligned: \
             its edges use 4 KiB pages"
        );
    }

    #[test]
    fn device_count_is_limited() {
        let candidates: Vec<_> = (0..MAX_DEVICES as u64 + 1)
            .map(|i| nfit(0x1_0000_0000 + i * 2 * MIB, 2 * MIB, i as u16))
            .collect();
        let d = run(&candidates);
        assert_eq!(d.accepted.len(), MAX_DEVICES);
        assert_eq!(d.refused[0].reason, Reason::TooMany);
    }

    #[test]
    fn nfit_candidates_carry_domain() {
        use crate::nfit::{fixture, parse};
        let nfit = parse(&fixture::qemu(
            &[fixture::Dimm {
                slot: 0,
                base: 0x1_0000_0000,
                size: GIB,
                node: 0,
            }],
            Some(3),
        ))
        .unwrap();
        let c = Candidate::from_nfit(&nfit);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].persistence, Domain::Eadr);
        assert_eq!(c[0].origin, "NFIT SPA range 2");
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            0u64..(1 << 34),
            0u64..(1 << 31),
            prop_oneof![
                Just(Source::Nfit),
                Just(Source::E820),
                Just(Source::BootConfig)
            ],
            any::<bool>(),
        )
            .prop_map(|(start, len, source, aligned)| {
                let (start, len) = if aligned {
                    (start & !0xfff, len & !0xfff)
                } else {
                    (start, len)
                };
                Candidate {
                    start,
                    len,
                    source,
                    persistence: Domain::Adr,
                    origin: "test".to_string(),
                }
            })
    }

    proptest! {
        #[test]
        fn accepted_ranges_never_overlap_anything(
            candidates in proptest::collection::vec(arb_candidate(), 0..12)
        ) {
            let ram = ram();
            let forbidden = forbidden();
            let d = discover(&candidates, &Machine {
                usable_ram: &ram,
                forbidden: &forbidden,
                max_physical_address: 1 << 36,
            });
            prop_assert_eq!(
                d.accepted.len() + d.refused.len()
                    + d.notes.iter().filter(|n| matches!(n, Note::Merged { .. })).count(),
                candidates.len()
            );
            for (i, a) in d.accepted.iter().enumerate() {
                prop_assert!(a.len > 0 && a.start % SIZE_4K == 0 && a.len % SIZE_4K == 0);
                prop_assert!(a.end() <= 1 << 36);
                for f in &forbidden {
                    prop_assert!(!overlaps(a.start, a.len, f.start, f.len));
                }
                for b in &d.accepted[i + 1..] {
                    prop_assert!(!overlaps(a.start, a.len, b.start, b.len));
                }
                let in_ram = first_non_ram(&merged_ram(&ram), a.start, a.end()).is_none();
                if a.source == Source::BootConfig {
                    prop_assert!(in_ram);
                } else {
                    prop_assert!(ram.iter().all(|r| !overlaps(a.start, a.len, r.start, r.len)));
                }
            }
            for r in &d.refused {
                let _ = r.to_string();
            }
        }
    }
}
