//! The tasks that carry one established connection's bytes.
//!
//! Per connection: a writer that drains the peer's outbox into our unidirectional
//! stream, batching small frames into few large writes; a reader that owns the
//! peer's unidirectional stream and its [`FrameReader`] (frames are read in this task
//! alone, never beside a timer in a `select!`, so a half-read frame cannot be lost)
//! and pushes what it reads into the inbox; and a request server that answers the
//! peer's bidirectional request streams. All of them end with the connection.
//!
//! **Slow peers.** The writer gives every step that depends on the peer (the peer
//! granting our stream, the peer's flow control taking a batch) the slow-peer
//! deadline. A peer that keeps its connection alive but does not read, or never
//! grants a stream, is disconnected with [`Close::TOO_SLOW`] when the deadline
//! passes; meanwhile its outbox drops by policy and nobody else waits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::task::TaskTracker;

use super::inbox::Slot;
use super::peers::{read_one, reject_frame, InboundRequest, Link, Shared};
use super::Close;
use crate::codec::{FrameError, FrameReader};
use crate::identity::NodeId;

/// Bytes a writer takes from the outbox into one write, about; also the
/// largest piece of a frame written under one slow-peer deadline.
const BATCH_BYTES: usize = 64 * 1024;

pub(crate) fn spawn(tracker: &TaskTracker, link: Arc<Link>, shared: Arc<Shared>) {
    tracker.spawn(write_loop(link.clone(), shared.clone()));
    tracker.spawn(read_loop(link.conn.clone(), link.id, shared.clone()));
    tracker.spawn(serve_requests(link.conn.clone(), link.id, link.wire, shared, tracker.clone()));
}

/// Drains the outbox into our long-lived stream. Whatever queued while the
/// previous write was in flight goes out in one write: transactions as runs of
/// the peer's encode buffer, consensus frames and tips as they were encoded, all
/// handed to quinn without a copy (quinn pays per write call, not per chunk of
/// one call).
async fn write_loop(link: Arc<Link>, shared: Arc<Shared>) {
    write_batches(&link, &shared).await;
    count_queued(&link, &shared);
}

/// Adds what was queued for the peer since the last count to the transport's
/// counters.
fn count_queued(link: &Link, shared: &Shared) {
    let queued = link.outbox().take_queued();
    add_queued(queued, shared);
}

fn add_queued(queued: super::outbox::Queued, shared: &Shared) {
    if queued.frames > 0 {
        shared.counters.frames_sent.fetch_add(queued.frames, Ordering::Relaxed);
        shared.counters.bytes_sent.fetch_add(queued.bytes, Ordering::Relaxed);
    }
}

async fn write_batches(link: &Link, shared: &Shared) {
    let conn = &link.conn;
    let slow_after = shared.slow_after;
    let mut stream: Option<quinn::SendStream> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        // Wait for work (or the connection's end). A sender wakes us only when
        // it queues into an empty outbox: we look again before we sleep.
        loop {
            let (taken, queued) = {
                let mut outbox = link.outbox();
                (outbox.pop_batch(BATCH_BYTES, &mut batch), outbox.take_queued())
            };
            add_queued(queued, shared);
            if taken > 0 {
                break;
            }
            tokio::select! {
                _ = link.wake.notified() => {}
                _ = conn.closed() => return,
            }
        }
        link.drained.notify_waiters();
        let send = match &mut stream {
            Some(s) => s,
            None => match tokio::time::timeout(slow_after, conn.open_uni()).await {
                Ok(Ok(s)) => stream.insert(s),
                Ok(Err(_)) => return,
                Err(_) => return too_slow(link, shared, "granted no stream"),
            },
        };
        match write_batch(send, &mut batch, slow_after).await {
            Ok(()) => {}
            Err(WriteFailure::Stalled) => return too_slow(link, shared, "took nothing"),
            Err(WriteFailure::Stream) => {
                // The peer stopped our stream, or it broke: without it the peer
                // gets nothing from us, so it must not stay in the table.
                if conn.close_reason().is_none() {
                    conn.close(Close::PROTOCOL.into(), b"gossip stream closed");
                }
                return;
            }
        }
    }
}

/// Why a batch was not written.
enum WriteFailure {
    /// No piece of it was taken within the slow-peer deadline.
    Stalled,
    Stream,
}

/// Writes a batch in pieces of about [`BATCH_BYTES`] (a larger frame is cut into
/// pieces of that size), each under the slow-peer deadline: the deadline
/// measures progress, not the time a large frame takes over a slow link.
/// (Cancelling a write on timeout is harmless: the connection is closed right
/// after.)
async fn write_batch(
    send: &mut quinn::SendStream,
    batch: &mut Vec<Bytes>,
    slow_after: Duration,
) -> Result<(), WriteFailure> {
    async fn piece(
        send: &mut quinn::SendStream,
        chunks: &mut [Bytes],
        slow_after: Duration,
    ) -> Result<(), WriteFailure> {
        match tokio::time::timeout(slow_after, send.write_all_chunks(chunks)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailure::Stream),
            Err(_) => Err(WriteFailure::Stalled),
        }
    }
    let total: usize = batch.iter().map(Bytes::len).sum();
    if total <= BATCH_BYTES {
        piece(send, batch, slow_after).await?;
        batch.clear();
        return Ok(());
    }
    for chunk in batch.drain(..) {
        let mut at = 0;
        while at < chunk.len() {
            let end = (at + BATCH_BYTES).min(chunk.len());
            piece(send, &mut [chunk.slice(at..end)], slow_after).await?;
            at = end;
        }
    }
    Ok(())
}

fn too_slow(link: &Link, shared: &Shared, what: &str) {
    shared.counters.slow_peer_disconnects.fetch_add(1, Ordering::Relaxed);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    shared.counters.last_slow_disconnect_ms.store(now_ms as u64, Ordering::Relaxed);
    let queued = link.outbox().total_bytes();
    tracing::warn!(
        peer = %link.id.short(),
        queued_bytes = queued,
        "peer {what} within {} ms; disconnecting it as too slow (it reconnects and catches up by sync)",
        shared.slow_after.as_millis()
    );
    link.conn.close(Close::TOO_SLOW.into(), b"too slow");
}

/// How long a peer that finished its gossip stream keeps its connection after
/// what it sent has been handled.
const FINISHED_STREAM_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

async fn read_loop(conn: quinn::Connection, peer: NodeId, shared: Arc<Shared>) {
    let Ok(recv) = conn.accept_uni().await else {
        return;
    };
    let mut reader = FrameReader::new(recv);
    let slot = shared.inbox.slot(peer);
    let failure = loop {
        match read_run(&mut reader, &conn, slot, &shared).await {
            Ok(true) => {}
            Ok(false) => {
                // Our writers never finish their stream: a peer that finished
                // its own would stay connected (and count for the quorum) with
                // nothing more read from it. Its connection ends instead, once
                // what it sent before the end has been handled (a bad message
                // among it closes with its own code) and after a moment in which
                // a peer that is stopping closes the connection itself.
                let _ = shared.inbox.drained(slot).await;
                let _ = tokio::time::timeout(FINISHED_STREAM_GRACE, conn.closed()).await;
                if conn.close_reason().is_none() {
                    tracing::debug!(peer = %peer.short(), "peer finished its gossip stream: closing");
                    conn.close(Close::PROTOCOL.into(), b"gossip stream finished");
                }
                return;
            }
            Err(None) => return,
            Err(Some(e)) => break e,
        }
    };
    if conn.close_reason().is_none() {
        reject_frame(&conn, peer, &failure, &shared);
    }
}

/// Reads once from a peer's gossip stream and queues the whole frames it
/// completed as one run. Every header is checked as soon as it is read; before
/// reading on, the reader waits for room in the inbox for the frame it is in (its
/// size known from its header) or for any at all: while the peer is over its
/// budget we stop reading, and QUIC flow control holds it back. `Ok(false)` at a
/// clean end of the stream; `Err(None)`: the node is stopping or the connection
/// ended.
async fn read_run(
    reader: &mut FrameReader<quinn::RecvStream>,
    conn: &quinn::Connection,
    slot: Slot,
    shared: &Shared,
) -> Result<bool, Option<FrameError>> {
    let limits = &shared.gossip_limits;
    let limit = |kind| limits.get(kind);
    tokio::select! {
        room = shared.inbox.room(slot, reader.wanted().max(1)) => room.map_err(|_| None)?,
        _ = conn.closed() => return Err(None),
    }
    if !reader.read_more().await.map_err(Some)? {
        reader.finish(limit).map_err(Some)?;
        return Ok(false);
    }
    if let Some((run, frames)) = reader.take_frames(limit).map_err(Some)? {
        let c = &shared.counters;
        c.frames_received.fetch_add(frames as u64, Ordering::Relaxed);
        c.bytes_received.fetch_add(run.len() as u64, Ordering::Relaxed);
        shared.inbox.put(slot, run);
    }
    Ok(true)
}

async fn serve_requests(conn: quinn::Connection, peer: NodeId, wire: u16, shared: Arc<Shared>, tracker: TaskTracker) {
    let hold = shared.answer_slots.enter(peer);
    while let Ok((send, recv)) = conn.accept_bi().await {
        tracker.spawn(serve_one(conn.clone(), (peer, wire), send, recv, shared.clone(), hold.semaphore.clone()));
    }
}

async fn serve_one(
    conn: quinn::Connection,
    (peer, wire): (NodeId, u16),
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
    answers: Arc<Semaphore>,
) {
    let timeout = shared.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    // The request is read only once one of the peer's answer slots is free, and
    // the slot is held until its answer is written (see [`super::ANSWERS_PER_PEER`]).
    let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, answers.acquire_owned()).await else {
        let _ = send.reset(Close::REQUEST_TIMEOUT.into());
        return;
    };
    // The whole request is abandoned on timeout, stream included, so cancelling the
    // read here cannot tear a frame that anyone reads later.
    let body = match tokio::time::timeout_at(deadline, read_one(recv, shared.protocol.request)).await {
        Ok(Ok(body)) => body,
        Ok(Err(FrameError::Read(_))) => return,
        Ok(Err(e)) => {
            reject_frame(&conn, peer, &e, &shared);
            return;
        }
        Err(_) => {
            let _ = send.reset(Close::REQUEST_TIMEOUT.into());
            return;
        }
    };
    // Held from its read until the node has it (the node's queue of requests
    // is shared by all peers and may be full for a moment).
    let held = body.len() as u64;
    shared.request_bytes.fetch_add(held, Ordering::Relaxed);
    let (reply, answer) = oneshot::channel();
    let queued = shared.requests.send(InboundRequest { from: peer, wire, body, reply }).await;
    shared.request_bytes.fetch_sub(held, Ordering::Relaxed);
    if queued.is_err() {
        return;
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Err(refusal))) => {
            let _ = send.reset(refusal.code().into());
        }
        Ok(Ok(Ok(frame))) => {
            // A response is written under the same deadline: a requester that does
            // not read its answer holds only this task, and not for long.
            let held = frame.len() as u64;
            shared.answer_bytes.fetch_add(held, Ordering::Relaxed);
            let written = tokio::time::timeout(timeout, send.write_all(&frame)).await;
            shared.answer_bytes.fetch_sub(held, Ordering::Relaxed);
            if matches!(written, Ok(Ok(()))) {
                let _ = send.finish();
            } else {
                let _ = send.reset(Close::REQUEST_TIMEOUT.into());
            }
        }
        _ => {
            let _ = send.reset(Close::REQUEST_TIMEOUT.into());
        }
    }
}
