//! `GET /metrics`: Prometheus text exposition.
//!
//! The live values sit in the atomics the transport and the producer already keep;
//! a scrape copies them into a fresh prometheus-client registry and encodes it, so
//! nothing on a hot path pays for metrics. Names carry the `masternode_` prefix and
//! base units; counters end in `_total`; labels come only from small fixed sets
//! (direction, result, reason), never one per peer.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admin::Status;
use crate::chain::producer::ChainMetrics;
use crate::net::handshake::RejectReason;
use crate::net::manager::Counters;

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

pub struct Snapshot<'a> {
    pub status: &'a Status,
    pub net: &'a Counters,
    pub tls_refused: u64,
    pub chain: &'a ChainMetrics,
    pub mempool_txs: usize,
    pub mempool_bytes: usize,
}

pub fn render(s: &Snapshot<'_>) -> String {
    let mut reg = Registry::with_prefix("masternode");
    let net = s.net;

    let peers = Family::<Labels, Gauge>::default();
    for dir in ["inbound", "outbound"] {
        let n = s.status.peers.iter().filter(|p| p.direction == dir).count();
        peers.get_or_create(&vec![("direction".into(), dir.into())]).set(n as i64);
    }
    reg.register("peers_connected", "Peers with a completed handshake", peers);
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
    tls.get_or_create(&vec![("side".into(), "server".into())]).inc_by(s.tls_refused);
    tls.get_or_create(&vec![("side".into(), "client".into())]).inc_by(load(&net.tls_failed));
    reg.register("tls_refusals", "Certificates refused at TLS", tls);
    reg.register("duplicates_closed", "Second connections of a pair closed", counter(load(&net.duplicates_closed)));
    reg.register("bad_frames", "Frames over their limit or malformed", counter(load(&net.bad_frames)));
    reg.register("frames_sent", "Frames queued for peers", counter(load(&net.frames_sent)));
    reg.register("frames_received", "Frames read from peers", counter(load(&net.frames_received)));
    reg.register("sent_bytes", "Frame bytes queued for peers", counter(load(&net.bytes_sent)));
    reg.register("received_bytes", "Frame bytes read from peers", counter(load(&net.bytes_received)));

    reg.register("height", "Height of the last committed block", gauge(s.status.height as i64));
    reg.register("quorum_active", "This node plus connected peers", gauge(s.status.quorum.active as i64));
    reg.register("quorum_required", "Masternodes needed to make progress", gauge(s.status.quorum.required as i64));
    reg.register("quorum_met", "1 while the quorum gate is open", gauge(s.status.quorum.met as i64));
    reg.register(
        "commit_latency_seconds",
        "Seconds from a block's proposal to its commit here",
        s.chain.commit_latency.clone(),
    );
    reg.register("blocks_synced", "Blocks fetched from peers", counter(load(&s.chain.blocks_synced)));
    reg.register("misbehaviour", "Protocol violations seen from members", counter(load(&s.chain.misbehaviour)));
    reg.register("mempool_transactions", "Transactions waiting for a block", gauge(s.mempool_txs as i64));
    reg.register("mempool_bytes", "Bytes of transactions waiting for a block", gauge(s.mempool_bytes as i64));

    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}
