//! Client channels and their options: `http://host:port` (TCP), `https://` (TLS, mTLS) or
//! `unix:///path` (a local socket); gRPC code names and one-line error chains; and, for
//! several hosts of which one leads, finding and following the leader ([`leader`]).
//!
//! A leaf: it imports nothing of Weir, so the API's clients (`api/`, the CLI) and the policy
//! host's gRPC plugins (`policy/grpc.rs`) share it without importing each other.

pub mod leader;

pub use leader::{Hosts, LeaderChannel, Standby, parse_host_list};

use std::time::Duration;

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How a client failed to reach the host.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("host URL {url:?}: {reason} (use http://HOST:PORT, https://HOST:PORT or unix:///PATH)")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the host at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// Several hosts were given and none answered as the leader in time: each URL with its
    /// last answer ([`leader::Hosts::find_leader`]).
    #[error("{}", leader::no_leader_text(answers, *waited))]
    NoLeader {
        answers: Vec<(String, String)>,
        waited: Duration,
    },
}

/// Why the client TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a client certificate needs the CA that signed the host's certificate too")]
    CertificateWithoutCa,
    #[error("a client certificate and its key go together")]
    CertificateWithoutKey,
}

/// Options of a client channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive: a silent dead connection is detected after about twice this.
    pub keepalive: Option<Duration>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            keepalive: None,
        }
    }
}

/// Client TLS for `https://` hosts: the CA to trust and, for mTLS, our own identity.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    config: Option<ClientTlsConfig>,
}

impl ClientTls {
    /// Read PEM files. `ca` is required for TLS; `cert` and `key` go together.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ClientTlsError> {
        let read = |p: &Path, what: &'static str| {
            std::fs::read(p).map_err(|source| ClientTlsError::Read {
                what,
                path: p.to_path_buf(),
                source,
            })
        };
        let Some(ca) = ca else {
            if cert.is_some() || key.is_some() {
                return Err(ClientTlsError::CertificateWithoutCa);
            }
            return Ok(Self::default());
        };
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
        match (cert, key) {
            (Some(c), Some(k)) => {
                cfg = cfg.identity(Identity::from_pem(read(c, "certificate")?, read(k, "key")?))
            }
            (None, None) => {}
            _ => return Err(ClientTlsError::CertificateWithoutKey),
        }
        Ok(Self { config: Some(cfg) })
    }
}

/// Validate a host URL and build its endpoint (plaintext; see [`endpoint_tls`]).
pub fn endpoint(url: &str, opts: ChannelOptions) -> Result<Endpoint, ClientError> {
    endpoint_tls(url, opts, &ClientTls::default())
}

/// Validate a host URL and build its endpoint; an `https://` URL uses `tls`.
pub fn endpoint_tls(
    url: &str,
    opts: ChannelOptions,
    tls: &ClientTls,
) -> Result<Endpoint, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("unix:")) {
        return Err(bad("unsupported scheme"));
    }
    let mut ep = Endpoint::from_shared(url.to_string()).map_err(|e| bad(&e.to_string()))?;
    ep = ep.connect_timeout(opts.connect_timeout);
    if url.starts_with("https://") {
        let cfg = tls
            .config
            .clone()
            .ok_or_else(|| bad("an https:// host needs the CA that signed its certificate"))?;
        ep = ep.tls_config(cfg).map_err(|e| bad(&error_chain(&e)))?;
    } else if tls.config.is_some() {
        return Err(bad("TLS settings are given but the URL is not https://"));
    }
    if let Some(k) = opts.keepalive {
        ep = ep
            .http2_keep_alive_interval(k)
            .keep_alive_timeout(k)
            .keep_alive_while_idle(true);
    }
    Ok(ep)
}

/// Connect to the host now (plaintext or unix socket).
pub async fn connect(url: &str, opts: ChannelOptions) -> Result<Channel, ClientError> {
    connect_tls(url, opts, &ClientTls::default()).await
}

/// Connect to the host now; an `https://` URL uses `tls`.
pub async fn connect_tls(
    url: &str,
    opts: ChannelOptions,
    tls: &ClientTls,
) -> Result<Channel, ClientError> {
    endpoint_tls(url, opts, tls)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_string(),
            reason: error_chain(&e),
        })
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// The canonical upper-case name of a gRPC code (as grpcurl and the gRPC docs spell it).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
