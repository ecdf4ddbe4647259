//! Messages read from peers, waiting for the node: bounded in bytes per peer and
//! served fairly between peers, by cost.
//!
//! Each connection's reader pushes *runs*: as many whole frames as one read of its
//! stream brought, as one piece of its read buffer (no copy, no allocation and no
//! wake-up per frame). While that peer has `budget` bytes waiting, its reader
//! waits, stops reading, and QUIC flow control holds the peer back. Memory is
//! bounded by `budget` times the number of peers, plus each reader's buffer (one
//! run read, or one frame larger than the budget that travels alone).
//!
//! **Between peers**, deficit round robin over bytes: a peer's turn delivers one
//! frame, and a frame larger than [`QUANTUM`] waits for as many turns as it has
//! quanta (its peer's deficit grows by one quantum each turn it waits). So a
//! member sending 3 MiB frames gets a frame every 48 turns, while a peer with a
//! vote waiting gets it delivered at its next turn: an honest vote waits behind
//! at most one frame of each other peer, and behind a large one only once in as
//! many turns as that frame holds quanta. Counting frames alone (the one-frame
//! turn) bounds what per-message work (a signature check) a peer of small frames
//! can cost; counting bytes bounds what a peer of large ones can (decoding is
//! linear in the bytes, [`crate::codec::decode_seq`]).
//!
//! **Within a peer**, urgent kinds (the application's, [`super::Protocol`]'s
//! `urgent`: consensus) go ahead of the rest: the sender's outbox puts votes
//! ahead of transactions on the wire, and a peer's own transaction gossip must
//! not hold its votes back here either. A peer's queue is one sequence of runs
//! read by two cursors, one per lane, each skipping the other lane's frames, so
//! nothing is copied or split; a run is released once both cursors passed it,
//! and a peer's bytes (what its budget counts) run from the cursor furthest
//! behind to the end, so that pinned runs count too.
//!
//! A delivered body shares its run's buffer until it is dropped; the node decodes
//! a body and drops it at once, so a run's buffer lives about as long as its
//! frames wait here. [`Deliveries`] hands a batch out as slices of its runs,
//! with one reference count per run and batch instead of one per body (each
//! reference count is a locked operation on a counter the reader's thread
//! shares).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::identity::NodeId;

/// Bytes a peer's turn is worth (see the module's doc): a frame of up to this
/// size takes one turn, a larger one a turn per quantum.
pub(crate) const QUANTUM: usize = 64 * 1024;

/// A frame body from a peer (its first byte is the kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub from: NodeId,
    pub body: Bytes,
}

/// Messages taken from the inbox in one batch, as slices of the runs they were
/// read in: the batch holds each run it took from once, so a message costs no
/// reference count of its own. Clearing the batch (or taking the next one into
/// it after [`Deliveries::clear`]) releases the runs.
#[derive(Debug, Default)]
pub struct Deliveries {
    runs: Vec<Bytes>,
    items: Vec<Item>,
}

/// One message of a [`Deliveries`]: its peer and where its body is.
#[derive(Debug, Clone, Copy)]
struct Item {
    from: NodeId,
    run: u32,
    start: u32,
    end: u32,
}

impl Deliveries {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Forgets every message and releases the runs they were slices of.
    pub fn clear(&mut self) {
        self.items.clear();
        self.runs.clear();
    }

    /// The messages in the order they were taken: the peer and the body (kind
    /// byte first).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (NodeId, &[u8])> + '_ {
        self.items.iter().map(|i| (i.from, &self.runs[i.run as usize][i.start as usize..i.end as usize]))
    }

    /// Message `i`'s body as a `Bytes` of its own, for a consumer that keeps it
    /// past the batch (it shares the run's buffer and pins it as long as it lives).
    pub fn body(&self, i: usize) -> Option<Bytes> {
        let i = self.items.get(i)?;
        Some(self.runs[i.run as usize].slice(i.start as usize..i.end as usize))
    }
}

/// Where a consumer's batch takes frames to: a `Vec` of [`Delivery`] (a body
/// of its own each) or [`Deliveries`] (slices of the runs).
pub(crate) trait Sink {
    /// Takes the frame body at `body` of `run` from `from`. `lent` is the peer
    /// queue's note of the run it last lent this batch (`stamp`), so a run is
    /// referenced once per batch however many of its frames the batch takes.
    fn take(&mut self, from: NodeId, run: &Bytes, body: std::ops::Range<usize>, lent: &mut Lent, stamp: u64);
}

/// The run a peer queue last lent to a batch: the batch's stamp, the run's
/// identity (its address and length) and its index in the batch's runs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Lent {
    stamp: u64,
    ptr: usize,
    len: usize,
    index: u32,
}

impl Sink for Vec<Delivery> {
    fn take(&mut self, from: NodeId, run: &Bytes, body: std::ops::Range<usize>, _: &mut Lent, _: u64) {
        self.push(Delivery { from, body: run.slice(body) });
    }
}

impl Sink for Deliveries {
    fn take(&mut self, from: NodeId, run: &Bytes, body: std::ops::Range<usize>, lent: &mut Lent, stamp: u64) {
        let (ptr, len) = (run.as_ptr() as usize, run.len());
        // Batch stamps start at 1, so a queue's default note never matches.
        if lent.stamp != stamp || lent.ptr != ptr || lent.len != len {
            // Runs are at most a read buffer (or one frame under the frame
            // limit), far below 4 GiB; a batch holds at most `max` runs.
            *lent = Lent { stamp, ptr, len, index: self.runs.len() as u32 };
            self.runs.push(run.clone());
        }
        self.items.push(Item { from, run: lent.index, start: body.start as u32, end: body.end as u32 });
    }
}

/// A peer's place in the inbox, for its readers: found once per connection, so
/// pushing a run costs no lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(usize);

/// Which lanes a run's frames belong to, found once when it is queued: a
/// cursor skips a run without frames of its lane at once, and takes the next
/// frame of a run with only its lane's frames without looking at its kind, so
/// only a mixed run is looked at frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lanes {
    Urgent,
    Other,
    Mixed,
}

/// Whole frames as one read brought them, and which lanes they are for.
#[derive(Debug)]
struct Run {
    bytes: Bytes,
    lanes: Lanes,
}

/// Where one lane's next frame is in a peer's runs.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    /// Index of the run (in `PeerQueue::runs`) and offset in it of the lane's
    /// next frame; `run == runs.len()` when the lane has none.
    run: usize,
    at: usize,
    /// Frame bytes from here to the end of the queue, both lanes' frames.
    ahead: usize,
}

#[derive(Debug)]
struct PeerQueue {
    id: NodeId,
    /// Runs of whole frames (length prefixes included, headers checked), oldest
    /// first; the front one may be partly taken.
    runs: VecDeque<Run>,
    /// The urgent lane's cursor and the other lane's.
    urgent: Cursor,
    other: Cursor,
    /// Bytes this peer's turns have earned towards its next frame.
    deficit: usize,
    /// A reader waits on `room`: the consumer wakes it after it took something.
    waiting: bool,
    room: Arc<Notify>,
    /// The run this queue last lent to a consumer's batch ([`Sink`]).
    lent: Lent,
}

impl PeerQueue {
    /// Bytes the peer holds here: from the cursor furthest behind to the end.
    fn bytes(&self) -> usize {
        self.urgent.ahead.max(self.other.ahead)
    }

    /// Moves `c` to its lane's next frame at or after where it is.
    fn seek(runs: &VecDeque<Run>, c: &mut Cursor, urgent_lane: bool, urgent: &Kinds) {
        let (own, foreign) = if urgent_lane { (Lanes::Urgent, Lanes::Other) } else { (Lanes::Other, Lanes::Urgent) };
        while let Some(run) = runs.get(c.run) {
            let bytes = &run.bytes[..];
            if c.at < bytes.len() && run.lanes != foreign {
                if run.lanes == own {
                    return;
                }
                while c.at < bytes.len() {
                    if urgent[usize::from(bytes[c.at + 4])] == urgent_lane {
                        return;
                    }
                    let len = 4 + frame_len(bytes, c.at);
                    c.at += len;
                    c.ahead -= len;
                }
            }
            c.ahead -= bytes.len() - c.at;
            c.run += 1;
            c.at = 0;
        }
    }

    /// A turn worth `deficit` bytes: hands the next frame (urgent first) to
    /// `sink` if it fits, and releases the runs both cursors passed.
    fn pop_within(&mut self, deficit: usize, urgent: &Kinds, sink: &mut impl Sink, stamp: u64) -> Pop {
        let PeerQueue { id, runs, urgent: urgent_cursor, other, lent, .. } = self;
        let urgent_lane = urgent_cursor.run < runs.len();
        let (c, own) = if urgent_lane { (urgent_cursor, Lanes::Urgent) } else { (other, Lanes::Other) };
        let Some(run) = runs.get(c.run) else { return Pop::Empty };
        let len = 4 + frame_len(&run.bytes, c.at);
        if len > deficit {
            return Pop::Wait;
        }
        sink.take(*id, &run.bytes, c.at + 4..c.at + len, lent, stamp);
        c.at += len;
        c.ahead -= len;
        if c.at < run.bytes.len() && run.lanes == own {
            // The lane's next frame is the next one in this run.
            return Pop::Frame;
        }
        Self::seek(runs, c, urgent_lane, urgent);
        while self.urgent.run > 0 && self.other.run > 0 {
            self.runs.pop_front();
            self.urgent.run -= 1;
            self.other.run -= 1;
        }
        Pop::Frame
    }

    fn is_empty(&self) -> bool {
        self.bytes() == 0
    }
}

/// What a turn found in a peer's queue.
enum Pop {
    /// A frame went to the sink.
    Frame,
    /// The next frame is larger than the turns' deficit so far.
    Wait,
    Empty,
}

/// The body length of the frame at `at` in `run` (its header was checked).
fn frame_len(run: &[u8], at: usize) -> usize {
    match run.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]) as usize,
        // Runs hold whole frames: a cursor is at a frame's start or at the end.
        _ => unreachable!("a cursor points at a frame's header"),
    }
}

/// The application's urgent kinds as a table, looked up per frame without a call.
type Kinds = [bool; 256];

/// Which lanes the frames of `run` belong to.
fn lanes(run: &[u8], urgent: &Kinds) -> Lanes {
    let (mut at, mut some_urgent, mut some_other) = (0, false, false);
    while at + 4 < run.len() {
        if urgent[usize::from(run[at + 4])] {
            some_urgent = true;
        } else {
            some_other = true;
        }
        at += 4 + frame_len(run, at);
    }
    match (some_urgent, some_other) {
        (true, false) => Lanes::Urgent,
        (false, true) => Lanes::Other,
        _ => Lanes::Mixed,
    }
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<PeerQueue>,
    index: HashMap<NodeId, usize>,
    /// Peers with something queued, in serving order.
    order: VecDeque<usize>,
    /// All peers' bytes. It lives under the lock with the queues it sums, so
    /// no reader sees it between a change of a queue and its count (when it
    /// was counted beside the lock, a consumer could count a run out before
    /// its reader had counted it in, and the gauge wrapped below zero).
    queued: usize,
    /// Batches taken so far: each batch's stamp for [`Lent`].
    batches: u64,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    ready: Notify,
    budget: usize,
    urgent: Kinds,
}

/// The inbox was closed: the node is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

impl Inbox {
    /// An inbox holding up to `budget` bytes per peer, serving the kinds that
    /// `urgent` names ahead of the others from each peer.
    pub(crate) fn new(budget: usize, urgent: fn(u8) -> bool) -> Self {
        let urgent = std::array::from_fn(|k| urgent(k as u8));
        Inbox { state: Mutex::default(), ready: Notify::new(), budget, urgent }
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
            urgent: Cursor::default(),
            other: Cursor::default(),
            deficit: 0,
            waiting: false,
            room: Arc::new(Notify::new()),
            lent: Lent::default(),
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
        if len == 0 {
            return;
        }
        let lanes = lanes(&run, &self.urgent);
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let urgent = &self.urgent;
        let q = &mut s.slots[slot.0];
        let was_empty = q.is_empty();
        let before = q.bytes();
        q.runs.push_back(Run { bytes: run, lanes });
        for (c, urgent_lane) in [(&mut q.urgent, true), (&mut q.other, false)] {
            c.ahead += len;
            // A cursor at the end was past every frame: it looks into the new run.
            PeerQueue::seek(&q.runs, c, urgent_lane, urgent);
        }
        let added = q.bytes() - before;
        if was_empty {
            s.order.push_back(slot.0);
        }
        s.queued += added;
        drop(s);
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
                if q.is_empty() || q.bytes() + len <= self.budget {
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
                if q.is_empty() || q.bytes() + len <= self.budget {
                    return Ok(());
                }
                q.waiting = true;
            }
            notified.await;
        }
    }

    /// Waits until everything the peer of `slot` sent has been taken (at once when
    /// nothing is queued).
    pub(crate) async fn drained(&self, slot: Slot) -> Result<(), Closed> {
        self.room(slot, self.budget).await
    }

    /// Moves up to `max` messages into `out`, in turns (see the module's doc).
    /// Waits while nothing is queued; `Err(Closed)` once closed and drained.
    pub(crate) async fn recv_batch(&self, max: usize, out: &mut impl Sink) -> Result<usize, Closed> {
        loop {
            {
                let mut s = self.lock();
                let taken = Self::take(&mut s, max, out, &self.urgent);
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

    /// Takes up to `max` messages, a frame per turn; how many. Wakes the
    /// readers waiting for the room it made, once each. A peer whose turn
    /// comes while no other peer has anything queued takes its next turns at
    /// once, without going round the order.
    fn take(s: &mut State, max: usize, out: &mut impl Sink, urgent: &Kinds) -> usize {
        let State { slots, order, queued, batches, .. } = s;
        *batches += 1;
        let stamp = *batches;
        let mut taken = 0;
        while taken < max {
            let Some(i) = order.pop_front() else { break };
            let q = &mut slots[i];
            let before = q.bytes();
            let mut queued_still = true;
            loop {
                q.deficit += QUANTUM;
                match q.pop_within(q.deficit, urgent, out, stamp) {
                    Pop::Frame => {
                        // A turn delivers one frame; what was left of its quantum
                        // is not kept, so small frames earn no credit towards a
                        // large one.
                        q.deficit = 0;
                        taken += 1;
                        if taken == max || !order.is_empty() || q.is_empty() {
                            break;
                        }
                    }
                    // Its frame needs more turns: the others' come first.
                    Pop::Wait if order.is_empty() => {}
                    Pop::Wait => break,
                    Pop::Empty => {
                        q.deficit = 0;
                        queued_still = false;
                        break;
                    }
                }
            }
            let after = q.bytes();
            *queued -= before - after;
            if q.waiting && after < before {
                // Room was freed: the peer's readers may go on.
                q.waiting = false;
                q.room.notify_waiters();
            }
            if queued_still && !q.is_empty() {
                order.push_back(i);
            }
        }
        taken
    }

    /// Bytes waiting in the inbox, all peers (length prefixes included).
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.lock().queued as u64
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

    /// Kinds 2 and 3 are urgent here (the chain's proposal and vote).
    fn urgent(kind: u8) -> bool {
        matches!(kind, 2 | 3)
    }

    /// Frames of `kind` with bodies of `len` bytes, `n` of them, as one run.
    fn run_of(kind: u8, len: usize, n: usize) -> Bytes {
        let mut run = Vec::with_capacity(n * (4 + len));
        for _ in 0..n {
            run.extend_from_slice(&(len as u32).to_be_bytes());
            run.push(kind);
            run.resize(run.len() + len - 1, 0);
        }
        Bytes::from(run)
    }

    /// A member flooding 3 MiB frames beside a peer sending small votes: each
    /// vote is delivered at the voter's next turn, and the flooder gets about a
    /// quantum per turn, so however many large frames wait, the votes are all
    /// delivered after at most a quantum per vote (and one large frame) of the
    /// flood. Served a message per turn whatever its size, the flood's ten
    /// frames all came before the eleventh vote.
    #[tokio::test]
    async fn small_votes_beside_a_flood_of_large_frames_wait_a_bounded_number_of_bytes() {
        const LARGE: usize = 3 << 20;
        let inbox = Inbox::new(64 << 20, urgent);
        let (flooder, voter) = (inbox.slot(id(1)), inbox.slot(id(2)));
        for _ in 0..10 {
            inbox.put(flooder, run_of(2, LARGE, 1));
        }
        let votes = 100;
        for _ in 0..votes {
            inbox.put(voter, run_of(3, 110, 1));
        }
        let (mut flood_bytes, mut got) = (0, 0);
        let mut out = Vec::new();
        while got < votes {
            out.clear();
            inbox.recv_batch(1, &mut out).await.unwrap();
            if out[0].from == id(1) {
                flood_bytes += out[0].body.len();
            } else {
                got += 1;
            }
        }
        let bound = votes * QUANTUM + LARGE;
        assert!(flood_bytes <= bound, "{flood_bytes} bytes of the flood delivered among {votes} votes, bound {bound}");
        assert!(flood_bytes >= LARGE, "the flood is served too: {flood_bytes} bytes");
    }

    /// Within one peer, urgent kinds go first: a vote queued behind 4 MiB of
    /// the same peer's transactions is delivered before them; the rest keep
    /// their order, lane by lane. The vote's run stays counted (it is pinned)
    /// until the transactions before it are taken.
    #[tokio::test]
    async fn a_vote_behind_its_peers_transactions_is_delivered_first() {
        let inbox = Inbox::new(8 << 20, urgent);
        let slot = inbox.slot(id(1));
        for _ in 0..64 {
            inbox.put(slot, run_of(1, 64 * 1024 - 4, 1));
        }
        // One run of a transaction, a vote, a transaction and a vote.
        let mixed = [run_of(1, 100, 1), run_of(3, 110, 1), run_of(1, 101, 1), run_of(3, 111, 1)].concat();
        inbox.put(slot, Bytes::from(mixed));
        let total = inbox.queued_bytes();
        assert_eq!(total, 64 * 64 * 1024 + 4 * 4 + 100 + 110 + 101 + 111);
        let mut out = Vec::new();
        inbox.recv_batch(2, &mut out).await.unwrap();
        let lens: Vec<(u8, usize)> = out.iter().map(|d| (d.body[0], d.body.len())).collect();
        assert_eq!(lens, vec![(3, 110), (3, 111)], "both votes first, in their order");
        assert_eq!(inbox.queued_bytes(), total, "the votes' run is held until the transactions before it are taken");
        out.clear();
        while inbox.queued_bytes() > 0 {
            inbox.recv_batch(100, &mut out).await.unwrap();
        }
        let lens: Vec<(u8, usize)> = out.iter().map(|d| (d.body[0], d.body.len())).collect();
        let mut expected = vec![(1, 64 * 1024 - 4); 64];
        expected.extend([(1, 100), (1, 101)]);
        assert_eq!(lens, expected);
    }

    /// A peer's budget counts from its lane furthest behind: taking its urgent
    /// frames ahead of the others frees no room while those pin their runs.
    #[tokio::test]
    async fn room_is_made_when_the_lane_furthest_behind_moves() {
        let inbox = Arc::new(Inbox::new(1000, urgent));
        inbox.push(id(1), Bytes::from(vec![1; 496])).await.unwrap();
        inbox.push(id(1), Bytes::from(vec![3; 396])).await.unwrap();
        let blocked = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.push(id(1), Bytes::from(vec![1; 200])).await })
        };
        let mut out = Vec::new();
        inbox.recv_batch(1, &mut out).await.unwrap();
        assert_eq!(out[0].body[0], 3, "the vote first");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "the vote's run is still held behind the transaction");
        inbox.recv_batch(1, &mut out).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), blocked).await.expect("room made").unwrap().unwrap();
        assert_eq!(inbox.queued_bytes(), 204);
    }

    #[tokio::test]
    async fn peers_are_served_in_turn_whatever_they_queued() {
        let inbox = Inbox::new(1 << 20, urgent);
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
        let inbox = Inbox::new(1 << 20, urgent);
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
        let inbox = Arc::new(Inbox::new(1000, urgent));
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

    /// A peer alone in the inbox takes its turns one after another: a frame
    /// of several quanta is delivered in the same batch as the small ones
    /// around it, and the lanes keep their order across pure and mixed runs.
    #[tokio::test]
    async fn a_lone_peer_takes_its_turns_at_once_across_pure_and_mixed_runs() {
        let inbox = Inbox::new(8 << 20, urgent);
        let slot = inbox.slot(id(1));
        inbox.put(slot, run_of(1, 10, 3));
        inbox.put(slot, run_of(1, 3 * QUANTUM, 1));
        inbox.put(slot, Bytes::from([run_of(3, 20, 1), run_of(1, 11, 1), run_of(2, 21, 1)].concat()));
        inbox.put(slot, run_of(3, 22, 2));
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(100, &mut out).await, Ok(9));
        let lens: Vec<(u8, usize)> = out.iter().map(|d| (d.body[0], d.body.len())).collect();
        assert_eq!(
            lens,
            vec![(3, 20), (2, 21), (3, 22), (3, 22), (1, 10), (1, 10), (1, 10), (1, 3 * QUANTUM), (1, 11)],
            "urgent frames first, each lane in its order"
        );
        assert_eq!(inbox.queued_bytes(), 0);
    }

    /// A batch of slices holds each run it took from once, however many of
    /// its frames it took, and gives the same messages in the same order as
    /// bodies of their own would: across peers in turn and lanes of one run.
    #[tokio::test]
    async fn a_batch_of_slices_references_each_run_once_and_keeps_the_order() {
        let fill = |inbox: &Inbox| {
            let (a, b) = (inbox.slot(id(1)), inbox.slot(id(2)));
            inbox.put(a, run_of(1, 10, 50));
            inbox.put(b, Bytes::from([run_of(1, 11, 3), run_of(3, 12, 2), run_of(1, 13, 3)].concat()));
            inbox.put(a, run_of(1, 14, 20));
        };
        let (plain, sliced) = (Inbox::new(1 << 20, urgent), Inbox::new(1 << 20, urgent));
        fill(&plain);
        fill(&sliced);
        let mut bodies = Vec::new();
        assert_eq!(plain.recv_batch(1000, &mut bodies).await, Ok(78));
        let mut batch = Deliveries::new();
        assert_eq!(sliced.recv_batch(1000, &mut batch).await, Ok(78));
        let expected: Vec<(NodeId, &[u8])> = bodies.iter().map(|d| (d.from, &d.body[..])).collect();
        assert_eq!(batch.iter().collect::<Vec<_>>(), expected);
        assert_eq!(batch.runs.len(), 3, "one reference per run");
        assert_eq!(batch.body(51).as_deref(), Some(&bodies[51].body[..]));
        assert_eq!(sliced.queued_bytes(), 0);
        batch.clear();
        assert!(batch.is_empty() && batch.runs.is_empty(), "clearing releases the runs");
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_is_taken_alone() {
        let inbox = Inbox::new(100, urgent);
        inbox.push(id(1), Bytes::from(vec![0; 5000])).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(10, &mut out).await.unwrap(), 1);
        assert_eq!(out[0].body.len(), 5000);
        assert_eq!(inbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn close_ends_the_consumer_after_the_queue_drains() {
        let inbox = Inbox::new(100, urgent);
        inbox.push(id(1), Bytes::from_static(&[1])).await.unwrap();
        inbox.close();
        assert_eq!(inbox.push(id(1), Bytes::from_static(&[1])).await, Err(Closed));
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(10, &mut out).await, Ok(1));
        assert_eq!(inbox.recv_batch(10, &mut out).await, Err(Closed));
    }
}
