//! The monitoring files against a real node: every metric that
//! `monitoring/alerts.yml` and `monitoring/grafana/masternode.json` name is
//! exported, and the dashboard is importable as is.
//!
//! With a real Prometheus (Debian package `prometheus`), opt-in:
//!
//!     cargo test --test suite monitoring:: -- --ignored --nocapture
//!
//! starts three nodes, a Prometheus scraping their admin APIs on loopback with
//! the alert rules loaded, and checks that every dashboard query returns data,
//! every rule evaluates, and stopping a member raises the quorum and member
//! alerts on the others.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{eventually, fast_transport, stop_all, Spec};
use masternode::node::Node;

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/alerts.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/grafana/masternode.json");

/// Metric names in `text`: `masternode_*` and `process_*` identifiers.
fn metric_names(text: &str) -> BTreeSet<String> {
    names_with(text, &["masternode_", "process_"])
}

/// Identifiers in `text` that start with one of `prefixes` (a trailing `_`
/// is not part of the name).
pub(crate) fn names_with(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in prefixes {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix).map(|i| from + i) {
            let starts_word = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            let end = text[at..].find(|c: char| !(c.is_ascii_lowercase() || c == '_')).map_or(text.len(), |i| at + i);
            if starts_word && end > at + prefix.len() {
                names.insert(text[at..end].trim_end_matches('_').to_string());
            }
            from = end.max(at + 1);
        }
    }
    names
}

/// Names a scrape exports: every sample's name, and every family's (a
/// histogram's family name has no sample of its own).
pub(crate) fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            out.insert(rest.split_whitespace().next().unwrap_or_default().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

/// Whether `name` is exported, a histogram's series by its family.
pub(crate) fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    exported.contains(name) || exported.contains(family)
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("the dashboard is JSON")
}

/// Every query of the dashboard: panel targets and annotations.
fn dashboard_queries(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_string()));
        }
    }
    out
}

/// A network of three that has committed a few blocks, every node connected.
async fn running_network() -> (Spec, Vec<Node>) {
    let spec = Spec::new(3);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(spec.start(i, fast_transport()).await);
    }
    eventually("three blocks everywhere", Duration::from_secs(60), || nodes.iter().all(|n| n.height() >= 3)).await;
    eventually("a full mesh", Duration::from_secs(30), || nodes.iter().all(|n| n.status().peers.len() == 2)).await;
    (spec, nodes)
}

#[test]
fn metric_names_are_found_in_rules_and_queries() {
    let names = metric_names("rate(masternode_height[5m]) / masternode_x_total{a=\"b\"} + process_cpu_seconds_total");
    let want = ["masternode_height", "masternode_x_total", "process_cpu_seconds_total"];
    assert_eq!(names, want.iter().map(|s| s.to_string()).collect());
    assert!(metric_names("the masternode: mymasternode_x").is_empty(), "whole identifiers only");
}

#[test]
fn the_dashboard_imports_as_is() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().unwrap();
    assert!(inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"));
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "instance" && v["type"] == "query"));
    assert!(d["id"].is_null(), "no id of the Grafana it was made on");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel ids are unique");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
    for (title, expr) in dashboard_queries(&d) {
        assert!(expr.contains("$instance"), "{title}: {expr} is not filtered by the instance variable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_monitoring_uses_is_exported() {
    let (_spec, nodes) = running_network().await;
    let scrape = masternode::admin::http_get(nodes[0].admin_addr(), "/metrics", Duration::from_secs(5)).await.unwrap();
    let have = exported(&scrape);
    let alerts = std::fs::read_to_string(ALERTS).unwrap();
    let from_rules = metric_names(&alerts);
    let from_dashboard: BTreeSet<String> =
        dashboard_queries(&dashboard()).iter().flat_map(|(_, expr)| metric_names(expr)).collect();
    assert!(from_rules.len() >= 10 && from_dashboard.len() >= 30, "{from_rules:?} {from_dashboard:?}");
    let missing: Vec<_> = from_rules.union(&from_dashboard).filter(|n| !is_exported(n, &have)).collect();
    assert!(missing.is_empty(), "used by the monitoring but not exported: {missing:?}\n{scrape}");
    // The contract's names, exactly.
    for line in [
        "masternode_round 0",
        "masternode_build_info{version=\"",
        "masternode_last_block_timestamp_seconds ",
        "masternode_clock_offset_seconds ",
        "masternode_outbox_dropped_total{class=\"consensus\"} ",
        "masternode_slow_peer_disconnects_total ",
        "masternode_sync_failures_total{reason=\"timeout\"} ",
        "masternode_peer_rtt_seconds{stat=\"max\"} ",
        "masternode_held_bytes{what=\"compact_waiting\"} ",
        "masternode_held_bytes{what=\"compact_later\"} ",
        "masternode_held_bytes{what=\"fetch_requests\"} ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
    ] {
        assert!(scrape.contains(line), "no {line:?} in\n{scrape}");
    }
    let tip_secs: f64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("masternode_last_block_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - tip_secs).abs() < 30.0, "the tip's time is recent: {tip_secs} vs {now}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_round_sync_clock_and_no_warning_when_healthy() {
    let (_spec, mut nodes) = running_network().await;
    eventually("a clock estimate from the peers' proposals", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.status().clock_offset_ms.is_some())
    })
    .await;
    let s = masternode::admin::fetch_status(nodes[1].admin_addr(), Duration::from_secs(5)).await.unwrap();
    // One process, one clock: what is left is the delivery time.
    assert!(s.clock_offset_ms.unwrap().abs() < 200, "{s:?}");
    assert!(s.last_block_age_secs.is_some_and(|a| a < 30.0), "{s:?}");
    assert!(!s.sync.syncing, "{s:?}");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let text = masternode::admin::render_status(&s);
    for want in ["round     ", "last block", "sync      up to date", "clock     "] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // A member away: the others say which.
    let away = nodes.pop().expect("three nodes");
    let away_id = away.id();
    away.stop().await;
    eventually("a warning naming the missing member", Duration::from_secs(30), || {
        nodes[0].status().warnings.iter().any(|w| w.contains(&away_id.short()))
    })
    .await;
    stop_all(nodes).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn prometheus_api(addr: SocketAddr, path: &str) -> serde_json::Value {
    let body = masternode::admin::http_get(addr, path, Duration::from_secs(10)).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{path}: {body}");
    v["data"].clone()
}

/// Dashboard queries that are empty on a healthy network by design: they show
/// only what is above zero (rejects, restarts).
fn empty_when_healthy(expr: &str) -> bool {
    expr.contains(") > 0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary (Debian package prometheus); takes about a minute"]
async fn a_real_prometheus_gets_data_for_every_dashboard_query() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no `prometheus` binary on PATH (apt-get install prometheus)");
        return;
    }
    let (spec, mut nodes) = running_network().await;
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = nodes.iter().map(|n| format!("'{}'", n.admin_addr())).collect();
    std::fs::copy(ALERTS, dir.path().join("alerts.yml")).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['alerts.yml']\n\
         scrape_configs:\n  - job_name: masternode\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    // Loopback only, on an address of this test's own subnet.
    let web: SocketAddr = format!("127.{}.{}.200:9090", spec.net[0], spec.net[1]).parse().unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let result = async {
        // A few scrapes, so that rates over two samples or more exist.
        let start = Instant::now();
        loop {
            let body =
                masternode::admin::http_get(web, "/api/v1/query?query=masternode_height", Duration::from_secs(2));
            if let Ok(b) = body.await {
                let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                if v["data"]["result"].as_array().is_some_and(|r| r.len() == 3) {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "Prometheus never scraped the nodes");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut failures = Vec::new();
        for (title, expr) in dashboard_queries(&dashboard()) {
            let q = expr.replace("$instance", ".+").replace("$__rate_interval", "1m");
            let data = prometheus_api(web, &format!("/api/v1/query?query={}", urlencode(&q))).await;
            let n = data["result"].as_array().map_or(0, |r| r.len());
            println!("{n:>3} series  {title}: {q}");
            if n == 0 && !empty_when_healthy(&expr) {
                failures.push(format!("{title}: {q}"));
            }
        }
        let rules = prometheus_api(web, "/api/v1/rules").await;
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                println!("rule {} health {} state {}", rule["name"], rule["health"], rule["state"]);
                if rule["health"] != "ok" {
                    failures.push(format!("rule {}: {}", rule["name"], rule["lastError"]));
                }
            }
        }
        // A member stops: on the other two (a network of three needs all three),
        // the quorum and member alerts go pending at once (they fire after their
        // `for`).
        let away = nodes.pop().expect("three nodes");
        away.stop().await;
        let start = Instant::now();
        loop {
            let alerts = prometheus_api(web, "/api/v1/alerts").await;
            let pending: BTreeSet<(String, String)> = alerts["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["labels"]["alertname"].as_str().unwrap().to_string(),
                        a["labels"]["instance"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let on_both = |name: &str| pending.iter().filter(|(n, _)| n == name).count() == 2;
            if on_both("MasternodeQuorumLost") && on_both("MasternodeMemberMissing") {
                println!("pending after a member stopped: {pending:?}");
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                failures.push(format!("no quorum and member alerts after a member stopped: {pending:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        failures
    }
    .await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    stop_all(nodes).await;
    assert!(result.is_empty(), "queries without data or failing rules: {result:#?}");
}
