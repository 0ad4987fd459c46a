//! The harness's one error type.
//!
//! Every variant that comes from a running machine carries the tail of its
//! serial console (and of QEMU's stderr), so a failed system test shows what
//! the guest printed without anyone opening the log file.

use std::{fmt, path::Path, time::Duration};

/// Why a harness call failed.
///
/// `Debug` prints the same text as `Display`: a test returning
/// `Result<(), HarnessError>` shows the error through `Debug`, and escaped
/// one-line strings would hide the serial output.
pub enum HarnessError {
    /// Something the harness needs is missing or broken before QEMU runs:
    /// kernel ELF, boot tool, QEMU, OVMF, or the image build failed.
    Setup(String),
    /// An I/O operation of the harness itself failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The expected output did not arrive in time.
    Timeout {
        /// What the harness was waiting for.
        waiting_for: String,
        /// How long it waited.
        after: Duration,
        /// Tail of the serial console (see [`HarnessError::tail`]).
        tail: String,
    },
    /// QEMU exited (or closed its console) while the harness waited for output.
    Exited {
        /// What the harness was waiting for.
        waiting_for: String,
        /// QEMU's exit status, as text (`exit status 35`, `signal 9`, ...).
        status: String,
        /// Tail of the serial console.
        tail: String,
    },
    /// The kernel printed `KERNEL PANIC` or `EXCEPTION:` while the harness
    /// waited for something else.
    KernelPanic {
        /// The panic/exception line(s) the kernel printed.
        message: String,
        /// Tail of the serial console.
        tail: String,
    },
    /// QEMU did something other than what the test expected (e.g. exited by
    /// a signal where an exit code was expected).
    Unexpected {
        /// Description of the surprise.
        message: String,
        /// Tail of the serial console.
        tail: String,
    },
}

impl HarnessError {
    /// The serial-console tail carried by this error, if any.
    pub fn tail(&self) -> Option<&str> {
        match self {
            HarnessError::Timeout { tail, .. }
            | HarnessError::Exited { tail, .. }
            | HarnessError::KernelPanic { tail, .. }
            | HarnessError::Unexpected { tail, .. } => Some(tail),
            HarnessError::Setup(_) | HarnessError::Io { .. } => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            error,
        }
    }

    pub(crate) fn missing(what: &str, path: &Path, hint: &str) -> Self {
        HarnessError::Setup(format!("{what} not found at {}: {hint}", path.display()))
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Setup(message) => write!(f, "harness set-up failed: {message}"),
            HarnessError::Io { context, error } => write!(f, "{context}: {error}"),
            HarnessError::Timeout {
                waiting_for,
                after,
                tail,
            } => write!(
                f,
                "timed out after {:.1} s waiting for {waiting_for}\n{tail}",
                after.as_secs_f64()
            ),
            HarnessError::Exited {
                waiting_for,
                status,
                tail,
            } => write!(
                f,
                "QEMU exited ({status}) while waiting for {waiting_for}\n{tail}"
            ),
            HarnessError::KernelPanic { message, tail } => {
                write!(f, "the kernel crashed: {message}\n{tail}")
            }
            HarnessError::Unexpected { message, tail } => write!(f, "{message}\n{tail}"),
        }
    }
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for HarnessError {}
