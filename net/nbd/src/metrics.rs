//! Request counters for metrics: per operation, the requests answered,
//! the errors among them, the payload bytes of READ/WRITE, and a latency
//! histogram (fixed buckets, microseconds from the request header being
//! parsed to the last byte of its reply being produced, on the clock of
//! [`Backend::now_us`](crate::Backend::now_us)). Plain integers: recording a
//! request allocates nothing.

/// Upper bounds (inclusive, microseconds) of the latency buckets; one more
/// bucket counts everything slower (`+Inf`).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// The request kinds counted apart (`NBD_CMD_DISC` has no reply and is not
/// counted; unknown commands are [`Op::Other`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// Anything else (answered `EINVAL`).
    Other,
}

impl Op {
    /// Every kind, in the order of [`OpStats::ops`].
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Trim,
        Op::WriteZeroes,
        Op::BlockStatus,
        Op::Cache,
        Op::Other,
    ];

    /// Lower-case name used as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::WriteZeroes => "write_zeroes",
            Op::BlockStatus => "block_status",
            Op::Cache => "cache",
            Op::Other => "other",
        }
    }

    /// Index into [`OpStats::ops`].
    pub const fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn of(command: crate::wire::Command) -> Op {
        use crate::wire::Command;
        match command {
            Command::Read => Op::Read,
            Command::Write => Op::Write,
            Command::Flush => Op::Flush,
            Command::Trim => Op::Trim,
            Command::WriteZeroes => Op::WriteZeroes,
            Command::BlockStatus => Op::BlockStatus,
            Command::Cache => Op::Cache,
            Command::Disc | Command::Unknown(_) => Op::Other,
        }
    }
}

/// A latency histogram with the fixed buckets of [`LATENCY_BUCKETS_US`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the observations, microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, us: u64) {
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket] = self.buckets[bucket].saturating_add(1);
        self.sum_us = self.sum_us.saturating_add(us);
        self.count = self.count.saturating_add(1);
    }

    /// Adds another histogram's observations.
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.count = self.count.saturating_add(other.count);
    }
}

/// Counters of one request kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounter {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with an error.
    pub errors: u64,
    /// Payload bytes of the successful ones (READ and WRITE only).
    pub bytes: u64,
}

impl OpCounter {
    /// Adds another counter.
    pub fn add(&mut self, other: &OpCounter) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// Counters of every request kind, and their latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Per kind, indexed by [`Op::index`].
    pub ops: [OpCounter; 8],
    /// Latency per kind, indexed by [`Op::index`].
    pub latency: [Histogram; 8],
}

impl OpStats {
    /// Records one answered request.
    pub fn record(&mut self, op: Op, bytes: u64, error: bool, latency_us: u64) {
        let counter = &mut self.ops[op.index()];
        counter.requests = counter.requests.saturating_add(1);
        if error {
            counter.errors = counter.errors.saturating_add(1);
        } else {
            counter.bytes = counter.bytes.saturating_add(bytes);
        }
        self.latency[op.index()].observe(latency_us);
    }

    /// Adds another set of counters.
    pub fn add(&mut self, other: &OpStats) {
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            a.add(b);
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            a.add(b);
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.iter().all(|o| o.requests == 0)
    }
}

/// What the output queue needs to record a request once its reply is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) op: Op,
    pub(crate) bytes: u64,
    pub(crate) error: bool,
    pub(crate) started_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds_and_slow_ones_go_to_inf() {
        let mut h = Histogram::default();
        h.observe(0);
        h.observe(50);
        h.observe(51);
        h.observe(5_000_000);
        h.observe(5_000_001);
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[13], 1);
        assert_eq!(h.buckets[14], 1);
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_us, 50 + 51 + 5_000_000 + 5_000_001);
    }

    #[test]
    fn errors_count_no_bytes() {
        let mut s = OpStats::default();
        s.record(Op::Read, 4096, false, 10);
        s.record(Op::Read, 4096, true, 10);
        assert_eq!(s.ops[0].requests, 2);
        assert_eq!(s.ops[0].errors, 1);
        assert_eq!(s.ops[0].bytes, 4096);
        let mut t = OpStats::default();
        t.add(&s);
        t.add(&s);
        assert_eq!(t.ops[0].requests, 4);
        assert_eq!(t.latency[0].count, 4);
    }
}
