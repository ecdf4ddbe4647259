//! Membership through the command line, as an operator runs it: daemons as
//! processes, `masternode member add|remove|set-addr` and `masternode members`.
//! A joiner is added, a member moves to a new address, the joiner is removed, and
//! a change that breaks the rules is refused with one line.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::common::procs::{Net, BIN};
use masternode::admin::{fetch_members, MembersInfo};

fn node_id(net: &Net, i: usize) -> String {
    let dir = net.configs[i].parent().unwrap();
    let out = Command::new(BIN).args(["id", "--dir"]).arg(dir).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn p2p_addr(net: &Net, i: usize) -> SocketAddr {
    SocketAddr::new(net.admins[i].ip(), masternode::devnet::P2P_PORT)
}

/// Takes node `i` out of the genesis file (before any node starts), so it
/// starts as a joiner; its id.
fn drop_from_genesis(net: &Net, i: usize) -> String {
    let joiner = node_id(net, i);
    let genesis = net.dir.path().join("network.toml");
    let text = std::fs::read_to_string(&genesis).unwrap();
    let cut = text.find(&format!("id = \"{joiner}\"")).unwrap();
    let start_of_entry = text[..cut].rfind("[[masternode]]").unwrap();
    let end_of_entry = text[cut..].find("[[masternode]]").map_or(text.len(), |e| cut + e);
    std::fs::write(&genesis, format!("{}{}", &text[..start_of_entry], &text[end_of_entry..])).unwrap();
    joiner
}

/// Node `i`'s log lines at `level` (the daemons log JSON lines to a file).
fn lines_at(net: &Net, i: usize, level: &str) -> Vec<String> {
    let tag = format!("\"level\":\"{level}\"");
    net.log(i).lines().filter(|l| l.contains(&tag)).map(str::to_string).collect()
}

/// Runs `masternode ARGS`; exit code, stdout, stderr.
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

async fn members(net: &Net, i: usize) -> Option<MembersInfo> {
    fetch_members(net.admins[i], Duration::from_secs(2)).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_add_move_and_remove_members_with_the_cli() {
    let mut net = Net::new(5);
    net.set_block_interval(500);
    // Node 5 is provisioned but not in the genesis: a joiner.
    let joiner = drop_from_genesis(&net, 4);
    for i in 0..5 {
        net.start(i);
    }
    net.until("the four genesis members commit", Duration::from_secs(30), || async {
        let mut ok = true;
        for i in 0..4 {
            ok &= net.status(i).await.is_some_and(|s| s.height >= 2);
        }
        ok
    })
    .await;
    let s = net.status(4).await.expect("the joiner runs (no exit 78)");
    assert!(!s.member, "the joiner says it is not a member");

    // Join: three of four members approve.
    let joiner_addr = p2p_addr(&net, 4).to_string();
    for i in 0..3 {
        let admin = net.admins[i].to_string();
        let (code, out, err) = cli(&["member", "add", "--id", &joiner, "--addr", &joiner_addr, "--admin", &admin]);
        assert_eq!(code, Some(0), "member add on node {i}: {err}");
        assert!(out.starts_with("approved add"), "{out}");
        assert!(out.contains(" of 3 approvals"), "node {i}: {out}");
    }
    net.until("the joiner is a member everywhere and caught up", Duration::from_secs(30), || async {
        let mut ok = true;
        for i in 0..5 {
            ok &= members(&net, i).await.is_some_and(|m| m.members.iter().any(|e| e.node_id == joiner));
        }
        let tip = net.status(0).await.map_or(0, |s| s.height);
        ok && net.status(4).await.is_some_and(|s| s.member && s.height + 2 >= tip)
    })
    .await;
    let (code, out, _) = cli(&["members", "--admin", &net.admins[4].to_string(), "--json"]);
    assert_eq!(code, Some(0));
    let parsed: MembersInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed.members.len(), 5);
    assert!(parsed.members.iter().find(|e| e.node_id == joiner).is_some_and(|e| e.since_height > 0));

    // Move: node 3 announces a new address, then restarts there.
    let moved = node_id(&net, 2);
    let new_addr = SocketAddr::new(
        std::net::IpAddr::V4(match net.admins[2].ip() {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                std::net::Ipv4Addr::new(o[0], o[1], o[2], 9)
            }
            _ => unreachable!(),
        }),
        masternode::devnet::P2P_PORT,
    );
    let cfg3 = net.configs[2].to_string_lossy().to_string();
    let (code, out, err) = cli(&["member", "set-addr", "--addr", &new_addr.to_string(), "--config", &cfg3]);
    assert_eq!(code, Some(0), "set-addr: {err}");
    assert!(out.starts_with("announced set-addr") && out.contains("in force two blocks after"), "{out}");
    assert!(!out.contains("approvals"), "a move is not voted on: {out}");
    net.until("the new address is in force", Duration::from_secs(20), || async {
        members(&net, 0)
            .await
            .is_some_and(|m| m.members.iter().any(|e| e.node_id == moved && e.addr == new_addr.to_string()))
    })
    .await;
    net.signal(2, "TERM");
    let _ = net.procs[2].take().unwrap().wait();
    let text = std::fs::read_to_string(&net.configs[2]).unwrap();
    let old_listen = format!("listen = \"{}\"", p2p_addr(&net, 2));
    std::fs::write(&net.configs[2], text.replace(&old_listen, &format!("listen = \"{new_addr}\""))).unwrap();
    net.start(2);
    net.until("the peers reconnect to the moved member at its new address", Duration::from_secs(15), || async {
        let mut ok = true;
        for i in [0, 1, 3, 4] {
            ok &= net
                .status(i)
                .await
                .is_some_and(|s| s.peers.iter().any(|p| p.node_id == moved && p.addr == new_addr.to_string()));
        }
        ok
    })
    .await;

    // A change against the rules: one line, exit 1, nothing pending.
    let admin0 = net.admins[0].to_string();
    let (code, out, err) = cli(&["member", "add", "--id", &moved, "--addr", "127.0.0.1:1", "--admin", &admin0]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("already a member") && err.contains("(reason: already_member)"), "{err}");
    let taken = p2p_addr(&net, 0).to_string();
    let admin1 = net.admins[1].to_string();
    let (code, _, err) = cli(&["member", "set-addr", "--addr", &taken, "--admin", &admin1]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is already used by member") && err.ends_with("(reason: address_in_use)"), "{err}");
    // The node signs only for a client that can set the content type.
    let body = format!("{{\"change\":\"remove\",\"id\":\"{joiner}\"}}");
    let (status, _) =
        masternode::admin::http_request(net.admins[0], "POST", "/members", body.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(status, 415, "a body without Content-Type: application/json is refused");
    let (code, _, err) = cli(&["member", "remove", "--id", "not-hex", "--admin", &admin0]);
    assert_eq!(code, Some(2), "a malformed id is refused before asking the node: {err}");

    // Leave: four of five approve removing the joiner.
    for i in 0..4 {
        let admin = net.admins[i].to_string();
        let (code, _, err) = cli(&["member", "remove", "--id", &joiner, "--admin", &admin]);
        assert_eq!(code, Some(0), "member remove on node {i}: {err}");
    }
    net.until("the removed member is out and disconnected", Duration::from_secs(30), || async {
        let mut ok = true;
        for i in 0..4 {
            ok &= members(&net, i).await.is_some_and(|m| !m.members.iter().any(|e| e.node_id == joiner));
            ok &= net.status(i).await.is_some_and(|s| !s.peers.iter().any(|p| p.node_id == joiner));
        }
        ok
    })
    .await;
    net.until("the removed node knows it was removed", Duration::from_secs(20), || async {
        net.status(4).await.is_some_and(|s| !s.member && s.removed_at_height.is_some())
    })
    .await;
    let (code, text, _) = cli(&["status", "--admin", &net.admins[4].to_string()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("member    false: removed at height"), "{text}");
    assert!(text.contains("WARNING   this node was removed from the member set"), "{text}");
    assert!(!text.contains("joiner"), "not a joiner's words: {text}");
    let h = net.status(0).await.unwrap().height;
    net.until("blocks go on with four members", Duration::from_secs(20), || async {
        net.status(0).await.is_some_and(|s| s.height >= h + 3 && s.quorum.met)
    })
    .await;

    // The removed member's address is free again: another member takes it
    // (as a rotated key takes back the old key's address).
    let freed = p2p_addr(&net, 4).to_string();
    let taker = node_id(&net, 3);
    let (code, out, err) = cli(&["member", "set-addr", "--addr", &freed, "--admin", &net.admins[3].to_string()]);
    assert_eq!(code, Some(0), "{out} {err}");
    net.until("the freed address is the taker's", Duration::from_secs(20), || async {
        members(&net, 0).await.is_some_and(|m| m.members.iter().any(|e| e.node_id == taker && e.addr == freed))
    })
    .await;
}

/// The runbook's order: one member approves, the joiner starts, the others
/// approve. Until its add is in force every member refuses the joiner's key:
/// an expected state on both ends, so at most one info line per peer and no
/// warning, and the joiner dials at once instead of waiting its passive wait
/// (here a minute) for members that do not know it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_joiner_logs_at_most_one_info_line_per_peer_and_no_warning() {
    let mut net = Net::new(5);
    net.set_block_interval(500);
    let joiner = drop_from_genesis(&net, 4);
    for i in 0..4 {
        net.start(i);
    }
    net.until("the four genesis members commit", Duration::from_secs(30), || async {
        let mut ok = true;
        for i in 0..4 {
            ok &= net.status(i).await.is_some_and(|s| s.height >= 2);
        }
        ok
    })
    .await;
    let joiner_addr = p2p_addr(&net, 4).to_string();
    let admins = net.admins.clone();
    let approve = |i: usize| {
        let admin = admins[i].to_string();
        let (code, out, err) = cli(&["member", "add", "--id", &joiner, "--addr", &joiner_addr, "--admin", &admin]);
        assert_eq!(code, Some(0), "member add on node {i}: {out} {err}");
    };
    approve(0);
    net.until("every member knows the add is collecting approvals", Duration::from_secs(20), || async {
        let mut ok = true;
        for i in 0..4 {
            ok &= members(&net, i).await.is_some_and(|m| m.pending.iter().any(|p| p.node_id == joiner));
        }
        ok
    })
    .await;
    net.start_with_env(4, &[("MASTERNODE_PASSIVE_WAIT_MS", "60000")]);
    net.until("every member refused the joiner at TLS, twice", Duration::from_secs(30), || async {
        let mut ok = true;
        for i in 0..4 {
            ok &= net.status(i).await.is_some_and(|s| s.counters.tls_refused >= 2);
        }
        ok
    })
    .await;
    let s = net.status(4).await.expect("the joiner serves its status");
    assert!(!s.member && s.peers.is_empty(), "refused everywhere: {s:?}");
    let (code, text, _) = cli(&["status", "--admin", &net.admins[4].to_string()]);
    assert_eq!(code, Some(1), "a joiner is degraded, not healthy:\n{text}");
    for want in [
        "member    false: a joiner, accepted once its add is in force",
        "sync      unknown: no peer connected to compare with",
        "WARNING   this node is not in the member set (4 members): a joiner",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    approve(1);
    approve(2);
    net.until("the joiner is a member and connected", Duration::from_secs(60), || async {
        net.status(4).await.is_some_and(|s| s.member && s.peers.len() == 4)
    })
    .await;

    let warned = |i: usize| -> Vec<String> {
        lines_at(&net, i, "WARN").into_iter().filter(|l| l.contains("TLS") || l.contains("member set")).collect()
    };
    for i in 0..5 {
        assert!(warned(i).is_empty(), "node {}: refusals warned:\n{}", i + 1, warned(i).join("\n"));
    }
    let expected = lines_at(&net, 4, "INFO")
        .into_iter()
        .filter(|l| l.contains("expected while this node is not in the member set"))
        .count();
    assert!((1..=4).contains(&expected), "the joiner: one info line per member at most, {expected}\n{}", net.log(4));
    for i in 0..4 {
        let said = lines_at(&net, i, "INFO").into_iter().filter(|l| l.contains("is a joiner whose add")).count();
        assert_eq!(said, 1, "node {}: one info line for the joiner\n{}", i + 1, net.log(i));
    }
}
