//! Heap budgets.
//!
//! The kernel heap is one fixed range: when it runs out, the allocation
//! error handler has nothing to give back and the appliance stops. So every
//! subsystem whose memory a client or the media decides (mounting a
//! filesystem, an NBD connection, an HTTP request) charges a [`Budget`]
//! before it allocates, and a charge that does not fit is refused with an
//! [`OverBudget`] error that the subsystem turns into a protocol answer
//! (NBD `ENOMEM`/`EOVERFLOW`, HTTP 503, a refused mount with a message).
//! The sum of the limits stays below the heap, so a refused charge leaves
//! room for everything else (the shell, the network stack, the frame
//! table). `mem` shows each budget's limit, use, peak and refusals.
//!
//! Charges are RAII: a [`Charge`] releases its bytes when dropped, so a
//! failed request or a closed connection cannot leak budget. Counters are
//! atomics (`Relaxed` is enough: a budget is an admission bound, not a
//! lock protecting other data).

#![no_std]

#[cfg(test)]
extern crate std;
#[cfg(test)]
use std::string::ToString;

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Mounted filesystems: per-file maps, name index, allocator state.
pub static MOUNT: Budget = Budget::new("mount", usize::MAX);
/// NBD connections: buffers, queued replies, pending requests.
pub static NBD: Budget = Budget::new("nbd", usize::MAX);
/// HTTP connections: request heads, queued responses.
pub static HTTP: Budget = Budget::new("http", usize::MAX);

/// Every budget, in the order `mem` shows them.
pub fn all() -> [&'static Budget; 3] {
    [&MOUNT, &NBD, &HTTP]
}

/// A bound on the heap bytes one subsystem may hold.
#[derive(Debug)]
pub struct Budget {
    name: &'static str,
    limit: AtomicUsize,
    used: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

/// A budget's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// The subsystem.
    pub name: &'static str,
    /// Bytes it may hold.
    pub limit: usize,
    /// Bytes it holds now.
    pub used: usize,
    /// Most bytes it has held since boot.
    pub peak: usize,
    /// Charges refused since boot.
    pub refused: u64,
}

/// A charge that did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// The budget's name.
    pub budget: &'static str,
    /// Bytes the refused charge asked for.
    pub requested: usize,
    /// Bytes held when it was refused.
    pub used: usize,
    /// The budget's limit.
    pub limit: usize,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} memory budget exhausted: {} bytes requested, {} of {} bytes in use",
            self.budget, self.requested, self.used, self.limit
        )
    }
}

impl Budget {
    /// A budget with `limit` bytes (`usize::MAX`: unbounded until
    /// [`Budget::set_limit`]).
    pub const fn new(name: &'static str, limit: usize) -> Self {
        Budget {
            name,
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The subsystem's name, as `mem` shows it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sets the limit. Charges already held stay held; new ones are
    /// checked against the new limit.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The budget's figures now.
    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            name: self.name,
            limit: self.limit.load(Ordering::Relaxed),
            used: self.used.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Takes `bytes` from the budget, or refuses without taking anything.
    pub fn charge(&self, bytes: usize) -> Result<Charge<'_>, OverBudget> {
        self.take(bytes)?;
        Ok(Charge {
            budget: self,
            bytes,
        })
    }

    /// An empty charge to grow later.
    pub fn empty(&self) -> Charge<'_> {
        Charge {
            budget: self,
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> Result<(), OverBudget> {
        let limit = self.limit.load(Ordering::Relaxed);
        let result = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            });
        match result {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(used) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(OverBudget {
                    budget: self.name,
                    requested: bytes,
                    used,
                    limit,
                })
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes held from a [`Budget`]; given back on drop.
#[derive(Debug)]
#[must_use = "dropping a charge gives its bytes back at once"]
pub struct Charge<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Charge<'_> {
    /// The bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `more` bytes into this charge, or refuses and keeps what it
    /// holds.
    pub fn grow(&mut self, more: usize) -> Result<(), OverBudget> {
        self.budget.take(more)?;
        self.bytes += more;
        Ok(())
    }

    /// Gives back up to `less` bytes.
    pub fn shrink(&mut self, less: usize) {
        let less = less.min(self.bytes);
        self.budget.give_back(less);
        self.bytes -= less;
    }

    /// Holds exactly `bytes`: grows (fallibly) or shrinks to it.
    pub fn resize(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes > self.bytes {
            self.grow(bytes - self.bytes)
        } else {
            self.shrink(self.bytes - bytes);
            Ok(())
        }
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_within_the_limit_and_refuses_beyond() {
        let budget = Budget::new("test", 100);
        let a = budget.charge(60).unwrap();
        let err = budget.charge(41).unwrap_err();
        assert_eq!(
            err,
            OverBudget {
                budget: "test",
                requested: 41,
                used: 60,
                limit: 100
            }
        );
        assert_eq!(
            err.to_string(),
            "test memory budget exhausted: 41 bytes requested, 60 of 100 bytes in use"
        );
        let b = budget.charge(40).unwrap();
        assert_eq!(budget.stats().used, 100);
        drop(a);
        drop(b);
        let stats = budget.stats();
        assert_eq!((stats.used, stats.peak, stats.refused), (0, 100, 1));
    }

    #[test]
    fn grow_shrink_and_resize_keep_the_count_exact() {
        let budget = Budget::new("test", 50);
        let mut c = budget.empty();
        c.grow(30).unwrap();
        assert!(c.grow(21).is_err());
        assert_eq!(c.bytes(), 30);
        c.shrink(100);
        assert_eq!((c.bytes(), budget.stats().used), (0, 0));
        c.resize(50).unwrap();
        assert!(c.resize(51).is_err());
        c.resize(10).unwrap();
        assert_eq!(budget.stats().used, 10);
        drop(c);
        assert_eq!(budget.stats().used, 0);
    }

    #[test]
    fn a_huge_request_is_refused_not_wrapped() {
        let budget = Budget::new("test", usize::MAX);
        let _held = budget.charge(10).unwrap();
        assert!(budget.charge(usize::MAX).is_err());
        assert_eq!(budget.stats().used, 10);
    }

    #[test]
    fn lowering_the_limit_refuses_new_charges_only() {
        let budget = Budget::new("test", 100);
        let held = budget.charge(80).unwrap();
        budget.set_limit(50);
        assert!(budget.charge(1).is_err());
        drop(held);
        assert!(budget.charge(50).is_ok());
    }
}
