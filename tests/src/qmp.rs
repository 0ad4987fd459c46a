//! A minimal QMP client (QEMU Machine Protocol, `docs/interop/qmp-spec`):
//! one JSON object per line over the Unix socket that
//! [`crate::QemuOptions::with_qmp`] opens. Used to hot-add NVDIMMs
//! (`object-add` + `device_add`) and to reset the machine. The harness
//! has no JSON dependency: commands are written with [`json_string`]
//! escaping and replies are told apart by their `"return"` / `"error"`
//! keys; events (`"event"`) in between are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// A connected, negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn qmp_error(message: String) -> HarnessError {
    HarnessError::Unexpected {
        message,
        tail: String::new(),
    }
}

impl Qmp {
    /// Connects to the socket at `path` (retrying until `timeout`: QEMU
    /// creates it while starting), reads the greeting and leaves
    /// capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, HarnessError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(error) if Instant::now() >= deadline => {
                    return Err(HarnessError::io(
                        format!("connecting to QMP at {}", path.display()),
                        error,
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|error| HarnessError::io("QMP read timeout", error))?;
        let writer = stream
            .try_clone()
            .map_err(|error| HarnessError::io("QMP socket", error))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(qmp_error(format!("QMP: unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", "{}")?;
        Ok(qmp)
    }

    fn line(&mut self) -> Result<String, HarnessError> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .map_err(|error| HarnessError::io("reading QMP", error))?;
        if read == 0 {
            return Err(qmp_error("QMP: QEMU closed the socket".into()));
        }
        Ok(line)
    }

    /// Runs `command` with `arguments` (a JSON object); the reply line on
    /// success, the error's text as an `Err`.
    pub fn execute(&mut self, command: &str, arguments: &str) -> Result<String, HarnessError> {
        let request = format!(
            "{{\"execute\":{},\"arguments\":{}}}\n",
            json_string(command),
            arguments
        );
        self.writer
            .write_all(request.as_bytes())
            .map_err(|error| HarnessError::io("writing QMP", error))?;
        loop {
            let line = self.line()?;
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(qmp_error(format!("QMP {command}: {}", line.trim())));
            }
            // An event: keep reading.
        }
    }

    /// Hot-adds an NVDIMM `id` over backing file `path` (which must exist,
    /// `size` bytes): `object-add memory-backend-file,share=true` then
    /// `device_add nvdimm`.
    pub fn add_nvdimm(&mut self, id: &str, path: &Path, size: u64) -> Result<(), HarnessError> {
        let backend = format!("mem-{id}");
        self.execute(
            "object-add",
            &format!(
                "{{\"qom-type\":\"memory-backend-file\",\"id\":{},\"mem-path\":{},\
                 \"size\":{size},\"share\":true}}",
                json_string(&backend),
                json_string(&path.display().to_string())
            ),
        )?;
        self.execute(
            "device_add",
            &format!(
                "{{\"driver\":\"nvdimm\",\"id\":{},\"memdev\":{}}}",
                json_string(id),
                json_string(&backend)
            ),
        )?;
        Ok(())
    }

    /// Resets the machine (a reboot when QEMU runs without `-no-reboot`).
    pub fn system_reset(&mut self) -> Result<(), HarnessError> {
        self.execute("system_reset", "{}").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_string("/tmp/x.img"), "\"/tmp/x.img\"");
    }
}
