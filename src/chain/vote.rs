//! Signed consensus messages and commit certificates.
//!
//! Every signature covers a canonical encoding that starts with a domain tag and the
//! network id, then height, round and step, so a signature can never be replayed
//! on another network, at another height or round, or as another kind of message.

use super::block::{Block, Hash, Height, Round};
use crate::identity::{Identity, NodeId};
use crate::net::codec::BINCODE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub enum Step {
    Propose = 0,
    Prevote = 1,
    Precommit = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

impl VoteKind {
    pub fn step(self) -> Step {
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
/// precommit it produced.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Lock {
    pub round: Round,
    pub block: Block,
}

/// The precommits that committed a block: its proof for anyone who syncs it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Certificate {
    pub height: Height,
    pub round: Round,
    pub block: Hash,
    pub precommits: Vec<SignedVote>,
}

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
    pub fn sign_bytes(&self, network_id: &[u8; 32]) -> Vec<u8> {
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
    pub fn sign_bytes(&self, network_id: &[u8; 32]) -> Vec<u8> {
        let mut out = b"masternode/proposal/v1\0".to_vec();
        out.extend_from_slice(network_id);
        out.extend(encode(&(
            self.height,
            self.round,
            Step::Propose,
            self.block.hash(),
            self.valid_round,
            self.proposer,
        )));
        out
    }

    pub fn sign(self, network_id: &[u8; 32], identity: &Identity) -> SignedProposal {
        let signature = identity.sign(&self.sign_bytes(network_id));
        SignedProposal { proposal: self, signature }
    }
}

impl SignedProposal {
    pub fn verify(&self, network_id: &[u8; 32]) -> Result<(), SignatureError> {
        verify(&self.proposal.proposer, &self.proposal.sign_bytes(network_id), &self.signature)
    }
}

fn verify(signer: &NodeId, msg: &[u8], sig: &[u8; 64]) -> Result<(), SignatureError> {
    let key = signer.verifying_key().ok_or(SignatureError::UnknownSigner(*signer))?;
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    key.verify_strict(msg, &sig).map_err(|_| SignatureError::BadSignature(*signer))
}

/// Votes needed for a decision: more than two thirds of `n`.
pub fn quorum(n: usize) -> usize {
    2 * n / 3 + 1
}

impl Certificate {
    /// Checks that more than two thirds of `members` precommitted `block` at its
    /// height in the certificate's round, each with a valid signature.
    pub fn verify(&self, block: &Block, members: &[NodeId], network_id: &[u8; 32]) -> Result<(), CertError> {
        if self.height != block.height() {
            return Err(CertError::WrongHeight { got: self.height, expected: block.height() });
        }
        if self.block != block.hash() {
            return Err(CertError::WrongBlock);
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
            pc.verify(network_id)?;
            signers.insert(v.voter);
        }
        let needed = quorum(members.len());
        if signers.len() < needed {
            return Err(CertError::TooFewSigners { got: signers.len(), needed });
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
