//! The block producer's shell: the one task that owns the [`Driver`] and carries
//! out what it decides.
//!
//! The driver holds every rule (consensus, timers, the quorum gate, the mempool,
//! compact proposals, sync, rate limits); this task feeds it what arrives (peers'
//! messages and requests, the transport's connected set and peer events,
//! answers to our requests, the admin API's submissions, the clock) and carries
//! out its [`Effect`]s strictly in order. It awaits only the disk: a `Persist`
//! or `Commit` is on disk before the next effect runs, which is how a signature
//! is durable before the vote leaves the node and a block is durable before the
//! node reports it. Requests to peers run in tasks of their own and report back
//! over a channel; a slow or silent peer never holds the loop.
//!
//! The mempool belongs to the driver: the admin API and [`crate::node::Node`]
//! reach it through this task's channels ([`super::links`]), and status and metrics
//! read the figures it publishes once a loop turn ([`ChainMetrics`]).

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

use super::block::{Hash, Height, Round};
use super::consensus::Core;
use super::driver::{BlocksAnswer, Driver, DriverConfig, Effect, Held, Now, RequestFailure, RequestId};
use super::links::{ChainMetrics, Links, MemberRequest, TxRequest};
use super::members::{MembershipState, Plan};
use super::message::Message;
use super::store::{Store, StoreError};
use super::upgrade::{UpgradeInfo, UpgradeNeeded, UPGRADE_INFO_FILE};
use super::vote::Committed;
use crate::identity::NodeId;
use crate::net::handshake::Tip;
use crate::net::{Delivery, Inbound, InboundRequest, PeerEvent, Peers, Refusal};

/// Messages taken from the inbox per turn of the loop, at most: timers and sync
/// are served between batches, however many messages wait. Submissions from the
/// admin API are taken in batches of the same size.
const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProducerError {
    #[error("store write failed, stopping: {0}")]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Not a failure: the node stopped before a height its binary cannot run.
    #[error(transparent)]
    UpgradeNeeded(#[from] UpgradeNeeded),
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

/// A peer's answer to one of our requests (with the bytes of its body), or
/// what our answer to a peer's `GetBlocks` took.
enum Answer {
    Blocks {
        peer: NodeId,
        result: Result<BlocksAnswer, RequestFailure>,
        bytes: usize,
    },
    Txs {
        fetch: u64,
        peer: NodeId,
        height: Height,
        round: Round,
        result: Result<Vec<Vec<u8>>, RequestFailure>,
        bytes: usize,
    },
    Served {
        peer: NodeId,
        reserved: usize,
        used: usize,
    },
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
    Timers,
}

pub(crate) struct Producer {
    driver: Driver,
    store: Store,
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
                _ = sleep_until(wake) => Event::Timers,
            };
            self.metrics.loops.fetch_add(1, Ordering::Relaxed);
            if !self.handle(event, &mut batch, &mut txs).await? {
                return Ok(());
            }
            self.publish_state();
        }
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
            Event::Timers => self.driver.handle_timeout(now),
        }
        self.carry_out().await?;
        Ok(true)
    }

    /// Carries out the driver's effects in order, each to completion.
    async fn carry_out(&mut self) -> Result<(), ProducerError> {
        while let Some(effect) = self.driver.poll_effect() {
            match effect {
                Effect::Persist { record, message, lock } => {
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || store.record_signed(record, &message, lock.as_deref()))
                        .await??;
                }
                Effect::Commit { committed, membership, synced } => self.commit(committed, membership, synced).await?,
                Effect::Broadcast(msg) => self.broadcast(&msg),
                Effect::Send { to, msg } => self.send(to, &msg),
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
                Effect::Halt { plan, max_version } => return Err(self.halt(UpgradeNeeded { plan, max_version }).await),
                Effect::SetMembers(members) => self.peers.set_members(members),
                Effect::PublishMembers(view) => {
                    self.links.view.send_replace(view);
                }
            }
        }
        Ok(())
    }

    /// Stores a decided block durably, then reports it: the tip for handshakes
    /// and status, its timestamp, and (for a block decided here) the latency
    /// from its proposal.
    async fn commit(
        &mut self,
        committed: Committed,
        membership: Box<MembershipState>,
        synced: bool,
    ) -> Result<(), ProducerError> {
        let store = self.store.clone();
        let c =
            tokio::task::spawn_blocking(move || store.commit(&committed, &membership).map(|()| committed)).await??;
        let (height, hash) = (c.block.height(), c.block.hash());
        self.tip.send_replace(Tip { height, hash: hash.0 });
        self.metrics.last_block_timestamp_ms.store(c.block.header.timestamp_ms, Ordering::Relaxed);
        if !synced {
            let latency_ms = self.clock.now().wall_ms.saturating_sub(c.block.header.timestamp_ms);
            self.metrics.commit_latency.observe(latency_ms as f64 / 1000.0);
        }
        tracing::debug!(height, hash = %hash.short(), round = c.cert.round, txs = c.block.txs.len(), "committed");
        Ok(())
    }

    /// The transport's connected set and its wire versions, for the gate and
    /// the proposer policy on upgrade plans.
    fn follow_peers(&mut self, now: super::driver::Now) {
        self.driver.handle_wire_versions(self.peers.wire_versions(), now);
        self.driver.handle_connected(self.peers.connected(), now);
    }

    /// Stops before a height this binary cannot run: `upgrade-info.json` in
    /// the data dir (written whole, then renamed into place, so Cosmovisor
    /// never reads half of it) and one error line saying what to do. The
    /// store holds every block committed so far (each `Commit` is durable
    /// before the next effect); the node closes its connections as it stops.
    async fn halt(&mut self, needed: UpgradeNeeded) -> ProducerError {
        let path = self.data_dir.join(UPGRADE_INFO_FILE);
        let info = UpgradeInfo::of(&needed);
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&target, &info)).await;
        let file = match written {
            Ok(Ok(())) => format!("wrote {} for Cosmovisor", path.display()),
            Ok(Err(e)) => format!("could not write {}: {e}", path.display()),
            Err(e) => format!("could not write {}: {e}", path.display()),
        };
        let Plan { version, height } = needed.plan;
        tracing::error!(
            version,
            height,
            max_version = needed.max_version,
            "stopping before height {height}: the chain switches to protocol {version} there and this binary runs \
             up to protocol {}; nothing is signed at height {height}. Install a release that runs protocol \
             {version} and start the node again ({file}; exit code 3)",
            needed.max_version
        );
        ProducerError::UpgradeNeeded(needed)
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

    /// Answers request `id` of `peer` with blocks read from the store, off the
    /// loop, once `after_ms` (the peer's serve budget) has passed: those the
    /// requester's wire version decodes ([`Message::blocks_for_wire`]), or a
    /// refusal when the first block asked for is not one of them (a node of
    /// 0.1.0 asking for a block that carries an upgrade plan's approval: it
    /// counts a failed request, and cannot follow the chain past that block).
    /// The bytes the answer took go back to the driver.
    fn serve_blocks(&mut self, id: RequestId, peer: NodeId, asked: (Height, usize, usize), after_ms: u64) {
        let (from, count, max_bytes) = asked;
        let Some((reply, wire)) = self.replies.remove(&id) else { return };
        let (store, answers) = (self.store.clone(), self.answers_tx.clone());
        self.tracker.spawn(async move {
            if after_ms > 0 {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
            }
            let read = move || {
                store.range(from, count, max_bytes).map(|blocks| (blocks.len(), Message::blocks_for_wire(blocks, wire)))
            };
            let mut used = 0;
            match tokio::task::spawn_blocking(read).await {
                Ok(Ok((read, blocks))) if read > 0 && blocks.is_empty() => {
                    tracing::debug!(from, wire, "blocks asked for by a peer at wire {wire} need a later wire: refused");
                    let _ = reply.send(Err(Refusal::Unsupported));
                }
                Ok(Ok((_, blocks))) => match Message::Blocks(blocks).encode() {
                    Ok(frame) => {
                        used = frame.len();
                        let _ = reply.send(Ok(frame));
                    }
                    Err(e) => tracing::error!("cannot answer a request: {e}"),
                },
                Ok(Err(e)) => tracing::error!("cannot read blocks for a peer: {e}"),
                Err(e) => tracing::error!("block read task failed: {e}"),
            }
            let _ = answers.send(Answer::Served { peer, reserved: max_bytes, used }).await;
        });
    }

    fn request_blocks(&mut self, peer: NodeId, from: Height, count: u32) {
        let (peers, answers, held) = (self.peers.clone(), self.answers_tx.clone(), self.answer_bytes.clone());
        self.tracker.spawn(async move {
            let asked = ask(&peers, peer, Message::GetBlocks { from, count }).await;
            let bytes = asked.as_ref().map_or(0, |(_, bytes)| *bytes);
            let guard = HeldGuard::count(held, bytes);
            let result = asked.and_then(|(m, bytes)| match m {
                Message::Blocks(blocks) => Ok(BlocksAnswer { blocks, bytes }),
                other => Err(RequestFailure::Unexpected(other.kind_name())),
            });
            if answers.send(Answer::Blocks { peer, result, bytes }).await.is_ok() {
                guard.handed_on();
            }
        });
    }

    /// Starts the fetch of a compact proposal's transactions; a fetch already
    /// under way for the same proposal ends.
    fn request_txs(&mut self, peer: NodeId, height: Height, round: Round, ids: Vec<Hash>) {
        let fetch = self.next_fetch;
        self.next_fetch += 1;
        let (peers, answers, held) = (self.peers.clone(), self.answers_tx.clone(), self.answer_bytes.clone());
        let task = self.tracker.spawn(async move {
            let asked = ask(&peers, peer, Message::GetTxs { height, round, ids }).await;
            let bytes = asked.as_ref().map_or(0, |(_, bytes)| *bytes);
            // Counted out if the fetch is cancelled while its answer waits.
            let guard = HeldGuard::count(held, bytes);
            let result = asked.and_then(|(m, _)| match m {
                Message::Txs(txs) => Ok(txs),
                other => Err(RequestFailure::Unexpected(other.kind_name())),
            });
            if answers.send(Answer::Txs { fetch, peer, height, round, result, bytes }).await.is_ok() {
                guard.handed_on();
            }
        });
        if let Some((_, old)) = self.fetches.insert((height, round), (fetch, task.abort_handle())) {
            old.abort();
        }
    }
}

/// A fetch is as long-lived as its assembly, which goes with the driver: when
/// the producer stops, its fetches end.
impl Drop for Producer {
    fn drop(&mut self) {
        for (_, task) in self.fetches.values() {
            task.abort();
        }
    }
}

/// An answer's bytes in `answer_bytes` while its task holds it: counted out
/// if the task ends (a fetch is aborted, the loop is gone) before the answer
/// reaches the loop, which counts it out itself once handed on.
struct HeldGuard {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl HeldGuard {
    fn count(held: Arc<AtomicUsize>, bytes: usize) -> HeldGuard {
        held.fetch_add(bytes, Ordering::Relaxed);
        HeldGuard { held, bytes }
    }

    /// The loop has the answer now, and counts its bytes out as it handles it.
    fn handed_on(mut self) {
        self.bytes = 0;
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Writes `info` as JSON to a file beside `path`, flushes it, and renames it
/// into place.
fn write_atomically(path: &std::path::Path, info: &UpgradeInfo) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Sends `request` to `peer` on a stream of its own; the answer and its body's
/// size.
async fn ask(peers: &Peers, peer: NodeId, request: Message) -> Result<(Message, usize), RequestFailure> {
    let body = peers.request(peer, request.encode()?).await?;
    Ok((Message::decode(&body)?, body.len()))
}
