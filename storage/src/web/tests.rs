use super::*;
use crate::testing::Fixture;
use alloc::string::ToString;
use alloc::vec;
use daxbox_nbd::metrics::{Op, OpStats};

fn request<'a>(method: &'a str, path: &'a str, query: &'a str) -> Request<'a> {
    Request {
        method,
        path,
        query,
        content_length: 0,
        chunked: false,
        headers: "Host: x",
        peer: None,
        client_cn: None,
    }
}

/// Two files, NBD traffic on one with an awkward name, an fsck run.
fn snapshot() -> Snapshot {
    let mut f = Fixture::standard();
    f.ok("create disk1 1M");
    f.ok("create we\"ird\\x 1M");
    f.ok("fsck");
    let mut ops = OpStats::default();
    ops.record(Op::Write, 4096, false, 80);
    ops.record(Op::Write, 4096, false, 3_000);
    ops.record(Op::Read, 65536, false, 20);
    ops.record(Op::Read, 65536, true, 7_000_000);
    f.storage.metrics.nbd.record("disk1", &ops);
    f.storage.metrics.nbd.record("we\"ird\\x\nline", &ops);
    let mut s = Snapshot::storage(&f.storage, 0);
    s.version = "1.2.3";
    s.uptime_ms = 61_500;
    s.http.by_class = [0, 5, 0, 2, 1];
    s.listeners = vec![("nbd", ListenerStats::default())];
    s.access.by_address = vec![(
        Some("198.18.0.12".parse().unwrap()),
        crate::allow::Counts {
            policy: 3,
            read_only_write: 1,
        },
    )];
    s.access.other.policy = 7;
    s.cpu = CpuInfo {
        loop_passes: 1234,
        wakeups: 56,
        halted_ns: 9_500_000_000,
        busy_ns: 500_000_000,
        timer_interrupts: 50,
        device_interrupts: 7,
        serial_interrupts: 3,
    };
    s
}

#[test]
fn metrics_show_where_the_cpu_time_goes() {
    let text = prometheus::render(&snapshot());
    for line in [
        "daxbox_cpu_loop_passes_total 1234",
        "daxbox_cpu_wakeups_total 56",
        "daxbox_cpu_seconds_total{state=\"halted\"} 9.5",
        "daxbox_cpu_seconds_total{state=\"busy\"} 0.5",
        "daxbox_cpu_interrupts_total{source=\"timer\"} 50",
        "daxbox_cpu_interrupts_total{source=\"device\"} 7",
        "daxbox_serial_receive_interrupts_total 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}

#[test]
fn metrics_text_follows_the_exposition_format() {
    let text = prometheus::render(&snapshot());
    // Each family is announced once, before its samples; every sample
    // belongs to the family announced last; counters end in _total.
    let mut family = "";
    let mut kind = "";
    let mut seen = alloc::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, k) = rest.split_once(' ').unwrap();
            assert!(seen.insert(name.to_string()), "{name} announced twice");
            if k == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            family = name;
            kind = k;
        } else if line.starts_with("# HELP ") {
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = if kind == "histogram" {
                name.trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count")
            } else {
                name
            };
            assert_eq!(base, family, "{line}");
        }
    }
    assert!(text.contains("daxbox_build_info{version=\"1.2.3\"} 1\n"));
    assert!(text.contains("daxbox_uptime_seconds 61.5\n"));
    // Allow-list refusals by client address and reason.
    for line in [
        "daxbox_access_refusals_total{client=\"198.18.0.12\",reason=\"policy\"} 3\n",
        "daxbox_access_refusals_total{client=\"198.18.0.12\",reason=\"read_only_write\"} 1\n",
        "daxbox_access_refusals_total{client=\"other\",reason=\"policy\"} 7\n",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("daxbox_nbd_requests_total{export=\"disk1\",op=\"write\"} 2\n"));
    assert!(text.contains("daxbox_nbd_errors_total{export=\"disk1\",op=\"read\"} 1\n"));
    assert!(text.contains("daxbox_nbd_bytes_total{export=\"disk1\",op=\"read\"} 65536\n"));
    // Label values escaped: backslash, quote, line feed.
    assert!(
        text.contains(
            "daxbox_nbd_requests_total{export=\"we\\\"ird\\\\x\\nline\",op=\"write\"} 2\n"
        ),
        "{text}"
    );
    // Histogram: cumulative buckets in seconds, +Inf equal to the count.
    assert!(text
        .contains("daxbox_nbd_request_duration_seconds_bucket{op=\"write\",le=\"0.00005\"} 0\n"));
    assert!(
        text.contains("daxbox_nbd_request_duration_seconds_bucket{op=\"write\",le=\"0.0001\"} 2\n")
    );
    assert!(
        text.contains("daxbox_nbd_request_duration_seconds_bucket{op=\"write\",le=\"0.0025\"} 2\n")
    );
    assert!(
        text.contains("daxbox_nbd_request_duration_seconds_bucket{op=\"write\",le=\"0.005\"} 4\n")
    );
    assert!(text.contains("daxbox_nbd_request_duration_seconds_bucket{op=\"read\",le=\"5\"} 2\n"));
    assert!(
        text.contains("daxbox_nbd_request_duration_seconds_bucket{op=\"read\",le=\"+Inf\"} 4\n")
    );
    assert!(text.contains("daxbox_nbd_request_duration_seconds_count{op=\"read\"} 4\n"));
    assert!(text.contains("daxbox_nbd_request_duration_seconds_sum{op=\"write\"} 0.00616\n"));
    assert!(text.contains("daxbox_http_requests_total{class=\"5xx\"} 1\n"));
    // Devices: two daxfs, one raw.
    assert!(text.contains("daxbox_pmem_devices 3\n"));
    assert!(text.contains("daxbox_pmem_device_size_bytes{device=\"pmem2\",use=\"raw\"} 8388608\n"));
    assert!(text.contains("daxbox_daxfs_files{device=\"pmem0\"} 2\n"));
    assert!(text.contains("daxbox_fsck_runs_total 2\n"), "{text}");
    assert!(text.contains("daxbox_fsck_problems_total 0\n"));
    assert!(text.contains("daxbox_budget_used_bytes{budget=\"mount\"}"));
    assert!(text.contains(
        "daxbox_tcp_connections_refused_total{service=\"nbd\",reason=\"per_address\"} 0\n"
    ));
}

#[test]
fn the_stats_object_is_json_with_the_names() {
    let text = json::render(&snapshot());
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(value["version"], "1.2.3");
    assert_eq!(value["uptime_s"], 61);
    assert_eq!(value["uptime_ms"], 61_500);
    let devices: vec::Vec<&str> = value["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["pmem0", "pmem1", "pmem2"]);
    assert_eq!(value["devices"][2]["use"], "raw");
    assert_eq!(value["devices"][0]["fs"]["files"], 2);
    let exports: vec::Vec<&str> = value["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(exports.contains(&"disk1"));
    assert!(exports.contains(&"we\"ird\\x"));
    assert!(exports.contains(&"pmem2"));
    assert_eq!(value["nbd"]["requests"], 8);
    assert_eq!(value["nbd"]["errors"], 2);
    assert_eq!(value["nbd"]["read_bytes"], 2 * 65536);
    assert_eq!(value["nbd"]["write_bytes"], 4 * 4096);
    assert_eq!(value["nbd"]["per_export"][1]["export"], "we\"ird\\x\nline");
    assert_eq!(value["recovery"]["fsck_runs"], 2);
    assert_eq!(value["budgets"][0]["name"], "mount");
}

#[test]
fn routes_answer_their_paths_only() {
    let snap = || Snapshot::default();
    let metrics = route(&request("GET", "/metrics", ""), None, snap).unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.content_type, prometheus::CONTENT_TYPE);
    let stats = route(&request("HEAD", "/api/stats", ""), None, snap).unwrap();
    assert_eq!(stats.content_type, "application/json");
    let page = route(&request("GET", "/", ""), None, snap).unwrap();
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    let html = core::str::from_utf8(&page.body).unwrap();
    assert!(html.contains("fetch(\"/api/stats\""));
    // Self-contained: nothing fetched from elsewhere.
    for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "{external}");
    }
    assert!(page.body.len() < 8 * 1024, "{} bytes", page.body.len());
    assert_eq!(
        route(&request("PUT", "/metrics", ""), None, snap)
            .unwrap()
            .status,
        405
    );
    assert!(route(&request("GET", "/healthz", ""), None, snap).is_none());
    assert!(route(&request("GET", "/bucket/key", ""), None, snap).is_none());
    // A signed GET / is S3's ListBuckets.
    let signed = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
    assert!(route(&request("GET", "/", ""), Some(signed), snap).is_none());
    assert!(route(
        &request(
            "GET",
            "/",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab"
        ),
        None,
        snap
    )
    .is_none());
    // Other authorization schemes and queries leave it the dashboard.
    assert!(route(&request("GET", "/", "x=1"), Some("Basic Zm9v"), snap).is_some());
    // The snapshot is only taken for the data paths.
    assert!(route(&request("GET", "/", ""), None, || -> Snapshot {
        panic!("not needed")
    })
    .is_some());
}

#[test]
fn the_largest_exposition_stays_under_one_mebibyte() {
    let mut ops = OpStats::default();
    for op in Op::ALL {
        ops.record(op, u64::MAX / 2, false, u64::MAX / 2);
        ops.record(op, 1, true, 1);
    }
    let mut nbd = crate::metrics::NbdMetrics::new();
    for i in 0..crate::metrics::MAX_EXPORT_SERIES + 10 {
        // 255 bytes, every one escaped on output.
        let name = format!("{i:03}{}", "\"".repeat(252));
        nbd.record(&name, &ops);
    }
    let mut s = snapshot();
    s.nbd = nbd;
    let devices = s.devices.clone();
    s.devices = (0..16).map(|_| devices[0].clone()).collect();
    let text = prometheus::render(&s);
    assert!(text.len() < 1 << 20, "{} bytes", text.len());
    std::println!("largest /metrics body: {} bytes", text.len());
}

/// The `/metrics` and `/api/stats` bodies are charged to the budget while
/// they are held (until sent, or the connection gone), and back to zero
/// after; one that does not fit is `503`.
#[test]
fn page_bodies_are_charged_to_the_http_budget_until_sent() {
    use daxbox_netstack::http::{Bench, HttpService};
    use daxbox_netstack::TcpService;
    static BUDGET: daxbox_budget::Budget = daxbox_budget::Budget::new("test-http", 1 << 20);
    let mut pages = Pages::new(|_: &HttpStats| snapshot());
    pages.set_budget(&BUDGET);
    let mut service = HttpService::with_routes("test", 0, Bench::Off, pages);
    for path in ["/metrics", "/api/stats"] {
        let mut conn = service.accept(0);
        let request = alloc::format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            service.receive(&mut conn, request.as_bytes(), 0),
            request.len()
        );
        let mut buf = [0u8; 512];
        let n = service.produce(&mut conn, &mut buf, 0);
        let mut out = buf[..n].to_vec();
        assert!(BUDGET.stats().used > 0, "{path}: held while being sent");
        loop {
            let n = service.produce(&mut conn, &mut buf, 0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(BUDGET.stats().used, 0, "{path}: given back once sent");
        service.closed(conn);
        // A connection that goes mid-body gives it back too.
        let mut conn = service.accept(0);
        service.receive(&mut conn, request.as_bytes(), 0);
        service.produce(&mut conn, &mut buf, 0);
        assert!(BUDGET.stats().used > 0);
        service.closed(conn);
        assert_eq!(BUDGET.stats().used, 0, "{path}: given back when cut off");
    }
    // The dashboard is static: nothing charged. A body over the budget:
    // 503, nothing held.
    BUDGET.set_limit(100);
    let mut conn = service.accept(0);
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    service.receive(&mut conn, request, 0);
    let mut buf = [0u8; 4096];
    let n = service.produce(&mut conn, &mut buf, 0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    service.closed(conn);
    assert_eq!(BUDGET.stats().used, 0);
}
