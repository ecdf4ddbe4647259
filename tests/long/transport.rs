//! The contract scenario at length: five nodes started at the same instant,
//! twenty times over (`tests/suite/transport.rs` runs it five times).

use crate::common::simultaneous_starts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_start_twenty_times_gives_one_connection_per_pair_each_time() {
    simultaneous_starts(20).await;
}
