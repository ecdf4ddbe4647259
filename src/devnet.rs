//! A local network of N nodes in one process: node i on 127.0.0.i:24100 with its
//! admin API on 127.0.0.i:24101. Keys, configs and data go to a fresh temporary
//! directory unless one is named; the nodes are started from those files exactly as
//! `masternode run` would start them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Member, Network, NodeConfig};
use crate::identity::{Identity, NodeId};
use crate::node::{Node, NodeOptions};

pub const P2P_PORT: u16 = 24100;
pub const ADMIN_PORT: u16 = 24101;

#[derive(Debug, Clone)]
pub struct DevnetOptions {
    pub nodes: usize,
    pub duration: Option<Duration>,
    pub dir: Option<PathBuf>,
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("--nodes must be between 1 and 254, not {0}")]
    NodeCount(usize),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("node {index}: {source}")]
    Node { index: usize, source: crate::node::NodeError },
    #[error("node start-up task failed: {0}")]
    Task(String),
}

/// Writes `DIR/network.toml` and `DIR/nodeI/{node.key,node.crt,masternode.toml}`,
/// keeping keys that already exist there. Returns the config paths.
pub fn lay_out(
    dir: &Path,
    nodes: usize,
    ip_of: impl Fn(usize) -> std::net::IpAddr,
) -> Result<Vec<PathBuf>, DevnetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DevnetError::Io { path, source }
    };
    let mut members = Vec::new();
    let mut configs = Vec::new();
    for i in 1..=nodes {
        let node_dir = dir.join(format!("node{i}"));
        let key = node_dir.join("node.key");
        let id = if key.exists() {
            Identity::load(&key, &node_dir.join("node.crt"))?
        } else {
            let id = Identity::generate()?;
            id.write(&node_dir, false)?;
            id
        };
        let ip = ip_of(i);
        members.push(Member { id: id.id(), addr: std::net::SocketAddr::new(ip, P2P_PORT) });
        let cfg = format!(
            "network = \"../network.toml\"\nkey = \"node.key\"\ncert = \"node.crt\"\nlisten = \"{ip}:{P2P_PORT}\"\nadmin = \"{ip}:{ADMIN_PORT}\"\ndata_dir = \"data\"\n"
        );
        let cfg_path = node_dir.join("masternode.toml");
        std::fs::write(&cfg_path, cfg).map_err(io(&cfg_path))?;
        configs.push(cfg_path);
    }
    let genesis =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let net_path = dir.join("network.toml");
    if !net_path.exists() {
        // A devnet of one or two nodes needs a min_active it can meet.
        let min_active = crate::config::DEFAULT_MIN_ACTIVE.min(members.len());
        let text = Network::render("devnet", genesis, 1000, min_active, &members);
        std::fs::write(&net_path, text).map_err(io(&net_path))?;
    }
    Ok(configs)
}

pub fn loopback(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i as u8))
}

/// Runs the devnet until `duration` passes or `stop` is cancelled.
pub async fn run(opts: DevnetOptions, stop: CancellationToken) -> Result<(), DevnetError> {
    if opts.nodes == 0 || opts.nodes > 254 {
        return Err(DevnetError::NodeCount(opts.nodes));
    }
    let (dir, temporary) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => {
            let stamp =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
            (std::env::temp_dir().join(format!("masternode-devnet-{}-{stamp}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(&dir).map_err(|source| DevnetError::Io { path: dir.clone(), source })?;
    let configs = lay_out(&dir, opts.nodes, loopback)?;
    println!("devnet: {} nodes, files in {}", opts.nodes, dir.display());

    let shutdown = CancellationToken::new();
    let mut names = std::collections::HashMap::<NodeId, String>::new();
    // Start every node at once, as a fleet restarted together would.
    let mut starting = Vec::new();
    for (i, path) in configs.iter().enumerate() {
        let cfg = NodeConfig::load(path)?;
        names.insert(cfg.id(), format!("node{}", i + 1));
        let token = shutdown.child_token();
        starting.push(tokio::spawn(async move { Node::start(cfg, NodeOptions::default(), token).await }));
    }
    let mut nodes = Vec::new();
    for (i, handle) in starting.into_iter().enumerate() {
        let node = match handle.await {
            Ok(result) => result.map_err(|source| DevnetError::Node { index: i + 1, source })?,
            Err(e) => return Err(DevnetError::Task(e.to_string())),
        };
        println!("node{} {} p2p {} admin {}", i + 1, node.id().short(), node.peers().local_addr(), node.admin_addr());
        nodes.push(node);
    }

    let started = Instant::now();
    let pairs = opts.nodes * (opts.nodes - 1) / 2;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut last_line = String::new();
    let mut mesh_reported = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400))).await }, if deadline.is_some() => break,
            _ = ticker.tick() => {}
        }
        let statuses: Vec<_> = nodes.iter().map(|n| n.status()).collect();
        let links: usize = statuses.iter().map(|s| s.peers.len()).sum();
        let quorum = statuses.iter().filter(|s| s.quorum.met).count();
        let top = statuses.iter().map(|s| s.height).max().unwrap_or(0);
        let at_top = statuses.iter().filter(|s| s.height == top).count();
        let tip = statuses.iter().find(|s| s.height == top).and_then(|s| s.tip_hash.clone()).unwrap_or_default();
        let line = format!(
            "height {top} {} on {at_top}/{n} nodes | connections {}/{pairs} pairs | quorum met on {quorum}/{n}",
            tip.get(..8).unwrap_or("-"),
            links / 2,
            n = opts.nodes,
        );
        if line != last_line {
            println!("[{:>6.2}s] {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        if !mesh_reported && links == 2 * pairs {
            let dials: u64 = statuses.iter().map(|s| s.counters.dials).sum();
            println!(
                "[{:>6.2}s] full mesh: {pairs} connections from {dials} dials, each pair dialled by its lower address",
                started.elapsed().as_secs_f64()
            );
            mesh_reported = true;
        }
    }
    let summary: Vec<_> = nodes.iter().map(|n| n.status()).collect();
    shutdown.cancel();
    for node in &nodes {
        node.stopped().await;
    }
    if opts.json {
        let line = serde_json::json!({ "nodes": summary });
        println!("{line}");
    }
    if temporary {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("could not remove {}: {e}", dir.display());
        }
    }
    Ok(())
}
