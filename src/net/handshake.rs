//! The handshake, on a stream of its own.
//!
//! After QUIC and mutual TLS the dialer opens the connection's first bidirectional
//! stream, sends `Hello` and finishes its side; the acceptor answers `Welcome` or
//! `Reject { reason }` and finishes too. The stream then carries nothing else.
//! Both `Hello` and `Welcome` carry an [`Intro`]: magic, protocol version, network
//! id, the sender's `NodeId` (which must equal the key TLS proved), its configured
//! address, its chain tip, its software version and its incarnation (a random
//! number drawn at start-up, which lets both ends tell a connection from a restarted
//! peer from a leftover of its previous life).
//!
//! TLS already proved that the peer holds a member key; the handshake proves that
//! both run the same network and protocol and name themselves truthfully. A rejected
//! connection is closed with [`close::REJECTED`] and the reason's name as the close
//! reason, so the reason reaches the peer even if the `Reject` frame does not.
//! Rejection is decided by [`check_intro`], a pure function.

use std::net::SocketAddr;
use std::time::Duration;

use super::close;
use crate::codec::{self, Frame, FrameError};
use crate::identity::NodeId;

pub const MAGIC: [u8; 4] = *b"MNOD";
/// 2: block headers carry membership approvals (version 1 peers could not
/// decode our blocks, nor we theirs). 3: tips carry the sender's clock, and
/// proposals travel compact (header and transaction ids; kinds 8 to 10).
pub const PROTOCOL_VERSION: u16 = 3;
const HANDSHAKE_LIMIT: usize = 1024;

/// The chain tip a node announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct Tip {
    pub height: u64,
    pub hash: [u8; 32],
}

/// What each side says about itself.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Intro {
    pub magic: [u8; 4],
    pub version: u16,
    pub network_id: [u8; 32],
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub tip: Tip,
    pub software: String,
    pub incarnation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum RejectReason {
    WrongNetwork,
    UnsupportedVersion,
    IdMismatch,
    Duplicate,
    NotInSet,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::WrongNetwork,
        RejectReason::UnsupportedVersion,
        RejectReason::IdMismatch,
        RejectReason::Duplicate,
        RejectReason::NotInSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::WrongNetwork => "wrong_network",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::IdMismatch => "id_mismatch",
            RejectReason::Duplicate => "duplicate",
            RejectReason::NotInSet => "not_in_set",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum HandshakeMsg {
    Hello(Intro),
    Welcome(Intro),
    Reject(RejectReason),
}

impl Frame for HandshakeMsg {
    fn limit(kind: u8) -> Option<usize> {
        (kind <= 2).then_some(HANDSHAKE_LIMIT)
    }
}

/// What the receiving side checks an `Intro` against.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    pub network_id: [u8; 32],
    pub version: u16,
    /// The key the peer's TLS certificate carries.
    pub tls_key: NodeId,
    pub is_member: &'a (dyn Fn(&NodeId) -> bool + Sync),
}

/// Whether an `Intro` is acceptable: same protocol, same network, the id that TLS
/// proved, a member of the set.
pub fn check_intro(intro: &Intro, expect: &Expect<'_>) -> Result<(), RejectReason> {
    if intro.version != expect.version {
        return Err(RejectReason::UnsupportedVersion);
    }
    if intro.network_id != expect.network_id {
        return Err(RejectReason::WrongNetwork);
    }
    if intro.node_id != expect.tls_key {
        return Err(RejectReason::IdMismatch);
    }
    if !(expect.is_member)(&intro.node_id) {
        return Err(RejectReason::NotInSet);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("peer rejected us: {0}")]
    RejectedByPeer(RejectReason),
    #[error("we rejected the peer: {0}")]
    RejectedPeer(RejectReason),
    #[error("not a masternode handshake (bad magic)")]
    BadMagic,
    #[error("unexpected handshake message")]
    Unexpected,
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake stream: {0}")]
    Stream(String),
    #[error("connection lost during handshake: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl HandshakeError {
    /// The reject reason behind this error, if any, as seen by either side.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            HandshakeError::RejectedByPeer(r) | HandshakeError::RejectedPeer(r) => Some(*r),
            _ => None,
        }
    }
}

/// Dialer side: sends `Hello`, reads `Welcome` or `Reject`, checks the `Welcome`.
/// Returns the peer's `Intro`. The caller bounds it with the handshake deadline;
/// dropping it drops the stream, which is all the cleanup a cancelled handshake
/// needs.
pub async fn dial(conn: &quinn::Connection, ours: &Intro, expect: &Expect<'_>) -> Result<Intro, HandshakeError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let frame = codec::encode(&HandshakeMsg::Hello(ours.clone()));
    send.write_all(&frame).await.map_err(|e| stream_error(conn, e))?;
    send.finish().map_err(|e| HandshakeError::Stream(e.to_string()))?;
    let bytes = recv.read_to_end(HANDSHAKE_LIMIT + 4).await.map_err(|e| stream_error(conn, e))?;
    match codec::decode_single::<HandshakeMsg>(&bytes)? {
        HandshakeMsg::Welcome(theirs) => {
            if let Err(reason) = check_intro(&theirs, expect) {
                conn.close(close::REJECTED.into(), reason.as_str().as_bytes());
                return Err(HandshakeError::RejectedPeer(reason));
            }
            Ok(theirs)
        }
        HandshakeMsg::Reject(reason) => Err(HandshakeError::RejectedByPeer(reason)),
        HandshakeMsg::Hello(_) => Err(HandshakeError::Unexpected),
    }
}

/// Acceptor side: reads `Hello`, answers `Welcome` or `Reject`.
/// On a rejection it closes the connection itself, after giving the dialer a moment
/// to read the `Reject` frame and close first.
pub async fn accept(conn: &quinn::Connection, ours: &Intro, expect: &Expect<'_>) -> Result<Intro, HandshakeError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let bytes = recv.read_to_end(HANDSHAKE_LIMIT + 4).await.map_err(|e| stream_error(conn, e))?;
    let theirs = match codec::decode_single::<HandshakeMsg>(&bytes) {
        Ok(HandshakeMsg::Hello(intro)) => intro,
        Ok(_) => return Err(HandshakeError::Unexpected),
        Err(e) if looks_like_other_version(&bytes) => {
            tracing::trace!("undecodable hello of another version: {e}");
            reject(conn, &mut send, RejectReason::UnsupportedVersion).await;
            return Err(HandshakeError::RejectedPeer(RejectReason::UnsupportedVersion));
        }
        Err(e) => return Err(e.into()),
    };
    if theirs.magic != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if let Err(reason) = check_intro(&theirs, expect) {
        reject(conn, &mut send, reason).await;
        return Err(HandshakeError::RejectedPeer(reason));
    }
    let frame = codec::encode(&HandshakeMsg::Welcome(ours.clone()));
    send.write_all(&frame).await.map_err(|e| stream_error(conn, e))?;
    send.finish().map_err(|e| HandshakeError::Stream(e.to_string()))?;
    Ok(theirs)
}

async fn reject(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: RejectReason) {
    let frame = codec::encode(&HandshakeMsg::Reject(reason));
    // Best effort: the close below carries the reason as well.
    if send.write_all(&frame).await.is_ok() && send.finish().is_ok() {
        let _dialer_closed = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
    }
    conn.close(close::REJECTED.into(), reason.as_str().as_bytes());
}

/// A `Hello` that carries our magic but a version number other than ours: answer
/// `UnsupportedVersion` rather than a decode error, whatever its layout.
fn looks_like_other_version(frame: &[u8]) -> bool {
    // Frame: 4-byte length, kind 0 (Hello), 4 magic bytes, version (varint).
    frame.len() > 9 && frame[4] == 0 && frame[5..9] == MAGIC
}

/// A stream error during the handshake; when the connection itself was closed with
/// a rejection, that rejection is the real story.
fn stream_error(conn: &quinn::Connection, e: impl std::fmt::Display) -> HandshakeError {
    if let Some(err) = conn.close_reason() {
        if let Some(reason) = rejection_in(&err) {
            return HandshakeError::RejectedByPeer(reason);
        }
        return HandshakeError::Connection(err);
    }
    HandshakeError::Stream(e.to_string())
}

/// The reject reason a peer put in its close, if it closed with one.
pub fn rejection_in(err: &quinn::ConnectionError) -> Option<RejectReason> {
    match err {
        quinn::ConnectionError::ApplicationClosed(ac) if ac.error_code == close::REJECTED.into() => {
            RejectReason::from_name(std::str::from_utf8(&ac.reason).ok()?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intro() -> Intro {
        Intro {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            network_id: [7; 32],
            node_id: NodeId([1; 32]),
            listen: "127.0.0.1:1".parse().unwrap(),
            tip: Tip::default(),
            software: "test".into(),
            incarnation: 42,
        }
    }

    #[test]
    fn check_intro_gives_each_typed_reason() {
        let members = |id: &NodeId| id.0[0] < 5;
        let expect =
            Expect { network_id: [7; 32], version: PROTOCOL_VERSION, tls_key: NodeId([1; 32]), is_member: &members };
        type Tweak = Box<dyn Fn(&mut Intro, &mut Expect)>;
        let cases: Vec<(&str, Tweak, Result<(), RejectReason>)> = vec![
            ("a matching hello is accepted", Box::new(|_, _| {}), Ok(())),
            ("another network id", Box::new(|i, _| i.network_id = [8; 32]), Err(RejectReason::WrongNetwork)),
            (
                "another version",
                Box::new(|i, _| i.version = PROTOCOL_VERSION + 1),
                Err(RejectReason::UnsupportedVersion),
            ),
            (
                "claims a key TLS did not prove",
                Box::new(|i, _| i.node_id = NodeId([2; 32])),
                Err(RejectReason::IdMismatch),
            ),
            (
                "a key outside the set",
                Box::new(|i, e| {
                    i.node_id = NodeId([9; 32]);
                    e.tls_key = NodeId([9; 32]);
                }),
                Err(RejectReason::NotInSet),
            ),
        ];
        for (what, tweak, want) in cases {
            let mut i = intro();
            let mut e = expect;
            tweak(&mut i, &mut e);
            assert_eq!(check_intro(&i, &e), want, "{what}");
        }
    }

    #[test]
    fn handshake_messages_round_trip_and_fit_their_limit() {
        for m in
            [HandshakeMsg::Hello(intro()), HandshakeMsg::Welcome(intro()), HandshakeMsg::Reject(RejectReason::NotInSet)]
        {
            let bytes = codec::encode(&m);
            assert!(bytes.len() < HANDSHAKE_LIMIT);
            assert_eq!(codec::decode_single::<HandshakeMsg>(&bytes).unwrap(), m);
        }
        let hello = codec::encode(&HandshakeMsg::Hello(intro()));
        assert!(looks_like_other_version(&hello));
    }

    #[test]
    fn reason_names_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_name(r.as_str()), Some(r));
        }
    }
}
