//! Each peer's answer slots: how many of its requests are served at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::identity::NodeId;

/// Requests of one peer served at once, at most, over all its connections. An
/// answer can be far larger than its request (a 32-byte `GetBlocks` draws up
/// to a 4 MiB frame), and a peer that never reads its answers would have us
/// hold one per request stream until the request timeout: 16 streams, 64 MiB.
/// A request takes one of its peer's slots before a byte of it is read, and
/// holds it until its answer is written (or the request timeout); past this
/// bound a request waits unread, its body in QUIC's flow control (the peer's
/// stream window, which the peer fills at its own cost). So one peer makes us
/// hold at most this many requests and answers, `ANSWERS_PER_PEER * MAX_FRAME`
/// bytes of answers. A syncing node asks each peer one batch at a time, and a
/// compact proposal's fetch is one request, so an honest peer never waits here
/// for long.
pub const ANSWERS_PER_PEER: usize = 4;

/// Each peer's answer slots ([`ANSWERS_PER_PEER`]), shared by all its
/// connections (a replaced connection's requests may still be served beside
/// the new one's); a peer's entry goes with its last connection.
#[derive(Default)]
pub(crate) struct AnswerSlots(Mutex<HashMap<NodeId, (Arc<Semaphore>, usize)>>);

/// One connection's hold on its peer's answer slots.
pub(crate) struct AnswerHold<'a> {
    slots: &'a AnswerSlots,
    peer: NodeId,
    pub(crate) semaphore: Arc<Semaphore>,
}

impl AnswerSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (Arc<Semaphore>, usize)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slots of `peer`, for a connection of it while the hold lives.
    pub(crate) fn enter(&self, peer: NodeId) -> AnswerHold<'_> {
        let mut map = self.lock();
        let (semaphore, connections) =
            map.entry(peer).or_insert_with(|| (Arc::new(Semaphore::new(ANSWERS_PER_PEER)), 0));
        *connections += 1;
        AnswerHold { slots: self, peer, semaphore: semaphore.clone() }
    }

    /// Peers with an entry (tests).
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for AnswerHold<'_> {
    fn drop(&mut self) {
        let mut map = self.slots.lock();
        if let Some((_, connections)) = map.get_mut(&self.peer) {
            *connections -= 1;
            if *connections == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's connections share its slots: a second connection (a
    /// replacement beside the old one) gets no slots of its own, and the entry
    /// goes when the last connection does.
    #[test]
    fn a_peer_has_one_set_of_answer_slots_over_its_connections() {
        let slots = AnswerSlots::default();
        let first = slots.enter(NodeId([1; 32]));
        let second = slots.enter(NodeId([1; 32]));
        let other = slots.enter(NodeId([2; 32]));
        assert!(Arc::ptr_eq(&first.semaphore, &second.semaphore));
        let held: Vec<_> =
            (0..ANSWERS_PER_PEER).map(|_| first.semaphore.clone().try_acquire_owned().unwrap()).collect();
        assert!(second.semaphore.try_acquire().is_err(), "the second connection waits for the first's slots");
        assert!(other.semaphore.try_acquire().is_ok(), "another peer has slots of its own");
        assert_eq!(slots.peers(), 2);
        drop(first);
        assert_eq!(slots.peers(), 2, "kept while a connection of the peer lives");
        drop((second, held));
        assert_eq!(slots.peers(), 1);
        drop(other);
        assert_eq!(slots.peers(), 0);
    }
}
