//! How far this node's wall clock is from its peers' clocks, from the readings
//! of their clocks that their tips carry. Pure: it takes the local time as an
//! argument.
//!
//! # Rule
//!
//! * After every commit a node tells its peers its new tip together with what
//!   its wall clock read when it sent it (`Message::Tip { time_ms, .. }`). On
//!   arrival, `time_ms - local_now_ms` is how far the sender's clock is ahead of
//!   ours, less the time the tip spent on its way: a few ms on a healthy
//!   network, more when it waited in a queue behind other traffic.
//! * Transit only ever lowers a reading, so of a member's last
//!   [`ClockConfig::readings`] readings (within `max_age_ms`) the largest is the
//!   least delayed one and counts as that member's sample (NTP keeps the sample
//!   of least delay for the same reason).
//! * The peers' clocks are ahead of ours by the median of the members' samples
//!   (of an even count, the middle one nearer zero); our offset is its negation:
//!   positive when our clock is ahead of the peers'. The median lets a minority
//!   of members with wrong clocks (or lying ones) move the estimate only as far
//!   as an honest sample.
//! * A warning is due when |offset| exceeds `warn_over_ms`, once, and the
//!   all-clear when it falls to `clear_under_ms`; the gap between the two keeps
//!   an offset hovering around the threshold from logging a line per block.
//!
//! Tips are readings of clocks, unlike block timestamps: a proposer whose clock
//! is behind its parent's timestamp stamps `parent + 1 ms`, so once a member
//! whose clock is ahead has proposed, the blocks after it say nothing of their
//! proposers' clocks. Tips tell a node whose clock is ahead that it is, as well
//! as one whose clock is behind.

use std::collections::{BTreeMap, VecDeque};

use crate::identity::NodeId;

/// Thresholds of the estimator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockConfig {
    /// Readings kept per member; the largest of them is its sample.
    pub readings: usize,
    /// A reading is forgotten after this long.
    pub max_age_ms: u64,
    /// Warn when |offset| is above this.
    pub warn_over_ms: u64,
    /// After a warning, the all-clear once |offset| is at most this.
    pub clear_under_ms: u64,
    /// An estimate needs recent readings from at least this many members: one
    /// peer alone (perhaps the one whose clock is off) says little.
    pub min_peers: usize,
}

impl Default for ClockConfig {
    /// A member's last 8 tips, the last 5 minutes of them (a stalled chain
    /// sends no tips, and an estimate from long ago says little).
    fn default() -> Self {
        ClockConfig { readings: 8, max_age_ms: 300_000, warn_over_ms: 1_000, clear_under_ms: 750, min_peers: 1 }
    }
}

/// The readings an estimate needs in a member set of `members`: `2f + 1`, with
/// `f = (members - 1) / 3` the members that may lie or have wrong clocks. Then
/// the `f` can never be half of the samples, so the median (and either middle
/// sample of an even count) lies between two honest ones: they can neither make
/// an honest node believe its clock is off nor hide that it is. A majority of
/// the peers is not enough: at four members, one liar is one of two.
pub(crate) fn min_peers_for(members: usize) -> usize {
    2 * (members.saturating_sub(1) / 3) + 1
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockEvent {
    /// The offset went over the warning threshold.
    Off { offset_ms: i64, peers: usize },
    /// Back under the all-clear threshold after a warning.
    Back { offset_ms: i64, peers: usize },
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The member's clock minus ours, in ms, less the transit.
    ahead_ms: i64,
    /// Local time of the reading.
    at_ms: u64,
}

#[derive(Debug)]
pub(crate) struct ClockEstimator {
    cfg: ClockConfig,
    readings: BTreeMap<NodeId, VecDeque<Reading>>,
    warned: bool,
}

impl ClockEstimator {
    pub(crate) fn new(cfg: ClockConfig) -> Self {
        ClockEstimator {
            cfg: ClockConfig { readings: cfg.readings.max(1), ..cfg },
            readings: BTreeMap::new(),
            warned: false,
        }
    }

    /// A tip from `from`, sent when its clock read `time_ms`, arrived at
    /// `now_ms`. Returns a warning or an all-clear when the estimate crossed a
    /// threshold.
    pub(crate) fn handle_tip(&mut self, from: NodeId, time_ms: u64, now_ms: u64) -> Option<ClockEvent> {
        // Any u64 a peer sends fits once clamped: a lie of centuries is one
        // sample, and the median caps what it does.
        let ahead_ms = (i128::from(time_ms) - i128::from(now_ms)).clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        let keep = self.cfg.readings;
        let q = self.readings.entry(from).or_default();
        if q.len() == keep {
            q.pop_front();
        }
        q.push_back(Reading { ahead_ms, at_ms: now_ms });
        self.poll_event(now_ms)
    }

    /// How many members an estimate needs, as the set grows or shrinks.
    pub(crate) fn set_min_peers(&mut self, n: usize) {
        self.cfg.min_peers = n;
    }

    /// Forgets a member that left the set.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.readings.retain(|id, _| keep(id));
    }

    /// Readings kept of `member` (tests).
    #[cfg(test)]
    pub(crate) fn readings_of(&self, member: &NodeId) -> usize {
        self.readings.get(member).map_or(0, VecDeque::len)
    }

    /// Members with readings kept.
    pub(crate) fn members(&self) -> usize {
        self.readings.len()
    }

    /// About the bytes the readings hold: at most [`ClockConfig::readings`]
    /// per member the chain names (the caller samples only those).
    pub(crate) fn bytes(&self) -> usize {
        self.readings
            .values()
            .map(|q| std::mem::size_of::<(NodeId, VecDeque<Reading>)>() + q.capacity() * std::mem::size_of::<Reading>())
            .sum()
    }

    /// Our offset from the peers' clocks in ms (positive: ours is ahead), or
    /// `None` without recent readings from enough members.
    pub(crate) fn offset_ms(&self, now_ms: u64) -> Option<i64> {
        let mut ahead: Vec<i64> = self.samples(now_ms).collect();
        if ahead.is_empty() || ahead.len() < self.cfg.min_peers {
            return None;
        }
        ahead.sort_unstable();
        let mid = ahead.len() / 2;
        let median = if ahead.len() % 2 == 1 { ahead[mid] } else { nearer_zero(ahead[mid - 1], ahead[mid]) };
        Some(median.saturating_neg())
    }

    /// Members with a recent reading (0 while there are too few for an estimate).
    pub(crate) fn peers(&self, now_ms: u64) -> usize {
        let n = self.samples(now_ms).count();
        if n < self.cfg.min_peers {
            0
        } else {
            n
        }
    }

    /// Whether the last event was a warning (the offset is still off).
    #[cfg(test)]
    fn off(&self) -> bool {
        self.warned
    }

    /// Each member's sample: the largest of its recent readings.
    fn samples(&self, now_ms: u64) -> impl Iterator<Item = i64> + '_ {
        self.readings.values().filter_map(move |q| {
            q.iter().filter(|r| now_ms.saturating_sub(r.at_ms) <= self.cfg.max_age_ms).map(|r| r.ahead_ms).max()
        })
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

    fn id(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn estimator() -> ClockEstimator {
        ClockEstimator::new(ClockConfig::default())
    }

    /// One tip from each member `i + 1`, whose clock reads `ahead[i]` ms ahead
    /// of ours when it arrives, 1 s apart from `start_ms`.
    fn feed(c: &mut ClockEstimator, start_ms: u64, ahead: &[i64]) -> Vec<ClockEvent> {
        let mut events = vec![];
        for (i, a) in ahead.iter().enumerate() {
            let now = start_ms + 1_000 * i as u64;
            events.extend(c.handle_tip(id(i as u8 + 1), (now as i64 + a) as u64, now));
        }
        events
    }

    #[test]
    fn offset_is_minus_the_median_of_what_peers_are_ahead() {
        // (what each peer's clock is ahead of ours in ms, our offset)
        let table: [(&[i64], Option<i64>); 10] = [
            (&[], None),
            (&[300], Some(-300)),
            (&[-2_000, -2_010, -1_990], Some(2_000)),
            // Ours is 20 s ahead of all three peers.
            (&[-20_000, -19_990, -20_010], Some(20_000)),
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
    fn of_a_members_readings_the_least_delayed_counts() {
        let mut c = estimator();
        // The member's clock is 500 ms ahead; its tips spend 2 ms, 900 ms (a
        // queue behind a burst of transactions) and 5 ms on the way.
        for (i, transit) in [2, 900, 5].into_iter().enumerate() {
            let now = 10_000 + 1_000 * i as u64;
            c.handle_tip(id(1), now + 500 - transit, now);
        }
        assert_eq!(c.offset_ms(12_000), Some(-498));
    }

    #[test]
    fn readings_are_replaced_by_newer_ones_and_expire() {
        let mut c = estimator();
        c.handle_tip(id(1), 97_000, 100_000);
        assert_eq!(c.offset_ms(100_000), Some(3_000));
        // The member fixed its clock: after `readings` more tips the old one is gone.
        for i in 1..=8u64 {
            let now = 100_000 + i * 1_000;
            c.handle_tip(id(1), now + 20, now);
        }
        assert_eq!(c.offset_ms(108_000), Some(-20));
        assert_eq!(c.peers(108_000), 1);
        // Five minutes without a tip from it: no estimate.
        assert_eq!(c.offset_ms(108_000 + 300_001), None);
        assert_eq!(c.peers(108_000 + 300_001), 0);
    }

    #[test]
    fn warns_once_and_clears_once_with_a_gap_between() {
        let mut c = ClockEstimator::new(ClockConfig { readings: 1, ..ClockConfig::default() });
        let mut t = 100_000;
        let mut step = |c: &mut ClockEstimator, ahead: i64| {
            t += 1_000;
            c.handle_tip(id(1), (t as i64 + ahead) as u64, t)
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
    fn one_peer_alone_makes_no_estimate_when_more_are_required() {
        let mut c = ClockEstimator::new(ClockConfig { min_peers: 2, ..ClockConfig::default() });
        c.handle_tip(id(1), 30_000, 10_000);
        assert_eq!(c.offset_ms(10_000), None, "the one peer might be the one that is off");
        assert_eq!(c.peers(10_000), 0);
        c.handle_tip(id(2), 10_010, 10_000);
        assert_eq!(c.offset_ms(10_000), Some(-10), "two peers: the one nearer zero");
    }

    #[test]
    fn any_time_a_lying_peer_sends_is_one_sample_and_no_overflow() {
        let mut c = estimator();
        c.handle_tip(id(1), u64::MAX, 5);
        c.handle_tip(id(2), 0, u64::MAX);
        c.handle_tip(id(3), 1_000, 1_000);
        assert_eq!(c.offset_ms(1_000), Some(0), "the honest member is the median");
        let mut alone = estimator();
        alone.handle_tip(id(1), 0, u64::MAX);
        assert_eq!(alone.offset_ms(u64::MAX), Some(i64::MAX), "saturates instead of overflowing");
    }

    #[test]
    fn an_estimate_needs_twice_the_liars_plus_one() {
        for (members, need) in [(1, 1), (3, 1), (4, 3), (5, 3), (6, 3), (7, 5), (10, 7), (100, 67)] {
            assert_eq!(min_peers_for(members), need, "{members} members");
            let f = (members - 1) / 3;
            assert!(f < need - f, "{members} members: the {f} liars are fewer than the other samples");
        }
    }

    /// At four members one lying peer of the two that answer decided the
    /// estimate with a majority rule (two of three peers); it needs all three.
    #[test]
    fn one_liar_of_four_members_cannot_hide_a_wrong_clock() {
        let mut c = ClockEstimator::new(ClockConfig { min_peers: min_peers_for(4), ..ClockConfig::default() });
        // Our clock is 5 s behind: the two honest peers read 5 s ahead; the
        // liar claims to agree with us. With only it and one honest peer
        // heard, no estimate is made rather than an estimate of 0.
        assert!(feed(&mut c, 1_000, &[0, 5_000]).is_empty());
        assert_eq!(c.offset_ms(2_000), None, "two of three peers are not enough");
        let events = feed(&mut c, 3_000, &[0, 5_000, 5_000]);
        assert_eq!(events, vec![ClockEvent::Off { offset_ms: -5_000, peers: 3 }]);
    }

    #[test]
    fn a_member_that_left_is_forgotten() {
        let mut c = estimator();
        c.handle_tip(id(1), 40_000, 10_000);
        c.retain(|m| *m != id(1));
        assert_eq!(c.offset_ms(10_000), None);
    }
}
