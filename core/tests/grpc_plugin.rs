//! The Python gRPC policy plugin: the same decisions as its WebAssembly twin, and a dead
//! plugin gets the configured fallback or denial.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use weir::decision::{self as t, Decision, Hook, Request};
use weir::lab::Lab;
use weir::policy::{Limits, grpc::GrpcPlugin, wasm};
use weir_proto::v1 as pb;

/// Start the Python plugin on a unix socket and wait for its "ready" line.
fn start_python(socket: &std::path::Path) -> Child {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python-policy-plugin/plugin.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the plugin did not start");
    child
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn requests() -> Vec<Request> {
    let plan = t::PlanInfo {
        spec: "10.0.0.0/22/2/8".into(),
        overlay: "10.0.0.0/22".parse().unwrap(),
        max_runners: 3,
    };
    let taken = |id: u32, runner: Option<&str>, ip: &str, last: i64, active: bool| t::TakenId {
        id,
        runner: runner.map(String::from),
        physical_ip: ip.parse().unwrap(),
        last_seen_ms: last,
        active,
    };
    let runner = |name: &str, ip: &str, taken: Vec<t::TakenId>| {
        Request::AssignRunner(t::RunnerRequest {
            network: "default".into(),
            name: name.into(),
            physical_ip: ip.parse().unwrap(),
            labels: Default::default(),
            taken,
            plan: plan.clone(),
        })
    };
    let addr = |subnet: &str, gw: &str, first: &str, last: &str, taken: &[&str]| {
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let mut r = t::AddressRequest::on_subnet("r1", "w", subnet.parse().unwrap(), &[]);
        r.gateway = ip(gw);
        r.first = ip(first);
        r.last = ip(last);
        let mut held: Vec<_> = taken.iter().map(|s| ip(s)).collect();
        held.push(ip(gw));
        held.push(std::net::Ipv4Addr::from(
            u32::from(r.subnet.network()) + 254,
        ));
        r.pool = t::PoolView::from_held(r.first, r.last, &held);
        Request::AssignAddress(r)
    };
    vec![
        runner("a", "192.0.2.1", vec![]),
        runner(
            "a",
            "192.0.2.1",
            vec![taken(2, Some("a"), "192.0.2.1", 5, true)],
        ),
        runner(
            "b",
            "192.0.2.9",
            vec![
                taken(1, None, "192.0.2.9", 5, true),
                taken(2, Some("a"), "192.0.2.1", 5, true),
            ],
        ),
        runner(
            "c",
            "192.0.2.3",
            vec![
                taken(1, Some("a"), "192.0.2.21", 5, true),
                taken(3, Some("b"), "192.0.2.22", 5, true),
            ],
        ),
        runner(
            "d",
            "192.0.2.4",
            vec![
                taken(1, Some("a"), "192.0.2.21", 30, false),
                taken(2, Some("b"), "192.0.2.22", 20, false),
                taken(3, Some("c"), "192.0.2.23", 10, true),
            ],
        ),
        runner(
            "e",
            "192.0.2.5",
            vec![
                taken(1, Some("a"), "192.0.2.21", 30, true),
                taken(2, Some("b"), "192.0.2.22", 20, true),
                taken(3, Some("c"), "192.0.2.23", 10, true),
            ],
        ),
        addr("10.0.1.0/24", "10.0.1.1", "10.0.1.2", "10.0.1.253", &[]),
        addr(
            "10.0.1.0/24",
            "10.0.1.1",
            "10.0.1.2",
            "10.0.1.253",
            &["10.0.1.2", "10.0.1.3", "10.0.1.5"],
        ),
        addr(
            "10.128.64.0/18",
            "10.128.64.1",
            "10.128.64.2",
            "10.128.127.253",
            &["10.128.64.2", "10.128.64.253"],
        ),
        addr(
            "10.128.64.0/18",
            "10.128.64.1",
            "10.128.64.250",
            "10.128.64.255",
            &[
                "10.128.64.250",
                "10.128.64.251",
                "10.128.64.252",
                "10.128.64.253",
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_plugin_decides_like_its_wasm_twin() {
    let dir = std::env::temp_dir().join(format!("weir-pyplugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("p.sock");
    let _py = Killed(start_python(&socket));
    let url = format!("unix://{}", socket.display());
    let grpc = GrpcPlugin::connect("py", &url, &[], Duration::from_secs(2))
        .await
        .unwrap();
    let twin_path = plugin_path("default_allocator");
    let compiled = wasm::compile(&twin_path, None).unwrap();
    let twin = wasm::WasmPlugin::new(
        "twin",
        &twin_path,
        &compiled,
        Hook::Allocator,
        Limits::default(),
        vec![],
    )
    .unwrap();
    for req in requests() {
        let from_py = grpc.call(&req, Duration::from_secs(2)).await.unwrap();
        let from_wasm = twin.call(&req).unwrap();
        assert_eq!(from_py, from_wasm, "{req:?}");
        assert!(
            !matches!(from_py, Decision::Runner(t::RunnerDecision::Builtin)),
            "explicit decisions"
        );
    }
    // Its configure refuses unknown settings.
    let err = GrpcPlugin::connect(
        "py",
        &url,
        &[("bogus".into(), "1".into())],
        Duration::from_secs(2),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("unknown settings: bogus"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

async fn lab_with_python(tag: &str, on_error: &str) -> (Lab, Killed) {
    let mut s = spec(tag);
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    let socket = lab.dir.join("policy.sock");
    let py = Killed(start_python(&socket));
    lab.spec.host_extra = format!(
        "[[policy.plugins]]\nname = \"py-alloc\"\nendpoint = \"unix://{}\"\nhooks = [\"allocator\"]\non_error = \"{on_error}\"\ndeadline = \"300ms\"\n",
        socket.display()
    );
    lab.start_host().await.unwrap();
    lab.add_runner(1).await.unwrap();
    (lab, py)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_grpc_plugin_gets_deny_within_its_deadline() {
    let (lab, mut py) = lab_with_python("pyd", "deny").await;
    let mut c = control(&lab).await;
    let ns = new_netns(&lab, "a");
    let r = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "a".into(),
            netns: ns,
            ..Default::default()
        })
        .await;
    assert_eq!(
        r.unwrap().into_inner().ip,
        "10.128.64.2/18",
        "the Python plugin decided"
    );
    let _ = py.0.kill();
    let _ = py.0.wait();
    let ns = new_netns(&lab, "b");
    let started = Instant::now();
    let st = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "b".into(),
            netns: ns,
            ..Default::default()
        })
        .await
        .expect_err("a dead plugin with on_error = deny refuses");
    assert_eq!(st.code(), Code::Unavailable);
    assert!(st.message().contains("\"py-alloc\""), "{}", st.message());
    // It did not hang: the deadline (300 ms) bounds it, with slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let faults = events_of(&lab, pb::EventKind::PluginFault).await;
    assert!(faults.iter().any(|e| e.plugin == "py-alloc"), "{faults:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_grpc_plugin_falls_back_to_the_builtin_policy() {
    let (lab, mut py) = lab_with_python("pyf", "fallback").await;
    let mut c = control(&lab).await;
    let _ = py.0.kill();
    let _ = py.0.wait();
    let ns = new_netns(&lab, "a");
    let r = c
        .attach_workload(pb::AttachWorkloadRequest {
            runner: "r1".into(),
            workload_id: "a".into(),
            netns: ns,
            ..Default::default()
        })
        .await
        .expect("fallback lets the attach through");
    assert_eq!(
        r.into_inner().ip,
        "10.128.64.2/18",
        "the built-in policy decided"
    );
}
