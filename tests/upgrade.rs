//! The rolling upgrade from 0.1.0 to this release, as the runbook of docs/operating.md does
//! it: four nodes of 0.1.0 (commit 31283ad) on distinct loopback addresses with
//! 500 ms blocks, then one node at a time: stop it (SIGTERM), install this
//! build, start it on the same data dir. Then the rules: an upgrade plan for
//! protocol 4 scheduled with `masternode upgrade`, in force at its height on
//! every node with no gap in the blocks; and a plan for protocol 5 that one
//! node's binary lacks: it stops before the height (exit 3,
//! `upgrade-info.json`, nothing signed there) while the three others go on,
//! and catches up once restarted with a binary that runs it. No release runs
//! protocol 5: the three nodes "upgraded" for it run this build with the
//! rehearsal knob `MASTERNODE_TEST_MAX_PROTOCOL=5` (test builds only), under
//! which version 5 has version 4's rules. Opt-in, as it needs 0.1.0 built:
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
        assert!(
            log.contains("migrated from format 2") && log.contains("migrated from format 3 to 4"),
            "node {} migrated its data dir in place (2 to 3 to 4):\n{log}",
            i + 1
        );
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

    upgrade_plans(&mut net).await;
}

/// Heights of notice the test gives a plan: about 15 s of blocks.
const PLAN_AHEAD: u64 = 30;

/// Runs `masternode ARGS`; exit code, stdout, stderr.
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

async fn upgrade_status(net: &Net, i: usize) -> Option<masternode::admin::UpgradeStatus> {
    masternode::admin::fetch_upgrade(net.admins[i], Duration::from_secs(2)).await.ok()
}

/// Proposes `version` from `height` on at node `proposer` and approves it at
/// the `approvers`, with the CLI, as operators do; every node then reports it
/// scheduled.
async fn schedule(net: &Net, version: u16, height: u64, proposer: usize, approvers: &[usize]) {
    let (v, h) = (version.to_string(), height.to_string());
    let config = |i: usize| net.configs[i].display().to_string();
    let (code, out, err) = cli(&["upgrade", "propose", "--version", &v, "--height", &h, "--config", &config(proposer)]);
    assert_eq!(code, Some(0), "propose on node {}: {out} {err}", proposer + 1);
    for &i in approvers {
        net.until("the proposal reaches the approver", Duration::from_secs(10), || async {
            upgrade_status(net, i)
                .await
                .is_some_and(|u| u.pending.iter().any(|p| p.version == version && p.height == height))
        })
        .await;
        let (code, out, err) = cli(&["upgrade", "approve", "--version", &v, "--height", &h, "--config", &config(i)]);
        assert_eq!(code, Some(0), "approve on node {}: {out} {err}", i + 1);
    }
    net.until("the plan is scheduled at every node", Duration::from_secs(20), || async {
        let mut all = true;
        for i in 0..4 {
            all &= upgrade_status(net, i)
                .await
                .is_some_and(|u| u.schedule.iter().any(|p| p.version == version && p.height == height));
        }
        all
    })
    .await;
}

/// The longest gap between the timestamps of consecutive blocks `from..=to`
/// (node `i`'s copies), and the block after it.
async fn longest_gap_between(net: &Net, i: usize, from: u64, to: u64) -> (u64, u64) {
    let mut longest = (0, from);
    let mut prev = block(net.admins[i], from).await.unwrap().1;
    for h in from + 1..=to {
        let ts = block(net.admins[i], h).await.unwrap().1;
        if ts - prev > longest.0 {
            longest = (ts - prev, h);
        }
        prev = ts;
    }
    longest
}

/// Restarts node `i` (SIGTERM, start) with `env`, and waits until it is meshed
/// and caught up again.
async fn restart_with(net: &mut Net, i: usize, env: &[(&str, &str)]) {
    assert_eq!(net.stop(i, Duration::from_secs(10)).await, Some(0), "node {} stops cleanly", i + 1);
    net.start_with_env(i, env);
    net.until("the restarted node is back", Duration::from_secs(60), || async {
        let mut top = 0;
        for j in (0..4).filter(|&j| j != i) {
            top = top.max(net.height(j).await);
        }
        net.status(i).await.is_some_and(|s| s.peers.len() == 3 && s.height + 1 >= top)
    })
    .await;
}

async fn upgrade_plans(net: &mut Net) {
    // Protocol 4, which every node runs.
    let v4_height = net.height(0).await + PLAN_AHEAD;
    schedule(net, 4, v4_height, 0, &[1, 2]).await;
    let v4_scheduled_at = net.height(0).await;
    net.until("every node past the activation height", Duration::from_secs(60), || async {
        let mut all = true;
        for i in 0..4 {
            all &= net.height(i).await >= v4_height + 5;
        }
        all
    })
    .await;
    for i in 0..4 {
        let u = upgrade_status(net, i).await.unwrap();
        assert_eq!((u.version, u.max_version), (4, 4), "node {} applies protocol 4: {u:?}", i + 1);
        assert!(u.schedule[0].in_force == Some(true) && u.schedule[0].can_run);
        assert!(net.log(i).contains(&format!("protocol 4 in force from height {v4_height} on")), "node {}", i + 1);
    }
    let v4_gap = longest_gap_between(net, 0, v4_height - 5, v4_height + 5).await;
    assert!(v4_gap.0 <= MAX_GAP_MS, "a gap of {} ms at block {} across the activation", v4_gap.0, v4_gap.1);

    // Protocol 5: nodes 1 to 3 get a binary that runs it, node 4 keeps this one.
    const RUNS_5: (&str, &str) = ("MASTERNODE_TEST_MAX_PROTOCOL", "5");
    for i in 0..3 {
        restart_with(net, i, &[RUNS_5]).await;
    }
    let stopping = 3;
    let me = net.status(stopping).await.unwrap().node_id;
    let v5_height = net.height(0).await + PLAN_AHEAD;
    schedule(net, 5, v5_height, 0, &[1, 2]).await;
    let u = upgrade_status(net, stopping).await.unwrap();
    assert!(!u.schedule.iter().find(|p| p.version == 5).unwrap().can_run, "{u:?}");
    let warned = net.status(stopping).await.unwrap().warnings;
    assert!(warned.iter().any(|w| w.contains(&format!("protocol 5 at height {v5_height}"))), "{warned:?}");
    // From the moment the chain's tip is the height before the plan's to
    // node 4's exit.
    let mut at_tip: Option<Instant> = None;
    let waiting = Instant::now();
    let code = loop {
        if let Some(status) = net.procs[stopping].as_mut().unwrap().try_wait().unwrap() {
            net.procs[stopping] = None;
            break status.code();
        }
        if at_tip.is_none() && net.height(0).await + 1 >= v5_height {
            at_tip = Some(Instant::now());
        }
        assert!(waiting.elapsed() < Duration::from_secs(90), "node 4 stops\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stop_took = at_tip.map_or(Duration::ZERO, |t| t.elapsed());
    assert_eq!(code, Some(3), "node 4 exits 3\n{}", net.log(stopping));
    let data = net.dir.path().join("node4").join("data");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("upgrade-info.json")).unwrap()).unwrap();
    assert_eq!((info["name"].as_str(), info["height"].as_u64()), (Some("protocol-5"), Some(v5_height)), "{info}");
    let (stored_tip, last_signed) = {
        let store = masternode::chain::Store::open(&data).unwrap();
        (store.tip().unwrap().unwrap().height, store.last_signed().unwrap().unwrap())
    };
    assert_eq!(stored_tip, v5_height - 1, "node 4 stored the block before the plan's height");
    assert!(last_signed.height < v5_height, "node 4 signed nothing at {v5_height}: {last_signed:?}");
    let log = net.log(stopping);
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains(&format!("stopping before height {v5_height}")), "{}", errors[0]);
    let warned_once =
        format!("the chain switches to protocol 5 at height {v5_height}; this binary runs up to protocol 4");
    let warnings = log.lines().filter(|l| l.contains("\"WARN\"") && l.contains(&warned_once)).count();
    assert_eq!(warnings, 1, "warned once");
    // The three others keep the chain going.
    net.until("the three others past the height", Duration::from_secs(60), || async {
        let mut all = true;
        for i in 0..3 {
            all &= net.height(i).await >= v5_height + 5;
        }
        all
    })
    .await;
    let v5_gap = longest_gap_between(net, 0, v5_height - 5, v5_height + 5).await;
    assert!(v5_gap.0 <= MAX_GAP_MS, "a gap of {} ms at block {} as node 4 stopped", v5_gap.0, v5_gap.1);
    assert_eq!(upgrade_status(net, 0).await.unwrap().version, 5);

    // Node 4 with a binary that runs protocol 5: it catches up and signs again.
    let back = Instant::now();
    net.start_with_env(stopping, &[RUNS_5]);
    let signed_again = loop {
        let top = net.height(0).await;
        let caught_up = net.height(stopping).await + 2 >= top;
        let signers = masternode::admin::http_get(net.admins[0], &format!("/blocks/{top}"), Duration::from_secs(2))
            .await
            .ok()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|b| b["signers"].to_string())
            .unwrap_or_default();
        if caught_up && signers.contains(&me) {
            break top;
        }
        assert!(back.elapsed() < Duration::from_secs(60), "node 4 catches up and signs\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let back_took = back.elapsed();
    println!(
        "  protocol 4: scheduled by block {v4_scheduled_at} for height {v4_height}, in force on all four; longest gap \
         between blocks {}..={} {} ms (block {})",
        v4_height - 5,
        v4_height + 5,
        v4_gap.0,
        v4_gap.1
    );
    println!(
        "  protocol 5 (nodes 1-3 run it, node 4 not): node 4 exited 3 {} ms after node 1's tip reached {}, stored tip {}, \
         last signed height {} round {}; longest gap between blocks {}..={} {} ms (block {}); node 4 restarted \
         with protocol 5 signed block {signed_again} {} ms later",
        stop_took.as_millis(),
        v5_height - 1,
        stored_tip,
        last_signed.height,
        last_signed.round,
        v5_height - 5,
        v5_height + 5,
        v5_gap.0,
        v5_gap.1,
        back_took.as_millis()
    );
}
