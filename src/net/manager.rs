//! The manager: the one task that owns the connection rules ([`Slots`]) and the
//! peer table, with binding, dialling and accepting.
//!
//! The manager feeds the rules what happens (a dial's outcome, an accepted
//! handshake, a closed connection, a timer) and carries out what they decide: dial,
//! close, publish a peer as up or down. The peer table is published as one
//! immutable snapshot ([`Table`]); sends, the quorum gate, `/status`, metrics and
//! the service status all read that one snapshot. Every connection has a
//! generation number (`ConnId`), so the end of an old connection can never remove
//! its replacement.
//!
//! Dial and accept tasks run the QUIC and TLS handshake and our own handshake under
//! one deadline and report back over the manager's channel; they never touch the
//! table.
//!
//! The member set arrives on a watch channel ([`Peers::set_members`]); the latest
//! set wins. The manager applies it in one step: the keys TLS and the handshake
//! accept ([`MemberKeys`]), the addresses admission favours, and the slots. A
//! handshake that passed the old set is settled by the slots, which close a
//! connection with a member removed meanwhile.
//!
//! Each connection's wire version is fixed by its handshake and published with
//! the peer ([`super::PeerInfo::wire_version`]); a peer with no version in common
//! is reported once per peer and range, with which side to upgrade.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Admission, AdmissionSlot, Admit};
use super::direction::Direction;
use super::endpoint::{self, EndpointError};
use super::handshake::{
    self, Agreed, Expect, Generation, HandshakeError, Intro, Mismatch, RejectReason, Tip, Versions, MAGIC, WIRE,
};
use super::inbox::Inbox;
use super::outbox::{Outbox, OutboxLimits};
use super::peer;
use super::peers::{Counters, Inbound, Link, Messages, PeerEvent, Peers, Shared, Table};
use super::slots::{Action, CloseCause, ConnId, DialFailure, Slots};
use super::tls::{self, MemberKeys, RefusalLog};
use super::Close;
use super::Protocol;
use super::TransportConfig;
use crate::identity::{Identity, NodeId};

/// Everything the transport needs to run.
pub struct NetConfig {
    pub identity: Arc<Identity>,
    /// The network's id, which goes in every handshake.
    pub network_id: [u8; 32],
    /// The initial member set: whom the transport accepts and dials, until
    /// [`Peers::set_members`] replaces it. Our own entry, if any, is ignored; a
    /// node whose key is not in the set still dials the members it knows.
    pub members: Vec<(NodeId, SocketAddr)>,
    /// This node's address in the member set (or the one it will have): what the
    /// direction rule uses.
    pub advertised: SocketAddr,
    /// The UDP address to bind.
    pub listen: SocketAddr,
    pub transport: TransportConfig,
    pub request_timeout: Duration,
    /// The chain tip announced in handshakes.
    pub tip: watch::Receiver<Tip>,
    /// Which kinds each stream carries.
    pub protocol: Protocol,
    pub hooks: TestHooks,
}

/// Deliberate misbehaviour for tests of the peers' reaction. Never set in production.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// Speak this range of wire versions instead of ours: announced in our
    /// `Intro`, and the range a peer's is checked against (a node of another
    /// release, as far as the handshake goes).
    pub versions: Option<Versions>,
    /// Offer and accept only these handshake generations, in this order (a node
    /// of 0.1.0 speaks `[Generation::V1]`) instead of [`Generation::offered`].
    pub generations: Option<Vec<Generation>>,
    /// Claim this `NodeId` in our `Intro` instead of our own.
    pub claim_id: Option<NodeId>,
    /// Wraps the UDP socket (fault injection).
    pub wrap_socket: Option<endpoint::SocketWrapper>,
}

impl std::fmt::Debug for TestHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHooks")
            .field("versions", &self.versions)
            .field("generations", &self.generations)
            .field("claim_id", &self.claim_id)
            .field("wrap_socket", &self.wrap_socket.is_some())
            .finish()
    }
}

/// Counts a failed handshake under its reason.
fn count_handshake_error(c: &Counters, e: &HandshakeError) {
    match e {
        HandshakeError::RejectedPeer(r, _) => {
            c.rejects_sent[reason_index(*r)].fetch_add(1, Ordering::Relaxed);
        }
        HandshakeError::RejectedByPeer(r, _) => {
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

pub(crate) enum Cmd {
    Dialed { peer: NodeId, addr: SocketAddr, result: Result<(quinn::Connection, Agreed), DialError> },
    Accepted { conn: quinn::Connection, agreed: Agreed },
    InboundFailed { peer: Option<NodeId>, error: HandshakeError },
    Closed { peer: NodeId, conn_id: ConnId, error: quinn::ConnectionError },
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
        e if super::is_removal(e) => NOT_IN_ITS_SET.to_string(),
        other => super::describe_close(other),
    }
}

/// What a node hears when a peer closes a connection as [`Close::REMOVED`].
const NOT_IN_ITS_SET: &str = "peer closed the connection: this node is not in its member set";

/// What dial and accept tasks need to run a handshake; shared. Only the member
/// keys change, and only the manager changes them.
struct HandshakeCtx {
    me: NodeId,
    network_id: [u8; 32],
    /// The member set's keys, shared with the TLS verifier.
    members: MemberKeys,
    advertised: SocketAddr,
    /// This process's incarnation ([`incarnation`]); raised when one of our
    /// addresses vanishes ([`Manager::check_local_addresses`]).
    incarnation: AtomicU64,
    tip: watch::Receiver<Tip>,
    hooks: TestHooks,
    /// The handshake generations offered and accepted, the newest first.
    generations: Vec<Generation>,
    deadline: Duration,
    /// QUIC + TLS must complete within this, a shorter deadline than the whole
    /// handshake's: a stranger that sends an Initial and stalls holds an admission
    /// slot only this long.
    tls_deadline: Duration,
}

impl HandshakeCtx {
    /// Who may be on the other end: a member of the set other than ourselves.
    fn is_peer(&self, id: &NodeId) -> bool {
        *id != self.me && self.members.contains(id)
    }

    /// What a peer's `Intro` is checked against; `is_peer` is [`Self::is_peer`].
    fn expect<'a>(&self, tls_key: NodeId, is_peer: &'a (dyn Fn(&NodeId) -> bool + Sync)) -> Expect<'a> {
        Expect {
            network_id: self.network_id,
            versions: self.hooks.versions.unwrap_or(WIRE),
            tls_key,
            is_member: is_peer,
        }
    }

    fn intro(&self) -> Intro {
        Intro {
            magic: MAGIC,
            versions: self.hooks.versions.unwrap_or(WIRE),
            network_id: self.network_id,
            node_id: self.hooks.claim_id.unwrap_or(self.me),
            listen: self.advertised,
            tip: *self.tip.borrow(),
            software: concat!("masternode/", env!("CARGO_PKG_VERSION")).to_string(),
            incarnation: self.incarnation.load(Ordering::Relaxed),
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
    admission: Arc<Admission>,
    member_addrs: Vec<(NodeId, SocketAddr)>,
    passive_wait: Duration,
    seed: u64,
}

impl Bound {
    /// Starts the manager and the accept loop; everything stops when `shutdown`
    /// is cancelled and `tracker` tracks every task.
    pub fn run(mut self, shutdown: CancellationToken, tracker: &TaskTracker) -> (Peers, Inbound) {
        let now = Instant::now();
        let local = self.manager.shared.local_addr;
        let unreachable: Vec<(NodeId, SocketAddr)> = self
            .member_addrs
            .iter()
            .filter(|(id, addr)| *id != self.hs.me && !reaches(local, *addr))
            .copied()
            .collect();
        self.manager.slots = Slots::new(
            (self.hs.advertised, self.hs.me),
            self.member_addrs,
            self.passive_wait,
            self.seed,
            now.into_std(),
        );
        for (id, _) in &unreachable {
            self.manager.slots.set_reachable(id, false);
        }
        if let Some((_, example)) = unreachable.first() {
            tracing::warn!(
                listen = %local,
                "bound to one address family while {} member(s) have addresses of the other (such as {example}): this node cannot dial them and waits for them to dial it; listen on [::]:{} to reach both",
                unreachable.len(),
                local.port()
            );
        }
        self.manager.tracker = tracker.clone();
        let shared = self.manager.shared.clone();
        let endpoint = self.manager.endpoint.clone();
        tracker.spawn(self.manager.run(shutdown.clone()));
        tracker.spawn(accept_loop(
            endpoint,
            self.admission,
            self.hs,
            self.cmd_tx,
            shared.clone(),
            shutdown,
            tracker.clone(),
        ));
        tracing::info!(listen = %shared.local_addr, "transport listening");
        (Peers { shared }, self.inbound)
    }
}

/// Binds the endpoint and prepares the manager without starting it.
pub fn bind(cfg: NetConfig) -> Result<Bound, EndpointError> {
    let me = cfg.identity.id();
    // Of two entries for one id the last counts, as in `set_members`.
    let member_addrs: Vec<(NodeId, SocketAddr)> =
        cfg.members.iter().copied().collect::<BTreeMap<_, _>>().into_iter().collect();
    let keys = MemberKeys::new(member_addrs.iter().map(|(id, _)| *id));
    let transport = endpoint::transport_config(&cfg.transport)?;
    let refusals = Arc::new(RefusalLog::default());
    let generations = cfg.hooks.generations.clone().unwrap_or_else(|| Generation::offered(WIRE));
    let endpoint = endpoint::bind(
        cfg.listen,
        &cfg.identity,
        keys.clone(),
        transport.clone(),
        refusals.clone(),
        cfg.hooks.wrap_socket.clone(),
        &generations,
    )?;
    let local_addr = endpoint.local_addr().map_err(|source| EndpointError::Bind { addr: cfg.listen, source })?;

    let (requests_tx, requests) = mpsc::channel(256);
    let (events, _) = broadcast::channel(256);
    let inbox = Arc::new(Inbox::new(cfg.transport.inbound_peer_bytes, cfg.protocol.urgent));
    let members = watch::Sender::new(member_addrs.clone());
    let members_rx = members.subscribe();
    let shared = Arc::new(Shared {
        table: watch::Sender::new(Arc::new(Table::new())),
        members,
        counters: Counters::default(),
        events,
        inbox: inbox.clone(),
        requests: requests_tx,
        request_timeout: cfg.request_timeout,
        protocol: cfg.protocol,
        gossip_limits: super::KindLimits::of(cfg.protocol.gossip),
        slow_after: cfg.transport.slow_peer_timeout,
        refusals,
        local_addr,
        endpoint: endpoint.clone(),
        answer_bytes: Default::default(),
        request_bytes: Default::default(),
        answer_slots: Default::default(),
    });
    let hs = Arc::new(HandshakeCtx {
        me,
        network_id: cfg.network_id,
        members: keys,
        advertised: cfg.advertised,
        incarnation: AtomicU64::new(incarnation()),
        tip: cfg.tip,
        hooks: cfg.hooks,
        generations,
        deadline: cfg.transport.handshake_timeout,
        tls_deadline: cfg.transport.handshake_timeout.min(TLS_DEADLINE),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let admission = Arc::new(Admission::new(
        cfg.transport.max_pending_handshakes,
        cfg.transport.max_pending_handshakes_per_ip,
        member_ips(me, &member_addrs),
    ));
    let manager = Manager {
        slots: Slots::new((cfg.advertised, me), [], cfg.transport.passive_wait, 0, std::time::Instant::now()),
        conns: HashMap::new(),
        clients: HashMap::new(),
        identity: cfg.identity.clone(),
        transport,
        members: members_rx,
        admission: admission.clone(),
        outbox_limits: cfg.transport.outbox,
        shared,
        endpoint,
        hs: hs.clone(),
        cmd_tx: cmd_tx.clone(),
        cmd_rx,
        tracker: TaskTracker::new(),
        next_conn_id: 1,
        keepalive: cfg.transport.keepalive,
        mismatches: HashMap::new(),
    };
    Ok(Bound {
        manager,
        hs,
        cmd_tx,
        inbound: Inbound { messages: Messages { inbox }, requests },
        admission,
        member_addrs,
        passive_wait: cfg.transport.passive_wait,
        seed: random_u64(),
    })
}

/// QUIC + TLS deadline, at most.
const TLS_DEADLINE: Duration = Duration::from_secs(2);

/// The addresses admission treats as members': every member's but ours.
fn member_ips(me: NodeId, members: &[(NodeId, SocketAddr)]) -> Vec<std::net::IpAddr> {
    members.iter().filter(|(id, _)| *id != me).map(|(_, addr)| addr.ip()).collect()
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // The system RNG failing is not recoverable and not worth a panic either: fall
    // back to the clock, which is unique enough for a seed.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

/// This process's incarnation: microseconds since the epoch at start-up, with 8
/// random low bits. It grows from one start of a node to the next (as long as the
/// clock does not jump back between them), which lets peers tell the newer of two
/// processes with one key apart from a leftover of the older.
fn incarnation() -> u64 {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    ((micros as u64) << 8) | (random_u64() & 0xff)
}

struct Manager {
    slots: Slots,
    /// Every connection the rules know of (kept or about to be closed by them),
    /// with the tip and the wire version its handshake announced.
    conns: HashMap<ConnId, (NodeId, quinn::Connection, Tip, u16)>,
    /// Client configurations pinned to each member's key, made at its first dial.
    clients: HashMap<NodeId, quinn::ClientConfig>,
    identity: Arc<Identity>,
    transport: Arc<quinn::TransportConfig>,
    /// The member set, as `Peers::set_members` last published it.
    members: watch::Receiver<Vec<(NodeId, SocketAddr)>>,
    admission: Arc<Admission>,
    outbox_limits: OutboxLimits,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    hs: Arc<HandshakeCtx>,
    cmd_tx: mpsc::Sender<Cmd>,
    cmd_rx: mpsc::Receiver<Cmd>,
    tracker: TaskTracker,
    next_conn_id: ConnId,
    /// How often the local addresses of connections are checked: a connection
    /// that lost its address is replaced before the next keepalive would be due.
    keepalive: Duration,
    /// Per member, the version mismatch last reported: one warn line per peer and
    /// range, however often it dials. One entry per member at most (strangers do
    /// not pass TLS); cleared when the peer connects.
    mismatches: HashMap<NodeId, Mismatch>,
}

impl Manager {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut addresses = tokio::time::interval(self.keepalive);
        addresses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Also here, not only in its branch below: `select!` may pick another
            // ready branch, and a set published meanwhile must not wait for a
            // second wake-up.
            if self.members.has_changed().unwrap_or(false) {
                self.apply_members();
            }
            self.slots.handle_timeout(std::time::Instant::now());
            self.apply_actions();
            let wake = self.slots.poll_timeout().map(Instant::from_std);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.handle_cmd(cmd),
                    None => break,
                },
                // Never fails: `shared` holds the sender as long as we run.
                Ok(()) = self.members.changed() => self.apply_members(),
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
                _ = housekeeping.tick() => {}
                _ = addresses.tick() => self.check_local_addresses(),
            }
            self.apply_actions();
            // Proof of progress for the service watchdog: this loop turned.
            self.shared.counters.manager_loops.fetch_add(1, Ordering::Relaxed);
        }
        for (_, conn, _, _) in self.conns.values() {
            conn.close(Close::SHUTDOWN.into(), b"shutdown");
        }
        self.endpoint.close(Close::SHUTDOWN.into(), b"shutdown");
        self.shared.table.send_replace(Arc::new(Table::new()));
        self.shared.inbox.close();
    }

    /// Applies the latest member set: TLS, handshake and admission accept exactly
    /// it from now on, and the slots follow it (their actions are carried out by
    /// the caller's next `apply_actions`).
    fn apply_members(&mut self) {
        let members = self.members.borrow_and_update().clone();
        let me = self.hs.me;
        let members: BTreeMap<NodeId, SocketAddr> = members.into_iter().collect();
        let entries: Vec<(NodeId, SocketAddr)> = members.iter().map(|(id, addr)| (*id, *addr)).collect();
        self.hs.members.replace(members.keys().copied());
        self.admission.set_member_ips(member_ips(me, &entries));
        self.slots.handle_members(entries.iter().copied(), std::time::Instant::now());
        let local = self.shared.local_addr;
        for (id, addr) in entries.iter().filter(|(id, _)| *id != me) {
            let reachable = reaches(local, *addr);
            if self.slots.set_reachable(id, reachable) && !reachable {
                tracing::warn!(peer = %id.short(), %addr, listen = %local, "member's address is of the other address family: this node cannot dial it and waits for it to dial");
            }
        }
        self.clients.retain(|id, _| members.contains_key(id));
        self.mismatches.retain(|id, _| members.contains_key(id));
    }

    /// Finds connections whose local address is gone from the host (a new DHCP
    /// lease, an interface reconfigured): those the peers dialled, since quinn
    /// records the address a server-side connection was reached at and a client
    /// has none. Each such peer is dialled anew from the address we have now,
    /// under a newer incarnation so the peer prefers that connection to the one
    /// it dialled, which it cannot know is dead until its idle timeout.
    fn check_local_addresses(&mut self) {
        let mut present: HashMap<std::net::IpAddr, bool> = HashMap::new();
        let lost: Vec<(NodeId, ConnId, std::net::IpAddr)> = self
            .conns
            .iter()
            .filter_map(|(conn_id, (peer, conn, _, _))| {
                let ip = conn.local_ip()?;
                let here = *present.entry(ip).or_insert_with(|| is_local_address(ip));
                (!here).then_some((*peer, *conn_id, ip))
            })
            .collect();
        let Some((_, _, ip)) = lost.first() else { return };
        let next = incarnation().max(self.hs.incarnation.load(Ordering::Relaxed) + 1);
        self.hs.incarnation.store(next, Ordering::Relaxed);
        tracing::warn!(
            address = %ip,
            peers = lost.len(),
            "this node's address is gone from the host: dialling the peers that reached us there from the current one; if the member set has the old address, announce the new one with `masternode member set-addr`"
        );
        let now = std::time::Instant::now();
        for (peer, conn, _) in lost {
            self.slots.handle_address_lost(peer, conn, now);
        }
    }

    fn apply_actions(&mut self) {
        while let Some(action) = self.slots.poll_action() {
            match action {
                Action::Dial { peer, addr, .. } => self.start_dial(peer, addr),
                Action::Close { conn, code, reason, .. } => {
                    if let Some((_, c, _, _)) = self.conns.remove(&conn) {
                        c.close(code.into(), reason.as_bytes());
                    }
                    if code == Close::DUPLICATE {
                        self.shared.counters.duplicates_closed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Action::Up { peer, conn, direction, .. } => self.publish_up(peer, conn, direction),
                Action::Down { peer } => {
                    let mut changed = false;
                    self.shared.table.send_if_modified(|t| {
                        let mut table = (**t).clone();
                        changed = table.remove(&peer).is_some();
                        if changed {
                            *t = Arc::new(table);
                        }
                        changed
                    });
                    let _ = self.shared.events.send(PeerEvent::Down { id: peer });
                }
            }
        }
    }

    fn publish_up(&mut self, peer: NodeId, conn_id: ConnId, direction: Direction) {
        let Some((_, conn, tip, wire)) = self.conns.get(&conn_id) else { return };
        let link = Arc::new(Link {
            id: peer,
            conn: conn.clone(),
            conn_id,
            addr: self.slots.addr(&peer).unwrap_or(conn.remote_address()),
            direction,
            established: Instant::now(),
            tip: *tip,
            wire: *wire,
            outbox: Mutex::new(Outbox::new(self.outbox_limits)),
            wake: Notify::new(),
            drained: Notify::new(),
        });
        self.shared.table.send_modify(|t| {
            let mut table = (**t).clone();
            table.insert(peer, link.clone());
            *t = Arc::new(table);
        });
        peer::spawn(&self.tracker, link, self.shared.clone());
        let _ = self.shared.events.send(PeerEvent::Up { id: peer, direction });
    }

    fn start_dial(&mut self, id: NodeId, addr: SocketAddr) {
        let client = match self.client(id) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(peer = %id.short(), "cannot make a TLS client configuration: {e}");
                let failure = DialFailure::Failed(format!("TLS client configuration: {e}"));
                self.slots.handle_dial_failed(id, addr, failure, std::time::Instant::now());
                return;
            }
        };
        self.shared.counters.dials.fetch_add(1, Ordering::Relaxed);
        let endpoint = self.endpoint.clone();
        let hs = self.hs.clone();
        let cmd_tx = self.cmd_tx.clone();
        self.tracker.spawn(async move {
            let result = dial(&endpoint, client, addr, id, &hs).await;
            let _ = cmd_tx.send(Cmd::Dialed { peer: id, addr, result }).await;
        });
    }

    /// The client configuration pinned to `id`'s key, made on first use.
    fn client(&mut self, id: NodeId) -> Result<quinn::ClientConfig, EndpointError> {
        if let Some(client) = self.clients.get(&id) {
            return Ok(client.clone());
        }
        let client = endpoint::client_config(&self.identity, id, self.transport.clone(), &self.hs.generations)?;
        self.clients.insert(id, client.clone());
        Ok(client)
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        let now = std::time::Instant::now();
        match cmd {
            Cmd::Dialed { peer, addr, result } => match result {
                Ok((conn, agreed)) => self.handle_established(conn, Direction::Outbound, agreed),
                Err(e) => {
                    let mut failure = self.count_dial_failure(&e);
                    if let (DialFailure::Failed(what), Some(m)) = (&failure, dial_mismatch(&e)) {
                        self.report_mismatch(peer, m);
                        failure = DialFailure::Reported(what.clone());
                    }
                    self.slots.handle_dial_failed(peer, addr, failure, now);
                }
            },
            Cmd::Accepted { conn, agreed } => self.handle_established(conn, Direction::Inbound, agreed),
            Cmd::InboundFailed { peer, error } => {
                let c = &self.shared.counters;
                c.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                count_handshake_error(c, &error);
                let what = match &error {
                    HandshakeError::RejectedPeer(..) => {
                        format!("rejected the peer's hello: {}", handshake::rejection_text(&error))
                    }
                    other => format!("inbound handshake failed: {other}"),
                };
                match (peer.filter(|p| self.slots.contains(p)), error.mismatch()) {
                    (Some(p), Some(m)) => {
                        self.report_mismatch(p, m);
                        tracing::debug!(peer = %p.short(), "{what}");
                    }
                    (Some(p), _) => self.slots.handle_inbound_failed(p, &what),
                    (None, _) => tracing::debug!("{what}"),
                }
            }
            Cmd::Closed { peer, conn_id, error } => {
                self.conns.remove(&conn_id);
                let cause = self.close_cause(&error);
                self.slots.handle_closed(peer, conn_id, cause, now);
            }
        }
    }

    /// Reports a peer with no wire version in common, once per peer and range;
    /// the caller logs the attempt itself at debug.
    fn report_mismatch(&mut self, peer: NodeId, mismatch: Mismatch) {
        if self.mismatches.get(&peer) != Some(&mismatch) {
            tracing::warn!(peer = %peer.short(), "no wire version in common: {mismatch}");
            self.mismatches.insert(peer, mismatch);
        }
    }

    fn count_dial_failure(&self, error: &DialError) -> DialFailure {
        let c = &self.shared.counters;
        match error {
            DialError::Connect(_) | DialError::Unreachable(_) => {
                c.dial_failures.fetch_add(1, Ordering::Relaxed);
            }
            DialError::Connection(e) | DialError::Handshake(HandshakeError::Connection(e)) if super::is_removal(e) => {
                c.dial_failures.fetch_add(1, Ordering::Relaxed);
                c.removed_by_peer.fetch_add(1, Ordering::Relaxed);
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
        match error {
            DialError::Handshake(HandshakeError::RejectedByPeer(RejectReason::Duplicate, _)) => {
                DialFailure::DuplicateAtPeer
            }
            DialError::Handshake(HandshakeError::RejectedByPeer(r @ RejectReason::NotInSet, _)) => {
                DialFailure::NotAccepted(format!("peer rejected our hello: {r}"))
            }
            DialError::Handshake(e @ HandshakeError::RejectedByPeer(..)) => {
                DialFailure::Failed(format!("peer rejected our hello: {}", handshake::rejection_text(e)))
            }
            DialError::Connection(e) | DialError::Handshake(HandshakeError::Connection(e))
                if super::is_tls_refusal_by_peer(e) =>
            {
                DialFailure::NotAccepted(format!("the peer refused our key at TLS ({e})"))
            }
            DialError::Handshake(HandshakeError::Connection(e)) if super::is_tls_refusal(e) => {
                DialFailure::Failed(format!("refused at TLS: {e}"))
            }
            DialError::Connection(e) | DialError::Handshake(HandshakeError::Connection(e)) if super::is_removal(e) => {
                DialFailure::NotAccepted(NOT_IN_ITS_SET.to_string())
            }
            DialError::Handshake(e @ HandshakeError::RejectedPeer(..)) => {
                DialFailure::Failed(format!("rejected the peer's welcome: {}", handshake::rejection_text(e)))
            }
            other => DialFailure::Failed(format!("dial failed: {other}")),
        }
    }

    /// What a connection's end means to the rules; a rejection of our Welcome is
    /// counted here (the acceptor learns of it only from the close).
    fn close_cause(&self, error: &quinn::ConnectionError) -> CloseCause {
        if matches!(error, quinn::ConnectionError::ApplicationClosed(ac) if ac.error_code == Close::DUPLICATE.into()) {
            return CloseCause::Duplicate;
        }
        if super::is_removal(error) {
            self.shared.counters.removed_by_peer.fetch_add(1, Ordering::Relaxed);
            return CloseCause::Removed;
        }
        if let Some(reason) = handshake::rejection_in(error) {
            let c = &self.shared.counters;
            c.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            c.rejects_received[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
            return CloseCause::Rejected(reason.to_string());
        }
        CloseCause::Other(super::describe_close(error))
    }

    fn handle_established(&mut self, conn: quinn::Connection, direction: Direction, agreed: Agreed) {
        let Agreed { intro, wire } = agreed;
        let peer = intro.node_id;
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        if self.slots.contains(&peer) {
            self.shared.counters.handshakes_ok.fetch_add(1, Ordering::Relaxed);
        }
        self.mismatches.remove(&peer);
        tracing::debug!(peer = %peer.short(), wire, software = %intro.software, "handshake complete");
        self.conns.insert(conn_id, (peer, conn.clone(), intro.tip, wire));
        let now = std::time::Instant::now();
        if self.slots.handle_established(peer, conn_id, direction, intro.listen, intro.incarnation, now) {
            let cmd_tx = self.cmd_tx.clone();
            self.tracker.spawn(async move {
                let error = conn.closed().await;
                // The manager is gone only when the node is shutting down.
                let _ = cmd_tx.send(Cmd::Closed { peer, conn_id, error }).await;
            });
        }
    }
}

/// The version mismatch behind a failed dial, in this node's terms.
fn dial_mismatch(error: &DialError) -> Option<Mismatch> {
    match error {
        DialError::Handshake(h) => h.mismatch(),
        _ => None,
    }
}

/// Whether a socket bound to `local` can send to `peer`: an IPv4 socket reaches
/// IPv4 (also written IPv4-mapped); an IPv6 socket bound to `[::]` reaches both
/// families (the endpoint asks for dual stack); one bound to a specific IPv6 address
/// reaches IPv6 only.
/// Whether a socket bound to `local` can send to `peer` (an IPv4 socket
/// reaches no IPv6 address and the reverse; `[::]` reaches both).
pub(crate) fn reaches(local: SocketAddr, peer: SocketAddr) -> bool {
    let peer_v4 = super::canonical(peer).is_ipv4();
    match local.ip() {
        std::net::IpAddr::V4(_) => peer_v4,
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => true,
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => peer_v4,
        std::net::IpAddr::V6(_) => !peer_v4,
    }
}

/// Whether `ip` is an address of this host, by binding a UDP socket to it (what
/// the kernel refuses with "address not available" otherwise). In doubt (any
/// other error, a link-local IPv6 address that needs its interface) it answers
/// yes: a wrong yes only leaves a connection to its idle timeout.
fn is_local_address(ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    if matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        return true;
    }
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
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
) -> Result<(quinn::Connection, Agreed), DialError> {
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
        Ok(Ok(agreed)) => Ok((conn, agreed)),
        Ok(Err(e)) => {
            let code = if e.reject_reason().is_some() { Close::REJECTED } else { Close::PROTOCOL };
            let reason = e.reject_reason().map(|r| r.as_str()).unwrap_or("handshake failed");
            conn.close(code.into(), reason.as_bytes());
            Err(e.into())
        }
        Err(_) => {
            conn.close(Close::HANDSHAKE_TIMEOUT.into(), b"handshake timeout");
            Err(HandshakeError::Timeout(hs.deadline).into())
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    admission: Arc<Admission>,
    hs: Arc<HandshakeCtx>,
    cmd_tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
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
        let (admit, member) = admission.admit_as(ip, incoming.remote_address_validated());
        match admit {
            Admit::Accept => {}
            Admit::Retry if incoming.may_retry() => {
                shared.counters.retries_sent.fetch_add(1, Ordering::Relaxed);
                let _ = incoming.retry();
                continue;
            }
            Admit::Ignore => {
                shared.counters.admission_refused.fetch_add(1, Ordering::Relaxed);
                incoming.ignore();
                continue;
            }
            Admit::Retry | Admit::Refuse => {
                // One line for the first refusal and then every thousandth: a flood
                // must not flood the log too.
                refused += 1;
                shared.counters.admission_refused.fetch_add(1, Ordering::Relaxed);
                if refused == 1 || refused % 1000 == 0 {
                    tracing::warn!(remote = %ip, "too many handshakes in progress; refusing ({refused} refused so far)");
                }
                incoming.refuse();
                continue;
            }
        }
        let slot = AdmissionSlot { admission: admission.clone(), ip, member };
        let hs = hs.clone();
        let cmd_tx = cmd_tx.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let cmd = match accept(incoming, &hs, member).await {
                Ok((conn, agreed)) => Cmd::Accepted { conn, agreed },
                Err((peer, error)) => Cmd::InboundFailed { peer, error },
            };
            let _ = cmd_tx.send(cmd).await;
        });
    }
}

/// Accepts one connection: QUIC and TLS, then our handshake. A stranger's
/// address gets the short QUIC + TLS deadline; a member's the whole handshake
/// deadline (a lossy, distant path may need a retransmission or two).
async fn accept(
    incoming: quinn::Incoming,
    hs: &HandshakeCtx,
    member: bool,
) -> Result<(quinn::Connection, Agreed), (Option<NodeId>, HandshakeError)> {
    let start = Instant::now();
    let tls_deadline = if member { hs.deadline } else { hs.tls_deadline };
    let conn = match timeout_at(start + tls_deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err((None, HandshakeError::Connection(e))),
        Err(_) => return Err((None, HandshakeError::Timeout(tls_deadline))),
    };
    let Some(tls_key) = tls::peer_node_id(&conn) else {
        conn.close(Close::PROTOCOL.into(), b"no certificate");
        return Err((None, HandshakeError::Unexpected));
    };
    let is_peer = |id: &NodeId| hs.is_peer(id);
    let expect = hs.expect(tls_key, &is_peer);
    match timeout_at(start + hs.deadline, handshake::accept(&conn, &hs.intro(), &expect)).await {
        Ok(Ok(agreed)) => Ok((conn, agreed)),
        Ok(Err(e)) => {
            if conn.close_reason().is_none() {
                conn.close(Close::PROTOCOL.into(), b"handshake failed");
            }
            Err((Some(tls_key), e))
        }
        Err(_) => {
            conn.close(Close::HANDSHAKE_TIMEOUT.into(), b"handshake timeout");
            Err((Some(tls_key), HandshakeError::Timeout(hs.deadline)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_of_this_host_is_told_from_one_it_does_not_have() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(is_local_address("::ffff:127.0.0.1".parse().unwrap()), "IPv4-mapped is IPv4");
        // TEST-NET-3, never assigned to a host running the tests.
        assert!(!is_local_address("203.0.113.77".parse().unwrap()));
    }

    #[test]
    fn which_bound_socket_reaches_which_family() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(reaches(sa("127.0.0.1:1"), sa("10.0.0.1:2")));
        assert!(reaches(sa("127.0.0.1:1"), sa("[::ffff:10.0.0.1]:2")), "IPv4-mapped is IPv4");
        assert!(!reaches(sa("0.0.0.0:1"), sa("[2001:db8::1]:2")));
        assert!(reaches(sa("[::]:1"), sa("[2001:db8::1]:2")));
        assert!(reaches(sa("[::]:1"), sa("10.0.0.1:2")), "dual stack");
        assert!(!reaches(sa("[::1]:1"), sa("127.0.0.1:2")));
        assert!(reaches(sa("[::1]:1"), sa("[::1]:2")));
    }
}
