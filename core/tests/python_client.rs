//! The Python scheduler example (grpcio) against a real lab.

mod common;

use common::*;
use weir::lab::Lab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_scheduler_example_runs_a_job_against_the_lab() {
    let mut s = spec("py");
    s.runners = 3;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let master = new_netns(&lab, "m");
    let w1 = new_netns(&lab, "w1");
    let w2 = new_netns(&lab, "w2");
    // Two workloads per page: the job's three are listed over two pages.
    let out = python_scheduler(&lab)
        .args(["--page-size", "2"])
        .args(["--master", &format!("r1={master}")])
        .args([
            "--worker",
            &format!("r2={w1}"),
            "--worker",
            &format!("r3={w2}"),
        ])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["plan"], "10.128.0.0/12/6/14");
    assert_eq!(v["reserved_ip"], "10.128.64.2");
    assert_eq!(
        v["master"]["ip"], "10.128.64.2/18",
        "the master got the reserved address"
    );
    assert_eq!(v["workers"][0]["ip"], "10.128.128.2/18");
    assert_eq!(v["workers"][1]["ip"], "10.128.192.2/18");
    assert_eq!(v["listed"].as_array().unwrap().len(), 3);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for want in [
        "reservation_made",
        "reservation_used",
        "workload_attached",
        "workload_detached",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "workload_detached").count(),
        3
    );
    // Everything was detached.
    assert_eq!(lab.status().unwrap()["workloads"], 0);
}
