//! A runner's kernel state: the workload bridge, the tunnel to the host enslaved to it, the
//! route to the rest of the overlay, and Weir's forward and NAT rules.
//!
//! `apply` is idempotent and repairs in place: stale addresses and Weir-owned routes from an
//! older plan are removed, a tunnel whose VNI or port changed is re-created, one whose remote
//! or local address changed is modified. Isolated mode removes every overlay object.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::netlink::{Link, Netlink, ROUTE_PROTOCOL, VxlanSpec};
use super::nft::{Action, ChainSpec, Cond, RuleSpec, TableSpec};
use super::{DataplaneError, Result, nft, sysctl};

/// Weir's nftables table on a runner.
pub const RUNNER_TABLE: &str = "weir_runner";
/// Bridges and tunnels Weir builds on a runner carry this alias prefix (+ network name), so
/// the runner finds its own stale objects after a configuration change.
pub const NETWORK_ALIAS_PREFIX: &str = "weir-net:";

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
}

impl RunnerNetwork {
    /// Traffic of this network stays inside this CIDR (not NATed, always forwarded).
    pub fn cidr(&self) -> Ipv4Net {
        self.tunnel.as_ref().map_or(self.subnet, |t| t.overlay)
    }
}

pub struct RunnerDataplane {
    nl: Netlink,
}

impl RunnerDataplane {
    pub fn new(nl: Netlink) -> Self {
        Self { nl }
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Build or repair everything for `networks`, and remove Weir's bridges and tunnels that
    /// no network uses any more (e.g. the overlay's in isolated mode).
    pub async fn apply(&self, networks: &[RunnerNetwork]) -> Result<()> {
        sysctl::enable_ip_forward()?;
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
            if let Some(t) = &net.tunnel {
                self.ensure_tunnel(net, t, bridge).await?;
                self.nl
                    .replace_route(t.overlay, Some(t.via), Some(bridge))
                    .await?;
                want_routes.push((t.overlay, t.via));
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
        nft::apply(&runner_table(networks)).await
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
        self.mark(&link, net).await?;
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
        self.mark(&link, net).await?;
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

    async fn mark(&self, link: &Link, net: &RunnerNetwork) -> Result<()> {
        let alias = format!("{NETWORK_ALIAS_PREFIX}{}", net.name);
        if link.alias.as_deref() != Some(alias.as_str()) {
            self.nl.set_alias(link.index, &alias).await?;
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
        for link in self.own_links().await? {
            self.nl.del_link(link.index).await?;
        }
        for route in self.nl.routes().await? {
            if route.protocol == ROUTE_PROTOCOL {
                self.nl.del_route(&route).await?;
            }
        }
        nft::delete(RUNNER_TABLE).await
    }
}

/// The runner's rules: forward everything of each network, and masquerade what leaves it
/// through the uplink.
pub fn runner_table(networks: &[RunnerNetwork]) -> TableSpec {
    let mut forward = Vec::new();
    let mut nat = Vec::new();
    for net in networks {
        let cidr = net.cidr();
        let tag = format!("weir network {}", net.name);
        forward.push(RuleSpec::new(
            vec![Cond::SaddrIn(cidr)],
            Action::Accept,
            &tag,
        ));
        forward.push(RuleSpec::new(
            vec![Cond::DaddrIn(cidr)],
            Action::Accept,
            &tag,
        ));
        if net.masquerade {
            nat.push(RuleSpec::new(
                vec![
                    Cond::SaddrIn(cidr),
                    Cond::DaddrNotIn(cidr),
                    Cond::Oifname(net.uplink.clone()),
                ],
                Action::Masquerade,
                &tag,
            ));
        }
    }
    TableSpec {
        name: RUNNER_TABLE.into(),
        chains: vec![ChainSpec::forward(forward), ChainSpec::postrouting(nat)],
    }
}
