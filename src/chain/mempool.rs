//! Transactions waiting for a block, held per source with a bounded share each.
//!
//! - **Sources.** A transaction's source is whoever delivered it here: this
//!   node's own clients (`POST /tx`, `Node::submit`: the local share), or the
//!   member whose gossip brought it. A node gossips its own clients'
//!   transactions to every peer and never relays gossiped ones (the producer
//!   only adds those), so the member whose gossip delivered a transaction is the
//!   member that took it in. Gossip from a peer the chain does not name never
//!   reaches the pool.
//! - **Shares.** The local share may hold half of the pool's limits (rounded
//!   up), in count and in bytes, whatever the members send. The other half is
//!   split equally between the `m` members the chain names, this node aside:
//!   each may hold `floor(max_txs / 2 / m)` transactions and
//!   `floor(max_bytes / 2 / m)` bytes (with the defaults and four members,
//!   8,333 transactions and 10.7 MiB each). A source over its share has its own
//!   transaction refused ([`AddError::Full`]), never another's; a member
//!   without a share has a share of zero.
//! - **One copy.** Transactions are deduplicated by hash across the shares: one
//!   already held from any source is not held again.
//! - **Expiry.** A transaction still here [`TX_TTL_HEIGHTS`] heights after it
//!   arrived is dropped when that block commits.
//! - **Order.** A proposer takes from the shares by deficit round robin over
//!   bytes ([`Mempool::take`]), each share oldest first: every source with
//!   transactions waiting gets an equal share of the block's bytes, and what one
//!   leaves unused goes to the others.
//! - **Leaving.** A committed transaction leaves whichever share holds it. When
//!   a member leaves the set its share goes, with what it held; when the set
//!   grows, a share over its new bound drops its newest transactions down to it.
//! - **Committed lately.** The ids of the transactions committed in the last
//!   [`COMMITTED_HEIGHTS`] heights, at most `max_txs` of them (the newest), are
//!   remembered with their block's height, and a transaction with one of
//!   those ids is refused from every source ([`AddError::Committed`]): a copy
//!   gossiped late, sent again, or submitted again by a client never re-enters
//!   the pool, so no honest proposer commits it twice within that window. The
//!   record is filled where the pool is emptied, in [`Mempool::handle_commit`],
//!   so what the pool holds is never in it. A lying proposer can still put an
//!   old transaction in its own block (the chain's rules do not forbid it; a
//!   transaction that must not apply twice carries its own nonce), and its
//!   blocks of many small transactions push older ids out of the record
//!   sooner: the window is the shorter of the two bounds.
//!
//! Pure: no clock and no IO; heights and the member set come in with
//! [`Mempool::handle_commit`] and [`Mempool::set_members`]. Owned by the
//! producer's driver ([`super::driver`]), which adds what the admin API submits
//! and what peers gossip, takes for its proposals and removes what is
//! committed; nobody else touches it, so it needs no lock (status and metrics
//! read the figures the producer publishes).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use super::block::{tx_hash, Hash, Height};
use crate::identity::NodeId;

/// Heights a transaction may wait before it is dropped. Long enough that what
/// the shares admit is committed under fair service: the slowest to drain is a
/// full local share while every share is full, `(max_bytes / 2) /
/// (max_block_bytes / shares)` heights, 10.7 per share with the defaults, so 600
/// heights cover a set of 56 members. Short enough that what no proposer takes
/// (a member's gossip to a node that does not propose) leaves within ten
/// minutes of one-second blocks.
pub(crate) const TX_TTL_HEIGHTS: Height = 600;

/// Heights a committed transaction's id is remembered, and refused, for (at
/// most `max_txs` ids, the newest). As long as a transaction may wait in a
/// pool: a client that retries for ten minutes of one-second blocks, or a
/// member's gossip held that long behind a slow link, is still told that the
/// transaction is committed.
pub(crate) const COMMITTED_HEIGHTS: Height = TX_TTL_HEIGHTS;

/// What the record of committed ids takes with the default `max_txs`
/// (50,000 ids), allocated at the first commit of a transaction: a map of
/// 131,072 buckets of 41 B (room for twice the ids, so that the tombstones of
/// forgotten ids never make it grow) and a queue of 50,001 slots of 40 B, 148
/// B an id (docs/security.md's budget table).
#[cfg(test)]
const COMMITTED_BYTES_AT_DEFAULTS: usize = 131_072 * 41 + 50_001 * 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolLimits {
    pub max_txs: usize,
    pub max_bytes: usize,
    pub max_tx_bytes: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        MempoolLimits { max_txs: 50_000, max_bytes: 64 * 1024 * 1024, max_tx_bytes: 64 * 1024 }
    }
}

/// What one share may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShareLimits {
    pub txs: usize,
    pub bytes: usize,
}

impl MempoolLimits {
    /// The local share: half the pool, rounded up.
    pub(crate) fn local_share(&self) -> ShareLimits {
        ShareLimits { txs: self.max_txs - self.max_txs / 2, bytes: self.max_bytes - self.max_bytes / 2 }
    }

    /// Each member's share when the chain names `members` besides this node:
    /// the other half of the pool, split equally.
    pub(crate) fn member_share(&self, members: usize) -> ShareLimits {
        let m = members.max(1);
        ShareLimits { txs: self.max_txs / 2 / m, bytes: self.max_bytes / 2 / m }
    }
}

/// Who delivered a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// This node's own clients.
    Local,
    /// The member whose gossip brought it.
    Member(NodeId),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local => f.write_str("the local share"),
            Source::Member(id) => write!(f, "member {}'s share", id.short()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("transaction of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("transaction is empty")]
    Empty,
    /// The source's own share is full (a member the chain does not name has a
    /// share of zero).
    #[error("{share} of the mempool is full ({txs} of {max_txs} transactions, {bytes} of {max_bytes} bytes)")]
    Full { share: Source, txs: usize, bytes: usize, max_txs: usize, max_bytes: usize },
    /// A block of the last [`COMMITTED_HEIGHTS`] heights committed it.
    #[error("transaction {id} is already committed, in the block at height {height}")]
    Committed { id: Hash, height: Height },
}

/// Bytes held, by kind of share (for `masternode_held_bytes{what}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByShare {
    pub local: usize,
    pub members: usize,
}

/// What the pool refused and dropped since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Transactions refused because their source's share was full.
    pub refused_local: u64,
    pub refused_members: u64,
    /// Dropped after [`TX_TTL_HEIGHTS`] heights.
    pub expired: u64,
    /// Dropped with the share of a member that left the set.
    pub member_left: u64,
    /// Dropped from a share the set's growth made smaller.
    pub trimmed: u64,
    /// Refused as committed lately ([`AddError::Committed`]), from this
    /// node's clients and from members' gossip.
    pub committed_local: u64,
    pub committed_members: u64,
}

/// What the mempool holds and did, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    pub txs: usize,
    pub bytes: usize,
    /// For `masternode_held_bytes{what="mempool_local"|"mempool_members"}`.
    pub by_share: ByShare,
    pub counters: Counters,
    /// Ids of transactions committed lately, and the bytes their record takes
    /// (for `masternode_held_bytes{what="mempool_committed"}`).
    pub committed: usize,
    pub committed_bytes: usize,
}

#[derive(Debug)]
pub struct Mempool {
    limits: MempoolLimits,
    txs: HashMap<Hash, Held>,
    /// Every share that holds something.
    shares: BTreeMap<Source, Share>,
    /// The members the chain names besides this node: those with a share.
    members: BTreeSet<NodeId>,
    member_share: ShareLimits,
    /// The committed tip: arrivals are stamped with it.
    height: Height,
    /// Arrival order over the whole pool.
    seq: u64,
    bytes: usize,
    counters: Counters,
    /// Ids committed lately: refused from every source.
    committed: Committed,
}

/// The ids of the transactions committed in the last [`COMMITTED_HEIGHTS`]
/// heights, the newest `max_ids` of them, with their block's height.
#[derive(Debug)]
struct Committed {
    heights: HashMap<Hash, Height>,
    /// Commit order, oldest first: what is forgotten first. An id committed
    /// again (by a lying proposer) is here twice, and `heights` holds the
    /// later height.
    order: VecDeque<(Height, Hash)>,
    max_ids: usize,
}

impl Committed {
    fn new(max_ids: usize) -> Self {
        Committed { heights: HashMap::new(), order: VecDeque::new(), max_ids }
    }

    fn height_of(&self, id: &Hash) -> Option<Height> {
        self.heights.get(id).copied()
    }

    /// Remembers `ids`, committed at `height`, and forgets what is past either
    /// bound at tip `tip`: ids committed [`COMMITTED_HEIGHTS`] or more heights
    /// before it, and the oldest beyond `max_ids`.
    fn handle_commit(&mut self, height: Height, ids: &[Hash], tip: Height) {
        if !ids.is_empty() && self.order.capacity() == 0 {
            // Room for twice the ids the map holds: the tombstones forgotten
            // ids leave are then cleared by rehashing in place, and the map
            // never grows past this.
            self.heights.reserve(2 * self.max_ids);
            self.order.reserve_exact(self.max_ids + 1);
        }
        for id in ids {
            self.heights.insert(*id, height);
            self.order.push_back((height, *id));
            if self.order.len() > self.max_ids {
                self.forget_oldest();
            }
        }
        let Some(cutoff) = tip.checked_sub(COMMITTED_HEIGHTS) else { return };
        while self.order.front().is_some_and(|(h, _)| *h <= cutoff) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some((height, id)) = self.order.pop_front() else { return };
        // An id committed again later stays until that commit is forgotten.
        if self.heights.get(&id) == Some(&height) {
            self.heights.remove(&id);
        }
    }

    fn len(&self) -> usize {
        self.heights.len()
    }

    /// What the two tables take once allocated: the map's buckets (a key, a
    /// height and a control byte each; a power of two, 8/7 of the room
    /// reserved) and the queue's slots.
    fn bytes(&self) -> usize {
        if self.order.capacity() == 0 {
            return 0;
        }
        let buckets = (2 * self.max_ids * 8 / 7).max(8).next_power_of_two();
        let bucket = std::mem::size_of::<(Hash, Height)>() + 1;
        buckets * bucket + self.order.capacity() * std::mem::size_of::<(Height, Hash)>()
    }
}

#[derive(Debug)]
struct Held {
    tx: Vec<u8>,
    source: Source,
    seq: u64,
    /// The tip when it arrived.
    arrived: Height,
}

type Oldest<'a> = std::iter::Peekable<std::collections::btree_map::Values<'a, u64, Hash>>;

#[derive(Debug, Default)]
struct Share {
    /// Arrival order.
    order: BTreeMap<u64, Hash>,
    bytes: usize,
}

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            txs: HashMap::new(),
            shares: BTreeMap::new(),
            members: BTreeSet::new(),
            member_share: limits.member_share(0),
            height: 0,
            seq: 0,
            bytes: 0,
            counters: Counters::default(),
            committed: Committed::new(limits.max_txs),
        }
    }

    pub(crate) fn limits(&self) -> MempoolLimits {
        self.limits
    }

    /// Adds a transaction from this node's own clients (the local share);
    /// `Ok((hash, false))` if it was already here, from any source.
    pub fn add(&mut self, tx: Vec<u8>) -> Result<(Hash, bool), AddError> {
        self.check_size(&tx)?;
        let hash = tx_hash(&tx);
        if self.txs.contains_key(&hash) {
            return Ok((hash, false));
        }
        self.check_committed(Source::Local, hash)?;
        self.check_room(Source::Local, tx.len())?;
        self.insert(Source::Local, hash, tx);
        Ok((hash, true))
    }

    /// Adds a transaction `from`'s gossip delivered, into its share. A full
    /// share refuses before hashing: a member flooding its share costs a
    /// length check per transaction.
    pub(crate) fn add_gossiped(&mut self, from: NodeId, tx: Vec<u8>) -> Result<(Hash, bool), AddError> {
        let source = Source::Member(from);
        self.check_size(&tx)?;
        self.check_room(source, tx.len())?;
        let hash = tx_hash(&tx);
        if self.txs.contains_key(&hash) {
            return Ok((hash, false));
        }
        self.check_committed(source, hash)?;
        self.insert(source, hash, tx);
        Ok((hash, true))
    }

    fn insert(&mut self, source: Source, hash: Hash, tx: Vec<u8>) {
        self.seq += 1;
        let share = self.shares.entry(source).or_default();
        share.order.insert(self.seq, hash);
        share.bytes += tx.len();
        self.bytes += tx.len();
        self.txs.insert(hash, Held { tx, source, seq: self.seq, arrived: self.height });
    }

    fn check_size(&self, tx: &[u8]) -> Result<(), AddError> {
        if tx.is_empty() {
            return Err(AddError::Empty);
        }
        if tx.len() > self.limits.max_tx_bytes {
            return Err(AddError::TooLarge { len: tx.len(), limit: self.limits.max_tx_bytes });
        }
        Ok(())
    }

    /// Whether `id` was committed lately; counts a refusal.
    fn check_committed(&mut self, source: Source, id: Hash) -> Result<(), AddError> {
        let Some(height) = self.committed.height_of(&id) else { return Ok(()) };
        match source {
            Source::Local => self.counters.committed_local += 1,
            Source::Member(_) => self.counters.committed_members += 1,
        }
        Err(AddError::Committed { id, height })
    }

    /// Whether `source`'s share has room for `len` more bytes; counts a refusal.
    fn check_room(&mut self, source: Source, len: usize) -> Result<(), AddError> {
        let limit = self.share_limits(source);
        let (txs, bytes) = self.shares.get(&source).map_or((0, 0), |s| (s.order.len(), s.bytes));
        if txs < limit.txs && bytes + len <= limit.bytes {
            return Ok(());
        }
        match source {
            Source::Local => self.counters.refused_local += 1,
            Source::Member(_) => self.counters.refused_members += 1,
        }
        Err(AddError::Full { share: source, txs, bytes, max_txs: limit.txs, max_bytes: limit.bytes })
    }

    /// What `source`'s share may hold now.
    pub(crate) fn share_limits(&self, source: Source) -> ShareLimits {
        match source {
            Source::Local => self.limits.local_share(),
            Source::Member(id) if self.members.contains(&id) => self.member_share,
            Source::Member(_) => ShareLimits { txs: 0, bytes: 0 },
        }
    }

    /// Transactions for a block of at most `max_txs` and `max_bytes`, left in
    /// the pool until they are committed: deficit round robin over the shares
    /// by bytes. Each round every share with transactions waiting is credited
    /// `max_tx_bytes` and sends its oldest ones while they fit its credit; a
    /// share that runs empty leaves the rotation (its credit with it), so what
    /// it leaves unused goes to the others; a share whose oldest transaction no
    /// longer fits in the block is done (oldest first within a share). Shares
    /// are served in `Source` order, starting at the tip's height modulo their
    /// number, so no source is always first.
    ///
    /// The transactions come with their ids, computed when they entered the
    /// pool: the proposer's root and compact proposal are built from them
    /// without hashing a transaction again.
    pub(crate) fn take_with_ids(&self, max_txs: usize, max_bytes: usize) -> (Vec<Hash>, Vec<Vec<u8>>) {
        // Each share's oldest first, and its credit.
        let mut queues: Vec<(Oldest<'_>, usize)> =
            self.shares.values().map(|s| (s.order.values().peekable(), 0)).collect();
        if queues.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let start = (self.height % queues.len() as u64) as usize;
        queues.rotate_left(start);
        let quantum = self.limits.max_tx_bytes.max(1);
        let (mut ids, mut out) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        while !queues.is_empty() {
            let mut i = 0;
            while i < queues.len() {
                let (queue, credit) = &mut queues[i];
                *credit += quantum;
                let done = loop {
                    let Some((id, tx)) = queue.peek().and_then(|h| self.txs.get(*h).map(|held| (**h, &held.tx))) else {
                        break true;
                    };
                    if out.len() >= max_txs {
                        return (ids, out);
                    }
                    if bytes + tx.len() > max_bytes {
                        break true;
                    }
                    if tx.len() > *credit {
                        break false;
                    }
                    *credit -= tx.len();
                    bytes += tx.len();
                    ids.push(id);
                    out.push(tx.clone());
                    queue.next();
                };
                if done {
                    drop(queues.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        (ids, out)
    }

    /// [`Self::take_with_ids`] without the ids.
    #[cfg(test)]
    pub(crate) fn take(&self, max_txs: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        self.take_with_ids(max_txs, max_bytes).1
    }

    /// The transactions with these ids, where this pool holds them, in order.
    #[cfg(test)]
    pub(crate) fn lookup(&self, ids: &[Hash]) -> Vec<Option<Vec<u8>>> {
        ids.iter().map(|id| self.txs.get(id).map(|h| h.tx.clone())).collect()
    }

    /// The transactions with these ids that this pool holds, in order, up to
    /// `max_bytes` of transaction bytes (a `GetTxs` answer within its frame).
    pub(crate) fn lookup_within(&self, ids: &[Hash], max_bytes: usize) -> Vec<Vec<u8>> {
        super::compact::within_bytes(ids.iter().filter_map(|id| self.txs.get(id).map(|h| &h.tx)), max_bytes)
    }

    /// The block at `height` committed with `txs`: they leave whatever share
    /// holds them and are refused from then on, for [`COMMITTED_HEIGHTS`]
    /// heights (the newest `max_txs` ids), and what arrived [`TX_TTL_HEIGHTS`]
    /// or more heights before expires. Also tells a new pool the tip it
    /// starts at (with no `txs`).
    pub(crate) fn handle_commit<T: AsRef<[u8]>>(&mut self, height: Height, txs: &[T]) {
        let ids: Vec<Hash> = txs.iter().map(|tx| tx_hash(tx.as_ref())).collect();
        self.handle_commit_ids(height, &ids);
    }

    /// [`Self::handle_commit`] for a block whose transactions' ids this node
    /// already computed (its own proposal, a rebuilt compact one): nothing is
    /// hashed again.
    pub(crate) fn handle_commit_ids(&mut self, height: Height, ids: &[Hash]) {
        self.height = self.height.max(height);
        for id in ids {
            self.remove(id);
        }
        self.committed.handle_commit(height, ids, self.height);
        let Some(cutoff) = self.height.checked_sub(TX_TTL_HEIGHTS) else { return };
        // Each share is in arrival order, and arrivals are stamped with a tip
        // that never goes back: the expired ones are at the front.
        let mut expired = Vec::new();
        for share in self.shares.values() {
            for hash in share.order.values() {
                match self.txs.get(hash) {
                    Some(held) if held.arrived <= cutoff => expired.push(*hash),
                    _ => break,
                }
            }
        }
        self.counters.expired += expired.len() as u64;
        for hash in &expired {
            self.remove(hash);
        }
    }

    /// The members the chain names besides this node (the sets in force and
    /// next): the shares of those that left go, and the shares are resized.
    pub(crate) fn set_members(&mut self, members: impl IntoIterator<Item = NodeId>) {
        let members: BTreeSet<NodeId> = members.into_iter().collect();
        if members == self.members {
            return;
        }
        for id in self.members.difference(&members).copied().collect::<Vec<_>>() {
            if let Some(share) = self.shares.remove(&Source::Member(id)) {
                self.counters.member_left += share.order.len() as u64;
                for hash in share.order.values() {
                    if let Some(held) = self.txs.remove(hash) {
                        self.bytes -= held.tx.len();
                    }
                }
            }
        }
        self.member_share = self.limits.member_share(members.len());
        self.members = members;
        let limit = self.member_share;
        let mut trimmed = Vec::new();
        for (source, share) in &self.shares {
            if *source == Source::Local {
                continue;
            }
            let (mut txs, mut bytes) = (share.order.len(), share.bytes);
            for hash in share.order.values().rev() {
                if txs <= limit.txs && bytes <= limit.bytes {
                    break;
                }
                txs -= 1;
                bytes -= self.txs.get(hash).map_or(0, |h| h.tx.len());
                trimmed.push(*hash);
            }
        }
        self.counters.trimmed += trimmed.len() as u64;
        for hash in &trimmed {
            self.remove(hash);
        }
    }

    fn remove(&mut self, hash: &Hash) {
        let Some(held) = self.txs.remove(hash) else { return };
        self.bytes -= held.tx.len();
        if let Some(share) = self.shares.get_mut(&held.source) {
            share.order.remove(&held.seq);
            share.bytes -= held.tx.len();
            if share.order.is_empty() {
                self.shares.remove(&held.source);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.txs.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes held in the local share and in the members' shares together.
    pub(crate) fn bytes_by_share(&self) -> ByShare {
        let local = self.shares.get(&Source::Local).map_or(0, |s| s.bytes);
        ByShare { local, members: self.bytes - local }
    }

    /// Transactions and bytes `source`'s share holds.
    pub(crate) fn held_by(&self, source: Source) -> (usize, usize) {
        self.shares.get(&source).map_or((0, 0), |s| (s.order.len(), s.bytes))
    }

    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// What the pool holds and did, for status and metrics.
    pub(crate) fn figures(&self) -> Figures {
        Figures {
            txs: self.len(),
            bytes: self.bytes(),
            by_share: self.bytes_by_share(),
            counters: self.counters(),
            committed: self.committed.len(),
            committed_bytes: self.committed.bytes(),
        }
    }

    /// The transactions with these ids, where this pool holds them, in order,
    /// refused the moment their bytes would pass `max_block_bytes` (a compact
    /// proposal rebuilt no larger than a block, see
    /// [`super::compact::place_within`]).
    pub fn lookup_within_block(
        &self,
        ids: &[Hash],
        max_block_bytes: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, super::compact::CompactError> {
        super::compact::place_within(ids, |id| self.txs.get(id).map(|h| &h.tx), max_block_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    /// A transaction of `len` bytes that says which source sent it: its first
    /// byte, and `k` to make it unique.
    fn tx(from: u8, k: u32, len: usize) -> Vec<u8> {
        let mut t = vec![from];
        t.extend_from_slice(&k.to_le_bytes());
        t.resize(len.max(5), 0xaa);
        t
    }

    /// Bytes of `taken` by first byte.
    fn bytes_from(taken: &[Vec<u8>], from: u8) -> usize {
        taken.iter().filter(|t| t[0] == from).map(Vec::len).sum()
    }

    const LOCAL: u8 = 0;

    fn small() -> MempoolLimits {
        MempoolLimits { max_txs: 20, max_bytes: 1_200, max_tx_bytes: 100 }
    }

    #[test]
    fn shares_are_half_the_pool_for_local_and_an_equal_split_of_the_rest_for_members() {
        let l = MempoolLimits::default();
        assert_eq!(l.local_share(), ShareLimits { txs: 25_000, bytes: 32 * 1024 * 1024 });
        assert_eq!(l.member_share(3), ShareLimits { txs: 8_333, bytes: 32 * 1024 * 1024 / 3 });
        let odd = MempoolLimits { max_txs: 5, max_bytes: 11, max_tx_bytes: 1 };
        assert_eq!(odd.local_share(), ShareLimits { txs: 3, bytes: 6 }, "the local half is rounded up");
        for m in 1..=64 {
            let s = l.member_share(m);
            assert!(l.local_share().txs + m * s.txs <= l.max_txs, "{m} members: count within the pool");
            assert!(l.local_share().bytes + m * s.bytes <= l.max_bytes, "{m} members: bytes within the pool");
        }
    }

    #[test]
    fn sizes_are_checked_for_every_source() {
        let mut m = Mempool::new(small());
        m.set_members([member(1)]);
        assert_eq!(m.add(vec![]), Err(AddError::Empty));
        assert_eq!(m.add(vec![2; 101]), Err(AddError::TooLarge { len: 101, limit: 100 }));
        assert_eq!(m.add_gossiped(member(1), vec![]), Err(AddError::Empty));
        assert_eq!(m.add_gossiped(member(1), vec![2; 101]), Err(AddError::TooLarge { len: 101, limit: 100 }));
        assert!(m.is_empty());
    }

    #[test]
    fn a_full_share_refuses_only_its_source() {
        let mut m = Mempool::new(small());
        m.set_members([member(1), member(2)]);
        // Each member: 20 / 2 / 2 = 5 transactions, 1200 / 2 / 2 = 300 bytes.
        for k in 0..5 {
            m.add_gossiped(member(1), tx(1, k, 10)).unwrap();
        }
        let refused = m.add_gossiped(member(1), tx(1, 9, 10));
        assert!(
            matches!(refused, Err(AddError::Full { share: Source::Member(id), txs: 5, max_txs: 5, .. }) if id == member(1)),
            "count bound: {refused:?}"
        );
        // The other member is untouched, and held to its own byte bound.
        for k in 0..3 {
            m.add_gossiped(member(2), tx(2, k, 100)).unwrap();
        }
        assert_eq!(m.held_by(Source::Member(member(2))), (3, 300), "exactly at the byte bound is within it");
        let refused = m.add_gossiped(member(2), tx(2, 3, 5));
        assert!(
            matches!(refused, Err(AddError::Full { txs: 3, bytes: 300, max_bytes: 300, .. })),
            "byte bound: {refused:?}"
        );
        // So is the local share: 10 transactions, 600 bytes.
        for k in 0..10 {
            m.add(tx(LOCAL, k, 10)).unwrap();
        }
        assert!(matches!(m.add(tx(LOCAL, 10, 10)), Err(AddError::Full { share: Source::Local, .. })));
        let c = m.counters();
        assert_eq!((c.refused_members, c.refused_local), (2, 1));
    }

    #[test]
    fn the_local_share_is_unaffected_by_a_member_flood() {
        let limits = MempoolLimits::default();
        let mut m = Mempool::new(limits);
        m.set_members([member(1), member(2), member(3)]);
        let mut k = 0;
        while m.add_gossiped(member(1), tx(1, k, 60 * 1024)).is_ok() {
            k += 1;
        }
        for more in 0..1_000 {
            assert!(m.add_gossiped(member(1), tx(1, k + 1 + more, 60 * 1024)).is_err(), "the flood stays refused");
        }
        let (_, flood_bytes) = m.held_by(Source::Member(member(1)));
        assert!(flood_bytes <= limits.member_share(3).bytes);
        let local = limits.local_share();
        for k in 0..local.txs as u32 {
            m.add(tx(LOCAL, k, 256)).unwrap_or_else(|e| panic!("local transaction {k}: {e}"));
        }
        assert!(m.add(tx(LOCAL, u32::MAX, 256)).is_err(), "until the local share's own bound");
        for k in 0..100 {
            m.add_gossiped(member(2), tx(2, k, 256)).unwrap();
        }
        let c = m.counters();
        assert_eq!((c.refused_members, c.refused_local), (1_001, 1));
        assert_eq!(m.bytes_by_share(), ByShare { local: local.txs * 256, members: flood_bytes + 100 * 256 });
    }

    #[test]
    fn a_transaction_is_held_once_across_shares() {
        let mut m = Mempool::new(small());
        m.set_members([member(1), member(2)]);
        let t = tx(9, 0, 50);
        let (h, new) = m.add(t.clone()).unwrap();
        assert!(new);
        assert_eq!(m.add(t.clone()).unwrap(), (h, false), "again from the same source");
        assert_eq!(m.add_gossiped(member(1), t.clone()).unwrap(), (h, false), "from a member after the local one");
        let u = tx(9, 1, 50);
        let (hu, _) = m.add_gossiped(member(2), u.clone()).unwrap();
        assert_eq!(m.add(u.clone()).unwrap(), (hu, false), "locally after a member");
        assert_eq!(m.add_gossiped(member(1), u).unwrap(), (hu, false), "from another member");
        assert_eq!((m.len(), m.bytes()), (2, 100));
        assert_eq!(m.held_by(Source::Member(member(1))), (0, 0), "nothing counted against the later source");
        assert_eq!(m.take(10, 1_000).len(), 2, "and proposed once");
    }

    #[test]
    fn transactions_expire_after_ttl_heights() {
        let mut m = Mempool::new(small());
        m.set_members([member(1)]);
        m.handle_commit_ids(10, &[]);
        m.add(tx(LOCAL, 0, 10)).unwrap();
        m.add_gossiped(member(1), tx(1, 0, 10)).unwrap();
        m.handle_commit_ids(11, &[]);
        m.add(tx(LOCAL, 1, 10)).unwrap();
        m.handle_commit_ids(10 + TX_TTL_HEIGHTS - 1, &[]);
        assert_eq!(m.len(), 3, "still within {TX_TTL_HEIGHTS} heights");
        m.handle_commit_ids(10 + TX_TTL_HEIGHTS, &[]);
        assert_eq!(m.lookup(&[tx_hash(&tx(LOCAL, 1, 10))]), vec![Some(tx(LOCAL, 1, 10))], "the later one stays");
        assert_eq!((m.len(), m.bytes(), m.counters().expired), (1, 10, 2));
        assert_eq!(m.held_by(Source::Member(member(1))), (0, 0));
        m.handle_commit_ids(11 + TX_TTL_HEIGHTS, &[]);
        assert!(m.is_empty());
        assert_eq!(m.counters().expired, 3);
    }

    /// A pool of the default limits where each of `sources` (first byte,
    /// transaction size) has 4 MiB waiting, or as much as its share holds (at
    /// least 2 MiB): more than its fair part of a 3 MiB block.
    fn backlogged(sources: &[(u8, usize)]) -> Mempool {
        let mut m = Mempool::new(MempoolLimits::default());
        m.set_members((1..=3).map(member));
        for &(from, len) in sources {
            for k in 0..(4 * 1024 * 1024 / len) as u32 {
                let added = match from {
                    LOCAL => m.add(tx(LOCAL, k, len)),
                    id => m.add_gossiped(member(id), tx(id, k, len)),
                };
                if added.is_err() {
                    break;
                }
            }
        }
        m
    }

    #[test]
    fn drr_by_bytes_gives_each_source_an_equal_byte_share() {
        let block = 3 * 1024 * 1024;
        let quantum = MempoolLimits::default().max_tx_bytes;
        for sources in [vec![(LOCAL, 256), (1, 60 * 1024)], vec![(1, 60 * 1024), (2, 256), (3, 1_000), (LOCAL, 40_000)]]
        {
            let m = backlogged(&sources);
            let taken = m.take(20_000, block);
            let total: usize = taken.iter().map(Vec::len).sum();
            assert!(total > block - quantum, "the block is full: {total} bytes");
            let fair = block / sources.len();
            for &(from, len) in &sources {
                let got = bytes_from(&taken, from);
                assert!(
                    got.abs_diff(fair) <= quantum + len,
                    "source {from} ({len} B each): {got} bytes of {total}, fair {fair}"
                );
            }
        }
    }

    #[test]
    fn drr_hands_what_a_source_leaves_unused_to_the_others() {
        let mut m = backlogged(&[(1, 60 * 1024), (2, 60 * 1024)]);
        for k in 0..10 {
            m.add(tx(LOCAL, k, 256)).unwrap();
        }
        let block = 3 * 1024 * 1024;
        let taken = m.take(20_000, block);
        assert_eq!(bytes_from(&taken, LOCAL), 2_560, "all of the small source's");
        let (one, two) = (bytes_from(&taken, 1), bytes_from(&taken, 2));
        assert!(one + two + 2_560 > block - 60 * 1024, "the rest of the block goes to the others: {one} + {two}");
        assert!(one.abs_diff(two) <= 64 * 1024, "evenly: {one} and {two}");
    }

    #[test]
    fn a_share_whose_oldest_does_not_fit_leaves_the_room_to_smaller_ones() {
        let mut m = Mempool::new(MempoolLimits::default());
        m.set_members([member(1)]);
        m.add_gossiped(member(1), tx(1, 0, 60 * 1024)).unwrap();
        m.add_gossiped(member(1), tx(1, 1, 100)).unwrap();
        for k in 0..100 {
            m.add(tx(LOCAL, k, 256)).unwrap();
        }
        let taken = m.take(20_000, 10_000);
        assert_eq!(bytes_from(&taken, 1), 0, "oldest first within a share: its small one waits behind its large one");
        assert_eq!(bytes_from(&taken, LOCAL), 9_984, "39 of the local ones fill the block");
    }

    #[test]
    fn take_is_deterministic_oldest_first_within_a_share_and_within_the_block_limits() {
        let a = backlogged(&[(LOCAL, 256), (1, 1_000), (2, 60 * 1024)]);
        let b = backlogged(&[(LOCAL, 256), (1, 1_000), (2, 60 * 1024)]);
        let taken = a.take(5_000, 3 * 1024 * 1024);
        assert_eq!(taken, b.take(5_000, 3 * 1024 * 1024));
        assert_eq!(taken.len(), 5_000, "the count limit");
        for from in [LOCAL, 1, 2] {
            let ks: Vec<u32> = taken
                .iter()
                .filter(|t| t[0] == from)
                .map(|t| u32::from_le_bytes(t[1..5].try_into().unwrap()))
                .collect();
            assert!(!ks.is_empty() && ks.iter().enumerate().all(|(i, k)| *k == i as u32), "source {from} in order");
        }
        let small = a.take(20_000, 1_000);
        assert!(small.iter().map(Vec::len).sum::<usize>() <= 1_000, "the byte limit");
    }

    #[test]
    fn the_first_share_served_turns_with_the_height() {
        let mut m = Mempool::new(MempoolLimits::default());
        m.set_members([member(1)]);
        m.add(tx(LOCAL, 0, 100)).unwrap();
        m.add_gossiped(member(1), tx(1, 0, 100)).unwrap();
        let firsts: Vec<u8> = (1..=4)
            .map(|h| {
                m.handle_commit_ids(h, &[]);
                m.take(1, 1_000)[0][0]
            })
            .collect();
        assert_eq!(firsts, [1, LOCAL, 1, LOCAL]);
    }

    #[test]
    fn committed_transactions_leave_whatever_share_holds_them() {
        let mut m = Mempool::new(small());
        m.set_members([member(1), member(2)]);
        let (l, a, b) = (tx(LOCAL, 0, 10), tx(1, 0, 20), tx(2, 0, 30));
        m.add(l.clone()).unwrap();
        m.add_gossiped(member(1), a.clone()).unwrap();
        m.add_gossiped(member(2), b.clone()).unwrap();
        m.handle_commit(1, &[a.clone(), l.clone(), tx(7, 7, 7)]);
        assert_eq!((m.len(), m.bytes()), (1, 30));
        assert_eq!(m.held_by(Source::Local), (0, 0));
        assert_eq!(m.held_by(Source::Member(member(1))), (0, 0));
        assert_eq!(m.take(10, 1_000), vec![b]);
        assert_eq!(m.counters(), Counters::default(), "committed is not dropped");
        // The room is free again.
        for k in 0..5 {
            m.add_gossiped(member(1), tx(1, 1 + k, 10)).unwrap();
        }
    }

    #[test]
    fn a_committed_transaction_is_refused_from_every_source_and_counted() {
        let mut m = Mempool::new(small());
        m.set_members([member(1), member(2)]);
        let (mine, theirs, synced) = (tx(LOCAL, 0, 10), tx(1, 0, 10), tx(2, 0, 10));
        m.add(mine.clone()).unwrap();
        m.add_gossiped(member(1), theirs.clone()).unwrap();
        // `synced` reaches this node only in the block, as a synced block does.
        m.handle_commit(7, &[mine.clone(), theirs.clone(), synced.clone()]);
        for t in [&mine, &theirs, &synced] {
            let committed = Err(AddError::Committed { id: tx_hash(t), height: 7 });
            assert_eq!(m.add(t.clone()), committed, "submitted again");
            assert_eq!(m.add_gossiped(member(1), t.clone()), committed, "gossiped again by its member");
            assert_eq!(m.add_gossiped(member(2), t.clone()), committed, "gossiped by another member");
        }
        assert!(m.is_empty(), "nothing re-entered the pool");
        assert!(m.take(20, 1_000).is_empty(), "so nothing is proposed again");
        let c = m.counters();
        assert_eq!((c.committed_local, c.committed_members), (3, 6));
        assert_eq!((c.refused_local, c.refused_members), (0, 0), "not counted as a full share");
        assert_eq!(m.figures().committed, 3);
        assert!(m.add(tx(LOCAL, 1, 10)).unwrap().1, "a transaction never committed is taken");
    }

    #[test]
    fn a_committed_id_is_forgotten_after_its_window_of_heights() {
        let mut m = Mempool::new(small());
        m.set_members([member(1)]);
        let t = tx(1, 0, 10);
        m.handle_commit(10, std::slice::from_ref(&t));
        m.handle_commit_ids(10 + COMMITTED_HEIGHTS - 1, &[]);
        assert_eq!(m.add_gossiped(member(1), t.clone()), Err(AddError::Committed { id: tx_hash(&t), height: 10 }));
        m.handle_commit_ids(10 + COMMITTED_HEIGHTS, &[]);
        assert_eq!(m.figures().committed, 0, "{COMMITTED_HEIGHTS} heights later it is forgotten");
        assert!(m.add_gossiped(member(1), t).unwrap().1, "and taken again");
    }

    #[test]
    fn an_id_committed_again_is_remembered_from_its_later_block() {
        // A lying proposer put an old transaction in its block: the record
        // keeps the later height and forgets the id only with it.
        let mut m = Mempool::new(small());
        let t = tx(LOCAL, 0, 10);
        m.handle_commit(10, std::slice::from_ref(&t));
        m.handle_commit(500, std::slice::from_ref(&t));
        m.handle_commit_ids(10 + COMMITTED_HEIGHTS, &[]);
        assert_eq!(m.add(t.clone()), Err(AddError::Committed { id: tx_hash(&t), height: 500 }));
        m.handle_commit_ids(500 + COMMITTED_HEIGHTS, &[]);
        assert!(m.add(t).unwrap().1);
    }

    #[test]
    fn the_committed_record_holds_the_newest_max_txs_ids_in_bounded_memory() {
        use crate::chain::block::MAX_BLOCK_TXS;
        // Full blocks, one a height: three times what the record holds.
        let limits = MempoolLimits::default();
        let mut m = Mempool::new(limits);
        let ids = |block: u32| -> Vec<Hash> {
            (0..MAX_BLOCK_TXS as u32).map(|k| tx_hash(&tx(1, block * MAX_BLOCK_TXS as u32 + k, 5))).collect()
        };
        let blocks = (3 * limits.max_txs / MAX_BLOCK_TXS) as u32;
        let mut after_two = 0;
        for b in 0..blocks {
            m.handle_commit_ids(1 + b as Height, &ids(b));
            assert!(m.figures().committed <= limits.max_txs, "block {b}: {}", m.figures().committed);
            if b == blocks * 2 / 3 {
                after_two = m.figures().committed_bytes;
            }
        }
        let f = m.figures();
        assert_eq!(f.committed, limits.max_txs, "the newest {} ids", limits.max_txs);
        assert_eq!(f.committed_bytes, COMMITTED_BYTES_AT_DEFAULTS);
        assert_eq!(f.committed_bytes, after_two, "no growth once at the bound");
        // Room a map of 131,072 buckets gives; one that grew would show more.
        assert!(m.committed.heights.capacity() <= 114_688, "the map never grew: {}", m.committed.heights.capacity());
        let last = tx(1, blocks * MAX_BLOCK_TXS as u32 - 1, 5);
        assert!(matches!(m.add(last), Err(AddError::Committed { .. })), "the newest is refused");
        assert!(m.add(tx(1, 0, 5)).unwrap().1, "the oldest is forgotten");
        eprintln!("committed record: {} ids in {} bytes", f.committed, f.committed_bytes);
    }

    #[test]
    fn the_shares_of_members_that_leave_go() {
        let mut m = Mempool::new(small());
        m.set_members([member(1), member(2)]);
        m.add_gossiped(member(1), tx(1, 0, 10)).unwrap();
        m.add_gossiped(member(1), tx(1, 1, 10)).unwrap();
        m.add_gossiped(member(2), tx(2, 0, 10)).unwrap();
        m.add(tx(LOCAL, 0, 10)).unwrap();
        m.set_members([member(2)]);
        assert_eq!((m.len(), m.bytes(), m.counters().member_left), (2, 20, 2));
        assert!(m.lookup(&[tx_hash(&tx(1, 0, 10))])[0].is_none());
        let refused = m.add_gossiped(member(1), tx(1, 2, 10));
        assert!(matches!(refused, Err(AddError::Full { max_txs: 0, max_bytes: 0, .. })), "no share: {refused:?}");
        assert_eq!(
            m.share_limits(Source::Member(member(2))),
            ShareLimits { txs: 10, bytes: 600 },
            "the half is split anew"
        );
    }

    #[test]
    fn a_member_the_chain_does_not_name_has_no_share() {
        let mut m = Mempool::new(small());
        assert!(m.add_gossiped(member(1), tx(1, 0, 10)).is_err());
        m.set_members([member(1)]);
        assert!(m.add_gossiped(member(1), tx(1, 0, 10)).is_ok());
        assert!(m.add_gossiped(member(2), tx(2, 0, 10)).is_err());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_growing_set_trims_shares_to_their_new_bound_newest_first() {
        let mut m = Mempool::new(small());
        m.set_members([member(1)]);
        for k in 0..10 {
            m.add_gossiped(member(1), tx(1, k, 10)).unwrap();
        }
        m.set_members([member(1), member(2)]);
        assert_eq!(m.held_by(Source::Member(member(1))), (5, 50));
        assert_eq!(m.counters().trimmed, 5);
        let kept: Vec<u8> = m.take(20, 1_000).iter().map(|t| t[1]).collect();
        assert_eq!(kept, [0, 1, 2, 3, 4]);
        assert!(m.add_gossiped(member(2), tx(2, 0, 10)).is_ok(), "the newcomer has its share");
    }
}
