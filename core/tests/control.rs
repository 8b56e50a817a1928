//! The scheduler's API (`weir.v1.Control`) against the real daemons in a lab: each RPC's
//! success, each refusal with its exact code, and that a refused call changes nothing.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use common::*;
use tonic::Code;
use weir::lab::Lab;
use weir_proto::v1 as pb;

async fn workloads(c: &mut Control) -> Vec<pb::Workload> {
    c.list_workloads(pb::ListWorkloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workloads
}

async fn reservations(c: &mut Control) -> Vec<pb::Reservation> {
    c.list_reservations(pb::ListReservationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .reservations
}

/// The parts of the runner list a refused call must not change (not the heartbeat times).
async fn runner_view(c: &mut Control) -> Vec<(String, u32, String, bool)> {
    c.list_runners(pb::ListRunnersRequest {})
        .await
        .unwrap()
        .into_inner()
        .runners
        .into_iter()
        .map(|r| (r.name, r.id, r.physical_ip, r.placeholder))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_need_a_control_token() {
    let mut s = spec("auth");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let msg = refused(
        control_as(&lab, None)
            .await
            .get_status(pb::GetStatusRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert!(msg.contains("Bearer"), "{msg}");
    refused(
        control_as(&lab, Some("not-the-token-0123456789"))
            .await
            .get_status(pb::GetStatusRequest {})
            .await,
        Code::Unauthenticated,
    );
    let msg = refused(
        control_as(&lab, Some(&lab.join_token()))
            .await
            .get_status(pb::GetStatusRequest {})
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("control token"), "{msg}");
    // A refused call changes nothing: a refused attach leaves no workload.
    let ns = new_netns(&lab, "x");
    refused(
        control_as(&lab, Some(&lab.join_token()))
            .await
            .attach_workload(attach_req("r1", "x", &ns))
            .await,
        Code::PermissionDenied,
    );
    assert!(workloads(&mut control(&lab).await).await.is_empty());
    assert!(
        control(&lab)
            .await
            .get_status(pb::GetStatusRequest {})
            .await
            .is_ok()
    );

    // The CLI: no token, then the right one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["status", "--host", &lab.control_url()])
        .env_remove("WEIR_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
    let token_file = lab.dir.join("control.token");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "status",
            "--json",
            "--host",
            &lab.control_url(),
            "--token-file",
        ])
        .arg(&token_file)
        .env_remove("WEIR_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Runners need the join token, not a control token.
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let mut agent = weir_proto::v1::agent_client::AgentClient::with_interceptor(
        ch,
        weir::api::auth::Bearer::new(Some(&lab.control_token())).unwrap(),
    );
    let r = agent
        .register(pb::RegisterRequest {
            name: "intruder".into(),
            physical_ip: "192.0.2.66".into(),
            ..Default::default()
        })
        .await;
    refused(r, Code::PermissionDenied);
    assert!(
        !runner_view(&mut control(&lab).await)
            .await
            .iter()
            .any(|r| r.0 == "intruder")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_credentials() {
    let mut s = spec("hlth");
    s.runners = 0;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "weir.v1.Control", "weir.v1.Agent"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["weir.v1.Control", "weir.v1.Agent", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn the_host_refuses_to_start_without_tokens_unless_insecure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("host")
        .env("WEIR_HOST__REACHABLE_ADDRESS", "192.0.2.1")
        // Past the plaintext check (tested in tls.rs), to reach the tokens'.
        .env("WEIR_HOST__ALLOW_PLAINTEXT", "true")
        .env_remove("WEIR_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.control_token_files") && err.contains("auth.insecure = true"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_are_listed_released_and_cleaned_up() {
    let mut s = spec("rel");
    s.runners = 2;
    s.workloads_per_runner = 1;
    let mut lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    let before = runner_view(&mut c).await;
    assert_eq!(
        before.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    // Refusals change nothing.
    assert!(
        refused(
            c.release_runner(pb::ReleaseRunnerRequest {
                runner: "nope".into()
            })
            .await,
            Code::NotFound
        )
        .contains("nope")
    );
    assert!(
        refused(
            c.release_runner(pb::ReleaseRunnerRequest { runner: "".into() })
                .await,
            Code::InvalidArgument
        )
        .contains("runner")
    );
    refused(
        c.release_runner(pb::ReleaseRunnerRequest {
            runner: "#9".into(),
        })
        .await,
        Code::NotFound,
    );
    assert_eq!(runner_view(&mut c).await, before);
    assert_eq!(workloads(&mut c).await.len(), 2);

    // Cleanup takes the inactive runner only: its tunnel, allocation and workloads go.
    lab.runners
        .get_mut(&2)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    wait_until("r2 is inactive", dur(15), || is_inactive(&lab, "r2")).await;
    let r = c
        .cleanup_inactive(pb::CleanupInactiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.released, r.runners), (1, vec!["r2".to_string()]));
    assert!(
        !links(&lab, "host").await.iter().any(|l| l.name == "vxkr2"),
        "r2's tunnel is removed"
    );
    assert_eq!(
        workloads(&mut c)
            .await
            .iter()
            .map(|w| w.runner.as_str())
            .collect::<Vec<_>>(),
        ["r1"]
    );
    let r = c
        .cleanup_inactive(pb::CleanupInactiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.released, 0, "nothing inactive is left");

    // Releasing a connected runner tells it: it drops its overlay and registers again.
    let mut events = c
        .watch_events(pb::WatchEventsRequest {
            after: 0,
            only_new: true,
        })
        .await
        .unwrap()
        .into_inner();
    let r = c
        .release_runner(pb::ReleaseRunnerRequest {
            runner: "r1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.released_id, r.workloads_removed), (1, 1));
    let mut kinds = Vec::new();
    while !kinds.contains(&pb::EventKind::RunnerJoined) {
        let e = tokio::time::timeout(dur(20), events.message())
            .await
            .expect("events flow")
            .unwrap()
            .unwrap();
        kinds.push(pb::EventKind::try_from(e.kind).unwrap());
    }
    assert!(
        kinds.contains(&pb::EventKind::WorkloadDetached),
        "{kinds:?}"
    );
    assert!(kinds.contains(&pb::EventKind::RunnerLeft), "{kinds:?}");
    wait_until("r1 is back", dur(20), || is_active(&lab, "r1")).await;
    assert!(
        workloads(&mut c).await.is_empty(),
        "released workloads do not come back"
    );
    assert!(
        !links(&lab, "r1")
            .await
            .iter()
            .any(|l| l.name.starts_with("wk")),
        "the runner removed the released workload's interface"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_rpcs_succeed_and_refuse_precisely() {
    let mut s = spec("wl");
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.overlay = "dns = [\"192.0.2.53\"]\n".into();
    let mut lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    let a = new_netns(&lab, "a");
    let b = new_netns(&lab, "b");
    let mut req = attach_req("r1", "a", &a);
    req.labels = HashMap::from([
        ("tenant".into(), "blue".into()),
        ("role".into(), "master".into()),
    ]);
    let r = c.attach_workload(req).await.unwrap().into_inner();
    assert_eq!(
        (r.ip.as_str(), r.prefix, r.ifname.as_str()),
        ("10.128.64.2/18", 18, "eth0")
    );
    let mut req = attach_req("r2", "b", &b);
    req.requested_ip = "10.128.128.77".into();
    req.labels = HashMap::from([("tenant".into(), "red".into())]);
    assert_eq!(
        c.attach_workload(req).await.unwrap().into_inner().ip,
        "10.128.128.77/18"
    );
    assert!(
        lab.ping("a", Ipv4Addr::new(10, 128, 128, 77)),
        "the requested address works"
    );

    // Listing with filters.
    let by_runner = c
        .list_workloads(pb::ListWorkloadsRequest {
            runner: "r2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workloads;
    assert_eq!(
        by_runner
            .iter()
            .map(|w| w.workload_id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let by_label = c
        .list_workloads(pb::ListWorkloadsRequest {
            labels: HashMap::from([("tenant".into(), "blue".into())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workloads;
    assert_eq!(by_label.len(), 1);
    assert_eq!(
        by_label[0].labels.get("role").map(String::as_str),
        Some("master")
    );
    refused(
        c.list_workloads(pb::ListWorkloadsRequest {
            runner: "zz".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );

    // Refusals, each with its code and field, each changing nothing.
    let before = workloads(&mut c).await;
    let n = new_netns(&lab, "n");
    let cases: Vec<(pb::AttachWorkloadRequest, Code, &str)> = vec![
        (attach_req("ghost", "n", &n), Code::NotFound, "runner"),
        (
            attach_req("r1", "bad id!", &n),
            Code::InvalidArgument,
            "workload_id",
        ),
        (
            attach_req("r1", "n", "relative/path"),
            Code::InvalidArgument,
            "netns",
        ),
        (attach_req("r1", "n", ""), Code::InvalidArgument, "netns"),
        (
            pb::AttachWorkloadRequest {
                pid: 1,
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "netns and pid",
        ),
        (
            attach_req("r1", "a", &n),
            Code::AlreadyExists,
            "workload_id",
        ),
        (
            pb::AttachWorkloadRequest {
                requested_ip: "10.128.128.77".into(),
                ..attach_req("r2", "n", &n)
            },
            Code::AlreadyExists,
            "requested_ip",
        ),
        (
            pb::AttachWorkloadRequest {
                requested_ip: "10.128.64.1".into(),
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "gateway",
        ),
        (
            pb::AttachWorkloadRequest {
                requested_ip: "10.128.64.254".into(),
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "host's address",
        ),
        (
            pb::AttachWorkloadRequest {
                requested_ip: "10.128.128.9".into(),
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "outside",
        ),
        (
            pb::AttachWorkloadRequest {
                requested_ip: "nine".into(),
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "requested_ip",
        ),
        (
            pb::AttachWorkloadRequest {
                labels: HashMap::from([("bad key".into(), "v".into())]),
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "labels",
        ),
        (
            pb::AttachWorkloadRequest {
                network: "nope".into(),
                ..attach_req("r1", "n", &n)
            },
            Code::NotFound,
            "network",
        ),
        (
            pb::AttachWorkloadRequest {
                reservation_token: "garbage".into(),
                ..attach_req("r1", "n", &n)
            },
            Code::InvalidArgument,
            "reservation_token",
        ),
    ];
    for (req, code, field) in cases {
        let what = format!("{req:?}");
        let msg = refused(c.attach_workload(req).await, code);
        assert!(msg.contains(field), "{what}: {msg}");
        assert_eq!(
            workloads(&mut c).await,
            before,
            "{what} changed the workload list"
        );
    }
    // A namespace that does not exist: the runner fails, the hub rolls back.
    refused(
        c.attach_workload(attach_req("r1", "n", "/run/netns/weir-does-not-exist"))
            .await,
        Code::Aborted,
    );
    assert_eq!(workloads(&mut c).await, before);

    // Detach refusals.
    refused(
        c.detach_workload(pb::DetachWorkloadRequest {
            workload_id: "zz".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    refused(
        c.detach_workload(pb::DetachWorkloadRequest {
            runner: "r2".into(),
            workload_id: "a".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    assert_eq!(workloads(&mut c).await, before);

    // A VM: a tap on the runner's bridge, and what its cloud-init needs.
    let vm = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "vm1".into(),
            kind: pb::WorkloadKind::Vm as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        vm.ifname.starts_with("tap-") && vm.ifname.len() == 12,
        "{}",
        vm.ifname
    );
    assert!(vm.mac.starts_with("52:54:00:"), "{}", vm.mac);
    assert_eq!(
        (vm.ip.as_str(), vm.gateway.as_str(), vm.mtu, vm.prefix),
        ("10.128.64.3/18", "10.128.64.1", 1450, 18)
    );
    assert_eq!(vm.dns, ["192.0.2.53"]);
    let r1_links = links(&lab, "r1").await;
    let bridge = r1_links
        .iter()
        .find(|l| l.name == "kohaku-overlay")
        .unwrap()
        .index;
    let tap = r1_links
        .iter()
        .find(|l| l.name == vm.ifname)
        .expect("tap exists");
    assert_eq!(
        (tap.kind.as_deref(), tap.master, tap.mtu),
        (Some("tun"), Some(bridge), 1450)
    );
    refused(
        c.attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "vm2".into(),
            kind: pb::WorkloadKind::Vm as i32,
            netns: a.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    // The VM's address stays held while it is attached; detaching removes the tap.
    let next = c
        .attach_workload(attach_req("r1", "n", &n))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.ip, "10.128.64.4/18");
    c.detach_workload(pb::DetachWorkloadRequest {
        workload_id: "vm1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !links(&lab, "r1").await.iter().any(|l| l.name == vm.ifname),
        "tap removed"
    );

    // An inactive runner refuses attaches.
    lab.runners
        .get_mut(&2)
        .unwrap()
        .stop(libc::SIGKILL)
        .unwrap();
    wait_until("r2 is inactive", dur(15), || is_inactive(&lab, "r2")).await;
    let before = workloads(&mut c).await;
    let msg = refused(
        c.attach_workload(attach_req("r2", "late", &n)).await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains("inactive"), "{msg}");
    assert_eq!(workloads(&mut c).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_follow_every_rule() {
    let mut s = spec("res");
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.host_extra = "[reservations]\nmin_ttl = \"1s\"\n".into();
    let mut lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    let reserve = |runner: &str, ip: &str, ttl: u32| pb::ReserveAddressRequest {
        runner: runner.into(),
        ip: ip.into(),
        ttl_seconds: ttl,
        ..Default::default()
    };
    let r = c
        .reserve_address(reserve("r1", "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ip, "10.128.64.2");
    let now = weir::clock::now_ms();
    assert!(
        (r.expires_unix_ms - now - 300_000).abs() < 5_000,
        "default TTL 300 s"
    );
    let v = c
        .validate_reservation(pb::ValidateReservationRequest {
            token: r.token.clone(),
            runner: "r1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.state.as_str(), v.ip.as_str(), v.runner.as_str()),
        ("reserved", "10.128.64.2", "r1")
    );

    // Refusals, none of which changes the reservation list.
    let snapshot = reservations(&mut c).await;
    let cases: Vec<(pb::ReserveAddressRequest, Code, &str)> = vec![
        (reserve("ghost", "", 0), Code::NotFound, "runner"),
        (
            reserve("r1", "10.128.64.1", 0),
            Code::InvalidArgument,
            "gateway",
        ),
        (
            reserve("r1", "10.128.64.254", 0),
            Code::InvalidArgument,
            "host's address",
        ),
        (
            reserve("r1", "10.128.128.5", 0),
            Code::InvalidArgument,
            "outside",
        ),
        (
            reserve("r1", "10.128.64.2", 0),
            Code::AlreadyExists,
            "in use",
        ),
        (
            reserve("r1", "", 7200),
            Code::InvalidArgument,
            "ttl_seconds",
        ),
        (reserve("r1", "x", 0), Code::InvalidArgument, "ip"),
    ];
    for (req, code, field) in cases {
        let what = format!("{req:?}");
        let msg = refused(c.reserve_address(req).await, code);
        assert!(msg.contains(field), "{what}: {msg}");
        assert_eq!(
            reservations(&mut c).await,
            snapshot,
            "{what} changed the reservations"
        );
    }

    // The token is bound to its runner, and any altered byte is refused.
    let w1 = new_netns(&lab, "w1");
    let with = |runner: &str, id: &str, ns: &str, token: &str| pb::AttachWorkloadRequest {
        reservation_token: token.into(),
        ..attach_req(runner, id, ns)
    };
    assert!(
        refused(
            c.attach_workload(with("r2", "w1", &w1, &r.token)).await,
            Code::PermissionDenied
        )
        .contains("bound to runner")
    );
    let mut altered = r.token.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let e = c
        .attach_workload(with("r1", "w1", &w1, &altered))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::InvalidArgument),
        "{e:?}"
    );
    assert!(workloads(&mut c).await.is_empty());
    assert_eq!(reservations(&mut c).await, snapshot);

    // Two concurrent attaches with one token: exactly one succeeds.
    let w2 = new_netns(&lab, "w2");
    let (mut c1, mut c2) = (control(&lab).await, control(&lab).await);
    let (a, b) = tokio::join!(
        c1.attach_workload(with("r1", "w1", &w1, &r.token)),
        c2.attach_workload(with("r1", "w2", &w2, &r.token))
    );
    let winners: Vec<_> = [&a, &b].into_iter().filter(|x| x.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{a:?} / {b:?}");
    let loser = [a, b].into_iter().find_map(|x| x.err()).unwrap();
    assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");
    assert!(
        loser.message().contains("already used"),
        "{}",
        loser.message()
    );
    let winner = workloads(&mut c).await;
    assert_eq!(winner.len(), 1);
    assert_eq!(
        winner[0].ip, "10.128.64.2/18",
        "the workload got the reserved address"
    );
    let used = c
        .validate_reservation(pb::ValidateReservationRequest {
            token: r.token.clone(),
            runner: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (used.state.as_str(), used.workload_id.as_str()),
        ("used", winner[0].workload_id.as_str())
    );
    refused(
        c.release_reservation(pb::ReleaseReservationRequest {
            token: r.token.clone(),
        })
        .await,
        Code::FailedPrecondition,
    );

    // A token expires unused, and its address returns to the pool.
    let short = c
        .reserve_address(reserve("r1", "10.128.64.50", 1))
        .await
        .unwrap()
        .into_inner();
    let w3 = new_netns(&lab, "w3");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        refused(
            c.attach_workload(with("r1", "w3", &w3, &short.token)).await,
            Code::FailedPrecondition
        )
        .contains("expired")
    );
    let mut c3 = control(&lab).await;
    let mut freed = false;
    for _ in 0..50 {
        if c3
            .reserve_address(reserve("r1", "10.128.64.50", 60))
            .await
            .is_ok()
        {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "the expired reservation's address came back");

    // Release gives an unused address back at once.
    let rel = c
        .reserve_address(reserve("r2", "", 60))
        .await
        .unwrap()
        .into_inner();
    c.release_reservation(pb::ReleaseReservationRequest {
        token: rel.token.clone(),
    })
    .await
    .unwrap();
    refused(
        c.release_reservation(pb::ReleaseReservationRequest { token: rel.token })
            .await,
        Code::NotFound,
    );
    assert_eq!(
        c.reserve_address(reserve("r2", &rel.ip, 60))
            .await
            .unwrap()
            .into_inner()
            .ip,
        rel.ip
    );

    // A token survives a host restart.
    let keep = c
        .reserve_address(reserve("r2", "10.128.128.40", 600))
        .await
        .unwrap()
        .into_inner();
    lab.host.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    lab.start_host().await.unwrap();
    wait_until("r2 is back", dur(20), || is_active(&lab, "r2")).await;
    let mut c = control(&lab).await;
    let w4 = new_netns(&lab, "w4");
    let got = c
        .attach_workload(with("r2", "w4", &w4, &keep.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ip, "10.128.128.40/18");

    // The reserved address returns to the pool when the workload that used it detaches.
    c.detach_workload(pb::DetachWorkloadRequest {
        workload_id: "w4".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !reservations(&mut c)
            .await
            .iter()
            .any(|x| x.reservation_id == keep.reservation_id)
    );
    let again = c
        .reserve_address(reserve("r2", "10.128.128.40", 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.ip, "10.128.128.40");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_workload_ever_gets_a_special_reserved_or_vm_address() {
    let mut s = spec("strs");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    let mut forbidden: BTreeSet<String> = ["10.128.64.0", "10.128.64.1", "10.128.64.254"]
        .map(String::from)
        .into();
    for ip in ["10.128.64.2", "10.128.64.9", "10.128.64.100"] {
        let r = c
            .reserve_address(pb::ReserveAddressRequest {
                runner: "r1".into(),
                ip: ip.into(),
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        forbidden.insert(r.ip);
    }
    let vm = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "vm".into(),
            kind: pb::WorkloadKind::Vm as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    forbidden.insert(vm.ip.split('/').next().unwrap().to_string());
    // 300 attaches, 6 at a time.
    let mut got = BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    let total = 300;
    let url = lab.control_url();
    let token = lab.control_token();
    while got.len() < total {
        while tasks.len() < 6 && next < total {
            let ns = new_netns(&lab, &format!("s{next}"));
            let (url, token) = (url.clone(), token.clone());
            let id = format!("s{next}");
            tasks.spawn(async move {
                let ch = weir::api::client::connect(&url, Default::default())
                    .await
                    .unwrap();
                let mut c = weir_proto::v1::control_client::ControlClient::with_interceptor(
                    ch,
                    weir::api::auth::Bearer::new(Some(&token)).unwrap(),
                );
                c.attach_workload(attach_req("r1", &id, &ns))
                    .await
                    .map(|r| r.into_inner().ip)
            });
            next += 1;
        }
        let ip = tasks.join_next().await.unwrap().unwrap().expect("attach");
        let bare = ip.split('/').next().unwrap().to_string();
        assert!(!forbidden.contains(&bare), "a workload got {bare}");
        assert!(got.insert(bare.clone()), "{bare} handed out twice");
    }
    assert_eq!(got.len(), total);
    assert_eq!(workloads(&mut c).await.len(), total + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_watcher_misses_nothing() {
    let mut s = spec("evt");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after: 0,
            only_new: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.kind, pb::EventKind::RunnerJoined as i32);
    assert_eq!(first.runner, "r1");
    drop(stream);
    // While nobody watches: an attach, a detach, a reservation.
    let ns = new_netns(&lab, "e1");
    c.attach_workload(attach_req("r1", "e1", &ns))
        .await
        .unwrap();
    c.detach_workload(pb::DetachWorkloadRequest {
        workload_id: "e1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.reserve_address(pb::ReserveAddressRequest {
        runner: "r1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A status snapshot names the last event so far: the reservation's, as the replay shows.
    let snapshot = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_event_seq;
    // A host restart in between: the history and the numbering persist.
    lab.host.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    lab.start_host().await.unwrap();
    let mut c = control(&lab).await;
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after: first.seq,
            only_new: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut last = first.seq;
    while kinds.len() < 3 {
        let e = tokio::time::timeout(dur(10), stream.message())
            .await
            .expect("replay")
            .unwrap()
            .unwrap();
        assert_eq!(e.seq, last + 1, "no gap, no duplicate");
        last = e.seq;
        kinds.push(pb::EventKind::try_from(e.kind).unwrap());
    }
    assert_eq!(
        kinds,
        [
            pb::EventKind::WorkloadAttached,
            pb::EventKind::WorkloadDetached,
            pb::EventKind::ReservationMade
        ]
    );
    assert_eq!(
        snapshot, last,
        "GetStatus.last_event_seq is the reservation's number"
    );
    // And live events keep flowing on the same stream.
    wait_until("r1 is back", dur(20), || is_active(&lab, "r1")).await;
    let ns = new_netns(&lab, "e2");
    c.attach_workload(attach_req("r1", "e2", &ns))
        .await
        .unwrap();
    loop {
        let e = tokio::time::timeout(dur(10), stream.message())
            .await
            .expect("live")
            .unwrap()
            .unwrap();
        assert_eq!(e.seq, last + 1);
        last = e.seq;
        if e.kind == pb::EventKind::WorkloadAttached as i32 {
            assert_eq!(e.workload_id, "e2");
            break;
        }
    }
}

/// Sends a call's request bytes as they are, and hands back the answer's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A unary call of `method` carrying `body` as its (unchecked) request message.
async fn raw_call(lab: &Lab, method: &'static str, body: Vec<u8>) -> tonic::Status {
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", lab.control_token()).parse().unwrap(),
    );
    let path = http::uri::PathAndQuery::from_static(method);
    match grpc.unary::<_, Vec<u8>, _>(req, path, RawCodec).await {
        Ok(r) => panic!("{method} accepted {:?}", r.into_inner()),
        Err(st) => st,
    }
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> u64 {
    let rest = &text[text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} in {text}"))
        + prefix.len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_after_the_last_event_is_out_of_range() {
    let mut s = spec("wrng");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    // The largest `after` there is: no overflow, a clear refusal naming the last event.
    let msg = refused(
        c.watch_events(pb::WatchEventsRequest {
            after: u64::MAX,
            only_new: false,
        })
        .await,
        Code::OutOfRange,
    );
    assert!(
        msg.starts_with("after: 18446744073709551615 is beyond the last event"),
        "{msg}"
    );
    let last = number_after(&msg, "the last event, ");
    assert!(last >= 1, "r1 joined: {msg}");
    let msg = refused(
        c.watch_events(pb::WatchEventsRequest {
            after: last + 1,
            only_new: false,
        })
        .await,
        Code::OutOfRange,
    );
    assert_eq!(number_after(&msg, "the last event, "), last, "{msg}");
    // `after` = the last event: nothing to replay, and the next event arrives.
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after: last,
            only_new: false,
        })
        .await
        .unwrap()
        .into_inner();
    c.reserve_address(pb::ReserveAddressRequest {
        runner: "r1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = tokio::time::timeout(dur(10), stream.message())
        .await
        .expect("the next event")
        .unwrap()
        .unwrap();
    assert_eq!(e.seq, last + 1);
    assert_eq!(e.kind, pb::EventKind::ReservationMade as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_input_is_refused_briefly_with_the_right_code() {
    let mut s = spec("big");
    s.runners = 0;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    // A 20,000-character id: INVALID_ARGUMENT quoting a prefix (not an h2 error).
    let long = "a".repeat(20_000);
    let msg = refused(
        c.attach_workload(attach_req("r1", &long, "/run/netns/x"))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        msg.starts_with("workload_id: \"aaaa") && msg.len() < 300,
        "{msg}"
    );
    assert!(msg.contains("20000 in all"), "{msg}");
    // An unknown 20,000-character runner name is quoted briefly too.
    let msg = refused(
        c.reserve_address(pb::ReserveAddressRequest {
            runner: long.clone(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    assert!(msg.starts_with("runner: ") && msg.len() < 300, "{msg}");
    // A huge netns path is quoted briefly too (the 1 KiB cap on every status message is
    // unit-tested in api::edge).
    let msg = refused(
        c.attach_workload(attach_req("r1", "w1", &long)).await,
        Code::InvalidArgument,
    );
    assert!(msg.starts_with("netns: ") && msg.len() < 300, "{msg}");
    assert!(msg.contains("20000 in all"), "{msg}");

    // Labels: at most 64, and 16 KiB of keys and values, on attach, on list filters, and on
    // runner registration.
    let many: HashMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let big: HashMap<String, String> = (0..64)
        .map(|i| (format!("{i:0>63}"), "v".repeat(253)))
        .collect();
    for (labels, want) in [
        (&many, "labels: 65 labels; at most 64"),
        (&big, "labels: 20224 bytes"),
    ] {
        let mut req = attach_req("r1", "l1", "/run/netns/x");
        req.labels = labels.clone();
        let msg = refused(c.attach_workload(req).await, Code::InvalidArgument);
        assert!(msg.contains(want), "{msg}");
        let msg = refused(
            c.list_workloads(pb::ListWorkloadsRequest {
                labels: labels.clone(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
        assert!(msg.contains(want), "{msg}");
    }
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let mut agent = weir_proto::v1::agent_client::AgentClient::with_interceptor(
        ch,
        weir::api::auth::Bearer::new(Some(&lab.join_token())).unwrap(),
    );
    let msg = refused(
        agent
            .register(pb::RegisterRequest {
                name: "labelled".into(),
                physical_ip: "192.0.2.66".into(),
                labels: many.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("labels: 65 labels"), "{msg}");
    assert!(
        runner_view(&mut c).await.is_empty(),
        "a refused call changes nothing"
    );

    // Bytes that are no protobuf message: INVALID_ARGUMENT (field 2 claims 5 bytes, has 1).
    for method in [
        "/weir.v1.Control/AttachWorkload",
        "/weir.v1.Control/WatchEvents",
    ] {
        let st = raw_call(&lab, method, b"\x12\x05a".to_vec()).await;
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "{method}: {}",
            st.message()
        );
        assert!(
            st.message().contains("not a valid message"),
            "{}",
            st.message()
        );
    }
    // A request over the 4 MiB limit: RESOURCE_EXHAUSTED.
    let huge = "h".repeat(5 << 20);
    let msg = refused(
        c.attach_workload(attach_req("r1", &huge, "/run/netns/x"))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        msg.contains("too large") && msg.contains("4194304"),
        "{msg}"
    );
    // And the host serves on.
    assert!(workloads(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unauthenticated_calls_is_limited_but_authenticated_calls_are_served() {
    let mut s = spec("rate");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.host_keys
        .push_str("unauthenticated_calls_per_second = 5\n");
    let lab = must(Lab::up(s).await);
    let mut anonymous = control_as(&lab, None).await;
    let mut c = control(&lab).await;
    let started = std::time::Instant::now();
    let (mut unauthenticated, mut limited) = (0u32, 0u32);
    for _ in 0..40 {
        match anonymous.get_status(pb::GetStatusRequest {}).await {
            Err(st) if st.code() == Code::Unauthenticated => unauthenticated += 1,
            Err(st) if st.code() == Code::ResourceExhausted => {
                assert!(
                    st.message()
                        .contains("host.unauthenticated_calls_per_second"),
                    "{}",
                    st.message()
                );
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
        // The authenticated client's calls are never limited.
        c.get_status(pb::GetStatusRequest {}).await.unwrap();
    }
    let elapsed = started.elapsed();
    let allowed = 5 + (elapsed.as_secs_f64() * 5.0).ceil() as u32;
    eprintln!(
        "40 unauthenticated calls in {elapsed:?}: {unauthenticated} answered UNAUTHENTICATED, {limited} RESOURCE_EXHAUSTED"
    );
    assert!(
        unauthenticated >= 5 && unauthenticated <= allowed,
        "{unauthenticated} > {allowed}"
    );
    assert_eq!(unauthenticated + limited, 40);
    // Health checks need no token, so they count too.
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        codes.push(r.err().map_or(Code::Ok, |st| st.code()));
    }
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    // 50 concurrent authenticated clients (each its own connection) are all served.
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(control(&lab).await);
    }
    let started = std::time::Instant::now();
    let calls = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            for _ in 0..20 {
                c.list_runners(pb::ListRunnersRequest {}).await?;
            }
            Ok::<_, tonic::Status>(())
        })
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap().unwrap();
    }
    eprintln!(
        "50 concurrent clients x 20 authenticated calls: all served in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_listed_page_by_page() {
    let mut s = spec("page");
    s.runners = 1;
    s.workloads_per_runner = 5;
    let lab = must(Lab::up(s).await);
    let mut c = control(&lab).await;
    let all: Vec<String> = workloads(&mut c)
        .await
        .into_iter()
        .map(|w| w.workload_id)
        .collect();
    assert_eq!(all.len(), 5);
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_workloads(pb::ListWorkloadsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(r.workloads.len() <= 2);
        paged.extend(r.workloads.into_iter().map(|w| w.workload_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, all, "every workload once, in order");
    // A size beyond the maximum is lowered, not refused.
    let r = c
        .list_workloads(pb::ListWorkloadsRequest {
            page_size: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.workloads.len(), 5);
    assert!(r.next_page_token.is_empty());
    let msg = refused(
        c.list_workloads(pb::ListWorkloadsRequest {
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(msg.starts_with("page_token: "), "{msg}");
    // The CLI fetches every page.
    let out = lab
        .weir(&["workloads", "--json", "--page-size", "2"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, all);
}
