//! Networks: the unit every allocation, workload, name and VNI belongs to.
//!
//! Today the configuration defines one network, `default` (KohakuRiver's plan and names), in
//! overlay or isolated mode; the types already carry a name so that several can coexist.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::Config;
use crate::plan::{Plan, RunnerBlock};

/// The name of the network the `[overlay]` section defines.
pub const DEFAULT_NETWORK: &str = "default";

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
    /// The networks a configuration defines (today: the default one).
    pub fn from_config(config: &Config, mtu: u32) -> Vec<NetworkDef> {
        let o = &config.overlay;
        let (kind, bridge) = if o.enabled {
            (
                NetworkKind::Overlay(OverlayDef {
                    plan: o.subnet,
                    vxlan_id_base: o.vxlan_id_base,
                    port: o.vxlan_port,
                    host_device: o.host_device.to_string(),
                    tunnel_prefix: o.tunnel_prefix.clone(),
                    runner_tunnel: o.runner_tunnel.to_string(),
                }),
                o.runner_bridge.to_string(),
            )
        } else {
            (
                NetworkKind::Isolated {
                    subnet: o.isolated_subnet.trunc(),
                },
                o.isolated_bridge.to_string(),
            )
        };
        vec![NetworkDef {
            name: DEFAULT_NETWORK.into(),
            kind,
            mtu,
            bridge,
            masquerade: true,
        }]
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
