//! A Linux bridge takes at most 1023 ports, and adding one costs more the more it has; a runner
//! keeps bridges at `PORTS_PER_BRIDGE` ports and holds more workloads by spilling into overflow
//! bridges patched into the network's bridge — one layer-2 segment.

mod common;

use common::*;
use weir::lab::Lab;
use weir_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_holds_more_workloads_than_one_bridge_has_ports() {
    let mut s = spec("ovf");
    s.runners = 2;
    s.workloads_per_runner = 1;
    let lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    // VMs' taps are bridge ports too and need no namespace: fill the bridge with them.
    let vms = weir::dataplane::runner::PORTS_PER_BRIDGE + 10;
    for i in 0..vms {
        c.attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: format!("vm{i}"),
            kind: pb::WorkloadKind::Vm as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("attach vm{i}: {e}"));
    }
    // The next container lands in an overflow bridge and still reaches the whole overlay.
    let ns = new_netns(&lab, "late");
    let late = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "late".into(),
            netns: ns,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r1 = links(&lab, "r1").await;
    let overflow = r1
        .iter()
        .find(|l| l.name == "wbx1")
        .expect("an overflow bridge wbx1");
    assert_eq!(overflow.alias.as_deref(), Some("weir-ovf:default"));
    let main = r1.iter().find(|l| l.name == "kohaku-overlay").unwrap();
    let patch = r1.iter().find(|l| l.name == "wbx1p").unwrap();
    assert_eq!(
        patch.master,
        Some(main.index),
        "the patch hangs off the main bridge"
    );
    let ports = |idx: u32| r1.iter().filter(|l| l.master == Some(idx)).count();
    assert!(ports(main.index) <= weir::dataplane::runner::PORTS_PER_BRIDGE);
    assert!(ports(overflow.index) <= weir::dataplane::runner::PORTS_PER_BRIDGE);
    let late_port = r1
        .iter()
        .find(|l| l.alias.as_deref() == Some("weir:default/late"))
        .unwrap();
    assert_eq!(late_port.master, Some(overflow.index));
    // Real packets from the overflow bridge: the gateway on the main bridge, and a workload on
    // the other runner.
    let gateway: std::net::Ipv4Addr = late.gateway.parse().unwrap();
    assert!(lab.ping("late", gateway));
    let other = workload_ip(&lab, 2, 1).await;
    assert!(lab.ping("late", other));
    assert!(lab.ping("r2-w1", late.ip.split('/').next().unwrap().parse().unwrap()));

    // Detaching frees ports: the next workload goes back to the main bridge.
    for i in 0..20 {
        c.detach_workload(pb::DetachWorkloadRequest {
            workload_id: format!("vm{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let ns2 = new_netns(&lab, "again");
    c.attach_workload(pb::AttachWorkloadRequest {
        runner: "r1".into(),
        workload_id: "again".into(),
        netns: ns2,
        ..Default::default()
    })
    .await
    .unwrap();
    let r1 = links(&lab, "r1").await;
    let again = r1
        .iter()
        .find(|l| l.alias.as_deref() == Some("weir:default/again"))
        .unwrap();
    assert_eq!(again.master, Some(main.index));

    // Every workload of the overflow bridge detached: the bridge and its patch pair go, the
    // main bridge and its workloads stay.
    let on_overflow: Vec<String> = r1
        .iter()
        .filter(|l| l.master == Some(overflow.index))
        .filter_map(|l| l.alias.as_deref()?.strip_prefix("weir:default/"))
        .map(str::to_string)
        .collect();
    assert!(on_overflow.contains(&"late".to_string()), "{on_overflow:?}");
    let main_ports_before = r1.iter().filter(|l| l.master == Some(main.index)).count();
    for id in &on_overflow {
        c.detach_workload(pb::DetachWorkloadRequest {
            workload_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("detach {id}: {e}"));
    }
    let r1 = links(&lab, "r1").await;
    for gone in ["wbx1", "wbx1p", "wbx1q"] {
        assert!(
            !r1.iter().any(|l| l.name == gone),
            "{gone} is still there after its last workload left"
        );
    }
    let main_after = r1.iter().find(|l| l.name == "kohaku-overlay").unwrap();
    assert_eq!(main_after.index, main.index, "the main bridge stays");
    let main_ports = r1.iter().filter(|l| l.master == Some(main.index)).count();
    assert_eq!(
        main_ports,
        main_ports_before - 1,
        "only the patch left the main bridge"
    );
    assert!(
        r1.iter()
            .any(|l| l.alias.as_deref() == Some("weir:default/again")
                && l.master == Some(main.index))
    );
    assert!(lab.ping("again", gateway));

    // The next workload past the main bridge's share gets a new overflow bridge.
    for i in 0..20 {
        c.attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: format!("vm{i}"),
            kind: pb::WorkloadKind::Vm as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("attach vm{i} again: {e}"));
    }
    let r1 = links(&lab, "r1").await;
    let ovf = r1
        .iter()
        .find(|l| {
            l.alias.as_deref() == Some("weir-ovf:default") && l.kind.as_deref() == Some("bridge")
        })
        .expect("a new overflow bridge");
    assert!(r1.iter().any(|l| {
        l.master == Some(ovf.index)
            && l.alias
                .as_deref()
                .is_some_and(|a| a.starts_with("weir:default/vm"))
    }));
}
