//! Workload interfaces: a veth whose peer is created directly inside the workload's network
//! namespace (never created here and moved), enslaved to the runner's bridge.
//!
//! The host end is named from a hash of (network, workload id) and carries the workload's
//! identity in its alias, so attach is idempotent and a hash collision is detected, not
//! silently shared.
//!
//! The namespace comes from the host as a path and is opened only through
//! [`netns::open_workload`] (see [`attach_checked`]).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::netlink::{Netlink, RoutingRule};
use super::netns::{self, NetnsPolicy, NsIdentity};
use super::{DataplaneError, Result};

/// Aliases of Weir's workload interfaces start with this.
pub const ALIAS_PREFIX: &str = "weir:";
/// The loopback device's index in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// One interface of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIface {
    pub network: String,
    pub workload: String,
    /// `/run/netns/NAME` or `/proc/PID/ns/net` (what is accepted: [`NetnsPolicy`]).
    pub netns: PathBuf,
    /// Name inside the workload (`eth0`).
    pub ifname: String,
    pub addr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The ifindex of the bridge the host end joins.
    pub bridge: u32,
    /// Install the default route through this interface.
    pub default_route: bool,
    /// A workload on several networks: the routing table for traffic from this interface's
    /// address (so replies leave by the interface they came in on).
    pub source_table: Option<u32>,
    /// Without the default route: the network's whole overlay, routed through this gateway.
    pub overlay: Option<Ipv4Net>,
    /// Send a gratuitous ARP once the new interface is up: the address was another
    /// interface's a moment ago, so neighbours may hold it with that interface's MAC. Only
    /// then: the announcement floods every port of the bridge and is processed in every
    /// workload's namespace, so announcing every new address made an attach cost O(workloads
    /// on the bridge).
    pub announce: bool,
}

impl WorkloadIface {
    /// The host end's name: `wk` + 8 hex digits of a hash of network and workload id.
    pub fn host_ifname(&self) -> String {
        host_ifname(&self.network, &self.workload)
    }
    pub fn alias(&self) -> String {
        alias(&self.network, &self.workload)
    }
}

pub fn host_ifname(network: &str, workload: &str) -> String {
    format!("wk{:08x}", fnv1a(network, workload))
}

/// The container end of a handed-off pair (Docker), left in the runner's namespace for the
/// engine to move: `wh` + 8 hex digits.
pub fn handoff_ifname(network: &str, workload: &str) -> String {
    format!("wh{:08x}", fnv1a(network, workload))
}

/// A VM's tap device on the runner: `tap-` + 8 hex digits (KohakuRiver's naming).
pub fn tap_ifname(network: &str, workload: &str) -> String {
    format!("tap-{:08x}", fnv1a(network, workload))
}

/// A VM NIC's MAC: the locally administered QEMU prefix `52:54:00` + 3 bytes of the hash.
pub fn vm_mac(network: &str, workload: &str) -> String {
    mac_string(vm_mac_bytes(network, workload))
}

pub fn vm_mac_bytes(network: &str, workload: &str) -> [u8; 6] {
    let h = fnv1a(workload, network).to_be_bytes();
    [0x52, 0x54, 0x00, h[1], h[2], h[3]]
}

/// A container interface's MAC, fixed by network and workload id (so a re-created interface
/// keeps it, and the hub can answer it before the runner has made it): locally administered
/// `02:57` + 4 bytes of the hash. The runner's end gets `02:77` + the same bytes.
pub fn container_mac(network: &str, workload: &str) -> [u8; 6] {
    let h = fnv1a(network, workload).to_be_bytes();
    [0x02, 0x57, h[0], h[1], h[2], h[3]]
}

pub fn host_mac(network: &str, workload: &str) -> [u8; 6] {
    let mut m = container_mac(network, workload);
    m[1] = 0x77;
    m
}

pub fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// FNV-1a of `a NUL b`: stable across releases and platforms, which std's hasher is not.
fn fnv1a(a: &str, b: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for byte in a.bytes().chain([0u8]).chain(b.bytes()) {
        h ^= u32::from(byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Create (or repair) a VM's persistent tap device on the bridge. The VM (QEMU) opens it by
/// name later; its guest NIC gets the address through cloud-init.
pub async fn attach_tap(
    nl: &Netlink,
    name: &str,
    alias: &str,
    bridge: u32,
    mtu: u32,
) -> Result<()> {
    crate::telemetry::kernel("netlink.attach_tap", async {
        let link = match nl.link(name).await? {
            Some(l) if l.alias.as_deref() == Some(alias) => l,
            Some(l) => {
                return Err(DataplaneError::Invalid(format!(
                    "interface {name} belongs to {}, not {alias}",
                    l.alias.unwrap_or_else(|| "something else".into())
                )));
            }
            None => {
                super::tap::create_persistent(name)
                    .map_err(|e| DataplaneError::io(format!("create tap {name}"), e))?;
                let l = nl.link(name).await?.ok_or_else(|| {
                    DataplaneError::Invalid(format!("tap {name} vanished after creation"))
                })?;
                nl.set_alias(l.index, alias).await?;
                l
            }
        };
        if link.master != Some(bridge) {
            nl.set_master(link.index, bridge).await?;
        }
        if link.mtu != mtu {
            nl.set_mtu(link.index, mtu).await?;
        }
        if !link.up {
            nl.set_up(link.index).await?;
        }
        Ok(())
    })
    .await
}

pub fn alias(network: &str, workload: &str) -> String {
    format!("{ALIAS_PREFIX}{network}/{workload}")
}

/// Create (or repair) a workload interface with the default [`NetnsPolicy`] and no expected
/// namespace identity. Idempotent. Callers that know the policy from the configuration and the
/// namespace's identity from an earlier attach use [`attach_checked`].
pub async fn attach(nl: &Netlink, w: &WorkloadIface) -> Result<()> {
    attach_checked(nl, w, &NetnsPolicy::default(), None)
        .await
        .map(|_| ())
}

/// Create (or repair) a workload interface. Idempotent.
///
/// The namespace at `w.netns` is opened with [`netns::open_workload`] under `policy` (never
/// blocking; only a network namespace of the workload's own). With `expected`, it must be that
/// namespace (the path was not re-used for another). Returns the identity of the namespace the
/// interface is in, for the next attach of the same workload.
///
/// A refused attach leaves nothing behind: a veth it created is deleted (its peer inside the
/// namespace goes with it). A namespace that already has a default route not through this
/// interface's gateway is refused, not re-routed.
pub async fn attach_checked(
    nl: &Netlink,
    w: &WorkloadIface,
    policy: &NetnsPolicy,
    expected: Option<NsIdentity>,
) -> Result<NsIdentity> {
    crate::telemetry::kernel("netlink.attach", async {
        let (ns_file, id) = netns::open_workload(&w.netns, policy)?;
        if let Some(expected) = expected
            && expected != id
        {
            return Err(DataplaneError::NetnsReplaced {
                path: w.netns.clone(),
                expected,
                found: id,
            });
        }
        // Inside through the descriptor just checked, never the path again (it could be
        // re-bound meanwhile).
        let held = PathBuf::from(format!("/proc/self/fd/{}", ns_file.as_raw_fd()));
        let announce = w.announce;
        let (inner, arp) = Netlink::in_namespace_with(&held, move || {
            announce.then(super::garp::socket).transpose()
        })
        .map_err(|e| {
            DataplaneError::Invalid(format!(
                "open a netlink socket inside {}: {e}",
                w.netns.display()
            ))
        })?;
        if w.default_route {
            // Before anything is created: most refusals then have nothing to undo.
            check_default_route(&inner, w, None).await?;
        }
        let name = w.host_ifname();
        // The usual case first: create the pair ready (up, MTU, on the bridge) in one request.
        // Only when something is already there is it looked at and repaired.
        let created = nl
            .create_veth_port(
                &name,
                &w.ifname,
                &ns_file,
                w.mtu,
                w.bridge,
                &w.alias(),
                [
                    host_mac(&w.network, &w.workload),
                    container_mac(&w.network, &w.workload),
                ],
            )
            .await
            .map_err(|e| match e {
                DataplaneError::BridgeFull(_) => e,
                e => DataplaneError::Invalid(format!(
                    "create {name} with peer {} in {}: {e}",
                    w.ifname,
                    w.netns.display()
                )),
            })?;
        if created {
            crate::failpoint::hit("agent.attach.after-veth");
        }
        let result = async {
            if !created {
                repair_host_end(nl, w, &name).await?;
            }
            configure_inside(&inner, w, created).await
        }
        .await;
        let index = match result {
            Ok(index) => index,
            Err(e) => {
                if created {
                    remove_created(nl, &name, &e).await;
                }
                return Err(e);
            }
        };
        if let (true, Some(arp)) = (created, arp) {
            // The address was another interface's a moment ago. (The socket is closed off the
            // runtime: see `garp::Socket`.)
            let mac = container_mac(&w.network, &w.workload);
            if let Err(e) = super::garp::announce_twice(arp, index, mac, w.addr.addr()) {
                tracing::warn!(interface = %w.ifname, netns = %w.netns.display(), error = %e, "cannot announce the address (gratuitous ARP)");
            }
        }
        Ok(id)
    })
    .await
}

/// Undo a veth this attach created (its peer inside the namespace goes with it).
async fn remove_created(nl: &Netlink, name: &str, why: &DataplaneError) {
    let removed = match nl.link(name).await {
        Ok(Some(l)) => nl.del_link(l.index).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(interface = %name, error = %e, attach_error = %why, "cannot remove the interface of a refused attach");
    }
}

/// The host end exists already: it must be this workload's; put it right.
async fn repair_host_end(nl: &Netlink, w: &WorkloadIface, name: &str) -> Result<()> {
    if repair_port(nl, name, &w.alias(), w.bridge, w.mtu).await? {
        Ok(())
    } else {
        Err(DataplaneError::Invalid(format!(
            "{} already exists inside {}",
            w.ifname,
            w.netns.display()
        )))
    }
}

/// Put a workload's bridge port `name` right (it must carry `alias`); `false`: there is none.
async fn repair_port(nl: &Netlink, name: &str, alias: &str, bridge: u32, mtu: u32) -> Result<bool> {
    let Some(host) = nl.link(name).await? else {
        return Ok(false);
    };
    if host.alias.as_deref() != Some(alias) {
        return Err(DataplaneError::Invalid(format!(
            "interface {name} belongs to {}, not {alias}",
            host.alias.unwrap_or_else(|| "something else".into()),
        )));
    }
    if host.master != Some(bridge) {
        nl.set_master(host.index, bridge).await?;
    }
    if host.mtu != mtu {
        nl.set_mtu(host.index, mtu).await?;
    }
    if !host.up {
        nl.set_up(host.index).await?;
    }
    Ok(true)
}

/// Create (or repair the bridge end of) a handed-off pair (Docker's remote driver protocol):
/// `host` on the bridge, `peer` left in this namespace, down and unconfigured, for the engine
/// to move into its container and configure there. Docker works so; every other attach
/// creates the container end directly inside its namespace.
pub async fn attach_handoff(
    nl: &Netlink,
    host: &str,
    peer: &str,
    alias: &str,
    bridge: u32,
    mtu: u32,
    macs: [[u8; 6]; 2],
) -> Result<()> {
    crate::telemetry::kernel("netlink.attach_handoff", async {
        if nl
            .create_veth_handoff(host, peer, mtu, bridge, alias, macs)
            .await?
            || repair_port(nl, host, alias, bridge, mtu).await?
        {
            return Ok(());
        }
        Err(DataplaneError::Invalid(format!(
            "{peer} already exists in the runner's namespace and is not the other end of {host}"
        )))
    })
    .await
}

/// Refuse a namespace whose default route is not through `w`'s gateway on its interface
/// (`oif`, once known): Weir does not take a namespace's default route away from it.
async fn check_default_route(inner: &Netlink, w: &WorkloadIface, oif: Option<u32>) -> Result<()> {
    let defaults: Vec<_> = inner
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.destination == Ipv4Net::default())
        .collect();
    if defaults.is_empty() {
        return Ok(());
    }
    let links = inner.links().await?;
    let own = oif.or_else(|| links.iter().find(|l| l.name == w.ifname).map(|l| l.index));
    for r in defaults {
        if r.gateway == Some(w.gateway) && own.is_some() && r.oif == own {
            continue;
        }
        let mut route = String::new();
        if let Some(gw) = r.gateway {
            route.push_str(&format!("via {gw}"));
        }
        if let Some(oif) = r.oif {
            let dev = links
                .iter()
                .find(|l| l.index == oif)
                .map_or_else(|| format!("#{oif}"), |l| l.name.clone());
            if !route.is_empty() {
                route.push(' ');
            }
            route.push_str(&format!("dev {dev}"));
        }
        if route.is_empty() {
            route.push_str("without a gateway or device (blackhole, unreachable or prohibit)");
        }
        return Err(DataplaneError::ForeignDefaultRoute {
            path: w.netns.clone(),
            route,
        });
    }
    Ok(())
}

/// Configure the workload's end inside its namespace. `fresh`: this attach has just created
/// the pair (the peer down, without addresses), so only what is missing is sent — each request
/// is a round trip under the kernel's rtnl lock, which every attach on the machine shares; a
/// repair looks at everything and puts it right.
/// Returns the interface's index inside.
async fn configure_inside(inner: &Netlink, w: &WorkloadIface, fresh: bool) -> Result<u32> {
    let ns = &w.netns;
    let link = inner.link(&w.ifname).await?.ok_or_else(|| {
        DataplaneError::Invalid(format!(
            "{} is missing inside {} (its peer exists on the runner)",
            w.ifname,
            ns.display()
        ))
    })?;
    if w.default_route && !fresh {
        // Again, now that the interface is known (a route may have appeared meanwhile).
        check_default_route(inner, w, Some(link.index)).await?;
    }
    if link.mtu != w.mtu {
        inner.set_mtu(link.index, w.mtu).await?;
    }
    if fresh {
        inner.add_addr(link.index, w.addr).await?;
    } else {
        inner.sync_addrs(link.index, &[w.addr]).await?;
    }
    if !link.up {
        inner.set_up(link.index).await?;
    }
    // The loopback device is index 1 in every network namespace; setting it up when it is
    // up already changes nothing.
    inner.set_up(LOOPBACK_IFINDEX).await?;
    if w.default_route {
        if fresh {
            // Added only if there is none: a default route that appeared since the check
            // before creation is the kernel's to refuse, and is then looked at.
            let gw = w.gateway;
            if !inner
                .add_route_exclusive(Ipv4Net::default(), gw, link.index)
                .await?
            {
                check_default_route(inner, w, Some(link.index)).await?;
            }
        } else {
            inner
                .replace_route(Ipv4Net::default(), Some(w.gateway), Some(link.index))
                .await?;
        }
    } else if let Some(overlay) = w.overlay {
        inner
            .replace_route(overlay, Some(w.gateway), Some(link.index))
            .await?;
    }
    if let Some(table) = w.source_table {
        source_route(inner, w, link.index, table).await?;
    }
    Ok(link.index)
}

/// Replies leave by the interface they came in on: traffic from this interface's address looks
/// up its own table (the subnet on-link, everything else through the gateway).
async fn source_route(inner: &Netlink, w: &WorkloadIface, oif: u32, table: u32) -> Result<()> {
    inner
        .replace_route_in_table(table, w.addr.trunc(), None, oif)
        .await?;
    inner
        .replace_route_in_table(table, Ipv4Net::default(), Some(w.gateway), oif)
        .await?;
    let rule = RoutingRule {
        source: Some(Ipv4Net::from(w.addr.addr())),
        table,
        priority: table,
    };
    // An older address of this interface must not keep its rule.
    for old in inner.rules_for_table(table).await? {
        if old != rule {
            inner.del_rule(&old).await?;
        }
    }
    inner.add_rule(&rule).await
}

/// Remove workloads' interfaces (a veth's peer inside its namespace goes with it; a VM's tap
/// goes) in one kernel batch (see [`Netlink::del_links`]); missing ones are fine. Returns the bridges that lost a port, one entry per removed port.
pub async fn detach_many(
    nl: &Netlink,
    workloads: &[(String, String)],
    group: u32,
) -> Result<Vec<u32>> {
    crate::telemetry::kernel("netlink.detach", async {
        let wanted: std::collections::HashMap<String, String> = workloads
            .iter()
            .flat_map(|(network, workload)| {
                let owner = alias(network, workload);
                [
                    (host_ifname(network, workload), owner.clone()),
                    (tap_ifname(network, workload), owner),
                ]
            })
            .collect();
        let mut indexes = Vec::new();
        let mut masters = Vec::new();
        for link in nl.links().await? {
            if wanted.get(&link.name) == link.alias.as_ref() && link.alias.is_some() {
                indexes.push(link.index);
                masters.extend(link.master);
            }
        }
        nl.del_links(&indexes, group).await?;
        Ok(masters)
    })
    .await
}

/// Weir's workload interfaces present on this runner: (alias, ifindex).
pub async fn list(nl: &Netlink) -> Result<Vec<(String, u32)>> {
    Ok(nl
        .links()
        .await?
        .into_iter()
        .filter_map(|l| Some((l.alias.filter(|a| a.starts_with(ALIAS_PREFIX))?, l.index)))
        .collect())
}
