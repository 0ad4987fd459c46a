//! Server-wide policy ([`ServerConfig`]) and per-connection counters
//! ([`ConnectionStats`]): plain data that both a connection and the
//! server use, kept apart so neither module imports the other back.

/// Policy and limits shared by every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Answer `NBD_OPT_LIST` with the export names (else `NBD_REP_ERR_POLICY`).
    pub allow_list: bool,
    /// Largest READ or WRITE payload accepted, advertised as the maximum
    /// block size in `NBD_INFO_BLOCK_SIZE`. Also bounds nothing in memory:
    /// payloads are streamed, never buffered whole.
    pub max_block_size: u32,
    /// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`.
    pub preferred_block_size: u32,
    /// A connection still negotiating this long after it connected, or
    /// after the header of its last option, is closed (each option must
    /// arrive within it; the negotiation as a whole may take longer).
    pub handshake_timeout_ms: u64,
    /// Requests parsed but not yet fully answered, per connection. Input is
    /// not consumed beyond this (backpressure).
    pub max_in_flight: usize,
    /// Bytes of queued control replies (headers, extent lists, option
    /// replies) per connection before input stops being consumed.
    pub max_queued_bytes: usize,
    /// Largest option payload buffered during the handshake; longer options
    /// are skipped and answered with `NBD_REP_ERR_TOO_BIG`.
    pub max_option_len: u32,
    /// Most extents in one block-status reply, and most extents the
    /// backend is asked to examine for it: a reply may describe less than
    /// the requested length (proto.md "NBD_CMD_BLOCK_STATUS"), and the
    /// client asks again from where it ended.
    pub max_extents: usize,
    /// Most bytes of a TRIM or WRITE_ZEROES range done in one
    /// [`Connection::step`](crate::Connection::step): a longer request is
    /// done piece by piece, one piece per event-loop step, so other
    /// connections are served in between. Its reply is sent when the last
    /// piece is done (and durable, with FUA). Also the budget handed to
    /// [`Backend::trim_step`](crate::Backend::trim_step) and
    /// [`Backend::write_zeroes_step`](crate::Backend::write_zeroes_step).
    /// A multiple of 4096, at least 4096.
    pub step_bytes: u64,
    /// `NBD_OPT_STARTTLS` policy (proto.md "TLS support"): who does the TLS
    /// itself is the caller's business ([`Connection::starttls_pending`](crate::Connection::starttls_pending)).
    pub tls: TlsPolicy,
}

/// Whether the server offers or requires TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// STARTTLS is refused with `NBD_REP_ERR_POLICY` (NOTLS mode).
    #[default]
    Off,
    /// STARTTLS is accepted; plaintext clients are served too.
    On,
    /// FORCEDTLS: every option but STARTTLS (and ABORT) is answered
    /// `NBD_REP_ERR_TLS_REQD` until TLS is up; EXPORT_NAME closes.
    Require,
}

/// Default [`ServerConfig::step_bytes`]: 2 MiB. Measured with `cargo xtask
/// bench trim` under QEMU TCG on a loaded 2-CPU host, one 8 MiB piece of a
/// raw WRITE_ZEROES (memset + clflush of every line) took about 70 ms, so
/// another client's read waited up to that long; 2 MiB cuts that to a
/// quarter at a per-step overhead of one event-loop turn (microseconds; on
/// real pmem zeroing 2 MiB takes well under a millisecond). 2 MiB is also
/// one daxfs chunk: a punch step frees at most 512 blocks in one commit.
/// (`cargo xtask bench trim`), so another client's 4 KiB read waits at
pub const DEFAULT_STEP_BYTES: u64 = 2 * 1024 * 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allow_list: true,
            max_block_size: 32 * 1024 * 1024,
            preferred_block_size: 4096,
            handshake_timeout_ms: 10_000,
            max_in_flight: 256,
            max_queued_bytes: 64 * 1024,
            max_option_len: 16 * 1024,
            max_extents: 2048,
            step_bytes: DEFAULT_STEP_BYTES,
            tls: TlsPolicy::Off,
        }
    }
}

/// Per-connection counters (for the shell's `nbd` command).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Bytes consumed from the client.
    pub bytes_in: u64,
    /// Bytes produced for the client.
    pub bytes_out: u64,
    /// Options received during the handshake.
    pub options: u64,
    /// Transmission-phase requests received.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Payload bytes read from exports.
    pub read_bytes: u64,
    /// Payload bytes written to exports.
    pub write_bytes: u64,
    /// Write-type requests refused because the export is read-only
    /// (`EPERM`): for the refusal counts by client address.
    pub read_only_writes: u64,
}

impl ConnectionStats {
    pub(crate) fn add(&mut self, other: &ConnectionStats) {
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.options = self.options.saturating_add(other.options);
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.read_bytes = self.read_bytes.saturating_add(other.read_bytes);
        self.write_bytes = self.write_bytes.saturating_add(other.write_bytes);
        self.read_only_writes = self.read_only_writes.saturating_add(other.read_only_writes);
    }
}
