//! The connection rules per member, as a state machine without IO.
//!
//! One slot per member other than ourselves, in the member set as it stands now:
//! the set changes while the node runs ([`Slots::handle_members`]). The slot
//! decides when to dial (the direction rule, the passive wait, backoff), which
//! connection a pair keeps when it has two, and what the rest of the node hears
//! (`Up`, `Down`). It reads no clock and touches no socket: inputs come in
//! through `handle_*` with the current time, decisions come out of
//! [`Slots::poll_action`] and [`Slots::poll_timeout`], in the style of quinn-proto. The async shell ([`super::manager`]) carries them out.
//!
//! The rules:
//!
//! * **Direction.** The member with the lower address dials; the other waits
//!   ([`direction::role`]). Before any contact the addresses come from the member
//!   set; once a handshake completed, from the addresses both ends advertised in it,
//!   so two ends whose files disagree still agree on who dials.
//! * **Passive wait.** A waiting slot that has had no connection for `passive_wait`
//!   dials itself; it then counts as a fallback connection, and losing it means
//!   backoff rather than another passive wait (the peer may be unable to reach us).
//! * **Backoff.** Failed dials and rejected handshakes back off exponentially with
//!   jitter; a connection that stayed up for [`RESET_AFTER`] resets the backoff.
//! * **Duplicates.** With two connections, both ends keep the same one
//!   ([`direction::new_wins`]): the peer's newer incarnation, else the rule's
//!   direction, else the later one. The loser is closed with
//!   [`Close::DUPLICATE`]; that is not a failure.
//! * **Stale connections and twins.** Incarnations grow with each start of a
//!   process, so a connection from an older incarnation than the active one is a
//!   leftover of a restart (a Welcome that arrives late) or a second live process
//!   with the same key. It never replaces the newer one: it is closed with
//!   [`Close::SUPERSEDED`]. The second time a slot sees that, it reports two
//!   processes with one key, once, at error level.
//! * **Events.** `Up` when a peer gets an active connection, also when a newer one
//!   replaced it (the peer may have restarted and lost what we sent), `Down` when it
//!   has none.
//! * **Members come and go.** A member added to the set gets a slot as the initial
//!   members did: dialled at once if we rank lower, else awaited for the passive
//!   wait. A member removed loses its slot: its connection is closed with
//!   [`Close::REMOVED`] and it goes `Down`; a connection from it that completes
//!   later is closed the same way. A member whose address changed keeps its
//!   connection, if it has one (QUIC follows a peer's new address); otherwise its
//!   backoff is forgotten and it is dialled at the new address at once (or awaited
//!   there for a fresh passive wait, whichever the rule says for the new address).
//!   A member whose entry did not change is left alone. Our own entry, if the set
//!   has one, plays no part in the direction rule: a node whose key is not (yet)
//!   in the set still dials and accepts the members it knows.
//! * **Outside the set.** A node whose key is not in the set (a joiner, or a
//!   member removed) is dialled by nobody, so it waits for no one: it dials every
//!   member at once, then with backoff. Members refusing its key (at TLS, or
//!   closing with [`Close::REMOVED`]) is what it expects until its add is in
//!   force: one info line per peer, and again only when something else happened
//!   in between. A member refused that way is in trouble (the peer does not count
//!   it): a warning, as for any failure.
//! * **Our address moves.** QUIC carries a connection we dialled to our new
//!   address, but not one the peer dialled: the peer goes on sending to the
//!   address we no longer have. When the shell finds a connection's local address
//!   gone from the host ([`Slots::handle_address_lost`]), that connection is
//!   closed and the peer dialled at once as a fallback, from the new address;
//!   the shell announces a newer incarnation in that handshake, so the peer
//!   takes the new connection over the one it dialled and cannot know is dead.
//! * **Being removed.** A peer that closes our connection with [`Close::REMOVED`]
//!   no longer counts us as a member: that is a rejection, met with backoff, not a
//!   prompt redial.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::backoff::{Backoff, RESET_AFTER};
use super::direction::{self, ConnFacts, Direction, Role};
use super::Close;
use crate::identity::NodeId;

/// A connection's generation number, unique for the life of the process: the end
/// of an old connection can never remove its replacement.
pub(super) type ConnId = u64;

/// Retry delay after a peer closed our connection as a duplicate while we hold no
/// other: the peer believes it has one with us, which will soon prove stale or
/// reach us. Not a failure, so no backoff step.
pub(super) const DUPLICATE_RETRY: Duration = Duration::from_secs(1);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Dial `peer` at `addr`; report the outcome with `handle_dial_failed` or
    /// `handle_established`.
    Dial { peer: NodeId, addr: SocketAddr, fallback: bool },
    /// Close this connection with an application close code.
    Close { peer: NodeId, conn: ConnId, code: u32, reason: &'static str },
    /// `conn` is now the peer's active connection.
    Up { peer: NodeId, conn: ConnId, direction: Direction, replaced: Option<ConnId> },
    /// The peer has no active connection any more.
    Down { peer: NodeId },
}

/// Why a dial produced no connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DialFailure {
    /// Nothing answered, or QUIC/TLS failed: `what` says how.
    Failed(String),
    /// The peer refused our key (at TLS, or as not in its member set): it does
    /// not count us as a member. `what` says how.
    NotAccepted(String),
    /// The peer holds another connection with us and closed this one.
    DuplicateAtPeer,
    /// As `Failed`, of a cause the caller reported to the operator already (no
    /// wire version in common): backed off alike, logged at debug only.
    Reported(String),
}

/// Why a connection ended, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CloseCause {
    /// The pair kept another connection.
    Duplicate,
    /// The peer rejected our Welcome after we sent it, with this reason.
    Rejected(String),
    /// The peer closed it because we are not in its member set.
    Removed,
    /// Anything else, described for the log.
    Other(String),
}

#[derive(Debug, Clone)]
struct Active {
    conn: ConnId,
    facts: ConnFacts,
    established: Instant,
    /// We dialled it as the waiting side: the peer may be unable to reach us.
    via_fallback: bool,
}

#[derive(Debug)]
struct Slot {
    id: NodeId,
    addr: SocketAddr,
    role: Role,
    active: Option<Active>,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Backoff,
    /// Failed attempts (either direction) since the last success, for log summaries.
    failures: u32,
    /// The peer's refusal of our key, expected while we are outside the set,
    /// was logged, and nothing else has happened since.
    refusal_logged: bool,
    /// Connections from an older incarnation than the active one, seen so far.
    older_seen: u32,
    /// Our socket cannot reach the member's address family: never dial it; it
    /// dials us.
    unreachable: bool,
}

impl Slot {
    /// Logs the first failure of a streak and then every power of two, so a peer
    /// that stays away for an hour costs a dozen lines, not thousands.
    fn note_failure(&mut self, what: &str, retry: Option<Duration>) {
        self.failures += 1;
        self.refusal_logged = false;
        if self.failures.is_power_of_two() {
            let retry = retry.map(|d| format!("; retry in {} ms", d.as_millis())).unwrap_or_default();
            tracing::warn!(
                peer = %self.id.short(),
                addr = %self.addr,
                "{what}{retry} ({} failed attempt(s) in a row)",
                self.failures
            );
        } else {
            tracing::debug!(peer = %self.id.short(), "{what}");
        }
    }

    /// The peer refused our key. Outside the set (`member` false) that is
    /// expected: said once at info until something else happens; a member so
    /// refused is in trouble, as with any failure.
    fn note_refusal(&mut self, what: &str, retry: Option<Duration>, member: bool) {
        if member {
            return self.note_failure(what, retry);
        }
        self.failures += 1;
        if self.refusal_logged {
            tracing::debug!(peer = %self.id.short(), "{what}");
            return;
        }
        self.refusal_logged = true;
        tracing::info!(
            peer = %self.id.short(),
            addr = %self.addr,
            "{what}: expected while this node is not in the member set; retrying with backoff until its add is in \
             force (later refusals at debug)"
        );
    }
}

#[derive(Debug)]
pub(super) struct Slots {
    me: (SocketAddr, NodeId),
    /// Our key is in the member set. Outside it nobody dials us, so we dial
    /// every member at once whatever the direction rule says.
    member: bool,
    slots: BTreeMap<NodeId, Slot>,
    actions: VecDeque<Action>,
    passive_wait: Duration,
    /// Seeds each new slot's backoff jitter, so slots do not redial in lockstep.
    seed: u64,
}

impl Slots {
    /// Slots for every member of `members` other than ourselves (`me`: our address
    /// in the member set, or the one we advertise if we are not in it, and our id),
    /// with first dials scheduled from `now`.
    pub(super) fn new(
        me: (SocketAddr, NodeId),
        members: impl IntoIterator<Item = (NodeId, SocketAddr)>,
        passive_wait: Duration,
        seed: u64,
        now: Instant,
    ) -> Slots {
        let members: Vec<(NodeId, SocketAddr)> = members.into_iter().collect();
        let member = members.iter().any(|(id, _)| *id == me.1);
        let mut slots = Slots { me, member, slots: BTreeMap::new(), actions: VecDeque::new(), passive_wait, seed };
        for (id, addr) in members {
            slots.insert(id, addr, now);
        }
        slots
    }

    /// When a slot for a member with `role` first dials, from `now`.
    fn first_dial(&self, role: Role, now: Instant) -> Instant {
        if self.member {
            first_dial(role, now, self.passive_wait)
        } else {
            now
        }
    }

    /// A fresh slot for member `id` at `addr`, its first dial scheduled by the
    /// rule: now if we dial, after the passive wait if we wait. Returns its role,
    /// `None` for ourselves (no slot).
    fn insert(&mut self, id: NodeId, addr: SocketAddr, now: Instant) -> Option<Role> {
        let role = direction::role(self.me, (addr, id))?;
        self.seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
        let slot = Slot {
            id,
            addr,
            role,
            active: None,
            dialing: false,
            next_dial: Some(self.first_dial(role, now)),
            backoff: Backoff::new(self.seed),
            failures: 0,
            refusal_logged: false,
            older_seen: 0,
            unreachable: false,
        };
        self.slots.insert(id, slot);
        Some(role)
    }

    /// Whether our socket can reach `id`'s address. One it cannot (another
    /// address family) we never dial: we wait for it to dial us, whatever the
    /// direction rule says. Returns whether that changed.
    pub(super) fn set_reachable(&mut self, id: &NodeId, reachable: bool) -> bool {
        match self.slots.get_mut(id) {
            Some(slot) if slot.unreachable == reachable => {
                slot.unreachable = !reachable;
                true
            }
            _ => false,
        }
    }

    /// The member set is now `members` (the whole set; our own entry, if any, is
    /// ignored; of two entries for one id the last counts). Members not in it any
    /// more lose their slot and connection, new ones get a slot, moved ones their
    /// new address; unchanged ones are left alone.
    pub(super) fn handle_members(&mut self, members: impl IntoIterator<Item = (NodeId, SocketAddr)>, now: Instant) {
        let me = self.me.1;
        let members: Vec<(NodeId, SocketAddr)> = members.into_iter().collect();
        let member = members.iter().any(|(id, _)| *id == me);
        if member != self.member {
            self.member = member;
            // Refusals of our key mean something else now.
            for slot in self.slots.values_mut() {
                slot.refusal_logged = false;
            }
        }
        let members: BTreeMap<NodeId, SocketAddr> = members.into_iter().filter(|(id, _)| *id != me).collect();
        let removed: Vec<NodeId> = self.slots.keys().filter(|id| !members.contains_key(id)).copied().collect();
        for id in removed {
            self.remove(id);
        }
        for (id, addr) in members {
            match self.slots.get(&id) {
                None => {
                    let waits = match self.insert(id, addr, now) {
                        Some(Role::Dial) => "dialling it",
                        Some(Role::Wait) => "waiting for it to dial",
                        None => continue,
                    };
                    tracing::info!(peer = %id.short(), %addr, "member added to the set; {waits}");
                }
                Some(slot) if direction::canonical(slot.addr) != direction::canonical(addr) => {
                    self.moved(id, addr, now)
                }
                Some(_) => {}
            }
        }
    }

    fn remove(&mut self, id: NodeId) {
        let Some(slot) = self.slots.remove(&id) else { return };
        match slot.active {
            Some(active) => {
                tracing::info!(peer = %id.short(), addr = %slot.addr, "member removed from the set; closing its connection");
                self.actions.push_back(Action::Close {
                    peer: id,
                    conn: active.conn,
                    code: Close::REMOVED,
                    reason: "removed",
                });
                self.actions.push_back(Action::Down { peer: id });
            }
            None => tracing::info!(peer = %id.short(), addr = %slot.addr, "member removed from the set"),
        }
    }

    fn moved(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        let Some(role) = direction::role(self.me, (addr, id)) else { return };
        let first = self.first_dial(role, now);
        let Some(slot) = self.slots.get_mut(&id) else { return };
        let from = std::mem::replace(&mut slot.addr, addr);
        slot.role = role;
        if slot.active.is_some() {
            tracing::info!(peer = %id.short(), %from, to = %addr, "member moved to a new address; keeping its connection");
            return;
        }
        // The old address's failures say nothing about the new one. A dial still
        // under way goes to the old address: its outcome no longer counts
        // (`handle_dial_failed` ignores it), so the new one need not wait for it.
        slot.backoff.reset();
        slot.failures = 0;
        slot.dialing = false;
        slot.next_dial = Some(first);
        let what = match role {
            Role::Dial => "dialling it there",
            Role::Wait => "waiting for it to dial",
        };
        tracing::info!(peer = %id.short(), %from, to = %addr, "member moved to a new address; {what}");
    }

    /// Whether `id` is a member we keep a slot for.
    pub(super) fn contains(&self, id: &NodeId) -> bool {
        self.slots.contains_key(id)
    }

    /// Our part towards `id`, as the rules see it now.
    #[cfg(test)]
    pub(super) fn role(&self, id: &NodeId) -> Option<Role> {
        self.slots.get(id).map(|s| s.role)
    }

    /// The member's address we dial.
    pub(super) fn addr(&self, id: &NodeId) -> Option<SocketAddr> {
        self.slots.get(id).map(|s| s.addr)
    }

    /// The peer's active connection, if any.
    #[cfg(test)]
    pub(super) fn active(&self, id: &NodeId) -> Option<ConnId> {
        self.slots.get(id).and_then(|s| s.active.as_ref().map(|a| a.conn))
    }

    pub(super) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` next has something to do.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| s.active.is_none() && !s.dialing && !s.unreachable)
            .filter_map(|s| s.next_dial)
            .min()
    }

    /// Starts every dial that is due.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        let member = self.member;
        for slot in self.slots.values_mut() {
            if slot.active.is_some() || slot.dialing || slot.unreachable || slot.next_dial.is_none_or(|t| t > now) {
                continue;
            }
            slot.dialing = true;
            slot.next_dial = None;
            let fallback = slot.role == Role::Wait;
            // Once per streak: a redial after a failure is backoff, not news.
            // Outside the set there is no passive wait to speak of.
            if fallback && slot.failures == 0 && member {
                tracing::info!(peer = %slot.id.short(), addr = %slot.addr, "no connection from peer after the passive wait; dialling it");
            } else if fallback {
                tracing::debug!(peer = %slot.id.short(), "dialling the peer again after backoff");
            }
            self.actions.push_back(Action::Dial { peer: slot.id, addr: slot.addr, fallback });
        }
    }

    /// Our dial of `peer` at `addr` produced no connection.
    pub(super) fn handle_dial_failed(&mut self, peer: NodeId, addr: SocketAddr, failure: DialFailure, now: Instant) {
        let Some(slot) = self.slots.get_mut(&peer) else { return };
        if slot.addr != addr {
            // A dial of the address the member had before it moved.
            tracing::debug!(peer = %peer.short(), %addr, "dial of a former address failed: {failure:?}");
            return;
        }
        slot.dialing = false;
        if slot.active.is_some() {
            // The peer reached us meanwhile; this attempt no longer matters.
            tracing::debug!(peer = %peer.short(), "dial failed while connected inbound: {failure:?}");
            return;
        }
        match failure {
            DialFailure::DuplicateAtPeer => {
                slot.next_dial = Some(now + DUPLICATE_RETRY);
                tracing::debug!(peer = %peer.short(), "peer holds another connection with us; retrying shortly");
            }
            DialFailure::Failed(what) => {
                let delay = slot.backoff.next_delay();
                slot.next_dial = Some(now + delay);
                slot.note_failure(&what, Some(delay));
            }
            DialFailure::Reported(what) => {
                let delay = slot.backoff.next_delay();
                slot.next_dial = Some(now + delay);
                slot.failures += 1;
                tracing::debug!(peer = %peer.short(), "{what}");
            }
            DialFailure::NotAccepted(what) => {
                let delay = slot.backoff.next_delay();
                slot.next_dial = Some(now + delay);
                slot.note_refusal(&what, Some(delay), self.member);
            }
        }
    }

    /// An inbound handshake from `peer` failed.
    pub(super) fn handle_inbound_failed(&mut self, peer: NodeId, what: &str) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.note_failure(what, None);
        }
    }

    /// A connection with `peer` completed its handshake. `advertised` is the address
    /// the peer named as its own, `incarnation` its process's incarnation. Returns
    /// whether the connection was kept; a connection that is not kept has its
    /// `Close` queued.
    pub(super) fn handle_established(
        &mut self,
        peer: NodeId,
        conn: ConnId,
        direction: Direction,
        advertised: SocketAddr,
        incarnation: u64,
        now: Instant,
    ) -> bool {
        let me = self.me;
        let Some(slot) = self.slots.get_mut(&peer) else {
            // Its handshake passed while it was a member: removed since.
            tracing::debug!(peer = %peer.short(), "connection from a node not in the member set; closing it");
            self.actions.push_back(Action::Close { peer, conn, code: Close::REMOVED, reason: "not a member" });
            return false;
        };
        if direction == Direction::Outbound {
            slot.dialing = false;
        }
        // Both ends now know the addresses both advertise: rank by those, so the
        // two ends agree on the role even where their member files disagree.
        if let Some(role) = direction::role(me, (advertised, peer)) {
            if role != slot.role {
                tracing::info!(peer = %peer.short(), ?role, %advertised, "peer advertises another address than the member set: role follows the advertised address");
                slot.role = role;
            }
        }
        let facts = ConnFacts { direction, peer_incarnation: incarnation };
        let mut replaced = None;
        if let Some(active) = &slot.active {
            if incarnation < active.facts.peer_incarnation {
                slot.older_seen += 1;
                if slot.older_seen == 2 {
                    tracing::error!(
                        peer = %peer.short(),
                        addr = %slot.addr,
                        "two live processes use this member's key (a cloned key or a second instance): keeping the newer one, refusing the older; stop one of them"
                    );
                } else {
                    tracing::debug!(peer = %peer.short(), "connection from an older incarnation of the peer; closing it");
                }
                self.actions.push_back(Action::Close { peer, conn, code: Close::SUPERSEDED, reason: "superseded" });
                return false;
            }
            if !direction::new_wins(slot.role, active.facts, facts) {
                tracing::debug!(peer = %peer.short(), ?direction, "closing duplicate connection; keeping the existing one");
                self.actions.push_back(Action::Close { peer, conn, code: Close::DUPLICATE, reason: "duplicate" });
                return false;
            }
            tracing::debug!(peer = %peer.short(), ?direction, "new connection replaces the existing one");
            self.actions.push_back(Action::Close {
                peer,
                conn: active.conn,
                code: Close::DUPLICATE,
                reason: "duplicate",
            });
            replaced = Some(active.conn);
        }
        slot.active = Some(Active {
            conn,
            facts,
            established: now,
            via_fallback: direction == Direction::Outbound && slot.role == Role::Wait,
        });
        // Older incarnations are counted against the active connection only: a
        // late Welcome once, and another after a later restart, are not twins.
        slot.older_seen = 0;
        slot.next_dial = None;
        if slot.failures > 0 {
            tracing::info!(peer = %peer.short(), "connected after {} failed attempt(s)", slot.failures);
        }
        slot.failures = 0;
        slot.refusal_logged = false;
        if replaced.is_none() {
            tracing::info!(peer = %peer.short(), addr = %slot.addr, direction = direction.as_str(), "peer connected");
        }
        self.actions.push_back(Action::Up { peer, conn, direction, replaced });
        true
    }

    /// Our local address of `conn` with `peer` is gone from the host: the peer
    /// dialled it and cannot reach us there any more, and QUIC moves only the
    /// dialling end. Closes it and dials the peer at once, as a fallback (the
    /// peer may not learn our new address before the member set has it).
    pub(super) fn handle_address_lost(&mut self, peer: NodeId, conn: ConnId, now: Instant) {
        let Some(slot) = self.slots.get_mut(&peer) else { return };
        if slot.active.as_ref().map(|a| a.conn) != Some(conn) {
            return;
        }
        slot.active = None;
        self.actions.push_back(Action::Close { peer, conn, code: Close::ADDRESS_LOST, reason: "address lost" });
        self.actions.push_back(Action::Down { peer });
        tracing::info!(peer = %peer.short(), addr = %slot.addr, "our address of the connection the peer dialled is gone; dialling the peer from the new one");
        if slot.dialing || slot.unreachable {
            slot.next_dial = Some(now);
            return;
        }
        slot.dialing = true;
        slot.next_dial = None;
        self.actions.push_back(Action::Dial { peer, addr: slot.addr, fallback: true });
    }

    /// Connection `conn` with `peer` ended.
    pub(super) fn handle_closed(&mut self, peer: NodeId, conn: ConnId, cause: CloseCause, now: Instant) {
        let (passive_wait, member) = (self.passive_wait, self.member);
        let Some(slot) = self.slots.get_mut(&peer) else { return };
        if slot.active.as_ref().map(|a| a.conn) != Some(conn) {
            return; // not the active one: already replaced or never kept
        }
        let Some(active) = slot.active.take() else { return };
        self.actions.push_back(Action::Down { peer });
        let uptime = now.saturating_duration_since(active.established);
        if uptime >= RESET_AFTER {
            slot.backoff.reset();
        }
        let next = match &cause {
            CloseCause::Duplicate => match slot.role {
                Role::Dial => now + DUPLICATE_RETRY,
                Role::Wait => now + passive_wait,
            },
            // A rejection, or a fallback connection lost: the peer may be unable
            // to reach us or to accept us; back off rather than wait passively.
            CloseCause::Rejected(_) | CloseCause::Removed => now + slot.backoff.next_delay(),
            CloseCause::Other(_) => match (slot.role, active.via_fallback) {
                (Role::Dial, _) | (Role::Wait, true) => now + slot.backoff.next_delay(),
                (Role::Wait, false) => now + passive_wait,
            },
        };
        slot.next_dial = Some(next);
        match cause {
            CloseCause::Duplicate => tracing::debug!(peer = %peer.short(), "peer disconnected: duplicate"),
            CloseCause::Rejected(reason) => {
                slot.note_failure(&format!("peer rejected our welcome: {reason}"), Some(next - now))
            }
            CloseCause::Removed => slot.note_refusal(
                "peer closed the connection: this node is not in its member set",
                Some(next - now),
                member,
            ),
            CloseCause::Other(why) => {
                tracing::info!(peer = %peer.short(), addr = %slot.addr, after_secs = uptime.as_secs(), "peer disconnected: {why}")
            }
        }
    }
}

/// When a new slot, or a moved one, first dials: at once if we dial, after the
/// passive wait if we wait.
fn first_dial(role: Role, now: Instant, passive_wait: Duration) -> Instant {
    match role {
        Role::Dial => now,
        Role::Wait => now + passive_wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 24100))
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// Node `me` (at 127.0.0.me) in a set of members 1..=n.
    fn slots(me: u8, n: u8, t0: Instant) -> Slots {
        Slots::new((addr(me), id(me)), (1..=n).map(|i| (id(i), addr(i))), WAIT, 7, t0)
    }

    fn actions(s: &mut Slots) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn dials(s: &mut Slots) -> Vec<NodeId> {
        actions(s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial { peer, .. } => Some(peer),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_lower_address_dials_at_once_and_the_higher_waits() {
        let t0 = Instant::now();
        let mut s = slots(2, 3, t0);
        s.handle_timeout(t0);
        assert_eq!(dials(&mut s), vec![id(3)], "2 dials 3 at once, not 1");
        assert_eq!(s.poll_timeout(), Some(t0 + WAIT), "and waits for 1");
        assert!(!s.slots.contains_key(&id(2)), "no slot for ourselves");
    }

    #[test]
    fn a_waiting_slot_dials_itself_after_the_passive_wait() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        s.handle_timeout(t0 + WAIT - Duration::from_millis(1));
        assert!(dials(&mut s).is_empty());
        s.handle_timeout(t0 + WAIT);
        assert_eq!(actions(&mut s), vec![Action::Dial { peer: id(1), addr: addr(1), fallback: true }]);
    }

    #[test]
    fn an_inbound_connection_within_the_wait_cancels_the_fallback() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        assert!(s.handle_established(id(1), 1, Direction::Inbound, addr(1), 5, t0 + Duration::from_secs(1)));
        assert!(matches!(actions(&mut s)[..], [Action::Up { replaced: None, .. }]));
        assert_eq!(s.poll_timeout(), None, "nothing to dial while connected");
        s.handle_timeout(t0 + WAIT * 3);
        assert!(dials(&mut s).is_empty());
    }

    #[test]
    fn failed_dials_back_off_and_a_success_resets_the_streak() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            s.handle_timeout(now);
            assert_eq!(dials(&mut s), vec![id(2)]);
            s.handle_dial_failed(id(2), addr(2), DialFailure::Failed("unreachable".into()), now);
            let next = s.poll_timeout().unwrap();
            delays.push(next - now);
            now = next;
        }
        assert!(delays.windows(2).all(|w| w[1] >= w[0] / 2), "delays grow: {delays:?}");
        assert!(delays[5] >= Duration::from_secs(8), "six failures in, the wait is seconds: {delays:?}");
        assert!(s.handle_established(id(2), 1, Direction::Outbound, addr(2), 5, now));
        assert_eq!(s.slots[&id(2)].failures, 0);
    }

    #[test]
    fn a_connection_up_for_a_minute_resets_the_backoff() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        for i in 0..5 {
            s.handle_timeout(t0 + Duration::from_secs(100 * i));
            s.handle_dial_failed(id(2), addr(2), DialFailure::Failed("x".into()), t0 + Duration::from_secs(100 * i));
        }
        let up = t0 + Duration::from_secs(1000);
        s.handle_timeout(up);
        s.handle_established(id(2), 1, Direction::Outbound, addr(2), 5, up);
        let down = up + RESET_AFTER;
        s.handle_closed(id(2), 1, CloseCause::Other("idle timeout".into()), down);
        assert!(s.poll_timeout().unwrap() - down <= Duration::from_millis(500), "first step again");
    }

    #[test]
    fn a_lost_connection_is_redialled_by_the_dialler_and_awaited_by_the_waiter() {
        let t0 = Instant::now();
        let mut low = slots(1, 2, t0);
        let mut high = slots(2, 2, t0);
        low.handle_established(id(2), 1, Direction::Outbound, addr(2), 9, t0);
        high.handle_established(id(1), 1, Direction::Inbound, addr(1), 8, t0);
        actions(&mut low);
        actions(&mut high);
        let t1 = t0 + Duration::from_secs(5);
        low.handle_closed(id(2), 1, CloseCause::Other("reset".into()), t1);
        high.handle_closed(id(1), 1, CloseCause::Other("reset".into()), t1);
        assert_eq!(actions(&mut low), vec![Action::Down { peer: id(2) }]);
        assert!(low.poll_timeout().unwrap() - t1 <= Duration::from_millis(500), "dialler: backoff");
        assert_eq!(high.poll_timeout().unwrap() - t1, WAIT, "waiter: passive wait");
    }

    #[test]
    fn losing_a_fallback_connection_backs_off_instead_of_waiting_again() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        s.handle_timeout(t0 + WAIT);
        assert_eq!(dials(&mut s), vec![id(1)]);
        s.handle_established(id(1), 1, Direction::Outbound, addr(1), 3, t0 + WAIT);
        let t1 = t0 + WAIT * 2;
        s.handle_closed(id(1), 1, CloseCause::Other("idle timeout".into()), t1);
        assert!(s.poll_timeout().unwrap() - t1 <= Duration::from_millis(500));
    }

    #[test]
    fn both_ends_keep_the_same_one_of_two_connections() {
        // Simultaneous connections: 1 dialled 2 (the rule's direction), and 2
        // dialled 1 as a fallback. Either end may complete them in either order.
        let t0 = Instant::now();
        for low_first in [true, false] {
            for high_first in [true, false] {
                let mut low = slots(1, 2, t0);
                let mut high = slots(2, 2, t0);
                // conn 10: dialled by 1; conn 20: dialled by 2.
                let low_events = [(10, Direction::Outbound), (20, Direction::Inbound)];
                let high_events = [(10, Direction::Inbound), (20, Direction::Outbound)];
                let order = |first: bool, ev: [(ConnId, Direction); 2]| if first { ev } else { [ev[1], ev[0]] };
                for (c, d) in order(low_first, low_events) {
                    low.handle_established(id(2), c, d, addr(2), 200, t0);
                }
                for (c, d) in order(high_first, high_events) {
                    high.handle_established(id(1), c, d, addr(1), 100, t0);
                }
                assert_eq!(low.active(&id(2)), Some(10), "{low_first} {high_first}");
                assert_eq!(high.active(&id(1)), Some(10), "{low_first} {high_first}");
            }
        }
    }

    #[test]
    fn a_replaced_connection_is_reported_up_again_so_the_node_resends() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        s.handle_established(id(1), 1, Direction::Inbound, addr(1), 100, t0);
        actions(&mut s);
        // The peer restarted (a newer incarnation) and connected again before
        // the old connection was seen to end.
        assert!(s.handle_established(id(1), 2, Direction::Inbound, addr(1), 101, t0));
        assert_eq!(
            actions(&mut s),
            vec![
                Action::Close { peer: id(1), conn: 1, code: Close::DUPLICATE, reason: "duplicate" },
                Action::Up { peer: id(1), conn: 2, direction: Direction::Inbound, replaced: Some(1) },
            ]
        );
        // The old connection's end changes nothing.
        s.handle_closed(id(1), 1, CloseCause::Duplicate, t0);
        assert!(actions(&mut s).is_empty());
        assert_eq!(s.active(&id(1)), Some(2));
    }

    #[test]
    fn a_stale_welcome_from_before_a_restart_does_not_replace_the_newer_connection() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        s.handle_timeout(t0);
        actions(&mut s);
        // The restarted peer (incarnation 200) reached us first as a fallback...
        assert!(s.handle_established(id(2), 5, Direction::Inbound, addr(2), 200, t0));
        // ...then our dial completes against the dying old process (100).
        assert!(!s.handle_established(id(2), 6, Direction::Outbound, addr(2), 100, t0));
        assert_eq!(s.active(&id(2)), Some(5));
        assert!(actions(&mut s).contains(&Action::Close {
            peer: id(2),
            conn: 6,
            code: Close::SUPERSEDED,
            reason: "superseded"
        }));
    }

    #[test]
    fn two_live_processes_with_one_key_do_not_flip_the_connection() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        assert!(s.handle_established(id(1), 1, Direction::Inbound, addr(1), 500, t0));
        // The twin (older incarnation) keeps reconnecting: it never wins.
        for c in 2..20 {
            assert!(!s.handle_established(id(1), c, Direction::Inbound, addr(1), 400, t0));
            assert_eq!(s.active(&id(1)), Some(1), "the newer process keeps the slot");
        }
        assert_eq!(s.slots[&id(1)].older_seen, 18);
        let ups = actions(&mut s).iter().filter(|a| matches!(a, Action::Up { .. })).count();
        assert_eq!(ups, 1, "one Up, no flapping");
    }

    #[test]
    fn ends_whose_files_disagree_on_an_address_agree_on_the_role_after_a_handshake() {
        // Node 3's file puts node 1 at 127.0.0.9 (stale), so 3 ranks itself lower
        // and dials; node 1 knows it is at 127.0.0.1 and would dial too.
        let t0 = Instant::now();
        let members3 = [(id(1), addr(9)), (id(3), addr(3))];
        let mut three = Slots::new((addr(3), id(3)), members3, WAIT, 1, t0);
        let mut one = slots(1, 3, t0);
        assert_eq!(three.role(&id(1)), Some(Role::Dial));
        assert_eq!(one.role(&id(3)), Some(Role::Dial), "both would dial");
        // Both dials complete: 10 dialled by 3, 20 dialled by 1.
        three.handle_established(id(1), 10, Direction::Outbound, addr(1), 1000, t0);
        three.handle_established(id(1), 20, Direction::Inbound, addr(1), 1000, t0);
        one.handle_established(id(3), 20, Direction::Outbound, addr(3), 3000, t0);
        one.handle_established(id(3), 10, Direction::Inbound, addr(3), 3000, t0);
        assert_eq!(three.role(&id(1)), Some(Role::Wait), "3 now ranks by the address 1 advertises");
        assert_eq!(three.active(&id(1)), one.active(&id(3)), "both keep the same connection");
        assert_eq!(one.active(&id(3)), Some(20));
    }

    #[test]
    fn a_peer_closing_our_dial_as_duplicate_is_retried_soon_without_backoff() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        s.handle_timeout(t0);
        actions(&mut s);
        s.handle_dial_failed(id(2), addr(2), DialFailure::DuplicateAtPeer, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + DUPLICATE_RETRY));
        assert_eq!(s.slots[&id(2)].failures, 0, "not a failure");
    }

    #[test]
    fn a_rejected_welcome_backs_off_even_for_the_waiting_side() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        s.handle_established(id(1), 1, Direction::Inbound, addr(1), 1, t0);
        s.handle_closed(id(1), 1, CloseCause::Rejected("unsupported_version".into()), t0);
        assert!(s.poll_timeout().unwrap() - t0 <= Duration::from_millis(500));
        assert_eq!(s.slots[&id(1)].failures, 1);
    }

    #[test]
    fn a_member_of_an_address_family_we_cannot_reach_is_never_dialled() {
        let t0 = Instant::now();
        let mut s = slots(1, 3, t0);
        assert!(s.set_reachable(&id(2), false));
        assert!(!s.set_reachable(&id(2), false), "no change the second time");
        for k in 0..10 {
            s.handle_timeout(t0 + WAIT * k);
            assert_eq!(dials(&mut s), if k == 0 { vec![id(3)] } else { vec![] });
        }
        // It dials us, and that connection is kept like any other.
        assert!(s.handle_established(id(2), 1, Direction::Inbound, addr(2), 5, t0));
    }

    #[test]
    fn a_connection_from_a_node_outside_the_set_is_closed_as_removed() {
        // TLS and the handshake admit members only, so this is a member removed
        // while its handshake was under way.
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        assert!(!s.handle_established(id(9), 1, Direction::Inbound, addr(9), 1, t0));
        assert_eq!(
            actions(&mut s),
            vec![Action::Close { peer: id(9), conn: 1, code: Close::REMOVED, reason: "not a member" }]
        );
    }

    /// `ids` at 127.0.0.id, as a member set.
    fn set(ids: &[u8]) -> Vec<(NodeId, SocketAddr)> {
        ids.iter().map(|&i| (id(i), addr(i))).collect()
    }

    #[test]
    fn a_member_added_at_run_time_is_dialled_or_awaited_like_an_initial_one() {
        // Node 5 starts outside the set (a joiner) and knows nobody yet.
        let t0 = Instant::now();
        let mut s = Slots::new((addr(5), id(5)), [], WAIT, 7, t0);
        assert!(!s.handle_established(id(7), 1, Direction::Inbound, addr(7), 1, t0), "7 is not a member yet");
        actions(&mut s);
        let t1 = t0 + Duration::from_secs(3);
        s.handle_members(set(&[3, 5, 7]), t1);
        assert!(actions(&mut s).is_empty(), "dials come from the timer");
        s.handle_timeout(t1);
        assert_eq!(actions(&mut s), vec![Action::Dial { peer: id(7), addr: addr(7), fallback: false }], "5 < 7");
        assert_eq!(s.poll_timeout(), Some(t1 + WAIT), "3 < 5: a passive wait from the addition");
        s.handle_timeout(t1 + WAIT);
        assert_eq!(actions(&mut s), vec![Action::Dial { peer: id(3), addr: addr(3), fallback: true }]);
        assert!(s.handle_established(id(7), 2, Direction::Outbound, addr(7), 1, t1), "7 is a peer now");
    }

    #[test]
    fn a_node_outside_the_set_dials_every_member_at_once_and_backs_off_when_refused() {
        // 5 is not in the set and ranks above every member: by the rule it would
        // wait, but no member dials a key it does not know.
        let t0 = Instant::now();
        let mut s = Slots::new((addr(5), id(5)), set(&[1, 2, 3, 4]), WAIT, 7, t0);
        s.handle_timeout(t0);
        assert_eq!(dials(&mut s), vec![id(1), id(2), id(3), id(4)], "no passive wait");
        for i in 1..=4 {
            s.handle_dial_failed(id(i), addr(i), DialFailure::NotAccepted("refused at TLS".into()), t0);
        }
        assert!(s.poll_timeout().unwrap() - t0 <= Duration::from_millis(500), "backoff, not a passive wait");
        assert!(s.slots.values().all(|slot| slot.refusal_logged && slot.failures == 1));
        // Refused again: still one line per peer; something else in between
        // (the peer gone) is news, and so is the next refusal after it.
        let t1 = t0 + Duration::from_secs(1);
        s.handle_timeout(t1);
        s.handle_dial_failed(id(1), addr(1), DialFailure::NotAccepted("refused at TLS".into()), t1);
        assert!(s.slots[&id(1)].refusal_logged);
        s.handle_timeout(t1 + Duration::from_secs(5));
        s.handle_dial_failed(id(1), addr(1), DialFailure::Failed("no answer".into()), t1);
        assert!(!s.slots[&id(1)].refusal_logged, "another failure clears it");
        // Added: the direction rule again, for members that come later too.
        let t2 = t0 + Duration::from_secs(60);
        let low = SocketAddr::from(([127, 0, 0, 2], 1));
        s.handle_members(set(&[1, 2, 3, 4, 5]).into_iter().chain([(id(6), low)]), t2);
        assert!(s.slots.values().all(|slot| !slot.refusal_logged), "a refusal now means trouble");
        assert_eq!(s.slots[&id(6)].next_dial, Some(t2 + WAIT), "6 ranks lower: awaited");
    }

    #[test]
    fn a_member_refused_by_a_peer_is_in_trouble_not_in_an_expected_state() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        s.handle_timeout(t0);
        s.handle_dial_failed(id(2), addr(2), DialFailure::NotAccepted("refused at TLS".into()), t0);
        assert!(!s.slots[&id(2)].refusal_logged, "logged as a failure");
        assert_eq!(s.slots[&id(2)].failures, 1);
    }

    #[test]
    fn a_removed_member_is_closed_with_the_removed_code_and_never_dialled_again() {
        let t0 = Instant::now();
        let mut s = slots(1, 3, t0);
        s.handle_timeout(t0);
        assert_eq!(dials(&mut s), vec![id(2), id(3)]);
        s.handle_established(id(2), 10, Direction::Outbound, addr(2), 1, t0);
        actions(&mut s);
        // 2 is connected, 3's dial is still under way; both are removed.
        let t1 = t0 + Duration::from_secs(1);
        s.handle_members(set(&[1]), t1);
        assert_eq!(
            actions(&mut s),
            vec![
                Action::Close { peer: id(2), conn: 10, code: Close::REMOVED, reason: "removed" },
                Action::Down { peer: id(2) },
            ]
        );
        assert!(!s.contains(&id(2)) && !s.contains(&id(3)));
        // What was under way ends quietly: the closed connection, 3's dial, and a
        // handshake with 3 that completes late is closed as removed.
        s.handle_closed(id(2), 10, CloseCause::Other("closed locally".into()), t1);
        s.handle_dial_failed(id(3), addr(3), DialFailure::Failed("timeout".into()), t1);
        assert!(actions(&mut s).is_empty());
        assert!(!s.handle_established(id(3), 11, Direction::Outbound, addr(3), 1, t1));
        assert_eq!(
            actions(&mut s),
            vec![Action::Close { peer: id(3), conn: 11, code: Close::REMOVED, reason: "not a member" }]
        );
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(t1 + WAIT * 10);
        assert!(dials(&mut s).is_empty(), "never dialled again");
    }

    #[test]
    fn a_moved_member_is_dialled_at_its_new_address_at_once_with_its_backoff_forgotten() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        let mut now = t0;
        for _ in 0..5 {
            s.handle_timeout(now);
            assert_eq!(dials(&mut s), vec![id(2)]);
            s.handle_dial_failed(id(2), addr(2), DialFailure::Failed("no answer".into()), now);
            now = s.poll_timeout().unwrap();
        }
        s.handle_timeout(now);
        assert_eq!(dials(&mut s), vec![id(2)], "a dial of the old address is under way");
        let moved = now + Duration::from_millis(100);
        s.handle_members([(id(1), addr(1)), (id(2), addr(9))], moved);
        s.handle_timeout(moved);
        assert_eq!(actions(&mut s), vec![Action::Dial { peer: id(2), addr: addr(9), fallback: false }]);
        // The old dial's failure does not count against the new address.
        s.handle_dial_failed(id(2), addr(2), DialFailure::Failed("no answer".into()), moved);
        assert_eq!(s.poll_timeout(), None, "the new dial is under way");
        assert_eq!(s.slots[&id(2)].failures, 0);
        s.handle_dial_failed(id(2), addr(9), DialFailure::Failed("no answer".into()), moved);
        assert!(s.poll_timeout().unwrap() - moved <= Duration::from_millis(500), "backoff from its first step");
    }

    #[test]
    fn a_member_moving_across_our_address_swaps_who_dials() {
        let t0 = Instant::now();
        // 2 waits for 1; 1 moves above 2: 2 dials it at once.
        let mut s = slots(2, 2, t0);
        assert_eq!(s.role(&id(1)), Some(Role::Wait));
        s.handle_members(set(&[2]).into_iter().chain([(id(1), addr(9))]), t0);
        assert_eq!(s.role(&id(1)), Some(Role::Dial));
        s.handle_timeout(t0);
        assert_eq!(actions(&mut s), vec![Action::Dial { peer: id(1), addr: addr(9), fallback: false }]);
        // 1 dials 2; 2 moves below 1: the passive wait starts over from the move.
        let mut s = slots(1, 2, t0);
        s.handle_timeout(t0);
        s.handle_dial_failed(id(2), addr(2), DialFailure::Failed("no answer".into()), t0);
        let below = SocketAddr::from(([127, 0, 0, 0], 24100));
        let t1 = t0 + Duration::from_secs(2);
        s.handle_members([(id(1), addr(1)), (id(2), below)], t1);
        assert_eq!(s.role(&id(2)), Some(Role::Wait));
        assert_eq!(s.poll_timeout(), Some(t1 + WAIT));
    }

    #[test]
    fn a_connected_member_that_moves_keeps_its_connection() {
        let t0 = Instant::now();
        let mut s = slots(1, 2, t0);
        s.handle_established(id(2), 4, Direction::Inbound, addr(2), 1, t0);
        actions(&mut s);
        s.handle_members([(id(1), addr(1)), (id(2), addr(9))], t0);
        assert!(actions(&mut s).is_empty(), "no close, no Down");
        assert_eq!(s.active(&id(2)), Some(4));
        assert_eq!(s.addr(&id(2)), Some(addr(9)), "the next dial goes to the new address");
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_connection_whose_local_address_vanished_is_replaced_by_a_fallback_dial_at_once() {
        let t0 = Instant::now();
        // 2 waits for 1, which dialled it.
        let mut s = slots(2, 2, t0);
        assert!(s.handle_established(id(1), 7, Direction::Inbound, addr(1), 1, t0));
        actions(&mut s);
        let t1 = t0 + Duration::from_secs(30);
        s.handle_address_lost(id(1), 7, t1);
        assert_eq!(
            actions(&mut s),
            vec![
                Action::Close { peer: id(1), conn: 7, code: Close::ADDRESS_LOST, reason: "address lost" },
                Action::Down { peer: id(1) },
                // No passive wait: the peer cannot reach us.
                Action::Dial { peer: id(1), addr: addr(1), fallback: true },
            ]
        );
        // Without the rule the waiter would sit out the idle timeout and then a
        // passive wait, while the peer kept its dead connection.
        assert!(s.handle_established(id(1), 8, Direction::Outbound, addr(1), 1, t1));
        s.handle_address_lost(id(1), 7, t1);
        assert_eq!(s.active(&id(1)), Some(8), "a stale report about the old connection changes nothing");
    }

    #[test]
    fn the_same_set_again_changes_nothing() {
        let t0 = Instant::now();
        let mut s = slots(2, 4, t0);
        s.handle_timeout(t0);
        assert_eq!(dials(&mut s), vec![id(3), id(4)]);
        s.handle_established(id(1), 1, Direction::Inbound, addr(1), 1, t0);
        s.handle_established(id(3), 2, Direction::Outbound, addr(3), 1, t0);
        s.handle_dial_failed(id(4), addr(4), DialFailure::Failed("no answer".into()), t0);
        actions(&mut s);
        let timeout = s.poll_timeout();
        // Another order, our own entry, and an entry repeated: the same set.
        let t1 = t0 + Duration::from_millis(10);
        s.handle_members(set(&[4, 3, 1, 4]), t1);
        s.handle_members(set(&[4, 3, 2, 1]), t1);
        assert!(actions(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), timeout, "backoff kept");
        assert_eq!((s.active(&id(1)), s.active(&id(3))), (Some(1), Some(2)));
        assert_eq!(s.slots[&id(4)].failures, 1);
        s.handle_timeout(t1);
        assert!(dials(&mut s).is_empty());
    }

    #[test]
    fn being_closed_as_removed_backs_off_even_for_the_waiting_side() {
        let t0 = Instant::now();
        let mut s = slots(2, 2, t0);
        s.handle_established(id(1), 1, Direction::Inbound, addr(1), 1, t0);
        actions(&mut s);
        s.handle_closed(id(1), 1, CloseCause::Removed, t0);
        assert_eq!(actions(&mut s), vec![Action::Down { peer: id(1) }]);
        assert!(s.poll_timeout().unwrap() - t0 <= Duration::from_millis(500), "backoff, not a passive wait");
        assert_eq!(s.slots[&id(1)].failures, 1, "a failure: its streak is logged once");
    }
}
