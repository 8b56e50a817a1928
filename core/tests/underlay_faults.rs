//! Underlay faults with the real daemons: 30% packet loss between the host and its runners,
//! then the host unreachable for a minute. Traffic that never needs the hub — between two
//! workloads of one runner, and out through the runner's NAT — must not notice; sessions come
//! back by themselves; no tunnel is re-created; `weir doctor` finds nothing afterwards.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use weir::lab::{Lab, WAN_IP};
use weir_proto::v1 as pb;

/// Tunnel ifindexes: the host's `vxkr*` and each runner's `vxlan0`.
async fn tunnels(lab: &Lab) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for l in links(lab, "host").await {
        if l.name.starts_with("vxkr") {
            out.insert(format!("host/{}", l.name), l.index);
        }
    }
    for r in ["r1", "r2"] {
        for l in links(lab, r).await {
            if l.name == "vxlan0" {
                out.insert(format!("{r}/vxlan0"), l.index);
            }
        }
    }
    out
}

/// Run an nftables script inside a lab member's namespace.
fn nft(lab: &Lab, member: &str, script: &str) {
    let path = lab.dir.join(format!("fault-{member}.nft"));
    std::fs::write(&path, script).unwrap();
    let out = lab
        .exec(member, "nft", &["-f", &path.display().to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "nft in {member}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_a_lost_host_leave_local_traffic_alone_and_heal_by_themselves() {
    let lab = must(Lab::up(spec("under")).await);
    let before = tunnels(&lab).await;
    assert_eq!(before.len(), 4, "{before:?}");
    let w2 = workload_ip(&lab, 1, 2).await;
    let same_runner = Pinger::start(&lab, "r1-w1", w2);
    let egress = Pinger::start(&lab, "r2-w1", WAN_IP);

    // 30% loss on every frame to and from the host's port on the underlay switch.
    nft(
        &lab,
        "lan",
        "table bridge weir_test_loss {\n  chain forward {\n    type filter hook forward priority 0;\n    iifname \"p-host\" numgen random mod 100 < 30 counter drop\n    oifname \"p-host\" numgen random mod 100 < 30 counter drop\n  }\n}\n",
    );
    // Work through the lossy underlay: an attach and a detach still complete (gRPC retransmits).
    let extra = new_netns(&lab, "lossy");
    let mut c = control(&lab).await;
    c.attach_workload(pb::AttachWorkloadRequest {
        runner: "r1".into(),
        workload_id: "lossy".into(),
        netns: extra.clone(),
        ..Default::default()
    })
    .await
    .expect("attach over a lossy underlay");
    c.detach_workload(pb::DetachWorkloadRequest {
        workload_id: "lossy".into(),
        ..Default::default()
    })
    .await
    .expect("detach over a lossy underlay");

    // Then the host is cut off for 60 s.
    let cut = lab
        .exec("lan", "ip", &["link", "set", "p-host", "down"])
        .unwrap();
    assert!(cut.status.success());
    let cut_at = Instant::now();
    wait_until("the host sees r1 inactive", dur(20), || {
        is_inactive(&lab, "r1")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed())).await;
    let up = lab
        .exec("lan", "ip", &["link", "set", "p-host", "up"])
        .unwrap();
    assert!(up.status.success());
    nft(&lab, "lan", "delete table bridge weir_test_loss\n");

    // Sessions come back without anyone's help.
    wait_until("both runners are active again", dur(45), || {
        is_active(&lab, "r1") && is_active(&lab, "r2")
    })
    .await;
    let (sent, got) = same_runner.stop();
    assert!(sent > 500, "the same-runner ping ran {sent} times");
    assert_eq!(sent, got, "same-runner traffic lost packets");
    let (sent, got) = egress.stop();
    assert!(sent > 500, "the egress ping ran {sent} times");
    assert_eq!(sent, got, "runner-NAT egress lost packets");
    assert_eq!(tunnels(&lab).await, before, "a tunnel was re-created");
    // Cross-runner traffic through the hub works again.
    let far = workload_ip(&lab, 2, 1).await;
    assert!(lab.ping("r1-w1", far));
    let f = control(&lab)
        .await
        .diagnose(pb::DiagnoseRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(f.findings.is_empty(), "{:#?}", f.findings);
    assert_eq!(f.checked, ["r1", "r2"]);
}
