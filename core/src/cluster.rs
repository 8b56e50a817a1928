//! Several hosts on one etcd: the host set, who leads, and whether the hosts agree on what
//! they serve.
//!
//! Every host joins the host set with its own lease and record ([`HostRecord`]), then
//! campaigns ([`Cluster::campaign`]): it waits while another host leads, and takes the leader
//! key (with the next writer term) once nobody holds it. A host whose configuration differs
//! from the one the cluster runs with (recorded by the last leader, [`ConfigDigest`]) refuses
//! to lead while any live host still runs that configuration, and says why. The daemon
//! (`cli::daemon`) serves as a standby until the campaign returns, then as the hub; a hub
//! whose lease goes stops at once (its commits are fenced by that lease and term anyway).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use weir_proto::v1 as pb;

use crate::config::Config;
use crate::hub::HostDirectory;
use crate::store::StoreError;
use crate::store::etcd_store::EtcdStore;
use crate::store::etcd_store::leader::{LeaderKey, Leadership, Presence};

/// What one host publishes about itself in the host set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Where its gRPC API is reached.
    pub url: String,
    /// The remote end of the runners' tunnels while it leads.
    pub underlay_ip: String,
    pub version: String,
    /// "leader" or "standby".
    pub role: String,
    /// The term it leads with (leader only).
    #[serde(default)]
    pub term: u64,
    pub config: ConfigDigest,
    /// Why it refuses to lead, if it does.
    #[serde(default)]
    pub refusal: String,
}

/// A digest of what a host serves, part by part, so a difference can be named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDigest {
    pub digest: String,
    pub parts: BTreeMap<String, String>,
}

impl ConfigDigest {
    /// The parts every host of a cluster must agree on: the networks and their address plans,
    /// the reservation rules, the policy plugins (their settings and their files' contents)
    /// and the tokens (their files' contents, hashed).
    pub fn of(c: &Config) -> Self {
        let mut plugins = ser(&c.policy);
        for p in &c.policy.plugins {
            if let Some(path) = &p.path {
                plugins.extend(std::fs::read(path).unwrap_or_default());
            }
        }
        let mut tokens = Vec::new();
        for f in c
            .auth
            .control_token_files
            .iter()
            .chain(c.auth.join_token_file.iter())
        {
            tokens.extend(std::fs::read(f).unwrap_or_default());
            tokens.push(0);
        }
        tokens.push(u8::from(c.auth.insecure));
        let mut networks = ser(&c.overlay);
        networks.extend(ser(&c.networks));
        let parts: BTreeMap<String, String> = [
            ("networks", networks),
            ("reservations", ser(&c.reservations)),
            ("plugins", plugins),
            ("tokens", tokens),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), hex(&Sha256::digest(&v))))
        .collect();
        let mut all = Sha256::new();
        for (k, v) in &parts {
            all.update(k.as_bytes());
            all.update(v.as_bytes());
        }
        Self {
            digest: hex(&all.finalize()),
            parts,
        }
    }

    /// The parts in which `other` differs from `self`, by name.
    pub fn differences(&self, other: &ConfigDigest) -> Vec<String> {
        let mut names: Vec<String> = self
            .parts
            .iter()
            .filter(|(k, v)| other.parts.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        names.extend(
            other
                .parts
                .keys()
                .filter(|k| !self.parts.contains_key(*k))
                .cloned(),
        );
        names
    }
}

/// A configuration section as bytes to hash (JSON keeps the fields' order).
fn ser<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Who leads, as a standby tells callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub name: String,
    pub url: String,
    pub term: u64,
}

/// This host's role, as its API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Standby {
        name: String,
        leader: Option<LeaderInfo>,
        /// Why this host will not lead, if it will not.
        refusal: Option<String>,
    },
    Leader {
        name: String,
        /// Where this host is reached.
        url: String,
        term: u64,
    },
}

/// How long a standby waits before trying again after etcd failed it (or refused it).
const RETRY: Duration = Duration::from_millis(500);

/// This host in the host set.
pub struct Cluster {
    store: Arc<EtcdStore>,
    me: std::sync::Mutex<HostRecord>,
    /// Replaced when a lone host joins again after losing its lease ([`Cluster::rejoin`]).
    presence: tokio::sync::RwLock<Presence>,
    role: watch::Sender<Role>,
    ttl: Duration,
    /// Whether another host was seen in the host set (kept for when etcd cannot be read).
    others_seen: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Join the host set on `store` with a lease of `ttl`.
    pub async fn join(
        store: Arc<EtcdStore>,
        mut me: HostRecord,
        ttl: Duration,
    ) -> Result<Self, StoreError> {
        me.role = "standby".into();
        let record = serde_json::to_string(&me).unwrap_or_default();
        let presence = store.join(&me.name, &record, ttl).await?;
        let (role, _) = watch::channel(Role::Standby {
            name: me.name.clone(),
            leader: None,
            refusal: None,
        });
        Ok(Self {
            store,
            me: std::sync::Mutex::new(me),
            presence: tokio::sync::RwLock::new(presence),
            role,
            ttl,
            others_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> String {
        self.record().name
    }

    fn record(&self) -> HostRecord {
        self.me.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This host's role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Resolves when this host's (current) lease is lost, owning what it waits on.
    pub async fn lost_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.presence.read().await.lost_receiver();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Wait until this host may lead and nobody else does, then take the hub role. Returns
    /// the leadership and the name of the leader before it (if any held the key).
    pub async fn campaign(&self) -> Result<(Leadership, Option<String>), StoreError> {
        let me = self.record();
        let mut previous: Option<String> = None;
        let mut refusal_logged = String::new();
        let presence = self.presence.read().await;
        loop {
            if presence.is_lost() {
                return Err(StoreError::Unavailable(
                    "this host's lease on etcd was lost while it waited to lead".into(),
                ));
            }
            let step = async {
                let held = self.store.leader().await?;
                if let Some(h) = &held {
                    previous = Some(h.name.clone());
                }
                let refusal = self.refusal(&me).await?;
                self.publish_standby(held.as_ref(), refusal.clone()).await;
                if let Some(why) = refusal {
                    if why != refusal_logged {
                        tracing::error!(host = %me.name, "refusing to lead: {why}");
                        refusal_logged = why;
                    }
                    tokio::time::sleep(RETRY).await;
                    return Ok(None);
                }
                match &held {
                    // A previous incarnation of this host (dead: this process holds the name).
                    Some(h) if h.name == me.name && h.lease != presence.lease => {
                        self.store.try_lead(&presence, Some(h)).await
                    }
                    Some(h) => {
                        self.store.wait_leader_change(h.revision).await?;
                        Ok(None)
                    }
                    None => self.store.try_lead(&presence, None).await,
                }
            };
            match step.await {
                Ok(Some(l)) => {
                    self.became_leader(l).await;
                    return Ok((l, previous));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "campaign: etcd failed; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Why this host may not lead now, if it may not: its configuration differs from the
    /// one the cluster runs with while a live host still runs that one.
    async fn refusal(&self, me: &HostRecord) -> Result<Option<String>, StoreError> {
        let Some(recorded) = self.store.cluster_config().await? else {
            return Ok(None);
        };
        let Ok(cluster) = serde_json::from_str::<ConfigDigest>(&recorded) else {
            return Ok(None);
        };
        if cluster.digest == me.config.digest {
            return Ok(None);
        }
        let keepers: Vec<String> = self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|(n, _)| n != &me.name)
            .filter_map(|(n, r)| {
                let r: HostRecord = serde_json::from_str(&r).ok()?;
                (r.config.digest == cluster.digest).then_some(n)
            })
            .collect();
        if keepers.is_empty() {
            // Every live host moved on: the configuration change is complete.
            return Ok(None);
        }
        Ok(Some(format!(
            "its configuration differs from the cluster's in: {} (the cluster's is what {} serve{}); give every host the same plans, plugins, reservation rules and tokens",
            cluster.differences(&me.config).join(", "),
            keepers.join(", "),
            if keepers.len() == 1 { "s" } else { "" }
        )))
    }

    async fn publish_standby(&self, held: Option<&LeaderKey>, refusal: Option<String>) {
        let leader = match held {
            Some(h) => {
                let url = self
                    .store
                    .hosts()
                    .await
                    .ok()
                    .and_then(|hs| hs.into_iter().find(|(n, _)| n == &h.name))
                    .and_then(|(_, r)| serde_json::from_str::<HostRecord>(&r).ok())
                    .map(|r| r.url)
                    .unwrap_or_default();
                Some(LeaderInfo {
                    name: h.name.clone(),
                    url,
                    term: h.term,
                })
            }
            None => None,
        };
        {
            let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            me.refusal = refusal.clone().unwrap_or_default();
        }
        let role = Role::Standby {
            name: self.name(),
            leader,
            refusal,
        };
        let changed = self.role.send_if_modified(|r| {
            if *r == role {
                return false;
            }
            *r = role;
            true
        });
        // The record says the same (role, refusal): written only when it changes, not on
        // every pass of the campaign.
        if changed {
            let _ = self.store_record().await;
        }
    }

    async fn became_leader(&self, l: Leadership) {
        {
            let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            me.role = "leader".into();
            me.term = l.term;
            me.refusal.clear();
        }
        let me = self.record();
        if let Err(e) = self
            .store
            .put_cluster_config(&serde_json::to_string(&me.config).unwrap_or_default())
            .await
        {
            tracing::warn!(error = %e, "recording the cluster's configuration failed");
        }
        let _ = self.store_record().await;
        let _ = self.role.send(Role::Leader {
            name: me.name,
            url: me.url,
            term: l.term,
        });
        crate::telemetry::metrics::metrics()
            .leadership_changes
            .add(1, &[opentelemetry::KeyValue::new("change", "elected")]);
    }

    async fn store_record(&self) -> Result<(), StoreError> {
        let record = serde_json::to_string(&self.record()).unwrap_or_default();
        self.store
            .update_record(&*self.presence.read().await, &record)
            .await
    }

    /// Leave the host set (and hand over the hub role at once, if held).
    pub async fn leave(&self) -> Result<(), StoreError> {
        self.store.leave(&*self.presence.read().await).await
    }

    /// Whether another host has been seen in the host set (the last time it was read).
    pub fn others_seen(&self) -> bool {
        self.others_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Read the host set now (while etcd answers), to know whether others are there; the
    /// revision it was read at, if it was.
    pub async fn refresh(&self) -> Option<i64> {
        let (hosts, revision) = self.store.hosts_at().await.ok()?;
        let me = self.name();
        self.others_seen.store(
            hosts.iter().any(|(n, _)| n != &me),
            std::sync::atomic::Ordering::Relaxed,
        );
        Some(revision)
    }

    /// Keep [`Cluster::others_seen`] current: read the host set again whenever it changes
    /// (an etcd watch, so a host that joins is known within milliseconds — a leader cut off
    /// from etcd right after must know it is not alone), and at least every second.
    pub async fn follow_hosts(self: Arc<Self>) {
        loop {
            match self.refresh().await {
                Some(revision) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        self.store.wait_hosts_change(revision),
                    )
                    .await;
                }
                None => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// A lone leader that lost its lease (etcd was down longer than the margin) joins again
    /// with a new lease and takes the leader key back with the next term, once etcd answers.
    /// `Ok(None)`: another host leads now (this one must step down).
    pub async fn rejoin(
        &self,
        fence: &std::sync::RwLock<crate::store::Fence>,
    ) -> Result<Option<Leadership>, StoreError> {
        let mut me = self.record();
        me.role = "standby".into();
        let record = serde_json::to_string(&me).unwrap_or_default();
        let fresh = self.store.join(&me.name, &record, self.ttl).await?;
        let held = self.store.leader().await?;
        let taken = match &held {
            Some(h) if h.name != me.name => None,
            _ => self.store.try_lead(&fresh, held.as_ref()).await?,
        };
        if let Some(l) = taken {
            // Before anything else commits: the old fence can no longer.
            *fence.write().unwrap_or_else(|p| p.into_inner()) = l.fence();
        }
        let old = std::mem::replace(&mut *self.presence.write().await, fresh);
        drop(old);
        if let Some(l) = taken {
            self.became_leader(l).await;
        }
        Ok(taken)
    }

    /// The host set, for `GetStatus`.
    pub fn directory(&self) -> Arc<dyn HostDirectory> {
        Arc::new(Directory(self.store.clone()))
    }
}

struct Directory(Arc<EtcdStore>);

#[async_trait::async_trait]
impl HostDirectory for Directory {
    async fn hosts(&self) -> Vec<pb::HostStatus> {
        let mut hosts: Vec<pb::HostStatus> = self
            .0
            .hosts()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, r)| serde_json::from_str::<HostRecord>(&r).ok())
            .map(|r| pb::HostStatus {
                name: r.name,
                role: r.role,
                url: r.url,
                underlay_ip: r.underlay_ip,
                version: r.version,
                term: r.term,
                refusal: r.refusal,
            })
            .collect();
        hosts.sort_by(|a, b| (a.role != "leader", &a.name).cmp(&(b.role != "leader", &b.name)));
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_name_the_part_that_differs() {
        let a = Config::default();
        let mut b = Config::default();
        b.reservations.max_ttl = crate::config::values::Duration::from_secs(1);
        let (da, db) = (ConfigDigest::of(&a), ConfigDigest::of(&b));
        assert_eq!(
            da,
            ConfigDigest::of(&a),
            "the same configuration, the same digest"
        );
        assert_ne!(da.digest, db.digest);
        assert_eq!(da.differences(&db), ["reservations"]);
    }
}
