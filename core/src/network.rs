//! Networks: the unit every allocation, workload, name and VNI belongs to.
//!
//! `[overlay]` defines one network, `default` (KohakuRiver's plan and names), in overlay or
//! isolated mode; `[[networks]]` defines several overlays side by side. The first network is
//! the primary one: calls that name no network use it, and workloads route by default through
//! it. A runner has one id in every network whose plan has room for it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::Config;
pub use crate::config::{DEFAULT_NETWORK, EgressMode, VM_NETWORK};
use crate::plan::{Plan, RunnerBlock};

/// How a network reaches other runners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkKind {
    /// A VXLAN hub-and-spoke overlay routed by the host.
    Overlay(OverlayDef),
    /// One bridge per runner, all on the same subnet, NATed, with no tunnel.
    Isolated { subnet: Ipv4Net },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDef {
    pub plan: Plan,
    pub vxlan_id_base: u32,
    pub port: u16,
    pub host_device: String,
    pub tunnel_prefix: String,
    pub runner_tunnel: String,
    /// Runners' direct tunnels to each other are `direct_prefix` + peer id in base 36.
    pub direct_prefix: String,
}

/// A network as the host defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    pub name: String,
    pub kind: NetworkKind,
    /// `mtu = "auto"` is resolved by the host before the definition is built.
    pub mtu: u32,
    pub bridge: String,
    pub masquerade: bool,
    pub egress: EgressMode,
}

/// A runner's share of a network: its subnet and the addresses around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerSubnet {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The host's address on the subnet (overlay only); never given to a workload.
    pub host_side: Option<Ipv4Addr>,
}

impl NetworkDef {
    /// The networks a configuration defines, in order (the first is the primary one).
    pub fn from_config(config: &Config, mtu: u32) -> Vec<NetworkDef> {
        let o = &config.overlay;
        config
            .resolved_networks()
            .into_iter()
            .map(|n| {
                let kind = match n.plan {
                    Some(plan) => NetworkKind::Overlay(OverlayDef {
                        plan,
                        vxlan_id_base: n.vxlan_id_base,
                        port: o.vxlan_port,
                        host_device: n.names.host_device,
                        tunnel_prefix: n.names.tunnel_prefix,
                        runner_tunnel: n.names.runner_tunnel,
                        direct_prefix: n.names.direct_prefix,
                    }),
                    None => NetworkKind::Isolated {
                        subnet: n.isolated_subnet.unwrap_or(o.isolated_subnet).trunc(),
                    },
                };
                NetworkDef {
                    name: n.name,
                    kind,
                    mtu,
                    bridge: n.names.runner_bridge,
                    masquerade: n.masquerade,
                    egress: n.egress,
                }
            })
            .collect()
    }

    pub fn overlay(&self) -> Option<&OverlayDef> {
        match &self.kind {
            NetworkKind::Overlay(o) => Some(o),
            NetworkKind::Isolated { .. } => None,
        }
    }

    /// Runner `id`'s subnet on this network (`id` is ignored in isolated mode).
    pub fn runner_subnet(&self, id: Option<u32>) -> Option<RunnerSubnet> {
        match &self.kind {
            NetworkKind::Overlay(o) => {
                let block: RunnerBlock = o.plan.runner(id?).ok()?;
                Some(RunnerSubnet {
                    subnet: block.subnet,
                    gateway: block.gateway(),
                    host_side: Some(block.host_ip_on_subnet()),
                })
            }
            NetworkKind::Isolated { subnet } => Some(RunnerSubnet {
                subnet: *subnet,
                gateway: Ipv4Addr::from(u32::from(subnet.network()) + 1),
                host_side: None,
            }),
        }
    }
}
