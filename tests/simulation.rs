//! Adversarial simulation of whole nodes: seeded scenarios on a simulated network
//! with virtual time, each node the library's own producer driver with a simulated
//! store (delay, loss, partitions, crash-restart from the persisted
//! state, Byzantine members, member sets that change on chain), checking
//! agreement, validity, the member sets, lock monotonicity, no honest
//! double-sign and progress after every step (see `sim/`).
//!
//! * `cargo test --test simulation`: 40 scenarios (and 40 without Byzantine members);
//!   `.ci/run` adds seeds 40..150 of both (`SIM_FIRST_SEED=40 SIM_SCENARIOS=110`).
//! * `SIM_SCENARIOS=N cargo test --release --test simulation -- --ignored --nocapture`:
//!   N scenarios (default 1000); `SIM_FIRST_SEED` moves the range, `SIM_THREADS`
//!   sets the parallelism (default 2).
//! * `SIM_SEED=S` (with either): replays one seed and prints its trace.
//! * `SIM_SKIP=LockMonotonicity,Progress`: kinds of violation not checked (to see
//!   where a scenario goes past one).
//! * `SIM_FAIL_FAST=1`: stop at the first violation, unshrunk (`tests/mutants.sh`).
//!
//! Both end with one line `simulation: N scenarios, S steps, V violations`. On a
//! violation the failing scenario is shrunk (faults and strategies removed while
//! it still fails), and its seed, plan and the trace up to the violation (the
//! events that involve the violating nodes) are printed; the full trace goes to a
//! file.

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sim::checker::{Kind, Violation};
use sim::plan::Plan;
use sim::world::{run, Outcome, RunOpts};

/// Scenarios in the normal `cargo test` (seeds 0..40; `.ci/run` runs 40..150
/// as well).
const QUICK_SCENARIOS: u64 = 40;
/// Scenarios without Byzantine members in the normal `cargo test` (the same
/// seeds).
const HONEST_SCENARIOS: u64 = 40;
/// Re-runs and time the shrinker may spend on one failing scenario.
const SHRINK_RUNS: usize = 400;
const SHRINK_TIME: std::time::Duration = std::time::Duration::from_secs(20);
/// Trace lines printed; the full trace goes to a file.
const PRINTED_LINES: usize = 400;
/// Messages printed before a violation, beside the key events.
const LAST_MESSAGES: usize = 40;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

struct Summary {
    scenarios: u64,
    steps: u64,
    /// (seed, step, violation), lowest seed first.
    failures: Vec<(u64, u64, Violation)>,
}

/// `SIM_FAIL_FAST=1`: stop at the first violation, without shrinking it (the
/// mutation command's mode: it wants to know whether, not how often).
fn fail_fast() -> bool {
    env_u64("SIM_FAIL_FAST").is_some_and(|v| v != 0)
}

fn run_seeds(first: u64, count: u64, threads: usize, honest_only: bool) -> Summary {
    let next = AtomicU64::new(0);
    let steps = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || stop.load(Ordering::Relaxed) {
                    break;
                }
                let seed = first + i;
                let mut plan = Plan::from_seed(seed);
                if honest_only {
                    plan = plan.without_byzantine();
                }
                let outcome = run(&plan, &RunOpts { trace: false, max_steps: None });
                steps.fetch_add(outcome.steps, Ordering::Relaxed);
                if let Some((step, v)) = outcome.violation {
                    failures.lock().unwrap_or_else(|e| e.into_inner()).push((seed, step, v));
                    if fail_fast() {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|f| f.0);
    Summary { scenarios: count, steps: steps.into_inner(), failures }
}

/// Whether `plan` still fails with a violation of `kind`.
fn fails(plan: &Plan, kind: Kind) -> bool {
    run(plan, &RunOpts { trace: false, max_steps: None }).violation.is_some_and(|(_, v)| v.kind == kind)
}

/// Removes strategies, member changes and faults one at a time, keeping every
/// removal after which the scenario still fails the same way, until none can go.
fn shrink(plan: &Plan, kind: Kind) -> Plan {
    let mut best = plan.clone();
    let mut runs = 0;
    let started = Instant::now();
    loop {
        if started.elapsed() > SHRINK_TIME {
            return best;
        }
        let mut changed = false;
        for s in best.strategies.clone() {
            if runs >= SHRINK_RUNS || started.elapsed() > SHRINK_TIME {
                return best;
            }
            let mut p = best.clone();
            p.strategies.remove(&s);
            runs += 1;
            if fails(&p, kind) {
                best = p;
                changed = true;
            }
        }
        let mut i = best.changes.len();
        while i > 0 {
            i -= 1;
            if runs >= SHRINK_RUNS || started.elapsed() > SHRINK_TIME {
                return best;
            }
            let mut p = best.clone();
            p.changes.remove(i);
            runs += 1;
            if fails(&p, kind) {
                best = p;
                changed = true;
            }
        }
        let mut i = best.faults.len();
        while i > 0 {
            i -= 1;
            if runs >= SHRINK_RUNS || started.elapsed() > SHRINK_TIME {
                return best;
            }
            let mut p = best.clone();
            p.faults.remove(i);
            runs += 1;
            if fails(&p, kind) {
                best = p;
                changed = true;
            }
        }
        if !changed {
            return best;
        }
    }
}

fn trace_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::path::Path::new(&dir).join(format!("sim-trace-{name}.txt"))
}

/// Prints the plan and the trace up to the violation. With `only_violated`: the
/// key events (signatures, starts, crashes, faults, commits) of the violating
/// nodes at the violation's height, and every event of theirs since the last
/// restart of one of them (or the last few messages).
fn print_outcome(plan: &Plan, outcome: &Outcome, only_violated: bool, file: &std::path::Path) {
    let height = outcome.violation.as_ref().and_then(|(_, v)| v.height);
    let restarted = outcome.trace.iter().rposition(|l| {
        l.slots & outcome.violated_slots != 0 && l.slots != u32::MAX && l.text.contains(" starts at height ")
    });
    let last = restarted.unwrap_or_else(|| outcome.trace.len().saturating_sub(LAST_MESSAGES));
    let lines: Vec<&str> = outcome
        .trace
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            !only_violated
                || (l.slots & outcome.violated_slots != 0
                    && (*i >= last || (l.key && (height.is_none() || l.height.is_none() || l.height == height))))
        })
        .map(|(_, l)| l.text.as_str())
        .collect();
    let full: Vec<&str> = outcome.trace.iter().map(|l| l.text.as_str()).collect();
    let written = std::fs::write(file, full.join("\n") + "\n").is_ok();
    println!("{plan}");
    let which = if only_violated { "events involving the violating nodes" } else { "events" };
    if lines.len() > PRINTED_LINES {
        println!("trace ({which}, last {PRINTED_LINES} of {}):", lines.len());
    } else {
        println!("trace ({which}):");
    }
    for l in &lines[lines.len().saturating_sub(PRINTED_LINES)..] {
        println!("  {l}");
    }
    if written {
        println!("full trace ({} steps): {}", outcome.steps, file.display());
    }
    if let Some((step, v)) = &outcome.violation {
        println!("VIOLATION at step {step}: {v}");
    }
}

/// Shrinks a failing seed and prints its plan and trace.
fn report(seed: u64, kind: Kind) {
    let plan = Plan::from_seed(seed);
    let small = shrink(&plan, kind);
    println!(
        "seed {seed} fails; shrunk from {} to {} faults, {} to {} strategies and {} to {} member changes",
        plan.faults.len(),
        small.faults.len(),
        plan.strategies.len(),
        small.strategies.len(),
        plan.changes.len(),
        small.changes.len()
    );
    let outcome = run(&small, &RunOpts { trace: true, max_steps: None });
    print_outcome(&small, &outcome, true, &trace_file(&format!("{seed}-shrunk")));
    println!("replay: SIM_SEED={seed} cargo test --release --test simulation -- --ignored --nocapture");
}

fn simulate(default_scenarios: u64) {
    if let Some(seed) = env_u64("SIM_SEED") {
        let plan = Plan::from_seed(seed);
        let outcome = run(&plan, &RunOpts { trace: true, max_steps: None });
        let failed = outcome.violation.is_some();
        match &outcome.violation {
            Some((_, v)) => {
                let full = trace_file(&seed.to_string());
                let lines: Vec<&str> = outcome.trace.iter().map(|l| l.text.as_str()).collect();
                if std::fs::write(&full, lines.join("\n") + "\n").is_ok() {
                    println!("full trace of seed {seed} before shrinking: {}", full.display());
                }
                report(seed, v.kind);
            }
            None => print_outcome(&plan, &outcome, false, &trace_file(&seed.to_string())),
        }
        println!("simulation: 1 scenarios, {} steps, {} violations", outcome.steps, u64::from(failed));
        assert!(!failed, "seed {seed} violates an invariant");
        return;
    }
    let count = env_u64("SIM_SCENARIOS").unwrap_or(default_scenarios);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let threads = env_u64("SIM_THREADS").unwrap_or(2) as usize;
    let started = Instant::now();
    let summary = run_seeds(first, count, threads, false);
    let mut shown = std::collections::BTreeMap::new();
    for (seed, step, v) in &summary.failures {
        let count = shown.entry(v.kind).or_insert(0);
        *count += 1;
        if *count > 10 {
            continue;
        }
        let plan = Plan::from_seed(*seed);
        println!("violation: seed {seed} step {step} ({}): {v}", plan.headline());
    }
    // One shrunk report per kind of violation, for its lowest seed.
    let mut kinds = std::collections::BTreeMap::new();
    for (seed, _, v) in &summary.failures {
        kinds.entry(v.kind).or_insert((*seed, 0)).1 += 1;
    }
    for (kind, (seed, count)) in &kinds {
        println!("{kind:?}: {count} scenarios, first seed {seed}");
    }
    if !fail_fast() {
        for (kind, (seed, _)) in &kinds {
            report(*seed, *kind);
        }
    }
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
    println!(
        "simulation: {} scenarios, {} steps, {} violations",
        summary.scenarios,
        summary.steps,
        summary.failures.len()
    );
    assert!(summary.failures.is_empty(), "{} scenarios violate an invariant", summary.failures.len());
}

/// Crashes, partitions and loss with every member honest: today's code passes
/// these, so this guards them apart from the Byzantine scenarios.
#[test]
fn honest_members_survive_crashes_partitions_and_loss() {
    let count = env_u64("SIM_SCENARIOS").unwrap_or(HONEST_SCENARIOS);
    let summary = run_seeds(env_u64("SIM_FIRST_SEED").unwrap_or(0), count, 2, true);
    for (seed, step, v) in &summary.failures {
        println!("violation: seed {seed} (without Byzantine members) step {step}: {v}");
    }
    assert!(summary.failures.is_empty(), "{} honest scenarios violate an invariant", summary.failures.len());
}

#[test]
fn simulation_few_hundred_scenarios() {
    simulate(QUICK_SCENARIOS);
}

#[test]
#[ignore = "long: SIM_SCENARIOS=N cargo test --release --test simulation -- --ignored --nocapture"]
fn simulation_many_scenarios() {
    simulate(1000);
}
