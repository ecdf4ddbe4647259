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
}

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

/// A message between slots.
// Sizes do not matter here: a few thousand messages in flight at most.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Wire {
    Signed(Signed),
    /// "My tip is at this height" (the producer's `Tip`, also what a handshake tells).
    Tip(Height),
    SyncRequest {
        from_height: Height,
        req: u64,
    },
    SyncReply {
        req: u64,
        blocks: Vec<Committed>,
    },
    /// A membership approval, gossiped for proposers' pools.
    Approval(SignedApproval),
}

/// A message the adversary wants sent; `genuine` when it carries a valid signature.
pub struct Send {
    pub to: usize,
    pub msg: Wire,
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
    pub fn new(strategies: BTreeSet<Strategy>, members: Vec<NodeId>, rng: Rng) -> Adversary {
        Adversary {
            active: !strategies.is_empty(),
            strategies,
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

    fn send(to: usize, m: Signed, extra_delay: u64) -> Send {
        Send { to, msg: Wire::Signed(m), extra_delay, genuine: true }
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
                Some(other) if self.rng.chance(500) => out.push(Self::send(to, other.clone(), extra)),
                _ => out.push(Self::send(to, m.clone(), extra)),
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
                block.txs.push(format!("equivocation {}", self.rng.next_u64()).into_bytes());
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
    pub fn on_receive(&mut self, me: &Identity, m: &Signed, peers: &[usize]) -> Vec<Send> {
        let mut out = Vec::new();
        let Signed::Proposal(p) = m else { return out };
        let p = &p.proposal;
        if !self.on(Strategy::VoteAll) || p.proposer != self.proposer(p.height, p.round) {
            return out;
        }
        let value = p.block.hash();
        if !self.voted_all.insert((me.id(), p.height, p.round, value)) {
            return out;
        }
        let late = self.on(Strategy::LateVotes);
        let pv = Signed::Vote(prevote(p.height, p.round, Some(value), me));
        let pc = Signed::Vote(precommit(p.height, p.round, Some(value), me));
        for to in self.subset(peers, 700) {
            let extra = if late && self.rng.chance(500) { self.rng.range(500, 3000) } else { 0 };
            out.push(Self::send(to, pv.clone(), extra));
        }
        for to in self.subset(peers, 500) {
            let extra = if late && self.rng.chance(500) { self.rng.range(500, 4000) } else { 0 };
            out.push(Self::send(to, pc.clone(), extra));
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
                out.push(Self::send(to, m.clone(), 0));
            }
        }
        for (i, m) in replay.into_iter().enumerate() {
            out.push(Self::send(target, m, i as u64));
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
                out.push(Self::send(to, sp.clone(), extra));
                out.push(Self::send(to, pv.clone(), extra + 1));
                out.push(Self::send(to, pc.clone(), extra + self.rng.range(1, 2000)));
            }
        }
        out
    }

    /// Unprompted mischief, once a second.
    pub fn tick(&mut self, me: &Identity, h: Height, r: Round, peers: &[usize]) -> Vec<Send> {
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
            out.push(Self::send(to, Signed::Vote(v), 0));
        }
        if self.on(Strategy::Forge) && self.rng.chance(150) {
            let members = self.members(h).to_vec();
            let victim = *self.rng.pick(&members).unwrap_or(&me.id());
            let mut v = prevote(h, r, Some(Hash([self.rng.below(255) as u8; 32])), me);
            v.vote.voter = victim;
            if self.rng.chance(500) {
                v.signature = [self.rng.below(255) as u8; 64];
            }
            out.push(Send { to, msg: Wire::Signed(Signed::Vote(v)), extra_delay: 0, genuine: false });
            if let Some(p) = self.history.get(&(h, r)).and_then(|l| l.proposals.first()).cloned() {
                let mut p = p;
                p.proposal.valid_round = None;
                p.proposal.block.txs.push(b"forged".to_vec());
                p.proposal.block.header.tx_root = tx_root(&p.proposal.block.txs);
                out.push(Send { to, msg: Wire::Signed(Signed::Proposal(p)), extra_delay: 0, genuine: false });
            }
        }
        if self.on(Strategy::LieSync) && self.rng.chance(100) {
            out.push(Send { to, msg: Wire::Tip(h + self.rng.range(1, 50)), extra_delay: 0, genuine: false });
        }
        if self.on(Strategy::BadChanges) && self.rng.chance(100) {
            let members = self.members(h).to_vec();
            let victim = *self.rng.pick(&members).unwrap_or(&me.id());
            let mut sa =
                Approval { change: Change::Remove { id: victim }, approver: me.id(), signed_at: h - 1 }.sign(&NET, me);
            sa.signature[self.rng.below(64) as usize] ^= 0x10;
            out.push(Send { to, msg: Wire::Approval(sa), extra_delay: 0, genuine: false });
        }
        out
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
                    txs,
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
            // Stray: real precommits, but of another round than the certificate's.
            2 => match &real {
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
