//! What every runner must know about the others: the underlay addresses VXLAN may come from,
//! which peers to reach directly (the router policy), and — when a firewall plugin is in use —
//! every workload's address and labels (firewall selectors match them).
//!
//! Holds `Hub::publish_topology`, `Hub::prime_session`, `Hub::publish_peer`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use weir_proto::v1 as pb;

use super::{Hub, SessionHandle, State};
use crate::decision::{Decision, Egress, Hook, PathKind, PeerRunner, Request, RouteRequest};
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

    /// The router policy's plan for one runner (the built-in: everything via the hub). Each
    /// network egresses as configured; the router plugin decides for the primary network
    /// unless that network must egress via the host.
    async fn route_plan(&self, runner: &str) -> pb::RoutePlan {
        let empty = pb::RoutePlan {
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
            return empty;
        }
        let Ok(net) = self.network("").cloned() else {
            return empty;
        };
        let (me, peers) = {
            let st = self.state.lock().await;
            let Some(me) = st.runners.get(runner).map(|r| r.rec.clone()) else {
                return empty;
            };
            let peers: Vec<_> = st
                .runners
                .values()
                .filter(|r| r.rec.name != runner)
                .map(|r| r.rec.clone())
                .collect();
            (me, peers)
        };
        let req = Request::Route(RouteRequest {
            network: net.name.clone(),
            runner: me.name.clone(),
            labels: me.labels.clone(),
            peers: peers
                .iter()
                .map(|p| PeerRunner {
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    physical_ip: p.physical_ip.to_string(),
                })
                .collect(),
        });
        let decision = match self.policy.decide(&req).await {
            Ok(Some(Decision::Route(d))) => d,
            // The built-in router, also after a refusal: a runner always keeps the hub path.
            _ => return empty,
        };
        let direct = decision
            .peers
            .iter()
            .filter(|(_, p)| *p == PathKind::Direct)
            .filter_map(|(name, _)| {
                let peer = peers.iter().find(|p| &p.name == name)?;
                direct_peer(&net, peer.id?, peer.physical_ip)
            })
            .collect();
        let mut plan = empty;
        plan.direct = direct;
        if net.egress == EgressMode::RunnerNat {
            let chosen = match decision.egress {
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
