//! The instruments Weir records, in one place so names, units and attributes stay consistent.
//!
//! OpenTelemetry names (dots) become Prometheus names with unit and `_total` suffixes:
//! `weir.attach.duration` (s) is `weir_attach_duration_seconds`, `weir.grpc.requests` is
//! `weir_grpc_requests_total`. docs/telemetry.md lists them all.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tracing::Instrument;

/// Latency buckets in seconds, from 50 µs (a warm plugin call) to 10 s (a stalled runner).
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Every instrument. Created from the global meter on first use: call [`metrics`] only after
/// [`super::init`] (before it, and in processes that never call it, they record nothing).
pub struct Metrics {
    /// `weir.attach.duration` {network, outcome}: a Control `Attach`, decision to kernel.
    pub attach_duration: Histogram<f64>,
    /// `weir.detach.duration` {network, outcome}.
    pub detach_duration: Histogram<f64>,
    /// `weir.policy.decisions` {hook, plugin, mode, outcome}: each plugin call.
    pub decisions: Counter<u64>,
    /// `weir.policy.decision.duration` {hook, plugin}.
    pub decision_duration: Histogram<f64>,
    /// `weir.policy.faults` {hook, plugin, cause}.
    pub plugin_faults: Counter<u64>,
    /// `weir.reconcile.duration` {scope}: a whole reconcile pass (host start, runner sync …).
    pub reconcile_duration: Histogram<f64>,
    /// `weir.kernel.duration` {op, outcome}: one kernel batch (netlink or nftables).
    pub kernel_duration: Histogram<f64>,
    /// `weir.runner.command.duration` {op, outcome}: host→runner command, sent to answered.
    pub command_duration: Histogram<f64>,
    /// `weir.grpc.requests` {method, code}: each call the daemon served.
    pub grpc_requests: Counter<u64>,
    /// `weir.grpc.duration` {method}: until the response (or the stream) started.
    pub grpc_duration: Histogram<f64>,
    /// `weir.address.conflicts` {network}: addresses a runner found in use on its bridge by
    /// something Weir did not attach (each then withheld).
    pub address_conflicts: Counter<u64>,
    /// `weir.leadership.changes` {change}: this host took the hub role (`elected`), lost it
    /// (`lost`: its lease went) or handed it over (`resigned`).
    pub leadership_changes: Counter<u64>,
}

fn meter() -> Meter {
    opentelemetry::global::meter("weir")
}

fn latency(m: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    m.f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(LATENCY_BUCKETS.to_vec())
        .build()
}

/// The process's instruments.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = meter();
        Metrics {
            attach_duration: latency(
                &m,
                "weir.attach.duration",
                "Time to attach a workload: policy, address, runner command, kernel",
            ),
            detach_duration: latency(&m, "weir.detach.duration", "Time to detach a workload"),
            decisions: m
                .u64_counter("weir.policy.decisions")
                .with_description("Policy plugin decisions")
                .build(),
            decision_duration: latency(
                &m,
                "weir.policy.decision.duration",
                "Time of one plugin call, validation included",
            ),
            plugin_faults: m
                .u64_counter("weir.policy.faults")
                .with_description("Policy plugin faults (deadline, memory, trap, output …)")
                .build(),
            reconcile_duration: latency(
                &m,
                "weir.reconcile.duration",
                "Time of a reconcile pass between desired state and the kernel",
            ),
            kernel_duration: latency(
                &m,
                "weir.kernel.duration",
                "Time of one kernel batch (netlink or nftables)",
            ),
            command_duration: latency(
                &m,
                "weir.runner.command.duration",
                "Time from queuing a host-to-runner command to the runner's answer",
            ),
            grpc_requests: m
                .u64_counter("weir.grpc.requests")
                .with_description("gRPC calls served")
                .build(),
            grpc_duration: latency(
                &m,
                "weir.grpc.duration",
                "Time until a gRPC call's response (or stream) started",
            ),
            address_conflicts: m
                .u64_counter("weir.address.conflicts")
                .with_description(
                    "Addresses found in use on a runner's bridge by something Weir did not attach",
                )
                .build(),
            leadership_changes: m
                .u64_counter("weir.leadership.changes")
                .with_description("Times this host took, lost or handed over the hub role")
                .build(),
        }
    })
}

/// `"ok"` or `"error"`, for the `outcome` attribute.
pub fn outcome<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "ok" } else { "error" }
}

/// Run one kernel batch in a `kernel` span and record its latency under `op`
/// (e.g. `"nftables.apply"`, `"netlink.attach"`).
pub async fn kernel<T, E>(
    op: &'static str,
    batch: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = tracing::info_span!("kernel", otel.name = op, kernel.op = op);
    let started = Instant::now();
    let r = batch.instrument(span).await;
    metrics().kernel_duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("op", op),
            KeyValue::new("outcome", outcome(&r)),
        ],
    );
    r
}

/// [`kernel`] for a blocking batch.
pub fn kernel_sync<T, E>(op: &'static str, batch: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let span = tracing::info_span!("kernel", otel.name = op, kernel.op = op);
    let started = Instant::now();
    let r = span.in_scope(batch);
    metrics().kernel_duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("op", op),
            KeyValue::new("outcome", outcome(&r)),
        ],
    );
    r
}

/// Run one reconcile pass in a `reconcile` span and record its duration under `scope`.
pub async fn reconcile<T, E>(
    scope: &'static str,
    pass: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = tracing::info_span!(
        "reconcile",
        otel.name = scope,
        reconcile.scope = scope,
        trace_id = tracing::field::Empty
    );
    super::propagation::record_trace_id(&span);
    let started = Instant::now();
    let r = pass.instrument(span).await;
    metrics().reconcile_duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("scope", scope),
            KeyValue::new("outcome", outcome(&r)),
        ],
    );
    r
}

/// The cluster's shape as the host last committed it, read by the gauges at each collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub runners_active: u64,
    pub runners_inactive: u64,
    /// Workloads by (runner, network).
    pub workloads: BTreeMap<(String, String), u64>,
    /// Reservations by state (`unused`, `used`).
    pub reservations: BTreeMap<&'static str, u64>,
}

static CLUSTER: Mutex<Option<ClusterCounts>> = Mutex::new(None);

/// Publish the host's current counts (cheap: the gauges read them only when collected).
pub fn publish_cluster(counts: ClusterCounts) {
    *CLUSTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(counts);
}

fn with_cluster(f: impl FnOnce(&ClusterCounts)) {
    if let Some(c) = CLUSTER.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        f(c);
    }
}

/// Register the host's gauges: `weir.runners` {state}, `weir.workloads` {runner, network},
/// `weir.reservations` {state}.
pub(super) fn observe_cluster() {
    let m = meter();
    // Registered callbacks live as long as the meter provider.
    m.u64_observable_gauge("weir.runners")
        .with_description("Registered runners by liveness")
        .with_callback(|o| {
            with_cluster(|c| {
                o.observe(c.runners_active, &[KeyValue::new("state", "active")]);
                o.observe(c.runners_inactive, &[KeyValue::new("state", "inactive")]);
            })
        })
        .build();
    m.u64_observable_gauge("weir.workloads")
        .with_description("Attached workloads by runner and network")
        .with_callback(|o| {
            with_cluster(|c| {
                for ((runner, network), n) in &c.workloads {
                    o.observe(
                        *n,
                        &[
                            KeyValue::new("runner", runner.clone()),
                            KeyValue::new("network", network.clone()),
                        ],
                    );
                }
            })
        })
        .build();
    m.u64_observable_gauge("weir.reservations")
        .with_description("Address reservations by state")
        .with_callback(|o| {
            with_cluster(|c| {
                for (state, n) in &c.reservations {
                    o.observe(*n, &[KeyValue::new("state", *state)]);
                }
            })
        })
        .build();
}
