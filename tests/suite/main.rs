//! The default integration run: every scenario on real sockets and processes,
//! the floods, the counting guards and the simulation's quick run, in one test
//! binary, so the crate is linked once for all of them and their waits overlap
//! (cargo runs test binaries one after another; the tests of one binary run
//! side by side). A test that measures its whole process runs in a copy of this
//! binary of its own ([`common::in_own_process`]). Binaries of their own, built
//! only when named: `simulation` (its opt-in long run, `cargo test --release
//! --test simulation -- --ignored`; its quick run is `simulation::` here too),
//! `netns` and `upgrade` (opt-in).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/honest.rs"]
mod honest;
// The simulation's own file, so that `cargo test --test simulation` and this
// binary run the same tests.
#[path = "../simulation.rs"]
mod simulation;

mod admin;
mod catch_up;
mod chain;
mod checkpoint;
mod clocks;
mod compact;
mod compact_memory;
mod dense_flood;
mod docs_check;
mod doppelganger;
mod flood;
mod fuzz_corpus;
mod hostile_budgets;
mod hostile_frames;
mod hostile_peers;
mod log_format;
mod membership;
mod membership_cli;
mod membership_transport;
mod mempool_flood;
mod monitoring;
mod ops;
mod process;
mod readiness;
mod regression_guard;
mod retention;
mod security_doc;
mod slow_peers;
mod soak;
mod store_formats;
mod transport;
mod upgrade_plans;
mod wire_versions;
