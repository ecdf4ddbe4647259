//! Throughput benchmarks: the node against raw quinn and TCP + TLS, in one run.
//!
//!     cargo bench --bench throughput -- [--quick] [--json FILE] [--only PREFIX[,PREFIX..]]
//!     cargo bench --bench throughput -- --case node|node1|nodeS|nodeR|quinn SIZE COUNT
//!
//! `--case` runs one frames measurement alone, once (no references, no repeats;
//! `node` sends with `send_many` and receives with `recv_into`, `node1` with
//! `send` per frame and `recv_batch`, `nodeS` and `nodeR` mix the two):
//! for instruction counts under `valgrind --tool=callgrind`, where two counts
//! of frames give the cost of one as a difference, free of the setup's.
//!
//! A harness of our own (`harness = false`) rather than criterion: every figure
//! here is a multi-node scenario measured over a whole run (messages per second,
//! seconds to a full mesh, submit-to-commit latency), and each one is reported
//! next to references measured in the same run on the same machine, so a reader
//! takes ratios, which survive a noisy 2-core machine where the same absolute
//! figure moves by a quarter between runs. Criterion's per-iteration statistics
//! fit neither the shape of these scenarios nor the reference-in-the-same-run rule.
//!
//! Memory per idle connection is measured in child processes (this binary again,
//! with `--probe`), so one scenario's allocations cannot inflate another's.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use masternode::chain::{Message, PROTOCOL};
use masternode::config::{Member, Network, NodeConfig, Transport};
use masternode::identity::{Identity, NodeId};
use masternode::net::{self, Expect, Intro, NetConfig, Outgoing, Peers, SendError, Tip, GENERATIONS, MAGIC, WIRE};
use masternode::node::{Node, NodeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PORT: u16 = 24100;

#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    name: String,
    unit: String,
    value: f64,
    refs: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, f64>,
}

impl Figure {
    fn new(name: impl Into<String>, unit: &str, value: f64) -> Figure {
        Figure { name: name.into(), unit: unit.into(), value, refs: BTreeMap::new(), extra: BTreeMap::new() }
    }
    fn with_ref(mut self, name: &str, value: f64) -> Figure {
        // A reference not measured in this run (--node-only) is left out.
        if value > 0.0 {
            self.refs.insert(name.into(), value);
        }
        self
    }
    fn with_extra(mut self, name: &str, value: f64) -> Figure {
        self.extra.insert(name.into(), value);
        self
    }
}

struct Args {
    quick: bool,
    /// Frames through the node only, no references: for profiling.
    node_only: bool,
    json: Option<PathBuf>,
    only: Option<String>,
    probe: Option<(String, usize)>,
    /// One frames measurement alone: path (`node` or `quinn`), frame size, count.
    case: Option<(String, usize, usize)>,
}

fn args() -> Args {
    let mut a = Args { quick: false, node_only: false, json: None, only: None, probe: None, case: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--node-only" => a.node_only = true,
            "--json" => a.json = it.next().map(PathBuf::from),
            "--only" => a.only = it.next(),
            "--case" => {
                let path = it.next().unwrap_or_default();
                let size = it.next().and_then(|n| n.parse().ok()).unwrap_or(64);
                let count = it.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
                a.case = Some((path, size, count));
            }
            "--probe" => {
                let kind = it.next().unwrap_or_default();
                let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(17);
                a.probe = Some((kind, n));
            }
            // cargo bench passes --bench; libtest-style flags are ignored.
            _ => {}
        }
    }
    a
}

/// A fresh block of loopback addresses, 127.77.S.1..
fn subnet() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn addr(net: u8, i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77 + (i / 250) as u8, net, (i % 250) as u8 + 1)), PORT)
}

struct Cluster {
    ids: Vec<Arc<Identity>>,
    members: Vec<Member>,
    network: Arc<Network>,
}

impl Cluster {
    fn new(n: usize, interval_ms: u64) -> Cluster {
        Self::with_keys(n, interval_ms, "")
    }

    /// A cluster whose network file has `keys` (top-level keys such as
    /// `max_block_txs = 10\n`) besides the rendered ones.
    fn with_keys(n: usize, interval_ms: u64, keys: &str) -> Cluster {
        let net = subnet();
        let ids: Vec<_> = (0..n).map(|_| Arc::new(Identity::generate().unwrap())).collect();
        let members: Vec<Member> =
            ids.iter().enumerate().map(|(i, id)| Member { id: id.id(), addr: addr(net, i) }).collect();
        let text = format!("{keys}{}", Network::render("bench", 1_764_000_000_000, interval_ms, n.min(3), &members));
        let network = Arc::new(Network::parse(Path::new("bench"), &text).unwrap());
        Cluster { ids, members, network }
    }

    fn net_config(&self, i: usize) -> NetConfig {
        let (_tx, tip) = watch::channel(Tip::default());
        NetConfig {
            identity: self.ids[i].clone(),
            network_id: self.network.id,
            members: self.members.iter().map(|m| (m.id, m.addr)).collect(),
            advertised: self.members[i].addr,
            listen: self.members[i].addr,
            transport: Transport::default(),
            request_timeout: Duration::from_secs(10),
            tip,
            protocol: BENCH_PROTOCOL,
            hooks: Default::default(),
        }
    }

    fn member_set(&self) -> Arc<HashSet<NodeId>> {
        Arc::new(self.members.iter().map(|m| m.id).collect())
    }

    /// A plain quinn endpoint with the same TLS as the node and the given transport.
    fn raw_endpoint(&self, i: usize, transport: Arc<quinn::TransportConfig>) -> quinn::Endpoint {
        net::bind_endpoint(
            self.members[i].addr,
            &self.ids[i],
            self.member_set(),
            transport,
            Default::default(),
            None,
            &GENERATIONS,
        )
        .unwrap()
    }

    fn raw_client(&self, i: usize, to: usize, transport: Arc<quinn::TransportConfig>) -> quinn::ClientConfig {
        net::client_config(&self.ids[i], self.ids[to].id(), transport, &GENERATIONS).unwrap()
    }
}

fn node_transport() -> Arc<quinn::TransportConfig> {
    net::quic_transport_config(&Transport::default()).unwrap()
}

fn frame(size: usize) -> Vec<u8> {
    // The same framing as the node: 4-byte length, then a body of `size` bytes.
    let mut f = (size as u32).to_be_bytes().to_vec();
    f.extend(std::iter::repeat_n(0xab, size));
    f
}

/// Counts frames in a byte stream without decoding their bodies.
struct FrameCounter {
    pending: Vec<u8>,
    skip: usize,
    frames: usize,
}

impl FrameCounter {
    fn new() -> Self {
        FrameCounter { pending: Vec::new(), skip: 0, frames: 0 }
    }
    fn feed(&mut self, mut data: &[u8]) {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.frames += 1;
                }
                if data.is_empty() {
                    return;
                }
                continue;
            }
            let need = 4 - self.pending.len();
            let n = need.min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() < 4 {
                return;
            }
            let len = u32::from_be_bytes([self.pending[0], self.pending[1], self.pending[2], self.pending[3]]) as usize;
            self.pending.clear();
            self.skip = len;
            if len == 0 {
                self.frames += 1;
            }
        }
    }
}

// ---------------------------------------------------------------- frames

/// Frames through the node: `Peers::send_many` with [`SEND_BATCH`] frames per
/// call (one look-up per call, one outbox lock per 4 KiB) and `Messages::recv_into`
/// (bodies as slices of the read runs), or, when `one_by_one`, `Peers::send`
/// per frame and `Messages::recv_batch` (a `Bytes` per body).
async fn frames_node(size: usize, count: usize, one_by_one: bool) -> f64 {
    frames_node_with(size, count, one_by_one, one_by_one).await
}

/// As [`frames_node`], sending one frame per `send` when `one_by_one` and
/// receiving a `Bytes` per body (`recv_batch`) when `bodies`.
async fn frames_node_with(size: usize, count: usize, one_by_one: bool, bodies: bool) -> f64 {
    let c = Cluster::new(2, 1000);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let (a, _ina) = net::start(c.net_config(0), stop.clone(), &tracker).unwrap();
    let (b, inb) = net::start(c.net_config(1), stop.clone(), &tracker).unwrap();
    while a.connected().is_empty() || b.connected().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let to = c.ids[1].id();
    // Message::Data's body carries a 1-byte kind and a varint length; size the
    // payload so the frame body equals `size` bytes, as in the references.
    let overhead = masternode::codec::body_len(&Message::Data(vec![0; size])) - size;
    let msg = bulk(&Message::Data(vec![0xab; size.saturating_sub(overhead).max(1)]));
    // The same shape as the raw quinn reference: the receiving side in a task
    // of its own, the sender in the caller's.
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        if bodies {
            let mut batch = Vec::with_capacity(1024);
            while got < count {
                got += inb.messages.recv_batch(1024, &mut batch).await.unwrap();
                batch.clear();
            }
        } else {
            let mut batch = net::Deliveries::new();
            while got < count {
                got += inb.messages.recv_into(1024, &mut batch).await.unwrap();
                batch.clear();
            }
        }
        inb
    });
    let start = Instant::now();
    if one_by_one {
        for _ in 0..count {
            // Waits (an await and its future) only when the outbox is full.
            if let Err(SendError::Full(_)) = a.send(to, &msg) {
                send_waiting(&a, to, &msg).await;
            }
        }
    } else {
        let batch = vec![msg; SEND_BATCH];
        let mut left = count;
        while left > 0 {
            let n = left.min(SEND_BATCH);
            match a.send_many(to, &batch[..n]) {
                Ok(()) => left -= n,
                Err(p) => {
                    assert!(matches!(p.error, SendError::Full(_)), "{p}");
                    left -= p.queued;
                    // The dropped frame is sent again once there is room.
                    a.writable(to).await.unwrap();
                }
            }
        }
    }
    let _inb = receiver.await.unwrap();
    let elapsed = start.elapsed();
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    count as f64 / elapsed.as_secs_f64()
}

/// Frames per `send_many` call: the producer's batch of messages.
const SEND_BATCH: usize = 64;

async fn frames_quinn(size: usize, count: usize) -> f64 {
    let c = Cluster::new(2, 1000);
    let t = node_transport();
    let server = c.raw_endpoint(1, t.clone());
    let client = c.raw_endpoint(0, t.clone());
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut recv = conn.accept_uni().await.unwrap();
        let mut counter = FrameCounter::new();
        while counter.frames < count {
            match recv.read_chunk(usize::MAX, true).await.unwrap() {
                Some(chunk) => counter.feed(&chunk.bytes),
                None => break,
            }
        }
        (conn, server)
    });
    let conn = client.connect_with(c.raw_client(0, 1, t), c.members[1].addr, net::SERVER_NAME).unwrap().await.unwrap();
    let f = frame(size);
    let start = Instant::now();
    let mut send = conn.open_uni().await.unwrap();
    let mut buf = Vec::with_capacity(64 * 1024 + f.len());
    for _ in 0..count {
        buf.extend_from_slice(&f);
        if buf.len() >= 64 * 1024 {
            send.write_all(&buf).await.unwrap();
            buf.clear();
        }
    }
    send.write_all(&buf).await.unwrap();
    let _keep = accept.await.unwrap();
    count as f64 / start.elapsed().as_secs_f64()
}

async fn frames_tcp_tls(size: usize, count: usize, batched: bool) -> f64 {
    let c = Cluster::new(2, 1000);
    let server_cfg = net::server_rustls(&c.ids[1], c.member_set(), Default::default(), &GENERATIONS).unwrap();
    let client_cfg = net::client_rustls(&c.ids[0], c.ids[1].id(), &GENERATIONS).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let listener = tokio::net::TcpListener::bind(c.members[1].addr).await.unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut counter = FrameCounter::new();
        let mut buf = vec![0u8; 64 * 1024];
        while counter.frames < count {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            counter.feed(&buf[..n]);
        }
    });
    let tcp = tokio::net::TcpStream::connect(c.members[1].addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(net::SERVER_NAME).unwrap();
    let tls_stream = connector.connect(name, tcp).await.unwrap();
    let f = frame(size);
    let start = Instant::now();
    if batched {
        let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, tls_stream);
        for _ in 0..count {
            w.write_all(&f).await.unwrap();
        }
        w.flush().await.unwrap();
        server.await.unwrap();
    } else {
        let mut s = tls_stream;
        for _ in 0..count {
            s.write_all(&f).await.unwrap();
        }
        s.flush().await.unwrap();
        server.await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn bench_frames(quick: bool, node_only: bool, wanted: &dyn Fn(&str) -> bool, out: &mut Vec<Figure>) {
    for size in [64usize, 256, 4096, 65536] {
        if !wanted(&format!("frames/size={size}")) {
            continue;
        }
        // Enough bytes that the slowest path runs for about a second.
        let budget: usize = if quick { 24 << 20 } else { 96 << 20 };
        let count = (budget / (size + 4)).clamp(1_000, if quick { 300_000 } else { 1_000_000 });
        // The batched references run several times faster than the node: give
        // them more messages so that every measurement lasts long enough to mean
        // something, and take the median of three, interleaved.
        let mut node = Vec::new();
        let mut one_by_one = Vec::new();
        let mut quinn = Vec::new();
        let mut tcp = Vec::new();
        let mut tcp_b = Vec::new();
        for _ in 0..3 {
            node.push(frames_node(size, count, false).await);
            if node_only {
                continue;
            }
            one_by_one.push(frames_node(size, count, true).await);
            quinn.push(frames_quinn(size, count * 4).await);
            tcp.push(frames_tcp_tls(size, count, false).await);
            tcp_b.push(frames_tcp_tls(size, count * 4, true).await);
        }
        let (node, quinn, tcp, tcp_b) = (
            percentile(&mut node, 0.5),
            percentile(&mut quinn, 0.5),
            percentile(&mut tcp, 0.5),
            percentile(&mut tcp_b, 0.5),
        );
        out.push(
            Figure::new(format!("frames/size={size}"), "msg/s", node)
                .with_ref("quinn", quinn)
                .with_ref("tcp_tls", tcp)
                .with_ref("tcp_tls_batched", tcp_b)
                .with_extra("messages", count as f64)
                .with_extra("one_send_per_frame_msg_s", percentile(&mut one_by_one, 0.5)),
        );
        report(out.last().unwrap());
    }
}

// ---------------------------------------------------------------- handshake

fn intro(c: &Cluster, i: usize) -> Intro {
    Intro {
        magic: MAGIC,
        versions: WIRE,
        network_id: c.network.id,
        node_id: c.ids[i].id(),
        listen: c.members[i].addr,
        tip: Tip::default(),
        software: "bench".into(),
        incarnation: i as u64,
    }
}

/// Serves handshakes on member `server`: ours (Hello/Welcome) or a raw 64 B echo.
fn serve_handshakes(c: &Arc<Cluster>, server: usize, ours: bool) -> quinn::Endpoint {
    let ep = c.raw_endpoint(server, node_transport());
    let accept_ep = ep.clone();
    let sc = c.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept_ep.accept().await {
            let sc = sc.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                if ours {
                    let any = |_: &NodeId| true;
                    let Some(key) = net::peer_node_id(&conn) else { return };
                    let expect = Expect { network_id: sc.network.id, versions: WIRE, tls_key: key, is_member: &any };
                    let _ = net::handshake_accept(&conn, &intro(&sc, server), &expect).await;
                } else if let Ok((mut s, mut r)) = conn.accept_bi().await {
                    let mut b = [0u8; 64];
                    if r.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        let _ = s.finish();
                    }
                }
                conn.closed().await;
            });
        }
    });
    ep
}

async fn handshake_times(
    c: &Arc<Cluster>,
    client: &quinn::Endpoint,
    from: usize,
    to: usize,
    rounds: usize,
    ours: bool,
) -> Vec<f64> {
    let t = node_transport();
    let any = |_: &NodeId| true;
    let expect = Expect { network_id: c.network.id, versions: WIRE, tls_key: c.ids[to].id(), is_member: &any };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let conn = client
            .connect_with(c.raw_client(from, to, t.clone()), c.members[to].addr, net::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        if ours {
            net::handshake_dial(&conn, &intro(c, from), &expect).await.unwrap();
        } else {
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            s.write_all(&[7u8; 64]).await.unwrap();
            s.finish().unwrap();
            let mut b = [0u8; 64];
            r.read_exact(&mut b).await.unwrap();
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        conn.close(0u32.into(), b"");
    }
    times
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn bench_handshake(quick: bool, out: &mut Vec<Figure>) {
    let rounds = if quick { 60 } else { 300 };
    let c = Arc::new(Cluster::new(4, 1000));
    let _ours_server = serve_handshakes(&c, 1, true);
    let _raw_server = serve_handshakes(&c, 3, false);
    let ours_client = c.raw_endpoint(0, node_transport());
    let raw_client = c.raw_endpoint(2, node_transport());
    // Interleave so drift on a noisy machine hits both equally.
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..4 {
        ours.extend(handshake_times(&c, &ours_client, 0, 1, rounds / 4, true).await);
        raw.extend(handshake_times(&c, &raw_client, 2, 3, rounds / 4, false).await);
    }
    out.push(
        Figure::new("handshake", "ms", percentile(&mut ours, 0.5))
            .with_ref("quinn", percentile(&mut raw, 0.5))
            .with_extra("p99_ms", percentile(&mut ours, 0.99)),
    );
    report(out.last().unwrap());
}

// ---------------------------------------------------------------- mesh

async fn mesh_node(n: usize) -> (f64, u64, u64) {
    let c = Cluster::new(n, 1000);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let bound: Vec<_> = (0..n).map(|i| net::bind(c.net_config(i)).unwrap()).collect();
    let start = Instant::now();
    let nets: Vec<_> = bound.into_iter().map(|b| b.run(stop.clone(), &tracker)).collect();
    loop {
        if nets.iter().all(|(p, _)| p.connected_count() == n - 1) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "mesh of {n} did not form");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let dials: u64 = nets.iter().map(|(p, _)| p.counters().dials.load(Ordering::Relaxed)).sum();
    let dups: u64 = nets.iter().map(|(p, _)| p.counters().duplicates_closed.load(Ordering::Relaxed)).sum();
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    (took, dials, dups)
}

async fn mesh_quinn(n: usize) -> f64 {
    let c = Arc::new(Cluster::new(n, 1000));
    let t = Arc::new(quinn::TransportConfig::default());
    let eps: Vec<_> = (0..n).map(|i| c.raw_endpoint(i, t.clone())).collect();
    let mut servers = Vec::new();
    for ep in &eps {
        let ep = ep.clone();
        servers.push(tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    if let Ok((mut s, mut r)) = conn.accept_bi().await {
                        let mut b = [0u8; 64];
                        if r.read_exact(&mut b).await.is_ok() {
                            let _ = s.write_all(&b).await;
                            let _ = s.finish();
                        }
                    }
                    conn.closed().await;
                });
            }
        }));
    }
    let start = Instant::now();
    let mut dials = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        for j in i + 1..n {
            let ep = ep.clone();
            let cfg = c.raw_client(i, j, t.clone());
            let to = c.members[j].addr;
            dials.push(tokio::spawn(async move {
                let conn = ep.connect_with(cfg, to, net::SERVER_NAME).unwrap().await.unwrap();
                let (mut s, mut r) = conn.open_bi().await.unwrap();
                s.write_all(&[1u8; 64]).await.unwrap();
                s.finish().unwrap();
                let mut b = [0u8; 64];
                r.read_exact(&mut b).await.unwrap();
                conn
            }));
        }
    }
    let mut conns = Vec::new();
    for d in dials {
        conns.push(d.await.unwrap());
    }
    let took = start.elapsed().as_secs_f64();
    for s in servers {
        s.abort();
    }
    for ep in &eps {
        ep.close(0u32.into(), b"");
    }
    took
}

async fn bench_mesh(_quick: bool, out: &mut Vec<Figure>) {
    for n in [8usize, 16, 32, 64] {
        let quinn = mesh_quinn(n).await;
        let (secs, dials, dups) = mesh_node(n).await;
        out.push(
            Figure::new(format!("mesh/n={n}"), "s", secs)
                .with_ref("quinn", quinn)
                .with_extra("dials", dials as f64)
                .with_extra("ideal_dials", (n * (n - 1) / 2) as f64)
                .with_extra("duplicates", dups as f64),
        );
        report(out.last().unwrap());
    }
}

// ---------------------------------------------------------------- broadcast

async fn bench_broadcast(quick: bool, out: &mut Vec<Figure>) {
    let n = 16;
    let count = if quick { 20_000 } else { 60_000 };
    let c = Cluster::new(n, 1000);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let bound: Vec<_> = (0..n).map(|i| net::bind(c.net_config(i)).unwrap()).collect();
    let mut nets: Vec<_> = bound.into_iter().map(|b| b.run(stop.clone(), &tracker)).collect();
    while !nets.iter().all(|(p, _)| p.connected_count() == n - 1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sender = nets[0].0.clone();
    let mut receivers = Vec::new();
    for (_, inbound) in nets.drain(1..) {
        let rx = inbound.messages;
        receivers.push(tokio::spawn(async move {
            let mut got = 0;
            let mut batch = Vec::with_capacity(1024);
            while got < count {
                got += rx.recv_batch(1024, &mut batch).await.unwrap();
                batch.clear();
            }
        }));
    }
    let msg = bulk(&Message::Data(vec![0x5a; 256]));
    let everyone: Vec<_> = c.ids.iter().skip(1).map(|i| i.id()).collect();
    let start = Instant::now();
    for _ in 0..count {
        let sent = sender.broadcast(&msg);
        if sent.len() < everyone.len() {
            for to in everyone.iter().filter(|p| !sent.contains(p)) {
                send_waiting(&sender, *to, &msg).await;
            }
        }
    }
    for r in receivers {
        r.await.unwrap();
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    out.push(Figure::new("broadcast/peers=15", "msg/s", rate).with_extra("messages", count as f64));
    report(out.last().unwrap());
}

// ---------------------------------------------------------------- commit

/// `commit/n=4` and `commit/n=7` at saturation: the highest offered rate that is
/// still committed in full with p99 at most four block intervals.
async fn bench_commit(quick: bool, out: &mut Vec<Figure>) {
    for n in [4, 7] {
        commit_saturation(n, quick, out).await;
    }
}

/// Block interval of the commit figures: 250 ms, or `COMMIT_INTERVAL_MS` from
/// the environment (to see how the limit moves with the interval). At 500 ms
/// the block's byte limit bounds the figure: 3 MiB of 256 B transactions per
/// block is 12,288, at most 24,576 tx/s.
fn commit_interval_ms() -> u64 {
    std::env::var("COMMIT_INTERVAL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(250)
}
/// The commit figures' network block limits: the defaults (3 MiB, 20,000
/// transactions), or `COMMIT_MAX_BLOCK_BYTES` and `COMMIT_MAX_BLOCK_TXS` from
/// the environment, written into the network file as `max_block_bytes` and
/// `max_block_txs`.
fn commit_block_keys() -> String {
    let mut keys = String::new();
    for (var, key) in [("COMMIT_MAX_BLOCK_BYTES", "max_block_bytes"), ("COMMIT_MAX_BLOCK_TXS", "max_block_txs")] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.parse::<usize>().ok()) {
            keys.push_str(&format!("{key} = {n}\n"));
        }
    }
    keys
}

/// p99 bound of a passing step, in block intervals.
const COMMIT_P99_INTERVALS: u64 = 4;

/// Searches the saturation rate of one cluster of `n` nodes: steps of offered load
/// on the same running cluster, doubling from a start rate until a step fails,
/// then bisecting between the best passing and the lowest failing rate. The
/// search stops at a step budget, or when the bracket is within an eighth.
async fn commit_saturation(n: usize, quick: bool, out: &mut Vec<Figure>) {
    let c = Cluster::with_keys(n, commit_interval_ms(), &commit_block_keys());
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..n {
        let identity =
            Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&c.ids[i].secret_seed())).unwrap();
        let listen = c.members[i].addr;
        let cfg = NodeConfig::assemble(
            (*c.network).clone(),
            Path::new("bench"),
            identity,
            listen,
            SocketAddr::new(listen.ip(), 0),
            dir.path().join(format!("node{i}")),
            Transport::default(),
        )
        .unwrap();
        nodes.push(Arc::new(Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap()));
    }
    while !nodes.iter().all(|n| n.height() >= 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load = Duration::from_secs(if quick { 4 } else { 9 });
    let budget = if quick { 6 } else { 9 };
    let mut rate: u64 = std::env::var("COMMIT_START_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(16_000);
    let mut best: Option<Step> = None;
    let mut lowest_fail: Option<Step> = None;
    for step in 0..budget {
        let s = commit_step(&nodes, step as u8 + 1, rate, load).await;
        println!(
            "  commit/n={n} step {}: offered {} tx/s, committed {}/{} ({} refused), p50 {:.0} ms, p99 {:.0} ms, queue growth {:.0} ms, cpu {:.2} s/s per node, {} blocks every {:.0} ms, fullest {} txs: {}",
            step + 1,
            s.offered,
            s.committed,
            s.submitted,
            s.refused,
            s.p50_ms,
            s.p99_ms,
            s.growth_ms,
            s.cpu_per_node,
            s.blocks,
            s.block_period_ms,
            s.fullest,
            if s.passed { "pass" } else { "fail" }
        );
        if s.passed {
            best = Some(s);
        } else if lowest_fail.as_ref().is_none_or(|f| s.offered < f.offered) {
            lowest_fail = Some(s);
        }
        // A backlog from a failed step must not count against the next one.
        let drain_by = Instant::now() + Duration::from_secs(15);
        while nodes.iter().any(|n| n.mempool_len() > 0) && Instant::now() < drain_by {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lo = best.as_ref().map(|b| b.offered);
        let hi = lowest_fail.as_ref().map(|f| f.offered);
        rate = match (lo, hi) {
            (Some(lo), None) => lo * 2,
            (None, Some(hi)) => hi / 2,
            (Some(lo), Some(hi)) if (hi - lo) * 8 > lo => (lo + hi) / 2,
            _ => break,
        };
        if rate < 500 {
            break;
        }
    }
    for node in nodes {
        if let Ok(node) = Arc::try_unwrap(node) {
            node.stop().await;
        }
    }
    let s = best.unwrap_or_else(Step::none);
    let mut f = Figure::new(format!("commit/n={n}"), "tx/s", s.committed_per_s)
        .with_extra("p50_ms", s.p50_ms)
        .with_extra("p99_ms", s.p99_ms)
        .with_extra("block_interval_ms", commit_interval_ms() as f64)
        .with_extra("max_block_bytes", c.network.limits().max_block_bytes as f64)
        .with_extra("max_block_txs", c.network.limits().max_block_txs as f64)
        .with_extra("offered_tx_per_s", s.offered as f64)
        .with_extra("tx_bytes", 256.0)
        .with_extra("cpu_s_per_s_per_node", s.cpu_per_node)
        .with_extra("process_cpu_s_per_s", s.cpu_per_node * n as f64)
        .with_extra("block_period_ms", s.block_period_ms)
        .with_extra("fullest_block_txs", s.fullest as f64);
    if let Some(fail) = lowest_fail {
        f = f.with_extra("failed_at_offered_tx_per_s", fail.offered as f64).with_extra("failed_p99_ms", fail.p99_ms);
    }
    out.push(f);
    report(out.last().unwrap());
}

/// One step of offered load and what became of it.
struct Step {
    offered: u64,
    submitted: usize,
    /// Submissions the mempool refused (full): the node is past its limit.
    refused: usize,
    committed: usize,
    committed_per_s: f64,
    p50_ms: f64,
    /// Over the transactions submitted after the first third of the step (the
    /// steady state), an uncommitted one counting as infinite.
    p99_ms: f64,
    /// CPU seconds per second of the whole process (nodes, their stores' threads
    /// and the load generator), divided by the number of nodes: the nodes run
    /// in one process on one runtime, so per-node attribution is an average.
    cpu_per_node: f64,
    /// How much longer the last third's submissions waited than the middle
    /// third's (median, ms): a growing queue.
    growth_ms: f64,
    /// Blocks committed during the step, the most transactions one carried, and
    /// the mean time between them.
    blocks: usize,
    fullest: usize,
    block_period_ms: f64,
    passed: bool,
}

impl Step {
    fn none() -> Step {
        Step {
            offered: 0,
            submitted: 0,
            refused: 0,
            committed: 0,
            committed_per_s: 0.0,
            growth_ms: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            cpu_per_node: 0.0,
            blocks: 0,
            fullest: 0,
            block_period_ms: 0.0,
            passed: false,
        }
    }
}

/// Process CPU time (user + system) in seconds, from /proc/self/stat.
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Offers `rate` tx/s of 256 B for `load`, spread over the nodes (an open loop:
/// latency is only meaningful where the queue does not grow), and watches node
/// 0's chain. Each transaction carries its step and its submission time, so the
/// watcher needs no shared map. The step passes when every accepted transaction
/// is committed, none is refused, and p99 is at most four block intervals.
/// Latencies are those of the transactions submitted after the step's first
/// third: a short step would otherwise hide a growing queue behind its start.
async fn commit_step(nodes: &[Arc<Node>], step: u8, rate: u64, load: Duration) -> Step {
    let n = nodes.len();
    let base = Instant::now();
    let stop_load = CancellationToken::new();
    let mut loaders = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let node = node.clone();
        let stop_load = stop_load.clone();
        loaders.push(tokio::spawn(async move {
            let (mut seq, mut refused) = (0u64, 0usize);
            let per_tick = rate as f64 / 100.0 / n as f64;
            let mut owed = 0.0;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop_load.is_cancelled() {
                tick.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let mut tx = vec![0u8; 256];
                    tx[..8].copy_from_slice(&seq.to_be_bytes());
                    tx[8] = k as u8;
                    tx[9] = step;
                    tx[10..18].copy_from_slice(&(base.elapsed().as_micros() as u64).to_be_bytes());
                    seq += 1;
                    if node.submit(tx).await.is_err() {
                        refused += 1;
                    }
                }
            }
            (seq as usize, refused)
        }));
    }
    let watch_node = nodes[0].clone();
    let mut next = watch_node.height() + 1;
    let mut latencies = Vec::new();
    let cpu_start = process_cpu_s();
    let mut cpu_end = None;
    let interval = Duration::from_millis(commit_interval_ms());
    let deadline = load + interval * (COMMIT_P99_INTERVALS as u32 + 2);
    let mut totals = None;
    let (mut blocks, mut fullest) = (0usize, 0usize);
    let mut committed = 0usize;
    let steady_from_us = (load / 3).as_micros() as u64;
    let (mut middle_third, mut last_third) = (Vec::new(), Vec::new());
    while base.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if base.elapsed() >= load && totals.is_none() {
            stop_load.cancel();
            cpu_end = Some(process_cpu_s());
            let (mut submitted, mut refused) = (0, 0);
            for l in loaders.drain(..) {
                let (s, r) = l.await.unwrap();
                submitted += s;
                refused += r;
            }
            totals = Some((submitted, refused));
        }
        let now_us = base.elapsed().as_micros() as u64;
        while next <= watch_node.height() {
            let Ok(Some(block)) = watch_node.store().block(next) else { break };
            blocks += 1;
            fullest = fullest.max(block.block.txs.len());
            for tx in &block.block.txs {
                if tx.len() == 256 && tx[9] == step {
                    let at = u64::from_be_bytes(tx[10..18].try_into().unwrap());
                    committed += 1;
                    // Latency in the steady state: a queue that grows shows in
                    // the later submissions, and a short step's start is left out.
                    let ms = now_us.saturating_sub(at) as f64 / 1000.0;
                    if at >= steady_from_us {
                        latencies.push(ms);
                    }
                    if at >= 2 * steady_from_us {
                        last_third.push(ms);
                    } else if at >= steady_from_us {
                        middle_third.push(ms);
                    }
                }
            }
            next += 1;
        }
        if let Some((submitted, refused)) = totals {
            if committed >= submitted - refused {
                break;
            }
        }
    }
    let (submitted, refused) = totals.unwrap_or((0, 0));
    let accepted = submitted - refused;
    let cpu = (cpu_end.unwrap_or_else(process_cpu_s) - cpu_start) / load.as_secs_f64();
    // Uncommitted transactions count as infinitely late.
    let late = accepted.saturating_sub(committed);
    latencies.resize(latencies.len() + late, f64::INFINITY);
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    // A queue that grows: the last third's submissions wait longer than the
    // middle third's by more than a quarter of a block interval (where the load
    // is carried, the medians differ by a few tens of ms). A step too short for
    // the p99 bound to catch a growing queue would otherwise pass above the limit.
    let growth_ms = percentile(&mut last_third, 0.5) - percentile(&mut middle_third, 0.5);
    let steady = growth_ms <= commit_interval_ms() as f64 / 4.0;
    // A load generator that could not keep up offered less than the rate.
    let offered_in_full = submitted as f64 >= 0.95 * rate as f64 * load.as_secs_f64();
    let passed = offered_in_full
        && steady
        && refused == 0
        && committed >= accepted
        && p99 <= (COMMIT_P99_INTERVALS * commit_interval_ms()) as f64;
    Step {
        offered: rate,
        submitted,
        refused,
        committed,
        committed_per_s: committed as f64 / load.as_secs_f64(),
        growth_ms,
        p50_ms: p50,
        p99_ms: p99,
        cpu_per_node: cpu / n as f64,
        blocks,
        fullest,
        block_period_ms: base.elapsed().as_secs_f64() * 1000.0 / blocks.max(1) as f64,
        passed,
    }
}

// ---------------------------------------------------------------- memory

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Child process: a mesh of `n` idle nodes (or raw quinn endpoints with quinn's
/// default transport settings); prints resident bytes per connection end.
async fn memory_probe(kind: &str, n: usize) {
    let ends = (n * (n - 1)) as f64;
    if kind == "node" {
        let c = Cluster::new(n, 1000);
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let bound: Vec<_> = (0..n).map(|i| net::bind(c.net_config(i)).unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_bytes();
        let nets: Vec<_> = bound.into_iter().map(|b| b.run(stop.clone(), &tracker)).collect();
        while !nets.iter().all(|(p, _)| p.connected_count() == n - 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_bytes();
        println!("{}", (after.saturating_sub(before)) as f64 / ends);
    } else {
        let c = Arc::new(Cluster::new(n, 1000));
        let t = Arc::new(quinn::TransportConfig::default());
        let eps: Vec<_> = (0..n).map(|i| c.raw_endpoint(i, t.clone())).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_bytes();
        let mut held = Vec::new();
        for ep in &eps {
            let ep = ep.clone();
            held.push(tokio::spawn(async move {
                let mut conns = Vec::new();
                while let Some(incoming) = ep.accept().await {
                    if let Ok(conn) = incoming.await {
                        conns.push(conn);
                    }
                }
            }));
        }
        let mut conns = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            for j in i + 1..n {
                let conn = ep.connect_with(c.raw_client(i, j, t.clone()), c.members[j].addr, net::SERVER_NAME).unwrap();
                conns.push(tokio::spawn(async move { conn.await.unwrap() }));
            }
        }
        let mut live = Vec::new();
        for cn in conns {
            live.push(cn.await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_bytes();
        println!("{}", (after.saturating_sub(before)) as f64 / ends);
    }
}

fn run_probe(kind: &str, n: usize) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe).args(["--probe", kind, &n.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN)
}

fn bench_memory(quick: bool, out: &mut Vec<Figure>) {
    let n = if quick { 17 } else { 33 };
    // Median of three runs each, alternating.
    let mut node = Vec::new();
    let mut quinn = Vec::new();
    for _ in 0..3 {
        node.push(run_probe("node", n));
        quinn.push(run_probe("quinn", n));
    }
    out.push(
        Figure::new("memory/idle_connection", "bytes", percentile(&mut node, 0.5))
            .with_ref("quinn", percentile(&mut quinn, 0.5))
            .with_extra("connection_ends", (n * (n - 1)) as f64),
    );
    report(out.last().unwrap());
}

// ---------------------------------------------------------------- output

fn report(f: &Figure) {
    let refs: Vec<String> = f
        .refs
        .iter()
        .map(|(k, v)| {
            let ratio = if *v != 0.0 { f.value / v } else { f64::NAN };
            format!("{k} {} ({ratio:.2}x)", fmt(*v))
        })
        .collect();
    let extra: Vec<String> = f.extra.iter().map(|(k, v)| format!("{k} {}", fmt(*v))).collect();
    println!("{:<26} {:>12} {:<6} {}  {}", f.name, fmt(f.value), f.unit, refs.join(", "), extra.join(", "));
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Some((kind, n)) = &args.probe {
        rt.block_on(memory_probe(kind, *n));
        return;
    }
    if let Some((path, size, count)) = &args.case {
        let rate = rt.block_on(async {
            match path.as_str() {
                "quinn" => frames_quinn(*size, *count).await,
                "node1" => frames_node(*size, *count, true).await,
                "nodeS" => frames_node_with(*size, *count, false, true).await,
                "nodeR" => frames_node_with(*size, *count, true, false).await,
                _ => frames_node(*size, *count, false).await,
            }
        });
        println!("frames/size={size} {path}: {count} messages, {} msg/s", fmt(rate));
        return;
    }
    // A group runs when a prefix names it or one of its figures
    // (`--only frames/size=64,frames/size=256`); a group of figures skips the
    // figures no prefix names.
    let only: Option<Vec<String>> = args.only.as_ref().map(|o| o.split(',').map(String::from).collect());
    let wanted = |name: &str| {
        only.as_ref().is_none_or(|ps| ps.iter().any(|p| name.starts_with(p.as_str()) || p.starts_with(name)))
    };
    let figure_wanted = |name: &str| only.as_ref().is_none_or(|ps| ps.iter().any(|p| name.starts_with(p.as_str())));
    let started = Instant::now();
    println!("{:<26} {:>12} {:<6} references (value/reference)", "figure", "value", "unit");
    let mut figures = Vec::new();
    rt.block_on(async {
        if wanted("frames") {
            bench_frames(args.quick, args.node_only, &figure_wanted, &mut figures).await;
        }
        if wanted("handshake") {
            bench_handshake(args.quick, &mut figures).await;
        }
        if wanted("mesh") {
            bench_mesh(args.quick, &mut figures).await;
        }
        if wanted("broadcast") {
            bench_broadcast(args.quick, &mut figures).await;
        }
        if wanted("commit") {
            bench_commit(args.quick, &mut figures).await;
        }
    });
    if wanted("memory") {
        bench_memory(args.quick, &mut figures);
    }
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "results": figures,
            "quick": args.quick,
            "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("wrote {}", path.display());
    }
}

/// The benchmarks' protocol: the node's own, with `Data` frames also allowed on
/// the gossip stream (the frames and broadcast figures send them).
const BENCH_PROTOCOL: net::Protocol = net::Protocol {
    gossip: bench_gossip_limit,
    request: PROTOCOL.request,
    response: PROTOCOL.response,
    urgent: PROTOCOL.urgent,
};

fn bench_gossip_limit(kind: u8) -> Option<usize> {
    match kind {
        masternode::chain::Kind::DATA => Some(masternode::chain::DATA_LIMIT),
        k => (PROTOCOL.gossip)(k),
    }
}

/// A frame queued in the transaction class, which drops when full: bulk senders
/// wait for room with [`send_waiting`] instead.
fn bulk(msg: &Message) -> Outgoing {
    Outgoing { frame: masternode::codec::encode(msg), class: net::Class::Tx, epoch: 0, wire: 3 }
}

/// Sends through the node's send path, waiting for room rather than dropping.
async fn send_waiting(p: &Peers, to: masternode::identity::NodeId, out: &Outgoing) {
    while let Err(SendError::Full(_)) = p.send(to, out) {
        p.writable(to).await.unwrap();
    }
}
