//! Docker's remote network driver (libnetwork's plugin protocol: JSON over HTTP POSTs on a
//! unix socket), served by the runner, so `docker network create -d weir` and `docker run
//! --network …` give containers Weir addresses on Weir's bridge through the same hub as every
//! other workload (each endpoint is relayed to the host as this runner, origin
//! `docker/<network id, 12 digits>`).
//!
//! Docker creates the container's namespace only after `Join` (runc makes it; libnetwork's
//! `setkey` hook then moves the interfaces the drivers made into it), so this is the one
//! attach that is handed off: at `CreateEndpoint` the runner makes the veth pair with its
//! container end left in its own namespace, Weir's address and MAC go back to Docker, and at
//! `Join` Docker is told the end's name and the gateway; Docker moves it in and configures it.
//!
//! Docker never sends `CreateNetwork` again to a restarted driver, so the networks (and the
//! endpoints, for `Join` and `DeleteEndpoint`) are kept in a file (`docker-driver.json` in the
//! runner's state directory), written before each answer that depends on it.
//!
//! Addresses are Weir's. The same socket serves an IPAM driver (`--ipam-driver weir
//! --subnet <the network's overlay>`): its pool is this runner's subnet, and each address it hands Docker is a reservation the hub
//! holds for this runner until the endpoint takes it (`docker run --ip` reserves that one).
//! With `--ipam-driver null` Docker allocates nothing and takes the address the endpoint's
//! attach got.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::Mutex;
use weir_proto::v1 as pb;

use super::local::Uplink;
use crate::agent::Agent;

/// Docker's plugin media type.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The network option naming the Weir network (`docker network create --opt weir.network=…`).
pub const NETWORK_OPTION: &str = "weir.network";

/// What the driver must remember across its restarts.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Remembered {
    /// Docker network id → the Weir network it is on ("" = the primary one).
    networks: BTreeMap<String, DockerNetwork>,
    /// Docker endpoint id → what Weir gave it.
    endpoints: BTreeMap<String, Endpoint>,
    /// Addresses the IPAM driver handed to Docker and no endpoint took yet: address → its
    /// reservation (the hub holds it for this runner until it is used or expires).
    #[serde(default)]
    addresses: BTreeMap<String, Held>,
    /// Endpoints being attached, not yet answered to Docker: endpoint id → Weir network.
    #[serde(default)]
    pending: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    network: String,
    token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DockerNetwork {
    network: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Endpoint {
    network_id: String,
    /// The Weir network (resolved by the host).
    network: String,
    /// The container end's name in the runner's namespace, for Docker to move.
    ifname: String,
    gateway: String,
    /// Whether the gateway is the container's default route (its first Weir network).
    default_route: bool,
}

struct Driver {
    uplink: Arc<Uplink>,
    agent: Arc<Agent>,
    file: PathBuf,
    state: Mutex<Remembered>,
}

/// A driver error as Docker expects it: `{"Err": "…"}` with HTTP 500.
struct DriverError(String);

impl IntoResponse for DriverError {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            json!({ "Err": self.0 }).to_string(),
        )
            .into_response()
    }
}

fn answer(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

type Reply = Result<Response, DriverError>;

/// The request body as JSON (Docker sends no Content-Type; an empty body is `{}`).
fn body<T: for<'de> Deserialize<'de>>(what: &str, b: &Bytes) -> Result<T, DriverError> {
    let b: &[u8] = if b.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        b
    };
    serde_json::from_slice(b)
        .map_err(|e| DriverError(format!("{what}: the request is not what Docker sends: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct NetworkRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<Interface>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Interface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPool {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    #[allow(dead_code)]
    pool_id: String,
    address: String,
}

/// Docker's `RequestAddressType` of the network's own gateway address.
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// How long an address the IPAM driver gave stays held for its endpoint (Docker creates the
/// endpoint right after; one it never creates is freed by the hub then).
const RESERVATION_TTL_S: u32 = 60;

#[derive(Deserialize)]
struct EndpointRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

/// A Docker id (network or endpoint): 64 hex digits.
fn check_id(field: &str, id: &str) -> Result<(), DriverError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(DriverError(format!(
            "{field}: {:?} is not a Docker id (64 hex digits)",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// The Weir network a `CreateNetwork` asks for: `--opt weir.network=NAME` (Docker passes the
/// options under `com.docker.network.generic`); none: the primary network.
fn weir_network(options: &Option<BTreeMap<String, Value>>) -> Result<String, DriverError> {
    let generic = options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.generic"));
    match generic.and_then(|g| g.get(NETWORK_OPTION)) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(DriverError(format!(
            "{NETWORK_OPTION}: {other} is not a network name"
        ))),
    }
}

fn status_error(what: &str, st: tonic::Status) -> DriverError {
    DriverError(format!("{what}: {} ({:?})", st.message(), st.code()))
}

impl Driver {
    /// Keep what was learnt before answering Docker (write a temporary file, sync, rename).
    async fn save(&self, st: &Remembered) -> Result<(), DriverError> {
        let text = serde_json::to_vec_pretty(st)
            .map_err(|e| DriverError(format!("encode the driver's state: {e}")))?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write_atomically(&file, &text))
            .await
            .map_err(|e| DriverError(format!("save the driver's state: {e}")))?
            .map_err(|e| DriverError(format!("save the driver's state: {e}")))
    }

    async fn create_network(&self, b: Bytes) -> Reply {
        let req: CreateNetwork = body("CreateNetwork", &b)?;
        check_id("NetworkID", &req.network_id)?;
        let network = weir_network(&req.options)?;
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        next.networks
            .insert(req.network_id.clone(), DockerNetwork { network });
        self.save(&next).await?;
        *st = next;
        tracing::info!(network = %short(&req.network_id), "docker network created");
        Ok(answer(json!({})))
    }

    async fn delete_network(&self, b: Bytes) -> Reply {
        let req: NetworkRef = body("DeleteNetwork", &b)?;
        let mut st = self.state.lock().await;
        if st.networks.contains_key(&req.network_id) {
            let mut next = st.clone();
            next.networks.remove(&req.network_id);
            self.save(&next).await?;
            *st = next;
        }
        Ok(answer(json!({})))
    }

    async fn create_endpoint(&self, b: Bytes) -> Reply {
        let req: CreateEndpoint = body("CreateEndpoint", &b)?;
        check_id("EndpointID", &req.endpoint_id)?;
        let iface = req.interface.unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            return Err(DriverError(format!(
                "Interface.AddressIPv6: {} — Weir's networks are IPv4 only",
                iface.address_ipv6
            )));
        }
        let ip = iface.address.split('/').next().unwrap_or_default();
        // Endpoint changes one at a time, under the state's lock: a crash recovery (below)
        // never races an attach of the same endpoint.
        let mut st = self.state.lock().await;
        // An address from Weir's IPAM driver comes with its reservation; any other IPAM's
        // address is not Weir's to give.
        let token = match ip {
            "" => None,
            ip => Some(st.addresses.get(ip).map(|h| h.token.clone()).ok_or_else(|| {
                DriverError(format!(
                    "Interface.Address: {} was not handed out by Weir's IPAM; create the network with --ipam-driver weir (or null)",
                    iface.address
                ))
            })?),
        };
        let network = st
            .networks
            .get(&req.network_id)
            .map(|n| n.network.clone())
            .ok_or_else(|| {
                DriverError(format!(
                    "NetworkID: {} is not a network of this driver",
                    short(&req.network_id)
                ))
            })?;
        // Written ahead: if the runner dies before the answer, Docker takes the endpoint as
        // never made (it does not delete it), so the restarted driver detaches it.
        let mut next = st.clone();
        next.pending
            .insert(req.endpoint_id.clone(), network.clone());
        self.save(&next).await?;
        *st = next;
        let attached = self
            .uplink
            .attach(pb::LocalAttachRequest {
                origin: format!("docker/{}", short(&req.network_id)),
                workload_id: req.endpoint_id.clone(),
                network: network.clone(),
                handoff: true,
                reservation_token: token.clone().unwrap_or_default(),
                ..Default::default()
            })
            .await;
        crate::failpoint::hit("docker.endpoint.after-attach");
        let mut next = st.clone();
        next.pending.remove(&req.endpoint_id);
        let attached = match attached {
            Ok(a) => a,
            Err(status) => {
                // Refused or undone at the host; an attach left unanswered is the host's to
                // undo as well. Nothing to detach here.
                self.save(&next).await?;
                *st = next;
                return Err(status_error("attach", status));
            }
        };
        next.endpoints.insert(
            req.endpoint_id.clone(),
            Endpoint {
                network_id: req.network_id,
                network: attached.network.clone(),
                ifname: attached.ifname.clone(),
                gateway: attached.gateway.clone(),
                default_route: attached.default_route,
            },
        );
        if token.is_some() {
            next.addresses.remove(ip);
        }
        if let Err(e) = self.save(&next).await {
            // Still pending on disk: detached now, or at the next start.
            self.detach(&req.endpoint_id, &attached.network).await;
            return Err(e);
        }
        *st = next;
        if token.is_some() {
            // Docker gave the address; the answer must not (the pair has the MAC already).
            return Ok(answer(json!({})));
        }
        let mut out = json!({ "Address": attached.ip });
        // A MAC Docker was given (`--mac-address`) stays; otherwise the pair's own.
        if iface.mac_address.is_empty() {
            out["MacAddress"] = json!(attached.mac);
        }
        Ok(answer(json!({ "Interface": out })))
    }

    /// Endpoints whose attach was begun but never answered to Docker (the runner died): once
    /// the host is reachable, detach them.
    async fn recover(&self) {
        self.uplink.wait_connected().await;
        let mut st = self.state.lock().await;
        if st.pending.is_empty() {
            return;
        }
        let mut next = st.clone();
        for (endpoint, network) in std::mem::take(&mut next.pending) {
            match self
                .uplink
                .detach(pb::LocalDetachRequest {
                    workload_id: endpoint.clone(),
                    network,
                })
                .await
            {
                Ok(()) => {
                    tracing::info!(endpoint = %short(&endpoint), "detached an endpoint Docker was never answered for");
                }
                Err(status) => {
                    tracing::warn!(endpoint = %short(&endpoint), error = %status.message(), "cannot detach an endpoint Docker was never answered for");
                }
            }
        }
        if let Err(e) = self.save(&next).await {
            tracing::warn!(error = %e.0, "cannot save the docker driver's state");
            return;
        }
        *st = next;
    }

    async fn endpoint(&self, r: &EndpointRef) -> Result<Endpoint, DriverError> {
        self.state
            .lock()
            .await
            .endpoints
            .get(&r.endpoint_id)
            .filter(|e| e.network_id == r.network_id)
            .cloned()
            .ok_or_else(|| {
                DriverError(format!(
                    "EndpointID: {} is not an endpoint of network {} here",
                    short(&r.endpoint_id),
                    short(&r.network_id)
                ))
            })
    }

    async fn join(&self, b: Bytes) -> Reply {
        let req: EndpointRef = body("Join", &b)?;
        let ep = self.endpoint(&req).await?;
        let mut out = json!({
            "InterfaceName": { "SrcName": ep.ifname, "DstPrefix": "eth" },
        });
        if ep.default_route {
            out["Gateway"] = json!(ep.gateway);
        }
        Ok(answer(out))
    }

    async fn delete_endpoint(&self, b: Bytes) -> Reply {
        let req: EndpointRef = body("DeleteEndpoint", &b)?;
        check_id("EndpointID", &req.endpoint_id)?;
        // An endpoint not remembered is still detached: the runner may have died between its
        // attach and remembering it (Docker then rolls the endpoint back with this call).
        let mut st = self.state.lock().await;
        let network = match st
            .endpoints
            .get(&req.endpoint_id)
            .filter(|e| e.network_id == req.network_id)
        {
            Some(ep) => ep.network.clone(),
            None => st
                .networks
                .get(&req.network_id)
                .map(|n| n.network.clone())
                .unwrap_or_default(),
        };
        self.uplink
            .detach(pb::LocalDetachRequest {
                workload_id: req.endpoint_id.clone(),
                network,
            })
            .await
            .map_err(|st| status_error("detach", st))?;
        let mut next = st.clone();
        next.endpoints.remove(&req.endpoint_id);
        self.save(&next).await?;
        *st = next;
        Ok(answer(json!({})))
    }

    async fn request_pool(&self, b: Bytes) -> Reply {
        let req: RequestPool = body("RequestPool", &b)?;
        if req.v6 {
            return Err(DriverError("V6: Weir's networks are IPv4 only".into()));
        }
        if req.pool.is_empty() && !req.sub_pool.is_empty() {
            return Err(DriverError("SubPool: given without a Pool".into()));
        }
        let asked = req
            .options
            .as_ref()
            .and_then(|o| o.get(NETWORK_OPTION))
            .cloned()
            .unwrap_or_default();
        let (name, subnet, _, cidr) = self.agent.network_addressing(&asked).await.ok_or_else(|| {
            DriverError(format!(
                "{NETWORK_OPTION}: {} is not a network of this runner (or it has not joined the host yet)",
                if asked.is_empty() { "the primary network" } else { asked.as_str() }
            ))
        })?;
        // Without a subnet Docker checks the pool against the routes it finds here (Weir's
        // bridge is one), and asks for another one forever: a subnet must be given.
        if req.pool != subnet.to_string() && req.pool != cidr.to_string() {
            return Err(DriverError(format!(
                "Pool: {} — give --subnet {cidr} (network {name}'s whole overlay; each runner's network then gets the runner's own subnet, here {subnet}) or --subnet {subnet}",
                if req.pool.is_empty() {
                    "none given"
                } else {
                    req.pool.as_str()
                },
            )));
        }
        Ok(answer(
            json!({ "PoolID": name, "Pool": subnet.to_string(), "Data": {} }),
        ))
    }

    async fn request_address(&self, b: Bytes) -> Reply {
        let req: RequestAddress = body("RequestAddress", &b)?;
        let (name, subnet, gateway, _) = self
            .agent
            .network_addressing(&req.pool_id)
            .await
            .ok_or_else(|| {
                DriverError(format!(
                    "PoolID: {:?} is not a network of this runner",
                    req.pool_id
                ))
            })?;
        let prefix = subnet.prefix_len();
        let is_gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == GATEWAY_REQUEST);
        if is_gateway {
            if !req.address.is_empty() && req.address != gateway.to_string() {
                return Err(DriverError(format!(
                    "Address: the gateway of network {name} on this runner is {gateway}, not {}",
                    req.address
                )));
            }
            return Ok(answer(
                json!({ "Address": format!("{gateway}/{prefix}"), "Data": {} }),
            ));
        }
        let reserved = self
            .uplink
            .reserve(&name, &req.address, RESERVATION_TTL_S)
            .await
            .map_err(|st| status_error("reserve an address", st))?;
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        next.addresses.insert(
            reserved.ip.clone(),
            Held {
                network: name,
                token: reserved.token.clone(),
            },
        );
        if let Err(e) = self.save(&next).await {
            drop(st);
            let _ = self.uplink.release(&reserved.token).await;
            return Err(e);
        }
        *st = next;
        Ok(answer(
            json!({ "Address": format!("{}/{prefix}", reserved.ip), "Data": {} }),
        ))
    }

    async fn release_address(&self, b: Bytes) -> Reply {
        let req: ReleaseAddress = body("ReleaseAddress", &b)?;
        let mut st = self.state.lock().await;
        let Some(held) = st.addresses.get(&req.address).cloned() else {
            // The gateway, or an address an endpoint took (freed when it was deleted).
            return Ok(answer(json!({})));
        };
        self.uplink
            .release(&held.token)
            .await
            .map_err(|st| status_error("release an address", st))?;
        let mut next = st.clone();
        next.addresses.remove(&req.address);
        self.save(&next).await?;
        *st = next;
        Ok(answer(json!({})))
    }

    /// Best effort, undoing an attach whose endpoint could not be remembered.
    async fn detach(&self, endpoint: &str, network: &str) {
        if let Err(st) = self
            .uplink
            .detach(pb::LocalDetachRequest {
                workload_id: endpoint.to_string(),
                network: network.to_string(),
            })
            .await
        {
            tracing::warn!(endpoint = %short(endpoint), error = %st.message(), "cannot undo an endpoint's attach");
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn write_atomically(file: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn load(file: &Path) -> std::io::Result<Remembered> {
    match std::fs::read(file) {
        Ok(text) => serde_json::from_slice(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", file.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Remembered::default()),
        Err(e) => Err(e),
    }
}

fn router(driver: Arc<Driver>) -> Router {
    async fn fixed(v: Value) -> Response {
        answer(v)
    }
    Router::new()
        .route(
            "/Plugin.Activate",
            post(|| fixed(json!({ "Implements": ["NetworkDriver", "IpamDriver"] }))),
        )
        .route(
            "/IpamDriver.GetCapabilities",
            post(|| fixed(json!({ "RequiresMACAddress": false }))),
        )
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            post(|| {
                fixed(json!({
                    "LocalDefaultAddressSpace": "weir",
                    "GlobalDefaultAddressSpace": "weir"
                }))
            }),
        )
        .route(
            "/IpamDriver.RequestPool",
            post(|State(d): State<Arc<Driver>>, b: Bytes| async move { d.request_pool(b).await }),
        )
        .route("/IpamDriver.ReleasePool", post(|| fixed(json!({}))))
        .route(
            "/IpamDriver.RequestAddress",
            post(
                |State(d): State<Arc<Driver>>, b: Bytes| async move { d.request_address(b).await },
            ),
        )
        .route(
            "/IpamDriver.ReleaseAddress",
            post(
                |State(d): State<Arc<Driver>>, b: Bytes| async move { d.release_address(b).await },
            ),
        )
        .route(
            "/NetworkDriver.GetCapabilities",
            post(|| fixed(json!({ "Scope": "local", "ConnectivityScope": "local" }))),
        )
        .route(
            "/NetworkDriver.CreateNetwork",
            post(|State(d): State<Arc<Driver>>, b: Bytes| async move { d.create_network(b).await }),
        )
        .route(
            "/NetworkDriver.DeleteNetwork",
            post(|State(d): State<Arc<Driver>>, b: Bytes| async move { d.delete_network(b).await }),
        )
        .route(
            "/NetworkDriver.CreateEndpoint",
            post(
                |State(d): State<Arc<Driver>>, b: Bytes| async move { d.create_endpoint(b).await },
            ),
        )
        .route(
            "/NetworkDriver.DeleteEndpoint",
            post(
                |State(d): State<Arc<Driver>>, b: Bytes| async move { d.delete_endpoint(b).await },
            ),
        )
        .route(
            "/NetworkDriver.Join",
            post(|State(d): State<Arc<Driver>>, b: Bytes| async move { d.join(b).await }),
        )
        // Docker moves the interface back out and `DeleteEndpoint` removes it.
        .route("/NetworkDriver.Leave", post(|| fixed(json!({}))))
        .route(
            "/NetworkDriver.EndpointOperInfo",
            post(|| fixed(json!({ "Value": {} }))),
        )
        .route("/NetworkDriver.DiscoverNew", post(|| fixed(json!({}))))
        .route("/NetworkDriver.DiscoverDelete", post(|| fixed(json!({}))))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(|| fixed(json!({}))),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(|| fixed(json!({}))),
        )
        .fallback(|| async {
            DriverError("this driver does not implement that call".into()).into_response()
        })
        .with_state(driver)
}

/// The driver, ready to serve: its remembered networks and endpoints loaded from `state_dir`.
pub fn driver(uplink: Arc<Uplink>, agent: Arc<Agent>, state_dir: &Path) -> std::io::Result<Router> {
    let file = state_dir.join("docker-driver.json");
    let state = load(&file)?;
    let driver = Arc::new(Driver {
        uplink,
        agent,
        file,
        state: Mutex::new(state),
    });
    let recovering = driver.clone();
    tokio::spawn(async move { recovering.recover().await });
    Ok(router(driver))
}

/// Serve the driver on `listener` (Docker finds it as `/run/docker/plugins/NAME.sock`, or
/// through a spec file naming the socket).
pub async fn serve((listener, path): (UnixListener, PathBuf), app: Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(socket = %path.display(), error = %e, "docker driver socket stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weir_network_comes_from_the_generic_options() {
        let opts = |v: Value| Some(serde_json::from_value(v).unwrap());
        assert_eq!(weir_network(&None).ok(), Some(String::new()));
        assert_eq!(
            weir_network(&opts(
                json!({"com.docker.network.generic": {"weir.network": "gpu"}})
            ))
            .ok(),
            Some("gpu".into())
        );
        let e = weir_network(&opts(
            json!({"com.docker.network.generic": {"weir.network": 3}}),
        ));
        assert!(e.is_err_and(|e| e.0.contains("weir.network")));
    }

    #[test]
    fn ids_are_docker_ids() {
        assert!(check_id("EndpointID", &"a".repeat(64)).is_ok());
        let e = check_id("EndpointID", "../etc").err().unwrap();
        assert!(e.0.starts_with("EndpointID:"), "{}", e.0);
    }

    #[test]
    fn an_empty_body_is_an_empty_object() {
        let v: Value = body("Activate", &Bytes::new()).ok().unwrap();
        assert_eq!(v, json!({}));
        let e = body::<NetworkRef>("DeleteNetwork", &Bytes::from_static(b"[1]"))
            .err()
            .unwrap();
        assert!(e.0.starts_with("DeleteNetwork:"), "{}", e.0);
    }
}
