//! The doppelganger watch and the signing floor on real processes: a second
//! process started with a member's key stops with exit code 4 having signed
//! nothing, and a member restarted on an older copy of its data dir signs
//! nothing at or below what its peers hold of its key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::procs::Net;
use masternode::chain::{SignRecord, Store};

const WAIT: Duration = Duration::from_secs(60);

/// Copies a directory tree (a stopped node's data dir).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The record of the last signature in a stopped node's data dir.
fn last_signed(data_dir: &Path) -> Option<SignRecord> {
    Store::open(data_dir).unwrap().last_signed().unwrap()
}

/// Puts `line` at the top of node `i`'s config (a top-level key must come
/// before the `[transport]` table).
fn prepend_to_config(net: &Net, i: usize, line: &str) {
    let text = std::fs::read_to_string(&net.configs[i]).unwrap();
    std::fs::write(&net.configs[i], format!("{line}\n{text}")).unwrap();
}

/// Polls until every node listed is at `height` or above (its tip).
async fn until_height(net: &Net, nodes: &[usize], height: u64, what: &str) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let mut heights = Vec::new();
        for &i in nodes {
            heights.push(net.status(i).await.map_or(0, |s| s.height));
        }
        if heights.iter().all(|h| *h >= height) {
            return heights;
        }
        assert!(start.elapsed() < WAIT, "not within {WAIT:?}: {what} (heights {heights:?})\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second config for node `of`'s key, on the next free address of the
/// test's subnet with an empty data dir: index `net.configs.len()`.
fn add_twin(net: &mut Net, of: usize, transport: &str) -> usize {
    let i = net.configs.len();
    let ip = net.admins[of].ip();
    let std::net::IpAddr::V4(v4) = ip else { panic!("IPv4 loopback") };
    let [a, b, c, _] = v4.octets();
    let twin_ip = std::net::Ipv4Addr::new(a, b, c, i as u8 + 1);
    let dir = net.dir.path().join(format!("node{}", i + 1));
    std::fs::create_dir_all(&dir).unwrap();
    let original = net.configs[of].parent().unwrap().to_path_buf();
    for f in ["node.key", "node.crt"] {
        std::fs::copy(original.join(f), dir.join(f)).unwrap();
    }
    let port = masternode::devnet::P2P_PORT;
    let admin = std::net::SocketAddr::new(twin_ip.into(), masternode::devnet::ADMIN_PORT);
    let cfg = format!(
        "network = \"../network.toml\"\nkey = \"node.key\"\ncert = \"node.crt\"\nlisten = \"{twin_ip}:{port}\"\nadmin = \"{admin}\"\ndata_dir = \"data\"\n{transport}"
    );
    let path: PathBuf = dir.join("masternode.toml");
    std::fs::write(&path, cfg).unwrap();
    net.configs.push(path);
    net.admins.push(admin);
    net.procs.push(None);
    net.bins.push(PathBuf::from(crate::common::procs::BIN));
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_members_key_exits_4_having_signed_nothing() {
    // Members wait 5 s before they dial a member that should dial them, so
    // the second process (which the others never dial: they dial the first
    // one's address) is in the mesh only after the first has signed blocks
    // stamped after the second one started.
    let transport =
        "\n[transport]\nkeepalive_ms = 500\nidle_timeout_ms = 3000\npassive_wait_ms = 5000\nhandshake_timeout_ms = 2000\n";
    let mut net = Net::with_transport(4, transport);
    net.set_block_interval(500);
    for i in 0..4 {
        net.start(i);
    }
    until_height(&net, &[0, 1, 2, 3], 3, "four members make blocks").await;
    // Node 4 has the highest address: every other member dials it there.
    let twin = add_twin(&mut net, 3, transport);
    net.start(twin);
    let code = net.exited(twin, WAIT).await;
    let log = net.log(twin);
    assert_eq!(code, Some(4), "the second process exits 4\n{log}");
    let line = log.lines().find(|l| l.contains("another process signs with this node's key")).unwrap_or_else(|| {
        panic!("one error names the evidence\n{log}");
    });
    assert!(line.contains("ERROR") && line.contains("height") && line.contains("from peer"), "{line}");
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR") && l.contains("another process signs")).count(),
        1,
        "one error line\n{log}"
    );
    assert_eq!(last_signed(&net.data_dir(twin)), None, "it signed nothing");
    // The members go on.
    let now = net.status(0).await.unwrap().height;
    until_height(&net, &[0, 1, 2], now + 2, "the members go on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_an_older_copy_of_its_data_dir_signs_nothing_its_peers_hold_of_its_key() {
    // Long heights leave a window between a block and the first signature
    // of the next height; node 3 never votes (its watch outlasts the test)
    // but counts for the quorum gate, so a height with only nodes 1 and 4
    // voting stays undecided while they sign in it.
    let mut net = Net::new(4);
    net.set_block_interval(3_000);
    prepend_to_config(&net, 2, "doppelganger_intervals = 100");
    let (a, b, c, x) = (0, 1, 2, 3);
    for i in [a, b, x] {
        net.start(i);
    }
    let tip = until_height(&net, &[a, b, x], 2, "three members make blocks").await[0];
    // Right after a block: x has not signed in the next height yet.
    until_height(&net, &[a], tip + 1, "the next block").await;
    assert!(net.stop(x, WAIT).await.is_some());
    assert!(net.stop(b, WAIT).await.is_some());
    let height = net.status(a).await.unwrap().height + 1;
    let copy = net.dir.path().join("copy");
    copy_dir(&net.data_dir(x), &copy);
    let old = last_signed(&copy);
    assert!(old.is_none_or(|r| r.height < height), "the copy holds nothing of height {height}: {old:?}");

    // x signs in that height, which stays undecided: a and x vote, c watches.
    net.start(c);
    net.start(x);
    let start = Instant::now();
    loop {
        let ready = net.status(x).await.is_some_and(|s| s.signing_held.is_none() && s.quorum.met);
        if ready {
            break;
        }
        assert!(start.elapsed() < WAIT, "x signs again\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its propose timeout (3.5 s), then its prevote.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(net.stop(x, WAIT).await.is_some());
    let newer = last_signed(&net.data_dir(x)).expect("x signed");
    assert_eq!(newer.height, height, "x signed in height {height}, not decided");
    assert_eq!(net.status(a).await.unwrap().height + 1, height, "the height is still undecided");

    // Restored from the copy, x learns from a what its key signed.
    std::fs::remove_dir_all(net.data_dir(x)).unwrap();
    copy_dir(&copy, &net.data_dir(x));
    net.start(x);
    let start = Instant::now();
    while !net.log(x).contains("signed with this node's key that its signing record") {
        assert!(start.elapsed() < WAIT, "x warns that its data dir is older\n{}", net.log(x));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Well past its watch and a propose timeout: it signs nothing at or below.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(net.stop(x, WAIT).await.is_some());
    let after = last_signed(&net.data_dir(x));
    assert!(
        after == old || after.is_some_and(|r| r > newer),
        "nothing signed between the copy's record {old:?} and what peers hold {newer:?}: {after:?}\n{}",
        net.log(x)
    );
    let warned = net.log(x).lines().filter(|l| l.contains("WARN") && l.contains("its signing record")).count();
    assert_eq!(warned, 1, "once (the run before the restore had nothing to warn about)\n{}", net.log(x));

    // With b back the height is decided and x signs above what it signed.
    net.start(x);
    net.start(b);
    until_height(&net, &[a, b], height + 1, "the height is decided").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(net.stop(x, WAIT).await.is_some());
    let last = last_signed(&net.data_dir(x)).expect("x signs");
    assert!(last > newer, "x signs again, above {newer:?}: {last:?}");
    for i in [a, b] {
        assert!(!net.log(i).contains("equivocation"), "no conflicting vote left x\n{}", net.log(i));
    }
}
