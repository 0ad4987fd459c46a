//! A small QMP client (QEMU Machine Protocol, `docs/interop/qmp-spec`):
//! one JSON object per line over a Unix socket. Used by `cargo xtask
//! cluster` to drive `qemu-storage-daemon`.
//!
//! Commands run one at a time; events that arrive while waiting for a
//! command's answer are kept and can be waited for with
//! [`Qmp::wait_event`].

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, ErrorKind, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The longest line accepted from the monitor (QEMU's answers to the
/// commands used here are a few KiB): a longer one is an error.
const MAX_LINE: usize = 1 << 20;

/// A connected, capabilities-negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
    /// The start of a line whose end has not arrived yet (kept across a
    /// read timeout).
    partial: Vec<u8>,
}

impl Qmp {
    /// Connects to the monitor socket at `path`, reads the greeting and
    /// leaves capabilities negotiation. Every read waits at most
    /// `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let stream = UnixStream::connect(path)
            .map_err(|error| format!("QMP {}: {error}", path.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|error| error.to_string())?;
        let writer = stream.try_clone().map_err(|error| error.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            partial: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP: unexpected greeting {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Changes the read timeout (a long job waits longer for events).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), String> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|error| error.to_string())
    }

    fn read_message(&mut self) -> Result<Value, String> {
        loop {
            let buffer = match self.reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(format!("QMP read: {error}")),
            };
            if buffer.is_empty() {
                return Err("QMP: the monitor closed the connection".into());
            }
            let (used, done) = match buffer.iter().position(|&byte| byte == b'\n') {
                Some(end) => {
                    self.partial.extend_from_slice(&buffer[..end]);
                    (end + 1, true)
                }
                None => {
                    self.partial.extend_from_slice(buffer);
                    (buffer.len(), false)
                }
            };
            self.reader.consume(used);
            if self.partial.len() > MAX_LINE {
                return Err(format!("QMP: a message longer than {MAX_LINE} bytes"));
            }
            if done {
                let line = std::mem::take(&mut self.partial);
                return serde_json::from_slice(&line)
                    .map_err(|error| format!("QMP: bad JSON from the monitor: {error}"));
            }
        }
    }

    /// Runs `command` with `arguments`; returns its `return` value or the
    /// monitor's error description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|map| !map.is_empty()) {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|error| format!("QMP write: {error}"))?;
        self.read_reply(command)
    }

    /// Reads the answer to `command`, queueing the events before it. After
    /// a read timeout it can be called again: the part of a line already
    /// read is kept.
    pub fn read_reply(&mut self, command: &str) -> Result<Value, String> {
        loop {
            let message = self.read_message()?;
            if message.get("event").is_some() {
                self.events.push_back(message);
            } else if let Some(value) = message.get("return") {
                return Ok(value.clone());
            } else if let Some(error) = message.get("error") {
                let class = error["class"].as_str().unwrap_or("?");
                let description = error["desc"].as_str().unwrap_or("?");
                return Err(format!("{command}: {description} ({class})"));
            } else {
                return Err(format!("QMP: unexpected message {message}"));
            }
        }
    }

    /// Waits up to `timeout` for an event named `name` whose `data`
    /// satisfies `matches`; other events stay queued.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(index) = self
                .events
                .iter()
                .position(|event| event["event"] == name && matches(&event["data"]))
            {
                return Ok(self.events.remove(index).unwrap_or(Value::Null));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("QMP: no {name} event within {timeout:?}"));
            }
            self.set_timeout(left.min(Duration::from_secs(5)))?;
            match self.read_message() {
                Ok(message) if message.get("event").is_some() => self.events.push_back(message),
                Ok(_) => {}
                Err(error) if error.contains("timed out") || error.contains("would block") => {}
                Err(error) if error.contains("Resource temporarily unavailable") => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Events received so far that nobody waited for (and forgets them).
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Read, os::unix::net::UnixListener, thread};

    /// A fake monitor: greets, answers qmp_capabilities, then sends an
    /// event in two pieces (split mid-line, with a pause longer than the
    /// client's read timeout) before the answer to the next command.
    #[test]
    fn events_split_across_a_timeout_are_kept_and_errors_reported() {
        let dir = daxbox_tests::target_dir().join("xtask-unit-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("qmp-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let read_line = |stream: &mut UnixStream| {
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                String::from_utf8(line).unwrap()
            };
            stream
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            assert!(read_line(&mut stream).contains("qmp_capabilities"));
            stream.write_all(b"{\"return\": {}}\n").unwrap();
            assert!(read_line(&mut stream).contains("query-block-jobs"));
            stream
                .write_all(b"{\"event\": \"BLOCK_JOB_READY\", \"data\": {\"dev")
                .unwrap();
            thread::sleep(Duration::from_millis(300));
            stream
                .write_all(b"ice\": \"j\"}}\n{\"return\": []}\n")
                .unwrap();
            assert!(read_line(&mut stream).contains("block-job-complete"));
            stream
                .write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no job\"}}\n")
                .unwrap();
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        qmp.set_timeout(Duration::from_millis(100)).unwrap();
        // The answer comes after a pause longer than the read timeout: the
        // first read times out mid-line.
        let error = qmp.execute("query-block-jobs", json!({})).unwrap_err();
        assert!(
            error.contains("temporarily unavailable") || error.contains("timed out"),
            "{error}"
        );
        qmp.set_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.read_reply("query-block-jobs").unwrap(), json!([]));
        let event = qmp
            .wait_event("BLOCK_JOB_READY", Duration::from_secs(1), |data| {
                data["device"] == "j"
            })
            .unwrap();
        assert_eq!(event["data"]["device"], "j");
        let error = qmp
            .execute("block-job-complete", json!({"device": "j"}))
            .unwrap_err();
        assert_eq!(error, "block-job-complete: no job (GenericError)");
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
