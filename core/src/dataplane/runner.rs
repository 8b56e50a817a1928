//! A runner's kernel state: the workload bridge, the tunnel to the host enslaved to it, the
//! route to the rest of the overlay, and Weir's forward and NAT rules.
//!
//! `apply` is idempotent and repairs in place: stale addresses and Weir-owned routes from an
//! older plan are removed, a tunnel whose VNI or port changed is re-created, one whose remote
//! or local address changed is modified. Isolated mode removes every overlay object.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::netlink::{Link, Netlink, ROUTE_PROTOCOL, RoutingRule, VxlanSpec};
use super::nft::TableSpec;
use super::overlay::OverlayRules;
pub use super::overlay::{NETWORK_ALIAS_PREFIX, network_alias};
use super::{DataplaneError, Result, nft, sysctl};

/// Weir's nftables table on a runner.
pub const RUNNER_TABLE: &str = "weir_runner";

/// The tunnel of an overlay network, as the host assigned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerTunnel {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The host's underlay address.
    pub remote: Ipv4Addr,
    /// This runner's underlay address.
    pub local: Ipv4Addr,
    /// The whole overlay, routed via the host.
    pub overlay: Ipv4Net,
    /// The host's address on this runner's subnet (`.254`).
    pub via: Ipv4Addr,
}

/// What a runner builds for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerNetwork {
    pub name: String,
    pub bridge: String,
    /// This runner's subnet, with the gateway (`.1`) as the bridge address.
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// `None` in isolated mode.
    pub tunnel: Option<RunnerTunnel>,
    /// Masquerade traffic leaving the network through `uplink`.
    pub masquerade: bool,
    pub uplink: String,
    /// Direct tunnels to peer runners are `direct_prefix` + peer id in base 36.
    pub direct_prefix: String,
    /// The routing table of this network's via-host egress ([`egress_table`]).
    pub egress_table: u32,
}

impl RunnerNetwork {
    /// Traffic of this network stays inside this CIDR (not NATed, always forwarded).
    pub fn cidr(&self) -> Ipv4Net {
        self.tunnel.as_ref().map_or(self.subnet, |t| t.overlay)
    }
}

/// The inputs of the runner's nftables table.
#[derive(Debug, Clone)]
struct TableInputs {
    networks: Vec<RunnerNetwork>,
    underlay: Vec<Ipv4Addr>,
    /// Whether workload traffic inside an overlay needs connection tracking (a firewall's
    /// `ct state` does; without one it is skipped). Tracked until told otherwise, so a
    /// restarting runner never hides flows from a firewall table still in the kernel.
    track_overlay: bool,
}

impl TableInputs {
    fn table(&self) -> TableSpec {
        runner_table(&self.networks, &self.underlay, self.track_overlay)
    }
}

pub struct RunnerDataplane {
    nl: Netlink,
    /// What the table was last built from, to rebuild it when one input changes.
    last: std::sync::Mutex<TableInputs>,
    /// Ports in use per bridge, and each network's overflow bridges.
    bridges: tokio::sync::Mutex<BridgePorts>,
    /// Bridges whose hardware address this process has pinned (see [`Self::pin_mac`]).
    pinned: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

/// A network's workloads fill its bridge up to [`PORTS_PER_BRIDGE`] and then spill over into
/// overflow bridges (`wbx<k>`, alias `weir-ovf:<network>`), each patched into the network's
/// bridge by a veth pair (`wbx<k>p` ↔ `wbx<k>q`): one layer-2 segment, the gateway on the main
/// bridge.
#[derive(Debug, Default)]
struct BridgePorts {
    /// Ports in use, by bridge ifindex (a cache: a refused enslave corrects it).
    ports: std::collections::HashMap<u32, usize>,
    /// Every bridge's ifindex by name (so an attach does not look its bridge up).
    index_of: std::collections::HashMap<String, u32>,
    /// Overflow bridges (ifindex) by network.
    overflow: std::collections::HashMap<String, Vec<u32>>,
}

/// Forget overflow bridge `index` of `network`; its patch left the bridge `main` (if known).
fn forget_overflow(b: &mut BridgePorts, network: &str, index: u32, main: Option<u32>) {
    b.ports.remove(&index);
    b.index_of.retain(|_, i| *i != index);
    if let Some(list) = b.overflow.get_mut(network) {
        list.retain(|i| *i != index);
        if list.is_empty() {
            b.overflow.remove(network);
        }
    }
    if let Some(main) = main
        && let Some(n) = b.ports.get_mut(&main)
    {
        *n = n.saturating_sub(1);
    }
}

/// Where a workload interface goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeChoice {
    /// The bridge's ifindex.
    pub index: u32,
    /// The port was counted now (give it back with [`RunnerDataplane::port_freed`] if the
    /// attach fails).
    pub counted: bool,
}

/// Ports of a bridge the kernel allows.
pub const BRIDGE_MAX_PORTS: usize = 1023;
/// Ports Weir puts on one bridge. Adding a port costs the kernel more the more ports the bridge
/// has (at ~1,000 ports creating a workload's veth took ~0.5 ms longer than at 10), so bridges
/// are kept small and overflow early.
pub const PORTS_PER_BRIDGE: usize = 256;
/// Ports kept free on a network's main bridge for overflow patches (64 × 255 workloads).
const PATCH_RESERVE: usize = 64;
/// Alias prefix of overflow bridges and their patches (+ network name).
pub const OVERFLOW_ALIAS_PREFIX: &str = "weir-ovf:";

impl RunnerDataplane {
    pub fn new(nl: Netlink) -> Self {
        Self {
            nl,
            last: std::sync::Mutex::new(TableInputs {
                networks: Vec::new(),
                underlay: Vec::new(),
                track_overlay: true,
            }),
            bridges: tokio::sync::Mutex::new(BridgePorts::default()),
            pinned: std::sync::Mutex::default(),
        }
    }

    /// Pin a bridge's hardware address to the one it has. Left to itself a bridge takes its
    /// lowest port's, so a workload port with a lower MAC changes the gateway's MAC: the
    /// workloads' cached one is then another port's, whose frames the bridge passes up as
    /// not its own and IP drops, until their neighbour entries expire (up to ~40 s without
    /// the gateway). Once per bridge and process: setting it tells the kernel it was chosen
    /// (and flushes the bridge's neighbour entries once, which are resolved again).
    async fn pin_mac(&self, link: &Link) -> Result<()> {
        let fresh = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(link.index);
        match link.mac {
            Some(mac) if fresh => self.nl.set_mac(link.index, mac).await,
            _ => Ok(()),
        }
    }

    /// Count every bridge's ports and find the overflow bridges (one link dump, at apply).
    async fn count_ports(&self) -> Result<()> {
        let mut b = BridgePorts::default();
        for l in self.nl.links().await? {
            if let Some(m) = l.master {
                *b.ports.entry(m).or_default() += 1;
            }
            if l.kind.as_deref() != Some("bridge") {
                continue;
            }
            b.index_of.insert(l.name.clone(), l.index);
            if let Some(net) = l
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(OVERFLOW_ALIAS_PREFIX))
            {
                b.overflow.entry(net.to_string()).or_default().push(l.index);
            }
        }
        *self.bridges.lock().await = b;
        Ok(())
    }

    /// The bridge a workload interface `port` of `net` goes into: the bridge it already is in,
    /// else the network's bridge while it has room, else an overflow bridge with room (created
    /// and patched in when none has).
    pub async fn bridge_for(&self, net: &RunnerNetwork, port: &str) -> Result<BridgeChoice> {
        let mut b = self.bridges.lock().await;
        let main = match b.index_of.get(&net.bridge) {
            Some(i) => *i,
            None => {
                let i = self
                    .nl
                    .link(&net.bridge)
                    .await?
                    .ok_or_else(|| {
                        DataplaneError::Invalid(format!("bridge {} does not exist", net.bridge))
                    })?
                    .index;
                b.index_of.insert(net.bridge.clone(), i);
                i
            }
        };
        let overflow = b.overflow.get(&net.name).cloned().unwrap_or_default();
        let existing = |index| BridgeChoice {
            index,
            counted: false,
        };
        let counted = |index| BridgeChoice {
            index,
            counted: true,
        };
        if let Some(link) = self.nl.link(port).await?
            && let Some(m) = link.master
            && (m == main || overflow.contains(&m))
        {
            return Ok(existing(m));
        }
        let used = |b: &BridgePorts, i: u32| b.ports.get(&i).copied().unwrap_or(0);
        let chosen = if used(&b, main) < PORTS_PER_BRIDGE - PATCH_RESERVE {
            main
        } else if let Some(i) = overflow
            .iter()
            .copied()
            .find(|i| used(&b, *i) < PORTS_PER_BRIDGE)
        {
            i
        } else {
            let index = self.add_overflow(net, main).await?;
            // The patch took a port on each side.
            *b.ports.entry(main).or_default() += 1;
            b.ports.insert(index, 1);
            b.overflow.entry(net.name.clone()).or_default().push(index);
            index
        };
        *b.ports.entry(chosen).or_default() += 1;
        Ok(counted(chosen))
    }

    /// A bridge refused a port although the count said it had room: believe the kernel.
    pub async fn bridge_full(&self, index: u32) {
        self.bridges
            .lock()
            .await
            .ports
            .insert(index, BRIDGE_MAX_PORTS);
    }

    /// A port left bridge `index` (a workload interface was deleted). An overflow bridge left
    /// with no workload port is deleted with its patch pair; other bridges are not touched.
    ///
    /// Runs under the same lock as [`Self::bridge_for`], so an attach either counted its port
    /// first (and the bridge is not empty) or chooses after the bridge is gone.
    pub async fn port_freed(&self, index: u32) {
        let mut b = self.bridges.lock().await;
        let Some(n) = b.ports.get_mut(&index) else {
            return;
        };
        *n = n.saturating_sub(1);
        // An overflow bridge's own patch end is one of its ports.
        let empty = *n <= 1;
        let Some(network) = b
            .overflow
            .iter()
            .find(|(_, bridges)| bridges.contains(&index))
            .map(|(net, _)| net.clone())
        else {
            return;
        };
        if empty && let Err(e) = self.remove_overflow(&mut b, &network, index).await {
            tracing::warn!(network = %network, bridge = index, error = %e, "cannot remove an empty overflow bridge");
        }
    }

    /// Delete the overflow bridge `index` of `network` and its patch pair, if the kernel agrees
    /// that no workload port is left on it (the count is a cache); forget it either way it goes.
    async fn remove_overflow(&self, b: &mut BridgePorts, network: &str, index: u32) -> Result<()> {
        let links = self.nl.links().await?;
        let alias = format!("{OVERFLOW_ALIAS_PREFIX}{network}");
        let Some(bridge) = links
            .iter()
            .find(|l| l.index == index && l.alias.as_deref() == Some(alias.as_str()))
        else {
            // Gone already (or not ours any more): nothing to delete.
            forget_overflow(b, network, index, None);
            return Ok(());
        };
        let (patch_p, patch_q) = (format!("{}p", bridge.name), format!("{}q", bridge.name));
        let others = links
            .iter()
            .filter(|l| l.master == Some(index) && l.name != patch_q)
            .count();
        if others > 0 {
            // The count was wrong: believe the kernel and keep the bridge.
            b.ports.insert(index, others + 1);
            return Ok(());
        }
        // Forgotten first, so no attach picks it whatever happens below.
        let main_patched = links
            .iter()
            .find(|l| l.name == patch_p && l.alias.as_deref() == Some(alias.as_str()));
        forget_overflow(b, network, index, main_patched.and_then(|l| l.master));
        tracing::info!(network = %network, bridge = %bridge.name, "removing an empty overflow bridge");
        self.nl.del_link(index).await?;
        if let Some(p) = main_patched {
            self.nl.del_link(p.index).await?;
        }
        Ok(())
    }

    /// Create an overflow bridge for `net`, patched into its bridge `main`; its ifindex.
    async fn add_overflow(&self, net: &RunnerNetwork, main: u32) -> Result<u32> {
        let mut k = 1;
        let name = loop {
            let name = format!("wbx{k}");
            if self.nl.link(&name).await?.is_none() {
                break name;
            }
            k += 1;
        };
        tracing::info!(network = %net.name, bridge = %name, "the network's bridge is full: adding an overflow bridge");
        let alias = format!("{OVERFLOW_ALIAS_PREFIX}{}", net.name);
        let bridge = self.nl.add_bridge(&name, net.mtu).await?;
        self.pin_mac(&bridge).await?;
        self.nl.set_alias(bridge.index, &alias).await?;
        let own = std::fs::File::open("/proc/self/ns/net")
            .map_err(|e| DataplaneError::io("open this process's network namespace", e))?;
        let (p, q) = (format!("{name}p"), format!("{name}q"));
        let patch = self.nl.add_veth_into(&p, &q, &own, net.mtu).await?;
        let peer = self.nl.link(&q).await?.ok_or_else(|| {
            DataplaneError::Invalid(format!("the patch {q} vanished after creation"))
        })?;
        for (l, master) in [(patch.index, main), (peer.index, bridge.index)] {
            self.nl.set_alias(l, &alias).await?;
            self.nl.set_master(l, master).await?;
            self.nl.set_up(l).await?;
        }
        self.nl.set_up(bridge.index).await?;
        Ok(bridge.index)
    }

    /// The underlay addresses VXLAN is accepted from changed (runners joined, moved, left).
    pub async fn set_underlay(&self, peers: Vec<Ipv4Addr>) -> Result<()> {
        self.rebuild_table("nftables.runner_underlay", |t| {
            std::mem::replace(&mut t.underlay, peers.clone()) != peers
        })
        .await
    }

    /// Track the workloads' traffic inside each overlay, or skip it (no firewall needs it; NAT
    /// only concerns traffic leaving the overlay).
    pub async fn set_overlay_tracking(&self, track: bool) -> Result<()> {
        self.rebuild_table("nftables.runner_tracking", |t| {
            std::mem::replace(&mut t.track_overlay, track) != track
        })
        .await
    }

    /// Change the table's inputs with `change` (true: something changed) and rebuild the table
    /// only then, and only once the networks are known.
    async fn rebuild_table(
        &self,
        op: &'static str,
        change: impl FnOnce(&mut TableInputs) -> bool,
    ) -> Result<()> {
        let inputs = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !change(&mut last) {
                return Ok(());
            }
            last.clone()
        };
        if inputs.networks.is_empty() {
            return Ok(());
        }
        crate::telemetry::kernel(op, nft::apply(&inputs.table())).await
    }

    /// Reach `cfg.direct` peers over their own tunnels instead of the host, and steer egress.
    /// Idempotent; stale direct tunnels, routes, FDB entries and egress rules are removed.
    pub async fn apply_routes(&self, net: &RunnerNetwork, cfg: &RouteConfig) -> Result<()> {
        crate::telemetry::kernel("netlink.routes", async {
            let Some(t) = &net.tunnel else {
                return Ok(());
            };
            let alias = format!("{DIRECT_ALIAS_PREFIX}{}", net.name);
            let mut wanted_links = BTreeSet::new();
            let mut wanted_routes = Vec::new();
            for p in &cfg.direct {
                let name = crate::plan::tunnel_name(&net.direct_prefix, p.runner_id);
                let mac = direct_mac(cfg.me, p.runner_id);
                let link = match self.nl.link(&name).await? {
                    Some(l)
                        if l.vxlan
                            .as_ref()
                            .is_some_and(|v| v.vni == p.vni && v.port == t.port)
                            && l.mac == Some(mac) =>
                    {
                        let v = l.vxlan.clone().unwrap_or_default();
                        if v.remote != Some(p.physical_ip) || v.local != Some(t.local) || v.learning
                        {
                            self.nl
                                .set_vxlan_endpoints(l.index, p.physical_ip, t.local)
                                .await?;
                        }
                        l
                    }
                    other => {
                        if let Some(old) = other {
                            self.nl.del_link(old.index).await?;
                        }
                        let spec = VxlanSpec {
                            name: name.clone(),
                            vni: p.vni,
                            remote: p.physical_ip,
                            local: t.local,
                            port: t.port,
                            mtu: net.mtu,
                        };
                        let l = self.nl.add_vxlan_with_mac(&spec, Some(mac)).await?;
                        self.nl.set_alias(l.index, &alias).await?;
                        l
                    }
                };
                if link.mtu != net.mtu {
                    self.nl.set_mtu(link.index, net.mtu).await?;
                }
                if !link.up {
                    self.nl.set_up(link.index).await?;
                }
                self.nl
                    .replace_route_as(p.subnet, None, Some(link.index), DIRECT_ROUTE_PROTOCOL)
                    .await?;
                wanted_links.insert(name);
                wanted_routes.push(p.subnet);
            }
            // This network's direct routes only: they lie inside its overlay.
            for route in self.nl.routes().await? {
                if route.protocol == DIRECT_ROUTE_PROTOCOL
                    && t.overlay.contains(&route.destination)
                    && !wanted_routes.contains(&route.destination)
                {
                    self.nl.del_route(&route).await?;
                }
            }
            for l in self.nl.links().await? {
                if l.alias.as_deref() == Some(alias.as_str()) && !wanted_links.contains(&l.name) {
                    self.nl.del_link(l.index).await?;
                }
            }
            // Frames for a direct peer's tunnel MAC go straight back to that peer.
            if let Some(vx) = self.nl.link(&t.name).await? {
                let want: Vec<([u8; 6], Ipv4Addr)> = cfg
                    .direct
                    .iter()
                    .map(|p| (direct_mac(p.runner_id, cfg.me), p.physical_ip))
                    .collect();
                for (mac, dst) in &want {
                    self.nl.fdb_replace(vx.index, *mac, *dst).await?;
                }
                for (mac, dst) in self.nl.fdb_entries(vx.index).await? {
                    if mac[0] == 0x02 && mac[1] == 0x77 && !want.contains(&(mac, dst)) {
                        self.nl.fdb_del(vx.index, mac, dst).await?;
                    }
                }
            }
            self.apply_egress(net, t, cfg.via_host_egress).await
        })
        .await
    }

    /// Via-host egress: traffic from the runner's subnet looks up a table whose default route
    /// is the host (on this subnet); the host NATs it. Runner-NAT: no rule.
    async fn apply_egress(
        &self,
        net: &RunnerNetwork,
        t: &RunnerTunnel,
        via_host: bool,
    ) -> Result<()> {
        let rule = RoutingRule {
            source: Some(net.subnet),
            table: net.egress_table,
            priority: EGRESS_PRIORITY,
        };
        let existing = self.nl.rules_for_table(net.egress_table).await?;
        for r in existing.iter().filter(|r| !via_host || **r != rule) {
            self.nl.del_rule(r).await?;
        }
        if via_host {
            let bridge = self.nl.link(&net.bridge).await?.ok_or_else(|| {
                DataplaneError::Invalid(format!("bridge {} does not exist", net.bridge))
            })?;
            self.nl
                .replace_route_in_table(
                    net.egress_table,
                    Ipv4Net::default(),
                    Some(t.via),
                    bridge.index,
                )
                .await?;
            if !existing.contains(&rule) {
                self.nl.add_rule(&rule).await?;
            }
        } else {
            for r in self.nl.routes_in_table(net.egress_table).await? {
                self.nl.del_route(&r).await?;
            }
        }
        Ok(())
    }

    /// Remove the direct tunnels, overflow bridges, direct routes and egress rules of
    /// networks not in `networks` (removed from the host's configuration, or this runner left
    /// them).
    async fn remove_other_networks(&self, networks: &[RunnerNetwork]) -> Result<()> {
        for l in self.nl.links().await? {
            let Some(net) = l.alias.as_deref().and_then(|a| {
                a.strip_prefix(DIRECT_ALIAS_PREFIX)
                    .or_else(|| a.strip_prefix(OVERFLOW_ALIAS_PREFIX))
            }) else {
                continue;
            };
            if !networks.iter().any(|n| n.name == net) {
                self.nl.del_link(l.index).await?;
            }
        }
        for route in self.nl.routes().await? {
            let inside = networks
                .iter()
                .any(|n| n.cidr().contains(&route.destination));
            if route.protocol == DIRECT_ROUTE_PROTOCOL && !inside {
                self.nl.del_route(&route).await?;
            }
        }
        for r in self.nl.rules().await? {
            if r.priority == EGRESS_PRIORITY && !networks.iter().any(|n| n.egress_table == r.table)
            {
                self.nl.del_rule(&r).await?;
                for route in self.nl.routes_in_table(r.table).await? {
                    self.nl.del_route(&route).await?;
                }
            }
        }
        Ok(())
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Build or repair everything for `networks`, and remove Weir's bridges and tunnels that
    /// no network uses any more (e.g. the overlay's in isolated mode).
    pub async fn apply(&self, networks: &[RunnerNetwork]) -> Result<()> {
        crate::telemetry::kernel("netlink.runner_networks", async {
            sysctl::enable_ip_forward()?;
            self.remove_other_networks(networks).await?;
            for link in self.own_links().await? {
                let wanted = networks.iter().any(|n| {
                    n.bridge == link.name || n.tunnel.as_ref().is_some_and(|t| t.name == link.name)
                });
                if !wanted {
                    tracing::info!(link = %link.name, "removing a link no network uses any more");
                    self.nl.del_link(link.index).await?;
                }
            }
            let mut want_routes = Vec::new();
            for net in networks {
                let bridge = self.ensure_bridge(net).await?;
                sysctl::disable_redirects(&net.bridge)?;
                if let Some(t) = &net.tunnel {
                    self.ensure_tunnel(net, t, bridge).await?;
                    // A flat network is the bridge's own subnet: its peers on other runners
                    // are neighbours the host answers for, no route goes via the host (one
                    // would replace the bridge's connected route).
                    if t.overlay != net.subnet {
                        self.nl
                            .replace_route(t.overlay, Some(t.via), Some(bridge))
                            .await?;
                        want_routes.push((t.overlay, t.via));
                    }
                }
            }
            // Weir-owned routes that no network wants any more (an older plan) go away.
            for route in self.nl.routes().await? {
                if route.protocol == ROUTE_PROTOCOL
                    && !want_routes
                        .iter()
                        .any(|(d, gw)| route.destination == *d && route.gateway == Some(*gw))
                {
                    tracing::info!(route = %route.destination, "removing stale overlay route");
                    self.nl.del_route(&route).await?;
                }
            }
            let inputs = {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                last.networks = networks.to_vec();
                last.clone()
            };
            self.count_ports().await?;
            nft::apply(&inputs.table()).await
        })
        .await
    }

    async fn ensure_bridge(&self, net: &RunnerNetwork) -> Result<u32> {
        let link = match self.nl.link(&net.bridge).await? {
            Some(l) if l.kind.as_deref() == Some("bridge") => l,
            Some(l) => {
                return Err(DataplaneError::Invalid(format!(
                    "link {} exists but is a {} link, not a bridge; rename or remove it",
                    net.bridge,
                    l.kind.as_deref().unwrap_or("physical")
                )));
            }
            None => self.nl.add_bridge(&net.bridge, net.mtu).await?,
        };
        self.pin_mac(&link).await?;
        self.nl
            .ensure_alias(&link, &network_alias(&net.name))
            .await?;
        if link.mtu != net.mtu {
            self.nl.set_mtu(link.index, net.mtu).await?;
        }
        let gw = Ipv4Net::new(net.gateway, net.subnet.prefix_len())
            .map_err(|e| DataplaneError::Invalid(e.to_string()))?;
        self.nl.sync_addrs(link.index, &[gw]).await?;
        if !link.up {
            self.nl.set_up(link.index).await?;
        }
        Ok(link.index)
    }

    async fn ensure_tunnel(
        &self,
        net: &RunnerNetwork,
        t: &RunnerTunnel,
        bridge: u32,
    ) -> Result<()> {
        let existing = self.nl.link(&t.name).await?;
        let link = match existing {
            Some(l)
                if l.kind.as_deref() == Some("vxlan")
                    && l.vxlan
                        .as_ref()
                        .is_some_and(|v| v.vni == t.vni && v.port == t.port) =>
            {
                let v = l.vxlan.clone().unwrap_or_default();
                if v.remote != Some(t.remote) || v.local != Some(t.local) || v.learning {
                    self.nl
                        .set_vxlan_endpoints(l.index, t.remote, t.local)
                        .await?;
                }
                l
            }
            Some(l) if l.kind.as_deref() != Some("vxlan") => {
                return Err(DataplaneError::Invalid(format!(
                    "link {} exists but is not a VXLAN link; rename or remove it",
                    t.name
                )));
            }
            other => {
                if let Some(old) = other {
                    tracing::info!(link = %t.name, "re-creating tunnel: VNI or port changed");
                    self.nl.del_link(old.index).await?;
                }
                self.nl
                    .add_vxlan(&VxlanSpec {
                        name: t.name.clone(),
                        vni: t.vni,
                        remote: t.remote,
                        local: t.local,
                        port: t.port,
                        mtu: net.mtu,
                    })
                    .await?
            }
        };
        self.nl
            .ensure_alias(&link, &network_alias(&net.name))
            .await?;
        if link.mtu != net.mtu {
            self.nl.set_mtu(link.index, net.mtu).await?;
        }
        // The tunnel is a bridge port: it must not carry addresses of its own.
        self.nl.sync_addrs(link.index, &[]).await?;
        if link.master != Some(bridge) {
            self.nl.set_master(link.index, bridge).await?;
        }
        if !link.up {
            self.nl.set_up(link.index).await?;
        }
        Ok(())
    }

    /// Bridges and tunnels Weir made on this runner.
    async fn own_links(&self) -> Result<Vec<Link>> {
        Ok(self
            .nl
            .links()
            .await?
            .into_iter()
            .filter(|l| {
                l.alias
                    .as_deref()
                    .is_some_and(|a| a.starts_with(NETWORK_ALIAS_PREFIX))
            })
            .collect())
    }

    /// Remove every bridge, tunnel, route and rule Weir made (the runner lost its allocation).
    pub async fn teardown(&self) -> Result<()> {
        crate::telemetry::kernel("netlink.teardown", async {
            for link in self.nl.links().await? {
                let ours = link.alias.as_deref().is_some_and(|a| {
                    a.starts_with(NETWORK_ALIAS_PREFIX) || a.starts_with(DIRECT_ALIAS_PREFIX)
                });
                if ours {
                    self.nl.del_link(link.index).await?;
                }
            }
            for route in self.nl.routes().await? {
                if route.protocol == ROUTE_PROTOCOL || route.protocol == DIRECT_ROUTE_PROTOCOL {
                    self.nl.del_route(&route).await?;
                }
            }
            self.remove_other_networks(&[]).await?;
            nft::delete(super::firewall::FIREWALL_TABLE).await?;
            nft::delete(RUNNER_TABLE).await
        })
        .await
    }
}

/// The runner's table: each network's traffic forwarded, masqueraded when it leaves the
/// network through its uplink, and, unless `track_overlay`, untracked inside it (the masquerade
/// rule only concerns traffic leaving it); VXLAN only from `underlay` and the tunnels' remotes
/// (the host).
pub fn runner_table(
    networks: &[RunnerNetwork],
    underlay: &[Ipv4Addr],
    track_overlay: bool,
) -> TableSpec {
    let mut t = OverlayRules::new(RUNNER_TABLE);
    for net in networks {
        let masquerade_via = net.masquerade.then_some(net.uplink.as_str());
        t.network(&net.name, net.cidr(), track_overlay, masquerade_via);
    }
    for tunnel in networks.iter().filter_map(|n| n.tunnel.as_ref()) {
        t.vxlan(tunnel.port, tunnel.local);
        t.peers([tunnel.remote]);
    }
    t.peers(underlay.iter().copied());
    t.build()
}

/// Direct tunnels carry this alias prefix (+ network), so stale ones are found and removed.
pub const DIRECT_ALIAS_PREFIX: &str = "weir-direct:";
/// Routes to directly reached peers carry their own protocol number (not [`ROUTE_PROTOCOL`]).
pub const DIRECT_ROUTE_PROTOCOL: u8 = 88;
/// The priority of every via-host egress rule (how Weir finds its own rules).
pub const EGRESS_PRIORITY: u32 = 87;

/// The routing table of a network's via-host egress: 87 for `default`, `1000 + vxlan_id_base`
/// for the others (distinct: networks' VNI ranges do not overlap).
pub fn egress_table(network: &str, vxlan_id_base: u32) -> u32 {
    if network == crate::config::DEFAULT_NETWORK {
        EGRESS_PRIORITY
    } else {
        1000u32.saturating_add(vxlan_id_base)
    }
}

/// The MAC of runner `from`'s direct tunnel to runner `to`: locally administered and derived
/// from both ids, so the receiving runner can point it back without asking anybody.
pub fn direct_mac(from: u32, to: u32) -> [u8; 6] {
    [
        0x02,
        0x77,
        (from >> 8) as u8,
        from as u8,
        (to >> 8) as u8,
        to as u8,
    ]
}

/// A peer runner reached without the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectPeer {
    pub runner_id: u32,
    pub physical_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub vni: u32,
}

/// Which peers are direct and where workloads egress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteConfig {
    /// This runner's id.
    pub me: u32,
    pub direct: Vec<DirectPeer>,
    pub via_host_egress: bool,
}
