//! Resources as invariants: what a driver holds of what peers sent, held to the
//! budgets the node documents (README, "Hardening"), after every input.
//!
//! The driver reports each structure (`Driver::held`, the numbers
//! `masternode_held_bytes{what}` shows) in items and bytes; the budgets here
//! are written out from the documented rules, not read from the library's
//! constants, so that a change of a bound in the library shows as a breach
//! here. `n` is the size of the set in force at the height being decided, `m`
//! the members the chain names besides this node (the set in force and the
//! next), `p` the peers its transport is handed (those `m` and `bootstrap`),
//! `r` the current round.
//!
//! | structure | items | bytes |
//! |---|---|---|
//! | compact proposals being fetched | 4 | 4 × (a compact proposal of `max_block_txs` ids + its slots + min(`max_block_bytes`, `mempool_max_bytes`)): an assembly waiting holds only what the mempool had, each transaction once, and never more than a block |
//! | the largest rebuild of a compact proposal, at any moment | 1 | one of the compact proposals being fetched: a rebuild stops before it copies past a block |
//! | compact proposals kept for later rounds | 8 | 8 compact proposals |
//! | `GetTxs` in flight | 4 | 4 requests of `max_block_txs` ids |
//! | approvals waiting for a block | 8 per member of the sets in force and next | as many approvals |
//! | votes of the height | (r + 1 + 64) rounds × n voters × 6 (a prevote, a precommit, two conflicting of each), and of one voter in one round and kind 3 | 256 each |
//! | proposals of the height | r + 1 + 64 | four of the largest block in all |
//! | the next height's buffer | 9 rounds × (a proposal + 2 votes per member) | 8 MiB |
//! | clock readings | p | 1 KiB each (a bounded window of readings) |
//! | what is kept per peer | p | 1 KiB each, and 64 KiB of misbehaviour reports |
//! | the mempool | its local share `max - max/2`, each member's `max/2/m`, in transactions and bytes | |
//!
//! And a rate: requests served to one peer (`GetBlocks`, `GetTxs`, the
//! echo), at most `sync_requests_per_sec` a second with bursts of twice that.

use std::collections::BTreeMap;

use masternode::chain::Held;
use masternode::chain::Source;

use super::core_api::*;
use super::plan::SimLimits;

/// Documented constants, as the README states them.
const FETCHING: usize = 4;
const LATER: usize = 8;
const APPROVALS_PER_APPROVER: usize = 8;
const ROUNDS_AHEAD: u64 = 64;
/// A voter's prevote and precommit in a round, and two conflicting versions of each.
const VOTES_PER_VOTER_ROUND: usize = 6;
/// One voter's votes of one kind in one round: its first and two conflicting.
const VOTES_PER_VOTER_ROUND_KIND: usize = 3;
const VOTE_BYTES: usize = 256;
const NEXT_HEIGHT_ROUNDS: usize = 9;
const NEXT_HEIGHT_BYTES: usize = 8 * 1024 * 1024;
const APPROVALS_PER_BLOCK: usize = 64;
/// The current height's proposals, in bytes: four of the largest block.
const PROPOSALS_HELD_BLOCKS: usize = 4;
/// A member's clock readings (a few dozen bytes each, a bounded window).
const CLOCK_BYTES_PER_MEMBER: usize = 1024;
/// What the driver keeps per peer: buckets, last heard, wire version, sync entries.
const PEER_STATE_BYTES_PER_MEMBER: usize = 1024;
/// The misbehaviour reports remembered, over all peers (`MAX_REPORTED`).
const REPORTS_BYTES: usize = 1024 * 64;

fn compact_bytes(max_txs: usize) -> usize {
    std::mem::size_of::<CompactProposal>()
        + max_txs * std::mem::size_of::<Hash>()
        + APPROVALS_PER_BLOCK * std::mem::size_of::<SignedApproval>()
}

/// A rebuild's table of positions: a slot per id, and the missing ids' map
/// (at most twice their number in capacity).
fn slots_bytes(max_txs: usize) -> usize {
    max_txs * (std::mem::size_of::<Option<Vec<u8>>>() + 2 * (std::mem::size_of::<(Hash, usize)>() + 1))
}

/// One compact proposal being rebuilt or fetched: its ids, its table of
/// positions, and what it placed from the mempool, each transaction once and
/// never more than a block.
fn assembly_bytes(limits: &SimLimits) -> usize {
    let block = limits.block;
    let placed = block.max_block_bytes.min(limits.node.mempool.max_bytes);
    compact_bytes(block.max_block_txs) + slots_bytes(block.max_block_txs) + placed
}

/// A block's bytes as held: each transaction with its handle (`Bytes`) and the
/// allocator's rounding (at most 32 bytes more than a one-byte transaction),
/// its approvals and its header.
fn proposal_bytes(limits: &Limits) -> usize {
    limits.max_block_bytes
        + limits.max_block_txs * (std::mem::size_of::<bytes::Bytes>() + 32)
        + APPROVALS_PER_BLOCK * 256
        + 512
}

/// What `d` may hold now, structure by structure.
pub fn budget(what: Held, d: &Driver, limits: &SimLimits, bootstrap: &[NodeId]) -> Usage {
    let core = d.core();
    let h = core.height();
    let n = core.members_at(h).len();
    let block = limits.block;
    let rounds = core.round() as usize + 1 + ROUNDS_AHEAD as usize;
    match what {
        Held::CompactWaiting => Usage::new(FETCHING, FETCHING * assembly_bytes(limits)),
        // One rebuild at a time, within one block however many ids it names.
        Held::Rebuild => Usage::new(1, assembly_bytes(limits)),
        Held::CompactLater => Usage::new(LATER, LATER * compact_bytes(block.max_block_txs)),
        // One per proposer, a member of the sets the transport is handed.
        Held::CompactSigned => {
            let peers = handed(d, bootstrap);
            Usage::new(peers, peers * compact_bytes(block.max_block_txs))
        }
        Held::FetchRequests => Usage::new(FETCHING, FETCHING * (24 + block.max_block_txs * 32)),
        Held::Approvals => {
            let m = core.membership();
            let mut approvers = m.current().ids();
            approvers.extend(m.next().ids());
            approvers.sort();
            approvers.dedup();
            let items = APPROVALS_PER_APPROVER * approvers.len();
            let each = std::mem::size_of::<SignedApproval>() + std::mem::size_of::<(Change, NodeId)>();
            Usage::new(items, items * each)
        }
        Held::Votes => {
            let items = rounds * n * VOTES_PER_VOTER_ROUND;
            Usage::new(items, items * VOTE_BYTES)
        }
        Held::Proposals => Usage::new(rounds, PROPOSALS_HELD_BLOCKS * proposal_bytes(&block)),
        Held::NextHeight => {
            let next = core.members_at(h + 1).len();
            Usage::new(NEXT_HEIGHT_ROUNDS * (1 + 2 * next), NEXT_HEIGHT_BYTES)
        }
        // One entry per peer the transport is handed (the sets in force and
        // next, and `bootstrap`), in each per-peer map: a peer that left them
        // is forgotten at the block that made it leave.
        Held::Clock => {
            let peers = handed(d, bootstrap);
            Usage::new(peers, peers * CLOCK_BYTES_PER_MEMBER)
        }
        Held::PeerState => {
            let peers = handed(d, bootstrap);
            Usage::new(peers, peers * PEER_STATE_BYTES_PER_MEMBER + REPORTS_BYTES)
        }
        Held::SyncAnswers => Usage::default(),
    }
}

/// The peers besides `d` itself that its transport is handed: the chain's
/// sets in force and next, and `bootstrap`.
fn handed(d: &Driver, bootstrap: &[NodeId]) -> usize {
    let me = d.core().id();
    let mut peers: Vec<NodeId> = d.core().membership().reachable().into_iter().map(|(id, _)| id).collect();
    peers.extend_from_slice(bootstrap);
    peers.sort();
    peers.dedup();
    peers.retain(|id| *id != me);
    peers.len()
}

/// The first structure of `d` over its budget, described; the mempool's
/// shares of `ids` (every key a slot runs) included.
pub fn breach(d: &Driver, limits: &SimLimits, ids: &[NodeId], bootstrap: &[NodeId]) -> Option<String> {
    for what in Held::ALL {
        let (held, max) = (d.held(what), budget(what, d, limits, bootstrap));
        if held.items > max.items || held.bytes > max.bytes {
            return Some(format!(
                "{} holds {} items, {} bytes; its budget is {} items, {} bytes (height {}, round {})",
                what.as_str(),
                held.items,
                held.bytes,
                max.items,
                max.bytes,
                d.height(),
                d.core().round()
            ));
        }
    }
    let one_voter = d.core().most_votes_of_one_voter();
    if one_voter > VOTES_PER_VOTER_ROUND_KIND {
        return Some(format!(
            "votes holds {one_voter} votes of one voter in one round and kind; its budget is \
             {VOTES_PER_VOTER_ROUND_KIND} (height {}, round {})",
            d.height(),
            d.core().round()
        ));
    }
    let mempool = limits.node.mempool;
    let local = Usage::new(mempool.max_txs - mempool.max_txs / 2, mempool.max_bytes - mempool.max_bytes / 2);
    let held = d.mempool_share(Source::Local);
    if held.items > local.items || held.bytes > local.bytes {
        return Some(format!("the mempool's local share holds {held:?}, over {local:?}"));
    }
    let core = d.core();
    let m = core.membership();
    let mut named = m.current().ids();
    named.extend(m.next().ids());
    named.sort();
    named.dedup();
    named.retain(|id| *id != core.id());
    let others = named.len().max(1);
    let share = Usage::new(mempool.max_txs / 2 / others, mempool.max_bytes / 2 / others);
    for id in ids {
        let held = d.mempool_share(Source::Member(*id));
        if held.items > share.items || held.bytes > share.bytes {
            return Some(format!(
                "the mempool holds {held:?} from member {}, over its share {share:?} ({others} members named)",
                id.short()
            ));
        }
    }
    None
}

/// The requests a node serves each peer, held to its rate: a token bucket of
/// the documented rate and burst, kept by the simulation beside the driver's.
#[derive(Default)]
pub struct Served {
    /// (server slot, its epoch, requester) -> (tokens, last refill ms).
    buckets: BTreeMap<(usize, u64, NodeId), (f64, u64)>,
}

impl Served {
    /// Server `slot`'s transport no longer admits the keys `admitted` lacks:
    /// their buckets go, as the driver forgets a peer that leaves the sets
    /// (a member removed and added again starts with a full burst).
    pub fn forget(&mut self, slot: usize, admitted: &std::collections::BTreeSet<NodeId>) {
        self.buckets.retain(|(s, _, id), _| *s != slot || admitted.contains(id));
    }

    /// Server `slot` (at `epoch`) served a request of `requester` at `now_ms`:
    /// `false` when that is more than the rate allows.
    pub fn serve(&mut self, slot: usize, epoch: u64, requester: NodeId, now_ms: u64, per_sec: u32) -> bool {
        let rate = f64::from(per_sec);
        let burst = 2.0 * rate;
        let (tokens, last) = self.buckets.entry((slot, epoch, requester)).or_insert((burst, now_ms));
        *tokens = (*tokens + rate * now_ms.saturating_sub(*last) as f64 / 1000.0).min(burst);
        *last = now_ms;
        // A token of slack for the rounding of the driver's own bucket.
        *tokens -= 1.0;
        *tokens >= -1.0 - 1e-6
    }
}
