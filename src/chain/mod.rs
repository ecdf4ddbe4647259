//! Quorum-gated block production.
//!
//! * [`block`]: blocks and their hashes.
//! * [`clock`]: this node's clock offset from its peers', from their proposals.
//! * [`vote`]: signed proposals and votes, commit certificates.
//! * [`compact`]: proposals as a header and transaction ids, rebuilt from the mempool.
//! * [`consensus`]: Tendermint as a pure state machine.
//! * [`misbehaviour`]: what the core reports about messages that break the protocol.
//! * [`store`]: blocks, certificates and the last signed vote in fjall.
//! * [`quorum`]: the one quorum rule.
//! * [`rules`]: the protocol versions and the rules each brings.
//! * [`sync`]: catch-up planning (which peer, which blocks, what a response
//!   says about its sender) and a token bucket, without IO.
//! * [`mempool`]: transactions waiting for a block.
//! * [`members`]: the member set at each height and the signed changes that move it.
//! * [`message`]: what the chain sends its peers, and on which stream.
//! * `producer`: the task that runs consensus over the transport and the store,
//!   and catches up from peers.

pub mod block;
pub mod clock;
pub mod compact;
pub mod consensus;
pub mod members;
pub mod mempool;
pub mod message;
pub mod misbehaviour;
pub(crate) mod producer;
pub use producer::{ChangeRequest, MemberRequest, MembersView, Submitted};
pub mod quorum;
pub mod rules;
pub mod store;
pub mod sync;
pub mod vote;
