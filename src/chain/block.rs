//! Blocks: a header and opaque transactions, hashed with SHA-256 over the
//! canonical (bincode) encoding of the header.

use std::fmt;

use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use bytes::Bytes;

use super::members::{ChangeError, MembershipState, SignedApproval, MAX_CHANGES_PER_BLOCK};
use crate::codec::{decode_seq, BINCODE};
use crate::identity::{hex, NodeId};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, bincode::Encode, bincode::Decode)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(parts: &[&[u8]]) -> Hash {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Hash(out)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

pub(crate) use super::height::{Height, Round};

/// Decoded by hand, as [`Block`] is, to bound `changes` before allocating it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode)]
pub struct Header {
    pub height: Height,
    /// The round in which this block was first proposed.
    pub round: Round,
    pub prev_hash: Hash,
    pub timestamp_ms: u64,
    pub proposer: NodeId,
    /// SHA-256 over the transactions' hashes, in order.
    pub tx_root: Hash,
    /// Membership approvals ([`super::members`]), checked against the chain's
    /// member state at this height; most blocks carry none.
    pub changes: Vec<SignedApproval>,
}

/// Encoded and decoded by hand, in the bytes the derived forms of a
/// `Vec<Vec<u8>>` of transactions use (a varint count, then each transaction
/// as a varint length and its bytes): a block's encoding, on the wire and in
/// the store, is what it always was. The decoding bounds the count of `txs`
/// before anything is allocated for them, by the block rule's own
/// [`MAX_BLOCK_TXS`], so no valid block is refused (as
/// [`crate::codec::decode_seq`] does); empty transactions decode, as they
/// always did: a block may hold them.
///
/// A decoded block's transactions are slices of one buffer of their bytes
/// alone ([`decode_txs`]), not an allocation each; one built by this node (its
/// own proposal, a rebuilt compact one) holds each transaction in the buffer
/// of the copy taken from the mempool (or from a `Txs` answer). Either way a
/// transaction's bytes are shared, not copied, by every clone of the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<Bytes>,
}

impl Encode for Block {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.header.encode(e)?;
        // As `Vec<Vec<u8>>` encodes: the count, then each transaction as `[u8]`
        // (its length, then its bytes).
        (self.txs.len() as u64).encode(e)?;
        for tx in &self.txs {
            tx.as_ref().encode(e)?;
        }
        Ok(())
    }
}

impl<C> Decode<C> for Header {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(Header {
            height: Decode::decode(d)?,
            round: Decode::decode(d)?,
            prev_hash: Decode::decode(d)?,
            timestamp_ms: Decode::decode(d)?,
            proposer: Decode::decode(d)?,
            tx_root: Decode::decode(d)?,
            changes: decode_seq(d, MAX_CHANGES_PER_BLOCK, "membership approvals in a block")?,
        })
    }
}
bincode::impl_borrow_decode!(Header);

impl<C> Decode<C> for Block {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(Block { header: Decode::decode(d)?, txs: decode_txs(d)? })
    }
}
bincode::impl_borrow_decode!(Block);

/// What `decode_seq::<Vec<u8>>` decodes (the count bounded by
/// [`MAX_BLOCK_TXS`]; the count claims a handle, `size_of::<Bytes>()`, for
/// each transaction on the decoder's limit, as a `Vec<Bytes>` would), into one buffer
/// of the transactions' bytes and a slice of it for each: a few allocations
/// per block (the buffer's growth, at most one per doubling up to the frame's
/// size; the list of slices), none per transaction. The buffer holds the
/// transactions' bytes alone, fitted to their total, so the block keeps
/// nothing of the frame it came in and takes what its transactions' lengths
/// say, plus a handle of `size_of::<Bytes>()` each (what the consensus core's
/// budget of proposals held counts, `held_tx_bytes`).
fn decode_txs<D: Decoder>(d: &mut D) -> Result<Vec<Bytes>, DecodeError> {
    let count = u64::decode(d)?;
    if count > MAX_BLOCK_TXS as u64 {
        return Err(DecodeError::Other("transactions in a block"));
    }
    let count = count as usize;
    d.claim_container_read::<Bytes>(count)?;
    let mut ends = Vec::with_capacity(count);
    let mut buf: Vec<u8> = Vec::new();
    for _ in 0..count {
        // As bincode's `Vec` decoding: the container's claim is handed back
        // per element, which claims what it decodes (its length and bytes).
        d.unclaim_bytes_read(std::mem::size_of::<Bytes>());
        let len = u64::decode(d)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
        d.claim_container_read::<u8>(len)?;
        let start = buf.len();
        buf.resize(start + len, 0);
        d.reader().read(&mut buf[start..])?;
        ends.push(buf.len());
    }
    buf.shrink_to_fit();
    let buf = Bytes::from(buf);
    let mut start = 0;
    Ok(ends
        .into_iter()
        .map(|end| {
            let tx = buf.slice(start..end);
            start = end;
            tx
        })
        .collect())
}

// The block limits are the network file's (`genesis`); every block rule here obeys them.
pub use super::genesis::{Limits, MAX_BLOCK_BYTES, MAX_BLOCK_TXS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block height {got}, expected {expected}")]
    WrongHeight { got: Height, expected: Height },
    #[error("block does not extend our tip (prev {got:?}, tip {expected:?})")]
    WrongParent { got: Hash, expected: Hash },
    #[error("block timestamp {got} not after its parent's {parent}")]
    TimestampNotIncreasing { got: u64, parent: u64 },
    #[error("block timestamp {got} is {ahead_ms} ms ahead of our clock")]
    TimestampInFuture { got: u64, ahead_ms: u64 },
    #[error("block proposer {got:?} is not the proposer of round {round}")]
    WrongProposer { got: NodeId, round: Round },
    #[error("transaction root does not match the transactions")]
    TxRootMismatch,
    #[error("block carries {count} transactions, {bytes} bytes: over the limit")]
    TooLarge { count: usize, bytes: usize },
    #[error("block of round {block_round} proposed as a fresh value in round {round}")]
    NotFresh { block_round: Round, round: Round },
    #[error("block of round {block_round} carried by round {round}, before it existed")]
    NewerThanRound { block_round: Round, round: Round },
    #[error("membership approval #{index} refused: {reason}")]
    BadChange { index: usize, reason: ChangeError },
    #[error(
        "transaction #{index} repeats an earlier one (from protocol version 4, a block's transactions are distinct)"
    )]
    RepeatedTx { index: usize },
}

impl Header {
    pub fn hash(&self) -> Hash {
        let mut buf = Vec::with_capacity(128);
        // Encoding a header into a Vec cannot fail: no limit is near.
        let _ = bincode::encode_into_std_write(self, &mut buf, BINCODE);
        Hash::of(&[b"masternode/header/v2\0", &buf])
    }
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn height(&self) -> Height {
        self.header.height
    }

    pub(crate) fn tx_bytes(&self) -> usize {
        self.txs.iter().map(|t| t.len()).sum()
    }

    /// Checks the block against its parent and the rules that need no state beyond
    /// it; `proposer_of(round)` gives the proposer of a round at this height. The
    /// transactions are hashed against the root only when `txs` says the caller
    /// has not.
    #[allow(clippy::too_many_arguments)]
    pub fn validate(
        &self,
        parent_hash: Hash,
        parent_height: Height,
        parent_ts: u64,
        proposer_of: impl Fn(Round) -> NodeId,
        now_ms: Option<u64>,
        limits: &Limits,
        txs: TxCheck,
    ) -> Result<(), BlockError> {
        let h = &self.header;
        if h.height != parent_height + 1 {
            return Err(BlockError::WrongHeight { got: h.height, expected: parent_height + 1 });
        }
        if h.prev_hash != parent_hash {
            return Err(BlockError::WrongParent { got: h.prev_hash, expected: parent_hash });
        }
        if h.timestamp_ms <= parent_ts {
            return Err(BlockError::TimestampNotIncreasing { got: h.timestamp_ms, parent: parent_ts });
        }
        if let Some(now) = now_ms {
            if h.timestamp_ms > now + limits.max_clock_drift_ms {
                return Err(BlockError::TimestampInFuture { got: h.timestamp_ms, ahead_ms: h.timestamp_ms - now });
            }
        }
        if h.proposer != proposer_of(h.round) {
            return Err(BlockError::WrongProposer { got: h.proposer, round: h.round });
        }
        if self.txs.len() > limits.max_block_txs || self.tx_bytes() > limits.max_block_bytes {
            return Err(BlockError::TooLarge { count: self.txs.len(), bytes: self.tx_bytes() });
        }
        if txs == TxCheck::Needed && tx_root(&self.txs) != h.tx_root {
            return Err(BlockError::TxRootMismatch);
        }
        Ok(())
    }
}

/// Whether [`Block::validate`] still has to hash the transactions against the
/// header's `tx_root`, or the caller already did (a proposal's transactions are
/// checked when it is authenticated, our own block's root is computed from
/// them): hashing every transaction once per block, not once per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxCheck {
    Needed,
    Done,
}

/// A transaction's id. A node computes it once per transaction, where the
/// transaction enters it (a submission, a gossiped or fetched transaction, a
/// synced block); the id then travels with it through the mempool, the compact
/// proposal, the block and its commit.
pub fn tx_hash(tx: &[u8]) -> Hash {
    #[cfg(feature = "fault-injection")]
    counts::TX_HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Hash::of(&[b"masternode/tx\0", tx])
}

/// What the regression guard counts on the commit path (built with the tests'
/// `fault-injection` feature only, so a release build carries none of it).
#[cfg(feature = "fault-injection")]
pub(crate) mod counts {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(crate) static TX_HASHES: AtomicU64 = AtomicU64::new(0);

    pub(crate) static STORE_BYTES: AtomicU64 = AtomicU64::new(0);

    /// Transactions hashed ([`super::tx_hash`]) by every node of this process
    /// since it started.
    pub fn tx_hashes() -> u64 {
        TX_HASHES.load(Ordering::Relaxed)
    }

    /// Bytes of the records every store of this process wrote for signatures
    /// and commits (blocks, certificates, locks, signed messages, meta).
    pub fn store_bytes() -> u64 {
        STORE_BYTES.load(Ordering::Relaxed)
    }

    pub(crate) fn wrote(bytes: usize) {
        STORE_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

pub fn tx_root<T: AsRef<[u8]>>(txs: &[T]) -> Hash {
    tx_root_of_ids(txs.len(), txs.iter().map(|t| tx_hash(t.as_ref())))
}

/// [`tx_root`], each transaction hashed once; with `look_for_repeats`, also the
/// first transaction equal to an earlier one (by id).
pub(crate) fn tx_root_and_repeat(txs: &[Bytes], look_for_repeats: bool) -> (Hash, Option<usize>) {
    if !look_for_repeats {
        return (tx_root(txs), None);
    }
    let (root, first_repeat, _) = tx_ids_root_and_repeat(txs, true);
    (root, first_repeat)
}

/// [`tx_root_and_repeat`], with the ids it computed: what a synced block's
/// commit takes its transactions out of the mempool by, so that they are
/// hashed once, not once to check the root and once more at the commit.
pub(crate) fn tx_ids_root_and_repeat(txs: &[Bytes], look_for_repeats: bool) -> (Hash, Option<usize>, Vec<Hash>) {
    let ids: Vec<Hash> = txs.iter().map(|t| tx_hash(t)).collect();
    let first_repeat = if look_for_repeats {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        ids.iter().position(|id| !seen.insert(*id))
    } else {
        None
    };
    (tx_root_of_ids(ids.len(), ids.iter().copied()), first_repeat, ids)
}

/// The root over `count` transaction ids ([`tx_hash`]es), in order: a compact
/// proposal's ids are checked against its header without their transactions.
pub fn tx_root_of_ids(count: usize, ids: impl Iterator<Item = Hash>) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"masternode/txs\0");
    ctx.update(&(count as u64).to_be_bytes());
    for id in ids {
        ctx.update(&id.0);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Hash(out)
}

/// SHA-256 over a membership state's canonical (bincode) encoding: what the
/// parent link of the next block commits to from protocol version 4
/// ([`parent_link`]). Every field is an ordered map, a set or a list in height
/// order, so equal states have equal digests.
pub fn members_digest(state: &MembershipState) -> Hash {
    let mut buf = Vec::with_capacity(1024);
    // Encoding into a Vec cannot fail: no limit is near.
    let _ = bincode::encode_into_std_write(state, &mut buf, BINCODE);
    Hash::of(&[b"masternode/members/v1\0", &buf])
}

/// What a block of `height` carries as `prev_hash` under the rules of
/// `version`: the parent's id before version 4; from version 4, SHA-256 over
/// the parent's id and the digest of the member state the parent leaves
/// ([`members_digest`]), so a block's id commits to
/// the member state it was decided under without a new header field.
pub fn parent_link(parent: Hash, members_digest: Hash, members_link: bool) -> Hash {
    if !members_link {
        return parent;
    }
    Hash::of(&[b"masternode/parent+members/v1\0", &parent.0, &members_digest.0])
}

/// The hash height 1 builds on: derived from the network id, so two networks never
/// share a chain.
pub fn genesis_hash(network_id: &[u8; 32]) -> Hash {
    Hash::of(&[b"masternode/genesis\0", network_id])
}
