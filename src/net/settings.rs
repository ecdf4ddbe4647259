//! The transport's tunables, which `config` fills from `masternode.toml`.

use std::time::Duration;

/// Transport tunables; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub passive_wait: Duration,
    pub handshake_timeout: Duration,
    /// Request streams a peer may have open at once (QUIC's bidirectional stream
    /// limit; the handshake uses one).
    pub max_request_streams: u32,
    /// Handshakes in progress at once, in total and from one IP address.
    pub max_pending_handshakes: usize,
    pub max_pending_handshakes_per_ip: usize,
    /// How long a peer may leave what we queued for it untaken (not grant our
    /// stream, not read) before it is disconnected as too slow.
    pub slow_peer_timeout: Duration,
    /// Bytes read from one peer and waiting for the node, at most.
    pub inbound_peer_bytes: usize,
    /// Byte budgets of each peer's outbox, by class.
    pub outbox: super::OutboxLimits,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keepalive: Duration::from_millis(5_000),
            idle_timeout: Duration::from_millis(20_000),
            passive_wait: Duration::from_millis(10_000),
            handshake_timeout: Duration::from_millis(5_000),
            max_request_streams: 16,
            max_pending_handshakes: 64,
            max_pending_handshakes_per_ip: 8,
            slow_peer_timeout: Duration::from_millis(10_000),
            inbound_peer_bytes: 4 * 1024 * 1024,
            outbox: Default::default(),
        }
    }
}
