//! Compact proposals: a proposal's block as its header and its transactions' ids.
//!
//! Every member already holds most of a block's transactions from the gossip, so
//! a proposal that carries them in full sends each one over every link twice and
//! makes every peer decode megabytes before it can vote. A compact proposal
//! carries the header and the ids (the [`tx_hash`]es, in block order, which the
//! header's `tx_root` commits to); a peer rebuilds the block from its mempool and
//! asks the sender for the rest in one `GetTxs` request (Bitcoin's compact blocks,
//! BIP 152; Narwhal separates data from consensus for the same reason). The
//! proposer signs the header's hash only, so a compact proposal carries the very
//! signature of the full one, and the rebuilt proposal goes to the consensus core
//! as a full one would, to be authenticated and validated there again. Sync still
//! sends full blocks.
//!
//! What this node refuses to rebuild is local policy, not a validity rule: a
//! full `Proposal`, or a synced block, that carries one transaction twice is
//! valid, as nodes of the previous release hold it to be, and making it invalid
//! is a change of the block rules to be activated at a height. A compact
//! proposal whose ids repeat is refused all the same, because rebuilding it
//! copies the transaction into every position that names it (a member's one
//! 64 KiB transaction named 20,000 times is 1.25 GiB at every peer), and no
//! honest proposer sends one: its mempool holds each transaction once, by hash.
//! At worst this node prevotes nil in that round and takes the block by sync if
//! the others commit it.
//!
//! What a lying member can do, and what comes of it:
//! * ids that do not hash to the header's root, more ids or approvals than a
//!   block may hold, a bad signature, a sender who is not the round's proposer:
//!   refused by [`CompactProposal::check`] before anything is looked up or
//!   fetched, and counted against the sender.
//! * an id twice: refused by the same check, before anything is looked up. The
//!   ids hash to the root of the header the proposer signed, so the signature
//!   proves the proposer named a transaction twice, whoever relayed it; it is
//!   counted against the proposer.
//! * ids of transactions whose bytes pass the block's limit: the rebuild counts
//!   the bytes it places, from the mempool ([`place_within`]) and from a `Txs`
//!   answer ([`Assembly::handle_txs`]), and refuses the proposal the moment the
//!   next transaction would pass `max_block_bytes`, before copying it. The
//!   transactions hash to the ids the proposer signed, so this too is counted
//!   against the proposer.
//! * ids of transactions nobody has, or withholding them: the fetch fails or
//!   times out and the proposal is dropped as if it never came; the round's
//!   propose timeout runs and the node prevotes nil.
//! * an answer with a transaction over the mempool's `max_tx_bytes`: the answer
//!   is refused as a whole ([`AnswerError`]), as gossip of such a transaction
//!   would be, and the proposal dropped. Not counted: a member whose limit is
//!   set higher than ours is misconfigured, not lying.
//! * transactions that do not hash to the ids asked for: an answer is matched to
//!   the block by hash, so they fill nothing; the block stays incomplete and the
//!   proposal is dropped.
//! * many proposals: only this round and the next, and the next height's first
//!   two, are fetched, one per round, at most [`MAX_WAITING`] at once and within
//!   a byte budget; each fetch ends when its proposal leaves [`Waiting`]. A
//!   checked proposal of a later round is kept in its compact form only (its
//!   ids, the sender's own bytes), at most [`MAX_LATER`], and looked up again
//!   when its round comes. Proposals of rounds this node has left are not
//!   fetched.

use std::collections::{BTreeMap, HashMap};

use super::block::{tx_hash, tx_root_of_ids, Block, Hash, Header, Height, Limits, Round, MAX_BLOCK_TXS};
use super::members::{SignedApproval, MAX_CHANGES_PER_BLOCK};
use super::vote::{proposal_sign_bytes, verify, Proposal, SignatureError, SignedProposal};
use crate::identity::NodeId;

/// Proposals waiting for transactions from a peer, at most.
pub const MAX_WAITING: usize = 4;

/// Proposals kept for rounds past the fetching window, at most.
pub const MAX_LATER: usize = 8;

/// A proposal whose block travels as its header and its transactions' ids.
/// Decoded by hand to bound `ids` by [`MAX_BLOCK_TXS`] before allocating them.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode)]
pub struct CompactProposal {
    /// First, as in a full proposal: the height is read from the frame's first
    /// bytes to drop proposals of far heights undecoded.
    pub height: Height,
    pub round: Round,
    pub header: Header,
    /// The transactions' [`tx_hash`]es, in block order.
    pub ids: Vec<Hash>,
    pub valid_round: Option<Round>,
    pub proposer: NodeId,
    pub signature: [u8; 64],
}

impl<C> bincode::Decode<C> for CompactProposal {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        use bincode::Decode;
        Ok(CompactProposal {
            height: Decode::decode(d)?,
            round: Decode::decode(d)?,
            header: Decode::decode(d)?,
            ids: crate::codec::decode_seq(d, MAX_BLOCK_TXS, "transaction ids in a compact proposal")?,
            valid_round: Decode::decode(d)?,
            proposer: Decode::decode(d)?,
            signature: Decode::decode(d)?,
        })
    }
}
bincode::impl_borrow_decode!(CompactProposal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("compact proposal names {count} transactions, over the {limit} a block may hold")]
    TooManyIds { count: usize, limit: usize },
    #[error("compact proposal carries {count} membership approvals, over the {limit} a block may hold")]
    TooManyChanges { count: usize, limit: usize },
    #[error("compact proposal from {got:?}, not the proposer of its round ({expected:?})")]
    WrongProposer { got: NodeId, expected: NodeId },
    #[error("compact proposal's ids do not hash to its header's transaction root")]
    RootMismatch,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The proposer signed a block naming one transaction twice.
    #[error("compact proposal names transaction #{index} again (first at #{first}); its proposer signed it")]
    RepeatedId { index: usize, first: usize },
    /// The proposer signed ids of transactions over the block's byte limit.
    #[error("compact proposal's transactions pass {bytes} bytes, over the block's {limit}; its proposer signed them")]
    OverBlockBytes { bytes: usize, limit: usize },
}

impl CompactError {
    /// Whether the proposer's signature proves the fault: the ids hash to the
    /// root of the header it signed, so it named them, whoever relayed them.
    /// Other refusals are the sender's (it could have checked what it relayed).
    pub(crate) fn signed_by_proposer(&self) -> bool {
        matches!(self, CompactError::RepeatedId { .. } | CompactError::OverBlockBytes { .. })
    }

    /// A stable name for logs, one warn line per culprit and kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CompactError::RepeatedId { .. } => "compact_repeated_id",
            CompactError::OverBlockBytes { .. } => "compact_over_block_bytes",
            _ => "bad_compact_proposal",
        }
    }
}

/// Why a peer's `Txs` answer was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("transaction #{index} of the answer has {len} bytes, over the {limit}-byte limit")]
    TxTooLarge { index: usize, len: usize, limit: usize },
}

/// Why filling an assembly from an answer failed: the answer's fault or the
/// proposal's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FillError {
    #[error("answer refused: {0}")]
    Answer(#[from] AnswerError),
    #[error(transparent)]
    Proposal(#[from] CompactError),
}

/// What a rebuilt block may hold: the block's byte limit, and the mempool's
/// limit on one transaction, which an answer's transactions are held to as
/// gossiped ones are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RebuildLimits {
    pub max_block_bytes: usize,
    pub max_tx_bytes: usize,
}

impl CompactProposal {
    /// The compact form of a signed proposal: each transaction hashed once.
    pub fn of(sp: &SignedProposal) -> CompactProposal {
        Self::with_ids(sp, sp.proposal.block.txs.iter().map(|t| tx_hash(t)).collect())
    }

    /// The compact form of a signed proposal whose transactions' ids the
    /// caller holds (in block order): nothing is hashed.
    pub(crate) fn with_ids(sp: &SignedProposal, ids: Vec<Hash>) -> CompactProposal {
        let p = &sp.proposal;
        CompactProposal {
            height: p.height,
            round: p.round,
            header: p.block.header.clone(),
            ids,
            valid_round: p.valid_round,
            proposer: p.proposer,
            signature: sp.signature,
        }
    }

    /// What can be checked without the transactions, cheapest first: the id
    /// and approval counts, the proposer of the round, the ids against the
    /// header's root, the signature; last the ids' repetition, which the
    /// signature then makes the proposer's.
    pub fn check(&self, network_id: &[u8; 32], proposer: NodeId, max_txs: usize) -> Result<(), CompactError> {
        if self.ids.len() > max_txs {
            return Err(CompactError::TooManyIds { count: self.ids.len(), limit: max_txs });
        }
        if self.header.changes.len() > MAX_CHANGES_PER_BLOCK {
            return Err(CompactError::TooManyChanges {
                count: self.header.changes.len(),
                limit: MAX_CHANGES_PER_BLOCK,
            });
        }
        if self.proposer != proposer {
            return Err(CompactError::WrongProposer { got: self.proposer, expected: proposer });
        }
        if tx_root_of_ids(self.ids.len(), self.ids.iter().copied()) != self.header.tx_root {
            return Err(CompactError::RootMismatch);
        }
        let bytes = proposal_sign_bytes(
            network_id,
            self.height,
            self.round,
            self.header.hash(),
            self.valid_round,
            self.proposer,
        );
        verify(&self.proposer, &bytes, &self.signature)?;
        if let Some((index, first)) = first_repeat(&self.ids) {
            return Err(CompactError::RepeatedId { index, first });
        }
        Ok(())
    }

    /// About what this proposal holds in memory: its ids and its header.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.ids.capacity() * std::mem::size_of::<Hash>()
            + self.header.changes.capacity() * std::mem::size_of::<SignedApproval>()
    }

    /// The most [`Self::bytes`] of a checked proposal of at most `max_txs` ids.
    pub fn max_bytes(max_txs: usize) -> usize {
        std::mem::size_of::<Self>()
            + max_txs * std::mem::size_of::<Hash>()
            + MAX_CHANGES_PER_BLOCK * std::mem::size_of::<SignedApproval>()
    }
}

/// The first id that comes again, as (its index, the index it first came at).
fn first_repeat(ids: &[Hash]) -> Option<(usize, usize)> {
    let mut seen: HashMap<&Hash, usize> = HashMap::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
        if let Some(&first) = seen.get(id) {
            return Some((index, first));
        }
        seen.insert(id, index);
    }
    None
}

/// The transactions with these ids that `find` holds, in block order, copied
/// one by one as long as their bytes stay within `max_block_bytes`: the moment
/// the next would pass it, the block is refused, before that copy is made.
pub(crate) fn place_within<'a>(
    ids: &[Hash],
    mut find: impl FnMut(&Hash) -> Option<&'a Vec<u8>>,
    max_block_bytes: usize,
) -> Result<Vec<Option<Vec<u8>>>, CompactError> {
    let mut out = Vec::with_capacity(ids.len());
    let mut bytes = 0usize;
    for id in ids {
        let found = find(id);
        if let Some(tx) = found {
            bytes += tx.len();
            if bytes > max_block_bytes {
                return Err(CompactError::OverBlockBytes { bytes, limit: max_block_bytes });
            }
        }
        out.push(found.cloned());
    }
    Ok(out)
}

/// A compact proposal being filled with its transactions.
#[derive(Debug)]
pub struct Assembly {
    pub proposal: CompactProposal,
    txs: Vec<Option<Vec<u8>>>,
    /// The position in the block of each id still missing.
    missing: HashMap<Hash, usize>,
    /// Positions not filled yet: more than `missing` holds only if the ids
    /// repeat (a proposal that skipped its check), which then never completes.
    unfilled: usize,
    /// Bytes of the transactions placed so far.
    placed: usize,
}

impl Assembly {
    /// `found[i]` is the transaction with id `ids[i]` if this node holds it
    /// (looked up by id, so it hashes to it; see [`place_within`]).
    pub fn new(proposal: CompactProposal, found: Vec<Option<Vec<u8>>>) -> Assembly {
        let unfilled = found.iter().filter(|t| t.is_none()).count();
        let mut missing = HashMap::with_capacity(unfilled);
        let mut placed = 0;
        for (i, (id, tx)) in proposal.ids.iter().zip(&found).enumerate() {
            match tx {
                Some(tx) => placed += tx.len(),
                None => {
                    missing.insert(*id, i);
                }
            }
        }
        Assembly { proposal, txs: found, missing, unfilled, placed }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.unfilled == 0 && self.txs.len() == self.proposal.ids.len()
    }

    /// The ids to ask for, in block order.
    pub(crate) fn missing_ids(&self) -> Vec<Hash> {
        let mut at: Vec<(usize, Hash)> = self.missing.iter().map(|(id, &i)| (i, *id)).collect();
        at.sort_unstable();
        at.into_iter().map(|(_, id)| id).collect()
    }

    /// A peer's answer: refused as a whole if one of its transactions is over
    /// `max_tx_bytes`; otherwise each transaction fills the place of the id it
    /// hashes to, any other is ignored, and the proposal is refused the moment
    /// the bytes placed would pass `max_block_bytes`. Returns how many places
    /// it filled.
    pub(crate) fn handle_txs(&mut self, txs: Vec<Vec<u8>>, limits: RebuildLimits) -> Result<usize, FillError> {
        check_answer(&txs, limits.max_tx_bytes)?;
        let mut filled = 0;
        for tx in txs {
            let id = tx_hash(&tx);
            let Some(&at) = self.missing.get(&id) else { continue };
            let bytes = self.placed + tx.len();
            if bytes > limits.max_block_bytes {
                return Err(CompactError::OverBlockBytes { bytes, limit: limits.max_block_bytes }.into());
            }
            self.missing.remove(&id);
            self.placed = bytes;
            self.unfilled -= 1;
            self.txs[at] = Some(tx);
            filled += 1;
        }
        Ok(filled)
    }

    /// About what this assembly holds in memory: the proposal, the placed
    /// transactions, the table of positions and the missing ids.
    pub(crate) fn bytes(&self) -> usize {
        self.proposal.bytes()
            + self.placed
            + self.txs.capacity() * std::mem::size_of::<Option<Vec<u8>>>()
            + self.missing.capacity() * MISSING_ENTRY_BYTES
    }

    /// The most [`Self::bytes`] of an assembly of a checked proposal under
    /// `limits`.
    pub fn max_bytes(limits: &Limits) -> usize {
        CompactProposal::max_bytes(limits.max_block_txs)
            + limits.max_block_bytes
            + limits.max_block_txs * (std::mem::size_of::<Option<Vec<u8>>>() + 2 * MISSING_ENTRY_BYTES)
    }

    /// The full signed proposal, once every transaction is here.
    pub fn into_signed(self) -> Option<SignedProposal> {
        self.into_signed_with_ids().map(|(sp, _)| sp)
    }

    /// [`Self::into_signed`] with the transactions' ids, in block order.
    pub(crate) fn into_signed_with_ids(self) -> Option<(SignedProposal, Vec<Hash>)> {
        if !self.is_complete() {
            return None;
        }
        let txs: Option<Vec<Vec<u8>>> = self.txs.into_iter().collect();
        let mut p = self.proposal;
        let ids = std::mem::take(&mut p.ids);
        let sp = SignedProposal {
            proposal: Proposal {
                height: p.height,
                round: p.round,
                // Each transaction in the buffer of its copy (the mempool's,
                // an answer's): not copied again.
                block: Block { header: p.header, txs: txs?.into_iter().map(bytes::Bytes::from).collect() },
                valid_round: p.valid_round,
                proposer: p.proposer,
            },
            signature: p.signature,
        };
        Some((sp, ids))
    }
}

/// A missing id's entry in the hash table: the id, its position and the
/// table's control byte.
const MISSING_ENTRY_BYTES: usize = std::mem::size_of::<(Hash, usize)>() + 1;

/// A `Txs` answer's transactions each within `max_tx_bytes`.
pub(crate) fn check_answer(txs: &[Vec<u8>], max_tx_bytes: usize) -> Result<(), AnswerError> {
    match txs.iter().position(|t| t.len() > max_tx_bytes) {
        Some(index) => Err(AnswerError::TxTooLarge { index, len: txs[index].len(), limit: max_tx_bytes }),
        None => Ok(()),
    }
}

/// Why [`Waiting::insert`] did not keep an assembly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WaitError {
    #[error("a proposal of that round is already being fetched")]
    SlotTaken,
    #[error("{MAX_WAITING} proposals are already being fetched")]
    Full,
    #[error("fetching it would hold {bytes} bytes, over the {budget}-byte budget")]
    OverBudget { bytes: usize, budget: usize },
}

/// The assemblies waiting for a peer's answer, one per (height, round), at
/// most [`MAX_WAITING`] and within a byte budget; and the checked proposals of
/// later rounds, in their compact form, at most [`MAX_LATER`].
///
/// Each assembly's fetch ends as the assembly leaves: [`Waiting::take`] and
/// [`Waiting::retain_window`] say which left, and the producer's driver ends
/// their fetches, so fetches never outnumber the assemblies waiting.
#[derive(Debug)]
pub(crate) struct Waiting {
    by_slot: BTreeMap<(Height, Round), Assembly>,
    /// Checked proposals for rounds past the fetching window, with the peer
    /// that sent them, until the window reaches them; the latest rounds given
    /// up first.
    later: BTreeMap<(Height, Round), (NodeId, CompactProposal)>,
    budget: usize,
}

impl Waiting {
    /// Room for [`MAX_WAITING`] assemblies of the largest block `limits` allow:
    /// what the count already bounds, kept as a bound of its own in bytes.
    pub(crate) fn new(limits: &Limits) -> Waiting {
        Self::with_budget(MAX_WAITING * Assembly::max_bytes(limits))
    }

    /// Waiting assemblies hold at most `budget` bytes.
    pub(crate) fn with_budget(budget: usize) -> Waiting {
        Waiting { by_slot: BTreeMap::new(), later: BTreeMap::new(), budget }
    }

    /// Whether a proposal of `(height, round)` is being fetched or kept.
    pub(crate) fn contains(&self, height: Height, round: Round) -> bool {
        self.by_slot.contains_key(&(height, round)) || self.later.contains_key(&(height, round))
    }

    /// Keeps `a` until its answer comes; refused (and `a` dropped) when its
    /// slot is taken, [`MAX_WAITING`] already wait, or it would pass the byte
    /// budget.
    pub(crate) fn insert(&mut self, a: Assembly) -> Result<(), WaitError> {
        let slot = (a.proposal.height, a.proposal.round);
        if self.by_slot.contains_key(&slot) {
            return Err(WaitError::SlotTaken);
        }
        if self.by_slot.len() >= MAX_WAITING {
            return Err(WaitError::Full);
        }
        let bytes = self.bytes() + a.bytes();
        if bytes > self.budget {
            return Err(WaitError::OverBudget { bytes, budget: self.budget });
        }
        self.by_slot.insert(slot, a);
        Ok(())
    }

    /// Drops what waits for rounds before `(height, round)`, and for heights
    /// below it: those proposals are moot. Returns the slots of the assemblies
    /// dropped, whose fetches are to end.
    pub(crate) fn retain_window(&mut self, height: Height, round: Round) -> Vec<(Height, Round)> {
        let keep = |&(h, r): &(Height, Round)| h > height || (h == height && r >= round);
        let gone: Vec<_> = self.by_slot.keys().copied().filter(|s| !keep(s)).collect();
        for slot in &gone {
            self.by_slot.remove(slot);
        }
        self.later.retain(|slot, _| keep(slot));
        gone
    }

    /// Keeps a checked proposal of a round past the window until it is due, in
    /// its compact form: what it held from the mempool is looked up again then.
    pub(crate) fn defer(&mut self, from: NodeId, cp: CompactProposal) {
        let slot = (cp.height, cp.round);
        if self.contains(slot.0, slot.1) {
            return;
        }
        self.later.insert(slot, (from, cp));
        if self.later.len() > MAX_LATER {
            self.later.pop_last();
        }
    }

    /// Whether proposals of later rounds are kept.
    pub(crate) fn has_later(&self) -> bool {
        !self.later.is_empty()
    }

    /// The kept proposals `due` now says are in the window.
    pub(crate) fn take_due(&mut self, mut due: impl FnMut(Height, Round) -> bool) -> Vec<(NodeId, CompactProposal)> {
        let slots: Vec<_> = self.later.keys().copied().filter(|&(h, r)| due(h, r)).collect();
        slots.into_iter().filter_map(|s| self.later.remove(&s)).collect()
    }

    /// The assembly of `(height, round)`, out of the waiting ones.
    pub(crate) fn take(&mut self, height: Height, round: Round) -> Option<Assembly> {
        self.by_slot.remove(&(height, round))
    }

    /// Assemblies waiting.
    pub(crate) fn len(&self) -> usize {
        self.by_slot.len()
    }

    /// About the bytes the waiting assemblies hold.
    pub(crate) fn bytes(&self) -> usize {
        self.by_slot.values().map(Assembly::bytes).sum()
    }

    /// Proposals kept for later rounds.
    pub(crate) fn later_len(&self) -> usize {
        self.later.len()
    }

    /// About the bytes the proposals kept for later rounds hold: at most
    /// [`MAX_LATER`] times [`CompactProposal::max_bytes`].
    pub(crate) fn later_bytes(&self) -> usize {
        self.later.values().map(|(_, cp)| cp.bytes()).sum()
    }
}

/// Copies of `txs`, in order, as long as they fit in `max_bytes` of
/// transaction bytes: a `Txs` answer within its frame.
pub(crate) fn within_bytes<'a, T: AsRef<[u8]> + 'a>(
    txs: impl Iterator<Item = &'a T>,
    max_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for tx in txs {
        let tx = tx.as_ref();
        if bytes + tx.len() > max_bytes {
            break;
        }
        bytes += tx.len();
        out.push(tx.to_vec());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::tx_root;
    use crate::identity::Identity;

    const NET: [u8; 32] = [9; 32];

    const LIMITS: RebuildLimits = RebuildLimits { max_block_bytes: 1000, max_tx_bytes: 300 };

    fn signed(id: &Identity, txs: Vec<Vec<u8>>) -> SignedProposal {
        let block = Block {
            header: Header {
                height: 5,
                round: 1,
                prev_hash: Hash([1; 32]),
                timestamp_ms: 1000,
                proposer: id.id(),
                tx_root: tx_root(&txs),
                changes: vec![],
            },
            txs: txs.into_iter().map(Into::into).collect(),
        };
        Proposal { height: 5, round: 1, block, valid_round: None, proposer: id.id() }.sign(&NET, id)
    }

    fn txs(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 40]).collect()
    }

    /// What a mempool holding `txs` finds for `ids`, within `max_bytes`.
    fn lookup<T: AsRef<[u8]>>(txs: &[T], ids: &[Hash], max_bytes: usize) -> Result<Vec<Option<Vec<u8>>>, CompactError> {
        let pool: HashMap<Hash, Vec<u8>> = txs.iter().map(|t| (tx_hash(t.as_ref()), t.as_ref().to_vec())).collect();
        place_within(ids, |id| pool.get(id), max_bytes)
    }

    #[test]
    fn a_compact_proposal_carries_the_full_ones_signature_and_rebuilds_it() {
        let id = Identity::generate().unwrap();
        let sp = signed(&id, txs(5));
        let cp = CompactProposal::of(&sp);
        assert_eq!(cp.check(&NET, id.id(), 100), Ok(()));
        let found = lookup(&sp.proposal.block.txs, &cp.ids, 1000).unwrap();
        let a = Assembly::new(cp, found);
        assert!(a.is_complete());
        let rebuilt = a.into_signed().unwrap();
        assert_eq!(rebuilt, sp);
        assert!(rebuilt.verify(&NET).is_ok());
    }

    #[test]
    fn lies_are_refused_before_anything_is_fetched() {
        let id = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let cp = CompactProposal::of(&signed(&id, txs(5)));

        let mut ids_changed = cp.clone();
        ids_changed.ids[2] = Hash([7; 32]);
        assert_eq!(ids_changed.check(&NET, id.id(), 100), Err(CompactError::RootMismatch), "ids nobody signed");

        let mut dropped = cp.clone();
        dropped.ids.pop();
        assert_eq!(dropped.check(&NET, id.id(), 100), Err(CompactError::RootMismatch), "an id left out");

        assert_eq!(cp.check(&NET, id.id(), 4), Err(CompactError::TooManyIds { count: 5, limit: 4 }));
        assert!(matches!(cp.check(&NET, other.id(), 100), Err(CompactError::WrongProposer { .. })));

        let mut header_changed = cp.clone();
        header_changed.header.timestamp_ms += 1;
        assert!(matches!(header_changed.check(&NET, id.id(), 100), Err(CompactError::Signature(_))));
        assert!(matches!(cp.check(&[0; 32], id.id(), 100), Err(CompactError::Signature(_))), "another network");

        let approval = crate::chain::members::Approval {
            change: crate::chain::members::Change::Remove { id: other.id() },
            approver: id.id(),
            signed_at: 1,
        }
        .sign(&NET, &id);
        let mut crowded = cp.clone();
        crowded.header.changes = vec![approval; MAX_CHANGES_PER_BLOCK + 1];
        assert_eq!(
            crowded.check(&NET, id.id(), 100),
            Err(CompactError::TooManyChanges { count: MAX_CHANGES_PER_BLOCK + 1, limit: MAX_CHANGES_PER_BLOCK })
        );
        for e in [CompactError::RootMismatch, CompactError::TooManyIds { count: 5, limit: 4 }] {
            assert!(!e.signed_by_proposer(), "{e}: the sender's");
        }
    }

    /// A proposer that names one transaction in many places (each place a copy
    /// when rebuilt) is refused on its ids alone, and its own signature makes
    /// it the culprit. The same block sent in full is still a valid block.
    #[test]
    fn repeated_ids_are_refused_before_any_lookup_and_laid_to_the_proposer() {
        let id = Identity::generate().unwrap();
        let mut t = txs(4);
        t.push(t[1].clone());
        t.push(t[3].clone());
        let sp = signed(&id, t);
        let cp = CompactProposal::of(&sp);
        let e = cp.check(&NET, id.id(), 100).unwrap_err();
        assert_eq!(e, CompactError::RepeatedId { index: 4, first: 1 }, "the first index that repeats");
        assert!(e.signed_by_proposer());
        assert_eq!(e.kind(), "compact_repeated_id");

        // Relayed with a broken signature, the repetition proves nothing: the
        // sender is refused for the signature.
        let mut forged = cp.clone();
        forged.signature[0] ^= 1;
        assert!(matches!(forged.check(&NET, id.id(), 100), Err(CompactError::Signature(_))));

        // Full blocks keep today's validity rule: a repeated transaction is valid.
        let limits = Limits::default();
        let block = &sp.proposal.block;
        let parent_ts = block.header.timestamp_ms - 1;
        let valid = block.validate(
            block.header.prev_hash,
            4,
            parent_ts,
            |_| id.id(),
            None,
            &limits,
            crate::chain::block::TxCheck::Needed,
        );
        assert_eq!(valid, Ok(()));
    }

    /// The lookup copies transaction by transaction and stops at the one that
    /// would pass the block's limit: nothing after it is even looked up.
    #[test]
    fn the_lookup_stops_at_the_transaction_that_passes_the_block_limit() {
        let t: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
        let ids: Vec<Hash> = t.iter().map(|x| tx_hash(x)).collect();
        assert!(lookup(&t, &ids, 1000).is_ok(), "exactly at the limit");
        assert_eq!(lookup(&t, &ids, 999), Err(CompactError::OverBlockBytes { bytes: 1000, limit: 999 }));
        let pool: HashMap<Hash, Vec<u8>> = t.iter().map(|x| (tx_hash(x), x.clone())).collect();
        let mut asked = 0;
        let over = place_within(
            &ids,
            |id| {
                asked += 1;
                pool.get(id)
            },
            450,
        );
        assert_eq!(over, Err(CompactError::OverBlockBytes { bytes: 500, limit: 450 }));
        assert_eq!(asked, 5, "refused at the fifth transaction, the rest never copied");
        assert!(over.unwrap_err().signed_by_proposer());
        // Ids this node lacks count nothing: their bytes are counted as they come.
        let missing: Vec<Hash> = (0..20u8).map(|i| Hash([i; 32])).collect();
        assert_eq!(lookup(&t, &missing, 0).unwrap(), vec![None; 20]);
    }

    #[test]
    fn missing_transactions_are_asked_once_and_filled_by_hash_only() {
        let id = Identity::generate().unwrap();
        let t = txs(5);
        let sp = signed(&id, t.clone());
        let cp = CompactProposal::of(&sp);
        let found = vec![Some(t[0].clone()), None, Some(t[2].clone()), None, None];
        let mut a = Assembly::new(cp, found);
        assert!(!a.is_complete());
        assert_eq!(a.missing_ids(), vec![tx_hash(&t[1]), tx_hash(&t[3]), tx_hash(&t[4])]);
        assert_eq!(a.handle_txs(vec![vec![99; 40], t[0].clone()], LIMITS), Ok(0), "txs not missing fill nothing");
        assert_eq!(a.handle_txs(vec![t[1].clone(), t[1].clone()], LIMITS), Ok(1), "a place is filled once");
        assert_eq!(a.missing_ids(), vec![tx_hash(&t[3]), tx_hash(&t[4])]);
        assert!(a.into_signed().is_none(), "still incomplete");
        let mut a = Assembly::new(CompactProposal::of(&sp), vec![None; 5]);
        assert_eq!(a.handle_txs(t.clone(), LIMITS), Ok(5));
        assert_eq!(a.into_signed().unwrap(), sp);
    }

    /// An assembly whose ids repeat (one that skipped its check) never
    /// completes: it cannot be turned into a block with a place left empty.
    #[test]
    fn an_assembly_of_repeated_ids_never_completes() {
        let id = Identity::generate().unwrap();
        let mut t = txs(2);
        t.push(t[0].clone());
        let mut a = Assembly::new(CompactProposal::of(&signed(&id, t.clone())), vec![None; 3]);
        assert_eq!(a.handle_txs(t, LIMITS), Ok(2));
        assert!(!a.is_complete());
        assert!(a.into_signed().is_none());
    }

    /// Filling from an answer counts the bytes placed, with those found in the
    /// mempool, and refuses the proposal at the transaction that would pass
    /// the block's limit.
    #[test]
    fn an_answer_that_passes_the_block_limit_refuses_the_proposal() {
        let id = Identity::generate().unwrap();
        let t: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 250]).collect();
        let cp = CompactProposal::of(&signed(&id, t.clone()));
        let found = vec![Some(t[0].clone()), None, None, None, None];
        let mut a = Assembly::new(cp.clone(), found.clone());
        assert_eq!(
            a.handle_txs(t[1..].to_vec(), LIMITS),
            Err(FillError::Proposal(CompactError::OverBlockBytes { bytes: 1250, limit: 1000 }))
        );
        let roomy = RebuildLimits { max_block_bytes: 1250, ..LIMITS };
        let mut a = Assembly::new(cp, found);
        assert_eq!(a.handle_txs(t[1..].to_vec(), roomy), Ok(4), "exactly at the limit");
        assert!(a.is_complete());
    }

    /// One transaction over the mempool's limit refuses the whole answer,
    /// however well the others match.
    #[test]
    fn an_answer_with_a_transaction_over_the_tx_limit_is_refused_as_a_whole() {
        let id = Identity::generate().unwrap();
        let mut t = txs(3);
        t.push(vec![7; 301]);
        let cp = CompactProposal::of(&signed(&id, t.clone()));
        let mut a = Assembly::new(cp, vec![None; 4]);
        assert_eq!(
            a.handle_txs(t.clone(), LIMITS),
            Err(FillError::Answer(AnswerError::TxTooLarge { index: 3, len: 301, limit: 300 }))
        );
        assert_eq!(a.missing_ids().len(), 4, "nothing filled");
        assert_eq!(check_answer(&t[..3], 300), Ok(()));
        assert_eq!(check_answer(&[vec![0; 300]], 300), Ok(()), "exactly at the limit");
    }

    /// An assembly of `id`'s compact proposal of two transactions, neither
    /// here, for `(height, round)`.
    fn waiting_assembly(id: &Identity, height: Height, round: Round) -> Assembly {
        let cp = CompactProposal { height, round, ..CompactProposal::of(&signed(id, txs(2))) };
        Assembly::new(cp, vec![None, None])
    }

    fn waiting() -> Waiting {
        Waiting::new(&Limits::default())
    }

    #[test]
    fn waiting_assemblies_are_bounded_one_per_round() {
        let id = Identity::generate().unwrap();
        let mut w = waiting();
        assert!(w.insert(waiting_assembly(&id, 5, 0)).is_ok());
        assert_eq!(w.insert(waiting_assembly(&id, 5, 0)), Err(WaitError::SlotTaken), "one per round");
        for r in 1..MAX_WAITING as Round {
            assert!(w.insert(waiting_assembly(&id, 6, r)).is_ok());
        }
        assert_eq!(w.insert(waiting_assembly(&id, 6, 99)), Err(WaitError::Full), "at most MAX_WAITING");
        w.retain_window(6, 0);
        assert_eq!(w.len(), MAX_WAITING - 1);
        assert!(!w.contains(5, 0));
        assert!(w.take(6, 1).is_some());
    }

    /// The window says which assemblies it left behind, so their fetches end;
    /// one taken is gone and not reported again.
    #[test]
    fn the_window_names_the_assemblies_it_leaves_behind() {
        let id = Identity::generate().unwrap();
        let mut w = waiting();
        for round in 0..3 {
            w.insert(waiting_assembly(&id, 5, round)).unwrap();
        }
        assert!(w.take(5, 0).is_some());
        assert_eq!(w.retain_window(5, 2), [(5, 1)], "out of the window");
        assert!(w.contains(5, 2));
        assert_eq!(w.retain_window(5, 2), [], "nothing more to end");
        assert_eq!(w.retain_window(6, 0), [(5, 2)]);
    }

    /// `n` distinct ids: a proposal of that many transactions, none here.
    fn many_ids(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| tx_hash(&i.to_be_bytes())).collect()
    }

    /// The largest assemblies the limits allow fit the budget MAX_WAITING
    /// times; the budget refuses one past it.
    #[test]
    fn waiting_assemblies_are_bounded_in_bytes() {
        let id = Identity::generate().unwrap();
        let limits = Limits::default();
        let largest = |round: Round| {
            let ids = many_ids(limits.max_block_txs);
            let cp = CompactProposal { round, ids, ..CompactProposal::of(&signed(&id, txs(1))) };
            let mut found = vec![None; limits.max_block_txs];
            found[0] = Some(vec![1; limits.max_block_bytes]);
            Assembly::new(cp, found)
        };
        let mut w = Waiting::new(&limits);
        for r in 0..MAX_WAITING as Round {
            let a = largest(r);
            assert!(a.bytes() <= Assembly::max_bytes(&limits), "{} bytes", a.bytes());
            assert!(a.bytes() > limits.max_block_bytes + limits.max_block_txs * 32);
            w.insert(a).unwrap();
        }
        assert!(w.bytes() <= MAX_WAITING * Assembly::max_bytes(&limits));
        let mut tight = Waiting::with_budget(2 * Assembly::max_bytes(&limits));
        tight.insert(largest(0)).unwrap();
        tight.insert(largest(1)).unwrap();
        assert!(matches!(tight.insert(largest(2)), Err(WaitError::OverBudget { .. })));
        assert_eq!(tight.len(), 2);
        tight.take(5, 0);
        assert!(tight.insert(largest(2)).is_ok(), "room again once one leaves");
    }

    /// Proposals past the fetching window wait, a few, the latest rounds given
    /// up first, and come out when the window reaches them; rounds the node
    /// left behind go from both lists.
    #[test]
    fn later_rounds_are_kept_a_few_and_come_out_when_due() {
        let id = Identity::generate().unwrap();
        let from = id.id();
        let mut w = waiting();
        // A member signs proposals for many of its future rounds at height 5.
        for r in (4..40).rev() {
            w.defer(from, waiting_assembly(&id, 5, r).proposal);
        }
        w.defer(from, waiting_assembly(&id, 5, 4).proposal);
        assert_eq!(w.later.len(), MAX_LATER, "bounded");
        assert!(w.contains(5, 4) && !w.contains(5, 39), "the latest rounds go first");
        assert!(w.take_due(|h, r| h == 5 && r <= 3).is_empty(), "nothing due before round 4");
        let due = w.take_due(|h, r| h == 5 && r <= 5);
        let rounds: Vec<Round> = due.iter().map(|(_, cp)| cp.round).collect();
        assert_eq!(rounds, [4, 5]);
        assert!(w.insert(waiting_assembly(&id, 5, 6)).is_ok());
        w.retain_window(5, 8);
        assert!(!w.contains(5, 6), "a round left behind no longer waits");
        assert_eq!(w.later.keys().next(), Some(&(5, 8)));
        w.retain_window(6, 0);
        assert!(w.later.is_empty());
    }

    /// What is kept for later is the compact form only: ids and header, at
    /// most MAX_LATER of the largest, whatever their transactions weigh.
    #[test]
    fn later_rounds_are_kept_as_ids_bounded_in_bytes() {
        let id = Identity::generate().unwrap();
        let limits = Limits::default();
        let mut w = waiting();
        for r in 0..2 * MAX_LATER as Round {
            let cp = CompactProposal {
                round: r,
                ids: many_ids(limits.max_block_txs),
                ..CompactProposal::of(&signed(&id, txs(1)))
            };
            w.defer(id.id(), cp);
        }
        let bound = MAX_LATER * CompactProposal::max_bytes(limits.max_block_txs);
        assert!(w.later_bytes() <= bound, "{} bytes, bound {bound}", w.later_bytes());
        assert!(w.later_bytes() >= MAX_LATER * limits.max_block_txs * 32);
        assert_eq!(w.bytes(), 0, "nothing fetched");
    }
}
