//! The persistence domain of a pmem range: what survives a power failure,
//! as the NFIT platform capabilities (or the lack of them) say. Its own
//! module because both the NFIT parser and discovery use it.

use core::fmt;

/// What survives a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The memory controller's queues are flushed on power loss (ADR):
    /// stores are durable once flushed from the CPU caches and fenced.
    Adr,
    /// The CPU caches are flushed on power loss too (eADR): stores are
    /// durable once globally visible; flushes can be skipped.
    Eadr,
    /// Nothing: emulated pmem carved out of RAM.
    Unknown,
}

impl Domain {
    /// True when CPU caches are inside the persistence domain.
    pub fn cache_is_persistent(self) -> bool {
        self == Domain::Eadr
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Domain::Adr => "ADR (flush+fence)",
            Domain::Eadr => "eADR (fence only)",
            Domain::Unknown => "none: RAM",
        })
    }
}
