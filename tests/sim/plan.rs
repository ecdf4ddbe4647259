//! A scenario, drawn from its seed: the members, which are Byzantine and how, the
//! network's delays, and a schedule of faults (crashes, partitions, loss) for a
//! faulty phase, after which the network turns calm and the chain must go on.
//!
//! The plan is data so that a failing scenario can be shrunk: the runner removes
//! faults and strategies one at a time and keeps each removal after which the
//! scenario still fails.

use std::collections::BTreeSet;
use std::fmt;

use super::adversary::{Strategy, ALL};
use super::rng::Rng;

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
    pub n: usize,
    /// Indices (into the sorted members) of the Byzantine keys.
    pub byzantine: Vec<usize>,
    /// The first Byzantine key runs as two slots (twins); the twin is slot `n`.
    pub twins: bool,
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
    /// heights past the highest height any honest node had.
    pub window_ms: u64,
}

impl Plan {
    pub fn slots(&self) -> usize {
        self.n + usize::from(self.twins)
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
        Plan {
            seed,
            n,
            byzantine,
            twins,
            strategies,
            delay_ms: (lo, hi),
            faults,
            calm_at,
            silent_when_calm: rng.chance(500),
            window_ms: 60_000,
        }
    }
}

impl Plan {
    /// The same scenario with every member honest: crashes, partitions and loss
    /// only. The twin's slot goes, with the faults that name it.
    pub fn without_byzantine(mut self) -> Plan {
        let n = self.n;
        self.byzantine.clear();
        self.strategies.clear();
        self.twins = false;
        self.faults.retain(
            |(_, f)| !matches!(f, Fault::Crash(s) | Fault::CrashAfterPersist(s) | Fault::Restart(s) if *s >= n),
        );
        for (_, f) in &mut self.faults {
            if let Fault::Partition(g) = f {
                g.truncate(n);
            }
        }
        self
    }

    /// One line: members, Byzantine keys and what they do after calm.
    pub fn headline(&self) -> String {
        if self.byzantine.is_empty() {
            return format!("n={}, honest only, {} faults", self.n, self.faults.len());
        }
        format!(
            "n={}, {} Byzantine{}, {} strategies, {} faults, {} when calm",
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
        for (t, fault) in &self.faults {
            writeln!(f, "  fault at {t} ms: {}", super::world::describe_fault(fault))?;
        }
        Ok(())
    }
}
