//! QEMU's NVDIMM FIT protocol: how a running guest learns about NVDIMMs
//! hot-added after boot, without an ACPI AML interpreter.
//!
//! QEMU (`hw/acpi/nvdimm.c`, `docs/specs/acpi_nvdimm.rst`) rebuilds its
//! NVDIMM Firmware Interface Table (FIT: the NFIT's structures without the
//! table header) when an NVDIMM is plugged, and sets bit 4 of the GPE0
//! status register. The guest reads the FIT in pages: it fills a 4 KiB
//! page of its memory with the DSM input
//! ```text
//!   0  u32 handle    0x10000 (the NVDIMM root device)
//!   4  u32 revision  1
//!   8  u32 function  1 (read FIT)
//!  12  u32 offset    where in the FIT to read
//! ```
//! and writes the page's physical address to I/O port 0x0A18 (a 4-byte
//! `out`). QEMU answers in the same page:
//! ```text
//!   0  u32 length    bytes of the reply, this 8-byte header included
//!   4  u32 status    0 ok, 0x100 the FIT changed since offset 0 was read,
//!                    3 the offset is beyond the FIT
//!   8  data          length - 8 bytes of the FIT from `offset`;
//!                    none when `offset` is the FIT's end
//! ```
//! [`read_fit`] runs that loop over a caller's port access and returns the
//! whole FIT, restarting from offset 0 when QEMU says it changed (another
//! NVDIMM was plugged meanwhile). What the loop trusts is bounded: the
//! reply length is checked against the page, the FIT may not grow beyond
//! [`MAX_FIT_BYTES`] and the restarts are at most [`MAX_RESTARTS`].
//! [`parse_fit`] walks the structures with the NFIT parser
//! ([`crate::nfit::parse_structures`]), at most [`MAX_FIT_STRUCTURES`].

use alloc::vec::Vec;
use core::fmt;

use crate::nfit::{self, Nfit};

/// The I/O port QEMU's NVDIMM DSM page address is written to.
pub const DSM_PORT: u16 = 0x0a18;
/// The DSM handle of the NVDIMM root device (QEMU's
/// `NVDIMM_QEMU_RSVD_HANDLE_ROOT`).
pub const ROOT_HANDLE: u32 = 0x10000;
/// The DSM revision QEMU supports.
pub const REVISION: u32 = 1;
/// The root device's QEMU-reserved function "read FIT".
pub const FUNCTION_READ_FIT: u32 = 1;
/// The DSM page: input and reply share it.
pub const PAGE: usize = 4096;
/// Bytes of the reply header (length, status).
pub const REPLY_HEADER: usize = 8;
/// Reply status: success.
pub const STATUS_OK: u32 = 0;
/// Reply status: the offset is beyond the FIT (QEMU's
/// `NVDIMM_DSM_RET_STATUS_INVALID`).
pub const STATUS_INVALID: u32 = 3;
/// Reply status: the FIT changed since it was read from offset 0
/// (`NVDIMM_DSM_RET_STATUS_FIT_CHANGED`): read it again from 0.
pub const STATUS_FIT_CHANGED: u32 = 0x100;
/// Bound on the FIT's total size. QEMU's FIT holds 184 bytes per NVDIMM
/// (SPA range 56, memory device 48, control region 80) plus 16 for the
/// platform capabilities; 64 KiB is over 350 NVDIMMs, more than QEMU's
/// 256 memory slots.
pub const MAX_FIT_BYTES: usize = 64 * 1024;
/// Bound on restarts after [`STATUS_FIT_CHANGED`]: each means another
/// NVDIMM was plugged during the read; past this the rescan gives up and
/// the next GPE event (or `pmem rescan`) tries again.
pub const MAX_RESTARTS: u32 = 8;
/// Bound on the structures walked in a FIT (3 per NVDIMM in QEMU).
pub const MAX_FIT_STRUCTURES: usize = 1024;
/// The GPE0 status bit QEMU sets for an NVDIMM hot-add
/// (`ACPI_NVDIMM_HOTPLUG_STATUS`).
pub const GPE_NVDIMM_BIT: u8 = 1 << 4;

/// Why a FIT read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FitError {
    /// The reply's length field is below its header or beyond the page.
    BadLength {
        /// The length field.
        length: u32,
        /// Offset requested.
        offset: u32,
    },
    /// QEMU said the offset is invalid (status 3).
    InvalidOffset {
        /// Offset requested.
        offset: u32,
    },
    /// A status this code does not know.
    Status {
        /// The status field.
        status: u32,
        /// Offset requested.
        offset: u32,
    },
    /// The FIT grew beyond [`MAX_FIT_BYTES`].
    TooLarge {
        /// Bytes read so far.
        bytes: usize,
    },
    /// The FIT changed more than [`MAX_RESTARTS`] times during one read.
    TooManyRestarts,
    /// The port access itself failed.
    Io(&'static str),
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::BadLength { length, offset } => write!(
                f,
                "FIT: reply at offset {offset} has length {length} (must be {REPLY_HEADER}..={PAGE})"
            ),
            FitError::InvalidOffset { offset } => {
                write!(f, "FIT: offset {offset} refused (status 3)")
            }
            FitError::Status { status, offset } => {
                write!(f, "FIT: unknown status {status:#x} at offset {offset}")
            }
            FitError::TooLarge { bytes } => write!(
                f,
                "FIT: larger than {MAX_FIT_BYTES} bytes ({bytes} read); not used"
            ),
            FitError::TooManyRestarts => write!(
                f,
                "FIT: changed {MAX_RESTARTS} times while being read; try again"
            ),
            FitError::Io(what) => write!(f, "FIT: {what}"),
        }
    }
}

/// The DSM input page's first 16 bytes for "read FIT at `offset`" (the
/// rest of the page is not read by QEMU for this function).
pub fn request(offset: u32) -> [u8; 16] {
    let mut input = [0; 16];
    input[0..4].copy_from_slice(&ROOT_HANDLE.to_le_bytes());
    input[4..8].copy_from_slice(&REVISION.to_le_bytes());
    input[8..12].copy_from_slice(&FUNCTION_READ_FIT.to_le_bytes());
    input[12..16].copy_from_slice(&offset.to_le_bytes());
    input
}

/// One reply, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// FIT bytes from the requested offset.
    Data(&'a [u8]),
    /// No data: the offset is the FIT's end.
    End,
    /// The FIT changed: read again from offset 0.
    Changed,
}

fn u32_at(page: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&page[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Checks the reply QEMU left in `page` for a read at `offset`.
pub fn parse_reply(page: &[u8; PAGE], offset: u32) -> Result<Reply<'_>, FitError> {
    let length = u32_at(page, 0);
    let status = u32_at(page, 4);
    match status {
        STATUS_OK => {}
        STATUS_FIT_CHANGED => return Ok(Reply::Changed),
        STATUS_INVALID => return Err(FitError::InvalidOffset { offset }),
        status => return Err(FitError::Status { status, offset }),
    }
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if !(REPLY_HEADER..=PAGE).contains(&len) {
        return Err(FitError::BadLength { length, offset });
    }
    if len == REPLY_HEADER {
        return Ok(Reply::End);
    }
    Ok(Reply::Data(&page[REPLY_HEADER..len]))
}

/// Reads the whole FIT. `call(input, page)` must put `input` at the start
/// of the DSM page, hand the page to QEMU (port [`DSM_PORT`]) and copy the
/// reply into `page`. Every reply is checked ([`parse_reply`]); the total
/// is bounded by [`MAX_FIT_BYTES`], restarts by [`MAX_RESTARTS`].
pub fn read_fit(
    mut call: impl FnMut(&[u8; 16], &mut [u8; PAGE]) -> Result<(), &'static str>,
) -> Result<Vec<u8>, FitError> {
    let mut fit = Vec::new();
    let mut restarts = 0;
    let mut page = [0u8; PAGE];
    loop {
        // `fit.len() <= MAX_FIT_BYTES`, far below u32::MAX.
        let offset =
            u32::try_from(fit.len()).map_err(|_| FitError::TooLarge { bytes: fit.len() })?;
        page.fill(0);
        call(&request(offset), &mut page).map_err(FitError::Io)?;
        match parse_reply(&page, offset)? {
            Reply::End => return Ok(fit),
            Reply::Changed => {
                restarts += 1;
                if restarts > MAX_RESTARTS {
                    return Err(FitError::TooManyRestarts);
                }
                fit.clear();
            }
            Reply::Data(data) => {
                if fit.len() + data.len() > MAX_FIT_BYTES {
                    return Err(FitError::TooLarge {
                        bytes: fit.len() + data.len(),
                    });
                }
                fit.extend_from_slice(data);
            }
        }
    }
}

/// Parses the FIT's structures (at most [`MAX_FIT_STRUCTURES`]).
pub fn parse_fit(fit: &[u8]) -> Nfit {
    nfit::parse_structures(fit, MAX_FIT_STRUCTURES)
}

/// A fake of QEMU's side of the protocol over a FIT held in memory, for
/// tests (here, in the kernel-free crates and the fuzz harness).
pub mod fake {
    use super::*;

    /// QEMU's `nvdimm_dsm_func_read_fit` over `fit`, answering the DSM
    /// `input` into `page`. When `changed` is set, a read at an offset
    /// other than 0 answers [`STATUS_FIT_CHANGED`] (a read at 0 clears it,
    /// as QEMU's dirty flag does).
    pub fn answer(fit: &[u8], changed: &mut bool, input: &[u8; 16], page: &mut [u8; PAGE]) {
        let offset = u32_at(input, 12) as usize;
        let (status, data): (u32, &[u8]) = if offset == 0 {
            *changed = false;
            (STATUS_OK, fit)
        } else if *changed {
            (STATUS_FIT_CHANGED, &[])
        } else if offset > fit.len() {
            (STATUS_INVALID, &[])
        } else {
            (STATUS_OK, &fit[offset..])
        };
        let data = if status == STATUS_OK {
            &data[..data.len().min(PAGE - REPLY_HEADER)]
        } else {
            &[][..]
        };
        let length = (REPLY_HEADER + data.len()) as u32;
        page[0..4].copy_from_slice(&length.to_le_bytes());
        page[4..8].copy_from_slice(&status.to_le_bytes());
        page[REPLY_HEADER..REPLY_HEADER + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::fake::answer;
    use super::*;
    use crate::nfit::fixture::{dcr, memdev, spa, Dimm};
    use crate::nfit::NfitWarning;

    const GIB: u64 = 1 << 30;

    fn dimm(slot: u16, base: u64, size: u64) -> Dimm {
        Dimm {
            slot,
            base,
            size,
            node: 0,
        }
    }

    /// QEMU's FIT for `dimms`: per NVDIMM an SPA range, a memory device
    /// and a control region, no table header.
    fn fit_of(dimms: &[Dimm]) -> Vec<u8> {
        let mut fit = Vec::new();
        for d in dimms {
            fit.extend(spa(d));
            fit.extend(memdev(d));
            fit.extend(dcr(d));
        }
        fit
    }

    fn reply(length: u32, status: u32, data: &[u8]) -> [u8; PAGE] {
        let mut page = [0; PAGE];
        page[0..4].copy_from_slice(&length.to_le_bytes());
        page[4..8].copy_from_slice(&status.to_le_bytes());
        page[8..8 + data.len()].copy_from_slice(data);
        page
    }

    #[test]
    fn request_layout() {
        let r = request(0x1234);
        assert_eq!(r[0..4], [0, 0, 1, 0]);
        assert_eq!(r[4..8], [1, 0, 0, 0]);
        assert_eq!(r[8..12], [1, 0, 0, 0]);
        assert_eq!(r[12..16], [0x34, 0x12, 0, 0]);
    }

    #[test]
    fn every_status() {
        assert_eq!(
            parse_reply(&reply(12, 0, &[1, 2, 3, 4]), 0),
            Ok(Reply::Data(&[1, 2, 3, 4][..]))
        );
        assert_eq!(parse_reply(&reply(8, 0, &[]), 40), Ok(Reply::End));
        assert_eq!(parse_reply(&reply(8, 0x100, &[]), 40), Ok(Reply::Changed));
        assert_eq!(
            parse_reply(&reply(8, 3, &[]), 999),
            Err(FitError::InvalidOffset { offset: 999 })
        );
        assert_eq!(
            parse_reply(&reply(8, 1, &[]), 0),
            Err(FitError::Status {
                status: 1,
                offset: 0
            })
        );
        assert!(FitError::InvalidOffset { offset: 999 }
            .to_string()
            .contains("status 3"));
    }

    #[test]
    fn malformed_lengths_are_refused() {
        for length in [0, 7, PAGE as u32 + 1, u32::MAX] {
            assert_eq!(
                parse_reply(&reply(length, 0, &[]), 0),
                Err(FitError::BadLength { length, offset: 0 })
            );
        }
        // The whole page is a valid reply.
        let full = reply(PAGE as u32, 0, &[]);
        assert!(matches!(parse_reply(&full, 0), Ok(Reply::Data(d)) if d.len() == PAGE - 8));
    }

    #[test]
    fn reads_a_fit_larger_than_a_page() {
        // 30 NVDIMMs: 5,520 bytes, two pages.
        let dimms: Vec<Dimm> = (0..30)
            .map(|i| dimm(i, (4 + u64::from(i)) * GIB, GIB))
            .collect();
        let fit = fit_of(&dimms);
        assert!(fit.len() > PAGE);
        let mut changed = false;
        let mut calls = 0;
        let read = read_fit(|input, page| {
            calls += 1;
            answer(&fit, &mut changed, input, page);
            Ok(())
        })
        .unwrap();
        assert_eq!(read, fit);
        assert_eq!(calls, 3, "two pages of data and the empty end");
        let parsed = parse_fit(&read);
        assert!(parsed.warnings.is_empty());
        assert_eq!(parsed.persistent_ranges().count(), 30);
    }

    #[test]
    fn restarts_when_the_fit_changes() {
        // The FIT grows from one page and a bit to more while it is read:
        // the second read sees "changed" and starts again from 0.
        let small: Vec<Dimm> = (0..25)
            .map(|i| dimm(i, (4 + u64::from(i)) * GIB, GIB))
            .collect();
        let large: Vec<Dimm> = (0..26)
            .map(|i| dimm(i, (4 + u64::from(i)) * GIB, GIB))
            .collect();
        let (before, after) = (fit_of(&small), fit_of(&large));
        let mut changed = false;
        let mut calls = 0;
        let read = read_fit(|input, page| {
            calls += 1;
            if calls == 2 {
                changed = true;
            }
            let fit = if calls == 1 { &before } else { &after };
            answer(fit, &mut changed, input, page);
            Ok(())
        })
        .unwrap();
        assert_eq!(read, after);
        assert_eq!(parse_fit(&read).persistent_ranges().count(), 26);
    }

    #[test]
    fn endless_changes_are_bounded() {
        let mut calls = 0;
        let result = read_fit(|_, page| {
            calls += 1;
            *page = if calls % 2 == 1 {
                reply(12, 0, &[0; 4])
            } else {
                reply(8, STATUS_FIT_CHANGED, &[])
            };
            Ok(())
        });
        assert_eq!(result, Err(FitError::TooManyRestarts));
        assert_eq!(calls, 2 * (MAX_RESTARTS as usize + 1));
    }

    #[test]
    fn endless_data_is_bounded() {
        let mut calls = 0;
        let result = read_fit(|_, page| {
            calls += 1;
            *page = reply(PAGE as u32, 0, &[]);
            Ok(())
        });
        assert!(matches!(result, Err(FitError::TooLarge { .. })));
        assert!(calls <= MAX_FIT_BYTES / (PAGE - 8) + 1);
    }

    #[test]
    fn errors_end_the_read() {
        let fit = fit_of(&[dimm(0, 4 * GIB, GIB)]);
        let mut calls = 0;
        let result = read_fit(|input, page| {
            calls += 1;
            if calls == 1 {
                answer(&fit, &mut false, input, page);
            } else {
                *page = reply(8, STATUS_INVALID, &[]);
            }
            Ok(())
        });
        assert_eq!(
            result,
            Err(FitError::InvalidOffset {
                offset: fit.len() as u32
            })
        );
        assert_eq!(
            read_fit(|_, _| Err("no DSM page")),
            Err(FitError::Io("no DSM page"))
        );
    }

    #[test]
    fn empty_fit_has_no_ranges() {
        // Zero NVDIMMs at boot, none plugged: QEMU's FIT is empty.
        let read = read_fit(|input, page| {
            answer(&[], &mut false, input, page);
            Ok(())
        })
        .unwrap();
        assert!(read.is_empty());
        let parsed = parse_fit(&read);
        assert_eq!(parsed.structures, 0);
        assert!(parsed.warnings.is_empty());
    }

    #[test]
    fn fit_order_is_not_slot_order() {
        let fit = fit_of(&[dimm(1, 6 * GIB, GIB), dimm(0, 4 * GIB, 256 << 20)]);
        let parsed = parse_fit(&fit);
        let ranges: Vec<_> = parsed.persistent_ranges().map(|r| r.base).collect();
        assert_eq!(ranges, [6 * GIB, 4 * GIB]);
    }

    #[test]
    fn malformed_structures_warn() {
        let mut fit = fit_of(&[dimm(0, 4 * GIB, GIB)]);
        fit.extend_from_slice(&[0, 0, 0, 0]); // zero-length structure
        let parsed = parse_fit(&fit);
        assert_eq!(parsed.persistent_ranges().count(), 1);
        assert!(matches!(
            parsed.warnings[..],
            [NfitWarning::BadStructureLength { offset: 184, .. }]
        ));
        // A record-count bound: 2,000 minimal structures stop at the limit.
        let many: Vec<u8> = core::iter::repeat_n([9u8, 0, 4, 0], 2000)
            .flatten()
            .collect();
        let parsed = parse_fit(&many);
        assert_eq!(parsed.structures, MAX_FIT_STRUCTURES);
        assert!(matches!(
            parsed.warnings[..],
            [NfitWarning::TooManyStructures {
                limit: MAX_FIT_STRUCTURES,
                ..
            }]
        ));
    }
}
