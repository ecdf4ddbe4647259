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
//! What a lying member can do, and what comes of it:
//! * ids that do not hash to the header's root, more ids than a block may hold, a
//!   bad signature, a sender who is not the round's proposer: refused by
//!   [`CompactProposal::check`] before anything is looked up or fetched.
//! * ids of transactions nobody has, or withholding them: the fetch fails or
//!   times out and the proposal is dropped as if it never came; the round's
//!   propose timeout runs and the node prevotes nil.
//! * transactions that do not hash to the ids asked for: an answer is matched to
//!   the block by hash, so they fill nothing; the block stays incomplete and the
//!   proposal is dropped.
//! * many proposals: only the current and the next height are assembled, one per
//!   round, at most [`MAX_WAITING`] waiting for transactions at once.

use std::collections::{BTreeMap, HashMap};

use super::block::{tx_hash, tx_root_of_ids, Block, Hash, Header, Height, Round};
use super::vote::{proposal_sign_bytes, verify, Proposal, SignatureError, SignedProposal};
use crate::identity::NodeId;

/// Proposals waiting for transactions from a peer, at most.
pub const MAX_WAITING: usize = 4;

/// A proposal whose block travels as its header and its transactions' ids.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("compact proposal names {count} transactions, over the {limit} a block may hold")]
    TooManyIds { count: usize, limit: usize },
    #[error("compact proposal from {got:?}, not the proposer of its round ({expected:?})")]
    WrongProposer { got: NodeId, expected: NodeId },
    #[error("compact proposal's ids do not hash to its header's transaction root")]
    RootMismatch,
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl CompactProposal {
    /// The compact form of a signed proposal: each transaction hashed once.
    pub fn of(sp: &SignedProposal) -> CompactProposal {
        let p = &sp.proposal;
        CompactProposal {
            height: p.height,
            round: p.round,
            header: p.block.header.clone(),
            ids: p.block.txs.iter().map(|t| tx_hash(t)).collect(),
            valid_round: p.valid_round,
            proposer: p.proposer,
            signature: sp.signature,
        }
    }

    /// What can be checked without the transactions, cheapest first: the id
    /// count, the proposer of the round, the ids against the header's root, the
    /// signature.
    pub fn check(&self, network_id: &[u8; 32], proposer: NodeId, max_txs: usize) -> Result<(), CompactError> {
        if self.ids.len() > max_txs {
            return Err(CompactError::TooManyIds { count: self.ids.len(), limit: max_txs });
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
        Ok(())
    }
}

/// A compact proposal being filled with its transactions.
#[derive(Debug)]
pub struct Assembly {
    pub proposal: CompactProposal,
    txs: Vec<Option<Vec<u8>>>,
    /// The positions in the block of each id still missing.
    missing: HashMap<Hash, Vec<usize>>,
}

impl Assembly {
    /// `found[i]` is the transaction with id `ids[i]` if this node holds it
    /// (looked up by id, so it hashes to it).
    pub fn new(proposal: CompactProposal, found: Vec<Option<Vec<u8>>>) -> Assembly {
        let mut missing: HashMap<Hash, Vec<usize>> = HashMap::new();
        for (i, (id, tx)) in proposal.ids.iter().zip(&found).enumerate() {
            if tx.is_none() {
                missing.entry(*id).or_default().push(i);
            }
        }
        Assembly { proposal, txs: found, missing }
    }

    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.txs.len() == self.proposal.ids.len()
    }

    /// The ids to ask for, each once, in block order.
    pub fn missing_ids(&self) -> Vec<Hash> {
        let mut firsts: Vec<(usize, Hash)> = self.missing.iter().map(|(id, at)| (at[0], *id)).collect();
        firsts.sort_unstable();
        firsts.into_iter().map(|(_, id)| id).collect()
    }

    /// A peer's answer: each transaction fills the places of the id it hashes
    /// to; any other is ignored. Returns how many places it filled.
    pub fn handle_txs(&mut self, txs: Vec<Vec<u8>>) -> usize {
        let mut filled = 0;
        for tx in txs {
            let Some(at) = self.missing.remove(&tx_hash(&tx)) else { continue };
            filled += at.len();
            let (last, rest) = at.split_last().expect("a missing id has at least one place");
            for &i in rest {
                self.txs[i] = Some(tx.clone());
            }
            self.txs[*last] = Some(tx);
        }
        filled
    }

    /// The full signed proposal, once every transaction is here.
    pub fn into_signed(self) -> Option<SignedProposal> {
        if !self.is_complete() {
            return None;
        }
        let txs: Option<Vec<Vec<u8>>> = self.txs.into_iter().collect();
        let p = self.proposal;
        Some(SignedProposal {
            proposal: Proposal {
                height: p.height,
                round: p.round,
                block: Block { header: p.header, txs: txs? },
                valid_round: p.valid_round,
                proposer: p.proposer,
            },
            signature: p.signature,
        })
    }
}

/// The assemblies waiting for a peer's answer, one per (height, round), at most
/// [`MAX_WAITING`].
#[derive(Debug, Default)]
pub struct Waiting {
    by_slot: BTreeMap<(Height, Round), Assembly>,
    /// Checked proposals for rounds past the fetching window, with the peer
    /// that sent them, until the window reaches them; at most [`MAX_LATER`],
    /// the latest rounds given up first.
    later: BTreeMap<(Height, Round), (NodeId, Assembly)>,
}

/// Proposals kept for rounds past the fetching window, at most.
pub const MAX_LATER: usize = 8;

impl Waiting {
    pub fn contains(&self, height: Height, round: Round) -> bool {
        self.by_slot.contains_key(&(height, round))
    }

    /// Keeps `a` until its answer comes; false (and `a` dropped) when its slot is
    /// taken or [`MAX_WAITING`] already wait.
    pub fn insert(&mut self, a: Assembly) -> bool {
        let slot = (a.proposal.height, a.proposal.round);
        if self.by_slot.len() >= MAX_WAITING || self.by_slot.contains_key(&slot) {
            return false;
        }
        self.by_slot.insert(slot, a);
        true
    }

    /// Drops what waits for rounds before `(height, round)`, and for heights
    /// below it: those proposals are moot (their fetches may still answer;
    /// nothing takes the answer).
    pub fn retain_window(&mut self, height: Height, round: Round) {
        self.by_slot.retain(|&(h, r), _| h > height || (h == height && r >= round));
        self.later.retain(|&(h, r), _| h > height || (h == height && r >= round));
    }

    /// Keeps a checked proposal of a round past the window until it is due.
    pub fn defer(&mut self, from: NodeId, a: Assembly) {
        let slot = (a.proposal.height, a.proposal.round);
        if self.by_slot.contains_key(&slot) || self.later.contains_key(&slot) {
            return;
        }
        self.later.insert(slot, (from, a));
        if self.later.len() > MAX_LATER {
            self.later.pop_last();
        }
    }

    /// Whether proposals of later rounds are kept.
    pub fn has_later(&self) -> bool {
        !self.later.is_empty()
    }

    /// The kept proposals `due` now says are in the window.
    pub fn take_due(&mut self, mut due: impl FnMut(Height, Round) -> bool) -> Vec<(NodeId, Assembly)> {
        let slots: Vec<_> = self.later.keys().copied().filter(|&(h, r)| due(h, r)).collect();
        slots.into_iter().filter_map(|s| self.later.remove(&s)).collect()
    }

    pub fn take(&mut self, height: Height, round: Round) -> Option<Assembly> {
        self.by_slot.remove(&(height, round))
    }

    pub fn len(&self) -> usize {
        self.by_slot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_slot.is_empty()
    }
}

/// Copies of `txs`, in order, as long as they fit in `max_bytes` of
/// transaction bytes: a `Txs` answer within its frame.
pub fn within_bytes<'a>(txs: impl Iterator<Item = &'a Vec<u8>>, max_bytes: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for tx in txs {
        if bytes + tx.len() > max_bytes {
            break;
        }
        bytes += tx.len();
        out.push(tx.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::tx_root;
    use crate::identity::Identity;

    const NET: [u8; 32] = [9; 32];

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
            txs,
        };
        Proposal { height: 5, round: 1, block, valid_round: None, proposer: id.id() }.sign(&NET, id)
    }

    fn txs(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 40]).collect()
    }

    #[test]
    fn a_compact_proposal_carries_the_full_ones_signature_and_rebuilds_it() {
        let id = Identity::generate().unwrap();
        let sp = signed(&id, txs(5));
        let cp = CompactProposal::of(&sp);
        assert_eq!(cp.check(&NET, id.id(), 100), Ok(()));
        let found = sp.proposal.block.txs.iter().cloned().map(Some).collect();
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
    }

    #[test]
    fn missing_transactions_are_asked_once_and_filled_by_hash_only() {
        let id = Identity::generate().unwrap();
        // A transaction twice in one block: asked for once, fills both places.
        let mut t = txs(4);
        t.push(t[1].clone());
        let sp = signed(&id, t.clone());
        let cp = CompactProposal::of(&sp);
        let found = vec![Some(t[0].clone()), None, Some(t[2].clone()), None, None];
        let mut a = Assembly::new(cp, found);
        assert!(!a.is_complete());
        assert_eq!(a.missing_ids(), vec![tx_hash(&t[1]), tx_hash(&t[3])]);
        assert_eq!(a.handle_txs(vec![vec![99; 40], t[0].clone()]), 0, "txs that are not missing fill nothing");
        assert_eq!(a.handle_txs(vec![t[1].clone()]), 2);
        assert_eq!(a.missing_ids(), vec![tx_hash(&t[3])]);
        assert!(a.into_signed().is_none(), "still incomplete");
        let mut a = Assembly::new(CompactProposal::of(&sp), vec![None; 5]);
        assert_eq!(a.handle_txs(t.clone()), 5);
        assert_eq!(a.into_signed().unwrap(), sp);
    }

    /// An assembly of `id`'s compact proposal of two transactions, neither
    /// here, for `(height, round)`.
    fn waiting_assembly(id: &Identity, height: Height, round: Round) -> Assembly {
        let cp = CompactProposal { height, round, ..CompactProposal::of(&signed(id, txs(2))) };
        Assembly::new(cp, vec![None, None])
    }

    #[test]
    fn waiting_assemblies_are_bounded_one_per_round() {
        let id = Identity::generate().unwrap();
        let mut w = Waiting::default();
        assert!(w.insert(waiting_assembly(&id, 5, 0)));
        assert!(!w.insert(waiting_assembly(&id, 5, 0)), "one per round");
        for r in 1..MAX_WAITING as Round {
            assert!(w.insert(waiting_assembly(&id, 6, r)));
        }
        assert!(!w.insert(waiting_assembly(&id, 6, 99)), "at most MAX_WAITING");
        w.retain_window(6, 0);
        assert_eq!(w.len(), MAX_WAITING - 1);
        assert!(!w.contains(5, 0));
        assert!(w.take(6, 1).is_some());
    }

    /// Proposals past the fetching window wait, a few, the latest rounds given
    /// up first, and come out when the window reaches them; rounds the node
    /// left behind go from both lists.
    #[test]
    fn later_rounds_are_kept_a_few_and_come_out_when_due() {
        let id = Identity::generate().unwrap();
        let from = id.id();
        let mut w = Waiting::default();
        // A member signs proposals for many of its future rounds at height 5.
        for r in (4..40).rev() {
            w.defer(from, waiting_assembly(&id, 5, r));
        }
        w.defer(from, waiting_assembly(&id, 5, 4));
        assert_eq!(w.later.len(), MAX_LATER, "bounded");
        assert!(w.later.contains_key(&(5, 4)) && !w.later.contains_key(&(5, 39)), "the latest rounds go first");
        assert!(w.take_due(|h, r| h == 5 && r <= 3).is_empty(), "nothing due before round 4");
        let due = w.take_due(|h, r| h == 5 && r <= 5);
        let rounds: Vec<Round> = due.iter().map(|(_, a)| a.proposal.round).collect();
        assert_eq!(rounds, [4, 5]);
        assert!(w.insert(waiting_assembly(&id, 5, 6)));
        w.retain_window(5, 8);
        assert!(!w.contains(5, 6), "a round left behind no longer waits");
        assert_eq!(w.later.keys().next(), Some(&(5, 8)));
        w.retain_window(6, 0);
        assert!(w.later.is_empty());
    }
}
