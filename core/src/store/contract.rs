//! The behaviour every store back end must show, written once against [`Store`]. A back end's
//! tests call [`every_behaviour`] with a function that opens a fresh, empty store (and, for
//! the reopen check, the same store again).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;

/// A back end under test: `open(n)` opens store number `n` (the same `n` again reopens the
/// same state; a new `n` is a fresh, empty one).
pub(crate) trait Harness {
    type S: Store;
    async fn open(&self, n: u32) -> Self::S;
}

pub(crate) fn runner(name: &str, id: u32) -> RunnerRecord {
    RunnerRecord {
        name: name.into(),
        id: Some(id),
        physical_ip: Ipv4Addr::new(192, 0, 2, 10 + id as u8),
        labels: BTreeMap::from([("rack".into(), "a".into())]),
        version: "test".into(),
        last_seen_ms: 1,
        generation: 1,
    }
}

pub(crate) fn workload(id: &str, runner: &str, ip: &str) -> WorkloadRecord {
    WorkloadRecord {
        network: "default".into(),
        id: id.into(),
        runner: runner.into(),
        ip: ip.parse().unwrap(),
        netns: format!("/run/netns/{id}").into(),
        ifname: "eth0".into(),
        labels: BTreeMap::from([("tenant".into(), "a".into())]),
        created_ms: 7,
        vm: false,
        mac: String::new(),
        reservation: None,
        firewall: Some(FirewallRecord {
            rules: vec![RuleRecord {
                direction: DirectionRecord::Ingress,
                peer: PeerRecord::Labels(BTreeMap::from([("tenant".into(), "a".into())])),
                protocol: ProtocolRecord::Tcp,
                ports: vec![PortRangeRecord {
                    first: 80,
                    last: 81,
                }],
                verdict: VerdictRecord::Allow,
            }],
            default_verdict: VerdictRecord::Deny,
        }),
        handoff: false,
        firewall_monitor: false,
        default_route: true,
        netns_id: Some(NamespaceId {
            dev: 4,
            ino: 4026532001,
        }),
        origin: "cni/podman".into(),
    }
}

fn reservation(id: &str) -> ReservationRecord {
    ReservationRecord {
        id: id.into(),
        network: "default".into(),
        runner: "r1".into(),
        ip: Ipv4Addr::new(10, 128, 64, 9),
        created_ms: 1,
        expires_ms: 2,
        used_by: None,
    }
}

fn event(seq: u64, trim_below: u64) -> Change {
    Change::PutEvent {
        seq,
        bytes: format!("event {seq}").into_bytes(),
        trim_below,
    }
}

/// Run every behaviour check against one back end.
pub(crate) async fn every_behaviour(h: &impl Harness) {
    a_new_store_is_empty(h).await;
    commits_survive_a_reopen(h).await;
    a_commit_is_all_or_nothing(h).await;
    deletes_remove_exactly_their_record(h).await;
    revisions_count_commits_and_empty_commits_change_nothing(h).await;
    events_read_in_order_after_a_sequence_and_are_trimmed(h).await;
    followers_see_every_commit_in_order(h).await;
    an_older_writer_term_is_fenced(h).await;
    the_store_keeps_its_own_meta_keys(h).await;
}

async fn a_new_store_is_empty(h: &impl Harness) {
    let s = h.open(1).await;
    let snap = s.load().await.unwrap();
    assert!(snap.runners.is_empty() && snap.workloads.is_empty() && snap.events.is_empty());
    assert!(snap.meta.is_empty(), "no hub meta yet: {:?}", snap.meta);
    assert_eq!(snap.revision, 0);
}

async fn commits_survive_a_reopen(h: &impl Harness) {
    let rev = {
        let s = h.open(2).await;
        s.commit(Commit::new(vec![
            Change::PutRunner(runner("r1", 1)),
            Change::PutPlaceholder(PlaceholderRecord {
                id: 3,
                physical_ip: Ipv4Addr::new(192, 0, 2, 99),
                recovered_ms: 5,
            }),
            Change::PutWorkload(workload("w1", "r1", "10.128.64.2/18")),
            Change::PutReservation(reservation("res-1")),
            event(1, 0),
            Change::PutMeta("plan".into(), "10.128.0.0/12/6/14".into()),
        ]))
        .await
        .unwrap()
    };
    assert!(rev > 0);
    let snap = h.open(2).await.load().await.unwrap();
    assert_eq!(snap.runners["r1"], runner("r1", 1));
    assert_eq!(
        snap.placeholders[&3].physical_ip,
        Ipv4Addr::new(192, 0, 2, 99)
    );
    assert_eq!(
        snap.workloads[&workload_key("default", "w1")],
        workload("w1", "r1", "10.128.64.2/18")
    );
    assert_eq!(snap.reservations["res-1"], reservation("res-1"));
    assert_eq!(
        snap.events,
        [StoredEvent {
            seq: 1,
            bytes: b"event 1".to_vec()
        }]
    );
    assert_eq!(snap.meta["plan"], "10.128.0.0/12/6/14");
    assert_eq!(snap.revision, rev);
}

async fn a_commit_is_all_or_nothing(h: &impl Harness) {
    let s = h.open(3).await;
    let rev = s
        .commit(Commit::new(vec![Change::PutRunner(runner("r1", 1))]))
        .await
        .unwrap();
    // A batch whose last change is refused applies none of its changes.
    let refused = s
        .commit(Commit::new(vec![
            Change::PutRunner(runner("r2", 2)),
            Change::DeleteRunner("r1".into()),
            Change::PutMeta("revision".into(), "99".into()),
        ]))
        .await;
    assert!(refused.is_err());
    let snap = s.load().await.unwrap();
    assert_eq!(snap.runners.keys().collect::<Vec<_>>(), ["r1"]);
    assert_eq!(snap.revision, rev, "a refused commit is no revision");
}

async fn deletes_remove_exactly_their_record(h: &impl Harness) {
    let s = h.open(4).await;
    s.commit(Commit::new(vec![
        Change::PutRunner(runner("r1", 1)),
        Change::PutRunner(runner("r2", 2)),
        Change::PutWorkload(workload("w1", "r1", "10.128.64.2/18")),
        Change::PutWorkload(workload("w2", "r1", "10.128.64.3/18")),
        Change::PutReservation(reservation("res-1")),
        Change::PutPlaceholder(PlaceholderRecord {
            id: 7,
            physical_ip: Ipv4Addr::new(192, 0, 2, 7),
            recovered_ms: 1,
        }),
    ]))
    .await
    .unwrap();
    s.commit(Commit::new(vec![
        Change::DeleteRunner("r2".into()),
        Change::DeleteWorkload(workload_key("default", "w1")),
        Change::DeleteReservation("res-1".into()),
        Change::DeletePlaceholder(7),
        // Deleting what is not there is fine.
        Change::DeleteRunner("nobody".into()),
    ]))
    .await
    .unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.runners.keys().collect::<Vec<_>>(), ["r1"]);
    assert_eq!(
        snap.workloads.keys().cloned().collect::<Vec<_>>(),
        [workload_key("default", "w2")]
    );
    assert!(snap.reservations.is_empty() && snap.placeholders.is_empty());
}

async fn revisions_count_commits_and_empty_commits_change_nothing(h: &impl Harness) {
    // The revision grows with every commit (by one in redb; by etcd's revision, which other
    // keys in the same etcd also move, in etcd) and an empty commit leaves it.
    let s = h.open(5).await;
    assert_eq!(s.commit(Commit::default()).await.unwrap(), 0);
    let r1 = s
        .commit(Commit::new(vec![Change::PutRunner(runner("r1", 1))]))
        .await
        .unwrap();
    assert!(r1 > 0);
    assert_eq!(s.commit(Commit::default()).await.unwrap(), r1);
    let r2 = s
        .commit(Commit::new(vec![Change::DeleteRunner("r1".into())]))
        .await
        .unwrap();
    assert!(r2 > r1);
    assert_eq!(s.load().await.unwrap().revision, r2);
}

async fn events_read_in_order_after_a_sequence_and_are_trimmed(h: &impl Harness) {
    let s = h.open(6).await;
    for seq in 1..=10 {
        s.commit(Commit::new(vec![event(seq, 0)])).await.unwrap();
    }
    let seqs = |v: Vec<StoredEvent>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(s.events_after(7, 100).await.unwrap()), [8, 9, 10]);
    assert_eq!(seqs(s.events_after(0, 2).await.unwrap()), [1, 2]);
    assert!(s.events_after(10, 100).await.unwrap().is_empty());
    assert!(s.events_after(u64::MAX, 100).await.unwrap().is_empty());
    // Appending with a trim point drops everything at or below it, in the same commit.
    s.commit(Commit::new(vec![event(11, 8)])).await.unwrap();
    assert_eq!(seqs(s.events_after(0, 100).await.unwrap()), [9, 10, 11]);
    assert_eq!(
        s.load()
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [9, 10, 11]
    );
}

async fn followers_see_every_commit_in_order(h: &impl Harness) {
    let s = h.open(7).await;
    let mut f = s.follow();
    let r1 = s
        .commit(Commit::new(vec![Change::PutRunner(runner("r1", 1))]))
        .await
        .unwrap();
    s.commit(Commit::default()).await.unwrap();
    let r2 = s
        .commit(Commit::new(vec![Change::DeleteRunner("r1".into())]))
        .await
        .unwrap();
    let a = f.recv().await.unwrap();
    let b = f.recv().await.unwrap();
    assert_eq!(a.revision, r1);
    assert_eq!(a.changes, [Change::PutRunner(runner("r1", 1))]);
    assert_eq!(b.revision, r2, "an empty commit is not published");
    assert!(f.try_recv().is_err());
}

async fn an_older_writer_term_is_fenced(h: &impl Harness) {
    let s = h.open(8).await;
    let at = |term| Commit {
        changes: vec![Change::PutMeta("by".into(), format!("term {term}"))],
        fence: Some(Fence::term(term)),
    };
    s.commit(at(1)).await.unwrap();
    s.commit(at(2)).await.unwrap();
    let before = s.load().await.unwrap().revision;
    match s.commit(at(1)).await {
        Err(StoreError::Fenced {
            term: 1,
            current: 2,
        }) => {}
        other => panic!("a deposed writer committed: {other:?}"),
    }
    assert_eq!(
        s.load().await.unwrap().revision,
        before,
        "the fenced commit applied nothing"
    );
    let last = s.commit(at(2)).await.unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.meta["by"], "term 2");
    assert_eq!(snap.revision, last);
}

async fn the_store_keeps_its_own_meta_keys(h: &impl Harness) {
    let s = h.open(9).await;
    s.commit(Commit::new(vec![Change::PutMeta(
        "next_event".into(),
        "5".into(),
    )]))
    .await
    .unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(
        snap.meta,
        BTreeMap::from([("next_event".to_string(), "5".to_string())]),
        "the store's version, revision and term are not the hub's meta"
    );
}
