//! What the hub asks of the host's kernel, behind one interface: set up forwarding and Weir's
//! table, find the tunnels a previous run left, make a runner's tunnel right or remove it, and
//! keep the underlay set. [`HostDataplane`] does it through netlink and nftables;
//! [`Isolated`] is the host of a cluster without overlay networks (it builds nothing); the
//! hub's unit tests use a recording fake (`fake_host`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::Result;
use super::host::{FoundTunnel, HostDataplane, HostNetwork, TunnelChange};

#[async_trait::async_trait]
pub trait HostKernel: Send + Sync {
    /// Forwarding, the host-IP devices and Weir's table for `networks`, accepting VXLAN from
    /// `underlay`; networks no longer configured are removed.
    async fn setup(&self, networks: &[HostNetwork], underlay: BTreeSet<Ipv4Addr>) -> Result<()>;
    /// The valid tunnels of `net` found in the kernel, by runner id.
    async fn scan_tunnels(&self, net: &HostNetwork) -> Result<BTreeMap<u32, FoundTunnel>>;
    /// Make runner `id`'s tunnel exist with the right parameters; returns its ifindex and
    /// what had to change.
    async fn ensure_tunnel(
        &self,
        net: &HostNetwork,
        id: u32,
        remote: Ipv4Addr,
    ) -> Result<(u32, TunnelChange)>;
    /// Remove runner `id`'s tunnel (a missing one is fine).
    async fn remove_tunnel(&self, net: &HostNetwork, id: u32) -> Result<()>;
    /// Make the underlay set exactly `peers`.
    async fn set_underlay(&self, peers: BTreeSet<Ipv4Addr>) -> Result<()>;
    /// Accept VXLAN from `peer` too (one element, not the whole set: a registration must not
    /// cost a pass over every runner).
    async fn add_underlay(&self, peer: Ipv4Addr) -> Result<()>;
    /// The tunnels' ifindexes by name (for status and tests).
    async fn tunnel_indexes(&self, net: &HostNetwork) -> Result<BTreeMap<String, u32>>;
    /// Forget the host's neighbour entry for `ip` behind runner `id`'s tunnel (an address
    /// handed to a new workload).
    async fn forget_neighbour(&self, _net: &HostNetwork, _id: u32, _ip: Ipv4Addr) -> Result<()> {
        Ok(())
    }
    /// Route a flat network's workload address to runner `id`'s tunnel.
    async fn route_address(&self, _net: &HostNetwork, _id: u32, _ip: Ipv4Addr) -> Result<()> {
        Ok(())
    }
    /// Make the routes to a flat network's workloads exactly `want` (address → runner id).
    async fn sync_address_routes(
        &self,
        _net: &HostNetwork,
        _want: &BTreeMap<Ipv4Addr, u32>,
    ) -> Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl HostKernel for HostDataplane {
    async fn setup(&self, networks: &[HostNetwork], underlay: BTreeSet<Ipv4Addr>) -> Result<()> {
        HostDataplane::setup(self, networks, underlay).await
    }
    async fn scan_tunnels(&self, net: &HostNetwork) -> Result<BTreeMap<u32, FoundTunnel>> {
        HostDataplane::scan_tunnels(self, net).await
    }
    async fn ensure_tunnel(
        &self,
        net: &HostNetwork,
        id: u32,
        remote: Ipv4Addr,
    ) -> Result<(u32, TunnelChange)> {
        HostDataplane::ensure_tunnel(self, net, id, remote).await
    }
    async fn remove_tunnel(&self, net: &HostNetwork, id: u32) -> Result<()> {
        HostDataplane::remove_tunnel(self, net, id).await
    }
    async fn set_underlay(&self, peers: BTreeSet<Ipv4Addr>) -> Result<()> {
        HostDataplane::set_underlay(self, peers).await
    }
    async fn add_underlay(&self, peer: Ipv4Addr) -> Result<()> {
        HostDataplane::add_underlay(self, peer).await
    }
    async fn tunnel_indexes(&self, net: &HostNetwork) -> Result<BTreeMap<String, u32>> {
        HostDataplane::tunnel_indexes(self, net).await
    }
    async fn forget_neighbour(&self, net: &HostNetwork, id: u32, ip: Ipv4Addr) -> Result<()> {
        HostDataplane::forget_neighbour(self, net, id, ip).await
    }
    async fn route_address(&self, net: &HostNetwork, id: u32, ip: Ipv4Addr) -> Result<()> {
        HostDataplane::route_address(self, net, id, ip).await
    }
    async fn sync_address_routes(
        &self,
        net: &HostNetwork,
        want: &BTreeMap<Ipv4Addr, u32>,
    ) -> Result<()> {
        HostDataplane::sync_address_routes(self, net, want).await
    }
}

/// The host of a cluster whose networks are all isolated: no tunnels, no table, nothing to
/// build (the hub only hands out addresses).
pub struct Isolated;

#[async_trait::async_trait]
impl HostKernel for Isolated {
    async fn setup(&self, _: &[HostNetwork], _: BTreeSet<Ipv4Addr>) -> Result<()> {
        Ok(())
    }
    async fn scan_tunnels(&self, _: &HostNetwork) -> Result<BTreeMap<u32, FoundTunnel>> {
        Ok(BTreeMap::new())
    }
    async fn ensure_tunnel(
        &self,
        _: &HostNetwork,
        _: u32,
        _: Ipv4Addr,
    ) -> Result<(u32, TunnelChange)> {
        Ok((0, TunnelChange::Unchanged))
    }
    async fn remove_tunnel(&self, _: &HostNetwork, _: u32) -> Result<()> {
        Ok(())
    }
    async fn set_underlay(&self, _: BTreeSet<Ipv4Addr>) -> Result<()> {
        Ok(())
    }
    async fn add_underlay(&self, _: Ipv4Addr) -> Result<()> {
        Ok(())
    }
    async fn tunnel_indexes(&self, _: &HostNetwork) -> Result<BTreeMap<String, u32>> {
        Ok(BTreeMap::new())
    }
}
