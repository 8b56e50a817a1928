//! Runner sessions: the host's end of each runner's long-lived stream.
//!
//! Commands are sent down with an id and answered by a `CommandResult` with the same id; the
//! caller awaits the answer with a deadline. A session is bound to the runner's allocation
//! (id and generation): a runner presenting a stale one is told its allocation was revoked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use weir_proto::v1 as pb;

use super::{Hub, HubError};
use crate::store::now_ms;
use crate::telemetry::metrics::{metrics, outcome};
use crate::telemetry::propagation;

/// Messages queued to one runner before the sender waits.
const SESSION_QUEUE: usize = 1024;

/// A handle on a runner's session, cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub runner: String,
    tx: mpsc::Sender<pb::HostMessage>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<String>>>>,
    next_command: Arc<AtomicU64>,
}

/// A queued command awaiting its answer.
pub struct Pending {
    id: u64,
    rx: oneshot::Receiver<String>,
    /// Open from queuing to the answer; the runner's work is its child.
    span: tracing::Span,
    op: &'static str,
    queued: Instant,
}

/// What the API layer needs to serve a freshly opened session.
pub struct SessionStart {
    pub handle: SessionHandle,
    /// Messages to stream down to the runner.
    pub outbound: mpsc::Receiver<pb::HostMessage>,
}

impl SessionHandle {
    fn new(id: u64, runner: &str) -> (Self, mpsc::Receiver<pb::HostMessage>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        (
            Self {
                id,
                runner: runner.to_string(),
                tx,
                pending: Arc::default(),
                next_command: Arc::new(AtomicU64::new(1)),
            },
            rx,
        )
    }

    /// Send a command and wait for the runner's answer.
    pub async fn command(&self, op: pb::command::Op, timeout: Duration) -> Result<(), HubError> {
        let pending = self.enqueue(op).await?;
        self.wait(pending, timeout).await
    }

    /// Queue a command (its place in the runner's order is fixed now); await it with [`wait`].
    pub async fn enqueue(&self, op: pb::command::Op) -> Result<Pending, HubError> {
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        let name = op.name();
        let span = tracing::info_span!(
            "runner.command",
            otel.name = format!("command {name}"),
            otel.kind = "client",
            runner = %self.runner,
            command.id = id,
            command.op = name,
            error = tracing::field::Empty,
        );
        let (tx, rx) = oneshot::channel();
        self.pending_map().insert(id, tx);
        let msg = pb::HostMessage {
            msg: Some(pb::host_message::Msg::Command(pb::Command {
                id,
                op: Some(op),
                trace_context: propagation::inject(&span),
            })),
        };
        if self.tx.send(msg).await.is_err() {
            self.pending_map().remove(&id);
            return Err(HubError::Unavailable(format!(
                "runner {:?} disconnected",
                self.runner
            )));
        }
        Ok(Pending {
            id,
            rx,
            span,
            op: name,
            queued: Instant::now(),
        })
    }

    /// Wait for the runner's answer to a queued command.
    pub async fn wait(&self, pending: Pending, timeout: Duration) -> Result<(), HubError> {
        let Pending {
            id,
            rx,
            span,
            op,
            queued,
        } = pending;
        let answer = tokio::time::timeout(timeout, rx)
            .instrument(span.clone())
            .await;
        self.pending_map().remove(&id);
        let result = match answer {
            Ok(Ok(err)) if err.is_empty() => Ok(()),
            Ok(Ok(err)) => Err(HubError::Runner(err)),
            Ok(Err(_)) => Err(HubError::Unavailable(format!(
                "runner {:?} disconnected before answering",
                self.runner
            ))),
            Err(_) => Err(HubError::Unavailable(format!(
                "runner {:?} did not answer within {}s",
                self.runner,
                timeout.as_secs()
            ))),
        };
        if let Err(e) = &result {
            span.record("error", tracing::field::display(e));
        }
        metrics().command_duration.record(
            queued.elapsed().as_secs_f64(),
            &[
                KeyValue::new("op", op),
                KeyValue::new("outcome", outcome(&result)),
            ],
        );
        result
    }

    /// Deliver a runner's answer to the command waiting for it.
    pub fn complete(&self, result: pb::CommandResult) {
        if let Some(tx) = self.pending_map().remove(&result.id) {
            let _ = tx.send(result.error);
        }
    }

    /// Tell the runner its allocation is gone; it tears down and registers again.
    pub fn revoke(&self, reason: &str) {
        let _ = self.tx.try_send(pb::HostMessage {
            msg: Some(pb::host_message::Msg::Revoked(pb::AllocationRevoked {
                reason: reason.to_string(),
            })),
        });
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<String>>> {
        // A poisoned map only means another task panicked mid-insert; the data is still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Hub {
    /// A registered runner opens its session. Fails with `FailedPrecondition` (and the API layer
    /// answers `AllocationRevoked`) when the runner's allocation is not the one it presents.
    pub async fn open_session(
        self: &Arc<Self>,
        hello: pb::SessionHello,
    ) -> Result<SessionStart, HubError> {
        let mut st = self.state.lock().await;
        st.next_session += 1;
        let sid = st.next_session;
        let runner = st.runners.get_mut(&hello.name).ok_or_else(|| {
            HubError::FailedPrecondition(format!(
                "runner {:?} holds no allocation; register again",
                hello.name
            ))
        })?;
        if runner.rec.id.unwrap_or(0) != hello.runner_id
            || runner.rec.generation != hello.generation
        {
            return Err(HubError::FailedPrecondition(format!(
                "runner {:?} presents id {} generation {}, but holds id {} generation {}; register again",
                hello.name,
                hello.runner_id,
                hello.generation,
                runner.rec.id.unwrap_or(0),
                runner.rec.generation
            )));
        }
        let (handle, outbound) = SessionHandle::new(sid, &hello.name);
        if let Some(old) = runner.session.replace(handle.clone()) {
            tracing::info!(runner = %hello.name, old = old.id, "a new session replaces the old one");
        }
        runner.last_seen_ms = now_ms();
        let accepted = pb::HostMessage {
            msg: Some(pb::host_message::Msg::Accepted(pb::SessionAccepted {})),
        };
        let _ = handle.tx.try_send(accepted);
        drop(st);
        let (hub, s) = (self.clone(), handle.clone());
        tokio::spawn(async move { hub.prime_session(s).await });
        tracing::info!(runner = %hello.name, session = sid, "session opened");
        Ok(SessionStart { handle, outbound })
    }

    /// A heartbeat from the runner's current session.
    pub async fn heartbeat(&self, runner: &str, session: u64) {
        let mut st = self.state.lock().await;
        if let Some(r) = st.runners.get_mut(runner)
            && r.session.as_ref().is_some_and(|s| s.id == session)
        {
            r.last_seen_ms = now_ms();
        }
    }

    /// The session's stream ended.
    pub async fn close_session(&self, runner: &str, session: u64) {
        let mut st = self.state.lock().await;
        if let Some(r) = st.runners.get_mut(runner)
            && r.session.as_ref().is_some_and(|s| s.id == session)
        {
            r.session = None;
            tracing::info!(runner, session, "session closed");
        }
    }
}
