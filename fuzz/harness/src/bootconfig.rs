//! `bootconfig`: the boot-config parser (`kernel/bootconfig`) on any bytes.
//!
//! Checked: no panic; the documented bounds hold for whatever the text
//! says (at most `MAX_PMEM` carve-outs, at most `MAX_WARNINGS` warnings,
//! ports never 0, every `readonly=`/`export_raw=` value a valid name, the
//! warnings' line numbers inside the text; at most 64 `allow=` rules of 1
//! to 16 address blocks each, each reading back as itself from what
//! `bootconfig` prints).

use daxbox_bootconfig::allow::{AllowRule, MAX_CLIENTS, MAX_RULES};
use daxbox_bootconfig::{is_pmem_device_name, parse, MAX_PMEM, MAX_WARNINGS};

/// The fuzz target.
pub fn run(data: &[u8]) {
    let (config, warnings) = parse(data);
    assert!(
        config.pmem.len() <= MAX_PMEM,
        "{} pmem entries",
        config.pmem.len()
    );
    assert!(
        warnings.len() <= MAX_WARNINGS + 1,
        "{} warnings",
        warnings.len()
    );
    assert!(config.nbd_port != 0 && config.http_port != 0, "{config:?}");
    for device in &config.export_raw {
        assert!(
            is_pmem_device_name(device),
            "export_raw={device:?} accepted"
        );
    }
    let lines = data.split(|&b| b == b'\n').count();
    for request in &config.pmem {
        assert!(request.size > 0, "{request:?}");
        assert!(
            request.line >= 1 && request.line <= lines,
            "{request:?} of {lines} lines"
        );
    }
    assert!(config.allow.rules.len() <= MAX_RULES);
    for rule in &config.allow.rules {
        assert!((1..=MAX_CLIENTS).contains(&rule.clients.len()), "{rule:?}");
        let shown = rule.to_string();
        let again = AllowRule::parse(&shown["allow=".len()..], rule.line);
        assert_eq!(again.as_ref(), Ok(rule), "{shown}");
    }
    // The kernel prints the effective settings and every warning.
    let _ = format!("{config:?}");
    for warning in &warnings {
        let _ = format!("{warning}");
    }
}
