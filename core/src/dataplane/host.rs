//! The hub's kernel state: the host-IP device, one VXLAN tunnel per runner and Weir's table.
//!
//! Reconcile never flaps a valid tunnel: a link whose kind, VNI and port are right is adopted as
//! it is and repaired in place (remote, local, MTU, address); only tunnels that cannot be
//! changed in place (wrong VNI or port, id outside the plan) are deleted and re-created.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::firewalld::Firewalld;
use super::netlink::{Link, Netlink, ROUTE_PROTOCOL, VxlanSpec};
use super::nfnl::{self, Elem};
use super::nft::TableSpec;
use super::overlay::{NETWORK_ALIAS_PREFIX, OverlayRules, network_alias};
pub use super::overlay::{UNDERLAY_DROPS, UNDERLAY_SET, underlay_notrack};
use super::{DataplaneError, Result, nft, sysctl};
use crate::plan::{self, Plan};

/// Weir's nftables table on the host.
pub const HOST_TABLE: &str = "weir_host";

/// What the host builds for one overlay network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    pub name: String,
    /// Masquerade the network's traffic leaving through the host's uplink (via-host egress);
    /// false forwards it with the workload's own address.
    pub masquerade: bool,
    pub plan: Plan,
    pub vxlan_id_base: u32,
    pub port: u16,
    pub mtu: u32,
    pub host_device: String,
    pub tunnel_prefix: String,
    /// The underlay address tunnels are sourced from (`host.reachable_address`).
    pub local: Ipv4Addr,
}

/// The `/32` of one address.
fn host_route(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).unwrap_or_default()
}

/// A `vxkr*` link found in the kernel that is a valid tunnel of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTunnel {
    pub runner_id: u32,
    pub ifindex: u32,
    pub remote: Option<Ipv4Addr>,
}

/// The result of making a tunnel right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelChange {
    Unchanged,
    Repaired,
    Created,
}

pub struct HostDataplane {
    nl: Netlink,
    firewalld: tokio::sync::OnceCell<Option<Firewalld>>,
    /// What the kernel's underlay set holds.
    underlay: std::sync::Mutex<BTreeSet<Ipv4Addr>>,
    /// The tunnels the last [`HostDataplane::scan_tunnels`] read (link and addresses, by
    /// name), each used once by the `ensure_tunnel` or `remove_tunnel` of the reconcile that
    /// follows it, so a host adopting thousands of tunnels reads the kernel twice (one link
    /// dump, one address dump), not twice per tunnel.
    /// Kept only briefly: what a later call finds in the kernel is read afresh.
    scanned: std::sync::Mutex<Scanned>,
    /// Give every tunnel the MAC address its VNI determines ([`tunnel_mac`]), repairing an
    /// adopted one in place: with several hosts, the tunnel a runner reaches after a failover
    /// has the MAC its neighbour cache already holds for the host's `.254`.
    stable_macs: bool,
}

/// The MAC address of the host's end of the tunnel with `vni`: locally administered, the
/// same on every host, so the hub role can move without the runners' neighbour entries going
/// stale (they would point at the old host's MAC for half a minute).
pub fn tunnel_mac(vni: u32) -> [u8; 6] {
    let v = vni.to_be_bytes();
    [0x02, 0x57, v[0], v[1], v[2], v[3]]
}

/// See [`HostDataplane::scanned`].
#[derive(Default)]
struct Scanned {
    at: Option<std::time::Instant>,
    tunnels: HashMap<String, (Link, Vec<Ipv4Net>)>,
}

/// How long a scan stands for the kernel's state: the reconcile that follows it.
const SCAN_VALID: std::time::Duration = std::time::Duration::from_secs(30);

impl HostDataplane {
    pub fn new(nl: Netlink) -> Self {
        Self {
            nl,
            firewalld: tokio::sync::OnceCell::new(),
            underlay: std::sync::Mutex::new(BTreeSet::new()),
            scanned: Default::default(),
            stable_macs: false,
        }
    }

    /// Repair adopted tunnels' MAC addresses to [`tunnel_mac`] (several hosts); new tunnels
    /// get it either way.
    pub fn with_stable_macs(mut self) -> Self {
        self.stable_macs = true;
        self
    }

    /// Stop acting as the hub: remove every link of Weir's networks (the tunnels with their
    /// `.254` addresses, the host-IP devices with the overlay's `.1`), so no runner still
    /// pointed here is routed by this host. The next leader builds its own.
    pub async fn step_down(&self) -> Result<()> {
        crate::telemetry::kernel("netlink.host_step_down", async {
            for link in self.nl.links().await? {
                if link
                    .alias
                    .as_deref()
                    .is_some_and(|a| a.starts_with(NETWORK_ALIAS_PREFIX))
                {
                    self.nl.del_link(link.index).await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Tell firewalld (if it manages this namespace) to trust one of Weir's interfaces.
    async fn trust(&self, ifname: &str) {
        if let Some(fw) = self.firewalld.get_or_init(Firewalld::detect).await {
            fw.trust(ifname).await;
        }
    }

    /// Forwarding, the host-IP device and Weir's forward rules for `networks`.
    /// Forwarding, the host-IP devices, and Weir's table (forward accept, VXLAN accepted only
    /// from `underlay`, NAT for runners whose egress is via the host).
    pub async fn setup(
        &self,
        networks: &[HostNetwork],
        underlay: BTreeSet<Ipv4Addr>,
    ) -> Result<()> {
        crate::telemetry::kernel("netlink.host_setup", async {
            sysctl::enable_ip_forward()?;
            self.remove_other_networks(networks).await?;
            // A device may carry several networks' host addresses (KohakuRiver's naming);
            // it is named after the first of them.
            let mut devices: Vec<(&HostNetwork, Vec<Ipv4Net>)> = Vec::new();
            // A flat network's host address is on each of its tunnels instead (its `B+1` is
            // every runner's bridge).
            for net in networks.iter().filter(|n| !n.plan.is_flat()) {
                match devices
                    .iter_mut()
                    .find(|(n, _)| n.host_device == net.host_device)
                {
                    Some((_, addrs)) => addrs.push(net.plan.host_ip()),
                    None => devices.push((net, vec![net.plan.host_ip()])),
                }
            }
            for (net, addrs) in &devices {
                self.ensure_host_device(net, addrs).await?;
            }
            let uplink = self.uplink().await?;
            nft::apply(&host_table(networks, &underlay, uplink.as_deref())).await?;
            *self.underlay.lock().unwrap_or_else(|p| p.into_inner()) = underlay;
            Ok(())
        })
        .await
    }

    /// The interface of the default route (where via-host egress leaves), if any.
    async fn uplink(&self) -> Result<Option<String>> {
        let routes = self.nl.routes().await?;
        let Some(oif) = routes
            .iter()
            .find(|r| r.destination.prefix_len() == 0)
            .and_then(|r| r.oif)
        else {
            return Ok(None);
        };
        Ok(self.nl.link_by_index(oif).await?.map(|l| l.name))
    }

    /// Make the underlay set exactly `peers`, with one netlink element batch (no `nft` process).
    pub async fn set_underlay(&self, peers: BTreeSet<Ipv4Addr>) -> Result<()> {
        crate::telemetry::kernel("nftables.host_underlay", async {
            let ops: Vec<Elem> = {
                let cur = self.underlay.lock().unwrap_or_else(|p| p.into_inner());
                cur.difference(&peers)
                    .map(|a| Elem::Del {
                        set: UNDERLAY_SET.into(),
                        key: *a,
                    })
                    .chain(peers.difference(&cur).map(|a| Elem::Add {
                        set: UNDERLAY_SET.into(),
                        key: *a,
                    }))
                    .collect()
            };
            if ops.is_empty() {
                return Ok(());
            }
            tokio::task::spawn_blocking(move || nfnl::apply(HOST_TABLE, &ops))
                .await
                .map_err(|e| DataplaneError::Nft(format!("underlay set: {e}")))?
                .map_err(|e| DataplaneError::Nft(e.to_string()))?;
            *self.underlay.lock().unwrap_or_else(|p| p.into_inner()) = peers;
            Ok(())
        })
        .await
    }

    /// Add one address to the underlay set (nothing to do when it is there already).
    pub async fn add_underlay(&self, peer: Ipv4Addr) -> Result<()> {
        if self
            .underlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
        {
            return Ok(());
        }
        crate::telemetry::kernel("nftables.host_underlay", async {
            let ops = vec![Elem::Add {
                set: UNDERLAY_SET.into(),
                key: peer,
            }];
            tokio::task::spawn_blocking(move || nfnl::apply(HOST_TABLE, &ops))
                .await
                .map_err(|e| DataplaneError::Nft(format!("underlay set: {e}")))?
                .map_err(|e| DataplaneError::Nft(e.to_string()))?;
            self.underlay
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer);
            Ok(())
        })
        .await
    }

    /// Delete the host devices and tunnels of networks no longer configured (found by their
    /// alias), so removing a network from the configuration removes it from the kernel.
    async fn remove_other_networks(&self, networks: &[HostNetwork]) -> Result<()> {
        for link in self.nl.links().await? {
            let Some(net) = link
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(NETWORK_ALIAS_PREFIX))
            else {
                continue;
            };
            if !networks.iter().any(|n| n.name == net) {
                tracing::info!(link = %link.name, network = net, "removing a link of a network no longer configured");
                self.nl.del_link(link.index).await?;
            }
        }
        Ok(())
    }

    async fn ensure_host_device(&self, net: &HostNetwork, addrs: &[Ipv4Net]) -> Result<()> {
        let link = match self.nl.link(&net.host_device).await? {
            Some(l) => l,
            // This kernel may lack the dummy driver; an empty bridge carries an address as well.
            None => self.nl.add_bridge(&net.host_device, 1500).await?,
        };
        self.nl
            .ensure_alias(&link, &network_alias(&net.name))
            .await?;
        if !link.up {
            self.nl.set_up(link.index).await?;
        }
        self.nl.sync_addrs(link.index, addrs).await?;
        self.trust(&net.host_device).await;
        Ok(())
    }

    /// Read the tunnels of `net` from the kernel. Links named like tunnels that are VXLAN but
    /// invalid for the plan (id outside it, wrong VNI, wrong port) are deleted; links of other
    /// kinds are left alone. Returns the valid tunnels by runner id.
    pub async fn scan_tunnels(&self, net: &HostNetwork) -> Result<BTreeMap<u32, FoundTunnel>> {
        let mut found = BTreeMap::new();
        let mut addrs = self.nl.all_addrs().await?;
        let mut scanned = HashMap::new();
        for link in self.nl.links().await? {
            if !link.name.starts_with(&net.tunnel_prefix) || link.kind.as_deref() != Some("vxlan") {
                continue;
            }
            match validate_tunnel(net, &link) {
                Ok(id) => {
                    found.insert(
                        id,
                        FoundTunnel {
                            runner_id: id,
                            ifindex: link.index,
                            remote: link.vxlan.as_ref().and_then(|v| v.remote),
                        },
                    );
                    let a = addrs.remove(&link.index).unwrap_or_default();
                    scanned.insert(link.name.clone(), (link, a));
                }
                Err(why) => {
                    tracing::warn!(link = %link.name, reason = %why, "deleting invalid tunnel");
                    self.nl.del_link(link.index).await?;
                }
            }
        }
        *self.scanned.lock().unwrap_or_else(|p| p.into_inner()) = Scanned {
            at: Some(std::time::Instant::now()),
            tunnels: scanned,
        };
        Ok(found)
    }

    /// What the last scan read of tunnel `name`, once.
    fn take_scanned(&self, name: &str) -> Option<(Link, Vec<Ipv4Net>)> {
        let mut s = self.scanned.lock().unwrap_or_else(|p| p.into_inner());
        if s.at.is_some_and(|at| at.elapsed() > SCAN_VALID) {
            *s = Scanned::default();
        }
        s.tunnels.remove(name)
    }

    /// Make runner `id`'s tunnel exist with the right parameters, repairing in place what can
    /// be repaired and re-creating only what cannot.
    pub async fn ensure_tunnel(
        &self,
        net: &HostNetwork,
        id: u32,
        remote: Ipv4Addr,
    ) -> Result<(u32, TunnelChange)> {
        crate::telemetry::kernel("netlink.ensure_tunnel", async {
        let block = net
            .plan
            .runner(id)
            .map_err(|e| DataplaneError::Invalid(e.to_string()))?;
        let name = plan::tunnel_name(&net.tunnel_prefix, id);
        let want_addr = Ipv4Net::new(block.host_ip_on_subnet(), block.subnet.prefix_len())
            .map_err(|e| DataplaneError::Invalid(e.to_string()))?;
        let mut change = TunnelChange::Unchanged;
        // The addresses the link is known to hold: from the scan, or none for a new link;
        // `None` when only the wanted one is checked (see below).
        let (found, mut known_addrs) = match self.take_scanned(&name) {
            Some((link, addrs)) => (Some(link), Some(addrs)),
            None => (self.nl.link(&name).await?, None),
        };
        let link = match found {
            Some(link) if validate_tunnel(net, &link).is_ok() => link,
            Some(link) => {
                if link.kind.as_deref() != Some("vxlan") {
                    return Err(DataplaneError::Invalid(format!(
                        "link {name} exists but is a {} link, not Weir's tunnel; rename or remove it",
                        link.kind.as_deref().unwrap_or("physical")
                    )));
                }
                self.nl.del_link(link.index).await?;
                change = TunnelChange::Created;
                known_addrs = Some(Vec::new());
                self.create_tunnel(net, &name, block.vni(net.vxlan_id_base), remote)
                    .await?
            }
            None => {
                change = TunnelChange::Created;
                known_addrs = Some(Vec::new());
                self.create_tunnel(net, &name, block.vni(net.vxlan_id_base), remote)
                    .await?
            }
        };
        let mac = tunnel_mac(block.vni(net.vxlan_id_base));
        if self.stable_macs && link.mac != Some(mac) {
            self.nl.set_mac(link.index, mac).await?;
            change = change.max_with(TunnelChange::Repaired);
        }
        let vx = link.vxlan.clone().unwrap_or_default();
        if vx.remote != Some(remote) || vx.local != Some(net.local) || vx.learning {
            self.nl
                .set_vxlan_endpoints(link.index, remote, net.local)
                .await?;
            change = change.max_with(TunnelChange::Repaired);
        }
        if link.mtu != net.mtu {
            self.nl.set_mtu(link.index, net.mtu).await?;
            change = change.max_with(TunnelChange::Repaired);
        }
        self.nl
            .ensure_alias(&link, &network_alias(&net.name))
            .await?;
        // Known addresses are made exact. Otherwise (a runner registering again while the
        // host runs) only the wanted one is ensured, in one request rather than a dump of
        // every address of the host: a tunnel gains other addresses only from another plan,
        // and the plan changes only with a restart, whose scan removes them.
        let addr_changed = match &known_addrs {
            Some(have) => {
                self.nl
                    .sync_known_addrs(link.index, have, &[want_addr])
                    .await?
            }
            None => self.nl.ensure_addr(link.index, want_addr).await?,
        };
        if addr_changed {
            change = change.max_with(TunnelChange::Repaired);
        }
        if !link.up {
            self.nl.set_up(link.index).await?;
            change = change.max_with(TunnelChange::Repaired);
        }
        sysctl::set_arp_retrans(&name, sysctl::TUNNEL_ARP_RETRANS_MS)?;
        if net.plan.is_flat() {
            // A workload asks for a peer on another runner as for a neighbour (the network is
            // one subnet): the host answers for it, as it routes that address elsewhere.
            sysctl::enable_proxy_arp(&name)?;
        }
        // firewalld forgets runtime zone members when it restarts: re-assert every time.
        self.trust(&name).await;
        Ok((link.index, change))
        })
        .await
    }

    async fn create_tunnel(
        &self,
        net: &HostNetwork,
        name: &str,
        vni: u32,
        remote: Ipv4Addr,
    ) -> Result<Link> {
        self.nl
            .add_vxlan_with_mac(
                &VxlanSpec {
                    name: name.to_string(),
                    vni,
                    remote,
                    local: net.local,
                    port: net.port,
                    mtu: net.mtu,
                },
                Some(tunnel_mac(vni)),
            )
            .await
    }

    /// Remove runner `id`'s tunnel if it exists.
    pub async fn remove_tunnel(&self, net: &HostNetwork, id: u32) -> Result<()> {
        crate::telemetry::kernel("netlink.remove_tunnel", async {
            let name = plan::tunnel_name(&net.tunnel_prefix, id);
            let link = match self.take_scanned(&name) {
                Some((link, _)) => Some(link),
                None => self.nl.link(&name).await?,
            };
            if let Some(link) = link {
                self.nl.del_link(link.index).await?;
            }
            Ok(())
        })
        .await
    }

    /// Forget what the host's neighbour table holds for `ip` on runner `id`'s tunnel: the
    /// address may have been another workload's a moment ago, and the host would go on
    /// sending to that workload's MAC until the entry went stale (about 30 s). The new
    /// workload's gratuitous ARP does the same, but it can be lost (sent before its bridge
    /// port forwards); this cannot.
    pub async fn forget_neighbour(&self, net: &HostNetwork, id: u32, ip: Ipv4Addr) -> Result<()> {
        let name = plan::tunnel_name(&net.tunnel_prefix, id);
        match self.nl.link(&name).await? {
            Some(link) => self.nl.neighbour_del(link.index, ip).await,
            None => Ok(()),
        }
    }

    /// Route `ip` (a workload's address on a flat network) to runner `id`'s tunnel, replacing
    /// a route to another runner's.
    pub async fn route_address(&self, net: &HostNetwork, id: u32, ip: Ipv4Addr) -> Result<()> {
        let name = plan::tunnel_name(&net.tunnel_prefix, id);
        let link =
            self.nl.link(&name).await?.ok_or_else(|| {
                DataplaneError::Invalid(format!("no tunnel {name} to route {ip} to"))
            })?;
        self.nl
            .replace_route(host_route(ip), None, Some(link.index))
            .await
    }

    /// Make the host's routes to a flat network's workloads exactly `want` (address → runner
    /// id): a missing one added, one to the wrong tunnel moved, one nobody holds removed.
    pub async fn sync_address_routes(
        &self,
        net: &HostNetwork,
        want: &BTreeMap<Ipv4Addr, u32>,
    ) -> Result<()> {
        crate::telemetry::kernel("netlink.sync_address_routes", async {
            tracing::debug!(network = %net.name, want = want.len(), "syncing the routes to a flat network's workloads");
            let tunnels = self.tunnel_indexes(net).await?;
            let index_of = |id: u32| tunnels.get(&plan::tunnel_name(&net.tunnel_prefix, id)).copied();
            let overlay = net.plan.overlay();
            let mut have = BTreeMap::new();
            for r in self.nl.routes().await? {
                if r.protocol == ROUTE_PROTOCOL
                    && r.destination.prefix_len() == 32
                    && overlay.contains(&r.destination.addr())
                {
                    let ip = r.destination.addr();
                    let wanted = want.get(&ip).and_then(|&id| index_of(id));
                    if wanted.is_some() && wanted == r.oif {
                        have.insert(ip, r.oif);
                    } else if wanted.is_none() {
                        tracing::debug!(route = %r.destination, "removing a route to an address nobody holds");
                        self.nl.del_route(&r).await?;
                    }
                }
            }
            for (&ip, &id) in want {
                if have.contains_key(&ip) {
                    continue;
                }
                // A runner without a tunnel yet gets its routes when it registers.
                if let Some(index) = index_of(id) {
                    self.nl.replace_route(host_route(ip), None, Some(index)).await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The ifindex of each tunnel of `net` (for tests and status).
    pub async fn tunnel_indexes(&self, net: &HostNetwork) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .nl
            .links()
            .await?
            .into_iter()
            .filter(|l| {
                l.name.starts_with(&net.tunnel_prefix) && l.kind.as_deref() == Some("vxlan")
            })
            .map(|l| (l.name, l.index))
            .collect())
    }
}

impl TunnelChange {
    fn max_with(self, other: TunnelChange) -> TunnelChange {
        match (self, other) {
            (TunnelChange::Created, _) | (_, TunnelChange::Created) => TunnelChange::Created,
            (TunnelChange::Repaired, _) | (_, TunnelChange::Repaired) => TunnelChange::Repaired,
            _ => TunnelChange::Unchanged,
        }
    }
}

/// Why a tunnel-named link is not a valid tunnel of the plan (the reason it is deleted).
#[derive(Debug, thiserror::Error)]
enum InvalidTunnel {
    #[error("not a VXLAN link")]
    NotVxlan,
    #[error("{name:?} is not {prefix} + a base-36 runner id")]
    Name { name: String, prefix: String },
    #[error(transparent)]
    OutsidePlan(#[from] plan::PlanError),
    #[error("no VXLAN attributes")]
    NoAttributes,
    #[error("VNI {found} instead of {want}")]
    Vni { found: u32, want: u32 },
    #[error("UDP port {found} instead of {want}")]
    Port { found: u16, want: u16 },
}

/// The runner id of a tunnel-named VXLAN link that is a valid tunnel of the plan, or why not.
fn validate_tunnel(net: &HostNetwork, link: &Link) -> Result<u32, InvalidTunnel> {
    if link.kind.as_deref() != Some("vxlan") {
        return Err(InvalidTunnel::NotVxlan);
    }
    let id = plan::parse_tunnel_name(&net.tunnel_prefix, &link.name).ok_or_else(|| {
        InvalidTunnel::Name {
            name: link.name.clone(),
            prefix: net.tunnel_prefix.clone(),
        }
    })?;
    net.plan.check_runner(u64::from(id))?;
    let vx = link.vxlan.as_ref().ok_or(InvalidTunnel::NoAttributes)?;
    let want_vni = net.vxlan_id_base + id;
    if vx.vni != want_vni {
        return Err(InvalidTunnel::Vni {
            found: vx.vni,
            want: want_vni,
        });
    }
    if vx.port != net.port {
        return Err(InvalidTunnel::Port {
            found: vx.port,
            want: net.port,
        });
    }
    Ok(id)
}

/// The host's table: each network's traffic forwarded and, inside the overlay, untracked
/// (routing between runners needs no connection state: tracking every overlay packet would cost
/// a quarter of the throughput); NAT through `uplink` for masquerading networks (runners whose
/// egress is via the host); VXLAN only from `underlay`.
pub fn host_table(
    networks: &[HostNetwork],
    underlay: &BTreeSet<Ipv4Addr>,
    uplink: Option<&str>,
) -> TableSpec {
    let mut t = OverlayRules::new(HOST_TABLE);
    // Tunnels are sourced from `host.reachable_address`, the same for every network.
    let local = networks.first().map(|n| n.local);
    for net in networks {
        let masquerade_via = uplink.filter(|_| net.masquerade);
        t.network(&net.name, net.plan.overlay(), false, masquerade_via);
        if let Some(local) = local {
            t.vxlan(net.port, local);
        }
    }
    t.peers(underlay.iter().copied());
    t.build()
}
