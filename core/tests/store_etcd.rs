//! The host on etcd, with the real daemons in namespaces and a real etcd in the host's
//! namespace: the state lives in etcd; etcd killed in the middle of a burst of attaches leaves
//! every call either acknowledged and durable or refused as UNAVAILABLE with nothing applied,
//! traffic keeps flowing while etcd is down and the host writes again by itself when it
//! returns; the leader of a three-member etcd killed, the host keeps serving.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use weir::lab::{Lab, LabSpec};
use weir_proto::v1 as pb;

/// A lab whose host keeps its state on an etcd of `members` members, with short store
/// deadlines so a dead etcd is noticed quickly.
fn etcd_spec(tag: &str, members: usize) -> LabSpec {
    let mut s = spec(tag);
    s.etcd_members = members;
    s.workloads_per_runner = 0;
    let store: toml::Table =
        toml::from_str("[store]\ntimeout = \"1s\"\nresolve_timeout = \"2s\"\n").unwrap();
    s.daemon_config = store;
    s
}

/// `etcdctl get --prefix KEY --keys-only` inside the host's namespace.
fn etcd_keys(lab: &Lab, prefix: &str) -> Vec<String> {
    let etcd = lab.etcd.as_ref().expect("the lab has an etcd");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("host"), "etcdctl"])
        .args(["--endpoints", &etcd.endpoints().join(",")])
        .args(["get", "--prefix", "--keys-only", prefix])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

async fn attach_once(
    url: &str,
    token: &str,
    runner: &str,
    id: &str,
    path: &str,
) -> Result<(), tonic::Status> {
    let ch = weir::api::client::connect(url, Default::default())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut c = pb::control_client::ControlClient::with_interceptor(
        ch,
        weir::api::auth::Bearer::new(Some(token)).unwrap(),
    );
    c.attach_workload(attach_req(runner, id, path))
        .await
        .map(|_| ())
}

/// Attach until it succeeds (the host may refuse while etcd elects or returns); how long it
/// took.
async fn attach_when_possible(
    lab: &Lab,
    runner: &str,
    id: &str,
    path: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        match attach_once(&lab.control_url(), &lab.control_token(), runner, id, path).await {
            Ok(()) => return start.elapsed(),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                assert!(
                    start.elapsed() < within,
                    "the host did not write again within {within:?}: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_state_lives_in_etcd_and_survives_a_host_restart() {
    let mut lab = must(Lab::up(etcd_spec("ek", 1)).await);
    let p = new_netns(&lab, "e1");
    control(&lab)
        .await
        .attach_workload(attach_req("r1", "e1", &p))
        .await
        .unwrap();
    let prefix = format!("/weir/{}/", lab.spec.name);
    let keys = etcd_keys(&lab, &prefix);
    for want in [
        "runners/r1",
        "runners/r2",
        "workloads/default/e1",
        "claims/ip/default/10.128.64.2",
        "claims/runner-id/0000000001",
    ] {
        assert!(
            keys.contains(&format!("{prefix}{want}")),
            "{want} not in etcd: {keys:?}"
        );
    }
    assert!(
        !lab.dir.join("host-state/weir.redb").exists(),
        "the host wrote a redb state too"
    );
    let before = events_of(&lab, pb::EventKind::WorkloadAttached).await;
    assert_eq!(before.len(), 1);
    lab.host.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    lab.start_host().await.unwrap();
    // The event log is etcd's too: a watch after the restart resumes at the same numbers.
    let after = events_of(&lab, pb::EventKind::WorkloadAttached).await;
    assert_eq!(
        after
            .iter()
            .map(|e| (e.seq, e.workload_id.as_str()))
            .collect::<Vec<_>>(),
        [(before[0].seq, "e1")]
    );
    let listed = listed(&lab).await;
    assert_eq!(
        listed
            .iter()
            .map(|w| (w.workload_id.as_str(), w.ip.as_str()))
            .collect::<Vec<_>>(),
        [("e1", "10.128.64.2/18")]
    );
}

/// etcd killed in the middle of a burst of attaches: every call is acknowledged (and then
/// durable) or refused with UNAVAILABLE (and then nothing of it remains); workloads keep
/// reaching each other across runners while etcd is down; once etcd is back the host writes
/// again by itself, and store, kernels and events agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_in_a_burst_of_attaches_fails_calls_cleanly_and_the_host_recovers() {
    let mut lab = must(Lab::up(etcd_spec("ekb", 1)).await);
    // Two workloads attached before, one per runner, pinging each other through the hub.
    let (a, b) = (new_netns(&lab, "pa"), new_netns(&lab, "pb"));
    let mut c = control(&lab).await;
    c.attach_workload(attach_req("r1", "pa", &a)).await.unwrap();
    c.attach_workload(attach_req("r2", "pb", &b)).await.unwrap();
    let pb_ip = lab.address_of("pb").await.unwrap().addr();
    assert!(lab.ping("pa", pb_ip));

    const N: usize = 60;
    let members: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let paths: Vec<String> = members.iter().map(|m| new_netns(&lab, m)).collect();
    let outcome: Arc<Mutex<BTreeMap<String, Result<(), tonic::Status>>>> = Arc::default();
    let (url, token) = (lab.control_url(), lab.control_token());
    let mut tasks = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let (url, token, path, outcome) =
            (url.clone(), token.clone(), path.clone(), outcome.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("k{i}");
            let runner = if i % 2 == 0 { "r1" } else { "r2" };
            let r = attach_once(&url, &token, runner, &id, &path).await;
            outcome.lock().unwrap().insert(id, r);
        }));
    }
    wait_until("some attaches are acknowledged", dur(30), || {
        outcome
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.is_ok())
            .count()
            >= N / 4
    })
    .await;
    lab.etcd.as_mut().unwrap().kill(0).unwrap();
    let pinger = Pinger::start(&lab, "pa", pb_ip);
    for t in tasks {
        t.await.unwrap();
    }
    let outcome = outcome.lock().unwrap().clone();
    let acked: Vec<&String> = outcome
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(k, _)| k)
        .collect();
    let refused: Vec<(&String, &tonic::Status)> = outcome
        .iter()
        .filter_map(|(k, r)| r.as_ref().err().map(|s| (k, s)))
        .collect();
    assert!(!refused.is_empty(), "etcd died after every attach");
    for (id, s) in &refused {
        assert_eq!(s.code(), tonic::Code::Unavailable, "{id}: {s:?}");
    }
    // While etcd is down: a write is refused clearly, traffic flows.
    let late = new_netns(&lab, "late");
    let r = attach_once(
        &lab.control_url(),
        &lab.control_token(),
        "r1",
        "late",
        &late,
    )
    .await;
    let s = r.expect_err("an attach succeeded with etcd down");
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("etcd"),
        "the refusal names etcd: {s:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, got) = pinger.stop();
    assert!(
        sent >= 10 && got + 1 >= sent,
        "cross-runner ping with etcd down: {got}/{sent}"
    );

    lab.etcd.as_mut().unwrap().restart(0).unwrap();
    let took = attach_when_possible(&lab, "r1", "late", &late, dur(30)).await;
    eprintln!("the host wrote again {took:?} after etcd was back");
    // Every refused attach leaves nothing once the host has settled (its undo reaches the
    // runner): wait for doctor to be clean.
    let start = Instant::now();
    loop {
        let f = control(&lab)
            .await
            .diagnose(pb::DiagnoseRequest::default())
            .await
            .unwrap()
            .into_inner()
            .findings;
        if f.is_empty() {
            break;
        }
        assert!(start.elapsed() < dur(30), "doctor finds: {f:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored: BTreeMap<String, String> = listed(&lab)
        .await
        .into_iter()
        .map(|w| (w.workload_id, w.ip))
        .collect();
    let announced: Vec<String> = events_of(&lab, pb::EventKind::WorkloadAttached)
        .await
        .into_iter()
        .map(|e| e.workload_id)
        .collect();
    for id in &acked {
        assert!(stored.contains_key(*id), "acknowledged {id} is not stored");
        assert!(
            announced.contains(id),
            "acknowledged {id} was never announced"
        );
    }
    for (id, _) in &refused {
        assert!(!stored.contains_key(*id), "{id} was refused but is stored");
        assert!(!announced.contains(id), "{id} was refused but announced");
    }
    // The kernel agrees: every refused attach's namespace is empty within the undo's time,
    // every stored one holds its address, and no address is on two namespaces.
    let mut seen = BTreeMap::new();
    for m in &members {
        let start = Instant::now();
        loop {
            let addrs: Vec<String> = all_addresses(&lab, m)
                .await
                .into_iter()
                .filter(|a| !a.starts_with("lo "))
                .map(|a| a.split_whitespace().nth(1).unwrap_or_default().to_string())
                .collect();
            let want: Vec<String> = stored.get(m).cloned().into_iter().collect();
            if addrs == want {
                for a in addrs {
                    assert!(
                        seen.insert(a.clone(), m.clone()).is_none(),
                        "{a} is on two namespaces"
                    );
                }
                break;
            }
            assert!(
                start.elapsed() < dur(20),
                "{m} holds {addrs:?}, the store says {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The leader of a three-member etcd killed: the host's next writes go to the new leader
/// (within the cluster's election time, plus a retry), nothing is lost, and the old leader
/// rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_killed_the_host_keeps_serving() {
    let mut lab = must(Lab::up(etcd_spec("el", 3)).await);
    let p1 = new_netns(&lab, "l1");
    control(&lab)
        .await
        .attach_workload(attach_req("r1", "l1", &p1))
        .await
        .unwrap();
    let leader = lab.etcd.as_ref().unwrap().leader().expect("a leader");
    lab.etcd.as_mut().unwrap().kill(leader).unwrap();
    let p2 = new_netns(&lab, "l2");
    let took = attach_when_possible(&lab, "r2", "l2", &p2, dur(15)).await;
    eprintln!("etcd leader {leader} killed: the next attach succeeded after {took:?}");
    let new_leader = lab.etcd.as_ref().unwrap().wait_for_leader(dur(10)).unwrap();
    assert_ne!(new_leader, leader);
    lab.etcd.as_mut().unwrap().restart(leader).unwrap();
    let p3 = new_netns(&lab, "l3");
    attach_when_possible(&lab, "r1", "l3", &p3, dur(15)).await;
    let ids: Vec<String> = listed(&lab)
        .await
        .into_iter()
        .map(|w| w.workload_id)
        .collect();
    assert_eq!(ids, ["l1", "l2", "l3"]);
    doctor_clean(&lab).await;
}
