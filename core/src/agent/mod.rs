//! The runner agent's logic: turn the host's assignment into a data plane, carry out workload
//! commands, and repair drift. Transport (registration, the session stream) lives in
//! [`crate::api::runner`]; this module sees plain messages.

mod decode;
pub mod error;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use weir_proto::v1 as pb;

use self::decode::{firewall_decision, ns_id, ns_pb, parse, runner_network};
pub use self::error::{AgentError, NamespaceProblem};
use crate::dataplane::DataplaneError;
use crate::dataplane::adopt::{ForeignPort, Unadoptable};
use crate::dataplane::attach::{self, WorkloadIface};
use crate::dataplane::firewall::{self, Firewall};
use crate::dataplane::netlink::Netlink;
use crate::dataplane::netns::{NetnsError, NetnsPolicy, NsIdentity};
use crate::dataplane::runner::{DirectPeer, RouteConfig, RunnerNetwork};
use crate::dataplane::runner_kernel::{InspectError, NetlinkRunnerKernel, RunnerKernel};
use crate::failpoint;

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

/// A local workload as the host asked for it, and what the runner last saw of it.
#[derive(Debug, Clone)]
struct Local {
    addr: Ipv4Net,
    netns: PathBuf,
    netns_id: Option<NsIdentity>,
    vm: bool,
    /// Handed off to a container engine (Docker): no namespace of ours to look into.
    handoff: bool,
    /// Since when (and why) its namespace is missing or replaced.
    missing: Option<(Instant, String)>,
    /// Reported gone to the host (once).
    reported: bool,
}

/// A failed attach: why, and whether its new interface was removed again (the runner holds
/// nothing of it).
struct Failed {
    error: AgentError,
    undone: bool,
}

/// Device groups of batched deletions (`ip link ... group`): far from the small numbers
/// operators use, and never 0 (every link's default group).
const DETACH_GROUP_BASE: u32 = 0x5745_0000;

/// Why a handed-off workload is reported gone.
const HANDOFF_GONE: &str =
    "namespace-gone: its handed-off interface is gone (the container it was moved into ended)";

/// Used until the host says otherwise (`RegisterResponse.workload_grace_ms`).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

pub struct Agent {
    kernel: Arc<dyn RunnerKernel>,
    uplink: Option<String>,
    networks: Mutex<BTreeMap<String, RunnerNetwork>>,
    /// The first network the host assigned (what an empty network name means).
    primary: Mutex<String>,
    firewall: Mutex<Firewall>,
    /// The local workloads the host asked for, by (network, workload id).
    local: Mutex<BTreeMap<(String, String), Local>>,
    /// How long a workload's namespace may be missing before it is reported gone.
    grace: Mutex<Duration>,
    /// Which paths may name a workload's namespace.
    netns_policy: NetnsPolicy,
    /// The addresses (network, address) whose interface this process removed: a new interface
    /// with one of them announces itself (gratuitous ARP), since neighbours may still hold the
    /// old interface's MAC. At most every address of the runner's subnets.
    released: std::sync::Mutex<std::collections::HashSet<(String, Ipv4Addr)>>,
    /// Batched deletions so far (each gets its own device group).
    batches: std::sync::atomic::AtomicU32,
    /// This runner's id and the host's last route plan (re-applied after a rebuild).
    routes: Mutex<(u32, Option<pb::RoutePlan>)>,
}

impl Agent {
    /// The agent over the real kernel (netlink and nftables).
    pub fn new(nl: Netlink, uplink: Option<String>, netns_policy: NetnsPolicy) -> Self {
        Self::with_kernel(Arc::new(NetlinkRunnerKernel::new(nl)), uplink, netns_policy)
    }

    /// The agent over any [`RunnerKernel`] (a fake in unit tests).
    pub fn with_kernel(
        kernel: Arc<dyn RunnerKernel>,
        uplink: Option<String>,
        netns_policy: NetnsPolicy,
    ) -> Self {
        Self {
            netns_policy,
            // Seeded per process: a group left behind by a runner killed mid-batch is never
            // reused by the next runner process for other links.
            batches: std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(4096)),
            kernel,
            uplink,
            networks: Mutex::new(BTreeMap::new()),
            primary: Mutex::default(),
            firewall: Mutex::new(Firewall::new()),
            local: Mutex::new(BTreeMap::new()),
            released: std::sync::Mutex::default(),
            grace: Mutex::new(DEFAULT_GRACE),
            routes: Mutex::new((0, None)),
        }
    }

    /// Build (or repair) the data plane for an assignment; `local` is this runner's underlay IP.
    pub async fn apply(&self, a: &pb::RegisterResponse, local: Ipv4Addr) -> Result<(), AgentError> {
        if a.workload_grace_ms > 0 {
            *self.grace.lock().await = Duration::from_millis(u64::from(a.workload_grace_ms));
        }
        let uplink = match &self.uplink {
            Some(u) => u.clone(),
            None => self.kernel.default_route_interface().await?,
        };
        let nets = a
            .networks
            .iter()
            .map(|n| runner_network(a, n, &uplink, local))
            .collect::<Result<Vec<_>, _>>()?;
        self.kernel.apply_networks(&nets).await?;
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
            *self.primary.lock().await = nets.first().map(|n| n.name.clone()).unwrap_or_default();
            *current = nets.into_iter().map(|n| (n.name.clone(), n)).collect();
            // A network no longer built has no neighbours left to correct.
            self.released_mut().retain(|(n, _)| current.contains_key(n));
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
    async fn routes(&self, plan: pb::RoutePlan) -> Result<(), AgentError> {
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
                .collect::<Result<Vec<_>, AgentError>>()?;
            let egress = plan.network_egress.get(&net.name).unwrap_or(&plan.egress);
            let cfg = RouteConfig {
                me,
                direct,
                via_host_egress: egress == "via-host",
            };
            self.kernel.apply_routes(net, &cfg).await?;
        }
        Ok(())
    }

    /// The underlay addresses VXLAN may come from.
    async fn underlay(&self, u: pb::UnderlayPeers) -> Result<(), AgentError> {
        let peers = u
            .addresses
            .iter()
            .map(|a| parse::<Ipv4Addr>(a, "underlay address"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.kernel.set_underlay(peers).await?)
    }

    /// Remove everything: workload interfaces, bridges, tunnels, routes and rules (the
    /// allocation was revoked, or the host refuses this runner).
    pub async fn teardown(&self) -> Result<(), AgentError> {
        self.networks.lock().await.clear();
        self.local.lock().await.clear();
        let links = self.kernel.workload_links().await?;
        let keys: Vec<(String, String)> = links
            .iter()
            .filter_map(|(alias, _)| split_alias(alias))
            .map(|(n, w)| (n.to_string(), w.to_string()))
            .collect();
        // Adopted containers keep their interfaces.
        let made: BTreeSet<(String, String)> = self
            .kernel
            .give_back_adopted(&keys)
            .await?
            .into_iter()
            .collect();
        for (alias, index) in links {
            if !split_alias(&alias)
                .is_some_and(|(n, w)| made.contains(&(n.to_string(), w.to_string())))
            {
                continue;
            }
            tracing::info!(workload = %alias, "removing a workload interface");
            self.kernel.remove_link(index).await?;
        }
        Ok(self.kernel.teardown().await?)
    }

    /// Carry out one command; the answer's `error` is empty on success.
    pub async fn handle(&self, op: pb::command::Op) -> pb::CommandResult {
        let mut out = pb::CommandResult::default();
        let r = match op {
            pb::command::Op::Attach(spec) => match self.attach_workload(&spec, true).await {
                Ok(id) => {
                    out.netns_id = id.map(ns_pb);
                    failpoint::hit("agent.attach.before-answer");
                    Ok(())
                }
                Err(Failed { error, undone }) => {
                    out.nothing_applied = undone;
                    Err(error)
                }
            },
            pb::command::Op::Detach(r) => self.detach_commands(&[r]).await,
            pb::command::Op::Sync(set) => {
                let r = crate::telemetry::metrics::reconcile("runner-sync", self.sync(set)).await;
                out.held = Some(self.held(false).await);
                r
            }
            pb::command::Op::Inspect(_) => {
                out.held = Some(self.held(true).await);
                Ok(())
            }
            pb::command::Op::Peers(d) => self.peers(d).await,
            pb::command::Op::Routes(plan) => self.routes(plan).await,
            pb::command::Op::Underlay(u) => self.underlay(u).await,
        };
        // The process edge: the host reads the error as text.
        out.error = r.err().map(|e| e.to_string()).unwrap_or_default();
        out
    }

    /// Attach one workload: its interface, then its firewall policy. With `undo`, a new
    /// interface that cannot be completed is removed again, so a failed attach leaves nothing
    /// behind (a sync's repair of a known workload keeps what it has).
    async fn attach_workload(
        &self,
        spec: &pb::WorkloadSpec,
        undo: bool,
    ) -> Result<Option<NsIdentity>, Failed> {
        let key = (spec.network.clone(), spec.workload_id.clone());
        let known = self.local.lock().await.contains_key(&key);
        let result = async {
            let id = self.attach(spec, !known).await?;
            let mut fw = self.firewall.lock().await;
            self.firewall_for(&mut fw, spec, id).await?;
            self.commit_firewall(&mut fw).await?;
            Ok::<_, AgentError>(id)
        }
        .await;
        let error = match result {
            Ok(id) => return Ok(id),
            Err(e) => e,
        };
        let adopted = !spec.adopt_port.is_empty();
        let undone = undo
            && !known
            && {
                // An adopted container keeps its interface: its port is given back as found.
                let removed = if adopted {
                    self.give_back(std::slice::from_ref(&key)).await
                } else {
                    self.detach_many(std::slice::from_ref(&key)).await
                };
                match removed {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(workload = %spec.workload_id, error = %e, "removing a failed attach's interface failed");
                        false
                    }
                }
            };
        Err(Failed { error, undone })
    }

    /// Carry out detach commands (one, or a batch queued behind each other): an undone attach
    /// of an adopted container (`give_back`) gives its port back as found first, so the
    /// removal then finds nothing of Weir's to delete for it.
    pub async fn detach_commands(&self, refs: &[pb::WorkloadRef]) -> Result<(), AgentError> {
        let key = |r: &pb::WorkloadRef| (r.network.clone(), r.workload_id.clone());
        let back: Vec<(String, String)> = refs.iter().filter(|r| r.give_back).map(key).collect();
        if !back.is_empty() {
            self.give_back(&back).await?;
        }
        self.detach_many(&refs.iter().map(key).collect::<Vec<_>>())
            .await
    }

    /// Remove workloads' interfaces and their firewall membership (missing ones are fine): one
    /// link dump, one kernel batch deleting the interfaces, one firewall commit — for one
    /// detach, for detaches queued behind each other, or for what a sync removes.
    pub async fn detach_many(&self, workloads: &[(String, String)]) -> Result<(), AgentError> {
        failpoint::hit("agent.detach.before");
        let group = DETACH_GROUP_BASE
            + (self
                .batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % 0x0fff_ffff);
        let freed = self.kernel.detach_many(workloads, group).await?;
        for bridge in freed {
            self.kernel.port_freed(bridge).await;
        }
        let gone: Vec<Ipv4Addr> = {
            let mut local = self.local.lock().await;
            let mut released = self.released_mut();
            workloads
                .iter()
                .filter_map(|k| {
                    let ip = local.remove(k)?.addr.addr();
                    released.insert((k.0.clone(), ip));
                    Some(ip)
                })
                .collect()
        };
        if !gone.is_empty() {
            let mut fw = self.firewall.lock().await;
            for ip in gone {
                fw.remove_workload(ip);
            }
            self.commit_firewall(&mut fw).await?;
        }
        Ok(())
    }

    fn released_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, Ipv4Addr)>> {
        // A panic elsewhere while it was held leaves a set that is still valid.
        self.released.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this process removed an interface that had `ip` on `network`.
    fn was_released(&self, network: &str, ip: Ipv4Addr) -> bool {
        self.released_mut().contains(&(network.to_string(), ip))
    }

    /// Create (or repair) a workload's interface; a container's namespace is checked first
    /// (it must be the one the workload was first attached in). Returns its identity.
    async fn attach(
        &self,
        spec: &pb::WorkloadSpec,
        first: bool,
    ) -> Result<Option<NsIdentity>, AgentError> {
        let net = self
            .networks
            .lock()
            .await
            .get(&spec.network)
            .cloned()
            .ok_or_else(|| AgentError::NetworkNotBuilt(spec.network.clone()))?;
        if first && !spec.adopt_port.is_empty() && !spec.vm && !spec.handoff {
            // A container Weir did not attach: its bridge port becomes the workload's in
            // place, on the bridge it is on; the rest is a repair of what is there.
            let iface = workload_iface(spec)?;
            let bridge = self
                .kernel
                .take_over(
                    &spec.adopt_port,
                    &iface.host_ifname(),
                    &iface.alias(),
                    &net.bridge,
                )
                .await
                .map_err(classify)?;
            let iface = WorkloadIface { bridge, ..iface };
            let expected = spec.netns_id.map(ns_id);
            return self
                .kernel
                .attach_container(&iface, &self.netns_policy, expected)
                .await
                .map(Some)
                .map_err(classify);
        }
        let iface = if spec.vm || spec.handoff {
            None
        } else {
            let mut iface = workload_iface(spec)?;
            iface.announce = self.was_released(&iface.network, iface.addr.addr());
            Some(iface)
        };
        let port = if spec.vm {
            spec.ifname.clone()
        } else {
            attach::host_ifname(&spec.network, &spec.workload_id)
        };
        // A bridge that refuses the port although counted with room: believe it, choose again.
        let mut retried = false;
        loop {
            let bridge = self.kernel.bridge_for(&net, &port).await?;
            if first && let Err(e) = self.address_free(spec, &net, bridge.index).await {
                if bridge.counted {
                    self.kernel.port_freed(bridge.index).await;
                }
                return Err(e);
            }
            let result = self.attach_to(spec, iface.as_ref(), bridge.index).await;
            match result {
                Err(DataplaneError::BridgeFull(i)) if !retried => {
                    self.kernel.bridge_full(i).await;
                    retried = true;
                }
                Err(e) => {
                    if bridge.counted {
                        self.kernel.port_freed(bridge.index).await;
                    }
                    return Err(classify(e));
                }
                Ok(identity) => return Ok(identity),
            }
        }
    }

    /// A new workload's address must not be in use on its bridge by something Weir did not
    /// attach (a container set up by hand, another system's): the neighbour table is asked.
    async fn address_free(
        &self,
        spec: &pb::WorkloadSpec,
        net: &RunnerNetwork,
        bridge: u32,
    ) -> Result<(), AgentError> {
        let ip = parse::<Ipv4Net>(&spec.address, "address")?.addr();
        let own = if spec.vm {
            attach::vm_mac_bytes(&spec.network, &spec.workload_id)
        } else {
            attach::container_mac(&spec.network, &spec.workload_id)
        };
        match self.kernel.address_in_use(bridge, ip, own).await? {
            None => Ok(()),
            Some(mac) => Err(AgentError::AddressInUse {
                ip,
                bridge: net.bridge.clone(),
                mac: attach::mac_string(mac),
            }),
        }
    }

    /// Give adopted containers' ports back as they were found (they keep their interfaces);
    /// forget them. Workloads that are not adopted ones are left alone.
    async fn give_back(&self, workloads: &[(String, String)]) -> Result<(), AgentError> {
        let rest = self.kernel.give_back_adopted(workloads).await?;
        if rest.len() == workloads.len() {
            return Ok(());
        }
        let mut local = self.local.lock().await;
        let mut fw = self.firewall.lock().await;
        for k in workloads.iter().filter(|k| !rest.contains(k)) {
            if let Some(l) = local.remove(k) {
                fw.remove_workload(l.addr.addr());
            }
        }
        drop(local);
        self.commit_firewall(&mut fw).await
    }

    /// The containers on `network`'s bridge (`""`: the primary one) that Weir did not attach,
    /// and the ports that are no adoptable container (with why); and the network's name.
    pub async fn foreign_ports(
        &self,
        network: &str,
    ) -> Result<(String, Vec<ForeignPort>, Vec<Unadoptable>), AgentError> {
        let name = match network {
            "" => self.primary.lock().await.clone(),
            n => n.to_string(),
        };
        let net = self
            .networks
            .lock()
            .await
            .get(&name)
            .cloned()
            .ok_or_else(|| AgentError::NetworkNotBuilt(name.clone()))?;
        let (found, skipped) = self.kernel.foreign_ports(&net, &self.netns_policy).await?;
        Ok((name, found, skipped))
    }

    async fn attach_to(
        &self,
        spec: &pb::WorkloadSpec,
        iface: Option<&WorkloadIface>,
        bridge: u32,
    ) -> Result<Option<NsIdentity>, DataplaneError> {
        let Some(iface) = iface else {
            let owner = attach::alias(&spec.network, &spec.workload_id);
            if spec.handoff {
                let host = attach::host_ifname(&spec.network, &spec.workload_id);
                let macs = [
                    attach::host_mac(&spec.network, &spec.workload_id),
                    attach::container_mac(&spec.network, &spec.workload_id),
                ];
                return self
                    .kernel
                    .attach_handoff(&host, &spec.ifname, &owner, bridge, spec.mtu, macs)
                    .await
                    .map(|()| None);
            }
            return self
                .kernel
                .attach_tap(&spec.ifname, &owner, bridge, spec.mtu)
                .await
                .map(|()| None);
        };
        let iface = WorkloadIface {
            bridge,
            ..iface.clone()
        };
        let expected = spec.netns_id.map(ns_id);
        self.kernel
            .attach_container(&iface, &self.netns_policy, expected)
            .await
            .map(Some)
    }

    /// Apply the firewall's changes. Overlay traffic is connection-tracked exactly while a
    /// firewall table exists (its `ct state` rule needs it): tracking goes on before the table
    /// is installed and off after it is gone, so no flow is ever judged without its state.
    async fn commit_firewall(&self, fw: &mut Firewall) -> Result<(), AgentError> {
        let track = fw.needs_table();
        if track {
            self.kernel
                .set_overlay_tracking(true)
                .await
                .map_err(AgentError::Firewall)?;
        }
        self.kernel
            .commit_firewall(fw)
            .await
            .map_err(AgentError::Firewall)?;
        if !track {
            self.kernel
                .set_overlay_tracking(false)
                .await
                .map_err(AgentError::Firewall)?;
        }
        Ok(())
    }

    /// Record a local workload and give the firewall its policy.
    async fn firewall_for(
        &self,
        fw: &mut Firewall,
        spec: &pb::WorkloadSpec,
        netns_id: Option<NsIdentity>,
    ) -> Result<(), AgentError> {
        let addr = parse::<Ipv4Net>(&spec.address, "address")?;
        let policy = match &spec.firewall {
            Some(d) => Some((firewall_decision(d)?, spec.firewall_monitor)),
            None => None,
        };
        self.local.lock().await.insert(
            (spec.network.clone(), spec.workload_id.clone()),
            Local {
                addr,
                netns: PathBuf::from(&spec.netns),
                netns_id,
                vm: spec.vm,
                handoff: spec.handoff,
                missing: None,
                reported: false,
            },
        );
        fw.set_workload(addr.addr(), policy);
        Ok(())
    }

    /// The workloads of the network, for firewall selectors.
    async fn peers(&self, d: pb::PeerDirectory) -> Result<(), AgentError> {
        let mut fw = self.firewall.lock().await;
        let entry = |e: &pb::PeerEntry| -> Result<(Ipv4Addr, crate::decision::Labels), AgentError> {
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

    /// Make the runner's workload interfaces exactly `set`. A workload whose namespace is
    /// gone, or is another one now, is not recreated: it is remembered as missing and
    /// reported to the host once the grace period has passed.
    async fn sync(&self, set: pb::WorkloadSet) -> Result<(), AgentError> {
        let wanted: BTreeSet<String> = set
            .workloads
            .iter()
            .map(|w| attach::alias(&w.network, &w.workload_id))
            .collect();
        let mut errors = Vec::new();
        let stale: Vec<(String, String)> = self
            .kernel
            .workload_links()
            .await?
            .iter()
            .filter(|(alias, _)| !wanted.contains(alias))
            .filter_map(|(alias, _)| split_alias(alias))
            .map(|(network, workload)| {
                tracing::info!(%network, %workload, "removing a workload interface the host no longer knows");
                (network.to_string(), workload.to_string())
            })
            .collect();
        // Weir deletes only what it made: an adopted container the host no longer knows keeps
        // its interface, its port given back as it was found.
        let stale = match self.kernel.give_back_adopted(&stale).await {
            Ok(rest) => rest,
            Err(e) => {
                errors.push(AgentError::Dataplane(e));
                Vec::new()
            }
        };
        if !stale.is_empty()
            && let Err(e) = self.detach_many(&stale).await
        {
            errors.push(e);
        }
        failpoint::hit("agent.sync.after-removals");
        let keep: BTreeSet<(String, String)> = set
            .workloads
            .iter()
            .map(|w| (w.network.clone(), w.workload_id.clone()))
            .collect();
        let gone: Vec<Ipv4Addr> = {
            let mut local = self.local.lock().await;
            let stale: Vec<_> = local
                .keys()
                .filter(|k| !keep.contains(*k))
                .cloned()
                .collect();
            stale
                .iter()
                .filter_map(|k| local.remove(k))
                .map(|l| l.addr.addr())
                .collect()
        };
        {
            let mut fw = self.firewall.lock().await;
            for ip in gone {
                fw.remove_workload(ip);
            }
        }
        let present: BTreeSet<String> = self
            .kernel
            .workload_links()
            .await?
            .into_iter()
            .map(|(alias, _)| alias)
            .collect();
        for spec in &set.workloads {
            // A handed-off pair that is gone went with its container: making a new one would
            // leave it in our namespace with nobody to move it.
            if spec.handoff && !present.contains(&attach::alias(&spec.network, &spec.workload_id)) {
                self.note_missing(spec, HANDOFF_GONE.into()).await;
                continue;
            }
            match self.attach_workload(spec, false).await.map_err(|f| f.error) {
                Ok(_) => {}
                Err(e) if e.namespace_problem().is_some() => {
                    tracing::warn!(workload = %spec.workload_id, problem = %e, "not restoring a workload whose namespace is missing");
                    self.note_missing(spec, e.to_string()).await;
                }
                Err(e) => {
                    tracing::warn!(workload = %spec.workload_id, error = %e, "cannot restore a workload interface");
                    errors.push(AgentError::Workload {
                        workload: spec.workload_id.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
        let mut fw = self.firewall.lock().await;
        if let Err(e) = self.commit_firewall(&mut fw).await {
            errors.push(e);
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(AgentError::Several(errors)),
        }
    }

    /// Remember a wanted workload whose namespace is missing (its grace period starts now).
    async fn note_missing(&self, spec: &pb::WorkloadSpec, why: String) {
        let Ok(addr) = spec.address.parse::<Ipv4Net>() else {
            return;
        };
        let mut local = self.local.lock().await;
        let l = local
            .entry((spec.network.clone(), spec.workload_id.clone()))
            .or_insert_with(|| Local {
                addr,
                netns: PathBuf::from(&spec.netns),
                netns_id: spec.netns_id.map(ns_id),
                vm: spec.vm,
                handoff: spec.handoff,
                missing: None,
                reported: false,
            });
        if l.missing.is_none() {
            l.missing = Some((Instant::now(), why));
        }
    }

    /// What this runner holds: one entry per workload interface in its kernel. With `deep`,
    /// each container's namespace is checked and its address read inside it.
    pub async fn held(&self, deep: bool) -> pb::HeldWorkloads {
        let links = self.kernel.workload_links().await.unwrap_or_default();
        let local = self.local.lock().await.clone();
        let mut out = pb::HeldWorkloads::default();
        for (alias, _) in links {
            let Some((network, workload)) = split_alias(&alias) else {
                continue;
            };
            let mut h = pb::HeldWorkload {
                network: network.to_string(),
                workload_id: workload.to_string(),
                ..Default::default()
            };
            if let Some(l) = local.get(&(network.to_string(), workload.to_string())) {
                h.netns = l.netns.display().to_string();
                h.netns_id = l.netns_id.map(ns_pb);
                h.vm = l.vm;
                h.handoff = l.handoff;
                if deep {
                    match self.inspect_namespace(l).await {
                        Ok((id, addr)) => {
                            h.netns_id = id.map(ns_pb).or(h.netns_id);
                            h.address = addr;
                        }
                        Err(problem) => h.problem = problem.to_string(),
                    }
                } else if let Some((_, why)) = &l.missing {
                    h.problem = why.clone();
                }
            }
            out.workloads.push(h);
        }
        out
    }

    /// A network as built here: its name (`""` asks for the primary one), this runner's subnet,
    /// its gateway and the network's whole CIDR (the overlay; the subnet in isolated mode).
    /// `None`: no such network (or none assigned yet).
    pub async fn network_addressing(
        &self,
        name: &str,
    ) -> Option<(String, Ipv4Net, Ipv4Addr, Ipv4Net)> {
        let name = match name {
            "" => self.primary.lock().await.clone(),
            n => n.to_string(),
        };
        self.networks
            .lock()
            .await
            .get(&name)
            .map(|n| (n.name.clone(), n.subnet, n.gateway, n.cidr()))
    }

    /// One local container as the kernel holds it now (a CNI CHECK): its interface is there
    /// and the namespace holds `want`. The error says what is wrong.
    pub async fn check_one(
        &self,
        network: &str,
        workload: &str,
        want: Ipv4Net,
    ) -> Result<(), AgentError> {
        let l = self
            .local
            .lock()
            .await
            .get(&(network.to_string(), workload.to_string()))
            .cloned()
            .ok_or_else(|| {
                AgentError::InterfaceMissing(format!(
                    "this runner holds no interface of {workload} on network {network}"
                ))
            })?;
        if l.addr != want {
            return Err(AgentError::InterfaceMissing(format!(
                "this runner gave {workload} {}, but the host records {want}",
                l.addr
            )));
        }
        let (_, addr) = self.inspect_namespace(&l).await?;
        if addr != want.to_string() {
            return Err(AgentError::InterfaceMissing(format!(
                "{workload}'s interface in {} has {addr}, not {want}",
                l.netns.display()
            )));
        }
        Ok(())
    }

    /// Periodic check of every local container's namespace (one link dump, one `stat` per
    /// workload): a namespace that disappeared — its last process gone (the veth goes with
    /// it) or its bind mount removed — or that is another one at the same path starts the
    /// grace period; past it, the workload is reported gone (once).
    pub async fn audit(&self) -> Vec<pb::GoneWorkload> {
        let Ok(links) = self.kernel.workload_links().await else {
            return Vec::new();
        };
        let present: BTreeSet<String> = links.into_iter().map(|(a, _)| a).collect();
        let grace = *self.grace.lock().await;
        let mut local = self.local.lock().await;
        let mut gone = Vec::new();
        for ((network, workload), l) in local.iter_mut() {
            if l.vm {
                continue;
            }
            let problem = if l.handoff {
                // The engine owns the container end and its namespace; ours is the bridge end.
                (!present.contains(&attach::alias(network, workload)))
                    .then(|| HANDOFF_GONE.to_string())
            } else if !present.contains(&attach::alias(network, workload)) {
                Some(format!(
                    "namespace-gone: its interface is gone (the namespace at {} was deleted)",
                    l.netns.display()
                ))
            } else {
                match self.kernel.namespace_identity(&l.netns) {
                    Err(_) => Some(format!(
                        "namespace-gone: the namespace at {} no longer exists",
                        l.netns.display()
                    )),
                    Ok(id) if l.netns_id.is_some_and(|want| want != id) => Some(format!(
                        "namespace-replaced: {} is another namespace now",
                        l.netns.display()
                    )),
                    Ok(_) => None,
                }
            };
            match problem {
                None => {
                    l.missing = None;
                    l.reported = false;
                }
                Some(p) => {
                    let since = l.missing.get_or_insert_with(|| (Instant::now(), p)).0;
                    if !l.reported && since.elapsed() >= grace {
                        l.reported = true;
                        gone.push(pb::GoneWorkload {
                            network: network.clone(),
                            workload_id: workload.clone(),
                            reason: l
                                .missing
                                .as_ref()
                                .map(|(_, why)| why.clone())
                                .unwrap_or_default(),
                        });
                    }
                }
            }
        }
        gone
    }

    /// The identity of the namespace at `path` now (`stat` only: never opened, never blocks).
    fn ns_identity(&self, path: &Path) -> Result<NsIdentity, AgentError> {
        self.kernel.namespace_identity(path).map_err(|e| {
            AgentError::gone(format!(
                "the namespace at {} cannot be found: {e}",
                path.display()
            ))
        })
    }

    /// A local container's namespace as it is now: its identity and the workload interface's
    /// address inside it, or what is wrong.
    async fn inspect_namespace(
        &self,
        l: &Local,
    ) -> Result<(Option<NsIdentity>, String), AgentError> {
        if l.vm || l.handoff {
            return Ok((None, String::new()));
        }
        let id = self.ns_identity(&l.netns)?;
        if l.netns_id.is_some_and(|want| want != id) {
            return Err(AgentError::replaced(format!(
                "{} is another namespace than the one the workload was attached in",
                l.netns.display()
            )));
        }
        let veths = self
            .kernel
            .namespace_veth_addrs(&l.netns)
            .await
            .map_err(|e| match e {
                InspectError::Enter(e) => AgentError::gone(format!("{}: {e}", l.netns.display())),
                InspectError::Read(e) => AgentError::Dataplane(e),
            })?;
        let mut first = None;
        for addrs in &veths {
            if addrs.contains(&l.addr) {
                return Ok((Some(id), l.addr.to_string()));
            }
            first = first.or(addrs.first().copied());
        }
        match first {
            Some(a) => Ok((Some(id), a.to_string())),
            None => Err(AgentError::InterfaceMissing(format!(
                "no workload interface with an address inside {}",
                l.netns.display()
            ))),
        }
    }
}

/// A container's interface as the host specified it (its bridge is chosen later).
fn workload_iface(spec: &pb::WorkloadSpec) -> Result<WorkloadIface, AgentError> {
    Ok(WorkloadIface {
        network: spec.network.clone(),
        workload: spec.workload_id.clone(),
        netns: PathBuf::from(&spec.netns),
        ifname: spec.ifname.clone(),
        addr: parse(&spec.address, "address")?,
        gateway: parse(&spec.gateway, "gateway")?,
        mtu: spec.mtu,
        bridge: 0,
        default_route: spec.default_route,
        source_table: (spec.source_table != 0).then_some(spec.source_table),
        overlay: if spec.overlay_cidr.is_empty() {
            None
        } else {
            Some(parse(&spec.overlay_cidr, "overlay_cidr")?)
        },
        announce: false,
    })
}

/// `weir:<network>/<workload>` → (network, workload).
fn split_alias(alias: &str) -> Option<(&str, &str)> {
    alias
        .strip_prefix(attach::ALIAS_PREFIX)
        .and_then(|r| r.split_once('/'))
}

/// An attach's failure as the host sees it; a namespace that is missing or another one is
/// its own variant, so a sync remembers the workload as missing instead of failing.
fn classify(e: DataplaneError) -> AgentError {
    match &e {
        DataplaneError::NetnsReplaced { .. } => AgentError::replaced(e.to_string()),
        DataplaneError::Netns(NetnsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            AgentError::gone(e.to_string())
        }
        _ => AgentError::Dataplane(e),
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
