//! The transport following a member set that changes while it runs
//! (`Peers::set_members`): joiners admitted, members removed and moved, on real
//! QUIC sockets at distinct 127.x.y.z addresses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use masternode::config::Transport;
use masternode::identity::NodeId;
use masternode::net::{Direction, Inbound, Peers};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One node's transport, stoppable on its own.
struct Net {
    peers: Peers,
    _inbound: Inbound,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Net {
    /// Node `i` of `spec` at `at`, starting with the member set `members`.
    fn start(spec: &Spec, i: usize, at: SocketAddr, members: Vec<(NodeId, SocketAddr)>, transport: Transport) -> Net {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cfg = spec.net_config(i, at, members, transport);
        let (peers, inbound) = masternode::net::start(cfg, shutdown.clone(), &tracker).unwrap();
        Net { peers, _inbound: inbound, shutdown, tracker }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.expect("the transport stops");
    }

    fn dials(&self) -> u64 {
        counter(&self.peers.counters().dials)
    }

    /// Each connected peer with the generation of its connection.
    fn conns(&self) -> Vec<(NodeId, u64)> {
        let mut v: Vec<_> = self.peers.peers().iter().map(|p| (p.id, p.conn_id)).collect();
        v.sort();
        v
    }
}

async fn stop_nets(nets: Vec<Net>) {
    for n in nets {
        n.stop().await;
    }
}

/// Every node is connected to every other once, over a connection dialled by the
/// lower address of the pair (`at[i]` is node i's address).
fn assert_full_mesh(spec: &Spec, nets: &[Net], at: &[SocketAddr]) {
    for (i, n) in nets.iter().enumerate() {
        let peers = n.peers.peers();
        assert_eq!(peers.len(), nets.len() - 1, "node {i}: {peers:?}");
        for p in &peers {
            let j = (0..nets.len()).find(|&j| spec.id(j) == p.id).expect("a peer of the test");
            let want = if at[i] < at[j] { Direction::Outbound } else { Direction::Inbound };
            assert_eq!(p.direction, want, "node {i} to node {j}: dialled by the lower address");
            assert_eq!(p.addr, at[j], "node {i} knows node {j} at its address");
        }
    }
}

/// A node outside the set dials the members it knows and is refused at TLS; once
/// they add it, the four form a full mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_is_refused_at_tls_until_added_then_the_mesh_is_full() {
    init_logs();
    let spec = Spec::new(4);
    let all = spec.member_set();
    let at: Vec<SocketAddr> = (0..4).map(|i| spec.addr(i)).collect();
    let mut nets: Vec<Net> = (0..3).map(|i| Net::start(&spec, i, at[i], all[..3].to_vec(), fast_transport())).collect();
    // The joiner (the highest address: it waits, then dials after the passive wait).
    nets.push(Net::start(&spec, 3, at[3], all.clone(), fast_transport()));
    eventually("the three connect", Duration::from_secs(20), || {
        nets[..3].iter().all(|n| n.peers.connected_count() == 2)
    })
    .await;
    eventually("the three refuse the joiner at TLS", Duration::from_secs(20), || {
        nets[..3].iter().map(|n| n.peers.tls_refused()).sum::<u64>() >= 1
            && counter(&nets[3].peers.counters().tls_failed) >= 1
    })
    .await;
    assert_eq!(nets[3].peers.connected_count(), 0, "the joiner has no connection yet");

    for n in &nets[..3] {
        n.peers.set_members(all.clone());
    }
    eventually("full mesh of four", Duration::from_secs(20), || nets.iter().all(|n| n.peers.connected_count() == 3))
        .await;
    assert_full_mesh(&spec, &nets, &at);
    stop_nets(nets).await;
}

/// The removed member's connections are closed with the REMOVED code (it sees the
/// code), its later dials are refused at TLS and back off, and the remaining
/// members keep their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_closed_as_removed_then_refused_and_the_rest_stay_connected() {
    init_logs();
    let spec = Spec::new(4);
    let all = spec.member_set();
    let at: Vec<SocketAddr> = (0..4).map(|i| spec.addr(i)).collect();
    let nets: Vec<Net> = (0..4).map(|i| Net::start(&spec, i, at[i], all.clone(), fast_transport())).collect();
    eventually("full mesh", Duration::from_secs(20), || nets.iter().all(|n| n.peers.connected_count() == 3)).await;
    let removed = spec.id(3);
    let kept_conns: Vec<Vec<(NodeId, u64)>> =
        nets[..3].iter().map(|n| n.conns().into_iter().filter(|(id, _)| *id != removed).collect()).collect();
    let dials: Vec<u64> = nets[..3].iter().map(Net::dials).collect();
    let tls_failed = counter(&nets[3].peers.counters().tls_failed);
    let removed_dials = nets[3].dials();

    let t0 = Instant::now();
    for n in &nets[..3] {
        n.peers.set_members(all[..3].to_vec());
    }
    eventually("the removed node is disconnected everywhere", Duration::from_secs(10), || {
        nets[3].peers.connected_count() == 0 && nets[..3].iter().all(|n| !n.peers.is_connected(&removed))
    })
    .await;
    eventually("the removed node saw the REMOVED code from each member", Duration::from_secs(10), || {
        counter(&nets[3].peers.counters().removed_by_peer) >= 3
    })
    .await;
    eventually("its dials are refused at TLS", Duration::from_secs(20), || {
        counter(&nets[3].peers.counters().tls_failed) > tls_failed
            && nets[..3].iter().map(|n| n.peers.tls_refused()).sum::<u64>() >= 1
    })
    .await;
    // A rate over a window: backoff allows about four dials per member in four
    // seconds (0.5, 1, 2, 4 s steps); a redial loop would make hundreds.
    eventually("a four-second window", Duration::from_secs(10), || t0.elapsed() >= Duration::from_secs(4)).await;
    let made = nets[3].dials() - removed_dials;
    assert!(made <= 15, "the removed node backs off: {made} dials in {:?}", t0.elapsed());
    assert_eq!(nets[3].peers.connected_count(), 0, "and never gets back in");

    for (i, n) in nets[..3].iter().enumerate() {
        assert_eq!(n.conns(), kept_conns[i], "node {i} keeps its other connections");
        assert_eq!(n.dials(), dials[i], "node {i} dialled nobody");
    }
    stop_nets(nets).await;
}

/// A member restarted with its key at a new address: the others, told its new
/// address, dial it there at once (it waits: its own passive wait is long, so
/// only their dials can connect them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_member_is_dialled_at_its_new_address() {
    init_logs();
    let spec = Spec::new(3);
    let all = spec.member_set();
    let mut nets: Vec<Net> =
        (0..3).map(|i| Net::start(&spec, i, spec.addr(i), all.clone(), fast_transport())).collect();
    eventually("full mesh", Duration::from_secs(20), || nets.iter().all(|n| n.peers.connected_count() == 2)).await;

    // Node 0 (the lowest address: it dialled both) stops and comes back above them.
    nets.remove(0).stop().await;
    let x = spec.id(0);
    eventually("the others see it go", Duration::from_secs(20), || nets.iter().all(|n| !n.peers.is_connected(&x)))
        .await;
    let new_addr = addr(spec.net, 9);
    let mut moved = all.clone();
    moved.iter_mut().find(|(id, _)| *id == x).unwrap().1 = new_addr;
    let patient = Transport { passive_wait: Duration::from_secs(600), ..fast_transport() };
    nets.insert(0, Net::start(&spec, 0, new_addr, moved.clone(), patient));

    let t0 = Instant::now();
    for n in &nets[1..] {
        n.peers.set_members(moved.clone());
    }
    let took = eventually("connected at the new address", Duration::from_secs(20), || {
        nets.iter().all(|n| n.peers.connected_count() == 2)
    })
    .await;
    assert!(took < Duration::from_secs(5), "within a few seconds of the change: {took:?} ({:?})", t0.elapsed());
    let at = [new_addr, spec.addr(1), spec.addr(2)];
    assert_full_mesh(&spec, &nets, &at);
    stop_nets(nets).await;
}

/// Publishing the set the transport already follows closes nothing and dials
/// nobody, whatever the order of its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_member_set_again_changes_nothing() {
    init_logs();
    let spec = Spec::new(3);
    let all = spec.member_set();
    let nets: Vec<Net> = (0..3).map(|i| Net::start(&spec, i, spec.addr(i), all.clone(), fast_transport())).collect();
    eventually("full mesh", Duration::from_secs(20), || nets.iter().all(|n| n.peers.connected_count() == 2)).await;
    let state = |n: &Net| {
        let c = n.peers.counters();
        (
            n.conns(),
            counter(&c.dials),
            counter(&c.handshakes_ok),
            counter(&c.handshakes_failed),
            counter(&c.duplicates_closed),
        )
    };
    let before: Vec<_> = nets.iter().map(state).collect();
    let loops: Vec<u64> = nets.iter().map(|n| counter(&n.peers.counters().manager_loops)).collect();
    let mut reordered = all.clone();
    reordered.reverse();
    for n in &nets {
        n.peers.set_members(reordered.clone());
    }
    // Two turns of each manager's loop: the second began after the set was
    // published, and a turn applies a newly published set first.
    eventually("every manager applied the set", Duration::from_secs(10), || {
        nets.iter().zip(&loops).all(|(n, l)| counter(&n.peers.counters().manager_loops) >= l + 2)
    })
    .await;
    let after: Vec<_> = nets.iter().map(state).collect();
    assert_eq!(before, after, "no close, no dial, no handshake");
    stop_nets(nets).await;
}
