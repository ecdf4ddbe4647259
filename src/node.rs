//! One running masternode: the transport, the admin API, and their shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::admin;
use crate::chain::block::{genesis_hash, Hash, Limits};
use crate::chain::consensus::{self, Core, Timeouts};
use crate::chain::mempool::Mempool;
use crate::chain::producer::{ChainMetrics, Producer};
use crate::chain::store::{Store, StoreError};
use crate::config::{Network, NodeConfig};
use crate::identity::NodeId;
use crate::net::handshake::Tip;
use crate::net::{self, NetConfig, Peers, TestHooks};
use crate::status::{Status, StatusSource};

/// How long a request to a peer may take before it is abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for peers to acknowledge our close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("transport: {0}")]
    Endpoint(#[from] net::endpoint::EndpointError),
    #[error("admin API: cannot bind {addr}: {source}")]
    AdminBind { addr: SocketAddr, source: std::io::Error },
    #[error("data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("store in {path}: {source}")]
    Store { path: std::path::PathBuf, source: StoreError },
}

/// Options that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    #[doc(hidden)]
    pub hooks: TestHooks,
    /// Shifts the node's clock as its consensus sees it, in ms (tests of members
    /// whose clocks are off). Never set in production.
    #[doc(hidden)]
    pub clock_skew_ms: i64,
}

/// A started node. Dropping it does not stop it: call [`Node::stop`] or cancel the
/// token given to [`Node::start`] and await [`Node::stopped`].
pub struct Node {
    id: NodeId,
    network: Arc<Network>,
    advertised: SocketAddr,
    peers: Peers,
    admin_addr: SocketAddr,
    tip: watch::Receiver<Tip>,
    store: Store,
    mempool: Arc<Mutex<Mempool>>,
    chain_metrics: Arc<ChainMetrics>,
    failed: Arc<AtomicBool>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Node {
    /// Binds the endpoint and the admin API and starts every task. Returns once the
    /// node listens; it runs until `shutdown` is cancelled.
    pub async fn start(cfg: NodeConfig, options: NodeOptions, shutdown: CancellationToken) -> Result<Node, NodeError> {
        let id = cfg.id();
        let network = Arc::new(cfg.network);
        let tracker = TaskTracker::new();
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|source| NodeError::DataDir { path: cfg.data_dir.clone(), source })?;
        let store_err = |source| NodeError::Store { path: cfg.data_dir.clone(), source };
        let store = Store::open(&cfg.data_dir).map_err(store_err)?;
        let stored_tip = store.tip().map_err(store_err)?;
        let last_signed = store.last_signed().map_err(store_err)?;
        let (height, prev_hash, prev_ts) = match stored_tip {
            Some(t) => (t.height, t.hash, t.timestamp_ms),
            None => (0, genesis_hash(&network.id), network.genesis_time_ms),
        };
        if let Some(t) = stored_tip {
            tracing::info!(height = t.height, hash = %t.hash.short(), "opened chain");
        }
        let announced = Tip { height, hash: if height == 0 { [0; 32] } else { prev_hash.0 } };
        let (tip_tx, tip) = watch::channel(announced);
        let identity = Arc::new(cfg.identity);
        let net_cfg = NetConfig {
            identity: identity.clone(),
            network: network.clone(),
            members: network.members.iter().map(|m| (m.id, m.addr)).collect(),
            advertised: cfg.advertised,
            listen: cfg.listen,
            transport: cfg.transport,
            request_timeout: REQUEST_TIMEOUT,
            tip: tip.clone(),
            protocol: crate::chain::message::PROTOCOL,
            hooks: options.hooks.clone(),
        };
        let (peers, inbound) = net::start(net_cfg, shutdown.clone(), &tracker)?;

        let limits = Limits::default();
        let core_cfg = consensus::Config {
            network_id: network.id,
            members: network.members.iter().map(|m| m.id).collect(),
            block_interval_ms: network.block_interval_ms,
            limits,
            timeouts: Timeouts::for_interval(network.block_interval_ms),
        };
        let mut core = Core::new(core_cfg, identity, height + 1, prev_hash, prev_ts, last_signed);
        core.restore_own(store.own_signed(height + 1).map_err(store_err)?);
        core.restore_lock(store.lock().map_err(store_err)?);
        let mempool = Arc::new(Mutex::new(Mempool::new(cfg.limits.mempool)));
        let chain_metrics = Arc::new(ChainMetrics::default());
        if height > 0 {
            chain_metrics.last_block_timestamp_ms.store(prev_ts, Ordering::Relaxed);
        }
        let producer = Producer::new(
            core,
            store.clone(),
            peers.clone(),
            mempool.clone(),
            tip_tx,
            network.clone(),
            limits,
            tracker.clone(),
            chain_metrics.clone(),
            cfg.limits,
        )
        .with_clock_skew(options.clock_skew_ms);
        let failed = Arc::new(AtomicBool::new(false));
        {
            let failed = failed.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                if let Err(e) = producer.run(inbound, shutdown.clone()).await {
                    tracing::error!("{e}");
                    failed.store(true, Ordering::SeqCst);
                    shutdown.cancel();
                }
            });
        }

        let listener = tokio::net::TcpListener::bind(cfg.admin)
            .await
            .map_err(|source| NodeError::AdminBind { addr: cfg.admin, source })?;
        let admin_addr = listener.local_addr().map_err(|source| NodeError::AdminBind { addr: cfg.admin, source })?;
        let node = Node {
            id,
            network,
            advertised: cfg.advertised,
            peers,
            admin_addr,
            tip,
            store,
            mempool,
            chain_metrics,
            failed,
            shutdown: shutdown.clone(),
            tracker,
        };
        let state = admin::AdminState {
            status: Arc::new(node.status_source()),
            store: node.store.clone(),
            mempool: node.mempool.clone(),
            peers: node.peers.clone(),
        };
        node.tracker.spawn(admin::serve(listener, state, shutdown));
        tracing::info!(admin = %admin_addr, "admin API listening");
        Ok(node)
    }

    /// Submits a transaction as `POST /tx` does: into the mempool, gossiped to
    /// peers if new.
    pub async fn submit(&self, tx: Vec<u8>) -> Result<Hash, crate::chain::mempool::AddError> {
        admin::submit_tx(&self.mempool, &self.peers, tx)
    }

    /// True if the node stopped because of a runtime failure (a failed store write).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn height(&self) -> u64 {
        self.tip.borrow().height
    }

    pub fn tip_hash(&self) -> Option<Hash> {
        let t = *self.tip.borrow();
        (t.height > 0).then_some(Hash(t.hash))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn status(&self) -> Status {
        self.status_source().status()
    }

    /// A cheap, clonable view of the node for status, metrics and the watchdog.
    pub fn status_source(&self) -> StatusSource {
        StatusSource {
            id: self.id,
            advertised: self.advertised,
            network: self.network.clone(),
            peers: self.peers.clone(),
            tip: self.tip.clone(),
            chain: self.chain_metrics.clone(),
            mempool: self.mempool.clone(),
        }
    }

    pub fn metrics(&self) -> String {
        crate::metrics::render(&self.status_source())
    }

    /// Stops the node: closes every connection with the shutdown code and waits for
    /// every task to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }

    /// Waits until the node has stopped after its shutdown token was cancelled.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
        self.peers.close_all(CLOSE_WAIT).await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}
