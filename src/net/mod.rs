//! The transport: exactly one mutually authenticated QUIC connection per pair of
//! masternodes.
//!
//! * **Identity.** TLS 1.3 with both certificates pinned to the keys of the
//!   current member set ([`tls`]). A stranger never gets a stream.
//! * **Membership.** The member set is not fixed: it starts as
//!   [`NetConfig::members`] and is replaced at run time by [`Peers::set_members`]
//!   (the chain's set, as changes come into force). TLS, the handshake, admission
//!   and the connection rules all follow the latest set at once: a new member is
//!   accepted and dialled or awaited like any other; a removed member's connection
//!   is closed with [`Close::REMOVED`] and its key refused from then on; a moved
//!   member is dialled at its new address (a live connection is kept). A node
//!   outside the set it names (a joiner) still dials the members it knows; they
//!   refuse it at TLS, which costs it only backoff, until they add it. A node
//!   whose connection is closed with [`Close::REMOVED`] backs off as from a
//!   rejection.
//! * **Direction.** The member with the lower address in the member set dials,
//!   the other waits (`direction`). A waiting node that has heard nothing from the lower one
//!   for `passive_wait` dials itself (the lower one may be unable to reach it), so
//!   nobody waits forever.
//! * **Duplicates.** Should a pair hold two connections, both ends keep the same one
//!   (`direction::new_wins`) once its handshake is complete and close the other
//!   with [`Close::DUPLICATE`]: not a failure, no backoff.
//! * **Handshake.** On the connection's first bidirectional stream, then finished
//!   ([`handshake`]); no application data before it succeeds.
//! * **Liveness.** QUIC keepalive and idle timeout; no ping/pong. A peer whose
//!   connection closes leaves the active set at once.
//! * **Messages.** Length-prefixed frames ([`crate::codec`]) whose kinds and limits
//!   the application supplies per stream ([`Protocol`]): one long-lived
//!   unidirectional stream per direction for gossip and consensus, a bidirectional
//!   stream per request. The transport carries bytes; it knows nothing of blocks.
//! * **No peer can slow the others.** Sending never waits: `send` and `broadcast`
//!   queue into a per-peer outbox bounded in bytes per [`Class`] and return at once
//!   (consensus superseded by later heights, transactions dropped when full,
//!   consensus first on the wire). A peer that does not take what we have for it
//!   within the slow-peer deadline is disconnected with [`Close::TOO_SLOW`].
//!   Inbound, each peer has a byte budget, peers are served in turn by cost
//!   (a turn per frame or per 64 KiB of it) and each peer's consensus kinds
//!   ahead of its others.
//! * **Admission.** Handshakes in progress are bounded in total and per address
//!   (IPv6 per /64), with a share reserved for the member set's addresses; under
//!   load, strangers must prove their address (QUIC Retry) first, and a QUIC/TLS
//!   handshake has a short deadline of its own.
//!
//! The per-member connection rules are a state machine without IO (`slots`);
//! one task, the manager, owns it and the peer table, and publishes the table as
//! one snapshot that sends, the quorum gate, status and metrics all read.
//! Connection tasks carry bytes; [`Peers`] is the handle the rest of the node uses.

mod admission;
mod answers;
mod backoff;
mod direction;
pub(crate) mod endpoint;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
pub(crate) mod handshake;
mod inbox;
mod manager;
mod outbox;
mod peer;
mod peers;
mod settings;
mod slots;
pub(crate) mod tls;

pub use answers::ANSWERS_PER_PEER;
pub use direction::{canonical, rank, Direction};
pub use endpoint::{
    bind as bind_endpoint, client_config, transport_config, transport_config as quic_transport_config, SocketWrapper,
};
#[cfg(feature = "fault-injection")]
pub use fault::Faults;
pub use handshake::{
    accept as handshake_accept, check_intro, dial as handshake_dial, Expect, Generation, HandshakeError, HandshakeMsg,
    Intro, LegacyIntro, LegacyMsg, Mismatch, RejectReason, Rejection, Tip, Versions, GENERATIONS, MAGIC, WIRE,
};
pub use inbox::Deliveries;
pub(crate) use inbox::Delivery;
pub(crate) use manager::reaches;
pub use manager::{bind, start, Bound, NetConfig, TestHooks};
pub use outbox::{Class, OutboxLimits, Outgoing};
pub use peers::{Counters, Inbound, Messages, Partial, Peers, Refusal, RequestError, SendError};
pub(crate) use peers::{InboundRequest, PeerEvent};
pub use settings::TransportConfig;
pub use tls::{client_rustls, peer_node_id, provider, server_rustls, RefusalLog, SERVER_NAME};

/// Which kinds each stream carries, with their body size limits; `None` for a kind
/// the stream does not carry. Supplied by the application (the chain), so the
/// transport checks every frame from its header without knowing what it means.
#[derive(Clone, Copy)]
pub struct Protocol {
    /// The long-lived unidirectional stream.
    pub gossip: fn(u8) -> Option<usize>,
    /// A request on a bidirectional stream.
    pub request: fn(u8) -> Option<usize>,
    /// The response to a request.
    pub response: fn(u8) -> Option<usize>,
    /// Gossip kinds each peer's inbound queue serves ahead of the others
    /// (consensus ahead of transactions; see the inbox).
    pub urgent: fn(u8) -> bool,
}

/// One stream's kinds and limits ([`Protocol`]'s function) as a table: the
/// reader checks every frame's header against it with a lookup, not a call.
pub(crate) struct KindLimits([Option<usize>; 256]);

impl KindLimits {
    pub(crate) fn of(limit: fn(u8) -> Option<usize>) -> Self {
        KindLimits(std::array::from_fn(|kind| limit(kind as u8)))
    }

    pub(crate) fn get(&self, kind: u8) -> Option<usize> {
        self.0[usize::from(kind)]
    }
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Protocol")
    }
}

/// Application close codes (QUIC `CONNECTION_CLOSE` and stream reset codes).
pub struct Close;

impl Close {
    /// The node is shutting down.
    pub(crate) const SHUTDOWN: u32 = 0;
    /// The pair has another connection that both ends keep.
    pub(crate) const DUPLICATE: u32 = 1;
    /// The handshake was rejected; the close reason names the [`RejectReason`](super::handshake::RejectReason).
    pub(crate) const REJECTED: u32 = 2;
    /// The handshake did not finish within its deadline.
    pub const HANDSHAKE_TIMEOUT: u32 = 3;
    /// A frame over the limit of its kind.
    pub const FRAME_TOO_LARGE: u32 = 4;
    /// A frame that is truncated, of unknown kind or does not decode.
    pub const MALFORMED_FRAME: u32 = 5;
    /// Any other breach of the protocol.
    pub const PROTOCOL: u32 = 6;
    /// A request stream the node did not answer in time.
    pub(crate) const REQUEST_TIMEOUT: u32 = 7;
    /// A request over the peer's rate limit.
    pub const RATE_LIMITED: u32 = 8;
    /// The peer did not take what we had for it within the slow-peer deadline.
    pub const TOO_SLOW: u32 = 9;
    /// A newer process with the same key holds the pair's connection.
    pub(crate) const SUPERSEDED: u32 = 10;
    /// The peer is no longer in the closing node's member set.
    pub(crate) const REMOVED: u32 = 11;
    /// The closing node's address of this connection is gone from its host (the
    /// close itself rarely arrives: it has no address left to leave from).
    pub(crate) const ADDRESS_LOST: u32 = 12;

    pub(crate) fn name(code: u64) -> &'static str {
        match code as u32 {
            Self::SHUTDOWN => "shutdown",
            Self::DUPLICATE => "duplicate",
            Self::REJECTED => "rejected",
            Self::HANDSHAKE_TIMEOUT => "handshake timeout",
            Self::FRAME_TOO_LARGE => "frame too large",
            Self::MALFORMED_FRAME => "malformed frame",
            Self::PROTOCOL => "protocol error",
            Self::REQUEST_TIMEOUT => "request timeout",
            Self::RATE_LIMITED => "rate limited",
            Self::TOO_SLOW => "too slow",
            Self::SUPERSEDED => "superseded",
            Self::REMOVED => "removed",
            Self::ADDRESS_LOST => "address lost",
            _ => "unknown",
        }
    }
}

/// The application close code a peer gets for sending a bad frame.
pub(crate) fn frame_error_code(e: &crate::codec::FrameError) -> u32 {
    use crate::codec::FrameError;
    match e {
        FrameError::TooLarge { .. } => Close::FRAME_TOO_LARGE,
        FrameError::Read(_) => Close::PROTOCOL,
        _ => Close::MALFORMED_FRAME,
    }
}

/// A short description of why a connection ended, for one log line.
pub(crate) fn describe_close(err: &quinn::ConnectionError) -> String {
    match err {
        quinn::ConnectionError::ApplicationClosed(ac) => {
            let code = ac.error_code.into_inner();
            let reason = String::from_utf8_lossy(&ac.reason);
            if reason.is_empty() {
                format!("closed by peer: {}", Close::name(code))
            } else {
                format!("closed by peer: {} ({reason})", Close::name(code))
            }
        }
        quinn::ConnectionError::LocallyClosed => "closed locally".into(),
        quinn::ConnectionError::TimedOut => "idle timeout".into(),
        quinn::ConnectionError::Reset => "reset by peer (restarted?)".into(),
        other => other.to_string(),
    }
}

/// Whether the peer closed the connection because we are not in its member set.
pub(crate) fn is_removal(err: &quinn::ConnectionError) -> bool {
    matches!(err, quinn::ConnectionError::ApplicationClosed(ac) if ac.error_code == Close::REMOVED.into())
}

/// Whether a connection ended because TLS refused a certificate, at either end.
/// In TLS 1.3 the client sends its certificate last, so a client refused by the
/// server learns it only after its side of the handshake completed.
pub fn is_tls_refusal(err: &quinn::ConnectionError) -> bool {
    let code = match err {
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        _ => return false,
    };
    // QUIC carries TLS alerts as CRYPTO_ERROR, 0x0100 + alert (RFC 9001, 4.8).
    (0x100..0x200).contains(&code)
}

/// Whether the peer's TLS refused our certificate (the alert came from it): it
/// does not count our key as a member.
pub(crate) fn is_tls_refusal_by_peer(err: &quinn::ConnectionError) -> bool {
    matches!(err, quinn::ConnectionError::ConnectionClosed(_)) && is_tls_refusal(err)
}

#[cfg(test)]
mod tests {
    use super::Close;

    #[test]
    fn every_close_code_has_a_name_of_its_own() {
        let names: Vec<&str> = (0..=u64::from(Close::ADDRESS_LOST)).map(Close::name).collect();
        assert!(!names.contains(&"unknown"), "{names:?}");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(Close::name(Close::REMOVED.into()), "removed");
        assert_eq!(Close::name(u64::from(Close::ADDRESS_LOST) + 1), "unknown");
    }
}
