//! Workloads: attach (which address a workload gets), detach, list.
//!
//! Holds `Hub::attach`, `Hub::detach`, `Hub::workloads_gone`, `Hub::list_workloads`, and the
//! steps between the hub's decision and the runner's confirmation.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;
use opentelemetry::KeyValue;
use weir_proto::v1 as pb;

use super::session::{Answer, Readiness, SessionHandle};
use super::{Hub, HubError, Phase, State, Txn, brief, check_workload_id};
use crate::clock::now_ms;
use crate::dataplane::attach;
use crate::decision::{
    AddressDecision, AddressRequest, Decision, FirewallRequest, Hook, Origin, Request,
};
use crate::failpoint;
use crate::network::NetworkDef;
use crate::store::{Change, NamespaceId, WorkloadRecord, workload_key};
use crate::telemetry::metrics::{metrics, outcome};

use super::request::{AddressSource, AttachRequest};
use crate::agent::error::ADDRESS_IN_USE;

/// How many other addresses an attach tries when runners find its address in use.
const CONFLICT_RETRIES: u32 = 8;

impl Hub {
    /// Give a workload an interface on its runner's network (timed as `weir.attach.duration`).
    pub async fn attach(
        self: &Arc<Self>,
        req: AttachRequest,
    ) -> Result<pb::AttachWorkloadResponse, HubError> {
        let network = self.network_attr(&req.network);
        let started = Instant::now();
        // An address the runner finds in use on its bridge is never handed out: the next one
        // is tried (it was blocked when the runner refused it), a few times.
        let mut tries = 0;
        let r = loop {
            match self.decided(self.attach_workload(req.clone())).await {
                Err(HubError::AddressInUse(why))
                    if req.address == AddressSource::Next && tries < CONFLICT_RETRIES =>
                {
                    tracing::warn!(workload = %req.workload_id, runner = %req.runner, %why, "trying another address");
                    tries += 1;
                }
                r => break r,
            }
        };
        metrics().attach_duration.record(
            started.elapsed().as_secs_f64(),
            &[network, KeyValue::new("outcome", outcome(&r))],
        );
        r
    }

    /// Count an attach refused before it reached the hub (its request did not parse), so
    /// `weir.attach.duration` counts every call, refused ones under `outcome="error"`.
    pub fn count_unparsed_attach(&self, network: &str, started: Instant) {
        metrics().attach_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                self.network_attr(network),
                KeyValue::new("outcome", "error"),
            ],
        );
    }

    /// Remove a workload's interface and free its address (timed as `weir.detach.duration`).
    pub async fn detach(self: &Arc<Self>, req: pb::DetachWorkloadRequest) -> Result<(), HubError> {
        let network = self.network_attr(&req.network);
        let started = Instant::now();
        let r = self.detach_workload(req).await;
        metrics().detach_duration.record(
            started.elapsed().as_secs_f64(),
            &[network, KeyValue::new("outcome", outcome(&r))],
        );
        r
    }

    /// The `network` metric attribute: a configured network's name, never a caller's string.
    fn network_attr(&self, requested: &str) -> KeyValue {
        let name = self
            .network(requested)
            .map(|n| n.name.clone())
            .unwrap_or_else(|_| "unknown".into());
        KeyValue::new("network", name)
    }

    async fn attach_workload(
        self: &Arc<Self>,
        req: AttachRequest,
    ) -> Result<pb::AttachWorkloadResponse, HubError> {
        // A store known to be unreachable could not make the attach durable: refuse before
        // the runner builds anything.
        self.store.writable()?;
        let net = self.network_for(&req.network, req.vm)?.clone();
        let AttachRequest {
            runner,
            workload_id,
            netns,
            vm,
            labels,
            address: source,
            origin,
            ifname,
            handoff,
            adopt,
            ..
        } = req;
        let auto_address = source == AddressSource::Next;
        let key = workload_key(&net.name, &workload_id);
        // The whole plan (session, decision, record, subnet) is made under one lock. Workload
        // commands wait until the session's first sync is answered: only then does the hub
        // know every address the runner still holds.
        let mut waited = false;
        let (rec, session, fresh, sub, runner_id) = loop {
            let mut st = self.state.lock().await;
            let session = self.usable_session(&st, &runner)?;
            if session.readiness() != Readiness::Ready {
                drop(st);
                if waited {
                    return Err(HubError::Unavailable(format!(
                        "runner {runner:?} reconnected and is synchronising its workloads; retry shortly"
                    )));
                }
                session.ready(self.command_timeout()).await?;
                waited = true;
                continue;
            }
            let id = st.runners.get(&runner).and_then(|r| r.rec.id);
            let sub = net.runner_subnet(id).ok_or_else(|| {
                HubError::FailedPrecondition(format!(
                    "runner {runner:?} has no subnet on network {}",
                    net.name
                ))
            })?;
            if let Some(existing) = st.workloads.get(&key) {
                match st.phases.get(&key) {
                    Some(Phase::Leaving) => {
                        return Err(HubError::Unavailable(format!(
                            "workload_id: {} is being removed from runner {:?} (its runner has not confirmed yet); retry shortly",
                            brief(&workload_id),
                            existing.runner
                        )));
                    }
                    Some(Phase::Attaching) => {
                        return Err(HubError::Unavailable(format!(
                            "workload_id: {} is being attached by another call; retry once it has answered",
                            brief(&workload_id)
                        )));
                    }
                    None => {}
                }
                self.same_attach(existing, &runner, &netns, vm, &labels, &source, &st)?;
                same_origin(existing, &origin, ifname.as_deref())?;
                // A repeat on another runner was refused above: the subnet is the record's.
                break (existing.clone(), session, false, sub, id);
            }
            let source = self
                .plugin_address(
                    &mut st,
                    &net,
                    &runner,
                    &workload_id,
                    vm,
                    &labels,
                    &origin,
                    source,
                )
                .await?;
            let rec = self
                .allocate(
                    &mut st,
                    &net,
                    &runner,
                    &workload_id,
                    netns,
                    vm,
                    labels,
                    source,
                    origin.clone(),
                    ifname.clone(),
                    handoff,
                    adopt.as_ref().map(|a| a.mac.clone()),
                )
                .await?;
            break (rec, session, true, sub, id);
        };
        let mut spec = workload_spec(&rec, &net, sub, self.settings.networks.len() > 1);
        if fresh && let Some(a) = &adopt {
            spec.adopt_port = a.port.clone();
        }
        failpoint::hit("hub.attach.before-send");
        let pending = match session
            .enqueue(
                pb::command::Op::Attach(spec.clone()),
                Some(self.command_timeout()),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                // Never sent: nothing to undo on the runner.
                if fresh {
                    self.forget_unapplied(&key).await;
                }
                return Err(e);
            }
        };
        failpoint::hit("hub.attach.after-send");
        let answer = session.wait(pending, self.command_timeout()).await;
        failpoint::hit("hub.attach.after-answer");
        let result = match answer {
            Answer::Done(r) if r.error.is_empty() => {
                if fresh {
                    self.confirm_attach(&key, r.netns_id).await
                } else {
                    Ok(())
                }
            }
            Answer::Done(r)
                if fresh && r.nothing_applied && r.error.starts_with(ADDRESS_IN_USE) =>
            {
                self.forget_unapplied(&key).await;
                self.block_conflicting(&rec, &r.error).await;
                Err(HubError::AddressInUse(match auto_address {
                    true => r.error,
                    false => format!("requested_ip: {}", r.error),
                }))
            }
            Answer::Done(r) => {
                // The runner removed what it had begun (or never began): nothing to ask it.
                if fresh && r.nothing_applied {
                    self.forget_unapplied(&key).await;
                }
                Err(HubError::Runner(r.error))
            }
            Answer::Lost => Err(HubError::Unavailable(format!(
                "runner {:?} disconnected before answering; the attach was not acknowledged and is undone",
                rec.runner
            ))),
            Answer::Late(_) => Err(HubError::Unavailable(format!(
                "runner {:?} did not answer within {}s; the attach was not acknowledged and is undone",
                rec.runner,
                self.command_timeout().as_secs()
            ))),
        };
        if let Err(e) = result {
            // The runner may hold some of it (it was busy, it failed half-way, the answer was
            // lost): its address stays taken until the runner confirms it holds nothing.
            if fresh {
                self.undo_attach(&key).await;
            }
            return Err(e);
        }
        failpoint::hit("hub.attach.after-commit");
        if fresh {
            if let Some(id) = runner_id {
                self.route_flat_address(&net.name, id, rec.ip.addr()).await;
                self.forget_neighbour(&net.name, id, rec.ip.addr()).await;
            }
            self.publish_peer(Some(&rec), None).await;
        }
        tracing::info!(workload = %workload_id, runner = %rec.runner, ip = %rec.ip, vm, "workload attached");
        Ok(pb::AttachWorkloadResponse {
            workload_id,
            runner: rec.runner.clone(),
            network: net.name.clone(),
            ip: rec.ip.to_string(),
            gateway: spec.gateway,
            mtu: spec.mtu,
            host_ip: net
                .overlay()
                .map(|o| o.plan.host_ip().addr().to_string())
                .unwrap_or_default(),
            ifname: rec.ifname.clone(),
            prefix: u32::from(rec.ip.prefix_len()),
            mac: if !rec.mac.is_empty() {
                rec.mac.clone()
            } else {
                attach::mac_string(attach::container_mac(&net.name, &rec.id))
            },
            host_mac: if vm {
                String::new()
            } else {
                attach::mac_string(attach::host_mac(&net.name, &rec.id))
            },
            dns: self.settings.dns.iter().map(|d| d.to_string()).collect(),
            kind: if vm {
                pb::WorkloadKind::Vm
            } else {
                pb::WorkloadKind::Container
            } as i32,
            host_ifname: if vm {
                rec.ifname.clone()
            } else {
                attach::host_ifname(&net.name, &rec.id)
            },
            default_route: rec.default_route,
        })
    }

    /// The session of a runner that may take workload commands now.
    fn usable_session(&self, st: &State, runner: &str) -> Result<SessionHandle, HubError> {
        let r = st.runners.get(runner).ok_or_else(|| {
            HubError::NotFound(format!("runner: {} is not registered", brief(runner)))
        })?;
        if now_ms() - r.last_seen_ms >= self.timeout_ms() {
            return Err(HubError::FailedPrecondition(format!(
                "runner {runner:?} is inactive"
            )));
        }
        r.session.clone().ok_or_else(|| {
            HubError::FailedPrecondition(format!("runner {runner:?} is not connected"))
        })
    }

    /// A repeated attach must ask for what the first one got; otherwise it is refused, naming
    /// the field that differs.
    #[allow(clippy::too_many_arguments)]
    fn same_attach(
        &self,
        existing: &WorkloadRecord,
        runner: &str,
        netns: &Path,
        vm: bool,
        labels: &BTreeMap<String, String>,
        source: &AddressSource,
        st: &State,
    ) -> Result<(), HubError> {
        let id = brief(&existing.id);
        let differs = |field: &str, had: String, asked: String| {
            Err(HubError::AlreadyExists(format!(
                "{field}: workload_id {id} is already attached with {field} {had}, not {asked}; detach it first to change it"
            )))
        };
        if existing.runner != runner {
            return differs("runner", format!("{:?}", existing.runner), brief(runner));
        }
        if existing.vm != vm {
            let kind = |vm: bool| if vm { "vm" } else { "container" }.to_string();
            return differs("kind", kind(existing.vm), kind(vm));
        }
        if existing.netns != netns {
            return differs(
                "netns",
                format!("{:?}", existing.netns.display().to_string()),
                brief(&netns.display().to_string()),
            );
        }
        if &existing.labels != labels {
            return differs(
                "labels",
                format!("{:?}", existing.labels),
                brief(&format!("{labels:?}")),
            );
        }
        match source {
            AddressSource::Next => Ok(()),
            AddressSource::Requested(ip) if *ip == existing.ip.addr() => Ok(()),
            AddressSource::Requested(ip) => differs(
                "requested_ip",
                existing.ip.addr().to_string(),
                ip.to_string(),
            ),
            AddressSource::Reservation(token) => {
                let asked = self.lookup(st, token).map(|r| r.id.clone()).ok();
                if asked.is_some() && asked == existing.reservation {
                    Ok(())
                } else {
                    differs(
                        "reservation_token",
                        format!(
                            "of reservation {}",
                            existing.reservation.as_deref().unwrap_or("(none)")
                        ),
                        "another token".into(),
                    )
                }
            }
        }
    }

    /// Pick the address, ask the firewall plugin for the workload's rules, and hold both, in
    /// memory and in the store (the runner is asked next) — one durable commit. Whatever fails
    /// gives the address (or the reservation) back.
    #[allow(clippy::too_many_arguments)]
    async fn allocate(
        &self,
        st: &mut State,
        net: &NetworkDef,
        runner: &str,
        workload_id: &str,
        netns: PathBuf,
        vm: bool,
        labels: BTreeMap<String, String>,
        source: AddressSource,
        origin: String,
        ifname: Option<String>,
        handoff: bool,
        adopted_mac: Option<String>,
    ) -> Result<WorkloadRecord, HubError> {
        let prefix = net
            .runner_subnet(st.runners.get(runner).and_then(|r| r.rec.id))
            .ok_or_else(|| {
                HubError::FailedPrecondition(format!(
                    "runner {runner:?} has no subnet on network {}",
                    net.name
                ))
            })?
            .subnet
            .prefix_len();
        // A workload on several networks has one interface per network: eth0, eth1, … in the
        // order it joined them; the first carries the default route.
        // Looked up by key, network by network: a scan of every workload would make each
        // attach cost more than the one before.
        let siblings: Vec<&WorkloadRecord> = self
            .settings
            .networks
            .iter()
            .filter(|n| n.name != net.name)
            .filter_map(|n| st.workloads.get(&workload_key(&n.name, workload_id)))
            .collect();
        if let Some(w) = siblings
            .iter()
            .find(|w| w.runner != runner || w.netns != netns || w.vm != vm)
        {
            return Err(HubError::AlreadyExists(format!(
                "workload_id: {workload_id:?} is attached on network {} on runner {:?} ({}); all of a workload's networks must be on the same runner and {}",
                w.network,
                w.runner,
                if w.vm {
                    "a VM".to_string()
                } else {
                    w.netns.display().to_string()
                },
                if vm { "be VMs" } else { "namespace" }
            )));
        }
        let (ifname, mac) = if vm {
            (
                attach::tap_ifname(&net.name, workload_id),
                attach::vm_mac(&net.name, workload_id),
            )
        } else if handoff {
            (
                attach::handoff_ifname(&net.name, workload_id),
                String::new(),
            )
        } else if let Some(name) = ifname {
            if let Some(w) = siblings.iter().find(|w| w.ifname == name) {
                return Err(HubError::AlreadyExists(format!(
                    "ifname: {name} is already the workload's interface on network {}",
                    w.network
                )));
            }
            (name, adopted_mac.unwrap_or_default())
        } else {
            let free = (0..)
                .map(|k| format!("eth{k}"))
                .find(|name| !siblings.iter().any(|w| &w.ifname == name))
                .unwrap_or_else(|| "eth0".into());
            (free, String::new())
        };
        let default_route = siblings.is_empty();
        let mut reservation = None;
        let ip = match source {
            AddressSource::Next => self
                .pool(st, &net.name, runner)?
                .take_next()
                .map_err(|e| HubError::ResourceExhausted(e.to_string()))?,
            AddressSource::Requested(ip) => {
                let conflict = (net.name.clone(), runner.to_string(), ip);
                if let Some(why) = st.conflicts.get(&conflict) {
                    return Err(HubError::AddressInUse(format!("requested_ip: {why}")));
                }
                self.pool(st, &net.name, runner)?
                    .take(ip)
                    .map_err(|e| super::reservations::address_error("requested_ip", e))?;
                ip
            }
            AddressSource::Reservation(token) => {
                let r = self.claim_reservation(st, &token, runner, &net.name, workload_id)?;
                reservation = Some(r.id.clone());
                r.ip
            }
        };
        let rec = WorkloadRecord {
            network: net.name.clone(),
            id: workload_id.to_string(),
            runner: runner.to_string(),
            // The prefix is a subnet's: at most 32.
            ip: Ipv4Net::new(ip, prefix).unwrap_or_else(|_| Ipv4Net::from(ip)),
            netns,
            ifname,
            labels,
            created_ms: now_ms(),
            vm,
            mac,
            reservation,
            firewall: None,
            firewall_monitor: false,
            default_route,
            netns_id: None,
            origin,
            handoff,
        };
        match self.hold(st, rec.clone()).await {
            Ok(held) => Ok(held),
            Err(e) => {
                self.give_back(st, &rec);
                Err(e)
            }
        }
    }

    /// The firewall plugin's rules for a new workload, then the record in memory, as
    /// attaching: the store gets it (with its event) once the runner confirmed.
    async fn hold(
        &self,
        st: &mut State,
        mut rec: WorkloadRecord,
    ) -> Result<WorkloadRecord, HubError> {
        if self.policy.has(Hook::Firewall) {
            let mut groups: Vec<BTreeMap<String, String>> = st
                .label_sets
                .get(&rec.network)
                .map(|sets| sets.keys().take(1000).cloned().collect())
                .unwrap_or_default();
            if !rec.labels.is_empty() && !groups.contains(&rec.labels) {
                groups.push(rec.labels.clone());
            }
            let req = Request::Rules(FirewallRequest {
                network: rec.network.clone(),
                workload_id: rec.id.clone(),
                labels: rec.labels.clone(),
                runner: rec.runner.clone(),
                address: rec.ip.addr(),
                origin: Origin::parse(&rec.origin),
                groups,
            });
            if let Some((Decision::Firewall(d), monitor)) =
                self.policy.decide_or_monitor(&req).await?
            {
                rec.firewall = Some(super::firewall::record(d));
                rec.firewall_monitor = monitor;
            }
        }
        let key = rec.key();
        st.insert_workload(key.clone(), rec.clone());
        st.phases.insert(key, Phase::Attaching);
        Ok(rec)
    }

    /// Ask the allocator plugin which address a new workload gets. An explicit address (asked
    /// for, or reserved) stays; the plugin may still refuse the attach.
    #[allow(clippy::too_many_arguments)]
    async fn plugin_address(
        &self,
        st: &mut State,
        net: &NetworkDef,
        runner: &str,
        workload_id: &str,
        vm: bool,
        labels: &BTreeMap<String, String>,
        origin: &str,
        source: AddressSource,
    ) -> Result<AddressSource, HubError> {
        if !self.policy.has(Hook::Allocator) {
            return Ok(source);
        }
        let runner_labels = st
            .runners
            .get(runner)
            .map(|r| r.rec.labels.clone())
            .unwrap_or_default();
        let id = st.runners.get(runner).and_then(|r| r.rec.id);
        let sub = net.runner_subnet(id).ok_or_else(|| {
            HubError::FailedPrecondition(format!(
                "runner {runner:?} has no subnet on network {}",
                net.name
            ))
        })?;
        let pool = self.pool(st, &net.name, runner)?;
        let (first, last) = pool.range();
        let req = Request::AssignAddress(AddressRequest {
            network: net.name.clone(),
            workload_id: workload_id.into(),
            vm,
            origin: Origin::parse(origin),
            labels: labels.clone(),
            runner: runner.into(),
            runner_labels,
            subnet: sub.subnet,
            gateway: sub.gateway,
            first,
            last,
            // Shared with the pool, not copied; gone when this returns, before the pool changes.
            pool: pool.view(),
        });
        Ok(match (self.policy.decide(&req).await?, source) {
            (Some(Decision::Address(AddressDecision::Address(a))), AddressSource::Next) => {
                AddressSource::Requested(a)
            }
            (_, source) => source,
        })
    }

    /// The runner confirmed a new workload: its record, its reservation's use and its events
    /// become durable in one transaction. Until then nothing of it was in the store, so a
    /// host killed before this point leaves no trace of it (the runner's next sync removes
    /// the interface, and the caller never had an answer).
    async fn confirm_attach(
        &self,
        key: &str,
        netns_id: Option<pb::NetnsIdentity>,
    ) -> Result<(), HubError> {
        let mut st = self.state.lock().await;
        if st.phases.get(key) != Some(&Phase::Attaching) {
            // A concurrent identical attach confirmed it first.
            return match st.phases.get(key) {
                None if st.workloads.contains_key(key) => Ok(()),
                _ => Err(HubError::Unavailable(format!(
                    "workload {} was removed while it was being attached",
                    brief(key.split('\u{0}').nth(1).unwrap_or(key))
                ))),
            };
        }
        let Some(rec) = st.workloads.get_mut(key) else {
            return Err(HubError::Internal("an attaching record vanished".into()));
        };
        rec.netns_id = netns_id.map(|n| NamespaceId {
            dev: n.dev,
            ino: n.ino,
        });
        let rec = rec.clone();
        let mut txn = Txn::default();
        txn.change(Change::PutWorkload(rec.clone()));
        if let Some(r) = rec
            .reservation
            .as_ref()
            .and_then(|id| st.reservations.get(id))
        {
            txn.change(Change::PutReservation(r.clone()));
            txn.event(pb::EventKind::ReservationUsed, |e| {
                e.runner = rec.runner.clone();
                e.network = rec.network.clone();
                e.workload_id = rec.id.clone();
                e.ip = rec.ip.addr().to_string();
                e.reservation_id = r.id.clone();
            });
        }
        txn.event(pb::EventKind::WorkloadAttached, |e| {
            e.runner = rec.runner.clone();
            e.network = rec.network.clone();
            e.workload_id = rec.id.clone();
            e.ip = rec.ip.to_string();
            e.reservation_id = rec.reservation.clone().unwrap_or_default();
            e.origin = rec.origin.clone();
            e.detail = if rec.vm {
                "vm".into()
            } else {
                "container".into()
            };
        });
        self.commit(&mut st, txn).await?;
        st.phases.remove(key);
        Ok(())
    }

    /// The host's neighbour entry for a freshly attached address may still name the MAC of
    /// the workload that held it before; forget it so the host's next packet asks anew.
    /// Best effort: a failure leaves only the (lossy) gratuitous ARP to correct it.
    async fn forget_neighbour(&self, network: &str, runner_id: u32, ip: Ipv4Addr) {
        let Some(net) = self.host_networks().into_iter().find(|n| n.name == network) else {
            return;
        };
        if let Err(e) = self.kernel.forget_neighbour(&net, runner_id, ip).await {
            tracing::warn!(network, %ip, error = %e, "cannot forget the host's neighbour entry for a reused address");
        }
    }

    /// On a flat network the host routes each workload's address to its runner's tunnel (the
    /// address says nothing of the runner). Added before the attach is answered; a failure is
    /// logged and repaired by the next sync (the runner's next registration, the host's
    /// restart, a detach).
    async fn route_flat_address(&self, network: &str, runner_id: u32, ip: Ipv4Addr) {
        if !self.has_flat_network() {
            return;
        }
        let Some(net) = self
            .host_networks()
            .into_iter()
            .find(|n| n.name == network && n.plan.is_flat())
        else {
            return;
        };
        let _held = self.flat_routes.lock().await;
        if let Err(e) = self.kernel.route_address(&net, runner_id, ip).await {
            tracing::error!(network, %ip, error = %e, "cannot route a flat network's workload address to its runner");
        }
    }

    /// Whether any network has a flat plan (checked without building the host's networks:
    /// attach, detach and registration ask it every time).
    fn has_flat_network(&self) -> bool {
        self.settings
            .networks
            .iter()
            .any(|n| n.overlay().is_some_and(|o| o.plan.is_flat()))
    }

    /// Make the host's routes to every flat network's workloads match what the hub holds
    /// (nothing to do without a flat network).
    pub(super) async fn sync_flat_routes(&self) {
        if !self.has_flat_network() {
            return;
        }
        let nets: Vec<super::HostNetwork> = self
            .host_networks()
            .into_iter()
            .filter(|n| n.plan.is_flat())
            .collect();
        let _held = self.flat_routes.lock().await;
        let wants: Vec<(super::HostNetwork, BTreeMap<Ipv4Addr, u32>)> = {
            let st = self.state.lock().await;
            nets.into_iter()
                .map(|n| {
                    // A leaving workload's address is not reused before its runner confirms
                    // it gone, but nothing should reach it any more.
                    let want = st
                        .workloads
                        .iter()
                        .filter(|(k, _)| st.phases.get(*k) != Some(&Phase::Leaving))
                        .map(|(_, w)| w)
                        .filter(|w| w.network == n.name)
                        .filter_map(|w| Some((w.ip.addr(), st.runners.get(&w.runner)?.rec.id?)))
                        .collect();
                    (n, want)
                })
                .collect()
        };
        for (net, want) in wants {
            if let Err(e) = self.kernel.sync_address_routes(&net, &want).await {
                tracing::error!(network = %net.name, error = %e, "cannot sync the routes to a flat network's workloads");
            }
        }
    }

    /// An attach of which nothing is on the runner (never sent, or the runner reports it left
    /// nothing applied): forget it at once, its address free again.
    async fn forget_unapplied(&self, key: &str) {
        let mut st = self.state.lock().await;
        if st.phases.get(key) == Some(&Phase::Attaching)
            && let Some(w) = st.remove_workload(key)
        {
            self.give_back(&mut st, &w);
        }
    }

    /// A runner refused `rec`'s address: something it did not attach uses it on its bridge.
    /// The address stays taken (in memory: until the host restarts, when the runner is asked
    /// again at the next attach that picks it), and an event says so.
    async fn block_conflicting(&self, rec: &WorkloadRecord, why: &str) {
        let mut st = self.state.lock().await;
        let ip = rec.ip.addr();
        let blocked = match self.pool(&mut st, &rec.network, &rec.runner) {
            Ok(pool) => pool.take(ip).is_ok(),
            Err(_) => false,
        };
        if !blocked {
            return;
        }
        st.conflicts.insert(
            (rec.network.clone(), rec.runner.clone(), ip),
            why.to_string(),
        );
        tracing::warn!(runner = %rec.runner, network = %rec.network, %ip, %why, "address in use on the runner's bridge; not handing it out");
        metrics()
            .address_conflicts
            .add(1, &[KeyValue::new("network", rec.network.clone())]);
        let mut txn = Txn::default();
        txn.event(pb::EventKind::AddressConflict, |e| {
            e.runner = rec.runner.clone();
            e.network = rec.network.clone();
            e.ip = ip.to_string();
            e.workload_id = rec.id.clone();
            e.detail = why.to_string();
        });
        if let Err(e) = self.commit(&mut st, txn).await {
            tracing::warn!(error = %e, "cannot record the address conflict's event");
        }
    }

    /// An attach whose outcome is unknown (or that failed on the runner, perhaps half-way):
    /// the hub wants it gone, and its address stays taken until the runner confirms it holds
    /// nothing of it — by answering the detach queued now, or its next session's sync.
    async fn undo_attach(self: &Arc<Self>, key: &str) {
        let session = {
            let mut st = self.state.lock().await;
            if st.phases.get(key) != Some(&Phase::Attaching) {
                return;
            }
            st.phases.insert(key.to_string(), Phase::Leaving);
            st.workloads
                .get(key)
                .and_then(|w| st.runners.get(&w.runner))
                .and_then(|r| r.session.clone())
        };
        if let Some(s) = session {
            self.remove_on_runner(s, key.to_string(), true);
        }
    }

    /// Queue the removal of a leaving workload's interface on its runner, and release its
    /// address once the runner confirms, however late. A session that ends first leaves it to
    /// the next session's sync.
    fn remove_on_runner(self: &Arc<Self>, s: SessionHandle, key: String, give_back: bool) {
        let Some((network, workload_id)) = key.split_once('\u{0}') else {
            return;
        };
        let op = pb::command::Op::Detach(pb::WorkloadRef {
            network: network.to_string(),
            workload_id: workload_id.to_string(),
            give_back,
        });
        let workload_id = workload_id.to_string();
        let hub = self.clone();
        tokio::spawn(async move {
            let answer = match s.enqueue(op, None).await {
                Ok(p) => SessionHandle::settle(p).await,
                Err(_) => None,
            };
            match answer {
                Some(r) if r.error.is_empty() => hub.confirm_gone(&s.runner, &key).await,
                Some(r) => {
                    tracing::warn!(runner = %s.runner, workload = %workload_id, error = %r.error, "removing a workload interface failed; its next sync retries")
                }
                None => {}
            }
        });
    }

    /// The runner holds nothing of a leaving workload any more: its address (or its
    /// reservation) is free again.
    pub(super) async fn confirm_gone(&self, runner: &str, key: &str) {
        let mut st = self.state.lock().await;
        if st.phases.get(key) != Some(&Phase::Leaving)
            || st.workloads.get(key).is_none_or(|w| w.runner != runner)
        {
            return;
        }
        if let Some(w) = st.remove_workload(key) {
            self.give_back(&mut st, &w);
        }
    }

    /// A record that was never held: its address goes back to the pool, or its reservation
    /// is unused again.
    fn give_back(&self, st: &mut State, w: &WorkloadRecord) {
        match w
            .reservation
            .as_ref()
            .and_then(|id| st.reservations.get_mut(id))
        {
            Some(r) => r.used_by = None,
            None => self.release_address(st, w),
        }
    }

    pub(super) fn release_address(&self, st: &mut State, w: &WorkloadRecord) {
        if let Some(pool) = st.pools.get_mut(&self.pool_key(&w.network, &w.runner)) {
            pool.release(w.ip.addr());
        }
    }

    /// Detach a workload. The hub's decision is durable first — the record goes, with its
    /// event, in one transaction — then the runner removes the interface. The address stays
    /// taken until the runner confirms (now, or if it is away or slow, when it answers or at
    /// its next session's sync), so it is never handed out while an interface still holds it.
    async fn detach_workload(
        self: &Arc<Self>,
        req: pb::DetachWorkloadRequest,
    ) -> Result<(), HubError> {
        let workload_id = check_workload_id(&req.workload_id)?;
        let net = self.network(&req.network)?.clone();
        let key = workload_key(&net.name, &workload_id);
        let (session, ip) = {
            let mut st = self.state.lock().await;
            let w = st.workloads.get(&key).ok_or_else(|| {
                HubError::NotFound(format!(
                    "workload_id: {} is not attached on network {}",
                    brief(&workload_id),
                    net.name
                ))
            })?;
            if !req.runner.is_empty() && w.runner != req.runner {
                return Err(HubError::NotFound(format!(
                    "workload_id: {} is attached on runner {:?}, not {}",
                    brief(&workload_id),
                    w.runner,
                    brief(&req.runner)
                )));
            }
            let (runner, ip) = (w.runner.clone(), w.ip.addr());
            match st.phases.get(&key) {
                Some(Phase::Attaching) => {
                    return Err(HubError::Unavailable(format!(
                        "workload_id: {} is still being attached; retry once the attach has answered",
                        brief(&workload_id)
                    )));
                }
                // Already detached; the runner has not confirmed yet. Ask it again.
                Some(Phase::Leaving) => {}
                None => self.retire(&mut st, &key, "detached").await?,
            }
            (st.runners.get(&runner).and_then(|r| r.session.clone()), ip)
        };
        failpoint::hit("hub.detach.after-commit");
        // An unreachable runner drops the interface at its next session (sync).
        if let Some(s) = session {
            let op = pb::command::Op::Detach(pb::WorkloadRef {
                network: net.name.clone(),
                workload_id: workload_id.clone(),
                give_back: false,
            });
            if let Ok(p) = s.enqueue(op, None).await {
                match s.wait(p, self.command_timeout()).await {
                    Answer::Done(r) if r.error.is_empty() => {
                        self.confirm_gone(&s.runner, &key).await
                    }
                    Answer::Done(r) => {
                        tracing::warn!(workload = %workload_id, error = %r.error, "the runner could not remove the interface yet; its next sync retries")
                    }
                    Answer::Lost => {}
                    Answer::Late(p) => {
                        let hub = self.clone();
                        tokio::spawn(async move {
                            if let Some(r) = SessionHandle::settle(p).await
                                && r.error.is_empty()
                            {
                                hub.confirm_gone(&s.runner, &key).await;
                            }
                        });
                    }
                }
            }
        }
        failpoint::hit("hub.detach.after-answer");
        self.sync_flat_routes().await;
        self.publish_peer(None, Some(ip)).await;
        tracing::info!(workload = %workload_id, "workload detached");
        Ok(())
    }

    /// Take a stored workload out of the cluster: delete its record (and its reservation) with
    /// a `WORKLOAD_DETACHED` event in one transaction, and keep it in memory as leaving, its
    /// address taken, until its runner confirms the interface is gone.
    pub(super) async fn retire(
        &self,
        st: &mut State,
        key: &str,
        why: &str,
    ) -> Result<(), HubError> {
        let Some(rec) = st.workloads.get(key).cloned() else {
            return Ok(());
        };
        let mut txn = Txn::default();
        txn.change(Change::DeleteWorkload(key.to_string()));
        if let Some(r) = &rec.reservation
            && st.reservations.contains_key(r)
        {
            txn.change(Change::DeleteReservation(r.clone()));
        }
        txn.event(pb::EventKind::WorkloadDetached, |e| {
            e.runner = rec.runner.clone();
            e.network = rec.network.clone();
            e.workload_id = rec.id.clone();
            e.ip = rec.ip.to_string();
            e.origin = rec.origin.clone();
            e.detail = why.to_string();
        });
        self.commit(st, txn).await?;
        if let Some(r) = &rec.reservation {
            st.reservations.remove(r);
        }
        st.phases.insert(key.to_string(), Phase::Leaving);
        Ok(())
    }

    /// The runner found these workloads' namespaces gone for longer than the grace period:
    /// they are detached, with the reason in their event.
    pub async fn workloads_gone(
        self: &Arc<Self>,
        runner: &str,
        session: u64,
        gone: pb::WorkloadsGone,
    ) {
        let mut removed = Vec::new();
        let s = {
            let mut st = self.state.lock().await;
            let Some(s) = st
                .runners
                .get(runner)
                .and_then(|r| r.session.clone())
                .filter(|s| s.id == session)
            else {
                return;
            };
            for g in gone.workloads {
                let key = workload_key(&g.network, &g.workload_id);
                let mine = st.workloads.get(&key).is_some_and(|w| w.runner == runner);
                if !mine || st.phases.contains_key(&key) {
                    continue;
                }
                let ip = st.workloads.get(&key).map(|w| w.ip.addr());
                match self
                    .retire(&mut st, &key, &format!("namespace gone: {}", g.reason))
                    .await
                {
                    Ok(()) => {
                        tracing::info!(runner, workload = %g.workload_id, reason = %g.reason, "workload released: its namespace is gone");
                        removed.push((key, ip));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "releasing a workload whose namespace is gone failed")
                    }
                }
            }
            s
        };
        let any = !removed.is_empty();
        for (key, ip) in removed {
            // Its namespace is gone: an adopted container's port (if any is left) goes back.
            self.remove_on_runner(s.clone(), key, true);
            self.publish_peer(None, ip).await;
        }
        if any {
            self.sync_flat_routes().await;
        }
    }

    /// A page of the workloads (filtered), and the token of the next page.
    pub async fn list_workloads(
        &self,
        req: pb::ListWorkloadsRequest,
    ) -> Result<(Vec<pb::Workload>, String), HubError> {
        let st = self.state.lock().await;
        if !req.runner.is_empty() && !st.runners.contains_key(&req.runner) {
            return Err(HubError::NotFound(format!(
                "runner: {:?} is not registered",
                req.runner
            )));
        }
        if !req.network.is_empty() {
            self.network(&req.network)?;
        }
        let listed = st
            .workloads
            .iter()
            .filter(|(k, _)| !st.phases.contains_key(*k))
            .map(|(_, w)| w)
            .filter(|w| req.runner.is_empty() || w.runner == req.runner)
            .filter(|w| req.network.is_empty() || w.network == req.network)
            .filter(|w| req.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .map(workload_pb)
            .map(|w| (workload_key(&w.network, &w.workload_id), w));
        super::paging::page(listed, req.page_size, &req.page_token)
    }

    /// Every acknowledged workload of `runner` attached by `origin` (empty: any), in key order.
    /// One of a runner's workloads, by key (none: not attached there, or still changing).
    pub async fn runner_workload(
        &self,
        runner: &str,
        network: &str,
        workload_id: &str,
    ) -> Result<Option<pb::Workload>, HubError> {
        let net = self.network(network)?.name.clone();
        let key = workload_key(&net, workload_id);
        let st = self.state.lock().await;
        Ok(st
            .workloads
            .get(&key)
            .filter(|w| w.runner == runner && !st.phases.contains_key(&key))
            .map(workload_pb))
    }

    pub async fn runner_workloads(&self, runner: &str, origin: &str) -> Vec<pb::Workload> {
        let st = self.state.lock().await;
        st.workloads
            .iter()
            .filter(|(k, _)| !st.phases.contains_key(*k))
            .map(|(_, w)| w)
            .filter(|w| w.runner == runner && (origin.is_empty() || w.origin == origin))
            .map(workload_pb)
            .collect()
    }
}

/// What a runner needs to build one workload interface. `several_networks`: the cluster has
/// more than one network, so container interfaces route replies by source address.
pub(super) fn workload_spec(
    w: &WorkloadRecord,
    net: &NetworkDef,
    sub: crate::network::RunnerSubnet,
    several_networks: bool,
) -> pb::WorkloadSpec {
    let source_table = match (several_networks, w.vm) {
        (true, false) => w
            .ifname
            .strip_prefix("eth")
            .and_then(|k| k.parse::<u32>().ok())
            .map_or(0, |k| SOURCE_TABLE_BASE + k),
        _ => 0,
    };
    let overlay_cidr = match (w.default_route, net.overlay()) {
        (false, Some(o)) => o.plan.overlay().to_string(),
        _ => String::new(),
    };
    pb::WorkloadSpec {
        network: w.network.clone(),
        workload_id: w.id.clone(),
        netns: w.netns.display().to_string(),
        ifname: w.ifname.clone(),
        address: w.ip.to_string(),
        gateway: sub.gateway.to_string(),
        mtu: net.mtu,
        default_route: w.default_route,
        vm: w.vm,
        handoff: w.handoff,
        firewall: w.firewall.as_ref().map(super::firewall::message),
        firewall_monitor: w.firewall_monitor,
        source_table,
        overlay_cidr,
        netns_id: w.netns_id.map(|n| pb::NetnsIdentity {
            dev: n.dev,
            ino: n.ino,
        }),
        adopt_port: String::new(),
    }
}

/// Inside a workload, the routing table of `ethK` is `SOURCE_TABLE_BASE + K`.
pub const SOURCE_TABLE_BASE: u32 = 100;

/// A workload as the control API shows it.
pub(super) fn workload_pb(w: &WorkloadRecord) -> pb::Workload {
    pb::Workload {
        workload_id: w.id.clone(),
        runner: w.runner.clone(),
        network: w.network.clone(),
        ip: w.ip.to_string(),
        kind: if w.vm {
            pb::WorkloadKind::Vm
        } else {
            pb::WorkloadKind::Container
        } as i32,
        netns: w.netns.display().to_string(),
        ifname: w.ifname.clone(),
        labels: w.labels.clone().into_iter().collect(),
        mac: w.mac.clone(),
        created_unix_ms: w.created_ms,
        reservation_id: w.reservation.clone().unwrap_or_default(),
        origin: w.origin.clone(),
    }
}

/// A repeated attach must come from the same origin, and ask for the same interface if it
/// names one.
fn same_origin(
    existing: &WorkloadRecord,
    origin: &str,
    ifname: Option<&str>,
) -> Result<(), HubError> {
    let id = brief(&existing.id);
    if existing.origin != origin {
        return Err(HubError::AlreadyExists(format!(
            "origin: workload_id {id} was attached by {}, not {origin}; detach it first to change it",
            existing.origin
        )));
    }
    match ifname {
        Some(name) if name != existing.ifname => Err(HubError::AlreadyExists(format!(
            "ifname: workload_id {id} is already attached with ifname {}, not {name}; detach it first to change it",
            existing.ifname
        ))),
        _ => Ok(()),
    }
}
