//! One policy decision, four ways, same rule: the underlay admission rule ("is the runner's
//! physical IP inside one of these CIDRs?") as (a) the WebAssembly plugin on a warm instance,
//! (b) the same plugin on a fresh instance per call, (c) plain Rust, (d) Rego through `regorus`,
//! interpreted (`eval_rule`) and, as row (e), compiled to `regorus`'s bytecode VM (RVM).
//! Plus the decisions at cluster scale (`plugin_scale`): assign-address with the pool filling up, a route among 1,000 peers, fresh instances, gRPC request sizes.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use weir::decision::{Decision, Hook, PlanInfo, Request, RunnerDecision, RunnerRequest, TakenId};
use weir::policy::Limits;
use weir::policy::wasm::{self, WasmPlugin};

use crate::env::{self, Opts};
use crate::report::{Report, RunInfo};
use crate::stats::{Samples, dur_ratio, fmt_dur};
use crate::table::Table;

pub const TITLE: &str = "Policy decisions: one rule, four ways";

/// The allowed underlay; the admitted address is in the last CIDR, so every way checks all three.
const ALLOWED: &str = "10.0.0.0/8,172.16.0.0/12,192.0.2.0/24";
const ADMITTED_IP: &str = "192.0.2.15";
const DENIED_IP: &str = "198.51.100.7";

/// The same rule in Rego (v1 syntax).
const REGO: &str = r#"
package weir.admission

default allow := false

allow if {
    some cidr in data.allowed_cidrs
    net.cidr_contains(cidr, input.physical_ip)
}
"#;
const REGO_RULE: &str = "data.weir.admission.allow";

/// Calls per timed batch for the native check (a single call is shorter than the clock's own
/// overhead, so each sample is a batch's time divided by its size).
const NATIVE_BATCH: u32 = 100;

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    tokio::task::spawn_blocking(move || measure(opts))
        .await
        .context("policy benchmark thread")?
        .map(|m| m.report(opts, run))
}

struct Measured {
    n: usize,
    fresh_n: usize,
    wasm_warm: Samples,
    wasm_fresh: Samples,
    native: Samples,
    rego: Samples,
    rego_vm: Samples,
    scale: crate::plugin_scale::Scale,
}

fn measure(opts: Opts) -> Result<Measured> {
    let n = opts.n(100_000, 5_000);
    let fresh_n = opts.n(2_000, 200);
    let req = runner_request(ADMITTED_IP);
    let denied = runner_request(DENIED_IP);

    let admission_path = env::plugin("underlay_admission")?;
    let config = vec![("allowed_cidrs".to_string(), ALLOWED.to_string())];
    let compiled = wasm::compile(&admission_path, None)
        .with_context(|| format!("compile {}", admission_path.display()))?;
    let load = || {
        WasmPlugin::new(
            "admission",
            &admission_path,
            &compiled,
            Hook::Allocator,
            Limits::default(),
            config.clone(),
        )
        .context("load underlay_admission")
    };
    let plugin = load()?;
    let native = Native::new(ALLOWED)?;
    let mut rego = Rego::new(ALLOWED)?;
    let mut rego_vm = RegoVm::new(ALLOWED)?;

    // The ways agree, on an admitted and on a denied runner.
    for (r, want) in [(&req, true), (&denied, false)] {
        let got_wasm = match plugin.call(&Request::AssignRunner(r.clone())) {
            Ok(Decision::Runner(RunnerDecision::Builtin)) => true,
            Ok(Decision::Runner(RunnerDecision::Deny(_))) => false,
            other => bail!("underlay_admission answered {other:?}"),
        };
        let got = [got_wasm, native.admit(r), rego.admit(r)?, rego_vm.admit(r)?];
        if got != [want; 4] {
            bail!(
                "the ways disagree on {}: wasm, native, rego, rego vm = {got:?}, expected {want}",
                r.physical_ip
            );
        }
    }

    println!("policy: WASM warm ×{n} …");
    let request = Request::AssignRunner(req.clone());
    let wasm_warm = time_each(n, || {
        black_box(plugin.call(black_box(&request)).ok());
    });
    println!("policy: WASM fresh instance ×{fresh_n} …");
    let mut wasm_fresh = Vec::with_capacity(fresh_n);
    for _ in 0..fresh_n {
        let p = load()?;
        p.drain_warm();
        let started = Instant::now();
        black_box(p.call(black_box(&request)).ok());
        wasm_fresh.push(started.elapsed());
    }
    println!("policy: native ×{n} …");
    let batches = (n as u32 / NATIVE_BATCH).max(1) as usize;
    let native_samples = time_each(batches, || {
        for _ in 0..NATIVE_BATCH {
            black_box(native.admit(black_box(&req)));
        }
    })
    .into_iter()
    .map(|d| d / NATIVE_BATCH)
    .collect();
    println!("policy: Rego ×{n} …");
    let mut rego_samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        black_box(rego.admit(black_box(&req))?);
        rego_samples.push(started.elapsed());
    }
    // Timed exactly as (d), so the two rows differ only in regorus's engine.
    println!("policy: Rego, compiled (RVM) ×{n} …");
    let mut rego_vm_samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        black_box(rego_vm.admit(black_box(&req))?);
        rego_vm_samples.push(started.elapsed());
    }

    let scale = crate::plugin_scale::measure(opts)?;

    Ok(Measured {
        n,
        fresh_n,
        wasm_warm: Samples::new(wasm_warm),
        wasm_fresh: Samples::new(wasm_fresh),
        native: Samples::new(native_samples),
        rego: Samples::new(rego_samples),
        rego_vm: Samples::new(rego_vm_samples),
        scale,
    })
}

impl Measured {
    fn report(&self, opts: Opts, run: &RunInfo) -> Report {
        let mut r = Report::new("policy", TITLE, opts, run);
        r.text(&format!(
            "The underlay admission rule — admit a runner whose physical IP lies in one of `{ALLOWED}` — \
             decided for a runner at `{ADMITTED_IP}` (inside the last CIDR, so every way scans the whole list), \
             in this process, single-threaded. The ways are first checked to agree on an admitted and a \
             denied address. (a) `plugins/underlay-admission` (`underlay_admission.wasm`) through \
             `weir::policy::wasm` on a warm instance (deadline and memory cap armed, as in the daemon); \
             (b) the same on a fresh instance per call (a new store from the `InstancePre` plus the plugin's \
             `configure`, the cost the host pays after a trap); (c) the same check in plain Rust (`ipnet`, CIDRs \
             parsed once, the IP arrives as a number; each sample is a batch of {NATIVE_BATCH} calls divided by \
             {NATIVE_BATCH}, since one call is shorter than the clock's overhead); (d) the rule in Rego, \
             evaluated by `regorus` 0.14 (`net.cidr_contains` over `data.allowed_cidrs`, input set per call, \
             `eval_rule`); (e) the same policy and data compiled once to `regorus`'s bytecode VM \
             (`Engine::compile_with_entrypoint`, then `Compiler::compile_from_policy`; one `RegoVM` reused, \
             `set_input` and `execute` per call, timed as (d)). N = {} ({} for fresh instances).",
            self.n, self.fresh_n
        ));
        let native = &self.native;
        let mut t = Table::new(&["way", "p50", "p99", "p50 / native", "p99 / native"]);
        for (way, s) in [
            ("(a) WASM, warm instance", &self.wasm_warm),
            ("(b) WASM, fresh instance per call", &self.wasm_fresh),
            ("(c) native Rust", native),
            ("(d) Rego (regorus)", &self.rego),
            ("(e) Rego (regorus, compiled to its VM)", &self.rego_vm),
        ] {
            t.row([
                way.to_string(),
                fmt_dur(s.median()),
                fmt_dur(s.pct(0.99)),
                dur_ratio(s.median(), native.median()),
                dur_ratio(s.pct(0.99), native.pct(0.99)),
            ]);
        }
        r.table(&t);
        self.scale.report(&mut r);
        r
    }
}

/// Time `f` `n` times, one sample per call.
fn time_each(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    // Warm caches and branch predictors first.
    for _ in 0..(n / 100).clamp(10, 1_000) {
        f();
    }
    (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect()
}

fn runner_request(physical_ip: &str) -> RunnerRequest {
    let taken = |id: u32, ip: &str| TakenId {
        id,
        runner: Some(format!("r{id}")),
        physical_ip: ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        last_seen_ms: 1,
        active: true,
    };
    RunnerRequest {
        network: "default".into(),
        name: "r5".into(),
        physical_ip: physical_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        labels: Default::default(),
        taken: vec![taken(1, "192.0.2.11"), taken(2, "192.0.2.12")],
        plan: PlanInfo {
            spec: "10.128.0.0/12/6/14".into(),
            overlay: Ipv4Net::new(Ipv4Addr::new(10, 128, 0, 0), 12).unwrap_or_default(),
            max_runners: 63,
        },
    }
}

/// The rule in plain Rust, as a built-in policy would have it.
struct Native {
    allowed: Vec<Ipv4Net>,
}

impl Native {
    fn new(list: &str) -> Result<Self> {
        let allowed = list
            .split(',')
            .map(|c| c.trim().parse().with_context(|| format!("CIDR {c:?}")))
            .collect::<Result<_>>()?;
        Ok(Self { allowed })
    }

    fn admit(&self, req: &RunnerRequest) -> bool {
        self.allowed.iter().any(|c| c.contains(&req.physical_ip))
    }
}

/// An engine holding the Rego policy, parsed.
fn rego_engine() -> Result<regorus::Engine> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("admission.rego".into(), REGO.into())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("parse the Rego policy")?;
    Ok(engine)
}

/// `data.allowed_cidrs` for the Rego rule, built once (both Rego ways get the same document).
fn rego_data(list: &str) -> Result<regorus::Value> {
    let cidrs: Vec<&str> = list.split(',').map(str::trim).collect();
    let data = serde_json::json!({ "allowed_cidrs": cidrs }).to_string();
    regorus::Value::from_json_str(&data)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("build the Rego data")
}

/// The Rego input for one request, built per call (part of what both Rego ways pay per decision);
/// the IP goes in as text, the form `net.cidr_contains` takes.
fn rego_input(req: &RunnerRequest) -> Result<regorus::Value> {
    let mut input = regorus::Value::new_object();
    input
        .as_object_mut()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .insert("physical_ip".into(), req.physical_ip.to_string().into());
    Ok(input)
}

/// The rule's answer as a boolean (`default allow := false` makes it always defined).
fn rego_bool(v: &regorus::Value) -> Result<bool> {
    v.as_bool()
        .copied()
        .map_err(|e| anyhow::anyhow!("{REGO_RULE} is not a boolean: {e}"))
}

/// The rule in Rego, on one prepared engine.
struct Rego {
    engine: regorus::Engine,
}

impl Rego {
    fn new(list: &str) -> Result<Self> {
        let mut engine = rego_engine()?;
        engine
            .add_data(rego_data(list)?)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("add the Rego data")?;
        Ok(Self { engine })
    }

    fn admit(&mut self, req: &RunnerRequest) -> Result<bool> {
        self.engine.set_input(rego_input(req)?);
        let v = self
            .engine
            .eval_rule(REGO_RULE.into())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("evaluate the Rego rule")?;
        rego_bool(&v)
    }
}

/// The same rule compiled once to `regorus`'s bytecode VM (RVM), on one reused VM: what a host
/// that keeps Rego but skips re-walking the policy's syntax tree per decision would pay.
struct RegoVm {
    vm: regorus::rvm::vm::RegoVM,
}

impl RegoVm {
    fn new(list: &str) -> Result<Self> {
        let compiled = rego_engine()?
            .compile_with_entrypoint(&REGO_RULE.into())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("compile the Rego policy")?;
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &[REGO_RULE],
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("compile the Rego policy to RVM bytecode")?;
        let mut vm = regorus::rvm::vm::RegoVM::new();
        vm.load_program(program);
        vm.set_data(rego_data(list)?)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("set the RVM data")?;
        Ok(Self { vm })
    }

    fn admit(&mut self, req: &RunnerRequest) -> Result<bool> {
        self.vm.set_input(rego_input(req)?);
        let v = self
            .vm
            .execute()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("execute the Rego rule on the RVM")?;
        rego_bool(&v)
    }
}
