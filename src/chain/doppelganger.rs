//! What a node may sign after a start, as pure rules: the doppelganger watch
//! and the floor the network proves.
//!
//! **The watch.** After a start, a member signs nothing until it has been in
//! the mesh for `doppelganger_intervals` block intervals (2 by default; 0
//! turns the watch off): the quorum gate met and not behind (no usable peer
//! claims a tip past this node's + 1, as `/ready`'s `syncing` reads it), both
//! for that long without a break, so that what the network holds reaches it
//! before it could contradict it. Time spent catching up does not count: the
//! votes of the network's height are not yet of this node's height, and are
//! not weighed. Meanwhile it follows the chain, serves and
//! relays as usual; only the consensus core is held back (its gate stays
//! closed, so it takes no step: deciding from precommits needs no gate).
//!
//! **Evidence.** Every message signed with this node's key that it did not
//! make itself is weighed ([`judge`]): votes and proposals of the current
//! height and the next one, as they arrive (peers send a node that connects
//! the messages of its key they hold, beside their own), and the precommits
//! of certificates of blocks it syncs. Such a message is
//!
//! 1. **a second signer** when this node holds another message of its key for
//!    the same `(height, round, step)`: one process never signs twice there;
//! 2. **a second signer** when it was signed after this node started: its
//!    height began after the start (a vote or proposal of the current height
//!    whose parent was stamped later, a precommit for a block stamped later),
//!    by more than [`PRECISION_MS`] plus this node's measured clock offset. A
//!    process that ran before this one, on this data dir or a copy of it,
//!    stopped before this one started, so it cannot have signed it;
//! 3. otherwise **proof of what this key signed before the start**: a data
//!    dir restored from an older copy (a VM snapshot, a backup) or one that
//!    lost its last writes holds a record older than what the network has
//!    seen. The node's floor rises to it ([`Verdict::Floor`]): the core never
//!    signs at or below it, and a precommit for a value there brings back the
//!    lock it implies (the value must be held; until it is, the node signs
//!    nothing more at that height). The first time, one warning says so.
//!
//! With the watch on, a second signer stops the node with exit code 4
//! before it signs, or as soon as it is seen later, with one error naming
//! the message (height, round, kind) and the peer it came from. The floor
//! rises whether the watch is on or not.
//!
//! Limits (stated in docs/operating.md): a second process that peers cut off
//! within the first second (the transport keeps the newer incarnation of a
//! key and refuses the older one) leaves no signature of after the start;
//! and evidence rests on block timestamps, so a proposer whose clock runs
//! ahead can make an old signature look new (a false stop, never a double
//! signature).

use super::height::{Height, Round};
use super::vote::{SignRecord, Step};
use crate::identity::NodeId;

/// How far a block timestamp may be ahead of the time its height really
/// began, in ms: the synchrony precision of proposer-based timestamps
/// ([`super::rules::Synchrony`]), which honest members enforce from protocol 4.
pub(crate) const PRECISION_MS: u64 = 1_000;

/// What the watch needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchConfig {
    /// Block intervals to watch for; 0 turns the watch (and stopping) off.
    pub(crate) intervals: u32,
    pub(crate) block_interval_ms: u64,
}

/// Which message of this node's key was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceKind {
    Proposal,
    Prevote,
    Precommit,
    /// A precommit in the certificate of a block synced from a peer.
    CertificatePrecommit,
}

impl EvidenceKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::Proposal => "proposal",
            EvidenceKind::Prevote => "prevote",
            EvidenceKind::Precommit => "precommit",
            EvidenceKind::CertificatePrecommit => "precommit in a block's certificate",
        }
    }

    fn step(self) -> Step {
        match self {
            EvidenceKind::Proposal => Step::Propose,
            EvidenceKind::Prevote => Step::Prevote,
            EvidenceKind::Precommit | EvidenceKind::CertificatePrecommit => Step::Precommit,
        }
    }
}

/// A message signed with this node's key that it did not make, as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub height: Height,
    pub round: Round,
    pub kind: EvidenceKind,
    /// The peer it came from.
    pub peer: NodeId,
    /// The earliest wall time (ms) it can have been signed: the timestamp of
    /// the parent of its height, or of the block a certificate precommit is
    /// for.
    pub signed_after_ms: u64,
    /// This node holds another message of its key for the same slot.
    pub conflicts: bool,
}

impl Seen {
    pub(crate) fn record(&self) -> SignRecord {
        SignRecord { height: self.height, round: self.round, step: self.kind.step() }
    }
}

/// Why a message shows a second process signing with this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// This node holds a different message of its key for that slot.
    Conflict,
    /// Its height began at `signed_after_ms`, after this node started at
    /// `started_ms` (wall clock, ms).
    AfterStart { signed_after_ms: u64, started_ms: u64 },
}

/// A second process signing with this node's key, as shown by `seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub seen: Seen,
    pub cause: Cause,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.seen;
        write!(
            f,
            "a {} of height {} round {} signed with this node's key came from peer {}",
            s.kind.as_str(),
            s.height,
            s.round,
            s.peer.short()
        )?;
        match self.cause {
            Cause::Conflict => {
                write!(f, ", and this node holds another message of its key for that height, round and step")
            }
            Cause::AfterStart { signed_after_ms, started_ms } => write!(
                f,
                ", signed at a height that began {:.1} s after this node started, which this node did not sign",
                signed_after_ms.saturating_sub(started_ms) as f64 / 1000.0
            ),
        }
    }
}

/// What a message of this node's key it did not make means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Another process signs with this key.
    Doppelganger(Evidence),
    /// This key signed there before the start: sign nothing at or below it.
    Floor(SignRecord),
    /// Nothing new: at or below what this node already will not sign.
    Known,
}

/// Weighs `seen` against this node's start (`started_ms`, wall clock), its
/// clock offset from its peers (ms, when measured) and the floor it signs
/// above (`floor`: its own record, raised by earlier evidence). The rules
/// are in the module doc, in order.
pub(crate) fn judge(seen: &Seen, started_ms: u64, clock_offset_ms: Option<i64>, floor: Option<SignRecord>) -> Verdict {
    if seen.conflicts {
        return Verdict::Doppelganger(Evidence { seen: *seen, cause: Cause::Conflict });
    }
    // Our start by the clocks that stamped the blocks: ours minus our offset
    // from them, with the margin of the stamps.
    let margin = PRECISION_MS + clock_offset_ms.map_or(0, i64::unsigned_abs);
    let started_by_them = started_ms.saturating_add_signed(-clock_offset_ms.unwrap_or(0));
    if seen.signed_after_ms > started_by_them.saturating_add(margin) {
        let cause = Cause::AfterStart { signed_after_ms: seen.signed_after_ms, started_ms: started_by_them };
        return Verdict::Doppelganger(Evidence { seen: *seen, cause });
    }
    let record = seen.record();
    if floor.is_none_or(|f| record > f) {
        Verdict::Floor(record)
    } else {
        Verdict::Known
    }
}

/// Where the watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not in the mesh yet (the gate closed), or behind: the watch has not
    /// begun, or began again.
    Waiting,
    /// In the mesh: the watch ends at this monotonic time (ms).
    Watching { until_ms: u64 },
    /// Over (or off): the node signs.
    Over,
}

/// The doppelganger watch of one start.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    cfg: WatchConfig,
    /// Wall clock (ms) at the start.
    started_ms: u64,
    phase: Phase,
    /// Whether the floor has been raised by evidence already (warned once).
    warned_floor: bool,
}

impl Watch {
    pub(crate) fn new(cfg: WatchConfig, started_wall_ms: u64) -> Watch {
        let phase = if cfg.intervals == 0 { Phase::Over } else { Phase::Waiting };
        Watch { cfg, started_ms: started_wall_ms, phase, warned_floor: false }
    }

    /// Whether a second signer stops this node (the watch is on).
    pub(crate) fn stops(&self) -> bool {
        self.cfg.intervals > 0
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn watching(&self) -> bool {
        self.phase != Phase::Over
    }

    /// Wall clock (ms) at the start.
    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The watch's length, in ms.
    pub(crate) fn length_ms(&self) -> u64 {
        self.cfg.block_interval_ms.saturating_mul(self.cfg.intervals as u64)
    }

    /// The gate is `met` (or not), the node `caught_up` (or behind), at
    /// `now_ms` (monotonic): true when the watch ends now. The watch counts
    /// only time in the mesh and caught up: a gate that closes, or a peer
    /// claiming a tip more than one block ahead, before the end starts it
    /// again once both hold. While a node is behind, votes of its key at the
    /// network's height are not of its own height and are not weighed, so
    /// time spent catching up proves nothing.
    pub(crate) fn handle(&mut self, met: bool, caught_up: bool, now_ms: u64) -> bool {
        match self.phase {
            Phase::Over => false,
            Phase::Waiting | Phase::Watching { .. } if !(met && caught_up) => {
                self.phase = Phase::Waiting;
                false
            }
            Phase::Waiting => {
                self.phase = Phase::Watching { until_ms: now_ms.saturating_add(self.length_ms()) };
                self.handle(met, caught_up, now_ms)
            }
            Phase::Watching { until_ms } => {
                if now_ms >= until_ms {
                    self.phase = Phase::Over;
                    return true;
                }
                false
            }
        }
    }

    /// When [`Self::handle`] may end the watch (monotonic ms).
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            // Behind, the watch is back to waiting: no deadline, so none is
            // ever left in the past (due at once, again and again).
            Phase::Watching { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    /// Whether this is the first time the floor rises (warned about once).
    pub(crate) fn first_floor(&mut self) -> bool {
        !std::mem::replace(&mut self.warned_floor, true)
    }
}

/// Why a member holds back its signatures, for `/status` and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The watch has not begun: the quorum gate is closed, or the node is
    /// behind.
    Waiting,
    /// The watch runs.
    Watching,
    /// The network proves this key precommitted a value at this height and
    /// that value's proposal is not here yet: the lock it implies cannot be
    /// taken back, so nothing more is signed at this height until it is.
    LockMissing,
}

impl Hold {
    /// As stored in an atomic for status (0: no hold).
    pub(crate) fn code(hold: Option<Hold>) -> u8 {
        match hold {
            None => 0,
            Some(Hold::Waiting) => 1,
            Some(Hold::Watching) => 2,
            Some(Hold::LockMissing) => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Hold> {
        match code {
            1 => Some(Hold::Waiting),
            2 => Some(Hold::Watching),
            3 => Some(Hold::LockMissing),
            _ => None,
        }
    }

    /// One sentence for an operator.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Hold::Waiting => {
                "doppelganger watch: signs nothing until it has been in the mesh, caught up, for \
                 doppelganger_intervals block intervals without seeing a vote of its key that it did not make"
            }
            Hold::Watching => {
                "doppelganger watch: in the mesh, watching for votes of its key that it did not make before it signs"
            }
            Hold::LockMissing => {
                "the network shows this node's key precommitted a value at this height that its data dir does not \
                 record; it signs nothing more at this height until that value's proposal arrives"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 1_764_000_100_000;

    fn peer() -> NodeId {
        NodeId([7; 32])
    }

    fn seen(height: Height, round: Round, kind: EvidenceKind, signed_after_ms: u64) -> Seen {
        Seen { height, round, kind, peer: peer(), signed_after_ms, conflicts: false }
    }

    fn rec(height: Height, round: Round, step: Step) -> SignRecord {
        SignRecord { height, round, step }
    }

    #[test]
    fn a_second_message_for_a_slot_this_node_signed_is_a_doppelganger_whenever_it_was_signed() {
        let s = Seen { conflicts: true, ..seen(9, 0, EvidenceKind::Prevote, START - 60_000) };
        assert!(matches!(
            judge(&s, START, None, Some(rec(9, 0, Step::Precommit))),
            Verdict::Doppelganger(Evidence { cause: Cause::Conflict, .. })
        ));
    }

    #[test]
    fn a_signature_at_a_height_begun_after_the_start_is_a_doppelganger() {
        for (what, after, clock, doppelganger) in [
            ("well before the start: the previous run", START - 30_000, None, false),
            ("just before the start", START - 1, None, false),
            ("within the stamps' precision after the start", START + PRECISION_MS, None, false),
            ("past the precision", START + PRECISION_MS + 1, None, true),
            ("past it, by clocks 3 s behind ours", START - 3_000 + PRECISION_MS + 1, Some(3_000), false),
            ("past it by their clocks and our margin", START - 3_000 + PRECISION_MS + 3_001, Some(3_000), true),
            ("by clocks 2 s ahead of ours", START + 2_000 + PRECISION_MS + 2_001, Some(-2_000), true),
            ("by clocks 2 s ahead, within the margin", START + 2_000 + PRECISION_MS + 2_000, Some(-2_000), false),
        ] {
            let v = judge(&seen(9, 3, EvidenceKind::Precommit, after), START, clock, None);
            assert_eq!(matches!(v, Verdict::Doppelganger(_)), doppelganger, "{what}: {v:?}");
        }
    }

    #[test]
    fn an_older_signature_above_the_record_raises_the_floor_and_one_below_is_known() {
        let old = START - 10_000;
        let record = Some(rec(9, 1, Step::Prevote));
        for (what, s, floor, want) in [
            (
                "no record at all",
                seen(9, 0, EvidenceKind::Prevote, old),
                None,
                Verdict::Floor(rec(9, 0, Step::Prevote)),
            ),
            (
                "a later step",
                seen(9, 1, EvidenceKind::Precommit, old),
                record,
                Verdict::Floor(rec(9, 1, Step::Precommit)),
            ),
            (
                "a later round",
                seen(9, 4, EvidenceKind::Proposal, old),
                record,
                Verdict::Floor(rec(9, 4, Step::Propose)),
            ),
            (
                "a later height",
                seen(10, 0, EvidenceKind::Prevote, old),
                record,
                Verdict::Floor(rec(10, 0, Step::Prevote)),
            ),
            ("the record itself", seen(9, 1, EvidenceKind::Prevote, old), record, Verdict::Known),
            ("below it", seen(9, 0, EvidenceKind::Precommit, old), record, Verdict::Known),
            (
                "an older height's certificate",
                seen(8, 2, EvidenceKind::CertificatePrecommit, old),
                record,
                Verdict::Known,
            ),
        ] {
            assert_eq!(judge(&s, START, None, floor), want, "{what}");
        }
    }

    #[test]
    fn the_watch_runs_its_intervals_in_the_mesh_and_caught_up_without_a_break() {
        let cfg = WatchConfig { intervals: 2, block_interval_ms: 1_000 };
        let mut w = Watch::new(cfg, START);
        assert!(!w.handle(false, true, 0), "out of the mesh: not begun");
        assert_eq!(w.phase(), Phase::Waiting);
        assert!(!w.handle(true, false, 300), "in the mesh but behind: not begun");
        assert_eq!(w.phase(), Phase::Waiting);
        assert!(!w.handle(true, true, 500), "in the mesh and caught up: begins");
        assert_eq!(w.poll_timeout(), Some(2_500));
        assert!(!w.handle(true, true, 2_499));
        assert!(!w.handle(false, true, 2_000), "the gate closed: begins again");
        assert!(!w.handle(true, true, 3_000));
        assert_eq!(w.poll_timeout(), Some(5_000));
        assert!(!w.handle(true, false, 4_900), "behind before the end: begins again");
        assert_eq!(w.phase(), Phase::Waiting);
        assert!(!w.handle(true, true, 5_200), "caught up again: begins");
        assert_eq!(w.poll_timeout(), Some(7_200));
        assert!(w.handle(true, true, 7_200), "two intervals in the mesh and caught up: over");
        assert!(!w.watching());
        assert!(!w.handle(false, false, 9_000), "over for good");
        assert!(!w.watching());
    }

    #[test]
    fn zero_intervals_turn_the_watch_and_stopping_off() {
        let w = Watch::new(WatchConfig { intervals: 0, block_interval_ms: 1_000 }, START);
        assert!(!w.watching());
        assert!(!w.stops());
        assert_eq!(w.poll_timeout(), None);
    }

    #[test]
    fn the_floor_is_warned_about_once() {
        let mut w = Watch::new(WatchConfig { intervals: 2, block_interval_ms: 1_000 }, START);
        assert!(w.first_floor());
        assert!(!w.first_floor());
    }
}
