//! kill -9 of producing daemons at random moments, ten times over: real
//! processes, their stores checked in full at the end.

use std::time::{Duration, Instant};

use crate::common::procs::Net;

/// kill -9 of producing nodes at random moments, ten times. Each restart opens
/// its store cleanly and catches up; no node ever sees a double signature; every
/// node ends on one chain with valid certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_ten_times_never_forks_or_double_signs() {
    let mut net = Net::new(4);
    for i in 0..4 {
        net.start(i);
    }
    net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(20), "initial mesh").await;
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(300 + rand(2000))).await;
        let victim = rand(4) as usize;
        net.kill9(victim);
        tokio::time::sleep(Duration::from_millis(rand(1500))).await;
        net.start(victim);
        let start = Instant::now();
        while net.status(victim).await.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "round {round}: node {victim} did not come back\n{}",
                net.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Everyone catches up and the chain goes on.
    let mut top = 0;
    for i in 0..4 {
        top = top.max(net.status(i).await.unwrap().height);
    }
    let start = Instant::now();
    loop {
        let mut hs = Vec::new();
        for i in 0..4 {
            hs.push(net.status(i).await.map_or(0, |s| s.height));
        }
        if hs.iter().all(|h| *h >= top + 2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no catch-up: {hs:?} (top {top})\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop cleanly, then check every store in full.
    for i in 0..4 {
        net.signal(i, "TERM");
    }
    for p in net.procs.iter_mut().flatten() {
        assert_eq!(p.wait().unwrap().code(), Some(0));
    }
    for i in 0..4 {
        let log = std::fs::read_to_string(net.dir.path().join(format!("node{}.log", i + 1))).unwrap();
        for line in log.lines() {
            assert!(!line.contains("misbehaviour"), "node{}: {line}", i + 1);
        }
    }
    let network = masternode::config::Network::load(&net.dir.path().join("network.toml")).unwrap();
    let stores: Vec<_> = (1..=4)
        .map(|i| masternode::chain::Store::open(&net.dir.path().join(format!("node{i}/data"))).unwrap())
        .collect();
    let hs = crate::common::check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    assert!(hs.iter().all(|h| *h >= top + 2), "{hs:?}");
}
