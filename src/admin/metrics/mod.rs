//! `GET /metrics`: Prometheus text exposition.
//!
//! The live values sit in the atomics the transport and the producer already keep;
//! a scrape copies them into a fresh prometheus-client registry and encodes it, so
//! nothing on a hot path pays for metrics. Names carry the `masternode_` prefix and
//! base units; counters end in `_total`; labels come only from small fixed sets
//! (direction, result, reason), never one per peer. The process's own figures
//! (memory, CPU, start time) keep the names every Prometheus client gives them,
//! without the prefix ([`process`]).
//!
//! `monitoring/alerts.yml` and `monitoring/grafana/masternode.json` use these
//! names; `tests/suite/monitoring.rs` checks that every name they use is exported.

mod process;

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::guard::Refusal;
use super::AdminStats;
use crate::chain::driver::Held;
use crate::net::handshake::RejectReason;
use crate::net::Class;
use crate::status::StatusSource;

type Labels = Vec<(String, String)>;

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric of the node behind `source`.
pub(crate) fn render(source: &StatusSource, admin: &AdminStats) -> String {
    let status = source.status();
    let peers_handle = source.peers();
    let net = peers_handle.counters();
    let chain = source.chain();
    let mempool = source.mempool();
    let mut root = Registry::default();
    register_process(&mut root);
    let reg = root.sub_registry_with_prefix("masternode");
    let build = Family::<Labels, Gauge>::default();
    build.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())]).set(1);
    reg.register("build_info", "Always 1; the version of the running binary in its label", build);
    reg.register("members", "Size of the masternode set in force at the next height", gauge(status.members as i64));
    reg.register(
        "member",
        "1 while this node is in the member set (0: a joiner, or removed)",
        gauge(status.member as i64),
    );
    reg.register(
        "member_changes_pending",
        "Membership changes collecting approvals",
        gauge(status.pending_changes.len() as i64),
    );
    reg.register(
        "block_interval_seconds",
        "The network's configured time between blocks",
        gauge_f64(source.network().block_interval_ms as f64 / 1000.0),
    );

    let peers = Family::<Labels, Gauge>::default();
    for dir in ["inbound", "outbound"] {
        let n = status.peers.iter().filter(|p| p.direction == dir).count();
        peers.get_or_create(&vec![("direction".into(), dir.into())]).set(n as i64);
    }
    reg.register("peers_connected", "Peers with a completed handshake", peers);
    if !status.peers.is_empty() {
        let mut rtts: Vec<f64> = status.peers.iter().map(|p| p.rtt_ms / 1000.0).collect();
        rtts.sort_by(f64::total_cmp);
        let mid = rtts.len() / 2;
        let median = if rtts.len() % 2 == 1 { rtts[mid] } else { (rtts[mid - 1] + rtts[mid]) / 2.0 };
        let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        rtt.get_or_create(&vec![("stat".into(), "median".into())]).set(median);
        rtt.get_or_create(&vec![("stat".into(), "max".into())]).set(rtts[rtts.len() - 1]);
        reg.register("peer_rtt_seconds", "Round-trip time to connected peers: median and max over them", rtt);
    }
    reg.register("dials", "Outbound connection attempts", counter(load(&net.dials)));
    reg.register("dial_failures", "Dials that reached no one", counter(load(&net.dial_failures)));
    let handshakes = Family::<Labels, Counter>::default();
    handshakes.get_or_create(&vec![("result".into(), "ok".into())]).inc_by(load(&net.handshakes_ok));
    handshakes.get_or_create(&vec![("result".into(), "failed".into())]).inc_by(load(&net.handshakes_failed));
    reg.register("handshakes", "Completed and failed handshakes, both directions", handshakes);
    let rejects = Family::<Labels, Counter>::default();
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        for (dir, arr) in [("sent", &net.rejects_sent), ("received", &net.rejects_received)] {
            rejects
                .get_or_create(&vec![("direction".into(), dir.into()), ("reason".into(), r.as_str().into())])
                .inc_by(load(&arr[i]));
        }
    }
    reg.register("handshake_rejects", "Handshake rejections by reason", rejects);
    reg.register("handshake_timeouts", "Handshakes past their deadline", counter(load(&net.handshake_timeouts)));
    let tls = Family::<Labels, Counter>::default();
    tls.get_or_create(&vec![("side".into(), "server".into())]).inc_by(peers_handle.tls_refused());
    tls.get_or_create(&vec![("side".into(), "client".into())]).inc_by(load(&net.tls_failed));
    reg.register("tls_refusals", "Certificates refused at TLS", tls);
    reg.register("duplicates_closed", "Second connections of a pair closed", counter(load(&net.duplicates_closed)));
    reg.register("bad_frames", "Frames over their limit or malformed", counter(load(&net.bad_frames)));
    reg.register("frames_sent", "Frames queued for peers", counter(load(&net.frames_sent)));
    reg.register("frames_received", "Frames read from peers", counter(load(&net.frames_received)));
    reg.register("sent_bytes", "Frame bytes queued for peers", counter(load(&net.bytes_sent)));
    reg.register("received_bytes", "Frame bytes read from peers", counter(load(&net.bytes_received)));
    let outbox_bytes = peers_handle.outbox_bytes();
    let queued = Family::<Labels, Gauge>::default();
    let dropped = Family::<Labels, Counter>::default();
    for class in Class::ALL {
        let label = vec![("class".into(), class.as_str().into())];
        queued.get_or_create(&label).set(outbox_bytes[class.index()] as i64);
        dropped.get_or_create(&label).inc_by(load(&net.outbox_dropped[class.index()]));
    }
    reg.register("outbox_bytes", "Bytes queued for peers, all peers, by class", queued);
    reg.register("outbox_dropped", "Frames dropped because a peer's outbox was full, by class", dropped);
    reg.register(
        "slow_peer_disconnects",
        "Peers disconnected for not taking what was queued for them in time",
        counter(load(&net.slow_peer_disconnects)),
    );
    reg.register(
        "inbound_bytes",
        "Bytes read from peers and waiting for the node",
        gauge(peers_handle.inbound_bytes() as i64),
    );
    reg.register(
        "admission_refused",
        "Connection attempts refused before a handshake (admission limits)",
        counter(load(&net.admission_refused)),
    );
    reg.register(
        "retries_sent",
        "Connection attempts asked to prove their address (QUIC Retry)",
        counter(load(&net.retries_sent)),
    );

    reg.register("height", "Height of the last committed block", gauge(status.height as i64));
    reg.register("round", "Consensus round at the current height", gauge(load(&chain.round) as i64));
    let tip_ms = match load(&chain.last_block_timestamp_ms) {
        0 => source.network().genesis_time_ms,
        ms => ms,
    };
    reg.register(
        "last_block_timestamp_seconds",
        "Header timestamp of the last committed block (the proposer's clock); the genesis time before the first",
        gauge_f64(tip_ms as f64 / 1000.0),
    );
    reg.register(
        "best_peer_height",
        "Highest tip a usable peer claims (0 if none): above masternode_height while catching up",
        gauge(load(&chain.best_peer_tip) as i64),
    );
    reg.register(
        "earliest_height",
        "Lowest height whose block this node holds and serves (1 unless retain_blocks pruned older ones)",
        gauge(load(&chain.earliest_height) as i64),
    );
    reg.register(
        "data_dir_bytes",
        "Bytes of the files in the data dir, measured every second",
        gauge(load(&chain.data_dir_bytes) as i64),
    );
    let clock_peers = load(&chain.clock_peers);
    let offset_ms = if clock_peers > 0 { chain.clock_offset_ms.load(Ordering::Relaxed) } else { 0 };
    reg.register(
        "clock_offset_seconds",
        "This node's clock minus the median of its peers' (from their proposals); 0 while unknown",
        gauge_f64(offset_ms as f64 / 1000.0),
    );
    reg.register(
        "clock_offset_peers",
        "Peers whose recent proposals the clock offset is estimated from",
        gauge(clock_peers as i64),
    );
    reg.register("quorum_active", "This node plus connected peers", gauge(status.quorum.active as i64));
    reg.register("quorum_required", "Masternodes needed to make progress", gauge(status.quorum.required as i64));
    reg.register("quorum_met", "1 while the quorum gate is open", gauge(status.quorum.met as i64));
    reg.register(
        "commit_latency_seconds",
        "Seconds from a block's proposal to its commit here",
        chain.commit_latency.clone(),
    );
    reg.register("blocks_synced", "Blocks fetched from peers", counter(load(&chain.blocks_synced)));
    let sync_failures = Family::<Labels, Counter>::default();
    for (i, f) in crate::chain::sync::Failure::ALL.iter().enumerate() {
        sync_failures.get_or_create(&vec![("reason".into(), f.as_str().into())]).inc_by(load(&chain.sync_failures[i]));
    }
    reg.register("sync_failures", "Sync requests that failed, by reason", sync_failures);
    reg.register("misbehaviour", "Protocol violations seen from members", counter(load(&chain.misbehaviour)));
    let refused = Family::<Labels, Counter>::default();
    for (budget, n) in [("rate", &chain.requests_refused_rate), ("bytes", &chain.requests_refused_bytes)] {
        refused.get_or_create(&vec![("budget".into(), budget.into())]).inc_by(load(n));
    }
    reg.register(
        "requests_refused",
        "Peers' requests refused as rate limited, by budget: requests per second, or bytes of answers per second",
        refused,
    );
    reg.register("mempool_transactions", "Transactions waiting for a block", gauge(mempool.txs as i64));
    reg.register("mempool_bytes", "Bytes of transactions waiting for a block", gauge(mempool.bytes as i64));
    let c = mempool.counters;
    let refused = Family::<Labels, Counter>::default();
    for (share, n) in [("local", c.refused_local), ("members", c.refused_members)] {
        refused.get_or_create(&vec![("share".into(), share.into())]).inc_by(n);
    }
    reg.register(
        "mempool_refused",
        "Transactions refused because their source's share of the mempool was full, by share",
        refused,
    );
    let committed = Family::<Labels, Counter>::default();
    for (share, n) in [("local", c.committed_local), ("members", c.committed_members)] {
        committed.get_or_create(&vec![("share".into(), share.into())]).inc_by(n);
    }
    reg.register(
        "mempool_committed_refused",
        "Transactions refused because a block of the last 600 heights committed them, by share",
        committed,
    );
    let dropped = Family::<Labels, Counter>::default();
    for (reason, n) in [("expired", c.expired), ("member_left", c.member_left), ("trimmed", c.trimmed)] {
        dropped.get_or_create(&vec![("reason".into(), reason.into())]).inc_by(n);
    }
    reg.register("mempool_dropped", "Transactions dropped from the mempool without a block, by reason", dropped);
    let held = Family::<Labels, Gauge>::default();
    for what in Held::ALL {
        held.get_or_create(&vec![("what".into(), what.as_str().into())]).set(chain.held(what) as i64);
    }
    // What the transport holds (frames read and not yet taken, frames queued
    // for peers by class, answers to peers' requests being written, requests
    // read and not yet taken, the strangers' keys TLS has warned about), the
    // mempool's two kinds of share and its record of committed ids.
    let mut transport: Vec<(&str, u64)> = vec![("inbox", peers_handle.inbound_bytes())];
    for class in crate::net::Class::ALL {
        transport.push((class.held_label(), outbox_bytes[class.index()]));
    }
    transport.push(("answers", peers_handle.answer_bytes()));
    transport.push(("tls_strangers", peers_handle.tls_strangers_bytes()));
    transport.push(("requests", peers_handle.request_bytes()));
    transport.push(("mempool_local", mempool.by_share.local as u64));
    transport.push(("mempool_members", mempool.by_share.members as u64));
    transport.push(("mempool_committed", mempool.committed_bytes as u64));
    for (what, bytes) in transport {
        held.get_or_create(&vec![("what".into(), what.into())]).set(bytes as i64);
    }
    reg.register("held_bytes", "Bytes held for what peers sent, by structure", held);

    reg.register(
        "admin_connections",
        "Admin API connections open now (at most 64; more wait in the listen backlog)",
        gauge(admin.connections() as i64),
    );
    reg.register(
        "admin_connection_waits",
        "Times the admin API had its most connections open and new ones waited",
        counter(admin.connection_waits()),
    );
    let refused = Family::<Labels, Counter>::default();
    for reason in Refusal::ALL {
        refused.get_or_create(&vec![("reason".into(), reason.as_str().into())]).inc_by(admin.refused(reason));
    }
    reg.register("admin_refused", "Admin API requests refused before their handler, by reason", refused);

    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = encode(&mut out, &root);
    out
}

fn gauge_f64(value: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    g
}

/// `process_*`: registered at the root, without the `masternode_` prefix.
fn register_process(root: &mut Registry) {
    let Some(p) = process::read() else { return };
    root.register(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        gauge(p.resident_memory_bytes as i64),
    );
    root.register("process_virtual_memory_bytes", "Virtual memory size in bytes", gauge(p.virtual_memory_bytes as i64));
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(p.cpu_seconds);
    root.register("process_cpu_seconds", "Total user and system CPU time spent in seconds", cpu);
    root.register(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        gauge_f64(p.start_time_seconds),
    );
    root.register("process_open_fds", "Number of open file descriptors", gauge(p.open_fds as i64));
}
