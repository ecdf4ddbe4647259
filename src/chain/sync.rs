//! Catch-up planning, without IO: which peer to ask for which blocks, and what a
//! response says about the peer that sent it.
//!
//! A node behind asks its peers for blocks with their certificates and verifies
//! every certificate, so a peer cannot make it accept a wrong block; what a lying
//! or slow peer *can* do is waste the node's time. The planner bounds that:
//!
//! * **Chosen by what they deliver.** Peers are ranked by the blocks per second
//!   they delivered to us (a peer not yet asked ranks as promising, so each gets
//!   its chance), then by the tip they claim. A claim alone buys nothing more.
//! * **Hedged.** A request not answered within `hedge_after_ms` is asked of the next
//!   best peer too; the first answer wins. A peer that answers just before the
//!   request timeout costs at most `hedge_after_ms`.
//! * **Dropped for a while.** A peer that times out, fails, answers with nothing
//!   while claiming more, *drips* (a short answer far below the byte budget while it
//!   claims more blocks), or sends blocks that do not verify is not asked again for
//!   `penalty_ms`, and its claim is forgotten.
//! * **Reported once.** Each (peer, reason) is worth one warning; every failure is
//!   counted by reason for `masternode_sync_failures_total{reason}`.
//! * **Asked only for what they hold.** A peer that prunes (`retain_blocks`)
//!   says the earliest height it holds (`Holds`, wire 4); a peer is asked only
//!   when it holds the next height we need. A peer at wire 4 is not asked
//!   before it said ([`SyncPlanner::handle_holds_unknown`]; a `Holds` the shell
//!   handed over before the connection it came on counts); one at wire 3
//!   (0.1.0, which never prunes) holds everything.
//!   When peers claim more but none holds the next height, [`SyncPlanner::poll_unheld`]
//!   says so once, until a request can be made again.
//!
//! Times are milliseconds of the caller's monotonic clock (`now_ms`), so a
//! simulation drives the planner and the token bucket with virtual time.

use std::collections::{BTreeMap, BTreeSet};

use super::block::Height;
use crate::identity::NodeId;

/// Why a sync request was a failure. The labels are the metric's fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Failure {
    /// No answer within the request timeout.
    Timeout,
    /// The stream or connection failed, or the peer refused (rate limit).
    Request,
    /// The answer was not a `Blocks` message, or did not decode.
    Malformed,
    /// No blocks, from a peer that claimed to have them.
    Empty,
    /// Fewer blocks than asked, far below the byte budget, while claiming more.
    Drip,
    /// Blocks that do not extend our chain or whose certificates do not verify.
    Invalid,
}

impl Failure {
    pub(crate) const ALL: [Failure; 6] =
        [Failure::Timeout, Failure::Request, Failure::Malformed, Failure::Empty, Failure::Drip, Failure::Invalid];

    /// Its place in [`Failure::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Request => "request",
            Failure::Malformed => "malformed",
            Failure::Empty => "empty",
            Failure::Drip => "drip",
            Failure::Invalid => "invalid",
        }
    }
}

/// What came of a request, as the shell saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A `Blocks` answer: how many blocks, how many bytes, how many of them
    /// extended our chain, and whether one failed to verify.
    Blocks {
        blocks: usize,
        bytes: usize,
        applied: usize,
        invalid: bool,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncConfig {
    /// Blocks asked for per request.
    pub batch: u32,
    /// A response at or above this many bytes is full, whatever its block count.
    pub full_bytes: usize,
    pub hedge_after_ms: u64,
    pub penalty_ms: u64,
    /// How long no usable peer must hold the next height before that is
    /// reported: peers connect one by one, and the first may have pruned.
    pub unheld_grace_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch: 64,
            full_bytes: 64 * 1024,
            hedge_after_ms: 1_000,
            penalty_ms: 30_000,
            unheld_grace_ms: 10_000,
        }
    }
}

/// A request to send: `count` blocks from `from`, to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub peer: NodeId,
    pub from: Height,
    pub count: u32,
}

/// A request sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    request: Request,
    sent_ms: u64,
    /// What the peer claimed when it was asked. A short answer is weighed
    /// against this, not against a claim that arrived while the answer was on
    /// its way: a peer reads what it has stored when it serves, and its next
    /// `Tip` may overtake the answer.
    claimed: Height,
}

#[derive(Debug, Default, Clone)]
struct PeerSync {
    claimed: Height,
    /// The earliest height it holds (0 and 1: every block).
    holds_from: Height,
    /// Connected at a wire version that says what it holds, and not said yet.
    holds_unknown: bool,
    /// It sent `Holds` since it last went down: a `Holds` the shell hands
    /// over before the connection it came on still counts.
    holds_said: bool,
    delivered: u64,
    /// Milliseconds spent waiting for its answers.
    busy_ms: u64,
    penalized_until_ms: Option<u64>,
}

impl PeerSync {
    /// Blocks per second delivered; `None` before the first delivery.
    fn rate(&self) -> Option<f64> {
        (self.delivered > 0).then(|| self.delivered as f64 * 1000.0 / self.busy_ms.max(1) as f64)
    }
}

#[derive(Debug)]
pub(crate) struct SyncPlanner {
    cfg: SyncConfig,
    peers: BTreeMap<NodeId, PeerSync>,
    in_flight: BTreeMap<NodeId, InFlight>,
    reported: BTreeSet<(NodeId, Failure)>,
    failures: [u64; 6],
    /// The height no usable peer holds was reported (until a request is made).
    unheld_reported: bool,
    /// Since when no usable peer holds the next height.
    unheld_since_ms: Option<u64>,
}

/// What a response meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub failure: Option<Failure>,
    /// The first time this peer failed for this reason: worth a warning.
    pub first_of_its_kind: bool,
}

impl SyncPlanner {
    pub(crate) fn new(cfg: SyncConfig) -> Self {
        SyncPlanner {
            cfg,
            peers: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            reported: BTreeSet::new(),
            failures: [0; 6],
            unheld_reported: false,
            unheld_since_ms: None,
        }
    }

    /// `peer` holds the blocks from `earliest` up to its claim (its `Holds`,
    /// or 1 for a peer that never prunes).
    pub(crate) fn handle_holds(&mut self, peer: NodeId, earliest: Height) {
        let p = self.peers.entry(peer).or_default();
        (p.holds_from, p.holds_unknown, p.holds_said) = (earliest, false, true);
    }

    /// `peer` connected at a wire version whose nodes say what they hold
    /// (`Holds`): it is not asked until it said. A peer never announced so
    /// holds every block.
    pub(crate) fn handle_holds_unknown(&mut self, peer: NodeId) {
        let p = self.peers.entry(peer).or_default();
        p.holds_unknown = !p.holds_said;
    }

    /// When usable peers claim more than `our_tip` and none has held the next
    /// height for `unheld_grace_ms`: the lowest earliest height they hold,
    /// reported once until a request can be made again.
    pub(crate) fn poll_unheld(&mut self, our_tip: Height, now_ms: u64) -> Option<Height> {
        let claiming: Vec<&PeerSync> = self
            .peers
            .values()
            .filter(|p| p.claimed > our_tip && p.penalized_until_ms.is_none_or(|t| now_ms >= t))
            .collect();
        let unheld = self.in_flight.is_empty()
            && !claiming.is_empty()
            && claiming.iter().all(|p| !p.holds_unknown && p.holds_from.max(1) > our_tip + 1);
        if !unheld {
            self.unheld_since_ms = None;
            return None;
        }
        let lowest = claiming.iter().map(|p| p.holds_from).min();
        let since = *self.unheld_since_ms.get_or_insert(now_ms);
        if self.unheld_reported || now_ms.saturating_sub(since) < self.cfg.unheld_grace_ms {
            return None;
        }
        self.unheld_reported = true;
        lowest
    }

    /// `peer` claims to have committed up to `height` (a tip announcement, its
    /// handshake, a message for a later height). Ignored while it is penalized.
    pub(crate) fn handle_claim(&mut self, peer: NodeId, height: Height, now_ms: u64) {
        let p = self.peers.entry(peer).or_default();
        if p.penalized_until_ms.is_some_and(|t| now_ms < t) {
            return;
        }
        p.claimed = p.claimed.max(height);
    }

    /// `peer` disconnected: its claim and any request to it are gone.
    pub(crate) fn handle_down(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.claimed = 0;
            (p.holds_from, p.holds_unknown, p.holds_said) = (0, false, false);
        }
        self.in_flight.remove(&peer);
    }

    /// The request in flight to `peer`, if any: what its answer must be.
    pub(crate) fn in_flight_to(&self, peer: &NodeId) -> Option<Request> {
        self.in_flight.get(peer).map(|f| f.request)
    }

    /// Forgets the peers `keep` refuses (they left the set): their claims,
    /// rates and reports. A request in flight to one ends with its connection
    /// ([`Self::handle_down`]).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.peers.retain(|id, _| keep(id));
        self.reported.retain(|(id, _)| keep(id));
    }

    /// Entries kept per peer (claims and rates, requests in flight, reports)
    /// and about the bytes they hold.
    pub(crate) fn bytes(&self) -> usize {
        self.peers.len() * std::mem::size_of::<(NodeId, PeerSync)>()
            + self.in_flight.len() * std::mem::size_of::<(NodeId, InFlight)>()
            + self.reported.len() * std::mem::size_of::<(NodeId, Failure)>()
    }

    /// Whether `peer` has an entry (tests).
    #[cfg(test)]
    pub(crate) fn knows(&self, peer: &NodeId) -> bool {
        self.peers.contains_key(peer)
            || self.in_flight.contains_key(peer)
            || self.reported.iter().any(|(p, _)| p == peer)
    }

    /// Failures so far, by reason (in [`Failure::ALL`] order).
    pub(crate) fn failures(&self) -> [u64; 6] {
        self.failures
    }

    /// How long a failed peer is not asked again, in ms.
    pub(crate) fn penalty_ms(&self) -> u64 {
        self.cfg.penalty_ms
    }

    /// Whether a request is under way.
    #[cfg(test)]
    fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The highest tip any usable peer claims: one not penalized that said
    /// what it holds. The claim of a peer that never sends `Holds` is never
    /// acted on (it is not asked for blocks), so it never makes this node
    /// behind: a member announcing a far tip and nothing else would
    /// otherwise hold every restarting node's doppelganger watch, and
    /// `/ready`, at `syncing` for good.
    pub(crate) fn best_claim(&self, now_ms: u64) -> Height {
        self.peers
            .values()
            .filter(|p| !p.holds_unknown && p.penalized_until_ms.is_none_or(|t| now_ms >= t))
            .map(|p| p.claimed)
            .max()
            .unwrap_or(0)
    }

    /// The next request to send, if any: when nothing is in flight and a usable
    /// peer claims more than `our_tip`, or when the request in flight is older
    /// than `hedge_after` (then to another peer, for the same blocks).
    pub(crate) fn poll_request(&mut self, our_tip: Height, now_ms: u64) -> Option<Request> {
        match self.in_flight.len() {
            0 => {}
            1 => {
                let sent = self.in_flight.values().next().expect("one in flight").sent_ms;
                if now_ms.saturating_sub(sent) < self.cfg.hedge_after_ms {
                    return None;
                }
            }
            _ => return None,
        }
        let peer = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.claimed > our_tip
                    && !p.holds_unknown
                    && p.holds_from.max(1) <= our_tip + 1
                    && p.penalized_until_ms.is_none_or(|t| now_ms >= t)
                    && !self.in_flight.contains_key(id)
            })
            // Untried peers first (optimistically fast), then the fastest; ties
            // by the higher claim.
            .max_by(|(_, a), (_, b)| {
                let score = |p: &PeerSync| p.rate().unwrap_or(f64::INFINITY);
                score(a).total_cmp(&score(b)).then(a.claimed.cmp(&b.claimed))
            })
            .map(|(id, _)| *id)?;
        let request = Request { peer, from: our_tip + 1, count: self.cfg.batch };
        let claimed = self.peers.get(&peer).map_or(0, |p| p.claimed);
        self.in_flight.insert(peer, InFlight { request, sent_ms: now_ms, claimed });
        self.unheld_reported = false;
        Some(request)
    }

    /// The answer to the request in flight to `peer`.
    pub(crate) fn handle_response(&mut self, peer: NodeId, outcome: Outcome, now_ms: u64) -> Verdict {
        let Some(InFlight { request, sent_ms: sent, claimed }) = self.in_flight.remove(&peer) else {
            return Verdict { failure: None, first_of_its_kind: false };
        };
        let p = self.peers.entry(peer).or_default();
        p.busy_ms += now_ms.saturating_sub(sent);
        let failure = match outcome {
            Outcome::Failed(f) => Some(f),
            Outcome::Blocks { invalid: true, .. } => Some(Failure::Invalid),
            Outcome::Blocks { blocks: 0, .. } => Some(Failure::Empty),
            Outcome::Blocks { blocks, bytes, applied, .. } => {
                p.delivered += applied as u64;
                let last = request.from + blocks as u64 - 1;
                let short = (blocks as u32) < request.count && bytes < self.cfg.full_bytes;
                (short && claimed > last).then_some(Failure::Drip)
            }
        };
        let Some(f) = failure else {
            return Verdict { failure: None, first_of_its_kind: false };
        };
        p.penalized_until_ms = Some(now_ms.saturating_add(self.cfg.penalty_ms));
        p.claimed = 0;
        self.failures[f.index()] += 1;
        Verdict { failure: Some(f), first_of_its_kind: self.reported.insert((peer, f)) }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last_ms: u64,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: f64, now_ms: u64) -> Self {
        TokenBucket { tokens: burst, last_ms: now_ms, rate, burst }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The bytes of answers a peer may be served per second (`rate`), with at
/// most `burst` saved up, paced rather than refused: before an answer is made
/// the most it may hold is reserved, and what it did not use is handed back
/// once it is written ([`ServeBudget::settle`]), so a peer asking for small
/// answers is never held back by the large ones it could have asked for. An
/// answer whose reservation is not covered yet waits until it is, up to
/// `max_wait_ms`; one that would wait longer is refused. Reservations in
/// flight count (a peer has up to `ANSWERS_PER_PEER` answers made at once),
/// so over any time `t` a peer is served at most `burst + rate * t` bytes plus
/// what its answers in flight hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeBudget {
    /// May go below zero by reservations waiting for their turn.
    tokens: f64,
    last_ms: u64,
    rate: f64,
    burst: f64,
}

impl ServeBudget {
    /// A full budget.
    pub(crate) fn new(rate: f64, burst: f64, now_ms: u64) -> Self {
        ServeBudget { tokens: burst, last_ms: now_ms, rate, burst }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Reserves `bytes`: how long the answer must wait before it is made (0
    /// when the budget covers it now), or `None`, reserving nothing, when it
    /// would wait longer than `max_wait_ms`.
    pub(crate) fn reserve(&mut self, bytes: usize, max_wait_ms: u64, now_ms: u64) -> Option<u64> {
        self.refill(now_ms);
        let short = bytes as f64 - self.tokens;
        let wait_ms = if short <= 0.0 { 0 } else { (short * 1000.0 / self.rate).ceil() as u64 };
        if wait_ms > max_wait_ms {
            return None;
        }
        self.tokens -= bytes as f64;
        Some(wait_ms)
    }

    /// An answer reserved as `reserved` bytes took `used`: the difference is
    /// handed back (or taken, for an answer larger than its reservation).
    pub(crate) fn settle(&mut self, reserved: usize, used: usize) {
        self.tokens = (self.tokens + reserved as f64 - used as f64).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn planner() -> SyncPlanner {
        SyncPlanner::new(SyncConfig::default())
    }

    /// A peer that holds every block (as one that never prunes).
    fn claim(s: &mut SyncPlanner, peer: NodeId, height: Height, now_ms: u64) {
        s.handle_claim(peer, height, now_ms);
    }

    #[test]
    fn a_peer_never_announced_as_saying_what_it_holds_holds_every_block() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        s.handle_claim(id(1), 10, t);
        assert_eq!(s.poll_request(0, t).map(|r| r.peer), Some(id(1)));
    }

    #[test]
    fn a_peer_is_asked_only_for_heights_it_holds_and_not_before_it_said() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        s.handle_holds_unknown(id(1));
        s.handle_claim(id(1), 5_000, t);
        assert_eq!(s.poll_request(0, t), None, "a peer at wire 4 that has not said what it holds");
        s.handle_holds(id(1), 4_000);
        s.handle_claim(id(2), 4_500, t);
        s.handle_holds(id(2), 1);
        let r = s.poll_request(0, t).unwrap();
        assert_eq!(r.peer, id(2), "the pruned peer holds nothing from height 1");
        s.handle_response(id(2), Outcome::Blocks { blocks: 64, bytes: FULL, applied: 64, invalid: false }, t + 10);
        let r = s.poll_request(3_999, t + 20).unwrap();
        assert_eq!((r.peer, r.from), (id(1), 4_000), "untried, and it holds 4000 on");
        s.handle_down(id(1));
        s.handle_holds_unknown(id(1));
        s.handle_claim(id(1), 5_000, t + 30);
        assert_eq!(s.poll_request(4_600, t + 30), None, "after a reconnect, it says again");
    }

    #[test]
    fn when_no_peer_holds_the_next_height_it_is_said_once_until_a_request_can_be_made() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        s.handle_holds_unknown(id(1));
        s.handle_claim(id(1), 5_000, t);
        assert_eq!(s.poll_unheld(0, t), None, "not while a peer has not said what it holds");
        s.handle_holds(id(1), 4_000);
        s.handle_claim(id(2), 5_000, t);
        s.handle_holds(id(2), 4_200);
        assert_eq!(s.poll_request(0, t), None);
        assert_eq!(s.poll_unheld(0, t), None, "not at once: the peer that holds it may connect next");
        assert_eq!(s.poll_unheld(0, t + 9_999), None);
        assert_eq!(s.poll_unheld(0, t + 10_000), Some(4_000), "the lowest any peer holds");
        assert_eq!(s.poll_unheld(0, t + 20_000), None, "once");
        s.handle_holds(id(2), 1);
        assert_eq!(s.poll_unheld(0, t + 20_000), None, "a peer holds it now");
        assert!(s.poll_request(0, t + 20_000).is_some());
        s.handle_response(id(2), Outcome::Failed(Failure::Timeout), t + 20_010);
        assert_eq!(s.poll_unheld(0, t + 20_010), None, "a new episode");
        assert_eq!(s.poll_unheld(0, t + 30_010), Some(4_000), "said again");
    }

    const FULL: usize = 3 * 1024 * 1024;

    #[test]
    fn nothing_to_ask_when_no_peer_claims_more() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 10, t);
        assert_eq!(s.poll_request(10, t), None);
        assert_eq!(s.poll_request(9, t), Some(Request { peer: id(1), from: 10, count: 64 }));
    }

    #[test]
    fn one_request_at_a_time_until_it_is_slow_then_a_hedge_to_another_peer() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 100, t);
        claim(&mut s, id(2), 100, t);
        let first = s.poll_request(0, t).unwrap();
        assert_eq!(s.poll_request(0, t + 999), None);
        let hedge = s.poll_request(0, t + 1_000).unwrap();
        assert_ne!(hedge.peer, first.peer);
        assert_eq!(hedge.from, first.from, "the same blocks");
        assert_eq!(s.poll_request(0, t + 5_000), None, "two at most");
    }

    #[test]
    fn a_dripping_peer_is_dropped_and_the_next_is_asked_at_once() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 1_000_000, t); // the liar claims the most
        claim(&mut s, id(2), 500, t);
        let r = s.poll_request(0, t).unwrap();
        assert_eq!(r.peer, id(1), "untried, and the highest claim");
        let t1 = t + 9_900;
        let v = s.handle_response(id(1), Outcome::Blocks { blocks: 1, bytes: 400, applied: 1, invalid: false }, t1);
        assert_eq!(v, Verdict { failure: Some(Failure::Drip), first_of_its_kind: true });
        assert_eq!(s.poll_request(1, t1).unwrap().peer, id(2));
        // Its claims are ignored while it is penalized.
        claim(&mut s, id(1), 2_000_000, t1);
        assert_eq!(s.best_claim(t1), 500);
        assert_eq!(s.failures()[4], 1);
    }

    #[test]
    fn a_claim_of_a_peer_that_never_says_what_it_holds_is_not_the_best() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 60, t);
        s.handle_holds_unknown(id(1));
        claim(&mut s, id(2), 12, t);
        assert_eq!(s.best_claim(t), 12, "a tip it would never be asked for");
        assert_eq!(s.poll_request(11, t).map(|r| r.peer), Some(id(2)));
        s.handle_holds(id(1), 1);
        assert_eq!(s.best_claim(t), 60, "once it says what it holds");
    }

    #[test]
    fn a_short_answer_is_not_a_drip_when_the_peer_reached_its_tip_or_the_byte_budget() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 5, t);
        s.poll_request(0, t).unwrap();
        let v = s.handle_response(id(1), Outcome::Blocks { blocks: 5, bytes: 900, applied: 5, invalid: false }, t);
        assert_eq!(v.failure, None, "all it claimed");
        claim(&mut s, id(1), 100, t);
        s.poll_request(5, t).unwrap();
        let v = s.handle_response(id(1), Outcome::Blocks { blocks: 3, bytes: FULL, applied: 3, invalid: false }, t);
        assert_eq!(v.failure, None, "three big blocks fill the budget");
    }

    #[test]
    fn a_holds_handed_over_before_its_connection_still_counts() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 50, t);
        s.handle_down(id(1));
        // The new connection's Holds comes first, then its PeerUp.
        s.handle_holds(id(1), 1);
        s.handle_holds_unknown(id(1));
        claim(&mut s, id(1), 50, t);
        assert_eq!(s.poll_request(10, t).map(|r| r.peer), Some(id(1)), "it said what it holds");
        // Down again: what it said went with the connection.
        s.handle_down(id(1));
        s.handle_holds_unknown(id(1));
        claim(&mut s, id(1), 50, t);
        assert_eq!(s.poll_request(10, t), None, "not asked until it says again");
    }

    #[test]
    fn a_tip_that_overtakes_the_answer_does_not_make_it_a_drip() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 300, t);
        let r = s.poll_request(290, t).unwrap();
        // The peer serves heights 291..=300, the ten it had stored; its next
        // block is stored and announced while the answer is on its way.
        claim(&mut s, id(1), 301, t + 5);
        let v = s.handle_response(
            r.peer,
            Outcome::Blocks { blocks: 10, bytes: 16_000, applied: 10, invalid: false },
            t + 9,
        );
        assert_eq!(v.failure, None, "all it claimed when it was asked");
        // What it claimed when asked, it must send.
        claim(&mut s, id(1), 400, t + 10);
        assert_eq!(s.poll_request(300, t + 10).map(|r| r.from), Some(301));
        let v =
            s.handle_response(id(1), Outcome::Blocks { blocks: 1, bytes: 1_600, applied: 1, invalid: false }, t + 20);
        assert_eq!(v.failure, Some(Failure::Drip));
    }

    #[test]
    fn the_fastest_deliverer_is_preferred_over_a_higher_claim() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 1000, t);
        claim(&mut s, id(2), 2000, t);
        // Both tried once: 1 fast, 2 slow (but not a drip: full answers).
        let a = s.poll_request(0, t).unwrap();
        s.handle_response(a.peer, Outcome::Blocks { blocks: 64, bytes: FULL, applied: 64, invalid: false }, t + 8_000);
        let b = s.poll_request(64, t + 8_000).unwrap();
        assert_ne!(a.peer, b.peer);
        s.handle_response(b.peer, Outcome::Blocks { blocks: 64, bytes: FULL, applied: 64, invalid: false }, t + 8_050);
        let next = s.poll_request(128, t + 9_000).unwrap();
        assert_eq!(next.peer, b.peer, "the one that answered in 50 ms");
    }

    #[test]
    fn failures_are_reported_once_per_peer_and_reason_and_counted_every_time() {
        let t: u64 = 1_000_000;
        let mut s = SyncPlanner::new(SyncConfig { penalty_ms: 0, ..SyncConfig::default() });
        for i in 0..3 {
            claim(&mut s, id(1), 10, t);
            s.poll_request(0, t).unwrap();
            let v = s.handle_response(id(1), Outcome::Failed(Failure::Timeout), t);
            assert_eq!(v.first_of_its_kind, i == 0);
        }
        claim(&mut s, id(1), 10, t);
        s.poll_request(0, t).unwrap();
        let v = s.handle_response(id(1), Outcome::Blocks { blocks: 2, bytes: 100, applied: 0, invalid: true }, t);
        assert_eq!(v, Verdict { failure: Some(Failure::Invalid), first_of_its_kind: true });
        assert_eq!(s.failures(), [3, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn an_answer_nobody_waits_for_changes_nothing() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        let v = s.handle_response(id(9), Outcome::Failed(Failure::Timeout), t);
        assert_eq!(v.failure, None);
        assert_eq!(s.failures(), [0; 6]);
    }

    #[test]
    fn a_disconnected_peer_is_neither_asked_nor_waited_for() {
        let t: u64 = 1_000_000;
        let mut s = planner();
        claim(&mut s, id(1), 10, t);
        s.poll_request(0, t).unwrap();
        s.handle_down(id(1));
        assert!(!s.busy());
        assert_eq!(s.poll_request(0, t), None);
    }

    #[test]
    fn failures_are_listed_in_their_own_order() {
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }

    #[test]
    fn a_serve_budget_paces_large_answers_refuses_past_its_wait_and_hands_back_what_small_ones_left() {
        let t: u64 = 1_000_000;
        const MIB: usize = 1024 * 1024;
        let mut b = ServeBudget::new(8.0 * MIB as f64, 16.0 * MIB as f64, t);
        // Five full answers of 3 MiB are covered at once; each one after waits
        // for its 3 MiB at 8 MiB/s, after those before it, up to 2 s.
        let waits: Vec<u64> = std::iter::from_fn(|| b.reserve(3 * MIB, 2_000, t)).collect();
        assert_eq!(waits, [0, 0, 0, 0, 0, 250, 625, 1_000, 1_375, 1_750]);
        assert_eq!(b.reserve(3 * MIB, 2_000, t), None, "past the longest wait: refused, nothing reserved");
        assert_eq!(b.reserve(3 * MIB, 2_000, t + 1_000), Some(1_125), "8 MiB more a second later");
        // Small answers hand back what they did not use: never held back.
        let mut small = ServeBudget::new(8.0 * MIB as f64, 16.0 * MIB as f64, t);
        for i in 0..1_000 {
            assert_eq!(small.reserve(3 * MIB, 2_000, t), Some(0), "answer {i}");
            small.settle(3 * MIB, 1_000);
        }
        // An answer larger than its reservation (one block over the budget
        // travels alone) is charged in full.
        let mut big = ServeBudget::new(8.0 * MIB as f64, 16.0 * MIB as f64, t);
        big.reserve(3 * MIB, 2_000, t);
        big.settle(3 * MIB, 16 * MIB);
        assert_eq!(big.reserve(MIB, 2_000, t), Some(125));
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let t: u64 = 1_000_000;
        let mut b = TokenBucket::new(10.0, 20.0, t);
        assert_eq!((0..25).filter(|_| b.take(t)).count(), 20);
        assert!(!b.take(t));
        assert!(b.take(t + 100), "one token after 100 ms at 10/s");
        assert!(!b.take(t + 100));
        assert_eq!((0..100).filter(|_| b.take(t + 60_000)).count(), 20, "never more than the burst");
    }
}
