//! The runner agent's logic: turn the host's assignment into a data plane, carry out workload
//! commands, and repair drift. Transport (registration, the session stream) lives in
//! [`crate::api::runner`]; this module sees plain messages.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use weir_proto::v1 as pb;

use crate::dataplane::DataplaneError;
use crate::dataplane::attach::{self, WorkloadIface};
use crate::dataplane::firewall::{self, Firewall};
use crate::dataplane::netlink::Netlink;
use crate::dataplane::runner::{
    DirectPeer, RouteConfig, RunnerDataplane, RunnerNetwork, RunnerTunnel,
};

/// A value the runner's own configuration sets explicitly; the host must agree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The config key, e.g. `overlay.mtu`.
    pub key: String,
    /// The runner's value, in the form the host sends it.
    pub value: String,
    /// Where the runner's value came from (file or environment variable).
    pub source: String,
}

pub struct Agent {
    dp: RunnerDataplane,
    uplink: Option<String>,
    networks: Mutex<BTreeMap<String, RunnerNetwork>>,
    firewall: Mutex<Firewall>,
    /// The address of each local workload, by (network, workload id).
    addresses: Mutex<BTreeMap<(String, String), Ipv4Addr>>,
    /// This runner's id and the host's last route plan (re-applied after a rebuild).
    routes: Mutex<(u32, Option<pb::RoutePlan>)>,
}

impl Agent {
    pub fn new(nl: Netlink, uplink: Option<String>) -> Self {
        Self {
            dp: RunnerDataplane::new(nl),
            uplink,
            networks: Mutex::new(BTreeMap::new()),
            firewall: Mutex::new(Firewall::new()),
            addresses: Mutex::new(BTreeMap::new()),
            routes: Mutex::new((0, None)),
        }
    }

    /// Build (or repair) the data plane for an assignment; `local` is this runner's underlay IP.
    pub async fn apply(&self, a: &pb::RegisterResponse, local: Ipv4Addr) -> Result<(), String> {
        let uplink = match &self.uplink {
            Some(u) => u.clone(),
            None => default_route_interface(self.dp.netlink()).await?,
        };
        let nets = a
            .networks
            .iter()
            .map(|n| runner_network(a, n, &uplink, local))
            .collect::<Result<Vec<_>, _>>()?;
        self.dp.apply(&nets).await.map_err(|e| e.to_string())?;
        // The firewall's view of the host's addresses and the overlays.
        let mut ctx = firewall::Context::default();
        for n in &a.networks {
            if let Ok(h) = n.host_ip.parse::<Ipv4Net>() {
                ctx.host_addrs.push(h.addr());
            }
            if let Ok(h) = n.host_ip_on_subnet.parse::<Ipv4Addr>() {
                ctx.host_addrs.push(h);
            }
            if let Ok(o) = n.overlay_cidr.parse::<Ipv4Net>() {
                ctx.overlays.push(o);
            }
        }
        {
            let mut fw = self.firewall.lock().await;
            fw.set_context(ctx);
            self.commit_firewall(&mut fw).await?;
        }
        {
            let mut current = self.networks.lock().await;
            *current = nets.into_iter().map(|n| (n.name.clone(), n)).collect();
        }
        let plan = {
            let mut r = self.routes.lock().await;
            r.0 = a.runner_id;
            r.1.clone()
        };
        if let Some(plan) = plan {
            self.routes(plan).await?;
        }
        Ok(())
    }

    /// Reach some peer runners directly (not through the host) and steer egress.
    async fn routes(&self, plan: pb::RoutePlan) -> Result<(), String> {
        let me = {
            let mut r = self.routes.lock().await;
            r.1 = Some(plan.clone());
            r.0
        };
        let nets = self.networks.lock().await.clone();
        for net in nets.values() {
            let direct = plan
                .direct
                .iter()
                .filter(|p| p.network == net.name)
                .map(|p| {
                    Ok(DirectPeer {
                        runner_id: p.runner_id,
                        physical_ip: parse(&p.physical_ip, "direct peer physical_ip")?,
                        subnet: parse(&p.subnet, "direct peer subnet")?,
                        vni: p.vni,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let egress = plan.network_egress.get(&net.name).unwrap_or(&plan.egress);
            let cfg = RouteConfig {
                me,
                direct,
                via_host_egress: egress == "via-host",
            };
            self.dp
                .apply_routes(net, &cfg)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The underlay addresses VXLAN may come from.
    async fn underlay(&self, u: pb::UnderlayPeers) -> Result<(), String> {
        let peers = u
            .addresses
            .iter()
            .map(|a| parse::<Ipv4Addr>(a, "underlay address"))
            .collect::<Result<Vec<_>, _>>()?;
        self.dp.set_underlay(peers).await.map_err(|e| e.to_string())
    }

    /// Remove everything: workload interfaces, bridges, tunnels, routes and rules (the
    /// allocation was revoked, or the host refuses this runner).
    pub async fn teardown(&self) -> Result<(), String> {
        self.networks.lock().await.clear();
        for (alias, index) in attach::list(self.dp.netlink())
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::info!(workload = %alias, "removing a workload interface");
            self.dp
                .netlink()
                .del_link(index)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.dp.teardown().await.map_err(|e| e.to_string())
    }

    /// Carry out one command; `Err` carries the message sent back to the host.
    pub async fn handle(&self, op: pb::command::Op) -> Result<(), String> {
        match op {
            pb::command::Op::Attach(spec) => {
                self.attach(&spec).await?;
                let mut fw = self.firewall.lock().await;
                self.firewall_for(&mut fw, &spec).await?;
                self.commit_firewall(&mut fw).await
            }
            pb::command::Op::Detach(r) => {
                if let Some(bridge) = attach::detach(self.dp.netlink(), &r.network, &r.workload_id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    self.dp.port_freed(bridge).await;
                }
                if let Some(ip) = self
                    .addresses
                    .lock()
                    .await
                    .remove(&(r.network.clone(), r.workload_id.clone()))
                {
                    let mut fw = self.firewall.lock().await;
                    fw.remove_workload(ip);
                    self.commit_firewall(&mut fw).await?;
                }
                Ok(())
            }
            pb::command::Op::Sync(set) => {
                crate::telemetry::metrics::reconcile("runner-sync", self.sync(set)).await
            }
            pb::command::Op::Peers(d) => self.peers(d).await,
            pb::command::Op::Routes(plan) => self.routes(plan).await,
            pb::command::Op::Underlay(u) => self.underlay(u).await,
        }
    }

    async fn attach(&self, spec: &pb::WorkloadSpec) -> Result<(), String> {
        let net = self
            .networks
            .lock()
            .await
            .get(&spec.network)
            .cloned()
            .ok_or_else(|| format!("network {:?} is not built on this runner", spec.network))?;
        let port = if spec.vm {
            spec.ifname.clone()
        } else {
            attach::host_ifname(&spec.network, &spec.workload_id)
        };
        // A bridge that refuses the port although counted with room: believe it, choose again.
        let mut retried = false;
        loop {
            let bridge = self
                .dp
                .bridge_for(&net, &port)
                .await
                .map_err(|e| e.to_string())?;
            let result = self.attach_to(spec, bridge.index).await;
            match result {
                Err(DataplaneError::BridgeFull(i)) if !retried => {
                    self.dp.bridge_full(i).await;
                    retried = true;
                }
                Err(e) => {
                    if bridge.counted {
                        self.dp.port_freed(bridge.index).await;
                    }
                    return Err(e.to_string());
                }
                Ok(()) => return Ok(()),
            }
        }
    }

    async fn attach_to(&self, spec: &pb::WorkloadSpec, bridge: u32) -> Result<(), DataplaneError> {
        let bad = |e: String| DataplaneError::Invalid(e);
        if spec.vm {
            let owner = attach::alias(&spec.network, &spec.workload_id);
            return attach::attach_tap(self.dp.netlink(), &spec.ifname, &owner, bridge, spec.mtu)
                .await;
        }
        let iface = {
            WorkloadIface {
                network: spec.network.clone(),
                workload: spec.workload_id.clone(),
                netns: PathBuf::from(&spec.netns),
                ifname: spec.ifname.clone(),
                addr: parse(&spec.address, "address").map_err(bad)?,
                gateway: parse(&spec.gateway, "gateway").map_err(bad)?,
                mtu: spec.mtu,
                bridge,
                default_route: spec.default_route,
                source_table: (spec.source_table != 0).then_some(spec.source_table),
                overlay: if spec.overlay_cidr.is_empty() {
                    None
                } else {
                    Some(parse(&spec.overlay_cidr, "overlay_cidr").map_err(bad)?)
                },
            }
        };
        attach::attach(self.dp.netlink(), &iface).await
    }

    /// Apply the firewall's changes. Overlay traffic is connection-tracked exactly while a
    /// firewall table exists (its `ct state` rule needs it): tracking goes on before the table
    /// is installed and off after it is gone, so no flow is ever judged without its state.
    async fn commit_firewall(&self, fw: &mut Firewall) -> Result<(), String> {
        let track = fw.needs_table();
        if track {
            self.dp
                .set_overlay_tracking(true)
                .await
                .map_err(|e| format!("firewall: {e}"))?;
        }
        fw.commit().await.map_err(|e| format!("firewall: {e}"))?;
        if !track {
            self.dp
                .set_overlay_tracking(false)
                .await
                .map_err(|e| format!("firewall: {e}"))?;
        }
        Ok(())
    }

    /// Record a local workload's address and give the firewall its policy.
    async fn firewall_for(&self, fw: &mut Firewall, spec: &pb::WorkloadSpec) -> Result<(), String> {
        let ip = parse::<Ipv4Net>(&spec.address, "address")?.addr();
        self.addresses
            .lock()
            .await
            .insert((spec.network.clone(), spec.workload_id.clone()), ip);
        let policy = match &spec.firewall {
            Some(d) => Some((
                crate::policy::grpc::firewall_decision(d.clone())
                    .map_err(|e| format!("firewall rules: {e}"))?,
                spec.firewall_monitor,
            )),
            None => None,
        };
        fw.set_workload(ip, policy);
        Ok(())
    }

    /// The workloads of the network, for firewall selectors.
    async fn peers(&self, d: pb::PeerDirectory) -> Result<(), String> {
        let mut fw = self.firewall.lock().await;
        let entry =
            |e: &pb::PeerEntry| -> Result<(Ipv4Addr, crate::policy::types::Labels), String> {
                Ok((
                    parse(&e.address, "peer address")?,
                    e.labels.clone().into_iter().collect(),
                ))
            };
        if d.full {
            fw.set_peers(d.upsert.iter().map(entry).collect::<Result<_, _>>()?);
        } else {
            for e in &d.upsert {
                let (ip, labels) = entry(e)?;
                fw.upsert_peer(ip, labels);
            }
            for a in &d.remove {
                fw.remove_peer(parse(a, "peer address")?);
            }
        }
        self.commit_firewall(&mut fw).await
    }

    /// Make the runner's workload interfaces exactly `set`.
    async fn sync(&self, set: pb::WorkloadSet) -> Result<(), String> {
        let wanted: BTreeSet<String> = set
            .workloads
            .iter()
            .map(|w| attach::alias(&w.network, &w.workload_id))
            .collect();
        let mut errors = Vec::new();
        for (alias, _) in attach::list(self.dp.netlink())
            .await
            .map_err(|e| e.to_string())?
        {
            if !wanted.contains(&alias)
                && let Some((network, workload)) = alias
                    .strip_prefix(attach::ALIAS_PREFIX)
                    .and_then(|r| r.split_once('/'))
            {
                tracing::info!(%network, %workload, "removing a workload interface the host no longer knows");
                match attach::detach(self.dp.netlink(), network, workload).await {
                    Ok(Some(bridge)) => self.dp.port_freed(bridge).await,
                    Ok(None) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        let mut fw = self.firewall.lock().await;
        let mut keep = BTreeSet::new();
        for spec in &set.workloads {
            if let Err(e) = self.attach(spec).await {
                tracing::warn!(workload = %spec.workload_id, error = %e, "cannot restore a workload interface");
                errors.push(format!("{}: {e}", spec.workload_id));
                continue;
            }
            if let Err(e) = self.firewall_for(&mut fw, spec).await {
                errors.push(format!("{}: {e}", spec.workload_id));
            }
            keep.insert((spec.network.clone(), spec.workload_id.clone()));
        }
        let gone: Vec<Ipv4Addr> = {
            let mut addrs = self.addresses.lock().await;
            let stale: Vec<_> = addrs
                .keys()
                .filter(|k| !keep.contains(*k))
                .cloned()
                .collect();
            stale.iter().filter_map(|k| addrs.remove(k)).collect()
        };
        for ip in gone {
            fw.remove_workload(ip);
        }
        if let Err(e) = self.commit_firewall(&mut fw).await {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The runner's explicit settings that contradict the host's assignment, as error lines.
pub fn contradictions(expect: &[Expectation], a: &pb::RegisterResponse) -> Vec<String> {
    let default = a
        .networks
        .iter()
        .find(|n| n.network == crate::network::DEFAULT_NETWORK);
    expect
        .iter()
        .filter_map(|e| {
            let host = match (e.key.as_str(), default) {
                ("overlay.enabled", d) => {
                    d.is_some_and(|d| d.mode == pb::NetworkMode::Overlay as i32).to_string()
                }
                ("overlay.subnet", Some(d)) => d.plan.clone(),
                ("overlay.vxlan_id_base", Some(d)) => d.vxlan_id_base.to_string(),
                ("overlay.vxlan_port", Some(d)) => d.vxlan_port.to_string(),
                ("overlay.mtu", Some(d)) => d.mtu.to_string(),
                _ => return None,
            };
            (host != e.value).then(|| {
                format!(
                    "{} = {} ({}) contradicts the host, which uses {host}; remove the key from the runner's configuration or make it match",
                    e.key, e.value, e.source
                )
            })
        })
        .collect()
}

fn runner_network(
    a: &pb::RegisterResponse,
    n: &pb::NetworkAssignment,
    uplink: &str,
    local: Ipv4Addr,
) -> Result<RunnerNetwork, String> {
    let subnet: Ipv4Net = parse(&n.subnet, "subnet")?;
    let tunnel = if n.mode == pb::NetworkMode::Overlay as i32 {
        Some(RunnerTunnel {
            name: n.tunnel_name.clone(),
            vni: n.vni,
            port: u16::try_from(n.vxlan_port)
                .map_err(|_| format!("vxlan_port {} is out of range", n.vxlan_port))?,
            remote: parse(&a.host_physical_ip, "host_physical_ip")?,
            local,
            overlay: parse(&n.overlay_cidr, "overlay_cidr")?,
            via: parse(&n.host_ip_on_subnet, "host_ip_on_subnet")?,
        })
    } else {
        None
    };
    Ok(RunnerNetwork {
        name: n.network.clone(),
        bridge: n.bridge_name.clone(),
        subnet: subnet.trunc(),
        gateway: parse(&n.gateway, "gateway")?,
        mtu: n.mtu,
        tunnel,
        masquerade: n.masquerade,
        uplink: uplink.to_string(),
        direct_prefix: if n.direct_prefix.is_empty() {
            "vxd".into()
        } else {
            n.direct_prefix.clone()
        },
        egress_table: crate::dataplane::runner::egress_table(&n.network, n.vxlan_id_base),
    })
}

fn parse<T: std::str::FromStr>(s: &str, field: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("the host sent a malformed {field}: {s:?}"))
}

/// The interface of the default route (the uplink NATed traffic leaves by).
async fn default_route_interface(nl: &Netlink) -> Result<String, String> {
    let routes = nl.routes().await.map_err(|e| e.to_string())?;
    let oif = routes
        .iter()
        .find(|r| r.destination.prefix_len() == 0)
        .and_then(|r| r.oif)
        .ok_or("no default route to find the uplink by; set runner.uplink")?;
    nl.link_by_index(oif)
        .await
        .map_err(|e| e.to_string())?
        .map(|l| l.name)
        .ok_or_else(|| format!("the default route's interface #{oif} vanished"))
}
