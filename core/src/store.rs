//! The host's persistent state: runner allocations, recovered placeholders and workloads, in an
//! embedded redb database under `state_dir`. Records are JSON so the file stays inspectable and
//! new fields can be added with defaults.
//!
//! The store is written through: callers change memory and the store in the same step, and a
//! write that touches several records is one transaction.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const RUNNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("runners");
const PLACEHOLDERS: TableDefinition<u32, &[u8]> = TableDefinition::new("placeholders");
const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("workloads");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
/// Events as encoded `weir.v1.Event` messages, by sequence number.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// A runner the host knows by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub name: String,
    /// `None` when no overlay network is enabled (isolated mode).
    pub id: Option<u32>,
    pub physical_ip: Ipv4Addr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
    /// Unix milliseconds of the last registration or heartbeat persisted.
    pub last_seen_ms: i64,
    /// Bumped whenever the allocation changes; sessions must present the current one.
    pub generation: u64,
}

/// A valid tunnel found in the kernel at host start with no runner in the store: its id stays
/// held until a runner from that physical IP claims it, or it is reclaimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceholderRecord {
    pub id: u32,
    pub physical_ip: Ipv4Addr,
    pub recovered_ms: i64,
}

/// A workload's interface on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub network: String,
    pub id: String,
    pub runner: String,
    /// Address with the runner subnet's prefix.
    pub ip: ipnet::Ipv4Net,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_ms: i64,
    /// A VM (a tap device on the runner) rather than a container namespace.
    #[serde(default)]
    pub vm: bool,
    /// The MAC of a VM's NIC (`52:54:00:…`), for its cloud-init.
    #[serde(default)]
    pub mac: String,
    /// The reservation whose address this workload holds.
    #[serde(default)]
    pub reservation: Option<String>,
    /// The firewall plugin's rules for this workload (none: the built-in open policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<crate::policy::types::FirewallDecision>,
    /// The rules come from a monitor-mode plugin: count would-be drops, never drop.
    #[serde(default)]
    pub firewall_monitor: bool,
    /// The workload's default route goes through this interface (its first network).
    #[serde(default = "yes")]
    pub default_route: bool,
    /// The namespace the interface was created in: a different namespace at the same path is
    /// never given this workload's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NamespaceId>,
}

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceId {
    pub dev: u64,
    pub ino: u64,
}

fn yes() -> bool {
    true
}

/// An address held for a workload that does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    pub id: String,
    pub network: String,
    pub runner: String,
    pub ip: Ipv4Addr,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// The workload that used the token; `None` while unused.
    pub used_by: Option<String>,
}

impl WorkloadRecord {
    pub fn key(&self) -> String {
        workload_key(&self.network, &self.id)
    }
}

pub fn workload_key(network: &str, id: &str) -> String {
    format!("{network}\u{0}{id}")
}

/// Everything in the store, loaded at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub runners: BTreeMap<String, RunnerRecord>,
    pub placeholders: BTreeMap<u32, PlaceholderRecord>,
    pub workloads: BTreeMap<String, WorkloadRecord>,
    pub reservations: BTreeMap<String, ReservationRecord>,
    /// Retained events (encoded `weir.v1.Event`), oldest first.
    pub events: Vec<(u64, Vec<u8>)>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("state store: {0}")]
    Db(String),
    #[error("state store: record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// One change; a batch of changes is committed atomically.
#[derive(Debug, Clone)]
pub enum Change {
    PutRunner(RunnerRecord),
    DeleteRunner(String),
    PutPlaceholder(PlaceholderRecord),
    DeletePlaceholder(u32),
    PutWorkload(WorkloadRecord),
    DeleteWorkload(String),
    PutReservation(ReservationRecord),
    DeleteReservation(String),
    /// Append an event; events at or below `trim_below` are dropped in the same transaction.
    PutEvent {
        seq: u64,
        bytes: Vec<u8>,
        trim_below: u64,
    },
    PutMeta(String, String),
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Open (or create) `state_dir/weir.redb`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|e| StoreError::Open {
            path: state_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let path = state_dir.join("weir.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Create the tables so that reads never race a missing table.
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(RUNNERS).map_err(db_err)?;
        txn.open_table(PLACEHOLDERS).map_err(db_err)?;
        txn.open_table(WORKLOADS).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(RESERVATIONS).map_err(db_err)?;
        txn.open_table(EVENTS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Read everything.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut snap = Snapshot::default();
        for row in txn
            .open_table(RUNNERS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            let rec: RunnerRecord = decode(k.value(), v.value())?;
            snap.runners.insert(k.value().to_string(), rec);
        }
        for row in txn
            .open_table(PLACEHOLDERS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            let rec: PlaceholderRecord = decode(&k.value().to_string(), v.value())?;
            snap.placeholders.insert(k.value(), rec);
        }
        for row in txn
            .open_table(WORKLOADS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            let rec: WorkloadRecord = decode(k.value(), v.value())?;
            snap.workloads.insert(k.value().to_string(), rec);
        }
        for row in txn
            .open_table(RESERVATIONS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            let rec: ReservationRecord = decode(k.value(), v.value())?;
            snap.reservations.insert(k.value().to_string(), rec);
        }
        for row in txn
            .open_table(EVENTS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            snap.events.push((k.value(), v.value().to_vec()));
        }
        for row in txn
            .open_table(META)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            snap.meta.insert(
                k.value().to_string(),
                String::from_utf8_lossy(v.value()).into_owned(),
            );
        }
        Ok(snap)
    }

    /// Apply `changes` in one durable transaction.
    pub fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut runners = txn.open_table(RUNNERS).map_err(db_err)?;
            let mut placeholders = txn.open_table(PLACEHOLDERS).map_err(db_err)?;
            let mut workloads = txn.open_table(WORKLOADS).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut reservations = txn.open_table(RESERVATIONS).map_err(db_err)?;
            let mut events = txn.open_table(EVENTS).map_err(db_err)?;
            for change in changes {
                match change {
                    Change::PutRunner(r) => {
                        runners
                            .insert(r.name.as_str(), encode(r).as_slice())
                            .map_err(db_err)?;
                    }
                    Change::DeleteRunner(name) => {
                        runners.remove(name.as_str()).map_err(db_err)?;
                    }
                    Change::PutPlaceholder(p) => {
                        placeholders
                            .insert(p.id, encode(p).as_slice())
                            .map_err(db_err)?;
                    }
                    Change::DeletePlaceholder(id) => {
                        placeholders.remove(*id).map_err(db_err)?;
                    }
                    Change::PutWorkload(w) => {
                        workloads
                            .insert(w.key().as_str(), encode(w).as_slice())
                            .map_err(db_err)?;
                    }
                    Change::DeleteWorkload(key) => {
                        workloads.remove(key.as_str()).map_err(db_err)?;
                    }
                    Change::PutReservation(r) => {
                        reservations
                            .insert(r.id.as_str(), encode(r).as_slice())
                            .map_err(db_err)?;
                    }
                    Change::DeleteReservation(id) => {
                        reservations.remove(id.as_str()).map_err(db_err)?;
                    }
                    Change::PutEvent {
                        seq,
                        bytes,
                        trim_below,
                    } => {
                        events.insert(*seq, bytes.as_slice()).map_err(db_err)?;
                        if *trim_below > 0 {
                            events
                                .retain_in(..=*trim_below, |_, _| false)
                                .map_err(db_err)?;
                        }
                    }
                    Change::PutMeta(k, v) => {
                        meta.insert(k.as_str(), v.as_bytes()).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.replace('\u{0}', "/"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(name: &str, id: u32) -> RunnerRecord {
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

    #[test]
    fn changes_survive_reopen_and_batches_are_atomic() {
        let dir = std::env::temp_dir().join(format!("weir-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir).unwrap();
            store
                .commit(&[
                    Change::PutRunner(runner("r1", 1)),
                    Change::PutRunner(runner("r2", 2)),
                    Change::PutPlaceholder(PlaceholderRecord {
                        id: 3,
                        physical_ip: Ipv4Addr::new(192, 0, 2, 99),
                        recovered_ms: 5,
                    }),
                    Change::PutWorkload(WorkloadRecord {
                        network: "default".into(),
                        id: "w1".into(),
                        runner: "r1".into(),
                        ip: "10.128.64.2/18".parse().unwrap(),
                        netns: "/run/netns/w1".into(),
                        ifname: "eth0".into(),
                        labels: BTreeMap::new(),
                        created_ms: 7,
                        vm: false,
                        mac: String::new(),
                        reservation: None,
                        firewall: None,
                        firewall_monitor: false,
                        default_route: true,
                        netns_id: None,
                    }),
                    Change::PutMeta("plan".into(), "10.128.0.0/12/6/14".into()),
                ])
                .unwrap();
            store
                .commit(&[
                    Change::DeleteRunner("r2".into()),
                    Change::DeletePlaceholder(3),
                ])
                .unwrap();
        }
        let snap = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(snap.runners.keys().collect::<Vec<_>>(), ["r1"]);
        assert_eq!(snap.runners["r1"], runner("r1", 1));
        assert!(snap.placeholders.is_empty());
        assert_eq!(
            snap.workloads[&workload_key("default", "w1")]
                .ip
                .to_string(),
            "10.128.64.2/18"
        );
        assert_eq!(snap.meta["plan"], "10.128.0.0/12/6/14");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
