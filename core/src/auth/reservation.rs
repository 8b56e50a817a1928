//! Reservation tokens: HMAC-SHA256 over the reservation's claims, with a secret kept in the
//! host's state directory so tokens stay valid across host restarts.
//!
//! Format: `wr1.<base64url(claims JSON)>.<base64url(HMAC)>`. The MAC is checked in constant
//! time before the claims are trusted.

use std::net::Ipv4Addr;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{AuthError, fill_random};

const PREFIX: &str = "wr1";
const KEY_LEN: usize = 32;

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The reservation's id.
    pub id: String,
    pub network: String,
    pub runner: String,
    pub ip: Ipv4Addr,
    /// Unix milliseconds after which the token is refused.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("reservation_token: malformed ({0})")]
    Malformed(&'static str),
    #[error(
        "reservation_token: the signature does not match (altered, or not issued by this host)"
    )]
    BadSignature,
}

/// Signs and verifies reservation tokens.
pub struct Signer {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// Load the key from `path`, creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        let bad = |reason: String| AuthError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == KEY_LEN => {
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(&bytes);
                Ok(Self { key })
            }
            Ok(bytes) => Err(bad(format!(
                "holds {} bytes, expected {KEY_LEN}; remove it to make a new key (this invalidates every outstanding token)",
                bytes.len()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                fill_random(&mut key);
                write_private(path, &key).map_err(|e| bad(e.to_string()))?;
                Ok(Self { key })
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// A signer with a fixed key (tests).
    pub fn from_key(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(PREFIX.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let tag = B64.encode(mac.finalize().into_bytes());
        format!("{PREFIX}.{body}.{tag}")
    }

    /// Check the signature (constant time) and return the claims. Expiry and state are the
    /// caller's business.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(prefix), Some(body), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed("unknown token version"));
        }
        let tag = B64
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(prefix.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64
            .decode(body)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("claims are not valid"))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            id: "r-1".into(),
            network: "default".into(),
            runner: "r1".into(),
            ip: Ipv4Addr::new(10, 128, 64, 9),
            exp: 1_900_000_000_000,
        }
    }

    #[test]
    fn roundtrip_and_tamper_detection() {
        let s = Signer::from_key([7; 32]);
        let t = s.sign(&claims());
        assert!(t.starts_with("wr1."));
        assert_eq!(s.verify(&t).unwrap(), claims());
        // Flip one character anywhere in the body or the tag.
        for i in 4..t.len() {
            if t.as_bytes()[i] == b'.' {
                continue;
            }
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            assert!(s.verify(&altered).is_err(), "altered byte {i} accepted");
        }
        assert_eq!(
            Signer::from_key([8; 32]).verify(&t),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(s.verify("nope"), Err(TokenError::Malformed(_))));
        assert!(matches!(s.verify("wr2.a.b"), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn key_persists() {
        let dir = std::env::temp_dir().join(format!("weir-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("reservation.key");
        let t = Signer::load_or_create(&path).unwrap().sign(&claims());
        assert!(
            Signer::load_or_create(&path).unwrap().verify(&t).is_ok(),
            "same key after reload"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use crate::prop_support::{config, lit};
    use proptest::prelude::*;

    fn any_claims() -> impl Strategy<Value = Claims> {
        (
            any::<String>(),
            "[a-z0-9]{1,10}",
            any::<String>(),
            any::<u32>(),
            any::<i64>(),
        )
            .prop_map(|(id, network, runner, ip, exp)| Claims {
                id,
                network,
                runner,
                ip: Ipv4Addr::from(ip),
                exp,
            })
    }

    /// Text shaped like a token: the right prefix and dots around base64url-ish runs.
    fn token_like() -> impl Strategy<Value = String> {
        let part = prop_oneof!["[A-Za-z0-9_-]{0,60}", "[A-Za-z0-9+/=_-]{40,48}", ".{0,6}"];
        (
            prop_oneof![lit("wr1"), lit("wr2"), lit(""), "[a-z0-9]{1,4}"],
            proptest::collection::vec(part, 0..5),
        )
            .prop_map(|(prefix, parts)| {
                let mut s = prefix.to_string();
                for p in parts {
                    s.push('.');
                    s.push_str(&p);
                }
                s
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_token_unsigned_text_is_refused(
            key in any::<[u8; 32]>(), s in prop_oneof![any::<String>(), token_like()]
        ) {
            prop_assert!(Signer::from_key(key).verify(&s).is_err(), "{:?} accepted", s);
        }

        #[test]
        fn prop_token_signed_claims_round_trip(key in any::<[u8; 32]>(), claims in any_claims()) {
            let s = Signer::from_key(key);
            let t = s.sign(&claims);
            prop_assert!(t.starts_with("wr1."));
            prop_assert!(t.is_ascii() && !t.contains(char::is_whitespace));
            prop_assert_eq!(s.verify(&t), Ok(claims));
        }

        #[test]
        fn prop_token_any_single_byte_change_is_refused(
            key in any::<[u8; 32]>(),
            claims in any_claims(),
            at in any::<proptest::sample::Index>(),
            to in 0u8..=127,
        ) {
            let s = Signer::from_key(key);
            let t = s.sign(&claims);
            let i = at.index(t.len());
            let mut b = t.clone().into_bytes();
            // A different byte, without `prop_assume!`: rejecting 1 case in 128 runs into
            // proptest's limit of 1,024 rejects in a long run.
            b[i] = if b[i] == to { to ^ 1 } else { to };
            // Tokens are ASCII, so any ASCII byte in place of another leaves valid UTF-8.
            let altered = String::from_utf8(b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(s.verify(&altered).is_err(), "byte {} of {:?} -> {:?} accepted", i, t, altered);
        }

        #[test]
        fn prop_token_truncated_or_extended_is_refused(
            key in any::<[u8; 32]>(),
            claims in any_claims(),
            at in any::<proptest::sample::Index>(),
            extra in "[A-Za-z0-9_.=-]{1,4}",
        ) {
            let s = Signer::from_key(key);
            let t = s.sign(&claims);
            let cut = at.index(t.len());
            prop_assert!(s.verify(&t[..cut]).is_err(), "prefix of {} bytes accepted", cut);
            let longer = format!("{}{extra}{}", &t[..cut], &t[cut..]);
            prop_assert!(s.verify(&longer).is_err(), "{:?} accepted", longer);
        }

        #[test]
        fn prop_token_from_another_secret_is_refused(
            k1 in any::<[u8; 32]>(), k2 in any::<[u8; 32]>(), claims in any_claims(),
        ) {
            prop_assume!(k1 != k2);
            let t = Signer::from_key(k1).sign(&claims);
            prop_assert_eq!(Signer::from_key(k2).verify(&t), Err(TokenError::BadSignature));
        }
    }
}
