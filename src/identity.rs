//! A node's identity: one ed25519 key, used for TLS and (later) for signing votes.
//!
//! `NodeId` is the 32-byte public key, shown as 64 lowercase hex characters.
//! `node.key` is written in the RFC 8410 PKCS#8 *v1* form (the 32-byte seed only):
//! OpenSSL 3.0 and Python's `cryptography` refuse the v2 document that ring writes,
//! while every tool, ring and rcgen included, reads v1. `node.crt` is a certificate
//! self-signed with the same key; it carries nothing but that key (no names, no CA
//! plays a part in verification).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ring::rand::SecureRandom;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Public key of a masternode; the only identity a node has.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, IdentityError> {
        let bytes = decode_hex(s).ok_or_else(|| IdentityError::BadNodeId(s.to_string()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::BadNodeId(s.to_string()))?;
        Ok(NodeId(arr))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// First 8 hex characters, for log lines where the full id would drown the message.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    pub(crate) fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: not a PEM file")]
    NotPem(PathBuf),
    #[error("{path}: expected a PEM block labelled {expected}, found {found}")]
    WrongPemLabel { path: PathBuf, expected: &'static str, found: String },
    #[error("{0}: not an ed25519 PKCS#8 private key")]
    NotEd25519Key(PathBuf),
    #[error("{0}: not an ed25519 certificate")]
    NotEd25519Cert(PathBuf),
    #[error("{cert}: certificate key {cert_id} does not match the private key {key_id} in {key}")]
    KeyCertMismatch { key: PathBuf, cert: PathBuf, key_id: String, cert_id: String },
    #[error("{0}: already exists (use --force to replace it)")]
    Exists(PathBuf),
    #[error("not a node id (64 hex characters): {0:?}")]
    BadNodeId(String),
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
}

/// The node's key pair and its certificate, loaded and cross-checked.
pub struct Identity {
    signing: SigningKey,
    id: NodeId,
    cert_der: CertificateDer<'static>,
}

impl Identity {
    /// Loads `key` and `cert` and checks that they carry the same public key.
    pub fn load(key: &Path, cert: &Path) -> Result<Self, IdentityError> {
        let signing = read_key(key)?;
        let id = NodeId(signing.verifying_key().to_bytes());
        let cert_der = read_cert(cert)?;
        let cert_id = cert_node_id(&cert_der).ok_or_else(|| IdentityError::NotEd25519Cert(cert.into()))?;
        if cert_id != id {
            return Err(IdentityError::KeyCertMismatch {
                key: key.into(),
                cert: cert.into(),
                key_id: id.to_hex(),
                cert_id: cert_id.to_hex(),
            });
        }
        Ok(Identity { signing, id, cert_der })
    }

    /// A fresh identity held only in memory (tests, benchmarks, devnet).
    pub fn generate() -> Result<Self, IdentityError> {
        let signing = SigningKey::from_bytes(&random_seed()?);
        Self::from_signing_key(signing)
    }

    pub fn from_signing_key(signing: SigningKey) -> Result<Self, IdentityError> {
        let id = NodeId(signing.verifying_key().to_bytes());
        let cert_der = self_signed_cert(&signing)?.der().clone();
        Ok(Identity { signing, id, cert_der })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The key as rustls wants it (PKCS#8 v1 DER).
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_v1(&self.signing)))
    }

    /// The 32-byte secret seed. For writing the key and for tests; never logged.
    pub fn secret_seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// Secret bytes derived from the key under a label, for keys that must survive a
    /// restart without being stored (the QUIC stateless-reset key).
    pub(crate) fn derive_secret(&self, label: &[u8]) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.signing.as_bytes());
        let tag = ring::hmac::sign(&key, label);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Writes this identity as `DIR/node.key` (0600) and `DIR/node.crt`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), IdentityError> {
        let key_path = dir.join("node.key");
        let cert_path = dir.join("node.crt");
        if !force {
            for p in [&key_path, &cert_path] {
                if p.exists() {
                    return Err(IdentityError::Exists(p.clone()));
                }
            }
        }
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io { path: dir.into(), source })?;
        let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8_v1(&self.signing)));
        write_private(&key_path, key_pem.as_bytes())?;
        let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", self.cert_der.to_vec()));
        fs::write(&cert_path, cert_pem).map_err(|source| IdentityError::Io { path: cert_path.clone(), source })?;
        Ok((key_path, cert_path))
    }
}

/// The ed25519 public key inside a DER certificate, if it is an ed25519 certificate.
pub(crate) fn cert_node_id(der: &CertificateDer<'_>) -> Option<NodeId> {
    let parsed = rustls::server::ParsedCertificate::try_from(der).ok()?;
    spki_node_id(parsed.subject_public_key_info().as_ref())
}

/// RFC 8410 SubjectPublicKeyInfo for ed25519: SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING (0 unused bits) <32 bytes> }.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

fn spki_node_id(spki: &[u8]) -> Option<NodeId> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(NodeId(key.try_into().ok()?))
}

/// RFC 8410 OneAsymmetricKey v1: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING <32-byte seed> } }.
const PKCS8_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// The v2 form ring writes: version 1 and the public key appended as an implicit
/// `[1]` BIT STRING.
const PKCS8_V2_PREFIX: [u8; 16] =
    [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
const PKCS8_V2_PUBKEY_PREFIX: [u8; 3] = [0x81, 0x21, 0x00];

fn pkcs8_v1(key: &SigningKey) -> Vec<u8> {
    let mut der = PKCS8_V1_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    der
}

/// Accepts v1, and v2 when its embedded public key matches the seed.
fn parse_pkcs8(der: &[u8]) -> Option<SigningKey> {
    if let Some(seed) = der.strip_prefix(&PKCS8_V1_PREFIX[..]) {
        return Some(SigningKey::from_bytes(seed.try_into().ok()?));
    }
    let rest = der.strip_prefix(&PKCS8_V2_PREFIX[..])?;
    let (seed, public) = rest.split_at_checked(32)?;
    let public = public.strip_prefix(&PKCS8_V2_PUBKEY_PREFIX[..])?;
    let key = SigningKey::from_bytes(seed.try_into().ok()?);
    (key.verifying_key().as_bytes() == public).then_some(key)
}

fn read_pem(path: &Path, label: &'static str) -> Result<Vec<u8>, IdentityError> {
    let text = fs::read(path).map_err(|source| IdentityError::Io { path: path.into(), source })?;
    let block = pem::parse(&text).map_err(|_| IdentityError::NotPem(path.into()))?;
    if block.tag() != label {
        return Err(IdentityError::WrongPemLabel {
            path: path.into(),
            expected: label,
            found: block.tag().to_string(),
        });
    }
    Ok(block.into_contents())
}

pub(crate) fn read_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let der = read_pem(path, "PRIVATE KEY")?;
    parse_pkcs8(&der).ok_or_else(|| IdentityError::NotEd25519Key(path.into()))
}

pub(crate) fn read_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    Ok(CertificateDer::from(read_pem(path, "CERTIFICATE")?))
}

fn self_signed_cert(key: &SigningKey) -> Result<rcgen::Certificate, IdentityError> {
    let der = PrivatePkcs8KeyDer::from(pkcs8_v1(key));
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("masternode {}", hex(&key.verifying_key().as_bytes()[..8])));
    Ok(params.self_signed(&key_pair)?)
}

fn random_seed() -> Result<[u8; 32], IdentityError> {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).map_err(|_| IdentityError::Random)?;
    Ok(seed)
}

/// Writes a file readable by its owner only; created with mode 0600 so the secret is
/// never briefly world-readable.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| IdentityError::Io { path: path.into(), source };
    let tmp = path.with_extension("key.tmp");
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_cert_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate().unwrap();
        let (key, cert) = id.write(dir.path(), false).unwrap();
        let loaded = Identity::load(&key, &cert).unwrap();
        assert_eq!(loaded.id(), id.id());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn write_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        Identity::generate().unwrap().write(dir.path(), false).unwrap();
        let second = Identity::generate().unwrap();
        assert!(matches!(second.write(dir.path(), false), Err(IdentityError::Exists(_))));
        second.write(dir.path(), true).unwrap();
        let loaded = Identity::load(&dir.path().join("node.key"), &dir.path().join("node.crt")).unwrap();
        assert_eq!(loaded.id(), second.id());
    }

    #[test]
    fn mismatched_key_and_cert_are_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        Identity::generate().unwrap().write(a.path(), false).unwrap();
        Identity::generate().unwrap().write(b.path(), false).unwrap();
        let err = Identity::load(&a.path().join("node.key"), &b.path().join("node.crt")).err().unwrap();
        assert!(matches!(err, IdentityError::KeyCertMismatch { .. }), "{err}");
    }

    #[test]
    fn pkcs8_v2_from_ring_is_accepted() {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = parse_pkcs8(doc.as_ref()).expect("v2 accepted");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        use ring::signature::KeyPair;
        assert_eq!(pair.public_key().as_ref(), key.verifying_key().as_bytes());
    }

    #[test]
    fn written_key_is_pkcs8_v1_and_ring_reads_it() {
        let id = Identity::generate().unwrap();
        let PrivateKeyDer::Pkcs8(der) = id.key_der() else { unreachable!() };
        assert_eq!(der.secret_pkcs8_der().len(), 48);
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).unwrap();
        use ring::signature::KeyPair;
        assert_eq!(pair.public_key().as_ref(), &id.id().0);
    }

    #[test]
    fn cert_carries_the_node_key() {
        let id = Identity::generate().unwrap();
        assert_eq!(cert_node_id(&id.cert_der()), Some(id.id()));
    }

    #[test]
    fn node_id_hex_round_trip_and_errors() {
        let id = Identity::generate().unwrap().id();
        assert_eq!(NodeId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(NodeId::from_hex("zz").is_err());
        assert!(NodeId::from_hex(&"ab".repeat(31)).is_err());
    }
}
