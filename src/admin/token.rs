//! The admin token: a secret in the file that `admin_token` names. While it is
//! set, every POST (what makes the node queue or sign anything) must carry
//! `Authorization: Bearer <token>`; reads stay open to whoever the Host rule
//! lets in. The same file gives the token to the CLI.
//!
//! The file is held to what `node.key` should be: readable by its owner only.
//! A token that others on the host can read protects nothing, so such a file
//! stops the daemon at start instead of being used.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The secret, as the file holds it without surrounding whitespace. Its
/// `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken {
    secret: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: cannot read the admin_token file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: the admin_token file is readable by group or others (mode {mode:03o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: the admin_token file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: the admin token must be printable ASCII without spaces (it is sent in an HTTP header)")]
    NotPrintable { path: PathBuf },
}

impl AdminToken {
    /// Reads the token from `path`, refusing a file that group or others can
    /// read, an empty one, and one that cannot go in an HTTP header.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let read = |source| TokenError::Read { path: path.into(), source };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed { path: path.into(), mode });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let secret = bytes.trim_ascii();
        if secret.is_empty() {
            return Err(TokenError::Empty { path: path.into() });
        }
        if !secret.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable { path: path.into() });
        }
        // All printable ASCII: valid UTF-8.
        Ok(AdminToken { secret: String::from_utf8_lossy(secret).into_owned() })
    }

    /// The `Authorization` header value that carries the token.
    pub(crate) fn authorization(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    /// Whether `presented` is the token. Both are hashed first and the hashes
    /// compared in full, so the time taken says nothing of how much of a guess
    /// was right, nor of the token's length.
    pub(crate) fn admits(&self, presented: &[u8]) -> bool {
        let ours = ring::digest::digest(&ring::digest::SHA256, self.secret.as_bytes());
        let theirs = ring::digest::digest(&ring::digest::SHA256, presented);
        let diff = ours.as_ref().iter().zip(theirs.as_ref()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("admin.token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn loads_a_private_token_and_admits_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let token = AdminToken::load(&write(dir.path(), b"  s3cret-Token_1\n", 0o600)).unwrap();
        assert!(token.admits(b"s3cret-Token_1"));
        for wrong in [&b"s3cret-Token_2"[..], b"s3cret-Token_", b"s3cret-Token_1 ", b""] {
            assert!(!token.admits(wrong), "{wrong:?}");
        }
        assert_eq!(token.authorization(), "Bearer s3cret-Token_1");
        assert_eq!(format!("{token:?}"), "AdminToken(..)", "Debug never shows the secret");
        assert!(AdminToken::load(&write(dir.path(), b"x", 0o400)).is_ok(), "read-only for the owner is fine");
    }

    #[test]
    fn refuses_a_missing_empty_exposed_or_unprintable_file_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AdminToken::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, TokenError::Read { .. }), "{missing}");
        let cases: [(&[u8], u32, &str); 5] = [
            (b"", 0o600, "is empty"),
            (b" \n\t", 0o600, "is empty"),
            (b"secret", 0o644, "mode 644"),
            (b"secret", 0o640, "mode 640"),
            (b"two words", 0o600, "printable ASCII"),
        ];
        for (text, mode, says) in cases {
            let err = AdminToken::load(&write(dir.path(), text, mode)).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("admin.token") && !err.contains('\n'), "{err}");
            assert!(!err.contains("secret"), "the error never shows the token: {err}");
        }
    }
}
