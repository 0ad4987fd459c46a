//! Where the harness finds the kernel, the boot tool and its run folders.
//!
//! `cargo xtask test` sets `DAXBOX_KERNEL` and `DAXBOX_BOOT_TOOL`; without
//! them the release build outputs in the target folder are used, so
//! `cargo test -p daxbox-tests` works after a `cargo xtask build`.

use std::path::{Path, PathBuf};

use crate::HarnessError;

/// The workspace root (parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The cargo target folder: `CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Root of the per-test run folders: `DAXBOX_TEST_RUNS` or
/// `<root>/target/test-runs` (always under the workspace's own `target/`,
/// so logs are in one known place whatever target folder built the tests).
pub fn test_runs_dir() -> PathBuf {
    match std::env::var_os("DAXBOX_TEST_RUNS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target").join("test-runs"),
    }
}

/// The kernel ELF: `DAXBOX_KERNEL`, else the release build output.
pub fn kernel_path() -> Result<PathBuf, HarnessError> {
    kernel_path_from(std::env::var_os("DAXBOX_KERNEL").map(PathBuf::from))
}

/// [`kernel_path`] with the override given explicitly (testable without
/// touching the process environment).
pub fn kernel_path_from(overridden: Option<PathBuf>) -> Result<PathBuf, HarnessError> {
    let path = overridden.unwrap_or_else(default_kernel);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::missing(
            "kernel ELF",
            &path,
            "run `cargo xtask test` (or `cargo xtask build`), or set DAXBOX_KERNEL",
        ))
    }
}

/// The kernel (profile `kernel`); its copy without debug info (`daxbox-kernel.stripped`,
/// written by xtask) when that is at least as new, as it boots faster.
fn default_kernel() -> PathBuf {
    let elf = target_dir().join("x86_64-unknown-none/kernel/daxbox-kernel");
    let stripped = elf.with_extension("stripped");
    let modified = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    match (modified(&elf), modified(&stripped)) {
        (Some(elf_time), Some(stripped_time)) if stripped_time >= elf_time => stripped,
        _ => elf,
    }
}

/// The `daxbox-boot` binary: `DAXBOX_BOOT_TOOL`, else the release build
/// output.
pub fn boot_tool_path() -> Result<PathBuf, HarnessError> {
    let path = match std::env::var_os("DAXBOX_BOOT_TOOL") {
        Some(path) => PathBuf::from(path),
        None => target_dir().join("release/daxbox-boot"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::missing(
            "daxbox-boot",
            &path,
            "run `cargo xtask test` (or `cargo xtask build`), or set DAXBOX_BOOT_TOOL",
        ))
    }
}
