//! docs/security.md's table of input budgets against the code: every test a
//! row cites exists, every `masternode_held_bytes{what}` and
//! `masternode_requests_refused_total{budget}` label a running node exports
//! has a row, and no row names a label the node does not export.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{fast_transport, Spec};
use masternode::node::{Node, NodeOptions};
use tokio_util::sync::CancellationToken;

const DOC: &str = "docs/security.md";
const SECTION: &str = "## Input budgets";

/// The rows of the budget table: the table that follows [`SECTION`], header
/// and separator left out.
fn rows(doc: &str) -> Vec<String> {
    let start = doc.find(SECTION).unwrap_or_else(|| panic!("{DOC} has no \"{SECTION}\" section"));
    let table: Vec<&str> =
        doc[start..].lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
    assert!(table.len() > 2, "the budget table has no rows");
    assert!(table[1].chars().all(|c| "|-: ".contains(c)), "the table's second line is its separator");
    table[2..].iter().map(|l| l.to_string()).collect()
}

/// Every `path.rs::name` in `text`.
fn cited_tests(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices(".rs::") {
        let path_start =
            text[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || "_/.-".contains(c))).map_or(0, |i| i + 1);
        let name: String = text[at + 5..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        out.push((format!("{}.rs", &text[path_start..at]), name));
    }
    out
}

/// The values of `key="value"` in `text`.
fn labels(text: &str, key: &str) -> BTreeSet<String> {
    let pattern = format!("{key}=\"");
    text.match_indices(&pattern)
        .map(|(at, _)| {
            let rest = &text[at + pattern.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// The labels of `series` in a node's exposition.
fn exported(metrics: &str, series: &str, key: &str) -> BTreeSet<String> {
    metrics.lines().filter(|l| l.starts_with(&format!("{series}{{"))).flat_map(|l| labels(l, key)).collect()
}

#[test]
fn every_budget_row_cites_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).unwrap();
    let mut missing = Vec::new();
    for row in rows(&doc) {
        let tests = cited_tests(&row);
        assert!(!tests.is_empty(), "a row cites no test: {row}");
        for (path, name) in tests {
            let source = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
            if !source.contains(&format!("fn {name}(")) {
                missing.push(format!("{path}::{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "{DOC} cites tests that do not exist: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_held_bytes_and_refusal_label_has_a_row_and_every_row_label_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).unwrap();
    let table = rows(&doc).join("\n");
    let spec = Spec::new(4);
    let cfg = spec.config(0, spec.network(), fast_transport());
    let node = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
    let metrics = node.metrics();
    node.stop().await;
    for (series, key) in [("masternode_held_bytes", "what"), ("masternode_requests_refused_total", "budget")] {
        let exported = exported(&metrics, series, key);
        assert!(!exported.is_empty(), "the node exports {series}");
        let documented = labels(&table, key);
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        let unexported: Vec<_> = documented.difference(&exported).collect();
        assert!(undocumented.is_empty(), "{series} labels with no row in {DOC}: {undocumented:?}");
        assert!(unexported.is_empty(), "{DOC} names {key} labels the node does not export: {unexported:?}");
    }
}
