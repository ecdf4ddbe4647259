//! The quorum rules, in one place.
//!
//! Two numbers follow from the size `n` of the member set in force at a height:
//!
//! * **The vote threshold** ([`vote_threshold`]): `floor(2n/3) + 1`, more than
//!   two thirds of `n`. A polka, a commit certificate and an approved member
//!   change all need this many distinct members; any two such sets share an
//!   honest member as long as fewer than a third lie (Tendermint's `2f + 1` of
//!   `3f + 1`, rounded so that every `n` gets the bound).
//! * **The gate** ([`required_active`], [`quorum`]): `required = max(min_active,
//!   floor(2n/3) + 1)` masternodes connected, this node included, before the node
//!   proposes or advances rounds. Below the vote threshold a round could not
//!   finish anyway; `min_active` lets a network demand more (never fewer).
//!
//! The producer's gate, the consensus core, certificates, membership, `/status`,
//! metrics and the service status all use these functions.

use serde::{Deserialize, Serialize};

/// Whether enough masternodes are connected to make progress.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quorum {
    pub active: usize,
    pub required: usize,
    pub met: bool,
}

/// Votes that decide among `n` members: more than two thirds, `floor(2n/3) + 1`.
pub fn vote_threshold(n: usize) -> usize {
    2 * n / 3 + 1
}

/// Masternodes that must be connected (this node included) among `n` members
/// for the network to make progress: `max(min_active, floor(2n/3) + 1)`.
pub(crate) fn required_active(n: usize, min_active: usize) -> usize {
    min_active.max(vote_threshold(n))
}

/// The gate of `members` with `active` connected (this node and its connected
/// peers that are members): met while `active` reaches [`required_active`].
pub(crate) fn quorum(active: usize, members: usize, min_active: usize) -> Quorum {
    let required = required_active(members, min_active);
    Quorum { active, required, met: active >= required }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vote_threshold_is_more_than_two_thirds() {
        for (n, want) in [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (10, 7), (100, 67)] {
            assert_eq!(vote_threshold(n), want, "n={n}");
            assert!(3 * vote_threshold(n) > 2 * n, "n={n}: more than two thirds");
            assert!(3 * (vote_threshold(n) - 1) <= 2 * n, "n={n}: the least such count");
        }
    }

    #[test]
    fn required_follows_the_formula() {
        for (n, min, want) in
            [(1, 3, 3), (3, 3, 3), (4, 3, 3), (5, 3, 4), (6, 3, 5), (7, 3, 5), (10, 3, 7), (4, 1, 3), (2, 1, 2)]
        {
            assert_eq!(required_active(n, min), want, "n={n} min_active={min}");
        }
    }

    #[test]
    fn boundaries_of_the_quorum() {
        // (members, min_active, active, met)
        let table = [
            (3, 3, 2, false),
            (3, 3, 3, true),
            (4, 3, 2, false),
            (4, 3, 3, true),
            (7, 3, 4, false),
            (7, 3, 5, true),
            (7, 6, 5, false),
            (7, 6, 6, true),
            (1, 1, 1, true),
        ];
        for (n, min, active, met) in table {
            assert_eq!(quorum(active, n, min).met, met, "n={n} min_active={min} active={active}");
        }
        assert_eq!(quorum(3, 4, 3), Quorum { active: 3, required: 3, met: true });
    }
}
