//! FDB entries and policy rules through netlink, checked with iproute2, inside a namespace.

mod common;

use std::net::Ipv4Addr;

use common::ScratchNs;
use weir::dataplane::netlink::{Netlink, RoutingRule, VxlanSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fdb_entries_and_rules_come_and_go() {
    let ns = ScratchNs::new("fdb");
    let sh = |args: &[&str]| ns.run(args[0], &args[1..]);
    let nl = Netlink::in_namespace(&ns.path).unwrap();
    let vx = nl
        .add_vxlan(&VxlanSpec {
            name: "vxt".into(),
            vni: 7,
            remote: Ipv4Addr::new(192, 0, 2, 1),
            local: Ipv4Addr::new(192, 0, 2, 2),
            port: 4789,
            mtu: 1450,
        })
        .await
        .unwrap();
    let mac = [0x02, 0x77, 0, 1, 0, 2];
    nl.fdb_replace(vx.index, mac, Ipv4Addr::new(192, 0, 2, 11))
        .await
        .unwrap();
    assert!(
        sh(&["bridge", "fdb", "show", "dev", "vxt"]).contains("02:77:00:01:00:02 dst 192.0.2.11")
    );
    let entries = nl.fdb_entries(vx.index).await.unwrap();
    assert!(
        entries.contains(&(mac, Ipv4Addr::new(192, 0, 2, 11))),
        "{entries:?}"
    );
    nl.fdb_del(vx.index, mac, Ipv4Addr::new(192, 0, 2, 11))
        .await
        .unwrap();
    assert!(!sh(&["bridge", "fdb", "show", "dev", "vxt"]).contains("02:77:00:01:00:02"));

    let rule = RoutingRule {
        source: Some("10.9.0.0/24".parse().unwrap()),
        table: 87,
        priority: 87,
    };
    nl.add_rule(&rule).await.unwrap();
    nl.add_rule(&rule).await.unwrap();
    assert!(
        sh(&["ip", "rule"]).contains("from 10.9.0.0/24 lookup 87"),
        "{}",
        sh(&["ip", "rule"])
    );
    assert_eq!(nl.rules_for_table(87).await.unwrap(), vec![rule.clone()]);
    nl.del_rule(&rule).await.unwrap();
    assert!(!sh(&["ip", "rule"]).contains("lookup 87"));
}
