//! The host's persistent state behind one interface: runner allocations, recovered
//! placeholders, workloads, reservations and the event log.
//!
//! The hub loads a [`Snapshot`] at start and from then on writes through: every operation's
//! changes and events go in one [`Commit`], applied atomically or not at all. Back ends:
//! [`RedbStore`] (embedded, one file under `state_dir`; the default) and [`EtcdStore`] (etcd v3,
//! one key per record, every claimed id and address guarded in the commit's transaction). The interface is shaped
//! for a distributed back end too: a commit may carry a [`Fence`] (the writer's term, refused
//! once a newer writer took over) and every applied commit is published to followers
//! ([`Store::follow`]), which is what a standby host tails.
//!
//! - `etcd_store`: the distributed back end: key layout, transaction rules, lost answers
//! - `copy`: a whole state from one back end into another (`weir store migrate`)
//! - `records`: the records (the store's own types, JSON on disk)
//! - `redb_store`: the embedded back end, its schema version and migrations
//! - `contract` (tests): the behaviour every back end must show, written once

pub mod copy;
pub mod etcd_store;
mod records;
mod redb_store;

#[cfg(test)]
pub(crate) mod contract;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

pub use etcd_store::{EtcdOptions, EtcdStore, Leadership};
pub use records::*;
pub use redb_store::RedbStore;

/// The version of the records' layout this build writes. A state written by an older build
/// is migrated on first start; one written by a newer build is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Meta keys of the store itself, refused in [`Change::PutMeta`] by every back end.
pub const RESERVED_META: [&str; 3] = ["schema_version", "revision", "writer_term"];

/// Everything in the store, loaded at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub runners: BTreeMap<String, RunnerRecord>,
    pub placeholders: BTreeMap<u32, PlaceholderRecord>,
    pub workloads: BTreeMap<String, WorkloadRecord>,
    pub reservations: BTreeMap<String, ReservationRecord>,
    /// Retained events (encoded `weir.v1.Event`), oldest first.
    pub events: Vec<StoredEvent>,
    pub meta: BTreeMap<String, String>,
    /// The revision of the last commit applied (0: none).
    pub revision: u64,
}

/// One retained event: its sequence number and its encoded `weir.v1.Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// One change; a batch of changes is committed atomically.
#[derive(Debug, Clone, PartialEq)]
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

/// The right to write: the term of the writer's leadership. A back end refuses a commit
/// whose term is older than the newest it has seen ([`StoreError::Fenced`]), so a deposed
/// writer can never commit after its successor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence {
    pub term: u64,
    /// The lease the writer's leadership is held under (etcd): a commit applies only while
    /// the leader key is still held under it, so nothing commits once the lease expired,
    /// even before a successor took the next term. `None`: the term alone.
    pub lease: Option<i64>,
}

impl Fence {
    /// A fence of the term alone.
    pub fn term(term: u64) -> Self {
        Self { term, lease: None }
    }
}

/// A batch of changes, applied atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub changes: Vec<Change>,
    /// `None`: a single writer (the embedded back end without failover).
    pub fence: Option<Fence>,
}

impl Commit {
    pub fn new(changes: Vec<Change>) -> Self {
        Self {
            changes,
            fence: None,
        }
    }
}

/// An applied commit, as followers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub revision: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("state store: {0}")]
    Db(String),
    #[error("state store: record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "state store {store}: written by a newer Weir (schema version {found}; this build knows up to {SCHEMA_VERSION}); run that version, or restore a backup made for this one"
    )]
    TooNew { store: String, found: u32 },
    /// The store cannot be reached, or did not answer in time; the change was not applied.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A change's answer was lost and its outcome could not be learnt yet: the store refuses
    /// writes until it has settled it (a change found applied is reverted).
    #[error("state store: outcome unknown: {0}")]
    Unknown(String),
    /// Another writer changed a key this commit guards (or holds a claim it wants).
    #[error("state store: conflict on {key}: {detail}")]
    Conflict { key: String, detail: String },
    #[error(
        "state store: a commit of {changes} changes needs {compares} compares and {ops} operations; etcd allows {limit} of each per transaction (its --max-txn-ops)"
    )]
    TooLarge {
        changes: usize,
        compares: usize,
        ops: usize,
        limit: usize,
    },
    #[error(
        "state store: commit refused, its writer's term {term} is older than term {current}: another host took over"
    )]
    Fenced { term: u64, current: u64 },
    #[error(
        "state store: commit refused, the leadership of term {term} is no longer held (its lease expired or was revoked)"
    )]
    LeaseLost { term: u64 },
}

/// What the hub asks of its state store. Implementations must apply a commit entirely or
/// not at all, durably before they return, and publish it to followers in commit order.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Where the state lives, for logs ("redb /var/lib/weir/weir.redb").
    fn describe(&self) -> String;
    /// Read everything.
    async fn load(&self) -> Result<Snapshot, StoreError>;
    /// Apply a batch atomically; returns the new revision (an empty batch changes nothing and
    /// returns the current one).
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError>;
    /// Up to `limit` retained events with a sequence number greater than `after`, in order.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;
    /// Every commit applied from now on, in order.
    fn follow(&self) -> broadcast::Receiver<Arc<Committed>>;
    /// The most changes one commit may carry (`None`: no limit). A writer cuts larger
    /// operations into several commits where that keeps each one whole.
    fn max_changes(&self) -> Option<usize> {
        None
    }
    /// Whether a commit now would be tried at all: a back end that knows its server is
    /// unreachable refuses at once ([`StoreError::Unavailable`]), so a writer can refuse an
    /// operation before it changes anything elsewhere (a runner's kernel). Cheap; no I/O.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
