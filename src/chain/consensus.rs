//! Tendermint consensus as a pure state machine.
//!
//! This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT
//! consensus" (2018); comments cite its line numbers ("L22"). The core takes inputs
//! (a proposal, a vote, a fired timeout, transactions to propose, the quorum gate)
//! together with the current time, and returns outputs (sign and broadcast this,
//! schedule that timeout, this block is decided). It reads no clock, opens no socket
//! and touches no disk, so every rule is tested exhaustively and fast.
//!
//! * Members are sorted by `NodeId`; `proposer(h, r) = members[(h + r) mod n]`.
//! * `q = floor(2n/3) + 1` votes make a quorum ("2f+1"); `n - q + 1` make "f+1".
//! * Timeouts grow with the round, `base + delta * min(r, 8)`: enough to find a
//!   timeout that fits the network, bounded so a long partition does not leave
//!   timeouts of tens of seconds behind it.
//! * A height starts `block_interval` after its parent's timestamp (the
//!   "commit timeout"), so blocks come at the configured pace.
//! * The quorum gate: while fewer than the required masternodes are connected the
//!   core proposes nothing and advances no round; fired timeouts wait for the gate.
//! * Double-sign protection: the core never signs at or below the last
//!   `(height, round, step)` it signed, which the shell persists before a signature
//!   leaves the node and hands back after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::block::{tx_root, Block, Hash, Header, Height, Limits, Round};
use super::vote::{
    quorum, Certificate, Committed, Proposal, SignRecord, SignedProposal, SignedVote, Step, Vote, VoteKind,
};
use crate::identity::{Identity, NodeId};

/// Votes for rounds this far beyond ours are dropped: a member cannot make us
/// store votes for a million rounds.
pub const MAX_ROUND_AHEAD: Round = 64;
/// Messages buffered for the next height, at most.
const MAX_FUTURE: usize = 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub network_id: [u8; 32],
    /// Sorted.
    pub members: Vec<NodeId>,
    pub block_interval_ms: u64,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub propose_ms: u64,
    pub prevote_ms: u64,
    pub precommit_ms: u64,
    pub delta_ms: u64,
}

/// Rounds after which timeouts stop growing. Growth lets a network find a
/// timeout that fits its latency; without a cap, a long partition leaves every
/// node at a high round with timeouts of tens of seconds, and the chain resumes
/// that much later after the partition heals (seen in the chaos soak: 20 s).
pub const MAX_TIMEOUT_GROWTH_ROUNDS: Round = 8;

impl Timeouts {
    /// The growth added to a base timeout in `round`.
    pub fn grow(&self, round: Round) -> u64 {
        self.delta_ms * round.min(MAX_TIMEOUT_GROWTH_ROUNDS) as u64
    }

    pub fn for_interval(block_interval_ms: u64) -> Self {
        let base = block_interval_ms.clamp(500, 3_000);
        Timeouts { propose_ms: base + 500, prevote_ms: base, precommit_ms: base, delta_ms: 500 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    Propose {
        height: Height,
        round: Round,
    },
    Prevote {
        height: Height,
        round: Round,
    },
    Precommit {
        height: Height,
        round: Round,
    },
    /// The commit timeout: start round 0 of `height`.
    StartHeight {
        height: Height,
    },
}

#[derive(Debug, Clone)]
pub enum Input {
    Proposal(SignedProposal),
    Vote(SignedVote),
    Timeout(Timeout),
    /// Transactions for the block we were asked to propose with `NeedValue`.
    Value {
        height: Height,
        round: Round,
        txs: Vec<Vec<u8>>,
    },
    /// A block with its certificate, fetched by sync.
    Commit(Committed),
    /// The quorum gate opened or closed.
    Quorum(bool),
}

pub use super::vote::{Lock, Signed};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Persist `record` (and `lock`, when there is one) durably, then broadcast
    /// `message`.
    Sign {
        record: SignRecord,
        message: Signed,
        /// Set with a precommit for a value: the lock it comes from (L36), which
        /// must survive a restart for the lock to mean anything.
        lock: Option<Box<Lock>>,
    },
    Schedule {
        timeout: Timeout,
        after_ms: u64,
    },
    /// We propose in this round and hold no valid value: send `Input::Value`.
    NeedValue {
        height: Height,
        round: Round,
    },
    /// Store durably before anything else happens; the core has moved on.
    Decided(Committed),
    /// A member broke the protocol (equivocation, a bad signature, an invalid block).
    Misbehaviour {
        node: NodeId,
        what: String,
    },
    /// A member is at a higher height than we are: time to sync.
    Ahead {
        node: NodeId,
        height: Height,
    },
}

#[derive(Debug, Default)]
struct RoundVotes {
    prevotes: BTreeMap<NodeId, SignedVote>,
    precommits: BTreeMap<NodeId, SignedVote>,
}

impl RoundVotes {
    fn of(&self, kind: VoteKind) -> &BTreeMap<NodeId, SignedVote> {
        match kind {
            VoteKind::Prevote => &self.prevotes,
            VoteKind::Precommit => &self.precommits,
        }
    }

    fn count(&self, kind: VoteKind, value: Option<Hash>) -> usize {
        self.of(kind).values().filter(|v| v.vote.block == value).count()
    }

    fn total(&self, kind: VoteKind) -> usize {
        self.of(kind).len()
    }
}

pub struct Core {
    cfg: Config,
    identity: Arc<Identity>,
    me: NodeId,
    q: usize,
    f1: usize,
    height: Height,
    round: Round,
    step: Step,
    started: bool,
    prev_hash: Hash,
    prev_ts: u64,
    locked: Option<(Round, Block)>,
    valid: Option<(Round, Block)>,
    proposals: BTreeMap<Round, SignedProposal>,
    /// Result of validating each round's proposed block, computed once.
    proposal_ok: BTreeMap<Round, bool>,
    votes: BTreeMap<Round, RoundVotes>,
    prevote_timer: BTreeSet<Round>,
    precommit_timer: BTreeSet<Round>,
    polka_seen: BTreeSet<Round>,
    last_signed: Option<SignRecord>,
    quorum: bool,
    deferred: Vec<Timeout>,
    future: Vec<Input>,
}

impl Core {
    /// A core at `height` (the tip's height + 1) whose parent is `(prev_hash,
    /// prev_ts)`. `last_signed` comes from the store.
    pub fn new(
        cfg: Config,
        identity: Arc<Identity>,
        height: Height,
        prev_hash: Hash,
        prev_ts: u64,
        last_signed: Option<SignRecord>,
    ) -> Core {
        let n = cfg.members.len();
        let q = quorum(n);
        Core {
            me: identity.id(),
            identity,
            q,
            f1: n - q + 1,
            cfg,
            height,
            round: 0,
            step: Step::Propose,
            started: false,
            prev_hash,
            prev_ts,
            locked: None,
            valid: None,
            proposals: BTreeMap::new(),
            proposal_ok: BTreeMap::new(),
            votes: BTreeMap::new(),
            prevote_timer: BTreeSet::new(),
            precommit_timer: BTreeSet::new(),
            polka_seen: BTreeSet::new(),
            last_signed,
            quorum: false,
            deferred: Vec::new(),
            future: Vec::new(),
        }
    }

    pub fn height(&self) -> Height {
        self.height
    }

    pub fn round(&self) -> Round {
        self.round
    }

    pub fn step(&self) -> Step {
        self.step
    }

    pub fn proposer(&self, height: Height, round: Round) -> NodeId {
        let n = self.cfg.members.len() as u64;
        self.cfg.members[((height + round as u64) % n) as usize]
    }

    /// Schedules the start of the current height; call once after `new`.
    pub fn start(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let after_ms = (self.prev_ts + self.cfg.block_interval_ms).saturating_sub(now_ms);
        out.push(Output::Schedule { timeout: Timeout::StartHeight { height: self.height }, after_ms });
        out
    }

    /// Restores what we signed at the current height before a restart, so that it
    /// is counted and replayed to peers (the same signatures again: no double
    /// signing). Messages for other heights are ignored.
    pub fn restore_own(&mut self, own: Vec<Signed>) {
        for m in own {
            match m {
                Signed::Proposal(p) if p.proposal.height == self.height && p.proposal.proposer == self.me => {
                    let ok = self.validate_block(&p.proposal.block, p.proposal.round, None).is_ok();
                    self.proposal_ok.insert(p.proposal.round, ok);
                    self.proposals.insert(p.proposal.round, p);
                }
                Signed::Vote(v) if v.vote.height == self.height && v.vote.voter == self.me => self.insert_vote(v),
                _ => {}
            }
        }
    }

    /// Restores the lock (L36) this node held at the current height before a
    /// restart: without it, a restarted node could prevote another value in a
    /// later round than the one it had locked on.
    pub fn restore_lock(&mut self, lock: Option<Lock>) {
        if let Some(lock) = lock.filter(|l| l.block.height() == self.height) {
            self.locked = Some((lock.round, lock.block.clone()));
            self.valid = Some((lock.round, lock.block));
        }
    }

    /// Our own signed messages for the current height, to replay to a peer that
    /// just connected and missed them.
    pub fn own_messages(&self) -> Vec<Signed> {
        let mut out = Vec::new();
        for (r, p) in &self.proposals {
            if self.proposer(self.height, *r) == self.me {
                out.push(Signed::Proposal(p.clone()));
            }
        }
        for rv in self.votes.values() {
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                if let Some(v) = rv.of(kind).get(&self.me) {
                    out.push(Signed::Vote(v.clone()));
                }
            }
        }
        out
    }

    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.apply(input, now_ms, &mut out);
        out
    }

    fn apply(&mut self, input: Input, now_ms: u64, out: &mut Vec<Output>) {
        match input {
            Input::Proposal(p) => self.on_proposal(p, now_ms, out),
            Input::Vote(v) => self.on_vote(v, now_ms, out),
            Input::Timeout(t) => self.on_timeout(t, now_ms, out),
            Input::Value { height, round, txs } => self.on_value(height, round, txs, now_ms, out),
            Input::Commit(c) => self.on_commit(c, now_ms, out),
            Input::Quorum(met) => {
                let was = self.quorum;
                self.quorum = met;
                if met && !was {
                    for t in std::mem::take(&mut self.deferred) {
                        self.on_timeout(t, now_ms, out);
                    }
                    self.check_rules(now_ms, out);
                }
            }
        }
    }

    fn on_proposal(&mut self, sp: SignedProposal, now_ms: u64, out: &mut Vec<Output>) {
        let p = &sp.proposal;
        if p.height < self.height {
            return;
        }
        if p.height > self.height {
            self.hold_future(p.proposer, p.height, Input::Proposal(sp), out);
            return;
        }
        if p.round > self.round + MAX_ROUND_AHEAD {
            return;
        }
        if p.proposer != self.proposer(p.height, p.round) {
            out.push(Output::Misbehaviour {
                node: p.proposer,
                what: format!("proposal for round {} it does not lead", p.round),
            });
            return;
        }
        if p.valid_round.is_some_and(|vr| vr >= p.round) {
            out.push(Output::Misbehaviour {
                node: p.proposer,
                what: "proposal with valid_round not below its round".into(),
            });
            return;
        }
        if let Some(existing) = self.proposals.get(&p.round) {
            if existing != &sp {
                out.push(Output::Misbehaviour {
                    node: p.proposer,
                    what: format!("two proposals for height {} round {}", p.height, p.round),
                });
            }
            return;
        }
        if let Err(e) = sp.verify(&self.cfg.network_id) {
            out.push(Output::Misbehaviour { node: p.proposer, what: format!("proposal: {e}") });
            return;
        }
        let round = p.round;
        let ok = self.validate_block(&p.block, round, Some(now_ms));
        if let Err(what) = &ok {
            out.push(Output::Misbehaviour { node: p.proposer, what: format!("invalid block: {what}") });
        }
        self.proposal_ok.insert(round, ok.is_ok());
        self.proposals.insert(round, sp);
        self.check_rules(now_ms, out);
    }

    fn validate_block(&self, block: &Block, round: Round, now_ms: Option<u64>) -> Result<(), String> {
        if block.header.round > round {
            return Err(format!("block of round {} proposed in round {round}", block.header.round));
        }
        let height = self.height;
        block
            .validate(self.prev_hash, height - 1, self.prev_ts, |r| self.proposer(height, r), now_ms, &self.cfg.limits)
            .map_err(|e| e.to_string())
    }

    fn on_vote(&mut self, sv: SignedVote, now_ms: u64, out: &mut Vec<Output>) {
        let v = &sv.vote;
        if v.height < self.height {
            return;
        }
        if !self.cfg.members.contains(&v.voter) {
            return;
        }
        if v.height > self.height {
            self.hold_future(v.voter, v.height, Input::Vote(sv), out);
            return;
        }
        if v.round > self.round + MAX_ROUND_AHEAD {
            return;
        }
        let existing = self.votes.get(&v.round).and_then(|rv| rv.of(v.kind).get(&v.voter));
        if let Some(existing) = existing {
            if existing.vote != sv.vote {
                out.push(Output::Misbehaviour {
                    node: v.voter,
                    what: format!("two {:?}s for height {} round {}", v.kind, v.height, v.round),
                });
            }
            return;
        }
        if let Err(e) = sv.verify(&self.cfg.network_id) {
            out.push(Output::Misbehaviour { node: v.voter, what: format!("vote: {e}") });
            return;
        }
        self.insert_vote(sv);
        self.check_rules(now_ms, out);
    }

    fn insert_vote(&mut self, sv: SignedVote) {
        let rv = self.votes.entry(sv.vote.round).or_default();
        let map = match sv.vote.kind {
            VoteKind::Prevote => &mut rv.prevotes,
            VoteKind::Precommit => &mut rv.precommits,
        };
        map.insert(sv.vote.voter, sv);
    }

    fn hold_future(&mut self, from: NodeId, height: Height, input: Input, out: &mut Vec<Output>) {
        out.push(Output::Ahead { node: from, height });
        if height == self.height + 1 && self.future.len() < MAX_FUTURE {
            self.future.push(input);
        }
    }

    fn on_timeout(&mut self, t: Timeout, now_ms: u64, out: &mut Vec<Output>) {
        if !self.quorum {
            // The gate is closed: no round advances until it opens again.
            if !self.deferred.contains(&t) {
                self.deferred.push(t);
            }
            return;
        }
        match t {
            Timeout::StartHeight { height } if height == self.height && !self.started => {
                self.started = true;
                self.start_round(0, now_ms, out);
            }
            // L57
            Timeout::Propose { height, round }
                if height == self.height && round == self.round && self.step == Step::Propose =>
            {
                self.vote(VoteKind::Prevote, None, out);
                self.step = Step::Prevote;
            }
            // L61
            Timeout::Prevote { height, round }
                if height == self.height && round == self.round && self.step == Step::Prevote =>
            {
                self.vote(VoteKind::Precommit, None, out);
                self.step = Step::Precommit;
            }
            // L65
            Timeout::Precommit { height, round } if height == self.height && round == self.round => {
                self.start_round(round + 1, now_ms, out);
            }
            _ => return,
        }
        self.check_rules(now_ms, out);
    }

    /// L11-L21
    fn start_round(&mut self, round: Round, now_ms: u64, out: &mut Vec<Output>) {
        self.round = round;
        self.step = Step::Propose;
        let t = &self.cfg.timeouts;
        let after_ms = t.propose_ms + t.grow(round);
        out.push(Output::Schedule { timeout: Timeout::Propose { height: self.height, round }, after_ms });
        if self.proposer(self.height, round) == self.me {
            match self.valid.clone() {
                Some((vr, block)) => self.propose(block, Some(vr), out),
                None => out.push(Output::NeedValue { height: self.height, round }),
            }
        }
        self.check_rules(now_ms, out);
    }

    fn on_value(&mut self, height: Height, round: Round, txs: Vec<Vec<u8>>, now_ms: u64, out: &mut Vec<Output>) {
        if height != self.height
            || round != self.round
            || self.step != Step::Propose
            || self.proposals.contains_key(&round)
        {
            return;
        }
        if self.proposer(height, round) != self.me || !self.quorum {
            return;
        }
        let block = Block {
            header: Header {
                height,
                round,
                prev_hash: self.prev_hash,
                timestamp_ms: now_ms.max(self.prev_ts + 1),
                proposer: self.me,
                tx_root: tx_root(&txs),
            },
            txs,
        };
        self.propose(block, None, out);
        self.check_rules(now_ms, out);
    }

    fn propose(&mut self, block: Block, valid_round: Option<Round>, out: &mut Vec<Output>) {
        let record = SignRecord { height: self.height, round: self.round, step: Step::Propose };
        if !self.may_sign(record) {
            return;
        }
        let proposal = Proposal { height: self.height, round: self.round, block, valid_round, proposer: self.me };
        let sp = proposal.sign(&self.cfg.network_id, &self.identity);
        self.last_signed = Some(record);
        let ok = self.validate_block(&sp.proposal.block, self.round, None).is_ok();
        self.proposal_ok.insert(self.round, ok);
        self.proposals.insert(self.round, sp.clone());
        out.push(Output::Sign { record, message: Signed::Proposal(sp), lock: None });
    }

    fn vote(&mut self, kind: VoteKind, block: Option<Hash>, out: &mut Vec<Output>) {
        let vote = Vote { kind, height: self.height, round: self.round, block, voter: self.me };
        let record = vote.record();
        if !self.may_sign(record) {
            return;
        }
        let sv = vote.sign(&self.cfg.network_id, &self.identity);
        self.last_signed = Some(record);
        self.insert_vote(sv.clone());
        let lock = match (kind, block, &self.locked) {
            (VoteKind::Precommit, Some(_), Some((round, value))) => {
                Some(Box::new(Lock { round: *round, block: value.clone() }))
            }
            _ => None,
        };
        out.push(Output::Sign { record, message: Signed::Vote(sv), lock });
    }

    /// Double-sign protection: only strictly after the last signature.
    fn may_sign(&self, record: SignRecord) -> bool {
        self.cfg.members.contains(&self.me) && self.last_signed.is_none_or(|last| record > last)
    }

    /// Re-evaluates every `upon` rule until none fires.
    fn check_rules(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        loop {
            let before = (self.height, self.round, self.step, out.len());
            self.rules_once(now_ms, out);
            if before == (self.height, self.round, self.step, out.len()) {
                break;
            }
        }
    }

    fn rules_once(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        // L49: a decision, from any round, needs no quorum gate: the votes prove it.
        let decided = self.proposals.iter().find_map(|(r, sp)| {
            let id = sp.proposal.block.hash();
            let enough = self.votes.get(r).is_some_and(|rv| rv.count(VoteKind::Precommit, Some(id)) >= self.q);
            (enough && self.proposal_ok.get(r) == Some(&true)).then(|| (*r, sp.proposal.block.clone()))
        });
        if let Some((r, block)) = decided {
            self.decide(r, block, now_ms, out);
            return;
        }
        if !self.started || !self.quorum {
            return;
        }
        let h = self.height;
        let r = self.round;
        let q = self.q;
        let proposal = self.proposals.get(&r).map(|sp| (sp.proposal.block.clone(), sp.proposal.valid_round));
        let ok = self.proposal_ok.get(&r) == Some(&true);
        if self.step == Step::Propose {
            if let Some((block, vr)) = &proposal {
                let id = block.hash();
                match vr {
                    // L22
                    None => {
                        let accept = ok && self.locked.as_ref().is_none_or(|(_, lv)| lv.hash() == id);
                        self.vote(VoteKind::Prevote, accept.then_some(id), out);
                        self.step = Step::Prevote;
                    }
                    // L28
                    Some(vr) => {
                        let polka = self.votes.get(vr).is_some_and(|rv| rv.count(VoteKind::Prevote, Some(id)) >= q);
                        if polka && *vr < r {
                            let accept =
                                ok && self.locked.as_ref().is_none_or(|(lr, lv)| *lr <= *vr || lv.hash() == id);
                            self.vote(VoteKind::Prevote, accept.then_some(id), out);
                            self.step = Step::Prevote;
                        }
                    }
                }
            }
        }
        let rv = self.votes.get(&r);
        let prevotes_total = rv.map_or(0, |rv| rv.total(VoteKind::Prevote));
        // L34
        if self.step == Step::Prevote && prevotes_total >= q && self.prevote_timer.insert(r) {
            let t = &self.cfg.timeouts;
            out.push(Output::Schedule {
                timeout: Timeout::Prevote { height: h, round: r },
                after_ms: t.prevote_ms + t.grow(r),
            });
        }
        // L36
        if let Some((block, _)) = &proposal {
            let id = block.hash();
            let polka = rv.is_some_and(|rv| rv.count(VoteKind::Prevote, Some(id)) >= q);
            if ok && polka && self.step >= Step::Prevote && !self.polka_seen.contains(&r) {
                self.polka_seen.insert(r);
                if self.step == Step::Prevote {
                    self.locked = Some((r, block.clone()));
                    self.vote(VoteKind::Precommit, Some(id), out);
                    self.step = Step::Precommit;
                }
                self.valid = Some((r, block.clone()));
            }
        }
        // L44
        let nil_polka = self.votes.get(&r).is_some_and(|rv| rv.count(VoteKind::Prevote, None) >= q);
        if self.step == Step::Prevote && nil_polka {
            self.vote(VoteKind::Precommit, None, out);
            self.step = Step::Precommit;
        }
        // L47
        let precommits_total = self.votes.get(&r).map_or(0, |rv| rv.total(VoteKind::Precommit));
        if precommits_total >= q && self.precommit_timer.insert(r) {
            let t = &self.cfg.timeouts;
            out.push(Output::Schedule {
                timeout: Timeout::Precommit { height: h, round: r },
                after_ms: t.precommit_ms + t.grow(r),
            });
        }
        // L55: f+1 members are in a later round: skip to it.
        let skip_to = self.votes.iter().filter(|(vr, _)| **vr > r).find_map(|(vr, rv)| {
            let mut senders: BTreeSet<NodeId> = rv.prevotes.keys().chain(rv.precommits.keys()).copied().collect();
            if let Some(sp) = self.proposals.get(vr) {
                senders.insert(sp.proposal.proposer);
            }
            (senders.len() >= self.f1).then_some(*vr)
        });
        if let Some(vr) = skip_to {
            self.start_round(vr, now_ms, out);
        }
    }

    fn decide(&mut self, round: Round, block: Block, now_ms: u64, out: &mut Vec<Output>) {
        let id = block.hash();
        let precommits: Vec<SignedVote> =
            self.votes[&round].precommits.values().filter(|v| v.vote.block == Some(id)).cloned().collect();
        let cert = Certificate { height: self.height, round, block: id, precommits };
        self.advance(block, now_ms, out, cert);
    }

    fn on_commit(&mut self, c: Committed, now_ms: u64, out: &mut Vec<Output>) {
        if c.block.height() != self.height {
            return;
        }
        if let Err(e) = c.cert.verify(&c.block, &self.cfg.members, &self.cfg.network_id) {
            out.push(Output::Misbehaviour { node: c.block.header.proposer, what: format!("synced block: {e}") });
            return;
        }
        if let Err(e) = self.validate_block(&c.block, c.block.header.round, None) {
            out.push(Output::Misbehaviour { node: c.block.header.proposer, what: format!("synced block: {e}") });
            return;
        }
        self.advance(c.block, now_ms, out, c.cert);
    }

    /// Commits `block` and moves to the next height (L49-L54).
    fn advance(&mut self, block: Block, now_ms: u64, out: &mut Vec<Output>, cert: Certificate) {
        self.prev_hash = block.hash();
        self.prev_ts = block.header.timestamp_ms;
        out.push(Output::Decided(Committed { block, cert }));
        self.height += 1;
        self.round = 0;
        self.step = Step::Propose;
        self.started = false;
        self.locked = None;
        self.valid = None;
        self.proposals.clear();
        self.proposal_ok.clear();
        self.votes.clear();
        self.prevote_timer.clear();
        self.precommit_timer.clear();
        self.polka_seen.clear();
        self.deferred.clear();
        out.extend(self.start(now_ms));
        for input in std::mem::take(&mut self.future) {
            let belongs = match &input {
                Input::Proposal(p) => p.proposal.height == self.height,
                Input::Vote(v) => v.vote.height == self.height,
                _ => false,
            };
            if belongs {
                self.apply(input, now_ms, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "consensus_tests.rs"]
mod tests;
