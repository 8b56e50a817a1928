//! Telemetry against a real lab: traces reach an in-process OTLP collector with the parent
//! links of one attach across the Python scheduler, the host and the runner; Prometheus text
//! served inside the host's and a runner's namespace holds every documented metric.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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
    /// The attributes of the resource it came with.
    resource: BTreeMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    status: i32,
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
    /// The resources metrics came with.
    metric_resources: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let resource: BTreeMap<String, String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), text(&kv.value)))
                .collect();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                out.push(Span {
                    service: service.clone(),
                    resource: resource.clone(),
                    status: s.status.as_ref().map_or(0, |st| st.code),
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
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut out = self.metric_resources.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            out.push(
                rm.resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect(),
            );
        }
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

/// Run `f` on a runtime of its own in the namespace of lab member `member` (sockets it opens
/// live there).
fn in_ns<F, Fut, R>(lab: &Lab, member: &str, f: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R>,
    R: Send + 'static,
{
    netns::run_in(&lab.ns(member), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .unwrap()
}

/// One gRPC call to `path` with no credentials and an empty body: the code it got.
async fn raw_call(ch: &mut tonic::transport::Channel, path: &str) -> tonic::Code {
    use tower::Service;
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    std::future::poll_fn(|cx| ch.poll_ready(cx)).await.unwrap();
    let resp = ch.call(req).await.expect("an HTTP answer");
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .expect("a trailers-only answer with grpc-status");
    tonic::Code::from_i32(code)
}

/// Paths no daemon serves: made-up services, made-up methods of served services, and a
/// service of the descriptors that the host does not serve.
fn made_up_paths(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("/x{tag}{i}.Svc/M{i}"),
            1 => format!("/weir.v1.Control/Nope{tag}{i}"),
            2 => "/weir.v1.Local/Attach".to_string(),
            _ => format!("/{tag}{i}"),
        })
        .collect()
}

/// The series of a Prometheus text (name and labels, without values or comments).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

/// The distinct values of label `label` in the samples of `name`.
fn label_values(text: &str, name: &str, label: &str) -> BTreeSet<String> {
    let prefix = format!("{name}{{");
    let key = format!("{label}=\"");
    series(text)
        .into_iter()
        .filter_map(|s| {
            let rest = s.strip_prefix(&prefix)?;
            let v = rest.split(&key).nth(1)?;
            Some(v.split('"').next()?.to_string())
        })
        .collect()
}

/// The body of an HTTP answer as `scrape` returns it.
fn body(http: &str) -> &str {
    http.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn promtool() -> PathBuf {
    std::env::var_os("WEIR_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/weir/prometheus/usr/bin/promtool"))
}

/// `promtool check metrics` on a scrape: what it said when it refused the text.
fn promtool_check(text: &str) -> Result<(), String> {
    let tool = promtool();
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (scripts/bootstrap.d/promtool.sh installs it): {e}",
                tool.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_method_paths_add_no_series_and_promtool_accepts_the_metrics() {
    let mut s = spec("card");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let host_url = format!("http://{}:{}", weir::lab::HOST_IP, weir::lab::HOST_PORT);
    // Unauthenticated calls from the underlay (over TCP, rate-limited per peer: some are
    // refused with RESOURCE_EXHAUSTED before routing) and on the local socket.
    let flood = |lab: &Lab, tag: &'static str, n: usize| {
        let url = host_url.clone();
        let over_tcp = in_ns(lab, "lan", move || async move {
            let mut ch = weir::api::client::connect(&url, Default::default())
                .await
                .unwrap();
            let mut codes = BTreeSet::new();
            for p in made_up_paths(tag, n) {
                codes.insert(raw_call(&mut ch, &p).await as i32);
            }
            codes
        });
        (over_tcp, n)
    };
    let local = |lab: &Lab| lab.control_url();
    let mut unix = weir::api::client::connect(&local(&lab), Default::default())
        .await
        .unwrap();
    // A first round creates the `unknown` series of each code.
    let (codes, _) = flood(&lab, "warm", 60);
    for p in made_up_paths("warmu", 8) {
        // A made-up method of a served service is refused by its token check first.
        let code = raw_call(&mut unix, &p).await;
        assert!(
            [tonic::Code::Unimplemented, tonic::Code::Unauthenticated].contains(&code),
            "{p}: {code:?}"
        );
    }
    assert!(
        codes.contains(&(tonic::Code::Unimplemented as i32))
            && codes.contains(&(tonic::Code::ResourceExhausted as i32)),
        "the warm-up reached the router and the rate limit: {codes:?}"
    );
    let before = body(&scrape(&lab, "host", 9464)).to_string();
    let unknown = |text: &str| {
        sample(text, "weir_grpc_requests_total", &[("method", "unknown")]).unwrap_or(0.0)
    };
    let (_, n_tcp) = flood(&lab, "flood", 400);
    let n_unix = 200;
    for p in made_up_paths("floodu", n_unix) {
        assert_ne!(raw_call(&mut unix, &p).await, tonic::Code::Ok, "{p}");
    }
    let after = body(&scrape(&lab, "host", 9464)).to_string();
    assert_eq!(
        unknown(&after) - unknown(&before),
        (n_tcp + n_unix) as f64,
        "every made-up call is counted as method=\"unknown\""
    );
    let methods_before = label_values(&before, "weir_grpc_requests_total", "method");
    let methods_after = label_values(&after, "weir_grpc_requests_total", "method");
    assert_eq!(methods_after, methods_before, "no new method label values");
    assert!(methods_after.contains("unknown"));
    let new: Vec<String> = series(&after)
        .difference(&series(&before))
        .filter(|s| s.contains("method=") || s.contains("flood"))
        .cloned()
        .collect();
    assert!(new.is_empty(), "new series after the flood: {new:?}");
    assert!(!after.contains("flood") && !after.contains("Nope"));

    // The standard metrics beside Weir's own.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(
            sample(&after, name, &[]).is_some_and(|v| v > 0.0),
            "{name} in\n{after}"
        );
    }
    assert_eq!(
        sample(
            &after,
            "weir_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "target_info",
            &[
                ("service_name", "weir-host"),
                ("service_version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        Some(1.0),
        "{after}"
    );

    // Prometheus' own linter accepts both daemons' text.
    let runner = body(&scrape(&lab, "r1", 9465)).to_string();
    assert!(runner.contains("weir_kernel_duration_seconds"), "{runner}");
    assert!(
        sample(&runner, "target_info", &[("service_instance_id", "r1")]).is_some(),
        "{runner}"
    );
    for (who, text) in [("host", &after), ("runner", &runner)] {
        if let Err(e) = promtool_check(text) {
            panic!("promtool check metrics refused the {who}'s /metrics:\n{e}\n{text}");
        }
    }
}

/// A daemon's log: the lines that mention `what`.
fn log_lines(path: &Path, what: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_daemon_has_its_own_resource_and_an_unreachable_collector_is_one_warning() {
    let mut s = spec("res");
    s.runners = 2;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    // A port on the lan router where nothing listens yet: exports are refused.
    let addr = listen_in(&lab.ns("lan"), "192.0.2.254")
        .local_addr()
        .unwrap();
    lab.spec.host_extra = telemetry_section(addr);
    lab.spec.runner_extra = telemetry_section(addr);
    lab.start_host().await.unwrap_or_else(|e| panic!("{e}"));
    lab.add_runner(1).await.unwrap_or_else(|e| panic!("{e}"));
    lab.add_runner(2).await.unwrap_or_else(|e| panic!("{e}"));
    let logs: Vec<(String, PathBuf)> = std::iter::once(("host", lab.host.as_ref().unwrap()))
        .chain(
            lab.runners
                .iter()
                .map(|(i, d)| (if *i == 1 { "r1" } else { "r2" }, d)),
        )
        .map(|(n, d)| (n.to_string(), d.log.clone()))
        .collect();
    let endpoint = format!("http://{addr}");
    for (who, log) in &logs {
        assert_eq!(
            log_lines(
                log,
                &format!("exporting traces and metrics by OTLP/gRPC to {endpoint}")
            )
            .len(),
            1,
            "{who} says at start where it exports"
        );
    }
    let failed = format!("OTLP export to {endpoint} failed");
    // The first failed export may wait for the exporter's own timeout and retries (longer
    // on a loaded machine); one warning is what is asserted, not how soon.
    let start = std::time::Instant::now();
    while !logs
        .iter()
        .all(|(_, log)| !log_lines(log, &failed).is_empty())
    {
        if start.elapsed() > dur(60) {
            // Say which daemon stayed silent, and what it did log.
            let report: Vec<String> = logs
                .iter()
                .filter(|(_, log)| log_lines(log, &failed).is_empty())
                .map(|(who, log)| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("--- {who} never warned; its log ends:\n{}", tail.join("\n"))
                })
                .collect();
            panic!(
                "after 60 s, not every daemon warned that its exports fail:\n{}",
                report.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // What is tested is the passing of time: some ten export rounds (200 ms apart, traces
    // and metrics each) that fail without another line.
    tokio::time::sleep(dur(2)).await;

    // The collector comes up at that address.
    let ns = lab.ns("lan");
    let listener = netns::run_in(&ns, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let collector = Collector::default();
    collector.serve(listener);
    let again = format!("OTLP export to {endpoint} works again");
    wait_until("every daemon says its exports work again", dur(30), || {
        logs.iter()
            .all(|(_, log)| !log_lines(log, &again).is_empty())
    })
    .await;
    for (who, log) in &logs {
        assert_eq!(log_lines(log, &failed).len(), 1, "{who}: one warning");
        let errors = log_lines(log, "ERROR");
        assert!(errors.is_empty(), "{who} logged errors: {errors:?}");
        assert!(log_lines(log, "ExportError").is_empty());
    }

    // An unauthenticated call to a method nobody serves, from the underlay.
    let url = format!("http://{}:{}", weir::lab::HOST_IP, weir::lab::HOST_PORT);
    let code = in_ns(&lab, "lan", move || async move {
        let mut ch = weir::api::client::connect(&url, Default::default())
            .await
            .unwrap();
        raw_call(&mut ch, "/weir.v1.Nope/Nothing").await
    });
    assert_eq!(code, tonic::Code::Unimplemented);

    // Metrics are pushed at every interval: each daemon's resource arrives with them.
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let resource_of = |service: &str, instance: &str| {
        collector
            .metric_resources
            .lock()
            .unwrap()
            .iter()
            .find(|r| {
                r.get("service.name").map(String::as_str) == Some(service)
                    && r.get("service.instance.id").map(String::as_str) == Some(instance)
            })
            .cloned()
    };
    wait_until(
        "metrics of the host and both runners arrive, and the unknown call's span",
        dur(30),
        || {
            resource_of("weir-runner", "r1").is_some()
                && resource_of("weir-runner", "r2").is_some()
                && resource_of("weir-host", &hostname).is_some()
                && collector
                    .spans()
                    .iter()
                    .any(|s| s.service == "weir-host" && s.name == "unknown")
        },
    )
    .await;
    let (r1, r2) = (
        resource_of("weir-runner", "r1").unwrap(),
        resource_of("weir-runner", "r2").unwrap(),
    );
    assert_ne!(r1, r2, "two runners' resources differ");
    for r in [&r1, &r2, &resource_of("weir-host", &hostname).unwrap()] {
        assert_eq!(r["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["host.name"], hostname);
    }
    let spans = collector.spans();
    // Spans carry the same resource as metrics.
    let host_span = spans.iter().find(|s| s.service == "weir-host").unwrap();
    assert_eq!(host_span.resource["service.instance.id"], hostname);
    let unknown = spans
        .iter()
        .find(|s| s.service == "weir-host" && s.name == "unknown")
        .unwrap();
    assert_eq!(unknown.status, 2, "UNIMPLEMENTED is an error: {unknown:?}");
    assert_eq!(unknown.attrs["rpc.grpc.status_code"], "12");
    assert_eq!(unknown.attrs["rpc.method"], "_OTHER");
    assert_eq!(unknown.attrs["network.peer.address"], "192.0.2.254");
    assert!(unknown.attrs["network.peer.port"].parse::<u16>().unwrap() > 0);
    assert_eq!(
        unknown.attrs["server.address"],
        weir::lab::HOST_IP.to_string()
    );
    assert_eq!(
        unknown.attrs["server.port"],
        weir::lab::HOST_PORT.to_string()
    );
    // A call that worked is a server span without error.
    assert!(lab.status().is_some(), "weir status works");
    wait_until("the host's span of weir status arrives", dur(30), || {
        collector
            .spans()
            .iter()
            .any(|s| s.service == "weir-host" && s.name.starts_with("weir.v1.Control/"))
    })
    .await;
    let spans = collector.spans();
    let ok = spans
        .iter()
        .find(|s| s.service == "weir-host" && s.name.starts_with("weir.v1.Control/"))
        .unwrap();
    assert_eq!(ok.status, 0, "{ok:?}");
    assert_eq!(ok.attrs["network.transport"], "unix");
}
