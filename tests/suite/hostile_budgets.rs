//! Input budgets driven past their bounds by a hostile member, on real
//! sockets: for each structure a member's messages can grow, the member sends
//! more than the structure may hold, and the node's own accounting
//! (`masternode_held_bytes{what}`, `masternode_requests_refused_total{budget}`)
//! shows it held no more than its budget (docs/security.md, "Input budgets").
//!
//! Most tests stall the chain first: four members, the hostile key at the
//! lowest address (the honest nodes wait for it and never dial it) and three
//! honest nodes; once they commit, node 3 stops, so nodes 1 and 2 can no longer
//! commit and stay at one height, and what the hostile member makes node 1
//! hold for that height stays there to be measured.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::common::*;
use masternode::chain::{
    max_proposal_bytes, proposal_sign_bytes, tx_hash, tx_root, tx_root_of_ids, Approval, Assembly, Block, Change,
    CompactProposal, Hash, Header, Limits, Message, Proposal, Vote, VoteKind, GET_TXS_LIMIT, MAX_BLOCK_TXS,
    MAX_CONFLICTING, MAX_FUTURE_BYTES, MAX_FUTURE_ROUND, MAX_LATER, MAX_ROUND_AHEAD, MAX_WAITING,
    PROPOSALS_HELD_BLOCKS, TXS_LIMIT, VOTE_BYTES,
};
use masternode::codec;
use masternode::identity::Identity;
use masternode::node::Node;

/// Transactions of a full block: [`MAX_BLOCK_TXS`] of this size are just
/// under the block's 3 MiB.
const SMALL_TX: usize = 157;

/// A line's value in a node's metrics (`name{labels} value`).
fn metric(node: &Node, series: &str) -> u64 {
    let prefix = format!("{series} ");
    let metrics = node.metrics();
    let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {series} in metrics"));
    line[prefix.len()..].trim().parse::<f64>().unwrap() as u64
}

/// `masternode_held_bytes{what}` of a node.
fn held(node: &Node, what: &str) -> u64 {
    metric(node, &format!("masternode_held_bytes{{what=\"{what}\"}}"))
}

/// `masternode_requests_refused_total{budget}` of a node.
fn refused(node: &Node, budget: &str) -> u64 {
    metric(node, &format!("masternode_requests_refused_total{{budget=\"{budget}\"}}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Whether the hostile member (node 0) proposes `(height, round)`:
/// proposer(h, r) = sorted[(h + r) mod n].
fn leads(spec: &Spec, height: u64, round: u32) -> bool {
    let mut sorted: Vec<_> = (0..4).map(|i| spec.id(i)).collect();
    sorted.sort();
    let index = sorted.iter().position(|id| *id == spec.id(0)).unwrap() as u64;
    (height + round as u64) % 4 == index
}

/// A chain that stands still at one height, with the hostile member connected
/// to node 1.
struct Stalled {
    spec: Spec,
    /// Nodes 1 and 2: node 3 is stopped.
    honest: Vec<Node>,
    conn: quinn::Connection,
    uni: tokio::sync::Mutex<quinn::SendStream>,
    /// The height nodes 1 and 2 decide, and cannot commit.
    height: u64,
    _hostile: Hostile,
}

impl Stalled {
    fn node(&self) -> &Node {
        &self.honest[0]
    }

    async fn send(&self, frames: &[u8]) {
        self.uni.lock().await.write_all(frames).await.unwrap();
    }

    async fn stop(self) {
        self.conn.close(0u32.into(), b"");
        stop_all(self.honest).await;
    }
}

/// Stalls a network of four at a height `wanted` accepts: node 3 stops just
/// after a tip whose next height `wanted` accepts, and if the other two still
/// commit one more block, node 3 comes back and it is tried again.
async fn stalled_where(wanted: impl Fn(&Spec, u64) -> bool) -> Stalled {
    let spec = Spec::new(4);
    let (hostile, mut honest) = honest_beside_hostile(&spec, 3, 2).await;
    let conn = hostile.connect(&spec, 1).await;
    let uni = conn.open_uni().await.unwrap();
    for attempt in 0..6 {
        let start = Instant::now();
        while !wanted(&spec, honest[0].height() + 1) {
            assert!(start.elapsed() < Duration::from_secs(30), "no wanted height came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        honest.pop().unwrap().stop().await;
        // Stalled once neither node's tip moved for three intervals.
        let mut last = heights(&honest.iter().collect::<Vec<_>>());
        let mut since = Instant::now();
        while since.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = heights(&honest.iter().collect::<Vec<_>>());
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        let height = last.iter().copied().max().unwrap() + 1;
        if last.iter().all(|&h| h + 1 == height) && wanted(&spec, height) {
            return Stalled { spec, honest, conn, uni: uni.into(), height, _hostile: hostile };
        }
        assert!(attempt < 5, "the chain never stalled at a wanted height: {last:?}");
        honest.push(spec.start(3, beside_hostile_transport()).await);
        let target = height;
        eventually("node 3 back and caught up", Duration::from_secs(30), || {
            honest.iter().all(|n| n.height() >= target && n.peers().connected().len() >= 2)
        })
        .await;
    }
    unreachable!()
}

async fn stalled() -> Stalled {
    stalled_where(|_, _| true).await
}

/// A full block's transactions (just under 3 MiB), distinct from `tag`'s.
fn full_txs(tag: u8) -> Vec<Vec<u8>> {
    (0..MAX_BLOCK_TXS as u32)
        .map(|i| {
            let mut tx = vec![tag; SMALL_TX];
            tx[..4].copy_from_slice(&i.to_be_bytes());
            tx
        })
        .collect()
}

/// The hostile member's signed proposal of `txs` for `(height, round)`, on a
/// parent nobody has: held (and reported) where a proposal of that round is,
/// never voted for.
fn hostile_proposal(spec: &Spec, height: u64, round: u32, txs: Vec<Vec<u8>>) -> Message {
    let me = &spec.ids[0];
    let header = Header {
        height,
        round,
        prev_hash: Hash([7; 32]),
        timestamp_ms: now_ms(),
        proposer: me.id(),
        tx_root: tx_root(&txs),
        changes: vec![],
    };
    let proposal = Proposal {
        height,
        round,
        block: Block { header, txs: txs.into_iter().map(Into::into).collect() },
        valid_round: None,
        proposer: me.id(),
    };
    Message::Proposal(proposal.sign(&spec.network().id, me))
}

fn hostile_vote(spec: &Spec, kind: VoteKind, height: u64, round: u32, block: Option<Hash>) -> Message {
    let vote = Vote { kind, height, round, block, voter: spec.id(0) };
    Message::Vote(vote.sign(&spec.network().id, &spec.ids[0]))
}

/// Samples `what` at node 1 every 20 ms for `window`, asserting each sample
/// within `bound`; returns the largest.
async fn most_held(node: &Node, what: &str, bound: u64, window: Duration) -> u64 {
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < window {
        let now = held(node, what);
        assert!(now <= bound, "held_bytes{{what=\"{what}\"}} {now}, over its bound {bound}");
        most = most.max(now);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    most
}

/// The hostile member proposes, for the next height, a full block (4.0 MB as
/// held) for each of its rounds up to 16, and votes in every round up to 16
/// with three values: the next height's buffer keeps one message per slot,
/// rounds up to 8, and no more than 8 MiB, so two of its three proposals in
/// those rounds are kept and the third is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_height_messages_past_the_buffer_are_not_kept() {
    // Stalled where the hostile member proposes round 0 of the next height,
    // and so rounds 0, 4 and 8: 12 MB of proposals as held for an 8 MiB buffer.
    let s = stalled_where(|spec, h| leads(spec, h + 1, 0)).await;
    let next = s.height + 1;
    let mut frames = BytesMut::new();
    let mut sent = 0;
    for round in 0..=2 * MAX_FUTURE_ROUND {
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            for value in [None, Some(Hash([1; 32])), Some(Hash([2; 32]))] {
                codec::encode_into(&hostile_vote(&s.spec, kind, next, round, value), &mut frames);
                sent += VOTE_BYTES;
            }
        }
    }
    s.send(&frames).await;
    for round in (0..=2 * MAX_FUTURE_ROUND).filter(|&r| leads(&s.spec, next, r)) {
        let txs = full_txs(round as u8);
        sent += txs.iter().map(Vec::len).sum::<usize>();
        s.send(&codec::encode(&hostile_proposal(&s.spec, next, round, txs))).await;
    }
    let bound = MAX_FUTURE_BYTES as u64;
    let node = s.node();
    let two = 2 * (MAX_BLOCK_TXS * SMALL_TX) as u64;
    let start = Instant::now();
    while held(node, "next_height") < two {
        assert!(start.elapsed() < Duration::from_secs(20), "the buffer never held two proposals");
        assert!(held(node, "next_height") <= bound);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let most = most_held(node, "next_height", bound, Duration::from_secs(2)).await;
    eprintln!("next height: {sent} bytes sent, {most} held, bound {bound}");
    assert_eq!(node.height() + 1, s.height, "still stalled");
    s.stop().await;
}

/// For every round up to 100 past ours and both kinds, the hostile member
/// votes a value nobody proposed, then nil, then the block it proposed
/// itself, then four more values: a height keeps its first vote and at most
/// two conflicting ones (nil, or a value proposed at this height) per voter,
/// round and kind, for rounds up to 64 past ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_past_their_versions_and_rounds_are_not_held() {
    let s = stalled().await;
    let height = s.height;
    let own = (0..4).find(|&r| leads(&s.spec, height, r)).unwrap();
    let proposal = hostile_proposal(&s.spec, height, own, vec![]);
    let Message::Proposal(sp) = &proposal else { unreachable!() };
    let known = sp.proposal.block.hash();
    let mut frames = BytesMut::new();
    codec::encode_into(&proposal, &mut frames);
    let mut sent = 0;
    for round in 0..=MAX_ROUND_AHEAD + 36 {
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            let values =
                [Some(Hash([1; 32])), None, Some(known)].into_iter().chain((2..6u8).map(|b| Some(Hash([b; 32]))));
            for value in values {
                codec::encode_into(&hostile_vote(&s.spec, kind, height, round, value), &mut frames);
                sent += 1;
            }
        }
    }
    s.send(&frames).await;
    // The hostile member's votes: three versions of each kind in each round
    // from 0 to 64 past ours; the honest nodes' (one per kind and round).
    let hostile_most = |round: u64| (round + 1 + MAX_ROUND_AHEAD as u64) * 2 * (1 + MAX_CONFLICTING as u64);
    let honest_most = |round: u64| 3 * (round + 1) * 2;
    let node = s.node();
    let full = hostile_most(0) * VOTE_BYTES as u64;
    let start = Instant::now();
    while held(node, "votes") < full {
        assert!(start.elapsed() < Duration::from_secs(20), "votes held: {}", held(node, "votes"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let round = node.status().round;
    let bound = (hostile_most(round) + honest_most(round)) * VOTE_BYTES as u64;
    let now = held(node, "votes");
    eprintln!("votes: {sent} sent ({} bytes as held), {now} bytes held at round {round}, bound {bound}", sent * 256);
    assert!(now <= bound, "{now} bytes of votes held, over {bound}");
    s.stop().await;
}

/// The hostile member proposes a full block (4.0 MB as held) for each of its
/// first six rounds and its rounds past 64 ahead of ours: a height's proposals
/// are held within four of the largest, the rest not kept (those past 64
/// rounds not at all); and what it sends waits in node 1's inbox within the
/// inbox's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_of_many_rounds_are_held_within_four_blocks() {
    let s = stalled().await;
    let height = s.height;
    let bound = (PROPOSALS_HELD_BLOCKS * max_proposal_bytes(&Limits::default())) as u64;
    let inbox_bound = 2 * (masternode::net::TransportConfig::default().inbound_peer_bytes + codec::MAX_FRAME) as u64;
    // Encoded first, so that they leave as fast as the connection takes them.
    let own: Vec<u32> = (0..=MAX_ROUND_AHEAD + 8).filter(|&r| leads(&s.spec, height, r)).collect();
    let rounds: Vec<u32> = own.iter().copied().filter(|&r| !(24..=MAX_ROUND_AHEAD).contains(&r)).collect();
    let frames: Vec<_> =
        rounds.iter().map(|&r| codec::encode(&hostile_proposal(&s.spec, height, r, full_txs(r as u8)))).collect();
    let sent: usize = frames.iter().map(|f| f.len()).sum();
    let done = std::sync::atomic::AtomicBool::new(false);
    let send = async {
        for f in &frames {
            s.send(f).await;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    // What waits in node 1's inbox while they arrive, every 2 ms.
    let sample = async {
        let mut most = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let inbox = held(s.node(), "inbox");
            assert!(inbox <= inbox_bound, "inbox {inbox}, over {inbox_bound}");
            most = most.max(inbox);
            let proposals = held(s.node(), "proposals");
            assert!(proposals <= bound, "proposals {proposals}, over {bound}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        most
    };
    let ((), node_inbox) = tokio::join!(send, sample);
    eprintln!("proposals: {} full proposals sent ({sent} bytes)", rounds.len());
    let node = s.node();
    let three = 3 * (MAX_BLOCK_TXS * SMALL_TX) as u64;
    let start = Instant::now();
    while held(node, "proposals") < three {
        assert!(start.elapsed() < Duration::from_secs(30), "proposals held: {}", held(node, "proposals"));
        assert!(held(node, "proposals") <= bound);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let most = most_held(node, "proposals", bound, Duration::from_secs(2)).await;
    eprintln!("proposals: {most} bytes held, bound {bound}; inbox at most {node_inbox} bytes, bound {inbox_bound}");
    assert_eq!(node.height() + 1, s.height, "still stalled");
    s.stop().await;
}

/// The hostile member sends compact proposals of 20,000 ids nobody has for
/// every round it leads up to 64 past ours and for the next height, again and
/// again, and answers each `GetTxs` with 3.9 MB of transactions that are not
/// the block's: at most four are fetched at once within their byte budget,
/// eight of later rounds are kept as ids, and the answers wait within the
/// requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_proposals_past_their_slots_are_neither_fetched_nor_kept() {
    // Stalled where the hostile member proposes round 0, the round the nodes
    // stay in: one of its proposals is always in the fetching window.
    let s = stalled_where(|spec, h| leads(spec, h, 0)).await;
    let height = s.height;
    let limits = Limits::default();
    let waiting_bound = (MAX_WAITING * Assembly::max_bytes(&limits)) as u64;
    let later_bound = (MAX_LATER * CompactProposal::max_bytes(MAX_BLOCK_TXS)) as u64;
    let fetch_bound = (MAX_WAITING * GET_TXS_LIMIT) as u64;
    let answers_bound = ((2 + MAX_WAITING) * TXS_LIMIT) as u64;
    let conn = s.conn.clone();
    let answerer = tokio::spawn(async move {
        let junk: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 64 * 1024]).collect();
        let frame = codec::encode(&Message::Txs(junk));
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let frame = frame.clone();
            tokio::spawn(async move {
                let _ = recv.read_to_end(GET_TXS_LIMIT + 16).await;
                let _ = send.write_all(&frame).await;
                let _ = send.finish();
            });
        }
    });
    let me = s.spec.ids[0].clone();
    let network_id = s.spec.network().id;
    let ids: Vec<Hash> =
        (0..MAX_BLOCK_TXS as u32).map(|i| tx_hash(&[b"nobody has ", &i.to_be_bytes()[..]].concat())).collect();
    let root = tx_root_of_ids(ids.len(), ids.iter().copied());
    let compact = |h: u64, round: u32| {
        let header = Header {
            height: h,
            round,
            prev_hash: Hash([7; 32]),
            timestamp_ms: now_ms(),
            proposer: me.id(),
            tx_root: root,
            changes: vec![],
        };
        let bytes = proposal_sign_bytes(&network_id, h, round, header.hash(), None, me.id());
        let signature = me.sign(&bytes);
        Message::CompactProposal(CompactProposal {
            height: h,
            round,
            header,
            ids: ids.clone(),
            valid_round: None,
            proposer: me.id(),
            signature,
        })
    };
    let mut slots: Vec<(u64, u32)> =
        (0..=MAX_ROUND_AHEAD).filter(|&r| leads(&s.spec, height, r)).map(|r| (height, r)).collect();
    slots.extend((0..2).filter(|&r| leads(&s.spec, height + 1, r)).map(|r| (height + 1, r)));
    let (mut waiting_most, mut later_most, mut fetch_most, mut answers_most) = (0, 0, 0, 0);
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let mut frames = BytesMut::new();
        for &(h, r) in &slots {
            codec::encode_into(&compact(h, r), &mut frames);
            sent += 1;
        }
        s.send(&frames).await;
        for _ in 0..10 {
            let node = s.node();
            let (w, l, f, a) = (
                held(node, "compact_waiting"),
                held(node, "compact_later"),
                held(node, "fetch_requests"),
                held(node, "sync_answers"),
            );
            assert!(w <= waiting_bound, "compact_waiting {w}, over {waiting_bound}");
            assert!(l <= later_bound, "compact_later {l}, over {later_bound}");
            assert!(f <= fetch_bound, "fetch_requests {f}, over {fetch_bound}");
            assert!(a <= answers_bound, "sync_answers {a}, over {answers_bound}");
            (waiting_most, later_most, fetch_most, answers_most) =
                (waiting_most.max(w), later_most.max(l), fetch_most.max(f), answers_most.max(a));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    answerer.abort();
    eprintln!(
        "compact: {sent} proposals of {} slots sent; held at most: waiting {waiting_most} (bound {waiting_bound}), later {later_most} (bound {later_bound}), fetch requests {fetch_most} (bound {fetch_bound}), answers {answers_most} (bound {answers_bound})",
        slots.len()
    );
    let ids_bytes = (MAX_BLOCK_TXS * std::mem::size_of::<Hash>()) as u64;
    assert!(slots.len() > MAX_LATER + 2, "more proposals than the slots");
    assert!(later_most >= MAX_LATER as u64 * ids_bytes, "eight kept for later rounds: {later_most}");
    assert!(waiting_most > 0 && fetch_most > 0, "the window's proposals were fetched");
    assert_eq!(s.node().height() + 1, s.height, "still stalled");
    s.stop().await;
}

/// The hostile member gossips 40 approvals of changes nobody else wants: a
/// node holds eight per approver for the next blocks, and refuses the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_past_eight_per_approver_are_not_held() {
    let s = stalled().await;
    let network_id = s.spec.network().id;
    let signed_at = s.height - 1;
    let approval = |i: u8| {
        let id = Identity::generate().unwrap().id();
        let addr = std::net::SocketAddr::from(([127, 77, 0, i], 24100));
        let a = Approval { change: Change::Add { id, addr }, approver: s.spec.id(0), signed_at };
        Message::Approval(a.sign(&network_id, &s.spec.ids[0]))
    };
    assert_eq!(held(s.node(), "approvals"), 0, "no approvals before");
    s.send(&codec::encode(&approval(0))).await;
    eventually("the first approval is held", Duration::from_secs(10), || held(s.node(), "approvals") > 0).await;
    let one = held(s.node(), "approvals");
    let mut frames = BytesMut::new();
    for i in 1..40 {
        codec::encode_into(&approval(i), &mut frames);
    }
    s.send(&frames).await;
    let bound = 8 * one;
    eventually("eight approvals held", Duration::from_secs(10), || held(s.node(), "approvals") == bound).await;
    let most = most_held(s.node(), "approvals", bound, Duration::from_secs(1)).await;
    let waiting = s.node().members().waiting.iter().filter(|a| a.approver == s.spec.id(0)).count();
    eprintln!("approvals: 40 sent, {waiting} held ({most} bytes, {one} each)");
    assert_eq!(waiting, 8, "eight of the hostile member's approvals wait for a block");
    s.stop().await;
}

/// The hostile member sends a thousand tips (claims of heights, readings of its
/// clock) and more requests than its rate: a node keeps eight clock readings
/// per member and one entry per peer in each of its per-peer maps, so neither
/// grows with what the member sends; requests over the rate are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tips_and_requests_past_their_bounds_grow_neither_clock_readings_nor_peer_state() {
    let s = stalled().await;
    let height = s.height;
    let tip = |i: u64| Message::Tip { height: height + i % 5, hash: Hash([i as u8; 32]), time_ms: now_ms() + i * 7 };
    let echo = |conn: quinn::Connection| async move {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&codec::encode(&Message::Data(b"echo".to_vec()))).await.ok()?;
        send.finish().ok()?;
        recv.read_to_end(1024).await.ok()
    };
    // Eight readings: the most a member's clock is sampled by.
    let mut frames = BytesMut::new();
    for i in 0..8 {
        codec::encode_into(&tip(i), &mut frames);
    }
    s.send(&frames).await;
    let _ = echo(s.conn.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (clock_before, state_before) = (held(s.node(), "clock"), held(s.node(), "peer_state"));
    let rate_before = refused(s.node(), "rate");
    let mut frames = BytesMut::new();
    for i in 8..1008 {
        codec::encode_into(&tip(i), &mut frames);
    }
    s.send(&frames).await;
    // All at once: 16 streams open at a time, 4 read at a time, each answered
    // or refused within a round trip, so they come well within a second.
    let answers = futures_join_all((0..120).map(|_| echo(s.conn.clone()))).await;
    let answered = answers.iter().filter(|a| a.is_some()).count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (clock_after, state_after) = (held(s.node(), "clock"), held(s.node(), "peer_state"));
    let rate_refused = refused(s.node(), "rate") - rate_before;
    eprintln!(
        "1,000 tips and 120 requests: clock readings {clock_before} -> {clock_after} bytes, per-peer state {state_before} -> {state_after} bytes; {answered} requests answered, {rate_refused} refused for the rate"
    );
    assert_eq!(clock_after, clock_before, "a member's readings are replaced, not added to");
    assert!(state_after <= state_before + 1024, "per-peer state grew from {state_before} to {state_after} bytes");
    assert!(rate_refused > 0, "requests past the rate are refused");
    assert!(answered >= 40, "a burst's worth of requests is answered: {answered}");
    s.stop().await;
}

/// The hostile member proposes a full block and then asks for all of its
/// transactions 14 times a second (under its request rate): each answer is
/// 3.2 MB, and a peer is served 8 MiB a second (bursts of 16 MiB); the
/// requests past that are refused for the bytes, and what was served stays
/// within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_past_the_serve_budget_are_refused_for_their_bytes() {
    let s = stalled().await;
    let height = s.height;
    let round = (0..4).find(|&r| leads(&s.spec, height, r)).unwrap();
    let txs = full_txs(9);
    let ids: Vec<Hash> = txs.iter().map(|t| tx_hash(t)).collect();
    s.send(&codec::encode(&hostile_proposal(&s.spec, height, round, txs))).await;
    let block_bytes = (MAX_BLOCK_TXS * SMALL_TX) as u64;
    eventually("the proposal is held", Duration::from_secs(10), || held(s.node(), "proposals") >= block_bytes).await;
    let request = codec::encode(&Message::GetTxs { height, round, ids });
    let (rate_before, bytes_before) = (refused(s.node(), "rate"), refused(s.node(), "bytes"));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_secs(4) {
        let (conn, request, served) = (s.conn.clone(), request.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((mut send, mut recv)) = conn.open_bi().await else { return };
            if send.write_all(&request).await.is_err() || send.finish().is_err() {
                return;
            }
            if let Ok(answer) = recv.read_to_end(TXS_LIMIT + 16).await {
                served.fetch_add(answer.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }));
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    let rate = masternode::config::NodeLimits::default().sync_serve_bytes_per_sec as f64;
    let bound = (2.0 * rate + rate * (elapsed + 1.0)) as u64 + TXS_LIMIT as u64;
    let by_bytes = refused(s.node(), "bytes") - bytes_before;
    let by_rate = refused(s.node(), "rate") - rate_before;
    eprintln!("serve budget: {served} bytes served in {elapsed:.1} s (bound {bound}), {by_bytes} refused for bytes, {by_rate} for the rate");
    assert!(by_bytes > 0, "answers past the budget are refused for their bytes");
    assert_eq!(by_rate, 0, "the requests stayed within the rate");
    assert!(served <= bound, "{served} bytes served, over {bound}");
    assert!(served >= block_bytes * 5, "the burst was served: {served}");
    s.stop().await;
}

/// A hostile member that grants no stream for gossip: what node 1 queues for
/// it waits in its outbox until it is disconnected as too slow. A client
/// posting 8.4 MB of transactions meanwhile fills that member's transaction
/// outbox to its 4 MiB and no further (the rest is dropped for it), and of
/// the tips of the heights meanwhile only the latest waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_takes_nothing_holds_its_outbox_budget_and_no_more() {
    let spec = Spec::new(4);
    let hostile = Hostile::with_uni_streams(&spec, 0, 0);
    let mut honest = Vec::new();
    for i in 1..=3 {
        honest.push(spec.start(i, beside_hostile_transport()).await);
    }
    eventually("three honest nodes meshed at height 2", Duration::from_secs(60), || {
        honest.iter().all(|n| n.peers().connected().len() >= 2 && n.height() >= 2)
    })
    .await;
    let conn = hostile.connect(&spec, 1).await;
    eventually("the member connected", Duration::from_secs(10), || honest[0].peers().connected().contains(&spec.id(0)))
        .await;
    let limits = masternode::net::OutboxLimits::default();
    // Per peer, by class; node 1's three peers together.
    let peer_bound = (limits.consensus + limits.tip + limits.tx) as u64;
    let (tx_bound, consensus_bound, tip_bound) =
        (3 * limits.tx as u64, 3 * limits.consensus as u64, 3 * limits.tip as u64);
    let hostile_id = spec.id(0);
    let dropped_before = counter(&honest[0].peers().counters().outbox_dropped[2]);
    for i in 0..140u32 {
        let mut tx = vec![0x33; 60 * 1024];
        tx[..4].copy_from_slice(&i.to_be_bytes());
        honest[0].submit(tx).await.unwrap();
    }
    let (mut most, mut member_most) = ([0u64; 3], 0u64);
    let first_height = honest[0].height();
    let start = Instant::now();
    // Until the member is closed as too slow: every height meanwhile queues
    // its consensus messages and its tip for the member too.
    while conn.close_reason().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "the member was never closed as too slow");
        let n = &honest[0];
        let now = [held(n, "outbox_tx"), held(n, "outbox_consensus"), held(n, "outbox_tip")];
        assert!(now[0] <= tx_bound, "outbox_tx {}, over {tx_bound}", now[0]);
        assert!(now[1] <= consensus_bound, "outbox_consensus {}, over {consensus_bound}", now[1]);
        assert!(now[2] <= tip_bound, "outbox_tip {}, over {tip_bound}", now[2]);
        for (m, v) in most.iter_mut().zip(now) {
            *m = (*m).max(v);
        }
        if let Some(p) = n.peers().peers().into_iter().find(|p| p.id == hostile_id) {
            let bytes = p.outbox_bytes as u64;
            assert!(bytes <= peer_bound, "the member's outbox holds {bytes}, over {peer_bound}");
            member_most = member_most.max(bytes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = counter(&honest[0].peers().counters().outbox_dropped[2]) - dropped_before;
    let heights = honest[0].height() - first_height;
    eprintln!(
        "outboxes: 8.4 MB of transactions queued, {heights} heights; the member's outbox at most {member_most} (tx budget {}); all peers' at most: tx {}, consensus {}, tip {}; {dropped} tx frames dropped",
        limits.tx, most[0], most[1], most[2]
    );
    // A tip frame is 5 header bytes and at most TIP_LIMIT: only the latest
    // waits, however many heights passed, for the member as for the others.
    let tip_frame = 5 + 64;
    assert!(heights >= 2, "heights passed while the member took nothing: {heights}");
    assert!(most[2] <= 3 * tip_frame, "tips queued: {} bytes, more than the latest for each peer", most[2]);
    assert!(
        member_most >= (limits.tx - 64 * 1024) as u64,
        "the member's tx outbox filled to its budget: {member_most}"
    );
    assert!(member_most <= (limits.tx + 64 * 1024) as u64, "and no further: {member_most}");
    assert!(dropped > 0, "transactions past the budget are dropped");
    let err = conn.closed().await;
    assert!(
        matches!(&err, quinn::ConnectionError::ApplicationClosed(ac) if ac.error_code == masternode::net::Close::TOO_SLOW.into()),
        "closed as too slow: {err:?}"
    );
    stop_all(honest).await;
}

/// The hostile member gossips 12.3 MB of unique 60 KiB transactions while no
/// block is committed: its share of node 1's mempool (a sixth of 64 MiB with
/// four members) fills and refuses the rest, and a client of node 1 is still
/// taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_the_mempool_fills_only_its_share() {
    let s = stalled().await;
    let limits = masternode::chain::MempoolLimits::default();
    let share = (limits.max_bytes / 2 / 3) as u64;
    let mut frames = BytesMut::new();
    for i in 0..200u32 {
        let mut tx = vec![0x44; 60 * 1024];
        tx[..4].copy_from_slice(&i.to_be_bytes());
        codec::encode_into(&Message::Tx(tx), &mut frames);
    }
    s.send(&frames).await;
    let refused_members = || metric(s.node(), "masternode_mempool_refused_total{share=\"members\"}");
    eventually("the member's share refuses", Duration::from_secs(20), || refused_members() > 0).await;
    let most = most_held(s.node(), "mempool_members", share, Duration::from_secs(1)).await;
    assert!(most + 60 * 1024 > share, "the share filled: {most} of {share}");
    s.node().submit(b"a client's transaction".to_vec()).await.expect("a client is taken beside a full member share");
    eventually("the client's transaction is held", Duration::from_secs(5), || held(s.node(), "mempool_local") > 0)
        .await;
    eprintln!(
        "mempool: 200 x 60 KiB gossiped, {most} bytes held in the member's share of {share}, {} refused",
        refused_members()
    );
    s.stop().await;
}

/// The hostile member sends 6 MiB of votes for the current height whose
/// signatures do not verify, each one a signature check for node 1: what it
/// sent waits in node 1's inbox within the peer's 4 MiB, the rest in QUIC
/// flow control, and each bad signature is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_votes_waits_behind_its_inbox_budget() {
    let s = stalled().await;
    let height = s.height;
    let budget = masternode::net::TransportConfig::default().inbound_peer_bytes as u64;
    // The member's budget, a run read beyond it, and what node 2 sends.
    let bound = budget + 256 * 1024;
    let mut frames = BytesMut::new();
    let mut votes = 0u32;
    while frames.len() < 6 * 1024 * 1024 {
        let round = votes % (MAX_ROUND_AHEAD + 1);
        let mut value = [0u8; 32];
        value[..4].copy_from_slice(&votes.to_be_bytes());
        let vote = Vote { kind: VoteKind::Prevote, height, round, block: Some(Hash(value)), voter: s.spec.id(0) };
        let forged = masternode::chain::SignedVote { vote, signature: [0x5a; 64] };
        codec::encode_into(&Message::Vote(forged), &mut frames);
        votes += 1;
    }
    let misbehaviour_before = metric(s.node(), "masternode_misbehaviour_total");
    let done = std::sync::atomic::AtomicBool::new(false);
    let send = async {
        s.send(&frames).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let sample = async {
        let mut most = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let inbox = held(s.node(), "inbox");
            assert!(inbox <= bound, "inbox {inbox}, over {bound}");
            most = most.max(inbox);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    };
    let ((), most) = tokio::join!(send, sample);
    let most = most.max(most_held(s.node(), "inbox", bound, Duration::from_millis(500)).await);
    eventually("every forged vote is checked", Duration::from_secs(60), || {
        metric(s.node(), "masternode_misbehaviour_total") >= misbehaviour_before + votes as u64
    })
    .await;
    eprintln!(
        "inbox: {votes} forged votes ({} bytes) sent; at most {most} bytes waiting, budget {budget}",
        frames.len()
    );
    assert!(most + 128 * 1024 >= budget, "the member's frames filled its budget: {most}");
    s.stop().await;
}

/// A member that claims a far tip answers a late node's every `GetBlocks` (one
/// block at a time) with 1,024 blocks: the answer says so in its first bytes
/// and is refused as malformed before it is decoded (decoded, 1,024 blocks of
/// tiny transactions in a 4 MiB frame would be some 100 MB), and the late node
/// catches up from the honest ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocks_answer_with_more_blocks_than_asked_is_refused_undecoded() {
    let spec = Spec::new(7);
    let LateBesideHostile { honest, late, conn, hostile: _hostile, .. } = late_beside_hostile(&spec, 8, 1).await;
    let me = spec.ids[0].clone();
    let block = |height: u64| {
        let header = Header {
            height,
            round: 0,
            prev_hash: Hash([3; 32]),
            timestamp_ms: height,
            proposer: me.id(),
            tx_root: tx_root::<Vec<u8>>(&[]),
            changes: vec![],
        };
        let block = Block { header, txs: vec![] };
        let cert = masternode::chain::Certificate { height, round: 0, block: block.hash(), precommits: vec![] };
        masternode::chain::Committed { block, cert }
    };
    let answer = codec::encode(&Message::Blocks((1..=1024).map(block).collect()));
    assert!(answer.len() <= TXS_LIMIT, "within a Blocks frame");
    let answer_len = answer.len();
    let liar = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let Ok(mut uni) = conn.open_uni().await else { return };
            let tip = codec::encode(&Message::Tip { height: 1_000_000, hash: Hash([7; 32]), time_ms: now_ms() });
            let _ = uni.write_all(&tip).await;
            // At wire 4 a peer is asked for blocks once it says it holds them.
            let _ = uni.write_all(&codec::encode(&Message::Holds { earliest: 1, height: 1_000_000 })).await;
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = recv.read_to_end(64).await;
                    let _ = send.write_all(&answer).await;
                    let _ = send.finish();
                });
            }
        })
    };
    let failures = |reason: &str| metric(&late, &format!("masternode_sync_failures_total{{reason=\"{reason}\"}}"));
    eventually("the oversize answer is refused", Duration::from_secs(30), || failures("malformed") > 0).await;
    let target = honest.iter().map(|n| n.height()).max().unwrap();
    eventually("the late node catches up", Duration::from_secs(60), || late.height() >= target).await;
    eprintln!(
        "more blocks than asked: answers of {} bytes refused {} times as malformed, {} as invalid",
        answer_len,
        failures("malformed"),
        failures("invalid")
    );
    assert_eq!(failures("invalid"), 0, "refused before its blocks were decoded and looked at");
    liar.abort();
    conn.close(0u32.into(), b"");
    let mut all = honest;
    all.push(late);
    stop_all(all).await;
}
