//! The host's cluster logic: who holds which runner id, which workload has which address,
//! which runners are connected — and the kernel changes that follow from it.
//!
//! The hub sees plain data (the `weir.v1` messages as structs), never gRPC transport; the
//! API layer translates. Every decision is taken under one lock, persisted in the store and
//! applied to the data plane before it is answered, so a refused call changes nothing.

mod error;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use weir_proto::v1 as pb;

pub use error::HubError;
pub use session::{SessionHandle, SessionStart};

use crate::dataplane::host::{HostDataplane, HostNetwork};
use crate::ipam::{self, AddressPool, IdChoice, TakenId};
use crate::network::{DEFAULT_NETWORK, NetworkDef, NetworkKind};
use crate::store::{
    Change, PlaceholderRecord, RunnerRecord, Store, WorkloadRecord, now_ms, workload_key,
};

/// How long the hub waits for a runner to carry out a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Host settings the hub needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub networks: Vec<NetworkDef>,
    /// The underlay address of the host (required when any network is an overlay).
    pub reachable_address: Option<Ipv4Addr>,
    pub heartbeat_timeout: Duration,
}

pub struct Hub {
    settings: HubSettings,
    store: Store,
    dataplane: Option<HostDataplane>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runners: BTreeMap<String, RunnerState>,
    placeholders: BTreeMap<u32, PlaceholderRecord>,
    workloads: BTreeMap<String, WorkloadRecord>,
    /// Address pools by (network, runner name).
    pools: HashMap<(String, String), AddressPool>,
    next_generation: u64,
    next_session: u64,
}

struct RunnerState {
    rec: RunnerRecord,
    /// Unix ms of the last registration or heartbeat (in memory; persisted on changes).
    last_seen_ms: i64,
    session: Option<SessionHandle>,
    /// Whether the last check found it active (to log transitions once).
    was_active: bool,
}

impl Hub {
    /// Open the hub: load the store, reconcile the kernel with it, and get ready to serve.
    pub async fn start(
        settings: HubSettings,
        store: Store,
        dataplane: Option<HostDataplane>,
    ) -> Result<Arc<Self>, HubError> {
        let snap = store.load()?;
        let hub = Hub {
            settings,
            store,
            dataplane,
            state: Mutex::new(State::default()),
        };
        hub.recover(snap).await?;
        Ok(Arc::new(hub))
    }

    fn host_networks(&self) -> Vec<HostNetwork> {
        let Some(local) = self.settings.reachable_address else {
            return Vec::new();
        };
        self.settings
            .networks
            .iter()
            .filter_map(|n| {
                let o = n.overlay()?;
                Some(HostNetwork {
                    name: n.name.clone(),
                    plan: o.plan,
                    vxlan_id_base: o.vxlan_id_base,
                    port: o.port,
                    mtu: n.mtu,
                    host_device: o.host_device.clone(),
                    tunnel_prefix: o.tunnel_prefix.clone(),
                    local,
                })
            })
            .collect()
    }

    fn network(&self, name: &str) -> Result<&NetworkDef, HubError> {
        let name = if name.is_empty() {
            DEFAULT_NETWORK
        } else {
            name
        };
        self.settings
            .networks
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                HubError::NotFound(format!(
                    "network {name:?} is not configured (known: {})",
                    self.settings
                        .networks
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    fn overlay_enabled(&self) -> bool {
        self.settings.networks.iter().any(|n| n.overlay().is_some())
    }

    /// Load the store, drop what the current plan no longer allows, and make the kernel match:
    /// valid tunnels are adopted as they are, tunnels nobody holds become placeholders.
    async fn recover(&self, snap: crate::store::Snapshot) -> Result<(), HubError> {
        let mut st = self.state.lock().await;
        let mut changes = Vec::new();
        let now = now_ms();
        st.next_generation = snap
            .meta
            .get("next_generation")
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        let overlay_plan = self
            .settings
            .networks
            .iter()
            .find_map(|n| n.overlay().map(|o| o.plan));
        for (name, mut rec) in snap.runners {
            let id_ok = match (overlay_plan, rec.id) {
                (Some(plan), Some(id)) => plan.check_runner(u64::from(id)).is_ok(),
                (Some(_), None) => false,
                (None, _) => true,
            };
            if !id_ok {
                tracing::info!(runner = %name, id = ?rec.id, "dropping allocation the current plan does not allow");
                changes.push(Change::DeleteRunner(name));
                continue;
            }
            if overlay_plan.is_none() {
                rec.id = None;
            }
            // A host restart is not a runner failure: every runner gets a full timeout to
            // come back before it counts as inactive (cleanup must not eat recovered tunnels).
            st.runners.insert(
                name,
                RunnerState {
                    last_seen_ms: now,
                    session: None,
                    was_active: true,
                    rec,
                },
            );
        }
        for (id, ph) in snap.placeholders {
            if overlay_plan.is_some_and(|p| p.check_runner(u64::from(id)).is_ok())
                && !st.runners.values().any(|r| r.rec.id == Some(id))
            {
                st.placeholders.insert(id, ph);
            } else {
                changes.push(Change::DeletePlaceholder(id));
            }
        }
        // Kernel: adopt tunnels, delete invalid ones, make placeholders of unclaimed valid ones.
        if let Some(dp) = &self.dataplane {
            let nets = self.host_networks();
            dp.setup(&nets).await?;
            for net in &nets {
                let found = dp.scan_tunnels(net).await?;
                for (id, tunnel) in &found {
                    let held = st.runners.values().any(|r| r.rec.id == Some(*id))
                        || st.placeholders.contains_key(id);
                    if !held && let Some(remote) = tunnel.remote {
                        tracing::info!(id, %remote, "adopting an unclaimed tunnel as a placeholder");
                        let ph = PlaceholderRecord {
                            id: *id,
                            physical_ip: remote,
                            recovered_ms: now,
                        };
                        changes.push(Change::PutPlaceholder(ph.clone()));
                        st.placeholders.insert(*id, ph);
                    }
                }
                let wanted: Vec<(u32, Ipv4Addr)> = st
                    .runners
                    .values()
                    .filter_map(|r| Some((r.rec.id?, r.rec.physical_ip)))
                    .chain(st.placeholders.values().map(|p| (p.id, p.physical_ip)))
                    .collect();
                let mut kept = 0;
                for (id, remote) in wanted {
                    let (_, change) = dp.ensure_tunnel(net, id, remote).await?;
                    if change == crate::dataplane::host::TunnelChange::Unchanged {
                        kept += 1;
                    } else {
                        tracing::info!(id, ?change, "tunnel reconciled");
                    }
                }
                // Tunnels of ids nobody holds any more (their runner was dropped above).
                for id in found.keys() {
                    let held = st.runners.values().any(|r| r.rec.id == Some(*id))
                        || st.placeholders.contains_key(id);
                    if !held {
                        dp.remove_tunnel(net, *id).await?;
                    }
                }
                tracing::info!(network = %net.name, adopted = kept, "tunnels reconciled");
            }
        }
        // Workloads: keep those whose address still fits their runner's subnet.
        for (key, w) in snap.workloads {
            let Some(runner) = st.runners.get(&w.runner) else {
                changes.push(Change::DeleteWorkload(key));
                continue;
            };
            let id = runner.rec.id;
            let fits = self
                .network(&w.network)
                .ok()
                .and_then(|n| n.runner_subnet(id))
                .is_some_and(|s| {
                    s.subnet == w.ip.trunc() && w.ip.prefix_len() == s.subnet.prefix_len()
                });
            if !fits {
                tracing::info!(workload = %w.id, ip = %w.ip, "dropping workload whose address the current plan does not allow");
                changes.push(Change::DeleteWorkload(key));
                continue;
            }
            let pool = pool_for(&mut st.pools, self, &w.network, &w.runner, id)?;
            if pool.take(w.ip.addr()).is_err() {
                changes.push(Change::DeleteWorkload(key));
                continue;
            }
            st.workloads.insert(key, w);
        }
        if let Some(plan) = overlay_plan {
            changes.push(Change::PutMeta("plan".into(), plan.to_string()));
        }
        self.store.commit(&changes)?;
        Ok(())
    }

    // ---- runners -----------------------------------------------------------------------

    /// A runner joins. Returns everything it needs to build its side.
    pub async fn register(
        &self,
        req: pb::RegisterRequest,
    ) -> Result<pb::RegisterResponse, HubError> {
        let name = check_runner_name(&req.name)?;
        let physical_ip: Ipv4Addr = req.physical_ip.trim().parse().map_err(|_| {
            HubError::InvalidArgument(format!(
                "physical_ip: {:?} is not an IPv4 address",
                req.physical_ip
            ))
        })?;
        let mut st = self.state.lock().await;
        let now = now_ms();
        let mut changes = Vec::new();
        let overlay = self
            .settings
            .networks
            .iter()
            .find_map(|n| n.overlay().map(|o| (n, o)));
        let prior = st.runners.get(&name).map(|r| r.rec.clone());
        let (id, generation) = match overlay {
            None => (
                None,
                prior
                    .as_ref()
                    .map_or_else(|| st.take_generation(), |p| p.generation),
            ),
            Some((_, o)) => {
                let taken = taken_ids(&st, now, self.settings.heartbeat_timeout);
                match ipam::choose_runner_id(&name, physical_ip, &taken, o.plan.max_runners()) {
                    IdChoice::Keep(id) => (Some(id), prior.as_ref().map_or(1, |p| p.generation)),
                    IdChoice::Claim(id) => {
                        tracing::info!(runner = %name, id, "runner claims a recovered placeholder");
                        st.placeholders.remove(&id);
                        changes.push(Change::DeletePlaceholder(id));
                        (Some(id), st.take_generation())
                    }
                    IdChoice::Fresh(id) => (Some(id), st.take_generation()),
                    IdChoice::Reclaim { id, from } => {
                        match &from {
                            Some(victim) => {
                                tracing::warn!(runner = %name, id, from = %victim, "reclaiming the least recently seen inactive allocation");
                                self.forget_runner(
                                    &mut st,
                                    victim,
                                    &mut changes,
                                    "its id was reclaimed for another runner",
                                );
                            }
                            None => {
                                st.placeholders.remove(&id);
                                changes.push(Change::DeletePlaceholder(id));
                            }
                        }
                        (Some(id), st.take_generation())
                    }
                    IdChoice::Exhausted { max } => {
                        return Err(HubError::ResourceExhausted(format!(
                            "no runner id is free: plan {} allows at most {max} runners and all are held by active runners; release one or use a plan with more NODE_BITS",
                            o.plan
                        )));
                    }
                }
            }
        };
        // Kernel first: if the tunnel cannot be built, nothing is recorded.
        if let (Some(id), Some(dp)) = (id, &self.dataplane) {
            for net in self.host_networks() {
                dp.ensure_tunnel(&net, id, physical_ip).await?;
            }
        }
        let rec = RunnerRecord {
            name: name.clone(),
            id,
            physical_ip,
            labels: req.labels.into_iter().collect(),
            version: req.version,
            last_seen_ms: now,
            generation,
        };
        changes.push(Change::PutRunner(rec.clone()));
        changes.push(Change::PutMeta(
            "next_generation".into(),
            st.next_generation.to_string(),
        ));
        self.store.commit(&changes)?;
        if prior
            .as_ref()
            .is_some_and(|p| p.generation != generation || p.id != id)
        {
            // The runner's old session (if any) belongs to an allocation that no longer exists.
            if let Some(s) = st.runners.get_mut(&name).and_then(|r| r.session.take()) {
                s.revoke("the allocation changed");
            }
        }
        if prior.as_ref().is_some_and(|p| p.physical_ip != physical_ip) {
            tracing::info!(runner = %name, %physical_ip, "runner moved; tunnel updated in place");
        }
        let entry = st
            .runners
            .entry(name.clone())
            .or_insert_with(|| RunnerState {
                rec: rec.clone(),
                last_seen_ms: now,
                session: None,
                was_active: true,
            });
        entry.rec = rec;
        entry.last_seen_ms = now;
        entry.was_active = true;
        tracing::info!(runner = %name, id = ?id, %physical_ip, "runner registered");
        Ok(self.assignment(&st.runners[&name].rec))
    }

    /// Remove a runner's allocation, workloads and pools (in memory and as store changes).
    fn forget_runner(&self, st: &mut State, name: &str, changes: &mut Vec<Change>, why: &str) {
        if let Some(mut r) = st.runners.remove(name)
            && let Some(s) = r.session.take()
        {
            s.revoke(why);
        }
        changes.push(Change::DeleteRunner(name.to_string()));
        let keys: Vec<String> = st
            .workloads
            .iter()
            .filter(|(_, w)| w.runner == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            st.workloads.remove(&k);
            changes.push(Change::DeleteWorkload(k));
        }
        st.pools.retain(|(_, runner), _| runner != name);
    }

    fn assignment(&self, rec: &RunnerRecord) -> pb::RegisterResponse {
        let networks = self
            .settings
            .networks
            .iter()
            .filter_map(|n| {
                let sub = n.runner_subnet(rec.id)?;
                let mut a = pb::NetworkAssignment {
                    network: n.name.clone(),
                    subnet: sub.subnet.to_string(),
                    gateway: sub.gateway.to_string(),
                    mtu: n.mtu,
                    bridge_name: n.bridge.clone(),
                    masquerade: n.masquerade,
                    ..Default::default()
                };
                match &n.kind {
                    NetworkKind::Overlay(o) => {
                        let id = rec.id?;
                        a.mode = pb::NetworkMode::Overlay as i32;
                        a.plan = o.plan.to_string();
                        a.overlay_cidr = o.plan.overlay().to_string();
                        a.host_ip = o.plan.host_ip().to_string();
                        a.host_ip_on_subnet =
                            sub.host_side.map(|h| h.to_string()).unwrap_or_default();
                        a.vni = o.vxlan_id_base + id;
                        a.vxlan_id_base = o.vxlan_id_base;
                        a.vxlan_port = u32::from(o.port);
                        a.tunnel_name = o.runner_tunnel.clone();
                    }
                    NetworkKind::Isolated { .. } => a.mode = pb::NetworkMode::Isolated as i32,
                }
                Some(a)
            })
            .collect();
        pb::RegisterResponse {
            runner_id: rec.id.unwrap_or(0),
            generation: rec.generation,
            host_physical_ip: self
                .settings
                .reachable_address
                .map(|a| a.to_string())
                .unwrap_or_default(),
            networks,
        }
    }

    /// Mark runners inactive when their heartbeats stop (logging each transition once).
    pub async fn check_liveness(&self) {
        let mut st = self.state.lock().await;
        let now = now_ms();
        let timeout = self.settings.heartbeat_timeout.as_millis() as i64;
        let mut changes = Vec::new();
        for r in st.runners.values_mut() {
            let active = now - r.last_seen_ms < timeout;
            if active != r.was_active {
                r.was_active = active;
                if active {
                    tracing::info!(runner = %r.rec.name, "runner active again");
                } else {
                    tracing::warn!(runner = %r.rec.name, timeout_ms = timeout, "runner inactive: no heartbeat within the timeout");
                    r.rec.last_seen_ms = r.last_seen_ms;
                    changes.push(Change::PutRunner(r.rec.clone()));
                }
            }
        }
        if let Err(e) = self.store.commit(&changes) {
            tracing::error!(error = %e, "persisting runner liveness failed");
        }
    }

    // ---- workloads ---------------------------------------------------------------------

    /// Give a workload an interface on its runner's network.
    pub async fn attach(
        &self,
        req: pb::AttachWorkloadRequest,
    ) -> Result<pb::AttachWorkloadResponse, HubError> {
        let workload_id = check_workload_id(&req.workload_id)?;
        let netns = match (req.netns.trim(), req.pid) {
            ("", 0) => {
                return Err(HubError::InvalidArgument(
                    "netns: give the path of the workload's network namespace, or pid".into(),
                ));
            }
            ("", pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            (path, 0) => {
                let p = PathBuf::from(path);
                if !p.is_absolute() {
                    return Err(HubError::InvalidArgument(format!(
                        "netns: {path:?} is not an absolute path"
                    )));
                }
                p
            }
            (_, _) => {
                return Err(HubError::InvalidArgument(
                    "netns and pid: give one of them, not both".into(),
                ));
            }
        };
        let net = self.network(&req.network)?.clone();
        let key = workload_key(&net.name, &workload_id);
        let (spec, session, fresh) = {
            let mut st = self.state.lock().await;
            let runner = st.runners.get(&req.runner).ok_or_else(|| {
                HubError::NotFound(format!("runner {:?} is not registered", req.runner))
            })?;
            let session = runner.session.clone().ok_or_else(|| {
                HubError::FailedPrecondition(format!("runner {:?} is not connected", req.runner))
            })?;
            if now_ms() - runner.last_seen_ms >= self.settings.heartbeat_timeout.as_millis() as i64
            {
                return Err(HubError::FailedPrecondition(format!(
                    "runner {:?} is inactive",
                    req.runner
                )));
            }
            let id = runner.rec.id;
            let sub = net.runner_subnet(id).ok_or_else(|| {
                HubError::FailedPrecondition(format!(
                    "runner {:?} has no subnet on network {}",
                    req.runner, net.name
                ))
            })?;
            if let Some(existing) = st.workloads.get(&key) {
                if existing.runner != req.runner || existing.netns != netns {
                    return Err(HubError::AlreadyExists(format!(
                        "workload {workload_id:?} is already attached on runner {:?} with namespace {}",
                        existing.runner,
                        existing.netns.display()
                    )));
                }
                (workload_spec(existing, &net, sub.gateway), session, false)
            } else {
                let pool = pool_for(&mut st.pools, self, &net.name, &req.runner, id)?;
                let ip = pool
                    .take_next()
                    .map_err(|e| HubError::ResourceExhausted(e.to_string()))?;
                let rec = WorkloadRecord {
                    network: net.name.clone(),
                    id: workload_id.clone(),
                    runner: req.runner.clone(),
                    ip: Ipv4Net::new(ip, sub.subnet.prefix_len())
                        .map_err(|e| HubError::Internal(e.to_string()))?,
                    netns: netns.clone(),
                    ifname: "eth0".into(),
                    labels: BTreeMap::new(),
                    created_ms: now_ms(),
                };
                if let Err(e) = self.store.commit(&[Change::PutWorkload(rec.clone())]) {
                    pool.release(ip);
                    return Err(e.into());
                }
                let spec = workload_spec(&rec, &net, sub.gateway);
                st.workloads.insert(key.clone(), rec);
                (spec, session, true)
            }
        };
        let result = session
            .command(pb::command::Op::Attach(spec.clone()), COMMAND_TIMEOUT)
            .await;
        if let Err(e) = result {
            if fresh {
                self.drop_workload(&key).await;
            }
            return Err(e);
        }
        tracing::info!(workload = %workload_id, runner = %req.runner, ip = %spec.address, "workload attached");
        Ok(pb::AttachWorkloadResponse {
            workload_id,
            runner: req.runner,
            network: net.name.clone(),
            ip: spec.address,
            gateway: spec.gateway,
            mtu: spec.mtu,
            host_ip: net
                .overlay()
                .map(|o| o.plan.host_ip().addr().to_string())
                .unwrap_or_default(),
            ifname: spec.ifname,
        })
    }

    /// Forget a workload record and free its address (used to roll back a failed attach).
    async fn drop_workload(&self, key: &str) {
        let mut st = self.state.lock().await;
        if let Some(w) = st.workloads.remove(key) {
            if let Some(pool) = st.pools.get_mut(&(w.network.clone(), w.runner.clone())) {
                pool.release(w.ip.addr());
            }
            if let Err(e) = self
                .store
                .commit(&[Change::DeleteWorkload(key.to_string())])
            {
                tracing::error!(error = %e, "rolling back a workload record failed");
            }
        }
    }

    /// Remove a workload's interface and free its address.
    pub async fn detach(&self, req: pb::DetachWorkloadRequest) -> Result<(), HubError> {
        let workload_id = check_workload_id(&req.workload_id)?;
        let net = self.network(&req.network)?.clone();
        let key = workload_key(&net.name, &workload_id);
        let session = {
            let st = self.state.lock().await;
            let w = st.workloads.get(&key).ok_or_else(|| {
                HubError::NotFound(format!(
                    "workload {workload_id:?} is not attached on network {}",
                    net.name
                ))
            })?;
            if !req.runner.is_empty() && w.runner != req.runner {
                return Err(HubError::NotFound(format!(
                    "workload {workload_id:?} is attached on runner {:?}, not {:?}",
                    w.runner, req.runner
                )));
            }
            st.runners.get(&w.runner).and_then(|r| r.session.clone())
        };
        // An unreachable runner drops the interface when its session resumes (sync).
        if let Some(session) = session {
            session
                .command(
                    pb::command::Op::Detach(pb::WorkloadRef {
                        network: net.name.clone(),
                        workload_id: workload_id.clone(),
                    }),
                    COMMAND_TIMEOUT,
                )
                .await?;
        }
        self.drop_workload(&key).await;
        tracing::info!(workload = %workload_id, "workload detached");
        Ok(())
    }

    // ---- status ------------------------------------------------------------------------

    pub async fn status(&self) -> pb::GetStatusResponse {
        let st = self.state.lock().await;
        let now = now_ms();
        let timeout = self.settings.heartbeat_timeout.as_millis() as i64;
        let default = self.network(DEFAULT_NETWORK).ok();
        let mut runners: Vec<pb::RunnerStatus> = st
            .runners
            .values()
            .map(|r| {
                let sub = default.and_then(|n| n.runner_subnet(r.rec.id));
                pb::RunnerStatus {
                    name: r.rec.name.clone(),
                    id: r.rec.id.unwrap_or(0),
                    subnet: sub.map(|s| s.subnet.to_string()).unwrap_or_default(),
                    gateway: sub.map(|s| s.gateway.to_string()).unwrap_or_default(),
                    physical_ip: r.rec.physical_ip.to_string(),
                    active: now - r.last_seen_ms < timeout,
                    last_seen_unix_ms: r.last_seen_ms,
                    labels: r.rec.labels.clone().into_iter().collect(),
                    connected: r.session.is_some(),
                    placeholder: false,
                }
            })
            .collect();
        for p in st.placeholders.values() {
            let sub = default.and_then(|n| n.runner_subnet(Some(p.id)));
            runners.push(pb::RunnerStatus {
                name: String::new(),
                id: p.id,
                subnet: sub.map(|s| s.subnet.to_string()).unwrap_or_default(),
                gateway: sub.map(|s| s.gateway.to_string()).unwrap_or_default(),
                physical_ip: p.physical_ip.to_string(),
                active: false,
                last_seen_unix_ms: p.recovered_ms,
                labels: Default::default(),
                connected: false,
                placeholder: true,
            });
        }
        runners.sort_by_key(|r| (r.id, r.name.clone()));
        let overlay = default.and_then(|n| n.overlay());
        pb::GetStatusResponse {
            plan: overlay.map(|o| o.plan.to_string()).unwrap_or_default(),
            host_ip: overlay
                .map(|o| o.plan.host_ip().to_string())
                .unwrap_or_default(),
            overlay_enabled: self.overlay_enabled(),
            max_runners: overlay.map(|o| o.plan.max_runners()).unwrap_or(0),
            active_runners: runners.iter().filter(|r| r.active).count() as u32,
            workloads: st.workloads.len() as u32,
            runners,
        }
    }

    /// The host tunnels' ifindexes (for status and tests).
    pub async fn tunnel_indexes(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        if let Some(dp) = &self.dataplane {
            for net in self.host_networks() {
                if let Ok(m) = dp.tunnel_indexes(&net).await {
                    out.extend(m);
                }
            }
        }
        out
    }
}

impl State {
    fn take_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }
}

fn taken_ids(st: &State, now: i64, timeout: Duration) -> Vec<TakenId> {
    let timeout = timeout.as_millis() as i64;
    st.runners
        .values()
        .filter_map(|r| {
            Some(TakenId {
                id: r.rec.id?,
                runner: Some(r.rec.name.clone()),
                physical_ip: r.rec.physical_ip,
                last_seen_ms: r.last_seen_ms,
                active: now - r.last_seen_ms < timeout,
            })
        })
        .chain(st.placeholders.values().map(|p| TakenId {
            id: p.id,
            runner: None,
            physical_ip: p.physical_ip,
            last_seen_ms: p.recovered_ms,
            // A placeholder is as protected as a runner during the grace period after recovery.
            active: now - p.recovered_ms < timeout,
        }))
        .collect()
}

fn pool_for<'a>(
    pools: &'a mut HashMap<(String, String), AddressPool>,
    hub: &Hub,
    network: &str,
    runner: &str,
    id: Option<u32>,
) -> Result<&'a mut AddressPool, HubError> {
    let key = (network.to_string(), runner.to_string());
    if !pools.contains_key(&key) {
        let net = hub.network(network)?;
        let sub = net.runner_subnet(id).ok_or_else(|| {
            HubError::FailedPrecondition(format!(
                "runner {runner:?} has no subnet on network {network}"
            ))
        })?;
        let excluded: Vec<(Ipv4Addr, &'static str)> = sub
            .host_side
            .map(|h| (h, "the host's address on the subnet"))
            .into_iter()
            .collect();
        pools.insert(key.clone(), AddressPool::new(sub.subnet, &excluded));
    }
    pools
        .get_mut(&key)
        .ok_or_else(|| HubError::Internal("address pool vanished".into()))
}

fn workload_spec(w: &WorkloadRecord, net: &NetworkDef, gateway: Ipv4Addr) -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        network: w.network.clone(),
        workload_id: w.id.clone(),
        netns: w.netns.display().to_string(),
        ifname: w.ifname.clone(),
        address: w.ip.to_string(),
        gateway: gateway.to_string(),
        mtu: net.mtu,
        default_route: true,
    }
}

fn check_runner_name(name: &str) -> Result<String, HubError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control()) {
        return Err(HubError::InvalidArgument(format!(
            "name: {name:?} must be 1 to 253 printable characters"
        )));
    }
    Ok(name.to_string())
}

/// Workload ids: 1 to 128 characters of `[A-Za-z0-9._:-]` (safe in names, paths and aliases).
pub fn check_workload_id(id: &str) -> Result<String, HubError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(id.to_string())
    } else {
        Err(HubError::InvalidArgument(format!(
            "workload_id: {id:?} must be 1 to 128 characters of letters, digits, '.', '_', '-' or ':'"
        )))
    }
}
