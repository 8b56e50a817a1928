//! Workloads: attach (which address a workload gets), detach, list.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use ipnet::Ipv4Net;
use opentelemetry::KeyValue;
use weir_proto::v1 as pb;

use super::{COMMAND_TIMEOUT, Hub, HubError, State, Txn, check_labels, check_workload_id};
use crate::dataplane::attach;
use crate::network::NetworkDef;
use crate::policy::types::{
    AddressDecision, AddressRequest, Decision, FirewallRequest, Hook, Request,
};
use crate::store::{Change, WorkloadRecord, now_ms, workload_key};
use crate::telemetry::metrics::{metrics, outcome};

/// Where a new workload's address comes from.
enum Source {
    Next,
    Requested(Ipv4Addr),
    Reservation(String),
}

impl Hub {
    /// Give a workload an interface on its runner's network (timed as `weir.attach.duration`).
    pub async fn attach(
        &self,
        req: pb::AttachWorkloadRequest,
    ) -> Result<pb::AttachWorkloadResponse, HubError> {
        let network = self.network_attr(&req.network);
        let started = Instant::now();
        let r = self.attach_workload(req).await;
        metrics().attach_duration.record(
            started.elapsed().as_secs_f64(),
            &[network, KeyValue::new("outcome", outcome(&r))],
        );
        r
    }

    /// Remove a workload's interface and free its address (timed as `weir.detach.duration`).
    pub async fn detach(&self, req: pb::DetachWorkloadRequest) -> Result<(), HubError> {
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
        &self,
        req: pb::AttachWorkloadRequest,
    ) -> Result<pb::AttachWorkloadResponse, HubError> {
        let workload_id = check_workload_id(&req.workload_id)?;
        let vm = req.kind == pb::WorkloadKind::Vm as i32;
        let netns = match (vm, req.netns.trim(), req.pid) {
            (true, "", 0) => PathBuf::new(),
            (true, _, _) => {
                return Err(HubError::InvalidArgument(
                    "netns/pid: a VM gets a tap device, not a namespace; leave them empty".into(),
                ));
            }
            (false, "", 0) => {
                return Err(HubError::InvalidArgument(
                    "netns: give the path of the workload's network namespace, or pid".into(),
                ));
            }
            (false, "", pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            (false, path, 0) if path.starts_with('/') => PathBuf::from(path),
            (false, path, 0) => {
                return Err(HubError::InvalidArgument(format!(
                    "netns: {path:?} is not an absolute path"
                )));
            }
            (false, _, _) => {
                return Err(HubError::InvalidArgument(
                    "netns and pid: give one of them, not both".into(),
                ));
            }
        };
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        check_labels(&labels, "labels")?;
        let source = match (req.requested_ip.trim(), req.reservation_token.trim()) {
            ("", "") => Source::Next,
            (ip, "") => Source::Requested(ip.parse().map_err(|_| {
                HubError::InvalidArgument(format!("requested_ip: {ip:?} is not an IPv4 address"))
            })?),
            ("", token) => Source::Reservation(token.to_string()),
            _ => {
                return Err(HubError::InvalidArgument(
                    "requested_ip and reservation_token: give one of them, not both".into(),
                ));
            }
        };
        let net = self.network(&req.network)?.clone();
        let key = workload_key(&net.name, &workload_id);
        let (rec, session, fresh) = {
            let mut st = self.state.lock().await;
            let runner = st.runners.get(&req.runner).ok_or_else(|| {
                HubError::NotFound(format!("runner: {:?} is not registered", req.runner))
            })?;
            if now_ms() - runner.last_seen_ms >= self.timeout_ms() {
                return Err(HubError::FailedPrecondition(format!(
                    "runner {:?} is inactive",
                    req.runner
                )));
            }
            let session = runner.session.clone().ok_or_else(|| {
                HubError::FailedPrecondition(format!("runner {:?} is not connected", req.runner))
            })?;
            if let Some(existing) = st.workloads.get(&key) {
                if existing.runner != req.runner || existing.netns != netns || existing.vm != vm {
                    return Err(HubError::AlreadyExists(format!(
                        "workload_id: {workload_id:?} is already attached on runner {:?} ({})",
                        existing.runner,
                        if existing.vm {
                            "a VM".to_string()
                        } else {
                            existing.netns.display().to_string()
                        }
                    )));
                }
                (existing.clone(), session, false)
            } else {
                let source = self
                    .plugin_address(
                        &mut st,
                        &net,
                        &req.runner,
                        &workload_id,
                        vm,
                        &labels,
                        source,
                    )
                    .await?;
                let rec = self
                    .allocate(
                        &mut st,
                        &net,
                        &req.runner,
                        &workload_id,
                        netns,
                        vm,
                        labels,
                        source,
                    )
                    .await?;
                (rec, session, true)
            }
        };
        let sub = self.subnet_of(&net, &rec.runner).await?;
        let spec = workload_spec(&rec, &net, sub, self.settings.networks.len() > 1);
        if let Err(e) = session
            .command(pb::command::Op::Attach(spec.clone()), COMMAND_TIMEOUT)
            .await
        {
            if fresh {
                self.roll_back(&key).await;
            }
            return Err(e);
        }
        if fresh {
            self.record_attach(&rec).await?;
            self.publish_peer(Some(&rec), None).await;
        }
        tracing::info!(workload = %workload_id, runner = %req.runner, ip = %rec.ip, vm, "workload attached");
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
            mac: rec.mac.clone(),
            dns: self.settings.dns.iter().map(|d| d.to_string()).collect(),
            kind: if vm {
                pb::WorkloadKind::Vm
            } else {
                pb::WorkloadKind::Container
            } as i32,
        })
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
        source: Source,
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
            Source::Next => self
                .pool(st, &net.name, runner)?
                .take_next()
                .map_err(|e| HubError::ResourceExhausted(e.to_string()))?,
            Source::Requested(ip) => {
                self.pool(st, &net.name, runner)?
                    .take(ip)
                    .map_err(|e| super::reservations::address_error("requested_ip", e))?;
                ip
            }
            Source::Reservation(token) => {
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
        };
        match self.hold(st, rec.clone()).await {
            Ok(held) => Ok(held),
            Err(e) => {
                self.give_back(st, &rec);
                Err(e)
            }
        }
    }

    /// The firewall plugin's rules for a new workload, then the record in the store and in
    /// memory.
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
                address: rec.ip.addr().to_string(),
                groups,
            });
            if let Some((Decision::Firewall(d), monitor)) =
                self.policy.decide_or_monitor(&req).await?
            {
                rec.firewall = Some(d);
                rec.firewall_monitor = monitor;
            }
        }
        let mut txn = Txn::default();
        txn.change(Change::PutWorkload(rec.clone()));
        if let Some(r) = rec
            .reservation
            .as_ref()
            .and_then(|id| st.reservations.get(id))
        {
            txn.change(Change::PutReservation(r.clone()));
        }
        self.commit(st, txn)?;
        st.insert_workload(rec.key(), rec.clone());
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
        source: Source,
    ) -> Result<Source, HubError> {
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
            labels: labels.clone(),
            runner: runner.into(),
            runner_labels,
            subnet: sub.subnet.to_string(),
            gateway: sub.gateway.to_string(),
            first: first.to_string(),
            last: last.to_string(),
            taken: pool.taken().iter().map(|a| a.to_string()).collect(),
        });
        Ok(match (self.policy.decide(&req).await?, source) {
            (Some(Decision::Address(AddressDecision::Address(a))), Source::Next) => {
                Source::Requested(a.parse().map_err(|_| {
                    HubError::Internal(format!("validated address {a:?} does not parse"))
                })?)
            }
            (_, source) => source,
        })
    }

    /// Events of a successful attach (after the runner confirmed).
    async fn record_attach(&self, rec: &WorkloadRecord) -> Result<(), HubError> {
        let mut st = self.state.lock().await;
        let mut txn = Txn::default();
        if let Some(r) = &rec.reservation {
            txn.event(pb::EventKind::ReservationUsed, |e| {
                e.runner = rec.runner.clone();
                e.network = rec.network.clone();
                e.workload_id = rec.id.clone();
                e.ip = rec.ip.addr().to_string();
                e.reservation_id = r.clone();
            });
        }
        txn.event(pb::EventKind::WorkloadAttached, |e| {
            e.runner = rec.runner.clone();
            e.network = rec.network.clone();
            e.workload_id = rec.id.clone();
            e.ip = rec.ip.to_string();
            e.reservation_id = rec.reservation.clone().unwrap_or_default();
            e.detail = if rec.vm {
                "vm".into()
            } else {
                "container".into()
            };
        });
        self.commit(&mut st, txn)
    }

    /// Undo a failed attach: forget the record, give the address (or the reservation) back.
    async fn roll_back(&self, key: &str) {
        let mut st = self.state.lock().await;
        let Some(w) = st.remove_workload(key) else {
            return;
        };
        let mut txn = Txn::default();
        txn.change(Change::DeleteWorkload(key.to_string()));
        match w
            .reservation
            .as_ref()
            .and_then(|id| st.reservations.get_mut(id))
        {
            // The token stays good: the reservation holds the address again.
            Some(r) => {
                r.used_by = None;
                txn.change(Change::PutReservation(r.clone()));
            }
            None => self.release_address(&mut st, &w),
        }
        if let Err(e) = self.commit(&mut st, txn) {
            tracing::error!(error = %e, "rolling back a workload record failed");
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

    fn release_address(&self, st: &mut State, w: &WorkloadRecord) {
        if let Some(pool) = st.pools.get_mut(&(w.network.clone(), w.runner.clone())) {
            pool.release(w.ip.addr());
        }
    }

    async fn subnet_of(
        &self,
        net: &NetworkDef,
        runner: &str,
    ) -> Result<crate::network::RunnerSubnet, HubError> {
        let st = self.state.lock().await;
        net.runner_subnet(st.runners.get(runner).and_then(|r| r.rec.id))
            .ok_or_else(|| {
                HubError::FailedPrecondition(format!(
                    "runner {runner:?} has no subnet on network {}",
                    net.name
                ))
            })
    }

    /// Remove a workload's interface and free its address (and its reservation).
    async fn detach_workload(&self, req: pb::DetachWorkloadRequest) -> Result<(), HubError> {
        let workload_id = check_workload_id(&req.workload_id)?;
        let net = self.network(&req.network)?.clone();
        let key = workload_key(&net.name, &workload_id);
        let (session, rec) = {
            let st = self.state.lock().await;
            let w = st.workloads.get(&key).ok_or_else(|| {
                HubError::NotFound(format!(
                    "workload_id: {workload_id:?} is not attached on network {}",
                    net.name
                ))
            })?;
            if !req.runner.is_empty() && w.runner != req.runner {
                return Err(HubError::NotFound(format!(
                    "workload_id: {workload_id:?} is attached on runner {:?}, not {:?}",
                    w.runner, req.runner
                )));
            }
            (
                st.runners.get(&w.runner).and_then(|r| r.session.clone()),
                w.clone(),
            )
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
        let mut st = self.state.lock().await;
        if st.remove_workload(&key).is_none() {
            return Ok(()); // a concurrent detach won
        }
        let mut txn = Txn::default();
        txn.change(Change::DeleteWorkload(key));
        self.release_address(&mut st, &rec);
        if let Some(r) = &rec.reservation
            && st.reservations.remove(r).is_some()
        {
            txn.change(Change::DeleteReservation(r.clone()));
        }
        txn.event(pb::EventKind::WorkloadDetached, |e| {
            e.runner = rec.runner.clone();
            e.network = rec.network.clone();
            e.workload_id = rec.id.clone();
            e.ip = rec.ip.to_string();
        });
        self.commit(&mut st, txn)?;
        drop(st);
        self.publish_peer(None, Some(rec.ip.addr())).await;
        tracing::info!(workload = %workload_id, "workload detached");
        Ok(())
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
            .values()
            .filter(|w| req.runner.is_empty() || w.runner == req.runner)
            .filter(|w| req.network.is_empty() || w.network == req.network)
            .filter(|w| req.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .map(|w| pb::Workload {
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
            })
            .map(|w| (workload_key(&w.network, &w.workload_id), w));
        super::paging::page(listed, req.page_size, &req.page_token)
    }
}

/// What the runner needs to build a workload's interface.
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
        firewall: w
            .firewall
            .as_ref()
            .map(crate::policy::grpc::firewall_decision_pb),
        firewall_monitor: w.firewall_monitor,
        source_table,
        overlay_cidr,
    }
}

/// Inside a workload, the routing table of `ethK` is `SOURCE_TABLE_BASE + K`.
pub const SOURCE_TABLE_BASE: u32 = 100;
