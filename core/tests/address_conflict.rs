//! Addresses in use on a runner's bridge by something Weir did not attach: never handed to a
//! new workload, and such a container adopted in place (`weir migrate kohakuriver`).

mod common;

use std::net::Ipv4Addr;

use common::*;
use weir::lab::Lab;
use weir_proto::v1 as pb;

/// A namespace `member` of the lab with a veth `port` on runner 1's bridge, its end `eth0`
/// holding `addr` (with MAC `mac`) and a default route through the gateway — set up by hand,
/// the way another system (KohakuRiver's Docker) would, not through Weir.
fn by_hand(lab: &Lab, member: &str, port: &str, addr: &str, mac: &str) {
    new_netns(lab, member);
    let ns = lab.ns_name(member);
    let r1 = lab.ns_name("r1");
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "-n", &r1, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]);
    ip(&[
        "-n",
        &r1,
        "link",
        "set",
        port,
        "master",
        "kohaku-overlay",
        "up",
    ]);
    ip(&[
        "-n", &ns, "link", "set", "eth0", "address", mac, "mtu", "1450", "up",
    ]);
    ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
    ip(&["-n", &ns, "route", "add", "default", "via", "10.128.64.1"]);
}

async fn ifindex(lab: &Lab, member: &str, name: &str) -> Option<u32> {
    links(lab, member)
        .await
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_set_by_hand_on_the_bridge_is_never_handed_out() {
    let mut s = spec("cf");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    // .2 is the first address the host would give; something else holds it, and has talked
    // (it pinged the gateway, so the runner's neighbour table knows its MAC).
    by_hand(&lab, "squat", "sq0", "10.128.64.2/18", "02:42:0a:80:40:02");
    assert!(lab.ping("squat", Ipv4Addr::new(10, 128, 64, 1)));

    let mut c = control(&lab).await;
    let w1 = new_netns(&lab, "w1");
    let got = c
        .attach_workload(attach_req("r1", "w1", &w1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ip, "10.128.64.3/18", "the address in use was skipped");
    let conflicts = events_of(&lab, pb::EventKind::AddressConflict).await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].ip, "10.128.64.2");
    assert!(
        conflicts[0].detail.contains("02:42:0a:80:40:02"),
        "{:?}",
        conflicts[0].detail
    );

    // Asked for explicitly, it is refused, naming the field and who holds it.
    let w2 = new_netns(&lab, "w2");
    let mut req = attach_req("r1", "w2", &w2);
    req.requested_ip = "10.128.64.2".into();
    let msg = refused(c.attach_workload(req).await, tonic::Code::AlreadyExists);
    assert!(
        msg.starts_with("requested_ip: ") && msg.contains("in use on kohaku-overlay"),
        "{msg}"
    );
    // The next automatic one goes on after it; nothing else was disturbed.
    let got = c
        .attach_workload(attach_req("r1", "w2", &w2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ip, "10.128.64.4/18");
    if !lab.ping("squat", Ipv4Addr::new(10, 128, 64, 1)) {
        let show = |m: &str, args: &[&str]| {
            let o = lab.exec(m, "ip", args).unwrap();
            format!("{m} ip {args:?}:\n{}", String::from_utf8_lossy(&o.stdout))
        };
        panic!(
            "the squatter lost the gateway:\n{}\n{}\n{}\n{}\n{}",
            show("squat", &["-d", "link"]),
            show("squat", &["neigh"]),
            show("r1", &["neigh"]),
            show("r1", &["-d", "link", "show", "master", "kohaku-overlay"]),
            ruleset(&lab, "r1")
        );
    }
    assert!(lab.ping("w1", Ipv4Addr::new(10, 128, 64, 1)));
    doctor_clean(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_weir_did_not_attach_is_adopted_in_place() {
    let mut s = spec("ad");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    by_hand(
        &lab,
        "kr",
        "veth1a2b3c4",
        "10.128.64.9/18",
        "02:42:0a:80:40:09",
    );
    let port = ifindex(&lab, "r1", "veth1a2b3c4")
        .await
        .expect("the port exists");
    let inner = ifindex(&lab, "kr", "eth0").await.expect("eth0 exists");
    let socket = lab.dir.join("r1.sock").display().to_string();
    let migrate = |dry: bool| {
        let mut args = vec!["migrate", "kohakuriver", "--socket", &socket, "--json"];
        if dry {
            args.push("--dry-run");
        }
        let out = lab.weir(&args).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = migrate(true);
    assert_eq!(dry["adopted"][0]["ip"], "10.128.64.9", "{dry}");
    assert!(listed(&lab).await.is_empty(), "a dry run adopts nothing");

    let v = migrate(false);
    let adopted = &v["adopted"][0];
    assert_eq!(adopted["workload_id"], "kohakuriver-10-128-64-9", "{v}");
    assert_eq!(adopted["ifname"], "eth0");
    assert_eq!(adopted["port"], "veth1a2b3c4");
    // The same links: the port renamed to Weir's name in place, the container untouched.
    let name = weir::dataplane::attach::host_ifname("default", "kohakuriver-10-128-64-9");
    assert_eq!(ifindex(&lab, "r1", &name).await, Some(port));
    assert_eq!(ifindex(&lab, "kr", "eth0").await, Some(inner));
    assert!(lab.ping("kr", Ipv4Addr::new(10, 128, 64, 1)));
    let w = listed(&lab).await;
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].ip, "10.128.64.9/18");
    assert_eq!(w[0].origin, "kohakuriver/default");
    assert_eq!(w[0].mac, "02:42:0a:80:40:09");
    doctor_clean(&lab).await;
    // Idempotent: nothing new the second time.
    let again = migrate(false);
    assert_eq!(again["adopted"].as_array().unwrap().len(), 0, "{again}");

    // Its address is never handed out; a detach removes its interface and frees it.
    let mut c = control(&lab).await;
    let w1 = new_netns(&lab, "w1");
    let mut req = attach_req("r1", "w1", &w1);
    req.requested_ip = "10.128.64.9".into();
    refused(c.attach_workload(req).await, tonic::Code::AlreadyExists);
    c.detach_workload(pb::DetachWorkloadRequest {
        workload_id: "kohakuriver-10-128-64-9".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    no_interface_left(&lab, "kr").await;
    let mut req = attach_req("r1", "w1", &w1);
    req.requested_ip = "10.128.64.9".into();
    c.attach_workload(req).await.unwrap();
    doctor_clean(&lab).await;
}

/// An adoption whose answer came too late (the host undid it) leaves the container its
/// interface: the runner gives the port back as it found it, instead of deleting it, and the
/// next migration adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adoption_the_host_gave_up_on_gives_the_port_back() {
    let mut s = spec("adu");
    s.runners = 1;
    s.workloads_per_runner = 0;
    s.host_keys.push_str("command_timeout = \"2s\"\n");
    let mut lab = Lab::underlay(s).await.unwrap();
    lab.start_host().await.unwrap();
    // The runner adopts, then stalls 5 s before answering: the host gives up after 2 s.
    lab.daemon_env.insert(
        "r1".into(),
        vec![(
            "WEIR_FAILPOINTS".into(),
            "agent.attach.before-answer=delay:5000".into(),
        )],
    );
    lab.add_runner(1).await.unwrap();
    by_hand(
        &lab,
        "kr",
        "veth5e6f7a8",
        "10.128.64.9/18",
        "02:42:0a:80:40:09",
    );
    let inner = ifindex(&lab, "kr", "eth0").await.expect("eth0 exists");
    let socket = lab.dir.join("r1.sock").display().to_string();
    let out = lab
        .weir(&["migrate", "kohakuriver", "--socket", &socket, "--json"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the host gave up: not adopted");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");

    // Once the runner gets to the undo: no port of Weir's, the container's own again.
    let mut given_back = false;
    for _ in 0..200 {
        let r1 = links(&lab, "r1").await;
        let ours = r1
            .iter()
            .any(|l| l.alias.as_deref().is_some_and(|a| a.starts_with("weir:")));
        let port = r1
            .iter()
            .any(|l| l.name.starts_with("veth") && l.peer_index == Some(inner));
        if !ours && port {
            given_back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        given_back,
        "the port was not given back: {:?}",
        links(&lab, "r1").await
    );
    assert_eq!(ifindex(&lab, "kr", "eth0").await, Some(inner), "eth0 kept");
    assert!(lab.ping("kr", Ipv4Addr::new(10, 128, 64, 1)));
    assert!(listed(&lab).await.is_empty());

    // The next migration adopts it (the failpoint fired once).
    let out = lab
        .weir(&["migrate", "kohakuriver", "--socket", &socket, "--json"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed(&lab).await.len(), 1);
    assert_eq!(ifindex(&lab, "kr", "eth0").await, Some(inner));
    doctor_clean(&lab).await;
}
