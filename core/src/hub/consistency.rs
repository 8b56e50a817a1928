//! One truth between the hub and its runners.
//!
//! The hub's records say what each runner should hold. Every session starts with a `sync` of
//! that whole set; the runner makes its kernel match and answers with what it holds, which
//! settles every workload whose removal the hub was still waiting to see confirmed. Workload
//! commands wait until that answer, so an address is handed out only when no interface on
//! the runner can still hold it. `Diagnose` (`weir doctor`) asks runners to read their
//! kernels and lists every difference from the records.
//!
//! Holds `Hub::queue_sync`, `Hub::settle_sync` (a session's first command and its answer) and
//! `Hub::diagnose` (`weir doctor`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weir_proto::v1 as pb;

use super::session::{Answer, Pending, SessionHandle};
use super::{Hub, HubError, Phase, State};
use crate::store::workload_key;

impl Hub {
    /// Queue a session's first command: the runner's whole desired workload set (the caller
    /// holds the state lock, so no attach or detach falls between the set and the queue).
    pub(super) async fn queue_sync(
        &self,
        st: &State,
        s: &SessionHandle,
    ) -> Result<Pending, HubError> {
        let several = self.settings.networks.len() > 1;
        let workloads: Vec<pb::WorkloadSpec> = st
            .workloads
            .iter()
            .filter(|(k, w)| w.runner == s.runner && !st.phases.contains_key(*k))
            .filter_map(|(_, w)| {
                let net = self.network(&w.network).ok()?;
                let sub = net.runner_subnet(st.runners.get(&w.runner)?.rec.id)?;
                Some(super::workloads::workload_spec(w, net, sub, several))
            })
            .collect();
        s.enqueue(pb::command::Op::Sync(pb::WorkloadSet { workloads }), None)
            .await
    }

    /// Wait for the session's sync; what the runner says it holds settles the workloads
    /// leaving it, and the session becomes ready for workload commands.
    pub(super) async fn settle_sync(&self, s: &SessionHandle, sync: Result<Pending, HubError>) {
        let answer = match sync {
            Ok(p) => match s.wait(p, self.command_timeout() * 3).await {
                Answer::Done(r) => Some(r),
                Answer::Lost => None,
                Answer::Late(p) => {
                    tracing::warn!(runner = %s.runner, "the runner's sync is slow; workload commands wait for it");
                    SessionHandle::settle(p).await
                }
            },
            Err(_) => None,
        };
        let Some(r) = answer else {
            tracing::warn!(runner = %s.runner, "the session ended before the runner answered its sync");
            return;
        };
        if !r.error.is_empty() {
            tracing::warn!(runner = %s.runner, error = %r.error, "runner synchronisation was incomplete");
        }
        let held: BTreeSet<String> = r
            .held
            .iter()
            .flat_map(|h| &h.workloads)
            .map(|h| workload_key(&h.network, &h.workload_id))
            .collect();
        let leaving: Vec<String> = {
            let st = self.state.lock().await;
            for k in &held {
                if !st.workloads.contains_key(k) {
                    tracing::warn!(runner = %s.runner, workload = %k.replace('\0', "/"), "the runner holds an interface the hub has no record of and could not remove it");
                }
            }
            st.phases
                .iter()
                .filter(|(k, p)| **p == Phase::Leaving && !held.contains(*k))
                .filter(|(k, _)| st.workloads.get(*k).is_some_and(|w| w.runner == s.runner))
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in &leaving {
            self.confirm_gone(&s.runner, k).await;
        }
        tracing::debug!(runner = %s.runner, held = held.len(), confirmed_gone = leaving.len(), "runner synchronised");
        s.set_ready();
    }

    /// Compare the records with what each runner finds in its kernel.
    pub async fn diagnose(
        self: &Arc<Self>,
        req: pb::DiagnoseRequest,
    ) -> Result<pb::DiagnoseResponse, HubError> {
        let targets: Vec<(String, Option<SessionHandle>)> = {
            let st = self.state.lock().await;
            if !req.runner.is_empty() && !st.runners.contains_key(&req.runner) {
                return Err(HubError::NotFound(format!(
                    "runner: {} is not registered",
                    super::brief(&req.runner)
                )));
            }
            st.runners
                .iter()
                .filter(|(n, _)| req.runner.is_empty() || **n == req.runner)
                .map(|(n, r)| (n.clone(), r.session.clone()))
                .collect()
        };
        let mut out = pb::DiagnoseResponse::default();
        let finding =
            |runner: &str, network: &str, id: &str, kind: &str, detail: String| pb::Finding {
                runner: runner.to_string(),
                network: network.to_string(),
                workload_id: id.to_string(),
                kind: kind.to_string(),
                detail,
            };
        for (runner, session) in targets {
            let held = match session {
                None => Err("it is not connected".to_string()),
                Some(s) => match s.ready(self.command_timeout()).await {
                    Err(e) => Err(e.to_string()),
                    Ok(()) => s
                        .command(
                            pb::command::Op::Inspect(pb::Inspect {}),
                            self.command_timeout(),
                        )
                        .await
                        .map(|r| r.held.unwrap_or_default().workloads)
                        .map_err(|e| e.to_string()),
                },
            };
            let held = match held {
                Ok(h) => h,
                Err(e) => {
                    out.findings.push(finding(
                        &runner,
                        "",
                        "",
                        "runner-unreachable",
                        format!("its kernel could not be read: {e}"),
                    ));
                    continue;
                }
            };
            out.checked.push(runner.clone());
            let st = self.state.lock().await;
            let by_key: BTreeMap<String, &pb::HeldWorkload> = held
                .iter()
                .map(|h| (workload_key(&h.network, &h.workload_id), h))
                .collect();
            for (k, w) in st.workloads.iter().filter(|(_, w)| w.runner == runner) {
                match (st.phases.get(k), by_key.get(k)) {
                    (Some(Phase::Attaching), _) => {}
                    (Some(Phase::Leaving), Some(_)) => out.findings.push(finding(
                        &runner,
                        &w.network,
                        &w.id,
                        "unconfirmed",
                        format!(
                            "detached, but the runner still holds its interface ({} stays taken until it is removed)",
                            w.ip.addr()
                        ),
                    )),
                    (Some(Phase::Leaving), None) => {}
                    (None, None) => out.findings.push(finding(
                        &runner,
                        &w.network,
                        &w.id,
                        "record-without-link",
                        format!("the record holds {} but the runner has no interface", w.ip),
                    )),
                    (None, Some(h)) => {
                        if let Some((kind, detail)) = h.problem.split_once(": ") {
                            out.findings
                                .push(finding(&runner, &w.network, &w.id, kind, detail.into()));
                        } else if !h.problem.is_empty() {
                            out.findings.push(finding(
                                &runner,
                                &w.network,
                                &w.id,
                                "interface-broken",
                                h.problem.clone(),
                            ));
                        }
                        if !h.address.is_empty() && h.address != w.ip.to_string() {
                            out.findings.push(finding(
                                &runner,
                                &w.network,
                                &w.id,
                                "address-differs",
                                format!("the record holds {}, the interface has {}", w.ip, h.address),
                            ));
                        }
                        if let (Some(want), Some(got)) = (w.netns_id, h.netns_id)
                            && (want.dev, want.ino) != (got.dev, got.ino)
                        {
                            out.findings.push(finding(
                                &runner,
                                &w.network,
                                &w.id,
                                "namespace-replaced",
                                format!(
                                    "{} is another namespace than the one the workload was attached in",
                                    w.netns.display()
                                ),
                            ));
                        }
                    }
                }
            }
            for (k, h) in &by_key {
                if st.workloads.get(k).is_none_or(|w| w.runner != runner) {
                    out.findings.push(finding(
                        &runner,
                        &h.network,
                        &h.workload_id,
                        "link-without-record",
                        format!(
                            "the runner holds an interface{} that no record wants",
                            if h.address.is_empty() {
                                String::new()
                            } else {
                                format!(" with {}", h.address)
                            }
                        ),
                    ));
                }
            }
            let mut by_address: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
            for h in held.iter().filter(|h| !h.address.is_empty()) {
                let addr = h.address.split('/').next().unwrap_or_default().to_string();
                by_address
                    .entry((h.network.clone(), addr))
                    .or_default()
                    .push(h.workload_id.clone());
            }
            for w in st.workloads.values().filter(|w| w.runner == runner) {
                let e = by_address
                    .entry((w.network.clone(), w.ip.addr().to_string()))
                    .or_default();
                if !e.contains(&w.id) {
                    e.push(w.id.clone());
                }
            }
            for ((network, addr), ids) in by_address.into_iter().filter(|(_, v)| v.len() > 1) {
                out.findings.push(finding(
                    &runner,
                    &network,
                    "",
                    "address-on-two-workloads",
                    format!("{addr} is held by {}", ids.join(", ")),
                ));
            }
        }
        Ok(out)
    }
}
