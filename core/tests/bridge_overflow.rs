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
}
