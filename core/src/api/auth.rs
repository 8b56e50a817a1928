//! Bearer-token gates in front of the services, and the client-side interceptor.
//!
//! `Control` calls need a control token; `Agent` calls (runners) need the join token. A join
//! token on `Control` is PERMISSION_DENIED; a missing or unknown token is UNAUTHENTICATED.
//! Health and reflection are open, as their clients expect.

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::auth::TokenSet;

/// The tokens a host accepts.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    control: Arc<TokenSet>,
    join: Arc<TokenSet>,
    insecure: bool,
}

/// Which service a gate guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Control,
    Join,
}

impl Gate {
    pub fn new(control: TokenSet, join: TokenSet, insecure: bool) -> Self {
        Self {
            control: Arc::new(control),
            join: Arc::new(join),
            insecure,
        }
    }

    /// An interceptor admitting callers of `role`.
    pub fn guard(&self, role: Role) -> Guard {
        Guard {
            gate: self.clone(),
            role,
        }
    }

    /// Whether a call's headers carry a token of either role (or the host is insecure): an
    /// authenticated call, which the edge's per-peer limit never counts.
    pub fn admits(&self, headers: &http::HeaderMap) -> bool {
        if self.insecure {
            return true;
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        token.is_some_and(|t| self.control.contains(t) || self.join.contains(t))
    }

    fn check(&self, meta: &MetadataMap, role: Role) -> Result<(), Status> {
        if self.insecure {
            return Ok(());
        }
        let (wanted, token_name) = match role {
            Role::Control => ("a control token", "control token"),
            Role::Join => ("the join token", "join token"),
        };
        let Some(token) = bearer(meta) else {
            return Err(Status::unauthenticated(format!(
                "missing credentials: send 'authorization: Bearer <{token_name}>'"
            )));
        };
        let (mine, other) = match role {
            Role::Control => (&self.control, &self.join),
            Role::Join => (&self.join, &self.control),
        };
        if mine.contains(token) {
            return Ok(());
        }
        if other.contains(token) {
            return Err(Status::permission_denied(format!(
                "this token does not allow the call: it needs {wanted}"
            )));
        }
        Err(Status::unauthenticated("the bearer token is not valid"))
    }
}

/// A tonic interceptor for one role.
#[derive(Clone, Debug)]
pub struct Guard {
    gate: Gate,
    role: Role,
}

impl Interceptor for Guard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.gate.check(req.metadata(), self.role)?;
        Ok(req)
    }
}

fn bearer(meta: &MetadataMap) -> Option<&str> {
    bearer_token(meta.get("authorization")?.to_str().ok()?)
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A token that cannot be sent as an `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token contains characters not allowed in a header")]
pub struct InvalidToken;

/// Adds `authorization: Bearer <token>` to every call of a client.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// `None` sends no credentials.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        match token {
            None => Ok(Self(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| InvalidToken),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(t: &str) -> TokenSet {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weir-auth-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(t);
        std::fs::write(&file, t).unwrap();
        let set = TokenSet::load(std::slice::from_ref(&file)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        set
    }

    fn gate() -> Gate {
        Gate::new(
            tokens("ctl-secret-0123456789"),
            tokens("join-secret-0123456789"),
            false,
        )
    }

    fn meta(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        m
    }

    #[test]
    fn missing_credentials_name_the_whole_token() {
        let e = gate().check(&meta(None), Role::Join).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            e.message(),
            "missing credentials: send 'authorization: Bearer <join token>'"
        );
        let e = gate().check(&meta(None), Role::Control).unwrap_err();
        assert_eq!(
            e.message(),
            "missing credentials: send 'authorization: Bearer <control token>'"
        );
    }

    #[test]
    fn the_other_roles_token_is_permission_denied() {
        let e = gate()
            .check(&meta(Some("join-secret-0123456789")), Role::Control)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("a control token"), "{}", e.message());
        let e = gate()
            .check(&meta(Some("ctl-secret-0123456789")), Role::Join)
            .unwrap_err();
        assert!(e.message().contains("the join token"), "{}", e.message());
    }

    #[test]
    fn an_unknown_token_is_unauthenticated_and_a_known_one_passes() {
        let e = gate().check(&meta(Some("nope")), Role::Join).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        gate()
            .check(&meta(Some("join-secret-0123456789")), Role::Join)
            .unwrap();
        gate()
            .check(&meta(Some("ctl-secret-0123456789")), Role::Control)
            .unwrap();
        Gate::new(TokenSet::default(), TokenSet::default(), true)
            .check(&meta(None), Role::Control)
            .unwrap();
    }

    #[test]
    fn a_token_that_is_no_header_value_is_refused() {
        assert_eq!(Bearer::new(Some("a\nb")).unwrap_err(), InvalidToken);
        assert!(Bearer::new(Some("fine-token")).is_ok() && Bearer::new(None).is_ok());
    }
}
