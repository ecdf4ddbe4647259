//! Chaos soak, opt-in:
//!
//!     SOAK_MINUTES=10 cargo test --release --test suite soak:: -- --ignored --nocapture
//!
//! Five nodes as child processes; at random, kill -9 and restart, partitions and
//! packet loss (through the fault-injecting socket, driven by a file each node
//! watches). The invariant checker runs throughout: no two nodes ever hold
//! different blocks at one height, the chain resumes within seconds of a quorum
//! returning, one connection per pair whenever the network is whole; at the end,
//! every store verifies in full (certificates, links) and no node ever saw a
//! double signature. Prints a summary of what it did and saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::procs::Net;

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default, Debug)]
struct Summary {
    kills: u32,
    partitions: u32,
    partitions_seen: u32,
    loss_periods: u32,
    heals: u32,
    heights_checked: u64,
    max_height: u64,
    worst_resume: Duration,
    whole_mesh_checks: u32,
}

/// Block hashes seen so far, by height, across all nodes.
async fn check_no_fork(net: &Net, seen: &mut BTreeMap<u64, String>, summary: &mut Summary) {
    for i in 0..net.admins.len() {
        let Some(status) = net.status(i).await else { continue };
        summary.max_height = summary.max_height.max(status.height);
        let from = seen.keys().next_back().map_or(1, |h| h.saturating_sub(3).max(1));
        for h in from..=status.height {
            let path = format!("/blocks/{h}");
            let Ok(body) = masternode::admin::http_get(net.admins[i], &path, Duration::from_secs(2)).await else {
                continue;
            };
            let Ok(block) = serde_json::from_str::<masternode::admin::BlockInfo>(&body) else { continue };
            match seen.get(&h) {
                Some(hash) => assert_eq!(hash, &block.hash, "fork at height {h}: node{} differs", i + 1),
                None => {
                    seen.insert(h, block.hash);
                    summary.heights_checked += 1;
                }
            }
        }
    }
}

async fn heights(net: &Net) -> Vec<u64> {
    let mut v = Vec::new();
    for i in 0..net.admins.len() {
        v.push(net.status(i).await.map_or(0, |s| s.height));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos soak: minutes long; run with --ignored"]
async fn chaos_soak() {
    let minutes: u64 = std::env::var("SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(10);
    let n = 5;
    let mut net = Net::new(n);
    let faults = net.dir.path().join("faults");
    std::fs::write(&faults, "").unwrap();
    net.env.push(("MASTERNODE_FAULTS_FILE".into(), faults.display().to_string()));
    for i in 0..n {
        net.start(i);
    }
    net.until_peers(&(0..n).collect::<Vec<_>>(), n - 1, Duration::from_secs(30), "initial mesh").await;
    let ips: Vec<String> = net.admins.iter().map(|a| a.ip().to_string()).collect();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let mut seen = BTreeMap::new();
    let mut summary = Summary::default();
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    println!("soak: {minutes} min, seed {seed}");
    while Instant::now() < end {
        match rng.next(3) {
            0 => {
                let victim = rng.next(n as u64) as usize;
                net.kill9(victim);
                tokio::time::sleep(Duration::from_millis(rng.next(3000))).await;
                net.start(victim);
                summary.kills += 1;
            }
            1 => {
                // A random split, 1|4 or 2|3. With five members four are required,
                // so only the four of a 1|4 split go on; a 2|3 split stalls both.
                let cut = 1 + rng.next(2) as usize;
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.next(i as u64 + 1) as usize);
                }
                let (a, b) = order.split_at(cut);
                let side = |g: &[usize]| g.iter().map(|&i| ips[i].clone()).collect::<Vec<_>>().join(",");
                std::fs::write(&faults, format!("partition {}|{}\n", side(a), side(b))).unwrap();
                summary.partitions += 1;
                tokio::time::sleep(Duration::from_secs(5 + rng.next(10))).await;
                // The cut is real: past the idle timeout, a node on the small side
                // sees none of the other side.
                if let Some(s) = net.status(a[0]).await {
                    let other: Vec<String> = b.iter().map(|&i| net.admins[i].ip().to_string()).collect();
                    let across =
                        s.peers.iter().filter(|p| other.iter().any(|ip| p.addr.starts_with(&format!("{ip}:")))).count();
                    assert_eq!(across, 0, "partition not in effect: {s:?}");
                    summary.partitions_seen += 1;
                }
                check_no_fork(&net, &mut seen, &mut summary).await;
                std::fs::write(&faults, "").unwrap();
                summary.heals += 1;
            }
            _ => {
                let loss = 0.01 * (1 + rng.next(10)) as f64;
                let delay_ms = rng.next(60);
                std::fs::write(&faults, format!("loss {loss}\ndelay_ms {delay_ms}\n")).unwrap();
                summary.loss_periods += 1;
                tokio::time::sleep(Duration::from_secs(5 + rng.next(10))).await;
                check_no_fork(&net, &mut seen, &mut summary).await;
                std::fs::write(&faults, "").unwrap();
            }
        }
        // The network is whole again: the chain must resume within seconds and the
        // mesh must settle to one connection per pair.
        let healed = Instant::now();
        let before = heights(&net).await.into_iter().max().unwrap_or(0);
        loop {
            let now = heights(&net).await;
            if now.iter().all(|h| *h > before) {
                break;
            }
            assert!(
                healed.elapsed() < Duration::from_secs(60),
                "chain did not resume: {now:?} (was {before})\n{}",
                net.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        summary.worst_resume = summary.worst_resume.max(healed.elapsed());
        let statuses =
            net.until_peers(&(0..n).collect::<Vec<_>>(), n - 1, Duration::from_secs(60), "mesh whole again").await;
        for s in &statuses {
            let mut ids: Vec<_> = s.peers.iter().map(|p| p.node_id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n - 1, "one connection per pair");
        }
        summary.whole_mesh_checks += 1;
        check_no_fork(&net, &mut seen, &mut summary).await;
    }
    for i in 0..n {
        net.signal(i, "TERM");
    }
    for p in net.procs.iter_mut().flatten() {
        assert_eq!(p.wait().unwrap().code(), Some(0));
    }
    let mut misbehaviour = 0;
    for i in 0..n {
        let log = std::fs::read_to_string(net.dir.path().join(format!("node{}.log", i + 1))).unwrap();
        misbehaviour += log.lines().filter(|l| l.contains("misbehaviour")).count();
    }
    let network = masternode::config::Network::load(&net.dir.path().join("network.toml")).unwrap();
    let stores: Vec<_> = (1..=n)
        .map(|i| masternode::chain::Store::open(&net.dir.path().join(format!("node{i}/data"))).unwrap())
        .collect();
    let final_heights = crate::common::check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    println!("soak summary: {summary:#?}");
    println!("final heights {final_heights:?}; misbehaviour lines {misbehaviour}");
    assert_eq!(misbehaviour, 0, "no double signature, no equivocation");
}
