//! Operating the daemon: provisioning, config layering, status, metrics, JSON
//! logs, sd_notify. Real processes on real sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::subnet;

const BIN: &str = env!("CARGO_BIN_EXE_masternode");
const PROVISION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/provision.sh");
const FAST: [(&str, &str); 4] = [
    ("MASTERNODE_KEEPALIVE_MS", "500"),
    ("MASTERNODE_IDLE_TIMEOUT_MS", "3000"),
    ("MASTERNODE_PASSIVE_WAIT_MS", "2000"),
    ("MASTERNODE_HANDSHAKE_TIMEOUT_MS", "2000"),
];

fn provision(inventory: &Path, out: &Path, bin: &str) -> std::process::Output {
    Command::new("bash").arg(PROVISION).arg(inventory).arg(out).env("MASTERNODE", bin).output().unwrap()
}

/// Every file under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), meta.modified().unwrap(), meta.permissions().mode() & 0o777),
                );
            }
        }
    }
    out
}

/// Admin ports are on 127.0.0.1 (p2p port + 1), shared by every test process:
/// find a block of free ones.
fn free_port_base(n: usize) -> u16 {
    let seed =
        std::process::id() as u64 ^ SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_add(attempt * 7919)) % 20_000) as u16 * 2;
        let free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + 10 * i as u16 + 1)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free ports");
}

struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn status_of(admin: SocketAddr) -> Option<masternode::status::Status> {
    masternode::admin::fetch_status(admin, Duration::from_secs(2)).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_network_produces_blocks_and_reports_status_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let base = free_port_base(5);
    let ip = |i: usize| format!("127.{a}.{b}.{i}");
    // One p2p port on every node, as on hosts of their own; these share one
    // host, so each gets its admin port from the third column.
    let admin_port = |i: usize| base + 10 * (i as u16 - 1) + 1;
    let line = |i: usize| format!("node{i} {}:24100 {}\n", ip(i), admin_port(i));
    let inventory = tmp.path().join("inventory");
    std::fs::write(&inventory, (1..=4).map(line).collect::<String>()).unwrap();
    let out = tmp.path().join("net");

    let first = provision(&inventory, &out, BIN);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for i in 1..=4 {
        let dir = out.join(format!("node{i}"));
        for f in ["node.key", "node.crt", "masternode.toml"] {
            assert!(dir.join(f).exists(), "{f} for node{i}");
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("node.key")).unwrap().permissions().mode() & 0o777, 0o600);
        let cfg = std::fs::read_to_string(dir.join("masternode.toml")).unwrap();
        assert!(cfg.contains(&format!("admin = \"127.0.0.1:{}\"", admin_port(i))), "{cfg}");
        assert!(cfg.contains(&format!("listen = \"{}:24100\"", ip(i))), "{cfg}");
    }
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(!said.contains("have admin"), "admin addresses of their own share nothing: {said}");
    let before = snapshot(&out);
    let second = provision(&inventory, &out, BIN);
    assert!(second.status.success());
    assert_eq!(snapshot(&out), before, "a second run changes no file");
    assert!(!String::from_utf8_lossy(&second.stdout).contains("provision:"), "and says nothing");

    // Bad inventories change nothing and say why.
    let bad_cases = [
        (
            "duplicate name",
            format!("{}node1 127.{a}.{b}.9:1000\n", (1..=4).map(line).collect::<String>()),
            "duplicate name",
        ),
        (
            "duplicate address",
            format!("{}node9 {}:24100\n", (1..=4).map(line).collect::<String>(), ip(1)),
            "duplicate address",
        ),
        ("bad line", format!("{}node9 not-an-address\n", (1..=4).map(line).collect::<String>()), "bad address"),
        (
            "public admin",
            format!("{}node9 {}:24100 10.0.0.1:24101\n", (1..=4).map(line).collect::<String>(), ip(9)),
            "bad admin",
        ),
    ];
    for (what, text, says) in bad_cases {
        let bad = tmp.path().join("bad");
        std::fs::write(&bad, text).unwrap();
        let r = provision(&bad, &out, BIN);
        assert!(!r.status.success(), "{what}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(says), "{what}: {err}");
        assert_eq!(snapshot(&out), before, "{what}: nothing changed");
    }
    let r = provision(&inventory, &out, "/nonexistent/masternode");
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("binary not found"));
    assert_eq!(snapshot(&out), before);

    // Run the four daemons, fast transport settings from the environment.
    let mut daemons = Daemons(Vec::new());
    for i in 1..=4 {
        let log = std::fs::File::create(tmp.path().join(format!("node{i}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(out.join(format!("node{i}/masternode.toml")))
            .envs(FAST)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        daemons.0.push(child);
    }
    let admins: Vec<SocketAddr> = (1..=4).map(|i| format!("127.0.0.1:{}", admin_port(i)).parse().unwrap()).collect();
    let start = Instant::now();
    loop {
        let mut heights = Vec::new();
        for a in &admins {
            heights.push(status_of(*a).await.map_or(0, |s| s.height));
        }
        if heights.iter().all(|h| *h >= 3) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no blocks: {heights:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // status: human form, JSON form, exit 0 when healthy.
    let cfg1 = out.join("node1/masternode.toml");
    let human = Command::new(BIN).args(["status", "--config"]).arg(&cfg1).output().unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(human.status.code(), Some(0), "{text}");
    for want in [
        "node ",
        "listen",
        "network   masternode",
        "height",
        "quorum    4/4 active, 3 required: met",
        "peers     3/3",
        "outbound",
        "rtt",
    ] {
        assert!(text.contains(want), "status output lacks {want:?}:\n{text}");
    }
    let json = Command::new(BIN).args(["status", "--json", "--admin", &admins[1].to_string()]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["quorum"]["met"], true);
    assert_eq!(v["peers"].as_array().unwrap().len(), 3);
    assert!(v["counters"]["dials"].is_u64());

    // metrics
    let metrics = masternode::admin::http_get(admins[0], "/metrics", Duration::from_secs(5)).await.unwrap();
    for want in [
        "masternode_peers_connected{direction=\"outbound\"} 3",
        "masternode_dials_total",
        "masternode_handshakes_total{result=\"ok\"}",
        "masternode_handshake_rejects_total{direction=\"sent\",reason=\"wrong_network\"} 0",
        "masternode_duplicates_closed_total",
        "masternode_sent_bytes_total",
        "masternode_received_bytes_total",
        "masternode_frames_sent_total",
        "masternode_height ",
        "masternode_quorum_active 4",
        "masternode_quorum_required 3",
        "masternode_quorum_met 1",
        "masternode_commit_latency_seconds_bucket",
        "masternode_mempool_transactions 0",
    ] {
        assert!(metrics.contains(want), "metrics lack {want:?}:\n{metrics}");
    }
    assert!(!metrics.contains(&v["node_id"].as_str().unwrap()[..16]), "no label per peer");

    // Logs are JSON when stderr is not a terminal.
    let log = std::fs::read_to_string(tmp.path().join("node1.log")).unwrap();
    let first_line = log.lines().next().unwrap();
    let parsed: serde_json::Value = serde_json::from_str(first_line).unwrap_or_else(|e| panic!("{e}: {first_line}"));
    assert!(parsed["fields"]["message"].is_string());

    // Adding a line provisions a joiner: its key and config, the genesis
    // untouched, and the line the members run to approve it.
    let genesis = std::fs::read_to_string(out.join("network.toml")).unwrap();
    std::fs::write(&inventory, (1..=5).map(line).collect::<String>()).unwrap();
    let third = provision(&inventory, &out, BIN);
    assert!(third.status.success());
    let after = snapshot(&out);
    let node_files_unchanged =
        before.iter().filter(|(p, _)| !p.to_string_lossy().contains("/data/")).all(|(p, v)| after.get(p) == Some(v));
    assert!(node_files_unchanged, "existing keys, configs and the genesis untouched");
    assert_eq!(std::fs::read_to_string(out.join("network.toml")).unwrap(), genesis);
    assert!(after.keys().any(|p| p.ends_with("node5/node.key")));
    let said = String::from_utf8_lossy(&third.stdout);
    let joiner = Command::new(BIN).args(["id", "--dir"]).arg(out.join("node5")).output().unwrap();
    let joiner = String::from_utf8_lossy(&joiner.stdout).trim().to_string();
    assert!(
        said.contains(&format!("masternode member add --id {joiner} --addr {}:24100", ip(5))),
        "the approval line for the joiner: {said}"
    );
    // Later runs do not repeat it (the chain says whether it was added since),
    // and say where a config and the inventory part.
    let moved = (1..=5).map(line).collect::<String>().replace(&format!("{}:24100", ip(2)), &format!("{}:24100", ip(9)));
    std::fs::write(&inventory, moved).unwrap();
    let fourth = provision(&inventory, &out, BIN);
    assert!(fourth.status.success());
    let said = String::from_utf8_lossy(&fourth.stdout);
    assert!(!said.contains("member add"), "{said}");
    assert!(said.contains("not in the genesis: node5"), "{said}");
    assert!(
        said.contains(&format!(
            "node2/masternode.toml has listen = \"{}:24100\", the inventory says {}:24100; left as is",
            ip(2),
            ip(9)
        )),
        "{said}"
    );
    std::fs::write(&inventory, (1..=5).filter(|i| *i != 3).map(line).collect::<String>()).unwrap();
    let fifth = provision(&inventory, &out, BIN);
    assert!(String::from_utf8_lossy(&fifth.stdout).contains("node3 is not in the inventory; left as is"));
    assert!(out.join("node3/node.key").exists(), "a key is never deleted");

    // SIGTERM: every daemon exits 0 within a few seconds.
    for c in &daemons.0 {
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
    }
    let start = Instant::now();
    for c in &mut daemons.0 {
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                assert_eq!(s.code(), Some(0));
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "still running after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The inventory of docs/operating.md: one port on every node, no admin column. Each
/// config gets 127.0.0.1:<port + 1>, and the run says that nodes sharing a
/// host would clash there.
#[test]
fn provision_with_one_port_on_every_node_says_admin_addresses_are_shared() {
    let tmp = tempfile::tempdir().unwrap();
    let inventory = tmp.path().join("inventory");
    let text = "mn-fra 203.0.113.7:24100\nmn-ams 198.51.100.20:24100\nmn-nyc 192.0.2.33:24100 24111\n";
    std::fs::write(&inventory, text).unwrap();
    let out = tmp.path().join("net");
    let r = provision(&inventory, &out, BIN);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let admin = |name: &str| {
        let cfg = std::fs::read_to_string(out.join(name).join("masternode.toml")).unwrap();
        cfg.lines().find(|l| l.starts_with("admin = ")).unwrap().to_string()
    };
    assert_eq!(admin("mn-fra"), "admin = \"127.0.0.1:24101\"");
    assert_eq!(admin("mn-ams"), "admin = \"127.0.0.1:24101\"");
    assert_eq!(admin("mn-nyc"), "admin = \"127.0.0.1:24111\"", "the third column");
    let said = String::from_utf8_lossy(&r.stdout);
    let notes: Vec<&str> = said.lines().filter(|l| l.contains("have admin")).collect();
    assert_eq!(notes.len(), 1, "one line per shared address: {said}");
    assert!(notes[0].contains("mn-fra mn-ams have admin 127.0.0.1:24101"), "{said}");
    assert!(notes[0].contains("third column"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_beat_file() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let configs = masternode::devnet::lay_out(tmp.path(), 1, ip).unwrap();
    // The file says 127.a.b.1:24101; the environment says .1:24111; the flag says .1:24121.
    let env_admin = format!("127.{a}.{b}.1:24111");
    let flag_admin = format!("127.{a}.{b}.1:24121");
    let mut child = Daemons(vec![Command::new(BIN)
        .args(["run", "--admin", &flag_admin, "--config"])
        .arg(&configs[0])
        .env("MASTERNODE_ADMIN", &env_admin)
        .env("MASTERNODE_DATA_DIR", tmp.path().join("elsewhere"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap()]);
    let start = Instant::now();
    while status_of(flag_admin.parse().unwrap()).await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "not serving on the flag's address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status_of(env_admin.parse().unwrap()).await.is_none());
    assert!(tmp.path().join("elsewhere").exists(), "data dir from the environment");
    let _ = child.0[0].kill();
    let _ = child.0[0].wait();
}

#[test]
fn admin_on_a_public_address_is_refused_unless_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let configs = masternode::devnet::lay_out(tmp.path(), 1, ip).unwrap();
    let out =
        Command::new(BIN).args(["run", "--admin", "0.0.0.0:24101", "--config"]).arg(&configs[0]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_public"), "{err}");
    assert!(
        err.starts_with("error: --admin (or MASTERNODE_ADMIN): admin 0.0.0.0:24101"),
        "the flag, not the file: {err}"
    );
}

/// `status --config` asks where the node serves, also when `run` was given
/// another admin address than the file's; and says where it asked when no
/// one answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_config_finds_a_node_whose_admin_address_was_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let configs = masternode::devnet::lay_out(tmp.path(), 1, ip).unwrap();
    let flag_admin = format!("127.{a}.{b}.1:24131");
    let mut child = Daemons(vec![Command::new(BIN)
        .args(["run", "--admin", &flag_admin, "--config"])
        .arg(&configs[0])
        .stderr(Stdio::null())
        .spawn()
        .unwrap()]);
    let start = Instant::now();
    while status_of(flag_admin.parse().unwrap()).await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "not serving on the flag's address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = Command::new(BIN).args(["status", "--config"]).arg(&configs[0]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("member    true, one of 1"), "{text}");
    let out = Command::new(BIN).args(["members", "--config"]).arg(&configs[0]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = child.0[0].kill();
    let _ = child.0[0].wait();
    let out = Command::new(BIN).args(["status", "--config"]).arg(&configs[0]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("down: no answer from {flag_admin}")), "{err}");
    assert!(err.contains("--admin ADDR"), "{err}");
}

/// A member bound to another address than the one the chain has for it:
/// peers dial the chain's (it reaches them through the passive-wait fallback),
/// so `status` shows both and warns, and a warning is a degraded exit, 1,
/// even with the quorum met and every member connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_bound_address_and_exits_degraded_on_any_warning() {
    let mut net = crate::common::procs::Net::new(4);
    let in_set = net.admins[1].ip();
    let elsewhere = match in_set {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            std::net::Ipv4Addr::new(o[0], o[1], o[2], 9)
        }
        _ => unreachable!(),
    };
    let bound = format!("{elsewhere}:{}", masternode::devnet::P2P_PORT);
    for i in [0, 2, 3] {
        net.start(i);
    }
    net.start_with_env(1, &[("MASTERNODE_LISTEN", &bound)]);
    let statuses = net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30), "a full mesh").await;
    assert!(statuses.iter().all(|s| s.quorum.met));
    let s = &statuses[1];
    assert_eq!(s.listen, format!("{in_set}:{}", masternode::devnet::P2P_PORT), "where peers dial");
    assert_eq!(s.bound.as_deref(), Some(bound.as_str()));
    let out = Command::new(BIN).args(["status", "--admin", &net.admins[1].to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a WARNING is degraded:\n{text}");
    assert!(text.contains(&format!("listen    {in_set}:24100 (bound {bound})")), "{text}");
    assert!(
        text.contains(&format!("WARNING   bound to {bound} but the member set has this node at {in_set}:24100")),
        "{text}"
    );
    let out = Command::new(BIN).args(["status", "--admin", &net.admins[0].to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "its peers are healthy:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_reports_ready_status_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let configs = masternode::devnet::lay_out(tmp.path(), 1, ip).unwrap();
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = Daemons(vec![Command::new(BIN)
        .args(["run", "--config"])
        .arg(&configs[0])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()]);
    let mut messages: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut termed = false;
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
        }
        let watchdogs = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
        if !termed && watchdogs >= 2 {
            Command::new("kill").args(["-TERM", &child.0[0].id().to_string()]).status().unwrap();
            termed = true;
        }
        if messages.iter().any(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert_eq!(messages.first().map(String::as_str), Some("READY=1"), "{messages:?}");
    // A one-node network has min_active 1: its quorum is met at once.
    assert!(messages.iter().any(|m| m.starts_with("STATUS=peers 0/0, height 0, quorum met")), "{messages:?}");
    assert!(messages.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2, "{messages:?}");
    assert!(messages.iter().any(|m| m == "STOPPING=1"), "{messages:?}");
    assert_eq!(child.0[0].wait().unwrap().code(), Some(0));
}

/// `devnet --base-ip --base-port` moves the whole network off 127.0.0.i:24100:
/// node i on the i-th address from the base, admin API on the next port, where
/// `status --admin` finds it while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_runs_off_the_default_base() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let base = format!("127.{a}.{b}.1");
    let dir = tmp.path().join("devnet");
    let mut child = Command::new(BIN)
        .args(["devnet", "--nodes", "3", "--duration", "60", "--json", "--base-ip", &base, "--base-port", "24200"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let second: SocketAddr = format!("127.{a}.{b}.2:24201").parse().unwrap();
    let start = Instant::now();
    while status_of(second).await.is_none_or(|s| s.height < 1) {
        assert!(start.elapsed() < Duration::from_secs(30), "no block from node 2 at {second}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(BIN).args(["status", "--admin", &second.to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("listen    127.{a}.{b}.2:24200")));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
        (child.wait().unwrap(), text)
    })
    .await
    .unwrap();
    assert!(out.0.success(), "{}", out.1);
    let summary: serde_json::Value = serde_json::from_str(out.1.lines().last().unwrap()).unwrap();
    let listens: Vec<&str> =
        summary["nodes"].as_array().unwrap().iter().map(|n| n["listen"].as_str().unwrap()).collect();
    let want: Vec<String> = (1..=3).map(|i| format!("127.{a}.{b}.{i}:24200")).collect();
    assert_eq!(listens, want, "{}", out.1);

    // The directory remembers its base; a devnet outside loopback is refused.
    let again =
        Command::new(BIN).args(["devnet", "--nodes", "3", "--duration", "1", "--dir"]).arg(&dir).output().unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(&format!("has node1 at {base}:24200, not 127.0.0.1:24100")), "{err}");
    let outside = Command::new(BIN).args(["devnet", "--base-ip", "10.0.0.1", "--duration", "1"]).output().unwrap();
    assert!(!outside.status.success());
    assert!(String::from_utf8_lossy(&outside.stderr).contains("loopback"));
}

/// A devnet that is asked to stop says nothing at warn or above: its nodes
/// leaving one another is the stop asked for, not a lost quorum.
#[test]
fn a_devnet_stopping_logs_no_warning() {
    let [a, b] = subnet();
    let base = format!("127.{a}.{b}.1");
    // Long enough for a first block under load: each node's doppelganger
    // watch holds its first signature for two intervals after the mesh forms.
    let out = Command::new(BIN)
        .args(["devnet", "--duration", "6", "--base-ip", &base])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("height 1 "), "blocks were made: {stdout}");
    let loud: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(loud.is_empty(), "a devnet's stop logged as trouble:\n{}", loud.join("\n"));
}
