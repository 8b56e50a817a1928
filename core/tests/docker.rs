//! Docker 20.10 attaching containers through Weir's network driver (served by each runner),
//! each dockerd inside a runner's namespace of the lab: `docker network create -d weir`, two
//! containers on two runners talk over TCP (one network with Weir's IPAM driver, one with
//! Docker's `null` IPAM), `docker rm` frees the address, and the driver
//! restarted between two `docker run`s keeps working (Docker never sends it the network again),
//! and so does a restarted dockerd (with `--live-restore` its running containers keep their
//! network).

mod common;
#[path = "common/docker.rs"]
mod docker;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use docker::{Dockerd, IMAGE};
use weir::lab::Lab;

/// The lab's overlay (the default plan's).
const OVERLAY: &str = "10.128.0.0/12";

fn dockerd(lab: &Lab, i: u32, bridge: bool) -> Dockerd {
    Dockerd::start(
        &lab.dir.join(format!("docker-r{i}")),
        &lab.ns(&format!("r{i}")),
        &lab.docker_plugins(i),
        bridge,
    )
}

/// Whether runner `i` can attach now (its session is up): `weir-cni`'s STATUS on its socket.
fn runner_ready(lab: &Lab, i: u32) -> bool {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_weir")).with_file_name("weir-cni");
    let conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "probe",
        "type": "weir-cni",
        "socket": lab.dir.join(format!("r{i}.sock")),
    });
    let mut c = Command::new(bin);
    c.env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", "/nonexistent")
        .stderr(Stdio::null());
    run_with_json(&mut c, &conf).0 == Some(0)
}

/// `docker network create -d weir --ipam-driver IPAM [--subnet OVERLAY] weir` (Weir's IPAM
/// needs a subnet: see docs/engines/docker.md).
fn create_network(d: &Dockerd, ipam: &str) {
    let mut args = vec!["network", "create", "-d", "weir", "--ipam-driver", ipam];
    if ipam == "weir" {
        args.extend(["--subnet", OVERLAY]);
    }
    args.push("weir");
    d.ok(&args);
}

/// The `eth0` address line of a fresh `docker run --rm --network weir EXTRA… IMAGE`.
fn eth0_of_new_container(d: &Dockerd, extra: &[&str]) -> String {
    let mut args = vec!["run", "--rm", "--network", "weir"];
    args.extend_from_slice(extra);
    args.extend([IMAGE, "sh", "-c", "ip -4 -o addr show eth0"]);
    d.ok(&args)
}

/// The Docker network's id as Weir shows it in a workload's origin.
fn origin(d: &Dockerd, network: &str) -> String {
    let id = d.ok(&["network", "inspect", "-f", "{{.Id}}", network]);
    format!("docker/{}", &id[..12])
}

/// Wait until the hub lists `n` workloads (a removal is acknowledged once durable).
async fn workloads_become(lab: &Lab, n: usize, what: &str) {
    for _ in 0..200 {
        if listed(lab).await.len() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what}: still {:?}", listed(lab).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_on_two_runners_talk_over_tcp_through_weir() {
    let mut spec = spec("dkr");
    spec.runners = 2;
    spec.workloads_per_runner = 0;
    spec.docker = true;
    let mut lab = must(Lab::up(spec).await);
    let d1 = dockerd(&lab, 1, false);
    let d2 = dockerd(&lab, 2, false);
    // Weir's IPAM driver on r1 (addresses reserved at the hub, then attached), none on r2
    // (the address comes with the endpoint's attach).
    create_network(&d1, "weir");
    create_network(&d2, "null");

    // b on r2 answers one TCP connection.
    d2.ok(&[
        "run",
        "-d",
        "--name",
        "bee",
        "--network",
        "weir",
        IMAGE,
        "sh",
        "-c",
        "while true; do echo pong-from-b | nc -l -p 5000; done",
    ]);
    let ip_b: Ipv4Addr = d2.ip("bee", "weir").parse().expect("b has an IPv4 address");
    let w = listed(&lab).await;
    let rec = w
        .iter()
        .find(|w| w.ip.split('/').next() == Some(&ip_b.to_string()))
        .unwrap_or_else(|| panic!("Weir has no workload with b's address {ip_b}: {w:?}"));
    assert_eq!(rec.runner, "r2");
    assert_eq!(rec.origin, origin(&d2, "weir"));
    assert!(
        ip_b.octets()[0] == 10,
        "b's address {ip_b} is not on Weir's overlay"
    );
    wait_until("b listens on port 5000", dur(20), || {
        d2.docker(&["exec", "bee", "netstat", "-tln"])
            .stdout
            .windows(5)
            .any(|s| s == b":5000")
    })
    .await;

    // a on r1 connects to b over the overlay.
    let got = d1.ok(&[
        "run",
        "--rm",
        "--network",
        "weir",
        IMAGE,
        "sh",
        "-c",
        &format!("nc -w 5 {ip_b} 5000 </dev/null"),
    ]);
    assert_eq!(got, "pong-from-b", "a did not get b's answer over TCP");
    // a was removed (--rm): its workload is gone.
    workloads_become(&lab, 1, "a's workload is gone after --rm").await;

    // docker rm frees b's address.
    d2.ok(&["rm", "-f", "bee"]);
    assert!(
        listed(&lab).await.is_empty(),
        "workloads left after docker rm"
    );
    d2.ok(&[
        "run",
        "-d",
        "--name",
        "cee",
        "--network",
        "weir",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_eq!(
        d2.ip("cee", "weir"),
        ip_b.to_string(),
        "the next container does not get the freed address"
    );

    // The driver (the runner) restarted between two docker runs: it still knows the network.
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGTERM)
        .unwrap();
    lab.start_runner(1).await.unwrap();
    wait_until("r1's session is back", dur(30), || runner_ready(&lab, 1)).await;
    let got = eth0_of_new_container(&d1, &[]);
    assert!(
        got.contains(" 10."),
        "after the driver's restart the container has no Weir address: {got}"
    );
    // A chosen address through Weir's IPAM (a reservation of exactly it).
    let got = eth0_of_new_container(&d1, &["--ip", "10.128.64.77"]);
    assert!(
        got.contains(" 10.128.64.77/18 "),
        "docker run --ip did not get the address asked for: {got}"
    );
    // dockerd restarted (`--live-restore`): the running container keeps its address and its
    // way through the overlay, and new containers attach as before.
    let mut d2 = d2;
    d2.restart();
    assert_eq!(d2.ip("cee", "weir"), ip_b.to_string());
    assert!(
        listed(&lab)
            .await
            .iter()
            .any(|w| w.ip.starts_with(&format!("{ip_b}/"))),
        "the running container's workload did not outlive dockerd's restart"
    );
    let ping = d2.docker(&["exec", "cee", "ping", "-c", "1", "-W", "2", "10.128.0.1"]);
    assert!(
        ping.status.success(),
        "after dockerd's restart the running container cannot reach the host: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    d2.ok(&[
        "run",
        "-d",
        "--name",
        "dee",
        "--network",
        "weir",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_ne!(d2.ip("dee", "weir"), ip_b.to_string());
    d2.ok(&["rm", "-f", "cee", "dee"]);
    workloads_become(&lab, 0, "docker rm after the restart frees both").await;
    drop(d1);
    drop(d2);
    workloads_become(&lab, 0, "every docker workload is gone").await;
    let held = control(&lab)
        .await
        .list_reservations(weir_proto::v1::ListReservationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .reservations;
    assert!(held.is_empty(), "reservations left behind: {held:?}");
    doctor_clean(&lab).await;
}

/// The driver (its runner) killed between an endpoint's attach and remembering it: `docker run`
/// fails (Docker takes the endpoint as never made and never deletes it), and the restarted
/// driver detaches the endpoint it had written down as pending: nothing is left at the hub or
/// on the bridge (`weir doctor` clean), and the next container attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_mid_create_endpoint_leaves_nothing() {
    let mut spec = spec("dkk");
    spec.runners = 1;
    spec.workloads_per_runner = 0;
    spec.docker = true;
    let mut lab = must(Lab::up(spec).await);
    let d1 = dockerd(&lab, 1, false);
    create_network(&d1, "weir");
    lab.daemon_env.insert(
        "r1".into(),
        vec![(
            "WEIR_FAILPOINTS".into(),
            "docker.endpoint.after-attach".into(),
        )],
    );
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGTERM)
        .unwrap();
    lab.start_runner(1).await.unwrap();
    wait_until("r1's session is up", dur(30), || runner_ready(&lab, 1)).await;
    lab.daemon_env.remove("r1");
    // docker run in the background: it blocks until Docker gives up on the dead driver or the
    // driver comes back.
    let run = {
        let mut c = d1.command(&["run", "--rm", "--network", "weir", IMAGE, "true"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let mut dead = false;
    for _ in 0..300 {
        if !lab.runners.get_mut(&1).unwrap().running() {
            dead = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(dead, "the runner did not reach the failpoint");
    lab.start_runner(1).await.unwrap();
    wait_until("r1's session is back", dur(30), || runner_ready(&lab, 1)).await;
    let out = tokio::task::spawn_blocking(move || run.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "docker run succeeded through a driver that died mid-call"
    );
    workloads_become(&lab, 0, "the half-made endpoint is detached").await;
    assert!(
        !links(&lab, "r1")
            .await
            .iter()
            .any(|l| l.name.starts_with("wk") || l.name.starts_with("wh")),
        "a veth of the half-made endpoint is left on r1"
    );
    // And the next container attaches.
    let got = eth0_of_new_container(&d1, &[]);
    assert!(got.contains(" 10.128."), "{got}");
    workloads_become(&lab, 0, "the last container's workload is gone").await;
    doctor_clean(&lab).await;
}
