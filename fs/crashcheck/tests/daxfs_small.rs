//! Small crash checks of daxfs that run with plain `cargo test` (the
//! 100,000-image CI run is the release runner, `src/bin/crashcheck.rs`).
//! Each workload here must pass; each is also a regression test for a
//! finding of the explorer (see the comments).

use daxfs_crashcheck::daxfs_target::{config, Daxfs, REGION};
use daxfs_crashcheck::harness::{build_base, run_workload, Config, Run, Totals};
use daxfs_crashcheck::oracle::Op;
use daxfs_crashcheck::workloads::{instantiate, setup, templates};
use std::cell::RefCell;
use std::rc::Rc;

/// Fewer images per crash point than the release run: debug builds are
/// about ten times slower.
fn small_config() -> Config {
    let mut c = config(3);
    c.policy.max_images = 32;
    c.policy.random = 4;
    c
}

fn check(workloads: &[Vec<Op>]) -> Totals {
    let config = small_config();
    let base = build_base::<Daxfs>(REGION, &setup(), &config.semantics).expect("base image");
    let run = Run::new(&config);
    let totals = Rc::new(RefCell::new(Totals::default()));
    for ops in workloads {
        run_workload::<Daxfs>(&base, ops, &config, &run, &totals);
    }
    let t = totals.borrow().clone();
    for finding in &t.findings {
        eprintln!("{finding}");
    }
    t
}

#[test]
fn every_single_operation_survives_every_crash() {
    let t = templates();
    let workloads: Vec<Vec<Op>> = (0..t.len()).map(|i| instantiate(&t, &[i])).collect();
    let totals = check(&workloads);
    assert_eq!(totals.violations, 0);
    assert_eq!(totals.workloads, t.len() as u64);
    assert!(totals.distinct > 200, "{totals:?}");
}

#[test]
fn extending_write_after_truncate() {
    // Found by the explorer (oracle side, not a daxfs bug): a crash inside
    // a write that extends the file can keep the old size with some new
    // bytes below it. Writes are not atomic in daxfs; the oracle now
    // accepts that state and nothing else.
    let w = |offset, len, seed| Op::Write {
        name: "small".into(),
        offset,
        len,
        seed,
    };
    let totals = check(&[
        vec![Op::Truncate("small".into(), 3000), w(1000, 5000, 2)],
        vec![w(9000, 2000, 1)],
    ]);
    assert_eq!(totals.violations, 0);
    assert!(totals.distinct > 20, "{totals:?}");
}

#[test]
fn clone_then_write_to_clone_and_rename_over_it() {
    let w = |name: &str, offset, len, seed| Op::Write {
        name: name.into(),
        offset,
        len,
        seed,
    };
    let totals = check(&[vec![
        Op::Clone("big".into(), "copy".into()),
        w("copy", 2 * 1024 * 1024 - 100, 300, 1),
        Op::Rename("copy".into(), "big".into()),
    ]]);
    assert_eq!(totals.violations, 0);
    assert!(totals.distinct > 20, "{totals:?}");
}

#[test]
fn punching_write_zeroes_past_the_end() {
    // The two-commit operation (FORMAT.md "Data writes"). After a truncate
    // down inside a block the rest of that block holds stale bytes; an
    // extending punch must never let them show, whatever the crash point
    // between its two commits (daxfs fixed this ordering in ed3a779).
    let zero = |offset, len| Op::Zero {
        name: "small".into(),
        offset,
        len,
        punch: true,
    };
    let totals = check(&[
        vec![zero(6000, 12_000)],
        vec![Op::Truncate("small".into(), 3000), zero(1000, 20_000)],
    ]);
    assert_eq!(totals.violations, 0);
    assert!(totals.distinct > 20, "{totals:?}");
}

#[test]
fn punch_inside_the_file_leaves_its_edges_pending() {
    // Found by the explorer (oracle side, not a daxfs bug): a punching
    // write_zeroes commits the unmap first and then zeroes the partial
    // edge blocks in place, so those zeros are durable only at the next
    // fence, like any in-place data. The oracle first forgot older data
    // after any operation that fenced; it now does so only when nothing
    // is pending.
    let totals = check(&[vec![Op::Zero {
        name: "small".into(),
        offset: 1000,
        len: 8000,
        punch: true,
    }]]);
    assert_eq!(totals.violations, 0);
    assert!(totals.distinct > 5, "{totals:?}");
}

#[test]
fn open_unlink_scenarios_survive_every_crash() {
    // FORMAT.md "Orphans": unlink (or rename over) a held file, write to
    // the orphan, close it; every crash image mounts, fsck is clean (no
    // leak, no orphan left without a holder after mount) and the name is
    // present or absent as the model says. And append_from (FORMAT.md
    // "Appending by moving extents"): both files or the joined one (with
    // the dst record and the src free record split over two transactions
    // this found 66 violations).
    let scenarios = daxfs_crashcheck::workloads::scenarios();
    let totals = check(&scenarios);
    assert_eq!(totals.violations, 0);
    assert_eq!(totals.workloads, scenarios.len() as u64);
    assert!(totals.distinct > 50, "{totals:?}");
}
