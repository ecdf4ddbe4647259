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

use super::adversary::{Strategy, ALL};
use super::core_api::{Height, MIN_ACTIVE};
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
    /// restarted, Byzantine slots silent or behaving).
    pub calm_at: u64,
    /// Byzantine slots go silent when calm (otherwise they behave).
    pub silent_when_calm: bool,
    /// Within this much virtual time after calm, every honest node commits two
    /// heights past the highest height any honest node had, and every member
    /// change due by that height completes on chain (with 20 s more for each
    /// such change not done at calm).
    pub window_ms: u64,
}

impl Plan {
    pub fn slots(&self) -> usize {
        self.n + self.joiners + usize::from(self.twins)
    }

    /// Genesis members and joiners.
    pub fn keys(&self) -> usize {
        self.n + self.joiners
    }

    /// The key a slot runs with.
    pub fn key_of(&self, slot: usize) -> usize {
        if slot < self.keys() {
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
            silent_when_calm: rng.chance(500),
            window_ms: 60_000,
            changes: Vec::new(),
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
        plan
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
        if self.byzantine.is_empty() {
            return format!("n={}{members}, honest only, {} faults", self.n, self.faults.len());
        }
        format!(
            "n={}{members}, {} Byzantine{}, {} strategies, {} faults, {} when calm",
            self.n,
            self.byzantine.len(),
            if self.twins { " (twins)" } else { "" },
            self.strategies.len(),
            self.faults.len(),
            if self.silent_when_calm { "silent" } else { "behaving" }
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: n={} byzantine={:?}{} strategies={:?} delay={}..{} ms calm at {} ms ({})",
            self.seed,
            self.n,
            self.byzantine.iter().map(|i| super::world::letter(*i)).collect::<Vec<_>>(),
            if self.twins { " (twins)" } else { "" },
            self.strategies,
            self.delay_ms.0,
            self.delay_ms.1,
            self.calm_at,
            if self.silent_when_calm { "Byzantine then silent" } else { "Byzantine then behaving" },
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
