//! Signed consensus messages and commit certificates.
//!
//! Every signature covers a canonical encoding that starts with a domain tag and the
//! network id, then height, round and step, so a signature can never be replayed
//! on another network, at another height or round, or as another kind of message.

use super::block::{Block, Hash, Height, Round};
use super::members::MAX_MEMBERS;
use crate::codec::BINCODE;
use crate::identity::{Identity, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub enum Step {
    Propose = 0,
    Prevote = 1,
    Precommit = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

impl VoteKind {
    pub(crate) fn step(self) -> Step {
        match self {
            VoteKind::Prevote => Step::Prevote,
            VoteKind::Precommit => Step::Precommit,
        }
    }
}

/// A prevote or precommit; `block: None` is a vote for nil.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Vote {
    pub kind: VoteKind,
    pub height: Height,
    pub round: Round,
    pub block: Option<Hash>,
    pub voter: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedVote {
    pub vote: Vote,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Proposal {
    pub height: Height,
    pub round: Round,
    pub block: Block,
    /// The paper's `validRound`: the round of the polka this value carries, if any.
    pub valid_round: Option<Round>,
    pub proposer: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedProposal {
    pub proposal: Proposal,
    pub signature: [u8; 64],
}

/// Anything a node signs for consensus.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Signed {
    Proposal(SignedProposal),
    Vote(SignedVote),
}

/// A lock (the paper's `lockedRound`, `lockedValue`), persisted with the
/// precommit it produced. Decoded by hand to bound `polka` by the largest
/// member set before allocating it: a polka holds at most one prevote per
/// member for its value (a voter's first, or its conflicting second for that
/// value), so a store entry claiming more is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode)]
pub struct Lock {
    pub round: Round,
    pub block: Block,
    /// The prevotes that made the polka it locked on. A restarted node holds
    /// them again and relays them, so peers that missed some of them can still
    /// see the polka that justifies a re-proposal of this block.
    pub polka: Vec<SignedVote>,
}

impl<C> bincode::Decode<C> for Lock {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        use bincode::Decode;
        Ok(Lock {
            round: Decode::decode(d)?,
            block: Decode::decode(d)?,
            polka: crate::codec::decode_seq(d, MAX_MEMBERS, "prevotes in a lock's polka")?,
        })
    }
}
bincode::impl_borrow_decode!(Lock);

/// The precommits that committed a block: its proof for anyone who syncs it.
/// Decoded by hand to bound `precommits` by the largest member set before
/// allocating them (a valid certificate holds at most one per member).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode)]
pub struct Certificate {
    pub height: Height,
    pub round: Round,
    pub block: Hash,
    pub precommits: Vec<SignedVote>,
}

impl<C> bincode::Decode<C> for Certificate {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        use bincode::Decode;
        Ok(Certificate {
            height: Decode::decode(d)?,
            round: Decode::decode(d)?,
            block: Decode::decode(d)?,
            precommits: crate::codec::decode_seq(d, MAX_MEMBERS, "precommits in a certificate")?,
        })
    }
}
bincode::impl_borrow_decode!(Certificate);

/// A block with the certificate that committed it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Committed {
    pub block: Block,
    pub cert: Certificate,
}

/// What a node signs last, persisted before the signature leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, bincode::Encode, bincode::Decode)]
pub struct SignRecord {
    pub height: Height,
    pub round: Round,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signer {0:?} is not a masternode")]
    UnknownSigner(NodeId),
    #[error("bad signature from {0:?}")]
    BadSignature(NodeId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate is for height {got}, block is at {expected}")]
    WrongHeight { got: Height, expected: Height },
    #[error("certificate is for another block")]
    WrongBlock,
    #[error("certificate has {got} distinct valid precommits, {needed} needed")]
    TooFewSigners { got: usize, needed: usize },
    #[error("certificate holds a vote that is not a precommit for its block, height and round")]
    StrayVote,
    #[error("certificate holds {got} precommits for {members} members")]
    TooManyPrecommits { got: usize, members: usize },
    #[error("certificate holds two precommits of {0:?}")]
    DuplicateVoter(NodeId),
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

fn encode<T: bincode::Encode>(value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    // Encoding into a Vec fails only past the codec's limit, which a vote header
    // never approaches.
    let _ = bincode::encode_into_std_write(value, &mut buf, BINCODE);
    buf
}

impl Vote {
    pub(crate) fn sign_bytes(&self, network_id: &[u8; 32]) -> Vec<u8> {
        let mut out = b"masternode/vote/v1\0".to_vec();
        out.extend_from_slice(network_id);
        out.extend(encode(&(self.height, self.round, self.kind.step(), self.block, self.voter)));
        out
    }

    pub fn sign(self, network_id: &[u8; 32], identity: &Identity) -> SignedVote {
        let signature = identity.sign(&self.sign_bytes(network_id));
        SignedVote { vote: self, signature }
    }

    pub fn record(&self) -> SignRecord {
        SignRecord { height: self.height, round: self.round, step: self.kind.step() }
    }
}

impl SignedVote {
    pub fn verify(&self, network_id: &[u8; 32]) -> Result<(), SignatureError> {
        verify(&self.vote.voter, &self.vote.sign_bytes(network_id), &self.signature)
    }
}

impl Proposal {
    pub(crate) fn sign_bytes(&self, network_id: &[u8; 32]) -> Vec<u8> {
        proposal_sign_bytes(network_id, self.height, self.round, self.block.hash(), self.valid_round, self.proposer)
    }

    pub fn sign(self, network_id: &[u8; 32], identity: &Identity) -> SignedProposal {
        let signature = identity.sign(&self.sign_bytes(network_id));
        SignedProposal { proposal: self, signature }
    }
}

impl SignedProposal {
    pub(crate) fn verify(&self, network_id: &[u8; 32]) -> Result<(), SignatureError> {
        verify(&self.proposal.proposer, &self.proposal.sign_bytes(network_id), &self.signature)
    }
}

/// What a proposer signs: the block only through its header's hash, which commits
/// to the transactions by their root. So a compact proposal (the header and the
/// transactions' ids) carries the very signature of the full one.
pub fn proposal_sign_bytes(
    network_id: &[u8; 32],
    height: Height,
    round: Round,
    block: Hash,
    valid_round: Option<Round>,
    proposer: NodeId,
) -> Vec<u8> {
    let mut out = b"masternode/proposal/v1\0".to_vec();
    out.extend_from_slice(network_id);
    out.extend(encode(&(height, round, Step::Propose, block, valid_round, proposer)));
    out
}

pub(crate) fn verify(signer: &NodeId, msg: &[u8], sig: &[u8; 64]) -> Result<(), SignatureError> {
    let key = signer.verifying_key().ok_or(SignatureError::UnknownSigner(*signer))?;
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    key.verify_strict(msg, &sig).map_err(|_| SignatureError::BadSignature(*signer))
}

impl Certificate {
    /// Checks that more than two thirds of `members` precommitted `block` at its
    /// height in the certificate's round, each once, with a valid signature.
    ///
    /// A certificate is canonical: one precommit per voter, so at most one per
    /// member. The whole structure is checked before the first signature, so a
    /// bloated or malformed certificate costs no signature checks, and a valid one
    /// costs at most one per member.
    pub fn verify(&self, block: &Block, members: &[NodeId], network_id: &[u8; 32]) -> Result<(), CertError> {
        if self.height != block.height() {
            return Err(CertError::WrongHeight { got: self.height, expected: block.height() });
        }
        if self.block != block.hash() {
            return Err(CertError::WrongBlock);
        }
        if self.precommits.len() > members.len() {
            return Err(CertError::TooManyPrecommits { got: self.precommits.len(), members: members.len() });
        }
        let mut signers = std::collections::BTreeSet::new();
        for pc in &self.precommits {
            let v = &pc.vote;
            if v.kind != VoteKind::Precommit
                || v.height != self.height
                || v.round != self.round
                || v.block != Some(self.block)
            {
                return Err(CertError::StrayVote);
            }
            if !members.contains(&v.voter) {
                return Err(SignatureError::UnknownSigner(v.voter).into());
            }
            if !signers.insert(v.voter) {
                return Err(CertError::DuplicateVoter(v.voter));
            }
        }
        let needed = super::quorum::vote_threshold(members.len());
        if signers.len() < needed {
            return Err(CertError::TooFewSigners { got: signers.len(), needed });
        }
        for pc in &self.precommits {
            pc.verify(network_id)?;
        }
        Ok(())
    }

    pub fn signers(&self) -> Vec<NodeId> {
        let mut v: Vec<_> = self.precommits.iter().map(|p| p.vote.voter).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chain::block::{tx_root, Header};

    const NET: [u8; 32] = [9; 32];

    fn ids() -> Vec<Arc<Identity>> {
        let mut ids: Vec<_> = (1..=4u8)
            .map(|i| Arc::new(Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[i; 32])).unwrap()))
            .collect();
        ids.sort_by_key(|i| i.id());
        ids
    }

    fn block() -> Block {
        let txs = vec![b"tx".to_vec()];
        let header = Header {
            height: 3,
            round: 1,
            prev_hash: Hash([1; 32]),
            timestamp_ms: 10,
            proposer: NodeId([2; 32]),
            tx_root: tx_root(&txs),
            changes: vec![],
        };
        Block { header, txs: txs.into_iter().map(Into::into).collect() }
    }

    fn precommit(b: &Block, who: &Identity) -> SignedVote {
        Vote { kind: VoteKind::Precommit, height: 3, round: 1, block: Some(b.hash()), voter: who.id() }.sign(&NET, who)
    }

    #[test]
    fn a_certificate_names_each_voter_once() {
        let ids = ids();
        let members: Vec<NodeId> = ids.iter().map(|i| i.id()).collect();
        let b = block();
        let cert = |precommits: Vec<SignedVote>| Certificate { height: 3, round: 1, block: b.hash(), precommits };
        let three: Vec<SignedVote> = ids[..3].iter().map(|i| precommit(&b, i)).collect();
        assert_eq!(cert(three.clone()).verify(&b, &members, &NET), Ok(()));
        // Two distinct voters and one repeated: not a quorum, and a duplicate.
        let dup = vec![three[0].clone(), three[1].clone(), three[1].clone()];
        assert_eq!(cert(dup).verify(&b, &members, &NET), Err(CertError::DuplicateVoter(ids[1].id())));
        // A quorum plus a repeat: still refused, the certificate is not canonical.
        let mut repeat = three.clone();
        repeat.push(three[0].clone());
        assert_eq!(cert(repeat).verify(&b, &members, &NET), Err(CertError::DuplicateVoter(ids[0].id())));
        let mut bloated = three.clone();
        bloated.extend(std::iter::repeat_n(three[0].clone(), 10_000));
        assert_eq!(
            cert(bloated).verify(&b, &members, &NET),
            Err(CertError::TooManyPrecommits { got: 10_003, members: 4 }),
            "10,000 repeats"
        );
    }

    /// Structure is checked before any signature: a certificate that is bloated,
    /// repeats a voter or falls short of a quorum is refused without one signature
    /// check, whatever its signatures.
    #[test]
    fn certificate_structure_is_checked_before_signatures() {
        let ids = ids();
        let members: Vec<NodeId> = ids.iter().map(|i| i.id()).collect();
        let b = block();
        let forged = |who: &Identity| {
            let mut v = precommit(&b, who);
            v.signature = [7; 64];
            v
        };
        let cert = |precommits: Vec<SignedVote>| Certificate { height: 3, round: 1, block: b.hash(), precommits };
        let five: Vec<SignedVote> = ids.iter().chain(&ids[..1]).map(|i| forged(i)).collect();
        assert!(matches!(cert(five).verify(&b, &members, &NET), Err(CertError::TooManyPrecommits { .. })));
        let dup = vec![forged(&ids[0]), forged(&ids[0]), forged(&ids[1])];
        assert!(matches!(cert(dup).verify(&b, &members, &NET), Err(CertError::DuplicateVoter(_))));
        let two = vec![forged(&ids[0]), forged(&ids[1])];
        assert!(matches!(cert(two).verify(&b, &members, &NET), Err(CertError::TooFewSigners { got: 2, needed: 3 })));
        // A quorum of them: now the signatures are checked.
        let three: Vec<SignedVote> = ids[..3].iter().map(|i| forged(i)).collect();
        assert!(matches!(cert(three).verify(&b, &members, &NET), Err(CertError::Signature(_))));
    }
}
