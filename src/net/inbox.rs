//! Messages read from peers, waiting for the node: bounded in bytes per peer and
//! served round-robin between peers.
//!
//! Each connection's reader pushes *runs*: as many whole frames as one read of its
//! stream brought, as one piece of its read buffer (no copy, no allocation and no
//! wake-up per frame). While that peer has `budget` bytes waiting, its reader
//! waits, stops reading, and QUIC flow control holds the peer back. The consumer
//! takes batches, one message per peer in turn, each a slice of its run, so a
//! flooding member delays only itself: an honest vote waits behind at most one
//! message of each other peer, never behind a flood. Memory is bounded by
//! `budget` times the number of peers, plus each reader's buffer (one run read,
//! or one frame larger than the budget that travels alone).
//!
//! A delivered body shares its run's buffer until it is dropped; the node decodes
//! a body and drops it at once, so a run's buffer lives about as long as its
//! frames wait here.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::sync::Notify;

use crate::identity::NodeId;

/// A frame body from a peer (its first byte is the kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub from: NodeId,
    pub body: Bytes,
}

/// A peer's place in the inbox, for its readers: found once per connection, so
/// pushing a run costs no lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(usize);

#[derive(Debug)]
struct PeerQueue {
    id: NodeId,
    /// Runs of whole frames (length prefixes included), oldest first; the front
    /// one is partly taken.
    runs: VecDeque<Bytes>,
    /// Frame bytes queued (prefixes included).
    bytes: usize,
    /// A reader waits on `room`: the consumer wakes it after it took something.
    waiting: bool,
    room: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<PeerQueue>,
    index: HashMap<NodeId, usize>,
    /// Peers with something queued, in serving order.
    order: VecDeque<usize>,
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

    /// The slot of `from`, shared by all its connections' readers (a replaced
    /// connection's reader may still run beside the new one's), so they share
    /// one budget.
    pub(crate) fn slot(&self, from: NodeId) -> Slot {
        let mut s = self.lock();
        if let Some(&i) = s.index.get(&from) {
            return Slot(i);
        }
        let i = s.slots.len();
        s.slots.push(PeerQueue {
            id: from,
            runs: VecDeque::new(),
            bytes: 0,
            waiting: false,
            room: Arc::new(Notify::new()),
        });
        s.index.insert(from, i);
        Slot(i)
    }

    /// Queues one body from `from`, waiting while that peer is over its budget.
    #[cfg(test)]
    pub(crate) async fn push(&self, from: NodeId, body: Bytes) -> Result<(), Closed> {
        let slot = self.slot(from);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.room(slot, frame.len()).await?;
        self.put(slot, Bytes::from(frame));
        Ok(())
    }

    /// Queues a run of whole frames (length prefixes included, headers checked)
    /// now; the reader asked for [`Inbox::room`] first.
    pub(crate) fn put(&self, slot: Slot, run: Bytes) {
        let len = run.len();
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let q = &mut s.slots[slot.0];
        let was_empty = q.runs.is_empty();
        q.bytes += len;
        q.runs.push_back(run);
        if was_empty {
            s.order.push_back(slot.0);
        }
        drop(s);
        self.queued_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.ready.notify_one();
    }

    /// Waits until the peer of `slot` has room for `len` more bytes (at once when
    /// its queue is empty): the reader calls it before it reads on, with the size
    /// of the frame it is reading when its header is known, so a peer has at most
    /// one frame over its budget in memory, queued or being read.
    pub(crate) async fn room(&self, slot: Slot, len: usize) -> Result<(), Closed> {
        loop {
            let room = {
                let mut s = self.lock();
                if s.closed {
                    return Err(Closed);
                }
                let q = &mut s.slots[slot.0];
                if q.bytes == 0 || q.bytes + len <= self.budget {
                    return Ok(());
                }
                q.room.clone()
            };
            // Registered before the flag is set and the check repeated, so a
            // wake-up between the check and the await is not lost; every waiter
            // is woken.
            let notified = room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.closed {
                    return Err(Closed);
                }
                let q = &mut s.slots[slot.0];
                if q.bytes == 0 || q.bytes + len <= self.budget {
                    return Ok(());
                }
                q.waiting = true;
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
                let (taken, bytes) = Self::take(&mut s, max, out);
                if taken > 0 {
                    drop(s);
                    self.queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
                    return Ok(taken);
                }
                if s.closed {
                    return Err(Closed);
                }
            }
            self.ready.notified().await;
        }
    }

    /// Takes up to `max` messages, one per peer in turn; the messages and their
    /// bytes. Wakes the readers waiting for the room it made, once each.
    fn take(s: &mut State, max: usize, out: &mut Vec<Delivery>) -> (usize, usize) {
        let mut taken = 0;
        let mut bytes = 0;
        while taken < max {
            let Some(i) = s.order.pop_front() else { break };
            let q = &mut s.slots[i];
            let Some(run) = q.runs.front_mut() else { continue };
            // The reader checked every header of a run before it queued it.
            let len = u32::from_be_bytes([run[0], run[1], run[2], run[3]]) as usize;
            let body = if run.len() == 4 + len {
                // The run's last frame: the run itself becomes the body.
                let mut last = q.runs.pop_front().unwrap_or_default();
                last.advance(4);
                last
            } else {
                let body = run.slice(4..4 + len);
                run.advance(4 + len);
                body
            };
            q.bytes -= 4 + len;
            bytes += 4 + len;
            if q.waiting {
                // Room was freed: the peer's readers may go on.
                q.waiting = false;
                q.room.notify_waiters();
            }
            let from = q.id;
            if !q.runs.is_empty() {
                s.order.push_back(i);
            }
            out.push(Delivery { from, body });
            taken += 1;
        }
        (taken, bytes)
    }

    /// Bytes waiting in the inbox, all peers (length prefixes included).
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Wakes every waiter with `Closed` (after the queue drains, for the consumer).
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for q in &s.slots {
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
    async fn a_run_is_delivered_frame_by_frame_in_turn_with_other_peers() {
        let inbox = Inbox::new(1 << 20);
        let mut run = Vec::new();
        for i in 0..3u8 {
            run.extend_from_slice(&[0, 0, 0, 2, 1, i]);
        }
        let (a, b) = (inbox.slot(id(1)), inbox.slot(id(2)));
        inbox.put(a, Bytes::from(run));
        inbox.put(b, Bytes::from_static(&[0, 0, 0, 1, 2]));
        assert_eq!(inbox.queued_bytes(), 23);
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(10, &mut out).await, Ok(4));
        let got: Vec<(NodeId, &[u8])> = out.iter().map(|d| (d.from, &d.body[..])).collect();
        assert_eq!(got, vec![(id(1), &[1, 0][..]), (id(2), &[2][..]), (id(1), &[1, 1][..]), (id(1), &[1, 2][..])]);
        assert_eq!(inbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_peer_over_its_budget_waits_and_others_do_not() {
        let inbox = Arc::new(Inbox::new(1000));
        inbox.push(id(1), Bytes::from(vec![0; 596])).await.unwrap();
        inbox.push(id(1), Bytes::from(vec![0; 396])).await.unwrap();
        let blocked = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.push(id(1), Bytes::from(vec![0; 10])).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "peer 1 is at its budget: its reader waits");
        tokio::time::timeout(Duration::from_secs(1), inbox.push(id(2), Bytes::from(vec![0; 896])))
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
        assert_eq!(out[0].body.len(), 5000);
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
