//! Hostile peers on real sockets. Each probe asserts the outcome and how long it
//! took, and that the honest nodes keep their mesh and keep committing.
//!
//! The network has four members: the hostile key at the lowest address (so the
//! honest nodes wait for it and never dial it during a test) and three honest
//! nodes, which are a quorum on their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use masternode::chain::Message;
use masternode::chain::{SignedVote, Vote, VoteKind};
use masternode::codec;
use masternode::net::Close;
use masternode::node::Node;

struct Net {
    spec: Spec,
    hostile: Hostile,
    honest: Vec<Node>,
}

async fn network() -> Net {
    let spec = Spec::new(4);
    let (hostile, honest) = honest_beside_hostile(&spec, 3, 2).await;
    Net { spec, hostile, honest }
}

impl Net {
    /// The honest three still form a mesh and the chain moves on.
    async fn assert_intact(&self, what: &str) {
        let refs: Vec<&Node> = self.honest.iter().collect();
        let honest_ids: Vec<_> = (1..4).map(|i| self.spec.id(i)).collect();
        for n in &refs {
            let connected = n.peers().connected();
            assert!(
                honest_ids.iter().filter(|id| **id != n.id()).all(|id| connected.contains(id)),
                "{what}: mesh broken"
            );
        }
        let target = refs.iter().map(|n| n.height()).max().unwrap() + 2;
        eventually(&format!("{what}: chain goes on"), Duration::from_secs(30), || {
            refs.iter().all(|n| n.height() >= target)
        })
        .await;
        let stores: Vec<_> = refs.iter().map(|n| n.store().clone()).collect();
        check_chains(&self.spec, &stores.iter().collect::<Vec<_>>());
    }

    async fn stop(self) {
        stop_all(self.honest).await;
    }
}

async fn closed_within(conn: &quinn::Connection, limit: Duration) -> (quinn::ConnectionError, Duration) {
    let start = Instant::now();
    let err = tokio::time::timeout(limit, conn.closed()).await.expect("closed in time");
    (err, start.elapsed())
}

fn app_code(err: &quinn::ConnectionError) -> Option<u32> {
    match err {
        quinn::ConnectionError::ApplicationClosed(ac) => Some(ac.error_code.into_inner() as u32),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_member_is_closed_at_the_handshake_deadline() {
    let net = network().await;
    let conn = net.hostile.connect_tls(&net.spec, 1).await;
    let (err, took) = closed_within(&conn, Duration::from_secs(10)).await;
    assert_eq!(app_code(&err), Some(Close::HANDSHAKE_TIMEOUT), "{err}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "closed after {took:?}; deadline 2 s"
    );
    net.assert_intact("silent member").await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_absurd_lengths_on_the_handshake_stream_are_closed_at_once() {
    let net = network().await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("absurd length prefix", vec![0xff, 0xff, 0xff, 0xff, 0, 1, 2, 3]),
        ("a Welcome where a Hello belongs", {
            let mut f = vec![0, 0, 0, 2, 1, 0];
            f.truncate(6);
            f
        }),
    ];
    for (what, bytes) in cases {
        let conn = net.hostile.connect_tls(&net.spec, 1).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let (err, took) = closed_within(&conn, Duration::from_secs(10)).await;
        assert!(app_code(&err).is_some(), "{what}: {err}");
        assert!(took < Duration::from_secs(1), "{what}: closed after {took:?}");
    }
    // More than the handshake limit, never finished: refused once over the limit.
    let conn = net.hostile.connect_tls(&net.spec, 1).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&vec![0u8; 64 * 1024]).await;
    let (err, took) = closed_within(&conn, Duration::from_secs(10)).await;
    assert!(app_code(&err).is_some(), "oversized hello: {err}");
    assert!(took < Duration::from_secs(1), "oversized hello closed after {took:?}");
    net.assert_intact("garbage handshakes").await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_handshake_is_closed_at_the_deadline() {
    let net = network().await;
    let conn = net.hostile.connect_tls(&net.spec, 1).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let start = Instant::now();
    let dripping = tokio::spawn(async move {
        for b in 0..100u8 {
            if send.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let (err, _) = closed_within(&conn, Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert_eq!(app_code(&err), Some(Close::HANDSHAKE_TIMEOUT), "{err}");
    assert!(took < Duration::from_secs(4), "closed after {took:?}; deadline 2 s");
    dripping.abort();
    net.assert_intact("slowloris").await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_are_held_to_the_stream_limit() {
    let net = network().await;
    let conn = net.hostile.connect(&net.spec, 1).await;
    // Open 300 request streams and never finish them.
    let mut opened = 0;
    let mut streams = Vec::new();
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await {
            Ok(Ok((mut s, r))) => {
                let _ = s.write_all(&[0, 0]).await;
                streams.push((s, r));
                opened += 1;
            }
            _ => break,
        }
    }
    assert!(opened <= 16, "the node allows {opened} concurrent request streams");
    net.assert_intact("stream flood").await;
    drop(streams);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_certificate_are_refused_even_in_a_flood() {
    let net = network().await;
    let victim = net.spec.addr(1);
    let client_ep = quinn::Endpoint::client(std::net::SocketAddr::new(net.spec.addr(0).ip(), 0)).unwrap();
    let crypto = rustls::ClientConfig::builder_with_provider(masternode::net::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    let mut crypto = crypto;
    crypto.alpn_protocols = vec![masternode::net::Generation::V2.alpn().to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap()));
    let start = Instant::now();
    let mut attempts = Vec::new();
    for _ in 0..200 {
        let ep = client_ep.clone();
        let cfg = cfg.clone();
        attempts.push(tokio::spawn(async move {
            let conn = ep.connect_with(cfg, victim, "x").unwrap();
            match tokio::time::timeout(Duration::from_secs(10), conn).await {
                Ok(Ok(c)) => {
                    // TLS 1.3: the client learns of the refusal after its flight.
                    let err = c.closed().await;
                    !masternode::net::is_tls_refusal(&err) && c.accept_uni().await.is_ok()
                }
                Ok(Err(_)) => false,
                Err(_) => true,
            }
        }));
    }
    let mut got_through = 0;
    for a in attempts {
        if a.await.unwrap() {
            got_through += 1;
        }
    }
    let took = start.elapsed();
    assert_eq!(got_through, 0, "a connection without a certificate got through");
    assert!(took < Duration::from_secs(10), "200 refusals took {took:?}");
    net.assert_intact("certificate-less flood").await;
    net.stop().await;
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ED25519]
    }
}

/// A member that votes for a far-future height, equivocates, and replays old
/// votes: the honest nodes report what deserves it and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_equivocating_and_replayed_votes_change_nothing() {
    let net = network().await;
    let conn = net.hostile.connect(&net.spec, 1).await;
    let mut uni = conn.open_uni().await.unwrap();
    let me = &net.spec.ids[0];
    let network_id = net.spec.network().id;
    let h = net.honest[0].height() + 1;
    let vote = |height, round, block: Option<masternode::chain::Hash>| -> SignedVote {
        Vote { kind: VoteKind::Prevote, height, round, block, voter: me.id() }.sign(&network_id, me)
    };
    let mut frames = bytes::BytesMut::new();
    // Far future.
    codec::encode_into(&Message::Vote(vote(h + 1_000_000, 0, None)), &mut frames);
    // Equivocation: two different prevotes for one height and round.
    codec::encode_into(&Message::Vote(vote(h, 0, None)), &mut frames);
    codec::encode_into(&Message::Vote(vote(h, 0, Some(masternode::chain::Hash([9; 32])))), &mut frames);
    // Replays of an honest node's old vote, taken from a committed certificate.
    let old = net.honest[0].store().block(1).unwrap().unwrap().cert.precommits[0].clone();
    for _ in 0..50 {
        codec::encode_into(&Message::Vote(old.clone()), &mut frames);
    }
    uni.write_all(&frames).await.unwrap();
    let metrics_has_misbehaviour = || {
        let m = net.honest[0].metrics();
        m.lines().any(|l| l.starts_with("masternode_misbehaviour_total") && !l.ends_with(" 0"))
    };
    eventually("equivocation is reported", Duration::from_secs(10), metrics_has_misbehaviour).await;
    assert!(conn.close_reason().is_none(), "valid frames keep the connection open");
    net.assert_intact("hostile votes").await;
    conn.close(0u32.into(), b"");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_from_one_address_are_capped() {
    let net = network().await;
    // 20 connections from one address that complete TLS and then say nothing:
    // the node holds at most max_pending_handshakes_per_ip (8) of them at once
    // and refuses the rest outright.
    let mut attempts = Vec::new();
    for _ in 0..20 {
        let transport = masternode::net::transport_config(&fast_transport()).unwrap();
        let client =
            masternode::net::client_config(&net.spec.ids[0], net.spec.id(1), transport, &masternode::net::GENERATIONS)
                .unwrap();
        let connecting =
            net.hostile.endpoint.connect_with(client, net.spec.addr(1), masternode::net::SERVER_NAME).unwrap();
        attempts.push(tokio::spawn(connecting));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(conn) => accepted.push(conn),
            Err(_) => refused += 1,
        }
    }
    assert!(accepted.len() <= 8, "{} silent handshakes held at once", accepted.len());
    assert!(refused >= 12, "{refused} refused");
    for conn in &accepted {
        let (err, took) = closed_within(conn, Duration::from_secs(10)).await;
        assert_eq!(app_code(&err), Some(Close::HANDSHAKE_TIMEOUT), "{err}");
        assert!(took < Duration::from_secs(4));
    }
    net.assert_intact("handshake flood from one address").await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requests_over_the_rate_are_refused_with_a_typed_code() {
    let net = network().await;
    let conn = net.hostile.connect(&net.spec, 1).await;
    let frame = codec::encode(&Message::GetBlocks { from: 1, count: 64 });
    let mut answered = 0;
    let mut limited = 0;
    for _ in 0..100 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        match recv.read_to_end(8 * 1024 * 1024).await {
            Ok(_) => answered += 1,
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))
                if code.into_inner() == Close::RATE_LIMITED as u64 =>
            {
                limited += 1
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    // 20 per second with bursts of 40: most of a quick hundred are refused.
    assert!((30..=60).contains(&answered), "{answered} answered");
    assert_eq!(answered + limited, 100);
    assert!(conn.close_reason().is_none(), "refusing a request keeps the connection");
    net.assert_intact("sync flood").await;
    net.stop().await;
}

/// A member that keeps announcing a far-future tip and never answers a sync
/// request cannot keep a restarted node from catching up from honest peers.
/// Seven members (the liar and six honest), so that five honest nodes are a
/// quorum while the sixth is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_tip_announcer_cannot_stall_catch_up() {
    init_logs();
    let spec = Spec::new(7);
    // The sixth starts from nothing, fetching one block per request so that
    // catching up takes many requests; the liar reaches it first.
    let LateBesideHostile { mut honest, late, conn, started, hostile: _hostile } =
        late_beside_hostile(&spec, 8, 1).await;
    let liar = tokio::spawn(async move {
        let Ok(mut uni) = conn.open_uni().await else { return };
        let tip =
            codec::encode(&Message::Tip { height: 1_000_000, hash: masternode::chain::Hash([7; 32]), time_ms: 0 });
        // It says it holds every block, so it is asked; it accepts no request
        // streams: every sync request to it times out.
        let holds = codec::encode(&Message::Holds { earliest: 1, height: 1_000_000 });
        loop {
            if uni.write_all(&tip).await.is_err() || uni.write_all(&holds).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let target = honest.iter().map(|n| n.height()).max().unwrap();
    eventually("the late node catches up despite the liar", Duration::from_secs(60), || late.height() >= target).await;
    let took = started.elapsed();
    liar.abort();
    honest.push(late);
    let refs: Vec<&Node> = honest.iter().collect();
    let stores: Vec<_> = refs.iter().map(|n| n.store().clone()).collect();
    check_chains(&spec, &stores.iter().collect::<Vec<_>>());
    assert!(took < Duration::from_secs(30), "caught up after {took:?}");
    stop_all(honest).await;
}

/// A member that asks for blocks on request streams and never reads the
/// answers makes a node hold at most `ANSWERS_PER_PEER` of them, and its
/// further requests wait unread: it fills every stream it may open (16), four
/// with `GetBlocks` whose answers it never reads, twelve with `GetTxs` bodies
/// of 600 KB. The node holds at most four answers and none of the twelve
/// bodies (read before they had a slot, they were 7 MB held for one peer),
/// and the honest nodes go on. (Answered at once, 16 streams of 3 MiB answers
/// each would be 48 MiB held for a 32-byte request apiece.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_its_answers_holds_few_of_them() {
    let net = network().await;
    let victim = &net.honest[0];
    // Blocks of about 3 MiB: an answer to `GetBlocks` fills its byte budget.
    for i in 0..100u32 {
        let mut tx = vec![0u8; 60 * 1024];
        tx[..4].copy_from_slice(&i.to_le_bytes());
        victim.submit(tx).await.unwrap();
    }
    eventually("the transactions are committed", Duration::from_secs(60), || victim.mempool_len() == 0).await;
    let conn = net.hostile.connect(&net.spec, 1).await;
    let slots = masternode::net::ANSWERS_PER_PEER;
    let mut streams = Vec::new();
    for _ in 0..slots {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&codec::encode(&Message::GetBlocks { from: 1, count: 64 })).await.unwrap();
        send.finish().unwrap();
        // Kept, never read.
        streams.push((send, recv));
    }
    eventually("the answers are made and held", Duration::from_secs(5), || {
        victim.peers().answer_bytes() > 2 * 1024 * 1024
    })
    .await;
    // Sampled while only the answers are in flight: under load, writing the
    // requests below can take longer than an answer may wait.
    let bound = (slots * masternode::codec::MAX_FRAME) as u64;
    let mut most_answers = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        most_answers = most_answers.max(victim.peers().answer_bytes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids = vec![masternode::chain::Hash([7; 32]); 19_000];
    let big = codec::encode(&Message::GetTxs { height: victim.height() + 1, round: 0, ids });
    assert!(big.len() > 600_000 && big.len() - 4 <= masternode::chain::GET_TXS_LIMIT);
    for _ in slots..16 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&big).await.unwrap();
        send.finish().unwrap();
        streams.push((send, recv));
    }
    let mut most_requests = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        most_answers = most_answers.max(victim.peers().answer_bytes());
        most_requests = most_requests.max(victim.peers().request_bytes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most_answers > 2 * 1024 * 1024, "answers were made and held: {most_answers} bytes at most");
    assert!(most_answers <= bound, "{most_answers} bytes of answers held for one peer, bound {bound}");
    assert!(most_requests < big.len() as u64, "{most_requests} bytes of waiting requests read");
    let metrics = victim.metrics();
    assert!(metrics.contains("masternode_held_bytes{what=\"requests\"} "), "the gauge is exported");
    net.assert_intact("answers never read").await;
    drop(streams);
    net.stop().await;
}

/// A member that finishes its gossip stream cannot stay connected, counted for
/// the quorum, with nothing more read from it: the node closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_finishes_its_gossip_stream_is_disconnected() {
    let net = network().await;
    let conn = net.hostile.connect(&net.spec, 1).await;
    let mut uni = conn.open_uni().await.unwrap();
    uni.write_all(&codec::encode(&Message::Tip { height: 0, hash: masternode::chain::Hash([0; 32]), time_ms: 0 }))
        .await
        .unwrap();
    uni.finish().unwrap();
    let (err, took) = closed_within(&conn, Duration::from_secs(5)).await;
    assert_eq!(app_code(&err), Some(Close::PROTOCOL), "{err}");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    net.assert_intact("gossip stream finished").await;
    net.stop().await;
}
