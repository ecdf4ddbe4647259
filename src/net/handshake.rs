//! The handshake, on a stream of its own.
//!
//! After QUIC and mutual TLS the dialer opens the connection's first bidirectional
//! stream, sends `Hello` and finishes its side; the acceptor answers `Welcome` or
//! `Reject { reason }` and finishes too. The stream then carries nothing else.
//! Both `Hello` and `Welcome` carry an [`Intro`]: magic, the wire versions the
//! sender speaks, network id, the sender's `NodeId` (which must equal the key TLS
//! proved), its configured address, its chain tip, its software version and its
//! incarnation (a random number drawn at start-up, which lets both ends tell a
//! connection from a restarted peer from a leftover of its previous life).
//!
//! TLS already proved that the peer holds a member key; the handshake proves that
//! both run the same network and a wire version both speak, and name themselves
//! truthfully. A rejected connection is closed with [`Close::REJECTED`] and the
//! reason's name as the close reason, so the reason reaches the peer even if the
//! `Reject` frame does not. Rejection is decided by [`check_intro`], a pure
//! function.
//!
//! # Versions
//!
//! A release speaks a range of wire versions ([`Versions`]; this one [`WIRE`]), and
//! each connection uses one, fixed by its handshake. TLS's ALPN names the
//! handshake's [`Generation`]:
//!
//! * `masternode/1`, the only one releases up to 0.1.0 know: `Hello` and `Welcome`
//!   carry one version, which must be the acceptor's; the encoding is
//!   [`LegacyMsg`], byte for byte what 0.1.0 sends, with version [`V1_WIRE`].
//! * `masternode/2`: `Hello` and `Welcome` carry the sender's range `[min, max]`
//!   ([`HandshakeMsg`]); the connection uses the highest version in both ranges
//!   ([`Versions::negotiate`]); with none, the acceptor answers
//!   `Reject(UnsupportedVersion { ours, theirs })` with both ranges, so both ends
//!   can say which of them to upgrade ([`Mismatch`]).
//!
//! A node offers the generations its range allows, the newest first
//! ([`Generation::offered`]); the server side picks the first of its own list that
//! the client offered (rustls), so two nodes of this release speak `masternode/2`
//! and a node of 0.1.0, which offers and accepts only `masternode/1`, is met there
//! in either direction.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::Close;
use crate::codec::{self, Frame, FrameError};
use crate::identity::NodeId;

pub const MAGIC: [u8; 4] = *b"MNOD";
/// The wire versions this release speaks. 2: block headers carry membership
/// approvals. 3 (0.1.0): tips carry the sender's clock, and proposals travel
/// compact (kinds 8 to 10). 4: a membership change may be an upgrade plan
/// (`Change::Upgrade`), in approvals and in the blocks that carry them; every
/// other message is as in 3.
pub const WIRE: Versions = Versions { min: 3, max: 4 };
/// The one version this release speaks over `masternode/1`: 0.1.0's.
pub(crate) const V1_WIRE: u16 = 3;
/// The generations this release offers and accepts, the newest first
/// ([`Generation::offered`] of [`WIRE`]).
pub const GENERATIONS: [Generation; 2] = [Generation::V2, Generation::V1];
const HANDSHAKE_LIMIT: usize = 1024;

/// A range of wire versions, both ends included. A range with `min > max` is
/// empty: it has no version in common with any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub struct Versions {
    pub min: u16,
    pub max: u16,
}

impl Versions {
    pub const fn exactly(version: u16) -> Versions {
        Versions { min: version, max: version }
    }

    pub fn contains(self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }

    /// The highest version both ranges hold, if any.
    pub(crate) fn negotiate(self, theirs: Versions) -> Option<u16> {
        let (low, high) = (self.min.max(theirs.min), self.max.min(theirs.max));
        (low <= high).then_some(high)
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

/// The handshake's generation, as ALPN names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// `masternode/1`: one version, [`LegacyMsg`].
    V1,
    /// `masternode/2`: version ranges, [`HandshakeMsg`].
    V2,
}

impl Generation {
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Generation::V1 => b"masternode/1",
            Generation::V2 => b"masternode/2",
        }
    }

    pub(crate) fn from_alpn(protocol: &[u8]) -> Option<Generation> {
        [Generation::V2, Generation::V1].into_iter().find(|g| g.alpn() == protocol)
    }

    /// What a node speaking `versions` offers and accepts, the newest first:
    /// `masternode/2` always, `masternode/1` while the range holds [`V1_WIRE`].
    pub(crate) fn offered(versions: Versions) -> Vec<Generation> {
        let mut out = vec![Generation::V2];
        if versions.contains(V1_WIRE) {
            out.push(Generation::V1);
        }
        out
    }

    /// The generation TLS agreed on for `conn`.
    pub fn of(conn: &quinn::Connection) -> Option<Generation> {
        let data = conn.handshake_data()?;
        let data = data.downcast_ref::<quinn::crypto::rustls::HandshakeData>()?;
        Generation::from_alpn(data.protocol.as_deref()?)
    }
}

/// The chain tip a node announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct Tip {
    pub height: u64,
    pub hash: [u8; 32],
}

/// What each side says about itself (`masternode/2`).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Intro {
    pub magic: [u8; 4],
    /// The wire versions the sender speaks.
    pub versions: Versions,
    pub network_id: [u8; 32],
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub tip: Tip,
    pub software: String,
    pub incarnation: u64,
}

/// What each side says about itself over `masternode/1`: [`Intro`] with one
/// version in place of the range.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct LegacyIntro {
    pub magic: [u8; 4],
    pub version: u16,
    pub network_id: [u8; 32],
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub tip: Tip,
    pub software: String,
    pub incarnation: u64,
}

impl LegacyIntro {
    /// Ours over `masternode/1`: version [`V1_WIRE`] when our range holds it
    /// (otherwise we never offer `masternode/1`; a test announcing another range
    /// sends its highest).
    pub(crate) fn from_intro(intro: &Intro) -> LegacyIntro {
        let version = if intro.versions.contains(V1_WIRE) { V1_WIRE } else { intro.versions.max };
        LegacyIntro {
            magic: intro.magic,
            version,
            network_id: intro.network_id,
            node_id: intro.node_id,
            listen: intro.listen,
            tip: intro.tip,
            software: intro.software.clone(),
            incarnation: intro.incarnation,
        }
    }

    /// The peer's, as the rest of the node sees every peer: a range of one.
    pub fn into_intro(self) -> Intro {
        Intro {
            magic: self.magic,
            versions: Versions::exactly(self.version),
            network_id: self.network_id,
            node_id: self.node_id,
            listen: self.listen,
            tip: self.tip,
            software: self.software,
            incarnation: self.incarnation,
        }
    }
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

    pub(crate) fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an acceptor refused a `Hello`, as `masternode/2` carries it: the
/// reasons of [`RejectReason`], and for a version both ranges, in the
/// acceptor's terms (`ours` is the acceptor's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum Rejection {
    WrongNetwork,
    UnsupportedVersion { ours: Versions, theirs: Versions },
    IdMismatch,
    Duplicate,
    NotInSet,
}

impl Rejection {
    pub(crate) fn reason(self) -> RejectReason {
        match self {
            Rejection::WrongNetwork => RejectReason::WrongNetwork,
            Rejection::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            Rejection::IdMismatch => RejectReason::IdMismatch,
            Rejection::Duplicate => RejectReason::Duplicate,
            Rejection::NotInSet => RejectReason::NotInSet,
        }
    }

    /// The ranges, in the terms of the side that sent this.
    pub(crate) fn mismatch(self) -> Option<Mismatch> {
        match self {
            Rejection::UnsupportedVersion { ours, theirs } => Some(Mismatch { ours, theirs }),
            _ => None,
        }
    }
}

/// Two ranges with no version in common, in one node's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mismatch {
    /// This node's.
    pub ours: Versions,
    /// The peer's.
    pub theirs: Versions,
}

impl Mismatch {
    /// The same, in the other node's terms.
    pub(crate) fn swapped(self) -> Mismatch {
        Mismatch { ours: self.theirs, theirs: self.ours }
    }

    /// Which of the two is older, and so is to be upgraded.
    pub(crate) fn advice(self) -> &'static str {
        if self.theirs.min > self.theirs.max {
            "the peer announces no version at all"
        } else if self.theirs.min > self.ours.max {
            "upgrade this node"
        } else {
            "upgrade the peer"
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer speaks wire {}, this node {}: {}", self.theirs, self.ours, self.advice())
    }
}

/// The `masternode/2` handshake.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum HandshakeMsg {
    Hello(Intro),
    Welcome(Intro),
    Reject(Rejection),
}

impl Frame for HandshakeMsg {
    fn limit(kind: u8) -> Option<usize> {
        (kind <= 2).then_some(HANDSHAKE_LIMIT)
    }
}

/// The `masternode/1` handshake, as 0.1.0 encodes it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum LegacyMsg {
    Hello(LegacyIntro),
    Welcome(LegacyIntro),
    Reject(RejectReason),
}

impl Frame for LegacyMsg {
    fn limit(kind: u8) -> Option<usize> {
        (kind <= 2).then_some(HANDSHAKE_LIMIT)
    }
}

/// What the receiving side checks an `Intro` against.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    pub network_id: [u8; 32],
    /// The wire versions this node speaks.
    pub versions: Versions,
    /// The key the peer's TLS certificate carries.
    pub tls_key: NodeId,
    pub is_member: &'a (dyn Fn(&NodeId) -> bool + Sync),
}

/// Whether an `Intro` is acceptable: a wire version in common, same network, the
/// id that TLS proved, a member of the set. The version the connection uses, or
/// why not (in the checking side's terms).
pub fn check_intro(intro: &Intro, expect: &Expect<'_>) -> Result<u16, Rejection> {
    let Some(wire) = expect.versions.negotiate(intro.versions) else {
        return Err(Rejection::UnsupportedVersion { ours: expect.versions, theirs: intro.versions });
    };
    if intro.network_id != expect.network_id {
        return Err(Rejection::WrongNetwork);
    }
    if intro.node_id != expect.tls_key {
        return Err(Rejection::IdMismatch);
    }
    if !(expect.is_member)(&intro.node_id) {
        return Err(Rejection::NotInSet);
    }
    Ok(wire)
}

/// [`check_intro`] over `masternode/1`, which carries [`V1_WIRE`] alone; a
/// mismatch names this node's whole range.
fn check_legacy(intro: &Intro, expect: &Expect<'_>) -> Result<u16, Rejection> {
    let v1 = if expect.versions.contains(V1_WIRE) { Versions::exactly(V1_WIRE) } else { Versions { min: 1, max: 0 } };
    check_intro(intro, &Expect { versions: v1, ..*expect }).map_err(|r| match r {
        Rejection::UnsupportedVersion { theirs, .. } => Rejection::UnsupportedVersion { ours: expect.versions, theirs },
        other => other,
    })
}

/// A completed handshake: the peer's `Intro` and the wire version the
/// connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub intro: Intro,
    pub wire: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    /// With both ranges, when the peer said them (in this node's terms).
    #[error("peer rejected us: {reason}", reason = with_detail(.0, .1))]
    RejectedByPeer(RejectReason, Option<Mismatch>),
    #[error("we rejected the peer: {reason}", reason = with_detail(.0, .1))]
    RejectedPeer(RejectReason, Option<Mismatch>),
    #[error("not a masternode handshake (bad magic)")]
    BadMagic,
    #[error("unexpected handshake message")]
    Unexpected,
    #[error("TLS agreed on no handshake generation this node speaks")]
    NoGeneration,
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake stream: {0}")]
    Stream(String),
    #[error("connection lost during handshake: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// "unsupported_version (peer speaks wire 5..6, this node 3..4: upgrade this
/// node)", or the reason alone.
fn with_detail(reason: &RejectReason, mismatch: &Option<Mismatch>) -> String {
    match mismatch {
        Some(m) => format!("{reason} ({m})"),
        None => reason.to_string(),
    }
}

/// A rejection's reason with what is known of it, in this node's terms;
/// otherwise the error itself.
pub(crate) fn rejection_text(e: &HandshakeError) -> String {
    match e {
        HandshakeError::RejectedByPeer(r, m) | HandshakeError::RejectedPeer(r, m) => with_detail(r, m),
        other => other.to_string(),
    }
}

impl HandshakeError {
    /// The reject reason behind this error, if any, as seen by either side.
    pub(crate) fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            HandshakeError::RejectedByPeer(r, _) | HandshakeError::RejectedPeer(r, _) => Some(*r),
            _ => None,
        }
    }

    /// The two ranges with no version in common, in this node's terms, if that
    /// is why the handshake failed and the ranges are known.
    pub(crate) fn mismatch(&self) -> Option<Mismatch> {
        match self {
            HandshakeError::RejectedByPeer(_, m) | HandshakeError::RejectedPeer(_, m) => *m,
            _ => None,
        }
    }

    fn rejected_peer(r: Rejection) -> HandshakeError {
        HandshakeError::RejectedPeer(r.reason(), r.mismatch())
    }
}

/// Dialer side: sends `Hello`, reads `Welcome` or `Reject`, checks the `Welcome`,
/// in the generation TLS agreed on. The caller bounds it with the handshake
/// deadline; dropping it drops the stream, which is all the cleanup a cancelled
/// handshake needs.
pub async fn dial(conn: &quinn::Connection, ours: &Intro, expect: &Expect<'_>) -> Result<Agreed, HandshakeError> {
    let generation = Generation::of(conn).ok_or(HandshakeError::NoGeneration)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let frame = match generation {
        Generation::V2 => codec::encode(&HandshakeMsg::Hello(ours.clone())),
        Generation::V1 => codec::encode(&LegacyMsg::Hello(LegacyIntro::from_intro(ours))),
    };
    send.write_all(&frame).await.map_err(|e| stream_error(conn, e))?;
    send.finish().map_err(|e| HandshakeError::Stream(e.to_string()))?;
    let bytes = recv.read_to_end(HANDSHAKE_LIMIT + 4).await.map_err(|e| stream_error(conn, e))?;
    let (theirs, checked) = match generation {
        Generation::V2 => match codec::decode_single::<HandshakeMsg>(&bytes)? {
            HandshakeMsg::Welcome(theirs) => {
                let checked = check_intro(&theirs, expect);
                (theirs, checked)
            }
            HandshakeMsg::Reject(r) => {
                return Err(HandshakeError::RejectedByPeer(r.reason(), r.mismatch().map(Mismatch::swapped)))
            }
            HandshakeMsg::Hello(_) => return Err(HandshakeError::Unexpected),
        },
        Generation::V1 => match codec::decode_single::<LegacyMsg>(&bytes)? {
            LegacyMsg::Welcome(theirs) => {
                let theirs = theirs.into_intro();
                let checked = check_legacy(&theirs, expect);
                (theirs, checked)
            }
            // Every version other than 3 that `masternode/1` carried is older.
            LegacyMsg::Reject(RejectReason::UnsupportedVersion) => {
                let older = Mismatch { ours: expect.versions, theirs: Versions { min: 1, max: V1_WIRE - 1 } };
                return Err(HandshakeError::RejectedByPeer(RejectReason::UnsupportedVersion, Some(older)));
            }
            LegacyMsg::Reject(reason) => return Err(HandshakeError::RejectedByPeer(reason, None)),
            LegacyMsg::Hello(_) => return Err(HandshakeError::Unexpected),
        },
    };
    match checked {
        Ok(wire) => Ok(Agreed { intro: theirs, wire }),
        Err(r) => {
            conn.close(Close::REJECTED.into(), r.reason().as_str().as_bytes());
            Err(HandshakeError::rejected_peer(r))
        }
    }
}

/// Acceptor side: reads `Hello`, answers `Welcome` or `Reject`, in the
/// generation TLS agreed on. On a rejection it closes the connection itself,
/// after giving the dialer a moment to read the `Reject` frame and close first.
pub async fn accept(conn: &quinn::Connection, ours: &Intro, expect: &Expect<'_>) -> Result<Agreed, HandshakeError> {
    let generation = Generation::of(conn).ok_or(HandshakeError::NoGeneration)?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let bytes = recv.read_to_end(HANDSHAKE_LIMIT + 4).await.map_err(|e| stream_error(conn, e))?;
    let theirs = match generation {
        Generation::V2 => match codec::decode_single::<HandshakeMsg>(&bytes) {
            Ok(HandshakeMsg::Hello(intro)) => intro,
            Ok(_) => return Err(HandshakeError::Unexpected),
            Err(e) => {
                // A later release may lay out the rest of its Hello differently;
                // its range, right after the magic, still says whether we could
                // have talked.
                match hello_versions(&bytes) {
                    Some(theirs) if expect.versions.negotiate(theirs).is_none() => {
                        tracing::trace!("undecodable hello of other versions: {e}");
                        let r = Rejection::UnsupportedVersion { ours: expect.versions, theirs };
                        reject(conn, &mut send, codec::encode(&HandshakeMsg::Reject(r)), r.reason()).await;
                        return Err(HandshakeError::rejected_peer(r));
                    }
                    _ => return Err(e.into()),
                }
            }
        },
        Generation::V1 => match codec::decode_single::<LegacyMsg>(&bytes) {
            Ok(LegacyMsg::Hello(intro)) => intro.into_intro(),
            Ok(_) => return Err(HandshakeError::Unexpected),
            Err(e) if looks_like_other_version(&bytes) => {
                tracing::trace!("undecodable hello of another version: {e}");
                let r = RejectReason::UnsupportedVersion;
                reject(conn, &mut send, codec::encode(&LegacyMsg::Reject(r)), r).await;
                return Err(HandshakeError::RejectedPeer(r, None));
            }
            Err(e) => return Err(e.into()),
        },
    };
    if theirs.magic != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let checked = match generation {
        Generation::V2 => check_intro(&theirs, expect),
        Generation::V1 => check_legacy(&theirs, expect),
    };
    let wire = match checked {
        Ok(wire) => wire,
        Err(r) => {
            let frame = match generation {
                Generation::V2 => codec::encode(&HandshakeMsg::Reject(r)),
                Generation::V1 => codec::encode(&LegacyMsg::Reject(r.reason())),
            };
            reject(conn, &mut send, frame, r.reason()).await;
            return Err(HandshakeError::rejected_peer(r));
        }
    };
    let frame = match generation {
        Generation::V2 => codec::encode(&HandshakeMsg::Welcome(ours.clone())),
        Generation::V1 => codec::encode(&LegacyMsg::Welcome(LegacyIntro::from_intro(ours))),
    };
    send.write_all(&frame).await.map_err(|e| stream_error(conn, e))?;
    send.finish().map_err(|e| HandshakeError::Stream(e.to_string()))?;
    Ok(Agreed { intro: theirs, wire })
}

async fn reject(conn: &quinn::Connection, send: &mut quinn::SendStream, frame: bytes::Bytes, reason: RejectReason) {
    // Best effort: the close below carries the reason as well.
    if send.write_all(&frame).await.is_ok() && send.finish().is_ok() {
        let _dialer_closed = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
    }
    conn.close(Close::REJECTED.into(), reason.as_str().as_bytes());
}

/// A `masternode/1` `Hello` that carries our magic but a version number other
/// than ours: answer `UnsupportedVersion` rather than a decode error, whatever
/// its layout.
fn looks_like_other_version(frame: &[u8]) -> bool {
    // Frame: 4-byte length, kind 0 (Hello), 4 magic bytes, version (varint).
    frame.len() > 9 && frame[4] == 0 && frame[5..9] == MAGIC
}

/// The range a `masternode/2` `Hello` frame names after its magic, whether or
/// not the rest decodes.
fn hello_versions(frame: &[u8]) -> Option<Versions> {
    if !looks_like_other_version(frame) {
        return None;
    }
    let (versions, _): (Versions, usize) = bincode::decode_from_slice(&frame[9..], codec::BINCODE).ok()?;
    Some(versions)
}

/// A stream error during the handshake; when the connection itself was closed with
/// a rejection, that rejection is the real story.
fn stream_error(conn: &quinn::Connection, e: impl fmt::Display) -> HandshakeError {
    if let Some(err) = conn.close_reason() {
        if let Some(reason) = rejection_in(&err) {
            return HandshakeError::RejectedByPeer(reason, None);
        }
        return HandshakeError::Connection(err);
    }
    HandshakeError::Stream(e.to_string())
}

/// The reject reason a peer put in its close, if it closed with one.
pub(crate) fn rejection_in(err: &quinn::ConnectionError) -> Option<RejectReason> {
    match err {
        quinn::ConnectionError::ApplicationClosed(ac) if ac.error_code == Close::REJECTED.into() => {
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
            versions: WIRE,
            network_id: [7; 32],
            node_id: NodeId([1; 32]),
            listen: "127.0.0.1:1".parse().unwrap(),
            tip: Tip::default(),
            software: "test".into(),
            incarnation: 42,
        }
    }

    fn v(min: u16, max: u16) -> Versions {
        Versions { min, max }
    }

    #[test]
    fn check_intro_gives_each_typed_reason() {
        let members = |id: &NodeId| id.0[0] < 5;
        let expect = Expect { network_id: [7; 32], versions: WIRE, tls_key: NodeId([1; 32]), is_member: &members };
        type Tweak = Box<dyn Fn(&mut Intro, &mut Expect)>;
        let cases: Vec<(&str, Tweak, Result<u16, Rejection>)> = vec![
            ("a matching hello is accepted at the highest common version", Box::new(|_, _| {}), Ok(4)),
            ("another network id", Box::new(|i, _| i.network_id = [8; 32]), Err(Rejection::WrongNetwork)),
            (
                "versions of a later release only",
                Box::new(|i, _| i.versions = v(5, 6)),
                Err(Rejection::UnsupportedVersion { ours: WIRE, theirs: v(5, 6) }),
            ),
            (
                "an empty range",
                Box::new(|i, _| i.versions = v(4, 3)),
                Err(Rejection::UnsupportedVersion { ours: WIRE, theirs: v(4, 3) }),
            ),
            (
                "claims a key TLS did not prove",
                Box::new(|i, _| i.node_id = NodeId([2; 32])),
                Err(Rejection::IdMismatch),
            ),
            (
                "a key outside the set",
                Box::new(|i, e| {
                    i.node_id = NodeId([9; 32]);
                    e.tls_key = NodeId([9; 32]);
                }),
                Err(Rejection::NotInSet),
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
    fn negotiation_picks_the_highest_common_version() {
        let table: [(&str, Versions, Versions, Option<u16>); 8] = [
            ("two nodes of this release", WIRE, WIRE, Some(4)),
            ("this release and 0.1.0", WIRE, Versions::exactly(3), Some(3)),
            ("this release and a later one that still speaks 4", WIRE, v(4, 6), Some(4)),
            ("a later release that dropped 4", WIRE, v(5, 6), None),
            ("an earlier release", WIRE, v(1, 2), None),
            ("a lying peer claiming every version", WIRE, v(0, u16::MAX), Some(4)),
            ("an empty range", WIRE, v(4, 3), None),
            ("ranges touching at one version", v(3, 4), v(4, 9), Some(4)),
        ];
        for (what, ours, theirs, want) in table {
            assert_eq!(ours.negotiate(theirs), want, "{what}");
        }
    }

    #[test]
    fn negotiation_is_symmetric_and_lands_in_both_ranges() {
        let ranges: Vec<Versions> = (0..7u16).flat_map(|min| (0..7u16).map(move |max| v(min, max))).collect();
        for a in &ranges {
            for b in &ranges {
                let got = a.negotiate(*b);
                assert_eq!(got, b.negotiate(*a), "{a} and {b}: symmetric");
                let common: Vec<u16> = (0..7).filter(|x| a.contains(*x) && b.contains(*x)).collect();
                assert_eq!(got, common.last().copied(), "{a} and {b}: the highest common version, none iff disjoint");
            }
        }
    }

    #[test]
    fn a_mismatch_says_which_side_to_upgrade() {
        let ahead = Mismatch { ours: WIRE, theirs: v(5, 6) };
        assert_eq!(ahead.to_string(), "peer speaks wire 5..6, this node 3..4: upgrade this node");
        assert_eq!(ahead.swapped().to_string(), "peer speaks wire 3..4, this node 5..6: upgrade the peer");
        let behind = Mismatch { ours: WIRE, theirs: v(1, 2) };
        assert_eq!(behind.advice(), "upgrade the peer");
        assert_eq!(Mismatch { ours: WIRE, theirs: v(4, 3) }.advice(), "the peer announces no version at all");
    }

    #[test]
    fn a_node_offers_masternode_1_while_it_speaks_version_3() {
        assert_eq!(Generation::offered(WIRE), GENERATIONS.to_vec());
        assert_eq!(GENERATIONS, [Generation::V2, Generation::V1]);
        assert_eq!(Generation::offered(v(4, 5)), vec![Generation::V2]);
        for g in [Generation::V1, Generation::V2] {
            assert_eq!(Generation::from_alpn(g.alpn()), Some(g));
        }
        assert_eq!(Generation::V1.alpn(), b"masternode/1", "0.1.0's ALPN");
        assert_eq!(Generation::from_alpn(b"masternode/3"), None);
    }

    /// The `masternode/1` frames, byte for byte as 0.1.0 (commit 31283ad)
    /// encodes them: a Hello, a Welcome and a Reject for the version.
    #[test]
    fn masternode_1_frames_are_those_of_0_1_0() {
        let legacy = LegacyIntro {
            magic: MAGIC,
            version: 3,
            network_id: [7; 32],
            node_id: NodeId([1; 32]),
            listen: "127.0.0.1:24100".parse().unwrap(),
            tip: Tip { height: 300, hash: [9; 32] },
            software: "masternode/0.1.0".into(),
            incarnation: 0x0123_4567_89ab_cdef,
        };
        let hex = |m: &LegacyMsg| crate::identity::hex(&codec::encode(m));
        assert_eq!(hex(&LegacyMsg::Hello(legacy.clone())), "0000008b004d4e4f440307070707070707070707070707070707070707070707070707070707070707070101010101010101010101010101010101010101010101010101010101010101007f000001fb5e24fb012c0909090909090909090909090909090909090909090909090909090909090909106d61737465726e6f64652f302e312e30fd0123456789abcdef");
        assert_eq!(hex(&LegacyMsg::Welcome(legacy.clone())), "0000008b014d4e4f440307070707070707070707070707070707070707070707070707070707070707070101010101010101010101010101010101010101010101010101010101010101007f000001fb5e24fb012c0909090909090909090909090909090909090909090909090909090909090909106d61737465726e6f64652f302e312e30fd0123456789abcdef");
        assert_eq!(hex(&LegacyMsg::Reject(RejectReason::UnsupportedVersion)), "000000020201");
        let round = LegacyIntro::from_intro(&legacy.clone().into_intro());
        assert_eq!(round, legacy, "a version-3 intro survives the trip through a range");
        assert_eq!(LegacyIntro::from_intro(&intro()).version, V1_WIRE, "this release says 3 over masternode/1");
    }

    #[test]
    fn handshake_messages_round_trip_and_fit_their_limit() {
        let reject = Rejection::UnsupportedVersion { ours: WIRE, theirs: v(5, 6) };
        for m in [HandshakeMsg::Hello(intro()), HandshakeMsg::Welcome(intro()), HandshakeMsg::Reject(reject)] {
            let bytes = codec::encode(&m);
            assert!(bytes.len() < HANDSHAKE_LIMIT);
            assert_eq!(codec::decode_single::<HandshakeMsg>(&bytes).unwrap(), m);
        }
        let hello = codec::encode(&HandshakeMsg::Hello(intro()));
        assert!(looks_like_other_version(&hello));
        assert_eq!(hello_versions(&hello), Some(WIRE));
        // A later release's Hello with more fields: its range still reads.
        let mut longer = hello.to_vec();
        longer.extend_from_slice(&[1, 2, 3]);
        let len = (longer.len() - 4) as u32;
        longer[..4].copy_from_slice(&len.to_be_bytes());
        assert!(codec::decode_single::<HandshakeMsg>(&longer).is_err());
        assert_eq!(hello_versions(&longer), Some(WIRE));
    }

    #[test]
    fn reason_names_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_name(r.as_str()), Some(r));
        }
    }
}
