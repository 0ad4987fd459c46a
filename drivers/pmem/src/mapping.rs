//! The identity-mapping plan for a pmem range.
//!
//! Each range is mapped virt == phys, write-back, non-executable. Large
//! ranges want 2 MiB pages (one TLB entry per 2 MiB, and no 4 KiB page
//! tables eating RAM: 1 GiB of 4 KiB pages costs 2 MiB of page tables);
//! 4 KiB pages are used only where the range does not start or end on a
//! 2 MiB boundary. [`plan`] computes the runs; the kernel's page-table
//! code applies them and reports the counts.

use alloc::vec::Vec;
use core::fmt;

/// 4 KiB.
pub const SIZE_4K: u64 = 4096;
/// 2 MiB.
pub const SIZE_2M: u64 = 2 << 20;

/// A page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB page (page-table entry).
    Size4K,
    /// 2 MiB page (page-directory entry with PS set).
    Size2M,
}

impl PageSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => SIZE_4K,
            PageSize::Size2M => SIZE_2M,
        }
    }
}

/// `count` consecutive pages of one size starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Address of the first page (aligned to its size).
    pub start: u64,
    /// Number of pages.
    pub count: u64,
    /// Their size.
    pub size: PageSize,
}

impl Run {
    /// The pages of this run, as (address, size).
    pub fn pages(&self) -> impl Iterator<Item = (u64, PageSize)> + '_ {
        let step = self.size.bytes();
        (0..self.count).map(move |i| (self.start + i * step, self.size))
    }
}

/// The plan for one range: at most three runs (4 KiB head, 2 MiB body,
/// 4 KiB tail), in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingPlan {
    /// The runs, in address order, none empty.
    pub runs: Vec<Run>,
    /// Number of 4 KiB pages.
    pub pages_4k: u64,
    /// Number of 2 MiB pages.
    pub pages_2m: u64,
}

impl MappingPlan {
    /// Every page of the plan, in address order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, PageSize)> + '_ {
        self.runs.iter().flat_map(|r| r.pages())
    }
}

/// Why a range cannot be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingError {
    /// Start or length is not a multiple of 4 KiB.
    Unaligned {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// Zero length or the end wraps past 2^64.
    BadLength {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MappingError::Unaligned { start, len } => write!(
                f,
                "cannot map {len:#x} bytes at {start:#x}: not 4 KiB aligned"
            ),
            MappingError::BadLength { start, len } => {
                write!(f, "cannot map {len:#x} bytes at {start:#x}: empty or wraps")
            }
        }
    }
}

/// Plans the identity mapping of `start..start + len`.
pub fn plan(start: u64, len: u64) -> Result<MappingPlan, MappingError> {
    if !start.is_multiple_of(SIZE_4K) || !len.is_multiple_of(SIZE_4K) {
        return Err(MappingError::Unaligned { start, len });
    }
    let end = match start.checked_add(len) {
        Some(end) if len > 0 => end,
        _ => return Err(MappingError::BadLength { start, len }),
    };
    // The 2 MiB-aligned body [body_start, body_end); empty when the range
    // holds no whole aligned 2 MiB page. Rounding `start` up can only
    // overflow in the top 2 MiB of the address space, where there is no
    // body anyway (u64::MAX is then >= body_end).
    let body_start = start
        .checked_add(SIZE_2M - 1)
        .map(|v| v & !(SIZE_2M - 1))
        .unwrap_or(u64::MAX);
    let body_end = end & !(SIZE_2M - 1);
    let mut runs = Vec::with_capacity(3);
    if body_start < body_end {
        push(&mut runs, start, body_start, PageSize::Size4K);
        push(&mut runs, body_start, body_end, PageSize::Size2M);
        push(&mut runs, body_end, end, PageSize::Size4K);
    } else {
        push(&mut runs, start, end, PageSize::Size4K);
    }
    let count = |size| {
        runs.iter()
            .filter(|r| r.size == size)
            .map(|r| r.count)
            .sum()
    };
    Ok(MappingPlan {
        pages_4k: count(PageSize::Size4K),
        pages_2m: count(PageSize::Size2M),
        runs,
    })
}

fn push(runs: &mut Vec<Run>, from: u64, to: u64, size: PageSize) {
    if from < to {
        runs.push(Run {
            start: from,
            count: (to - from) / size.bytes(),
            size,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aligned_gib_is_all_2m() {
        let p = plan(0x1_0000_0000, 1 << 30).unwrap();
        assert_eq!(p.pages_2m, 512);
        assert_eq!(p.pages_4k, 0);
        assert_eq!(
            p.runs,
            [Run {
                start: 0x1_0000_0000,
                count: 512,
                size: PageSize::Size2M
            }]
        );
    }

    #[test]
    fn unaligned_edges_use_4k() {
        // 4 KiB past a 2 MiB boundary, ending 8 KiB past one.
        let p = plan(0x20_1000, 0x40_1000).unwrap();
        assert_eq!(
            p.runs,
            [
                Run {
                    start: 0x20_1000,
                    count: 511,
                    size: PageSize::Size4K
                },
                Run {
                    start: 0x40_0000,
                    count: 1,
                    size: PageSize::Size2M
                },
                Run {
                    start: 0x60_0000,
                    count: 2,
                    size: PageSize::Size4K
                },
            ]
        );
        assert_eq!((p.pages_4k, p.pages_2m), (513, 1));
    }

    #[test]
    fn small_range_inside_one_2m_page() {
        let p = plan(0x1000, 0x3000).unwrap();
        assert_eq!((p.pages_4k, p.pages_2m), (3, 0));
        let p = plan(0x1f_f000, 0x2000).unwrap();
        assert_eq!((p.pages_4k, p.pages_2m), (2, 0), "straddles a boundary");
    }

    #[test]
    fn errors() {
        assert!(matches!(
            plan(0x800, 0x1000),
            Err(MappingError::Unaligned { .. })
        ));
        assert!(matches!(
            plan(0, 0x800),
            Err(MappingError::Unaligned { .. })
        ));
        assert!(matches!(plan(0, 0), Err(MappingError::BadLength { .. })));
        assert!(matches!(
            plan(u64::MAX - 0xfff, 0x2000),
            Err(MappingError::BadLength { .. })
        ));
        // The very top page: its end (2^64) is not representable, and
        // discovery refuses such a range too.
        assert!(plan(u64::MAX - 0xfff, 0x1000).is_err());
    }

    proptest! {
        #[test]
        fn plan_covers_range_exactly(start in 0u64..(1 << 40), pages in 1u64..4096) {
            let start = start & !0xfff;
            let len = pages * SIZE_4K;
            let p = plan(start, len).unwrap();
            let mut at = start;
            for (addr, size) in p.pages() {
                prop_assert_eq!(addr, at);
                prop_assert_eq!(addr % size.bytes(), 0);
                at += size.bytes();
            }
            prop_assert_eq!(at, start + len);
            prop_assert_eq!(p.pages_4k * SIZE_4K + p.pages_2m * SIZE_2M, len);
            // 4 KiB pages only at the edges: fewer than 512 at each end.
            prop_assert!(p.pages_4k < 1024);
            // A whole aligned 2 MiB page inside the range is never split.
            let first_2m = (start + SIZE_2M - 1) & !(SIZE_2M - 1);
            let last_2m = (start + len) & !(SIZE_2M - 1);
            let whole = last_2m.saturating_sub(first_2m) / SIZE_2M;
            prop_assert_eq!(p.pages_2m, whole);
        }
    }
}
