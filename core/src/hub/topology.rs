//! What every runner must know about the others: the underlay addresses VXLAN may come from,
//! which peers to reach directly (the router policy), and — when a firewall plugin is in use —
//! every workload's address and labels (firewall selectors match them).
//!
//! Holds `Hub::publish_topology`, `Hub::prime_session`, `Hub::publish_peer`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use weir_proto::v1 as pb;

use super::{Hub, SessionHandle, State};
use crate::decision::{
    Decision, Egress, Hook, PathKind, PeerIndex, PeersView, Request, RouteChange, RouteDelta,
    RouteRequest, RunnerInfo,
};
use crate::network::{EgressMode, NetworkDef};
use crate::store::WorkloadRecord;

impl Hub {
    /// Physical addresses of every runner and placeholder.
    pub(super) fn underlay_peers(&self, st: &State) -> BTreeSet<Ipv4Addr> {
        st.runners
            .values()
            .map(|r| r.rec.physical_ip)
            .chain(st.placeholders.values().map(|p| p.physical_ip))
            .collect()
    }

    fn underlay_for_runners(&self, st: &State) -> pb::UnderlayPeers {
        let mut all = self.underlay_peers(st);
        if let Some(h) = self.settings.reachable_address {
            all.insert(h);
        }
        pb::UnderlayPeers {
            addresses: all.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// After runners joined, moved or left: update the host's underlay set, and tell every
    /// connected runner its underlay peers and its route plan.
    pub(super) async fn publish_topology(self: &Arc<Self>) {
        let (peers, underlay, sessions) = {
            let st = self.state.lock().await;
            let sessions: Vec<SessionHandle> = st
                .runners
                .values()
                .filter_map(|r| r.session.clone())
                .collect();
            (
                self.underlay_peers(&st),
                self.underlay_for_runners(&st),
                sessions,
            )
        };
        if let Err(e) = self.kernel.set_underlay(peers).await {
            tracing::error!(error = %e, "updating the underlay set failed");
        }
        self.refresh_routes().await;
        for s in sessions {
            let plan = self.route_plan(&s.runner).await;
            let (underlay, hub) = (underlay.clone(), self.clone());
            tokio::spawn(async move {
                hub.send(&s, pb::command::Op::Underlay(underlay)).await;
                hub.send(&s, pb::command::Op::Routes(plan)).await;
            });
        }
    }

    /// The rest of a new session, after its sync (queued first, at `open_session`): once the
    /// runner said what it holds, the underlay peers, the route plan and the peer directory
    /// (firewall).
    pub(super) async fn prime_session(
        self: &Arc<Self>,
        s: SessionHandle,
        sync: Result<super::session::Pending, super::HubError>,
    ) {
        self.settle_sync(&s, sync).await;
        let underlay = {
            let st = self.state.lock().await;
            self.underlay_for_runners(&st)
        };
        self.send(&s, pb::command::Op::Underlay(underlay)).await;
        self.refresh_routes().await;
        let plan = self.route_plan(&s.runner).await;
        self.send(&s, pb::command::Op::Routes(plan)).await;
        if self.policy.has(Hook::Firewall) {
            let upsert = {
                let st = self.state.lock().await;
                st.workloads
                    .iter()
                    .filter(|(k, _)| !st.phases.contains_key(*k))
                    .map(|(_, w)| peer_entry(w))
                    .collect()
            };
            self.send(
                &s,
                pb::command::Op::Peers(pb::PeerDirectory {
                    full: true,
                    upsert,
                    remove: vec![],
                }),
            )
            .await;
        }
    }

    async fn send(&self, s: &SessionHandle, op: pb::command::Op) {
        if let Err(e) = s.command(op, self.command_timeout()).await {
            tracing::warn!(runner = %s.runner, error = %e, "a topology update failed");
        }
    }

    /// Tell every runner that a workload appeared or left (its firewall selectors may match it).
    /// Waits for the runners, so a peer is reachable as soon as the attach returns.
    pub(super) async fn publish_peer(
        &self,
        upsert: Option<&WorkloadRecord>,
        remove: Option<Ipv4Addr>,
    ) {
        if !self.policy.has(Hook::Firewall) {
            return;
        }
        let sessions: Vec<SessionHandle> = {
            let st = self.state.lock().await;
            st.runners
                .values()
                .filter_map(|r| r.session.clone())
                .collect()
        };
        let d = pb::PeerDirectory {
            full: false,
            upsert: upsert.map(peer_entry).into_iter().collect(),
            remove: remove.map(|a| a.to_string()).into_iter().collect(),
        };
        let sends = sessions
            .iter()
            .map(|s| self.send(s, pb::command::Op::Peers(d.clone())));
        futures::future::join_all(sends).await;
    }

    /// Bring the route book up to date with the registered runners, asking the router
    /// plugin only about what changed: a runner that joined (or changed) gets one `joined`
    /// decision; every other runner one `peer` decision per changed runner; a runner that left
    /// is dropped from every plan without a decision. So a registration costs n decisions of
    /// O(1) each, not n decisions over n peers.
    async fn refresh_routes(&self) {
        if !self.policy.has(Hook::Router) {
            return;
        }
        let Ok(net) = self.network("").cloned() else {
            return;
        };
        let current: BTreeMap<String, RunnerInfo> = {
            let st = self.state.lock().await;
            st.runners
                .values()
                .filter_map(|r| {
                    Some(RunnerInfo {
                        name: r.rec.name.clone(),
                        id: r.rec.id?,
                        labels: r.rec.labels.clone(),
                        physical_ip: r.rec.physical_ip,
                    })
                })
                .map(|r| (r.name.clone(), r))
                .collect()
        };
        let mut book = self.routes.lock().await;
        let joined: Vec<RunnerInfo> = current
            .values()
            .filter(|r| book.seen.get(&r.name) != Some(*r))
            .cloned()
            .collect();
        let left: Vec<String> = book
            .seen
            .keys()
            .filter(|n| !current.contains_key(*n))
            .cloned()
            .collect();
        if joined.is_empty() && left.is_empty() {
            return;
        }
        for n in &left {
            book.plans.remove(n);
            for plan in book.plans.values_mut() {
                plan.direct.remove(n);
            }
        }
        let index = Arc::new(PeerIndex::new(current.values().cloned()));
        let ask = |runner: &RunnerInfo, change: RouteChange| {
            let req = Request::Route(RouteRequest {
                network: net.name.clone(),
                runner: runner.clone(),
                change,
                peers: PeersView::new(index.clone(), &runner.name),
            });
            async move {
                match self.policy.decide(&req).await {
                    Ok(Some(Decision::Route(d))) => Some(d),
                    // The built-in router, also after a refusal: the hub path.
                    _ => None,
                }
            }
        };
        let joined_names: BTreeSet<&str> = joined.iter().map(|r| r.name.as_str()).collect();
        for r in &joined {
            let mut plan = RunnerRoutes::default();
            if let Some(d) = ask(r, RouteChange::Joined).await {
                plan.apply(&d);
            }
            book.plans.insert(r.name.clone(), plan);
        }
        for r in current
            .values()
            .filter(|r| !joined_names.contains(r.name.as_str()))
        {
            for c in &joined {
                if let Some(d) = ask(r, RouteChange::Peer(c.clone())).await {
                    book.plans.entry(r.name.clone()).or_default().apply(&d);
                }
            }
        }
        book.seen = current;
    }

    /// The router policy's plan for one runner (the built-in: everything via the hub), from
    /// the route book. Each network egresses as configured; the router plugin decides for the
    /// primary network unless that network must egress via the host.
    async fn route_plan(&self, runner: &str) -> pb::RoutePlan {
        let mut plan = pb::RoutePlan {
            direct: vec![],
            egress: EgressMode::RunnerNat.as_str().into(),
            network_egress: self
                .settings
                .networks
                .iter()
                .map(|n| (n.name.clone(), n.egress.as_str().to_string()))
                .collect(),
        };
        if !self.policy.has(Hook::Router) {
            return plan;
        }
        let Ok(net) = self.network("").cloned() else {
            return plan;
        };
        let book = self.routes.lock().await;
        let Some(mine) = book.plans.get(runner) else {
            return plan;
        };
        plan.direct = mine
            .direct
            .iter()
            .filter_map(|name| {
                let peer = book.seen.get(name)?;
                direct_peer(&net, peer.id, peer.physical_ip)
            })
            .collect();
        if net.egress == EgressMode::RunnerNat {
            let chosen = match mine.egress {
                Egress::RunnerNat => EgressMode::RunnerNat,
                Egress::ViaHost => EgressMode::ViaHost,
            };
            plan.egress = chosen.as_str().into();
            plan.network_egress
                .insert(net.name.clone(), chosen.as_str().into());
        }
        plan
    }
}

/// The router plugin's decisions so far: what each runner looked like when last decided, and
/// each runner's plan. Derived state: rebuilt from the runners after a restart or a reload.
#[derive(Default)]
pub(super) struct RouteBook {
    seen: BTreeMap<String, RunnerInfo>,
    plans: BTreeMap<String, RunnerRoutes>,
}

impl RouteBook {
    /// Forget every decision (a new router version decides everything anew).
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }
}

/// One runner's routes: the peers it reaches directly, its egress.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunnerRoutes {
    direct: BTreeSet<String>,
    egress: Egress,
}

impl RunnerRoutes {
    fn apply(&mut self, d: &RouteDelta) {
        for (peer, path) in &d.paths {
            match path {
                PathKind::Direct => self.direct.insert(peer.clone()),
                PathKind::ViaHub => self.direct.remove(peer),
            };
        }
        if let Some(e) = d.egress {
            self.egress = e;
        }
    }
}

/// A direct path to a peer runner routes its subnet; a flat network has none of its own (every
/// address may be on any runner), so its traffic always goes through the hub.
fn direct_peer(net: &NetworkDef, id: u32, physical_ip: Ipv4Addr) -> Option<pb::DirectPeer> {
    let o = net.overlay().filter(|o| !o.plan.is_flat())?;
    let sub = net.runner_subnet(Some(id))?;
    Some(pb::DirectPeer {
        network: net.name.clone(),
        runner_id: id,
        physical_ip: physical_ip.to_string(),
        subnet: sub.subnet.to_string(),
        vni: o.vxlan_id_base + id,
    })
}

fn peer_entry(w: &WorkloadRecord) -> pb::PeerEntry {
    pb::PeerEntry {
        network: w.network.clone(),
        address: w.ip.addr().to_string(),
        labels: w.labels.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_moves_only_the_paths_it_names() {
        let mut r = RunnerRoutes::default();
        r.apply(&RouteDelta {
            paths: vec![
                ("a".into(), PathKind::Direct),
                ("b".into(), PathKind::Direct),
            ],
            egress: Some(Egress::ViaHost),
        });
        r.apply(&RouteDelta {
            paths: vec![
                ("b".into(), PathKind::ViaHub),
                ("c".into(), PathKind::ViaHub),
            ],
            egress: None,
        });
        assert_eq!(r.direct, BTreeSet::from(["a".to_string()]));
        assert_eq!(r.egress, Egress::ViaHost, "no egress in a delta keeps it");
    }
}
