//! Replays, without libFuzzer, every committed input of every fuzz target:
//! the seed corpora (`fuzz/corpus/TARGET/`) and every crash input found so
//! far (`fuzz/regressions/TARGET/`, each a bug that was fixed). A
//! regression input that panics again is a bug come back.
//!
//! Also checks that the committed seeds are what `seeds::seeds` makes;
//! `DAXBOX_WRITE_SEEDS=1` rewrites them instead.

use std::path::{Path, PathBuf};

use daxbox_fuzz_harness::{seeds, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut count = 0;
    for (name, run) in TARGETS {
        for path in files(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} panics (replay: cargo xtask fuzz replay {name} {})",
                path.display(),
                path.display()
            );
            count += 1;
        }
    }
    count
}

#[test]
fn seeds_are_committed_and_current() {
    let write = std::env::var_os("DAXBOX_WRITE_SEEDS").is_some();
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let made = seeds::seeds(name);
        assert!(made.len() >= 3, "{name} has {} seeds", made.len());
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for old in files(&dir) {
                std::fs::remove_file(old).unwrap();
            }
        }
        for (file, bytes) in &made {
            let path = dir.join(file);
            if write {
                std::fs::write(&path, bytes).unwrap();
            } else {
                let committed = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (DAXBOX_WRITE_SEEDS=1 writes the seeds)",
                        path.display()
                    )
                });
                assert!(
                    &committed == bytes,
                    "{} is stale (DAXBOX_WRITE_SEEDS=1 rewrites it)",
                    path.display()
                );
            }
        }
        assert_eq!(
            files(&dir).len(),
            made.len(),
            "{}: files that no generator makes",
            dir.display()
        );
    }
}

#[test]
fn every_seed_runs_clean() {
    assert!(replay("corpus") >= 3 * TARGETS.len());
}

#[test]
fn every_crash_found_so_far_stays_fixed() {
    replay("regressions");
}

#[test]
fn every_target_has_an_entry_point() {
    for (name, _) in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.contains("daxbox_fuzz_harness::"),
            "{} does not call the harness",
            path.display()
        );
    }
}
