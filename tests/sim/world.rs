//! The simulated world: whole nodes on a network with virtual time, driven by one
//! event queue ordered by time and a seeded RNG.
//!
//! A node is the library's own producer driver (`chain::driver::Driver`, the
//! rules `chain/producer.rs` carries out) with a simulated store. The world is
//! the shell around each driver, as `producer.rs` is around the real one:
//!
//! * inputs go in through the driver's `handle_*` with the node's clocks
//!   (`mono_ms` the virtual time, `wall_ms` the virtual time plus the node's
//!   clock offset), and every effect the driver then hands out is carried out
//!   in order ([`effects`]): `Persist` and `Commit` go to the store at once
//!   (what a write returned for survives a crash); `Broadcast`, `Send`,
//!   requests and answers become network events;
//! * `poll_timeout` sets the node's next wake-up, when `handle_timeout` runs;
//! * a node starts (and restarts after a crash) from what its store holds, as
//!   `Node::start` builds the core and the driver ([`boot`]);
//! * the transport's view goes in as it changes ([`network`]): the connected
//!   set and wire versions, a peer up with the tip its handshake claims, a
//!   peer down (its requests fail); two nodes are connected only while each
//!   one's transport admits the other's key (`Effect::SetMembers`), so a
//!   joiner meets the members once its `Add` is committed and a removed
//!   member is cut off;
//! * honest members approve the plan's member changes through
//!   `handle_change`, as an operator's `POST /members` does, and their clients
//!   submit transactions through `handle_submit`.
//!
//! Byzantine slots run a driver too, and the adversary rewrites what it sends
//! ([`super::adversary`]).

mod checkpoint;
mod effects;
mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

use super::adversary::Adversary;
use super::checker::{Checker, Violation};
use super::core_api::*;
use super::plan::{describe_planned, Calm, Fault, Plan, Planned, Restore};
use super::resources::{self, Served};
use super::rng::Rng;
use super::store::Store;

pub const START_MS: u64 = 1_000_000;
/// How often a Byzantine slot's adversary acts unprompted.
const MISCHIEF_MS: u64 = 1_000;
/// Time after calm for each member change due then and not yet done.
const CHANGE_WINDOW_MS: u64 = 20_000;
/// A scenario that runs this many steps per minute of its window after calm
/// is a message storm, not a test. Per minute: a slow network's window is ten
/// minutes, and Byzantine slots that keep attacking once calm flood every
/// peer each second all through it (seed 5439: two flooders of seven under
/// 1.2 to 3 s delays run about 3,000 steps a virtual second, two thirds of
/// them their own floods, and needed more than 600,000 steps in all).
const STEPS_PER_WINDOW_MINUTE: u64 = 600_000;
/// Gossip frames a node fetching a checkpoint keeps for its driver, at most
/// (the real inbox bounds bytes per peer and then stops reading; the
/// simulation's fetches take seconds, far from either).
const EARLY_FRAMES: usize = 4_096;

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
        Fault::Wipe(s, Restore::Named) => {
            format!("crash {} and wipe its data dir (it restarts from a named checkpoint)", letter(*s))
        }
        Fault::Wipe(s, Restore::Peers) => {
            format!("crash {} and wipe its data dir (it restarts from a checkpoint of its peers)", letter(*s))
        }
    }
}

/// The keys a node's transport admits at start, as `Node::start` hands them
/// to it: the sets in force and next of its stored membership, and its
/// `bootstrap` peers.
fn transport_set(d: &Driver, setup: &Setup) -> BTreeSet<NodeId> {
    let chain = d.core().membership().reachable().into_iter().map(|(id, _)| id);
    chain.chain(setup.bootstrap.iter().map(|(id, _)| *id)).collect()
}

fn groups_text(g: &[u8]) -> String {
    let max = g.iter().copied().max().unwrap_or(0);
    let parts: Vec<String> = (0..=max)
        .map(|k| g.iter().enumerate().filter(|(_, x)| **x == k).map(|(i, _)| letter(i).to_string()).collect())
        .filter(|s: &String| !s.is_empty())
        .collect();
    parts.join("|")
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

/// A request this node made that waits for its answer.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Blocks { peer: NodeId, slot: usize },
    Txs { peer: NodeId, slot: usize, height: Height, round: Round },
    Checkpoint { peer: NodeId, slot: usize },
}

impl Pending {
    fn slot(&self) -> usize {
        match self {
            Pending::Blocks { slot, .. } | Pending::Txs { slot, .. } | Pending::Checkpoint { slot, .. } => *slot,
        }
    }
}

/// A peer's request this node is answering.
#[derive(Debug, Clone, Copy)]
struct Serving {
    requester: usize,
    req: u64,
    epoch: u64,
}

/// Why a request failed without an answer.
#[derive(Debug, Clone, Copy)]
enum Failed {
    Timeout,
    Connection,
}

pub struct Node {
    label: String,
    identity: Arc<Identity>,
    id: NodeId,
    honest: bool,
    up: bool,
    /// Stopped for good before a height it cannot run (`Effect::Halt`).
    halted: bool,
    epoch: u64,
    driver: Option<Driver>,
    store: Store,
    crash_after_persist: bool,
    booted_at: u64,
    /// Its wall clock minus the virtual time.
    skew_ms: i64,
    /// The wake-up scheduled for the driver's next deadline.
    wake_at: Option<u64>,
    pending: BTreeMap<u64, Pending>,
    /// The request of the live fetch of each compact proposal.
    fetches: BTreeMap<(Height, Round), u64>,
    serving: BTreeMap<u64, Serving>,
    next_serving: u64,
    /// The slots its driver was told are connected.
    linked: BTreeSet<usize>,
    /// The keys its transport admits, as its driver last handed them
    /// (`Effect::SetMembers`, or at start the set `Node::start` hands the
    /// transport); `None`: anyone (the bootstrap peer with another history).
    admits: Option<BTreeSet<NodeId>>,
    /// Client transactions submitted so far.
    submitted: u64,
    /// Its core's height and round after the input whose effects are being
    /// carried out.
    at: Option<(Height, Round)>,
    /// The bootstrap peer with another history: no driver; the world answers
    /// for it from its store.
    fork: bool,
    /// Its data dir was wiped: its next start is from a checkpoint.
    restore: Option<Restore>,
    /// Fetching a checkpoint (up, no driver yet), as `fetch_checkpoint` does.
    fetch: Option<CheckpointFetch>,
    /// The peers still to ask in this round of the fetch.
    asking: Vec<usize>,
    /// Gossip that came while it fetched a checkpoint: the real node's
    /// transport runs during the fetch and its inbox keeps what peers send
    /// (bounded, [`EARLY_FRAMES`]) for the driver built after it, as the
    /// copies of its own key's messages a peer sends when it connects.
    early: Vec<(usize, Bytes)>,
    /// The checkpoint it started from: its store's first block, ever since.
    started_from: Option<(Height, Hash)>,
    /// Its data dir was wiped once: it runs the doppelganger watch.
    wiped: bool,
}

// Sizes do not matter here: events live in one queue of a few thousand.
#[allow(clippy::large_enum_variant)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        epochs: (u64, u64),
        body: Bytes,
        /// The network delivering an old frame again ([`World::replay`]).
        replayed: bool,
    },
    Request {
        from: usize,
        to: usize,
        epochs: (u64, u64),
        req: u64,
        body: Bytes,
    },
    Answer {
        from: usize,
        to: usize,
        epochs: (u64, u64),
        req: u64,
        result: Result<Bytes, Refusal>,
    },
    RequestFailed {
        node: usize,
        epoch: u64,
        req: u64,
        why: Failed,
    },
    Wake {
        node: usize,
        epoch: u64,
        at: u64,
    },
    Mischief {
        node: usize,
        epoch: u64,
    },
    Client {
        node: usize,
        epoch: u64,
    },
    Fault(Fault),
    Calm,
    Deadline,
    Rewind {
        node: usize,
        height: Height,
        round: Round,
        value: Hash,
    },
    /// The network delivers an old consensus message again.
    Replay,
    /// A node fetching a checkpoint asks its next peer.
    AskCheckpoint {
        node: usize,
        epoch: u64,
    },
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
    setup: Setup,
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
    logs: Option<Sink>,
    /// Every key a slot runs (for the mempool's shares).
    slot_ids: Vec<NodeId>,
    served: Served,
    /// Consensus frames that crossed the network, for replays: (sender, body).
    seen: Vec<(usize, Bytes)>,
    /// A transport's admitted keys changed: connectivity is recomputed once
    /// the input that changed them is carried out.
    relink: bool,
}

/// Where the drivers' log lines go while a traced scenario runs.
#[derive(Clone, Default)]
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn run(plan: &Plan, opts: &RunOpts) -> Outcome {
    if !opts.trace {
        return run_scenario(plan, opts, None);
    }
    // The drivers' own log lines (debug and above) join the trace.
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(true)
        .finish();
    tracing::subscriber::with_default(subscriber, || run_scenario(plan, opts, Some(sink)))
}

fn run_scenario(plan: &Plan, opts: &RunOpts, logs: Option<Sink>) -> Outcome {
    let mut w = World::new(plan, opts.trace);
    w.logs = logs;
    for s in 0..w.nodes.len() {
        w.boot(s);
    }
    w.apply_links();
    for (t, f) in plan.faults.clone() {
        w.at(START_MS + t, Event::Fault(f));
    }
    w.at(START_MS + plan.calm_at, Event::Calm);
    if let Some(every) = plan.replay_every_ms {
        w.at(START_MS + every, Event::Replay);
    }
    let step_limit = STEPS_PER_WINDOW_MINUTE * plan.window_ms.div_ceil(60_000).max(1);
    while let Some(((t, _), ev)) = w.queue.pop_first() {
        w.now = t;
        w.steps += 1;
        w.step(ev);
        if w.checker.violation.is_some() || w.finished || opts.max_steps.is_some_and(|m| w.steps >= m) {
            break;
        }
        if w.steps >= step_limit {
            w.checker.progress_failed(Vec::new(), format!("{step_limit} steps without finishing: a message storm"));
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
        let mut rng = Rng::new(plan.seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let adv_rng = rng.fork();
        let mut nodes = Vec::new();
        for s in 0..plan.slots() {
            let fork = plan.fork_slot() == Some(s);
            let key = plan.key_of(s);
            let honest = !fork && !plan.byzantine.contains(&key);
            let mut label = letter(key).to_string();
            if !honest {
                label.push('*');
            }
            if s >= plan.keys() {
                label.push('\'');
            }
            let identity = if fork { outsider() } else { ids[key].clone() };
            if fork {
                label = "X".into();
            }
            let skew = if honest {
                rng.range(0, 2 * plan.honest_skew_ms) as i64 - plan.honest_skew_ms as i64
            } else {
                plan.byzantine_skew_ms
            };
            nodes.push(Node {
                label,
                id: identity.id(),
                identity,
                honest,
                up: false,
                halted: false,
                epoch: 0,
                driver: None,
                store: Store::default(),
                crash_after_persist: false,
                booted_at: 0,
                skew_ms: skew,
                wake_at: None,
                pending: BTreeMap::new(),
                fetches: BTreeMap::new(),
                serving: BTreeMap::new(),
                next_serving: 0,
                linked: BTreeSet::new(),
                admits: Some(BTreeSet::new()),
                submitted: 0,
                at: None,
                fork,
                restore: None,
                fetch: None,
                asking: Vec::new(),
                early: Vec::new(),
                started_from: None,
                wiped: false,
            });
            if fork {
                nodes[s].store.chain = other_history(60);
            }
        }
        let honest: BTreeSet<NodeId> =
            (0..plan.keys()).filter(|i| !plan.byzantine.contains(i)).map(|i| key_ids[i]).collect();
        let names: BTreeMap<NodeId, String> = (0..plan.keys())
            .map(|i| (key_ids[i], format!("{}{}", letter(i), if plan.byzantine.contains(&i) { "*" } else { "" })))
            .collect();
        let label = Box::new(move |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.short()));
        let genesis = genesis(&members, plan.v4_from);
        let bootstrap = if plan.fork_peer { vec![(outsider().id(), outsider_addr())] } else { Vec::new() };
        let setup =
            Setup { genesis: genesis.clone(), limits: plan.limits.block, node_limits: plan.limits.node, bootstrap };
        let slot_ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let mut checker = Checker::new(genesis, honest, label);
        checker.honest_skew_ms = plan.honest_skew_ms;
        let mempool = plan.limits.node.mempool;
        World {
            rng,
            now: START_MS,
            seq: 0,
            queue: BTreeMap::new(),
            groups: vec![0; nodes.len()],
            nodes,
            loss: 0,
            setup,
            key_ids,
            next_change: 0,
            due_changes: 0,
            checker,
            adv: Adversary::new(plan.strategies.clone(), members, adv_rng, plan.limits.block, mempool),
            trace: trace.then(Vec::new),
            steps: 0,
            calm_base: None,
            finished: false,
            next_req: 0,
            rewinds: 0,
            logs: None,
            slot_ids,
            served: Served::default(),
            seen: Vec::new(),
            relink: false,
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

    fn name(&self, s: usize) -> String {
        self.nodes[s].label.clone()
    }

    /// Node `s`'s clocks now.
    fn clock(&self, s: usize) -> Now {
        Now { mono_ms: self.now, wall_ms: self.now.saturating_add_signed(self.nodes[s].skew_ms) }
    }

    fn driver(&self, s: usize) -> Option<&Driver> {
        self.nodes[s].driver.as_ref()
    }

    /// The height node `s` is deciding (its tip + 1 while it is down).
    fn height_of(&self, s: usize) -> Height {
        self.driver(s).map_or(self.nodes[s].store.tip() + 1, |d| d.height())
    }

    /// Hands node `s`'s driver one input, then carries out what it decided and
    /// sets its next wake-up.
    fn input(&mut self, s: usize, f: impl FnOnce(&mut Driver, Now)) {
        let now = self.clock(s);
        let Some(d) = self.nodes[s].driver.as_mut() else { return };
        f(d, now);
        self.take_logs(s);
        self.nodes[s].at = self.driver(s).map(|d| (d.height(), d.core().round()));
        self.carry_out(s);
        self.arm(s);
        self.check_resources(s);
        if std::mem::take(&mut self.relink) {
            self.apply_links();
        }
    }

    /// Node `s`'s driver within every budget ([`resources`]).
    fn check_resources(&mut self, s: usize) {
        let Some(d) = self.nodes[s].driver.as_ref() else { return };
        let bootstrap: Vec<NodeId> = self.setup.bootstrap.iter().map(|(id, _)| *id).collect();
        if let Some(detail) = resources::breach(d, &self.plan.limits, &self.slot_ids, &bootstrap) {
            let id = self.nodes[s].id;
            self.checker.resources_failed(id, detail);
        }
    }

    /// The log lines node `s`'s driver wrote, into the trace.
    fn take_logs(&mut self, s: usize) {
        let Some(sink) = &self.logs else { return };
        let bytes = std::mem::take(&mut *sink.0.lock().unwrap_or_else(|e| e.into_inner()));
        if bytes.is_empty() {
            return;
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            let line = line.trim().to_string();
            let key = line.starts_with("WARN") || line.starts_with("ERROR");
            self.log(1 << s, None, key, |w| format!("{} log: {line}", w.name(s)));
        }
    }

    /// Schedules the node's wake-up for its driver's next deadline, unless one
    /// as early is scheduled.
    fn arm(&mut self, s: usize) {
        let Some(t) = self.driver(s).and_then(|d| d.poll_timeout()) else { return };
        if self.nodes[s].wake_at.is_some_and(|w| w <= t) {
            return;
        }
        let at = t.max(self.now);
        self.nodes[s].wake_at = Some(at);
        let epoch = self.nodes[s].epoch;
        self.at(at, Event::Wake { node: s, epoch, at });
    }

    fn step(&mut self, ev: Event) {
        match ev {
            Event::Deliver { from, to, epochs, body, replayed } => {
                // What was sent arrives even if its sender died since; not at a
                // receiver that restarted (a new connection) or across a partition.
                if self.reaches(from, to, epochs.1) {
                    self.received(from, to, &body, replayed);
                    self.deliver(from, to, body);
                }
            }
            Event::Request { from, to, epochs, req, body } => {
                if self.reaches(from, to, epochs.1) {
                    self.serve(from, to, epochs.0, req, body);
                }
            }
            Event::Answer { from, to, epochs, req, result } => {
                if self.reaches(from, to, epochs.1) {
                    self.answered(to, req, Ok(result));
                }
            }
            Event::RequestFailed { node, epoch, req, why } => {
                if self.nodes[node].up && self.nodes[node].epoch == epoch {
                    self.answered(node, req, Err(why));
                }
            }
            Event::Wake { node, epoch, at } => {
                let n = &mut self.nodes[node];
                if n.epoch != epoch || !n.up || n.wake_at != Some(at) {
                    return;
                }
                n.wake_at = None;
                let now = self.now;
                if self.driver(node).and_then(|d| d.poll_timeout()).is_some_and(|t| t <= now) {
                    self.input(node, |d, now| d.handle_timeout(now));
                } else {
                    self.arm(node);
                }
            }
            Event::Mischief { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    self.at(self.now + MISCHIEF_MS, Event::Mischief { node, epoch });
                    self.mischief(node);
                }
            }
            Event::Client { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    let next = self.now + self.rng.range(500, 3_000);
                    self.at(next, Event::Client { node, epoch });
                    self.submit(node);
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
            Event::Deadline => self.deadline(),
            Event::Replay => self.replay(),
            Event::AskCheckpoint { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    self.ask_checkpoint(node);
                }
            }
        }
    }

    fn deadline(&mut self) {
        if self.finished {
            return;
        }
        let base = self.calm_base.unwrap_or(0);
        let mut lagging = Vec::new();
        let mut state = Vec::new();
        for (s, n) in self.nodes.iter().enumerate() {
            if n.honest && self.checker.names(&n.id) {
                let d = self.driver(s);
                state.push(format!(
                    "{} at height {} round {}",
                    n.label,
                    self.height_of(s),
                    d.map_or(0, |d| d.core().round())
                ));
                if n.store.tip() < base + 2 {
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

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Crash(s) => {
                if self.nodes[s].up {
                    self.crash(s);
                }
            }
            Fault::CrashAfterPersist(s) => self.nodes[s].crash_after_persist = self.nodes[s].up,
            Fault::Restart(s) => {
                if !self.nodes[s].up && !self.nodes[s].halted {
                    self.boot(s);
                }
            }
            Fault::Partition(g) => self.groups = g,
            Fault::Heal => self.groups = vec![0; self.nodes.len()],
            Fault::Loss(p) => self.loss = p,
            Fault::Wipe(s, restore) => {
                if self.nodes[s].up {
                    self.crash(s);
                }
                if self.healthy_tip(s).is_none() {
                    self.log(1 << s, None, true, |w| {
                        format!("no block to start {} from yet: its data dir stays", w.name(s))
                    });
                    return self.apply_links();
                }
                let node = &mut self.nodes[s];
                node.store = Store::default();
                node.restore = Some(restore);
                node.started_from = None;
                node.wiped = true;
                let id = node.id;
                self.checker.on_wipe(id);
            }
        }
        self.apply_links();
    }

    fn calm(&mut self) {
        self.log(u32::MAX, None, true, |_| {
            "calm: partitions healed, no loss, crashed nodes restart, Byzantine slots stop".into()
        });
        self.groups = vec![0; self.nodes.len()];
        self.loss = 0;
        self.adv.active = self.plan.calm == Calm::Attacking && !self.plan.strategies.is_empty();
        for s in 0..self.nodes.len() {
            self.nodes[s].crash_after_persist = false;
            let node = &self.nodes[s];
            let twin = s >= self.plan.keys() && !node.fork;
            if node.honest && !node.up && !node.halted {
                self.boot(s);
            } else if !node.honest && !node.fork && node.up && (self.plan.calm == Calm::Silent || twin) {
                self.crash(s);
            }
        }
        let base = self.nodes.iter().filter(|n| n.honest).map(|n| n.store.tip()).max().unwrap_or(0);
        self.calm_base = Some(base);
        // The change under way, if it is due by the height every honest node
        // must pass, must complete too (one: each takes a few blocks, and the
        // quick run's time is bounded).
        let due = self.plan.changes.iter().filter(|(from, _)| *from <= base + 2).count();
        self.due_changes = due.min(self.next_change + 1);
        self.apply_links();
        let outstanding = self.due_changes.saturating_sub(self.next_change) as u64;
        self.at(self.now + self.plan.window_ms + CHANGE_WINDOW_MS * outstanding, Event::Deadline);
        self.check_finished();
    }

    /// Whether `n` must commit after calm: an honest node whose key the chain
    /// names (in the set in force or the next). A joiner not admitted yet and
    /// a removed member are refused by every member's transport, as on a
    /// real network, so nothing obliges them to keep up.
    fn bound_to_progress(&self, n: &Node) -> bool {
        n.honest && self.checker.names(&n.id)
    }

    fn check_finished(&mut self) {
        if let Some(base) = self.calm_base {
            self.finished = self.next_change >= self.due_changes
                && self.nodes.iter().filter(|n| self.bound_to_progress(n)).all(|n| n.store.tip() >= base + 2);
        }
    }

    fn crash(&mut self, s: usize) {
        self.log(1 << s, None, true, |w| format!("{} crashes", w.name(s)));
        let stored: Vec<_> = self.nodes[s]
            .store
            .lock
            .iter()
            .flat_map(|l| l.polka.iter().map(|v| (v.vote.voter, v.vote.record())))
            .collect();
        self.checker.on_crash(self.nodes[s].id, &stored);
        let node = &mut self.nodes[s];
        node.up = false;
        node.early.clear();
        node.driver = None;
        node.epoch += 1;
        node.crash_after_persist = false;
        node.wake_at = None;
        node.pending.clear();
        node.fetches.clear();
        node.serving.clear();
        node.linked.clear();
        node.fetch = None;
        node.asking.clear();
        self.apply_links();
    }

    /// Starts the node from what its store holds, as `Node::start` does.
    fn boot(&mut self, s: usize) {
        if self.nodes[s].fork {
            let node = &mut self.nodes[s];
            node.admits = None;
            node.up = true;
            node.epoch += 1;
            let epoch = node.epoch;
            self.at(self.now + MISCHIEF_MS, Event::Mischief { node: s, epoch });
            return;
        }
        if self.nodes[s].store.chain.is_empty() && self.nodes[s].restore.is_some() {
            return self.begin_fetch(s);
        }
        let now = self.clock(s);
        let h = self.nodes[s].store.tip() + 1;
        let node = &mut self.nodes[s];
        node.up = true;
        node.epoch += 1;
        node.booted_at = self.now;
        node.wake_at = None;
        node.at = None;
        let watch = if node.wiped { WIPED_WATCH_INTERVALS } else { 0 };
        let driver = boot(&self.setup, node.identity.clone(), node.store.persisted(), now, watch);
        node.admits = Some(transport_set(&driver, &self.setup));
        node.driver = Some(driver);
        let epoch = node.epoch;
        let lock =
            node.store.lock.as_ref().filter(|l| l.block.height() == h).map(|l| (l.round, l.block.hash().short()));
        let last = node.store.last_signed;
        let honest = node.honest;
        self.log(1 << s, Some(h), true, |w| {
            format!("{} starts at height {h}, last signed {last:?}, lock {lock:?}", w.name(s))
        });
        if honest {
            let first = self.now + self.rng.range(200, 2_000);
            self.at(first, Event::Client { node: s, epoch });
        } else {
            self.at(self.now + MISCHIEF_MS, Event::Mischief { node: s, epoch });
        }
        self.carry_out(s);
        self.arm(s);
        self.maybe_approve(s);
    }

    /// An honest node's client submits a transaction (`POST /tx`).
    fn submit(&mut self, s: usize) {
        let node = &mut self.nodes[s];
        node.submitted += 1;
        let tx = format!("tx {} #{} e{}", node.label, node.submitted, node.epoch).into_bytes();
        self.input(s, |d, now| {
            let _ = d.handle_submit(tx, now);
        });
    }

    /// Byzantine slot `s` acts unprompted.
    fn mischief(&mut self, s: usize) {
        if self.nodes[s].fork {
            // Far ahead, it says.
            let tip = self.nodes[s].store.chain.last().map(|c| (c.block.height(), c.block.hash()));
            if let Some((height, hash)) = tip {
                let time_ms = self.clock(s).wall_ms;
                self.broadcast(s, &Message::Tip { height, hash, time_ms });
            }
            return;
        }
        if self.adv.on(super::adversary::Strategy::RequestFlood) {
            self.flood_requests(s);
        }
        let Some(d) = self.driver(s) else { return };
        let (h, r) = (d.height(), d.core().round());
        let me = self.nodes[s].identity.clone();
        let peers = self.peers_of(s);
        let wall = self.clock(s).wall_ms;
        let sends = self.adv.tick(&me, h, r, wall, &peers);
        self.exec(s, sends);
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
                let m = Message::Vote(precommit(h, round, Some(value), &self.nodes[b].identity));
                let sends = self
                    .peers_of(b)
                    .into_iter()
                    .filter(|p| self.nodes[*p].id != me && voters.contains(&self.nodes[*p].id))
                    .map(|to| super::adversary::Send { to, msg: m.clone(), extra_delay: 0, genuine: true })
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

    /// The plan's current member change as node `s` approves it, if it is one of
    /// those who approve it (a member for a vote, the member itself for an
    /// address) and neither its chain nor its pool already holds its approval.
    fn planned_change(&self, s: usize) -> Option<(Change, ChangeRequest)> {
        let node = &self.nodes[s];
        let &(from, planned) = self.plan.changes.get(self.next_change)?;
        if !node.honest || !node.up || node.store.tip() < from {
            return None;
        }
        let d = node.driver.as_ref()?;
        let m = d.core().membership();
        let (change, request) = match planned {
            Planned::Add(k) => {
                let (id, addr) = (self.key_ids[k], joiner_addr(k));
                (!m.next().contains(&id)).then_some((Change::Add { id, addr }, ChangeRequest::Add { id, addr }))?
            }
            Planned::Remove(k) => {
                let id = self.key_ids[k];
                m.next().contains(&id).then_some((Change::Remove { id }, ChangeRequest::Remove { id }))?
            }
            Planned::SetAddr(k, port) => {
                let id = self.key_ids[k];
                let info = m.next().get(&id).filter(|_| id == node.id)?;
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let change = Change::SetAddr { id, addr, seq: info.addr_seq + 1 };
                (info.addr != addr).then_some((change, ChangeRequest::SetAddr { addr }))?
            }
        };
        if change.needs_vote() && !m.current().contains(&node.id) {
            return None;
        }
        let on_chain = m.state().pending.get(&change).is_some_and(|a| a.contains_key(&node.id));
        let pooled = d.members_view().waiting.iter().any(|a| a.change == change && a.approver == node.id);
        (!on_chain && !pooled).then_some((change, request))
    }

    /// An honest node approves the plan's current member change, as an operator
    /// asks it to (again after its approval expired or a crash lost it).
    fn maybe_approve(&mut self, s: usize) {
        let Some((change, request)) = self.planned_change(s) else { return };
        let mut result = None;
        self.input(s, |d, now| result = Some(d.handle_change(request, now)));
        let text = self.change_text(&change);
        self.log(1 << s, None, true, |w| match result {
            Some(Ok(ok)) => format!("{} approves: {text} ({} of {})", w.name(s), ok.approvals, ok.required),
            Some(Err(e)) => format!("{} cannot approve {text}: {e}", w.name(s)),
            None => format!("{} is down", w.name(s)),
        });
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
}
