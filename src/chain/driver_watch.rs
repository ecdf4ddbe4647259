//! The driver's doppelganger watch and signing floor: where the rules of
//! [`super::super::doppelganger`] meet the core, the gate and the effects.

use super::super::block::{Hash, Height, Round};
use super::super::doppelganger::{self, EvidenceKind, Hold, Phase, Seen, Verdict};
use super::super::vote::{Committed, SignedVote, VoteKind};
use super::{Driver, Effect, Input, Now, Output};
use crate::identity::NodeId;

/// The doppelganger watch and the floor the network proves
/// ([`super::doppelganger`]).
impl Driver {
    /// The watch after the gate or the sync claims changed, or time passed;
    /// one line when it ends.
    pub(super) fn follow_watch(&mut self, now: Now) {
        let caught_up = self.sync.best_claim(now.mono_ms) <= self.core.height();
        if self.watch.handle(self.gate.met(), caught_up, now.mono_ms) && self.member {
            tracing::info!(
                height = self.core.height(),
                "doppelganger watch over: no vote of this node's key that it did not make in {} ms in the mesh; \
                 signing from height {}",
                self.watch.length_ms(),
                self.core.height()
            );
        }
    }

    /// Whether the core may sign now, the quorum gate aside: the watch is
    /// over, no lock the network proves is missing, nothing stopped it.
    pub(super) fn may_sign_now(&self) -> bool {
        !self.watch.watching() && !self.stopped() && self.lock_wanted.is_none_or(|(h, _, _)| h != self.core.height())
    }

    /// Tells the core its gate, when that changed: open with the quorum gate
    /// met and [`Self::may_sign_now`].
    pub(super) fn tell_core(&mut self, now: Now) -> Vec<Output> {
        let open = self.gate.met() && self.may_sign_now();
        if open == self.core_gate {
            return Vec::new();
        }
        self.core_gate = open;
        self.core.handle(Input::Quorum(open), now.wall_ms)
    }

    /// Why this member signs nothing now, if it holds back.
    pub(super) fn hold(&self) -> Option<Hold> {
        if !self.member || self.stopped() {
            return None;
        }
        match self.watch.phase() {
            Phase::Waiting => Some(Hold::Waiting),
            Phase::Watching { .. } => Some(Hold::Watching),
            Phase::Over if !self.may_sign_now() => Some(Hold::LockMissing),
            Phase::Over => None,
        }
    }

    /// A vote of our key from `from`, before the core sees it: weighed if
    /// it is of the current height or a later one (a node far behind, just
    /// started from an older checkpoint, learns what its key signed ahead of
    /// it), verifies, and is not one the core holds (ours, or evidence taken
    /// before). True if the node stops.
    pub(super) fn weigh_own_vote(&mut self, from: NodeId, sv: &SignedVote, now: Now) -> bool {
        let v = &sv.vote;
        let height = self.core.height();
        if v.height < height || self.core.holds_vote(v) {
            return false;
        }
        // A forgery says nothing; the core reports it.
        if sv.verify(&self.cfg.network_id).is_err() {
            return false;
        }
        let kind = match v.kind {
            VoteKind::Prevote => EvidenceKind::Prevote,
            VoteKind::Precommit => EvidenceKind::Precommit,
        };
        let seen = Seen {
            height: v.height,
            round: v.round,
            kind,
            peer: from,
            signed_after_ms: self.core.parent_timestamp(),
            conflicts: self.core.has_vote_of(v.voter, v.height, v.round, v.kind),
        };
        let lock = match (v.kind, v.block) {
            (VoteKind::Precommit, Some(value)) if v.height == height => Some((v.round, value)),
            _ => None,
        };
        self.weigh(seen, lock, now)
    }

    /// A proposal of our key (its signature verified) for `(height, round)`
    /// with `value`: weighed unless the core holds it. True if the node stops.
    pub(super) fn weigh_own_proposal(
        &mut self,
        from: NodeId,
        height: Height,
        round: Round,
        value: Hash,
        now: Now,
    ) -> bool {
        let current = self.core.height();
        if height != current && height != current + 1 {
            return false;
        }
        let held = self.core.proposed_block(height, round).map(|b| b.hash());
        if held == Some(value) {
            return false;
        }
        let seen = Seen {
            height,
            round,
            kind: EvidenceKind::Proposal,
            peer: from,
            signed_after_ms: self.core.parent_timestamp(),
            conflicts: held.is_some(),
        };
        self.weigh(seen, None, now)
    }

    /// What `seen` means ([`doppelganger::judge`]): a second signer stops the
    /// node while the watch is on (true); the floor rises otherwise, with the
    /// lock a precommit for a value implies (`lock`).
    pub(super) fn weigh(&mut self, seen: Seen, lock: Option<(Round, Hash)>, now: Now) -> bool {
        let offset = self.clock.offset_ms(now.wall_ms);
        match doppelganger::judge(&seen, self.watch.started_ms(), offset, self.core.last_signed()) {
            Verdict::Doppelganger(evidence) if self.watch.stops() => {
                self.doppelganger = Some(evidence);
                self.effects.push_back(Effect::Doppelganger(evidence));
                return true;
            }
            Verdict::Doppelganger(evidence) => {
                if self.first_report(None, "doppelganger") {
                    tracing::error!(
                        "{evidence}: another process signs with this node's key; doppelganger_intervals = 0, so \
                         this node goes on, signing nothing at or below it: stop one of them"
                    );
                }
                self.raise_floor(seen, lock);
            }
            Verdict::Floor(_) => self.raise_floor(seen, lock),
            // At or below the floor already (the copies come in any order: a
            // later round's first), but a precommit for a value still brings
            // back its lock.
            Verdict::Known => self.want_lock(seen.height, lock),
        }
        let out = self.tell_core(now);
        self.drive(out, false, now);
        false
    }

    /// The network proves our key signed `seen`: the core signs nothing at or
    /// below it, and a precommit for a value brings back its lock (or holds
    /// signatures at that height until the value's proposal is here). Warned
    /// about once.
    fn raise_floor(&mut self, seen: Seen, lock: Option<(Round, Hash)>) {
        let record = seen.record();
        let before = self.core.last_signed();
        self.core.raise_floor(record);
        let was = before.map_or("none".to_string(), |r| format!("height {} round {} {:?}", r.height, r.round, r.step));
        if self.watch.first_floor() {
            tracing::warn!(
                height = seen.height,
                round = seen.round,
                kind = seen.kind.as_str(),
                peer = %seen.peer.short(),
                "peer {} holds a {} of height {} round {} signed with this node's key that its signing record (last: \
                 {was}) lacks: this data dir is older than what its key signed (restored from a snapshot or a backup, \
                 or its last writes were lost); it signs nothing at or below that",
                seen.peer.short(),
                seen.kind.as_str(),
                seen.height,
                seen.round
            );
        } else {
            tracing::debug!(
                height = seen.height,
                round = seen.round,
                kind = seen.kind.as_str(),
                "signing floor raised (was {was})"
            );
        }
        self.want_lock(seen.height, lock);
    }

    /// The lock a precommit of our key for a value at `height` implies: taken
    /// now if its proposal is held, else wanted (signatures at that height
    /// wait for it, [`Self::follow_lock`]).
    fn want_lock(&mut self, height: Height, lock: Option<(Round, Hash)>) {
        if let Some((round, value)) = lock {
            if !self.core.adopt_lock(round, value) && self.lock_wanted.is_none_or(|(_, r, _)| r < round) {
                self.lock_wanted = Some((height, round, value));
            }
        }
    }

    /// A lock wanted at this height whose proposal has arrived is taken, and
    /// the core may sign again.
    pub(super) fn follow_lock(&mut self, now: Now) {
        let Some((height, round, value)) = self.lock_wanted else { return };
        if height != self.core.height() {
            self.lock_wanted = None;
        } else if self.core.adopt_lock(round, value) {
            tracing::info!(
                height,
                round,
                "the lock this node's key held at height {height} round {round} is back: signing again"
            );
            self.lock_wanted = None;
        } else {
            return;
        }
        let out = self.tell_core(now);
        self.drive(out, false, now);
    }
}

/// The round of our precommit in `c`'s certificate, and the block's timestamp.
pub(super) fn own_precommit(c: &Committed, me: NodeId) -> Option<(Round, u64)> {
    c.cert.precommits.iter().find(|p| p.vote.voter == me).map(|p| (p.vote.round, c.block.header.timestamp_ms))
}
