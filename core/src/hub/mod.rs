//! The host's cluster logic: who holds which runner id, which workload has which address,
//! which addresses are reserved, which runners are connected — and the kernel changes and
//! events that follow from it.
//!
//! The hub sees plain data (the `weir.v1` messages as structs), never gRPC transport; the API
//! layer translates. Every decision is taken under one lock, applied to the data plane, and
//! persisted (with its events) in one store transaction before it is answered, so a refused
//! call changes nothing.
//!
//! - `request`: requests as the hub takes them (parsed once at the API edge)
//! - `runners`: registration, release, cleanup, liveness, status
//! - `session`: runner sessions and the commands sent over them
//! - `consistency`: the sync that opens each session, and `weir doctor`
//! - `workloads`: attach, detach, list, and a workload's phases until its runner confirms
//! - `reservations`: reserve, validate, release, expire
//! - `topology`: what runners learn of each other (underlay, routes, peers)
//! - `events`: the event log behind `WatchEvents`
//! - `firewall`: a workload's rules between plugin, store and runner forms
//! - `rules_tests`: the rules above, tested without root through fakes
//!
//! This file holds `Hub::start` (load the store, reconcile the kernel), the commit of a
//! transaction with its events, and the input checks the request parsers share.

mod consistency;
mod error;
mod events;
mod firewall;
mod paging;
mod request;
mod reservations;
mod runners;
mod session;
mod topology;
mod workloads;

#[cfg(test)]
mod rules_tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, mpsc};
use weir_proto::v1 as pb;

pub use error::HubError;
pub use events::Watch;
pub use request::{AddressSource, AttachRequest};
pub use session::{Readiness, SessionHandle, SessionStart};

use crate::auth::reservation::Signer;
use crate::clock::now_ms;
use crate::dataplane::host::HostNetwork;
use crate::dataplane::host_kernel::HostKernel;
use crate::ipam::AddressPool;
use crate::network::NetworkDef;
use crate::policy::{FaultReport, PolicyHost, ReloadOutcome};
use crate::store::{
    Change, Commit, PlaceholderRecord, ReservationRecord, RunnerRecord, Store, WorkloadRecord,
};
use crate::telemetry::metrics::ClusterCounts;

/// How many events the host retains for `WatchEvents` resumption.
pub const EVENT_HISTORY: u64 = 10_000;

/// Host settings the hub needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub networks: Vec<NetworkDef>,
    /// The underlay address of the host (required when any network is an overlay).
    pub reachable_address: Option<Ipv4Addr>,
    pub heartbeat_timeout: Duration,
    /// How long a workload's namespace may be missing before its runner reports it gone.
    pub workload_grace: Duration,
    /// How long the hub waits for a runner to carry out a command.
    pub command_timeout: Duration,
    pub reservation_ttl: TtlBounds,
    /// DNS servers for VMs' cloud-init.
    pub dns: Vec<Ipv4Addr>,
    /// Several hosts on etcd: this host leads (`None`: the only host).
    pub leadership: Option<HubLeadership>,
}

/// The hub role held by one of several hosts: every commit carries `fence`, so nothing this
/// host sends commits once it is deposed.
#[derive(Clone)]
pub struct HubLeadership {
    /// This host's name.
    pub name: String,
    /// Replaced when a lone leader takes the role back with a new lease and term.
    pub fence: Arc<std::sync::RwLock<crate::store::Fence>>,
    /// The leader before this one, if any is known (for the event).
    pub previous: Option<String>,
    /// Every live host, for `GetStatus`.
    pub hosts: Arc<dyn HostDirectory>,
    /// Set once this host lost its lease for good: from then on no commit is even tried (the
    /// decision log settles what was open as it was, and nothing commits behind it).
    pub deposed: Arc<std::sync::atomic::AtomicBool>,
}

impl HubLeadership {
    /// Whether this host lost the role for good.
    pub fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst)
    }

    /// The fence commits carry now.
    pub fn fence(&self) -> crate::store::Fence {
        *self.fence.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fence to send a refused commit again under, when what refused it was this host's own
/// next term: a host alone in the host set that lost its lease takes the role back with a new
/// term while a commit sent under the old one may still be on its way. If no other host took a
/// term in between (the new term is the very next), nobody else wrote: the commit is as valid
/// under the new term as it was under the old, and the caller should not see it refused.
fn fenced_by_itself(
    e: &crate::store::StoreError,
    l: &HubLeadership,
) -> Option<crate::store::Fence> {
    let crate::store::StoreError::Fenced { term, current } = *e else {
        return None;
    };
    let now = l.fence();
    (!l.is_deposed() && now.term == current && current == term + 1).then_some(now)
}

impl std::fmt::Debug for HubLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLeadership")
            .field("name", &self.name)
            .field("fence", &self.fence())
            .field("previous", &self.previous)
            .field("deposed", &self.is_deposed())
            .finish_non_exhaustive()
    }
}

/// Where the hub learns which hosts there are (the host set on etcd).
#[async_trait::async_trait]
pub trait HostDirectory: Send + Sync {
    async fn hosts(&self) -> Vec<pb::HostStatus>;
}

/// Allowed reservation TTLs.
#[derive(Debug, Clone, Copy)]
pub struct TtlBounds {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(300),
            min: Duration::from_secs(60),
            max: Duration::from_secs(1800),
        }
    }
}

pub struct Hub {
    settings: HubSettings,
    store: Arc<dyn Store>,
    /// The host's kernel: netlink and nftables, or nothing to build (isolated networks only).
    kernel: Arc<dyn HostKernel>,
    signer: Signer,
    policy: Arc<PolicyHost>,
    state: Mutex<State>,
    events: broadcast::Sender<pb::Event>,
    /// Something committed since the gauges' counts were last published.
    counts_dirty: AtomicBool,
    /// Held while the host's routes to flat networks' workloads change: a sync from a
    /// snapshot must not remove a route an attach added after it (`Hub::sync_flat_routes`).
    flat_routes: Mutex<()>,
    /// The router plugin's decisions per runner, so that a change asks only about itself.
    routes: Mutex<topology::RouteBook>,
    /// A topology publication is running; and another was asked for meanwhile (see
    /// `Hub::spawn_publish`).
    publishing: AtomicBool,
    publish_again: AtomicBool,
}

#[derive(Default)]
struct State {
    runners: BTreeMap<String, RunnerState>,
    placeholders: BTreeMap<u32, PlaceholderRecord>,
    /// Every workload the hub holds an address for. Change through
    /// [`State::insert_workload`] and [`State::remove_workload`] only: they keep `label_sets`
    /// and `phases` in step.
    workloads: BTreeMap<String, WorkloadRecord>,
    /// The workloads that are not (yet, or any longer) both in the store and wanted on their
    /// runner; absent: attached and confirmed.
    phases: HashMap<String, Phase>,
    /// Each network's distinct workload label sets, with how many workloads carry each (the
    /// firewall hook's `groups`, without a scan of every workload per attach).
    label_sets: HashMap<String, BTreeMap<BTreeMap<String, String>, usize>>,
    reservations: BTreeMap<String, ReservationRecord>,
    /// Address pools by (network, runner name).
    pools: HashMap<(String, String), AddressPool>,
    /// Addresses a runner found in use on its bridge by something Weir did not attach, by
    /// (network, runner name, address): why (taken in the pool, never handed out).
    conflicts: HashMap<(String, String, Ipv4Addr), String>,
    /// Retained events, oldest first.
    history: VecDeque<pb::Event>,
    next_event: u64,
    next_generation: u64,
    next_session: u64,
    next_reservation: u64,
}

/// Where a workload stands between the hub's decision and its runner's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The attach was sent and not answered: the record is in memory only, nothing of it is
    /// in the store or the event log, and the caller has no answer yet.
    Attaching,
    /// The hub wants it gone (detached, its attach undone, its namespace gone); its record
    /// is no longer in the store, but its address stays taken until the runner confirms it
    /// holds nothing of it.
    Leaving,
}

struct RunnerState {
    rec: RunnerRecord,
    /// Unix ms of the last registration or heartbeat (in memory; persisted on changes).
    last_seen_ms: i64,
    session: Option<SessionHandle>,
    /// Whether the last check found it active (to report transitions once).
    was_active: bool,
}

/// The changes and events of one operation, committed together.
#[derive(Default)]
struct Txn {
    changes: Vec<Change>,
    events: Vec<pb::Event>,
    /// Where the operation may be cut into several commits when it is larger than one commit
    /// of the store may be (etcd's operations limit): after every event, and where a caller
    /// marks [`Txn::unit`]. Each piece is still all or nothing.
    cuts: Vec<(usize, usize)>,
}

impl Txn {
    fn change(&mut self, c: Change) {
        self.changes.push(c);
    }
    /// Everything so far is a whole (a bulk clean-up's one item).
    fn unit(&mut self) {
        self.cuts.push((self.changes.len(), self.events.len()));
    }
    /// Pieces of at most `limit` changes (an event counts two: itself and the next-event
    /// counter), cut only where allowed; a single piece beyond the limit stays whole.
    fn split(mut self, limit: usize) -> Vec<Txn> {
        let cost = |c: usize, e: usize| c + 2 * e + 1;
        if cost(self.changes.len(), self.events.len()) <= limit {
            return vec![self];
        }
        self.unit();
        let mut parts = Vec::new();
        let mut changes = std::mem::take(&mut self.changes).into_iter();
        let mut events = std::mem::take(&mut self.events).into_iter();
        let (mut at_c, mut at_e) = (0, 0);
        let mut part = Txn::default();
        for (c, e) in std::mem::take(&mut self.cuts) {
            let (dc, de) = (c - at_c, e - at_e);
            if (dc, de) == (0, 0) {
                continue;
            }
            if (!part.changes.is_empty() || !part.events.is_empty())
                && cost(part.changes.len() + dc, part.events.len() + de) > limit
            {
                parts.push(std::mem::take(&mut part));
            }
            part.changes.extend(changes.by_ref().take(dc));
            part.events.extend(events.by_ref().take(de));
            (at_c, at_e) = (c, e);
        }
        if !part.changes.is_empty() || !part.events.is_empty() {
            parts.push(part);
        }
        parts
    }
    fn event(&mut self, kind: pb::EventKind, fill: impl FnOnce(&mut pb::Event)) {
        // Runner and plugin events concern every network: their `network` stays empty.
        let mut e = pb::Event {
            kind: kind as i32,
            ..Default::default()
        };
        fill(&mut e);
        self.events.push(e);
        self.unit();
    }
}

impl Hub {
    /// Open the hub: load the store, reconcile the kernel with it, and get ready to serve.
    pub async fn start(
        settings: HubSettings,
        store: Arc<dyn Store>,
        kernel: Arc<dyn HostKernel>,
        signer: Signer,
        mut policy: PolicyHost,
    ) -> Result<Arc<Self>, HubError> {
        let snap = store.load().await?;
        let (events, _) = broadcast::channel(4096);
        let (fault_tx, fault_rx) = mpsc::unbounded_channel();
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        policy.report_to(fault_tx, reload_tx);
        let hub = Hub {
            settings,
            store,
            kernel,
            signer,
            policy: Arc::new(policy),
            state: Mutex::new(State::default()),
            events,
            counts_dirty: AtomicBool::new(true),
            flat_routes: Mutex::new(()),
            routes: Mutex::new(topology::RouteBook::default()),
            publishing: AtomicBool::new(false),
            publish_again: AtomicBool::new(false),
        };
        crate::telemetry::metrics::reconcile("host-start", hub.recover(snap)).await?;
        hub.sync_flat_routes().await;
        hub.announce_leadership().await?;
        hub.publish_counts().await;
        let hub = Arc::new(hub);
        hub.clone().forward_policy_reports(fault_rx, reload_rx);
        Ok(hub)
    }

    /// A host that took the hub role says so in the event log (its first fenced commit).
    async fn announce_leadership(&self) -> Result<(), HubError> {
        let Some(l) = &self.settings.leadership else {
            return Ok(());
        };
        let mut txn = Txn::default();
        txn.event(pb::EventKind::LeaderElected, |e| {
            e.detail = match &l.previous {
                Some(p) if p != &l.name => {
                    format!("{} leads (term {}), after {p}", l.name, l.fence().term)
                }
                Some(_) => format!(
                    "{} leads again (term {}), restarted",
                    l.name,
                    l.fence().term
                ),
                None => format!("{} leads (term {})", l.name, l.fence().term),
            };
        });
        let mut st = self.state.lock().await;
        self.commit(&mut st, txn).await
    }

    /// The policy host (plugins).
    pub fn policy(&self) -> &Arc<PolicyHost> {
        &self.policy
    }

    /// Plugin faults and reloads become events.
    fn forward_policy_reports(
        self: Arc<Self>,
        mut faults: mpsc::UnboundedReceiver<FaultReport>,
        mut reloads: mpsc::UnboundedReceiver<ReloadOutcome>,
    ) {
        let hub = Arc::downgrade(&self);
        tokio::spawn(async move {
            loop {
                let mut txn = Txn::default();
                tokio::select! {
                    f = faults.recv() => {
                        let Some(f) = f else { return };
                        txn.event(pb::EventKind::PluginFault, |e| {
                            e.plugin = f.plugin.clone();
                            e.detail = format!("{} hook, version {}: {} ({}); applied: {}", f.hook, f.version, f.fault, f.fault.cause(), f.applied);
                        });
                    }
                    r = reloads.recv() => {
                        let Some(r) = r else { return };
                        txn.event(pb::EventKind::PluginReloaded, |e| {
                            e.plugin = r.name.clone();
                            e.detail = if r.error.is_empty() {
                                format!("{}: version {}", r.result, r.version)
                            } else {
                                format!("{}: {}; version {} keeps serving", r.result, r.error, r.version)
                            };
                        });
                    }
                }
                let Some(h) = hub.upgrade() else { return };
                let reloaded = txn.events.iter().any(|e| {
                    e.kind == pb::EventKind::PluginReloaded as i32
                        && e.detail.starts_with("reloaded")
                });
                {
                    let mut st = h.state.lock().await;
                    if let Err(e) = h.commit(&mut st, txn).await {
                        tracing::error!(error = %e, "recording a plugin event failed");
                    }
                }
                // A new router version may route runner pairs differently: tell the runners.
                if reloaded && h.policy.has(crate::decision::Hook::Router) {
                    h.routes.lock().await.forget();
                    h.publish_topology().await;
                }
            }
        });
    }

    fn host_networks(&self) -> Vec<HostNetwork> {
        let Some(local) = self.settings.reachable_address else {
            return Vec::new();
        };
        self.settings
            .networks
            .iter()
            .filter_map(|n| {
                let o = n.overlay()?;
                Some(HostNetwork {
                    name: n.name.clone(),
                    masquerade: n.masquerade,
                    plan: o.plan,
                    vxlan_id_base: o.vxlan_id_base,
                    port: o.port,
                    mtu: n.mtu,
                    host_device: o.host_device.clone(),
                    tunnel_prefix: o.tunnel_prefix.clone(),
                    local,
                })
            })
            .collect()
    }

    /// A configured network by name; `""` is the primary (first) network.
    fn network(&self, name: &str) -> Result<&NetworkDef, HubError> {
        if name.is_empty() {
            return self
                .settings
                .networks
                .first()
                .ok_or_else(|| HubError::Internal("no network is configured".into()));
        }
        self.settings
            .networks
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                HubError::NotFound(format!(
                    "network: {name:?} is not configured (known: {})",
                    self.settings
                        .networks
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The network a workload attaches to: `name`, or when none is named the primary one —
    /// except a VM's in isolated mode with a VM bridge (`overlay.vm_subnet`): network `vm`.
    fn network_for(&self, name: &str, vm: bool) -> Result<&NetworkDef, HubError> {
        if name.is_empty()
            && vm
            && let Some(n) = self
                .settings
                .networks
                .iter()
                .find(|n| n.name == crate::network::VM_NETWORK && n.overlay().is_none())
        {
            return Ok(n);
        }
        self.network(name)
    }

    fn overlay_enabled(&self) -> bool {
        self.settings.networks.iter().any(|n| n.overlay().is_some())
    }

    /// How long the hub waits for a runner to carry out a command.
    fn command_timeout(&self) -> Duration {
        self.settings.command_timeout
    }

    fn timeout_ms(&self) -> i64 {
        self.settings.heartbeat_timeout.as_millis() as i64
    }

    /// Run one operation whose plugin decisions the store keeps (a runner's id, a workload's
    /// address and rules): the decision log says afterwards whether they were committed.
    async fn decided<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, HubError>>,
    ) -> Result<T, HubError> {
        match self.policy.audit() {
            None => fut.await,
            Some(log) => {
                let term = self.settings.leadership.as_ref().map(|l| l.fence().term);
                log.operation(term, fut).await
            }
        }
    }

    /// Persist a transaction and publish its events (numbered here, in commit order). One
    /// larger than a commit of the store may be goes in pieces, each whole, in order.
    async fn commit(&self, st: &mut State, txn: Txn) -> Result<(), HubError> {
        match self.store.max_changes() {
            Some(limit) => {
                for part in txn.split(limit) {
                    self.commit_one(st, part).await?;
                }
                Ok(())
            }
            None => self.commit_one(st, txn).await,
        }
    }

    async fn commit_one(&self, st: &mut State, mut txn: Txn) -> Result<(), HubError> {
        let now = now_ms();
        for e in &mut txn.events {
            e.seq = st.next_event;
            e.unix_ms = now;
            st.next_event += 1;
            txn.changes.push(Change::PutEvent {
                seq: e.seq,
                bytes: prost::Message::encode_to_vec(e),
                trim_below: e.seq.saturating_sub(EVENT_HISTORY),
            });
        }
        if !txn.events.is_empty() {
            txn.changes.push(Change::PutMeta(
                "next_event".into(),
                st.next_event.to_string(),
            ));
        }
        let changed = !txn.changes.is_empty();
        let leadership = self.settings.leadership.as_ref();
        // Kept for one retry (several hosts only): see `fenced_by_itself`.
        let retry = leadership.map(|_| txn.changes.clone());
        let commit = Commit {
            changes: txn.changes,
            fence: leadership.map(HubLeadership::fence),
        };
        // Announced before the deposed check: a host settling its decision log when deposed
        // then sees this commit as in flight, or this commit sees the host deposed.
        crate::policy::audit::commit_started();
        let mut committed = match leadership.filter(|l| l.is_deposed()) {
            Some(l) => Err(crate::store::StoreError::LeaseLost {
                term: l.fence().term,
            }),
            None => self.store.commit(commit).await,
        };
        if let (Err(e), Some(l), Some(changes)) = (&committed, leadership, retry)
            && let Some(fence) = fenced_by_itself(e, l)
        {
            tracing::info!(
                term = fence.term,
                "a commit sent under this host's previous term is sent again under its new one"
            );
            committed = self
                .store
                .commit(Commit {
                    changes,
                    fence: Some(fence),
                })
                .await;
        }
        crate::policy::audit::commit_done(committed.is_ok());
        if let Err(e) = committed {
            // Nothing was written: hand the sequence numbers back.
            st.next_event -= txn.events.len() as u64;
            return Err(e.into());
        }
        if changed {
            self.counts_dirty.store(true, Ordering::Relaxed);
        }
        for e in txn.events {
            st.history.push_back(e.clone());
            while st.history.len() as u64 > EVENT_HISTORY {
                st.history.pop_front();
            }
            // Nobody listening is fine.
            let _ = self.events.send(e);
        }
        Ok(())
    }

    /// Load the store, drop what the current plan no longer allows, and make the kernel match:
    /// valid tunnels are adopted as they are, tunnels nobody holds become placeholders.
    async fn recover(&self, snap: crate::store::Snapshot) -> Result<(), HubError> {
        let mut st = self.state.lock().await;
        let mut txn = Txn::default();
        let now = now_ms();
        let meta_num = |k: &str, default: u64| {
            snap.meta
                .get(k)
                .and_then(|g| g.parse().ok())
                .unwrap_or(default)
        };
        st.next_generation = meta_num("next_generation", 1);
        st.next_event = meta_num("next_event", 1);
        st.next_reservation = meta_num("next_reservation", 1);
        for crate::store::StoredEvent { seq, bytes } in &snap.events {
            if let Ok(e) = <pb::Event as prost::Message>::decode(bytes.as_slice()) {
                st.next_event = st.next_event.max(seq + 1);
                st.history.push_back(e);
            }
        }
        let overlay_plan = self
            .settings
            .networks
            .iter()
            .find_map(|n| n.overlay().map(|o| o.plan));
        for (name, mut rec) in snap.runners {
            let id_ok = match (overlay_plan, rec.id) {
                (Some(plan), Some(id)) => plan.check_runner(u64::from(id)).is_ok(),
                (Some(_), None) => false,
                (None, _) => true,
            };
            if !id_ok {
                tracing::info!(runner = %name, id = ?rec.id, "dropping an allocation the current plan does not allow");
                txn.change(Change::DeleteRunner(name));
                txn.unit();
                continue;
            }
            if overlay_plan.is_none() {
                rec.id = None;
            }
            // A host restart is not a runner failure: every runner gets a full timeout to come
            // back before it counts as inactive (so a cleanup cannot eat recovered tunnels).
            st.runners.insert(
                name,
                RunnerState {
                    last_seen_ms: now,
                    session: None,
                    was_active: true,
                    rec,
                },
            );
        }
        let runner_ids: std::collections::HashSet<u32> =
            st.runners.values().filter_map(|r| r.rec.id).collect();
        for (id, ph) in snap.placeholders {
            if overlay_plan.is_some_and(|p| p.check_runner(u64::from(id)).is_ok())
                && !runner_ids.contains(&id)
            {
                st.placeholders.insert(
                    id,
                    PlaceholderRecord {
                        recovered_ms: now,
                        ..ph
                    },
                );
            } else {
                txn.change(Change::DeletePlaceholder(id));
                txn.unit();
            }
        }
        let nets = self.host_networks();
        self.kernel.setup(&nets, self.underlay_peers(&st)).await?;
        for net in &nets {
            let found = self.kernel.scan_tunnels(net).await?;
            let held =
                |st: &State, id: u32| runner_ids.contains(&id) || st.placeholders.contains_key(&id);
            for (id, tunnel) in &found {
                let in_primary =
                    overlay_plan.is_some_and(|p| p.check_runner(u64::from(*id)).is_ok());
                if !held(&st, *id)
                    && in_primary
                    && let Some(remote) = tunnel.remote
                {
                    tracing::info!(id, %remote, "adopting an unclaimed tunnel as a placeholder");
                    let ph = PlaceholderRecord {
                        id: *id,
                        physical_ip: remote,
                        recovered_ms: now,
                    };
                    txn.change(Change::PutPlaceholder(ph.clone()));
                    txn.unit();
                    st.placeholders.insert(*id, ph);
                }
            }
            // Ids outside this network's plan (it has fewer node bits) get no tunnel here.
            let wanted: Vec<(u32, Ipv4Addr)> = st
                .runners
                .values()
                .filter_map(|r| Some((r.rec.id?, r.rec.physical_ip)))
                .chain(st.placeholders.values().map(|p| (p.id, p.physical_ip)))
                .filter(|(id, _)| net.plan.check_runner(u64::from(*id)).is_ok())
                .collect();
            let mut kept = 0;
            for (id, remote) in wanted {
                let (_, change) = self.kernel.ensure_tunnel(net, id, remote).await?;
                if change == crate::dataplane::host::TunnelChange::Unchanged {
                    kept += 1;
                } else {
                    tracing::info!(id, ?change, "tunnel reconciled");
                }
            }
            for id in found.keys() {
                if !held(&st, *id) {
                    self.kernel.remove_tunnel(net, *id).await?;
                }
            }
            tracing::info!(network = %net.name, adopted = kept, "tunnels reconciled");
        }
        self.kernel.set_underlay(self.underlay_peers(&st)).await?;
        // Reservations first (they hold pool addresses), then workloads.
        for (id, r) in snap.reservations {
            let ok =
                st.runners.contains_key(&r.runner) && self.fits(&st, &r.network, &r.runner, r.ip);
            let held = ok
                && self
                    .pool(&mut st, &r.network, &r.runner)
                    .is_ok_and(|pool| pool.take(r.ip).is_ok());
            if held {
                st.reservations.insert(id, r);
            } else {
                txn.change(Change::DeleteReservation(id));
                txn.unit();
            }
        }
        for (key, w) in snap.workloads {
            if !st.runners.contains_key(&w.runner)
                || !self.fits(&st, &w.network, &w.runner, w.ip.addr())
            {
                tracing::info!(workload = %w.id, ip = %w.ip, "dropping a workload whose address the current plan does not allow");
                txn.change(Change::DeleteWorkload(key));
                txn.unit();
                continue;
            }
            // A workload that used a reservation shares its address with it.
            let shared = w
                .reservation
                .as_ref()
                .is_some_and(|r| st.reservations.contains_key(r));
            if !shared {
                let Ok(pool) = self.pool(&mut st, &w.network, &w.runner) else {
                    txn.change(Change::DeleteWorkload(key));
                    txn.unit();
                    continue;
                };
                if pool.take(w.ip.addr()).is_err() {
                    txn.change(Change::DeleteWorkload(key));
                    txn.unit();
                    continue;
                }
            }
            st.insert_workload(key, w);
        }
        if let Some(plan) = overlay_plan {
            txn.change(Change::PutMeta("plan".into(), plan.to_string()));
        }
        self.commit(&mut st, txn).await
    }

    /// Whether `ip` lies in the runner's current subnet of `network`.
    fn fits(&self, st: &State, network: &str, runner: &str, ip: Ipv4Addr) -> bool {
        let id = st.runners.get(runner).and_then(|r| r.rec.id);
        self.network(network)
            .ok()
            .and_then(|n| n.runner_subnet(id))
            .is_some_and(|s| s.subnet.contains(&ip))
    }

    /// Which pool holds a runner's addresses on a network: its own, or on a flat network the
    /// one every runner shares (its addresses are unique across the network).
    fn pool_key(&self, network: &str, runner: &str) -> (String, String) {
        let flat = self
            .network(network)
            .ok()
            .and_then(NetworkDef::overlay)
            .is_some_and(|o| o.plan.is_flat());
        let runner = if flat {
            String::new()
        } else {
            runner.to_string()
        };
        (network.to_string(), runner)
    }

    /// The address pool of a runner on a network, created on first use.
    fn pool<'a>(
        &self,
        st: &'a mut State,
        network: &str,
        runner: &str,
    ) -> Result<&'a mut AddressPool, HubError> {
        let key = self.pool_key(network, runner);
        if !st.pools.contains_key(&key) {
            let id = st.runners.get(runner).and_then(|r| r.rec.id);
            let net = self.network(network)?;
            let sub = net.runner_subnet(id).ok_or_else(|| {
                HubError::FailedPrecondition(format!(
                    "runner {runner:?} has no subnet on network {network}"
                ))
            })?;
            let excluded: Vec<(Ipv4Addr, &'static str)> = sub
                .host_side
                .map(|h| (h, "the host's address on the subnet"))
                .into_iter()
                .collect();
            st.pools
                .insert(key.clone(), AddressPool::new(sub.subnet, &excluded));
        }
        st.pools
            .get_mut(&key)
            .ok_or_else(|| HubError::Internal("address pool vanished".into()))
    }

    /// The host tunnels' ifindexes (for status and tests).
    pub async fn tunnel_indexes(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for net in self.host_networks() {
            if let Ok(m) = self.kernel.tunnel_indexes(&net).await {
                out.extend(m);
            }
        }
        out
    }

    /// Periodic work: liveness transitions, reservation expiry, and the gauges' counts.
    pub async fn tick(&self) {
        self.check_liveness().await;
        self.expire_reservations().await;
        self.publish_counts().await;
    }

    /// Hand the metrics gauges fresh counts when anything changed: at most once per tick, so
    /// an attach never pays for counting ten thousand workloads.
    async fn publish_counts(&self) {
        if !self.counts_dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let st = self.state.lock().await;
        let mut c = ClusterCounts::default();
        for (name, r) in &st.runners {
            if r.was_active {
                c.runners_active += 1;
            } else {
                c.runners_inactive += 1;
            }
            if r.rec.id.is_some() {
                for net in &self.settings.networks {
                    c.workloads.insert((name.clone(), net.name.clone()), 0);
                }
            }
        }
        for (_, w) in st
            .workloads
            .iter()
            .filter(|(k, _)| !st.phases.contains_key(*k))
        {
            *c.workloads
                .entry((w.runner.clone(), w.network.clone()))
                .or_default() += 1;
        }
        for r in st.reservations.values() {
            let state = if r.used_by.is_some() {
                "used"
            } else {
                "unused"
            };
            *c.reservations.entry(state).or_default() += 1;
        }
        for state in ["used", "unused"] {
            c.reservations.entry(state).or_default();
        }
        crate::telemetry::metrics::publish_cluster(c);
    }
}

impl State {
    fn insert_workload(&mut self, key: String, w: WorkloadRecord) {
        self.remove_workload(&key);
        if !w.labels.is_empty() {
            *self
                .label_sets
                .entry(w.network.clone())
                .or_default()
                .entry(w.labels.clone())
                .or_default() += 1;
        }
        self.workloads.insert(key, w);
    }

    fn remove_workload(&mut self, key: &str) -> Option<WorkloadRecord> {
        let w = self.workloads.remove(key)?;
        self.phases.remove(key);
        if let Some(sets) = self.label_sets.get_mut(&w.network)
            && let Some(n) = sets.get_mut(&w.labels)
        {
            *n -= 1;
            if *n == 0 {
                sets.remove(&w.labels);
            }
        }
        Some(w)
    }

    fn take_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }
}

/// Workload ids: 1 to 128 characters of `[A-Za-z0-9._:-]` (safe in names, paths and aliases).
pub fn check_workload_id(id: &str) -> Result<String, HubError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(id.to_string())
    } else {
        Err(HubError::InvalidArgument(format!(
            "workload_id: {} must be 1 to 128 characters of letters, digits, '.', '_', '-' or ':'",
            brief(id)
        )))
    }
}

/// A workload's namespace: an absolute, normalised path of at most 256 bytes, or a pid
/// (`/proc/PID/ns/net`); a VM gives neither. The runner decides which paths it accepts.
pub fn check_netns(vm: bool, netns: &str, pid: u32) -> Result<PathBuf, HubError> {
    let netns = netns.trim();
    match (vm, netns, pid) {
        (true, "", 0) => Ok(PathBuf::new()),
        (true, _, _) => Err(HubError::InvalidArgument(
            "netns/pid: a VM gets a tap device, not a namespace; leave them empty".into(),
        )),
        (false, "", 0) => Err(HubError::InvalidArgument(
            "netns: give the path of the workload's network namespace, or pid".into(),
        )),
        (false, "", 1) => Err(HubError::InvalidArgument(
            "pid: 1 is the machine's own init process; its namespace is never a workload's".into(),
        )),
        (false, "", pid) => Ok(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        (false, path, 0) => {
            let normal = path.starts_with('/')
                && path.len() <= 256
                && !path.contains('\0')
                && path[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if path == "/proc/1/ns/net" {
                Err(HubError::InvalidArgument(
                    "netns: /proc/1/ns/net is the machine's own namespace; it is never a workload's"
                        .into(),
                ))
            } else if normal {
                Ok(PathBuf::from(path))
            } else {
                Err(HubError::InvalidArgument(format!(
                    "netns: {} must be an absolute path of at most 256 bytes without empty, '.' or '..' components",
                    brief(path)
                )))
            }
        }
        (false, _, _) => Err(HubError::InvalidArgument(
            "netns and pid: give one of them, not both".into(),
        )),
    }
}

/// At most this many labels on one call.
pub const MAX_LABELS: usize = 64;
/// At most this many bytes of label keys and values together on one call.
pub const MAX_LABEL_BYTES: usize = 16 << 10;

/// Labels: at most [`MAX_LABELS`] of them, [`MAX_LABEL_BYTES`] of keys and values together;
/// keys 1 to 63 characters of `[A-Za-z0-9._/-]`, values up to 253 printable characters.
pub fn check_labels(labels: &BTreeMap<String, String>, field: &str) -> Result<(), HubError> {
    check_label_limits(labels, field)?;
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            return Err(HubError::InvalidArgument(format!(
                "{field}: key {} must be 1 to 63 characters of letters, digits, '.', '_', '-' or '/'",
                brief(k)
            )));
        }
        if v.len() > 253 || v.chars().any(char::is_control) {
            return Err(HubError::InvalidArgument(format!(
                "{field}: the value of {k:?} ({}) must be at most 253 printable characters",
                brief(v)
            )));
        }
    }
    Ok(())
}

/// The count and size bounds of labels alone (also for label filters, whose keys need not be
/// well-formed to match nothing).
pub fn check_label_limits<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    field: &str,
) -> Result<(), HubError> {
    let (mut count, mut bytes) = (0usize, 0usize);
    for (k, v) in labels {
        count += 1;
        bytes = bytes.saturating_add(k.len()).saturating_add(v.len());
    }
    if count > MAX_LABELS {
        return Err(HubError::InvalidArgument(format!(
            "{field}: {count} labels; at most {MAX_LABELS} are allowed"
        )));
    }
    if bytes > MAX_LABEL_BYTES {
        return Err(HubError::InvalidArgument(format!(
            "{field}: {bytes} bytes of keys and values; at most {MAX_LABEL_BYTES} (16 KiB) are allowed"
        )));
    }
    Ok(())
}

/// How many characters of a caller's string an error message quotes.
const BRIEF_CHARS: usize = 64;

/// A caller's string for an error message: quoted whole when short, otherwise its first 64
/// characters and how much was left out (so a refusal never echoes megabytes back).
pub fn brief(s: &str) -> String {
    match s.char_indices().nth(BRIEF_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => {
            let rest = s[cut..].chars().count();
            format!(
                "{:?}… ({rest} more characters, {} in all)",
                &s[..cut],
                BRIEF_CHARS + rest
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_quotes_short_strings_whole_and_long_ones_by_a_prefix() {
        assert_eq!(brief("abc"), "\"abc\"");
        let exact = "x".repeat(64);
        assert_eq!(brief(&exact), format!("{exact:?}"));
        let long = format!("{}{}", "é".repeat(64), "y".repeat(19_936));
        let b = brief(&long);
        assert!(b.starts_with(&format!("{:?}…", "é".repeat(64))), "{b}");
        assert!(b.ends_with("(19936 more characters, 20000 in all)"), "{b}");
        assert!(b.len() < 200, "{b}");
    }

    #[test]
    fn labels_are_bounded_in_count_and_size() {
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        let e = check_labels(&many, "labels").unwrap_err().to_string();
        assert!(e.contains("labels: 65 labels; at most 64"), "{e}");
        let ok: BTreeMap<String, String> = (0..64).map(|i| (format!("k{i}"), "v".into())).collect();
        check_labels(&ok, "labels").unwrap();
        // 64 labels of 63 + 253 bytes are 20,224 bytes: each is fine, together too large.
        let big: BTreeMap<String, String> = (0..64)
            .map(|i| (format!("{i:0>63}"), "v".repeat(253)))
            .collect();
        let e = check_labels(&big, "labels").unwrap_err().to_string();
        assert!(
            e.contains("labels: 20224 bytes") && e.contains("16384"),
            "{e}"
        );
        // Filters are bounded the same way.
        let e = check_label_limits(&big, "labels").unwrap_err().to_string();
        assert!(e.contains("20224 bytes"), "{e}");
    }

    #[test]
    fn a_commit_fenced_by_this_hosts_own_next_term_is_sent_again_and_no_other() {
        struct NoHosts;
        #[async_trait::async_trait]
        impl HostDirectory for NoHosts {
            async fn hosts(&self) -> Vec<pb::HostStatus> {
                Vec::new()
            }
        }
        let fence = |term| crate::store::Fence {
            term,
            lease: Some(7),
        };
        let l = HubLeadership {
            name: "h1".into(),
            fence: Arc::new(std::sync::RwLock::new(fence(2))),
            previous: None,
            hosts: Arc::new(NoHosts),
            deposed: Arc::default(),
        };
        let fenced = |term, current| crate::store::StoreError::Fenced { term, current };
        // The host took term 2 itself right after term 1: nobody else wrote in between.
        assert_eq!(fenced_by_itself(&fenced(1, 2), &l), Some(fence(2)));
        // Another host held a term in between, or the newer term is not this host's.
        assert_eq!(fenced_by_itself(&fenced(0, 2), &l), None);
        assert_eq!(fenced_by_itself(&fenced(1, 3), &l), None);
        // Other refusals, and a deposed host, are never sent again.
        let lost = crate::store::StoreError::LeaseLost { term: 1 };
        assert_eq!(fenced_by_itself(&lost, &l), None);
        l.deposed.store(true, Ordering::SeqCst);
        assert_eq!(fenced_by_itself(&fenced(1, 2), &l), None);
    }

    #[test]
    fn refusals_quote_only_a_prefix_of_bad_input() {
        let id = "a".repeat(20_000);
        let e = check_workload_id(&id).unwrap_err().to_string();
        assert!(e.starts_with("workload_id: ") && e.len() < 300, "{e}");
        assert!(e.contains("20000 in all"), "{e}");
        let labels = BTreeMap::from([("k".repeat(5000), String::new())]);
        let e = check_labels(&labels, "labels").unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
        let labels = BTreeMap::from([("k".into(), "\u{7}".repeat(200))]);
        let e = check_labels(&labels, "labels").unwrap_err().to_string();
        assert!(e.len() < 600 && e.contains("200 in all"), "{e}");
    }
}

/// The conversion of a caller's attach request into the hub's terms (workload id, namespace,
/// labels): never a panic, and what is accepted satisfies what the runner and the store rely on.
#[cfg(test)]
mod prop_tests {
    use super::*;
    use crate::prop_support::config;
    use proptest::prelude::*;

    fn netns_like() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "(/[a-z.]{0,6}){0,6}/?",
            "/run/netns/[a-z0-9._-]{0,300}",
            "/proc/[0-9]{1,8}/ns/net",
        ]
    }

    /// Found by `prop_netns_accepted_are_normal_absolute_paths`: pid 1's namespace given as a
    /// path was accepted (the runner refused it; the host now does, sooner).
    #[test]
    fn pid_1s_namespace_as_a_path_is_refused() {
        let e = check_netns(false, "/proc/1/ns/net", 0)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("netns: /proc/1/ns/net"), "{e}");
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_workload_ids_accepted_are_safe_names(id in prop_oneof![any::<String>(), "[A-Za-z0-9._:-]{0,140}"]) {
            match check_workload_id(&id) {
                Ok(ok) => {
                    prop_assert_eq!(&ok, &id);
                    prop_assert!(!id.is_empty() && id.len() <= 128);
                    prop_assert!(!id.contains('/') && !id.contains('\0'));
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("workload_id: "));
                    prop_assert!(msg.len() < 400, "refusal too long: {} bytes", msg.len());
                }
            }
        }

        #[test]
        fn prop_netns_accepted_are_normal_absolute_paths(vm in any::<bool>(), path in netns_like(), pid in prop_oneof![Just(0u32), Just(1u32), any::<u32>()]) {
            match check_netns(vm, &path, pid) {
                Ok(p) if vm => prop_assert!(p.as_os_str().is_empty()),
                Ok(p) => {
                    let s = p.to_string_lossy().into_owned();
                    prop_assert!(s.starts_with('/') && s.len() <= 256);
                    prop_assert!(s[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                    prop_assert!(s != "/proc/1/ns/net");
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("netns") || msg.starts_with("pid"), "{}", msg);
                    prop_assert!(msg.len() < 400, "refusal too long: {} bytes", msg.len());
                }
            }
        }

        #[test]
        fn prop_labels_accepted_are_bounded(labels in proptest::collection::btree_map(prop_oneof![any::<String>(), "[a-z./_-]{1,70}"], prop_oneof![any::<String>(), "[ -~]{0,300}"], 0..80)) {
            match check_labels(&labels, "labels") {
                Ok(()) => {
                    prop_assert!(labels.len() <= MAX_LABELS);
                    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
                    prop_assert!(bytes <= MAX_LABEL_BYTES);
                    for (k, v) in &labels {
                        prop_assert!(!k.is_empty() && k.len() <= 63);
                        prop_assert!(v.len() <= 253 && !v.chars().any(char::is_control));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("labels"), "{}", msg);
                    prop_assert!(msg.len() < 400, "refusal too long: {} bytes", msg.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod txn_tests {
    use super::*;

    fn bulk(n: usize) -> Txn {
        let mut t = Txn::default();
        t.change(Change::DeleteRunner("r".into()));
        for i in 0..n {
            t.change(Change::DeleteWorkload(format!("default\u{0}w{i}")));
            t.event(pb::EventKind::WorkloadDetached, |e| {
                e.workload_id = format!("w{i}")
            });
        }
        t.event(pb::EventKind::RunnerLeft, |_| {});
        t
    }

    #[test]
    fn a_small_operation_stays_one_commit() {
        let parts = bulk(3).split(40);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].changes.len(), 4);
        assert_eq!(parts[0].events.len(), 4);
    }

    #[test]
    fn a_bulk_operation_is_cut_between_items_in_order_and_within_the_limit() {
        let parts = bulk(100).split(40);
        assert!(parts.len() > 1);
        let changes: Vec<_> = parts.iter().flat_map(|p| p.changes.clone()).collect();
        assert_eq!(changes, bulk(100).changes, "every change, once, in order");
        let events: Vec<_> = parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.workload_id.clone()))
            .collect();
        assert_eq!(events.len(), 101);
        for p in &parts {
            assert!(p.changes.len() + 2 * p.events.len() < 40);
            // Each workload's deletion stays with its event.
            for e in p.events.iter().filter(|e| !e.workload_id.is_empty()) {
                assert!(p.changes.contains(&Change::DeleteWorkload(format!(
                    "default\u{0}{}",
                    e.workload_id
                ))));
            }
        }
    }

    #[test]
    fn a_piece_that_cannot_be_cut_stays_whole() {
        let mut t = Txn::default();
        for i in 0..50 {
            t.change(Change::DeleteRunner(format!("r{i}")));
        }
        let parts = t.split(40);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].changes.len(), 50);
    }
}
