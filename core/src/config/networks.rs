//! The networks a configuration defines (`[[networks]]`, or `default` from `[overlay]`), each
//! with its settings and interface names resolved.

use super::schema::{Config, EgressMode, Naming};
use crate::plan::Plan;

/// The name of the network `[overlay]` defines, with KohakuRiver's interface names.
pub const DEFAULT_NETWORK: &str = "default";
/// The VMs' own network in isolated mode (`overlay.vm_subnet`).
pub const VM_NETWORK: &str = "vm";

/// A network as the configuration resolves it: settings and interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNetwork {
    pub name: String,
    /// `None`: isolated mode (the default network with `overlay.enabled = false`, and the VMs'
    /// network `vm` with `overlay.vm_subnet`).
    pub plan: Option<Plan>,
    /// Isolated mode: every runner's subnet (the same on each, behind its own NAT).
    pub isolated_subnet: Option<ipnet::Ipv4Net>,
    pub vxlan_id_base: u32,
    pub masquerade: bool,
    pub egress: EgressMode,
    pub names: NetworkNames,
}

/// The interfaces a network uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkNames {
    /// Host: the device holding the host's overlay address.
    pub host_device: String,
    /// Host: tunnel to runner r is `tunnel_prefix` + r in base 36.
    pub tunnel_prefix: String,
    /// Runner: the tunnel to the host.
    pub runner_tunnel: String,
    /// Runner: the workload bridge.
    pub runner_bridge: String,
    /// Runner: a direct tunnel to peer runner r is `direct_prefix` + r in base 36.
    pub direct_prefix: String,
}

impl NetworkNames {
    /// Names derived from a network's name: `wh-NAME`, `vx-NAME-<id>`, `vx-NAME`, `wb-NAME`,
    /// `vd-NAME-<id>`.
    pub fn derived(name: &str) -> Self {
        Self {
            host_device: format!("wh-{name}"),
            tunnel_prefix: format!("vx-{name}-"),
            runner_tunnel: format!("vx-{name}"),
            runner_bridge: format!("wb-{name}"),
            direct_prefix: format!("vd-{name}-"),
        }
    }
}

impl NetworkNames {
    /// KohakuRiver's names for its network number `index` (0-based, in configuration order)
    /// called `name`, sharing `host_device` with every other network.
    pub fn kohakuriver(index: usize, name: &str, host_device: &str) -> Self {
        let cut = |s: String| {
            let mut s = s;
            while s.len() > crate::plan::MAX_IFNAME_LEN {
                s.pop();
            }
            s
        };
        Self {
            host_device: host_device.to_string(),
            tunnel_prefix: format!("vx{index}_"),
            runner_tunnel: cut(format!("vxlan-{name}")),
            runner_bridge: cut(format!("kohaku-{name}")),
            direct_prefix: format!("vd{index}_"),
        }
    }
}

impl Config {
    /// `[overlay]`'s interface names (KohakuRiver's one-network names), with `bridge`.
    fn overlay_names(&self, bridge: &str) -> NetworkNames {
        let o = &self.overlay;
        NetworkNames {
            host_device: o.host_device.to_string(),
            tunnel_prefix: o.tunnel_prefix.clone(),
            runner_tunnel: o.runner_tunnel.to_string(),
            runner_bridge: bridge.to_string(),
            direct_prefix: "vxd".into(),
        }
    }

    /// The networks this configuration defines, in order (the first is the primary one).
    pub fn resolved_networks(&self) -> Vec<ResolvedNetwork> {
        let o = &self.overlay;
        if self.networks.is_empty() {
            let (plan, bridge) = if o.enabled {
                (Some(o.subnet), o.runner_bridge.to_string())
            } else {
                (None, o.isolated_bridge.to_string())
            };
            let mut nets = vec![ResolvedNetwork {
                name: DEFAULT_NETWORK.into(),
                plan,
                isolated_subnet: (!o.enabled).then_some(o.isolated_subnet),
                vxlan_id_base: o.vxlan_id_base,
                masquerade: true,
                egress: EgressMode::RunnerNat,
                names: self.overlay_names(&bridge),
            }];
            if let (false, Some(vm)) = (o.enabled, o.vm_subnet) {
                nets.push(ResolvedNetwork {
                    name: VM_NETWORK.into(),
                    plan: None,
                    isolated_subnet: Some(vm),
                    vxlan_id_base: o.vxlan_id_base,
                    masquerade: true,
                    egress: EgressMode::RunnerNat,
                    names: self.overlay_names(o.vm_bridge.as_str()),
                });
            }
            return nets;
        }
        self.networks
            .iter()
            .enumerate()
            .map(|(index, n)| {
                let mut names = if o.naming == Naming::Kohakuriver {
                    NetworkNames::kohakuriver(index, n.name.as_str(), o.host_device.as_str())
                } else if n.name.as_str() == DEFAULT_NETWORK {
                    self.overlay_names(o.runner_bridge.as_str())
                } else {
                    NetworkNames::derived(n.name.as_str())
                };
                if let Some(d) = &n.host_device {
                    names.host_device = d.to_string();
                }
                if let Some(p) = &n.tunnel_prefix {
                    names.tunnel_prefix = p.clone();
                }
                if let Some(t) = &n.runner_tunnel {
                    names.runner_tunnel = t.to_string();
                }
                if let Some(b) = &n.runner_bridge {
                    names.runner_bridge = b.to_string();
                }
                ResolvedNetwork {
                    name: n.name.to_string(),
                    plan: Some(n.subnet),
                    isolated_subnet: None,
                    vxlan_id_base: n.vxlan_id_base,
                    masquerade: n.masquerade,
                    egress: n.egress,
                    names,
                }
            })
            .collect()
    }
}
