//! Retention: how much of the chain a node keeps, without IO.
//!
//! A node configured with `retain_blocks = N` keeps the blocks and certificates
//! of its last `N` heights, the tip's included, and prunes those below
//! `tip - N + 1` in the background ([`prune_target`]); by default it keeps
//! everything. What a node needs to verify new blocks and to restart never lies
//! in old blocks: the membership the tip leaves, the signing record, the lock
//! and the tip itself are meta entries of the store, which are never pruned.
//!
//! Old blocks serve peers: a node that restarts after an outage, or starts on an
//! empty data dir, catches up from peers that hold the heights it lacks. Each
//! node tells its peers the earliest height it holds (`Holds`, wire 4), and the
//! sync planner asks only peers that hold the range. [`MIN_RETAIN_BLOCKS`] is the
//! floor: below it, a member that is away for a few minutes of fast blocks could
//! find no peer to catch up from.

use super::block::Height;

/// The fewest blocks `retain_blocks` may keep: a restart, an upgrade's stop or a
/// short outage of a peer spans fewer heights than this at any block interval
/// an operator runs, so every member can serve a peer that is a little behind.
pub const MIN_RETAIN_BLOCKS: u64 = 100;

/// Heights pruned in one store batch, at most: a pass over a long backlog (a
/// node that just turned retention on) is many short batches, never one that
/// holds the store's writer for long.
pub(crate) const PRUNE_BATCH: u64 = 1_000;

/// The lowest height to keep with `retain` blocks at `tip` (everything below it
/// is pruned), or `None` when nothing is to be pruned: retention off, or a
/// chain no longer than `retain`.
pub(crate) fn prune_target(tip: Height, retain: Option<u64>) -> Option<Height> {
    let retain = retain?.max(1);
    (tip > retain).then(|| tip - retain + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_its_last_retain_blocks_and_everything_without_retention() {
        for (tip, retain, keep_from, what) in [
            (10, None, None, "retention off keeps everything"),
            (100_000, None, None, "however long the chain"),
            (100, Some(100), None, "a chain of exactly retain blocks"),
            (101, Some(100), Some(2), "one block more: the first goes"),
            (5_000, Some(100), Some(4_901), "the last 100, the tip included"),
            (5, Some(0), Some(5), "never the tip"),
        ] {
            assert_eq!(prune_target(tip, retain), keep_from, "{what}");
        }
    }
}
