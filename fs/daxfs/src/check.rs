//! Reading and validating metadata from media: the file-table scan shared
//! by mount (which refuses on the first problem) and fsck (which reports
//! every problem).
//!
//! The scan is bounded: it charges every byte it keeps (a file's name,
//! extents and chain) to a budget `Charge` before allocating it, grows a
//! file's extent list one overflow block at a time (so a record claiming
//! millions of extents costs nothing until the blocks are really there),
//! and reserves vectors whose size the media decides with `try_reserve`.
//! Memory is O(live files + their extents), never O(file table).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::size_of;

use daxbox_budget::{Charge, OverBudget};
use daxbox_persist::{OutOfRange, PersistentMemory};

use crate::format::{
    Extent, OverflowBlock, Record, Superblock, BLOCK_SIZE, CHUNK_BLOCKS, LAYERED_VERSION,
    ORPHAN_VERSION, OVERFLOW_EXTENTS, RECORDS_PER_BLOCK, RECORD_SIZE,
};
use crate::space::RunCounts;
use crate::TREE_ENTRY;

/// One live file as found on media.
#[derive(Debug, Clone)]
pub(crate) struct ScannedFile {
    pub slot: u32,
    pub record: Record,
    pub extents: Vec<Extent>,
    pub chain: Vec<u64>,
}

/// Everything the file table says.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub files: Vec<ScannedFile>,
    /// Name -> slot of every file in `files` but the orphans.
    pub names: BTreeMap<String, u32>,
    /// Orphan records among `files` (FORMAT.md "Orphans").
    pub orphans: u64,
}

/// Why a scan stopped before the end of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// A read fell outside the region.
    Io(OutOfRange),
    /// Keeping what was found would exceed the budget (or the heap).
    Memory(OverBudget),
}

impl From<OutOfRange> for ScanError {
    fn from(e: OutOfRange) -> Self {
        ScanError::Io(e)
    }
}

/// A heap reservation that failed although the budget allowed it.
pub(crate) fn heap_refused(requested: usize) -> OverBudget {
    OverBudget {
        budget: "heap",
        requested,
        used: 0,
        limit: 0,
    }
}

/// What one scanned file costs before its overflow extents: the
/// `ScannedFile`, its name twice (record and name index), its entry in the
/// name index, and its inline extents twice (record and extent list), each
/// allocation rounded up by a word.
fn scanned_cost(name_len: usize, inline: usize) -> usize {
    size_of::<ScannedFile>()
        + 2 * name_len
        + TREE_ENTRY
        + 2 * inline * size_of::<Extent>()
        + 4 * size_of::<usize>()
}

/// What the scan charged for one file it kept (given back by mount as it
/// turns the file into its in-memory form).
pub(crate) fn scanned_charge(f: &ScannedFile) -> usize {
    scanned_cost(f.record.name.len(), f.record.inline.len()) + f.chain.len() * CHAIN_BLOCK_COST
}

/// What one overflow block read adds: its extents and chain entry.
const CHAIN_BLOCK_COST: usize = OVERFLOW_EXTENTS * size_of::<Extent>() + size_of::<u64>();

/// Highest logical block end the format can express.
const LOGICAL_LIMIT: u64 = 1 << 32;

/// Checks one file's extents against FORMAT.md "Extents" rules.
pub(crate) fn check_extents(sb: &Superblock, size: u64, extents: &[Extent]) -> Result<(), String> {
    let mut prev_end = 0u64;
    for e in extents {
        if e.len == 0 {
            return Err(format!("extent at file block {} has length 0", e.logical));
        }
        if e.logical < prev_end {
            return Err(format!(
                "extent at file block {} overlaps or is out of order",
                e.logical
            ));
        }
        let end = e.logical + e.len; // both are < 2^32: no overflow
        if end > LOGICAL_LIMIT {
            return Err(format!(
                "extent at file block {} runs past the format limit",
                e.logical
            ));
        }
        let phys_end = e.physical.checked_add(e.len);
        if e.physical < sb.data_start || phys_end.is_none_or(|p| p > sb.total_blocks) {
            return Err(format!(
                "extent at file block {} points outside the data area (blocks {}..+{})",
                e.logical, e.physical, e.len
            ));
        }
        prev_end = end;
    }
    // Preallocation never goes past the 2 MiB chunk holding the last byte.
    let limit = size.div_ceil(BLOCK_SIZE).div_ceil(CHUNK_BLOCKS) * CHUNK_BLOCKS;
    if prev_end > limit {
        return Err(format!(
            "extents reach file block {prev_end}, beyond the size of {size} bytes"
        ));
    }
    Ok(())
}

/// Why a chain could not be read: a problem with the image, or memory.
enum ChainError {
    Problem(String),
    Memory(OverBudget),
}

impl From<String> for ChainError {
    fn from(s: String) -> Self {
        ChainError::Problem(s)
    }
}

/// Follows a record's overflow chain; returns all extents and the chain.
/// Each block is charged to `charge` before its extents are kept.
fn read_chain<M: PersistentMemory>(
    mem: &M,
    sb: &Superblock,
    slot: u32,
    record: &Record,
    charge: &mut Charge<'_>,
) -> Result<(Vec<Extent>, Vec<u64>), ChainError> {
    let mut extents = record.inline.clone();
    let mut chain = Vec::new();
    if record.overflow_count as u64 > sb.total_blocks {
        return Err(String::from("overflow chain longer than the filesystem").into());
    }
    let mut next = record.overflow_first;
    let mut block = alloc::vec![0u8; BLOCK_SIZE as usize];
    for index in 0..record.overflow_count {
        if next < sb.data_start || next >= sb.total_blocks {
            return Err(
                format!("overflow block {index} pointer {next} is outside the data area").into(),
            );
        }
        mem.read(next * BLOCK_SIZE, &mut block)
            .map_err(|e| format!("overflow block {next}: {e}"))?;
        let ob =
            OverflowBlock::decode(&block).map_err(|e| format!("overflow block {next}: {e}"))?;
        // A layered list counts its chain from the last block (FORMAT.md
        // "Layered extent lists").
        let want = if record.layered {
            record.overflow_count - 1 - index
        } else {
            index
        };
        if ob.owner_slot != slot || ob.owner_generation != record.generation || ob.index != want {
            return Err(
                format!("overflow block {next} belongs to another file or chain position").into(),
            );
        }
        if extents.len() + ob.extents.len() > record.extent_count as usize {
            return Err(format!(
                "record says {} extents, chain holds more",
                record.extent_count
            )
            .into());
        }
        charge.grow(CHAIN_BLOCK_COST).map_err(ChainError::Memory)?;
        extents
            .try_reserve(ob.extents.len())
            .map_err(|_| ChainError::Memory(heap_refused(CHAIN_BLOCK_COST)))?;
        chain
            .try_reserve(1)
            .map_err(|_| ChainError::Memory(heap_refused(CHAIN_BLOCK_COST)))?;
        extents.extend_from_slice(&ob.extents);
        chain.push(next);
        next = ob.next;
    }
    if next != 0 {
        return Err(String::from("overflow chain does not end where the record says").into());
    }
    if extents.len() != record.extent_count as usize {
        return Err(format!(
            "record says {} extents, chain holds {}",
            record.extent_count,
            extents.len()
        )
        .into());
    }
    Ok((extents, chain))
}

/// Reads and checks the whole file table as it is after the records of
/// `overlay` (a committed journal transaction not yet replayed: slot and
/// new record bytes, later entries winning) are applied. Every problem
/// found is pushed to `problems`; a file with a problem is left out of the
/// result. What the result holds is charged to `charge`; a charge the
/// budget refuses stops the scan.
pub(crate) fn scan<M: PersistentMemory>(
    mem: &M,
    sb: &Superblock,
    overlay: &[(u32, [u8; RECORD_SIZE])],
    charge: &mut Charge<'_>,
    problems: &mut Vec<String>,
) -> Result<Scan, ScanError> {
    let mut out = Scan::default();
    // Read in 64 KiB batches: mount time is dominated by this loop.
    const BATCH_BLOCKS: u64 = 16;
    // The batch buffer and read_chain's block buffer, held while scanning.
    const BUFFERS: usize = ((BATCH_BLOCKS + 1) * BLOCK_SIZE) as usize;
    charge.grow(BUFFERS).map_err(ScanError::Memory)?;
    let result = scan_table(mem, sb, overlay, charge, problems, &mut out, BATCH_BLOCKS);
    charge.shrink(BUFFERS);
    result.map(|()| out)
}

fn scan_table<M: PersistentMemory>(
    mem: &M,
    sb: &Superblock,
    overlay: &[(u32, [u8; RECORD_SIZE])],
    charge: &mut Charge<'_>,
    problems: &mut Vec<String>,
    out: &mut Scan,
    batch_blocks: u64,
) -> Result<(), ScanError> {
    let mut buf = alloc::vec![0u8; (batch_blocks * BLOCK_SIZE) as usize];
    let mut block = 0u64;
    // Only the initialised prefix: the records beyond it are never-used
    // and hold whatever the media held (FORMAT.md "Initialised table
    // prefix").
    while block < sb.table_init_blocks {
        let n = batch_blocks.min(sb.table_init_blocks - block);
        let bytes = &mut buf[..(n * BLOCK_SIZE) as usize];
        mem.read((sb.table_start + block) * BLOCK_SIZE, bytes)?;
        for (i, raw) in bytes.chunks_exact(RECORD_SIZE).enumerate() {
            let slot = block * RECORDS_PER_BLOCK + i as u64;
            if slot >= sb.max_files as u64 {
                if raw.iter().any(|&b| b != 0) {
                    problems.push(format!(
                        "file table padding after slot {} is not zero",
                        sb.max_files
                    ));
                }
                continue;
            }
            let slot = slot as u32; // < max_files, a u32
            let raw: &[u8] = match overlay.iter().rev().find(|(s, _)| *s == slot) {
                Some((_, r)) => r,
                None => raw,
            };
            let record = match Record::decode(raw) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(format!("file record {slot}: {e}"));
                    continue;
                }
            };
            if !record.in_use {
                continue;
            }
            if record.orphan && sb.version < ORPHAN_VERSION {
                problems.push(format!(
                    "file record {slot}: orphan record in a version {} image",
                    sb.version
                ));
                continue;
            }
            let held = charge.bytes();
            let cost = scanned_cost(record.name.len(), record.inline.len());
            charge.grow(cost).map_err(ScanError::Memory)?;
            let (extents, chain) = match read_chain(mem, sb, slot, &record, charge) {
                Ok(x) => x,
                Err(ChainError::Memory(e)) => return Err(ScanError::Memory(e)),
                Err(ChainError::Problem(e)) => {
                    charge.shrink(charge.bytes() - held);
                    problems.push(format!("file record {slot} ({:?}): {e}", record.name));
                    continue;
                }
            };
            if record.layered && sb.version < LAYERED_VERSION {
                charge.shrink(charge.bytes() - held);
                problems.push(format!(
                    "file record {slot}: layered extent list in a version {} image",
                    sb.version
                ));
                continue;
            }
            // A layered list: every entry checked on its own, then the
            // effective map (FORMAT.md "Layered extent lists").
            let extents = if record.layered {
                if let Some(e) = extents
                    .iter()
                    .find_map(|e| check_extents(sb, record.size, core::slice::from_ref(e)).err())
                {
                    charge.shrink(charge.bytes() - held);
                    problems.push(format!("file record {slot} ({:?}): {e}", record.name));
                    continue;
                }
                crate::extmap::ExtentMap::from_layers(&extents).to_vec()
            } else {
                extents
            };
            if let Err(e) = check_extents(sb, record.size, &extents) {
                charge.shrink(charge.bytes() - held);
                problems.push(format!("file record {slot} ({:?}): {e}", record.name));
                continue;
            }
            // Orphans have no name (FORMAT.md "Orphans").
            if record.orphan {
                out.orphans += 1;
            } else if let Some(&other) = out.names.get(&record.name) {
                charge.shrink(charge.bytes() - held);
                problems.push(format!(
                    "file records {other} and {slot} both use the name {:?}",
                    record.name
                ));
                continue;
            }
            out.files
                .try_reserve(1)
                .map_err(|_| ScanError::Memory(heap_refused(cost)))?;
            if !record.orphan {
                out.names.insert(record.name.clone(), slot);
            }
            out.files.push(ScannedFile {
                slot,
                record,
                extents,
                chain,
            });
        }
        block += n;
    }
    Ok(())
}

/// What [`media_refs`] takes while it runs, for `n` block ranges: the
/// range list, the sweep's events, and at most two count runs per range.
pub(crate) fn media_refs_cost(scan: &Scan) -> usize {
    let n: usize = scan
        .files
        .iter()
        .map(|f| f.extents.len() + f.chain.len())
        .sum();
    n.saturating_mul(size_of::<(u64, u64)>() + 2 * size_of::<(u64, i64)>() + 2 * TREE_ENTRY)
}

/// Reference counts implied by the scanned files, and a problem for every
/// overflow block that is referenced more than once (they are never shared).
/// `None` when the heap cannot hold the work lists (the caller charged
/// [`media_refs_cost`] first).
pub(crate) fn media_refs(scan: &Scan, problems: &mut Vec<String>) -> Option<RunCounts> {
    let n: usize = scan
        .files
        .iter()
        .map(|f| f.extents.len() + f.chain.len())
        .sum();
    let mut ranges = Vec::new();
    ranges.try_reserve_exact(n).ok()?;
    for f in &scan.files {
        ranges.extend(f.extents.iter().map(|e| (e.physical, e.len)));
        ranges.extend(f.chain.iter().map(|&b| (b, 1)));
    }
    let refs = RunCounts::from_ranges(&ranges)?;
    drop(ranges);
    for f in &scan.files {
        for &b in &f.chain {
            if refs.get(b) != 1 {
                problems.push(format!(
                    "overflow block {b} of file {:?} is also used by other data",
                    f.record.name
                ));
            }
        }
    }
    Some(refs)
}

/// Describes where two count maps disagree.
pub(crate) fn compare_counts(what: &str, a: &RunCounts, b: &RunCounts, problems: &mut Vec<String>) {
    for (s, l, c) in a.iter() {
        for (bs, bl, bc) in b.segments(s, l) {
            if bc != c {
                problems.push(format!(
                    "{what}: blocks {bs}..{} are counted {c} in memory but referenced {bc} times on media",
                    bs + bl
                ));
            }
        }
    }
    for (s, l, c) in b.iter() {
        for (as_, al, ac) in a.segments(s, l) {
            if ac == 0 {
                problems.push(format!(
                    "{what}: blocks {as_}..{} are referenced {c} times on media but not counted in memory",
                    as_ + al
                ));
            }
        }
    }
}
