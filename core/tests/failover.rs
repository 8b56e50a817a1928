//! Several hosts on one etcd: one leads, the others stand by; the hub role moves when the
//! leader dies, is cut off from etcd, or is stopped, and the data path follows it. Real
//! daemons, a real three-member etcd and real packets, in the lab's namespaces.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use weir::lab::{self, Lab, run_in_namespace};
use weir_proto::v1 as pb;

/// Who leads, asked of every host: (host index, term). A standby answers UNAVAILABLE.
async fn leader(lab: &Lab) -> Option<(u32, u64)> {
    for i in 1..=lab.spec.hosts {
        let url = lab.control_url_of(i);
        let Ok(ch) = weir::api::client::connect(&url, Default::default()).await else {
            continue;
        };
        let mut c = pb::control_client::ControlClient::with_interceptor(
            ch,
            weir::api::auth::Bearer::new(Some(&lab.control_token())).unwrap(),
        );
        if let Ok(s) = c.get_status(pb::GetStatusRequest {}).await {
            return Some((i, s.into_inner().leader_term));
        }
    }
    None
}

/// Wait until a host other than `not` (with a term above `after`) leads.
async fn new_leader(lab: &Lab, not: Option<u32>, after: u64, within: Duration) -> (u32, u64) {
    let start = Instant::now();
    loop {
        if let Some((i, term)) = leader(lab).await
            && Some(i) != not
            && term > after
        {
            return (i, term);
        }
        assert!(
            start.elapsed() < within,
            "no new leader within {within:?} (not host {not:?}, term > {after})\n{}",
            logs(lab)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 10/s ping whose every reply's arrival time is kept, to measure gaps.
struct TimedPing {
    child: std::process::Child,
    replies: Arc<Mutex<Vec<Instant>>>,
}

impl TimedPing {
    fn start(lab: &Lab, member: &str, to: Ipv4Addr) -> Self {
        let mut cmd = Command::new("ping");
        cmd.args(["-n", "-i", "0.1", "-W", "1", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        run_in_namespace(&mut cmd, &lab.ns(member)).unwrap();
        let mut child = cmd.spawn().expect("start ping");
        let out = child.stdout.take().unwrap();
        let replies: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let r = replies.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("bytes from") {
                    r.lock().unwrap().push(Instant::now());
                }
            }
        });
        Self { child, replies }
    }

    /// The longest time without a reply from the last reply before `at` until now.
    fn gap_since(&self, at: Instant) -> Duration {
        let r = self.replies.lock().unwrap();
        let from = r.iter().rev().find(|t| **t <= at).copied().unwrap_or(at);
        let mut gap = Duration::ZERO;
        let mut prev = from;
        for t in r.iter().filter(|t| **t > from) {
            gap = gap.max(t.duration_since(prev));
            prev = *t;
        }
        gap.max(Instant::now().duration_since(prev))
    }

    fn count(&self) -> usize {
        self.replies.lock().unwrap().len()
    }
}

impl Drop for TimedPing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The runner's links that must survive a failover untouched, by name.
async fn runner_links(lab: &Lab, member: &str) -> BTreeMap<String, u32> {
    links(lab, member)
        .await
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect()
}

/// Host `i`'s port on the underlay switch, up or down.
async fn set_uplink(lab: &Lab, i: u32, up: bool) {
    let lan = weir::dataplane::netlink::Netlink::in_namespace(&lab.ns("lan")).unwrap();
    let port = lan
        .link(&format!("p-{}", lab::host_member(i)))
        .await
        .unwrap()
        .expect("the host's port");
    if up {
        lan.set_up(port.index).await.unwrap();
    } else {
        lan.set_down(port.index).await.unwrap();
    }
}

fn spec_two_hosts(tag: &str) -> lab::LabSpec {
    let mut s = spec(tag);
    s.hosts = 2;
    s.etcd_members = 3;
    s.runners = 2;
    s.workloads_per_runner = 2;
    s
}

/// Two hosts on a three-member etcd, two runners with two workloads each; host 1 leads.
async fn two_hosts(tag: &str) -> Lab {
    two_hosts_from(spec_two_hosts(tag)).await
}

async fn two_hosts_from(spec: lab::LabSpec) -> Lab {
    let mut lab = must(Lab::underlay(spec).await);
    lab.start_host_n(1).await.unwrap_or_else(|e| panic!("{e}"));
    // Ready means standing by or leading: host 1, alone, leads soon.
    new_leader(&lab, None, 0, dur(20)).await;
    lab.start_host_n(2).await.unwrap_or_else(|e| panic!("{e}"));
    for i in 1..=2 {
        lab.add_runner(i).await.unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 1..=2 {
        for w in 1..=2 {
            if let Err(e) = lab.add_workload(i, w).await {
                panic!("{e}\n{}", logs(&lab));
            }
        }
    }
    lab
}

/// The hosts' logs, for a failure's message.
fn logs(lab: &Lab) -> String {
    (1..=lab.spec.hosts)
        .map(|i| {
            let member = lab::host_member(i);
            let text =
                std::fs::read_to_string(lab.dir.join(format!("{member}.log"))).unwrap_or_default();
            format!("--- {member}.log\n{text}")
        })
        .chain(lab.etcd.iter().flat_map(|e| {
            (0..3).map(move |m| {
                let text =
                    std::fs::read_to_string(e.dir().join(format!("m{m}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("\"level\":\"info\""))
                    .collect();
                format!("--- etcd m{m}\n{}", lines.join("\n"))
            })
        }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Both runners hold a session with host `i`, and the ping has answered a second since.
async fn settled(lab: &Lab, i: u32, ping: &TimedPing) {
    let start = Instant::now();
    loop {
        let mut c = control_at(&lab.control_url_of(i), &lab.control_token()).await;
        if let Ok(s) = c.get_status(pb::GetStatusRequest {}).await
            && s.get_ref().runners.iter().filter(|r| r.connected).count() == 2
        {
            break;
        }
        assert!(
            start.elapsed() < dur(20),
            "the runners did not follow host {i}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = ping.count();
    wait_until("the ping answers on the new path", dur(10), || {
        ping.count() >= n + 10
    })
    .await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Kill -9 of the leader, five times over, under a 10/s cross-runner ping: the other host
/// takes over, the runners follow it (tunnel remote re-pointed in place), same-runner and
/// egress traffic never stop, and the killed host, restarted, stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_the_hub_and_local_traffic_never_stops() {
    let mut lab = two_hosts("fo").await;
    let (first, term) = leader(&lab).await.expect("a leader");
    assert_eq!(first, 1, "host 1 started first and leads");
    let (a1, a2) = (workload_ip(&lab, 1, 1).await, workload_ip(&lab, 1, 2).await);
    let b1 = workload_ip(&lab, 2, 1).await;
    assert!(lab.ping("r1-w1", b1), "cross-runner traffic works before");
    let links_before = (
        runner_links(&lab, "r1").await,
        runner_links(&lab, "r2").await,
    );
    let cross = TimedPing::start(&lab, "r1-w1", b1);
    let local = Pinger::start(&lab, "r1-w2", a1);
    let egress = Pinger::start(&lab, "r2-w2", lab::WAN_IP);
    let _ = a2;
    wait_until("the cross-runner ping answers", dur(10), || {
        cross.count() > 5
    })
    .await;

    let (mut leading, mut term) = (first, term);
    let mut gaps = Vec::new();
    for round in 0..5 {
        // The whole machine goes: its daemon is killed and its kernel stops forwarding
        // (the leader's tunnels would otherwise go on carrying traffic without it).
        let killed_at = Instant::now();
        let d = lab.host_daemon(leading).expect("the leader runs");
        d.stop(libc::SIGKILL).unwrap();
        set_uplink(&lab, leading, false).await;
        let (next, next_term) = new_leader(&lab, Some(leading), term, dur(20)).await;
        let elected = killed_at.elapsed();
        settled(&lab, next, &cross).await;
        let gap = cross.gap_since(killed_at);
        println!(
            "failover {round}: host {leading} killed, host {next} leads (term {next_term}) after {elected:?}; cross-runner ping gap {gap:?}"
        );
        gaps.push(gap);
        assert!(
            gap < dur(6),
            "round {round}: the ping resumed only after {gap:?}"
        );
        // The killed host, restarted, stands by (its answer names the leader).
        set_uplink(&lab, leading, true).await;
        lab.start_host_n(leading)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = control_at(&lab.control_url_of(leading), &lab.control_token()).await;
        let start = Instant::now();
        loop {
            let st = c.get_status(pb::GetStatusRequest {}).await.unwrap_err();
            assert_eq!(st.code(), tonic::Code::Unavailable);
            assert_eq!(st.metadata().get("weir-role").unwrap(), "standby");
            // Right after its start it may not have read who leads yet.
            if let Some(l) = st.metadata().get("weir-leader") {
                assert_eq!(l.to_str().unwrap(), format!("h{next}"), "{}", st.message());
                assert!(st.message().contains(&format!("the leader is h{next}")));
                break;
            }
            assert!(
                start.elapsed() < dur(5),
                "the standby never named the leader: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (leading, term) = (next, next_term);
        // Steady again before the next round.
        let n = cross.count();
        wait_until("the cross-runner ping answers steadily", dur(10), || {
            cross.count() > n + 10
        })
        .await;
    }
    println!(
        "kill -9 failovers: {} gaps, median {:?}, max {:?}",
        gaps.len(),
        median(gaps.clone()),
        gaps.iter().max().unwrap()
    );

    // A planned handover: SIGTERM hands the role over at once.
    let stopped_at = Instant::now();
    lab.host_daemon(leading)
        .unwrap()
        .stop(libc::SIGTERM)
        .unwrap();
    let (next, _) = new_leader(&lab, Some(leading), term, dur(10)).await;
    settled(&lab, next, &cross).await;
    let gap = cross.gap_since(stopped_at);
    println!("SIGTERM handover: host {leading} stopped, host {next} leads; gap {gap:?}");
    assert!(
        gap < dur(3),
        "a planned handover stopped the ping for {gap:?}"
    );

    let (sent, got) = local.stop();
    assert_eq!(sent, got, "same-runner traffic never stopped");
    let (sent, got) = egress.stop();
    assert_eq!(sent, got, "runner-NAT egress never stopped");
    let links_after = (
        runner_links(&lab, "r1").await,
        runner_links(&lab, "r2").await,
    );
    assert_eq!(links_before, links_after, "no runner link was re-created");

    // The status shows both hosts (the stopped one is gone), the events each election.
    // `weir status` (given every host's socket, it finds the leader) shows the host set.
    let out = lab.weir(&["status", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["hosts"][0]["name"], format!("h{next}"), "{json}");
    assert_eq!(json["hosts"][0]["role"], "leader");
    assert!(json["leader_term"].as_u64().unwrap() >= 7, "{json}");
    let mut c = control_at(&lab.control_url_of(next), &lab.control_token()).await;
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let leaders: Vec<&pb::HostStatus> = s.hosts.iter().filter(|h| h.role == "leader").collect();
    assert_eq!(leaders.len(), 1, "{:?}", s.hosts);
    assert_eq!(leaders[0].name, format!("h{next}"));
    assert_eq!(leaders[0].term, s.leader_term);
    let elected = events_of_at(&lab, next, pb::EventKind::LeaderElected).await;
    assert_eq!(
        elected.len(),
        7,
        "one election at start, five failovers, one handover: {elected:?}"
    );
    let seqs: BTreeSet<u64> = elected.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), elected.len(), "no sequence number twice");
}

/// Events of `kind` from host `i`'s event log.
async fn events_of_at(lab: &Lab, i: u32, kind: pb::EventKind) -> Vec<pb::Event> {
    let mut c = control_at(&lab.control_url_of(i), &lab.control_token()).await;
    let mut out = Vec::new();
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let last = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_event_seq;
    while let Ok(Some(e)) = tokio::time::timeout(dur(5), stream.message())
        .await
        .unwrap()
    {
        let seq = e.seq;
        if e.kind == kind as i32 {
            out.push(e);
        }
        if seq >= last {
            break;
        }
    }
    out
}

/// A workload namespace's eth0 address, if it has one.
async fn eth0_of(lab: &Lab, member: &str) -> Option<String> {
    lab.address_of(member).await.map(|a| a.to_string())
}

/// The leader killed in the middle of 200 concurrent attaches: every acknowledged attach is
/// on the new leader and in the kernel, no address is given twice, and every other one ends
/// up whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_amid_200_attaches_loses_no_acknowledged_one() {
    let mut lab = two_hosts("fa").await;
    let names: Vec<(u32, String)> = (0..200u32)
        .map(|k| (1 + k % 2, format!("r{}-x{k}", 1 + k % 2)))
        .collect();
    let paths: Vec<String> = names.iter().map(|(_, m)| new_netns(&lab, m)).collect();
    let client = control_at(&lab.control_url_of(1), &lab.control_token()).await;
    let acked = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let mut tasks = Vec::new();
    for ((runner, member), path) in names.iter().zip(&paths) {
        let mut c = client.clone();
        let req = attach_req(&format!("r{runner}"), member, path);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            if let Ok(r) = c.attach_workload(req).await {
                let r = r.into_inner();
                acked.lock().unwrap().insert(r.workload_id, r.ip);
            }
        }));
    }
    wait_until("some attaches are acknowledged", dur(60), || {
        acked.lock().unwrap().len() >= 40
    })
    .await;
    lab.host_daemon(1).unwrap().stop(libc::SIGKILL).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} of 200 attaches acknowledged before the kill",
        acked.len()
    );
    let (next, _) = new_leader(&lab, Some(1), 1, dur(20)).await;
    assert_eq!(next, 2);
    let mut c = control_at(&lab.control_url_of(2), &lab.control_token()).await;

    // Wait until the store and every namespace agree (the runners re-register with the new
    // leader, whose sync removes what it does not hold).
    let start = Instant::now();
    let listed = loop {
        let listed: BTreeMap<String, String> = c
            .list_workloads(pb::ListWorkloadsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .workloads
            .into_iter()
            .map(|w| (w.workload_id, w.ip))
            .collect();
        let mut disagree = Vec::new();
        for (_, member) in &names {
            let kernel = eth0_of(&lab, member).await;
            let store = listed.get(member).cloned();
            let same = match (&kernel, &store) {
                (None, None) => true,
                (Some(k), Some(s)) => s.starts_with(k.split('/').next().unwrap_or_default()),
                _ => false,
            };
            if !same {
                disagree.push(format!("{member}: kernel {kernel:?}, store {store:?}"));
            }
        }
        if disagree.is_empty() {
            break listed;
        }
        assert!(
            start.elapsed() < dur(60),
            "store and kernel still disagree: {disagree:?}\n{}",
            logs(&lab)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (id, ip) in &acked {
        assert_eq!(
            listed.get(id),
            Some(ip),
            "acknowledged {id} is on the new leader"
        );
    }
    let mut seen = BTreeSet::new();
    for ip in listed.values() {
        assert!(seen.insert(ip.clone()), "{ip} given twice: {listed:?}");
    }
}

/// The leader cut off from etcd (an nftables rule in its namespace) while it still reaches
/// the runners: it stops serving and removes its tunnels within its lease time, exits, the
/// standby takes over with a newer term, and traffic follows it. Attaches that reach it after
/// the cut are decided by its allocator plugin but never acknowledged, and its decision log
/// says none of them was committed (and the store has none of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_and_the_standby_takes_over() {
    let mut s = spec_two_hosts("fp");
    s.host_extra = format!(
        "[policy]\naudit = \"full\"\n{}",
        plugin_toml(
            "alloc",
            &plugin_path("default_allocator"),
            "allocator",
            "deny",
            ""
        )
    );
    let mut lab = two_hosts_from(s).await;
    let (_, term) = leader(&lab).await.unwrap();
    let late: Vec<(u32, String)> = (0..6u32)
        .map(|k| (1 + k % 2, format!("r{}-late{k}", 1 + k % 2)))
        .collect();
    let late_paths: Vec<String> = late.iter().map(|(_, m)| new_netns(&lab, m)).collect();
    let to_h1 = control_at(&lab.control_url_of(1), &lab.control_token()).await;
    let b1 = workload_ip(&lab, 2, 1).await;
    let cross = TimedPing::start(&lab, "r1-w1", b1);
    wait_until("the cross-runner ping answers", dur(10), || {
        cross.count() > 5
    })
    .await;
    let before = links(&lab, "host").await;
    assert!(
        before.iter().any(|l| l.name.starts_with("vxkr")),
        "{before:?}"
    );

    let cut = Instant::now();
    let rule = "add table inet weir_test_partition; add chain inet weir_test_partition out { type filter hook output priority 0; }; add rule inet weir_test_partition out ip daddr 192.0.2.254 tcp dport 2379-2399 drop";
    let out = lab.exec("host", "nft", &[rule]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let late_attaches: Vec<_> = late
        .iter()
        .zip(&late_paths)
        .map(|((runner, member), path)| {
            let mut c = to_h1.clone();
            let req = attach_req(&format!("r{runner}"), member, path);
            tokio::spawn(async move { c.attach_workload(req).await })
        })
        .collect();

    // Within its lease time it stops: no process, no tunnel, no overlay address.
    let status = {
        let d = lab.host_daemon(1).unwrap();
        d.wait_exit(dur(10))
    };
    let status =
        status.unwrap_or_else(|| panic!("the partitioned leader still runs\n{}", logs(&lab)));
    let stepped_down = cut.elapsed();
    assert!(!status.success(), "a lost lease is an error exit");
    let log = std::fs::read_to_string(lab.dir.join("host.log")).unwrap();
    assert!(log.contains("lost its lease"), "{log}");
    let after = links(&lab, "host").await;
    assert!(
        !after
            .iter()
            .any(|l| l.name.starts_with("vxkr") || l.name == "kohaku-host"),
        "the deposed leader kept hub links: {after:?}"
    );
    let (next, next_term) = new_leader(&lab, Some(1), term, dur(20)).await;
    assert_eq!(next, 2);
    assert!(next_term > term);
    settled(&lab, 2, &cross).await;
    println!(
        "partitioned leader stepped down after {stepped_down:?}; cross-runner gap {:?}",
        cross.gap_since(cut)
    );

    // Nothing decided twice: every event number once, every address once.
    let mut c = control_at(&lab.control_url_of(2), &lab.control_token()).await;
    let listed = c
        .list_workloads(pb::ListWorkloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workloads;
    let ips: BTreeSet<&str> = listed.iter().map(|w| w.ip.as_str()).collect();
    assert_eq!(ips.len(), listed.len(), "{listed:?}");
    let elected = events_of_at(&lab, 2, pb::EventKind::LeaderElected).await;
    assert_eq!(elected.len(), 2, "{elected:?}");
    assert!(elected[1].detail.contains("h2 leads"), "{elected:?}");

    // The attaches after the cut: none acknowledged, none in the store, and the deposed
    // leader's decision log settles every one of its decisions — the ones before the cut
    // committed, the late ones not (or unknown: a commit in flight the store refused).
    for t in late_attaches {
        let r = t.await.unwrap();
        assert!(
            r.is_err(),
            "an attach was acknowledged by a cut-off leader: {r:?}"
        );
    }
    let stored: BTreeSet<&str> = listed.iter().map(|w| w.workload_id.as_str()).collect();
    for (_, member) in &late {
        assert!(
            !stored.contains(member.as_str()),
            "{member} is in the store"
        );
    }
    let log = lab
        .dir
        .join(format!("{}-state/decisions.jsonl", lab::host_member(1)));
    let decisions = weir::policy::audit::read(&log, &Default::default()).unwrap();
    let of = |e: &weir::policy::audit::Entry| {
        e.input
            .as_ref()
            .and_then(|i| i.get("workload_id").or_else(|| i.get("name")))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    use weir::policy::audit::Commit;
    let mut late_decided = 0;
    let mut unknown = 0;
    for e in decisions.iter().filter(|e| e.applied) {
        let settled = e
            .outcome
            .as_ref()
            .unwrap_or_else(|| panic!("a decision of the deposed leader is not settled: {e:?}"));
        assert_eq!(e.term, Some(term), "{e:?}");
        let who = of(e);
        if late.iter().any(|(_, m)| *m == who) {
            late_decided += 1;
            unknown += usize::from(settled.commit == Commit::Unknown);
            assert_ne!(settled.commit, Commit::Committed, "{e:?}");
            assert!(settled.reason.is_some(), "{e:?}");
        } else {
            assert_eq!(
                settled.commit,
                Commit::Committed,
                "{who} is in the store: {e:?}"
            );
        }
    }
    assert!(
        late_decided > 0,
        "no attach after the cut reached the plugin: {decisions:?}"
    );
    println!(
        "deposed leader's log: {} decisions, {late_decided} after the cut, none of those committed ({unknown} unknown: a commit in flight)",
        decisions.len()
    );

    // Healed, the old leader comes back as a standby.
    let out = lab
        .exec(
            "host",
            "nft",
            &["delete", "table", "inet", "weir_test_partition"],
        )
        .unwrap();
    assert!(out.status.success());
    lab.start_host_n(1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leader(&lab).await.map(|l| l.0), Some(2), "h2 still leads");
}

/// A standby whose configuration differs from the cluster's refuses to lead while a host
/// with the cluster's configuration lives, and says which part differs; once none is left,
/// it leads (the last step of a rolling change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_with_another_configuration_refuses_to_lead_and_says_why() {
    let mut s = spec_two_hosts("fc");
    s.runners = 0;
    let mut lab = must(Lab::underlay(s).await);
    lab.start_host_n(1).await.unwrap_or_else(|e| panic!("{e}"));
    lab.spec.host_extra = "[reservations]\nmax_ttl = \"3h\"\n".into();
    lab.start_host_n(2).await.unwrap_or_else(|e| panic!("{e}"));
    let mut c = control_at(&lab.control_url_of(1), &lab.control_token()).await;
    let start = Instant::now();
    loop {
        let s = c
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(h2) = s.hosts.iter().find(|h| h.name == "h2")
            && !h2.refusal.is_empty()
        {
            assert_eq!(h2.role, "standby");
            assert!(h2.refusal.contains("reservations"), "{}", h2.refusal);
            assert!(!h2.refusal.contains("networks"), "{}", h2.refusal);
            break;
        }
        assert!(
            start.elapsed() < dur(10),
            "h2 never said it refuses: {:?}",
            s.hosts
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c2 = control_at(&lab.control_url_of(2), &lab.control_token()).await;
    let st = c2.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert!(st.message().contains("refuses to lead"), "{}", st.message());
    let log = std::fs::read_to_string(lab.dir.join("host2.log")).unwrap();
    assert!(log.contains("refusing to lead"), "{log}");

    // The only host with the cluster's configuration goes: h2 may now lead, with its own.
    lab.host_daemon(1).unwrap().stop(libc::SIGTERM).unwrap();
    let (next, _) = new_leader(&lab, Some(1), 1, dur(15)).await;
    assert_eq!(next, 2);
}

/// Two hosts serving mTLS, each with its own certificate (one CA, each naming its own
/// address): runners with client certificates join the leader, follow the standby when the
/// leader hands over (SIGTERM), keep their tunnels, and the CLI given both `https://` URLs
/// reaches whichever host leads, before and after, and with the old leader back as a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_over_mtls_hand_the_role_over_and_runners_follow() {
    let mut s = spec_two_hosts("ft");
    s.plaintext = false;
    let certs_dir = TempDir(std::env::temp_dir().join(format!("weir-{}-pki", s.name)));
    let d = certs_dir.0.join("pki");
    let dir = d.to_str().unwrap().to_string();
    certs(&["ca", "--dir", &dir]);
    for i in 1..=2 {
        let ip = lab::host_ip(i).to_string();
        certs(&[
            "host",
            "--dir",
            &dir,
            "--name",
            &lab::host_member(i),
            "--san",
            &ip,
        ]);
    }
    certs(&["runner", "--dir", &dir, "--name", "runner"]);
    certs(&["runner", "--dir", &dir, "--name", "cli"]);
    let ca = format!("{dir}/ca.pem");
    s.host_keys = format!(
        "tls_cert = \"{dir}/{{member}}.pem\"\ntls_key = \"{dir}/{{member}}.key\"\ntls_client_ca = \"{ca}\"\n"
    );
    s.host_url = format!("https://{}:{}", lab::host_ip(1), lab::HOST_PORT);
    s.runner_keys = format!(
        "tls_ca = \"{ca}\"\ntls_cert = \"{dir}/runner.pem\"\ntls_key = \"{dir}/runner.key\"\n"
    );
    let mut lab = two_hosts_from(s).await;
    assert!(lab.host_url(2).starts_with("https://"));
    let both = format!("{},{}", lab.host_url(1), lab.host_url(2));
    // `weir status` over TCP with both URLs, from host 2's namespace (it reaches both).
    let status = |lab: &Lab| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args([
            "status",
            "--json",
            "--host",
            &both,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &format!("{dir}/cli.pem"),
            "--tls-key",
            &format!("{dir}/cli.key"),
        ])
        .env("WEIR_TOKEN", lab.control_token());
        run_in_namespace(&mut cmd, &lab.ns(&lab::host_member(2))).unwrap();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "weir status --host {both}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let leader = v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["role"] == "leader")
            .map(|h| h["name"].as_str().unwrap().to_string());
        (leader, v["leader_term"].as_u64().unwrap())
    };
    let (first, term) = status(&lab);
    assert_eq!(first.as_deref(), Some("h1"));

    let b1 = workload_ip(&lab, 2, 1).await;
    let cross = TimedPing::start(&lab, "r1-w1", b1);
    wait_until("the cross-runner ping answers", dur(10), || {
        cross.count() > 5
    })
    .await;
    let tunnels = runner_links(&lab, "r1").await;
    let stopped = Instant::now();
    lab.host_daemon(1).unwrap().stop(libc::SIGTERM).unwrap();
    let (next, _) = new_leader(&lab, Some(1), term, dur(20)).await;
    assert_eq!(next, 2);
    settled(&lab, 2, &cross).await;
    println!(
        "mTLS handover: cross-runner gap {:?}",
        cross.gap_since(stopped)
    );
    assert_eq!(
        runner_links(&lab, "r1").await,
        tunnels,
        "a runner link was re-created"
    );
    let (now, next_term) = status(&lab);
    assert_eq!(now.as_deref(), Some("h2"));
    assert!(next_term > term);

    // The old leader, back, stands by; the CLI still finds the leader past it.
    lab.start_host_n(1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status(&lab).0.as_deref(), Some("h2"));
    assert_eq!(leader(&lab).await.map(|l| l.0), Some(2));
}
