//! Members whose clocks disagree: one of four nodes 20 s behind, or 20 s ahead,
//! neither slows the chain nor calls honest blocks misbehaviour, and the skewed
//! node learns from the clock readings its peers' tips carry that its clock is
//! off, and warns; the others do not.

mod common;

use std::time::Duration;

use common::*;
use masternode::node::{Node, NodeOptions};
use tokio_util::sync::CancellationToken;

/// Blocks the network commits in `window` after its first block, with node 3's
/// clock shifted by `skew_ms`; every node's misbehaviour count; every node's
/// status (node 3's last).
async fn run(skew_ms: i64, window: Duration) -> (u64, u64, Vec<masternode::status::Status>) {
    let spec = Spec::new(4);
    let transport = fast_transport();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(spec.start(i, transport.clone()).await);
    }
    let cfg = spec.config(3, spec.network(), transport);
    let options = NodeOptions { clock_skew_ms: skew_ms, ..Default::default() };
    nodes.push(Node::start(cfg, options, CancellationToken::new()).await.unwrap());
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        eventually("first block everywhere", Duration::from_secs(40), || refs.iter().all(|n| n.height() >= 1)).await;
    }
    let start = nodes[0].height();
    tokio::time::sleep(window).await;
    let blocks = nodes[0].height() - start;
    let misbehaviour: u64 = nodes
        .iter()
        .map(|n| {
            n.metrics()
                .lines()
                .find(|l| l.starts_with("masternode_misbehaviour_total "))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .sum();
    let status: Vec<_> = nodes.iter().map(|n| n.status()).collect();
    let stores: Vec<_> = nodes.iter().map(|n| n.store().clone()).collect();
    check_chains(&spec, &stores.iter().collect::<Vec<_>>());
    stop_all(nodes).await;
    (blocks, misbehaviour, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clock_of_four_off_by_20_s_neither_slows_the_chain_nor_is_called_misbehaviour() {
    let window = Duration::from_secs(20);
    let (reference, _, _) = run(0, window).await;
    for skew in [-20_000, 20_000] {
        let (blocks, misbehaviour, status) = run(skew, window).await;
        let offsets: Vec<_> = status.iter().map(|s| s.clock_offset_ms).collect();
        eprintln!("clock {skew:+} ms: {blocks} blocks in {window:?} ({reference} with true clocks), misbehaviour {misbehaviour}, estimated offsets {offsets:?}");
        assert!(
            blocks as f64 >= 0.85 * reference as f64,
            "clock {skew:+} ms: {blocks} blocks against {reference} with true clocks"
        );
        assert_eq!(misbehaviour, 0, "clock {skew:+} ms: honest blocks called misbehaviour");
        for (i, s) in status[..3].iter().enumerate() {
            assert!(
                !s.warnings.iter().any(|w| w.contains("clock")),
                "clock {skew:+} ms: node {i}, whose clock is right, warns: {:?}",
                s.warnings
            );
        }
        let offset = status[3].clock_offset_ms.expect("an estimate from the peers' tips");
        assert!((offset - skew).abs() <= 1_000, "clock {skew:+} ms: estimated {offset} ms");
        assert!(status[3].warnings.iter().any(|w| w.contains("clock")), "{:?}", status[3].warnings);
        for (i, s) in status[..3].iter().enumerate() {
            let offset = s.clock_offset_ms.expect("an estimate from the peers' tips");
            assert!(offset.abs() <= 1_000, "clock {skew:+} ms: node {i}, whose clock is right, estimated {offset} ms");
        }
    }
}
