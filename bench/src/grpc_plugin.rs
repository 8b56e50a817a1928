//! What a decision costs through an out-of-process gRPC plugin (`weir.v1.PolicyPlugin`): the
//! host's real client (`weir::policy::grpc::GrpcPlugin`) over a unix socket to a small Rust
//! plugin served by tonic in this process, on its own runtime. The plugin's own logic is a few
//! lines (lowest free address, same-rack peers direct), so the figures are the protocol's:
//! encoding, the socket, HTTP/2 and decoding on both sides. Part of the `policy` section.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request as GrpcRequest, Response, Status};
use weir::decision::{Decision, Request};
use weir::policy::grpc::{GrpcPlugin, encoded_len};
use weir_proto::v1 as pb;
use weir_proto::v1::policy_plugin_server::{PolicyPlugin, PolicyPluginServer};

use crate::report::Report;
use crate::stats::{Samples, fmt_dur};
use crate::table::Table;

/// The plugin: the lowest free address of the pool it is sent, and `direct` to the peers that
/// share the runner's `rack`.
struct LowestFree;

fn rack(labels: &std::collections::HashMap<String, String>) -> Option<&String> {
    labels.get("rack")
}

#[tonic::async_trait]
impl PolicyPlugin for LowestFree {
    async fn configure(
        &self,
        _: GrpcRequest<pb::ConfigureRequest>,
    ) -> Result<Response<pb::ConfigureResponse>, Status> {
        Ok(Response::new(pb::ConfigureResponse::default()))
    }

    async fn assign_runner(
        &self,
        _: GrpcRequest<pb::RunnerRequest>,
    ) -> Result<Response<pb::RunnerDecision>, Status> {
        Ok(Response::new(pb::RunnerDecision {
            decision: Some(pb::runner_decision::Decision::Builtin(true)),
        }))
    }

    async fn assign_address(
        &self,
        req: GrpcRequest<pb::AddressRequest>,
    ) -> Result<Response<pb::AddressDecision>, Status> {
        use pb::address_decision::Decision as D;
        let decision = match req.get_ref().free.first() {
            Some(r) => D::Address(std::net::Ipv4Addr::from(r.first).to_string()),
            None => D::Deny("no free address".into()),
        };
        Ok(Response::new(pb::AddressDecision {
            decision: Some(decision),
        }))
    }

    async fn rules(
        &self,
        _: GrpcRequest<pb::FirewallRequest>,
    ) -> Result<Response<pb::FirewallDecision>, Status> {
        Ok(Response::new(pb::FirewallDecision::default()))
    }

    async fn route(
        &self,
        req: GrpcRequest<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteDelta>, Status> {
        use pb::route_request::Change;
        let r = req.into_inner();
        let mine = r.runner.as_ref().and_then(|me| rack(&me.labels)).cloned();
        let path = |p: &pb::RunnerInfo| match (&mine, rack(&p.labels)) {
            (Some(a), Some(b)) if a == b => "direct",
            _ => "via-hub",
        };
        let paths = match &r.change {
            Some(Change::Peer(p)) => [(p.name.clone(), path(p).to_string())].into(),
            _ => r
                .peers
                .iter()
                .filter(|p| path(p) == "direct")
                .map(|p| (p.name.clone(), "direct".to_string()))
                .collect(),
        };
        Ok(Response::new(pb::RouteDelta {
            paths,
            egress: String::new(),
        }))
    }
}

/// A decision to time: its name, the request, and what a right answer looks like.
pub type Timed = (String, Request, fn(&Decision) -> bool);

pub struct GrpcCosts {
    n: usize,
    /// (decision, latency, request bytes)
    rows: Vec<(String, Samples, usize)>,
}

/// Time `n` calls of each request (after `n / 10` unmeasured), each first checked to answer
/// as `check` says.
pub fn measure(n: usize, requests: Vec<Timed>) -> Result<GrpcCosts> {
    // A runtime of its own: the caller may be inside one.
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("a runtime for the gRPC plugin")?;
            rt.block_on(run(n, requests))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the gRPC measurement panicked"))?
    })
}

async fn run(n: usize, requests: Vec<Timed>) -> Result<GrpcCosts> {
    let dir = std::env::temp_dir().join(format!("weir-bench-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let sock = dir.join("plugin.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("bind {}", sock.display()))?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyPluginServer::new(LowestFree))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let url = format!("unix://{}", sock.display());
    let result = async {
        let deadline = Duration::from_secs(2);
        let plugin = GrpcPlugin::connect("bench", &url, &[], deadline)
            .await
            .with_context(|| format!("connect to {url}"))?;
        let mut rows = Vec::new();
        for (name, req, check) in &requests {
            match plugin.call(req, deadline).await {
                Ok(d) if check(&d) => {}
                other => bail!("the gRPC plugin answered {other:?} to {name}"),
            }
            println!("policy: gRPC {name} ×{n} …");
            for _ in 0..n / 10 {
                let _ = plugin.call(req, deadline).await;
            }
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let _ = std::hint::black_box(plugin.call(req, deadline).await);
                samples.push(t.elapsed());
            }
            rows.push((name.clone(), Samples::new(samples), encoded_len(req)));
        }
        Ok(GrpcCosts { n, rows })
    }
    .await;
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

impl GrpcCosts {
    pub fn report(&self, r: &mut Report) {
        r.text(&format!(
            "The same decisions through a gRPC plugin (`weir.v1.PolicyPlugin`): the host's client \
             (`GrpcPlugin`, as the daemon uses it) over a unix socket to a plugin served by tonic in \
             this process on its own runtime, whose logic is a few lines (the first free range's \
             first address; same-rack peers direct), so the latency is the protocol's. Nothing is \
             asked back: the pool comes as its free ranges, a join with every peer. N = {} each.",
            self.n
        ));
        let mut t = Table::new(&["decision", "p50", "p99", "request bytes"]);
        for (name, s, bytes) in &self.rows {
            t.row([
                name.clone(),
                fmt_dur(s.median()),
                fmt_dur(s.pct(0.99)),
                bytes.to_string(),
            ]);
        }
        r.table(&t);
    }
}
