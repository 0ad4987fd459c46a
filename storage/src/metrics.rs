//! Counters the storage service keeps for metrics (`web`): NBD requests
//! by export and operation, latency by operation, recovery events.
//!
//! Bounded: the first [`MAX_EXPORT_SERIES`] export names that see a request
//! get their own counters; requests on any other export are added to one
//! `other` entry. An export keeps its entry for the boot (a renamed or
//! removed file's counters stay under the old name), so the metrics output
//! and this table never grow past that bound.

use alloc::collections::BTreeMap;
use alloc::string::String;
use daxbox_nbd::metrics::{Histogram, OpCounter, OpStats};

/// Exports counted under their own name; the rest are `other`.
pub const MAX_EXPORT_SERIES: usize = 64;

/// Counters of one export, per operation (indexed by `Op::index`).
pub type ExportCounters = [OpCounter; 8];

/// NBD request counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NbdMetrics {
    /// Per export name, at most [`MAX_EXPORT_SERIES`].
    pub exports: BTreeMap<String, ExportCounters>,
    /// Every other export.
    pub other: ExportCounters,
    /// Latency per operation, over every export.
    pub latency: [Histogram; 8],
}

impl NbdMetrics {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            exports: BTreeMap::new(),
            other: [OpCounter {
                requests: 0,
                errors: 0,
                bytes: 0,
            }; 8],
            latency: [Histogram {
                buckets: [0; 15],
                sum_us: 0,
                count: 0,
            }; 8],
        }
    }

    /// Adds what a connection on `export` answered.
    pub fn record(&mut self, export: &str, stats: &OpStats) {
        for (a, b) in self.latency.iter_mut().zip(stats.latency.iter()) {
            a.add(b);
        }
        // An export's first request allocates its entry; later ones do not.
        if self.exports.len() < MAX_EXPORT_SERIES && !self.exports.contains_key(export) {
            self.exports
                .insert(String::from(export), [OpCounter::default(); 8]);
        }
        let counters = match self.exports.get_mut(export) {
            Some(counters) => counters,
            None => &mut self.other,
        };
        for (a, b) in counters.iter_mut().zip(stats.ops.iter()) {
            a.add(b);
        }
    }
}

/// Recovery events since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryCounts {
    /// Filesystems found not cleanly unmounted at boot (mounted with
    /// recovery).
    pub unclean_mounts: u64,
    /// Mounts that replayed a committed journal transaction.
    pub journal_replays: u64,
    /// Mounts that rewrote a damaged superblock copy.
    pub superblock_repairs: u64,
    /// Filesystems checked by `fsck`.
    pub fsck_runs: u64,
    /// Problems those checks found.
    pub fsck_problems: u64,
}

/// Everything the storage service counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageMetrics {
    /// NBD requests.
    pub nbd: NbdMetrics,
    /// Recovery events.
    pub recovery: RecoveryCounts,
}

impl StorageMetrics {
    /// Nothing counted yet.
    pub const fn new() -> Self {
        Self {
            nbd: NbdMetrics::new(),
            recovery: RecoveryCounts {
                unclean_mounts: 0,
                journal_replays: 0,
                superblock_repairs: 0,
                fsck_runs: 0,
                fsck_problems: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use daxbox_nbd::metrics::Op;

    #[test]
    fn exports_past_the_bound_are_counted_as_other() {
        let mut stats = OpStats::default();
        stats.record(Op::Write, 512, false, 10);
        let mut m = NbdMetrics::new();
        for i in 0..MAX_EXPORT_SERIES + 3 {
            m.record(&format!("disk{i}"), &stats);
        }
        m.record("disk0", &stats);
        assert_eq!(m.exports.len(), MAX_EXPORT_SERIES);
        assert_eq!(m.exports["disk0"][Op::Write.index()].requests, 2);
        assert_eq!(m.other[Op::Write.index()].requests, 3);
        assert_eq!(m.other[Op::Write.index()].bytes, 3 * 512);
        assert_eq!(
            m.latency[Op::Write.index()].count,
            MAX_EXPORT_SERIES as u64 + 4
        );
    }
}
