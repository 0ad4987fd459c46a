//! `GET /metrics`: the Prometheus text exposition format, version 0.0.4
//! (`# HELP` and `# TYPE` once per family, counters ending in `_total`,
//! histograms as cumulative `_bucket{le=...}` plus `_sum` and `_count`,
//! label values escaped: `\\`, `\"`, `\n`). Durations are in seconds and
//! sizes in bytes, as Prometheus' naming conventions ask.

use alloc::string::String;
use core::fmt::Write;
use daxbox_nbd::metrics::{Histogram, Op, OpCounter, LATENCY_BUCKETS_US};

use super::Snapshot;

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes `value` as a label value: `\`, `"` and line feeds escaped.
pub fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A metric family being written.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample; `labels` are (name, value) pairs.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl core::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_label(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let bucket = alloc::format!("{name}_bucket");
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(*count);
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(us) => alloc::format!("{}", Seconds(*us)),
                None => String::from("+Inf"),
            };
            let mut with_le: alloc::vec::Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", le.as_str()));
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&alloc::format!("{name}_sum"), labels, Seconds(h.sum_us));
        self.sample(&alloc::format!("{name}_count"), labels, h.count);
    }
}

/// Microseconds shown as seconds (`0.00005`, `1.5`, `5`).
struct Seconds(u64);

impl core::fmt::Display for Seconds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let whole = self.0 / 1_000_000;
        let frac = self.0 % 1_000_000;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let mut digits = alloc::format!("{frac:06}");
        while digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{whole}.{digits}")
    }
}

/// The whole exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out {
        text: String::with_capacity(16 * 1024),
    };
    o.family("daxbox_build_info", "gauge", "Software version (always 1).");
    o.sample("daxbox_build_info", &[("version", s.version)], 1);
    o.family(
        "daxbox_uptime_seconds",
        "gauge",
        "Time since the appliance booted.",
    );
    o.sample("daxbox_uptime_seconds", &[], Seconds(s.uptime_ms * 1000));

    // NBD requests by export and operation.
    let exports = s
        .nbd
        .exports
        .iter()
        .map(|(name, counters)| (name.as_str(), counters))
        .chain(core::iter::once(("other", &s.nbd.other)))
        .filter(|(_, counters)| counters.iter().any(|c| c.requests > 0))
        .collect::<alloc::vec::Vec<_>>();
    let per_op = |o: &mut Out, metric: &str, pick: fn(&OpCounter) -> u64, ops: &[Op]| {
        for (export, counters) in &exports {
            for op in ops {
                let counter = &counters[op.index()];
                if counter.requests > 0 {
                    o.sample(
                        metric,
                        &[("export", export), ("op", op.name())],
                        pick(counter),
                    );
                }
            }
        }
    };
    o.family(
        "daxbox_nbd_requests_total",
        "counter",
        "NBD requests answered, by export and operation (the first 64 exports by name, the rest as export=\"other\").",
    );
    per_op(
        &mut o,
        "daxbox_nbd_requests_total",
        |c| c.requests,
        &Op::ALL,
    );
    o.family(
        "daxbox_nbd_errors_total",
        "counter",
        "NBD requests answered with an error, by export and operation.",
    );
    per_op(&mut o, "daxbox_nbd_errors_total", |c| c.errors, &Op::ALL);
    o.family(
        "daxbox_nbd_bytes_total",
        "counter",
        "Payload bytes of successful NBD reads and writes, by export and operation.",
    );
    per_op(
        &mut o,
        "daxbox_nbd_bytes_total",
        |c| c.bytes,
        &[Op::Read, Op::Write],
    );
    o.family(
        "daxbox_nbd_request_duration_seconds",
        "histogram",
        "NBD request latency, from the request header to the last byte of the reply, by operation.",
    );
    for op in Op::ALL {
        o.histogram(
            "daxbox_nbd_request_duration_seconds",
            &[("op", op.name())],
            &s.nbd.latency[op.index()],
        );
    }
    o.family(
        "daxbox_nbd_connections",
        "gauge",
        "Open NBD connections (handshake included).",
    );
    o.sample("daxbox_nbd_connections", &[], s.connection_count);

    // TCP listeners.
    o.family(
        "daxbox_tcp_connections",
        "gauge",
        "Connections being served, by service.",
    );
    for (service, l) in &s.listeners {
        o.sample("daxbox_tcp_connections", &[("service", service)], l.active);
    }
    o.family(
        "daxbox_tcp_connection_limit",
        "gauge",
        "Most connections served at once, by service (boot config).",
    );
    for (service, l) in &s.listeners {
        o.sample(
            "daxbox_tcp_connection_limit",
            &[("service", service)],
            l.max_connections,
        );
    }
    o.family(
        "daxbox_tcp_connections_accepted_total",
        "counter",
        "Connections accepted, by service.",
    );
    for (service, l) in &s.listeners {
        o.sample(
            "daxbox_tcp_connections_accepted_total",
            &[("service", service)],
            l.accepted,
        );
    }
    o.family(
        "daxbox_tcp_connections_refused_total",
        "counter",
        "Connections refused, by service and reason (total: over the connection limit; per_address: over the per-address limit; budget: memory budget full).",
    );
    for (service, l) in &s.listeners {
        for (reason, value) in [
            ("total", l.refused_total),
            ("per_address", l.refused_per_address),
            ("budget", l.refused_budget),
        ] {
            o.sample(
                "daxbox_tcp_connections_refused_total",
                &[("service", service), ("reason", reason)],
                value,
            );
        }
    }
    o.family(
        "daxbox_access_refusals_total",
        "counter",
        "Requests the allow-list refused, by reason (policy: not allowed; read_only_write: a write on a read-only grant) and client address (the first 64 refused addresses; later ones as other).",
    );
    let mut refusals = |client: &str, counts: &crate::allow::Counts| {
        for (reason, value) in [
            ("policy", counts.policy),
            ("read_only_write", counts.read_only_write),
        ] {
            o.sample(
                "daxbox_access_refusals_total",
                &[("client", client), ("reason", reason)],
                value,
            );
        }
    };
    for (address, counts) in &s.access.by_address {
        let client = match address {
            Some(address) => alloc::format!("{address}"),
            None => String::from("unknown"),
        };
        refusals(&client, counts);
    }
    refusals("other", &s.access.other);
    o.family(
        "daxbox_tcp_connections_timed_out_total",
        "counter",
        "Connections ended by a deadline, by service.",
    );
    for (service, l) in &s.listeners {
        o.sample(
            "daxbox_tcp_connections_timed_out_total",
            &[("service", service)],
            l.timed_out,
        );
    }
    o.family(
        "daxbox_tcp_half_open_reaped_total",
        "counter",
        "Half-open connections (SYN without ACK) dropped, by service.",
    );
    for (service, l) in &s.listeners {
        o.sample(
            "daxbox_tcp_half_open_reaped_total",
            &[("service", service)],
            l.half_open_reaped,
        );
    }

    // HTTP.
    o.family(
        "daxbox_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        o.sample(
            "daxbox_http_requests_total",
            &[("class", class)],
            s.http.by_class[i],
        );
    }

    // Network.
    let c = &s.net.counters;
    o.family(
        "daxbox_net_packets_total",
        "counter",
        "Frames received and sent by the network interface.",
    );
    o.sample(
        "daxbox_net_packets_total",
        &[("direction", "rx")],
        c.rx_packets,
    );
    o.sample(
        "daxbox_net_packets_total",
        &[("direction", "tx")],
        c.tx_packets,
    );
    o.family(
        "daxbox_net_bytes_total",
        "counter",
        "Bytes in the frames received and sent.",
    );
    o.sample("daxbox_net_bytes_total", &[("direction", "rx")], c.rx_bytes);
    o.sample("daxbox_net_bytes_total", &[("direction", "tx")], c.tx_bytes);
    o.family(
        "daxbox_net_errors_total",
        "counter",
        "Frames the NIC driver reported in error.",
    );
    o.sample(
        "daxbox_net_errors_total",
        &[("direction", "rx")],
        c.rx_errors,
    );
    o.sample(
        "daxbox_net_errors_total",
        &[("direction", "tx")],
        c.tx_errors,
    );
    o.family(
        "daxbox_net_tx_busy_total",
        "counter",
        "Times the stack had a frame to send and no free transmit buffer.",
    );
    o.sample("daxbox_net_tx_busy_total", &[], c.tx_busy);
    o.family(
        "daxbox_net_interrupts_total",
        "counter",
        "NIC interrupts taken.",
    );
    o.sample("daxbox_net_interrupts_total", &[], s.net.interrupts);
    o.family(
        "daxbox_net_virtio_submissions_total",
        "counter",
        "Buffers handed to the virtio-net device, by queue (the device is notified once per batch: see daxbox_net_virtio_notifies_total).",
    );
    o.sample(
        "daxbox_net_virtio_submissions_total",
        &[("queue", "rx")],
        s.net.rx_submitted,
    );
    o.sample(
        "daxbox_net_virtio_submissions_total",
        &[("queue", "tx")],
        s.net.tx_submitted,
    );
    o.family(
        "daxbox_net_virtio_notifies_total",
        "counter",
        "Notifications (queue kicks, each a VM exit) sent to the virtio-net device, by queue.",
    );
    o.sample(
        "daxbox_net_virtio_notifies_total",
        &[("queue", "rx")],
        s.net.rx_notifies,
    );
    o.sample(
        "daxbox_net_virtio_notifies_total",
        &[("queue", "tx")],
        s.net.tx_notifies,
    );
    o.family(
        "daxbox_net_virtio_notify_seconds_total",
        "counter",
        "CPU time spent notifying the virtio-net device (VM exits; under QEMU's TCG also waiting for QEMU's global lock).",
    );
    o.sample(
        "daxbox_net_virtio_notify_seconds_total",
        &[],
        Seconds(s.net.notify_us),
    );
    o.family(
        "daxbox_net_polls_total",
        "counter",
        "Network polls run by the event loop.",
    );
    o.sample("daxbox_net_polls_total", &[], s.net.polls);

    // CPU: the event loop.
    let cpu = &s.cpu;
    o.family(
        "daxbox_cpu_loop_passes_total",
        "counter",
        "Passes of the kernel's event loop.",
    );
    o.sample("daxbox_cpu_loop_passes_total", &[], cpu.loop_passes);
    o.family(
        "daxbox_cpu_wakeups_total",
        "counter",
        "Times the CPU halted and was woken up again by an interrupt.",
    );
    o.sample("daxbox_cpu_wakeups_total", &[], cpu.wakeups);
    o.family(
        "daxbox_cpu_seconds_total",
        "counter",
        "CPU time since boot, halted (waiting for an interrupt) or busy.",
    );
    o.sample(
        "daxbox_cpu_seconds_total",
        &[("state", "halted")],
        Seconds(cpu.halted_ns / 1000),
    );
    o.sample(
        "daxbox_cpu_seconds_total",
        &[("state", "busy")],
        Seconds(cpu.busy_ns / 1000),
    );
    o.family(
        "daxbox_cpu_interrupts_total",
        "counter",
        "Interrupts taken: the one-shot timer, and devices (the NIC, the serial port).",
    );
    o.sample(
        "daxbox_cpu_interrupts_total",
        &[("source", "timer")],
        cpu.timer_interrupts,
    );
    o.sample(
        "daxbox_cpu_interrupts_total",
        &[("source", "device")],
        cpu.device_interrupts,
    );
    o.family(
        "daxbox_serial_receive_interrupts_total",
        "counter",
        "Serial console receive interrupts (each makes the event loop read the port).",
    );
    o.sample(
        "daxbox_serial_receive_interrupts_total",
        &[],
        cpu.serial_interrupts,
    );

    // Devices and filesystems.
    o.family("daxbox_pmem_devices", "gauge", "pmem devices in use.");
    o.sample("daxbox_pmem_devices", &[], s.devices.len());
    o.family(
        "daxbox_pmem_device_size_bytes",
        "gauge",
        "Size of each pmem device in use, and what it holds (daxfs or raw).",
    );
    for d in &s.devices {
        let usage = if d.fs.is_some() { "daxfs" } else { "raw" };
        o.sample(
            "daxbox_pmem_device_size_bytes",
            &[("device", &d.name), ("use", usage)],
            d.size,
        );
    }
    let filesystems = s
        .devices
        .iter()
        .filter_map(|d| d.fs.as_ref().map(|fs| (d.name.as_str(), fs)))
        .collect::<alloc::vec::Vec<_>>();
    o.family(
        "daxbox_daxfs_size_bytes",
        "gauge",
        "Data area of each daxfs filesystem.",
    );
    for (device, fs) in &filesystems {
        o.sample(
            "daxbox_daxfs_size_bytes",
            &[("device", device)],
            fs.data_blocks * fs.block_size,
        );
    }
    o.family(
        "daxbox_daxfs_free_bytes",
        "gauge",
        "Free space of each daxfs filesystem.",
    );
    for (device, fs) in &filesystems {
        o.sample(
            "daxbox_daxfs_free_bytes",
            &[("device", device)],
            fs.free_blocks * fs.block_size,
        );
    }
    o.family(
        "daxbox_daxfs_files",
        "gauge",
        "Files in each daxfs filesystem.",
    );
    for (device, fs) in &filesystems {
        o.sample("daxbox_daxfs_files", &[("device", device)], fs.files);
    }
    o.family(
        "daxbox_daxfs_max_files",
        "gauge",
        "Size of the file table of each daxfs filesystem.",
    );
    for (device, fs) in &filesystems {
        o.sample(
            "daxbox_daxfs_max_files",
            &[("device", device)],
            fs.max_files,
        );
    }

    // Recovery.
    let r = &s.recovery;
    for (name, help, value) in [
        (
            "daxbox_recovery_unclean_mounts_total",
            "Filesystems found not cleanly unmounted at boot and mounted with recovery.",
            r.unclean_mounts,
        ),
        (
            "daxbox_recovery_journal_replays_total",
            "Mounts that replayed a committed journal transaction.",
            r.journal_replays,
        ),
        (
            "daxbox_recovery_superblock_repairs_total",
            "Mounts that rewrote a damaged superblock copy.",
            r.superblock_repairs,
        ),
        (
            "daxbox_recovery_orphans_reclaimed_total",
            "Files removed while open whose space a mount reclaimed (their clients were gone).",
            r.orphans_reclaimed,
        ),
        (
            "daxbox_fsck_runs_total",
            "Filesystems checked by fsck.",
            r.fsck_runs,
        ),
        (
            "daxbox_fsck_problems_total",
            "Problems fsck found.",
            r.fsck_problems,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], value);
    }

    // Memory budgets.
    for (name, kind, help, pick) in [
        (
            "daxbox_budget_limit_bytes",
            "gauge",
            "Heap each budget may hold.",
            (|b| b.limit as u64) as fn(&daxbox_budget::BudgetStats) -> u64,
        ),
        (
            "daxbox_budget_used_bytes",
            "gauge",
            "Heap each budget holds now.",
            |b| b.used as u64,
        ),
        (
            "daxbox_budget_peak_bytes",
            "gauge",
            "Most heap each budget has held since boot.",
            |b| b.peak as u64,
        ),
        (
            "daxbox_budget_refusals_total",
            "counter",
            "Charges each budget refused since boot.",
            |b| b.refused,
        ),
    ] {
        o.family(name, kind, help);
        for b in &s.budgets {
            o.sample(name, &[("budget", b.name)], pick(b));
        }
    }
    o.text
}
