//! `cargo xtask cluster test`: the cluster system test, with real QEMU
//! appliances and the real `qemu-storage-daemon` (a stage of `cargo xtask
//! test`, like the soak and the power cut).
//!
//! Three members, a 64 MiB daxfs file each, a 2-of-3 quorum. A writer
//! sends 4 KiB writes with `NBD_CMD_FLAG_FUA` through the quorum, one at a
//! time, and records (offset, content) only after the write's reply said
//! success. Then:
//!
//! 0. **vote**: a block written through the quorum and then changed on one
//!    member directly reads back as the majority's through the quorum,
//!    and the odd member is rewritten (`rewrite-corrupted`).
//! 1. **kill**: member K (seeded) is SIGKILLed at a seeded moment; writes
//!    go on (no write may fail); every recorded block reads back through
//!    the quorum and directly from each survivor.
//! 2. **rebuild**: member K boots on a blank NVDIMM and is mirrored onto
//!    online while the writer keeps writing; then every recorded block
//!    reads back through the quorum and `qemu-img compare` says every
//!    member is identical.
//! 3. **freeze**: another member gets SIGSTOP; the watchdog must cut it off
//!    (the seconds are printed next to the documented bound) and writes
//!    must resume; every recorded block reads back through the quorum and
//!    from the two members left.
//! 4. **two down**: a second member is killed; a FUA write and a FLUSH
//!    through the quorum must fail with an NBD error, never succeed.

use std::{
    collections::HashMap,
    net::TcpStream,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    clients::{clock_seed, seed_value, Rng},
    cluster::{nbd, Cluster, ClusterOptions, ExportKind, MemberState},
    images::prepare_for_harness,
    step, XtaskError,
};

const USAGE: &str = "\
usage: cargo xtask cluster test [--seed S] [--no-watchdog]

Boots a 3-member cluster (64 MiB daxfs export each, quorum in
qemu-storage-daemon) and checks, with a writer that records each 4 KiB FUA
write only after its reply: one member SIGKILLed at a seeded moment loses no
acknowledged write (read back through the quorum and from each survivor);
the member rebuilt online on a blank NVDIMM ends identical (qemu-img
compare); a member frozen with SIGSTOP is cut off by the watchdog and writes
resume; with two members down writes and flushes fail. The seed is printed.
--no-watchdog runs it without the watchdog (the freeze part must then fail:
a check that the test can fail).
Logs: target/test-runs/cluster-test-node*/, target/cluster-test/qsd.log.";

const BLOCK: u64 = 4096;
const EXPORT_SIZE: u64 = 64 << 20;
/// Deadline of anything that would otherwise hang the test (not a timed
/// assertion: the figures are printed, the test fails only on a hang).
const HANG: Duration = Duration::from_secs(180);

/// The content of a block: offset and stamp, then bytes from both.
fn block_content(offset: u64, stamp: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK as usize];
    data[..8].copy_from_slice(&offset.to_be_bytes());
    data[8..16].copy_from_slice(&stamp.to_be_bytes());
    Rng::new(offset ^ stamp.rotate_left(32) ^ 0x5eed).fill(&mut data[16..]);
    data
}

/// What the writer saw.
#[derive(Default)]
struct Seen {
    /// offset → stamp of the last acknowledged write there.
    acked: HashMap<u64, u64>,
    acks: u64,
    /// Errors: (stamp, what).
    errors: Vec<(u64, String)>,
    last_ack: Option<Instant>,
}

/// A writer through the quorum: one FUA write at a time, recorded after
/// its successful reply.
struct Writer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Writer {
    fn start(port: u16, export: &str, seed: u64, stamps: Arc<AtomicU64>) -> Result<Writer, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(HANG))
            .map_err(|e| e.to_string())?;
        let (size, _) = nbd::handshake(&mut stream, export)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (thread_stop, thread_seen) = (Arc::clone(&stop), Arc::clone(&seen));
        let handle = thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let blocks = size / BLOCK;
            while !thread_stop.load(Ordering::SeqCst) {
                let offset = rng.below(blocks) * BLOCK;
                let stamp = stamps.fetch_add(1, Ordering::SeqCst);
                let data = block_content(offset, stamp);
                nbd::request(
                    &mut stream,
                    nbd::CMD_WRITE,
                    nbd::FLAG_FUA,
                    stamp,
                    offset,
                    BLOCK as u32,
                    &data,
                )?;
                let (error, cookie) = nbd::simple_reply(&mut stream)?;
                if cookie != stamp {
                    return Err(format!("reply for cookie {cookie}, expected {stamp}"));
                }
                let mut seen = thread_seen.lock().unwrap_or_else(|p| p.into_inner());
                if error == 0 {
                    seen.acked.insert(offset, stamp);
                    seen.acks += 1;
                    seen.last_ack = Some(Instant::now());
                } else {
                    // The block may hold the old or the new content now:
                    // forget it (no later check may rely on it).
                    seen.acked.remove(&offset);
                    seen.errors
                        .push((stamp, format!("write at {offset}: NBD error {error}")));
                }
            }
            let _ = nbd::request(&mut stream, nbd::CMD_DISC, 0, 0, 0, 0, &[]);
            Ok(())
        });
        Ok(Writer {
            stop,
            seen,
            handle: Some(handle),
        })
    }

    fn acks(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).acks
    }

    /// Waits until `count` more writes are acknowledged (or `HANG`).
    fn wait_acks(&self, count: u64) -> Result<(), String> {
        let target = self.acks() + count;
        let deadline = Instant::now() + HANG;
        while self.acks() < target {
            if Instant::now() >= deadline {
                return Err(format!(
                    "writes stalled: {} of {count} more acknowledged in {HANG:?}",
                    target - self.acks()
                ));
            }
            if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                return Err("the writer stopped".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the writer; returns what it saw.
    fn finish(mut self) -> Result<Seen, String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle
                .join()
                .map_err(|_| "the writer panicked".to_string())??;
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(seen)
    }
}

/// Reads every recorded block at `port` and compares.
fn verify(port: u16, export: &str, acked: &HashMap<u64, u64>, what: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{what}: {e}"))?;
    stream
        .set_read_timeout(Some(HANG))
        .map_err(|e| e.to_string())?;
    nbd::handshake(&mut stream, export).map_err(|e| format!("{what}: {e}"))?;
    let mut lost = Vec::new();
    for (&offset, &stamp) in acked {
        let data =
            nbd::read_at(&mut stream, offset, BLOCK as u32).map_err(|e| format!("{what}: {e}"))?;
        if data != block_content(offset, stamp) {
            lost.push(offset);
        }
    }
    let _ = nbd::request(&mut stream, nbd::CMD_DISC, 0, 0, 0, 0, &[]);
    println!(
        "    {what}: {} acknowledged blocks read back, {} wrong",
        acked.len(),
        lost.len()
    );
    if lost.is_empty() {
        Ok(())
    } else {
        lost.sort_unstable();
        Err(format!(
            "{what}: {} acknowledged blocks lost, first at offsets {:?}",
            lost.len(),
            &lost[..lost.len().min(8)]
        ))
    }
}

/// Connects to `port` and opens `export`.
fn open(port: u16, export: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HANG))
        .map_err(|e| e.to_string())?;
    nbd::handshake(&mut stream, export)?;
    Ok(stream)
}

/// One FUA write that must succeed.
fn write_at(port: u16, export: &str, offset: u64, data: &[u8]) -> Result<(), String> {
    let mut stream = open(port, export)?;
    nbd::request(
        &mut stream,
        nbd::CMD_WRITE,
        nbd::FLAG_FUA,
        1,
        offset,
        data.len() as u32,
        data,
    )?;
    match nbd::simple_reply(&mut stream)? {
        (0, _) => Ok(()),
        (error, _) => Err(format!(
            "write at {offset} on port {port}: NBD error {error}"
        )),
    }
}

/// One block read.
fn read_at(port: u16, export: &str, offset: u64) -> Result<Vec<u8>, String> {
    let mut stream = open(port, export)?;
    let data = nbd::read_at(&mut stream, offset, BLOCK as u32)?;
    let _ = nbd::request(&mut stream, nbd::CMD_DISC, 0, 0, 0, 0, &[]);
    Ok(data)
}

/// One FUA write and one FLUSH through the quorum: both must fail.
fn expect_writes_fail(port: u16, export: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HANG))
        .map_err(|e| e.to_string())?;
    nbd::handshake(&mut stream, export)?;
    let data = block_content(0, u64::MAX);
    nbd::request(
        &mut stream,
        nbd::CMD_WRITE,
        nbd::FLAG_FUA,
        1,
        0,
        BLOCK as u32,
        &data,
    )?;
    let (write_error, _) = nbd::simple_reply(&mut stream)?;
    nbd::request(&mut stream, nbd::CMD_FLUSH, 0, 2, 0, 0, &[])?;
    let (flush_error, _) = nbd::simple_reply(&mut stream)?;
    // Reads are not part of the promise; say what they do.
    let read = match nbd::read_at(&mut stream, BLOCK, BLOCK as u32) {
        Ok(_) => "answered".to_string(),
        Err(error) => error,
    };
    println!("    two of three down: a read → {read}");
    println!("    two of three down: FUA write → NBD error {write_error}, FLUSH → NBD error {flush_error}");
    if write_error == 0 {
        return Err("a FUA write succeeded with two of three members down".into());
    }
    if flush_error == 0 {
        return Err("a FLUSH succeeded with two of three members down".into());
    }
    Ok(())
}

fn qemu_img_compare(left: &str, right: &str) -> Result<(), String> {
    let output = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", left, right])
        .output()
        .map_err(|error| format!("qemu-img: {error}"))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    println!("    qemu-img compare {left} {right}: {text}");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img compare {left} {right} ({}): {text} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Adds a writer's acknowledged blocks to `acked`; any failed write is a
/// failure (a majority was up).
fn merge(acked: &mut HashMap<u64, u64>, seen: &Seen, what: &str) -> Result<(), String> {
    if let Some((stamp, error)) = seen.errors.first() {
        return Err(format!(
            "{what}: {} writes failed, first (write {stamp}): {error}",
            seen.errors.len()
        ));
    }
    acked.extend(seen.acked.iter().map(|(&offset, &stamp)| (offset, stamp)));
    Ok(())
}

/// Entry point of `cargo xtask cluster test`.
pub fn test_command(args: &[String]) -> Result<(), XtaskError> {
    let mut seed = None;
    let mut watchdog = true;
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--seed" => {
                seed = Some(seed_value(args.get(index + 1)).map_err(XtaskError::Usage)?);
                index += 2;
            }
            "--no-watchdog" => {
                watchdog = false;
                index += 1;
            }
            _ => return Err(XtaskError::Usage(USAGE.into())),
        }
    }
    let seed = seed.unwrap_or_else(clock_seed);
    match run(seed, watchdog) {
        Ok(()) => {
            println!("cluster test: ok (seed {seed})");
            Ok(())
        }
        Err(Failure::Setup(error)) => Err(error),
        Err(Failure::Test(message)) => {
            println!("cluster test FAILED (seed {seed}): {message}");
            Err(XtaskError::TestsFailed)
        }
    }
}

/// Stops the cluster when dropped (also when the test fails half-way).
struct StopOnDrop(Arc<Cluster>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Why the test did not pass.
pub enum Failure {
    /// Could not run (build, boot, tools).
    Setup(XtaskError),
    /// Ran and found a problem.
    Test(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Test(message)
    }
}

/// The whole test (also the `cargo xtask test` stage, with the watchdog).
pub fn run(seed: u64, watchdog: bool) -> Result<(), Failure> {
    prepare_for_harness().map_err(Failure::Setup)?;
    step(&format!(
        "cluster test: 3 members, 64 MiB export, seed {seed}"
    ));
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut options = ClusterOptions::new();
    options.size = EXPORT_SIZE;
    options.export = ExportKind::File("ct".into());
    options.nbd_port = 0;
    options.fresh = true;
    options.watchdog = watchdog;
    options.dir = daxbox_tests::target_dir().join("cluster-test");
    options.prefix = "cluster-test".into();
    let cluster =
        Cluster::start(options, &|line| println!("    {line}")).map_err(Failure::Setup)?;
    // The watchdog threads hold the cluster too: stop it on every way out.
    let _stop = StopOnDrop(Arc::clone(&cluster));
    let export = cluster.export().to_string();
    let port = cluster.nbd_port();
    let stamps = Arc::new(AtomicU64::new(1));
    let mut acked: HashMap<u64, u64> = HashMap::new();

    // 0. vote: a block changed behind the quorum's back on one member is
    // outvoted on read and rewritten there (read-pattern quorum,
    // rewrite-corrupted).
    let odd = rng.below(3) as usize;
    let offset = rng.below(EXPORT_SIZE / BLOCK) * BLOCK;
    step(&format!("vote: block {offset} changed on node{odd} alone"));
    let good = block_content(offset, stamps.fetch_add(1, Ordering::SeqCst));
    let bad = block_content(offset, u64::MAX - 1);
    write_at(port, &export, offset, &good)?;
    write_at(cluster.member_port(odd), &export, offset, &bad)?;
    if read_at(port, &export, offset)? != good {
        return Err(Failure::Test(format!(
            "the quorum returned node{odd}'s odd block, not the majority's"
        )));
    }
    let deadline = Instant::now() + HANG;
    while read_at(cluster.member_port(odd), &export, offset)? != good {
        if Instant::now() >= deadline {
            return Err(Failure::Test(format!(
                "node{odd}'s odd block was not rewritten after a quorum read"
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!("    the quorum read the majority's block and rewrote node{odd}'s");

    // 1. kill
    let killed = rng.below(3) as usize;
    let delay = rng.duration(Duration::from_millis(500), Duration::from_millis(3000));
    step(&format!(
        "kill: node{killed} SIGKILLed {:.1} s into the writes",
        delay.as_secs_f64()
    ));
    let writer = Writer::start(port, &export, rng.next_u64(), Arc::clone(&stamps))?;
    thread::sleep(delay);
    let before = writer.acks();
    cluster.kill(killed)?;
    writer.wait_acks(200)?;
    let seen = writer.finish()?;
    println!(
        "    {} writes acknowledged ({before} before the kill)",
        seen.acks
    );
    merge(&mut acked, &seen, "after the kill")?;
    verify(port, &export, &acked, "through the quorum")?;
    for index in (0..3).filter(|&index| index != killed) {
        verify(
            cluster.member_port(index),
            &export,
            &acked,
            &format!("node{index} directly"),
        )?;
    }

    // 2. rebuild while writing
    step(&format!(
        "rebuild: node{killed} on a blank NVDIMM, mirrored online while writes go on"
    ));
    let writer = Writer::start(port, &export, rng.next_u64(), Arc::clone(&stamps))?;
    cluster.rebuild(killed, &|line| println!("    {line}"))?;
    writer.wait_acks(100)?;
    let seen = writer.finish()?;
    println!("    {} writes acknowledged during the rebuild", seen.acks);
    merge(&mut acked, &seen, "during the rebuild")?;
    verify(port, &export, &acked, "through the quorum")?;
    let uris: Vec<String> = (0..3).map(|index| cluster.member_uri(index)).collect();
    for index in 1..3 {
        qemu_img_compare(&uris[0], &uris[index])?;
    }

    // 3. freeze
    let frozen = (killed + 1 + rng.below(2) as usize) % 3;
    let bound = match cluster.cut_off_bound() {
        Some(bound) => format!("{:.1} s", bound.as_secs_f64()),
        None => "none: --no-watchdog".into(),
    };
    step(&format!(
        "freeze: node{frozen} SIGSTOPped; the watchdog must cut it off (bound {bound})"
    ));
    let writer = Writer::start(port, &export, rng.next_u64(), Arc::clone(&stamps))?;
    writer.wait_acks(50)?;
    let stopped_at = Instant::now();
    cluster.freeze(frozen)?;
    let acks_at_stop = writer.acks();
    let deadline = Instant::now() + HANG;
    while cluster.member_state(frozen) == MemberState::Up {
        if Instant::now() >= deadline {
            return Err(Failure::Test(format!(
                "node{frozen} frozen for {HANG:?} and not cut off; writes acknowledged since the \
                 SIGSTOP: {}",
                writer.acks() - acks_at_stop
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let cut_after = stopped_at.elapsed();
    let acks_at_cut = writer.acks();
    writer.wait_acks(1)?;
    let resumed_after = stopped_at.elapsed();
    writer.wait_acks(100)?;
    let seen = writer.finish()?;
    println!(
        "    node{frozen} cut off {:.1} s after SIGSTOP (bound {bound}), writes resumed after {:.1} s \
         ({acks_at_cut} acknowledged at the cut, {} in all)",
        cut_after.as_secs_f64(),
        resumed_after.as_secs_f64(),
        seen.acks
    );
    merge(&mut acked, &seen, "around the freeze")?;
    verify(port, &export, &acked, "through the quorum")?;
    for index in (0..3).filter(|&index| index != frozen) {
        verify(
            cluster.member_port(index),
            &export,
            &acked,
            &format!("node{index} directly"),
        )?;
    }

    // 4. two of three down
    let second = (0..3).find(|&index| index != frozen).unwrap_or(0);
    step(&format!(
        "two down: node{second} killed too; writes must fail"
    ));
    cluster.kill(second)?;
    expect_writes_fail(port, &export)?;
    for line in cluster.status().lines() {
        println!("    {line}");
    }
    cluster.shutdown();
    println!(
        "    cluster test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
