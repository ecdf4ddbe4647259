//! What the consensus core reports about messages that break the protocol.
//!
//! A member is blamed ([`Misbehaviour::culprit`]) only for what its own valid
//! signature proves: two different messages signed for one step, a proposal for a
//! round it does not lead, an invalid block under its signed header. A message
//! whose signature does not verify, or whose transactions do not match the signed
//! header, proves nothing about the member it names (any peer can relay a
//! forgery), so it is reported without a culprit; so is a synced block, which comes
//! from whichever peer served it, not from its proposer.

use std::fmt;

use super::block::{BlockError, Height, Round};
use super::vote::{CertError, Step};
use crate::identity::NodeId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Two different proposals or votes signed by `node` for one height, round
    /// and step.
    Equivocation { node: NodeId, height: Height, round: Round, step: Step },
    /// A signed proposal for a round `node` does not lead.
    WrongProposer { node: NodeId, height: Height, round: Round },
    /// A signed proposal whose valid round is not below its round.
    BadValidRound { node: NodeId, height: Height, round: Round, valid_round: Round },
    /// A signed proposal of a block that breaks the block rules.
    InvalidBlock { node: NodeId, height: Height, round: Round, reason: BlockError },
    /// A message claiming to be signed by `claimed` whose signature does not
    /// verify: forged or corrupted on the way; `claimed` is not blamed.
    BadSignature { claimed: NodeId, height: Height, round: Round, step: Step },
    /// A proposal whose transactions do not match the root in its signed header,
    /// or are more than a block may hold (checked before their root is computed):
    /// the signature covers the header only, so `claimed` is not blamed.
    BadTransactions { claimed: NodeId, height: Height, round: Round },
    /// A synced block whose commit certificate does not verify.
    BadCertificate { height: Height, reason: CertError },
    /// A synced block with a valid certificate that does not extend our chain.
    InvalidSyncedBlock { height: Height, reason: BlockError },
}

impl Misbehaviour {
    /// The member the message proves guilty, if any.
    pub(crate) fn culprit(&self) -> Option<NodeId> {
        match self {
            Misbehaviour::Equivocation { node, .. }
            | Misbehaviour::WrongProposer { node, .. }
            | Misbehaviour::BadValidRound { node, .. }
            | Misbehaviour::InvalidBlock { node, .. } => Some(*node),
            Misbehaviour::BadSignature { .. }
            | Misbehaviour::BadTransactions { .. }
            | Misbehaviour::BadCertificate { .. }
            | Misbehaviour::InvalidSyncedBlock { .. } => None,
        }
    }

    /// A fixed label per variant: with the culprit, the key under which the shell
    /// logs a report once.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Misbehaviour::Equivocation { .. } => "equivocation",
            Misbehaviour::WrongProposer { .. } => "wrong_proposer",
            Misbehaviour::BadValidRound { .. } => "bad_valid_round",
            Misbehaviour::InvalidBlock { .. } => "invalid_block",
            Misbehaviour::BadSignature { .. } => "bad_signature",
            Misbehaviour::BadTransactions { .. } => "bad_transactions",
            Misbehaviour::BadCertificate { .. } => "bad_certificate",
            Misbehaviour::InvalidSyncedBlock { .. } => "invalid_synced_block",
        }
    }
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misbehaviour::Equivocation { node, height, round, step } => {
                write!(f, "{} signed two different {step:?} messages at height {height} round {round}", node.short())
            }
            Misbehaviour::WrongProposer { node, height, round } => {
                write!(f, "{} proposed at height {height} round {round}, which it does not lead", node.short())
            }
            Misbehaviour::BadValidRound { node, height, round, valid_round } => write!(
                f,
                "{} proposed at height {height} round {round} with valid round {valid_round}, not below it",
                node.short()
            ),
            Misbehaviour::InvalidBlock { node, height, round, reason } => {
                write!(f, "{} proposed an invalid block at height {height} round {round}: {reason}", node.short())
            }
            Misbehaviour::BadSignature { claimed, height, round, step } => write!(
                f,
                "{step:?} at height {height} round {round} claiming to be from {} has a bad signature",
                claimed.short()
            ),
            Misbehaviour::BadTransactions { claimed, height, round } => write!(
                f,
                "proposal at height {height} round {round} claiming to be from {} carries transactions its signed \
                 header does not vouch for",
                claimed.short()
            ),
            Misbehaviour::BadCertificate { height, reason } => write!(f, "synced block {height}: {reason}"),
            Misbehaviour::InvalidSyncedBlock { height, reason } => write!(f, "synced block {height}: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant.
    fn all() -> Vec<Misbehaviour> {
        let node = NodeId([1; 32]);
        let (height, round) = (5, 2);
        vec![
            Misbehaviour::Equivocation { node, height, round, step: Step::Prevote },
            Misbehaviour::WrongProposer { node, height, round },
            Misbehaviour::BadValidRound { node, height, round, valid_round: 2 },
            Misbehaviour::InvalidBlock { node, height, round, reason: BlockError::TxRootMismatch },
            Misbehaviour::BadSignature { claimed: node, height, round, step: Step::Propose },
            Misbehaviour::BadTransactions { claimed: node, height, round },
            Misbehaviour::BadCertificate { height, reason: CertError::WrongBlock },
            Misbehaviour::InvalidSyncedBlock { height, reason: BlockError::TxRootMismatch },
        ]
    }

    #[test]
    fn each_kind_has_its_own_label_and_one_log_line() {
        let all = all();
        let labels: std::collections::BTreeSet<_> = all.iter().map(|m| m.kind()).collect();
        assert_eq!(labels.len(), all.len(), "labels are distinct");
        for m in &all {
            let line = m.to_string();
            assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
            assert!(m.kind().chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", m.kind());
        }
    }

    /// Only what a member's valid signature proves is blamed on it.
    #[test]
    fn forgeries_and_synced_blocks_blame_no_member() {
        for m in all() {
            let unproven = matches!(
                m,
                Misbehaviour::BadSignature { .. }
                    | Misbehaviour::BadTransactions { .. }
                    | Misbehaviour::BadCertificate { .. }
                    | Misbehaviour::InvalidSyncedBlock { .. }
            );
            assert_eq!(m.culprit().is_none(), unproven, "{m}");
        }
    }
}
