//! The troubleshooting cases of docs/operations.md that no other test covers, with real
//! daemons: an underlay hop with a smaller MTU than the overlay needs, and VXLAN's UDP port
//! blocked on the underlay. In both, Weir's control plane is healthy (runners active,
//! `weir doctor` clean) while cross-runner traffic is not — what the guide tells operators to
//! look for.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use weir::lab::Lab;

/// One ping of `size` payload bytes with DF set (no fragmentation anywhere).
fn ping_df(lab: &Lab, from: &str, to: Ipv4Addr, size: u32) -> bool {
    lab.exec(
        from,
        "ping",
        &[
            "-c",
            "1",
            "-W",
            "2",
            "-q",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &to.to_string(),
        ],
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

fn sh(lab: &Lab, member: &str, program: &str, args: &[&str]) {
    let o = lab.exec(member, program, args).unwrap();
    assert!(
        o.status.success(),
        "{program} {args:?} in {member}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// What the control plane says while the data plane is broken: both runners active (beyond a
/// heartbeat timeout) and `weir doctor` clean.
async fn control_plane_healthy(lab: &Lab) {
    // The lab's heartbeat timeout is 3 s: a runner whose session suffered would show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(is_active(lab, "r1") && is_active(lab, "r2"));
    doctor_clean(lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtu_black_hole_and_blocked_vxlan_port_leave_the_control_plane_green() {
    let mut s = spec("ops");
    s.workloads_per_runner = 1;
    let lab = must(Lab::up(s).await);
    let far = workload_ip(&lab, 2, 1).await;
    // The overlay MTU is 1450: 1422 bytes of ICMP payload + 28 of headers fill it exactly.
    assert!(ping_df(&lab, "r1-w1", far, 1422), "full-size packets cross");

    // MTU: the underlay switch's port to r2 takes at most 1400-byte frames, less than the
    // 1500 a 1450-byte overlay packet needs once encapsulated. Small packets still cross; full
    // ones vanish without an error (the bridge drops oversized frames silently).
    sh(&lab, "lan", "ip", &["link", "set", "p-r2", "mtu", "1400"]);
    assert!(ping_df(&lab, "r1-w1", far, 56), "small packets still cross");
    assert!(
        !ping_df(&lab, "r1-w1", far, 1422),
        "full-size packets must be lost on the 1400-byte hop"
    );
    // 1400 − 50 (VXLAN) = 1350: what overlay.mtu would have to be; 1322 + 28 fits.
    assert!(ping_df(&lab, "r1-w1", far, 1322));
    control_plane_healthy(&lab).await;
    sh(&lab, "lan", "ip", &["link", "set", "p-r2", "mtu", "1500"]);
    assert!(ping_df(&lab, "r1-w1", far, 1422));

    // UDP 4789 blocked on the underlay (a firewall between runners and host): gRPC on 7700
    // still works, so sessions and heartbeats are fine, but no workload reaches another
    // runner's.
    let rules = lab.dir.join("block-vxlan.nft");
    std::fs::write(
        &rules,
        "table bridge weir_test_vxlan {\n  chain forward {\n    type filter hook forward priority 0;\n    udp dport 4789 counter drop\n  }\n}\n",
    )
    .unwrap();
    sh(&lab, "lan", "nft", &["-f", &rules.display().to_string()]);
    assert!(
        !lab.ping("r1-w1", far),
        "VXLAN is blocked: no cross-runner traffic"
    );
    control_plane_healthy(&lab).await;
    let counted = lab
        .exec(
            "lan",
            "nft",
            &["list", "chain", "bridge", "weir_test_vxlan", "forward"],
        )
        .unwrap();
    let listing = String::from_utf8_lossy(&counted.stdout);
    assert!(
        !listing.contains("counter packets 0 "),
        "the block saw no VXLAN packets: {listing}"
    );
    sh(
        &lab,
        "lan",
        "nft",
        &["delete", "table", "bridge", "weir_test_vxlan"],
    );
    assert!(lab.ping("r1-w1", far), "traffic resumes once 4789 is open");
}
