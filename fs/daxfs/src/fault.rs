//! Deliberate bugs for the crash-state explorer's self-test (`fs/crashcheck`
//! tests/broken_variant.rs): it must catch each of them, which shows that
//! it can fail at all. Only built with the `fault-injection` feature, which
//! nothing but that test enables, so a kernel can never contain it.

use core::sync::atomic::{AtomicBool, Ordering};

static RENAME_SKIPS_JOURNAL_FENCE: AtomicBool = AtomicBool::new(false);

/// Makes every later `rename` commit its journal transaction without the
/// fence between the journal entries and the commit word (FORMAT.md
/// "Journal"), so a crash can leave a committed word over unwritten
/// entries. Process-wide: use it from a test binary of its own.
pub fn set_rename_skips_journal_fence(on: bool) {
    RENAME_SKIPS_JOURNAL_FENCE.store(on, Ordering::SeqCst);
}

/// Whether the fault above is active.
pub fn rename_skips_journal_fence() -> bool {
    RENAME_SKIPS_JOURNAL_FENCE.load(Ordering::SeqCst)
}
