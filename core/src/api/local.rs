//! `weir.v1.Local`, on the runner's unix socket (mode 0600): container engines' plugins on this
//! machine (`weir-cni`, the Docker network driver, the netavark plugin) attach their containers
//! here. Each call is relayed to the host over `weir.v1.Agent` as this runner, presenting the
//! allocation it holds, so the host's rules, IPAM, policy and log are the same for every
//! origin. Without a session there is nothing to relay to: calls are UNAVAILABLE (a CNI
//! plugin's "try again later").

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::RwLock;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use weir_proto::v1 as pb;
use weir_proto::v1::agent_client::AgentClient;
use weir_proto::v1::local_server::{Local, LocalServer};

use super::auth::Bearer;
use super::telemetry::GrpcTelemetryLayer;
use crate::agent::Agent;

type HostClient = AgentClient<InterceptedService<Channel, Bearer>>;

/// The runner's way to the host while it holds a session: set when the host accepts the
/// session, cleared when it ends.
pub struct Uplink {
    name: String,
    current: RwLock<Option<(HostClient, pb::SessionHello)>>,
    /// Whether a session is up, for those who wait for one.
    up: tokio::sync::watch::Sender<bool>,
}

impl Uplink {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            current: RwLock::default(),
            up: tokio::sync::watch::Sender::new(false),
        }
    }

    pub async fn connected(&self, client: HostClient, hello: pb::SessionHello) {
        *self.current.write().await = Some((client, hello));
        self.up.send_replace(true);
    }

    pub async fn disconnected(&self) {
        *self.current.write().await = None;
        self.up.send_replace(false);
    }

    /// Until the runner holds a session with the host.
    pub async fn wait_connected(&self) {
        let mut rx = self.up.subscribe();
        // The sender lives as long as `self`: waiting cannot fail while we are borrowed.
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Attach a workload on this runner through the host (as this runner).
    pub async fn attach(
        &self,
        req: pb::LocalAttachRequest,
    ) -> Result<pb::AttachWorkloadResponse, Status> {
        let (mut host, hello) = self.get().await?;
        host.relay_attach(pb::RelayAttachRequest {
            runner: Some(hello),
            attach: Some(req),
        })
        .await
        .map(Response::into_inner)
    }

    /// Detach one; a workload that is not attached (here) is fine: nothing to remove.
    pub async fn detach(&self, req: pb::LocalDetachRequest) -> Result<(), Status> {
        let (mut host, hello) = self.get().await?;
        match host
            .relay_detach(pb::RelayDetachRequest {
                runner: Some(hello),
                detach: Some(req),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(st) if st.code() == Code::NotFound => Ok(()),
            Err(st) => Err(st),
        }
    }

    /// Hold an address for a workload this runner attaches soon (a reservation of its own).
    pub async fn reserve(
        &self,
        network: &str,
        ip: &str,
        ttl_seconds: u32,
    ) -> Result<pb::ReserveAddressResponse, Status> {
        let (mut host, hello) = self.get().await?;
        host.relay_reserve(pb::RelayReserveRequest {
            runner: Some(hello),
            network: network.to_string(),
            ip: ip.to_string(),
            ttl_seconds,
        })
        .await
        .map(Response::into_inner)
    }

    /// Give back an unused reservation of this runner's.
    pub async fn release(&self, token: &str) -> Result<(), Status> {
        let (mut host, hello) = self.get().await?;
        host.relay_release(pb::RelayReleaseRequest {
            runner: Some(hello),
            token: token.to_string(),
        })
        .await
        .map(|_| ())
    }

    async fn get(&self) -> Result<(HostClient, pb::SessionHello), Status> {
        self.current.read().await.clone().ok_or_else(|| {
            Status::unavailable(format!(
                "runner {} has no session with the host (it is starting or reconnecting); try again later",
                self.name
            ))
        })
    }
}

pub struct LocalService {
    uplink: Arc<Uplink>,
    agent: Arc<Agent>,
}

#[tonic::async_trait]
impl Local for LocalService {
    async fn attach(
        &self,
        req: Request<pb::LocalAttachRequest>,
    ) -> Result<Response<pb::AttachWorkloadResponse>, Status> {
        self.uplink
            .attach(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn detach(
        &self,
        req: Request<pb::LocalDetachRequest>,
    ) -> Result<Response<pb::DetachWorkloadResponse>, Status> {
        self.uplink.detach(req.into_inner()).await?;
        Ok(Response::new(pb::DetachWorkloadResponse::default()))
    }

    async fn check(
        &self,
        req: Request<pb::LocalCheckRequest>,
    ) -> Result<Response<pb::LocalCheckResponse>, Status> {
        let req = req.into_inner();
        let (mut host, hello) = self.uplink.get().await?;
        let w = host
            .relay_list(pb::RelayListRequest {
                runner: Some(hello),
                origin: String::new(),
                workload_id: req.workload_id.clone(),
                network: req.network.clone(),
            })
            .await?
            .into_inner()
            .workloads
            .pop()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "workload_id: {:?} is not attached on this runner",
                    req.workload_id
                ))
            })?;
        let want = w.ip.parse().map_err(|_| {
            Status::internal(format!("the host records {} for {}", w.ip, w.workload_id))
        })?;
        self.agent
            .check_one(&w.network, &w.workload_id, want)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::LocalCheckResponse { workload: Some(w) }))
    }

    async fn list(
        &self,
        req: Request<pb::LocalListRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let (mut host, hello) = self.uplink.get().await?;
        host.relay_list(pb::RelayListRequest {
            runner: Some(hello),
            origin: req.into_inner().origin,
            ..Default::default()
        })
        .await
    }

    async fn adopt(
        &self,
        req: Request<pb::LocalAdoptRequest>,
    ) -> Result<Response<pb::LocalAdoptResponse>, Status> {
        let req = req.into_inner();
        let (network, found, skipped) = self
            .agent
            .foreign_ports(&req.network)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let mut out = pb::LocalAdoptResponse {
            network: network.clone(),
            skipped: skipped
                .into_iter()
                .map(|u| pb::UnadoptedPort {
                    port: u.port,
                    reason: u.reason,
                })
                .collect(),
            ..Default::default()
        };
        for f in found {
            let ip = f.addr.addr().to_string();
            let container = pb::AdoptedContainer {
                workload_id: format!("kohakuriver-{}", ip.replace('.', "-")),
                ip: ip.clone(),
                netns: f.netns.display().to_string(),
                ifname: f.ifname.clone(),
                port: f.port.clone(),
                mac: crate::dataplane::attach::mac_string(f.mac),
            };
            if req.dry_run {
                out.adopted.push(container);
                continue;
            }
            let attached = self
                .uplink
                .attach(pb::LocalAttachRequest {
                    origin: format!("kohakuriver/{network}"),
                    workload_id: container.workload_id.clone(),
                    netns: container.netns.clone(),
                    network: network.clone(),
                    requested_ip: ip,
                    ifname: f.ifname,
                    adopt_port: f.port,
                    mac: container.mac.clone(),
                    ..Default::default()
                })
                .await;
            match attached {
                Ok(_) => out.adopted.push(container),
                Err(st) => out.failed.push(pb::UnadoptedPort {
                    port: container.port,
                    reason: format!("{}: {}", container.workload_id, st.message()),
                }),
            }
        }
        Ok(Response::new(out))
    }

    async fn status(
        &self,
        _: Request<pb::LocalStatusRequest>,
    ) -> Result<Response<pb::LocalStatusResponse>, Status> {
        let reply = match self.uplink.get().await {
            Ok(_) => pb::LocalStatusResponse {
                ready: true,
                reason: String::new(),
                runner: self.uplink.name.clone(),
            },
            Err(st) => pb::LocalStatusResponse {
                ready: false,
                reason: st.message().to_string(),
                runner: self.uplink.name.clone(),
            },
        };
        Ok(Response::new(reply))
    }
}

/// Serve `weir.v1.Local` and `grpc.health.v1` on the runner's socket.
pub async fn serve(
    (listener, path): (UnixListener, PathBuf),
    uplink: Arc<Uplink>,
    agent: Arc<Agent>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", "weir.v1.Local"] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    if let Err(e) = Server::builder()
        .layer(GrpcTelemetryLayer)
        .add_service(health_service)
        .add_service(LocalServer::new(LocalService { uplink, agent }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
    {
        tracing::error!(socket = %path.display(), error = %e, "local socket stopped");
    }
}
