//! Serve the host's services on TCP and, for local tools, on a unix socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Server, ServerTlsConfig};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tonic_reflection::server::v1alpha::{
    ServerReflection as AlphaServerReflection,
    ServerReflectionServer as AlphaServerReflectionServer,
};
use weir_proto::v1::agent_server::AgentServer;
use weir_proto::v1::control_server::ControlServer;

use super::agent::AgentService;
use super::auth::{Gate, Role};
use super::control::ControlService;
use super::edge::{EdgeLayer, EdgeLimits};
use super::telemetry::GrpcTelemetryLayer;
use crate::hub::Hub;

/// How long a stopping host waits for in-flight calls.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Bound listeners, ready to serve.
pub struct Listeners {
    pub tcp: TcpListener,
    pub unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Bind the TCP address and (optionally) the unix socket, replacing a stale socket file.
    pub async fn bind(tcp: SocketAddr, unix: Option<&Path>) -> std::io::Result<Self> {
        let tcp_listener = TcpListener::bind(tcp)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen on {tcp}: {e}")))?;
        let unix = match unix {
            // Only root (and whoever root lets in) may drive the host locally.
            Some(path) => Some(bind_unix(path).await?),
            None => None,
        };
        Ok(Self {
            tcp: tcp_listener,
            unix,
        })
    }
}

/// Bind a unix socket for local tools (mode 0600: root only), replacing a stale socket file.
pub async fn bind_unix(path: &Path) -> std::io::Result<(UnixListener, PathBuf)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("listen on {}: {e}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((l, path.to_path_buf()))
}

/// The services every host listener serves, as reflection lists them.
pub const SERVED_SERVICES: [&str; 5] = [
    "weir.v1.Agent",
    "weir.v1.Control",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Server reflection, v1 and v1alpha (grpcurl 1.8, grpcui and older grpc-go speak only the
/// latter), advertising exactly [`SERVED_SERVICES`]: the descriptor sets also hold services
/// the host does not serve (`weir.v1.Local`, `weir.v1.PolicyPlugin`), which stay resolvable
/// by symbol but are not listed. Health's descriptor is registered under its canonical file
/// name `grpc/health/v1/health.proto`.
fn reflection() -> (
    Option<ServerReflectionServer<impl ServerReflection>>,
    Option<AlphaServerReflectionServer<impl AlphaServerReflection>>,
) {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(weir_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(weir_proto::v1::HEALTH_FILE_DESCRIPTOR_SET)
            // Each version also describes the other, as both are listed.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in SERVED_SERVICES {
            b = b.with_service_name(name);
        }
        b
    };
    let warn = |version: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "server reflection {version} unavailable");
    };
    let v1 = builder().build_v1().map_err(|e| warn("v1", &e)).ok();
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| warn("v1alpha", &e))
        .ok();
    (v1, v1alpha)
}

/// Serve until `shutdown` resolves, then give in-flight calls the grace it resolves with
/// (normally [`SHUTDOWN_GRACE`]). `keepalive` bounds how long a dead connection lingers.
/// Besides `weir.v1.Agent` and `weir.v1.Control` (behind `gate`), every listener serves
/// `grpc.health.v1.Health` and server reflection (v1 and v1alpha); `limits` apply to all listeners together
/// (see [`super::edge`]).
pub async fn serve(
    hub: Arc<Hub>,
    gate: Gate,
    listeners: Listeners,
    tls: Option<ServerTlsConfig>,
    keepalive: Duration,
    limits: EdgeLimits,
    shutdown: impl std::future::Future<Output = Duration> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["weir.v1.Agent", "weir.v1.Control", ""] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let (reflection_v1, reflection_v1alpha) = reflection();
    let edge = EdgeLayer::new(limits, gate.clone());
    let router =
        |hub: Arc<Hub>, tls: Option<ServerTlsConfig>| -> Result<_, tonic::transport::Error> {
            let mut builder = Server::builder()
                .http2_keepalive_interval(Some(keepalive))
                .http2_keepalive_timeout(Some(keepalive));
            if let Some(tls) = tls {
                builder = builder.tls_config(tls)?;
            }
            Ok(builder
                .layer(GrpcTelemetryLayer::serving(&SERVED_SERVICES))
                .layer(edge.clone())
                .add_service(AgentServer::with_interceptor(
                    AgentService::new(hub.clone()),
                    gate.guard(Role::Join),
                ))
                .add_service(ControlServer::with_interceptor(
                    ControlService::new(hub),
                    gate.guard(Role::Control),
                ))
                .add_service(health_service.clone())
                .add_optional_service(reflection_v1.clone())
                .add_optional_service(reflection_v1alpha.clone()))
        };
    let mut tasks = Vec::new();
    let mut rx = tx.subscribe();
    tasks.push(tokio::spawn(
        router(hub.clone(), tls)?.serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.tcp),
            async move {
                let _ = rx.recv().await;
            },
        ),
    ));
    let mut unix_path = None;
    if let Some((l, path)) = listeners.unix {
        let mut rx = tx.subscribe();
        unix_path = Some(path);
        tasks.push(tokio::spawn(
            // The local socket stays plaintext: it is a file only root can open.
            router(hub.clone(), None)?.serve_with_incoming_shutdown(
                UnixListenerStream::new(l),
                async move {
                    let _ = rx.recv().await;
                },
            ),
        ));
    }
    let grace = shutdown.await;
    let _ = tx.send(());
    // Runner sessions are endless streams: give in-flight calls a moment, then stop anyway.
    let mut result = Ok(());
    let drain = async {
        for t in &mut tasks {
            if let Ok(Err(e)) = t.await {
                result = Err(e);
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::info!("closing the remaining sessions");
        for t in &tasks {
            t.abort();
        }
    }
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
    result
}
