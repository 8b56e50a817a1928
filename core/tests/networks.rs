//! Several overlay networks in one lab, with real packets: a private network NATed at the
//! runners and a routed network of public addresses that egresses through the host; workloads
//! on one or both; conflicting networks refused; a network removed by a host restart.

mod common;

use std::net::Ipv4Addr;

use common::*;
use weir::lab::Lab;
use weir_proto::v1 as pb;

const PRIVATE: &str = "[[networks]]\nname = \"private\"\nsubnet = \"10.128.0.0/12/6/14\"\nvxlan_id_base = 100\nmasquerade = true\negress = \"runner-nat\"\n";
const PUBLIC: &str = "[[networks]]\nname = \"public\"\nsubnet = \"198.51.100.0/22/2/8\"\nvxlan_id_base = 1000\nmasquerade = false\negress = \"via-host\"\n";

/// The wan's router knows the public network lives behind the host.
async fn route_public_via_host(lab: &Lab) {
    let lan = weir::dataplane::netlink::Netlink::in_namespace(&lab.ns("lan")).unwrap();
    lan.replace_route_as(
        "198.51.100.0/22".parse().unwrap(),
        Some(Ipv4Addr::new(192, 0, 2, 1)),
        None,
        4,
    )
    .await
    .unwrap();
}

async fn attach(c: &mut Control, runner: &str, id: &str, netns: &str, network: &str) -> Ipv4Addr {
    let r = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: runner.into(),
            workload_id: id.into(),
            netns: netns.into(),
            network: network.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("attach {id} to {network}: {e}"))
        .into_inner();
    assert_eq!(r.network, network);
    r.ip.split('/').next().unwrap().parse().unwrap()
}

async fn two_network_lab(tag: &str, first: &str) -> Lab {
    let mut s = spec(tag);
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.host_extra = format!("{first}{PUBLIC}");
    let lab = must(Lab::up(s).await);
    route_public_via_host(&lab).await;
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_on_two_networks_reaches_each_through_its_own_interface() {
    let lab = two_network_lab("nets", PRIVATE).await;
    let mut c = control(&lab).await;
    // a: on both networks (private first: it has the default route); b: private only on r2;
    // p: public only on r2.
    let a_ns = new_netns(&lab, "a");
    let a_private = attach(&mut c, "r1", "a", &a_ns, "private").await;
    let a_public = attach(&mut c, "r1", "a", &a_ns, "public").await;
    let b_ns = new_netns(&lab, "b");
    let b_private = attach(&mut c, "r2", "b", &b_ns, "private").await;
    let p_ns = new_netns(&lab, "p");
    let p_public = attach(&mut c, "r2", "p", &p_ns, "public").await;
    assert!(
        a_private.to_string().starts_with("10.128.64."),
        "{a_private}"
    );
    assert!(
        a_public.to_string().starts_with("198.51.101."),
        "{a_public}"
    );
    assert!(
        b_private.to_string().starts_with("10.128.128."),
        "{b_private}"
    );
    assert!(
        p_public.to_string().starts_with("198.51.102."),
        "{p_public}"
    );

    // One interface per network, in the order joined.
    let inside = links(&lab, "a").await;
    let names: Vec<&str> = inside.iter().map(|l| l.name.as_str()).collect();
    assert!(
        names.contains(&"eth0") && names.contains(&"eth1"),
        "{names:?}"
    );
    let listed = c
        .list_workloads(pb::ListWorkloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workloads;
    let a_ifaces: Vec<(String, String)> = listed
        .iter()
        .filter(|w| w.workload_id == "a")
        .map(|w| (w.network.clone(), w.ifname.clone()))
        .collect();
    assert!(
        a_ifaces.contains(&("private".into(), "eth0".into())),
        "{a_ifaces:?}"
    );
    assert!(
        a_ifaces.contains(&("public".into(), "eth1".into())),
        "{a_ifaces:?}"
    );

    // Each peer sees a's address on its own network: the packets left by that interface.
    assert_eq!(tcp_source(&lab, "a", "b", b_private), Some(a_private));
    assert_eq!(tcp_source(&lab, "a", "p", p_public), Some(a_public));
    // And the other way round: replies leave by the interface the connection came in on.
    assert_eq!(tcp_source(&lab, "b", "a", a_private), Some(b_private));
    assert_eq!(tcp_source(&lab, "p", "a", a_public), Some(p_public));
    // The wan reaches a on its public address although a's default route is private: the
    // reply follows the source rule out of eth1.
    assert_eq!(
        tcp_source(&lab, "wan", "a", a_public),
        Some(Ipv4Addr::new(203, 0, 113, 10))
    );
    // Inside a: traffic from its public address routes out of eth1 (its own table), traffic
    // from its private address by the default route out of eth0.
    let route_from = |src: Ipv4Addr| {
        let out = lab
            .exec(
                "a",
                "ip",
                &[
                    "-4",
                    "route",
                    "get",
                    "203.0.113.10",
                    "from",
                    &src.to_string(),
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let public_route = route_from(a_public);
    assert!(
        public_route.contains("dev eth1") && public_route.contains("table 101"),
        "{public_route}"
    );
    assert!(route_from(a_private).contains("dev eth0"));
    assert!(lab.ping("b", a_private));
    assert!(lab.ping("p", a_public));

    // Status shows both networks with their counts; events carry the network.
    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let nets: Vec<(String, u32, String)> = status
        .networks
        .iter()
        .map(|n| (n.name.clone(), n.workloads, n.egress.clone()))
        .collect();
    assert_eq!(
        nets,
        vec![
            ("private".into(), 2, "runner-nat".into()),
            ("public".into(), 2, "via-host".into())
        ]
    );
    let attached = events_of(&lab, pb::EventKind::WorkloadAttached).await;
    assert!(
        attached
            .iter()
            .any(|e| e.workload_id == "a" && e.network == "public")
    );

    // The CLI leaves every network of a workload by default.
    let out = lab.weir(&["detach", "--id", "a", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["networks"].as_array().map(Vec::len), Some(2), "{v}");
    let inside = links(&lab, "a").await;
    assert!(
        !inside.iter().any(|l| l.name.starts_with("eth")),
        "a's interfaces are gone: {inside:?}"
    );

    // A workload's networks must all be on one runner; the refusal holds no address.
    let c_ns = new_netns(&lab, "c");
    attach(&mut c, "r1", "c", &c_ns, "private").await;
    let refused = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r2".into(),
            workload_id: "c".into(),
            netns: new_netns(&lab, "c2"),
            network: "public".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    let q_ns = new_netns(&lab, "q");
    let q_public = attach(&mut c, "r2", "q", &q_ns, "public").await;
    assert_eq!(
        u32::from(q_public),
        u32::from(p_public) + 1,
        "the refused attach gave its address back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routed_network_egresses_via_the_host_with_its_own_addresses() {
    let lab = two_network_lab("route", PRIVATE).await;
    let mut c = control(&lab).await;
    let p_ns = new_netns(&lab, "p");
    let p_public = attach(&mut c, "r1", "p", &p_ns, "public").await;
    let q_ns = new_netns(&lab, "q");
    let q_private = attach(&mut c, "r2", "q", &q_ns, "private").await;

    // The routed network: the wan sees the workload's own address, not the runner's or the
    // host's, and reaches it directly.
    let probe = lab.wan_listener().unwrap();
    assert_eq!(lab.wan_sees("p", &probe), Some(p_public));
    assert_eq!(
        tcp_source(&lab, "wan", "p", p_public),
        Some(Ipv4Addr::new(203, 0, 113, 10))
    );
    // The private network still leaves through its runner's NAT.
    assert_eq!(lab.wan_sees("q", &probe), Some(weir::lab::runner_ip(2)));
    assert_ne!(lab.wan_sees("q", &probe), Some(q_private));

    // The runner steers the public subnet to the host by a source rule; the host does not
    // masquerade it; the runner does not NAT it either.
    let rules = lab.exec("r1", "ip", &["-4", "rule", "show"]).unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("from 198.51.101.0/24 lookup 2000"),
        "{rules}"
    );
    let host_nft = ruleset(&lab, "host");
    assert!(
        !host_nft.contains("198.51.100.0/22 ip daddr != 198.51.100.0/22 oifname"),
        "{host_nft}"
    );
    let runner_nft = ruleset(&lab, "r1");
    assert!(
        !runner_nft
            .contains("198.51.100.0/22 ip daddr != 198.51.100.0/22 oifname \"eth0\" masquerade"),
        "{runner_nft}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_networks_are_refused_at_start_naming_both() {
    let dir = std::env::temp_dir().join(format!("weir-nets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            PUBLIC.replace("198.51.100.0/22/2/8", "10.130.0.0/16/2/14"),
            "subnets 10.128.0.0/12 and 10.130.0.0/16 overlap",
        ),
        (
            PUBLIC.replace("vxlan_id_base = 1000", "vxlan_id_base = 120"),
            "VNI ranges 101-163 and 121-123 overlap",
        ),
    ];
    for (public, want) in cases {
        let file = dir.join("weir.toml");
        std::fs::write(
            &file,
            format!("[host]\nreachable_address = \"192.0.2.1\"\n[auth]\ninsecure = true\n{PRIVATE}{public}"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--config")
            .arg(&file)
            .arg("host")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("networks \"private\" and \"public\"") && err.contains(want),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_network_removes_its_kernel_objects_and_leaves_the_other_alone() {
    // "default" keeps KohakuRiver's names next to a derived-named network.
    let first = PRIVATE.replace("\"private\"", "\"default\"");
    let mut lab = two_network_lab("netrm", &first).await;
    let mut c = control(&lab).await;
    let a_ns = new_netns(&lab, "a");
    let a_private = attach(&mut c, "r1", "a", &a_ns, "default").await;
    attach(&mut c, "r1", "a", &a_ns, "public").await;
    let b_ns = new_netns(&lab, "b");
    let b_private = attach(&mut c, "r2", "b", &b_ns, "default").await;
    let p_ns = new_netns(&lab, "p");
    attach(&mut c, "r2", "p", &p_ns, "public").await;
    assert!(lab.ping("a", b_private));

    let index = |links: &[weir::dataplane::netlink::Link], name: &str| {
        links.iter().find(|l| l.name == name).map(|l| l.index)
    };
    let host = links(&lab, "host").await;
    let r1 = links(&lab, "r1").await;
    for name in [
        "wh-public",
        "vx-public-1",
        "vx-public-2",
        "kohaku-host",
        "vxkr1",
        "vxkr2",
    ] {
        assert!(index(&host, name).is_some(), "host lacks {name}");
    }
    for name in ["wb-public", "vx-public", "kohaku-overlay", "vxlan0"] {
        assert!(index(&r1, name).is_some(), "r1 lacks {name}");
    }
    let keep_host: Vec<(String, u32)> = ["kohaku-host", "vxkr1", "vxkr2"]
        .iter()
        .map(|n| (n.to_string(), index(&host, n).unwrap()))
        .collect();
    let keep_r1: Vec<(String, u32)> = r1
        .iter()
        .filter(|l| {
            l.name == "kohaku-overlay"
                || l.name == "vxlan0"
                || l.alias.as_deref() == Some("weir:default/a")
        })
        .map(|l| (l.name.clone(), l.index))
        .collect();
    assert_eq!(keep_r1.len(), 3, "{r1:?}");

    // The private network carries traffic through the whole restart.
    let pinger = Pinger::start(&lab, "b", a_private);
    wait_until("the ping flows", dur(10), || lab.ping("b", a_private)).await;
    lab.spec.host_extra = first.clone();
    lab.host.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    lab.start_host().await.unwrap_or_else(|e| panic!("{e}"));
    let gone = |lab: &Lab| {
        let ok = |m: &str| {
            let out = lab.exec(m, "ip", &["-o", "link"]).unwrap();
            !String::from_utf8_lossy(&out.stdout).contains("public")
        };
        ok("host") && ok("r1") && ok("r2")
    };
    wait_until(
        "the public network's links are gone everywhere",
        dur(30),
        || gone(&lab),
    )
    .await;
    wait_until("both runners are back", dur(30), || {
        is_active(&lab, "r1") && is_active(&lab, "r2")
    })
    .await;
    // Give the runners' sync a moment to finish by waiting on its visible effect.
    wait_until("p's interface is gone", dur(30), || {
        let out = lab.exec("p", "ip", &["-o", "link"]).unwrap();
        !String::from_utf8_lossy(&out.stdout).contains("eth0")
    })
    .await;
    let (sent, received) = pinger.stop();
    assert!(sent >= 10, "the ping ran ({sent} sent)");
    assert_eq!(sent, received, "no packet of the private network was lost");

    // Nothing of the public network is left: links, routes, rules, nft rules.
    for m in ["host", "r1", "r2"] {
        let r = routes(&lab, m).await;
        assert!(!r.iter().any(|x| x.starts_with("198.51.")), "{m}: {r:?}");
        let nft = ruleset(&lab, m);
        assert!(!nft.contains("198.51.100"), "{m}: {nft}");
        let rules = lab.exec(m, "ip", &["-4", "rule", "show"]).unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout).to_string();
        assert!(!rules.contains("198.51."), "{m}: {rules}");
    }
    let table = lab
        .exec("r1", "ip", &["-4", "route", "show", "table", "2000"])
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).trim().is_empty());
    // The other network did not move.
    let host = links(&lab, "host").await;
    for (name, idx) in &keep_host {
        assert_eq!(index(&host, name), Some(*idx), "host {name} was re-created");
    }
    let r1 = links(&lab, "r1").await;
    for (name, idx) in &keep_r1 {
        assert_eq!(index(&r1, name), Some(*idx), "r1 {name} was re-created");
    }
    let status = c.get_status(pb::GetStatusRequest {}).await;
    // The host restarted: reconnect.
    drop(status);
    let mut c = control(&lab).await;
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.networks.len(), 1);
    assert_eq!(s.networks[0].name, "default");
    assert_eq!(s.networks[0].workloads, 2);
    assert!(lab.ping("a", b_private));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kohakuriver_naming_builds_the_links_kohakuriver_would() {
    let mut s = spec("krn");
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.overlay.push_str("\nnaming = \"kohakuriver\"\n");
    s.host_extra = format!("{PRIVATE}{PUBLIC}");
    let lab = must(Lab::up(s).await);
    let names = |links: Vec<weir::dataplane::netlink::Link>| -> Vec<String> {
        links.into_iter().map(|l| l.name).collect()
    };
    let host = names(links(&lab, "host").await);
    for want in ["kohaku-host", "vx0_1", "vx0_2", "vx1_1", "vx1_2"] {
        assert!(host.contains(&want.to_string()), "{want} missing: {host:?}");
    }
    // One kohaku-host carries every network's host address.
    let addrs = all_addresses(&lab, "host").await;
    for want in ["10.128.0.1/12", "198.51.100.1/22"] {
        assert!(addrs.iter().any(|a| a.contains(want)), "{want}: {addrs:?}");
    }
    let r1 = names(links(&lab, "r1").await);
    for want in [
        "vxlan-private",
        "kohaku-private",
        "vxlan-public",
        "kohaku-public",
    ] {
        assert!(r1.contains(&want.to_string()), "{want} missing: {r1:?}");
    }
    // And the overlay works through them.
    let mut c = control(&lab).await;
    let a = new_netns(&lab, "a");
    let b = new_netns(&lab, "b");
    attach(&mut c, "r1", "a", &a, "private").await;
    let ip_b = attach(&mut c, "r2", "b", &b, "private").await;
    assert!(lab.ping("a", ip_b), "a reaches b across runners");
    doctor_clean(&lab).await;
}

/// The host's `/32` routes inside `flat`.
async fn flat_routes(lab: &Lab, flat: ipnet::Ipv4Net) -> std::collections::BTreeSet<Ipv4Addr> {
    let nl = weir::dataplane::netlink::Netlink::in_namespace(&lab.ns("host")).unwrap();
    nl.routes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.destination.prefix_len() == 32 && flat.contains(&r.destination.addr()))
        .map(|r| r.destination.addr())
        .collect()
}

/// A flat plan (KohakuRiver's `BASE/PREFIX`): one subnet shared by every runner, the host's
/// address `broadcast − 1` on each of its tunnels, every runner's bridge `B+1`, each address
/// unique across the network; workloads on different runners reach each other (the host
/// routes each address to its runner's tunnel and answers ARP for the others), the host and
/// the wan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_network_is_one_subnet_across_runners_with_kohakuriver_names() {
    const FLAT: &str = "[[networks]]\nname = \"flat\"\nsubnet = \"203.0.113.128/26\"\nvxlan_id_base = 300\nmasquerade = true\negress = \"runner-nat\"\n";
    let mut s = spec("flt");
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.overlay.push_str("\nnaming = \"kohakuriver\"\n");
    s.host_extra = format!("{PRIVATE}{FLAT}");
    let mut lab = must(Lab::up(s).await);
    // The links and addresses KohakuRiver's flat networks have.
    let host = all_addresses(&lab, "host").await;
    for tunnel in ["vx1_1", "vx1_2"] {
        assert!(
            host.iter()
                .any(|a| a.starts_with(&format!("{tunnel} ")) && a.contains("203.0.113.190/26")),
            "{tunnel} holds the host's flat address: {host:?}"
        );
    }
    assert!(
        !host
            .iter()
            .any(|a| a.starts_with("kohaku-host ") && a.contains("203.0.113.")),
        "the flat network's host address is not on kohaku-host: {host:?}"
    );
    // The host answers ARP for the flat network's other runners on each tunnel, and every
    // tunnel asks again for a MAC after 100 ms (a lost answer after a failover).
    let sysctl = |key: &str| {
        let mut cmd = std::process::Command::new("cat");
        cmd.arg(format!("/proc/sys/net/ipv4/{key}"));
        weir::lab::run_in_namespace(&mut cmd, &lab.ns("host")).unwrap();
        String::from_utf8(cmd.output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    for tunnel in ["vx1_1", "vx1_2"] {
        assert_eq!(sysctl(&format!("conf/{tunnel}/proxy_arp")), "1", "{tunnel}");
        assert_eq!(
            sysctl(&format!("neigh/{tunnel}/retrans_time_ms")),
            "100",
            "{tunnel}"
        );
    }
    assert_eq!(
        sysctl("conf/vx0_1/proxy_arp"),
        "0",
        "not on a hierarchical network's tunnel"
    );
    assert_eq!(sysctl("neigh/vx0_1/retrans_time_ms"), "100");
    for r in ["r1", "r2"] {
        let addrs = all_addresses(&lab, r).await;
        assert!(
            addrs
                .iter()
                .any(|a| a.starts_with("kohaku-flat ") && a.contains("203.0.113.129/26")),
            "{r}'s bridge is the gateway: {addrs:?}"
        );
    }
    let mut c = control(&lab).await;
    let (a, b, d) = (
        new_netns(&lab, "a"),
        new_netns(&lab, "b"),
        new_netns(&lab, "d"),
    );
    let ip_a = attach(&mut c, "r1", "a", &a, "flat").await;
    let ip_b = attach(&mut c, "r1", "b", &b, "flat").await;
    let ip_d = attach(&mut c, "r2", "d", &d, "flat").await;
    let flat: ipnet::Ipv4Net = "203.0.113.128/26".parse().unwrap();
    for ip in [ip_a, ip_b, ip_d] {
        let o = u32::from(ip) - u32::from(flat.network());
        assert!(flat.contains(&ip) && (2..=61).contains(&o), "{ip}");
    }
    // One pool for the network: no address twice, whichever runner asks.
    assert!(ip_a != ip_b && ip_b != ip_d && ip_a != ip_d);
    let e = new_netns(&lab, "e");
    let st = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r2".into(),
            workload_id: "e".into(),
            netns: e.clone(),
            network: "flat".into(),
            requested_ip: ip_a.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::AlreadyExists, "{st:?}");
    // Real packets: across runners both ways, on one runner, to the host, to the wan.
    assert!(lab.ping("a", ip_d), "a reaches d on the other runner");
    assert!(lab.ping("d", ip_b), "d reaches b on the other runner");
    assert!(lab.ping("a", ip_b), "a reaches b on its own runner");
    assert!(
        lab.ping("d", "203.0.113.190".parse().unwrap()),
        "d reaches the host"
    );
    assert!(lab.ping("a", weir::lab::WAN_IP), "a reaches the wan");
    // The host routes each address to its runner's tunnel, and forgets it when it goes.
    assert_eq!(
        flat_routes(&lab, flat).await,
        [ip_a, ip_b, ip_d].into_iter().collect()
    );
    c.detach_workload(pb::DetachWorkloadRequest {
        runner: "r2".into(),
        workload_id: "d".into(),
        network: "flat".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        flat_routes(&lab, flat).await,
        [ip_a, ip_b].into_iter().collect(),
        "{}",
        std::fs::read_to_string(lab.dir.join("host.log")).unwrap_or_default()
    );
    // Its address, free again, is the next one on either runner; and it works there.
    let ip_e = attach(&mut c, "r2", "e", &e, "flat").await;
    assert!(lab.ping("e", ip_a), "e reaches a across runners");
    let held: std::collections::BTreeSet<Ipv4Addr> = [ip_a, ip_b, ip_e].into_iter().collect();
    assert_eq!(flat_routes(&lab, flat).await, held);
    // A host killed and started again routes the same addresses (from its store) to the same
    // runners, and traffic crosses again.
    lab.host.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    lab.start_host().await.unwrap();
    assert_eq!(flat_routes(&lab, flat).await, held);
    wait_until("both runners are back", dur(20), || {
        is_active(&lab, "r1") && is_active(&lab, "r2")
    })
    .await;
    assert!(
        lab.ping("a", ip_e),
        "a reaches e across runners after the host restart"
    );
    doctor_clean(&lab).await;
}
