//! Policy plugins decided by real WebAssembly components in the host of a real lab: allocation
//! that changes what the kernel gets, hostile plugins contained, hot reload under load.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tonic::Code;
use weir::lab::Lab;
use weir_proto::v1 as pb;

async fn register(lab: &Lab, name: &str, ip: &str) -> Result<pb::RegisterResponse, tonic::Status> {
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let bearer = weir::api::auth::Bearer::new(Some(&lab.join_token())).unwrap();
    weir_proto::v1::agent_client::AgentClient::with_interceptor(ch, bearer)
        .register(pb::RegisterRequest {
            name: name.into(),
            physical_ip: ip.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_admission_refuses_a_runner_outside_its_cidrs() {
    let mut s = spec("adm");
    s.runners = 2;
    s.workloads_per_runner = 0;
    s.host_extra = plugin_toml(
        "admission",
        &plugin_path("underlay_admission"),
        "allocator",
        "deny",
        "[policy.plugins.config]\nallowed_cidrs = \"192.0.2.8/30,192.0.2.12/32\"",
    );
    let mut lab = must(Lab::up(s).await);
    assert!(
        is_active(&lab, "r1") && is_active(&lab, "r2"),
        "192.0.2.11 and .12 are allowed"
    );
    // A runner at 192.0.2.13 is refused, with the plugin named.
    let st = register(&lab, "r3", "192.0.2.13")
        .await
        .expect_err("outside the CIDRs");
    assert_eq!(st.code(), Code::PermissionDenied);
    assert!(
        st.message().contains("\"admission\"") && st.message().contains("192.0.2.13"),
        "{}",
        st.message()
    );
    assert!(
        runner_status(&lab, "r3").is_none(),
        "a refused runner holds nothing"
    );
    // The real runner daemon there logs why and keeps retrying.
    lab.spec.ready_timeout = Duration::from_secs(2);
    let err = lab.add_runner(3).await.expect_err("refused").to_string();
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("admission"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_picking_plugin_decides_the_addresses_workloads_get() {
    let mut s = spec("pick");
    s.runners = 1;
    s.workloads_per_runner = 2;
    s.host_extra = plugin_toml(
        "highest",
        &plugin_path("highest_address"),
        "allocator",
        "deny",
        "",
    );
    let lab = must(Lab::up(s).await);
    // The kernel holds the plugin's choices: the highest free addresses of runner 1's subnet.
    assert_eq!(workload_ip(&lab, 1, 1).await.to_string(), "10.128.127.253");
    assert_eq!(workload_ip(&lab, 1, 2).await.to_string(), "10.128.127.252");
    assert!(lab.ping("r1-w1", "10.128.127.252".parse().unwrap()));
    // And the decision log names the plugin and its version.
    let log = std::fs::read_to_string(lab.dir.join("host-state/decisions.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let addr: Vec<_> = entries
        .iter()
        .filter(|e| e["call"] == "assign-address")
        .collect();
    assert_eq!(addr.len(), 2, "{log}");
    assert!(addr.iter().all(|e| e["plugin"] == "highest"
        && e["applied"] == true
        && e["input_digest"].as_str().unwrap().len() == 64));
}

/// Start with a well-behaved plugin on `hook` (so the runner can register), swap in the hostile
/// `plugin` by hot reload, attach twice, and check the fault is contained.
async fn hostile(
    tag: &str,
    plugin: &str,
    hook: &str,
    on_error: &str,
    cause: &str,
    extra: &str,
) -> Lab {
    let mut s = spec(tag);
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    let active = lab.dir.join("plugin.wasm");
    let (good, good_config) = match hook {
        "firewall" => (
            "tenant_isolation",
            "[policy.plugins.config]\nuntenanted = \"allow\"\n",
        ),
        _ => ("default_allocator", ""),
    };
    std::fs::copy(plugin_path(good), &active).unwrap();
    lab.spec.host_extra = format!(
        "{}{good_config}[policy]\nwatch = false\n",
        plugin_toml(plugin, &active, hook, on_error, extra)
    );
    lab.start_host().await.unwrap();
    lab.add_runner(1).await.unwrap();
    let mut c = control(&lab).await;
    let tmp = lab.dir.join("plugin.wasm.tmp");
    std::fs::copy(plugin_path(plugin), &tmp).unwrap();
    std::fs::rename(&tmp, &active).unwrap();
    let r = c
        .reload_plugins(pb::ReloadPluginsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.plugins[0].result, "reloaded", "{r:?}");
    for i in 0..2 {
        let ns = new_netns(&lab, &format!("h{i}"));
        let r = c
            .attach_workload(attach_req("r1", &format!("h{i}"), &ns))
            .await;
        match on_error {
            "fallback" => {
                let r = r.unwrap_or_else(|e| {
                    panic!("{plugin}: fallback must let the attach through: {e:?}")
                });
                assert_eq!(
                    r.into_inner().ip,
                    format!("10.128.64.{}/18", 2 + i),
                    "{plugin}: the built-in policy decided"
                );
            }
            _ => {
                let st = r.expect_err("deny refuses the attach");
                assert_eq!(st.code(), Code::Unavailable, "{plugin}: {}", st.message());
                assert!(
                    st.message().contains(&format!("\"{plugin}\"")),
                    "{}",
                    st.message()
                );
            }
        }
    }
    // The daemon is alive and answers.
    assert!(c.get_status(pb::GetStatusRequest {}).await.is_ok());
    // An event names the plugin and the cause, for each decision.
    let faults = events_of(&lab, pb::EventKind::PluginFault).await;
    assert!(faults.len() >= 2, "{plugin}: {faults:?}");
    assert!(
        faults
            .iter()
            .all(|e| e.plugin == plugin && e.detail.contains(cause)),
        "{plugin}: {faults:?}"
    );
    // The host's log has a clear line.
    let log = std::fs::read_to_string(lab.dir.join("host.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("policy plugin fault") && l.contains(plugin) && l.contains(cause)),
        "{plugin}: no log line with the cause {cause}"
    );
    let plugins = c
        .get_plugins(pb::GetPluginsRequest {})
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert!(plugins[0].faults >= 2, "{plugins:?}");
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_meets_its_deadline() {
    hostile(
        "loop",
        "endless_loop",
        "allocator",
        "fallback",
        "deadline",
        "deadline = \"30ms\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_meets_its_cap() {
    hostile(
        "bomb",
        "memory_bomb",
        "allocator",
        "deny",
        "memory",
        "memory = \"8MiB\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_is_a_contained_trap() {
    let lab = hostile("panic", "panics", "allocator", "fallback", "trap", "").await;
    let log = std::fs::read_to_string(lab.dir.join("host.log")).unwrap();
    assert!(
        log.contains("deliberate panic in a test plugin"),
        "the panic message reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_output_is_a_fault() {
    hostile("wrong", "wrong_output", "allocator", "deny", "output", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_id_outside_the_plan_is_a_fault() {
    let mut s = spec("wrid");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.host_extra = plugin_toml(
        "wrong_output",
        &plugin_path("wrong_output"),
        "allocator",
        "deny",
        "",
    );
    let lab = must(Lab::up(s).await);
    let st = register(&lab, "r9", "192.0.2.19")
        .await
        .expect_err("id outside the plan");
    assert_eq!(st.code(), Code::Unavailable);
    assert!(
        st.message().contains("outside the plan"),
        "{}",
        st.message()
    );
    assert!(runner_status(&lab, "r9").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rules_are_refused() {
    hostile(
        "huge",
        "huge_output",
        "firewall",
        "fallback",
        "",
        "memory = \"64MiB\"\nmax_output = 1000",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_has_no_file_or_socket_to_escape_to() {
    let lab = hostile("esc", "escape", "allocator", "deny", "trap", "").await;
    let log = std::fs::read_to_string(lab.dir.join("host.log")).unwrap();
    assert!(
        log.contains("no ambient capabilities"),
        "the plugin saw its file and socket attempts fail"
    );
    assert!(!log.contains("ESCAPED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_refuses_files_that_are_not_policy_components() {
    let dir = std::env::temp_dir().join(format!("weir-badplugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    let core_module = dir.join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (
            garbage.clone(),
            "is not a WebAssembly component (not WebAssembly)",
        ),
        (core_module.clone(), "a core module, not a component"),
        (
            plugin_path("unknown_world"),
            "implements no weir:policy world (it exports: run)",
        ),
        (
            plugin_path("tenant_isolation"),
            "does not implement the allocator world",
        ),
        (
            plugin_path("old_interface"),
            "implements weir:policy@0.1.0, but this host needs weir:policy@0.2.0",
        ),
    ];
    for (file, want) in cases {
        let cfg = dir.join("host.toml");
        std::fs::write(
            &cfg,
            format!(
                "[host]\nreachable_address = \"192.0.2.1\"\nallow_plaintext = true\nstate_dir = \"{}\"\n[auth]\ninsecure = true\n{}",
                dir.join("state").display(),
                plugin_toml("bad", &file, "allocator", "deny", "")
            ),
        )
        .unwrap();
        // It must fail before touching any kernel state: run it in a namespace anyway.
        let ns = format!("weir-badplugin-{}", std::process::id());
        weir::dataplane::netns::create(&ns).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["--config"]).arg(&cfg).arg("host");
        weir::lab::run_in_namespace(&mut cmd, &weir::dataplane::netns::named_path(&ns)).unwrap();
        let out = cmd.output().unwrap();
        weir::dataplane::netns::delete(&ns).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", file.display());
        assert!(
            err.contains("policy plugin \"bad\"") && err.contains(want),
            "{}: {err}",
            file.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_attach_and_each_decision_names_one_version() {
    let mut s = spec("hot");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s.clone()).await);
    let active = lab.dir.join("allocator.wasm");
    let a = plugin_path("default_allocator");
    let b = plugin_path("highest_address");
    std::fs::copy(&a, &active).unwrap();
    // Reloads come from the RPC only, so the test knows exactly when they happen.
    // What is tested is the reload, not the deadline: a decision that meets the new
    // version's compilation on a loaded 2-core machine may take longer than 50 ms.
    lab.spec.host_extra = format!(
        "{}[policy]\nwatch = false\n",
        plugin_toml(
            "alloc",
            &active,
            "allocator",
            "deny",
            "deadline = \"500ms\""
        )
    );
    lab.start_host().await.unwrap();
    lab.add_runner(1).await.unwrap();
    let version_of = |p: &std::path::Path| weir::policy::wasm::compile(p, None).unwrap().version;
    let (va, vb) = (version_of(&a), version_of(&b));

    let total = 1000;
    let url = lab.control_url();
    let token = lab.control_token();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    let mut swaps = 0;
    let mut c = control(&lab).await;
    while done < total {
        while tasks.len() < 4 && next < total {
            let ns = new_netns(&lab, &format!("l{next}"));
            let (url, token, id) = (url.clone(), token.clone(), format!("l{next}"));
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
        let r = tasks.join_next().await.unwrap().unwrap();
        r.unwrap_or_else(|e| panic!("attach {done} failed during hot reload: {e:?}"));
        done += 1;
        if done % 100 == 50 && swaps < 10 {
            // Swap the file atomically and reload while attaches are in flight.
            let src = if swaps % 2 == 0 { &b } else { &a };
            let tmp = lab.dir.join("allocator.wasm.tmp");
            std::fs::copy(src, &tmp).unwrap();
            std::fs::rename(&tmp, &active).unwrap();
            let r = c
                .reload_plugins(pb::ReloadPluginsRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.plugins[0].result, "reloaded", "{r:?}");
            swaps += 1;
        }
    }
    assert_eq!(swaps, 10);
    let log = std::fs::read_to_string(lab.dir.join("host-state/decisions.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let addr: Vec<_> = entries
        .iter()
        .filter(|e| e["call"] == "assign-address")
        .collect();
    assert_eq!(addr.len(), total, "one decision per attach");
    let versions: BTreeSet<&str> = addr
        .iter()
        .map(|e| e["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        BTreeSet::from([va.as_str(), vb.as_str()]),
        "every decision names exactly one of the two versions"
    );
    // Each decision is the one its version makes: lowest free vs highest free.
    for e in &addr {
        let ip: std::net::Ipv4Addr = e["decision"]["address"]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let high = ip.octets()[1] == 128 && ip.octets()[2] >= 96;
        assert_eq!(high, e["version"] == vb.as_str(), "{e}");
    }
    let reloads = events_of(&lab, pb::EventKind::PluginReloaded).await;
    assert_eq!(reloads.len(), 10, "{reloads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_version_never_replaces_a_working_one() {
    let mut s = spec("brk");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    let active = lab.dir.join("allocator.wasm");
    std::fs::copy(plugin_path("highest_address"), &active).unwrap();
    lab.spec.host_extra = format!(
        "{}[policy]\nwatch_interval = \"100ms\"\n",
        plugin_toml("alloc", &active, "allocator", "deny", "")
    );
    lab.start_host().await.unwrap();
    lab.add_runner(1).await.unwrap();
    let mut c = control(&lab).await;
    let before = c
        .get_plugins(pb::GetPluginsRequest {})
        .await
        .unwrap()
        .into_inner()
        .plugins[0]
        .clone();
    // The file watcher sees a broken file and a component of the wrong world: both refused.
    for bad in [
        b"garbage".to_vec(),
        std::fs::read(plugin_path("tenant_isolation")).unwrap(),
    ] {
        let tmp = lab.dir.join("allocator.wasm.tmp");
        std::fs::write(&tmp, bad).unwrap();
        std::fs::rename(&tmp, &active).unwrap();
        let mut refused = false;
        for _ in 0..50 {
            let p = c
                .get_plugins(pb::GetPluginsRequest {})
                .await
                .unwrap()
                .into_inner()
                .plugins[0]
                .clone();
            if !p.last_error.is_empty() {
                assert_eq!(
                    p.version, before.version,
                    "the working version keeps serving"
                );
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused, "the watcher noticed the broken file");
        let ns = new_netns(&lab, &format!("b{}", rand_suffix()));
        let ip = c
            .attach_workload(attach_req("r1", &format!("b{}", rand_suffix()), &ns))
            .await
            .unwrap()
            .into_inner()
            .ip;
        assert!(
            ip.starts_with("10.128.127."),
            "still the highest-address plugin: {ip}"
        );
        // Reset the error marker for the next round by restoring the good file.
        std::fs::copy(plugin_path("highest_address"), &tmp).unwrap();
        std::fs::rename(&tmp, &active).unwrap();
        for _ in 0..50 {
            let p = c
                .get_plugins(pb::GetPluginsRequest {})
                .await
                .unwrap()
                .into_inner()
                .plugins[0]
                .clone();
            if p.last_error.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rand_suffix() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}
