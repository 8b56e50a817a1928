//! The embedded back end: one redb database, `state_dir/weir.redb`, a table per record kind,
//! records as JSON. Its `meta` table carries the schema version, the revision (bumped by each
//! commit) and the newest writer term seen.
//!
//! Schema history: 0 — no version recorded (Weir before the store interface); 1 — the same
//! record shapes, versioned. Opening a version-0 state checks that every record reads as
//! version 1 and stamps it, in one transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::broadcast;

use super::{
    Change, Commit, Committed, PlaceholderRecord, ReservationRecord, RunnerRecord, SCHEMA_VERSION,
    Snapshot, Store, StoreError, StoredEvent, WorkloadRecord,
};

const RUNNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("runners");
const PLACEHOLDERS: TableDefinition<u32, &[u8]> = TableDefinition::new("placeholders");
const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("workloads");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
/// Events as encoded `weir.v1.Event` messages, by sequence number.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Meta keys of the store itself (the hub keeps its own keys beside them).
const SCHEMA_KEY: &str = super::RESERVED_META[0];
const REVISION_KEY: &str = super::RESERVED_META[1];
const TERM_KEY: &str = super::RESERVED_META[2];
/// Followers that fall this many commits behind miss some (they reload).
const FOLLOW_QUEUE: usize = 1024;

/// redb's page cache (see `RedbStore::open`).
const CACHE_BYTES: usize = 8 << 20;

pub struct RedbStore {
    db: Database,
    path: PathBuf,
    followers: broadcast::Sender<Arc<Committed>>,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl RedbStore {
    /// Open (or create) `state_dir/weir.redb`, migrating a state written by an older Weir.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|e| StoreError::Open {
            path: state_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let path = state_dir.join("weir.redb");
        // The hub keeps its whole state in memory and reads the store only at start: redb's
        // page cache (1 GiB by default, filled by every page written) would only hold pages
        // already in the hub's memory and grow its resident set with the store.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let (followers, _) = broadcast::channel(FOLLOW_QUEUE);
        let store = Self {
            db,
            path,
            followers,
        };
        store.prepare()?;
        Ok(store)
    }

    /// Create the tables (so reads never race a missing table) and bring the schema to
    /// [`SCHEMA_VERSION`].
    fn prepare(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for t in [RUNNERS, WORKLOADS, RESERVATIONS, META] {
            txn.open_table(t).map_err(db_err)?;
        }
        txn.open_table(PLACEHOLDERS).map_err(db_err)?;
        txn.open_table(EVENTS).map_err(db_err)?;
        let found = {
            let meta = txn.open_table(META).map_err(db_err)?;
            let v = meta.get(SCHEMA_KEY).map_err(db_err)?;
            v.map(|v| String::from_utf8_lossy(v.value()).into_owned())
        };
        match found {
            Some(v) => {
                let found: u32 = v.parse().map_err(|_| StoreError::Corrupt {
                    key: SCHEMA_KEY.into(),
                    reason: format!("{v:?} is not a version number"),
                })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew {
                        store: self.describe(),
                        found,
                    });
                }
            }
            None => {
                // Version 0 (or a new file): every record must read as version 1.
                let records = count_and_check(&txn)?;
                if records > 0 {
                    tracing::info!(path = %self.path.display(), records, from = 0, to = SCHEMA_VERSION, "migrating the state store");
                }
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    fn meta_u64(
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<u64, StoreError> {
        match meta.get(key).map_err(db_err)? {
            None => Ok(0),
            Some(v) => {
                let s = String::from_utf8_lossy(v.value()).into_owned();
                s.parse().map_err(|_| StoreError::Corrupt {
                    key: key.into(),
                    reason: format!("{s:?} is not a number"),
                })
            }
        }
    }

    fn load_now(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut snap = Snapshot {
            runners: decode_all(&txn.open_table(RUNNERS).map_err(db_err)?)?,
            placeholders: decode_placeholders(&txn.open_table(PLACEHOLDERS).map_err(db_err)?)?,
            workloads: decode_all(&txn.open_table(WORKLOADS).map_err(db_err)?)?,
            reservations: decode_all(&txn.open_table(RESERVATIONS).map_err(db_err)?)?,
            ..Snapshot::default()
        };
        for row in txn
            .open_table(EVENTS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            snap.events.push(StoredEvent {
                seq: k.value(),
                bytes: v.value().to_vec(),
            });
        }
        let meta = txn.open_table(META).map_err(db_err)?;
        snap.revision = Self::meta_u64(&meta, REVISION_KEY)?;
        for row in meta.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if [SCHEMA_KEY, REVISION_KEY, TERM_KEY].contains(&k.value()) {
                continue;
            }
            snap.meta.insert(
                k.value().to_string(),
                String::from_utf8_lossy(v.value()).into_owned(),
            );
        }
        Ok(snap)
    }

    fn commit_now(&self, commit: Commit) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let revision = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let current = Self::meta_u64(&meta, REVISION_KEY)?;
            if commit.changes.is_empty() {
                return Ok(current);
            }
            if let Some(f) = commit.fence {
                let newest = Self::meta_u64(&meta, TERM_KEY)?;
                if f.term < newest {
                    return Err(StoreError::Fenced {
                        term: f.term,
                        current: newest,
                    });
                }
                if f.term > newest {
                    meta.insert(TERM_KEY, f.term.to_string().as_bytes())
                        .map_err(db_err)?;
                }
            }
            let revision = current + 1;
            meta.insert(REVISION_KEY, revision.to_string().as_bytes())
                .map_err(db_err)?;
            revision
        };
        apply(&txn, &commit.changes)?;
        txn.commit().map_err(db_err)?;
        // Nobody following is fine.
        let _ = self.followers.send(Arc::new(Committed {
            revision,
            changes: commit.changes,
        }));
        Ok(revision)
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_now()
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        self.commit_now(commit)
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table
            .range(after.saturating_add(1)..)
            .map_err(db_err)?
            .take(limit)
        {
            let (k, v) = row.map_err(db_err)?;
            out.push(StoredEvent {
                seq: k.value(),
                bytes: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    fn follow(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.followers.subscribe()
    }
}

/// Decode every record of a version-0 state as version 1 (a record that does not read stops
/// the migration with its key); returns how many there are.
fn count_and_check(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let runners: BTreeMap<String, RunnerRecord> =
        decode_all(&txn.open_table(RUNNERS).map_err(db_err)?)?;
    let placeholders = decode_placeholders(&txn.open_table(PLACEHOLDERS).map_err(db_err)?)?;
    let workloads: BTreeMap<String, WorkloadRecord> =
        decode_all(&txn.open_table(WORKLOADS).map_err(db_err)?)?;
    let reservations: BTreeMap<String, ReservationRecord> =
        decode_all(&txn.open_table(RESERVATIONS).map_err(db_err)?)?;
    Ok(runners.len() + placeholders.len() + workloads.len() + reservations.len())
}

/// Every record of a table keyed by name, decoded.
fn decode_all<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<BTreeMap<String, T>, StoreError> {
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        out.insert(k.value().to_string(), decode(k.value(), v.value())?);
    }
    Ok(out)
}

/// The placeholders table (keyed by runner id), decoded.
fn decode_placeholders(
    table: &impl ReadableTable<u32, &'static [u8]>,
) -> Result<BTreeMap<u32, PlaceholderRecord>, StoreError> {
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        out.insert(k.value(), decode(&k.value().to_string(), v.value())?);
    }
    Ok(out)
}

fn apply(txn: &WriteTransaction, changes: &[Change]) -> Result<(), StoreError> {
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
                if [SCHEMA_KEY, REVISION_KEY, TERM_KEY].contains(&k.as_str()) {
                    return Err(StoreError::Db(format!(
                        "meta key {k:?} belongs to the store itself"
                    )));
                }
                meta.insert(k.as_str(), v.as_bytes()).map_err(db_err)?;
            }
        }
    }
    Ok(())
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
    use crate::store::contract::{self, Harness};

    /// A directory removed when the test ends, however it ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "weir-store-{what}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            Self(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Redb(TempDir);

    impl Harness for Redb {
        type S = RedbStore;
        async fn open(&self, n: u32) -> RedbStore {
            RedbStore::open(&self.0.0.join(n.to_string())).unwrap()
        }
    }

    #[tokio::test]
    async fn redb_shows_every_store_behaviour() {
        contract::every_behaviour(&Redb(TempDir::new("contract"))).await;
    }

    /// `core/tests/fixtures/state-v0/weir.redb` was written by Weir before the store had a
    /// schema version (a lab of two runners: four workloads attached, one detached, one
    /// reservation, their events).
    #[tokio::test]
    async fn a_state_written_before_schema_versions_is_migrated_and_keeps_every_record() {
        let dir = TempDir::new("v0");
        std::fs::create_dir_all(&dir.0).unwrap();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0/weir.redb");
        std::fs::copy(&fixture, dir.0.join("weir.redb")).unwrap();
        {
            // As written: no version.
            let db = Database::open(dir.0.join("weir.redb")).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(
                txn.open_table(META)
                    .unwrap()
                    .get(SCHEMA_KEY)
                    .unwrap()
                    .is_none()
            );
        }
        let store = RedbStore::open(&dir.0).unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.runners.keys().collect::<Vec<_>>(), ["r1", "r2"]);
        assert_eq!(
            snap.workloads
                .values()
                .map(|w| (w.id.as_str(), w.ip.to_string()))
                .collect::<Vec<_>>(),
            [
                ("r1-w1", "10.128.64.2/18".to_string()),
                ("r2-w1", "10.128.128.2/18".to_string()),
                ("r2-w2", "10.128.128.3/18".to_string())
            ]
        );
        assert!(snap.workloads.values().all(|w| w.netns_id.is_some()));
        assert_eq!(snap.reservations.len(), 1);
        assert!(!snap.events.is_empty());
        assert!(snap.meta.contains_key("next_event"), "{:?}", snap.meta);
        assert!(!snap.meta.contains_key(SCHEMA_KEY));
        drop(store);
        let db = Database::open(dir.0.join("weir.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let v = txn
            .open_table(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .map(|v| v.value().to_vec());
        assert_eq!(v.as_deref(), Some(SCHEMA_VERSION.to_string().as_bytes()));
    }

    #[test]
    fn a_state_from_a_newer_weir_is_refused_and_left_alone() {
        let dir = TempDir::new("new");
        drop(RedbStore::open(&dir.0).unwrap());
        {
            let db = Database::open(dir.0.join("weir.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, b"7".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = RedbStore::open(&dir.0).err().unwrap().to_string();
        assert!(
            e.contains("schema version 7") && e.contains("knows up to 1"),
            "{e}"
        );
    }

    #[test]
    fn a_corrupt_version_0_record_stops_the_migration_naming_it() {
        let dir = TempDir::new("corrupt");
        std::fs::create_dir_all(&dir.0).unwrap();
        {
            let db = Database::create(dir.0.join("weir.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(WORKLOADS)
                .unwrap()
                .insert("default\u{0}w1", b"{\"id\": 3}".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = RedbStore::open(&dir.0).err().unwrap().to_string();
        assert!(e.contains("\"default/w1\" is corrupt"), "{e}");
        // Nothing was written (not even the tables): the next start tries again.
        let db = Database::open(dir.0.join("weir.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        match txn.open_table(META) {
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Ok(meta) => assert!(meta.get(SCHEMA_KEY).unwrap().is_none()),
            Err(e) => panic!("{e}"),
        }
    }
}
