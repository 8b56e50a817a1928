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

/// Stored rules as the plugin vocabulary has them (the inverse of [`record`]).
fn decision(r: &FirewallRecord) -> t::FirewallDecision {
    let verdict = |v| match v {
        VerdictRecord::Allow => t::Verdict::Allow,
        VerdictRecord::Deny => t::Verdict::Deny,
    };
    t::FirewallDecision {
        rules: r
            .rules
            .iter()
            .map(|r| t::Rule {
                direction: match r.direction {
                    DirectionRecord::Ingress => t::Direction::Ingress,
                    DirectionRecord::Egress => t::Direction::Egress,
                },
                peer: match &r.peer {
                    PeerRecord::Labels(l) => t::Peer::Labels(l.clone()),
                    PeerRecord::Cidr(c) => t::Peer::Cidr(c.clone()),
                    PeerRecord::Host => t::Peer::Host,
                    PeerRecord::Wan => t::Peer::Wan,
                    PeerRecord::Any => t::Peer::Any,
                },
                protocol: match r.protocol {
                    ProtocolRecord::Any => t::Protocol::Any,
                    ProtocolRecord::Tcp => t::Protocol::Tcp,
                    ProtocolRecord::Udp => t::Protocol::Udp,
                    ProtocolRecord::Icmp => t::Protocol::Icmp,
                },
                ports: r
                    .ports
                    .iter()
                    .map(|p| t::PortRange {
                        first: p.first,
                        last: p.last,
                    })
                    .collect(),
                verdict: verdict(r.verdict),
            })
            .collect(),
        default_verdict: verdict(r.default_verdict),
    }
}

/// Stored rules as the runner receives them: the one wire form of a decision.
pub(super) fn message(r: &FirewallRecord) -> pb::FirewallDecision {
    crate::decision::wire::firewall_to_pb(&decision(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant survives decision → record → decision, and reaches the runner as the
    /// plugin's decision itself would.
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
        assert_eq!(decision(&record(d.clone())), d);
        assert_eq!(
            message(&record(d.clone())),
            crate::decision::wire::firewall_to_pb(&d)
        );
    }
}
