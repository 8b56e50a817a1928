//! `weir-cni` executed exactly as the CNI 1.1 spec says (environment and stdin), against a lab
//! with the real host and runners: ADD, CHECK, DEL (twice), GC, STATUS and VERSION, results in
//! the version asked, the spec's error codes, a runner killed in the middle of an ADD.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};
use weir::lab::Lab;
use weir_proto::v1 as pb;

/// `weir-cni`, built beside `weir` (the workspace builds both).
fn plugin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_weir")).with_file_name("weir-cni");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (cargo build --workspace)",
        p.display()
    );
    p
}

fn conf(lab: &Lab, runner: u32, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "weirnet",
        "type": "weir-cni",
        "socket": lab.dir.join(format!("r{runner}.sock")),
    })
}

struct Outcome {
    status: i32,
    out: Value,
}

/// Run the plugin as a runtime does: `CNI_*` in a clean environment, the config on stdin.
fn cni(
    command: &str,
    conf: &Value,
    container: &str,
    netns: &str,
    extra: &[(&str, &str)],
) -> Outcome {
    let mut c = Command::new(plugin());
    c.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stderr(Stdio::inherit());
    if !container.is_empty() {
        c.env("CNI_CONTAINERID", container)
            .env("CNI_IFNAME", "eth0");
    }
    if !netns.is_empty() {
        c.env("CNI_NETNS", netns);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    let (status, out, _) = run_with_json(&mut c, conf);
    Outcome {
        status: status.unwrap_or(-1),
        out,
    }
}

#[track_caller]
fn ok(o: Outcome) -> Value {
    assert_eq!(o.status, 0, "the plugin failed: {}", o.out);
    o.out
}

#[track_caller]
fn fails(o: Outcome, code: u64) -> String {
    assert_eq!(o.status, 1, "expected CNI error {code}, got {}", o.out);
    assert_eq!(o.out["code"], code, "{}", o.out);
    o.out["msg"].as_str().unwrap_or_default().to_string()
}

fn ip_of(result: &Value) -> Ipv4Addr {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_check_del_gc_status_version_as_the_spec_says() {
    let mut spec = spec("cni");
    spec.runners = 2;
    spec.workloads_per_runner = 0;
    let lab = must(Lab::up(spec).await);
    let c1 = new_netns(&lab, "c1");
    let c2 = new_netns(&lab, "c2");

    // VERSION: every version this plugin speaks, answered in the one asked.
    let v = ok(cni("VERSION", &json!({"cniVersion": "1.0.0"}), "", "", &[]));
    assert_eq!(v["cniVersion"], "1.0.0");
    let supported: BTreeSet<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(want), "{v}");
    }

    // ADD on two runners: addresses from each runner's subnet, the interface in the sandbox.
    let r1 = ok(cni("ADD", &conf(&lab, 1, "1.1.0"), "ctr1", &c1, &[]));
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["sandbox"], c1.as_str());
    // The MACs the result gives are the interfaces' own.
    let inside = links(&lab, "c1").await;
    let eth0 = inside.iter().find(|l| l.name == "eth0").unwrap();
    assert_eq!(
        r1["interfaces"][1]["mac"],
        weir::dataplane::attach::mac_string(eth0.mac.unwrap()),
        "{r1}"
    );
    assert!(r1["interfaces"][1]["mtu"].as_u64().unwrap() > 0, "{r1}");
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    let ip1 = ip_of(&r1);
    assert_eq!(lab.address_of("c1").await.map(|a| a.addr()), Some(ip1));
    let r2 = ok(cni("ADD", &conf(&lab, 2, "0.4.0"), "ctr2", &c2, &[]));
    assert_eq!(
        r2["ips"][0]["version"], "4",
        "0.4.0 results give each IP a version"
    );
    let ip2 = ip_of(&r2);
    assert!(lab.ping("c1", ip2), "ctr1 reaches ctr2 on the other runner");
    // The same ADD again answers the same.
    let again = ok(cni("ADD", &conf(&lab, 1, "1.1.0"), "ctr1", &c1, &[]));
    assert_eq!(ip_of(&again), ip1);
    // The origin is recorded, listed and in the event.
    let w = listed(&lab).await;
    let w1 = w.iter().find(|w| w.workload_id == "ctr1").unwrap();
    assert_eq!(w1.origin, "cni/weirnet");
    assert_eq!(w1.runner, "r1");
    let attached = events_of(&lab, pb::EventKind::WorkloadAttached).await;
    assert!(
        attached
            .iter()
            .any(|e| e.workload_id == "ctr1" && e.origin == "cni/weirnet"),
        "{attached:?}"
    );

    // CHECK: with the result as prevResult it holds; a wrong one or an unknown container not.
    let mut with_prev = conf(&lab, 1, "1.1.0");
    with_prev["prevResult"] = r1.clone();
    ok(cni("CHECK", &with_prev, "ctr1", &c1, &[]));
    let mut wrong = with_prev.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.255.255.1/18");
    let msg = fails(cni("CHECK", &wrong, "ctr1", &c1, &[]), 100);
    assert!(msg.contains("previous result"), "{msg}");
    fails(cni("CHECK", &with_prev, "nosuch", &c1, &[]), 3);

    // Bad input: each gets the spec's code and changes nothing.
    fails(cni("ADD", &conf(&lab, 1, "9.9.9"), "ctr9", &c1, &[]), 1);
    fails(cni("BOGUS", &conf(&lab, 1, "1.0.0"), "ctr9", &c1, &[]), 4);
    let msg = fails(cni("ADD", &conf(&lab, 1, "1.0.0"), "ctr9", "", &[]), 4);
    assert!(msg.contains("CNI_NETNS"), "{msg}");
    let msg = fails(
        cni(
            "ADD",
            &conf(&lab, 1, "1.0.0"),
            "ctr9",
            &c1,
            &[("CNI_ARGS", "COLOUR=red")],
        ),
        2,
    );
    assert!(msg.contains("COLOUR"), "{msg}");
    fails(
        cni(
            "ADD",
            &json!({"cniVersion": "1.0.0", "name": "weirnet", "labels": 5}),
            "ctr9",
            &c1,
            &[],
        ),
        7,
    );
    assert_eq!(
        listed(&lab).await.len(),
        2,
        "no refused ADD left a workload"
    );

    // A requested address (CNI_ARGS IP=, as podman passes --ip).
    let c3 = new_netns(&lab, "c3");
    let want = Ipv4Addr::from(u32::from(ip1) + 40);
    let r3 = ok(cni(
        "ADD",
        &conf(&lab, 1, "1.0.0"),
        "ctr3",
        &c3,
        &[(
            "CNI_ARGS",
            &format!("IgnoreUnknown=1;K8S_POD_NAME=p3;IP={want}"),
        )],
    ));
    assert_eq!(ip_of(&r3), want);
    let w3 = listed(&lab)
        .await
        .into_iter()
        .find(|w| w.workload_id == "ctr3")
        .unwrap();
    assert_eq!(
        w3.labels.get("io.kubernetes.pod.name").map(String::as_str),
        Some("p3")
    );

    // GC keeps exactly the valid attachments of this CNI network: ctr3 goes, ctr1 stays, and
    // a workload attached by the scheduler in the same subnet is not this network's to remove.
    let s1 = new_netns(&lab, "s1");
    control(&lab)
        .await
        .attach_workload(attach_req("r1", "sched1", &s1))
        .await
        .unwrap();
    let mut gc = conf(&lab, 1, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    ok(cni("GC", &gc, "", "", &[]));
    let left: BTreeSet<String> = listed(&lab)
        .await
        .into_iter()
        .map(|w| w.workload_id)
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(["ctr1".to_string(), "ctr2".to_string(), "sched1".to_string()]),
        "GC on r1 removed ctr3 only (ctr2 is on r2, sched1 the scheduler's)"
    );
    no_interface_left(&lab, "c3").await;

    // DEL, twice: the second finds nothing and is fine.
    ok(cni("DEL", &conf(&lab, 1, "1.1.0"), "ctr1", &c1, &[]));
    ok(cni("DEL", &conf(&lab, 1, "1.1.0"), "ctr1", &c1, &[]));
    assert!(!listed(&lab).await.iter().any(|w| w.workload_id == "ctr1"));
    doctor_clean(&lab).await;

    // STATUS: fine while the runner has its session; code 50 once it is stopped, and an ADD
    // is "try again later".
    ok(cni("STATUS", &conf(&lab, 2, "1.1.0"), "", "", &[]));
    let mut lab = lab;
    lab.runners
        .get_mut(&2)
        .unwrap()
        .stop(libc::SIGTERM)
        .unwrap();
    fails(cni("STATUS", &conf(&lab, 2, "1.1.0"), "", "", &[]), 50);
    let c4 = new_netns(&lab, "c4");
    fails(cni("ADD", &conf(&lab, 2, "1.1.0"), "ctr4", &c4, &[]), 11);
}

/// A runner killed in the middle of an ADD: the plugin reports a clear CNI error, and once the
/// runner is back, a GC leaves nothing behind (store, kernel and `weir doctor` agree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_add_leaks_nothing_after_restart_and_gc() {
    let mut spec = spec("cnik");
    spec.runners = 1;
    spec.workloads_per_runner = 0;
    let mut lab = must(Lab::up(spec).await);
    lab.daemon_env.insert(
        "r1".into(),
        vec![("WEIR_FAILPOINTS".into(), "agent.attach.after-veth".into())],
    );
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    lab.start_runner(1).await.unwrap();
    wait_until("r1 is connected", dur(30), || is_active(&lab, "r1")).await;
    lab.daemon_env.remove("r1");
    let k1 = new_netns(&lab, "k1");
    let o = cni("ADD", &conf(&lab, 1, "1.0.0"), "ctrk", &k1, &[]);
    assert_eq!(o.status, 1, "{}", o.out);
    // The host lost the runner before its answer: the attach is undone, try again later.
    assert_eq!(o.out["code"], 11, "{}", o.out);
    assert!(
        !o.out["msg"].as_str().unwrap_or_default().is_empty(),
        "{}",
        o.out
    );
    // The runner is back (it died at the failpoint); GC with nothing valid.
    lab.runners.get_mut(&1).unwrap().stop(libc::SIGKILL).ok();
    lab.start_runner(1).await.unwrap();
    wait_until("r1 is connected", dur(30), || is_active(&lab, "r1")).await;
    let mut gc = conf(&lab, 1, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    ok(cni("GC", &gc, "", "", &[]));
    assert!(listed(&lab).await.is_empty());
    no_interface_left(&lab, "k1").await;
    doctor_clean(&lab).await;
}
