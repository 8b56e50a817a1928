//! The connection of a client command to the host: `--host`, the token, TLS, and the
//! metadata every call carries (bearer token, the caller's W3C trace context).

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use weir_proto::v1::control_client::ControlClient;

use super::CliError;
use crate::api::auth::Bearer;
use crate::transport::{ChannelOptions, ClientError, ClientTls, code_name, connect_tls};

/// Where the host is and how to prove who we are.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// URL of the host: http://HOST:PORT, https://HOST:PORT or unix:///PATH (default: the
    /// configured control socket).
    #[arg(long, env = "WEIR_HOST", value_name = "URL", global = true)]
    pub host: Option<String>,
    /// File holding a control token (default: the WEIR_TOKEN environment variable, which holds
    /// the token itself).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// For an https:// host: the CA that signed its certificate (PEM).
    #[arg(long, env = "WEIR_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// For a host that requires mTLS: our certificate (PEM), with --tls-key.
    #[arg(long, env = "WEIR_TLS_CERT", value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WEIR_TLS_KEY", value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,
}

pub(super) type Client = ControlClient<InterceptedService<Channel, CallMetadata>>;

/// What the CLI adds to every call: the bearer token, and the caller's W3C trace context from
/// `TRACEPARENT` / `TRACESTATE` (the OpenTelemetry convention for passing a context to a child
/// process), so a scheduler that runs `weir` continues its own trace into the host.
#[derive(Clone)]
pub(super) struct CallMetadata {
    bearer: Bearer,
    trace: Vec<(&'static str, AsciiMetadataValue)>,
}

impl CallMetadata {
    fn from_env(bearer: Bearer) -> Result<Self, CliError> {
        let mut trace = Vec::new();
        if let Some(tp) = std::env::var("TRACEPARENT").ok().filter(|v| !v.is_empty()) {
            if !is_traceparent(&tp) {
                return Err(CliError::Usage(format!(
                    "TRACEPARENT: {tp:?} is not a W3C traceparent \
                     (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>)"
                )));
            }
            let v = tp
                .parse()
                .map_err(|_| CliError::Usage(format!("TRACEPARENT: {tp:?} is not ASCII")))?;
            trace.push(("traceparent", v));
            if let Some(ts) = std::env::var("TRACESTATE").ok().filter(|v| !v.is_empty()) {
                let v = ts.parse().map_err(|_| {
                    CliError::Usage(format!("TRACESTATE: {ts:?} is not a valid header value"))
                })?;
                trace.push(("tracestate", v));
            }
        }
        Ok(Self { bearer, trace })
    }
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.bearer.call(req)?;
        for (k, v) in &self.trace {
            req.metadata_mut().insert(*k, v.clone());
        }
        Ok(req)
    }
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero (W3C Trace Context).
fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

pub(super) async fn client(conn: &Conn, config: Option<&Path>) -> Result<Client, CliError> {
    let url = match &conn.host {
        Some(u) => u.clone(),
        None => {
            let loaded = crate::config::load(config)?;
            let sock = loaded.config.host.control_socket.ok_or_else(|| {
                CliError::Usage("no --host given and host.control_socket is not set".into())
            })?;
            format!("unix://{}", sock.display())
        }
    };
    let (token, source) = match &conn.token_file {
        Some(f) => (
            Some(
                crate::auth::read_token(f)
                    .map_err(|e| CliError::Usage(format!("--token-file: {e}")))?,
            ),
            TokenSource::File(f.clone()),
        ),
        None => match std::env::var("WEIR_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            Some(t) => (Some(t), TokenSource::Env),
            None => (None, TokenSource::None),
        },
    };
    let _ = TOKEN_SOURCE.set(source);
    let bearer =
        Bearer::new(token.as_deref()).map_err(|e| CliError::Usage(format!("token: {e}")))?;
    let metadata = CallMetadata::from_env(bearer)?;
    let tls = ClientTls::load(
        conn.tls_ca.as_deref(),
        conn.tls_cert.as_deref(),
        conn.tls_key.as_deref(),
    )
    .map_err(|e| CliError::Usage(format!("--tls-ca/--tls-cert/--tls-key: {e}")))?;
    let channel = connect_tls(&url, ChannelOptions::default(), &tls)
        .await
        .map_err(|e| match e {
            // A URL that cannot work is a usage error; a host that does not answer is not.
            ClientError::BadUrl { .. } => CliError::Usage(format!("--host: {e}")),
            ClientError::Connect { .. } => CliError::Failed(e.to_string()),
        })?;
    Ok(ControlClient::with_interceptor(channel, metadata))
}

/// Where this process's token came from, for the hint on an `UNAUTHENTICATED` refusal.
#[derive(Debug)]
enum TokenSource {
    None,
    Env,
    File(PathBuf),
}

static TOKEN_SOURCE: std::sync::OnceLock<TokenSource> = std::sync::OnceLock::new();

pub(super) fn refused(st: tonic::Status) -> CliError {
    let mut msg = format!("{}: {}", code_name(st.code()), st.message());
    if st.code() == tonic::Code::Unauthenticated {
        msg.push_str(&token_hint(
            TOKEN_SOURCE.get().unwrap_or(&TokenSource::None),
        ));
    }
    CliError::Failed(msg)
}

fn token_hint(source: &TokenSource) -> String {
    match source {
        TokenSource::None => " (no token was given: set WEIR_TOKEN to a control token, or pass \
                              --token-file FILE)"
            .into(),
        TokenSource::Env => " (the token came from WEIR_TOKEN)".into(),
        TokenSource::File(f) => format!(" (the token came from --token-file {})", f.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn traceparent_follows_w3c() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }
}
