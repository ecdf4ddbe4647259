//! Checkpoint start: a node on an empty data dir begins at a trusted
//! `(height, block id)` instead of replaying the chain from genesis. Pure: no
//! clock, no IO.
//!
//! # Rules
//!
//! * A checkpoint is trusted in one of two ways: the operator names it
//!   (`checkpoint = "HEIGHT:HASH"` in `masternode.toml`, `--checkpoint`), or a
//!   peer offers one whose certificate carries precommits of more than two
//!   thirds of the member set this node knows (the genesis set on an empty
//!   data dir), each verified ([`verify_offered`]).
//! * A peer answers `GetCheckpoint` with [`CheckpointAnswer`]: the block at the
//!   height with its certificate, the id of its parent, and the member state
//!   the parent left. The block's id must be the trusted one; from protocol
//!   version 4 its `prev_hash` is the link to the parent and that member state
//!   ([`super::block::parent_link`]), so the state is verified, not trusted: a
//!   state that does not hash to the block's commitment is refused, and so is a
//!   state that says the block's rules are older than version 4 (nothing would
//!   commit to it). The certificate must verify against the verified set.
//! * The node then applies the block's approvals to that state (as every node
//!   did when it committed the block), stores the block as its tip and earliest
//!   height, and follows the chain from the next height: every later block must
//!   link to the checkpoint, so a node that started from one never follows a
//!   history without it. After a restart it opens that store as any pruned one.

use std::fmt;
use std::str::FromStr;

use super::block::{members_digest, parent_link, Hash, Height};
use super::members::{MemberSet, Membership, MembershipState, Params};
use super::rules::Rules;
use super::vote::{CertError, Committed};

/// A trusted `(height, block id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub height: Height,
    pub hash: Hash,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.height, self.hash)
    }
}

/// Why `HEIGHT:HASH` is not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "a checkpoint is HEIGHT:HASH (a height of at least 2, the block id in 64 hex digits) or \"peers\", got {0:?}"
    )]
    Malformed(String),
}

/// Where a node on an empty data dir starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSource {
    /// The operator's `(height, id)`.
    Trusted(Checkpoint),
    /// The tip a peer offers, taken only with precommits of more than two
    /// thirds of the set this node knows ([`verify_offered`]).
    Peers,
}

impl FromStr for CheckpointSource {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<CheckpointSource, ParseError> {
        match s.trim() {
            "peers" => Ok(CheckpointSource::Peers),
            other => other.parse().map(CheckpointSource::Trusted),
        }
    }
}

impl FromStr for Checkpoint {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Checkpoint, ParseError> {
        let bad = || ParseError::Malformed(s.to_string());
        let (h, hex) = s.trim().split_once(':').ok_or_else(bad)?;
        let height: Height = h.parse().map_err(|_| bad())?;
        if height < 2 || hex.len() != 64 {
            return Err(bad());
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Checkpoint { height, hash: Hash(hash) })
    }
}

/// What a peer answers to `GetCheckpoint`: the block at the height asked
/// with its certificate, its parent's id, and the member state the parent
/// left (`applied == height - 1`).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CheckpointAnswer {
    pub parent: Hash,
    pub committed: Committed,
    pub before: MembershipState,
}

/// A verified start: the block, and the member states before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub committed: Committed,
    pub before: MembershipState,
    pub after: MembershipState,
}

/// Why a checkpoint answer is refused. Each names what the peer got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the block offered is of height {got}, the checkpoint's is {expected}")]
    WrongHeight { got: Height, expected: Height },
    #[error("the block offered at height {height} has id {got}, the checkpoint names {expected}")]
    WrongHash { height: Height, got: Hash, expected: Hash },
    #[error("the member state offered is the one after height {applied}, not after {expected}")]
    StateHeight { applied: Height, expected: Height },
    #[error(
        "the member state offered says height {height} runs protocol {version}: blocks before protocol 4 do not \
         commit to a member state, so none can be verified there; choose a checkpoint after the upgrade to 4"
    )]
    NotCommitted { height: Height, version: u16 },
    #[error("the member state offered does not hash to the commitment of block {height}")]
    MembersMismatch { height: Height },
    #[error("the certificate of block {height} does not verify against its member set: {reason}")]
    Certificate { height: Height, reason: CertError },
    #[error(
        "the checkpoint offered at height {height} is signed by {signed} of the {known} members this node knows; \
         more than two thirds ({needed}) must sign one"
    )]
    TooFewKnownSigners { height: Height, signed: usize, known: usize, needed: usize },
}

impl CheckpointError {
    /// Stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckpointError::WrongHeight { .. } => "wrong_height",
            CheckpointError::WrongHash { .. } => "wrong_hash",
            CheckpointError::StateHeight { .. } => "state_height",
            CheckpointError::NotCommitted { .. } => "not_committed",
            CheckpointError::MembersMismatch { .. } => "members_mismatch",
            CheckpointError::Certificate { .. } => "certificate",
            CheckpointError::TooFewKnownSigners { .. } => "too_few_known_signers",
        }
    }
}

/// Checks `answer` against the trusted checkpoint; the start it gives.
pub fn verify(
    trusted: Checkpoint,
    answer: CheckpointAnswer,
    params: Params,
    network_id: &[u8; 32],
) -> Result<Verified, CheckpointError> {
    let CheckpointAnswer { parent, committed, before } = answer;
    let block = &committed.block;
    let height = block.height();
    if height != trusted.height {
        return Err(CheckpointError::WrongHeight { got: height, expected: trusted.height });
    }
    let id = block.hash();
    if id != trusted.hash {
        return Err(CheckpointError::WrongHash { height, got: id, expected: trusted.hash });
    }
    if before.applied + 1 != height {
        return Err(CheckpointError::StateHeight { applied: before.applied, expected: height - 1 });
    }
    let mut membership = Membership::restore(params, before);
    let version = membership.version_at(height);
    if !Rules::of(version).members_link {
        return Err(CheckpointError::NotCommitted { height, version });
    }
    if block.header.prev_hash != parent_link(parent, members_digest(membership.state()), true) {
        return Err(CheckpointError::MembersMismatch { height });
    }
    committed
        .cert
        .verify(block, &membership.current().ids(), network_id)
        .map_err(|reason| CheckpointError::Certificate { height, reason })?;
    let before = membership.state().clone();
    membership.apply(&block.header.changes, network_id);
    Ok(Verified { committed, before, after: membership.state().clone() })
}

/// Checks a checkpoint a peer offered unasked: trusted only if more than two
/// thirds of `known` (the member set this node knows) precommitted its block,
/// each signature verified; then as [`verify`].
pub fn verify_offered(
    answer: CheckpointAnswer,
    known: &MemberSet,
    params: Params,
    network_id: &[u8; 32],
) -> Result<Verified, CheckpointError> {
    let c = &answer.committed;
    let height = c.block.height();
    let needed = known.quorum();
    let known_signers: Vec<_> = c.cert.precommits.iter().filter(|pc| known.contains(&pc.vote.voter)).collect();
    let mut signed = std::collections::BTreeSet::new();
    let id = c.block.hash();
    for pc in known_signers {
        let v = &pc.vote;
        let counts = v.height == height && v.block == Some(id) && v.kind == super::vote::VoteKind::Precommit;
        if counts && pc.verify(network_id).is_ok() {
            signed.insert(v.voter);
        }
    }
    if signed.len() < needed {
        return Err(CheckpointError::TooFewKnownSigners { height, signed: signed.len(), known: known.len(), needed });
    }
    verify(Checkpoint { height, hash: id }, answer, params, network_id)
}
