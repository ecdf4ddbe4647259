//! The tasks that carry one established connection's bytes.
//!
//! Per connection: a writer that owns our unidirectional stream and batches queued
//! frames into few large writes; a reader that owns the peer's unidirectional stream
//! and its [`FrameReader`] (frames are read in this task alone, never beside a timer
//! in a `select!`, so a half-read frame cannot be lost); a request server that
//! answers the peer's bidirectional request streams; and a watcher that tells the
//! manager when the connection ends. All of them end with the connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::close;
use super::codec::{self, FrameError, FrameReader, MAX_FRAME};
use super::manager::{Cmd, InboundRequest, Shared};
use super::message::Message;
use crate::identity::NodeId;

/// Queued frames a writer batches into one write, at most.
const BATCH_BYTES: usize = 64 * 1024;
/// Frames this large are handed to quinn as they are, without a copy.
const DIRECT_BYTES: usize = 16 * 1024;

pub(crate) fn spawn(
    tracker: &TaskTracker,
    conn: quinn::Connection,
    peer: NodeId,
    conn_id: u64,
    frames: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    manager: mpsc::Sender<Cmd>,
) {
    tracker.spawn(write_loop(conn.clone(), frames));
    tracker.spawn(read_loop(conn.clone(), peer, shared.clone()));
    tracker.spawn(serve_requests(conn.clone(), peer, shared, tracker.clone()));
    tracker.spawn(async move {
        let error = conn.closed().await;
        // The manager is gone only when the node is shutting down.
        let _ = manager.send(Cmd::Closed { peer, conn_id, error }).await;
    });
}

/// Writes queued frames to our long-lived stream. Frames are already encoded (a
/// broadcast encodes once for all peers). Whatever queued while the previous write
/// was in flight is copied into one reusable buffer and written at once: quinn
/// pays per write call and per chunk, and a memcpy of small frames costs far less
/// than either. Frames of [`DIRECT_BYTES`] or more skip the copy.
async fn write_loop(conn: quinn::Connection, mut frames: mpsc::Receiver<Bytes>) {
    let Ok(mut send) = conn.open_uni().await else { return };
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 4096);
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            if frame.len() >= DIRECT_BYTES {
                if !buf.is_empty() && send.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
                if send.write_chunk(frame).await.is_err() {
                    return;
                }
            } else {
                buf.extend_from_slice(&frame);
            }
            if buf.len() >= BATCH_BYTES {
                break;
            }
            next = frames.try_recv().ok();
        }
        if !buf.is_empty() {
            if send.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    }
    // The queue closed: the connection was replaced or the node is stopping.
    let _ = send.finish();
}

async fn read_loop(conn: quinn::Connection, peer: NodeId, shared: Arc<Shared>) {
    let Ok(recv) = conn.accept_uni().await else {
        return;
    };
    let mut reader = FrameReader::new(recv);
    let mut counted = 0;
    loop {
        match reader.next::<Message>().await {
            Ok(Some(msg)) => {
                shared.counters.frames_received.fetch_add(1, Ordering::Relaxed);
                shared.counters.bytes_received.fetch_add(reader.consumed() - counted, Ordering::Relaxed);
                counted = reader.consumed();
                if shared.inbound.send((peer, msg)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                if conn.close_reason().is_none() {
                    reject_frame(&conn, peer, &e, &shared);
                }
                return;
            }
        }
    }
}

/// One log line and a typed close for a peer that sent a bad frame.
fn reject_frame(conn: &quinn::Connection, peer: NodeId, e: &FrameError, shared: &Shared) {
    shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(peer = %peer.short(), "bad frame from peer: {e}; closing the connection");
    conn.close(e.close_code().into(), e.to_string().as_bytes());
}

async fn serve_requests(conn: quinn::Connection, peer: NodeId, shared: Arc<Shared>, tracker: TaskTracker) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tracker.spawn(serve_one(conn.clone(), peer, send, recv, shared.clone()));
    }
}

async fn serve_one(
    conn: quinn::Connection,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
) {
    let timeout = shared.request_timeout;
    // The whole request is abandoned on timeout, stream included, so cancelling the
    // read here cannot tear a frame that anyone reads later.
    let bytes = match tokio::time::timeout(timeout, recv.read_to_end(MAX_FRAME + 4)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            let e = FrameError::TooLarge { kind: 0, len: MAX_FRAME + 1, limit: MAX_FRAME };
            reject_frame(&conn, peer, &e, &shared);
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            let _ = send.reset(close::REQUEST_TIMEOUT.into());
            return;
        }
    };
    let request = match codec::decode_single::<Message>(&bytes) {
        Ok(m) => m,
        Err(e) => {
            reject_frame(&conn, peer, &e, &shared);
            return;
        }
    };
    let (reply, answer) = oneshot::channel();
    if shared.requests.send(InboundRequest { from: peer, message: request, reply }).await.is_err() {
        return;
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Err(refusal))) => {
            let _ = send.reset(refusal.code().into());
        }
        Ok(Ok(Ok(response))) => {
            let frame = codec::encode(&response);
            if send.write_all(&frame).await.is_ok() {
                let _ = send.finish();
            }
        }
        _ => {
            let _ = send.reset(close::REQUEST_TIMEOUT.into());
        }
    }
}

/// Sends one request on a stream of its own and reads the response.
pub(crate) async fn request(
    conn: &quinn::Connection,
    frame: Bytes,
    timeout: Duration,
) -> Result<Message, super::RequestError> {
    use super::RequestError;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| RequestError::Connection(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| RequestError::Stream(e.to_string()))?;
        send.finish().map_err(|e| RequestError::Stream(e.to_string()))?;
        let bytes = recv.read_to_end(MAX_FRAME + 4).await.map_err(|e| RequestError::Stream(e.to_string()))?;
        codec::decode_single::<Message>(&bytes).map_err(RequestError::Frame)
    };
    // Dropping the exchange on timeout drops both stream halves with it.
    tokio::time::timeout(timeout, exchange).await.map_err(|_| RequestError::Timeout(timeout))?
}
