//! The simulated world: whole nodes (a core plus the producer's rules around it and
//! a modelled store) on a network with virtual time, driven by one event queue
//! ordered by time and a seeded RNG.
//!
//! The producer's rules, as `chain/producer.rs` carries them out:
//! * a signature, its message and the lock beside it are persisted before the
//!   message leaves the node; a decided block is stored before anything else;
//! * after a restart the core is built from the store as `Node::start` does
//!   (tip, last signed record, own messages of the height, lock);
//! * a peer that connects gets our own messages of the current height;
//! * after `3 * block_interval` (at least 3 s) without a new height, own
//!   messages are sent again;
//! * the quorum gate follows the set of connected peers that are members of the
//!   current height's set (this node too when it is one), recomputed after
//!   every block;
//! * membership approvals wait in a pool (in memory: a crash loses it), are
//!   gossiped (a peer keeps and passes on once what its membership's `check`
//!   passes), handed to a peer that connects, and proposers put
//!   `Membership::select` of the pool in their blocks; honest members approve the plan's member changes with
//!   `signed_at` their committed tip, again when the approval expired or a
//!   crash lost it;
//! * a node that learns a peer is ahead (a `Tip`, an `Ahead` from the core, the
//!   peer's tip at connection) fetches blocks with certificates from it and
//!   feeds them to the core; a peer that fails is not asked for 15 s.
//!
//! The store's durability is that of fjall with a journal fsync per write: what
//! a write returned for survives a crash, so a crash loses exactly the messages
//! not yet sent (`Fault::CrashAfterPersist` dies between the two).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::adversary::{Adversary, Send, Wire};
use super::checker::{Checker, Violation};
use super::core_api::*;
use super::plan::{describe_planned, Fault, Plan, Planned};
use super::rng::Rng;

const START_MS: u64 = 1_000_000;
const TICK_MS: u64 = 1_000;
const REBROADCAST_AFTER_MS: u64 = 3_000;
const SYNC_BATCH: usize = 16;
const SYNC_TIMEOUT_MS: u64 = 10_000;
const SYNC_PENALTY_MS: u64 = 15_000;
/// Time after calm for each member change due then and not yet done.
const CHANGE_WINDOW_MS: u64 = 20_000;
/// A scenario that runs this many steps is a message storm, not a test.
const STEP_LIMIT: u64 = 400_000;

pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

pub fn describe_fault(f: &Fault) -> String {
    match f {
        Fault::Crash(s) => format!("crash {}", letter(*s)),
        Fault::CrashAfterPersist(s) => format!("crash {} after its next persisted signature", letter(*s)),
        Fault::Restart(s) => format!("restart {}", letter(*s)),
        Fault::Partition(g) => format!("partition {}", groups_text(g)),
        Fault::Heal => "heal".into(),
        Fault::Loss(p) => format!("loss {p}/1000"),
    }
}

fn groups_text(g: &[u8]) -> String {
    let max = g.iter().copied().max().unwrap_or(0);
    let parts: Vec<String> = (0..=max)
        .map(|k| g.iter().enumerate().filter(|(_, x)| **x == k).map(|(i, _)| letter(i).to_string()).collect())
        .filter(|s: &String| !s.is_empty())
        .collect();
    parts.join("|")
}

fn timeout_height(t: &Timeout) -> Height {
    match t {
        Timeout::Propose { height, .. }
        | Timeout::Prevote { height, .. }
        | Timeout::Precommit { height, .. }
        | Timeout::StartHeight { height } => *height,
    }
}

pub struct RunOpts {
    pub trace: bool,
    pub max_steps: Option<u64>,
}

pub struct TraceLine {
    pub height: Option<Height>,
    pub key: bool,
    /// Slots the line involves, as a bit mask.
    pub slots: u32,
    pub text: String,
}

pub struct Outcome {
    pub steps: u64,
    pub violation: Option<(u64, Violation)>,
    pub trace: Vec<TraceLine>,
    /// Slots of the members a violation names.
    pub violated_slots: u32,
}

#[derive(Default)]
struct Store {
    last_signed: Option<SignRecord>,
    own: BTreeMap<SignRecord, Signed>,
    lock: Option<Lock>,
    chain: Vec<Committed>,
    /// The membership the tip left, written with each block.
    membership: Option<MembershipState>,
}

struct Node {
    label: String,
    identity: Arc<Identity>,
    id: NodeId,
    honest: bool,
    up: bool,
    epoch: u64,
    core: Option<Core>,
    store: Store,
    quorum: bool,
    peer_tips: BTreeMap<usize, Height>,
    syncing: Option<(u64, usize)>,
    penalty: BTreeMap<usize, u64>,
    last_height_seen: (Height, u64),
    crash_after_persist: bool,
    booted_at: u64,
    /// Approvals waiting for a block.
    pool: ApprovalPool,
}

// Sizes do not matter here: events live in one queue of a few thousand.
#[allow(clippy::large_enum_variant)]
enum Event {
    Deliver { from: usize, to: usize, epochs: (u64, u64), msg: Wire },
    Timer { node: usize, epoch: u64, timeout: Timeout },
    Tick { node: usize, epoch: u64 },
    SyncTimeout { node: usize, epoch: u64, req: u64 },
    Fault(Fault),
    Calm,
    Deadline,
    Rewind { node: usize, height: Height, round: Round, value: Hash },
}

pub struct World {
    plan: Plan,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    groups: Vec<u8>,
    loss: u64,
    cfg: Config,
    /// Every key's id: the genesis members' then the joiners'.
    key_ids: Vec<NodeId>,
    /// The plan's member change honest members approve now.
    next_change: usize,
    /// Set when calm: the changes that must complete for the scenario to end
    /// (those due by the height every honest node must pass).
    due_changes: usize,
    checker: Checker,
    adv: Adversary,
    trace: Option<Vec<TraceLine>>,
    steps: u64,
    /// Set when calm: the height every honest node must pass.
    calm_base: Option<Height>,
    finished: bool,
    next_req: u64,
    rewinds: u32,
}

pub fn run(plan: &Plan, opts: &RunOpts) -> Outcome {
    let mut w = World::new(plan, opts.trace);
    for s in 0..w.nodes.len() {
        w.boot(s);
    }
    w.apply_links(&vec![vec![false; w.nodes.len()]; w.nodes.len()]);
    for (t, f) in plan.faults.clone() {
        w.at(START_MS + t, Event::Fault(f));
    }
    w.at(START_MS + plan.calm_at, Event::Calm);
    while let Some(((t, _), ev)) = w.queue.pop_first() {
        w.now = t;
        w.steps += 1;
        w.step(ev);
        if w.checker.violation.is_some() || w.finished || opts.max_steps.is_some_and(|m| w.steps >= m) {
            break;
        }
        if w.steps >= STEP_LIMIT {
            w.checker.progress_failed(Vec::new(), format!("{STEP_LIMIT} steps without finishing: a message storm"));
            break;
        }
    }
    let violation = w.checker.violation.take().map(|v| (w.steps, v));
    let violated_slots = violation.as_ref().map_or(0, |(_, v)| {
        let mut mask = 0;
        for (i, n) in w.nodes.iter().enumerate() {
            if v.nodes.contains(&n.id) {
                mask |= 1 << i;
            }
        }
        mask
    });
    Outcome { steps: w.steps, violation, trace: w.trace.take().unwrap_or_default(), violated_slots }
}

impl World {
    fn new(plan: &Plan, trace: bool) -> World {
        let mut ids = identities(plan.n);
        let members: Vec<NodeId> = ids.iter().map(|i| i.id()).collect();
        ids.extend(joiner_identities(plan.n, plan.joiners));
        let key_ids: Vec<NodeId> = ids.iter().map(|i| i.id()).collect();
        let mut nodes = Vec::new();
        for s in 0..plan.slots() {
            let key = plan.key_of(s);
            let honest = !plan.byzantine.contains(&key);
            let mut label = letter(key).to_string();
            if !honest {
                label.push('*');
            }
            if s >= plan.keys() {
                label.push('\'');
            }
            nodes.push(Node {
                label,
                identity: ids[key].clone(),
                id: ids[key].id(),
                honest,
                up: false,
                epoch: 0,
                core: None,
                store: Store::default(),
                quorum: false,
                peer_tips: BTreeMap::new(),
                syncing: None,
                penalty: BTreeMap::new(),
                last_height_seen: (0, 0),
                crash_after_persist: false,
                booted_at: 0,
                pool: ApprovalPool::default(),
            });
        }
        let honest: BTreeSet<NodeId> =
            (0..plan.keys()).filter(|i| !plan.byzantine.contains(i)).map(|i| key_ids[i]).collect();
        let names: BTreeMap<NodeId, String> = (0..plan.keys())
            .map(|i| (key_ids[i], format!("{}{}", letter(i), if plan.byzantine.contains(&i) { "*" } else { "" })))
            .collect();
        let label = Box::new(move |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.short()));
        let mut rng = Rng::new(plan.seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let adv_rng = rng.fork();
        World {
            rng,
            now: START_MS,
            seq: 0,
            queue: BTreeMap::new(),
            groups: vec![0; nodes.len()],
            nodes,
            loss: 0,
            cfg: config(&members),
            key_ids,
            next_change: 0,
            due_changes: 0,
            checker: Checker::new(genesis(&members), honest, label),
            adv: Adversary::new(plan.strategies.clone(), members, adv_rng),
            trace: trace.then(Vec::new),
            steps: 0,
            calm_base: None,
            finished: false,
            next_req: 0,
            rewinds: 0,
            // Shrinking may have removed a change a later one builds on.
            plan: Plan { changes: plan.applicable_changes(), ..plan.clone() },
        }
    }

    fn at(&mut self, t: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    /// A trace line: `key` lines (signatures, commits, crashes, faults) are kept
    /// when the trace is cut for printing; `height` is the height it concerns.
    fn log(&mut self, slots: u32, height: Option<Height>, key: bool, text: impl FnOnce(&World) -> String) {
        if self.trace.is_some() {
            let t = self.now - START_MS;
            let line = TraceLine { slots, height, key, text: format!("#{} t={t} {}", self.steps, text(self)) };
            if let Some(trace) = &mut self.trace {
                trace.push(line);
            }
        }
    }

    fn handle(&mut self, s: usize, input: Input) -> Vec<Output> {
        let now = self.now;
        self.core(s).handle(input, now)
    }

    fn name(&self, s: usize) -> String {
        self.nodes[s].label.clone()
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        a != b && x.up && y.up && x.id != y.id && self.groups[a] == self.groups[b]
    }

    fn links(&self) -> Vec<Vec<bool>> {
        let n = self.nodes.len();
        (0..n).map(|a| (0..n).map(|b| self.connected(a, b)).collect()).collect()
    }

    fn peers_of(&self, s: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&b| self.connected(s, b)).collect()
    }

    fn step(&mut self, ev: Event) {
        match ev {
            Event::Deliver { from, to, epochs, msg } => {
                // What was sent arrives even if its sender died since; not at a
                // receiver that restarted (a new connection) or across a partition.
                let receiver = &self.nodes[to];
                if !receiver.up || receiver.epoch != epochs.1 || self.groups[from] != self.groups[to] {
                    return;
                }
                self.deliver(from, to, msg);
            }
            Event::Timer { node, epoch, timeout } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                self.log(1 << node, Some(timeout_height(&timeout)), false, |w| {
                    format!("{} timeout {timeout:?}", w.name(node))
                });
                let out = self.handle(node, Input::Timeout(timeout));
                self.drive(node, out, None);
            }
            Event::Tick { node, epoch } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                self.at(self.now + TICK_MS, Event::Tick { node, epoch });
                self.tick(node);
            }
            Event::SyncTimeout { node, epoch, req } => {
                if self.nodes[node].epoch != epoch {
                    return;
                }
                if let Some((r, peer)) = self.nodes[node].syncing {
                    if r == req {
                        self.nodes[node].syncing = None;
                        self.penalize(node, peer);
                        self.maybe_sync(node);
                    }
                }
            }
            Event::Fault(f) => {
                if self.calm_base.is_some() {
                    return;
                }
                self.log(u32::MAX, None, true, |_| describe_fault(&f));
                self.fault(f);
            }
            Event::Calm => self.calm(),
            Event::Rewind { node, height, round, value } => self.rewind(node, height, round, value),
            Event::Deadline => {
                if !self.finished {
                    let base = self.calm_base.unwrap_or(0);
                    let mut lagging = Vec::new();
                    let mut state = Vec::new();
                    for n in &self.nodes {
                        if n.honest {
                            let c = n.core.as_ref();
                            state.push(format!(
                                "{} at height {} round {}",
                                n.label,
                                c.map_or(0, |c| c.height()),
                                c.map_or(0, |c| c.round())
                            ));
                            if (n.store.chain.len() as u64) < base + 2 {
                                lagging.push(n.id);
                            }
                        }
                    }
                    let changes = match self.plan.changes.get(self.next_change) {
                        Some((from, p)) if self.next_change < self.due_changes => {
                            format!("; member change from height {from} not done: {}", describe_planned(p))
                        }
                        _ => String::new(),
                    };
                    let detail = format!(
                        "{} ms after the network turned calm, not every honest node committed height {} ({}){changes}",
                        self.plan.window_ms,
                        base + 2,
                        state.join(", ")
                    );
                    self.checker.progress_failed(lagging, detail);
                }
            }
        }
    }

    fn core(&mut self, s: usize) -> &mut Core {
        // Events for a node that is down are dropped before they get here.
        self.nodes[s].core.as_mut().expect("a node that is up has a core")
    }

    fn fault(&mut self, f: Fault) {
        let before = self.links();
        match f {
            Fault::Crash(s) => {
                if self.nodes[s].up {
                    self.crash(s);
                }
            }
            Fault::CrashAfterPersist(s) => self.nodes[s].crash_after_persist = self.nodes[s].up,
            Fault::Restart(s) => {
                if !self.nodes[s].up {
                    self.boot(s);
                }
            }
            Fault::Partition(g) => self.groups = g,
            Fault::Heal => self.groups = vec![0; self.nodes.len()],
            Fault::Loss(p) => self.loss = p,
        }
        self.apply_links(&before);
    }

    fn calm(&mut self) {
        self.log(u32::MAX, None, true, |_| {
            "calm: partitions healed, no loss, crashed nodes restart, Byzantine slots stop".into()
        });
        let before = self.links();
        self.groups = vec![0; self.nodes.len()];
        self.loss = 0;
        self.adv.active = false;
        for s in 0..self.nodes.len() {
            self.nodes[s].crash_after_persist = false;
            let node = &self.nodes[s];
            let twin = s >= self.plan.keys();
            if node.honest && !node.up {
                self.boot(s);
            } else if !node.honest && node.up && (self.plan.silent_when_calm || twin) {
                self.crash(s);
            }
        }
        let base = self.nodes.iter().filter(|n| n.honest).map(|n| n.store.chain.len() as u64).max().unwrap_or(0);
        self.calm_base = Some(base);
        // The change under way, if it is due by the height every honest node
        // must pass, must complete too (one: each takes a few blocks, and the
        // quick run's time is bounded).
        let due = self.plan.changes.iter().filter(|(from, _)| *from <= base + 2).count();
        self.due_changes = due.min(self.next_change + 1);
        self.apply_links(&before);
        let outstanding = self.due_changes.saturating_sub(self.next_change) as u64;
        self.at(self.now + self.plan.window_ms + CHANGE_WINDOW_MS * outstanding, Event::Deadline);
        self.check_finished();
    }

    fn check_finished(&mut self) {
        if let Some(base) = self.calm_base {
            self.finished = self.next_change >= self.due_changes
                && self.nodes.iter().filter(|n| n.honest).all(|n| n.store.chain.len() as u64 >= base + 2);
        }
    }

    fn crash(&mut self, s: usize) {
        self.log(1 << s, None, true, |w| format!("{} crashes", w.name(s)));
        let before = self.links();
        let node = &mut self.nodes[s];
        node.up = false;
        node.core = None;
        node.epoch += 1;
        node.crash_after_persist = false;
        node.pool = ApprovalPool::default();
        self.apply_links(&before);
    }

    /// Starts the node from what its store holds, as `Node::start` does.
    fn boot(&mut self, s: usize) {
        let now = self.now;
        let h = self.nodes[s].store.chain.len() as u64 + 1;
        let cfg = self.cfg.clone();
        let node = &mut self.nodes[s];
        node.up = true;
        node.epoch += 1;
        node.booted_at = now;
        node.quorum = false;
        node.peer_tips.clear();
        node.syncing = None;
        node.penalty.clear();
        let own: Vec<Signed> = node
            .store
            .own
            .range(SignRecord { height: h, round: 0, step: Step::Propose }..)
            .filter(|(r, _)| r.height == h)
            .map(|(_, m)| m.clone())
            .collect();
        let stored = Persisted {
            tip: node.store.chain.last(),
            membership: node.store.membership.clone(),
            last_signed: node.store.last_signed,
            own,
            lock: node.store.lock.clone(),
        };
        let mut core = boot(cfg, node.identity.clone(), stored);
        node.last_height_seen = (core.height(), now);
        let out = core.start(now);
        node.core = Some(core);
        let epoch = node.epoch;
        let lock =
            node.store.lock.as_ref().filter(|l| l.block.height() == h).map(|l| (l.round, l.block.hash().short()));
        let last = node.store.last_signed;
        self.log(1 << s, Some(h), true, |w| {
            format!("{} starts at height {h}, last signed {last:?}, lock {lock:?}", w.name(s))
        });
        self.at(now + TICK_MS, Event::Tick { node: s, epoch });
        self.drive(s, out, None);
        self.maybe_approve(s);
    }

    /// The quorum gate as the producer computes it: connected members of the
    /// current height's set, this node included when it is one. The core's
    /// outputs when the gate opened or closed.
    fn gate(&mut self, s: usize) -> Vec<Output> {
        let Some(core) = self.nodes[s].core.as_ref() else { return Vec::new() };
        let set = core.members_at(core.height());
        let mut active: BTreeSet<NodeId> =
            self.peers_of(s).into_iter().map(|p| self.nodes[p].id).filter(|id| set.contains(id)).collect();
        if set.contains(&self.nodes[s].id) {
            active.insert(self.nodes[s].id);
        }
        let met = active.len() >= required_active(set.len(), MIN_ACTIVE);
        if met == self.nodes[s].quorum {
            return Vec::new();
        }
        self.nodes[s].quorum = met;
        self.log(1 << s, None, true, |w| format!("{} quorum {}", w.name(s), if met { "met" } else { "lost" }));
        self.handle(s, Input::Quorum(met))
    }

    /// The plan's current member change as node `s` approves it, if it is one of
    /// those who approve it (a member for a vote, the member itself for an
    /// address) and its chain does not already hold it.
    fn planned_change(&self, s: usize) -> Option<Change> {
        let node = &self.nodes[s];
        let &(from, planned) = self.plan.changes.get(self.next_change)?;
        if !node.honest || !node.up || (node.store.chain.len() as u64) < from {
            return None;
        }
        let m = node.core.as_ref()?.membership();
        let change = match planned {
            Planned::Add(k) => {
                let id = self.key_ids[k];
                (!m.next().contains(&id)).then_some(Change::Add { id, addr: joiner_addr(k) })?
            }
            Planned::Remove(k) => {
                let id = self.key_ids[k];
                m.next().contains(&id).then_some(Change::Remove { id })?
            }
            Planned::SetAddr(k, port) => {
                let id = self.key_ids[k];
                let info = m.next().get(&id).filter(|_| id == node.id)?;
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                (info.addr != addr).then_some(Change::SetAddr { id, addr, seq: info.addr_seq + 1 })?
            }
        };
        if change.needs_vote() && !m.current().contains(&node.id) {
            return None;
        }
        let on_chain = m.state().pending.get(&change).is_some_and(|a| a.contains_key(&node.id));
        let pooled = node.pool.iter().any(|sa| sa.approval.change == change && sa.approval.approver == node.id);
        (!on_chain && !pooled).then_some(change)
    }

    /// An honest node approves the plan's current member change, as an operator
    /// asks it to (again after its approval expired or a crash lost its pool):
    /// signed at its tip, checked as the next block would, pooled and gossiped.
    fn maybe_approve(&mut self, s: usize) {
        let Some(change) = self.planned_change(s) else { return };
        let node = &self.nodes[s];
        let signed_at = node.store.chain.len() as u64;
        let sa = Approval { change, approver: node.id, signed_at }.sign(&NET, &node.identity);
        let Some(core) = node.core.as_ref() else { return };
        if core.membership().check(&sa, &NET).is_err() || !self.nodes[s].pool.add(sa.clone()) {
            return;
        }
        self.log(1 << s, None, true, |w| {
            format!("{} approves: {} (signed at {signed_at})", w.name(s), w.change_text(&sa.approval.change))
        });
        self.broadcast(s, Wire::Approval(sa));
    }

    /// A member change with the simulation's names for its members.
    fn change_text(&self, c: &Change) -> String {
        let name = |id: &NodeId| (self.checker.label)(id);
        match c {
            Change::Add { id, addr } => format!("add {} at {addr}", name(id)),
            Change::Remove { id } => format!("remove {}", name(id)),
            Change::SetAddr { id, addr, seq } => format!("move {} to {addr} (seq {seq})", name(id)),
            Change::Upgrade { .. } => c.to_string(),
        }
    }

    /// The chain (its first honest commit of a height) completed `completed`:
    /// the adversary learns the sets, and the plan moves to its next change.
    fn on_chain_completed(&mut self, completed: &[Completed]) {
        if completed.is_empty() {
            return;
        }
        self.adv.set_members(self.checker.sets());
        let Some(&(_, planned)) = self.plan.changes.get(self.next_change) else { return };
        let done = completed.iter().any(|c| match (planned, &c.change) {
            (Planned::Add(k), Change::Add { id, .. }) | (Planned::Remove(k), Change::Remove { id }) => {
                *id == self.key_ids[k]
            }
            (Planned::SetAddr(k, port), Change::SetAddr { id, addr, .. }) => {
                *id == self.key_ids[k] && addr.port() == port
            }
            _ => false,
        });
        if !done {
            return;
        }
        self.log(u32::MAX, None, true, |_| format!("planned member change done: {}", describe_planned(&planned)));
        self.next_change += 1;
        for s in 0..self.nodes.len() {
            self.maybe_approve(s);
        }
    }

    /// Carries out what changed in connectivity: the quorum gate of every node,
    /// then each new connection's replay of own messages and tips.
    fn apply_links(&mut self, before: &[Vec<bool>]) {
        let n = self.nodes.len();
        for s in 0..n {
            if !self.nodes[s].up {
                continue;
            }
            let out = self.gate(s);
            self.drive(s, out, None);
        }
        for (a, row) in before.iter().enumerate() {
            for (b, was) in row.iter().enumerate() {
                if !was && self.connected(a, b) {
                    self.link_up(a, b);
                }
            }
        }
    }

    /// `a` sees `b` connect.
    fn link_up(&mut self, a: usize, b: usize) {
        if !self.nodes[a].up || !self.nodes[b].up {
            return;
        }
        let own = self.core(a).own_messages();
        for m in own {
            self.send_signed(a, &[b], m);
        }
        // Approvals waiting for a block: the peer may propose the next one.
        let pooled: Vec<SignedApproval> = self.nodes[a].pool.iter().cloned().collect();
        for sa in pooled {
            self.send(a, b, Wire::Approval(sa), 0);
        }
        let tip = self.nodes[b].store.chain.len() as u64;
        self.note_tip(a, b, tip);
        self.maybe_sync(a);
        if !self.nodes[a].honest && self.nodes[b].honest && self.nodes[b].booted_at == self.now && self.now > START_MS {
            let target = &self.nodes[b];
            let h = target.store.chain.len() as u64 + 1;
            let lock = target.store.lock.as_ref().filter(|l| l.block.height() == h).map(|l| (l.round, l.block.hash()));
            let last = target.store.last_signed.filter(|r| r.height == h);
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
    }

    /// Sends a message this slot's own core signed (or re-sends it).
    fn send_signed(&mut self, s: usize, to: &[usize], m: Signed) {
        if self.nodes[s].honest {
            for &t in to {
                self.send(s, t, Wire::Signed(m.clone()), 0);
            }
        } else {
            let me = self.nodes[s].identity.clone();
            let sends = self.adv.own_sign(&me, m, to);
            self.exec(s, sends);
        }
    }

    fn exec(&mut self, from: usize, sends: Vec<Send>) {
        for Send { to, msg, extra_delay, genuine } in sends {
            if let (true, Wire::Signed(m)) = (genuine, &msg) {
                self.adv.record(m);
                self.checker.observe(m);
            }
            self.send(from, to, msg, extra_delay);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Wire, extra_delay: u64) {
        if !self.connected(from, to) || (self.loss > 0 && self.rng.chance(self.loss)) {
            return;
        }
        let (lo, hi) = self.plan.delay_ms;
        let t = self.now + self.rng.range(lo, hi) + extra_delay;
        let epochs = (self.nodes[from].epoch, self.nodes[to].epoch);
        self.at(t, Event::Deliver { from, to, epochs, msg });
    }

    fn broadcast(&mut self, s: usize, msg: Wire) {
        for t in self.peers_of(s) {
            self.send(s, t, msg.clone(), 0);
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Wire) {
        match msg {
            Wire::Signed(m) => {
                self.log(1 << from | 1 << to, Some(record_of(&m).height), false, |w| {
                    format!("{} -> {}: {}", w.name(from), w.name(to), describe(&m))
                });
                if !self.nodes[to].honest {
                    let me = self.nodes[to].identity.clone();
                    let peers = self.peers_of(to);
                    let sends = self.adv.on_receive(&me, &m, &peers);
                    self.exec(to, sends);
                }
                let out = self.handle(to, input_of(m));
                self.drive(to, out, Some(from));
            }
            Wire::Tip(h) => {
                self.note_tip(to, from, h);
                self.maybe_sync(to);
            }
            Wire::SyncRequest { from_height, req } => {
                let chain = &self.nodes[to].store.chain;
                let honest: Vec<Committed> =
                    chain.iter().skip(from_height.saturating_sub(1) as usize).take(SYNC_BATCH).cloned().collect();
                let blocks = if self.nodes[to].honest {
                    honest
                } else {
                    let me = self.nodes[to].identity.clone();
                    let chain = self.nodes[to].store.chain.clone();
                    self.adv.sync_reply(&me, from_height, &chain).unwrap_or(honest)
                };
                self.send(to, from, Wire::SyncReply { req, blocks }, 0);
            }
            Wire::SyncReply { req, blocks } => {
                if self.nodes[to].syncing.map(|s| s.0) != Some(req) {
                    return;
                }
                self.nodes[to].syncing = None;
                self.log(1 << from | 1 << to, None, false, |w| {
                    format!("{} -> {}: {} block(s) for sync", w.name(from), w.name(to), blocks.len())
                });
                if blocks.is_empty() {
                    self.penalize(to, from);
                }
                for c in blocks {
                    let before = self.core(to).height();
                    let out = self.handle(to, Input::Commit(c));
                    self.drive(to, out, Some(from));
                    if !self.nodes[to].up || self.checker.violation.is_some() {
                        return;
                    }
                    if self.core(to).height() == before {
                        self.penalize(to, from);
                        break;
                    }
                }
                self.maybe_sync(to);
            }
            Wire::Approval(sa) => {
                // Held already: what the pool would refuse, without checking a signature again.
                let a = &sa.approval;
                if self.nodes[to]
                    .pool
                    .iter()
                    .any(|p| p.approval.approver == a.approver && p.approval.change == a.change)
                {
                    return;
                }
                // Kept and passed on once if the next block could carry it.
                if self.core(to).membership().check(&sa, &NET).is_ok() && self.nodes[to].pool.add(sa.clone()) {
                    self.broadcast(to, Wire::Approval(sa));
                }
            }
        }
    }

    fn tick(&mut self, s: usize) {
        let (h, r) = {
            let c = self.core(s);
            (c.height(), c.round())
        };
        let node = &mut self.nodes[s];
        if h != node.last_height_seen.0 {
            node.last_height_seen = (h, self.now);
        } else if self.now - node.last_height_seen.1 >= REBROADCAST_AFTER_MS && node.quorum {
            node.last_height_seen.1 = self.now;
            let own = self.core(s).relay_messages();
            self.log(1 << s, None, false, |w| format!("{} re-sends {} messages it holds", w.name(s), own.len()));
            let peers = self.peers_of(s);
            for m in own {
                self.send_signed(s, &peers, m);
            }
        }
        if !self.nodes[s].honest {
            let me = self.nodes[s].identity.clone();
            let peers = self.peers_of(s);
            let sends = self.adv.tick(&me, h, r, &peers);
            self.exec(s, sends);
        }
    }

    /// `RewindLock`: node `s` just locked; if an older polka for another value
    /// exists, crash it now and restart it cut off from the others that prevoted
    /// its lock (they would show it the polka again).
    fn maybe_rewind(&mut self, s: usize, lock: &Lock) {
        let (h, round, value) = (lock.block.height(), lock.round, lock.block.hash());
        if self.calm_base.is_some() || self.rewinds >= 4 || !self.adv.rewind_target(h, round, value) {
            return;
        }
        self.rewinds += 1;
        self.log(1 << s, Some(h), true, |w| {
            format!("{} locked above an older polka: the scheduler rewinds it", w.name(s))
        });
        // Byzantine slots precommit the lock's value to the others that prevoted
        // it, so that they may decide it.
        let voters = self.adv.prevoters(h, round, value);
        let me = self.nodes[s].id;
        for b in 0..self.nodes.len() {
            if !self.nodes[b].honest && self.nodes[b].up {
                let m = Signed::Vote(precommit(h, round, Some(value), &self.nodes[b].identity));
                let sends = self
                    .peers_of(b)
                    .into_iter()
                    .filter(|p| self.nodes[*p].id != me && voters.contains(&self.nodes[*p].id))
                    .map(|to| Send { to, msg: Wire::Signed(m.clone()), extra_delay: 0, genuine: true })
                    .collect();
                self.exec(b, sends);
            }
        }
        self.at(self.now + 1, Event::Fault(Fault::Crash(s)));
        // The partition comes once what is in flight has arrived.
        let cut = self.now + self.plan.delay_ms.1 + 1;
        self.at(cut, Event::Rewind { node: s, height: h, round, value });
    }

    /// The second half of a rewind: the node restarts cut off from every honest
    /// node that prevoted its lock's value (they would show it the polka again).
    fn rewind(&mut self, s: usize, h: Height, round: Round, value: Hash) {
        if self.calm_base.is_some() {
            return;
        }
        let voters = self.adv.prevoters(h, round, value);
        let me = self.nodes[s].id;
        let groups: Vec<u8> =
            self.nodes.iter().map(|n| u8::from(n.honest && n.id != me && voters.contains(&n.id))).collect();
        self.log(u32::MAX, None, true, |_| describe_fault(&Fault::Partition(groups.clone())));
        self.fault(Fault::Partition(groups));
        let restart = self.now + self.rng.range(200, 3_000);
        let heal = restart + self.rng.range(2_000, 15_000);
        self.at(restart, Event::Fault(Fault::Restart(s)));
        self.at(heal, Event::Fault(Fault::Heal));
    }

    fn note_tip(&mut self, s: usize, peer: usize, h: Height) {
        let node = &mut self.nodes[s];
        if node.penalty.get(&peer).is_some_and(|until| self.now < *until) {
            return;
        }
        let e = node.peer_tips.entry(peer).or_insert(0);
        *e = (*e).max(h);
    }

    fn penalize(&mut self, s: usize, peer: usize) {
        let node = &mut self.nodes[s];
        node.peer_tips.remove(&peer);
        node.penalty.insert(peer, self.now + SYNC_PENALTY_MS);
    }

    fn maybe_sync(&mut self, s: usize) {
        if self.nodes[s].syncing.is_some() || !self.nodes[s].up {
            return;
        }
        let our_tip = self.core(s).height() - 1;
        let node = &self.nodes[s];
        let Some((&peer, &their_tip)) = node.peer_tips.iter().max_by_key(|(_, h)| **h) else { return };
        if their_tip <= our_tip {
            return;
        }
        let req = self.next_req;
        self.next_req += 1;
        self.nodes[s].syncing = Some((req, peer));
        let epoch = self.nodes[s].epoch;
        self.send(s, peer, Wire::SyncRequest { from_height: our_tip + 1, req }, 0);
        self.at(self.now + SYNC_TIMEOUT_MS, Event::SyncTimeout { node: s, epoch, req });
    }

    /// Carries out a core's outputs in order, as the producer's `drive` does.
    fn drive(&mut self, s: usize, outputs: Vec<Output>, from: Option<usize>) {
        let mut work: VecDeque<Effect> = effects(outputs).into();
        while let Some(e) = work.pop_front() {
            if !self.nodes[s].up || self.checker.violation.is_some() {
                return;
            }
            match e {
                Effect::Sign { record, message, lock } => {
                    let node = &mut self.nodes[s];
                    node.store.last_signed = Some(record);
                    node.store.own.insert(record, message.clone());
                    if let Some(l) = &lock {
                        node.store.lock = Some(l.clone());
                    }
                    let honest = node.honest;
                    self.log(1 << s, Some(record.height), true, |w| {
                        let lock = lock.as_ref().map_or(String::new(), |l| {
                            format!(", lock (round {}, {})", l.round, l.block.hash().short())
                        });
                        format!("{} signs {}{lock}", w.name(s), describe(&message))
                    });
                    if honest {
                        self.checker.on_sign(&message, lock.as_ref());
                        if let Some(l) = &lock {
                            self.maybe_rewind(s, l);
                        }
                    } else {
                        self.checker.observe(&message);
                    }
                    if self.nodes[s].crash_after_persist {
                        self.crash(s);
                        return;
                    }
                    self.adv.record(&message);
                    let peers = self.peers_of(s);
                    self.send_signed(s, &peers, message);
                }
                Effect::Schedule { timeout, after_ms } => {
                    let epoch = self.nodes[s].epoch;
                    self.at(self.now + after_ms, Event::Timer { node: s, epoch, timeout });
                }
                Effect::NeedValue { height, round } => {
                    if !self.nodes[s].honest {
                        let me = self.nodes[s].identity.clone();
                        if let Some(messages) = self.adv.need_value(&me, height, round) {
                            self.log(1 << s, Some(height), true, |w| {
                                format!("{} re-proposes: {}", w.name(s), describe(&messages[0]))
                            });
                            let peers = self.peers_of(s);
                            let mut sends = Vec::new();
                            for m in messages {
                                for &to in &peers {
                                    sends.push(Send {
                                        to,
                                        msg: Wire::Signed(m.clone()),
                                        extra_delay: 0,
                                        genuine: true,
                                    });
                                }
                            }
                            self.exec(s, sends);
                            continue;
                        }
                    }
                    let txs = vec![format!("tx {} h{height} r{round}", self.nodes[s].label).into_bytes()];
                    let node = &self.nodes[s];
                    let Some(membership) = node.core.as_ref().map(|c| c.membership()) else { return };
                    let mut changes = membership.select(node.pool.iter(), &NET);
                    if !node.honest {
                        if let Some((bad, at)) = self.adv.bad_changes(&node.identity, membership, &changes) {
                            let why = self.trace.is_some().then(|| membership.validate(&bad, &NET).err()).flatten();
                            let forged = bad[at].approval.clone();
                            self.log(1 << s, Some(height), true, |w| {
                                let why = why.map_or("valid after all".into(), |(i, e)| format!("#{i} refused: {e}"));
                                let by = (w.checker.label)(&forged.approver);
                                format!(
                                    "{} proposes {} approvals with #{at} invalid: {} by {by} signed at {} ({why})",
                                    w.name(s),
                                    bad.len(),
                                    w.change_text(&forged.change),
                                    forged.signed_at
                                )
                            });
                            changes = bad;
                        }
                    }
                    let out = self.handle(s, Input::Value { height, round, txs, changes });
                    work.extend(effects(out));
                }
                Effect::Decided { committed: c, membership, completed } => {
                    let node = &mut self.nodes[s];
                    let prev =
                        node.store.chain.last().map_or((0, genesis_hash(&NET)), |p| (p.block.height(), p.block.hash()));
                    let h = c.block.height();
                    let chain_completed = if node.honest {
                        let id = node.id;
                        self.checker.on_commit(id, &c, prev, &membership)
                    } else {
                        Vec::new()
                    };
                    self.log(1 << s, Some(h), true, |w| {
                        format!("{} commits height {h} {} (round {})", w.name(s), c.block.hash().short(), c.cert.round)
                    });
                    for done in &completed {
                        self.log(1 << s, Some(h), true, |w| {
                            format!(
                                "{} sees member change completed: {} (in force at {})",
                                w.name(s),
                                w.change_text(&done.change),
                                done.in_force
                            )
                        });
                    }
                    let node = &mut self.nodes[s];
                    node.store.chain.push(c);
                    node.store.membership = Some(membership);
                    node.store.own.retain(|r, _| r.height > h);
                    if !node.pool.is_empty() {
                        let Some(core) = node.core.as_ref() else { return };
                        node.pool.retain_valid(core.membership(), &NET);
                    }
                    self.broadcast(s, Wire::Tip(h));
                    // The gate counts the new height's set.
                    let out = self.gate(s);
                    work.extend(effects(out));
                    self.on_chain_completed(&chain_completed);
                    self.maybe_approve(s);
                    self.check_finished();
                }
                Effect::Misbehaviour { node, what } => {
                    self.log(1 << s, None, false, |w| {
                        let who = node.map(|n| n.short()).unwrap_or_else(|| "nobody".into());
                        format!("{} reports misbehaviour of {who}: {what}", w.name(s))
                    });
                }
                Effect::Ahead { node, height } => {
                    let peer = from
                        .filter(|f| self.nodes[*f].id == node)
                        .or_else(|| self.peers_of(s).into_iter().find(|p| self.nodes[*p].id == node));
                    if let Some(peer) = peer {
                        self.note_tip(s, peer, height.saturating_sub(1));
                        self.maybe_sync(s);
                    }
                }
            }
        }
    }
}
