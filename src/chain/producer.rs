//! The block producer's shell: the one task that owns the [`Driver`] and carries
//! out what it decides.
//!
//! The driver holds every rule (consensus, timers, the quorum gate, the mempool,
//! compact proposals, sync, rate limits); this task feeds it what arrives (peers'
//! messages and requests, the transport's connected set and peer events,
//! answers to our requests, the admin API's submissions, the clock) and carries
//! out its [`Effect`]s strictly in order. It awaits only the disk, through the
//! store's one [`writer`]: a `Persist` is on disk before the next effect runs,
//! which is how a signature is durable before the vote leaves the node. A
//! `Commit` is handed to the writer and the loop goes on with the next height
//! while the block is written; the block is reported (the tip, and the `Tip`
//! and `Holds` broadcasts, held back until then) once the writer says it is on
//! disk, and the next height's first signature is written after it. Requests
//! to peers run in tasks of their own and report back over a channel; a slow
//! or silent peer never holds the loop.
//!
//! The mempool belongs to the driver: the admin API and [`crate::node::Node`]
//! reach it through this task's channels ([`super::links`]), and status and metrics
//! read the figures it publishes once a loop turn ([`ChainMetrics`]).
//!
//! Its traffic to peers (sends, served blocks, requests of blocks and
//! transactions, and the answers they report back) is in [`requests`], the
//! upgrade halt in [`halt`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::block::{Height, Round};
use super::consensus::Core;
use super::doppelganger::{Evidence, Hold};
use super::driver::{Driver, DriverConfig, Effect, Held, Now, RequestId};
use super::links::{ChainMetrics, Links, MemberRequest, TxRequest};
use super::message::Message;
use super::store::{Store, StoreError};
use super::upgrade::UpgradeNeeded;
use crate::net::handshake::Tip;
use crate::net::{Delivery, Inbound, InboundRequest, PeerEvent, Peers, Refusal};

/// Messages taken from the inbox per turn of the loop, at most: timers and sync
/// are served between batches, however many messages wait. Submissions from the
/// admin API are taken in batches of the same size.
mod halt;
mod requests;
mod writer;

use requests::Answer;

const BATCH: usize = 64;

/// Bytes of transactions a start reads back from the store, at most (and a
/// whole block more), for the mempool's record of committed ids: a few full
/// blocks, a fraction of a second of reading.
const RECENT_READ_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProducerError {
    #[error("store write failed, stopping: {0}")]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Not a failure: the node stopped before a height its binary cannot run.
    #[error(transparent)]
    UpgradeNeeded(#[from] UpgradeNeeded),
    /// Not a failure of this node: another process signs with its key.
    #[error("another process signs with this node's key: {0}")]
    Doppelganger(Evidence),
}

/// What the shell works with besides the driver.
pub(crate) struct Parts {
    pub store: Store,
    pub peers: Peers,
    pub tip: watch::Sender<Tip>,
    pub metrics: Arc<ChainMetrics>,
    pub tracker: TaskTracker,
    pub links: Links,
    /// Added to the wall clock as consensus sees it (tests of members whose
    /// clocks are off; 0 otherwise).
    pub clock_skew_ms: i64,
    /// Where `upgrade-info.json` goes when the node stops before a plan's height.
    pub data_dir: std::path::PathBuf,
}

/// The wall clock, ms since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The shell's two clocks, read into a [`Now`] for each input.
struct Clock {
    start: Instant,
    skew_ms: i64,
}

impl Clock {
    fn now(&self) -> Now {
        Now { mono_ms: self.start.elapsed().as_millis() as u64, wall_ms: now_ms().saturating_add_signed(self.skew_ms) }
    }

    fn instant(&self, mono_ms: u64) -> Instant {
        self.start + Duration::from_millis(mono_ms)
    }
}

enum Event {
    Stop,
    Messages,
    Request(InboundRequest),
    Connected,
    Peer(PeerEvent),
    Answer(Answer),
    Member(MemberRequest),
    Txs,
    Stored(Result<writer::Stored, StoreError>),
    Timers,
}

pub(crate) struct Producer {
    driver: Driver,
    store: Store,
    writer: writer::Writer,
    /// `Tip` and `Holds` of blocks still being written, sent once they are
    /// (to one peer, or to all): a peer asks for what they report at once.
    after_stored: Vec<(Height, Option<crate::identity::NodeId>, Message)>,
    peers: Peers,
    tip: watch::Sender<Tip>,
    metrics: Arc<ChainMetrics>,
    tracker: TaskTracker,
    links: Links,
    clock: Clock,
    data_dir: std::path::PathBuf,
    /// Inbound requests the driver has yet to answer, with the wire version of
    /// the connection each came on.
    replies: HashMap<RequestId, (oneshot::Sender<Result<Bytes, Refusal>>, u16)>,
    next_request: u64,
    /// The `GetTxs` under way per compact proposal, by the number of its fetch:
    /// an answer of a fetch since cancelled or replaced is dropped.
    fetches: HashMap<(Height, Round), (u64, AbortHandle)>,
    next_fetch: u64,
    answers_tx: mpsc::Sender<Answer>,
    answers_rx: mpsc::Receiver<Answer>,
    /// Bytes of peers' answers to our requests read and not yet handed to
    /// the driver (`held_bytes{what="sync_answers"}`): at most the requests
    /// in flight, two `GetBlocks` and [`super::compact::MAX_WAITING`] fetches.
    answer_bytes: Arc<AtomicUsize>,
}

impl Producer {
    /// A producer around `core`, whose current height the driver starts.
    pub(crate) fn new(core: Core, cfg: DriverConfig, parts: Parts) -> Producer {
        let clock = Clock { start: Instant::now(), skew_ms: parts.clock_skew_ms };
        let (answers_tx, answers_rx) = mpsc::channel(2 * super::compact::MAX_WAITING);
        Producer {
            driver: Driver::new(core, cfg, clock.now()),
            writer: writer::Writer::start(parts.store.clone(), &parts.tracker),
            after_stored: Vec::new(),
            store: parts.store,
            peers: parts.peers,
            tip: parts.tip,
            metrics: parts.metrics,
            tracker: parts.tracker,
            links: parts.links,
            data_dir: parts.data_dir,
            clock,
            replies: HashMap::new(),
            next_request: 0,
            fetches: HashMap::new(),
            next_fetch: 0,
            answers_tx,
            answers_rx,
            answer_bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs until `shutdown`; returns an error for a failed store write, after
    /// which the node must stop rather than go on with a chain it did not
    /// persist, and [`ProducerError::UpgradeNeeded`] when it stopped before a
    /// height its binary cannot run.
    pub(crate) async fn run(mut self, mut inbound: Inbound, shutdown: CancellationToken) -> Result<(), ProducerError> {
        let mut connected = self.peers.watch_connected();
        let mut events = self.peers.subscribe();
        self.remember_committed().await?;
        self.follow_peers(self.clock.now());
        self.carry_out().await?;
        let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
        let mut txs: Vec<TxRequest> = Vec::with_capacity(BATCH);
        loop {
            // Shutdown first: the transport empties the peer set as it stops,
            // which must not read as a lost quorum.
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Due timers go before anything else, so no flood of messages can
            // starve them; the select below is unbiased for the same reason.
            let now = self.clock.now();
            // What the pruner left, for the `Holds` this node sends.
            self.driver.handle_earliest(self.metrics.earliest_height.load(Ordering::Relaxed), now);
            if self.driver.poll_timeout().is_some_and(|at| at <= now.mono_ms) {
                self.driver.handle_timeout(now);
                self.carry_out().await?;
            }
            let wake = self.clock.instant(self.driver.poll_timeout().unwrap_or(now.mono_ms + 1_000));
            let event = tokio::select! {
                _ = shutdown.cancelled() => Event::Stop,
                m = inbound.messages.recv_batch(BATCH, &mut batch) => m.map_or(Event::Stop, |_| Event::Messages),
                r = inbound.requests.recv() => r.map_or(Event::Stop, Event::Request),
                c = connected.changed() => c.map_or(Event::Stop, |()| Event::Connected),
                e = events.recv() => match e {
                    Ok(ev) => Event::Peer(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => Event::Connected,
                    Err(broadcast::error::RecvError::Closed) => Event::Stop,
                },
                Some(a) = self.answers_rx.recv() => Event::Answer(a),
                Some(req) = self.links.member_requests.recv() => Event::Member(req),
                // None only once every sender is gone: the branch is off then.
                Some(()) = async { (self.links.txs.recv_many(&mut txs, BATCH).await > 0).then_some(()) } => Event::Txs,
                Some(s) = self.writer.stored.recv() => Event::Stored(s),
                _ = sleep_until(wake) => Event::Timers,
            };
            // The select is unbiased: a peer set emptied by this node's own stop
            // (or by peers stopping with it) may win over the shutdown branch.
            if shutdown.is_cancelled() {
                return Ok(());
            }
            self.metrics.loops.fetch_add(1, Ordering::Relaxed);
            if !self.handle(event, &mut batch, &mut txs).await? {
                return Ok(());
            }
            self.publish_state();
        }
    }

    /// Tells the driver's mempool the transactions of the blocks committed
    /// before this start, within its window of committed ids, read from the
    /// store off the executor (at most [`RECENT_READ_BYTES`] of them), before
    /// any submission or gossip is taken.
    async fn remember_committed(&mut self) -> Result<(), ProducerError> {
        let (store, below) = (self.store.clone(), self.driver.height());
        let (heights, max_ids) = self.driver.recent_ids_wanted();
        let read = move || store.recent_tx_ids(below, heights, max_ids, RECENT_READ_BYTES);
        let recent = tokio::task::spawn_blocking(read).await??;
        self.driver.handle_committed_before(&recent);
        Ok(())
    }

    /// Hands one event to the driver and carries out what it decides; false
    /// when the producer should stop.
    async fn handle(
        &mut self,
        event: Event,
        batch: &mut Vec<Delivery>,
        txs: &mut Vec<TxRequest>,
    ) -> Result<bool, ProducerError> {
        let now = self.clock.now();
        match event {
            Event::Stop => return Ok(false),
            Event::Messages => {
                for d in batch.drain(..) {
                    if self.driver.skip_undecoded(&d.body) {
                        continue;
                    }
                    match Message::decode(&d.body) {
                        Ok(msg) => self.driver.handle_message(d.from, msg, self.clock.now()),
                        Err(e) => self.peers.reject(d.from, &e),
                    }
                    self.carry_out().await?;
                }
            }
            Event::Request(req) => match Message::decode(&req.body) {
                Ok(msg) => {
                    let id = RequestId(self.next_request);
                    self.next_request += 1;
                    self.replies.insert(id, (req.reply, req.wire));
                    self.driver.handle_request(req.from, id, msg, now);
                }
                Err(e) => self.peers.reject(req.from, &e),
            },
            Event::Connected => self.follow_peers(now),
            Event::Peer(PeerEvent::Up { id, .. }) => {
                // A replaced connection may be of another wire version.
                self.driver.handle_wire_versions(self.peers.wire_versions(), now);
                let tip = self.peers.peers().into_iter().find(|p| p.id == id).map(|p| p.tip.height);
                self.driver.handle_peer_up(id, tip, now);
            }
            Event::Peer(PeerEvent::Down { id }) => self.driver.handle_peer_down(id, now),
            Event::Answer(Answer::Blocks { peer, result, bytes }) => {
                self.driver.handle_blocks(peer, result, now);
                self.answer_bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
            Event::Answer(Answer::Txs { fetch, peer, height, round, result, bytes }) => {
                if self.fetches.get(&(height, round)).is_some_and(|(f, _)| *f == fetch) {
                    self.fetches.remove(&(height, round));
                    self.driver.handle_txs(peer, height, round, result, now);
                }
                self.answer_bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
            Event::Answer(Answer::Served { peer, reserved, used }) => {
                self.driver.handle_served(peer, reserved, used, now)
            }
            Event::Member(req) => {
                let result = self.driver.handle_change(req.request, now);
                self.carry_out().await?;
                let _ = req.reply.send(result);
            }
            Event::Txs => {
                for req in txs.drain(..) {
                    let result = self.driver.handle_submit(req.tx, now);
                    self.carry_out().await?;
                    let _ = req.reply.send(result);
                }
            }
            Event::Stored(stored) => self.stored(stored?),
            Event::Timers => self.driver.handle_timeout(now),
        }
        self.carry_out().await?;
        Ok(true)
    }

    /// Carries out the driver's effects in order, each to completion.
    async fn carry_out(&mut self) -> Result<(), ProducerError> {
        while let Some(effect) = self.driver.poll_effect() {
            match effect {
                Effect::Persist { record, message, lock } => self.writer.record_signed(record, message, lock).await?,
                Effect::Commit { committed, membership, synced } => {
                    self.writer.commit(committed, membership, synced).await?
                }
                Effect::Broadcast(msg) => self.deliver(None, msg),
                Effect::Send { to, msg } => self.deliver(Some(to), msg),
                Effect::RequestBlocks { peer, from, count } => self.request_blocks(peer, from, count),
                Effect::RequestTxs { peer, height, round, ids } => self.request_txs(peer, height, round, ids),
                Effect::CancelTxs { height, round } => {
                    if let Some((_, task)) = self.fetches.remove(&(height, round)) {
                        task.abort();
                    }
                }
                Effect::ServeBlocks { id, peer, from, count, max_bytes, after_ms } => {
                    self.serve_blocks(id, peer, (from, count, max_bytes), after_ms)
                }
                Effect::ServeCheckpoint { id, peer, height, max_bytes, after_ms } => {
                    self.serve_checkpoint(id, peer, (height, max_bytes), after_ms)
                }
                Effect::Reply { id, msg } => match (self.replies.remove(&id), msg.encode()) {
                    // Never an answer the requester's wire version cannot decode.
                    (Some((reply, wire)), Ok(_)) if msg.wire() > wire => {
                        let _ = reply.send(Err(Refusal::Unsupported));
                    }
                    (Some((reply, _)), Ok(frame)) => {
                        let _ = reply.send(Ok(frame));
                    }
                    (_, Err(e)) => tracing::error!("cannot answer a request: {e}"),
                    (None, _) => {}
                },
                Effect::Refuse { id, refusal } => {
                    if let Some((reply, _)) = self.replies.remove(&id) {
                        let _ = reply.send(Err(refusal));
                    }
                }
                Effect::Halt { plan, max_version } => {
                    // The blocks before the halt are on disk first.
                    for stored in self.writer.drain().await? {
                        self.stored(stored);
                    }
                    return Err(self.halt(UpgradeNeeded { plan, max_version }).await);
                }
                Effect::Doppelganger(evidence) => {
                    let s = evidence.seen;
                    tracing::error!(
                        height = s.height,
                        round = s.round,
                        kind = s.kind.as_str(),
                        peer = %s.peer.short(),
                        "another process signs with this node's key: {evidence}. Stopping without signing (exit code \
                         4): find the other process (a cloned VM, a second instance, a copied key) and stop it \
                         before starting this one again"
                    );
                    return Err(ProducerError::Doppelganger(evidence));
                }
                Effect::SetMembers(members) => self.peers.set_members(members),
                Effect::PublishMembers(view) => {
                    self.links.view.send_replace(view);
                }
            }
        }
        Ok(())
    }

    /// A decided block the writer put on disk, reported: the tip for
    /// handshakes and status, its timestamp, (for a block decided here) the
    /// latency from its proposal, and the `Tip` and `Holds` held back for it.
    fn stored(&mut self, s: writer::Stored) {
        self.writer.handle_stored();
        let height = s.height;
        self.tip.send_replace(Tip { height, hash: s.hash.0 });
        self.metrics.last_block_timestamp_ms.store(s.timestamp_ms, Ordering::Relaxed);
        if !s.synced {
            let latency_ms = self.clock.now().wall_ms.saturating_sub(s.timestamp_ms);
            self.metrics.commit_latency.observe(latency_ms as f64 / 1000.0);
        }
        tracing::debug!(height, hash = %s.hash.short(), round = s.round, txs = s.txs, "committed");
        let (due, later) = std::mem::take(&mut self.after_stored).into_iter().partition(|(h, ..)| *h <= height);
        self.after_stored = later;
        for (_, to, msg) in due {
            self.deliver_now(to, &msg);
        }
    }

    /// The transport's connected set and its wire versions, for the gate and
    /// the proposer policy on upgrade plans.
    fn follow_peers(&mut self, now: super::driver::Now) {
        self.driver.handle_wire_versions(self.peers.wire_versions(), now);
        self.driver.handle_connected(self.peers.connected(), now);
    }

    /// Publishes the driver's figures for status and metrics; once a loop turn.
    fn publish_state(&self) {
        let s = self.driver.stats(self.clock.now());
        let m = &self.metrics;
        m.round.store(s.round, Ordering::Relaxed);
        m.best_peer_tip.store(s.best_peer_tip, Ordering::Relaxed);
        for (counter, n) in m.sync_failures.iter().zip(s.sync_failures) {
            counter.store(n, Ordering::Relaxed);
        }
        m.misbehaviour.store(s.misbehaviour, Ordering::Relaxed);
        m.blocks_synced.store(s.blocks_synced, Ordering::Relaxed);
        m.clock_offset_ms.store(s.clock_offset_ms.unwrap_or(0), Ordering::Relaxed);
        m.clock_peers.store(s.clock_peers as u64, Ordering::Relaxed);
        m.set_mempool(s.mempool);
        for what in Held::ALL {
            m.set_held(what, self.driver.held(what).bytes);
        }
        m.set_held(Held::SyncAnswers, self.answer_bytes.load(Ordering::Relaxed));
        m.requests_refused_rate.store(s.refused_rate, Ordering::Relaxed);
        m.requests_refused_bytes.store(s.refused_bytes, Ordering::Relaxed);
        m.hold.store(Hold::code(s.hold), Ordering::Relaxed);
    }
}
