//! A member that multiplies its own bytes through compact proposals, against
//! honest daemons running as processes of their own.
//!
//! The hostile member (`node1`, the lowest address, which the honest nodes wait
//! for and never dial) gossips one 64 KiB transaction and then sends, for its
//! own rounds, compact proposals of 20,000 ids that all name that one
//! transaction, or all name one 4 MiB transaction it gives only in answer to
//! `GetTxs`, or name the 4 MiB one once among ids nobody has. Rebuilt as asked,
//! each would copy a transaction into 20,000 places: 1.25 GiB, or 80 GB, at
//! every honest node. The honest nodes refuse them and count the proposer's
//! misbehaviour, their peak memory grows by less than 64 MiB, and the chain
//! goes on.
//!
//! The honest nodes are daemons (child processes) so that each one's peak
//! resident memory (`VmHWM` in `/proc/<pid>/status`) is its own and no other
//! test's. A watchdog kills them as soon as one grows past the bound, so a
//! node that does copy (the code before these refusals) fails the test within
//! moments instead of taking the machine's memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::procs::Net;
use crate::common::*;
use masternode::chain::proposal_sign_bytes;
use masternode::chain::CompactProposal;
use masternode::chain::{tx_hash, tx_root_of_ids, Hash, Header, MAX_BLOCK_TXS};
use masternode::chain::{Message, GET_TXS_LIMIT, TXS_LIMIT};
use masternode::codec;

/// Peak memory an honest node may gain while attacked.
const BOUND: u64 = 64 * 1024 * 1024;

/// The honest nodes wait for the hostile member to dial them (it has the
/// lowest address) and never dial it themselves.
const TRANSPORT: &str = "\n[transport]\nkeepalive_ms = 500\nidle_timeout_ms = 3000\npassive_wait_ms = 600000\nhandshake_timeout_ms = 2000\n";

/// Peak resident memory of process `pid`, in bytes.
fn peak_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn metric(net: &Net, i: usize, name: &str) -> u64 {
    let text = masternode::admin::http_get(net.admins[i], "/metrics", Duration::from_secs(5)).await.unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
    line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

async fn heights(net: &Net, nodes: &[usize]) -> Vec<u64> {
    let mut out = Vec::new();
    for &i in nodes {
        out.push(net.status(i).await.map_or(0, |s| s.height));
    }
    out
}

/// The three ways of naming one transaction in many places.
#[derive(Clone, Copy)]
enum Lie {
    /// 20,000 times the gossiped 64 KiB transaction.
    RepeatGossiped,
    /// 20,000 times the 4 MiB transaction, only given in answer to `GetTxs`.
    RepeatAnswered,
    /// The 4 MiB transaction once, among ids nobody has: fetched, and answered
    /// with a transaction over the mempool's limit.
    OversizeAnswer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_proposals_that_multiply_one_transaction_cost_the_honest_nodes_nothing() {
    let spec = Spec::new(4);
    let mut net = Net::of_spec(&spec, TRANSPORT);
    let honest = [1, 2, 3];
    for i in honest {
        net.start(i);
    }
    net.until_peers(&honest, 2, Duration::from_secs(60), "honest mesh").await;
    let start = Instant::now();
    while heights(&net, &honest).await.iter().any(|&h| h < 2) {
        assert!(start.elapsed() < Duration::from_secs(60), "no first blocks\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let hostile = Hostile::new(&spec, 0);
    let mut conns = Vec::new();
    for i in honest {
        conns.push(hostile.connect(&spec, i).await);
    }
    net.until_peers(&honest, 3, Duration::from_secs(30), "the hostile member connected").await;

    // The gossiped transaction, at the mempool's limit, and one of 4 MiB that
    // fits only a `Txs` frame.
    let gossiped = vec![0x5a; 64 * 1024];
    let answered = vec![0xa5; TXS_LIMIT - 16];
    let (gossiped_id, answered_id) = (tx_hash(&gossiped), tx_hash(&answered));
    let mut unis = Vec::new();
    for c in &conns {
        let mut uni = c.open_uni().await.unwrap();
        uni.write_all(&codec::encode(&Message::Tx(gossiped.clone()))).await.unwrap();
        unis.push(uni);
    }
    // Answers every `GetTxs` with the big transaction (and the gossiped one)
    // wherever they are asked for.
    let answerers: Vec<_> = conns
        .iter()
        .map(|c| {
            let c = c.clone();
            let (gossiped, answered) = (gossiped.clone(), answered.clone());
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = c.accept_bi().await {
                    let Ok(body) = recv.read_to_end(GET_TXS_LIMIT + 16).await else { continue };
                    let Ok(Message::GetTxs { ids, .. }) = codec::decode_single::<Message>(&body) else { continue };
                    let mut txs = Vec::new();
                    if ids.contains(&answered_id) {
                        txs.push(answered.clone());
                    } else if ids.contains(&gossiped_id) {
                        txs.push(gossiped.clone());
                    }
                    let frame = codec::encode(&Message::Txs(txs));
                    tokio::spawn(async move {
                        let _ = send.write_all(&frame).await;
                        let _ = send.finish();
                    });
                }
            })
        })
        .collect();

    // The watchdog: peak memory of each honest daemon against its figure
    // before the attack, every 10 ms; past the bound, every one is killed.
    let pids: Vec<u32> = honest.iter().map(|&i| net.pid(i).unwrap()).collect();
    let before: Vec<u64> = pids.iter().map(|&p| peak_memory(p).unwrap()).collect();
    let peaks = Arc::new(Mutex::new(before.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (pids, before, peaks, stop) = (pids.clone(), before.clone(), peaks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now: Vec<u64> = pids.iter().map(|&p| peak_memory(p).unwrap_or(0)).collect();
                let mut peaks = peaks.lock().unwrap();
                for (peak, n) in peaks.iter_mut().zip(&now) {
                    *peak = (*peak).max(*n);
                }
                if peaks.iter().zip(&before).any(|(p, b)| p.saturating_sub(*b) >= BOUND) {
                    for p in &pids {
                        let _ = std::process::Command::new("kill").args(["-9", &p.to_string()]).status();
                    }
                    return true;
                }
                drop(peaks);
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };

    let me = &spec.ids[0];
    let network_id = spec.network().id;
    let mut sorted: Vec<_> = (0..4).map(|i| spec.id(i)).collect();
    sorted.sort();
    let index = sorted.iter().position(|id| *id == me.id()).unwrap() as u64;
    let unknown: Vec<Hash> =
        (0..MAX_BLOCK_TXS as u32 - 1).map(|i| tx_hash(&[b"nobody has ", &i.to_be_bytes()[..]].concat())).collect();
    let lies = [Lie::RepeatGossiped, Lie::RepeatAnswered, Lie::OversizeAnswer];
    let attack_heights = heights(&net, &honest).await;
    let attack = Instant::now();
    let mut sent = 0;
    let mut batch = 0usize;
    while attack.elapsed() < Duration::from_secs(15) && !watchdog.is_finished() {
        let Some(status) = net.status(1).await else { break };
        let height = status.height + 1;
        let prev_hash = status.tip_hash.as_deref().and_then(masternode::identity::decode_hex).unwrap_or_default();
        let prev_hash = Hash(prev_hash.try_into().unwrap_or([0; 32]));
        let mut frames = bytes::BytesMut::new();
        // proposer(h, r) = sorted[(h + r) mod n]: the hostile member's rounds at
        // this height and the next, up to 12 rounds ahead.
        for (k, h) in [height, height + 1].into_iter().enumerate() {
            let first = ((index + 4 - h % 4) % 4) as u32;
            for (j, round) in (first..12).step_by(4).enumerate() {
                let ids = match lies[(batch + j + k) % 3] {
                    Lie::RepeatGossiped => vec![gossiped_id; MAX_BLOCK_TXS],
                    Lie::RepeatAnswered => vec![answered_id; MAX_BLOCK_TXS],
                    Lie::OversizeAnswer => [vec![answered_id], unknown.clone()].concat(),
                };
                let header = Header {
                    height: h,
                    round,
                    prev_hash,
                    timestamp_ms: now_ms(),
                    proposer: me.id(),
                    tx_root: tx_root_of_ids(ids.len(), ids.iter().copied()),
                    changes: vec![],
                };
                let bytes = proposal_sign_bytes(&network_id, h, round, header.hash(), None, me.id());
                let signature = me.sign(&bytes);
                let cp =
                    CompactProposal { height: h, round, header, ids, valid_round: None, proposer: me.id(), signature };
                codec::encode_into(&Message::CompactProposal(cp), &mut frames);
                sent += 1;
            }
        }
        for uni in &mut unis {
            if uni.write_all(&frames).await.is_err() {
                break;
            }
        }
        batch += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = heights(&net, &honest).await;
    stop.store(true, Ordering::Relaxed);
    let killed = watchdog.join().unwrap();
    let peaks = peaks.lock().unwrap().clone();
    let grown: Vec<u64> = peaks.iter().zip(&before).map(|(p, b)| p - b).collect();
    eprintln!(
        "{sent} compact proposals in {:?}; peak memory before {:?} MiB, grown by {:?} KiB; heights {attack_heights:?} -> {during:?}",
        attack.elapsed(),
        before.iter().map(|b| b / (1024 * 1024)).collect::<Vec<_>>(),
        grown.iter().map(|g| g / 1024).collect::<Vec<_>>(),
    );
    assert!(!killed, "an honest node's peak memory grew by {grown:?} bytes, past {BOUND}: killed\n{}", net.logs());
    for (g, i) in grown.iter().zip(honest) {
        assert!(*g < BOUND, "node {i}: peak memory grew by {g} bytes");
    }

    for i in honest {
        let refused = metric(&net, i, "masternode_misbehaviour_total").await;
        assert!(refused > 0, "node {i} counts the proposer's misbehaviour");
        // One warn line per culprit and kind, however many proposals came.
        let log = net.log(i);
        let warned = log.lines().filter(|l| l.contains("WARN") && l.contains("again (first at #0)")).count();
        assert_eq!(warned, 1, "node {i}: one warning for the repeated ids\n{}", net.logs());
        let oversize = log.lines().filter(|l| l.contains("WARN") && l.contains("of the answer has")).count();
        assert!(oversize <= 1, "node {i}: {oversize} warnings for the oversize answer");
    }
    let oversize_seen = honest.iter().any(|&i| net.log(i).contains("of the answer has"));
    assert!(oversize_seen, "an answer with a transaction over the limit was fetched and refused\n{}", net.logs());
    // The chain went on during the attack, and goes on after it.
    assert!(during.iter().zip(&attack_heights).all(|(d, a)| d > a), "heights {attack_heights:?} -> {during:?}");
    let target = during.iter().max().unwrap() + 3;
    let start = Instant::now();
    while heights(&net, &honest).await.iter().any(|&h| h < target) {
        assert!(start.elapsed() < Duration::from_secs(30), "the chain does not go on\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in &conns {
        c.close(0u32.into(), b"");
    }
    for a in answerers {
        a.abort();
    }
}
