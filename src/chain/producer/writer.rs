//! The store's one writer: a blocking thread that carries out the producer's
//! writes strictly in the order they were handed over, each fsynced before
//! the next begins.
//!
//! A signing record is awaited: the producer hands it over and waits for its
//! fsync before the message it records leaves the node. A committed block is
//! not: the producer goes on with the next height (taking in its proposal,
//! transactions, requests) while the block is written, and reports the block
//! (the tip, the `Tip` and `Holds` it broadcasts) only when the writer says it
//! is on disk. Since writes are carried out in order, the next height's first
//! signing record is durable only after the block before it: a node that
//! crashes mid-write restarts with its lock and record at or below the last
//! durable block's next height, as it would have without the overlap.
//!
//! At most [`QUEUED`] writes wait, so a burst of synced blocks holds at most
//! that many blocks in memory beside the one being written. When the producer
//! stops, the writer finishes what was handed over (the node's task tracker
//! waits for it) and exits.

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::super::block::{Hash, Height, Round};
use super::super::members::MembershipState;
use super::super::message::Message;
use super::super::store::{Store, StoreError};
use super::super::vote::{Committed, Lock, SignRecord, Signed};

/// Writes handed over and not yet carried out, at most.
const QUEUED: usize = 2;

/// A block the writer put on disk, for the producer to report.
#[derive(Debug)]
pub(super) struct Stored {
    pub height: Height,
    pub hash: Hash,
    pub timestamp_ms: u64,
    pub round: Round,
    pub txs: usize,
    pub synced: bool,
}

enum Write {
    Signed {
        record: SignRecord,
        message: Signed,
        lock: Option<Box<Lock>>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Commit {
        committed: Committed,
        membership: Box<MembershipState>,
        synced: bool,
    },
}

/// The producer's end of the writer.
pub(super) struct Writer {
    writes: mpsc::Sender<Write>,
    /// What was stored (or the write that failed), in order. Unbounded, so
    /// the writer never waits for the producer while the producer waits to
    /// hand it a block (a burst of synced blocks): one small entry per block
    /// handed over, which the producer reads every turn of its loop.
    pub stored: mpsc::UnboundedReceiver<Result<Stored, StoreError>>,
    /// Blocks handed over and not yet reported stored.
    pending: usize,
}

impl Writer {
    pub(super) fn start(store: Store, tracker: &TaskTracker) -> Writer {
        let (writes, mut rx) = mpsc::channel::<Write>(QUEUED);
        let (stored_tx, stored) = mpsc::unbounded_channel();
        tracker.spawn_blocking(move || {
            while let Some(w) = rx.blocking_recv() {
                match w {
                    Write::Signed { record, message, lock, done } => {
                        let _ = done.send(store.record_signed(record, &message, lock.as_deref()));
                    }
                    Write::Commit { committed: c, membership, synced } => {
                        let result = store.commit(&c, &membership).map(|()| Stored {
                            height: c.block.height(),
                            hash: c.block.hash(),
                            timestamp_ms: c.block.header.timestamp_ms,
                            round: c.cert.round,
                            txs: c.block.txs.len(),
                            synced,
                        });
                        let failed = result.is_err();
                        // A stopped producer hears nothing; what it handed
                        // over is written all the same.
                        let _ = stored_tx.send(result);
                        if failed {
                            return;
                        }
                    }
                }
            }
        });
        Writer { writes, stored, pending: 0 }
    }

    /// Records a signature durably: returns once it is on disk, after every
    /// write handed over before it.
    pub(super) async fn record_signed(
        &self,
        record: SignRecord,
        message: Signed,
        lock: Option<Box<Lock>>,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.writes.send(Write::Signed { record, message, lock, done }).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }

    /// Hands a committed block over; waits only while [`QUEUED`] writes wait.
    pub(super) async fn commit(
        &mut self,
        committed: Committed,
        membership: Box<MembershipState>,
        synced: bool,
    ) -> Result<(), StoreError> {
        self.writes.send(Write::Commit { committed, membership, synced }).await.map_err(|_| gone())?;
        self.pending += 1;
        Ok(())
    }

    /// A block reported stored (from [`Self::stored`]).
    pub(super) fn handle_stored(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Blocks handed over and not yet reported stored.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Waits until every block handed over is stored; what was, in order.
    pub(super) async fn drain(&mut self) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::new();
        while self.pending > out.len() {
            out.push(self.stored.recv().await.ok_or_else(gone)??);
        }
        Ok(out)
    }
}

/// The height a message reports this node holds (`Tip`, `Holds`): sent only
/// once that block is stored.
pub(super) fn reports(msg: &Message) -> Option<Height> {
    match msg {
        Message::Tip { height, .. } | Message::Holds { height, .. } => Some(*height),
        _ => None,
    }
}

/// The writer thread ended: only after a failed write, which it reported.
fn gone() -> StoreError {
    StoreError::WriterStopped
}
