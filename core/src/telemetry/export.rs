//! Where OTLP goes, and what the log says about it.
//!
//! The endpoint is `telemetry.otlp_endpoint`, or else the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (per signal first); `OTEL_TRACES_EXPORTER=none` or
//! `OTEL_METRICS_EXPORTER=none` turns one signal off. Nothing set: nothing is exported.
//!
//! A collector that cannot be reached would otherwise cost an ERROR line per export (every
//! `telemetry.export_interval`, per signal). Instead the exporters are [`Watched`]: the first
//! failure is one WARN, a failure that lasts is repeated at most every [`RELOG_EVERY`], and
//! the first export that works again says so (INFO). The SDK's own export-error events are
//! dropped from the log, and its other internal events are shown at most every
//! [`RELOG_EVERY`] each ([`sdk_log_filter`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing::subscriber::Interest;
use tracing::{Metadata, callsite};
use tracing_subscriber::layer::{Context, Filter};

/// How often a lasting export failure (or any repeated SDK event) is logged again.
pub const RELOG_EVERY: Duration = Duration::from_secs(600);

/// The SDK events a [`Watched`] exporter reports in their place.
const REPORTED_BY_WATCHED: [&str; 2] = [
    "BatchSpanProcessor.ExportError",
    "PeriodicReader.ExportError",
];

/// Where one signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `telemetry.otlp_endpoint`: given to the exporter.
    Config(String),
    /// A standard variable: the exporter reads it itself.
    Env { var: &'static str, value: String },
}

impl Endpoint {
    /// The endpoint to hand the exporter (the SDK reads the environment's itself).
    pub fn explicit(&self) -> Option<String> {
        match self {
            Endpoint::Config(e) => Some(e.clone()),
            Endpoint::Env { .. } => None,
        }
    }

    /// For errors and the start-up line.
    pub fn name(&self) -> &str {
        match self {
            Endpoint::Config(e) => e,
            Endpoint::Env { value, .. } => value,
        }
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Config(e) => e.clone(),
            Endpoint::Env { var, value } => format!("{value} (from {var})"),
        }
    }
}

/// The endpoints of traces and metrics (`None`: that signal is not exported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub traces: Option<Endpoint>,
    pub metrics: Option<Endpoint>,
}

impl Endpoints {
    /// From `telemetry.otlp_endpoint` and the process's environment.
    pub fn resolve(configured: Option<&str>) -> Self {
        Self::resolve_with(configured, |var| std::env::var(var).ok())
    }

    fn resolve_with(configured: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Self {
        let env = |var: &str| env(var).filter(|v| !v.trim().is_empty());
        let pick = |signal_var: &'static str, off_var: &str| {
            if env(off_var).is_some_and(|v| v.trim() == "none") {
                return None;
            }
            if let Some(e) = configured {
                return Some(Endpoint::Config(e.to_string()));
            }
            [signal_var, "OTEL_EXPORTER_OTLP_ENDPOINT"]
                .into_iter()
                .find_map(|var| env(var).map(|value| Endpoint::Env { var, value }))
        };
        Self {
            traces: pick("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"),
            metrics: pick(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_METRICS_EXPORTER",
            ),
        }
    }

    /// `None` when nothing is exported; else where to, in one line.
    pub fn describe(&self) -> Option<String> {
        match (&self.traces, &self.metrics) {
            (None, None) => None,
            (Some(t), Some(m)) if t == m => Some(t.describe()),
            (t, m) => Some(format!(
                "traces to {}, metrics to {}",
                t.as_ref().map_or("nowhere".into(), Endpoint::describe),
                m.as_ref().map_or("nowhere".into(), Endpoint::describe)
            )),
        }
    }
}

/// Whether exports to the collector work, shared by the signals' exporters.
#[derive(Debug)]
pub struct Health {
    to: String,
    failing: Mutex<Option<Failing>>,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    failures: u64,
    logged: Instant,
}

impl Health {
    pub fn new(to: Option<String>) -> Self {
        Self {
            to: to.unwrap_or_default(),
            failing: Mutex::new(None),
        }
    }

    /// Note one export's result; log what an operator needs to know (see the module's docs).
    pub fn report(&self, signal: &'static str, result: &OTelSdkResult) {
        self.report_at(signal, result, Instant::now());
    }

    fn report_at(&self, signal: &'static str, result: &OTelSdkResult, now: Instant) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let to = &self.to;
        match (result, failing.as_mut()) {
            // Shutting down twice is not the collector's fault.
            (Err(OTelSdkError::AlreadyShutdown), _) => {}
            (Ok(()), None) => {}
            (Ok(()), Some(f)) => {
                tracing::info!(
                    otlp = %to,
                    signal,
                    failed_exports = f.failures,
                    "OTLP export to {to} works again (after {} failed exports over {})",
                    f.failures,
                    humantime::format_duration(round(now - f.since))
                );
                *failing = None;
            }
            (Err(e), None) => {
                tracing::warn!(
                    otlp = %to,
                    signal,
                    error = %e,
                    "OTLP export to {to} failed: {e}; every export retries, and this is logged again every {} while it fails, and when it works again",
                    humantime::format_duration(RELOG_EVERY)
                );
                *failing = Some(Failing {
                    since: now,
                    failures: 1,
                    logged: now,
                });
            }
            (Err(e), Some(f)) => {
                f.failures += 1;
                if now - f.logged >= RELOG_EVERY {
                    tracing::warn!(
                        otlp = %to,
                        signal,
                        error = %e,
                        failed_exports = f.failures,
                        "OTLP export to {to} still fails ({} failed exports over {}): {e}",
                        f.failures,
                        humantime::format_duration(round(now - f.since))
                    );
                    f.logged = now;
                }
            }
        }
    }

    /// Whether the last export failed (for tests).
    pub fn is_failing(&self) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// An exporter whose results are reported to a [`Health`].
#[derive(Debug)]
pub struct Watched<E> {
    inner: E,
    signal: &'static str,
    health: Arc<Health>,
}

impl<E> Watched<E> {
    pub fn new(inner: E, signal: &'static str, health: Arc<Health>) -> Self {
        Self {
            inner,
            signal,
            health,
        }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let r = self.inner.export(batch).await;
        self.health.report(self.signal, &r);
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.inner.export(metrics).await;
        self.health.report(self.signal, &r);
        r
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The log filter for the SDK's internal events (targets `opentelemetry*`): the export errors
/// [`Watched`] reports are dropped, any other event passes at most every [`RELOG_EVERY`] per
/// call site. Everything else passes.
pub fn sdk_log_filter() -> SdkLogFilter {
    SdkLogFilter::default()
}

#[derive(Debug, Default, Clone)]
pub struct SdkLogFilter {
    shown: Arc<Mutex<HashMap<callsite::Identifier, Instant>>>,
}

fn is_sdk_event(meta: &Metadata<'_>) -> bool {
    meta.is_event() && meta.target().starts_with("opentelemetry")
}

impl SdkLogFilter {
    fn allow(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        if !is_sdk_event(meta) {
            return true;
        }
        if REPORTED_BY_WATCHED.contains(&meta.name()) {
            return false;
        }
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        match shown.get(&meta.callsite()) {
            Some(at) if now - *at < RELOG_EVERY => false,
            _ => {
                shown.insert(meta.callsite(), now);
                true
            }
        }
    }
}

impl<S> Filter<S> for SdkLogFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        self.allow(meta, Instant::now())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // The SDK's events are decided each time (the answer changes with time); the rest
        // always pass.
        if is_sdk_event(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_endpoint_wins_and_the_standard_variables_are_the_fallback() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |var: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = Endpoints::resolve_with(None, env(&[]));
        assert_eq!(none.describe(), None);
        let cfg = Endpoints::resolve_with(
            Some("http://c:4317"),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4317")]),
        );
        assert_eq!(cfg.traces, Some(Endpoint::Config("http://c:4317".into())));
        assert_eq!(cfg.describe().as_deref(), Some("http://c:4317"));
        let from_env = Endpoints::resolve_with(
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
                ("OTEL_TRACES_EXPORTER", ""),
            ]),
        );
        assert_eq!(from_env.traces.as_ref().unwrap().explicit(), None);
        assert_eq!(
            from_env.describe().as_deref(),
            Some(
                "traces to http://e:4317 (from OTEL_EXPORTER_OTLP_ENDPOINT), metrics to http://m:4317 (from OTEL_EXPORTER_OTLP_METRICS_ENDPOINT)"
            )
        );
        let off = Endpoints::resolve_with(
            Some("http://c:4317"),
            env(&[("OTEL_METRICS_EXPORTER", "none")]),
        );
        assert!(off.traces.is_some());
        assert_eq!(off.metrics, None);
    }

    #[test]
    fn a_failing_collector_is_reported_once_until_it_recovers() {
        let h = Health::new(Some("http://x:4317".into()));
        let t0 = Instant::now();
        let err: OTelSdkResult = Err(OTelSdkError::InternalFailure("unreachable".into()));
        h.report_at("spans", &err, t0);
        assert!(h.is_failing());
        for s in 1..100 {
            h.report_at("metrics", &err, t0 + Duration::from_secs(s));
        }
        {
            let f = h.failing.lock().unwrap();
            let f = f.as_ref().unwrap();
            assert_eq!(f.failures, 100);
            assert_eq!(f.logged, t0, "not logged again within RELOG_EVERY");
        }
        h.report_at("spans", &err, t0 + RELOG_EVERY);
        assert_eq!(
            h.failing.lock().unwrap().as_ref().unwrap().logged,
            t0 + RELOG_EVERY
        );
        h.report_at("spans", &Ok(()), t0 + RELOG_EVERY * 2);
        assert!(!h.is_failing());
    }
}
