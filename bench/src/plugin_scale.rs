//! Policy decisions at cluster scale (interface 0.2): an address decision with the pool more
//! and more full, a route decision among 1,000 peer runners, fresh instances in their phases,
//! and what a gRPC plugin receives per decision. Part of the `policy` section.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use weir::decision::{
    AddressDecision, AddressRequest, Decision, Hook, PathKind, PeerIndex, PeersView, PoolView,
    Request, RouteChange, RouteRequest, RunnerInfo,
};
use weir::policy::Limits;
use weir::policy::grpc::encoded_len;
use weir::policy::wasm::{self, WasmPlugin};

use crate::env::{self, Opts};
use crate::report::Report;
use crate::stats::{Samples, dur_ratio, fmt_dur};
use crate::table::Table;

/// The runner subnet of the figures: a /18 (16,381 workload addresses).
fn subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 128, 64, 0), 18).unwrap_or_default()
}

/// How full the pool is.
#[derive(Clone, Copy)]
enum Fill {
    /// The lowest `n` addresses held.
    Lowest(usize),
    /// Every address held but the last one.
    AllButOne,
    /// Every other address held (the most fragmented pool: one free range per two addresses).
    EveryOther,
}

impl Fill {
    fn label(self, r: &AddressRequest) -> String {
        // The host's `.254` is never free but is no workload's.
        let held = held_count(r) - 1;
        match self {
            Fill::Lowest(_) => format!("{held}"),
            Fill::AllButOne => format!("all but one ({held})"),
            Fill::EveryOther => format!("every other ({held})"),
        }
    }

    fn request(self) -> AddressRequest {
        let base = AddressRequest::on_subnet("r1", "w", subnet(), &[]);
        let (first, last) = (u32::from(base.first), u32::from(base.last));
        let host_side = u32::from(base.subnet.network()) + 254;
        let range = (first..=last).filter(|a| *a != host_side);
        let held: Vec<Ipv4Addr> = match self {
            Fill::Lowest(n) => range.take(n).map(Ipv4Addr::from).collect(),
            Fill::AllButOne => range.filter(|a| *a != last).map(Ipv4Addr::from).collect(),
            Fill::EveryOther => range.step_by(2).map(Ipv4Addr::from).collect(),
        };
        let mut r = AddressRequest::on_subnet("r1", "w", subnet(), &held);
        // A pool the hub has changed once per held address.
        r.pool = PoolView::new(Arc::new(r.pool.free().clone()), held.len() as u64);
        r
    }
}

/// Addresses of the request's range that are not free (held, plus the host's `.254`).
fn held_count(r: &AddressRequest) -> u64 {
    u64::from(u32::from(r.last) - u32::from(r.first)) + 1 - r.pool.free().count()
}

const FILLS: [Fill; 5] = [
    Fill::Lowest(3),
    Fill::Lowest(1_000),
    Fill::Lowest(10_000),
    Fill::AllButOne,
    Fill::EveryOther,
];

pub struct Scale {
    n: usize,
    py_n: usize,
    fresh_n: usize,
    /// (fill, Rust warm, Python warm, gRPC request bytes)
    address: Vec<(String, Samples, Option<Samples>, usize)>,
    python_missing: Option<String>,
    route_peer: Samples,
    route_joined: Samples,
    route_matches: usize,
    /// A join whose rack no peer shares: what a join costs among 1,000 peers when it names none.
    route_joined_alone: Samples,
    route_bytes: (usize, usize, usize),
    /// (plugin, instantiate+decide, instantiate, decide, configure)
    fresh: Vec<(&'static str, Samples, Samples, Samples, Samples)>,
    grpc: crate::grpc_plugin::GrpcCosts,
}

fn load(
    path: &Path,
    hook: Hook,
    config: Vec<(String, String)>,
    limits: Limits,
) -> Result<WasmPlugin> {
    let compiled =
        wasm::compile(path, None).with_context(|| format!("compile {}", path.display()))?;
    WasmPlugin::new("bench", path, &compiled, hook, limits, config)
        .with_context(|| format!("load {}", path.display()))
}

/// Time `f` `n` times after a warm-up, one sample per call.
fn time_each(n: usize, mut f: impl FnMut()) -> Samples {
    for _ in 0..(n / 100).clamp(10, 1_000) {
        f();
    }
    Samples::new(
        (0..n)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn python_plugin() -> std::result::Result<std::path::PathBuf, String> {
    let p = env::repo_root().join("target/python-plugins/required_label.wasm");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing (./scripts/test.sh builds it with componentize-py)",
            p.display()
        ))
    }
}

pub fn measure(opts: Opts) -> Result<Scale> {
    let n = opts.n(100_000, 5_000);
    let py_n = opts.n(5_000, 300);
    let fresh_n = opts.n(3_000, 200);

    let alloc = load(
        &env::plugin("default_allocator")?,
        Hook::Allocator,
        vec![],
        Limits::default(),
    )?;
    let python = python_plugin().and_then(|p| {
        let limits = Limits {
            memory: 128 << 20,
            deadline: Duration::from_secs(2),
            ..Limits::default()
        };
        load(&p, Hook::Allocator, vec![], limits).map_err(|e| format!("{e:#}"))
    });
    // Warm the allocator (code, caches, the CPU's clock) before the first row is timed, so
    // that row measures the pool and not the start.
    let warm_req = Request::AssignAddress(Fill::Lowest(3).request());
    for _ in 0..n {
        black_box(alloc.call(black_box(&warm_req)).ok());
    }
    let mut address = Vec::new();
    for fill in FILLS {
        let r = fill.request();
        let want = r
            .pool
            .free()
            .next_free(u32::from(r.first))
            .map(Ipv4Addr::from);
        let req = Request::AssignAddress(r.clone());
        let check = |p: &WasmPlugin, who: &str| -> Result<()> {
            match p.call(&req) {
                Ok(Decision::Address(AddressDecision::Address(a))) if Some(a) == want => Ok(()),
                other => bail!(
                    "{who} should pick {want:?} at fill {}, answered {other:?}",
                    fill.label(&r)
                ),
            }
        };
        check(&alloc, "default_allocator")?;
        println!("policy: assign-address, {} held ×{n} …", fill.label(&r));
        let rust = time_each(n, || {
            black_box(alloc.call(black_box(&req)).ok());
        });
        let py = match &python {
            Ok(p) => {
                check(p, "the Python component")?;
                Some(time_each(py_n, || {
                    black_box(p.call(black_box(&req)).ok());
                }))
            }
            Err(_) => None,
        };
        address.push((fill.label(&r), rust, py, encoded_len(&req)));
    }

    // 1,000 peer runners in 10 racks; the deciding runner is in rack 3.
    let runner = |i: u32| RunnerInfo {
        name: format!("runner-{i:04}"),
        id: i,
        labels: [("rack".to_string(), format!("rack-{}", i % 10))].into(),
        physical_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 0, 2, 0)) + i),
    };
    let index = Arc::new(PeerIndex::new((1..=1_001).map(runner)));
    let me = runner(3);
    let route_of = |me: &RunnerInfo, change| {
        Request::Route(RouteRequest {
            network: "default".into(),
            runner: me.clone(),
            change,
            peers: PeersView::new(index.clone(), &me.name),
        })
    };
    let route = |change| route_of(&me, change);
    let alone = RunnerInfo {
        name: "runner-alone".into(),
        labels: [("rack".to_string(), "rack-alone".to_string())].into(),
        ..runner(2_000)
    };
    let joined_alone_req = route_of(&alone, RouteChange::Joined);
    let router = load(
        &env::plugin("direct_routes")?,
        Hook::Router,
        vec![],
        Limits::default(),
    )?;
    let peer_req = route(RouteChange::Peer(runner(13)));
    let joined_req = route(RouteChange::Joined);
    match router.call(&peer_req) {
        Ok(Decision::Route(d)) if d.paths == [("runner-0013".to_string(), PathKind::Direct)] => {}
        other => bail!("direct_routes should route runner-0013 directly, answered {other:?}"),
    }
    let route_matches = match router.call(&joined_req) {
        Ok(Decision::Route(d)) if d.paths.iter().all(|(_, p)| *p == PathKind::Direct) => {
            d.paths.len()
        }
        other => bail!("direct_routes answered {other:?} to a join"),
    };
    println!("policy: route among 1,000 peers ×{n} …");
    let route_peer = time_each(n, || {
        black_box(router.call(black_box(&peer_req)).ok());
    });
    let route_joined = time_each(n / 10, || {
        black_box(router.call(black_box(&joined_req)).ok());
    });
    match router.call(&joined_alone_req) {
        Ok(Decision::Route(d)) if d.paths.is_empty() => {}
        other => bail!("direct_routes should name no path for a rack of one, answered {other:?}"),
    }
    let route_joined_alone = time_each(n, || {
        black_box(router.call(black_box(&joined_alone_req)).ok());
    });
    let route_bytes = (
        encoded_len(&peer_req),
        encoded_len(&joined_req),
        encoded_len(&joined_alone_req),
    );

    let address_chosen: fn(&Decision) -> bool =
        |d| matches!(d, Decision::Address(AddressDecision::Address(_)));
    let mut grpc_requests: Vec<crate::grpc_plugin::Timed> =
        [Fill::Lowest(3), Fill::Lowest(10_000), Fill::EveryOther]
            .into_iter()
            .map(|fill| {
                let r = fill.request();
                (
                    format!("assign-address, {} held", fill.label(&r)),
                    Request::AssignAddress(r),
                    address_chosen,
                )
            })
            .collect();
    grpc_requests.extend::<[crate::grpc_plugin::Timed; 2]>([
        (
            "route, a peer joined (one path)".to_string(),
            peer_req.clone(),
            |d: &Decision| matches!(d, Decision::Route(r) if r.paths.len() == 1),
        ),
        (
            format!("route, this runner joined among 1,000 peers ({route_matches} direct paths)"),
            joined_req.clone(),
            |d: &Decision| matches!(d, Decision::Route(r) if !r.paths.is_empty()),
        ),
    ]);
    let grpc = crate::grpc_plugin::measure(opts.n(2_000, 100), grpc_requests)
        .context("the gRPC plugin")?;

    println!("policy: fresh instances ×{fresh_n} …");
    let mut fresh = Vec::new();
    let admission_cfg = vec![(
        "allowed_cidrs".to_string(),
        "10.0.0.0/8,172.16.0.0/12,192.0.2.0/24".to_string(),
    )];
    let addr_req = Request::AssignAddress(Fill::Lowest(3).request());
    for (name, crate_name, config, req) in [
        (
            "default-allocator assign-address",
            "default_allocator",
            vec![],
            addr_req.clone(),
        ),
        (
            "underlay-admission assign-address",
            "underlay_admission",
            admission_cfg,
            addr_req,
        ),
        (
            "direct-routes route (peer)",
            "direct_routes",
            vec![],
            peer_req.clone(),
        ),
    ] {
        let path = env::plugin(crate_name)?;
        let hook = req.hook();
        let p = load(&path, hook, config, Limits::default())?;
        let (mut total, mut inst, mut decide, mut conf) = (vec![], vec![], vec![], vec![]);
        for i in 0..fresh_n + 20 {
            let t = p
                .time_fresh(&req)
                .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
            if i >= 20 {
                total.push(t.instantiate + t.decide);
                inst.push(t.instantiate);
                decide.push(t.decide);
                conf.push(t.configure);
            }
        }
        fresh.push((
            name,
            Samples::new(total),
            Samples::new(inst),
            Samples::new(decide),
            Samples::new(conf),
        ));
    }

    Ok(Scale {
        n,
        py_n,
        fresh_n,
        address,
        python_missing: python.err(),
        route_peer,
        route_joined,
        route_matches,
        route_joined_alone,
        route_bytes,
        fresh,
        grpc,
    })
}

impl Scale {
    pub fn report(&self, r: &mut Report) {
        r.text(&format!(
            "`assign-address` with the runner's /18 pool more and more full (interface 0.2: the pool is a \
             host resource the plugin queries, not a list in the request). Rust: `default-allocator` \
             (one `next-free` query), N = {}; Python: `examples/python-wasm-plugin` built with \
             componentize-py (the same query from Python), N = {}. Both are first checked to pick the lowest \
             free address. \"gRPC bytes\": the size of the same request as `weir.v1.AddressRequest` (the pool \
             as its free ranges, 12 bytes each on the wire). Targets: Rust warm p50 ≤ 1.5 µs, p99 ≤ 5 µs, last/first ≤ 1.3×.",
            self.n, self.py_n
        ));
        let first = self
            .address
            .first()
            .map(|a| a.1.median())
            .unwrap_or_default();
        let mut t = Table::new(&[
            "addresses held",
            "Rust warm p50",
            "Rust warm p99",
            "p50 / first row",
            "Python warm p50",
            "Python warm p99",
            "gRPC bytes",
        ]);
        for (fill, rust, py, bytes) in &self.address {
            t.row([
                fill.clone(),
                fmt_dur(rust.median()),
                fmt_dur(rust.pct(0.99)),
                dur_ratio(rust.median(), first),
                py.as_ref().map_or("-".into(), |s| fmt_dur(s.median())),
                py.as_ref().map_or("-".into(), |s| fmt_dur(s.pct(0.99))),
                bytes.to_string(),
            ]);
        }
        r.table(&t);
        if let Some(why) = &self.python_missing {
            r.text(&format!("Python component not measured: {why}."));
        }
        r.text(&format!(
            "`direct-routes` `route` among 1,000 peer runners in 10 racks (100 share the deciding runner's \
             rack). A peer joining or changing is one decision per runner naming that peer alone (the answer \
             is the one path that changes); a runner joining is one decision that asks the host's peer set \
             for its rack (`names-with-label`: {} names come back and are named `direct`). N = {} and {}. \"gRPC \
             bytes\": the same request as `weir.v1.RouteRequest` (a join lists every peer; a change names \
             one). Target: ≤ 10 µs p50 for the peer decision. A join costs what it names: the last row is a \
             join among the same 1,000 peers whose rack no peer shares.",
            self.route_matches,
            self.n,
            self.n / 10
        ));
        let mut t = Table::new(&["decision", "p50", "p99", "p50 / 10 µs target", "gRPC bytes"]);
        let target = Duration::from_micros(10);
        t.row([
            "a peer joined (one path)".to_string(),
            fmt_dur(self.route_peer.median()),
            fmt_dur(self.route_peer.pct(0.99)),
            dur_ratio(self.route_peer.median(), target),
            self.route_bytes.0.to_string(),
        ]);
        t.row([
            format!("this runner joined ({} direct paths)", self.route_matches),
            fmt_dur(self.route_joined.median()),
            fmt_dur(self.route_joined.pct(0.99)),
            dur_ratio(self.route_joined.median(), target),
            self.route_bytes.1.to_string(),
        ]);
        t.row([
            "a runner joined, no peer in its rack (no path)".to_string(),
            fmt_dur(self.route_joined_alone.median()),
            fmt_dur(self.route_joined_alone.pct(0.99)),
            dur_ratio(self.route_joined_alone.median(), target),
            self.route_bytes.2.to_string(),
        ]);
        r.table(&t);
        r.text(&format!(
            "Fresh instances (what the host pays after a trap, and for a reload's first decision): \
             `WasmPlugin::time_fresh`, a new store from the `InstancePre` on wasmtime's pooling allocator, \
             then the decision; `configure` is timed apart and not in \"fresh\". N = {} each (after 20 \
             unmeasured). Target: fresh p50 ≤ 10 µs.",
            self.fresh_n
        ));
        let mut t = Table::new(&[
            "plugin, call",
            "fresh p50",
            "fresh p99",
            "instantiate p50",
            "decide p50",
            "configure p50",
        ]);
        for (name, total, inst, decide, conf) in &self.fresh {
            t.row([
                name.to_string(),
                fmt_dur(total.median()),
                fmt_dur(total.pct(0.99)),
                fmt_dur(inst.median()),
                fmt_dur(decide.median()),
                fmt_dur(conf.median()),
            ]);
        }
        r.table(&t);
        self.grpc.report(r);
    }
}
