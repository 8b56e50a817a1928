//! What the host's and the runners' overlay tables share: the names Weir recognises its own
//! objects by (the network alias, the underlay set and its drop counter) and the one builder of
//! their per-network rules ([`OverlayRules`]).
//!
//! A leaf of the data plane: it imports only [`super::nft`]'s rule types, so `host` and `runner`
//! both use it without importing each other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::nft::{Action, ChainSpec, Cond, RuleSpec, SetSpec, TableSpec};

/// Bridges and tunnels Weir builds on a runner, and the host's devices and tunnels, carry this
/// alias prefix (+ network name), so Weir finds its own stale objects after a configuration
/// change.
pub const NETWORK_ALIAS_PREFIX: &str = "weir-net:";
/// The set of underlay addresses VXLAN is accepted from (host and runners alike).
pub const UNDERLAY_SET: &str = "vxlan_peers";
/// The counter of VXLAN packets dropped for coming from elsewhere.
pub const UNDERLAY_DROPS: &str = "vxlan_dropped";

/// The alias of a network's bridges, tunnels and host devices: found again by it after a
/// configuration change.
pub fn network_alias(network: &str) -> String {
    format!("{NETWORK_ALIAS_PREFIX}{network}")
}

/// VXLAN's own UDP packets to or from this machine's underlay address need no connection
/// state.
pub fn underlay_notrack(addr: Cond, port: u16) -> RuleSpec {
    RuleSpec::new(
        vec![addr, Cond::UdpDport(port)],
        Action::NoTrack,
        "weir: VXLAN underlay, untracked",
    )
}

/// One Weir overlay table (the host's `weir_host`, a runner's `weir_runner`), built from its
/// networks and its VXLAN ports:
///
/// - forward: traffic from or to each network's CIDR passes, whatever the default policy of
///   other tables' chains in this hook says about the rest;
/// - raw prerouting: traffic inside a network skips connection tracking unless tracked (NAT only
///   concerns traffic leaving it), and so does VXLAN's own UDP to this machine;
/// - raw output: VXLAN's own UDP from this machine, untracked;
/// - postrouting: a network's traffic leaving it through its uplink is masqueraded;
/// - input: VXLAN from an address outside the set [`UNDERLAY_SET`] is counted
///   ([`UNDERLAY_DROPS`]) and dropped.
#[derive(Debug, Clone)]
pub struct OverlayRules {
    table: String,
    raw_in: Vec<RuleSpec>,
    forward: Vec<RuleSpec>,
    nat: Vec<RuleSpec>,
    /// Each VXLAN port with the local underlay address of its first tunnel.
    ports: BTreeMap<u16, Ipv4Addr>,
    peers: BTreeSet<Ipv4Addr>,
}

impl OverlayRules {
    /// An empty table named `table`.
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_string(),
            raw_in: Vec::new(),
            forward: Vec::new(),
            nat: Vec::new(),
            ports: BTreeMap::new(),
            peers: BTreeSet::new(),
        }
    }

    /// The rules of network `name` whose traffic stays inside `cidr`: forwarded, untracked
    /// inside unless `track`, masqueraded when it leaves through `masquerade_via`.
    pub fn network(
        &mut self,
        name: &str,
        cidr: Ipv4Net,
        track: bool,
        masquerade_via: Option<&str>,
    ) -> &mut Self {
        let tag = format!("weir network {name}");
        if !track {
            self.raw_in.push(RuleSpec::new(
                vec![Cond::SaddrIn(cidr), Cond::DaddrIn(cidr)],
                Action::NoTrack,
                &tag,
            ));
        }
        self.forward.push(RuleSpec::new(
            vec![Cond::SaddrIn(cidr)],
            Action::Accept,
            &tag,
        ));
        self.forward.push(RuleSpec::new(
            vec![Cond::DaddrIn(cidr)],
            Action::Accept,
            &tag,
        ));
        if let Some(uplink) = masquerade_via {
            self.nat.push(RuleSpec::new(
                vec![
                    Cond::SaddrIn(cidr),
                    Cond::DaddrNotIn(cidr),
                    Cond::Oifname(uplink.to_string()),
                ],
                Action::Masquerade,
                &tag,
            ));
        }
        self
    }

    /// VXLAN on UDP `port` with this machine's underlay address `local`: accepted only from
    /// the peer set, and untracked. The first `local` given for a port is used.
    pub fn vxlan(&mut self, port: u16, local: Ipv4Addr) -> &mut Self {
        self.ports.entry(port).or_insert(local);
        self
    }

    /// Underlay addresses VXLAN is accepted from.
    pub fn peers(&mut self, peers: impl IntoIterator<Item = Ipv4Addr>) -> &mut Self {
        self.peers.extend(peers);
        self
    }

    /// The table.
    pub fn build(&self) -> TableSpec {
        let mut raw_in = self.raw_in.clone();
        let mut raw_out = Vec::new();
        let mut input = Vec::new();
        for (&port, &local) in &self.ports {
            input.push(RuleSpec::new(
                vec![
                    Cond::UdpDport(port),
                    Cond::SaddrNotInSet(UNDERLAY_SET.into()),
                ],
                Action::CountDrop(UNDERLAY_DROPS),
                "weir: VXLAN from an unknown underlay address",
            ));
            raw_in.push(underlay_notrack(Cond::DaddrIn(local.into()), port));
            raw_out.push(underlay_notrack(Cond::SaddrIn(local.into()), port));
        }
        TableSpec {
            name: self.table.clone(),
            chains: vec![
                ChainSpec::raw_prerouting(raw_in),
                ChainSpec::raw_output(raw_out),
                ChainSpec::forward(self.forward.clone()),
                ChainSpec::input(input),
                ChainSpec::postrouting(self.nat.clone()),
            ],
            sets: vec![SetSpec {
                name: UNDERLAY_SET.into(),
                elements: self.peers.iter().copied().collect(),
            }],
            counters: vec![UNDERLAY_DROPS],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_gives_forward_nat_notrack_and_the_underlay_guard() {
        let cidr: Ipv4Net = "10.128.0.0/12".parse().unwrap();
        let (local, other) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 9));
        let peer = Ipv4Addr::new(192, 0, 2, 7);
        let mut t = OverlayRules::new("weir_test");
        t.network("default", cidr, false, Some("eth0"))
            .vxlan(4789, local)
            .vxlan(4789, other)
            .peers([peer]);
        let spec = t.build();
        let tag = "weir network default";
        let chain = |i: usize| spec.chains[i].rules.clone();
        let here = Ipv4Net::from(local);
        assert_eq!(
            chain(0),
            vec![
                RuleSpec::new(
                    vec![Cond::SaddrIn(cidr), Cond::DaddrIn(cidr)],
                    Action::NoTrack,
                    tag
                ),
                underlay_notrack(Cond::DaddrIn(here), 4789),
            ],
            "raw prerouting: the first local of a port is used"
        );
        assert_eq!(chain(1), vec![underlay_notrack(Cond::SaddrIn(here), 4789)]);
        assert_eq!(
            chain(2),
            vec![
                RuleSpec::new(vec![Cond::SaddrIn(cidr)], Action::Accept, tag),
                RuleSpec::new(vec![Cond::DaddrIn(cidr)], Action::Accept, tag),
            ]
        );
        assert_eq!(chain(3).len(), 1);
        assert_eq!(chain(3)[0].action, Action::CountDrop(UNDERLAY_DROPS));
        assert_eq!(
            chain(4),
            vec![RuleSpec::new(
                vec![
                    Cond::SaddrIn(cidr),
                    Cond::DaddrNotIn(cidr),
                    Cond::Oifname("eth0".into())
                ],
                Action::Masquerade,
                tag
            )]
        );
        assert_eq!(spec.sets[0].name, UNDERLAY_SET);
        assert_eq!(spec.sets[0].elements, vec![peer]);
    }

    #[test]
    fn a_tracked_network_without_uplink_has_no_notrack_and_no_nat() {
        let cidr: Ipv4Net = "172.30.0.0/16".parse().unwrap();
        let spec = OverlayRules::new("t")
            .network("n", cidr, true, None)
            .build();
        assert!(
            spec.chains
                .iter()
                .all(|c| c.hook == spec.chains[2].hook || c.rules.is_empty())
        );
        assert_eq!(spec.rule_count(), 2);
    }
}
