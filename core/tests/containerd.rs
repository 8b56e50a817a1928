//! containerd 1.6's CRI plugin (what kubelet drives) attaching a pod through `weir-cni`, with
//! containerd inside runner r1's namespace of a lab (`core/tests/common/containerd.rs`):
//! RunPodSandbox gives the pod a Weir address (listed with origin `cni/weir` and the pod's
//! Kubernetes labels), the pod reaches a workload on r2 and is reached from it, and
//! StopPodSandbox + RemovePodSandbox detach it and free its address.

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use containerd::Containerd;
use k8s_cri::v1 as cri;
use weir::lab::Lab;
use weir_proto::v1 as pb;

const HOST_OVERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);

/// A conflist directory naming runner `i`'s socket (network `weir`, cniVersion 1.0.0: the
/// newest containerd 1.6's libcni reads).
fn conflists(lab: &Lab, i: u32) -> PathBuf {
    let dir = lab.dir.join(format!("cni-r{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weir",
        "plugins": [{
            "type": "weir-cni",
            "socket": lab.dir.join(format!("r{i}.sock")),
        }],
    });
    std::fs::write(dir.join("10-weir.conflist"), list.to_string()).unwrap();
    dir
}

fn weir_cni() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_weir")).with_file_name("weir-cni");
    assert!(
        p.is_file(),
        "weir-cni is missing beside weir: build the workspace (cargo build --workspace --bins)"
    );
    p
}

/// One ping from inside the namespace at `netns` (a path) to `to`: did it get an answer?
fn ping_from(netns: &Path, to: Ipv4Addr) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ping", "-c", "1", "-W", "1", "-q", &to.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The pod's network namespace path from the verbose `PodSandboxStatus` (containerd's
/// `info` JSON: `runtimeSpec.linux.namespaces[type=network].path`).
fn netns_of(status: &cri::PodSandboxStatusResponse) -> PathBuf {
    let info = status
        .info
        .get("info")
        .expect("a verbose PodSandboxStatus has info");
    let v: serde_json::Value = serde_json::from_str(info).unwrap();
    let path = v["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .unwrap_or_else(|| panic!("no network namespace path in the sandbox info: {info}"));
    PathBuf::from(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_gets_a_weir_address_reaches_the_other_runner_and_is_freed() {
    // The lab is declared first so it is dropped last: containerd's drop removes leftover
    // pods through the CRI while the runner still answers the plugin.
    let mut lab: Lab;
    let mut crd = Containerd::prepare();
    let mut s = spec("crd");
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.runner_keys.push_str(&format!(
        "netns_allow = [\"/run/netns/\", \"{}/\"]\n",
        crd.netns_dir().display()
    ));
    lab = must(Lab::up(s).await);
    lab.add_workload(2, 1).await.unwrap();
    let target = workload_ip(&lab, 2, 1).await;

    crd.start(&lab.ns("r1"), &[&weir_cni()], &conflists(&lab, 1));
    let mut rt = crd.runtime().await;

    // RunPodSandbox: containerd makes the namespace and runs the CNI ADD.
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(crd.pod_config("pod-a")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", crd.log()))
        .into_inner()
        .pod_sandbox_id;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let st = status
        .status
        .as_ref()
        .expect("PodSandboxStatus has a status");
    assert_eq!(
        st.state,
        cri::PodSandboxState::SandboxReady as i32,
        "the pod is ready: {st:?}"
    );
    let pod_ip: Ipv4Addr = st
        .network
        .as_ref()
        .map(|n| n.ip.as_str())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|_| panic!("PodSandboxStatus has no IPv4 address: {st:?}"));
    let netns = netns_of(&status);
    assert!(
        netns.starts_with(crd.netns_dir()) && netns.exists(),
        "the pod's namespace {} is containerd's, under {}",
        netns.display(),
        crd.netns_dir().display()
    );

    // The host lists it as r1's CNI workload with the pod's address and Kubernetes labels.
    let listed_now = listed(&lab).await;
    let w = listed_now
        .iter()
        .find(|w| w.ip.split('/').next() == Some(pod_ip.to_string().as_str()))
        .unwrap_or_else(|| panic!("the pod's {pod_ip} is not a Weir workload: {listed_now:?}"));
    assert_eq!(w.runner, "r1", "the pod is r1's workload: {w:?}");
    assert_eq!(w.origin, "cni/weir", "attached through CNI: {w:?}");
    assert_eq!(
        w.workload_id, id,
        "the workload id is the sandbox id: {w:?}"
    );
    assert_eq!(
        w.netns,
        netns.display().to_string(),
        "the workload's namespace is the pod's"
    );
    for (k, v) in [
        ("io.kubernetes.pod.name", "pod-a"),
        ("io.kubernetes.pod.namespace", "default"),
    ] {
        assert_eq!(
            w.labels.get(k).map(String::as_str),
            Some(v),
            "containerd's K8S_POD_* arguments become labels: {w:?}"
        );
    }
    let inside = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&inside.stdout).contains(&format!(" {pod_ip}/")),
        "eth0 inside the pod has {pod_ip}: {}",
        String::from_utf8_lossy(&inside.stdout)
    );

    // Real packets: pod -> r2's workload, r2's workload -> pod, pod -> the host.
    wait_until(
        "the pod reaches r2's workload",
        Duration::from_secs(10),
        || ping_from(&netns, target),
    )
    .await;
    assert!(
        lab.ping("r2-w1", pod_ip),
        "r2's workload reaches the pod at {pod_ip}"
    );
    assert!(
        ping_from(&netns, HOST_OVERLAY_IP),
        "the pod reaches the host's overlay address"
    );

    // StopPodSandbox: the CNI DEL detaches it (and containerd removes the namespace).
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", crd.log()));
    let after_stop = listed(&lab).await;
    assert!(
        !after_stop.iter().any(|w| w.workload_id == id),
        "StopPodSandbox detached the pod: {after_stop:?}"
    );
    assert!(
        !netns.exists(),
        "StopPodSandbox removed the pod's namespace {}",
        netns.display()
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", crd.log()));
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        pods.is_empty(),
        "RemovePodSandbox removed the pod: {pods:?}"
    );

    // The address is free: a reservation of exactly it succeeds.
    let r = control(&lab)
        .await
        .reserve_address(pb::ReserveAddressRequest {
            runner: "r1".into(),
            ip: pod_ip.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{pod_ip} is still held after RemovePodSandbox: {e}"))
        .into_inner();
    assert_eq!(
        r.ip.split('/').next(),
        Some(pod_ip.to_string().as_str()),
        "the reservation got the pod's former address"
    );
    let remaining = listed(&lab).await;
    assert!(
        remaining.iter().all(|w| w.runner == "r2"),
        "only r2's scheduler workload is left: {remaining:?}"
    );
}
