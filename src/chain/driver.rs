//! The block producer's rules, as a state machine without IO.
//!
//! The driver owns the consensus [`Core`] and everything that decides around it:
//! its timers, the quorum gate, the mempool, compact proposals waiting for their
//! transactions, the sync planner and the per-peer rate limits, the approval
//! pool, the clock estimate. It reads no clock and touches no socket or disk:
//! inputs come in through `handle_*` with the time ([`Now`]), decisions come out
//! of [`Driver::poll_effect`] and [`Driver::poll_timeout`], in the style of
//! `net::slots`. The async shell (`chain::producer`) carries them out;
//! a simulation can run many drivers on virtual time.
//!
//! The rules:
//!
//! * **Order.** Effects come out in the order they must be carried out, and the
//!   shell runs each to completion before the next. A signature is recorded
//!   ([`Effect::Persist`]) before the message it signed is broadcast; a decided
//!   block is stored ([`Effect::Commit`]) before its `Tip` is broadcast and
//!   before anything the block caused (the next height's votes, the new member
//!   set handed to the transport).
//! * **The quorum gate.** Members of the current height's set that are
//!   connected, this node included when it is one, against
//!   [`quorum::required_active`]. The core hears `Input::Quorum` when the gate
//!   opens or closes, and hears it closed while the doppelganger watch holds
//!   its signatures back; each change of the count or state is logged once (a
//!   lost quorum at warn).
//! * **Doppelganger watch and floor** ([`super::doppelganger`]). After a start
//!   the core's gate stays closed until the watch is over (its intervals in
//!   the mesh, caught up): the node follows, serves and relays, and signs
//!   nothing. A vote or proposal of our key from a peer that the core does not
//!   hold, and a precommit of our key in a synced block's certificate above
//!   our record, are weighed before anything else sees them: a second signer
//!   stops the driver ([`Effect::Doppelganger`], with the watch on); an older
//!   signature raises the record the core signs above, and one for a value
//!   the lock it implies (the gate stays closed at that height until the
//!   value's proposal is here). A peer that comes up is sent the messages of
//!   its own key held for this height, so a peer restarted on an older data
//!   dir learns what it signed.
//! * **The propose wait.** A round's proposer we cannot hear (not connected, or
//!   silent for `max(3 intervals, 1.5 s) × (round + 1)`) gets a propose timeout
//!   of [`ABSENT_PROPOSER_WAIT_MS`]: nothing can arrive from it, and prevoting
//!   nil at once only gives up that round's block. A peer counts as heard when
//!   it comes up and when it sends a proposal or vote of our height that it
//!   signed itself and that verifies (or repeats one that did): junk, a relay
//!   of others' messages or messages of other heights say nothing of whether it
//!   will propose, and a member flooding them can neither keep its own wait
//!   long nor make another's short.
//! * **Rebroadcast.** When no new height came for `max(3 intervals, 3 s)` and the
//!   quorum is met, everything held for this height (ours and others' votes, the
//!   round's proposal) is broadcast again: messages may have been lost, or
//!   reached only some of us. Checked on the housekeeping tick, every
//!   [`TICK_MS`].
//! * **Compact proposals** ([`super::compact`]). Checked without their
//!   transactions, rebuilt from the mempool within the block's byte limit; a
//!   refusal the proposer's signature proves (an id twice, too many bytes) is
//!   counted against the proposer, any other against the sender. What is
//!   missing is fetched from the proposer when connected, else from the peer
//!   that sent it, for this round, the next, and the next height's first two;
//!   later rounds are kept in compact form, a few, until the window reaches
//!   them, and earlier ones are not fetched. A fetch ends ([`Effect::CancelTxs`])
//!   as soon as its proposal leaves: left behind by the window, or not
//!   answered within `max(2 intervals, 1 s) + max(interval, 500 ms) × round`,
//!   which drops the proposal; the propose timeout then runs as if it never
//!   came.
//! * **Mempool** ([`super::mempool`]). A submission goes to the local share and
//!   is broadcast if new; a member's gossip goes to that member's share. After
//!   every block the committed transactions leave, old ones expire and the
//!   shares follow the member set.
//! * **Sync** ([`super::sync`]). Peers' claims come from tips, handshakes and
//!   messages of later heights; the planner picks whom to ask. An answer is
//!   taken only from a peer with a request in flight, and only if it holds
//!   the blocks asked for (consecutive from the height asked, no more than
//!   asked); any other is refused whole, nothing of it applied (an answer
//!   nobody waits for is dropped, one with blocks not asked for counts as
//!   invalid). Blocks of an answer go to the core in order; the first one
//!   that does not advance the chain makes the answer invalid.
//! * **Requests.** `GetBlocks`, `GetCheckpoint`, `GetTxs` and the `Data` echo are served under a
//!   token bucket per peer (`sync_requests_per_sec`, bursts of twice that);
//!   `GetTxs` only for peers the chain names; anything else is refused. The
//!   answers' bytes are paced per peer as well ([`ServeBudget`],
//!   `sync_serve_bytes_per_sec`, 8 MiB/s by default): a `GetBlocks` reserves a
//!   full answer and waits for its turn, at most [`SERVE_WAIT_MS`], and the
//!   shell hands back what the answer did not use ([`Driver::handle_served`]);
//!   a `Txs` answer is charged what it holds and refused if the budget does
//!   not cover it now. Past either bound the request is refused as rate
//!   limited, counted by budget. Every request gets exactly one answer
//!   ([`Effect::ServeBlocks`], [`Effect::Reply`] or [`Effect::Refuse`]).
//! * **Bootstrap peers.** A peer that neither the set in force nor the next one
//!   names (a `bootstrap` entry) serves sync only: its transactions and its
//!   clock readings do not count here; its tip does.
//! * **Per peer.** What is kept per peer (request buckets, when it was last
//!   heard, its wire version, its sync claims and reports, its clock readings)
//!   is kept only for peers the transport is handed ([`Effect::SetMembers`]:
//!   the sets in force and next, and `bootstrap`). A peer that leaves them is
//!   forgotten at that block, and until the transport closes its connection
//!   nothing it sends is taken (its requests are refused as unsupported).
//! * **Reports.** A misbehaviour or failure is logged at warn the first time per
//!   culprit and kind, at debug after that; at most [`MAX_REPORTED`] are
//!   remembered.
//! * **Upgrade plans.** A proposer puts approvals of upgrade plans in its block
//!   only while every member of the height's set is connected at a wire version
//!   that decodes them ([`members::may_carry_plans`] over the wire versions the
//!   shell hands in with [`Driver::handle_wire_versions`]). After every block,
//!   and at start, the schedule goes to [`super::upgrade`]: warnings about
//!   plans this binary cannot run, and, when the next height is one of them,
//!   [`Effect::Halt`] after the block's `Commit`: the driver starts no height
//!   it cannot run, signs nothing more and takes no further input.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use super::block::{tx_hash, tx_root_of_ids, Block, Hash, Height, Limits, Round};
use super::clock::{self, ClockConfig, ClockEstimator, ClockEvent};
use super::compact::{self, Assembly, CompactError, CompactProposal, FillError, RebuildLimits, Waiting};
use super::consensus::{Core, Input, Output, Signed, Timeout};
use super::doppelganger::{Evidence, EvidenceKind, Hold, Seen, Watch, WatchConfig};
use super::limits::{NodeLimits, Usage};
use super::members::{
    self, Approval, ApprovalPool, Change, ChangeError, Completed, Membership, MembershipState, PendingView, Plan,
    SignedApproval,
};
use super::mempool::{AddError, Figures, Mempool, Source};
use super::message::{self, Message, TooLarge};
use super::misbehaviour::Misbehaviour;
use super::quorum::{self, Quorum};
use super::sync::{Failure, Outcome, ServeBudget, SyncConfig, SyncPlanner, TokenBucket};
use super::upgrade::{self, UpgradeWatch};
use super::vote::{Committed, Lock, SignRecord};
use crate::codec::FrameError;
use crate::identity::{Identity, NodeId};
use crate::net::{Refusal, RequestError};

/// Misbehaviour reports logged at warn level before falling back to debug.
pub(crate) const MAX_REPORTED: usize = 1024;
/// Propose timeout for a proposer we cannot hear (ms): a proposal already in
/// flight may still land.
pub(crate) const ABSENT_PROPOSER_WAIT_MS: u64 = 100;
/// The longest an answer waits for its peer's serve budget (ms); a request
/// that would wait longer is refused as rate limited. Well within the
/// requester's request timeout, and twice its hedge.
pub(crate) const SERVE_WAIT_MS: u64 = 2_000;
/// The housekeeping tick (ms): rebroadcast, sync hedges. The shell's loop turns
/// at least this often, which the service watchdog counts as progress.
pub(crate) const TICK_MS: u64 = 250;

/// What the shell's clocks read. `mono_ms`: a monotonic count of milliseconds
/// (timers, pacing of rebroadcasts, sync rates, "last heard"); `wall_ms`: the
/// wall clock as consensus sees it (block timestamps, tips' clock readings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

/// What the driver needs to know of the network and this node.
#[derive(Clone)]
pub struct DriverConfig {
    pub network_id: [u8; 32],
    pub block_interval_ms: u64,
    pub min_active: usize,
    pub limits: Limits,
    /// Sync batch and response sizes, request rates, mempool limits.
    pub node_limits: NodeLimits,
    /// Signs this node's membership approvals.
    pub identity: Arc<Identity>,
    /// Members to reach besides those the chain names, for as long as the node
    /// runs (the transport starts with the same list).
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
    /// The highest protocol version this node runs: [`super::rules::MAX_VERSION`]
    /// (a rehearsal may set another); it stops before the height of a plan
    /// for a later one.
    pub max_version: u16,
    /// Block intervals of the doppelganger watch after the start
    /// (`doppelganger_intervals`; 0 turns it off): see [`super::doppelganger`].
    pub watch_intervals: u32,
}

/// The shell's name for an inbound request, carried by its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What the shell must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Record durably (fsync) that we signed `message` (with the lock beside a
    /// precommit for a value); nothing after it may run before it is on disk.
    Persist { record: SignRecord, message: Signed, lock: Option<Box<Lock>> },
    /// Store the block with the membership it leaves, durably, before anything
    /// after it. `synced`: fetched by sync, not decided by this node's rounds.
    Commit { committed: Committed, membership: Box<MembershipState>, synced: bool },
    /// Queue for every peer.
    Broadcast(Message),
    /// Queue for one peer.
    Send { to: NodeId, msg: Message },
    /// Ask `peer` for blocks; answer with [`Driver::handle_blocks`].
    RequestBlocks { peer: NodeId, from: Height, count: u32 },
    /// Ask `peer` for a compact proposal's missing transactions; answer with
    /// [`Driver::handle_txs`].
    RequestTxs { peer: NodeId, height: Height, round: Round, ids: Vec<Hash> },
    /// The assembly of `(height, round)` is gone: end its fetch, drop any answer.
    CancelTxs { height: Height, round: Round },
    /// Wait `after_ms`, then read blocks from the store and answer request `id`
    /// of `peer` with `Message::Blocks`; hand the bytes the answer took to
    /// [`Driver::handle_served`] with `max_bytes` as what was reserved.
    ServeBlocks { id: RequestId, peer: NodeId, from: Height, count: usize, max_bytes: usize, after_ms: u64 },
    /// Wait `after_ms`, then read the checkpoint at `height` (0: the tip) from
    /// the store and answer request `id` of `peer` with `Message::Checkpoint`,
    /// or refuse it when the store does not hold it; hand the bytes to
    /// [`Driver::handle_served`] as for `ServeBlocks`.
    ServeCheckpoint { id: RequestId, peer: NodeId, height: Height, max_bytes: usize, after_ms: u64 },
    /// Answer request `id`.
    Reply { id: RequestId, msg: Message },
    /// Refuse request `id`.
    Refuse { id: RequestId, refusal: Refusal },
    /// Hand the transport the members to reach.
    SetMembers(Vec<(NodeId, SocketAddr)>),
    /// The member view changed (for `/members` and `/status`).
    PublishMembers(Arc<MembersView>),
    /// The next height is `plan`'s, whose version this node does not run
    /// (`max_version` is the highest it does): stop, with everything before
    /// this effect carried out. The driver signs nothing more and takes no
    /// further input.
    Halt { plan: Plan, max_version: u16 },
    /// Another process signs with this node's key ([`super::doppelganger`]):
    /// stop, with everything before this effect carried out. The driver signs
    /// nothing more and takes no further input.
    Doppelganger(Evidence),
}

/// A `Blocks` answer and its body's size.
#[derive(Debug, Clone)]
pub struct BlocksAnswer {
    pub blocks: Vec<Committed>,
    pub bytes: usize,
}

/// Why a request to a peer (`GetBlocks`, `GetTxs`) brought nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum RequestFailure {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("response does not decode: {0}")]
    Decode(#[from] FrameError),
    #[error("answered with {0}")]
    Unexpected(&'static str),
    #[error("cannot ask: {0}")]
    Encode(#[from] TooLarge),
}

impl RequestFailure {
    /// How the sync planner counts it.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            RequestFailure::Request(RequestError::Timeout(_)) => Failure::Timeout,
            RequestFailure::Request(RequestError::Frame(_))
            | RequestFailure::Decode(_)
            | RequestFailure::Unexpected(_) => Failure::Malformed,
            RequestFailure::Request(_) | RequestFailure::Encode(_) => Failure::Request,
        }
    }
}

/// A membership change an operator asks this node to approve (or, for its own
/// address, to announce), through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRequest {
    Add {
        id: NodeId,
        addr: SocketAddr,
    },
    Remove {
        id: NodeId,
    },
    /// This node's own new address.
    SetAddr {
        addr: SocketAddr,
    },
    /// An upgrade plan: protocol `version` from `height` on (the first
    /// approval proposes it).
    Upgrade {
        version: u16,
        height: Height,
    },
}

/// A signed approval this node accepted and gossiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub change: Change,
    /// Members whose approvals count so far (on chain and waiting for a block).
    pub approvals: usize,
    pub required: usize,
    pub expires_at: Height,
}

/// What `/members` and `/status` show: the membership after the tip, and the
/// approvals this node holds that no block carries yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersView {
    pub membership: Membership,
    pub waiting: Vec<Approval>,
}

impl MembersView {
    /// Members approving `change`: on chain (still counting) and waiting.
    pub(crate) fn approvers(&self, change: &Change) -> Vec<NodeId> {
        let current = self.membership.current();
        let mut out: BTreeSet<NodeId> =
            self.membership.pending().into_iter().filter(|p| &p.change == change).flat_map(|p| p.approvals).collect();
        out.extend(
            self.waiting.iter().filter(|a| &a.change == change && current.contains(&a.approver)).map(|a| a.approver),
        );
        out.into_iter().collect()
    }

    /// Every change collecting approvals, on chain or only waiting here, with
    /// its approvers, in `Change` order: what `/status` and `/members` show.
    pub fn pending(&self) -> Vec<PendingView> {
        let membership = &self.membership;
        let mut changes: BTreeMap<Change, (usize, Height)> = BTreeMap::new();
        for p in membership.pending() {
            changes.insert(p.change, (p.required, p.expires_at));
        }
        let ttl = membership.params().ttl;
        for a in &self.waiting {
            let required = required_approvals(membership, &a.change);
            let entry = changes.entry(a.change.clone()).or_insert((required, a.signed_at + ttl));
            entry.1 = entry.1.min(a.signed_at + ttl);
        }
        changes
            .into_iter()
            .map(|(change, (required, expires_at))| PendingView {
                approvals: self.approvers(&change),
                change,
                required,
                expires_at,
            })
            .collect()
    }
}

/// Approvals `change` needs: a vote of the current set, or its subject's alone.
fn required_approvals(membership: &Membership, change: &Change) -> usize {
    if change.needs_vote() {
        membership.current().quorum()
    } else {
        1
    }
}

/// Declares [`Held`]: one line per structure, its label and what it holds.
macro_rules! held {
    ($($name:ident => $label:literal: $doc:literal,)*) => {
        /// The structures of the driver that hold what peers send, each
        /// reported by [`Driver::held`] and, in bytes, as
        /// `masternode_held_bytes{what}`: a fixed set, so labels never come
        /// from a peer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Held {
            $(#[doc = $doc] $name,)*
        }

        impl Held {
            pub const ALL: [Held; [$(Held::$name),*].len()] = [$(Held::$name),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Held::$name => $label,)*
                }
            }
        }
    };
}

held! {
    CompactWaiting => "compact_waiting": "Compact proposals being fetched: their ids and the transactions placed.",
    CompactLater => "compact_later": "Compact proposals kept for a later round: their ids and headers.",
    FetchRequests => "fetch_requests": "`GetTxs` requests in flight.",
    Approvals => "approvals": "Membership approvals waiting for a block.",
    Votes => "votes": "Votes of the height being decided, every round.",
    Proposals => "proposals": "Proposals of the height being decided, one per round.",
    NextHeight => "next_height": "Proposals and votes kept for the next height.",
    Clock => "clock": "Clock readings from the members' tips.",
    PeerState => "peer_state": "What the driver keeps per peer: rate limits, last heard, sync claims and reports.",
    CompactSigned => "compact_signed": "The latest compact proposal of each proposer at this height and the next, kept to send back to the proposer when it connects.",
    Rebuild => "compact_rebuild": "The largest rebuild of one compact proposal from the mempool since the start (a high-water mark: a rebuild is held while its proposal is checked, and kept only as it waits).",
    SyncAnswers => "sync_answers": "Peers' answers to this node's own requests (`Blocks`, `Txs`) read and not yet handled (held by the shell).",
}

/// The figures the shell publishes for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// The consensus round at the current height.
    pub round: u64,
    /// The highest tip a usable peer claims (0 if none).
    pub best_peer_tip: Height,
    /// Failed sync requests, by [`Failure`] (in `Failure::ALL` order).
    pub sync_failures: [u64; 6],
    pub misbehaviour: u64,
    pub blocks_synced: u64,
    /// Our clock's offset from the peers' (ms, positive when ours is ahead),
    /// when enough peers were heard.
    pub clock_offset_ms: Option<i64>,
    /// Peers the clock offset is estimated from (0 while there is none).
    pub clock_peers: usize,
    pub mempool: Figures,
    /// Requests refused for their peer's request rate, and for its serve
    /// budget in bytes.
    pub refused_rate: u64,
    pub refused_bytes: u64,
    /// Why this member signs nothing now, if it holds back
    /// ([`super::doppelganger`]).
    pub(crate) hold: Option<Hold>,
}

/// A compact proposal's fetch under way: whom we asked, until when, and about
/// how many bytes its request holds while it runs.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    peer: NodeId,
    deadline_ms: u64,
    request_bytes: usize,
}

/// A `GetTxs` request's bytes besides its ids: the frame's length prefix,
/// kind, height, round and the ids' count, at most.
const GET_TXS_HEAD_BYTES: usize = 4 + 1 + 9 + 5 + 5;

/// The quorum gate: whom the transport has connected, and what that made of
/// the gate last time.
#[derive(Debug, Default)]
struct Gate {
    connected: BTreeSet<NodeId>,
    /// `(active, met)` as last computed; `None` before the first time.
    last: Option<(usize, bool)>,
}

impl Gate {
    fn met(&self) -> bool {
        self.last.is_some_and(|(_, met)| met)
    }
}

pub struct Driver {
    cfg: DriverConfig,
    core: Core,
    effects: VecDeque<Effect>,
    /// Core timeouts by `(deadline, sequence)`.
    timers: BTreeMap<(u64, u64), Timeout>,
    timer_seq: u64,
    next_tick_ms: u64,
    /// The height we were at, and since when (or since the last rebroadcast).
    last_height_seen: (Height, u64),
    gate: Gate,
    mempool: Mempool,
    waiting: Waiting,
    /// The bytes of the largest rebuild made ([`Held::Rebuild`]).
    largest_rebuild: usize,
    fetches: BTreeMap<(Height, Round), Fetch>,
    /// The ids of the blocks this node proposed or rebuilt lately ([`TxIds`]).
    tx_ids: TxIds,
    /// The latest compact proposal of each proposer at this height or the
    /// next (its signature verified), whether its transactions came or not:
    /// sent back to the proposer when it connects, beside what the core holds
    /// of its key ([`Core::signed_by`]), so that a proposer restarted from a
    /// checkpoint learns a proposal of its key this node could not rebuild.
    proposed_by: BTreeMap<NodeId, CompactProposal>,
    sync: SyncPlanner,
    sync_buckets: HashMap<NodeId, TokenBucket>,
    /// Bytes of answers each peer may be served ([`ServeBudget`]).
    serve_budgets: HashMap<NodeId, ServeBudget>,
    /// Requests refused for their rate and for their bytes.
    refused: (u64, u64),
    /// Peers already reported for going over their sync rate.
    rate_limited: HashSet<NodeId>,
    /// When each peer was last heard taking part (mono ms).
    last_heard: HashMap<NodeId, u64>,
    clock: ClockEstimator,
    approvals: ApprovalPool,
    members_view: Arc<MembersView>,
    /// The members last handed to the transport, and their ids: what a peer
    /// must be for anything it sends to be taken or kept.
    reachable: Vec<(NodeId, SocketAddr)>,
    reachable_ids: HashSet<NodeId>,
    /// Whether this node is a member of the current height's set.
    member: bool,
    reported: HashSet<(Option<NodeId>, &'static str)>,
    misbehaviour: u64,
    blocks_synced: u64,
    /// The connected peers' wire versions, as the shell last handed them in.
    wire: BTreeMap<NodeId, u16>,
    /// The earliest height whose block this node's store holds, as the shell
    /// last handed it in (told to peers in `Holds`).
    earliest: Height,
    upgrades: UpgradeWatch,
    /// The plan this node stopped before, once it did.
    halted: Option<Plan>,
    /// The doppelganger watch, and the evidence this node stopped on.
    watch: Watch,
    doppelganger: Option<Evidence>,
    /// Whether the core was last told its gate is open: the quorum gate met,
    /// and nothing holding signatures back ([`Self::may_sign_now`]).
    core_gate: bool,
    /// A lock the network proves this key held at `(height, round)` on a
    /// value whose proposal is not here yet.
    lock_wanted: Option<(Height, Round, Hash)>,
}

impl Driver {
    /// A driver around `core`, whose current height it starts (`core.start`).
    pub fn new(core: Core, cfg: DriverConfig, now: Now) -> Driver {
        let membership = core.membership().clone();
        let height = core.height();
        let members = core.members_at(height);
        let clock = ClockEstimator::new(ClockConfig {
            min_peers: clock::min_peers_for(members.len()),
            ..ClockConfig::default()
        });
        let member = members.contains(&core.id());
        let watch = Watch::new(
            WatchConfig { intervals: cfg.watch_intervals, block_interval_ms: cfg.block_interval_ms },
            now.wall_ms,
        );
        if member && watch.watching() {
            tracing::info!(
                intervals = cfg.watch_intervals,
                "doppelganger watch: signing nothing until this node has been in the mesh for {} block intervals \
                 without seeing a vote of its key that it did not make",
                cfg.watch_intervals
            );
        }
        let mut driver = Driver {
            watch,
            doppelganger: None,
            core_gate: false,
            lock_wanted: None,
            upgrades: UpgradeWatch::new(cfg.max_version),
            wire: BTreeMap::new(),
            earliest: 1,
            halted: None,
            member,
            reachable: membership.reachable_with(&cfg.bootstrap),
            reachable_ids: membership.reachable_with(&cfg.bootstrap).into_iter().map(|(id, _)| id).collect(),
            members_view: Arc::new(MembersView { membership, waiting: Vec::new() }),
            mempool: Mempool::new(cfg.node_limits.mempool),
            waiting: Waiting::new(&cfg.limits),
            largest_rebuild: 0,
            tx_ids: TxIds::default(),
            proposed_by: BTreeMap::new(),
            sync: SyncPlanner::new(SyncConfig { batch: cfg.node_limits.sync_batch_blocks, ..SyncConfig::default() }),
            last_height_seen: (height, now.mono_ms),
            next_tick_ms: now.mono_ms + TICK_MS,
            cfg,
            core,
            effects: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            gate: Gate::default(),
            fetches: BTreeMap::new(),
            sync_buckets: HashMap::new(),
            serve_budgets: HashMap::new(),
            refused: (0, 0),
            rate_limited: HashSet::new(),
            last_heard: HashMap::new(),
            clock,
            approvals: ApprovalPool::default(),
            reported: HashSet::new(),
            misbehaviour: 0,
            blocks_synced: 0,
        };
        driver.mempool_follows_chain(height - 1, None);
        // A node restarted before (or past) a height it cannot run stops
        // again without starting it.
        match driver.follow_upgrades() {
            Some(halt) => driver.effects.push_back(halt),
            None => {
                let start = driver.core.start(now.wall_ms);
                driver.drive(start, false, now);
            }
        }
        driver
    }

    /// Whether this driver stopped: before a height it cannot run, or on a
    /// second process signing with its key.
    fn stopped(&self) -> bool {
        self.halted.is_some() || self.doppelganger.is_some()
    }

    /// The next thing to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Self::handle_timeout`] next has something to do (mono ms): a core
    /// timer, a fetch deadline, or the housekeeping tick; never once halted.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.stopped() {
            return None;
        }
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        let fetch = self.fetches.values().map(|f| f.deadline_ms).min();
        [timer, fetch, self.watch.poll_timeout(), Some(self.next_tick_ms)].into_iter().flatten().min()
    }

    /// The height being decided (the tip's + 1).
    pub fn height(&self) -> Height {
        self.core.height()
    }

    /// The consensus core, for views (lock, round, members).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The membership after the tip and the approvals waiting here, as last
    /// published.
    pub fn members_view(&self) -> Arc<MembersView> {
        self.members_view.clone()
    }

    /// The figures for status and metrics, as of `now`.
    pub(crate) fn stats(&self, now: Now) -> Stats {
        Stats {
            round: self.core.round() as u64,
            best_peer_tip: self.sync.best_claim(now.mono_ms),
            sync_failures: self.sync.failures(),
            misbehaviour: self.misbehaviour,
            blocks_synced: self.blocks_synced,
            clock_offset_ms: self.clock.offset_ms(now.wall_ms),
            clock_peers: self.clock.peers(now.wall_ms),
            mempool: self.mempool.figures(),
            refused_rate: self.refused.0,
            refused_bytes: self.refused.1,
            hold: self.hold(),
        }
    }

    /// About the bytes kept per peer: request buckets, rate-limit reports,
    /// when each was last heard, wire versions, the sync planner's entries and
    /// the misbehaviour reports remembered. One entry per peer at most in each
    /// (at most [`MAX_REPORTED`] reports), for peers the chain names or
    /// `bootstrap` lists: the others are forgotten as they leave
    /// ([`Self::forget_unreachable`]).
    pub(crate) fn peer_state_bytes(&self) -> usize {
        use std::mem::size_of;
        self.sync_buckets.len() * size_of::<(NodeId, TokenBucket)>()
            + self.serve_budgets.len() * size_of::<(NodeId, ServeBudget)>()
            + self.rate_limited.len() * size_of::<NodeId>()
            + self.last_heard.len() * size_of::<(NodeId, u64)>()
            + self.wire.len() * size_of::<(NodeId, u16)>()
            + self.reported.len() * size_of::<(Option<NodeId>, &'static str)>()
            + self.sync.bytes()
    }

    /// What `what` holds of what peers sent, now.
    pub fn held(&self, what: Held) -> Usage {
        match what {
            Held::CompactWaiting => Usage::new(self.waiting.len(), self.waiting.bytes()),
            Held::CompactLater => Usage::new(self.waiting.later_len(), self.waiting.later_bytes()),
            Held::CompactSigned => {
                Usage::new(self.proposed_by.len(), self.proposed_by.values().map(CompactProposal::bytes).sum())
            }
            Held::Rebuild => Usage::new(usize::from(self.largest_rebuild > 0), self.largest_rebuild),
            Held::FetchRequests => Usage::new(self.fetches.len(), self.fetches.values().map(|f| f.request_bytes).sum()),
            Held::Approvals => self.approvals.usage(),
            Held::Votes => self.core.held().votes,
            Held::Proposals => self.core.held().proposals,
            Held::NextHeight => self.core.held().next_height,
            Held::Clock => Usage::new(self.clock.members(), self.clock.bytes()),
            Held::PeerState => Usage::new(self.last_heard.len(), self.peer_state_bytes()),
            // Held by the shell, which reports it itself.
            Held::SyncAnswers => Usage::default(),
        }
    }

    /// What the mempool holds for `source`: its transactions and their bytes.
    pub fn mempool_share(&self, source: Source) -> Usage {
        let (txs, bytes) = self.mempool.held_by(source);
        Usage::new(txs, bytes)
    }

    /// Whether a gossiped frame can be dropped undecoded: a proposal for a
    /// height past the next one, which nothing could use (only the next height
    /// is buffered, and votes tell us a peer is ahead), before its up to 3 MiB
    /// are decoded.
    pub fn skip_undecoded(&self, body: &[u8]) -> bool {
        message::proposal_height(body).is_some_and(|h| h > self.core.height() + 1)
    }

    /// Fires every timer due at `now`: core timeouts, fetch deadlines, and the
    /// housekeeping tick (rebroadcast, sync hedges).
    pub fn handle_timeout(&mut self, now: Now) {
        if self.stopped() {
            return;
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now.mono_ms {
                break;
            }
            let timeout = entry.remove();
            let out = self.core.handle(Input::Timeout(timeout), now.wall_ms);
            self.drive(out, false, now);
        }
        self.expire_fetches(now);
        if now.mono_ms >= self.next_tick_ms {
            self.next_tick_ms = now.mono_ms + TICK_MS;
            self.rebroadcast(now);
            // A slow request may be due for a hedge.
            self.maybe_sync(now);
        }
        self.follow_watch(now);
        let out = self.tell_core(now);
        self.drive(out, false, now);
        self.follow_lock(now);
        self.fetch_due(now);
    }

    /// The transport's connected peers are now `connected`: the gate is
    /// recomputed.
    pub fn handle_connected(&mut self, connected: BTreeSet<NodeId>, now: Now) {
        if self.stopped() {
            return;
        }
        self.gate.connected = connected;
        let out = self.check_quorum(now);
        self.drive(out, false, now);
        self.fetch_due(now);
    }

    /// `id` has a new connection, its handshake claiming `tip` (when the shell
    /// knows it). It missed what we signed at this height and the approvals
    /// waiting for a block: both are sent again.
    pub fn handle_peer_up(&mut self, id: NodeId, tip: Option<Height>, now: Now) {
        if self.stopped() || !self.reachable_ids.contains(&id) {
            return;
        }
        self.last_heard.insert(id, now.mono_ms);
        for m in self.core.own_messages() {
            self.effects.push_back(Effect::Send { to: id, msg: gossip_form(&m, &self.tx_ids) });
        }
        // And what it signed that we hold: a peer restarted on an older copy
        // of its data dir learns what its key signed here before it signs
        // again (see `super::doppelganger`).
        for m in self.core.signed_by(id) {
            self.effects.push_back(Effect::Send { to: id, msg: gossip_form(&m, &self.tx_ids) });
        }
        if let Some(cp) = self.proposed_by.get(&id).filter(|cp| self.core.proposed_block(cp.height, cp.round).is_none())
        {
            self.effects.push_back(Effect::Send { to: id, msg: Message::CompactProposal(cp.clone()) });
        }
        // Approvals waiting for a block: the peer may propose the next one.
        // Those of plans too, which the transport sends only at a wire
        // version that decodes them.
        for sa in self.approvals.held() {
            self.effects.push_back(Effect::Send { to: id, msg: Message::Approval(sa.clone()) });
        }
        // What this node can serve, once it has a block (a peer asks nothing
        // of a node at height 0); the transport sends it only at wire 4. A
        // peer of wire 3 (0.1.0, which never prunes) holds every block.
        let height = self.core.height() - 1;
        if height > 0 {
            self.effects.push_back(Effect::Send { to: id, msg: Message::Holds { earliest: self.earliest, height } });
        }
        if self.wire.get(&id).is_some_and(|w| *w >= message::HOLDS_WIRE) {
            self.sync.handle_holds_unknown(id);
        } else {
            self.sync.handle_holds(id, 1);
        }
        if let Some(height) = tip {
            self.sync.handle_claim(id, height, now.mono_ms);
            self.maybe_sync(now);
        }
    }

    /// The store holds the blocks from `earliest` on (the pruner moved it):
    /// peers learn it with the next block's `Holds`.
    pub fn handle_earliest(&mut self, earliest: Height, _now: Now) {
        self.earliest = earliest;
    }

    /// `id` has no connection any more: its claim and its sync request are
    /// gone, and everything kept for it if the chain names it no more.
    pub fn handle_peer_down(&mut self, id: NodeId, _now: Now) {
        self.sync.handle_down(id);
        if !self.reachable_ids.contains(&id) {
            self.forget_unreachable();
        }
    }

    /// A message from `from`'s gossip stream.
    pub fn handle_message(&mut self, from: NodeId, msg: Message, now: Now) {
        // A peer the chain no longer names, until the transport closes its
        // connection: nothing it sends is taken or kept.
        if self.stopped() || !self.reachable_ids.contains(&from) {
            return;
        }
        let me = self.core.id();
        let stopped = match &msg {
            Message::Vote(v) if v.vote.voter == me => self.weigh_own_vote(from, v, now),
            Message::Proposal(p) if p.proposal.proposer == me && p.verify(&self.cfg.network_id).is_ok() => {
                let (height, round, value) = (p.proposal.height, p.proposal.round, p.proposal.block.hash());
                self.weigh_own_proposal(from, height, round, value, now)
            }
            _ => false,
        };
        if stopped {
            return;
        }
        let input = match msg {
            Message::Proposal(p) => Input::Proposal(p),
            Message::Vote(v) => Input::Vote(v),
            Message::CompactProposal(cp) => {
                self.on_compact(from, cp, now);
                return self.fetch_due(now);
            }
            Message::Tx(tx) => return self.on_tx(from, tx),
            Message::Tip { height, time_ms, .. } => return self.on_tip(from, height, time_ms, now),
            Message::Holds { earliest, height } => {
                self.sync.handle_holds(from, earliest);
                self.sync.handle_claim(from, height, now.mono_ms);
                return self.maybe_sync(now);
            }
            Message::Approval(sa) => return self.on_approval(from, sa),
            other => {
                tracing::debug!(peer = %from.short(), kind = other.kind_name(), "ignoring message on the gossip stream");
                return;
            }
        };
        // A peer counts as heard when it takes part in consensus here and now:
        // a proposal or vote of our height that it signed and that verifies.
        let (out, signer) = self.core.handle_signed(input, now.wall_ms);
        if signer == Some(from) {
            self.last_heard.insert(from, now.mono_ms);
        }
        self.drive(out, false, now);
        self.follow_lock(now);
        self.fetch_due(now);
    }

    /// A request from `from`, to be answered as `id`.
    pub fn handle_request(&mut self, from: NodeId, id: RequestId, msg: Message, now: Now) {
        if !self.reachable_ids.contains(&from) {
            return self.effects.push_back(Effect::Refuse { id, refusal: Refusal::Unsupported });
        }
        let answer = match msg {
            Message::GetBlocks { from: start, count } => {
                let (batch, max_bytes) =
                    (self.cfg.node_limits.sync_batch_blocks, self.cfg.node_limits.sync_response_bytes);
                if !self.sync_allowance(from, now) {
                    self.refuse_rate(from, id)
                } else if let Some(after_ms) = self.serve_reserve(from, max_bytes, SERVE_WAIT_MS, now) {
                    let count = count.min(batch) as usize;
                    Effect::ServeBlocks { id, peer: from, from: start, count, max_bytes, after_ms }
                } else {
                    self.refuse_bytes(from, id)
                }
            }
            // A checkpoint answer holds one block: under the rate and the serve
            // budget of `GetBlocks`, reserving as much as a `Blocks` answer; an
            // answer larger than that is charged the rest when it is written.
            Message::GetCheckpoint { height } => {
                let max_bytes = self.cfg.node_limits.sync_response_bytes;
                if !self.sync_allowance(from, now) {
                    self.refuse_rate(from, id)
                } else if let Some(after_ms) = self.serve_reserve(from, max_bytes, SERVE_WAIT_MS, now) {
                    Effect::ServeCheckpoint { id, peer: from, height, max_bytes, after_ms }
                } else {
                    self.refuse_bytes(from, id)
                }
            }
            Message::GetTxs { height, round, ids } => self.answer_txs(from, id, height, round, ids, now),
            // The echo probe (the transport's request/response check), under the
            // same rate limit as sync.
            Message::Data(d) if self.sync_allowance(from, now) => Effect::Reply { id, msg: Message::Data(d) },
            Message::Data(_) => self.refuse_rate(from, id),
            other => {
                tracing::debug!(peer = %from.short(), kind = other.kind_name(), "unexpected request");
                Effect::Refuse { id, refusal: Refusal::Unsupported }
            }
        };
        self.effects.push_back(answer);
    }

    /// An answer to `peer`'s `GetBlocks` was written (or failed): it took
    /// `used` bytes of the `reserved` ones, and the rest goes back to the
    /// peer's serve budget.
    pub fn handle_served(&mut self, peer: NodeId, reserved: usize, used: usize, _now: Now) {
        if let Some(budget) = self.serve_budgets.get_mut(&peer) {
            budget.settle(reserved, used);
        }
    }

    /// `peer`'s answer to our `GetBlocks`: taken only if a request to it is
    /// in flight and the answer holds the blocks asked for, consecutive from
    /// the height asked and no more than asked; its blocks then go to the
    /// core in order, the outcome to the planner.
    pub fn handle_blocks(&mut self, peer: NodeId, result: Result<BlocksAnswer, RequestFailure>, now: Now) {
        let Some(asked) = self.sync.in_flight_to(&peer) else {
            // Its request was given up (the peer's connection ended): nothing
            // of it is applied or kept.
            return tracing::debug!(peer = %peer.short(), "sync answer nobody waits for: dropped");
        };
        let BlocksAnswer { blocks, bytes } = match result {
            Ok(answer) => answer,
            Err(e) => return self.sync_outcome(peer, Outcome::Failed(e.failure()), &e.to_string(), now),
        };
        let asked_for = blocks.len() <= asked.count as usize
            && blocks.iter().enumerate().all(|(i, c)| c.block.height() == asked.from + i as u64);
        if !asked_for {
            let outcome = Outcome::Blocks { blocks: blocks.len(), bytes, applied: 0, invalid: true };
            let detail = format!(
                "answered with {} block(s) of heights {:?} for {} from height {}",
                blocks.len(),
                blocks.first().map(|c| c.block.height())..=blocks.last().map(|c| c.block.height()),
                asked.count,
                asked.from
            );
            drop(blocks);
            return self.sync_outcome(peer, outcome, &detail, now);
        }
        let count = blocks.len();
        let first = self.core.height();
        let mut applied: usize = 0;
        let mut invalid = false;
        for c in blocks {
            if self.stopped() {
                break;
            }
            let before = self.core.height();
            if c.block.height() < before {
                continue; // another peer's answer got there first
            }
            let ours = watch::own_precommit(&c, self.core.id());
            let out = self.core.handle(Input::Commit(c), now.wall_ms);
            self.drive(out, true, now);
            if self.core.height() == before {
                // Not the next block, or its certificate does not verify.
                invalid = true;
                break;
            }
            applied += 1;
            // Its certificate verified: a precommit of our key in it that we
            // did not sign is evidence.
            if let Some((round, stamped_ms)) = ours {
                let seen = Seen {
                    height: before,
                    round,
                    kind: EvidenceKind::CertificatePrecommit,
                    peer,
                    signed_after_ms: stamped_ms,
                    conflicts: false,
                };
                if self.core.last_signed().is_none_or(|last| seen.record() > last) && self.weigh(seen, None, now) {
                    return;
                }
            }
        }
        if applied > 0 {
            tracing::info!(peer = %peer.short(), "caught up {applied} block(s): heights {first}..{}", first + applied as u64 - 1);
        }
        if self.stopped() {
            return;
        }
        self.sync_outcome(peer, Outcome::Blocks { blocks: count, bytes, applied, invalid }, "", now);
        self.fetch_due(now);
    }

    /// `from`'s answer to our `GetTxs` for the compact proposal of `(height,
    /// round)`: complete, the proposal goes to the core; otherwise it is dropped
    /// (withheld, or answered with transactions that are not the block's).
    pub fn handle_txs(
        &mut self,
        from: NodeId,
        height: Height,
        round: Round,
        result: Result<Vec<Vec<u8>>, RequestFailure>,
        now: Now,
    ) {
        if self.stopped() {
            return;
        }
        self.fetches.remove(&(height, round));
        let Some(mut assembly) = self.waiting.take(height, round) else { return };
        let missing = assembly.missing_ids().len();
        let limits = RebuildLimits {
            max_block_bytes: self.cfg.limits.max_block_bytes,
            max_tx_bytes: self.mempool.limits().max_tx_bytes,
        };
        let (kind, outcome) = match result.map(|txs| assembly.handle_txs(txs, limits)) {
            Ok(Ok(_)) if assembly.is_complete() => {
                self.assembled(assembly, now);
                self.follow_lock(now);
                return self.fetch_due(now);
            }
            Ok(Ok(_)) => (
                "compact_proposal_incomplete",
                format!("{} of {missing} missing transactions not sent", assembly.missing_ids().len()),
            ),
            Ok(Err(FillError::Proposal(e))) => return self.refuse_compact(assembly.proposal.proposer, &e),
            Ok(Err(e @ FillError::Answer(_))) => ("txs_answer_refused", e.to_string()),
            Err(e) => ("compact_proposal_incomplete", e.to_string()),
        };
        self.report_dropped(from, height, round, kind, &outcome);
    }

    /// The transaction ids of blocks this node committed before it started
    /// (the heights and ids, oldest first; [`Self::recent_ids_wanted`] says
    /// how many): the mempool refuses them as it would have before the
    /// restart, so a client's retry or a member's late copy of a transaction
    /// committed just before it is not committed again.
    pub(crate) fn handle_committed_before(&mut self, blocks: &[(Height, Vec<Hash>)]) {
        for (height, ids) in blocks {
            self.mempool.handle_commit_ids(*height, ids);
        }
    }

    /// The heights and the ids [`Self::handle_committed_before`] can use: the
    /// mempool's window of committed ids.
    pub(crate) fn recent_ids_wanted(&self) -> (Height, usize) {
        (super::mempool::COMMITTED_HEIGHTS, self.mempool.limits().max_txs)
    }

    /// A transaction submitted here (`POST /tx`, `Node::submit`): into the
    /// mempool, and gossiped if it is new.
    pub fn handle_submit(&mut self, tx: Vec<u8>, _now: Now) -> Result<Hash, AddError> {
        let (hash, new) = self.mempool.add(tx.clone())?;
        if new {
            // Queued for every peer without waiting on any; peers that miss it (a
            // full outbox drops txs) still see it in the block.
            self.effects.push_back(Effect::Broadcast(Message::Tx(tx)));
        }
        Ok(hash)
    }

    /// An operator's change (`POST /members`): signed with this node's key,
    /// checked as the next block would check it, kept for proposers and
    /// gossiped.
    pub fn handle_change(&mut self, request: ChangeRequest, _now: Now) -> Result<Submitted, ChangeError> {
        let result = self.approve(request);
        if let Ok(s) = &result {
            let what = if s.change.plan().is_some() { "upgrade plan" } else { "member change" };
            tracing::info!(
                approvals = s.approvals,
                required = s.required,
                "approved {what}: {} ({} of {} approvals)",
                s.change,
                s.approvals,
                s.required
            );
        }
        result
    }
}

/// Consensus outputs, timers and blocks.
impl Driver {
    /// Carries out the core's outputs in order, feeding back what it asks for.
    /// `synced`: the outputs of a block fetched by sync.
    fn drive(&mut self, outputs: Vec<Output>, synced: bool, now: Now) {
        let mut work: VecDeque<Output> = outputs.into();
        while let Some(o) = work.pop_front() {
            // What the core does after the block before a height this node
            // cannot run (start it, sign in it) is never carried out.
            if self.stopped() {
                return;
            }
            match o {
                Output::Sign { record, message, lock } => {
                    // The core signs only with its gate open, which the watch
                    // keeps closed; nothing of a stopping node leaves it.
                    if self.doppelganger.is_some() {
                        continue;
                    }
                    let gossip = gossip_form(&message, &self.tx_ids);
                    self.effects.push_back(Effect::Persist { record, message, lock });
                    self.effects.push_back(Effect::Broadcast(gossip));
                }
                Output::Schedule { timeout, after_ms } => {
                    let after_ms = self.propose_wait(timeout, after_ms, now);
                    self.timer_seq += 1;
                    self.timers.insert((now.mono_ms.saturating_add(after_ms), self.timer_seq), timeout);
                }
                Output::NeedValue { height, round } => {
                    let limits = self.cfg.limits;
                    self.approvals.set_carry_plans(self.may_carry_plans(height));
                    let (ids, txs) = self.mempool.take_with_ids(limits.max_block_txs, limits.max_block_bytes);
                    let changes = if self.approvals.is_empty() {
                        Vec::new()
                    } else {
                        self.core.membership().select(self.approvals.iter(), &self.cfg.network_id)
                    };
                    let tx_root = tx_root_of_ids(ids.len(), ids.iter().copied());
                    self.tx_ids.insert(height, tx_root, ids);
                    let value = Input::Value { height, round, txs, tx_root, changes };
                    work.extend(self.core.handle(value, now.wall_ms));
                }
                Output::Decided { committed, membership, completed, tx_ids } => {
                    work.extend(self.decided(committed, membership, &completed, tx_ids, synced, now));
                }
                Output::Misbehaviour(m) => self.report_misbehaviour(&m),
                Output::Ahead { node, height } => {
                    self.sync.handle_claim(node, height.saturating_sub(1), now.mono_ms);
                    self.maybe_sync(now);
                }
            }
        }
    }

    /// How long to wait for a round's proposal. Waiting the whole propose timeout
    /// for a proposer we cannot hear (not connected, or silent for several block
    /// intervals: paused, or cut off) only slows the chain down: nothing can arrive
    /// from it. So we prevote nil at once (always allowed by the protocol; it only
    /// gives up on that round's block), and the round passes to the next proposer.
    fn propose_wait(&self, timeout: Timeout, after_ms: u64, now: Now) -> u64 {
        let Timeout::Propose { height, round } = timeout else { return after_ms };
        let proposer = self.core.proposer(height, round);
        if proposer == self.core.id() {
            return after_ms;
        }
        // The window grows with the round, as the rounds' timeouts do: in a late
        // round an honest proposer's last message may be a whole round old.
        let base = (3 * self.cfg.block_interval_ms).max(1_500);
        let silent_for = base.saturating_mul(1 + round as u64);
        let heard = self.last_heard.get(&proposer).is_some_and(|at| now.mono_ms.saturating_sub(*at) < silent_for);
        if heard && self.gate.connected.contains(&proposer) {
            after_ms
        } else {
            ABSENT_PROPOSER_WAIT_MS.min(after_ms)
        }
    }

    /// A decided block: stored before anything it causes is carried out; the
    /// mempool, the waiting proposals, the approvals, the member set and the
    /// gate follow it. Returns the core's outputs from the gate.
    fn decided(
        &mut self,
        c: Committed,
        membership: Box<MembershipState>,
        completed: &[Completed],
        tx_ids: Option<Vec<Hash>>,
        synced: bool,
        now: Now,
    ) -> Vec<Output> {
        let (height, hash) = (c.block.height(), c.block.hash());
        self.mempool_follows_chain(height, Some((&c.block, tx_ids.as_deref())));
        self.effects.push_back(Effect::Commit { committed: c, membership, synced });
        if synced {
            self.blocks_synced += 1;
        }
        for done in completed {
            tracing::info!(
                height = done.height,
                in_force = done.in_force,
                "member change committed: {}, in force from height {}",
                done.change,
                done.in_force
            );
        }
        if let Some(halt) = self.follow_upgrades() {
            // Peers learn how far this node got; nothing of the next height.
            self.effects.push_back(Effect::Broadcast(Message::Tip { height, hash, time_ms: now.wall_ms }));
            self.effects.push_back(halt);
            return Vec::new();
        }
        let out = self.after_block(now);
        self.prune_waiting(self.core.height(), 0);
        self.effects.push_back(Effect::Broadcast(Message::Tip { height, hash, time_ms: now.wall_ms }));
        self.effects.push_back(Effect::Broadcast(Message::Holds { earliest: self.earliest, height }));
        // Our own approvals still waiting for a block go out again with each
        // block we decide: a peer that was behind when it first heard one
        // refused it (signed at a height it had not reached), no peer relays
        // an approval twice, and a peer that lacks it can only wait for our
        // own blocks to carry it (the simulation's seed 1610: a change
        // approved by three members waited until the approvals expired, as
        // the one proposer whose blocks were decided held only its own).
        // Peers that hold it drop the copy before any signature check.
        if !synced {
            let me = self.core.id();
            for sa in self.approvals.held().filter(|sa| sa.approval.approver == me) {
                self.effects.push_back(Effect::Broadcast(Message::Approval(sa.clone())));
            }
        }
        out
    }

    /// After a block: approvals it carried or made void leave the pool, the
    /// transport follows the set, the quorum gate counts the new height's set.
    fn after_block(&mut self, now: Now) -> Vec<Output> {
        self.approvals.retain_valid(self.core.membership(), &self.cfg.network_id);
        self.publish_members();
        let reachable = self.core.membership().reachable_with(&self.cfg.bootstrap);
        if reachable != self.reachable {
            self.effects.push_back(Effect::SetMembers(reachable.clone()));
            self.reachable_ids = reachable.iter().map(|(id, _)| *id).collect();
            self.reachable = reachable;
            self.forget_unreachable();
        }
        let height = self.core.height();
        self.clock.set_min_peers(clock::min_peers_for(self.core.members_at(height).len()));
        let now_member = self.core.members_at(height).contains(&self.core.id());
        if now_member != self.member {
            self.member = now_member;
            if now_member {
                tracing::info!(height, "this node is a member from height {height}: it votes from here on");
            } else {
                tracing::warn!(height, "this node is no longer a member from height {height}: it stops voting");
            }
        }
        self.check_quorum(now)
    }

    /// The quorum gate now: members of the current height's set that are
    /// connected, this node included when it is one. The core's outputs if the
    /// gate opened or closed.
    fn check_quorum(&mut self, now: Now) -> Vec<Output> {
        let set = self.core.members_at(self.core.height());
        let n = set.len();
        let me = set.contains(&self.core.id()) as usize;
        let connected = self.gate.connected.iter().filter(|id| set.contains(id)).count();
        let Quorum { active, required, met } = quorum::quorum(connected + me, n, self.cfg.min_active);
        let previous = self.gate.last.replace((active, met));
        if previous == Some((active, met)) {
            return Vec::new();
        }
        match (previous.map(|p| p.1), met) {
            (Some(true), true) => tracing::debug!("quorum met: {active}/{n} active, {required} required"),
            (_, true) => tracing::info!("quorum met: {active}/{n} active, {required} required"),
            // Losing a quorum is worth a warning; forming one at start-up is not.
            (Some(true), false) => tracing::warn!("waiting for quorum: {active}/{n} active, {required} required"),
            (_, false) => tracing::info!("waiting for quorum: {active}/{n} active, {required} required"),
        }
        self.follow_watch(now);
        self.tell_core(now)
    }

    /// When no block came for a while, messages may have been lost (a peer
    /// restarted, a partition healed) or reached only some of us: send what we
    /// hold for this height again, and the `Holds` that says which blocks we
    /// serve.
    fn rebroadcast(&mut self, now: Now) {
        let height = self.core.height();
        if height != self.last_height_seen.0 {
            self.last_height_seen = (height, now.mono_ms);
            return;
        }
        let after_ms = (self.cfg.block_interval_ms * 3).max(3_000);
        if now.mono_ms.saturating_sub(self.last_height_seen.1) >= after_ms && self.gate.met() {
            // Ours and what we hold of others': a vote only some of us saw (an
            // equivocator's, or one lost in a partition) reaches the rest.
            for m in self.core.relay_messages() {
                self.effects.push_back(Effect::Broadcast(gossip_form(&m, &self.tx_ids)));
            }
            // And what this node holds: a peer at wire 4 asks it for blocks
            // only once it said (`Holds`), which it does on connecting and
            // with each block. A peer that missed that one (it handled the
            // `Holds` before the connection it came on, or, in the
            // simulation, lost it) would otherwise wait for our next block,
            // which may need that very peer's votes (the simulation's seed
            // 1511: D, behind, asked only the liar B, and A and C waited for
            // D at the height after).
            if height > 1 {
                let held = Message::Holds { earliest: self.earliest, height: height - 1 };
                self.effects.push_back(Effect::Broadcast(held));
            }
            self.last_height_seen.1 = now.mono_ms;
        }
    }

    /// One warn line per culprit and kind of misbehaviour; reports without a
    /// culprit (forgeries) share one line per kind.
    fn report_misbehaviour(&mut self, m: &Misbehaviour) {
        self.misbehaviour += 1;
        let fork =
            matches!(m, Misbehaviour::InvalidSyncedBlock { reason: super::block::BlockError::WrongParent { .. }, .. });
        if !self.first_report(m.culprit(), m.kind()) {
            return tracing::debug!(kind = m.kind(), "misbehaviour: {m}");
        }
        if fork {
            // More than two thirds of a height's members signed a block on
            // another parent than ours: two certified histories exist.
            tracing::error!(
                kind = m.kind(),
                "two certified histories: {m}; either keys of that height's members signed both \
                 (members that have left the set, or more than a third of it) or this node synced \
                 a forged history; stop and compare `masternode status` tip hashes with members you trust"
            );
        } else {
            tracing::warn!(kind = m.kind(), "misbehaviour: {m}");
        }
    }

    /// Whether this is the first report of `kind` about `culprit`, which is
    /// logged at warn (later ones at debug); at most [`MAX_REPORTED`] are
    /// remembered.
    fn first_report(&mut self, culprit: Option<NodeId>, kind: &'static str) -> bool {
        self.reported.len() < MAX_REPORTED && self.reported.insert((culprit, kind))
    }

    /// Forgets what is kept per peer for peers neither the chain nor
    /// `bootstrap` names any more: after a block that changed the set, and
    /// when such a peer's connection ends (it may have sent something between
    /// its removal and the transport closing its connection).
    fn forget_unreachable(&mut self) {
        let keep = &self.reachable_ids;
        self.sync_buckets.retain(|id, _| keep.contains(id));
        self.serve_budgets.retain(|id, _| keep.contains(id));
        self.rate_limited.retain(|id| keep.contains(id));
        self.last_heard.retain(|id, _| keep.contains(id));
        self.proposed_by.retain(|id, _| keep.contains(id));
        self.wire.retain(|id, _| keep.contains(id));
        self.reported.retain(|(culprit, _)| culprit.is_none_or(|id| keep.contains(&id)));
        self.sync.retain(|id| keep.contains(id));
        self.clock.retain(|id| keep.contains(id));
    }

    /// Whether `id` has an entry in any map kept per peer (tests).
    #[cfg(test)]
    fn knows_peer(&self, id: &NodeId) -> bool {
        self.sync_buckets.contains_key(id)
            || self.serve_budgets.contains_key(id)
            || self.rate_limited.contains(id)
            || self.last_heard.contains_key(id)
            || self.wire.contains_key(id)
            || self.reported.iter().any(|(c, _)| c.as_ref() == Some(id))
            || self.sync.knows(id)
    }

    /// Whether the member set in force or the next one has `id` (a peer may
    /// also be reached only as a `bootstrap` peer).
    fn chain_names(&self, id: &NodeId) -> bool {
        let m = self.core.membership();
        m.current().contains(id) || m.next().contains(id)
    }
}

/// Gossip other than consensus messages: transactions, tips, approvals.
impl Driver {
    fn on_tx(&mut self, from: NodeId, tx: Vec<u8>) {
        // A `bootstrap` peer the chain does not name (yet) serves sync only: its
        // transactions do not count here.
        if !self.chain_names(&from) {
            return;
        }
        // Into the share of the member whose gossip brought it: nodes gossip
        // only their own clients' transactions and relay none.
        if let Err(e) = self.mempool.add_gossiped(from, tx) {
            tracing::debug!(peer = %from.short(), "gossiped transaction dropped: {e}");
        }
    }

    /// A tip says how far the sender got (for sync) and what its clock read
    /// (for the clock estimate, from peers the chain names only).
    fn on_tip(&mut self, from: NodeId, height: Height, time_ms: u64, now: Now) {
        if self.chain_names(&from) {
            self.sample_clock(from, time_ms, now);
        }
        self.sync.handle_claim(from, height, now.mono_ms);
        self.maybe_sync(now);
    }

    /// Warns once when our clock is off by more than a second (see
    /// [`super::clock`]).
    fn sample_clock(&mut self, from: NodeId, time_ms: u64, now: Now) {
        match self.clock.handle_tip(from, time_ms, now.wall_ms) {
            Some(ClockEvent::Off { offset_ms, peers }) => tracing::warn!(
                offset_ms,
                peers,
                "this node's clock is {:.1} s {} its peers' clocks: check NTP (timedatectl, chronyc tracking)",
                offset_ms.unsigned_abs() as f64 / 1000.0,
                if offset_ms > 0 { "ahead of" } else { "behind" }
            ),
            Some(ClockEvent::Back { offset_ms, peers }) => {
                tracing::info!(offset_ms, peers, "this node's clock agrees with its peers' again")
            }
            None => {}
        }
    }

    /// An approval gossiped by a peer: kept and passed on once if the next block
    /// could carry it.
    fn on_approval(&mut self, from: NodeId, sa: SignedApproval) {
        // Every peer relays a new approval once: the copies after the first
        // cost no signature check.
        if self.approvals.has(&sa.approval.change, sa.approval.approver) {
            return;
        }
        match self.core.membership().check(&sa, &self.cfg.network_id) {
            Ok(()) => {
                if self.approvals.add(sa.clone()) {
                    self.effects.push_back(Effect::Broadcast(Message::Approval(sa)));
                    self.publish_members();
                }
            }
            Err(e) => tracing::debug!(peer = %from.short(), "gossiped membership approval dropped: {e}"),
        }
    }

    fn approve(&mut self, request: ChangeRequest) -> Result<Submitted, ChangeError> {
        let me = self.core.id();
        let membership = self.core.membership();
        let change = match request {
            ChangeRequest::Add { id, addr } => Change::Add { id, addr: crate::net::canonical(addr) },
            ChangeRequest::Remove { id } => Change::Remove { id },
            ChangeRequest::SetAddr { addr } => {
                let Some(info) = membership.next().get(&me) else { return Err(ChangeError::UnknownMember(me)) };
                // After any announcement of ours still waiting for a block.
                let waiting = self
                    .approvals
                    .held()
                    .filter_map(|sa| match sa.approval.change {
                        Change::SetAddr { id, seq, .. } if id == me => Some(seq),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                Change::SetAddr { id: me, addr: crate::net::canonical(addr), seq: info.addr_seq.max(waiting) + 1 }
            }
            ChangeRequest::Upgrade { version, height } => Change::Upgrade { version, height },
        };
        // Two members on one address is an operator's mistake worth refusing
        // here; the chain cannot refuse it (genesis addresses are outside the
        // network id, so nodes may disagree on who holds an address).
        if let Change::Add { id, addr } | Change::SetAddr { id, addr, .. } = &change {
            if let Some(holder) = membership.next().holder_of(*addr, *id) {
                return Err(ChangeError::AddressInUse(*addr, holder));
            }
        }
        let signed_at = membership.applied();
        let network_id = self.cfg.network_id;
        let sa = Approval { change: change.clone(), approver: me, signed_at }.sign(&network_id, &self.cfg.identity);
        if !self.approvals.has(&change, me) {
            membership.check(&sa, &network_id)?;
            if !self.approvals.add(sa.clone()) {
                return Err(ChangeError::TooManyPending(me));
            }
            self.effects.push_back(Effect::Broadcast(Message::Approval(sa)));
            self.publish_members();
        }
        let membership = self.core.membership();
        Ok(Submitted {
            approvals: self.members_view.approvers(&change).len(),
            required: required_approvals(membership, &change),
            expires_at: signed_at + membership.params().ttl,
            change,
        })
    }

    /// The mempool after the block at `height` (`None`: the tip a new pool
    /// starts at): its transactions leave it, by the ids this node holds them
    /// by where it proposed or rebuilt the block, what waited too long
    /// expires, and a share is kept for each member the chain names besides
    /// this node (as [`Self::chain_names`] does). With the block, the ids the
    /// core computed checking it, if it did (a synced block's).
    fn mempool_follows_chain(&mut self, height: Height, block: Option<(&Block, Option<&[Hash]>)>) {
        let membership = self.core.membership();
        let me = self.core.id();
        let members = membership.current().ids().into_iter().chain(membership.next().ids()).filter(|id| *id != me);
        match block.map(|(b, checked)| (checked.or_else(|| self.tx_ids.of(&b.header.tx_root)), b)) {
            // Our own or a rebuilt proposal (ids kept here), or a synced
            // block (ids from the core's check of it): nothing hashed again.
            Some((Some(ids), _)) => self.mempool.handle_commit_ids(height, ids),
            // A full proposal's block, whose ids were not kept: hashed here.
            Some((None, b)) => self.mempool.handle_commit(height, &b.txs),
            None => self.mempool.handle_commit_ids(height, &[]),
        }
        self.tx_ids.forget_below(height + 1);
        self.proposed_by.retain(|_, cp| cp.height > height);
        self.mempool.set_members(members);
    }

    fn publish_members(&mut self) {
        let waiting = self.approvals.held().map(|sa| sa.approval.clone()).collect();
        self.members_view = Arc::new(MembersView { membership: self.core.membership().clone(), waiting });
        self.effects.push_back(Effect::PublishMembers(self.members_view.clone()));
    }
}

/// Upgrade plans: the proposer policy for carrying them, and what their
/// schedule means for this node.
impl Driver {
    /// The transport's connected peers now speak these wire versions (handed in
    /// whenever the connected set changes): what the proposer policy for
    /// upgrade plans goes by.
    pub fn handle_wire_versions(&mut self, wire: BTreeMap<NodeId, u16>, _now: Now) {
        self.wire = wire;
    }

    /// The plan this node stopped before, once it did ([`Effect::Halt`]).
    #[cfg(test)]
    pub(crate) fn halted(&self) -> Option<Plan> {
        self.halted
    }

    /// Whether a block this node proposes at `height` may carry approvals of
    /// upgrade plans: every other member of that height's set is connected at a
    /// wire version that decodes them.
    fn may_carry_plans(&self, height: Height) -> bool {
        members::may_carry_plans(self.core.members_at(height), self.core.id(), &self.wire)
    }

    /// Tells the operator what the schedule means for this binary, once per
    /// plan and stage; when the next height is one this node cannot run,
    /// halts and returns the [`Effect::Halt`] for the caller to queue.
    fn follow_upgrades(&mut self) -> Option<Effect> {
        let tip = self.core.height() - 1;
        let steps = self.upgrades.handle_tip(tip, self.core.membership().schedule());
        for step in steps {
            match step {
                upgrade::Step::Unsupported { plan, blocks_left, max_version, reminder: false } => tracing::warn!(
                    version = plan.version,
                    height = plan.height,
                    blocks_left,
                    "the chain switches to protocol {} at height {}; this binary runs up to protocol {max_version}: \
                     install a release that does before height {} ({blocks_left} blocks from now), or this node \
                     stops there",
                    plan.version,
                    plan.height,
                    plan.height
                ),
                upgrade::Step::Unsupported { plan, blocks_left, max_version, reminder: true } => tracing::warn!(
                    version = plan.version,
                    height = plan.height,
                    blocks_left,
                    "{blocks_left} blocks left before height {}, where the chain switches to protocol {}; this \
                     binary runs up to protocol {max_version}: install a release that does now, or this node \
                     stops there",
                    plan.height,
                    plan.version
                ),
                upgrade::Step::Activates { plan } => tracing::info!(
                    version = plan.version,
                    height = plan.height,
                    "protocol {} in force from height {} on",
                    plan.version,
                    plan.height
                ),
                upgrade::Step::Halt { plan, max_version } => {
                    self.halted = Some(plan);
                    return Some(Effect::Halt { plan, max_version });
                }
            }
        }
        None
    }
}

/// Compact proposals and their fetches.
impl Driver {
    /// A compact proposal: checked without its transactions, rebuilt from the
    /// mempool, and what is missing asked of a peer. Until all of its
    /// transactions are here the core does not see it; one that never completes
    /// is a proposal that never came (the propose timeout runs).
    fn on_compact(&mut self, from: NodeId, cp: CompactProposal, now: Now) {
        if !self.core.wants_proposal(cp.height, cp.round) || self.waiting.contains(cp.height, cp.round) {
            return;
        }
        let proposer = self.core.proposer(cp.height, cp.round);
        if let Err(e) = cp.check(&self.cfg.network_id, proposer, self.cfg.limits.max_block_txs) {
            let culprit = if e.signed_by_proposer() { cp.proposer } else { from };
            return self.refuse_compact(culprit, &e);
        }
        if cp.proposer == self.core.id() && self.weigh_own_proposal(from, cp.height, cp.round, cp.header.hash(), now) {
            return;
        }
        self.keep_proposed(&cp);
        // Its signature verified: the proposer takes part, if it sent it.
        if cp.proposer == from && cp.height == self.core.height() {
            self.last_heard.insert(from, now.mono_ms);
        }
        self.rebuild(from, cp, now);
    }

    /// A checked compact proposal of another proposer at this height or the
    /// next, its latest: kept for [`Self::handle_peer_up`].
    fn keep_proposed(&mut self, cp: &CompactProposal) {
        let h = self.core.height();
        if cp.proposer == self.core.id() || (cp.height != h && cp.height != h + 1) {
            return;
        }
        let newer = self.proposed_by.get(&cp.proposer).is_none_or(|k| (k.height, k.round) < (cp.height, cp.round));
        if newer {
            self.proposed_by.insert(cp.proposer, cp.clone());
        }
    }

    /// Rebuilds a checked compact proposal from the mempool, within the block's
    /// byte limit: complete, it goes to the core; otherwise it is fetched if its
    /// round is in the window ([`in_fetch_window`]), kept in its compact form if
    /// the round is later, and dropped if this node has left the round behind.
    fn rebuild(&mut self, from: NodeId, cp: CompactProposal, now: Now) {
        let found = match self.mempool.lookup_within_block(&cp.ids, self.cfg.limits.max_block_bytes) {
            Ok(found) => found,
            Err(e) => return self.refuse_compact(cp.proposer, &e),
        };
        let assembly = Assembly::new(cp, found);
        self.largest_rebuild = self.largest_rebuild.max(assembly.bytes());
        if assembly.is_complete() {
            return self.assembled(assembly, now);
        }
        let (h, r) = (self.core.height(), self.core.round());
        let slot = (assembly.proposal.height, assembly.proposal.round);
        self.prune_waiting(h, r);
        if self.fetchable(slot.0, slot.1) {
            self.fetch_for(from, assembly, now);
        } else if slot > (h, r) {
            self.waiting.defer(from, assembly.proposal);
        } else {
            tracing::debug!(peer = %from.short(), height = slot.0, round = slot.1, "compact proposal of a round left behind: not fetched");
        }
    }

    /// The `(height, round)` of a lock the network proves this node's key
    /// held and whose proposal is not here yet: fetched past the window.
    pub fn lock_wanted(&self) -> Option<(Height, Round)> {
        self.lock_wanted.map(|(h, r, _)| (h, r))
    }

    /// Whether a compact proposal of `(height, round)` is fetched now: its
    /// round is in the window ([`in_fetch_window`]), or it is the round of a
    /// lock the network proves this node's key held (its gate stays closed,
    /// and its round with it, until that proposal is here).
    fn fetchable(&self, height: Height, round: Round) -> bool {
        in_fetch_window((self.core.height(), self.core.round()), height, round)
            || self.lock_wanted.is_some_and(|(lh, lr, _)| (lh, lr) == (height, round))
    }

    /// A compact proposal refused: counted as misbehaviour of `culprit`, one
    /// warn line per culprit and kind.
    fn refuse_compact(&mut self, culprit: NodeId, e: &CompactError) {
        self.misbehaviour += 1;
        if self.first_report(Some(culprit), e.kind()) {
            tracing::warn!(peer = %culprit.short(), kind = e.kind(), "compact proposal refused: {e}");
        } else {
            tracing::debug!(peer = %culprit.short(), kind = e.kind(), "compact proposal refused: {e}");
        }
    }

    /// A rebuilt proposal goes to the core as a full one would.
    /// Its transactions were each matched to an id the header's root commits
    /// to (and [`CompactProposal::check`] refused repeated ids), so the core
    /// does not hash them again; the ids are kept for the commit.
    fn assembled(&mut self, assembly: Assembly, now: Now) {
        let Some((sp, ids)) = assembly.into_signed_with_ids() else { return };
        self.tx_ids.insert(sp.proposal.height, sp.proposal.block.header.tx_root, ids);
        let out = self.core.handle(Input::CheckedProposal(sp), now.wall_ms);
        self.drive(out, false, now);
    }

    /// Fetches what `assembly` misses from its proposer, which holds every
    /// transaction of its block, or else from the peer that sent it; the
    /// answer is due within [`Self::fetch_wait_ms`].
    fn fetch_for(&mut self, from: NodeId, assembly: Assembly, now: Now) {
        let proposer = assembly.proposal.proposer;
        let ask = if proposer != self.core.id() && self.gate.connected.contains(&proposer) { proposer } else { from };
        let (height, round) = (assembly.proposal.height, assembly.proposal.round);
        let ids = assembly.missing_ids();
        if let Err(e) = self.waiting.insert(assembly) {
            return tracing::debug!(peer = %ask.short(), height, round, "compact proposal dropped: {e}");
        }
        let deadline_ms = now.mono_ms.saturating_add(self.fetch_wait_ms(round));
        let request_bytes = GET_TXS_HEAD_BYTES + ids.len() * std::mem::size_of::<Hash>();
        self.fetches.insert((height, round), Fetch { peer: ask, deadline_ms, request_bytes });
        self.effects.push_back(Effect::RequestTxs { peer: ask, height, round, ids });
    }

    /// How long a peer has to answer a `GetTxs` for a proposal of `round`: two
    /// block intervals (at least a second), and one more interval (at least
    /// half a second) per round, as the timeouts and the synchrony bound grow:
    /// where a round trip takes longer than the wait of round 0, a later round
    /// still completes its fetch (a fixed wait stalled such a network for good).
    fn fetch_wait_ms(&self, round: Round) -> u64 {
        let interval = self.cfg.block_interval_ms;
        (2 * interval).max(1_000).saturating_add(interval.max(500).saturating_mul(round as u64))
    }

    /// Kept compact proposals whose round the window has reached: looked up in
    /// the mempool again, and fetched if anything is missing. After every
    /// input; nothing to do unless proposals of later rounds are kept.
    fn fetch_due(&mut self, now: Now) {
        if !self.waiting.has_later() {
            return;
        }
        let (h, r) = (self.core.height(), self.core.round());
        self.prune_waiting(h, r);
        let wanted = self.lock_wanted.map(|(lh, lr, _)| (lh, lr));
        let due = |ph, pr| in_fetch_window((h, r), ph, pr) || wanted == Some((ph, pr));
        for (from, cp) in self.waiting.take_due(due) {
            if self.core.wants_proposal(cp.height, cp.round) {
                self.rebuild(from, cp, now);
            }
        }
    }

    /// Drops what waits for rounds before `(height, round)`; their fetches end.
    fn prune_waiting(&mut self, height: Height, round: Round) {
        for (height, round) in self.waiting.retain_window(height, round) {
            self.end_fetch(height, round);
        }
    }

    /// The fetch of `(height, round)` ends: its assembly left.
    fn end_fetch(&mut self, height: Height, round: Round) {
        if self.fetches.remove(&(height, round)).is_some() {
            self.effects.push_back(Effect::CancelTxs { height, round });
        }
    }

    /// Fetches past their deadline: the proposal is dropped.
    fn expire_fetches(&mut self, now: Now) {
        let due: Vec<((Height, Round), Fetch)> =
            self.fetches.iter().filter(|(_, f)| f.deadline_ms <= now.mono_ms).map(|(k, f)| (*k, *f)).collect();
        for ((height, round), fetch) in due {
            self.waiting.take(height, round);
            self.end_fetch(height, round);
            let outcome = format!("no answer within {} ms", self.fetch_wait_ms(round));
            self.report_dropped(fetch.peer, height, round, "compact_proposal_incomplete", &outcome);
        }
    }

    fn report_dropped(&mut self, peer: NodeId, height: Height, round: Round, kind: &'static str, outcome: &str) {
        if self.first_report(Some(peer), kind) {
            tracing::warn!(peer = %peer.short(), height, round, "compact proposal dropped: {outcome}");
        } else {
            tracing::debug!(peer = %peer.short(), height, round, "compact proposal dropped: {outcome}");
        }
    }

    /// A peer rebuilding a compact proposal: from the mempool, and from the
    /// proposal itself when it is here (our own after a restart, whose
    /// transactions the mempool no longer holds). Under the sync rate limit,
    /// and only for members: a `bootstrap` peer the chain does not name only
    /// syncs.
    fn answer_txs(
        &mut self,
        from: NodeId,
        id: RequestId,
        height: Height,
        round: Round,
        mut ids: Vec<Hash>,
        now: Now,
    ) -> Effect {
        if !self.chain_names(&from) {
            return Effect::Refuse { id, refusal: Refusal::Unsupported };
        }
        if !self.sync_allowance(from, now) {
            return self.refuse_rate(from, id);
        }
        // Each transaction once, however often it is asked for.
        let mut seen = HashSet::with_capacity(ids.len());
        ids.retain(|id| seen.insert(*id));
        let budget = message::TXS_ANSWER_BYTES;
        let txs = self.mempool.lookup_within(&ids, budget);
        // Charged in full now, never waited for: a compact proposal's fetch
        // is due within a few intervals.
        if txs.len() < ids.len() {
            // Finding them in the proposed block hashes every transaction of
            // it: charged first, as the most an answer from it holds, so a
            // peer asking again and again for one small transaction of a full
            // block makes this node hash no more than its serve budget.
            let most = self.core.proposed_block(height, round).map(|b| 5 + b.tx_bytes() + 4 * b.txs.len());
            if let Some(most) = most {
                if self.serve_reserve(from, most, 0, now).is_none() {
                    return self.refuse_bytes(from, id);
                }
                if let Some(block) = self.core.proposed_block(height, round) {
                    let known = self.tx_ids.of(&block.header.tx_root);
                    return Effect::Reply { id, msg: Message::Txs(answer_from_block(block, known, &ids, budget)) };
                }
            }
        }
        let bytes = 5 + txs.iter().map(|t| t.len() + 4).sum::<usize>();
        if self.serve_reserve(from, bytes, 0, now).is_none() {
            return self.refuse_bytes(from, id);
        }
        Effect::Reply { id, msg: Message::Txs(txs) }
    }
}

/// Sync.
impl Driver {
    /// Reserves `bytes` of `peer`'s serve budget (`sync_serve_bytes_per_sec`,
    /// bursts of twice that and at least one full answer): the wait before
    /// the answer is made, or `None` past `max_wait_ms`.
    fn serve_reserve(&mut self, peer: NodeId, bytes: usize, max_wait_ms: u64, now: Now) -> Option<u64> {
        let limits = &self.cfg.node_limits;
        let rate = limits.sync_serve_bytes_per_sec as f64;
        let burst = (2.0 * rate).max(limits.sync_response_bytes as f64);
        let budget = self.serve_budgets.entry(peer).or_insert_with(|| ServeBudget::new(rate, burst, now.mono_ms));
        budget.reserve(bytes, max_wait_ms, now.mono_ms)
    }

    /// A request over its peer's request rate: refused, warned about once per
    /// peer, counted.
    fn refuse_rate(&mut self, peer: NodeId, id: RequestId) -> Effect {
        self.refused.0 += 1;
        if self.rate_limited.insert(peer) {
            tracing::warn!(peer = %peer.short(), "sync requests over the limit; refusing some");
        }
        Effect::Refuse { id, refusal: Refusal::RateLimited }
    }

    /// A request whose answer its peer's serve budget does not cover in time:
    /// refused, warned about once per peer, counted.
    fn refuse_bytes(&mut self, peer: NodeId, id: RequestId) -> Effect {
        self.refused.1 += 1;
        if self.first_report(Some(peer), "serve_budget") {
            let rate = self.cfg.node_limits.sync_serve_bytes_per_sec;
            tracing::warn!(peer = %peer.short(), "answers to the peer's requests over {rate} bytes a second; refusing some");
        }
        Effect::Refuse { id, refusal: Refusal::RateLimited }
    }

    /// A token bucket per peer: `sync_requests_per_sec`, bursts of twice that.
    fn sync_allowance(&mut self, peer: NodeId, now: Now) -> bool {
        let rate = self.cfg.node_limits.sync_requests_per_sec as f64;
        let bucket = self.sync_buckets.entry(peer).or_insert_with(|| TokenBucket::new(rate, 2.0 * rate, now.mono_ms));
        bucket.take(now.mono_ms)
    }

    /// Asks for blocks when a peer claims more than we have, or hedges a slow
    /// request with another peer; the planner decides.
    fn maybe_sync(&mut self, now: Now) {
        let our_tip = self.core.height() - 1;
        let Some(req) = self.sync.poll_request(our_tip, now.mono_ms) else {
            if let Some(earliest) = self.sync.poll_unheld(our_tip, now.mono_ms) {
                tracing::warn!(
                    our_tip,
                    earliest,
                    "peers have blocks past height {our_tip}, but none holds height {} (they pruned; the earliest \
                     any holds is {earliest}): this node cannot catch up from them; connect it to a peer that keeps \
                     older blocks (one without retain_blocks, through bootstrap)",
                    our_tip + 1
                );
            }
            return;
        };
        tracing::debug!(peer = %req.peer.short(), our_tip, "fetching blocks");
        self.effects.push_back(Effect::RequestBlocks { peer: req.peer, from: req.from, count: req.count });
    }

    /// Hands a response's outcome to the planner (which counts failures); a
    /// failure is warned about once per peer and cause, and the next best peer is
    /// asked at once.
    fn sync_outcome(&mut self, peer: NodeId, outcome: Outcome, detail: &str, now: Now) {
        let verdict = self.sync.handle_response(peer, outcome, now.mono_ms);
        if let Some(f) = verdict.failure {
            let penalty = self.sync.penalty_ms() / 1000;
            if verdict.first_of_its_kind {
                let sep = if detail.is_empty() { "" } else { ": " };
                tracing::warn!(peer = %peer.short(), reason = f.as_str(), "sync from peer failed{sep}{detail}; not asking it for {penalty} s");
            } else {
                tracing::debug!(peer = %peer.short(), reason = f.as_str(), "sync from peer failed {detail}");
            }
        }
        self.maybe_sync(now);
    }
}

/// What goes to peers for a signed message: a proposal in its compact form
/// ([`super::compact`]), whose transactions the peers hold or fetch.
fn gossip_form(m: &Signed, tx_ids: &TxIds) -> Message {
    match m {
        Signed::Proposal(p) => Message::CompactProposal(match tx_ids.of(&p.proposal.block.header.tx_root) {
            Some(ids) => CompactProposal::with_ids(p, ids.to_vec()),
            None => CompactProposal::of(p),
        }),
        Signed::Vote(v) => Message::Vote(v.clone()),
    }
}

/// Whether a compact proposal of `(height, round)` is fetched now, at `at`:
/// this round and the next, the next height's first two. Later rounds wait
/// (kept, a few), so a member cannot hold the waiting slots with its future
/// rounds; earlier rounds are not fetched at all, so a member cannot make
/// fetches of rounds this node has left faster than the window drops them. At
/// most four slots are in the window, as many as may wait.
fn in_fetch_window(at: (Height, Round), height: Height, round: Round) -> bool {
    let (h, r) = at;
    (height == h && (round == r || round == r + 1)) || (height == h + 1 && round <= 1)
}

/// The transactions of `block` with these ids, in the order asked, within
/// `max_bytes`: by the block's ids where this node holds them (`known`), else
/// each of the block's transactions hashed once.
fn answer_from_block(block: &Block, known: Option<&[Hash]>, ids: &[Hash], max_bytes: usize) -> Vec<Vec<u8>> {
    let by_id: HashMap<Hash, &bytes::Bytes> = match known {
        Some(known) => known.iter().copied().zip(&block.txs).collect(),
        None => block.txs.iter().map(|t| (tx_hash(t), t)).collect(),
    };
    compact::within_bytes(ids.iter().filter_map(|id| by_id.get(id).copied()), max_bytes)
}

/// How many blocks' ids [`TxIds`] keeps: this node's own proposal and the
/// rebuilt ones of a height's first rounds. Each is at most `max_block_txs`
/// ids (640 KiB at 20,000), of a proposal already checked and held within the
/// proposals' budget; a member proposing many rounds only replaces the oldest.
const TX_IDS_KEPT: usize = 4;

/// The ids of the blocks this node proposed or rebuilt at its current height,
/// by transaction root: the ids computed when the transactions entered the
/// node, so neither the compact form of its own proposal nor the mempool's
/// removal at the commit hashes a transaction again.
#[derive(Debug, Default)]
struct TxIds {
    blocks: VecDeque<(Height, Hash, Vec<Hash>)>,
}

impl TxIds {
    fn insert(&mut self, height: Height, root: Hash, ids: Vec<Hash>) {
        if self.of(&root).is_some() {
            return;
        }
        if self.blocks.len() >= TX_IDS_KEPT {
            self.blocks.pop_front();
        }
        self.blocks.push_back((height, root, ids));
    }

    fn of(&self, root: &Hash) -> Option<&[Hash]> {
        self.blocks.iter().find(|(_, r, _)| r == root).map(|(_, _, ids)| &ids[..])
    }

    /// The blocks of heights below `height` are of no further use.
    fn forget_below(&mut self, height: Height) {
        self.blocks.retain(|(h, _, _)| *h >= height);
    }
}

#[path = "driver_watch.rs"]
mod watch;

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
