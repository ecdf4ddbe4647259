//! The chain on disk, in fjall: blocks and their certificates by height, and meta
//! (the tip, the last signed vote, the membership the tip leaves, the format,
//! the earliest height still held).
//!
//! Every write that matters is followed by a journal fsync (`PersistMode::SyncAll`)
//! before the call returns: a block is durable before the node reports it committed,
//! and a signature record is durable before the vote leaves the node. The calls
//! block; the async side runs them on the blocking pool.
//!
//! # Formats
//!
//! * 1 (releases before 0.1.0): no format key. Its headers have no membership
//!   approvals and hash as `masternode/header/v1`: it cannot be rewritten without
//!   changing every block hash, so it is refused with [`StoreError::Format1`].
//! * 2 (0.1.0): the membership state without the upgrade schedule.
//! * 3 (this release): the membership state with the schedule.
//!
//! [`Store::open`] migrates format 2 in place: in one batch it keeps the
//! format-2 entries it replaces under `backup/2/...` keys, writes the
//! membership state with an empty schedule and the new format, and then
//! fsyncs. A crash leaves format 2 or format 3, never a mixture. A data dir
//! of a later format is refused ([`StoreError::NewerFormat`]); 0.1.0 refuses
//! format 3 in turn, so a node that ran this release cannot be rolled back onto
//! its data dir.
//!
//! # Member states
//!
//! Partition `states` holds the membership state after height `h` under key
//! `h`, written with the block only when it differs from the last one written
//! (besides its height): most blocks change nothing, so it costs nothing per
//! block. [`Store::state_at`] reads the state after any height from the first
//! one this store wrote; a peer that starts from a checkpoint asks for it
//! ([`super::checkpoint`]). A store started from a checkpoint
//! ([`Store::start_at`]) holds its block, the state before and after it, and
//! `earliest` at its height. Format 3 is unchanged by the partition: a release
//! that does not know it never opens it.
//!
//! # Pruning
//!
//! [`Store::prune_below`] removes blocks and certificates below a height, in one
//! batch with the new earliest height (meta `earliest`), so a crash leaves the
//! old range or the new one. Meta (tip, membership, signing record, lock) and the
//! signed messages are never pruned: a restart reads nothing else. Format 3 is
//! unchanged by it: a data dir without `earliest` holds every block from 1, and
//! a release that does not know the key reads a pruned height as absent.

use std::path::Path;

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use std::collections::BTreeMap;

use super::block::{tx_hash, Block, Hash, Height};
use super::members::{Change, MemberSet, MembershipState};
use super::message::BLOCKS_LIMIT;
use super::vote::{Certificate, Committed, Lock, SignRecord, Signed};
use crate::codec::{self, BINCODE};
use crate::identity::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Fjall(#[from] fjall::Error),
    #[error("storage holds a record that does not decode ({what}): {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("block {got} does not follow the tip {tip}")]
    NotNext { got: Height, tip: Height },
    #[error(
        "the data dir holds a chain in format 1 (written before 0.1.0): its block hashes cover headers without \
         membership approvals, so its blocks cannot be rewritten in format {FORMAT} without changing every block \
         hash and voiding their certificates, and no release since 0.1.0 runs that chain; keep the data dir for the \
         record elsewhere and start on an empty one: the node syncs the network's chain from its peers"
    )]
    Format1,
    #[error(
        "the data dir holds a chain in format {found}, written by a later release; this node reads formats 2 and \
         {FORMAT}: run that release or a later one"
    )]
    NewerFormat { found: u32 },
    #[error("the data dir holds a chain in format {found}, which no release wrote")]
    UnknownFormat { found: u32 },
    #[error("the store's writer stopped after a failed write")]
    WriterStopped,
}

impl StoreError {
    /// A data dir this release cannot run on as it is: the operator must act
    /// (a restart changes nothing).
    pub fn is_format(&self) -> bool {
        matches!(self, StoreError::Format1 | StoreError::NewerFormat { .. } | StoreError::UnknownFormat { .. })
    }
}

#[derive(Clone)]
pub struct Store {
    keyspace: Keyspace,
    blocks: PartitionHandle,
    certs: PartitionHandle,
    meta: PartitionHandle,
    /// Our own signed messages of the current height, by (height, round, step).
    signed: PartitionHandle,
    /// The membership state after a height, where it changed (see the module doc).
    states: PartitionHandle,
}

/// The stored tip: height, hash and timestamp of the last committed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct TipRecord {
    pub height: Height,
    pub hash: Hash,
    pub timestamp_ms: u64,
}

const TIP: &str = "tip";
/// The membership after the tip block, written with it.
const MEMBERS: &str = "members";
/// The store's format: 2 since block headers carry membership approvals, 3
/// since the membership state holds the upgrade schedule.
const FORMAT_KEY: &str = "format";
pub const FORMAT: u32 = 3;
/// Where a migration from format 2 keeps the entries it replaced.
const BACKUP_FORMAT_2: &str = "backup/2/format";
const BACKUP_MEMBERS_2: &str = "backup/2/members";

/// The membership state as format 2 (0.1.0) stores it: the current one
/// without `schedule`. `Change` decodes unchanged, its new variant being last.
#[derive(bincode::Encode, bincode::Decode)]
struct MembershipState2 {
    applied: Height,
    current: MemberSet,
    next: MemberSet,
    pending: BTreeMap<Change, BTreeMap<NodeId, Height>>,
    touched: BTreeMap<NodeId, Height>,
}

impl MembershipState2 {
    fn into_current(self) -> MembershipState {
        let MembershipState2 { applied, current, next, pending, touched } = self;
        MembershipState { applied, current, next, pending, touched, schedule: Vec::new() }
    }
}

fn signed_key(r: SignRecord) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..8].copy_from_slice(&r.height.to_be_bytes());
    k[8..12].copy_from_slice(&r.round.to_be_bytes());
    k[12] = r.step as u8;
    k
}
const LAST_SIGNED: &str = "last_signed";
/// The lowest height whose block is still held, once something was pruned.
const EARLIEST: &str = "earliest";
/// The lock with its polka. (An earlier format without the polka used the key
/// "lock"; it is no longer read.)
const LOCK: &str = "lock+polka";

fn encode<T: bincode::Encode>(v: &T) -> Vec<u8> {
    // Into a Vec, under the codec's 4 MiB limit, which blocks respect.
    let bytes = bincode::encode_to_vec(v, BINCODE).unwrap_or_default();
    #[cfg(feature = "fault-injection")]
    super::block::counts::wrote(bytes.len());
    bytes
}

fn decode<T: bincode::Decode<()>>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    codec::decode_bounded(bytes).map(|(v, _)| v).map_err(|e| StoreError::Corrupt { what, reason: e.to_string() })
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let keyspace = Config::new(dir).open()?;
        let blocks = keyspace.open_partition("blocks", PartitionCreateOptions::default())?;
        let certs = keyspace.open_partition("certs", PartitionCreateOptions::default())?;
        let meta = keyspace.open_partition("meta", PartitionCreateOptions::default())?;
        let signed = keyspace.open_partition("signed", PartitionCreateOptions::default())?;
        let states = keyspace.open_partition("states", PartitionCreateOptions::default())?;
        let store = Store { keyspace, blocks, certs, meta, signed, states };
        let format: Option<u32> = store.meta.get(FORMAT_KEY)?.map(|b| decode(&b, "format")).transpose()?;
        match format {
            Some(FORMAT) => {}
            Some(2) => store.migrate_2_to_3()?,
            Some(found) if found > FORMAT => return Err(StoreError::NewerFormat { found }),
            Some(found) => return Err(StoreError::UnknownFormat { found }),
            // A store with blocks and no format key is of format 1.
            None if store.meta.get(TIP)?.is_some() || store.meta.get(LAST_SIGNED)?.is_some() => {
                return Err(StoreError::Format1)
            }
            None => {
                store.meta.insert(FORMAT_KEY, encode(&FORMAT))?;
                store.keyspace.persist(PersistMode::SyncAll)?;
            }
        }
        Ok(store)
    }

    /// Format 2 to 3: the membership state gains an empty upgrade schedule
    /// (0.1.0 knew no plans). Blocks, certificates, the lock and the signed
    /// messages are the same in both. One batch, then an fsync.
    fn migrate_2_to_3(&self) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        if let Some(old) = self.meta.get(MEMBERS)? {
            let state: MembershipState2 = decode(&old, "format-2 membership")?;
            batch.insert(&self.meta, BACKUP_MEMBERS_2, old.to_vec());
            batch.insert(&self.meta, MEMBERS, encode(&state.into_current()));
        }
        batch.insert(&self.meta, BACKUP_FORMAT_2, encode(&2u32));
        batch.insert(&self.meta, FORMAT_KEY, encode(&FORMAT));
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        let tip = self.tip()?.map_or(0, |t| t.height);
        tracing::info!(
            tip = tip,
            "data dir migrated from format 2 (0.1.0) to {FORMAT}: the membership state holds the upgrade schedule; the \
             format-2 entries are kept under backup/2/; 0.1.0 no longer opens this data dir"
        );
        Ok(())
    }

    /// The membership after the tip block (`None` before the first block).
    pub fn membership(&self) -> Result<Option<MembershipState>, StoreError> {
        self.meta.get(MEMBERS)?.map(|b| decode(&b, "membership")).transpose()
    }

    /// The lowest height whose block this store holds (1 before anything is
    /// pruned, also when it holds no block yet).
    pub(crate) fn earliest(&self) -> Result<Height, StoreError> {
        Ok(self.meta.get(EARLIEST)?.map(|b| decode(&b, "earliest height")).transpose()?.unwrap_or(1))
    }

    /// Removes the blocks and certificates below `below` (at most `max` of
    /// them, from the earliest up; never the tip), in one batch with the new
    /// earliest height, and fsyncs. Returns the earliest height held after it.
    pub(crate) fn prune_below(&self, below: Height, max: u64) -> Result<Height, StoreError> {
        let earliest = self.earliest()?;
        let tip = self.tip()?.map_or(0, |t| t.height);
        let end = below.min(tip).min(earliest.saturating_add(max));
        if end <= earliest {
            return Ok(earliest);
        }
        let mut batch = self.keyspace.batch();
        for h in earliest..end {
            batch.remove(&self.blocks, h.to_be_bytes());
            batch.remove(&self.certs, h.to_be_bytes());
        }
        batch.insert(&self.meta, EARLIEST, encode(&end));
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(end)
    }

    /// Seals the in-memory tables so they are flushed to disk, which lets the
    /// journals behind them be removed and compaction drop what was pruned.
    /// Without it, a node with small blocks keeps every write of the last
    /// 16 MiB per partition in its journal, pruned or not.
    pub(crate) fn seal(&self) -> Result<(), StoreError> {
        for p in [&self.blocks, &self.certs, &self.meta, &self.signed, &self.states] {
            p.rotate_memtable()?;
        }
        Ok(())
    }

    /// Seals the tables and rewrites the blocks, certificates and signed
    /// messages into one sorted run each, dropping what was removed: a removal
    /// leaves a marker on disk until a compaction reaches the last level, so
    /// without this a pruning node still grows by a few dozen bytes a height.
    /// Rewrites what the partitions hold: the caller runs it once as many
    /// heights were pruned as are kept, so it costs O(1) per pruned block.
    pub(crate) fn compact(&self) -> Result<(), StoreError> {
        self.seal()?;
        for p in [&self.blocks, &self.certs, &self.signed] {
            p.major_compact()?;
        }
        Ok(())
    }

    pub fn tip(&self) -> Result<Option<TipRecord>, StoreError> {
        self.meta.get(TIP)?.map(|b| decode(&b, "tip")).transpose()
    }

    pub fn last_signed(&self) -> Result<Option<SignRecord>, StoreError> {
        self.meta.get(LAST_SIGNED)?.map(|b| decode(&b, "last signed vote")).transpose()
    }

    /// Records a signature and the signed message durably; returns only once the
    /// journal is on disk. After a restart the node refuses to sign at or below
    /// the record, and replays the messages it already signed at that height.
    pub(crate) fn record_signed(
        &self,
        record: SignRecord,
        message: &Signed,
        lock: Option<&Lock>,
    ) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        batch.insert(&self.meta, LAST_SIGNED, encode(&record));
        batch.insert(&self.signed, signed_key(record), encode(message));
        if let Some(lock) = lock {
            batch.insert(&self.meta, LOCK, encode(lock));
        }
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// The lock held when the node last precommitted a value, if any. Callers
    /// check its height: a lock of a finished height means nothing.
    pub(crate) fn lock(&self) -> Result<Option<Lock>, StoreError> {
        self.meta.get(LOCK)?.map(|b| decode(&b, "lock")).transpose()
    }

    /// What we signed at `height`, in signing order.
    pub(crate) fn own_signed(&self, height: Height) -> Result<Vec<Signed>, StoreError> {
        let mut out = Vec::new();
        for kv in self.signed.prefix(height.to_be_bytes()) {
            let (_, v) = kv?;
            out.push(decode(&v, "signed message")?);
        }
        Ok(out)
    }

    /// Puts into `batch` what a block at the tip is stored as: the block, its
    /// certificate, the tip record and the membership it leaves.
    fn put_tip(&self, batch: &mut fjall::Batch, c: &Committed, membership: &MembershipState) {
        let key = c.block.height().to_be_bytes();
        let record =
            TipRecord { height: c.block.height(), hash: c.block.hash(), timestamp_ms: c.block.header.timestamp_ms };
        batch.insert(&self.blocks, key, encode(&c.block));
        batch.insert(&self.certs, key, encode(&c.cert));
        batch.insert(&self.meta, TIP, encode(&record));
        batch.insert(&self.meta, MEMBERS, encode(membership));
    }

    /// Appends a committed block at the tip, atomically with its certificate, the
    /// new tip and the membership it leaves, and fsyncs.
    pub(crate) fn commit(&self, c: &Committed, membership: &MembershipState) -> Result<(), StoreError> {
        let height = c.block.height();
        let tip = self.tip()?.map_or(0, |t| t.height);
        if height != tip + 1 {
            return Err(StoreError::NotNext { got: height, tip });
        }
        let key = height.to_be_bytes();
        let mut batch = self.keyspace.batch();
        self.put_tip(&mut batch, c, membership);
        if self.state_changed(membership)? {
            batch.insert(&self.states, key, encode(membership));
        }
        // Signed messages of finished heights are of no further use.
        for kv in self.signed.range(..(height + 1).to_be_bytes()) {
            let (k, _) = kv?;
            batch.remove(&self.signed, k);
        }
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Appends consecutive committed blocks, each with the membership it
    /// leaves, in one batch and one fsync: a bulk import (a chain generated
    /// for a measurement), not the path of consensus, which commits one block
    /// at a time.
    #[doc(hidden)]
    pub fn commit_batch(&self, chain: &[(Committed, MembershipState)]) -> Result<(), StoreError> {
        let mut tip = self.tip()?.map_or(0, |t| t.height);
        let mut last: Option<MembershipState> = None;
        let mut batch = self.keyspace.batch();
        for (c, membership) in chain {
            let height = c.block.height();
            if height != tip + 1 {
                return Err(StoreError::NotNext { got: height, tip });
            }
            tip = height;
            let key = height.to_be_bytes();
            batch.insert(&self.blocks, key, encode(&c.block));
            batch.insert(&self.certs, key, encode(&c.cert));
            let changed = match &last {
                Some(prev) => {
                    let mut prev = prev.clone();
                    prev.applied = membership.applied;
                    &prev != membership
                }
                None => self.state_changed(membership)?,
            };
            if changed {
                batch.insert(&self.states, key, encode(membership));
            }
            last = Some(membership.clone());
        }
        if let (Some((c, membership)), Some(_)) = (chain.last(), &last) {
            let record = TipRecord { height: tip, hash: c.block.hash(), timestamp_ms: c.block.header.timestamp_ms };
            batch.insert(&self.meta, TIP, encode(&record));
            batch.insert(&self.meta, MEMBERS, encode(membership));
        }
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Whether `state` differs from the last state in `states` (its height
    /// aside), or none was written yet.
    fn state_changed(&self, state: &MembershipState) -> Result<bool, StoreError> {
        let Some((_, last)) = self.states.last_key_value()? else { return Ok(true) };
        let mut last: MembershipState = decode(&last, "member state")?;
        last.applied = state.applied;
        Ok(&last != state)
    }

    /// The membership state after block `height` (`applied == height`), if this
    /// store recorded one at or below it.
    pub(crate) fn state_at(&self, height: Height) -> Result<Option<MembershipState>, StoreError> {
        let Some(kv) = self.states.range(..=height.to_be_bytes()).next_back() else { return Ok(None) };
        let (_, bytes) = kv?;
        let mut state: MembershipState = decode(&bytes, "member state")?;
        state.applied = height;
        Ok(Some(state))
    }

    /// Starts an empty store at a checkpoint: block `c` as its tip and earliest
    /// height, with the member states before (`before`, after the parent) and
    /// after it, in one batch, then an fsync. Refused on a store that holds a
    /// chain.
    pub fn start_at(&self, c: &Committed, before: &MembershipState, after: &MembershipState) -> Result<(), StoreError> {
        let height = c.block.height();
        if let Some(tip) = self.tip()? {
            return Err(StoreError::NotNext { got: height, tip: tip.height });
        }
        let key = height.to_be_bytes();
        let mut batch = self.keyspace.batch();
        self.put_tip(&mut batch, c, after);
        batch.insert(&self.meta, EARLIEST, encode(&height));
        batch.insert(&self.states, (height - 1).to_be_bytes(), encode(before));
        batch.insert(&self.states, key, encode(after));
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    pub fn block(&self, height: Height) -> Result<Option<Committed>, StoreError> {
        let key = height.to_be_bytes();
        let Some(block) = self.blocks.get(key)? else { return Ok(None) };
        let Some(cert) = self.certs.get(key)? else {
            return Err(StoreError::Corrupt { what: "certificate", reason: format!("missing at height {height}") });
        };
        Ok(Some(Committed {
            block: decode::<Block>(&block, "block")?,
            cert: decode::<Certificate>(&cert, "certificate")?,
        }))
    }

    /// The transaction ids of the blocks at `below - heights` to `below - 1`
    /// that this store holds, read from the newest down until they make
    /// `max_ids` ids or `max_bytes` of transactions were read (a whole block
    /// at a time), returned oldest first with their heights: what a restarted
    /// node's mempool remembers as committed.
    pub(crate) fn recent_tx_ids(
        &self,
        below: Height,
        heights: Height,
        max_ids: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Height, Vec<Hash>)>, StoreError> {
        let lowest = below.saturating_sub(heights).max(self.earliest()?).max(1);
        let (mut out, mut ids, mut bytes) = (Vec::new(), 0, 0);
        for h in (lowest..below).rev() {
            if ids >= max_ids || bytes >= max_bytes {
                break;
            }
            let Some(c) = self.block(h)? else { break };
            bytes += c.block.tx_bytes();
            ids += c.block.txs.len();
            out.push((h, c.block.txs.iter().map(|tx| tx_hash(tx)).collect()));
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `count` consecutive blocks from `from` for a `Blocks` response, whose
    /// encoded body stays within `max_bytes` and the receiver's `BLOCKS_LIMIT`; a
    /// first block over that budget travels alone (block limits keep one block
    /// under `BLOCKS_LIMIT`). Sized by the encoding, not by transaction bytes: the
    /// receiver's limit counts the encoding, whatever the blocks hold.
    pub(crate) fn range(&self, from: Height, count: usize, max_bytes: usize) -> Result<Vec<Committed>, StoreError> {
        let budget = max_bytes.min(BLOCKS_LIMIT);
        let mut out = Vec::new();
        // The body's kind byte and the block count (a varint of at most 9 bytes).
        let mut bytes = 1 + 9;
        for h in from..from.saturating_add(count as u64) {
            let Some(c) = self.block(h)? else { break };
            let size = codec::encoded_len(&c);
            if !out.is_empty() && bytes + size > budget {
                break;
            }
            bytes += size;
            out.push(c);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{genesis_hash, tx_root, Header};
    use crate::chain::vote::Step;
    use crate::identity::NodeId;

    fn committed(height: Height, prev: Hash) -> Committed {
        let txs = vec![vec![height as u8; 10]];
        let block = Block {
            header: Header {
                height,
                round: 0,
                prev_hash: prev,
                timestamp_ms: height,
                proposer: NodeId([1; 32]),
                tx_root: tx_root(&txs),
                changes: vec![],
            },
            txs,
        };
        let cert = Certificate { height, round: 0, block: block.hash(), precommits: vec![] };
        Committed { block, cert }
    }

    /// Field report: blocks of 20,000 10-byte transactions, served in a response
    /// sized by transaction bytes, did not decode at the receiver (bincode counts
    /// 24 bytes of memory for each 11-byte transaction). A response is sized by its
    /// encoded size under the receiver's limit, and whatever fits that limit
    /// decodes.
    #[test]
    fn a_sync_response_of_many_tiny_transactions_decodes() {
        use crate::chain::limits::NodeLimits;
        use crate::chain::message::{Message, BLOCKS_LIMIT};
        use crate::codec;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut prev = genesis_hash(&[0; 32]);
        for height in 1..=40u64 {
            let txs: Vec<Vec<u8>> =
                (0..20_000u32).map(|i| [&height.to_be_bytes()[6..], &i.to_be_bytes()[..], &[0; 4]].concat()).collect();
            assert!(txs.iter().all(|t| t.len() == 10));
            let block = Block {
                header: Header {
                    height,
                    round: 0,
                    prev_hash: prev,
                    timestamp_ms: height,
                    proposer: NodeId([1; 32]),
                    tx_root: tx_root(&txs),
                    changes: vec![],
                },
                txs,
            };
            let precommits = (0..3u8)
                .map(|i| crate::chain::vote::SignedVote {
                    vote: crate::chain::vote::Vote {
                        kind: crate::chain::vote::VoteKind::Precommit,
                        height,
                        round: 0,
                        block: Some(block.hash()),
                        voter: NodeId([i; 32]),
                    },
                    signature: [i; 64],
                })
                .collect();
            let cert = Certificate { height, round: 0, block: block.hash(), precommits };
            prev = block.hash();
            store.commit(&Committed { block, cert }, &membership(height)).unwrap();
        }
        let limits = NodeLimits::default();
        let mut from = 1;
        while from <= 40 {
            let blocks = store.range(from, limits.sync_batch_blocks as usize, limits.sync_response_bytes).unwrap();
            assert!(blocks.len() > 1, "several blocks per response");
            let n = blocks.len() as u64;
            let response = Message::Blocks(blocks);
            let wire = codec::encode(&response);
            assert!(wire.len() - 4 <= BLOCKS_LIMIT);
            let decoded: Message = codec::decode_single(&wire).expect("a response within its limit decodes");
            assert_eq!(decoded, response);
            from += n;
        }
    }

    fn membership(applied: Height) -> MembershipState {
        let mut state = crate::chain::members::Membership::of_ids(&[NodeId([1; 32])], 1).state().clone();
        state.applied = applied;
        state
    }

    /// Writes meta entries straight into a data dir, as another release would.
    fn write_meta(dir: &Path, entries: &[(&str, Vec<u8>)]) {
        let keyspace = Config::new(dir).open().unwrap();
        let meta = keyspace.open_partition("meta", PartitionCreateOptions::default()).unwrap();
        for (k, v) in entries {
            meta.insert(*k, v).unwrap();
        }
        keyspace.persist(PersistMode::SyncAll).unwrap();
    }

    /// A polka holds at most one prevote per member: a lock whose polka claims
    /// more is corrupt, refused before anything is allocated for it.
    #[test]
    fn a_lock_whose_polka_claims_more_prevotes_than_members_is_corrupt() {
        use crate::chain::members::MAX_MEMBERS;
        let vote = crate::chain::vote::SignedVote {
            vote: crate::chain::vote::Vote {
                kind: crate::chain::vote::VoteKind::Prevote,
                height: 6,
                round: 2,
                block: None,
                voter: NodeId([1; 32]),
            },
            signature: [0; 64],
        };
        let block = committed(6, genesis_hash(&[0; 32])).block;
        for (prevotes, accepted) in [(MAX_MEMBERS, true), (MAX_MEMBERS + 1, false)] {
            let dir = tempfile::tempdir().unwrap();
            let lock = Lock { round: 2, block: block.clone(), polka: vec![vote.clone(); prevotes] };
            write_meta(dir.path(), &[(FORMAT_KEY, encode(&FORMAT)), (LOCK, encode(&lock))]);
            let store = Store::open(dir.path()).unwrap();
            match store.lock() {
                Ok(read) => assert!(accepted && read == Some(lock), "{prevotes} prevotes"),
                Err(StoreError::Corrupt { what: "lock", reason }) => {
                    assert!(!accepted && reason.contains("polka"), "{prevotes} prevotes: {reason}")
                }
                Err(e) => panic!("{prevotes} prevotes: {e}"),
            }
        }
    }

    #[test]
    fn a_data_dir_of_format_1_is_refused_with_why_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        // Format 1 had a tip and no format key.
        write_meta(dir.path(), &[(TIP, encode(&TipRecord { height: 3, hash: Hash([1; 32]), timestamp_ms: 1 }))]);
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::Format1), "{err}");
        let text = err.to_string();
        assert!(text.contains("without changing every block hash") && text.contains("start on an empty one"), "{text}");
        // A fresh data dir is written in the current format and opens again.
        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open(fresh.path()).unwrap());
        assert!(Store::open(fresh.path()).is_ok());
    }

    #[test]
    fn the_recent_transaction_ids_are_the_newest_blocks_within_the_heights_ids_and_bytes_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = crate::chain::members::Membership::of_ids(&[NodeId([1; 32])], 1).state().clone();
        let mut prev = genesis_hash(&[0; 32]);
        for h in 1..=30 {
            let c = committed(h, prev);
            prev = c.block.hash();
            store.commit(&c, &m).unwrap();
        }
        let id = |h: u64| tx_hash(&[h as u8; 10]);
        let heights = |r: &[(Height, Vec<Hash>)]| r.iter().map(|(h, _)| *h).collect::<Vec<_>>();
        let all = store.recent_tx_ids(31, 600, 1_000, 1 << 20).unwrap();
        assert_eq!(heights(&all), (1..=30).collect::<Vec<_>>(), "every block, oldest first");
        assert_eq!(all[29].1, [id(30)]);
        assert_eq!(heights(&store.recent_tx_ids(31, 5, 1_000, 1 << 20).unwrap()), [26, 27, 28, 29, 30], "heights");
        assert_eq!(heights(&store.recent_tx_ids(31, 600, 3, 1 << 20).unwrap()), [28, 29, 30], "ids");
        assert_eq!(heights(&store.recent_tx_ids(31, 600, 1_000, 25).unwrap()), [28, 29, 30], "bytes, whole blocks");
        assert!(store.recent_tx_ids(1, 600, 1_000, 1 << 20).unwrap().is_empty(), "nothing below height 1");
    }

    #[test]
    fn member_states_are_kept_where_they_change_and_read_at_any_height_after_the_first() {
        use crate::chain::members::Membership;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut m = Membership::of_ids(&[NodeId([1; 32]), NodeId([2; 32])], 1).state().clone();
        let mut prev = genesis_hash(&[0; 32]);
        for h in 1..=30 {
            let c = committed(h, prev);
            prev = c.block.hash();
            m.applied = h;
            if h == 20 {
                m.touched.insert(NodeId([3; 32]), 20);
            }
            store.commit(&c, &m).unwrap();
        }
        assert_eq!(store.states.len().unwrap(), 2, "written at the first block and where it changed");
        let at = |h| store.state_at(h).unwrap();
        assert_eq!(at(0), None, "nothing before the first block this store wrote");
        assert_eq!(at(19).unwrap().applied, 19);
        assert!(at(19).unwrap().touched.is_empty());
        assert_eq!(at(20).unwrap().touched.len(), 1);
        assert_eq!(at(30).unwrap(), m, "the state after the tip is the meta entry's");
    }

    #[test]
    fn a_store_started_at_a_checkpoint_holds_from_it_and_commits_after_it() {
        use crate::chain::members::Membership;
        let dir = tempfile::tempdir().unwrap();
        let mut before = Membership::of_ids(&[NodeId([1; 32])], 1).state().clone();
        before.applied = 99;
        let mut after = before.clone();
        after.applied = 100;
        let c = committed(100, Hash([5; 32]));
        {
            let store = Store::open(dir.path()).unwrap();
            store.start_at(&c, &before, &after).unwrap();
            assert!(matches!(store.start_at(&c, &before, &after), Err(StoreError::NotNext { .. })), "only empty");
        }
        // After a restart: a store whose earliest height is the checkpoint's.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tip().unwrap().map(|t| (t.height, t.hash)), Some((100, c.block.hash())));
        assert_eq!(store.earliest().unwrap(), 100);
        assert_eq!(store.membership().unwrap(), Some(after.clone()));
        assert_eq!(store.state_at(99).unwrap(), Some(before));
        assert_eq!(store.block(99).unwrap(), None, "nothing below the checkpoint");
        let next = committed(101, c.block.hash());
        after.applied = 101;
        store.commit(&next, &after).unwrap();
        assert_eq!(store.tip().unwrap().map(|t| t.height), Some(101));
    }

    #[test]
    fn a_data_dir_of_a_later_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_meta(dir.path(), &[(FORMAT_KEY, encode(&(FORMAT + 1)))]);
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::NewerFormat { found } if found == FORMAT + 1), "{err}");
        assert!(err.to_string().contains("run that release or a later one"), "{err}");
    }

    #[test]
    fn format_2_is_migrated_in_place_keeping_what_it_replaced() {
        use crate::chain::members::{Approval, Membership};
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let identity = crate::identity::Identity::from_signing_key(key).unwrap();
        let mut m = Membership::of_ids(&[identity.id(), NodeId([1; 32]), NodeId([2; 32])], 1);
        m.apply(&[], &[0; 32]);
        let pending =
            Approval { change: Change::Remove { id: NodeId([2; 32]) }, approver: identity.id(), signed_at: 1 }
                .sign(&[0; 32], &identity);
        m.apply(&[pending], &[0; 32]);
        let s = m.state().clone();
        assert_eq!(s.pending.len(), 1, "a change still collecting approvals");
        let old = MembershipState2 {
            applied: s.applied,
            current: s.current.clone(),
            next: s.next.clone(),
            pending: s.pending.clone(),
            touched: s.touched.clone(),
        };
        let old_bytes = encode(&old);
        let tip = TipRecord { height: 2, hash: Hash([4; 32]), timestamp_ms: 9 };
        write_meta(dir.path(), &[(FORMAT_KEY, encode(&2u32)), (TIP, encode(&tip)), (MEMBERS, old_bytes.clone())]);
        for open in ["the migrating open", "a later open"] {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.membership().unwrap(), Some(s.clone()), "{open}: the same state, an empty schedule");
            assert_eq!(store.tip().unwrap(), Some(tip), "{open}");
            let format: u32 = decode(&store.meta.get(FORMAT_KEY).unwrap().unwrap(), "format").unwrap();
            assert_eq!(format, FORMAT, "{open}");
            assert_eq!(
                store.meta.get(BACKUP_MEMBERS_2).unwrap().unwrap().to_vec(),
                old_bytes,
                "{open}: kept as it was"
            );
        }
    }

    #[test]
    fn pruning_removes_blocks_below_a_height_keeps_the_tip_and_meta_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut prev = genesis_hash(&[0; 32]);
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.earliest().unwrap(), 1, "an empty store");
            for h in 1..=20 {
                let c = committed(h, prev);
                prev = c.block.hash();
                store.commit(&c, &membership(h)).unwrap();
            }
            assert_eq!(store.prune_below(8, 3).unwrap(), 4, "at most 3 in one batch");
            assert_eq!(store.prune_below(8, 100).unwrap(), 8);
            assert_eq!(store.prune_below(5, 100).unwrap(), 8, "never backwards");
            assert_eq!(store.prune_below(1_000, 1_000).unwrap(), 20, "never the tip");
            store.seal().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.earliest().unwrap(), 20);
        assert!(store.block(19).unwrap().is_none());
        assert_eq!(store.block(20).unwrap().unwrap().block.hash(), prev);
        assert_eq!(store.range(1, 10, usize::MAX).unwrap().len(), 0, "nothing below the earliest is served");
        assert_eq!(store.tip().unwrap().map(|t| t.height), Some(20));
        assert_eq!(store.membership().unwrap(), Some(membership(20)));
        let next = committed(21, prev);
        store.commit(&next, &membership(21)).unwrap();
        assert_eq!(store.range(20, 10, usize::MAX).unwrap().len(), 2);
    }

    #[test]
    fn blocks_and_meta_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut prev = genesis_hash(&[0; 32]);
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.tip().unwrap(), None);
            for h in 1..=5 {
                let c = committed(h, prev);
                prev = c.block.hash();
                store.commit(&c, &membership(h)).unwrap();
            }
            let vote = crate::chain::vote::Vote {
                kind: crate::chain::vote::VoteKind::Prevote,
                height: 6,
                round: 1,
                block: None,
                voter: NodeId([1; 32]),
            };
            let signed = Signed::Vote(crate::chain::vote::SignedVote { vote, signature: [0; 64] });
            store.record_signed(SignRecord { height: 6, round: 1, step: Step::Prevote }, &signed, None).unwrap();
            assert_eq!(store.lock().unwrap(), None);
            let lock = Lock { round: 2, block: committed(6, prev).block, polka: vec![] };
            let precommit = Signed::Vote(crate::chain::vote::SignedVote {
                vote: crate::chain::vote::Vote {
                    kind: crate::chain::vote::VoteKind::Precommit,
                    height: 6,
                    round: 2,
                    block: Some(lock.block.hash()),
                    voter: NodeId([1; 32]),
                },
                signature: [0; 64],
            });
            store
                .record_signed(SignRecord { height: 6, round: 2, step: Step::Precommit }, &precommit, Some(&lock))
                .unwrap();
            assert_eq!(store.own_signed(6).unwrap(), vec![signed.clone(), precommit]);
            assert!(matches!(store.commit(&committed(9, prev), &membership(9)), Err(StoreError::NotNext { .. })));
        }
        let store = Store::open(dir.path()).unwrap();
        let tip = store.tip().unwrap().unwrap();
        assert_eq!((tip.height, tip.hash), (5, prev));
        assert_eq!(store.membership().unwrap(), Some(membership(5)), "the membership of the tip");
        assert_eq!(store.last_signed().unwrap(), Some(SignRecord { height: 6, round: 2, step: Step::Precommit }));
        assert_eq!(
            store.lock().unwrap().map(|l| (l.round, l.block.height())),
            Some((2, 6)),
            "the lock survives a reopen"
        );
        assert_eq!(store.own_signed(6).unwrap().len(), 2);
        assert_eq!(store.block(3).unwrap().unwrap().block.height(), 3);
        assert!(store.block(6).unwrap().is_none());
        assert_eq!(store.range(2, 10, usize::MAX).unwrap().len(), 4);
        assert_eq!(store.range(2, 10, 1).unwrap().len(), 1, "at least one block even over the byte budget");
    }
}
