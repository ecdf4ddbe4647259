//! The simulated network and the transport's view of it: who is connected,
//! messages with delay, loss and duplication, requests with their answers,
//! timeouts and failures.
//!
//! * Two slots are connected while both are up, in the same partition group,
//!   hold different keys (twins never connect to each other), and each one's
//!   transport admits the other's key (the set its driver last handed it:
//!   the sets in force and next, and `bootstrap`). A change of
//!   connectivity reaches a driver as the transport reports it: the connected
//!   set and the wire versions, then `handle_peer_up` with the tip the peer's
//!   handshake claims, `handle_peer_down` when no connection to that key is
//!   left; requests to a peer that went away fail at once.
//! * A gossiped message arrives after a delay drawn from the plan's range, so
//!   messages overtake each other; with loss it may never arrive; it arrives
//!   even if its sender died since, but not at a receiver that restarted (a new
//!   connection) or across a partition.
//! * A request reaches its peer after a delay, and its answer comes back the
//!   same way; one that gets no answer within [`REQUEST_TIMEOUT_MS`] fails with
//!   a timeout, as the transport's does.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::super::adversary::Send;
use super::*;

impl World {
    /// Both up, in one partition group, different keys, and each end's
    /// transport admits the other's key (mutual TLS pinned to the keys its
    /// driver handed it): a joiner reaches the members once its `Add` is
    /// committed, a removed member no longer.
    pub(super) fn connected(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        let admits = |n: &Node, id: &NodeId| n.admits.as_ref().is_none_or(|ids| ids.contains(id));
        a != b
            && x.up
            && y.up
            && x.id != y.id
            && self.groups[a] == self.groups[b]
            && admits(x, &y.id)
            && admits(y, &x.id)
    }

    pub(super) fn peers_of(&self, s: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&b| self.connected(s, b)).collect()
    }

    /// The connected slots that hold `id` (two for twins).
    fn slots_of(&self, s: usize, id: NodeId) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&b| self.nodes[b].id == id && self.connected(s, b)).collect()
    }

    /// Whether a message sent from `from` reaches `to`, still at `epoch`.
    pub(super) fn reaches(&self, from: usize, to: usize, epoch: u64) -> bool {
        let receiver = &self.nodes[to];
        receiver.up && receiver.epoch == epoch && self.groups[from] == self.groups[to]
    }

    /// Tells every driver what changed in its connectivity, as the transport
    /// would: the connected set, then each new peer, then each peer gone.
    pub(super) fn apply_links(&mut self) {
        let n = self.nodes.len();
        let mut ups: Vec<(usize, usize)> = Vec::new();
        for s in 0..n {
            if !self.nodes[s].up {
                continue;
            }
            let now: BTreeSet<usize> = self.peers_of(s).into_iter().collect();
            if now == self.nodes[s].linked {
                continue;
            }
            let before = std::mem::replace(&mut self.nodes[s].linked, now.clone());
            let ids: BTreeSet<NodeId> = now.iter().map(|p| self.nodes[*p].id).collect();
            let wire: BTreeMap<NodeId, u16> = ids.iter().map(|id| (*id, WIRE)).collect();
            self.input(s, |d, now| {
                d.handle_wire_versions(wire, now);
                d.handle_connected(ids.clone(), now);
            });
            for &p in now.difference(&before) {
                let (id, tip) = (self.nodes[p].id, self.nodes[p].store.tip());
                self.input(s, |d, now| d.handle_peer_up(id, Some(tip), now));
                ups.push((s, p));
            }
            for &p in before.difference(&now) {
                let id = self.nodes[p].id;
                if !ids.contains(&id) {
                    self.input(s, |d, now| d.handle_peer_down(id, now));
                }
                // Requests on the lost connection fail at once.
                let epoch = self.nodes[s].epoch;
                let lost: Vec<u64> =
                    self.nodes[s].pending.iter().filter(|(_, q)| q.slot() == p).map(|(r, _)| *r).collect();
                for req in lost {
                    self.at(self.now, Event::RequestFailed { node: s, epoch, req, why: Failed::Connection });
                }
            }
        }
        for (a, b) in ups {
            self.byzantine_sees_restart(a, b);
        }
    }

    /// A Byzantine slot `a` sees honest `b` connect right after `b` restarted.
    fn byzantine_sees_restart(&mut self, a: usize, b: usize) {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        if x.honest || !y.honest || !x.up || !y.up || y.booted_at != self.now || self.now == START_MS {
            return;
        }
        let h = y.store.tip() + 1;
        let lock = y.store.lock.as_ref().filter(|l| l.block.height() == h).map(|l| (l.round, l.block.hash()));
        let last = y.store.last_signed.filter(|r| r.height == h);
        let peers = self.peers_of(a);
        let me = self.nodes[a].identity.clone();
        let sends = self.adv.on_restart_seen(&me, b, h, lock, last, &peers);
        if !sends.is_empty() {
            self.log(1 << a | 1 << b, None, true, |w| {
                format!("{} replays {} messages to {} after its restart", w.name(a), sends.len(), w.name(b))
            });
        }
        self.exec(a, sends);
    }

    /// What the adversary decided to send from Byzantine slot `from`.
    pub(super) fn exec(&mut self, from: usize, sends: Vec<Send>) {
        for Send { to, msg, extra_delay, genuine } in sends {
            if genuine {
                if let Some(m) = signed_of(&msg) {
                    self.adv.record(&m);
                    self.checker.observe(&m);
                }
                if let Message::CompactProposal(cp) = &msg {
                    self.checker.observe_compact(cp);
                }
            }
            self.send(from, to, &msg, extra_delay);
        }
    }

    /// Queues `msg` for `to`; a message over its kind's limit never leaves
    /// (the receiver's transport would refuse it from its header).
    pub(super) fn send(&mut self, from: usize, to: usize, msg: &Message, extra_delay: u64) {
        let Some(body) = body_of(msg) else { return };
        self.transmit(from, to, body, extra_delay);
    }

    pub(super) fn transmit(&mut self, from: usize, to: usize, body: Bytes, extra_delay: u64) {
        if !self.connected(from, to) || (self.loss > 0 && self.rng.chance(self.loss)) {
            return;
        }
        let copies = if self.plan.dup_permille > 0 && self.rng.chance(self.plan.dup_permille) { 2 } else { 1 };
        for _ in 0..copies {
            let (lo, hi) = self.plan.delay_ms;
            let t = self.now + self.rng.range(lo, hi) + extra_delay;
            let epochs = (self.nodes[from].epoch, self.nodes[to].epoch);
            self.at(t, Event::Deliver { from, to, epochs, body: body.clone(), replayed: false });
        }
    }

    /// A consensus frame from `from` reached a node: the signature it carries
    /// is one some node holds ([`Checker::on_received`]), and the network may
    /// deliver the frame again later (not a replay once more). What no node
    /// received is never replayed: no one could relay it.
    pub(super) fn received(&mut self, from: usize, to: usize, body: &Bytes, replayed: bool) {
        if !body.first().is_some_and(|k| masternode::chain::is_consensus_kind(*k)) {
            return;
        }
        if let Some((signer, record, signature)) = signature_in(body) {
            let via = (self.nodes[to].id, self.nodes[from].id);
            self.checker.on_received(Some(via), signer, record, &signature);
        }
        if self.plan.replay_every_ms.is_some() && !replayed {
            const KEPT: usize = 4_000;
            if self.seen.len() < KEPT {
                self.seen.push((from, body.clone()));
            } else {
                let i = self.rng.below(KEPT as u64) as usize;
                self.seen[i] = (from, body.clone());
            }
        }
    }

    /// The network delivers one old consensus frame again, to every node: a
    /// vote or proposal of an earlier round or height, an honest member's as
    /// likely as anyone's; from its sender where it is connected, else from
    /// any peer (anyone may relay).
    pub(super) fn replay(&mut self) {
        if let Some(every) = self.plan.replay_every_ms {
            self.at(self.now + every, Event::Replay);
        }
        let Some((from, body)) = self.rng.pick(&self.seen).cloned() else { return };
        if signature_in(&body).is_some_and(|(signer, record, sig)| self.checker.forgot(signer, record, &sig)) {
            return;
        }
        for to in 0..self.nodes.len() {
            if !self.nodes[to].up || to == from {
                continue;
            }
            let via = if self.connected(from, to) { Some(from) } else { self.rng.pick(&self.peers_of(to)).copied() };
            if let Some(via) = via {
                let (lo, hi) = self.plan.delay_ms;
                let t = self.now + self.rng.range(lo, hi);
                let epochs = (self.nodes[via].epoch, self.nodes[to].epoch);
                self.at(t, Event::Deliver { from: via, to, epochs, body: body.clone(), replayed: true });
            }
        }
    }

    /// `RequestFlood`: Byzantine slot `s` asks a peer for blocks many times
    /// its rate in one go (it reads none of the answers).
    pub(super) fn flood_requests(&mut self, s: usize) {
        let Some(&to) = self.rng.pick(&self.peers_of(s)) else { return };
        let Some(body) = body_of(&Message::GetBlocks { from: 1, count: 16 }) else { return };
        for _ in 0..60 {
            let req = self.next_req;
            self.next_req += 1;
            let (lo, hi) = self.plan.delay_ms;
            let t = self.now + self.rng.range(lo, hi);
            let epochs = (self.nodes[s].epoch, self.nodes[to].epoch);
            self.at(t, Event::Request { from: s, to, epochs, req, body: body.clone() });
        }
    }

    /// The gossip kept while it fetched a checkpoint, handed to the driver
    /// just built, in the order it came.
    pub(super) fn deliver_early(&mut self, s: usize) {
        for (from, body) in std::mem::take(&mut self.nodes[s].early) {
            self.deliver(from, s, body);
        }
    }

    /// To every connected slot.
    pub(super) fn broadcast(&mut self, s: usize, msg: &Message) {
        let Some(body) = body_of(msg) else { return };
        for t in self.peers_of(s) {
            self.transmit(s, t, body.clone(), 0);
        }
    }

    /// To the connected slots of `id`.
    pub(super) fn send_to_id(&mut self, s: usize, id: NodeId, msg: &Message) {
        let Some(body) = body_of(msg) else { return };
        for t in self.slots_of(s, id) {
            self.transmit(s, t, body.clone(), 0);
        }
    }

    /// A gossiped frame reaches `to`: dropped undecoded where the driver says
    /// so, refused if it does not decode, else handed to the driver.
    pub(super) fn deliver(&mut self, from: usize, to: usize, body: Bytes) {
        let node = &mut self.nodes[to];
        if node.driver.is_none() && node.fetch.is_some() {
            // Fetching a checkpoint: kept for the driver built after it.
            if node.early.len() < EARLY_FRAMES {
                node.early.push((from, body));
            }
            return;
        }
        if self.driver(to).is_none_or(|d| d.skip_undecoded(&body)) {
            return;
        }
        let Ok(msg) = Message::decode(&body) else {
            self.log(1 << from | 1 << to, None, false, |w| {
                format!("{} -> {}: undecodable frame", w.name(from), w.name(to))
            });
            return;
        };
        self.log(1 << from | 1 << to, height_of_message(&msg), false, |w| {
            format!("{} -> {}: {}", w.name(from), w.name(to), describe_message(&msg))
        });
        if !self.nodes[to].honest {
            let me = self.nodes[to].identity.clone();
            let peers = self.peers_of(to);
            let sends = self.adv.on_receive(&me, &msg, &peers);
            self.exec(to, sends);
        }
        let id = self.nodes[from].id;
        self.input(to, |d, now| d.handle_message(id, msg, now));
    }

    /// Node `s` asks `peer` (its first connected slot) with `msg`; the answer
    /// or a failure comes back as an event.
    pub(super) fn request(&mut self, s: usize, peer: NodeId, msg: Message, mut pending: Pending) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let epoch = self.nodes[s].epoch;
        let Some(&slot) = self.slots_of(s, peer).first() else {
            self.nodes[s].pending.insert(req, pending);
            self.at(self.now + 1, Event::RequestFailed { node: s, epoch, req, why: Failed::Connection });
            return req;
        };
        match &mut pending {
            Pending::Blocks { slot: at, .. } | Pending::Txs { slot: at, .. } | Pending::Checkpoint { slot: at, .. } => {
                *at = slot
            }
        }
        self.nodes[s].pending.insert(req, pending);
        self.at(self.now + REQUEST_TIMEOUT_MS, Event::RequestFailed { node: s, epoch, req, why: Failed::Timeout });
        let Some(body) = body_of(&msg) else {
            self.at(self.now + 1, Event::RequestFailed { node: s, epoch, req, why: Failed::Connection });
            return req;
        };
        let (lo, hi) = self.plan.delay_ms;
        let t = self.now + self.rng.range(lo, hi);
        let epochs = (epoch, self.nodes[slot].epoch);
        self.log(1 << s | 1 << slot, None, false, |w| {
            format!("{} asks {} (#{req}): {}", w.name(s), w.name(slot), describe_message(&msg))
        });
        self.at(t, Event::Request { from: s, to: slot, epochs, req, body });
        req
    }

    /// A request from `from` reaches `to`'s driver.
    pub(super) fn serve(&mut self, from: usize, to: usize, epoch: u64, req: u64, body: Bytes) {
        let Ok(msg) = Message::decode(&body) else { return };
        let node = &mut self.nodes[to];
        if node.fork {
            // The other history, to anyone who asks; nothing else.
            let id = node.next_serving;
            node.next_serving += 1;
            node.serving.insert(id, Serving { requester: from, req, epoch });
            match msg {
                Message::GetBlocks { from: start, count } => {
                    let blocks = node.store.range(start, count.min(16) as usize, 256 * 1024);
                    self.answer(to, RequestId(id), Ok(Message::Blocks(blocks)), 0);
                }
                // A checkpoint of its history, at the height asked or its tip.
                Message::GetCheckpoint { height } => {
                    let height = if height == 0 { node.store.tip() } else { height };
                    let answer = other_checkpoint(&node.identity.clone(), height);
                    self.answer(to, RequestId(id), Ok(Message::Checkpoint(Box::new(answer))), 0);
                }
                _ => {}
            }
            return;
        }
        let id = node.next_serving;
        node.next_serving += 1;
        node.serving.insert(id, Serving { requester: from, req, epoch });
        let requester = self.nodes[from].id;
        self.input(to, |d, now| d.handle_request(requester, RequestId(id), msg, now));
    }

    /// Node `s` answers request `id` of its peer.
    pub(super) fn answer(&mut self, s: usize, id: RequestId, result: Result<Message, Refusal>, extra_delay: u64) {
        let Some(Serving { requester, req, epoch }) = self.nodes[s].serving.remove(&id.0) else { return };
        if result.is_ok() && !self.nodes[s].fork {
            let (server_epoch, who) = (self.nodes[s].epoch, self.nodes[requester].id);
            let rate = self.plan.limits.node.sync_requests_per_sec;
            if !self.served.serve(s, server_epoch, who, self.now, rate) {
                let detail = format!(
                    "served {} more requests than {rate} a second (bursts of {}) allow",
                    self.name(requester),
                    2 * rate
                );
                let id = self.nodes[s].id;
                self.checker.resources_failed(id, detail);
            }
        }
        let result = match result {
            Ok(msg) => match body_of(&msg) {
                Some(body) => Ok(body),
                None => return,
            },
            Err(r) => Err(r),
        };
        let (lo, hi) = self.plan.delay_ms;
        let t = self.now + self.rng.range(lo, hi) + extra_delay;
        let epochs = (self.nodes[s].epoch, epoch);
        self.log(1 << s | 1 << requester, None, false, |w| {
            let what = match &result {
                Ok(body) => format!("{} bytes", body.len()),
                Err(r) => format!("refused ({r:?})"),
            };
            format!("{} answers {} (#{req}): {what}", w.name(s), w.name(requester))
        });
        self.at(t, Event::Answer { from: s, to: requester, epochs, req, result });
    }

    /// The outcome of node `s`'s request `req`: an answer's frame, a refusal,
    /// or a failure without one.
    pub(super) fn answered(&mut self, s: usize, req: u64, outcome: Result<Result<Bytes, Refusal>, Failed>) {
        let Some(pending) = self.nodes[s].pending.remove(&req) else { return };
        let failure = |f: Failed| match f {
            Failed::Timeout => RequestError::Timeout(std::time::Duration::from_millis(REQUEST_TIMEOUT_MS)),
            Failed::Connection => RequestError::Connection("connection lost".into()),
        };
        let decoded: Result<(Message, usize), RequestFailure> = match outcome {
            Err(f) => Err(RequestFailure::Request(failure(f))),
            Ok(Err(refusal)) => Err(RequestFailure::Request(RequestError::Stream(format!("refused: {refusal:?}")))),
            Ok(Ok(body)) => Message::decode(&body).map(|m| (m, body.len())).map_err(RequestFailure::Decode),
        };
        match pending {
            Pending::Blocks { peer, .. } => {
                let result = decoded.and_then(|(m, bytes)| match m {
                    Message::Blocks(blocks) => Ok(BlocksAnswer { blocks, bytes }),
                    other => Err(RequestFailure::Unexpected(other.kind_name())),
                });
                self.log(1 << s, None, false, |w| match &result {
                    Ok(a) => format!("{} gets {} block(s) from {}", w.name(s), a.blocks.len(), peer.short()),
                    Err(e) => format!("{}'s sync request failed: {e}", w.name(s)),
                });
                self.input(s, |d, now| d.handle_blocks(peer, result, now));
            }
            Pending::Checkpoint { peer, .. } => {
                self.checkpoint_answered(s, peer, decoded.map_err(|e| e.to_string()));
            }
            Pending::Txs { peer, height, round, .. } => {
                if self.nodes[s].fetches.get(&(height, round)) != Some(&req) {
                    return;
                }
                self.nodes[s].fetches.remove(&(height, round));
                let result = decoded.and_then(|(m, _)| match m {
                    Message::Txs(txs) => Ok(txs),
                    other => Err(RequestFailure::Unexpected(other.kind_name())),
                });
                self.log(1 << s, Some(height), false, |w| match &result {
                    Ok(t) => format!("{} gets {} transaction(s) for ({height}, {round})", w.name(s), t.len()),
                    Err(e) => format!("{}'s fetch for ({height}, {round}) failed: {e}", w.name(s)),
                });
                self.input(s, |d, now| d.handle_txs(peer, height, round, result, now));
            }
        }
    }
}

fn height_of_message(m: &Message) -> Option<Height> {
    match m {
        Message::Proposal(p) => Some(p.proposal.height),
        Message::CompactProposal(p) => Some(p.height),
        Message::Vote(v) => Some(v.vote.height),
        _ => None,
    }
}

/// The signature a consensus frame carries: its signer, record and signature.
fn signature_in(body: &Bytes) -> Option<(NodeId, SignRecord, [u8; 64])> {
    if !body.first().is_some_and(|k| masternode::chain::is_consensus_kind(*k)) {
        return None;
    }
    match Message::decode(body).ok()? {
        Message::Vote(v) => Some((v.vote.voter, v.vote.record(), v.signature)),
        Message::Proposal(p) => {
            let record = SignRecord { height: p.proposal.height, round: p.proposal.round, step: Step::Propose };
            Some((p.proposal.proposer, record, p.signature))
        }
        Message::CompactProposal(cp) => {
            let record = SignRecord { height: cp.height, round: cp.round, step: Step::Propose };
            Some((cp.proposer, record, cp.signature))
        }
        _ => None,
    }
}
