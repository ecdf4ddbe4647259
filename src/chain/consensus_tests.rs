//! The consensus core, driven by an in-memory network of cores with a virtual
//! clock. No sockets and no sleeping: a test of a hundred heights runs in
//! milliseconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use super::*;
use crate::chain::block::{genesis_hash, Limits};
use crate::chain::vote::{Committed, SignRecord, Step};
use crate::identity::Identity;

const NET: [u8; 32] = [9; 32];
const INTERVAL: u64 = 1000;

fn identities(n: usize) -> Vec<Arc<Identity>> {
    let mut ids: Vec<_> = (0..n)
        .map(|i| {
            Arc::new(Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 1; 32])).unwrap())
        })
        .collect();
    ids.sort_by_key(|i| i.id());
    ids
}

fn config(ids: &[Arc<Identity>]) -> Config {
    Config {
        network_id: NET,
        members: ids.iter().map(|i| i.id()).collect(),
        block_interval_ms: INTERVAL,
        limits: Limits::default(),
        timeouts: Timeouts::for_interval(INTERVAL),
    }
}

/// n cores wired together; `down` nodes receive and send nothing.
struct Sim {
    ids: Vec<Arc<Identity>>,
    cores: Vec<Core>,
    now: u64,
    timers: BinaryHeap<Reverse<(u64, usize, u64)>>,
    timer_payload: Vec<Timeout>,
    queue: VecDeque<(usize, Input)>,
    decided: Vec<Vec<Committed>>,
    signed: Vec<Vec<SignRecord>>,
    misbehaviour: Vec<(NodeId, String)>,
    down: HashSet<usize>,
    /// Deliver a node's messages only to these nodes (None: to everyone).
    partition: Option<Vec<HashSet<usize>>>,
}

impl Sim {
    fn new(n: usize) -> Sim {
        let ids = identities(n);
        let cfg = config(&ids);
        let cores = ids.iter().map(|id| Core::new(cfg.clone(), id.clone(), 1, genesis_hash(&NET), 0, None)).collect();
        let mut sim = Sim {
            ids,
            cores,
            now: 1_000_000,
            timers: BinaryHeap::new(),
            timer_payload: Vec::new(),
            queue: VecDeque::new(),
            decided: vec![Vec::new(); n],
            signed: vec![Vec::new(); n],
            misbehaviour: Vec::new(),
            down: HashSet::new(),
            partition: None,
        };
        for i in 0..n {
            let mut out = sim.cores[i].start(sim.now);
            out.extend(sim.cores[i].handle(Input::Quorum(true), sim.now));
            sim.process(i, out);
        }
        sim
    }

    /// Ends the partition; as a reconnecting peer does, each node replays its own
    /// messages of the current height to the others.
    fn heal(&mut self) {
        self.partition = None;
        for from in 0..self.cores.len() {
            for m in self.cores[from].own_messages() {
                for to in 0..self.cores.len() {
                    if to != from && self.reaches(from, to) {
                        let input = match &m {
                            Signed::Proposal(p) => Input::Proposal(p.clone()),
                            Signed::Vote(v) => Input::Vote(v.clone()),
                        };
                        self.queue.push_back((to, input));
                    }
                }
            }
        }
    }

    fn reaches(&self, from: usize, to: usize) -> bool {
        if self.down.contains(&to) || self.down.contains(&from) {
            return false;
        }
        match &self.partition {
            None => true,
            Some(groups) => groups.iter().any(|g| g.contains(&from) && g.contains(&to)),
        }
    }

    fn process(&mut self, node: usize, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Sign { record, message, .. } => {
                    if let Some(last) = self.signed[node].last() {
                        assert!(record > *last, "node {node} signed {record:?} after {last:?}");
                    }
                    self.signed[node].push(record);
                    for to in 0..self.cores.len() {
                        if to != node && self.reaches(node, to) {
                            let input = match &message {
                                Signed::Proposal(p) => Input::Proposal(p.clone()),
                                Signed::Vote(v) => Input::Vote(v.clone()),
                            };
                            self.queue.push_back((to, input));
                        }
                    }
                }
                Output::Schedule { timeout, after_ms } => {
                    self.timer_payload.push(timeout);
                    self.timers.push(Reverse((self.now + after_ms, node, self.timer_payload.len() as u64 - 1)));
                }
                Output::NeedValue { height, round } => {
                    let txs = vec![format!("tx h{height} r{round}").into_bytes()];
                    self.queue.push_back((node, Input::Value { height, round, txs }));
                }
                Output::Decided(c) => self.decided[node].push(c),
                Output::Misbehaviour { node, what } => self.misbehaviour.push((node, what)),
                Output::Ahead { .. } => {}
            }
        }
    }

    fn deliver(&mut self, to: usize, input: Input) {
        if self.down.contains(&to) {
            return;
        }
        let out = self.cores[to].handle(input, self.now);
        self.process(to, out);
    }

    /// Runs until `done` holds or `max_ms` of virtual time pass.
    fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + max_ms;
        loop {
            while let Some((to, input)) = self.queue.pop_front() {
                self.deliver(to, input);
            }
            if done(self) {
                return true;
            }
            let Some(Reverse((at, node, idx))) = self.timers.pop() else {
                return false;
            };
            if at > end {
                return false;
            }
            self.now = self.now.max(at);
            let t = self.timer_payload[idx as usize];
            self.deliver(node, Input::Timeout(t));
        }
    }

    fn min_height(&self, nodes: &[usize]) -> usize {
        nodes.iter().map(|&i| self.decided[i].len()).min().unwrap_or(0)
    }

    /// No two nodes decided different blocks at one height; certificates verify;
    /// blocks link and timestamps grow.
    fn check_invariants(&self) {
        let members: Vec<NodeId> = self.ids.iter().map(|i| i.id()).collect();
        let longest = self.decided.iter().max_by_key(|d| d.len()).unwrap();
        for (i, chain) in self.decided.iter().enumerate() {
            let mut prev = genesis_hash(&NET);
            let mut prev_ts = 0;
            for (h, c) in chain.iter().enumerate() {
                assert_eq!(c.block.height(), h as u64 + 1);
                assert_eq!(c.block.hash(), longest[h].block.hash(), "node {i} forked at height {}", h + 1);
                assert_eq!(c.block.header.prev_hash, prev);
                assert!(c.block.header.timestamp_ms > prev_ts);
                c.cert.verify(&c.block, &members, &NET).unwrap();
                prev = c.block.hash();
                prev_ts = c.block.header.timestamp_ms;
            }
        }
    }
}

#[test]
fn n4_all_up_commits_at_the_block_interval() {
    let mut sim = Sim::new(4);
    let start = sim.now;
    assert!(sim.run_until(60_000, |s| s.min_height(&[0, 1, 2, 3]) >= 10));
    sim.check_invariants();
    assert!(sim.misbehaviour.is_empty(), "{:?}", sim.misbehaviour);
    for c in &sim.decided[0] {
        assert_eq!(c.cert.round, 0, "every height decided in round 0 when all are up");
        assert!(c.cert.signers().len() >= 3);
    }
    // Ten blocks at one per interval.
    let elapsed = sim.now - start;
    assert!(elapsed <= 11 * INTERVAL, "{elapsed} ms for 10 blocks");
}

#[test]
fn n4_one_down_still_commits() {
    let mut sim = Sim::new(4);
    sim.down.insert(2);
    assert!(sim.run_until(120_000, |s| s.min_height(&[0, 1, 3]) >= 10));
    sim.check_invariants();
    assert!(sim.decided[0].iter().any(|c| c.cert.round > 0), "the missing proposer's rounds time out");
    assert!(sim.decided[2].is_empty());
}

#[test]
fn n4_two_down_stalls() {
    let mut sim = Sim::new(4);
    sim.down.insert(1);
    sim.down.insert(3);
    sim.run_until(120_000, |_| false);
    assert!(sim.decided.iter().all(|d| d.is_empty()), "no block with 2 of 4");
}

#[test]
fn quorum_gate_closed_means_no_proposal_and_no_round_advance() {
    let mut sim = Sim::new(4);
    for i in 0..4 {
        let out = sim.cores[i].handle(Input::Quorum(false), sim.now);
        sim.process(i, out);
    }
    sim.run_until(60_000, |_| false);
    assert!(sim.signed.iter().all(|s| s.is_empty()), "nothing signed while the gate is closed");
    assert!(sim.cores.iter().all(|c| c.round() == 0 && c.height() == 1));
    for i in 0..4 {
        let out = sim.cores[i].handle(Input::Quorum(true), sim.now);
        sim.process(i, out);
    }
    assert!(sim.run_until(60_000, |s| s.min_height(&[0, 1, 2, 3]) >= 3), "the chain resumes when the gate opens");
    sim.check_invariants();
}

#[test]
fn partition_2_2_stalls_then_heals_onto_one_chain() {
    let mut sim = Sim::new(4);
    assert!(sim.run_until(30_000, |s| s.min_height(&[0, 1, 2, 3]) >= 2));
    sim.partition = Some(vec![[0, 1].into(), [2, 3].into()]);
    let before: Vec<usize> = sim.decided.iter().map(|d| d.len()).collect();
    sim.run_until(30_000, |_| false);
    let during: Vec<usize> = sim.decided.iter().map(|d| d.len()).collect();
    assert!(
        during.iter().zip(&before).all(|(d, b)| d <= &(b + 1)),
        "no progress without a quorum: {before:?} -> {during:?}"
    );
    sim.heal();
    // Rounds grew during the partition; timeouts are longer, but the chain resumes.
    assert!(sim.run_until(300_000, |s| s.min_height(&[0, 1, 2, 3]) >= during.iter().max().unwrap() + 3));
    sim.check_invariants();
}

#[test]
fn partition_1_3_majority_goes_on() {
    let mut sim = Sim::new(4);
    sim.partition = Some(vec![[0].into(), [1, 2, 3].into()]);
    assert!(sim.run_until(120_000, |s| s.min_height(&[1, 2, 3]) >= 5));
    assert!(sim.decided[0].is_empty());
    sim.check_invariants();
}

#[test]
fn double_sign_guard_survives_a_restart() {
    let ids = identities(4);
    let cfg = config(&ids);
    // The node signed up to a precommit in round 2 before it crashed.
    let last = SignRecord { height: 1, round: 2, step: Step::Precommit };
    let mut core = Core::new(cfg, ids[1].clone(), 1, genesis_hash(&NET), 0, Some(last));
    let mut out = core.start(10_000);
    out.extend(core.handle(Input::Quorum(true), 10_000));
    let mut signed = Vec::new();
    // Fire its timeouts through rounds 0..=3.
    for round in 0..4 {
        out.extend(core.handle(Input::Timeout(Timeout::StartHeight { height: 1 }), 10_000));
        for t in [
            Timeout::Propose { height: 1, round },
            Timeout::Prevote { height: 1, round },
            Timeout::Precommit { height: 1, round },
        ] {
            out.extend(core.handle(Input::Timeout(t), 10_000));
        }
    }
    for o in out {
        if let Output::Sign { record, .. } = o {
            signed.push(record);
        }
    }
    assert!(signed.iter().all(|r| *r > last), "signed {signed:?} at or before {last:?}");
    assert!(!signed.is_empty(), "it signs again once past the record");
}

/// Table-driven steps on one core: each step feeds an input and states what the
/// core must (or must not) sign.
#[test]
fn locking_and_valid_round_follow_the_paper() {
    let ids = identities(4);
    let cfg = config(&ids);
    let members = cfg.members.clone();
    // The core under test is the one that is not proposer of rounds 0..=2 at height 1.
    let proposer = |r: u32| members[((1 + r as u64) % 4) as usize];
    let me = ids.iter().find(|i| ![proposer(0), proposer(1), proposer(2)].contains(&i.id())).unwrap().clone();
    let mut core = Core::new(cfg.clone(), me.clone(), 1, genesis_hash(&NET), 0, None);
    let now = 5_000;
    core.start(now);
    core.handle(Input::Quorum(true), now);
    core.handle(Input::Timeout(Timeout::StartHeight { height: 1 }), now);
    let id_of = |n: NodeId| ids.iter().find(|i| i.id() == n).unwrap().clone();
    let block = |r: u32, tag: &str| {
        let txs = vec![tag.as_bytes().to_vec()];
        Block {
            header: Header {
                height: 1,
                round: r,
                prev_hash: genesis_hash(&NET),
                timestamp_ms: 4_000 + r as u64,
                proposer: proposer(r),
                tx_root: tx_root(&txs),
            },
            txs,
        }
    };
    let proposal = |r: u32, b: &Block, vr: Option<u32>| {
        Input::Proposal(
            Proposal { height: 1, round: r, block: b.clone(), valid_round: vr, proposer: proposer(r) }
                .sign(&NET, &id_of(proposer(r))),
        )
    };
    let vote = |kind, r: u32, b: Option<&Block>, who: NodeId| {
        Input::Vote(Vote { kind, height: 1, round: r, block: b.map(|b| b.hash()), voter: who }.sign(&NET, &id_of(who)))
    };
    let others: Vec<NodeId> = members.iter().copied().filter(|m| *m != me.id()).collect();
    let a = block(0, "A");
    let b1 = block(1, "B");

    let signed_votes = |out: Vec<Output>| -> Vec<(VoteKind, u32, Option<Hash>)> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Sign { message: Signed::Vote(v), .. } => Some((v.vote.kind, v.vote.round, v.vote.block)),
                _ => None,
            })
            .collect()
    };

    // L22: a valid proposal with no valid round gets our prevote.
    let out = core.handle(proposal(0, &a, None), now);
    assert_eq!(signed_votes(out), vec![(VoteKind::Prevote, 0, Some(a.hash()))], "L22: prevote A");
    // L36: a polka for A locks A and precommits it.
    let mut out = Vec::new();
    for w in &others[..2] {
        out.extend(core.handle(vote(VoteKind::Prevote, 0, Some(&a), *w), now));
    }
    assert_eq!(signed_votes(out), vec![(VoteKind::Precommit, 0, Some(a.hash()))], "L36: lock on A, precommit A");
    // Round 0 fails (precommits do not reach a quorum); L65 moves to round 1.
    core.handle(Input::Timeout(Timeout::Precommit { height: 1, round: 0 }), now);
    assert_eq!(core.round(), 1);
    // L22 with a lock: a fresh value B is refused (prevote nil).
    let out = core.handle(proposal(1, &b1, None), now);
    assert_eq!(signed_votes(out), vec![(VoteKind::Prevote, 1, None)], "L22: locked on A, prevote nil for B");
    // Two others prevote B in round 1: no polka yet. Our prevote timeout moves us
    // to precommit nil, and the precommit timeout to round 2.
    let mut out = Vec::new();
    for w in &others[..2] {
        out.extend(core.handle(vote(VoteKind::Prevote, 1, Some(&b1), *w), now));
    }
    out.extend(core.handle(Input::Timeout(Timeout::Prevote { height: 1, round: 1 }), now));
    assert_eq!(signed_votes(out), vec![(VoteKind::Precommit, 1, None)], "L61: precommit nil");
    core.handle(Input::Timeout(Timeout::Precommit { height: 1, round: 1 }), now);
    assert_eq!(core.round(), 2);
    // The third prevote for B in round 1 arrives late: round 1 had a polka for B.
    core.handle(vote(VoteKind::Prevote, 1, Some(&b1), others[2]), now);
    // L28: round 2 re-proposes B with valid_round 1; the polka in round 1 is newer
    // than our lock (round 0), so we prevote B.
    let out = core.handle(proposal(2, &b1, Some(1)), now);
    assert_eq!(
        signed_votes(out),
        vec![(VoteKind::Prevote, 2, Some(b1.hash()))],
        "L28: polka newer than lock, prevote B"
    );
}

#[test]
fn bad_messages_are_rejected_and_reported() {
    let ids = identities(4);
    let cfg = config(&ids);
    let me = ids[0].clone();
    let mut core = Core::new(cfg.clone(), me.clone(), 1, genesis_hash(&NET), 0, None);
    core.start(5_000);
    core.handle(Input::Quorum(true), 5_000);
    let other = ids[1].clone();
    let v = |h: u64, r: u32| Vote { kind: VoteKind::Prevote, height: h, round: r, block: None, voter: other.id() };

    // A bad signature is misbehaviour and not counted.
    let mut bad = v(1, 0).sign(&NET, &other);
    bad.signature[0] ^= 1;
    let out = core.handle(Input::Vote(bad), 5_000);
    assert!(out.iter().any(|o| matches!(o, Output::Misbehaviour { .. })), "bad signature reported");
    // Signed for another network: also a bad signature here.
    let out = core.handle(Input::Vote(v(1, 0).sign(&[1; 32], &other)), 5_000);
    assert!(out.iter().any(|o| matches!(o, Output::Misbehaviour { .. })));
    // A vote for an old height is ignored silently; a far-future round is dropped.
    assert!(core.handle(Input::Vote(v(0, 0).sign(&NET, &other)), 5_000).is_empty());
    assert!(core.handle(Input::Vote(v(1, 10_000).sign(&NET, &other)), 5_000).is_empty());
    // A future height says the peer is ahead.
    let out = core.handle(Input::Vote(v(7, 0).sign(&NET, &other)), 5_000);
    assert!(out.contains(&Output::Ahead { node: other.id(), height: 7 }));
    // A duplicate is ignored; a conflicting vote is equivocation.
    core.handle(Input::Vote(v(1, 0).sign(&NET, &other)), 5_000);
    assert!(core.handle(Input::Vote(v(1, 0).sign(&NET, &other)), 5_000).is_empty(), "exact duplicate ignored");
    let mut conflicting = v(1, 0);
    conflicting.block = Some(Hash([1; 32]));
    let out = core.handle(Input::Vote(conflicting.sign(&NET, &other)), 5_000);
    assert!(out.iter().any(|o| matches!(o, Output::Misbehaviour { what, .. } if what.contains("two"))), "{out:?}");
}

#[test]
fn equivocating_proposer_cannot_split_the_network() {
    let mut sim = Sim::new(4);
    // Run to height 2 then let the proposer of (3, 0) send two different blocks to
    // two halves.
    assert!(sim.run_until(30_000, |s| s.min_height(&[0, 1, 2, 3]) >= 2));
    let h = 3;
    let members: Vec<NodeId> = sim.ids.iter().map(|i| i.id()).collect();
    let evil_id = members[(h as usize) % 4];
    let evil = sim.ids.iter().position(|i| i.id() == evil_id).unwrap();
    sim.down.insert(evil);
    let prev = sim.decided[(evil + 1) % 4].last().unwrap().block.clone();
    let mk = |tag: &str| {
        let txs = vec![tag.as_bytes().to_vec()];
        let block = Block {
            header: Header {
                height: h,
                round: 0,
                prev_hash: prev.hash(),
                timestamp_ms: prev.header.timestamp_ms + 1,
                proposer: evil_id,
                tx_root: tx_root(&txs),
            },
            txs,
        };
        Proposal { height: h, round: 0, block, valid_round: None, proposer: evil_id }.sign(&NET, &sim.ids[evil])
    };
    let (x, y) = (mk("X"), mk("Y"));
    let honest: Vec<usize> = (0..4).filter(|i| *i != evil).collect();
    sim.queue.push_back((honest[0], Input::Proposal(x.clone())));
    sim.queue.push_back((honest[1], Input::Proposal(y.clone())));
    sim.queue.push_back((honest[2], Input::Proposal(x)));
    sim.queue.push_back((honest[2], Input::Proposal(y)));
    assert!(sim.run_until(120_000, |s| s.min_height(&honest) >= 5));
    sim.check_invariants();
    assert!(sim.misbehaviour.iter().any(|(n, w)| *n == evil_id && w.contains("two proposals")));
}

/// A core that is not the proposer of rounds 0 to 2 at height 1, with helpers to
/// feed it signed messages from the others.
struct OneCore {
    ids: Vec<Arc<Identity>>,
    cfg: Config,
    me: Arc<Identity>,
}

impl OneCore {
    fn new() -> OneCore {
        let ids = identities(4);
        let cfg = config(&ids);
        let members = cfg.members.clone();
        let leads = |r: u32| members[((1 + r as u64) % 4) as usize];
        let me = ids.iter().find(|i| ![leads(0), leads(1), leads(2)].contains(&i.id())).unwrap().clone();
        OneCore { ids, cfg, me }
    }
    fn proposer(&self, r: u32) -> NodeId {
        self.cfg.members[((1 + r as u64) % 4) as usize]
    }
    fn identity(&self, n: NodeId) -> Arc<Identity> {
        self.ids.iter().find(|i| i.id() == n).unwrap().clone()
    }
    fn others(&self) -> Vec<NodeId> {
        self.cfg.members.iter().copied().filter(|m| *m != self.me.id()).collect()
    }
    fn block(&self, r: u32, tag: &str) -> Block {
        let txs = vec![tag.as_bytes().to_vec()];
        Block {
            header: Header {
                height: 1,
                round: r,
                prev_hash: genesis_hash(&NET),
                timestamp_ms: 4_000 + r as u64,
                proposer: self.proposer(r),
                tx_root: tx_root(&txs),
            },
            txs,
        }
    }
    fn proposal(&self, r: u32, b: &Block) -> Input {
        let p = Proposal { height: 1, round: r, block: b.clone(), valid_round: None, proposer: self.proposer(r) };
        Input::Proposal(p.sign(&NET, &self.identity(self.proposer(r))))
    }
    fn prevote(&self, r: u32, b: &Block, who: NodeId) -> Input {
        let v = Vote { kind: VoteKind::Prevote, height: 1, round: r, block: Some(b.hash()), voter: who };
        Input::Vote(v.sign(&NET, &self.identity(who)))
    }
    fn start(&self, core: &mut Core) {
        core.start(5_000);
        core.handle(Input::Quorum(true), 5_000);
        core.handle(Input::Timeout(Timeout::StartHeight { height: 1 }), 5_000);
    }
}

/// The lock of L36 survives a crash: the node restarted from its store still
/// refuses a fresh value in a later round, as it would have without the crash.
/// A node restarted without its lock would prevote it, which is what the paper's
/// safety argument forbids.
#[test]
fn a_restarted_node_keeps_its_lock() {
    let f = OneCore::new();
    let now = 5_000;
    let mut core = Core::new(f.cfg.clone(), f.me.clone(), 1, genesis_hash(&NET), 0, None);
    f.start(&mut core);
    let a = f.block(0, "A");
    let mut out = core.handle(f.proposal(0, &a), now);
    for w in &f.others()[..2] {
        out.extend(core.handle(f.prevote(0, &a, *w), now));
    }
    // What the producer persists: the last record, the signed messages, the lock.
    let mut last = None;
    let mut own = Vec::new();
    let mut lock = None;
    for o in out {
        if let Output::Sign { record, message, lock: l } = o {
            last = Some(record);
            own.push(message);
            if l.is_some() {
                lock = l;
            }
        }
    }
    assert_eq!(lock.as_ref().map(|l| (l.round, l.block.hash())), Some((0, a.hash())), "the precommit carries its lock");

    let b = f.block(1, "B");
    let prevote_in_round_1 = |lock: Option<Lock>| {
        let mut core = Core::new(f.cfg.clone(), f.me.clone(), 1, genesis_hash(&NET), 0, last);
        core.restore_own(own.clone());
        core.restore_lock(lock);
        f.start(&mut core);
        core.handle(Input::Timeout(Timeout::Precommit { height: 1, round: 0 }), now);
        assert_eq!(core.round(), 1);
        core.handle(f.proposal(1, &b), now).into_iter().find_map(|o| match o {
            Output::Sign { message: Signed::Vote(v), .. } if v.vote.kind == VoteKind::Prevote => Some(v.vote.block),
            _ => None,
        })
    };
    assert_eq!(prevote_in_round_1(lock.map(|l| *l)), Some(None), "locked on A: prevote nil for B");
    assert_eq!(prevote_in_round_1(None), Some(Some(b.hash())), "without the lock it would prevote B");
}
