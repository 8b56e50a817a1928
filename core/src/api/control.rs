//! `weir.v1.Control`: the scheduler's API.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::v1 as pb;
use weir_proto::v1::control_server::Control;

use crate::hub::Hub;

pub struct ControlService {
    hub: Arc<Hub>,
}

impl ControlService {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.hub.status().await))
    }

    async fn attach_workload(
        &self,
        req: Request<pb::AttachWorkloadRequest>,
    ) -> Result<Response<pb::AttachWorkloadResponse>, Status> {
        self.hub
            .attach(req.into_inner())
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn detach_workload(
        &self,
        req: Request<pb::DetachWorkloadRequest>,
    ) -> Result<Response<pb::DetachWorkloadResponse>, Status> {
        self.hub
            .detach(req.into_inner())
            .await
            .map(|()| Response::new(pb::DetachWorkloadResponse {}))
            .map_err(super::status)
    }
}
