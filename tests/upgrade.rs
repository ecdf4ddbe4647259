//! The rolling upgrade from 0.1.0 to this release, as the README's runbook does
//! it: four nodes of 0.1.0 (commit 31283ad) on distinct loopback addresses with
//! 500 ms blocks, then one node at a time: stop it (SIGTERM), install this
//! build, start it on the same data dir. Opt-in, as it needs 0.1.0 built:
//!
//!     cargo test --release --test upgrade -- --ignored --nocapture
//!
//! 0.1.0 is built from this repository's history (`git archive 31283ad` into
//! /tmp/masternode-0.1.0, `cargo build --release` there with its own target
//! dir) unless that build is there already; `MASTERNODE_OLD_BIN` names another
//! binary of 0.1.0.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{Net, BIN};
use masternode::admin::http_get;

const OLD_COMMIT: &str = "31283ad";
const OLD_ROOT: &str = "/tmp/masternode-0.1.0";
const INTERVAL_MS: u64 = 500;
/// The longest a running network may go without a block while nodes are
/// replaced: five block intervals.
const MAX_GAP_MS: u64 = 5 * INTERVAL_MS;
/// How long each node stays down, as installing the binary takes an operator:
/// long enough for its turns as proposer to come while it is away (four block
/// intervals), which the three others must ride out.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// 0.1.0's binary, built once and kept.
fn old_release() -> PathBuf {
    if let Some(bin) = std::env::var_os("MASTERNODE_OLD_BIN") {
        return bin.into();
    }
    let root = Path::new(OLD_ROOT);
    let bin = root.join("target/release/masternode");
    if bin.exists() {
        return bin;
    }
    eprintln!("building 0.1.0 ({OLD_COMMIT}) into {OLD_ROOT}: a few minutes, once");
    std::fs::create_dir_all(root).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!("git -C '{repo}' archive {OLD_COMMIT} | tar -x -C '{OLD_ROOT}'"))
        .status()
        .unwrap();
    assert!(unpacked.success(), "git archive {OLD_COMMIT}");
    let built = Command::new("cargo")
        .args(["build", "--release", "--bin", "masternode"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .unwrap();
    assert!(built.success(), "cargo build of {OLD_COMMIT}");
    bin
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    let body = http_get(addr, path, Duration::from_secs(2)).await.ok()?;
    serde_json::from_str(&body).ok()
}

/// `(hash, timestamp_ms)` of block `height` as node `admin` serves it.
async fn block(admin: std::net::SocketAddr, height: u64) -> Option<(String, u64)> {
    let b = get_json(admin, &format!("/blocks/{height}")).await?;
    Some((b["hash"].as_str()?.to_string(), b["timestamp_ms"].as_u64()?))
}

/// Heights every node answered with, sampled every 100 ms while the test runs.
type Samples = Arc<Mutex<Vec<(Instant, Vec<Option<u64>>)>>>;

fn sample_heights(admins: Vec<std::net::SocketAddr>, stop: tokio_util::sync::CancellationToken) -> Samples {
    let samples: Samples = Arc::default();
    let out = samples.clone();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let mut heights = Vec::new();
            for a in &admins {
                heights.push(get_json(*a, "/status").await.and_then(|s| s["height"].as_u64()));
            }
            out.lock().unwrap().push((Instant::now(), heights));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    samples
}

/// The longest time the highest height any node reported stayed the same.
fn longest_stall(samples: &Samples) -> Duration {
    let samples = samples.lock().unwrap();
    let mut longest = Duration::ZERO;
    let mut since: Option<(Instant, u64)> = None;
    for (at, heights) in samples.iter() {
        let Some(top) = heights.iter().flatten().max().copied() else { continue };
        match since {
            Some((_, h)) if h == top => {}
            _ => since = Some((*at, top)),
        }
        if let Some((from, _)) = since {
            longest = longest.max(*at - from);
        }
    }
    longest
}

struct Replacement {
    node: usize,
    stopped_in: Duration,
    caught_up_in: Duration,
    height_at_stop: u64,
    height_at_start: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs 0.1.0 built (a few minutes, once): cargo test --release --test upgrade -- --ignored --nocapture"]
async fn rolling_upgrade_from_0_1_0_keeps_the_chain_running_and_its_history() {
    let old = old_release();
    let old_version = Command::new(&old).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&old_version.stdout).trim(), "masternode 0.1.0");

    let mut net = Net::new(4);
    net.set_block_interval(INTERVAL_MS);
    net.bins = vec![old.clone(); 4];
    for i in 0..4 {
        net.start(i);
    }
    net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30), "the 0.1.0 network meshes").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while net.status(0).await.map_or(0, |s| s.height) < 10 {
        assert!(Instant::now() < deadline, "0.1.0 produces blocks\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = net.status(0).await.unwrap().height;
    let mut history = Vec::new();
    for h in 1..=before {
        history.push(block(net.admins[0], h).await.unwrap().0);
    }

    let stop = tokio_util::sync::CancellationToken::new();
    let samples = sample_heights(net.admins.clone(), stop.clone());
    let first_height = before;
    let mut replacements = Vec::new();
    for i in 0..4 {
        let others: Vec<usize> = (0..4).filter(|&j| j != i).collect();
        let height_at_stop = net.status(i).await.unwrap().height;
        let t0 = Instant::now();
        // The runbook: stop, install, start on the same data dir.
        assert_eq!(net.stop(i, Duration::from_secs(10)).await, Some(0), "node {} stops cleanly", i + 1);
        let stopped_in = t0.elapsed();
        net.bins[i] = PathBuf::from(BIN);
        tokio::time::sleep(DOWN_FOR).await;
        net.start(i);
        // Up on the data dir it had (not synced from nothing), meshed with all
        // three, and at the others' height.
        let height_at_start = loop {
            if let Some(s) = net.status(i).await {
                break s.height;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "node {} answers\n{}", i + 1, net.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(height_at_start >= height_at_stop, "node {} kept its chain: {height_at_start}", i + 1);
        loop {
            let me = net.status(i).await;
            let mut top = 0;
            for &j in &others {
                top = top.max(net.status(j).await.map_or(0, |s| s.height));
            }
            if me.as_ref().is_some_and(|s| s.peers.len() == 3 && s.height + 1 >= top) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "node {} catches up\n{}", i + 1, net.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replacements.push(Replacement {
            node: i,
            stopped_in,
            caught_up_in: t0.elapsed(),
            height_at_stop,
            height_at_start,
        });
        let log = net.log(i);
        assert!(log.contains("migrated from format 2"), "node {} migrated its data dir in place:\n{log}", i + 1);
        // Each link's wire version: 4 between nodes of this release, 3 with 0.1.0.
        let s = net.status(i).await.unwrap();
        for p in &s.peers {
            let j = net.admins.iter().position(|a| a.ip().to_string() == p.addr.split(':').next().unwrap()).unwrap();
            let want = if j < i { 4 } else { 3 };
            assert_eq!(p.wire_version, Some(want), "node {} to node {}: {s:?}", i + 1, j + 1);
        }
    }
    // A few more blocks on this release alone.
    let end_target = net.status(0).await.unwrap().height + 6;
    let deadline = Instant::now() + Duration::from_secs(30);
    while net.status(0).await.map_or(0, |s| s.height) < end_target {
        assert!(Instant::now() < deadline, "blocks after the upgrade\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let stall = longest_stall(&samples);

    // History: the blocks of 0.1.0 are the same on every node.
    for i in 0..4 {
        for (k, hash) in history.iter().enumerate() {
            let h = k as u64 + 1;
            assert_eq!(&block(net.admins[i], h).await.unwrap().0, hash, "node {} block {h}", i + 1);
        }
    }
    // Every node on this release, at one tip.
    let statuses: Vec<_> = net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(10), "the new mesh").await;
    let low = statuses.iter().map(|s| s.height).min().unwrap();
    let tip_hash = block(net.admins[0], low).await.unwrap().0;
    for (i, s) in statuses.iter().enumerate() {
        assert!(s.peers.iter().all(|p| p.wire_version == Some(4)), "node {} speaks 4 to all: {s:?}", i + 1);
        assert_eq!(block(net.admins[i], low).await.unwrap().0, tip_hash, "node {} at height {low}", i + 1);
    }
    // The chain's own record of the gaps: header timestamps while nodes were replaced.
    let end = low;
    let mut longest_gap = (0u64, 0u64);
    let mut prev = block(net.admins[0], first_height).await.unwrap().1;
    for h in first_height + 1..=end {
        let ts = block(net.admins[0], h).await.unwrap().1;
        if ts - prev > longest_gap.0 {
            longest_gap = (ts - prev, h);
        }
        prev = ts;
    }
    let errors: Vec<String> = (0..4)
        .flat_map(|i| {
            net.log(i)
                .lines()
                .filter(|l| l.contains("\"ERROR\""))
                .map(|l| format!("node{}: {l}", i + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    let warns: Vec<String> = (0..4)
        .flat_map(|i| {
            net.log(i)
                .lines()
                .filter(|l| l.contains("\"WARN\""))
                .map(|l| format!("node{}: {l}", i + 1))
                .collect::<Vec<_>>()
        })
        .collect();

    println!(
        "rolling upgrade 0.1.0 -> {}: 4 nodes, {INTERVAL_MS} ms blocks, each down {} ms",
        env!("CARGO_PKG_VERSION"),
        DOWN_FOR.as_millis()
    );
    for r in &replacements {
        println!(
            "  node {}: stopped in {} ms, back and caught up {} ms after the stop; height {} at the stop, {} at the start",
            r.node + 1,
            r.stopped_in.as_millis(),
            r.caught_up_in.as_millis(),
            r.height_at_stop,
            r.height_at_start
        );
    }
    println!(
        "  heights: {first_height} before the first replacement, {end} at the end; longest gap between blocks {} ms (block {}), longest wall-clock stall of the highest height {} ms",
        longest_gap.0,
        longest_gap.1,
        stall.as_millis()
    );
    println!(
        "  history: blocks 1..={before} unchanged on all four; block 1 {}, block {before} {}, block {end} {tip_hash}",
        history[0],
        history[before as usize - 1]
    );
    println!("  warn lines: {}, error lines: {}", warns.len(), errors.len());
    for w in warns.iter().chain(&errors) {
        println!("    {w}");
    }
    assert!(longest_gap.0 <= MAX_GAP_MS, "a gap of {} ms at block {}", longest_gap.0, longest_gap.1);
    assert!(errors.is_empty(), "no node logged an error");
}
