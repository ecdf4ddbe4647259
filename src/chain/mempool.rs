//! Transactions waiting for a block: deduplicated by hash, bounded in count and
//! bytes, taken in arrival order by the proposer, removed once committed.
//!
//! Shared between the admin API (which adds), the producer (which takes and
//! removes) and gossip, behind a `std::sync::Mutex`: every operation is a few map
//! updates, and the lock is never held across an `.await`.

use std::collections::{HashMap, VecDeque};

use super::block::{tx_hash, Hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolLimits {
    pub max_txs: usize,
    pub max_bytes: usize,
    pub max_tx_bytes: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        MempoolLimits { max_txs: 50_000, max_bytes: 64 * 1024 * 1024, max_tx_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("transaction of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("transaction is empty")]
    Empty,
    #[error("mempool is full ({txs} transactions, {bytes} bytes)")]
    Full { txs: usize, bytes: usize },
}

/// Locks a shared mempool. A panic while holding the lock leaves the pool in a
/// consistent state (every operation is a few map updates that cannot panic
/// half-way), so a poisoned lock is used as it is.
pub fn lock(m: &std::sync::Mutex<Mempool>) -> std::sync::MutexGuard<'_, Mempool> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
pub struct Mempool {
    limits: MempoolLimits,
    txs: HashMap<Hash, Vec<u8>>,
    order: VecDeque<Hash>,
    bytes: usize,
}

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool { limits, txs: HashMap::new(), order: VecDeque::new(), bytes: 0 }
    }

    pub fn limits(&self) -> MempoolLimits {
        self.limits
    }

    /// Adds a transaction; `Ok((hash, false))` if it was already here.
    pub fn add(&mut self, tx: Vec<u8>) -> Result<(Hash, bool), AddError> {
        if tx.is_empty() {
            return Err(AddError::Empty);
        }
        if tx.len() > self.limits.max_tx_bytes {
            return Err(AddError::TooLarge { len: tx.len(), limit: self.limits.max_tx_bytes });
        }
        let hash = tx_hash(&tx);
        if self.txs.contains_key(&hash) {
            return Ok((hash, false));
        }
        if self.txs.len() >= self.limits.max_txs || self.bytes + tx.len() > self.limits.max_bytes {
            return Err(AddError::Full { txs: self.txs.len(), bytes: self.bytes });
        }
        self.bytes += tx.len();
        self.txs.insert(hash, tx);
        self.order.push_back(hash);
        Ok((hash, true))
    }

    /// The oldest transactions that fit in a block, left in the pool until they
    /// are committed.
    pub fn take(&self, max_txs: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for h in &self.order {
            let Some(tx) = self.txs.get(h) else { continue };
            if out.len() >= max_txs || bytes + tx.len() > max_bytes {
                break;
            }
            bytes += tx.len();
            out.push(tx.clone());
        }
        out
    }

    /// The transactions with these ids, where this pool holds them, in order.
    pub fn lookup(&self, ids: &[Hash]) -> Vec<Option<Vec<u8>>> {
        ids.iter().map(|id| self.txs.get(id).cloned()).collect()
    }

    /// The transactions with these ids that this pool holds, in order, up to
    /// `max_bytes` of transaction bytes (a `GetTxs` answer within its frame).
    pub fn lookup_within(&self, ids: &[Hash], max_bytes: usize) -> Vec<Vec<u8>> {
        super::compact::within_bytes(ids.iter().filter_map(|id| self.txs.get(id)), max_bytes)
    }

    pub fn remove_committed(&mut self, txs: &[Vec<u8>]) {
        let mut removed = false;
        for tx in txs {
            if let Some(t) = self.txs.remove(&tx_hash(tx)) {
                self.bytes -= t.len();
                removed = true;
            }
        }
        if removed {
            let txs = &self.txs;
            self.order.retain(|h| txs.contains_key(h));
        }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The transactions with these ids, where this pool holds them, in order,
    /// refused the moment their bytes would pass `max_block_bytes` (a compact
    /// proposal rebuilt no larger than a block, see
    /// [`super::compact::place_within`]).
    pub fn lookup_within_block(
        &self,
        ids: &[Hash],
        max_block_bytes: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, super::compact::CompactError> {
        super::compact::place_within(ids, |id| self.txs.get(id), max_block_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_bounds_and_removes() {
        let mut m = Mempool::new(MempoolLimits { max_txs: 3, max_bytes: 100, max_tx_bytes: 40 });
        let (h, new) = m.add(vec![1; 10]).unwrap();
        assert!(new);
        assert_eq!(m.add(vec![1; 10]).unwrap(), (h, false), "duplicate by hash");
        assert_eq!(m.add(vec![2; 41]), Err(AddError::TooLarge { len: 41, limit: 40 }));
        assert_eq!(m.add(vec![]), Err(AddError::Empty));
        m.add(vec![2; 40]).unwrap();
        m.add(vec![3; 40]).unwrap();
        assert!(matches!(m.add(vec![4; 5]), Err(AddError::Full { .. })), "count bound");
        assert_eq!(m.take(10, 50), vec![vec![1; 10], vec![2; 40]], "oldest first, up to the byte limit");
        m.remove_committed(&[vec![1; 10], vec![2; 40]]);
        assert_eq!(m.len(), 1);
        assert_eq!(m.bytes(), 40);
        m.add(vec![5; 40]).unwrap();
        assert!(matches!(m.add(vec![6; 30]), Err(AddError::Full { .. })), "byte bound");
    }
}
