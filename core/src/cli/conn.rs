//! The connection of a client command to the host: `--host`, the token, TLS, and the
//! metadata every call carries (bearer token, the caller's W3C trace context).

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use weir_proto::v1::control_client::ControlClient;

use super::CliError;
use crate::api::auth::Bearer;
use crate::transport::{
    ChannelOptions, ClientError, ClientTls, Hosts, LeaderChannel, code_name, connect_tls,
    parse_host_list,
};

/// Where the host is and how to prove who we are.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// URL of the host: http://HOST:PORT, https://HOST:PORT or unix:///PATH (default: the
    /// configured control socket). Several hosts of which one leads (failover): their URLs
    /// separated by commas, e.g. http://h1:7700,http://h2:7700; the command asks each in turn
    /// which one leads, uses that one, follows it when a standby refuses a call, and waits up
    /// to 5s while none leads.
    #[arg(long, env = "WEIR_HOST", value_name = "URL[,URL...]", global = true)]
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

pub(super) type Client = ControlClient<InterceptedService<LeaderChannel, CallMetadata>>;

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
    let urls = parse_host_list(&url).map_err(unreachable)?;
    let channel = match urls.as_slice() {
        // One host: connect to it, nothing more (no probe, no following).
        [one] => LeaderChannel::single(
            one.clone(),
            connect_tls(one, ChannelOptions::default(), &tls)
                .await
                .map_err(unreachable)?,
        ),
        _ => {
            // The probes carry the token too: an authenticated health check is not counted
            // against the host's unauthenticated rate limit.
            let probe_metadata =
                tonic::service::Interceptor::call(&mut metadata.clone(), tonic::Request::new(()))
                    .map_err(|st| CliError::Usage(format!("token: {}", st.message())))?
                    .into_parts()
                    .0;
            let hosts = Hosts::new(urls, ChannelOptions::default(), &tls)
                .map_err(unreachable)?
                .with_probe_metadata(probe_metadata);
            LeaderChannel::connect(hosts).await.map_err(unreachable)?
        }
    };
    Ok(ControlClient::with_interceptor(channel, metadata))
}

/// A URL that cannot work is a usage error; a host that does not answer (or, of several, none
/// that leads) is not.
fn unreachable(e: ClientError) -> CliError {
    match e {
        ClientError::BadUrl { .. } => CliError::Usage(format!("--host: {e}")),
        ClientError::Connect { .. } | ClientError::NoLeader { .. } => {
            CliError::Failed(e.to_string())
        }
    }
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
    use super::{CliError, ClientError, is_traceparent, unreachable};

    #[test]
    fn host_help_documents_lists_and_the_leader_wait() {
        let cmd = <super::Conn as clap::Args>::augment_args(clap::Command::new("weir"));
        let host = cmd.get_arguments().find(|a| a.get_id() == "host").unwrap();
        let help = host.get_help().unwrap().to_string();
        let wait = humantime::format_duration(crate::transport::leader::LEADER_WAIT);
        assert!(
            help.contains(&format!("up to {wait} while none leads")),
            "{help}"
        );
        assert!(help.contains("http://h1:7700,http://h2:7700"), "{help}");
    }

    #[test]
    fn a_bad_url_is_a_usage_error_a_host_without_answer_a_failure() {
        let bad = ClientError::BadUrl {
            url: "ftp://h:1".into(),
            reason: "unsupported scheme".into(),
        };
        assert!(matches!(unreachable(bad), CliError::Usage(m) if m.starts_with("--host: ")));
        let gone = ClientError::Connect {
            url: "http://h:1".into(),
            reason: "refused".into(),
        };
        assert!(matches!(unreachable(gone), CliError::Failed(_)));
        let none = ClientError::NoLeader {
            answers: vec![("http://h:1".into(), "NOT_SERVING (a standby)".into())],
            waited: crate::transport::leader::LEADER_WAIT,
        };
        assert!(
            matches!(unreachable(none), CliError::Failed(m) if m.contains("http://h:1: NOT_SERVING"))
        );
    }

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
