//! `weir plan` and `weir config` as a user runs them: exit status, stdout and stderr.

use std::process::{Command, Output};

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_CONFIG")
        .output()
        .expect("run weir")
}

#[test]
fn plan_json_is_the_documented_object() {
    let out = weir(&["plan", "10.128.0.0/12/6/14", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spec"], "10.128.0.0/12/6/14");
    assert_eq!(v["assignable_per_runner"], 16379);
    assert_eq!(v["runners"][0]["device"], "vxkr1");
    assert_eq!(v["runners"][0]["vni"], 101);
}

#[test]
fn a_flat_plan_shows_one_shared_subnet() {
    let out = weir(&["plan", "203.0.113.128/26", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["flat"], true);
    assert_eq!(v["host_ip"], "203.0.113.190/26");
    assert_eq!(v["runners"][0]["subnet"], "203.0.113.128/26");
    assert_eq!(v["runners"][0]["gateway"], "203.0.113.129");
    let out = weir(&["plan", "203.0.113.128/26"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("60 assignable addresses shared by every runner"),
        "{text}"
    );
    let out = weir(&["plan", "10.128.0.0/12/6/14", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["flat"], false);
}

#[test]
fn plan_table_lists_requested_runners() {
    let out = weir(&[
        "plan",
        "10.130.1.1/12/6/14",
        "--runner",
        "10",
        "--runner",
        "63",
        "--vxlan-id-base",
        "1000",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("plan          10.128.0.0/12/6/14"), "{text}");
    assert!(text.contains("vxkra") && text.contains("1010"), "{text}");
    assert!(text.contains("vxkr1r") && text.contains("1063"), "{text}");
}

fn refused(args: &[&str], want: &str) {
    let out = weir(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout must stay empty");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: one line expected, got {err}"
    );
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn plan_refusals_exit_2_with_one_line() {
    refused(&["plan", "10.128.0.0/12/6/15"], "must be 32");
    refused(&["plan", "10.128.0.0/12/6"], "expected 4 parts");
    refused(
        &["plan", "10.128.0.0/12/17/3"],
        "NODE_BITS = 17 is out of range (allowed: 1..=16)",
    );
    refused(
        &["plan", "10.128.0.0/18/7/7"],
        "SUBNET_BITS = 7 is out of range (allowed: 8..=30)",
    );
    refused(&["plan", "300.1.1.1/12/6/14"], "BASE \"300.1.1.1\"");
    refused(
        &["plan", "10.128.0.0/12/6/14", "--runner", "0"],
        "runner id 0 is out of range for plan 10.128.0.0/12/6/14 (allowed: 1..=63)",
    );
    refused(
        &["plan", "10.128.0.0/12/6/14", "--runner", "64"],
        "(allowed: 1..=63)",
    );
    refused(
        &["plan", "10.128.0.0/12/6/14", "--runner", "x"],
        "runner id \"x\" is not an integer (allowed: 1..=63)",
    );
    refused(
        &["plan", "10.0.0.0/8/16/8", "--vxlan-id-base", "16777000"],
        "vxlan id base 16777000",
    );
}

#[test]
fn config_show_prints_effective_toml_and_refuses_bad_files() {
    let dir = std::env::temp_dir().join(format!("weir-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "[overlay]\nmtu = 1400\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "show", "--config"])
        .arg(&good)
        .env("WEIR_OVERLAY__VXLAN_PORT", "4790")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let shown: toml::Table = text.parse().unwrap();
    assert_eq!(shown["overlay"]["mtu"].as_integer(), Some(1400));
    assert_eq!(shown["overlay"]["vxlan_port"].as_integer(), Some(4790));
    assert_eq!(shown["overlay"]["vxlan_id_base"].as_integer(), Some(100));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[overlay]\nvni_base = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "show", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("overlay.vni_base") && err.contains("bad.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn host_refuses_a_loopback_or_missing_reachable_address() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        // Past the plaintext check (tested in tls.rs), to the reachable-address one.
        cmd.arg("host")
            .env_remove("WEIR_CONFIG")
            .env("WEIR_HOST__ALLOW_PLAINTEXT", "true");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[("WEIR_HOST__REACHABLE_ADDRESS", "127.0.0.1")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host.reachable_address (environment variable WEIR_HOST__REACHABLE_ADDRESS): 127.0.0.1 cannot be reached"), "{err}");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host.reachable_address (not set): required"),
        "{err}"
    );
}
