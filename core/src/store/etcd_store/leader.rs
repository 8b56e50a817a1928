//! Leadership of the hub role through etcd: one leader at a time.
//!
//! Each host joins the host set with a lease of its own ([`Presence`]): `P hosts/<name>`
//! (what it serves and where) lives under that lease, kept alive every quarter of its TTL. The
//! leader key `P leader` ("<name> <term>") is taken under the same lease, with the next writer
//! term in the same transaction; the leader's commits carry that term and lease as their
//! [`Fence`], so nothing it sends commits once its lease is gone or a successor took a newer
//! term. A host whose lease cannot be renewed for three quarters of its TTL considers itself
//! gone (and deposed) before etcd expires the lease anywhere.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;

use super::{EtcdStore, describe_err, pad};
use crate::store::{Fence, Store, StoreError};

/// How soon a failed lease renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_millis(100);

/// This host's membership of the host set: its lease, and a signal that turns true when the
/// lease is lost (not renewed within three quarters of its TTL, or revoked).
pub struct Presence {
    pub name: String,
    pub lease: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Presence {
    /// Whether the lease is lost: stop acting as a member (and as leader).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// A signal that turns true when the lease is lost (to await without borrowing this).
    pub fn lost_receiver(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// This host leads: the term it took and the lease it holds the leader key under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    pub term: u64,
    pub lease: i64,
}

impl Leadership {
    /// The fence every commit of this leader carries.
    pub fn fence(&self) -> Fence {
        Fence {
            term: self.term,
            lease: Some(self.lease),
        }
    }
}

/// Who holds the leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub term: u64,
    /// The key's mod revision (to watch from, or to take it over guarded by).
    pub revision: i64,
    pub lease: i64,
}

impl EtcdStore {
    fn leader_key(&self) -> Vec<u8> {
        self.keys.k("leader")
    }

    fn host_key(&self, name: &str) -> Vec<u8> {
        self.keys.k(&format!("hosts/{name}"))
    }

    /// Who leads now.
    pub async fn leader(&self) -> Result<Option<LeaderKey>, StoreError> {
        let r = self
            .get(self.leader_key(), None)
            .await
            .map_err(|e| self.unavailable("reading the leader", &e))?;
        Ok(r.kvs().first().and_then(|kv| {
            let (name, term) = parse_leader(kv.value())?;
            Some(LeaderKey {
                name,
                term,
                revision: kv.mod_revision(),
                lease: kv.lease(),
            })
        }))
    }

    /// Join the host set: a lease of `ttl` (etcd rounds it up to whole seconds, and to its
    /// own minimum), kept alive from now on, with `record` at `hosts/<name>` under it.
    pub async fn join(
        &self,
        name: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<Presence, StoreError> {
        // Up, never down: the renewal margins below are fractions of `ttl`.
        let ttl_s = i64::try_from(ttl.as_millis().div_ceil(1000).max(1)).unwrap_or(i64::MAX);
        let mut leases = self.client.lease_client();
        let lease = leases
            .grant(ttl_s, None)
            .await
            .map_err(|e| self.unavailable("granting this host's lease", &e))?
            .id();
        self.client
            .kv_client()
            .put(
                self.host_key(name),
                record,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| self.unavailable("recording this host in the host set", &e))?;
        self.keep(name, lease, ttl).await
    }

    /// Replace this host's record (its role changed).
    pub async fn update_record(&self, p: &Presence, record: &str) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(
                self.host_key(&p.name),
                record,
                Some(PutOptions::new().with_lease(p.lease)),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable("updating this host's record", &e))
    }

    /// Every live host's record, by name.
    pub async fn hosts(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.hosts_at().await?.0)
    }

    /// The host set and the revision it was read at (for [`EtcdStore::wait_hosts_change`]).
    pub async fn hosts_at(&self) -> Result<(Vec<(String, String)>, i64), StoreError> {
        let prefix = self.keys.k("hosts/");
        let r = self
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.unavailable("reading the host set", &e))?;
        let revision = r.header().map_or(0, |h| h.revision());
        let hosts = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect();
        Ok((hosts, revision))
    }

    /// Resolves once the host set changes after `revision` (a host joined, left, or its
    /// record changed), or the watch ends.
    pub async fn wait_hosts_change(&self, revision: i64) -> Result<(), StoreError> {
        let mut w = self.streams().await?.watch_client();
        let mut stream = w
            .watch(
                self.keys.k("hosts/"),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| self.unavailable("watching the host set", &e))?;
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.events().is_empty() => continue,
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.unavailable("watching the host set", &e)),
            }
        }
    }

    /// Take the leader key under `p`'s lease with the next writer term, if nobody holds it or
    /// `held` is what holds it now (a previous incarnation of this host, dead, whose lease has
    /// not expired yet). `None`: someone else got there first.
    pub async fn try_lead(
        &self,
        p: &Presence,
        held: Option<&LeaderKey>,
    ) -> Result<Option<Leadership>, StoreError> {
        let (lk, tk) = (self.leader_key(), self.keys.term());
        let term_now = self
            .get(tk.clone(), None)
            .await
            .map_err(|e| self.unavailable("reading the writer term", &e))?;
        let (current, term_rev) = term_now
            .kvs()
            .first()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.value())
                        .parse::<u64>()
                        .unwrap_or(0),
                    kv.mod_revision(),
                )
            })
            .unwrap_or((0, 0));
        let term = current + 1;
        let leader_guard = match held {
            None => Compare::version(lk.clone(), CompareOp::Equal, 0),
            Some(h) => Compare::mod_revision(lk.clone(), CompareOp::Equal, h.revision),
        };
        let txn = Txn::new()
            .when([
                leader_guard,
                Compare::mod_revision(tk.clone(), CompareOp::Equal, term_rev),
            ])
            .and_then([
                TxnOp::put(
                    lk,
                    format!("{} {term}", p.name),
                    Some(PutOptions::new().with_lease(p.lease)),
                ),
                TxnOp::put(tk, pad(term), None),
            ]);
        let resp = self
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("taking the leader key", &e))?;
        if !resp.succeeded() {
            return Ok(None);
        }
        tracing::info!(store = %self.describe(), name = %p.name, term, "leading");
        Ok(Some(Leadership {
            term,
            lease: p.lease,
        }))
    }

    /// Wait until the leader key changes after `revision` (deleted, or put by a new leader).
    pub async fn wait_leader_change(&self, revision: i64) -> Result<(), StoreError> {
        let mut w = self.streams().await?.watch_client();
        let mut stream = w
            .watch(
                self.leader_key(),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            )
            .await
            .map_err(|e| self.unavailable("watching the leader", &e))?;
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if m.events().iter().any(|e| {
                        e.event_type() == EventType::Delete || e.event_type() == EventType::Put
                    }) {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.unavailable("watching the leader", &e)),
            }
        }
    }

    /// Renew the lease every quarter of its TTL. A renewal counts from when it was sent (etcd
    /// extends the lease from no earlier than that); a lease not renewed for three quarters
    /// of its TTL, or that is gone, is lost — a quarter of the TTL before etcd can expire it
    /// and a standby take over. A broken keep-alive stream (its member restarted, an election
    /// moved etcd's leader) is opened again, which renews too; a failed renewal is retried
    /// every [`RENEW_RETRY`].
    async fn keep(&self, name: &str, lease: i64, ttl: Duration) -> Result<Presence, StoreError> {
        let leases = self.streams().await?.lease_client();
        let stream = leases
            .clone()
            .keep_alive(lease)
            .await
            .map_err(|e| self.unavailable("renewing this host's lease", &e))?;
        let (tx, rx) = watch::channel(false);
        let every = ttl / 4;
        let margin = ttl * 3 / 4;
        let store = self.describe();
        let task = tokio::spawn(async move {
            let mut leases = leases;
            let mut stream = Some(stream);
            let mut last = tokio::time::Instant::now();
            loop {
                let sent = tokio::time::Instant::now();
                let attempt = async {
                    match stream.as_mut() {
                        Some((keeper, answers)) => {
                            keeper.keep_alive().await.ok()?;
                            let a = answers.message().await.ok()??;
                            Some(Ok(a.ttl() > 0))
                        }
                        None => match leases.keep_alive(lease).await {
                            Ok(s) => {
                                stream = Some(s);
                                Some(Ok(true))
                            }
                            Err(etcd_client::Error::LeaseKeepAliveError(e))
                                if e.contains("not found") =>
                            {
                                Some(Ok(false))
                            }
                            Err(_) => Some(Err(())),
                        },
                    }
                };
                let renewed = match tokio::time::timeout(every, attempt).await {
                    Ok(Some(Ok(alive))) => Some(alive),
                    _ => None,
                };
                match renewed {
                    Some(true) => last = sent,
                    Some(false) => {
                        tracing::warn!(%store, lease, "this host's lease expired or was revoked");
                        let _ = tx.send(true);
                        return;
                    }
                    // Open the stream again next time (it may be what broke).
                    None => stream = None,
                }
                if last.elapsed() >= margin {
                    tracing::warn!(%store, lease, after = ?last.elapsed(), "this host's lease could not be renewed in time");
                    let _ = tx.send(true);
                    return;
                }
                let wait = if renewed.is_some() {
                    every.saturating_sub(sent.elapsed())
                } else {
                    RENEW_RETRY
                };
                tokio::time::sleep(wait).await;
            }
        });
        Ok(Presence {
            name: name.to_string(),
            lease,
            lost: rx,
            keeper: task,
        })
    }

    /// Leave the host set (and the leadership, if held): the lease is revoked, so the
    /// record and the leader key go at once.
    pub async fn leave(&self, p: &Presence) -> Result<(), StoreError> {
        p.keeper.abort();
        self.client
            .lease_client()
            .revoke(p.lease)
            .await
            .map(|_| ())
            .map_err(|e| {
                StoreError::Unavailable(format!("revoking this host's lease: {}", describe_err(&e)))
            })
    }
}

impl EtcdStore {
    /// The configuration digest the last leader recorded (what the cluster runs with).
    pub async fn cluster_config(&self) -> Result<Option<String>, StoreError> {
        let r = self
            .get(self.keys.k("cluster/config"), None)
            .await
            .map_err(|e| self.unavailable("reading the cluster's configuration", &e))?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Record the configuration the cluster runs with (by its leader).
    pub async fn put_cluster_config(&self, digest: &str) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(self.keys.k("cluster/config"), digest, None)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable("recording the cluster's configuration", &e))
    }
}

fn parse_leader(v: &[u8]) -> Option<(String, u64)> {
    let s = String::from_utf8_lossy(v);
    let (name, term) = s.rsplit_once(' ')?;
    Some((name.to_string(), term.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::etcd::{EtcdCluster, EtcdSpec};
    use crate::store::etcd_store::EtcdOptions;
    use crate::store::{Change, Commit};

    async fn open(etcd: &EtcdCluster, writer: &str) -> EtcdStore {
        EtcdStore::connect(EtcdOptions {
            endpoints: etcd.endpoints(),
            prefix: "/lead/".into(),
            writer: writer.into(),
            timeout: Duration::from_secs(2),
            ..EtcdOptions::default()
        })
        .await
        .unwrap()
    }

    fn meta(fence: Fence) -> Commit {
        Commit {
            changes: vec![Change::PutMeta("by".into(), format!("term {}", fence.term))],
            fence: Some(fence),
        }
    }

    async fn lead(store: &EtcdStore, p: &Presence) -> Leadership {
        loop {
            let held = store.leader().await.unwrap();
            match &held {
                Some(h) if h.name != p.name => {
                    store.wait_leader_change(h.revision).await.unwrap();
                    continue;
                }
                _ => {}
            }
            if let Some(l) = store.try_lead(p, held.as_ref()).await.unwrap() {
                return l;
            }
        }
    }

    /// One leader at a time; the next takes the next term once the first leaves, and the
    /// first's fence no longer commits.
    #[tokio::test]
    async fn one_leader_at_a_time_and_a_deposed_one_cannot_commit() {
        let etcd = EtcdCluster::start(EtcdSpec::local("lead", 1)).unwrap();
        let a = open(&etcd, "a").await;
        let b = std::sync::Arc::new(open(&etcd, "b").await);
        let pa = a.join("a", "{}", Duration::from_secs(5)).await.unwrap();
        let la = lead(&a, &pa).await;
        assert_eq!(la.term, 1);
        let held = a.leader().await.unwrap().unwrap();
        assert_eq!((held.name.as_str(), held.term), ("a", 1));
        a.commit(meta(la.fence())).await.unwrap();
        let pb = b.join("b", "{}", Duration::from_secs(5)).await.unwrap();
        assert_eq!(b.try_lead(&pb, None).await.unwrap(), None, "a holds it");
        let mut names: Vec<String> = b.hosts().await.unwrap().into_iter().map(|h| h.0).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let (b2, started) = (b.clone(), tokio::sync::oneshot::channel::<()>());
        let (ready_tx, ready_rx) = started;
        let contender = tokio::spawn(async move {
            let _ = ready_tx.send(());
            let l = lead(&b2, &pb).await;
            (l, pb)
        });
        ready_rx.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!contender.is_finished());
        let old = la.fence();
        a.leave(&pa).await.unwrap();
        let (lb, _pb) = contender.await.unwrap();
        assert_eq!(lb.term, 2);
        b.load().await.unwrap();
        b.commit(meta(lb.fence())).await.unwrap();
        match a.commit(meta(old)).await {
            Err(StoreError::Fenced {
                term: 1,
                current: 2,
            }) => {}
            other => panic!("a deposed leader committed: {other:?}"),
        }
    }

    /// A leader whose lease goes (revoked by an operator, or expired while it was cut off)
    /// learns it has lost, cannot commit even before a successor takes a term, and another
    /// host leads with a newer term.
    #[tokio::test]
    async fn a_leader_whose_lease_goes_knows_it_lost_and_another_takes_over() {
        let etcd = EtcdCluster::start(EtcdSpec::local("lease", 1)).unwrap();
        let a = open(&etcd, "a").await;
        let b = open(&etcd, "b").await;
        let pa = a.join("a", "{}", Duration::from_secs(3)).await.unwrap();
        let la = lead(&a, &pa).await;
        let mut leases = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap()
            .lease_client();
        leases.revoke(la.lease).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), pa.lost())
            .await
            .expect("the leader noticed it lost its lease");
        assert!(pa.is_lost());
        match a.commit(meta(la.fence())).await {
            Err(StoreError::LeaseLost { term }) => assert_eq!(term, la.term),
            other => panic!("a leader without its lease committed: {other:?}"),
        }
        let pb = b.join("b", "{}", Duration::from_secs(3)).await.unwrap();
        let lb = tokio::time::timeout(Duration::from_secs(10), lead(&b, &pb))
            .await
            .unwrap();
        assert!(lb.term > la.term);
    }

    /// A host restarted under the same name takes the leader key its dead predecessor still
    /// holds, without waiting for that lease to expire.
    #[tokio::test]
    async fn a_restarted_leader_takes_its_own_key_back_at_once() {
        let etcd = EtcdCluster::start(EtcdSpec::local("again", 1)).unwrap();
        let a = open(&etcd, "a").await;
        let first = a.join("a", "{}", Duration::from_secs(30)).await.unwrap();
        let l1 = lead(&a, &first).await;
        // Dies without revoking: the key stays under its lease for 30 s.
        drop(first);
        let a2 = open(&etcd, "a").await;
        let second = a2.join("a", "{}", Duration::from_secs(30)).await.unwrap();
        let l2 = tokio::time::timeout(Duration::from_secs(5), lead(&a2, &second))
            .await
            .expect("took its own key back at once");
        assert_eq!(l2.term, l1.term + 1);
        assert_ne!(l2.lease, l1.lease);
    }
}
