//! The integration suite: the scenarios on real sockets and processes that take
//! seconds each, in one test binary so the crate is linked once for all of
//! them. Those that take tens of seconds are in `tests/long/` (`cargo test
//! --test long`, run by `.ci/run`). Binaries of their own: `simulation` and
//! `netns` (opt-in commands of their own), `flood` and `regression_guard` (they
//! measure the whole process: its resident memory, its allocations),
//! `mempool_flood` (a timed figure under a flood of its own), `upgrade`
//! (opt-in: it builds the previous release).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/honest.rs"]
mod honest;

mod admin;
mod chain;
mod checkpoint;
mod compact;
mod docs_check;
mod fuzz_corpus;
mod hostile_budgets;
mod hostile_frames;
mod hostile_peers;
mod log_format;
mod membership_cli;
mod membership_transport;
mod monitoring;
mod ops;
mod process;
mod readiness;
mod security_doc;
mod soak;
mod store_formats;
mod transport;
mod wire_versions;
