//! Helpers shared by the multi-node tests: real sockets on distinct loopback
//! addresses, real nodes, polling with generous deadlines.
#![allow(dead_code)]

pub mod procs;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use masternode::chain::Message;
use masternode::config::{Member, Network, NodeConfig, Transport};
use masternode::identity::{Identity, NodeId};
use masternode::net::{self, Inbound, NetConfig, Peers, TestHooks};
use masternode::net::{Tip, GENERATIONS};
use masternode::node::{Node, NodeOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const PORT: u16 = 24100;

/// A block of loopback addresses of our own: 127.P.S.1, 127.P.S.2, ... where P
/// starts from the process id and S from a counter, so tests running in
/// parallel (threads or processes) never share an address. Two test processes
/// whose ids agree modulo 200 would start on the same P, so each block is
/// claimed by holding a TCP listener on its .254 for the rest of the process:
/// a block another process holds is skipped.
pub fn subnet() -> [u8; 2] {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    static CLAIMS: std::sync::Mutex<Vec<std::net::TcpListener>> = std::sync::Mutex::new(Vec::new());
    let first = (std::process::id() % 200) as usize;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as usize;
        assert!(n < 250, "too many subnets in one test process");
        for step in 0..200 {
            let p = 20 + ((first + step) % 200) as u8;
            let s = 1 + n as u8;
            let claim = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, p, s, 254)), 24_099);
            if let Ok(l) = std::net::TcpListener::bind(claim) {
                CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).push(l);
                return [p, s];
            }
        }
    }
}

pub fn addr(net: [u8; 2], i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], i)), PORT)
}

pub fn fast_transport() -> Transport {
    Transport {
        keepalive: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(3000),
        passive_wait: Duration::from_millis(2000),
        handshake_timeout: Duration::from_millis(2000),
        ..Transport::default()
    }
}

/// Identities and addresses of a test network; node i (0-based) is at .(i+1).
pub struct Spec {
    pub net: [u8; 2],
    /// Node i keeps its chain in `dir/node{i}`.
    pub dir: tempfile::TempDir,
    pub ids: Vec<Arc<Identity>>,
    pub members: Vec<Member>,
    pub name: String,
}

impl Spec {
    pub fn new(n: usize) -> Spec {
        let net = subnet();
        let ids: Vec<_> = (0..n).map(|_| Arc::new(Identity::generate().unwrap())).collect();
        let members =
            ids.iter().enumerate().map(|(i, id)| Member { id: id.id(), addr: addr(net, i as u8 + 1) }).collect();
        Spec { net, dir: tempfile::tempdir().unwrap(), ids, members, name: "test".into() }
    }

    pub fn network(&self) -> Network {
        self.network_with(&self.name, &self.members)
    }

    pub fn network_with(&self, name: &str, members: &[Member]) -> Network {
        self.network_paced(name, members, 1000)
    }

    /// The genesis file of this network, as daemons read it.
    pub fn network_file(&self) -> String {
        Self::network_text(&self.name, &self.members, 1000)
    }

    /// The network of `members` with blocks every `block_interval_ms`.
    pub fn network_paced(&self, name: &str, members: &[Member], block_interval_ms: u64) -> Network {
        Network::parse(Path::new("network.toml"), &Self::network_text(name, members, block_interval_ms)).unwrap()
    }

    /// The network of this spec with `keys` (top-level keys of the network
    /// file, such as `max_block_txs = 10\n`) added to its file.
    pub fn network_with_keys(&self, keys: &str) -> Network {
        let text = format!("{keys}{}", Self::network_text(&self.name, &self.members, 1000));
        Network::parse(Path::new("network.toml"), &text).unwrap()
    }

    fn network_text(name: &str, members: &[Member], block_interval_ms: u64) -> String {
        // min_active 3, or the member count for smaller test networks (a
        // min_active above it is refused).
        Network::render(name, 1_764_000_000_000, block_interval_ms, 3.min(members.len()), members)
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr
    }

    pub fn id(&self, i: usize) -> NodeId {
        self.ids[i].id()
    }

    /// The node config for node `i` with this network, not started.
    pub fn config(&self, i: usize, network: Network, transport: Transport) -> NodeConfig {
        let identity =
            Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&self.ids[i].secret_seed())).unwrap();
        let listen = self.addr(i);
        let admin = SocketAddr::new(listen.ip(), 0);
        NodeConfig::assemble(network, Path::new("network.toml"), identity, listen, admin, self.data_dir(i), transport)
            .unwrap()
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    pub async fn start(&self, i: usize, transport: Transport) -> Node {
        self.start_with(i, self.network(), transport, TestHooks::default()).await
    }

    pub async fn start_with(&self, i: usize, network: Network, transport: Transport, hooks: TestHooks) -> Node {
        let cfg = self.config(i, network, transport);
        Node::start(cfg, NodeOptions { hooks, ..Default::default() }, CancellationToken::new()).await.unwrap()
    }

    /// The transport alone, with its inbound channels in the test's hands.
    pub fn start_net(
        &self,
        i: usize,
        transport: Transport,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> (Peers, Inbound) {
        net::start(self.net_config(i, self.addr(i), self.member_set(), transport), shutdown.clone(), tracker).unwrap()
    }

    /// The member set of the network file, as the transport takes it.
    pub fn member_set(&self) -> Vec<(NodeId, SocketAddr)> {
        self.members.iter().map(|m| (m.id, m.addr)).collect()
    }

    /// The transport config of node `i`, listening at `at` (its advertised
    /// address too) with the initial member set `members`.
    pub fn net_config(
        &self,
        i: usize,
        at: SocketAddr,
        members: Vec<(NodeId, SocketAddr)>,
        transport: Transport,
    ) -> NetConfig {
        let (_tip_tx, tip) = watch::channel(Tip::default());
        NetConfig {
            identity: self.ids[i].clone(),
            network_id: self.network().id,
            members,
            advertised: at,
            listen: at,
            transport,
            request_timeout: Duration::from_secs(5),
            tip,
            protocol: OPEN,
            hooks: TestHooks::default(),
        }
    }
}

/// The transport tests' protocol: every kind of the chain's messages on every
/// stream, so the transport is exercised on its own.
pub const OPEN: net::Protocol = net::Protocol {
    gossip: <Message as masternode::codec::Frame>::limit,
    request: <Message as masternode::codec::Frame>::limit,
    response: <Message as masternode::codec::Frame>::limit,
    urgent: masternode::chain::is_consensus_kind,
};

/// `msg` as a frame queued in the transaction class (dropped when a peer's outbox
/// is full).
pub fn outgoing(msg: &Message) -> net::Outgoing {
    net::Outgoing { frame: masternode::codec::encode(msg), class: net::Class::Tx, epoch: 0, wire: 3 }
}

/// Decodes a delivered body.
pub fn decode(body: &[u8]) -> Message {
    Message::decode(body).expect("a frame the test sent")
}

/// Polls `check` every 50 ms until it returns true or `deadline` passes.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > deadline {
            panic!("not within {deadline:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every node is connected to every other exactly once, and each connection was
/// dialled by the lower address of its pair.
pub fn assert_full_mesh(spec: &Spec, nodes: &[&Node]) {
    for (i, node) in nodes.iter().enumerate() {
        let peers = node.peers().peers();
        assert_eq!(peers.len(), nodes.len() - 1, "node {i} peers: {peers:?}");
        for p in &peers {
            let j = spec.members.iter().position(|m| m.id == p.id).unwrap();
            let want = if spec.addr(i) < spec.addr(j) { net::Direction::Outbound } else { net::Direction::Inbound };
            assert_eq!(p.direction, want, "node {i} to node {j}");
        }
    }
}

pub fn mesh_complete(nodes: &[&Node]) -> bool {
    nodes.iter().all(|n| n.peers().peers().len() == nodes.len() - 1)
}

pub fn counter(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub async fn stop_all(nodes: Vec<Node>) {
    let stops = nodes.into_iter().map(|n| n.stop());
    futures_join_all(stops).await;
}

/// A join_all without pulling in the futures crate.
pub async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Hooks that route a node's UDP through `faults`.
pub fn faulty(faults: &Arc<masternode::net::Faults>) -> TestHooks {
    let faults = faults.clone();
    TestHooks { wrap_socket: Some(Arc::new(move |s, local| faults.wrap(s, local))), ..Default::default() }
}

/// The invariant every chain test checks: at every height all nodes that have a
/// block hold the same one, blocks link by hash, timestamps grow, and every
/// certificate carries valid precommits of more than two thirds of the set.
/// Returns the heights of the nodes.
pub fn check_chains(spec: &Spec, stores: &[&masternode::chain::Store]) -> Vec<u64> {
    check_chains_of(&spec.network(), stores)
}

pub fn check_chains_of(network: &Network, stores: &[&masternode::chain::Store]) -> Vec<u64> {
    use masternode::chain::genesis_hash;
    // The member set of each height, from the genesis and every block's changes,
    // as a node that syncs from scratch computes it.
    let mut membership = masternode::chain::Membership::genesis(network);
    let heights: Vec<u64> = stores.iter().map(|s| s.tip().unwrap().map_or(0, |t| t.height)).collect();
    let top = heights.iter().copied().max().unwrap_or(0);
    let mut prev_hash = genesis_hash(&network.id);
    let mut prev_ts = network.genesis_time_ms;
    for h in 1..=top {
        let blocks: Vec<_> = stores.iter().filter_map(|s| s.block(h).unwrap()).collect();
        assert!(!blocks.is_empty(), "height {h} missing everywhere");
        let first = &blocks[0];
        let members = membership.current().ids();
        for (i, c) in blocks.iter().enumerate() {
            assert_eq!(c.block.hash(), first.block.hash(), "fork at height {h} (block {i})");
            c.cert.verify(&c.block, &members, &network.id).unwrap_or_else(|e| panic!("height {h}: {e}"));
            assert!(c.cert.signers().len() * 3 > members.len() * 2);
        }
        // From protocol 4 the link commits to the member state the parent left.
        let link = membership.version_at(h) >= 4;
        let digest = masternode::chain::members_digest(membership.state());
        let expected = masternode::chain::parent_link(prev_hash, digest, link);
        assert_eq!(first.block.header.prev_hash, expected, "height {h} links to its parent");
        assert!(first.block.header.timestamp_ms > prev_ts, "height {h}: timestamps grow");
        prev_hash = first.block.hash();
        prev_ts = first.block.header.timestamp_ms;
        membership.apply(&first.block.header.changes, &network.id);
    }
    heights
}

pub fn heights(nodes: &[&Node]) -> Vec<u64> {
    nodes.iter().map(|n| n.height()).collect()
}

/// The transport of honest nodes beside a hostile member at node 0, the lowest
/// address: they wait for it to dial and never dial it.
pub fn beside_hostile_transport() -> Transport {
    Transport { passive_wait: Duration::from_secs(600), ..fast_transport() }
}

/// A hostile member at node 0 and honest nodes 1 to `count`, meshed among
/// themselves and at `height` or above.
pub async fn honest_beside_hostile(spec: &Spec, count: usize, height: u64) -> (Hostile, Vec<Node>) {
    let hostile = Hostile::new(spec, 0);
    let mut honest = Vec::new();
    for i in 1..=count {
        honest.push(spec.start(i, beside_hostile_transport()).await);
    }
    let refs: Vec<&Node> = honest.iter().collect();
    eventually(&format!("{count} honest nodes meshed at height {height}"), Duration::from_secs(60), || {
        refs.iter().all(|n| n.peers().connected().len() >= count - 1 && n.height() >= height)
    })
    .await;
    (hostile, honest)
}

/// A late node beside a hostile member, for catch-up tests: seven members, the
/// hostile key at node 0 (the lowest address), five honest nodes (1 to 5) that
/// reach `height`, and node 6 started from nothing, fetching `batch` blocks per
/// request, with the hostile member connected to it.
pub struct LateBesideHostile {
    pub honest: Vec<Node>,
    pub late: Node,
    /// The hostile member's connection to the late node, after the handshake.
    pub conn: quinn::Connection,
    /// When the late node started.
    pub started: Instant,
    /// Keeps the hostile endpoint open.
    pub hostile: Hostile,
}

pub async fn late_beside_hostile(spec: &Spec, height: u64, batch: u32) -> LateBesideHostile {
    let (hostile, honest) = honest_beside_hostile(spec, 5, height).await;
    let mut cfg = spec.config(6, spec.network(), beside_hostile_transport());
    cfg.limits.sync_batch_blocks = batch;
    let late = Node::start(cfg, Default::default(), CancellationToken::new()).await.unwrap();
    let started = Instant::now();
    let conn = hostile.connect(spec, 6).await;
    LateBesideHostile { honest, late, conn, started, hostile }
}

/// A member key that speaks the handshake correctly and then misbehaves.
pub struct Hostile {
    pub endpoint: quinn::Endpoint,
    pub spec_index: usize,
    uni: Option<u32>,
    send_window: Option<u64>,
}

impl Hostile {
    pub fn new(spec: &Spec, i: usize) -> Hostile {
        Self::bind(spec, spec.addr(i), &spec.ids[i], i, None)
    }

    /// A member that grants the peer at most `uni` unidirectional streams.
    pub fn with_uni_streams(spec: &Spec, i: usize, uni: u32) -> Hostile {
        Self::bind(spec, spec.addr(i), &spec.ids[i], i, Some(uni))
    }

    /// A member whose QUIC send buffer holds at most `bytes` (a flooder that does
    /// not pile up memory in the test's own process).
    pub fn with_send_window(spec: &Spec, i: usize, bytes: u64) -> Hostile {
        let mut h = Self::bind(spec, spec.addr(i), &spec.ids[i], i, None);
        h.send_window = Some(bytes);
        h
    }

    /// A stranger: a key in no member set, on an address of the test's subnet.
    pub fn stranger(spec: &Spec) -> Hostile {
        let id = Identity::generate().unwrap();
        let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, spec.net[0], spec.net[1], 201)), 0);
        Self::bind(spec, at, &id, usize::MAX, None)
    }

    fn bind(spec: &Spec, at: SocketAddr, id: &Identity, i: usize, uni: Option<u32>) -> Hostile {
        let members: std::collections::HashSet<_> = spec.members.iter().map(|m| m.id).collect();
        let transport = Self::transport(uni);
        let endpoint = net::bind_endpoint(
            at,
            id,
            Arc::new(members),
            transport,
            Arc::new(net::RefusalLog::default()),
            None,
            &GENERATIONS,
        )
        .unwrap();
        Hostile { endpoint, spec_index: i, uni, send_window: None }
    }

    fn transport(uni: Option<u32>) -> Arc<quinn::TransportConfig> {
        Self::transport_with(uni, None)
    }

    fn transport_with(uni: Option<u32>, send_window: Option<u64>) -> Arc<quinn::TransportConfig> {
        if uni.is_none() && send_window.is_none() {
            return net::quic_transport_config(&fast_transport()).unwrap();
        }
        let fast = fast_transport();
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(fast.keepalive));
        t.max_idle_timeout(Some(fast.idle_timeout.try_into().unwrap()));
        t.max_concurrent_uni_streams(uni.unwrap_or(1).into());
        if let Some(w) = send_window {
            t.send_window(w);
        }
        Arc::new(t)
    }

    /// Starts a connection attempt to any address (it will not complete).
    pub fn connect_to(&self, to: SocketAddr) -> quinn::Connecting {
        let id = Identity::generate().unwrap();
        let client = net::client_config(&id, id.id(), Self::transport(None), &GENERATIONS).unwrap();
        self.endpoint.connect_with(client, to, net::SERVER_NAME).unwrap()
    }

    /// QUIC and TLS only, no handshake.
    pub async fn connect_tls(&self, spec: &Spec, victim: usize) -> quinn::Connection {
        let client =
            net::client_config(&spec.ids[self.spec_index], spec.id(victim), Self::transport(self.uni), &GENERATIONS)
                .unwrap();
        self.endpoint.connect_with(client, spec.addr(victim), net::SERVER_NAME).unwrap().await.unwrap()
    }

    pub async fn connect(&self, spec: &Spec, victim: usize) -> quinn::Connection {
        self.connect_in(spec, &spec.network(), victim).await
    }

    /// As [`Self::connect`], to a node of `network` (the spec's members on
    /// another block interval).
    pub async fn connect_in(&self, spec: &Spec, network: &Network, victim: usize) -> quinn::Connection {
        let conn = self.connect_tls(spec, victim).await;
        let intro = masternode::net::Intro {
            magic: masternode::net::MAGIC,
            versions: masternode::net::WIRE,
            network_id: network.id,
            node_id: spec.id(self.spec_index),
            listen: spec.addr(self.spec_index),
            tip: Tip::default(),
            software: "hostile".into(),
            incarnation: rand_incarnation(),
        };
        let any = |_: &masternode::identity::NodeId| true;
        let expect = masternode::net::Expect {
            network_id: network.id,
            versions: masternode::net::WIRE,
            tls_key: spec.id(victim),
            is_member: &any,
        };
        masternode::net::handshake_dial(&conn, &intro, &expect).await.expect("hostile peer passes the handshake");
        conn
    }
}

impl Hostile {
    /// As [`Self::connect`], with the send window this member was made with,
    /// and `None` where that panics (the victim refused it, or still holds its
    /// last connection): for a member that reconnects in a loop.
    pub async fn try_connect(&self, spec: &Spec, victim: usize) -> Option<quinn::Connection> {
        let client = net::client_config(
            &spec.ids[self.spec_index],
            spec.id(victim),
            Self::transport_with(self.uni, self.send_window),
            &GENERATIONS,
        )
        .ok()?;
        let conn = self.endpoint.connect_with(client, spec.addr(victim), net::SERVER_NAME).ok()?.await.ok()?;
        let network = spec.network();
        let intro = masternode::net::Intro {
            magic: masternode::net::MAGIC,
            versions: masternode::net::WIRE,
            network_id: network.id,
            node_id: spec.id(self.spec_index),
            listen: spec.addr(self.spec_index),
            tip: Tip::default(),
            software: "hostile".into(),
            incarnation: rand_incarnation(),
        };
        let any = |_: &masternode::identity::NodeId| true;
        let expect = masternode::net::Expect {
            network_id: network.id,
            versions: masternode::net::WIRE,
            tls_key: spec.id(victim),
            is_member: &any,
        };
        masternode::net::handshake_dial(&conn, &intro, &expect).await.ok()?;
        Some(conn)
    }
}

pub fn rand_incarnation() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Logs to the test's output when `RUST_LOG` is set (`--nocapture` to see them).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Five nodes started at the same instant, `rounds` times: every round ends with
/// ten connections, each pair once, dialled by the lower address, and no redial
/// storm (at most two dials and four handshakes more than the ten pairs need).
pub async fn simultaneous_starts(rounds: u32) {
    for round in 0..rounds {
        let spec = Spec::new(5);
        let starts = (0..5).map(|i| {
            let cfg = spec.config(i, spec.network(), fast_transport());
            Node::start(cfg, Default::default(), tokio_util::sync::CancellationToken::new())
        });
        let nodes: Vec<Node> = futures_join_all(starts).await.into_iter().map(|r| r.unwrap()).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        eventually(&format!("round {round}: full mesh"), Duration::from_secs(20), || mesh_complete(&refs)).await;
        assert_full_mesh(&spec, &refs);
        let dials: u64 = nodes.iter().map(|n| counter(&n.peers().counters().dials)).sum();
        let handshakes: u64 = nodes.iter().map(|n| counter(&n.peers().counters().handshakes_ok)).sum();
        let duplicates: u64 = nodes.iter().map(|n| counter(&n.peers().counters().duplicates_closed)).sum();
        // 10 pairs: 10 dials, 20 handshake completions (one at each end).
        assert!(dials <= 12, "round {round}: {dials} dials for 10 pairs");
        assert!(handshakes <= 24, "round {round}: {handshakes} handshakes for 10 pairs");
        assert_eq!(duplicates, 0, "round {round}: no duplicates when nobody is late");
        stop_all(nodes).await;
    }
}
