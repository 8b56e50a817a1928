//! Telemetry against a real lab: traces reach an in-process OTLP collector with the parent
//! links of one attach across the Python scheduler, the host and the runner; Prometheus text
//! served inside the host's and a runner's namespace holds every documented metric.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use weir::dataplane::netns;
use weir::lab::Lab;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
}

/// An OTLP/gRPC collector in this test process: keeps spans, accepts (and drops) metrics.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                out.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        _req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    /// Serve on `listener` (bound in whatever namespace it was created in).
    fn serve(&self, listener: TcpListener) -> SocketAddr {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (traces, metrics) = (self.clone(), self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(traces))
                .add_service(MetricsServiceServer::new(metrics))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// A listener on `ip` inside the namespace at `ns`.
fn listen_in(ns: &Path, ip: &str) -> TcpListener {
    let ip = ip.to_string();
    netns::run_in(ns, move || TcpListener::bind((ip.as_str(), 0)))
        .unwrap()
        .unwrap()
}

fn find<'a>(spans: &'a [Span], service: &str, name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

/// Whether `ancestor` is `span` itself or on its parent chain (within `spans`).
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut cur = Some(span);
    while let Some(s) = cur {
        if s.id == ancestor.id {
            return true;
        }
        cur = spans.iter().find(|p| p.id == s.parent);
    }
    false
}

fn telemetry_section(collector: SocketAddr) -> String {
    format!("[telemetry]\notlp_endpoint = \"http://{collector}\"\nexport_interval = \"200ms\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attach_from_the_python_scheduler_is_one_trace_across_scheduler_host_and_runner() {
    let mut s = spec("otel");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    let collector = Collector::default();
    // The daemons export from the lab's underlay (the lan router's address); the scheduler
    // runs in this namespace and exports over loopback.
    let underlay = collector.serve(listen_in(&lab.ns("lan"), "192.0.2.254"));
    let local = collector.serve(TcpListener::bind("127.0.0.1:0").unwrap());
    lab.spec.host_extra = format!(
        "{}{}",
        telemetry_section(underlay),
        plugin_toml(
            "isolation",
            &plugin_path("tenant_isolation"),
            "firewall",
            "deny",
            ""
        )
    );
    lab.spec.runner_extra = telemetry_section(underlay);
    lab.start_host().await.unwrap_or_else(|e| panic!("{e}"));
    lab.add_runner(1).await.unwrap_or_else(|e| panic!("{e}"));
    let master = new_netns(&lab, "m");

    let out = python_scheduler(&lab)
        .args(["--master", &format!("r1={master}")])
        .args(["--otlp-endpoint", &format!("http://{local}")])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let trace = summary["traces"]["AttachWorkload job1-master"]
        .as_str()
        .expect("the scheduler reports the attach's trace id")
        .to_string();

    // Spans are exported when they end, parents after their children: wait for the last of
    // each daemon (the runner's command span, the host's server span).
    let arrived = |service: &str, name: &str| {
        collector
            .spans()
            .iter()
            .any(|s| s.trace == trace && s.service == service && s.name == name)
    };
    wait_until("the attach's spans reach the collector", dur(30), || {
        arrived("weir-runner", "apply attach")
            && arrived("weir-runner", "netlink.attach")
            && arrived("weir-host", "command attach")
            && arrived("weir-host", "weir.v1.Control/AttachWorkload")
    })
    .await;
    let all = collector.spans();
    let spans: Vec<Span> = all.iter().filter(|s| s.trace == trace).cloned().collect();
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{}:{}", s.service, s.name))
        .collect();

    let client = find(&spans, "python-scheduler", "weir.v1.Control/AttachWorkload");
    assert_eq!(client.len(), 1, "one scheduler span in {names:?}");
    let client = client[0];
    assert!(client.parent.is_empty(), "the scheduler's span is the root");

    let server = find(&spans, "weir-host", "weir.v1.Control/AttachWorkload");
    assert_eq!(server.len(), 1, "one host server span in {names:?}");
    let server = server[0];
    assert_eq!(
        server.parent, client.id,
        "the host continues the scheduler's context"
    );
    assert_eq!(server.attrs["rpc.grpc.status_code"], "0");

    let decide = find(&spans, "weir-host", "decide rules");
    assert_eq!(decide.len(), 1, "one firewall decision in {names:?}");
    assert!(descends(&spans, decide[0], server));
    assert_eq!(decide[0].attrs["policy.plugin"], "isolation");
    assert_eq!(decide[0].attrs["policy.outcome"], "rules");
    assert!(!decide[0].attrs["policy.version"].is_empty());
    assert!(decide[0].attrs.contains_key("policy.latency_us"));

    let command = find(&spans, "weir-host", "command attach");
    assert_eq!(command.len(), 1, "one attach command in {names:?}");
    let command = command[0];
    assert!(descends(&spans, command, server));
    assert_eq!(command.attrs["runner"], "r1");

    let applied = find(&spans, "weir-runner", "apply attach");
    assert_eq!(
        applied.len(),
        1,
        "the runner carried it out once: {names:?}"
    );
    let applied = applied[0];
    assert_eq!(
        applied.parent, command.id,
        "the runner continues the host's command span"
    );
    let kernel = find(&spans, "weir-runner", "netlink.attach");
    assert_eq!(kernel.len(), 1);
    assert!(descends(&spans, kernel[0], applied));
    assert!(
        spans
            .iter()
            .filter(|s| s.name.starts_with("nftables."))
            .all(|s| descends(&spans, s, server)),
        "firewall batches belong to the attach"
    );

    // One attach is one trace: no span of it went anywhere else.
    let elsewhere: Vec<&Span> = all
        .iter()
        .filter(|s| {
            s.trace != trace
                && (s.name == "apply attach"
                    || s.name == "command attach"
                    || s.name == "decide rules")
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "attach spans outside its trace: {elsewhere:?}"
    );
    // The other calls have their own traces, each continued by the host.
    let detach = summary["traces"]["DetachWorkload job1-master"]
        .as_str()
        .unwrap();
    assert_ne!(detach, trace);

    // A scheduler that runs the CLI hands its context over in TRACEPARENT; the host continues it.
    let (cli_trace, cli_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let cli_ns = new_netns(&lab, "c");
    let cli = |traceparent: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "attach", "--runner", "r1", "--id", "from-cli", "--netns", &cli_ns,
            ])
            .args(["--host", &lab.control_url(), "--token-file"])
            .arg(lab.dir.join("control.token"))
            .env("TRACEPARENT", traceparent)
            .output()
            .expect("run weir attach")
    };
    let bad = cli("00-not-a-trace-01");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a malformed TRACEPARENT is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TRACEPARENT"));
    let out = cli(&format!("00-{cli_trace}-{cli_parent}-01"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the CLI's attach reaches the collector", dur(30), || {
        collector.spans().iter().any(|s| {
            s.trace == cli_trace
                && s.service == "weir-host"
                && s.name == "weir.v1.Control/AttachWorkload"
        })
    })
    .await;
    let spans = collector.spans();
    let server = spans
        .iter()
        .find(|s| s.trace == cli_trace && s.name == "weir.v1.Control/AttachWorkload")
        .unwrap();
    assert_eq!(
        server.parent, cli_parent,
        "the host continues the CLI's caller"
    );
}

/// `GET /metrics` from inside a lab member's namespace.
fn scrape(lab: &Lab, member: &str, port: u16) -> String {
    netns::run_in(&lab.ns(member), move || -> std::io::Result<String> {
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        c.read_to_string(&mut body)?;
        Ok(body)
    })
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default()
}

/// The sum of the samples of `name` whose labels include `labels` (None: no such sample).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            continue;
        }
        let found: BTreeMap<&str, &str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| found.get(k) == Some(v)) {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    total
}

/// A histogram's count and mean for the matching series, asserting both are sane.
#[track_caller]
fn histogram(text: &str, name: &str, labels: &[(&str, &str)], min_count: f64) -> f64 {
    let count = sample(text, &format!("{name}_count"), labels)
        .unwrap_or_else(|| panic!("{name}{labels:?} missing:\n{text}"));
    let sum = sample(text, &format!("{name}_sum"), labels).unwrap();
    assert!(
        count >= min_count,
        "{name}{labels:?}: count {count} < {min_count}"
    );
    // Every operation here is bounded by the 20 s command timeout: a larger mean is a unit bug.
    assert!(
        sum > 0.0 && sum / count < 20.0,
        "{name}{labels:?}: sum {sum} over {count} is not a plausible number of seconds"
    );
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoints_serve_every_documented_metric() {
    let mut s = spec("prom");
    s.runners = 1;
    s.workloads_per_runner = 0;
    // An allocator that answers, a monitor that always misses its deadline (faults, never
    // applied), and a firewall.
    s.host_extra = format!(
        "{}{}mode = \"monitor\"\ndeadline = \"30ms\"\n{}",
        plugin_toml(
            "alloc",
            &plugin_path("default_allocator"),
            "allocator",
            "deny",
            ""
        ),
        plugin_toml(
            "loop",
            &plugin_path("endless_loop"),
            "allocator",
            "fallback",
            ""
        ),
        plugin_toml(
            "isolation",
            &plugin_path("tenant_isolation"),
            "firewall",
            "deny",
            ""
        )
    );
    let lab = must(Lab::up(s).await);
    let ns1 = new_netns(&lab, "a");
    let ns2 = new_netns(&lab, "b");
    let mut c = control(&lab).await;
    use weir_proto::v1 as pb;
    for (id, ns) in [("a", &ns1), ("b", &ns2)] {
        c.attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: id.into(),
            netns: ns.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    c.detach_workload(pb::DetachWorkloadRequest {
        workload_id: "b".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A refused call is counted under its code.
    let bad = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "bad id".into(),
            netns: ns2.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    c.reserve_address(pb::ReserveAddressRequest {
        runner: "r1".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Gauges are refreshed on the host's tick; wait for the counts this test caused.
    let mut host = String::new();
    wait_until(
        "the host's gauges show the workload and the reservation",
        dur(20),
        || {
            host = scrape(&lab, "host", 9464);
            sample(
                &host,
                "weir_workloads",
                &[("runner", "r1"), ("network", "default")],
            ) == Some(1.0)
                && sample(&host, "weir_reservations", &[("state", "unused")]) == Some(1.0)
        },
    )
    .await;
    assert_eq!(
        sample(&host, "weir_runners", &[("state", "active")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&host, "weir_runners", &[("state", "inactive")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&host, "weir_reservations", &[("state", "used")]),
        Some(0.0)
    );
    let ok = [("network", "default"), ("outcome", "ok")];
    assert_eq!(
        histogram(&host, "weir_attach_duration_seconds", &ok, 2.0),
        2.0
    );
    assert_eq!(
        histogram(&host, "weir_detach_duration_seconds", &ok, 1.0),
        1.0
    );
    let refused = [("network", "default"), ("outcome", "error")];
    assert_eq!(
        sample(&host, "weir_attach_duration_seconds_count", &refused),
        Some(1.0)
    );
    let address = [
        ("hook", "assign-address"),
        ("plugin", "alloc"),
        ("mode", "enforce"),
    ];
    assert!(sample(&host, "weir_policy_decisions_total", &address).unwrap_or(0.0) >= 2.0);
    let rules = [
        ("hook", "rules"),
        ("plugin", "isolation"),
        ("outcome", "rules"),
    ];
    assert_eq!(
        sample(&host, "weir_policy_decisions_total", &rules),
        Some(2.0)
    );
    histogram(
        &host,
        "weir_policy_decision_duration_seconds",
        &[("plugin", "alloc")],
        2.0,
    );
    // The monitor runs after the answer: its faults may trail the attach.
    wait_until("the monitor's deadline faults are counted", dur(20), || {
        host = scrape(&lab, "host", 9464);
        sample(
            &host,
            "weir_policy_faults_total",
            &[("plugin", "loop"), ("cause", "deadline")],
        )
        .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    assert_eq!(
        sample(&host, "weir_policy_faults_total", &[("plugin", "alloc")]),
        None,
        "the working plugin has no faults"
    );
    histogram(
        &host,
        "weir_reconcile_duration_seconds",
        &[("scope", "host-start")],
        1.0,
    );
    histogram(
        &host,
        "weir_kernel_duration_seconds",
        &[("op", "netlink.ensure_tunnel"), ("outcome", "ok")],
        1.0,
    );
    histogram(
        &host,
        "weir_runner_command_duration_seconds",
        &[("op", "attach"), ("outcome", "ok")],
        2.0,
    );
    let attach_ok = [("method", "weir.v1.Control/AttachWorkload"), ("code", "OK")];
    assert_eq!(
        sample(&host, "weir_grpc_requests_total", &attach_ok),
        Some(2.0)
    );
    let attach_bad = [
        ("method", "weir.v1.Control/AttachWorkload"),
        ("code", "INVALID_ARGUMENT"),
    ];
    assert_eq!(
        sample(&host, "weir_grpc_requests_total", &attach_bad),
        Some(1.0)
    );
    assert!(
        sample(
            &host,
            "weir_grpc_requests_total",
            &[("method", "weir.v1.Agent/Register")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    histogram(
        &host,
        "weir_grpc_duration_seconds",
        &[("method", "weir.v1.Control/DetachWorkload")],
        1.0,
    );

    // The runner's own endpoint: its kernel batches and reconcile passes.
    let runner = scrape(&lab, "r1", 9465);
    histogram(
        &runner,
        "weir_kernel_duration_seconds",
        &[("op", "netlink.attach"), ("outcome", "ok")],
        2.0,
    );
    histogram(
        &runner,
        "weir_kernel_duration_seconds",
        &[("op", "netlink.detach"), ("outcome", "ok")],
        1.0,
    );
    histogram(
        &runner,
        "weir_reconcile_duration_seconds",
        &[("scope", "runner-register")],
        1.0,
    );
    histogram(
        &runner,
        "weir_reconcile_duration_seconds",
        &[("scope", "runner-sync")],
        1.0,
    );
    // Metrics are served on loopback only: not from the underlay address.
    let underlay = netns::run_in(&lab.ns("lan"), || {
        TcpStream::connect_timeout(
            &SocketAddr::from(([192, 0, 2, 1], 9464)),
            std::time::Duration::from_secs(2),
        )
        .is_ok()
    })
    .unwrap();
    assert!(
        !underlay,
        "the host's metrics must not be reachable from the underlay by default"
    );
}
