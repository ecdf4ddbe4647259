//! Wire versions across releases, on real QUIC sockets: a node of this release
//! meets a node of 0.1.0 (ALPN `masternode/1`, version-3 Hellos) in either
//! direction, two nodes of this release use wire 4, and ranges with no version
//! in common end in a typed `Reject` naming both ranges, reported once per peer.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::*;
use masternode::codec::{decode_single, encode};
use masternode::net::{Class, Direction, Outgoing, SendError, TestHooks};
use masternode::net::{
    Expect, Generation, HandshakeError, HandshakeMsg, Intro, LegacyIntro, LegacyMsg, Mismatch, RejectReason, Rejection,
    Tip, Versions, MAGIC, WIRE,
};

/// What a node of 0.1.0 speaks, as far as the handshake goes.
fn release_0_1_0() -> TestHooks {
    TestHooks { versions: Some(Versions::exactly(3)), generations: Some(vec![Generation::V1]), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_0_1_0_is_met_at_wire_3_in_either_direction_and_two_of_this_release_use_4() {
    let spec = Spec::new(3);
    // The old node sits between the others: node 0 dials it, it dials node 2.
    let a = spec.start(0, fast_transport()).await;
    let old = spec.start_with(1, spec.network(), fast_transport(), release_0_1_0()).await;
    let c = spec.start(2, fast_transport()).await;
    let nodes = [&a, &old, &c];
    eventually("full mesh across releases", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.peers().connected().len() == 2)
    })
    .await;
    let wire = |n: &masternode::node::Node, peer: &masternode::node::Node| n.peers().wire_versions()[&peer.id()];
    assert_eq!((wire(&a, &old), wire(&old, &a)), (3, 3), "node 0 dialled the old node: masternode/1");
    assert_eq!((wire(&old, &c), wire(&c, &old)), (3, 3), "the old node dialled node 2: masternode/1");
    assert_eq!((wire(&a, &c), wire(&c, &a)), (4, 4), "two nodes of this release: wire 4");
    let direction = |n: &masternode::node::Node, peer: &masternode::node::Node| {
        n.peers().peers().into_iter().find(|p| p.id == peer.id()).unwrap().direction
    };
    assert_eq!(direction(&a, &old), Direction::Outbound);
    assert_eq!(direction(&old, &c), Direction::Outbound);
    // `/status` shows each peer's version.
    let s = a.status();
    let shown = |id: masternode::identity::NodeId| {
        s.peers.iter().find(|p| p.node_id == id.to_hex()).and_then(|p| p.wire_version)
    };
    assert_eq!((shown(old.id()), shown(c.id())), (Some(3), Some(4)));
    for n in nodes {
        assert_eq!(n.status().counters.handshakes_failed, 0, "no attempt failed");
    }
    // The chain runs across the two versions.
    eventually("blocks at every node", Duration::from_secs(30), || nodes.iter().all(|n| n.height() >= 3)).await;
    // A frame that needs wire 4 goes to the node of this release only.
    let frame =
        Outgoing { frame: encode(&masternode::chain::Message::Tx(vec![7])), class: Class::Tx, epoch: 0, wire: 4 };
    assert_eq!(a.peers().broadcast(&frame), vec![c.id()]);
    assert_eq!(a.peers().send(old.id(), &frame), Err(SendError::Unsupported { peer: old.id(), wire: 3, needs: 4 }));
    stop_all(vec![a, old, c]).await;
}

/// The handshake as 0.1.0 sends it, byte for byte, from a raw client that offers
/// only `masternode/1`: a version-2 Hello gets 0.1.0's Reject, a version-3 Hello
/// a `masternode/1` Welcome.
#[tokio::test]
async fn a_raw_masternode_1_hello_gets_the_answer_0_1_0_would_give() {
    let spec = Spec::new(2);
    let node = spec.start(1, beside_hostile_transport()).await;
    let raw = Hostile::new(&spec, 0);
    let transport = masternode::net::quic_transport_config(&fast_transport()).unwrap();
    let hello = |version| LegacyIntro {
        magic: MAGIC,
        version,
        network_id: spec.network().id,
        node_id: spec.id(0),
        listen: spec.addr(0),
        tip: Tip::default(),
        software: "masternode/0.1.0".into(),
        incarnation: rand_incarnation(),
    };
    let mut answers = Vec::new();
    for version in [2, 3] {
        let client =
            masternode::net::client_config(&spec.ids[0], spec.id(1), transport.clone(), &[Generation::V1]).unwrap();
        let conn =
            raw.endpoint.connect_with(client, spec.addr(1), masternode::net::SERVER_NAME).unwrap().await.unwrap();
        assert_eq!(Generation::of(&conn), Some(Generation::V1), "the server met the old ALPN");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode(&LegacyMsg::Hello(hello(version)))).await.unwrap();
        send.finish().unwrap();
        let bytes = recv.read_to_end(2048).await.unwrap();
        answers.push((bytes.clone(), decode_single::<LegacyMsg>(&bytes).unwrap()));
        if version == 3 {
            eventually("the raw peer is connected at wire 3", Duration::from_secs(5), || {
                node.peers().wire_versions().get(&spec.id(0)) == Some(&3)
            })
            .await;
        }
    }
    assert_eq!(answers[0].0, [0, 0, 0, 2, 2, 1], "0.1.0's Reject(UnsupportedVersion), byte for byte");
    match &answers[1].1 {
        LegacyMsg::Welcome(w) => {
            assert_eq!((w.version, w.node_id), (3, spec.id(1)));
            assert!(w.software.starts_with("masternode/0.2"), "{}", w.software);
        }
        other => panic!("expected a Welcome, got {other:?}"),
    }
    node.stop().await;
}

/// A later release announcing wire 5..6 over `masternode/2`: the typed Reject
/// carries both ranges, also when the rest of its Hello is laid out in a way
/// this release cannot decode.
#[tokio::test]
async fn a_hello_of_a_later_release_gets_the_typed_reject_with_both_ranges() {
    let spec = Spec::new(2);
    let node = spec.start(1, beside_hostile_transport()).await;
    let raw = Hostile::new(&spec, 0);
    let later = Versions { min: 5, max: 6 };
    let intro = Intro {
        magic: MAGIC,
        versions: later,
        network_id: spec.network().id,
        node_id: spec.id(0),
        listen: spec.addr(0),
        tip: Tip::default(),
        software: "masternode/9.0.0".into(),
        incarnation: rand_incarnation(),
    };
    let any = |_: &masternode::identity::NodeId| true;
    let expect = Expect { network_id: spec.network().id, versions: later, tls_key: spec.id(1), is_member: &any };
    let conn = raw.connect_tls(&spec, 1).await;
    assert_eq!(Generation::of(&conn), Some(Generation::V2));
    let err = masternode::net::handshake_dial(&conn, &intro, &expect).await.unwrap_err();
    let mismatch = Mismatch { ours: later, theirs: WIRE };
    assert!(
        matches!(err, HandshakeError::RejectedByPeer(RejectReason::UnsupportedVersion, Some(m)) if m == mismatch),
        "{err:?}"
    );
    assert!(err.to_string().contains("peer speaks wire 3..4, this node 5..6: upgrade the peer"), "{err}");

    // The same range at the head of a Hello whose later fields do not decode here.
    let conn = raw.connect_tls(&spec, 1).await;
    let mut frame = encode(&HandshakeMsg::Hello(Intro { versions: Versions { min: 7, max: 9 }, ..intro })).to_vec();
    frame.extend_from_slice(b"a field of release 9");
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    let answer = decode_single::<HandshakeMsg>(&recv.read_to_end(2048).await.unwrap()).unwrap();
    assert_eq!(
        answer,
        HandshakeMsg::Reject(Rejection::UnsupportedVersion { ours: WIRE, theirs: Versions { min: 7, max: 9 } })
    );
    eventually("both rejections counted", Duration::from_secs(5), || {
        node.status().rejects_sent["unsupported_version"] >= 2
    })
    .await;
    assert!(node.peers().connected().is_empty());
    node.stop().await;
}

/// Every line logged at warn or above in this test binary.
fn warn_lines() -> Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_ansi(false)
                .with_writer(move || Sink(sink.clone()))
                .try_init();
            lines
        })
        .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_with_no_version_in_common_are_warned_once_per_peer_at_both_ends() {
    let lines = warn_lines();
    let spec = Spec::new(3);
    // The later node has the lowest address: it dials both others, again and
    // again with backoff, and after their passive wait they dial it too.
    let later = TestHooks { versions: Some(Versions { min: 5, max: 6 }), ..Default::default() };
    let misfit = spec.start_with(0, spec.network(), fast_transport(), later).await;
    let b = spec.start(1, fast_transport()).await;
    let c = spec.start(2, fast_transport()).await;
    eventually("the pair of this release connects", Duration::from_secs(20), || b.peers().connected().len() == 1).await;
    eventually("several attempts each way", Duration::from_secs(30), || {
        misfit.status().counters.dials >= 4 && b.status().counters.dials + c.status().counters.dials >= 2
    })
    .await;
    assert!(misfit.peers().connected().is_empty());
    for n in [&b, &c] {
        assert!(n.status().rejects_sent["unsupported_version"] >= 1, "{:?}", n.status().rejects_sent);
    }
    assert!(misfit.status().rejects_received["unsupported_version"] >= 2);
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    let count = |peer: masternode::identity::NodeId, says: &str| {
        text.lines()
            .filter(|l| l.contains("no wire version in common") && l.contains(&peer.short()) && l.contains(says))
            .count()
    };
    let upgrade_this = "peer speaks wire 5..6, this node 3..4: upgrade this node";
    assert_eq!(count(misfit.id(), upgrade_this), 2, "one line at each node of this release:\n{text}");
    let upgrade_peer = "peer speaks wire 3..4, this node 5..6: upgrade the peer";
    assert_eq!(count(b.id(), upgrade_peer), 1, "one line at the later node per peer:\n{text}");
    assert_eq!(count(c.id(), upgrade_peer), 1, "{text}");
    stop_all(vec![misfit, b, c]).await;
}

/// Takes and drops whatever the peer of `conn` sends on its streams, so a
/// member played by the test is never too slow to keep.
fn drain(conn: &quinn::Connection) {
    let conn = conn.clone();
    tokio::spawn(async move {
        while let Ok(mut stream) = conn.accept_uni().await {
            tokio::spawn(async move { while let Ok(Some(_)) = stream.read_chunk(64 * 1024, true).await {} });
        }
    });
}

fn plan_approvals(c: &masternode::chain::Committed) -> usize {
    c.block.header.changes.iter().filter(|sa| sa.approval.change.plan().is_some()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_waits_while_a_member_speaks_wire_3_and_is_carried_once_it_speaks_4() {
    use masternode::chain::ChangeRequest;
    use masternode::chain::{Change, Plan};
    let spec = Spec::new(4);
    let network = spec.network_paced(&spec.name, &spec.members, 250);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(spec.start_with(i, network.clone(), fast_transport(), TestHooks::default()).await);
    }
    let old = spec.start_with(3, network.clone(), fast_transport(), release_0_1_0()).await;
    eventually("the mesh across releases, and blocks", Duration::from_secs(30), || {
        nodes.iter().chain([&old]).all(|n| n.peers().connected().len() == 3 && n.height() >= 2)
    })
    .await;
    let plan_height = nodes[0].height() + 400;
    for n in &nodes {
        n.request_change(ChangeRequest::Upgrade { version: 4, height: plan_height }).await.unwrap();
    }
    let from = nodes[0].height();
    eventually("ten more blocks", Duration::from_secs(30), || nodes[0].height() >= from + 10).await;
    let plan = Change::Upgrade { version: 4, height: plan_height };
    for n in nodes.iter().chain([&old]) {
        assert!(n.members().membership.schedule().is_empty(), "not scheduled while a member speaks wire 3");
    }
    let pending = nodes[0].members().pending();
    assert!(pending.iter().any(|p| p.change == plan && p.approvals.len() == 3), "held with 3 approvals: {pending:?}");
    for h in 1..=nodes[0].height() {
        let c = nodes[0].store().block(h).unwrap().unwrap();
        assert_eq!(plan_approvals(&c), 0, "block {h} carries no plan");
    }
    let u = masternode::admin::fetch_upgrade(nodes[0].admin_addr(), Duration::from_secs(2)).await.unwrap();
    assert!(!u.wire_ready && u.pending.len() == 1 && !u.pending[0].wire_ready, "{u:?}");

    // The old node is upgraded to this release, on its data dir.
    old.stop().await;
    let upgraded = spec.start_with(3, network.clone(), fast_transport(), TestHooks::default()).await;
    let all = [&nodes[0], &nodes[1], &nodes[2], &upgraded];
    let scheduled = [Plan { version: 4, height: plan_height }];
    eventually("the plan scheduled at all four", Duration::from_secs(30), || {
        all.iter().all(|n| n.members().membership.schedule() == scheduled)
    })
    .await;
    // `wire_ready` is what the connections speak now: a reconnect under load
    // makes it false for a moment, so it is polled like the schedule.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let u = masternode::admin::fetch_upgrade(nodes[0].admin_addr(), Duration::from_secs(2)).await.unwrap();
        assert!(u.schedule.len() == 1 && u.schedule[0].can_run, "{u:?}");
        if u.wire_ready {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "wire ready once every member speaks 4: {u:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rest = nodes;
    rest.push(upgraded);
    stop_all(rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_wire_3_is_sent_the_blocks_before_a_plan_s_block_and_refused_from_it() {
    use masternode::chain::ChangeRequest;
    use masternode::chain::Message;
    let spec = Spec::new(4);
    let network = spec.network_paced(&spec.name, &spec.members, 250);
    // Member 0 is played by the test: connected at wire 4 while the plan is
    // carried, then as a node of 0.1.0.
    let hostile = Hostile::new(&spec, 0);
    let mut honest = Vec::new();
    for i in 1..=3 {
        honest.push(spec.start_with(i, network.clone(), beside_hostile_transport(), TestHooks::default()).await);
    }
    let mut modern = Vec::new();
    for i in 1..=3 {
        let conn = hostile.connect_in(&spec, &network, i).await;
        drain(&conn);
        modern.push(conn);
    }
    eventually("meshed with member 0 on wire 4", Duration::from_secs(30), || {
        honest.iter().all(|n| n.peers().connected().len() == 3 && n.height() >= 2)
    })
    .await;
    let plan_height = honest[0].height() + 400;
    for n in &honest {
        n.request_change(ChangeRequest::Upgrade { version: 4, height: plan_height }).await.unwrap();
    }
    // The member view follows the decided block at once, the store once the
    // block's write is done: wait for both.
    let stored_carrier = |n: &masternode::node::Node| {
        (1..=n.height()).any(|h| n.store().block(h).ok().flatten().is_some_and(|b| plan_approvals(&b) > 0))
    };
    eventually("the plan scheduled and its block stored", Duration::from_secs(30), || {
        !honest[0].members().membership.schedule().is_empty() && stored_carrier(&honest[0])
    })
    .await;
    let tip = honest[0].height();
    let carrying: Vec<u64> =
        (1..=tip).filter(|h| plan_approvals(&honest[0].store().block(*h).unwrap().unwrap()) > 0).collect();
    let (first, last) = (carrying[0], *carrying.last().unwrap());
    assert!(first <= 60, "within one batch: {first}");

    let ask = |conn: quinn::Connection, from: u64, count: u32| async move {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode(&Message::GetBlocks { from, count })).await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(64 * 1024 * 1024).await.map(|body| match decode(&body[4..]) {
            Message::Blocks(blocks) => blocks.iter().map(|c| c.block.height()).collect::<Vec<u64>>(),
            other => panic!("not blocks: {other:?}"),
        })
    };
    // At wire 4 the plan's blocks travel.
    eventually("two blocks after the plan's", Duration::from_secs(10), || honest[0].height() >= last + 2).await;
    let heights = ask(modern[0].clone(), 1, (last + 2) as u32).await.unwrap();
    assert_eq!(heights, (1..=last + 2).collect::<Vec<_>>());

    // As a node of 0.1.0 (masternode/1, a version-3 Hello).
    for conn in &modern {
        conn.close(0u32.into(), b"restarting");
    }
    eventually("member 0 gone", Duration::from_secs(10), || !honest[0].peers().is_connected(&spec.id(0))).await;
    let transport = masternode::net::quic_transport_config(&fast_transport()).unwrap();
    let client = masternode::net::client_config(&spec.ids[0], spec.id(1), transport, &[Generation::V1]).unwrap();
    let conn =
        hostile.endpoint.connect_with(client, spec.addr(1), masternode::net::SERVER_NAME).unwrap().await.unwrap();
    let hello = LegacyIntro {
        magic: MAGIC,
        version: 3,
        network_id: network.id,
        node_id: spec.id(0),
        listen: spec.addr(0),
        tip: Tip::default(),
        software: "masternode/0.1.0".into(),
        incarnation: rand_incarnation(),
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&LegacyMsg::Hello(hello))).await.unwrap();
    send.finish().unwrap();
    let welcome = decode_single::<LegacyMsg>(&recv.read_to_end(2048).await.unwrap()).unwrap();
    assert!(matches!(welcome, LegacyMsg::Welcome(_)), "{welcome:?}");
    drain(&conn);
    eventually("member 0 at wire 3", Duration::from_secs(5), || {
        honest[0].peers().wire_versions().get(&spec.id(0)) == Some(&3)
    })
    .await;
    let before = ask(conn.clone(), 1, (last + 2) as u32).await.unwrap();
    assert_eq!(before, (1..first).collect::<Vec<_>>(), "the blocks before the first that carries the plan");
    let refused = ask(conn.clone(), first, 4).await;
    assert!(
        matches!(&refused, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code.into_inner() == masternode::net::Close::PROTOCOL as u64),
        "refused with the protocol code 0.1.0 knows: {refused:?}"
    );
    let after = ask(conn.clone(), last + 1, 2).await.unwrap();
    assert_eq!(after, vec![last + 1, last + 2], "blocks after it carry nothing it cannot decode");
    assert_eq!(honest[0].status().counters.bad_frames, 0);
    stop_all(honest).await;
}
