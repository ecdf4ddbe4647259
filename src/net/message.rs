//! Application messages exchanged after the handshake.
//!
//! Consensus and gossip travel on one long-lived unidirectional stream per
//! direction; each request (block sync) gets a bidirectional stream of its own with
//! one request frame and one response frame. Each kind has a size limit (see
//! [`Frame::limit`]); the variant order is the wire's kind byte, so new kinds are
//! appended, never inserted.

use super::codec::{Frame, MAX_FRAME};
use crate::chain::block::{Hash, Height};
use crate::chain::vote::{Committed, SignedProposal, SignedVote};

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Message {
    /// Opaque payload: transport tests, benchmarks and probes.
    Data(Vec<u8>),
    /// A transaction gossiped between mempools.
    Tx(Vec<u8>),
    Proposal(SignedProposal),
    Vote(SignedVote),
    /// The sender committed this block.
    Tip {
        height: Height,
        hash: Hash,
    },
    /// Request: up to `count` committed blocks from `from`.
    GetBlocks {
        from: Height,
        count: u32,
    },
    /// Response to `GetBlocks`.
    Blocks(Vec<Committed>),
}

/// Kind bytes, equal to the variant indexes above.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const TX: u8 = 1;
    pub const PROPOSAL: u8 = 2;
    pub const VOTE: u8 = 3;
    pub const TIP: u8 = 4;
    pub const GET_BLOCKS: u8 = 5;
    pub const BLOCKS: u8 = 6;
}

/// Limits per kind, bytes of body.
pub const DATA_LIMIT: usize = 1024 * 1024;
pub const TX_LIMIT: usize = 64 * 1024 + 16;
/// A full block (`MAX_BLOCK_BYTES` of transactions), a length prefix of up to 3
/// bytes for each of its at most 20,000 transactions, and the header.
pub const PROPOSAL_LIMIT: usize = crate::chain::block::MAX_BLOCK_BYTES + 128 * 1024;
pub const VOTE_LIMIT: usize = 256;
pub const TIP_LIMIT: usize = 64;
pub const GET_BLOCKS_LIMIT: usize = 32;
pub const BLOCKS_LIMIT: usize = MAX_FRAME;

impl Frame for Message {
    fn limit(kind: u8) -> Option<usize> {
        match kind {
            kind::DATA => Some(DATA_LIMIT),
            kind::TX => Some(TX_LIMIT),
            kind::PROPOSAL => Some(PROPOSAL_LIMIT),
            kind::VOTE => Some(VOTE_LIMIT),
            kind::TIP => Some(TIP_LIMIT),
            kind::GET_BLOCKS => Some(GET_BLOCKS_LIMIT),
            kind::BLOCKS => Some(BLOCKS_LIMIT),
            _ => None,
        }
    }
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self {
            Message::Data(_) => kind::DATA,
            Message::Tx(_) => kind::TX,
            Message::Proposal(_) => kind::PROPOSAL,
            Message::Vote(_) => kind::VOTE,
            Message::Tip { .. } => kind::TIP,
            Message::GetBlocks { .. } => kind::GET_BLOCKS,
            Message::Blocks(_) => kind::BLOCKS,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Data(_) => "data",
            Message::Tx(_) => "tx",
            Message::Proposal(_) => "proposal",
            Message::Vote(_) => "vote",
            Message::Tip { .. } => "tip",
            Message::GetBlocks { .. } => "get_blocks",
            Message::Blocks(_) => "blocks",
        }
    }
}
