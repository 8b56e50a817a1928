//! The hub's rules, tested without root and without namespaces: a real hub over a redb store
//! in a temporary directory, the recording fake of the host's kernel, and fake runners that
//! answer the hub's commands over real sessions (the same channels the API layer serves).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::Notify;
use weir_proto::v1 as pb;

use super::*;
use crate::dataplane::fake_host::FakeHost;
use crate::store::{RedbStore, StoreError};

// ---------------------------------------------------------------------------------------------
// The harness

/// A directory removed when the test ends, however it ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("weir-hub-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store whose commits can be made to fail (a full disk, a lost quorum).
struct Flaky {
    inner: RedbStore,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for Flaky {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn load(&self) -> Result<crate::store::Snapshot, StoreError> {
        self.inner.load().await
    }
    async fn commit(&self, c: Commit) -> Result<u64, StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) && !c.changes.is_empty() {
            return Err(StoreError::Db("injected: the disk is full".into()));
        }
        self.inner.commit(c).await
    }
    async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::store::StoredEvent>, StoreError> {
        self.inner.events_after(after, limit).await
    }
    fn follow(&self) -> broadcast::Receiver<Arc<crate::store::Committed>> {
        self.inner.follow()
    }
}

/// How a fake runner answers attaches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answers {
    /// Carry them out.
    Apply,
    /// Fail; with `nothing_applied` when it says it removed everything again.
    Fail { nothing_applied: bool },
    /// Never answer (a wedged runner).
    Silent,
}

/// A runner as the hub sees it: a session whose commands a task answers, holding in memory
/// the workloads it was told to hold.
struct FakeRunner {
    handle: SessionHandle,
    answers: Arc<StdMutex<Answers>>,
    /// (network, workload id) the runner holds.
    held: Arc<StdMutex<BTreeSet<(String, String)>>>,
    /// Every command's op name, in order.
    ops: Arc<StdMutex<Vec<String>>>,
    /// Told after each command is handled.
    handled: Arc<Notify>,
    revoked: Arc<StdMutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRunner {
    fn answer(&self, a: Answers) {
        *self.answers.lock().unwrap() = a;
    }
    fn holds(&self) -> BTreeSet<String> {
        self.held
            .lock()
            .unwrap()
            .iter()
            .map(|(_, w)| w.clone())
            .collect()
    }
    fn ops(&self) -> Vec<String> {
        self.ops.lock().unwrap().clone()
    }
}

impl Drop for FakeRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve(start: SessionStart) -> FakeRunner {
    let SessionStart {
        handle,
        mut outbound,
    } = start;
    let answers = Arc::new(StdMutex::new(Answers::Apply));
    let held: Arc<StdMutex<BTreeSet<(String, String)>>> = Arc::default();
    let ops: Arc<StdMutex<Vec<String>>> = Arc::default();
    let handled = Arc::new(Notify::new());
    let revoked: Arc<StdMutex<Option<String>>> = Arc::default();
    let task = {
        let (h, answers, held, ops, handled, revoked) = (
            handle.clone(),
            answers.clone(),
            held.clone(),
            ops.clone(),
            handled.clone(),
            revoked.clone(),
        );
        tokio::spawn(async move {
            while let Some(m) = outbound.recv().await {
                let cmd = match m.msg {
                    Some(pb::host_message::Msg::Command(c)) => c,
                    Some(pb::host_message::Msg::Revoked(r)) => {
                        *revoked.lock().unwrap() = Some(r.reason);
                        ops.lock().unwrap().push("revoked".into());
                        handled.notify_waiters();
                        continue;
                    }
                    _ => continue,
                };
                let Some(op) = cmd.op else { continue };
                let mut out = pb::CommandResult {
                    id: cmd.id,
                    ..Default::default()
                };
                let name = match &op {
                    pb::command::Op::Sync(_) => "sync",
                    pb::command::Op::Attach(_) => "attach",
                    pb::command::Op::Detach(_) => "detach",
                    pb::command::Op::Inspect(_) => "inspect",
                    pb::command::Op::Peers(_) => "peers",
                    pb::command::Op::Routes(_) => "routes",
                    pb::command::Op::Underlay(_) => "underlay",
                };
                let mut answer = true;
                match op {
                    pb::command::Op::Sync(set) => {
                        let mut held = held.lock().unwrap();
                        *held = set
                            .workloads
                            .iter()
                            .map(|w| (w.network.clone(), w.workload_id.clone()))
                            .collect();
                        out.held = Some(held_pb(&held));
                    }
                    pb::command::Op::Inspect(_) => {
                        out.held = Some(held_pb(&held.lock().unwrap()));
                    }
                    pb::command::Op::Attach(spec) => match *answers.lock().unwrap() {
                        Answers::Apply => {
                            held.lock()
                                .unwrap()
                                .insert((spec.network.clone(), spec.workload_id.clone()));
                            out.netns_id = Some(pb::NetnsIdentity { dev: 4, ino: 77 });
                        }
                        Answers::Fail { nothing_applied } => {
                            if !nothing_applied {
                                // Half-way: the interface stays until it is removed.
                                held.lock()
                                    .unwrap()
                                    .insert((spec.network.clone(), spec.workload_id.clone()));
                            }
                            out.error = "namespace-missing: /run/netns/x does not exist".into();
                            out.nothing_applied = nothing_applied;
                        }
                        Answers::Silent => answer = false,
                    },
                    pb::command::Op::Detach(r) => {
                        held.lock().unwrap().remove(&(r.network, r.workload_id));
                    }
                    _ => {}
                }
                ops.lock().unwrap().push(name.to_string());
                if answer {
                    h.complete(out);
                }
                handled.notify_waiters();
            }
        })
    };
    FakeRunner {
        handle,
        answers,
        held,
        ops,
        handled,
        revoked,
        task,
    }
}

fn held_pb(held: &BTreeSet<(String, String)>) -> pb::HeldWorkloads {
    pb::HeldWorkloads {
        workloads: held
            .iter()
            .map(|(n, w)| pb::HeldWorkload {
                network: n.clone(),
                workload_id: w.clone(),
                ..Default::default()
            })
            .collect(),
    }
}

fn settings(overlay: bool) -> HubSettings {
    let mut c = crate::config::Config::default();
    c.overlay.enabled = overlay;
    HubSettings {
        networks: crate::network::NetworkDef::from_config(&c, 1450),
        reachable_address: overlay.then_some(Ipv4Addr::new(192, 0, 2, 1)),
        heartbeat_timeout: Duration::from_secs(30),
        workload_grace: Duration::from_secs(30),
        command_timeout: Duration::from_secs(5),
        reservation_ttl: TtlBounds::default(),
        dns: Vec::new(),
        leadership: None,
    }
}

/// A hub with its store, its fake kernel and its connected fake runners.
struct Cluster {
    hub: Arc<Hub>,
    kernel: Arc<FakeHost>,
    store: Arc<Flaky>,
    settings: HubSettings,
    runners: BTreeMap<String, FakeRunner>,
    dir: TempDir,
}

async fn start(settings: HubSettings, dir: TempDir, kernel: Arc<FakeHost>) -> Cluster {
    let store = Arc::new(Flaky {
        inner: RedbStore::open(&dir.0.join("state")).unwrap(),
        fail: false.into(),
    });
    let policy = crate::policy::PolicyHost::load(&[], None, None)
        .await
        .unwrap();
    let hub = Hub::start(
        settings.clone(),
        store.clone(),
        kernel.clone(),
        Signer::from_key([7; 32]),
        policy,
    )
    .await
    .unwrap();
    Cluster {
        hub,
        kernel,
        store,
        settings,
        runners: BTreeMap::new(),
        dir,
    }
}

async fn cluster() -> Cluster {
    start(settings(true), TempDir::new(), Arc::default()).await
}

fn physical(name: &str) -> Ipv4Addr {
    let n: u8 = name
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0);
    Ipv4Addr::new(192, 0, 2, 10 + n)
}

impl Cluster {
    /// Register `name` and open its session; returns once the session is ready.
    async fn join(&mut self, name: &str) -> pb::RegisterResponse {
        let reg = self.register(name).await.unwrap();
        let start = self
            .hub
            .open_session(pb::SessionHello {
                name: name.into(),
                runner_id: reg.runner_id,
                generation: reg.generation,
            })
            .await
            .unwrap();
        let r = serve(start);
        r.handle.ready(Duration::from_secs(5)).await.unwrap();
        self.runners.insert(name.into(), r);
        reg
    }

    async fn register(&self, name: &str) -> Result<pb::RegisterResponse, HubError> {
        self.hub
            .register(pb::RegisterRequest {
                name: name.into(),
                physical_ip: physical(name).to_string(),
                ..Default::default()
            })
            .await
    }

    fn runner(&self, name: &str) -> &FakeRunner {
        &self.runners[name]
    }

    async fn attach(&self, runner: &str, id: &str) -> Result<pb::AttachWorkloadResponse, HubError> {
        attach(&self.hub, req(runner, id)).await
    }

    async fn detach(&self, id: &str) -> Result<(), HubError> {
        self.hub
            .detach(pb::DetachWorkloadRequest {
                workload_id: id.into(),
                ..Default::default()
            })
            .await
    }

    async fn workloads(&self) -> Vec<String> {
        let (w, _) = self
            .hub
            .list_workloads(pb::ListWorkloadsRequest::default())
            .await
            .unwrap();
        w.into_iter().map(|w| w.workload_id).collect()
    }

    async fn snapshot(&self) -> crate::store::Snapshot {
        self.store.load().await.unwrap()
    }

    /// The kinds of every event recorded so far, oldest first.
    async fn events(&self) -> Vec<pb::EventKind> {
        self.hub
            .watch(0, false)
            .await
            .unwrap()
            .backlog
            .iter()
            .map(|e| pb::EventKind::try_from(e.kind).unwrap())
            .collect()
    }

    /// Wait until the runner has handled `n` commands of kind `op` in all.
    async fn handled(&self, runner: &str, op: &str, n: usize) {
        let r = self.runner(runner);
        let done = || r.ops().iter().filter(|o| *o == op).count() >= n;
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let notified = r.handled.notified();
                if done() {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{runner} never handled {n} {op}: {:?}", r.ops()));
    }

    /// r1's first address (.2) is handed out again soon: the hub handles the runner's
    /// confirmation just after its answer, so an attach in between still gets .3.
    async fn first_address_free_again(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let a = self.attach("r1", "probe").await.unwrap();
            if a.ip == "10.128.64.2/18" {
                return;
            }
            assert_eq!(a.ip, "10.128.64.3/18", "only the held address is skipped");
            self.detach("probe").await.unwrap();
            assert!(
                tokio::time::Instant::now() < deadline,
                "the address was never freed"
            );
            tokio::task::yield_now().await;
        }
    }

    /// The host restarts: the hub is dropped (its sessions with it) and started again on the
    /// same store and kernel.
    async fn restart(self, settings: HubSettings) -> Cluster {
        let Cluster {
            hub,
            kernel,
            runners,
            dir,
            store,
            ..
        } = self;
        drop(runners);
        drop(store);
        drop(hub);
        start(settings, dir, kernel).await
    }
}

/// An attach as the API layer makes it: the request parsed, then handed to the hub.
async fn attach(
    hub: &Arc<Hub>,
    r: pb::AttachWorkloadRequest,
) -> Result<pb::AttachWorkloadResponse, HubError> {
    hub.attach(AttachRequest::parse(r)?).await
}

fn req(runner: &str, id: &str) -> pb::AttachWorkloadRequest {
    pb::AttachWorkloadRequest {
        runner: runner.into(),
        workload_id: id.into(),
        netns: format!("/run/netns/{id}"),
        ..Default::default()
    }
}

fn code(r: Result<impl std::fmt::Debug, HubError>) -> (&'static str, String) {
    let e = r.expect_err("refused");
    let c = match &e {
        HubError::InvalidArgument(_) => "invalid",
        HubError::NotFound(_) => "not-found",
        HubError::AlreadyExists(_) => "exists",
        HubError::FailedPrecondition(_) => "precondition",
        HubError::ResourceExhausted(_) => "exhausted",
        HubError::PermissionDenied(_) => "denied",
        HubError::Unavailable(_) => "unavailable",
        HubError::Runner(_) => "runner",
        HubError::Store(_) => "store",
        HubError::Dataplane(_) => "kernel",
        _ => "other",
    };
    (c, e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Attach and detach

#[tokio::test]
async fn an_attach_gets_the_first_free_address_and_is_stored_with_its_event() {
    let mut c = cluster().await;
    c.join("r1").await;
    let a = c.attach("r1", "w1").await.unwrap();
    assert_eq!(a.ip, "10.128.64.2/18");
    assert_eq!(a.gateway, "10.128.64.1");
    let b = c.attach("r1", "w2").await.unwrap();
    assert_eq!(b.ip, "10.128.64.3/18");
    let snap = c.snapshot().await;
    let w1 = &snap.workloads[&crate::store::workload_key("default", "w1")];
    assert_eq!(w1.ip.to_string(), "10.128.64.2/18");
    assert_eq!(
        w1.netns_id,
        Some(crate::store::NamespaceId { dev: 4, ino: 77 }),
        "the identity the runner reported is kept"
    );
    assert_eq!(
        c.events()
            .await
            .iter()
            .filter(|k| **k == pb::EventKind::WorkloadAttached)
            .count(),
        2
    );
    assert_eq!(
        c.runner("r1").holds(),
        BTreeSet::from(["w1".into(), "w2".into()])
    );
}

#[tokio::test]
async fn a_repeat_attach_with_the_same_arguments_gets_the_same_answer_and_no_new_event() {
    let mut c = cluster().await;
    c.join("r1").await;
    let a = c.attach("r1", "w1").await.unwrap();
    let events = c.events().await.len();
    let b = c.attach("r1", "w1").await.unwrap();
    assert_eq!(a, b);
    assert_eq!(c.events().await.len(), events);
    assert_eq!(c.workloads().await, ["w1"]);
}

#[tokio::test]
async fn a_changed_repeat_attach_is_refused_naming_the_field() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.join("r2").await;
    c.attach("r1", "w1").await.unwrap();
    let mut other_ns = req("r1", "w1");
    other_ns.netns = "/run/netns/elsewhere".into();
    let (k, m) = code(attach(&c.hub, other_ns).await);
    assert_eq!(k, "exists");
    assert!(m.contains("netns"), "{m}");
    let (k, m) = code(c.attach("r2", "w1").await);
    assert_eq!(k, "exists");
    assert!(m.contains("runner"), "{m}");
    let mut labelled = req("r1", "w1");
    labelled.labels = [("tenant".to_string(), "b".to_string())].into();
    let (k, m) = code(attach(&c.hub, labelled).await);
    assert_eq!(k, "exists");
    assert!(m.contains("labels"), "{m}");
}

#[tokio::test]
async fn refused_attaches_name_their_field_and_change_nothing() {
    let mut c = cluster().await;
    c.join("r1").await;
    let before = c.snapshot().await.revision;
    let events = c.events().await.len();
    let mut cases: Vec<(pb::AttachWorkloadRequest, &str, &str)> = Vec::new();
    cases.push((req("nobody", "w1"), "not-found", "nobody"));
    cases.push((req("r1", "bad id!"), "invalid", "workload_id"));
    cases.push((req("r1", ""), "invalid", "workload_id"));
    let mut relative = req("r1", "w1");
    relative.netns = "run/netns/w1".into();
    cases.push((relative, "invalid", "netns"));
    let mut pid1 = req("r1", "w1");
    pid1.netns = String::new();
    pid1.pid = 1;
    cases.push((pid1, "invalid", "pid"));
    let mut proc1 = req("r1", "w1");
    proc1.netns = "/proc/1/ns/net".into();
    cases.push((proc1, "invalid", "netns"));
    let mut outside = req("r1", "w1");
    outside.requested_ip = "10.128.128.5".into();
    cases.push((outside, "invalid", "requested_ip"));
    let mut gateway = req("r1", "w1");
    gateway.requested_ip = "10.128.64.1".into();
    cases.push((gateway, "invalid", "requested_ip"));
    let mut net = req("r1", "w1");
    net.network = "nope".into();
    cases.push((net, "not-found", "network"));
    let mut forged = req("r1", "w1");
    forged.reservation_token = "wr1.forged.token".into();
    cases.push((forged, "invalid", "reservation_token"));
    for (r, want, field) in cases {
        let (k, m) = code(attach(&c.hub, r.clone()).await);
        assert_eq!(k, want, "{r:?}: {m}");
        assert!(m.contains(field), "{r:?}: {m}");
        assert!(m.len() < 400, "{m}");
    }
    assert_eq!(c.snapshot().await.revision, before, "nothing was committed");
    assert_eq!(c.events().await.len(), events);
    assert!(c.runner("r1").holds().is_empty());
    assert_eq!(c.attach("r1", "w1").await.unwrap().ip, "10.128.64.2/18");
}

#[tokio::test]
async fn a_runner_refusal_that_applied_nothing_frees_the_address_before_the_call_returns() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.runner("r1").answer(Answers::Fail {
        nothing_applied: true,
    });
    let (k, m) = code(c.attach("r1", "w1").await);
    assert_eq!(k, "runner");
    assert!(m.contains("namespace-missing"), "{m}");
    assert!(c.workloads().await.is_empty());
    assert!(c.snapshot().await.workloads.is_empty());
    assert!(
        !c.runner("r1").ops().contains(&"detach".to_string()),
        "nothing to remove"
    );
    c.runner("r1").answer(Answers::Apply);
    assert_eq!(c.attach("r1", "w2").await.unwrap().ip, "10.128.64.2/18");
}

#[tokio::test]
async fn a_failed_attach_that_may_have_left_something_keeps_its_address_until_the_runner_confirms()
{
    let mut c = cluster().await;
    c.join("r1").await;
    c.runner("r1").answer(Answers::Fail {
        nothing_applied: false,
    });
    let (k, _) = code(c.attach("r1", "w1").await);
    assert_eq!(k, "runner");
    assert!(c.snapshot().await.workloads.is_empty(), "never stored");
    assert!(
        !c.events().await.contains(&pb::EventKind::WorkloadAttached),
        "never announced"
    );
    // The hub asks the runner to remove what it may hold, then frees the address.
    c.handled("r1", "detach", 1).await;
    assert!(c.runner("r1").holds().is_empty());
    c.runner("r1").answer(Answers::Apply);
    c.first_address_free_again().await;
}

#[tokio::test]
async fn an_unanswered_attach_is_unavailable_never_stored_and_its_address_not_reused() {
    let mut s = settings(true);
    s.command_timeout = Duration::from_millis(200);
    let mut c = start(s, TempDir::new(), Arc::default()).await;
    c.join("r1").await;
    c.runner("r1").answer(Answers::Silent);
    let (k, m) = code(c.attach("r1", "w1").await);
    assert_eq!(k, "unavailable", "{m}");
    assert!(m.contains("not acknowledged"), "{m}");
    assert!(c.snapshot().await.workloads.is_empty());
    // The runner never confirmed it holds nothing of w1: its address stays taken.
    c.runner("r1").answer(Answers::Apply);
    assert_eq!(c.attach("r1", "w2").await.unwrap().ip, "10.128.64.3/18");
}

#[tokio::test]
async fn a_detach_is_stored_first_and_the_address_is_free_once_the_runner_confirms() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.attach("r1", "w1").await.unwrap();
    c.detach("w1").await.unwrap();
    assert!(c.snapshot().await.workloads.is_empty());
    assert_eq!(
        c.events().await.last(),
        Some(&pb::EventKind::WorkloadDetached)
    );
    assert!(c.runner("r1").holds().is_empty());
    assert_eq!(c.attach("r1", "w2").await.unwrap().ip, "10.128.64.2/18");
}

#[tokio::test]
async fn detaching_an_unknown_workload_is_not_found_and_changes_nothing() {
    let mut c = cluster().await;
    c.join("r1").await;
    let before = c.snapshot().await.revision;
    let (k, m) = code(c.detach("ghost").await);
    assert_eq!(k, "not-found", "{m}");
    assert_eq!(c.snapshot().await.revision, before);
}

#[tokio::test]
async fn a_store_that_cannot_commit_refuses_the_attach_and_keeps_nothing() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.store
        .fail
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (k, m) = code(c.attach("r1", "w1").await);
    assert_eq!(k, "store", "{m}");
    assert!(c.workloads().await.is_empty(), "not in memory either");
    c.store
        .fail
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // The interface the runner built is removed again before its address is reused.
    c.handled("r1", "detach", 1).await;
    c.first_address_free_again().await;
}

#[tokio::test]
async fn an_attach_to_an_inactive_runner_is_refused() {
    let mut s = settings(true);
    s.heartbeat_timeout = Duration::from_millis(50);
    let mut c = start(s, TempDir::new(), Arc::default()).await;
    c.join("r1").await;
    // The runner stops sending heartbeats: time passes beyond its timeout.
    tokio::time::sleep(Duration::from_millis(120)).await;
    c.hub.check_liveness().await;
    assert!(c.events().await.contains(&pb::EventKind::RunnerInactive));
    let (k, m) = code(c.attach("r1", "w1").await);
    assert_eq!(k, "precondition", "{m}");
    // A heartbeat brings it back.
    c.hub.heartbeat("r1", c.runner("r1").handle.id).await;
    c.hub.check_liveness().await;
    assert_eq!(c.events().await.last(), Some(&pb::EventKind::RunnerActive));
}

#[tokio::test]
async fn a_workload_whose_namespace_is_gone_is_detached_with_the_reason() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.attach("r1", "w1").await.unwrap();
    c.attach("r1", "w2").await.unwrap();
    let session = c.runner("r1").handle.id;
    c.hub
        .workloads_gone(
            "r1",
            session,
            pb::WorkloadsGone {
                workloads: vec![pb::GoneWorkload {
                    network: "default".into(),
                    workload_id: "w1".into(),
                    reason: "the namespace at /run/netns/w1 no longer exists".into(),
                }],
            },
        )
        .await;
    assert_eq!(c.workloads().await, ["w2"]);
    let watch = c.hub.watch(0, false).await.unwrap();
    let last = watch.backlog.last().unwrap();
    assert_eq!(last.kind, pb::EventKind::WorkloadDetached as i32);
    assert!(last.detail.starts_with("namespace gone"), "{}", last.detail);
}

#[tokio::test]
async fn workloads_are_listed_by_runner_and_label() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.join("r2").await;
    for (r, id, tenant) in [("r1", "a", "x"), ("r1", "b", "y"), ("r2", "c", "x")] {
        let mut q = req(r, id);
        q.labels = [("tenant".to_string(), tenant.to_string())].into();
        attach(&c.hub, q).await.unwrap();
    }
    let list = |q: pb::ListWorkloadsRequest| {
        let hub = c.hub.clone();
        async move {
            let (w, _) = hub.list_workloads(q).await.unwrap();
            w.into_iter().map(|w| w.workload_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(pb::ListWorkloadsRequest {
            runner: "r1".into(),
            ..Default::default()
        })
        .await,
        ["a", "b"]
    );
    assert_eq!(
        list(pb::ListWorkloadsRequest {
            labels: [("tenant".to_string(), "x".to_string())].into(),
            ..Default::default()
        })
        .await,
        ["a", "c"]
    );
    let (k, _) = code(
        c.hub
            .list_workloads(pb::ListWorkloadsRequest {
                runner: "nobody".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(k, "not-found");
}

// ---------------------------------------------------------------------------------------------
// Reservations

async fn reserve(c: &Cluster, runner: &str) -> pb::ReserveAddressResponse {
    c.hub
        .reserve(pb::ReserveAddressRequest {
            runner: runner.into(),
            ..Default::default()
        })
        .await
        .unwrap()
}

fn with_token(runner: &str, id: &str, token: &str) -> pb::AttachWorkloadRequest {
    let mut r = req(runner, id);
    r.reservation_token = token.into();
    r
}

#[tokio::test]
async fn a_reservation_holds_its_address_and_is_used_once() {
    let mut c = cluster().await;
    c.join("r1").await;
    let res = reserve(&c, "r1").await;
    assert_eq!(res.ip, "10.128.64.2");
    // Nobody else gets the reserved address.
    assert_eq!(c.attach("r1", "other").await.unwrap().ip, "10.128.64.3/18");
    let a = attach(&c.hub, with_token("r1", "w1", &res.token))
        .await
        .unwrap();
    assert_eq!(a.ip, "10.128.64.2/18");
    let (k, m) = code(attach(&c.hub, with_token("r1", "w2", &res.token)).await);
    assert_eq!(k, "precondition", "{m}");
    assert!(m.contains("reservation_token"), "{m}");
    assert!(c.events().await.contains(&pb::EventKind::ReservationUsed));
}

#[tokio::test]
async fn a_reservation_is_bound_to_its_runner() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.join("r2").await;
    let res = reserve(&c, "r1").await;
    let (k, m) = code(attach(&c.hub, with_token("r2", "w1", &res.token)).await);
    assert_eq!(k, "denied", "{m}");
    assert!(c.workloads().await.is_empty());
    // Still usable on its own runner.
    attach(&c.hub, with_token("r1", "w1", &res.token))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_altered_reservation_token_is_refused() {
    let mut c = cluster().await;
    c.join("r1").await;
    let res = reserve(&c, "r1").await;
    let mut altered = res.token.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let (k, m) = code(attach(&c.hub, with_token("r1", "w1", &altered)).await);
    assert!(k == "denied" || k == "invalid", "{k}: {m}");
    assert!(m.contains("reservation_token"), "{m}");
    assert!(c.workloads().await.is_empty());
}

#[tokio::test]
async fn reservation_ttls_outside_the_bounds_are_refused_and_the_default_applies() {
    let mut c = cluster().await;
    c.join("r1").await;
    for ttl in [1, 59, 1801] {
        let (k, m) = code(
            c.hub
                .reserve(pb::ReserveAddressRequest {
                    runner: "r1".into(),
                    ttl_seconds: ttl,
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(k, "invalid", "{ttl}: {m}");
        assert!(m.contains("ttl"), "{m}");
    }
    let res = reserve(&c, "r1").await;
    let (made, expires) = (crate::clock::now_ms(), res.expires_unix_ms);
    assert!(
        (expires - made - 300_000).abs() < 10_000,
        "default 300 s: {res:?}"
    );
}

#[tokio::test]
async fn a_released_reservation_gives_its_address_back_and_its_token_is_dead() {
    let mut c = cluster().await;
    c.join("r1").await;
    let res = reserve(&c, "r1").await;
    c.hub
        .release_reservation(pb::ReleaseReservationRequest {
            token: res.token.clone(),
        })
        .await
        .unwrap();
    assert_eq!(c.attach("r1", "w1").await.unwrap().ip, "10.128.64.2/18");
    let (k, _) = code(attach(&c.hub, with_token("r1", "w2", &res.token)).await);
    assert!(k == "not-found" || k == "precondition", "{k}");
}

// ---------------------------------------------------------------------------------------------
// Runners: ids, tunnels, release

#[tokio::test]
async fn runners_get_distinct_ids_and_keep_them_when_they_register_again() {
    let mut c = cluster().await;
    let r1 = c.join("r1").await;
    let r2 = c.join("r2").await;
    assert_eq!((r1.runner_id, r2.runner_id), (1, 2));
    let again = c.register("r1").await.unwrap();
    assert_eq!(again.runner_id, 1);
    assert_eq!(again.generation, r1.generation, "the same allocation");
}

#[tokio::test]
async fn a_registration_builds_the_runners_tunnel_and_underlay_before_it_answers() {
    let mut c = cluster().await;
    c.join("r1").await;
    assert_eq!(
        c.kernel.tunnels(),
        BTreeMap::from([(("default".to_string(), 1), physical("r1"))])
    );
    assert!(c.kernel.underlay().contains(&physical("r1")));
}

#[tokio::test]
async fn a_tunnel_the_kernel_refuses_refuses_the_registration_and_records_nothing() {
    let c = cluster().await;
    c.kernel.fail("ensure_tunnel default 1");
    let before = c.snapshot().await.revision;
    let (k, m) = code(c.register("r1").await);
    assert_eq!(k, "kernel", "{m}");
    assert!(c.snapshot().await.runners.is_empty());
    assert_eq!(c.snapshot().await.revision, before);
}

#[tokio::test]
async fn bad_registrations_are_refused_naming_the_field() {
    let c = cluster().await;
    let bad_ip = c
        .hub
        .register(pb::RegisterRequest {
            name: "r1".into(),
            physical_ip: "not-an-ip".into(),
            ..Default::default()
        })
        .await;
    let (k, m) = code(bad_ip);
    assert_eq!(k, "invalid");
    assert!(m.contains("physical_ip"), "{m}");
    let bad_name = c
        .hub
        .register(pb::RegisterRequest {
            name: "r1#2".into(),
            physical_ip: "192.0.2.11".into(),
            ..Default::default()
        })
        .await;
    let (k, m) = code(bad_name);
    assert_eq!(k, "invalid");
    assert!(m.contains("name"), "{m}");
    assert!(c.snapshot().await.runners.is_empty());
}

#[tokio::test]
async fn a_released_runner_loses_its_workloads_and_tunnel_and_its_id_is_reused() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.join("r2").await;
    c.attach("r1", "w1").await.unwrap();
    let r = c.hub.release_runner("r1").await.unwrap();
    assert_eq!((r.released_id, r.workloads_removed), (1, 1));
    assert!(c.workloads().await.is_empty());
    assert!(!c.kernel.tunnels().contains_key(&("default".to_string(), 1)));
    c.handled("r1", "revoked", 1).await;
    assert!(
        c.runner("r1").revoked.lock().unwrap().is_some(),
        "the runner was told why"
    );
    assert!(c.events().await.contains(&pb::EventKind::RunnerLeft));
    let r3 = c.join("r3").await;
    assert_eq!(r3.runner_id, 1, "the freed id is handed out again");
}

#[tokio::test]
async fn a_session_presenting_a_stale_allocation_is_refused() {
    let mut c = cluster().await;
    let reg = c.join("r1").await;
    let (k, m) = code(
        c.hub
            .open_session(pb::SessionHello {
                name: "r1".into(),
                runner_id: reg.runner_id,
                generation: reg.generation + 1,
            })
            .await
            .map(|_| ()),
    );
    assert_eq!(k, "precondition");
    assert!(m.contains("register again"), "{m}");
    let (k, _) = code(
        c.hub
            .open_session(pb::SessionHello {
                name: "stranger".into(),
                runner_id: 9,
                generation: 1,
            })
            .await
            .map(|_| ()),
    );
    assert_eq!(k, "precondition");
}

#[tokio::test]
async fn a_new_session_starts_with_a_sync_of_exactly_the_runners_workloads() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.join("r2").await;
    c.attach("r1", "w1").await.unwrap();
    c.attach("r2", "w2").await.unwrap();
    // r1 reconnects (say, after a restart that lost its memory).
    c.runners.remove("r1");
    let reg = c.register("r1").await.unwrap();
    let start = c
        .hub
        .open_session(pb::SessionHello {
            name: "r1".into(),
            runner_id: reg.runner_id,
            generation: reg.generation,
        })
        .await
        .unwrap();
    let r = serve(start);
    r.handle.ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.ops().first().map(String::as_str), Some("sync"));
    assert_eq!(r.holds(), BTreeSet::from(["w1".to_string()]));
}

// ---------------------------------------------------------------------------------------------
// Host restarts and plans

#[tokio::test]
async fn after_a_host_restart_records_addresses_and_event_numbers_carry_on() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.attach("r1", "w1").await.unwrap();
    let last = c
        .hub
        .watch(0, false)
        .await
        .unwrap()
        .backlog
        .last()
        .unwrap()
        .seq;
    let s = c.settings.clone();
    let mut c = c.restart(s).await;
    assert_eq!(c.workloads().await, ["w1"]);
    c.join("r1").await;
    assert_eq!(c.attach("r1", "w2").await.unwrap().ip, "10.128.64.3/18");
    let next = c.hub.watch(last, false).await.unwrap().backlog;
    assert!(next.iter().all(|e| e.seq > last));
    assert_eq!(next.first().map(|e| e.seq), Some(last + 1), "no gap");
}

#[tokio::test]
async fn an_unclaimed_tunnel_found_at_start_becomes_a_placeholder_its_runner_claims() {
    let kernel = Arc::new(FakeHost::default());
    kernel.leave_tunnel("default", 5, physical("r7"));
    let mut c = start(settings(true), TempDir::new(), kernel).await;
    assert_eq!(
        c.snapshot().await.placeholders.keys().collect::<Vec<_>>(),
        [&5]
    );
    // Other runners do not get its id.
    assert_eq!(c.join("r1").await.runner_id, 1);
    // The runner from its address does, and its tunnel is kept as it was.
    assert_eq!(c.join("r7").await.runner_id, 5);
    assert!(c.snapshot().await.placeholders.is_empty());
    assert!(
        !c.kernel
            .calls()
            .iter()
            .any(|x| x.starts_with("remove_tunnel default 5")),
        "{:?}",
        c.kernel.calls()
    );
}

#[tokio::test]
async fn a_tunnel_of_an_id_outside_the_plan_is_removed_at_start() {
    let kernel = Arc::new(FakeHost::default());
    // The default plan has 6 node bits: id 4000 is far outside it.
    kernel.leave_tunnel("default", 4000, physical("r9"));
    let c = start(settings(true), TempDir::new(), kernel).await;
    assert!(c.snapshot().await.placeholders.is_empty());
    assert!(c.kernel.tunnels().is_empty(), "{:?}", c.kernel.calls());
}

#[tokio::test]
async fn a_plan_change_drops_what_the_new_plan_does_not_allow() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.attach("r1", "w1").await.unwrap();
    let mut cfg = crate::config::Config::default();
    cfg.overlay.subnet = "10.192.0.0/12/6/14".parse().unwrap();
    let mut s = c.settings.clone();
    s.networks = crate::network::NetworkDef::from_config(&cfg, 1450);
    let c = c.restart(s).await;
    // The old addresses are not in the new plan: the workload is gone, the runner stays.
    assert!(c.workloads().await.is_empty());
    assert_eq!(
        c.snapshot().await.meta.get("plan").map(String::as_str),
        Some("10.192.0.0/12/6/14")
    );
}

#[tokio::test]
async fn in_isolated_mode_the_hub_builds_nothing_in_the_kernel() {
    let mut c = start(settings(false), TempDir::new(), Arc::default()).await;
    let reg = c.join("r1").await;
    assert_eq!(reg.runner_id, 0, "no overlay: no id");
    assert!(c.kernel.tunnels().is_empty());
    let status = c.hub.status().await;
    assert!(!status.overlay_enabled);
}

#[tokio::test]
async fn status_counts_runners_workloads_and_reservations() {
    let mut c = cluster().await;
    c.join("r1").await;
    c.join("r2").await;
    c.attach("r1", "w1").await.unwrap();
    reserve(&c, "r2").await;
    let s = c.hub.status().await;
    assert_eq!((s.active_runners, s.workloads, s.reservations), (2, 1, 1));
    assert_eq!(s.plan, "10.128.0.0/12/6/14");
    assert_eq!(s.host_ip, "10.128.0.1/12");
    assert!(s.last_event_seq > 0);
}

// ---------------------------------------------------------------------------------------------
// Several networks

/// Two overlay networks, `private` (the primary) and `public`, as docs/networks.md shows.
fn two_networks(dir: &TempDir) -> HubSettings {
    let path = dir.0.join("weir.toml");
    std::fs::write(
        &path,
        "[[networks]]\nname = \"private\"\nsubnet = \"10.128.0.0/12/6/14\"\nvxlan_id_base = 100\n\n\
         [[networks]]\nname = \"public\"\nsubnet = \"198.51.100.0/22/2/8\"\nvxlan_id_base = 1000\n\
         masquerade = false\negress = \"via-host\"\n",
    )
    .unwrap();
    let loaded = crate::config::load(Some(&path)).unwrap();
    let mut s = settings(true);
    s.networks = crate::network::NetworkDef::from_config(&loaded.config, 1450);
    assert_eq!(s.networks.len(), 2);
    s
}

#[tokio::test]
async fn a_second_network_refused_for_a_workload_keeps_nothing_of_it_and_the_first_intact() {
    let dir = TempDir::new();
    let s = two_networks(&dir);
    let mut c = start(s, dir, Arc::default()).await;
    c.join("r1").await;
    let first = c.attach("r1", "w1").await.unwrap();
    assert_eq!(first.network, "private");
    let revision = c.snapshot().await.revision;
    // The same workload on the second network, but in another namespace: refused, naming it.
    let mut other = req("r1", "w1");
    other.network = "public".into();
    other.netns = "/run/netns/elsewhere".into();
    let (k, m) = code(attach(&c.hub, other).await);
    assert_eq!(k, "exists", "{m}");
    assert!(m.contains("netns"), "{m}");
    // The runner fails the second network's interface: nothing of it is kept.
    c.runner("r1").answer(Answers::Fail {
        nothing_applied: true,
    });
    let mut public = req("r1", "w1");
    public.network = "public".into();
    let (k, _) = code(attach(&c.hub, public.clone()).await);
    assert_eq!(k, "runner");
    let snap = c.snapshot().await;
    assert_eq!(snap.revision, revision, "nothing was committed");
    assert_eq!(
        snap.workloads.keys().cloned().collect::<Vec<_>>(),
        [crate::store::workload_key("private", "w1")]
    );
    // And once the runner can, the second network's interface is the workload's eth1.
    c.runner("r1").answer(Answers::Apply);
    let second = attach(&c.hub, public).await.unwrap();
    assert_eq!(
        (second.network.as_str(), second.ifname.as_str()),
        ("public", "eth1")
    );
    assert_eq!(
        c.attach("r1", "w1").await.unwrap(),
        first,
        "the first is unchanged"
    );
}

// ---------------------------------------------------------------------------------------------
// A flat network: one pool for every runner

#[tokio::test]
async fn a_flat_network_hands_each_address_out_once_across_runners_and_frees_a_released_runners() {
    let mut s = settings(true);
    let mut cfg = crate::config::Config::default();
    // A /28: B+2 ..= broadcast − 2, twelve addresses for every runner together.
    cfg.overlay.subnet = "10.9.0.0/28".parse().unwrap();
    s.networks = crate::network::NetworkDef::from_config(&cfg, 1450);
    let mut c = start(s, TempDir::new(), Arc::default()).await;
    let r1 = c.join("r1").await;
    let r2 = c.join("r2").await;
    let a1 = &r1.networks[0];
    let a2 = &r2.networks[0];
    for a in [a1, a2] {
        assert_eq!(
            (a.subnet.as_str(), a.gateway.as_str()),
            ("10.9.0.0/28", "10.9.0.1")
        );
        assert_eq!(a.host_ip_on_subnet, "10.9.0.14");
    }
    let mut given = BTreeSet::new();
    for i in 0..12 {
        let runner = if i % 2 == 0 { "r1" } else { "r2" };
        let ip = c.attach(runner, &format!("w{i}")).await.unwrap().ip;
        assert!(given.insert(ip.clone()), "{ip} given twice");
    }
    let want: BTreeSet<String> = (2..=13).map(|o| format!("10.9.0.{o}/28")).collect();
    assert_eq!(given, want);
    for runner in ["r1", "r2"] {
        let (k, m) = code(c.attach(runner, "full").await);
        assert_eq!(k, "exhausted", "{m}");
    }
    // A requested address another runner's workload holds is refused.
    let mut r = req("r2", "taken");
    r.requested_ip = "10.9.0.2".into();
    let (k, m) = code(attach(&c.hub, r).await);
    assert_eq!(k, "exists", "{m}");
    // r2's six addresses go back to the network's pool with it, for r1 to use.
    let gone = c.hub.release_runner("r2").await.unwrap();
    assert_eq!(gone.workloads_removed, 6);
    for i in 0..6 {
        c.attach("r1", &format!("again{i}")).await.unwrap();
    }
    let (k, _) = code(c.attach("r1", "over").await);
    assert_eq!(k, "exhausted");
}
