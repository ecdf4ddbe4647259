//! The adversarial simulation's parts; `tests/simulation.rs` runs it.
//!
//! * [`rng`]: the seeded PRNG everything draws from.
//! * [`core_api`]: the one place that speaks the library's API (the core and
//!   the producer's driver as `Node::start` builds them, messages, signing).
//! * [`plan`]: a scenario drawn from a seed: members, joiners, Byzantine
//!   strategies, faults, member changes.
//! * [`adversary`]: what Byzantine slots sign and send.
//! * [`store`]: a node's store with fjall's durability.
//! * [`world`]: nodes (a driver and a store each), network, event queue.
//! * [`checker`]: the invariants, checked on every signature and commit.

pub mod adversary;
pub mod checker;
pub mod core_api;
pub mod plan;
pub mod resources;
pub mod rng;
pub mod store;
pub mod world;
