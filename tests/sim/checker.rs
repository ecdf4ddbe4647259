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
//!   proposal whose valid round is at least its lock round and had a polka for
//!   that value (L28). The second half sees a lock that moved back inside the
//!   core even when the core signs nothing at the older round.
//! * Votes follow the rules: an honest prevote for a value answers a fresh
//!   proposal of it (L22) or one whose valid round had a polka for it (L28);
//!   an honest precommit for a value follows a polka for it in its round
//!   (L36) and is persisted with its lock. Polkas are counted here from every
//!   genuine prevote on the network, with this file's own threshold (more
//!   than two thirds of the set in force).
//! * Certificates are counted here too: more than two thirds of the set in
//!   force at the height, each a verified precommit of the block in the
//!   certificate's round.
//! * Protocol 4, where the schedule has it: a committed block's transactions
//!   are distinct, and its timestamp is no later than the honest clocks
//!   (plus their precision) when it is committed.
//! * Resources: what each driver holds is within its budget
//!   ([`super::resources`]), checked by the world after every input.
//! * No honest double-sign: never two different signed messages for one
//!   (height, round, step) from an honest key, across restarts. Across a wipe,
//!   only what the honest network still holds counts, what a restarted node
//!   can be told: a signature that reached no honest node (every frame of it
//!   lost, cut off by a partition, or taken only by a Byzantine node, which
//!   need not show it), or only honest nodes that crashed since without it
//!   in their store (a vote is kept only in memory unless it is in the polka
//!   of the lock they persisted), went with the data dir. A precommit in a
//!   committed block's certificate is held by every store that serves it.
//!   A frame of the forgotten signature that the signer sent before the wipe
//!   and that arrives after it counts again; a Byzantine node's relay of it
//!   proves only what the wiped node could not know.
//! * Checkpoint start: a node that started from a checkpoint started from a
//!   block the honest nodes decide at its height (Agreement), with the
//!   membership the chain leaves there (Membership); from it on its commits
//!   are checked as every other (Agreement, Validity, linked to the
//!   checkpoint), and its store's first block stays the checkpoint.
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
    Resources,
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

/// How far apart honest clocks may be under protocol 4 (`Synchrony`).
const PRECISION_MS: u64 = 1_000;
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
    /// The honest signatures honest nodes received, with who holds them: a
    /// frame of it delivered (dropped from a receiver that crashes without
    /// it in its store).
    reached: BTreeMap<(NodeId, SignRecord), BTreeSet<NodeId>>,
    /// The honest signatures held for good: a precommit in the certificate of
    /// a block a node committed.
    kept: BTreeSet<(NodeId, SignRecord)>,
    /// Signatures of a wiped key that only other nodes hold: when the last
    /// honest holder crashes without them, they are forgotten as a wipe
    /// forgets.
    orphaned: BTreeSet<(NodeId, SignRecord)>,
    /// What a wipe took of an honest key's signatures that no node had
    /// received yet: one still in flight may reach a node after the wipe,
    /// and then counts again ([`Self::on_received`]).
    forgotten: BTreeMap<(NodeId, SignRecord), Vec<Signed>>,
    /// The lock an honest node holds at a height: (round, value).
    locks: BTreeMap<(NodeId, Height), (Round, Hash)>,
    /// Every genuine proposal seen on the network: (value, valid round).
    proposals: BTreeMap<(Height, Round), BTreeSet<ValueAndValidRound>>,
    /// Every genuine prevote for a value seen on the network: its voters.
    prevotes: BTreeMap<(Height, Round, Hash), BTreeSet<NodeId>>,
    /// How far ahead of the virtual time an honest clock reads, at most.
    pub honest_skew_ms: u64,
    /// The first honest commit at each height.
    committed: BTreeMap<Height, (Hash, NodeId)>,
    verified: BTreeSet<Vec<u8>>,
    pub violation: Option<Violation>,
    pub label: Box<dyn Fn(&NodeId) -> String + Send>,
    /// Kinds not checked (`SIM_SKIP`), e.g. to see whether a lock that moved
    /// back goes on to break agreement.
    skip: BTreeSet<Kind>,
    /// Checkpoint starts at heights no honest node committed yet (a peer that
    /// holds a block the moment it is decided): checked when one does.
    /// (node, height, block, membership after it)
    checkpoints: Vec<(NodeId, Height, Hash, MembershipState)>,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Agreement,
            Kind::Validity,
            Kind::Membership,
            Kind::LockMonotonicity,
            Kind::DoubleSign,
            Kind::Progress,
            Kind::Resources,
        ]
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
            reached: BTreeMap::new(),
            kept: BTreeSet::new(),
            orphaned: BTreeSet::new(),
            forgotten: BTreeMap::new(),
            locks: BTreeMap::new(),
            proposals: BTreeMap::new(),
            prevotes: BTreeMap::new(),
            honest_skew_ms: 0,
            committed: BTreeMap::new(),
            verified: BTreeSet::new(),
            violation: None,
            label,
            skip: skipped(),
            checkpoints: Vec::new(),
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

    /// A node received the signature `signature` of `signer` at `record`:
    /// `via`, the receiver and the sender of a frame of it, or `None` for a
    /// certificate holding it (kept for good). One a wipe had forgotten
    /// counts again when an honest node receives it; beside another
    /// signature of the same record made since, both are out, a double sign,
    /// when the frame is one the signer sent before its wipe.
    pub fn on_received(
        &mut self,
        via: Option<(NodeId, NodeId)>,
        signer: NodeId,
        record: SignRecord,
        signature: &[u8; 64],
    ) {
        if !self.honest.contains(&signer) || via.is_some_and(|(to, _)| !self.honest.contains(&to)) {
            return;
        }
        let key = (signer, record);
        let surfaced = self.forgotten.get_mut(&key).and_then(|list| {
            let at = list.iter().position(|m| signature_of(m) == signature)?;
            Some(list.remove(at))
        });
        if let Some(old) = surfaced {
            match self.signed.get(&key) {
                // Relayed (by a Byzantine node: no honest one held it): the
                // wiped node could not have learnt it. It stays forgotten, so
                // a frame the signer sent before the wipe still counts.
                Some(now) if *now != old && via.is_some_and(|(_, from)| from != signer) => {
                    self.forgotten.entry(key).or_default().push(old);
                }
                Some(now) if *now != old => {
                    let detail = format!(
                        "{} signed {} and, after a wipe, {} at {record:?}; the first was in flight at the wipe and \
                         reached a node after it",
                        (self.label)(&signer),
                        describe(&old),
                        describe(now)
                    );
                    self.fail(Kind::DoubleSign, Some(record.height), vec![signer], detail);
                }
                Some(_) => {}
                None => {
                    // Held again, by the receiver only: its signer's data
                    // dir is still the wiped one.
                    self.signed.insert(key, old);
                    self.orphaned.insert(key);
                }
            }
        }
        if self.signed.get(&key).is_some_and(|m| signature_of(m) == signature) {
            match via {
                Some((to, _)) => {
                    self.reached.entry(key).or_default().insert(to);
                }
                None => {
                    self.kept.insert(key);
                }
            }
        }
    }

    /// Whether the signature is one a wipe forgot and no honest node holds:
    /// no honest node can relay it (a frame of it still in flight arrives
    /// all the same).
    pub fn forgot(&self, signer: NodeId, record: SignRecord, signature: &[u8; 64]) -> bool {
        self.forgotten.get(&(signer, record)).is_some_and(|list| list.iter().any(|m| signature_of(m) == signature))
    }

    /// Whether some honest node holds the signature at `key`.
    fn held(&self, key: &(NodeId, SignRecord)) -> bool {
        self.kept.contains(key) || self.reached.get(key).is_some_and(|h| !h.is_empty())
    }

    /// The signatures of a wiped key that no honest node holds any more are
    /// forgotten.
    fn forget_orphans(&mut self) {
        let gone: Vec<_> = self.orphaned.iter().filter(|key| !self.held(key)).copied().collect();
        for key in gone {
            self.orphaned.remove(&key);
            self.reached.remove(&key);
            if let Some(m) = self.signed.remove(&key) {
                self.forgotten.entry(key).or_default().push(m);
            }
        }
    }

    /// Honest node `me` crashed: of the others' signatures it received, it
    /// holds only those its store keeps (`stored`: the polka of its lock).
    pub fn on_crash(&mut self, me: NodeId, stored: &[(NodeId, SignRecord)]) {
        if !self.honest.contains(&me) {
            return;
        }
        for (key, holders) in self.reached.iter_mut() {
            if !stored.contains(key) {
                holders.remove(&me);
            }
        }
        self.forget_orphans();
    }

    /// `me`'s data dir was wiped: what it signed that no honest node holds
    /// is gone with it (the real node cannot learn it, nor can anyone show
    /// it), unless a frame of it still in flight reaches a node later; what
    /// others hold goes when the last of them loses it. What its own store
    /// held of others' goes too.
    pub fn on_wipe(&mut self, me: NodeId) {
        for holders in self.reached.values_mut() {
            holders.remove(&me);
        }
        let mine: Vec<_> = self.signed.keys().filter(|key| key.0 == me).copied().collect();
        self.orphaned.extend(mine);
        self.forget_orphans();
    }

    /// A genuinely signed message went onto the network (from anyone).
    pub fn observe(&mut self, m: &Signed) {
        match m {
            Signed::Proposal(p) => {
                let p = &p.proposal;
                let id = p.block.hash();
                self.proposals.entry((p.height, p.round)).or_default().insert((id, p.valid_round));
                if !p.block.header.changes.is_empty() {
                    self.approvals.entry(id).or_insert_with(|| (p.height, p.block.header.changes.clone(), None));
                }
            }
            Signed::Vote(v) => {
                let v = &v.vote;
                if let (VoteKind::Prevote, Some(value)) = (v.kind, v.block) {
                    self.prevotes.entry((v.height, v.round, value)).or_default().insert(v.voter);
                }
            }
        }
    }

    /// More than two thirds of `n`: this file's own count, so that a change
    /// of the library's threshold shows.
    fn q(n: usize) -> usize {
        2 * n / 3 + 1
    }

    /// Whether a polka for `value` at `(h, r)` went onto the network: prevotes
    /// of more than two thirds of the set in force at `h`.
    fn polka(&self, h: Height, r: Round, value: Hash) -> bool {
        let members = self.members_at(h);
        let voters = self.prevotes.get(&(h, r, value));
        let count = voters.map_or(0, |v| v.iter().filter(|id| members.contains(id)).count());
        count >= Self::q(members.len())
    }

    /// A genuinely signed compact proposal went onto the network: its value,
    /// valid round and approvals, as [`Self::observe`] keeps them.
    pub fn observe_compact(&mut self, p: &CompactProposal) {
        let id = p.header.hash();
        self.proposals.entry((p.height, p.round)).or_default().insert((id, p.valid_round));
        if !p.header.changes.is_empty() {
            self.approvals.entry(id).or_insert_with(|| (p.height, p.header.changes.clone(), None));
        }
    }

    /// An honest node did what no valid chain makes it do: its store refused
    /// a block its driver committed (the real producer stops on that error),
    /// or it stopped for a plan no honest member approved.
    pub fn validity_failed(&mut self, me: NodeId, height: Height, why: String) {
        let name = (self.label)(&me);
        self.fail(Kind::Validity, Some(height), vec![me], format!("{name}: {why}"));
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
        // Its own store holds it again.
        self.orphaned.remove(&(me, record));
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
                // L22: a fresh proposal of the value, and no lock on another;
                // L28: a proposal with a valid round before its own that had
                // a polka for it, at or above the lock's round unless the
                // lock is this value.
                let proposals = self.proposals.get(&(v.height, v.round));
                let of_value: Vec<Option<Round>> = proposals
                    .map(|ps| ps.iter().filter(|(h, _)| *h == value).map(|(_, vr)| *vr).collect())
                    .unwrap_or_default();
                let lock_allows = |vr: Option<Round>| match held {
                    None => true,
                    Some((_, lv)) if lv == value => true,
                    Some((lr, _)) => vr.is_some_and(|vr| vr >= lr),
                };
                let justified = of_value.iter().any(|vr| match vr {
                    None => lock_allows(None),
                    Some(vr) => *vr < v.round && self.polka(v.height, *vr, value) && lock_allows(Some(*vr)),
                });
                if justified {
                    return;
                }
                let vrs: Vec<String> = of_value
                    .iter()
                    .map(|vr| match vr {
                        None => "none (fresh)".to_string(),
                        Some(vr) => format!("{vr} (polka there: {})", self.polka(v.height, *vr, value)),
                    })
                    .collect();
                let lock = match held {
                    Some((lr, lv)) => format!("locked {} in round {lr}", lv.short()),
                    None => "unlocked".into(),
                };
                let detail = format!(
                    "{name}, {lock} at height {}, prevoted {} in round {} (proposals of that value carry valid round {})",
                    v.height,
                    value.short(),
                    v.round,
                    if vrs.is_empty() { "none seen".into() } else { vrs.join(", ") },
                );
                self.fail(Kind::LockMonotonicity, Some(v.height), vec![me], detail);
            }
            VoteKind::Precommit => {
                if !self.polka(v.height, v.round, value) {
                    let detail = format!(
                        "{name} precommitted {} in round {} at height {} without a polka for it there (L36)",
                        value.short(),
                        v.round,
                        v.height
                    );
                    self.fail(Kind::LockMonotonicity, Some(v.height), vec![me], detail);
                    return;
                }
                if lock.is_none() {
                    let detail = format!(
                        "{name} precommitted {} in round {} at height {} with no lock persisted beside it",
                        value.short(),
                        v.round,
                        v.height
                    );
                    self.fail(Kind::LockMonotonicity, Some(v.height), vec![me], detail);
                    return;
                }
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
        prev: (Height, Hash, u64),
        membership: &MembershipState,
        now_ms: u64,
    ) -> Vec<Completed> {
        for p in c.cert.precommits.iter().filter(|p| p.vote.voter != me) {
            self.on_received(None, p.vote.voter, p.vote.record(), &p.signature);
        }
        let (prev_height, prev_hash, prev_ts) = prev;
        let prev = (prev_height, prev_hash);
        let name = (self.label)(&me);
        let h = c.block.height();
        let id = c.block.hash();
        // From protocol 4 the header links the parent and the member state it
        // left (`parent_link`); `states` holds the state after each height.
        let link = self.chain.version_at(h) >= 4;
        let before = self.states.get(&(h.saturating_sub(1))).map(masternode::chain::members_digest);
        let expected = masternode::chain::parent_link(prev.1, before.unwrap_or_default(), link && before.is_some());
        if h != prev.0 + 1 || c.block.header.prev_hash != expected {
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
        if let Err(why) = self.certified(c) {
            let detail = format!("{name} committed {} at height {h} with a certificate that {why}", id.short());
            self.fail(Kind::Validity, Some(h), vec![me], detail);
            return Vec::new();
        }
        if let Some(why) = self.breaks_rules(c, prev_ts, now_ms) {
            let detail = format!("{name} committed {} at height {h}, which {why}", id.short());
            self.fail(Kind::Validity, Some(h), vec![me], detail);
            return Vec::new();
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
            if !self.checkpoints.is_empty() {
                self.check_checkpoints();
            }
        }
        if self.states.get(&h) != Some(membership) {
            let detail = format!("{name} left height {h} with another membership than the chain's");
            self.fail(Kind::Membership, Some(h), vec![me], detail);
        }
        completed
    }

    /// The blocks honest nodes committed, from height `from` on.
    pub fn decided_from(&self, from: Height) -> Vec<(Height, Hash)> {
        self.committed.range(from..).map(|(h, (id, _))| (*h, *id)).collect()
    }

    /// An honest node started from checkpoint `c`, the membership `after` it
    /// stored with it: it must be the block the honest nodes decide there,
    /// with the chain's membership. One no honest node committed yet must
    /// carry a certificate this file counts, and is checked once one does.
    pub fn on_checkpoint(&mut self, me: NodeId, c: &Committed, after: &MembershipState) {
        let (h, id) = (c.block.height(), c.block.hash());
        if !self.committed.contains_key(&h) {
            if let Err(why) = self.certified(c) {
                let name = (self.label)(&me);
                let detail = format!(
                    "{name} started from a checkpoint at height {h} ({}) that no honest node committed, with a \
                     certificate that {why}",
                    id.short()
                );
                self.fail(Kind::Agreement, Some(h), vec![me], detail);
                return;
            }
        }
        self.checkpoints.push((me, h, id, after.clone()));
        self.check_checkpoints();
    }

    /// The checkpoint starts at heights honest nodes committed since.
    fn check_checkpoints(&mut self) {
        let mut i = 0;
        while i < self.checkpoints.len() {
            let (me, h, id, _) = self.checkpoints[i];
            let Some(&(decided, who)) = self.committed.get(&h) else {
                i += 1;
                continue;
            };
            let (_, _, _, after) = self.checkpoints.remove(i);
            let name = (self.label)(&me);
            if decided != id {
                let detail = format!(
                    "height {h}: {} committed {}, {name} started from the checkpoint {}",
                    (self.label)(&who),
                    decided.short(),
                    id.short()
                );
                self.fail(Kind::Agreement, Some(h), vec![who, me], detail);
            } else if self.states.get(&h) != Some(&after) {
                let detail = format!(
                    "{name} started from the checkpoint at height {h} with another membership than the chain's"
                );
                self.fail(Kind::Membership, Some(h), vec![me], detail);
            }
        }
    }

    /// Whether the chain (its highest height committed) names `id` in the set
    /// in force or the next one: the keys the members' transports admit.
    pub fn names(&self, id: &NodeId) -> bool {
        self.chain.current().contains(id) || self.chain.next().contains(id)
    }

    pub fn progress_failed(&mut self, nodes: Vec<NodeId>, detail: String) {
        self.fail(Kind::Progress, None, nodes, detail);
    }

    pub fn resources_failed(&mut self, node: NodeId, detail: String) {
        let name = (self.label)(&node);
        self.fail(Kind::Resources, None, vec![node], format!("{name}: {detail}"));
    }

    /// Why `c`'s certificate does not commit its block at its height: counted
    /// here, each voter of the height's set once, each precommit verified.
    fn certified(&mut self, c: &Committed) -> Result<(), String> {
        let (h, id, cert) = (c.block.height(), c.block.hash(), &c.cert);
        if cert.height != h || cert.block != id {
            return Err(format!("names height {} and block {}", cert.height, cert.block.short()));
        }
        let mut key = Vec::with_capacity(64 + 96 * cert.precommits.len());
        key.extend_from_slice(&id.0);
        key.extend_from_slice(&cert.round.to_be_bytes());
        for p in &cert.precommits {
            key.extend_from_slice(&p.vote.voter.0);
            key.extend_from_slice(&p.signature);
        }
        if self.verified.contains(&key) {
            return Ok(());
        }
        let members = self.members_at(h).to_vec();
        let mut voters = BTreeSet::new();
        for p in &cert.precommits {
            let v = &p.vote;
            let fits = v.kind == VoteKind::Precommit && v.height == h && v.round == cert.round && v.block == Some(id);
            if fits && members.contains(&v.voter) && p.verify(&NET).is_ok() {
                voters.insert(v.voter);
            }
        }
        if voters.len() < Self::q(members.len()) {
            return Err(format!(
                "holds {} valid precommits of the {} members, fewer than {}",
                voters.len(),
                members.len(),
                Self::q(members.len())
            ));
        }
        self.verified.insert(key);
        Ok(())
    }

    /// Why `c` breaks a block rule of its height's protocol, if it does: its
    /// timestamp after its parent's; from protocol 4 distinct transactions and
    /// a timestamp no later than the honest clocks read at `now_ms`.
    fn breaks_rules(&self, c: &Committed, prev_ts: u64, now_ms: u64) -> Option<String> {
        let header = &c.block.header;
        if header.timestamp_ms <= prev_ts && c.block.height() > 1 {
            return Some(format!("is stamped {} after a parent stamped {prev_ts}", header.timestamp_ms));
        }
        if self.chain.version_at(c.block.height()) < 4 {
            return None;
        }
        let mut seen = BTreeSet::new();
        if let Some(i) = c.block.txs.iter().position(|t| !seen.insert(tx_hash(t))) {
            return Some(format!("repeats transaction #{i} under protocol 4"));
        }
        let latest = now_ms + self.honest_skew_ms + PRECISION_MS;
        if header.timestamp_ms > latest {
            return Some(format!(
                "is stamped {} under protocol 4, {} ms past what an honest clock reads now",
                header.timestamp_ms,
                header.timestamp_ms - now_ms
            ));
        }
        None
    }
}
