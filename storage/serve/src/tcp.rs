//! Drives a [`TcpService`] over std sockets, one thread, non-blocking.
//!
//! It follows the kernel's smoltcp listener (`net/stack/src/service.rs`):
//! accept → `accept`; bytes move both ways through fixed buffers (256 KiB
//! each way, as the NBD listener's socket buffers) with `receive` told
//! everything not consumed yet and `produce` given the free space; the
//! service's `deadline` aborts the connection; `wants_close` (or the peer
//! done sending while the service has nothing to say) closes our side
//! once everything produced was sent; one connection with bounded work
//! pending (`has_work`, e.g. a long TRIM) gets one `step` per poll,
//! round-robin; the connection ends, with `closed`,
//! when both sides are closed, on a reset, or at the deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use daxbox_netstack::TcpService;

/// Buffer size each way per connection.
const BUFFER: usize = 256 * 1024;

struct Slot<C> {
    stream: TcpStream,
    connection: C,
    input: Vec<u8>,
    input_len: usize,
    output: Vec<u8>,
    output_start: usize,
    output_end: usize,
    /// Our side is shut down (FIN sent).
    closing: bool,
    /// The peer shut its side down (EOF read).
    peer_done: bool,
}

/// What one connection did in a poll.
enum Progress {
    Idle,
    Moved,
    Gone,
}

/// A listening socket and the connections of one service.
pub struct TcpLoop<S: TcpService> {
    listener: TcpListener,
    service: S,
    slots: Vec<Slot<S::Connection>>,
    started: Instant,
    /// Where the next bounded-work step starts looking (round-robin).
    step_cursor: usize,
}

impl<S: TcpService> TcpLoop<S> {
    /// Serves `service` on `listener` (made non-blocking here).
    pub fn new(listener: TcpListener, service: S) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            service,
            slots: Vec::new(),
            started: Instant::now(),
            step_cursor: 0,
        })
    }

    /// Milliseconds since the loop started (the service's clock).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    /// Accepts, moves data, closes; true when anything happened.
    pub fn poll(&mut self) -> bool {
        let now = self.now_ms();
        let mut work = false;
        loop {
            match self.listener.accept() {
                Ok((stream, remote)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let mut connection = self.service.accept(now);
                    self.service.remote(&mut connection, remote);
                    self.slots.push(Slot {
                        stream,
                        connection,
                        input: vec![0; BUFFER],
                        input_len: 0,
                        output: vec![0; BUFFER],
                        output_start: 0,
                        output_end: 0,
                        closing: false,
                        peer_done: false,
                    });
                    work = true;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        // One piece of bounded work (e.g. of a long TRIM) per poll, for
        // the next connection that has some, as the kernel's listener does.
        let count = self.slots.len();
        for i in 0..count {
            let index = (self.step_cursor + i) % count;
            let connection = &mut self.slots[index].connection;
            if self.service.has_work(connection) && self.service.step(connection, now) {
                self.step_cursor = index + 1;
                work = true;
                break;
            }
        }
        let mut index = 0;
        while index < self.slots.len() {
            let progress = Self::pump(&mut self.service, &mut self.slots[index], now);
            match progress {
                Progress::Idle => index += 1,
                Progress::Moved => {
                    work = true;
                    index += 1;
                }
                Progress::Gone => {
                    let slot = self.slots.swap_remove(index);
                    let _ = slot.stream.shutdown(Shutdown::Both);
                    self.service.closed(slot.connection);
                    work = true;
                }
            }
        }
        work
    }

    fn pump(service: &mut S, slot: &mut Slot<S::Connection>, now: u64) -> Progress {
        if service
            .deadline(&slot.connection)
            .is_some_and(|deadline| now >= deadline)
        {
            return Progress::Gone;
        }
        let mut moved = false;
        let mut idle_output = false;
        // Bounded like the kernel's pump, so one connection cannot hog a
        // poll.
        for _ in 0..64 {
            let mut progressed = false;
            // Send what is pending.
            while slot.output_start < slot.output_end {
                match slot
                    .stream
                    .write(&slot.output[slot.output_start..slot.output_end])
                {
                    Ok(0) => return Progress::Gone,
                    Ok(n) => {
                        slot.output_start += n;
                        progressed = true;
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Progress::Gone,
                }
            }
            if slot.output_start == slot.output_end {
                slot.output_start = 0;
                slot.output_end = 0;
            }
            // Ask for more into the free space.
            idle_output = false;
            if slot.output_end < slot.output.len() {
                let written = service.produce(
                    &mut slot.connection,
                    &mut slot.output[slot.output_end..],
                    now,
                );
                slot.output_end += written.min(slot.output.len() - slot.output_end);
                progressed |= written > 0;
                idle_output = written == 0 && slot.output_start == slot.output_end;
            }
            // Offer what was received.
            if slot.input_len > 0 {
                let used = service
                    .receive(&mut slot.connection, &slot.input[..slot.input_len], now)
                    .min(slot.input_len);
                if used > 0 {
                    slot.input.copy_within(used..slot.input_len, 0);
                    slot.input_len -= used;
                    progressed = true;
                }
            }
            // Receive more.
            if !slot.peer_done && slot.input_len < slot.input.len() {
                match slot.stream.read(&mut slot.input[slot.input_len..]) {
                    Ok(0) => {
                        slot.peer_done = true;
                        progressed = true;
                    }
                    Ok(n) => {
                        slot.input_len += n;
                        progressed = true;
                    }
                    Err(error)
                        if matches!(
                            error.kind(),
                            ErrorKind::WouldBlock | ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return Progress::Gone,
                }
            }
            if !progressed {
                break;
            }
            moved = true;
        }
        let flushed = slot.output_start == slot.output_end;
        if !slot.closing && flushed {
            let peer_finished = slot.peer_done && slot.input_len == 0;
            let quiet = idle_output && !service.has_work(&slot.connection);
            if service.wants_close(&slot.connection) || (peer_finished && quiet) {
                let _ = slot.stream.shutdown(Shutdown::Write);
                slot.closing = true;
                moved = true;
            }
        }
        if slot.closing && slot.peer_done {
            return Progress::Gone;
        }
        if moved {
            Progress::Moved
        } else {
            Progress::Idle
        }
    }
}
