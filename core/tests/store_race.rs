//! Two writers on one etcd, each a process of its own using the store interface, allocate
//! runner ids, addresses and reservations from the same small pools at once, release and
//! re-allocate them in rounds. The store's guarded transactions must never let one be held
//! twice, and every acknowledged allocation must be there.
//!
//! The writers are this test binary run again with `WEIR_RACE_WRITER` set (the test
//! `writer_process` does the work then and nothing otherwise); each writes what it was told
//! (allocated / released, with the etcd revision of the commit) to a log the test checks.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use weir::lab::etcd::{EtcdCluster, EtcdSpec};
use weir::store::{
    Change, Commit, EtcdOptions, EtcdStore, ReservationRecord, RunnerRecord, Store, StoreError,
    WorkloadRecord, workload_key,
};

/// Allocations in flight at once in each writer.
const CONCURRENT: usize = 100;
/// Rounds of allocate-all, release-half.
const ROUNDS: usize = 2;
/// Addresses in the shared pool (both writers start at the same slots, so they collide).
const ADDRESSES: u8 = 240;
/// Runner ids in the shared pool.
const IDS: u32 = 120;

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 128, 64, 2 + i)
}

fn workload(id: &str, addr: Ipv4Addr) -> WorkloadRecord {
    WorkloadRecord {
        network: "default".into(),
        id: id.into(),
        runner: "r1".into(),
        ip: ipnet::Ipv4Net::new(addr, 18).unwrap(),
        netns: format!("/run/netns/{id}").into(),
        ifname: "eth0".into(),
        labels: BTreeMap::new(),
        created_ms: 1,
        vm: false,
        mac: String::new(),
        reservation: None,
        firewall: None,
        handoff: false,
        firewall_monitor: false,
        default_route: true,
        netns_id: None,
        origin: "race".into(),
    }
}

fn reservation(id: &str, addr: Ipv4Addr) -> ReservationRecord {
    ReservationRecord {
        id: id.into(),
        network: "default".into(),
        runner: "r1".into(),
        ip: addr,
        created_ms: 1,
        expires_ms: i64::MAX,
        used_by: None,
    }
}

fn runner(name: &str, id: u32) -> RunnerRecord {
    RunnerRecord {
        name: name.into(),
        id: Some(id),
        physical_ip: Ipv4Addr::new(192, 0, 2, 1),
        labels: BTreeMap::new(),
        version: "race".into(),
        last_seen_ms: 1,
        generation: 1,
    }
}

/// One thing a writer holds: `ip:<n>` (a workload or a reservation on address n) or `id:<n>`.
#[derive(Clone)]
struct Held {
    resource: String,
    record: Change,
    release: Change,
}

/// What to try for the `k`-th allocation: a workload, a reservation or a runner id.
fn candidate(writer: &str, round: usize, k: usize, slot: u32) -> Held {
    let name = format!("{writer}-{round}-{k}");
    match k % 3 {
        0 | 1 => {
            let a = ip((slot % ADDRESSES as u32) as u8);
            if k.is_multiple_of(3) {
                Held {
                    resource: format!("ip:{a}"),
                    record: Change::PutWorkload(workload(&name, a)),
                    release: Change::DeleteWorkload(workload_key("default", &name)),
                }
            } else {
                Held {
                    resource: format!("ip:{a}"),
                    record: Change::PutReservation(reservation(&name, a)),
                    release: Change::DeleteReservation(name),
                }
            }
        }
        _ => {
            let id = slot % IDS + 1;
            Held {
                resource: format!("id:{id}"),
                record: Change::PutRunner(runner(&name, id)),
                release: Change::DeleteRunner(name),
            }
        }
    }
}

/// The writer's side: runs only in the child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_process() {
    let Ok(writer) = std::env::var("WEIR_RACE_WRITER") else {
        return;
    };
    let endpoints: Vec<String> = std::env::var("WEIR_RACE_ENDPOINTS")
        .unwrap()
        .split(',')
        .map(String::from)
        .collect();
    let log = PathBuf::from(std::env::var("WEIR_RACE_LOG").unwrap());
    let store = Arc::new(
        EtcdStore::connect(EtcdOptions {
            endpoints,
            prefix: "/race/".into(),
            writer: writer.clone(),
            ..EtcdOptions::default()
        })
        .await
        .unwrap(),
    );
    store.load().await.unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut held: Vec<Held> = Vec::new();
    for round in 0..ROUNDS {
        // CONCURRENT allocations at once; each tries slots until one commits.
        let mut tasks = Vec::new();
        for k in 0..CONCURRENT {
            let store = store.clone();
            let writer = writer.clone();
            let lines = lines.clone();
            tasks.push(tokio::spawn(async move {
                let start = (k as u32).wrapping_mul(7) + round as u32 * 13;
                for attempt in 0..(ADDRESSES as u32 * 2) {
                    let h = candidate(&writer, round, k, start + attempt);
                    match store.commit(Commit::new(vec![h.record.clone()])).await {
                        Ok(rev) => {
                            lines
                                .lock()
                                .unwrap()
                                .push(format!("take {} {rev} {writer}-{round}-{k}", h.resource));
                            return Some(h);
                        }
                        // The other writer holds it: try the next one.
                        Err(StoreError::Conflict { .. }) => {
                            lines
                                .lock()
                                .unwrap()
                                .push(format!("lost {} 0 {writer}-{round}-{k}", h.resource));
                        }
                        Err(e) => panic!("{writer}: {e}"),
                    }
                }
                None
            }));
        }
        for t in tasks {
            if let Some(h) = t.await.unwrap() {
                held.push(h);
            }
        }
        // Release every other one (the rest stay held to the end).
        let mut keep = Vec::new();
        for (i, h) in held.drain(..).enumerate() {
            if i % 2 == 0 {
                let rev = loop {
                    match store.commit(Commit::new(vec![h.release.clone()])).await {
                        Ok(rev) => break rev,
                        Err(StoreError::Conflict { .. }) => store.load().await.map(|_| ()).unwrap(),
                        Err(e) => panic!("{writer}: {e}"),
                    }
                };
                lines.lock().unwrap().push(format!(
                    "free {} {rev} {}",
                    h.resource,
                    name_of(&h.release)
                ));
            } else {
                keep.push(h);
            }
        }
        held = keep;
    }
    for h in &held {
        lines
            .lock()
            .unwrap()
            .push(format!("kept {} 0 {}", h.resource, name_of(&h.release)));
    }
    std::fs::write(&log, lines.lock().unwrap().join("\n")).unwrap();
}

fn name_of(release: &Change) -> String {
    match release {
        Change::DeleteWorkload(k) => k.split('\u{0}').nth(1).unwrap_or(k).to_string(),
        Change::DeleteReservation(n) | Change::DeleteRunner(n) => n.clone(),
        _ => String::new(),
    }
}

#[test]
fn two_writer_processes_never_get_one_id_address_or_reservation_twice() {
    if std::env::var("WEIR_RACE_WRITER").is_ok() {
        return;
    }
    let etcd = EtcdCluster::start(EtcdSpec::local("race", 1)).unwrap();
    let dir = etcd.dir().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let me = std::env::current_exe().unwrap();
    let writers: Vec<_> = ["a", "b"]
        .iter()
        .map(|w| {
            let log = dir.join(format!("{w}.log"));
            let child = Command::new(&me)
                .args([
                    "--exact",
                    "writer_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("WEIR_RACE_WRITER", w)
                .env("WEIR_RACE_ENDPOINTS", etcd.endpoints().join(","))
                .env("WEIR_RACE_LOG", &log)
                .spawn()
                .unwrap();
            (child, log)
        })
        .collect();
    let mut events: Vec<(String, String, i64, String)> = Vec::new();
    for (mut child, log) in writers {
        let status = child.wait().unwrap();
        assert!(status.success(), "a writer failed: {status}");
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            events.push((f[0].into(), f[1].into(), f[2].parse().unwrap(), f[3].into()));
        }
    }
    let takes = events.iter().filter(|e| e.0 == "take").count();
    let lost = events.iter().filter(|e| e.0 == "lost").count();
    assert!(
        lost > 0,
        "the writers never wanted the same thing: the race was not run"
    );
    eprintln!("{takes} allocations, {lost} refused because the other writer held them");
    assert!(
        takes >= 2 * ROUNDS * CONCURRENT / 2,
        "few allocations succeeded: {takes}"
    );
    // By etcd revision: a resource is taken only while nobody holds it.
    let mut timeline: Vec<&(String, String, i64, String)> = events
        .iter()
        .filter(|e| e.0 == "take" || e.0 == "free")
        .collect();
    timeline.sort_by_key(|e| e.2);
    let mut holder: BTreeMap<&str, &str> = BTreeMap::new();
    for (what, resource, rev, name) in timeline {
        match what.as_str() {
            "take" => {
                if let Some(other) = holder.insert(resource, name) {
                    panic!("{resource} given to {name} at revision {rev} while {other} held it");
                }
            }
            _ => {
                assert_eq!(holder.remove(resource.as_str()), Some(name.as_str()));
            }
        }
    }
    // Every acknowledged allocation not released is in the store, and nothing else is.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let snap = rt.block_on(async {
        let s = EtcdStore::connect(EtcdOptions {
            endpoints: etcd.endpoints(),
            prefix: "/race/".into(),
            writer: "checker".into(),
            timeout: Duration::from_secs(5),
            ..EtcdOptions::default()
        })
        .await
        .unwrap();
        s.load().await.unwrap()
    });
    let mut present: HashSet<String> = snap.workloads.values().map(|w| w.id.clone()).collect();
    present.extend(snap.reservations.keys().cloned());
    present.extend(snap.runners.keys().cloned());
    let held: HashSet<String> = holder.values().map(|n| n.to_string()).collect();
    let kept: HashSet<String> = events
        .iter()
        .filter(|e| e.0 == "kept")
        .map(|e| e.3.clone())
        .collect();
    assert_eq!(held, kept, "the writers' own account of what they hold");
    assert_eq!(
        present, held,
        "the store holds exactly the acknowledged allocations"
    );
}
