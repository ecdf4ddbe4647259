//! Nodes as child processes of the `masternode` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use masternode::admin::fetch_status;
use masternode::status::Status;

use super::subnet;

pub const BIN: &str = env!("CARGO_BIN_EXE_masternode");

/// Fast liveness settings so the scenarios take seconds: the contract's defaults
/// scaled down, in the same proportions.
pub const TRANSPORT: &str =
    "\n[transport]\nkeepalive_ms = 500\nidle_timeout_ms = 3000\npassive_wait_ms = 2000\nhandshake_timeout_ms = 2000\n";

pub struct Net {
    pub dir: tempfile::TempDir,
    pub configs: Vec<PathBuf>,
    pub admins: Vec<SocketAddr>,
    pub procs: Vec<Option<Child>>,
    /// Extra environment for every node started.
    pub env: Vec<(String, String)>,
    /// The binary each node runs when started ([`BIN`] unless a test installs
    /// another release).
    pub bins: Vec<PathBuf>,
}

impl Net {
    pub fn new(n: usize) -> Net {
        Self::with_transport(n, TRANSPORT)
    }

    /// `n` nodes whose configs end with `transport` (empty: the defaults).
    pub fn with_transport(n: usize, transport: &str) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = subnet();
        let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
        let configs = masternode::devnet::lay_out(dir.path(), n, ip).unwrap();
        for c in &configs {
            let mut text = std::fs::read_to_string(c).unwrap();
            text.push_str(transport);
            std::fs::write(c, text).unwrap();
        }
        let admins = (1..=n).map(|i| SocketAddr::new(ip(i), masternode::devnet::ADMIN_PORT)).collect();
        let bins = vec![PathBuf::from(BIN); n];
        Net { dir, configs, admins, procs: (0..n).map(|_| None).collect(), env: Vec::new(), bins }
    }

    /// Daemons of `spec`'s members (node i of the spec in `node{i+1}`), with its
    /// keys and genesis file and configs ending with `transport`; none started.
    /// A test can then play one member itself with [`super::Hostile`].
    pub fn of_spec(spec: &super::Spec, transport: &str) -> Net {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("network.toml"), spec.network_file()).unwrap();
        let mut configs = Vec::new();
        let mut admins = Vec::new();
        for (i, id) in spec.ids.iter().enumerate() {
            let node_dir = dir.path().join(format!("node{}", i + 1));
            id.write(&node_dir, false).unwrap();
            let listen = spec.addr(i);
            let admin = SocketAddr::new(listen.ip(), masternode::devnet::ADMIN_PORT);
            let cfg = format!(
                "network = \"../network.toml\"\nkey = \"node.key\"\ncert = \"node.crt\"\nlisten = \"{listen}\"\nadmin = \"{admin}\"\ndata_dir = \"data\"\n{transport}"
            );
            let path = node_dir.join("masternode.toml");
            std::fs::write(&path, cfg).unwrap();
            configs.push(path);
            admins.push(admin);
        }
        let procs = (0..configs.len()).map(|_| None).collect();
        let bins = vec![PathBuf::from(BIN); configs.len()];
        Net { dir, configs, admins, procs, env: Vec::new(), bins }
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|c| c.id())
    }

    pub fn start(&mut self, i: usize) {
        self.start_with_env(i, &[]);
    }

    /// Starts node `i` with `env` added to its environment.
    pub fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{}.log", i + 1)))
            .unwrap();
        let child = Command::new(&self.bins[i])
            .args(["run", "--config"])
            .arg(&self.configs[i])
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
    }

    /// Sets the block interval in the genesis file (before any node starts).
    pub fn set_block_interval(&self, ms: u64) {
        let path = self.dir.path().join("network.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|l| if l.starts_with("block_interval_ms") { format!("block_interval_ms = {ms}") } else { l.into() })
            .collect();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
    }

    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].as_ref().unwrap().id();
        let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Stops node `i` with SIGTERM, as `systemctl stop` does, and waits for it
    /// to exit; its exit code.
    pub async fn stop(&mut self, i: usize, deadline: Duration) -> Option<i32> {
        self.signal(i, "TERM");
        let mut child = self.procs[i].take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                panic!("node {} still running {deadline:?} after SIGTERM\n{}", i + 1, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for node `i` to exit by itself; its exit code. Panics (killing
    /// it) if it still runs after `deadline`.
    pub async fn exited(&mut self, i: usize, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            let child = self.procs[i].as_mut().expect("node runs");
            if let Some(status) = child.try_wait().unwrap() {
                self.procs[i] = None;
                return status.code();
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                panic!("node {} still running after {deadline:?}\n{}", i + 1, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.configs[i].parent().unwrap().join("data")
    }

    pub fn kill9(&mut self, i: usize) {
        let mut child = self.procs[i].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn status(&self, i: usize) -> Option<Status> {
        fetch_status(self.admins[i], Duration::from_secs(2)).await.ok()
    }

    /// Node `i`'s height, 0 while it does not answer.
    pub async fn height(&self, i: usize) -> u64 {
        self.status(i).await.map_or(0, |s| s.height)
    }

    /// Polls `check` every 100 ms until it holds; panics with the nodes' logs
    /// after `deadline`.
    pub async fn until<F, Fut>(&self, what: &str, deadline: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            if start.elapsed() > deadline {
                panic!("not within {deadline:?}: {what}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until every running node listed has exactly `want` peers, returning
    /// their statuses.
    pub async fn until_peers(&self, nodes: &[usize], want: usize, deadline: Duration, what: &str) -> Vec<Status> {
        let start = Instant::now();
        loop {
            let mut all = Vec::new();
            for &i in nodes {
                match self.status(i).await {
                    Some(s) if s.peers.len() == want => all.push(s),
                    _ => break,
                }
            }
            if all.len() == nodes.len() {
                return all;
            }
            if start.elapsed() > deadline {
                panic!("not within {deadline:?}: {what}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{}.log", i + 1))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.configs.len() {
            let p = self.dir.path().join(format!("node{}.log", i + 1));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            out.push_str(&format!("--- node{} ---\n{}\n", i + 1, tail.join("\n")));
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}
