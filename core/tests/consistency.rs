//! One truth between the hub and its runners, proven with the real daemons in namespaces: a
//! command the host gave up on is never applied and its address is not reused, a host killed
//! in a burst of attaches leaves nothing unannounced, a workload whose namespace disappears
//! is released and never reappears in another namespace, and `weir doctor` finds nothing
//! after any of it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use weir::lab::Lab;
use weir_proto::v1 as pb;

/// What `weir doctor` (the `Diagnose` call) finds.
async fn findings(lab: &Lab) -> Vec<pb::Finding> {
    control(lab)
        .await
        .diagnose(pb::DiagnoseRequest::default())
        .await
        .expect("diagnose")
        .into_inner()
        .findings
}

/// Wait until `weir doctor` finds nothing (the reconcile after a restart may still be
/// running); panic with its findings otherwise.
async fn doctor_clean(lab: &Lab, within: Duration) {
    let start = Instant::now();
    loop {
        let f = findings(lab).await;
        if f.is_empty() {
            // The CLI agrees, and exits 0.
            let out = lab.weir(&["doctor"]).unwrap();
            assert!(
                out.status.success(),
                "weir doctor: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        assert!(
            start.elapsed() < within,
            "weir doctor still finds differences after {within:?}: {f:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listed(lab: &Lab) -> BTreeMap<String, String> {
    control(lab)
        .await
        .list_workloads(pb::ListWorkloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workloads
        .into_iter()
        .map(|w| (w.workload_id, w.ip))
        .collect()
}

/// The IPv4 addresses (with prefix) inside a lab member's namespace, loopback aside.
async fn addresses_in(lab: &Lab, member: &str) -> Vec<String> {
    all_addresses(lab, member)
        .await
        .into_iter()
        .filter(|a| !a.starts_with("lo "))
        .map(|a| a.split_whitespace().nth(1).unwrap_or_default().to_string())
        .collect()
}

/// No address is on two namespaces among `members`.
async fn assert_unique_addresses(lab: &Lab, members: &[String]) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for m in members {
        for a in addresses_in(lab, m).await {
            if let Some(other) = seen.insert(a.clone(), m.clone()) {
                panic!("{a} is on two workloads: {other} and {m}");
            }
        }
    }
}

fn restart_env(lab: &mut Lab, member: &str, failpoints: Option<&str>) {
    match failpoints {
        Some(f) => {
            lab.daemon_env.insert(
                member.to_string(),
                vec![("WEIR_FAILPOINTS".into(), f.to_string())],
            );
        }
        None => {
            lab.daemon_env.remove(member);
        }
    }
}

/// Issue 12, defect 1: an attach the host gave up on (the runner was stuck in it) is undone
/// on the runner, the command queued behind it is never started, and neither address is
/// handed out again until the runner has confirmed it holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_host_gave_up_on_is_never_applied_and_its_address_is_not_reused() {
    let mut spec = spec("late");
    spec.workloads_per_runner = 0;
    spec.runners = 1;
    spec.host_keys.push_str("command_timeout = \"2s\"\n");
    let mut lab = Lab::underlay(spec).await.unwrap();
    lab.start_host().await.unwrap();
    // The runner completes its first attach, then stalls 5 s before answering.
    restart_env(
        &mut lab,
        "r1",
        Some("agent.attach.before-answer=delay:5000"),
    );
    lab.add_runner(1).await.unwrap();
    let ns: Vec<String> = (1..=4).map(|i| new_netns(&lab, &format!("f{i}"))).collect();
    let members: Vec<String> = (1..=4).map(|i| format!("f{i}")).collect();

    let (l1, l2) = (lab.control_url(), lab.control_token());
    let slow = {
        let (ns1, lab_ctl) = (ns[0].clone(), (l1.clone(), l2.clone()));
        tokio::spawn(async move {
            let mut c = control_at(&lab_ctl.0, &lab_ctl.1).await;
            let started = Instant::now();
            let r = c.attach_workload(attach_req("r1", "f1", &ns1)).await;
            (r, started.elapsed())
        })
    };
    // f2 is queued behind f1 on the runner while f1 is stuck.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = control(&lab).await;
    let f2 = c.attach_workload(attach_req("r1", "f2", &ns[1])).await;
    let (f1, f1_took) = slow.await.unwrap();
    let msg = refused(f1, tonic::Code::Unavailable);
    assert!(msg.contains("not acknowledged"), "{msg}");
    assert!(f1_took < Duration::from_secs(4), "f1 took {f1_took:?}");
    refused(f2, tonic::Code::Unavailable);

    // Once the runner is free again it removes f1's interface (the host asked it to) and never
    // starts f2's attach: both namespaces end up empty.
    let deadline = Instant::now() + dur(15);
    loop {
        let (a1, a2) = (
            addresses_in(&lab, "f1").await,
            addresses_in(&lab, "f2").await,
        );
        if a1.is_empty() && a2.is_empty() && findings(&lab).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "f1 still holds {a1:?}, f2 {a2:?}: {:#?}",
            findings(&lab).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New attaches get addresses nobody holds.
    let f3 = c
        .attach_workload(attach_req("r1", "f3", &ns[2]))
        .await
        .unwrap();
    let f4 = c
        .attach_workload(attach_req("r1", "f4", &ns[3]))
        .await
        .unwrap();
    assert_ne!(f3.get_ref().ip, f4.get_ref().ip);
    assert_unique_addresses(&lab, &members).await;
    assert_eq!(
        listed(&lab).await.keys().cloned().collect::<Vec<_>>(),
        ["f3", "f4"]
    );
    // Neither unacknowledged attach was ever announced.
    let attached: BTreeSet<String> = events_of(&lab, pb::EventKind::WorkloadAttached)
        .await
        .into_iter()
        .map(|e| e.workload_id)
        .collect();
    assert_eq!(attached, BTreeSet::from(["f3".into(), "f4".into()]));
    doctor_clean(&lab, dur(5)).await;
}

/// Issue 12, defect 3: a host killed in a burst of attaches leaves no workload that nobody was
/// told about — after the restart every acknowledged attach is in the store, the kernel and
/// the event log, every other one is fully there (with its event) or fully absent, and no
/// address is on two workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_in_a_burst_of_attaches_leaves_nothing_unannounced() {
    let mut spec = spec("burst");
    spec.workloads_per_runner = 0;
    let mut lab = must(Lab::up(spec).await);
    const N: usize = 80;
    let members: Vec<String> = (0..N).map(|i| format!("b{i}")).collect();
    let paths: Vec<String> = members.iter().map(|m| new_netns(&lab, m)).collect();
    let (url, token) = (lab.control_url(), lab.control_token());
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let (url, token, path, acked) = (url.clone(), token.clone(), path.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            // The host is killed during the burst: a connection that fails is an attach
            // never made.
            let Ok(ch) = weir::api::client::connect(&url, Default::default()).await else {
                return;
            };
            let mut c = pb::control_client::ControlClient::with_interceptor(
                ch,
                weir::api::auth::Bearer::new(Some(&token)).unwrap(),
            );
            let id = format!("b{i}");
            let runner = if i % 2 == 0 { "r1" } else { "r2" };
            if c.attach_workload(attach_req(runner, &id, &path))
                .await
                .is_ok()
            {
                acked.lock().unwrap().insert(id);
            }
        }));
    }
    // Kill the host in the middle of the burst.
    wait_until("some attaches are acknowledged", dur(30), || {
        acked.lock().unwrap().len() >= N / 4
    })
    .await;
    lab.host.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < N, "the host died after every attach");
    lab.start_host().await.unwrap();
    wait_until("both runners are back", dur(30), || {
        is_active(&lab, "r1") && is_active(&lab, "r2")
    })
    .await;
    doctor_clean(&lab, dur(20)).await;

    let stored = listed(&lab).await;
    let announced: BTreeSet<String> = events_of(&lab, pb::EventKind::WorkloadAttached)
        .await
        .into_iter()
        .map(|e| e.workload_id)
        .collect();
    for id in &acked {
        assert!(
            stored.contains_key(id),
            "acknowledged {id} is not in the store"
        );
    }
    for (i, m) in members.iter().enumerate() {
        let id = format!("b{i}");
        let addrs = addresses_in(&lab, m).await;
        match stored.get(&id) {
            Some(ip) => {
                assert!(
                    announced.contains(&id),
                    "{id} is stored but was never announced"
                );
                assert_eq!(addrs, std::slice::from_ref(ip), "{id}'s namespace");
            }
            None => {
                assert!(
                    !announced.contains(&id),
                    "{id} was announced but is not stored"
                );
                assert!(addrs.is_empty(), "{id} is not stored but holds {addrs:?}");
            }
        }
    }
    assert_unique_addresses(&lab, &members).await;
}

/// Issue 12, defect 4: a workload whose namespace is deleted is released (with an event)
/// after the grace period, and a new namespace created at an old path is never given the old
/// workload's interface — not even by the sync after a runner restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_whose_namespace_vanished_is_released_and_never_reappears() {
    let mut spec = spec("gone");
    spec.workloads_per_runner = 0;
    spec.runners = 1;
    spec.host_keys.push_str("workload_grace = \"1s\"\n");
    let mut lab = must(Lab::up(spec).await);
    let (a, b) = (new_netns(&lab, "ga"), new_netns(&lab, "gb"));
    let mut c = control(&lab).await;
    c.attach_workload(attach_req("r1", "ga", &a)).await.unwrap();
    c.attach_workload(attach_req("r1", "gb", &b)).await.unwrap();

    // The namespace of ga goes (its last reference, the bind mount, is removed).
    weir::dataplane::netns::delete(&lab.ns_name("ga")).unwrap();
    wait_until("ga is released", dur(15), || {
        futures::executor::block_on(listed(&lab)).len() == 1
    })
    .await;
    let detached = events_of(&lab, pb::EventKind::WorkloadDetached).await;
    let ev = detached
        .iter()
        .find(|e| e.workload_id == "ga")
        .expect("a detach event for ga");
    assert!(ev.detail.contains("namespace gone"), "{}", ev.detail);

    // While the runner is down, gb's namespace is replaced by a new one at the same path.
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    weir::dataplane::netns::delete(&lab.ns_name("gb")).unwrap();
    new_netns(&lab, "gb");
    lab.start_runner(1).await.unwrap();
    wait_until("gb is released", dur(15), || {
        futures::executor::block_on(listed(&lab)).is_empty()
    })
    .await;
    assert!(
        addresses_in(&lab, "gb").await.is_empty(),
        "the new namespace at gb's path got the old workload's interface"
    );
    // Its address is free again: a new workload gets one, and nothing is left behind.
    let g = new_netns(&lab, "gc");
    c.attach_workload(attach_req("r1", "gc", &g)).await.unwrap();
    doctor_clean(&lab, dur(5)).await;
}

/// The fault suite: the host or a runner is killed (SIGKILL) at every fault point of attach,
/// detach, register and reserve, restarted, and after one reconcile `weir doctor` finds
/// nothing, every acknowledged call is present in store, kernel and event log, every other
/// one is all there or not there at all, and no address is on two workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_point_leaves_store_kernel_and_events_consistent() {
    let mut spec = spec("fault");
    spec.workloads_per_runner = 0;
    spec.runners = 1;
    let mut lab = must(Lab::up(spec).await);
    let mut members: Vec<String> = Vec::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut detached_acked: BTreeSet<String> = BTreeSet::new();
    let mut n = 0;
    let mut next_ns = |lab: &Lab, members: &mut Vec<String>| {
        n += 1;
        let m = format!("x{n}");
        let path = new_netns(lab, &m);
        members.push(m.clone());
        (m, path)
    };
    for (point, _) in weir::failpoint::POINTS {
        let member = if point.starts_with("agent.") {
            "r1"
        } else {
            "host"
        };
        // Arm the point: restart the daemon with it. A restarted runner syncs once before
        // the scenario, so the sync point fires at its second hit (the scenario's); the
        // host's register point fires when the runner re-registers after the restart.
        let arm = match *point {
            "agent.sync.after-removals" => format!("{point}@2"),
            _ => point.to_string(),
        };
        restart_env(&mut lab, member, Some(&arm));
        if member == "host" {
            lab.host.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
            lab.start_host().await.unwrap();
        } else {
            lab.runners
                .get_mut(&1)
                .unwrap()
                .stop(libc::SIGKILL)
                .unwrap();
            lab.start_runner(1).await.unwrap();
        }
        let op = point.split('.').nth(1).unwrap_or_default();
        if op != "register" {
            wait_until("r1 is connected", dur(30), || is_active(&lab, "r1")).await;
        }
        restart_env(&mut lab, member, None);
        match op {
            "attach" => {
                let mut c = control(&lab).await;
                let (m, path) = next_ns(&lab, &mut members);
                if c.attach_workload(attach_req("r1", &m, &path)).await.is_ok() {
                    acked.insert(m);
                }
            }
            "detach" => {
                // Something to detach first (attached while the point is armed but not hit).
                let mut c = control(&lab).await;
                let (m, path) = next_ns(&lab, &mut members);
                c.attach_workload(attach_req("r1", &m, &path))
                    .await
                    .unwrap();
                // Whether it stays depends on the detach: acknowledged → gone; not → either.
                let r = c
                    .detach_workload(pb::DetachWorkloadRequest {
                        workload_id: m.clone(),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    detached_acked.insert(m.clone());
                }
            }
            "reserve" => {
                let _ = control(&lab)
                    .await
                    .reserve_address(pb::ReserveAddressRequest {
                        runner: "r1".into(),
                        ..Default::default()
                    })
                    .await;
            }
            // The runner re-registers after the host's restart, by itself.
            "register" => {}
            "sync" => {
                // The runner's next session starts with a sync: kill the host under it.
                lab.host.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
                lab.start_host().await.unwrap();
            }
            other => panic!("fault point {point}: no scenario for {other}"),
        }
        // The armed daemon died at its point.
        let died = if member == "host" {
            lab.host.as_mut().unwrap().wait_exit(dur(20))
        } else {
            lab.runners.get_mut(&1).unwrap().wait_exit(dur(20))
        };
        assert!(died.is_some(), "{member} did not reach fault point {point}");
        // Restart it and let one reconcile run.
        if member == "host" {
            lab.start_host().await.unwrap();
        } else {
            lab.start_runner(1).await.unwrap();
        }
        wait_until("r1 is back", dur(30), || is_active(&lab, "r1")).await;
        doctor_clean(&lab, dur(20)).await;

        let stored = listed(&lab).await;
        for id in &acked {
            assert!(
                stored.contains_key(id),
                "{point}: acknowledged {id} is gone"
            );
        }
        for id in &detached_acked {
            assert!(
                !stored.contains_key(id),
                "{point}: acknowledged detach of {id} was lost"
            );
        }
        let attached: BTreeSet<String> = events_of(&lab, pb::EventKind::WorkloadAttached)
            .await
            .into_iter()
            .map(|e| e.workload_id)
            .collect();
        let detached: BTreeSet<String> = events_of(&lab, pb::EventKind::WorkloadDetached)
            .await
            .into_iter()
            .map(|e| e.workload_id)
            .collect();
        for m in &members {
            let addrs = addresses_in(&lab, m).await;
            match stored.get(m) {
                Some(ip) => {
                    assert!(attached.contains(m), "{point}: {m} stored, never announced");
                    assert!(
                        !detached.contains(m),
                        "{point}: {m} stored, announced detached"
                    );
                    assert_eq!(addrs, std::slice::from_ref(ip), "{point}: {m}'s namespace");
                }
                None => {
                    assert_eq!(
                        attached.contains(m),
                        detached.contains(m),
                        "{point}: {m} is absent but its events say otherwise"
                    );
                    assert!(addrs.is_empty(), "{point}: absent {m} holds {addrs:?}");
                }
            }
        }
        // Reservations hold addresses no workload has.
        let res = control(&lab)
            .await
            .list_reservations(pb::ListReservationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .reservations;
        for r in res.iter().filter(|r| r.workload_id.is_empty()) {
            assert!(
                !stored
                    .values()
                    .any(|ip| ip.split('/').next() == Some(r.ip.as_str())),
                "{point}: reserved {} is also a workload's",
                r.ip
            );
        }
        assert_unique_addresses(&lab, &members).await;
    }
}

/// A file in `/run/netns` that is not a namespace, removed when the test ends however it ends.
struct StrayFile(std::path::PathBuf);

impl Drop for StrayFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Issue 12, defect 2: what is not a workload's network namespace is refused at once, with a
/// clear error, and changes nothing: a FIFO (it used to wedge the runner's command queue), a
/// regular file, a path outside the allowed directories, the runner's own namespace (by its
/// pid), and a namespace that routes its default traffic elsewhere (its route is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_real_workload_namespaces_are_accepted_and_refusals_change_nothing() {
    let mut spec = spec("netns");
    spec.workloads_per_runner = 0;
    spec.runners = 1;
    let lab = must(Lab::up(spec).await);
    let mut c = control(&lab).await;
    let fifo = StrayFile(std::path::PathBuf::from(format!(
        "/run/netns/{}-fifo",
        lab.ns_name("x")
    )));
    nix::unistd::mkfifo(&fifo.0, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let file = StrayFile(std::path::PathBuf::from(format!(
        "/run/netns/{}-file",
        lab.ns_name("x")
    )));
    std::fs::write(&file.0, b"not a namespace").unwrap();
    // A namespace with an uplink and a default route of its own.
    let routed = new_netns(&lab, "routed");
    for args in [
        vec!["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
        vec!["addr", "add", "198.51.100.2/24", "dev", "up0"],
        vec!["link", "set", "up0", "up"],
        vec!["link", "set", "up1", "up"],
        vec!["route", "add", "default", "via", "198.51.100.1"],
    ] {
        let out = lab.exec("routed", "ip", &args).unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let runner_pid = lab.runners[&1].pid;
    let cases: Vec<(&str, pb::AttachWorkloadRequest, &str)> = vec![
        (
            "fifo",
            attach_req("r1", "n-fifo", &fifo.0.display().to_string()),
            "not a namespace",
        ),
        (
            "file",
            attach_req("r1", "n-file", &file.0.display().to_string()),
            "not a namespace",
        ),
        (
            "outside",
            attach_req("r1", "n-out", "/tmp/weir-not-allowed/ns"),
            "allowed are",
        ),
        (
            "runner's own",
            pb::AttachWorkloadRequest {
                runner: "r1".into(),
                workload_id: "n-own".into(),
                pid: runner_pid,
                ..Default::default()
            },
            "runner's own network namespace",
        ),
        (
            "routed",
            attach_req("r1", "n-routed", &routed),
            "already has a default route",
        ),
    ];
    for (what, req, says) in cases {
        let started = Instant::now();
        let msg = refused(c.attach_workload(req).await, tonic::Code::Aborted);
        assert!(msg.contains(says), "{what}: {msg}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    // Nothing changed: no record, no address taken (the next attach gets the first one), the
    // routed namespace keeps its default route and got no interface.
    assert!(listed(&lab).await.is_empty());
    let ok = new_netns(&lab, "ok");
    let started = Instant::now();
    let r = c
        .attach_workload(attach_req("r1", "ok", &ok))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.get_ref().ip, "10.128.64.2/18");
    let routes = routes(&lab, "routed").await;
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("0.0.0.0/0 via Some(198.51.100.1)")),
        "{routes:?}"
    );
    assert_eq!(addresses_in(&lab, "routed").await, ["198.51.100.2/24"]);
    doctor_clean(&lab, dur(5)).await;
}

/// A command in flight when its runner dies fails at once (the session's end reaches every
/// waiter), not at the command timeout; the attach is not acknowledged and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_when_its_runner_dies_fails_at_once() {
    let mut spec = spec("died");
    spec.workloads_per_runner = 0;
    spec.runners = 1;
    let mut lab = Lab::underlay(spec).await.unwrap();
    lab.start_host().await.unwrap();
    restart_env(
        &mut lab,
        "r1",
        Some("agent.attach.before-answer=delay:15000"),
    );
    lab.add_runner(1).await.unwrap();
    restart_env(&mut lab, "r1", None);
    let ns = new_netns(&lab, "d1");
    let (url, token) = (lab.control_url(), lab.control_token());
    let call = tokio::spawn(async move {
        let mut c = control_at(&url, &token).await;
        c.attach_workload(attach_req("r1", "d1", &ns)).await
    });
    // The runner is inside the attach (stalled) once the interface exists in the namespace.
    wait_until("the runner is inside the attach", dur(10), || {
        !futures::executor::block_on(addresses_in(&lab, "d1")).is_empty()
    })
    .await;
    lab.runners
        .get_mut(&1)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    let killed = Instant::now();
    let r = call.await.unwrap();
    let waited = killed.elapsed();
    refused(r, tonic::Code::Unavailable);
    assert!(
        waited < Duration::from_secs(5),
        "the attach waited {waited:?} after its runner died (the command timeout is 20 s)"
    );
    // When the runner is back its sync removes the half-acknowledged interface.
    lab.start_runner(1).await.unwrap();
    wait_until("d1's interface is removed", dur(15), || {
        futures::executor::block_on(addresses_in(&lab, "d1")).is_empty()
    })
    .await;
    assert!(listed(&lab).await.is_empty());
    doctor_clean(&lab, dur(5)).await;
}

/// A repeated attach answers the first one's result when it asks for the same thing, and is
/// refused, naming the field, when it asks for something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_repeat_attach_is_refused_naming_the_field() {
    let mut spec = spec("rep");
    spec.workloads_per_runner = 0;
    spec.runners = 1;
    let lab = must(Lab::up(spec).await);
    let (a, b) = (new_netns(&lab, "ra"), new_netns(&lab, "rb"));
    let mut c = control(&lab).await;
    let mut first = attach_req("r1", "ra", &a);
    first.labels = [("tenant".to_string(), "x".to_string())].into();
    let got = c.attach_workload(first.clone()).await.unwrap().into_inner();
    let again = c.attach_workload(first.clone()).await.unwrap().into_inner();
    assert_eq!(got, again);
    let mut same_ip = first.clone();
    same_ip.requested_ip = got.ip.split('/').next().unwrap().to_string();
    assert_eq!(c.attach_workload(same_ip).await.unwrap().into_inner(), got);

    let mut labels = first.clone();
    labels.labels = [("tenant".to_string(), "y".to_string())].into();
    let mut ip = first.clone();
    ip.requested_ip = "10.128.64.77".into();
    let mut netns = first.clone();
    netns.netns = b.clone();
    let mut vm = first.clone();
    vm.netns = String::new();
    vm.kind = pb::WorkloadKind::Vm as i32;
    for (field, req) in [
        ("labels", labels),
        ("requested_ip", ip),
        ("netns", netns),
        ("kind", vm),
    ] {
        let msg = refused(c.attach_workload(req).await, tonic::Code::AlreadyExists);
        assert!(msg.starts_with(&format!("{field}:")), "{field}: {msg}");
    }
    // Nothing changed.
    let l = listed(&lab).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l["ra"], got.ip);
    assert!(addresses_in(&lab, "rb").await.is_empty());
}
