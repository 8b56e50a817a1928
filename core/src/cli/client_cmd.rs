//! Commands that drive a running host over `weir.v1.Control`: status, runners, attach, detach,
//! workloads, reserve, reservations, release, cleanup, watch.
//!
//! Every command takes `--host URL` (env `WEIR_HOST`; default: the configured control socket),
//! `--token-file FILE` (or env `WEIR_TOKEN`) and `--json`, and send `TRACEPARENT`/`TRACESTATE`
//! from the environment as the call's trace context. Tables are for people; the JSON is stable
//! for scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use weir_proto::v1 as pb;
use weir_proto::v1::control_client::ControlClient;

use super::{CliError, parse_key_value};
use crate::api::auth::Bearer;
use crate::api::client::{ChannelOptions, ClientTls, code_name, connect_tls};

/// Where the host is and how to prove who we are.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// URL of the host: http://HOST:PORT or unix:///PATH (default: the configured control socket).
    #[arg(long, env = "WEIR_HOST", value_name = "URL", global = true)]
    pub host: Option<String>,
    /// File holding a control token (default: the WEIR_TOKEN environment variable).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// For an https:// host: the CA that signed its certificate (PEM).
    #[arg(long, env = "WEIR_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// For a host that requires mTLS: our certificate and key (PEM).
    #[arg(long, env = "WEIR_TLS_CERT", value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "WEIR_TLS_KEY", value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show the cluster: plan, host address, counts and runners.
    Status,
    /// List runners (and placeholders).
    Runners,
    /// Give a workload's network namespace (or a VM) an interface on its runner's network.
    Attach(AttachArgs),
    /// Remove a workload's interface and free its address.
    Detach(DetachArgs),
    /// List workloads.
    Workloads(WorkloadsArgs),
    /// Reserve an address on a runner before the workload exists; prints a single-use token.
    Reserve(ReserveArgs),
    /// List reservations.
    Reservations {
        /// Only this runner's.
        #[arg(long)]
        runner: Option<String>,
    },
    /// Release a reservation (--token) or a runner's allocation (--runner).
    Release(ReleaseArgs),
    /// Release every inactive runner's allocation.
    Cleanup,
    /// Follow the cluster's events (resume with --after SEQ).
    Watch(WatchArgs),
    /// Compare the host's records with what each runner finds in its kernel (links,
    /// addresses, namespaces) and print every difference; exit 1 when there is one.
    Doctor {
        /// Only this runner.
        #[arg(long)]
        runner: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The runner the workload lives on.
    #[arg(long)]
    pub runner: String,
    /// The workload's id (letters, digits, '.', '_', '-', ':').
    #[arg(long = "id", value_name = "WORKLOAD")]
    pub id: String,
    /// The workload's network namespace on the runner (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "vm"])]
    pub netns: Option<String>,
    /// A process in the workload's network namespace, instead of --netns.
    #[arg(long, conflicts_with = "vm")]
    pub pid: Option<u32>,
    /// A VM: create a tap device on the runner's bridge and print what its cloud-init needs.
    #[arg(long)]
    pub vm: bool,
    /// A network to join (repeatable: one interface per network, eth0, eth1, … in this order;
    /// the first carries the default route). Default: the host's primary network.
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// A specific free address of the runner's subnet (on the first network).
    #[arg(long, conflicts_with = "token")]
    pub ip: Option<String>,
    /// A reservation token from `weir reserve`: the workload gets the reserved address (on
    /// the first network).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    #[arg(long)]
    pub runner: Option<String>,
    #[arg(long = "id", value_name = "WORKLOAD")]
    pub id: String,
    /// A network to leave (repeatable). Default: every network the workload is on.
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WorkloadsArgs {
    /// Only this runner's workloads.
    #[arg(long)]
    pub runner: Option<String>,
    /// Only workloads with this label KEY=VALUE (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    #[arg(long)]
    pub network: Option<String>,
    /// Workloads per call (default: the host's, 1000); every page is fetched.
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    #[arg(long)]
    pub runner: String,
    /// A specific address (default: the next free one).
    #[arg(long)]
    pub ip: Option<String>,
    /// Seconds the token stays valid unused (default: the host's, 300).
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u32>,
    #[arg(long)]
    pub network: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReleaseArgs {
    /// Release this reservation token (its address returns to the pool).
    #[arg(long)]
    pub token: Option<String>,
    /// Release this runner's allocation, tunnel and workloads (a placeholder: #ID).
    #[arg(long)]
    pub runner: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Resume after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Only new events (no replay).
    #[arg(long)]
    pub only_new: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

type Client = ControlClient<InterceptedService<Channel, CallMetadata>>;

/// What the CLI adds to every call: the bearer token, and the caller's W3C trace context from
/// `TRACEPARENT` / `TRACESTATE` (the OpenTelemetry convention for passing a context to a child
/// process), so a scheduler that runs `weir` continues its own trace into the host.
#[derive(Clone)]
pub(super) struct CallMetadata {
    bearer: Bearer,
    trace: Vec<(&'static str, AsciiMetadataValue)>,
}

impl CallMetadata {
    fn from_env(bearer: Bearer) -> Result<Self, CliError> {
        let mut trace = Vec::new();
        if let Some(tp) = std::env::var("TRACEPARENT").ok().filter(|v| !v.is_empty()) {
            if !is_traceparent(&tp) {
                return Err(CliError::Usage(format!(
                    "TRACEPARENT: {tp:?} is not a W3C traceparent \
                     (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>)"
                )));
            }
            let v = tp
                .parse()
                .map_err(|_| CliError::Usage(format!("TRACEPARENT: {tp:?} is not ASCII")))?;
            trace.push(("traceparent", v));
            if let Some(ts) = std::env::var("TRACESTATE").ok().filter(|v| !v.is_empty()) {
                let v = ts.parse().map_err(|_| {
                    CliError::Usage(format!("TRACESTATE: {ts:?} is not a valid header value"))
                })?;
                trace.push(("tracestate", v));
            }
        }
        Ok(Self { bearer, trace })
    }
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.bearer.call(req)?;
        for (k, v) in &self.trace {
            req.metadata_mut().insert(*k, v.clone());
        }
        Ok(req)
    }
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero (W3C Trace Context).
fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

pub(super) async fn client(conn: &Conn, config: Option<&Path>) -> Result<Client, CliError> {
    let url = match &conn.host {
        Some(u) => u.clone(),
        None => {
            let loaded = crate::config::load(config)?;
            let sock = loaded.config.host.control_socket.ok_or_else(|| {
                CliError::Usage("no --host given and host.control_socket is not set".into())
            })?;
            format!("unix://{}", sock.display())
        }
    };
    let token = match &conn.token_file {
        Some(f) => Some(
            crate::auth::read_token(f)
                .map_err(|e| CliError::Usage(format!("--token-file: {e}")))?,
        ),
        None => std::env::var("WEIR_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let bearer =
        Bearer::new(token.as_deref()).map_err(|e| CliError::Usage(format!("token: {e}")))?;
    let metadata = CallMetadata::from_env(bearer)?;
    let tls = ClientTls::load(
        conn.tls_ca.as_deref(),
        conn.tls_cert.as_deref(),
        conn.tls_key.as_deref(),
    )
    .map_err(|e| CliError::Usage(format!("--tls-ca/--tls-cert/--tls-key: {e}")))?;
    let channel = connect_tls(&url, ChannelOptions::default(), &tls)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(ControlClient::with_interceptor(channel, metadata))
}

pub(super) fn refused(st: tonic::Status) -> CliError {
    CliError::Failed(format!("{}: {}", code_name(st.code()), st.message()))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn run(cmd: ClientCommand, conn: Conn, config: Option<&Path>) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("start the async runtime: {e}")))?;
    rt.block_on(async move {
        let mut c = client(&conn, config).await?;
        match cmd {
            ClientCommand::Status => status(&mut c, conn.json).await,
            ClientCommand::Runners => runners(&mut c, conn.json).await,
            ClientCommand::Attach(a) => attach(&mut c, a, conn.json).await,
            ClientCommand::Detach(a) => detach(&mut c, a, conn.json).await,
            ClientCommand::Workloads(a) => workloads(&mut c, a, conn.json).await,
            ClientCommand::Reserve(a) => reserve(&mut c, a, conn.json).await,
            ClientCommand::Reservations { runner } => reservations(&mut c, runner, conn.json).await,
            ClientCommand::Release(a) => release(&mut c, a, conn.json).await,
            ClientCommand::Cleanup => cleanup(&mut c, conn.json).await,
            ClientCommand::Watch(a) => watch(&mut c, a, conn.json).await,
            ClientCommand::Doctor { runner } => doctor(&mut c, runner, conn.json).await,
        }
    })
}

fn runner_json(r: &pb::RunnerStatus) -> Value {
    json!({"name": r.name, "id": r.id, "subnet": r.subnet, "gateway": r.gateway,
           "physical_ip": r.physical_ip, "active": r.active, "connected": r.connected,
           "placeholder": r.placeholder, "last_seen_unix_ms": r.last_seen_unix_ms,
           "labels": r.labels, "workloads": r.workloads})
}

async fn status(c: &mut Client, json: bool) -> Result<(), CliError> {
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        print_json(
            &json!({"plan": s.plan, "host_ip": s.host_ip, "overlay_enabled": s.overlay_enabled,
            "max_runners": s.max_runners, "active_runners": s.active_runners,
            "inactive_runners": s.inactive_runners, "placeholders": s.placeholders,
            "workloads": s.workloads, "reservations": s.reservations,
            "networks": s.networks.iter().map(|n| json!({"name": n.name, "mode": n.mode,
                "plan": n.plan, "host_ip": n.host_ip, "vxlan_id_base": n.vxlan_id_base,
                "masquerade": n.masquerade, "egress": n.egress, "runners": n.runners,
                "max_runners": n.max_runners, "workloads": n.workloads,
                "reservations": n.reservations})).collect::<Vec<_>>(),
            "runners": s.runners.iter().map(runner_json).collect::<Vec<_>>()}),
        );
    } else {
        print!("{}", render_status(&s));
    }
    Ok(())
}

/// The status panel, like KohakuRiver's `node overlay`.
pub fn render_status(s: &pb::GetStatusResponse) -> String {
    let mut out = if s.overlay_enabled {
        format!(
            "overlay       {}\nhost ip       {}\nrunners       {} active, {} inactive, {} placeholders (max {})\nworkloads     {}\nreservations  {}\n\n",
            s.plan,
            s.host_ip,
            s.active_runners,
            s.inactive_runners,
            s.placeholders,
            s.max_runners,
            s.workloads,
            s.reservations
        )
    } else {
        format!(
            "overlay       disabled (isolated mode)\nrunners       {} active, {} inactive\nworkloads     {}\nreservations  {}\n\n",
            s.active_runners, s.inactive_runners, s.workloads, s.reservations
        )
    };
    if s.networks.len() > 1 {
        out.push_str(&network_table(&s.networks));
        out.push('\n');
    }
    out.push_str(&runner_table(&s.runners));
    out
}

fn network_table(networks: &[pb::NetworkStatus]) -> String {
    let rows: Vec<[String; 8]> = networks
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                n.plan.clone(),
                n.host_ip.clone(),
                n.vxlan_id_base.to_string(),
                format!("{}{}", n.egress, if n.masquerade { " (nat)" } else { "" }),
                format!("{}/{}", n.runners, n.max_runners),
                n.workloads.to_string(),
                n.reservations.to_string(),
            ]
        })
        .collect();
    super::table(
        &[
            "Network",
            "Plan",
            "Host IP",
            "VNI base",
            "Egress",
            "Runners",
            "Workloads",
            "Reservations",
        ],
        &rows,
    )
}

fn runner_table(runners: &[pb::RunnerStatus]) -> String {
    let now = crate::clock::now_ms();
    let rows: Vec<[String; 8]> = runners
        .iter()
        .map(|r| {
            let state = match (r.placeholder, r.active, r.connected) {
                (true, _, _) => "placeholder",
                (_, true, true) => "active",
                (_, true, false) => "active (reconnecting)",
                (_, false, _) => "inactive",
            };
            [
                if r.name.is_empty() {
                    "-".into()
                } else {
                    r.name.clone()
                },
                if r.id == 0 {
                    "-".into()
                } else {
                    r.id.to_string()
                },
                r.subnet.clone(),
                r.gateway.clone(),
                r.physical_ip.clone(),
                state.to_string(),
                format!("{}s ago", ((now - r.last_seen_unix_ms).max(0)) / 1000),
                r.workloads.to_string(),
            ]
        })
        .collect();
    super::table(
        &[
            "RUNNER",
            "ID",
            "SUBNET",
            "GATEWAY",
            "PHYSICAL IP",
            "STATUS",
            "LAST SEEN",
            "WORKLOADS",
        ],
        &rows,
    )
}

async fn runners(c: &mut Client, json: bool) -> Result<(), CliError> {
    let r = c
        .list_runners(pb::ListRunnersRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        print_json(&json!({"runners": r.runners.iter().map(runner_json).collect::<Vec<_>>()}));
    } else {
        print!("{}", runner_table(&r.runners));
    }
    Ok(())
}

fn kind_name(k: i32) -> &'static str {
    if k == pb::WorkloadKind::Vm as i32 {
        "vm"
    } else {
        "container"
    }
}

async fn attach(c: &mut Client, a: AttachArgs, json: bool) -> Result<(), CliError> {
    if !a.vm && a.netns.is_none() && a.pid.is_none() {
        return Err(CliError::Usage(
            "attach: give --netns PATH, --pid PID or --vm".into(),
        ));
    }
    let mut networks = a.networks.clone();
    if networks.is_empty() {
        networks.push(String::new());
    }
    if let Some(dup) = networks
        .iter()
        .enumerate()
        .find(|(i, n)| networks[..*i].contains(n))
    {
        return Err(CliError::Usage(format!(
            "attach: --network {:?} is given twice",
            dup.1
        )));
    }
    let mut done: Vec<pb::AttachWorkloadResponse> = Vec::new();
    for (i, network) in networks.iter().enumerate() {
        let first = i == 0;
        let result = c
            .attach_workload(pb::AttachWorkloadRequest {
                runner: a.runner.clone(),
                workload_id: a.id.clone(),
                netns: a.netns.clone().unwrap_or_default(),
                pid: a.pid.unwrap_or(0),
                network: network.clone(),
                labels: a.labels.iter().cloned().collect(),
                requested_ip: if first { a.ip.clone() } else { None }.unwrap_or_default(),
                reservation_token: if first { a.token.clone() } else { None }.unwrap_or_default(),
                kind: if a.vm {
                    pb::WorkloadKind::Vm
                } else {
                    pb::WorkloadKind::Container
                } as i32,
            })
            .await;
        match result {
            Ok(r) => done.push(r.into_inner()),
            Err(st) => {
                // Nothing half-applied: leave the networks this command joined.
                for r in done.iter().rev() {
                    let _ = c
                        .detach_workload(pb::DetachWorkloadRequest {
                            runner: r.runner.clone(),
                            workload_id: r.workload_id.clone(),
                            network: r.network.clone(),
                        })
                        .await;
                }
                return Err(refused(st));
            }
        }
    }
    if json {
        let items: Vec<serde_json::Value> = done.iter().map(attach_json).collect();
        let v = match items.as_slice() {
            [one] => one.clone(),
            _ => serde_json::Value::Array(items),
        };
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
    } else {
        for r in &done {
            println!(
                "attached {} on {} ({}): {} {} via {} mtu {}{}",
                r.workload_id,
                r.runner,
                r.network,
                r.ifname,
                r.ip,
                r.gateway,
                r.mtu,
                if r.mac.is_empty() {
                    String::new()
                } else {
                    format!(" mac {}", r.mac)
                }
            );
        }
    }
    Ok(())
}

fn attach_json(r: &pb::AttachWorkloadResponse) -> serde_json::Value {
    let mut v = json!({"id": r.workload_id, "runner": r.runner, "network": r.network, "ip": r.ip,
        "gateway": r.gateway, "mtu": r.mtu, "host_ip": r.host_ip, "ifname": r.ifname,
        "prefix": r.prefix, "kind": kind_name(r.kind)});
    if r.kind == pb::WorkloadKind::Vm as i32 {
        v["mac"] = json!(r.mac);
        v["dns"] = json!(r.dns);
    }
    v
}

async fn detach(c: &mut Client, a: DetachArgs, json: bool) -> Result<(), CliError> {
    let mut networks = a.networks.clone();
    if networks.is_empty() {
        // Every network the workload is on (or the primary one, for the host's own refusal).
        let listed = list_workloads(
            c,
            pb::ListWorkloadsRequest {
                runner: a.runner.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await?;
        networks = listed
            .into_iter()
            .filter(|w| w.workload_id == a.id)
            .map(|w| w.network)
            .collect();
        if networks.is_empty() {
            networks.push(String::new());
        }
    }
    let mut left = Vec::new();
    for network in networks {
        c.detach_workload(pb::DetachWorkloadRequest {
            runner: a.runner.clone().unwrap_or_default(),
            workload_id: a.id.clone(),
            network: network.clone(),
        })
        .await
        .map_err(refused)?;
        left.push(network);
    }
    if json {
        println!("{}", json!({"detached": a.id, "networks": left}));
    } else {
        println!("detached {}", a.id);
    }
    Ok(())
}

/// Every page of a listing.
async fn list_workloads(
    c: &mut Client,
    mut req: pb::ListWorkloadsRequest,
) -> Result<Vec<pb::Workload>, CliError> {
    let mut all = Vec::new();
    loop {
        let page = c
            .list_workloads(req.clone())
            .await
            .map_err(refused)?
            .into_inner();
        all.extend(page.workloads);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        if page.next_page_token == req.page_token {
            return Err(CliError::Failed(
                "the host returned the same page token twice; stopping".into(),
            ));
        }
        req.page_token = page.next_page_token;
    }
}

async fn workloads(c: &mut Client, a: WorkloadsArgs, json: bool) -> Result<(), CliError> {
    let workloads = list_workloads(
        c,
        pb::ListWorkloadsRequest {
            runner: a.runner.unwrap_or_default(),
            labels: a.labels.into_iter().collect(),
            network: a.network.unwrap_or_default(),
            page_size: a.page_size.unwrap_or(0),
            page_token: String::new(),
        },
    )
    .await?;
    if json {
        let list: Vec<Value> = workloads
            .iter()
            .map(|w| {
                json!({"id": w.workload_id, "runner": w.runner, "network": w.network, "ip": w.ip,
                       "kind": kind_name(w.kind), "netns": w.netns, "ifname": w.ifname,
                       "labels": w.labels, "mac": w.mac, "created_unix_ms": w.created_unix_ms,
                       "reservation_id": w.reservation_id})
            })
            .collect();
        print_json(&json!({"workloads": list}));
        return Ok(());
    }
    let rows: Vec<[String; 7]> = workloads
        .iter()
        .map(|w| {
            let labels: BTreeMap<_, _> = w.labels.iter().collect();
            [
                w.workload_id.clone(),
                w.runner.clone(),
                w.network.clone(),
                w.ip.clone(),
                kind_name(w.kind).into(),
                w.ifname.clone(),
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table(
            &[
                "WORKLOAD", "RUNNER", "NETWORK", "IP", "KIND", "IFNAME", "LABELS"
            ],
            &rows
        )
    );
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn reserve(c: &mut Client, a: ReserveArgs, json: bool) -> Result<(), CliError> {
    let r = c
        .reserve_address(pb::ReserveAddressRequest {
            runner: a.runner.clone(),
            ip: a.ip.unwrap_or_default(),
            ttl_seconds: a.ttl.unwrap_or(0),
            network: a.network.unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({"ip": r.ip, "token": r.token, "expires_at": rfc3339(r.expires_unix_ms),
                   "expires_unix_ms": r.expires_unix_ms, "reservation_id": r.reservation_id})
        );
    } else {
        println!(
            "reserved {} on {} until {} ({})\ntoken {}",
            r.ip,
            a.runner,
            rfc3339(r.expires_unix_ms),
            r.reservation_id,
            r.token
        );
    }
    Ok(())
}

async fn reservations(c: &mut Client, runner: Option<String>, json: bool) -> Result<(), CliError> {
    let r = c
        .list_reservations(pb::ListReservationsRequest {
            runner: runner.unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        let list: Vec<Value> = r
            .reservations
            .iter()
            .map(|x| {
                json!({"id": x.reservation_id, "runner": x.runner, "network": x.network, "ip": x.ip,
                       "state": x.state, "workload": x.workload_id,
                       "expires_at": rfc3339(x.expires_unix_ms), "expires_unix_ms": x.expires_unix_ms})
            })
            .collect();
        print_json(&json!({"reservations": list}));
        return Ok(());
    }
    let rows: Vec<[String; 6]> = r
        .reservations
        .iter()
        .map(|x| {
            [
                x.reservation_id.clone(),
                x.runner.clone(),
                x.ip.clone(),
                x.state.clone(),
                if x.workload_id.is_empty() {
                    "-".into()
                } else {
                    x.workload_id.clone()
                },
                rfc3339(x.expires_unix_ms),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table(
            &[
                "RESERVATION",
                "RUNNER",
                "IP",
                "STATE",
                "WORKLOAD",
                "EXPIRES"
            ],
            &rows
        )
    );
    Ok(())
}

async fn release(c: &mut Client, a: ReleaseArgs, json: bool) -> Result<(), CliError> {
    if let Some(token) = a.token {
        c.release_reservation(pb::ReleaseReservationRequest { token })
            .await
            .map_err(refused)?;
        if json {
            println!("{}", json!({"released": "reservation"}));
        } else {
            println!("reservation released");
        }
    } else if let Some(runner) = a.runner {
        let r = c
            .release_runner(pb::ReleaseRunnerRequest {
                runner: runner.clone(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        if json {
            println!(
                "{}",
                json!({"released": runner, "id": r.released_id, "workloads_removed": r.workloads_removed})
            );
        } else {
            println!(
                "released {runner} (id {}, {} workloads removed)",
                r.released_id, r.workloads_removed
            );
        }
    }
    Ok(())
}

async fn cleanup(c: &mut Client, json: bool) -> Result<(), CliError> {
    let r = c
        .cleanup_inactive(pb::CleanupInactiveRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        println!("{}", json!({"released": r.released, "runners": r.runners}));
    } else {
        println!(
            "released {} inactive allocation(s){}",
            r.released,
            if r.runners.is_empty() {
                String::new()
            } else {
                format!(": {}", r.runners.join(", "))
            }
        );
    }
    Ok(())
}

async fn doctor(c: &mut Client, runner: Option<String>, json: bool) -> Result<(), CliError> {
    let r = c
        .diagnose(pb::DiagnoseRequest {
            runner: runner.unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        let findings: Vec<Value> = r
            .findings
            .iter()
            .map(|f| {
                json!({"runner": f.runner, "network": f.network, "workload": f.workload_id,
                       "kind": f.kind, "detail": f.detail})
            })
            .collect();
        println!("{}", json!({"checked": r.checked, "findings": findings}));
    } else if r.findings.is_empty() {
        println!(
            "no differences: the records match the kernel of {} runner(s) ({})",
            r.checked.len(),
            r.checked.join(", ")
        );
    } else {
        let rows: Vec<[String; 5]> = r
            .findings
            .iter()
            .map(|f| {
                [
                    f.runner.clone(),
                    f.network.clone(),
                    f.workload_id.clone(),
                    f.kind.clone(),
                    f.detail.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            super::table(
                &["RUNNER", "NETWORK", "WORKLOAD", "FINDING", "DETAIL"],
                &rows
            )
        );
    }
    if r.findings.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} difference(s) between the records and the kernel",
            r.findings.len()
        )))
    }
}

fn event_kind(k: i32) -> String {
    pb::EventKind::try_from(k)
        .map(|k| k.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("kind_{k}"))
}

/// One event as stable JSON (also what `weir watch --json` prints per line).
pub fn event_json(e: &pb::Event) -> Value {
    json!({"seq": e.seq, "unix_ms": e.unix_ms, "kind": event_kind(e.kind), "runner": e.runner,
           "runner_id": e.runner_id, "network": e.network, "workload": e.workload_id,
           "ip": e.ip, "reservation": e.reservation_id, "detail": e.detail})
}

async fn watch(c: &mut Client, a: WatchArgs, json: bool) -> Result<(), CliError> {
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after: a.after,
            only_new: a.only_new,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut seen = 0u64;
    while let Some(e) = stream.message().await.map_err(refused)? {
        if json {
            println!("{}", event_json(&e));
        } else {
            let what = [
                e.runner.as_str(),
                e.workload_id.as_str(),
                e.ip.as_str(),
                e.reservation_id.as_str(),
                e.detail.as_str(),
            ]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
            println!(
                "{:>6} {} {:<20} {what}",
                e.seq,
                rfc3339(e.unix_ms),
                event_kind(e.kind)
            );
        }
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn traceparent_follows_w3c() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }
}
