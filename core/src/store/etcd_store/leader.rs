//! Leadership of the hub role through etcd (the foundation of failover): one leader at a
//! time, elected by the key `P leader` held under a lease. Each new leader takes the next
//! writer term in the same transaction, and its commits carry that term as their [`Fence`],
//! so a deposed leader can never commit once its successor has (the store compares the term
//! on every fenced commit). A leader whose lease cannot be renewed for half its TTL considers
//! itself deposed before etcd expires the lease anywhere.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;

use super::{EtcdStore, describe_err, pad};
use crate::store::{Fence, Store, StoreError};

/// This host leads: its term, and a signal that turns true when it no longer may.
pub struct Leadership {
    pub name: String,
    pub term: u64,
    pub lease: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// The fence every commit of this leader carries.
    pub fn fence(&self) -> Fence {
        Fence { term: self.term }
    }

    /// Whether the lease could not be renewed in time (or was revoked): stop acting as leader.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the leadership is lost.
    pub async fn lost(&mut self) {
        while !*self.lost.borrow_and_update() {
            if self.lost.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl EtcdStore {
    fn leader_key(&self) -> Vec<u8> {
        self.keys.k("leader")
    }

    /// Who leads now: its name and term.
    pub async fn leader(&self) -> Result<Option<(String, u64)>, StoreError> {
        let r = self
            .get(self.leader_key(), None)
            .await
            .map_err(|e| self.unavailable("reading the leader", &e))?;
        Ok(r.kvs().first().and_then(|kv| parse_leader(kv.value())))
    }

    /// Become the leader: wait until nobody holds the leader key, then take it under a lease
    /// of `ttl` together with the next writer term. Returns once this host leads.
    pub async fn campaign(&self, name: &str, ttl: Duration) -> Result<Leadership, StoreError> {
        let ttl_s = ttl.as_secs().max(1) as i64;
        let mut leases = self.client.lease_client();
        let lease = leases
            .grant(ttl_s, None)
            .await
            .map_err(|e| self.unavailable("granting the leader lease", &e))?
            .id();
        let (lk, tk) = (self.leader_key(), self.keys.term());
        loop {
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
            let txn = Txn::new()
                .when([
                    Compare::version(lk.clone(), CompareOp::Equal, 0),
                    Compare::mod_revision(tk.clone(), CompareOp::Equal, term_rev),
                ])
                .and_then([
                    TxnOp::put(
                        lk.clone(),
                        format!("{name} {term}"),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(tk.clone(), pad(term), None),
                ])
                .or_else([TxnOp::get(lk.clone(), None)]);
            let resp = self
                .txn(txn)
                .await
                .map_err(|e| self.unavailable("taking the leader key", &e))?;
            if resp.succeeded() {
                tracing::info!(store = %self.describe(), name, term, "leading");
                return self.keep(name, term, lease, ttl).await;
            }
            // Someone leads: wait for its key to go (resign or lease expiry), then try again.
            let held = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            });
            if let Some(rev) = held {
                self.wait_deleted(&lk, rev + 1).await?;
            }
        }
    }

    /// Wait until `key` is deleted, watching from revision `from`.
    async fn wait_deleted(&self, key: &[u8], from: i64) -> Result<(), StoreError> {
        let mut w = self.client.watch_client();
        let mut stream = w
            .watch(
                key.to_vec(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
            .map_err(|e| self.unavailable("watching the leader", &e))?;
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if m.events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.unavailable("watching the leader", &e)),
            }
        }
    }

    /// Renew the lease every third of its TTL; a leadership that goes half its TTL without a
    /// renewal, or whose lease is gone, is lost.
    async fn keep(
        &self,
        name: &str,
        term: u64,
        lease: i64,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        let mut leases = self.client.lease_client();
        let (mut keeper, mut answers) = leases
            .keep_alive(lease)
            .await
            .map_err(|e| self.unavailable("renewing the leader lease", &e))?;
        let (tx, rx) = watch::channel(false);
        let every = ttl / 3;
        let margin = ttl / 2;
        let store = self.describe();
        let task = tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                if keeper.keep_alive().await.is_err() {
                    // The request could not be sent: try again until the margin runs out.
                } else {
                    match tokio::time::timeout(every, answers.message()).await {
                        Ok(Ok(Some(a))) if a.ttl() > 0 => last = tokio::time::Instant::now(),
                        Ok(Ok(Some(_))) => {
                            tracing::warn!(%store, term, "the leader lease expired or was revoked");
                            let _ = tx.send(true);
                            return;
                        }
                        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {}
                    }
                }
                if last.elapsed() >= margin {
                    tracing::warn!(%store, term, after = ?last.elapsed(), "the leader lease could not be renewed; stepping down");
                    let _ = tx.send(true);
                    return;
                }
                tokio::time::sleep(every.saturating_sub(last.elapsed().min(every))).await;
            }
        });
        Ok(Leadership {
            name: name.to_string(),
            term,
            lease,
            lost: rx,
            keeper: task,
        })
    }

    /// Step down: the lease is revoked, so the leader key goes at once.
    pub async fn resign(&self, leadership: Leadership) -> Result<(), StoreError> {
        let lease = leadership.lease;
        drop(leadership);
        self.client
            .lease_client()
            .revoke(lease)
            .await
            .map(|_| ())
            .map_err(|e| {
                StoreError::Unavailable(format!("revoking the leader lease: {}", describe_err(&e)))
            })
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

    fn meta(term: u64) -> Commit {
        Commit {
            changes: vec![Change::PutMeta("by".into(), format!("term {term}"))],
            fence: Some(Fence { term }),
        }
    }

    /// One leader at a time; the next takes the next term once the first resigns, and the
    /// first's fence no longer commits.
    #[tokio::test]
    async fn one_leader_at_a_time_and_a_deposed_one_cannot_commit() {
        let etcd = EtcdCluster::start(EtcdSpec::local("lead", 1)).unwrap();
        let a = open(&etcd, "a").await;
        let b = std::sync::Arc::new(open(&etcd, "b").await);
        let la = a.campaign("a", Duration::from_secs(5)).await.unwrap();
        assert_eq!(la.term, 1);
        assert_eq!(a.leader().await.unwrap(), Some(("a".to_string(), 1)));
        a.commit(meta(la.term)).await.unwrap();
        let (b2, started) = (b.clone(), tokio::sync::oneshot::channel::<()>());
        let (ready_tx, ready_rx) = started;
        let contender = tokio::spawn(async move {
            let _ = ready_tx.send(());
            b2.campaign("b", Duration::from_secs(5)).await.unwrap()
        });
        ready_rx.await.unwrap();
        // While a leads, b waits (it is still waiting after b had every chance to run).
        tokio::task::yield_now().await;
        assert_eq!(a.leader().await.unwrap(), Some(("a".to_string(), 1)));
        assert!(!contender.is_finished());
        let old = la.term;
        a.resign(la).await.unwrap();
        let lb = contender.await.unwrap();
        assert_eq!(lb.term, 2);
        assert_eq!(b.leader().await.unwrap(), Some(("b".to_string(), 2)));
        b.load().await.unwrap();
        b.commit(meta(lb.term)).await.unwrap();
        match a.commit(meta(old)).await {
            Err(StoreError::Fenced {
                term: 1,
                current: 2,
            }) => {}
            other => panic!("a deposed leader committed: {other:?}"),
        }
    }

    /// A leader whose lease goes (revoked by an operator, or expired while it was cut off)
    /// learns it has lost, and another host leads with a newer term.
    #[tokio::test]
    async fn a_leader_whose_lease_goes_knows_it_lost_and_another_takes_over() {
        let etcd = EtcdCluster::start(EtcdSpec::local("lease", 1)).unwrap();
        let a = open(&etcd, "a").await;
        let b = open(&etcd, "b").await;
        let mut la = a.campaign("a", Duration::from_secs(3)).await.unwrap();
        let mut leases = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap()
            .lease_client();
        leases.revoke(la.lease).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), la.lost())
            .await
            .expect("the leader noticed it lost its lease");
        assert!(la.is_lost());
        let lb = tokio::time::timeout(
            Duration::from_secs(10),
            b.campaign("b", Duration::from_secs(3)),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(lb.term > la.term);
    }
}
