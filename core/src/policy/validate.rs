//! Checking a plugin's decision against its request: a plugin's output is untrusted input.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Limits;
use super::fault::Fault;
use crate::decision::{self as types, AddressDecision, Decision, Request, RunnerDecision};

/// Check a decision against its request: a plugin's output is untrusted input.
pub fn validate(request: &Request, decision: Decision, limits: Limits) -> Result<Decision, Fault> {
    let bad = |m: String| Err(Fault::Output(m));
    match (request, &decision) {
        (Request::AssignRunner(r), Decision::Runner(RunnerDecision::Id(id))) => {
            if *id < 1 || *id > r.plan.max_runners {
                return bad(format!(
                    "runner id {id} is outside the plan {} (allowed: 1..={})",
                    r.plan.spec, r.plan.max_runners
                ));
            }
            if let Some(t) = r
                .taken
                .iter()
                .find(|t| t.id == *id && t.active && t.runner.as_deref() != Some(r.name.as_str()))
            {
                return bad(format!(
                    "runner id {id} is held by active runner {}",
                    t.runner.as_deref().unwrap_or("(placeholder)")
                ));
            }
        }
        (Request::AssignRunner(_), Decision::Runner(RunnerDecision::Deny(m)))
        | (Request::AssignAddress(_), Decision::Address(AddressDecision::Deny(m))) => {
            if m.len() > 1024 {
                return bad("denial reason longer than 1024 bytes".into());
            }
        }
        (Request::AssignRunner(_), Decision::Runner(RunnerDecision::Builtin)) => {}
        (Request::AssignAddress(r), Decision::Address(AddressDecision::Address(ip))) => {
            let (ip, subnet) = (*ip, r.subnet);
            // The host's `.254` exists only in subnets of 256 addresses or more (and, near the
            // top of the address space, adding the offset must not overflow).
            let host_side = u32::from(subnet.network())
                .checked_add(crate::plan::HOST_ON_SUBNET_OFFSET)
                .filter(|_| subnet.prefix_len() <= 24)
                .map(Ipv4Addr::from);
            if !subnet.contains(&ip) || ip < r.first || ip > r.last {
                return bad(format!(
                    "address {ip} is outside the runner's range {} to {}",
                    r.first, r.last
                ));
            }
            if ip == r.gateway || Some(ip) == host_side {
                return bad(format!(
                    "address {ip} is reserved (gateway or the host's address)"
                ));
            }
            if !r.pool.is_free(ip) {
                return bad(format!("address {ip} is already in use"));
            }
        }
        (Request::AssignAddress(_), Decision::Address(AddressDecision::NextFree)) => {}
        (Request::Rules(_), Decision::Firewall(f)) => {
            if f.rules.len() as u64 > u64::from(limits.max_output) {
                return bad(format!(
                    "{} rules, more than max_output {}",
                    f.rules.len(),
                    limits.max_output
                ));
            }
            for (i, rule) in f.rules.iter().enumerate() {
                if let types::Peer::Cidr(c) = &rule.peer
                    && c.parse::<Ipv4Net>().is_err()
                {
                    return bad(format!("rule {i}: {c:?} is not a CIDR"));
                }
                if rule.ports.iter().any(|p| p.first > p.last || p.first == 0) {
                    return bad(format!("rule {i}: a port range is empty or starts at 0"));
                }
                if !rule.ports.is_empty()
                    && !matches!(rule.protocol, types::Protocol::Tcp | types::Protocol::Udp)
                {
                    return bad(format!("rule {i}: ports need protocol tcp or udp"));
                }
            }
        }
        (Request::Route(r), Decision::Route(d)) => {
            if d.paths.len() as u64 > u64::from(limits.max_output) {
                return bad(format!(
                    "{} routes, more than max_output {}",
                    d.paths.len(),
                    limits.max_output
                ));
            }
            if let Some((n, _)) = d.paths.iter().find(|(n, _)| r.peers.get(n).is_none()) {
                let shown: String = n.chars().take(64).collect();
                return bad(format!("route for unknown peer {shown:?}"));
            }
        }
        (req, d) => {
            return bad(format!(
                "a {} answer to {}",
                decision_name(d),
                req.call_name()
            ));
        }
    }
    Ok(decision)
}

fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Runner(_) => "runner",
        Decision::Address(_) => "address",
        Decision::Firewall(_) => "firewall",
        Decision::Route(_) => "route",
    }
}

#[cfg(test)]
mod tests {
    use super::types::*;
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn addr_req(taken: &[&str]) -> Request {
        let held: Vec<Ipv4Addr> = taken.iter().map(|s| ip(s)).collect();
        Request::AssignAddress(AddressRequest {
            network: "default".into(),
            workload_id: "w".into(),
            vm: false,
            origin: Origin::default(),
            labels: Default::default(),
            runner: "r1".into(),
            runner_labels: Default::default(),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: ip("10.0.1.1"),
            first: ip("10.0.1.2"),
            last: ip("10.0.1.253"),
            pool: PoolView::from_held(ip("10.0.1.2"), ip("10.0.1.253"), &held),
        })
    }

    fn runner_req(taken: Vec<TakenId>) -> Request {
        Request::AssignRunner(RunnerRequest {
            network: "default".into(),
            name: "me".into(),
            physical_ip: ip("192.0.2.1"),
            labels: Default::default(),
            taken,
            plan: PlanInfo {
                spec: "10.0.0.0/22/2/8".into(),
                overlay: "10.0.0.0/22".parse().unwrap(),
                max_runners: 3,
            },
        })
    }

    fn check(req: &Request, d: Decision) -> Result<Decision, Fault> {
        validate(req, d, Limits::default())
    }

    #[test]
    fn addresses_must_be_free_and_assignable() {
        let req = addr_req(&["10.0.1.7"]);
        let a = |s: &str| Decision::Address(AddressDecision::Address(ip(s)));
        assert!(check(&req, a("10.0.1.9")).is_ok());
        for bad in [
            "10.0.1.7",
            "10.0.1.1",
            "10.0.1.254",
            "10.0.1.255",
            "10.0.2.5",
        ] {
            let e = check(&req, a(bad)).unwrap_err();
            assert_eq!(e.cause(), "output", "{bad}: {e}");
        }
        assert!(check(&req, Decision::Address(AddressDecision::NextFree)).is_ok());
        let long = "x".repeat(2000);
        assert!(check(&req, Decision::Address(AddressDecision::Deny(long))).is_err());
        // An answer of the wrong kind is a fault too.
        assert!(check(&req, Decision::Runner(RunnerDecision::Id(1))).is_err());
    }

    /// Regression found by `prop_policy_address_requests_of_any_text_never_panic`: a subnet
    /// at the top of the address space overflowed computing the host's `.254`.
    #[test]
    fn subnets_at_the_top_of_the_address_space_do_not_overflow() {
        let mut req = addr_req(&[]);
        if let Request::AssignAddress(r) = &mut req {
            r.subnet = "255.255.255.128/25".parse().unwrap();
            r.gateway = ip("255.255.255.129");
            r.first = ip("255.255.255.130");
            r.last = ip("255.255.255.253");
            r.pool = PoolView::from_held(r.first, r.last, &[]);
        }
        let a = |s: &str| Decision::Address(AddressDecision::Address(ip(s)));
        assert!(check(&req, a("255.255.255.200")).is_ok());
        assert!(check(&req, a("255.255.255.254")).is_err());
        assert!(check(&req, a("0.0.0.0")).is_err());
    }

    #[test]
    fn runner_ids_must_be_in_the_plan_and_not_held_by_another_active_runner() {
        let held = |id, runner: &str, active| TakenId {
            id,
            runner: Some(runner.into()),
            physical_ip: ip("192.0.2.9"),
            last_seen_ms: 0,
            active,
        };
        let req = runner_req(vec![
            held(1, "other", true),
            held(2, "idle", false),
            held(3, "me", true),
        ]);
        let id = |i| Decision::Runner(RunnerDecision::Id(i));
        assert!(
            check(&req, id(2)).is_ok(),
            "an inactive holder can be reclaimed"
        );
        assert!(check(&req, id(3)).is_ok(), "its own id");
        assert!(
            check(&req, id(1))
                .unwrap_err()
                .to_string()
                .contains("held by active runner other")
        );
        assert!(
            check(&req, id(0))
                .unwrap_err()
                .to_string()
                .contains("outside the plan")
        );
        assert!(
            check(&req, id(4))
                .unwrap_err()
                .to_string()
                .contains("allowed: 1..=3")
        );
    }

    #[test]
    fn firewall_and_route_output_is_bounded_and_well_formed() {
        let req = Request::Rules(FirewallRequest {
            network: "default".into(),
            workload_id: "w".into(),
            labels: Default::default(),
            runner: "r1".into(),
            address: ip("10.0.1.2"),
            origin: Origin::default(),
            groups: vec![],
        });
        let rule = |peer: Peer, protocol: Protocol, ports: Vec<PortRange>| Rule {
            direction: Direction::Ingress,
            peer,
            protocol,
            ports,
            verdict: Verdict::Allow,
        };
        let fw = |rules| {
            Decision::Firewall(FirewallDecision {
                rules,
                default_verdict: Verdict::Deny,
            })
        };
        let tcp80 = vec![PortRange {
            first: 80,
            last: 80,
        }];
        assert!(
            check(
                &req,
                fw(vec![rule(Peer::Host, Protocol::Tcp, tcp80.clone())])
            )
            .is_ok()
        );
        assert!(
            check(
                &req,
                fw(vec![rule(
                    Peer::Cidr("10.0.0.0/33".into()),
                    Protocol::Any,
                    vec![]
                )])
            )
            .is_err()
        );
        assert!(
            check(&req, fw(vec![rule(Peer::Any, Protocol::Icmp, tcp80)])).is_err(),
            "ports need tcp/udp"
        );
        assert!(
            check(
                &req,
                fw(vec![rule(
                    Peer::Any,
                    Protocol::Tcp,
                    vec![PortRange { first: 9, last: 8 }]
                )])
            )
            .is_err()
        );
        let many = (0..10_001)
            .map(|_| rule(Peer::Any, Protocol::Any, vec![]))
            .collect();
        assert!(
            check(&req, fw(many))
                .unwrap_err()
                .to_string()
                .contains("max_output")
        );

        let r = |name: &str, id: u32| RunnerInfo {
            name: name.into(),
            id,
            labels: Default::default(),
            physical_ip: ip("192.0.2.2"),
        };
        let index = std::sync::Arc::new(PeerIndex::new([r("r1", 1), r("r2", 2)]));
        let route = Request::Route(RouteRequest {
            network: "default".into(),
            runner: r("r1", 1),
            change: RouteChange::Joined,
            peers: PeersView::new(index, "r1"),
        });
        let d = |paths| {
            Decision::Route(RouteDelta {
                paths,
                egress: Some(Egress::RunnerNat),
            })
        };
        assert!(check(&route, d(vec![("r2".into(), PathKind::Direct)])).is_ok());
        assert!(
            check(&route, d(vec![("r9".into(), PathKind::Direct)])).is_err(),
            "unknown peer"
        );
        assert!(
            check(&route, d(vec![("r1".into(), PathKind::Direct)])).is_err(),
            "itself"
        );
    }
}

#[cfg(test)]
mod prop_tests {
    use super::types::*;
    use super::*;
    use crate::ipam::AddressPool;
    use crate::plan::Plan;
    use crate::prop_support::{config, edgy_u32};
    use proptest::prelude::*;

    /// A runner's subnet as the hub describes it to an allocator: a block of a valid plan
    /// (with the host's `.254` excluded), or an isolated-mode subnet of any size.
    #[derive(Debug, Clone)]
    struct Setting {
        subnet: Ipv4Net,
        host_side: Option<Ipv4Addr>,
        taken: Vec<Ipv4Addr>,
    }

    impl Setting {
        fn pool(&self) -> AddressPool {
            let excluded: Vec<(Ipv4Addr, &'static str)> = self
                .host_side
                .map(|h| (h, "the host's address"))
                .into_iter()
                .collect();
            let mut pool = AddressPool::new(self.subnet, &excluded);
            for a in &self.taken {
                let _ = pool.take(*a);
            }
            pool
        }

        fn request(&self) -> Request {
            let pool = self.pool();
            let (first, last) = pool.range();
            Request::AssignAddress(AddressRequest {
                network: "default".into(),
                workload_id: "w".into(),
                vm: false,
                origin: Origin::default(),
                labels: Default::default(),
                runner: "r1".into(),
                runner_labels: Default::default(),
                subnet: self.subnet,
                gateway: Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1)),
                first,
                last,
                pool: pool.view(),
            })
        }
    }

    fn offsets(size: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            proptest::sample::select(vec![0u64, 1, 2, 3, 253, 254, 255, 256]),
            (1u64..=3).prop_map(move |d| size.saturating_sub(d)),
            0..size,
        ]
    }

    fn address_in(subnet: Ipv4Net) -> impl Strategy<Value = Ipv4Addr> {
        let net = u64::from(u32::from(subnet.network()));
        let size = 1u64 << (32 - subnet.prefix_len());
        offsets(size).prop_map(move |o| Ipv4Addr::from(((net + o) % (1 << 32)) as u32))
    }

    fn setting() -> impl Strategy<Value = Setting> {
        let overlay = (
            (1u8..=23).prop_flat_map(|p| {
                let (lo, hi) = (1u8.max(2u8.saturating_sub(p)), 16u8.min(24 - p));
                (edgy_u32(), Just(p), lo..=hi)
            }),
            any::<proptest::sample::Index>(),
        )
            .prop_filter_map("valid plan", |((b, p, n), id)| {
                let plan = Plan::new(Ipv4Addr::from(b), p, n, 32 - p - n).ok()?;
                let id = id.index(plan.max_runners() as usize) as u32 + 1;
                let block = plan.runner(id).ok()?;
                Some((block.subnet, Some(block.host_ip_on_subnet())))
            });
        let isolated = (edgy_u32(), prop_oneof![0u8..=32, 22u8..=32]).prop_map(|(a, p)| {
            (
                Ipv4Net::new(Ipv4Addr::from(a), p)
                    .unwrap_or_default()
                    .trunc(),
                None,
            )
        });
        prop_oneof![overlay, isolated].prop_flat_map(|(subnet, host_side)| {
            proptest::collection::vec(address_in(subnet), 0..6).prop_map(move |taken| Setting {
                subnet,
                host_side,
                taken,
            })
        })
    }

    /// What a plugin may answer for the address: nearby addresses, taken ones, anything.
    fn address_answer(s: &Setting) -> impl Strategy<Value = Ipv4Addr> + use<> {
        let taken = s.taken.clone();
        prop_oneof![
            4 => address_in(s.subnet),
            1 => edgy_u32().prop_map(Ipv4Addr::from),
            1 => proptest::sample::select(if taken.is_empty() { vec![Ipv4Addr::UNSPECIFIED] } else { taken }),
        ]
    }

    fn any_rule() -> impl Strategy<Value = Rule> {
        let peer = prop_oneof![
            Just(Peer::Any),
            Just(Peer::Host),
            Just(Peer::Wan),
            proptest::collection::btree_map(".{0,4}", ".{0,4}", 0..3).prop_map(Peer::Labels),
            (edgy_u32(), 0u8..=33)
                .prop_map(|(a, p)| Peer::Cidr(format!("{}/{p}", Ipv4Addr::from(a)))),
            ".{0,18}".prop_map(Peer::Cidr),
        ];
        let protocol = proptest::sample::select(vec![
            Protocol::Any,
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
        ]);
        let ports = proptest::collection::vec(
            prop_oneof![
                (any::<u16>(), any::<u16>()),
                (0u16..3, 0u16..3),
                any::<u16>().prop_map(|p| (p, p)),
            ]
            .prop_map(|(first, last)| PortRange { first, last }),
            0..3,
        );
        let direction = proptest::sample::select(vec![Direction::Ingress, Direction::Egress]);
        let verdict = proptest::sample::select(vec![Verdict::Allow, Verdict::Deny]);
        (direction, peer, protocol, ports, verdict).prop_map(
            |(direction, peer, protocol, ports, verdict)| Rule {
                direction,
                peer,
                protocol,
                ports,
                verdict,
            },
        )
    }

    fn limits(max_output: u32) -> Limits {
        Limits {
            max_output,
            ..Limits::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_policy_accepted_addresses_are_assignable(
            (s, answer) in setting().prop_flat_map(|s| { let a = address_answer(&s); (Just(s), a) })
        ) {
            let req = s.request();
            let d = Decision::Address(AddressDecision::Address(answer));
            let Ok(ok) = validate(&req, d, Limits::default()) else { return Ok(()) };
            prop_assert_eq!(&ok, &Decision::Address(AddressDecision::Address(answer)));
            let ip = answer;
            let sub = s.subnet;
            prop_assert!(sub.contains(&ip), "{} outside {}", ip, sub);
            let (first, last) = s.pool().range();
            prop_assert!(first <= ip && ip <= last, "{} outside {}..={}", ip, first, last);
            prop_assert!(ip != sub.network() && ip != sub.broadcast(), "{} in {}", ip, sub);
            prop_assert!(u32::from(ip) != u32::from(sub.network()).wrapping_add(1), "gateway {}", ip);
            prop_assert!(Some(ip) != s.host_side, "host side {}", ip);
            prop_assert!(!s.taken.contains(&ip), "{} in use", ip);
            // The hub then takes it from its pool: that must succeed too.
            let mut pool = s.pool();
            prop_assert_eq!(pool.take(ip), Ok(()));
        }

        #[test]
        fn prop_policy_address_requests_of_any_numbers_never_panic(
            subnet in (edgy_u32(), 0u8..=32).prop_map(|(a, p)| Ipv4Net::new(Ipv4Addr::from(a), p).unwrap_or_default()),
            ends in proptest::collection::vec(edgy_u32().prop_map(Ipv4Addr::from), 3),
            held in proptest::collection::vec(edgy_u32().prop_map(Ipv4Addr::from), 0..3),
            answer in edgy_u32().prop_map(Ipv4Addr::from),
        ) {
            let (first, last) = (ends[1].min(ends[2]), ends[1].max(ends[2]));
            let pool = PoolView::from_held(first, last, &held);
            let req = Request::AssignAddress(AddressRequest {
                network: "n".into(), workload_id: "w".into(), vm: true, origin: Origin::default(),
                labels: Default::default(), runner: "r".into(), runner_labels: Default::default(),
                subnet, gateway: ends[0], first, last, pool,
            });
            let d = Decision::Address(AddressDecision::Address(answer));
            if validate(&req, d, Limits::default()).is_ok() {
                prop_assert!(subnet.contains(&answer));
                prop_assert!(first <= answer && answer <= last);
                prop_assert!(ends[0] != answer && !held.contains(&answer));
            }
        }

        #[test]
        fn prop_policy_runner_ids_are_in_the_plan_and_free(
            max in prop_oneof![1u32..=8, 1u32..=65_535],
            id in prop_oneof![0u32..=10, any::<u32>()],
            taken in proptest::collection::vec(
                (0u32..=10, proptest::option::of(prop_oneof![Just("me".to_string()), Just("other".to_string()), ".{0,3}"]), any::<bool>()),
                0..6),
            deny in prop_oneof![".{0,8}", "x{1020,1030}"],
        ) {
            let req = Request::AssignRunner(RunnerRequest {
                network: "default".into(), name: "me".into(), physical_ip: Ipv4Addr::new(192, 0, 2, 1),
                labels: Default::default(),
                taken: taken.iter().map(|(id, runner, active)| TakenId {
                    id: *id, runner: runner.clone(), physical_ip: Ipv4Addr::new(192, 0, 2, 9),
                    last_seen_ms: 0, active: *active,
                }).collect(),
                plan: PlanInfo { spec: "p".into(), overlay: Ipv4Net::default(), max_runners: max },
            });
            let got = validate(&req, Decision::Runner(RunnerDecision::Id(id)), Limits::default());
            let held = taken.iter().any(|(t, r, active)| *t == id && *active && r.as_deref() != Some("me"));
            prop_assert_eq!(got.is_ok(), id >= 1 && id <= max && !held);
            let got = validate(&req, Decision::Runner(RunnerDecision::Deny(deny.clone())), Limits::default());
            prop_assert_eq!(got.is_ok(), deny.len() <= 1024);
            // An answer of another kind is always refused.
            let other = Decision::Address(AddressDecision::NextFree);
            prop_assert!(validate(&req, other, Limits::default()).is_err());
        }

        #[test]
        fn prop_policy_accepted_firewall_rules_are_well_formed(
            rules in proptest::collection::vec(any_rule(), 0..6),
            max_output in prop_oneof![0u32..8, Just(10_000)],
        ) {
            let req = Request::Rules(FirewallRequest {
                network: "default".into(), workload_id: "w".into(), labels: Default::default(),
                runner: "r1".into(), address: Ipv4Addr::new(10, 0, 1, 2), origin: Origin::default(), groups: vec![],
            });
            let d = Decision::Firewall(FirewallDecision { rules: rules.clone(), default_verdict: Verdict::Deny });
            let well_formed = rules.len() as u64 <= u64::from(max_output)
                && rules.iter().all(|r| {
                    !matches!(&r.peer, Peer::Cidr(c) if c.parse::<Ipv4Net>().is_err())
                        && r.ports.iter().all(|p| p.first >= 1 && p.first <= p.last)
                        && (r.ports.is_empty() || matches!(r.protocol, Protocol::Tcp | Protocol::Udp))
                });
            prop_assert_eq!(validate(&req, d, limits(max_output)).is_ok(), well_formed);
        }

        #[test]
        fn prop_policy_accepted_routes_name_known_peers(
            known in proptest::collection::btree_set("[a-c]{1,2}", 0..4),
            answer in proptest::collection::vec(("[a-d]{1,2}", any::<bool>()), 0..5),
            max_output in prop_oneof![0u32..6, Just(10_000)],
        ) {
            let info = |n: &str| RunnerInfo {
                name: n.into(), id: 1, labels: Default::default(), physical_ip: Ipv4Addr::new(192, 0, 2, 2),
            };
            let index = std::sync::Arc::new(PeerIndex::new(known.iter().map(|n| info(n))));
            let req = Request::Route(RouteRequest {
                network: "default".into(), runner: info("r1"), change: RouteChange::Joined,
                peers: PeersView::new(index, "r1"),
            });
            let peers: Vec<(String, PathKind)> = answer.iter()
                .map(|(n, d)| (n.clone(), if *d { PathKind::Direct } else { PathKind::ViaHub }))
                .collect();
            let ok = peers.len() as u64 <= u64::from(max_output)
                && peers.iter().all(|(n, _)| known.contains(n));
            let d = Decision::Route(RouteDelta { paths: peers, egress: Some(Egress::ViaHost) });
            prop_assert_eq!(validate(&req, d, limits(max_output)).is_ok(), ok);
        }
    }
}
