//! `weir plugin …` (the plugin developer's loop and the host's plugin list) and
//! `weir decisions` (the decision log).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;
use weir_proto::v1 as pb;

use super::conn::{Conn, client, refused};
use super::{CliError, parse_key_value};
use crate::decision::{Hook, Request};
use crate::policy::wasm::{self, WasmPlugin};
use crate::policy::{Limits, audit};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Which worlds a component implements, what it imports, how long it takes to compile.
    Check {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Run one decision and print it as JSON, with its latency.
    Eval(EvalArgs),
    /// Time warm decisions (p50, p99) and fresh-instance ones; use a release build.
    Bench(BenchArgs),
    /// The host's plugins: name, hooks, version, mode, load time, decisions, faults.
    List,
    /// Make the host load every plugin file again (a broken version never replaces a working one).
    Reload,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The component (.wasm).
    pub file: PathBuf,
    /// allocator, firewall or router.
    #[arg(long)]
    pub hook: String,
    /// The request as JSON (see docs/plugins.md); `-` reads stdin.
    #[arg(long, value_name = "FILE.json")]
    pub input: PathBuf,
    /// A plugin setting KEY=VALUE for its `configure` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub config: Vec<(String, String)>,
    /// Wall-clock limit of the decision.
    #[arg(long, default_value = "50ms")]
    pub deadline: crate::config::Duration,
    /// Memory cap of the instance.
    #[arg(long, default_value = "16MiB")]
    pub memory: crate::config::ByteSize,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Number of decisions.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub n: u32,
}

/// Why a `--input` file is not a request for the hook.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("{0}")]
    Shape(#[source] serde_json::Error),
    #[error("a {call} request is not for the {hook} hook")]
    WrongHook { call: &'static str, hook: Hook },
}

pub fn run(cmd: PluginCommand, conn: Conn, config: Option<&Path>) -> Result<(), CliError> {
    match cmd {
        PluginCommand::Check { file } => check(&file, conn.json),
        PluginCommand::Eval(a) => eval(&a, conn.json),
        PluginCommand::Bench(a) => bench(&a, conn.json),
        PluginCommand::List => remote(conn, config, false),
        PluginCommand::Reload => remote(conn, config, true),
    }
}

fn check(file: &Path, json: bool) -> Result<(), CliError> {
    let c = wasm::compile(file, None).map_err(|e| CliError::Failed(e.to_string()))?;
    if json {
        println!(
            "{}",
            json!({"file": file.display().to_string(), "version": c.version,
                   "interface": format!("weir:policy@{}", wasm::PACKAGE_VERSION),
                   "worlds": c.hooks.iter().map(|h| format!("{h}-plugin")).collect::<Vec<_>>(),
                   "imports": c.imports, "exports": c.exports,
                   "compile_ms": c.compile_time.as_secs_f64() * 1e3})
        );
    } else {
        println!(
            "{}: a weir:policy component, version {}",
            file.display(),
            c.version
        );
        println!("interface weir:policy@{}", wasm::PACKAGE_VERSION);
        println!(
            "worlds    {}",
            c.hooks
                .iter()
                .map(|h| format!("{h}-plugin"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("exports   {}", c.exports.join(", "));
        println!("imports   {}", c.imports.join(", "));
        println!("compiled  in {:.1} ms", c.compile_time.as_secs_f64() * 1e3);
    }
    Ok(())
}

fn load(a: &EvalArgs) -> Result<(WasmPlugin, Request), CliError> {
    let hook = Hook::parse(&a.hook).ok_or_else(|| {
        CliError::Usage(format!(
            "--hook {:?}: allowed: allocator, firewall, router",
            a.hook
        ))
    })?;
    let text = if a.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Usage(format!("--input -: {e}")))?
    } else {
        std::fs::read_to_string(&a.input)
            .map_err(|e| CliError::Usage(format!("--input {}: {e}", a.input.display())))?
    };
    let request = parse_request(hook, &text)
        .map_err(|e| CliError::Usage(format!("--input {}: {e}", a.input.display())))?;
    let compiled = wasm::compile(&a.file, None).map_err(|e| CliError::Failed(e.to_string()))?;
    let limits = Limits {
        deadline: a.deadline.get(),
        memory: a.memory.0,
        ..Limits::default()
    };
    let plugin = WasmPlugin::new("cli", &a.file, &compiled, hook, limits, a.config.clone())
        .map_err(|e| CliError::Failed(e.to_string()))?;
    Ok((plugin, request))
}

/// A request for `hook`: either tagged with `"call"`, or the bare request of the hook (an
/// allocator request with a `workload_id` is `assign-address`, otherwise `assign-runner`).
pub fn parse_request(hook: Hook, text: &str) -> Result<Request, RequestError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(RequestError::NotJson)?;
    let req = if value.get("call").is_some() {
        serde_json::from_value::<Request>(value).map_err(RequestError::Shape)?
    } else {
        let tagged = |call: &str| {
            let mut v = value.clone();
            v["call"] = json!(call);
            serde_json::from_value::<Request>(v).map_err(RequestError::Shape)
        };
        match hook {
            Hook::Allocator if value.get("workload_id").is_some() => tagged("assign-address")?,
            Hook::Allocator => tagged("assign-runner")?,
            Hook::Firewall => tagged("rules")?,
            Hook::Router => tagged("route")?,
        }
    };
    if req.hook() != hook {
        return Err(RequestError::WrongHook {
            call: req.call_name(),
            hook,
        });
    }
    Ok(req)
}

fn eval(a: &EvalArgs, _json: bool) -> Result<(), CliError> {
    let (plugin, request) = load(a)?;
    let started = Instant::now();
    let outcome = plugin.call(&request);
    let latency = started.elapsed();
    let outcome = outcome.and_then(|d| crate::policy::validate(&request, d, plugin_limits(a)));
    let v = match &outcome {
        Ok(d) => json!({"plugin": a.file.display().to_string(), "version": plugin.version,
                        "call": request.call_name(), "decision": d, "latency_us": latency.as_micros() as u64}),
        Err(f) => json!({"plugin": a.file.display().to_string(), "version": plugin.version,
                         "call": request.call_name(), "fault": f.to_string(), "cause": f.cause(),
                         "latency_us": latency.as_micros() as u64}),
    };
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    outcome
        .map(|_| ())
        .map_err(|f| CliError::Failed(format!("the plugin faulted: {f}")))
}

fn plugin_limits(a: &EvalArgs) -> Limits {
    Limits {
        deadline: a.deadline.get(),
        memory: a.memory.0,
        ..Limits::default()
    }
}

/// Percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(b: &BenchArgs, json: bool) -> Result<(), CliError> {
    let (plugin, request) = load(&b.eval)?;
    // One call to warm up (and to fail fast on a faulty plugin).
    plugin
        .call(&request)
        .map_err(|f| CliError::Failed(format!("the plugin faulted: {f}")))?;
    let n = b.n.max(1) as usize;
    let mut warm = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = plugin.call(&request);
        warm.push(t.elapsed());
        r.map_err(|f| CliError::Failed(format!("the plugin faulted: {f}")))?;
    }
    warm.sort();
    // Fresh instances: a new plugin value (so no warm instance) per call, fewer of them.
    let fresh_n = (n / 20).clamp(10, 500);
    let compiled =
        wasm::compile(&b.eval.file, None).map_err(|e| CliError::Failed(e.to_string()))?;
    let hook = request.hook();
    // Each fresh decision is timed in its phases: making the instance, `configure`, the
    // decision. "fresh" is the instance and the decision (what a call after a trap costs
    // beyond the plugin's own configure); configure is reported apart.
    let (mut fresh, mut configure) = (Vec::with_capacity(fresh_n), Vec::with_capacity(fresh_n));
    for _ in 0..fresh_n {
        let p = WasmPlugin::new(
            "bench",
            &b.eval.file,
            &compiled,
            hook,
            plugin_limits(&b.eval),
            b.eval.config.clone(),
        )
        .map_err(|e| CliError::Failed(e.to_string()))?;
        let t = p
            .time_fresh(&request)
            .map_err(|f| CliError::Failed(format!("the plugin faulted: {f}")))?;
        fresh.push(t.instantiate + t.decide);
        configure.push(t.configure);
    }
    fresh.sort();
    configure.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if json {
        println!(
            "{}",
            json!({"plugin": b.eval.file.display().to_string(), "call": request.call_name(), "n": n,
                   "warm_p50_us": us(pct(&warm, 0.5)), "warm_p99_us": us(pct(&warm, 0.99)),
                   "fresh_n": fresh_n, "fresh_p50_us": us(pct(&fresh, 0.5)), "fresh_p99_us": us(pct(&fresh, 0.99)),
                   "configure_p50_us": us(pct(&configure, 0.5)), "configure_p99_us": us(pct(&configure, 0.99)),
                   "release_build": !cfg!(debug_assertions)})
        );
    } else {
        println!(
            "{} {} ({})",
            b.eval.file.display(),
            request.call_name(),
            if cfg!(debug_assertions) {
                "debug build: use a release build for figures"
            } else {
                "release build"
            }
        );
        println!(
            "warm instance   n={n:<6} p50 {:>9.2} µs   p99 {:>9.2} µs",
            us(pct(&warm, 0.5)),
            us(pct(&warm, 0.99))
        );
        println!(
            "fresh instance  n={fresh_n:<6} p50 {:>9.2} µs   p99 {:>9.2} µs   (configure excluded)",
            us(pct(&fresh, 0.5)),
            us(pct(&fresh, 0.99))
        );
        println!(
            "configure       n={fresh_n:<6} p50 {:>9.2} µs   p99 {:>9.2} µs",
            us(pct(&configure, 0.5)),
            us(pct(&configure, 0.99))
        );
    }
    Ok(())
}

fn remote(conn: Conn, config: Option<&Path>, reload: bool) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    rt.block_on(async {
        let mut c = client(&conn, config).await?;
        if reload {
            let r = c.reload_plugins(pb::ReloadPluginsRequest {}).await.map_err(refused)?.into_inner();
            let failed = r.plugins.iter().any(|p| p.result == "failed");
            if conn.json {
                let v: Vec<_> = r
                    .plugins
                    .iter()
                    .map(|p| json!({"name": p.name, "result": p.result, "version": p.version, "error": p.error}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json!({"plugins": v})).unwrap_or_default());
            } else {
                for p in &r.plugins {
                    println!("{:<20} {:<10} {} {}", p.name, p.result, p.version, p.error);
                }
            }
            if failed {
                return Err(CliError::Failed("a plugin failed to reload; its previous version keeps serving".into()));
            }
            return Ok(());
        }
        let r = c.get_plugins(pb::GetPluginsRequest {}).await.map_err(refused)?.into_inner();
        if conn.json {
            let v: Vec<_> = r
                .plugins
                .iter()
                .map(|p| {
                    json!({"name": p.name, "hooks": p.hooks, "version": p.version, "mode": p.mode,
                           "on_error": p.on_error, "loaded_unix_ms": p.loaded_unix_ms,
                           "decisions": p.decisions, "faults": p.faults, "source": p.source,
                           "last_error": p.last_error})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({"plugins": v})).unwrap_or_default());
        } else {
            let rows: Vec<[String; 7]> = r
                .plugins
                .iter()
                .map(|p| {
                    [
                        p.name.clone(),
                        p.hooks.join(","),
                        p.version.clone(),
                        p.mode.clone(),
                        p.on_error.clone(),
                        p.decisions.to_string(),
                        p.faults.to_string(),
                    ]
                })
                .collect();
            print!("{}", super::table(&["PLUGIN", "HOOKS", "VERSION", "MODE", "ON ERROR", "DECISIONS", "FAULTS"], &rows));
        }
        Ok(())
    })
}

#[derive(Debug, Args)]
pub struct DecisionsArgs {
    /// Only this hook's decisions (allocator, firewall, router).
    #[arg(long)]
    pub hook: Option<String>,
    /// Only this plugin's.
    #[arg(long)]
    pub plugin: Option<String>,
    /// Only decisions newer than this: a duration ago ("10m") or unix milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// The log (default: policy.decision_log, else host.state_dir/decisions.jsonl).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub fn decisions(a: DecisionsArgs, json: bool, config: Option<&Path>) -> Result<(), CliError> {
    let path = match a.file {
        Some(f) => f,
        None => {
            let loaded = crate::config::load(config)?;
            let c = loaded.config;
            c.policy
                .decision_log
                .unwrap_or_else(|| c.host.state_dir.join("decisions.jsonl"))
        }
    };
    let since_ms = match a.since.as_deref() {
        None => None,
        Some(s) => Some(match s.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => {
                let d: crate::config::Duration =
                    s.parse().map_err(|e: crate::config::ValueError| {
                        CliError::Usage(format!("--since: {e}"))
                    })?;
                crate::clock::now_ms() - d.get().as_millis() as i64
            }
        }),
    };
    let filter = audit::Filter {
        hook: a.hook,
        plugin: a.plugin,
        since_ms,
    };
    let entries = audit::read(&path, &filter)
        .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
    if json {
        for e in &entries {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        return Ok(());
    }
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(e.ts_ms.max(0) as u64);
            [
                humantime::format_rfc3339_millis(t).to_string(),
                e.call.clone(),
                e.plugin.clone(),
                e.version.clone(),
                e.mode.clone(),
                e.fault.clone().unwrap_or_else(|| {
                    e.decision
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                }),
                format!("{} µs", e.latency_us),
                committed(e),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table(
            &[
                "TIME", "CALL", "PLUGIN", "VERSION", "MODE", "OUTCOME", "LATENCY", "STORED"
            ],
            &rows
        )
    );
    Ok(())
}

/// Whether a decision's operation reached the store: `yes`, `no`, `unknown` (a commit was in
/// flight when the host was deposed), `open` (not settled: still running, or the host was
/// killed), `-` (a decision the hub does not store, such as a route).
fn committed(e: &audit::Entry) -> String {
    match (&e.op, &e.outcome) {
        (None, _) => "-".into(),
        (Some(_), None) => "open".into(),
        (Some(_), Some(s)) => match s.commit {
            audit::Commit::Committed => "yes".into(),
            audit::Commit::NotCommitted => "no".into(),
            audit::Commit::Unknown => "unknown".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_tagged_or_by_hook() {
        let addr = r#"{"network":"default","workload_id":"w","runner":"r1","subnet":"10.0.1.0/24","gateway":"10.0.1.1","first":"10.0.1.2","last":"10.0.1.253"}"#;
        assert_eq!(
            parse_request(Hook::Allocator, addr).unwrap().call_name(),
            "assign-address"
        );
        let runner = r#"{"network":"default","name":"r1","physical_ip":"192.0.2.1","plan":{"spec":"10.0.0.0/22/2/8","overlay":"10.0.0.0/22","max_runners":3}}"#;
        assert_eq!(
            parse_request(Hook::Allocator, runner).unwrap().call_name(),
            "assign-runner"
        );
        let tagged = r#"{"call":"route","network":"default","runner":{"name":"r1","id":1,"physical_ip":"192.0.2.1"},"change":"joined"}"#;
        assert_eq!(
            parse_request(Hook::Router, tagged).unwrap().call_name(),
            "route"
        );
        let e = parse_request(Hook::Firewall, tagged).unwrap_err();
        assert!(e.to_string().contains("not for the firewall hook"), "{e}");
        assert!(
            parse_request(Hook::Allocator, "{")
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
        assert!(
            parse_request(Hook::Firewall, r#"{"network":"default"}"#).is_err(),
            "missing fields"
        );
    }

    #[test]
    fn an_interface_0_1_address_request_is_refused_naming_taken() {
        let old = r#"{"network":"default","workload_id":"w","runner":"r1","subnet":"10.0.1.0/24","gateway":"10.0.1.1","first":"10.0.1.2","last":"10.0.1.253","taken":["10.0.1.2"]}"#;
        let e = parse_request(Hook::Allocator, old).unwrap_err().to_string();
        assert!(e.contains("`taken`") && e.contains("`pool`"), "{e}");
        let new = old
            .replace(r#""taken":"#, r#""pool":{"held":"#)
            .replace("]}", "]}}");
        match parse_request(Hook::Allocator, &new).unwrap() {
            Request::AssignAddress(r) => {
                assert!(!r.pool.is_free("10.0.1.2".parse().unwrap()));
                assert!(r.pool.is_free("10.0.1.3".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }
}
