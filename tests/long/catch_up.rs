//! A lagging node catches up through any chain the network could have committed,
//! whatever its peers claim: blocks full of tiny transactions, and a Byzantine
//! sync peer that announces a far tip and answers with one block just before the
//! request timeout.

use std::time::{Duration, Instant};

use crate::common::*;
use masternode::chain::Message;
use masternode::codec;
use masternode::net::TestHooks;
use masternode::node::Node;

/// Three members commit blocks of up to 20,000 ten-byte transactions; a fourth
/// starts with an empty data dir. Before sync responses were sized by their
/// encoding, every response failed to decode at the receiver and it stayed at
/// height 0 for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_node_catches_up_through_blocks_of_tiny_transactions() {
    let spec = Spec::new(4);
    let transport = fast_transport();
    // Blocks four seconds apart: the submissions (12,000 a second on a loaded
    // machine, each waiting for its verdict; under 6,000 beside the other long
    // tests and a release build) fill them to the block's count limit, which
    // is what the late node must get through.
    let network = spec.network_paced(&spec.name, &spec.members, 4_000);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(spec.start_with(i, network.clone(), transport.clone(), TestHooks::default()).await);
    }
    eventually("three nodes commit", Duration::from_secs(30), || nodes.iter().all(|n| n.height() >= 1)).await;
    // 70,000 unique ten-byte transactions, as fast as the mempools take them:
    // transaction k to node k % 3, the three nodes' submissions under way at
    // once (each waits for its producer's verdict).
    let deadline = Instant::now() + Duration::from_secs(120);
    let submit_to = |i: usize| {
        let node = &nodes[i];
        async move {
            let mut k = i as u64;
            while k < 70_000 {
                let mut tx = k.to_be_bytes().to_vec();
                tx.extend_from_slice(b"tx");
                match node.submit(tx).await {
                    Ok(_) => k += 3,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                assert!(Instant::now() < deadline, "node {i} took only {} transactions", k / 3);
            }
        }
    };
    tokio::join!(submit_to(0), submit_to(1), submit_to(2));
    let target = {
        let refs: Vec<&Node> = nodes.iter().collect();
        eventually("every transaction committed", Duration::from_secs(120), || {
            let store = refs[0].store();
            let h = refs[0].height();
            (1..=h).filter_map(|i| store.block(i).ok().flatten()).map(|c| c.block.txs.len()).sum::<usize>() >= 70_000
        })
        .await;
        refs[0].height()
    };
    let biggest =
        (1..=target).filter_map(|h| nodes[0].store().block(h).ok().flatten()).map(|c| c.block.txs.len()).max().unwrap();
    assert!(biggest >= 15_000, "the chain has a block of {biggest} transactions");

    let started = Instant::now();
    let late = spec.start_with(3, network.clone(), transport.clone(), TestHooks::default()).await;
    eventually("the late node catches up", Duration::from_secs(60), || late.height() >= target).await;
    let took = started.elapsed();
    eprintln!("caught up {target} heights (largest block {biggest} txs) in {took:?}");
    assert!(took < Duration::from_secs(30), "caught up after {took:?}");
    nodes.push(late);
    let stores: Vec<_> = nodes.iter().map(|n| n.store().clone()).collect();
    check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    stop_all(nodes).await;
}

/// A member announces a far tip and answers each sync request with a single
/// (real) block, just before the request timeout. The late node hedges slow
/// requests with other peers and drops a dripping one, so it catches up within a
/// few seconds anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_sync_peer_delays_catch_up_by_at_most_a_few_seconds() {
    init_logs();
    let spec = Spec::new(7);
    // Small batches, so that catching up takes several requests.
    let LateBesideHostile { mut honest, late, conn, started, hostile: _hostile } =
        late_beside_hostile(&spec, 12, 3).await;
    let source = honest[0].store().clone();
    let dripper = tokio::spawn(async move {
        let announcer = {
            let conn = conn.clone();
            tokio::spawn(async move {
                let Ok(mut uni) = conn.open_uni().await else { return };
                let tip = codec::encode(&Message::Tip {
                    height: 1_000_000,
                    hash: masternode::chain::Hash([7; 32]),
                    time_ms: 0,
                });
                // At wire 4 a peer is asked once it said what it holds.
                let holds = codec::encode(&Message::Holds { earliest: 1, height: 1_000_000 });
                while uni.write_all(&tip).await.is_ok() && uni.write_all(&holds).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let source = source.clone();
            tokio::spawn(async move {
                let Ok(bytes) = recv.read_to_end(1024).await else { return };
                let Ok(Message::GetBlocks { from, .. }) = codec::decode_single::<Message>(&bytes) else { return };
                tokio::time::sleep(Duration::from_millis(9_500)).await;
                let one: Vec<_> = source.block(from).ok().flatten().into_iter().collect();
                let _ = send.write_all(&codec::encode(&Message::Blocks(one))).await;
                let _ = send.finish();
            });
        }
        announcer.abort();
    });
    let target = honest.iter().map(|n| n.height()).max().unwrap();
    eventually("the late node catches up despite the dripper", Duration::from_secs(60), || late.height() >= target)
        .await;
    let took = started.elapsed();
    eprintln!("caught up {target} heights in {took:?} with a dripping peer");
    assert!(took < Duration::from_secs(5), "caught up after {took:?}");
    // Its one-block answers arrive later and count as drips.
    eventually("the dripper is noticed", Duration::from_secs(15), || {
        late.metrics()
            .lines()
            .any(|l| l.starts_with("masternode_sync_failures_total{reason=\"drip\"} ") && !l.ends_with(" 0"))
    })
    .await;
    dripper.abort();
    honest.push(late);
    let stores: Vec<_> = honest.iter().map(|n| n.store().clone()).collect();
    check_chains(&spec, &stores.iter().collect::<Vec<_>>());
    stop_all(honest).await;
}
