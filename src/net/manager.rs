//! The connection manager: the one task that owns the peer table.
//!
//! It decides when to dial (the direction rule, the passive wait, backoff), takes in
//! every connection whose handshake completed (dialled or accepted), resolves
//! duplicates, and publishes the result: a snapshot table that [`Peers`] reads to
//! send, peer-up/peer-down events, and the set of connected peers for the quorum
//! gate. Every connection gets a generation number (`conn_id`); the end of an old
//! connection can never remove its replacement.
//!
//! Dial and accept tasks run the QUIC and TLS handshake and our own handshake under
//! one deadline and report back over the manager's channel; they never touch the
//! table.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backoff::{Backoff, RESET_AFTER};
use super::close;
use super::codec::{self, Frame};
use super::direction::{self, ConnFacts, Direction, Role};
use super::endpoint::{self, EndpointError};
use super::handshake::{self, Expect, HandshakeError, Intro, RejectReason, Tip, MAGIC, PROTOCOL_VERSION};
use super::message::Message;
use super::peer;
use super::tls::{self, RefusalLog};
use crate::config::{Member, Network, Transport};
use crate::identity::{Identity, NodeId};

/// Retry delay after a peer closed our connection as a duplicate while we hold no
/// other: the peer believes it has one with us, which will soon prove stale or
/// reach us. Not a failure, so no backoff step.
const DUPLICATE_RETRY: Duration = Duration::from_secs(1);
/// Frames queued per peer before `send` waits.
const QUEUE_FRAMES: usize = 1024;

/// Everything the transport needs to run.
pub struct NetConfig {
    pub identity: Arc<Identity>,
    pub network: Arc<Network>,
    /// This node's address in the network file: what the direction rule uses.
    pub advertised: SocketAddr,
    /// The UDP address to bind.
    pub listen: SocketAddr,
    pub transport: Transport,
    pub request_timeout: Duration,
    /// The chain tip announced in handshakes.
    pub tip: watch::Receiver<Tip>,
    pub hooks: TestHooks,
}

/// Deliberate misbehaviour for tests of the peers' reaction. Never set in production.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// Announce this protocol version instead of ours.
    pub version: Option<u16>,
    /// Claim this `NodeId` in our `Intro` instead of our own.
    pub claim_id: Option<NodeId>,
    /// Wraps the UDP socket (fault injection).
    pub wrap_socket: Option<endpoint::SocketWrapper>,
}

impl std::fmt::Debug for TestHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHooks")
            .field("version", &self.version)
            .field("claim_id", &self.claim_id)
            .field("wrap_socket", &self.wrap_socket.is_some())
            .finish()
    }
}

/// What the rest of the node receives from peers.
pub struct Inbound {
    pub messages: mpsc::Receiver<(NodeId, Message)>,
    pub requests: mpsc::Receiver<InboundRequest>,
}

/// A request from a peer; answer it through `reply` (dropping it resets the stream).
pub struct InboundRequest {
    pub from: NodeId,
    pub message: Message,
    pub reply: oneshot::Sender<Result<Message, Refusal>>,
}

/// Why a request was not answered; the peer sees the stream reset with the
/// matching close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer asks more often than its limit allows.
    RateLimited,
    /// Not a request this node serves.
    Unsupported,
}

impl Refusal {
    pub fn code(self) -> u32 {
        match self {
            Refusal::RateLimited => close::RATE_LIMITED,
            Refusal::Unsupported => close::PROTOCOL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Up { id: NodeId, direction: Direction },
    Down { id: NodeId },
}

/// A connected peer, as `/status` shows it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub direction: Direction,
    pub rtt: Duration,
    pub connected_for: Duration,
    pub conn_id: u64,
    pub tip: Tip,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
    #[error("message of {len} bytes is over the {limit}-byte limit of its kind")]
    TooLarge { len: usize, limit: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Connection(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("response: {0}")]
    Frame(codec::FrameError),
}

/// Transport counters. `dials`, `handshakes_ok`, `handshakes_failed` and
/// `duplicates_closed` are part of the `/status` contract.
#[derive(Debug, Default)]
pub struct Counters {
    pub dials: AtomicU64,
    pub dial_failures: AtomicU64,
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub duplicates_closed: AtomicU64,
    pub bad_frames: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Rejections we sent, by [`RejectReason`] (in `RejectReason::ALL` order).
    pub rejects_sent: [AtomicU64; 5],
    /// Rejections peers sent us, by reason.
    pub rejects_received: [AtomicU64; 5],
    /// Our dials that failed at TLS (the peer refused us or is not who we expected).
    pub tls_failed: AtomicU64,
    /// Frame bytes queued for peers and read from them (length prefixes included).
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Turns of the manager's loop; it turns at least once a second.
    pub manager_loops: AtomicU64,
}

/// Counts a failed handshake under its reason.
fn count_handshake_error(c: &Counters, e: &HandshakeError) {
    match e {
        HandshakeError::RejectedPeer(r) => {
            c.rejects_sent[reason_index(*r)].fetch_add(1, Ordering::Relaxed);
        }
        HandshakeError::RejectedByPeer(r) => {
            c.rejects_received[reason_index(*r)].fetch_add(1, Ordering::Relaxed);
        }
        HandshakeError::Timeout(_) => {
            c.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        HandshakeError::Connection(e) if super::is_tls_refusal(e) => {
            c.tls_failed.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

fn reason_index(r: RejectReason) -> usize {
    RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

#[derive(Clone)]
struct PeerHandle {
    conn: quinn::Connection,
    conn_id: u64,
    addr: SocketAddr,
    direction: Direction,
    established: Instant,
    tip: Tip,
    frames: mpsc::Sender<Bytes>,
}

pub(crate) struct Shared {
    /// Written only by the manager; read by senders. A std lock, never held across
    /// an `.await`: readers clone what they need and let go.
    table: RwLock<HashMap<NodeId, PeerHandle>>,
    pub(crate) counters: Counters,
    events: broadcast::Sender<PeerEvent>,
    active: watch::Sender<BTreeSet<NodeId>>,
    pub(crate) inbound: mpsc::Sender<(NodeId, Message)>,
    pub(crate) requests: mpsc::Sender<InboundRequest>,
    pub(crate) request_timeout: Duration,
    refusals: Arc<RefusalLog>,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

impl Shared {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, PeerHandle>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, PeerHandle>> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle the node uses to talk to its peers. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    shared: Arc<Shared>,
}

impl Peers {
    /// Queues `msg` for `to`; waits while that peer's queue is full.
    pub async fn send(&self, to: NodeId, msg: &Message) -> Result<(), SendError> {
        let frame = encode_checked(msg)?;
        let queue = self.shared.table().get(&to).map(|h| h.frames.clone());
        let queue = queue.ok_or(SendError::NotConnected(to))?;
        let len = frame.len() as u64;
        queue.send(frame).await.map_err(|_| SendError::NotConnected(to))?;
        self.shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `msg` for every connected peer, encoding it once. Returns the number
    /// of peers it was queued for.
    pub async fn broadcast(&self, msg: &Message) -> Result<usize, SendError> {
        let frame = encode_checked(msg)?;
        let queues: Vec<_> = self.shared.table().values().map(|h| h.frames.clone()).collect();
        let mut sent = 0;
        for q in queues {
            if q.send(frame.clone()).await.is_ok() {
                sent += 1;
            }
        }
        self.shared.counters.frames_sent.fetch_add(sent as u64, Ordering::Relaxed);
        self.shared.counters.bytes_sent.fetch_add(sent as u64 * frame.len() as u64, Ordering::Relaxed);
        Ok(sent)
    }

    /// Sends `msg` on a stream of its own and waits for the peer's response.
    pub async fn request(&self, to: NodeId, msg: &Message) -> Result<Message, RequestError> {
        let frame = encode_checked(msg)?;
        let conn = self.shared.table().get(&to).map(|h| h.conn.clone());
        let conn = conn.ok_or(SendError::NotConnected(to))?;
        peer::request(&conn, frame, self.shared.request_timeout).await
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .shared
            .table()
            .iter()
            .map(|(id, h)| PeerInfo {
                id: *id,
                addr: h.addr,
                direction: h.direction,
                rtt: h.conn.rtt(),
                connected_for: h.established.elapsed(),
                conn_id: h.conn_id,
                tip: h.tip,
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// The connected peers (handshake complete), this node not included.
    pub fn connected(&self) -> BTreeSet<NodeId> {
        self.shared.active.borrow().clone()
    }

    /// How many peers are connected, without copying the set.
    pub fn connected_count(&self) -> usize {
        self.shared.active.borrow().len()
    }

    pub fn watch_connected(&self) -> watch::Receiver<BTreeSet<NodeId>> {
        self.shared.active.subscribe()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.events.subscribe()
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Certificates refused at TLS by this node's server side.
    pub fn tls_refused(&self) -> u64 {
        self.shared.refusals.total.load(Ordering::Relaxed)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Closes every connection with the shutdown code and waits (bounded) for the
    /// peers to acknowledge.
    pub async fn close_all(&self, wait: Duration) {
        self.shared.endpoint.close(close::SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(wait, self.shared.endpoint.wait_idle()).await;
    }
}

fn encode_checked(msg: &Message) -> Result<Bytes, SendError> {
    let frame = codec::encode(msg);
    let limit = Message::limit(msg.kind()).unwrap_or(0);
    if frame.len() - 4 > limit {
        return Err(SendError::TooLarge { len: frame.len() - 4, limit });
    }
    Ok(frame)
}

pub(crate) enum Cmd {
    Dialed { peer: NodeId, result: Result<(quinn::Connection, Intro), DialError> },
    Accepted { conn: quinn::Connection, intro: Intro },
    InboundFailed { peer: Option<NodeId>, error: HandshakeError },
    Closed { peer: NodeId, conn_id: u64, error: quinn::ConnectionError },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("no answer within {0:?}")]
    Unreachable(Duration),
    #[error("{}", describe_connection_error(.0))]
    Connection(quinn::ConnectionError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
}

fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    match e {
        e if super::is_tls_refusal(e) => format!("refused at TLS: {e}"),
        other => super::describe_close(other),
    }
}

/// What dial and accept tasks need to run a handshake; shared, immutable.
struct HandshakeCtx {
    me: NodeId,
    network: Arc<Network>,
    advertised: SocketAddr,
    incarnation: u64,
    tip: watch::Receiver<Tip>,
    hooks: TestHooks,
    deadline: Duration,
}

impl HandshakeCtx {
    /// Who may be on the other end: a member of the set other than ourselves.
    fn is_peer(&self, id: &NodeId) -> bool {
        *id != self.me && self.network.is_member(id)
    }

    /// What a peer's `Intro` is checked against; `is_peer` is [`Self::is_peer`].
    fn expect<'a>(&self, tls_key: NodeId, is_peer: &'a (dyn Fn(&NodeId) -> bool + Sync)) -> Expect<'a> {
        Expect { network_id: self.network.id, version: PROTOCOL_VERSION, tls_key, is_member: is_peer }
    }
    fn intro(&self) -> Intro {
        Intro {
            magic: MAGIC,
            version: self.hooks.version.unwrap_or(PROTOCOL_VERSION),
            network_id: self.network.id,
            node_id: self.hooks.claim_id.unwrap_or(self.me),
            listen: self.advertised,
            tip: *self.tip.borrow(),
            software: concat!("masternode/", env!("CARGO_PKG_VERSION")).to_string(),
            incarnation: self.incarnation,
        }
    }
}

/// Binds the endpoint and starts the manager and the accept loop. Everything stops
/// when `shutdown` is cancelled; `tracker` tracks every task spawned.
pub fn start(
    cfg: NetConfig,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(Peers, Inbound), EndpointError> {
    Ok(bind(cfg)?.run(shutdown, tracker))
}

/// A bound endpoint whose manager has not started: nothing is dialled or accepted
/// yet. Lets a caller bind many nodes before any of them dials (benchmarks of mesh
/// formation), and surfaces bind errors before anything runs.
pub struct Bound {
    manager: Manager,
    hs: Arc<HandshakeCtx>,
    cmd_tx: mpsc::Sender<Cmd>,
    inbound: Inbound,
    passive_wait: Duration,
    pending_limits: (usize, usize),
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.manager.shared.local_addr
    }

    /// Starts the manager and the accept loop; everything stops when `shutdown`
    /// is cancelled and `tracker` tracks every task.
    pub fn run(mut self, shutdown: CancellationToken, tracker: &TaskTracker) -> (Peers, Inbound) {
        let now = Instant::now();
        for slot in self.manager.slots.values_mut() {
            slot.next_dial = Some(match slot.role {
                Role::Dial => now,
                Role::Wait => now + self.passive_wait,
            });
        }
        self.manager.tracker = tracker.clone();
        let shared = self.manager.shared.clone();
        let endpoint = self.manager.endpoint.clone();
        tracker.spawn(self.manager.run(shutdown.clone()));
        tracker.spawn(accept_loop(endpoint, self.pending_limits, self.hs, self.cmd_tx, shutdown, tracker.clone()));
        tracing::info!(listen = %shared.local_addr, "transport listening");
        (Peers { shared }, self.inbound)
    }
}

/// Binds the endpoint and prepares the manager without starting it.
pub fn bind(cfg: NetConfig) -> Result<Bound, EndpointError> {
    let me = cfg.identity.id();
    let members: Arc<HashSet<NodeId>> = Arc::new(cfg.network.members.iter().map(|m| m.id).collect());
    let transport = endpoint::transport_config(&cfg.transport)?;
    let refusals = Arc::new(RefusalLog::default());
    let endpoint = endpoint::bind(
        cfg.listen,
        &cfg.identity,
        members,
        transport.clone(),
        refusals.clone(),
        cfg.hooks.wrap_socket.clone(),
    )?;
    let local_addr = endpoint.local_addr().map_err(|source| EndpointError::Bind { addr: cfg.listen, source })?;

    let mut slots = HashMap::new();
    let mut seed = random_u64();
    for m in &cfg.network.members {
        let Some(role) = direction::role((cfg.advertised, me), (m.addr, m.id)) else {
            continue;
        };
        let client = endpoint::client_config(&cfg.identity, m.id, transport.clone())?;
        seed = seed.wrapping_mul(0x9e3779b97f4a7c15).wrapping_add(1);
        slots.insert(m.id, Slot::new(m.clone(), role, client, seed));
    }

    let (messages_tx, messages) = mpsc::channel(4096);
    let (requests_tx, requests) = mpsc::channel(256);
    let (events, _) = broadcast::channel(256);
    let shared = Arc::new(Shared {
        table: RwLock::new(HashMap::new()),
        counters: Counters::default(),
        events,
        active: watch::Sender::new(BTreeSet::new()),
        inbound: messages_tx,
        requests: requests_tx,
        request_timeout: cfg.request_timeout,
        refusals,
        local_addr,
        endpoint: endpoint.clone(),
    });
    let hs = Arc::new(HandshakeCtx {
        me,
        network: cfg.network.clone(),
        advertised: cfg.advertised,
        incarnation: random_u64(),
        tip: cfg.tip,
        hooks: cfg.hooks,
        deadline: cfg.transport.handshake_timeout,
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let manager = Manager {
        slots,
        shared,
        endpoint,
        hs: hs.clone(),
        cmd_tx: cmd_tx.clone(),
        cmd_rx,
        tracker: TaskTracker::new(),
        next_conn_id: 1,
        passive_wait: cfg.transport.passive_wait,
    };
    Ok(Bound {
        manager,
        hs,
        cmd_tx,
        inbound: Inbound { messages, requests },
        passive_wait: cfg.transport.passive_wait,
        pending_limits: (cfg.transport.max_pending_handshakes, cfg.transport.max_pending_handshakes_per_ip),
    })
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // The system RNG failing is not recoverable and not worth a panic either: fall
    // back to the clock, which is unique enough for an incarnation number.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

struct ActiveConn {
    conn: quinn::Connection,
    conn_id: u64,
    facts: ConnFacts,
    established: Instant,
    /// We dialled it as the waiting side: the peer may be unable to reach us.
    via_fallback: bool,
}

struct Slot {
    member: Member,
    role: Role,
    client: quinn::ClientConfig,
    active: Option<ActiveConn>,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Backoff,
    /// Failed attempts (either direction) since the last success, for log summaries.
    failures: u32,
}

impl Slot {
    fn new(member: Member, role: Role, client: quinn::ClientConfig, seed: u64) -> Self {
        Slot {
            member,
            role,
            client,
            active: None,
            dialing: false,
            next_dial: None,
            backoff: Backoff::new(seed),
            failures: 0,
        }
    }

    /// Logs the first failure of a streak and then every power of two, so a peer
    /// that stays away for an hour costs a dozen lines, not thousands.
    fn note_failure(&mut self, what: &str, retry: Option<Duration>) {
        self.failures += 1;
        if self.failures.is_power_of_two() {
            let retry = retry.map(|d| format!("; retry in {} ms", d.as_millis())).unwrap_or_default();
            tracing::warn!(
                peer = %self.member.id.short(),
                addr = %self.member.addr,
                "{what}{retry} ({} failed attempt(s) in a row)",
                self.failures
            );
        } else {
            tracing::debug!(peer = %self.member.id.short(), "{what}");
        }
    }
}

struct Manager {
    slots: HashMap<NodeId, Slot>,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    hs: Arc<HandshakeCtx>,
    cmd_tx: mpsc::Sender<Cmd>,
    cmd_rx: mpsc::Receiver<Cmd>,
    tracker: TaskTracker,
    next_conn_id: u64,
    passive_wait: Duration,
}

impl Manager {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.handle_cmd(cmd),
                    None => break,
                },
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => self.handle_timers(),
                _ = housekeeping.tick() => {}
            }
            // Proof of progress for the service watchdog: this loop turned.
            self.shared.counters.manager_loops.fetch_add(1, Ordering::Relaxed);
        }
        for slot in self.slots.values() {
            if let Some(a) = &slot.active {
                a.conn.close(close::SHUTDOWN.into(), b"shutdown");
            }
        }
        self.endpoint.close(close::SHUTDOWN.into(), b"shutdown");
        self.shared.table_mut().clear();
        self.shared.active.send_replace(BTreeSet::new());
    }

    fn next_wake(&self) -> Option<Instant> {
        self.slots.values().filter(|s| s.active.is_none() && !s.dialing).filter_map(|s| s.next_dial).min()
    }

    fn handle_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<NodeId> = self
            .slots
            .values()
            .filter(|s| s.active.is_none() && !s.dialing && s.next_dial.is_some_and(|t| t <= now))
            .map(|s| s.member.id)
            .collect();
        for id in due {
            self.start_dial(id);
        }
    }

    fn start_dial(&mut self, id: NodeId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.dialing = true;
        slot.next_dial = None;
        if slot.role == Role::Wait {
            tracing::info!(peer = %id.short(), addr = %slot.member.addr, "no connection from peer after the passive wait; dialling it");
        }
        self.shared.counters.dials.fetch_add(1, Ordering::Relaxed);
        let endpoint = self.endpoint.clone();
        let client = slot.client.clone();
        let addr = slot.member.addr;
        let hs = self.hs.clone();
        let cmd_tx = self.cmd_tx.clone();
        self.tracker.spawn(async move {
            let result = dial(&endpoint, client, addr, id, &hs).await;
            let _ = cmd_tx.send(Cmd::Dialed { peer: id, result }).await;
        });
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Dialed { peer, result } => self.handle_dialed(peer, result),
            Cmd::Accepted { conn, intro } => self.handle_established(conn, Direction::Inbound, intro),
            Cmd::InboundFailed { peer, error } => self.handle_inbound_failed(peer, error),
            Cmd::Closed { peer, conn_id, error } => self.handle_closed(peer, conn_id, error),
        }
    }

    fn handle_dialed(&mut self, peer: NodeId, result: Result<(quinn::Connection, Intro), DialError>) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.dialing = false;
        }
        let error = match result {
            Ok((conn, intro)) => return self.handle_established(conn, Direction::Outbound, intro),
            Err(e) => e,
        };
        let c = &self.shared.counters;
        match &error {
            DialError::Connect(_) | DialError::Unreachable(_) => {
                c.dial_failures.fetch_add(1, Ordering::Relaxed);
            }
            DialError::Connection(e) if super::is_tls_refusal(e) => {
                c.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                c.tls_failed.fetch_add(1, Ordering::Relaxed);
            }
            DialError::Connection(_) => {
                c.dial_failures.fetch_add(1, Ordering::Relaxed);
            }
            DialError::Handshake(h) => {
                c.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                count_handshake_error(c, h);
            }
        }
        let Some(slot) = self.slots.get_mut(&peer) else {
            return;
        };
        if slot.active.is_some() {
            // The peer reached us meanwhile; this attempt no longer matters.
            tracing::debug!(peer = %peer.short(), "dial failed while connected inbound: {error}");
            return;
        }
        let duplicate = matches!(&error, DialError::Handshake(HandshakeError::RejectedByPeer(RejectReason::Duplicate)));
        let delay = if duplicate { DUPLICATE_RETRY } else { slot.backoff.next_delay() };
        slot.next_dial = Some(Instant::now() + delay);
        if duplicate {
            tracing::debug!(peer = %peer.short(), "peer holds another connection with us; retrying shortly");
        } else {
            let what = match &error {
                DialError::Handshake(HandshakeError::RejectedByPeer(r)) => {
                    format!("peer rejected our hello: {r}")
                }
                DialError::Handshake(HandshakeError::Connection(e)) if super::is_tls_refusal(e) => {
                    format!("refused at TLS: {e}")
                }
                DialError::Handshake(HandshakeError::RejectedPeer(r)) => {
                    format!("rejected the peer's welcome: {r}")
                }
                other => format!("dial failed: {other}"),
            };
            slot.note_failure(&what, Some(delay));
        }
    }

    fn handle_inbound_failed(&mut self, peer: Option<NodeId>, error: HandshakeError) {
        let c = &self.shared.counters;
        c.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        count_handshake_error(c, &error);
        let what = match &error {
            HandshakeError::RejectedPeer(r) => format!("rejected the peer's hello: {r}"),
            other => format!("inbound handshake failed: {other}"),
        };
        match peer.and_then(|p| self.slots.get_mut(&p)) {
            Some(slot) => slot.note_failure(&what, None),
            None => tracing::debug!("{what}"),
        }
    }

    fn handle_established(&mut self, conn: quinn::Connection, direction: Direction, intro: Intro) {
        let peer = intro.node_id;
        let Some(slot) = self.slots.get_mut(&peer) else {
            // The handshake admits members other than ourselves only.
            conn.close(close::PROTOCOL.into(), b"not a peer");
            return;
        };
        self.shared.counters.handshakes_ok.fetch_add(1, Ordering::Relaxed);
        let facts = ConnFacts { direction, peer_incarnation: intro.incarnation };
        if let Some(active) = &slot.active {
            if !direction::new_wins(slot.role, active.facts, facts) {
                tracing::debug!(peer = %peer.short(), ?direction, "closing duplicate connection; keeping the existing one");
                conn.close(close::DUPLICATE.into(), b"duplicate");
                self.shared.counters.duplicates_closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            tracing::debug!(peer = %peer.short(), ?direction, "new connection replaces the existing one");
            active.conn.close(close::DUPLICATE.into(), b"duplicate");
            self.shared.counters.duplicates_closed.fetch_add(1, Ordering::Relaxed);
        }
        let replaced = slot.active.is_some();
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        let now = Instant::now();
        slot.active = Some(ActiveConn {
            conn: conn.clone(),
            conn_id,
            facts,
            established: now,
            via_fallback: direction == Direction::Outbound && slot.role == Role::Wait,
        });
        slot.next_dial = None;
        if slot.failures > 0 {
            tracing::info!(peer = %peer.short(), "connected after {} failed attempt(s)", slot.failures);
        }
        slot.failures = 0;
        let (frames_tx, frames_rx) = mpsc::channel(QUEUE_FRAMES);
        let handle = PeerHandle {
            conn: conn.clone(),
            conn_id,
            addr: slot.member.addr,
            direction,
            established: now,
            tip: intro.tip,
            frames: frames_tx,
        };
        self.shared.table_mut().insert(peer, handle);
        peer::spawn(&self.tracker, conn, peer, conn_id, frames_rx, self.shared.clone(), self.cmd_tx.clone());
        if !replaced {
            tracing::info!(peer = %peer.short(), addr = %slot.member.addr, direction = direction.as_str(), "peer connected");
            self.shared.active.send_modify(|set| {
                set.insert(peer);
            });
            let _ = self.shared.events.send(PeerEvent::Up { id: peer, direction });
        }
    }

    fn handle_closed(&mut self, peer: NodeId, conn_id: u64, error: quinn::ConnectionError) {
        let Some(slot) = self.slots.get_mut(&peer) else {
            return;
        };
        if slot.active.as_ref().map(|a| a.conn_id) != Some(conn_id) {
            return; // an older generation, already replaced
        }
        let Some(active) = slot.active.take() else {
            return;
        };
        {
            let mut table = self.shared.table_mut();
            if table.get(&peer).is_some_and(|h| h.conn_id == conn_id) {
                table.remove(&peer);
            }
        }
        self.shared.active.send_modify(|set| {
            set.remove(&peer);
        });
        let _ = self.shared.events.send(PeerEvent::Down { id: peer });

        let uptime = active.established.elapsed();
        if uptime >= RESET_AFTER {
            slot.backoff.reset();
        }
        let by_duplicate =
            matches!(&error, quinn::ConnectionError::ApplicationClosed(ac) if ac.error_code == close::DUPLICATE.into());
        // The dialer checks our Welcome after we sent it; if it rejects it, we learn
        // so only from its close. That is a rejection like any other: counted,
        // logged with its reason, and followed by backoff rather than a passive wait.
        let rejected = handshake::rejection_in(&error);
        if let Some(reason) = rejected {
            let c = &self.shared.counters;
            c.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            c.rejects_received[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let next = if by_duplicate {
            match slot.role {
                Role::Dial => now + DUPLICATE_RETRY,
                Role::Wait => now + self.passive_wait,
            }
        } else {
            match (slot.role, active.via_fallback || rejected.is_some()) {
                (Role::Dial, _) | (Role::Wait, true) => now + slot.backoff.next_delay(),
                (Role::Wait, false) => now + self.passive_wait,
            }
        };
        slot.next_dial = Some(next);
        let why = super::describe_close(&error);
        if by_duplicate {
            tracing::debug!(peer = %peer.short(), "peer disconnected: {why}");
        } else if let Some(reason) = rejected {
            slot.note_failure(&format!("peer rejected our welcome: {reason}"), Some(next - now));
        } else {
            tracing::info!(peer = %peer.short(), addr = %slot.member.addr, after_secs = uptime.as_secs(), "peer disconnected: {why}");
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// QUIC connect, TLS and our handshake under one deadline.
async fn dial(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    peer: NodeId,
    hs: &HandshakeCtx,
) -> Result<(quinn::Connection, Intro), DialError> {
    let deadline = Instant::now() + hs.deadline;
    let connecting = endpoint.connect_with(client, addr, tls::SERVER_NAME)?;
    let conn = match timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(DialError::Connection(e)),
        Err(_) => return Err(DialError::Unreachable(hs.deadline)),
    };
    let is_peer = |id: &NodeId| hs.is_peer(id);
    // The certificate was pinned to `peer`; the Welcome must name the same key.
    let expect = hs.expect(peer, &is_peer);
    match timeout_at(deadline, handshake::dial(&conn, &hs.intro(), &expect)).await {
        Ok(Ok(intro)) => Ok((conn, intro)),
        Ok(Err(e)) => {
            let code = if e.reject_reason().is_some() { close::REJECTED } else { close::PROTOCOL };
            let reason = e.reject_reason().map(|r| r.as_str()).unwrap_or("handshake failed");
            conn.close(code.into(), reason.as_bytes());
            Err(e.into())
        }
        Err(_) => {
            conn.close(close::HANDSHAKE_TIMEOUT.into(), b"handshake timeout");
            Err(HandshakeError::Timeout(hs.deadline).into())
        }
    }
}

/// A handshake in progress from one IP address; counted while it lives.
struct IpSlot {
    map: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl IpSlot {
    fn take(
        map: &Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<IpSlot> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { map: map.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    limits: (usize, usize),
    hs: Arc<HandshakeCtx>,
    cmd_tx: mpsc::Sender<Cmd>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let pending = Arc::new(Semaphore::new(limits.0));
    let per_ip: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Default::default();
    let mut refused = 0u64;
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let ip = incoming.remote_address().ip();
        let permit = pending.clone().try_acquire_owned().ok();
        let ip_slot = IpSlot::take(&per_ip, ip, limits.1);
        let (Some(permit), Some(ip_slot)) = (permit, ip_slot) else {
            // One line for the first refusal and then every thousandth: a flood
            // must not flood the log too.
            refused += 1;
            if refused == 1 || refused % 1000 == 0 {
                tracing::warn!(remote = %ip, "too many handshakes in progress; refusing ({refused} refused so far)");
            }
            incoming.refuse();
            continue;
        };
        let hs = hs.clone();
        let cmd_tx = cmd_tx.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _ip_slot = ip_slot;
            let cmd = match accept(incoming, &hs).await {
                Ok((conn, intro)) => Cmd::Accepted { conn, intro },
                Err((peer, error)) => Cmd::InboundFailed { peer, error },
            };
            let _ = cmd_tx.send(cmd).await;
        });
    }
}

async fn accept(
    incoming: quinn::Incoming,
    hs: &HandshakeCtx,
) -> Result<(quinn::Connection, Intro), (Option<NodeId>, HandshakeError)> {
    let deadline = Instant::now() + hs.deadline;
    let conn = match timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err((None, HandshakeError::Connection(e))),
        Err(_) => return Err((None, HandshakeError::Timeout(hs.deadline))),
    };
    let Some(tls_key) = tls::peer_node_id(&conn) else {
        conn.close(close::PROTOCOL.into(), b"no certificate");
        return Err((None, HandshakeError::Unexpected));
    };
    let is_peer = |id: &NodeId| hs.is_peer(id);
    let expect = hs.expect(tls_key, &is_peer);
    match timeout_at(deadline, handshake::accept(&conn, &hs.intro(), &expect)).await {
        Ok(Ok(intro)) => Ok((conn, intro)),
        Ok(Err(e)) => {
            if conn.close_reason().is_none() {
                conn.close(close::PROTOCOL.into(), b"handshake failed");
            }
            Err((Some(tls_key), e))
        }
        Err(_) => {
            conn.close(close::HANDSHAKE_TIMEOUT.into(), b"handshake timeout");
            Err((Some(tls_key), HandshakeError::Timeout(hs.deadline)))
        }
    }
}
