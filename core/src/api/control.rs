//! `weir.v1.Control`: the scheduler's API.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use weir_proto::v1 as pb;
use weir_proto::v1::control_server::Control;

use super::status;
use crate::hub::{AttachRequest, Hub, check_label_limits};

pub struct ControlService {
    hub: Arc<Hub>,
}

impl ControlService {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.hub.status().await))
    }

    async fn list_runners(
        &self,
        _: Request<pb::ListRunnersRequest>,
    ) -> Result<Response<pb::ListRunnersResponse>, Status> {
        Ok(Response::new(pb::ListRunnersResponse {
            runners: self.hub.list_runners().await,
        }))
    }

    async fn release_runner(
        &self,
        req: Request<pb::ReleaseRunnerRequest>,
    ) -> Result<Response<pb::ReleaseRunnerResponse>, Status> {
        let r = self
            .hub
            .release_runner(&req.into_inner().runner)
            .await
            .map_err(status)?;
        Ok(Response::new(r))
    }

    async fn cleanup_inactive(
        &self,
        _: Request<pb::CleanupInactiveRequest>,
    ) -> Result<Response<pb::CleanupInactiveResponse>, Status> {
        Ok(Response::new(
            self.hub.cleanup_inactive().await.map_err(status)?,
        ))
    }

    async fn attach_workload(
        &self,
        req: Request<pb::AttachWorkloadRequest>,
    ) -> Result<Response<pb::AttachWorkloadResponse>, Status> {
        let started = std::time::Instant::now();
        let req = req.into_inner();
        let network = req.network.clone();
        let parsed = AttachRequest::parse(req).map_err(|e| {
            self.hub.count_unparsed_attach(&network, started);
            status(e)
        })?;
        Ok(Response::new(
            self.hub.attach(parsed).await.map_err(status)?,
        ))
    }

    async fn detach_workload(
        &self,
        req: Request<pb::DetachWorkloadRequest>,
    ) -> Result<Response<pb::DetachWorkloadResponse>, Status> {
        self.hub.detach(req.into_inner()).await.map_err(status)?;
        Ok(Response::new(pb::DetachWorkloadResponse {}))
    }

    async fn list_workloads(
        &self,
        req: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let req = req.into_inner();
        check_label_limits(&req.labels, "labels").map_err(status)?;
        let (workloads, next_page_token) = self.hub.list_workloads(req).await.map_err(status)?;
        Ok(Response::new(pb::ListWorkloadsResponse {
            workloads,
            next_page_token,
        }))
    }

    async fn diagnose(
        &self,
        req: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<pb::DiagnoseResponse>, Status> {
        Ok(Response::new(
            self.hub.diagnose(req.into_inner()).await.map_err(status)?,
        ))
    }

    async fn reserve_address(
        &self,
        req: Request<pb::ReserveAddressRequest>,
    ) -> Result<Response<pb::ReserveAddressResponse>, Status> {
        Ok(Response::new(
            self.hub.reserve(req.into_inner()).await.map_err(status)?,
        ))
    }

    async fn validate_reservation(
        &self,
        req: Request<pb::ValidateReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        Ok(Response::new(
            self.hub
                .validate_reservation(req.into_inner())
                .await
                .map_err(status)?,
        ))
    }

    async fn release_reservation(
        &self,
        req: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        self.hub
            .release_reservation(req.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReleaseReservationResponse {}))
    }

    async fn list_reservations(
        &self,
        req: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let reservations = self
            .hub
            .list_reservations(req.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListReservationsResponse { reservations }))
    }

    async fn get_plugins(
        &self,
        _: Request<pb::GetPluginsRequest>,
    ) -> Result<Response<pb::GetPluginsResponse>, Status> {
        let plugins = self
            .hub
            .policy()
            .status()
            .into_iter()
            .map(|p| pb::PluginInfo {
                name: p.name,
                hooks: p.hooks.iter().map(|h| h.as_str().to_string()).collect(),
                version: p.version,
                mode: p.mode.as_str().into(),
                on_error: match p.on_error {
                    crate::config::OnError::Fallback => "fallback",
                    crate::config::OnError::Deny => "deny",
                }
                .into(),
                loaded_unix_ms: p.loaded_ms,
                decisions: p.decisions,
                faults: p.faults,
                source: p.source,
                last_error: p.last_error,
            })
            .collect();
        Ok(Response::new(pb::GetPluginsResponse { plugins }))
    }

    async fn reload_plugins(
        &self,
        _: Request<pb::ReloadPluginsRequest>,
    ) -> Result<Response<pb::ReloadPluginsResponse>, Status> {
        let plugins = self
            .hub
            .policy()
            .reload(true)
            .await
            .into_iter()
            .map(|o| pb::ReloadOutcome {
                name: o.name,
                result: o.result.into(),
                version: o.version,
                error: o.error,
            })
            .collect();
        Ok(Response::new(pb::ReloadPluginsResponse { plugins }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        let watch = self
            .hub
            .watch(req.after, req.only_new)
            .await
            .map_err(status)?;
        let mut last = watch.backlog.last().map_or(req.after, |e| e.seq);
        let mut live = watch.live;
        let stream = async_stream(watch.backlog, move |tx| async move {
            loop {
                match live.recv().await {
                    Ok(e) if e.seq <= last => continue,
                    Ok(e) => {
                        last = e.seq;
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::aborted(format!(
                                "this watcher fell {n} events behind; resume with after = {last}"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream that yields `first`, then whatever `follow` sends.
fn async_stream<F, Fut>(first: Vec<pb::Event>, follow: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Event, Status>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        for e in first {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        follow(tx).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
