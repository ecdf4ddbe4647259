//! The long scenarios: real sockets and processes like `tests/suite/`, each
//! tens of seconds of real time (a slow peer's 10 s deadline several times
//! over, thousands of blocks, a 20 s clock offset, a set that grows to seven
//! and back, a watch of several intervals). Not part of `cargo test`, so that
//! the default run stays a few minutes; `.ci/run` runs them, and so does
//! `cargo test --test long`. One binary, so the crate is linked once for all.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/honest.rs"]
mod honest;

mod catch_up;
mod clocks;
mod compact_memory;
mod doppelganger;
mod kill_9;
mod membership;
mod retention;
mod slow_peers;
mod transport;
mod upgrade_plans;
