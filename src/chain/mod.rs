//! Quorum-gated block production.
//!
//! * [`block`]: blocks and their hashes.
//! * [`clock`]: this node's clock offset from its peers', from their proposals.
//! * [`vote`]: signed proposals and votes, commit certificates.
//! * [`compact`]: proposals as a header and transaction ids, rebuilt from the mempool.
//! * [`consensus`]: Tendermint as a pure state machine.
//! * [`misbehaviour`]: what the core reports about messages that break the protocol.
//! * [`store`]: blocks, certificates and the last signed vote in fjall.
//! * [`quorum`]: the quorum rules: the vote threshold and the gate.
//! * [`rules`]: the protocol versions and the rules each brings.
//! * [`upgrade`]: upgrade plans as one node lives them: its warnings, and the
//!   stop before a height whose version its binary does not run.
//! * [`sync`]: catch-up planning (which peer, which blocks, what a response
//!   says about its sender) and a token bucket, without IO.
//! * [`mempool`]: transactions waiting for a block.
//! * [`genesis`]: the network file's values and the network id.
//! * [`limits`]: the node's limits on what it accepts and keeps (`[limits]`).
//! * [`members`]: the member set at each height and the signed changes that move it.
//! * [`message`]: what the chain sends its peers, and on which stream.
//! * [`driver`]: the producer's rules as a state machine without IO: the core,
//!   its timers, the quorum gate, the mempool, compact proposals, sync and rate
//!   limits; inputs through `handle_*` with the time, effects out through
//!   `poll_effect`.
//! * `links`: what crosses the producer task's boundary: bounded channels in
//!   from the admin API, the member view and `ChainMetrics` out.
//! * `producer`: the shell, the one task that owns the driver and carries out its
//!   effects over the transport and the store.

pub mod block;
pub mod clock;
pub mod compact;
pub mod consensus;
pub mod driver;
pub mod genesis;
mod height;
pub mod limits;
pub(crate) mod links;
pub mod members;
pub mod mempool;
pub mod message;
pub mod misbehaviour;
pub(crate) mod producer;
pub use driver::{ChangeRequest, MembersView, Submitted};
pub use links::{Mailbox, MemberRequest, TxRequest};
pub mod quorum;
pub mod rules;
pub mod store;
pub mod sync;
pub mod upgrade;
pub mod vote;
