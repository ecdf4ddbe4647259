//! Readiness and a safe stop on real nodes: `GET /ready` while a node is
//! alone, in the mesh, far behind and a joiner not yet admitted, and
//! `masternode status --can-stop` (the binary) with every member up and with
//! one down.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::procs::BIN;
use crate::common::*;
use masternode::admin::fetch_readiness;
use masternode::admin::fetch_status;
use masternode::net::Faults;
use masternode::node::{Node, NodeOptions};
use masternode::probe::{NotReady, Readiness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

async fn ready(node: &Node) -> (u16, Readiness) {
    fetch_readiness(node.admin_addr(), Duration::from_secs(5)).await.expect("/ready answers")
}

/// Polls `/ready` until its reason is `want` (None: ready), asserting on the
/// way that every answer is one of `allowed` and that the code matches.
async fn until_ready_says(node: &Node, want: Option<NotReady>, allowed: &[Option<NotReady>], what: &str) -> Readiness {
    let start = Instant::now();
    loop {
        let (code, r) = ready(node).await;
        assert_eq!(code, if r.ready { 200 } else { 503 }, "{what}: {r:?}");
        assert_eq!(r.ready, r.reason.is_none(), "{what}: {r:?}");
        if r.reason == want {
            return r;
        }
        assert!(allowed.contains(&r.reason), "{what}: unexpected {r:?}");
        assert!(start.elapsed() < WAIT, "{what}: still {r:?} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `masternode status --can-stop --admin ADDR [--json]`: exit code, stdout, stderr.
async fn can_stop(admin: SocketAddr, json: bool) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(["status", "--can-stop", "--admin", &admin.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    })
    .await
    .unwrap()
}

/// Until each node's quorum counts `active` members (itself included).
async fn until_active(nodes: &[&Node], active: usize, what: &str) {
    eventually(what, WAIT, || nodes.iter().all(|n| n.status().quorum.active == active)).await;
}

/// One request with the given `Host`; the status code.
async fn get_with_host(admin: SocketAddr, path: &str, host: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {text}"))
}

/// Four genesis members and a joiner (node 4). Alone, a member is not ready
/// (no quorum) while `/status` answers; with three of four up and blocks
/// coming, each is; the joiner is not (not a member). With all four up,
/// stopping any one leaves three of four, the quorum: `--can-stop` exits 0 on
/// each; with one down, stopping any other would leave two: it exits 1 on
/// each of the three, and on the one that is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_quorum_and_the_set_and_can_stop_follows_the_members_up() {
    let spec = Spec::new(5);
    let network = spec.network_with("ready", &spec.members[..4]);
    let start = |i: usize| spec.start_with(i, network.clone(), fast_transport(), Default::default());
    use NotReady::*;

    let first = start(0).await;
    let r = until_ready_says(&first, Some(NoQuorum), &[Some(Starting)], "a member alone").await;
    assert_eq!(r.message, "no quorum: 1/4 active, 3 required");
    assert!(fetch_status(first.admin_addr(), Duration::from_secs(5)).await.is_ok(), "/status is live all along");
    assert_eq!(get_with_host(first.admin_addr(), "/ready", "evil.example").await, 421, "the Host rule holds");
    assert_eq!(get_with_host(first.admin_addr(), "/ready", "localhost").await, 503, "the same request from localhost");

    let joiner = start(4).await;
    until_ready_says(&joiner, Some(NotAMember), &[Some(Starting)], "a joiner").await;
    let (code, out, err) = can_stop(joiner.admin_addr(), false).await;
    assert_eq!(code, Some(0), "stopping a joiner never hurts the quorum: {out} {err}");
    assert!(out.starts_with("can stop: this node is not one of the 4 members"), "{out}");

    let mut members = vec![first, start(1).await, start(2).await];
    {
        let refs: Vec<&Node> = members.iter().collect();
        eventually("three members commit blocks", WAIT, || refs.iter().all(|n| n.height() >= 2)).await;
    }
    for (i, node) in members.iter().enumerate() {
        let r = until_ready_says(node, None, &[Some(Syncing)], &format!("member {i} in the mesh")).await;
        assert!(r.member && r.quorum.met && r.height >= 2, "{r:?}");
    }
    let (_, r) = ready(&joiner).await;
    assert_eq!(r.reason, Some(NotAMember), "the chain moved on, the joiner is still outside: {r:?}");

    members.push(start(3).await);
    let refs: Vec<&Node> = members.iter().collect();
    until_active(&refs, 4, "all four members connected").await;
    for node in &members {
        let (code, out, err) = can_stop(node.admin_addr(), false).await;
        assert_eq!(code, Some(0), "{out} {err}");
        assert_eq!(out, "can stop: stopping now leaves 3 of 4 members active, 3 required");
    }
    let (code, json, _) = can_stop(members[0].admin_addr(), true).await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!((v["can_stop"].as_bool(), v["reason"].as_str()), (Some(true), Some("quorum_kept")), "{v}");
    assert_eq!((v["remaining"].as_u64(), v["required"].as_u64(), v["members"].as_u64()), (Some(3), Some(3), Some(4)));

    let down = members.pop().unwrap();
    let down_admin = down.admin_addr();
    down.stop().await;
    let refs: Vec<&Node> = members.iter().collect();
    until_active(&refs, 3, "three members left").await;
    for node in &members {
        let (code, out, err) = can_stop(node.admin_addr(), false).await;
        assert_eq!(code, Some(1), "{out} {err}");
        assert_eq!(out, "cannot stop: stopping now leaves 2 of 4 members active, 3 required");
        let (_, r) = ready(node).await;
        assert!(r.ready, "three of four is still the quorum: {r:?}");
    }
    let (code, json, _) = can_stop(members[1].admin_addr(), true).await;
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!((v["can_stop"].as_bool(), v["reason"].as_str()), (Some(false), Some("below_quorum")), "{v}");
    assert_eq!(v["remaining"].as_u64(), Some(2));

    let (code, out, err) = can_stop(down_admin, false).await;
    assert_eq!(code, Some(1), "a node that does not answer gives no leave to stop it: {out}");
    assert!(err.starts_with("down: "), "{err}");
    let (code, json, _) = can_stop(down_admin, true).await;
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!((v["can_stop"].as_bool(), v["reason"].as_str()), (Some(false), Some("down")), "{v}");

    members.push(joiner);
    stop_all(members).await;
}

/// Three members run ahead; a fourth starts with an empty data dir, fetching
/// one block per request over a link that delays what it sends by 200 ms, so
/// that catching up takes seconds. It answers 503 `syncing` (a peer claims a
/// tip more than one block above its own) until it is in step, then
/// `not_signing` for its doppelganger watch, then 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_far_behind_is_not_ready_until_it_has_caught_up() {
    let spec = Spec::new(4);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(spec.start(i, fast_transport()).await);
    }
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        eventually("three members commit ten blocks", Duration::from_secs(60), || {
            refs.iter().all(|n| n.height() >= 10)
        })
        .await;
    }
    let slow_link = Faults::new();
    slow_link.set_delay(Duration::from_millis(200));
    let mut cfg = spec.config(3, spec.network(), fast_transport());
    cfg.limits.sync_batch_blocks = 1;
    let options = NodeOptions { hooks: faulty(&slow_link), ..Default::default() };
    let late = Node::start(cfg, options, CancellationToken::new()).await.unwrap();

    let started = Instant::now();
    let mut seen: BTreeSet<Option<NotReady>> = BTreeSet::new();
    let mut behind: Option<Readiness> = None;
    let in_step = loop {
        let (code, r) = ready(&late).await;
        assert_eq!(code, if r.ready { 200 } else { 503 }, "{r:?}");
        seen.insert(r.reason);
        // In step, it watches for a second process with its key before it
        // signs (`not_signing`, the doppelganger watch).
        let expected = [
            Some(NotReady::Starting),
            Some(NotReady::NoQuorum),
            Some(NotReady::Syncing),
            Some(NotReady::NotSigning),
            None,
        ];
        assert!(expected.contains(&r.reason), "a member behind is never anything else: {r:?}");
        if r.reason == Some(NotReady::Syncing) {
            let best = r.best_peer_tip.expect("syncing names the tip it is behind");
            assert!(best > r.height + 1, "syncing means more than one block behind: {r:?}");
            behind.get_or_insert(r);
        } else if r.ready {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let behind = behind.unwrap_or_else(|| panic!("the late node was never seen syncing: {seen:?}"));
    eprintln!(
        "late node: syncing at height {} of {}, ready at {} after {:?}; reasons seen {seen:?}",
        behind.height,
        behind.best_peer_tip.unwrap(),
        in_step.height,
        started.elapsed()
    );
    assert!(behind.height + 5 < behind.best_peer_tip.unwrap(), "caught far behind: {behind:?}");
    assert!(in_step.height + 1 >= in_step.best_peer_tip.unwrap_or(0), "{in_step:?}");
    assert!(in_step.height + 2 >= nodes[0].height(), "ready means in step with the others: {in_step:?}");
    assert!(in_step.member && in_step.quorum.met, "{in_step:?}");
    assert!(seen.contains(&Some(NotReady::NotSigning)), "the watch said why it did not sign yet: {seen:?}");
    nodes.push(late);
    stop_all(nodes).await;
}
