//! The runner's edge: the host's protobuf messages turned into the data plane's types (and
//! namespace identities back), without the gRPC policy-plugin adapter.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weir_proto::v1 as pb;

use super::error::{AgentError, Result};
use crate::dataplane::netns::NsIdentity;
use crate::dataplane::runner::{RunnerNetwork, RunnerTunnel};
use crate::decision as t;

/// A field of a host message, parsed.
pub(crate) fn parse<T: std::str::FromStr>(s: &str, field: &'static str) -> Result<T> {
    s.parse().map_err(|_| AgentError::Malformed {
        field,
        value: s.to_string(),
    })
}

pub(crate) fn ns_pb(n: NsIdentity) -> pb::NetnsIdentity {
    pb::NetnsIdentity {
        dev: n.dev,
        ino: n.ino,
    }
}

pub(crate) fn ns_id(n: pb::NetnsIdentity) -> NsIdentity {
    NsIdentity {
        dev: n.dev,
        ino: n.ino,
    }
}

/// A workload's firewall decision as the host sent it (`weir.v1.FirewallDecision`).
pub(crate) fn firewall_decision(d: &pb::FirewallDecision) -> Result<t::FirewallDecision> {
    crate::decision::wire::firewall_from_pb(d).map_err(|e| AgentError::FirewallRules(e.0))
}

/// One network of the host's assignment, as the runner builds it.
pub(crate) fn runner_network(
    a: &pb::RegisterResponse,
    n: &pb::NetworkAssignment,
    uplink: &str,
    local: Ipv4Addr,
) -> Result<RunnerNetwork> {
    let subnet: Ipv4Net = parse(&n.subnet, "subnet")?;
    let tunnel = if n.mode == pb::NetworkMode::Overlay as i32 {
        Some(RunnerTunnel {
            name: n.tunnel_name.clone(),
            vni: n.vni,
            port: u16::try_from(n.vxlan_port)
                .map_err(|_| AgentError::PortOutOfRange(n.vxlan_port))?,
            remote: parse(&a.host_physical_ip, "host_physical_ip")?,
            local,
            overlay: parse(&n.overlay_cidr, "overlay_cidr")?,
            via: parse(&n.host_ip_on_subnet, "host_ip_on_subnet")?,
        })
    } else {
        None
    };
    Ok(RunnerNetwork {
        name: n.network.clone(),
        bridge: n.bridge_name.clone(),
        subnet: subnet.trunc(),
        gateway: parse(&n.gateway, "gateway")?,
        mtu: n.mtu,
        tunnel,
        masquerade: n.masquerade,
        uplink: uplink.to_string(),
        direct_prefix: if n.direct_prefix.is_empty() {
            "vxd".into()
        } else {
            n.direct_prefix.clone()
        },
        egress_table: crate::dataplane::runner::egress_table(&n.network, n.vxlan_id_base),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firewall_decision_decodes_as_the_plugin_adapter_encodes_it() {
        let typed = t::FirewallDecision {
            rules: vec![t::Rule {
                direction: t::Direction::Ingress,
                peer: t::Peer::Labels([("app".to_string(), "db".to_string())].into()),
                protocol: t::Protocol::Tcp,
                ports: vec![t::PortRange {
                    first: 5432,
                    last: 5433,
                }],
                verdict: t::Verdict::Allow,
            }],
            default_verdict: t::Verdict::Deny,
        };
        let wire = pb::FirewallDecision {
            rules: vec![pb::Rule {
                direction: "ingress".into(),
                peer: Some(pb::Peer {
                    peer: Some(pb::peer::Peer::Labels(pb::LabelSet {
                        labels: [("app".to_string(), "db".to_string())].into(),
                    })),
                }),
                protocol: "tcp".into(),
                ports: vec![pb::PortRange {
                    first: 5432,
                    last: 5433,
                }],
                verdict: "allow".into(),
            }],
            default_verdict: "deny".into(),
        };
        assert_eq!(firewall_decision(&wire).unwrap(), typed);
    }

    #[test]
    fn a_bad_verdict_or_port_is_refused_as_firewall_rules() {
        let mut wire = pb::FirewallDecision {
            rules: vec![],
            default_verdict: "maybe".into(),
        };
        let e = firewall_decision(&wire).unwrap_err();
        assert!(matches!(e, AgentError::FirewallRules(_)), "{e}");
        assert!(e.to_string().starts_with("firewall rules: verdict"), "{e}");
        wire.default_verdict = "allow".into();
        wire.rules.push(pb::Rule {
            direction: "ingress".into(),
            protocol: "udp".into(),
            ports: vec![pb::PortRange {
                first: 1,
                last: 70000,
            }],
            verdict: "allow".into(),
            ..Default::default()
        });
        let e = firewall_decision(&wire).unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
    }
}
