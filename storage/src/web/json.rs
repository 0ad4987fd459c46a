//! `GET /api/stats`: the dashboard's figures as one JSON object (RFC 8259;
//! strings escaped, numbers as integers). Rates are not computed here: the
//! page divides the difference of two polls by that of their `uptime_ms`
//! (the appliance's clock, so the browser's timing does not matter).
//!
//! ```text
//! {"version":"0.1.0","uptime_s":12,"uptime_ms":12345,
//!  "devices":[{"name":"pmem0","size":1073741824,"use":"daxfs",
//!              "fs":{"size":..,"free":..,"files":2,"max_files":..}}],
//!  "exports":["disk1",...],                       (at most 64)
//!  "nbd":{"connections":1,"requests":..,"errors":..,"read_bytes":..,"write_bytes":..,
//!         "per_export":[{"export":"disk1","requests":..,"errors":..,"read_bytes":..,"write_bytes":..}]},
//!  "connections":[{"id":3,"peer":"10.0.2.2:40312","export":"disk1","age_s":4,
//!                  "read_bytes":..,"write_bytes":..}],   (at most 64)
//!  "http":{"requests":..,"errors":..},
//!  "tcp":[{"service":"nbd","active":1,"limit":64,"accepted":..,"refused":..}],
//!  "net":{"rx_packets":..,"tx_packets":..,"rx_bytes":..,"tx_bytes":..,"interrupts":..},
//!  "recovery":{"unclean_mounts":0,"journal_replays":0,"fsck_runs":0,"fsck_problems":0},
//!  "budgets":[{"name":"mount","limit":..,"used":..,"peak":..,"refused":0}]}
//! ```

use alloc::string::String;
use core::fmt::Write;
use daxbox_nbd::metrics::{Op, OpCounter};

use super::{peer_text, Snapshot};

/// Writes `value` as a JSON string.
pub fn string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn totals(counters: &[OpCounter; 8]) -> (u64, u64, u64, u64) {
    let requests = counters.iter().map(|c| c.requests).sum();
    let errors = counters.iter().map(|c| c.errors).sum();
    (
        requests,
        errors,
        counters[Op::Read.index()].bytes,
        counters[Op::Write.index()].bytes,
    )
}

/// The whole object.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    o.push_str("{\"version\":");
    string(&mut o, s.version);
    let _ = write!(
        o,
        ",\"uptime_s\":{},\"uptime_ms\":{},\"devices\":[",
        s.uptime_ms / 1000,
        s.uptime_ms
    );
    for (i, d) in s.devices.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        string(&mut o, &d.name);
        let _ = write!(o, ",\"size\":{}", d.size);
        match &d.fs {
            Some(fs) => {
                let _ = write!(
                    o,
                    ",\"use\":\"daxfs\",\"fs\":{{\"size\":{},\"free\":{},\"files\":{},\"max_files\":{}}}}}",
                    fs.data_blocks * fs.block_size,
                    fs.free_blocks * fs.block_size,
                    fs.files,
                    fs.max_files
                );
            }
            None => o.push_str(",\"use\":\"raw\",\"fs\":null}"),
        }
    }
    o.push_str("],\"exports\":[");
    for (i, e) in s.exports.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        string(&mut o, e);
    }
    let mut all = [OpCounter::default(); 8];
    for counters in s.nbd.exports.values().chain(core::iter::once(&s.nbd.other)) {
        for (a, b) in all.iter_mut().zip(counters.iter()) {
            a.add(b);
        }
    }
    let (requests, errors, read, write) = totals(&all);
    let _ = write!(
        o,
        "],\"nbd\":{{\"connections\":{},\"requests\":{requests},\"errors\":{errors},\"read_bytes\":{read},\"write_bytes\":{write},\"per_export\":[",
        s.connection_count
    );
    let per_export = s
        .nbd
        .exports
        .iter()
        .map(|(name, counters)| (name.as_str(), counters))
        .chain(core::iter::once(("other", &s.nbd.other)))
        .filter(|(_, counters)| counters.iter().any(|c| c.requests > 0));
    for (i, (name, counters)) in per_export.enumerate() {
        if i > 0 {
            o.push(',');
        }
        let (requests, errors, read, write) = totals(counters);
        o.push_str("{\"export\":");
        string(&mut o, name);
        let _ = write!(
            o,
            ",\"requests\":{requests},\"errors\":{errors},\"read_bytes\":{read},\"write_bytes\":{write}}}"
        );
    }
    o.push_str("]},\"connections\":[");
    for (i, c) in s.connections.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(o, "{{\"id\":{},\"peer\":", c.id);
        string(&mut o, &peer_text(c.peer));
        o.push_str(",\"export\":");
        string(&mut o, &c.export);
        let _ = write!(
            o,
            ",\"age_s\":{},\"read_bytes\":{},\"write_bytes\":{}}}",
            c.age_ms / 1000,
            c.read_bytes,
            c.write_bytes
        );
    }
    let _ = write!(
        o,
        "],\"http\":{{\"requests\":{},\"errors\":{}}},\"tcp\":[",
        s.http.requests, s.http.errors
    );
    for (i, (service, l)) in s.listeners.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(
            o,
            "{{\"service\":\"{service}\",\"port\":{},\"active\":{},\"limit\":{},\"accepted\":{},\"refused\":{}}}",
            l.port,
            l.active,
            l.max_connections,
            l.accepted,
            l.refused_total + l.refused_per_address + l.refused_budget
        );
    }
    let c = &s.net.counters;
    let r = &s.recovery;
    let _ = write!(
        o,
        "],\"net\":{{\"rx_packets\":{},\"tx_packets\":{},\"rx_bytes\":{},\"tx_bytes\":{},\"interrupts\":{}}},\
         \"recovery\":{{\"unclean_mounts\":{},\"journal_replays\":{},\"superblock_repairs\":{},\"fsck_runs\":{},\"fsck_problems\":{}}},\"budgets\":[",
        c.rx_packets,
        c.tx_packets,
        c.rx_bytes,
        c.tx_bytes,
        s.net.interrupts,
        r.unclean_mounts,
        r.journal_replays,
        r.superblock_repairs,
        r.fsck_runs,
        r.fsck_problems
    );
    for (i, b) in s.budgets.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        string(&mut o, b.name);
        let _ = write!(
            o,
            ",\"limit\":{},\"used\":{},\"peak\":{},\"refused\":{}}}",
            b.limit, b.used, b.peak, b.refused
        );
    }
    o.push_str("]}");
    o
}
