//! What the runner agent asks of the kernel, as one interface ([`RunnerKernel`]), and its real
//! implementation over netlink and nftables ([`NetlinkRunnerKernel`]), which delegates to
//! [`super::runner`] (networks, bridges, routes, the runner's table), [`super::attach`]
//! (workload interfaces), [`super::netns`] (namespace identity) and [`super::firewall`]
//! (committing the workload firewall).
//!
//! The agent ([`crate::agent`]) holds an `Arc<dyn RunnerKernel>`, so its rules (undo of a
//! failed attach, one batch per detach, sync, audit, the conntrack order around the firewall)
//! are unit-tested against a recording fake (`fake_runner`, test builds only) without root and
//! without namespaces; the namespace tests in `core/tests/` prove this implementation.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::adopt::{self, ForeignPort, Unadoptable};
use super::attach::{self, WorkloadIface};
use super::firewall::Firewall;
use super::netlink::Netlink;
use super::netns::{self, NetnsPolicy, NsIdentity};
use super::runner::{BridgeChoice, RouteConfig, RunnerDataplane, RunnerNetwork};
use super::{DataplaneError, Result};

/// Why a workload's namespace could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The namespace cannot be entered (it is gone, or the path is no namespace now).
    #[error("{0}")]
    Enter(#[source] DataplaneError),
    /// Entered, but reading its links or addresses failed.
    #[error("{0}")]
    Read(#[source] DataplaneError),
}

/// Everything the runner agent asks of the kernel.
#[async_trait::async_trait]
pub trait RunnerKernel: Send + Sync {
    /// Build or repair the bridges, tunnels, routes and NAT of `networks`; remove Weir's
    /// networks not among them.
    async fn apply_networks(&self, networks: &[RunnerNetwork]) -> Result<()>;
    /// The underlay addresses VXLAN is accepted from.
    async fn set_underlay(&self, peers: Vec<Ipv4Addr>) -> Result<()>;
    /// Connection-track the traffic inside the overlays (while a firewall table exists), or not.
    async fn set_overlay_tracking(&self, track: bool) -> Result<()>;
    /// Direct tunnels to peer runners and the egress rule of one network.
    async fn apply_routes(&self, net: &RunnerNetwork, cfg: &RouteConfig) -> Result<()>;
    /// Remove every bridge, tunnel, route and table Weir made (not workload interfaces: see
    /// [`Self::workload_links`] and [`Self::remove_link`]).
    async fn teardown(&self) -> Result<()>;

    /// The bridge workload interface `port` of `net` goes into (an overflow bridge when the
    /// network's bridge is full).
    async fn bridge_for(&self, net: &RunnerNetwork, port: &str) -> Result<BridgeChoice>;
    /// Bridge `index` refused a port: count it full.
    async fn bridge_full(&self, index: u32);
    /// A port left bridge `index`.
    async fn port_freed(&self, index: u32);

    /// Weir's workload interfaces in the kernel: (alias `weir:<network>/<workload>`, ifindex).
    async fn workload_links(&self) -> Result<Vec<(String, u32)>>;
    /// Delete one link.
    async fn remove_link(&self, index: u32) -> Result<()>;
    /// Create or repair a container's interface inside its namespace, which `policy` must
    /// accept and which must be `expected` when given; returns the namespace's identity. A
    /// refused attach leaves no interface behind.
    async fn attach_container(
        &self,
        iface: &WorkloadIface,
        policy: &NetnsPolicy,
        expected: Option<NsIdentity>,
    ) -> Result<NsIdentity>;
    /// Create or repair a VM's tap `name` (owned by `alias`) on bridge `bridge`.
    async fn attach_tap(&self, name: &str, alias: &str, bridge: u32, mtu: u32) -> Result<()>;
    /// Create (or repair the bridge end of) a veth pair `host` <-> `peer` whose `peer` end
    /// stays, unconfigured, in this namespace for a container engine to move (Docker).
    async fn attach_handoff(
        &self,
        host: &str,
        peer: &str,
        alias: &str,
        bridge: u32,
        mtu: u32,
        macs: [[u8; 6]; 2],
    ) -> Result<()>;
    /// Remove workloads' interfaces in one kernel batch (device group `group`); missing ones
    /// are fine. Returns the bridges that lost a port, one entry per removed port.
    async fn detach_many(&self, workloads: &[(String, String)], group: u32) -> Result<Vec<u32>>;

    /// The containers on `net`'s bridge that Weir did not attach (see [`adopt::discover`]).
    async fn foreign_ports(
        &self,
        net: &RunnerNetwork,
        policy: &NetnsPolicy,
    ) -> Result<(Vec<ForeignPort>, Vec<Unadoptable>)>;
    /// Take foreign port `port` of bridge `bridge` over as workload interface `name` (alias
    /// `alias`); returns the bridge's index.
    async fn take_over(&self, port: &str, name: &str, alias: &str, bridge: &str) -> Result<u32>;
    /// Of `workloads`, give back (un-adopt) those whose bridge end Weir did not make (its MAC
    /// is not Weir's for the workload): the container keeps its interface. Returns the rest.
    async fn give_back_adopted(
        &self,
        workloads: &[(String, String)],
    ) -> Result<Vec<(String, String)>>;
    /// The MAC of something else on bridge `bridge` that uses `ip`, as far as the neighbour
    /// table knows (`own`: the MAC the workload's interface will have).
    async fn address_in_use(
        &self,
        bridge: u32,
        ip: Ipv4Addr,
        own: [u8; 6],
    ) -> Result<Option<[u8; 6]>>;

    /// Apply the firewall's pending changes to the kernel.
    async fn commit_firewall(&self, fw: &mut Firewall) -> Result<()>;

    /// The identity of the namespace at `path` now (`stat` only: never opened).
    fn namespace_identity(&self, path: &Path) -> Result<NsIdentity>;
    /// The addresses of each veth inside the namespace at `path`.
    async fn namespace_veth_addrs(
        &self,
        path: &Path,
    ) -> std::result::Result<Vec<Vec<Ipv4Net>>, InspectError>;
    /// The name of the default route's interface (the uplink NATed traffic leaves by).
    async fn default_route_interface(&self) -> Result<String>;
}

/// The runner's kernel through netlink and nftables.
pub struct NetlinkRunnerKernel {
    dp: RunnerDataplane,
}

impl NetlinkRunnerKernel {
    pub fn new(nl: Netlink) -> Self {
        Self {
            dp: RunnerDataplane::new(nl),
        }
    }

    fn nl(&self) -> &Netlink {
        self.dp.netlink()
    }
}

#[async_trait::async_trait]
impl RunnerKernel for NetlinkRunnerKernel {
    async fn apply_networks(&self, networks: &[RunnerNetwork]) -> Result<()> {
        self.dp.apply(networks).await
    }

    async fn set_underlay(&self, peers: Vec<Ipv4Addr>) -> Result<()> {
        self.dp.set_underlay(peers).await
    }

    async fn set_overlay_tracking(&self, track: bool) -> Result<()> {
        self.dp.set_overlay_tracking(track).await
    }

    async fn apply_routes(&self, net: &RunnerNetwork, cfg: &RouteConfig) -> Result<()> {
        self.dp.apply_routes(net, cfg).await
    }

    async fn teardown(&self) -> Result<()> {
        self.dp.teardown().await
    }

    async fn bridge_for(&self, net: &RunnerNetwork, port: &str) -> Result<BridgeChoice> {
        self.dp.bridge_for(net, port).await
    }

    async fn bridge_full(&self, index: u32) {
        self.dp.bridge_full(index).await;
    }

    async fn port_freed(&self, index: u32) {
        self.dp.port_freed(index).await;
    }

    async fn workload_links(&self) -> Result<Vec<(String, u32)>> {
        attach::list(self.nl()).await
    }

    async fn remove_link(&self, index: u32) -> Result<()> {
        self.nl().del_link(index).await
    }

    async fn attach_container(
        &self,
        iface: &WorkloadIface,
        policy: &NetnsPolicy,
        expected: Option<NsIdentity>,
    ) -> Result<NsIdentity> {
        attach::attach_checked(self.nl(), iface, policy, expected).await
    }

    async fn attach_tap(&self, name: &str, alias: &str, bridge: u32, mtu: u32) -> Result<()> {
        attach::attach_tap(self.nl(), name, alias, bridge, mtu).await
    }

    async fn attach_handoff(
        &self,
        host: &str,
        peer: &str,
        alias: &str,
        bridge: u32,
        mtu: u32,
        macs: [[u8; 6]; 2],
    ) -> Result<()> {
        attach::attach_handoff(self.nl(), host, peer, alias, bridge, mtu, macs).await
    }

    async fn detach_many(&self, workloads: &[(String, String)], group: u32) -> Result<Vec<u32>> {
        attach::detach_many(self.nl(), workloads, group).await
    }

    async fn foreign_ports(
        &self,
        net: &RunnerNetwork,
        policy: &NetnsPolicy,
    ) -> Result<(Vec<ForeignPort>, Vec<Unadoptable>)> {
        let bridge = self.nl().link(&net.bridge).await?.ok_or_else(|| {
            DataplaneError::Invalid(format!("bridge {} does not exist", net.bridge))
        })?;
        adopt::discover(self.nl(), bridge.index, net.subnet, policy).await
    }

    async fn take_over(&self, port: &str, name: &str, alias: &str, bridge: &str) -> Result<u32> {
        adopt::take_over(self.nl(), port, name, alias, bridge).await
    }

    async fn give_back_adopted(
        &self,
        workloads: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        if workloads.is_empty() {
            return Ok(Vec::new());
        }
        let links = self.nl().links().await?;
        let by_name: std::collections::HashMap<&str, &super::netlink::Link> =
            links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut rest = Vec::new();
        for (network, workload) in workloads {
            let name = attach::host_ifname(network, workload);
            let owner = attach::alias(network, workload);
            // Weir's own ports carry Weir's MAC for the workload; an adopted one kept its own.
            let adopted = by_name.get(name.as_str()).filter(|l| {
                l.alias.as_deref() == Some(owner.as_str())
                    && l.kind.as_deref() == Some("veth")
                    && l.mac
                        .is_some_and(|m| m != attach::host_mac(network, workload))
            });
            match adopted {
                Some(l) => adopt::give_back(self.nl(), l.index, &name).await?,
                None => rest.push((network.clone(), workload.clone())),
            }
        }
        Ok(rest)
    }

    async fn address_in_use(
        &self,
        bridge: u32,
        ip: Ipv4Addr,
        own: [u8; 6],
    ) -> Result<Option<[u8; 6]>> {
        adopt::in_use_by(self.nl(), bridge, ip, own).await
    }

    async fn commit_firewall(&self, fw: &mut Firewall) -> Result<()> {
        fw.commit().await
    }

    fn namespace_identity(&self, path: &Path) -> Result<NsIdentity> {
        netns::identity(path).map_err(|e| DataplaneError::io("stat namespace", e))
    }

    async fn namespace_veth_addrs(
        &self,
        path: &Path,
    ) -> std::result::Result<Vec<Vec<Ipv4Net>>, InspectError> {
        let inner = Netlink::in_namespace(path).map_err(InspectError::Enter)?;
        let links = inner.links().await.map_err(InspectError::Read)?;
        let mut out = Vec::new();
        for link in links.iter().filter(|k| k.kind.as_deref() == Some("veth")) {
            out.push(inner.addrs(link.index).await.map_err(InspectError::Read)?);
        }
        Ok(out)
    }

    async fn default_route_interface(&self) -> Result<String> {
        let nl = self.nl();
        let oif = nl
            .routes()
            .await?
            .iter()
            .find(|r| r.destination.prefix_len() == 0)
            .and_then(|r| r.oif)
            .ok_or_else(|| {
                DataplaneError::Invalid(
                    "no default route to find the uplink by; set runner.uplink".into(),
                )
            })?;
        nl.link_by_index(oif).await?.map(|l| l.name).ok_or_else(|| {
            DataplaneError::Invalid(format!("the default route's interface #{oif} vanished"))
        })
    }
}
