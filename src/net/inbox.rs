//! Messages read from peers, waiting for the node: bounded in bytes per peer and
//! served round-robin between peers.
//!
//! Each connection's reader pushes the frame bodies it reads; while that peer has
//! `budget` bytes waiting, its reader waits, stops reading, and QUIC flow control
//! holds the peer back. The consumer takes batches, one message per peer in turn, so
//! a flooding member delays only itself: an honest vote waits behind at most one
//! message of each other peer, never behind a flood. Memory is bounded by
//! `budget` times the number of peers (plus one frame per peer that is larger
//! than the budget and travels alone).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::identity::NodeId;

/// A frame body from a peer (its first byte is the kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub from: NodeId,
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct PeerQueue {
    items: VecDeque<Bytes>,
    bytes: usize,
    room: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<NodeId, PeerQueue>,
    /// Peers with something queued, in serving order.
    order: VecDeque<NodeId>,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    ready: Notify,
    budget: usize,
    queued_bytes: AtomicU64,
}

/// The inbox was closed: the node is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

impl Inbox {
    pub(crate) fn new(budget: usize) -> Self {
        Inbox { state: Mutex::default(), ready: Notify::new(), budget, queued_bytes: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `body` from `from`, waiting while that peer is over its budget.
    #[cfg(test)]
    pub(crate) async fn push(&self, from: NodeId, body: Bytes) -> Result<(), Closed> {
        self.room(from, body.len()).await?;
        self.put(from, body);
        Ok(())
    }

    /// Queues `body` from `from` now; the reader asked for [`Inbox::room`] first.
    pub(crate) fn put(&self, from: NodeId, body: Bytes) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let q = s.queues.entry(from).or_default();
        let was_empty = q.items.is_empty();
        q.bytes += body.len();
        self.queued_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        q.items.push_back(body);
        if was_empty {
            s.order.push_back(from);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Waits until `from` has room for a body of `len` bytes (at once when its
    /// queue is empty): the reader calls it with a frame's length from the header,
    /// before it buffers the body, so a peer has at most one frame over its budget
    /// in memory, queued or being read.
    pub(crate) async fn room(&self, from: NodeId, len: usize) -> Result<(), Closed> {
        loop {
            let room = {
                let mut s = self.lock();
                if s.closed {
                    return Err(Closed);
                }
                s.queues.entry(from).or_default().room.clone()
            };
            // Registered before the check, so a wake-up between the check and the
            // await is not lost; every waiter is woken (a replaced connection's
            // reader may wait beside the new one's).
            let notified = room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.closed {
                    return Err(Closed);
                }
                let q = s.queues.entry(from).or_default();
                if q.bytes == 0 || q.bytes + len <= self.budget {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Moves up to `max` messages into `out`, one per peer in turn. Waits while
    /// nothing is queued; `Err(Closed)` once closed and drained.
    pub(crate) async fn recv_batch(&self, max: usize, out: &mut Vec<Delivery>) -> Result<usize, Closed> {
        loop {
            {
                let mut s = self.lock();
                let taken = Self::take(&mut s, max, out, &self.queued_bytes);
                if taken > 0 {
                    return Ok(taken);
                }
                if s.closed {
                    return Err(Closed);
                }
            }
            self.ready.notified().await;
        }
    }

    fn take(s: &mut State, max: usize, out: &mut Vec<Delivery>, queued: &AtomicU64) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(from) = s.order.pop_front() else { break };
            let Some(q) = s.queues.get_mut(&from) else { continue };
            let Some(body) = q.items.pop_front() else { continue };
            q.bytes -= body.len();
            queued.fetch_sub(body.len() as u64, Ordering::Relaxed);
            // Room was freed: the peer's readers may go on.
            q.room.notify_waiters();
            if !q.items.is_empty() {
                s.order.push_back(from);
            }
            out.push(Delivery { from, body });
            taken += 1;
        }
        taken
    }

    /// Bytes waiting in the inbox, all peers.
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Wakes every waiter with `Closed` (after the queue drains, for the consumer).
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for q in s.queues.values() {
            q.room.notify_waiters();
        }
        drop(s);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[tokio::test]
    async fn peers_are_served_in_turn_whatever_they_queued() {
        let inbox = Inbox::new(1 << 20);
        for i in 0..100u8 {
            inbox.push(id(1), Bytes::from(vec![1, i])).await.unwrap();
        }
        inbox.push(id(2), Bytes::from_static(&[2, 0])).await.unwrap();
        inbox.push(id(3), Bytes::from_static(&[3, 0])).await.unwrap();
        let mut out = Vec::new();
        inbox.recv_batch(3, &mut out).await.unwrap();
        let from: Vec<NodeId> = out.iter().map(|d| d.from).collect();
        assert_eq!(from, vec![id(1), id(2), id(3)], "the flood's second message waits behind the others' first");
    }

    #[tokio::test]
    async fn a_peer_over_its_budget_waits_and_others_do_not() {
        let inbox = Arc::new(Inbox::new(1000));
        inbox.push(id(1), Bytes::from(vec![0; 600])).await.unwrap();
        inbox.push(id(1), Bytes::from(vec![0; 400])).await.unwrap();
        let blocked = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.push(id(1), Bytes::from(vec![0; 10])).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "peer 1 is at its budget: its reader waits");
        tokio::time::timeout(Duration::from_secs(1), inbox.push(id(2), Bytes::from(vec![0; 900])))
            .await
            .expect("peer 2 is not held back by peer 1")
            .unwrap();
        assert_eq!(inbox.queued_bytes(), 1900);
        let mut out = Vec::new();
        inbox.recv_batch(1, &mut out).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), blocked).await.expect("room freed").unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_is_taken_alone() {
        let inbox = Inbox::new(100);
        inbox.push(id(1), Bytes::from(vec![0; 5000])).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(10, &mut out).await.unwrap(), 1);
        assert_eq!(inbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn close_ends_the_consumer_after_the_queue_drains() {
        let inbox = Inbox::new(100);
        inbox.push(id(1), Bytes::from_static(&[1])).await.unwrap();
        inbox.close();
        assert_eq!(inbox.push(id(1), Bytes::from_static(&[1])).await, Err(Closed));
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(10, &mut out).await, Ok(1));
        assert_eq!(inbox.recv_batch(10, &mut out).await, Err(Closed));
    }
}
