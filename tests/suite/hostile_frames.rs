//! A member that completes the handshake and then sends bad frames: the node
//! closes that connection with a typed code and one log line, and keeps serving its
//! other peers on the connections it already had.

use std::time::{Duration, Instant};

use crate::common::*;
use masternode::chain::{Kind, VOTE_LIMIT};
use masternode::net::Close;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_the_offending_connection() {
    let spec = Spec::new(4);
    // The hostile key has the lowest address, so the honest nodes wait for it and
    // never dial it during the test.
    let mut transport = fast_transport();
    transport.passive_wait = Duration::from_secs(120);
    let hostile = Hostile::new(&spec, 0);
    let victim = spec.start(1, transport.clone()).await;
    let others = [spec.start(2, transport.clone()).await, spec.start(3, transport.clone()).await];
    eventually("honest mesh", Duration::from_secs(20), || {
        victim.peers().connected().len() == 2 && others.iter().all(|n| n.peers().connected().len() == 2)
    })
    .await;
    let honest_conns: Vec<_> = victim.peers().peers().iter().map(|p| (p.id, p.conn_id)).collect();

    let mut header_too_large = (VOTE_LIMIT as u32 + 1).to_be_bytes().to_vec();
    header_too_large.push(Kind::VOTE);
    let truncated = {
        let mut v = 100u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 98, 1, 2, 3]);
        v
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("absurd length prefix", vec![0xff, 0xff, 0xff, 0xff, Kind::VOTE], Close::FRAME_TOO_LARGE),
        ("a vote frame one byte over its limit", header_too_large, Close::FRAME_TOO_LARGE),
        ("a frame cut short by the end of the stream", truncated, Close::MALFORMED_FRAME),
        ("a body that does not decode", vec![0, 0, 0, 2, Kind::TX, 200], Close::MALFORMED_FRAME),
        ("a kind that does not exist", vec![0, 0, 0, 1, 77], Close::MALFORMED_FRAME),
        ("a kind the gossip stream does not carry (data)", vec![0, 0, 0, 2, Kind::DATA, 0], Close::MALFORMED_FRAME),
        ("a kind the gossip stream does not carry (blocks)", vec![0, 0, 0, 2, Kind::BLOCKS, 0], Close::MALFORMED_FRAME),
    ];
    for (n, (what, bytes, code)) in cases.into_iter().enumerate() {
        let conn = hostile.connect(&spec, 1).await;
        eventually(&format!("{what}: victim sees the hostile peer"), Duration::from_secs(10), || {
            victim.peers().connected().contains(&spec.id(0))
        })
        .await;
        let mut uni = conn.open_uni().await.unwrap();
        uni.write_all(&bytes).await.unwrap();
        uni.finish().unwrap();
        let sent_at = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect(what);
        let took = sent_at.elapsed();
        match &err {
            quinn::ConnectionError::ApplicationClosed(ac) => {
                assert_eq!(ac.error_code, code.into(), "{what}: close code ({err})");
            }
            other => panic!("{what}: closed with {other}"),
        }
        assert!(took < Duration::from_secs(2), "{what}: closed after {took:?}");
        assert_eq!(counter(&victim.peers().counters().bad_frames), n as u64 + 1, "{what}: counted once");
        // The honest connections are the very same ones as before.
        eventually(&format!("{what}: hostile peer leaves the table"), Duration::from_secs(5), || {
            !victim.peers().connected().contains(&spec.id(0))
        })
        .await;
        let now: Vec<_> = victim.peers().peers().iter().map(|p| (p.id, p.conn_id)).collect();
        assert_eq!(now, honest_conns, "{what}: honest peers untouched");
    }
    // And they still carry traffic.
    let probe = masternode::chain::Message::Data(vec![5; 10]);
    let answer = victim.peers().request(spec.id(2), probe.encode().unwrap()).await.unwrap();
    assert_eq!(decode(&answer), probe);
    let [a, b] = others;
    stop_all(vec![victim, a, b]).await;
}
