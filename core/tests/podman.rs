//! Podman 4.3 (its CNI backend) attaching containers through `weir-cni`, each podman inside a
//! runner's namespace of the lab: two containers on two runners reach each other and the
//! host, `podman rm` frees their addresses, and a reservation token gets the reserved address.

mod common;
#[path = "common/podman.rs"]
mod podman;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use common::*;
use podman::{IMAGE, Podman};
use weir::lab::Lab;
use weir_proto::v1 as pb;

const HOST_OVERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);

/// A conflist directory naming runner `i`'s socket (network `weir`, cniVersion 1.0.0: the
/// newest podman 4.3's libcni reads).
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
    std::fs::write(dir.join("weir.conflist"), list.to_string()).unwrap();
    dir
}

fn plugin_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
    assert!(
        bin.with_file_name("weir-cni").is_file(),
        "weir-cni is missing beside weir: build the workspace"
    );
    bin.parent().unwrap().to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_on_two_runners_talk_through_weir() {
    let mut spec = spec("pod");
    spec.runners = 2;
    spec.workloads_per_runner = 0;
    let lab = must(Lab::up(spec).await);
    let plugins = plugin_dir();
    let dirs: [&Path; 1] = [&plugins];
    let p1 = Podman::in_lab(&lab, "r1", &dirs, &conflists(&lab, 1));
    let p2 = Podman::in_lab(&lab, "r2", &dirs, &conflists(&lab, 2));

    p1.run_ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "weir",
        IMAGE,
        "sleep",
        "1000",
    ]);
    p2.run_ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "weir",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let (ip_a, ip_b) = (p1.ip("a", "weir"), p2.ip("b", "weir"));
    let w = listed(&lab).await;
    for (ip, runner) in [(&ip_a, "r1"), (&ip_b, "r2")] {
        let rec = w
            .iter()
            .find(|w| w.ip.split('/').next() == Some(ip.as_str()))
            .unwrap_or_else(|| panic!("{ip} is not a Weir workload: {w:?}"));
        assert_eq!(rec.runner, runner);
        assert_eq!(rec.origin, "cni/weir");
    }
    for (p, c, to) in [
        (&p1, "a", ip_b.clone()),
        (&p2, "b", ip_a.clone()),
        (&p1, "a", HOST_OVERLAY_IP.to_string()),
    ] {
        p.run_ok(&["exec", c, "ping", "-c", "1", "-W", "2", &to]);
    }

    // podman rm frees the address (a DEL through weir-cni).
    p1.run_ok(&["rm", "-f", "-t", "0", "a"]);
    assert!(
        !listed(&lab)
            .await
            .iter()
            .any(|w| w.ip.starts_with(&format!("{ip_a}/"))),
        "{ip_a} is still held after podman rm"
    );

    // A reservation token (podman hands the plugin its own environment).
    let r = control(&lab)
        .await
        .reserve_address(pb::ReserveAddressRequest {
            runner: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let out = p1
        .command(&[
            "run",
            "-d",
            "--name",
            "c",
            "--network",
            "weir",
            IMAGE,
            "sleep",
            "1000",
        ])
        .env("WEIR_RESERVATION", &r.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman run with a reservation: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reserved = r.ip.split('/').next().unwrap_or(&r.ip).to_string();
    assert_eq!(p1.ip("c", "weir"), reserved);
    drop(p1);
    drop(p2);
    assert!(
        listed(&lab).await.is_empty(),
        "removing the containers freed every address"
    );
}
