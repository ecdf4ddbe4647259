//! Mutual TLS 1.3 pinned to the masternode set.
//!
//! Certificates are self-signed and carry nothing but the node's ed25519 key: no
//! names, no CAs, no validity dates play a part. The server accepts a client
//! certificate only if its key is in the current member set ([`MemberKeys`], which
//! the transport replaces whenever the set changes: a member added at run time is
//! accepted and a removed one refused from the next handshake on); the client
//! accepts the server's only if its key is the one of the member it meant to dial.
//! Both still verify the TLS 1.3 handshake signature with the ring provider, which
//! proves the peer holds the private key. Session resumption is off, so every connection
//! proves its key afresh. ALPN names the handshake's generation
//! ([`Generation`]): both sides list those they speak, the newest first, and the
//! server takes the first of its list the client offered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::handshake::Generation;
use crate::identity::{cert_node_id, Identity, NodeId};

/// The name a dialer puts in its ClientHello; nothing checks it.
pub const SERVER_NAME: &str = "masternode";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Keys that are not members but whose refusal at TLS is expected: the node
/// they belong to is on its way in or has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    /// An `Add` for it is collecting approvals: a joiner, accepted once the add
    /// is in force.
    Joining,
    /// It was a member and was removed: its node should be stopped.
    Left,
}

/// What a refused certificate was, as far as the log cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Key(NodeId),
    NotEd25519,
}

/// How a refusal is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// An expected state, once per key and state.
    Info(String),
    /// A key nobody expects (a stranger, a certificate that is not ed25519):
    /// at most one line per period, with the refusals since the last one.
    Warn(String),
    Quiet,
}

/// Counts certificates refused at TLS and says so in the log without repeating
/// itself. A key that is expected to knock ([`Expected`]: a joiner whose add is
/// collecting approvals, a member that left) is an expected state: one info line
/// per key and state. Any other key is a stranger: a warning, once per key, and
/// at most one per period for all of them, so a flood of strangers with fresh
/// keys costs a line every few seconds, not one per attempt.
#[derive(Debug, Default)]
pub struct RefusalLog {
    pub total: AtomicU64,
    state: Mutex<RefusalState>,
}

#[derive(Debug, Default)]
struct RefusalState {
    /// Keys expected to knock, as last published.
    expected: HashMap<NodeId, Expected>,
    /// The state each expected key was last logged in.
    logged: HashMap<NodeId, Expected>,
    /// Strangers logged already (at most [`RefusalLog::STRANGERS`]).
    strangers: HashSet<NodeId>,
    /// Strangers' refusals since their last line, and when that was.
    unreported: u64,
    last_warn: Option<Instant>,
}

impl RefusalLog {
    const PERIOD: Duration = Duration::from_secs(10);
    /// Strangers remembered, so one that retries is not logged again; past this
    /// the period alone bounds the lines.
    const STRANGERS: usize = 1024;

    /// The keys that are expected to be refused from now on; the rest are
    /// strangers.
    pub(crate) fn expect(&self, keys: impl IntoIterator<Item = (NodeId, Expected)>) {
        let expected: HashMap<NodeId, Expected> = keys.into_iter().collect();
        let mut state = self.lock();
        state.logged.retain(|id, _| expected.contains_key(id));
        state.expected = expected;
    }

    /// Bytes held for the strangers remembered (at most [`Self::STRANGERS`]
    /// keys), for `masternode_held_bytes`.
    pub(crate) fn strangers_bytes(&self) -> u64 {
        (self.lock().strangers.len() * std::mem::size_of::<NodeId>()) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalState> {
        // The lock guards a few maps and is never held across an await.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, refused: Refused) {
        self.total.fetch_add(1, Ordering::Relaxed);
        match self.line(refused, Instant::now()) {
            Line::Info(line) => tracing::info!("{line}"),
            Line::Warn(line) => tracing::warn!("{line}"),
            Line::Quiet => {}
        }
    }

    /// The line a refusal at `now` gets, if any.
    fn line(&self, refused: Refused, now: Instant) -> Line {
        let mut state = self.lock();
        if let Refused::Key(id) = refused {
            if let Some(&expected) = state.expected.get(&id) {
                if state.logged.insert(id, expected) == Some(expected) {
                    return Line::Quiet;
                }
                return Line::Info(match expected {
                    Expected::Joining => format!(
                        "refused at TLS: client key {} is a joiner whose add is collecting approvals; it is \
                         accepted once the add is in force (its refusals until then are counted, not logged)",
                        id.short()
                    ),
                    Expected::Left => format!(
                        "refused at TLS: client key {} left the member set; stop that node (its refusals are \
                         counted, not logged)",
                        id.short()
                    ),
                });
            }
            if state.strangers.contains(&id) {
                return Line::Quiet;
            }
        }
        state.unreported += 1;
        if state.last_warn.is_some_and(|t| now.duration_since(t) < Self::PERIOD) {
            return Line::Quiet;
        }
        let what = match refused {
            Refused::Key(id) => {
                if state.strangers.len() < Self::STRANGERS {
                    state.strangers.insert(id);
                }
                format!(
                    "client key {} is not a masternode and no add for it is collecting approvals (a node being \
                     added is accepted once members approve it with `masternode member add`)",
                    id.short()
                )
            }
            Refused::NotEd25519 => "client certificate is not ed25519".to_string(),
        };
        let line =
            format!("refused at TLS: {what} ({} refusal(s) of strangers since the last report)", state.unreported);
        state.unreported = 0;
        state.last_warn = Some(now);
        Line::Warn(line)
    }
}

/// The keys the server side accepts, swappable while the endpoint runs. Clones
/// share one set. Readers take the current set with a brief read lock (never held
/// across an await or a handshake), so a replacement never waits on a TLS
/// handshake in progress and a handshake sees either the old set or the new one.
#[derive(Debug, Clone, Default)]
pub struct MemberKeys(Arc<RwLock<Arc<HashSet<NodeId>>>>);

impl MemberKeys {
    pub(crate) fn new(keys: impl IntoIterator<Item = NodeId>) -> Self {
        MemberKeys(Arc::new(RwLock::new(Arc::new(keys.into_iter().collect()))))
    }

    /// The current set.
    pub(crate) fn current(&self) -> Arc<HashSet<NodeId>> {
        // A poisoned lock still holds a whole set: replacing it is one store.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn contains(&self, id: &NodeId) -> bool {
        self.current().contains(id)
    }

    /// Replaces the set; handshakes from now on are checked against `keys`.
    pub(crate) fn replace(&self, keys: impl IntoIterator<Item = NodeId>) {
        let keys = Arc::new(keys.into_iter().collect());
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

impl From<Arc<HashSet<NodeId>>> for MemberKeys {
    fn from(keys: Arc<HashSet<NodeId>>) -> Self {
        MemberKeys(Arc::new(RwLock::new(keys)))
    }
}

#[derive(Debug)]
struct MemberClientVerifier {
    members: MemberKeys,
    algs: WebPkiSupportedAlgorithms,
    refusals: Arc<RefusalLog>,
}

impl ClientCertVerifier for MemberClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match cert_node_id(end_entity) {
            Some(id) if self.members.contains(&id) => Ok(ClientCertVerified::assertion()),
            Some(id) => {
                self.refusals.record(Refused::Key(id));
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
            }
            None => {
                self.refusals.record(Refused::NotEd25519);
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[derive(Debug)]
struct PinnedServerVerifier {
    expected: NodeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match cert_node_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// QUIC server crypto accepting only clients with a member key.
pub(crate) fn server_crypto(
    identity: &Identity,
    members: impl Into<MemberKeys>,
    refusals: Arc<RefusalLog>,
    generations: &[Generation],
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let cfg = server_rustls(identity, members, refusals, generations)?;
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(|e| TlsError::Quic(e.to_string()))
}

/// The rustls server configuration behind [`server_crypto`] (also usable over TCP).
pub fn server_rustls(
    identity: &Identity,
    members: impl Into<MemberKeys>,
    refusals: Arc<RefusalLog>,
    generations: &[Generation],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let verifier = MemberClientVerifier { members: members.into(), algs, refusals };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.cert_der()], identity.key_der())?;
    cfg.alpn_protocols = alpn(generations);
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// rustls client configuration for dialling the member `expected` and nobody else.
pub(crate) fn client_crypto(
    identity: &Identity,
    expected: NodeId,
    generations: &[Generation],
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let cfg = client_rustls(identity, expected, generations)?;
    quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(|e| TlsError::Quic(e.to_string()))
}

/// The rustls client configuration behind [`client_crypto`] (also usable over TCP).
pub fn client_rustls(
    identity: &Identity,
    expected: NodeId,
    generations: &[Generation],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier { expected, algs }))
        .with_client_auth_cert(vec![identity.cert_der()], identity.key_der())?;
    cfg.alpn_protocols = alpn(generations);
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// ALPN protocol names in the order given (the order of preference).
fn alpn(generations: &[Generation]) -> Vec<Vec<u8>> {
    generations.iter().map(|g| g.alpn().to_vec()).collect()
}

/// The member key a connection's peer proved at TLS.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    cert_node_id(certs.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn level(line: &Line) -> &'static str {
        match line {
            Line::Info(_) => "info",
            Line::Warn(_) => "warn",
            Line::Quiet => "quiet",
        }
    }

    #[test]
    fn a_joiner_is_logged_at_info_once_per_state_and_never_warned() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        log.expect([(key(1), Expected::Joining)]);
        let lines: Vec<Line> = (0..50).map(|i| log.line(Refused::Key(key(1)), t0 + Duration::from_secs(i))).collect();
        assert_eq!(level(&lines[0]), "info", "{lines:?}");
        assert!(matches!(&lines[0], Line::Info(l) if l.contains("joiner")), "{lines:?}");
        assert!(lines[1..].iter().all(|l| *l == Line::Quiet), "once: {lines:?}");
        // A new state is news once more; the same state published again is not.
        log.expect([(key(1), Expected::Joining)]);
        assert_eq!(log.line(Refused::Key(key(1)), t0), Line::Quiet);
        log.expect([(key(1), Expected::Left)]);
        assert!(matches!(log.line(Refused::Key(key(1)), t0), Line::Info(l) if l.contains("left the member set")));
        assert_eq!(log.line(Refused::Key(key(1)), t0), Line::Quiet);
    }

    #[test]
    fn a_stranger_is_warned_once_and_a_flood_of_strangers_once_per_period() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(level(&log.line(Refused::Key(key(9)), t0)), "warn");
        for i in 1..100 {
            assert_eq!(log.line(Refused::Key(key(9)), t0 + RefusalLog::PERIOD * i), Line::Quiet, "the same stranger");
        }
        // Fresh keys, one every 10 ms for a minute: one line per period.
        let t1 = t0 + Duration::from_secs(3600);
        let warns = (0..6000u32)
            .filter(|i| {
                let mut fresh = [7u8; 32];
                fresh[..4].copy_from_slice(&i.to_le_bytes());
                level(&log.line(Refused::Key(NodeId(fresh)), t1 + Duration::from_millis(10 * *i as u64))) == "warn"
            })
            .count();
        assert_eq!(warns, 6, "60 s of strangers, a line per 10 s");
        assert_eq!(level(&log.line(Refused::NotEd25519, t1 + Duration::from_secs(70))), "warn");
    }

    #[test]
    fn strangers_remembered_are_bounded() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(RefusalLog::STRANGERS as u32 + 100) {
            let mut fresh = [9u8; 32];
            fresh[..4].copy_from_slice(&i.to_le_bytes());
            // A period apart, so each one is warned and remembered if there is room.
            assert_eq!(level(&log.line(Refused::Key(NodeId(fresh)), t0 + RefusalLog::PERIOD * i)), "warn");
        }
        assert_eq!(log.strangers_bytes(), (RefusalLog::STRANGERS * 32) as u64);
    }

    #[test]
    fn a_stranger_that_becomes_a_joiner_is_said_once_more_at_info() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(level(&log.line(Refused::Key(key(3)), t0)), "warn");
        log.expect([(key(3), Expected::Joining)]);
        assert_eq!(level(&log.line(Refused::Key(key(3)), t0)), "info");
        assert_eq!(level(&log.line(Refused::Key(key(3)), t0)), "quiet");
    }
}
