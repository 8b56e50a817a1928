//! The decision log: one JSON object per line for each plugin decision — hook, plugin,
//! version hash, mode, the input's SHA-256 (or the full input), the outcome, the latency and
//! the fault if any. `weir decisions` reads it.
//!
//! A decision the hub stores (a runner's id, a workload's address and rules) is taken inside an
//! [`Operation`]: its lines carry the operation's id and the writer term, and one more line
//! says afterwards whether the operation's commit reached the store (`committed`), never did
//! (`not-committed`, with why: refused, failed, or the host lost its lease first) or cannot be
//! known here (`unknown`: a commit was in flight when the host stopped leading). So a deposed
//! leader's log tells which of its decisions took effect.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Fault;
use crate::config::AuditLevel;
use crate::decision::{Decision, Request};

/// One line of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub ts_ms: i64,
    pub hook: String,
    pub call: String,
    pub plugin: String,
    pub version: String,
    /// `enforce` or `monitor`.
    pub mode: String,
    pub input_digest: String,
    /// The address pool the decision saw (`g<generation>-<digest>`): the input carries only
    /// its summary, so this says which state of the pool the plugin was asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub latency_us: u64,
    /// Whether this plugin's decision was applied.
    pub applied: bool,
    /// Monitor mode: whether the decision differs from the one applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs: Option<bool>,
    /// The operation the decision was taken in (absent: a decision the hub does not store,
    /// such as a route, or a monitor's that was never applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The writer term of the host that decided (absent with one host: no election).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// What became of the operation (filled in by [`read`] from its settlement line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Settled>,
}

/// Whether an operation's decisions took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Commit {
    /// Its commit reached the store.
    Committed,
    /// Nothing of it reached the store.
    NotCommitted,
    /// A commit was in flight when the host stopped leading: the store knows.
    Unknown,
}

/// The line that settles an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub ts_ms: i64,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    pub commit: Commit,
    /// Why the operation failed (or, `not-committed`/`unknown`, why nothing was committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One operation of the hub whose decisions it stores: see the module's documentation.
pub struct Operation {
    id: String,
    term: Option<u64>,
    state: Mutex<OpState>,
}

#[derive(Default)]
struct OpState {
    decided: bool,
    committing: u32,
    committed: bool,
    settled: bool,
}

tokio::task_local! {
    static OPERATION: Arc<Operation>;
}

/// The hub is committing the current operation's changes (`commit_done` follows).
pub fn commit_started() {
    let _ = OPERATION.try_with(|op| op.lock().committing += 1);
}

/// The commit `commit_started` announced returned (`ok`: it reached the store).
pub fn commit_done(ok: bool) {
    let _ = OPERATION.try_with(|op| {
        let mut s = op.lock();
        s.committing = s.committing.saturating_sub(1);
        s.committed |= ok;
    });
}

impl Operation {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An open decision log.
#[derive(Clone)]
pub struct Audit {
    file: Arc<Mutex<File>>,
    level: AuditLevel,
    pub path: PathBuf,
    /// Operations not settled yet, for [`Audit::abandon`].
    open: Arc<Mutex<HashMap<String, Arc<Operation>>>>,
    next_op: Arc<AtomicU64>,
    /// Part of every operation id: ids stay unique across restarts appending to one log.
    run: String,
}

impl Audit {
    /// Open (append) the log; `None` when the level is `off`.
    pub fn open(path: &Path, level: AuditLevel) -> std::io::Result<Option<Self>> {
        if level == AuditLevel::Off {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Some(Self {
            file: Arc::new(Mutex::new(file)),
            level,
            path: path.to_path_buf(),
            open: Arc::default(),
            next_op: Arc::new(AtomicU64::new(1)),
            run: format!("{:x}", crate::clock::now_ms()),
        }))
    }

    /// Run `fut` as one operation whose decisions the hub stores under writer term `term`, and
    /// settle it by its result (only if it took a decision: most operations take none).
    pub async fn operation<T, E: std::fmt::Display>(
        &self,
        term: Option<u64>,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let n = self.next_op.fetch_add(1, Ordering::Relaxed);
        let op = Arc::new(Operation {
            id: format!("{}-{n}", self.run),
            term,
            state: Mutex::default(),
        });
        self.open_ops().insert(op.id.clone(), op.clone());
        let result = OPERATION.scope(op.clone(), fut).await;
        self.open_ops().remove(&op.id);
        let commit = {
            let mut s = op.lock();
            let settle = s.decided && !s.settled;
            s.settled = true;
            settle.then_some(if s.committed {
                Commit::Committed
            } else {
                Commit::NotCommitted
            })
        };
        if let Some(commit) = commit {
            let reason = result.as_ref().err().map(ToString::to_string);
            self.settle(&op, commit, reason);
        }
        result
    }

    /// This host stopped leading (`why`) and exits: settle every open operation now — nothing
    /// it commits from here on can reach the store (its writes are fenced), so an operation
    /// that has not committed never will, and one whose commit is in flight is `unknown`.
    pub fn abandon(&self, why: &str) {
        let open: Vec<Arc<Operation>> = self.open_ops().drain().map(|(_, op)| op).collect();
        for op in open {
            let commit = {
                let mut s = op.lock();
                let settle = s.decided && !s.settled;
                s.settled = true;
                settle.then_some(match (s.committed, s.committing) {
                    (true, _) => Commit::Committed,
                    (false, 0) => Commit::NotCommitted,
                    (false, _) => Commit::Unknown,
                })
            };
            if let Some(commit) = commit {
                self.settle(&op, commit, Some(why.to_string()));
            }
        }
    }

    fn open_ops(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Operation>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, op: &Operation, commit: Commit, reason: Option<String>) {
        self.write(&Settled {
            ts_ms: crate::clock::now_ms(),
            op: op.id.clone(),
            term: op.term,
            commit,
            reason,
        });
    }

    fn write(&self, line: &impl Serialize) {
        let Ok(mut line) = serde_json::to_vec(line) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::warn!(error = %e, log = %self.path.display(), "cannot write the decision log");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        plugin: &str,
        version: &str,
        mode: &str,
        request: &Request,
        outcome: Result<&Decision, &Fault>,
        latency: Duration,
        applied: bool,
        differs: Option<bool>,
    ) {
        // O(1) for every request: a pool or a peer set is summarised, not listed.
        let input = serde_json::to_vec(request).unwrap_or_default();
        let pool = match request {
            Request::AssignAddress(r) => Some(r.pool.tag()),
            _ => None,
        };
        // An applied decision belongs to the operation it was taken in.
        let (op, term) = if applied {
            OPERATION
                .try_with(|op| {
                    op.lock().decided = true;
                    (Some(op.id.clone()), op.term)
                })
                .unwrap_or((None, None))
        } else {
            (None, None)
        };
        let entry = Entry {
            ts_ms: crate::clock::now_ms(),
            hook: request.hook().as_str().into(),
            call: request.call_name().into(),
            plugin: plugin.into(),
            version: version.into(),
            mode: mode.into(),
            input_digest: Sha256::digest(&input)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            pool,
            input: (self.level == AuditLevel::Full)
                .then(|| serde_json::from_slice(&input).unwrap_or_default()),
            decision: outcome
                .ok()
                .map(|d| serde_json::to_value(d).unwrap_or_default()),
            fault: outcome.err().map(|f| f.to_string()),
            cause: outcome.err().map(|f| f.cause().to_string()),
            latency_us: latency.as_micros() as u64,
            applied,
            differs,
            op,
            term,
            outcome: None,
        };
        self.write(&entry);
    }
}

/// What `weir decisions` keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub hook: Option<String>,
    pub plugin: Option<String>,
    pub since_ms: Option<i64>,
}

/// One line of the log: a decision or an operation's settlement.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Decision(Box<Entry>),
    Settled(Settled),
}

/// Read the log, keeping entries that match `filter`, each with its operation's outcome when
/// the log settles it. Malformed lines are skipped.
pub fn read(path: &Path, filter: &Filter) -> std::io::Result<Vec<Entry>> {
    let f = File::open(path)?;
    let mut entries = Vec::new();
    let mut settled = HashMap::new();
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Decision(e)) => entries.push(*e),
            Ok(Line::Settled(s)) => {
                settled.insert(s.op.clone(), s);
            }
            Err(_) => {}
        }
    }
    Ok(entries
        .into_iter()
        .filter(|e| filter.hook.as_ref().is_none_or(|h| &e.hook == h))
        .filter(|e| filter.plugin.as_ref().is_none_or(|p| &e.plugin == p))
        .filter(|e| filter.since_ms.is_none_or(|s| e.ts_ms >= s))
        .map(|mut e| {
            e.outcome = e.op.as_ref().and_then(|op| settled.get(op).cloned());
            e
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{AddressDecision, AddressRequest};

    fn request() -> Request {
        Request::AssignAddress(AddressRequest::on_subnet(
            "r1",
            "w",
            "10.0.1.0/24".parse().unwrap(),
            &[],
        ))
    }

    fn decide(log: &Audit) {
        let d = Decision::Address(AddressDecision::Address(std::net::Ipv4Addr::new(
            10, 0, 1, 9,
        )));
        log.record(
            "alloc",
            "v1",
            "enforce",
            &request(),
            Ok(&d),
            Duration::from_micros(3),
            true,
            None,
        );
    }

    /// A fresh log of this test's own, removed when the test ends.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn open(name: &str) -> (Audit, Scratch) {
        let path =
            std::env::temp_dir().join(format!("weir-audit-{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = Audit::open(&path, AuditLevel::Digest).unwrap().unwrap();
        (log, Scratch(path))
    }

    fn outcomes(log: &Audit) -> Vec<Option<(Commit, Option<String>)>> {
        read(&log.path, &Filter::default())
            .unwrap()
            .into_iter()
            .map(|e| e.outcome.map(|s| (s.commit, s.reason)))
            .collect()
    }

    #[tokio::test]
    async fn an_operation_settles_its_decisions_by_its_commit() {
        let (log, _scratch) = open("settles");
        let ok: Result<(), String> = log
            .operation(Some(4), async {
                decide(&log);
                commit_started();
                commit_done(true);
                Ok(())
            })
            .await;
        ok.unwrap();
        let failed: Result<(), String> = log
            .operation(Some(4), async {
                decide(&log);
                commit_started();
                commit_done(false);
                Err("lease lost".into())
            })
            .await;
        assert!(failed.is_err());
        // An operation that decided nothing writes no line; a decision outside one has no
        // outcome.
        let _: Result<(), String> = log.operation(None, async { Ok(()) }).await;
        decide(&log);
        assert_eq!(
            outcomes(&log),
            vec![
                Some((Commit::Committed, None)),
                Some((Commit::NotCommitted, Some("lease lost".into()))),
                None,
            ]
        );
        let entries = read(&log.path, &Filter::default()).unwrap();
        assert_eq!(entries[0].term, Some(4));
        assert_ne!(entries[0].op, entries[1].op);
        assert_eq!(
            std::fs::read_to_string(&log.path).unwrap().lines().count(),
            5
        );
    }

    #[tokio::test]
    async fn a_deposed_host_settles_what_is_open_once() {
        let (log, _scratch) = open("deposed");
        let (decided_tx, decided_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (in_flight_tx, in_flight_rx) = tokio::sync::oneshot::channel();
        let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
        // One operation decided and has not committed; another's commit is in flight.
        let waiting = {
            let log = log.clone();
            tokio::spawn(async move {
                log.operation(Some(2), async {
                    decide(&log);
                    decided_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    Err::<(), _>("refused".to_string())
                })
                .await
            })
        };
        let committing = {
            let log = log.clone();
            tokio::spawn(async move {
                log.operation(Some(2), async {
                    decide(&log);
                    commit_started();
                    in_flight_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    commit_done(true);
                    Ok::<(), String>(())
                })
                .await
            })
        };
        decided_rx.await.unwrap();
        in_flight_rx.await.unwrap();
        log.abandon("deposed");
        go_tx.send(()).unwrap();
        finish_tx.send(()).unwrap();
        waiting.await.unwrap().unwrap_err();
        committing.await.unwrap().unwrap();
        let mut got = outcomes(&log);
        got.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            got,
            vec![
                Some((Commit::NotCommitted, Some("deposed".into()))),
                Some((Commit::Unknown, Some("deposed".into()))),
            ]
        );
        // Two decisions, two settlements: finishing later wrote nothing more.
        assert_eq!(
            std::fs::read_to_string(&log.path).unwrap().lines().count(),
            4
        );
    }
}
