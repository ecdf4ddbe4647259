//! The `masternode` binary as operators run it: child processes, kill -9, SIGSTOP,
//! SIGTERM, bad configurations.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::procs::{Net, BIN};
use crate::common::subnet;
use masternode::status::Status;

/// Each pair once: every node lists every other node exactly once.
fn assert_one_connection_per_pair(statuses: &[Status]) {
    for s in statuses {
        let mut ids: Vec<_> = s.peers.iter().map(|p| p.node_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), s.peers.len(), "{} lists a peer twice", s.node_id);
        assert_eq!(s.peers.len(), statuses.len() - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_peer_is_dropped_within_idle_timeout_and_rejoins() {
    let mut net = Net::new(3);
    for i in 0..3 {
        net.start(i);
    }
    let s = net.until_peers(&[0, 1, 2], 2, Duration::from_secs(20), "initial mesh").await;
    assert_one_connection_per_pair(&s);

    for victim in [2usize, 0] {
        let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        net.kill9(victim);
        let killed = Instant::now();
        net.until_peers(&others, 1, Duration::from_secs(10), "survivors drop the killed node").await;
        let took = killed.elapsed();
        assert!(took <= Duration::from_millis(3000 + 2000), "dropped after {took:?}, idle timeout is 3 s");
        net.start(victim);
        let s = net.until_peers(&[0, 1, 2], 2, Duration::from_secs(30), "restarted node rejoins").await;
        assert_one_connection_per_pair(&s);
        let restarted = &s.iter().find(|st| st.listen == s[victim].listen).unwrap().counters;
        assert!(restarted.handshakes_ok <= 4, "no redial storm after restart: {restarted:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_beyond_idle_timeout_then_sigcont_ends_with_one_connection_per_pair() {
    let mut net = Net::new(3);
    for i in 0..3 {
        net.start(i);
    }
    net.until_peers(&[0, 1, 2], 2, Duration::from_secs(20), "initial mesh").await;
    net.signal(1, "STOP");
    net.until_peers(&[0, 2], 1, Duration::from_secs(10), "others drop the stopped node").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.signal(1, "CONT");
    let s = net.until_peers(&[0, 1, 2], 2, Duration::from_secs(30), "mesh after SIGCONT").await;
    assert_one_connection_per_pair(&s);
    // The resumed node must settle, not flap: the mesh is still whole a moment later.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = net.until_peers(&[0, 1, 2], 2, Duration::from_secs(5), "mesh stays whole").await;
    assert_one_connection_per_pair(&s);
    let _ = &mut net;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_seconds_and_status_reports_down_after() {
    let mut net = Net::new(3);
    net.start(0);
    net.start(1);
    net.until_peers(&[0, 1], 1, Duration::from_secs(20), "pair connects").await;
    let out = Command::new(BIN).args(["status", "--admin", &net.admins[0].to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("quorum") && text.contains("outbound"), "{text}");
    // Two of three members is below min_active 3: degraded.
    assert_eq!(out.status.code(), Some(1), "{text}");

    net.signal(0, "TERM");
    let start = Instant::now();
    let mut child = net.procs[0].take().unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
    // The peer hears the shutdown close at once rather than after the idle timeout.
    net.until_peers(&[1], 0, Duration::from_secs(2), "peer sees the shutdown").await;
    let out = Command::new(BIN).args(["status", "--admin", &net.admins[0].to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "status of a stopped node is 'down'");
}

#[test]
fn version_names_the_release_commit_wire_versions_and_store_format() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want = format!(
        "masternode {} (commit {}) wire {} store {}",
        env!("CARGO_PKG_VERSION"),
        masternode::status::COMMIT,
        masternode::net::WIRE,
        masternode::chain::FORMAT
    );
    assert_eq!(text, want);
    assert!(text.starts_with("masternode 0.2.0 (commit ") && text.ends_with(") wire 3..4 store 4"), "{text}");
    let commit = masternode::status::COMMIT;
    assert!(commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{commit}");
}

fn run_config(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN).arg("run").arg("--config").arg(path).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

#[test]
fn bad_configurations_exit_78_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let configs = masternode::devnet::lay_out(dir.path(), 2, ip).unwrap();
    let cfg = &configs[0];
    let original = std::fs::read_to_string(cfg).unwrap();
    let network = dir.path().join("network.toml");
    let net_original = std::fs::read_to_string(&network).unwrap();
    let other = tempfile::tempdir().unwrap();
    masternode::identity::Identity::generate().unwrap().write(other.path(), false).unwrap();

    type Edit<'a> = Box<dyn Fn() + 'a>;
    let reset = || {
        std::fs::write(cfg, &original).unwrap();
        std::fs::write(&network, &net_original).unwrap();
    };
    let cases: Vec<(&str, Edit<'_>, &str, &str)> = vec![
        (
            "unknown key",
            Box::new(|| std::fs::write(cfg, format!("{original}colour = \"blue\"\n")).unwrap()),
            "masternode.toml",
            "unknown field",
        ),
        (
            "bad listen address",
            Box::new(|| std::fs::write(cfg, original.replace(":24100", ":notaport")).unwrap()),
            "masternode.toml",
            "listen",
        ),
        (
            "missing network file",
            Box::new(|| std::fs::write(cfg, original.replace("../network.toml", "../nope.toml")).unwrap()),
            "nope.toml",
            "cannot read",
        ),
        (
            "duplicate member address",
            Box::new(|| {
                let two = format!("{a}.{b}.2:24100");
                std::fs::write(&network, net_original.replace(&two, &format!("{a}.{b}.1:24100"))).unwrap()
            }),
            "network.toml",
            "duplicate masternode addr",
        ),
        (
            "duplicate member id",
            Box::new(|| {
                let ids: Vec<&str> = net_original.lines().filter(|l| l.starts_with("id = ")).collect();
                std::fs::write(&network, net_original.replace(ids[1], ids[0])).unwrap()
            }),
            "network.toml",
            "duplicate masternode id",
        ),
        (
            "key not matching the certificate",
            Box::new(|| {
                std::fs::write(
                    cfg,
                    original.replace("cert = \"node.crt\"", &format!("cert = {:?}", other.path().join("node.crt"))),
                )
                .unwrap()
            }),
            "node.crt",
            "does not match",
        ),
        (
            "a joiner (key not in the genesis) on an address no member can dial",
            Box::new(|| {
                let key = other.path().join("node.key");
                let crt = other.path().join("node.crt");
                std::fs::write(
                    cfg,
                    original
                        .replace("key = \"node.key\"", &format!("key = {key:?}"))
                        .replace("cert = \"node.crt\"", &format!("cert = {crt:?}"))
                        .replace(&format!("listen = \"127.{a}.{b}.1:"), "listen = \"0.0.0.0:"),
                )
                .unwrap()
            }),
            "network.toml",
            "not in the genesis set",
        ),
        (
            "min_active above the member count",
            Box::new(|| std::fs::write(&network, net_original.replace("min_active = 2", "min_active = 3")).unwrap()),
            "network.toml",
            "min_active = 3 exceeds the 2 masternodes",
        ),
        ("missing config file", Box::new(|| std::fs::remove_file(cfg).unwrap()), "masternode.toml", "cannot read"),
    ];
    for (what, edit, file, problem) in cases {
        reset();
        edit();
        let (code, stderr) = run_config(cfg);
        assert_eq!(code, Some(78), "{what}: exit code; stderr: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line, got {stderr:?}");
        assert!(
            stderr.contains(file) && stderr.contains(problem),
            "{what}: {stderr:?} should name {file} and say {problem:?}"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = |force: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["keygen", "--dir"]).arg(dir.path());
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let first = keygen(false);
    assert!(first.status.success());
    let id = String::from_utf8_lossy(&first.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "prints the NodeId last: {id:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("node.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let again = keygen(false);
    assert!(!again.status.success(), "refuses to overwrite");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let loaded =
        masternode::identity::Identity::load(&dir.path().join("node.key"), &dir.path().join("node.crt")).unwrap();
    assert_eq!(loaded.id().to_hex(), id, "key unchanged");

    let forced = keygen(true);
    assert!(forced.status.success());
    assert_ne!(String::from_utf8_lossy(&forced.stdout).trim(), id);

    // OpenSSL reads the key and finds the certificate's public key in it.
    if Command::new("openssl").arg("version").output().is_ok() {
        let from_key =
            Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(dir.path().join("node.key")).output().unwrap();
        let from_crt = Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(dir.path().join("node.crt"))
            .output()
            .unwrap();
        assert!(from_key.status.success(), "openssl pkey: {}", String::from_utf8_lossy(&from_key.stderr));
        assert_eq!(from_key.stdout, from_crt.stdout, "key and certificate carry the same public key");
    }
    // So does Python's `cryptography` (CI installs it).
    let script =
        "import sys\nfrom cryptography.hazmat.primitives import serialization as s\nfrom cryptography import x509\n\
        k = s.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\n\
        c = x509.load_pem_x509_certificate(open(sys.argv[2], 'rb').read())\n\
        raw = lambda p: p.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw).hex()\n\
        assert raw(k.public_key()) == raw(c.public_key())\nprint(raw(k.public_key()))\n";
    let has_cryptography =
        Command::new("python3").args(["-c", "import cryptography"]).status().is_ok_and(|s| s.success());
    if has_cryptography {
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(dir.path().join("node.key"))
            .arg(dir.path().join("node.crt"))
            .output()
            .unwrap();
        assert!(out.status.success(), "python cryptography: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&forced.stdout).trim());
    }
}
