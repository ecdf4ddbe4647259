//! The chain's protocol versions: which validity and voting rules apply at a
//! height. A block's version is `Membership::version_at(height)`: version 3
//! ([`super::members::GENESIS_VERSION`]) from genesis, later ones from the height
//! an approved upgrade plan names. A rule that changes what is valid or what an
//! honest member votes for is tied to a version here, never switched on by a
//! release alone: nodes of the previous release keep validating the chain as
//! they always did until the chain activates the version, and a node whose
//! binary does not know a scheduled version stops at its height.
//!
//! # Version 4
//!
//! * **Distinct transactions.** A block's transactions are pairwise distinct
//!   (by [`super::block::tx_hash`]). Before version 4 a repeated transaction is
//!   valid (a compact proposal that repeats an id is refused as local policy
//!   either way, see [`super::compact`]).
//! * **Timely proposals** (proposer-based timestamps, as CometBFT's PBTS): a
//!   member prevotes a fresh proposal (no valid round) only if its block's
//!   timestamp is within [`Synchrony`] of the time the proposal reached it:
//!   `received - precision - delay(round) <= timestamp <= received + precision`.
//!   A proposer stamps its own clock, so the timestamps of the chain stay within
//!   the honest members' clocks, whatever a member whose clock is off (or that
//!   lies) stamps: its proposal gets no polka from the honest ones and its round
//!   passes to the next proposer. A re-proposed value (L28) is not checked
//!   again: it was timely where it got its polka.
//! * **Member-state commitment.** A block's `prev_hash` is the parent link
//!   ([`super::block::parent_link`]): SHA-256 over the parent's id and the
//!   digest of the membership state the parent leaves
//!   ([`super::block::members_digest`]: the sets in force at this
//!   height and the next, the approvals pending, the schedule). The encoding is
//!   unchanged; the id of every block of version 4 commits to the member state
//!   it was decided under, so a node that starts from a trusted `(height, id)`
//!   verifies the member state a peer gives it instead of trusting it
//!   ([`super::checkpoint`]).

use super::block::Round;

/// The highest protocol version this binary can run. A node that reaches the
/// height of a plan for a higher version stops there ([`super::upgrade`]).
/// Rehearsals of an upgrade may set another for a node (test builds only,
/// `MASTERNODE_TEST_MAX_PROTOCOL`); versions above this one, which no release
/// defines yet, then have [`Rules::of`] this one's rules.
pub const MAX_VERSION: u16 = 4;

/// The version that brings distinct transactions and timely proposals.
pub(crate) const V4: u16 = 4;

/// What the rules of one protocol version are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    pub distinct_txs: bool,
    pub timely_proposals: bool,
    /// `prev_hash` commits to the parent's member state ([`super::block::parent_link`]).
    pub members_link: bool,
}

impl Rules {
    pub(crate) fn of(version: u16) -> Rules {
        Rules { distinct_txs: version >= V4, timely_proposals: version >= V4, members_link: version >= V4 }
    }
}

/// How far a timely proposal's timestamp may be from the time it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synchrony {
    /// How far honest clocks may be apart: the node warns of its own clock at
    /// one second off.
    pub precision_ms: u64,
    /// How long a proposal may take to arrive in round 0: the network, and a
    /// compact proposal's fetch of what the mempool lacks (up to two block
    /// intervals).
    pub delay_ms: u64,
    /// Added to `delay_ms` per round, so that a round succeeds once its delay
    /// outgrows the network's, as the timeouts grow for the same reason.
    pub delay_per_round_ms: u64,
}

impl Synchrony {
    pub(crate) fn for_interval(block_interval_ms: u64) -> Synchrony {
        Synchrony {
            precision_ms: 1_000,
            delay_ms: (3 * block_interval_ms).max(3_000),
            delay_per_round_ms: block_interval_ms.max(500),
        }
    }

    /// Whether a block stamped `timestamp_ms`, proposed fresh in `round`, that
    /// arrived at `received_ms`, is timely.
    pub(crate) fn timely(&self, timestamp_ms: u64, received_ms: u64, round: Round) -> bool {
        let delay = self.delay_ms.saturating_add(self.delay_per_round_ms.saturating_mul(round as u64));
        let earliest = received_ms.saturating_sub(self.precision_ms.saturating_add(delay));
        let latest = received_ms.saturating_add(self.precision_ms);
        (earliest..=latest).contains(&timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_4_brings_distinct_transactions_and_timely_proposals() {
        assert_eq!(Rules::of(3), Rules { distinct_txs: false, timely_proposals: false, members_link: false });
        assert_eq!(Rules::of(4), Rules { distinct_txs: true, timely_proposals: true, members_link: true });
        assert_eq!(Rules::of(MAX_VERSION), Rules::of(V4));
    }

    #[test]
    fn a_timely_timestamp_is_within_precision_ahead_and_precision_plus_delay_behind() {
        let s = Synchrony { precision_ms: 1_000, delay_ms: 3_000, delay_per_round_ms: 500 };
        let at = 100_000;
        // (timestamp, round, timely)
        for (ts, round, want) in [
            (at, 0, true),
            (at + 1_000, 0, true),
            (at + 1_001, 0, false),
            (at - 4_000, 0, true),
            (at - 4_001, 0, false),
            (at - 4_001, 1, true),
            (at - 4_500, 1, true),
            (at - 4_501, 1, false),
            (at + 1_001, 5, false),
            (at - 30_000, 0, false),
            (at + 30_000, 0, false),
        ] {
            assert_eq!(s.timely(ts, at, round), want, "timestamp {ts} round {round}");
        }
        assert!(s.timely(0, 10, 0), "near the epoch nothing underflows");
        assert!(!s.timely(u64::MAX, 10, u32::MAX), "nothing overflows");
    }
}
