//! The policy host: which plugin serves which hook, in which mode; every decision through it
//! (enforcing, monitoring, fallback or deny), traced, counted, audited and fault-reported.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::fault::{Fault, FaultReport, Refusal};
use super::load::{Backend, Loaded, PluginLoadError, load_one};
use super::validate::validate;
use super::{Limits, audit};
use crate::config::{OnError, PluginConfig, PluginMode};
use crate::decision::{AddressDecision, Decision, Hook, Request, RunnerDecision};

/// One configured plugin and its current version.
pub(super) struct Slot {
    pub(super) spec: PluginConfig,
    pub(super) hooks: Vec<Hook>,
    pub(super) limits: Limits,
    pub(super) current: RwLock<Arc<Loaded>>,
    pub(super) decisions: AtomicU64,
    pub(super) faults: AtomicU64,
    pub(super) last_error: RwLock<String>,
}

/// What `GetPlugins` reports.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    pub name: String,
    pub hooks: Vec<Hook>,
    pub version: String,
    pub mode: PluginMode,
    pub on_error: OnError,
    pub loaded_ms: i64,
    pub decisions: u64,
    pub faults: u64,
    pub source: String,
    pub last_error: String,
}

/// What a reload did to one plugin.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub name: String,
    pub result: &'static str,
    pub version: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy plugin {name:?}: {source}")]
    Load {
        name: String,
        #[source]
        source: PluginLoadError,
    },
}

pub struct PolicyHost {
    pub(super) slots: Vec<Arc<Slot>>,
    pub(super) cache_dir: Option<PathBuf>,
    pub(super) audit: Option<audit::Audit>,
    pub(super) faults: Option<mpsc::UnboundedSender<FaultReport>>,
    pub(super) reloads: Option<mpsc::UnboundedSender<ReloadOutcome>>,
}

impl PolicyHost {
    /// No plugins: every decision is the built-in one.
    pub fn builtin() -> Self {
        Self {
            slots: Vec::new(),
            cache_dir: None,
            audit: None,
            faults: None,
            reloads: None,
        }
    }

    /// Load every configured plugin (compile, instantiate, configure). Any failure is an error
    /// naming the plugin: the daemon does not start half-configured.
    pub async fn load(
        plugins: &[PluginConfig],
        cache_dir: Option<PathBuf>,
        audit: Option<audit::Audit>,
    ) -> Result<Self, PolicyError> {
        let mut slots = Vec::new();
        for spec in plugins {
            let hooks: Vec<Hook> = spec.hooks.iter().filter_map(|h| Hook::parse(h)).collect();
            let limits = Limits {
                deadline: spec.deadline.get(),
                memory: spec.memory.0,
                max_output: spec.max_output,
            };
            let loaded = load_one(spec, &hooks, limits, cache_dir.clone())
                .await
                .map_err(|source| PolicyError::Load {
                    name: spec.name.clone(),
                    source,
                })?;
            tracing::info!(plugin = %spec.name, version = %loaded.version, hooks = ?spec.hooks, mode = ?spec.mode, "policy plugin loaded");
            slots.push(Arc::new(Slot {
                spec: spec.clone(),
                hooks,
                limits,
                current: RwLock::new(Arc::new(loaded)),
                decisions: AtomicU64::new(0),
                faults: AtomicU64::new(0),
                last_error: RwLock::new(String::new()),
            }));
        }
        Ok(Self {
            slots,
            cache_dir,
            audit,
            faults: None,
            reloads: None,
        })
    }

    /// Where faults and reloads are reported (the hub turns them into events).
    pub fn report_to(
        &mut self,
        faults: mpsc::UnboundedSender<FaultReport>,
        reloads: mpsc::UnboundedSender<ReloadOutcome>,
    ) {
        self.faults = Some(faults);
        self.reloads = Some(reloads);
    }

    /// The decision log, if one is kept.
    pub fn audit(&self) -> Option<&audit::Audit> {
        self.audit.as_ref()
    }

    /// Whether any plugin (enforcing or monitoring) serves `hook`.
    pub fn has(&self, hook: Hook) -> bool {
        self.slots.iter().any(|s| s.hooks.contains(&hook))
    }

    fn enforcer(&self, hook: Hook) -> Option<&Arc<Slot>> {
        self.slots
            .iter()
            .find(|s| s.spec.mode == PluginMode::Enforce && s.hooks.contains(&hook))
    }

    fn monitors(&self, hook: Hook) -> Vec<Arc<Slot>> {
        self.slots
            .iter()
            .filter(|s| s.spec.mode == PluginMode::Monitor && s.hooks.contains(&hook))
            .cloned()
            .collect()
    }

    /// Ask the enforcing plugin of the request's hook. `Ok(None)`: the built-in policy decides
    /// (no plugin, the plugin chose `builtin`/`next-free`, or it failed with `fallback`).
    pub async fn decide(&self, request: &Request) -> Result<Option<Decision>, Refusal> {
        let hook = request.hook();
        let monitors = self.monitors(hook);
        let result = match self.enforcer(hook) {
            None => Ok(None),
            Some(slot) => self.run_enforcing(slot, request).await,
        };
        if !monitors.is_empty() {
            // Monitors never delay or change the operation.
            let applied = result.clone();
            let req = request.clone();
            let audit = self.audit.clone();
            let faults = self.faults.clone();
            // In the caller's trace, though the caller does not wait for them.
            tokio::spawn(
                async move {
                    for m in monitors {
                        run_monitor(&m, &req, &applied, audit.as_ref(), faults.as_ref()).await;
                    }
                }
                .instrument(tracing::Span::current()),
            );
        }
        result
    }

    /// For hooks whose monitor mode still acts (the firewall installs a monitor plugin's rules
    /// in count-only mode): the enforcing decision, or else the first monitor plugin's decision
    /// marked `true` (monitor).
    pub async fn decide_or_monitor(
        &self,
        request: &Request,
    ) -> Result<Option<(Decision, bool)>, Refusal> {
        if self.enforcer(request.hook()).is_some() {
            return Ok(self.decide(request).await?.map(|d| (d, false)));
        }
        let Some(slot) = self.monitors(request.hook()).into_iter().next() else {
            return Ok(None);
        };
        let (outcome, version, latency) = call(&slot, request).await;
        slot.decisions.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(d) => {
                if let Some(a) = &self.audit {
                    a.record(
                        &slot.spec.name,
                        &version,
                        "monitor",
                        request,
                        Ok(&d),
                        latency,
                        true,
                        None,
                    );
                }
                Ok(Some((d, true)))
            }
            Err(fault) => {
                // A monitor never refuses: without its rules the workload is simply open.
                let f = FaultCall {
                    slot: &slot,
                    version,
                    request,
                    latency,
                };
                f.report(
                    fault,
                    MONITOR_APPLIED,
                    self.audit.as_ref(),
                    self.faults.as_ref(),
                );
                Ok(None)
            }
        }
    }

    async fn run_enforcing(
        &self,
        slot: &Arc<Slot>,
        request: &Request,
    ) -> Result<Option<Decision>, Refusal> {
        let (outcome, version, latency) = call(slot, request).await;
        slot.decisions.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(decision) => {
                if let Some(a) = &self.audit {
                    a.record(
                        &slot.spec.name,
                        &version,
                        "enforce",
                        request,
                        Ok(&decision),
                        latency,
                        true,
                        None,
                    );
                }
                match &decision {
                    Decision::Runner(RunnerDecision::Deny(reason))
                    | Decision::Address(AddressDecision::Deny(reason)) => Err(Refusal::Denied {
                        plugin: slot.spec.name.clone(),
                        reason: reason.clone(),
                    }),
                    Decision::Runner(RunnerDecision::Builtin)
                    | Decision::Address(AddressDecision::NextFree) => Ok(None),
                    _ => Ok(Some(decision)),
                }
            }
            Err(fault) => {
                let applied = match slot.spec.on_error {
                    OnError::Fallback => "fallback",
                    OnError::Deny => "deny",
                };
                let f = FaultCall {
                    slot,
                    version,
                    request,
                    latency,
                };
                f.report(
                    fault.clone(),
                    applied,
                    self.audit.as_ref(),
                    self.faults.as_ref(),
                );
                match slot.spec.on_error {
                    OnError::Fallback => Ok(None),
                    OnError::Deny => Err(Refusal::Failed {
                        plugin: slot.spec.name.clone(),
                        fault,
                    }),
                }
            }
        }
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.slots
            .iter()
            .map(|s| {
                let cur = s.current.read().unwrap_or_else(|p| p.into_inner()).clone();
                PluginStatus {
                    name: s.spec.name.clone(),
                    hooks: s.hooks.clone(),
                    version: cur.version.clone(),
                    mode: s.spec.mode,
                    on_error: s.spec.on_error,
                    loaded_ms: cur.loaded_ms,
                    decisions: s.decisions.load(Ordering::Relaxed),
                    faults: s.faults.load(Ordering::Relaxed),
                    source: s
                        .spec
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .or_else(|| s.spec.endpoint.clone())
                        .unwrap_or_default(),
                    last_error: s
                        .last_error
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }
            })
            .collect()
    }
}

async fn run_monitor(
    slot: &Arc<Slot>,
    request: &Request,
    applied: &Result<Option<Decision>, Refusal>,
    audit: Option<&audit::Audit>,
    faults: Option<&mpsc::UnboundedSender<FaultReport>>,
) {
    let (outcome, version, latency) = call(slot, request).await;
    slot.decisions.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Ok(d) => {
            let differs = match applied {
                Ok(Some(a)) => a != &d,
                // The built-in decided; the monitor differs unless it deferred to it too.
                Ok(None) => !matches!(
                    d,
                    Decision::Runner(RunnerDecision::Builtin)
                        | Decision::Address(AddressDecision::NextFree)
                ),
                Err(_) => !matches!(
                    d,
                    Decision::Runner(RunnerDecision::Deny(_))
                        | Decision::Address(AddressDecision::Deny(_))
                ),
            };
            if differs {
                tracing::info!(plugin = %slot.spec.name, hook = %request.hook(), decision = ?d, applied = ?applied, "monitor plugin disagrees (not applied)");
            }
            if let Some(a) = audit {
                a.record(
                    &slot.spec.name,
                    &version,
                    "monitor",
                    request,
                    Ok(&d),
                    latency,
                    false,
                    Some(differs),
                );
            }
        }
        Err(fault) => {
            let f = FaultCall {
                slot,
                version,
                request,
                latency,
            };
            f.report(fault, MONITOR_APPLIED, audit, faults);
        }
    }
}

/// What a fault report says a monitor plugin's failure changed.
const MONITOR_APPLIED: &str = "none (monitor)";

/// A plugin call that failed.
struct FaultCall<'a> {
    slot: &'a Arc<Slot>,
    version: String,
    request: &'a Request,
    latency: Duration,
}

impl FaultCall<'_> {
    /// Count, log, audit and report the fault; `applied` says what happened instead.
    fn report(
        self,
        fault: Fault,
        applied: &'static str,
        audit: Option<&audit::Audit>,
        faults: Option<&mpsc::UnboundedSender<FaultReport>>,
    ) {
        let slot = self.slot;
        slot.faults.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %slot.spec.name, version = %self.version, hook = %self.request.hook(), cause = fault.cause(), fault = %fault, applied, "policy plugin fault");
        let mode = slot.spec.mode.as_str();
        if let Some(a) = audit {
            a.record(
                &slot.spec.name,
                &self.version,
                mode,
                self.request,
                Err(&fault),
                self.latency,
                false,
                None,
            );
        }
        if let Some(tx) = faults {
            let _ = tx.send(FaultReport {
                plugin: slot.spec.name.clone(),
                version: self.version,
                hook: self.request.hook(),
                fault,
                applied,
            });
        }
    }
}

/// Run one decision on the slot's current version and validate it.
/// One plugin call in a `policy.decide` span (hook, plugin, version, outcome, latency), counted
/// in `weir.policy.decisions` and, when it fails, `weir.policy.faults`.
async fn call(slot: &Arc<Slot>, request: &Request) -> (Result<Decision, Fault>, String, Duration) {
    let call = request.call_name();
    let plugin = slot.spec.name.as_str();
    let mode = slot.spec.mode.as_str();
    let span = tracing::info_span!(
        "policy.decide",
        otel.name = format!("decide {call}"),
        policy.hook = call,
        policy.plugin = plugin,
        policy.mode = mode,
        policy.version = tracing::field::Empty,
        policy.outcome = tracing::field::Empty,
        policy.latency_us = tracing::field::Empty,
        policy.fault = tracing::field::Empty,
    );
    let (result, version, latency) = call_plugin(slot, request).instrument(span.clone()).await;
    let outcome = match &result {
        Ok(d) => d.kind(),
        Err(_) => "fault",
    };
    span.record("policy.version", version.as_str());
    span.record("policy.outcome", outcome);
    span.record("policy.latency_us", latency.as_micros() as u64);
    let m = crate::telemetry::metrics();
    let hook_attr = KeyValue::new("hook", call);
    let plugin_attr = KeyValue::new("plugin", plugin.to_string());
    if let Err(fault) = &result {
        span.record("policy.fault", tracing::field::display(fault));
        m.plugin_faults.add(
            1,
            &[
                hook_attr.clone(),
                plugin_attr.clone(),
                KeyValue::new("cause", fault.cause()),
            ],
        );
    }
    m.decisions.add(
        1,
        &[
            hook_attr.clone(),
            plugin_attr.clone(),
            KeyValue::new("mode", mode),
            KeyValue::new("outcome", outcome),
        ],
    );
    m.decision_duration
        .record(latency.as_secs_f64(), &[hook_attr, plugin_attr]);
    (result, version, latency)
}

async fn call_plugin(
    slot: &Arc<Slot>,
    request: &Request,
) -> (Result<Decision, Fault>, String, Duration) {
    let loaded = slot
        .current
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let started = Instant::now();
    let outcome = match &loaded.backend {
        Backend::Wasm(by_hook) => {
            let Some(w) = by_hook.get(&request.hook()).cloned() else {
                return (
                    Err(Fault::Output(format!(
                        "no instance for the {} hook",
                        request.hook()
                    ))),
                    loaded.version.clone(),
                    Duration::ZERO,
                );
            };
            let req = request.clone();
            // wasmtime calls block; a plugin may spin until its deadline: keep tokio free.
            match tokio::task::spawn_blocking(move || w.call(&req)).await {
                Ok(r) => r,
                Err(e) => Err(Fault::Trap(format!("host task failed: {e}"))),
            }
        }
        Backend::Grpc(g) => g.call(request, slot.limits.deadline).await,
    };
    let latency = started.elapsed();
    let outcome = outcome.and_then(|d| validate(request, d, slot.limits));
    (outcome, loaded.version.clone(), latency)
}
