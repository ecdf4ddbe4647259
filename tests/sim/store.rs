//! A node's store as the simulation keeps it: what `chain::store` persists, with
//! its durability. fjall with a journal fsync per write means that what a write
//! returned for survives a crash: `Persist` and `Commit` are applied when the
//! effect is carried out, and a crash loses exactly what the driver had not
//! yet handed out (`Fault::CrashAfterPersist` dies between a signature's
//! `Persist` and its broadcast). A store wiped (`Fault::Wipe`) is empty; one
//! started from a checkpoint (`start_at`) holds the blocks from the
//! checkpoint's height on, as `chain::store` does.

use std::collections::BTreeMap;

use super::core_api::*;

pub struct Store {
    pub last_signed: Option<SignRecord>,
    /// Own signed messages, by record; those of finished heights go with each block.
    pub own: BTreeMap<SignRecord, Signed>,
    pub lock: Option<Lock>,
    /// The blocks from `earliest` on.
    pub chain: Vec<Committed>,
    /// The membership the tip left, written with each block.
    pub membership: Option<MembershipState>,
    /// The height of `chain[0]`, 1 unless started from a checkpoint.
    pub earliest: Height,
    /// The membership each height left, from `earliest - 1` on (what a
    /// checkpoint answer serves).
    pub states: BTreeMap<Height, MembershipState>,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            last_signed: None,
            own: BTreeMap::new(),
            lock: None,
            chain: Vec::new(),
            membership: None,
            earliest: 1,
            states: BTreeMap::new(),
        }
    }
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
        self.states.insert(h, membership.clone());
        self.own.retain(|r, _| r.height > h);
        Ok(())
    }

    pub fn tip(&self) -> Height {
        match self.chain.len() {
            0 => 0,
            n => self.earliest + n as Height - 1,
        }
    }

    /// `Store::start_at`: an empty store begins at a verified checkpoint,
    /// its block as tip and earliest height, with the member states before
    /// and after it.
    pub fn start_at(&mut self, c: &Committed, before: &MembershipState, after: &MembershipState) -> Result<(), String> {
        let h = c.block.height();
        if !self.chain.is_empty() {
            return Err(format!("store refuses a checkpoint at {h}: it holds a chain to {}", self.tip()));
        }
        self.earliest = h;
        self.chain.push(c.clone());
        self.membership = Some(after.clone());
        self.states.insert(h - 1, before.clone());
        self.states.insert(h, after.clone());
        Ok(())
    }

    /// The block at `height`, if held.
    pub fn block(&self, height: Height) -> Option<&Committed> {
        self.chain.get(usize::try_from(height.checked_sub(self.earliest)?).ok()?)
    }

    /// What `producer/requests.rs` answers `GetCheckpoint { height }` with
    /// (0: the tip): the block, its parent's id and the state the parent
    /// left, when this store holds all three.
    pub fn checkpoint_at(&self, height: Height) -> Option<CheckpointAnswer> {
        let height = if height == 0 { self.tip() } else { height };
        if height < 2 {
            return None;
        }
        let (committed, parent, before) =
            (self.block(height)?, self.block(height - 1)?, self.states.get(&(height - 1))?);
        Some(CheckpointAnswer { parent: parent.block.hash(), committed: committed.clone(), before: before.clone() })
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
        if from < self.earliest {
            // Nothing below the earliest height is served.
            return out;
        }
        for c in self.chain.iter().skip((from - self.earliest) as usize).take(count) {
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
            earliest: self.earliest,
        }
    }
}
