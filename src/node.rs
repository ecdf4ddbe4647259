//! One running masternode: the transport, the admin API, and their shutdown.

pub use crate::service::{ready as notify_ready, supervise};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::admin;
use crate::chain::block::{genesis_hash, Hash};
use crate::chain::checkpoint::{self, Checkpoint, CheckpointSource, Verified};
use crate::chain::consensus::{self, Core, Timeouts};
use crate::chain::driver::{ChangeRequest, DriverConfig, MembersView, Submitted};
use crate::chain::links::{ChainMetrics, Links, Mailbox};
use crate::chain::members::{Change, Membership, Params};
use crate::chain::producer::{Parts, Producer, ProducerError};
use crate::chain::store::{Store, StoreError};
use crate::config::{Network, NodeConfig};
use crate::identity::NodeId;
use crate::net::handshake::Tip;
use crate::net::tls::Expected;
use crate::net::{self, NetConfig, Peers, TestHooks};
use crate::status::{Status, StatusSource};

/// How long a request to a peer may take before it is abandoned.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
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
    #[error("store in {path}: the membership recorded is of height {members}, the tip is {tip}")]
    MembershipMismatch { path: std::path::PathBuf, members: u64, tip: u64 },
    /// The node stopped before the height of an upgrade plan its binary cannot
    /// run; it wrote `upgrade-info.json` in its data dir.
    #[error("stopped for an upgrade: {0}")]
    UpgradeNeeded(#[from] crate::chain::upgrade::UpgradeNeeded),
    /// Another process signs with this node's key; the node signed nothing
    /// after it saw that.
    #[error("stopped: another process signs with this node's key: {0}")]
    Doppelganger(crate::chain::Evidence),
    /// No peer could give the checkpoint asked for: members holding more
    /// than two thirds of the set this node knows answered with another block.
    #[error(
        "checkpoint {checkpoint} refused: {peers} members of the {known} this node knows hold block {got} at height \
         {height}, not the one named; check the hash (from `masternode status` or `/blocks` on a node you trust)"
    )]
    CheckpointRefused { checkpoint: Checkpoint, height: u64, got: Hash, peers: usize, known: usize },
    /// Shutdown came while the checkpoint was being fetched: nothing was
    /// written to the data dir.
    #[error("stopped while fetching the checkpoint; the data dir is still empty")]
    StoppedBeforeCheckpoint,
    #[error("stopped after a runtime failure (logged above)")]
    Failed,
}

/// Fetches and verifies the checkpoint `source` names from the connected
/// peers of wire 4, one request at a time (an answer is one frame within
/// `CHECKPOINT_LIMIT`, read and dropped before the next is asked), until one
/// verifies or `shutdown`, every [`checkpoint::RETRY_MS`] again. Which answer
/// is taken is [`checkpoint::Fetch`]'s decision: a refused answer is logged
/// once per peer and cause; the node stops with
/// [`NodeError::CheckpointRefused`] when more than two thirds of the known set
/// answered with another block at the height.
async fn fetch_checkpoint(
    peers: &Peers,
    source: CheckpointSource,
    network: &Network,
    shutdown: &CancellationToken,
) -> Result<Option<Verified>, NodeError> {
    use crate::chain::message::{Message, CHECKPOINT_WIRE};
    let known = Membership::genesis(network);
    let mut fetch = checkpoint::Fetch::new(source, known.current().clone(), Params::for_network(network), network.id);
    let Ok(request) = (Message::GetCheckpoint { height: fetch.height() }).encode() else { return Ok(None) };
    tracing::info!(checkpoint = %source_name(source), "empty data dir: starting from a checkpoint, not from genesis");
    loop {
        for (peer, wire) in peers.wire_versions() {
            if wire < CHECKPOINT_WIRE {
                continue;
            }
            let answer = match peers.request(peer, request.clone()).await.map(|body| Message::decode(&body)) {
                Ok(Ok(Message::Checkpoint(answer))) => *answer,
                Ok(Ok(other)) => {
                    if fetch.first_report(peer, "unexpected") {
                        tracing::warn!(peer = %peer.short(), kind = other.kind_name(), "checkpoint request answered with another kind");
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    if fetch.first_report(peer, "malformed") {
                        tracing::warn!(peer = %peer.short(), "checkpoint answer refused: {e}");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.short(), "checkpoint request failed: {e}");
                    continue;
                }
            };
            match fetch.handle_answer(peer, answer) {
                checkpoint::Decision::Start(v) => {
                    let (h, id) = (v.committed.block.height(), v.committed.block.hash());
                    tracing::info!(peer = %peer.short(), height = h, hash = %id, "checkpoint verified");
                    return Ok(Some(*v));
                }
                checkpoint::Decision::Contradicted(c) => {
                    return Err(NodeError::CheckpointRefused {
                        checkpoint: c.checkpoint,
                        height: c.checkpoint.height,
                        got: c.got,
                        peers: c.peers,
                        known: c.known,
                    });
                }
                checkpoint::Decision::Refused { error, report } => {
                    if report {
                        tracing::warn!(peer = %peer.short(), cause = error.kind(), "checkpoint from a peer refused: {error}");
                    } else {
                        tracing::debug!(peer = %peer.short(), cause = error.kind(), "checkpoint from a peer refused: {error}");
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(checkpoint::RETRY_MS)) => {}
        }
    }
}

fn source_name(source: CheckpointSource) -> String {
    match source {
        CheckpointSource::Trusted(c) => c.to_string(),
        CheckpointSource::Peers => "peers".into(),
    }
}

/// Keys TLS refuses that are no strangers: joiners whose add is collecting
/// approvals, and members that left (a removed node still running).
pub(crate) fn expected_keys(view: &MembersView) -> Vec<(NodeId, Expected)> {
    let m = &view.membership;
    let member = |id: &NodeId| m.current().contains(id) || m.next().contains(id);
    let mut out: std::collections::BTreeMap<NodeId, Expected> =
        m.state().touched.keys().filter(|id| !member(id)).map(|id| (*id, Expected::Left)).collect();
    for p in view.pending() {
        if let Change::Add { id, .. } = p.change {
            if !member(&id) {
                out.insert(id, Expected::Joining);
            }
        }
    }
    out.into_iter().collect()
}

/// Tells the transport which refused keys to expect, as the member view changes.
async fn follow_expected_keys(
    peers: Peers,
    mut members: watch::Receiver<Arc<MembersView>>,
    shutdown: CancellationToken,
) {
    loop {
        let view = members.borrow_and_update().clone();
        peers.set_expected(expected_keys(&view));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = members.changed() => if changed.is_err() { break },
        }
    }
}

/// How often the pruner looks at the tip and measures the data dir.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, the pruner seals the store's tables after pruning, so
/// that journals and pruned blocks leave the disk.
const SEAL_EVERY: Duration = Duration::from_secs(10);

/// Bytes the files under `dir` take on disk, its subfolders' included, as
/// `du` counts them: fjall sets each journal's length to 32 MiB up front, of
/// which only what it wrote takes space. What cannot be read counts nothing.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => disk_bytes(&m),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(unix)]
fn disk_bytes(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

#[cfg(not(unix))]
fn disk_bytes(m: &std::fs::Metadata) -> u64 {
    m.len()
}

/// The pruner: once a second, off the consensus path, removes the blocks and
/// certificates below what `retain` keeps at the tip (in batches of
/// [`crate::chain::retention::PRUNE_BATCH`]), seals the store's tables every
/// [`SEAL_EVERY`] and compacts them each time as many heights were pruned as
/// are kept (at least a batch), and publishes the earliest height held and the
/// data dir's bytes. A failed store write stops the node, as one
/// of the producer's does.
async fn keep_retention(
    store: Store,
    tip: watch::Receiver<Tip>,
    retain: Option<u64>,
    data_dir: std::path::PathBuf,
    metrics: Arc<ChainMetrics>,
    failed: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    use crate::chain::retention::{prune_target, PRUNE_BATCH};
    let mut last_seal = std::time::Instant::now();
    let mut unsealed = false;
    // Heights pruned since the last compaction, and how many make one due.
    let mut uncompacted: u64 = 0;
    let compact_after = retain.unwrap_or(0).max(PRUNE_BATCH);
    loop {
        let target = prune_target(tip.borrow().height, retain);
        let seal_due = last_seal.elapsed() >= SEAL_EVERY;
        let (s, dir) = (store.clone(), data_dir.clone());
        let pass = tokio::task::spawn_blocking(move || -> Result<(u64, u64, bool, bool, u64), StoreError> {
            let first = s.earliest()?;
            let mut earliest = first;
            if let Some(target) = target {
                while earliest < target {
                    let next = s.prune_below(target, PRUNE_BATCH)?;
                    if next == earliest {
                        break;
                    }
                    earliest = next;
                }
            }
            let pruned = earliest - first;
            let sealed = (pruned > 0 || unsealed) && seal_due;
            let compacted = uncompacted + pruned >= compact_after;
            if compacted {
                s.compact()?;
            } else if sealed {
                s.seal()?;
            }
            Ok((earliest, pruned, sealed, compacted, dir_bytes(&dir)))
        })
        .await;
        match pass {
            Ok(Ok((earliest, pruned, sealed, compacted, bytes))) => {
                if pruned > 0 {
                    tracing::debug!(earliest, "pruned {pruned} block(s) below {earliest}");
                }
                uncompacted = if compacted { 0 } else { uncompacted + pruned };
                // A compaction seals the tables as well.
                let sealed = sealed || compacted;
                unsealed = (unsealed || pruned > 0) && !sealed;
                if sealed {
                    last_seal = std::time::Instant::now();
                }
                metrics.earliest_height.store(earliest, Ordering::Relaxed);
                metrics.data_dir_bytes.store(bytes, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::error!("pruning the store in {}: {e}", data_dir.display());
                failed.store(true, Ordering::SeqCst);
                shutdown.cancel();
                return;
            }
            Err(e) => tracing::error!("the pruner's pass did not finish: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// The file in the data directory that holds the admin API's address as the
/// node last bound it: `masternode status --config` asks there, so a node
/// started with `--admin` or `MASTERNODE_ADMIN` is found all the same.
pub(crate) const ADMIN_ADDR_FILE: &str = "admin.addr";

fn record_admin_addr(data_dir: &std::path::Path, addr: SocketAddr) {
    let path = data_dir.join(ADMIN_ADDR_FILE);
    let tmp = data_dir.join(format!(".{ADMIN_ADDR_FILE}.tmp"));
    let written = std::fs::write(&tmp, format!("{addr}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(
            "cannot write {}: {e}; `masternode status --config` will ask the config's admin address",
            path.display()
        );
    }
}

/// The admin address a node of `cfg` serves on: the one it recorded when it
/// last started (which `--admin` or `MASTERNODE_ADMIN` may have set), else
/// the config's.
pub fn admin_addr_of(cfg: &NodeConfig) -> SocketAddr {
    std::fs::read_to_string(cfg.data_dir.join(ADMIN_ADDR_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(cfg.admin)
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
    /// The highest protocol version this node runs, in place of
    /// [`crate::chain::rules::MAX_VERSION`]: rehearsals of an upgrade only
    /// (a release that lacks a version, or a later one whose rules are the
    /// latest this build has). Never set in production.
    #[doc(hidden)]
    pub max_protocol: Option<u16>,
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
    chain_metrics: Arc<ChainMetrics>,
    admin_stats: Arc<admin::AdminStats>,
    failed: Arc<AtomicBool>,
    /// Set when the producer stopped before a height this binary cannot run.
    upgrade_needed: Arc<std::sync::Mutex<Option<crate::chain::upgrade::UpgradeNeeded>>>,
    /// Set when the producer stopped on a second process with this key.
    doppelganger: Arc<std::sync::Mutex<Option<crate::chain::Evidence>>>,
    max_version: u16,
    /// The producer's channels: the member view, change requests, transactions.
    producer: Mailbox,
    max_tx_bytes: usize,
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
        // The membership the tip left: written with every block, so it matches.
        let membership = match store.membership().map_err(store_err)? {
            Some(state) => Membership::restore(Params::for_network(&network), state),
            None => Membership::genesis(&network),
        };
        if membership.applied() != height {
            return Err(NodeError::MembershipMismatch {
                path: cfg.data_dir.clone(),
                members: membership.applied(),
                tip: height,
            });
        }
        let me_member = membership.current().contains(&id) || membership.next().contains(&id);
        if !me_member {
            tracing::info!(
                members = membership.current().len(),
                "this node's key is not in the member set at height {}: it starts as a joiner, syncs the chain \
                 from the members it can reach, and is accepted once a block adds it",
                height + 1
            );
        }
        // The address members dial us at: the chain's (a member that moved
        // announced it there), else the genesis file's, else `listen` (a joiner).
        let chain_addr = membership.next().get(&id).map(|m| m.addr);
        let advertised = chain_addr.unwrap_or(cfg.advertised);
        let listen_ip = cfg.listen.ip();
        if !listen_ip.is_unspecified() && cfg.listen.port() != 0 && crate::net::canonical(cfg.listen) != advertised {
            tracing::warn!(
                listen = %cfg.listen,
                member_set = %advertised,
                "this node listens on {} but the member set has it at {advertised}: peers dial that address; \
                 if the node moved, announce the new address with `masternode member set-addr --addr {}`",
                cfg.listen,
                cfg.listen
            );
        }
        let announced = Tip { height, hash: if height == 0 { [0; 32] } else { prev_hash.0 } };
        let (tip_tx, tip) = watch::channel(announced);
        let identity = Arc::new(cfg.identity);
        let bootstrap: Vec<_> = cfg.bootstrap.iter().map(|m| (m.id, m.addr)).collect();
        let net_cfg = NetConfig {
            identity: identity.clone(),
            network_id: network.id,
            advertised,
            listen: cfg.listen,
            transport: cfg.transport,
            request_timeout: REQUEST_TIMEOUT,
            tip: tip.clone(),
            members: membership.reachable_with(&bootstrap),
            protocol: crate::chain::message::PROTOCOL,
            hooks: options.hooks.clone(),
        };
        let (peers, inbound) = net::start(net_cfg, shutdown.clone(), &tracker)?;
        // An empty data dir with a checkpoint: the chain starts at its block,
        // as a pruned store's does at its earliest height.
        let (mut height, mut prev_hash, mut prev_ts, mut membership) = (height, prev_hash, prev_ts, membership);
        if let (None, Some(source)) = (stored_tip, cfg.checkpoint) {
            let Some(v) = fetch_checkpoint(&peers, source, &network, &shutdown).await? else {
                return Err(NodeError::StoppedBeforeCheckpoint);
            };
            store.start_at(&v.committed, &v.before, &v.after).map_err(store_err)?;
            let block = &v.committed.block;
            (height, prev_hash, prev_ts) = (block.height(), block.hash(), block.header.timestamp_ms);
            membership = Membership::restore(Params::for_network(&network), v.after);
            tip_tx.send_replace(Tip { height, hash: prev_hash.0 });
            tracing::info!(height, hash = %prev_hash.short(), "started from the checkpoint: following the chain from it");
        }

        // The network's block rules, agreed through the genesis.
        let limits = network.limits();
        let core_cfg = consensus::Config {
            network_id: network.id,
            members: membership.clone(),
            block_interval_ms: network.block_interval_ms,
            limits,
            timeouts: Timeouts::for_interval(network.block_interval_ms),
        };
        let mut core = Core::new(core_cfg, identity.clone(), height + 1, prev_hash, prev_ts, last_signed);
        core.restore_own(store.own_signed(height + 1).map_err(store_err)?);
        core.restore_lock(store.lock().map_err(store_err)?);
        let (links, mailbox) = Links::new(membership);
        tracker.spawn(follow_expected_keys(peers.clone(), mailbox.members.clone(), shutdown.clone()));
        let chain_metrics = Arc::new(ChainMetrics::default());
        chain_metrics.earliest_height.store(store.earliest().map_err(store_err)?, Ordering::Relaxed);
        chain_metrics.data_dir_bytes.store(dir_bytes(&cfg.data_dir), Ordering::Relaxed);
        if let Some(retain) = cfg.retain_blocks {
            tracing::info!(retain_blocks = retain, "keeping the last {retain} blocks; older ones are pruned");
        }
        if height > 0 {
            chain_metrics.last_block_timestamp_ms.store(prev_ts, Ordering::Relaxed);
        }
        let max_version = options.max_protocol.unwrap_or(crate::chain::rules::MAX_VERSION);
        let driver_cfg = DriverConfig {
            network_id: network.id,
            block_interval_ms: network.block_interval_ms,
            min_active: network.min_active,
            limits,
            node_limits: cfg.limits.within_blocks(&limits),
            identity,
            bootstrap,
            max_version,
            watch_intervals: cfg.doppelganger_intervals,
        };
        let parts = Parts {
            store: store.clone(),
            peers: peers.clone(),
            tip: tip_tx,
            metrics: chain_metrics.clone(),
            tracker: tracker.clone(),
            links,
            clock_skew_ms: options.clock_skew_ms,
            data_dir: cfg.data_dir.clone(),
        };
        let producer = Producer::new(core, driver_cfg, parts);
        let failed = Arc::new(AtomicBool::new(false));
        tracker.spawn(keep_retention(
            store.clone(),
            tip.clone(),
            cfg.retain_blocks,
            cfg.data_dir.clone(),
            chain_metrics.clone(),
            failed.clone(),
            shutdown.clone(),
        ));
        let upgrade_needed = Arc::new(std::sync::Mutex::new(None));
        let doppelganger = Arc::new(std::sync::Mutex::new(None));
        {
            let failed = failed.clone();
            let upgrade_needed = upgrade_needed.clone();
            let doppelganger = doppelganger.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                match producer.run(inbound, shutdown.clone()).await {
                    Ok(()) => {}
                    // Logged by the producer, with what to do.
                    Err(ProducerError::UpgradeNeeded(needed)) => {
                        *upgrade_needed.lock().unwrap_or_else(|p| p.into_inner()) = Some(needed);
                        shutdown.cancel();
                    }
                    // Logged by the producer, with the evidence.
                    Err(ProducerError::Doppelganger(evidence)) => {
                        *doppelganger.lock().unwrap_or_else(|p| p.into_inner()) = Some(evidence);
                        shutdown.cancel();
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        failed.store(true, Ordering::SeqCst);
                        shutdown.cancel();
                    }
                }
            });
        }

        let listener = tokio::net::TcpListener::bind(cfg.admin)
            .await
            .map_err(|source| NodeError::AdminBind { addr: cfg.admin, source })?;
        let admin_addr = listener.local_addr().map_err(|source| NodeError::AdminBind { addr: cfg.admin, source })?;
        record_admin_addr(&cfg.data_dir, admin_addr);
        let node = Node {
            id,
            network,
            advertised,
            peers,
            admin_addr,
            tip,
            store,
            chain_metrics,
            admin_stats: Arc::default(),
            failed,
            upgrade_needed,
            doppelganger,
            max_version,
            producer: mailbox,
            max_tx_bytes: cfg.limits.mempool.max_tx_bytes,
            shutdown: shutdown.clone(),
            tracker,
        };
        let state = admin::AdminState {
            status: Arc::new(node.status_source()),
            store: node.store.clone(),
            max_tx_bytes: node.max_tx_bytes,
            producer: node.producer.clone(),
            token: cfg.admin_token.map(Arc::new),
            stats: node.admin_stats.clone(),
        };
        if !admin_addr.ip().is_loopback() && state.token.is_none() {
            tracing::warn!(
                admin = %admin_addr,
                "the admin API is on a non-loopback address without admin_token: whoever can reach it \
                 can make this node sign membership changes"
            );
        }
        node.tracker.spawn(admin::serve(listener, state, shutdown));
        tracing::info!(admin = %admin_addr, "admin API listening");
        Ok(node)
    }

    /// Submits a transaction as `POST /tx` does: into the mempool, gossiped to
    /// peers if new.
    pub async fn submit(&self, tx: Vec<u8>) -> Result<Hash, admin::SubmitError> {
        admin::submit_tx(&self.producer.txs, tx).await
    }

    /// Asks this node to approve a membership change (or announce its own
    /// address), as `POST /members` does.
    pub async fn request_change(&self, request: ChangeRequest) -> Result<Submitted, admin::ChangeRequestError> {
        admin::request_change(&self.producer.member_requests, request).await
    }

    /// The membership after the tip, and approvals waiting for a block.
    pub fn members(&self) -> Arc<MembersView> {
        self.producer.members.borrow().clone()
    }

    /// True if the node stopped because of a runtime failure (a failed store write).
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The plan this node stopped before, if it stopped for an upgrade.
    pub(crate) fn upgrade_needed(&self) -> Option<crate::chain::upgrade::UpgradeNeeded> {
        *self.upgrade_needed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the node has stopped (as [`Self::stopped`]) and says why:
    /// `Ok` for a shutdown asked for, [`NodeError::UpgradeNeeded`] when it
    /// stopped before a height its binary cannot run,
    /// [`NodeError::Doppelganger`] when another process signs with its key,
    /// [`NodeError::Failed`]
    /// after a runtime failure.
    pub async fn finished(&self) -> Result<(), NodeError> {
        self.stopped().await;
        if let Some(needed) = self.upgrade_needed() {
            return Err(NodeError::UpgradeNeeded(needed));
        }
        if let Some(evidence) = *self.doppelganger.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(NodeError::Doppelganger(evidence));
        }
        if self.failed() {
            return Err(NodeError::Failed);
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Transactions waiting in this node's mempool, as the producer last
    /// published (once a turn of its loop, at least every 250 ms).
    pub fn mempool_len(&self) -> usize {
        self.chain_metrics.mempool().txs
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
            members: self.producer.members.clone(),
            max_version: self.max_version,
        }
    }

    pub fn metrics(&self) -> String {
        admin::render_metrics(&self.status_source(), &self.admin_stats)
    }

    /// Stops the node: closes every connection with the shutdown code and waits for
    /// every task to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }

    /// Waits until the node has stopped after its shutdown token was cancelled.
    pub(crate) async fn stopped(&self) {
        self.shutdown.cancelled().await;
        self.peers.close_all(CLOSE_WAIT).await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}
