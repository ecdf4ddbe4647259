//! The one place that speaks the consensus core's API: building a core at start-up
//! (as `node.rs` does), feeding it inputs, and turning its outputs into the
//! simulation's `Effect`s. When the core's API changes (a typed misbehaviour, a
//! new output), only this file follows.

use std::sync::{Arc, Mutex, OnceLock};

pub use masternode::chain::{genesis_hash, tx_root, Block, Hash, Header, Height, Limits, Round};
pub use masternode::chain::{required_active, vote_threshold as quorum};
pub use masternode::chain::{
    Approval, ApprovalPool, Change, Completed, Membership, MembershipState, Params, SignedApproval,
};
pub use masternode::chain::{
    Certificate, Committed, Lock, Proposal, SignRecord, Signed, SignedProposal, SignedVote, Step, Vote, VoteKind,
};
pub use masternode::chain::{Config, Core, Input, Output, Timeout, Timeouts, MAX_ROUND_AHEAD};
pub use masternode::identity::{Identity, NodeId};

/// The simulated network's id.
pub const NET: [u8; 32] = [0x51; 32];
pub const INTERVAL_MS: u64 = 1000;
pub const GENESIS_MS: u64 = 0;
/// `min_active` of the simulated network (the default).
pub const MIN_ACTIVE: usize = 3;

/// What a core asks of its node, in the simulation's terms.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Effect {
    Sign {
        record: SignRecord,
        message: Signed,
        lock: Option<Lock>,
    },
    Schedule {
        timeout: Timeout,
        after_ms: u64,
    },
    NeedValue {
        height: Height,
        round: Round,
    },
    /// A block to store with the membership it leaves, and the member changes
    /// it completed.
    Decided {
        committed: Committed,
        membership: MembershipState,
        completed: Vec<Completed>,
    },
    /// A protocol violation; `node` is the member blamed, when one is.
    Misbehaviour {
        node: Option<NodeId>,
        what: String,
    },
    Ahead {
        node: NodeId,
        height: Height,
    },
}

pub fn effects(outputs: Vec<Output>) -> Vec<Effect> {
    outputs
        .into_iter()
        .map(|o| match o {
            Output::Sign { record, message, lock } => Effect::Sign { record, message, lock: lock.map(|l| *l) },
            Output::Schedule { timeout, after_ms } => Effect::Schedule { timeout, after_ms },
            Output::NeedValue { height, round } => Effect::NeedValue { height, round },
            Output::Decided { committed, membership, completed } => {
                Effect::Decided { committed, membership: *membership, completed }
            }
            Output::Misbehaviour(m) => Effect::Misbehaviour { node: m.culprit(), what: m.to_string() },
            Output::Ahead { node, height } => Effect::Ahead { node, height },
        })
        .collect()
}

pub fn input_of(message: Signed) -> Input {
    match message {
        Signed::Proposal(p) => Input::Proposal(p),
        Signed::Vote(v) => Input::Vote(v),
    }
}

/// Heights an approval stays valid in the simulation: short, so that approvals
/// expire within a scenario (honest nodes approve again, forged old ones are
/// refused as expired).
pub const APPROVAL_TTL: Height = 12;

/// The genesis membership of `members`, with the simulation's parameters.
pub fn genesis(members: &[NodeId]) -> Membership {
    let m = Membership::of_ids(members, MIN_ACTIVE);
    Membership::restore(Params { min_active: MIN_ACTIVE, ttl: APPROVAL_TTL }, m.state().clone())
}

pub fn config(members: &[NodeId]) -> Config {
    Config {
        network_id: NET,
        members: genesis(members),
        block_interval_ms: INTERVAL_MS,
        limits: Limits::default(),
        timeouts: Timeouts::for_interval(INTERVAL_MS),
    }
}

/// What the store hands a node at start-up.
pub struct Persisted<'a> {
    pub tip: Option<&'a Committed>,
    /// The membership the tip left, stored with it.
    pub membership: Option<MembershipState>,
    pub last_signed: Option<SignRecord>,
    pub own: Vec<Signed>,
    pub lock: Option<Lock>,
}

/// A core as `Node::start` builds it from the store.
/// `cfg` holds the genesis membership; the stored one replaces it, as
/// `Node::start` restores it.
pub fn boot(mut cfg: Config, identity: Arc<Identity>, stored: Persisted<'_>) -> Core {
    let (height, prev_hash, prev_ts) = match stored.tip {
        Some(c) => (c.block.height(), c.block.hash(), c.block.header.timestamp_ms),
        None => (0, genesis_hash(&NET), GENESIS_MS),
    };
    if let Some(state) = stored.membership {
        cfg.members = Membership::restore(cfg.members.params(), state);
    }
    assert_eq!(cfg.members.applied(), height, "the store holds the membership of its tip");
    let mut core = Core::new(cfg, identity, height + 1, prev_hash, prev_ts, stored.last_signed);
    core.restore_own(stored.own);
    core.restore_lock(stored.lock);
    core
}

/// The first `n` keys, the same for every scenario (keys from fixed seeds;
/// building one costs a self-signed certificate).
fn keys(n: usize) -> Vec<Arc<Identity>> {
    static CACHE: OnceLock<Mutex<Vec<Arc<Identity>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut all = cache.lock().unwrap_or_else(|e| e.into_inner());
    while all.len() < n {
        let i = all.len() as u8;
        let key = ed25519_dalek::SigningKey::from_bytes(&[i.wrapping_mul(7).wrapping_add(3); 32]);
        // A key from fixed bytes always makes a certificate.
        all.push(Arc::new(Identity::from_signing_key(key).expect("self-signed certificate")));
    }
    all[..n].to_vec()
}

/// `n` member identities sorted by id.
pub fn identities(n: usize) -> Vec<Arc<Identity>> {
    let mut ids = keys(n);
    ids.sort_by_key(|i| i.id());
    ids
}

/// `count` identities of joiners: keys after the `n` members'.
pub fn joiner_identities(n: usize, count: usize) -> Vec<Arc<Identity>> {
    keys(n + count)[n..].to_vec()
}

/// A key no scenario gives a node: what a Byzantine member signs forged
/// approvals with.
pub fn outsider() -> Arc<Identity> {
    static OUTSIDER: OnceLock<Arc<Identity>> = OnceLock::new();
    OUTSIDER
        .get_or_init(|| {
            let key = ed25519_dalek::SigningKey::from_bytes(&[0xee; 32]);
            Arc::new(Identity::from_signing_key(key).expect("self-signed certificate"))
        })
        .clone()
}

pub fn outsider_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// The placeholder address a key is added with (genesis members have
/// `127.0.0.1:10000 + i`).
pub fn joiner_addr(key: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 20_000 + key as u16))
}

pub fn prevote(height: Height, round: Round, block: Option<Hash>, identity: &Identity) -> SignedVote {
    Vote { kind: VoteKind::Prevote, height, round, block, voter: identity.id() }.sign(&NET, identity)
}

pub fn precommit(height: Height, round: Round, block: Option<Hash>, identity: &Identity) -> SignedVote {
    Vote { kind: VoteKind::Precommit, height, round, block, voter: identity.id() }.sign(&NET, identity)
}

pub fn propose(block: Block, round: Round, valid_round: Option<Round>, identity: &Identity) -> SignedProposal {
    Proposal { height: block.height(), round, block, valid_round, proposer: identity.id() }.sign(&NET, identity)
}

/// Height, round and step of a signed message.
pub fn record_of(m: &Signed) -> SignRecord {
    match m {
        Signed::Proposal(p) => SignRecord { height: p.proposal.height, round: p.proposal.round, step: Step::Propose },
        Signed::Vote(v) => v.vote.record(),
    }
}

pub fn signer_of(m: &Signed) -> NodeId {
    match m {
        Signed::Proposal(p) => p.proposal.proposer,
        Signed::Vote(v) => v.vote.voter,
    }
}

pub fn describe(m: &Signed) -> String {
    match m {
        Signed::Proposal(p) => {
            let p = &p.proposal;
            let vr = p.valid_round.map_or(String::new(), |vr| format!(" vr={vr}"));
            format!("Proposal(h={} r={} {}{vr})", p.height, p.round, p.block.hash().short())
        }
        Signed::Vote(v) => {
            let v = &v.vote;
            let kind = match v.kind {
                VoteKind::Prevote => "Prevote",
                VoteKind::Precommit => "Precommit",
            };
            let value = v.block.map_or("nil".to_string(), |h| h.short());
            format!("{kind}(h={} r={} {value})", v.height, v.round)
        }
    }
}
