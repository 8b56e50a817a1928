//! Simulated runner sessions for the hub section: each one registers, holds a real
//! `Agent.Session` stream (its own connection, as a runner has), answers every command the host
//! sends with success, heartbeats on the runner's interval, and when the stream ends comes back
//! the way `weir runner` does (capped exponential backoff, jittered: `api::runner::jittered`).
//! No kernel is touched on this side: it measures the host's cost of holding sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use weir::api::runner::{BACKOFF_MAX, BACKOFF_START, jittered};
use weir::lab::Lab;
use weir_proto::v1 as pb;

use crate::env;
use crate::hub::synthetic_ip;

/// The runner's default heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What every simulated session reports.
pub struct Fleet {
    /// Sessions accepted right now.
    pub connected: Arc<AtomicUsize>,
    /// When each acceptance happened (since `epoch`), in order.
    accepted_at: Arc<std::sync::Mutex<Vec<Duration>>>,
    epoch: Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Start `n` simulated runners named `s0000…` (the names and addresses `hub::register`
    /// uses, so they take over registrations already made).
    pub fn start(lab: &Lab, n: usize) -> Fleet {
        let connected = Arc::new(AtomicUsize::new(0));
        let accepted_at = Arc::new(std::sync::Mutex::new(Vec::new()));
        let epoch = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..n)
            .map(|i| {
                let r = Sim {
                    url: lab.control_url(),
                    token: lab.join_token(),
                    i,
                    connected: connected.clone(),
                    accepted_at: accepted_at.clone(),
                    epoch,
                };
                let stopped = stopped.clone();
                tokio::spawn(async move { r.run(stopped).await })
            })
            .collect();
        Fleet {
            connected,
            accepted_at,
            epoch,
            stop,
            tasks,
        }
    }

    /// Acceptances after `since`, as offsets from `since`.
    pub fn accepted_since(&self, since: Instant) -> Vec<Duration> {
        let cut = since.saturating_duration_since(self.epoch);
        self.accepted_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|t| **t >= cut)
            .map(|t| *t - cut)
            .collect()
    }

    /// Wait until `want` sessions are accepted, or fail after `timeout`.
    pub async fn wait_connected(&self, want: usize, timeout: Duration) -> Result<()> {
        let c = self.connected.clone();
        env::wait_until(
            &format!("{want} sessions are accepted"),
            timeout,
            move || c.load(Ordering::SeqCst) >= want,
        )
        .await
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Sim {
    url: String,
    token: String,
    i: usize,
    connected: Arc<AtomicUsize>,
    accepted_at: Arc<std::sync::Mutex<Vec<Duration>>>,
    epoch: Instant,
}

impl Sim {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        loop {
            let worked = tokio::select! {
                r = self.once() => r,
                _ = stopped.changed() => return,
            };
            if worked {
                // After a working session, a fresh ladder.
                backoff = BACKOFF_START;
            }
            tokio::select! {
                _ = tokio::time::sleep(jittered(backoff)) => {}
                _ = stopped.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Register and hold one session until it ends; whether it was accepted.
    async fn once(&self) -> bool {
        let Ok(mut agent) = self.client().await else {
            return false;
        };
        let name = format!("s{:04}", self.i);
        let Ok(a) = agent
            .register(pb::RegisterRequest {
                name: name.clone(),
                physical_ip: synthetic_ip(self.i).to_string(),
                ..Default::default()
            })
            .await
        else {
            return false;
        };
        let a = a.into_inner();
        let (up, rx) = mpsc::channel::<pb::RunnerMessage>(64);
        let hello = pb::RunnerMessage {
            msg: Some(pb::runner_message::Msg::Hello(pb::SessionHello {
                name,
                runner_id: a.runner_id,
                generation: a.generation,
            })),
        };
        if up.send(hello).await.is_err() {
            return false;
        }
        let Ok(inbound) = agent
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            return false;
        };
        let mut inbound = inbound.into_inner();
        let mut accepted = false;
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        let mut seq = 0;
        loop {
            tokio::select! {
                m = inbound.next() => match m {
                    Some(Ok(pb::HostMessage { msg: Some(m) })) => match m {
                        pb::host_message::Msg::Accepted(_) => {
                            accepted = true;
                            self.connected.fetch_add(1, Ordering::SeqCst);
                            self.accepted_at
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(self.epoch.elapsed());
                        }
                        pb::host_message::Msg::Command(c) => {
                            let r = pb::RunnerMessage {
                                msg: Some(pb::runner_message::Msg::Result(pb::CommandResult {
                                    id: c.id,
                                    ..Default::default()
                                })),
                            };
                            if up.send(r).await.is_err() {
                                break;
                            }
                        }
                        pb::host_message::Msg::Revoked(_) => break,
                        pb::host_message::Msg::Cancel(_) => {}
                    },
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                _ = beat.tick() => {
                    seq += 1;
                    let hb = pb::RunnerMessage {
                        msg: Some(pb::runner_message::Msg::Heartbeat(pb::Heartbeat { seq })),
                    };
                    if up.send(hb).await.is_err() {
                        break;
                    }
                }
            }
        }
        if accepted {
            self.connected.fetch_sub(1, Ordering::SeqCst);
        }
        accepted
    }

    async fn client(&self) -> Result<env::Agent> {
        let channel = weir::api::client::connect(&self.url, Default::default())
            .await
            .with_context(|| format!("connect to {}", self.url))?;
        let bearer = weir::api::auth::Bearer::new(Some(&self.token))
            .map_err(|e| anyhow::anyhow!("join token: {e}"))?;
        Ok(weir_proto::v1::agent_client::AgentClient::with_interceptor(
            channel, bearer,
        ))
    }
}
