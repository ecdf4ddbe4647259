//! A scenario, drawn from its seed: the members, which are Byzantine and how, the
//! network's delays, and a schedule of faults (crashes, partitions, loss) for a
//! faulty phase, after which the network turns calm and the chain must go on.
//! A quarter of the scenarios also change the member set: joiners (keys not in the
//! genesis) run from the start, and at random heights honest members approve
//! adding a joiner, removing a member (never below `min_active`, and never so
//! that a set holds `f` Byzantine keys with fewer than `3f + 1` members) or a
//! member's new address. Byzantine scenarios may also forge approvals
//! ([`Strategy::BadChanges`]).
//!
//! The plan is data so that a failing scenario can be shrunk: the runner removes
//! faults, strategies and member changes one at a time and keeps each removal
//! after which the scenario still fails.

use std::collections::BTreeSet;
use std::fmt;

use super::adversary::{Strategy, ALL, DRIVER_ERA, LATER_ERA};
use super::core_api::{Height, Limits, MempoolLimits, NodeLimits, MIN_ACTIVE};
use super::rng::Rng;

/// A member change honest members approve, by key: keys `0..n` are the genesis
/// members (in id order), `n..n + joiners` the joiners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    Add(usize),
    Remove(usize),
    /// The key announces a new address, with this port.
    SetAddr(usize, u16),
}

/// Permille of scenarios that change the member set.
const CHANGING_PERMILLE: u64 = 250;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Crash(usize),
    /// The next time the node persists a signature, it dies before sending it.
    CrashAfterPersist(usize),
    Restart(usize),
    /// Slot -> group; slots reach each other only within a group.
    Partition(Vec<u8>),
    Heal,
    /// Message loss, per mille.
    Loss(u64),
    /// The node crashes and loses its data dir; at its next start it begins
    /// from a checkpoint ([`Restore`]).
    Wipe(usize, Restore),
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// Members in the genesis.
    pub n: usize,
    /// Keys outside the genesis, each with a node from the start: slots and keys
    /// `n..n + joiners`.
    pub joiners: usize,
    /// Indices (into the sorted members) of the Byzantine keys.
    pub byzantine: Vec<usize>,
    /// The first Byzantine key runs as two slots (twins); the twin is the last
    /// slot, `n + joiners`.
    pub twins: bool,
    /// Member changes, one after the other: honest members approve the first
    /// once their chain reaches its height, each next one once the one before
    /// completed on chain (and its height is reached).
    pub changes: Vec<(Height, Planned)>,
    pub strategies: BTreeSet<Strategy>,
    /// Per-message delay, uniform in this range.
    pub delay_ms: (u64, u64),
    /// (virtual ms after the start, fault)
    pub faults: Vec<(u64, Fault)>,
    /// When the network turns calm (every partition healed, no loss, every node
    /// restarted; Byzantine slots silent, behaving or still attacking).
    pub calm_at: u64,
    /// What Byzantine slots do once the network is calm.
    pub calm: Calm,
    /// Within this much virtual time after calm, every honest node the chain
    /// names (in the set in force or the next) commits two heights past the
    /// highest height any honest node had, and every member
    /// change due by that height completes on chain (with 20 s more for each
    /// such change not done at calm).
    pub window_ms: u64,
    /// Honest clocks are off by up to this much either way.
    pub honest_skew_ms: u64,
    /// Protocol 4's rules from this height (a plan completed before the
    /// scenario's genesis); `None`: protocol 3 throughout.
    pub v4_from: Option<Height>,
    pub limits: SimLimits,
    /// Which limits: what a flood meets first.
    pub family: Family,
    /// The network delivers a message twice, per mille.
    pub dup_permille: u64,
    /// Every this many ms the network delivers again an old consensus message
    /// (of an earlier round or height, an honest member's among them) to every
    /// node.
    pub replay_every_ms: Option<u64>,
    /// Byzantine slots' clocks are off by this much ([`Strategy::LyingClock`]).
    pub byzantine_skew_ms: i64,
    /// A peer outside the member set that every node has as a `bootstrap`
    /// peer serves another history and claims to be far ahead: the last slot.
    pub fork_peer: bool,
}

/// What Byzantine slots do once the network turns calm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calm {
    /// They stop.
    Silent,
    /// They run their drivers unaltered.
    Behaving,
    /// They go on with every strategy that is only messages (all but the
    /// adversary's hold on the scheduler, [`Strategy::RewindLock`]): with at
    /// most f of them, honest members must still commit.
    Attacking,
}

/// Limits drawn per scenario, so that each budget is the one a flood meets first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Standard,
    /// A mempool far smaller than a block: a rebuild that holds more than the
    /// mempool did has copied a transaction into many places.
    SmallMempool,
    /// A mempool far larger than a block: a rebuild's bytes are bounded by the
    /// block's, not by what the mempool holds.
    BigMempool,
}

/// The block and node limits of a scenario: smaller than the defaults, so
/// that floods reach them within a scenario.
#[derive(Debug, Clone, Copy)]
pub struct SimLimits {
    pub block: Limits,
    pub node: NodeLimits,
}

impl SimLimits {
    pub fn of(family: Family) -> SimLimits {
        let (block_bytes, mempool_bytes, tx_bytes) = match family {
            Family::Standard => (1024 * 1024, 1024 * 1024, 16 * 1024),
            Family::SmallMempool => (1024 * 1024, 128 * 1024, 8 * 1024),
            Family::BigMempool => (128 * 1024, 8 * 1024 * 1024, 16 * 1024),
        };
        SimLimits {
            block: Limits { max_block_bytes: block_bytes, max_block_txs: 512, max_clock_drift_ms: 31_000 },
            node: NodeLimits {
                mempool: MempoolLimits { max_txs: 2_000, max_bytes: mempool_bytes, max_tx_bytes: tx_bytes },
                sync_batch_blocks: 16,
                sync_response_bytes: 256 * 1024,
                sync_requests_per_sec: 20,
                sync_serve_bytes_per_sec: 8 * 1024 * 1024,
            },
        }
    }
}

impl Plan {
    pub fn slots(&self) -> usize {
        self.n + self.joiners + usize::from(self.twins) + usize::from(self.fork_peer)
    }

    /// The slot of the peer with another history, when there is one.
    pub fn fork_slot(&self) -> Option<usize> {
        self.fork_peer.then(|| self.slots() - 1)
    }

    /// Genesis members and joiners.
    pub fn keys(&self) -> usize {
        self.n + self.joiners
    }

    /// The key a slot runs with (the fork peer's is none of these).
    pub fn key_of(&self, slot: usize) -> usize {
        if slot < self.keys() || self.byzantine.is_empty() {
            slot
        } else {
            self.byzantine[0]
        }
    }

    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = Rng::new(seed);
        let n = if rng.chance(150) { 7 } else { 4 };
        let kind = rng.below(100);
        let f = (n - 1) / 3;
        let mut byzantine = Vec::new();
        let mut twins = false;
        let mut strategies = BTreeSet::new();
        if kind >= 25 {
            let count = if n == 7 { rng.range(1, f as u64) as usize } else { 1 };
            while byzantine.len() < count {
                let i = rng.below(n as u64) as usize;
                if !byzantine.contains(&i) {
                    byzantine.push(i);
                }
            }
            twins = kind >= 80;
            for s in ALL {
                if rng.chance(350) {
                    strategies.insert(s);
                }
            }
            if rng.chance(400) {
                // The attack on a restarted node's lock: votes for every value
                // make polkas in several rounds, an old one is replayed to a node
                // that restarts, and its value re-proposed.
                if rng.chance(500) {
                    strategies.clear();
                }
                strategies.extend([Strategy::VoteAll, Strategy::ReplayOld, Strategy::RePropose, Strategy::RewindLock]);
                strategies.remove(&Strategy::Selective);
                strategies.remove(&Strategy::Withhold);
            }
        }
        let slots = n + usize::from(twins);
        let lo = rng.range(1, 20);
        let hi = lo + *rng.pick(&[5, 30, 100, 400, 1500]).unwrap_or(&30);
        let calm_at = rng.range(5_000, 50_000);
        let mut faults = Vec::new();
        let count = rng.below(14);
        let honest: Vec<usize> = (0..n).filter(|i| !byzantine.contains(i)).collect();
        for _ in 0..count {
            let t = rng.below(calm_at);
            match rng.below(10) {
                0..=2 => {
                    let node = if rng.chance(850) {
                        *rng.pick(&honest).unwrap_or(&0)
                    } else {
                        rng.below(slots as u64) as usize
                    };
                    let crash = if rng.chance(300) { Fault::CrashAfterPersist(node) } else { Fault::Crash(node) };
                    faults.push((t, crash));
                    faults.push((t + rng.range(100, 8_000), Fault::Restart(node)));
                }
                3..=6 => {
                    let groups = rng.range(2, 3);
                    let parts: Vec<u8> = match rng.below(3) {
                        // One node alone.
                        0 => {
                            let alone = rng.below(slots as u64) as usize;
                            (0..slots).map(|i| u8::from(i == alone)).collect()
                        }
                        _ => (0..slots).map(|_| rng.below(groups) as u8).collect(),
                    };
                    faults.push((t, Fault::Partition(parts)));
                    if rng.chance(700) {
                        faults.push((t + rng.range(300, 12_000), Fault::Heal));
                    }
                }
                _ => faults.push((t, Fault::Loss(*rng.pick(&[0, 20, 100, 300]).unwrap_or(&0)))),
            }
        }
        faults.sort_by_key(|(t, _)| *t);
        let mut plan = Plan {
            seed,
            n,
            joiners: 0,
            byzantine,
            twins,
            strategies,
            delay_ms: (lo, hi),
            faults,
            calm_at,
            calm: if rng.chance(500) { Calm::Silent } else { Calm::Behaving },
            window_ms: 60_000,
            changes: Vec::new(),
            honest_skew_ms: 200,
            v4_from: None,
            limits: SimLimits::of(Family::Standard),
            family: Family::Standard,
            dup_permille: 0,
            replay_every_ms: None,
            byzantine_skew_ms: 0,
            fork_peer: false,
        };
        // A stream of its own, so that a scenario without member changes is the
        // one the seed drew before there were any.
        let mut mrng = Rng::new(seed ^ 0x6d65_6d62_6572_7321);
        if mrng.chance(CHANGING_PERMILLE) {
            plan.add_member_changes(&mut mrng);
        }
        if !plan.byzantine.is_empty() && mrng.chance(350) {
            plan.strategies.insert(Strategy::BadChanges);
        }
        // Another stream for what came with the driver: the protocol version,
        // the limits, the network's hostility, the new strategies.
        let mut vrng = Rng::new(seed ^ 0x7665_7273_696f_6e34);
        if vrng.chance(300) {
            plan.v4_from = Some(vrng.range(1, 6));
        }
        plan.add_hostility(&mut vrng);
        // A stream of its own, drawn after everything else: a wiped node's
        // checkpoint start.
        let mut crng = Rng::new(seed ^ 0x6368_6563_6b70_6f74);
        plan.add_checkpoint_start(&mut crng);
        plan
    }

    /// The limits family, duplicates and replays on the network, a slow
    /// network now and then, the driver-era strategies, the calm mode, and a
    /// bootstrap peer with another history.
    fn add_hostility(&mut self, rng: &mut Rng) {
        self.family = match rng.below(10) {
            0..=5 => Family::Standard,
            6 | 7 => Family::SmallMempool,
            _ => Family::BigMempool,
        };
        self.limits = SimLimits::of(self.family);
        if rng.chance(400) {
            self.dup_permille = *rng.pick(&[20, 100, 300]).unwrap_or(&100);
        }
        if rng.chance(400) {
            self.replay_every_ms = Some(rng.range(100, 2_000));
        }
        // A slow network: every message takes seconds, a compact proposal's
        // fetch twice that; rounds succeed only once their timeouts have grown
        // past the delays, at every height (a height takes minutes).
        if rng.chance(80) {
            self.delay_ms = (1_200, 3_000);
            self.window_ms = 600_000;
        }
        if !self.byzantine.is_empty() {
            for s in DRIVER_ERA {
                if rng.chance(250) {
                    self.strategies.insert(s);
                }
            }
            if self.strategies.contains(&Strategy::LyingClock) {
                let off = rng.range(2_000, 60_000) as i64;
                self.byzantine_skew_ms = if rng.chance(500) { off } else { -off };
            }
            if self.calm == Calm::Behaving && rng.chance(500) {
                self.calm = Calm::Attacking;
            }
        }
        if rng.chance(100) {
            self.fork_peer = true;
            for (_, f) in &mut self.faults {
                if let Fault::Partition(g) = f {
                    let max = u64::from(g.iter().copied().max().unwrap_or(0));
                    g.push(rng.range(0, max) as u8);
                }
            }
        }
        // Drawn last, so that the plans drawn before them stay as they were.
        if !self.byzantine.is_empty() {
            // A quarter of the Byzantine scenarios (seed 72 and ten others of
            // the quick run stalled a height for good until a receiver's
            // conflicting versions were kept by their values' support, not in
            // the order they came).
            for s in LATER_ERA {
                if rng.chance(250) {
                    self.strategies.insert(s);
                }
            }
            // Compact proposals that name more than a block of the
            // transactions the proposer flooded, under a mempool many blocks
            // large whose share for it holds them: a rebuild that went on
            // past `max_block_bytes` would hold them all.
            if rng.chance(100) {
                self.family = Family::BigMempool;
                self.limits = SimLimits::of(self.family);
                self.strategies.extend([Strategy::CompactOversize, Strategy::MempoolFlood]);
            }
        }
    }

    /// Joiners, their faults, and a sequence of member changes each of which
    /// keeps the set within `min_active` and the fault budget.
    fn add_member_changes(&mut self, rng: &mut Rng) {
        let (n, joiners) = (self.n, if rng.chance(250) { 2 } else { 1 });
        self.joiners = joiners;
        // The twin moves behind the joiners; joiners join the partitions.
        for (_, f) in &mut self.faults {
            match f {
                Fault::Crash(s) | Fault::CrashAfterPersist(s) | Fault::Restart(s) if *s >= n => *s += joiners,
                Fault::Partition(g) => {
                    let max = u64::from(g.iter().copied().max().unwrap_or(0)).max(1);
                    for _ in 0..joiners {
                        g.insert(n, rng.range(0, max) as u8);
                    }
                }
                _ => {}
            }
        }
        for j in n..n + joiners {
            if rng.chance(300) {
                let t = rng.below(self.calm_at);
                self.faults.push((t, Fault::Crash(j)));
                self.faults.push((t + rng.range(100, 8_000), Fault::Restart(j)));
            }
        }
        self.faults.sort_by_key(|(t, _)| *t);
        let keys = n + joiners;
        let mut set: BTreeSet<usize> = (0..n).collect();
        let mut removed: Vec<usize> = Vec::new();
        let mut height = rng.range(1, 6);
        for i in 0..rng.range(1, 5) {
            let fits = |set: &BTreeSet<usize>| self.fits(set);
            let adds: Vec<usize> = (0..keys)
                .filter(|k| !set.contains(k))
                .filter(|k| fits(&set.iter().copied().chain([*k]).collect()))
                .collect();
            let removes: Vec<usize> =
                set.iter().copied().filter(|k| fits(&set.iter().copied().filter(|x| x != k).collect())).collect();
            let movers: Vec<usize> = set.iter().copied().filter(|k| !self.byzantine.contains(k)).collect();
            // A member removed before comes back now and then.
            let readd = removed.iter().copied().rfind(|k| adds.contains(k));
            let planned = match rng.below(10) {
                0..=3 if readd.is_some() && rng.chance(500) => readd.map(Planned::Add),
                0..=3 => rng.pick(&adds).copied().map(Planned::Add),
                4..=7 => rng.pick(&removes).copied().map(Planned::Remove),
                _ => rng.pick(&movers).copied().map(|k| Planned::SetAddr(k, 30_000 + i as u16)),
            };
            let Some(planned) = planned else { continue };
            match planned {
                Planned::Add(k) => {
                    set.insert(k);
                }
                Planned::Remove(k) => {
                    set.remove(&k);
                    removed.push(k);
                }
                Planned::SetAddr(..) => {}
            }
            self.changes.push((height, planned));
            height += rng.range(0, 4);
        }
    }

    /// Whether a set of keys keeps `n >= 3f + 1` (with `f` its Byzantine keys)
    /// and `n >= min_active`.
    fn fits(&self, set: &BTreeSet<usize>) -> bool {
        let f = set.iter().filter(|k| self.byzantine.contains(k)).count();
        set.len() >= MIN_ACTIVE.max(3 * f + 1)
    }

    /// The member changes that apply in order from the genesis, each leaving a
    /// set that fits: all of them as drawn; fewer once shrinking removed some
    /// that later ones depend on.
    pub fn applicable_changes(&self) -> Vec<(Height, Planned)> {
        let mut set: BTreeSet<usize> = (0..self.n).collect();
        let mut out = Vec::new();
        for &(h, p) in &self.changes {
            let ok = match p {
                Planned::Add(k) => !set.contains(&k) && self.fits(&set.iter().copied().chain([k]).collect()),
                Planned::Remove(k) => set.contains(&k) && self.fits(&set.iter().copied().filter(|x| *x != k).collect()),
                Planned::SetAddr(k, _) => set.contains(&k) && !self.byzantine.contains(&k),
            };
            if !ok {
                continue;
            }
            match p {
                Planned::Add(k) => {
                    set.insert(k);
                }
                Planned::Remove(k) => {
                    set.remove(&k);
                }
                Planned::SetAddr(..) => {}
            }
            out.push((h, p));
        }
        out
    }
}

impl Plan {
    /// The same scenario with every member honest: crashes, partitions and loss
    /// only (and the member changes). The twin's slot goes, with the faults
    /// that name it.
    pub fn without_byzantine(mut self) -> Plan {
        let keys = self.keys();
        self.byzantine.clear();
        self.strategies.clear();
        self.twins = false;
        self.fork_peer = false;
        self.byzantine_skew_ms = 0;
        self.faults.retain(
            |(_, f)| !matches!(f, Fault::Crash(s) | Fault::CrashAfterPersist(s) | Fault::Restart(s) if *s >= keys),
        );
        for (_, f) in &mut self.faults {
            if let Fault::Partition(g) = f {
                g.truncate(keys);
            }
        }
        self
    }

    /// One line: members, Byzantine keys and what they do after calm.
    pub fn headline(&self) -> String {
        let members = if self.changes.is_empty() {
            String::new()
        } else {
            format!(", {} joiners, {} member changes", self.joiners, self.changes.len())
        };
        let mut extra = format!(", {:?} limits", self.family);
        if self.v4_from.is_some() {
            extra.push_str(", protocol 4");
        }
        if self.fork_peer {
            extra.push_str(", a bootstrap peer with another history");
        }
        if self.byzantine.is_empty() {
            return format!("n={}{members}, honest only, {} faults{extra}", self.n, self.faults.len());
        }
        format!(
            "n={}{members}, {} Byzantine{}, {} strategies, {} faults, {:?} when calm{extra}",
            self.n,
            self.byzantine.len(),
            if self.twins { " (twins)" } else { "" },
            self.strategies.len(),
            self.faults.len(),
            self.calm,
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: n={} byzantine={:?}{} strategies={:?} delay={}..{} ms calm at {} ms (Byzantine then {:?})",
            self.seed,
            self.n,
            self.byzantine.iter().map(|i| super::world::letter(*i)).collect::<Vec<_>>(),
            if self.twins { " (twins)" } else { "" },
            self.strategies,
            self.delay_ms.0,
            self.delay_ms.1,
            self.calm_at,
            self.calm,
        )?;
        writeln!(
            f,
            "  {:?} limits, protocol {} {}, duplicates {}/1000, replays {}, clock lies {} ms{}",
            self.family,
            if self.v4_from.is_some() { 4 } else { 3 },
            self.v4_from.map_or(String::new(), |h| format!("from height {h}")),
            self.dup_permille,
            self.replay_every_ms.map_or("none".into(), |ms| format!("every {ms} ms")),
            self.byzantine_skew_ms,
            if self.fork_peer { ", a bootstrap peer with another history" } else { "" },
        )?;
        if self.joiners > 0 {
            let joiners: Vec<char> = (self.n..self.keys()).map(super::world::letter).collect();
            writeln!(f, "  joiners {joiners:?}")?;
        }
        for (h, change) in &self.changes {
            writeln!(f, "  member change from height {h}: {}", describe_planned(change))?;
        }
        for (t, fault) in &self.faults {
            writeln!(f, "  fault at {t} ms: {}", super::world::describe_fault(fault))?;
        }
        Ok(())
    }
}

pub fn describe_planned(p: &Planned) -> String {
    use super::world::letter;
    match p {
        Planned::Add(k) => format!("add {}", letter(*k)),
        Planned::Remove(k) => format!("remove {}", letter(*k)),
        Planned::SetAddr(k, port) => format!("{} moves to port {port}", letter(*k)),
    }
}

/// Where the operator of a node that lost its data dir points it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// `checkpoint = "HEIGHT:HASH"`: a block the honest nodes decided, copied
    /// from a healthy node when the node starts.
    Named,
    /// `checkpoint = "peers"`: the tip a peer offers, with precommits of more
    /// than two thirds of the genesis set.
    Peers,
}

/// Permille of the scenarios with a crash of an honest genesis member in
/// which that crash also wipes its data dir.
const WIPE_PERMILLE: u64 = 50;
/// A wipe is a crash at least this far into the scenario where one is.
const LATE_MS: u64 = 5_000;

impl Plan {
    /// Now and then one crash of an honest genesis member becomes a wipe: the
    /// node restarts on an empty data dir from a checkpoint, named or from
    /// peers (only where the member set does not change: `peers` trusts the
    /// genesis set, which a changed set no longer gives a quorum). Protocol 4
    /// is on (a checkpoint needs blocks that commit to their member state),
    /// and Byzantine members lie about checkpoints.
    fn add_checkpoint_start(&mut self, rng: &mut Rng) {
        let crashes: Vec<usize> = (0..self.faults.len())
            .filter(|&i| matches!(self.faults[i].1, Fault::Crash(s) if s < self.n && !self.byzantine.contains(&s)))
            .collect();
        if crashes.is_empty() || !rng.chance(WIPE_PERMILLE) {
            return;
        }
        // A crash a few seconds in, when the chain has blocks to start from.
        let late: Vec<usize> = crashes.iter().copied().filter(|&i| self.faults[i].0 >= LATE_MS).collect();
        let Some(&i) = rng.pick(&late).or(crashes.last()) else { return };
        let Fault::Crash(s) = self.faults[i].1 else { return };
        let restore = if self.changes.is_empty() && rng.chance(500) { Restore::Peers } else { Restore::Named };
        self.faults[i].1 = Fault::Wipe(s, restore);
        if self.v4_from.is_none() {
            self.v4_from = Some(1);
        }
        if !self.byzantine.is_empty() {
            self.strategies.insert(Strategy::LieCheckpoint);
        }
    }
}
