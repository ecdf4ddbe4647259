//! A member flooding maximum-size frames delays only itself. In a test binary of
//! its own, so that the process's resident memory is the nodes' of this test alone.

mod common;
#[path = "common/honest.rs"]
mod honest;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use honest::*;
use masternode::chain::Message;
use masternode::chain::Proposal;
use masternode::chain::{tx_root, Block, Header};

/// The hostile member floods proposals of the largest size the gossip stream
/// carries (well-formed, so they are decoded and checked, and refused: it does
/// not lead the round it names). The target's memory stays bounded and the other
/// members' votes still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_flooding_maximum_size_frames_delays_only_itself() {
    masternode::tune_allocator();
    let rss_before = Arc::new(AtomicU64::new(0));
    let rss_peak = Arc::new(AtomicU64::new(0));
    let flooding = Arc::new(AtomicBool::new(false));
    // Resident memory sampled throughout: the highest before the flood (under the
    // same transaction load) is the baseline.
    let sampler = {
        let (before, peak, flooding) = (rss_before.clone(), rss_peak.clone(), flooding.clone());
        tokio::spawn(async move {
            loop {
                let rss = resident_bytes();
                if flooding.load(Ordering::Relaxed) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                } else {
                    before.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // No transaction load here: the stores would grow with it, and the figure is
    // what the flood costs.
    let f = with_hostile_loaded("max-size flood", false, move |spec, stop| {
        tokio::spawn(async move {
            let hostile = Hostile::with_send_window(&spec, 0, 1024 * 1024);
            // Three transactions of 1 MiB: a block at the size limit.
            let txs = vec![vec![0xee; 1024 * 1024 - 64]; 3];
            let block = Block {
                header: Header {
                    height: 1_000,
                    round: 0,
                    prev_hash: masternode::chain::Hash([0; 32]),
                    timestamp_ms: 0,
                    proposer: spec.id(0),
                    tx_root: tx_root(&txs),
                    changes: vec![],
                },
                txs: txs.into_iter().map(Into::into).collect(),
            };
            let frame = Message::Proposal(
                Proposal { height: 1_000, round: 0, block, valid_round: None, proposer: spec.id(0) }
                    .sign(&spec.network().id, &spec.ids[0]),
            )
            .encode()
            .unwrap();
            let victim = 1;
            let conn = hostile.connect(&spec, victim).await;
            // It reads what the victim sends, so it is not dropped as too slow:
            // the flood goes on for the whole minute.
            let reader = conn.clone();
            tokio::spawn(async move {
                if let Ok(mut recv) = reader.accept_uni().await {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                }
            });
            let mut uni = conn.open_uni().await.unwrap();
            // From here on the memory sampled is the flood's. The flooder's own
            // share in this process is its one frame and a 1 MiB send buffer.
            flooding.store(true, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                if uni.write_chunk(frame.clone()).await.is_err() {
                    break;
                }
            }
        })
    })
    .await;
    sampler.abort();
    assert_unharmed("max-size flood", &f);
    let (before, peak) = (rss_before.load(Ordering::Relaxed), rss_peak.load(Ordering::Relaxed));
    eprintln!("resident memory before the flood {} MiB, peak during {} MiB", before >> 20, peak >> 20);
    assert!(peak <= 2 * before, "resident memory {} MiB during the flood, {} MiB before", peak >> 20, before >> 20);
}

/// This process's resident memory (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}
