//! Byzantine members. A Byzantine slot runs a core of its own (so it takes part
//! like anyone else) and holds its key, with which it signs whatever a strategy
//! wants: conflicting votes, votes for every value, old rounds replayed to a node
//! that just restarted, re-proposals of an old polka's value, far-future and
//! forged messages, lying sync answers. The adversary sees every message on the
//! network (an omniscient scheduler, as in Twins) and keeps them as its history.
//! Twins (Bano et al. 2020) are two slots with one key, each with its own core.
//! A Byzantine proposer may also put invalid membership approvals in its blocks,
//! which honest members must refuse.

use std::collections::{BTreeMap, BTreeSet};

use super::core_api::*;
use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strategy {
    /// Each own vote or proposal goes to some peers, a conflicting one to the others.
    Equivocate,
    /// Prevote and precommit every proposed value (amnesia): polkas form with
    /// fewer honest votes, in several rounds of a height.
    VoteAll,
    /// Each own message reaches a random subset of peers.
    Selective,
    /// Own precommits and proposals are mostly withheld.
    Withhold,
    /// Own votes are held back and released late.
    LateVotes,
    /// To a node that just restarted: one old round's proposal and votes.
    ReplayOld,
    /// In its own rounds, and after a replay: propose an old polka's value with
    /// that polka's round as valid round.
    RePropose,
    /// Votes and proposals for far heights and rounds.
    FarFuture,
    /// Messages with bad signatures, or claiming another member's key.
    Forge,
    /// Announces tips it does not have; answers sync with forged, bloated or
    /// truncated certificates.
    LieSync,
    /// The adversary as scheduler of crashes and partitions: when an honest node
    /// locks above an older polka for another value, it crashes right after, and
    /// restarts cut off from the other nodes that prevoted its lock.
    RewindLock,
    /// Its blocks carry an invalid membership approval beside the valid ones (a
    /// bad signature, a non-member approver, a duplicate, an expired one, one
    /// from the future, a removal below `min_active`, an impossible change), and
    /// it gossips forged approvals.
    BadChanges,
    /// Its proposals go out compact with one transaction's id repeated to
    /// fill the block (and one id nobody has): a rebuild that copies per id
    /// holds a block's bytes from one transaction.
    CompactRepeat,
    /// Its proposals go out compact naming a transaction nobody holds.
    CompactWithhold,
    /// Its compact proposals' ids do not hash to their header's root, or an id
    /// is swapped for another.
    CompactMismatch,
    /// Its proposals name the transactions it flooded, more bytes than a
    /// block may hold (with [`Strategy::MempoolFlood`]).
    CompactOversize,
    /// `GetTxs` to it go unanswered.
    TxsWithhold,
    /// It answers `GetTxs` with a transaction over `max_tx_bytes`, or with
    /// transactions that are not the ones asked for.
    TxsOversize,
    /// It gossips transactions as fast as its share fills, and faster.
    MempoolFlood,
    /// It gossips valid approvals of made-up changes, many a second.
    ApprovalFlood,
    /// Its clock is off by seconds to a minute: its blocks' timestamps and
    /// its tips' clock readings.
    LyingClock,
    /// It answers sync with one block at a time, late.
    SyncDrip,
    /// Its proposals claim a valid round in which no polka formed for their
    /// value.
    ForgeValidRound,
    /// Votes for rounds past the window, for the next height's late rounds,
    /// and proposals for its rounds far ahead: many a second.
    VoteFlood,
    /// Sync requests many times its rate.
    RequestFlood,
    /// Proposals of distinct values for the rounds it leads ahead, then, in
    /// the current round, a prevote and a precommit for nil and for every
    /// value proposed at the height: many conflicting versions per round and
    /// kind, each for a value the receiver holds a proposal of.
    VoteConflicts,
    /// It answers `GetCheckpoint` with a lie: a block of another history, a
    /// certificate with a forged signature or fewer signers than a quorum, a
    /// member state that does not hash to the block's commitment, or never.
    LieCheckpoint,
}

/// What a Byzantine member answers a `GetCheckpoint` with
/// ([`Strategy::LieCheckpoint`]).
pub enum CheckpointLie {
    Answer(Box<CheckpointAnswer>),
    /// It never answers: the asker's transport times out.
    Silent,
}

/// The strategies a plan draws from its own stream, those of the driver's
/// inputs.
pub const DRIVER_ERA: [Strategy; 13] = [
    Strategy::CompactRepeat,
    Strategy::CompactWithhold,
    Strategy::CompactMismatch,
    Strategy::CompactOversize,
    Strategy::TxsWithhold,
    Strategy::TxsOversize,
    Strategy::MempoolFlood,
    Strategy::ApprovalFlood,
    Strategy::LyingClock,
    Strategy::SyncDrip,
    Strategy::ForgeValidRound,
    Strategy::VoteFlood,
    Strategy::RequestFlood,
];

/// The strategies a plan draws last, from the stream of
/// [`DRIVER_ERA`] after everything else it draws (older seeds keep their plans).
pub const LATER_ERA: [Strategy; 1] = [Strategy::VoteConflicts];

/// The strategies a plan draws from its main stream ([`Strategy::BadChanges`] is
/// drawn apart, so that older seeds keep their plans).
pub const ALL: [Strategy; 11] = [
    Strategy::Equivocate,
    Strategy::VoteAll,
    Strategy::Selective,
    Strategy::Withhold,
    Strategy::LateVotes,
    Strategy::ReplayOld,
    Strategy::RePropose,
    Strategy::FarFuture,
    Strategy::Forge,
    Strategy::LieSync,
    Strategy::RewindLock,
];

/// The ways [`Strategy::BadChanges`] makes an approval invalid.
const BAD_KINDS: u64 = 6;

/// A message the adversary wants sent; `genuine` when it carries a valid signature.
pub struct Send {
    pub to: usize,
    pub msg: Message,
    pub extra_delay: u64,
    pub genuine: bool,
}

#[derive(Default)]
struct RoundLog {
    proposals: Vec<SignedProposal>,
    prevotes: Vec<SignedVote>,
    precommits: Vec<SignedVote>,
}

pub struct Adversary {
    pub strategies: BTreeSet<Strategy>,
    /// The scenario's limits (what a flood aims at).
    limits: Limits,
    max_tx_bytes: usize,
    /// The mempool's bytes, of which each member's gossip has a share.
    mempool_bytes: usize,
    /// Transactions it flooded, newest last (a few hundred).
    flooded: std::collections::VecDeque<Vec<u8>>,
    /// The transaction it repeats in compact proposals, once gossiped.
    repeated: Option<Vec<u8>>,
    /// Cleared when the network turns calm: from then on Byzantine slots behave.
    pub active: bool,
    rng: Rng,
    /// The member set from each height on where it changed (the chain's, as
    /// honest nodes commit it: the adversary is omniscient).
    sets: BTreeMap<Height, Vec<NodeId>>,
    history: BTreeMap<(Height, Round), RoundLog>,
    blocks: BTreeMap<Hash, Block>,
    voted_all: BTreeSet<(NodeId, Height, Round, Hash)>,
    /// The old polka last replayed to a restarted node: (height, round, value).
    replayed: Option<(Height, Round, Hash)>,
}

impl Adversary {
    pub fn new(
        strategies: BTreeSet<Strategy>,
        members: Vec<NodeId>,
        rng: Rng,
        limits: Limits,
        mempool: MempoolLimits,
    ) -> Adversary {
        Adversary {
            active: !strategies.is_empty(),
            strategies,
            limits,
            max_tx_bytes: mempool.max_tx_bytes,
            mempool_bytes: mempool.max_bytes,
            flooded: std::collections::VecDeque::new(),
            repeated: None,
            rng,
            sets: BTreeMap::from([(1, members)]),
            history: BTreeMap::new(),
            blocks: BTreeMap::new(),
            voted_all: BTreeSet::new(),
            replayed: None,
        }
    }

    pub fn on(&self, s: Strategy) -> bool {
        self.active && self.strategies.contains(&s)
    }

    /// The chain's member sets, by the height from which each is in force.
    pub fn set_members(&mut self, sets: &BTreeMap<Height, Vec<NodeId>>) {
        self.sets.clone_from(sets);
    }

    /// The member set at `h` (past the known heights: the latest).
    fn members(&self, h: Height) -> &[NodeId] {
        self.sets.range(..=h).next_back().map_or(&[], |(_, ids)| ids.as_slice())
    }

    fn q(&self, h: Height) -> usize {
        quorum(self.members(h).len())
    }

    fn proposer(&self, h: Height, r: Round) -> NodeId {
        let members = self.members(h);
        members[((h + r as u64) % members.len() as u64) as usize]
    }

    /// A genuine message went onto the network.
    pub fn record(&mut self, m: &Signed) {
        match m {
            Signed::Proposal(p) => {
                let log = self.history.entry((p.proposal.height, p.proposal.round)).or_default();
                if !log.proposals.contains(p) {
                    log.proposals.push(p.clone());
                    self.blocks.entry(p.proposal.block.hash()).or_insert_with(|| p.proposal.block.clone());
                }
            }
            Signed::Vote(v) => {
                let log = self.history.entry((v.vote.height, v.vote.round)).or_default();
                let list = match v.vote.kind {
                    VoteKind::Prevote => &mut log.prevotes,
                    VoteKind::Precommit => &mut log.precommits,
                };
                if !list.contains(v) {
                    list.push(v.clone());
                }
            }
        }
    }

    /// Rounds at `h` with a polka (a quorum of prevotes) for a value whose block
    /// the adversary has seen.
    fn polkas(&self, h: Height) -> Vec<(Round, Hash)> {
        let mut out = Vec::new();
        let (members, q) = (self.members(h), self.q(h));
        for ((_, r), log) in self.history.range((h, 0)..=(h, Round::MAX)) {
            let mut by_value: BTreeMap<Hash, BTreeSet<NodeId>> = BTreeMap::new();
            for v in &log.prevotes {
                if let Some(b) = v.vote.block.filter(|_| members.contains(&v.vote.voter)) {
                    by_value.entry(b).or_default().insert(v.vote.voter);
                }
            }
            for (value, voters) in by_value {
                if voters.len() >= q && self.blocks.contains_key(&value) {
                    out.push((*r, value));
                }
            }
        }
        out
    }

    fn subset(&mut self, peers: &[usize], permille: u64) -> Vec<usize> {
        peers.iter().copied().filter(|_| self.rng.chance(permille)).collect()
    }

    /// A genuinely signed message for `to`: a vote as it is, a proposal in
    /// full or in its compact form (whose transactions the receiver then
    /// fetches from the proposer or the sender, who may not hold them).
    fn send(&mut self, to: usize, m: Signed, extra_delay: u64) -> Send {
        self.record(&m);
        let msg = match m {
            Signed::Vote(v) => Message::Vote(v),
            Signed::Proposal(p) if self.rng.chance(500) => Message::CompactProposal(CompactProposal::of(&p)),
            Signed::Proposal(p) => Message::Proposal(p),
        };
        Send { to, msg, extra_delay, genuine: true }
    }

    /// What becomes of a message the Byzantine slot's own core signed.
    pub fn own_sign(&mut self, me: &Identity, m: Signed, peers: &[usize]) -> Vec<Send> {
        let mut targets: Vec<usize> = peers.to_vec();
        if self.on(Strategy::Selective) {
            targets = self.subset(peers, 500);
        }
        let is_precommit = matches!(&m, Signed::Vote(v) if v.vote.kind == VoteKind::Precommit);
        let is_proposal = matches!(&m, Signed::Proposal(_));
        if self.on(Strategy::Withhold) && (is_precommit || is_proposal) {
            targets.retain(|_| self.rng.chance(if is_precommit { 200 } else { 500 }));
        }
        let late = self.on(Strategy::LateVotes) && !is_proposal && self.rng.chance(500);
        let mut out = Vec::new();
        let conflicting = if self.on(Strategy::Equivocate) { self.conflicting(me, &m) } else { None };
        for to in targets {
            let extra = if late { self.rng.range(500, 4000) } else { 0 };
            match &conflicting {
                Some(other) if self.rng.chance(500) => out.push(self.send(to, other.clone(), extra)),
                _ => out.push(self.send(to, m.clone(), extra)),
            }
        }
        out
    }

    /// Another message for the same (height, round, step), signed with `me`.
    fn conflicting(&mut self, me: &Identity, m: &Signed) -> Option<Signed> {
        match m {
            Signed::Vote(v) => {
                let v = &v.vote;
                let other = match v.block {
                    Some(_) => None,
                    None => {
                        let known: Vec<Hash> = self
                            .history
                            .get(&(v.height, v.round))
                            .map(|l| l.proposals.iter().map(|p| p.proposal.block.hash()).collect())
                            .unwrap_or_default();
                        Some(self.rng.pick(&known).copied().unwrap_or(Hash([0xee; 32])))
                    }
                };
                let vote = Vote { block: other, ..v.clone() };
                Some(Signed::Vote(vote.sign(&NET, me)))
            }
            Signed::Proposal(p) => {
                let mut block = p.proposal.block.clone();
                block.txs.push(format!("equivocation {}", self.rng.next_u64()).into_bytes().into());
                block.header.tx_root = tx_root(&block.txs);
                let sp = propose(block, p.proposal.round, p.proposal.valid_round, me);
                Some(Signed::Proposal(sp))
            }
        }
    }

    /// With `RewindLock`: whether a polka for another value than `value` formed
    /// at `h` in an older round than `round`.
    pub fn rewind_target(&self, h: Height, round: Round, value: Hash) -> bool {
        self.on(Strategy::RewindLock) && self.polkas(h).iter().any(|(r, v)| *r < round && *v != value)
    }

    /// The members that prevoted `value` in `round` at `h`.
    pub fn prevoters(&self, h: Height, round: Round, value: Hash) -> BTreeSet<NodeId> {
        let Some(log) = self.history.get(&(h, round)) else { return BTreeSet::new() };
        log.prevotes.iter().filter(|v| v.vote.block == Some(value)).map(|v| v.vote.voter).collect()
    }

    /// A message reached the Byzantine slot.
    pub fn on_receive(&mut self, me: &Identity, m: &Message, peers: &[usize]) -> Vec<Send> {
        let mut out = Vec::new();
        let (height, round, proposer, value) = match m {
            Message::Proposal(p) => (p.proposal.height, p.proposal.round, p.proposal.proposer, p.proposal.block.hash()),
            Message::CompactProposal(p) => (p.height, p.round, p.proposer, p.header.hash()),
            _ => return out,
        };
        if !self.on(Strategy::VoteAll) || proposer != self.proposer(height, round) {
            return out;
        }
        if !self.voted_all.insert((me.id(), height, round, value)) {
            return out;
        }
        let late = self.on(Strategy::LateVotes);
        let pv = Signed::Vote(prevote(height, round, Some(value), me));
        let pc = Signed::Vote(precommit(height, round, Some(value), me));
        for to in self.subset(peers, 700) {
            let extra = if late && self.rng.chance(500) { self.rng.range(500, 3000) } else { 0 };
            out.push(self.send(to, pv.clone(), extra));
        }
        for to in self.subset(peers, 500) {
            let extra = if late && self.rng.chance(500) { self.rng.range(500, 4000) } else { 0 };
            out.push(self.send(to, pc.clone(), extra));
        }
        out
    }

    /// The core asks the Byzantine slot for a value: with `RePropose`, an old
    /// polka's value with that polka's round.
    /// The proposal comes with the slot's own prevote and precommit for it; the
    /// value replayed last to a restarted node is preferred.
    pub fn need_value(&mut self, me: &Identity, h: Height, r: Round) -> Option<Vec<Signed>> {
        if !self.on(Strategy::RePropose) {
            return None;
        }
        let polkas: Vec<_> = self.polkas(h).into_iter().filter(|(pr, _)| *pr < r).collect();
        let replayed = self.replayed.filter(|(rh, rr, rv)| *rh == h && polkas.contains(&(*rr, *rv)));
        let (vr, value) = match replayed {
            Some((_, rr, rv)) => (rr, rv),
            None => *self.rng.pick(&polkas)?,
        };
        let block = self.blocks.get(&value)?.clone();
        Some(vec![
            Signed::Proposal(propose(block, r, Some(vr), me)),
            Signed::Vote(prevote(h, r, Some(value), me)),
            Signed::Vote(precommit(h, r, Some(value), me)),
        ])
    }

    /// `target` (at height `h`) just restarted and connected to the Byzantine slot.
    /// `lock` is what it persisted, `last` its last signature.
    pub fn on_restart_seen(
        &mut self,
        me: &Identity,
        target: usize,
        h: Height,
        lock: Option<(Round, Hash)>,
        last: Option<SignRecord>,
        peers: &[usize],
    ) -> Vec<Send> {
        let mut out = Vec::new();
        if !self.on(Strategy::ReplayOld) {
            return out;
        }
        let polkas = self.polkas(h);
        // Best for the attacker: an older polka for another value than the lock.
        let older: Vec<_> =
            polkas.iter().copied().filter(|(r, v)| lock.is_some_and(|(lr, lv)| *r < lr && *v != lv)).collect();
        let choice = if !older.is_empty() && self.rng.chance(800) {
            self.rng.pick(&older).copied()
        } else {
            self.rng.pick(&polkas).copied()
        };
        let (old_round, value) = match choice {
            Some((r, v)) => (r, Some(v)),
            None => {
                let rounds: Vec<Round> = self.history.range((h, 0)..=(h, Round::MAX)).map(|((_, r), _)| *r).collect();
                match self.rng.pick(&rounds) {
                    Some(r) => (*r, None),
                    None => return out,
                }
            }
        };
        let log = &self.history[&(h, old_round)];
        let mut replay: Vec<Signed> = Vec::new();
        replay.extend(
            log.proposals.iter().filter(|p| Some(p.proposal.block.hash()) == value).cloned().map(Signed::Proposal),
        );
        replay.extend(
            log.proposals.iter().filter(|p| Some(p.proposal.block.hash()) != value).cloned().map(Signed::Proposal),
        );
        replay.extend(log.prevotes.iter().cloned().map(Signed::Vote));
        if self.rng.chance(500) {
            replay.extend(log.precommits.iter().cloned().map(Signed::Vote));
        }
        // Votes of rounds past the lock help the node walk up past it (L55)
        // without meeting the polka it locked on.
        let above = lock.map_or(old_round, |(lr, _)| lr.max(old_round));
        for ((_, _), log) in self.history.range((h, above + 1)..=(h, Round::MAX)) {
            replay.extend(log.prevotes.iter().cloned().map(Signed::Vote));
            replay.extend(log.precommits.iter().cloned().map(Signed::Vote));
        }
        // The old polka also goes to the others, so that they can follow a
        // re-proposal of its value (L28) together with the restarted node.
        let others: Vec<usize> = peers.iter().copied().filter(|p| *p != target).collect();
        let old: Vec<Signed> = log
            .proposals
            .iter()
            .cloned()
            .map(Signed::Proposal)
            .chain(log.prevotes.iter().cloned().map(Signed::Vote))
            .collect();
        for to in others {
            for m in &old {
                out.push(self.send(to, m.clone(), 0));
            }
        }
        for (i, m) in replay.into_iter().enumerate() {
            out.push(self.send(target, m, i as u64));
        }
        let Some(value) = value else { return out };
        self.replayed = Some((h, old_round, value));
        if !self.on(Strategy::RePropose) {
            return out;
        }
        let Some(block) = self.blocks.get(&value).cloned() else { return out };
        // The next rounds this key leads past everything the target signed.
        let from = last.map_or(0, |l| l.round).max(lock.map_or(0, |l| l.0)) + 1;
        let mine: Vec<Round> = (from..from + 3 * self.members(h).len() as Round)
            .filter(|r| self.proposer(h, *r) == me.id())
            .take(2)
            .collect();
        for r in mine {
            let sp = Signed::Proposal(propose(block.clone(), r, Some(old_round), me));
            let pv = Signed::Vote(prevote(h, r, Some(value), me));
            let pc = Signed::Vote(precommit(h, r, Some(value), me));
            for to in std::iter::once(target).chain(self.subset(peers, 500)) {
                let extra = self.rng.range(50, 1500);
                out.push(self.send(to, sp.clone(), extra));
                out.push(self.send(to, pv.clone(), extra + 1));
                let late = extra + self.rng.range(1, 2000);
                out.push(self.send(to, pc.clone(), late));
            }
        }
        out
    }

    /// Unprompted mischief, once a second.
    pub fn tick(&mut self, me: &Identity, h: Height, r: Round, wall_ms: u64, peers: &[usize]) -> Vec<Send> {
        let mut out = Vec::new();
        let Some(&to) = self.rng.pick(peers) else { return out };
        if self.on(Strategy::FarFuture) && self.rng.chance(150) {
            let (fh, fr) = match self.rng.below(4) {
                0 => (h + 1, r),
                1 => (h + self.rng.range(2, 1_000_000), 0),
                2 => (h, r + self.rng.range(1, MAX_ROUND_AHEAD as u64) as Round),
                _ => (h, r + self.rng.range(MAX_ROUND_AHEAD as u64 + 1, 1 << 30) as Round),
            };
            let v = if self.rng.chance(500) { prevote(fh, fr, None, me) } else { precommit(fh, fr, None, me) };
            out.push(Send { to, msg: Message::Vote(v), extra_delay: 0, genuine: true });
        }
        if self.on(Strategy::Forge) && self.rng.chance(150) {
            let members = self.members(h).to_vec();
            let victim = *self.rng.pick(&members).unwrap_or(&me.id());
            let mut v = prevote(h, r, Some(Hash([self.rng.below(255) as u8; 32])), me);
            v.vote.voter = victim;
            if self.rng.chance(500) {
                v.signature = [self.rng.below(255) as u8; 64];
            }
            out.push(Send { to, msg: Message::Vote(v), extra_delay: 0, genuine: false });
            if let Some(p) = self.history.get(&(h, r)).and_then(|l| l.proposals.first()).cloned() {
                let mut p = p;
                p.proposal.valid_round = None;
                p.proposal.block.txs.push(b"forged".to_vec().into());
                p.proposal.block.header.tx_root = tx_root(&p.proposal.block.txs);
                out.push(Send { to, msg: Message::Proposal(p), extra_delay: 0, genuine: false });
            }
        }
        if self.on(Strategy::LieSync) && self.rng.chance(100) {
            let height = h + self.rng.range(1, 50);
            let tip = Message::Tip { height, hash: Hash([0x77; 32]), time_ms: wall_ms };
            out.push(Send { to, msg: tip, extra_delay: 0, genuine: false });
        }
        if self.on(Strategy::BadChanges) && self.rng.chance(100) {
            let members = self.members(h).to_vec();
            let victim = *self.rng.pick(&members).unwrap_or(&me.id());
            let mut sa =
                Approval { change: Change::Remove { id: victim }, approver: me.id(), signed_at: h - 1 }.sign(&NET, me);
            sa.signature[self.rng.below(64) as usize] ^= 0x10;
            out.push(Send { to, msg: Message::Approval(sa), extra_delay: 0, genuine: false });
        }
        self.floods(me, h, r, peers, &mut out);
        if self.on(Strategy::VoteConflicts) {
            self.vote_conflicts(me, h, r, peers, &mut out);
        }
        out
    }

    /// [`Strategy::VoteConflicts`]: a fresh proposal of its own, of a value
    /// of its own, for each of the next rounds it leads (a few, once each),
    /// then a prevote and a precommit of round `r` for nil and for each value
    /// proposed at `h`, to every peer. Each is a version a receiver may keep
    /// (nil, or a value it holds a proposal of): it keeps two beside the
    /// first, and no more.
    fn vote_conflicts(&mut self, me: &Identity, h: Height, r: Round, peers: &[usize], out: &mut Vec<Send>) {
        let all = |out: &mut Vec<Send>, msg: Message| {
            for &to in peers {
                out.push(Send { to, msg: msg.clone(), extra_delay: 0, genuine: true });
            }
        };
        if let Some((prev_hash, timestamp_ms)) = self.parent_of(h) {
            let ahead: Vec<Round> =
                (r + 1..=r + MAX_ROUND_AHEAD).filter(|k| self.proposer(h, *k) == me.id()).take(4).collect();
            for round in ahead {
                let proposed = self
                    .history
                    .get(&(h, round))
                    .is_some_and(|l| l.proposals.iter().any(|p| p.proposal.proposer == me.id()));
                if proposed {
                    continue;
                }
                let sp = self.fresh_proposal(me, h, round, prev_hash, timestamp_ms);
                self.record(&Signed::Proposal(sp.clone()));
                all(out, Message::Proposal(sp));
            }
        }
        let mut values: BTreeSet<Option<Hash>> = BTreeSet::from([None]);
        for (_, log) in self.history.range((h, 0)..=(h, Round::MAX)) {
            values.extend(log.proposals.iter().map(|p| Some(p.proposal.block.hash())));
        }
        for value in values.into_iter().take(8) {
            all(out, Message::Vote(prevote(h, r, value, me)));
            all(out, Message::Vote(precommit(h, r, value, me)));
        }
    }

    /// The floods, each tick: transactions, approvals, votes and proposals
    /// past what any structure keeps, to every peer.
    fn floods(&mut self, me: &Identity, h: Height, r: Round, peers: &[usize], out: &mut Vec<Send>) {
        let all = |out: &mut Vec<Send>, msg: Message| {
            for &to in peers {
                out.push(Send { to, msg: msg.clone(), extra_delay: 0, genuine: false });
            }
        };
        if self.on(Strategy::CompactRepeat) && self.repeated.is_none() {
            let tx = self.fresh_tx(self.max_tx_bytes);
            self.repeated = Some(tx.clone());
            all(out, Message::Tx(tx));
        }
        if self.on(Strategy::MempoolFlood) {
            // Its share of a receiver's mempool in about four ticks, at least
            // a dozen transactions a tick: faster than blocks take them where
            // the mempool is many blocks large (BigMempool), so that the
            // share fills there too.
            let share = self.mempool_bytes / 2 / self.members(h).len().saturating_sub(1).max(1);
            let count = (share / (4 * (self.max_tx_bytes / 2).max(1))).clamp(12, 48);
            for _ in 0..count {
                let len = self.rng.range(1, self.max_tx_bytes as u64) as usize;
                let tx = self.fresh_tx(len);
                self.flooded.push_back(tx.clone());
                if self.flooded.len() > 400 {
                    self.flooded.pop_front();
                }
                all(out, Message::Tx(tx));
            }
        }
        if self.on(Strategy::ApprovalFlood) {
            for _ in 0..10 {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                let addr = std::net::SocketAddr::from(([10, 1, 2, 3], self.rng.range(1024, 65_000) as u16));
                let change = Change::Add { id: NodeId(id), addr };
                let sa = Approval { change, approver: me.id(), signed_at: h - 1 }.sign(&NET, me);
                all(out, Message::Approval(sa));
            }
        }
        if self.on(Strategy::VoteFlood) {
            // Rounds past the window (dropped unread), late rounds of the next
            // height (past its buffer), and proposals of its own far rounds.
            for _ in 0..60 {
                let far = r + MAX_ROUND_AHEAD + self.rng.range(1, 100_000) as Round;
                all(out, Message::Vote(prevote(h, far, None, me)));
            }
            for _ in 0..20 {
                let late = self.rng.range(9, 200) as Round;
                let v = if self.rng.chance(500) {
                    prevote(h + 1, late, None, me)
                } else {
                    precommit(h + 1, late, None, me)
                };
                all(out, Message::Vote(v));
            }
            // One vote a round or two ahead: alone, it moves no honest node (L55
            // needs f+1 members there).
            all(out, Message::Vote(prevote(h, r + self.rng.range(1, 2) as Round, None, me)));
            // Compact proposals of its own rounds past the fetch window, within
            // the rounds a core takes: kept for later, a few.
            let n = self.members(h).len().max(1) as Round;
            if let Some((prev_hash, timestamp_ms)) = self.parent_of(h) {
                let mut sent = 0;
                for round in r + 2..=r + MAX_ROUND_AHEAD {
                    if sent >= 10 || self.proposer(h, round) != me.id() {
                        continue;
                    }
                    sent += 1;
                    let sp = self.fresh_proposal(me, h, round, prev_hash, timestamp_ms);
                    all(out, Message::CompactProposal(CompactProposal::of(&sp)));
                }
            }
            let mine = (0..n).find(|k| self.proposer(h, r + MAX_ROUND_AHEAD + 1 + k) == me.id());
            if let (Some(k), Some(block)) = (mine, self.blocks.values().find(|b| b.height() == h).cloned()) {
                for i in 0..5 {
                    let round = r + MAX_ROUND_AHEAD + 1 + k + n * i * self.rng.range(1, 50) as Round;
                    let sp = propose(block.clone(), round, Some(block.header.round), me);
                    all(out, Message::Proposal(sp));
                }
            }
        }
    }

    /// The parent hash and timestamp of a block of height `h` it has seen.
    fn parent_of(&self, h: Height) -> Option<(Hash, u64)> {
        self.blocks.values().find(|b| b.height() == h).map(|b| (b.header.prev_hash, b.header.timestamp_ms))
    }

    /// A proposal of its own for `(h, round)`, of one transaction no one else
    /// sends, on the parent `prev_hash` stamped `timestamp_ms`.
    fn fresh_proposal(
        &mut self,
        me: &Identity,
        h: Height,
        round: Round,
        prev_hash: Hash,
        timestamp_ms: u64,
    ) -> SignedProposal {
        let txs = vec![self.fresh_tx(32)];
        let header = Header {
            height: h,
            round,
            prev_hash,
            timestamp_ms,
            proposer: me.id(),
            tx_root: tx_root(&txs),
            changes: vec![],
        };
        propose(Block { header, txs: txs.into_iter().map(Into::into).collect() }, round, None, me)
    }

    /// A transaction of `len` bytes no one else sends.
    fn fresh_tx(&mut self, len: usize) -> Vec<u8> {
        let mut tx = format!("adversary {:016x} ", self.rng.next_u64()).into_bytes();
        tx.resize(len.max(tx.len()), 0x5a);
        tx.truncate(len.max(1));
        tx
    }

    /// What becomes of the Byzantine proposer's own proposal `p` (its block as
    /// its driver built it, `prev` and timestamp included) with the compact
    /// strategies and forged valid rounds: `None` to leave it to the others.
    pub fn rework_proposal(&mut self, me: &Identity, p: &SignedProposal) -> Option<Vec<Message>> {
        let (h, r) = (p.proposal.height, p.proposal.round);
        let header = &p.proposal.block.header;
        let build = |txs: Vec<Vec<u8>>| {
            let mut header = header.clone();
            header.tx_root = tx_root(&txs);
            Block { header, txs: txs.into_iter().map(Into::into).collect() }
        };
        if self.on(Strategy::CompactRepeat) && self.rng.chance(600) {
            if let Some(tx) = self.repeated.clone() {
                let count = (self.limits.max_block_bytes / tx.len().max(1)).clamp(2, self.limits.max_block_txs - 1);
                let mut txs = vec![tx; count];
                let missing = self.fresh_tx(16);
                txs.push(missing);
                let sp = propose(build(txs), r, None, me);
                return Some(vec![Message::CompactProposal(CompactProposal::of(&sp))]);
            }
        }
        if self.on(Strategy::CompactOversize) && self.rng.chance(600) && !self.flooded.is_empty() {
            let mut txs = Vec::new();
            // As many as a block may name, newest first: under a mempool
            // many blocks large (BigMempool) a rebuild that went on past
            // `max_block_bytes` would hold all of those the receiver holds.
            for tx in self.flooded.iter().rev() {
                if txs.len() + 1 >= self.limits.max_block_txs {
                    break;
                }
                txs.push(tx.clone());
            }
            txs.push(self.fresh_tx(16));
            let sp = propose(build(txs), r, None, me);
            return Some(vec![Message::CompactProposal(CompactProposal::of(&sp))]);
        }
        if self.on(Strategy::CompactWithhold) && self.rng.chance(600) {
            let mut txs: Vec<Vec<u8>> = p.proposal.block.txs.iter().map(|t| t.to_vec()).collect();
            txs.push(self.fresh_tx(64));
            let sp = propose(build(txs), r, p.proposal.valid_round, me);
            self.record(&Signed::Proposal(sp.clone()));
            return Some(vec![Message::CompactProposal(CompactProposal::of(&sp))]);
        }
        if self.on(Strategy::CompactMismatch) && self.rng.chance(600) {
            let mut cp = CompactProposal::of(p);
            match self.rng.below(3) {
                0 => cp.ids.push(Hash([0x3c; 32])),
                1 if !cp.ids.is_empty() => cp.ids[0] = Hash([0x3d; 32]),
                _ => cp.ids.reverse(),
            }
            if cp.ids.len() < 2 && cp.ids == CompactProposal::of(p).ids {
                cp.ids.push(Hash([0x3e; 32]));
            }
            return Some(vec![Message::CompactProposal(cp)]);
        }
        if self.on(Strategy::ForgeValidRound) && self.rng.chance(700) {
            if let Some(sp) = self.forged_valid_round(me, h, r) {
                let signed = Signed::Proposal(sp);
                self.record(&signed);
                let msg = match signed {
                    Signed::Proposal(sp) if self.rng.chance(500) => Message::CompactProposal(CompactProposal::of(&sp)),
                    Signed::Proposal(sp) => Message::Proposal(sp),
                    Signed::Vote(v) => Message::Vote(v),
                };
                return Some(vec![msg]);
            }
        }
        None
    }

    /// A proposal of round `r` for a block of an earlier round at `h` that
    /// claims a valid round in which no polka for it formed.
    fn forged_valid_round(&mut self, me: &Identity, h: Height, r: Round) -> Option<SignedProposal> {
        let polkas = self.polkas(h);
        let mut candidates = Vec::new();
        for ((_, pr), log) in self.history.range((h, 0)..(h, r)) {
            for p in &log.proposals {
                let block = &p.proposal.block;
                let value = block.hash();
                for vr in block.header.round.max(*pr)..r {
                    if !polkas.contains(&(vr, value)) {
                        candidates.push((block.clone(), vr));
                    }
                }
            }
        }
        let (block, vr) = self.rng.pick(&candidates)?.clone();
        Some(propose(block, r, Some(vr), me))
    }

    /// The answer a Byzantine slot gives to a `GetTxs` its driver answered
    /// with `txs`: `None` to leave it unanswered.
    pub fn txs_answer(&mut self, txs: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        if self.on(Strategy::TxsWithhold) && self.rng.chance(700) {
            return None;
        }
        if self.on(Strategy::TxsOversize) && self.rng.chance(700) {
            let mut txs = txs;
            if self.rng.chance(500) {
                let len = self.max_tx_bytes + 1 + self.rng.below(1000) as usize;
                let big = self.fresh_tx(len);
                txs.insert(0, big);
            } else {
                for tx in &mut txs {
                    tx.push(0x01);
                }
            }
            return Some(txs);
        }
        Some(txs)
    }

    /// With [`Strategy::SyncDrip`], how a sync answer goes out: at most one
    /// block, and how late.
    /// With [`Strategy::LieCheckpoint`]: what Byzantine `me` answers a
    /// `GetCheckpoint` of `height` with, instead of `held` (its store's
    /// answer); `None`: the truth. Each lie is one a node must refuse.
    pub fn checkpoint_lie(
        &mut self,
        me: &Identity,
        height: Height,
        held: Option<CheckpointAnswer>,
    ) -> Option<CheckpointLie> {
        if !self.on(Strategy::LieCheckpoint) {
            return None;
        }
        let kind = self.rng.below(8);
        let other = |h: Height| CheckpointLie::Answer(Box::new(other_checkpoint(me, h)));
        let Some(mut a) = held else {
            return Some(if kind == 7 { CheckpointLie::Silent } else { other(height) });
        };
        let h = a.committed.block.height();
        match kind {
            // Another history at the height.
            0 | 1 => return Some(other(h)),
            // The state after the parent, altered: a member it says was
            // touched, or an upgrade plan no block completed.
            2 | 3 => {
                a.before.touched.insert(outsider().id(), h - 1);
            }
            4 => a.before.schedule.push(UpgradePlan { version: MAX_VERSION + 1, height: h + 2 }),
            // A precommit whose signature does not verify.
            5 => {
                if let Some(pc) = a.committed.cert.precommits.first_mut() {
                    pc.signature[0] ^= 1;
                }
            }
            // Fewer signers than a quorum of the set.
            6 => {
                let q = quorum(a.before.current.len());
                a.committed.cert.precommits.truncate(q.saturating_sub(1));
            }
            _ => return Some(CheckpointLie::Silent),
        }
        Some(CheckpointLie::Answer(Box::new(a)))
    }

    pub fn drip(&mut self) -> Option<u64> {
        (self.on(Strategy::SyncDrip) && self.rng.chance(800)).then(|| self.rng.range(500, 4_000))
    }

    /// With [`Strategy::BadChanges`], now and then: the approvals of a block this
    /// Byzantine proposer builds at `membership.applied() + 1`, the valid ones
    /// (`valid`, chosen from its pool) with an invalid one among them, and
    /// where that one is.
    pub fn bad_changes(
        &mut self,
        me: &Identity,
        membership: &Membership,
        valid: &[SignedApproval],
    ) -> Option<(Vec<SignedApproval>, usize)> {
        if !self.on(Strategy::BadChanges) || !self.rng.chance(600) {
            return None;
        }
        let tip = membership.applied();
        let ttl = membership.params().ttl;
        let outsider = outsider();
        let outsider_add = Change::Add { id: outsider.id(), addr: outsider_addr() };
        // The set the valid approvals leave two heights on.
        let mut after = membership.clone();
        after.apply(valid, &NET);
        let after = after.next().clone();
        let members: Vec<NodeId> = after.ids();
        let victim = *self.rng.pick(&members).unwrap_or(&me.id());
        let others: Vec<NodeId> = members.iter().copied().filter(|m| *m != me.id()).collect();
        let other = self.rng.pick(&others).copied();
        let mine = |change: Change, signed_at: Height| Approval { change, approver: me.id(), signed_at }.sign(&NET, me);
        let mut out = valid.to_vec();
        // A removal below `min_active` can only be made while the set is that
        // small (after a removal the valid approvals complete, or one the chain
        // completed but not yet in force): take the chance when it comes.
        let small = after.len() <= MIN_ACTIVE;
        let kind = if small && self.rng.chance(500) { 4 } else { self.rng.below(BAD_KINDS) };
        let bad = match kind {
            // A signature that does not verify.
            0 => {
                let mut sa = mine(Change::Remove { id: victim }, tip);
                sa.signature[self.rng.below(64) as usize] ^= 0x01;
                sa
            }
            // Signed by a key outside the set.
            1 => Approval { change: outsider_add, approver: outsider.id(), signed_at: tip }.sign(&NET, &outsider),
            // Twice the same approval.
            2 => {
                let sa = valid.first().cloned().unwrap_or_else(|| mine(outsider_add, tip));
                if valid.is_empty() {
                    out.push(sa.clone());
                }
                sa
            }
            // Signed too long ago, or ahead of the chain when the chain is young.
            3 if tip > ttl => mine(outsider_add, tip - ttl - 1 - self.rng.below(tip - ttl)),
            3 => mine(outsider_add, tip + 1 + self.rng.below(3)),
            // A removal below `min_active` when the set is that small; else the
            // removal of a non-member.
            4 if small => mine(Change::Remove { id: victim }, tip),
            4 => mine(Change::Remove { id: outsider.id() }, tip),
            // Adding a member, or moving another member's address.
            _ => match other.filter(|_| self.rng.chance(500)) {
                Some(other) => mine(Change::SetAddr { id: other, addr: outsider_addr(), seq: 1 }, tip),
                None => mine(Change::Add { id: victim, addr: outsider_addr() }, tip),
            },
        };
        // Anywhere among the valid ones; after them where it is refused for what
        // they do (a duplicate, a removal below `min_active`).
        let at =
            if kind == 2 || (kind == 4 && small) { out.len() } else { self.rng.below(out.len() as u64 + 1) as usize };
        out.insert(at, bad);
        Some((out, at))
    }

    /// The answer to a sync request, or `None` to answer honestly.
    pub fn sync_reply(&mut self, me: &Identity, from_height: Height, chain: &[Committed]) -> Option<Vec<Committed>> {
        if !self.on(Strategy::LieSync) {
            return None;
        }
        let real = chain.get(from_height.saturating_sub(1) as usize).cloned();
        let prev = if from_height <= 1 {
            (genesis_hash(&NET), GENESIS_MS)
        } else {
            chain
                .get(from_height as usize - 2)
                .map_or((Hash([7; 32]), 0), |c| (c.block.hash(), c.block.header.timestamp_ms))
        };
        let block = match (&real, self.rng.chance(500)) {
            (Some(c), true) => c.block.clone(),
            _ => {
                let txs = vec![format!("forged {}", self.rng.next_u64()).into_bytes()];
                Block {
                    header: Header {
                        height: from_height,
                        round: 0,
                        prev_hash: prev.0,
                        timestamp_ms: prev.1 + 1,
                        proposer: self.proposer(from_height, 0),
                        tx_root: tx_root(&txs),
                        changes: vec![],
                    },
                    txs: txs.into_iter().map(Into::into).collect(),
                }
            }
        };
        let id = block.hash();
        let mine = precommit(from_height, 0, Some(id), me);
        let precommits = match self.rng.below(4) {
            // Bloated: one precommit counted q times.
            0 => vec![mine; self.q(from_height)],
            // Forged: other members' names with made-up signatures.
            1 => self
                .members(from_height)
                .iter()
                .map(|m| {
                    let mut v = mine.clone();
                    v.vote.voter = *m;
                    if *m != me.id() {
                        v.signature = [0x42; 64];
                    }
                    v
                })
                .collect(),
            // Stray: real precommits, one of them of another round than the
            // certificate's: a quorum of signers only when that one counts.
            2 => match &real {
                Some(c) if c.block.hash() == id => {
                    let q = self.q(from_height);
                    let mut pcs: Vec<SignedVote> =
                        c.cert.precommits.iter().filter(|p| p.vote.voter != me.id()).cloned().collect();
                    pcs.truncate(q.saturating_sub(1));
                    pcs.push(precommit(from_height, c.cert.round + 1, Some(id), me));
                    let cert = Certificate { height: from_height, round: c.cert.round, block: id, precommits: pcs };
                    return Some(vec![Committed { block, cert }]);
                }
                Some(c) => {
                    let mut pcs = c.cert.precommits.clone();
                    pcs.push(precommit(from_height, c.cert.round + 1, Some(id), me));
                    pcs
                }
                None => vec![mine],
            },
            // Nothing at all.
            _ => return Some(Vec::new()),
        };
        let cert = Certificate { height: from_height, round: 0, block: id, precommits };
        Some(vec![Committed { block, cert }])
    }
}
