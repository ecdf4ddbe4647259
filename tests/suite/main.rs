//! The integration suite: every scenario on real sockets and processes, in one
//! test binary so the crate is linked once for all of them. Binaries of their
//! own: `simulation` and `netns` (opt-in commands of their own), `flood` and
//! `regression_guard` (they measure the whole process: its resident memory, its
//! allocations), `mempool_flood` (a timed figure under a flood of its own), `upgrade` (opt-in: it
//! builds the previous release).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/honest.rs"]
mod honest;

mod admin;
mod catch_up;
mod chain;
mod checkpoint;
mod clocks;
mod compact;
mod compact_memory;
mod docs_check;
mod doppelganger;
mod fuzz_corpus;
mod hostile_budgets;
mod hostile_frames;
mod hostile_peers;
mod log_format;
mod membership;
mod membership_cli;
mod membership_transport;
mod monitoring;
mod ops;
mod process;
mod readiness;
mod retention;
mod security_doc;
mod slow_peers;
mod soak;
mod store_formats;
mod transport;
mod upgrade_plans;
mod wire_versions;
