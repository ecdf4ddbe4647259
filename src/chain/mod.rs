//! Quorum-gated block production.
//!
//! * [`block`]: blocks and their hashes.
//! * [`vote`]: signed proposals and votes, commit certificates.
//! * [`consensus`]: Tendermint as a pure state machine.
//! * [`store`]: blocks, certificates and the last signed vote in fjall.
//! * [`mempool`]: transactions waiting for a block.
//! * [`producer`]: the task that runs consensus over the transport and the store,
//!   and catches up from peers.

pub mod block;
pub mod consensus;
pub mod mempool;
pub mod producer;
pub mod store;
pub mod vote;
