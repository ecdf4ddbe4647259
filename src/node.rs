//! One running masternode: the transport, the admin API, and their shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Status};
use crate::config::{Network, NodeConfig};
use crate::identity::NodeId;
use crate::net::handshake::Tip;
use crate::net::{self, Inbound, NetConfig, Peers, TestHooks};

/// How long a request to a peer may take before it is abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for peers to acknowledge our close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("transport: {0}")]
    Endpoint(#[from] net::endpoint::EndpointError),
    #[error("admin API: cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Options that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    #[doc(hidden)]
    pub hooks: TestHooks,
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
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Node {
    /// Binds the endpoint and the admin API and starts every task. Returns once the
    /// node listens; it runs until `shutdown` is cancelled.
    pub async fn start(
        cfg: NodeConfig,
        options: NodeOptions,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        let id = cfg.id();
        let network = Arc::new(cfg.network);
        let tracker = TaskTracker::new();
        let (_tip_tx, tip) = watch::channel(Tip::default());
        let net_cfg = NetConfig {
            identity: Arc::new(cfg.identity),
            network: network.clone(),
            advertised: cfg.advertised,
            listen: cfg.listen,
            transport: cfg.transport,
            request_timeout: REQUEST_TIMEOUT,
            tip: tip.clone(),
            hooks: options.hooks,
        };
        let (peers, inbound) = net::start(net_cfg, shutdown.clone(), &tracker)?;
        tracker.spawn(serve_inbound(inbound, shutdown.clone()));
        let listener = tokio::net::TcpListener::bind(cfg.admin)
            .await
            .map_err(|source| NodeError::AdminBind {
                addr: cfg.admin,
                source,
            })?;
        let admin_addr = listener
            .local_addr()
            .map_err(|source| NodeError::AdminBind {
                addr: cfg.admin,
                source,
            })?;
        let node = Node {
            id,
            network,
            advertised: cfg.advertised,
            peers,
            admin_addr,
            tip,
            shutdown: shutdown.clone(),
            tracker,
        };
        let state = admin::AdminState {
            status: Arc::new(node.status_source()),
        };
        node.tracker.spawn(admin::serve(listener, state, shutdown));
        tracing::info!(admin = %admin_addr, "admin API listening");
        Ok(node)
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

    fn status_source(&self) -> StatusSource {
        StatusSource {
            id: self.id,
            advertised: self.advertised,
            network: self.network.clone(),
            peers: self.peers.clone(),
            tip: self.tip.clone(),
        }
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

/// Builds `/status` from the live parts of a node.
pub struct StatusSource {
    id: NodeId,
    advertised: SocketAddr,
    network: Arc<Network>,
    peers: Peers,
    tip: watch::Receiver<Tip>,
}

impl StatusSource {
    pub fn status(&self) -> Status {
        let tip = *self.tip.borrow();
        admin::build_status(self.id, self.advertised, &self.network, &self.peers, tip)
    }
}

/// Until block production consumes them, peer messages are drained here and
/// requests are answered by echoing them back, which the transport tests use.
async fn serve_inbound(mut inbound: Inbound, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = inbound.messages.recv() => match msg {
                Some((from, msg)) => tracing::trace!(peer = %from.short(), kind = msg.kind_name(), "message"),
                None => return,
            },
            req = inbound.requests.recv() => match req {
                Some(req) => {
                    // Echo: the transport tests' request/response probe.
                    let _ = req.reply.send(req.message);
                }
                None => return,
            },
        }
    }
}
