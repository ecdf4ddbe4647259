//! The one place that speaks the library's API: the consensus core and the
//! producer's driver as `Node::start` builds them from the store, the
//! messages nodes exchange, and the signing helpers the adversary uses. When
//! the library's API changes (a new effect, a renamed field), only this file
//! and the effect handling in `world/effects.rs` follow.

use std::sync::{Arc, Mutex, OnceLock};

pub use masternode::chain::vote_threshold as quorum;
pub use masternode::chain::CompactProposal;
pub use masternode::chain::MempoolLimits;
pub use masternode::chain::Message;
pub use masternode::chain::MAX_VERSION;
pub use masternode::chain::{genesis_hash, tx_hash, tx_root, Block, Hash, Header, Height, Limits, Round};
pub use masternode::chain::{
    members_digest, parent_link, Checkpoint, CheckpointAnswer, CheckpointDecision, CheckpointFetch, CheckpointSource,
    Verified, CHECKPOINT_RETRY_MS,
};
pub use masternode::chain::{
    Approval, Change, Completed, Membership, MembershipState, Params, Plan as UpgradePlan, SignedApproval,
};
pub use masternode::chain::{
    BlocksAnswer, ChangeRequest, Driver, DriverConfig, Effect, Now, RequestFailure, RequestId,
};
pub use masternode::chain::{
    Certificate, Committed, Lock, Proposal, SignRecord, Signed, SignedProposal, SignedVote, Step, Vote, VoteKind,
};
pub use masternode::chain::{Config, Core, Timeouts, MAX_ROUND_AHEAD};
pub use masternode::chain::{NodeLimits, Usage};
pub use masternode::identity::{Identity, NodeId};
pub use masternode::net::{Refusal, RequestError};

/// The simulated network's id.
pub const NET: [u8; 32] = [0x51; 32];
pub const INTERVAL_MS: u64 = 1000;
pub const GENESIS_MS: u64 = 0;
/// `min_active` of the simulated network (the default).
pub const MIN_ACTIVE: usize = 3;
/// The wire version every simulated node speaks (the one that carries plans).
pub const WIRE: u16 = 4;
/// How long a request to a peer may take before the transport gives up on it
/// (`node::REQUEST_TIMEOUT`).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Heights an approval stays valid in the simulation: short, so that approvals
/// expire within a scenario (honest nodes approve again, forged old ones are
/// refused as expired).
pub const APPROVAL_TTL: Height = 12;

/// The genesis membership of `members`, with the simulation's parameters; with
/// `v4_from`, a plan for protocol 4 from that height is already on the
/// schedule (as if a block before the scenario completed it).
pub fn genesis(members: &[NodeId], v4_from: Option<Height>) -> Membership {
    let m = Membership::of_ids(members, MIN_ACTIVE);
    let mut state = m.state().clone();
    if let Some(height) = v4_from {
        state.schedule.push(UpgradePlan { version: 4, height });
    }
    Membership::restore(Params { min_active: MIN_ACTIVE, ttl: APPROVAL_TTL }, state)
}

/// What a simulated node is configured with besides its key.
#[derive(Clone)]
pub struct Setup {
    pub genesis: Membership,
    pub limits: Limits,
    pub node_limits: NodeLimits,
    pub bootstrap: Vec<(NodeId, std::net::SocketAddr)>,
}

/// What the store hands a node at start-up.
pub struct Persisted<'a> {
    pub tip: Option<&'a Committed>,
    /// The membership the tip left, stored with it.
    pub membership: Option<MembershipState>,
    pub last_signed: Option<SignRecord>,
    /// What it signed at the height after the tip.
    pub own: Vec<Signed>,
    pub lock: Option<Lock>,
    /// The earliest height it holds (a checkpoint's, else 1).
    pub earliest: Height,
}

/// The doppelganger watch of a node that lost its data dir: the default
/// (`doppelganger_intervals = 2`), what guards its key's earlier signatures.
pub const WIPED_WATCH_INTERVALS: u32 = 2;

/// A driver as `Node::start` builds it from the store: the core at the tip's
/// next height with the stored membership, last signature, own messages and
/// lock, then the driver around it, which starts the height (`watch`: the
/// doppelganger watch's intervals).
pub fn boot(setup: &Setup, identity: Arc<Identity>, stored: Persisted<'_>, now: Now, watch: u32) -> Driver {
    let (height, prev_hash, prev_ts) = match stored.tip {
        Some(c) => (c.block.height(), c.block.hash(), c.block.header.timestamp_ms),
        None => (0, genesis_hash(&NET), GENESIS_MS),
    };
    let members = match stored.membership {
        Some(state) => Membership::restore(setup.genesis.params(), state),
        None => setup.genesis.clone(),
    };
    assert_eq!(members.applied(), height, "the store holds the membership of its tip");
    let cfg = Config {
        network_id: NET,
        members,
        block_interval_ms: INTERVAL_MS,
        limits: setup.limits,
        timeouts: Timeouts::for_interval(INTERVAL_MS),
    };
    let mut core = Core::new(cfg, identity.clone(), height + 1, prev_hash, prev_ts, stored.last_signed);
    core.restore_own(stored.own);
    core.restore_lock(stored.lock);
    let cfg = DriverConfig {
        network_id: NET,
        block_interval_ms: INTERVAL_MS,
        min_active: MIN_ACTIVE,
        limits: setup.limits,
        node_limits: setup.node_limits,
        identity,
        bootstrap: setup.bootstrap.clone(),
        max_version: MAX_VERSION,
        // No two processes share a key here: the watch would only delay
        // every restarted node's first signature; a node that lost its data
        // dir runs it (it is what brings back what its key signed).
        watch_intervals: watch,
    };
    let mut driver = Driver::new(core, cfg, now);
    // As the producer hands it in from the store, for the `Holds` it sends.
    driver.handle_earliest(stored.earliest, now);
    driver
}

/// A message's body as the transport delivers it (the frame without its
/// length prefix), or `None` when it is over its kind's limit (the receiver's
/// transport refuses such a frame before reading it).
pub fn body_of(msg: &Message) -> Option<bytes::Bytes> {
    msg.encode().ok().map(|frame| frame.slice(4..))
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

/// A key no scenario gives a member: what a Byzantine member signs forged
/// approvals with, and what the bootstrap peer with another history runs.
pub fn outsider() -> Arc<Identity> {
    static OUTSIDER: OnceLock<Arc<Identity>> = OnceLock::new();
    OUTSIDER
        .get_or_init(|| {
            let key = ed25519_dalek::SigningKey::from_bytes(&[0xee; 32]);
            Arc::new(Identity::from_signing_key(key).expect("self-signed certificate"))
        })
        .clone()
}

/// Another history from the genesis: `len` blocks certified by keys that
/// were never members here (a bootstrap peer that serves it).
pub fn other_history(len: Height) -> Vec<Committed> {
    let keys = other_keys();
    let mut chain: Vec<Committed> = Vec::new();
    let (mut prev, mut ts) = (genesis_hash(&NET), GENESIS_MS);
    for height in 1..=len {
        ts += INTERVAL_MS;
        let txs = vec![format!("another history {height}").into_bytes()];
        let header = Header {
            height,
            round: 0,
            prev_hash: prev,
            timestamp_ms: ts,
            proposer: keys[(height % 4) as usize].id(),
            tx_root: tx_root(&txs),
            changes: vec![],
        };
        let block = Block { header, txs: txs.into_iter().map(Into::into).collect() };
        let id = block.hash();
        let precommits = keys[..3].iter().map(|k| precommit(height, 0, Some(id), k)).collect();
        prev = id;
        chain.push(Committed { block, cert: Certificate { height, round: 0, block: id, precommits } });
    }
    chain
}

/// The keys that certify [`other_history`], sorted by id.
fn other_keys() -> Vec<Arc<Identity>> {
    static KEYS: OnceLock<Vec<Arc<Identity>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut v: Vec<Arc<Identity>> = (0..4u8)
            .map(|i| {
                let key = ed25519_dalek::SigningKey::from_bytes(&[0xc0 + i; 32]);
                Arc::new(Identity::from_signing_key(key).expect("self-signed certificate"))
            })
            .collect();
        v.sort_by_key(|i| i.id());
        v
    })
    .clone()
}

/// A checkpoint answer of another history at `height`: a block signed by
/// `me` and the keys of [`other_history`], linked to a member state of those
/// keys under protocol 4 that it commits to, on a made-up parent. Consistent
/// in itself (its certificate verifies against that state); its id is no
/// block of this network's chain, and of the genesis set only `me` signed it.
pub fn other_checkpoint(me: &Identity, height: Height) -> CheckpointAnswer {
    let height = height.max(2);
    let keys = other_keys();
    let mut ids: Vec<NodeId> = keys.iter().map(|k| k.id()).collect();
    ids.push(me.id());
    let mut before = Membership::of_ids(&ids, MIN_ACTIVE).state().clone();
    before.applied = height - 1;
    before.schedule.push(UpgradePlan { version: 4, height: 1 });
    let parent = Hash([0xab; 32]);
    let txs = vec![format!("another history {height}").into_bytes()];
    let header = Header {
        height,
        round: 0,
        prev_hash: parent_link(parent, members_digest(&before), true),
        timestamp_ms: GENESIS_MS + height * INTERVAL_MS,
        proposer: me.id(),
        tx_root: tx_root(&txs),
        changes: vec![],
    };
    let block = Block { header, txs: txs.into_iter().map(Into::into).collect() };
    let id = block.hash();
    let mut precommits = vec![precommit(height, 0, Some(id), me)];
    precommits.extend(keys.iter().map(|k| precommit(height, 0, Some(id), k)));
    let cert = Certificate { height, round: 0, block: id, precommits };
    CheckpointAnswer { parent, committed: Committed { block, cert }, before }
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

/// The signature of a signed consensus message: deterministic (ed25519), so
/// two messages of one key are one message exactly when it is the same.
pub fn signature_of(m: &Signed) -> &[u8; 64] {
    match m {
        Signed::Vote(v) => &v.signature,
        Signed::Proposal(p) => &p.signature,
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
            format!("{kind}(h={} r={} {value} by {})", v.height, v.round, &v.voter.short()[..4])
        }
    }
}

/// A message as the trace shows it.
pub fn describe_message(m: &Message) -> String {
    match m {
        Message::Proposal(p) => describe(&Signed::Proposal(p.clone())),
        Message::Vote(v) => describe(&Signed::Vote(v.clone())),
        Message::CompactProposal(p) => {
            let vr = p.valid_round.map_or(String::new(), |vr| format!(" vr={vr}"));
            format!("Compact(h={} r={} {} {} ids{vr})", p.height, p.round, p.header.hash().short(), p.ids.len())
        }
        Message::Tip { height, time_ms, .. } => format!("Tip({height} at {time_ms})"),
        Message::Tx(tx) => format!("Tx({} bytes)", tx.len()),
        Message::Approval(sa) => format!("Approval({})", sa.approval.change),
        Message::GetBlocks { from, count } => format!("GetBlocks({from}, {count})"),
        Message::Blocks(b) => format!("Blocks({})", b.len()),
        Message::GetTxs { height, round, ids } => format!("GetTxs(h={height} r={round} {} ids)", ids.len()),
        Message::Txs(t) => format!("Txs({})", t.len()),
        Message::Data(d) => format!("Data({})", d.len()),
        Message::Holds { earliest, height } => format!("Holds({earliest}..={height})"),
        Message::GetCheckpoint { height } => format!("GetCheckpoint({height})"),
        Message::Checkpoint(c) => format!("Checkpoint({})", c.committed.block.height()),
    }
}

/// The signed message a consensus message carries (a compact proposal's
/// block is not here: `None`).
pub fn signed_of(m: &Message) -> Option<Signed> {
    match m {
        Message::Proposal(p) => Some(Signed::Proposal(p.clone())),
        Message::Vote(v) => Some(Signed::Vote(v.clone())),
        _ => None,
    }
}
