//! The block producer: the one task that owns the consensus core.
//!
//! It feeds the core what arrives from peers, timers and the quorum gate, and
//! carries out what the core asks, in order: a signature is recorded durably in the
//! store before the vote leaves the node; a decided block is stored durably before
//! the node reports it or moves on. A node that learns a peer is ahead (a `Tip`
//! announcement, a vote for a later height, the tip in the peer's handshake)
//! fetches the missing blocks with their certificates over request streams, in
//! bounded batches, and feeds them to the core, which verifies every certificate.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::block::{Height, Limits, Round};
use super::clock::{ClockConfig, ClockEstimator, ClockEvent};
use super::compact::{Assembly, CompactError, CompactProposal, FillError, RebuildLimits, Waiting};
use super::consensus::{Core, Input, Output, Signed, Timeout};
use super::members::{Approval, ApprovalPool, Change, ChangeError, Membership, SignedApproval};
use super::mempool::Mempool;
use super::message::Message;
use super::store::{Store, StoreError};
use super::sync::{Failure, Outcome, SyncConfig, SyncPlanner, TokenBucket};
use crate::codec::FrameError;
use crate::config::{Network, NodeLimits};
use crate::identity::{Identity, NodeId};
use crate::net::handshake::Tip;
use crate::net::{Delivery, Inbound, InboundRequest, PeerEvent, Peers, Refusal, RequestError};

/// Misbehaviour reports logged at warn level before falling back to debug.
const MAX_REPORTED: usize = 1024;
/// Propose timeout for a proposer we cannot hear (ms): a proposal already in
/// flight may still land.
const ABSENT_PROPOSER_WAIT_MS: u64 = 100;
/// Messages taken from the inbox per turn of the loop, at most: timers and sync
/// are served between batches, however many messages wait.
const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("store write failed, stopping: {0}")]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the producer reports for metrics and the service watchdog.
pub struct ChainMetrics {
    /// Turns of the producer's loop; it turns at least every few seconds.
    pub loops: AtomicU64,
    /// Seconds from a block's timestamp (its proposal) to its commit here.
    pub commit_latency: Histogram,
    pub blocks_synced: AtomicU64,
    /// Failed sync requests, by [`Failure`] (in `Failure::ALL` order).
    pub sync_failures: [AtomicU64; 6],
    pub misbehaviour: AtomicU64,
    /// The consensus round at the current height.
    pub round: AtomicU64,
    /// The committed tip's header timestamp (ms since the epoch; 0 before the
    /// first block).
    pub last_block_timestamp_ms: AtomicU64,
    /// Our clock's offset from the peers' (ms, positive when ours is ahead),
    /// valid while `clock_peers` is above 0; see [`super::clock`].
    pub clock_offset_ms: AtomicI64,
    /// Peers the clock offset is estimated from.
    pub clock_peers: AtomicU64,
    /// The highest tip a usable peer claims (0 if none).
    pub best_peer_tip: AtomicU64,
    /// Bytes held for what peers sent, by [`Held`] (in `Held::ALL` order).
    held: [AtomicU64; Held::ALL.len()],
}

/// Declares [`Held`]: one line per structure, its label and what it holds.
macro_rules! held {
    ($($name:ident => $label:literal: $doc:literal,)*) => {
        /// The structures that hold what peers send, each reported in bytes as
        /// `masternode_held_bytes{what}`: a fixed set, so labels never come
        /// from a peer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl ChainMetrics {
    pub fn set_held(&self, what: Held, bytes: usize) {
        self.held[what as usize].store(bytes as u64, Ordering::Relaxed);
    }

    pub fn held(&self, what: Held) -> u64 {
        self.held[what as usize].load(Ordering::Relaxed)
    }
}

impl Default for ChainMetrics {
    fn default() -> Self {
        ChainMetrics {
            loops: AtomicU64::new(0),
            commit_latency: Histogram::new(exponential_buckets(0.05, 2.0, 11)),
            blocks_synced: AtomicU64::new(0),
            sync_failures: Default::default(),
            misbehaviour: AtomicU64::new(0),
            round: AtomicU64::new(0),
            last_block_timestamp_ms: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            clock_peers: AtomicU64::new(0),
            best_peer_tip: AtomicU64::new(0),
            held: Default::default(),
        }
    }
}

/// A membership change an operator asks this node to approve (or, for its own
/// address, to announce), through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRequest {
    Add {
        id: NodeId,
        addr: std::net::SocketAddr,
    },
    Remove {
        id: NodeId,
    },
    /// This node's own new address.
    SetAddr {
        addr: std::net::SocketAddr,
    },
}

pub struct MemberRequest {
    pub request: ChangeRequest,
    pub reply: oneshot::Sender<Result<Submitted, ChangeError>>,
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
#[derive(Debug, Clone)]
pub struct MembersView {
    pub membership: Membership,
    pub waiting: Vec<Approval>,
}

impl MembersView {
    /// Members approving `change`: on chain (still counting) and waiting.
    pub fn approvers(&self, change: &Change) -> Vec<NodeId> {
        let current = self.membership.current();
        let mut out: std::collections::BTreeSet<NodeId> =
            self.membership.pending().into_iter().filter(|p| &p.change == change).flat_map(|p| p.approvals).collect();
        out.extend(
            self.waiting.iter().filter(|a| &a.change == change && current.contains(&a.approver)).map(|a| a.approver),
        );
        out.into_iter().collect()
    }

    /// Every change collecting approvals, on chain or only waiting here, with
    /// its approvers, in `Change` order: what `/status` and `/members` show.
    pub fn pending(&self) -> Vec<super::members::PendingView> {
        let membership = &self.membership;
        let mut changes: BTreeMap<Change, (usize, Height)> = BTreeMap::new();
        for p in membership.pending() {
            changes.insert(p.change, (p.required, p.expires_at));
        }
        let ttl = membership.params().ttl;
        for a in &self.waiting {
            let required = if a.change.needs_vote() { membership.current().quorum() } else { 1 };
            let entry = changes.entry(a.change.clone()).or_insert((required, a.signed_at + ttl));
            entry.1 = entry.1.min(a.signed_at + ttl);
        }
        changes
            .into_iter()
            .map(|(change, (required, expires_at))| super::members::PendingView {
                approvals: self.approvers(&change),
                change,
                required,
                expires_at,
            })
            .collect()
    }
}

pub struct Producer {
    node_limits: NodeLimits,
    sync_buckets: HashMap<NodeId, TokenBucket>,
    /// Peers already reported for going over their sync rate.
    rate_limited: HashSet<NodeId>,
    metrics: Arc<ChainMetrics>,
    applying_sync: bool,
    core: Core,
    store: Store,
    peers: Peers,
    mempool: Arc<Mutex<Mempool>>,
    tip: watch::Sender<Tip>,
    network: Arc<Network>,
    limits: Limits,
    timers: BTreeMap<(Instant, u64), Timeout>,
    timer_seq: u64,
    sync: SyncPlanner,
    sync_tx: mpsc::Sender<(NodeId, SyncResult)>,
    sync_rx: mpsc::Receiver<(NodeId, SyncResult)>,
    quorum: Option<(usize, bool)>,
    reported: HashSet<(Option<NodeId>, &'static str)>,
    /// The height we were at, and since when: no block for a while means our
    /// messages may have been lost.
    last_height_seen: (Height, Instant),
    rebroadcast_after: Duration,
    tracker: TaskTracker,
    /// Added to our clock's readings (tests of skewed clocks; 0 otherwise).
    clock_skew_ms: i64,
    /// When each peer last sent us anything.
    last_heard: HashMap<NodeId, Instant>,
    clock: ClockEstimator,
    identity: Arc<Identity>,
    approvals: ApprovalPool,
    members_view: watch::Sender<Arc<MembersView>>,
    member_requests: mpsc::Receiver<MemberRequest>,
    /// The members last handed to the transport.
    reachable: Vec<(NodeId, std::net::SocketAddr)>,
    /// Members to reach besides those the chain names (`bootstrap`).
    bootstrap: Vec<(NodeId, std::net::SocketAddr)>,
    /// Whether this node is a member of the current height's set.
    member: bool,
    /// Compact proposals waiting for transactions from a peer.
    waiting: Waiting,
    /// Bytes of the `GetTxs` requests whose tasks are running, kept by the
    /// tasks themselves ([`FetchBytes`]).
    fetch_bytes: Arc<AtomicU64>,
    fetched_tx: mpsc::Sender<Fetched>,
    fetched_rx: mpsc::Receiver<Fetched>,
}

/// A peer's answer to `GetTxs` for the compact proposal of `(height, round)`.
struct Fetched {
    from: NodeId,
    height: Height,
    round: super::block::Round,
    result: Result<Vec<Vec<u8>>, String>,
}

/// The producer's links to the admin API for membership.
pub struct MemberLinks {
    pub view: watch::Sender<Arc<MembersView>>,
    pub requests: mpsc::Receiver<MemberRequest>,
}

impl MemberLinks {
    /// Links and the admin API's ends of them.
    pub fn new(
        membership: Membership,
    ) -> (MemberLinks, watch::Receiver<Arc<MembersView>>, mpsc::Sender<MemberRequest>) {
        let (view, view_rx) = watch::channel(Arc::new(MembersView { membership, waiting: vec![] }));
        let (tx, requests) = mpsc::channel(16);
        (MemberLinks { view, requests }, view_rx, tx)
    }
}

enum Event {
    Stop,
    Messages,
    Request(InboundRequest),
    Connected,
    Peer(PeerEvent),
    Sync(NodeId, Box<SyncResult>),
    Fetched(Fetched),
    Member(MemberRequest),
    Timers,
    Tick,
}

/// A sync response: the message and its body's size.
type SyncResult = Result<(Message, usize), SyncError>;

/// Why a sync request produced no blocks.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("response does not decode: {0}")]
    Decode(#[from] FrameError),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Producer {
    /// The wall clock as the consensus core sees it: ours, shifted by the test
    /// hook that simulates a member whose clock is off (0 in production).
    fn now(&self) -> u64 {
        now_ms().saturating_add_signed(self.clock_skew_ms)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Core,
        store: Store,
        peers: Peers,
        mempool: Arc<Mutex<Mempool>>,
        tip: watch::Sender<Tip>,
        network: Arc<Network>,
        limits: Limits,
        tracker: TaskTracker,
        metrics: Arc<ChainMetrics>,
        node_limits: NodeLimits,
        identity: Arc<Identity>,
        links: MemberLinks,
    ) -> Producer {
        let (sync_tx, sync_rx) = mpsc::channel(4);
        let (fetched_tx, fetched_rx) = mpsc::channel(super::compact::MAX_WAITING);
        let last_height_seen = (core.height(), Instant::now());
        let rebroadcast_after = Duration::from_millis((network.block_interval_ms * 3).max(3_000));
        let reachable = core.membership().reachable();
        let member = core.members_at(core.height()).contains(&core.id());
        let clock = ClockEstimator::new(ClockConfig {
            min_peers: super::clock::min_peers_for(core.members_at(core.height()).len()),
            ..ClockConfig::default()
        });
        let producer = Producer {
            node_limits,
            sync_buckets: HashMap::new(),
            rate_limited: HashSet::new(),
            metrics,
            applying_sync: false,
            core,
            store,
            peers,
            mempool,
            tip,
            network,
            limits,
            timers: BTreeMap::new(),
            timer_seq: 0,
            sync: SyncPlanner::new(SyncConfig { batch: node_limits.sync_batch_blocks, ..SyncConfig::default() }),
            sync_tx,
            sync_rx,
            quorum: None,
            reported: HashSet::new(),
            last_height_seen,
            rebroadcast_after,
            tracker,
            last_heard: HashMap::new(),
            clock_skew_ms: 0,
            clock,
            identity,
            approvals: ApprovalPool::default(),
            members_view: links.view,
            member_requests: links.requests,
            reachable,
            bootstrap: Vec::new(),
            member,
            waiting: Waiting::new(&limits),
            fetch_bytes: Arc::new(AtomicU64::new(0)),
            fetched_tx,
            fetched_rx,
        };
        producer.mempool_follows_chain(producer.core.height() - 1, &[]);
        producer
    }

    /// Members to reach besides those the chain names, for as long as the node
    /// runs (the transport starts with the same list).
    pub fn with_bootstrap(mut self, bootstrap: Vec<(NodeId, std::net::SocketAddr)>) -> Self {
        self.reachable = self.core.membership().reachable_with(&bootstrap);
        self.bootstrap = bootstrap;
        self
    }

    /// Shifts this node's clock by `ms` (tests of members whose clocks are off).
    #[doc(hidden)]
    pub fn with_clock_skew(mut self, ms: i64) -> Self {
        self.clock_skew_ms = ms;
        self
    }

    /// Runs until `shutdown`; returns an error only for a failed store write, after
    /// which the node must stop rather than go on with a chain it did not persist.
    pub async fn run(mut self, mut inbound: Inbound, shutdown: CancellationToken) -> Result<(), ProducerError> {
        let mut connected = self.peers.watch_connected();
        let mut events = self.peers.subscribe();
        // A tick a second: the loop turns even when idle (the watchdog's proof of
        // progress) and checks whether to re-send our votes.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let start = self.core.start(self.now());
        self.drive(start).await?;
        self.on_connected().await?;
        let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
        loop {
            // Shutdown first: the transport empties the peer set as it stops,
            // which must not read as a lost quorum.
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Due timers go before anything else, so no flood of messages can
            // starve them; the select below is unbiased for the same reason.
            if self.timers.keys().next().is_some_and(|(at, _)| *at <= Instant::now()) {
                self.fire_timers().await?;
            }
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let event = tokio::select! {
                _ = shutdown.cancelled() => Event::Stop,
                m = inbound.messages.recv_batch(BATCH, &mut batch) => match m {
                    Some(_) => Event::Messages,
                    None => Event::Stop,
                },
                r = inbound.requests.recv() => match r {
                    Some(req) => Event::Request(req),
                    None => Event::Stop,
                },
                c = connected.changed() => match c {
                    Ok(()) => Event::Connected,
                    Err(_) => Event::Stop,
                },
                e = events.recv() => match e {
                    Ok(ev) => Event::Peer(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => Event::Connected,
                    Err(broadcast::error::RecvError::Closed) => Event::Stop,
                },
                s = self.sync_rx.recv() => match s {
                    Some((peer, result)) => Event::Sync(peer, Box::new(result)),
                    None => Event::Stop,
                },
                Some(req) = self.member_requests.recv() => Event::Member(req),
                Some(f) = self.fetched_rx.recv() => Event::Fetched(f),
                _ = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => Event::Timers,
                _ = tick.tick() => Event::Tick,
            };
            self.metrics.loops.fetch_add(1, Ordering::Relaxed);
            self.publish_state();
            self.fetch_due().await?;
            match event {
                Event::Stop => return Ok(()),
                Event::Messages => {
                    for d in batch.drain(..) {
                        if self.beyond_next_height(&d.body) {
                            continue;
                        }
                        match Message::decode(&d.body) {
                            Ok(msg) => self.on_message(d.from, msg).await?,
                            Err(e) => self.peers.reject(d.from, &e),
                        }
                    }
                }
                Event::Request(req) => self.on_request(req),
                Event::Connected => self.on_connected().await?,
                Event::Peer(PeerEvent::Up { id, .. }) => {
                    self.last_heard.insert(id, Instant::now());
                    self.on_peer_up(id)
                }
                Event::Peer(PeerEvent::Down { id }) => {
                    self.sync.handle_down(id);
                }
                Event::Sync(peer, result) => self.on_sync(peer, *result).await?,
                Event::Fetched(f) => self.on_fetched(f).await?,
                Event::Member(req) => self.on_member_request(req),
                Event::Timers => self.fire_timers().await?,
                Event::Tick => {
                    self.rebroadcast();
                    // A slow request may be due for a hedge.
                    self.maybe_sync();
                }
            }
        }
    }

    /// Publishes the round, the sync state and the clock estimate for status and
    /// metrics; once a loop turn.
    fn publish_state(&mut self) {
        let now = self.now();
        self.metrics.round.store(self.core.round() as u64, Ordering::Relaxed);
        let best = self.sync.best_claim(std::time::Instant::now());
        self.metrics.best_peer_tip.store(best, Ordering::Relaxed);
        for (counter, n) in self.metrics.sync_failures.iter().zip(self.sync.failures()) {
            counter.store(n, Ordering::Relaxed);
        }
        let offset = self.clock.offset_ms(now);
        self.metrics.clock_offset_ms.store(offset.unwrap_or(0), Ordering::Relaxed);
        self.metrics.clock_peers.store(self.clock.peers(now) as u64, Ordering::Relaxed);
        self.metrics.set_held(Held::CompactWaiting, self.waiting.bytes());
        self.metrics.set_held(Held::CompactLater, self.waiting.later_bytes());
        self.metrics.set_held(Held::FetchRequests, self.fetch_bytes.load(Ordering::Relaxed) as usize);
    }

    /// Whether this is the first report of `kind` about `culprit`, which is
    /// logged at warn (later ones at debug); at most [`MAX_REPORTED`] are
    /// remembered.
    fn first_report(&mut self, culprit: Option<NodeId>, kind: &'static str) -> bool {
        self.reported.len() < MAX_REPORTED && self.reported.insert((culprit, kind))
    }

    /// Whether the member set in force or the next one has `id` (a peer may
    /// also be reached only as a `bootstrap` peer).
    fn chain_names(&self, id: &NodeId) -> bool {
        let m = self.core.membership();
        m.current().contains(id) || m.next().contains(id)
    }

    /// A tip carries a reading of its sender's clock (see [`super::clock`]);
    /// warns once when ours is off by more than a second.
    fn sample_clock(&mut self, from: NodeId, time_ms: u64) {
        match self.clock.handle_tip(from, time_ms, self.now()) {
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

    /// A proposal for a height past the next one: nothing could use it (only the
    /// next height is buffered, and votes tell us a peer is ahead), so it is
    /// dropped from its header, before its up to 3 MiB are decoded.
    fn beyond_next_height(&self, body: &[u8]) -> bool {
        super::message::proposal_height(body).is_some_and(|h| h > self.core.height() + 1)
    }

    /// How long to wait for a round's proposal. Waiting the whole propose timeout
    /// for a proposer we cannot hear (not connected, or silent for several block
    /// intervals: paused, or cut off) only slows the chain down: nothing can arrive
    /// from it. So we prevote nil at once (always allowed by the protocol; it only
    /// gives up on that round's block), and the round passes to the next proposer.
    fn propose_wait(&self, timeout: Timeout, after_ms: u64) -> u64 {
        let Timeout::Propose { height, round } = timeout else { return after_ms };
        let proposer = self.core.proposer(height, round);
        if proposer == self.core.id() {
            return after_ms;
        }
        // The window grows with the round, as the rounds' timeouts do: in a late
        // round an honest proposer's last message may be a whole round old.
        let base = (3 * self.network.block_interval_ms).max(1_500);
        let silent_for = Duration::from_millis(base.saturating_mul(1 + round as u64));
        let heard = self.last_heard.get(&proposer).is_some_and(|at| at.elapsed() < silent_for);
        if heard && self.peers.is_connected(&proposer) {
            after_ms
        } else {
            ABSENT_PROPOSER_WAIT_MS.min(after_ms)
        }
    }

    async fn on_message(&mut self, from: NodeId, msg: Message) -> Result<(), ProducerError> {
        // A peer counts as heard when it takes part in consensus here and now: a
        // vote or proposal for our height or the one before. Anything else (a
        // flood of junk, far-future messages) says nothing about whether it will
        // propose.
        let height = match &msg {
            Message::Proposal(p) => Some(p.proposal.height),
            Message::CompactProposal(p) => Some(p.height),
            Message::Vote(v) => Some(v.vote.height),
            _ => None,
        };
        let ours = self.core.height();
        if height.is_some_and(|h| h >= ours.saturating_sub(1) && h <= ours) {
            self.last_heard.insert(from, Instant::now());
        }
        let input = match msg {
            Message::Proposal(p) => Input::Proposal(p),
            Message::Vote(v) => Input::Vote(v),
            Message::CompactProposal(cp) => return self.on_compact(from, cp).await,
            // A `bootstrap` peer the chain does not name (yet) serves sync
            // only: its transactions and its clock do not count here.
            Message::Tx(_) | Message::Tip { .. } if !self.chain_names(&from) => {
                if let Message::Tip { height, .. } = msg {
                    self.sync.handle_claim(from, height, std::time::Instant::now());
                    self.maybe_sync();
                }
                return Ok(());
            }
            // Into the share of the member whose gossip brought it: nodes
            // gossip only their own clients' transactions and relay none.
            Message::Tx(tx) => {
                let added = self.lock_mempool().add_gossiped(from, tx);
                if let Err(e) = added {
                    tracing::debug!(peer = %from.short(), "gossiped transaction dropped: {e}");
                }
                return Ok(());
            }
            Message::Tip { height, time_ms, .. } => {
                self.sample_clock(from, time_ms);
                self.sync.handle_claim(from, height, std::time::Instant::now());
                self.maybe_sync();
                return Ok(());
            }
            Message::Approval(sa) => {
                self.on_approval(from, sa);
                return Ok(());
            }
            other => {
                tracing::debug!(peer = %from.short(), kind = other.kind_name(), "ignoring message on the gossip stream");
                return Ok(());
            }
        };
        let out = self.core.handle(input, self.now());
        self.drive(out).await
    }

    /// A compact proposal: checked without its transactions, rebuilt from the
    /// mempool, and what is missing asked of the peer that sent it. Until all of
    /// its transactions are here the core does not see it; one that never
    /// completes is a proposal that never came (the propose timeout runs).
    async fn on_compact(&mut self, from: NodeId, cp: CompactProposal) -> Result<(), ProducerError> {
        if !self.core.wants_proposal(cp.height, cp.round) || self.waiting.contains(cp.height, cp.round) {
            return Ok(());
        }
        let proposer = self.core.proposer(cp.height, cp.round);
        if let Err(e) = cp.check(&self.network.id, proposer, self.limits.max_block_txs) {
            let culprit = if e.signed_by_proposer() { cp.proposer } else { from };
            self.refuse_compact(culprit, &e);
            return Ok(());
        }
        self.rebuild(from, cp).await
    }

    /// Rebuilds a checked compact proposal from the mempool, within the block's
    /// byte limit: complete, it goes to the core; otherwise it is fetched if its
    /// round is in the window (`in_fetch_window`), kept in its compact form if
    /// the round is later, and dropped if this node has left the round behind.
    async fn rebuild(&mut self, from: NodeId, cp: CompactProposal) -> Result<(), ProducerError> {
        let found = self.lock_mempool().lookup_within_block(&cp.ids, self.limits.max_block_bytes);
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.refuse_compact(cp.proposer, &e);
                return Ok(());
            }
        };
        let assembly = Assembly::new(cp, found);
        if assembly.is_complete() {
            return self.assembled(assembly).await;
        }
        let (h, r) = (self.core.height(), self.core.round());
        let slot = (assembly.proposal.height, assembly.proposal.round);
        self.waiting.retain_window(h, r);
        if in_fetch_window((h, r), slot.0, slot.1) {
            self.fetch_for(from, assembly);
        } else if slot > (h, r) {
            self.waiting.defer(from, assembly.proposal);
        } else {
            tracing::debug!(peer = %from.short(), height = slot.0, round = slot.1, "compact proposal of a round left behind: not fetched");
        }
        Ok(())
    }

    /// A compact proposal refused: counted as misbehaviour of `culprit`, one
    /// warn line per culprit and kind.
    fn refuse_compact(&mut self, culprit: NodeId, e: &CompactError) {
        self.metrics.misbehaviour.fetch_add(1, Ordering::Relaxed);
        if self.first_report(Some(culprit), e.kind()) {
            tracing::warn!(peer = %culprit.short(), kind = e.kind(), "compact proposal refused: {e}");
        } else {
            tracing::debug!(peer = %culprit.short(), kind = e.kind(), "compact proposal refused: {e}");
        }
    }

    /// Fetches what `assembly` misses from its proposer, which holds every
    /// transaction of its block, or else from the peer that sent it.
    fn fetch_for(&mut self, from: NodeId, assembly: Assembly) {
        let proposer = assembly.proposal.proposer;
        let ask = if proposer != self.core.id() && self.peers.is_connected(&proposer) { proposer } else { from };
        self.fetch_txs(ask, assembly);
    }

    /// Kept compact proposals whose round the window has reached: looked up in
    /// the mempool again, and fetched if anything is missing. Once a loop turn;
    /// nothing to do unless proposals of later rounds are kept.
    async fn fetch_due(&mut self) -> Result<(), ProducerError> {
        if !self.waiting.has_later() {
            return Ok(());
        }
        let (h, r) = (self.core.height(), self.core.round());
        self.waiting.retain_window(h, r);
        for (from, cp) in self.waiting.take_due(|ph, pr| in_fetch_window((h, r), ph, pr)) {
            if self.core.wants_proposal(cp.height, cp.round) {
                self.rebuild(from, cp).await?;
            }
        }
        Ok(())
    }

    /// Asks `from` for what `assembly` misses; the answer comes back as
    /// [`Event::Fetched`] within two block intervals (at least a second), or a
    /// failure does. The task ends early, without a word, once the assembly
    /// leaves `waiting`.
    fn fetch_txs(&mut self, from: NodeId, assembly: Assembly) {
        let (height, round) = (assembly.proposal.height, assembly.proposal.round);
        let request = Message::GetTxs { height, round, ids: assembly.missing_ids() };
        let frame = match request.encode() {
            Ok(f) => f,
            Err(e) => return tracing::error!("cannot ask for transactions: {e}"),
        };
        let ends = match self.waiting.insert(assembly) {
            Ok(token) => token,
            Err(e) => return tracing::debug!(peer = %from.short(), height, round, "compact proposal dropped: {e}"),
        };
        let peers = self.peers.clone();
        let tx = self.fetched_tx.clone();
        let wait = Duration::from_millis((2 * self.network.block_interval_ms).max(1_000));
        let held = FetchBytes::new(&self.fetch_bytes, frame.len());
        let fetch = async move {
            let result = match tokio::time::timeout(wait, peers.request(from, frame)).await {
                Ok(Ok(body)) => match Message::decode(&body) {
                    Ok(Message::Txs(txs)) => Ok(txs),
                    Ok(other) => Err(format!("answered with {}", other.kind_name())),
                    Err(e) => Err(e.to_string()),
                },
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
            };
            let _ = tx.send(Fetched { from, height, round, result }).await;
        };
        self.tracker.spawn(fetch_task(ends, held, fetch));
    }

    /// A peer's answer for a waiting compact proposal: complete, it goes to the
    /// core; otherwise it is dropped (withheld, answered with transactions that
    /// are not the block's, or with one over the mempool's limit), or refused
    /// as the proposer's misbehaviour (its transactions pass the block's limit).
    async fn on_fetched(&mut self, f: Fetched) -> Result<(), ProducerError> {
        let Some(mut assembly) = self.waiting.take(f.height, f.round) else { return Ok(()) };
        let missing = assembly.missing_ids().len();
        let limits = RebuildLimits {
            max_block_bytes: self.limits.max_block_bytes,
            max_tx_bytes: self.lock_mempool().limits().max_tx_bytes,
        };
        let (kind, outcome) = match f.result {
            Ok(txs) => match assembly.handle_txs(txs, limits) {
                Ok(_) if assembly.is_complete() => return self.assembled(assembly).await,
                Ok(_) => (
                    "compact_proposal_incomplete",
                    format!("{} of {missing} missing transactions not sent", assembly.missing_ids().len()),
                ),
                Err(FillError::Proposal(e)) => {
                    self.refuse_compact(assembly.proposal.proposer, &e);
                    return Ok(());
                }
                Err(e @ FillError::Answer(_)) => ("txs_answer_refused", e.to_string()),
            },
            Err(e) => ("compact_proposal_incomplete", e),
        };
        if self.first_report(Some(f.from), kind) {
            tracing::warn!(peer = %f.from.short(), height = f.height, round = f.round, "compact proposal dropped: {outcome}");
        } else {
            tracing::debug!(peer = %f.from.short(), height = f.height, round = f.round, "compact proposal dropped: {outcome}");
        }
        Ok(())
    }

    /// A rebuilt proposal goes to the core as a full one would.
    async fn assembled(&mut self, assembly: Assembly) -> Result<(), ProducerError> {
        let Some(sp) = assembly.into_signed() else { return Ok(()) };
        let out = self.core.handle(Input::Proposal(sp), self.now());
        self.drive(out).await
    }

    fn on_request(&mut self, req: InboundRequest) {
        let message = match Message::decode(&req.body) {
            Ok(m) => m,
            Err(e) => {
                self.peers.reject(req.from, &e);
                return;
            }
        };
        let reply = |req: InboundRequest, m: Message| match m.encode() {
            Ok(frame) => {
                let _ = req.reply.send(Ok(frame));
            }
            Err(e) => tracing::error!("cannot answer a request: {e}"),
        };
        match message {
            Message::GetBlocks { from, count } => {
                if !self.sync_allowance(req.from) {
                    if self.rate_limited.insert(req.from) {
                        tracing::warn!(peer = %req.from.short(), "sync requests over the limit; refusing some");
                    }
                    let _ = req.reply.send(Err(Refusal::RateLimited));
                    return;
                }
                let store = self.store.clone();
                let count = count.min(self.node_limits.sync_batch_blocks) as usize;
                let max_bytes = self.node_limits.sync_response_bytes;
                self.tracker.spawn(async move {
                    let blocks = tokio::task::spawn_blocking(move || store.range(from, count, max_bytes)).await;
                    match blocks {
                        Ok(Ok(blocks)) => reply(req, Message::Blocks(blocks)),
                        Ok(Err(e)) => tracing::error!("cannot read blocks for a peer: {e}"),
                        Err(e) => tracing::error!("block read task failed: {e}"),
                    }
                });
            }
            // A peer rebuilding a compact proposal: from the mempool, and from the
            // proposal itself when it is here (our own after a restart, whose
            // transactions the mempool no longer holds). Under the sync rate limit.
            Message::GetTxs { height, round, mut ids } => {
                // Members rebuilding a proposal ask; a `bootstrap` peer the
                // chain does not name only syncs.
                if !self.chain_names(&req.from) {
                    let _ = req.reply.send(Err(Refusal::Unsupported));
                    return;
                }
                if !self.sync_allowance(req.from) {
                    let _ = req.reply.send(Err(Refusal::RateLimited));
                    return;
                }
                // Each transaction once, however often it is asked for.
                let mut seen = std::collections::HashSet::with_capacity(ids.len());
                ids.retain(|id| seen.insert(*id));
                let budget = super::message::TXS_ANSWER_BYTES;
                let mut txs = self.lock_mempool().lookup_within(&ids, budget);
                if txs.len() < ids.len() {
                    if let Some(block) = self.core.proposed_block(height, round) {
                        txs = answer_from_block(block, &ids, budget);
                    }
                }
                reply(req, Message::Txs(txs));
            }
            // The echo probe (the transport's request/response check), under the
            // same rate limit as sync.
            Message::Data(d) => {
                if self.sync_allowance(req.from) {
                    reply(req, Message::Data(d));
                } else {
                    let _ = req.reply.send(Err(Refusal::RateLimited));
                }
            }
            other => {
                tracing::debug!(peer = %req.from.short(), kind = other.kind_name(), "unexpected request");
                let _ = req.reply.send(Err(Refusal::Unsupported));
            }
        }
    }

    /// A token bucket per peer: `sync_requests_per_sec`, bursts of twice that.
    fn sync_allowance(&mut self, peer: NodeId) -> bool {
        let rate = self.node_limits.sync_requests_per_sec as f64;
        let now = Instant::now().into_std();
        self.sync_buckets.entry(peer).or_insert_with(|| TokenBucket::new(rate, 2.0 * rate, now)).take(now)
    }

    /// Recomputes the quorum gate: members of the current height's set that are
    /// connected, this node included when it is one.
    async fn on_connected(&mut self) -> Result<(), ProducerError> {
        let out = self.check_quorum();
        self.drive(out).await
    }

    /// The quorum gate's state now; the core's outputs if it changed.
    fn check_quorum(&mut self) -> Vec<Output> {
        let set = self.core.members_at(self.core.height());
        let n = set.len();
        let me = set.contains(&self.core.id()) as usize;
        let connected = self.peers.peers().iter().filter(|p| set.contains(&p.id)).count();
        let super::quorum::Quorum { active, required, met } =
            super::quorum::quorum(connected + me, n, self.network.min_active);
        let previous = self.quorum.replace((active, met));
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
        if previous.map(|p| p.1) != Some(met) {
            return self.core.handle(Input::Quorum(met), self.now());
        }
        Vec::new()
    }

    /// A peer that just connected missed what we signed at this height: replay it.
    fn on_peer_up(&mut self, id: NodeId) {
        for m in self.core.own_messages() {
            self.send(id, &signed_message(m));
        }
        // Approvals waiting for a block: the peer may propose the next one.
        for sa in self.approvals.iter() {
            self.send(id, &Message::Approval(sa.clone()));
        }
        if let Some(info) = self.peers.peers().into_iter().find(|p| p.id == id) {
            self.sync.handle_claim(id, info.tip.height, std::time::Instant::now());
            self.maybe_sync();
        }
    }

    /// When no block came for a while, messages may have been lost (a peer
    /// restarted, a partition healed) or reached only some of us: send what we
    /// hold for this height again.
    fn rebroadcast(&mut self) {
        let height = self.core.height();
        if height != self.last_height_seen.0 {
            self.last_height_seen = (height, Instant::now());
            return;
        }
        if self.last_height_seen.1.elapsed() >= self.rebroadcast_after && self.quorum.is_some_and(|q| q.1) {
            // Ours and what we hold of others': a vote only some of us saw (an
            // equivocator's, or one lost in a partition) reaches the rest.
            for m in self.core.relay_messages() {
                self.broadcast(&signed_message(m));
            }
            self.last_height_seen.1 = Instant::now();
        }
    }

    /// Asks for blocks when a peer claims more than we have, or hedges a slow
    /// request with another peer; the planner decides.
    fn maybe_sync(&mut self) {
        let our_tip = self.core.height() - 1;
        let Some(req) = self.sync.poll_request(our_tip, std::time::Instant::now()) else { return };
        tracing::debug!(peer = %req.peer.short(), our_tip, "fetching blocks");
        let request = Message::GetBlocks { from: req.from, count: req.count };
        let frame = match request.encode() {
            Ok(f) => f,
            Err(e) => return tracing::error!("cannot ask for blocks: {e}"),
        };
        let peers = self.peers.clone();
        let tx = self.sync_tx.clone();
        let peer = req.peer;
        self.tracker.spawn(async move {
            let result = match peers.request(peer, frame).await {
                Ok(body) => Message::decode(&body).map(|m| (m, body.len())).map_err(SyncError::from),
                Err(e) => Err(SyncError::from(e)),
            };
            let _ = tx.send((peer, result)).await;
        });
    }

    async fn on_sync(
        &mut self,
        peer: NodeId,
        result: Result<(Message, usize), SyncError>,
    ) -> Result<(), ProducerError> {
        let (blocks, bytes) = match result {
            Ok((Message::Blocks(blocks), bytes)) => (blocks, bytes),
            Ok((other, _)) => {
                self.sync_outcome(
                    peer,
                    Outcome::Failed(Failure::Malformed),
                    &format!("answered with {}", other.kind_name()),
                );
                return Ok(());
            }
            Err(e) => {
                let failure = match &e {
                    SyncError::Request(RequestError::Timeout(_)) => Failure::Timeout,
                    SyncError::Request(RequestError::Frame(_)) | SyncError::Decode(_) => Failure::Malformed,
                    SyncError::Request(_) => Failure::Request,
                };
                self.sync_outcome(peer, Outcome::Failed(failure), &e.to_string());
                return Ok(());
            }
        };
        let count = blocks.len();
        let first = self.core.height();
        let mut applied: usize = 0;
        let mut invalid = false;
        for c in blocks {
            let before = self.core.height();
            if c.block.height() < before {
                continue; // another peer's answer got there first
            }
            let out = self.core.handle(Input::Commit(c), self.now());
            self.applying_sync = true;
            let driven = self.drive(out).await;
            self.applying_sync = false;
            driven?;
            if self.core.height() == before {
                // Not the next block, or its certificate does not verify.
                invalid = true;
                break;
            }
            applied += 1;
        }
        if applied > 0 {
            tracing::info!(peer = %peer.short(), "caught up {applied} block(s): heights {first}..{}", first + applied as u64 - 1);
        }
        self.sync_outcome(peer, Outcome::Blocks { blocks: count, bytes, applied, invalid }, "");
        Ok(())
    }

    /// Hands a response's outcome to the planner (which counts failures); a
    /// failure is warned about once per peer and cause, and the next best peer is
    /// asked at once.
    fn sync_outcome(&mut self, peer: NodeId, outcome: Outcome, detail: &str) {
        let verdict = self.sync.handle_response(peer, outcome, std::time::Instant::now());
        if let Some(f) = verdict.failure {
            let penalty = self.sync.penalty().as_secs();
            if verdict.first_of_its_kind {
                tracing::warn!(peer = %peer.short(), reason = f.as_str(), "sync from peer failed{}{detail}; not asking it for {penalty} s", if detail.is_empty() { "" } else { ": " });
            } else {
                tracing::debug!(peer = %peer.short(), reason = f.as_str(), "sync from peer failed {detail}");
            }
        }
        self.maybe_sync();
    }

    async fn fire_timers(&mut self) -> Result<(), ProducerError> {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            let out = self.core.handle(Input::Timeout(t), self.now());
            self.drive(out).await?;
        }
        Ok(())
    }

    /// Carries out the core's outputs in order, feeding back what it asks for.
    async fn drive(&mut self, outputs: Vec<Output>) -> Result<(), ProducerError> {
        let mut work: VecDeque<Output> = outputs.into();
        while let Some(o) = work.pop_front() {
            match o {
                Output::Sign { record, message, lock } => {
                    let store = self.store.clone();
                    let message = tokio::task::spawn_blocking(move || {
                        store.record_signed(record, &message, lock.as_deref()).map(|()| message)
                    })
                    .await??;
                    self.broadcast(&signed_message(message));
                }
                Output::Schedule { timeout, after_ms } => {
                    let after_ms = self.propose_wait(timeout, after_ms);
                    self.timer_seq += 1;
                    self.timers.insert((Instant::now() + Duration::from_millis(after_ms), self.timer_seq), timeout);
                }
                Output::NeedValue { height, round } => {
                    let txs = self.lock_mempool().take(self.limits.max_block_txs, self.limits.max_block_bytes);
                    let changes = if self.approvals.is_empty() {
                        Vec::new()
                    } else {
                        self.core.membership().select(self.approvals.iter(), &self.network.id)
                    };
                    work.extend(self.core.handle(Input::Value { height, round, txs, changes }, self.now()));
                }
                Output::Decided { committed: c, membership, completed } => {
                    let store = self.store.clone();
                    let stored = c.clone();
                    tokio::task::spawn_blocking(move || store.commit(&stored, &membership)).await??;
                    for done in &completed {
                        tracing::info!(
                            height = done.height,
                            in_force = done.in_force,
                            "member change committed: {}, in force from height {}",
                            done.change,
                            done.in_force
                        );
                    }
                    work.extend(self.after_block());
                    let height = c.block.height();
                    self.mempool_follows_chain(height, &c.block.txs);
                    self.waiting.retain_window(self.core.height(), 0);
                    let hash = c.block.hash();
                    self.tip.send_replace(Tip { height, hash: hash.0 });
                    self.metrics.last_block_timestamp_ms.store(c.block.header.timestamp_ms, Ordering::Relaxed);
                    if self.applying_sync {
                        self.metrics.blocks_synced.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let latency_ms = self.now().saturating_sub(c.block.header.timestamp_ms);
                        self.metrics.commit_latency.observe(latency_ms as f64 / 1000.0);
                    }
                    tracing::debug!(height, hash = %hash.short(), round = c.cert.round, txs = c.block.txs.len(), "committed");
                    let time_ms = self.now();
                    self.broadcast(&Message::Tip { height, hash, time_ms });
                }
                Output::Misbehaviour(m) => {
                    self.metrics.misbehaviour.fetch_add(1, Ordering::Relaxed);
                    // One warn line per culprit and kind of misbehaviour; reports
                    // without a culprit (forgeries) share one line per kind.
                    let culprit = m.culprit();
                    let fork = matches!(
                        m,
                        super::misbehaviour::Misbehaviour::InvalidSyncedBlock {
                            reason: super::block::BlockError::WrongParent { .. },
                            ..
                        }
                    );
                    if self.first_report(culprit, m.kind()) {
                        if fork {
                            // More than two thirds of a height's members signed a
                            // block on another parent than ours: two certified
                            // histories exist.
                            tracing::error!(
                                kind = m.kind(),
                                "two certified histories: {m}; either keys of that height's members signed both \
                                 (members that have left the set, or more than a third of it) or this node synced \
                                 a forged history; stop and compare `masternode status` tip hashes with members you trust"
                            );
                        } else {
                            tracing::warn!(kind = m.kind(), "misbehaviour: {m}");
                        }
                    } else {
                        tracing::debug!(kind = m.kind(), "misbehaviour: {m}");
                    }
                }
                Output::Ahead { node, height } => {
                    self.sync.handle_claim(node, height.saturating_sub(1), std::time::Instant::now());
                    self.maybe_sync();
                }
            }
        }
        Ok(())
    }

    /// Queues for every peer; returns at once. The only error is a message over
    /// its kind's limit, which block limits rule out for our own messages: if it
    /// happens anyway it is a bug worth a loud line, not a silent stall.
    fn broadcast(&self, msg: &Message) {
        match msg.outgoing() {
            Ok(out) => {
                self.peers.broadcast(&out);
            }
            Err(e) => tracing::error!("cannot send: {e}"),
        }
    }

    /// Queues for one peer, as [`Self::broadcast`] does for all.
    fn send(&self, to: NodeId, msg: &Message) {
        match msg.outgoing() {
            Ok(out) => {
                let _ = self.peers.send(to, &out);
            }
            Err(e) => tracing::error!("cannot send: {e}"),
        }
    }

    /// After a block: approvals it carried or made void leave the pool, the
    /// transport follows the set, the quorum gate counts the new height's set.
    fn after_block(&mut self) -> Vec<Output> {
        self.approvals.retain_valid(self.core.membership(), &self.network.id);
        self.publish_members();
        let reachable = self.core.membership().reachable_with(&self.bootstrap);
        if reachable != self.reachable {
            self.peers.set_members(reachable.clone());
            self.clock.retain(|id| reachable.iter().any(|(m, _)| m == id));
            self.reachable = reachable;
        }
        let height = self.core.height();
        self.clock.set_min_peers(super::clock::min_peers_for(self.core.members_at(height).len()));
        let now_member = self.core.members_at(height).contains(&self.core.id());
        if now_member != self.member {
            self.member = now_member;
            if now_member {
                tracing::info!(height, "this node is a member from height {height}: it votes from here on");
            } else {
                tracing::warn!(height, "this node is no longer a member from height {height}: it stops voting");
            }
        }
        self.check_quorum()
    }

    fn publish_members(&self) {
        let waiting = self.approvals.iter().map(|sa| sa.approval.clone()).collect();
        self.members_view.send_replace(Arc::new(MembersView { membership: self.core.membership().clone(), waiting }));
    }

    /// An approval gossiped by a peer: kept and passed on once if the next block
    /// could carry it.
    fn on_approval(&mut self, from: NodeId, sa: SignedApproval) {
        // Every peer relays a new approval once: the copies after the first
        // cost no signature check.
        if self.approvals.has(&sa.approval.change, sa.approval.approver) {
            return;
        }
        match self.core.membership().check(&sa, &self.network.id) {
            Ok(()) => {
                if self.approvals.add(sa.clone()) {
                    self.broadcast(&Message::Approval(sa));
                    self.publish_members();
                }
            }
            Err(e) => tracing::debug!(peer = %from.short(), "gossiped membership approval dropped: {e}"),
        }
    }

    /// An operator's change: signed with this node's key, checked as the next
    /// block would check it, kept for proposers and gossiped.
    fn on_member_request(&mut self, req: MemberRequest) {
        let result = self.approve(req.request);
        if let Ok(s) = &result {
            tracing::info!(
                approvals = s.approvals,
                required = s.required,
                "approved member change: {} ({} of {} approvals)",
                s.change,
                s.approvals,
                s.required
            );
        }
        let _ = req.reply.send(result);
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
                    .iter()
                    .filter_map(|sa| match sa.approval.change {
                        Change::SetAddr { id, seq, .. } if id == me => Some(seq),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                Change::SetAddr { id: me, addr: crate::net::canonical(addr), seq: info.addr_seq.max(waiting) + 1 }
            }
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
        let sa = Approval { change: change.clone(), approver: me, signed_at }.sign(&self.network.id, &self.identity);
        let held = self.approvals.has(&change, me);
        if !held {
            membership.check(&sa, &self.network.id)?;
            if !self.approvals.add(sa.clone()) {
                return Err(ChangeError::TooManyPending(me));
            }
            self.broadcast(&Message::Approval(sa));
            self.publish_members();
        }
        let view = self.members_view.borrow().clone();
        let membership = self.core.membership();
        let required = if change.needs_vote() { membership.current().quorum() } else { 1 };
        Ok(Submitted {
            approvals: view.approvers(&change).len(),
            required,
            expires_at: signed_at + membership.params().ttl,
            change,
        })
    }

    /// The mempool after the block at `height` committed `txs`: they leave
    /// it, what waited too long expires, and a share is kept for each member
    /// the chain names besides this node (as [`Self::chain_names`] does).
    fn mempool_follows_chain(&self, height: Height, txs: &[Vec<u8>]) {
        let membership = self.core.membership();
        let me = self.core.id();
        let members = membership.current().ids().into_iter().chain(membership.next().ids()).filter(|id| *id != me);
        let mut pool = self.lock_mempool();
        pool.handle_commit(height, txs);
        pool.set_members(members);
    }

    fn lock_mempool(&self) -> std::sync::MutexGuard<'_, Mempool> {
        super::mempool::lock(&self.mempool)
    }
}

/// What goes to peers for a signed message: a proposal in its compact form
/// ([`super::compact`]), whose transactions the peers hold or fetch.
fn signed_message(m: Signed) -> Message {
    match m {
        Signed::Proposal(p) => Message::CompactProposal(CompactProposal::of(&p)),
        Signed::Vote(v) => Message::Vote(v),
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

/// A fetch's task: `fetch` until it ends or `ends` is cancelled (its assembly
/// left [`Waiting`]), its request's bytes counted meanwhile.
async fn fetch_task(ends: CancellationToken, held: FetchBytes, fetch: impl std::future::Future<Output = ()>) {
    let _held = held;
    ends.run_until_cancelled(fetch).await;
}

/// The bytes of one `GetTxs` request, counted in the producer's figure while
/// its task runs, however the task ends.
struct FetchBytes {
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl FetchBytes {
    fn new(total: &Arc<AtomicU64>, bytes: usize) -> FetchBytes {
        total.fetch_add(bytes as u64, Ordering::Relaxed);
        FetchBytes { total: total.clone(), bytes: bytes as u64 }
    }
}

impl Drop for FetchBytes {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The transactions of `block` with these ids, in the order asked, within
/// `max_bytes`: each of the block's transactions hashed once.
fn answer_from_block(block: &super::block::Block, ids: &[super::block::Hash], max_bytes: usize) -> Vec<Vec<u8>> {
    let by_id: HashMap<super::block::Hash, &Vec<u8>> =
        block.txs.iter().map(|t| (super::block::tx_hash(t), t)).collect();
    super::compact::within_bytes(ids.iter().filter_map(|id| by_id.get(id).copied()), max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{Hash, Header};

    /// A compact proposal of `(height, round)` naming one transaction nobody
    /// has, as it waits for its fetch.
    fn assembly(height: Height, round: Round) -> Assembly {
        let header = Header {
            height,
            round,
            prev_hash: Hash::default(),
            timestamp_ms: 1,
            proposer: NodeId([1; 32]),
            tx_root: Hash::default(),
            changes: vec![],
        };
        let ids = vec![Hash([2; 32])];
        let cp = CompactProposal {
            height,
            round,
            header,
            ids,
            valid_round: None,
            proposer: NodeId([1; 32]),
            signature: [0; 64],
        };
        Assembly::new(cp, vec![None])
    }

    /// However long its request would take, a fetch's task ends, and stops
    /// counting its bytes, once its assembly leaves the waiting ones: taken,
    /// or left behind by the window.
    #[tokio::test]
    async fn a_fetch_task_ends_with_its_assembly() {
        let mut waiting = Waiting::new(&Limits::default());
        let total = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for round in [0, 1] {
            let ends = waiting.insert(assembly(5, round)).unwrap();
            let held = FetchBytes::new(&total, 100);
            tasks.push(tokio::spawn(fetch_task(ends, held, std::future::pending())));
        }
        assert_eq!(total.load(Ordering::Relaxed), 200, "two requests in flight");
        waiting.take(5, 0);
        waiting.retain_window(6, 0);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("the task ended").unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_fetch_window_is_this_round_the_next_and_the_next_heights_first_two_nothing_earlier() {
        let at = (10, 3);
        for (h, r, want) in [
            (10, 3, true),
            (10, 4, true),
            (10, 5, false),
            (10, 2, false),
            (10, 0, false),
            (9, 5, false),
            (11, 0, true),
            (11, 1, true),
            (11, 2, false),
            (12, 0, false),
        ] {
            assert_eq!(in_fetch_window(at, h, r), want, "height {h} round {r}");
        }
    }
}
