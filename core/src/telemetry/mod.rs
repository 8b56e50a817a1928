//! Traces, metrics, and the trace context that ties them to log lines.
//!
//! A daemon calls [`init`] once, after its configuration loaded. It installs:
//! - the `tracing` subscriber: log lines on stderr (text or JSON, filtered by `WEIR_LOG`) and
//!   every span of Weir's own code (`weir` target, INFO and up) handed to OpenTelemetry;
//! - the W3C trace-context propagator, so a caller's `traceparent` continues into Weir and the
//!   host's context continues into its runners;
//! - a tracer provider sampling parent-based at `telemetry.sampling_ratio`, exporting by OTLP
//!   when `telemetry.otlp_endpoint` (or a standard `OTEL_EXPORTER_OTLP_*ENDPOINT`) is set;
//! - a meter provider read by a Prometheus registry (served at `telemetry.prometheus_listen`,
//!   with `target_info`, `weir_build_info` and the `process_*` metrics) and, with an endpoint,
//!   pushed by OTLP every `telemetry.export_interval`;
//! - one resource for both: `service.name`, `service.version`, `service.instance.id` (the
//!   runner's name, the host's hostname) and `host.name`, which `OTEL_RESOURCE_ATTRIBUTES` and
//!   `OTEL_SERVICE_NAME` may override ([`resource`]);
//! - export failures logged once as a WARN, then at most every [`export::RELOG_EVERY`] and when
//!   export works again ([`export`]); the SDK's own repeated errors are kept out of the log.
//!
//! Other commands use [`crate::logging`] alone; without [`init`] every span and instrument is a
//! no-op, so library code may use them unconditionally.

pub mod export;
pub mod metrics;
mod process;
mod prometheus_http;
pub mod propagation;
pub mod resource;

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;
use crate::logging::LogFormat;

pub use metrics::{kernel, kernel_sync, metrics};

/// Which daemon is being observed: names the service and the default Prometheus port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Runner,
}

impl Role {
    pub fn service_name(self) -> &'static str {
        match self {
            Role::Host => "weir-host",
            Role::Runner => "weir-runner",
        }
    }

    /// Loopback only: metrics are published on purpose, never by accident.
    pub fn default_prometheus_listen(self) -> SocketAddr {
        match self {
            Role::Host => SocketAddr::from(([127, 0, 0, 1], 9464)),
            Role::Runner => SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("telemetry.prometheus_listen {addr}: {reason}")]
    Prometheus { addr: SocketAddr, reason: String },
}

/// The installed providers; [`Telemetry::shutdown`] flushes what is still buffered.
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    prometheus: Option<SocketAddr>,
}

impl Telemetry {
    /// Where Prometheus text is served, when it is.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus
    }

    /// Export what is buffered and stop the exporters (blocks up to a few seconds when a
    /// collector is unreachable; call it off the async workers).
    pub fn shutdown(self) {
        if let Err(e) = self.tracer.shutdown() {
            tracing::debug!(error = %e, "tracer shutdown");
        }
        if let Err(e) = self.meter.shutdown() {
            tracing::debug!(error = %e, "meter shutdown");
        }
    }
}

/// Install logging, tracing and metrics for a daemon. Must run inside the tokio runtime (the
/// OTLP exporter's channel and the Prometheus server live on it).
pub async fn init(
    config: &Config,
    role: Role,
    log_format: LogFormat,
) -> Result<Telemetry, TelemetryError> {
    let cfg = &config.telemetry;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource::build(config, role);
    let interval = cfg.export_interval.get();
    let endpoints = export::Endpoints::resolve(cfg.otlp_endpoint.as_deref());

    let mut tracer = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sampling_ratio,
        ))));
    let mut meter = SdkMeterProvider::builder().with_resource(resource);
    let health = std::sync::Arc::new(export::Health::new(endpoints.describe()));
    let exporter_err = |endpoint: &str, e: &dyn std::fmt::Display| TelemetryError::Exporter {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    };
    if let Some(endpoint) = &endpoints.traces {
        let mut spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(e) = endpoint.explicit() {
            spans = spans.with_endpoint(e);
        }
        let spans = spans
            .build()
            .map_err(|e| exporter_err(endpoint.name(), &e))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(interval)
            .build();
        tracer = tracer.with_span_processor(
            BatchSpanProcessor::builder(export::Watched::new(spans, "spans", health.clone()))
                .with_batch_config(batch)
                .build(),
        );
    }
    if let Some(endpoint) = &endpoints.metrics {
        let mut points = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(e) = endpoint.explicit() {
            points = points.with_endpoint(e);
        }
        let points = points
            .build()
            .map_err(|e| exporter_err(endpoint.name(), &e))?;
        meter = meter.with_reader(
            PeriodicReader::builder(export::Watched::new(points, "metrics", health.clone()))
                .with_interval(interval)
                .build(),
        );
    }
    let registry = prometheus::Registry::new();
    let mut prometheus_addr = None;
    if cfg.prometheus {
        let addr = cfg
            .prometheus_listen
            .unwrap_or_else(|| role.default_prometheus_listen());
        let prom_err = |reason: String| TelemetryError::Prometheus { addr, reason };
        // `target_info` carries the resource (service, instance, host) as labels.
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| prom_err(e.to_string()))?;
        meter = meter.with_reader(reader);
        let process = process::ProcessCollector::new().map_err(|e| prom_err(e.to_string()))?;
        registry
            .register(Box::new(process))
            .map_err(|e| prom_err(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| prom_err(e.to_string()))?;
        prometheus_addr = Some(listener.local_addr().unwrap_or(addr));
        tokio::spawn(prometheus_http::serve(listener, registry));
    }
    let tracer = tracer.build();
    let meter = meter.build();
    opentelemetry::global::set_meter_provider(meter.clone());
    opentelemetry::global::set_tracer_provider(tracer.clone());
    if role == Role::Host {
        metrics::observe_cluster();
    }
    observe_build_info();

    // The SDK's own log events: the export errors the watched exporters report are dropped,
    // any other one is shown at most every RELOG_EVERY (it would repeat at every export).
    let quiet = export::sdk_log_filter();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match log_format {
        LogFormat::Text => fmt.with_filter(crate::logging::filter().and(quiet)).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(crate::logging::filter().and(quiet))
            .boxed(),
    };
    // Spans of Weir's own code only: the libraries' internals would drown the traces.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer("weir"))
        .with_threads(false)
        .with_filter(Targets::new().with_target("weir", tracing::Level::INFO));
    // A second init (tests running daemons in-process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    match endpoints.describe() {
        Some(to) => tracing::info!(
            otlp = %to,
            interval = %humantime::format_duration(interval),
            "exporting traces and metrics by OTLP/gRPC to {to}"
        ),
        None => tracing::info!(
            "no OTLP endpoint (telemetry.otlp_endpoint, OTEL_EXPORTER_OTLP_ENDPOINT): traces and metrics are not exported"
        ),
    }
    Ok(Telemetry {
        tracer,
        meter,
        prometheus: prometheus_addr,
    })
}

/// `weir.build.info` {version}: always 1, for joining a version onto other series
/// (`weir_build_info` in Prometheus).
fn observe_build_info() {
    opentelemetry::global::meter("weir")
        .u64_observable_gauge("weir.build.info")
        .with_description("Always 1; the labels say which build of Weir runs")
        .with_callback(|o| o.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]))
        .build();
}

/// How long one OTLP export may take before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
