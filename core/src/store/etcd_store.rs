//! The distributed back end: the state on etcd (v3 API), one key per record under a prefix.
//!
//! Key layout, version 1 (`P` is the configured prefix, `/weir/` by default):
//!
//! ```text
//! P meta/schema_version        "1"
//! P meta/writer_term           the newest writer term seen, 20 digits (compared as bytes)
//! P meta/last_commit           "<writer>:<n>"; its mod revision is the store's revision
//! P writers/<writer>           that writer's commit counter: every commit of it guards and bumps it
//! P hub/<key>                  the hub's own meta (next_event, next_generation …)
//! P runners/<name>             RunnerRecord (JSON)
//! P placeholders/<id>          PlaceholderRecord (id as 10 digits)
//! P workloads/<network>/<id>   WorkloadRecord
//! P reservations/<id>          ReservationRecord
//! P events/<seq>               an encoded weir.v1.Event (seq as 20 digits)
//! P claims/runner-id/<id>      the record holding runner id <id>   ("runners/r1", "placeholders/…")
//! P claims/ip/<network>/<ip>   the record holding that address   ("workloads/…", "reservations/…")
//! P hosts/<name>               several hosts: a host's record, under its lease (leader.rs)
//! P leader                     several hosts: "<name> <term>", under the leader's lease
//! P cluster/config             several hosts: the configuration digest the leader serves
//! ```
//!
//! Name segments are escaped (`%` → `%25`, `/` → `%2F`). **Transaction rules**: a commit is one
//! etcd transaction. Its compares guard every key it writes: a record, hub or claim key must be
//! exactly as this writer last saw it (its mod revision, or absent), so a writer whose view is
//! stale is refused ([`StoreError::Conflict`]) rather than overwriting; a claim key names its
//! holder, and a commit can only take a claim that is absent or already its own — so an id, an
//! address or a reservation is never handed out twice, even by two writers at once. An event key
//! must be absent. With a [`Fence`], `meta/writer_term` must not be newer than the writer's term.
//! Each commit also guards and bumps the writer's own counter key; that is what settles a
//! commit whose answer was lost (below). Compares and operations must each stay within etcd's
//! `--max-txn-ops` (128 by default): a larger commit is refused whole ([`StoreError::TooLarge`]).
//!
//! **A lost answer** (timeout, connection reset) leaves the outcome unknown. The store settles it
//! before it answers, the way the hub settles a command a runner did not answer: it writes the
//! writer's counter key guarded by its value before the commit. If that write succeeds the
//! commit did not apply and now never can (its own compare on that key fails); if the key holds
//! the commit's counter, it applied. While etcd cannot be reached the store keeps trying for
//! `resolve_timeout`; past it the commit stays pending, every later commit is refused until it is
//! settled, and a pending commit found applied is reverted from etcd's history (its caller was
//! told it failed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, broadcast};

use super::{
    Change, Commit, Committed, RESERVED_META, SCHEMA_VERSION, Snapshot, Store, StoreError,
    StoredEvent,
};

/// Keys read per range request at load (records are a few hundred bytes; events less).
const PAGE: i64 = 1000;
/// Followers that fall this many commits behind miss some (they reload).
const FOLLOW_QUEUE: usize = 1024;
/// While etcd is known unreachable, one commit in this long tries it; the others are refused
/// at once (so a dead etcd does not make every write wait out its deadlines in turn).
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How to reach etcd and where the state lives in it.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://10.0.0.5:2379`, `https://…` with TLS).
    pub endpoints: Vec<String>,
    /// Every key starts with it; ends with `/`.
    pub prefix: String,
    /// This writer's name (the host's): its commit counter is `writers/<writer>`.
    pub writer: String,
    /// etcd authentication.
    pub user: Option<(String, String)>,
    /// TLS: a CA to verify etcd with, and a client certificate and key (PEM).
    pub tls_ca: Option<Vec<u8>>,
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// One request's deadline.
    pub timeout: Duration,
    /// How long a commit whose answer was lost is retried to learn its outcome.
    pub resolve_timeout: Duration,
    /// etcd's `--max-txn-ops`.
    pub max_txn_ops: usize,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/weir/".into(),
            writer: "host".into(),
            user: None,
            tls_ca: None,
            tls_identity: None,
            timeout: Duration::from_secs(2),
            resolve_timeout: Duration::from_secs(30),
            max_txn_ops: 128,
        }
    }
}

pub struct EtcdStore {
    client: Client,
    /// See [`EtcdStore::streams`].
    streams: tokio::sync::OnceCell<Client>,
    opts: EtcdOptions,
    keys: Keys,
    inner: Mutex<Inner>,
    followers: broadcast::Sender<Arc<Committed>>,
    /// Since when etcd has not answered (and why), and when it was last tried.
    down: std::sync::Mutex<Option<Down>>,
}

struct Down {
    why: String,
    since: std::time::Instant,
    probed: std::time::Instant,
}

/// What this writer knows of the keys it guards (filled by `load` and by its own commits).
#[derive(Default)]
struct Inner {
    /// Mod revision of every record, hub, claim and writer key known to exist.
    mods: HashMap<Vec<u8>, i64>,
    /// Record key → the claim key it holds.
    claims_of: HashMap<Vec<u8>, Vec<u8>>,
    /// Claim key → its holder as stored (the value), and the records holding it.
    claims: HashMap<Vec<u8>, Claim>,
    /// Commits this writer sent (its counter key's value).
    counter: u64,
    /// The store's revision as last seen.
    revision: i64,
    /// A commit whose outcome is not settled yet.
    pending: Option<Pending>,
}

#[derive(Clone, Default)]
struct Claim {
    owner: Vec<u8>,
    holders: BTreeSet<Vec<u8>>,
}

/// How a commit whose answer was lost turned out.
enum Settled {
    /// It did not apply and never will; the writer's counter key is now at `counter_rev`.
    NotApplied { counter_rev: i64 },
    /// It applied, at `rev`.
    Applied { rev: i64 },
}

/// A commit sent but not answered.
struct Pending {
    plan: Plan,
    /// The writer counter key's mod revision before it (0: absent).
    counter_before: i64,
}

/// A commit translated into one transaction, and what it does to [`Inner`] once applied.
#[derive(Clone, Default)]
struct Plan {
    /// Moved into the transaction when it is sent.
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    /// Keys the commit writes (their mod revision becomes the commit's).
    puts: Vec<Vec<u8>>,
    /// Keys the commit removes.
    deletes: Vec<Vec<u8>>,
    /// Event keys the commit appends.
    events: Vec<Vec<u8>>,
    /// Record key → its claim after the commit (None: holds none, or is gone).
    claims_of: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Claim key → after the commit (None: free).
    claims: Vec<(Vec<u8>, Option<Claim>)>,
    /// The writer counter value this commit writes.
    counter: u64,
    changes: Vec<Change>,
    fence_term: Option<u64>,
    fence_lease: Option<i64>,
}

/// A record's value and the claim key it holds.
type RecordValue = (Vec<u8>, Option<Vec<u8>>);
/// A record's final value and the claim it takes (claim key, holder name).
type FinalRecord = (Vec<u8>, Option<Claimed>);
/// A key and a holder name: (claim key, holder) for a record, (record key, holder) for a claim.
type Claimed = (Vec<u8>, Vec<u8>);

/// The key layout under the prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

/// Escape a name for one key segment.
fn seg(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

fn pad(n: u64) -> String {
    format!("{n:020}")
}

impl Keys {
    fn k(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }
    fn schema(&self) -> Vec<u8> {
        self.k("meta/schema_version")
    }
    fn term(&self) -> Vec<u8> {
        self.k("meta/writer_term")
    }
    fn last_commit(&self) -> Vec<u8> {
        self.k("meta/last_commit")
    }
    fn writer(&self, w: &str) -> Vec<u8> {
        self.k(&format!("writers/{}", seg(w)))
    }
    fn hub(&self, key: &str) -> Vec<u8> {
        self.k(&format!("hub/{}", seg(key)))
    }
    fn runner(&self, name: &str) -> Vec<u8> {
        self.k(&format!("runners/{}", seg(name)))
    }
    fn placeholder(&self, id: u32) -> Vec<u8> {
        self.k(&format!("placeholders/{id:010}"))
    }
    fn workload(&self, key: &str) -> Vec<u8> {
        let (network, id) = key.split_once('\u{0}').unwrap_or(("", key));
        self.k(&format!("workloads/{}/{}", seg(network), seg(id)))
    }
    fn reservation(&self, id: &str) -> Vec<u8> {
        self.k(&format!("reservations/{}", seg(id)))
    }
    fn events(&self) -> Vec<u8> {
        self.k("events/")
    }
    fn event(&self, seq: u64) -> Vec<u8> {
        self.k(&format!("events/{}", pad(seq)))
    }
    fn runner_id_claim(&self, id: u32) -> Vec<u8> {
        self.k(&format!("claims/runner-id/{id:010}"))
    }
    fn ip_claim(&self, network: &str, ip: std::net::Ipv4Addr) -> Vec<u8> {
        self.k(&format!("claims/ip/{}/{ip}", seg(network)))
    }
    /// The key past every key under the prefix.
    fn end(&self) -> Vec<u8> {
        range_end(self.prefix.as_bytes())
    }
    /// A record key without the prefix, as claims name their holders.
    fn holder_name(&self, key: &[u8]) -> Vec<u8> {
        key[self.prefix.len().min(key.len())..].to_vec()
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Whether an error leaves a request's outcome unknown (it may have reached etcd).
fn ambiguous(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::Internal
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn describe_err(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

impl EtcdStore {
    /// Connect, check the schema version (stamping a new prefix with this build's), and get
    /// ready. Fails with [`StoreError::Unavailable`] when no endpoint answers.
    pub async fn connect(mut opts: EtcdOptions) -> Result<Self, StoreError> {
        if !opts.prefix.ends_with('/') {
            opts.prefix.push('/');
        }
        let co = connect_options(&opts).with_timeout(opts.timeout);
        let endpoints = opts.endpoints.join(",");
        let client = tokio::time::timeout(opts.timeout, Client::connect(&opts.endpoints, Some(co)))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "etcd {endpoints}: no answer within {:?}",
                    opts.timeout
                ))
            })?
            .map_err(|e| {
                StoreError::Unavailable(format!("etcd {endpoints}: {}", describe_err(&e)))
            })?;
        let (followers, _) = broadcast::channel(FOLLOW_QUEUE);
        let store = Self {
            client,
            streams: tokio::sync::OnceCell::new(),
            keys: Keys {
                prefix: opts.prefix.clone(),
            },
            opts,
            inner: Mutex::new(Inner::default()),
            followers,
            down: std::sync::Mutex::new(None),
        };
        store.prepare().await?;
        Ok(store)
    }

    /// A client for long-lived streams (lease keep-alives, watches): no per-request timeout,
    /// which etcd would apply to the whole stream (it would cancel a keep-alive stream after
    /// `store.timeout`). Connected on first use.
    pub(crate) async fn streams(&self) -> Result<&Client, StoreError> {
        self.streams
            .get_or_try_init(|| async {
                let co = connect_options(&self.opts);
                tokio::time::timeout(
                    self.opts.timeout,
                    Client::connect(&self.opts.endpoints, Some(co)),
                )
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "etcd {}: no answer within {:?}",
                        self.opts.endpoints.join(","),
                        self.opts.timeout
                    ))
                })?
                .map_err(|e| self.unavailable("connecting for streams", &e))
            })
            .await
    }
}

/// How to reach etcd (credentials, TLS, keepalive), without a request timeout.
fn connect_options(opts: &EtcdOptions) -> ConnectOptions {
    let mut co = ConnectOptions::new()
        .with_connect_timeout(opts.timeout)
        .with_keep_alive(Duration::from_secs(10), opts.timeout)
        .with_require_leader(true);
    if let Some((user, password)) = &opts.user {
        co = co.with_user(user.clone(), password.clone());
    }
    if opts.tls_ca.is_some() || opts.tls_identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &opts.tls_ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &opts.tls_identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        co = co.with_tls(tls);
    }
    co
}

impl EtcdStore {
    /// `Err` while etcd is known down and no probe is due; `probe` takes the due probe.
    fn fail_fast(&self, probe: bool) -> Result<(), StoreError> {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.as_mut() {
            Some(d) if d.probed.elapsed() < PROBE_EVERY => Err(StoreError::Unavailable(format!(
                "{} (etcd unreachable for {:.1}s; retried every {} ms)",
                d.why,
                d.since.elapsed().as_secs_f64(),
                PROBE_EVERY.as_millis()
            ))),
            Some(d) => {
                if probe {
                    d.probed = std::time::Instant::now();
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Remember how the last commit went: unreachable (or unsettled) marks etcd down.
    fn note<T>(&self, r: &Result<T, StoreError>) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Err(StoreError::Unavailable(why) | StoreError::Unknown(why)) => {
                let now = std::time::Instant::now();
                match down.as_mut() {
                    Some(d) => {
                        d.why = why.clone();
                        d.probed = now;
                    }
                    None => {
                        tracing::warn!(store = %self.describe(), error = %why, "etcd is unreachable; writes are refused until it answers");
                        *down = Some(Down {
                            why: why.clone(),
                            since: now,
                            probed: now,
                        });
                    }
                }
            }
            _ => {
                if let Some(d) = down.take() {
                    tracing::info!(store = %self.describe(), after_s = d.since.elapsed().as_secs_f64(), "etcd answers again");
                }
            }
        }
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    fn unavailable(&self, what: &str, e: &etcd_client::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd {}: {what}: {}",
            self.opts.endpoints.join(","),
            describe_err(e)
        ))
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        match tokio::time::timeout(self.opts.timeout, self.kv().txn(txn)).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.opts.timeout
                )),
            )),
        }
    }

    async fn get(
        &self,
        key: Vec<u8>,
        opts: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        match tokio::time::timeout(self.opts.timeout, self.kv().get(key, opts)).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.opts.timeout
                )),
            )),
        }
    }

    /// Stamp a new prefix with the schema version and term 0, or check the one found.
    async fn prepare(&self) -> Result<(), StoreError> {
        let k = &self.keys;
        let txn = Txn::new()
            .when([Compare::version(k.schema(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(k.schema(), SCHEMA_VERSION.to_string(), None),
                TxnOp::put(k.term(), pad(0), None),
            ])
            .or_else([TxnOp::get(k.schema(), None)]);
        let resp = self
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("reading the schema version", &e))?;
        if resp.succeeded() {
            return Ok(());
        }
        let found = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let text = String::from_utf8_lossy(&found.unwrap_or_default()).into_owned();
        let version: u32 = text.parse().map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k.schema()).into_owned(),
            reason: format!("{text:?} is not a version number"),
        })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                store: self.describe(),
                found: version,
            });
        }
        Ok(())
    }

    /// Every key under the prefix, read at one revision, page by page.
    async fn read_all(&self) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
        let end = self.keys.end();
        let mut from = self.keys.prefix.as_bytes().to_vec();
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if at > 0 {
                o = o.with_revision(at);
            }
            let mut resp = self
                .get(from.clone(), Some(o))
                .await
                .map_err(|e| self.unavailable("reading the state", &e))?;
            if at == 0 {
                at = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            out.extend(kvs);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// The record key, value and claim (key and holder name) of a change to a record; `None`
    /// for events and hub meta.
    fn record_of(&self, c: &Change) -> Option<(Vec<u8>, Option<RecordValue>)> {
        let k = &self.keys;
        Some(match c {
            Change::PutRunner(r) => {
                let key = k.runner(&r.name);
                let claim = r.id.map(|id| k.runner_id_claim(id));
                (key, Some((encode(r), claim)))
            }
            Change::DeleteRunner(name) => (k.runner(name), None),
            Change::PutPlaceholder(p) => (
                k.placeholder(p.id),
                Some((encode(p), Some(k.runner_id_claim(p.id)))),
            ),
            Change::DeletePlaceholder(id) => (k.placeholder(*id), None),
            Change::PutWorkload(w) => (
                k.workload(&w.key()),
                Some((encode(w), Some(self.workload_claim(w)))),
            ),
            Change::DeleteWorkload(key) => (k.workload(key), None),
            Change::PutReservation(r) => (
                k.reservation(&r.id),
                Some((encode(r), Some(k.ip_claim(&r.network, r.ip)))),
            ),
            Change::DeleteReservation(id) => (k.reservation(id), None),
            Change::PutEvent { .. } | Change::PutMeta(..) => return None,
        })
    }

    /// A workload holds its address; one using a reservation holds it through the reservation
    /// (same claim, same holder name: see `owner_name`).
    fn workload_claim(&self, w: &super::WorkloadRecord) -> Vec<u8> {
        self.keys.ip_claim(&w.network, w.ip.addr())
    }

    /// The name a claim stores for a record: a workload on a reservation is held in the
    /// reservation's name, so both records share one claim.
    fn owner_name(&self, c: &Change, record_key: &[u8]) -> Vec<u8> {
        match c {
            Change::PutWorkload(w) => match &w.reservation {
                Some(r) => self.keys.holder_name(&self.keys.reservation(r)),
                None => self.keys.holder_name(record_key),
            },
            _ => self.keys.holder_name(record_key),
        }
    }

    /// Translate a commit into one guarded transaction.
    fn plan(&self, inner: &Inner, commit: Commit) -> Result<Plan, StoreError> {
        let k = &self.keys;
        let mut plan = Plan {
            counter: inner.counter + 1,
            fence_term: commit.fence.map(|f| f.term),
            fence_lease: commit.fence.and_then(|f| f.lease),
            ..Plan::default()
        };
        // Net the changes: the final state of every key (a transaction may name a key once).
        // Record key → its final value and (claim key, holder name); None: deleted.
        let mut records: BTreeMap<Vec<u8>, Option<FinalRecord>> = BTreeMap::new();
        let mut hub: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut events: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut trim = 0u64;
        for c in &commit.changes {
            match c {
                Change::PutEvent {
                    seq,
                    bytes,
                    trim_below,
                } => {
                    events.insert(*seq, bytes.clone());
                    trim = trim.max(*trim_below);
                }
                Change::PutMeta(key, value) => {
                    if RESERVED_META.contains(&key.as_str()) {
                        return Err(StoreError::Db(format!(
                            "meta key {key:?} belongs to the store itself"
                        )));
                    }
                    hub.insert(k.hub(key), value.clone().into_bytes());
                }
                c => {
                    if let Some((key, fin)) = self.record_of(c) {
                        let owner = self.owner_name(c, &key);
                        let fin = fin.map(|(v, claim)| (v, claim.map(|ck| (ck, owner))));
                        records.insert(key, fin);
                    }
                }
            }
        }
        let guard = |plan: &mut Plan, key: &[u8]| {
            plan.compares.push(match inner.mods.get(key) {
                Some(m) => Compare::mod_revision(key.to_vec(), CompareOp::Equal, *m),
                None => Compare::version(key.to_vec(), CompareOp::Equal, 0),
            });
        };
        // Claims touched: holders removed and added.
        let mut touched: BTreeMap<Vec<u8>, Claim> = BTreeMap::new();
        // Claim key → every record taking it, with its holder name.
        let mut wanted: BTreeMap<Vec<u8>, Vec<Claimed>> = BTreeMap::new();
        for (key, fin) in &records {
            guard(&mut plan, key);
            match fin {
                Some((value, _)) => {
                    plan.ops.push(TxnOp::put(key.clone(), value.clone(), None));
                    plan.puts.push(key.clone());
                }
                None if inner.mods.contains_key(key) => {
                    plan.ops.push(TxnOp::delete(key.clone(), None));
                    plan.deletes.push(key.clone());
                }
                None => {}
            }
            let old = inner.claims_of.get(key);
            let new = fin.as_ref().and_then(|(_, c)| c.as_ref());
            if let Some(old) = old {
                let c = touched
                    .entry(old.clone())
                    .or_insert_with(|| inner.claims.get(old).cloned().unwrap_or_default());
                c.holders.remove(key);
            }
            if let Some((ck, owner)) = new {
                touched
                    .entry(ck.clone())
                    .or_insert_with(|| inner.claims.get(ck).cloned().unwrap_or_default());
                wanted
                    .entry(ck.clone())
                    .or_default()
                    .push((key.clone(), owner.clone()));
            }
            plan.claims_of
                .push((key.clone(), new.map(|(ck, _)| ck.clone())));
        }
        for (ck, mut claim) in touched {
            let before = inner.claims.get(&ck);
            let mut owner = (!claim.holders.is_empty()).then(|| claim.owner.clone());
            for (holder, name) in wanted.remove(&ck).unwrap_or_default() {
                match &owner {
                    Some(o) if *o != name => {
                        return Err(StoreError::Conflict {
                            key: String::from_utf8_lossy(&ck).into_owned(),
                            detail: format!(
                                "held by {}; {} cannot take it",
                                String::from_utf8_lossy(o),
                                String::from_utf8_lossy(&name)
                            ),
                        });
                    }
                    _ => owner = Some(name),
                }
                claim.holders.insert(holder);
            }
            plan.compares.push(match before {
                Some(b) => Compare::value(ck.clone(), CompareOp::Equal, b.owner.clone()),
                None => Compare::version(ck.clone(), CompareOp::Equal, 0),
            });
            match owner {
                Some(o) => {
                    if before.map(|b| &b.owner) != Some(&o) {
                        plan.ops.push(TxnOp::put(ck.clone(), o.clone(), None));
                        plan.puts.push(ck.clone());
                    }
                    claim.owner = o;
                    plan.claims.push((ck, Some(claim)));
                }
                None => {
                    if before.is_some() {
                        plan.ops.push(TxnOp::delete(ck.clone(), None));
                        plan.deletes.push(ck.clone());
                    }
                    plan.claims.push((ck, None));
                }
            }
        }
        for (key, value) in hub {
            guard(&mut plan, &key);
            plan.ops.push(TxnOp::put(key.clone(), value, None));
            plan.puts.push(key);
        }
        for (seq, bytes) in events.into_iter().filter(|(s, _)| *s > trim) {
            plan.compares
                .push(Compare::version(k.event(seq), CompareOp::Equal, 0));
            plan.ops.push(TxnOp::put(k.event(seq), bytes, None));
            plan.events.push(k.event(seq));
        }
        if trim > 0 {
            plan.ops.push(TxnOp::delete(
                k.events(),
                Some(DeleteOptions::new().with_range(k.event(trim.saturating_add(1)))),
            ));
        }
        if let Some(term) = plan.fence_term {
            plan.compares.push(Compare::value(
                k.term(),
                CompareOp::Less,
                pad(term.saturating_add(1)),
            ));
            plan.ops.push(TxnOp::put(k.term(), pad(term), None));
        }
        if let Some(lease) = plan.fence_lease {
            plan.compares
                .push(Compare::lease(k.k("leader"), CompareOp::Equal, lease));
        }
        let wk = k.writer(&self.opts.writer);
        guard(&mut plan, &wk);
        plan.ops
            .push(TxnOp::put(wk.clone(), plan.counter.to_string(), None));
        plan.puts.push(wk);
        plan.ops.push(TxnOp::put(
            k.last_commit(),
            format!("{}:{}", self.opts.writer, plan.counter),
            None,
        ));
        plan.changes = commit.changes;
        let limit = self.opts.max_txn_ops;
        if plan.compares.len() > limit || plan.ops.len() > limit {
            return Err(StoreError::TooLarge {
                changes: plan.changes.len(),
                compares: plan.compares.len(),
                ops: plan.ops.len(),
                limit,
            });
        }
        Ok(plan)
    }

    /// Record an applied plan in the writer's view and tell followers.
    fn applied(&self, inner: &mut Inner, plan: Plan, revision: i64) -> u64 {
        for k in &plan.puts {
            inner.mods.insert(k.clone(), revision);
        }
        for k in &plan.deletes {
            inner.mods.remove(k);
        }
        for (rk, ck) in plan.claims_of {
            match ck {
                Some(ck) => inner.claims_of.insert(rk, ck),
                None => inner.claims_of.remove(&rk),
            };
        }
        for (ck, c) in plan.claims {
            match c {
                Some(c) => inner.claims.insert(ck, c),
                None => inner.claims.remove(&ck),
            };
        }
        inner.counter = plan.counter;
        inner.revision = revision;
        let revision = revision as u64;
        // Nobody following is fine.
        let _ = self.followers.send(Arc::new(Committed {
            revision,
            changes: plan.changes,
        }));
        revision
    }

    /// A refused transaction: fenced, or a guarded key changed under this writer. Names the
    /// key and refreshes what this writer knows of it.
    async fn refused(&self, inner: &mut Inner, plan: &Plan) -> StoreError {
        if let Some(term) = plan.fence_term
            && let Ok(r) = self.get(self.keys.term(), None).await
        {
            let current = r
                .kvs()
                .first()
                .and_then(|kv| String::from_utf8_lossy(kv.value()).parse::<u64>().ok())
                .unwrap_or(0);
            if current > term {
                return StoreError::Fenced { term, current };
            }
        }
        if let Some(lease) = plan.fence_lease
            && let Ok(r) = self.get(self.keys.k("leader"), None).await
            && r.kvs().first().map(|kv| kv.lease()) != Some(lease)
        {
            return StoreError::LeaseLost {
                term: plan.fence_term.unwrap_or(0),
            };
        }
        for key in plan
            .puts
            .iter()
            .chain(plan.deletes.iter())
            .chain(plan.claims_of.iter().map(|(k, _)| k))
        {
            let Ok(r) = self.get(key.clone(), None).await else {
                continue;
            };
            let now = r
                .kvs()
                .first()
                .map(|kv| (kv.mod_revision(), kv.value().to_vec()));
            let known = inner.mods.get(key).copied();
            if now.as_ref().map(|n| n.0) != known {
                match &now {
                    Some((m, _)) => inner.mods.insert(key.clone(), *m),
                    None => inner.mods.remove(key),
                };
                let detail = match now {
                    Some((_, v)) if key.starts_with(self.keys.k("claims/").as_slice()) => {
                        format!("held by {}", String::from_utf8_lossy(&v))
                    }
                    Some((m, _)) => format!(
                        "changed by another writer (mod revision {m}; this host last saw {})",
                        known.map_or("none".into(), |k| k.to_string())
                    ),
                    None => "removed by another writer".into(),
                };
                return StoreError::Conflict {
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail,
                };
            }
        }
        for key in &plan.events {
            if let Ok(r) = self.get(key.clone(), None).await
                && !r.kvs().is_empty()
            {
                return StoreError::Conflict {
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail: "this event number is taken: another writer appends to this log".into(),
                };
            }
        }
        // A claim this commit takes may be held by a record this writer never read.
        for (ck, _) in &plan.claims {
            if let Ok(r) = self.get(ck.clone(), None).await
                && let Some(kv) = r.kvs().first()
                && inner.claims.get(ck).map(|c| c.owner.as_slice()) != Some(kv.value())
            {
                return StoreError::Conflict {
                    key: String::from_utf8_lossy(ck).into_owned(),
                    detail: format!("held by {}", String::from_utf8_lossy(kv.value())),
                };
            }
        }
        StoreError::Conflict {
            key: self.keys.prefix.clone(),
            detail: "a guarded key changed under this writer".into(),
        }
    }

    /// Settle a commit whose answer was lost: write the writer's counter key guarded by its
    /// revision before the commit. Success means the commit did not apply and never will;
    /// finding the commit's counter there means it applied (at that key's mod revision).
    /// `Err`: etcd still unreachable.
    async fn settle(&self, pending: &Pending) -> Result<Settled, etcd_client::Error> {
        let wk = self.keys.writer(&self.opts.writer);
        let guard = if pending.counter_before > 0 {
            Compare::mod_revision(wk.clone(), CompareOp::Equal, pending.counter_before)
        } else {
            Compare::version(wk.clone(), CompareOp::Equal, 0)
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(
                wk.clone(),
                format!("void {}", pending.plan.counter),
                None,
            )])
            .or_else([TxnOp::get(wk.clone(), None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Settled::NotApplied { counter_rev: rev });
        }
        let found = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
            _ => None,
        });
        match found {
            Some((rev, v)) if v == pending.plan.counter.to_string().as_bytes() => {
                Ok(Settled::Applied { rev })
            }
            // Someone else wrote this writer's counter: not applied by us; the next commit's
            // guard on the counter names the conflict.
            other => Ok(Settled::NotApplied {
                counter_rev: other.map_or(0, |(rev, _)| rev),
            }),
        }
    }

    /// Settle `inner.pending`, retrying until `deadline`. Applied-after-failure commits are
    /// reverted. On success the pending commit is gone.
    async fn settle_pending(
        &self,
        inner: &mut Inner,
        deadline: tokio::time::Instant,
        told_failed: bool,
    ) -> Result<Option<u64>, StoreError> {
        let Some(pending) = inner.pending.take() else {
            return Ok(None);
        };
        let mut wait = Duration::from_millis(50);
        loop {
            match self.settle(&pending).await {
                Ok(Settled::NotApplied { counter_rev }) => {
                    // The counter key moved on (to the void written by the settling).
                    let wk = self.keys.writer(&self.opts.writer);
                    if counter_rev > 0 {
                        inner.mods.insert(wk, counter_rev);
                    } else {
                        inner.mods.remove(&wk);
                    }
                    inner.counter = pending.plan.counter;
                    return Ok(None);
                }
                Ok(Settled::Applied { rev }) if !told_failed => {
                    return Ok(Some(self.applied(inner, pending.plan, rev)));
                }
                Ok(Settled::Applied { rev }) => {
                    inner.counter = pending.plan.counter;
                    inner.mods.insert(self.keys.writer(&self.opts.writer), rev);
                    if let Err(e) = self.revert(inner, &pending.plan, rev).await {
                        // Writes stay refused: this writer's view no longer matches etcd.
                        inner.pending = Some(pending);
                        return Err(e);
                    }
                    return Ok(None);
                }
                Err(e) if ambiguous(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    let err = self.unavailable(
                        "a commit's answer was lost and its outcome cannot be learnt yet; writes are refused until it is",
                        &e,
                    );
                    inner.pending = Some(pending);
                    return Err(StoreError::Unknown(err.to_string()));
                }
            }
        }
    }

    async fn commit_now(&self, commit: Commit) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().await;
        if inner.pending.is_some() {
            let deadline = tokio::time::Instant::now() + self.opts.timeout;
            self.settle_pending(&mut inner, deadline, true).await?;
        }
        if commit.changes.is_empty() {
            return Ok(inner.revision.max(0) as u64);
        }
        let mut plan = self.plan(&inner, commit)?;
        let counter_before = inner
            .mods
            .get(&self.keys.writer(&self.opts.writer))
            .copied()
            .unwrap_or(0);
        // The transaction takes the compares and operations; the plan keeps what the outcome
        // needs (keys written, claims, the counter).
        let txn = Txn::new()
            .when(std::mem::take(&mut plan.compares))
            .and_then(std::mem::take(&mut plan.ops))
            .or_else([TxnOp::get(self.keys.term(), None)]);
        match self.txn(txn).await {
            Ok(resp) if resp.succeeded() => {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                Ok(self.applied(&mut inner, plan, rev))
            }
            Ok(_) => Err(self.refused(&mut inner, &plan).await),
            Err(e) if ambiguous(&e) => {
                tracing::warn!(store = %self.describe(), error = %describe_err(&e), "a commit's answer was lost; settling its outcome");
                inner.pending = Some(Pending {
                    plan,
                    counter_before,
                });
                let deadline = tokio::time::Instant::now() + self.opts.resolve_timeout;
                match self.settle_pending(&mut inner, deadline, false).await? {
                    Some(rev) => Ok(rev),
                    None => Err(self.unavailable("the commit was not applied", &e)),
                }
            }
            Err(e) => {
                tracing::warn!(store = %self.describe(), error = ?e, "etcd refused a commit");
                Err(StoreError::Db(format!(
                    "etcd refused the commit: {}",
                    describe_err(&e)
                )))
            }
        }
    }

    /// Undo a commit that applied after its caller was told it failed: every key it wrote
    /// back to its value at the revision before, guarded by still being as the commit left it.
    async fn revert(&self, inner: &mut Inner, plan: &Plan, rev: i64) -> Result<(), StoreError> {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut restored = Vec::new();
        let wk = self.keys.writer(&self.opts.writer);
        for key in plan.puts.iter().chain(plan.deletes.iter()) {
            if *key == wk {
                continue;
            }
            let before = self
                .get(key.clone(), Some(GetOptions::new().with_revision(rev - 1)))
                .await
                .map_err(|e| {
                    StoreError::Unknown(format!(
                        "a commit that applied after its caller was told it failed cannot be reverted ({}); restart the host to reload the state",
                        describe_err(&e)
                    ))
                })?;
            if plan.deletes.contains(key) {
                compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
            } else {
                compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
            }
            match before.kvs().first() {
                Some(kv) => {
                    ops.push(TxnOp::put(key.clone(), kv.value().to_vec(), None));
                    restored.push(key.clone());
                }
                None => ops.push(TxnOp::delete(key.clone(), None)),
            }
        }
        // Events the commit appended go too (trimmed ones stay trimmed).
        for key in &plan.events {
            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
            ops.push(TxnOp::delete(key.clone(), None));
        }
        let resp = self
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| {
                StoreError::Unknown(format!("reverting a late commit: {}", describe_err(&e)))
            })?;
        if !resp.succeeded() {
            return Err(StoreError::Unknown(
                "a commit that applied after its caller was told it failed was changed since; restart the host to reload the state".into(),
            ));
        }
        let at = resp.header().map(|h| h.revision()).unwrap_or(rev);
        for k in restored {
            inner.mods.insert(k, at);
        }
        inner.revision = at;
        tracing::warn!(store = %self.describe(), revision = rev, "reverted a commit that applied after its caller was told it failed");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.opts.endpoints.join(","),
            self.keys.prefix
        )
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut inner = self.inner.lock().await;
        let deadline = tokio::time::Instant::now() + self.opts.resolve_timeout;
        self.settle_pending(&mut inner, deadline, true).await?;
        let kvs = self.read_all().await?;
        let k = &self.keys;
        let mut snap = Snapshot::default();
        let mut fresh = Inner {
            counter: inner.counter,
            ..Inner::default()
        };
        let plen = k.prefix.len();
        let wk = k.writer(&self.opts.writer);
        for kv in &kvs {
            let key = kv.key();
            let rest = String::from_utf8_lossy(&key[plen..]).into_owned();
            let value = kv.value();
            let (kind, _) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
            let claim_of = |fresh: &mut Inner, ck: Vec<u8>| {
                fresh.claims_of.insert(key.to_vec(), ck.clone());
                fresh
                    .claims
                    .entry(ck)
                    .or_default()
                    .holders
                    .insert(key.to_vec());
            };
            match kind {
                "meta" => {
                    if key == k.last_commit().as_slice() {
                        snap.revision = kv.mod_revision() as u64;
                    }
                    continue;
                }
                "writers" => {
                    if key == wk.as_slice() {
                        fresh.counter = fresh.counter.max(
                            String::from_utf8_lossy(value)
                                .trim_start_matches("void ")
                                .parse()
                                .unwrap_or(0),
                        );
                    } else {
                        continue;
                    }
                }
                "hub" => {
                    let name = rest["hub/".len()..].replace("%2F", "/").replace("%25", "%");
                    snap.meta
                        .insert(name, String::from_utf8_lossy(value).into_owned());
                }
                "runners" => {
                    let r: super::RunnerRecord = decode(key, value)?;
                    if let Some(id) = r.id {
                        claim_of(&mut fresh, k.runner_id_claim(id));
                    }
                    snap.runners.insert(r.name.clone(), r);
                }
                "placeholders" => {
                    let p: super::PlaceholderRecord = decode(key, value)?;
                    claim_of(&mut fresh, k.runner_id_claim(p.id));
                    snap.placeholders.insert(p.id, p);
                }
                "workloads" => {
                    let w: super::WorkloadRecord = decode(key, value)?;
                    claim_of(&mut fresh, self.workload_claim(&w));
                    snap.workloads.insert(w.key(), w);
                }
                "reservations" => {
                    let r: super::ReservationRecord = decode(key, value)?;
                    claim_of(&mut fresh, k.ip_claim(&r.network, r.ip));
                    snap.reservations.insert(r.id.clone(), r);
                }
                "events" => {
                    let seq = rest["events/".len()..]
                        .parse()
                        .map_err(|_| StoreError::Corrupt {
                            key: rest.clone(),
                            reason: "an event key must end in its sequence number".into(),
                        })?;
                    snap.events.push(StoredEvent {
                        seq,
                        bytes: value.to_vec(),
                    });
                    continue;
                }
                "claims" => {
                    fresh.claims.entry(key.to_vec()).or_default().owner = value.to_vec();
                }
                _ => continue,
            }
            fresh.mods.insert(key.to_vec(), kv.mod_revision());
        }
        snap.events.sort_by_key(|e| e.seq);
        fresh.revision = snap.revision as i64;
        *inner = fresh;
        Ok(snap)
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        if commit.changes.is_empty() {
            return Ok(self.inner.lock().await.revision.max(0) as u64);
        }
        self.fail_fast(true)?;
        let r = self.commit_now(commit).await;
        self.note(&r);
        r
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        if after == u64::MAX || limit == 0 {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let mut resp = self
            .get(
                k.event(after + 1),
                Some(
                    GetOptions::new()
                        .with_range(range_end(&k.events()))
                        .with_limit(limit.min(i64::MAX as usize) as i64),
                ),
            )
            .await
            .map_err(|e| self.unavailable("reading events", &e))?;
        let plen = k.events().len();
        let mut out = Vec::new();
        for kv in resp.take_kvs() {
            let seq = String::from_utf8_lossy(&kv.key()[plen..])
                .parse()
                .map_err(|_| StoreError::Corrupt {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    reason: "an event key must end in its sequence number".into(),
                })?;
            out.push(StoredEvent {
                seq,
                bytes: kv.value().to_vec(),
            });
        }
        Ok(out)
    }

    fn follow(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.followers.subscribe()
    }

    /// A record change costs at most three compares and three operations (the record, the
    /// claim it leaves, the claim it takes); a commit adds up to eight of its own.
    fn max_changes(&self) -> Option<usize> {
        Some(self.opts.max_txn_ops.saturating_sub(8) / 3)
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.fail_fast(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::lab::etcd::{EtcdCluster, EtcdSpec};
    use crate::store::contract::{self, Harness, runner, workload};
    use crate::store::{Fence, ReservationRecord};

    static STORES: AtomicU32 = AtomicU32::new(0);

    fn options(etcd: &EtcdCluster, prefix: &str, writer: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: etcd.endpoints(),
            prefix: prefix.into(),
            writer: writer.into(),
            timeout: Duration::from_secs(2),
            resolve_timeout: Duration::from_secs(3),
            ..EtcdOptions::default()
        }
    }

    async fn open(etcd: &EtcdCluster, prefix: &str) -> EtcdStore {
        let n = STORES.fetch_add(1, Ordering::Relaxed);
        EtcdStore::connect(options(etcd, prefix, &format!("writer-{n}")))
            .await
            .unwrap()
    }

    struct Etcd(EtcdCluster);

    impl Harness for Etcd {
        type S = EtcdStore;
        async fn open(&self, n: u32) -> EtcdStore {
            open(&self.0, &format!("/contract/{n}/")).await
        }
    }

    fn one_member(name: &str) -> EtcdCluster {
        EtcdCluster::start(EtcdSpec::local(name, 1)).unwrap()
    }

    #[tokio::test]
    async fn etcd_shows_every_store_behaviour() {
        contract::every_behaviour(&Etcd(one_member("contract"))).await;
    }

    fn reservation(id: &str, ip: &str) -> ReservationRecord {
        ReservationRecord {
            id: id.into(),
            network: "default".into(),
            runner: "r1".into(),
            ip: ip.parse().unwrap(),
            created_ms: 1,
            expires_ms: 2,
            used_by: None,
        }
    }

    fn conflict_on(r: Result<u64, StoreError>, key_part: &str) {
        match r {
            Err(StoreError::Conflict { key, .. }) if key.contains(key_part) => {}
            other => panic!("expected a conflict on {key_part}, got {other:?}"),
        }
    }

    /// Two writers on one prefix, each with its own view: whichever commits second is refused
    /// for every id, address and reservation the first holds, and takes free ones.
    #[tokio::test]
    async fn two_writers_never_hold_one_id_address_or_reservation() {
        let etcd = one_member("two-writers");
        let a = open(&etcd, "/two/").await;
        let b = open(&etcd, "/two/").await;
        a.load().await.unwrap();
        b.load().await.unwrap();
        let put = |c: Change| Commit::new(vec![c]);
        a.commit(put(Change::PutRunner(runner("r1", 1))))
            .await
            .unwrap();
        conflict_on(
            b.commit(put(Change::PutRunner(runner("r2", 1)))).await,
            "claims/runner-id/0000000001",
        );
        b.commit(put(Change::PutRunner(runner("r2", 2))))
            .await
            .unwrap();
        a.commit(put(Change::PutWorkload(workload(
            "w1",
            "r1",
            "10.128.64.2/18",
        ))))
        .await
        .unwrap();
        conflict_on(
            b.commit(put(Change::PutWorkload(workload(
                "w2",
                "r1",
                "10.128.64.2/18",
            ))))
            .await,
            "claims/ip/default/10.128.64.2",
        );
        // A workload id the other writer created is not overwritten either.
        conflict_on(
            b.commit(put(Change::PutWorkload(workload(
                "w1",
                "r1",
                "10.128.64.3/18",
            ))))
            .await,
            "workloads/default/w1",
        );
        b.commit(put(Change::PutReservation(reservation(
            "res-1",
            "10.128.64.9",
        ))))
        .await
        .unwrap();
        conflict_on(
            a.commit(put(Change::PutReservation(reservation(
                "res-1",
                "10.128.64.10",
            ))))
            .await,
            "reservations/res-1",
        );
        conflict_on(
            a.commit(put(Change::PutReservation(reservation(
                "res-2",
                "10.128.64.9",
            ))))
            .await,
            "claims/ip/default/10.128.64.9",
        );
        // The refused commits left nothing: a fresh reader sees exactly the accepted ones.
        let snap = open(&etcd, "/two/").await.load().await.unwrap();
        assert_eq!(snap.runners.keys().collect::<Vec<_>>(), ["r1", "r2"]);
        assert_eq!(snap.workloads.len(), 1);
        assert_eq!(snap.reservations["res-1"].ip.to_string(), "10.128.64.9");
        // A released address is free for the other writer (after it reads again).
        a.commit(put(Change::DeleteWorkload(crate::store::workload_key(
            "default", "w1",
        ))))
        .await
        .unwrap();
        b.load().await.unwrap();
        b.commit(put(Change::PutWorkload(workload(
            "w9",
            "r2",
            "10.128.64.2/18",
        ))))
        .await
        .unwrap();
    }

    /// A workload on a reservation shares its address's claim; the claim goes only when both
    /// are gone, and a runner taking a placeholder's id moves that claim in one commit.
    #[tokio::test]
    async fn claims_are_shared_by_a_reservation_and_its_workload_and_move_with_ids() {
        let etcd = one_member("claims");
        let s = open(&etcd, "/claims/").await;
        let mut res = reservation("res-1", "10.128.64.9");
        s.commit(Commit::new(vec![Change::PutReservation(res.clone())]))
            .await
            .unwrap();
        let mut w = workload("w1", "r1", "10.128.64.9/18");
        w.reservation = Some("res-1".into());
        res.used_by = Some("w1".into());
        s.commit(Commit::new(vec![
            Change::PutReservation(res.clone()),
            Change::PutWorkload(w.clone()),
        ]))
        .await
        .unwrap();
        s.commit(Commit::new(vec![Change::DeleteWorkload(w.key())]))
            .await
            .unwrap();
        // Still the reservation's.
        let other = open(&etcd, "/claims/").await;
        other.load().await.unwrap();
        conflict_on(
            other
                .commit(Commit::new(vec![Change::PutWorkload(workload(
                    "w2",
                    "r1",
                    "10.128.64.9/18",
                ))]))
                .await,
            "claims/ip",
        );
        s.commit(Commit::new(vec![Change::DeleteReservation("res-1".into())]))
            .await
            .unwrap();
        other.load().await.unwrap();
        other
            .commit(Commit::new(vec![Change::PutWorkload(workload(
                "w2",
                "r1",
                "10.128.64.9/18",
            ))]))
            .await
            .unwrap();
        // A placeholder's id taken by a runner in one commit.
        other
            .commit(Commit::new(vec![Change::PutPlaceholder(
                crate::store::PlaceholderRecord {
                    id: 5,
                    physical_ip: "192.0.2.5".parse().unwrap(),
                    recovered_ms: 1,
                },
            )]))
            .await
            .unwrap();
        other
            .commit(Commit::new(vec![
                Change::DeletePlaceholder(5),
                Change::PutRunner(runner("r5", 5)),
            ]))
            .await
            .unwrap();
        let mut kv = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        let claim = kv
            .get("/claims/claims/runner-id/0000000005", None)
            .await
            .unwrap();
        assert_eq!(claim.kvs()[0].value(), b"runners/r5");
    }

    #[tokio::test]
    async fn a_commit_beyond_etcds_operation_limit_is_refused_whole() {
        let etcd = one_member("too-large");
        let s = open(&etcd, "/large/").await;
        let changes: Vec<Change> = (0..100)
            .map(|i| {
                Change::PutWorkload(workload(
                    &format!("w{i}"),
                    "r1",
                    &format!("10.128.64.{}/18", i + 2),
                ))
            })
            .collect();
        match s.commit(Commit::new(changes)).await {
            Err(e @ StoreError::TooLarge { .. }) => {
                assert!(e.to_string().contains("--max-txn-ops"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(s.load().await.unwrap().workloads.is_empty());
    }

    #[tokio::test]
    async fn a_prefix_written_by_a_newer_weir_is_refused() {
        let etcd = one_member("newer");
        let mut kv = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        kv.put("/newer/meta/schema_version", "7", None)
            .await
            .unwrap();
        let e = EtcdStore::connect(options(&etcd, "/newer/", "w"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("schema version 7") && e.contains("knows up to 1"),
            "{e}"
        );
    }

    /// With etcd gone, a commit fails as unavailable within its deadlines and applies nothing;
    /// once etcd is back the store writes again by itself.
    #[tokio::test]
    async fn with_etcd_down_commits_fail_unavailable_and_recover_when_it_returns() {
        let mut etcd = one_member("down");
        let s = open(&etcd, "/down/").await;
        s.commit(Commit::new(vec![Change::PutRunner(runner("r1", 1))]))
            .await
            .unwrap();
        etcd.kill(0).unwrap();
        let r = s
            .commit(Commit {
                changes: vec![Change::PutRunner(runner("r2", 2))],
                fence: Some(Fence::term(1)),
            })
            .await;
        assert!(
            matches!(r, Err(StoreError::Unavailable(_) | StoreError::Unknown(_))),
            "{r:?}"
        );
        etcd.restart(0).unwrap();
        // The first commit after settles the lost one, then applies.
        let mut ok = None;
        for _ in 0..50 {
            match s
                .commit(Commit::new(vec![Change::PutRunner(runner("r3", 3))]))
                .await
            {
                Ok(rev) => {
                    ok = Some(rev);
                    break;
                }
                Err(StoreError::Unavailable(_) | StoreError::Unknown(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(ok.is_some(), "the store did not recover");
        let snap = open(&etcd, "/down/").await.load().await.unwrap();
        assert_eq!(
            snap.runners.keys().collect::<Vec<_>>(),
            ["r1", "r3"],
            "r2 was refused, so it is not there"
        );
    }
}

pub mod leader;
pub use leader::Leadership;
