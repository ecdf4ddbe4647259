//! A node's store as the simulation keeps it: what `chain::store` persists, with
//! its durability. fjall with a journal fsync per write means that what a write
//! returned for survives a crash: `Persist` and `Commit` are applied when the
//! effect is carried out, and a crash loses exactly what the driver had not
//! yet handed out (`Fault::CrashAfterPersist` dies between a signature's
//! `Persist` and its broadcast).

use std::collections::BTreeMap;

use super::core_api::*;

#[derive(Default)]
pub struct Store {
    pub last_signed: Option<SignRecord>,
    /// Own signed messages, by record; those of finished heights go with each block.
    pub own: BTreeMap<SignRecord, Signed>,
    pub lock: Option<Lock>,
    pub chain: Vec<Committed>,
    /// The membership the tip left, written with each block.
    pub membership: Option<MembershipState>,
}

impl Store {
    /// `Store::record_signed`.
    pub fn record_signed(&mut self, record: SignRecord, message: &Signed, lock: Option<&Lock>) {
        self.last_signed = Some(record);
        self.own.insert(record, message.clone());
        if let Some(l) = lock {
            self.lock = Some(l.clone());
        }
    }

    /// `Store::commit`: the next block only (the real store refuses any other,
    /// and the producer stops on that error).
    pub fn commit(&mut self, c: &Committed, membership: &MembershipState) -> Result<(), String> {
        let h = c.block.height();
        if h != self.tip() + 1 {
            return Err(format!("store refuses block {h}: its tip is {}", self.tip()));
        }
        self.chain.push(c.clone());
        self.membership = Some(membership.clone());
        self.own.retain(|r, _| r.height > h);
        Ok(())
    }

    pub fn tip(&self) -> Height {
        self.chain.len() as Height
    }

    /// `Store::own_signed(height)`.
    pub fn own_signed(&self, height: Height) -> Vec<Signed> {
        self.own.iter().filter(|(r, _)| r.height == height).map(|(_, m)| m.clone()).collect()
    }

    /// `Store::range`: blocks from `from`, at most `count`, within `max_bytes`
    /// of encoding (the first always).
    pub fn range(&self, from: Height, count: usize, max_bytes: usize) -> Vec<Committed> {
        let mut out = Vec::new();
        let mut bytes = 1 + 9;
        for c in self.chain.iter().skip(from.saturating_sub(1) as usize).take(count) {
            if from == 0 {
                break;
            }
            let size = masternode::codec::encoded_len(c);
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(c.clone());
        }
        out
    }

    /// What `Node::start` reads.
    pub fn persisted(&self) -> Persisted<'_> {
        let h = self.tip() + 1;
        Persisted {
            tip: self.chain.last(),
            membership: self.membership.clone(),
            last_signed: self.last_signed,
            own: self.own_signed(h),
            lock: self.lock.clone(),
        }
    }
}
