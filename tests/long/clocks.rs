//! Members whose clocks disagree: one of four nodes 20 s behind, or 20 s ahead,
//! neither slows the chain nor calls honest blocks misbehaviour, and the skewed
//! node learns from the clock readings its peers' tips carry that its clock is
//! off, and warns; the others do not.

use std::time::Duration;

use crate::common::procs::Net;
use crate::common::*;
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

/// libfaketime's preload library, where Debian's `faketime` package puts it.
fn libfaketime() -> Option<&'static str> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Blocks node 0 commits in `window`.
async fn blocks_in(net: &Net, window: Duration) -> u64 {
    let before = net.status(0).await.expect("node 1 answers").height;
    tokio::time::sleep(window).await;
    net.status(0).await.expect("node 1 answers").height - before
}

/// The same with real daemons: node 4 restarted under libfaketime 20 s behind
/// commits as many blocks as before it, names its offset, warns once, and no
/// daemon calls anything misbehaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_under_libfaketime_20_s_behind_keeps_the_pace_and_warns_once() {
    let Some(lib) = libfaketime() else {
        eprintln!("skipped: libfaketime is missing (Debian package faketime; .ci/run installs it)");
        return;
    };
    let mut net = Net::new(4);
    net.set_block_interval(500);
    for i in 0..4 {
        net.start(i);
    }
    net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30), "a full mesh").await;
    let window = Duration::from_secs(10);
    let reference = blocks_in(&net, window).await;
    net.kill9(3);
    net.start_with_env(3, &[("LD_PRELOAD", lib), ("FAKETIME", "-20s")]);
    net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30), "node 4 back under a clock 20 s behind").await;
    let skewed = blocks_in(&net, window).await;
    eprintln!("{skewed} blocks in {window:?} with node 4's clock 20 s behind, {reference} with true clocks");
    assert!(skewed as f64 >= 0.85 * reference as f64, "{skewed} blocks against {reference} with true clocks");
    let status = net.status(3).await.expect("node 4 answers");
    let offset = status.clock_offset_ms.expect("node 4 estimates its offset");
    assert!((offset + 20_000).abs() <= 1_000, "node 4 estimated {offset} ms");
    for i in 0..3 {
        let offset = net.status(i).await.expect("answers").clock_offset_ms.expect("an estimate");
        assert!(offset.abs() <= 1_000, "node {}, whose clock is right, estimated {offset} ms", i + 1);
    }
    let warnings = net.log(3).lines().filter(|l| l.contains("clock is 20.0 s behind")).count();
    assert_eq!(warnings, 1, "one clock warning on node 4:\n{}", net.logs());
    for i in 0..4 {
        let log = net.log(i);
        assert!(!log.contains("misbehaviour"), "node {}: {}", i + 1, net.logs());
        if i < 3 {
            assert!(!log.contains("clock is"), "node {}, whose clock is right, warns: {}", i + 1, net.logs());
        }
    }
}
