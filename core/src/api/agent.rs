//! `weir.v1.Agent`: runner registration and sessions.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weir_proto::v1 as pb;
use weir_proto::v1::agent_server::Agent;

use crate::hub::{AttachRequest, Hub};

pub struct AgentService {
    hub: Arc<Hub>,
}

impl AgentService {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// The runner a relayed call comes from (it must present the allocation it holds).
    async fn relaying_runner(&self, hello: Option<pb::SessionHello>) -> Result<String, Status> {
        self.hub.relay_runner(hello).await.map_err(super::status)
    }
}

type HostStream = Pin<Box<dyn Stream<Item = Result<pb::HostMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.hub
            .register(req.into_inner())
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    type SessionStream = HostStream;

    async fn relay_attach(
        &self,
        req: Request<pb::RelayAttachRequest>,
    ) -> Result<Response<pb::AttachWorkloadResponse>, Status> {
        let req = req.into_inner();
        let runner = self.relaying_runner(req.runner).await?;
        let attach = req.attach.unwrap_or_default();
        let started = std::time::Instant::now();
        let network = attach.network.clone();
        let parsed = match AttachRequest::from_relay(&runner, attach) {
            Ok(p) => p,
            Err(e) => {
                self.hub.count_unparsed_attach(&network, started);
                return Err(super::status(e));
            }
        };
        self.hub
            .attach(parsed)
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn relay_detach(
        &self,
        req: Request<pb::RelayDetachRequest>,
    ) -> Result<Response<pb::DetachWorkloadResponse>, Status> {
        let req = req.into_inner();
        let runner = self.relaying_runner(req.runner).await?;
        let d = req.detach.unwrap_or_default();
        self.hub
            .detach(pb::DetachWorkloadRequest {
                runner,
                workload_id: d.workload_id,
                network: d.network,
            })
            .await
            .map(|()| Response::new(pb::DetachWorkloadResponse::default()))
            .map_err(super::status)
    }

    async fn relay_reserve(
        &self,
        req: Request<pb::RelayReserveRequest>,
    ) -> Result<Response<pb::ReserveAddressResponse>, Status> {
        let req = req.into_inner();
        let runner = self.relaying_runner(req.runner).await?;
        self.hub
            .reserve(pb::ReserveAddressRequest {
                runner,
                ip: req.ip,
                ttl_seconds: req.ttl_seconds,
                network: req.network,
            })
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn relay_release(
        &self,
        req: Request<pb::RelayReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let req = req.into_inner();
        let runner = self.relaying_runner(req.runner).await?;
        self.hub
            .release_relayed_reservation(&runner, &req.token)
            .await
            .map(|()| Response::new(pb::ReleaseReservationResponse::default()))
            .map_err(super::status)
    }

    async fn relay_list(
        &self,
        req: Request<pb::RelayListRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let req = req.into_inner();
        let runner = self.relaying_runner(req.runner).await?;
        let workloads = if req.workload_id.is_empty() {
            self.hub.runner_workloads(&runner, &req.origin).await
        } else {
            self.hub
                .runner_workload(&runner, &req.network, &req.workload_id)
                .await
                .map_err(super::status)?
                .into_iter()
                .filter(|w| req.origin.is_empty() || w.origin == req.origin)
                .collect()
        };
        Ok(Response::new(pb::ListWorkloadsResponse {
            workloads,
            next_page_token: String::new(),
        }))
    }

    async fn session(
        &self,
        req: Request<Streaming<pb::RunnerMessage>>,
    ) -> Result<Response<HostStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(pb::RunnerMessage {
                msg: Some(pb::runner_message::Msg::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first session message must be a hello",
                ));
            }
        };
        let start = match self.hub.open_session(hello).await {
            Ok(s) => s,
            Err(e) => {
                // The runner's allocation is not the one it presents: tell it in-band, then end.
                let revoked = pb::HostMessage {
                    msg: Some(pb::host_message::Msg::Revoked(pb::AllocationRevoked {
                        reason: e.to_string(),
                    })),
                };
                let once: HostStream = Box::pin(futures::stream::iter([Ok(revoked)]));
                return Ok(Response::new(once));
            }
        };
        let handle = start.handle.clone();
        let hub = self.hub.clone();
        // Read the runner's messages until its stream ends, then close the session.
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                match msg {
                    Ok(pb::RunnerMessage { msg: Some(m) }) => match m {
                        pb::runner_message::Msg::Heartbeat(_) => {
                            hub.heartbeat(&handle.runner, handle.id).await
                        }
                        pb::runner_message::Msg::Result(r) => handle.complete(r),
                        pb::runner_message::Msg::Gone(g) => {
                            hub.workloads_gone(&handle.runner, handle.id, g).await
                        }
                        pb::runner_message::Msg::Hello(_) => {
                            tracing::warn!(runner = %handle.runner, "ignoring a second hello")
                        }
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(runner = %handle.runner, error = %e, "session stream error");
                        break;
                    }
                }
            }
            hub.close_session(&handle).await;
        });
        let outbound = tokio_stream::wrappers::ReceiverStream::new(start.outbound).map(Ok);
        Ok(Response::new(Box::pin(outbound)))
    }
}
