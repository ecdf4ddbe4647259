//! A local network of N nodes in one process: node i on 127.0.0.i:24100 with its
//! admin API on 127.0.0.i:24101, or from another base (`--base-ip`,
//! `--base-port`): node i on the i-th address from the base ip, all on the base
//! port, the admin API on the next. Keys, configs and data go to a fresh temporary
//! directory unless one is named; the nodes are started from those files exactly as
//! `masternode run` would start them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Member, Network, NodeConfig};
use crate::identity::{Identity, NodeId};
use crate::node::{Node, NodeOptions};

pub const P2P_PORT: u16 = 24100;
pub const ADMIN_PORT: u16 = 24101;
/// Node 1's address unless `--base-ip` says otherwise.
pub const BASE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

#[derive(Debug, Clone)]
pub struct DevnetOptions {
    pub nodes: usize,
    pub duration: Option<Duration>,
    pub dir: Option<PathBuf>,
    pub json: bool,
    /// Node 1's address; node i is on the (i - 1)-th address after it.
    pub base_ip: Ipv4Addr,
    /// Every node's p2p port; its admin API is on the next one.
    pub base_port: u16,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        DevnetOptions { nodes: 4, duration: None, dir: None, json: false, base_ip: BASE_IP, base_port: P2P_PORT }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("--nodes must be between 1 and 254, not {0}")]
    NodeCount(usize),
    #[error("--base-ip {base} with {nodes} nodes leaves 127.0.0.0/8: the devnet runs on loopback addresses only")]
    NotLoopback { base: Ipv4Addr, nodes: usize },
    #[error("--base-port must be between 1 and 65534 (the admin API takes the next port), not {0}")]
    Port(u16),
    #[error(
        "{path} has node{index} at {found}, not {wanted}: run the devnet in that directory with the --base-ip and \
         --base-port it was made with, or give a fresh --dir"
    )]
    Moved { path: PathBuf, index: usize, found: SocketAddr, wanted: SocketAddr },
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
/// keeping keys that already exist there, node i on `ip_of(i)` port
/// [`P2P_PORT`]. Returns the config paths.
pub fn lay_out(dir: &Path, nodes: usize, ip_of: impl Fn(usize) -> IpAddr) -> Result<Vec<PathBuf>, DevnetError> {
    lay_out_at(dir, nodes, ip_of, P2P_PORT)
}

/// [`lay_out`] with every node on `port` and its admin API on `port + 1`. A
/// genesis already in `dir` is kept, and must have the nodes where they are
/// laid out now.
pub(crate) fn lay_out_at(
    dir: &Path,
    nodes: usize,
    ip_of: impl Fn(usize) -> IpAddr,
    port: u16,
) -> Result<Vec<PathBuf>, DevnetError> {
    if port == 0 || port == u16::MAX {
        return Err(DevnetError::Port(port));
    }
    let admin_port = port + 1;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DevnetError::Io { path, source }
    };
    let mut members = Vec::new();
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
        members.push(Member { id: id.id(), addr: SocketAddr::new(ip_of(i), port) });
    }
    let net_path = dir.join("network.toml");
    if net_path.exists() {
        let genesis = Network::load(&net_path)?;
        for (index, m) in members.iter().enumerate() {
            match genesis.member(&m.id) {
                Some(g) if g.addr != m.addr => {
                    let path = net_path.clone();
                    return Err(DevnetError::Moved { path, index: index + 1, found: g.addr, wanted: m.addr });
                }
                _ => {}
            }
        }
    } else {
        let genesis =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        // A devnet of one or two nodes needs a min_active it can meet.
        let min_active = crate::config::DEFAULT_MIN_ACTIVE.min(members.len());
        let text = Network::render("devnet", genesis, 1000, min_active, &members);
        std::fs::write(&net_path, text).map_err(io(&net_path))?;
    }
    let mut configs = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let ip = m.addr.ip();
        let cfg = format!(
            "network = \"../network.toml\"\nkey = \"node.key\"\ncert = \"node.crt\"\nlisten = \"{ip}:{port}\"\nadmin = \"{ip}:{admin_port}\"\ndata_dir = \"data\"\n"
        );
        let cfg_path = dir.join(format!("node{}", i + 1)).join("masternode.toml");
        std::fs::write(&cfg_path, cfg).map_err(io(&cfg_path))?;
        configs.push(cfg_path);
    }
    Ok(configs)
}

/// Node i's address (from 1): the (i - 1)-th after `base`, which must keep all
/// `nodes` of them in 127.0.0.0/8.
pub(crate) fn addresses(base: Ipv4Addr, nodes: usize) -> Result<impl Fn(usize) -> IpAddr, DevnetError> {
    let first = u32::from(base);
    let last = first.checked_add(nodes.saturating_sub(1) as u32);
    let loopback = |a: u32| Ipv4Addr::from(a).is_loopback();
    match last {
        Some(last) if loopback(first) && loopback(last) => {
            Ok(move |i: usize| IpAddr::V4(Ipv4Addr::from(first + (i as u32 - 1))))
        }
        _ => Err(DevnetError::NotLoopback { base, nodes }),
    }
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
    let ip_of = addresses(opts.base_ip, opts.nodes)?;
    if opts.base_port == 0 || opts.base_port == u16::MAX {
        return Err(DevnetError::Port(opts.base_port));
    }
    std::fs::create_dir_all(&dir).map_err(|source| DevnetError::Io { path: dir.clone(), source })?;
    let configs = lay_out_at(&dir, opts.nodes, ip_of, opts.base_port)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_laid_out_from_the_base_ip_within_loopback() {
        let ip_of = addresses(BASE_IP, 4).unwrap();
        assert_eq!(
            (1..=4).map(|i| ip_of(i).to_string()).collect::<Vec<_>>(),
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
        );
        let ip_of = addresses(Ipv4Addr::new(127, 0, 1, 254), 3).unwrap();
        assert_eq!(ip_of(3).to_string(), "127.0.2.0", "across an octet");
        assert!(matches!(addresses(Ipv4Addr::new(10, 0, 0, 1), 2), Err(DevnetError::NotLoopback { .. })));
        assert!(addresses(Ipv4Addr::new(127, 255, 255, 254), 3).is_err(), "runs out of 127/8");
    }

    #[test]
    fn a_directory_laid_out_from_one_base_is_not_run_from_another() {
        let dir = tempfile::tempdir().unwrap();
        let ip_of = addresses(Ipv4Addr::new(127, 0, 3, 1), 2).unwrap();
        let configs = lay_out_at(dir.path(), 2, &ip_of, 25100).unwrap();
        let cfg = std::fs::read_to_string(&configs[1]).unwrap();
        assert!(cfg.contains("listen = \"127.0.3.2:25100\"") && cfg.contains("admin = \"127.0.3.2:25101\""), "{cfg}");
        assert!(lay_out_at(dir.path(), 2, &ip_of, 25100).is_ok(), "the same base again");
        let err = lay_out_at(dir.path(), 2, &ip_of, 24100).unwrap_err().to_string();
        assert!(err.contains("has node1 at 127.0.3.1:25100, not 127.0.3.1:24100"), "{err}");
        assert!(matches!(lay_out_at(dir.path(), 2, &ip_of, 65535), Err(DevnetError::Port(65535))));
    }
}
