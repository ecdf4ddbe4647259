//! What a supervisor asks a node, as pure rules: is it ready to serve
//! (`GET /ready`), and may it be stopped now without taking the network below
//! its quorum (`masternode status --can-stop`). Both read a [`Status`], the
//! figures `/status` reports; neither reads a clock or a socket.
//!
//! **Liveness is `/status`**: it answers whenever the process runs. **Readiness**
//! is [`readiness`]: the node is ready when all of these hold, checked in this
//! order, the first that fails being the reason it is not:
//!
//! 1. `starting`: its producer has turned its loop at least once (the store is
//!    open, the endpoint bound, consensus running);
//! 2. `syncing`: it is within one block of the best tip a usable peer claims
//!    (its height + 1 ≥ that tip), or no peer claims more. A peer's claim comes
//!    with its handshake and every tip it announces; a peer that failed a sync
//!    request, or that has not said what it holds (`Holds`, wire 4), is not
//!    usable and its claim is not counted. Catching up comes
//!    before membership and quorum because a node behind reads both from an
//!    old chain;
//! 3. `not_a_member`: it is in the member set in force at the next height (a
//!    joiner whose admission is not in its chain yet, or a removed member, is
//!    not), so it signs at that height;
//! 4. `no_quorum`: the quorum gate is met: this node and its connected peers of
//!    that set reach `required`, so it proposes and votes;
//! 5. `not_signing`: nothing holds its signatures back: the doppelganger
//!    watch after a start is over, and no lock its data dir lost is missing
//!    (`signing_held` in `/status` says which, see [`crate::chain::doppelganger`]).
//!
//! "Signing" is read as "a member of the current set, in the mesh and not
//! behind": a member in that state signs every step of every round by
//! construction of the producer, and a check of its last signature would only
//! add the delay of a block interval without telling more.
//!
//! **Stopping** is judged by [`stop_verdict`] from what this node sees: the
//! members of the current set it is connected to. Once it stops, those are the
//! members left active, to be compared with `required` of the same set (a
//! stop does not change the set). What the other nodes see of each other is not
//! visible from here: in a partial mesh the remaining members may reach fewer
//! of each other than this node reaches of them, so the verdict is an upper
//! bound. A node that is not a member never counts towards the quorum and may
//! always be stopped.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::chain::quorum::Quorum;
use crate::identity::NodeId;
use crate::status::Status;

/// Why a node is not ready. The names are stable: a supervisor may match them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReady {
    Starting,
    Syncing,
    NotAMember,
    NoQuorum,
    NotSigning,
}

impl NotReady {
    #[cfg(test)]
    fn as_str(self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::Syncing => "syncing",
            NotReady::NotAMember => "not_a_member",
            NotReady::NoQuorum => "no_quorum",
            NotReady::NotSigning => "not_signing",
        }
    }
}

/// `GET /ready`'s answer: 200 when `ready`, else 503 with the `reason`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, while not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotReady>,
    /// One human sentence.
    pub message: String,
    pub height: u64,
    #[serde(default)]
    pub best_peer_tip: Option<u64>,
    pub member: bool,
    pub quorum: Quorum,
}

/// Whether the node `s` describes is ready; `started` once its producer has
/// turned its loop.
pub(crate) fn readiness(s: &Status, started: bool) -> Readiness {
    let behind = s.sync.best_peer_tip.filter(|best| *best > s.height + 1);
    let q = &s.quorum;
    let (reason, message) = if !started {
        (Some(NotReady::Starting), "starting: consensus is not running yet".to_string())
    } else if let Some(best) = behind {
        let message = format!("syncing: at height {}, a peer claims {best} ({} behind)", s.height, best - s.height);
        (Some(NotReady::Syncing), message)
    } else if !s.member {
        let message = format!(
            "not a member: this node is not in the set of {} members at height {}; it follows the chain and \
             is ready once a block adds it",
            s.members,
            s.height + 1
        );
        (Some(NotReady::NotAMember), message)
    } else if !q.met {
        let message = format!("no quorum: {}/{} active, {} required", q.active, s.members, q.required);
        (Some(NotReady::NoQuorum), message)
    } else if let Some(held) = &s.signing_held {
        (Some(NotReady::NotSigning), format!("not signing: {held}"))
    } else {
        let message = format!(
            "ready: a member at height {}, {}/{} active, {} required",
            s.height, q.active, s.members, q.required
        );
        (None, message)
    };
    Readiness {
        ready: reason.is_none(),
        reason,
        message,
        height: s.height,
        best_peer_tip: s.sync.best_peer_tip,
        member: s.member,
        quorum: *q,
    }
}

/// Why a node may or may not be stopped now. Stable names, as [`NotReady`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The connected members other than this one reach `required`.
    QuorumKept,
    /// This node does not count towards the quorum.
    NotAMember,
    /// The connected members other than this one fall short of `required`.
    BelowQuorum,
    /// The node's admin API did not answer.
    Down,
    /// It answered with something that is not a status (an error, a body
    /// that does not parse).
    Unknown,
}

/// The answer of `masternode status --can-stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopVerdict {
    pub can_stop: bool,
    pub reason: StopReason,
    /// One line for the operator.
    pub message: String,
    pub member: bool,
    /// The size of the member set in force at the next height.
    pub members: usize,
    /// Members of that set connected to this node (this node aside).
    pub connected_members: usize,
    /// Members active once this node stops, as far as this node sees.
    pub remaining: usize,
    pub required: usize,
}

/// What [`stop_verdict`] reads: this node, the member set in force at the next
/// height with its `required`, and the peers this node has a completed
/// handshake with (members or not).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopInput<'a> {
    pub this: NodeId,
    pub members: &'a BTreeSet<NodeId>,
    pub connected: &'a [NodeId],
    pub required: usize,
}

/// Whether stopping this node now leaves the connected members at or above
/// the quorum. Peers that are not members (a joiner being admitted, a bootstrap
/// peer) are not counted, nor is a peer listed twice.
pub(crate) fn stop_verdict(input: StopInput<'_>) -> StopVerdict {
    let StopInput { this, members, connected, required } = input;
    let member = members.contains(&this);
    let connected_members =
        connected.iter().filter(|id| **id != this && members.contains(id)).collect::<BTreeSet<_>>().len();
    let remaining = connected_members;
    let n = members.len();
    let (reason, message) = if !member {
        let message = format!(
            "this node is not one of the {n} members: stopping it leaves {remaining} of {n} members active, \
             {required} required, as they are"
        );
        (StopReason::NotAMember, message)
    } else if remaining >= required {
        (StopReason::QuorumKept, format!("stopping now leaves {remaining} of {n} members active, {required} required"))
    } else {
        let active = remaining + 1;
        let already = if active < required {
            format!(" (the quorum is already lost: {active} of {n} active)")
        } else {
            String::new()
        };
        let message = format!("stopping now leaves {remaining} of {n} members active, {required} required{already}");
        (StopReason::BelowQuorum, message)
    };
    StopVerdict {
        can_stop: reason != StopReason::BelowQuorum,
        reason,
        message,
        member,
        members: n,
        connected_members,
        remaining,
        required,
    }
}

/// The verdict without a status to judge from: the node did not answer
/// (`Down`: it may be up and unreachable from here, or already stopped) or
/// answered nonsense (`Unknown`). Neither is evidence that stopping is safe.
pub fn unanswered_verdict(reason: StopReason, why: impl std::fmt::Display) -> StopVerdict {
    let what = if reason == StopReason::Down { "down" } else { "no verdict" };
    StopVerdict {
        can_stop: false,
        reason,
        message: format!("{what}: {why}"),
        member: false,
        members: 0,
        connected_members: 0,
        remaining: 0,
        required: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::quorum::required_active;
    use crate::status::{Counters, SyncStatus};

    fn id(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn status(height: u64, best: Option<u64>, member: bool, active: usize) -> Status {
        Status {
            node_id: id(0).to_hex(),
            listen: "127.0.0.1:24100".into(),
            bound: None,
            network: "devnet".into(),
            members: 4,
            member,
            removed_at_height: None,
            pending_changes: vec![],
            height,
            tip_hash: None,
            quorum: crate::chain::quorum::quorum(active, 4, 3),
            peers: vec![],
            counters: Counters::default(),
            rejects_sent: Default::default(),
            rejects_received: Default::default(),
            last_block_timestamp_ms: None,
            last_block_age_secs: None,
            round: 0,
            sync: SyncStatus { syncing: best.is_some_and(|b| b > height), best_peer_tip: best },
            clock_offset_ms: None,
            warnings: vec![],
            signing_held: None,
            earliest_height: 1,
            data_dir_bytes: None,
        }
    }

    #[test]
    fn readiness_needs_started_synced_member_and_quorum_and_names_the_first_missing() {
        use NotReady::*;
        // (what, started, height, best peer tip, member, active of 4 (3 required), reason)
        type Row = (&'static str, bool, u64, Option<u64>, bool, usize, Option<NotReady>);
        let table: [Row; 13] = [
            ("all well", true, 10, Some(10), true, 4, None),
            ("all well at the quorum", true, 10, Some(10), true, 3, None),
            ("no peer claims a tip", true, 0, None, true, 3, None),
            ("one block behind is in step", true, 10, Some(11), true, 3, None),
            ("ahead of every claim", true, 10, Some(4), true, 3, None),
            ("two blocks behind", true, 10, Some(12), true, 3, Some(Syncing)),
            ("far behind with an empty store", true, 0, Some(500), true, 4, Some(Syncing)),
            ("behind weighs more than the quorum", true, 10, Some(40), true, 1, Some(Syncing)),
            ("behind weighs more than the set", true, 10, Some(40), false, 0, Some(Syncing)),
            ("a joiner", true, 10, Some(11), false, 0, Some(NotAMember)),
            ("alone", true, 10, None, true, 1, Some(NoQuorum)),
            ("one short of the quorum", true, 10, Some(10), true, 2, Some(NoQuorum)),
            ("not started", false, 10, Some(40), false, 0, Some(Starting)),
        ];
        for (what, started, height, best, member, active, want) in table {
            let r = readiness(&status(height, best, member, active), started);
            assert_eq!(r.reason, want, "{what}: {}", r.message);
            assert_eq!(r.ready, want.is_none(), "{what}");
            let prefix = want.map_or("ready", |w| w.as_str()).replace('_', " ");
            assert!(r.message.starts_with(&prefix), "{what}: {}", r.message);
        }
    }

    #[test]
    fn a_member_in_the_mesh_that_holds_its_signatures_back_is_not_ready_and_says_why() {
        let held = Status { signing_held: Some("doppelganger watch: ...".into()), ..status(10, Some(10), true, 4) };
        let r = readiness(&held, true);
        assert_eq!(r.reason, Some(NotReady::NotSigning), "{}", r.message);
        assert_eq!(r.message, "not signing: doppelganger watch: ...");
        let behind = Status { signing_held: Some("doppelganger watch".into()), ..status(10, Some(40), true, 4) };
        assert_eq!(readiness(&behind, true).reason, Some(NotReady::Syncing), "behind comes first");
        let alone = Status { signing_held: Some("doppelganger watch".into()), ..status(10, None, true, 1) };
        assert_eq!(readiness(&alone, true).reason, Some(NotReady::NoQuorum), "the quorum comes first");
        assert_eq!(serde_json::to_value(NotReady::NotSigning).unwrap(), "not_signing");
    }

    #[test]
    fn readiness_answers_in_json_with_a_stable_reason() {
        let r = readiness(&status(3, Some(90), true, 4), true);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["reason"], "syncing");
        assert_eq!(v["message"], "syncing: at height 3, a peer claims 90 (87 behind)");
        let ready = serde_json::to_value(readiness(&status(3, Some(3), true, 4), true)).unwrap();
        assert_eq!(ready["ready"], true);
        assert!(ready.get("reason").is_none(), "{ready}");
        for reason in [NotReady::Starting, NotReady::Syncing, NotReady::NotAMember, NotReady::NoQuorum] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    #[test]
    fn stopping_is_safe_while_the_other_connected_members_reach_the_quorum() {
        use StopReason::*;
        // (what, members, min_active, this node a member, member peers, other peers, reason)
        let table: [(&str, u8, usize, bool, u8, u8, StopReason); 16] = [
            ("n=3 all up", 3, 3, true, 2, 0, BelowQuorum),
            ("n=3 min_active 2 all up", 3, 2, true, 2, 0, BelowQuorum),
            ("n=4 all up", 4, 3, true, 3, 0, QuorumKept),
            ("n=4 one down", 4, 3, true, 2, 0, BelowQuorum),
            ("n=4 two down", 4, 3, true, 1, 0, BelowQuorum),
            ("n=4 one down, a joiner connected", 4, 3, true, 2, 1, BelowQuorum),
            ("n=4 one down, joiners connected", 4, 3, true, 2, 3, BelowQuorum),
            ("n=7 all up", 7, 3, true, 6, 0, QuorumKept),
            ("n=7 two down", 7, 3, true, 4, 0, BelowQuorum),
            ("n=7 one down", 7, 3, true, 5, 0, QuorumKept),
            ("n=7 min_active 6 all up", 7, 6, true, 6, 0, QuorumKept),
            ("n=7 min_active 6 one down", 7, 6, true, 5, 0, BelowQuorum),
            ("n=1 alone", 1, 1, true, 0, 0, BelowQuorum),
            ("a joiner, n=4 all up", 4, 3, false, 4, 0, NotAMember),
            ("a joiner, n=4 two down", 4, 3, false, 2, 0, NotAMember),
            ("a joiner alone", 4, 3, false, 0, 0, NotAMember),
        ];
        for (what, n, min_active, member, member_peers, other_peers, want) in table {
            let this = id(200);
            let mut members: BTreeSet<NodeId> = (1..=n).map(id).collect();
            if member {
                members.remove(&id(n));
                members.insert(this);
            }
            let mut connected: Vec<NodeId> =
                members.iter().copied().filter(|m| *m != this).take(member_peers as usize).collect();
            assert_eq!(connected.len(), member_peers as usize, "{what}: the table asks for more peers than members");
            connected.extend((0..other_peers).map(|k| id(100 + k)));
            let required = required_active(n as usize, min_active);
            let v = stop_verdict(StopInput { this, members: &members, connected: &connected, required });
            assert_eq!(v.reason, want, "{what}: {}", v.message);
            assert_eq!(v.can_stop, want != BelowQuorum, "{what}");
            assert_eq!(v.remaining, member_peers as usize, "{what}: joiners never count");
            assert_eq!(v.members, n as usize, "{what}");
        }
    }

    #[test]
    fn the_verdict_says_how_many_would_remain_of_how_many_required() {
        let members: BTreeSet<NodeId> = (1..=4).map(id).collect();
        let two = [id(2), id(3)];
        let v = stop_verdict(StopInput { this: id(1), members: &members, connected: &two, required: 3 });
        assert_eq!(v.message, "stopping now leaves 2 of 4 members active, 3 required");
        let one = [id(2)];
        let v = stop_verdict(StopInput { this: id(1), members: &members, connected: &one, required: 3 });
        assert_eq!(
            v.message,
            "stopping now leaves 1 of 4 members active, 3 required (the quorum is already lost: 2 of 4 active)"
        );
        // A peer listed twice, or this node among its own peers, counts once or not at all.
        let odd = [id(2), id(2), id(1), id(3), id(4)];
        let v = stop_verdict(StopInput { this: id(1), members: &members, connected: &odd, required: 3 });
        assert_eq!((v.connected_members, v.can_stop), (3, true));
        let v = stop_verdict(StopInput { this: id(9), members: &members, connected: &two, required: 3 });
        assert!(v.can_stop && v.message.starts_with("this node is not one of the 4 members"), "{}", v.message);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["reason"], "not_a_member");
        let down = unanswered_verdict(StopReason::Down, "no answer from 127.0.0.1:24101");
        assert!(!down.can_stop);
        assert_eq!(down.message, "down: no answer from 127.0.0.1:24101");
        assert_eq!(serde_json::to_value(&down).unwrap()["reason"], "down");
        assert!(!unanswered_verdict(StopReason::Unknown, "answered 500").can_stop);
    }
}
