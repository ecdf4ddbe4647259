//! The quorum rule, in one place: the producer's gate, `/status`, metrics and the
//! service status all use [`quorum`].

use serde::{Deserialize, Serialize};

/// Whether enough masternodes are connected to make progress.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quorum {
    pub active: usize,
    pub required: usize,
    pub met: bool,
}

/// `required = max(min_active, floor(2n/3) + 1)` of `members`; met while `active`
/// (this node and its connected peers) reaches it.
pub fn quorum(active: usize, members: usize, min_active: usize) -> Quorum {
    let required = crate::config::required_active(members, min_active);
    Quorum { active, required, met: active >= required }
}

#[cfg(test)]
mod tests {
    use super::*;

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
