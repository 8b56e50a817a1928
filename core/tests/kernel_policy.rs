//! Policy in the kernel, with real packets: tenant isolation enforced (and monitored) on every
//! path, direct runner-to-runner routes, via-host egress, and the closed VXLAN port.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};

use common::*;
use weir::lab::{self, Lab, WAN_IP};
use weir_proto::v1 as pb;

const HOST_OVERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);

/// Attach a workload with labels in a new namespace; returns its address.
async fn attach(lab: &Lab, runner: u32, id: &str, labels: &[(&str, &str)]) -> Ipv4Addr {
    let ns = new_netns(lab, id);
    let r = control(lab)
        .await
        .attach_workload(pb::AttachWorkloadRequest {
            runner: format!("r{runner}"),
            workload_id: id.into(),
            netns: ns,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("attach {id}: {e:?}"))
        .into_inner();
    r.ip.split('/').next().unwrap().parse().unwrap()
}

/// A TCP connection from `from` to `to:port` (a listener in `to_ns`): did it connect?
fn tcp_connects(lab: &Lab, from: &str, to_ns: &str, to: Ipv4Addr) -> bool {
    let listener = weir::dataplane::netns::run_in(&lab.ns(to_ns), move || {
        std::net::TcpListener::bind((to, 0))
    })
    .unwrap()
    .unwrap();
    let target = listener.local_addr().unwrap();
    weir::dataplane::netns::run_in(&lab.ns(from), move || {
        std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2)).is_ok()
    })
    .unwrap()
}

fn counter(lab: &Lab, member: &str, table: &str, name: &str) -> u64 {
    let out = lab
        .exec(member, "nft", &["list", "counter", "inet", table, name])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter {table}/{name} in {member}: {text}"))
}

async fn tenant_lab(tag: &str, mode: &str) -> Lab {
    let mut s = spec(tag);
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.host_extra = format!(
        "{}mode = \"{mode}\"\n[policy.plugins.config]\nuntenanted = \"allow\"\n",
        plugin_toml(
            "isolation",
            &plugin_path("tenant_isolation"),
            "firewall",
            "deny",
            ""
        )
    );
    must(Lab::up(s).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation_holds_on_every_path() {
    let lab = tenant_lab("iso", "enforce").await;
    let a1 = attach(&lab, 1, "a1", &[("tenant", "a")]).await;
    let b1 = attach(&lab, 1, "b1", &[("tenant", "b")]).await;
    let a2 = attach(&lab, 2, "a2", &[("tenant", "a")]).await;
    let b2 = attach(&lab, 2, "b2", &[("tenant", "b"), ("wan", "allow")]).await;
    // Same runner (bridged): same tenant connects, another tenant does not.
    let a1b = attach(&lab, 1, "a1b", &[("tenant", "a")]).await;
    assert!(lab.ping("a1", a1b), "a1 -> a1b, same runner, same tenant");
    assert!(!lab.ping("a1", b1), "a1 -> b1, same runner, other tenant");
    assert!(!lab.ping("b1", a1), "b1 -> a1, same runner, other tenant");
    // Across runners (through the host, bridged in from vxlan0 on arrival).
    assert!(
        lab.ping("a1", a2) && lab.ping("a2", a1),
        "a1 <-> a2 across runners"
    );
    assert!(
        lab.ping("b1", b2) && lab.ping("b2", b1),
        "b1 <-> b2 across runners"
    );
    assert!(
        !lab.ping("a1", b2) && !lab.ping("b2", a1),
        "a <-> b across runners"
    );
    assert!(tcp_connects(&lab, "a1", "a2", a2), "TCP, same tenant");
    assert!(!tcp_connects(&lab, "b1", "a2", a2), "TCP, other tenant");
    // Toward the host: every tenant reaches it.
    assert!(
        lab.ping("a1", HOST_OVERLAY_IP) && lab.ping("b2", HOST_OVERLAY_IP),
        "workloads reach the host"
    );
    // The wan: only workloads labelled for it.
    assert!(!lab.ping("a1", WAN_IP), "a1 has no wan label");
    assert!(
        tcp_connects(&lab, "b2", "wan", WAN_IP),
        "b2 may reach the wan"
    );
    assert!(
        counter(&lab, "r1", "weir_fw", "dropped") > 0,
        "drops are counted"
    );
    // A detached workload's address leaves every selector.
    control(&lab)
        .await
        .detach_workload(pb::DetachWorkloadRequest {
            workload_id: "a2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let set = lab
        .exec("r1", "nft", &["list", "table", "inet", "weir_fw"])
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&set.stdout).contains(&a2.to_string()),
        "a2 left the tenant set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_counts_would_be_drops_and_drops_nothing() {
    let lab = tenant_lab("mon", "monitor").await;
    let a1 = attach(&lab, 1, "a1", &[("tenant", "a")]).await;
    let b1 = attach(&lab, 1, "b1", &[("tenant", "b")]).await;
    let b2 = attach(&lab, 2, "b2", &[("tenant", "b")]).await;
    let before = counter(&lab, "r1", "weir_fw", "would_drop");
    assert!(
        lab.ping("a1", b1),
        "same runner, other tenant: monitored, not dropped"
    );
    assert!(
        lab.ping("a1", b2),
        "across runners, other tenant: monitored, not dropped"
    );
    assert!(lab.ping("b1", a1));
    assert!(
        counter(&lab, "r1", "weir_fw", "would_drop") > before,
        "would-be drops are counted"
    );
    assert_eq!(
        counter(&lab, "r1", "weir_fw", "dropped"),
        0,
        "nothing was dropped"
    );
    // The decision log says which plugin decided, in monitor mode.
    let log = std::fs::read_to_string(lab.dir.join("host-state/decisions.jsonl")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"mode\":\"monitor\"") && l.contains("\"call\":\"rules\"")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firewall_rule_count_does_not_grow_with_workloads() {
    let lab = tenant_lab("rules", "enforce").await;
    let rules = |lab: &Lab| {
        let out = lab
            .exec("r1", "nft", &["-a", "list", "table", "inet", "weir_fw"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.contains("# handle")
                    && !l.contains("chain ")
                    && !l.contains("set ")
                    && !l.contains("map ")
                    && !l.contains("counter ")
                    && !l.contains("table ")
            })
            .count()
    };
    attach(&lab, 1, "t0", &[("tenant", "a")]).await;
    attach(&lab, 1, "t1", &[("tenant", "b")]).await;
    let few = rules(&lab);
    for i in 2..30 {
        let t = if i % 2 == 0 { "a" } else { "b" };
        attach(&lab, 1, &format!("t{i}"), &[("tenant", t)]).await;
    }
    assert_eq!(rules(&lab), few, "30 workloads, same rules as 2");
    // Each workload is one element of its group's member set `m<N>`.
    let out = lab
        .exec("r1", "nft", &["-j", "list", "table", "inet", "weir_fw"])
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<usize> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("set"))
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with('m')))
        .map(|s| s["elem"].as_array().map_or(0, |e| e.len()))
        .collect();
    assert_eq!(members, vec![15, 15], "two groups of 15 workloads each");

    // Overlay traffic is connection-tracked exactly where a firewall table needs it.
    let untracked = |r: &str| {
        let out = lab
            .exec(r, "nft", &["list", "table", "inet", "weir_runner"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("ip saddr 10.128.0.0/12 ip daddr 10.128.0.0/12 notrack"))
    };
    assert!(
        !untracked("r1"),
        "r1 has a firewall: overlay traffic stays tracked"
    );
    assert!(
        untracked("r2"),
        "r2 has none: overlay traffic skips tracking"
    );
    let mut c = control(&lab).await;
    for i in 0..30 {
        c.detach_workload(pb::DetachWorkloadRequest {
            workload_id: format!("t{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let tables = lab.exec("r1", "nft", &["list", "tables"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("weir_fw"),
        "the last policy left with its workload"
    );
    assert!(untracked("r1"), "and tracking went with the table");
}

/// Restart runner 2 in rack `rack` (`direct-routes` pairs the runners of one rack).
async fn move_runner2(lab: &mut Lab, base: &str, rack: &str) {
    lab.runners
        .get_mut(&2)
        .unwrap()
        .stop(libc::SIGTERM)
        .unwrap();
    lab.spec.runner_keys = format!("{base}labels = {{ rack = \"{rack}\" }}\n");
    lab.start_runner(2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racked_runners_route_directly_and_flips_keep_pings() {
    let mut s = spec("dir");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.host_extra = plugin_toml(
        "direct",
        &plugin_path("direct_routes"),
        "router",
        "fallback",
        "",
    );
    let mut lab = must(Lab::up(s).await);
    let base = lab.spec.runner_keys.clone();
    lab.spec.runner_keys = format!("{base}labels = {{ rack = \"a\" }}\n");
    lab.add_runner(1).await.unwrap();
    lab.add_runner(2).await.unwrap();
    let w1 = lab.add_workload(1, 1).await.unwrap();
    let w2: Ipv4Addr = lab
        .add_workload(2, 1)
        .await
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let _ = w1;
    let ttl = |lab: &Lab| -> Option<u32> {
        let out = lab
            .exec("r1-w1", "ping", &["-c", "1", "-W", "2", &w2.to_string()])
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split("ttl=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    wait_until("the pair routes directly (one router hop)", dur(15), || {
        ttl(&lab) == Some(63)
    })
    .await;
    let tunnels = links(&lab, "r1").await;
    assert!(
        tunnels.iter().any(|l| l.name == "vxd2"),
        "r1 has a direct tunnel to runner 2"
    );
    // The host forwards none of it: its overlay forward counter stays still while the pair
    // talks (broadcasts flooded to the host are not forwarded, so they do not count).
    let host_rx = |lab: &Lab| {
        let out = lab
            .exec(
                "host",
                "nft",
                &["list", "chain", "inet", "weir_host", "forward"],
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .filter(|l| l.contains("10.128.0.0/12"))
            .map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .unwrap_or("?")
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let before = host_rx(&lab);
    for _ in 0..5 {
        assert!(lab.ping("r1-w1", w2));
    }
    assert_eq!(host_rx(&lab), before, "no packet crossed the host");

    // Flip to the hub (r2 leaves the rack) and back, under a 10/s ping.
    let ping = Pinger::start(&lab, "r1-w1", w2);
    tokio::time::sleep(dur(1)).await;
    move_runner2(&mut lab, &base, "b").await;
    wait_until(
        "the pair routes via the hub (two router hops)",
        dur(15),
        || ttl(&lab) == Some(62),
    )
    .await;
    tokio::time::sleep(dur(1)).await;
    move_runner2(&mut lab, &base, "a").await;
    wait_until("the pair routes directly again", dur(15), || {
        ttl(&lab) == Some(63)
    })
    .await;
    tokio::time::sleep(dur(1)).await;
    let (sent, received) = ping.stop();
    assert!(sent >= 30, "{sent}");
    assert!(
        sent - received <= 2,
        "lost {} of {sent} across two route flips",
        sent - received
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_host_egress_leaves_through_the_host() {
    let mut s = spec("vh");
    s.runners = 1;
    s.workloads_per_runner = 1;
    s.host_extra = format!(
        "{}[policy.plugins.config]\negress = \"via-host\"\n",
        plugin_toml(
            "direct",
            &plugin_path("direct_routes"),
            "router",
            "fallback",
            ""
        )
    );
    let lab = must(Lab::up(s).await);
    let probe = lab.wan_listener().unwrap();
    wait_until("the wan sees the host's address", dur(15), || {
        lab.wan_sees("r1-w1", &probe) == Some(lab::HOST_IP)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_from_an_unknown_underlay_address_is_dropped_and_counted() {
    let mut s = spec("udp");
    s.runners = 1;
    s.workloads_per_runner = 1;
    let lab = must(Lab::up(s).await);
    let send = |to: Ipv4Addr| {
        weir::dataplane::netns::run_in(&lab.ns("lan"), move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            // A well-formed VXLAN header for VNI 101.
            let mut pkt = vec![0x08, 0, 0, 0, 0, 0, 101, 0];
            pkt.extend_from_slice(&[0u8; 60]);
            for _ in 0..3 {
                sock.send_to(&pkt, (to, 4789)).unwrap();
            }
        })
        .unwrap()
    };
    let host_before = counter(&lab, "host", "weir_host", "vxlan_dropped");
    let runner_before = counter(&lab, "r1", "weir_runner", "vxlan_dropped");
    send(lab::HOST_IP);
    send(lab::runner_ip(1));
    wait_until("the host counts the drops", dur(5), || {
        counter(&lab, "host", "weir_host", "vxlan_dropped") >= host_before + 3
    })
    .await;
    wait_until("the runner counts the drops", dur(5), || {
        counter(&lab, "r1", "weir_runner", "vxlan_dropped") >= runner_before + 3
    })
    .await;
    // Known peers still get through.
    assert!(lab.ping("r1-w1", HOST_OVERLAY_IP));
}
