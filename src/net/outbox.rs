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
//! The outbox is a plain data structure; the writer task and the slow-peer deadline
//! live in [`super::peer`].

use std::collections::VecDeque;

use bytes::Bytes;

/// A class of traffic on the gossip stream, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Consensus,
    Tip,
    Tx,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Consensus, Class::Tip, Class::Tx];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Consensus => "consensus",
            Class::Tip => "tip",
            Class::Tx => "tx",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn supersedes(self) -> bool {
        matches!(self, Class::Consensus | Class::Tip)
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
pub struct Pushed {
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

#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    queues: [VecDeque<Entry>; 3],
    bytes: [usize; 3],
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Self {
        Outbox { limits, queues: Default::default(), bytes: [0; 3] }
    }

    pub fn push(&mut self, out: &Outgoing) -> Pushed {
        let c = out.class.index();
        let limit = self.limits.of(out.class);
        let len = out.frame.len();
        let mut result = Pushed::default();
        let queue = &mut self.queues[c];
        if out.class.supersedes() {
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
        } else if self.bytes[c] + len > limit && !queue.is_empty() {
            result.dropped = 1;
            result.overflowed = 1;
            return result;
        }
        queue.push_back(Entry { frame: out.frame.clone(), epoch: out.epoch });
        self.bytes[c] += len;
        result.queued = true;
        result
    }

    /// Moves frames into `batch` in priority order until about `max_bytes` are
    /// taken (at least one frame when any is queued). Returns the bytes taken.
    pub fn pop_batch(&mut self, max_bytes: usize, batch: &mut Vec<Bytes>) -> usize {
        let mut taken = 0;
        for c in 0..self.queues.len() {
            while let Some(e) = self.queues[c].front() {
                if taken > 0 && taken + e.frame.len() > max_bytes {
                    return taken;
                }
                let e = self.queues[c].pop_front().expect("front() was Some");
                self.bytes[c] -= e.frame.len();
                taken += e.frame.len();
                batch.push(e.frame);
            }
        }
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Queued bytes of one class.
    pub fn bytes(&self, class: Class) -> usize {
        self.bytes[class.index()]
    }

    pub fn total_bytes(&self) -> usize {
        self.bytes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(class: Class, epoch: u64, len: usize, tag: u8) -> Outgoing {
        Outgoing { frame: Bytes::from(vec![tag; len]), class, epoch }
    }

    fn limits() -> OutboxLimits {
        OutboxLimits { consensus: 1000, tip: 100, tx: 1000 }
    }

    fn drain(o: &mut Outbox) -> Vec<u8> {
        let mut batch = Vec::new();
        while o.pop_batch(usize::MAX, &mut batch) > 0 {}
        batch.iter().map(|f| f[0]).collect()
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
}
