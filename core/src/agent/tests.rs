//! The agent's rules, through the recording fake kernel: no root, no namespaces.

use std::sync::Arc;
use std::time::Duration;

use weir_proto::v1 as pb;

use super::*;
use crate::dataplane::fake_runner::{Call, FailOn, FakeRunnerKernel};

const NET: &str = "default";
const BRIDGE: &str = "kohaku-overlay";

fn assignment(grace_ms: u32) -> pb::RegisterResponse {
    pb::RegisterResponse {
        runner_id: 1,
        generation: 1,
        host_physical_ip: "192.0.2.1".into(),
        workload_grace_ms: grace_ms,
        networks: vec![pb::NetworkAssignment {
            network: NET.into(),
            mode: pb::NetworkMode::Overlay as i32,
            plan: "10.128.0.0/12/6/14".into(),
            overlay_cidr: "10.128.0.0/12".into(),
            subnet: "10.128.64.0/18".into(),
            gateway: "10.128.64.1".into(),
            host_ip: "10.128.0.1/12".into(),
            host_ip_on_subnet: "10.128.64.254".into(),
            vni: 101,
            vxlan_id_base: 100,
            vxlan_port: 4789,
            mtu: 1450,
            tunnel_name: "vxlan0".into(),
            bridge_name: BRIDGE.into(),
            masquerade: true,
            egress: "local".into(),
            direct_prefix: String::new(),
        }],
    }
}

fn agent(uplink: Option<&str>) -> (Arc<FakeRunnerKernel>, Agent) {
    let fake = Arc::new(FakeRunnerKernel::new());
    let agent = Agent::with_kernel(
        fake.clone(),
        uplink.map(str::to_string),
        NetnsPolicy::default(),
    );
    (fake, agent)
}

/// An agent whose networks are built (grace period `grace_ms`).
async fn built(grace_ms: u32) -> (Arc<FakeRunnerKernel>, Agent) {
    let (fake, agent) = agent(Some("eth0"));
    agent
        .apply(&assignment(grace_ms), "192.0.2.10".parse().unwrap())
        .await
        .unwrap();
    fake.clear_calls();
    (fake, agent)
}

fn ns_path(workload: &str) -> String {
    format!("/run/netns/{workload}")
}

/// A container workload `id` with address 10.128.64.`host`, its namespace made in the fake.
fn container(fake: &FakeRunnerKernel, id: &str, host: u8) -> pb::WorkloadSpec {
    fake.add_namespace(ns_path(id));
    pb::WorkloadSpec {
        network: NET.into(),
        workload_id: id.into(),
        netns: ns_path(id),
        ifname: "eth0".into(),
        address: format!("10.128.64.{host}/18"),
        gateway: "10.128.64.1".into(),
        mtu: 1450,
        default_route: true,
        ..Default::default()
    }
}

fn deny_all() -> pb::FirewallDecision {
    pb::FirewallDecision {
        rules: vec![],
        default_verdict: "deny".into(),
    }
}

async fn attach(agent: &Agent, spec: &pb::WorkloadSpec) -> pb::CommandResult {
    agent.handle(pb::command::Op::Attach(spec.clone())).await
}

fn key(id: &str) -> (String, String) {
    (NET.to_string(), id.to_string())
}

fn count(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls.iter().filter(|c| f(c)).count()
}

fn position(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such call in {calls:#?}"))
}

#[tokio::test]
async fn an_attach_records_the_workload_and_its_identity() {
    let (fake, agent) = built(0).await;
    let spec = container(&fake, "a", 2);
    let id = fake.namespace_identity(Path::new(&ns_path("a"))).unwrap();
    let r = attach(&agent, &spec).await;
    assert_eq!(r.error, "");
    assert!(!r.nothing_applied);
    assert_eq!(
        r.netns_id,
        Some(decode::ns_pb(id)),
        "the answer names the identity"
    );
    assert_eq!(fake.workloads(), [key("a")].into());
    let held = agent.held(false).await;
    assert_eq!(held.workloads.len(), 1);
    assert_eq!(held.workloads[0].workload_id, "a");
    assert_eq!(held.workloads[0].netns, ns_path("a"));
    assert_eq!(held.workloads[0].netns_id, Some(decode::ns_pb(id)));
}

#[tokio::test]
async fn a_repeat_attach_passes_the_identity_it_was_first_given() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    let first = attach(&agent, &spec).await;
    spec.netns_id = first.netns_id;
    let again = attach(&agent, &spec).await;
    assert_eq!(again.error, "");
    let expected = first.netns_id.map(decode::ns_id);
    assert!(
        fake.calls().contains(&Call::AttachContainer {
            workload: "a".into(),
            bridge: fake.bridge(BRIDGE).unwrap(),
            expected,
            announce: false,
        }),
        "{:#?}",
        fake.calls()
    );
    assert_eq!(fake.links().len(), 1, "idempotent: one interface");
}

#[tokio::test]
async fn a_refused_new_attach_leaves_nothing_and_says_nothing_applied() {
    let (fake, agent) = built(0).await;
    let spec = container(&fake, "a", 2);
    fake.fail(FailOn::Attach("a".into()));
    let r = attach(&agent, &spec).await;
    assert!(r.error.contains("fails"), "{}", r.error);
    assert!(r.nothing_applied);
    assert!(fake.workloads().is_empty());
    let main = fake.bridge(BRIDGE).unwrap();
    assert_eq!(fake.ports(main), 0, "the counted port was given back");
}

#[tokio::test]
async fn a_failed_new_attach_removes_its_interface_again_and_says_nothing_applied() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    // The interface is made, then the firewall rules cannot be read.
    spec.firewall = Some(pb::FirewallDecision {
        rules: vec![],
        default_verdict: "perhaps".into(),
    });
    let r = attach(&agent, &spec).await;
    assert!(r.error.starts_with("firewall rules:"), "{}", r.error);
    assert!(r.nothing_applied);
    let calls = fake.calls();
    let made = position(&calls, |c| matches!(c, Call::AttachContainer { .. }));
    let removed = position(&calls, |c| *c == Call::DetachMany(vec![key("a")]));
    assert!(made < removed);
    assert!(fake.workloads().is_empty(), "its interface is gone again");
    assert!(agent.held(false).await.workloads.is_empty());
}

#[tokio::test]
async fn a_failed_repeat_of_a_known_workload_keeps_what_it_had() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    assert_eq!(attach(&agent, &spec).await.error, "");
    spec.firewall = Some(pb::FirewallDecision {
        rules: vec![],
        default_verdict: "perhaps".into(),
    });
    let r = attach(&agent, &spec).await;
    assert!(!r.error.is_empty());
    assert!(!r.nothing_applied, "the runner still holds the workload");
    assert_eq!(fake.workloads(), [key("a")].into());
    assert_eq!(
        count(&fake.calls(), |c| matches!(c, Call::DetachMany(_))),
        0
    );
}

#[tokio::test]
async fn a_bridge_that_reports_full_is_retried_once_on_another() {
    let (fake, agent) = built(0).await;
    let main = fake.bridge(BRIDGE).unwrap();
    fake.fail(FailOn::BridgeFull(BRIDGE.into()));
    let r = attach(&agent, &container(&fake, "a", 2)).await;
    assert_eq!(r.error, "");
    let calls = fake.calls();
    assert_eq!(count(&calls, |c| *c == Call::BridgeFull(main)), 1);
    assert_eq!(
        count(&calls, |c| matches!(c, Call::AttachContainer { .. })),
        2
    );
    let link = &fake.links()[0];
    assert!(
        link.master.is_some_and(|m| m != main),
        "on an overflow bridge: {link:?}"
    );
}

#[tokio::test]
async fn when_every_bridge_is_full_the_attach_fails_after_one_retry() {
    let (fake, agent) = built(0).await;
    fake.fail(FailOn::AllBridgesFull);
    let r = attach(&agent, &container(&fake, "a", 2)).await;
    assert!(r.error.contains("has no free port"), "{}", r.error);
    assert!(r.nothing_applied);
    let calls = fake.calls();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::AttachContainer { .. })),
        2,
        "one retry, not a loop"
    );
    assert_eq!(count(&calls, |c| matches!(c, Call::PortFreed(_))), 1);
    assert!(fake.workloads().is_empty());
}

#[tokio::test]
async fn detach_many_removes_exactly_the_named_workloads_in_one_batch_and_frees_their_ports() {
    let (fake, agent) = built(0).await;
    for (id, host) in [("a", 2), ("b", 3), ("c", 4)] {
        assert_eq!(attach(&agent, &container(&fake, id, host)).await.error, "");
    }
    let main = fake.bridge(BRIDGE).unwrap();
    assert_eq!(fake.ports(main), 3);
    fake.clear_calls();
    agent.detach_many(&[key("a"), key("c")]).await.unwrap();
    let calls = fake.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::DetachMany(_)))
            .collect::<Vec<_>>(),
        [&Call::DetachMany(vec![key("a"), key("c")])],
        "one batch"
    );
    assert_eq!(count(&calls, |c| *c == Call::PortFreed(main)), 2);
    assert_eq!(fake.ports(main), 1);
    assert_eq!(fake.workloads(), [key("b")].into());
    let held = agent.held(false).await;
    assert_eq!(held.workloads.len(), 1);
    assert_eq!(held.workloads[0].workload_id, "b");
}

#[tokio::test]
async fn only_an_address_this_runner_gave_back_is_announced_again() {
    let (fake, agent) = built(0).await;
    let announced = |fake: &FakeRunnerKernel, id: &str| {
        fake.calls().iter().find_map(|c| match c {
            Call::AttachContainer {
                workload, announce, ..
            } if workload == id => Some(*announce),
            _ => None,
        })
    };
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    assert_eq!(attach(&agent, &container(&fake, "b", 3)).await.error, "");
    assert_eq!(
        announced(&fake, "a"),
        Some(false),
        "a fresh address floods nobody"
    );
    agent.detach_many(&[key("a")]).await.unwrap();
    // Another workload gets a's address: neighbours may still hold a's MAC for it.
    assert_eq!(attach(&agent, &container(&fake, "c", 2)).await.error, "");
    assert_eq!(announced(&fake, "c"), Some(true));
    // An address never given back stays quiet after a detach as well.
    assert_eq!(attach(&agent, &container(&fake, "d", 4)).await.error, "");
    assert_eq!(announced(&fake, "d"), Some(false));
}

#[tokio::test]
async fn a_missing_workload_is_fine_to_detach() {
    let (fake, agent) = built(0).await;
    let r = agent
        .handle(pb::command::Op::Detach(pb::WorkloadRef {
            network: NET.into(),
            workload_id: "never-attached".into(),
            give_back: false,
        }))
        .await;
    assert_eq!(r.error, "");
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| matches!(c, Call::DetachMany(_)))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_detach_the_kernel_refuses_is_reported() {
    let (fake, agent) = built(0).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    fake.fail(FailOn::DetachMany);
    let e = agent.detach_many(&[key("a")]).await.unwrap_err();
    assert!(matches!(e, AgentError::Dataplane(_)), "{e}");
    assert_eq!(fake.workloads(), [key("a")].into(), "nothing removed");
}

#[tokio::test]
async fn sync_removes_stale_interfaces_in_one_batch_and_restores_the_wanted_ones() {
    let (fake, agent) = built(0).await;
    let a = container(&fake, "a", 2);
    assert_eq!(attach(&agent, &a).await.error, "");
    fake.add_workload_link(NET, "old1");
    fake.add_workload_link(NET, "old2");
    let b = container(&fake, "b", 3);
    fake.clear_calls();
    let r = agent
        .handle(pb::command::Op::Sync(pb::WorkloadSet {
            workloads: vec![a, b],
        }))
        .await;
    assert_eq!(r.error, "");
    let calls = fake.calls();
    let batches: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Call::DetachMany(_)))
        .collect();
    assert_eq!(batches, [&Call::DetachMany(vec![key("old1"), key("old2")])]);
    assert_eq!(fake.workloads(), [key("a"), key("b")].into());
    let held: BTreeSet<String> = r
        .held
        .unwrap()
        .workloads
        .into_iter()
        .map(|h| h.workload_id)
        .collect();
    assert_eq!(held, ["a".to_string(), "b".to_string()].into());
}

#[tokio::test]
async fn sync_notes_a_workload_whose_namespace_is_missing_instead_of_failing() {
    let (fake, agent) = built(1).await;
    let mut gone = container(&fake, "gone", 2);
    gone.netns = "/run/netns/nowhere".into();
    let ok = container(&fake, "ok", 3);
    let r = agent
        .handle(pb::command::Op::Sync(pb::WorkloadSet {
            workloads: vec![gone, ok],
        }))
        .await;
    assert_eq!(r.error, "", "a missing namespace is no failure of the sync");
    assert_eq!(fake.workloads(), [key("ok")].into());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reported = agent.audit().await;
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].workload_id, "gone");
    assert!(
        reported[0].reason.starts_with("namespace-gone:"),
        "{reported:?}"
    );
}

#[tokio::test]
async fn sync_names_a_workload_it_cannot_restore() {
    let (fake, agent) = built(0).await;
    let a = container(&fake, "a", 2);
    let b = container(&fake, "b", 3);
    fake.fail(FailOn::Attach("b".into()));
    let r = agent
        .handle(pb::command::Op::Sync(pb::WorkloadSet {
            workloads: vec![a, b],
        }))
        .await;
    assert!(r.error.starts_with("b: "), "{}", r.error);
    assert_eq!(
        fake.workloads(),
        [key("a")].into(),
        "the others are restored"
    );
}

#[tokio::test]
async fn audit_reports_a_namespace_missing_longer_than_the_grace_period_once_not_before() {
    let (fake, agent) = built(150).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    assert!(agent.audit().await.is_empty(), "all is well");
    fake.unmount_namespace(ns_path("a"));
    assert!(agent.audit().await.is_empty(), "within the grace period");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = agent.audit().await;
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].workload_id, "a");
    assert!(
        gone[0]
            .reason
            .starts_with("namespace-gone: the namespace at"),
        "{}",
        gone[0].reason
    );
    assert!(agent.audit().await.is_empty(), "reported once");
}

#[tokio::test]
async fn audit_reports_a_deleted_namespace_by_its_vanished_interface() {
    let (fake, agent) = built(1).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    fake.delete_namespace(ns_path("a"));
    agent.audit().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gone = agent.audit().await;
    assert_eq!(gone.len(), 1);
    assert!(
        gone[0].reason.contains("its interface is gone"),
        "{}",
        gone[0].reason
    );
}

#[tokio::test]
async fn a_namespace_that_comes_back_within_the_grace_period_is_not_reported() {
    let (fake, agent) = built(100).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    let id = fake.namespace_identity(Path::new(&ns_path("a"))).unwrap();
    fake.unmount_namespace(ns_path("a"));
    assert!(agent.audit().await.is_empty());
    // The same namespace is bound at the path again: the grace period ends.
    fake.bind_namespace(ns_path("a"), id);
    assert!(agent.audit().await.is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(agent.audit().await.is_empty(), "never reported");
}

#[tokio::test]
async fn a_replaced_namespace_is_reported() {
    let (fake, agent) = built(1).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    fake.replace_namespace(ns_path("a"));
    let held = agent.held(true).await;
    assert!(
        held.workloads[0].problem.starts_with("namespace-replaced:"),
        "{:?}",
        held.workloads[0]
    );
    agent.audit().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gone = agent.audit().await;
    assert_eq!(gone.len(), 1);
    assert!(
        gone[0].reason.starts_with("namespace-replaced:"),
        "{}",
        gone[0].reason
    );
}

#[tokio::test]
async fn an_attach_into_another_namespace_than_expected_is_refused_as_replaced() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    let old = fake.namespace_identity(Path::new(&spec.netns)).unwrap();
    fake.replace_namespace(&spec.netns);
    spec.netns_id = Some(decode::ns_pb(old));
    let r = attach(&agent, &spec).await;
    assert!(r.error.starts_with("namespace-replaced:"), "{}", r.error);
    assert!(r.nothing_applied);
    assert!(fake.workloads().is_empty());
}

#[tokio::test]
async fn held_deep_lists_what_the_kernel_has() {
    let (fake, agent) = built(0).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    fake.add_workload_link(NET, "stray");
    let r = agent.handle(pb::command::Op::Inspect(pb::Inspect {})).await;
    let held = r.held.unwrap().workloads;
    let by_id: BTreeMap<_, _> = held.iter().map(|h| (h.workload_id.as_str(), h)).collect();
    assert_eq!(by_id.len(), 2, "{held:?}");
    assert_eq!(
        by_id["a"].address, "10.128.64.2/18",
        "read inside the namespace"
    );
    assert_eq!(by_id["a"].problem, "");
    assert_eq!(by_id["stray"].netns, "", "a link the agent does not know");
    assert!(
        fake.calls()
            .contains(&Call::Inspect(PathBuf::from(ns_path("a"))))
    );
}

#[tokio::test]
async fn held_deep_reports_an_interface_missing_inside() {
    let (fake, agent) = built(0).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    // The runner still has a link of the workload, but nothing is inside the namespace.
    fake.remove_link_named(&attach::host_ifname(NET, "a"));
    fake.add_workload_link(NET, "a");
    let held = agent.held(true).await.workloads;
    assert_eq!(held.len(), 1);
    assert!(
        held[0].problem.starts_with("interface-missing:"),
        "{:?}",
        held[0]
    );
    assert_eq!(held[0].address, "");
}

#[test]
fn contradictions_name_the_runners_settings_that_differ_from_the_host() {
    let a = assignment(0);
    let expect = |key: &str, value: &str| Expectation {
        key: key.into(),
        value: value.into(),
        source: "runner.toml".into(),
    };
    assert!(contradictions(&[expect("overlay.mtu", "1450")], &a).is_empty());
    let lines = contradictions(
        &[
            expect("overlay.mtu", "1400"),
            expect("overlay.vxlan_port", "4789"),
            expect("overlay.enabled", "false"),
        ],
        &a,
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("overlay.mtu = 1400 (runner.toml)"));
    assert!(lines[0].contains("uses 1450"));
    assert!(lines[1].starts_with("overlay.enabled = false"));
}

#[tokio::test]
async fn a_command_for_a_network_not_built_is_refused_naming_it() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    spec.network = "public".into();
    let r = attach(&agent, &spec).await;
    assert_eq!(r.error, "network \"public\" is not built on this runner");
    assert!(r.nothing_applied);
    assert_eq!(
        count(&fake.calls(), |c| matches!(c, Call::BridgeFor { .. })),
        0,
        "refused before the kernel is asked"
    );
}

#[tokio::test]
async fn firewall_commit_turns_conntrack_on_before_the_table_and_off_after() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    spec.firewall = Some(deny_all());
    assert_eq!(attach(&agent, &spec).await.error, "");
    let calls = fake.calls();
    let on = position(&calls, |c| *c == Call::Tracking(true));
    let table = position(
        &calls,
        |c| matches!(c, Call::CommitFirewall { table: true, script } if script.contains("10.128.64.2")),
    );
    assert!(on < table, "tracking first: {calls:#?}");
    fake.clear_calls();
    agent.detach_many(&[key("a")]).await.unwrap();
    let calls = fake.calls();
    let gone = position(&calls, |c| {
        matches!(c, Call::CommitFirewall { table: false, .. })
    });
    let off = position(&calls, |c| *c == Call::Tracking(false));
    assert!(gone < off, "the table goes first: {calls:#?}");
    assert_eq!(fake.tracking(), Some(false));
}

#[tokio::test]
async fn a_firewall_that_cannot_be_committed_fails_the_attach_as_firewall() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    spec.firewall = Some(deny_all());
    fake.fail(FailOn::CommitFirewall);
    let r = attach(&agent, &spec).await;
    assert!(r.error.starts_with("firewall:"), "{}", r.error);
    // The firewall could not be brought back either: the runner does not claim to hold nothing.
    assert!(!r.nothing_applied);
    assert_eq!(
        count(&fake.calls(), |c| *c == Call::DetachMany(vec![key("a")])),
        1,
        "its interface is removed again"
    );
    assert!(fake.workloads().is_empty());
}

#[tokio::test]
async fn teardown_removes_every_workload_link() {
    let (fake, agent) = built(0).await;
    assert_eq!(attach(&agent, &container(&fake, "a", 2)).await.error, "");
    assert_eq!(attach(&agent, &container(&fake, "b", 3)).await.error, "");
    let stray = fake.add_workload_link(NET, "stray");
    fake.clear_calls();
    agent.teardown().await.unwrap();
    let calls = fake.calls();
    assert_eq!(count(&calls, |c| matches!(c, Call::RemoveLink(_))), 3);
    assert!(calls.contains(&Call::RemoveLink(stray)));
    assert_eq!(calls.last(), Some(&Call::Teardown));
    assert!(fake.workloads().is_empty());
    let r = attach(&agent, &container(&fake, "c", 4)).await;
    assert!(r.error.contains("not built"), "no network after a teardown");
}

#[tokio::test]
async fn a_vm_attach_makes_a_tap() {
    let (fake, agent) = built(0).await;
    let tap = attach::tap_ifname(NET, "vm1");
    let spec = pb::WorkloadSpec {
        network: NET.into(),
        workload_id: "vm1".into(),
        ifname: tap.clone(),
        address: "10.128.64.9/18".into(),
        gateway: "10.128.64.1".into(),
        mtu: 1450,
        vm: true,
        ..Default::default()
    };
    let r = attach(&agent, &spec).await;
    assert_eq!(r.error, "");
    assert_eq!(r.netns_id, None, "a VM has no namespace");
    let calls = fake.calls();
    assert!(calls.contains(&Call::AttachTap {
        name: tap.clone(),
        bridge: fake.bridge(BRIDGE).unwrap(),
    }));
    assert_eq!(
        count(&calls, |c| matches!(c, Call::AttachContainer { .. })),
        0
    );
    assert!(fake.links().iter().any(|l| l.name == tap));
    // A VM is never audited for a namespace.
    assert!(agent.audit().await.is_empty());
    agent.detach_many(&[key("vm1")]).await.unwrap();
    assert!(fake.links().is_empty(), "its tap is removed");
}

fn handoff(id: &str, host: u8) -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        network: NET.into(),
        workload_id: id.into(),
        ifname: attach::handoff_ifname(NET, id),
        address: format!("10.128.64.{host}/18"),
        gateway: "10.128.64.1".into(),
        mtu: 1450,
        handoff: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_handed_off_pair_is_watched_by_its_bridge_end_and_never_remade() {
    let (fake, agent) = built(1).await;
    let spec = handoff("ep", 9);
    let r = attach(&agent, &spec).await;
    assert_eq!(r.error, "");
    assert_eq!(r.netns_id, None, "a handoff has no namespace of ours");
    let port = attach::host_ifname(NET, "ep");
    assert!(fake.calls().contains(&Call::AttachTap {
        name: port.clone(),
        bridge: fake.bridge(BRIDGE).unwrap(),
    }));
    assert!(agent.audit().await.is_empty(), "its bridge end is there");
    // The container went (its end with it, so the pair): reported gone after the grace.
    fake.remove_link_named(&port);
    agent.audit().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gone = agent.audit().await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(gone[0].reason.contains("handed-off"), "{}", gone[0].reason);
    // A sync does not make it again: nobody would move a new container end.
    fake.clear_calls();
    let r = agent
        .handle(pb::command::Op::Sync(pb::WorkloadSet {
            workloads: vec![spec],
        }))
        .await;
    assert_eq!(r.error, "");
    assert_eq!(
        count(&fake.calls(), |c| matches!(c, Call::AttachTap { .. })),
        0
    );
    assert!(fake.links().iter().all(|l| l.name != port));
}

#[tokio::test]
async fn apply_finds_the_uplink_by_the_default_route_unless_configured() {
    let (fake, agent) = agent(None);
    agent
        .apply(&assignment(0), "192.0.2.10".parse().unwrap())
        .await
        .unwrap();
    assert!(fake.calls().contains(&Call::DefaultRoute));
    assert_eq!(fake.networks(), [NET.to_string()]);

    let (fake, agent) = self::agent(None);
    fake.set_default_route(None);
    let e = agent
        .apply(&assignment(0), "192.0.2.10".parse().unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("set runner.uplink"), "{e}");
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::ApplyNetworks(_))),
        "nothing built"
    );

    let (fake, agent) = self::agent(Some("bond0"));
    agent
        .apply(&assignment(0), "192.0.2.10".parse().unwrap())
        .await
        .unwrap();
    assert!(!fake.calls().contains(&Call::DefaultRoute));
}

#[tokio::test]
async fn a_malformed_assignment_is_refused_naming_the_field_before_building() {
    let (fake, agent) = agent(Some("eth0"));
    let mut a = assignment(0);
    a.networks[0].subnet = "ten/18".into();
    let e = agent
        .apply(&a, "192.0.2.10".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            AgentError::Malformed {
                field: "subnet",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "the host sent a malformed subnet: \"ten/18\""
    );
    assert!(fake.networks().is_empty());
}

#[tokio::test]
async fn routes_give_each_network_its_direct_peers_and_are_reapplied_after_a_rebuild() {
    let (fake, agent) = built(0).await;
    let plan = pb::RoutePlan {
        direct: vec![
            pb::DirectPeer {
                network: NET.into(),
                runner_id: 2,
                physical_ip: "192.0.2.12".into(),
                subnet: "10.128.128.0/18".into(),
                vni: 102,
            },
            pb::DirectPeer {
                network: "other".into(),
                runner_id: 3,
                physical_ip: "192.0.2.13".into(),
                subnet: "10.128.192.0/18".into(),
                vni: 103,
            },
        ],
        egress: "via-host".into(),
        network_egress: Default::default(),
    };
    let r = agent.handle(pb::command::Op::Routes(plan)).await;
    assert_eq!(r.error, "");
    let want = Call::Routes {
        network: NET.into(),
        direct: vec![2],
        via_host_egress: true,
    };
    assert_eq!(fake.calls(), std::slice::from_ref(&want));
    fake.clear_calls();
    agent
        .apply(&assignment(0), "192.0.2.10".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(fake.calls().last(), Some(&want), "the last plan again");
}

#[tokio::test]
async fn underlay_peers_are_parsed_and_a_malformed_one_is_refused() {
    let (fake, agent) = built(0).await;
    let r = agent
        .handle(pb::command::Op::Underlay(pb::UnderlayPeers {
            addresses: vec!["192.0.2.12".into(), "192.0.2.13".into()],
        }))
        .await;
    assert_eq!(r.error, "");
    assert_eq!(
        fake.calls(),
        [Call::SetUnderlay(vec![
            "192.0.2.12".parse().unwrap(),
            "192.0.2.13".parse().unwrap()
        ])]
    );
    fake.clear_calls();
    let r = agent
        .handle(pb::command::Op::Underlay(pb::UnderlayPeers {
            addresses: vec!["192.0.2".into()],
        }))
        .await;
    assert_eq!(
        r.error,
        "the host sent a malformed underlay address: \"192.0.2\""
    );
    assert!(fake.calls().is_empty(), "nothing applied");
}

#[tokio::test]
async fn peers_update_the_firewall_selectors() {
    let (fake, agent) = built(0).await;
    let mut spec = container(&fake, "a", 2);
    spec.firewall = Some(pb::FirewallDecision {
        rules: vec![pb::Rule {
            direction: "ingress".into(),
            peer: Some(pb::Peer {
                peer: Some(pb::peer::Peer::Labels(pb::LabelSet {
                    labels: [("app".to_string(), "web".to_string())].into(),
                })),
            }),
            protocol: "tcp".into(),
            ports: vec![],
            verdict: "allow".into(),
        }],
        default_verdict: "deny".into(),
    });
    assert_eq!(attach(&agent, &spec).await.error, "");
    let r = agent
        .handle(pb::command::Op::Peers(pb::PeerDirectory {
            full: true,
            upsert: vec![pb::PeerEntry {
                network: NET.into(),
                address: "10.128.128.7".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
            }],
            remove: vec![],
        }))
        .await;
    assert_eq!(r.error, "");
    let (table, script) = fake.firewall().unwrap();
    assert!(table);
    assert!(script.contains("10.128.128.7"), "{script}");
}

#[test]
fn a_missing_namespace_is_its_own_error_variant() {
    use crate::dataplane::netns::NetnsError;
    let gone = classify(DataplaneError::Netns(NetnsError::Io {
        path: "/run/netns/x".into(),
        what: "open",
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }));
    assert_eq!(gone.namespace_problem(), Some(NamespaceProblem::Gone));
    assert!(gone.to_string().starts_with("namespace-gone: "), "{gone}");
    let replaced = classify(DataplaneError::NetnsReplaced {
        path: "/run/netns/x".into(),
        expected: NsIdentity { dev: 4, ino: 1 },
        found: NsIdentity { dev: 4, ino: 2 },
    });
    assert_eq!(
        replaced.namespace_problem(),
        Some(NamespaceProblem::Replaced)
    );
    let other = classify(DataplaneError::Invalid("no".into()));
    assert_eq!(other.namespace_problem(), None);
    assert_eq!(other.to_string(), "no");
}
