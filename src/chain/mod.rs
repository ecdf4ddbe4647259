//! Quorum-gated block production.
//!
//! * [`block`]: blocks and their hashes.
//! * [`clock`]: this node's clock offset from its peers', from their proposals.
//! * [`vote`]: signed proposals and votes, commit certificates.
//! * [`compact`]: proposals as a header and transaction ids, rebuilt from the mempool.
//! * [`consensus`]: Tendermint as a pure state machine.
//! * [`misbehaviour`]: what the core reports about messages that break the protocol.
//! * [`store`]: blocks, certificates and the last signed vote in fjall.
//! * [`retention`]: how many blocks a node keeps (`retain_blocks`), without IO.
//! * [`quorum`]: the quorum rules: the vote threshold and the gate.
//! * [`rules`]: the protocol versions and the rules each brings.
//! * [`upgrade`]: upgrade plans as one node lives them: its warnings, and the
//!   stop before a height whose version its binary does not run.
//! * [`sync`]: catch-up planning (which peer, which blocks, what a response
//!   says about its sender) and a token bucket, without IO.
//! * [`mempool`]: transactions waiting for a block.
//! * [`genesis`]: the network file's values (the block limits among them) and the network id.
//! * [`limits`]: the node's limits on what it accepts and keeps (`[limits]`).
//! * [`usage`]: what a bounded structure holds, in items and bytes.
//! * [`members`]: the member set at each height and the signed changes that move it.
//! * [`message`]: what the chain sends its peers, and on which stream.
//! * [`doppelganger`]: what a node may sign after a start: the watch for a
//!   second process with its key, and the floor the network proves.
//! * [`driver`]: the producer's rules as a state machine without IO: the core,
//!   its timers, the quorum gate, the mempool, compact proposals, sync and rate
//!   limits; inputs through `handle_*` with the time, effects out through
//!   `poll_effect`.
//! * `links`: what crosses the producer task's boundary: bounded channels in
//!   from the admin API, the member view and `ChainMetrics` out.
//! * `producer`: the shell, the one task that owns the driver and carries out its
//!   effects over the transport and the store.

pub(crate) mod block;
pub(crate) mod checkpoint;
pub(crate) mod clock;
pub(crate) mod compact;
pub(crate) mod consensus;
pub(crate) mod doppelganger;
pub(crate) mod driver;
pub(crate) mod genesis;
pub(crate) mod height;
pub(crate) mod limits;
pub(crate) mod links;
pub(crate) mod members;
pub(crate) mod mempool;
pub(crate) mod message;
pub(crate) mod misbehaviour;
pub(crate) mod producer;
pub(crate) mod quorum;
pub(crate) mod retention;
pub(crate) mod rules;
pub(crate) mod store;
pub(crate) mod sync;
pub(crate) mod upgrade;
pub(crate) mod usage;
pub(crate) mod vote;

#[cfg(feature = "fault-injection")]
pub use block::counts::{store_bytes as counted_store_bytes, tx_hashes as counted_tx_hashes};
pub use block::{
    genesis_hash, members_digest, parent_link, tx_hash, tx_root, tx_root_of_ids, Block, Hash, Header, Limits, TxCheck,
    MAX_BLOCK_BYTES, MAX_BLOCK_TXS,
};
pub use checkpoint::{verify as verify_checkpoint, verify_offered as verify_offered_checkpoint};
pub use checkpoint::{
    Checkpoint, CheckpointAnswer, CheckpointError, CheckpointSource, Contradiction, Decision as CheckpointDecision,
    Fetch as CheckpointFetch, ParseError as CheckpointParseError, Verified, RETRY_MS as CHECKPOINT_RETRY_MS,
};
pub use compact::{Assembly, CompactProposal, MAX_LATER, MAX_WAITING};
pub use consensus::{
    max_proposal_bytes, Config, Core, Input, Output, Timeout, Timeouts, MAX_CONFLICTING, MAX_FUTURE_BYTES,
    MAX_FUTURE_ROUND, MAX_ROUND_AHEAD, PROPOSALS_HELD_BLOCKS, VOTE_BYTES,
};
pub(crate) use doppelganger::Evidence;
pub use driver::{BlocksAnswer, ChangeRequest, Driver, DriverConfig, Effect, Held, Now, RequestFailure, RequestId};
pub use height::{Height, Round};
pub use limits::{NodeLimits, Usage};
pub use members::{
    Approval, Change, ChangeError, Completed, Membership, MembershipState, Params, Plan, SignedApproval,
};
pub use mempool::{AddError, Mempool, MempoolLimits, Source};
pub use message::{
    is_consensus_kind, Kind, Message, BLOCKS_LIMIT, DATA_LIMIT, GET_TXS_LIMIT, PROPOSAL_LIMIT, PROTOCOL, TXS_LIMIT,
    VOTE_LIMIT,
};
pub use quorum::vote_threshold;
pub use retention::MIN_RETAIN_BLOCKS;
pub use rules::MAX_VERSION;
pub use store::{Store, StoreError, FORMAT};
pub use vote::{
    proposal_sign_bytes, Certificate, Committed, Lock, Proposal, SignRecord, Signed, SignedProposal, SignedVote, Step,
    Vote, VoteKind,
};
