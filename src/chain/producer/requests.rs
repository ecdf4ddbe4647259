//! The shell's traffic: messages queued for peers, and the requests that run
//! in tasks of their own (blocks served from the store at the peer's serve
//! budget, blocks and transactions asked of peers), each reporting back to the
//! loop over its answers channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{writer, Producer};
use crate::chain::block::{Hash, Height, Round};
use crate::chain::checkpoint::CheckpointAnswer;
use crate::chain::driver::{BlocksAnswer, RequestFailure, RequestId};
use crate::chain::message::{self, Message};
use crate::chain::store::{Store, StoreError};
use crate::identity::NodeId;
use crate::net::{Peers, Refusal};

/// A peer's answer to one of our requests (with the bytes of its body), or
/// what our answer to a peer's `GetBlocks` took.
pub(super) enum Answer {
    Blocks {
        peer: NodeId,
        result: Result<BlocksAnswer, RequestFailure>,
        bytes: usize,
    },
    Txs {
        fetch: u64,
        peer: NodeId,
        height: Height,
        round: Round,
        result: Result<Vec<Vec<u8>>, RequestFailure>,
        bytes: usize,
    },
    Served {
        peer: NodeId,
        reserved: usize,
        used: usize,
    },
}

impl Producer {
    /// Queues for every peer; returns at once. The only error is a message over
    /// its kind's limit, which block limits rule out for our own messages: if it
    /// happens anyway it is a bug worth a loud line, not a silent stall.
    /// Sends `msg` to `to` (or to every peer) now, or, when it reports a block
    /// still being written (`Tip`, `Holds`), once that block is stored.
    pub(super) fn deliver(&mut self, to: Option<NodeId>, msg: Message) {
        match writer::reports(&msg).filter(|_| self.writer.pending() > 0) {
            Some(height) => self.after_stored.push((height, to, msg)),
            None => self.deliver_now(to, &msg),
        }
    }

    pub(super) fn deliver_now(&self, to: Option<NodeId>, msg: &Message) {
        match to {
            Some(to) => self.send(to, msg),
            None => self.broadcast(msg),
        }
    }

    pub(super) fn broadcast(&self, msg: &Message) {
        match msg.outgoing() {
            Ok(out) => {
                self.peers.broadcast(&out);
            }
            Err(e) => tracing::error!("cannot send: {e}"),
        }
    }

    /// Queues for one peer, as [`Self::broadcast`] does for all.
    pub(super) fn send(&self, to: NodeId, msg: &Message) {
        match msg.outgoing() {
            Ok(out) => {
                let _ = self.peers.send(to, &out);
            }
            Err(e) => tracing::error!("cannot send: {e}"),
        }
    }

    /// Answers request `id` of `peer` with blocks read from the store, off the
    /// loop, once `after_ms` (the peer's serve budget) has passed: those the
    /// requester's wire version decodes ([`Message::blocks_for_wire`]), or a
    /// refusal when the first block asked for is not one of them (a node of
    /// 0.1.0 asking for a block that carries an upgrade plan's approval: it
    /// counts a failed request, and cannot follow the chain past that block).
    /// The bytes the answer took go back to the driver.
    pub(super) fn serve_blocks(&mut self, id: RequestId, peer: NodeId, asked: (Height, usize, usize), after_ms: u64) {
        let (from, count, max_bytes) = asked;
        let Some((reply, wire)) = self.replies.remove(&id) else { return };
        let (store, answers) = (self.store.clone(), self.answers_tx.clone());
        self.tracker.spawn(async move {
            if after_ms > 0 {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
            }
            let read = move || {
                store.range(from, count, max_bytes).map(|blocks| (blocks.len(), Message::blocks_for_wire(blocks, wire)))
            };
            let mut used = 0;
            match tokio::task::spawn_blocking(read).await {
                Ok(Ok((read, blocks))) if read > 0 && blocks.is_empty() => {
                    tracing::debug!(from, wire, "blocks asked for by a peer at wire {wire} need a later wire: refused");
                    let _ = reply.send(Err(Refusal::Unsupported));
                }
                Ok(Ok((_, blocks))) => match Message::Blocks(blocks).encode() {
                    Ok(frame) => {
                        used = frame.len();
                        let _ = reply.send(Ok(frame));
                    }
                    Err(e) => tracing::error!("cannot answer a request: {e}"),
                },
                Ok(Err(e)) => tracing::error!("cannot read blocks for a peer: {e}"),
                Err(e) => tracing::error!("block read task failed: {e}"),
            }
            let _ = answers.send(Answer::Served { peer, reserved: max_bytes, used }).await;
        });
    }

    /// Answers request `id` of `peer` with the checkpoint at `height` (0: the
    /// tip) read from the store, off the loop, once `after_ms` has passed; a
    /// refusal when the store does not hold it (the block, its parent's and
    /// the member state the parent left) or the requester's wire version does
    /// not carry the answer. The bytes the answer took go back to the driver.
    pub(super) fn serve_checkpoint(&mut self, id: RequestId, peer: NodeId, asked: (Height, usize), after_ms: u64) {
        let (height, reserved) = asked;
        let Some((reply, wire)) = self.replies.remove(&id) else { return };
        let (store, answers) = (self.store.clone(), self.answers_tx.clone());
        self.tracker.spawn(async move {
            if after_ms > 0 {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
            }
            let mut used = 0;
            if wire < message::CHECKPOINT_WIRE {
                let _ = reply.send(Err(Refusal::Unsupported));
            } else {
                let read = move || checkpoint_at(&store, height);
                match tokio::task::spawn_blocking(read).await {
                    Ok(Ok(Some(answer))) => match Message::Checkpoint(Box::new(answer)).encode() {
                        Ok(frame) => {
                            used = frame.len();
                            let _ = reply.send(Ok(frame));
                        }
                        Err(e) => tracing::error!("cannot answer a request: {e}"),
                    },
                    Ok(Ok(None)) => {
                        tracing::debug!(height, "a peer asked for a checkpoint this node does not hold: refused");
                        let _ = reply.send(Err(Refusal::Unsupported));
                    }
                    Ok(Err(e)) => tracing::error!("cannot read a checkpoint for a peer: {e}"),
                    Err(e) => tracing::error!("checkpoint read task failed: {e}"),
                }
            }
            let _ = answers.send(Answer::Served { peer, reserved, used }).await;
        });
    }

    pub(super) fn request_blocks(&mut self, peer: NodeId, from: Height, count: u32) {
        let (peers, answers, held) = (self.peers.clone(), self.answers_tx.clone(), self.answer_bytes.clone());
        self.tracker.spawn(async move {
            let asked = ask_blocks(&peers, peer, from, count).await;
            let bytes = asked.as_ref().map_or(0, |(_, bytes)| *bytes);
            let guard = HeldGuard::count(held, bytes);
            let result = asked.and_then(|(m, bytes)| match m {
                Message::Blocks(blocks) => Ok(BlocksAnswer { blocks, bytes }),
                other => Err(RequestFailure::Unexpected(other.kind_name())),
            });
            if answers.send(Answer::Blocks { peer, result, bytes }).await.is_ok() {
                guard.handed_on();
            }
        });
    }

    /// Starts the fetch of a compact proposal's transactions; a fetch already
    /// under way for the same proposal ends.
    pub(super) fn request_txs(&mut self, peer: NodeId, height: Height, round: Round, ids: Vec<Hash>) {
        let fetch = self.next_fetch;
        self.next_fetch += 1;
        let (peers, answers, held) = (self.peers.clone(), self.answers_tx.clone(), self.answer_bytes.clone());
        let task = self.tracker.spawn(async move {
            let asked = ask(&peers, peer, Message::GetTxs { height, round, ids }).await;
            let bytes = asked.as_ref().map_or(0, |(_, bytes)| *bytes);
            // Counted out if the fetch is cancelled while its answer waits.
            let guard = HeldGuard::count(held, bytes);
            let result = asked.and_then(|(m, _)| match m {
                Message::Txs(txs) => Ok(txs),
                other => Err(RequestFailure::Unexpected(other.kind_name())),
            });
            if answers.send(Answer::Txs { fetch, peer, height, round, result, bytes }).await.is_ok() {
                guard.handed_on();
            }
        });
        if let Some((_, old)) = self.fetches.insert((height, round), (fetch, task.abort_handle())) {
            old.abort();
        }
    }
}

/// A fetch is as long-lived as its assembly, which goes with the driver: when
/// the producer stops, its fetches end.
impl Drop for Producer {
    fn drop(&mut self) {
        for (_, task) in self.fetches.values() {
            task.abort();
        }
    }
}

/// An answer's bytes in `answer_bytes` while its task holds it: counted out
/// if the task ends (a fetch is aborted, the loop is gone) before the answer
/// reaches the loop, which counts it out itself once handed on.
struct HeldGuard {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl HeldGuard {
    fn count(held: Arc<AtomicUsize>, bytes: usize) -> HeldGuard {
        held.fetch_add(bytes, Ordering::Relaxed);
        HeldGuard { held, bytes }
    }

    /// The loop has the answer now, and counts its bytes out as it handles it.
    fn handed_on(mut self) {
        self.bytes = 0;
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The checkpoint at `height` (0: the tip) as the store holds it: the block,
/// its parent's id and the member state the parent left, or `None` where any
/// of them is not held (pruned, below a checkpoint start, before this store
/// recorded member states).
fn checkpoint_at(store: &Store, height: Height) -> Result<Option<CheckpointAnswer>, StoreError> {
    let height = if height == 0 { store.tip()?.map_or(0, |t| t.height) } else { height };
    if height < 2 {
        return Ok(None);
    }
    let (Some(committed), Some(parent), Some(before)) =
        (store.block(height)?, store.block(height - 1)?, store.state_at(height - 1)?)
    else {
        return Ok(None);
    };
    Ok(Some(CheckpointAnswer { parent: parent.block.hash(), committed, before }))
}

/// Sends `request` to `peer` on a stream of its own; the answer and its body's
/// size.
async fn ask(peers: &Peers, peer: NodeId, request: Message) -> Result<(Message, usize), RequestFailure> {
    let body = peers.request(peer, request.encode()?).await?;
    Ok((Message::decode(&body)?, body.len()))
}

/// Asks `peer` for `count` blocks from `from`. An answer that says it holds
/// more is refused before it is decoded ([`message::blocks_count`]): decoded,
/// it would hold far more than its bytes, and nothing of it could be used.
async fn ask_blocks(peers: &Peers, peer: NodeId, from: Height, count: u32) -> Result<(Message, usize), RequestFailure> {
    let body = peers.request(peer, Message::GetBlocks { from, count }.encode()?).await?;
    if message::blocks_count(&body).is_some_and(|n| n > u64::from(count)) {
        return Err(RequestFailure::Unexpected("more blocks than asked for"));
    }
    Ok((Message::decode(&body)?, body.len()))
}
