//! `retain_blocks`: nodes that prune keep their disk use flat, tell their peers
//! what they hold, and a late node catches up from the peer that holds the
//! heights it needs, or says once that none does. Real processes, real fjall,
//! blocks driven fast with a short interval.

use std::time::{Duration, Instant};

use crate::common::procs::Net;
use masternode::chain::MIN_RETAIN_BLOCKS;
use masternode::status::Status;

/// Puts `retain_blocks = n` at the top of node `i`'s masternode.toml (a
/// top-level key goes before the tables).
fn retain(net: &Net, i: usize, n: u64) {
    let text = std::fs::read_to_string(&net.configs[i]).unwrap();
    std::fs::write(&net.configs[i], format!("retain_blocks = {n}\n{text}")).unwrap();
}

/// Polls node `i`'s status until `done` holds for it.
async fn until(net: &Net, i: usize, deadline: Duration, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    let start = Instant::now();
    loop {
        if let Some(s) = net.status(i).await.filter(|s| done(s)) {
            return s;
        }
        if start.elapsed() > deadline {
            let last = net.status(i).await.map(|s| (s.height, s.earliest_height, s.data_dir_bytes));
            panic!("not within {deadline:?}: {what} (node {}: {last:?})\n{}", i + 1, net.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One member, blocks every 10 ms, keeping the last 100: over thousands of
/// blocks the data dir stops growing (what it peaks at while its journal fills
/// and is sealed is the same from 3,500 to 6,000 as from 1,000 to 3,500), and
/// the earliest height held follows the tip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_stays_flat_over_thousands_of_blocks_with_retain_blocks() {
    let mut net = Net::new(1);
    net.set_block_interval(10);
    retain(&net, 0, MIN_RETAIN_BLOCKS);
    net.start(0);
    until(&net, 0, Duration::from_secs(300), "height 1000", |s| s.height >= 1_000).await;
    // The highest data dir size seen in each window of heights, and the
    // furthest the earliest height held lagged behind the tip.
    let (mut early, mut late, mut lag) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    loop {
        let Some(s) = net.status(0).await else { continue };
        let bytes = s.data_dir_bytes.expect("the node says");
        match s.height {
            h if h < 3_500 => early = early.max(bytes),
            h if h <= 6_000 => late = late.max(bytes),
            _ => break,
        }
        lag = lag.max(s.height - s.earliest_height);
        assert!(start.elapsed() < Duration::from_secs(600), "6000 blocks within 10 minutes\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("data dir peak: {early} bytes at heights 1000..3500, {late} at 3500..6000; earliest held lagged the tip by {lag} at most");
    // Kept, the 2,500 blocks of the second window would add 4 MB (1,622 bytes
    // an empty block, docs/operating.md); the peaks differ by when the journal
    // is sealed, by less than half of that.
    let unpruned = 2_500 * 1_622;
    assert!(late < early + unpruned / 2, "the data dir grew: {early} bytes, then {late}");
    // The pruner runs once a second, off the consensus path: a second of
    // blocks behind, at most a few on a loaded machine.
    assert!(lag < MIN_RETAIN_BLOCKS + 1_000, "earliest held {lag} heights behind the tip");
    net.stop(0, Duration::from_secs(10)).await;
}

/// Four members: 1 and 2 keep the last 100 blocks, 3 keeps every block. Node 4
/// starts on an empty data dir once 1 and 2 have pruned: it asks node 3 for
/// the heights only node 3 holds and catches up, without a failed request to
/// the others. Started again on an empty data dir with node 3 down, it finds
/// no peer that holds height 1 and says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_catches_up_from_the_peer_that_holds_the_range_or_says_once_that_none_does() {
    let mut net = Net::new(4);
    net.set_block_interval(20);
    for i in [0, 1] {
        retain(&net, i, MIN_RETAIN_BLOCKS);
    }
    for i in 0..3 {
        net.start(i);
    }
    for i in [0, 1] {
        until(&net, i, Duration::from_secs(300), "pruned past height 300", |s| s.earliest_height > 300).await;
    }
    let archive = net.status(2).await.unwrap();
    assert_eq!(archive.earliest_height, 1, "node 3 keeps every block");
    let tip = net.status(0).await.unwrap().height;

    net.start(3);
    let caught = until(&net, 3, Duration::from_secs(120), "node 4 catches up", |s| s.height >= tip).await;
    assert_eq!(caught.earliest_height, 1, "a node without retain_blocks keeps what it synced");
    let log = net.log(3);
    // The archive is never asked in vain. A pruned peer is asked only for
    // heights it said it holds; at 20 ms blocks its earliest height moves 50
    // heights a second, so a request at its pruned edge may find the heights
    // gone by the time it is served: an empty answer, and node 4 moves on.
    let archive_id = &archive.node_id[..8];
    for line in log.lines().filter(|l| l.contains("sync from peer failed")) {
        assert!(!line.contains(archive_id), "node 4 asked the archive in vain:\n{line}");
        assert!(line.contains("\"reason\":\"empty\""), "only a pruned edge may fail a request:\n{line}");
    }
    assert!(!log.contains("none holds height"), "{log}");

    // Node 3 down and node 4 on an empty data dir again: nodes 1 and 2 hold
    // nothing below their earliest heights.
    net.stop(3, Duration::from_secs(10)).await;
    net.stop(2, Duration::from_secs(10)).await;
    std::fs::remove_dir_all(net.data_dir(3)).unwrap();
    std::fs::remove_file(net.dir.path().join("node4.log")).unwrap();
    net.start(3);
    let start = Instant::now();
    while !net.log(3).contains("none holds height 1") {
        assert!(start.elapsed() < Duration::from_secs(60), "no warning that no peer holds height 1\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several more Holds and tips arrive from both peers meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = net.log(3);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("none holds height")).collect();
    assert_eq!(warnings.len(), 1, "said once:\n{log}");
    assert!(warnings[0].contains("WARN"), "at warn: {}", warnings[0]);
    assert_eq!(net.status(3).await.unwrap().height, 0);
    for i in [0, 1, 3] {
        net.stop(i, Duration::from_secs(10)).await;
    }
}

/// The figures in docs/operating.md ("Disk use"): one member each, blocks every
/// 10 ms, real fjall. A keeps every block, B keeps the last 100, C keeps every
/// block and commits transactions of 1 KiB as fast as its mempool takes them.
/// `cargo test --release --test long retention::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of a few minutes"]
async fn measure_disk_use_per_block_and_per_transaction_byte() {
    use crate::common::{fast_transport, Spec};
    use masternode::node::{Node, NodeOptions};
    use tokio_util::sync::CancellationToken;

    async fn start(retain: Option<u64>) -> (Spec, Node) {
        let spec = Spec::new(1);
        let mut cfg = spec.config(0, spec.network_paced("disk", &spec.members, 10), fast_transport());
        cfg.retain_blocks = retain;
        let node = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
        (spec, node)
    }
    let bytes = |n: &Node| n.status().data_dir_bytes.unwrap();
    let ((_a, a), (_b, b), (_c, c)) = (start(None).await, start(Some(MIN_RETAIN_BLOCKS)).await, start(None).await);
    // C: 1 KiB transactions until height 2,000.
    let mut k: u64 = 0;
    while c.height() < 2_000 {
        let mut tx = vec![0x5a; 1024];
        tx[..8].copy_from_slice(&k.to_be_bytes());
        match c.submit(tx).await {
            Ok(_) => k += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let c_height = c.height();
    // Wait for the next measurement (once a second) to see the last blocks.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let c_height_now = c.height();
    let tx_bytes: usize = (1..=c_height_now)
        .filter_map(|h| c.store().block(h).ok().flatten())
        .map(|blk| blk.block.txs.iter().map(|t| t.len()).sum::<usize>())
        .sum();
    let c_bytes = bytes(&c);
    c.stop().await;
    let mut a_at_c = 0;
    let mut b_peak: u64 = 0;
    let start_wait = Instant::now();
    while a.height() < 10_000 || b.height() < 10_000 {
        if a_at_c == 0 && a.height() >= c_height_now {
            a_at_c = bytes(&a);
        }
        if b.height() > 1_000 {
            b_peak = b_peak.max(bytes(&b));
        }
        assert!(start_wait.elapsed() < Duration::from_secs(1_800));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (a_bytes, a_height, b_bytes, b_height) = (bytes(&a), a.height(), bytes(&b), b.height());
    eprintln!("A (every block): {a_bytes} bytes at height {a_height}: {} bytes per block", a_bytes / a_height);
    eprintln!("B (retain_blocks = {MIN_RETAIN_BLOCKS}): {b_bytes} bytes at height {b_height}, at most {b_peak} after height 1000");
    eprintln!(
        "C (1 KiB transactions): {c_bytes} bytes at height {c_height_now} (txs until {c_height}) with {tx_bytes} transaction bytes; \
         A at that height {a_at_c}: {:.2} disk bytes per transaction byte",
        (c_bytes as f64 - a_at_c as f64) / tx_bytes as f64
    );
    a.stop().await;
    b.stop().await;
}
