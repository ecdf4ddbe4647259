//! The transport's public face: [`Peers`], the handle the node sends through, and
//! [`Inbound`], what it receives; with the state they share with the manager and
//! the connection tasks (the published peer table, each connection's outbox).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use super::direction::Direction;
use super::handshake::Tip;
use super::inbox::{Deliveries, Delivery, Inbox};
use super::outbox::{Class, Outbox, Outgoing};
use super::slots::ConnId;
use super::tls::RefusalLog;
use super::Close;
use super::Protocol;
use crate::codec::{FrameError, FrameReader};
use crate::identity::NodeId;

/// What the rest of the node receives from peers.
pub struct Inbound {
    pub messages: Messages,
    pub requests: mpsc::Receiver<InboundRequest>,
}

/// Messages from the gossip streams of every peer, served fairly between peers.
pub struct Messages {
    pub(crate) inbox: Arc<Inbox>,
}

impl Messages {
    /// Waits for messages and moves up to `max` of them into `out`, one per peer in
    /// turn (a frame larger than 64 KiB takes a turn per 64 KiB; each peer's
    /// consensus kinds first). Cancel-safe. `None` once the transport stopped.
    pub async fn recv_batch(&self, max: usize, out: &mut Vec<Delivery>) -> Option<usize> {
        self.inbox.recv_batch(max, out).await.ok()
    }

    /// As [`Messages::recv_batch`], into a batch that holds the bodies as
    /// slices of the buffers they were read into: no reference count per
    /// message. Clear `out` between batches (its runs stay pinned until then).
    pub async fn recv_into(&self, max: usize, out: &mut Deliveries) -> Option<usize> {
        self.inbox.recv_batch(max, out).await.ok()
    }

    /// One message (tests and simple consumers).
    pub async fn recv(&self) -> Option<Delivery> {
        let mut out = Vec::with_capacity(1);
        self.recv_batch(1, &mut out).await?;
        out.pop()
    }
}

/// A request from a peer; answer it through `reply` with an encoded frame
/// (dropping it resets the stream).
pub struct InboundRequest {
    pub from: NodeId,
    /// The wire version of the connection it came on: the answer must be one
    /// the peer decodes.
    pub wire: u16,
    /// The request frame's body (kind byte first).
    pub body: Bytes,
    pub reply: oneshot::Sender<Result<Bytes, Refusal>>,
}

/// Why a request was not answered; the peer sees the stream reset with the
/// matching close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer asks more often than its limit allows.
    RateLimited,
    /// Not a request this node serves.
    Unsupported,
}

impl Refusal {
    pub(crate) fn code(self) -> u32 {
        match self {
            Refusal::RateLimited => Close::RATE_LIMITED,
            Refusal::Unsupported => Close::PROTOCOL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// The peer has a new active connection: new, or replacing one (the peer may
    /// have restarted and lost what we sent it).
    Up {
        id: NodeId,
        direction: Direction,
    },
    Down {
        id: NodeId,
    },
}

/// A connected peer, as `/status` shows it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub direction: Direction,
    pub rtt: Duration,
    pub connected_for: Duration,
    pub conn_id: u64,
    pub tip: Tip,
    /// The wire version the connection's handshake settled on.
    pub wire_version: u16,
    /// Bytes waiting in our outbox for this peer.
    pub outbox_bytes: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
    /// Dropped by the outbox's policy (its class's budget is full); counted.
    #[error("outbox for peer {0} is full")]
    Full(NodeId),
    /// The peer's connection is of a wire version that cannot carry the frame.
    #[error("peer {peer} speaks wire {wire}, the message needs {needs}")]
    Unsupported { peer: NodeId, wire: u16, needs: u16 },
}

/// Bytes of frames [`Peers::send_many`] copies into an outbox under one lock.
pub(crate) const SEND_MANY_BYTES: usize = 4 * 1024;

/// What [`Peers::send_many`] did not queue: the first `queued` frames were
/// queued, the next one was not, for `error`, and the rest were not tried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{error} (after {queued} frames queued)")]
pub struct Partial {
    pub queued: usize,
    pub error: SendError,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Connection(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("response: {0}")]
    Frame(FrameError),
}

/// Transport counters. `dials`, `handshakes_ok`, `handshakes_failed` and
/// `duplicates_closed` are part of the `/status` contract.
#[derive(Debug, Default)]
pub struct Counters {
    pub dials: AtomicU64,
    pub dial_failures: AtomicU64,
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub duplicates_closed: AtomicU64,
    pub bad_frames: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Rejections we sent, by [`RejectReason`] (in `RejectReason::ALL` order).
    pub rejects_sent: [AtomicU64; 5],
    /// Rejections peers sent us, by reason.
    pub rejects_received: [AtomicU64; 5],
    /// Our dials that failed at TLS (the peer refused us or is not who we expected).
    pub tls_failed: AtomicU64,
    /// Frame bytes queued for peers and read from them (length prefixes
    /// included). What is queued for a peer is counted by its writer as it
    /// takes it, with everything queued before it (frames queued to a
    /// connection whose writer has ended are not counted).
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Frames the outboxes dropped, by [`Class`] (superseded ones not included).
    pub outbox_dropped: [AtomicU64; 3],
    /// Peers disconnected for not taking what we had for them in time.
    pub slow_peer_disconnects: AtomicU64,
    /// Wall-clock time of the last such disconnect, ms since the epoch (0: none).
    pub last_slow_disconnect_ms: AtomicU64,
    /// Connection attempts refused before any handshake (admission limits).
    pub admission_refused: AtomicU64,
    /// Connection attempts asked to prove their address first (QUIC Retry).
    pub retries_sent: AtomicU64,
    /// Connections peers closed because this node is not in their member set.
    pub removed_by_peer: AtomicU64,
    /// Turns of the manager's loop; it turns at least once a second.
    pub manager_loops: AtomicU64,
}

/// One established connection, as the table publishes it. The outbox is the only
/// mutable part: a std lock, held only to push or pop, never across an `.await`.
pub(crate) struct Link {
    pub(crate) id: NodeId,
    pub(crate) conn: quinn::Connection,
    pub(crate) conn_id: ConnId,
    pub(crate) addr: SocketAddr,
    pub(crate) direction: Direction,
    pub(crate) established: Instant,
    pub(crate) tip: Tip,
    /// The wire version the handshake settled on.
    pub(crate) wire: u16,
    pub(crate) outbox: Mutex<Outbox>,
    /// Wakes the writer when something was queued.
    pub(crate) wake: Notify,
    /// Wakes bulk senders waiting for room (`Peers::writable`).
    pub(crate) drained: Notify,
}

impl Link {
    pub(crate) fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The published peer table: every peer with a completed handshake.
pub(crate) type Table = BTreeMap<NodeId, Arc<Link>>;

pub(crate) struct Shared {
    /// Written only by the manager; read by everyone else.
    pub(crate) table: watch::Sender<Arc<Table>>,
    /// The member set the manager is to follow; the latest one wins.
    pub(crate) members: watch::Sender<Vec<(NodeId, SocketAddr)>>,
    pub(crate) counters: Counters,
    pub(crate) events: broadcast::Sender<PeerEvent>,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) requests: mpsc::Sender<InboundRequest>,
    pub(crate) request_timeout: Duration,
    pub(crate) protocol: Protocol,
    /// `protocol.gossip` as a table, looked up for every frame read.
    pub(crate) gossip_limits: super::KindLimits,
    /// How long a peer may leave what we queued for it untaken.
    pub(crate) slow_after: Duration,
    pub(crate) refusals: Arc<RefusalLog>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) endpoint: quinn::Endpoint,
    /// Bytes of answers to peers' requests being written (see
    /// `peer::ANSWERS_PER_PEER`).
    pub(crate) answer_bytes: std::sync::atomic::AtomicU64,
    /// Bytes of peers' requests read and not yet taken by the node.
    pub(crate) request_bytes: std::sync::atomic::AtomicU64,
    /// Each peer's answer slots, over its connections.
    pub(crate) answer_slots: super::answers::AnswerSlots,
}

impl Shared {
    fn snapshot(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }
}

/// The handle the node uses to talk to its peers. Cheap to clone. No method waits
/// on a peer, except `request` (which waits for its answer in the caller's task)
/// and `writable`.
#[derive(Clone)]
pub struct Peers {
    pub(crate) shared: Arc<Shared>,
}

impl Peers {
    /// Queues `out` for `to` and returns at once. `Full` means the outbox's policy
    /// dropped it (counted), which callers may ignore; `Unsupported` that the
    /// peer's wire version cannot carry it (not queued, not counted).
    pub fn send(&self, to: NodeId, out: &Outgoing) -> Result<(), SendError> {
        // The table's read lock, held for one push: the manager replaces the
        // table rarely, and nobody holds this lock across an `.await`.
        let table = self.shared.table.borrow();
        let link = table.get(&to).ok_or(SendError::NotConnected(to))?;
        if link.wire < out.wire {
            return Err(SendError::Unsupported { peer: to, wire: link.wire, needs: out.wire });
        }
        if self.push(link, out) {
            Ok(())
        } else {
            Err(SendError::Full(to))
        }
    }

    /// Queues `outs` for `to` in order, as that many calls of [`Peers::send`]
    /// would, with one look-up of the peer for all of them and one lock of its
    /// outbox per 4 KiB of frames (`SEND_MANY_BYTES`): a sender with many frames for
    /// one peer pays those per run of frames, not per frame, and the writer,
    /// which takes the same lock to drain the outbox, never waits behind more
    /// than one run's copies. Stops at the first frame that is not queued;
    /// [`Partial`] says how many were queued before it and why it was not
    /// (`Full`: dropped by the outbox's policy and counted, as by `send`). The
    /// outbox's budgets are those `send` meets.
    pub fn send_many(&self, to: NodeId, outs: &[Outgoing]) -> Result<(), Partial> {
        let table = self.shared.table.borrow();
        let link = table.get(&to).ok_or(Partial { queued: 0, error: SendError::NotConnected(to) })?;
        let mut overflowed = [0u64; 3];
        let mut queued = 0;
        let mut error = None;
        while queued < outs.len() && error.is_none() {
            let before = queued;
            let was_empty = {
                let mut outbox = link.outbox();
                let was_empty = outbox.is_empty();
                let mut copied = 0;
                for out in &outs[queued..] {
                    if copied >= SEND_MANY_BYTES {
                        break;
                    }
                    if link.wire < out.wire {
                        error = Some(SendError::Unsupported { peer: to, wire: link.wire, needs: out.wire });
                        break;
                    }
                    let pushed = outbox.push(out);
                    overflowed[out.class.index()] += pushed.overflowed as u64;
                    if !pushed.queued {
                        error = Some(SendError::Full(to));
                        break;
                    }
                    queued += 1;
                    copied += out.frame.len();
                }
                was_empty
            };
            // The writer sleeps only after it found the outbox empty (under
            // the same lock): it needs waking only when this run made it
            // non-empty.
            if was_empty && queued > before {
                link.wake.notify_one();
            }
        }
        self.count_overflowed(&overflowed);
        match error {
            None => Ok(()),
            Some(error) => Err(Partial { queued, error }),
        }
    }

    fn count_overflowed(&self, overflowed: &[u64; 3]) {
        for (counter, n) in self.shared.counters.outbox_dropped.iter().zip(overflowed) {
            if *n > 0 {
                counter.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    /// Queues `out` for every connected peer whose wire version carries it and
    /// returns at once with the peers it was queued for.
    pub fn broadcast(&self, out: &Outgoing) -> Vec<NodeId> {
        let table = self.shared.snapshot();
        table.values().filter(|link| link.wire >= out.wire && self.push(link, out)).map(|link| link.id).collect()
    }

    #[inline]
    fn push(&self, link: &Link, out: &Outgoing) -> bool {
        let (pushed, was_empty) = {
            let mut outbox = link.outbox();
            let was_empty = outbox.is_empty();
            (outbox.push(out), was_empty)
        };
        let c = &self.shared.counters;
        if pushed.overflowed > 0 {
            // Superseded frames are not losses; overflowed ones of the pushed
            // frame's class are. Txs are the class that overflows in practice.
            c.outbox_dropped[out.class.index()].fetch_add(pushed.overflowed as u64, Ordering::Relaxed);
        }
        if pushed.queued {
            // Counted in `frames_sent` and `bytes_sent` by the writer. The writer sleeps only after it found the outbox empty (under the
            // same lock), so it needs waking only when this push made it
            // non-empty: one wake-up per batch, not per frame.
            if was_empty {
                link.wake.notify_one();
            }
        }
        pushed.queued
    }

    /// Waits until the writer for `to` took frames from its outbox (for bulk
    /// senders that prefer waiting to dropping: benchmarks and tests).
    pub async fn writable(&self, to: NodeId) -> Result<(), SendError> {
        let link = self.shared.snapshot().get(&to).cloned().ok_or(SendError::NotConnected(to))?;
        let drained = link.drained.notified();
        if link.outbox().is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = drained => Ok(()),
            _ = link.conn.closed() => Err(SendError::NotConnected(to)),
        }
    }

    /// Sends one request frame on a stream of its own and waits for the response's
    /// body (checked against the protocol's response kinds and limits).
    pub async fn request(&self, to: NodeId, frame: Bytes) -> Result<Bytes, RequestError> {
        let conn = self.shared.snapshot().get(&to).map(|l| l.conn.clone());
        let conn = conn.ok_or(SendError::NotConnected(to))?;
        request(&conn, frame, self.shared.request_timeout, self.shared.protocol).await
    }

    /// Makes `members` the member set and returns at once; the transport's task
    /// applies it moments later, and a later call supersedes an earlier one not
    /// yet applied. From then on TLS, the handshake and admission accept exactly
    /// these keys and addresses. A new member is dialled or awaited by the
    /// direction rule; a removed one's connection is closed with
    /// [`Close::REMOVED`] and it is never dialled again; a member whose address
    /// changed keeps its connection, or else is dialled at the new address at
    /// once (or awaited there). Unchanged members are left alone, so the same set
    /// twice is a no-op. Our own entry, if any, is ignored; of two entries for one
    /// id the last counts.
    pub fn set_members(&self, members: Vec<(NodeId, SocketAddr)>) {
        self.shared.members.send_replace(members);
    }

    /// Keys that are not members but are expected to knock (joiners whose add
    /// is collecting approvals, members that left): TLS still refuses them, and
    /// logs that at info once per key and state instead of warning as it does
    /// for strangers.
    pub(crate) fn set_expected(&self, keys: impl IntoIterator<Item = (NodeId, super::tls::Expected)>) {
        self.shared.refusals.expect(keys);
    }

    /// Closes the connection to `peer` for a message the application could not
    /// accept (a frame that did not decode), with one log line.
    pub(crate) fn reject(&self, peer: NodeId, e: &FrameError) {
        if let Some(link) = self.shared.snapshot().get(&peer) {
            reject_frame(&link.conn, peer, e, &self.shared);
        }
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        self.shared
            .snapshot()
            .values()
            .map(|l| PeerInfo {
                id: l.id,
                addr: l.addr,
                direction: l.direction,
                rtt: l.conn.rtt(),
                connected_for: l.established.elapsed(),
                conn_id: l.conn_id,
                tip: l.tip,
                wire_version: l.wire,
                outbox_bytes: l.outbox().total_bytes(),
            })
            .collect()
    }

    /// The wire version of each connected peer: what the chain asks before it
    /// relies on every member decoding a message of a later version.
    pub fn wire_versions(&self) -> BTreeMap<NodeId, u16> {
        self.shared.snapshot().values().map(|l| (l.id, l.wire)).collect()
    }

    /// The connected peers (handshake complete), this node not included.
    pub fn connected(&self) -> BTreeSet<NodeId> {
        self.shared.snapshot().keys().copied().collect()
    }

    /// Whether `id` is connected (handshake complete).
    pub fn is_connected(&self, id: &NodeId) -> bool {
        self.shared.table.borrow().contains_key(id)
    }

    /// How many peers are connected.
    pub fn connected_count(&self) -> usize {
        self.shared.table.borrow().len()
    }

    /// Follows the peer table: wakes on every change.
    pub(crate) fn watch_connected(&self) -> ConnectedWatch {
        ConnectedWatch(self.shared.table.subscribe())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.events.subscribe()
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Bytes queued in the outboxes, all peers, by class.
    pub(crate) fn outbox_bytes(&self) -> [u64; 3] {
        let mut total = [0u64; 3];
        for l in self.shared.snapshot().values() {
            let o = l.outbox();
            for c in Class::ALL {
                total[c.index()] += o.bytes(c) as u64;
            }
        }
        total
    }

    /// Bytes read from peers and not yet taken by the node.
    pub(crate) fn inbound_bytes(&self) -> u64 {
        self.shared.inbox.queued_bytes()
    }

    /// Bytes of answers to peers' requests being written now: at most
    /// [`super::ANSWERS_PER_PEER`] frames per peer.
    pub fn answer_bytes(&self) -> u64 {
        self.shared.answer_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of peers' requests read and not yet taken by the node: at most
    /// [`super::ANSWERS_PER_PEER`] requests per peer (the others wait unread).
    pub fn request_bytes(&self) -> u64 {
        self.shared.request_bytes.load(Ordering::Relaxed)
    }

    /// Certificates refused at TLS by this node's server side.
    pub fn tls_refused(&self) -> u64 {
        self.shared.refusals.total.load(Ordering::Relaxed)
    }

    /// Bytes of the strangers' keys TLS remembers so as to warn once per key.
    pub(crate) fn tls_strangers_bytes(&self) -> u64 {
        self.shared.refusals.strangers_bytes()
    }

    /// The bound UDP address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Closes every connection with the shutdown code and waits (bounded) for the
    /// peers to acknowledge.
    pub(crate) async fn close_all(&self, wait: Duration) {
        self.shared.endpoint.close(Close::SHUTDOWN.into(), b"shutdown");
        self.shared.inbox.close();
        let _ = tokio::time::timeout(wait, self.shared.endpoint.wait_idle()).await;
    }
}

/// A view of the connected set that wakes on every change (the quorum gate).
pub(crate) struct ConnectedWatch(watch::Receiver<Arc<Table>>);

impl ConnectedWatch {
    /// Waits for the next change; `Err` once the transport stopped. Cancel-safe.
    pub(crate) async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.0.changed().await
    }
}

/// One log line and a typed close for a peer that sent a bad frame.
pub(crate) fn reject_frame(conn: &quinn::Connection, peer: NodeId, e: &FrameError, shared: &Shared) {
    shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(peer = %peer.short(), "bad frame from peer: {e}; closing the connection");
    conn.close(super::frame_error_code(e).into(), e.to_string().as_bytes());
}

/// Sends one request on a stream of its own and reads the response.
pub(crate) async fn request(
    conn: &quinn::Connection,
    frame: Bytes,
    timeout: Duration,
    protocol: Protocol,
) -> Result<Bytes, RequestError> {
    let exchange = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| RequestError::Connection(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| RequestError::Stream(e.to_string()))?;
        send.finish().map_err(|e| RequestError::Stream(e.to_string()))?;
        read_one(recv, protocol.response).await.map_err(|e| match e {
            FrameError::Read(e) => RequestError::Stream(e.to_string()),
            other => RequestError::Frame(other),
        })
    };
    // Dropping the exchange on timeout drops both stream halves with it.
    tokio::time::timeout(timeout, exchange).await.map_err(|_| RequestError::Timeout(timeout))?
}

/// Reads exactly one frame (its kind and limit checked from the header) and the
/// end of the stream.
pub(crate) async fn read_one(recv: quinn::RecvStream, limit: fn(u8) -> Option<usize>) -> Result<Bytes, FrameError> {
    let mut reader = FrameReader::new(recv);
    let body = reader.next_body(limit).await?.ok_or(FrameError::Empty)?;
    match reader.next_body(limit).await? {
        None => Ok(body),
        Some(_) => Err(FrameError::TrailingBytes(1)),
    }
}
