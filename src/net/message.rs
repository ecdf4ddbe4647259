//! Application messages exchanged after the handshake.
//!
//! Consensus and gossip travel on one long-lived unidirectional stream per
//! direction; each request (block sync) gets a bidirectional stream of its own with
//! one request frame and one response frame. Each kind has a size limit (see
//! [`Frame::limit`]); the variant order is the wire's kind byte, so new kinds are
//! appended, never inserted.

use super::codec::Frame;

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Message {
    /// Opaque payload: transport tests, benchmarks and probes.
    Data(Vec<u8>),
    /// A transaction gossiped between mempools.
    Tx(Vec<u8>),
}

/// Kind bytes, equal to the variant indexes above.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const TX: u8 = 1;
}

/// Limits per kind, bytes of body.
pub const DATA_LIMIT: usize = 1024 * 1024;
pub const TX_LIMIT: usize = 64 * 1024 + 16;

impl Frame for Message {
    fn limit(kind: u8) -> Option<usize> {
        match kind {
            kind::DATA => Some(DATA_LIMIT),
            kind::TX => Some(TX_LIMIT),
            _ => None,
        }
    }
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self {
            Message::Data(_) => kind::DATA,
            Message::Tx(_) => kind::TX,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Data(_) => "data",
            Message::Tx(_) => "tx",
        }
    }
}
