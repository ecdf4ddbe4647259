//! The adversarial simulation's parts; `tests/simulation.rs` runs it.
//!
//! * [`rng`]: the seeded PRNG everything draws from.
//! * [`core_api`]: the one place that speaks the consensus core's API.
//! * [`plan`]: a scenario drawn from a seed: members, joiners, Byzantine
//!   strategies, faults, member changes.
//! * [`adversary`]: what Byzantine slots sign and send.
//! * [`world`]: nodes (core, producer's rules, modelled store), network, event queue.
//! * [`checker`]: the invariants, checked on every signature and commit.

pub mod adversary;
pub mod checker;
pub mod core_api;
pub mod plan;
pub mod rng;
pub mod world;
