//! The overlay, proven with real packets between network namespaces running the real `weir`
//! daemons. Each test builds its own lab (unique names) and tears it down on drop, pass or fail.

mod common;

use std::net::Ipv4Addr;

use common::*;
use weir::lab::{self, Lab, WAN_IP};
use weir_proto::v1 as pb;

const HOST_OVERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_reach_each_other_the_host_and_the_wan() {
    let mut s = spec("conn");
    s.workloads_per_runner = 1;
    let lab = must(Lab::up(s).await);
    let a = workload_ip(&lab, 1, 1).await;
    let b = workload_ip(&lab, 2, 1).await;
    assert_eq!(
        a,
        Ipv4Addr::new(10, 128, 64, 2),
        "runner 1's first workload address"
    );
    assert_eq!(
        b,
        Ipv4Addr::new(10, 128, 128, 2),
        "runner 2's first workload address"
    );
    assert!(lab.ping("r1-w1", b), "r1-w1 -> r2-w1");
    assert!(lab.ping("r2-w1", a), "r2-w1 -> r1-w1");
    assert!(
        lab.ping("r1-w1", HOST_OVERLAY_IP),
        "workload -> host overlay IP"
    );
    let probe = lab.wan_listener().unwrap();
    assert_eq!(
        lab.wan_sees("r1-w1", &probe),
        Some(lab::runner_ip(1)),
        "the wan sees runner 1's uplink"
    );
    assert_eq!(
        lab.wan_sees("r2-w1", &probe),
        Some(lab::runner_ip(2)),
        "the wan sees runner 2's uplink"
    );

    // MTU 1450 end to end: 1422 bytes of ICMP payload + 28 = 1450 crosses with DF set …
    let df = |size: &str| {
        lab.exec(
            "r1-w1",
            "ping",
            &["-c", "1", "-W", "2", "-M", "do", "-s", size, &b.to_string()],
        )
        .unwrap()
        .status
        .success()
    };
    assert!(df("1422"), "a 1450-byte DF packet crosses runners");
    // … and one byte more does not.
    assert!(!df("1423"), "a 1451-byte DF packet must not cross");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_and_restarted_under_ping_loses_at_most_one_packet() {
    let mut s = spec("hrst");
    s.workloads_per_runner = 1;
    let mut lab = must(Lab::up(s).await);
    let b = workload_ip(&lab, 2, 1).await;
    let tunnels_before: Vec<(String, u32)> = links(&lab, "host")
        .await
        .into_iter()
        .filter(|l| l.name.starts_with("vxkr"))
        .map(|l| (l.name, l.index))
        .collect();
    assert_eq!(tunnels_before.len(), 2, "{tunnels_before:?}");
    let ids_before: Vec<(String, u64)> = ["r1", "r2"]
        .iter()
        .map(|r| {
            (
                r.to_string(),
                runner_status(&lab, r).unwrap()["id"].as_u64().unwrap(),
            )
        })
        .collect();

    let ping = Pinger::start(&lab, "r1-w1", b);
    // Let the ping run before, during and after the restart.
    tokio::time::sleep(dur(1)).await;
    lab.host.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    tokio::time::sleep(dur(1)).await;
    lab.start_host().await.unwrap();
    wait_until("both runners are active again", dur(20), || {
        is_active(&lab, "r1") && is_active(&lab, "r2")
    })
    .await;
    tokio::time::sleep(dur(1)).await;
    let (sent, received) = ping.stop();
    assert!(sent >= 25, "the ping ran ({sent} sent)");
    assert!(
        sent - received <= 1,
        "lost {} of {sent} packets across a host restart",
        sent - received
    );

    let tunnels_after: Vec<(String, u32)> = links(&lab, "host")
        .await
        .into_iter()
        .filter(|l| l.name.starts_with("vxkr"))
        .map(|l| (l.name, l.index))
        .collect();
    assert_eq!(
        tunnels_before, tunnels_after,
        "tunnels were adopted, not re-created"
    );
    for (runner, id) in ids_before {
        assert_eq!(
            runner_status(&lab, &runner).unwrap()["id"].as_u64(),
            Some(id),
            "{runner} keeps its id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_restart_keeps_id_subnet_addresses_and_rules() {
    let mut s = spec("rrst");
    s.runners = 1;
    let mut lab = must(Lab::up(s).await);
    let before = runner_status(&lab, "r1").unwrap();
    let addrs_before = (workload_ip(&lab, 1, 1).await, workload_ip(&lab, 1, 2).await);
    let rules_before = ruleset(&lab, "r1");
    assert!(rules_before.contains("masquerade"), "{rules_before}");

    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    lab.start_runner(1).await.unwrap();
    wait_until("r1 is active again", dur(20), || is_active(&lab, "r1")).await;

    let after = runner_status(&lab, "r1").unwrap();
    assert_eq!(before["id"], after["id"]);
    assert_eq!(before["subnet"], after["subnet"]);
    assert_eq!(
        addrs_before,
        (workload_ip(&lab, 1, 1).await, workload_ip(&lab, 1, 2).await)
    );
    let rules_after = ruleset(&lab, "r1");
    assert_eq!(
        rules_before.matches("masquerade").count(),
        rules_after.matches("masquerade").count(),
        "no duplicate rules:\n{rules_after}"
    );
    assert_eq!(
        rules_before.lines().count(),
        rules_after.lines().count(),
        "{rules_after}"
    );
    assert!(lab.ping("r1-w1", workload_ip(&lab, 1, 2).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_loss_makes_a_runner_inactive_then_active_again() {
    let mut s = spec("hbeat");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    assert!(is_active(&lab, "r1"));
    // Block the runner's gRPC traffic to the host with a rule in the runner's namespace.
    let nft = |args: &str| {
        let out = lab
            .exec("r1", "nft", &args.split(' ').collect::<Vec<_>>())
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("add table inet testblock");
    nft("add chain inet testblock out { type filter hook output priority 0 ; }");
    nft("add rule inet testblock out tcp dport 7700 drop");
    wait_until("r1 is inactive", dur(15), || is_inactive(&lab, "r1")).await;
    nft("delete table inet testblock");
    wait_until("r1 is active again", dur(40), || is_active(&lab, "r1")).await;
    // The tunnel stayed while it was inactive.
    assert!(links(&lab, "host").await.iter().any(|l| l.name == "vxkr1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_plan_reclaims_the_oldest_inactive_id_and_then_refuses() {
    let mut s = spec("full");
    s.runners = 3;
    s.workloads_per_runner = 0;
    s.overlay = "subnet = \"10.0.0.0/22/2/8\"\n".into();
    let mut lab = must(Lab::up(s).await);
    let id_of = |lab: &Lab, r: &str| runner_status(lab, r).and_then(|s| s["id"].as_u64());
    assert_eq!(
        (id_of(&lab, "r1"), id_of(&lab, "r2"), id_of(&lab, "r3")),
        (Some(1), Some(2), Some(3))
    );

    // r1 goes silent first, then r2: r1 is the least recently seen.
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    tokio::time::sleep(dur(1)).await;
    lab.runners
        .get_mut(&2)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    wait_until("r1 and r2 are inactive", dur(15), || {
        is_inactive(&lab, "r1") && is_inactive(&lab, "r2")
    })
    .await;

    lab.add_runner(4).await.unwrap();
    assert_eq!(id_of(&lab, "r4"), Some(1), "r4 takes r1's id");
    assert!(
        runner_status(&lab, "r1").is_none(),
        "r1's allocation is gone"
    );
    let tunnel = links(&lab, "host")
        .await
        .into_iter()
        .find(|l| l.name == "vxkr1")
        .unwrap();
    assert_eq!(
        tunnel.vxlan.unwrap().remote,
        Some(lab::runner_ip(4)),
        "vxkr1 now points at r4"
    );

    // r2 comes back (it still holds id 2): now nothing is inactive and a 5th runner is refused.
    lab.start_runner(2).await.unwrap();
    wait_until("r2 is active", dur(15), || is_active(&lab, "r2")).await;
    let before = lab.status().unwrap();
    let refused = register_directly(&lab, "r5", "192.0.2.15").await;
    let st = refused.expect_err("a 5th runner must be refused");
    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
    assert!(
        st.message()
            .contains("plan 10.0.0.0/22/2/8 allows at most 3 runners"),
        "{}",
        st.message()
    );
    // Heartbeats move last_seen; everything else must be as before.
    let allocations = |status: serde_json::Value| {
        let mut runners = status["runners"].clone();
        for r in runners.as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("last_seen_unix_ms");
        }
        runners
    };
    assert_eq!(
        allocations(lab.status().unwrap()),
        allocations(before),
        "a refused registration changes nothing"
    );
}

/// Call `Agent.Register` through the lab's control socket, as a runner would.
async fn register_directly(
    lab: &Lab,
    name: &str,
    ip: &str,
) -> Result<weir_proto::v1::RegisterResponse, tonic::Status> {
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let bearer = weir::api::auth::Bearer::new(Some(&lab.join_token())).unwrap();
    weir_proto::v1::agent_client::AgentClient::with_interceptor(ch, bearer)
        .register(weir_proto::v1::RegisterRequest {
            name: name.into(),
            physical_ip: ip.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_start_deletes_invalid_tunnels_and_adopts_valid_ones() {
    let mut s = spec("hyg");
    s.runners = 0;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    let nl = weir::dataplane::netlink::Netlink::in_namespace(&lab.ns("host")).unwrap();
    let vx = |name: &str, vni: u32| weir::dataplane::netlink::VxlanSpec {
        name: name.into(),
        vni,
        remote: Ipv4Addr::new(192, 0, 2, 99),
        local: lab::HOST_IP,
        port: 4789,
        mtu: 1450,
    };
    nl.add_vxlan(&vx("vxkr5", 999)).await.unwrap(); // wrong VNI
    nl.add_vxlan(&vx("vxkrzz", 5000)).await.unwrap(); // id 1295: outside the plan
    let valid = nl.add_vxlan(&vx("vxkr3", 103)).await.unwrap();
    let bridge = nl.add_bridge("vxkr7", 1500).await.unwrap(); // not VXLAN: not ours to judge

    lab.start_host().await.unwrap();
    let after = links(&lab, "host").await;
    let find = |n: &str| after.iter().find(|l| l.name == n);
    assert!(find("vxkr5").is_none(), "wrong VNI deleted");
    assert!(find("vxkrzz").is_none(), "id outside the plan deleted");
    assert_eq!(
        find("vxkr3").map(|l| l.index),
        Some(valid.index),
        "valid tunnel adopted in place"
    );
    assert_eq!(
        find("vxkr7").map(|l| l.index),
        Some(bridge.index),
        "non-VXLAN link left alone"
    );
    let status = lab.status().unwrap();
    let placeholder = status["runners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 3)
        .unwrap();
    assert_eq!(placeholder["placeholder"], true);
    assert_eq!(placeholder["physical_ip"], "192.0.2.99");
    // The adopted tunnel got its host-side address.
    let addrs = all_addresses(&lab, "host").await;
    assert!(
        addrs.contains(&"vxkr3 10.128.192.254/18".to_string()),
        "{addrs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_leaves_nothing_of_the_old_plan() {
    let mut s = spec("plan");
    s.runners = 1;
    s.workloads_per_runner = 1;
    let mut lab = must(Lab::up(s).await);
    let old = workload_ip(&lab, 1, 1).await;
    assert_eq!(old, Ipv4Addr::new(10, 128, 64, 2));

    // New plan, VNI base, port and MTU; restart the host only.
    lab.host.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    lab.spec.overlay =
        "subnet = \"10.0.0.0/22/2/8\"\nvxlan_id_base = 500\nvxlan_port = 4790\nmtu = 1400\n".into();
    lab.start_host().await.unwrap();
    wait_until("r1 is active on the new plan", dur(30), || {
        runner_status(&lab, "r1").is_some_and(|r| {
            r["active"] == true && r["connected"] == true && r["subnet"] == "10.0.1.0/24"
        })
    })
    .await;
    // The runner rebuilds asynchronously after registering; wait for its tunnel's new VNI.
    let mut rebuilt = false;
    for _ in 0..100 {
        if links(&lab, "r1").await.iter().any(|l| {
            l.vxlan
                .as_ref()
                .is_some_and(|v| v.vni == 501 && v.port == 4790)
        }) {
            rebuilt = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        rebuilt,
        "runner tunnel re-created with the new VNI and port"
    );
    for member in ["host", "r1"] {
        let addrs = all_addresses(&lab, member).await;
        assert!(
            !addrs.iter().any(|a| a.contains("10.128.")),
            "{member} keeps old addresses: {addrs:?}"
        );
        let routes = routes(&lab, member).await;
        assert!(
            !routes.iter().any(|r| r.contains("10.128.")),
            "{member} keeps old routes: {routes:?}"
        );
        let rules = ruleset(&lab, member);
        assert!(
            !rules.contains("10.128."),
            "{member} keeps old rules:\n{rules}"
        );
        for l in links(&lab, member).await {
            if let Some(v) = l.vxlan {
                assert!(
                    v.vni >= 500 && v.port == 4790,
                    "{member}: stale tunnel {} {v:?}",
                    l.name
                );
                assert_eq!(l.mtu, 1400, "{member}: {} keeps the old MTU", l.name);
            }
        }
    }
    let host_addrs = all_addresses(&lab, "host").await;
    assert!(
        host_addrs.contains(&"kohaku-host 10.0.0.1/22".to_string()),
        "{host_addrs:?}"
    );
    // The old workload's interface is gone with its address.
    wait_until("the old workload interface is removed", dur(10), || {
        workload_link_count(&lab) == 0
    })
    .await;
}

fn workload_link_count(lab: &Lab) -> usize {
    let out = lab.exec("r1", "ip", &["-o", "link", "show"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": wk"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_mode_nats_workloads_and_builds_no_overlay() {
    let mut s = spec("iso");
    s.runners = 2;
    s.workloads_per_runner = 1;
    s.overlay = "enabled = false\n".into();
    let lab = must(Lab::up(s).await);
    let a = workload_ip(&lab, 1, 1).await;
    assert_eq!(a, Ipv4Addr::new(172, 30, 0, 2));
    assert_eq!(
        workload_ip(&lab, 2, 1).await,
        Ipv4Addr::new(172, 30, 0, 2),
        "each runner has its own subnet copy"
    );
    assert!(lab.ping("r1-w1", WAN_IP), "a workload reaches the wan");
    let probe = lab.wan_listener().unwrap();
    assert_eq!(
        lab.wan_sees("r1-w1", &probe),
        Some(lab::runner_ip(1)),
        "through the runner's NAT"
    );
    for member in ["host", "r1", "r2"] {
        for l in links(&lab, member).await {
            assert!(
                l.kind.as_deref() != Some("vxlan")
                    && l.name != "kohaku-host"
                    && l.name != "kohaku-overlay",
                "{member} has overlay link {}",
                l.name
            );
        }
    }
    assert!(
        links(&lab, "r1")
            .await
            .iter()
            .any(|l| l.name == "kohakuriver-net")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_vms_get_their_own_nat_bridge_with_vm_subnet() {
    // KohakuRiver's VM NAT bridge: kohaku-br0 with 10.200.0.0/24, beside the containers'.
    let mut s = spec("vmb");
    s.runners = 1;
    s.workloads_per_runner = 1;
    s.overlay = "enabled = false\nvm_subnet = \"10.200.0.0/24\"\n".into();
    let lab = must(Lab::up(s).await);
    assert_eq!(workload_ip(&lab, 1, 1).await, Ipv4Addr::new(172, 30, 0, 2));
    let vm = control(&lab)
        .await
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "vm1".into(),
            kind: pb::WorkloadKind::Vm as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (vm.network.as_str(), vm.ip.as_str(), vm.gateway.as_str()),
        ("vm", "10.200.0.2/24", "10.200.0.1")
    );
    let r1 = links(&lab, "r1").await;
    let br = r1
        .iter()
        .find(|l| l.name == "kohaku-br0")
        .expect("the VM bridge exists");
    let tap = r1
        .iter()
        .find(|l| l.name == vm.ifname)
        .expect("the VM's tap exists");
    assert_eq!(tap.master, Some(br.index), "the tap is on kohaku-br0");
    assert!(
        all_addresses(&lab, "r1")
            .await
            .contains(&"kohaku-br0 10.200.0.1/24".to_string())
    );
    let rules = ruleset(&lab, "r1");
    assert!(
        rules.contains("10.200.0.0/24") && rules.contains("masquerade"),
        "{rules}"
    );
    doctor_clean(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_is_idempotent_conflicts_are_refused_and_detach_frees_the_address() {
    let mut s = spec("att");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::up(s).await);
    let first = lab.add_workload(1, 1).await.unwrap();
    assert_eq!(first, "10.128.64.2/18");
    let ns = lab.ns("r1-w1").display().to_string();
    let again = lab
        .weir(&[
            "attach", "--runner", "r1", "--id", "r1-w1", "--netns", &ns, "--json",
        ])
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["ip"], "10.128.64.2/18", "same netns: same answer");
    assert_eq!(v["gateway"], "10.128.64.1");
    assert_eq!(v["mtu"], 1450);
    assert_eq!(v["host_ip"], "10.128.0.1");
    // The same id with another namespace is refused, and changes nothing.
    weir::dataplane::netns::create(&lab.ns_name("other")).unwrap();
    let other = lab.ns("other").display().to_string();
    let clash = lab
        .weir(&[
            "attach", "--runner", "r1", "--id", "r1-w1", "--netns", &other,
        ])
        .unwrap();
    assert_eq!(clash.status.code(), Some(1));
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(
        err.contains("ALREADY_EXISTS") && err.contains("r1-w1"),
        "{err}"
    );
    assert!(
        links(&lab, "other").await.iter().all(|l| l.name == "lo"),
        "nothing was created in the other namespace"
    );
    // Unknown runner, bad id, missing namespace: refused with the field named.
    let out = lab
        .weir(&["attach", "--runner", "nope", "--id", "x", "--netns", &other])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{out:?}"
    );
    let out = lab
        .weir(&[
            "attach", "--runner", "r1", "--id", "bad id", "--netns", &other,
        ])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT: workload_id"),
        "{out:?}"
    );
    let out = lab
        .weir(&[
            "attach",
            "--runner",
            "r1",
            "--id",
            "ghost",
            "--netns",
            "/run/netns/does-not-exist",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        lab.status().unwrap()["workloads"],
        1,
        "failed attaches hold no address"
    );

    // Detach removes the interface and frees the address for the next workload.
    let out = lab
        .weir(&["detach", "--runner", "r1", "--id", "r1-w1"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        links(&lab, "r1-w1").await.iter().all(|l| l.name == "lo"),
        "eth0 is gone"
    );
    let next = lab.add_workload(1, 2).await.unwrap();
    assert_eq!(
        next, "10.128.64.2/18",
        "the freed address is handed out again"
    );
    let out = lab
        .weir(&["detach", "--runner", "r1", "--id", "r1-w1"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_moves_keeps_its_id_and_both_tunnel_ends_follow_in_place() {
    let mut s = spec("move");
    s.workloads_per_runner = 1;
    let lab = must(Lab::up(s).await);
    let host_tunnel = |links: &[weir::dataplane::netlink::Link]| {
        links.iter().find(|l| l.name == "vxkr1").cloned().unwrap()
    };
    let before_host = host_tunnel(&links(&lab, "host").await);
    let before_runner = links(&lab, "r1")
        .await
        .into_iter()
        .find(|l| l.name == "vxlan0")
        .unwrap();

    // Renumber r1's underlay address.
    let nl = weir::dataplane::netlink::Netlink::in_namespace(&lab.ns("r1")).unwrap();
    let eth0 = nl.link("eth0").await.unwrap().unwrap();
    let new_ip = Ipv4Addr::new(192, 0, 2, 111);
    nl.del_addr(
        eth0.index,
        ipnet::Ipv4Net::new(lab::runner_ip(1), 24).unwrap(),
    )
    .await
    .unwrap();
    nl.add_addr(eth0.index, ipnet::Ipv4Net::new(new_ip, 24).unwrap())
        .await
        .unwrap();
    nl.replace_route_as(
        ipnet::Ipv4Net::default(),
        Some(lab::ROUTER_IP),
        Some(eth0.index),
        4,
    )
    .await
    .unwrap();
    wait_until("the host sees r1 at its new address", dur(30), || {
        runner_status(&lab, "r1")
            .is_some_and(|r| r["physical_ip"] == new_ip.to_string() && r["active"] == true)
    })
    .await;
    assert_eq!(runner_status(&lab, "r1").unwrap()["id"], 1);
    let after_host = host_tunnel(&links(&lab, "host").await);
    assert_eq!(
        after_host.index, before_host.index,
        "host tunnel changed in place"
    );
    assert_eq!(after_host.vxlan.unwrap().remote, Some(new_ip));
    let mut moved = false;
    for _ in 0..100 {
        let l = links(&lab, "r1")
            .await
            .into_iter()
            .find(|l| l.name == "vxlan0")
            .unwrap();
        if l.vxlan.as_ref().unwrap().local == Some(new_ip) {
            assert_eq!(
                l.index, before_runner.index,
                "runner tunnel changed in place"
            );
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(moved, "the runner's tunnel follows its new local address");
    assert!(
        lab.ping("r2-w1", workload_ip(&lab, 1, 1).await),
        "traffic flows over the moved tunnel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_config_contradicts_the_host_refuses_to_start() {
    let mut s = spec("contra");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.runner_keys = "[overlay]\nmtu = 1400\nvxlan_port = 4789\n".into();
    let mut lab = must(Lab::up(s).await);
    let err = lab
        .add_runner(1)
        .await
        .expect_err("the runner must refuse to start")
        .to_string();
    assert!(
        err.contains("overlay.mtu = 1400") && err.contains("contradicts the host, which uses 1450"),
        "{err}"
    );
    assert!(
        !err.contains("vxlan_port"),
        "a matching explicit value is fine: {err}"
    );
    assert!(err.contains("exit status: 2"), "{err}");
}
