//! The Python plugin example, compiled to a component by componentize-py, run by the host.

use std::collections::BTreeMap;
use std::time::Duration;

use weir::decision::{Decision, Hook, PlanInfo, Request, RunnerDecision, RunnerRequest};
use weir::policy::{Limits, wasm};

fn component() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/python-plugins/required_label.wasm");
    assert!(
        p.is_file(),
        "{} is missing: build it with componentize-py (./scripts/test.sh does it)",
        p.display()
    );
    p
}

fn request(labels: &[(&str, &str)]) -> Request {
    Request::AssignRunner(RunnerRequest {
        network: "default".into(),
        name: "r7".into(),
        physical_ip: "192.0.2.17".parse().unwrap(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        taken: vec![],
        plan: PlanInfo {
            spec: "10.128.0.0/12/6/14".into(),
            overlay: "10.128.0.0/12".parse().unwrap(),
            max_runners: 63,
        },
    })
}

#[test]
fn the_python_component_decides_and_refuses_bad_settings() {
    let path = component();
    let compiled = wasm::compile(&path, None).unwrap();
    assert_eq!(compiled.hooks, [Hook::Allocator]);
    // An embedded interpreter: more memory and time than a Rust plugin.
    let limits = Limits {
        deadline: Duration::from_secs(5),
        memory: 128 << 20,
        max_output: 10_000,
    };
    let p = wasm::WasmPlugin::new(
        "py",
        &path,
        &compiled,
        Hook::Allocator,
        limits,
        vec![("label".into(), "gpu".into())],
    )
    .unwrap();
    assert_eq!(
        p.call(&request(&[("gpu", "a100")])).unwrap(),
        Decision::Runner(RunnerDecision::Builtin)
    );
    match p.call(&request(&[("role", "x")])).unwrap() {
        Decision::Runner(RunnerDecision::Deny(reason)) => {
            assert!(reason.contains("'gpu'"), "{reason}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let e = wasm::WasmPlugin::new(
        "py",
        &path,
        &compiled,
        Hook::Allocator,
        limits,
        vec![("colour".into(), "x".into())],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("unknown setting 'colour'"), "{e}");
}
