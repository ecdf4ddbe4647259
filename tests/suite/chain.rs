//! Block production on real nodes: QUIC between 127.x.y.z addresses, fjall on
//! disk, faults injected in the UDP socket. Every test ends with the invariant
//! checker over every node's store.

use std::time::Duration;

use crate::common::*;
use masternode::chain::MempoolLimits;
use masternode::net::Faults;
use masternode::node::{Node, NodeOptions};
use tokio_util::sync::CancellationToken;

const BLOCK_WAIT: Duration = Duration::from_secs(60);

async fn start_all(spec: &Spec, which: &[usize], faults: Option<&std::sync::Arc<Faults>>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for &i in which {
        let hooks = faults.map(faulty).unwrap_or_default();
        nodes.push(spec.start_with(i, spec.network(), fast_transport(), hooks).await);
    }
    nodes
}

fn stores(nodes: &[&Node]) -> Vec<masternode::chain::Store> {
    nodes.iter().map(|n| n.store().clone()).collect()
}

fn check(spec: &Spec, nodes: &[&Node]) -> Vec<u64> {
    let s = stores(nodes);
    check_chains(spec, &s.iter().collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n4_all_up_commits() {
    let spec = Spec::new(4);
    let nodes = start_all(&spec, &[0, 1, 2, 3], None).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually("height 10 on every node", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= 10)).await;
    let hs = check(&spec, &refs);
    assert!(hs.iter().all(|h| *h >= 10));
    let status = nodes[0].status();
    assert_eq!((status.quorum.active, status.quorum.required, status.quorum.met), (4, 3, true));
    assert!(status.tip_hash.is_some());
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n4_one_down_still_commits() {
    let spec = Spec::new(4);
    let nodes = start_all(&spec, &[0, 1, 3], None).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually("height 5 with three of four", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= 5)).await;
    check(&spec, &refs);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n4_two_down_stalls_then_resumes_and_the_restarted_catch_up() {
    let spec = Spec::new(4);
    let mut nodes = start_all(&spec, &[0, 1, 2, 3], None).await;
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        eventually("height 3", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= 3)).await;
    }
    let d = nodes.pop().unwrap();
    let c = nodes.pop().unwrap();
    stop_all(vec![c, d]).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually("survivors see the quorum lost", Duration::from_secs(10), || {
        refs.iter().all(|n| {
            let q = n.status().quorum;
            (q.active, q.required, q.met) == (2, 3, false)
        })
    })
    .await;
    // A block already in flight may still land; after that the height must not move.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = heights(&refs);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(heights(&refs), stalled, "no block with 2 of 4");

    // Restart the two (same keys, same data directories).
    nodes.push(spec.start(2, fast_transport()).await);
    nodes.push(spec.start(3, fast_transport()).await);
    let refs: Vec<&Node> = nodes.iter().collect();
    let target = stalled.iter().max().unwrap() + 3;
    eventually("the chain resumes and everyone catches up", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= target))
        .await;
    check(&spec, &refs);
    stop_all(nodes).await;
}

async fn partition_then_heal(groups: &[&[usize]], majority: Option<&[usize]>) {
    let spec = Spec::new(4);
    let faults = Faults::new();
    let nodes = start_all(&spec, &[0, 1, 2, 3], Some(&faults)).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually("height 2", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= 2)).await;

    let ip_groups: Vec<Vec<std::net::IpAddr>> =
        groups.iter().map(|g| g.iter().map(|&i| spec.addr(i).ip()).collect()).collect();
    let slices: Vec<&[std::net::IpAddr]> = ip_groups.iter().map(|g| g.as_slice()).collect();
    faults.partition(&slices);
    // Connections across the cut die at the idle timeout (3 s).
    eventually("the cut is seen", Duration::from_secs(15), || {
        groups.iter().all(|g| g.iter().all(|&i| refs[i].peers().connected().len() == g.len() - 1))
    })
    .await;
    let at_cut = heights(&refs);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = heights(&refs);
    check(&spec, &refs);
    for g in groups {
        let has_quorum = g.len() >= 3;
        for &i in g.iter() {
            if has_quorum {
                assert!(during[i] > at_cut[i], "node {i} on the majority side goes on: {at_cut:?} -> {during:?}");
            } else {
                assert!(during[i] <= at_cut[i] + 1, "node {i} without a quorum stalls: {at_cut:?} -> {during:?}");
            }
        }
    }
    if let Some(m) = majority {
        eventually("the majority keeps committing", BLOCK_WAIT, || {
            m.iter().all(|&i| refs[i].height() >= during[i] + 2)
        })
        .await;
    }
    faults.heal();
    let target = heights(&refs).into_iter().max().unwrap() + 2;
    eventually("one chain again after healing", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= target)).await;
    eventually("full mesh again", Duration::from_secs(30), || mesh_complete(&refs)).await;
    check(&spec, &refs);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_2_2_stalls_then_heals_onto_one_chain() {
    partition_then_heal(&[&[0, 1], &[2, 3]], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_1_3_majority_goes_on_then_minority_catches_up() {
    partition_then_heal(&[&[0], &[1, 2, 3]], Some(&[1, 2, 3])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_transactions_reach_every_node() {
    let spec = Spec::new(4);
    let nodes = start_all(&spec, &[0, 1, 2, 3], None).await;
    let admin = nodes[0].admin_addr();
    let mut hashes = Vec::new();
    for k in 0..200u32 {
        let tx = format!("transaction number {k:04} {}", "x".repeat(230)).into_bytes();
        let (code, body) = masternode::admin::post_tx(admin, &tx, None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(code, 202, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        hashes.push(v["hash"].as_str().unwrap().to_string());
        assert_eq!(hashes.last().unwrap(), &masternode::chain::tx_hash(&tx).to_hex());
    }
    // Over the size limit: 413.
    let (code, _) =
        masternode::admin::post_tx(admin, &vec![7u8; 70 * 1024], None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, 413);

    let refs: Vec<&Node> = nodes.iter().collect();
    let committed = |n: &Node| {
        let mut found = std::collections::HashSet::new();
        for h in 1..=n.height() {
            if let Some(c) = n.store().block(h).unwrap() {
                for tx in &c.block.txs {
                    found.insert(masternode::chain::tx_hash(tx).to_hex());
                }
            }
        }
        hashes.iter().all(|h| found.contains(h))
    };
    eventually("all 200 committed on every node", BLOCK_WAIT, || refs.iter().all(|n| committed(n))).await;
    check(&spec, &refs);

    // GET /blocks/{height}
    let body = masternode::admin::http_get(admin, "/blocks/1", Duration::from_secs(5)).await.unwrap();
    let block: masternode::admin::BlockInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(block.height, 1);
    assert!(block.signers.len() >= 3);
    assert_eq!(block.hash, nodes[0].store().block(1).unwrap().unwrap().block.hash().to_hex());
    let (code, _) =
        masternode::admin::http_request(admin, "GET", "/blocks/999999", b"", Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, 404);
    stop_all(nodes).await;
}

/// `max_block_txs` in the network file is a rule of every member: given 20
/// transactions at once, the network commits them all in blocks of at most
/// 4, so in at least 5 blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_of_four_transaction_blocks_commits_twenty_in_blocks_of_four_at_most() {
    let spec = Spec::new(4);
    let network = spec.network_with_keys("max_block_txs = 4\n");
    assert_eq!(network.limits().max_block_txs, 4);
    assert_ne!(network.id, spec.network().id, "another network than the one without the key");
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(spec.start_with(i, network.clone(), fast_transport(), Default::default()).await);
    }
    let mut hashes = std::collections::HashSet::new();
    for k in 0..20u32 {
        let tx = format!("transaction {k:03} for blocks of four").into_bytes();
        hashes.insert(nodes[0].submit(tx).await.unwrap());
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    // Heights holding transactions and the most one held, on node `n`.
    let committed = |n: &Node| {
        let (mut found, mut sizes) = (std::collections::HashSet::new(), Vec::new());
        for h in 1..=n.height() {
            if let Some(c) = n.store().block(h).unwrap() {
                found.extend(c.block.txs.iter().map(|tx| masternode::chain::tx_hash(tx)));
                sizes.push(c.block.txs.len());
            }
        }
        (hashes.iter().all(|h| found.contains(h)), sizes)
    };
    eventually("all 20 committed on every node", BLOCK_WAIT, || refs.iter().all(|n| committed(n).0)).await;
    for n in &refs {
        let (_, sizes) = committed(n);
        assert!(sizes.iter().all(|&s| s <= 4), "a block over 4 transactions: {sizes:?}");
        assert!(sizes.iter().filter(|&&s| s > 0).count() >= 5, "20 in blocks of 4 take 5 blocks: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 20, "each committed once: {sizes:?}");
    }
    check_chains_of(&network, &stores(&refs).iter().collect::<Vec<_>>());
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mempool_answers_429() {
    let spec = Spec::new(4);
    // One node alone: no quorum, no blocks, so nothing leaves the mempool. Its
    // clients' share is half of it: 5 transactions.
    let mut cfg = spec.config(0, spec.network(), fast_transport());
    cfg.limits.mempool = MempoolLimits { max_txs: 10, ..Default::default() };
    let node = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
    let mut codes = Vec::new();
    for k in 0..7u8 {
        let (code, _) =
            masternode::admin::post_tx(node.admin_addr(), &[k; 32], None, Duration::from_secs(5)).await.unwrap();
        codes.push(code);
    }
    assert_eq!(codes, [202, 202, 202, 202, 202, 429, 429]);
    let (code, _) =
        masternode::admin::post_tx(node.admin_addr(), &[1; 32], None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, 202, "a duplicate is accepted again (same hash), not counted twice");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_through_delay_and_loss() {
    let spec = Spec::new(4);
    let faults = Faults::new();
    faults.set_delay(Duration::from_millis(40));
    faults.set_loss(0.05);
    let nodes = start_all(&spec, &[0, 1, 2, 3], Some(&faults)).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually("height 5 through 40 ms delay and 5% loss", BLOCK_WAIT, || refs.iter().all(|n| n.height() >= 5)).await;
    assert!(faults.dropped() > 0, "the loss was real");
    let rtt = nodes[0].peers().peers().iter().map(|p| p.rtt).min().unwrap();
    assert!(rtt >= Duration::from_millis(70), "the delay was real: rtt {rtt:?}");
    check(&spec, &refs);
    stop_all(nodes).await;
}

/// A transaction committed, then sent again as a member's gossip (a raw
/// connection of a hostile member, node 0, writing `Tx` frames to every honest
/// node, as a peer that re-sends or whose gossip was held behind a slow link
/// would) and submitted again by a client through the node and `POST /tx`: it
/// is refused everywhere as committed, and after several more blocks every
/// chain holds it once; a node restarted on its data dir refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_sent_again_by_a_member_and_a_client_is_committed_once() {
    use masternode::admin::SubmitError;
    use masternode::chain::{tx_hash, AddError, Message};

    let spec = Spec::new(4);
    let (hostile, honest) = honest_beside_hostile(&spec, 3, 2).await;
    let tx = b"pay bob 5, once".to_vec();
    let id = tx_hash(&tx);
    honest[0].submit(tx.clone()).await.unwrap();
    // The heights of the blocks holding it, at node `n`.
    let holding = |n: &Node| -> Vec<u64> {
        (1..=n.height())
            .filter(|h| n.store().block(*h).unwrap().is_some_and(|c| c.block.txs.iter().any(|t| tx_hash(t) == id)))
            .collect()
    };
    eventually("the transaction committed at every honest node", BLOCK_WAIT, || {
        honest.iter().all(|n| !holding(n).is_empty())
    })
    .await;
    let height = holding(&honest[0])[0];

    let mut frames = bytes::BytesMut::new();
    for _ in 0..3 {
        masternode::codec::encode_into(&Message::Tx(tx.clone()), &mut frames);
    }
    let mut conns = Vec::new();
    for victim in 1..=3 {
        let conn = hostile.connect(&spec, victim).await;
        let mut uni = conn.open_uni().await.unwrap();
        uni.write_all(&frames).await.unwrap();
        conns.push((conn, uni));
    }
    for n in &honest {
        match n.submit(tx.clone()).await {
            Err(SubmitError::Refused(AddError::Committed { id: refused, height: at })) => {
                assert_eq!((refused, at), (id, height))
            }
            other => panic!("a committed transaction submitted again: {other:?}"),
        }
        let (code, body) = masternode::admin::post_tx(n.admin_addr(), &tx, None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(code, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((answer["hash"].as_str(), answer["committed_height"].as_u64()), (Some(&*id.to_hex()), Some(height)));
    }
    let refused = |n: &Node, share: &str| {
        let prefix = format!("masternode_mempool_committed_refused_total{{share=\"{share}\"}} ");
        let metrics = n.metrics();
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    eventually("the member's copies refused at every honest node", BLOCK_WAIT, || {
        honest.iter().all(|n| refused(n, "members") >= 1)
    })
    .await;
    for n in &honest {
        assert_eq!(refused(n, "local"), 2, "Node::submit and POST /tx");
    }
    let target = honest.iter().map(|n| n.height()).max().unwrap() + 4;
    eventually("four more blocks", BLOCK_WAIT, || honest.iter().all(|n| n.height() >= target)).await;
    for (i, n) in honest.iter().enumerate() {
        assert_eq!(holding(n), [height], "honest node {}: the transaction in one block only", i + 1);
    }
    let refs: Vec<&Node> = honest.iter().collect();
    check(&spec, &refs);
    // Restarted on its data dir, a node still knows the transaction is committed.
    let mut honest = honest;
    honest.remove(0).stop().await;
    let restarted = spec.start(1, beside_hostile_transport()).await;
    match restarted.submit(tx.clone()).await {
        Err(SubmitError::Refused(AddError::Committed { height: at, .. })) => assert_eq!(at, height),
        other => panic!("submitted again after a restart: {other:?}"),
    }
    honest.push(restarted);
    drop(conns);
    stop_all(honest).await;
}
