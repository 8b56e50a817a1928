//! Every gRPC call the daemon serves gets a server span that continues the caller's W3C trace
//! context, and is counted by method and status code.
//!
//! Only methods the daemon serves are named in metrics: a path that is not a method of a
//! known service (one of the `weir.v1`, health or reflection descriptors), or that the router
//! answered `UNIMPLEMENTED` (a known service this listener does not serve), is counted as
//! `method="unknown"` and its span is named `unknown`. A flood of made-up paths therefore adds
//! no series.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::KeyValue;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tracing::Instrument;

use super::client::code_name;
use crate::telemetry::metrics;
use crate::telemetry::propagation::{HeaderExtractor, continue_trace};

/// The `method` label (and span name) of a call to a path the daemon does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The tower layer to put in front of a tonic server's routes. This one names every method
/// of the known descriptors; [`GrpcTelemetryLayer::serving`] only those of the services the
/// server routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTelemetryLayer;

impl GrpcTelemetryLayer {
    /// A layer for a server that routes exactly `services` (full names, e.g.
    /// `weir.v1.Control`): calls to any other service are `unknown`, whatever their answer.
    pub fn serving(services: &'static [&'static str]) -> ServingTelemetryLayer {
        ServingTelemetryLayer { services }
    }
}

impl<S> tower::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry {
            inner,
            services: None,
        }
    }
}

/// See [`GrpcTelemetryLayer::serving`].
#[derive(Debug, Clone, Copy)]
pub struct ServingTelemetryLayer {
    services: &'static [&'static str],
}

impl<S> tower::Layer<S> for ServingTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry {
            inner,
            services: Some(self.services),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
    /// The services routed behind, when known.
    services: Option<&'static [&'static str]>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().trim_start_matches('/').to_string();
        let known = is_known_method(&path)
            && self.services.is_none_or(|served| {
                path.split_once('/')
                    .is_some_and(|(service, _)| served.contains(&service))
            });
        let (service, method) = if known {
            path.split_once('/').unwrap_or((&path, ""))
        } else {
            // OpenTelemetry's semantic conventions name an unknown method `_OTHER`.
            (UNKNOWN_METHOD, "_OTHER")
        };
        let span = tracing::info_span!(
            "grpc",
            otel.name = if known { path.as_str() } else { UNKNOWN_METHOD },
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            network.transport = tracing::field::Empty,
            network.peer.address = tracing::field::Empty,
            network.peer.port = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        record_connection(&span, req.extensions());
        continue_trace(&span, &HeaderExtractor(req.headers()));
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(req).instrument(span.clone()).await;
            // A handler's error is a trailers-only response: its code is in the headers. An
            // answer that started fine carries its code in the trailers, later: count it OK.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            span.record("rpc.grpc.status_code", code as i32);
            if is_server_error(code) {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_message", code_name(code));
            }
            // The router answers a path it does not route with UNIMPLEMENTED: a service of the
            // descriptors that this listener does not serve (e.g. weir.v1.Local on the host).
            let label = if known && code != tonic::Code::Unimplemented {
                path
            } else {
                UNKNOWN_METHOD.to_string()
            };
            let m = metrics();
            let method_attr = KeyValue::new("method", label);
            m.grpc_requests.add(
                1,
                &[method_attr.clone(), KeyValue::new("code", code_name(code))],
            );
            m.grpc_duration
                .record(started.elapsed().as_secs_f64(), &[method_attr]);
            response
        })
    }
}

/// The codes that mark a server span as failed, after OpenTelemetry's semantic conventions
/// for gRPC servers: the server's own faults. A caller's mistake (INVALID_ARGUMENT,
/// NOT_FOUND, UNAUTHENTICATED …) leaves the span's status unset.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// `server.*` and `network.peer.*` from the connection tonic put in the request.
fn record_connection(span: &tracing::Span, ext: &http::Extensions) {
    let tcp = ext.get::<TcpConnectInfo>().or_else(|| {
        ext.get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    });
    if let Some(tcp) = tcp {
        span.record("network.transport", "tcp");
        if let Some(local) = tcp.local_addr() {
            span.record("server.address", local.ip().to_string());
            span.record("server.port", i64::from(local.port()));
        }
        if let Some(peer) = tcp.remote_addr() {
            span.record("network.peer.address", peer.ip().to_string());
            span.record("network.peer.port", i64::from(peer.port()));
        }
    } else if ext.get::<UdsConnectInfo>().is_some() {
        span.record("network.transport", "unix");
    }
}

/// Whether `path` (`package.Service/Method`, no leading slash) is a method of a service Weir
/// knows: the `weir.v1` services, `grpc.health.v1.Health` and server reflection.
pub fn is_known_method(path: &str) -> bool {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            let mut known = HashSet::new();
            for set in [
                weir_proto::v1::FILE_DESCRIPTOR_SET,
                weir_proto::v1::HEALTH_FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ] {
                known.extend(descriptor::methods(set));
            }
            known
        })
        .contains(path)
}

/// Just enough of `google/protobuf/descriptor.proto` to list a descriptor set's methods (prost
/// skips the fields not declared here).
mod descriptor {
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct File {
        #[prost(string, optional, tag = "2")]
        package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Service {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        method: Vec<Method>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Method {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
    }

    /// `package.Service/Method` of every method in an encoded descriptor set (none when it
    /// does not decode: the set is compiled in, so a test catches that).
    pub(super) fn methods(encoded: &[u8]) -> Vec<String> {
        let Ok(set) = <FileDescriptorSet as prost::Message>::decode(encoded) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in set.file {
            let package = f.package.unwrap_or_default();
            for s in f.service {
                let service = match (package.as_str(), s.name.as_deref().unwrap_or_default()) {
                    ("", name) => name.to_string(),
                    (p, name) => format!("{p}.{name}"),
                };
                for m in s.method {
                    out.push(format!("{service}/{}", m.name.unwrap_or_default()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_known_and_made_up_paths_are_not() {
        for path in [
            "weir.v1.Control/AttachWorkload",
            "weir.v1.Agent/Register",
            "weir.v1.Local/Attach",
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(is_known_method(path), "{path}");
        }
        for path in [
            "weir.v1.Control/Nope",
            "x.Y/Z",
            "",
            "weir.v1.Control",
            "/weir.v1.Control/AttachWorkload",
        ] {
            assert!(!is_known_method(path), "{path}");
        }
    }

    #[test]
    fn only_the_servers_own_faults_fail_a_span() {
        assert!(is_server_error(tonic::Code::Unimplemented));
        assert!(is_server_error(tonic::Code::Internal));
        assert!(!is_server_error(tonic::Code::Ok));
        assert!(!is_server_error(tonic::Code::InvalidArgument));
        assert!(!is_server_error(tonic::Code::Unauthenticated));
    }
}
