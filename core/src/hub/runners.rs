//! Runners: registration (which id a runner gets), release, cleanup and liveness.
//!
//! Holds `Hub::register`, `Hub::check_liveness`, `Hub::release_runner`,
//! `Hub::cleanup_inactive`, `Hub::list_runners`, `Hub::status`.

use std::net::Ipv4Addr;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use weir_proto::v1 as pb;

use super::{Hub, HubError, RunnerState, State, Txn, brief};
use crate::clock::now_ms;
use crate::decision::{self, Decision, Hook, PlanInfo, Request, RunnerDecision, RunnerRequest};
use crate::ipam::{self, IdChoice, TakenId};
use crate::network::NetworkKind;
use crate::store::{Change, RunnerRecord};

/// How long a topology publication waits for more changes before the next one.
const PUBLISH_GATHER: std::time::Duration = std::time::Duration::from_millis(20);

impl Hub {
    /// A runner joins. Returns everything it needs to build its side.
    pub async fn register(
        self: &Arc<Self>,
        req: pb::RegisterRequest,
    ) -> Result<pb::RegisterResponse, HubError> {
        self.decided(self.register_runner(req)).await
    }

    async fn register_runner(
        self: &Arc<Self>,
        req: pb::RegisterRequest,
    ) -> Result<pb::RegisterResponse, HubError> {
        let name = check_runner_name(&req.name)?;
        let physical_ip: Ipv4Addr = req.physical_ip.trim().parse().map_err(|_| {
            HubError::InvalidArgument(format!(
                "physical_ip: {} is not an IPv4 address",
                brief(&req.physical_ip)
            ))
        })?;
        let labels = req.labels.into_iter().collect();
        super::check_labels(&labels, "labels")?;
        let mut st = self.state.lock().await;
        let now = now_ms();
        let mut txn = Txn::default();
        // Ids come from the primary overlay network's plan; a runner has the same id in every
        // network whose plan has room for it.
        let overlay = self.settings.networks.iter().find_map(|n| n.overlay());
        let prior = st.runners.get(&name).map(|r| r.rec.clone());
        let (id, generation) = match overlay {
            None => (
                None,
                prior
                    .as_ref()
                    .map_or_else(|| st.take_generation(), |p| p.generation),
            ),
            Some(o) => {
                let choice = if self.policy.has(Hook::Allocator) {
                    let taken = taken_ids(&st, now, self.timeout_ms());
                    match self
                        .plugin_runner_id(&name, physical_ip, &labels, &taken, o)
                        .await?
                    {
                        Some(id) => choice_for(id, &name, &taken),
                        None => {
                            ipam::choose_runner_id(&name, physical_ip, &taken, o.plan.max_runners())
                        }
                    }
                } else {
                    builtin_runner_id(&st, &name, physical_ip, now, self.timeout_ms(), o)
                };
                match choice {
                    IdChoice::Keep(id) => (Some(id), prior.as_ref().map_or(1, |p| p.generation)),
                    IdChoice::Claim(id) => {
                        tracing::info!(runner = %name, id, "runner claims a recovered placeholder");
                        st.placeholders.remove(&id);
                        txn.change(Change::DeletePlaceholder(id));
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
                                    &mut txn,
                                    "its id was reclaimed for another runner",
                                );
                            }
                            None => {
                                st.placeholders.remove(&id);
                                txn.change(Change::DeletePlaceholder(id));
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
        if let Some(id) = id {
            for net in self.host_networks() {
                if net.plan.check_runner(u64::from(id)).is_ok() {
                    self.kernel.ensure_tunnel(&net, id, physical_ip).await?;
                }
            }
        }
        let relabelled = prior.as_ref().is_some_and(|p| p.labels != labels);
        let rec = RunnerRecord {
            name: name.clone(),
            id,
            physical_ip,
            labels,
            version: req.version,
            last_seen_ms: now,
            generation,
        };
        txn.change(Change::PutRunner(rec.clone()));
        txn.change(Change::PutMeta(
            "next_generation".into(),
            st.next_generation.to_string(),
        ));
        let changed = prior
            .as_ref()
            .is_some_and(|p| p.generation != generation || p.id != id);
        match &prior {
            None => txn.event(pb::EventKind::RunnerJoined, |e| {
                e.runner = name.clone();
                e.runner_id = id.unwrap_or(0);
                e.detail = format!("physical ip {physical_ip}");
            }),
            Some(p) if changed || p.physical_ip != physical_ip => {
                txn.event(pb::EventKind::AllocationChanged, |e| {
                    e.runner = name.clone();
                    e.runner_id = id.unwrap_or(0);
                    e.detail = format!(
                        "id {:?} -> {:?}, physical ip {} -> {physical_ip}",
                        p.id, id, p.physical_ip
                    );
                })
            }
            Some(_) => {}
        }
        self.commit(&mut st, txn).await?;
        crate::failpoint::hit("hub.register.after-commit");
        if changed && let Some(s) = st.runners.get_mut(&name).and_then(|r| r.session.take()) {
            // The runner's old session belongs to an allocation that no longer exists.
            s.revoke("the allocation changed");
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
        tracing::info!(runner = %name, id = ?id, %physical_ip, "runner registered");
        let answer = self.assignment(&st.runners[&name].rec);
        // The host accepts the runner's VXLAN before it answers (one element; a moved
        // runner's old address leaves with the next publication); the other runners learn of
        // it in the background.
        self.kernel.add_underlay(physical_ip).await?;
        drop(st);
        // Its tunnel may be new (or re-created): the routes to its workloads on flat networks.
        self.sync_flat_routes().await;
        // A runner registering again with the same allocation, address and labels (after its
        // session dropped, or the host restarted) changes no one's topology.
        let moved = relabelled
            || prior
                .as_ref()
                .is_none_or(|p| changed || p.physical_ip != physical_ip);
        if moved {
            self.spawn_publish();
        }
        Ok(answer)
    }

    /// Tell every runner about a change of the runner set, without waiting. Requests made
    /// while a publication runs are folded into one more after it: each publication sends the
    /// whole current topology, so a burst of a thousand registrations costs a few, not a
    /// thousand (each of which would go to every runner).
    pub(super) fn spawn_publish(self: &Arc<Self>) {
        self.publish_again.store(true, Ordering::SeqCst);
        if self.publishing.swap(true, Ordering::SeqCst) {
            return;
        }
        // Only a weak reference while it waits: a hub being dropped (a restart) is not kept
        // alive, with its store open, by a publication nobody needs any more.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                loop {
                    let Some(hub) = weak.upgrade() else { return };
                    if !hub.publish_again.swap(false, Ordering::SeqCst) {
                        break;
                    }
                    hub.publish_topology().await;
                    drop(hub);
                    // Let a burst gather: each publication is a pass over every runner.
                    tokio::time::sleep(PUBLISH_GATHER).await;
                }
                let Some(hub) = weak.upgrade() else { return };
                hub.publishing.store(false, Ordering::SeqCst);
                // A request that came between the last check and the release above found the
                // flag still set and left: take it on, unless another task already has.
                if !hub.publish_again.load(Ordering::SeqCst)
                    || hub.publishing.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }

    /// Remove a runner's allocation, workloads, reservations and pools (memory and `txn`).
    pub(super) fn forget_runner(
        &self,
        st: &mut State,
        name: &str,
        txn: &mut Txn,
        why: &str,
    ) -> Option<RunnerState> {
        let mut gone = st.runners.remove(name)?;
        if let Some(s) = gone.session.take() {
            s.revoke(why);
        }
        txn.change(Change::DeleteRunner(name.to_string()));
        let keys: Vec<String> = st
            .workloads
            .iter()
            .filter(|(_, w)| w.runner == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            // Only stored workloads were ever announced; the others were never acknowledged
            // (attaching) or are already detached (leaving).
            let stored = !st.phases.contains_key(&k);
            let w = st.remove_workload(&k);
            // A flat network's pool is every runner's: hand the address back to it.
            if let Some(w) = &w {
                self.release_address(st, w);
            }
            if let Some(w) = w
                && stored
            {
                txn.change(Change::DeleteWorkload(k));
                txn.event(pb::EventKind::WorkloadDetached, |e| {
                    e.runner = name.to_string();
                    e.network = w.network.clone();
                    e.workload_id = w.id.clone();
                    e.ip = w.ip.to_string();
                    e.origin = w.origin.clone();
                    e.detail = why.to_string();
                });
            }
        }
        let res: Vec<String> = st
            .reservations
            .iter()
            .filter(|(_, r)| r.runner == name)
            .map(|(k, _)| k.clone())
            .collect();
        for id in res {
            if let Some(r) = st.reservations.remove(&id)
                && let Some(p) = st.pools.get_mut(&self.pool_key(&r.network, &r.runner))
            {
                p.release(r.ip);
            }
            txn.change(Change::DeleteReservation(id));
            txn.unit();
        }
        st.pools.retain(|(_, runner), _| runner != name);
        txn.event(pb::EventKind::RunnerLeft, |e| {
            e.runner = name.to_string();
            e.runner_id = gone.rec.id.unwrap_or(0);
            e.detail = why.to_string();
        });
        Some(gone)
    }

    pub(super) fn assignment(&self, rec: &RunnerRecord) -> pb::RegisterResponse {
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
                    egress: n.egress.as_str().into(),
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
                        a.direct_prefix = o.direct_prefix.clone();
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
            workload_grace_ms: u32::try_from(self.settings.workload_grace.as_millis())
                .unwrap_or(u32::MAX),
        }
    }

    /// Report runners that became inactive (no heartbeat within the timeout) or active again.
    pub async fn check_liveness(&self) {
        let mut st = self.state.lock().await;
        let now = now_ms();
        let timeout = self.timeout_ms();
        let mut txn = Txn::default();
        for r in st.runners.values_mut() {
            let active = now - r.last_seen_ms < timeout;
            if active == r.was_active {
                continue;
            }
            r.was_active = active;
            r.rec.last_seen_ms = r.last_seen_ms;
            txn.change(Change::PutRunner(r.rec.clone()));
            let (kind, msg) = if active {
                (pb::EventKind::RunnerActive, "runner active again")
            } else {
                (
                    pb::EventKind::RunnerInactive,
                    "runner inactive: no heartbeat within the timeout",
                )
            };
            if active {
                tracing::info!(runner = %r.rec.name, "{msg}");
            } else {
                tracing::warn!(runner = %r.rec.name, timeout_ms = timeout, "{msg}");
            }
            txn.event(kind, |e| {
                e.runner = r.rec.name.clone();
                e.runner_id = r.rec.id.unwrap_or(0);
            });
        }
        if let Err(e) = self.commit(&mut st, txn).await {
            tracing::error!(error = %e, "persisting runner liveness failed");
        }
    }

    /// Release a runner (by name, or a placeholder by `#id`): its tunnel, allocation,
    /// reservations and workloads go; a connected runner is told and registers again.
    pub async fn release_runner(
        self: &Arc<Self>,
        runner: &str,
    ) -> Result<pb::ReleaseRunnerResponse, HubError> {
        let runner = runner.trim();
        if runner.is_empty() {
            return Err(HubError::InvalidArgument(
                "runner: give a runner name (or #ID for a placeholder)".into(),
            ));
        }
        let mut st = self.state.lock().await;
        let mut txn = Txn::default();
        if let Some(id) = runner.strip_prefix('#') {
            let id: u32 = id.parse().map_err(|_| {
                HubError::InvalidArgument(format!("runner: {} is not #ID", brief(runner)))
            })?;
            if !st.placeholders.contains_key(&id) {
                return Err(HubError::NotFound(format!(
                    "runner: no placeholder holds id {id}"
                )));
            }
            self.remove_tunnel(id).await?;
            st.placeholders.remove(&id);
            txn.change(Change::DeletePlaceholder(id));
            txn.event(pb::EventKind::RunnerLeft, |e| {
                e.runner_id = id;
                e.detail = "placeholder released".into();
            });
            self.commit(&mut st, txn).await?;
            drop(st);
            self.spawn_publish();
            return Ok(pb::ReleaseRunnerResponse {
                released_id: id,
                workloads_removed: 0,
            });
        }
        let Some(r) = st.runners.get(runner) else {
            return Err(HubError::NotFound(format!(
                "runner: {} is not registered",
                brief(runner)
            )));
        };
        let id = r.rec.id;
        let workloads = st.workloads.values().filter(|w| w.runner == runner).count() as u32;
        if let Some(id) = id {
            self.remove_tunnel(id).await?;
        }
        self.forget_runner(&mut st, runner, &mut txn, "released by an operator");
        self.commit(&mut st, txn).await?;
        drop(st);
        self.spawn_publish();
        tracing::info!(runner, id = ?id, workloads, "runner released");
        Ok(pb::ReleaseRunnerResponse {
            released_id: id.unwrap_or(0),
            workloads_removed: workloads,
        })
    }

    /// Release every inactive runner and every placeholder whose grace period is over.
    pub async fn cleanup_inactive(
        self: &Arc<Self>,
    ) -> Result<pb::CleanupInactiveResponse, HubError> {
        let mut st = self.state.lock().await;
        let now = now_ms();
        let timeout = self.timeout_ms();
        let names: Vec<String> = st
            .runners
            .values()
            .filter(|r| now - r.last_seen_ms >= timeout)
            .map(|r| r.rec.name.clone())
            .collect();
        let placeholders: Vec<u32> = st
            .placeholders
            .values()
            .filter(|p| now - p.recovered_ms >= timeout)
            .map(|p| p.id)
            .collect();
        let mut txn = Txn::default();
        let mut released = Vec::new();
        for name in names {
            if let Some(id) = st.runners.get(&name).and_then(|r| r.rec.id) {
                self.remove_tunnel(id).await?;
            }
            self.forget_runner(&mut st, &name, &mut txn, "inactive runner cleaned up");
            released.push(name);
        }
        for id in placeholders {
            self.remove_tunnel(id).await?;
            st.placeholders.remove(&id);
            txn.change(Change::DeletePlaceholder(id));
            txn.event(pb::EventKind::RunnerLeft, |e| {
                e.runner_id = id;
                e.detail = "placeholder cleaned up".into();
            });
            released.push(format!("#{id}"));
        }
        self.commit(&mut st, txn).await?;
        drop(st);
        if !released.is_empty() {
            self.spawn_publish();
        }
        Ok(pb::CleanupInactiveResponse {
            released: released.len() as u32,
            runners: released,
        })
    }

    async fn remove_tunnel(&self, id: u32) -> Result<(), HubError> {
        for net in self.host_networks() {
            self.kernel.remove_tunnel(&net, id).await?;
        }
        Ok(())
    }

    pub async fn list_runners(&self) -> Vec<pb::RunnerStatus> {
        let st = self.state.lock().await;
        self.runner_statuses(&st)
    }

    fn runner_statuses(&self, st: &State) -> Vec<pb::RunnerStatus> {
        let now = now_ms();
        let timeout = self.timeout_ms();
        let default = self.network("").ok();
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
                    workloads: st
                        .workloads
                        .values()
                        .filter(|w| w.runner == r.rec.name)
                        .count() as u32,
                    version: r.rec.version.clone(),
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
                workloads: 0,
                version: String::new(),
            });
        }
        runners.sort_by_key(|r| (r.id, r.name.clone()));
        runners
    }

    pub async fn status(&self) -> pb::GetStatusResponse {
        let st = self.state.lock().await;
        let runners = self.runner_statuses(&st);
        let overlay = self.network("").ok().and_then(|n| n.overlay());
        let mut status = pb::GetStatusResponse {
            plan: overlay.map(|o| o.plan.to_string()).unwrap_or_default(),
            host_ip: overlay
                .map(|o| o.plan.host_ip().to_string())
                .unwrap_or_default(),
            overlay_enabled: self.overlay_enabled(),
            max_runners: overlay.map(|o| o.plan.max_runners()).unwrap_or(0),
            active_runners: runners.iter().filter(|r| r.active).count() as u32,
            inactive_runners: runners
                .iter()
                .filter(|r| !r.active && !r.placeholder)
                .count() as u32,
            placeholders: runners.iter().filter(|r| r.placeholder).count() as u32,
            workloads: st.workloads.len() as u32,
            reservations: st
                .reservations
                .values()
                .filter(|r| r.used_by.is_none())
                .count() as u32,
            networks: self.network_statuses(&st),
            runners,
            last_event_seq: st.next_event.saturating_sub(1),
            host_version: env!("CARGO_PKG_VERSION").into(),
            hosts: Vec::new(),
            leader_term: 0,
        };
        drop(st);
        if let Some(l) = &self.settings.leadership {
            status.hosts = l.hosts.hosts().await;
            status.leader_term = l.fence().term;
        }
        status
    }

    fn network_statuses(&self, st: &State) -> Vec<pb::NetworkStatus> {
        self.settings
            .networks
            .iter()
            .map(|n| {
                let o = n.overlay();
                pb::NetworkStatus {
                    name: n.name.clone(),
                    mode: if o.is_some() { "overlay" } else { "isolated" }.into(),
                    plan: o.map(|o| o.plan.to_string()).unwrap_or_default(),
                    host_ip: o.map(|o| o.plan.host_ip().to_string()).unwrap_or_default(),
                    vxlan_id_base: o.map_or(0, |o| o.vxlan_id_base),
                    masquerade: n.masquerade,
                    egress: n.egress.as_str().into(),
                    runners: st
                        .runners
                        .values()
                        .filter(|r| n.runner_subnet(r.rec.id).is_some())
                        .count() as u32,
                    workloads: st
                        .workloads
                        .values()
                        .filter(|w| w.network == n.name)
                        .count() as u32,
                    reservations: st
                        .reservations
                        .values()
                        .filter(|r| r.network == n.name && r.used_by.is_none())
                        .count() as u32,
                    max_runners: o.map_or(0, |o| o.plan.max_runners()),
                }
            })
            .collect()
    }
}

impl Hub {
    /// The allocator plugin's id for a registering runner; `None`: the built-in policy decides.
    async fn plugin_runner_id(
        &self,
        name: &str,
        physical_ip: Ipv4Addr,
        labels: &std::collections::BTreeMap<String, String>,
        taken: &[TakenId],
        o: &crate::network::OverlayDef,
    ) -> Result<Option<u32>, HubError> {
        if !self.policy.has(Hook::Allocator) {
            return Ok(None);
        }
        let req = Request::AssignRunner(RunnerRequest {
            network: self.network("").map(|n| n.name.clone()).unwrap_or_default(),
            name: name.into(),
            physical_ip,
            labels: labels.clone(),
            taken: taken
                .iter()
                .map(|t| decision::TakenId {
                    id: t.id,
                    runner: t.runner.clone(),
                    physical_ip: t.physical_ip,
                    last_seen_ms: t.last_seen_ms,
                    active: t.active,
                })
                .collect(),
            plan: PlanInfo {
                spec: o.plan.to_string(),
                overlay: o.plan.overlay(),
                max_runners: o.plan.max_runners(),
            },
        });
        match self.policy.decide(&req).await? {
            Some(Decision::Runner(RunnerDecision::Id(id))) => Ok(Some(id)),
            _ => Ok(None),
        }
    }
}

/// What taking `id` means for the current holders (the plugin's output was validated: `id` is
/// in the plan and not held by another active runner).
fn choice_for(id: u32, name: &str, taken: &[TakenId]) -> IdChoice {
    match taken.iter().find(|t| t.id == id) {
        None => IdChoice::Fresh(id),
        Some(t) if t.runner.as_deref() == Some(name) => IdChoice::Keep(id),
        Some(t) if t.runner.is_none() => IdChoice::Claim(id),
        Some(t) => IdChoice::Reclaim {
            id,
            from: t.runner.clone(),
        },
    }
}

/// The built-in choice, as `ipam::choose_runner_id` makes it, without a list of every taken
/// id for the common cases: a runner that holds an id keeps it (one lookup), a placeholder
/// is claimed by its address (placeholders are few), a fresh id is the lowest free one (one
/// pass over a bitmap of the ids in use, no allocation per runner). Only a full plan builds
/// the list, to find the allocation to reclaim.
fn builtin_runner_id(
    st: &State,
    name: &str,
    physical_ip: Ipv4Addr,
    now: i64,
    timeout: i64,
    o: &crate::network::OverlayDef,
) -> IdChoice {
    if let Some(id) = st.runners.get(name).and_then(|r| r.rec.id) {
        return IdChoice::Keep(id);
    }
    if let Some(p) = st
        .placeholders
        .values()
        .find(|p| p.physical_ip == physical_ip)
    {
        return IdChoice::Claim(p.id);
    }
    let max = o.plan.max_runners();
    // With n ids in use the lowest free one is at most n + 1: the bitmap never outgrows the
    // runners, whatever the plan allows.
    let held = st.runners.len() + st.placeholders.len();
    let limit = max.min(u32::try_from(held).unwrap_or(u32::MAX).saturating_add(1));
    let mut used = vec![false; limit as usize + 1];
    for id in st
        .runners
        .values()
        .filter_map(|r| r.rec.id)
        .chain(st.placeholders.keys().copied())
    {
        if let Some(u) = used.get_mut(id as usize) {
            *u = true;
        }
    }
    match (1..=limit).find(|id| !used[*id as usize]) {
        Some(id) => IdChoice::Fresh(id),
        None => ipam::choose_runner_id(name, physical_ip, &taken_ids(st, now, timeout), max),
    }
}

fn taken_ids(st: &State, now: i64, timeout: i64) -> Vec<TakenId> {
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
            // A placeholder is as protected as a runner during the grace after recovery.
            active: now - p.recovered_ms < timeout,
        }))
        .collect()
}

fn check_runner_name(name: &str) -> Result<String, HubError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control() || c == '#') {
        return Err(HubError::InvalidArgument(format!(
            "name: {} must be 1 to 253 printable characters without '#'",
            brief(name)
        )));
    }
    Ok(name.to_string())
}
