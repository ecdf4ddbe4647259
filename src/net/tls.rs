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

use std::collections::HashSet;
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

/// Counts certificates refused at TLS and reports them at most once per period,
/// so a flood of strangers produces a line every few seconds, not one per attempt.
#[derive(Debug, Default)]
pub struct RefusalLog {
    pub total: AtomicU64,
    pending: Mutex<(u64, Option<Instant>)>,
}

impl RefusalLog {
    const PERIOD: Duration = Duration::from_secs(10);

    fn record(&self, what: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        // The lock guards two integers and is never held across an await.
        let mut guard = match self.pending.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (count, last) = &mut *guard;
        *count += 1;
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Self::PERIOD) {
            tracing::warn!("refused at TLS: {what} ({} refusal(s) since the last report)", *count);
            *count = 0;
            *last = Some(now);
        }
    }
}

/// The keys the server side accepts, swappable while the endpoint runs. Clones
/// share one set. Readers take the current set with a brief read lock (never held
/// across an await or a handshake), so a replacement never waits on a TLS
/// handshake in progress and a handshake sees either the old set or the new one.
#[derive(Debug, Clone, Default)]
pub struct MemberKeys(Arc<RwLock<Arc<HashSet<NodeId>>>>);

impl MemberKeys {
    pub fn new(keys: impl IntoIterator<Item = NodeId>) -> Self {
        MemberKeys(Arc::new(RwLock::new(Arc::new(keys.into_iter().collect()))))
    }

    /// The current set.
    pub fn current(&self) -> Arc<HashSet<NodeId>> {
        // A poisoned lock still holds a whole set: replacing it is one store.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.current().contains(id)
    }

    /// Replaces the set; handshakes from now on are checked against `keys`.
    pub fn replace(&self, keys: impl IntoIterator<Item = NodeId>) {
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
                self.refusals.record(&format!("client key {} is not a masternode", id.short()));
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
            }
            None => {
                self.refusals.record("client certificate is not ed25519");
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
pub fn server_crypto(
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
pub fn client_crypto(
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
