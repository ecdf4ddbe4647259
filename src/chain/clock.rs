//! How far this node's wall clock is from its peers' clocks, from the timestamps
//! their proposals carry. Pure: it takes the local time as an argument.
//!
//! # Rule
//!
//! * A proposer stamps its block with its own clock (`header.timestamp_ms`).
//!   When a member's proposal for our current height and round arrives while
//!   that round is fresh here (entered at most `fresh_within_ms` ago), the
//!   sample `timestamp_ms - local_now_ms` is how far that member's clock is
//!   ahead of ours (less the one-way delay, a few ms on a healthy network).
//! * Only a block proposed in that very round by the member that sent it counts:
//!   a re-proposal (`valid_round` set) carries the block of an older round and
//!   its older time. One sample per member and round (a rebroadcast is not a new
//!   reading); the last sample per member is kept, for `max_age_ms`.
//! * The peers' clocks are ahead of ours by the median of those samples (of an even count, the middle one nearer zero); our
//!   offset is its negation: positive when our clock is ahead of the peers'.
//!   The median lets a minority of members with wrong clocks (or lying ones)
//!   move the estimate only as far as an honest sample.
//! * A warning is due when |offset| exceeds `warn_over_ms`, once, and the
//!   all-clear when it falls to `clear_under_ms`; the gap between the two keeps
//!   an offset hovering around the threshold from logging a line per block.
//!
//! # Caveats
//!
//! * A proposer whose clock is behind its parent block's timestamp stamps the
//!   block `parent + 1 ms` instead of its clock (timestamps must increase), so a
//!   member far behind the others reads as less behind than it is. The median
//!   over peers keeps that from moving our estimate as long as most clocks are
//!   right.
//! * A proposal sent again (after a peer reconnects, or when no block came for
//!   a while) carries the time it was first made. The freshness window bounds
//!   how stale such a sample can be, and a sample per member is replaced by the
//!   next one.

use std::collections::BTreeMap;

use super::block::{Height, Round};
use super::vote::Proposal;
use crate::identity::NodeId;

/// Thresholds of the estimator.
#[derive(Debug, Clone, Copy)]
pub struct ClockConfig {
    /// A proposal counts only if it arrives within this long of entering its
    /// round here.
    pub fresh_within_ms: u64,
    /// A member's sample is forgotten after this long.
    pub max_age_ms: u64,
    /// Warn when |offset| is above this.
    pub warn_over_ms: u64,
    /// After a warning, the all-clear once |offset| is at most this.
    pub clear_under_ms: u64,
    /// An estimate needs recent samples from at least this many members: one
    /// peer alone (perhaps the one whose clock is off) says little.
    pub min_peers: usize,
}

impl ClockConfig {
    /// For a network with `block_interval_ms` between heights: round 0's
    /// proposal comes about one interval after the commit that opened the
    /// height, so twice that (at least 2 s) is fresh; a rebroadcast of an
    /// unanswered proposal comes after three intervals (at least 3 s).
    pub fn for_interval(block_interval_ms: u64) -> Self {
        ClockConfig {
            fresh_within_ms: 2 * block_interval_ms.max(1_000),
            max_age_ms: 300_000,
            warn_over_ms: 1_000,
            clear_under_ms: 750,
            min_peers: 1,
        }
    }
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockEvent {
    /// The offset went over the warning threshold.
    Off { offset_ms: i64, peers: usize },
    /// Back under the all-clear threshold after a warning.
    Back { offset_ms: i64, peers: usize },
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The member's clock minus ours, in ms.
    ahead_ms: i64,
    /// Local time of the sample.
    at_ms: u64,
    height: Height,
    round: Round,
}

#[derive(Debug)]
pub struct ClockEstimator {
    cfg: ClockConfig,
    samples: BTreeMap<NodeId, Sample>,
    /// Our current height and round, and the local time we entered it.
    round: Option<(Height, Round, u64)>,
    /// The parent block's timestamp at the current height.
    parent_ms: Option<u64>,
    warned: bool,
}

impl ClockEstimator {
    pub fn new(cfg: ClockConfig) -> Self {
        ClockEstimator { cfg, samples: BTreeMap::new(), round: None, parent_ms: None, warned: false }
    }

    /// Our consensus position now; a change of height or round restarts the
    /// freshness window.
    pub fn handle_round(&mut self, height: Height, round: Round, now_ms: u64) {
        if self.round.is_none_or(|(h, r, _)| (h, r) != (height, round)) {
            self.round = Some((height, round, now_ms));
        }
    }

    /// A proposal from `from` arrived at `now_ms`. Returns a warning or an
    /// all-clear when the estimate crossed a threshold.
    /// The parent's timestamp at the current height. A proposal stamped one
    /// millisecond after it was stamped so because its proposer's clock read
    /// less than the parent's (the parent came from a clock ahead of it): that is
    /// no reading of the proposer's clock and is not sampled.
    pub fn handle_parent(&mut self, parent_ms: u64) {
        self.parent_ms = Some(parent_ms);
    }

    pub fn handle_proposal(&mut self, from: NodeId, p: &Proposal, now_ms: u64) -> Option<ClockEvent> {
        let header = &p.block.header;
        if self.parent_ms.is_some_and(|parent| header.timestamp_ms == parent + 1) {
            return None;
        }
        let fresh_block = p.valid_round.is_none() && header.round == p.round && header.proposer == from;
        let (height, round, entered_ms) = self.round?;
        let current = p.proposer == from && p.height == height && p.round == round;
        if !fresh_block || !current || now_ms.saturating_sub(entered_ms) > self.cfg.fresh_within_ms {
            return None;
        }
        if self.samples.get(&from).is_some_and(|s| (s.height, s.round) == (height, round)) {
            return None;
        }
        let ahead_ms = header.timestamp_ms as i64 - now_ms as i64;
        self.samples.insert(from, Sample { ahead_ms, at_ms: now_ms, height, round });
        self.poll_event(now_ms)
    }

    /// Our offset from the peers' clocks in ms (positive: ours is ahead), or
    /// `None` with no recent sample.
    pub fn offset_ms(&self, now_ms: u64) -> Option<i64> {
        let mut ahead: Vec<i64> = self.recent(now_ms).map(|s| s.ahead_ms).collect();
        if ahead.is_empty() || ahead.len() < self.cfg.min_peers {
            return None;
        }
        ahead.sort_unstable();
        let mid = ahead.len() / 2;
        let median = if ahead.len() % 2 == 1 { ahead[mid] } else { nearer_zero(ahead[mid - 1], ahead[mid]) };
        Some(-median)
    }

    /// Members with a recent sample (0 while there are too few for an estimate).
    pub fn peers(&self, now_ms: u64) -> usize {
        let n = self.recent(now_ms).count();
        if n < self.cfg.min_peers {
            0
        } else {
            n
        }
    }

    /// Whether the last event was a warning (the offset is still off).
    pub fn off(&self) -> bool {
        self.warned
    }

    fn recent(&self, now_ms: u64) -> impl Iterator<Item = &Sample> {
        self.samples.values().filter(move |s| now_ms.saturating_sub(s.at_ms) <= self.cfg.max_age_ms)
    }

    fn poll_event(&mut self, now_ms: u64) -> Option<ClockEvent> {
        let offset_ms = self.offset_ms(now_ms)?;
        let peers = self.peers(now_ms);
        let size = offset_ms.unsigned_abs();
        if !self.warned && size > self.cfg.warn_over_ms {
            self.warned = true;
            return Some(ClockEvent::Off { offset_ms, peers });
        }
        if self.warned && size <= self.cfg.clear_under_ms {
            self.warned = false;
            return Some(ClockEvent::Back { offset_ms, peers });
        }
        None
    }
}

/// Of the two middle samples of an even count, the one that says less: 0 when
/// they disagree in sign, else the smaller in size. Half the peers alone then
/// never make a warning (with two samples, one of them a wrong clock, the mean
/// would put every honest node half-way to the wrong one).
fn nearer_zero(a: i64, b: i64) -> i64 {
    if (a < 0) != (b < 0) {
        0
    } else if a.abs() <= b.abs() {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{Block, Hash, Header};

    fn id(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn proposal(from: u8, height: Height, round: Round, timestamp_ms: u64) -> Proposal {
        Proposal {
            height,
            round,
            block: Block {
                header: Header {
                    height,
                    round,
                    prev_hash: Hash([0; 32]),
                    timestamp_ms,
                    proposer: id(from),
                    tx_root: Hash([0; 32]),
                    changes: vec![],
                },
                txs: vec![],
            },
            valid_round: None,
            proposer: id(from),
        }
    }

    fn estimator() -> ClockEstimator {
        ClockEstimator::new(ClockConfig::for_interval(1_000))
    }

    /// Feeds one proposal per member `i + 1` whose clock is `ahead[i]` ms ahead
    /// of ours, each at its own height (round-robin proposers), 1 s apart.
    fn feed(c: &mut ClockEstimator, start_ms: u64, ahead: &[i64]) -> Vec<ClockEvent> {
        let mut events = vec![];
        for (i, a) in ahead.iter().enumerate() {
            let now = start_ms + 1_000 * i as u64;
            let height = now / 1_000;
            c.handle_round(height, 0, now - 500);
            let ts = (now as i64 + a) as u64;
            events.extend(c.handle_proposal(id(i as u8 + 1), &proposal(i as u8 + 1, height, 0, ts), now));
        }
        events
    }

    #[test]
    fn offset_is_minus_the_median_of_what_peers_are_ahead() {
        // (what each peer's clock is ahead of ours in ms, our offset)
        let table: [(&[i64], Option<i64>); 9] = [
            (&[], None),
            (&[300], Some(-300)),
            (&[-2_000, -2_010, -1_990], Some(2_000)),
            // One member far off does not move the median.
            (&[10, -5, 60_000], Some(-10)),
            // An even count takes whichever middle sample says less.
            (&[0, 100, 200, 10_000], Some(-100)),
            (&[-40, -20], Some(20)),
            (&[-30, 50], Some(0)),
            // Two peers, one of them 20 s ahead: that one alone makes no offset.
            (&[1, 20_000], Some(-1)),
            (&[-20_000, -1], Some(1)),
        ];
        for (ahead, want) in table {
            let mut c = estimator();
            feed(&mut c, 100_000, ahead);
            assert_eq!(c.offset_ms(100_000 + 1_000 * ahead.len() as u64), want, "peers ahead by {ahead:?}");
        }
    }

    #[test]
    fn only_fresh_proposals_of_the_current_round_count() {
        let now = 50_000;
        // (what, the proposal, who sent it, our height, round and when we entered it)
        type Case = (&'static str, Proposal, NodeId, (Height, Round, u64));
        let cases: [Case; 6] = [
            ("another height", proposal(1, 8, 0, now + 5_000), id(1), (7, 0, now - 100)),
            ("another round", proposal(1, 7, 1, now + 5_000), id(1), (7, 0, now - 100)),
            ("relayed by someone else", proposal(1, 7, 0, now + 5_000), id(2), (7, 0, now - 100)),
            ("long after the round began", proposal(1, 7, 0, now + 5_000), id(1), (7, 0, now - 2_001)),
            (
                "a re-proposal of an older round's block",
                Proposal { valid_round: Some(0), round: 1, ..proposal(1, 7, 0, now + 5_000) },
                id(1),
                (7, 1, now - 100),
            ),
            (
                "someone else's block",
                Proposal { proposer: id(2), ..proposal(1, 7, 0, now + 5_000) },
                id(2),
                (7, 0, now - 100),
            ),
        ];
        for (what, p, from, (h, r, entered)) in cases {
            let mut c = estimator();
            c.handle_round(h, r, entered);
            assert_eq!(c.handle_proposal(from, &p, now), None, "{what}");
            assert_eq!(c.offset_ms(now), None, "{what}: not a sample");
        }
        // The counterfactual: the same proposal, fresh and current, is one.
        let mut c = estimator();
        c.handle_round(7, 0, now - 100);
        c.handle_proposal(id(1), &proposal(1, 7, 0, now + 5_000), now);
        assert_eq!(c.offset_ms(now), Some(-5_000));
    }

    #[test]
    fn a_rebroadcast_is_not_a_new_reading() {
        let mut c = estimator();
        c.handle_round(7, 0, 10_000);
        let p = proposal(1, 7, 0, 10_500);
        c.handle_proposal(id(1), &p, 10_500);
        // The same proposal again 1.5 s later would read as a clock 1.5 s behind.
        c.handle_proposal(id(1), &p, 12_000);
        assert_eq!(c.offset_ms(12_000), Some(0));
    }

    #[test]
    fn the_latest_sample_per_member_counts_and_old_ones_expire() {
        let mut c = estimator();
        feed(&mut c, 100_000, &[-3_000]);
        assert_eq!(c.offset_ms(100_000), Some(3_000));
        // The member fixed its clock: its next proposal replaces the sample.
        feed(&mut c, 200_000, &[20]);
        assert_eq!(c.offset_ms(200_000), Some(-20));
        assert_eq!(c.peers(200_000), 1);
        // Five minutes without a proposal from it: no estimate.
        assert_eq!(c.offset_ms(200_000 + 300_001), None);
    }

    #[test]
    fn warns_once_and_clears_once_with_a_gap_between() {
        let mut c = estimator();
        let mut t = 100_000;
        let mut step = |c: &mut ClockEstimator, ahead: i64| {
            t += 1_000;
            c.handle_round(t / 1_000, 0, t - 500);
            c.handle_proposal(id(1), &proposal(1, t / 1_000, 0, (t as i64 + ahead) as u64), t)
        };
        assert_eq!(step(&mut c, -900), None, "under a second");
        assert_eq!(step(&mut c, -1_200), Some(ClockEvent::Off { offset_ms: 1_200, peers: 1 }));
        assert!(c.off());
        assert_eq!(step(&mut c, -1_500), None, "warned once");
        assert_eq!(step(&mut c, -900), None, "not yet clear: between the thresholds");
        assert_eq!(step(&mut c, -1_100), None, "still the same episode");
        assert_eq!(step(&mut c, -100), Some(ClockEvent::Back { offset_ms: 100, peers: 1 }));
        assert_eq!(step(&mut c, 1_300), Some(ClockEvent::Off { offset_ms: -1_300, peers: 1 }), "behind counts too");
    }

    #[test]
    fn a_timestamp_pulled_up_to_the_parents_is_no_clock_reading() {
        let mut c = ClockEstimator::new(ClockConfig::for_interval(1_000));
        c.handle_round(7, 0, 10_000);
        c.handle_parent(30_000);
        // Our clock reads 10 s; the parent says 30 s (a clock ahead made it): the
        // proposer, whose clock reads less, stamps 30.001 s.
        assert_eq!(c.handle_proposal(id(1), &proposal(1, 7, 0, 30_001), 10_100), None);
        assert_eq!(c.offset_ms(10_100), None, "nothing learnt from it");
    }

    #[test]
    fn one_peer_alone_makes_no_estimate_when_more_are_required() {
        let mut cfg = ClockConfig::for_interval(1_000);
        cfg.min_peers = 2;
        let mut c = ClockEstimator::new(cfg);
        c.handle_round(7, 0, 10_000);
        c.handle_proposal(id(1), &proposal(1, 7, 0, 30_000), 10_000);
        assert_eq!(c.offset_ms(10_000), None, "the one peer might be the one that is off");
        assert_eq!(c.peers(10_000), 0);
    }
}
