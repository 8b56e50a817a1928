//! A workload's firewall rules between their three forms: the plugin's decision, the store's
//! record (what the hub persists) and the runner protocol's message (what the hub sends).

use weir_proto::v1 as pb;

use crate::decision as t;
use crate::store::{
    DirectionRecord, FirewallRecord, PeerRecord, PortRangeRecord, ProtocolRecord, RuleRecord,
    VerdictRecord,
};

/// A plugin's decision as the store keeps it.
pub(super) fn record(d: t::FirewallDecision) -> FirewallRecord {
    let verdict = |v| match v {
        t::Verdict::Allow => VerdictRecord::Allow,
        t::Verdict::Deny => VerdictRecord::Deny,
    };
    FirewallRecord {
        rules: d
            .rules
            .into_iter()
            .map(|r| RuleRecord {
                direction: match r.direction {
                    t::Direction::Ingress => DirectionRecord::Ingress,
                    t::Direction::Egress => DirectionRecord::Egress,
                },
                peer: match r.peer {
                    t::Peer::Labels(l) => PeerRecord::Labels(l),
                    t::Peer::Cidr(c) => PeerRecord::Cidr(c),
                    t::Peer::Host => PeerRecord::Host,
                    t::Peer::Wan => PeerRecord::Wan,
                    t::Peer::Any => PeerRecord::Any,
                },
                protocol: match r.protocol {
                    t::Protocol::Any => ProtocolRecord::Any,
                    t::Protocol::Tcp => ProtocolRecord::Tcp,
                    t::Protocol::Udp => ProtocolRecord::Udp,
                    t::Protocol::Icmp => ProtocolRecord::Icmp,
                },
                ports: r
                    .ports
                    .into_iter()
                    .map(|p| PortRangeRecord {
                        first: p.first,
                        last: p.last,
                    })
                    .collect(),
                verdict: verdict(r.verdict),
            })
            .collect(),
        default_verdict: verdict(d.default_verdict),
    }
}

/// Stored rules as the runner receives them.
pub(super) fn message(r: &FirewallRecord) -> pb::FirewallDecision {
    use pb::peer::Peer as P;
    let verdict = |v| match v {
        VerdictRecord::Allow => "allow".to_string(),
        VerdictRecord::Deny => "deny".to_string(),
    };
    pb::FirewallDecision {
        rules: r
            .rules
            .iter()
            .map(|r| pb::Rule {
                direction: match r.direction {
                    DirectionRecord::Ingress => "ingress",
                    DirectionRecord::Egress => "egress",
                }
                .into(),
                peer: Some(pb::Peer {
                    peer: Some(match &r.peer {
                        PeerRecord::Labels(l) => P::Labels(pb::LabelSet {
                            labels: l.clone().into_iter().collect(),
                        }),
                        PeerRecord::Cidr(c) => P::Cidr(c.clone()),
                        PeerRecord::Host => P::Host(true),
                        PeerRecord::Wan => P::Wan(true),
                        PeerRecord::Any => P::Any(true),
                    }),
                }),
                protocol: match r.protocol {
                    ProtocolRecord::Any => "any",
                    ProtocolRecord::Tcp => "tcp",
                    ProtocolRecord::Udp => "udp",
                    ProtocolRecord::Icmp => "icmp",
                }
                .into(),
                ports: r
                    .ports
                    .iter()
                    .map(|p| pb::PortRange {
                        first: u32::from(p.first),
                        last: u32::from(p.last),
                    })
                    .collect(),
                verdict: verdict(r.verdict),
            })
            .collect(),
        default_verdict: verdict(r.default_verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant survives decision → record → message as the plugin adapter would send it.
    #[test]
    fn a_decision_reaches_the_runner_as_the_plugin_gave_it() {
        let l: t::Labels = [("tenant".to_string(), "a".to_string())].into();
        let rule = |direction, peer, protocol, verdict| t::Rule {
            direction,
            peer,
            protocol,
            ports: vec![t::PortRange {
                first: 80,
                last: 90,
            }],
            verdict,
        };
        let d = t::FirewallDecision {
            rules: vec![
                rule(
                    t::Direction::Ingress,
                    t::Peer::Labels(l),
                    t::Protocol::Tcp,
                    t::Verdict::Allow,
                ),
                rule(
                    t::Direction::Egress,
                    t::Peer::Cidr("10.0.0.0/8".into()),
                    t::Protocol::Udp,
                    t::Verdict::Deny,
                ),
                rule(
                    t::Direction::Egress,
                    t::Peer::Host,
                    t::Protocol::Icmp,
                    t::Verdict::Allow,
                ),
                rule(
                    t::Direction::Ingress,
                    t::Peer::Wan,
                    t::Protocol::Any,
                    t::Verdict::Allow,
                ),
                rule(
                    t::Direction::Ingress,
                    t::Peer::Any,
                    t::Protocol::Any,
                    t::Verdict::Deny,
                ),
            ],
            default_verdict: t::Verdict::Deny,
        };
        assert_eq!(
            message(&record(d.clone())),
            crate::decision::wire::firewall_to_pb(&d)
        );
    }
}
