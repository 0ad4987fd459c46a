//! The explorer can fail: daxfs with a deliberately missing fence in
//! `rename` (feature `fault-injection`, fs/daxfs/src/fault.rs) must be
//! caught, and the same workloads must pass without the fault.
//!
//! The fault switch is process-wide, so this file holds a single test.

use std::cell::RefCell;
use std::rc::Rc;

use daxfs_crashcheck::daxfs_target::{config, Daxfs, REGION};
use daxfs_crashcheck::harness::{build_base, run_workload, Run, Totals};
use daxfs_crashcheck::oracle::Op;
use daxfs_crashcheck::workloads::setup;

fn explore(workloads: &[Vec<Op>]) -> Totals {
    let mut config = config(7);
    // Debug builds are slow; a few images per point find the missing fence.
    config.policy.max_images = 48;
    let base = build_base::<Daxfs>(REGION, &setup(), &config.semantics).expect("base image");
    let run = Run::new(&config);
    let totals = Rc::new(RefCell::new(Totals::default()));
    for ops in workloads {
        run_workload::<Daxfs>(&base, ops, &config, &run, &totals);
    }
    let t = totals.borrow().clone();
    t
}

#[test]
fn rename_without_journal_fence_is_caught() {
    let workloads = vec![
        vec![Op::Rename("small".into(), "new".into())],
        vec![Op::Rename("small".into(), "big".into())],
    ];
    daxfs::fault::set_rename_skips_journal_fence(false);
    let good = explore(&workloads);
    assert_eq!(good.violations, 0, "{:#?}", good.findings);
    assert!(good.distinct > 10, "{good:?}");

    daxfs::fault::set_rename_skips_journal_fence(true);
    let bad = explore(&workloads);
    daxfs::fault::set_rename_skips_journal_fence(false);
    assert!(
        bad.violations > 0,
        "the missing fence went unnoticed: {bad:?}"
    );
    for finding in &bad.findings {
        println!("caught: {finding}");
    }
    // Both renames are hit, and the finding names the journal.
    assert!(bad.findings.iter().any(|f| f.ops == workloads[0]));
    assert!(bad.findings.iter().any(|f| f.ops == workloads[1]));
    assert!(
        bad.findings.iter().any(|f| f.message.contains("journal")),
        "{:#?}",
        bad.findings
    );
}
