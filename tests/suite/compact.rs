//! Compact proposals on real sockets: a block whose transactions only its
//! proposer holds is fetched by the others and committed; a member that proposes
//! ids nobody holds and withholds them, or ids that do not match its header,
//! changes nothing but its own round; and however fast it proposes, for rounds
//! ahead or left behind, the fetches it causes never outnumber the slots that
//! wait for them. (`tests/long/compact_memory.rs` measures a member that names one
//! transaction in every place, against daemons.)
//!
//! Four members: a hostile key at the lowest address (the honest nodes wait for
//! it and never dial it) and three honest nodes, a quorum on their own.

use std::time::Duration;

use crate::common::*;
use masternode::chain::Message;
use masternode::chain::{proposal_sign_bytes, Vote, VoteKind};
use masternode::chain::{tx_hash, tx_root_of_ids, Hash, Header};
use masternode::chain::{CompactProposal, MAX_WAITING};
use masternode::codec;
use masternode::node::Node;

async fn network() -> (Spec, Hostile, Vec<Node>) {
    let spec = Spec::new(4);
    let (hostile, honest) = honest_beside_hostile(&spec, 3, 2).await;
    (spec, hostile, honest)
}

/// The chain goes on at every honest node, and the nodes agree on it.
async fn goes_on(spec: &Spec, honest: &[Node], what: &str) {
    let target = honest.iter().map(|n| n.height()).max().unwrap() + 3;
    eventually(&format!("{what}: chain goes on"), Duration::from_secs(30), || {
        honest.iter().all(|n| n.height() >= target)
    })
    .await;
    let stores: Vec<_> = honest.iter().map(|n| n.store().clone()).collect();
    check_chains(spec, &stores.iter().collect::<Vec<_>>());
}

/// Transactions gossiped to one honest node only: the others rebuild its blocks
/// by fetching them, and every honest node commits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_only_the_proposer_holds_are_fetched_and_committed() {
    let (spec, hostile, honest) = network().await;
    let conn = hostile.connect(&spec, 1).await;
    let mut uni = conn.open_uni().await.unwrap();
    let txs: Vec<Vec<u8>> = (0..300u32).map(|i| [b"only-at-node-1:".as_slice(), &i.to_be_bytes()].concat()).collect();
    let mut frames = bytes::BytesMut::new();
    for tx in &txs {
        codec::encode_into(&Message::Tx(tx.clone()), &mut frames);
    }
    uni.write_all(&frames).await.unwrap();
    let wanted: std::collections::HashSet<Hash> = txs.iter().map(|t| tx_hash(t)).collect();
    let committed_everywhere = || {
        honest.iter().all(|n| {
            let mut seen = 0;
            for h in 1..=n.height() {
                if let Ok(Some(c)) = n.store().block(h) {
                    seen += c.block.txs.iter().filter(|t| wanted.contains(&tx_hash(t))).count();
                }
            }
            seen == wanted.len()
        })
    };
    eventually("every honest node commits the transactions only node 1 had", Duration::from_secs(60), || {
        committed_everywhere()
    })
    .await;
    goes_on(&spec, &honest, "after fetching").await;
    conn.close(0u32.into(), b"");
    stop_all(honest).await;
}

/// The hostile member's compact proposal of `ids` for `(height, round)`, on
/// `prev_hash`, signed with its key.
fn hostile_proposal(
    spec: &Spec,
    height: u64,
    round: u32,
    prev_hash: Hash,
    ids: Vec<Hash>,
    root: Hash,
) -> CompactProposal {
    let me = &spec.ids[0];
    let header = Header {
        height,
        round,
        prev_hash,
        timestamp_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        proposer: me.id(),
        tx_root: root,
        changes: vec![],
    };
    let bytes = proposal_sign_bytes(&spec.network().id, height, round, header.hash(), None, me.id());
    let signature = me.sign(&bytes);
    CompactProposal { height, round, header, ids, valid_round: None, proposer: me.id(), signature }
}

/// The first round of `height` whose proposer is the hostile member (node 0);
/// it proposes every fourth round from there (proposer(h, r) = sorted[(h + r)
/// mod n]).
fn hostile_round(spec: &Spec, height: u64) -> u32 {
    let mut sorted: Vec<_> = (0..4).map(|i| spec.id(i)).collect();
    sorted.sort();
    let index = sorted.iter().position(|id| *id == spec.id(0)).unwrap() as u64;
    ((index + 4 - height % 4) % 4) as u32
}

/// `held_bytes{what}` in a node's metrics.
fn held(node: &Node, what: &str) -> u64 {
    let prefix = format!("masternode_held_bytes{{what=\"{what}\"}} ");
    let metrics = node.metrics();
    let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}in metrics"));
    line[prefix.len()..].trim().parse().unwrap()
}

/// One honest node stops, so the other two cannot commit and climb the rounds
/// of one height by their timeouts (the hostile member's nil votes make two
/// thirds of each round's votes), while the hostile member proposes, twenty
/// times a second, ids nobody holds for each of its rounds at that height and
/// the next (those the nodes have left behind included) and never answers a
/// request for them. Rounds left behind are not fetched and each fetch ends
/// with its proposal's slot: the `GetTxs` requests in flight never pass
/// MAX_WAITING of them. Once the node is back the chain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_for_withheld_proposals_never_outnumber_the_waiting_slots() {
    let (spec, hostile, mut honest) = network().await;
    let mut unis = Vec::new();
    let mut conns = Vec::new();
    for i in 1..3 {
        let conn = hostile.connect(&spec, i).await;
        unis.push(conn.open_uni().await.unwrap());
        conns.push(conn);
    }
    honest.pop().unwrap().stop().await;
    let ids: Vec<Hash> = (0..1000u32).map(|i| tx_hash(&[b"withheld ", &i.to_be_bytes()[..]].concat())).collect();
    let root = tx_root_of_ids(ids.len(), ids.iter().copied());
    let request = Message::GetTxs { height: u64::MAX, round: u32::MAX, ids: ids.clone() }.encode().unwrap().len();
    let bound = MAX_WAITING as u64 * request as u64;
    let start = std::time::Instant::now();
    let mut most = vec![0u64; honest.len()];
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(12) {
        let height = honest[0].height() + 1;
        let prev_hash = honest[0].tip_hash().unwrap();
        let mut frames = bytes::BytesMut::new();
        // Its nil votes let the two honest nodes reach two thirds of the votes
        // of each round, and so leave it by their timeouts.
        for round in 0..24 {
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                let vote = Vote { kind, height, round, block: None, voter: spec.id(0) };
                codec::encode_into(&Message::Vote(vote.sign(&spec.network().id, &spec.ids[0])), &mut frames);
            }
        }
        for h in [height, height + 1] {
            for round in (hostile_round(&spec, h)..16).step_by(4) {
                let cp = hostile_proposal(&spec, h, round, prev_hash, ids.clone(), root);
                codec::encode_into(&Message::CompactProposal(cp), &mut frames);
                sent += 1;
            }
        }
        for uni in &mut unis {
            uni.write_all(&frames).await.unwrap();
        }
        for (m, n) in most.iter_mut().zip(&honest) {
            let now = held(n, "fetch_requests");
            assert!(now <= bound, "{now} bytes of requests in flight, over {MAX_WAITING} of {request} bytes");
            *m = (*m).max(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rounds: Vec<u64> = honest.iter().map(|n| n.status().round).collect();
    eprintln!(
        "{sent} withheld proposals; rounds reached {rounds:?}; most request bytes in flight {most:?}, bound {bound}"
    );
    assert!(rounds.iter().all(|&r| r >= 4), "the nodes climbed the rounds: {rounds:?}");
    assert!(most.iter().all(|&m| m > 0), "the withheld proposals were fetched");
    // Down for the whole flood, node 3 finds the two lower nodes' redial backoff
    // grown to seconds (up to 30 s a step); its own passive wait of 2 s, not
    // their backoff, brings it back into the mesh.
    honest.push(spec.start(3, fast_transport()).await);
    goes_on(&spec, &honest, "withheld proposals of many rounds").await;
    for c in conns {
        c.close(0u32.into(), b"");
    }
    stop_all(honest).await;
}

/// The hostile member, as the proposer of a round, announces ids nobody holds
/// and never answers the request for them; and for another round, ids that do
/// not hash to its header's root. The first is a proposal that never came, the
/// second is refused and reported, and neither stalls the chain nor is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_or_mismatched_compact_proposals_change_nothing() {
    let (spec, hostile, honest) = network().await;
    let conn = hostile.connect(&spec, 1).await;
    let mut uni = conn.open_uni().await.unwrap();
    let me = &spec.ids[0];
    let network_id = spec.network().id;
    let height = honest[0].height() + 1;
    let mut sorted: Vec<_> = (0..4).map(|i| spec.id(i)).collect();
    sorted.sort();
    let index = sorted.iter().position(|id| *id == me.id()).unwrap() as u64;
    // proposer(h, r) = sorted[(h + r) mod n]: the hostile member's rounds here.
    let round = ((index + 4 - height % 4) % 4) as u32;
    let proposal = |round: u32, ids: Vec<Hash>, root: Hash| {
        let header = Header {
            height,
            round,
            prev_hash: honest[0].tip_hash().unwrap(),
            timestamp_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64,
            proposer: me.id(),
            tx_root: root,
            changes: vec![],
        };
        let bytes = proposal_sign_bytes(&network_id, height, round, header.hash(), None, me.id());
        let signature = me.sign(&bytes);
        CompactProposal { height, round, header, ids, valid_round: None, proposer: me.id(), signature }
    };
    let ids: Vec<Hash> = (0..1000u32).map(|i| tx_hash(&i.to_be_bytes())).collect();
    let withheld = proposal(round, ids.clone(), tx_root_of_ids(ids.len(), ids.iter().copied()));
    let mismatched = proposal(round + 4, ids.clone(), Hash([7; 32]));
    let withheld_hash = withheld.header.hash();
    let mut frames = bytes::BytesMut::new();
    codec::encode_into(&Message::CompactProposal(mismatched), &mut frames);
    codec::encode_into(&Message::CompactProposal(withheld), &mut frames);
    uni.write_all(&frames).await.unwrap();
    let reported = || {
        let m = honest[0].metrics();
        m.lines().any(|l| l.starts_with("masternode_misbehaviour_total") && !l.ends_with(" 0"))
    };
    eventually("the mismatched ids are reported", Duration::from_secs(10), reported).await;
    assert!(conn.close_reason().is_none(), "well-formed frames keep the connection open");
    goes_on(&spec, &honest, "withheld proposal").await;
    let c = honest[0].store().block(height).unwrap().unwrap();
    assert_ne!(c.block.hash(), withheld_hash, "a block nobody could rebuild is never committed");
    conn.close(0u32.into(), b"");
    stop_all(honest).await;
}
