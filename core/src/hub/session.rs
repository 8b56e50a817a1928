//! Runner sessions: the host's end of each runner's long-lived stream.
//!
//! Commands are sent down with an id and answered by a `CommandResult` with the same id. A
//! command carries how long it stays valid: a runner never starts one the host has stopped
//! waiting for, and a host that gives up also sends `CancelCommand`. A command whose deadline
//! passed still has an unknown outcome (the runner may have been in the middle of it), so the
//! caller gets the [`Pending`] back and decides how to settle it; an answer that arrives late
//! still reaches it. When the stream ends every waiter is told at once.
//!
//! A session is bound to the runner's allocation (id and generation): a runner presenting a
//! stale one is told its allocation was revoked. Its first command is always the full
//! workload set (`sync`); the session is *ready* (takes workload commands) once the runner has
//! answered it with what it holds.
//!
//! Holds `SessionHandle` and `Hub::open_session`, `Hub::heartbeat`, `Hub::close_session`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use weir_proto::v1 as pb;

use super::{Hub, HubError};
use crate::clock::now_ms;
use crate::telemetry::metrics::{metrics, outcome};
use crate::telemetry::propagation;

/// Messages queued to one runner before the sender waits.
const SESSION_QUEUE: usize = 1024;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The first sync is queued; workload commands wait.
    Priming,
    /// The runner answered the sync: the host knows what it holds.
    Ready,
    /// The stream ended.
    Closed,
}

/// A handle on a runner's session, cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub runner: String,
    tx: mpsc::Sender<pb::HostMessage>,
    pending: Arc<Mutex<Waiters>>,
    next_command: Arc<AtomicU64>,
    readiness: Arc<watch::Sender<Readiness>>,
}

#[derive(Default)]
struct Waiters {
    map: HashMap<u64, oneshot::Sender<pb::CommandResult>>,
    /// Set when the stream ended: nothing more can be queued.
    closed: bool,
}

/// A queued command awaiting its answer.
pub struct Pending {
    pub id: u64,
    rx: oneshot::Receiver<pb::CommandResult>,
    /// Open from queuing to the answer; the runner's work is its child.
    span: tracing::Span,
    op: &'static str,
    queued: Instant,
    /// It carries a deadline: cancel it when the wait times out.
    bounded: bool,
}

/// How waiting for a command ended.
pub enum Answer {
    /// The runner answered (its `error` may say it failed).
    Done(pb::CommandResult),
    /// The session ended first: the outcome is unknown.
    Lost,
    /// The deadline passed (the command was cancelled): the outcome is unknown, and the
    /// runner's answer may still arrive through the returned [`Pending`].
    Late(Pending),
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
        let (readiness, _) = watch::channel(Readiness::Priming);
        (
            Self {
                id,
                runner: runner.to_string(),
                tx,
                pending: Arc::default(),
                next_command: Arc::new(AtomicU64::new(1)),
                readiness: Arc::new(readiness),
            },
            rx,
        )
    }

    /// Send a command and wait for the runner's answer; a late or lost answer is an error.
    pub async fn command(
        &self,
        op: pb::command::Op,
        timeout: Duration,
    ) -> Result<pb::CommandResult, HubError> {
        let pending = self.enqueue(op, None).await?;
        match self.wait(pending, timeout).await {
            Answer::Done(r) if r.error.is_empty() => Ok(r),
            Answer::Done(r) => Err(HubError::Runner(r.error)),
            Answer::Lost => Err(self.lost()),
            Answer::Late(_) => Err(self.late(timeout)),
        }
    }

    /// Queue a command (its place in the runner's order is fixed now); await it with
    /// [`SessionHandle::wait`]. With `valid`, the runner never starts it later than that after
    /// receiving it, and a wait that times out cancels it: for commands whose late effect
    /// would be wrong (an attach the caller was told failed). Without, it runs whenever its
    /// turn comes (detach, sync and the whole-state updates are right however late).
    pub async fn enqueue(
        &self,
        op: pb::command::Op,
        valid: Option<Duration>,
    ) -> Result<Pending, HubError> {
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
        {
            let mut w = self.waiters();
            if w.closed {
                return Err(self.lost());
            }
            w.map.insert(id, tx);
        }
        let msg = pb::HostMessage {
            msg: Some(pb::host_message::Msg::Command(pb::Command {
                id,
                op: Some(op),
                trace_context: propagation::inject(&span),
                valid_ms: valid.map_or(0, |v| u32::try_from(v.as_millis()).unwrap_or(u32::MAX)),
            })),
        };
        if self.tx.send(msg).await.is_err() {
            self.waiters().map.remove(&id);
            return Err(self.lost());
        }
        Ok(Pending {
            id,
            rx,
            span,
            op: name,
            queued: Instant::now(),
            bounded: valid.is_some(),
        })
    }

    /// Wait up to `timeout` for the runner's answer. On timeout a command with a deadline is
    /// cancelled (the runner skips it if it has not started it), and the pending answer is
    /// handed back.
    pub async fn wait(&self, mut pending: Pending, timeout: Duration) -> Answer {
        let answer = tokio::time::timeout(timeout, &mut pending.rx)
            .instrument(pending.span.clone())
            .await;
        let (answer, label) = match answer {
            Ok(Ok(r)) if r.error.is_empty() => (Answer::Done(r), "ok"),
            Ok(Ok(r)) => (Answer::Done(r), "runner-error"),
            Ok(Err(_)) => (Answer::Lost, "lost"),
            Err(_) => {
                if pending.bounded {
                    let _ = self.tx.try_send(pb::HostMessage {
                        msg: Some(pb::host_message::Msg::Cancel(pb::CancelCommand {
                            id: pending.id,
                        })),
                    });
                }
                pending.span.record(
                    "error",
                    tracing::field::display(self.late(timeout).to_string()),
                );
                let (op, queued) = (pending.op, pending.queued);
                record_duration(op, queued, "late");
                return Answer::Late(pending);
            }
        };
        if label != "ok" {
            pending.span.record("error", label);
        }
        record_duration(pending.op, pending.queued, label);
        answer
    }

    /// Wait for the rest of a late command's life: its answer, or the end of the session.
    pub async fn settle(pending: Pending) -> Option<pb::CommandResult> {
        pending.rx.await.ok()
    }

    /// Deliver a runner's answer to the command waiting for it.
    pub fn complete(&self, result: pb::CommandResult) {
        if let Some(tx) = self.waiters().map.remove(&result.id) {
            let _ = tx.send(result);
        }
    }

    /// The stream ended: every waiter learns it now, not at its deadline.
    pub fn close(&self) {
        let mut w = self.waiters();
        w.closed = true;
        w.map.clear();
        drop(w);
        self.readiness.send_replace(Readiness::Closed);
    }

    /// Tell the runner its allocation is gone; it tears down and registers again.
    pub fn revoke(&self, reason: &str) {
        let _ = self.tx.try_send(pb::HostMessage {
            msg: Some(pb::host_message::Msg::Revoked(pb::AllocationRevoked {
                reason: reason.to_string(),
            })),
        });
    }

    pub fn readiness(&self) -> Readiness {
        *self.readiness.borrow()
    }

    pub(super) fn set_ready(&self) {
        self.readiness.send_if_modified(|r| {
            let change = *r == Readiness::Priming;
            if change {
                *r = Readiness::Ready;
            }
            change
        });
    }

    /// Wait until the runner has answered the session's first sync.
    pub async fn ready(&self, timeout: Duration) -> Result<(), HubError> {
        let mut rx = self.readiness.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|r| *r != Readiness::Priming)).await;
        match r.as_ref().map(|r| r.as_deref().copied()) {
            Ok(Ok(Readiness::Ready)) => Ok(()),
            Ok(_) => Err(self.lost()),
            Err(_) => Err(HubError::Unavailable(format!(
                "runner {:?} is still synchronising its workloads after {}s",
                self.runner,
                timeout.as_secs()
            ))),
        }
    }

    fn lost(&self) -> HubError {
        HubError::Unavailable(format!(
            "runner {:?} disconnected before answering",
            self.runner
        ))
    }

    fn late(&self, timeout: Duration) -> HubError {
        HubError::Unavailable(format!(
            "runner {:?} did not answer within {}s",
            self.runner,
            timeout.as_secs()
        ))
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // A poisoned map only means another task panicked mid-insert; the data is still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn record_duration(op: &'static str, queued: Instant, label: &'static str) {
    let r: Result<(), ()> = if label == "ok" { Ok(()) } else { Err(()) };
    metrics().command_duration.record(
        queued.elapsed().as_secs_f64(),
        &[
            KeyValue::new("op", op),
            KeyValue::new("outcome", outcome(&r)),
        ],
    );
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
        check_allocation(&st, &hello)?;
        let Some(runner) = st.runners.get_mut(&hello.name) else {
            return Err(no_allocation(&hello.name));
        };
        let (handle, outbound) = SessionHandle::new(sid, &hello.name);
        if let Some(old) = runner.session.replace(handle.clone()) {
            tracing::info!(runner = %hello.name, old = old.id, "a new session replaces the old one");
            old.close();
        }
        runner.last_seen_ms = now_ms();
        let accepted = pb::HostMessage {
            msg: Some(pb::host_message::Msg::Accepted(pb::SessionAccepted {})),
        };
        let _ = handle.tx.try_send(accepted);
        // The sync is the session's first command, queued under the state lock: whatever the
        // runner holds from before (an attach whose answer was lost, a workload detached while
        // it was away) is removed before any later command runs, and its answer says what the
        // runner holds.
        let sync = self.queue_sync(&st, &handle).await;
        drop(st);
        let (hub, s) = (self.clone(), handle.clone());
        tokio::spawn(async move { hub.prime_session(s, sync).await });
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
    pub async fn close_session(&self, handle: &SessionHandle) {
        handle.close();
        let mut st = self.state.lock().await;
        if let Some(r) = st.runners.get_mut(&handle.runner)
            && r.session.as_ref().is_some_and(|s| s.id == handle.id)
        {
            r.session = None;
            tracing::info!(runner = %handle.runner, session = handle.id, "session closed");
        }
    }
}

fn no_allocation(name: &str) -> HubError {
    HubError::FailedPrecondition(format!(
        "runner {name:?} holds no allocation; register again"
    ))
}

/// The runner presents the allocation it holds now (name, id and generation).
fn check_allocation(st: &super::State, hello: &pb::SessionHello) -> Result<(), HubError> {
    let runner = st
        .runners
        .get(&hello.name)
        .ok_or_else(|| no_allocation(&hello.name))?;
    if runner.rec.id.unwrap_or(0) != hello.runner_id || runner.rec.generation != hello.generation {
        return Err(HubError::FailedPrecondition(format!(
            "runner {:?} presents id {} generation {}, but holds id {} generation {}; register again",
            hello.name,
            hello.runner_id,
            hello.generation,
            runner.rec.id.unwrap_or(0),
            runner.rec.generation
        )));
    }
    Ok(())
}

impl Hub {
    /// The runner a relayed call comes from, once it presents the allocation it holds: relayed
    /// calls act only on that runner's own workloads.
    pub async fn relay_runner(&self, hello: Option<pb::SessionHello>) -> Result<String, HubError> {
        let hello = hello.ok_or_else(|| {
            HubError::InvalidArgument(
                "runner: a relayed call must name the runner's allocation".into(),
            )
        })?;
        check_allocation(&*self.state.lock().await, &hello)?;
        Ok(hello.name)
    }
}
