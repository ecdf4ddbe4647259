//! What this node has queued for one peer, bounded in bytes per class of traffic.
//!
//! Sending never waits on a peer: [`Outbox::push`] decides at once, by the class's
//! policy, what stays queued, and the peer's writer task drains the queues in
//! priority order (consensus, then tips, then transactions). A slow reader costs
//! itself, never the node:
//!
//! * **Consensus** (proposals, votes) is *superseded*: a message for a later epoch
//!   (the chain uses the height) drops every queued message of an earlier one, which
//!   the peer can no longer use (it catches up by sync). Within the byte budget
//!   nothing else is dropped; past it, the oldest go first. A single message larger
//!   than the budget is still queued alone, so a full block always gets through.
//! * **Tips** are superseded the same way, with a small budget.
//! * **Transactions** are dropped when the budget is full, and counted.
//!
//! Consensus messages and tips are few and may be dropped from the middle of their
//! queue, so they wait as the frames they were encoded to (one encoding shared by
//! every peer of a broadcast). Transactions are many, small and only ever leave
//! from the front, so a small one is copied at once into the peer's *encode
//! buffer*: a run of contiguous frames that the writer hands to QUIC as one chunk,
//! without another copy. Queueing a transaction is a memcpy under the lock, with no
//! allocation per frame and no reference count shared between the sending and the
//! writing thread; the buffer's memory is reused once QUIC releases what it sent.
//! A frame of [`DIRECT_BYTES`] or more is queued as it is, without a copy.
//!
//! The outbox is a plain data structure; the writer task and the slow-peer deadline
//! live in [`super::peer`].

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Frames this large are queued and written as they are, without a copy.
pub(crate) const DIRECT_BYTES: usize = 16 * 1024;
/// The encode buffer grows by this much when it is full.
const RUN_BYTES: usize = 64 * 1024;

/// A class of traffic on the gossip stream, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Consensus,
    Tip,
    Tx,
}

impl Class {
    pub(crate) const ALL: [Class; 3] = [Class::Consensus, Class::Tip, Class::Tx];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Class::Consensus => "consensus",
            Class::Tip => "tip",
            Class::Tx => "tx",
        }
    }

    /// The class's outboxes as a `masternode_held_bytes{what}` label.
    pub(crate) fn held_label(self) -> &'static str {
        match self {
            Class::Consensus => "outbox_consensus",
            Class::Tip => "outbox_tip",
            Class::Tx => "outbox_tx",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One encoded frame (length prefix included) ready to queue for peers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub frame: Bytes,
    pub class: Class,
    /// For superseding classes: queued frames of a lower epoch are dropped when this
    /// one is queued. The chain uses the height.
    pub epoch: u64,
    /// The lowest wire version that carries this frame: peers connected at a
    /// lower one are not sent it ([`crate::net::Peers::send`]).
    pub wire: u16,
}

/// Byte budgets per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    pub consensus: usize,
    pub tip: usize,
    pub tx: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits { consensus: 8 * 1024 * 1024, tip: 16 * 1024, tx: 4 * 1024 * 1024 }
    }
}

impl OutboxLimits {
    fn of(&self, class: Class) -> usize {
        match class {
            Class::Consensus => self.consensus,
            Class::Tip => self.tip,
            Class::Tx => self.tx,
        }
    }
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pushed {
    /// The frame itself was queued.
    pub queued: bool,
    /// Frames dropped to make room or because they were superseded (the pushed
    /// frame included, when it was not queued).
    pub dropped: usize,
    /// Of `dropped`, the ones dropped because the budget was full (not superseded).
    pub overflowed: usize,
}

#[derive(Debug)]
struct Entry {
    frame: Bytes,
    epoch: u64,
}

/// The transactions' queue: frames in order, the small ones copied into runs of
/// one buffer (see the module docs).
#[derive(Debug, Default)]
struct Runs {
    /// Sealed pieces, oldest first: runs of small frames, or one large frame each.
    sealed: VecDeque<Bytes>,
    /// The run being appended to; it comes after everything in `sealed`.
    tail: BytesMut,
}

impl Runs {
    fn push(&mut self, frame: &Bytes) {
        if frame.len() >= DIRECT_BYTES {
            self.seal();
            self.sealed.push_back(frame.clone());
            return;
        }
        if self.tail.capacity() - self.tail.len() < frame.len() {
            self.seal();
            // Reclaims the buffer when QUIC released every run taken from it,
            // else starts a new one.
            self.tail.reserve(RUN_BYTES);
        }
        self.tail.extend_from_slice(frame);
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.sealed.push_back(self.tail.split().freeze());
        }
    }

    fn front_len(&self) -> usize {
        self.sealed.front().map_or(self.tail.len(), Bytes::len)
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        match self.sealed.pop_front() {
            Some(b) => Some(b),
            None if !self.tail.is_empty() => Some(self.tail.split().freeze()),
            None => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.tail.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Outbox {
    limits: OutboxLimits,
    /// Consensus and tips, one entry per frame.
    queues: [VecDeque<Entry>; 2],
    txs: Runs,
    bytes: [usize; 3],
    /// Frames and bytes queued since the writer last took the count (see
    /// [`Outbox::take_queued`]).
    queued: Queued,
}

/// Frames and bytes queued into an outbox, counted under its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Queued {
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
}

impl Outbox {
    pub(crate) fn new(limits: OutboxLimits) -> Self {
        Outbox { limits, queues: Default::default(), txs: Runs::default(), bytes: [0; 3], queued: Queued::default() }
    }

    #[inline]
    pub(crate) fn push(&mut self, out: &Outgoing) -> Pushed {
        let c = out.class.index();
        let limit = self.limits.of(out.class);
        let len = out.frame.len();
        let mut result = Pushed::default();
        if out.class == Class::Tx {
            // Dropped when full; a frame larger than the whole budget still
            // travels, alone.
            if self.bytes[c] + len > limit && self.bytes[c] > 0 {
                result.dropped = 1;
                result.overflowed = 1;
                return result;
            }
            self.txs.push(&out.frame);
            self.bytes[c] += len;
            self.count(len);
            result.queued = true;
            return result;
        }
        let queue = &mut self.queues[c];
        let before = queue.len();
        let mut freed = 0;
        queue.retain(|e| {
            let keep = e.epoch >= out.epoch;
            if !keep {
                freed += e.frame.len();
            }
            keep
        });
        self.bytes[c] -= freed;
        result.dropped += before - queue.len();
        // Past the budget the oldest go first; a frame larger than the whole
        // budget still travels, alone.
        while self.bytes[c] + len > limit {
            let Some(old) = queue.pop_front() else { break };
            self.bytes[c] -= old.frame.len();
            result.dropped += 1;
            result.overflowed += 1;
        }
        queue.push_back(Entry { frame: out.frame.clone(), epoch: out.epoch });
        self.bytes[c] += len;
        self.count(len);
        result.queued = true;
        result
    }

    fn count(&mut self, len: usize) {
        self.queued.frames += 1;
        self.queued.bytes += len as u64;
    }

    /// The frames and bytes queued since the last call: the writer adds them
    /// to the transport's counters once per batch, so that queueing a frame
    /// costs no atomic operation on a counter every sender shares.
    pub(crate) fn take_queued(&mut self) -> Queued {
        std::mem::take(&mut self.queued)
    }

    /// Moves queued bytes into `batch` in priority order until about `max_bytes`
    /// are taken (at least one piece when anything is queued): consensus frames
    /// and tips one by one, transactions as runs of whole frames. Returns the
    /// bytes taken.
    pub(crate) fn pop_batch(&mut self, max_bytes: usize, batch: &mut Vec<Bytes>) -> usize {
        let mut taken = 0;
        for c in 0..self.queues.len() {
            while let Some(e) = self.queues[c].front() {
                if taken > 0 && taken + e.frame.len() > max_bytes {
                    return taken;
                }
                let Some(e) = self.queues[c].pop_front() else { break };
                self.bytes[c] -= e.frame.len();
                taken += e.frame.len();
                batch.push(e.frame);
            }
        }
        let c = Class::Tx.index();
        while !self.txs.is_empty() {
            if taken > 0 && taken + self.txs.front_len() > max_bytes {
                return taken;
            }
            let Some(piece) = self.txs.pop_front() else { break };
            self.bytes[c] -= piece.len();
            taken += piece.len();
            batch.push(piece);
        }
        taken
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty) && self.txs.is_empty()
    }

    /// Queued bytes of one class.
    pub(crate) fn bytes(&self, class: Class) -> usize {
        self.bytes[class.index()]
    }

    pub(crate) fn total_bytes(&self) -> usize {
        self.bytes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `len` bytes in all (prefix included), its body filled with `tag`.
    fn out(class: Class, epoch: u64, len: usize, tag: u8) -> Outgoing {
        let mut frame = ((len - 4) as u32).to_be_bytes().to_vec();
        frame.resize(len, tag);
        Outgoing { frame: Bytes::from(frame), class, epoch, wire: 3 }
    }

    /// The tags of the frames in `pieces`, in order.
    fn tags(pieces: &[Bytes]) -> Vec<u8> {
        let mut tags = Vec::new();
        for piece in pieces {
            let mut at = 0;
            while at < piece.len() {
                let len = u32::from_be_bytes(piece[at..at + 4].try_into().unwrap()) as usize;
                tags.push(piece[at + 4]);
                at += 4 + len;
            }
            assert_eq!(at, piece.len(), "pieces hold whole frames");
        }
        tags
    }

    fn limits() -> OutboxLimits {
        OutboxLimits { consensus: 1000, tip: 100, tx: 1000 }
    }

    fn drain(o: &mut Outbox) -> Vec<u8> {
        let mut batch = Vec::new();
        while o.pop_batch(usize::MAX, &mut batch) > 0 {}
        tags(&batch)
    }

    #[test]
    fn consensus_goes_ahead_of_tips_and_txs() {
        let mut o = Outbox::new(limits());
        o.push(&out(Class::Tx, 0, 10, 1));
        o.push(&out(Class::Tip, 5, 10, 2));
        o.push(&out(Class::Consensus, 5, 10, 3));
        o.push(&out(Class::Tx, 0, 10, 4));
        assert_eq!(drain(&mut o), vec![3, 2, 1, 4]);
        assert!(o.is_empty());
        assert_eq!(o.take_queued(), Queued { frames: 4, bytes: 40 });
        assert_eq!(o.take_queued(), Queued::default());
    }

    #[test]
    fn a_later_height_supersedes_what_is_queued_for_earlier_ones() {
        let mut o = Outbox::new(limits());
        o.push(&out(Class::Consensus, 7, 100, 1));
        o.push(&out(Class::Consensus, 7, 100, 2));
        let p = o.push(&out(Class::Consensus, 8, 100, 3));
        assert_eq!(p, Pushed { queued: true, dropped: 2, overflowed: 0 });
        assert_eq!(o.bytes(Class::Consensus), 100);
        // A late message for an old height does not evict the newer ones.
        o.push(&out(Class::Consensus, 7, 100, 4));
        assert_eq!(drain(&mut o), vec![3, 4]);
    }

    #[test]
    fn consensus_over_budget_drops_the_oldest_and_never_grows_past_it() {
        let mut o = Outbox::new(limits());
        for i in 0..25 {
            o.push(&out(Class::Consensus, 9, 100, i));
            assert!(o.bytes(Class::Consensus) <= 1000);
        }
        assert_eq!(drain(&mut o), (15..25).collect::<Vec<u8>>());
    }

    #[test]
    fn a_frame_larger_than_the_budget_travels_alone() {
        let mut o = Outbox::new(limits());
        o.push(&out(Class::Consensus, 1, 100, 1));
        let p = o.push(&out(Class::Consensus, 1, 5000, 2));
        assert!(p.queued);
        assert_eq!(p.overflowed, 1);
        assert_eq!(drain(&mut o), vec![2]);
    }

    #[test]
    fn txs_are_dropped_when_the_budget_is_full() {
        let mut o = Outbox::new(limits());
        for i in 0..10 {
            assert!(o.push(&out(Class::Tx, 0, 100, i)).queued);
        }
        let p = o.push(&out(Class::Tx, 0, 100, 10));
        assert_eq!(p, Pushed { queued: false, dropped: 1, overflowed: 1 });
        assert_eq!(o.bytes(Class::Tx), 1000);
        assert_eq!(o.take_queued(), Queued { frames: 10, bytes: 1000 }, "a dropped frame was not queued");
        assert_eq!(drain(&mut o), (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn only_the_latest_tip_waits() {
        let mut o = Outbox::new(limits());
        for h in 1..=50 {
            o.push(&out(Class::Tip, h, 40, h as u8));
        }
        assert_eq!(drain(&mut o), vec![50]);
    }

    #[test]
    fn a_batch_stops_near_its_byte_budget_but_takes_at_least_one_frame() {
        let mut o = Outbox::new(limits());
        o.push(&out(Class::Consensus, 1, 600, 1));
        o.push(&out(Class::Consensus, 1, 300, 2));
        let mut batch = Vec::new();
        assert_eq!(o.pop_batch(100, &mut batch), 600);
        assert_eq!(o.pop_batch(1000, &mut batch), 300);
        assert_eq!(o.pop_batch(1000, &mut batch), 0);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn small_txs_leave_as_one_run_in_order_and_a_large_one_without_a_copy() {
        let mut o = Outbox::new(OutboxLimits { consensus: 1000, tip: 100, tx: 1 << 20 });
        for i in 0..10 {
            o.push(&out(Class::Tx, 0, 100, i));
        }
        let large = out(Class::Tx, 0, DIRECT_BYTES, 10);
        o.push(&large);
        o.push(&out(Class::Tx, 0, 100, 11));
        let mut batch = Vec::new();
        while o.pop_batch(usize::MAX, &mut batch) > 0 {}
        assert_eq!(batch.len(), 3, "a run, the large frame, a run");
        assert_eq!(batch[1].as_ptr(), large.frame.as_ptr(), "the large frame was not copied");
        assert_eq!(tags(&batch), (0..12).collect::<Vec<u8>>());
        assert_eq!(o.total_bytes(), 0);
    }

    #[test]
    fn runs_stop_near_the_batch_budget() {
        let mut o = Outbox::new(OutboxLimits { consensus: 1000, tip: 100, tx: 1 << 20 });
        // Three runs' worth of small frames.
        for i in 0..(3 * RUN_BYTES / 1000) {
            o.push(&out(Class::Tx, 0, 1000, i as u8));
        }
        let mut batch = Vec::new();
        let taken = o.pop_batch(RUN_BYTES, &mut batch);
        assert!(taken <= RUN_BYTES && taken > RUN_BYTES / 2, "{taken}");
        assert_eq!(o.total_bytes(), 3 * RUN_BYTES / 1000 * 1000 - taken);
    }
}
