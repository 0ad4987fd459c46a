//! The workload runner: runs operations on a filesystem over
//! [`CrashMemory`], checks every crash image at every crash point against
//! the [`crate::oracle`], and collects counters and findings.
//!
//! For each distinct crash image of a workload the runner:
//! 1. mounts it on a fresh [`CrashMemory`] (a panic is caught and reported;
//!    a refusal to mount is reported too: a crash image is never corrupt);
//! 2. runs fsck (any finding is a violation) and reads every file;
//! 3. re-crashes recovery: takes a few crash images of the writes the mount
//!    itself made, mounts each again and requires the same visible state;
//! 4. compares the visible state with the oracle's acceptable states for
//!    the crash point (this step runs for every occurrence of an image, as
//!    the acceptable states differ between points; steps 1 to 3 run once
//!    per distinct image of the workload and are cached by image hash).
//!
//! The filesystem is reached through the small [`Target`] trait so that the
//! runner can be tested with toy filesystems; `crate::daxfs_target` is the
//! real one.

use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::format;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::string::{String, ToString};
use std::sync::Once;
use std::vec::Vec;

use crate::explore::Explorer;
use crate::generate::{crash_images, CrashImage, Policy, Selection};
use crate::image::{ImageHash, PagedImage};
use crate::memory::{CrashMemory, PointKind};
use crate::oracle::{matches_file, Expect, ModelState, Op, Semantics, Visible};
use crate::rng::Rng;

/// An error of the filesystem under test, classified for the oracle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// No such file.
    NotFound,
    /// The name exists already.
    Exists,
    /// Anything else (message).
    Other(String),
}

/// A filesystem the runner can drive.
pub trait Target: Sized + 'static {
    /// Formats a new filesystem on `memory`.
    fn format(memory: CrashMemory) -> Result<Self, String>;
    /// Unmounts cleanly.
    fn unmount(self) -> Result<(), String>;
    /// Mounts (and recovers) the filesystem on `memory`.
    fn mount(memory: CrashMemory) -> Result<Self, String>;
    /// Runs one operation.
    fn apply(&mut self, op: &Op) -> Result<(), TargetError>;
    /// Consistency check of the mounted filesystem: one line per problem.
    fn fsck(&mut self) -> Vec<String>;
    /// The content of each file in `names` that exists.
    fn visible(&mut self, names: &[String]) -> Result<Visible, String>;
    /// Every file's size and content [`digest`].
    fn digests(&mut self) -> Result<Digests, String>;
    /// True while file `name` holds changes in memory that a crash would
    /// undo even with every store durable (daxfs: deferred copy-on-write
    /// runs, FORMAT.md "Deferred copy-on-write commits"): its older data
    /// versions may still show.
    fn deferred(&self, name: &str) -> bool {
        let _ = name;
        false
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Crash images per crash point.
    pub policy: Policy,
    /// Seed of every random choice.
    pub seed: u64,
    /// What the filesystem promises.
    pub semantics: Semantics,
    /// Crash images of recovery itself re-mounted per distinct image.
    pub recrash: usize,
    /// Stop collecting finding details after this many.
    pub max_findings: usize,
    /// Every n-th distinct image (by hash) also gets the usability probe
    /// (0 = never).
    pub probe_every: u64,
}

/// One violation, with everything needed to reproduce it.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The workload.
    pub ops: Vec<Op>,
    /// Index of the operation in flight (== ops.len() for setup problems).
    pub op_index: usize,
    /// The crash point.
    pub point: PointKind,
    /// How the image was chosen.
    pub selection: Selection,
    /// What was wrong.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops: Vec<String> = self.ops.iter().map(|o| o.to_string()).collect();
        write!(
            f,
            "workload [{}], crash in op {} at {:?} (keep_rest {}, {} line exceptions): {}",
            ops.join(", "),
            self.op_index,
            self.point,
            self.selection.keep_rest,
            self.selection.lines.len(),
            self.message
        )
    }
}

/// Counters and findings of a run.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Workloads run.
    pub workloads: u64,
    /// Crash points visited.
    pub points: u64,
    /// Crash images checked against the oracle (all occurrences).
    pub images: u64,
    /// Distinct crash images over the whole run.
    pub distinct: u64,
    /// Mounts of crash images (distinct per workload).
    pub mounts: u64,
    /// Mounts of crash images of recovery.
    pub recrash_mounts: u64,
    /// Verdicts that needed a byte-wise look at file contents.
    pub content_checks: u64,
    /// Recovered images written to by the usability probe.
    pub probe_mounts: u64,
    /// Violations found (all of them).
    pub violations: u64,
    /// The first violations in detail.
    pub findings: Vec<Finding>,
}

/// The starting point shared by all workloads: an image and its model.
#[derive(Clone)]
pub struct Base {
    /// The image (clean, all durable).
    pub image: PagedImage,
    /// Its hash.
    pub hash: ImageHash,
    /// The model of its content.
    pub state: ModelState,
}

/// What a mount showed: digests, and the contents when asked for.
type Outcome = Result<(Digests, Option<Visible>), String>;
type Summary = Result<Digests, String>;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent while the runner catches
/// panics of mounts, so that caught panics do not flood the output.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// Runs `f`, turning a panic into an error message.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    quiet_panics();
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|p| format!("panic: {}", panic_message(&*p)))
}

/// What a mounted image showed, kept per distinct image: names, sizes
/// and content digests (not the contents: a workload has hundreds of
/// images, each with a 2 MiB file).
pub type Digests = BTreeMap<String, (usize, u128)>;

/// The digest form of a visible state.
pub fn digests(visible: &Visible) -> Digests {
    visible
        .iter()
        .map(|(name, bytes)| (name.clone(), (bytes.len(), digest(bytes))))
        .collect()
}

/// A fast 128-bit content digest: four independent multiply-rotate lanes
/// (so the CPU runs them in parallel), mixed at the end. Not adversarial-
/// resistant, which a crash check does not need.
pub fn digest(bytes: &[u8]) -> u128 {
    let mut d = Digester::default();
    d.update(bytes);
    d.finish()
}

/// The incremental form of [`digest`]: feeding the bytes in any pieces
/// gives the same result.
#[derive(Clone, Debug)]
pub struct Digester {
    lanes: [u64; 4],
    carry: [u8; 32],
    carried: usize,
    len: u64,
}

impl Default for Digester {
    fn default() -> Self {
        Self {
            lanes: [1, 2, 3, 4],
            carry: [0; 32],
            carried: 0,
            len: 0,
        }
    }
}

const LANE_KEYS: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0xff51_afd7_ed55_8ccd,
];

impl Digester {
    fn block(lanes: &mut [u64; 4], block: &[u8]) {
        // Callers pass 32-byte blocks; the fixed-size view lets the
        // compiler drop the bounds checks and keep the lanes in registers.
        let Ok(b) = <&[u8; 32]>::try_from(block) else {
            return;
        };
        let word = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let (w0, w1, w2, w3) = (word(0), word(8), word(16), word(24));
        lanes[0] = (lanes[0] ^ w0).wrapping_mul(LANE_KEYS[0]).rotate_left(29);
        lanes[1] = (lanes[1] ^ w1).wrapping_mul(LANE_KEYS[1]).rotate_left(29);
        lanes[2] = (lanes[2] ^ w2).wrapping_mul(LANE_KEYS[2]).rotate_left(29);
        lanes[3] = (lanes[3] ^ w3).wrapping_mul(LANE_KEYS[3]).rotate_left(29);
    }

    /// Adds `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.carried > 0 {
            let n = (32 - self.carried).min(bytes.len());
            self.carry[self.carried..self.carried + n].copy_from_slice(&bytes[..n]);
            self.carried += n;
            bytes = &bytes[n..];
            if self.carried < 32 {
                return;
            }
            let carry = self.carry;
            Self::block(&mut self.lanes, &carry);
            self.carried = 0;
        }
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            Self::block(&mut self.lanes, block);
        }
        let rest = blocks.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    /// The digest of everything added.
    pub fn finish(mut self) -> u128 {
        for i in 0..self.carried {
            let lane = &mut self.lanes[i % 4];
            *lane = (*lane ^ u64::from(self.carry[i]))
                .wrapping_mul(LANE_KEYS[i % 4])
                .rotate_left(29);
        }
        let mut line = [0u8; crate::image::LINE];
        for (i, lane) in self.lanes.iter().enumerate() {
            line[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
        }
        line[32..40].copy_from_slice(&self.len.to_le_bytes());
        crate::image::line_hash(0, &line)
    }
}

/// The oracle for one acceptable state on digests alone: `Some(Ok)` when
/// `seen` is exactly the state's current contents, `Some(Err)` when names,
/// sizes or data rule it out, `None` when only a byte-wise look at the
/// contents can decide (data differs where unpersisted older versions
/// might explain it).
fn quick_one(state: &ModelState, expected: &Digests, seen: &Digests) -> Option<Result<(), String>> {
    if expected == seen {
        return Some(Ok(()));
    }
    // A file may also show a smaller size its model still allows (a
    // deferred size commit, `FileModel::sizes`); its bytes are then
    // compared one by one.
    let size_ok = |name: &String, l1: &usize, l2: &usize| {
        l1 == l2 || state.files.get(name).is_some_and(|f| f.sizes.contains(l2))
    };
    let shape_ok = expected.len() == seen.len()
        && expected
            .iter()
            .zip(seen)
            .all(|((n1, (l1, _)), (n2, (l2, _)))| n1 == n2 && size_ok(n1, l1, l2));
    if !shape_ok {
        return Some(Err(format!(
            "files {:?}, expected {:?}",
            seen.iter().map(|(n, (l, _))| (n, l)).collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(n, (l, _))| (n, l))
                .collect::<Vec<_>>()
        )));
    }
    for (name, (len, d)) in seen {
        let differs = expected.get(name).is_some_and(|(_, e)| e != d);
        let cut = expected.get(name).is_some_and(|(l, _)| l != len);
        let explainable = cut || state.files.get(name).is_some_and(|f| !f.older.is_empty());
        if differs && !explainable {
            return Some(Err(format!(
                "{name}: data differs and no unpersisted write can explain it"
            )));
        }
    }
    None
}

/// Mounts `image`, checks it, returns what it shows.
fn mount_and_read<T: Target>(
    memory: CrashMemory,
    need_content: &dyn Fn(&Digests) -> Vec<String>,
) -> Outcome {
    let result = guarded(|| -> Outcome {
        let mut fs = T::mount(memory).map_err(|e| format!("mount refused: {e}"))?;
        let problems = fs.fsck();
        if !problems.is_empty() {
            return Err(format!("fsck: {}", problems.join("; ")));
        }
        let seen = fs.digests().map_err(|e| format!("reading files: {e}"))?;
        let wanted = need_content(&seen);
        let content = if wanted.is_empty() {
            None
        } else {
            Some(
                fs.visible(&wanted)
                    .map_err(|e| format!("reading files: {e}"))?,
            )
        };
        Ok((seen, content))
    });
    match result {
        Ok(outcome) => outcome,
        Err(panic) => Err(format!("mount/fsck {panic}")),
    }
}

/// Steps 1 to 3 of the module docs for one distinct image.
fn recover<T: Target>(
    image: &PagedImage,
    hash: ImageHash,
    config: &Config,
    rng: &mut Rng,
    totals: &mut Totals,
    need_content: &dyn Fn(&Digests) -> Vec<String>,
) -> Outcome {
    let memory = CrashMemory::with_hash(image.clone(), hash);
    // Collect crash images of recovery's own writes while it runs.
    let again: Rc<RefCell<Vec<(ImageHash, PagedImage)>>> = Rc::default();
    let sink = again.clone();
    let small = Policy {
        all_subsets_up_to: 2,
        pairs_up_to: 0,
        singles_cap: 2,
        all_based_cap: 1,
        prefix_cap: 1,
        random: 1,
        max_images: 4,
    };
    let mut recovery_rng = Rng::new(rng.next_u64());
    memory.set_observer(Box::new(move |point| {
        crash_images(point, &small, &mut recovery_rng, |crash| {
            let mut images = sink.borrow_mut();
            if crash.hash != hash && images.iter().all(|(h, _)| *h != crash.hash) {
                images.push((crash.hash, crash.materialise(point.persisted)));
            }
        });
    }));
    totals.mounts += 1;
    let first = mount_and_read::<T>(memory.clone(), need_content);
    memory.clear_observer();
    let first_summary: Summary = first
        .as_ref()
        .map(|(d, _)| d.clone())
        .map_err(|e| e.clone());
    let mut again = again.take();
    // Keep a spread of recovery crash images: first, last, random others.
    while again.len() > config.recrash {
        let drop = 1 + rng.index(again.len().saturating_sub(2).max(1));
        again.remove(drop.min(again.len() - 1));
    }
    for (h, image) in again {
        totals.recrash_mounts += 1;
        let second =
            mount_and_read::<T>(CrashMemory::with_hash(image, h), &|_| Vec::new()).map(|(d, _)| d);
        if second != first_summary {
            let describe = |o: &Summary| match o {
                Ok(v) => format!("files {:?}", v.keys().collect::<Vec<_>>()),
                Err(e) => e.clone(),
            };
            return Err(format!(
                "recovery is not idempotent: a crash during recovery gives [{}], \
                 recovery without crash gives [{}]",
                describe(&second),
                describe(&first_summary)
            ));
        }
    }
    // Every `probe_every`-th image: the recovered filesystem must also be
    // usable. Writing a new file must leave the others alone and keep fsck
    // clean (a block recovery wrongly thinks free would be reused here).
    if let Ok(before) = &first_summary {
        if config.probe_every > 0 && hash.0.is_multiple_of(u128::from(config.probe_every)) {
            totals.probe_mounts += 1;
            probe::<T>(image, hash, before)?;
        }
    }
    first
}

/// Name of the file the post-recovery probe writes.
const PROBE: &str = "crashcheck-probe";

/// Mounts `image`, writes a new file, and checks the other files and fsck.
fn probe<T: Target>(image: &PagedImage, hash: ImageHash, before: &Digests) -> Result<(), String> {
    let outcome = guarded(|| -> Result<Digests, String> {
        let mut fs = T::mount(CrashMemory::with_hash(image.clone(), hash))?;
        let ops = [
            Op::Create(PROBE.to_string()),
            Op::Write {
                name: PROBE.to_string(),
                offset: 0,
                len: 3 * 4096 + 100,
                seed: 99,
            },
            Op::Truncate(PROBE.to_string(), 4096),
        ];
        for op in &ops {
            fs.apply(op)
                .map_err(|e| format!("{op} after recovery: {e:?}"))?;
        }
        let problems = fs.fsck();
        if !problems.is_empty() {
            return Err(format!(
                "fsck after a write following recovery: {}",
                problems.join("; ")
            ));
        }
        fs.digests()
    });
    let mut after = match outcome {
        Ok(result) => result?,
        Err(panic) => return Err(format!("writing after recovery: {panic}")),
    };
    if after.remove(PROBE).is_none() {
        return Err("the file written after recovery is missing".to_string());
    }
    if &after != before {
        return Err("writing a new file after recovery changed other files".to_string());
    }
    Ok(())
}

struct Session {
    before: ModelState,
    after: ModelState,
    op_index: usize,
    /// Digests of `before` and `after` (kept in step with them).
    before_digests: Digests,
    after_digests: Digests,
    /// Keys of `before` and `after` for the verdict cache.
    before_key: u128,
    after_key: u128,
    /// For a write in flight: its data with the old size (see
    /// [`torn_write_state`]), with digests and key.
    torn: Option<(ModelState, Digests, u128)>,
    new_findings: Vec<Finding>,
}

/// The explorer and the caches shared by all workloads of a run. Mounting
/// an image always shows the same thing, so what an image showed is cached
/// by image hash; a verdict depends on the image and the acceptable model
/// states, so it is cached by both (workloads with a common prefix share
/// their states and so their verdicts).
pub struct Run {
    /// Image generation and the global count of distinct images.
    pub explorer: Explorer,
    caches: Caches,
}

#[derive(Default)]
struct Caches {
    summaries: HashMap<ImageHash, Summary>,
    /// Verdicts by (image, state key).
    verdicts: HashMap<(ImageHash, u128), Result<(), String>>,
}

impl Run {
    /// A run whose random choices follow `config.seed`.
    pub fn new(config: &Config) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Run {
            explorer: Explorer::new(config.policy.clone(), config.seed),
            caches: Caches::default(),
        }))
    }
}

/// A key for a model state: names, current contents and older versions.
fn state_key(state: &ModelState) -> u128 {
    let mut h = crate::image::ImageHash::default();
    for (i, (name, file)) in state.files.iter().enumerate() {
        let mut line = [0u8; crate::image::LINE];
        line[..16].copy_from_slice(&digest(name.as_bytes()).to_le_bytes());
        line[16..32].copy_from_slice(&digest(&file.content).to_le_bytes());
        let mut older = crate::image::ImageHash::default();
        for (j, old) in file.older.iter().enumerate() {
            let mut l = [0u8; crate::image::LINE];
            l[..16].copy_from_slice(&digest(old).to_le_bytes());
            older.add_line(j as u64, &l);
        }
        line[32..48].copy_from_slice(&older.0.to_le_bytes());
        // The sizes a crash may also show decide verdicts too.
        let mut sizes = crate::image::ImageHash::default();
        for (j, size) in file.sizes.iter().enumerate() {
            let mut l = [0u8; crate::image::LINE];
            l[..8].copy_from_slice(&(*size as u64).to_le_bytes());
            sizes.add_line(j as u64, &l);
        }
        line[48..64].copy_from_slice(&sizes.0.to_le_bytes());
        h.add_line(i as u64, &line);
    }
    h.0
}

/// A write (or write_zeroes) is not atomic (daxfs crate docs: only
/// metadata operations are): a crash in the middle of one that extends a file may keep the old
/// size while some of the new bytes below it already reached media. This
/// is the state for that case: the old size, each byte old or new. `None`
/// when `op` is not a write or does not change the size.
fn torn_write_state(before: &ModelState, after: &ModelState, op: &Op) -> Option<ModelState> {
    let name = match op {
        Op::Write { name, .. } | Op::Zero { name, .. } => name,
        _ => return None,
    };
    let old = before.files.get(name)?;
    let new = after.files.get(name)?;
    if old.content.len() == new.content.len() {
        return None;
    }
    let mut torn = before.clone();
    let file = torn.files.get_mut(name)?;
    file.older = new.older.clone();
    for version in &mut file.older {
        version.truncate(old.content.len());
    }
    file.content = new.content[..old.content.len()].to_vec();
    Some(torn)
}

/// The verdict on one crash image: acceptable when it shows one of
/// `states` (each with its digests and key). Verdicts are cached per
/// (image, state), mount results per image; contents are read only when
/// digests cannot decide.
fn judge<T: Target>(
    states: &[(&ModelState, &Digests, u128)],
    image: &CrashImage,
    persisted: &PagedImage,
    caches: &mut Caches,
    config: &Config,
    rng: &mut Rng,
    totals: &mut Totals,
) -> Result<(), String> {
    let mut verdicts: Vec<Option<Result<(), String>>> = states
        .iter()
        .map(|(_, _, key)| caches.verdicts.get(&(image.hash, *key)).cloned())
        .collect();
    let cached: Vec<bool> = verdicts.iter().map(Option::is_some).collect();
    let ok = |v: &[Option<Result<(), String>>]| v.iter().any(|x| matches!(x, Some(Ok(()))));
    if ok(&verdicts) {
        return Ok(());
    }
    let mut content: Option<Visible> = None;
    let summary = match caches.summaries.get(&image.hash) {
        Some(summary) => summary.clone(),
        None => {
            let need = |seen: &Digests| {
                let undecided: Vec<(&ModelState, &Digests)> = states
                    .iter()
                    .zip(&verdicts)
                    .filter(|((m, d, _), v)| v.is_none() && quick_one(m, d, seen).is_none())
                    .map(|((m, d, _), _)| (*m, *d))
                    .collect();
                differing_files(&undecided, seen)
            };
            let bytes = image.materialise(persisted);
            let outcome = recover::<T>(&bytes, image.hash, config, rng, totals, &need);
            let summary: Summary = match outcome {
                Ok((seen, visible)) => {
                    content = visible;
                    Ok(seen)
                }
                Err(e) => Err(e),
            };
            caches.summaries.insert(image.hash, summary.clone());
            summary
        }
    };
    // A crash image that does not mount, or mounts inconsistent, is wrong
    // whatever the model says.
    let seen = summary?;

    for (v, (m, d, _)) in verdicts.iter_mut().zip(states) {
        if v.is_none() {
            *v = quick_one(m, d, &seen);
        }
    }
    if !ok(&verdicts) && verdicts.iter().any(Option::is_none) {
        totals.content_checks += 1;
        let undecided: Vec<(&ModelState, &Digests)> = states
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.is_none())
            .map(|((m, d, _), _)| (*m, *d))
            .collect();
        let wanted = differing_files(&undecided, &seen);
        let visible = match content.take() {
            Some(v) => Ok(v),
            None => mount_and_read::<T>(
                CrashMemory::with_hash(image.materialise(persisted), image.hash),
                &|_| wanted.clone(),
            )
            .map(|(_, v)| v.unwrap_or_default()),
        };
        for (v, (m, d, _)) in verdicts.iter_mut().zip(states) {
            if v.is_none() {
                *v = Some(match &visible {
                    Ok(visible) => bytewise(m, d, &seen, visible, config.semantics.unit),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }
    for ((v, was_cached), (_, _, key)) in verdicts.iter().zip(&cached).zip(states) {
        if let (Some(v), false) = (v, was_cached) {
            caches.verdicts.insert((image.hash, *key), v.clone());
        }
    }
    if ok(&verdicts) {
        Ok(())
    } else {
        let why: Vec<String> = verdicts
            .into_iter()
            .flatten()
            .filter_map(Result::err)
            .collect();
        Err(why.join("; "))
    }
}

/// The files whose digest differs from what some of `states` expect: the
/// ones a byte-wise check has to read.
fn differing_files(states: &[(&ModelState, &Digests)], seen: &Digests) -> Vec<String> {
    seen.iter()
        .filter(|(name, (_, d))| {
            states
                .iter()
                .any(|(_, expected)| expected.get(*name).is_none_or(|(_, e)| e != d))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The byte-wise oracle for one state whose names and sizes match `seen`:
/// files with the expected digest pass; the others are compared byte by
/// byte (`visible` holds them).
fn bytewise(
    state: &ModelState,
    expected: &Digests,
    seen: &Digests,
    visible: &Visible,
    unit: usize,
) -> Result<(), String> {
    for (name, (_, d)) in seen {
        if expected.get(name).is_some_and(|(_, e)| e == d) {
            continue;
        }
        let (Some(file), Some(bytes)) = (state.files.get(name), visible.get(name)) else {
            return Err(format!("{name}: not expected or not readable"));
        };
        matches_file(name, file, bytes, unit)?;
    }
    Ok(())
}

/// The digests of a model state's current contents.
fn model_digests(state: &ModelState) -> Digests {
    state
        .files
        .iter()
        .map(|(name, f)| (name.clone(), (f.content.len(), digest(&f.content))))
        .collect()
}

/// Runs one workload from `base`, checking every crash point.
pub fn run_workload<T: Target>(
    base: &Base,
    ops: &[Op],
    config: &Config,
    run: &Rc<RefCell<Run>>,
    totals: &Rc<RefCell<Totals>>,
) {
    let memory = CrashMemory::with_hash(base.image.clone(), base.hash);
    totals.borrow_mut().workloads += 1;
    let setup_finding = |message: String, op_index: usize| Finding {
        ops: ops.to_vec(),
        op_index,
        point: PointKind::OperationEnd(0),
        selection: Selection {
            keep_rest: false,
            lines: Vec::new(),
        },
        message,
    };
    let mut fs = match guarded(|| T::mount(memory.clone())) {
        Ok(Ok(fs)) => fs,
        Ok(Err(e)) => {
            record(
                totals,
                config,
                setup_finding(format!("base image does not mount: {e}"), 0),
            );
            return;
        }
        Err(p) => {
            record(
                totals,
                config,
                setup_finding(format!("mounting the base image: {p}"), 0),
            );
            return;
        }
    };
    let session = Rc::new(RefCell::new(Session {
        before: base.state.clone(),
        after: base.state.clone(),
        op_index: 0,
        before_digests: model_digests(&base.state),
        after_digests: model_digests(&base.state),
        before_key: state_key(&base.state),
        after_key: state_key(&base.state),
        torn: None,
        new_findings: Vec::new(),
    }));
    let mut rng = Rng::new(config.seed ^ (ops.len() as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    {
        let (session, run, totals, config) =
            (session.clone(), run.clone(), totals.clone(), config.clone());
        let ops = ops.to_vec();
        memory.set_observer(Box::new(move |point| {
            let mut guard = session.borrow_mut();
            let s = &mut *guard;
            let mut t = totals.borrow_mut();
            t.points += 1;
            let mut run = run.borrow_mut();
            let Run {
                explorer: e,
                caches,
            } = &mut *run;
            e.visit(point, |image, persisted, first| {
                t.images += 1;
                if first {
                    t.distinct += 1;
                }
                // At the end of an operation it has completed: only "after"
                // is acceptable; inside it, "before", "after" and, for an
                // extending write, the torn write.
                let at_end = matches!(point.kind, PointKind::OperationEnd(_));
                let mut states: Vec<(&ModelState, &Digests, u128)> =
                    vec![(&s.after, &s.after_digests, s.after_key)];
                if !at_end {
                    states.push((&s.before, &s.before_digests, s.before_key));
                    if let Some((torn, digests, key)) = &s.torn {
                        states.push((torn, digests, *key));
                    }
                }
                let verdict =
                    judge::<T>(&states, image, persisted, caches, &config, &mut rng, &mut t);
                if let Err(message) = verdict {
                    s.new_findings.push(Finding {
                        ops: ops.clone(),
                        op_index: s.op_index,
                        point: point.kind,
                        selection: image.selection.clone(),
                        message,
                    });
                }
            });
        }));
    }
    for (index, op) in ops.iter().enumerate() {
        let expect = {
            let mut s = session.borrow_mut();
            s.op_index = index;
            let mut after = s.before.clone();
            let expect = after.apply(op, &config.semantics);
            s.after_digests = model_digests(&after);
            s.after_key = state_key(&after);
            s.torn = torn_write_state(&s.before, &after, op).map(|torn| {
                let (digests, key) = (model_digests(&torn), state_key(&torn));
                (torn, digests, key)
            });
            s.after = after;
            expect
        };
        let result = guarded(|| fs.apply(op));
        let mismatch = match (&result, expect) {
            (Err(p), _) => Some(format!("{op} {p}")),
            (Ok(Ok(())), Expect::Ok)
            | (Ok(Err(TargetError::NotFound)), Expect::NotFound)
            | (Ok(Err(TargetError::Exists)), Expect::Exists) => None,
            (Ok(r), e) => Some(format!("{op} returned {r:?}, the model expects {e:?}")),
        };
        if let Some(message) = mismatch {
            memory.clear_observer();
            record(totals, config, setup_finding(message, index));
            return;
        }
        // When the operation leaves nothing pending, every store it made is
        // durable and no older data version can show any more, except in a
        // file whose commit the target still defers. (A fence alone is not
        // enough: a write_zeroes commits, then zeroes its edge blocks in
        // place, durable only at the next fence.)
        if memory.dirty_lines() == 0 {
            let mut s = session.borrow_mut();
            for (name, file) in s.after.files.iter_mut() {
                if !fs.deferred(name) {
                    file.older.clear();
                }
            }
            s.after_key = state_key(&s.after);
        }
        memory.mark_operation_end();
        let mut s = session.borrow_mut();
        s.before = s.after.clone();
        s.before_digests = s.after_digests.clone();
        s.before_key = state_key(&s.before);
    }
    memory.clear_observer();
    let findings = std::mem::take(&mut session.borrow_mut().new_findings);
    for finding in findings {
        record(totals, config, finding);
    }
}

/// Builds the starting image: formats a `len`-byte region, runs `setup`
/// (which must end with everything persisted) and unmounts cleanly.
pub fn build_base<T: Target>(
    len: usize,
    setup: &[Op],
    semantics: &Semantics,
) -> Result<Base, String> {
    let image = PagedImage::zeroed(len).map_err(|e| e.to_string())?;
    let memory = CrashMemory::new(image);
    let mut fs = T::format(memory.clone()).map_err(|e| format!("format: {e}"))?;
    let mut state = ModelState::default();
    for op in setup {
        if state.apply(op, semantics) != Expect::Ok {
            return Err(format!("setup operation {op} is not valid"));
        }
        fs.apply(op).map_err(|e| format!("setup {op}: {e:?}"))?;
    }
    fs.unmount().map_err(|e| format!("unmount: {e}"))?;
    if memory.dirty_lines() != 0 {
        return Err(format!(
            "{} lines are not durable after a clean unmount",
            memory.dirty_lines()
        ));
    }
    Ok(Base {
        image: memory.persisted_image(),
        hash: memory.persisted_hash(),
        state,
    })
}

/// Where a suite run starts and when it stops.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Skip this many workloads of the sequence first (to resume, or to
    /// leave out what the CI run covers).
    pub skip: usize,
    /// Run only the workloads whose position (after `skip`) is `part.0`
    /// modulo `part.1`: one share of a run split over threads.
    pub part: (usize, usize),
    /// Stop once this many distinct crash images were checked.
    pub distinct: u64,
    /// Stop after this much time (seconds).
    pub seconds: f64,
    /// Stop after this many workloads.
    pub workloads: u64,
}

/// Runs workload after workload (see [`crate::workloads::Sequences`]) from
/// `base` until `budget` is spent; `progress` is called after each one.
pub fn run_suite<T: Target>(
    base: &Base,
    templates: &[Op],
    config: &Config,
    budget: Budget,
    mut progress: impl FnMut(&Totals, &[Op], f64),
) -> (Totals, BTreeSet<ImageHash>) {
    let start = std::time::Instant::now();
    let run = Run::new(config);
    let totals = Rc::new(RefCell::new(Totals::default()));
    let sequences = crate::workloads::Sequences::new(templates.len(), config.seed);
    let (share, shares) = (budget.part.0, budget.part.1.max(1));
    // The open-unlink scenarios first, once per run (by the first share).
    if budget.skip == 0 && share == 0 {
        for ops in crate::workloads::scenarios() {
            run_workload::<T>(base, &ops, config, &run, &totals);
            progress(&totals.borrow(), &ops, start.elapsed().as_secs_f64());
        }
    }
    for (position, indices) in sequences.skip(budget.skip).enumerate() {
        if position % shares != share {
            continue;
        }
        let ops = crate::workloads::instantiate(templates, &indices);
        run_workload::<T>(base, &ops, config, &run, &totals);
        let elapsed = start.elapsed().as_secs_f64();
        let t = totals.borrow();
        progress(&t, &ops, elapsed);
        if t.distinct >= budget.distinct
            || elapsed >= budget.seconds
            || t.workloads >= budget.workloads
        {
            break;
        }
    }
    let t = totals.borrow().clone();
    let seen = run.borrow().explorer.seen_hashes().clone();
    (t, seen)
}

fn record(totals: &Rc<RefCell<Totals>>, config: &Config, finding: Finding) {
    let mut t = totals.borrow_mut();
    t.violations += 1;
    if t.findings.len() < config.max_findings {
        t.findings.push(finding);
    }
}

#[cfg(test)]
mod tests {
    //! The runner against a toy one-file filesystem that commits each write
    //! by switching between two slots with one atomic header word. With the
    //! fence before the header store it is crash-safe; without, the runner
    //! must say so.
    use super::*;
    use crate::image::PAGE;
    use daxbox_persist::PersistentMemory;
    use std::sync::Arc;

    const SLOTS: [u64; 2] = [512, 1536];
    const EXISTS: u64 = 1 << 63;

    thread_local! {
        static BROKEN: Cell<bool> = const { Cell::new(false) };
    }

    struct Toy {
        memory: CrashMemory,
    }

    impl Toy {
        fn header(&self) -> (bool, usize, usize) {
            let h = self.memory.load_u64(0).unwrap();
            (
                h & EXISTS != 0,
                (h >> 32 & 1) as usize,
                (h & 0xffff) as usize,
            )
        }
        fn commit(&mut self, slot: usize, size: usize) {
            let word = EXISTS | (slot as u64) << 32 | size as u64;
            self.memory.store_u64(0, word).unwrap();
            self.memory.flush(0, 8).unwrap();
            self.memory.fence();
        }
    }

    impl Target for Toy {
        fn format(memory: CrashMemory) -> Result<Self, String> {
            let mut toy = Toy { memory };
            toy.memory.store_u64(0, 0).map_err(|e| e.to_string())?;
            Ok(toy)
        }
        fn unmount(self) -> Result<(), String> {
            Ok(())
        }
        fn mount(memory: CrashMemory) -> Result<Self, String> {
            let toy = Toy { memory };
            if toy.header().2 > 1024 {
                return Err("size out of range".into());
            }
            Ok(toy)
        }
        fn apply(&mut self, op: &Op) -> Result<(), TargetError> {
            let (exists, slot, size) = self.header();
            match op {
                Op::Create(_) if exists => Err(TargetError::Exists),
                Op::Create(_) => {
                    self.commit(0, 0);
                    Ok(())
                }
                Op::Write { .. } | Op::Persist(_) if !exists => Err(TargetError::NotFound),
                Op::Persist(_) => Ok(()),
                Op::Write {
                    offset, len, seed, ..
                } => {
                    let mut content = vec![0u8; size];
                    self.memory.read(SLOTS[slot], &mut content).unwrap();
                    let end = (offset + len) as usize;
                    content.resize(content.len().max(end), 0);
                    for (i, byte) in content.iter_mut().enumerate().skip(*offset as usize) {
                        *byte = crate::oracle::pattern(*seed, i as u64);
                    }
                    let new = 1 - slot;
                    self.memory.write(SLOTS[new], &content).unwrap();
                    self.memory.flush(SLOTS[new], content.len() as u64).unwrap();
                    if !BROKEN.with(|b| b.get()) {
                        self.memory.fence();
                    }
                    self.commit(new, content.len());
                    Ok(())
                }
                _ => Err(TargetError::Other("unsupported".into())),
            }
        }
        fn fsck(&mut self) -> Vec<String> {
            Vec::new()
        }
        fn digests(&mut self) -> Result<Digests, String> {
            self.visible(&["f".to_string()]).map(|v| digests(&v))
        }
        fn visible(&mut self, _: &[String]) -> Result<Visible, String> {
            let (exists, slot, size) = self.header();
            let mut out = Visible::new();
            if exists {
                let mut content = vec![0u8; size];
                self.memory.read(SLOTS[slot], &mut content).unwrap();
                out.insert("f".into(), Arc::new(content));
            }
            Ok(out)
        }
    }

    fn run(broken: bool) -> Totals {
        BROKEN.with(|b| b.set(broken));
        let config = Config {
            policy: Policy::default(),
            seed: 5,
            semantics: Semantics {
                unit: 1,
                writes_durable_on_return: true,
                clone_replaces: false,
                sizes_deferred: false,
            },
            recrash: 2,
            max_findings: 10,
            probe_every: 0,
        };
        let base = Base {
            image: PagedImage::zeroed(PAGE).unwrap(),
            hash: PagedImage::zeroed(PAGE).unwrap().hash(),
            state: ModelState::default(),
        };
        let run = Run::new(&config);
        let totals = Rc::new(RefCell::new(Totals::default()));
        let write = |offset, len, seed| Op::Write {
            name: "f".into(),
            offset,
            len,
            seed,
        };
        for ops in [
            vec![Op::Create("f".into())],
            vec![Op::Create("f".into()), write(0, 100, 1)],
            vec![Op::Create("f".into()), write(0, 100, 1), write(50, 250, 2)],
            vec![Op::Create("f".into()), Op::Create("f".into())],
            vec![write(0, 1, 1)],
        ] {
            run_workload::<Toy>(&base, &ops, &config, &run, &totals);
        }
        BROKEN.with(|b| b.set(false));
        let t = totals.borrow().clone();
        t
    }

    #[test]
    fn crash_safe_toy_passes() {
        let t = run(false);
        assert_eq!(t.violations, 0, "{:#?}", t.findings);
        assert_eq!(t.workloads, 5);
        assert!(t.distinct >= 6, "{t:?}");
        assert!(t.images >= t.distinct);
    }

    #[test]
    fn toy_without_fence_is_caught() {
        let t = run(true);
        assert!(t.violations > 0, "{t:?}");
        let first = &t.findings[0];
        assert_eq!(first.ops.len(), 2, "smallest workload first: {first}");
        assert!(first.message.contains("data"), "{first}");
    }

    #[test]
    fn digests_do_not_depend_on_how_bytes_are_fed() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = digest(&bytes);
        for split in [1, 31, 32, 33, 500, 999] {
            let mut d = Digester::default();
            d.update(&bytes[..split]);
            d.update(&bytes[split..]);
            assert_eq!(d.finish(), whole, "split at {split}");
        }
        let mut other = bytes.clone();
        other[500] ^= 1;
        assert_ne!(digest(&other), whole);
        assert_ne!(digest(&bytes[..999]), whole);
        assert_ne!(digest(&[0; 32]), digest(&[0; 33]));
    }

    #[test]
    fn panics_in_mount_become_findings() {
        struct Panics;
        impl Target for Panics {
            fn format(_: CrashMemory) -> Result<Self, String> {
                Ok(Panics)
            }
            fn unmount(self) -> Result<(), String> {
                Ok(())
            }
            fn mount(_: CrashMemory) -> Result<Self, String> {
                panic!("boom")
            }
            fn apply(&mut self, _: &Op) -> Result<(), TargetError> {
                Ok(())
            }
            fn fsck(&mut self) -> Vec<String> {
                Vec::new()
            }
            fn visible(&mut self, _: &[String]) -> Result<Visible, String> {
                Ok(Visible::new())
            }
            fn digests(&mut self) -> Result<Digests, String> {
                Ok(Digests::new())
            }
        }
        let memory = CrashMemory::new(PagedImage::zeroed(PAGE).unwrap());
        let outcome = mount_and_read::<Panics>(memory, &|_| Vec::new());
        assert_eq!(outcome.unwrap_err(), "mount/fsck panic: boom");
    }
}
