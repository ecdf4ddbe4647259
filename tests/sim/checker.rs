//! The invariants, checked as they could first break: on every signature an honest
//! node makes and on every block it commits.
//!
//! * Agreement: no two honest nodes commit different blocks at one height.
//! * Validity: a committed block's certificate verifies against the member set
//!   of its height (from the genesis and every block's approvals, as a node
//!   syncing from scratch computes it), its approvals are valid, and the block
//!   extends the block the node committed before it.
//! * Membership: every honest node leaves a block with the membership the chain
//!   gives, and an honest key signs only at heights whose set holds it.
//! * Refused approvals: no honest node votes for a block whose approvals are
//!   invalid at its height (a Byzantine proposer's forged ones).
//! * Lock monotonicity: an honest node's lock (the round and value of its last
//!   precommit for a value at a height) never moves to an older round, across
//!   restarts too; and it prevotes another value in a later round only for a
//!   proposal whose valid round is at least its lock round (L28). The second
//!   half sees a lock that moved back inside the core even when the core signs
//!   nothing at the older round.
//! * No honest double-sign: never two different signed messages for one
//!   (height, round, step) from an honest key, across restarts.
//! * Progress is checked by the world at the end of a scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::core_api::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Agreement,
    Validity,
    Membership,
    LockMonotonicity,
    DoubleSign,
    Progress,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: Kind,
    /// The height it happened at, when it is about one.
    pub height: Option<Height>,
    /// The members involved.
    pub nodes: Vec<NodeId>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

type ValueAndValidRound = (Hash, Option<Round>);
/// A proposed block's height and approvals, and once checked why they are
/// invalid there (`Some(None)`: valid).
type ProposedApprovals = (Height, Vec<SignedApproval>, Option<Option<String>>);

pub struct Checker {
    /// The chain's membership after the highest height committed (each height
    /// applied when an honest node first commits it).
    chain: Membership,
    /// The member set from each height on where it changed.
    sets: BTreeMap<Height, Vec<NodeId>>,
    /// The membership each height left (0: the genesis).
    states: BTreeMap<Height, MembershipState>,
    params: Params,
    /// The approvals of every block proposed with some, and once checked why
    /// they are invalid at its height (`None`: valid).
    approvals: BTreeMap<Hash, ProposedApprovals>,
    honest: BTreeSet<NodeId>,
    /// Every message an honest key signed, by (signer, height, round, step).
    signed: BTreeMap<(NodeId, SignRecord), Signed>,
    /// The lock an honest node holds at a height: (round, value).
    locks: BTreeMap<(NodeId, Height), (Round, Hash)>,
    /// Every genuine proposal seen on the network: (value, valid round).
    proposals: BTreeMap<(Height, Round), BTreeSet<ValueAndValidRound>>,
    /// The first honest commit at each height.
    committed: BTreeMap<Height, (Hash, NodeId)>,
    verified: BTreeSet<Vec<u8>>,
    pub violation: Option<Violation>,
    pub label: Box<dyn Fn(&NodeId) -> String + Send>,
    /// Kinds not checked (`SIM_SKIP`), e.g. to see whether a lock that moved
    /// back goes on to break agreement.
    skip: BTreeSet<Kind>,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Agreement, Kind::Validity, Kind::Membership, Kind::LockMonotonicity, Kind::DoubleSign, Kind::Progress]
            .into_iter()
            .find(|k| format!("{k:?}").eq_ignore_ascii_case(s.trim()))
    }
}

/// The kinds named in `SIM_SKIP` (comma-separated).
fn skipped() -> BTreeSet<Kind> {
    std::env::var("SIM_SKIP").map(|v| v.split(',').filter_map(Kind::parse).collect()).unwrap_or_default()
}

impl Checker {
    pub fn new(genesis: Membership, honest: BTreeSet<NodeId>, label: Box<dyn Fn(&NodeId) -> String + Send>) -> Self {
        Checker {
            sets: BTreeMap::from([(1, genesis.current().ids())]),
            states: BTreeMap::from([(0, genesis.state().clone())]),
            params: genesis.params(),
            approvals: BTreeMap::new(),
            chain: genesis,
            honest,
            signed: BTreeMap::new(),
            locks: BTreeMap::new(),
            proposals: BTreeMap::new(),
            committed: BTreeMap::new(),
            verified: BTreeSet::new(),
            violation: None,
            label,
            skip: skipped(),
        }
    }

    /// The member set in force at `height` (past the known heights: the latest).
    pub fn members_at(&self, height: Height) -> &[NodeId] {
        self.sets.range(..=height).next_back().map_or(&[], |(_, ids)| ids.as_slice())
    }

    /// The member sets from each height on where they changed.
    pub fn sets(&self) -> &BTreeMap<Height, Vec<NodeId>> {
        &self.sets
    }

    fn fail(&mut self, kind: Kind, height: Option<Height>, nodes: Vec<NodeId>, detail: String) {
        if self.violation.is_none() && !self.skip.contains(&kind) {
            self.violation = Some(Violation { kind, height, nodes, detail });
        }
    }

    /// A genuinely signed message went onto the network (from anyone).
    pub fn observe(&mut self, m: &Signed) {
        if let Signed::Proposal(p) = m {
            let p = &p.proposal;
            let id = p.block.hash();
            self.proposals.entry((p.height, p.round)).or_default().insert((id, p.valid_round));
            if !p.block.header.changes.is_empty() {
                self.approvals.entry(id).or_insert_with(|| (p.height, p.block.header.changes.clone(), None));
            }
        }
    }

    /// Why the block `value` carries approvals that are invalid at its height
    /// (checked once, against the membership its parent left), if it does.
    fn invalid_approvals(&mut self, value: Hash) -> Option<String> {
        let (h, changes, verdict) = self.approvals.get(&value)?;
        if verdict.is_none() {
            let parent = Membership::restore(self.params, self.states.get(&(h - 1))?.clone());
            let why = parent.validate(changes, &NET).err().map(|(i, e)| format!("approval {i}: {e}"));
            self.approvals.get_mut(&value)?.2 = Some(why);
        }
        self.approvals.get(&value)?.2.clone().flatten()
    }

    /// An honest node signed `message`, with `lock` persisted beside it.
    pub fn on_sign(&mut self, message: &Signed, lock: Option<&Lock>) {
        let me = signer_of(message);
        if !self.honest.contains(&me) {
            return;
        }
        let record = record_of(message);
        let name = (self.label)(&me);
        if !self.members_at(record.height).contains(&me) {
            let detail =
                format!("{name} signed {} at height {}, whose set does not hold it", describe(message), record.height);
            self.fail(Kind::Membership, Some(record.height), vec![me], detail);
            return;
        }
        match self.signed.get(&(me, record)) {
            Some(before) if before != message => {
                let detail = format!("{name} signed {} and {} at {record:?}", describe(before), describe(message));
                self.fail(Kind::DoubleSign, Some(record.height), vec![me], detail);
                return;
            }
            Some(_) => {}
            None => {
                self.signed.insert((me, record), message.clone());
            }
        }
        self.observe(message);
        let Signed::Vote(v) = message else { return };
        let v = &v.vote;
        let Some(value) = v.block else { return };
        if let Some(why) = self.invalid_approvals(value) {
            let detail =
                format!("{name} voted {} for {} whose approvals are invalid ({why})", describe(message), value.short());
            self.fail(Kind::Validity, Some(v.height), vec![me], detail);
            return;
        }
        let held = self.locks.get(&(me, v.height)).copied();
        match v.kind {
            VoteKind::Prevote => {
                let Some((lr, lv)) = held else { return };
                if lv == value || lr >= v.round {
                    return;
                }
                let justified = self
                    .proposals
                    .get(&(v.height, v.round))
                    .is_some_and(|ps| ps.iter().any(|(h, vr)| *h == value && vr.is_some_and(|vr| vr >= lr)));
                if !justified {
                    let vrs: Vec<String> = self
                        .proposals
                        .get(&(v.height, v.round))
                        .map(|ps| ps.iter().filter(|(h, _)| *h == value).map(|(_, vr)| format!("{vr:?}")).collect())
                        .unwrap_or_default();
                    let detail = format!(
                        "{name} locked {} in round {lr} at height {} but prevoted {} in round {} \
                         (proposals of that value carry valid round {}): its lock moved back",
                        lv.short(),
                        v.height,
                        value.short(),
                        v.round,
                        if vrs.is_empty() { "none".into() } else { vrs.join(", ") },
                    );
                    self.fail(Kind::LockMonotonicity, Some(v.height), vec![me], detail);
                }
            }
            VoteKind::Precommit => {
                if let Some((lr, _)) = held {
                    if lr > v.round {
                        let detail = format!(
                            "{name} locked in round {lr} at height {}, then precommitted {} in round {}",
                            v.height,
                            value.short(),
                            v.round
                        );
                        self.fail(Kind::LockMonotonicity, Some(v.height), vec![me], detail);
                        return;
                    }
                }
                if let Some(lock) = lock {
                    if lock.block.hash() != value || lock.round != v.round {
                        let detail = format!(
                            "{name} precommitted {} in round {} with the lock ({}, {}) persisted",
                            value.short(),
                            v.round,
                            lock.round,
                            lock.block.hash().short()
                        );
                        self.fail(Kind::LockMonotonicity, Some(v.height), vec![me], detail);
                        return;
                    }
                }
                self.locks.insert((me, v.height), (v.round, value));
            }
        }
    }

    /// An honest node committed `c` on top of `prev` (its previous block's hash
    /// and height, or the genesis), leaving `membership`. Returns the member
    /// changes the block completed when it is the first commit of its height.
    pub fn on_commit(
        &mut self,
        me: NodeId,
        c: &Committed,
        prev: (Height, Hash),
        membership: &MembershipState,
    ) -> Vec<Completed> {
        let name = (self.label)(&me);
        let h = c.block.height();
        let id = c.block.hash();
        if h != prev.0 + 1 || c.block.header.prev_hash != prev.1 {
            let detail =
                format!("{name} committed {} at height {h} on top of height {} {}", id.short(), prev.0, prev.1.short());
            self.fail(Kind::Validity, Some(h), vec![me], detail);
            return Vec::new();
        }
        // Honest nodes commit in order, so an honest node committed h - 1 first.
        if h > self.chain.applied() + 1 {
            let detail = format!("{name} committed height {h} before any honest node committed {}", h - 1);
            self.fail(Kind::Validity, Some(h), vec![me], detail);
            return Vec::new();
        }
        let mut key = Vec::with_capacity(64 + 96 * c.cert.precommits.len());
        key.extend_from_slice(&id.0);
        key.extend_from_slice(&c.cert.round.to_be_bytes());
        for p in &c.cert.precommits {
            key.extend_from_slice(&p.vote.voter.0);
            key.extend_from_slice(&p.signature);
            key.extend_from_slice(&p.vote.round.to_be_bytes());
        }
        if !self.verified.contains(&key) {
            if let Err(e) = c.cert.verify(&c.block, self.members_at(h), &NET) {
                let detail = format!(
                    "{name} committed {} at height {h} with a certificate that fails against the set of its height: {e}",
                    id.short()
                );
                self.fail(Kind::Validity, Some(h), vec![me], detail);
                return Vec::new();
            }
            self.verified.insert(key);
        }
        match self.committed.get(&h) {
            Some((other, who)) if *other != id => {
                let detail = format!(
                    "height {h}: {} committed {}, {name} committed {} (round {})",
                    (self.label)(who),
                    other.short(),
                    id.short(),
                    c.cert.round
                );
                let who = *who;
                self.fail(Kind::Agreement, Some(h), vec![who, me], detail);
                return Vec::new();
            }
            Some(_) => {}
            None => {
                self.committed.insert(h, (id, me));
            }
        }
        let mut completed = Vec::new();
        if h == self.chain.applied() + 1 {
            let changes = &c.block.header.changes;
            if let Err((i, e)) = self.chain.validate(changes, &NET) {
                let detail =
                    format!("{name} committed {} at height {h} whose approval {i} is invalid: {e}", id.short());
                self.fail(Kind::Validity, Some(h), vec![me], detail);
                return Vec::new();
            }
            completed = self.chain.apply(changes, &NET);
            let next = self.chain.next().ids();
            if self.members_at(h + 2) != next.as_slice() {
                self.sets.insert(h + 2, next);
            }
            self.states.insert(h, self.chain.state().clone());
        }
        if self.states.get(&h) != Some(membership) {
            let detail = format!("{name} left height {h} with another membership than the chain's");
            self.fail(Kind::Membership, Some(h), vec![me], detail);
        }
        completed
    }

    pub fn progress_failed(&mut self, nodes: Vec<NodeId>, detail: String) {
        self.fail(Kind::Progress, None, nodes, detail);
    }
}
