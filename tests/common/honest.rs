//! Three honest in-process nodes and a hostile member: the block rate and
//! submission latency before and while it misbehaves.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use masternode::node::Node;

use super::common::*;

/// What the honest nodes of an in-process network do while a hostile member
/// misbehaves for `dur`: their block rate before and during, and the slowest
/// transaction submission.
pub struct Figures {
    pub before: f64,
    pub during: f64,
    pub slowest_tx: Duration,
    /// Slow-peer disconnects as `/status` shows them, all honest nodes.
    pub status_slow: u64,
    /// One honest node's `/metrics`.
    pub metrics: String,
}

pub async fn rate(nodes: &[&Node], window: Duration) -> f64 {
    let before = heights(nodes);
    tokio::time::sleep(window).await;
    let after = heights(nodes);
    before.iter().zip(&after).map(|(b, a)| (a - b) as f64 / window.as_secs_f64()).fold(f64::MAX, f64::min)
}

/// Submits transactions to the honest nodes while `during` runs.
pub async fn under_load(nodes: &[Arc<Node>], during: impl std::future::Future<Output = f64>) -> (f64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let load = {
        let nodes = nodes.to_vec();
        let stop = stop.clone();
        let slowest = slowest.clone();
        tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let t = Instant::now();
                // 256-byte transactions, as the benchmarks use.
                let mut tx = format!("load-{k}-{}", rand_incarnation()).into_bytes();
                tx.resize(256, b'.');
                let _ = nodes[(k % 3) as usize].submit(tx).await;
                slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                if k % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let r = during.await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    (r, Duration::from_micros(slowest.load(Ordering::Relaxed)))
}

/// Three honest nodes (1..=3) and a hostile member (0, the lowest address, so the
/// honest nodes wait for it and never dial it).
pub async fn honest_three(spec: &Spec) -> Vec<Arc<Node>> {
    let mut transport = fast_transport();
    transport.passive_wait = Duration::from_secs(600);
    let mut nodes = Vec::new();
    for i in 1..4 {
        nodes.push(Arc::new(spec.start(i, transport.clone()).await));
    }
    eventually("honest mesh", Duration::from_secs(20), || nodes.iter().all(|n| n.peers().connected().len() == 2)).await;
    eventually("first blocks", Duration::from_secs(20), || nodes.iter().all(|n| n.height() >= 2)).await;
    nodes
}

pub async fn with_hostile(
    what: &str,
    misbehave: impl FnOnce(Spec, Arc<AtomicBool>) -> tokio::task::JoinHandle<()>,
) -> Figures {
    with_hostile_loaded(what, true, misbehave).await
}

/// The block rate over `window`, under a transaction load if `load`, and the
/// slowest submission.
pub async fn measure(nodes: &[Arc<Node>], refs: &[&Node], load: bool, window: Duration) -> (f64, Duration) {
    if load {
        under_load(nodes, rate(refs, window)).await
    } else {
        (rate(refs, window).await, Duration::ZERO)
    }
}

/// As [`with_hostile`]; `load` says whether transactions are submitted meanwhile.
pub async fn with_hostile_loaded(
    what: &str,
    load: bool,
    misbehave: impl FnOnce(Spec, Arc<AtomicBool>) -> tokio::task::JoinHandle<()>,
) -> Figures {
    let spec = Spec::new(4);
    let nodes = honest_three(&spec).await;
    let refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let (before, _) = measure(&nodes, &refs, load, Duration::from_secs(8)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let spec_copy = Spec {
        net: spec.net,
        dir: tempfile::tempdir().unwrap(),
        ids: spec.ids.clone(),
        members: spec.members.clone(),
        name: spec.name.clone(),
    };
    let hostile = misbehave(spec_copy, stop.clone());
    let (during, slowest_tx) = measure(&nodes, &refs, load, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    hostile.abort();
    let slow: u64 = nodes.iter().map(|n| counter(&n.peers().counters().slow_peer_disconnects)).sum();
    eprintln!("{what}: blocks/s before {before:.2}, during {during:.2}; slowest tx {slowest_tx:?}; slow-peer disconnects {slow}");
    let status_slow = nodes.iter().map(|n| n.status().counters.slow_peer_disconnects).sum();
    let metrics = nodes[0].metrics();
    let f = Figures { before, during, slowest_tx, status_slow, metrics };
    for n in nodes {
        if let Ok(n) = Arc::try_unwrap(n) {
            n.stop().await;
        }
    }
    f
}

pub fn assert_unharmed(what: &str, f: &Figures) {
    assert!(f.during >= 0.8 * f.before, "{what}: {:.2} blocks/s during vs {:.2} before", f.during, f.before);
    assert!(f.slowest_tx <= Duration::from_secs(2), "{what}: a submission took {:?}", f.slowest_tx);
}
