//! How client commands show the host's answers: the status panel and tables for people, stable
//! JSON for scripts.

use serde_json::{Value, json};
use weir_proto::v1 as pb;

pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(super) fn runner_json(r: &pb::RunnerStatus) -> Value {
    json!({"name": r.name, "id": r.id, "subnet": r.subnet, "gateway": r.gateway,
           "physical_ip": r.physical_ip, "active": r.active, "connected": r.connected,
           "placeholder": r.placeholder, "last_seen_unix_ms": r.last_seen_unix_ms,
           "labels": r.labels, "workloads": r.workloads, "version": r.version})
}

/// The status as stable JSON (`weir status --json`, one line per frame with `--watch`).
pub(super) fn status_json(s: &pb::GetStatusResponse) -> Value {
    json!({"plan": s.plan, "host_ip": s.host_ip, "overlay_enabled": s.overlay_enabled,
    "host_version": s.host_version,
    "max_runners": s.max_runners, "active_runners": s.active_runners,
    "inactive_runners": s.inactive_runners, "placeholders": s.placeholders,
    "workloads": s.workloads, "reservations": s.reservations,
    "last_event_seq": s.last_event_seq,
    "leader_term": s.leader_term,
    "hosts": s.hosts.iter().map(|h| json!({"name": h.name, "role": h.role, "url": h.url,
        "underlay_ip": h.underlay_ip, "version": h.version, "term": h.term,
        "refusal": h.refusal})).collect::<Vec<_>>(),
    "networks": s.networks.iter().map(|n| json!({"name": n.name, "mode": n.mode,
        "plan": n.plan, "host_ip": n.host_ip, "vxlan_id_base": n.vxlan_id_base,
        "masquerade": n.masquerade, "egress": n.egress, "runners": n.runners,
        "max_runners": n.max_runners, "workloads": n.workloads,
        "reservations": n.reservations})).collect::<Vec<_>>(),
    "runners": s.runners.iter().map(runner_json).collect::<Vec<_>>()})
}

/// The status panel, like KohakuRiver's `node overlay`.
pub fn render_status(s: &pb::GetStatusResponse) -> String {
    let version = if s.host_version.is_empty() {
        "unknown (the host does not report it)"
    } else {
        &s.host_version
    };
    let mut out = format!("host version  {version}\n");
    out += &if s.overlay_enabled {
        format!(
            "overlay       {}\nhost ip       {}\nrunners       {} active, {} inactive, {} placeholders (max {})\nworkloads     {}\nreservations  {}\n\n",
            s.plan,
            s.host_ip,
            s.active_runners,
            s.inactive_runners,
            s.placeholders,
            s.max_runners,
            s.workloads,
            s.reservations
        )
    } else {
        format!(
            "overlay       disabled (isolated mode)\nrunners       {} active, {} inactive\nworkloads     {}\nreservations  {}\n\n",
            s.active_runners, s.inactive_runners, s.workloads, s.reservations
        )
    };
    if !s.hosts.is_empty() {
        out.push_str(&host_table(&s.hosts));
        out.push('\n');
    }
    if s.networks.len() > 1 {
        out.push_str(&network_table(&s.networks));
        out.push('\n');
    }
    out.push_str(&runner_table(&s.runners));
    out
}

/// Several hosts: each one's role (the leader's with its term), address and version.
pub(super) fn host_table(hosts: &[pb::HostStatus]) -> String {
    let rows: Vec<[String; 5]> = hosts
        .iter()
        .map(|h| {
            let role = if h.role == "leader" {
                format!("leader (term {})", h.term)
            } else if !h.refusal.is_empty() {
                format!("standby, refuses to lead: {}", h.refusal)
            } else {
                h.role.clone()
            };
            [
                h.name.clone(),
                role,
                h.url.clone(),
                h.underlay_ip.clone(),
                h.version.clone(),
            ]
        })
        .collect();
    super::table(&["Host", "Role", "URL", "Underlay", "Version"], &rows)
}

pub(super) fn network_table(networks: &[pb::NetworkStatus]) -> String {
    let rows: Vec<[String; 8]> = networks
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                n.plan.clone(),
                n.host_ip.clone(),
                n.vxlan_id_base.to_string(),
                format!("{}{}", n.egress, if n.masquerade { " (nat)" } else { "" }),
                format!("{}/{}", n.runners, n.max_runners),
                n.workloads.to_string(),
                n.reservations.to_string(),
            ]
        })
        .collect();
    super::table(
        &[
            "Network",
            "Plan",
            "Host IP",
            "VNI base",
            "Egress",
            "Runners",
            "Workloads",
            "Reservations",
        ],
        &rows,
    )
}

pub(super) fn runner_table(runners: &[pb::RunnerStatus]) -> String {
    let now = crate::clock::now_ms();
    let rows: Vec<[String; 9]> = runners
        .iter()
        .map(|r| {
            let state = match (r.placeholder, r.active, r.connected) {
                (true, _, _) => "placeholder",
                (_, true, true) => "active",
                (_, true, false) => "active (reconnecting)",
                (_, false, _) => "inactive",
            };
            [
                if r.name.is_empty() {
                    "-".into()
                } else {
                    r.name.clone()
                },
                if r.id == 0 {
                    "-".into()
                } else {
                    r.id.to_string()
                },
                r.subnet.clone(),
                r.gateway.clone(),
                r.physical_ip.clone(),
                state.to_string(),
                format!("{}s ago", ((now - r.last_seen_unix_ms).max(0)) / 1000),
                r.workloads.to_string(),
                if r.version.is_empty() {
                    "-".into()
                } else {
                    r.version.clone()
                },
            ]
        })
        .collect();
    super::table(
        &[
            "RUNNER",
            "ID",
            "SUBNET",
            "GATEWAY",
            "PHYSICAL IP",
            "STATUS",
            "LAST SEEN",
            "WORKLOADS",
            "VERSION",
        ],
        &rows,
    )
}

pub(super) fn kind_name(k: i32) -> &'static str {
    if k == pb::WorkloadKind::Vm as i32 {
        "vm"
    } else {
        "container"
    }
}

pub(super) fn attach_json(r: &pb::AttachWorkloadResponse) -> serde_json::Value {
    let mut v = json!({"id": r.workload_id, "runner": r.runner, "network": r.network, "ip": r.ip,
        "gateway": r.gateway, "mtu": r.mtu, "host_ip": r.host_ip, "ifname": r.ifname,
        "prefix": r.prefix, "kind": kind_name(r.kind)});
    if r.kind == pb::WorkloadKind::Vm as i32 {
        v["mac"] = json!(r.mac);
        v["dns"] = json!(r.dns);
    }
    v
}

pub(super) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn event_kind(k: i32) -> String {
    pb::EventKind::try_from(k)
        .map(|k| k.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("kind_{k}"))
}

/// One event as stable JSON (also what `weir watch --json` prints per line).
pub fn event_json(e: &pb::Event) -> Value {
    json!({"seq": e.seq, "unix_ms": e.unix_ms, "kind": event_kind(e.kind), "runner": e.runner,
           "runner_id": e.runner_id, "network": e.network, "workload": e.workload_id,
           "ip": e.ip, "reservation": e.reservation_id, "detail": e.detail,
           "origin": e.origin})
}
