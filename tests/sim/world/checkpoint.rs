//! A node that lost its data dir starts from a checkpoint, as `Node::start`
//! does on an empty data dir with `checkpoint` set: before its driver
//! exists, it asks its connected peers one at a time (`GetCheckpoint`, a
//! height or 0 for `peers`), hands each answer to the library's own
//! `checkpoint::Fetch` (which verifies it as `fetch_checkpoint` does), asks
//! again every `CHECKPOINT_RETRY_MS` while none verified, then writes the
//! block and its member states with the store's `start_at` and builds the
//! driver at the next height. Its transport meanwhile admits the genesis
//! sets and `bootstrap`, as `Node::start` hands them before any chain.
//!
//! The operator's checkpoint (`Restore::Named`) is the highest tip of the
//! other honest nodes when the node starts (as an operator copies a healthy
//! node's tip: a block only the wiped node had committed went with its data
//! dir, and no peer could ever serve it), at or after protocol 4 and height
//! 2; the peers are asked in an order of the scheduler's choosing. A wipe
//! comes only once another honest node holds such a block (before, the fault
//! is a crash): a node on an empty data dir without a checkpoint replays the
//! chain with no record of what its key signed, the case of a data dir
//! restored from an older copy, not this one; and the highest tip, not an
//! older block, because the node's floor is only what its peers still hold of
//! its key (the current height's messages and the certificates it syncs).

use super::super::adversary::CheckpointLie;
use super::*;

impl World {
    /// The checkpoint the operator of wiped node `s` names: the highest
    /// block the honest nodes decided, at or after protocol 4 and height 2,
    /// that another honest node holds (a healthy node's tip, whose store
    /// serves it). A block only `s` committed before its wipe is held by no
    /// node: every peer refuses `GetCheckpoint` of it, and the real node asks
    /// again for good.
    pub(super) fn healthy_tip(&self, s: usize) -> Option<(Height, Hash)> {
        let healthy: Vec<&Store> = (self.nodes.iter().enumerate())
            .filter(|(p, n)| *p != s && n.honest && !n.halted && n.restore.is_none())
            .map(|(_, n)| &n.store)
            .collect();
        let from = self.plan.v4_from.unwrap_or(Height::MAX).max(2);
        let held =
            |(h, hash): &(Height, Hash)| healthy.iter().any(|st| st.block(*h).is_some_and(|c| c.block.hash() == *hash));
        self.checker.decided_from(from).into_iter().rev().find(held)
    }

    /// Node `s` starts on its empty data dir: the fetch, no driver yet.
    pub(super) fn begin_fetch(&mut self, s: usize) {
        let Some(restore) = self.nodes[s].restore else { return };
        let source = match restore {
            Restore::Peers => CheckpointSource::Peers,
            Restore::Named => {
                // The tip of a healthy node, as its operator reads it.
                let Some((height, hash)) = self.healthy_tip(s) else { return };
                CheckpointSource::Trusted(Checkpoint { height, hash })
            }
        };
        let genesis = &self.setup.genesis;
        let fetch = CheckpointFetch::new(source, genesis.current().clone(), genesis.params(), NET);
        let admits: BTreeSet<NodeId> = genesis
            .reachable()
            .into_iter()
            .map(|(id, _)| id)
            .chain(self.setup.bootstrap.iter().map(|(id, _)| *id))
            .collect();
        let node = &mut self.nodes[s];
        node.up = true;
        node.epoch += 1;
        node.booted_at = self.now;
        node.wake_at = None;
        node.at = None;
        node.driver = None;
        node.admits = Some(admits);
        node.fetch = Some(fetch);
        node.asking.clear();
        node.early.clear();
        let epoch = node.epoch;
        let what = match source {
            CheckpointSource::Trusted(c) => format!("checkpoint {}:{}", c.height, c.hash.short()),
            CheckpointSource::Peers => "checkpoint peers".into(),
        };
        self.log(1 << s, None, true, |w| format!("{} starts on an empty data dir from {what}", w.name(s)));
        let first = self.now + self.rng.range(200, 2_000);
        self.at(first, Event::Client { node: s, epoch });
        self.at(self.now + 1, Event::AskCheckpoint { node: s, epoch });
        self.apply_links();
    }

    /// The fetch asks its next peer; after the last of a round, the next
    /// round in `CHECKPOINT_RETRY_MS`.
    pub(super) fn ask_checkpoint(&mut self, s: usize) {
        let Some(height) = self.nodes[s].fetch.as_ref().map(|f| f.height()) else { return };
        let epoch = self.nodes[s].epoch;
        if self.nodes[s].asking.is_empty() {
            let mut round = self.peers_of(s);
            // The scheduler's order: any peer may be asked first.
            for i in (1..round.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                round.swap(i, j);
            }
            self.nodes[s].asking = round;
        }
        loop {
            if self.nodes[s].asking.is_empty() {
                self.at(self.now + CHECKPOINT_RETRY_MS, Event::AskCheckpoint { node: s, epoch });
                return;
            }
            let p = self.nodes[s].asking.remove(0);
            if self.connected(s, p) {
                let peer = self.nodes[p].id;
                self.request(s, peer, Message::GetCheckpoint { height }, Pending::Checkpoint { peer, slot: p });
                return;
            }
        }
    }

    /// The outcome of the fetch's request to `peer`: the library's decision,
    /// then the start or the next peer.
    pub(super) fn checkpoint_answered(&mut self, s: usize, peer: NodeId, decoded: Result<(Message, usize), String>) {
        let epoch = self.nodes[s].epoch;
        if self.nodes[s].fetch.is_none() {
            return;
        }
        let answer = match decoded {
            Ok((Message::Checkpoint(a), _)) => *a,
            Ok((other, _)) => {
                let kind = other.kind_name();
                self.log(1 << s, None, false, |w| {
                    format!("{}'s checkpoint request answered with {kind} by {}", w.name(s), peer.short())
                });
                self.at(self.now, Event::AskCheckpoint { node: s, epoch });
                return;
            }
            Err(e) => {
                self.log(1 << s, None, false, |w| format!("{}'s checkpoint request failed: {e}", w.name(s)));
                self.at(self.now, Event::AskCheckpoint { node: s, epoch });
                return;
            }
        };
        let Some(decision) = self.nodes[s].fetch.as_mut().map(|f| f.handle_answer(peer, answer)) else { return };
        match decision {
            CheckpointDecision::Start(v) => self.start_from_checkpoint(s, peer, *v),
            CheckpointDecision::Refused { error, .. } => {
                let by = (self.checker.label)(&peer);
                self.log(1 << s, None, true, |w| {
                    format!("{} refuses the checkpoint {by} offered ({}): {error}", w.name(s), error.kind())
                });
                self.at(self.now, Event::AskCheckpoint { node: s, epoch });
            }
            CheckpointDecision::Contradicted(c) => {
                // The operator named a block the honest nodes decided: more
                // than two thirds of the genesis set cannot hold another.
                let id = self.nodes[s].id;
                self.nodes[s].halted = true;
                let detail = format!(
                    "stopped: {} of the {} genesis members answered checkpoint height {} with block {}",
                    c.peers,
                    c.known,
                    c.checkpoint.height,
                    c.got.short()
                );
                self.checker.validity_failed(id, c.checkpoint.height, detail);
                self.crash(s);
            }
        }
    }

    /// The checkpoint verified: into the store (`start_at`), then the
    /// driver at the next height, as `Node::start` builds it after one.
    fn start_from_checkpoint(&mut self, s: usize, from: NodeId, v: Verified) {
        let (h, hash) = (v.committed.block.height(), v.committed.block.hash());
        let id = self.nodes[s].id;
        if let Err(e) = self.nodes[s].store.start_at(&v.committed, &v.before, &v.after) {
            return self.checker.validity_failed(id, h, e);
        }
        let node = &mut self.nodes[s];
        node.fetch = None;
        node.asking.clear();
        node.restore = None;
        node.started_from = Some((h, hash));
        self.checker.on_checkpoint(id, &v.committed, &v.after);
        let by = (self.checker.label)(&from);
        self.log(1 << s, Some(h), true, |w| {
            format!("{} starts from the checkpoint at height {h} {} that {by} gave", w.name(s), hash.short())
        });
        let now = self.clock(s);
        let node = &mut self.nodes[s];
        let driver = boot(&self.setup, node.identity.clone(), node.store.persisted(), now, WIPED_WATCH_INTERVALS);
        node.admits = Some(transport_set(&driver, &self.setup));
        node.driver = Some(driver);
        // The driver is told of the peers its transport holds, then takes
        // what its inbox kept during the fetch.
        node.linked.clear();
        self.carry_out(s);
        self.apply_links();
        self.deliver_early(s);
        self.arm(s);
        self.apply_links();
        self.maybe_approve(s);
        self.check_finished();
    }

    /// A node that started from a checkpoint holds it as its first block.
    pub(super) fn check_first_block(&mut self, s: usize) {
        let node = &self.nodes[s];
        let Some((h, hash)) = node.started_from else { return };
        let first = node.store.chain.first().map(|c| (c.block.height(), c.block.hash()));
        if node.store.earliest != h || first != Some((h, hash)) {
            let id = node.id;
            let detail = format!("started from the checkpoint {h}:{}, its store begins at {first:?}", hash.short());
            self.checker.validity_failed(id, h, detail);
        }
    }

    /// What slot `s` answers a `GetCheckpoint` of `height` with: what its
    /// store holds, or a Byzantine member's lie; `None`: no answer at all.
    pub(super) fn checkpoint_reply(&mut self, s: usize, height: Height) -> Option<Result<Message, Refusal>> {
        let held = self.nodes[s].store.checkpoint_at(height);
        let held = if self.nodes[s].honest {
            held
        } else {
            let me = self.nodes[s].identity.clone();
            match self.adv.checkpoint_lie(&me, height, held.clone()) {
                None => held,
                Some(CheckpointLie::Answer(a)) => Some(*a),
                Some(CheckpointLie::Silent) => return None,
            }
        };
        Some(held.map(|a| Message::Checkpoint(Box::new(a))).ok_or(Refusal::Unsupported))
    }
}
