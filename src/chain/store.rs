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
//! * 3: the membership state with the schedule. A block's bytes are written
//!   with every record that holds it: the signed proposal, the lock, and the
//!   block at its height.
//! * 4 (this release): a block's bytes are written once (see "Bodies").
//!
//! [`Store::open`] migrates format 2 in place: in one batch it keeps the
//! format-2 entries it replaces under `backup/2/...` keys, writes the
//! membership state with an empty schedule and format 3, and then fsyncs.
//! It then migrates format 3 to 4 in a second batch: it keeps the lock and
//! the signed proposals it rewrites under `backup/3/...` keys, writes their
//! blocks into `bodies` and the records by reference, records the first
//! height whose block is in `bodies` (meta `bodies_from`, the tip's next) and
//! the new format, and fsyncs. The committed blocks stay where format 3 wrote
//! them (partition `blocks`, by height), so the migration costs what the
//! pending records hold, not the chain. A crash leaves format 2, 3 or 4,
//! never a mixture. A data dir of a later format is refused
//! ([`StoreError::NewerFormat`]); 0.1.0 refuses format 3 and releases of
//! format 3 refuse format 4 in turn, so a node that ran this release cannot
//! be rolled back onto its data dir.
//!
//! # Bodies
//!
//! Partition `bodies` holds a block's bytes under its height and hash
//! (40 bytes, big-endian height first), written the first time the node
//! persists the block: signing a proposal of it, locking on it, or
//! committing it, whichever comes first. The signed proposal (partition
//! `signed`) and the lock (meta) name it by height and hash; a commit of a
//! block already held writes its certificate, the tip and the membership, not
//! the block again. A block is read at a height through its certificate,
//! which names its hash: two reads, as before. Blocks below `bodies_from`
//! (those format 3 committed) are read from `blocks` by height.
//!
//! The bodies of a height's rounds that did not commit (a proposal this node
//! signed or a block it locked on in a round that decided nothing) are
//! removed in the batch that commits the height, with the signed messages of
//! that height. Until then a height holds one body per proposal this node
//! signed there and one for its lock: a lock that moves to another block
//! removes the body of the one it replaces, unless a signed proposal names it.
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
//! `earliest` at its height. A release that does not know the partition never
//! opens it.
//!
//! # Pruning
//!
//! [`Store::prune_below`] removes blocks and certificates below a height, in one
//! batch with the new earliest height (meta `earliest`), so a crash leaves the
//! old range or the new one. Meta (tip, membership, signing record, lock) and the
//! signed messages are never pruned: a restart reads nothing else. A data dir
//! without `earliest` holds every block from 1.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use std::collections::BTreeMap;

use super::block::{tx_hash, Block, Hash, Height, Round};
use super::members::MAX_MEMBERS;
use super::members::{Change, MemberSet, MembershipState};
use super::message::BLOCKS_LIMIT;
use super::vote::{Certificate, Committed, Lock, Proposal, SignRecord, Signed, SignedProposal, SignedVote};
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
        "the data dir holds a chain in format {found}, written by a later release; this node reads formats 2 to \
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
    /// Committed blocks by height, as format 3 wrote them: read below
    /// `legacy_below` only, never written.
    blocks: PartitionHandle,
    /// Block bodies by height and hash, each written once (see the module doc).
    bodies: PartitionHandle,
    certs: PartitionHandle,
    meta: PartitionHandle,
    /// Our own signed messages of the current height, by (height, round, step).
    signed: PartitionHandle,
    /// The membership state after a height, where it changed (see the module doc).
    states: PartitionHandle,
    /// Heights below it have their block in `blocks` (meta `bodies_from`; 0
    /// on a data dir created in format 4).
    legacy_below: Height,
    /// Block bodies this store wrote since it was opened.
    body_writes: Arc<AtomicU64>,
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
/// since the membership state holds the upgrade schedule, 4 since a block's
/// bytes are written once.
const FORMAT_KEY: &str = "format";
pub const FORMAT: u32 = 4;
/// The first height whose block is in `bodies`, written by the migration
/// from format 3 (the tip's next height then).
const BODIES_FROM: &str = "bodies_from";
/// Where the migration from format 3 keeps the entries it replaced: the
/// format, the lock, and each signed proposal under this prefix and its key
/// in `signed`.
const BACKUP_FORMAT_3: &str = "backup/3/format";
const BACKUP_LOCK_3: &str = "backup/3/lock";
const BACKUP_SIGNED_3: &str = "backup/3/signed/";
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

/// Where a block's body is: its height and hash, the key in `bodies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
struct BodyRef {
    height: Height,
    hash: Hash,
}

impl BodyRef {
    fn of(block: &Block) -> BodyRef {
        BodyRef { height: block.height(), hash: block.hash() }
    }

    fn key(&self) -> [u8; 40] {
        let mut k = [0u8; 40];
        k[..8].copy_from_slice(&self.height.to_be_bytes());
        k[8..].copy_from_slice(&self.hash.0);
        k
    }
}

/// The lock as format 4 stores it: [`Lock`] with its block by reference.
/// Decoded by hand, as [`Lock`] is, to bound the polka before allocating it.
/// Written from a borrowed lock as the tuple `(round, block, &polka)`, which
/// encodes alike.
struct StoredLock {
    round: Round,
    block: BodyRef,
    polka: Vec<SignedVote>,
}

impl<C> bincode::Decode<C> for StoredLock {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        use bincode::Decode;
        Ok(StoredLock {
            round: Decode::decode(d)?,
            block: Decode::decode(d)?,
            polka: codec::decode_seq(d, MAX_MEMBERS, "prevotes in a lock's polka")?,
        })
    }
}

/// A signed message as format 4 stores it: a proposal with its block by
/// reference. The variants are in [`Signed`]'s order, so a vote is stored
/// as format 3 stored it.
#[derive(bincode::Encode, bincode::Decode)]
enum StoredSigned {
    Proposal {
        height: Height,
        round: Round,
        block: BodyRef,
        valid_round: Option<Round>,
        proposer: NodeId,
        signature: [u8; 64],
    },
    Vote(SignedVote),
}

impl StoredSigned {
    fn proposal(sp: &SignedProposal, block: BodyRef) -> StoredSigned {
        let p = &sp.proposal;
        StoredSigned::Proposal {
            height: p.height,
            round: p.round,
            block,
            valid_round: p.valid_round,
            proposer: p.proposer,
            signature: sp.signature,
        }
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
        let bodies = keyspace.open_partition("bodies", PartitionCreateOptions::default())?;
        let mut store = Store {
            keyspace,
            blocks,
            bodies,
            certs,
            meta,
            signed,
            states,
            legacy_below: 0,
            body_writes: Arc::default(),
        };
        let format: Option<u32> = store.meta.get(FORMAT_KEY)?.map(|b| decode(&b, "format")).transpose()?;
        match format {
            Some(FORMAT) => {}
            Some(2) => {
                store.migrate_2_to_3()?;
                store.migrate_3_to_4()?;
            }
            Some(3) => store.migrate_3_to_4()?,
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
        store.legacy_below = store.meta.get(BODIES_FROM)?.map(|b| decode(&b, "bodies_from")).transpose()?.unwrap_or(0);
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
        batch.insert(&self.meta, FORMAT_KEY, encode(&3u32));
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        let tip = self.tip()?.map_or(0, |t| t.height);
        tracing::info!(
            tip = tip,
            "data dir migrated from format 2 (0.1.0) to 3: the membership state holds the upgrade schedule; the \
             format-2 entries are kept under backup/2/; 0.1.0 no longer opens this data dir"
        );
        Ok(())
    }

    /// Format 3 to 4: the lock and the signed proposals name their block by
    /// height and hash, its bytes in `bodies`; the committed blocks stay in
    /// `blocks`, read by height below `bodies_from` (the tip's next height).
    /// A lock of a finished height (which means nothing) is not carried over,
    /// nor a signed proposal of one (format 3 removed them with the commit;
    /// a body of a finished height would never be removed).
    /// What it replaces is kept under `backup/3/...`. One batch, then an fsync.
    fn migrate_3_to_4(&self) -> Result<(), StoreError> {
        let tip = self.tip()?.map_or(0, |t| t.height);
        let mut batch = self.keyspace.batch();
        let mut put = HashSet::new();
        let mut put_body = |batch: &mut fjall::Batch, block: &Block| {
            let r = BodyRef::of(block);
            if put.insert(r) {
                batch.insert(&self.bodies, r.key(), encode(block));
            }
            r
        };
        if let Some(old) = self.meta.get(LOCK)? {
            let lock: Lock = decode(&old, "format-3 lock")?;
            batch.insert(&self.meta, BACKUP_LOCK_3, old.to_vec());
            if lock.block.height() > tip {
                let r = put_body(&mut batch, &lock.block);
                batch.insert(&self.meta, LOCK, encode(&(lock.round, r, &lock.polka)));
            } else {
                batch.remove(&self.meta, LOCK);
            }
        }
        let mut proposals = 0;
        for kv in self.signed.iter() {
            let (k, v) = kv?;
            let finished = k.len() >= 8 && u64::from_be_bytes(k[..8].try_into().unwrap_or_default()) <= tip;
            let message: Signed = decode(&v, "format-3 signed message")?;
            match message {
                Signed::Proposal(sp) => {
                    batch.insert(&self.meta, [BACKUP_SIGNED_3.as_bytes(), &k].concat(), v.to_vec());
                    if finished {
                        batch.remove(&self.signed, k);
                    } else {
                        let r = put_body(&mut batch, &sp.proposal.block);
                        batch.insert(&self.signed, k, encode(&StoredSigned::proposal(&sp, r)));
                        proposals += 1;
                    }
                }
                // Stored alike in both formats.
                Signed::Vote(_) => {}
            }
        }
        let bodies = put.len();
        batch.insert(&self.meta, BODIES_FROM, encode(&(tip + 1)));
        batch.insert(&self.meta, BACKUP_FORMAT_3, encode(&3u32));
        batch.insert(&self.meta, FORMAT_KEY, encode(&FORMAT));
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        tracing::info!(
            tip = tip,
            bodies,
            proposals,
            "data dir migrated from format 3 to {FORMAT}: a block's bytes are written once, the lock and the signed \
             proposals name it by hash; the blocks up to the tip are read where they are; the format-3 entries \
             replaced are kept under backup/3/; releases of format 3 no longer open this data dir"
        );
        Ok(())
    }

    /// Block bodies this store wrote since it was opened: one per block,
    /// however many records name it.
    pub fn body_writes(&self) -> u64 {
        self.body_writes.load(Ordering::Relaxed)
    }

    /// Puts `block`'s body into `batch` unless the store holds it already;
    /// its reference, and whether it was put.
    fn put_body(&self, batch: &mut fjall::Batch, block: &Block) -> Result<(BodyRef, bool), StoreError> {
        let r = BodyRef::of(block);
        if self.bodies.contains_key(r.key())? {
            return Ok((r, false));
        }
        batch.insert(&self.bodies, r.key(), encode(block));
        Ok((r, true))
    }

    fn body(&self, r: BodyRef) -> Result<Option<Block>, StoreError> {
        self.bodies.get(r.key())?.map(|b| decode(&b, "block")).transpose()
    }

    /// Commits `batch` and fsyncs it; counts the bodies it put.
    fn write(&self, batch: fjall::Batch, bodies: u64) -> Result<(), StoreError> {
        batch.commit()?;
        self.keyspace.persist(PersistMode::SyncAll)?;
        self.body_writes.fetch_add(bodies, Ordering::Relaxed);
        Ok(())
    }

    /// The block committed at `height`, by reference, from its certificate
    /// (which starts with its height, round and block hash).
    fn committed_ref(&self, height: Height) -> Result<Option<BodyRef>, StoreError> {
        let Some(cert) = self.certs.get(height.to_be_bytes())? else { return Ok(None) };
        let ((_, _, hash), _): ((Height, Round, Hash), usize) = bincode::decode_from_slice(&cert, BINCODE)
            .map_err(|e| StoreError::Corrupt { what: "certificate", reason: e.to_string() })?;
        Ok(Some(BodyRef { height, hash }))
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
            if h < self.legacy_below {
                batch.remove(&self.blocks, h.to_be_bytes());
            } else if let Some(r) = self.committed_ref(h)? {
                batch.remove(&self.bodies, r.key());
            }
            batch.remove(&self.certs, h.to_be_bytes());
        }
        batch.insert(&self.meta, EARLIEST, encode(&end));
        self.write(batch, 0)?;
        Ok(end)
    }

    /// Seals the in-memory tables so they are flushed to disk, which lets the
    /// journals behind them be removed and compaction drop what was pruned.
    /// Without it, a node with small blocks keeps every write of the last
    /// 16 MiB per partition in its journal, pruned or not.
    pub(crate) fn seal(&self) -> Result<(), StoreError> {
        for p in [&self.blocks, &self.bodies, &self.certs, &self.meta, &self.signed, &self.states] {
            p.rotate_memtable()?;
        }
        Ok(())
    }

    /// Seals the tables and rewrites the blocks, bodies, certificates and
    /// signed messages into one sorted run each, dropping what was removed: a removal
    /// leaves a marker on disk until a compaction reaches the last level, so
    /// without this a pruning node still grows by a few dozen bytes a height.
    /// Rewrites what the partitions hold: the caller runs it once as many
    /// heights were pruned as are kept, so it costs O(1) per pruned block.
    pub(crate) fn compact(&self) -> Result<(), StoreError> {
        self.seal()?;
        for p in [&self.blocks, &self.bodies, &self.certs, &self.signed] {
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
    /// A proposal's block and the lock's are written unless the store holds
    /// them already; the records name them by hash.
    pub(crate) fn record_signed(
        &self,
        record: SignRecord,
        message: &Signed,
        lock: Option<&Lock>,
    ) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        let mut bodies = 0;
        batch.insert(&self.meta, LAST_SIGNED, encode(&record));
        let stored = match message {
            Signed::Proposal(sp) => {
                let (r, put) = self.put_body(&mut batch, &sp.proposal.block)?;
                bodies += u64::from(put);
                encode(&StoredSigned::proposal(sp, r))
            }
            Signed::Vote(_) => encode(message),
        };
        batch.insert(&self.signed, signed_key(record), stored);
        if let Some(lock) = lock {
            let (r, put) = match message {
                // A proposal's own block, put above in this batch.
                Signed::Proposal(sp) if sp.proposal.block.hash() == lock.block.hash() => {
                    (BodyRef::of(&lock.block), false)
                }
                _ => self.put_body(&mut batch, &lock.block)?,
            };
            bodies += u64::from(put);
            self.drop_superseded_lock_body(&mut batch, r)?;
            batch.insert(&self.meta, LOCK, encode(&(lock.round, r, &lock.polka)));
        }
        self.write(batch, bodies)
    }

    /// Puts into `batch` the removal of the body of the lock that `new`
    /// replaces, where it is of the same height, another block, and named by
    /// none of this height's signed proposals: a node whose lock moves round
    /// after round at one height holds one locked body, not one per round.
    fn drop_superseded_lock_body(&self, batch: &mut fjall::Batch, new: BodyRef) -> Result<(), StoreError> {
        let Some(bytes) = self.meta.get(LOCK)? else { return Ok(()) };
        let old = decode::<StoredLock>(&bytes, "lock")?.block;
        if old.height != new.height || old == new {
            return Ok(());
        }
        for kv in self.signed.prefix(old.height.to_be_bytes()) {
            let (_, v) = kv?;
            if let StoredSigned::Proposal { block, .. } = decode(&v, "signed message")? {
                if block == old {
                    return Ok(());
                }
            }
        }
        batch.remove(&self.bodies, old.key());
        Ok(())
    }

    /// The lock held when the node last precommitted a value, if any. Callers
    /// check its height: a lock of a finished height means nothing, and one
    /// whose block did not commit at that height is not returned (its body
    /// went with the height's commit).
    pub(crate) fn lock(&self) -> Result<Option<Lock>, StoreError> {
        let Some(bytes) = self.meta.get(LOCK)? else { return Ok(None) };
        let StoredLock { round, block, polka } = decode(&bytes, "lock")?;
        match self.body(block)? {
            Some(body) => Ok(Some(Lock { round, block: body, polka })),
            None if block.height <= self.tip()?.map_or(0, |t| t.height) => Ok(None),
            None => Err(StoreError::Corrupt {
                what: "lock",
                reason: format!("its block {} of height {} is not stored", block.hash.short(), block.height),
            }),
        }
    }

    /// What we signed at `height`, in signing order.
    pub(crate) fn own_signed(&self, height: Height) -> Result<Vec<Signed>, StoreError> {
        let mut out = Vec::new();
        for kv in self.signed.prefix(height.to_be_bytes()) {
            let (_, v) = kv?;
            out.push(match decode(&v, "signed message")? {
                StoredSigned::Vote(v) => Signed::Vote(v),
                StoredSigned::Proposal { height, round, block, valid_round, proposer, signature } => {
                    let Some(body) = self.body(block)? else {
                        return Err(StoreError::Corrupt {
                            what: "signed message",
                            reason: format!(
                                "the block {} of a proposal at height {height} is not stored",
                                block.hash.short()
                            ),
                        });
                    };
                    let proposal = Proposal { height, round, block: body, valid_round, proposer };
                    Signed::Proposal(SignedProposal { proposal, signature })
                }
            });
        }
        Ok(out)
    }

    /// Puts into `batch` what a block at the tip is stored as: the block
    /// (unless the store holds it), its certificate, the tip record and the
    /// membership it leaves. Whether it put the block.
    fn put_tip(
        &self,
        batch: &mut fjall::Batch,
        c: &Committed,
        membership: &MembershipState,
    ) -> Result<bool, StoreError> {
        let key = c.block.height().to_be_bytes();
        let record =
            TipRecord { height: c.block.height(), hash: c.block.hash(), timestamp_ms: c.block.header.timestamp_ms };
        let put = self.put_committed_body(batch, &c.block)?;
        batch.insert(&self.certs, key, encode(&c.cert));
        batch.insert(&self.meta, TIP, encode(&record));
        batch.insert(&self.meta, MEMBERS, encode(membership));
        Ok(put)
    }

    /// Puts into `batch` a committed block's body unless the store holds it
    /// (a signed proposal or the lock wrote it), and the removal of the other
    /// bodies of its height: the rounds of that height that did not commit.
    /// One read of the height's bodies; whether it put the block.
    fn put_committed_body(&self, batch: &mut fjall::Batch, block: &Block) -> Result<bool, StoreError> {
        let keep = BodyRef::of(block).key();
        let mut held = false;
        for kv in self.bodies.prefix(block.height().to_be_bytes()) {
            let (k, _) = kv?;
            if *k == keep[..] {
                held = true;
            } else {
                batch.remove(&self.bodies, k);
            }
        }
        if !held {
            batch.insert(&self.bodies, keep, encode(block));
        }
        Ok(!held)
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
        let put = self.put_tip(&mut batch, c, membership)?;
        if self.state_changed(membership)? {
            batch.insert(&self.states, key, encode(membership));
        }
        // Signed messages of finished heights are of no further use (the
        // blocks of this height's rounds that did not commit went with
        // `put_tip`).
        for kv in self.signed.range(..(height + 1).to_be_bytes()) {
            let (k, _) = kv?;
            batch.remove(&self.signed, k);
        }
        self.write(batch, u64::from(put))
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
        let mut bodies = 0;
        for (c, membership) in chain {
            let height = c.block.height();
            if height != tip + 1 {
                return Err(StoreError::NotNext { got: height, tip });
            }
            tip = height;
            let key = height.to_be_bytes();
            bodies += u64::from(self.put_committed_body(&mut batch, &c.block)?);
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
        self.write(batch, bodies)
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
        let put = self.put_tip(&mut batch, c, after)?;
        batch.insert(&self.meta, EARLIEST, encode(&height));
        batch.insert(&self.states, (height - 1).to_be_bytes(), encode(before));
        batch.insert(&self.states, key, encode(after));
        self.write(batch, u64::from(put))
    }

    /// The block committed at `height` with its certificate: two reads, the
    /// certificate (which names the block's hash) and the body.
    pub fn block(&self, height: Height) -> Result<Option<Committed>, StoreError> {
        let key = height.to_be_bytes();
        let Some(cert) = self.certs.get(key)? else { return Ok(None) };
        let cert = decode::<Certificate>(&cert, "certificate")?;
        let body = if height < self.legacy_below {
            self.blocks.get(key)?
        } else {
            self.bodies.get(BodyRef { height, hash: cert.block }.key())?
        };
        let Some(block) = body else {
            return Err(StoreError::Corrupt { what: "block", reason: format!("missing at height {height}") });
        };
        Ok(Some(Committed { block: decode::<Block>(&block, "block")?, cert }))
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
            txs: txs.into_iter().map(Into::into).collect(),
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
                txs: txs.into_iter().map(Into::into).collect(),
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
        let entries: Vec<_> = entries.iter().map(|(k, v)| ("meta", k.as_bytes().to_vec(), v.clone())).collect();
        write_raw(dir, &entries);
    }

    /// Writes entries (partition, key, value) straight into a data dir, as
    /// another release would.
    fn write_raw(dir: &Path, entries: &[(&str, Vec<u8>, Vec<u8>)]) {
        let keyspace = Config::new(dir).open().unwrap();
        for (partition, k, v) in entries {
            let p = keyspace.open_partition(partition, PartitionCreateOptions::default()).unwrap();
            p.insert(k, v).unwrap();
        }
        keyspace.persist(PersistMode::SyncAll).unwrap();
    }

    fn prevote(height: Height, round: Round, block: Option<Hash>) -> SignedVote {
        let vote = crate::chain::vote::Vote {
            kind: crate::chain::vote::VoteKind::Prevote,
            height,
            round,
            block,
            voter: NodeId([1; 32]),
        };
        SignedVote { vote, signature: [0; 64] }
    }

    fn precommit(height: Height, round: Round, block: Option<Hash>) -> Signed {
        let mut v = prevote(height, round, block);
        v.vote.kind = crate::chain::vote::VoteKind::Precommit;
        Signed::Vote(v)
    }

    fn proposal(block: &Block, round: Round) -> Signed {
        let proposal = Proposal {
            height: block.height(),
            round,
            block: block.clone(),
            valid_round: None,
            proposer: NodeId([1; 32]),
        };
        Signed::Proposal(SignedProposal { proposal, signature: [7; 64] })
    }

    /// `committed(height, prev)` with another timestamp: another block of
    /// the same height, as a later round proposes.
    fn other_block(height: Height, prev: Hash, round: Round) -> Committed {
        let mut c = committed(height, prev);
        c.block.header.round = round;
        c.block.header.timestamp_ms += 1_000;
        c.cert = Certificate { height, round, block: c.block.hash(), precommits: vec![] };
        c
    }

    fn record(height: Height, round: Round, step: Step) -> SignRecord {
        SignRecord { height, round, step }
    }

    /// The proposer's path: it signs a proposal of a block, prevotes it,
    /// locks on it with its precommit and commits it. The block's bytes are
    /// written once, with the proposal; the lock and the commit name it.
    #[test]
    fn a_block_proposed_locked_and_committed_here_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let prev = genesis_hash(&[0; 32]);
        let c = committed(1, prev);
        let hash = c.block.hash();
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_signed(record(1, 0, Step::Propose), &proposal(&c.block, 0), None).unwrap();
            assert_eq!(store.body_writes(), 1, "the proposal writes the block");
            store.record_signed(record(1, 0, Step::Prevote), &Signed::Vote(prevote(1, 0, Some(hash))), None).unwrap();
            let lock = Lock { round: 0, block: c.block.clone(), polka: vec![prevote(1, 0, Some(hash))] };
            store.record_signed(record(1, 0, Step::Precommit), &precommit(1, 0, Some(hash)), Some(&lock)).unwrap();
            assert_eq!(store.body_writes(), 1, "the lock names it");
            assert_eq!(store.lock().unwrap(), Some(lock.clone()), "the lock gives the block back");
            assert_eq!(store.own_signed(1).unwrap()[0], proposal(&c.block, 0), "the proposal gives it back");
            store.commit(&c, &membership(1)).unwrap();
            assert_eq!(store.body_writes(), 1, "the commit names it");
            assert_eq!(store.bodies.len().unwrap(), 1);
            assert!(store.blocks.is_empty().unwrap(), "a store of format 4 writes no block by height");
            assert_eq!(store.block(1).unwrap(), Some(c.clone()));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.block(1).unwrap(), Some(c.clone()), "after a reopen");
        assert_eq!(store.range(1, 10, usize::MAX).unwrap(), vec![c.clone()]);
        assert_eq!(store.lock().unwrap().map(|l| l.block), Some(c.block), "a lock of the committed block");
        assert!(store.own_signed(1).unwrap().is_empty(), "the height's signed messages go with its commit");
    }

    /// A node that locks on another's proposal writes the block with its
    /// lock; one that commits a block it never locked on (a synced block, or
    /// one decided without its precommit) writes it with the commit.
    #[test]
    fn a_block_is_written_the_first_time_the_node_persists_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = committed(1, genesis_hash(&[0; 32]));
        let hash = first.block.hash();
        let lock = Lock { round: 0, block: first.block.clone(), polka: vec![] };
        store.record_signed(record(1, 0, Step::Prevote), &Signed::Vote(prevote(1, 0, Some(hash))), None).unwrap();
        assert_eq!(store.body_writes(), 0, "a vote names a block by hash");
        store.record_signed(record(1, 0, Step::Precommit), &precommit(1, 0, Some(hash)), Some(&lock)).unwrap();
        assert_eq!(store.body_writes(), 1, "the lock writes it");
        store.commit(&first, &membership(1)).unwrap();
        assert_eq!(store.body_writes(), 1, "the commit does not");
        let second = committed(2, hash);
        store.commit(&second, &membership(2)).unwrap();
        assert_eq!(store.body_writes(), 2, "a block committed without a lock is written by its commit");
        assert_eq!(store.range(1, 10, usize::MAX).unwrap(), vec![first, second]);
    }

    /// A restarted node re-proposes its locked block: the lock gives it back
    /// whatever round wrote it. The bodies of the rounds that did not commit
    /// go with the height's commit, and a lock of a block that did not
    /// commit is then no lock.
    #[test]
    fn the_bodies_of_rounds_that_did_not_commit_are_removed_when_the_height_commits() {
        let dir = tempfile::tempdir().unwrap();
        let prev = genesis_hash(&[0; 32]);
        let (a, b) = (committed(1, prev), other_block(1, prev, 1));
        let lock_b = Lock { round: 1, block: b.block.clone(), polka: vec![prevote(1, 1, Some(b.block.hash()))] };
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_signed(record(1, 0, Step::Propose), &proposal(&a.block, 0), None).unwrap();
            store
                .record_signed(record(1, 1, Step::Precommit), &precommit(1, 1, Some(b.block.hash())), Some(&lock_b))
                .unwrap();
            assert_eq!(store.body_writes(), 2);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lock().unwrap(), Some(lock_b.clone()), "the lock of round 1 after a restart");
        assert_eq!(store.own_signed(1).unwrap(), vec![proposal(&a.block, 0), precommit(1, 1, Some(b.block.hash()))]);
        store.commit(&b, &membership(1)).unwrap();
        assert_eq!(store.bodies.len().unwrap(), 1, "round 0's block is gone with the height");
        assert_eq!(store.block(1).unwrap(), Some(b.clone()));
        // At height 2 the node locks on a block that does not commit.
        let (c, d) = (committed(2, b.block.hash()), other_block(2, b.block.hash(), 1));
        let lock_c = Lock { round: 0, block: c.block.clone(), polka: vec![] };
        store
            .record_signed(record(2, 0, Step::Precommit), &precommit(2, 0, Some(c.block.hash())), Some(&lock_c))
            .unwrap();
        store.commit(&d, &membership(2)).unwrap();
        assert_eq!(store.bodies.len().unwrap(), 2, "one body a committed height");
        assert_eq!(store.lock().unwrap(), None, "a lock of a finished height whose block did not commit");
        assert_eq!(store.body_writes(), 2, "since the reopen: c with its lock, d with its commit");
    }

    /// A lock that moves to another block at the same height leaves one
    /// locked body, not one per round; a body a signed proposal names stays.
    #[test]
    fn a_lock_that_moves_leaves_the_body_it_replaces_only_if_a_proposal_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let prev = genesis_hash(&[0; 32]);
        let blocks: Vec<Block> = (0..4).map(|r| other_block(1, prev, r).block).collect();
        let store = Store::open(dir.path()).unwrap();
        let lock_on = |round: Round| {
            let lock = Lock { round, block: blocks[round as usize].clone(), polka: vec![] };
            let vote = precommit(1, round, Some(lock.block.hash()));
            store.record_signed(record(1, round, Step::Precommit), &vote, Some(&lock)).unwrap();
        };
        lock_on(0);
        lock_on(1);
        assert_eq!(store.bodies.len().unwrap(), 1, "round 0's locked body is replaced");
        store.record_signed(record(1, 2, Step::Propose), &proposal(&blocks[2], 2), None).unwrap();
        lock_on(2);
        lock_on(3);
        assert_eq!(store.bodies.len().unwrap(), 2, "round 2's block stays with its proposal, round 1's goes");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lock().unwrap().map(|l| l.block), Some(blocks[3].clone()));
        assert!(store.own_signed(1).unwrap().contains(&proposal(&blocks[2], 2)), "the proposal gives its block back");
    }

    /// A data dir as format 3 wrote it: blocks by height, a lock and a signed
    /// proposal holding the block of the next height. Migrated in one open:
    /// the blocks are read where they are, the lock and the proposal give
    /// their block back from one body, and what was replaced is kept.
    #[test]
    fn format_3_is_migrated_in_place_the_lock_and_proposal_naming_one_body() {
        let dir = tempfile::tempdir().unwrap();
        let mut prev = genesis_hash(&[0; 32]);
        let mut chain = Vec::new();
        let mut raw: Vec<(&str, Vec<u8>, Vec<u8>)> = Vec::new();
        for h in 1..=5 {
            let c = committed(h, prev);
            prev = c.block.hash();
            raw.push(("blocks", h.to_be_bytes().to_vec(), encode(&c.block)));
            raw.push(("certs", h.to_be_bytes().to_vec(), encode(&c.cert)));
            chain.push(c);
        }
        let next = committed(6, prev);
        let hash = next.block.hash();
        let lock = Lock { round: 0, block: next.block.clone(), polka: vec![prevote(6, 0, Some(hash))] };
        let (propose, vote) = (proposal(&next.block, 0), precommit(6, 0, Some(hash)));
        let tip = TipRecord { height: 5, hash: prev, timestamp_ms: 5 };
        let (lock_bytes, propose_bytes) = (encode(&lock), encode(&propose));
        let propose_key = signed_key(record(6, 0, Step::Propose)).to_vec();
        raw.extend([
            ("meta", FORMAT_KEY.as_bytes().to_vec(), encode(&3u32)),
            ("meta", TIP.as_bytes().to_vec(), encode(&tip)),
            ("meta", MEMBERS.as_bytes().to_vec(), encode(&membership(5))),
            ("meta", LAST_SIGNED.as_bytes().to_vec(), encode(&record(6, 0, Step::Precommit))),
            ("meta", LOCK.as_bytes().to_vec(), lock_bytes.clone()),
            ("signed", propose_key.clone(), propose_bytes.clone()),
            ("signed", signed_key(record(6, 0, Step::Precommit)).to_vec(), encode(&vote)),
        ]);
        write_raw(dir.path(), &raw);
        for open in ["the migrating open", "a later open"] {
            let store = Store::open(dir.path()).unwrap();
            let format: u32 = decode(&store.meta.get(FORMAT_KEY).unwrap().unwrap(), "format").unwrap();
            assert_eq!(format, FORMAT, "{open}");
            assert_eq!(store.tip().unwrap(), Some(tip), "{open}");
            assert_eq!(store.range(1, 10, usize::MAX).unwrap(), chain, "{open}: the blocks of format 3");
            assert_eq!(store.lock().unwrap(), Some(lock.clone()), "{open}");
            assert_eq!(store.own_signed(6).unwrap(), vec![propose.clone(), vote.clone()], "{open}");
            assert_eq!(store.bodies.len().unwrap(), 1, "{open}: the lock's and the proposal's block, once");
            assert_eq!(store.meta.get(BACKUP_LOCK_3).unwrap().unwrap().to_vec(), lock_bytes, "{open}");
            let backup = [BACKUP_SIGNED_3.as_bytes(), &propose_key].concat();
            assert_eq!(store.meta.get(backup).unwrap().unwrap().to_vec(), propose_bytes, "{open}");
        }
        let store = Store::open(dir.path()).unwrap();
        store.commit(&next, &membership(6)).unwrap();
        assert_eq!(store.body_writes(), 0, "the locked block is held: its commit writes no body");
        chain.push(next);
        assert_eq!(store.range(1, 10, usize::MAX).unwrap(), chain, "format 3's blocks and format 4's");
        assert_eq!(store.prune_below(6, 100).unwrap(), 6);
        assert!(store.blocks.is_empty().unwrap(), "format 3's blocks pruned from where they are");
        assert_eq!(store.block(5).unwrap(), None);
        assert_eq!(store.range(6, 10, usize::MAX).unwrap(), chain[5..]);
    }

    /// What a restart reads is whole after any prefix of a node's writes (a
    /// crash between any two of them): the lock and the signed proposals of
    /// the next height give their block back, every held height gives its
    /// block, and `bodies` holds exactly those blocks: one per held height,
    /// plus the next height's locked and proposed ones.
    #[test]
    fn a_crash_between_any_two_writes_leaves_every_named_body_and_no_other() {
        let prev = genesis_hash(&[0; 32]);
        let [a, b] = [0, 1].map(|r| other_block(1, prev, r));
        // A re-proposed at round 3 commits with a certificate of that round.
        let a_at_3 = Committed {
            block: a.block.clone(),
            cert: Certificate { height: 1, round: 3, block: a.block.hash(), precommits: vec![] },
        };
        let h2 = a.block.hash();
        let [c, d, e] = [0, 1, 2].map(|r| other_block(2, h2, r));
        let f = committed(3, e.block.hash());
        let lock_of = |round: Round, block: &Block| Lock { round, block: block.clone(), polka: vec![] };
        type Op<'a> = Box<dyn Fn(&Store) + 'a>;
        let locking = |round: Round, block: &'_ Block| -> Op<'_> {
            let lock = lock_of(round, block);
            let vote = precommit(block.height(), round, Some(block.hash()));
            Box::new(move |s: &Store| {
                s.record_signed(record(lock.block.height(), round, Step::Precommit), &vote, Some(&lock)).unwrap()
            })
        };
        let ops: Vec<Op> = vec![
            Box::new(|s: &Store| s.record_signed(record(1, 0, Step::Propose), &proposal(&a.block, 0), None).unwrap()),
            Box::new(|s: &Store| {
                s.record_signed(record(1, 0, Step::Prevote), &Signed::Vote(prevote(1, 0, Some(h2))), None).unwrap()
            }),
            locking(0, &a.block),
            locking(1, &b.block),
            Box::new(|s: &Store| s.record_signed(record(1, 2, Step::Propose), &proposal(&a.block, 2), None).unwrap()),
            locking(3, &a.block),
            Box::new(|s: &Store| s.commit(&a_at_3, &membership(1)).unwrap()),
            locking(0, &c.block),
            locking(1, &d.block),
            Box::new(|s: &Store| s.commit(&e, &membership(2)).unwrap()),
            Box::new(|s: &Store| s.commit(&f, &membership(3)).unwrap()),
            Box::new(|s: &Store| assert_eq!(s.prune_below(3, 100).unwrap(), 3)),
        ];
        for done in 0..=ops.len() {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path()).unwrap();
                ops[..done].iter().for_each(|op| op(&store));
            }
            let store = Store::open(dir.path()).unwrap();
            let tip = store.tip().unwrap().map_or(0, |t| t.height);
            let earliest = store.earliest().unwrap();
            let mut named = HashSet::new();
            for m in store.own_signed(tip + 1).unwrap_or_else(|e| panic!("after {done} writes: {e}")) {
                if let Signed::Proposal(sp) = m {
                    named.insert(sp.proposal.block.hash());
                }
            }
            match store.lock().unwrap_or_else(|e| panic!("after {done} writes: {e}")) {
                Some(l) if l.block.height() == tip + 1 => {
                    named.insert(l.block.hash());
                }
                _ => {}
            }
            let held = if tip == 0 { 0 } else { tip + 1 - earliest };
            for h in earliest..=tip {
                let got = store.block(h).unwrap_or_else(|e| panic!("after {done} writes: {e}"));
                assert!(got.is_some_and(|c| c.cert.block == c.block.hash()), "after {done} writes: height {h}");
            }
            assert_eq!(
                store.bodies.len().unwrap() as u64,
                held + named.len() as u64,
                "after {done} writes: {held} held heights and {} named bodies of height {}",
                named.len(),
                tip + 1
            );
        }
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
        let body = BodyRef::of(&block);
        for (prevotes, accepted) in [(MAX_MEMBERS, true), (MAX_MEMBERS + 1, false)] {
            let dir = tempfile::tempdir().unwrap();
            let lock = Lock { round: 2, block: block.clone(), polka: vec![vote.clone(); prevotes] };
            write_raw(
                dir.path(),
                &[
                    ("meta", FORMAT_KEY.as_bytes().to_vec(), encode(&FORMAT)),
                    ("meta", LOCK.as_bytes().to_vec(), encode(&(lock.round, body, &lock.polka))),
                    ("bodies", body.key().to_vec(), encode(&block)),
                ],
            );
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
        for open in ["the migrating open (2 to 3 to 4)", "a later open"] {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.membership().unwrap(), Some(s.clone()), "{open}: the same state, an empty schedule");
            let backup: u32 = decode(&store.meta.get(BACKUP_FORMAT_3).unwrap().unwrap(), "format").unwrap();
            assert_eq!(backup, 3, "{open}: migrated through format 3");
            let from: Height = decode(&store.meta.get(BODIES_FROM).unwrap().unwrap(), "bodies_from").unwrap();
            assert_eq!(from, 3, "{open}: the blocks up to the tip stay by height");
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
