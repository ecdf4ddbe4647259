//! Membership on a running network: members join, leave, move and rotate keys
//! through signed approvals committed on chain, under a transaction load, and the
//! chain never stops. Real nodes on distinct loopback addresses, real storage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use masternode::admin::ChangeRequestError;
use masternode::chain::ChangeError;
use masternode::chain::ChangeRequest;
use masternode::config::Network;
use masternode::identity::NodeId;
use masternode::node::{Node, NodeOptions};
use tokio_util::sync::CancellationToken;

const INTERVAL_MS: u64 = 1000;

/// The genesis of the first `n` members of `spec`.
fn genesis(spec: &Spec, n: usize) -> Network {
    spec.network_with("members", &spec.members[..n])
}

async fn start(spec: &Spec, i: usize, network: &Network) -> Node {
    spec.start_with(i, network.clone(), fast_transport(), Default::default()).await
}

/// Whether every node in `nodes` has `id` in its set at the next height.
fn all_see(nodes: &[&Node], id: NodeId, member: bool) -> bool {
    nodes.iter().all(|n| n.members().membership.current().contains(&id) == member)
}

/// Asks each of `approvers` to approve `request`; each must accept.
async fn approve(nodes: &[Node], approvers: &[usize], request: ChangeRequest) {
    for &i in approvers {
        let submitted = nodes[i].request_change(request.clone()).await;
        assert!(submitted.is_ok(), "node {i} refused {request:?}: {submitted:?}");
    }
}

/// Submits a small transaction to `node` every 20 ms until `stop` is set.
fn load(node_txs: Arc<tokio::sync::Mutex<Vec<Node>>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            {
                let nodes = node_txs.lock().await;
                if let Some(n) = nodes.first() {
                    if n.submit(format!("tx {sent}").into_bytes()).await.is_ok() {
                        sent += 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    })
}

/// The longest gap between consecutive blocks' timestamps from `from` on, in ms.
fn longest_pause(node: &Node, from: u64) -> (u64, u64) {
    let store = node.store();
    let top = node.height();
    let mut worst = (0, 0);
    let mut prev = store.block(from.max(1)).unwrap().unwrap().block.header.timestamp_ms;
    for h in from.max(1) + 1..=top {
        let ts = store.block(h).unwrap().unwrap().block.header.timestamp_ms;
        if ts - prev > worst.0 {
            worst = (ts - prev, h);
        }
        prev = ts;
    }
    worst
}

/// Whether `id` signed the certificate of some block after `after` on `node`.
fn signed_after(node: &Node, id: NodeId, after: u64) -> bool {
    (after + 1..=node.height()).any(|h| node.store().block(h).unwrap().is_some_and(|c| c.cert.signers().contains(&id)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_set_grows_from_4_to_7_and_shrinks_back_to_4_under_load_without_stopping() {
    let spec = Spec::new(7);
    let network = genesis(&spec, 4);
    let mut nodes = Vec::new();
    for i in 0..7 {
        // Nodes 4, 5 and 6 start as joiners: their keys are not in the genesis.
        nodes.push(start(&spec, i, &network).await);
    }
    {
        let members: Vec<&Node> = nodes[..4].iter().collect();
        eventually("the genesis members commit", Duration::from_secs(30), || members.iter().all(|n| n.height() >= 2))
            .await;
    }
    assert!(!nodes[4].status().member, "a joiner says it is not a member yet");
    let start_height = nodes[0].height();
    let nodes = Arc::new(tokio::sync::Mutex::new(nodes));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = load(nodes.clone(), stop.clone());

    // Grow: each addition approved by more than two thirds of the set it joins.
    for (joiner, approvers) in [(4usize, vec![0, 1, 2]), (5, vec![0, 1, 2, 3]), (6, vec![0, 1, 2, 3, 4])] {
        let guard = nodes.lock().await;
        let id = spec.id(joiner);
        let before = guard[0].height();
        approve(&guard, &approvers, ChangeRequest::Add { id, addr: spec.addr(joiner) }).await;
        drop(guard);
        let deadline = Duration::from_secs(40);
        let what = format!("node {joiner} is a member everywhere and signs blocks");
        let started = std::time::Instant::now();
        loop {
            let guard = nodes.lock().await;
            // Joiners not added yet reach nobody and see nothing.
            let all: Vec<&Node> = guard[..=joiner].iter().collect();
            if all_see(&all, id, true) && signed_after(&guard[0], id, before) {
                break;
            }
            drop(guard);
            assert!(started.elapsed() < deadline, "not within {deadline:?}: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Shrink: 7 -> 4.
    for (leaver, approvers) in [(6usize, vec![0, 1, 2, 3, 4]), (5, vec![0, 1, 2, 3, 4]), (4, vec![0, 1, 2, 3])] {
        let guard = nodes.lock().await;
        let id = spec.id(leaver);
        approve(&guard, &approvers, ChangeRequest::Remove { id }).await;
        drop(guard);
        let deadline = Duration::from_secs(30);
        let started = std::time::Instant::now();
        loop {
            let guard = nodes.lock().await;
            let staying: Vec<&Node> = guard.iter().enumerate().filter(|(i, _)| *i < 4).map(|(_, n)| n).collect();
            let closed = guard[..4].iter().all(|n| !n.peers().is_connected(&id));
            if all_see(&staying, id, false) && closed {
                break;
            }
            drop(guard);
            assert!(started.elapsed() < deadline, "node {leaver} removed and disconnected within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A few blocks with four members again.
    let h = nodes.lock().await[0].height();
    eventually("blocks after the shrink", Duration::from_secs(20), || {
        nodes.try_lock().map(|g| g[0].height() >= h + 3).unwrap_or(false)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    let mut nodes = Arc::try_unwrap(nodes).ok().unwrap().into_inner();
    let (pause, at) = longest_pause(&nodes[0], start_height);
    eprintln!("{sent} transactions sent; longest pause between blocks {pause} ms (before height {at})");
    assert!(pause <= 5 * INTERVAL_MS, "a pause of {pause} ms before height {at}");
    let tx_blocks = (start_height..=nodes[0].height())
        .filter(|h| nodes[0].store().block(*h).unwrap().is_some_and(|c| !c.block.txs.is_empty()))
        .count();
    assert!(tx_blocks > 10, "the load was committed ({tx_blocks} blocks with transactions)");

    // A member that lost its data dir syncs from genesis through every change,
    // verifying each certificate against its own height's set.
    let node3 = nodes.remove(3);
    node3.stop().await;
    std::fs::remove_dir_all(spec.data_dir(3)).unwrap();
    let node3 = start(&spec, 3, &network).await;
    let top = nodes[0].height();
    eventually("the wiped member catches up", Duration::from_secs(60), || node3.height() >= top).await;
    nodes.insert(3, node3);
    let stores: Vec<_> = nodes.iter().map(|n| n.store().clone()).collect();
    check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moves_to_a_new_address_and_its_peers_follow() {
    let spec = Spec::new(4);
    let network = genesis(&spec, 4);
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(start(&spec, i, &network).await);
    }
    eventually("first blocks", Duration::from_secs(30), || nodes.iter().all(|n| n.height() >= 2)).await;
    // Node 2 announces its new address, signed by itself alone.
    let new_addr: SocketAddr = SocketAddr::new(addr(spec.net, 9).ip(), PORT);
    let me = spec.id(2);
    nodes[2].request_change(ChangeRequest::SetAddr { addr: new_addr }).await.unwrap();
    eventually("the new address in force everywhere", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.members().membership.current().get(&me).is_some_and(|m| m.addr == new_addr))
    })
    .await;
    // It moves: stopped, and started again on the new address, same key and data.
    let moved = nodes.remove(2);
    moved.stop().await;
    let mut cfg = spec.config(2, network.clone(), fast_transport());
    cfg.listen = new_addr;
    cfg.admin = SocketAddr::new(new_addr.ip(), 0);
    let moved = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
    let took = eventually("the others reconnect to it at its new address", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.peers().peers().iter().any(|p| p.id == me && p.addr == new_addr))
    })
    .await;
    eprintln!("peers reconnected to the moved member {} ms after it restarted", took.as_millis());
    let h = nodes[0].height();
    nodes.insert(2, moved);
    eventually("blocks signed by the moved member", Duration::from_secs(20), || signed_after(&nodes[0], me, h)).await;
    let stores: Vec<_> = nodes.iter().map(|n| n.store().clone()).collect();
    check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_rotated_by_adding_the_new_and_removing_the_old() {
    let spec = Spec::new(5);
    let network = genesis(&spec, 4);
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(start(&spec, i, &network).await);
    }
    eventually("first blocks", Duration::from_secs(30), || nodes[..4].iter().all(|n| n.height() >= 2)).await;
    let start_height = nodes[0].height();
    let (old, new) = (spec.id(3), spec.id(4));
    // The operator of node 3 runs a second node (4) with a new key; the members
    // add it, then remove the old key.
    approve(&nodes, &[0, 1, 2], ChangeRequest::Add { id: new, addr: spec.addr(4) }).await;
    let h = nodes[0].height();
    eventually("the new key signs", Duration::from_secs(30), || signed_after(&nodes[0], new, h)).await;
    approve(&nodes, &[0, 1, 2, 4], ChangeRequest::Remove { id: old }).await;
    eventually("the old key is out everywhere", Duration::from_secs(30), || {
        let staying: Vec<&Node> = [0, 1, 2, 4].iter().map(|i| &nodes[*i]).collect();
        all_see(&staying, old, false)
    })
    .await;
    let h = nodes[0].height();
    eventually("blocks after the rotation", Duration::from_secs(20), || nodes[0].height() >= h + 3).await;
    let (pause, at) = longest_pause(&nodes[0], start_height);
    assert!(pause <= 5 * INTERVAL_MS, "a pause of {pause} ms before height {at}");
    // No key signed twice at one height and round: each certificate holds one
    // precommit per voter (checked), and the removed key signs nothing after it
    // left the set.
    let removed_at = nodes[0].members().membership.applied();
    let late: Vec<u64> = (h + 1..=removed_at)
        .filter(|x| nodes[0].store().block(*x).unwrap().is_some_and(|c| c.cert.signers().contains(&old)))
        .collect();
    assert!(late.is_empty(), "the old key signed at heights {late:?} after its removal");
    let stores: Vec<_> = nodes.iter().map(|n| n.store().clone()).collect();
    check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_break_the_rules_are_refused_with_a_reason_and_the_chain_goes_on() {
    let spec = Spec::new(5);
    let network = genesis(&spec, 3);
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(start(&spec, i, &network).await);
    }
    eventually("first blocks", Duration::from_secs(30), || nodes[..3].iter().all(|n| n.height() >= 2)).await;
    let refused = |r: Result<_, ChangeRequestError>| match r {
        Err(ChangeRequestError::Refused(e)) => e,
        other => panic!("accepted: {other:?}"),
    };
    // (what, the node asked, the request, the reason)
    let cases: Vec<(&str, usize, ChangeRequest, ChangeError)> = vec![
        (
            "a joiner approving anything",
            3,
            ChangeRequest::Add { id: spec.id(4), addr: spec.addr(4) },
            ChangeError::NotAMember(spec.id(3)),
        ),
        (
            "adding a member",
            0,
            ChangeRequest::Add { id: spec.id(1), addr: spec.addr(4) },
            ChangeError::AlreadyMember(spec.id(1)),
        ),
        (
            "an address another member holds",
            0,
            ChangeRequest::Add { id: spec.id(4), addr: spec.addr(1) },
            ChangeError::AddressInUse(spec.addr(1), spec.id(1)),
        ),
        (
            "going below min_active",
            0,
            ChangeRequest::Remove { id: spec.id(2) },
            ChangeError::BelowMinActive { members: 2, min_active: 3 },
        ),
        ("removing a stranger", 0, ChangeRequest::Remove { id: spec.id(4) }, ChangeError::UnknownMember(spec.id(4))),
        (
            "a joiner announcing an address",
            3,
            ChangeRequest::SetAddr { addr: spec.addr(4) },
            ChangeError::UnknownMember(spec.id(3)),
        ),
    ];
    for (what, i, request, reason) in cases {
        assert_eq!(refused(nodes[i].request_change(request).await), reason, "{what}");
    }
    let h = nodes[0].height();
    eventually("blocks go on", Duration::from_secs(20), || nodes[0].height() >= h + 3).await;
    for n in &nodes[..3] {
        let view = n.members();
        assert_eq!(view.membership.current().len(), 3, "nothing changed");
        assert!(view.membership.pending().is_empty() && view.waiting.is_empty(), "nothing pending");
    }
    stop_all(nodes).await;
}

/// Every genesis key but one is replaced; then the remaining genesis member
/// loses its data dir. Its genesis names no member that is still there (three
/// left the set, the new ones are unknown to it), so it catches up only
/// through a `bootstrap` peer: from there certificates prove every block and
/// change, and it is a voting member again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_catches_up_through_a_bootstrap_peer_after_the_genesis_keys_left() {
    let spec = Spec::new(7);
    let network = genesis(&spec, 4);
    let mut nodes = Vec::new();
    for i in 0..7 {
        nodes.push(start(&spec, i, &network).await);
    }
    eventually("first blocks", Duration::from_secs(30), || nodes[..4].iter().all(|n| n.height() >= 2)).await;
    for joiner in 4..7 {
        approve(&nodes, &[0, 1, 2, 3], ChangeRequest::Add { id: spec.id(joiner), addr: spec.addr(joiner) }).await;
    }
    eventually("the joiners are members everywhere", Duration::from_secs(40), || {
        let all: Vec<&Node> = nodes.iter().collect();
        (4..7).all(|j| all_see(&all, spec.id(j), true))
    })
    .await;
    for leaver in 0..3 {
        approve(&nodes, &[0, 1, 2, 3, 4, 5, 6], ChangeRequest::Remove { id: spec.id(leaver) }).await;
    }
    eventually("genesis members 0, 1 and 2 are out everywhere", Duration::from_secs(40), || {
        let staying: Vec<&Node> = nodes[3..].iter().collect();
        (0..3).all(|l| all_see(&staying, spec.id(l), false))
    })
    .await;
    let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    for node in &mut nodes[..4] {
        node.take().unwrap().stop().await;
    }
    std::fs::remove_dir_all(spec.data_dir(3)).unwrap();
    let live = |nodes: &[Option<Node>]| nodes[4..].iter().map(|n| n.as_ref().unwrap().height()).min().unwrap();

    // Without a bootstrap peer it finds no one: its genesis names only the
    // members that left and itself.
    let wiped = start(&spec, 3, &network).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(wiped.height(), 0, "caught up although its genesis names no member that is still there");
    assert!(live(&nodes) > 5, "the new set goes on");
    wiped.stop().await;

    let bootstrap = vec![masternode::config::Member { id: spec.id(4), addr: spec.addr(4) }];
    // The stopped node's socket may take a moment to close.
    let mut tries = 0;
    let node3 = loop {
        let mut cfg = spec.config(3, network.clone(), fast_transport());
        cfg.bootstrap = bootstrap.clone();
        match Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await {
            Ok(node) => break node,
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    let top = live(&nodes);
    let took = eventually("the wiped member catches up through its bootstrap peer", Duration::from_secs(60), || {
        node3.height() >= top
    })
    .await;
    eprintln!("caught up {top} blocks through the bootstrap peer in {} ms", took.as_millis());
    let h = node3.height();
    eventually("blocks signed by it again", Duration::from_secs(30), || {
        signed_after(nodes[4].as_ref().unwrap(), spec.id(3), h)
    })
    .await;
    assert!(
        node3.peers().is_connected(&spec.id(5)),
        "it reaches the members its chain names, not only the bootstrap peer"
    );
    let mut nodes: Vec<Node> = nodes.into_iter().flatten().collect();
    nodes.insert(0, node3);
    let stores: Vec<_> = nodes.iter().map(|n| n.store().clone()).collect();
    check_chains_of(&network, &stores.iter().collect::<Vec<_>>());
    stop_all(nodes).await;
}
