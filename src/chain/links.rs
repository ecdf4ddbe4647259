//! The producer's links with the rest of the node: what comes in (transactions
//! and change requests from the admin API and [`crate::node::Node`], on bounded
//! channels with a `oneshot` for the verdict) and what goes out (the member view
//! on a watch, the figures in [`ChainMetrics`]).
//!
//! The producer task owns the mempool and the approval pool; nobody else
//! touches them. Every channel is bounded: a burst of submissions waits for the
//! producer, which takes them in batches between other work, instead of growing
//! a queue. Status and metrics read what the producer published, once a turn of
//! its loop.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use tokio::sync::{mpsc, oneshot, watch};

use super::block::Hash;
use super::driver::{ChangeRequest, Held, MembersView, Submitted};
use super::members::{ChangeError, Membership};
use super::mempool::{AddError, Figures};

/// Submissions waiting for the producer, at most.
const TX_QUEUE: usize = 1024;
/// Change requests waiting for the producer, at most.
const MEMBER_QUEUE: usize = 16;

/// A membership change for the driver to approve, with where its verdict goes.
pub(crate) struct MemberRequest {
    pub request: ChangeRequest,
    pub reply: oneshot::Sender<Result<Submitted, ChangeError>>,
}

/// A transaction for the mempool, with where its verdict goes.
pub(crate) struct TxRequest {
    pub tx: Vec<u8>,
    pub reply: oneshot::Sender<Result<Hash, AddError>>,
}

/// The admin API's ends of the producer's channels: the member view it
/// publishes, and the requests it takes.
#[derive(Clone)]
pub(crate) struct Mailbox {
    pub members: watch::Receiver<Arc<MembersView>>,
    pub member_requests: mpsc::Sender<MemberRequest>,
    pub txs: mpsc::Sender<TxRequest>,
}

/// The producer's ends of the same channels.
pub(crate) struct Links {
    pub(crate) view: watch::Sender<Arc<MembersView>>,
    pub(crate) member_requests: mpsc::Receiver<MemberRequest>,
    pub(crate) txs: mpsc::Receiver<TxRequest>,
}

impl Links {
    /// Links, and the admin API's ends of them, with `membership` as the first
    /// view.
    pub(crate) fn new(membership: Membership) -> (Links, Mailbox) {
        let (view, members) = watch::channel(Arc::new(MembersView { membership, waiting: vec![] }));
        let (member_tx, member_requests) = mpsc::channel(MEMBER_QUEUE);
        let (tx_tx, txs) = mpsc::channel(TX_QUEUE);
        (Links { view, member_requests, txs }, Mailbox { members, member_requests: member_tx, txs: tx_tx })
    }
}

/// What the producer reports for metrics, status and the service watchdog.
pub(crate) struct ChainMetrics {
    /// Turns of the producer's loop; it turns at least every
    /// [`super::driver::TICK_MS`].
    pub loops: AtomicU64,
    /// Seconds from a block's timestamp (its proposal) to its commit here.
    pub commit_latency: Histogram,
    pub blocks_synced: AtomicU64,
    /// Failed sync requests, by [`super::sync::Failure`] (in `Failure::ALL` order).
    pub sync_failures: [AtomicU64; 6],
    pub misbehaviour: AtomicU64,
    /// Peers' requests refused for their rate, and for their serve budget in
    /// bytes.
    pub requests_refused_rate: AtomicU64,
    pub requests_refused_bytes: AtomicU64,
    /// The consensus round at the current height.
    pub round: AtomicU64,
    /// The committed tip's header timestamp (ms since the epoch; 0 before the
    /// first block).
    pub last_block_timestamp_ms: AtomicU64,
    /// Our clock's offset from the peers' (ms, positive when ours is ahead),
    /// valid while `clock_peers` is above 0; see [`super::clock`].
    pub clock_offset_ms: AtomicI64,
    /// Peers the clock offset is estimated from.
    pub clock_peers: AtomicU64,
    /// The highest tip a usable peer claims (0 if none).
    pub best_peer_tip: AtomicU64,
    /// Why this member signs nothing now ([`super::doppelganger::Hold::code`];
    /// 0: it signs).
    pub hold: std::sync::atomic::AtomicU8,
    /// The lowest height whose block the store holds (1 until something is
    /// pruned), as the pruner last published it.
    pub earliest_height: AtomicU64,
    /// Bytes of the data dir's files, as last measured (every few seconds).
    pub data_dir_bytes: AtomicU64,
    /// Bytes held for what peers sent, by [`Held`] (in `Held::ALL` order).
    held: [AtomicU64; Held::ALL.len()],
    /// The mempool's figures as last published: a snapshot of a few numbers,
    /// replaced whole once a loop turn; the lock is held only to copy it.
    mempool: Mutex<Figures>,
}

impl ChainMetrics {
    pub(crate) fn set_held(&self, what: Held, bytes: usize) {
        self.held[what as usize].store(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn held(&self, what: Held) -> u64 {
        self.held[what as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn set_mempool(&self, figures: Figures) {
        *self.mempool.lock().unwrap_or_else(|p| p.into_inner()) = figures;
    }

    /// The mempool's figures as the producer last published them.
    pub(crate) fn mempool(&self) -> Figures {
        *self.mempool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for ChainMetrics {
    fn default() -> Self {
        ChainMetrics {
            loops: AtomicU64::new(0),
            commit_latency: Histogram::new(exponential_buckets(0.05, 2.0, 11)),
            blocks_synced: AtomicU64::new(0),
            sync_failures: Default::default(),
            misbehaviour: AtomicU64::new(0),
            requests_refused_rate: AtomicU64::new(0),
            requests_refused_bytes: AtomicU64::new(0),
            round: AtomicU64::new(0),
            last_block_timestamp_ms: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            clock_peers: AtomicU64::new(0),
            best_peer_tip: AtomicU64::new(0),
            hold: std::sync::atomic::AtomicU8::new(0),
            earliest_height: AtomicU64::new(1),
            data_dir_bytes: AtomicU64::new(0),
            held: Default::default(),
            mempool: Mutex::new(Figures::default()),
        }
    }
}
