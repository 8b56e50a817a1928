//! The runner's side of `weir.v1.Agent`: register, build, keep a session — forever.
//!
//! Every failure (host down, registration refused, session lost) is logged with its reason
//! and retried with capped exponential backoff; the runner never gives up (KohakuRiver's
//! runners stopped heartbeating after five failed registrations). A revoked allocation tears
//! the runner's overlay down before it registers again, so it never runs with an id the host
//! no longer gives it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Code;
use tracing::Instrument;
use weir_proto::v1 as pb;
use weir_proto::v1::agent_client::AgentClient;

use super::auth::Bearer;
use super::client::{ChannelOptions, ClientTls, code_name, connect_tls};
use super::local::Uplink;
use crate::agent::{Agent, Expectation, contradictions};
use crate::telemetry::propagation::continue_trace;

/// What the runner loop needs from the configuration.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub name: String,
    /// Every host's URL (one, or several on etcd: the runner keeps its session with
    /// whichever leads, following a standby's answer to the leader).
    pub host_urls: Vec<String>,
    pub physical_ip: Option<Ipv4Addr>,
    pub heartbeat_interval: Duration,
    pub labels: BTreeMap<String, String>,
    pub expectations: Vec<Expectation>,
    /// The host's join token (`None` only against an `auth.insecure` host).
    pub join_token: Option<String>,
    /// TLS for an `https://` host.
    pub tls: ClientTls,
}

/// Why the runner stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("the runner's configuration contradicts the host's:\n{}", .0.join("\n"))]
    Contradiction(Vec<String>),
}

pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// With several hosts: how long a host that failed is passed over (a standby may still name
/// it as leader until its lease expires).
const PASS_OVER: Duration = Duration::from_secs(3);
/// With several hosts: a host that fails faster than this answered (its machine refused the
/// connection: a daemon restarting, or a standby between its own server and the hub's while
/// it takes over) — it is tried again soon, not passed over: trying it costs nothing, while
/// passing over a host that is taking over sends the runner to the dead one's connect timeout.
const QUICK_FAILURE: Duration = Duration::from_millis(100);
/// With several hosts: the session's HTTP/2 keepalive, so a leader that died with its
/// machine (no FIN, no RST) is noticed within about a second, not after the heartbeat's.
const FAILOVER_KEEPALIVE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Run until `shutdown` resolves (Ok) or the configuration contradicts the host (Err).
pub async fn run(
    settings: RunnerSettings,
    agent: Arc<Agent>,
    uplink: Arc<Uplink>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunnerError> {
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_START;
    let mut notified = false;
    // Which configured host to try next, and a leader a standby named (tried first).
    let mut next = 0usize;
    let mut hint: Option<String> = None;
    // Hosts that just failed (session lost, unreachable): passed over for a while, so a
    // standby still naming a dead leader does not send the runner back to it.
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let recently = |failed: &HashMap<String, Instant>, u: &str| {
        failed.get(u).is_some_and(|t| t.elapsed() < PASS_OVER)
    };
    loop {
        let n = settings.host_urls.len();
        let url = match hint.take() {
            Some(h) if !recently(&failed, &h) => h,
            _ => {
                let pick = (0..n)
                    .map(|k| (next + k) % n)
                    .find(|&k| !recently(&failed, &settings.host_urls[k]))
                    .unwrap_or(next % n);
                next = pick;
                settings.host_urls[pick].clone()
            }
        };
        let started = Instant::now();
        let attempt = async {
            let r = once(&settings, &url, &agent, &uplink, &mut notified).await;
            uplink.disconnected().await;
            r
        };
        let r = tokio::select! {
            r = attempt => r,
            _ = &mut shutdown => return Ok(()),
        };
        let wait = match r {
            Ok(Ended::Revoked) => {
                backoff = BACKOFF_START;
                continue;
            }
            Ok(Ended::Lost) => {
                // The next host, in case this one is gone (several hosts).
                failed.insert(url.clone(), Instant::now());
                next += 1;
                None
            }
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Retry(msg)) => {
                tracing::warn!(host = %url, retry_in_ms = backoff.as_millis() as u64, "{msg}");
                if started.elapsed() >= QUICK_FAILURE {
                    failed.insert(url.clone(), Instant::now());
                }
                next += 1;
                None
            }
            Err(Fail::Standby { msg, leader_url }) => {
                // A live standby: an election is under way or the leader is elsewhere. Go
                // there soon, without climbing the backoff ladder.
                tracing::info!(host = %url, "{msg}");
                match leader_url {
                    Some(l) if l != url => hint = Some(l),
                    // It is taking over itself: stay with it.
                    Some(_) => hint = Some(url.clone()),
                    None => next += 1,
                }
                backoff = BACKOFF_START;
                Some(jittered(BACKOFF_START))
            }
        };
        let several = settings.host_urls.len() > 1;
        let wait = match wait {
            Some(w) => w,
            // Several hosts: the next one may well lead; try it at once-ish, and climb the
            // ladder only once every host has failed in a row.
            None if several && !next.is_multiple_of(settings.host_urls.len()) => {
                jittered(BACKOFF_START)
            }
            None => {
                let w = jittered(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if notified {
                    // After a working session, the next failure starts a fresh backoff ladder.
                    backoff = backoff.min(Duration::from_secs(2));
                }
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// A wait between half of `backoff` and all of it, chosen at random: runners that lost the
/// host at the same moment (it restarted) come back spread over the interval rather than all
/// at once at each step of the ladder.
pub fn jittered(backoff: Duration) -> Duration {
    let mut b = [0u8; 8];
    let r = if getrandom::fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        // No randomness: the clock's nanoseconds still differ between runners.
        u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos(),
        )
    };
    let half = backoff / 2;
    let spread = half.as_micros().max(1) as u64;
    half + Duration::from_micros(r % spread)
}

enum Ended {
    /// The host revoked the allocation: register again at once.
    Revoked,
    /// The session ended (host restart, network): back off, then register again.
    Lost,
}

/// At most this many queued detaches are carried out as one kernel batch.
const DETACH_BATCH: usize = 256;

fn is_detach(c: &pb::Command) -> bool {
    matches!(c.op, Some(pb::command::Op::Detach(_)))
}

/// What the command task does next.
enum Work {
    /// A host command, with when it arrived.
    Command(Box<pb::Command>, Instant),
    /// Check the local workloads' namespaces.
    Audit,
}

enum Fail {
    Retry(String),
    /// A standby answered (several hosts): where the leader is, if it knows.
    Standby {
        msg: String,
        leader_url: Option<String>,
    },
    Fatal(RunnerError),
}

/// A standby's refusal, if `st` is one (see `api::standby`).
fn standby(st: &tonic::Status, what: &str) -> Option<Fail> {
    let md = st.metadata();
    if md.get(super::standby::ROLE).and_then(|v| v.to_str().ok())
        != Some(crate::transport::leader::ROLE_STANDBY)
    {
        return None;
    }
    Some(Fail::Standby {
        msg: format!("{what}: {}", st.message()),
        leader_url: md
            .get(super::standby::LEADER_URL)
            .and_then(|v| v.to_str().ok())
            .filter(|u| !u.is_empty())
            .map(String::from),
    })
}

async fn once(
    s: &RunnerSettings,
    host_url: &str,
    agent: &Arc<Agent>,
    uplink: &Uplink,
    notified: &mut bool,
) -> Result<Ended, Fail> {
    let opts = ChannelOptions {
        // With several hosts, a dead one must not hold the runner long.
        connect_timeout: if s.host_urls.len() > 1 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        },
        keepalive: Some(if s.host_urls.len() > 1 {
            FAILOVER_KEEPALIVE
        } else {
            s.heartbeat_interval.max(Duration::from_secs(1))
        }),
    };
    let channel = connect_tls(host_url, opts, &s.tls)
        .await
        .map_err(|e| Fail::Retry(format!("registration failed: {e}")))?;
    let physical_ip = match s.physical_ip {
        Some(ip) => ip,
        None => source_address_toward(host_url).await.map_err(|e| {
            Fail::Retry(format!(
                "cannot find this runner's physical IP: {e}; set runner.physical_ip"
            ))
        })?,
    };
    let bearer = Bearer::new(s.join_token.as_deref())
        .map_err(|e| Fail::Retry(format!("join token: {e}")))?;
    let mut client = AgentClient::with_interceptor(channel, bearer);
    let assignment = match client
        .register(pb::RegisterRequest {
            name: s.name.clone(),
            physical_ip: physical_ip.to_string(),
            labels: s.labels.clone().into_iter().collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
    {
        Ok(a) => a.into_inner(),
        Err(st) => {
            if let Some(f) = standby(&st, "registration refused") {
                return Err(f);
            }
            let msg = format!(
                "registration refused ({}): {}",
                code_name(st.code()),
                st.message()
            );
            if matches!(
                st.code(),
                Code::ResourceExhausted | Code::PermissionDenied | Code::Unauthenticated
            ) {
                // The host is there and says no: whatever overlay this runner built before
                // (under an id it no longer holds) must not stay up.
                if let Err(e) = agent.teardown().await {
                    tracing::error!(error = %e, "teardown after a refused registration failed");
                }
            }
            return Err(Fail::Retry(msg));
        }
    };
    let problems = contradictions(&s.expectations, &assignment);
    if !problems.is_empty() {
        return Err(Fail::Fatal(RunnerError::Contradiction(problems)));
    }
    crate::telemetry::metrics::reconcile("runner-register", agent.apply(&assignment, physical_ip))
        .await
        .map_err(|e| Fail::Retry(format!("building the data plane failed: {e}")))?;
    tracing::info!(id = assignment.runner_id, %physical_ip, "registered and data plane built");

    // The session: hello, then heartbeats; commands are handled in order on their own task so a
    // long sync never delays a heartbeat.
    let (up_tx, up_rx) = mpsc::channel::<pb::RunnerMessage>(256);
    let identity = pb::SessionHello {
        name: s.name.clone(),
        runner_id: assignment.runner_id,
        generation: assignment.generation,
    };
    let hello = pb::RunnerMessage {
        msg: Some(pb::runner_message::Msg::Hello(identity.clone())),
    };
    let relay_client = client.clone();
    let _ = up_tx.send(hello).await;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(up_rx))
        .await
        .map_err(|st| {
            if let Some(f) = standby(&st, "session refused") {
                return f;
            }
            Fail::Retry(format!(
                "session refused ({:?}): {}",
                st.code(),
                st.message()
            ))
        })?
        .into_inner();
    // Commands run in order on their own task, so a long sync never delays a heartbeat. A
    // command the host has given up on (cancelled, or older than its `valid_ms` when its turn
    // comes) is never started: the host already treats its outcome as unknown and undoes it.
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Work>(1024);
    let cancelled: Arc<std::sync::Mutex<HashSet<u64>>> = Arc::default();
    // At most one audit waits in the queue, however long a command takes.
    let audit_queued = Arc::new(AtomicBool::new(false));
    let worker = {
        let up = up_tx.clone();
        let agent_ref = agent.clone();
        let cancelled = cancelled.clone();
        let audit_queued = audit_queued.clone();
        tokio::spawn(async move {
            // A command taken from the queue while gathering a batch, run next.
            let mut next: Option<Work> = None;
            loop {
                let work = match next.take() {
                    Some(w) => w,
                    None => match cmd_rx.recv().await {
                        Some(w) => w,
                        None => break,
                    },
                };
                // Detaches queued behind each other are carried out as one kernel batch
                // (deleting links one by one costs the kernel a synchronisation each).
                let work = match work {
                    Work::Command(cmd, _) if is_detach(&cmd) => {
                        let mut batch = vec![*cmd];
                        while batch.len() < DETACH_BATCH {
                            match cmd_rx.try_recv() {
                                Ok(Work::Command(c, _)) if is_detach(&c) => batch.push(*c),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let refs: Vec<pb::WorkloadRef> = batch
                            .iter()
                            .filter_map(|c| match &c.op {
                                Some(pb::command::Op::Detach(r)) => Some(r.clone()),
                                _ => None,
                            })
                            .collect();
                        // One span for the batch, joined to the trace of its first command.
                        let span = tracing::info_span!(
                            "command",
                            otel.name = "apply detach",
                            otel.kind = "server",
                            command.id = batch[0].id,
                            command.op = "detach",
                            command.batch = batch.len(),
                            trace_id = tracing::field::Empty,
                        );
                        continue_trace(&span, &batch[0].trace_context);
                        let error = agent_ref
                            .detach_commands(&refs)
                            .instrument(span)
                            .await
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        if !error.is_empty() {
                            tracing::warn!(commands = batch.len(), %error, "a batch of detaches failed");
                        }
                        let mut lost = false;
                        for c in batch {
                            let msg = pb::RunnerMessage {
                                msg: Some(pb::runner_message::Msg::Result(pb::CommandResult {
                                    id: c.id,
                                    error: error.clone(),
                                    ..Default::default()
                                })),
                            };
                            lost |= up.send(msg).await.is_err();
                        }
                        if lost {
                            break;
                        }
                        continue;
                    }
                    w => w,
                };
                let (cmd, received) = match work {
                    Work::Command(cmd, received) => (*cmd, received),
                    Work::Audit => {
                        audit_queued.store(false, Ordering::Relaxed);
                        let gone = agent_ref.audit().await;
                        if !gone.is_empty() {
                            let msg = pb::RunnerMessage {
                                msg: Some(pb::runner_message::Msg::Gone(pb::WorkloadsGone {
                                    workloads: gone,
                                })),
                            };
                            if up.send(msg).await.is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                };
                let was_cancelled = cancelled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&cmd.id);
                let expired = cmd.valid_ms > 0
                    && received.elapsed() > Duration::from_millis(u64::from(cmd.valid_ms));
                let mut result = match cmd.op {
                    _ if was_cancelled || expired => pb::CommandResult {
                        error: format!(
                            "not started: the host gave up on it ({})",
                            if was_cancelled {
                                "cancelled"
                            } else {
                                "expired"
                            }
                        ),
                        nothing_applied: true,
                        ..Default::default()
                    },
                    Some(op) => {
                        // The host's span for this command is the parent: one trace from the
                        // scheduler's call down to this runner's kernel batches.
                        let name = op.name();
                        let span = tracing::info_span!(
                            "command",
                            otel.name = format!("apply {name}"),
                            otel.kind = "server",
                            command.id = cmd.id,
                            command.op = name,
                            trace_id = tracing::field::Empty,
                        );
                        continue_trace(&span, &cmd.trace_context);
                        agent_ref.handle(op).instrument(span).await
                    }
                    None => pb::CommandResult {
                        error: "empty command".into(),
                        ..Default::default()
                    },
                };
                result.id = cmd.id;
                if !result.error.is_empty() {
                    tracing::warn!(command = cmd.id, error = %result.error, "command failed");
                }
                let msg = pb::RunnerMessage {
                    msg: Some(pb::runner_message::Msg::Result(result)),
                };
                if up.send(msg).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut ticker = tokio::time::interval(s.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let ended = loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                let hb = pb::RunnerMessage { msg: Some(pb::runner_message::Msg::Heartbeat(pb::Heartbeat { seq })) };
                if up_tx.send(hb).await.is_err() {
                    break Ended::Lost;
                }
                // Namespaces that vanished are noticed between commands, never during one.
                if !audit_queued.swap(true, Ordering::Relaxed)
                    && cmd_tx.try_send(Work::Audit).is_err()
                {
                    audit_queued.store(false, Ordering::Relaxed);
                }
            }
            msg = inbound.next() => match msg {
                Some(Ok(pb::HostMessage { msg: Some(m) })) => match m {
                    pb::host_message::Msg::Accepted(_) => {
                        if !*notified {
                            crate::notify::ready(&format!("runner {} registered as id {}", s.name, assignment.runner_id));
                            *notified = true;
                        }
                        // Relayed calls (the local socket) go to the host as this session's runner.
                        uplink.connected(relay_client.clone(), identity.clone()).await;
                        tracing::info!("session accepted");
                    }
                    pb::host_message::Msg::Command(c) => {
                        if cmd_tx.send(Work::Command(Box::new(c), Instant::now())).await.is_err() {
                            break Ended::Lost;
                        }
                    }
                    pb::host_message::Msg::Cancel(c) => {
                        cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(c.id);
                    }
                    pb::host_message::Msg::Revoked(r) => {
                        tracing::warn!(reason = %r.reason, "the host revoked this runner's allocation; tearing down and registering again");
                        if let Err(e) = agent.teardown().await {
                            tracing::error!(error = %e, "teardown after revocation failed");
                        }
                        break Ended::Revoked;
                    }
                },
                Some(Ok(_)) => {}
                Some(Err(st)) => {
                    tracing::warn!(code = code_name(st.code()), message = %st.message(), "session lost");
                    break Ended::Lost;
                }
                None => {
                    tracing::warn!("session closed by the host");
                    break Ended::Lost;
                }
            }
        }
    };
    worker.abort();
    let _ = worker.await;
    Ok(ended)
}

/// Why this runner's physical IP could not be found.
#[derive(Debug, thiserror::Error)]
pub enum SourceAddressError {
    #[error("resolve {authority}: {source}")]
    Resolve {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no IPv4 address")]
    NoIpv4(String),
    #[error("{0}")]
    Socket(#[source] std::io::Error),
    #[error("no route to {target}: {source}")]
    NoRoute {
        target: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected source address {0}")]
    Unexpected(IpAddr),
}

/// The source address the kernel picks toward the host (no packet is sent).
async fn source_address_toward(url: &str) -> Result<Ipv4Addr, SourceAddressError> {
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default();
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let target = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|source| SourceAddressError::Resolve {
            authority: authority.to_string(),
            source,
        })?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| SourceAddressError::NoIpv4(authority.to_string()))?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(SourceAddressError::Socket)?;
    sock.connect(target)
        .map_err(|source| SourceAddressError::NoRoute { target, source })?;
    match sock.local_addr().map_err(SourceAddressError::Socket)?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        other => Err(SourceAddressError::Unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_source_address_toward_a_loopback_host_is_loopback() {
        let ip = source_address_toward("http://127.0.0.1:7000")
            .await
            .unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }

    #[tokio::test]
    async fn a_host_without_an_ipv4_address_is_a_typed_error() {
        let e = source_address_toward("http://[::1]:7000")
            .await
            .unwrap_err();
        assert!(matches!(e, SourceAddressError::NoIpv4(_)), "{e}");
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn jittered_waits_stay_within_half_and_all_of_the_backoff_and_differ() {
        let b = Duration::from_millis(800);
        let waits: HashSet<Duration> = (0..50).map(|_| jittered(b)).collect();
        assert!(waits.iter().all(|w| *w >= b / 2 && *w <= b), "{waits:?}");
        assert!(waits.len() > 10, "the waits are spread: {waits:?}");
    }
}
