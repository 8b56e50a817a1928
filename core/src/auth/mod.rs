//! Credentials: bearer tokens for the API and signed reservation tokens.
//!
//! Tokens are never logged. Comparisons run in constant time.

pub mod reservation;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted in a token file.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// A set of accepted bearer tokens, held as SHA-256 digests.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print token material, not even digests.
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    /// Read one token per file.
    pub fn load(files: &[PathBuf]) -> Result<Self, AuthError> {
        let mut digests = Vec::new();
        for f in files {
            digests.push(digest(&read_token(f)?));
        }
        Ok(Self { digests })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens (constant time per candidate).
    pub fn contains(&self, presented: &str) -> bool {
        let d = digest(presented);
        // Check every candidate: the time does not depend on which one matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0u8), |acc, c| acc | c.ct_eq(&d))
            .into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Read a token file: one token, surrounding whitespace ignored.
pub fn read_token(path: &Path) -> Result<String, AuthError> {
    let bad = |reason: String| AuthError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(bad(format!(
            "the token must be at least {MIN_TOKEN_LEN} characters"
        )));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the token must be one line without spaces".into()));
    }
    warn_if_readable_by_others(path);
    Ok(token.to_string())
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::metadata(path)
        && md.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "a token file is readable by group or others; chmod 600 it");
    }
}

/// A new random token (hex, 256 bits).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Cryptographically secure random bytes.
pub fn fill_random(buf: &mut [u8]) {
    // The kernel's CSPRNG does not fail once booted; a failure here is unrecoverable.
    if let Err(e) = getrandom::fill(buf) {
        panic!("the system random number generator failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sets_match_exactly() {
        let dir = std::env::temp_dir().join(format!("weir-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::write(&a, "0123456789abcdef0123\n").unwrap();
        std::fs::write(&b, "  fedcba9876543210fedc  ").unwrap();
        let set = TokenSet::load(&[a, b]).unwrap();
        assert!(set.contains("0123456789abcdef0123"));
        assert!(set.contains("fedcba9876543210fedc"));
        assert!(!set.contains("0123456789abcdef012"));
        assert!(!set.contains(""));
        let short = dir.join("short");
        std::fs::write(&short, "abc").unwrap();
        let e = TokenSet::load(&[short]).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        assert_eq!(format!("{set:?}"), "TokenSet(2 tokens)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn random_tokens_differ() {
        let a = random_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_token());
    }
}
