//! The transport on real QUIC sockets, nodes on distinct 127.x.y.z addresses.

use std::time::Duration;

use crate::common::*;
use masternode::chain::Message;
use masternode::net::{self, TestHooks};
use masternode::net::{RejectReason, Versions};
use masternode::node::Node;

/// The contract scenario: five nodes started at the same instant, five times
/// (`tests/long/transport.rs` runs it twenty times). Every round ends with ten
/// connections, each pair once, dialled by the lower address, and no redial
/// storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_start_gives_one_connection_per_pair() {
    simultaneous_starts(5).await;
}

#[tokio::test]
async fn broadcast_reaches_every_peer_exactly_once_in_order() {
    let spec = Spec::new(4);
    let tracker = tokio_util::task::TaskTracker::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut nets: Vec<_> = (0..4).map(|i| spec.start_net(i, fast_transport(), &tracker, &shutdown)).collect();
    eventually("full mesh", Duration::from_secs(20), || nets.iter().all(|(p, _)| p.connected().len() == 3)).await;

    let sender = nets[0].0.clone();
    for k in 0..200u32 {
        let sent = sender.broadcast(&outgoing(&Message::Data(k.to_be_bytes().to_vec())));
        assert_eq!(sent.len(), 3);
    }
    for (i, (_, inbound)) in nets.iter_mut().enumerate().skip(1) {
        for k in 0..200u32 {
            let d = tokio::time::timeout(Duration::from_secs(10), inbound.messages.recv())
                .await
                .expect("message arrives")
                .unwrap();
            assert_eq!(d.from, spec.id(0), "node {i}: sender's NodeId");
            assert_eq!(
                decode(&d.body),
                Message::Data(k.to_be_bytes().to_vec()),
                "node {i}: message {k} once, in order"
            );
        }
        // Nothing more: no duplicate delivery.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), inbound.messages.recv()).await.is_err(),
            "node {i}: extra message"
        );
    }

    // Request/response on a stream of its own.
    let responder_id = spec.id(1);
    let (_, mut inbound1) = nets.remove(1);
    tokio::spawn(async move {
        while let Some(req) = inbound1.requests.recv().await {
            let Message::Data(mut d) = decode(&req.body) else {
                continue;
            };
            d.reverse();
            let _ = req.reply.send(Ok(masternode::codec::encode(&Message::Data(d))));
        }
    });
    let answer = sender.request(responder_id, masternode::codec::encode(&Message::Data(vec![1, 2, 3]))).await.unwrap();
    assert_eq!(decode(&answer), Message::Data(vec![3, 2, 1]));
    // A message over its kind's limit is refused before it leaves.
    assert!(Message::Tx(vec![0; 200 * 1024]).outgoing().is_err());

    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.expect("every task ends after shutdown");
}

/// `send_many` queues a run of frames as that many `send`s would: in order,
/// each once, and it stops at the first frame it cannot queue (here one the
/// peer's wire version cannot carry), saying how many went before it; the
/// receiver's batch of slices gives the same bodies in the same order.
#[tokio::test]
async fn send_many_queues_in_order_and_stops_at_the_first_frame_it_cannot_queue() {
    let spec = Spec::new(2);
    let tracker = tokio_util::task::TaskTracker::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (a, _ina) = spec.start_net(0, fast_transport(), &tracker, &shutdown);
    let (b, inb) = spec.start_net(1, fast_transport(), &tracker, &shutdown);
    eventually("connected", Duration::from_secs(20), || !a.connected().is_empty() && !b.connected().is_empty()).await;
    let to = spec.id(1);
    let mut outs: Vec<_> = (0..300u32).map(|k| outgoing(&Message::Data(k.to_be_bytes().to_vec()))).collect();
    assert_eq!(a.send_many(to, &outs[..200]), Ok(()));
    let wire = a.peers()[0].wire_version;
    outs[250].wire = wire + 1;
    let partial = a.send_many(to, &outs[200..]).unwrap_err();
    assert_eq!(partial.queued, 50);
    assert_eq!(partial.error, net::SendError::Unsupported { peer: to, wire, needs: wire + 1 });
    let nobody = spec.id(0);
    assert_eq!(a.send_many(nobody, &outs).unwrap_err().queued, 0, "not connected: nothing queued");

    let mut got = Vec::new();
    let mut batch = net::Deliveries::new();
    while got.len() < 250 {
        let n = tokio::time::timeout(Duration::from_secs(10), inb.messages.recv_into(1024, &mut batch))
            .await
            .expect("frames arrive")
            .unwrap();
        assert_eq!(n, batch.len());
        got.extend(batch.iter().map(|(from, body)| (from, decode(body))));
        batch.clear();
    }
    let expected: Vec<_> = (0..250u32).map(|k| (spec.id(0), Message::Data(k.to_be_bytes().to_vec()))).collect();
    assert_eq!(got, expected, "the first 250, each once, in order");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inb.messages.recv_into(1, &mut batch)).await.is_err(),
        "nothing after the frame that was not queued"
    );
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.expect("every task ends after shutdown");
}

/// The designated dialer holds a wrong address for its peer; the peer dials it
/// after its passive wait and the pair connects.
#[tokio::test]
async fn nat_fallback_waiting_side_dials_after_passive_wait() {
    let spec = Spec::new(2);
    let mut wrong = spec.members.clone();
    let unreachable = addr(spec.net, 99);
    wrong.iter_mut().find(|m| m.id == spec.id(1)).unwrap().addr = unreachable;
    let mut transport = fast_transport();
    transport.passive_wait = std::time::Duration::from_millis(1500);
    let lower = spec.start_with(0, spec.network_with("test", &wrong), transport.clone(), TestHooks::default()).await;
    let higher = spec.start(1, transport).await;
    let start = std::time::Instant::now();
    eventually("fallback connection", Duration::from_secs(20), || {
        lower.peers().connected().len() == 1 && higher.peers().connected().len() == 1
    })
    .await;
    assert!(start.elapsed() >= Duration::from_millis(1400), "connected only after the passive wait");
    let at_higher = &higher.peers().peers()[0];
    assert_eq!(at_higher.direction, masternode::net::Direction::Outbound, "the waiting side dialled");
    assert_eq!(lower.peers().peers()[0].direction, masternode::net::Direction::Inbound);
    assert!(counter(&lower.peers().counters().dials) >= 1, "the lower side tried its wrong address");
    // Once connected, the lower side stops dialling the wrong address.
    let dials = counter(&lower.peers().counters().dials);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(counter(&lower.peers().counters().dials) <= dials + 1);
    assert_eq!(higher.peers().connected().len(), 1, "still connected");
    stop_all(vec![lower, higher]).await;
}

/// Two honest nodes and a misfit. Returns (honest nodes, misfit) after `watch`.
async fn with_misfit(
    misfit_network: impl FnOnce(&Spec) -> masternode::config::Network,
    hooks: TestHooks,
    watch: Duration,
) -> (Spec, Vec<Node>, Node) {
    let spec = Spec::new(3);
    let a = spec.start(0, fast_transport()).await;
    let b = spec.start(1, fast_transport()).await;
    // The misfit sits between them so it dials one and waits for the other.
    let net = misfit_network(&spec);
    let c = spec.start_with(2, net, fast_transport(), hooks).await;
    eventually("honest pair connects", Duration::from_secs(20), || a.peers().connected().len() == 1).await;
    tokio::time::sleep(watch).await;
    (spec, vec![a, b], c)
}

#[tokio::test]
async fn wrong_network_is_rejected_with_its_reason_at_both_ends_and_backs_off() {
    let (_spec, honest, misfit) =
        with_misfit(|s| s.network_with("another-network", &s.members), TestHooks::default(), Duration::from_secs(6))
            .await;
    assert!(misfit.peers().connected().is_empty(), "the misfit never connects");
    for node in &honest {
        assert!(!node.peers().connected().contains(&misfit.id()));
        let s = node.status();
        let seen = s.rejects_sent["wrong_network"] + s.rejects_received["wrong_network"];
        assert!(seen >= 1, "an honest node saw the wrong network: {s:?}");
    }
    let s = misfit.status();
    assert!(s.rejects_sent["wrong_network"] + s.rejects_received["wrong_network"] >= 2);
    // Backoff: in ~8 s, a storm would be hundreds of attempts; backoff allows ~5 per peer.
    assert!(s.counters.dials <= 12, "misfit dials: {}", s.counters.dials);
    for node in &honest {
        assert!(node.status().counters.handshakes_failed <= 12, "{:?}", node.status().counters);
    }
    stop_all(honest).await;
    misfit.stop().await;
}

#[tokio::test]
async fn unsupported_version_is_rejected_with_its_reason() {
    let hooks = TestHooks { versions: Some(Versions::exactly(99)), ..Default::default() };
    let (_spec, honest, misfit) = with_misfit(|s| s.network(), hooks, Duration::from_secs(5)).await;
    assert!(misfit.peers().connected().is_empty());
    let sent: u64 = honest.iter().map(|n| n.status().rejects_sent["unsupported_version"]).sum();
    assert!(sent >= 1, "honest nodes rejected the version");
    assert!(misfit.status().rejects_received["unsupported_version"] >= 1, "the misfit heard why");
    assert!(misfit.status().counters.dials <= 12);
    stop_all(honest).await;
    misfit.stop().await;
}

#[tokio::test]
async fn node_id_not_matching_certificate_is_rejected() {
    let hooks_for = |s: &Spec| TestHooks { claim_id: Some(s.id(0)), ..Default::default() };
    let spec = Spec::new(3);
    let a = spec.start(0, fast_transport()).await;
    let b = spec.start(1, fast_transport()).await;
    let c = spec.start_with(2, spec.network(), fast_transport(), hooks_for(&spec)).await;
    eventually("honest pair", Duration::from_secs(20), || a.peers().connected().len() == 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(c.peers().connected().is_empty());
    let sent: u64 = [&a, &b].iter().map(|n| n.status().rejects_sent["id_mismatch"]).sum();
    assert!(sent >= 1, "honest nodes rejected a hello naming another key");
    assert!(c.status().rejects_received["id_mismatch"] >= 1);
    assert!(a.peers().connected().contains(&b.id()), "the honest pair is untouched");
    stop_all(vec![a, b, c]).await;
}

#[tokio::test]
async fn unknown_key_is_refused_at_tls() {
    let spec = Spec::new(3);
    // The honest nodes know a member D at the stranger's address; the stranger's
    // own network file names its own key there instead.
    let d = masternode::identity::Identity::generate().unwrap();
    let mut honest_members = spec.members.clone();
    honest_members[2].id = d.id();
    let honest_net = spec.network_with("test", &honest_members);
    let a = spec.start_with(0, honest_net.clone(), fast_transport(), TestHooks::default()).await;
    let b = spec.start_with(1, honest_net, fast_transport(), TestHooks::default()).await;
    let stranger = spec.start(2, fast_transport()).await;
    eventually("honest pair", Duration::from_secs(20), || a.peers().connected().len() == 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(stranger.peers().connected().is_empty(), "a stranger never connects");
    let refused: u64 = [&a, &b].iter().map(|n| n.status().counters.tls_refused + n.status().counters.tls_failed).sum();
    assert!(refused >= 1, "honest nodes refused the stranger at TLS");
    assert!(
        stranger.status().counters.tls_failed >= 1,
        "the stranger's dials failed at TLS: {:?}",
        stranger.status().counters
    );
    assert!(stranger.status().counters.dials <= 12, "backoff, no storm");
    assert_eq!(a.status().counters.frames_received, 0);
    stop_all(vec![a, b, stranger]).await;
}

#[test]
fn reject_reasons_have_stable_names() {
    let names: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["wrong_network", "unsupported_version", "id_mismatch", "duplicate", "not_in_set"]);
}
