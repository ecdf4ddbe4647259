//! The block producer: the one task that owns the consensus core.
//!
//! It feeds the core what arrives from peers, timers and the quorum gate, and
//! carries out what the core asks, in order: a signature is recorded durably in the
//! store before the vote leaves the node; a decided block is stored durably before
//! the node reports it or moves on. A node that learns a peer is ahead (a `Tip`
//! announcement, a vote for a later height, the tip in the peer's handshake)
//! fetches the missing blocks with their certificates over request streams, in
//! bounded batches, and feeds them to the core, which verifies every certificate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::block::{Height, Limits};
use super::consensus::{Core, Input, Output, Signed, Timeout};
use super::mempool::Mempool;
use super::store::{Store, StoreError};
use crate::config::{Network, NodeLimits};
use crate::identity::NodeId;
use crate::net::handshake::Tip;
use crate::net::{Inbound, InboundRequest, Message, PeerEvent, Peers, Refusal, RequestError};

/// How long a peer that failed a sync request is not asked again.
const SYNC_PENALTY: Duration = Duration::from_secs(15);
/// Misbehaviour reports logged at warn level before falling back to debug.
const MAX_REPORTED: usize = 1024;

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
    pub misbehaviour: AtomicU64,
}

impl Default for ChainMetrics {
    fn default() -> Self {
        ChainMetrics {
            loops: AtomicU64::new(0),
            commit_latency: Histogram::new(exponential_buckets(0.05, 2.0, 11)),
            blocks_synced: AtomicU64::new(0),
            misbehaviour: AtomicU64::new(0),
        }
    }
}

pub struct Producer {
    node_limits: NodeLimits,
    sync_buckets: HashMap<NodeId, (f64, Instant)>,
    sync_penalty: HashMap<NodeId, Instant>,
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
    peer_tips: HashMap<NodeId, Height>,
    syncing: Option<NodeId>,
    sync_tx: mpsc::Sender<(NodeId, Result<Message, RequestError>)>,
    sync_rx: mpsc::Receiver<(NodeId, Result<Message, RequestError>)>,
    quorum: Option<(usize, bool)>,
    reported: HashSet<(NodeId, String)>,
    /// The height we were at, and since when: no block for a while means our
    /// messages may have been lost.
    last_height_seen: (Height, Instant),
    rebroadcast_after: Duration,
    tracker: TaskTracker,
}

enum Event {
    Stop,
    Message(NodeId, Message),
    Request(InboundRequest),
    Connected,
    Peer(PeerEvent),
    Sync(NodeId, Result<Message, RequestError>),
    Timers,
    Tick,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Producer {
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
    ) -> Producer {
        let (sync_tx, sync_rx) = mpsc::channel(4);
        let last_height_seen = (core.height(), Instant::now());
        let rebroadcast_after = Duration::from_millis((network.block_interval_ms * 3).max(3_000));
        Producer {
            node_limits,
            sync_buckets: HashMap::new(),
            sync_penalty: HashMap::new(),
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
            peer_tips: HashMap::new(),
            syncing: None,
            sync_tx,
            sync_rx,
            quorum: None,
            reported: HashSet::new(),
            last_height_seen,
            rebroadcast_after,
            tracker,
        }
    }

    /// Runs until `shutdown`; returns an error only for a failed store write, after
    /// which the node must stop rather than go on with a chain it did not persist.
    pub async fn run(mut self, mut inbound: Inbound, shutdown: CancellationToken) -> Result<(), ProducerError> {
        let mut connected = self.peers.watch_connected();
        let mut events = self.peers.subscribe();
        // A tick a second: the loop turns even when idle (the watchdog's proof of
        // progress) and checks whether to re-send our votes.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let start = self.core.start(now_ms());
        self.drive(start).await?;
        let set = connected.borrow_and_update().clone();
        self.on_connected(&set).await?;
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let event = tokio::select! {
                // Shutdown first: the transport empties the peer set as it stops,
                // which must not read as a lost quorum.
                biased;
                _ = shutdown.cancelled() => Event::Stop,
                m = inbound.messages.recv() => match m {
                    Some((from, msg)) => Event::Message(from, msg),
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
                    Some((peer, result)) => Event::Sync(peer, result),
                    None => Event::Stop,
                },
                _ = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => Event::Timers,
                _ = tick.tick() => Event::Tick,
            };
            self.metrics.loops.fetch_add(1, Ordering::Relaxed);
            match event {
                Event::Stop => return Ok(()),
                Event::Message(from, msg) => self.on_message(from, msg).await?,
                Event::Request(req) => self.on_request(req),
                Event::Connected => {
                    let set = connected.borrow_and_update().clone();
                    self.on_connected(&set).await?;
                }
                Event::Peer(PeerEvent::Up { id, .. }) => self.on_peer_up(id).await,
                Event::Peer(PeerEvent::Down { id }) => {
                    self.peer_tips.remove(&id);
                }
                Event::Sync(peer, result) => self.on_sync(peer, result).await?,
                Event::Timers => self.fire_timers().await?,
                Event::Tick => self.rebroadcast().await,
            }
        }
    }

    async fn on_message(&mut self, from: NodeId, msg: Message) -> Result<(), ProducerError> {
        let input = match msg {
            Message::Proposal(p) => Input::Proposal(p),
            Message::Vote(v) => Input::Vote(v),
            Message::Tx(tx) => {
                let added = self.lock_mempool().add(tx);
                if let Err(e) = added {
                    tracing::debug!(peer = %from.short(), "gossiped transaction dropped: {e}");
                }
                return Ok(());
            }
            Message::Tip { height, .. } => {
                self.note_tip(from, height);
                self.maybe_sync();
                return Ok(());
            }
            other => {
                tracing::debug!(peer = %from.short(), kind = other.kind_name(), "ignoring message on the gossip stream");
                return Ok(());
            }
        };
        let out = self.core.handle(input, now_ms());
        self.drive(out).await
    }

    fn on_request(&mut self, req: InboundRequest) {
        match req.message {
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
                        Ok(Ok(blocks)) => {
                            let _ = req.reply.send(Ok(Message::Blocks(blocks)));
                        }
                        Ok(Err(e)) => tracing::error!("cannot read blocks for a peer: {e}"),
                        Err(e) => tracing::error!("block read task failed: {e}"),
                    }
                });
            }
            // Echo: the transport's request/response probe.
            Message::Data(d) => {
                let _ = req.reply.send(Ok(Message::Data(d)));
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
        let now = Instant::now();
        let (tokens, last) = self.sync_buckets.entry(peer).or_insert((2.0 * rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(2.0 * rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn on_connected(&mut self, set: &BTreeSet<NodeId>) -> Result<(), ProducerError> {
        let active = set.len() + 1;
        let required = self.network.required();
        let n = self.network.members.len();
        let met = active >= required;
        let previous = self.quorum.replace((active, met));
        if previous == Some((active, met)) {
            return Ok(());
        }
        match (previous.map(|p| p.1), met) {
            (Some(true), true) => tracing::debug!("quorum met: {active}/{n} active, {required} required"),
            (_, true) => tracing::info!("quorum met: {active}/{n} active, {required} required"),
            // Losing a quorum is worth a warning; forming one at start-up is not.
            (Some(true), false) => tracing::warn!("waiting for quorum: {active}/{n} active, {required} required"),
            (_, false) => tracing::info!("waiting for quorum: {active}/{n} active, {required} required"),
        }
        if previous.map(|p| p.1) != Some(met) {
            let out = self.core.handle(Input::Quorum(met), now_ms());
            self.drive(out).await?;
        }
        Ok(())
    }

    /// A peer that just connected missed what we signed at this height: replay it.
    async fn on_peer_up(&mut self, id: NodeId) {
        for m in self.core.own_messages() {
            let _ = self.peers.send(id, &signed_message(m)).await;
        }
        if let Some(info) = self.peers.peers().into_iter().find(|p| p.id == id) {
            self.note_tip(id, info.tip.height);
            self.maybe_sync();
        }
    }

    /// When no block came for a while, our messages may have been lost (a peer
    /// restarted, a partition healed): send them again.
    async fn rebroadcast(&mut self) {
        let height = self.core.height();
        if height != self.last_height_seen.0 {
            self.last_height_seen = (height, Instant::now());
            return;
        }
        if self.last_height_seen.1.elapsed() >= self.rebroadcast_after && self.quorum.is_some_and(|q| q.1) {
            for m in self.core.own_messages() {
                self.broadcast(&signed_message(m)).await;
            }
            self.last_height_seen.1 = Instant::now();
        }
    }

    fn note_tip(&mut self, peer: NodeId, height: Height) {
        if self.sync_penalty.get(&peer).is_some_and(|until| Instant::now() < *until) {
            return;
        }
        let e = self.peer_tips.entry(peer).or_insert(0);
        *e = (*e).max(height);
    }

    /// A peer that claimed blocks it did not deliver (no answer, a wrong answer,
    /// nothing, or blocks that do not verify) is not asked again for a while, and
    /// the next best peer is asked at once: a member announcing a far-future tip
    /// cannot hold the sync slot.
    fn penalize(&mut self, peer: NodeId) {
        self.peer_tips.remove(&peer);
        self.sync_penalty.retain(|_, until| Instant::now() < *until);
        self.sync_penalty.insert(peer, Instant::now() + SYNC_PENALTY);
    }

    fn maybe_sync(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        let our_tip = self.core.height() - 1;
        let Some((&peer, &their_tip)) = self.peer_tips.iter().max_by_key(|(_, h)| **h) else { return };
        if their_tip <= our_tip {
            return;
        }
        self.syncing = Some(peer);
        tracing::debug!(peer = %peer.short(), our_tip, their_tip, "fetching blocks");
        let peers = self.peers.clone();
        let tx = self.sync_tx.clone();
        let request = Message::GetBlocks { from: our_tip + 1, count: self.node_limits.sync_batch_blocks };
        self.tracker.spawn(async move {
            let result = peers.request(peer, &request).await;
            let _ = tx.send((peer, result)).await;
        });
    }

    async fn on_sync(&mut self, peer: NodeId, result: Result<Message, RequestError>) -> Result<(), ProducerError> {
        self.syncing = None;
        let blocks = match result {
            Ok(Message::Blocks(blocks)) => blocks,
            Ok(other) => {
                tracing::warn!(peer = %peer.short(), kind = other.kind_name(), "sync answered with the wrong message");
                self.penalize(peer);
                self.maybe_sync();
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(peer = %peer.short(), "sync request failed: {e}");
                self.penalize(peer);
                self.maybe_sync();
                return Ok(());
            }
        };
        if blocks.is_empty() {
            tracing::debug!(peer = %peer.short(), "peer announced blocks it does not have");
            self.penalize(peer);
        }
        let first = self.core.height();
        let mut applied = 0;
        for c in blocks {
            let before = self.core.height();
            let out = self.core.handle(Input::Commit(c), now_ms());
            self.applying_sync = true;
            let driven = self.drive(out).await;
            self.applying_sync = false;
            driven?;
            if self.core.height() == before {
                // Not the next block, or its certificate does not verify (reported
                // as misbehaviour by the core): stop taking blocks from this peer.
                self.penalize(peer);
                break;
            }
            applied += 1;
        }
        if applied > 0 {
            tracing::info!(peer = %peer.short(), "caught up {applied} block(s): heights {first}..{}", first + applied - 1);
        }
        self.maybe_sync();
        Ok(())
    }

    async fn fire_timers(&mut self) -> Result<(), ProducerError> {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            let out = self.core.handle(Input::Timeout(t), now_ms());
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
                    self.broadcast(&signed_message(message)).await;
                }
                Output::Schedule { timeout, after_ms } => {
                    self.timer_seq += 1;
                    self.timers.insert((Instant::now() + Duration::from_millis(after_ms), self.timer_seq), timeout);
                }
                Output::NeedValue { height, round } => {
                    let txs = self.lock_mempool().take(self.limits.max_block_txs, self.limits.max_block_bytes);
                    work.extend(self.core.handle(Input::Value { height, round, txs }, now_ms()));
                }
                Output::Decided(c) => {
                    let store = self.store.clone();
                    let stored = c.clone();
                    tokio::task::spawn_blocking(move || store.commit(&stored)).await??;
                    self.lock_mempool().remove_committed(&c.block.txs);
                    let height = c.block.height();
                    let hash = c.block.hash();
                    self.tip.send_replace(Tip { height, hash: hash.0 });
                    if self.applying_sync {
                        self.metrics.blocks_synced.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let latency_ms = now_ms().saturating_sub(c.block.header.timestamp_ms);
                        self.metrics.commit_latency.observe(latency_ms as f64 / 1000.0);
                    }
                    tracing::debug!(height, hash = %hash.short(), round = c.cert.round, txs = c.block.txs.len(), "committed");
                    self.broadcast(&Message::Tip { height, hash }).await;
                }
                Output::Misbehaviour { node, what } => {
                    self.metrics.misbehaviour.fetch_add(1, Ordering::Relaxed);
                    let key = (node, what.split(':').next().unwrap_or_default().to_string());
                    if self.reported.len() < MAX_REPORTED && self.reported.insert(key) {
                        tracing::warn!(peer = %node.short(), "misbehaviour: {what}");
                    } else {
                        tracing::debug!(peer = %node.short(), "misbehaviour: {what}");
                    }
                }
                Output::Ahead { node, height } => {
                    self.note_tip(node, height.saturating_sub(1));
                    self.maybe_sync();
                }
            }
        }
        Ok(())
    }

    /// Sends to every peer. The only error is a message over its kind's limit,
    /// which block limits rule out for our own messages: if it happens anyway it
    /// is a bug worth a loud line, not a silent stall.
    async fn broadcast(&self, msg: &Message) {
        if let Err(e) = self.peers.broadcast(msg).await {
            tracing::error!(kind = msg.kind_name(), "cannot send: {e}");
        }
    }

    fn lock_mempool(&self) -> std::sync::MutexGuard<'_, Mempool> {
        super::mempool::lock(&self.mempool)
    }
}

fn signed_message(m: Signed) -> Message {
    match m {
        Signed::Proposal(p) => Message::Proposal(p),
        Signed::Vote(v) => Message::Vote(v),
    }
}
